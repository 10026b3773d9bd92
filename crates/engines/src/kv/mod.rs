//! The `kv` secrets engine in its two versions, chosen per mount by the `version` option.

pub mod v1;
pub mod v2;

use std::sync::Arc;

use bunker_sdk::{BackendFactory, LogicalBackend, LogicalError, Result};
use serde_json::{Map, Value};

pub use v1::KvV1;
pub use v2::KvV2;

/// Factory for `kv` mounts: `options["version"]` of `"2"`/`2` gives KV v2; absent, `""`,
/// `"1"`/`1` give KV v1. Anything else is refused.
pub fn kv_factory() -> impl BackendFactory {
    |options: &Map<String, Value>| -> Result<Arc<dyn LogicalBackend>> {
        let backend: Arc<dyn LogicalBackend> = match kv_version(options)? {
            KvVersion::V1 => Arc::new(KvV1::new()),
            KvVersion::V2 => Arc::new(KvV2::new()),
        };
        Ok(backend)
    }
}

/// Which KV version a mount's options ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvVersion {
    V1,
    V2,
}

/// Read the `version` mount option.
pub fn kv_version(options: &Map<String, Value>) -> Result<KvVersion> {
    let version = match options.get("version") {
        None | Some(Value::Null) => return Ok(KvVersion::V1),
        Some(Value::String(s)) => s.trim().to_owned(),
        Some(Value::Number(n)) => n.to_string(),
        Some(other) => {
            return Err(LogicalError::InvalidRequest(format!(
                "kv mount option \"version\" must be 1 or 2, got {other}"
            )))
        }
    };
    match version.as_str() {
        "" | "1" => Ok(KvVersion::V1),
        "2" => Ok(KvVersion::V2),
        other => Err(LogicalError::InvalidRequest(format!(
            "kv mount option \"version\" must be 1 or 2, got {other:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn opts(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    #[test]
    fn version_option() {
        assert_eq!(kv_version(&opts(json!({}))).unwrap(), KvVersion::V1);
        assert_eq!(
            kv_version(&opts(json!({"version": "1"}))).unwrap(),
            KvVersion::V1
        );
        assert_eq!(
            kv_version(&opts(json!({"version": 1}))).unwrap(),
            KvVersion::V1
        );
        assert_eq!(
            kv_version(&opts(json!({"version": ""}))).unwrap(),
            KvVersion::V1
        );
        assert_eq!(
            kv_version(&opts(json!({"version": "2"}))).unwrap(),
            KvVersion::V2
        );
        assert_eq!(
            kv_version(&opts(json!({"version": 2}))).unwrap(),
            KvVersion::V2
        );
        for bad in [
            json!({"version": "3"}),
            json!({"version": 2.5}),
            json!({"version": true}),
            json!({"version": [2]}),
        ] {
            assert!(matches!(
                kv_version(&opts(bad)),
                Err(LogicalError::InvalidRequest(_))
            ));
        }
    }

    #[test]
    fn factory_picks_the_version() {
        let factory = kv_factory();
        assert!(factory.create(&opts(json!({"version": "2"}))).is_ok());
        assert!(factory.create(&opts(json!({}))).is_ok());
        assert!(factory.create(&opts(json!({"version": "9"}))).is_err());
    }
}
