//! `bunker secrets ...`: enable, disable, tune, list and move (`mount_move.rs`) secrets
//! engines (`sys/mounts`, `sys/remount`). The same commands manage auth methods (`sys/auth`,
//! see `auth.rs`) through [`MountKind`].

use clap::{Args, Subcommand};
use serde_json::{json, Map, Value};

pub(crate) use super::mount_move::{move_mount, MoveArgs};
use super::mount_table::{
    fetch_table, field, mount_map, options, replication, sorted_rows, with_description_and_local,
};
use super::{print_json_or_table, send_then_success, with_slash, CmdResult, Ctx};
use crate::client::{ApiRequest, Verb};
use crate::error::CliError;
use crate::input::{duration_flag, parse_options};
use crate::output::{self, cell};

#[derive(Subcommand, Debug)]
pub(crate) enum SecretsCommand {
    /// Enable a secrets engine (`kv-v2` means kv with version 2).
    Enable(EnableArgs),
    /// Disable the secrets engine at a path.
    Disable(PathArgs),
    /// List enabled secrets engines.
    List(ListArgs),
    /// Change a secrets engine's settings.
    Tune(TuneArgs),
    /// Move a secrets engine to a new path, with its data (`sys/remount`).
    Move(MoveArgs),
}

/// Settings shared by enable and tune.
#[derive(Args, Debug, Default)]
pub(crate) struct MountConfigArgs {
    /// Human-friendly description.
    #[arg(long)]
    description: Option<String>,
    /// Default lease TTL for this engine.
    #[arg(long, value_parser = duration_flag)]
    default_lease_ttl: Option<String>,
    /// Maximum lease TTL for this engine.
    #[arg(long, value_parser = duration_flag)]
    max_lease_ttl: Option<String>,
    /// Engine version (e.g. 2 for KV v2).
    #[arg(long)]
    version: Option<u32>,
    /// Engine options as `k=v`; repeatable.
    #[arg(long)]
    options: Vec<String>,
}

#[derive(Args, Debug, Default)]
pub(crate) struct EnableArgs {
    /// Mount path (defaults to the engine type).
    #[arg(long)]
    path: Option<String>,
    /// Do not replicate this mount to performance secondaries.
    #[arg(long)]
    local: bool,
    #[command(flatten)]
    config: MountConfigArgs,
    /// Engine type, e.g. `kv`, `kv-v2`.
    engine_type: String,
}

#[derive(Args, Debug)]
pub(crate) struct PathArgs {
    /// Mount path.
    path: String,
}

#[derive(Args, Debug)]
pub(crate) struct ListArgs {
    /// Show TTLs, options, replication and UUIDs too.
    #[arg(long)]
    detailed: bool,
}

#[derive(Args, Debug)]
pub(crate) struct TuneArgs {
    #[command(flatten)]
    config: MountConfigArgs,
    /// Mount path.
    path: String,
}

/// Which mount table a command manages.
pub(crate) struct MountKind {
    /// `sys/mounts` or `sys/auth`.
    api: &'static str,
    /// What one entry is called in messages.
    pub(crate) noun: &'static str,
    /// What precedes a mount path in the router (`auth/` for auth methods), as
    /// `sys/remount` names mounts.
    pub(crate) route_prefix: &'static str,
}

pub(crate) const SECRETS_ENGINES: MountKind = MountKind {
    api: "sys/mounts",
    noun: "secrets engine",
    route_prefix: "",
};

pub(crate) const AUTH_METHODS: MountKind = MountKind {
    api: "sys/auth",
    noun: "auth method",
    route_prefix: "auth/",
};

pub(crate) fn run(ctx: &Ctx, command: SecretsCommand) -> CmdResult {
    match command {
        SecretsCommand::Enable(args) => enable(ctx, &args, &SECRETS_ENGINES),
        SecretsCommand::Disable(args) => disable(ctx, &args, &SECRETS_ENGINES),
        SecretsCommand::List(args) => list(ctx, &args, &SECRETS_ENGINES),
        SecretsCommand::Tune(args) => tune(ctx, &args, &SECRETS_ENGINES),
        SecretsCommand::Move(args) => move_mount(ctx, &args, &SECRETS_ENGINES),
    }
}

