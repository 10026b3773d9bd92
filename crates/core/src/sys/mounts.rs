//! `sys/mounts` (enable, disable, list, tune), `sys/auth` (the token method is built in) and
//! `sys/internal/ui/mounts` (used by CLIs to discover a mount's type and KV version).

use serde_json::{json, Map, Value};

use super::{expect_op, WRITE};
use crate::core::Core;
use crate::logical::fields::{get_duration, get_str, reject_unknown};
use crate::logical::{Data, LogicalError, Operation, Request, Response, Result};
use crate::mounts::{is_reserved_mount, normalize_mount_path, MountEntry};
use crate::request_handling::Caller;

fn sys_mount_json() -> Value {
    json!({
        "type": "system",
        "description": "system endpoints used for control, policy and debugging",
        "accessor": "system_bunker",
        "uuid": "",
        "config": {"default_lease_ttl": 0, "max_lease_ttl": 0, "force_no_cache": false},
        "options": null,
        "local": false,
        "seal_wrap": true,
        "external_entropy_access": false,
    })
}

fn token_auth_json() -> Value {
    json!({
        "type": "token",
        "description": "token based credentials",
        "accessor": "auth_token_bunker",
        "uuid": "",
        "config": {"default_lease_ttl": 0, "max_lease_ttl": 0, "force_no_cache": false, "token_type": "default-service"},
        "options": null,
        "local": false,
        "seal_wrap": false,
        "external_entropy_access": false,
    })
}

impl Core {
    fn mount_entries(&self) -> Vec<MountEntry> {
        self.router
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entries()
            .cloned()
            .collect()
    }

    pub(crate) async fn sys_mounts(&self, req: &Request, rest: &str) -> Result<Response> {
        if rest.is_empty() {
            expect_op(req.operation, &[Operation::Read])?;
            let mut data = Data::new();
            for e in self.mount_entries() {
                data.insert(e.path.clone(), e.to_json());
            }
            data.insert("sys/".into(), sys_mount_json());
            let mut resp = Response::data(data);
            resp.data_at_top_level = true;
            return Ok(resp);
        }
        if let Some(path) = rest.strip_suffix("/tune") {
            return self.sys_mount_tune(req, &normalize_mount_path(path)).await;
        }
        let path = normalize_mount_path(rest);
        match req.operation {
            Operation::Read => {
                let entry = self
                    .mount_entries()
                    .into_iter()
                    .find(|e| e.path == path)
                    .ok_or_else(|| LogicalError::InvalidRequest(format!("no mount at {path:?}")))?;
                match entry.to_json() {
                    Value::Object(m) => Ok(Response::data(m)),
                    _ => Err(LogicalError::Internal("mount entry encoding".into())),
                }
            }
            Operation::Create | Operation::Update => self.sys_mount_enable(req, &path).await,
            Operation::Delete => {
                if is_reserved_mount(&path) {
                    return Err(LogicalError::InvalidRequest(format!(
                        "cannot unmount {path:?}"
                    )));
                }
                self.unmount(&path).await?;
                Ok(Response::empty())
            }
            _ => Err(LogicalError::UnsupportedOperation),
        }
    }

