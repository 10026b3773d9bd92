//! `bunker status`: seal status and HA state.
//!
//! Exit codes follow `vault status`: 0 unsealed, 2 sealed, 1 on any error (unlike other
//! commands, where remote errors exit 2).

use serde_json::Value;

use super::Ctx;
use crate::client::{ApiRequest, Client, Verb};
use crate::error::{CliError, Doing, EXIT_LOCAL, EXIT_OK, EXIT_REMOTE};
use crate::output::{self, cell, cell_or_na, Format};

/// Runs `bunker status`; never fails, the exit code says everything.
pub(crate) fn run(ctx: &Ctx) -> u8 {
    match status(ctx) {
        Ok(code) => code,
        Err(err) => {
            output::emit_err(&err.to_string());
            EXIT_LOCAL
        }
    }
}

fn status(ctx: &Ctx) -> Result<u8, CliError> {
    let client = ctx.client()?;
    let seal = fetch_seal_status(&client)?;
    let sealed = seal.get("sealed").and_then(Value::as_bool).unwrap_or(true);
    match ctx.format() {
        Format::Json => output::emit(&output::pretty_json(&seal))?,
        Format::Table => {
            let mut rows = seal_status_rows(&seal);
            if !sealed && seal.get("ha_enabled").is_none() {
                rows.extend(leader_rows(&client));
            }
            output::emit(&output::key_value_table(&rows))?;
        }
    }
    Ok(if sealed { EXIT_REMOTE } else { EXIT_OK })
}

/// GET sys/seal-status.
pub(crate) fn fetch_seal_status(client: &Client) -> Result<Value, CliError> {
    client
        .send(ApiRequest::new(Verb::Get, "sys/seal-status").without_wrapping())
        .doing("checking seal status")?
        .body
        .ok_or_else(|| CliError::Invalid("Error checking seal status: empty response".into()))
}

/// Table rows for a seal-status response, in `vault status` order. Unseal progress and nonce
/// are shown only while sealed.
pub(crate) fn seal_status_rows(seal: &Value) -> Vec<(String, String)> {
    let text = |key: &str| cell_or_na(seal, key);
    let mut rows = vec![
        ("Seal Type".to_string(), text("type")),
        ("Initialized".to_string(), text("initialized")),
        ("Sealed".to_string(), text("sealed")),
        ("Total Shares".to_string(), text("n")),
        ("Threshold".to_string(), text("t")),
    ];
    if seal.get("sealed").and_then(Value::as_bool).unwrap_or(true) {
        rows.push((
            "Unseal Progress".to_string(),
            format!("{}/{}", text("progress"), text("t")),
        ));
        rows.push(("Unseal Nonce".to_string(), text("nonce")));
    }
    rows.push(("Version".to_string(), text("version")));
    for (key, label) in [
        ("build_date", "Build Date"),
        ("storage_type", "Storage Type"),
        ("cluster_name", "Cluster Name"),
        ("cluster_id", "Cluster ID"),
        ("ha_enabled", "HA Enabled"),
    ] {
        if seal.get(key).is_some() {
            rows.push((label.to_string(), text(key)));
        }
    }
    rows
}

/// HA rows from GET sys/leader; empty if the server does not answer it.
fn leader_rows(client: &Client) -> Vec<(String, String)> {
    let leader = client
        .send(ApiRequest::new(Verb::Get, "sys/leader").without_wrapping())
        .ok()
        .and_then(|response| response.body);
    let Some(leader) = leader else {
        return Vec::new();
    };
    let ha_enabled = leader
        .get("ha_enabled")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let mut rows = vec![("HA Enabled".to_string(), ha_enabled.to_string())];
    if ha_enabled {
        let is_self = leader
            .get("is_self")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let mode = if is_self { "active" } else { "standby" };
        rows.push(("HA Mode".to_string(), mode.to_string()));
        if let Some(address) = leader.get("leader_address") {
            rows.push(("Active Node Address".to_string(), cell(address)));
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(rows: &[(String, String)]) -> Vec<&str> {
        rows.iter().map(|(k, _)| k.as_str()).collect()
    }

    #[test]
    fn sealed_status_shows_progress() {
        let seal = json!({
            "type": "shamir", "initialized": true, "sealed": true, "t": 3, "n": 5,
            "progress": 1, "nonce": "abc", "version": "0.1.0", "storage_type": "redb"
        });
        let rows = seal_status_rows(&seal);
        assert_eq!(
            labels(&rows),
            vec![
                "Seal Type",
                "Initialized",
                "Sealed",
                "Total Shares",
                "Threshold",
                "Unseal Progress",
                "Unseal Nonce",
                "Version",
                "Storage Type"
            ]
        );
        assert!(rows.contains(&("Unseal Progress".to_string(), "1/3".to_string())));
    }

    #[test]
    fn unsealed_status_hides_progress() {
        let seal = json!({
            "type": "shamir", "initialized": true, "sealed": false, "t": 1, "n": 1,
            "progress": 0, "nonce": "", "version": "0.1.0", "ha_enabled": false
        });
        let rows = seal_status_rows(&seal);
        assert!(!labels(&rows).contains(&"Unseal Progress"));
        assert!(rows.contains(&("HA Enabled".to_string(), "false".to_string())));
        assert!(rows.contains(&("Sealed".to_string(), "false".to_string())));
    }
}
