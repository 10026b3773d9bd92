//! `sys/policies/acl/*`, the legacy `sys/policy/*`, and `sys/capabilities*`.

use bunker_policy::Acl;
use serde_json::json;

use crate::core::Core;
use crate::logical::fields::{get_str, get_str_list};
use crate::logical::{BackendRequest, Data, LogicalError, Operation, Response, Result};
use bunker_sdk::Caller;
use bunker_sdk::{expect_op, WRITE};

impl Core {
    pub(crate) async fn sys_policies(
        &self,
        req: &BackendRequest<'_>,
        name: &str,
        legacy: bool,
    ) -> Result<Response> {
        if name.is_empty() {
            expect_op(req.operation, &[Operation::Read, Operation::List])?;
            let names = self.policies.list().await?;
            let mut data = Data::new();
            data.insert("keys".into(), json!(names));
            if legacy {
                data.insert("policies".into(), json!(names));
            }
            let mut resp = Response::data(data);
            resp.data_at_top_level = legacy;
            return Ok(resp);
        }
        let name = crate::policy_store::normalize_policy_name(name)?;
        match req.operation {
            Operation::Read => {
                let raw = if name == "root" {
                    Some(String::new())
                } else {
                    self.policies.get_raw(&name).await?
                };
                let raw = raw.ok_or_else(|| LogicalError::NotFound(String::new()))?;
                let mut data = Data::new();
                data.insert("name".into(), json!(name));
                data.insert(if legacy { "rules" } else { "policy" }.into(), json!(raw));
                let mut resp = Response::data(data);
                resp.data_at_top_level = legacy;
                Ok(resp)
            }
            Operation::Create | Operation::Update => {
                let raw = match get_str(req.data, "policy")? {
                    Some(p) => p,
                    None => get_str(req.data, "rules")?.ok_or_else(|| {
                        LogicalError::InvalidRequest(
                            "'policy' parameter not supplied or empty".into(),
                        )
                    })?,
                };
                let raw = decode_maybe_base64(&raw);
                self.policies.put(&name, &raw).await?;
                Ok(Response::empty())
            }
            Operation::Delete => {
                self.policies.delete(&name).await?;
                Ok(Response::empty())
            }
            _ => Err(LogicalError::UnsupportedOperation),
        }
    }

    pub(crate) async fn sys_capabilities(
        &self,
        req: &BackendRequest<'_>,
        caller: &Caller,
        is_self: bool,
    ) -> Result<Response> {
        expect_op(req.operation, WRITE)?;
        let paths = requested_paths(req.data)?;
        if is_self {
            return Ok(capabilities_response(&caller.acl, &paths));
        }
        let token = get_str(req.data, "token")?
            .filter(|t| !t.is_empty())
            .ok_or_else(|| LogicalError::InvalidRequest("'token' not specified".into()))?;
        let entry = self
            .tokens
            .lookup(&token)
            .await?
            .ok_or_else(|| LogicalError::InvalidRequest("invalid token".into()))?;
        let acl = self.policies.acl(&entry.policies).await?;
        Ok(capabilities_response(&acl, &paths))
    }

    pub(crate) async fn sys_capabilities_accessor(
        &self,
        req: &BackendRequest<'_>,
    ) -> Result<Response> {
        expect_op(req.operation, WRITE)?;
        let paths = requested_paths(req.data)?;
        let accessor = get_str(req.data, "accessor")?.unwrap_or_default();
        let entry = self
            .tokens
            .lookup_accessor(&accessor)
            .await?
            .ok_or_else(|| LogicalError::InvalidRequest("invalid accessor".into()))?;
        let acl = self.policies.acl(&entry.policies).await?;
        Ok(capabilities_response(&acl, &paths))
    }
}

fn requested_paths(data: &Data) -> Result<Vec<String>> {
    let mut paths = get_str_list(data, "paths")?.unwrap_or_default();
    if let Some(p) = get_str(data, "path")? {
        paths.push(p);
    }
    if paths.is_empty() {
        return Err(LogicalError::InvalidRequest(
            "paths must be supplied".into(),
        ));
    }
    Ok(paths
        .into_iter()
        .map(|p| p.trim_start_matches('/').to_owned())
        .collect())
}

fn capabilities_response(acl: &Acl, paths: &[String]) -> Response {
    let mut data = Data::new();
    let mut last = Vec::new();
    for path in paths {
        let caps = if acl.is_root() {
            vec!["root".to_owned()]
        } else {
            bunker_policy::capability_names(&acl.capabilities(path))
        };
        data.insert(path.clone(), json!(caps));
        last = caps;
    }
    data.insert("capabilities".into(), json!(last));
    let mut resp = Response::data(data);
    resp.data_at_top_level = true;
    resp
}

/// Vault accepts a policy body base64-encoded as well as plain.
fn decode_maybe_base64(raw: &str) -> String {
    use base64::Engine as _;
    let trimmed = raw.trim();
    if trimmed.contains('"') || trimmed.contains('{') || trimmed.is_empty() {
        return raw.to_owned();
    }
    base64::engine::general_purpose::STANDARD
        .decode(trimmed)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .unwrap_or_else(|| raw.to_owned())
}
