//! The `bunker` command-line client, in the style of the `vault` CLI.
//!
//! The binary calls [`run`] with its argv and a callback that starts the server. Flags may be
//! written the Go way with one dash (`-format=json`, `-dev`); [`normalize_args`] rewrites them
//! for clap. Exit codes follow `vault`: 0 success, 1 local errors (including bad arguments),
//! 2 remote errors (see `error.rs`).
//!
//! May see: the server only through its HTTP API (it links no server crate).

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

mod client;
mod commands;
mod error;
mod flags;
mod input;
mod output;
mod settings;
mod token_helper;

use commands::{
    audit, auth, generic, kv, login, operator, policy, secrets, status, token, unwrap, Ctx,
};
use error::{CliError, EXIT_LOCAL, EXIT_OK};
use output::{emit, emit_err, Format};
use settings::Settings;

/// The address used when neither `-address` nor `VAULT_ADDR` is given (as `vault` does).
pub const DEFAULT_ADDRESS: &str = "https://127.0.0.1:8200";

/// Flags of `bunker server`, handed to the server callback.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct ServerArgs {
    /// Path to a configuration file.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Start an in-memory, unsealed development server.
    #[arg(long)]
    pub dev: bool,
    /// Root token id for the dev server.
    #[arg(long, env = "VAULT_DEV_ROOT_TOKEN_ID", hide_env_values = true)]
    pub dev_root_token_id: Option<String>,
    /// Address the dev server listens on.
    #[arg(
        long,
        env = "VAULT_DEV_LISTEN_ADDRESS",
        default_value = "127.0.0.1:8200"
    )]
    pub dev_listen_address: String,
    /// Log level (trace, debug, info, warn, error).
    #[arg(long, env = "VAULT_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// Log format (standard or json).
    #[arg(long, env = "VAULT_LOG_FORMAT")]
    pub log_format: Option<String>,
}

impl ServerArgs {
    /// Treats empty `VAULT_DEV_*` / `VAULT_LOG_*` variables as unset.
    fn without_empty_env(mut self) -> Self {
        let keep = |value: Option<String>| value.filter(|v| !v.trim().is_empty());
        self.dev_root_token_id = keep(self.dev_root_token_id);
        self.log_level = keep(self.log_level);
        self.log_format = keep(self.log_format);
        if self.dev_listen_address.trim().is_empty() {
            self.dev_listen_address = ServerArgs::default().dev_listen_address;
        }
        self
    }
}

impl Default for ServerArgs {
    fn default() -> Self {
        ServerArgs {
            config: None,
            dev: false,
            dev_root_token_id: None,
            dev_listen_address: "127.0.0.1:8200".to_string(),
            log_level: None,
            log_format: None,
        }
    }
}

/// Flags accepted by every command. Each falls back to its environment variable (an empty
/// variable counts as unset, as with `vault`); see [`settings::Settings::resolve`].
#[derive(Args, Debug, Clone, Default)]
pub(crate) struct GlobalArgs {
    /// Address of the server [env: VAULT_ADDR] [default: https://127.0.0.1:8200].
    #[arg(long, global = true)]
    pub address: Option<String>,
    /// Output format [env: VAULT_FORMAT] [default: table].
    #[arg(long, global = true, value_enum, ignore_case = true)]
    pub format: Option<Format>,
    /// PEM file of the CA certificate(s) used to verify the server [env: VAULT_CACERT].
    #[arg(long, global = true, value_name = "PATH")]
    pub ca_cert: Option<PathBuf>,
    /// Do not verify the server's TLS certificate (insecure) [env: VAULT_SKIP_VERIFY].
    #[arg(long, global = true)]
    pub tls_skip_verify: Option<bool>,
    /// Ask the server to response-wrap the answer with this TTL [env: VAULT_WRAP_TTL].
    #[arg(long, global = true, value_parser = input::duration_flag)]
    pub wrap_ttl: Option<String>,
}

