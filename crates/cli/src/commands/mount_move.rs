//! `bunker secrets move` and `bunker auth move`: move a mount to a new path with its data
//! (`sys/remount`), then follow the migration (`sys/remount/status/<id>`) to its end, as
//! `vault secrets move` does.

use std::time::{Duration, Instant};

use clap::Args;
use serde_json::{json, Value};

use super::secrets::MountKind;
use super::{send_for_body, success, with_slash, CmdResult, Ctx};
use crate::client::{ApiRequest, Verb};
use crate::error::CliError;

/// How often the migration's status is asked for, and for how long.
const POLL_INTERVAL: Duration = Duration::from_millis(500);
const POLL_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Args, Debug)]
pub(crate) struct MoveArgs {
    /// The mount's current path.
    source: String,
    /// Its new path.
    destination: String,
}

/// `from` and `to` of the request: auth methods are addressed under `auth/`.
fn remount_body(args: &MoveArgs, kind: &MountKind) -> Result<Value, CliError> {
    let (source, destination) = (with_slash(&args.source), with_slash(&args.destination));
    if source == "/" || destination == "/" {
        return Err(CliError::Usage(
            "Both a source and a destination path are required".into(),
        ));
    }
    Ok(json!({
        "from": format!("{}{source}", kind.route_prefix),
        "to": format!("{}{destination}", kind.route_prefix),
    }))
}

pub(crate) fn move_mount(ctx: &Ctx, args: &MoveArgs, kind: &MountKind) -> CmdResult {
    let body = remount_body(args, kind)?;
    let (source, destination) = (with_slash(&args.source), with_slash(&args.destination));
    let what = format!("{} {source} to {destination}", kind.noun);
    let doing = format!("moving {what}");
    let client = ctx.client()?;
    let started = send_for_body(
        &client,
        ApiRequest::new(Verb::Post, "sys/remount").json(&body),
        &doing,
    )?;
    let id = started
        .pointer("/data/migration_id")
        .and_then(Value::as_str)
        .ok_or_else(|| CliError::Missing(format!("Error {doing}: no migration ID in the answer")))?
        .to_owned();
    success(
        ctx,
        &format!("Started moving {what}, with migration ID {id}"),
    )?;
    let deadline = Instant::now() + POLL_TIMEOUT;
    let checking = format!("checking the migration status of {id}");
    loop {
        let status = send_for_body(
            &client,
            ApiRequest::new(Verb::Get, format!("sys/remount/status/{id}")),
            &checking,
        )?;
        match status
            .pointer("/data/migration_info/status")
            .and_then(Value::as_str)
        {
            Some("success") => {
                return success(
                    ctx,
                    &format!("Success! Finished moving {what}, with migration ID {id}"),
                )
            }
            Some("failure") => {
                return Err(CliError::Missing(format!(
                    "Failure! Error encountered moving {what}, with migration ID {id}"
                )))
            }
            _ if Instant::now() >= deadline => {
                return Err(CliError::Missing(format!(
                    "Error {checking}: still not finished after {}s",
                    POLL_TIMEOUT.as_secs()
                )))
            }
            _ => std::thread::sleep(POLL_INTERVAL),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::secrets::{AUTH_METHODS, SECRETS_ENGINES};

    fn args(source: &str, destination: &str) -> MoveArgs {
        MoveArgs {
            source: source.into(),
            destination: destination.into(),
        }
    }

    #[test]
    fn auth_methods_move_under_auth() {
        assert_eq!(
            remount_body(&args("secret", "/kv/"), &SECRETS_ENGINES).ok(),
            Some(json!({"from": "secret/", "to": "kv/"}))
        );
        assert_eq!(
            remount_body(&args("approle", "machines"), &AUTH_METHODS).ok(),
            Some(json!({"from": "auth/approle/", "to": "auth/machines/"}))
        );
        assert!(remount_body(&args("", "kv"), &SECRETS_ENGINES).is_err());
    }
}
