//! `bunker operator replication secondary ...`: run this cluster as a DR secondary.
//!
//! A DR secondary refuses ordinary requests, so apart from `enable` these commands
//! authenticate with the primary's key shares or a DR operation token, not a client token.

use clap::{Args, Subcommand};
use serde_json::{Map, Value};

use super::{insert_given, put, response_data};
use crate::commands::generate_root::{self, CeremonyArgs, DR_OPERATION_TOKEN};
use crate::commands::{success, CmdResult, Ctx};
use crate::error::{CliError, EXIT_OK};
use crate::input::secret_arg;
use crate::output::{self, cell_or_na, Format};

/// `bunker operator replication secondary <command>`
#[derive(Subcommand, Debug)]
pub(crate) enum SecondaryCommand {
    /// Join a primary's replication set with an activation token. This wipes all of this
    /// cluster's data: afterwards it holds the primary's data, tokens and unseal keys.
    Enable(ActivationArgs),
    /// Make this secondary the DR primary, with a quorum of the primary's unseal key shares
    /// (one share per call, as positional KEY, `-key` or stdin) or a DR operation token.
    Promote(PromoteArgs),
    /// Point this secondary at a (new) primary without wiping it.
    UpdatePrimary(UpdatePrimaryArgs),
    /// Turn DR replication off on this secondary.
    Disable(OperationTokenArgs),
    /// Build a DR operation token from the primary's unseal key shares (the flags of
    /// `operator generate-root`).
    GenerateOperationToken(CeremonyArgs),
    /// Revoke a DR operation token.
    DeleteOperationToken(OperationTokenArgs),
}

/// How a secondary reaches its primary: `secondary enable` and `update-primary`.
#[derive(Args, Debug)]
pub(crate) struct ActivationArgs {
    /// Activation token from `primary secondary-token` on the primary.
    #[arg(long)]
    token: String,
    /// The primary's API address, instead of the one in the token (e.g. through a load
    /// balancer).
    #[arg(long, value_name = "URL")]
    primary_api_addr: Option<String>,
    /// PEM CA file that verifies the primary's API certificate; a path on the server.
    #[arg(long, value_name = "PATH")]
    ca_file: Option<String>,
    /// Directory of PEM CA files that verify the primary's API certificate; a path on the
    /// server.
    #[arg(long, value_name = "PATH")]
    ca_path: Option<String>,
    /// Follow the secondary until it streams WALs, showing the sync's progress (keys and
    /// bytes synced, rate, ETA).
    #[arg(long)]
    wait: bool,
}

/// `secondary update-primary -token=T -dr-operation-token=T ...`
#[derive(Args, Debug)]
pub(crate) struct UpdatePrimaryArgs {
    #[command(flatten)]
    activation: ActivationArgs,
    /// DR operation token (see `generate-operation-token`).
    #[arg(long)]
    dr_operation_token: String,
}

/// Commands authorised by a DR operation token alone.
#[derive(Args, Debug)]
pub(crate) struct OperationTokenArgs {
    /// DR operation token (see `generate-operation-token`).
    #[arg(long)]
    dr_operation_token: String,
}

/// `secondary promote [-key=KEY ... | -dr-operation-token=T | -reset] [-force] [KEY]`
#[derive(Args, Debug)]
pub(crate) struct PromoteArgs {
    /// One of the primary's unseal key shares (repeat to submit several in turn; `-` reads
    /// one from stdin).
    #[arg(
        long = "key",
        value_name = "KEY",
        conflicts_with = "dr_operation_token"
    )]
    keys: Vec<String>,
    /// Promote with a DR operation token instead of key shares.
    #[arg(long)]
    dr_operation_token: Option<String>,
    /// Promote even if the secondary has not caught up (unreplicated writes are lost).
    #[arg(long)]
    force: bool,
    /// Discard the key shares submitted so far.
    #[arg(long, conflicts_with_all = ["keys", "key", "dr_operation_token"])]
    reset: bool,
    /// Cluster address the promoted primary gives its secondaries (default: its own).
    #[arg(long, value_name = "ADDR")]
    primary_cluster_addr: Option<String>,
    /// A key share, as with `operator unseal`; read from stdin when absent or `-`.
    #[arg(value_name = "KEY", conflicts_with = "dr_operation_token")]
    key: Option<String>,
}