#[derive(Parser, Debug)]
#[command(
    name = "bunker",
    version,
    about = "Bunker: a Vault-compatible secrets server and its client",
    disable_help_subcommand = true
)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start a Bunker server.
    Server(ServerArgs),
    /// Print seal and HA status (exit 0 unsealed, 2 sealed, 1 error).
    Status,
    /// Operator tasks: init, unseal, seal, rotate, generate-root, rekey, replication.
    #[command(subcommand)]
    Operator(operator::OperatorCommand),
    /// Read data at a path.
    Read(generic::ReadArgs),
    /// Write data to a path.
    Write(generic::WriteArgs),
    /// Delete data at a path.
    Delete(generic::DeleteArgs),
    /// List the keys under a path.
    List(generic::ListArgs),
    /// Work with the key/value secrets engine (v1 and v2).
    #[command(subcommand)]
    Kv(kv::KvCommand),
    /// Create, look up, renew and revoke tokens.
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Manage ACL policies.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Enable, disable, tune and list secrets engines.
    #[command(subcommand)]
    Secrets(secrets::SecretsCommand),
    /// Enable, disable, tune and list auth methods.
    #[command(subcommand)]
    Auth(auth::AuthCommand),
    /// Enable, disable and list audit devices.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Authenticate with a token and store it for later commands.
    Login(login::LoginArgs),
    /// Return the response a wrapping token stands for (the current token when none is given).
    Unwrap(unwrap::UnwrapArgs),
    /// Print the client version.
    Version,
}

/// Parses argv (including argv\[0\]) and runs the command. `server` is called for
/// `bunker server ...`.
pub fn run(args: Vec<OsString>, server: impl FnOnce(ServerArgs) -> anyhow::Result<()>) -> ExitCode {
    let cli = match flags::parse::<Cli, _, _>(normalize_args(args)) {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            // Help and version requests are not errors; bad usage is a local error (1).
            let code = if err.use_stderr() {
                EXIT_LOCAL
            } else {
                EXIT_OK
            };
            return ExitCode::from(code);
        }
    };
    ExitCode::from(dispatch(cli, server))
}

fn dispatch(cli: Cli, server: impl FnOnce(ServerArgs) -> anyhow::Result<()>) -> u8 {
    if let Command::Server(args) = cli.command {
        return match server(args.without_empty_env()) {
            Ok(()) => EXIT_OK,
            Err(err) => {
                emit_err(&format!("Error: {err:#}"));
                EXIT_LOCAL
            }
        };
    }
    let settings = match Settings::resolve(cli.global, settings::process_env) {
        Ok(settings) => settings,
        Err(err) => return report(&err),
    };
    let ctx = Ctx::new(settings);
    let result = match cli.command {
        // Handled above, before the client settings are resolved.
        Command::Server(_) => Ok(EXIT_OK),
        Command::Status => return status::run(&ctx),
        Command::Operator(cmd) => operator::run(&ctx, cmd),
        Command::Read(args) => generic::read(&ctx, args),
        Command::Write(args) => generic::write(&ctx, args),
        Command::Delete(args) => generic::delete(&ctx, args),
        Command::List(args) => generic::list(&ctx, args),
        Command::Kv(cmd) => kv::run(&ctx, cmd),
        Command::Token(cmd) => token::run(&ctx, cmd),
        Command::Policy(cmd) => policy::run(&ctx, cmd),
        Command::Secrets(cmd) => secrets::run(&ctx, cmd),
        Command::Auth(cmd) => auth::run(&ctx, cmd),
        Command::Audit(cmd) => audit::run(&ctx, cmd),
        Command::Login(args) => login::run(&ctx, args),
        Command::Unwrap(args) => unwrap::run(&ctx, args),
        Command::Version => emit(&format!("Bunker v{}", env!("CARGO_PKG_VERSION"))).map(|()| 0),
    };
    match result {
        Ok(code) => code,
        Err(err) => report(&err),
    }
}

fn report(err: &CliError) -> u8 {
    emit_err(&err.to_string());
    err.exit_code()
}

/// Rewrites Go-style single-dash long flags for clap: `-name` and `-name=value` become
/// `--name` and `--name=value` when `name` has at least two characters and starts with a
/// letter. argv\[0\], short flags (`-h`), negative numbers, a bare `-` (stdin), arguments
/// already starting with `--`, and everything after a literal `--` are left alone.
pub fn normalize_args(args: Vec<OsString>) -> Vec<OsString> {
    let mut out = Vec::with_capacity(args.len());
    let mut rest = args.into_iter();
    if let Some(argv0) = rest.next() {
        out.push(argv0);
    }
    let mut after_terminator = false;
    for arg in rest {
        if !after_terminator {
            if arg == "--" {
                after_terminator = true;
            } else if let Some(text) = arg.to_str().filter(|t| is_single_dash_long(t)) {
                out.push(OsString::from(format!("-{text}")));
                continue;
            }
        }
        out.push(arg);
    }
    out
}

