//! `bunker operator rekey`: replace the unseal key shares (`sys/rekey/*`), in the style of
//! `vault operator rekey`.
//!
//! One invocation does one step: `-init` starts a rekey (with `-verify`, the new shares must
//! come back before they are active), `-status` and `-cancel` read or end it, and otherwise a
//! current unseal key is provided (or, with `-verify`, a new one). When the last current key is
//! in, the new keys are printed once.

use clap::Args;
use serde_json::{json, Value};

use super::key_shares::{check_threshold, key_share_lines, one_mode, share_request};
use super::{emit_json_or_table, send_for_body, send_then_success, CmdResult, Ctx};
use crate::client::{ApiRequest, Client, Verb};
use crate::error::{CliError, EXIT_OK};
use crate::output::{self, cell, cell_or_na, Format};

const INIT_PATH: &str = "sys/rekey/init";
const UPDATE_PATH: &str = "sys/rekey/update";
const VERIFY_PATH: &str = "sys/rekey/verify";

/// `bunker operator rekey [flags] [KEY]`
#[derive(Args, Debug)]
pub(crate) struct RekeyArgs {
    /// Start a rekey; the new key count and threshold come from -key-shares and -key-threshold.
    #[arg(long)]
    init: bool,
    /// Cancel the rekey (with -verify: restart the verification only).
    #[arg(long)]
    cancel: bool,
    /// Print the status of the rekey (with -verify: of its verification).
    #[arg(long)]
    status: bool,
    /// With -init: require the new shares to be verified before they are used. Otherwise: act
    /// on the verification (provide a new key, -status, -cancel).
    #[arg(long)]
    verify: bool,
    /// Number of new key shares.
    #[arg(long, default_value_t = 5)]
    key_shares: u32,
    /// Number of new key shares needed to unseal.
    #[arg(long, default_value_t = 3)]
    key_threshold: u32,
    /// The nonce of the rekey (or of its verification); fetched from the server when omitted.
    #[arg(long)]
    nonce: Option<String>,
    /// PGP keys to encrypt the new shares with: not supported, the server refuses them.
    #[arg(long, value_delimiter = ',')]
    pgp_keys: Vec<String>,
    /// Back up PGP-encrypted shares: not supported, the server refuses it.
    #[arg(long)]
    backup: bool,
    /// Which keys to rekey: only `barrier` (the unseal keys); Bunker has no recovery keys.
    #[arg(long, default_value = "barrier")]
    target: String,
    /// An unseal key share (current, or new with -verify); read from stdin when absent or `-`.
    key: Option<String>,
}

/// What the flags ask for.
#[derive(Debug, PartialEq, Eq)]
enum Mode {
    Init,
    Cancel,
    Status,
    Provide,
}

fn mode(args: &RekeyArgs) -> Result<Mode, CliError> {
    if !args.target.trim().eq_ignore_ascii_case("barrier") {
        return Err(CliError::Usage(format!(
            "Unsupported -target={:?}: only \"barrier\" (the unseal keys) can be rekeyed",
            args.target
        )));
    }
    one_mode(
        [
            (args.init, Mode::Init),
            (args.cancel, Mode::Cancel),
            (args.status, Mode::Status),
        ],
        Mode::Provide,
        "Only one of -init, -status or -cancel may be given",
    )
}

/// Runs `bunker operator rekey`.
pub(crate) fn run(ctx: &Ctx, args: RekeyArgs) -> CmdResult {
    match mode(&args)? {
        Mode::Init => init(ctx, &args),
        Mode::Cancel => {
            let path = if args.verify { VERIFY_PATH } else { INIT_PATH };
            let request = ApiRequest::new(Verb::Delete, path).without_wrapping();
            let message = "Success! Canceled rekeying (if it was started)";
            send_then_success(ctx, request, "canceling rekey", message)
        }
        Mode::Status if args.verify => {
            let status = fetch(&ctx.client()?, VERIFY_PATH)?;
            print(ctx, &status, &verification_rows(&status))
        }
        Mode::Status => {
            let status = fetch(&ctx.client()?, INIT_PATH)?;
            print(ctx, &status, &status_rows(&status))
        }
        Mode::Provide => provide(ctx, &args),
    }
}

fn fetch(client: &Client, path: &str) -> Result<Value, CliError> {
    let request = ApiRequest::new(Verb::Get, path).without_wrapping();
    send_for_body(client, request, "getting rekey status")
}

fn print(ctx: &Ctx, response: &Value, rows: &[(String, String)]) -> CmdResult {
    emit_json_or_table(ctx, response, || output::key_value_table(rows))
}

