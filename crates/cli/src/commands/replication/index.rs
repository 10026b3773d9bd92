//! `bunker operator replication reindex` and `merkle-check`: the Merkle index of this cluster
//! (`sys/replication/reindex` and `merkle-check` with a sudo token on a primary;
//! `sys/replication/dr/secondary/...` with a DR operation token on a secondary).
//!
//! A reindex answers only once its scan of the keyspace is over: meanwhile the command shows
//! its progress from the replication status (`reindex_building_progress` of
//! `reindex_building_total`).

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::Args;
use serde_json::{Map, Value};

use super::{insert_given, response_data};
use crate::client::{ApiRequest, Verb};
use crate::commands::follow::{self, Follow};
use crate::commands::{emit_json_or_table, CmdResult, Ctx};
use crate::error::Doing as _;
use crate::output;

/// `reindex` / `merkle-check` flags.
#[derive(Args, Debug)]
pub(crate) struct IndexArgs {
    /// On a DR secondary: a DR operation token (its endpoints take no client token).
    #[arg(long)]
    dr_operation_token: Option<String>,
}

/// Which of the two.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum IndexCommand {
    Reindex,
    MerkleCheck,
}

impl IndexCommand {
    fn endpoint(self) -> &'static str {
        match self {
            IndexCommand::Reindex => "reindex",
            IndexCommand::MerkleCheck => "merkle-check",
        }
    }
}

/// The API path: under `dr/secondary/` when a DR operation token is given.
fn path(command: IndexCommand, args: &IndexArgs) -> String {
    match args.dr_operation_token {
        Some(_) => format!("sys/replication/dr/secondary/{}", command.endpoint()),
        None => format!("sys/replication/{}", command.endpoint()),
    }
}

pub(super) fn run(ctx: &Ctx, command: IndexCommand, args: &IndexArgs) -> CmdResult {
    let mut body = Map::new();
    insert_given(
        &mut body,
        "dr_operation_token",
        args.dr_operation_token.as_deref(),
    );
    let request = ApiRequest::new(Verb::Put, path(command, args))
        .json(&Value::Object(body))
        .without_wrapping();
    let client = ctx.client()?;
    let doing = match command {
        IndexCommand::Reindex => "reindexing the Merkle tree",
        IndexCommand::MerkleCheck => "checking the Merkle index",
    };
    let follow = Follow {
        status_path: "sys/replication/dr/status",
        line: reindex_line,
        begun: Arc::new(AtomicBool::new(true)),
    };
    let answer = follow::while_running(ctx.client()?, follow, || client.send(request))
        .doing(doing)?
        .body
        .unwrap_or(Value::Null);
    let report = response_data(&answer);
    emit_json_or_table(ctx, &answer, || {
        let rows = report
            .as_object()
            .map(output::data_rows)
            .unwrap_or_default();
        output::key_value_table(&rows)
    })
}

/// `reindex: 120000 of 1000000 entries (12%)` while a reindex runs, from the DR status.
fn reindex_line(status: &Value) -> Option<String> {
    if status.get("reindex_in_progress") != Some(&Value::Bool(true)) {
        return None;
    }
    let done = status
        .get("reindex_building_progress")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let mut line = format!("reindex: {done}");
    if let Some(total) = status
        .get("reindex_building_total")
        .and_then(Value::as_u64)
        .filter(|t| *t > 0)
    {
        line.push_str(&format!(
            " of {total} entries ({}%)",
            done.min(total) * 100 / total
        ));
    } else {
        line.push_str(" entries");
    }
    Some(line)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_path_follows_the_credential() {
        let primary = IndexArgs {
            dr_operation_token: None,
        };
        let secondary = IndexArgs {
            dr_operation_token: Some("t".into()),
        };
        assert_eq!(
            path(IndexCommand::Reindex, &primary),
            "sys/replication/reindex"
        );
        assert_eq!(
            path(IndexCommand::MerkleCheck, &secondary),
            "sys/replication/dr/secondary/merkle-check"
        );
    }

    #[test]
    fn a_running_reindex_shows_its_share_of_the_keyspace() {
        let running = json!({"reindex_in_progress": true, "reindex_building_progress": 250,
            "reindex_building_total": 1000});
        assert_eq!(
            reindex_line(&running).as_deref(),
            Some("reindex: 250 of 1000 entries (25%)")
        );
        let unknown = json!({"reindex_in_progress": true, "reindex_building_progress": 7,
            "reindex_building_total": 0});
        assert_eq!(
            reindex_line(&unknown).as_deref(),
            Some("reindex: 7 entries")
        );
        assert_eq!(reindex_line(&json!({"reindex_in_progress": false})), None);
    }
}
