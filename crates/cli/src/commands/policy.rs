//! `bunker policy ...`: ACL policies under `sys/policies/acl/`.

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::{list_keys, success, CmdResult, Ctx};
use crate::client::{ApiRequest, Verb};
use crate::error::{CliError, Doing, EXIT_OK};
use crate::input::{read_file_or_stdin, StdinSource};
use crate::output::{self, Format};

#[derive(Subcommand, Debug)]
pub(crate) enum PolicyCommand {
    /// Upload a policy from a file (or `-` for stdin).
    Write(WriteArgs),
    /// Print a policy's rules.
    Read(NameArgs),
    /// List policy names.
    List,
    /// Delete a policy.
    Delete(NameArgs),
}

#[derive(Args, Debug)]
pub(crate) struct WriteArgs {
    /// Policy name.
    name: String,
    /// HCL or JSON policy file, or `-` for stdin.
    file: String,
}

#[derive(Args, Debug)]
pub(crate) struct NameArgs {
    /// Policy name.
    name: String,
}

pub(crate) fn run(ctx: &Ctx, command: PolicyCommand) -> CmdResult {
    match command {
        PolicyCommand::Write(args) => write(ctx, args),
        PolicyCommand::Read(args) => read(ctx, args),
        PolicyCommand::List => list(ctx),
        PolicyCommand::Delete(args) => delete(ctx, args),
    }
}

fn policy_path(name: &str) -> Result<String, CliError> {
    let name = name.trim();
    if name.is_empty() {
        return Err(CliError::Usage(format!("Invalid policy name {name:?}")));
    }
    Ok(format!("sys/policies/acl/{name}"))
}

fn write(ctx: &Ctx, args: WriteArgs) -> CmdResult {
    let path = policy_path(&args.name)?;
    let rules = read_file_or_stdin(&args.file, &mut StdinSource::process())?;
    ctx.client()?
        .send(ApiRequest::new(Verb::Put, path).json(&json!({ "policy": rules })))
        .doing(format!("uploading policy {}", args.name))?;
    success(ctx, &format!("Success! Uploaded policy: {}", args.name))
}

fn read(ctx: &Ctx, args: NameArgs) -> CmdResult {
    let path = policy_path(&args.name)?;
    let response = ctx
        .client()?
        .send(ApiRequest::new(Verb::Get, path).not_found_ok())
        .doing(format!("reading policy {}", args.name))?
        .body
        .ok_or_else(|| CliError::Missing(format!("No policy named: {}", args.name)))?;
    if output::print_if_wrapped(ctx.format(), &response, None)? {
        return Ok(EXIT_OK);
    }
    match ctx.format() {
        Format::Json => output::emit(&output::pretty_json(&response))?,
        Format::Table => output::emit(&policy_text(&response))?,
    }
    Ok(EXIT_OK)
}

/// The rules text of a policy response (`data.policy`, or `rules` from older servers).
fn policy_text(response: &Value) -> String {
    let data = response.get("data").unwrap_or(response);
    data.get("policy")
        .or_else(|| data.get("rules"))
        .map(output::raw)
        .unwrap_or_default()
}

fn list(ctx: &Ctx) -> CmdResult {
    let response = ctx
        .client()?
        .send(ApiRequest::new(Verb::List, "sys/policies/acl").not_found_ok())
        .doing("listing policies")?
        .body;
    if let Some(response) = &response {
        if output::print_if_wrapped(ctx.format(), response, None)? {
            return Ok(EXIT_OK);
        }
    }
    let names = response.as_ref().and_then(list_keys).unwrap_or_default();
    match ctx.format() {
        Format::Json => output::emit(&output::pretty_json(&json!(names)))?,
        Format::Table if names.is_empty() => {}
        Format::Table => output::emit(&names.join("\n"))?,
    }
    Ok(EXIT_OK)
}

fn delete(ctx: &Ctx, args: NameArgs) -> CmdResult {
    let path = policy_path(&args.name)?;
    ctx.client()?
        .send(ApiRequest::new(Verb::Delete, path))
        .doing(format!("deleting policy {}", args.name))?;
    success(ctx, &format!("Success! Deleted policy: {}", args.name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_names_are_checked() {
        assert_eq!(
            policy_path("dev").ok().as_deref(),
            Some("sys/policies/acl/dev")
        );
        assert!(policy_path("").is_err());
        assert!(policy_path("  ").is_err());
        // Vault takes any other name.
        assert_eq!(
            policy_path("['testpolicy']").ok().as_deref(),
            Some("sys/policies/acl/['testpolicy']")
        );
    }

    #[test]
    fn rules_text_is_found() {
        let rules = "path \"secret/*\" { capabilities = [\"read\"] }";
        assert_eq!(
            policy_text(&json!({"data": {"name": "p", "policy": rules}})),
            rules
        );
        assert_eq!(policy_text(&json!({"rules": rules})), rules);
    }
}
