//! Audit: every authenticated request and its response are written, one JSON line each, to
//! every enabled device before the client sees a result. Sensitive strings are replaced by
//! `hmac-sha256:<hex>` with a per-device salt, so entries can be matched (`sys/audit-hash`)
//! without revealing secrets. If any device fails to write, the request is refused.

mod device;
mod hashing;

use std::sync::{Arc, RwLock};

use bunker_barrier::Barrier;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::logical::{LogicalError, Request, Response, Result};
use crate::time_util::now_rfc3339;
use bunker_sdk::Caller;
pub use device::FileDevice;

const AUDIT_TABLE_PATH: &str = "core/audit";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AuditEntry {
    pub path: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub options: Map<String, Value>,
    #[serde(default)]
    pub local: bool,
    /// HMAC key (hex); lives only behind the barrier.
    pub salt: String,
}

impl AuditEntry {
    pub fn to_json(&self) -> Value {
        json!({
            "type": self.kind,
            "description": self.description,
            "options": self.options,
            "path": self.path,
            "local": self.local,
        })
    }
}

#[derive(Default, Serialize, Deserialize)]
struct AuditTable {
    entries: Vec<AuditEntry>,
}

pub struct AuditBroker {
    barrier: Arc<Barrier>,
    devices: RwLock<Vec<Arc<FileDevice>>>,
}

impl AuditBroker {
    pub fn new(barrier: Arc<Barrier>) -> Self {
        AuditBroker {
            barrier,
            devices: RwLock::new(Vec::new()),
        }
    }

    async fn table(&self) -> Result<AuditTable> {
        match self.barrier.get(AUDIT_TABLE_PATH).await? {
            None => Ok(AuditTable::default()),
            Some(b) => Ok(serde_json::from_slice(&b)?),
        }
    }

    /// Open every device in the stored table (after unseal).
    pub async fn load(&self) -> Result<()> {
        let table = self.table().await?;
        let mut devices = Vec::new();
        for entry in table.entries {
            match FileDevice::open(entry.clone()).await {
                Ok(d) => devices.push(Arc::new(d)),
                Err(e) => {
                    tracing::error!(path = %entry.path, error = %e, "cannot open audit device");
                    return Err(e);
                }
            }
        }
        *self.devices_mut() = devices;
        Ok(())
    }

    pub fn unload(&self) {
        self.devices_mut().clear();
    }

    pub fn entries(&self) -> Vec<AuditEntry> {
        self.devices_ref()
            .iter()
            .map(|dev| dev.entry().clone())
            .collect()
    }

    pub async fn enable(&self, mut entry: AuditEntry) -> Result<()> {
        let mut table = self.table().await?;
        if table.entries.iter().any(|e| e.path == entry.path) {
            return Err(LogicalError::InvalidRequest(format!(
                "path already in use: {}",
                entry.path
            )));
        }
        entry.salt = crate::token::random_base62(32);
        // Opening first proves the device works before it is recorded.
        let device = FileDevice::open(entry.clone()).await?;
        // Like Vault, prove the device with an ordinary request entry.
        device
            .write_record(&json!({
                "time": now_rfc3339(),
                "type": "request",
                "auth": {},
                "request": {
                    "id": uuid::Uuid::new_v4().to_string(),
                    "operation": "update",
                    "path": "sys/audit/test",
                    "namespace": {"id": "root"},
                    "data": null,
                },
            }))
            .await?;
        table.entries.push(entry);
        self.save_table(&table).await?;
        self.devices_mut().push(Arc::new(device));
        Ok(())
    }

    pub async fn disable(&self, path: &str) -> Result<()> {
        let mut table = self.table().await?;
        table.entries.retain(|e| e.path != path);
        self.save_table(&table).await?;
        self.devices_mut().retain(|dev| dev.entry().path != path);
        Ok(())
    }

    pub fn hash_for(&self, path: &str, input: &str) -> Option<String> {
        self.devices_ref()
            .iter()
            .find(|dev| dev.entry().path == path)
            .map(|dev| dev.hash_str(input))
    }

    fn devices(&self) -> Vec<Arc<FileDevice>> {
        self.devices_ref().clone()
    }

    // The device list is replaced or edited in one statement under the lock: a panic elsewhere
    // cannot leave it half changed, so a poisoned lock still guards a consistent list.
    fn devices_ref(&self) -> std::sync::RwLockReadGuard<'_, Vec<Arc<FileDevice>>> {
        self.devices
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn devices_mut(&self) -> std::sync::RwLockWriteGuard<'_, Vec<Arc<FileDevice>>> {
        self.devices
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn save_table(&self, table: &AuditTable) -> Result<()> {
        self.barrier
            .put(AUDIT_TABLE_PATH, &serde_json::to_vec(table)?)
            .await?;
        Ok(())
    }