fn init(ctx: &Ctx, args: &RekeyArgs) -> CmdResult {
    check_threshold(args.key_shares, args.key_threshold)?;
    let body = json!({
        "secret_shares": args.key_shares,
        "secret_threshold": args.key_threshold,
        "pgp_keys": args.pgp_keys,
        "backup": args.backup,
        "require_verification": args.verify,
    });
    let request = ApiRequest::new(Verb::Put, INIT_PATH)
        .json(&body)
        .without_wrapping();
    let status = send_for_body(&ctx.client()?, request, "initializing rekey")?;
    print(ctx, &status, &status_rows(&status))
}

fn provide(ctx: &Ctx, args: &RekeyArgs) -> CmdResult {
    let client = ctx.client()?;
    let status = fetch(&client, INIT_PATH)?;
    let progress = if args.verify {
        fetch(&client, VERIFY_PATH)?
    } else {
        status.clone()
    };
    if progress.get("started").and_then(Value::as_bool) != Some(true) {
        let what = if args.verify {
            "No rekey verification is in progress"
        } else {
            "No rekey is in progress. Start one with \"bunker operator rekey -init\""
        };
        return Err(CliError::Usage(what.into()));
    }
    let nonce = match &args.nonce {
        Some(nonce) => nonce.clone(),
        None => progress.get("nonce").map(output::raw).unwrap_or_default(),
    };
    let (path, doing) = if args.verify {
        (VERIFY_PATH, "providing key for rekey verification")
    } else {
        (UPDATE_PATH, "providing unseal key for rekey")
    };
    let request = share_request(path, args.key.as_deref(), &nonce)?.without_wrapping();
    let response = send_for_body(&client, request, doing)?;
    let complete = response.get("complete").and_then(Value::as_bool) == Some(true);
    match (complete, args.verify) {
        (false, true) => print(ctx, &response, &verification_rows(&response)),
        (false, false) => print(ctx, &response, &status_rows(&response)),
        (true, true) => {
            if ctx.format() == Format::Json {
                return print(ctx, &response, &[]);
            }
            output::emit(
                "Success! Rekey verification was successful. The new unseal keys are now \
                 active; the old ones no longer unseal.",
            )?;
            Ok(EXIT_OK)
        }
        (true, false) => print_new_keys(ctx, &client, &status, &response),
    }
}

/// The new keys, printed once, with what to do with them (as `vault operator rekey`).
fn print_new_keys(ctx: &Ctx, client: &Client, status: &Value, response: &Value) -> CmdResult {
    if ctx.format() == Format::Json {
        return print(ctx, response, &[]);
    }
    let number = |key: &str| status.get(key).map(cell).unwrap_or_else(|| "?".into());
    let (shares, threshold) = (number("n"), number("t"));
    let mut text = keys_text(response);
    let verification = response
        .get("verification_required")
        .and_then(Value::as_bool)
        == Some(true);
    if verification {
        text.push_str(&format!(
            "\nBunker has created a new unseal key, split into {shares} key shares with a key \
             threshold of {threshold}. These will not be active until after verification is \
             complete. Please securely distribute the key shares printed above. When Bunker is \
             re-sealed, restarted, or stopped, you must supply at least {threshold} of these \
             keys to unseal it before it can start servicing requests.\n\n\
             Again, these key shares are _not_ valid until verification is performed. Do not \
             lose or discard your current key shares until after verification is complete or \
             you will be unable to unseal Bunker. If you cancel the rekey process or seal \
             Bunker before verification is complete the new shares will be discarded and the \
             current shares will remain valid.\n\n\
             The current verification status, including initial nonce, is shown below.\n\n"
        ));
        output::emit(&text)?;
        let verify_status = fetch(client, VERIFY_PATH)?;
        output::emit(&output::key_value_table(&verification_rows(&verify_status)))?;
    } else {
        text.push_str(&format!(
            "\nBunker unseal keys rekeyed with {shares} key shares and a key threshold of \
             {threshold}. Please securely distribute the key shares printed above. When Bunker \
             is re-sealed, restarted, or stopped, you must supply at least {threshold} of these \
             keys to unseal it before it can start servicing requests.\n"
        ));
        output::emit(&text)?;
    }
    Ok(EXIT_OK)
}

/// `Key N: <base64>` lines and the operation nonce.
fn keys_text(response: &Value) -> String {
    let mut text = key_share_lines(response, "Key");
    let nonce = response.get("nonce").map(output::raw).unwrap_or_default();
    text.push_str(&format!("\nOperation nonce: {nonce}\n"));
    text
}