fn is_single_dash_long(arg: &str) -> bool {
    let Some(rest) = arg.strip_prefix('-') else {
        return false;
    };
    let name = rest.split_once('=').map_or(rest, |(name, _)| name);
    let mut chars = name.chars();
    let starts_with_letter = chars.next().is_some_and(|c| c.is_ascii_alphabetic());
    starts_with_letter && chars.next().is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    fn parse(list: &[&str]) -> Result<Cli, clap::Error> {
        flags::parse::<Cli, _, _>(normalize_args(os(list)))
    }

    #[test]
    fn single_dash_long_flags_get_two_dashes() {
        assert_eq!(
            normalize_args(os(&[
                "bunker",
                "server",
                "-dev",
                "-dev-root-token-id=root",
                "-format=json",
                "-key-shares=5"
            ])),
            os(&[
                "bunker",
                "server",
                "--dev",
                "--dev-root-token-id=root",
                "--format=json",
                "--key-shares=5"
            ])
        );
    }

    #[test]
    fn other_arguments_are_untouched() {
        let args = os(&[
            "-bunker",
            "-h",
            "-",
            "--already",
            "-5",
            "-1h",
            "a=-b",
            "-x=1",
            "secret/foo",
        ]);
        assert_eq!(normalize_args(args.clone()), args);
    }

    #[test]
    fn nothing_after_double_dash_is_rewritten() {
        assert_eq!(
            normalize_args(os(&["bunker", "write", "-force", "--", "-path", "k=v"])),
            os(&["bunker", "write", "--force", "--", "-path", "k=v"])
        );
    }

    #[test]
    fn server_flags_reach_the_callback() -> Result<(), clap::Error> {
        let cli = parse(&[
            "bunker",
            "server",
            "-dev",
            "-dev-root-token-id=root",
            "-dev-listen-address=127.0.0.1:8300",
            "-log-level=debug",
        ])?;
        let Command::Server(args) = cli.command else {
            panic!("not the server command");
        };
        assert!(args.dev);
        assert_eq!(args.dev_root_token_id.as_deref(), Some("root"));
        assert_eq!(args.dev_listen_address, "127.0.0.1:8300");
        assert_eq!(args.log_level.as_deref(), Some("debug"));
        Ok(())
    }

    #[test]
    fn go_style_booleans_accept_values() -> Result<(), clap::Error> {
        let cli = parse(&["bunker", "server", "-dev=false", "-config=/etc/bunker.hcl"])?;
        let Command::Server(args) = cli.command else {
            panic!("not the server command");
        };
        assert!(!args.dev);
        assert_eq!(args.config, Some(PathBuf::from("/etc/bunker.hcl")));
        Ok(())
    }

    #[test]
    fn global_flags_work_after_the_subcommand() -> Result<(), clap::Error> {
        let cli = parse(&[
            "bunker",
            "kv",
            "get",
            "-format=json",
            "-address=http://127.0.0.1:8200",
            "-wrap-ttl=5m",
            "-tls-skip-verify",
            "secret/foo",
        ])?;
        assert_eq!(cli.global.tls_skip_verify, Some(true));
        assert_eq!(cli.global.format, Some(Format::Json));
        assert_eq!(cli.global.address.as_deref(), Some("http://127.0.0.1:8200"));
        assert_eq!(cli.global.wrap_ttl.as_deref(), Some("5m"));
        Ok(())
    }

    #[test]
    fn every_command_parses() {
        let commands: &[&[&str]] = &[
            &["status"],
            &["operator", "init", "-key-shares=1", "-key-threshold=1"],
            &["operator", "unseal", "-reset"],
            &["operator", "unseal", "abcd"],
            &["operator", "seal"],
            &["operator", "rotate"],
            &["operator", "key-status"],
            &["operator", "generate-root", "-init", "-otp=abc"],
            &["operator", "generate-root", "-nonce=n", "-"],
            &["operator", "generate-root", "-decode=enc", "-otp=abc"],
            &["operator", "generate-root", "-generate-otp"],
            &["operator", "generate-root", "-dr-token", "-init"],
            &[
                "operator",
                "rekey",
                "-init",
                "-key-shares=3",
                "-key-threshold=2",
            ],
            &["operator", "rekey", "-init", "-verify"],
            &["operator", "rekey", "-status"],
            &["operator", "rekey", "-cancel", "-verify"],
            &["operator", "rekey", "-nonce=n", "abcd"],
            &["operator", "rekey", "-verify", "-"],
            &["operator", "replication", "status", "-format=json"],
            &["operator", "replication", "primary", "enable"],
            &[
                "operator",
                "replication",
                "primary",
                "enable",
                "-primary-cluster-addr=10.0.0.1:8201",
            ],
            &["operator", "replication", "primary", "demote"],
            &["operator", "replication", "primary", "disable"],
            &[
                "operator",
                "replication",
                "primary",
                "secondary-token",
                "-id=b",
                "-ttl=30m",
            ],
            &[
                "operator",
                "replication",
                "primary",
                "revoke-secondary",
                "-id=b",
            ],
            &[
                "operator",
                "replication",
                "secondary",
                "enable",
                "-token=t",
                "-primary-api-addr=http://127.0.0.1:8200",
                "-ca-file=/ca.pem",
                "-ca-path=/cas",
            ],
            &["operator", "replication", "secondary", "promote", "-key=k"],
            &["operator", "replication", "secondary", "promote", "k"],
            &[
                "operator",
                "replication",
                "secondary",
                "promote",
                "-dr-operation-token=t",
                "-force",
                "-primary-cluster-addr=10.0.0.2:8201",
            ],
            &[
                "operator",
                "replication",
                "secondary",
                "update-primary",
                "-token=t",
                "-dr-operation-token=t",
            ],
            &[
                "operator",
                "replication",
                "secondary",
                "disable",
                "-dr-operation-token=t",
            ],
            &[
                "operator",
                "replication",
                "secondary",
                "generate-operation-token",
                "-init",
                "-otp=o",
            ],
            &[
                "operator",
                "replication",
                "secondary",
                "generate-operation-token",
                "-nonce=n",
                "k",
            ],
            &[
                "operator",
                "replication",
                "secondary",
                "generate-operation-token",
                "-decode=e",
                "-otp=o",
            ],
            &[
                "operator",
                "replication",
                "secondary",
                "delete-operation-token",
                "-dr-operation-token=t",
            ],
            &["read", "-field=foo", "secret/foo"],
            &["write", "secret/foo", "a=b", "c=@file", "-"],
            &["delete", "secret/foo"],
            &["list", "secret/"],
            &["kv", "get", "-mount=secret", "-version=2", "foo"],
            &["kv", "put", "-cas=0", "secret/foo", "a=b"],
            &["kv", "patch", "secret/foo", "a=b"],
            &["kv", "delete", "-versions=1,2", "secret/foo"],
            &["kv", "undelete", "-versions=1", "secret/foo"],
            &["kv", "destroy", "-versions=1", "secret/foo"],
            &["kv", "list", "secret/"],
            &["kv", "metadata", "get", "secret/foo"],
            &[
                "kv",
                "metadata",
                "put",
                "-max-versions=3",
                "-cas-required",
                "secret/foo",
            ],
            &["kv", "metadata", "delete", "secret/foo"],
            &[
                "token",
                "create",
                "-policy=a",
                "-policy=b",
                "-ttl=1h",
                "-renewable=true",
            ],
            &["token", "lookup", "-accessor", "acc"],
            &["token", "renew", "-increment=30m"],
            &["token", "revoke", "-self"],
            &["token", "revoke", "-mode=orphan", "tok"],
            &["token", "capabilities", "secret/foo"],
            &["policy", "write", "p", "-"],
            &["policy", "read", "p"],
            &["policy", "list"],
            &["policy", "delete", "p"],
            &["secrets", "enable", "-path=kv2", "-version=2", "kv"],
            &["secrets", "disable", "kv2"],
            &["secrets", "list", "-detailed"],
            &["secrets", "tune", "-max-lease-ttl=1h", "kv2"],
            &["audit", "enable", "file", "file_path=/tmp/audit.log"],
            &["audit", "disable", "file"],
            &["audit", "list"],
            &["login", "-"],
            &["login"],
            &["unwrap"],
            &["unwrap", "-field=foo", "-format=json", "hvs.wrapping"],
            &["kv", "get", "-wrap-ttl=2m", "secret/hello"],
            &["version"],
        ];
        for command in commands {
            let mut argv = vec!["bunker"];
            argv.extend_from_slice(command);
            if let Err(err) = parse(&argv) {
                panic!("{command:?} failed to parse: {err}");
            }
        }
    }

    #[test]
    fn bad_usage_is_rejected() {
        assert!(parse(&["bunker", "frobnicate"]).is_err());
        assert!(parse(&["bunker", "read"]).is_err());
        assert!(parse(&["bunker", "status", "-format=xml"]).is_err());
        assert!(parse(&["bunker", "token", "create", "-ttl=soon"]).is_err());
    }

    #[test]
    fn help_and_version_exit_zero() {
        let noop = |_: ServerArgs| Ok(());
        assert_eq!(run(os(&["bunker", "-version"]), noop), ExitCode::from(0));
        assert_eq!(run(os(&["bunker", "nope"]), noop), ExitCode::from(1));
    }

    #[test]
    fn server_callback_errors_exit_one() {
        let mut called = false;
        let code = run(os(&["bunker", "server", "-dev"]), |args| {
            called = args.dev;
            anyhow::bail!("listener failed")
        });
        assert!(called);
        assert_eq!(code, ExitCode::from(1));
    }
}
