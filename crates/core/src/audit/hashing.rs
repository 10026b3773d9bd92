//! HMAC-SHA256 of audit values, Vault style: every string leaf becomes `hmac-sha256:<hex>`.
//!
//! A device keys its [`AuditHasher`] once: keying HMAC hashes the salt's two pads, which is half
//! the work of hashing a short string, and an audited request hashes dozens of them.

use hmac::{Hmac, Mac};
#[cfg(test)]
use serde_json::{Map, Value};
use sha2::Sha256;

/// The HMAC of one salt, keyed once; cloned for each value.
#[derive(Clone)]
pub struct AuditHasher(Option<Hmac<Sha256>>);

impl AuditHasher {
    pub fn new(salt: &str) -> AuditHasher {
        // HMAC takes keys of any length; `None` cannot happen, and hashes to an empty digest
        // as the unkeyed form did.
        AuditHasher(Hmac::<Sha256>::new_from_slice(salt.as_bytes()).ok())
    }

    /// `hmac-sha256:<hex>` of `input`.
    pub fn hash_str(&self, input: &str) -> String {
        let digest = self.0.clone().map(|mut mac| {
            mac.update(input.as_bytes());
            crate::hex_text::hex_lower(&mac.finalize().into_bytes())
        });
        format!("hmac-sha256:{}", digest.unwrap_or_default())
    }

    /// Every string in a JSON value hashed, recursively (numbers and booleans are kept), as
    /// a hashed copy: the reference the devices' streaming form (`device.rs`, `Logged`) is
    /// tested against.
    #[cfg(test)]
    pub fn hash_value(&self, value: &Value) -> Value {
        match value {
            Value::String(s) => Value::String(self.hash_str(s)),
            Value::Array(items) => Value::Array(items.iter().map(|v| self.hash_value(v)).collect()),
            Value::Object(map) => self.hash_map(map),
            other => other.clone(),
        }
    }

    /// [`Self::hash_value`] of an object.
    #[cfg(test)]
    pub fn hash_map(&self, map: &Map<String, Value>) -> Value {
        Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), self.hash_value(v)))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn hmac_str(salt: &str, input: &str) -> String {
        AuditHasher::new(salt).hash_str(input)
    }

    #[test]
    fn hashes_strings_only() {
        let v = AuditHasher::new("salt")
            .hash_value(&json!({"a": "secret", "n": 3, "l": ["x"], "o": {"b": true}}));
        let a = v["a"].as_str().unwrap_or_default();
        assert!(a.starts_with("hmac-sha256:"));
        assert!(!a.contains("secret"));
        assert_eq!(v["n"], json!(3));
        assert!(v["l"][0]
            .as_str()
            .unwrap_or_default()
            .starts_with("hmac-sha256:"));
        assert_eq!(v["o"]["b"], json!(true));
        assert_eq!(hmac_str("salt", "secret"), a);
        assert_ne!(hmac_str("other", "secret"), a);
        // The keyed hasher, reused across values, answers as a fresh one each time.
        let hasher = AuditHasher::new("salt");
        assert_eq!(hasher.hash_str("secret"), a);
        assert_eq!(hasher.hash_str("secret"), a);
        assert_eq!(hasher.hash_str("other"), hmac_str("salt", "other"));
    }

    #[test]
    fn the_digest_is_rfc_4231s() {
        // RFC 4231, test case 2: key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            hmac_str("Jefe", "what do ya want for nothing?"),
            "hmac-sha256:5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
