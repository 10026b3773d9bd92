//! `keys/...`: create, read, list, delete, config, rotate and trim a named key.

use std::collections::BTreeMap;

use bunker_sdk::fields::{get_duration, get_u64};
use bunker_sdk::{LogicalError, Operation, Response, Result};

use super::crypto::{generate_version, HMAC_KEY_BYTES};
use super::input::{bool_field, str_field};
use super::policy::{
    validate_key_name, KeyPolicy, KeyType, KDF_HKDF_SHA256, MAX_LIVE_VERSIONS, RECORD_FORMAT,
};
use super::{load, load_existing, save, Transit};
use crate::store::Call;

/// Shortest `auto_rotate_period` other than 0 (Vault's bound).
const MIN_AUTO_ROTATE_SECS: u64 = 3600;
/// Bounds of an `hmac` key's `key_size`, in bytes.
const HMAC_KEY_SIZE_RANGE: std::ops::RangeInclusive<u64> = 16..=512;

fn bad(msg: impl Into<String>) -> LogicalError {
    LogicalError::InvalidRequest(msg.into())
}

pub(crate) async fn list(call: &Call<'_>) -> Result<Response> {
    let keys = call.store.list("policy/").await?;
    Ok(Response::list(keys))
}

pub(crate) async fn handle(t: &Transit, call: &Call<'_>, name: &str) -> Result<Response> {
    match call.operation {
        Operation::Read => {
            let Some(policy) = load(call.store, name).await? else {
                return Ok(Response::empty());
            };
            Ok(Response::data(policy.to_response_data()))
        }
        Operation::Create | Operation::Update => create(t, call, name).await,
        Operation::Delete => delete(t, call, name).await,
        _ => Err(LogicalError::UnsupportedOperation),
    }
}

/// The settings of a new key, from a create request (or an encrypt that upserts).
pub(crate) struct NewKey {
    pub key_type: KeyType,
    pub derived: bool,
    pub convergent: bool,
    pub exportable: bool,
    pub allow_plaintext_backup: bool,
    pub auto_rotate_period_secs: u64,
    pub key_size: u64,
}

impl NewKey {
    /// The settings of a create request; `context_given` (an encrypt that upserts with a
    /// `context`) makes the key derived, as Vault does.
    pub(crate) fn from_request(call: &Call<'_>, context_given: bool) -> Result<Self> {
        let data = call.data;
        let key_type = match str_field(data, "type")? {
            Some(s) if !s.is_empty() => KeyType::parse(&s)?,
            _ => KeyType::Aes256Gcm96,
        };
        let derived = bool_field(data, "derived")? || context_given;
        let convergent = bool_field(data, "convergent_encryption")?;
        if convergent && !derived {
            return Err(bad(
                "convergent encryption requires derivation to be enabled",
            ));
        }
        if convergent && !key_type.is_aead() {
            return Err(bad(format!(
                "convergent encryption not supported for keys of type {}",
                key_type.as_str()
            )));
        }
        if derived && !key_type.supports_derivation() {
            return Err(bad(format!(
                "key derivation and convergent encryption not supported for keys of type {}",
                key_type.as_str()
            )));
        }
        let key_size = get_u64(data, "key_size")?.unwrap_or(0);
        let key_size = match (key_type, key_size) {
            (KeyType::Hmac, 0) => HMAC_KEY_BYTES as u64,
            (KeyType::Hmac, n) if HMAC_KEY_SIZE_RANGE.contains(&n) => n,
            (KeyType::Hmac, _) => {
                return Err(bad(format!(
                    "key_size must be between {} and {} bytes",
                    HMAC_KEY_SIZE_RANGE.start(),
                    HMAC_KEY_SIZE_RANGE.end()
                )))
            }
            (_, 0) => 0,
            (_, _) => return Err(bad("key_size is only valid for hmac keys")),
        };
        Ok(NewKey {
            key_type,
            derived,
            convergent,
            exportable: bool_field(data, "exportable")?,
            allow_plaintext_backup: bool_field(data, "allow_plaintext_backup")?,
            auto_rotate_period_secs: auto_rotate_period(call)?.unwrap_or(0),
            key_size,
        })
    }

    pub(crate) fn build(self, t: &Transit, name: &str) -> Result<KeyPolicy> {
        let first = generate_version(self.key_type, self.key_size as usize, t.now())?;
        let mut versions = BTreeMap::new();
        versions.insert(1, first);
        Ok(KeyPolicy {
            format: RECORD_FORMAT,
            name: name.to_owned(),
            key_type: self.key_type,
            derived: self.derived,
            convergent_encryption: self.convergent,
            kdf: if self.derived {
                KDF_HKDF_SHA256.to_owned()
            } else {
                String::new()
            },
            exportable: self.exportable,
            allow_plaintext_backup: self.allow_plaintext_backup,
            deletion_allowed: false,
            auto_rotate_period_secs: self.auto_rotate_period_secs,
            key_size: self.key_size,
            latest_version: 1,
            min_decryption_version: 1,
            min_encryption_version: 0,
            min_available_version: 0,
            versions,
            backup_info: None,
            restore_info: None,
        })
    }
}

fn auto_rotate_period(call: &Call<'_>) -> Result<Option<u64>> {
    let Some(secs) = get_duration(call.data, "auto_rotate_period")? else {
        return Ok(None);
    };
    if secs != 0 && secs < MIN_AUTO_ROTATE_SECS {
        return Err(bad(
            "auto rotate period must be 0 to disable or at least an hour",
        ));
    }
    Ok(Some(secs))
}

