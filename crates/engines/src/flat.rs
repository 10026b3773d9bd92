//! A flat (unversioned) key-value store, shared by KV v1 and cubbyhole.
//!
//! Each secret is one JSON object stored as-is under `<prefix><path>`; KV v1 uses an empty
//! prefix (so its storage matches Vault's own v1 layout), cubbyhole uses the token's namespace.
//! There are no versions and no metadata, so a write is a single put and needs no locking.

use bunker_sdk::{Data, LogicalError, Operation, Response, Result};

use crate::params::{list_prefix, validate_key_path};
use crate::store::{encode_json, get_json, Call};
use bunker_sdk::duration::parse_duration_value;

/// The places where KV v1 and cubbyhole differ.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FlatRules {
    /// Report a stored `ttl` (or `lease`) field as the response's lease duration (KV v1).
    pub lease_from_ttl: bool,
    /// Accept writes with no fields at all.
    pub allow_empty_write: bool,
}

pub(crate) async fn handle(call: &Call<'_>, prefix: &str, rules: FlatRules) -> Result<Response> {
    match call.operation {
        Operation::Read => read(call, prefix, rules).await,
        Operation::Create | Operation::Update => write(call, prefix, rules).await,
        Operation::Delete => {
            validate_key_path(call.path)?;
            call.store.delete(&format!("{prefix}{}", call.path)).await?;
            Ok(Response::empty())
        }
        Operation::List => {
            let folder = list_prefix(call.path)?;
            let keys = call.store.list(&format!("{prefix}{folder}")).await?;
            if keys.is_empty() {
                return Err(LogicalError::NotFound(String::new()));
            }
            Ok(Response::list(keys))
        }
        Operation::Patch | Operation::Help => Err(LogicalError::UnsupportedOperation),
    }
}

/// Whether the secret at the call's path exists; `None` for paths that name no secret.
pub(crate) async fn exists(call: &Call<'_>, prefix: &str) -> Result<Option<bool>> {
    if validate_key_path(call.path).is_err() {
        return Ok(None);
    }
    let found = call.store.get(&format!("{prefix}{}", call.path)).await?;
    Ok(Some(found.is_some()))
}

async fn read(call: &Call<'_>, prefix: &str, rules: FlatRules) -> Result<Response> {
    validate_key_path(call.path)?;
    let key = format!("{prefix}{}", call.path);
    let Some(stored) = get_json::<Data>(call.store, &key).await? else {
        return Err(LogicalError::NotFound(String::new()));
    };
    let lease_secs = if rules.lease_from_ttl {
        lease_hint_secs(&stored)
    } else {
        None
    };
    let mut response = Response::data(stored);
    if let Some(secs) = lease_secs {
        response.lease_duration = secs;
    }
    Ok(response)
}

async fn write(call: &Call<'_>, prefix: &str, rules: FlatRules) -> Result<Response> {
    validate_key_path(call.path)?;
    if call.data.is_empty() && !rules.allow_empty_write {
        return Err(LogicalError::InvalidRequest("missing data fields".into()));
    }
    let key = format!("{prefix}{}", call.path);
    let bytes = encode_json(&key, call.data)?;
    call.store.put(&key, &bytes).await?;
    Ok(Response::empty())
}

/// Vault KV v1 treats a stored `ttl` (or legacy `lease`) field as the lease duration to report.
/// Values that do not parse are stored data like any other and give no hint.
fn lease_hint_secs(stored: &Data) -> Option<u64> {
    let raw = stored.get("ttl").or_else(|| stored.get("lease"))?;
    parse_duration_value(raw).ok()
}
