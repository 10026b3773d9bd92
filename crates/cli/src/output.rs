//! Rendering responses as `vault`-style tables or pretty JSON, and writing them out.
//!
//! The formatting functions return strings so they can be tested; [`emit`] and friends do the
//! writing.

use std::io::{IsTerminal, Write};

use serde_json::{Map, Value};

use crate::error::CliError;

/// Output format (`-format`, `VAULT_FORMAT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned Key/Value columns.
    Table,
    /// The server's JSON response, pretty-printed.
    Json,
}

/// Gap between table columns.
const COLUMN_GAP: &str = "    ";

/// A value as shown in a table cell: strings raw (`n/a` when empty), `null` as `<nil>`,
/// arrays and objects as compact JSON.
pub fn cell(value: &Value) -> String {
    match value {
        Value::String(s) if s.is_empty() => "n/a".to_string(),
        Value::String(s) => s.clone(),
        Value::Null => "<nil>".to_string(),
        other => other.to_string(),
    }
}

/// The table cell of `value`'s field `key`; `n/a` when there is no such field.
pub fn cell_or_na(value: &Value, key: &str) -> String {
    value.get(key).map(cell).unwrap_or_else(|| "n/a".into())
}

/// A value as printed by `-field`: strings raw, everything else as compact JSON.
pub fn raw(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Columns padded to their widest cell, with a dashed line under the headers.
pub fn columns(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, text) in row.iter().enumerate() {
            let width = text.chars().count();
            match widths.get_mut(i) {
                Some(w) => *w = (*w).max(width),
                None => widths.push(width),
            }
        }
    }
    let header: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    let dashes: Vec<String> = headers
        .iter()
        .map(|h| "-".repeat(h.chars().count()))
        .collect();
    let mut out = String::new();
    for row in [&header, &dashes].into_iter().chain(rows.iter()) {
        out.push_str(&join_padded(row, &widths));
        out.push('\n');
    }
    out
}

fn join_padded(row: &[String], widths: &[usize]) -> String {
    let mut line = String::new();
    for (i, text) in row.iter().enumerate() {
        if i > 0 {
            line.push_str(COLUMN_GAP);
        }
        line.push_str(text);
        let width = widths.get(i).copied().unwrap_or(0);
        line.push_str(&" ".repeat(width.saturating_sub(text.chars().count())));
    }
    line.trim_end().to_string()
}

/// A two-column `Key`/`Value` table, rows in the given order.
pub fn key_value_table(rows: &[(String, String)]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|(k, v)| vec![k.clone(), v.clone()])
        .collect();
    columns(&["Key", "Value"], &rows)
}

/// A `== Title ==` banner, then `body`. The banner grows with the width of the body's first
/// column (the keys), so sections with long keys get wider banners, as in `vault kv get`.
pub fn section(title: &str, body: &str) -> String {
    let header = body.lines().next().unwrap_or("");
    let key_width = header
        .rfind(' ')
        .map(|i| (i + 1).saturating_sub(COLUMN_GAP.len()))
        .unwrap_or(header.chars().count());
    let target_width = key_width + 9;
    let pad = target_width
        .saturating_sub(title.chars().count() + 2)
        .div_ceil(2);
    let bar = "=".repeat(pad.max(2));
    format!("{bar} {title} {bar}\n{body}")
}

/// Pretty JSON with a trailing newline.
pub fn pretty_json(value: &Value) -> String {
    let mut text = serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
    text.push('\n');
    text
}

/// Seconds as a Go-style duration with zero tails dropped: `768h`, `1m30s`, `1h0m1s`, `0s`.
pub fn human_duration(secs: u64) -> String {
    let (hours, minutes, seconds) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    let full = if hours > 0 {
        format!("{hours}h{minutes}m{seconds}s")
    } else if minutes > 0 {
        format!("{minutes}m{seconds}s")
    } else {
        format!("{seconds}s")
    };
    let full = match full.strip_suffix("m0s") {
        Some(rest) if hours > 0 || minutes > 0 => format!("{rest}m"),
        _ => full,
    };
    match full.strip_suffix("h0m") {
        Some(rest) => format!("{rest}h"),
        None => full,
    }
}

/// Rows for an object's entries, sorted by key.
pub fn data_rows(data: &Map<String, Value>) -> Vec<(String, String)> {
    let mut rows: Vec<(String, String)> = data.iter().map(|(k, v)| (k.clone(), cell(v))).collect();
    rows.sort();
    rows
}

