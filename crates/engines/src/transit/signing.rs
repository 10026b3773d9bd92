//! `hmac`, `sign` and `verify` (of HMACs and of signatures).

use bunker_sdk::{Data, LogicalError, Response, Result};
use serde_json::json;
use zeroize::Zeroizing;

use super::crypto::{self, effective_key, HashAlgorithm, SignOptions};
use super::encryption::obj;
use super::input::{
    b64_field, bool_field, format_versioned, items, parse_versioned, str_field, u64_field,
    MAX_CONTEXT_BYTES, MAX_INPUT_BYTES,
};
use super::policy::KeyPolicy;
use super::{load_existing, load_for_use, references, respond, ItemResult, Transit};
use crate::store::Call;

fn bad(msg: impl Into<String>) -> LogicalError {
    LogicalError::InvalidRequest(msg.into())
}

/// The hash algorithm: from the path, else the first of `fields` present, else SHA-256.
fn algorithm(call: &Call<'_>, from_path: Option<&str>, fields: &[&str]) -> Result<HashAlgorithm> {
    if let Some(alg) = from_path {
        return HashAlgorithm::parse(alg);
    }
    for field in fields {
        if let Some(alg) = str_field(call.data, field)?.filter(|a| !a.is_empty()) {
            return HashAlgorithm::parse(&alg);
        }
    }
    Ok(HashAlgorithm::Sha256)
}

fn sign_options(call: &Call<'_>, from_path: Option<&str>) -> Result<SignOptions> {
    let pss = match str_field(call.data, "signature_algorithm")?.as_deref() {
        None | Some("") | Some("pss") => true,
        Some("pkcs1v15") => false,
        Some(other) => return Err(bad(format!("unsupported signature_algorithm {other}"))),
    };
    let jws = match str_field(call.data, "marshaling_algorithm")?.as_deref() {
        None | Some("") | Some("asn1") => false,
        Some("jws") => true,
        Some(other) => return Err(bad(format!("unsupported marshaling_algorithm {other}"))),
    };
    let named =
        |f: &str| -> Result<bool> { Ok(str_field(call.data, f)?.is_some_and(|a| !a.is_empty())) };
    let hash_given = from_path.is_some() || named("hash_algorithm")? || named("algorithm")?;
    Ok(SignOptions {
        hash: algorithm(call, from_path, &["hash_algorithm", "algorithm"])?,
        hash_given,
        prehashed: bool_field(call.data, "prehashed")?,
        pss,
        jws,
    })
}

fn input_of(item: &Data) -> Result<Zeroizing<Vec<u8>>> {
    if item.get("input").is_none_or(serde_json::Value::is_null) {
        return Err(bad("missing input to process"));
    }
    Ok(b64_field(item, "input", MAX_INPUT_BYTES)?.unwrap_or_default())
}

pub(crate) async fn hmac(
    t: &Transit,
    call: &Call<'_>,
    name: &str,
    alg: Option<&str>,
) -> Result<Response> {
    let alg = algorithm(call, alg, &["algorithm"])?;
    let (items, batch) = items(call.data)?;
    let p = load_for_use(t, call.store, name).await?;
    let results: Vec<ItemResult> = items
        .iter()
        .map(|item| {
            let input = input_of(item)?;
            let version = p.encryption_version(u64_field(item, "key_version")?)?;
            let mac = crypto::hmac_sign(alg, p.version(version)?.hmac_key.expose(), &input)?;
            Ok(obj(
                json!({ "hmac": format_versioned(version, &mac, false) }),
            ))
        })
        .collect();
    respond(results, batch, references(&items), 0)
}

/// The signing key of a version: the stored key, or for derived Ed25519 keys the one derived
/// from the item's `context`.
fn signing_key(p: &KeyPolicy, version: u64, item: &Data) -> Result<Zeroizing<Vec<u8>>> {
    let kv = p.version(version)?;
    let context = b64_field(item, "context", MAX_CONTEXT_BYTES)?;
    effective_key(&kv.key, p.derived, context.as_deref().map(Vec::as_slice))
}

fn check_signing(p: &KeyPolicy) -> Result<()> {
    if !p.key_type.supports_signing() {
        return Err(bad(format!(
            "key type {} does not support signing",
            p.key_type.as_str()
        )));
    }
    Ok(())
}

pub(crate) async fn sign(
    t: &Transit,
    call: &Call<'_>,
    name: &str,
    alg: Option<&str>,
) -> Result<Response> {
    let opts = sign_options(call, alg)?;
    let (items, batch) = items(call.data)?;
    let p = load_for_use(t, call.store, name).await?;
    check_signing(&p)?;
    if opts.jws && !p.key_type.is_ecdsa() {
        return Err(bad("marshaling_algorithm jws is only valid for ECDSA keys"));
    }
    let results: Vec<ItemResult> = items
        .iter()
        .map(|item| {
            let input = input_of(item)?;
            let version = p.encryption_version(u64_field(item, "key_version")?)?;
            let key = signing_key(&p, version, item)?;
            let sig = crypto::sign(p.key_type, &key, &input, &opts)?;
            Ok(obj(json!({
                "signature": format_versioned(version, &sig, opts.jws),
                "key_version": version,
            })))
        })
        .collect();
    respond(results, batch, references(&items), 0)
}

pub(crate) async fn verify(call: &Call<'_>, name: &str, alg: Option<&str>) -> Result<Response> {
    let (items, batch) = items(call.data)?;
    let p = load_existing(call.store, name).await?;
    // Vault's verify takes `hash_algorithm` (or the deprecated `algorithm`) for HMACs too.
    let opts = sign_options(call, alg)?;
    let hmac_alg = opts.hash;
    let results: Vec<ItemResult> = items
        .iter()
        .map(|item| verify_item(&p, item, hmac_alg, &opts))
        .collect();
    respond(results, batch, references(&items), 0)
}

fn verify_item(
    p: &KeyPolicy,
    item: &Data,
    hmac_alg: HashAlgorithm,
    opts: &SignOptions,
) -> ItemResult {
    let input = input_of(item)?;
    let signature = str_field(item, "signature")?.filter(|s| !s.is_empty());
    let hmac = str_field(item, "hmac")?.filter(|s| !s.is_empty());
    let valid = match (signature, hmac) {
        (Some(_), Some(_)) => return Err(bad("provide one of 'signature' or 'hmac', not both")),
        (None, None) => return Err(bad("missing signature or hmac to verify")),
        (None, Some(mac)) => {
            let (version, mac) = parse_versioned(&mac, "hmac", false)?;
            p.check_decryption_version(version)?;
            crypto::hmac_verify(
                hmac_alg,
                p.version(version)?.hmac_key.expose(),
                &input,
                &mac,
            )?
        }
        (Some(sig), None) => {
            check_signing(p)?;
            let (version, sig) = parse_versioned(&sig, "signature", opts.jws)?;
            p.check_decryption_version(version)?;
            let key = signing_key(p, version, item)?;
            crypto::verify(p.key_type, &key, &input, &sig, opts)?
        }
    };
    Ok(obj(json!({ "valid": valid })))
}
