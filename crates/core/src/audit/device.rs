//! The file audit device: appends JSON lines to a file (or stdout).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::Mutex;

use serde_json::{json, Value};

use super::hashing::{hash_map, hash_value, hmac_str};
use super::AuditEntry;
use crate::logical::{LogicalError, Request, Response, Result};
use crate::request_handling::Caller;
use crate::token::{secret_in_path, PathSecret};

enum Sink {
    File(Mutex<File>),
    Stdout,
    Discard,
}

pub struct FileDevice {
    entry: AuditEntry,
    sink: Sink,
    log_raw: bool,
    hmac_accessor: bool,
}

fn opt_bool(entry: &AuditEntry, name: &str, default: bool) -> bool {
    match entry.options.get(name) {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => matches!(s.as_str(), "true" | "1"),
        _ => default,
    }
}

impl FileDevice {
    pub fn open(entry: AuditEntry) -> Result<Self> {
        if entry.kind != "file" {
            return Err(LogicalError::InvalidRequest(format!(
                "unknown audit device type {:?}; only \"file\" is supported",
                entry.kind
            )));
        }
        let path = entry
            .options
            .get("file_path")
            .or_else(|| entry.options.get("path"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let sink = match path.as_str() {
            "" => return Err(LogicalError::InvalidRequest("file_path is required".into())),
            "stdout" => Sink::Stdout,
            "discard" => Sink::Discard,
            p => {
                let mode = entry
                    .options
                    .get("mode")
                    .and_then(Value::as_str)
                    .and_then(|m| u32::from_str_radix(m, 8).ok())
                    .unwrap_or(0o600);
                let mut opts = OpenOptions::new();
                opts.create(true).append(true);
                #[cfg(unix)]
                {
                    use std::os::unix::fs::OpenOptionsExt;
                    opts.mode(mode);
                }
                let file = opts.open(p).map_err(|e| {
                    LogicalError::InvalidRequest(format!("cannot open audit file {p:?}: {e}"))
                })?;
                Sink::File(Mutex::new(file))
            }
        };
        Ok(FileDevice {
            log_raw: opt_bool(&entry, "log_raw", false),
            hmac_accessor: opt_bool(&entry, "hmac_accessor", true),
            entry,
            sink,
        })
    }

    pub fn entry(&self) -> &AuditEntry {
        &self.entry
    }

    pub fn hash_str(&self, input: &str) -> String {
        hmac_str(&self.entry.salt, input)
    }

    fn h(&self, s: &str) -> Value {
        if self.log_raw || s.is_empty() {
            json!(s)
        } else {
            json!(self.hash_str(s))
        }
    }

    fn h_accessor(&self, s: &str) -> Value {
        if self.hmac_accessor {
            self.h(s)
        } else {
            json!(s)
        }
    }

    /// An object hashed like [`Self::hv`], without copying it first unless it is logged raw.
    fn hm(&self, m: &serde_json::Map<String, Value>) -> Value {
        if self.log_raw {
            Value::Object(m.clone())
        } else {
            hash_map(&self.entry.salt, m)
        }
    }

    fn hv(&self, v: &Value) -> Value {
        if self.log_raw {
            v.clone()
        } else {
            hash_value(&self.entry.salt, v)
        }
    }

    pub fn auth_json(&self, caller: Option<&Caller>) -> Value {
        match caller {
            None => json!({}),
            Some(c) => json!({
                "client_token": self.h(&c.token),
                "accessor": self.h_accessor(&c.entry.accessor),
                "display_name": c.entry.display_name,
                "policies": c.entry.policies,
                "token_policies": c.entry.policies,
                "token_type": c.entry.token_type.as_str(),
                "token_ttl": c.entry.creation_ttl,
            }),
        }
    }

    /// The request path, with a token or accessor in it HMAC'd like any other (Vault's
    /// `auth/token/lookup/<token>` and friends).
    fn path_json(&self, path: &str) -> Value {
        match secret_in_path(path) {
            Some((prefix, secret, PathSecret::Token)) => match self.h(secret) {
                Value::String(hashed) => json!(format!("{prefix}{hashed}")),
                _ => json!(path),
            },
            Some((prefix, secret, PathSecret::Accessor)) => match self.h_accessor(secret) {
                Value::String(hashed) => json!(format!("{prefix}{hashed}")),
                _ => json!(path),
            },
            None => json!(path),
        }
    }

    pub fn request_json(&self, req: &Request, caller: Option<&Caller>) -> Value {
        let data = if req.data.is_empty() {
            Value::Null
        } else {
            self.hm(&req.data)
        };
        json!({
            "id": req.id,
            "operation": req.operation.as_str(),
            "client_token": caller.map(|c| self.h(&c.token)).unwrap_or(json!("")),
            "client_token_accessor": caller.map(|c| self.h_accessor(&c.entry.accessor)).unwrap_or(json!("")),
            "namespace": {"id": "root"},
            "path": self.path_json(&req.path),
            "data": data,
            "remote_address": req.remote_addr.clone().unwrap_or_default(),
            "wrap_ttl": req.wrap_ttl.map(|d| d.as_secs()).unwrap_or(0),
        })
    }

    pub fn response_json(&self, resp: &Response) -> Value {
        let mut out = serde_json::Map::new();
        if let Some(data) = &resp.data {
            out.insert("data".into(), self.hm(data));
        }
        if let Some(raw) = &resp.raw {
            out.insert("data".into(), self.hv(&raw.body));
        }
        if let Some(auth) = &resp.auth {
            out.insert(
                "auth".into(),
                json!({
                    "client_token": self.h(&auth.client_token),
                    "accessor": self.h_accessor(&auth.accessor),
                    "policies": auth.policies,
                    "token_type": auth.token_type,
                    "lease_duration": auth.lease_duration,
                }),
            );
        }
        if let Some(w) = &resp.wrap_info {
            out.insert(
                "wrap_info".into(),
                json!({
                    "token": self.h(&w.token),
                    "accessor": self.h_accessor(&w.accessor),
                    "ttl": w.ttl,
                    "creation_time": w.creation_time,
                    "creation_path": w.creation_path,
                }),
            );
        }
        Value::Object(out)
    }

    pub fn write_line(&self, record: &Value) -> Result<()> {
        let mut line = serde_json::to_vec(record)?;
        line.push(b'\n');
        let fail = |e: std::io::Error| {
            LogicalError::AuditFailed(format!("device {:?}: {e}", self.entry.path))
        };
        match &self.sink {
            Sink::Discard => Ok(()),
            Sink::Stdout => std::io::stdout().lock().write_all(&line).map_err(fail),
            Sink::File(f) => {
                let mut file = f
                    .lock()
                    .map_err(|_| LogicalError::AuditFailed("audit file lock poisoned".into()))?;
                file.write_all(&line).map_err(fail)
            }
        }
    }
}