/// Rows for a `sys/rekey/init` status, as `vault operator rekey -status` shows them.
fn status_rows(status: &Value) -> Vec<(String, String)> {
    let text = |key: &str| cell_or_na(status, key);
    let mut rows = vec![
        ("Nonce".to_string(), text("nonce")),
        ("Started".to_string(), text("started")),
    ];
    if status.get("started").and_then(Value::as_bool) == Some(true) {
        let verifying = status
            .get("verification_nonce")
            .and_then(Value::as_str)
            .is_some_and(|n| !n.is_empty());
        let mut progress = format!("{}/{}", text("progress"), text("required"));
        if verifying {
            progress.push_str(" (verification in progress)");
        }
        rows.push(("Rekey Progress".to_string(), progress));
        rows.push(("New Shares".to_string(), text("n")));
        rows.push(("New Threshold".to_string(), text("t")));
        rows.push((
            "Verification Required".to_string(),
            text("verification_required"),
        ));
        if verifying {
            rows.push(("Verification Nonce".to_string(), text("verification_nonce")));
        }
    }
    rows
}

/// Rows for a `sys/rekey/verify` status.
fn verification_rows(status: &Value) -> Vec<(String, String)> {
    let text = |key: &str| cell_or_na(status, key);
    vec![
        ("Started".to_string(), text("started")),
        ("New Shares".to_string(), text("n")),
        ("New Threshold".to_string(), text("t")),
        ("Verification Nonce".to_string(), text("nonce")),
        (
            "Verification Progress".to_string(),
            format!("{}/{}", text("progress"), text("t")),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(flags: &[&str]) -> Result<RekeyArgs, clap::Error> {
        use clap::Parser;
        #[derive(Parser)]
        struct Wrapper {
            #[command(flatten)]
            inner: RekeyArgs,
        }
        let mut argv = vec!["rekey"];
        argv.extend_from_slice(flags);
        Ok(crate::flags::parse::<Wrapper, _, _>(argv)?.inner)
    }

    fn mode_of(flags: &[&str]) -> Result<Option<Mode>, clap::Error> {
        Ok(mode(&args(flags)?).ok())
    }

    #[test]
    fn flags_select_one_mode() -> Result<(), clap::Error> {
        assert_eq!(mode_of(&[])?, Some(Mode::Provide));
        assert_eq!(mode_of(&["--verify", "KEY"])?, Some(Mode::Provide));
        assert_eq!(mode_of(&["--init", "--verify"])?, Some(Mode::Init));
        assert_eq!(mode_of(&["--status", "--verify"])?, Some(Mode::Status));
        assert_eq!(mode_of(&["--cancel"])?, Some(Mode::Cancel));
        assert_eq!(mode_of(&["--init", "--cancel"])?, None);
        assert_eq!(mode_of(&["--status", "--target=recovery"])?, None);
        let init = args(&["--init", "--key-shares=3", "--key-threshold=2"])?;
        assert_eq!((init.key_shares, init.key_threshold), (3, 2));
        assert!(!init.verify);
        Ok(())
    }

    #[test]
    fn status_rows_show_progress_and_verification() {
        let idle = json!({"started": false, "nonce": "", "progress": 0, "required": 3});
        assert_eq!(status_rows(&idle).len(), 2);
        let verifying = json!({
            "started": true, "nonce": "n-1", "t": 2, "n": 3, "progress": 0, "required": 3,
            "verification_required": true, "verification_nonce": "v-1"
        });
        let rows = status_rows(&verifying);
        assert!(rows.contains(&(
            "Rekey Progress".to_string(),
            "0/3 (verification in progress)".to_string()
        )));
        assert!(rows.contains(&("Verification Nonce".to_string(), "v-1".to_string())));
        assert!(rows.contains(&("New Threshold".to_string(), "2".to_string())));
    }

    #[test]
    fn new_keys_are_listed_with_the_nonce() {
        let response = json!({
            "keys": ["aa", "bb"], "keys_base64": ["qg==", "uw=="], "nonce": "n-1",
            "complete": true
        });
        assert_eq!(
            keys_text(&response),
            "Key 1: qg==\nKey 2: uw==\n\nOperation nonce: n-1\n"
        );
        let verify = json!({"started": true, "nonce": "v", "t": 2, "n": 3, "progress": 1});
        assert!(verification_rows(&verify)
            .contains(&("Verification Progress".to_string(), "1/2".to_string())));
    }
}
