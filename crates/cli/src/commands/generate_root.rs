//! Key-share token ceremonies: `bunker operator generate-root` builds a new root token from a
//! quorum of unseal keys, and `bunker operator replication secondary generate-operation-token`
//! (or `generate-root -dr-token`) builds a DR operation token on a DR secondary the same way.
//! The two differ only in their endpoints and wording, described by a [`Ceremony`].
//!
//! The finished token comes back XORed with a one-time password (OTP) and base64 encoded;
//! `-decode` recovers it, through the server's `sys/decode-token` or locally.

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use base64::Engine;
use clap::Args;
use rand::distributions::Alphanumeric;
use rand::rngs::OsRng;
use rand::Rng;
use serde_json::{json, Value};
use zeroize::Zeroizing;

use super::key_shares::{one_mode, share_request};
use super::{print_json_or_table, send_for_body, send_then_success, CmdResult, Ctx};
use crate::client::{ApiRequest, Client, Verb};
use crate::error::{CliError, EXIT_OK};
use crate::input::read_first_line;
use crate::output::{self, cell, cell_or_na, Format};

/// Length of generated OTPs: the length of a root token.
pub(crate) const OTP_LENGTH: usize = 28;

/// One key-share ceremony: where it runs and what its token is called in messages.
#[derive(Debug)]
pub(crate) struct Ceremony {
    /// Start (PUT), read (GET) and cancel (DELETE) an attempt.
    attempt_path: &'static str,
    /// Provide one key share.
    update_path: &'static str,
    /// The token being built, for messages: "root token".
    token_name: &'static str,
}

/// `sys/generate-root`: a new root token.
pub(crate) const ROOT_TOKEN: Ceremony = Ceremony {
    attempt_path: "sys/generate-root/attempt",
    update_path: "sys/generate-root/update",
    token_name: "root token",
};

/// A DR operation token, generated on a DR secondary with the primary's key shares.
pub(crate) const DR_OPERATION_TOKEN: Ceremony = Ceremony {
    attempt_path: "sys/replication/dr/secondary/generate-operation-token/attempt",
    update_path: "sys/replication/dr/secondary/generate-operation-token/update",
    token_name: "DR operation token",
};

/// `bunker operator generate-root [-dr-token] [flags] [KEY]`
#[derive(Args, Debug)]
pub(crate) struct GenerateRootArgs {
    /// Generate a DR operation token on a DR secondary instead of a root token.
    #[arg(long)]
    dr_token: bool,
    #[command(flatten)]
    ceremony: CeremonyArgs,
}

/// The flags of a token ceremony, shared by `generate-root` and `generate-operation-token`.
#[derive(Args, Debug)]
pub(crate) struct CeremonyArgs {
    /// Start a token generation (prints the nonce and, if generated, the OTP).
    #[arg(long)]
    init: bool,
    /// Print the status of the current attempt.
    #[arg(long)]
    status: bool,
    /// Cancel the current attempt.
    #[arg(long)]
    cancel: bool,
    /// Print a random OTP suitable for `-init -otp=...`.
    #[arg(long)]
    generate_otp: bool,
    /// Decode this encoded token (`-` reads it from stdin); needs `-otp`.
    #[arg(long, value_name = "ENCODED")]
    decode: Option<String>,
    /// The one-time password, for `-init` or `-decode`.
    #[arg(long)]
    otp: Option<String>,
    /// The nonce of the attempt; fetched from the server when omitted.
    #[arg(long)]
    nonce: Option<String>,
    /// An unseal key share; read from stdin when absent or `-`.
    key: Option<String>,
}

/// What the flags ask for.
#[derive(Debug, PartialEq, Eq)]
enum Mode {
    GenerateOtp,
    Decode,
    Init,
    Status,
    Cancel,
    Provide,
}

fn mode(args: &CeremonyArgs) -> Result<Mode, CliError> {
    one_mode(
        [
            (args.generate_otp, Mode::GenerateOtp),
            (args.decode.is_some(), Mode::Decode),
            (args.init, Mode::Init),
            (args.status, Mode::Status),
            (args.cancel, Mode::Cancel),
        ],
        Mode::Provide,
        "Only one of -init, -status, -cancel, -decode or -generate-otp may be given",
    )
}

