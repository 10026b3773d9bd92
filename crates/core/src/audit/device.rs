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

    /// `value` as it is logged: every string in it hashed, unless the device logs raw. Hashed
    /// as it is encoded, so no hashed copy of the value is built first.
    fn logged<'a>(&'a self, value: Plain<'a>) -> Logged<'a> {
        Logged {
            value,
            hasher: (!self.log_raw).then_some(&self.hasher),
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

    /// The `auth` object of an entry, encoded.
    pub fn auth_part(&self, caller: Option<&Caller>) -> Result<Vec<u8>> {
        Ok(serde_json::to_vec(&self.auth_json(caller))?)
    }

    /// The `request` object of an entry, encoded.
    pub fn request_part(&self, req: &Request, caller: Option<&Caller>) -> Result<Vec<u8>> {
        let part = RequestPart {
            id: req.id.as_str(),
            operation: req.operation.as_str(),
            client_token: caller.map_or(json!(""), |c| self.h(&c.token)),
            client_token_accessor: caller.map_or(json!(""), |c| self.h_accessor(&c.entry.accessor)),
            namespace: Namespace { id: "root" },
            path: self.path_json(&req.path),
            data: (!req.data.is_empty()).then(|| self.logged(Plain::Map(&req.data))),
            remote_address: req.remote_addr.as_deref().unwrap_or_default(),
            wrap_ttl: req.wrap_ttl.map_or(0, |d| d.as_secs()),
        };
        Ok(serde_json::to_vec(&part)?)
    }

    /// The `response` object of an entry, encoded.
    pub fn response_part(&self, resp: &Response) -> Result<Vec<u8>> {
        let data = match (&resp.raw, &resp.data) {
            (Some(raw), _) => Some(self.logged(Plain::Value(&raw.body))),
            (None, Some(data)) => Some(self.logged(Plain::Map(data))),
            (None, None) => None,
        };
        let auth = resp.auth.as_ref().map(|auth| {
            json!({
                "client_token": self.h(&auth.client_token),
                "accessor": self.h_accessor(&auth.accessor),
                "policies": auth.policies,
                "token_type": auth.token_type,
                "lease_duration": auth.lease_duration,
            })
        });
        let wrap_info = resp.wrap_info.as_ref().map(|w| {
            json!({
                "token": self.h(&w.token),
                "accessor": self.h_accessor(&w.accessor),
                "ttl": w.ttl,
                "creation_time": w.creation_time,
                "creation_path": w.creation_path,
            })
        });
        Ok(serde_json::to_vec(&ResponsePart {
            auth,
            data,
            wrap_info,
        })?)
    }

    /// Append one JSON line (a record without its newline); returns once it was written (or
    /// failed to be).
    pub async fn write_record(&self, record: &Value) -> Result<()> {
        self.write_line(serde_json::to_vec(record)?).await
    }

    /// Append `line` (an encoded record) and a newline; returns once it was written (or
    /// failed to be).
    pub async fn write_line(&self, mut line: Vec<u8>) -> Result<()> {
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

/// The request's object of an entry. Fields in sorted order, as when it was a `serde_json` map.
#[derive(serde::Serialize)]
struct RequestPart<'a> {
    client_token: Value,
    client_token_accessor: Value,
    /// `null` when the request has no data.
    data: Option<Logged<'a>>,
    id: &'a str,
    namespace: Namespace,
    operation: &'static str,
    path: Value,
    remote_address: &'a str,
    wrap_ttl: u64,
}

#[derive(serde::Serialize)]
struct Namespace {
    id: &'static str,
}

/// The response's object: only the parts the response has (fields sorted, as above).
#[derive(serde::Serialize)]
struct ResponsePart<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    auth: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<Logged<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    wrap_info: Option<Value>,
}

/// A value of the request or response as logged.
#[derive(Clone, Copy)]
enum Plain<'a> {
    Value(&'a Value),
    Map(&'a serde_json::Map<String, Value>),
}

/// `value` encoded with every string in it hashed by `hasher` (as
/// [`AuditHasher::hash_value`] would make it), or as it is without one.
#[derive(Clone, Copy)]
struct Logged<'a> {
    value: Plain<'a>,
    hasher: Option<&'a AuditHasher>,
}

impl serde::Serialize for Logged<'_> {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        let Some(hasher) = self.hasher else {
            return match self.value {
                Plain::Value(value) => value.serialize(serializer),
                Plain::Map(map) => map.serialize(serializer),
            };
        };
        let nested = |value| Logged {
            value: Plain::Value(value),
            hasher: Some(hasher),
        };
        let map = match self.value {
            Plain::Map(map) | Plain::Value(Value::Object(map)) => map,
            Plain::Value(Value::String(text)) => {
                return serializer.serialize_str(&hasher.hash_str(text))
            }
            Plain::Value(Value::Array(items)) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(&nested(item))?;
                }
                return seq.end();
            }
            Plain::Value(other) => return other.serialize(serializer),
        };
        let mut out = serializer.serialize_map(Some(map.len()))?;
        for (key, value) in map {
            out.serialize_entry(key, &nested(value))?;
        }
        out.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logical::{Operation, RawResponse};

    async fn device(log_raw: bool) -> FileDevice {
        let mut options = serde_json::Map::new();
        options.insert("file_path".into(), json!("discard"));
        options.insert("log_raw".into(), json!(log_raw));
        FileDevice::open(AuditEntry {
            path: "test/".into(),
            kind: "file".into(),
            description: String::new(),
            options,
            local: false,
            salt: "salt".into(),
        })
        .await
        .expect("a discarding device")
    }

    fn data() -> serde_json::Map<String, Value> {
        let value = json!({
            "s": "secret", "n": 3, "f": 1.5, "b": true, "z": null, "e": "",
            "l": ["x", 1, {"deep": "y"}, []], "o": {"inner": "z", "k": {}}
        });
        match value {
            Value::Object(map) => map,
            _ => unreachable!("an object literal"),
        }
    }

    fn decoded(bytes: &[u8]) -> Value {
        serde_json::from_slice(bytes).expect("a part is JSON")
    }

    /// The parts are encoded while being hashed; they must say what hashing the data first
    /// (`AuditHasher::hash_value`) and encoding the result said.
    #[tokio::test]
    async fn parts_hash_every_string_as_the_value_form_did() {
        let hashed = device(false).await;
        let mut req = Request::new(Operation::Update, "secret/data/x");
        req.data = data();
        let hasher = AuditHasher::new("salt");
        let request = decoded(&hashed.request_part(&req, None).expect("request part"));
        assert_eq!(request["data"], hasher.hash_map(&data()), "{request}");
        assert_eq!(request["path"], json!("secret/data/x"));
        assert_eq!(request["client_token"], json!(""));
        assert_eq!(request["namespace"], json!({"id": "root"}));
        assert!(!request.to_string().contains("secret\""), "{request}");
        // Fields in the sorted order they had as a `serde_json` map.
        let part = hashed.request_part(&req, None).expect("request part");
        let text = String::from_utf8(part).expect("UTF-8");
        let keys = [
            "\"client_token\"",
            "\"client_token_accessor\"",
            "\"data\"",
            "\"id\"",
            "\"namespace\"",
            "\"operation\"",
            "\"path\"",
            "\"remote_address\"",
            "\"wrap_ttl\"",
        ];
        let at: Vec<usize> = keys.iter().map(|k| text.find(k).expect("key")).collect();
        assert!(
            at.windows(2).all(|w| w[0] < w[1]),
            "keys out of order: {text}"
        );

        let resp = Response {
            data: Some(data()),
            ..Response::default()
        };
        let response = decoded(&hashed.response_part(&resp).expect("response part"));
        assert_eq!(response, json!({"data": hasher.hash_map(&data())}));
        let raw = Response {
            raw: Some(Box::new(RawResponse {
                status: 200,
                body: json!(["a", {"b": "c"}]),
                content_type: None,
            })),
            ..Response::default()
        };
        let response = decoded(&hashed.response_part(&raw).expect("raw part"));
        assert_eq!(
            response,
            json!({"data": hasher.hash_value(&json!(["a", {"b": "c"}]))})
        );
        let empty = decoded(&hashed.response_part(&Response::default()).expect("empty"));
        assert_eq!(empty, json!({}));

        // A request without data logs `data: null`; a device logging raw logs it as it is.
        let bare = Request::new(Operation::Read, "secret/data/x");
        let request = decoded(&hashed.request_part(&bare, None).expect("bare"));
        assert_eq!(request["data"], Value::Null);
        let raw_device = device(true).await;
        let request = decoded(&raw_device.request_part(&req, None).expect("raw request"));
        assert_eq!(request["data"], Value::Object(data()));
    }
}
