//! `-wait` on `secondary enable` and `update-primary`: follow the secondary's `dr/status` until
//! it streams WALs, showing the sync's progress (`sync_progress`): one line rewritten in place
//! on a terminal, a new line each time it changes otherwise (logs, CI).

use std::io::IsTerminal as _;
use std::time::Duration;

use serde_json::Value;

use crate::client::{ApiRequest, Verb};
use crate::commands::{CmdResult, Ctx};
use crate::error::Doing as _;
use crate::output;

const POLL: Duration = Duration::from_millis(500);

pub(super) fn until_streaming(ctx: &Ctx) -> CmdResult {
    let client = ctx.client()?;
    let terminal = std::io::stdout().is_terminal();
    let mut shown = String::new();
    loop {
        let body = client
            .send(ApiRequest::new(Verb::Get, "sys/replication/dr/status").without_wrapping())
            .doing("reading the DR status")?
            .body
            .unwrap_or(Value::Null);
        let status = body.get("data").unwrap_or(&body);
        if status.get("state").and_then(Value::as_str) == Some("stream-wals") {
            if terminal && !shown.is_empty() {
                output::emit("")?;
            }
            let wal = status
                .get("last_remote_wal")
                .cloned()
                .unwrap_or(Value::Null);
            return output::emit(&format!(
                "Success! The secondary streams WALs from the primary (WAL index {wal})."
            ))
            .map(|()| crate::error::EXIT_OK);
        }
        let line = progress_line(status);
        if terminal {
            output::emit_inline(&format!("\r\x1b[2K{line}"))?;
        } else if line != shown {
            output::emit(&line)?;
        }
        shown = line;
        std::thread::sleep(POLL);
    }
}

/// One line for a secondary's status: its state, and the running sync's figures.
pub(super) fn progress_line(status: &Value) -> String {
    let text = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or("").to_owned();
    let num = |v: Option<&Value>| v.and_then(Value::as_u64).unwrap_or(0);
    let state = text(status.get("state"));
    let Some(p) = status.get("sync_progress").filter(|p| !p.is_null()) else {
        let error = text(status.get("last_error"));
        let connection = text(status.get("connection_state"));
        return if error.is_empty() {
            format!("{state} ({connection})")
        } else {
            format!("{state} ({connection}): {error}")
        };
    };
    let mut line = format!(
        "{state}: {} sync, {} keys, {}, {} keys/s",
        text(p.get("kind")),
        num(p.get("keys_fetched")),
        output::human_bytes(num(p.get("bytes_fetched"))),
        num(p.get("keys_per_second")),
    );
    if let Some(percent) = p.get("percent").and_then(Value::as_u64) {
        line.push_str(&format!(", {percent}%"));
    }
    if let Some(eta) = p.get("eta_seconds").and_then(Value::as_u64) {
        line.push_str(&format!(", ETA {eta}s"));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn progress_lines_show_state_figures_and_eta() {
        let syncing = json!({"state": "merkle-sync", "sync_progress": {
            "kind": "snapshot", "keys_fetched": 120000, "bytes_fetched": 5_452_595,
            "keys_per_second": 40000, "percent": 12, "eta_seconds": 22}});
        assert_eq!(
            progress_line(&syncing),
            "merkle-sync: snapshot sync, 120000 keys, 5.2 MiB, 40000 keys/s, 12%, ETA 22s"
        );
        let unknown = json!({"state": "merkle-sync", "sync_progress": {
            "kind": "snapshot", "keys_fetched": 3, "bytes_fetched": 10,
            "keys_per_second": 1, "percent": null, "eta_seconds": null}});
        assert_eq!(
            progress_line(&unknown),
            "merkle-sync: snapshot sync, 3 keys, 10 B, 1 keys/s"
        );
        let waiting = json!({"state": "connecting", "connection_state": "transient_failure",
            "last_error": "connection refused", "sync_progress": null});
        assert_eq!(
            progress_line(&waiting),
            "connecting (transient_failure): connection refused"
        );
    }
}