    /// Writes the request entry to every device. What it wrote (each device's encoded `auth`
    /// and `request` objects) is handed back for [`AuditBroker::log_response`]: the response
    /// entry repeats them, and hashing them again was a fifth of an audited write's work
    /// (bench/README.md, "Audit"). Nothing in the request or in the audited parts of the caller
    /// changes between the two entries.
    pub(crate) async fn log_request(
        &self,
        req: &Request,
        caller: Option<&Caller>,
    ) -> Result<LoggedRequest> {
        let devices = self.devices();
        let mut logged = Vec::with_capacity(devices.len());
        for dev in devices {
            let auth = dev.auth_part(caller)?;
            let request = dev.request_part(req, caller)?;
            dev.write_line(entry_line(&auth, None, &request, "request")?)
                .await?;
            logged.push(LoggedParts { dev, auth, request });
        }
        Ok(LoggedRequest(logged))
    }

    /// Writes the response entry to every device: with the parts this request's
    /// [`AuditBroker::log_request`] wrote to it (`logged`), or built again from `req` and
    /// `caller` for a device it did not write to (the request entry failed, or the device was
    /// enabled meanwhile). A device disabled meanwhile gets none, as in Vault, whose broker
    /// logs a response to the devices it has then.
    pub(crate) async fn log_response(
        &self,
        logged: Option<LoggedRequest>,
        req: &Request,
        caller: Option<&Caller>,
        result: &Result<Response>,
    ) -> Result<()> {
        let mut logged = logged.map(|LoggedRequest(parts)| parts).unwrap_or_default();
        for dev in self.devices() {
            let cached = logged
                .iter()
                .position(|parts| Arc::ptr_eq(&parts.dev, &dev))
                .map(|at| logged.swap_remove(at));
            let (auth, request) = match cached {
                Some(LoggedParts { auth, request, .. }) => (auth, request),
                None => (dev.auth_part(caller)?, dev.request_part(req, caller)?),
            };
            let (key, value) = match result {
                Ok(resp) => ("response", dev.response_part(resp)?),
                Err(e) => ("error", serde_json::to_vec(&e.to_string())?),
            };
            dev.write_line(entry_line(
                &auth,
                Some((key, &value)),
                &request,
                "response",
            )?)
            .await?;
        }
        Ok(())
    }
}

/// An entry's line from its encoded parts, keys in the sorted order they had when entries were
/// `serde_json` maps: `auth`, `error`, `request`, `response`, `time`, `type`.
fn entry_line(
    auth: &[u8],
    outcome: Option<(&str, &[u8])>,
    request: &[u8],
    kind: &str,
) -> Result<Vec<u8>> {
    let time = serde_json::to_vec(&now_rfc3339())?;
    let kind = serde_json::to_vec(kind)?;
    let outcome_len = outcome.map_or(0, |(key, value)| key.len() + value.len() + 4);
    let mut line = Vec::with_capacity(auth.len() + request.len() + outcome_len + time.len() + 48);
    let mut field = |key: &str, value: &[u8]| {
        line.push(if line.is_empty() { b'{' } else { b',' });
        line.push(b'"');
        line.extend_from_slice(key.as_bytes());
        line.extend_from_slice(b"\":");
        line.extend_from_slice(value);
    };
    field("auth", auth);
    let before_request = outcome.filter(|(key, _)| *key < "request");
    let after_request = outcome.filter(|(key, _)| *key > "request");
    if let Some((key, value)) = before_request {
        field(key, value);
    }
    field("request", request);
    if let Some((key, value)) = after_request {
        field(key, value);
    }
    field("time", &time);
    field("type", &kind);
    line.push(b'}');
    Ok(line)
}

/// What [`AuditBroker::log_request`] wrote, for the same request's response entry.
pub(crate) struct LoggedRequest(Vec<LoggedParts>);

/// One device's `auth` and `request` objects of a request entry, hashed and encoded.
struct LoggedParts {
    dev: Arc<FileDevice>,
    auth: Vec<u8>,
    request: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_line_is_one_json_object_of_its_parts() {
        let line = entry_line(
            br#"{"client_token":"hmac-sha256:ab"}"#,
            Some(("error", br#""permission denied""#)),
            br#"{"path":"x"}"#,
            "response",
        )
        .expect("line");
        let record: Value = serde_json::from_slice(&line).expect("JSON");
        assert_eq!(record["auth"]["client_token"], json!("hmac-sha256:ab"));
        assert_eq!(record["error"], json!("permission denied"));
        assert_eq!(record["request"]["path"], json!("x"));
        assert_eq!(record["type"], json!("response"));
        assert!(record["time"].as_str().is_some_and(|t| t.contains('T')));
        let keys: Vec<&String> = record.as_object().expect("object").keys().collect();
        assert_eq!(keys, ["auth", "error", "request", "time", "type"]);
        let line = entry_line(b"{}", Some(("response", b"{}")), b"{}", "response").expect("line");
        let text = String::from_utf8(line).expect("UTF-8");
        let at = |key: &str| text.find(&format!("\"{key}\":")).expect("key");
        assert!(at("auth") < at("request") && at("request") < at("response"));
        assert!(at("response") < at("time") && at("time") < at("type"));
        let bare = entry_line(b"{}", None, b"{}", "request").expect("line");
        let record: Value = serde_json::from_slice(&bare).expect("JSON");
        assert_eq!(record.as_object().map(|o| o.len()), Some(4));
    }
}