pub(super) fn run(ctx: &Ctx, command: SecondaryCommand) -> CmdResult {
    match command {
        SecondaryCommand::Enable(args) => {
            put(
                ctx,
                "secondary/enable",
                activation_body(&args),
                "enabling DR secondary",
            )?;
            success(
                ctx,
                "Success! This cluster is now a DR secondary; it is replacing its data with \
                 the primary's. Use the primary's tokens from now on, and its unseal keys \
                 after a restart.",
            )?;
            if args.wait {
                return super::wait::until_streaming(ctx);
            }
            Ok(EXIT_OK)
        }
        SecondaryCommand::Promote(args) => promote(ctx, &args),
        SecondaryCommand::UpdatePrimary(args) => {
            let mut body = activation_body(&args.activation);
            body.insert(
                "dr_operation_token".into(),
                Value::String(args.dr_operation_token),
            );
            put(
                ctx,
                "secondary/update-primary",
                body,
                "updating the DR secondary's primary",
            )?;
            let waiting = args.activation.wait;
            success(
                ctx,
                "Success! This DR secondary now follows the new primary.",
            )?;
            if waiting {
                return super::wait::until_streaming(ctx);
            }
            Ok(EXIT_OK)
        }
        SecondaryCommand::Disable(args) => {
            put(
                ctx,
                "secondary/disable",
                operation_token_body(args),
                "disabling DR secondary",
            )?;
            success(ctx, "Success! DR replication is disabled on this cluster.")
        }
        SecondaryCommand::GenerateOperationToken(args) => {
            generate_root::run_ceremony(ctx, &args, &DR_OPERATION_TOKEN)
        }
        SecondaryCommand::DeleteOperationToken(args) => {
            put(
                ctx,
                "secondary/operation-token/delete",
                operation_token_body(args),
                "deleting DR operation token",
            )?;
            success(ctx, "Success! DR operation token deleted.")
        }
    }
}

fn activation_body(args: &ActivationArgs) -> Map<String, Value> {
    let mut body = Map::new();
    body.insert("token".into(), Value::String(args.token.clone()));
    insert_given(
        &mut body,
        "primary_api_addr",
        args.primary_api_addr.as_deref(),
    );
    insert_given(&mut body, "ca_file", args.ca_file.as_deref());
    insert_given(&mut body, "ca_path", args.ca_path.as_deref());
    body
}

fn operation_token_body(args: OperationTokenArgs) -> Map<String, Value> {
    let mut body = Map::new();
    body.insert(
        "dr_operation_token".into(),
        Value::String(args.dr_operation_token),
    );
    body
}

/// What `promote` submits.
#[derive(Debug, PartialEq, Eq)]
enum PromotePlan {
    /// Discard the shares submitted so far.
    Reset,
    /// One request with a DR operation token.
    OperationToken(String),
    /// Key shares, one request each, until the promotion completes; `-` reads stdin.
    KeyShares(Vec<String>),
}

fn promote_plan(args: &PromoteArgs) -> Result<PromotePlan, CliError> {
    if args.reset {
        return Ok(PromotePlan::Reset);
    }
    if let Some(token) = &args.dr_operation_token {
        return Ok(PromotePlan::OperationToken(token.clone()));
    }
    let mut shares: Vec<String> = args.keys.iter().chain(&args.key).cloned().collect();
    if shares.is_empty() {
        shares.push("-".to_string());
    }
    if shares.iter().filter(|share| *share == "-").count() > 1 {
        return Err(CliError::Usage(
            "stdin ('-') can provide only one key share per command".into(),
        ));
    }
    Ok(PromotePlan::KeyShares(shares))
}

