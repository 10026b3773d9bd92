//! `subkeys/<path>`: the shape of a version's data without its values.
//!
//! Objects keep their keys; every other value becomes `null`. `depth` limits how many levels
//! are shown (0 = all), as in Vault.

use bunker_sdk::{Data, LogicalError, Operation, Response, Result};
use serde_json::Value;

use super::data::{lookup, unreadable_response, Lookup};
use super::KvV2;
use crate::params::{u64_field, validate_key_path};
use crate::store::Call;

/// Hard cap on the levels walked, whatever `depth` says (stored JSON is no deeper than the
/// parser allows anyway).
const MAX_SUBKEY_DEPTH: u64 = 128;

pub(super) async fn handle(kv: &KvV2, call: &Call<'_>, path: &str) -> Result<Response> {
    if call.operation != Operation::Read {
        return Err(LogicalError::UnsupportedOperation);
    }
    validate_key_path(path)?;
    let requested = u64_field(call.data, "version")?.unwrap_or(0);
    let depth = match u64_field(call.data, "depth")?.unwrap_or(0) {
        0 => MAX_SUBKEY_DEPTH,
        n => n.min(MAX_SUBKEY_DEPTH),
    };
    match lookup(kv, call, path, requested).await? {
        Lookup::Missing => Err(LogicalError::NotFound(String::new())),
        Lookup::Unreadable { metadata } => Ok(unreadable_response("subkeys", metadata)),
        Lookup::Found { data, metadata } => {
            let mut out = Data::new();
            out.insert("subkeys".into(), Value::Object(subkeys(&data, depth)));
            out.insert("metadata".into(), Value::Object(metadata));
            Ok(Response::data(out))
        }
    }
}

/// `levels` >= 1: how many levels of keys to show from here.
fn subkeys(data: &Data, levels: u64) -> Data {
    data.iter()
        .map(|(key, value)| {
            let shape = match value {
                Value::Object(inner) if levels > 1 => Value::Object(subkeys(inner, levels - 1)),
                _ => Value::Null,
            };
            (key.clone(), shape)
        })
        .collect()
}
