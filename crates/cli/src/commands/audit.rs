//! `bunker audit ...`: enable, disable and list audit devices (`sys/audit`).

use clap::{Args, Subcommand};
use serde_json::{json, Map, Value};

use super::mount_table::{
    fetch_table, field, mount_map, options, replication, sorted_rows, with_description_and_local,
};
use super::{print_wrapped_or_json, send_then_success, with_slash, CmdResult, Ctx};
use crate::client::{ApiRequest, Verb};
use crate::error::{CliError, EXIT_OK, EXIT_REMOTE};
use crate::input::parse_options;
use crate::output;

#[derive(Subcommand, Debug)]
pub(crate) enum AuditCommand {
    /// Enable an audit device, e.g. `audit enable file file_path=/var/log/bunker.log`.
    Enable(EnableArgs),
    /// Disable the audit device at a path.
    Disable(PathArgs),
    /// List enabled audit devices (exit 2 when there are none).
    List(ListArgs),
}

#[derive(Args, Debug, Default)]
pub(crate) struct EnableArgs {
    /// Path of the device (defaults to the type).
    #[arg(long)]
    path: Option<String>,
    /// Human-friendly description.
    #[arg(long)]
    description: Option<String>,
    /// Do not replicate this device.
    #[arg(long)]
    local: bool,
    /// Device type, e.g. `file`.
    device_type: String,
    /// Device options as `k=v`.
    options: Vec<String>,
}

#[derive(Args, Debug)]
pub(crate) struct PathArgs {
    /// Path of the device.
    path: String,
}

#[derive(Args, Debug)]
pub(crate) struct ListArgs {
    /// Show replication and options too.
    #[arg(long)]
    detailed: bool,
}

pub(crate) fn run(ctx: &Ctx, command: AuditCommand) -> CmdResult {
    match command {
        AuditCommand::Enable(args) => enable(ctx, &args),
        AuditCommand::Disable(args) => disable(ctx, &args),
        AuditCommand::List(args) => list(ctx, &args),
    }
}

/// The device path and request body for `audit enable`.
fn enable_request(args: &EnableArgs) -> Result<(String, Value), CliError> {
    let device_type = args.device_type.trim();
    let path = args
        .path
        .as_deref()
        .unwrap_or(device_type)
        .trim_matches('/');
    if device_type.is_empty() || path.is_empty() {
        return Err(CliError::Usage("An audit device type is required".into()));
    }
    let options = parse_options(&args.options)?;
    let body = json!({ "type": device_type, "options": options });
    let body = with_description_and_local(body, args.description.as_deref(), args.local);
    Ok((path.to_string(), body))
}

fn enable(ctx: &Ctx, args: &EnableArgs) -> CmdResult {
    let (path, body) = enable_request(args)?;
    let request = ApiRequest::new(Verb::Put, format!("sys/audit/{path}")).json(&body);
    let message = format!(
        "Success! Enabled the {} audit device at: {}",
        args.device_type,
        with_slash(&path)
    );
    send_then_success(ctx, request, "enabling audit device", &message)
}

fn disable(ctx: &Ctx, args: &PathArgs) -> CmdResult {
    let path = args.path.trim_matches('/');
    let request = ApiRequest::new(Verb::Delete, format!("sys/audit/{path}"));
    let message = format!(
        "Success! Disabled audit device (if it was enabled) at: {}",
        with_slash(path)
    );
    send_then_success(ctx, request, "disabling audit device", &message)
}

fn list(ctx: &Ctx, args: &ListArgs) -> CmdResult {
    let response = fetch_table(ctx, "sys/audit", "listing audit devices")?;
    if print_wrapped_or_json(ctx, &response)? {
        return Ok(EXIT_OK);
    }
    let devices = mount_map(&response);
    if devices.is_empty() {
        output::emit("No audit devices are enabled.")?;
        return Ok(EXIT_REMOTE);
    }
    let (headers, rows) = device_rows(&devices, args.detailed);
    output::emit(&output::columns(&headers, &rows))?;
    Ok(EXIT_OK)
}

fn device_rows(
    devices: &Map<String, Value>,
    detailed: bool,
) -> (Vec<&'static str>, Vec<Vec<String>>) {
    let rows = sorted_rows(devices, |path, device| {
        let mut row = vec![
            path.clone(),
            field(device, "type"),
            field(device, "description"),
        ];
        if detailed {
            row.extend([replication(device), options(device)]);
        }
        row
    });
    let headers = if detailed {
        vec!["Path", "Type", "Description", "Replication", "Options"]
    } else {
        vec!["Path", "Type", "Description"]
    };
    (headers, rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enable_defaults_path_to_type_and_collects_options() -> Result<(), CliError> {
        let args = EnableArgs {
            device_type: "file".into(),
            options: vec!["file_path=/tmp/audit.log".into()],
            ..EnableArgs::default()
        };
        let (path, body) = enable_request(&args)?;
        assert_eq!(path, "file");
        assert_eq!(
            body,
            json!({"type": "file", "options": {"file_path": "/tmp/audit.log"}})
        );
        Ok(())
    }

    #[test]
    fn device_rows_list_path_type_description() {
        let devices = mount_map(&json!({"data": {
            "file/": {"type": "file", "description": "", "options": {"file_path": "x"}}
        }}));
        let (headers, rows) = device_rows(&devices, true);
        assert_eq!(headers.len(), 5);
        assert_eq!(
            rows,
            vec![vec![
                "file/".to_string(),
                "file".to_string(),
                String::new(),
                "replicated".to_string(),
                r#"{"file_path":"x"}"#.to_string()
            ]]
        );
    }
}