/// The request body for one promote call; `credential` is `key` or `dr_operation_token`.
fn promote_body(args: &PromoteArgs, credential: Option<(&str, &str)>) -> Map<String, Value> {
    let mut body = Map::new();
    match credential {
        Some((name, value)) => {
            body.insert(name.to_string(), Value::String(value.to_string()));
        }
        None => {
            body.insert("reset".into(), Value::Bool(true));
            return body;
        }
    }
    if args.force {
        body.insert("force".into(), Value::Bool(true));
    }
    insert_given(
        &mut body,
        "primary_cluster_addr",
        args.primary_cluster_addr.as_deref(),
    );
    body
}

fn promote(ctx: &Ctx, args: &PromoteArgs) -> CmdResult {
    const DOING: &str = "promoting DR secondary";
    let response = match promote_plan(args)? {
        PromotePlan::Reset => put(ctx, "secondary/promote", promote_body(args, None), DOING)?,
        PromotePlan::OperationToken(token) => {
            let body = promote_body(args, Some(("dr_operation_token", &token)));
            put(ctx, "secondary/promote", body, DOING)?
        }
        PromotePlan::KeyShares(shares) => {
            let mut last = None;
            for share in &shares {
                let share = secret_arg(Some(share), "Primary's Unseal Key (will be hidden): ")?;
                let body = promote_body(args, Some(("key", share.as_str())));
                last = put(ctx, "secondary/promote", body, DOING)?;
                if last.as_ref().is_some_and(is_complete) {
                    break;
                }
            }
            last
        }
    }
    .unwrap_or(Value::Null);
    match ctx.format() {
        Format::Json => output::emit(&output::pretty_json(&response))?,
        Format::Table => {
            output::emit(&output::key_value_table(&progress_rows(&response)))?;
            if is_complete(&response) {
                output::emit(
                    "\nSuccess! This cluster is now the DR primary. Issue new activation tokens \
                     to the other secondaries.",
                )?;
            }
        }
    }
    Ok(EXIT_OK)
}

