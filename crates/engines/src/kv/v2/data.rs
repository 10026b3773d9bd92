//! `data/<path>`: read, write, patch and soft-delete versions.

use bunker_sdk::{Data, LogicalError, Operation, Response, Result};
use bunker_storage::Op;
use serde_json::{json, Value};

use super::metadata;
use super::model::{
    add_secs, cas_required, effective_delete_after_secs, effective_max_versions,
    encode_version_record, load_config, load_metadata, load_version, metadata_op, trim_versions,
    version_key, version_metadata, KeyMetadata, MountConfig, VersionMeta,
};
use super::KvV2;
use crate::params::{field, object_field, u64_field, validate_key_path};
use crate::store::Call;

pub(super) async fn handle(kv: &KvV2, call: &Call<'_>, path: &str) -> Result<Response> {
    match call.operation {
        Operation::Read => read(kv, call, path).await,
        Operation::Create | Operation::Update => write(kv, call, path).await,
        Operation::Patch => patch(kv, call, path).await,
        Operation::Delete => delete_latest(kv, call, path).await,
        Operation::List => metadata::list(call, path).await,
        Operation::Help => Err(LogicalError::UnsupportedOperation),
    }
}

/// What a read of one version found.
pub(super) enum Lookup {
    /// No such key or version: a plain 404.
    Missing,
    /// The version exists but is deleted or destroyed: 404 that still shows its metadata.
    Unreadable {
        metadata: Data,
    },
    Found {
        data: Data,
        metadata: Data,
    },
}

/// Find `requested` (0 = latest) of the key at `path`.
pub(super) async fn lookup(
    kv: &KvV2,
    call: &Call<'_>,
    path: &str,
    requested: u64,
) -> Result<Lookup> {
    let Some(meta) = load_metadata(call.store, path).await? else {
        return Ok(Lookup::Missing);
    };
    let version = if requested == 0 {
        meta.current_version
    } else {
        requested
    };
    let Some(vm) = meta.versions.get(&version) else {
        return Ok(Lookup::Missing);
    };
    let metadata = version_metadata(&meta, version, vm)?;
    if !vm.is_readable(kv.now_ns()) {
        return Ok(Lookup::Unreadable { metadata });
    }
    match load_version(call.store, path, version).await? {
        Some(record) => Ok(Lookup::Found {
            data: record.data,
            metadata,
        }),
        None => {
            // Only a read racing a trim or destroy gets here: they remove the data and the
            // metadata entry in one batch.
            tracing::warn!(
                mount = call.mount_point,
                version,
                "kv v2 metadata lists a version whose data is missing"
            );
            Ok(Lookup::Missing)
        }
    }
}

/// Vault's 404 for a deleted or destroyed version: the usual body with `data: null`.
pub(super) fn unreadable_response(field_name: &str, metadata: Data) -> Response {
    let mut inner = Data::new();
    inner.insert(field_name.into(), Value::Null);
    inner.insert("metadata".into(), Value::Object(metadata));
    Response::raw(404, json!({ "data": inner }))
}

fn not_found() -> LogicalError {
    LogicalError::NotFound(String::new())
}

async fn read(kv: &KvV2, call: &Call<'_>, path: &str) -> Result<Response> {
    validate_key_path(path)?;
    let requested = u64_field(call.data, "version")?.unwrap_or(0);
    match lookup(kv, call, path, requested).await? {
        Lookup::Missing => Err(not_found()),
        Lookup::Unreadable { metadata } => Ok(unreadable_response("data", metadata)),
        Lookup::Found { data, metadata } => {
            let mut out = Data::new();
            out.insert("data".into(), Value::Object(data));
            out.insert("metadata".into(), Value::Object(metadata));
            Ok(Response::data(out))
        }
    }
}

/// The `data` object of a write or patch.
fn request_data<'a>(call: &Call<'a>) -> Result<&'a Data> {
    match field(call.data, "data") {
        None => Err(LogicalError::InvalidRequest("no data provided".into())),
        Some(Value::Object(map)) => Ok(map),
        Some(_) => Err(LogicalError::InvalidRequest(
            "field \"data\" must be a JSON object".into(),
        )),
    }
}

/// `options.cas`, if given.
fn requested_cas(call: &Call<'_>) -> Result<Option<u64>> {
    match object_field(call.data, "options")? {
        None => Ok(None),
        Some(options) => {
            // Vault takes any integer: a negative one matches no version (a mismatch, not a
            // type error).
            let negative = match options.get("cas") {
                Some(serde_json::Value::Number(n)) => n.as_i64().is_some_and(|v| v < 0),
                Some(serde_json::Value::String(t)) => t.trim().parse::<i64>().is_ok_and(|v| v < 0),
                _ => false,
            };
            if negative {
                return Ok(Some(u64::MAX));
            }
            u64_field(options, "cas")
        }
    }
}

