//! `bunker operator replication primary ...`: run this cluster as the DR primary.

use clap::{Args, Subcommand};
use serde_json::{Map, Value};

use super::{insert_given, put};
use crate::commands::{success, CmdResult, Ctx};
use crate::error::{CliError, EXIT_OK};
use crate::input::duration_flag;
use crate::output::{self, Format};

/// `bunker operator replication primary <command>`
#[derive(Subcommand, Debug)]
pub(crate) enum PrimaryCommand {
    /// Make this cluster the DR primary of a new replication set (new cluster id).
    Enable(EnableArgs),
    /// Turn this primary into a secondary that keeps its data and cluster id; point it at
    /// the new primary with `secondary update-primary`.
    Demote,
    /// Turn DR replication off here; secondaries can no longer connect.
    Disable,
    /// Issue an activation token for a new secondary; prints only the token.
    SecondaryToken(SecondaryTokenArgs),
    /// Disconnect a secondary now and refuse it until it gets a new activation token.
    RevokeSecondary(RevokeSecondaryArgs),
}

/// `primary enable [-primary-cluster-addr=ADDR]`
#[derive(Args, Debug)]
pub(crate) struct EnableArgs {
    /// Cluster address secondaries should dial, when this server's own cluster_address is
    /// not reachable from them (e.g. behind a TCP load balancer).
    #[arg(long, value_name = "ADDR")]
    primary_cluster_addr: Option<String>,
}

/// `primary secondary-token -id=ID [-ttl=30m]`
#[derive(Args, Debug)]
pub(crate) struct SecondaryTokenArgs {
    /// Unique name of the secondary, e.g. `us-east`; also used to revoke it.
    #[arg(long)]
    id: String,
    /// How long the activation token can be used [server default: 30m].
    #[arg(long, value_parser = duration_flag)]
    ttl: Option<String>,
}

/// `primary revoke-secondary -id=ID`
#[derive(Args, Debug)]
pub(crate) struct RevokeSecondaryArgs {
    /// The id the secondary's activation token was issued for.
    #[arg(long)]
    id: String,
}

pub(super) fn run(ctx: &Ctx, command: PrimaryCommand) -> CmdResult {
    match command {
        PrimaryCommand::Enable(args) => {
            put(
                ctx,
                "primary/enable",
                enable_body(&args),
                "enabling DR primary",
            )?;
            success(ctx, "Success! This cluster is now a DR primary.")
        }
        PrimaryCommand::Demote => {
            put(ctx, "primary/demote", Map::new(), "demoting DR primary")?;
            success(
                ctx,
                "Success! This cluster is now a DR secondary with no primary. Point it at the \
                 new primary with `bunker operator replication secondary update-primary`.",
            )
        }
        PrimaryCommand::Disable => {
            put(ctx, "primary/disable", Map::new(), "disabling DR primary")?;
            success(ctx, "Success! DR replication is disabled on this cluster.")
        }
        PrimaryCommand::SecondaryToken(args) => secondary_token(ctx, &args),
        PrimaryCommand::RevokeSecondary(args) => {
            let mut body = Map::new();
            body.insert("id".into(), Value::String(args.id.clone()));
            put(
                ctx,
                "primary/revoke-secondary",
                body,
                &format!("revoking DR secondary {}", args.id),
            )?;
            success(ctx, &format!("Success! Revoked DR secondary {}.", args.id))
        }
    }
}

fn enable_body(args: &EnableArgs) -> Map<String, Value> {
    let mut body = Map::new();
    insert_given(
        &mut body,
        "primary_cluster_addr",
        args.primary_cluster_addr.as_deref(),
    );
    body
}

fn secondary_token_body(args: &SecondaryTokenArgs) -> Map<String, Value> {
    let mut body = Map::new();
    body.insert("id".into(), Value::String(args.id.clone()));
    insert_given(&mut body, "ttl", args.ttl.as_deref());
    body
}

