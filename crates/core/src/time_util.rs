//! Time helpers: Vault-style durations ("1h30m", "45s", plain seconds) and RFC 3339 stamps.

use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::logical::{LogicalError, Result};

pub fn now_unix() -> u64 {
    OffsetDateTime::now_utc().unix_timestamp().max(0) as u64
}

pub fn rfc3339(unix: u64) -> String {
    i64::try_from(unix)
        .ok()
        .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

pub fn now_rfc3339() -> String {
    OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_default()
}

/// Parse a duration given as a JSON number of seconds, a string of seconds, or a Go-style
/// duration string ("1h", "30m", "1h30m10s", "500ms" rounds down to seconds).
pub fn parse_duration_secs(value: &Value) -> Result<u64> {
    match value {
        Value::Number(n) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
            .ok_or_else(|| LogicalError::InvalidRequest(format!("invalid duration {n}"))),
        Value::String(s) => parse_duration_str(s),
        Value::Null => Ok(0),
        other => Err(LogicalError::InvalidRequest(format!(
            "invalid duration {other}"
        ))),
    }
}

pub fn parse_duration_str(s: &str) -> Result<u64> {
    let s = s.trim();
    let bad = || LogicalError::InvalidRequest(format!("invalid duration {s:?}"));
    if s.is_empty() {
        return Ok(0);
    }
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(secs);
    }
    let mut total_ms: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        if digits == 0 {
            return Err(bad());
        }
        let (num, tail) = rest.split_at(digits);
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_len);
        let num: f64 = num.parse().map_err(|_| bad())?;
        let unit_ms: f64 = match unit {
            "ms" => 1.0,
            "s" => 1000.0,
            "m" => 60_000.0,
            "h" => 3_600_000.0,
            "d" => 86_400_000.0,
            _ => return Err(bad()),
        };
        total_ms = total_ms.saturating_add((num * unit_ms) as u128);
        rest = next;
    }
    u64::try_from(total_ms / 1000).map_err(|_| bad())
}

/// Format seconds the way Vault prints durations ("768h0m0s" style is Go's; we print "1h2m3s").
pub fn format_duration_secs(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    format!("{h}h{m}m{s}s")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_secs(&json!(30)).ok(), Some(30));
        assert_eq!(parse_duration_secs(&json!("30")).ok(), Some(30));
        assert_eq!(parse_duration_secs(&json!("1h30m")).ok(), Some(5400));
        assert_eq!(parse_duration_secs(&json!("45s")).ok(), Some(45));
        assert_eq!(parse_duration_secs(&json!("768h")).ok(), Some(768 * 3600));
        assert_eq!(parse_duration_secs(&json!("1.5h")).ok(), Some(5400));
        assert!(parse_duration_secs(&json!("abc")).is_err());
        assert!(parse_duration_secs(&json!("10x")).is_err());
        assert!(parse_duration_secs(&json!("h")).is_err());
        assert!(parse_duration_secs(&json!(true)).is_err());
        assert_eq!(format_duration_secs(3725), "1h2m5s");
    }
}