fn u64_field(value: &Value, key: &str) -> u64 {
    value.get(key).and_then(Value::as_u64).unwrap_or(0)
}

fn str_field<'a>(value: &'a Value, key: &str) -> &'a str {
    value.get(key).and_then(Value::as_str).unwrap_or("")
}

/// Rows describing a token, from an `auth` block (token create/renew, login).
pub fn auth_rows(auth: &Value) -> Vec<(String, String)> {
    let duration = match u64_field(auth, "lease_duration") {
        0 => "∞".to_string(),
        secs => human_duration(secs),
    };
    let list = |key: &str| cell(auth.get(key).unwrap_or(&Value::Array(Vec::new())));
    let mut rows = vec![
        ("token".into(), str_field(auth, "client_token").to_string()),
        (
            "token_accessor".into(),
            str_field(auth, "accessor").to_string(),
        ),
        ("token_duration".into(), duration),
        (
            "token_renewable".into(),
            cell(auth.get("renewable").unwrap_or(&Value::Bool(false))),
        ),
        ("token_policies".into(), list("token_policies")),
        ("identity_policies".into(), list("identity_policies")),
        ("policies".into(), list("policies")),
    ];
    if let Some(meta) = auth.get("metadata").and_then(Value::as_object) {
        for (key, value) in data_rows(meta) {
            rows.push((format!("token_meta_{key}"), value));
        }
    }
    rows
}

/// Rows for a whole response the way `vault read` shows it: lease, auth, data, wrap info.
pub fn secret_rows(response: &Value) -> Vec<(String, String)> {
    let mut rows = Vec::new();
    let lease_secs = u64_field(response, "lease_duration");
    if lease_secs > 0 {
        let lease_id = str_field(response, "lease_id");
        if lease_id.is_empty() {
            rows.push(("refresh_interval".into(), human_duration(lease_secs)));
        } else {
            rows.push(("lease_id".into(), lease_id.to_string()));
            rows.push(("lease_duration".into(), human_duration(lease_secs)));
            let renewable = response.get("renewable").unwrap_or(&Value::Bool(false));
            rows.push(("lease_renewable".into(), cell(renewable)));
        }
    }
    if let Some(auth) = response.get("auth").filter(|a| a.is_object()) {
        rows.extend(auth_rows(auth));
    }
    if let Some(data) = response.get("data").and_then(Value::as_object) {
        rows.extend(data_rows(data));
    }
    if let Some(wrap) = wrap_info(response) {
        rows.extend(wrap_rows(wrap));
    }
    rows
}

/// The `wrap_info` of a response the server wrapped (`X-Vault-Wrap-TTL`); `None` when it is
/// absent or `null`.
pub fn wrap_info(response: &Value) -> Option<&Value> {
    response.get("wrap_info").filter(|w| w.is_object())
}

fn wrap_rows(wrap: &Value) -> Vec<(String, String)> {
    let mut rows = vec![
        (
            "wrapping_token:".into(),
            str_field(wrap, "token").to_string(),
        ),
        (
            "wrapping_accessor:".into(),
            str_field(wrap, "accessor").to_string(),
        ),
        (
            "wrapping_token_ttl:".into(),
            human_duration(u64_field(wrap, "ttl")),
        ),
        (
            "wrapping_token_creation_time:".into(),
            str_field(wrap, "creation_time").to_string(),
        ),
        (
            "wrapping_token_creation_path:".into(),
            str_field(wrap, "creation_path").to_string(),
        ),
    ];
    let wrapped_accessor = str_field(wrap, "wrapped_accessor");
    if !wrapped_accessor.is_empty() {
        rows.push(("wrapped_accessor:".into(), wrapped_accessor.to_string()));
    }
    rows
}

/// The `warnings` of a response as a block for stderr, if there are any.
pub fn warnings(response: &Value) -> Option<String> {
    let list = response.get("warnings")?.as_array()?;
    if list.is_empty() {
        return None;
    }
    let mut out = String::from("WARNING! The following warnings were returned from the server:\n");
    for warning in list {
        out.push_str(&format!("\n  * {}\n", raw(warning)));
    }
    Some(out)
}

/// What [`print_response`] writes to stdout (kept apart from the writing for tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rendered {
    /// Nothing: a table with no rows (an empty response).
    Nothing,
    /// A table or JSON document, printed with a final newline.
    Text(String),
    /// A `-field` value, printed raw (see [`emit_raw`]).
    Field(String),
}

