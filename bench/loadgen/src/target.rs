//! The two systems under test and how one write or read of key `i` looks on each.
//!
//! Both get the same payload: a `value_bytes`-long value under a unique key. Bunker takes
//! KV v2 JSON (`{"data":{"v":...}}`); etcd's gateway takes base64 key and value.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::Bytes;
use serde_json::json;

use crate::http::Req;

#[derive(Clone, Debug)]
pub enum Target {
    /// Bunker KV v2 mounted at `secret/`.
    Bunker { token: String },
    /// etcd v3 HTTP/JSON gateway (`/v3/kv/...`, etcd 3.4+).
    Etcd,
}

/// A printable value of exactly `n` bytes.
pub fn value_of(n: usize) -> String {
    let pattern = b"0123456789abcdefghijklmnopqrstuvwxyz";
    (0..n)
        .map(|i| char::from(pattern.get(i % pattern.len()).copied().unwrap_or(b'x')))
        .collect()
}

impl Target {
    pub fn key(prefix: &str, i: u64) -> String {
        format!("{prefix}/k{i:010}")
    }

    /// Write `key` = `value` (the body is prebuilt by [`Target::write_body`]).
    pub fn write(&self, key: &str, body: Bytes) -> Req {
        match self {
            Target::Bunker { token } => {
                Req::post(format!("/v1/secret/data/{key}"), body).with_token(Some(token))
            }
            Target::Etcd => Req::post("/v3/kv/put", body),
        }
    }

    pub fn write_body(&self, key: &str, value: &str) -> Bytes {
        let v = match self {
            Target::Bunker { .. } => json!({ "data": { "v": value } }),
            Target::Etcd => json!({ "key": B64.encode(key), "value": B64.encode(value) }),
        };
        Bytes::from(v.to_string())
    }

    /// Read `key`. etcd's range is linearizable unless `serializable` is set, and it is not.
    pub fn read(&self, key: &str) -> Req {
        match self {
            Target::Bunker { token } => {
                Req::get(format!("/v1/secret/data/{key}")).with_token(Some(token))
            }
            Target::Etcd => Req::post(
                "/v3/kv/range",
                json!({ "key": B64.encode(key) }).to_string(),
            ),
        }
    }

    /// Whether a successful read response really carries a value (etcd answers 200 with no
    /// `kvs` for a missing key).
    pub fn read_found(&self, body: &[u8]) -> bool {
        match self {
            Target::Bunker { .. } => true,
            Target::Etcd => serde_json::from_slice::<serde_json::Value>(body)
                .ok()
                .and_then(|v| {
                    v.get("kvs")
                        .and_then(|k| k.as_array())
                        .map(|a| !a.is_empty())
                })
                .unwrap_or(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_have_the_requested_length() {
        assert_eq!(value_of(256).len(), 256);
        assert_eq!(value_of(0).len(), 0);
    }

    #[test]
    fn etcd_bodies_are_base64() {
        let b = Target::Etcd.write_body("a", "b");
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap_or_default();
        assert_eq!(v["key"], "YQ==");
        assert_eq!(v["value"], "Yg==");
    }
}