/// The `config` (TTLs) and `options` (version, k=v) objects of a mount request.
struct MountSettings {
    config: Map<String, Value>,
    options: Map<String, Value>,
}

fn mount_settings(args: &MountConfigArgs) -> Result<MountSettings, CliError> {
    let mut config = Map::new();
    if let Some(ttl) = &args.default_lease_ttl {
        config.insert("default_lease_ttl".into(), json!(ttl));
    }
    if let Some(ttl) = &args.max_lease_ttl {
        config.insert("max_lease_ttl".into(), json!(ttl));
    }
    let mut options = parse_options(&args.options)?;
    if let Some(version) = args.version {
        options.insert("version".into(), json!(version.to_string()));
    }
    Ok(MountSettings { config, options })
}

/// The mount path and request body for `secrets enable`.
fn enable_request(args: &EnableArgs) -> Result<(String, Value), CliError> {
    let engine_type = args.engine_type.trim();
    if engine_type.is_empty() {
        return Err(CliError::Usage("An engine type is required".into()));
    }
    let path = args
        .path
        .as_deref()
        .unwrap_or(engine_type)
        .trim_matches('/');
    if path.is_empty() {
        return Err(CliError::Usage("The mount path cannot be empty".into()));
    }
    let MountSettings {
        config,
        mut options,
    } = mount_settings(&args.config)?;
    let mount_type = match engine_type {
        "kv-v2" => {
            options.insert("version".into(), json!("2"));
            "kv"
        }
        other => other,
    };
    let body = json!({ "type": mount_type, "config": config, "options": options });
    let body = with_description_and_local(body, args.config.description.as_deref(), args.local);
    Ok((path.to_string(), body))
}

pub(crate) fn enable(ctx: &Ctx, args: &EnableArgs, kind: &MountKind) -> CmdResult {
    let (path, body) = enable_request(args)?;
    let request = ApiRequest::new(Verb::Post, format!("{}/{path}", kind.api)).json(&body);
    let doing = format!("enabling {}", args.engine_type);
    let message = format!(
        "Success! Enabled the {} {} at: {}",
        args.engine_type,
        kind.noun,
        with_slash(&path)
    );
    send_then_success(ctx, request, doing, &message)
}

pub(crate) fn disable(ctx: &Ctx, args: &PathArgs, kind: &MountKind) -> CmdResult {
    let path = args.path.trim_matches('/');
    let request = ApiRequest::new(Verb::Delete, format!("{}/{path}", kind.api));
    let doing = format!("disabling {} at {}", kind.noun, with_slash(path));
    let message = format!(
        "Success! Disabled the {} (if it existed) at: {}",
        kind.noun,
        with_slash(path)
    );
    send_then_success(ctx, request, doing, &message)
}

pub(crate) fn tune(ctx: &Ctx, args: &TuneArgs, kind: &MountKind) -> CmdResult {
    let path = args.path.trim_matches('/');
    let MountSettings {
        config: mut body,
        options,
    } = mount_settings(&args.config)?;
    if !options.is_empty() {
        body.insert("options".into(), Value::Object(options));
    }
    if let Some(description) = &args.config.description {
        body.insert("description".into(), json!(description));
    }
    let request =
        ApiRequest::new(Verb::Post, format!("{}/{path}/tune", kind.api)).json(&Value::Object(body));
    let doing = format!("tuning {} {}", kind.noun, with_slash(path));
    let message = format!("Success! Tuned the {} at: {}", kind.noun, with_slash(path));
    send_then_success(ctx, request, doing, &message)
}

pub(crate) fn list(ctx: &Ctx, args: &ListArgs, kind: &MountKind) -> CmdResult {
    let doing = format!("listing {}s", kind.noun);
    let response = fetch_table(ctx, kind.api, &doing)?;
    print_json_or_table(ctx, &response, || {
        let (headers, rows) = mount_rows(&mount_map(&response), args.detailed);
        output::columns(&headers, &rows)
    })
}

