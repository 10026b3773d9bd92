//! `encrypt`, `decrypt`, `rewrap` and `datakey`.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bunker_sdk::{Data, LogicalError, Operation, Response, Result};
use serde_json::{json, Value};
use zeroize::Zeroizing;

use super::crypto::{aead_open, aead_seal, effective_key, random_bytes, rsa_decrypt, rsa_encrypt};
use super::input::{
    b64_field, format_versioned, items, parse_versioned, str_field, u64_field, MAX_CONTEXT_BYTES,
    MAX_INPUT_BYTES,
};
use super::keys::NewKey;
use super::policy::KeyPolicy;
use super::{load, load_for_use, references, respond, save, ItemResult, Transit};
use crate::store::Call;

fn bad(msg: impl Into<String>) -> LogicalError {
    LogicalError::InvalidRequest(msg.into())
}

/// Encrypt `plaintext` with one version of the key; returns `vault:v<N>:<base64>`.
pub(crate) fn encrypt_bytes(
    p: &KeyPolicy,
    version: u64,
    context: Option<&[u8]>,
    aad: &[u8],
    plaintext: &[u8],
) -> Result<String> {
    let kv = p.version(version)?;
    let blob = if p.key_type.is_aead() {
        let key = effective_key(&kv.key, p.derived, context)?;
        aead_seal(p.key_type, &key, plaintext, aad, p.convergent_encryption)?
    } else if p.key_type.is_rsa() {
        if !aad.is_empty() {
            return Err(bad("associated_data is only supported by AEAD key types"));
        }
        rsa_encrypt(kv.key.expose(), plaintext)?
    } else {
        return Err(bad(format!(
            "key type {} does not support encryption",
            p.key_type.as_str()
        )));
    };
    Ok(format_versioned(version, &blob, false))
}

/// Decrypt a `vault:v<N>:...` ciphertext; returns the plaintext and the version.
pub(crate) fn decrypt_text(
    p: &KeyPolicy,
    ciphertext: &str,
    context: Option<&[u8]>,
    aad: &[u8],
) -> Result<Zeroizing<Vec<u8>>> {
    if !p.key_type.supports_encryption() {
        return Err(bad(format!(
            "key type {} does not support decryption",
            p.key_type.as_str()
        )));
    }
    let (version, blob) = parse_versioned(ciphertext, "ciphertext", false)?;
    p.check_decryption_version(version)?;
    let kv = p.version(version)?;
    if p.key_type.is_aead() {
        let key = effective_key(&kv.key, p.derived, context)?;
        aead_open(p.key_type, &key, &blob, aad)
    } else {
        if !aad.is_empty() {
            return Err(bad("associated_data is only supported by AEAD key types"));
        }
        rsa_decrypt(kv.key.expose(), &blob)
    }
}

/// The per-item fields shared by the endpoints.
struct ItemInput {
    context: Option<Zeroizing<Vec<u8>>>,
    aad: Zeroizing<Vec<u8>>,
}

impl ItemInput {
    fn read(item: &Data) -> Result<Self> {
        Ok(ItemInput {
            context: b64_field(item, "context", MAX_CONTEXT_BYTES)?,
            aad: b64_field(item, "associated_data", MAX_CONTEXT_BYTES)?.unwrap_or_default(),
        })
    }

    fn context(&self) -> Option<&[u8]> {
        self.context.as_deref().map(Vec::as_slice)
    }
}

fn partial_code(call: &Call<'_>) -> Result<u64> {
    u64_field(call.data, "partial_failure_response_code")
}

pub(crate) async fn encrypt(t: &Transit, call: &Call<'_>, name: &str) -> Result<Response> {
    let (items, batch) = items(call.data)?;
    let policy = match load(call.store, name).await? {
        Some(_) => load_for_use(t, call.store, name).await?,
        None if call.operation == Operation::Create => upsert(t, call, name, &items).await?,
        None => return Err(bad("encryption key not found")),
    };
    let results: Vec<ItemResult> = items
        .iter()
        .map(|item| encrypt_item(&policy, item))
        .collect();
    respond(results, batch, references(&items), partial_code(call)?)
}

