//! `bunker operator ...`: init, unseal, seal, rotate, key-status, generate-root, rekey,
//! replication.

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::generate_root::{self, GenerateRootArgs};
use super::key_shares::{check_threshold, key_share_lines, read_unseal_key};
use super::rekey::{self, RekeyArgs};
use super::replication::{self, ReplicationCommand};
use super::snapshot::{self, RaftCommand, SnapshotCommand};
use super::status::seal_status_rows;
use super::{print_json_or_table, send_for_body, send_then_success, CmdResult, Ctx};
use crate::client::{ApiRequest, Client, Verb};
use crate::error::{CliError, Doing, EXIT_OK, EXIT_REMOTE};
use crate::output::{self, cell, Format};

#[derive(Subcommand, Debug)]
pub(crate) enum OperatorCommand {
    /// Initialize a new server: create the root key shares and the initial root token.
    Init(InitArgs),
    /// Provide an unseal key share (from the argument or stdin).
    Unseal(UnsealArgs),
    /// Seal the server.
    Seal,
    /// Make the active node of an HA cluster give up the lock, so a standby takes over.
    StepDown,
    /// Rotate the barrier encryption key (adds a new key term).
    Rotate,
    /// Show the current encryption key term.
    KeyStatus,
    /// Generate a new root token (or, with -dr-token, a DR operation token) from a quorum of
    /// unseal key shares.
    GenerateRoot(GenerateRootArgs),
    /// Replace the unseal key shares (a new root key split into new shares), from a quorum of
    /// the current ones.
    Rekey(RekeyArgs),
    /// DR replication: status, and managing this cluster as a primary or a secondary.
    #[command(subcommand)]
    Replication(ReplicationCommand),
    /// Snapshots through Vault's raft endpoints (whatever the storage backend).
    #[command(subcommand)]
    Raft(RaftCommand),
    /// Snapshot files: inspect.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
}

/// `bunker operator init`
#[derive(Args, Debug)]
pub(crate) struct InitArgs {
    /// Number of key shares to split the root key into.
    #[arg(long, default_value_t = 5)]
    key_shares: u32,
    /// Number of key shares needed to unseal.
    #[arg(long, default_value_t = 3)]
    key_threshold: u32,
    /// Only report whether the server is initialized (exit 0 yes, 2 no).
    #[arg(long)]
    status: bool,
}

/// `bunker operator unseal [KEY]`
#[derive(Args, Debug)]
pub(crate) struct UnsealArgs {
    /// Discard the unseal keys provided so far.
    #[arg(long)]
    reset: bool,
    /// The unseal key share (base64 or hex); read from stdin when absent or `-`.
    key: Option<String>,
}

pub(crate) fn run(ctx: &Ctx, command: OperatorCommand) -> CmdResult {
    match command {
        OperatorCommand::Init(args) => init(ctx, args),
        OperatorCommand::Unseal(args) => unseal(ctx, args),
        OperatorCommand::Seal => seal(ctx),
        OperatorCommand::StepDown => step_down(ctx),
        OperatorCommand::Rotate => rotate(ctx),
        OperatorCommand::KeyStatus => key_status(ctx),
        OperatorCommand::GenerateRoot(args) => generate_root::run(ctx, args),
        OperatorCommand::Rekey(args) => rekey::run(ctx, args),
        OperatorCommand::Replication(command) => replication::run(ctx, command),
        OperatorCommand::Raft(command) => snapshot::run_raft(ctx, command),
        OperatorCommand::Snapshot(command) => snapshot::run(ctx, command),
    }
}

fn init(ctx: &Ctx, args: InitArgs) -> CmdResult {
    let client = ctx.client()?;
    if args.status {
        return init_status(ctx, &client);
    }
    check_threshold(args.key_shares, args.key_threshold)?;
    let body = json!({
        "secret_shares": args.key_shares,
        "secret_threshold": args.key_threshold,
    });
    let request = ApiRequest::new(Verb::Put, "sys/init").json(&body);
    let response = send_for_body(&client, request, "initializing")?;
    print_json_or_table(ctx, &response, || {
        init_text(&response, args.key_shares, args.key_threshold)
    })
}

fn init_status(ctx: &Ctx, client: &Client) -> CmdResult {
    let request = ApiRequest::new(Verb::Get, "sys/init");
    let response = send_for_body(client, request, "checking init status")?;
    let initialized = response
        .get("initialized")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if ctx.format() == Format::Json {
        output::emit(&output::pretty_json(&response))?;
    } else if initialized {
        output::emit("Bunker is initialized")?;
    } else {
        output::emit("Bunker is not initialized")?;
    }
    Ok(if initialized { EXIT_OK } else { EXIT_REMOTE })
}

