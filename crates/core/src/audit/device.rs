//! The file audit device: appends JSON lines to a file (or stdout).
//!
//! Design reason: a dedicated thread per device owns the file. A request hands it its line and
//! awaits the result, so an audit write never blocks the async runtime, the request still
//! fails if its line could not be written (fail closed, as Vault), and lines queued while one
//! write runs go out together in the next.

use std::fs::OpenOptions;
use std::io::Write;

use serde_json::{json, Value};

use super::hashing::AuditHasher;
use super::AuditEntry;
use crate::logical::{LogicalError, Request, Response, Result};
use crate::token::{secret_in_path, PathSecret};
use bunker_sdk::Caller;

/// Lines waiting for the writer thread, and where each one's result goes.
type Job = (Vec<u8>, tokio::sync::oneshot::Sender<std::io::Result<()>>);

/// Lines a device may have queued before requests wait for room.
const QUEUE: usize = 1024;
/// Most lines written with one `write_all`.
const GROUP: usize = 256;

enum Sink {
    /// The writer thread's queue (a file, or stdout).
    Writer(tokio::sync::mpsc::Sender<Job>),
    Discard,
}

/// Start the thread that appends to `out`; it ends when the device is dropped.
fn spawn_writer(mut out: Box<dyn Write + Send>) -> std::io::Result<tokio::sync::mpsc::Sender<Job>> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Job>(QUEUE);
    std::thread::Builder::new()
        .name("bunker-audit".into())
        .spawn(move || {
            while let Some(first) = rx.blocking_recv() {
                let mut jobs = vec![first];
                while jobs.len() < GROUP {
                    match rx.try_recv() {
                        Ok(job) => jobs.push(job),
                        Err(_) => break,
                    }
                }
                let mut buf = Vec::with_capacity(jobs.iter().map(|(l, _)| l.len()).sum());
                for (line, _) in &jobs {
                    buf.extend_from_slice(line);
                }
                let result = out.write_all(&buf).and_then(|()| out.flush());
                for (_, done) in jobs {
                    let copy = match &result {
                        Ok(()) => Ok(()),
                        Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
                    };
                    let _ = done.send(copy);
                }
            }
        })?;
    Ok(tx)
}

pub struct FileDevice {
    entry: AuditEntry,
    /// The HMAC of the entry's salt, keyed once.
    hasher: AuditHasher,
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
    /// Open the device's file (off the async runtime) and start its writer.
    pub async fn open(entry: AuditEntry) -> Result<Self> {
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
        let out: Box<dyn Write + Send> = match path.as_str() {
            "" => return Err(LogicalError::InvalidRequest("file_path is required".into())),
            "stdout" => Box::new(std::io::stdout()),
            "discard" => {
                return Ok(FileDevice {
                    log_raw: opt_bool(&entry, "log_raw", false),
                    hmac_accessor: opt_bool(&entry, "hmac_accessor", true),
                    hasher: AuditHasher::new(&entry.salt),
                    entry,
                    sink: Sink::Discard,
                })
            }
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
                let p = p.to_owned();
                let opened = tokio::task::spawn_blocking(move || opts.open(&p).map_err(|e| (p, e)))
                    .await
                    .map_err(|e| LogicalError::Internal(format!("opening an audit file: {e}")))?;
                let file = opened.map_err(|(p, e)| {
                    LogicalError::InvalidRequest(format!("cannot open audit file {p:?}: {e}"))
                })?;
                Box::new(file)
            }
        };
        let sink = Sink::Writer(
            spawn_writer(out)
                .map_err(|e| LogicalError::Internal(format!("starting the audit writer: {e}")))?,
        );
        Ok(FileDevice {
            log_raw: opt_bool(&entry, "log_raw", false),
            hmac_accessor: opt_bool(&entry, "hmac_accessor", true),
            hasher: AuditHasher::new(&entry.salt),
            entry,
            sink,
        })
    }

    pub fn entry(&self) -> &AuditEntry {
        &self.entry
    }

    pub fn hash_str(&self, input: &str) -> String {
        self.hasher.hash_str(input)
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
            self.hasher.hash_map(m)
        }
    }

    fn hv(&self, v: &Value) -> Value {
        if self.log_raw {
            v.clone()
        } else {
            self.hasher.hash_value(v)
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

    /// Append one JSON line; returns once it was written (or failed to be).
    pub async fn write_line(&self, record: &Value) -> Result<()> {
        let mut line = serde_json::to_vec(record)?;
        line.push(b'\n');
        let fail = |e: &dyn std::fmt::Display| {
            LogicalError::AuditFailed(format!("device {:?}: {e}", self.entry.path))
        };
        match &self.sink {
            Sink::Discard => Ok(()),
            Sink::Writer(queue) => {
                let (done, written) = tokio::sync::oneshot::channel();
                queue
                    .send((line, done))
                    .await
                    .map_err(|_| fail(&"the writer stopped"))?;
                written
                    .await
                    .map_err(|_| fail(&"the writer stopped"))?
                    .map_err(|e| fail(&e))
            }
        }
    }
}