/// Prints the activation token alone (so `$(...)` captures it), or with `-format=json` the
/// whole response.
fn secondary_token(ctx: &Ctx, args: &SecondaryTokenArgs) -> CmdResult {
    let doing = format!("creating an activation token for DR secondary {}", args.id);
    let response = put(
        ctx,
        "primary/secondary-token",
        secondary_token_body(args),
        &doing,
    )?
    .unwrap_or(Value::Null);
    match ctx.format() {
        Format::Json => output::emit(&output::pretty_json(&response))?,
        Format::Table => {
            output::print_warnings(&response);
            let token = activation_token(&response).ok_or_else(|| {
                CliError::Invalid(format!(
                    "Error {doing}: the server's response has no wrap_info.token"
                ))
            })?;
            output::emit(token)?;
        }
    }
    Ok(EXIT_OK)
}

/// `wrap_info.token` of a secondary-token response.
fn activation_token(response: &Value) -> Option<&str> {
    response
        .get("wrap_info")?
        .get("token")?
        .as_str()
        .filter(|token| !token.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use serde_json::json;

    #[derive(Parser)]
    struct Wrapper {
        #[command(subcommand)]
        command: PrimaryCommand,
    }

    fn parse(argv: &[&str]) -> Result<PrimaryCommand, clap::Error> {
        let mut full = vec!["primary"];
        full.extend_from_slice(argv);
        Ok(crate::flags::parse::<Wrapper, _, _>(full)?.command)
    }

    #[test]
    fn enable_sends_the_cluster_addr_only_when_given() -> Result<(), clap::Error> {
        let PrimaryCommand::Enable(args) = parse(&["enable"])? else {
            panic!("not enable");
        };
        assert!(enable_body(&args).is_empty());
        let PrimaryCommand::Enable(args) =
            parse(&["enable", "--primary-cluster-addr=lb.internal:8201"])?
        else {
            panic!("not enable");
        };
        assert_eq!(
            Value::Object(enable_body(&args)),
            json!({"primary_cluster_addr": "lb.internal:8201"})
        );
        Ok(())
    }

    #[test]
    fn secondary_token_needs_an_id_and_checks_the_ttl() -> Result<(), clap::Error> {
        assert!(parse(&["secondary-token"]).is_err());
        assert!(parse(&["secondary-token", "--id=b", "--ttl=soon"]).is_err());
        let PrimaryCommand::SecondaryToken(args) = parse(&["secondary-token", "--id=b"])? else {
            panic!("not secondary-token");
        };
        assert_eq!(
            Value::Object(secondary_token_body(&args)),
            json!({"id": "b"})
        );
        let PrimaryCommand::SecondaryToken(args) =
            parse(&["secondary-token", "--id=us-east", "--ttl=600"])?
        else {
            panic!("not secondary-token");
        };
        assert_eq!(
            Value::Object(secondary_token_body(&args)),
            json!({"id": "us-east", "ttl": "600s"})
        );
        Ok(())
    }

    #[test]
    fn revoke_needs_an_id() {
        assert!(parse(&["revoke-secondary"]).is_err());
        assert!(parse(&["revoke-secondary", "--id=b"]).is_ok());
        assert!(parse(&["demote"]).is_ok());
        assert!(parse(&["disable"]).is_ok());
    }

    #[test]
    fn the_activation_token_is_taken_from_wrap_info() {
        let response = json!({
            "data": null,
            "wrap_info": {"token": "eyJhY3Rpdm", "accessor": "a", "ttl": 1800,
                          "creation_path": "sys/replication/dr/primary/secondary-token"}
        });
        assert_eq!(activation_token(&response), Some("eyJhY3Rpdm"));
        assert_eq!(activation_token(&json!({"wrap_info": null})), None);
        assert_eq!(activation_token(&json!({"wrap_info": {"token": ""}})), None);
    }
}