/// The human-readable result of `operator init`: the key shares and the root token.
fn init_text(response: &Value, shares: u32, threshold: u32) -> String {
    let mut text = key_share_lines(response, "Unseal Key");
    let root_token = response
        .get("root_token")
        .map(output::raw)
        .unwrap_or_default();
    text.push_str(&format!("\nInitial Root Token: {root_token}\n\n"));
    text.push_str(&format!(
        "Bunker initialized with {shares} key shares and a key threshold of {threshold}. \
         Please securely\ndistribute the key shares printed above. When the server is \
         re-sealed,\nrestarted, or stopped, you must supply at least {threshold} of these \
         keys to unseal it\nbefore it can start servicing requests.\n"
    ));
    text
}

fn unseal(ctx: &Ctx, args: UnsealArgs) -> CmdResult {
    let body = if args.reset {
        json!({"reset": true})
    } else {
        let key = read_unseal_key(args.key.as_deref())?;
        json!({"key": key.as_str()})
    };
    let request = ApiRequest::new(Verb::Put, "sys/unseal").json(&body);
    let response = send_for_body(&ctx.client()?, request, "unsealing")?;
    print_json_or_table(ctx, &response, || {
        output::key_value_table(&seal_status_rows(&response))
    })
}

fn seal(ctx: &Ctx) -> CmdResult {
    let request = ApiRequest::new(Verb::Put, "sys/seal");
    send_then_success(ctx, request, "sealing", "Success! Bunker is sealed.")
}

fn step_down(ctx: &Ctx) -> CmdResult {
    let request = ApiRequest::new(Verb::Put, "sys/step-down");
    send_then_success(ctx, request, "stepping down", "Success! Stepped down")
}

fn rotate(ctx: &Ctx) -> CmdResult {
    let client = ctx.client()?;
    client
        .send(ApiRequest::new(Verb::Put, "sys/rotate"))
        .doing("rotating key")?;
    let status = fetch_key_status(&client)?;
    print_json_or_table(ctx, &status, || {
        format!(
            "Success! Rotated key\n\n{}",
            output::key_value_table(&key_status_rows(&status))
        )
    })
}

fn key_status(ctx: &Ctx) -> CmdResult {
    let status = fetch_key_status(&ctx.client()?)?;
    print_json_or_table(ctx, &status, || {
        output::key_value_table(&key_status_rows(&status))
    })
}

fn fetch_key_status(client: &Client) -> Result<Value, CliError> {
    let request = ApiRequest::new(Verb::Get, "sys/key-status");
    send_for_body(client, request, "reading key status")
}

/// Rows for a `sys/key-status` response (fields may sit under `data` or at the top).
fn key_status_rows(status: &Value) -> Vec<(String, String)> {
    let field = |key: &str| {
        status
            .get("data")
            .and_then(|d| d.get(key))
            .or_else(|| status.get(key))
            .map(cell)
            .unwrap_or_else(|| "n/a".into())
    };
    vec![
        ("Key Term".to_string(), field("term")),
        ("Install Time".to_string(), field("install_time")),
        ("Encryption Count".to_string(), field("encryptions")),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_text_lists_keys_and_token() {
        let response = json!({
            "keys": ["aa", "bb"], "keys_base64": ["qg==", "uw=="], "root_token": "hvs.root"
        });
        let text = init_text(&response, 2, 2);
        assert!(text.starts_with(
            "Unseal Key 1: qg==\nUnseal Key 2: uw==\n\nInitial Root Token: hvs.root\n"
        ));
        assert!(text.contains("2 key shares and a key threshold of 2"));
    }

    #[test]
    fn key_status_reads_top_level_or_data() {
        let top = json!({"term": 3, "install_time": "2024-01-01T00:00:00Z", "encryptions": 7});
        let nested = json!({"data": top.clone()});
        let expected = vec![
            ("Key Term".to_string(), "3".to_string()),
            (
                "Install Time".to_string(),
                "2024-01-01T00:00:00Z".to_string(),
            ),
            ("Encryption Count".to_string(), "7".to_string()),
        ];
        assert_eq!(key_status_rows(&top), expected);
        assert_eq!(key_status_rows(&nested), expected);
    }
}
