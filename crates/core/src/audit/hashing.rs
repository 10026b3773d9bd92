//! HMAC-SHA256 of audit values, Vault style: every string leaf becomes `hmac-sha256:<hex>`.

use hmac::{Hmac, Mac};
use serde_json::{Map, Value};
use sha2::Sha256;

pub fn hmac_str(salt: &str, input: &str) -> String {
    let mac = Hmac::<Sha256>::new_from_slice(salt.as_bytes()).map(|mut m| {
        m.update(input.as_bytes());
        hex::encode(m.finalize().into_bytes())
    });
    format!("hmac-sha256:{}", mac.unwrap_or_default())
}

/// Hash every string in a JSON value, recursively (numbers and booleans are kept).
pub fn hash_value(salt: &str, value: &Value) -> Value {
    match value {
        Value::String(s) => Value::String(hmac_str(salt, s)),
        Value::Array(items) => Value::Array(items.iter().map(|v| hash_value(salt, v)).collect()),
        Value::Object(map) => hash_map(salt, map),
        other => other.clone(),
    }
}

/// [`hash_value`] of an object, read in place (no copy of the plain values is made).
pub fn hash_map(salt: &str, map: &Map<String, Value>) -> Value {
    Value::Object(
        map.iter()
            .map(|(k, v)| (k.clone(), hash_value(salt, v)))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn hashes_strings_only() {
        let v = hash_value(
            "salt",
            &json!({"a": "secret", "n": 3, "l": ["x"], "o": {"b": true}}),
        );
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
    }
}
