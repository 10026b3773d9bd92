//! `sys/mounts` (enable, disable, list, tune), `sys/auth` (the token method is built in) and
//! `sys/internal/ui/mounts` (used by CLIs to discover a mount's type and KV version).

use serde_json::{json, Map, Value};

use crate::core::Core;
use crate::logical::fields::{get_duration, get_str, warn_unknown};
use crate::logical::{BackendRequest, Data, LogicalError, Operation, Response, Result};
use crate::mounts::{
    is_reserved_mount, normalize_mount_path, MountEntry, SystemTtls, AUTH_MOUNT_PREFIX,
};
use bunker_sdk::expect_op;
use bunker_sdk::Caller;

/// How `sys/mounts`, `sys/auth` and `sys/internal/ui/mounts` show a built-in mount: as any
/// entry, and the token method with Vault's token type.
fn builtin_json(entry: &MountEntry) -> Value {
    let mut json = entry.to_json();
    if entry.kind == "token" {
        if let Some(config) = json.get_mut("config").and_then(Value::as_object_mut) {
            config.insert("token_type".into(), json!("default-service"));
        }
    }
    json
}

/// Which of the two mount tables a `sys/mounts` or `sys/auth` request is about. Both go
/// through the same handlers; auth methods live in the router under `auth/`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Table {
    Secrets,
    Auth,
}

impl Table {
    /// The router path of the mount a client names (`userpass` is `auth/userpass/`).
    fn router_path(self, rest: &str) -> String {
        match self {
            Table::Secrets => normalize_mount_path(rest),
            Table::Auth => format!("{AUTH_MOUNT_PREFIX}{}", normalize_mount_path(rest)),
        }
    }

    /// The path a client sees for a router path.
    fn shown_path(self, path: &str) -> String {
        match self {
            Table::Secrets => path.to_owned(),
            Table::Auth => path
                .strip_prefix(AUTH_MOUNT_PREFIX)
                .unwrap_or(path)
                .to_owned(),
        }
    }

    fn holds(self, entry: &MountEntry) -> bool {
        entry.is_auth() == (self == Table::Auth)
    }

    /// A path that cannot be mounted or unmounted in this table, as a client names it.
    fn refuses(self, shown: &str) -> Option<String> {
        match self {
            Table::Secrets if is_reserved_mount(shown) => {
                Some(format!("cannot mount or unmount reserved path {shown:?}"))
            }
            Table::Auth if shown == "token/" => {
                Some("token credential backend cannot be enabled or disabled".into())
            }
            _ => None,
        }
    }
}

impl Core {
    /// The built-in mounts of `table`, as `sys/mounts` and `sys/auth` show them.
    fn builtin_listing(&self, table: Table) -> impl Iterator<Item = (String, &MountEntry)> {
        self.builtin_mounts
            .iter()
            .map(|m| &*m.entry)
            .filter(move |e| table.holds(e))
            .map(move |e| (table.shown_path(&e.path), e))
    }

    fn table_entries(&self, table: Table) -> Vec<MountEntry> {
        self.router
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entries()
            .filter(|e| table.holds(e))
            .cloned()
            .collect()
    }

    /// `sys/mounts[/<path>[/tune]]` and `sys/auth[/<path>[/tune]]`.
    pub(crate) async fn sys_mount_table(
        &self,
        req: &BackendRequest<'_>,
        rest: &str,
        table: Table,
    ) -> Result<Response> {
        if rest.is_empty() {
            expect_op(req.operation, &[Operation::Read])?;
            let mut data = Data::new();
            for e in self.table_entries(table) {
                data.insert(table.shown_path(&e.path), e.to_json());
            }
            for (shown, entry) in self.builtin_listing(table) {
                data.insert(shown, builtin_json(entry));
            }
            let mut resp = Response::data(data);
            resp.data_at_top_level = true;
            return Ok(resp);
        }
        if let Some(path) = rest.strip_suffix("/tune") {
            return self
                .sys_mount_tune(req, &table.router_path(path), table)
                .await;
        }
        let path = table.router_path(rest);
        let shown = table.shown_path(&path);
        match req.operation {
            Operation::Read => {
                let entry = self
                    .table_entries(table)
                    .into_iter()
                    .find(|e| e.path == path)
                    .ok_or_else(|| {
                        LogicalError::InvalidRequest(format!("no mount at {shown:?}"))
                    })?;
                match entry.to_json() {
                    Value::Object(m) => Ok(Response::data(m)),
                    _ => Err(LogicalError::Internal("mount entry encoding".into())),
                }
            }
            Operation::Create | Operation::Update => {
                if let Some(refused) = table.refuses(&shown) {
                    return Err(LogicalError::InvalidRequest(refused));
                }
                self.sys_mount_enable(req, &path, table).await
            }
            Operation::Delete => {
                if let Some(refused) = table.refuses(&shown) {
                    return Err(LogicalError::InvalidRequest(refused));
                }
                self.unmount(&path).await?;
                Ok(Response::empty())
            }
            _ => Err(LogicalError::UnsupportedOperation),
        }
    }