/// How [`print_response`] shows a response: the value of `field`, pretty JSON of the whole
/// response, or the Key/Value table of [`secret_rows`] (which for a wrapped response holds the
/// wrap info).
pub fn render_response(
    format: Format,
    response: &Value,
    field: Option<&str>,
) -> Result<Rendered, CliError> {
    if let Some(name) = field {
        return field_value(&secret_rows_raw(response), name).map(Rendered::Field);
    }
    Ok(match format {
        Format::Json => Rendered::Text(pretty_json(response)),
        Format::Table => {
            let rows = secret_rows(response);
            if rows.is_empty() {
                Rendered::Nothing
            } else {
                Rendered::Text(key_value_table(&rows))
            }
        }
    })
}

/// How a wrapped response is shown; `None` when the server did not wrap it. See
/// [`print_if_wrapped`].
pub fn render_wrapped(
    format: Format,
    response: &Value,
    field: Option<&str>,
) -> Result<Option<Rendered>, CliError> {
    if wrap_info(response).is_none() {
        return Ok(None);
    }
    render_response(format, response, field).map(Some)
}

/// The one place wrapped responses are handled. Every command that renders a response with
/// its own layout calls this first; [`print_response`] does the same through
/// [`secret_rows`]. When the server wrapped the response (`-wrap-ttl`, `VAULT_WRAP_TTL`) the
/// secret itself is not in it, so, as with Vault's CLI, this prints the wrap info table
/// (`wrapping_token:` ...), the whole response (`-format=json`) or one of its fields
/// (`-field=wrapping_token`) and returns `true`: the command must print nothing else. For an
/// unwrapped response it prints nothing and returns `false`.
pub fn print_if_wrapped(
    format: Format,
    response: &Value,
    field: Option<&str>,
) -> Result<bool, CliError> {
    match render_wrapped(format, response, field)? {
        Some(rendered) => {
            write_rendered(format, response, field, &rendered)?;
            Ok(true)
        }
        None => Ok(false),
    }
}

/// Prints a response: one raw field, pretty JSON, or a table (warnings go to stderr). A
/// wrapped response shows its wrap info.
pub fn print_response(
    format: Format,
    response: &Value,
    field: Option<&str>,
) -> Result<(), CliError> {
    let rendered = render_response(format, response, field)?;
    write_rendered(format, response, field, &rendered)
}

fn write_rendered(
    format: Format,
    response: &Value,
    field: Option<&str>,
    rendered: &Rendered,
) -> Result<(), CliError> {
    if field.is_none() && format == Format::Table {
        print_warnings(response);
    }
    match rendered {
        Rendered::Nothing => Ok(()),
        Rendered::Text(text) => emit(text),
        Rendered::Field(value) => emit_raw(value),
    }
}

/// Like [`secret_rows`] but with data values in their `-field` form (empty strings kept).
fn secret_rows_raw(response: &Value) -> Vec<(String, String)> {
    let mut rows = secret_rows(response);
    if let Some(data) = response.get("data").and_then(Value::as_object) {
        for (key, value) in data {
            if let Some(row) = rows.iter_mut().find(|(k, _)| k == key) {
                row.1 = raw(value);
            }
        }
    }
    rows
}

/// The value of `name` in `rows`; a trailing `:` on a key is ignored (`wrapping_token:`).
pub fn field_value(rows: &[(String, String)], name: &str) -> Result<String, CliError> {
    rows.iter()
        .find(|(key, _)| key.trim_end_matches(':') == name)
        .map(|(_, value)| value.clone())
        .ok_or_else(|| CliError::Invalid(format!("Field \"{name}\" not present in secret")))
}

/// Prints the value of `name` from `rows` with no decoration.
pub fn print_field(rows: &[(String, String)], name: &str) -> Result<(), CliError> {
    emit_raw(&field_value(rows, name)?)
}

/// Prints warnings from a response to stderr.
pub fn print_warnings(response: &Value) {
    if let Some(text) = warnings(response) {
        emit_err(&text);
    }
}

/// Writes `text` to stdout, adding a final newline if it lacks one. A closed pipe
/// (`bunker list | head -1`) is not an error.
pub fn emit(text: &str) -> Result<(), CliError> {
    if text.ends_with('\n') {
        write_stdout(text)
    } else {
        write_stdout(&format!("{text}\n"))
    }
}

