//! `bunker operator replication status`: GET `sys/replication/dr/status` as a table.
//!
//! A primary shows its replication set and a table of the secondaries streaming from it; a
//! secondary shows where it follows from, how far behind it is (in WAL entries and in ms) and
//! how much it has synced.

use serde_json::Value;

use super::{dr_path, response_data};
use crate::client::{ApiRequest, Verb};
use crate::commands::{CmdResult, Ctx};
use crate::error::{Doing, EXIT_OK};
use crate::output::{self, cell, Format};

pub(super) fn run(ctx: &Ctx) -> CmdResult {
    let request = ApiRequest::new(Verb::Get, dr_path("status")).without_wrapping();
    let body = ctx
        .client()?
        .send(request)
        .doing("reading DR replication status")?
        .body
        .unwrap_or(Value::Null);
    match ctx.format() {
        Format::Json => output::emit(&output::pretty_json(&body))?,
        Format::Table => output::emit(&status_text(response_data(&body)))?,
    }
    Ok(EXIT_OK)
}

/// The table view of a status for any mode.
fn status_text(status: &Value) -> String {
    match status.get("mode").and_then(Value::as_str) {
        Some("primary") => {
            let table = output::key_value_table(&primary_rows(status));
            format!("{table}\n{}", secondaries_section(status))
        }
        Some("secondary") => output::key_value_table(&secondary_rows(status)),
        _ => output::key_value_table(&[("Mode".to_string(), field(status, &["mode"]))]),
    }
}

/// The value at `path` as a table cell, `n/a` when missing.
fn field(value: &Value, path: &[&str]) -> String {
    path.iter()
        .try_fold(value, |v, key| v.get(key))
        .map(cell)
        .unwrap_or_else(|| "n/a".to_string())
}

/// Rows labelled by `(label, path)` pairs.
fn labelled(status: &Value, labels: &[(&str, &[&str])]) -> Vec<(String, String)> {
    labels
        .iter()
        .map(|(label, path)| (label.to_string(), field(status, path)))
        .collect()
}

fn primary_rows(status: &Value) -> Vec<(String, String)> {
    labelled(
        status,
        &[
            ("Mode", &["mode"]),
            ("Cluster ID", &["cluster_id"]),
            ("Generation", &["generation"]),
            ("State", &["state"]),
            ("Last WAL", &["last_wal"]),
            ("Merkle Root", &["merkle_root"]),
            ("Known Secondaries", &["known_secondaries"]),
        ],
    )
}

/// The secondaries a primary has seen, one row each, under a `Secondaries` banner (a fixed one:
/// [`output::section`] sizes its banner for two-column tables).
fn secondaries_section(status: &Value) -> String {
    const BANNER: &str = "== Secondaries ==\n";
    const COLUMNS: [(&str, &str); 5] = [
        ("Node ID", "node_id"),
        ("Connection Status", "connection_status"),
        ("Last Acked WAL", "last_acked_wal"),
        ("Lag (WAL entries)", "lag_wal_entries"),
        ("Last Heartbeat", "last_heartbeat"),
    ];
    let secondaries = status
        .get("secondaries")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    if secondaries.is_empty() {
        return format!("{BANNER}No secondary has connected.\n");
    }
    let headers: Vec<&str> = COLUMNS.iter().map(|(header, _)| *header).collect();
    let rows: Vec<Vec<String>> = secondaries
        .iter()
        .map(|s| COLUMNS.iter().map(|(_, key)| field(s, &[key])).collect())
        .collect();
    format!("{BANNER}{}", output::columns(&headers, &rows))
}

