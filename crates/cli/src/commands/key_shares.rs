//! What the commands that deal in unseal key shares have in common: `operator init` and
//! `unseal`, and the key-share ceremonies (`generate-root`, the DR operation token, `rekey`)
//! choose one step from their flags, check a new threshold, read a share and list new shares
//! the same way.

use serde_json::{json, Value};
use zeroize::Zeroizing;

use crate::client::{ApiRequest, Verb};
use crate::error::CliError;
use crate::input::secret_arg;
use crate::output;

/// Reads an unseal key share: `key` itself, or from stdin (prompting on a terminal) when it is
/// absent or `-`.
pub(crate) fn read_unseal_key(key: Option<&str>) -> Result<Zeroizing<String>, CliError> {
    secret_arg(key, "Unseal Key (will be hidden): ")
}

/// A PUT to `path` providing one unseal key share (read as [`read_unseal_key`] does) for the
/// attempt `nonce`.
pub(crate) fn share_request(
    path: &str,
    key: Option<&str>,
    nonce: &str,
) -> Result<ApiRequest, CliError> {
    let key = read_unseal_key(key)?;
    let body = json!({"key": key.as_str(), "nonce": nonce});
    Ok(ApiRequest::new(Verb::Put, path).json(&body))
}

/// The one step the flags choose: the mode of the only flag set in `flags`, `default` when
/// none is, a usage error naming them (`usage`) when several are.
pub(crate) fn one_mode<M>(
    flags: impl IntoIterator<Item = (bool, M)>,
    default: M,
    usage: &str,
) -> Result<M, CliError> {
    let mut chosen = flags
        .into_iter()
        .filter_map(|(set, mode)| set.then_some(mode));
    match (chosen.next(), chosen.next()) {
        (None, _) => Ok(default),
        (Some(mode), None) => Ok(mode),
        (Some(_), Some(_)) => Err(CliError::Usage(usage.into())),
    }
}

/// Checks a new key threshold against the number of key shares.
pub(crate) fn check_threshold(key_shares: u32, key_threshold: u32) -> Result<(), CliError> {
    if key_threshold == 0 || key_threshold > key_shares {
        return Err(CliError::Usage(format!(
            "Invalid -key-threshold={key_threshold}: must be between 1 and \
             -key-shares={key_shares}"
        )));
    }
    Ok(())
}

/// One `{label} N: <share>` line for each new key share of `response` (base64 when given).
pub(crate) fn key_share_lines(response: &Value, label: &str) -> String {
    let keys = response
        .get("keys_base64")
        .or_else(|| response.get("keys"))
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    keys.iter()
        .enumerate()
        .map(|(i, key)| format!("{label} {}: {}\n", i + 1, output::raw(key)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_mode_takes_the_only_flag_set() {
        let pick = |a: bool, b: bool| one_mode([(a, 'a'), (b, 'b')], 'p', "one only").ok();
        assert_eq!(pick(false, false), Some('p'));
        assert_eq!(pick(false, true), Some('b'));
        assert_eq!(pick(true, true), None);
    }

    #[test]
    fn thresholds_must_fit_the_shares() {
        assert!(check_threshold(3, 0).is_err());
        assert!(check_threshold(3, 4).is_err());
        assert!(check_threshold(3, 3).is_ok());
        assert_eq!(
            check_threshold(2, 5).err().map(|e| e.to_string()),
            Some("Invalid -key-threshold=5: must be between 1 and -key-shares=2".to_string())
        );
    }

    #[test]
    fn key_shares_prefer_base64() {
        let response = json!({"keys": ["aa", "bb"], "keys_base64": ["qg==", "uw=="]});
        assert_eq!(
            key_share_lines(&response, "Key"),
            "Key 1: qg==\nKey 2: uw==\n"
        );
        assert_eq!(key_share_lines(&json!({}), "Key"), "");
    }
}
