//! One module per command group. Each command returns its exit code or a [`CliError`].

use serde_json::Value;

use crate::client::{ApiRequest, Client, ClientConfig};
use crate::error::{CliError, Doing, EXIT_OK};
use crate::output::{self, Format};
use crate::settings::Settings;
use crate::token_helper;

pub(crate) mod audit;
pub(crate) mod auth;
mod follow;
pub(crate) mod generate_root;
pub(crate) mod generic;
mod key_shares;
pub(crate) mod kv;
mod kv_path;
pub(crate) mod login;
mod mount_move;
mod mount_table;
pub(crate) mod operator;
pub(crate) mod policy;
pub(crate) mod rekey;
pub(crate) mod replication;
pub(crate) mod secrets;
pub(crate) mod snapshot;
pub(crate) mod status;
pub(crate) mod token;
pub(crate) mod unwrap;

/// What a command returns: its exit code, or the error to report.
pub(crate) type CmdResult = Result<u8, CliError>;

/// Shared state of one invocation: the resolved global settings.
pub(crate) struct Ctx {
    settings: Settings,
}

impl Ctx {
    pub(crate) fn new(settings: Settings) -> Self {
        Ctx { settings }
    }

    /// The output format chosen with `-format` / `VAULT_FORMAT`.
    pub(crate) fn format(&self) -> Format {
        self.settings.format
    }

    /// A client for the configured address, with `VAULT_TOKEN` or the stored token.
    pub(crate) fn client(&self) -> Result<Client, CliError> {
        let config = ClientConfig {
            address: self.settings.address.clone(),
            token: token_helper::current_token(),
            ca_cert: self.settings.ca_cert.clone(),
            skip_verify: self.settings.skip_verify,
            wrap_ttl: self.settings.wrap_ttl.clone(),
        };
        Client::new(config).map_err(CliError::ClientSetup)
    }
}

/// Prints "Success! ..." style messages; only in table format, as `vault` does.
pub(crate) fn success(ctx: &Ctx, message: &str) -> CmdResult {
    if ctx.format() == Format::Table {
        output::emit(message)?;
    }
    Ok(0)
}

/// Sends `request`, whose answer is not shown, then prints the success `message`.
pub(crate) fn send_then_success(
    ctx: &Ctx,
    request: ApiRequest,
    doing: impl Into<String>,
    message: &str,
) -> CmdResult {
    ctx.client()?.send(request).doing(doing)?;
    success(ctx, message)
}

/// The `keys` of a list response, as strings.
pub(crate) fn list_keys(response: &Value) -> Option<Vec<String>> {
    let keys = response.get("data")?.get("keys")?.as_array()?;
    Some(keys.iter().map(output::raw).collect())
}

/// The body of a response the command needs in order to print anything. An empty answer
/// (204) is reported as a remote error (exit 2) rather than shown as an empty table or `null`.
pub(crate) fn expect_body(body: Option<Value>, doing: &str) -> Result<Value, CliError> {
    body.ok_or_else(|| CliError::Missing(format!("Error {doing}: the server returned no data")))
}

/// Sends `request` and returns the body of its answer, which the command needs; `doing` names
/// the step in error messages.
pub(crate) fn send_for_body(
    client: &Client,
    request: ApiRequest,
    doing: &str,
) -> Result<Value, CliError> {
    let body = client.send(request).doing(doing)?.body;
    expect_body(body, doing)
}

/// In JSON format, prints `response` pretty and returns `true`; otherwise prints nothing.
fn emit_if_json(ctx: &Ctx, response: &Value) -> Result<bool, CliError> {
    if ctx.format() != Format::Json {
        return Ok(false);
    }
    output::emit(&output::pretty_json(response))?;
    Ok(true)
}

/// Prints a wrapped response's wrap info, or in JSON format the whole response, and returns
/// `true`; otherwise prints nothing: the caller prints its table.
pub(crate) fn print_wrapped_or_json(ctx: &Ctx, response: &Value) -> Result<bool, CliError> {
    Ok(output::print_if_wrapped(ctx.format(), response, None)? || emit_if_json(ctx, response)?)
}

/// Prints `response` as pretty JSON, or in table format the text `table` renders. For answers
/// to requests sent without wrapping; otherwise see [`print_json_or_table`].
pub(crate) fn emit_json_or_table(
    ctx: &Ctx,
    response: &Value,
    table: impl FnOnce() -> String,
) -> CmdResult {
    if !emit_if_json(ctx, response)? {
        output::emit(&table())?;
    }
    Ok(EXIT_OK)
}

/// Like [`emit_json_or_table`], but a wrapped response shows its wrap info instead.
pub(crate) fn print_json_or_table(
    ctx: &Ctx,
    response: &Value,
    table: impl FnOnce() -> String,
) -> CmdResult {
    if output::print_if_wrapped(ctx.format(), response, None)? {
        return Ok(EXIT_OK);
    }
    emit_json_or_table(ctx, response, table)
}

/// Prints a list response: a `Keys` column, or the keys as a JSON array. A wrapped response
/// shows its wrap info instead.
pub(crate) fn print_list(ctx: &Ctx, response: Option<&Value>, path: &str) -> CmdResult {
    if let Some(response) = response {
        if output::print_if_wrapped(ctx.format(), response, None)? {
            return Ok(0);
        }
    }
    let keys = response
        .and_then(list_keys)
        .ok_or_else(|| CliError::not_found(path))?;
    if let Some(response) = response {
        if ctx.format() == Format::Table {
            output::print_warnings(response);
        }
    }
    match ctx.format() {
        Format::Json => output::emit(&output::pretty_json(&Value::from(keys)))?,
        Format::Table => {
            let rows: Vec<Vec<String>> = keys.into_iter().map(|k| vec![k]).collect();
            output::emit(&output::columns(&["Keys"], &rows))?;
        }
    }
    Ok(0)
}

/// `mount/` with exactly one trailing slash, for messages.
pub(crate) fn with_slash(path: &str) -> String {
    format!("{}/", path.trim_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn list_keys_are_extracted() {
        let response = json!({"data": {"keys": ["a", "b/"]}});
        assert_eq!(
            list_keys(&response),
            Some(vec!["a".to_string(), "b/".to_string()])
        );
        assert_eq!(list_keys(&json!({"data": {}})), None);
    }

    #[test]
    fn empty_answers_are_remote_errors() {
        let err = expect_body(None, "looking up token");
        assert!(
            matches!(&err, Err(e) if e.exit_code() == crate::error::EXIT_REMOTE
                && e.to_string() == "Error looking up token: the server returned no data"),
            "{err:?}"
        );
        assert_eq!(
            expect_body(Some(json!({"a": 1})), "x").ok(),
            Some(json!({"a": 1}))
        );
    }

    #[test]
    fn mount_paths_get_one_slash() {
        assert_eq!(with_slash("secret"), "secret/");
        assert_eq!(with_slash("/secret//"), "secret/");
    }
}