fn secondary_rows(status: &Value) -> Vec<(String, String)> {
    labelled(
        status,
        &[
            ("Mode", &["mode"]),
            ("Cluster ID", &["cluster_id"]),
            ("Secondary ID", &["secondary_id"]),
            ("Primary Cluster Addr", &["primary_cluster_addr"]),
            ("State", &["state"]),
            ("Connection State", &["connection_state"]),
            ("Last Remote WAL", &["last_remote_wal"]),
            ("Last Primary WAL", &["last_primary_wal"]),
            ("Lag (WAL entries)", &["lag_wal_entries"]),
            ("Lag (ms)", &["lag_ms"]),
            ("Merkle Root", &["merkle_root"]),
            ("Last Error", &["last_error"]),
            ("Merkle Syncs", &["sync", "merkle_syncs"]),
            (
                "Last Merkle Sync Keys Fetched",
                &["sync", "last_merkle_sync", "keys_fetched"],
            ),
            (
                "Last Merkle Sync Keys Deleted",
                &["sync", "last_merkle_sync", "keys_deleted"],
            ),
            (
                "Last Merkle Sync Bytes Fetched",
                &["sync", "last_merkle_sync", "bytes_fetched"],
            ),
            ("WAL Entries Streamed", &["sync", "wal_entries_streamed"]),
            ("WAL Bytes Streamed", &["sync", "wal_bytes_streamed"]),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A primary's status as `status_json.rs` builds it.
    fn primary_status() -> Value {
        json!({
            "mode": "primary",
            "cluster_id": "0b6e-set",
            "generation": 1,
            "state": "running",
            "known_secondaries": ["dr-b", "dr-c"],
            "secondaries": [
                {
                    "node_id": "dr-b", "api_address": "http://127.0.0.1:8210",
                    "cluster_address": "127.0.0.1:8211", "connection_status": "connected",
                    "last_heartbeat": "2025-01-01T00:00:05.000Z",
                    "last_heartbeat_duration_ms": "120", "clock_skew_ms": "0",
                    "replication_primary_canary_age_ms": "0",
                    "last_acked_wal": 41, "lag_wal_entries": 1
                },
                {
                    "node_id": "dr-c", "connection_status": "disconnected",
                    "last_heartbeat": "", "last_acked_wal": 0, "lag_wal_entries": 42
                }
            ],
            "last_wal": 42,
            "last_dr_wal": 42,
            "merkle_root": "9f2c",
            "corrupted_merkle_tree": false,
            "primary_cluster_addr": "127.0.0.1:8201",
        })
    }

    /// A secondary's status as `status_json.rs` builds it.
    fn secondary_status() -> Value {
        json!({
            "mode": "secondary",
            "cluster_id": "0b6e-set",
            "generation": 1,
            "secondary_id": "dr-b",
            "primary_cluster_addr": "127.0.0.1:8201",
            "known_primary_cluster_addrs": ["127.0.0.1:8201"],
            "last_remote_wal": 40,
            "last_primary_wal": 42,
            "lag_wal_entries": 2,
            "lag_ms": 35,
            "merkle_root": "77aa",
            "state": "stream-wals",
            "connection_state": "ready",
            "last_start": "1735689600000",
            "last_error": "",
            "primaries": [],
            "sync": {
                "merkle_syncs": 1,
                "last_merkle_sync": {
                    "buckets_differing": 3, "keys_fetched": 12,
                    "keys_deleted": 4, "bytes_fetched": 2048
                },
                "merkle_keys_fetched_total": 12,
                "merkle_bytes_fetched_total": 2048,
                "wal_entries_streamed": 30,
                "wal_bytes_streamed": 9000
            }
        })
    }

    #[test]
    fn primary_table_lists_the_set_and_its_secondaries() {
        assert_eq!(
            status_text(&primary_status()),
            "\
Key                  Value
---                  -----
Mode                 primary
Cluster ID           0b6e-set
Generation           1
State                running
Last WAL             42
Merkle Root          9f2c
Known Secondaries    [\"dr-b\",\"dr-c\"]

== Secondaries ==
Node ID    Connection Status    Last Acked WAL    Lag (WAL entries)    Last Heartbeat
-------    -----------------    --------------    -----------------    --------------
dr-b       connected            41                1                    2025-01-01T00:00:05.000Z
dr-c       disconnected         0                 42                   n/a
"
        );
    }

    #[test]
    fn primary_without_secondaries_says_so() {
        let mut status = primary_status();
        status["secondaries"] = json!([]);
        status["known_secondaries"] = json!([]);
        let text = status_text(&status);
        assert!(text.contains("Known Secondaries    []\n"));
        assert!(text.ends_with("== Secondaries ==\nNo secondary has connected.\n"));
    }

    #[test]
    fn secondary_table_shows_lag_in_entries_and_ms_and_sync_counters() {
        assert_eq!(
            status_text(&secondary_status()),
            "\
Key                               Value
---                               -----
Mode                              secondary
Cluster ID                        0b6e-set
Secondary ID                      dr-b
Primary Cluster Addr              127.0.0.1:8201
State                             stream-wals
Connection State                  ready
Last Remote WAL                   40
Last Primary WAL                  42
Lag (WAL entries)                 2
Lag (ms)                          35
Merkle Root                       77aa
Last Error                        n/a
Merkle Syncs                      1
Last Merkle Sync Keys Fetched     12
Last Merkle Sync Keys Deleted     4
Last Merkle Sync Bytes Fetched    2048
WAL Entries Streamed              30
WAL Bytes Streamed                9000
"
        );
    }

    #[test]
    fn missing_fields_show_not_available() {
        let status = json!({"mode": "secondary", "state": "idle"});
        let rows = secondary_rows(&status);
        assert!(rows.contains(&("State".to_string(), "idle".to_string())));
        assert!(rows.contains(&("Lag (ms)".to_string(), "n/a".to_string())));
        assert!(rows.contains(&("WAL Bytes Streamed".to_string(), "n/a".to_string())));
    }

    #[test]
    fn disabled_shows_only_the_mode() {
        assert_eq!(
            status_text(&json!({"mode": "disabled"})),
            "Key     Value\n---     -----\nMode    disabled\n"
        );
    }

    #[test]
    fn the_full_response_envelope_is_read_from_data() {
        let envelope = json!({
            "request_id": "r", "mode": "secondary", "data": secondary_status(),
            "warnings": null
        });
        assert!(
            status_text(response_data(&envelope)).contains("Lag (ms)                          35")
        );
    }
}
