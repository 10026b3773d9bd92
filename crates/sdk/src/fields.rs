//! Typed access to request fields, lenient the way Vault's field decoding is: booleans and
//! integers may arrive as JSON strings (query parameters always do).

use serde_json::Value;

use super::{Data, LogicalError, Response, Result};

fn wrong_type(name: &str, want: &str) -> LogicalError {
    LogicalError::InvalidRequest(format!("invalid value for {name:?}: expected {want}"))
}

/// A field's value, `null` counting as absent. An empty string is the type's zero value
/// (`0`, `false`, `0s`), as Vault's weak decoding makes it.
fn present<'a>(data: &'a Data, name: &str) -> Option<&'a Value> {
    data.get(name).filter(|v| !v.is_null())
}

pub fn get_str(data: &Data, name: &str) -> Result<Option<String>> {
    match data.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(Value::Bool(b)) => Ok(Some(b.to_string())),
        Some(_) => Err(wrong_type(name, "a string")),
    }
}

/// Go's `strconv.ParseBool`, which Vault uses for booleans in strings: exactly
/// `1 t T TRUE true True` and `0 f F FALSE false False` (not `tRuE`, not `yes`).
pub fn parse_go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// A boolean: JSON `true`/`false`, a number (non-zero is true), or a string Go's
/// `strconv.ParseBool` takes ([`parse_go_bool`], around spaces); `""` is false.
pub fn get_bool(data: &Data, name: &str) -> Result<Option<bool>> {
    let Some(value) = present(data, name) else {
        return Ok(None);
    };
    let parsed = match value {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => n.as_f64().map(|f| f != 0.0),
        Value::String(s) => match s.trim() {
            "" => Some(false),
            s => parse_go_bool(s),
        },
        _ => None,
    };
    parsed
        .map(Some)
        .ok_or_else(|| wrong_type(name, "a boolean"))
}

/// A non-negative integer: a number with no fractional part (`1.0` is 1, `0.5` is refused) or
/// a string of digits.
pub fn get_u64(data: &Data, name: &str) -> Result<Option<u64>> {
    present(data, name).map(|v| value_u64(v, name)).transpose()
}

/// [`get_u64`] of one value (an element of a list field, say); `name` is for the error.
pub fn value_u64(value: &Value, name: &str) -> Result<u64> {
    let bad = || wrong_type(name, "a non-negative integer");
    match value {
        Value::Number(n) => match (n.as_u64(), n.as_f64()) {
            (Some(u), _) => Ok(u),
            (None, Some(f)) if f.is_finite() && f >= 0.0 && f.fract() == 0.0 && f < 9.0e15 => {
                Ok(f as u64)
            }
            _ => Err(bad()),
        },
        Value::String(s) if s.trim().is_empty() => Ok(0),
        Value::String(s) => s.trim().parse().map_err(|_| bad()),
        _ => Err(bad()),
    }
}

/// A duration in whole seconds: a number (fractions truncated: `0.5` is 0), a string of
/// digits, or a Go duration string (`"1h30m"`, `"1us"` is 0), see [`super::duration`].
pub fn get_duration(data: &Data, name: &str) -> Result<Option<u64>> {
    let Some(value) = present(data, name) else {
        return Ok(None);
    };
    super::duration::parse_duration_value(value)
        .map(Some)
        .map_err(|_| wrong_type(name, "a duration such as \"30m\""))
}

/// A list of strings: a JSON array, or a comma-separated string.
pub fn get_str_list(data: &Data, name: &str) -> Result<Option<Vec<String>>> {
    match data.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(
            s.split(',')
                .map(|p| p.trim().to_owned())
                .filter(|p| !p.is_empty())
                .collect(),
        )),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.trim().to_owned()),
                _ => Err(wrong_type(name, "a list of strings")),
            })
            .collect::<Result<Vec<_>>>()
            .map(Some),
        Some(_) => Err(wrong_type(name, "a list of strings")),
    }
}

