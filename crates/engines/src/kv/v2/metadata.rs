//! `metadata/<path>`: key settings, version history, listing, and deleting a key entirely.

use std::collections::BTreeMap;

use bunker_sdk::{Data, LogicalError, Operation, Response, Result};
use bunker_storage::Op;
use serde_json::Value;

use super::model::{
    key_metadata, load_metadata, metadata_key, metadata_op, version_key, KeyMetadata,
    METADATA_PREFIX,
};
use super::KvV2;
use crate::params::{bool_field, duration_field, field, list_prefix, u64_field, validate_key_path};
use crate::store::Call;

/// Vault's limits on `custom_metadata`.
const MAX_CUSTOM_METADATA_KEYS: usize = 64;
const MAX_CUSTOM_METADATA_KEY_BYTES: usize = 128;
const MAX_CUSTOM_METADATA_VALUE_BYTES: usize = 512;

pub(super) async fn handle(kv: &KvV2, call: &Call<'_>, path: &str) -> Result<Response> {
    match call.operation {
        Operation::Read => read(call, path).await,
        Operation::Create | Operation::Update => write(kv, call, path, WriteMode::Replace).await,
        Operation::Patch => write(kv, call, path, WriteMode::Patch).await,
        Operation::Delete => delete(kv, call, path).await,
        Operation::List => list(call, path).await,
        Operation::Help => Err(LogicalError::UnsupportedOperation),
    }
}

/// LIST of a metadata folder: keys, and subfolders with a trailing `/`. An empty folder is a
/// 404, as in Vault.
pub(super) async fn list(call: &Call<'_>, path: &str) -> Result<Response> {
    let folder = list_prefix(path)?;
    let keys = call
        .store
        .list(&format!("{METADATA_PREFIX}{folder}"))
        .await?;
    if keys.is_empty() {
        return Err(LogicalError::NotFound(String::new()));
    }
    Ok(Response::list(keys))
}

async fn read(call: &Call<'_>, path: &str) -> Result<Response> {
    validate_key_path(path)?;
    match load_metadata(call.store, path).await? {
        None => Err(LogicalError::NotFound(String::new())),
        Some(meta) => Ok(Response::data(key_metadata(&meta)?)),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WriteMode {
    /// POST/PUT: creates the key's metadata if needed; a given `custom_metadata` replaces the
    /// old one.
    Replace,
    /// PATCH: the key must exist; `custom_metadata` merges, a `null` value removes that entry.
    Patch,
}

/// The settings a metadata write may carry; absent fields stay as they are.
struct MetadataUpdate {
    max_versions: Option<u64>,
    cas_required: Option<bool>,
    delete_after_secs: Option<u64>,
    /// `None` value = remove the entry (patch only).
    custom_metadata: Option<BTreeMap<String, Option<String>>>,
}

impl MetadataUpdate {
    fn parse(data: &Data, mode: WriteMode) -> Result<Self> {
        let custom_metadata = field(data, "custom_metadata")
            .map(|v| parse_custom_metadata(v, mode))
            .transpose()?;
        Ok(MetadataUpdate {
            max_versions: u64_field(data, "max_versions")?,
            cas_required: bool_field(data, "cas_required")?,
            delete_after_secs: duration_field(data, "delete_version_after")?,
            custom_metadata,
        })
    }

    fn apply(self, meta: &mut KeyMetadata, mode: WriteMode) -> Result<()> {
        if let Some(n) = self.max_versions {
            meta.max_versions = n;
        }
        if let Some(b) = self.cas_required {
            meta.cas_required = b;
        }
        if let Some(secs) = self.delete_after_secs {
            meta.delete_version_after_secs = secs;
        }
        if let Some(entries) = self.custom_metadata {
            let mut merged = match mode {
                WriteMode::Replace => BTreeMap::new(),
                WriteMode::Patch => meta.custom_metadata.take().unwrap_or_default(),
            };
            for (key, value) in entries {
                match value {
                    Some(v) => merged.insert(key, v),
                    None => merged.remove(&key),
                };
            }
            if merged.len() > MAX_CUSTOM_METADATA_KEYS {
                return Err(custom_metadata_error(format!(
                    "at most {MAX_CUSTOM_METADATA_KEYS} keys are allowed"
                )));
            }
            meta.custom_metadata = if merged.is_empty() {
                None
            } else {
                Some(merged)
            };
        }
        Ok(())
    }
}

async fn write(kv: &KvV2, call: &Call<'_>, path: &str, mode: WriteMode) -> Result<Response> {
    validate_key_path(path)?;
    let update = MetadataUpdate::parse(call.data, mode)?;

    let _guard = kv.lock_key(path).await;
    let existing = load_metadata(call.store, path).await?;
    let mut meta = match (existing, mode) {
        (Some(meta), _) => meta,
        (None, WriteMode::Replace) => KeyMetadata::new(kv.now_ns()),
        (None, WriteMode::Patch) => return Err(LogicalError::NotFound(String::new())),
    };
    update.apply(&mut meta, mode)?;
    call.store.batch(vec![metadata_op(path, &meta)]).await?;
    Ok(Response::empty())
}

/// Remove the key's metadata and every version's data in one batch.
async fn delete(kv: &KvV2, call: &Call<'_>, path: &str) -> Result<Response> {
    validate_key_path(path)?;
    let _guard = kv.lock_key(path).await;
    let Some(meta) = load_metadata(call.store, path).await? else {
        return Ok(Response::empty());
    };
    let mut ops: Vec<Op> = meta
        .versions
        .keys()
        .map(|&version| Op::Delete {
            key: version_key(path, version),
        })
        .collect();
    ops.push(Op::Delete {
        key: metadata_key(path),
    });
    call.store.batch(ops).await?;
    Ok(Response::empty())
}

fn custom_metadata_error(reason: String) -> LogicalError {
    LogicalError::InvalidRequest(format!("custom_metadata validation failed: {reason}"))
}

/// Check a `custom_metadata` object against Vault's limits. Numbers and booleans are taken as
/// their text; `null` values are only meaningful (as removals) in a patch.
fn parse_custom_metadata(
    value: &Value,
    mode: WriteMode,
) -> Result<BTreeMap<String, Option<String>>> {
    let Value::Object(map) = value else {
        return Err(custom_metadata_error("must be a JSON object".into()));
    };
    if map.len() > MAX_CUSTOM_METADATA_KEYS {
        return Err(custom_metadata_error(format!(
            "at most {MAX_CUSTOM_METADATA_KEYS} keys are allowed"
        )));
    }
    let mut out = BTreeMap::new();
    for (key, value) in map {
        if key.is_empty() || key.len() > MAX_CUSTOM_METADATA_KEY_BYTES {
            return Err(custom_metadata_error(format!(
                "key {key:?} must be 1 to {MAX_CUSTOM_METADATA_KEY_BYTES} bytes"
            )));
        }
        let text = match value {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            Value::Null if mode == WriteMode::Patch => None,
            _ => {
                return Err(custom_metadata_error(format!(
                    "value of {key:?} must be a string"
                )))
            }
        };
        if text
            .as_ref()
            .is_some_and(|t| t.len() > MAX_CUSTOM_METADATA_VALUE_BYTES)
        {
            return Err(custom_metadata_error(format!(
                "value of {key:?} is longer than {MAX_CUSTOM_METADATA_VALUE_BYTES} bytes"
            )));
        }
        out.insert(key.clone(), text);
    }
    Ok(out)
}