/// Runs `bunker operator generate-root`.
pub(crate) fn run(ctx: &Ctx, args: GenerateRootArgs) -> CmdResult {
    let ceremony = if args.dr_token {
        &DR_OPERATION_TOKEN
    } else {
        &ROOT_TOKEN
    };
    run_ceremony(ctx, &args.ceremony, ceremony)
}

/// Runs one step of `ceremony` as the flags ask.
pub(crate) fn run_ceremony(ctx: &Ctx, args: &CeremonyArgs, ceremony: &Ceremony) -> CmdResult {
    match mode(args)? {
        Mode::GenerateOtp => {
            output::emit(&generate_otp())?;
            Ok(EXIT_OK)
        }
        Mode::Decode => decode(ctx, args, ceremony),
        Mode::Init => init(ctx, args, ceremony),
        Mode::Status => {
            let status = fetch(&ctx.client()?, ceremony)?;
            print_status(ctx, &status)
        }
        Mode::Cancel => {
            let request = ApiRequest::new(Verb::Delete, ceremony.attempt_path);
            let doing = format!("canceling {} generation", ceremony.token_name);
            let message = format!(
                "Success! {} generation canceled (if it was started)",
                capitalized(ceremony.token_name)
            );
            send_then_success(ctx, request, doing, &message)
        }
        Mode::Provide => provide(ctx, args, ceremony),
    }
}