/// Vault's upsert: encrypting with a key that does not exist creates it (the ACL asked for
/// `create`), derived when the request carries a context.
async fn upsert(t: &Transit, call: &Call<'_>, name: &str, items: &[Data]) -> Result<KeyPolicy> {
    let context_given = items
        .iter()
        .any(|i| i.get("context").is_some_and(|c| !c.is_null()));
    let settings = NewKey::from_request(call, context_given)?;
    let _guard = t.lock_key(name).await;
    if let Some(existing) = load(call.store, name).await? {
        return Ok(existing);
    }
    let policy = settings.build(t, name)?;
    save(call.store, &policy).await?;
    tracing::info!(key = %name, "transit key created by encrypt (upsert)");
    Ok(policy)
}

fn encrypt_item(p: &KeyPolicy, item: &Data) -> ItemResult {
    // An empty plaintext is valid (it encrypts zero bytes); a missing one is not.
    if item.get("plaintext").is_none_or(Value::is_null) {
        return Err(bad("missing plaintext to encrypt"));
    }
    let plaintext = b64_field(item, "plaintext", MAX_INPUT_BYTES)?.unwrap_or_default();
    let input = ItemInput::read(item)?;
    let version = p.encryption_version(u64_field(item, "key_version")?)?;
    let ciphertext = encrypt_bytes(p, version, input.context(), &input.aad, &plaintext)?;
    Ok(obj(
        json!({"ciphertext": ciphertext, "key_version": version}),
    ))
}

pub(crate) async fn decrypt(call: &Call<'_>, name: &str) -> Result<Response> {
    let (items, batch) = items(call.data)?;
    let policy = super::load_existing(call.store, name).await?;
    let results: Vec<ItemResult> = items
        .iter()
        .map(|item| decrypt_item(&policy, item))
        .collect();
    respond(results, batch, references(&items), partial_code(call)?)
}

fn decrypt_item(p: &KeyPolicy, item: &Data) -> ItemResult {
    let Some(ciphertext) = str_field(item, "ciphertext")?.filter(|c| !c.is_empty()) else {
        return Err(bad("missing ciphertext to decrypt"));
    };
    let input = ItemInput::read(item)?;
    let plaintext = decrypt_text(p, &ciphertext, input.context(), &input.aad)?;
    let encoded = STANDARD.encode(plaintext.as_slice());
    Ok(obj(json!({ "plaintext": encoded })))
}

pub(crate) async fn rewrap(t: &Transit, call: &Call<'_>, name: &str) -> Result<Response> {
    let (items, batch) = items(call.data)?;
    let policy = load_for_use(t, call.store, name).await?;
    let results: Vec<ItemResult> = items
        .iter()
        .map(|item| rewrap_item(&policy, item))
        .collect();
    respond(results, batch, references(&items), partial_code(call)?)
}

fn rewrap_item(p: &KeyPolicy, item: &Data) -> ItemResult {
    let Some(ciphertext) = str_field(item, "ciphertext")?.filter(|c| !c.is_empty()) else {
        return Err(bad("missing ciphertext to rewrap"));
    };
    let input = ItemInput::read(item)?;
    let plaintext = decrypt_text(p, &ciphertext, input.context(), &input.aad)?;
    let version = p.encryption_version(u64_field(item, "key_version")?)?;
    let ciphertext = encrypt_bytes(p, version, input.context(), &input.aad, &plaintext)?;
    Ok(obj(
        json!({"ciphertext": ciphertext, "key_version": version}),
    ))
}

pub(crate) async fn datakey(
    t: &Transit,
    call: &Call<'_>,
    kind: &str,
    name: &str,
) -> Result<Response> {
    let with_plaintext = match kind {
        "plaintext" => true,
        "wrapped" => false,
        other => return Err(bad(format!("invalid type {other:?}"))),
    };
    let bits = match u64_field(call.data, "bits")? {
        0 => 256,
        b @ (128 | 256 | 512) => b,
        _ => return Err(bad("invalid bits length, must be 128, 256 or 512")),
    };
    let policy = load_for_use(t, call.store, name).await?;
    let input = ItemInput::read(call.data)?;
    let version = policy.encryption_version(u64_field(call.data, "key_version")?)?;
    let key = random_bytes((bits / 8) as usize)?;
    let ciphertext = encrypt_bytes(&policy, version, input.context(), &input.aad, &key)?;
    let mut data = obj(json!({"ciphertext": ciphertext, "key_version": version}));
    if with_plaintext {
        data.insert(
            "plaintext".into(),
            Value::String(STANDARD.encode(key.as_slice())),
        );
    }
    Ok(Response::data(data))
}

pub(crate) use bunker_sdk::data_of as obj;
