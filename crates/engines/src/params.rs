//! Reading request fields and checking secret paths.
//!
//! Vault's field decoding is lenient (numbers may arrive as strings from query parameters,
//! booleans as `"true"`), so these helpers accept the same shapes and turn anything else into
//! `InvalidRequest` naming the field. A JSON `null` counts as "not given".

use bunker_sdk::{Data, LogicalError, Result};
use serde_json::Value;

/// Longest secret path accepted, in bytes. Paths become storage keys; this keeps keys and list
/// pages bounded.
pub(crate) const MAX_PATH_BYTES: usize = 2048;

/// Most version numbers one delete/undelete/destroy request may name.
pub(crate) const MAX_VERSIONS_PER_REQUEST: usize = 1000;

/// A field's value, treating `null` as absent.
pub(crate) fn field<'a>(data: &'a Data, name: &str) -> Option<&'a Value> {
    data.get(name).filter(|v| !v.is_null())
}

fn bad_field(name: &str, expected: &str) -> LogicalError {
    LogicalError::InvalidRequest(format!("field {name:?} must be {expected}"))
}

/// Field decoding is the core's, one implementation for the whole server.
pub(crate) use bunker_sdk::fields::{
    get_bool as bool_field, get_duration as duration_field, get_u64 as u64_field, value_u64,
};

/// An object field.
pub(crate) fn object_field<'a>(data: &'a Data, name: &str) -> Result<Option<&'a Data>> {
    match field(data, name) {
        None => Ok(None),
        Some(Value::Object(map)) => Ok(Some(map)),
        Some(_) => Err(bad_field(name, "a JSON object")),
    }
}

/// The `versions` field of delete/undelete/destroy: an array of integers, a comma-separated
/// string, or a single integer. Must name at least one version.
pub(crate) fn versions_field(data: &Data) -> Result<Vec<u64>> {
    const NAME: &str = "versions";
    let mut versions = match field(data, NAME) {
        None => Vec::new(),
        Some(Value::Array(items)) => {
            if items.len() > MAX_VERSIONS_PER_REQUEST {
                return Err(too_many_versions());
            }
            items
                .iter()
                .map(|v| value_u64(v, NAME))
                .collect::<Result<Vec<_>>>()?
        }
        Some(Value::String(s)) => {
            let parts: Vec<&str> = s
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .take(MAX_VERSIONS_PER_REQUEST + 1)
                .collect();
            if parts.len() > MAX_VERSIONS_PER_REQUEST {
                return Err(too_many_versions());
            }
            parts
                .into_iter()
                .map(|p| {
                    p.parse::<u64>()
                        .map_err(|_| bad_field(NAME, "a list of version numbers"))
                })
                .collect::<Result<Vec<_>>>()?
        }
        Some(v @ Value::Number(_)) => vec![value_u64(v, NAME)?],
        Some(_) => return Err(bad_field(NAME, "a list of version numbers")),
    };
    if versions.is_empty() {
        return Err(LogicalError::InvalidRequest(
            "no version number provided".into(),
        ));
    }
    versions.sort_unstable();
    versions.dedup();
    Ok(versions)
}

fn too_many_versions() -> LogicalError {
    LogicalError::InvalidRequest(format!(
        "too many versions in one request (at most {MAX_VERSIONS_PER_REQUEST})"
    ))
}

/// Check the path of one secret: not empty, not a folder (no trailing `/`), no empty, `.` or
/// `..` segments, and not too long. Such paths would alias other keys or escape the key's
/// place in storage.
pub(crate) fn validate_key_path(path: &str) -> Result<()> {
    if path.is_empty() {
        return Err(LogicalError::InvalidRequest("missing secret path".into()));
    }
    if path.ends_with('/') {
        return Err(LogicalError::InvalidRequest(format!(
            "secret path {path:?} must not end with '/'"
        )));
    }
    validate_segments(path)
}