fn is_complete(response: &Value) -> bool {
    response_data(response)
        .get("complete")
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

/// Progress, Required and Complete of a promote response.
fn progress_rows(response: &Value) -> Vec<(String, String)> {
    let data = response_data(response);
    ["Progress", "Required", "Complete"]
        .into_iter()
        .map(|label| (label.to_string(), cell_or_na(data, &label.to_lowercase())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use serde_json::json;

    #[derive(Parser)]
    struct Wrapper {
        #[command(subcommand)]
        command: SecondaryCommand,
    }

    fn parse(argv: &[&str]) -> Result<SecondaryCommand, clap::Error> {
        let mut full = vec!["secondary"];
        full.extend_from_slice(argv);
        Ok(crate::flags::parse::<Wrapper, _, _>(full)?.command)
    }

    fn promote_args(argv: &[&str]) -> Result<PromoteArgs, clap::Error> {
        let mut full = vec!["promote"];
        full.extend_from_slice(argv);
        match parse(&full)? {
            SecondaryCommand::Promote(args) => Ok(args),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn enable_sends_the_token_and_given_options() -> Result<(), clap::Error> {
        assert!(parse(&["enable"]).is_err());
        let SecondaryCommand::Enable(args) = parse(&[
            "enable",
            "--token=act",
            "--primary-api-addr=https://a:8200",
            "--ca-file=/etc/ca.pem",
        ])?
        else {
            panic!("not enable");
        };
        assert_eq!(
            Value::Object(activation_body(&args)),
            json!({"token": "act", "primary_api_addr": "https://a:8200", "ca_file": "/etc/ca.pem"})
        );
        Ok(())
    }

    #[test]
    fn update_primary_needs_both_tokens() -> Result<(), clap::Error> {
        assert!(parse(&["update-primary", "--token=act"]).is_err());
        assert!(parse(&["update-primary", "--dr-operation-token=op"]).is_err());
        let SecondaryCommand::UpdatePrimary(args) = parse(&[
            "update-primary",
            "--token=act",
            "--dr-operation-token=op",
            "--ca-path=/etc/cas",
        ])?
        else {
            panic!("not update-primary");
        };
        assert_eq!(args.dr_operation_token, "op");
        assert_eq!(
            Value::Object(activation_body(&args.activation)),
            json!({"token": "act", "ca_path": "/etc/cas"})
        );
        Ok(())
    }

    #[test]
    fn operation_token_commands_need_the_token() -> Result<(), clap::Error> {
        assert!(parse(&["disable"]).is_err());
        assert!(parse(&["delete-operation-token"]).is_err());
        let SecondaryCommand::Disable(args) = parse(&["disable", "--dr-operation-token=op"])?
        else {
            panic!("not disable");
        };
        assert_eq!(
            Value::Object(operation_token_body(args)),
            json!({"dr_operation_token": "op"})
        );
        Ok(())
    }

    #[test]
    fn generate_operation_token_takes_the_generate_root_flags() -> Result<(), clap::Error> {
        for argv in [
            &["generate-operation-token", "--init"][..],
            &["generate-operation-token", "--init", "--otp=abc"],
            &["generate-operation-token", "--status"],
            &["generate-operation-token", "--cancel"],
            &["generate-operation-token", "--nonce=n", "KEY"],
            &["generate-operation-token", "--decode=ENC", "--otp=OTP"],
        ] {
            assert!(
                matches!(parse(argv)?, SecondaryCommand::GenerateOperationToken(_)),
                "{argv:?}"
            );
        }
        Ok(())
    }

    #[test]
    fn promote_keys_come_from_flags_the_argument_or_stdin() -> Result<(), Box<dyn std::error::Error>>
    {
        assert_eq!(
            promote_plan(&promote_args(&[])?)?,
            PromotePlan::KeyShares(vec!["-".into()])
        );
        assert_eq!(
            promote_plan(&promote_args(&["k1"])?)?,
            PromotePlan::KeyShares(vec!["k1".into()])
        );
        assert_eq!(
            promote_plan(&promote_args(&["--key=k1", "--key=k2", "k3"])?)?,
            PromotePlan::KeyShares(vec!["k1".into(), "k2".into(), "k3".into()])
        );
        assert!(promote_plan(&promote_args(&["--key=-", "-"])?).is_err());
        Ok(())
    }

    #[test]
    fn promote_with_an_operation_token_or_reset() -> Result<(), Box<dyn std::error::Error>> {
        let args = promote_args(&[
            "--dr-operation-token=op",
            "--force",
            "--primary-cluster-addr=10.0.0.2:8201",
        ])?;
        assert_eq!(
            promote_plan(&args)?,
            PromotePlan::OperationToken("op".into())
        );
        assert_eq!(
            Value::Object(promote_body(&args, Some(("dr_operation_token", "op")))),
            json!({"dr_operation_token": "op", "force": true,
                   "primary_cluster_addr": "10.0.0.2:8201"})
        );
        let reset = promote_args(&["--reset"])?;
        assert_eq!(promote_plan(&reset)?, PromotePlan::Reset);
        assert_eq!(
            Value::Object(promote_body(&reset, None)),
            json!({"reset": true})
        );
        let key = promote_args(&["--force=false", "k1"])?;
        assert_eq!(
            Value::Object(promote_body(&key, Some(("key", "k1")))),
            json!({"key": "k1"})
        );
        Ok(())
    }

    #[test]
    fn promote_rejects_mixed_credentials() {
        assert!(promote_args(&["--key=k1", "--dr-operation-token=op"]).is_err());
        assert!(promote_args(&["--dr-operation-token=op", "k1"]).is_err());
        assert!(promote_args(&["--reset", "k1"]).is_err());
        assert!(promote_args(&["--reset", "--dr-operation-token=op"]).is_err());
    }

    #[test]
    fn promote_progress_is_shown_as_rows() {
        let response = json!({
            "progress": 1, "required": 3, "complete": false,
            "data": {"progress": 1, "required": 3, "complete": false}
        });
        assert_eq!(
            progress_rows(&response),
            vec![
                ("Progress".to_string(), "1".to_string()),
                ("Required".to_string(), "3".to_string()),
                ("Complete".to_string(), "false".to_string()),
            ]
        );
        assert!(!is_complete(&response));
        assert!(is_complete(
            &json!({"data": {"progress": 3, "required": 3, "complete": true}})
        ));
    }
}