    async fn sys_mount_enable(
        &self,
        req: &BackendRequest<'_>,
        path: &str,
        table: Table,
    ) -> Result<Response> {
        const KNOWN: &[&str] = &[
            "type",
            "description",
            "config",
            "options",
            "local",
            "seal_wrap",
            "external_entropy_access",
            "plugin_name",
            "plugin_version",
        ];
        if path == "/" || path.ends_with("//") || path.len() > 256 {
            return Err(LogicalError::InvalidRequest("invalid mount path".into()));
        }
        let mut kind = get_str(req.data, "type")?
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
        if kind == "kv-v2" && table == Table::Secrets {
            kind = "kv".into();
            options.insert("version".into(), json!("2"));
        }
        if kind == "cubbyhole" || kind == "system" || kind == "token" {
            return Err(LogicalError::InvalidRequest(format!(
                "cannot mount a second {kind} backend"
            )));
        }
        let description = get_str(req.data, "description")?.unwrap_or_default();
        let mut entry = MountEntry::new(path, &kind, &description, options);
        if let Some(Value::Object(config)) = req.data.get("config") {
            let config: Data = config.clone();
            entry.config.default_lease_ttl =
                get_duration(&config, "default_lease_ttl")?.unwrap_or(0);
            entry.config.max_lease_ttl = get_duration(&config, "max_lease_ttl")?.unwrap_or(0);
            check_lease_ttls(&entry, self.lease_ttls())?;
        }
        entry.local = crate::logical::fields::get_bool(req.data, "local")?.unwrap_or(false);
        entry.seal_wrap = crate::logical::fields::get_bool(req.data, "seal_wrap")?.unwrap_or(false);
        self.mount(entry).await?;
        match table {
            Table::Secrets => tracing::info!(path, kind, "secrets engine enabled"),
            Table::Auth => tracing::info!(path, kind, "auth method enabled"),
        }
        Ok(warn_unknown(Response::empty(), req.data, KNOWN))
    }

