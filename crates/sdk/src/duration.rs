//! Duration parsing and formatting in Vault's conventions: the one implementation every
//! request field, header (`X-Vault-Wrap-TTL`) and backend uses.
//!
//! Vault accepts durations either as whole seconds (a JSON number or a string of digits) or as
//! Go duration strings (`"1h30m"`, `"10m"`, `"45s"`, `"1.5h"`, `"250ms"`), plus a `d` (day)
//! unit. Engines only ever need whole seconds, so sub-second remainders are truncated, as
//! Vault's own `ParseDurationSecond` does. Negative durations are refused: nothing here has a
//! use for them and accepting them would turn "expire later" into "already expired".
//!
//! Output uses Go's `time.Duration.String()` shape (`"0s"`, `"45s"`, `"1m30s"`, `"1h0m0s"`),
//! which Vault prints for fields such as `delete_version_after`.

use super::{LogicalError, Result};
use serde_json::Value;

/// Longest duration string accepted; anything longer is garbage, not a duration.
const MAX_DURATION_CHARS: usize = 64;

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// Parse a duration given as a string: whole seconds (`"90"`) or a Go duration (`"1h30m"`).
/// An empty string is zero, as in Vault.
pub fn parse_duration_secs(input: &str) -> Result<u64> {
    let nanos = duration_nanos(input).ok_or_else(|| invalid(input))?;
    u64::try_from(nanos / NANOS_PER_SEC).map_err(|_| invalid(input))
}

/// Whether `input` (as [`parse_duration_secs`] takes it) is a duration above zero that whole
/// seconds truncate to zero (`"500ms"`): for settings where zero means "off", such a value must
/// be refused rather than silently turn the setting off.
pub fn is_under_a_second(input: &str) -> bool {
    duration_nanos(input).is_some_and(|nanos| nanos > 0 && nanos < NANOS_PER_SEC)
}

/// `input` in nanoseconds, exactly (`None` if it is no duration): the one parse behind both.
fn duration_nanos(input: &str) -> Option<u128> {
    let text = input.trim();
    if text.is_empty() {
        return Some(0);
    }
    if text.chars().count() > MAX_DURATION_CHARS {
        return None;
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        let secs = text.parse::<u64>().ok()?;
        return Some(u128::from(secs) * NANOS_PER_SEC);
    }
    parse_go_duration_nanos(text)
}

/// Parse a duration given as JSON: a non-negative number of seconds or a duration string.
pub fn parse_duration_value(value: &Value) -> Result<u64> {
    match value {
        Value::Number(n) => {
            if let Some(secs) = n.as_u64() {
                return Ok(secs);
            }
            match n.as_f64() {
                // Fractional seconds are truncated; the bound keeps the cast exact enough.
                Some(f) if (0.0..1.8e19).contains(&f) => Ok(f as u64),
                _ => Err(invalid(&n.to_string())),
            }
        }
        Value::String(s) => parse_duration_secs(s),
        Value::Null => Ok(0),
        other => Err(invalid(&other.to_string())),
    }
}

/// Format whole seconds the way Go prints a `time.Duration`: `0s`, `45s`, `1m30s`, `1h0m0s`.
pub fn format_duration(secs: u64) -> String {
    let hours = secs / 3600;
    let minutes = (secs % 3600) / 60;
    let seconds = secs % 60;
    if hours > 0 {
        format!("{hours}h{minutes}m{seconds}s")
    } else if minutes > 0 {
        format!("{minutes}m{seconds}s")
    } else {
        format!("{seconds}s")
    }
}

fn invalid(input: &str) -> LogicalError {
    LogicalError::InvalidRequest(format!("invalid duration {input:?}"))
}

/// Nanoseconds in one of Go's units (plus Vault's `d`).
fn unit_nanos(unit: &str) -> Option<u128> {
    Some(match unit {
        "ns" => 1,
        "us" | "µs" | "μs" => 1_000,
        "ms" => 1_000_000,
        "s" => NANOS_PER_SEC,
        "m" => 60 * NANOS_PER_SEC,
        "h" => 3_600 * NANOS_PER_SEC,
        "d" => 86_400 * NANOS_PER_SEC,
        _ => return None,
    })
}