    async fn sys_mount_enable(&self, req: &Request, path: &str) -> Result<Response> {
        reject_unknown(
            &req.data,
            &[
                "type",
                "description",
                "config",
                "options",
                "local",
                "seal_wrap",
                "external_entropy_access",
                "plugin_name",
                "plugin_version",
            ],
        )?;
        if path == "/" || path.len() > 256 {
            return Err(LogicalError::InvalidRequest("invalid mount path".into()));
        }
        if is_reserved_mount(path) {
            return Err(LogicalError::InvalidRequest(format!(
                "cannot mount at reserved path {path:?}"
            )));
        }
        let mut kind = get_str(&req.data, "type")?
            .filter(|s| !s.is_empty())
            .ok_or_else(|| LogicalError::InvalidRequest("backend type must be specified".into()))?;
        let mut options: Map<String, Value> = match req.data.get("options") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(m)) => m
                .iter()
                .map(|(k, v)| {
                    let s = match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    (k.clone(), Value::String(s))
                })
                .collect(),
            Some(_) => return Err(LogicalError::InvalidRequest("options must be a map".into())),
        };
        if kind == "kv-v2" {
            kind = "kv".into();
            options.insert("version".into(), json!("2"));
        }
        if kind == "cubbyhole" || kind == "system" || kind == "token" {
            return Err(LogicalError::InvalidRequest(format!(
                "cannot mount a second {kind} backend"
            )));
        }
        let description = get_str(&req.data, "description")?.unwrap_or_default();
        let mut entry = MountEntry::new(path, &kind, &description, options);
        if let Some(Value::Object(config)) = req.data.get("config") {
            let config: Data = config.clone();
            entry.config.default_lease_ttl =
                get_duration(&config, "default_lease_ttl")?.unwrap_or(0);
            entry.config.max_lease_ttl = get_duration(&config, "max_lease_ttl")?.unwrap_or(0);
        }
        entry.local = crate::logical::fields::get_bool(&req.data, "local")?.unwrap_or(false);
        entry.seal_wrap =
            crate::logical::fields::get_bool(&req.data, "seal_wrap")?.unwrap_or(false);
        self.mount(entry).await?;
        tracing::info!(path, kind, "secrets engine enabled");
        Ok(Response::empty())
    }

    async fn sys_mount_tune(&self, req: &Request, path: &str) -> Result<Response> {
        let _guard = self.table_lock.lock().await;
        let entry = self
            .mount_entries()
            .into_iter()
            .find(|e| e.path == path)
            .ok_or_else(|| LogicalError::InvalidRequest(format!("no mount at {path:?}")))?;
        match req.operation {
            Operation::Read => {
                let mut data = Data::new();
                data.insert(
                    "default_lease_ttl".into(),
                    json!(entry.config.default_lease_ttl),
                );
                data.insert("max_lease_ttl".into(), json!(entry.config.max_lease_ttl));
                data.insert("force_no_cache".into(), json!(false));
                data.insert("description".into(), json!(entry.description));
                if !entry.options.is_empty() {
                    data.insert("options".into(), Value::Object(entry.options.clone()));
                }
                Ok(Response::data(data))
            }
            Operation::Create | Operation::Update => {
                let mut updated = entry.clone();
                if let Some(ttl) = get_duration(&req.data, "default_lease_ttl")? {
                    updated.config.default_lease_ttl = ttl;
                }
                if let Some(ttl) = get_duration(&req.data, "max_lease_ttl")? {
                    updated.config.max_lease_ttl = ttl;
                }
                if let Some(d) = get_str(&req.data, "description")? {
                    updated.description = d;
                }
                if let Some(Value::Object(opts)) = req.data.get("options") {
                    if let Some(v) = opts.get("version") {
                        let v = match v {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        };
                        let old = updated
                            .options
                            .get("version")
                            .and_then(Value::as_str)
                            .unwrap_or("1");
                        if updated.kind == "kv" && v != old && !(old == "1" && v == "2") {
                            return Err(LogicalError::InvalidRequest(
                                "cannot downgrade a kv mount from version 2".into(),
                            ));
                        }
                        updated.options.insert("version".into(), Value::String(v));
                    }
                }
                let mounted = self.instantiate(updated)?;
                mounted
                    .backend
                    .initialize(&mounted.view, &mounted.entry.options)
                    .await?;
                {
                    let mut r = self
                        .router
                        .write()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    r.insert(mounted);
                }
                self.persist_mounts().await?;
                Ok(Response::empty())
            }
            _ => Err(LogicalError::UnsupportedOperation),
        }
    }

    pub(crate) fn sys_auth(&self, req: &Request, rest: &str) -> Result<Response> {
        if rest.is_empty() && req.operation == Operation::Read {
            let mut data = Data::new();
            data.insert("token/".into(), token_auth_json());
            let mut resp = Response::data(data);
            resp.data_at_top_level = true;
            return Ok(resp);
        }
        expect_op(req.operation, WRITE)?;
        Err(LogicalError::InvalidRequest(
            "only the built-in token auth method is available".into(),
        ))
    }

    pub(crate) async fn sys_internal(
        &self,
        req: &Request,
        rest: &str,
        caller: &Caller,
    ) -> Result<Response> {
        expect_op(req.operation, &[Operation::Read])?;
        let Some(path) = rest.strip_prefix("ui/mounts") else {
            return Err(LogicalError::UnsupportedPath(req.path.clone()));
        };
        let path = path.trim_start_matches('/');
        if path.is_empty() {
            let mut secret = Map::new();
            for e in self.mount_entries() {
                secret.insert(e.path.clone(), e.to_json());
            }
            let mut auth = Map::new();
            auth.insert("token/".into(), token_auth_json());
            let mut data = Data::new();
            data.insert("secret".into(), Value::Object(secret));
            data.insert("auth".into(), Value::Object(auth));
            return Ok(Response::data(data));
        }
        let found = self
            .router
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .route(path)
            .map(|(m, _)| m.entry.clone());
        let Some(entry) = found else {
            return Err(LogicalError::InvalidRequest(format!(
                "preflight capability check returned 403, please ensure client's policies grant access to path \"{path}\""
            )));
        };
        // Only reveal a mount to callers with some access below it.
        if !caller.acl.has_access_under(&entry.path) {
            return Err(LogicalError::PermissionDenied);
        }
        let mut data = match entry.to_json() {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        data.insert("path".into(), json!(entry.path));
        Ok(Response::data(data))
    }
}
