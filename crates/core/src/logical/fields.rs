//! Typed access to request fields, lenient the way Vault's field decoding is: booleans and
//! integers may arrive as JSON strings (query parameters always do).

use serde_json::Value;

use super::{Data, LogicalError, Result};

fn wrong_type(name: &str, want: &str) -> LogicalError {
    LogicalError::InvalidRequest(format!("invalid value for {name:?}: expected {want}"))
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

pub fn get_bool(data: &Data, name: &str) -> Result<Option<bool>> {
    match data.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(Value::String(s)) => match s.to_ascii_lowercase().as_str() {
            "" => Ok(None),
            "true" | "1" | "t" => Ok(Some(true)),
            "false" | "0" | "f" => Ok(Some(false)),
            _ => Err(wrong_type(name, "a boolean")),
        },
        Some(Value::Number(n)) => Ok(Some(n.as_u64().unwrap_or(0) != 0)),
        Some(_) => Err(wrong_type(name, "a boolean")),
    }
}

pub fn get_u64(data: &Data, name: &str) -> Result<Option<u64>> {
    match data.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .map(Some)
            .ok_or_else(|| wrong_type(name, "a non-negative integer")),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => s
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| wrong_type(name, "a non-negative integer")),
        Some(_) => Err(wrong_type(name, "a non-negative integer")),
    }
}

/// A duration in seconds: number, numeric string or Go-style string ("1h30m").
pub fn get_duration(data: &Data, name: &str) -> Result<Option<u64>> {
    match data.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(v) => crate::time_util::parse_duration_secs(v)
            .map(Some)
            .map_err(|_| wrong_type(name, "a duration")),
    }
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

/// Refuse fields the endpoint does not know, as Vault does for most system endpoints.
pub fn reject_unknown(data: &Data, known: &[&str]) -> Result<()> {
    let unknown: Vec<&str> = data
        .keys()
        .map(String::as_str)
        .filter(|k| !known.contains(k))
        .collect();
    if unknown.is_empty() {
        Ok(())
    } else {
        Err(LogicalError::InvalidRequest(format!(
            "unknown fields: {}",
            unknown.join(", ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn data(v: Value) -> Data {
        match v {
            Value::Object(m) => m,
            _ => Data::new(),
        }
    }

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
        assert!(reject_unknown(&d, &["a"]).is_err());
    }
}