/// Parse a Go duration string such as `1h30m` or `1.5s` into nanoseconds. `None` on any
/// syntax error, a negative sign, or overflow.
fn parse_go_duration_nanos(text: &str) -> Option<u128> {
    let mut rest = text.strip_prefix('+').unwrap_or(text);
    if rest == "0" {
        return Some(0);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total: u128 = 0;
    // Every iteration consumes at least one character, so the loop ends; the input length is
    // bounded by MAX_DURATION_CHARS.
    while !rest.is_empty() {
        let (whole, after_whole) = split_digits(rest);
        let (fraction, after_fraction) = match after_whole.strip_prefix('.') {
            Some(after_dot) => split_digits(after_dot),
            None => ("", after_whole),
        };
        if whole.is_empty() && fraction.is_empty() {
            return None;
        }
        let unit_len = after_fraction
            .char_indices()
            .find(|(_, c)| c.is_ascii_digit() || *c == '.')
            .map_or(after_fraction.len(), |(i, _)| i);
        let (unit, after_unit) = after_fraction.split_at(unit_len);
        let per_unit = unit_nanos(unit)?;
        total = total.checked_add(segment_nanos(whole, fraction, per_unit)?)?;
        rest = after_unit;
    }
    Some(total)
}

/// `whole.fraction` units, in nanoseconds.
fn segment_nanos(whole: &str, fraction: &str, per_unit: u128) -> Option<u128> {
    let whole_value: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let mut nanos = whole_value.checked_mul(per_unit)?;
    // Digits past the 18th cannot change a nanosecond count of any unit up to a day.
    let fraction = fraction.get(..fraction.len().min(18)).unwrap_or("");
    if !fraction.is_empty() {
        let numerator: u128 = fraction.parse().ok()?;
        let exponent = u32::try_from(fraction.len()).ok()?;
        let scale = 10u128.checked_pow(exponent)?;
        nanos = nanos.checked_add(numerator.checked_mul(per_unit)? / scale)?;
    }
    Some(nanos)
}

/// Split off the leading ASCII digits.
fn split_digits(s: &str) -> (&str, &str) {
    let end = s
        .char_indices()
        .find(|(_, c)| !c.is_ascii_digit())
        .map_or(s.len(), |(i, _)| i);
    s.split_at(end)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_positive_duration_under_a_second_is_told_apart() {
        for under in ["500ms", "999ms", "1us", " 0.5s "] {
            assert!(is_under_a_second(under), "{under}");
        }
        for not in ["0", "0s", "", "1s", "1.5s", "1000ms", "30", "soon", "-1ms"] {
            assert!(!is_under_a_second(not), "{not}");
        }
    }

    #[test]
    fn parses_plain_seconds() {
        assert_eq!(parse_duration_secs("0").unwrap(), 0);
        assert_eq!(parse_duration_secs("90").unwrap(), 90);
        assert_eq!(parse_duration_secs(" 42 ").unwrap(), 42);
        assert_eq!(parse_duration_secs("").unwrap(), 0);
    }

    #[test]
    fn parses_go_durations() {
        assert_eq!(parse_duration_secs("45s").unwrap(), 45);
        assert_eq!(parse_duration_secs("10m").unwrap(), 600);
        assert_eq!(parse_duration_secs("2h").unwrap(), 7200);
        assert_eq!(parse_duration_secs("1h30m").unwrap(), 5400);
        assert_eq!(parse_duration_secs("1h0m0s").unwrap(), 3600);
        assert_eq!(parse_duration_secs("1.5h").unwrap(), 5400);
        assert_eq!(parse_duration_secs(".5m").unwrap(), 30);
        assert_eq!(parse_duration_secs("1500ms").unwrap(), 1);
        assert_eq!(parse_duration_secs("999ms").unwrap(), 0);
        assert_eq!(parse_duration_secs("2d").unwrap(), 172_800);
        assert_eq!(parse_duration_secs("+5s").unwrap(), 5);
        assert_eq!(parse_duration_secs("0s").unwrap(), 0);
        assert_eq!(parse_duration_secs("1µs").unwrap(), 0);
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "abc", "1x", "h", "1h-", "-5s", "-1", "1..5s", ".s", "5 s", "1h 2m", "s1", "+", "1e5s",
        ] {
            assert!(
                matches!(
                    parse_duration_secs(bad),
                    Err(LogicalError::InvalidRequest(_))
                ),
                "{bad:?} should be rejected"
            );
        }
        let long = "1".repeat(100) + "s";
        assert!(parse_duration_secs(&long).is_err());
        assert!(parse_duration_secs("99999999999999999999999").is_err());
        assert!(parse_duration_secs("9999999999999999999999h").is_err());
    }

    #[test]
    fn parses_json_values() {
        assert_eq!(parse_duration_value(&json!(30)).unwrap(), 30);
        assert_eq!(parse_duration_value(&json!(30.9)).unwrap(), 30);
        assert_eq!(parse_duration_value(&json!("1m")).unwrap(), 60);
        assert_eq!(parse_duration_value(&Value::Null).unwrap(), 0);
        assert!(parse_duration_value(&json!(-3)).is_err());
        assert!(parse_duration_value(&json!(true)).is_err());
        assert!(parse_duration_value(&json!({"a": 1})).is_err());
        assert!(parse_duration_value(&json!([1])).is_err());
    }

    #[test]
    fn formats_like_go() {
        assert_eq!(format_duration(0), "0s");
        assert_eq!(format_duration(45), "45s");
        assert_eq!(format_duration(90), "1m30s");
        assert_eq!(format_duration(3600), "1h0m0s");
        assert_eq!(format_duration(12_600), "3h30m0s");
        assert_eq!(format_duration(90_061), "25h1m1s");
    }

    #[test]
    fn format_round_trips() {
        for secs in [0u64, 1, 59, 60, 61, 3599, 3600, 86_400, 1_000_000] {
            assert_eq!(parse_duration_secs(&format_duration(secs)).unwrap(), secs);
        }
    }
}