/// Create a key; an existing key of that name is left as it is (Vault's behaviour).
async fn create(t: &Transit, call: &Call<'_>, name: &str) -> Result<Response> {
    validate_key_name(name)?;
    let settings = NewKey::from_request(call, false)?;
    let _guard = t.lock_key(name).await;
    if let Some(existing) = load(call.store, name).await? {
        return Ok(Response::data(existing.to_response_data()));
    }
    let policy = settings.build(t, name)?;
    save(call.store, &policy).await?;
    tracing::info!(key = %name, key_type = policy.key_type.as_str(), "transit key created");
    Ok(Response::data(policy.to_response_data()))
}

async fn delete(t: &Transit, call: &Call<'_>, name: &str) -> Result<Response> {
    validate_key_name(name)?;
    let _guard = t.lock_key(name).await;
    let Some(policy) = load(call.store, name).await? else {
        return Err(bad("could not delete key; not found"));
    };
    if !policy.deletion_allowed {
        return Err(bad("deletion is not allowed for this key"));
    }
    call.store.delete(&super::storage_key(name)).await?;
    tracing::info!(key = %name, "transit key deleted");
    Ok(Response::empty())
}

pub(crate) async fn config(t: &Transit, call: &Call<'_>, name: &str) -> Result<Response> {
    let data = call.data;
    let _guard = t.lock_key(name).await;
    let mut p = load_existing(call.store, name).await?;
    let mut warnings = Vec::new();

    if let Some(min_dec) = get_u64(data, "min_decryption_version")? {
        let min_dec = if min_dec == 0 {
            warnings.push(
                "since Vault 0.3, transit key numbering starts at 1; forcing minimum to 1"
                    .to_owned(),
            );
            1
        } else {
            min_dec
        };
        if min_dec > p.latest_version {
            return Err(bad(format!(
                "cannot set min decryption version of {min_dec}, latest key version is {}",
                p.latest_version
            )));
        }
        if min_dec < p.min_available_version {
            return Err(bad(format!(
                "cannot set min decryption version of {min_dec} below the minimum available version {}",
                p.min_available_version
            )));
        }
        p.min_decryption_version = min_dec;
    }
    if let Some(min_enc) = get_u64(data, "min_encryption_version")? {
        if min_enc > p.latest_version {
            return Err(bad(format!(
                "cannot set min encryption version of {min_enc}, latest key version is {}",
                p.latest_version
            )));
        }
        p.min_encryption_version = min_enc;
    }
    if p.min_encryption_version > 0 && p.min_encryption_version < p.min_decryption_version {
        return Err(bad(format!(
            "minimum decryption version of {} is greater than minimum encryption version {}",
            p.min_decryption_version, p.min_encryption_version
        )));
    }
    if let Some(allowed) = bunker_sdk::fields::get_bool(data, "deletion_allowed")? {
        p.deletion_allowed = allowed;
    }
    if let Some(exportable) = bunker_sdk::fields::get_bool(data, "exportable")? {
        if p.exportable && !exportable {
            return Err(bad("exportable key setting cannot be disabled"));
        }
        p.exportable = exportable;
    }
    if let Some(backup) = bunker_sdk::fields::get_bool(data, "allow_plaintext_backup")? {
        if p.allow_plaintext_backup && !backup {
            return Err(bad("plaintext backup cannot be disabled"));
        }
        p.allow_plaintext_backup = backup;
    }
    if let Some(period) = auto_rotate_period(call)? {
        p.auto_rotate_period_secs = period;
    }
    save(call.store, &p).await?;
    let mut resp = Response::data(p.to_response_data());
    resp.warnings = warnings;
    Ok(resp)
}

/// Add a new version to a key ring in memory.
pub(crate) fn rotate_in_place(t: &Transit, p: &mut KeyPolicy) -> Result<()> {
    let live = p
        .latest_version
        .saturating_sub(p.min_available_version.max(1))
        .saturating_add(1);
    if live >= MAX_LIVE_VERSIONS {
        return Err(bad(format!(
            "key has {live} versions, the most Bunker keeps; trim old versions first"
        )));
    }
    let next = p.latest_version.saturating_add(1);
    let version = generate_version(p.key_type, p.key_size as usize, t.now())?;
    p.versions.insert(next, version);
    p.latest_version = next;
    Ok(())
}

pub(crate) async fn rotate(t: &Transit, call: &Call<'_>, name: &str) -> Result<Response> {
    let _guard = t.lock_key(name).await;
    let mut p = load_existing(call.store, name).await?;
    rotate_in_place(t, &mut p)?;
    save(call.store, &p).await?;
    tracing::info!(key = %name, version = p.latest_version, "transit key rotated");
    Ok(Response::data(p.to_response_data()))
}

pub(crate) async fn trim(t: &Transit, call: &Call<'_>, name: &str) -> Result<Response> {
    let Some(min_available) = get_u64(call.data, "min_available_version")? else {
        return Err(bad("missing min_available_version"));
    };
    let _guard = t.lock_key(name).await;
    let mut p = load_existing(call.store, name).await?;
    if min_available == 0 {
        return Err(bad("minimum available version should be positive"));
    }
    if min_available > p.min_decryption_version {
        return Err(bad(
            "minimum available version should not be greater than minimum decryption version",
        ));
    }
    if p.min_encryption_version > 0 && min_available > p.min_encryption_version {
        return Err(bad(
            "minimum available version should not be greater than minimum encryption version",
        ));
    }
    if min_available < p.min_available_version {
        return Err(bad(
            "minimum available version should not be less than the current minimum available version",
        ));
    }
    p.versions = p.versions.split_off(&min_available);
    p.min_available_version = min_available;
    save(call.store, &p).await?;
    Ok(Response::empty())
}
