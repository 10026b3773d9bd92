//! `read`, `write`, `delete` and `list`: raw access to any API path.

use clap::Args;
use serde_json::Value;

use super::{print_list, success, CmdResult, Ctx};
use crate::client::{ApiRequest, Verb};
use crate::error::{CliError, Doing};
use crate::input::{parse_kv_args, StdinSource};
use crate::output;

/// `bunker read [-field=NAME] PATH`
#[derive(Args, Debug)]
pub(crate) struct ReadArgs {
    /// Print only this field, with no trailing newline when piped.
    #[arg(long)]
    field: Option<String>,
    /// The path to read, e.g. `secret/foo` or `sys/mounts`.
    path: String,
}

/// `bunker write PATH [k=v | k=@file | k=- | @file | -]...`
#[derive(Args, Debug)]
pub(crate) struct WriteArgs {
    /// Print only this field of the response.
    #[arg(long)]
    field: Option<String>,
    /// Accepted for compatibility; writing without data is always allowed.
    #[arg(long, short = 'f')]
    force: bool,
    /// The path to write.
    path: String,
    /// Data: `k=v`, `k=@file` (file contents), `k=-` (stdin), `@file` or `-` (a JSON object).
    data: Vec<String>,
}

/// `bunker delete PATH`
#[derive(Args, Debug)]
pub(crate) struct DeleteArgs {
    /// The path to delete.
    path: String,
}

/// `bunker list PATH`
#[derive(Args, Debug)]
pub(crate) struct ListArgs {
    /// The path to list.
    path: String,
}

pub(crate) fn read(ctx: &Ctx, args: ReadArgs) -> CmdResult {
    let client = ctx.client()?;
    let response = client
        .send(ApiRequest::new(Verb::Get, &args.path).not_found_ok())
        .doing(format!("reading {}", args.path))?;
    let body = response
        .body
        .ok_or_else(|| CliError::not_found(&args.path))?;
    output::print_response(ctx.format(), &body, args.field.as_deref())?;
    Ok(0)
}

pub(crate) fn write(ctx: &Ctx, args: WriteArgs) -> CmdResult {
    let _ = args.force;
    let data = parse_kv_args(&args.data, &mut StdinSource::process())?;
    let client = ctx.client()?;
    let response = client
        .send(ApiRequest::new(Verb::Put, &args.path).json(&Value::Object(data)))
        .doing(format!("writing data to {}", args.path))?;
    match response.body {
        Some(body) => {
            output::print_response(ctx.format(), &body, args.field.as_deref())?;
            Ok(0)
        }
        None => success(ctx, &format!("Success! Data written to: {}", args.path)),
    }
}

pub(crate) fn delete(ctx: &Ctx, args: DeleteArgs) -> CmdResult {
    let client = ctx.client()?;
    client
        .send(ApiRequest::new(Verb::Delete, &args.path))
        .doing(format!("deleting {}", args.path))?;
    success(
        ctx,
        &format!("Success! Data deleted (if it existed) at: {}", args.path),
    )
}

pub(crate) fn list(ctx: &Ctx, args: ListArgs) -> CmdResult {
    let client = ctx.client()?;
    let response = client
        .send(ApiRequest::new(Verb::List, &args.path).not_found_ok())
        .doing(format!("listing {}", args.path))?;
    print_list(ctx, response.body.as_ref(), &args.path)
}
