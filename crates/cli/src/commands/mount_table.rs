//! What `secrets` and `audit` share: both manage the entries of a mount table
//! (`sys/mounts`, `sys/audit`), enable them with the same optional settings and list them the
//! same way.

use serde_json::{Map, Value};

use super::Ctx;
use crate::client::{ApiRequest, Verb};
use crate::error::{CliError, Doing};
use crate::output::{self, cell};

/// Adds the optional `description` and the `local` flag of a new mount (or audit device) to
/// its request `body`.
pub(crate) fn with_description_and_local(
    mut body: Value,
    description: Option<&str>,
    local: bool,
) -> Value {
    if let Some(object) = body.as_object_mut() {
        if let Some(description) = description {
            object.insert("description".into(), Value::from(description));
        }
        if local {
            object.insert("local".into(), Value::Bool(true));
        }
    }
    body
}

/// GETs a mount table; `null` when the server answers with no body.
pub(crate) fn fetch_table(ctx: &Ctx, path: &str, doing: &str) -> Result<Value, CliError> {
    Ok(ctx
        .client()?
        .send(ApiRequest::new(Verb::Get, path))
        .doing(doing)?
        .body
        .unwrap_or(Value::Null))
}

/// Path → mount entries from a `sys/mounts` (or `sys/audit`) response: `data` when present,
/// else the top-level entries that look like mounts.
pub(crate) fn mount_map(response: &Value) -> Map<String, Value> {
    let source = response
        .get("data")
        .and_then(Value::as_object)
        .or_else(|| response.as_object());
    source
        .map(|map| {
            map.iter()
                .filter(|(_, v)| v.get("type").is_some())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// One table row per entry, as `row` renders it, sorted.
pub(crate) fn sorted_rows(
    entries: &Map<String, Value>,
    row: impl Fn(&String, &Value) -> Vec<String>,
) -> Vec<Vec<String>> {
    let mut rows: Vec<Vec<String>> = entries
        .iter()
        .map(|(path, entry)| row(path, entry))
        .collect();
    rows.sort();
    rows
}

/// An entry's field as text; empty when missing.
pub(crate) fn field(entry: &Value, key: &str) -> String {
    entry.get(key).map(output::raw).unwrap_or_default()
}

/// `local` or `replicated`.
pub(crate) fn replication(entry: &Value) -> String {
    let local = entry.get("local").and_then(Value::as_bool).unwrap_or(false);
    if local { "local" } else { "replicated" }.to_string()
}

/// An entry's options as compact JSON; `<nil>` when it has none.
pub(crate) fn options(entry: &Value) -> String {
    entry
        .get("options")
        .map(cell)
        .unwrap_or_else(|| "<nil>".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn mounts_come_from_data_or_top_level() {
        let with_data = json!({"request_id": "r", "data": {"secret/": {"type": "kv"}}});
        assert_eq!(mount_map(&with_data).len(), 1);
        let top = json!({"sys/": {"type": "system"}, "request_id": "r"});
        assert_eq!(mount_map(&top).keys().collect::<Vec<_>>(), vec!["sys/"]);
    }

    #[test]
    fn description_and_local_only_when_given() {
        let body = json!({"type": "file"});
        assert_eq!(with_description_and_local(body.clone(), None, false), body);
        assert_eq!(
            with_description_and_local(body, Some("d"), true),
            json!({"type": "file", "description": "d", "local": true})
        );
    }
}
