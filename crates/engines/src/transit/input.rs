//! Request fields of the transit endpoints: base64 inputs with size bounds, batch items, and
//! Vault's `vault:v<N>:<base64>` format for ciphertexts, HMACs and signatures.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use bunker_sdk::fields::{get_bool, get_str, get_u64};
use bunker_sdk::{Data, LogicalError, Result};
use serde_json::Value;
use zeroize::Zeroizing;

/// Largest plaintext (or signing/HMAC input) of one item, decoded, in bytes.
pub(crate) const MAX_INPUT_BYTES: usize = 4 * 1024 * 1024;
/// Most items in one `batch_input`.
pub(crate) const MAX_BATCH_ITEMS: usize = 10_000;
/// Largest `context`, `nonce` or `associated_data`, decoded.
pub(crate) const MAX_CONTEXT_BYTES: usize = 64 * 1024;

fn bad(msg: impl Into<String>) -> LogicalError {
    LogicalError::InvalidRequest(msg.into())
}

/// Decode a base64 field (standard alphabet, padding optional); `None` when absent or empty.
pub(crate) fn b64_field(data: &Data, name: &str, max: usize) -> Result<Option<Zeroizing<Vec<u8>>>> {
    let Some(text) = get_str(data, name)? else {
        return Ok(None);
    };
    let text = Zeroizing::new(text);
    if text.is_empty() {
        return Ok(None);
    }
    // 4 base64 characters carry 3 bytes.
    if text.len() / 4 > max / 3 + 1 {
        return Err(bad(format!("{name} is larger than {max} bytes")));
    }
    let decoded = STANDARD
        .decode(text.as_bytes())
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(text.as_bytes()))
        .map_err(|_| bad(format!("failed to base64-decode {name}")))?;
    let decoded = Zeroizing::new(decoded);
    if decoded.len() > max {
        return Err(bad(format!("{name} is larger than {max} bytes")));
    }
    Ok(Some(decoded))
}

pub(crate) fn str_field(data: &Data, name: &str) -> Result<Option<String>> {
    get_str(data, name)
}

pub(crate) fn u64_field(data: &Data, name: &str) -> Result<u64> {
    Ok(get_u64(data, name)?.unwrap_or(0))
}

pub(crate) fn bool_field(data: &Data, name: &str) -> Result<bool> {
    Ok(get_bool(data, name)?.unwrap_or(false))
}

/// The items of a request: each `batch_input` element (objects), or the request itself as
/// the single item. The flag says whether it was a batch.
pub(crate) fn items(data: &Data) -> Result<(Vec<Data>, bool)> {
    match data.get("batch_input") {
        None | Some(Value::Null) => Ok((vec![data.clone()], false)),
        Some(Value::Array(list)) => {
            if list.is_empty() {
                return Err(bad("missing batch input to process"));
            }
            if list.len() > MAX_BATCH_ITEMS {
                return Err(bad(format!(
                    "batch_input has more than {MAX_BATCH_ITEMS} items"
                )));
            }
            list.iter()
                .map(|item| match item {
                    Value::Object(m) => Ok(m.clone()),
                    _ => Err(bad("batch_input items must be JSON objects")),
                })
                .collect::<Result<Vec<_>>>()
                .map(|v| (v, true))
        }
        Some(_) => Err(bad("batch_input must be a list of objects")),
    }
}

/// `vault:v<N>:<payload>` for a version and raw bytes (standard base64, or URL-safe without
/// padding for JWS signatures).
pub(crate) fn format_versioned(version: u64, bytes: &[u8], url_safe: bool) -> String {
    let payload = if url_safe {
        URL_SAFE_NO_PAD.encode(bytes)
    } else {
        STANDARD.encode(bytes)
    };
    format!("vault:v{version}:{payload}")
}

/// Parse `vault:v<N>:<payload>`; `what` names the thing in errors ("ciphertext", "signature").
pub(crate) fn parse_versioned(text: &str, what: &str, url_safe: bool) -> Result<(u64, Vec<u8>)> {
    let rest = text
        .strip_prefix("vault:v")
        .ok_or_else(|| bad(format!("invalid {what}: no prefix")))?;
    let (version, payload) = rest
        .split_once(':')
        .ok_or_else(|| bad(format!("invalid {what}: wrong number of fields")))?;
    let version: u64 = version.parse().map_err(|_| {
        bad(format!(
            "invalid {what}: version number could not be decoded"
        ))
    })?;
    if version == 0 {
        return Err(bad(format!(
            "invalid {what}: version number could not be decoded"
        )));
    }
    if payload.len() / 4 > MAX_INPUT_BYTES / 3 + 1024 {
        return Err(bad(format!("invalid {what}: too long")));
    }
    let decoded = if url_safe {
        URL_SAFE_NO_PAD
            .decode(payload)
            .or_else(|_| STANDARD.decode(payload))
    } else {
        STANDARD.decode(payload)
    };
    let bytes = decoded.map_err(|_| bad(format!("invalid {what}: could not decode base64")))?;
    Ok((version, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn versioned_format() {
        let s = format_versioned(3, b"abc", false);
        assert_eq!(s, "vault:v3:YWJj");
        assert_eq!(
            parse_versioned(&s, "ciphertext", false).unwrap(),
            (3, b"abc".to_vec())
        );
        for bad in [
            "abc",
            "vault:vx:YWJj",
            "vault:v3",
            "vault:v3:!!",
            "vault:v0:YWJj",
        ] {
            assert!(parse_versioned(bad, "ciphertext", false).is_err(), "{bad}");
        }
    }

    #[test]
    fn batch_bounds() {
        let many: Vec<Value> = (0..=MAX_BATCH_ITEMS).map(|_| json!({})).collect();
        let d = match json!({"batch_input": many}) {
            Value::Object(m) => m,
            _ => unreachable!(),
        };
        assert!(items(&d).is_err());
        let d = match json!({"batch_input": [1]}) {
            Value::Object(m) => m,
            _ => unreachable!(),
        };
        assert!(items(&d).is_err());
    }
}