/// A map of string to string.
pub fn get_str_map(
    data: &Data,
    name: &str,
) -> Result<Option<std::collections::BTreeMap<String, String>>> {
    match data.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(map)) => map
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                other => Ok((k.clone(), other.to_string())),
            })
            .collect::<Result<_>>()
            .map(Some),
        Some(_) => Err(wrong_type(name, "a map of strings")),
    }
}

/// Vault's answer to fields an endpoint does not define: they are ignored, and the response
/// carries the warning this returns ("Endpoint ignored these unrecognized parameters").
/// Clients send such fields (node-vault's `mount()` sends `mount_point`).
pub fn unknown_fields_warning(data: &Data, known: &[&str]) -> Option<String> {
    let mut unknown: Vec<&str> = data
        .keys()
        .map(String::as_str)
        .filter(|k| !known.contains(k))
        .collect();
    if unknown.is_empty() {
        return None;
    }
    unknown.sort_unstable();
    Some(format!(
        "Endpoint ignored these unrecognized parameters: [{}]",
        unknown.join(" ")
    ))
}

/// For endpoints whose answer has no room for warnings: ignore unknown fields, as Vault does,
/// and say so in the server log.
pub fn ignore_unknown(data: &Data, known: &[&str]) {
    if let Some(w) = unknown_fields_warning(data, known) {
        tracing::debug!("{w}");
    }
}

/// Attach [`unknown_fields_warning`] to `resp`, if any.
pub fn warn_unknown(resp: Response, data: &Data, known: &[&str]) -> Response {
    match unknown_fields_warning(data, known) {
        Some(w) => resp.with_warning(w),
        None => resp,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The cases on which the two decoders this module replaced disagreed.
    #[test]
    fn one_answer_for_the_disputed_inputs() {
        let d = data(json!({
            "mixed": "tRuE", "empty": "", "half": 0.5, "one": 1.0, "micro": "1us",
            "upper": "TRUE", "num": 2,
        }));
        assert!(get_bool(&d, "mixed").is_err());
        assert_eq!(get_bool(&d, "upper").ok().flatten(), Some(true));
        assert_eq!(get_bool(&d, "num").ok().flatten(), Some(true));
        assert_eq!(get_bool(&d, "empty").ok().flatten(), Some(false));
        assert_eq!(get_u64(&d, "empty").ok().flatten(), Some(0));
        assert_eq!(get_duration(&d, "empty").ok().flatten(), Some(0));
        assert!(get_u64(&d, "half").is_err());
        assert_eq!(get_u64(&d, "one").ok().flatten(), Some(1));
        assert_eq!(get_duration(&d, "half").ok().flatten(), Some(0));
        assert_eq!(get_duration(&d, "one").ok().flatten(), Some(1));
        assert_eq!(get_duration(&d, "micro").ok().flatten(), Some(0));
    }

    use crate::data_of as data;

    #[test]
    fn lenient_decoding() {
        let d =
            data(json!({"a": "true", "b": "7", "c": ["x", "y"], "d": "x, y", "e": {}, "f": "1h"}));
        assert_eq!(get_bool(&d, "a").ok().flatten(), Some(true));
        assert_eq!(get_u64(&d, "b").ok().flatten(), Some(7));
        assert_eq!(
            get_str_list(&d, "c").ok().flatten().map(|v| v.len()),
            Some(2)
        );
        assert_eq!(
            get_str_list(&d, "d").ok().flatten().map(|v| v.len()),
            Some(2)
        );
        assert!(get_u64(&d, "e").is_err());
        assert_eq!(get_duration(&d, "f").ok().flatten(), Some(3600));
        let warning = unknown_fields_warning(&d, &["a", "c", "d", "e", "f"]);
        assert_eq!(
            warning.as_deref(),
            Some("Endpoint ignored these unrecognized parameters: [b]")
        );
    }
}