fn check_cas(config: &MountConfig, meta: Option<&KeyMetadata>, cas: Option<u64>) -> Result<()> {
    let current = meta.map_or(0, |m| m.current_version);
    match cas {
        None if cas_required(config, meta) => Err(LogicalError::InvalidRequest(
            "check-and-set parameter required for this call".into(),
        )),
        Some(expected) if expected != current => Err(LogicalError::InvalidRequest(
            "check-and-set parameter did not match the current version".into(),
        )),
        _ => Ok(()),
    }
}

async fn write(kv: &KvV2, call: &Call<'_>, path: &str) -> Result<Response> {
    validate_key_path(path)?;
    let data = request_data(call)?;
    let cas = requested_cas(call)?;

    let _guard = kv.lock_key(path).await;
    let config = load_config(call.store).await?;
    let meta = load_metadata(call.store, path).await?;
    check_cas(&config, meta.as_ref(), cas)?;
    commit_version(kv, call, path, &config, meta, data).await
}

async fn patch(kv: &KvV2, call: &Call<'_>, path: &str) -> Result<Response> {
    validate_key_path(path)?;
    let patch = request_data(call)?;
    let cas = requested_cas(call)?;

    let _guard = kv.lock_key(path).await;
    let config = load_config(call.store).await?;
    let Some(meta) = load_metadata(call.store, path).await? else {
        return Err(not_found());
    };
    let current = meta.current_version;
    let readable = meta
        .versions
        .get(&current)
        .is_some_and(|vm| vm.is_readable(kv.now_ns()));
    if !readable {
        return Err(not_found());
    }
    check_cas(&config, Some(&meta), cas)?;
    let Some(record) = load_version(call.store, path, current).await? else {
        return Err(not_found());
    };
    let mut merged = record.data;
    merge_patch(&mut merged, patch);
    commit_version(kv, call, path, &config, Some(meta), &merged).await
}

/// Write `data` as the next version, trimming past `max_versions`, in one atomic batch.
/// The caller holds the write lock and has checked cas.
async fn commit_version(
    kv: &KvV2,
    call: &Call<'_>,
    path: &str,
    config: &MountConfig,
    meta: Option<KeyMetadata>,
    data: &Data,
) -> Result<Response> {
    let now = kv.now_ns();
    let mut meta = meta.unwrap_or_else(|| KeyMetadata::new(now));
    let version = meta.current_version.checked_add(1).ok_or_else(|| {
        LogicalError::Internal(format!("version counter of {path:?} is exhausted"))
    })?;
    let version_meta = VersionMeta {
        created_ns: now,
        deletion_ns: effective_delete_after_secs(config, &meta).map(|secs| add_secs(now, secs)),
        destroyed: false,
    };
    meta.versions.insert(version, version_meta.clone());
    meta.current_version = version;
    meta.updated_ns = now;
    let max_versions = effective_max_versions(config, &meta);
    let dropped = trim_versions(&mut meta, max_versions);

    let mut ops = Vec::with_capacity(dropped.len().saturating_add(2));
    ops.push(Op::Put {
        key: version_key(path, version),
        value: encode_version_record(data),
    });
    ops.extend(dropped.into_iter().map(|old| Op::Delete {
        key: version_key(path, old),
    }));
    ops.push(metadata_op(path, &meta));
    call.store.batch(ops).await?;

    Ok(Response::data(version_metadata(
        &meta,
        version,
        &version_meta,
    )?))
}

/// `DELETE data/<path>`: soft-delete the latest version. Deleting what is missing or already
/// deleted succeeds and changes nothing.
async fn delete_latest(kv: &KvV2, call: &Call<'_>, path: &str) -> Result<Response> {
    validate_key_path(path)?;
    let _guard = kv.lock_key(path).await;
    let Some(mut meta) = load_metadata(call.store, path).await? else {
        return Ok(Response::empty());
    };
    let now = kv.now_ns();
    let current = meta.current_version;
    match meta.versions.get_mut(&current) {
        Some(vm) if vm.is_readable(now) => vm.deletion_ns = Some(now),
        _ => return Ok(Response::empty()),
    }
    call.store.batch(vec![metadata_op(path, &meta)]).await?;
    Ok(Response::empty())
}

/// RFC 7386 JSON merge patch of one object into another: `null` removes a key, objects merge
/// recursively, anything else replaces. Recursion depth is bounded by the request's JSON depth,
/// which the JSON parser already limits.
pub(super) fn merge_patch(target: &mut Data, patch: &Data) {
    for (key, value) in patch {
        match value {
            Value::Null => {
                target.remove(key);
            }
            Value::Object(inner_patch) => {
                let slot = target
                    .entry(key.clone())
                    .or_insert_with(|| Value::Object(Data::new()));
                if !slot.is_object() {
                    *slot = Value::Object(Data::new());
                }
                if let Value::Object(inner_target) = slot {
                    merge_patch(inner_target, inner_patch);
                }
            }
            other => {
                target.insert(key.clone(), other.clone());
            }
        }
    }
}
