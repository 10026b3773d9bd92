//! `bunker operator replication ...`: the DR replication flow over `sys/replication/dr/*`.
//!
//! Vault has no CLI for replication (operators use `vault write sys/replication/dr/...`, which
//! keeps working here too); these commands are readable wrappers over the same endpoints:
//! `status`, `primary ...` on the cluster that serves clients, `secondary ...` on its standby,
//! `reindex` and `merkle-check` on either.

mod index;
mod primary;
mod secondary;
mod status;
mod wait;

use clap::Subcommand;
use serde_json::{Map, Value};

use super::{CmdResult, Ctx};
use crate::client::{ApiRequest, Verb};
use crate::error::{CliError, Doing};

/// `bunker operator replication <command>`
#[derive(Subcommand, Debug)]
pub(crate) enum ReplicationCommand {
    /// Show this cluster's DR replication status, including lag in WAL entries and ms.
    Status,
    /// Run this cluster as the DR primary: enable, demote, disable, issue and revoke tokens.
    #[command(subcommand)]
    Primary(primary::PrimaryCommand),
    /// Run this cluster as a DR secondary: enable, promote, re-point, operation tokens.
    #[command(subcommand)]
    Secondary(secondary::SecondaryCommand),
    /// Recompute the Merkle index from the whole keyspace and replace it, showing progress
    /// (sudo on a primary; a DR operation token on a secondary).
    Reindex(index::IndexArgs),
    /// Compare the Merkle index with the whole keyspace, changing nothing.
    MerkleCheck(index::IndexArgs),
}

pub(crate) fn run(ctx: &Ctx, command: ReplicationCommand) -> CmdResult {
    match command {
        ReplicationCommand::Status => status::run(ctx),
        ReplicationCommand::Primary(command) => primary::run(ctx, command),
        ReplicationCommand::Secondary(command) => secondary::run(ctx, command),
        ReplicationCommand::Reindex(args) => index::run(ctx, index::IndexCommand::Reindex, &args),
        ReplicationCommand::MerkleCheck(args) => {
            index::run(ctx, index::IndexCommand::MerkleCheck, &args)
        }
    }
}

/// The API path of a DR endpoint: `sys/replication/dr/` + `endpoint`.
fn dr_path(endpoint: &str) -> String {
    format!("sys/replication/dr/{endpoint}")
}

/// PUTs `body` to a DR endpoint and returns the response body (`None` for 204). Responses are
/// never wrapped: `-wrap-ttl` would hide activation tokens and progress alike.
fn put(
    ctx: &Ctx,
    endpoint: &str,
    body: Map<String, Value>,
    doing: &str,
) -> Result<Option<Value>, CliError> {
    let request = ApiRequest::new(Verb::Put, dr_path(endpoint))
        .json(&Value::Object(body))
        .without_wrapping();
    Ok(ctx.client()?.send(request).doing(doing)?.body)
}

/// Adds `key: value` to a request body when the flag was given with a non-empty value (the
/// server treats absent and empty alike, and absent keeps `bunker write` bodies comparable).
fn insert_given(body: &mut Map<String, Value>, key: &str, value: Option<&str>) {
    if let Some(value) = value.filter(|v| !v.is_empty()) {
        body.insert(key.to_string(), Value::String(value.to_string()));
    }
}

/// The object holding a response's fields: `data`, or the body itself when the server put
/// them at the top level only.
fn response_data(body: &Value) -> &Value {
    body.get("data").filter(|d| d.is_object()).unwrap_or(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn given_flags_only_are_sent() {
        let mut body = Map::new();
        insert_given(&mut body, "a", Some("x"));
        insert_given(&mut body, "b", Some(""));
        insert_given(&mut body, "c", None);
        assert_eq!(Value::Object(body), json!({"a": "x"}));
    }

    #[test]
    fn fields_come_from_data_or_the_top_level() {
        let nested = json!({"mode": "outer", "data": {"mode": "primary"}});
        assert_eq!(response_data(&nested)["mode"], "primary");
        let top = json!({"mode": "secondary", "data": null});
        assert_eq!(response_data(&top)["mode"], "secondary");
    }

    #[test]
    fn paths_are_under_sys_replication_dr() {
        assert_eq!(
            dr_path("primary/enable"),
            "sys/replication/dr/primary/enable"
        );
    }
}