fn ttl_text(config: Option<&Value>, key: &str) -> String {
    match config.and_then(|c| c.get(key)).and_then(Value::as_u64) {
        None | Some(0) => "system".into(),
        Some(secs) => output::human_duration(secs),
    }
}

/// Headers and rows for `secrets list`, sorted by path.
fn mount_rows(
    mounts: &Map<String, Value>,
    detailed: bool,
) -> (Vec<&'static str>, Vec<Vec<String>>) {
    let rows = sorted_rows(mounts, |path, mount| {
        let mut row = vec![path.clone(), field(mount, "type"), field(mount, "accessor")];
        if detailed {
            let config = mount.get("config");
            row.extend([
                ttl_text(config, "default_lease_ttl"),
                ttl_text(config, "max_lease_ttl"),
                replication(mount),
                mount
                    .get("seal_wrap")
                    .map(cell)
                    .unwrap_or_else(|| "false".into()),
                options(mount),
                field(mount, "description"),
                field(mount, "uuid"),
            ]);
        } else {
            row.push(field(mount, "description"));
        }
        row
    });
    let headers = if detailed {
        vec![
            "Path",
            "Plugin",
            "Accessor",
            "Default TTL",
            "Max TTL",
            "Replication",
            "Seal Wrap",
            "Options",
            "Description",
            "UUID",
        ]
    } else {
        vec!["Path", "Type", "Accessor", "Description"]
    };
    (headers, rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enable_args(engine_type: &str) -> EnableArgs {
        EnableArgs {
            engine_type: engine_type.into(),
            ..EnableArgs::default()
        }
    }

    #[test]
    fn kv_v2_alias_sets_the_version() -> Result<(), CliError> {
        let (path, body) = enable_request(&enable_args("kv-v2"))?;
        assert_eq!(path, "kv-v2");
        assert_eq!(
            body,
            json!({"type": "kv", "config": {}, "options": {"version": "2"}})
        );
        Ok(())
    }

    #[test]
    fn enable_body_has_path_version_and_ttls() -> Result<(), CliError> {
        let args = EnableArgs {
            path: Some("/team/".into()),
            local: true,
            config: MountConfigArgs {
                description: Some("team secrets".into()),
                default_lease_ttl: Some("1h".into()),
                max_lease_ttl: Some("24h".into()),
                version: Some(2),
                options: vec!["x=y".into()],
            },
            engine_type: "kv".into(),
        };
        let (path, body) = enable_request(&args)?;
        assert_eq!(path, "team");
        assert_eq!(
            body,
            json!({
                "type": "kv", "description": "team secrets", "local": true,
                "config": {"default_lease_ttl": "1h", "max_lease_ttl": "24h"},
                "options": {"version": "2", "x": "y"}
            })
        );
        Ok(())
    }

    #[test]
    fn mount_rows_sorted_with_ttls() {
        let mounts = mount_map(&json!({"data": {
            "sys/": {"type": "system", "accessor": "system_1", "description": "system"},
            "secret/": {"type": "kv", "accessor": "kv_1", "description": "",
                        "config": {"default_lease_ttl": 0, "max_lease_ttl": 3600},
                        "options": {"version": "2"}, "local": false}
        }}));
        let (headers, rows) = mount_rows(&mounts, false);
        assert_eq!(headers, vec!["Path", "Type", "Accessor", "Description"]);
        assert_eq!(
            rows.first().and_then(|r| r.first()).map(String::as_str),
            Some("secret/")
        );
        let (_, detailed) = mount_rows(&mounts, true);
        let secret = detailed.first().cloned().unwrap_or_default();
        assert_eq!(secret.get(3).map(String::as_str), Some("system"));
        assert_eq!(secret.get(4).map(String::as_str), Some("1h"));
        assert_eq!(secret.get(5).map(String::as_str), Some("replicated"));
    }
}
