//! `random`, `hash`, `export`, `backup` and `restore`.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bunker_sdk::fields::get_u64;
use bunker_sdk::{LogicalError, Response, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use zeroize::Zeroizing;

use super::crypto::{self, export_private, random_bytes, HashAlgorithm};
use super::encryption::obj;
use super::input::{b64_field, bool_field, str_field, MAX_INPUT_BYTES};
use super::policy::{validate_key_name, BackupStamp, KeyPolicy, KeyType, RECORD_FORMAT};
use super::{load, load_existing, save, Transit};
use crate::store::Call;

/// Most bytes one `random` request returns.
const MAX_RANDOM_BYTES: u64 = 128 * 1024;
/// Largest backup accepted by `restore` (base64 text).
const MAX_BACKUP_CHARS: usize = 64 * 1024 * 1024;
/// Marks Bunker's backup format.
const BACKUP_FORMAT: &str = "bunker-transit-backup-v1";

fn bad(msg: impl Into<String>) -> LogicalError {
    LogicalError::InvalidRequest(msg.into())
}

fn encode(bytes: &[u8], format: Option<String>, default_hex: bool) -> Result<String> {
    match format.as_deref() {
        Some("hex") => Ok(hex_encode(bytes)),
        Some("base64") => Ok(STANDARD.encode(bytes)),
        None | Some("") if default_hex => Ok(hex_encode(bytes)),
        None | Some("") => Ok(STANDARD.encode(bytes)),
        Some(other) => Err(bad(format!(
            "unsupported encoding format {other}; must be \"hex\" or \"base64\""
        ))),
    }
}

fn hex_encode(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(bytes.len().saturating_mul(2));
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// `random[/<source>][/<bytes>]`: `source` is `platform`, `seal` or `all` (all the same
/// generator here).
pub(crate) fn random(call: &Call<'_>, rest: &[&str]) -> Result<Response> {
    let mut bytes_from_path = None;
    for segment in rest {
        match *segment {
            "platform" | "seal" | "all" | "" => {}
            s => match s.parse::<u64>() {
                Ok(n) => bytes_from_path = Some(n),
                Err(_) => return Err(bad(format!("unsupported entropy source {s:?}"))),
            },
        }
    }
    let bytes = match bytes_from_path {
        Some(n) => n,
        None => get_u64(call.data, "bytes")?.unwrap_or(32),
    };
    if bytes == 0 {
        return Err(bad("bytes must be positive"));
    }
    if bytes > MAX_RANDOM_BYTES {
        return Err(bad(format!("bytes cannot be more than {MAX_RANDOM_BYTES}")));
    }
    let random = random_bytes(bytes as usize)?;
    let text = encode(&random, str_field(call.data, "format")?, false)?;
    Ok(Response::data(obj(json!({ "random_bytes": text }))))
}

/// `hash[/<algorithm>]`: the digest of `input`, hex by default.
pub(crate) fn hash(call: &Call<'_>, alg: Option<&str>) -> Result<Response> {
    let alg = match alg {
        Some(a) => HashAlgorithm::parse(a)?,
        None => HashAlgorithm::parse(&str_field(call.data, "algorithm")?.unwrap_or_default())?,
    };
    if call.data.get("input").is_none_or(Value::is_null) {
        return Err(bad("missing input to process"));
    }
    let input = b64_field(call.data, "input", MAX_INPUT_BYTES)?.unwrap_or_default();
    let sum = crypto::hash(alg, &input);
    let text = encode(&sum, str_field(call.data, "format")?, true)?;
    Ok(Response::data(obj(json!({ "sum": text }))))
}

/// `export/<kind>/<name>[/<version>]`.
pub(crate) async fn export(
    call: &Call<'_>,
    kind: &str,
    name: &str,
    version: Option<&str>,
) -> Result<Response> {
    let p = load_existing(call.store, name).await?;
    let t = p.key_type;
    let fits = match kind {
        "encryption-key" => t.supports_encryption(),
        "signing-key" => t.supports_signing(),
        "hmac-key" => true,
        "public-key" => t.is_asymmetric(),
        other => return Err(bad(format!("invalid export type {other:?}"))),
    };
    if !fits {
        return Err(bad(format!(
            "the key type {} cannot be exported as {kind}",
            t.as_str()
        )));
    }
    if kind != "public-key" && !p.exportable {
        return Err(bad("private key material is not exportable"));
    }
    if kind == "public-key" && p.derived {
        return Err(bad("public keys of derived keys are not exported"));
    }
    let first = p.min_decryption_version.max(p.min_available_version).max(1);
    let versions: Vec<u64> = match version {
        None | Some("") => p.versions.range(first..).map(|(v, _)| *v).collect(),
        Some("latest") => vec![p.latest_version],
        Some(v) => {
            let v: u64 = v.parse().map_err(|_| bad("invalid key version"))?;
            if v < first || v > p.latest_version {
                return Err(bad("invalid key version"));
            }
            vec![v]
        }
    };
    let mut keys = Map::new();
    for v in versions {
        let kv = p.version(v)?;
        let text = match kind {
            "public-key" => kv.public_key.clone(),
            "hmac-key" => STANDARD.encode(kv.hmac_key.expose()),
            _ => export_private(t, kv)?,
        };
        keys.insert(v.to_string(), Value::String(text));
    }
    Ok(Response::data(obj(json!({
        "name": p.name,
        "type": t.as_str(),
        "keys": keys,
    }))))
}

#[derive(Serialize, Deserialize)]
struct BackupEnvelope {
    format: String,
    policy: KeyPolicy,
}

/// `backup/<name>`: the whole key ring as base64 of JSON, when the key allows it.
pub(crate) async fn backup(t: &Transit, call: &Call<'_>, name: &str) -> Result<Response> {
    let _guard = t.lock_key(name).await;
    let mut p = load_existing(call.store, name).await?;
    if !p.exportable {
        return Err(bad("exporting is disallowed on the policy"));
    }
    if !p.allow_plaintext_backup {
        return Err(bad("plaintext backup is disallowed on the policy"));
    }
    p.backup_info = Some(BackupStamp {
        time: bunker_sdk::time_util::rfc3339(t.now()),
        version: p.latest_version,
    });
    save(call.store, &p).await?;
    let envelope = BackupEnvelope {
        format: BACKUP_FORMAT.to_owned(),
        policy: p,
    };
    let json = super::to_json_zeroizing(&envelope)
        .map_err(|e| LogicalError::Internal(format!("encoding backup: {e}")))?;
    tracing::info!(key = %name, "transit key backed up");
    Ok(Response::data(obj(
        json!({ "backup": STANDARD.encode(json.as_slice()) }),
    )))
}

/// `restore[/<name>]`: write a key ring from a backup, under its own name or `name`.
pub(crate) async fn restore(t: &Transit, call: &Call<'_>, name: Option<&str>) -> Result<Response> {
    let Some(text) = str_field(call.data, "backup")?.filter(|b| !b.is_empty()) else {
        return Err(bad("'backup' must be supplied"));
    };
    let text = Zeroizing::new(text);
    if text.len() > MAX_BACKUP_CHARS {
        return Err(bad("backup is too large"));
    }
    let json = Zeroizing::new(
        STANDARD
            .decode(text.as_bytes())
            .map_err(|_| bad("failed to base64-decode backup"))?,
    );
    let envelope: BackupEnvelope =
        serde_json::from_slice(&json).map_err(|_| bad("backup is not a Bunker transit backup"))?;
    if envelope.format != BACKUP_FORMAT {
        return Err(bad("backup is not a Bunker transit backup"));
    }
    let mut p = envelope.policy;
    check_restored(&p)?;
    let target = match (
        name,
        str_field(call.data, "name")?.filter(|n| !n.is_empty()),
    ) {
        (Some(n), _) => n.to_owned(),
        (None, Some(n)) => n,
        (None, None) => p.name.clone(),
    };
    validate_key_name(&target)?;
    let force = bool_field(call.data, "force")?;
    let _guard = t.lock_key(&target).await;
    if !force && load(call.store, &target).await?.is_some() {
        return Err(bad(format!(
            "key {target:?} already exists; set force to overwrite it"
        )));
    }
    p.name = target;
    p.restore_info = Some(BackupStamp {
        time: bunker_sdk::time_util::rfc3339(t.now()),
        version: p.latest_version,
    });
    save(call.store, &p).await?;
    tracing::info!(key = %p.name, "transit key restored");
    Ok(Response::empty())
}

/// A restored ring must be one this engine could have written.
fn check_restored(p: &KeyPolicy) -> Result<()> {
    let invalid = || bad("backup holds an invalid key ring");
    if p.format != RECORD_FORMAT
        || p.latest_version == 0
        || !p.versions.contains_key(&p.latest_version)
        || p.min_decryption_version == 0
        || p.min_decryption_version > p.latest_version
        || p.min_encryption_version > p.latest_version
        || p.versions.keys().any(|v| *v == 0 || *v > p.latest_version)
    {
        return Err(invalid());
    }
    for kv in p.versions.values() {
        let key_ok = match p.key_type {
            KeyType::Aes128Gcm96 => kv.key.expose().len() == 16,
            KeyType::Aes256Gcm96 | KeyType::ChaCha20Poly1305 | KeyType::Ed25519 => {
                kv.key.expose().len() == 32
            }
            KeyType::Hmac => !kv.hmac_key.is_empty(),
            _ => !kv.key.is_empty(),
        };
        if !key_ok || kv.hmac_key.is_empty() {
            return Err(invalid());
        }
    }
    Ok(())
}
