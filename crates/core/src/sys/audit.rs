//! `sys/audit` and `sys/audit-hash`.

use serde_json::{json, Map, Value};

use crate::audit::AuditEntry;
use crate::core::Core;
use crate::logical::fields::{get_bool, get_str, warn_unknown};
use crate::logical::{BackendRequest, Data, LogicalError, Operation, Response, Result};
use crate::mounts::normalize_mount_path;
use bunker_sdk::{expect_op, WRITE};

impl Core {
    pub(crate) async fn sys_audit(&self, req: &BackendRequest<'_>, rest: &str) -> Result<Response> {
        if rest.is_empty() {
            expect_op(req.operation, &[Operation::Read])?;
            let mut data = Data::new();
            for e in self.audit.entries() {
                data.insert(e.path.clone(), e.to_json());
            }
            let mut resp = Response::data(data);
            resp.data_at_top_level = true;
            return Ok(resp);
        }
        let path = normalize_mount_path(rest);
        let _guard = self.table_lock.lock().await;
        match req.operation {
            Operation::Create | Operation::Update => {
                let kind = get_str(req.data, "type")?
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| LogicalError::InvalidRequest("type is required".into()))?;
                let options: Map<String, Value> = match req.data.get("options") {
                    None | Some(Value::Null) => Map::new(),
                    Some(Value::Object(m)) => m.clone(),
                    Some(_) => {
                        return Err(LogicalError::InvalidRequest("options must be a map".into()))
                    }
                };
                let entry = AuditEntry {
                    path: path.clone(),
                    kind,
                    description: get_str(req.data, "description")?.unwrap_or_default(),
                    options,
                    local: get_bool(req.data, "local")?.unwrap_or(false),
                    salt: String::new(),
                };
                self.audit.enable(entry).await?;
                tracing::info!(path = %path, "audit device enabled");
                let known = ["type", "description", "options", "local"];
                Ok(warn_unknown(Response::empty(), req.data, &known))
            }
            Operation::Delete => {
                self.audit.disable(&path).await?;
                Ok(Response::empty())
            }
            _ => Err(LogicalError::UnsupportedOperation),
        }
    }

    pub(crate) async fn sys_audit_hash(
        &self,
        req: &BackendRequest<'_>,
        rest: &str,
    ) -> Result<Response> {
        expect_op(req.operation, WRITE)?;
        let input = get_str(req.data, "input")?.unwrap_or_default();
        let path = normalize_mount_path(rest);
        let hash = self
            .audit
            .hash_for(&path, &input)
            .ok_or_else(|| LogicalError::InvalidRequest(format!("unknown audit backend {path}")))?;
        let mut data = Data::new();
        data.insert("hash".into(), json!(hash));
        Ok(Response::data(data))
    }
}