    async fn sys_mount_tune(
        &self,
        req: &BackendRequest<'_>,
        path: &str,
        table: Table,
    ) -> Result<Response> {
        if table == Table::Auth && path == "auth/token/" {
            return self.token_mount_tune(req);
        }
        let _guard = self.table_lock.lock().await;
        let entry = self
            .table_entries(table)
            .into_iter()
            .find(|e| e.path == path)
            .ok_or_else(|| {
                LogicalError::InvalidRequest(format!("no mount at {:?}", table.shown_path(path)))
            })?;
        match req.operation {
            Operation::Read => {
                // The effective TTLs, as Vault shows them: the system's where the mount sets 0.
                let system = self.lease_ttls();
                let mut data = Data::new();
                data.insert(
                    "default_lease_ttl".into(),
                    json!(entry.default_lease_ttl_secs(system)),
                );
                data.insert(
                    "max_lease_ttl".into(),
                    json!(entry.max_lease_ttl_secs(system)),
                );
                data.insert("force_no_cache".into(), json!(false));
                if table == Table::Auth {
                    data.insert("token_type".into(), json!("default-service"));
                }
                data.insert("description".into(), json!(entry.description));
                if !entry.options.is_empty() {
                    data.insert("options".into(), Value::Object(entry.options.clone()));
                }
                Ok(Response::data(data))
            }
            Operation::Create | Operation::Update => {
                let mut updated = entry.clone();
                if let Some(ttl) = get_duration(req.data, "default_lease_ttl")? {
                    updated.config.default_lease_ttl = ttl;
                }
                if let Some(ttl) = get_duration(req.data, "max_lease_ttl")? {
                    updated.config.max_lease_ttl = ttl;
                }
                check_lease_ttls(&updated, self.lease_ttls())?;
                if let Some(d) = get_str(req.data, "description")? {
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
                self.install_mount(updated).await?;
                Ok(Response::empty())
            }
            _ => Err(LogicalError::UnsupportedOperation),
        }
    }

    /// `sys/auth/token/tune`: the built-in token method uses the system's TTLs, which the
    /// server configuration sets; they are shown, not tuned.
    fn token_mount_tune(&self, req: &BackendRequest<'_>) -> Result<Response> {
        expect_op(req.operation, &[Operation::Read]).map_err(|_| {
            LogicalError::InvalidRequest(
                "the token auth method takes the server's default_lease_ttl and max_lease_ttl; \
                 it cannot be tuned"
                    .into(),
            )
        })?;
        let system = self.lease_ttls();
        let mut data = Data::new();
        data.insert("default_lease_ttl".into(), json!(system.default_secs));
        data.insert("max_lease_ttl".into(), json!(system.max_secs));
        data.insert("force_no_cache".into(), json!(false));
        data.insert("description".into(), json!("token based credentials"));
        data.insert("token_type".into(), json!("default-service"));
        Ok(Response::data(data))
    }

    pub(crate) async fn sys_internal(
        &self,
        req: &BackendRequest<'_>,
        rest: &str,
        caller: &Caller,
    ) -> Result<Response> {
        expect_op(req.operation, &[Operation::Read])?;
        let Some(path) = rest.strip_prefix("ui/mounts") else {
            return Err(LogicalError::UnsupportedPath(req.full_path()));
        };
        let path = path.trim_start_matches('/');
        if path.is_empty() {
            // As Vault: each table's mounts the caller has some access below.
            let mut data = Data::new();
            for (name, table) in [("secret", Table::Secrets), ("auth", Table::Auth)] {
                let mut shown = Map::new();
                for e in self.table_entries(table) {
                    if caller.acl.has_access_under(&e.path) {
                        shown.insert(table.shown_path(&e.path), e.to_json());
                    }
                }
                for (path, e) in self.builtin_listing(table) {
                    if caller.acl.has_access_under(&e.path) {
                        shown.insert(path, builtin_json(e));
                    }
                }
                data.insert(name.into(), Value::Object(shown));
            }
            return Ok(Response::data(data));
        }
        let Some(entry) = self.route(path).map(|(m, _)| m.entry) else {
            return Err(LogicalError::InvalidRequest(format!(
                "preflight capability check returned 403, please ensure client's policies grant access to path \"{path}\""
            )));
        };
        // Only reveal a mount to callers with some access below it.
        if !caller.acl.has_access_under(&entry.path) {
            return Err(LogicalError::PermissionDenied);
        }
        let mut data = match builtin_json(&entry) {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        data.insert("path".into(), json!(entry.path));
        Ok(Response::data(data))
    }
}

/// A mount's own TTLs must fit together, as Vault checks at enable and tune: a default above
/// the mount's max, or (when the mount sets no max) above the system's, is refused.
fn check_lease_ttls(entry: &MountEntry, system: &SystemTtls) -> Result<()> {
    let (default, max) = (entry.config.default_lease_ttl, entry.config.max_lease_ttl);
    if max > 0 && default > max {
        return Err(LogicalError::InvalidRequest(format!(
            "given default lease TTL of {default}s is greater than the mount's max lease TTL of {max}s"
        )));
    }
    if max == 0 && default > system.max_secs {
        return Err(LogicalError::InvalidRequest(format!(
            "given default lease TTL of {default}s is greater than the system max lease TTL of {}s",
            system.max_secs
        )));
    }
    Ok(())
}