/// `text` with its first letter in upper case.
fn capitalized(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

fn fetch(client: &Client, ceremony: &Ceremony) -> Result<Value, CliError> {
    let doing = format!("getting {} generation status", ceremony.token_name);
    send_for_body(
        client,
        ApiRequest::new(Verb::Get, ceremony.attempt_path),
        &doing,
    )
}

fn init(ctx: &Ctx, args: &CeremonyArgs, ceremony: &Ceremony) -> CmdResult {
    let body = match &args.otp {
        Some(otp) => json!({"otp": otp}),
        None => json!({}),
    };
    let doing = format!("initializing {} generation", ceremony.token_name);
    let request = ApiRequest::new(Verb::Put, ceremony.attempt_path).json(&body);
    let status = send_for_body(&ctx.client()?, request, &doing)?;
    if output::print_if_wrapped(ctx.format(), &status, None)? {
        return Ok(EXIT_OK);
    }
    let generated_otp = status
        .get("otp")
        .and_then(Value::as_str)
        .is_some_and(|otp| !otp.is_empty());
    if generated_otp && ctx.format() == Format::Table {
        output::emit(&format!(
            "A One-Time-Password has been generated for you and is shown in the OTP field.\n\
             You will need this value to decode the resulting {}, so keep it safe.",
            ceremony.token_name
        ))?;
    }
    print_status(ctx, &status)
}

fn provide(ctx: &Ctx, args: &CeremonyArgs, ceremony: &Ceremony) -> CmdResult {
    let client = ctx.client()?;
    let nonce = match &args.nonce {
        Some(nonce) => nonce.clone(),
        None => fetch(&client, ceremony)?
            .get("nonce")
            .and_then(Value::as_str)
            .filter(|nonce| !nonce.is_empty())
            .map(str::to_string)
            .ok_or_else(|| {
                CliError::Usage(format!(
                    "No {} generation in progress; start one with -init",
                    ceremony.token_name
                ))
            })?,
    };
    let request = share_request(ceremony.update_path, args.key.as_deref(), &nonce)?;
    let doing = format!(
        "providing unseal key for {} generation",
        ceremony.token_name
    );
    let status = send_for_body(&client, request, &doing)?;
    print_status(ctx, &status)
}

fn print_status(ctx: &Ctx, status: &Value) -> CmdResult {
    print_json_or_table(ctx, status, || {
        output::key_value_table(&status_rows(status))
    })
}

/// Rows for a generate-root status: Nonce, Started, Progress, Complete, and when present
/// Encoded Token, OTP, OTP Length and PGP Fingerprint.
fn status_rows(status: &Value) -> Vec<(String, String)> {
    let text = |key: &str| cell_or_na(status, key);
    let present = |key: &str| {
        status
            .get(key)
            .filter(|v| !v.is_null() && v.as_str() != Some(""))
            .map(cell)
    };
    let mut rows = vec![
        ("Nonce".to_string(), text("nonce")),
        ("Started".to_string(), text("started")),
        (
            "Progress".to_string(),
            format!("{}/{}", text("progress"), text("required")),
        ),
        ("Complete".to_string(), text("complete")),
    ];
    let encoded = present("encoded_token").or_else(|| present("encoded_root_token"));
    if let Some(encoded) = encoded {
        rows.push(("Encoded Token".to_string(), encoded));
    }
    if let Some(otp) = present("otp") {
        rows.push(("OTP".to_string(), otp));
    }
    if let Some(length) = present("otp_length") {
        rows.push(("OTP Length".to_string(), length));
    }
    if let Some(fingerprint) = present("pgp_fingerprint") {
        rows.push(("PGP Fingerprint".to_string(), fingerprint));
    }
    rows
}

fn decode(ctx: &Ctx, args: &CeremonyArgs, ceremony: &Ceremony) -> CmdResult {
    let otp = args
        .otp
        .as_deref()
        .ok_or_else(|| CliError::Usage("-decode requires the -otp used at -init".into()))?;
    let encoded = match args.decode.as_deref() {
        Some("-") | None => read_first_line(std::io::stdin().lock())?,
        Some(encoded) => Zeroizing::new(encoded.to_string()),
    };
    let token = match decode_on_server(ctx, &encoded, otp) {
        Ok(token) => token,
        // Servers without sys/decode-token: the algorithm is simple enough to run here.
        Err(server_error) => decode_token(&encoded, otp).map_err(|local_error| {
            CliError::Invalid(format!(
                "Error decoding {}: {local_error}\n\n\
                 The server could not decode it either: {server_error}",
                ceremony.token_name
            ))
        })?,
    };
    output::emit(&token)?;
    Ok(EXIT_OK)
}

/// Asks the server to decode; the error is only shown if local decoding fails too.
fn decode_on_server(ctx: &Ctx, encoded: &str, otp: &str) -> Result<Zeroizing<String>, String> {
    let body = json!({"encoded_token": encoded, "otp": otp});
    let request = ApiRequest::new(Verb::Post, "sys/decode-token")
        .json(&body)
        .without_wrapping();
    let response = ctx
        .client()
        .map_err(|e| e.to_string())?
        .send(request)
        .map_err(|e| e.to_string())?
        .body
        .unwrap_or(Value::Null);
    response
        .get("data")
        .and_then(|data| data.get("token"))
        .and_then(Value::as_str)
        .map(|token| Zeroizing::new(token.to_string()))
        .ok_or_else(|| "the server returned no token".to_string())
}

/// Decodes a generated root token: base64 (padding optional) XOR the OTP's bytes.
pub(crate) fn decode_token(encoded: &str, otp: &str) -> Result<Zeroizing<String>, String> {
    let trimmed = encoded.trim().trim_end_matches('=');
    let bytes = Zeroizing::new(
        STANDARD_NO_PAD
            .decode(trimmed)
            .or_else(|_| STANDARD.decode(encoded.trim()))
            .map_err(|e| format!("the encoded token is not valid base64: {e}"))?,
    );
    if bytes.len() != otp.len() {
        return Err(format!(
            "the encoded token is {} bytes but the OTP is {} characters; check the -otp value",
            bytes.len(),
            otp.len()
        ));
    }
    let decoded: Vec<u8> = bytes
        .iter()
        .zip(otp.as_bytes())
        .map(|(a, b)| a ^ b)
        .collect();
    String::from_utf8(decoded)
        .map(Zeroizing::new)
        .map_err(|_| "the decoded token is not text; check the -otp value".to_string())
}

/// A random alphanumeric OTP of [`OTP_LENGTH`] characters from the OS RNG.
pub(crate) fn generate_otp() -> String {
    OsRng
        .sample_iter(&Alphanumeric)
        .take(OTP_LENGTH)
        .map(char::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(token: &str, otp: &str) -> String {
        let xored: Vec<u8> = token.bytes().zip(otp.bytes()).map(|(a, b)| a ^ b).collect();
        STANDARD_NO_PAD.encode(xored)
    }

    #[test]
    fn decodes_with_and_without_padding() -> Result<(), String> {
        let otp = "abcdefghijklmnopqrstuvwxyz12";
        let token = "hvs.0123456789abcdefghijklmn";
        let unpadded = encode(token, otp);
        assert_eq!(decode_token(&unpadded, otp)?.as_str(), token);
        let short_otp = "abcdefghijklmnopqrstuvwxyz";
        let short_token = "hvs.0123456789abcdefghijkl";
        let encoded = encode(short_token, short_otp);
        let padded = format!("{encoded}{}", "=".repeat((4 - encoded.len() % 4) % 4));
        assert!(padded.ends_with('='));
        assert_eq!(decode_token(&padded, short_otp)?.as_str(), short_token);
        Ok(())
    }

    #[test]
    fn wrong_otp_length_or_garbage_is_rejected() {
        let otp = "abcdefghijklmnopqrstuvwxyz12";
        let encoded = encode("hvs.0123456789abcdefghijklmn", otp);
        assert!(decode_token(&encoded, "short").is_err());
        assert!(decode_token("***", otp).is_err());
    }

    #[test]
    fn generated_otps_are_alphanumeric_and_distinct() {
        let first = generate_otp();
        assert_eq!(first.len(), OTP_LENGTH);
        assert!(first.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(first, generate_otp());
    }

    #[test]
    fn status_rows_show_progress_and_encoded_token() {
        let status = json!({
            "nonce": "n-1", "started": true, "progress": 3, "required": 3,
            "complete": true, "encoded_token": "ENC", "otp": "", "otp_length": 28
        });
        let rows = status_rows(&status);
        assert!(rows.contains(&("Progress".to_string(), "3/3".to_string())));
        assert!(rows.contains(&("Encoded Token".to_string(), "ENC".to_string())));
        assert!(rows.contains(&("OTP Length".to_string(), "28".to_string())));
        assert!(!rows.iter().any(|(k, _)| k == "OTP"));
    }

    fn args(flags: &[&str]) -> Result<GenerateRootArgs, clap::Error> {
        use clap::Parser;
        #[derive(Parser)]
        struct Wrapper {
            #[command(flatten)]
            inner: GenerateRootArgs,
        }
        let mut argv = vec!["generate-root"];
        argv.extend_from_slice(flags);
        Ok(crate::flags::parse::<Wrapper, _, _>(argv)?.inner)
    }

    fn mode_of(flags: &[&str]) -> Result<Option<Mode>, clap::Error> {
        Ok(mode(&args(flags)?.ceremony).ok())
    }

    #[test]
    fn flags_select_one_mode() -> Result<(), clap::Error> {
        assert_eq!(mode_of(&[])?, Some(Mode::Provide));
        assert_eq!(mode_of(&["--init"])?, Some(Mode::Init));
        assert_eq!(mode_of(&["--decode=x", "--otp=y"])?, Some(Mode::Decode));
        assert_eq!(mode_of(&["--generate-otp"])?, Some(Mode::GenerateOtp));
        assert_eq!(mode_of(&["--init", "--cancel"])?, None);
        Ok(())
    }

    #[test]
    fn dr_token_flag_is_separate_from_the_ceremony_flags() -> Result<(), clap::Error> {
        let plain = args(&["--init"])?;
        assert!(!plain.dr_token);
        let dr = args(&["--dr-token", "--status"])?;
        assert!(dr.dr_token);
        assert_eq!(mode(&dr.ceremony).ok(), Some(Mode::Status));
        assert!(args(&["--dr-token=false"]).is_ok_and(|a| !a.dr_token));
        Ok(())
    }

    #[test]
    fn ceremonies_use_their_own_endpoints() {
        assert_eq!(ROOT_TOKEN.attempt_path, "sys/generate-root/attempt");
        assert_eq!(
            DR_OPERATION_TOKEN.update_path,
            "sys/replication/dr/secondary/generate-operation-token/update"
        );
        assert_eq!(
            capitalized(DR_OPERATION_TOKEN.token_name),
            "DR operation token"
        );
        assert_eq!(capitalized(ROOT_TOKEN.token_name), "Root token");
    }
}