/// Check a LIST prefix and return it in storage form: empty (the root) or ending in `/`.
pub(crate) fn list_prefix(path: &str) -> Result<String> {
    if path.is_empty() {
        return Ok(String::new());
    }
    let trimmed = path.strip_suffix('/').unwrap_or(path);
    validate_segments(trimmed)?;
    Ok(format!("{trimmed}/"))
}

fn validate_segments(path: &str) -> Result<()> {
    if path.len() > MAX_PATH_BYTES {
        return Err(LogicalError::InvalidRequest(format!(
            "path is longer than {MAX_PATH_BYTES} bytes"
        )));
    }
    if path.is_empty()
        || path
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Err(LogicalError::InvalidRequest(format!(
            "invalid path {path:?}: empty, '.' and '..' segments are not allowed"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    use bunker_sdk::data_of as data;

    #[test]
    fn integers_from_numbers_and_strings() {
        let d = data(
            json!({"a": 3, "b": "7", "c": "", "d": -1, "e": "x", "f": 2.0, "g": 2.5, "h": null}),
        );
        assert_eq!(u64_field(&d, "a").unwrap(), Some(3));
        assert_eq!(u64_field(&d, "b").unwrap(), Some(7));
        assert_eq!(u64_field(&d, "c").unwrap(), Some(0));
        assert!(u64_field(&d, "d").is_err());
        assert!(u64_field(&d, "e").is_err());
        assert_eq!(u64_field(&d, "f").unwrap(), Some(2));
        assert!(u64_field(&d, "g").is_err());
        assert_eq!(u64_field(&d, "h").unwrap(), None);
        assert_eq!(u64_field(&d, "missing").unwrap(), None);
    }

    #[test]
    fn booleans() {
        let d = data(json!({"a": true, "b": "false", "c": 1, "d": "maybe", "e": [true]}));
        assert_eq!(bool_field(&d, "a").unwrap(), Some(true));
        assert_eq!(bool_field(&d, "b").unwrap(), Some(false));
        assert_eq!(bool_field(&d, "c").unwrap(), Some(true));
        assert!(bool_field(&d, "d").is_err());
        assert!(bool_field(&d, "e").is_err());
    }

    #[test]
    fn versions_shapes() {
        assert_eq!(
            versions_field(&data(json!({"versions": [3, "1", 3]}))).unwrap(),
            vec![1, 3]
        );
        assert_eq!(
            versions_field(&data(json!({"versions": "2, 4"}))).unwrap(),
            vec![2, 4]
        );
        assert_eq!(
            versions_field(&data(json!({"versions": 5}))).unwrap(),
            vec![5]
        );
        for bad in [
            json!({}),
            json!({"versions": []}),
            json!({"versions": ""}),
            json!({"versions": "a"}),
            json!({"versions": {}}),
            json!({"versions": [-1]}),
        ] {
            assert!(matches!(
                versions_field(&data(bad)),
                Err(LogicalError::InvalidRequest(_))
            ));
        }
        let many: Vec<u64> = (0..=MAX_VERSIONS_PER_REQUEST as u64).collect();
        assert!(versions_field(&data(json!({"versions": many}))).is_err());
    }

    #[test]
    fn key_paths() {
        for ok in ["a", "a/b", "a/b.c", "x..y"] {
            assert!(validate_key_path(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "a/", "/a", "a//b", "../a", "a/../b", "a/..", ".", "a/./b",
        ] {
            assert!(
                matches!(validate_key_path(bad), Err(LogicalError::InvalidRequest(_))),
                "{bad}"
            );
        }
        assert!(validate_key_path(&"a".repeat(MAX_PATH_BYTES + 1)).is_err());
    }

    #[test]
    fn list_prefixes() {
        assert_eq!(list_prefix("").unwrap(), "");
        assert_eq!(list_prefix("a").unwrap(), "a/");
        assert_eq!(list_prefix("a/b/").unwrap(), "a/b/");
        assert!(list_prefix("/").is_err());
        assert!(list_prefix("a/../").is_err());
        assert!(list_prefix("a//").is_err());
    }
}