/// Writes `text` as is; a newline is added only when stdout is a terminal, so that
/// `$(bunker read -field=x ...)` gets exactly the value.
pub fn emit_raw(text: &str) -> Result<(), CliError> {
    if std::io::stdout().is_terminal() {
        write_stdout(&format!("{text}\n"))
    } else {
        write_stdout(text)
    }
}

/// A byte count for people: `512 B`, `5.2 MiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    match (unit, UNITS.get(unit)) {
        (0, _) | (_, None) => format!("{n} B"),
        (_, Some(u)) => format!("{value:.1} {u}"),
    }
}

/// Writes `text` exactly as is (a progress line rewritten in place with `\r`).
pub fn emit_inline(text: &str) -> Result<(), CliError> {
    write_stdout(text)
}

fn write_stdout(text: &str) -> Result<(), CliError> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.map_err(|e| CliError::io("writing to stdout", e)),
    }
}

/// Writes a line to stderr; failures to write there are ignored (nowhere left to report).
pub fn emit_err(text: &str) {
    let mut stderr = std::io::stderr().lock();
    let _ = stderr.write_all(text.as_bytes());
    if !text.ends_with('\n') {
        let _ = stderr.write_all(b"\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn table_aligns_columns() {
        let rows = vec![
            ("a".to_string(), "1".to_string()),
            ("longer_key".to_string(), "two".to_string()),
        ];
        assert_eq!(
            key_value_table(&rows),
            "Key           Value\n\
             ---           -----\n\
             a             1\n\
             longer_key    two\n"
        );
    }

    #[test]
    fn multi_column_table_pads_all_but_last() {
        let rows = vec![vec!["secret/".into(), "kv".into(), "".into()]];
        assert_eq!(
            columns(&["Path", "Type", "Description"], &rows),
            "Path       Type    Description\n----       ----    -----------\nsecret/    kv\n"
        );
    }

    #[test]
    fn cells_render_vault_style() {
        assert_eq!(cell(&json!("")), "n/a");
        assert_eq!(cell(&json!(null)), "<nil>");
        assert_eq!(cell(&json!(["default", "root"])), r#"["default","root"]"#);
        assert_eq!(cell(&json!({"a": 1})), r#"{"a":1}"#);
        assert_eq!(cell(&json!(false)), "false");
        assert_eq!(raw(&json!("")), "");
    }

    #[test]
    fn durations_drop_zero_tails() {
        assert_eq!(human_duration(0), "0s");
        assert_eq!(human_duration(45), "45s");
        assert_eq!(human_duration(60), "1m");
        assert_eq!(human_duration(90), "1m30s");
        assert_eq!(human_duration(3600), "1h");
        assert_eq!(human_duration(3660), "1h1m");
        assert_eq!(human_duration(3601), "1h0m1s");
        assert_eq!(human_duration(2_764_800), "768h");
    }

    #[test]
    fn secret_rows_sort_data_and_show_lease() {
        let response = json!({
            "lease_id": "", "lease_duration": 2764800, "renewable": false,
            "data": {"zeta": "z", "alpha": "", "n": 3}, "auth": null, "wrap_info": null
        });
        assert_eq!(
            secret_rows(&response),
            vec![
                ("refresh_interval".to_string(), "768h".to_string()),
                ("alpha".to_string(), "n/a".to_string()),
                ("n".to_string(), "3".to_string()),
                ("zeta".to_string(), "z".to_string()),
            ]
        );
        let raw_rows = secret_rows_raw(&response);
        assert!(raw_rows.contains(&("alpha".to_string(), String::new())));
    }

    #[test]
    fn auth_rows_show_token_fields() {
        let auth = json!({
            "client_token": "hvs.abc", "accessor": "acc", "lease_duration": 0,
            "renewable": false, "policies": ["root"], "token_policies": ["root"],
            "metadata": {"user": "ann"}
        });
        let rows = auth_rows(&auth);
        assert_eq!(
            rows.first(),
            Some(&("token".to_string(), "hvs.abc".to_string()))
        );
        assert!(rows.contains(&("token_duration".to_string(), "∞".to_string())));
        assert!(rows.contains(&("token_policies".to_string(), r#"["root"]"#.to_string())));
        assert!(rows.contains(&("identity_policies".to_string(), "[]".to_string())));
        assert!(rows.contains(&("token_meta_user".to_string(), "ann".to_string())));
    }

    #[test]
    fn section_banner_wraps_title() {
        let body = key_value_table(&[("passcode".into(), "x".into())]);
        assert_eq!(
            section("Data", &body),
            format!("====== Data ======\n{body}")
        );
        let body = key_value_table(&[("custom_metadata".into(), "x".into())]);
        assert!(section("Metadata", &body).starts_with("======= Metadata =======\nKey "));
        assert_eq!(section("Secret Path", ""), "== Secret Path ==\n");
    }

    fn wrapped_kv_read() -> Value {
        json!({
            "request_id": "r1", "lease_id": "", "renewable": false, "lease_duration": 0,
            "data": null, "auth": null, "warnings": null, "mount_type": "",
            "wrap_info": {
                "token": "hvs.wrap", "accessor": "wacc", "ttl": 120,
                "creation_time": "2026-01-02T03:04:05Z",
                "creation_path": "secret/data/hello"
            }
        })
    }

    #[test]
    fn wrapped_responses_show_the_wrap_info_table() -> Result<(), CliError> {
        let rendered = render_wrapped(Format::Table, &wrapped_kv_read(), None)?;
        assert_eq!(
            rendered,
            Some(Rendered::Text(
                "Key                              Value\n\
                 ---                              -----\n\
                 wrapping_token:                  hvs.wrap\n\
                 wrapping_accessor:               wacc\n\
                 wrapping_token_ttl:              2m\n\
                 wrapping_token_creation_time:    2026-01-02T03:04:05Z\n\
                 wrapping_token_creation_path:    secret/data/hello\n"
                    .to_string()
            ))
        );
        Ok(())
    }

    #[test]
    fn wrapped_responses_print_whole_in_json_and_by_field() -> Result<(), CliError> {
        let response = wrapped_kv_read();
        let Some(Rendered::Text(json)) = render_wrapped(Format::Json, &response, None)? else {
            panic!("no JSON text");
        };
        assert_eq!(
            serde_json::from_str::<Value>(&json).ok(),
            Some(response.clone())
        );
        for format in [Format::Table, Format::Json] {
            assert_eq!(
                render_wrapped(format, &response, Some("wrapping_token"))?,
                Some(Rendered::Field("hvs.wrap".into()))
            );
            assert_eq!(
                render_wrapped(format, &response, Some("wrapping_token_creation_path"))?,
                Some(Rendered::Field("secret/data/hello".into()))
            );
        }
        // The secret is not in a wrapped response: its keys are not fields.
        assert!(render_wrapped(Format::Table, &response, Some("foo")).is_err());
        Ok(())
    }

    #[test]
    fn wrapped_token_create_shows_the_wrapped_accessor() -> Result<(), CliError> {
        let mut response = wrapped_kv_read();
        if let Some(wrap) = response.get_mut("wrap_info").and_then(Value::as_object_mut) {
            wrap.insert("creation_path".into(), json!("auth/token/create"));
            wrap.insert("wrapped_accessor".into(), json!("tacc"));
        }
        let Some(Rendered::Text(table)) = render_wrapped(Format::Table, &response, None)? else {
            panic!("no table");
        };
        assert!(table.contains("wrapping_token_creation_path:    auth/token/create\n"));
        assert!(
            table.ends_with("wrapped_accessor:                tacc\n"),
            "{table}"
        );
        assert!(!table.contains("token_policies"), "{table}");
        Ok(())
    }

    #[test]
    fn unwrapped_responses_are_left_to_the_command() -> Result<(), CliError> {
        let plain = json!({"data": {"foo": "bar"}, "wrap_info": null});
        assert_eq!(render_wrapped(Format::Table, &plain, None)?, None);
        assert_eq!(render_wrapped(Format::Json, &plain, Some("foo"))?, None);
        assert_eq!(
            render_wrapped(Format::Table, &json!({"data": {}}), None)?,
            None
        );
        assert_eq!(render_wrapped(Format::Table, &Value::Null, None)?, None);
        assert_eq!(
            render_response(Format::Table, &plain, Some("foo"))?,
            Rendered::Field("bar".into())
        );
        Ok(())
    }

    #[test]
    fn empty_responses_render_nothing_in_tables() -> Result<(), CliError> {
        assert_eq!(
            render_response(Format::Table, &Value::Null, None)?,
            Rendered::Nothing
        );
        assert!(render_response(Format::Table, &Value::Null, Some("ttl")).is_err());
        Ok(())
    }

    #[test]
    fn warnings_are_listed() {
        assert!(warnings(&json!({"warnings": null})).is_none());
        let text = warnings(&json!({"warnings": ["careful"]}));
        assert!(text.is_some_and(|t| t.contains("* careful")));
    }
}
