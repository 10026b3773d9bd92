//! `bunker unwrap [TOKEN]`: return the response a wrapping token stands for
//! (`PUT sys/wrapping/unwrap`), as `vault unwrap` does.

use clap::Args;
use serde_json::json;

use super::{list_keys, print_list, CmdResult, Ctx};
use crate::client::{ApiRequest, Verb};
use crate::error::{CliError, Doing, EXIT_OK};
use crate::output::{self, Format};
use crate::token_helper;

/// The unwrap endpoint.
const UNWRAP_PATH: &str = "sys/wrapping/unwrap";

#[derive(Args, Debug)]
pub(crate) struct UnwrapArgs {
    /// Print only this field (e.g. `-field=token` for a wrapped token).
    #[arg(long)]
    field: Option<String>,
    /// The wrapping token; the current token (VAULT_TOKEN or the token helper) when omitted.
    token: Option<String>,
}

/// How the wrapping token reaches the server.
#[derive(Debug, PartialEq, Eq)]
enum Plan {
    /// The configured token is the wrapping token: it goes in `X-Vault-Token`, with no body.
    SelfUnwrap,
    /// Sent as `{"token": ...}`, authenticated by the configured token.
    InBody(String),
    /// No token is configured: the wrapping token itself goes in `X-Vault-Token`.
    AsClientToken(String),
}

/// Picks the [`Plan`] for the `TOKEN` argument and the configured token (as Vault's API
/// client does: a `TOKEN` equal to the configured token is a self-unwrap).
fn plan(argument: Option<&str>, configured: Option<&str>) -> Result<Plan, CliError> {
    let argument = argument.map(str::trim).filter(|t| !t.is_empty());
    match (argument, configured) {
        (None, Some(_)) => Ok(Plan::SelfUnwrap),
        (None, None) => Err(CliError::Usage(
            "No wrapping token: give it as an argument, or set VAULT_TOKEN to it".into(),
        )),
        (Some(token), None) => Ok(Plan::AsClientToken(token.to_string())),
        (Some(token), Some(current)) if token == current => Ok(Plan::SelfUnwrap),
        (Some(token), Some(_)) => Ok(Plan::InBody(token.to_string())),
    }
}

pub(crate) fn run(ctx: &Ctx, args: UnwrapArgs) -> CmdResult {
    let configured = token_helper::current_token();
    let plan = plan(
        args.token.as_deref(),
        configured.as_deref().map(String::as_str),
    )?;
    let request = ApiRequest::new(Verb::Put, UNWRAP_PATH);
    let request = match &plan {
        Plan::SelfUnwrap => request,
        Plan::InBody(token) => request.json(&json!({ "token": token })),
        Plan::AsClientToken(token) => request.with_token(token),
    };
    let response = ctx.client()?.send(request).doing("unwrapping")?.body;
    let Some(response) = response else {
        if ctx.format() == Format::Table {
            output::emit("Successfully unwrapped. There was no data in the wrapped secret.")?;
        }
        return Ok(EXIT_OK);
    };
    // A wrapped list (`bunker list -wrap-ttl=...`) is shown as a list, as with `vault unwrap`.
    let is_list = list_keys(&response).is_some() && output::wrap_info(&response).is_none();
    if is_list && args.field.is_none() && ctx.format() == Format::Table {
        return print_list(ctx, Some(&response), UNWRAP_PATH);
    }
    output::print_response(ctx.format(), &response, args.field.as_deref())?;
    Ok(EXIT_OK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::{render_response, Rendered};
    use serde_json::Value;

    #[test]
    fn without_an_argument_the_current_token_unwraps_itself() {
        assert_eq!(plan(None, Some("hvs.wrap")).ok(), Some(Plan::SelfUnwrap));
        assert_eq!(
            plan(Some("  "), Some("hvs.wrap")).ok(),
            Some(Plan::SelfUnwrap)
        );
        assert!(matches!(plan(None, None), Err(CliError::Usage(_))));
    }

    #[test]
    fn an_argument_goes_in_the_body_or_the_header() {
        assert_eq!(
            plan(Some("hvs.wrap"), Some("root")).ok(),
            Some(Plan::InBody("hvs.wrap".into()))
        );
        assert_eq!(
            plan(Some(" hvs.wrap\n"), None).ok(),
            Some(Plan::AsClientToken("hvs.wrap".into()))
        );
        assert_eq!(
            plan(Some("hvs.wrap"), Some("hvs.wrap")).ok(),
            Some(Plan::SelfUnwrap)
        );
    }

    fn text(rendered: Result<Rendered, CliError>) -> String {
        match rendered {
            Ok(Rendered::Text(text)) => text,
            other => panic!("expected text, got {other:?}"),
        }
    }

    #[test]
    fn an_unwrapped_kv_secret_shows_its_data() {
        let response = json!({
            "lease_id": "", "lease_duration": 0, "renewable": false, "auth": null,
            "wrap_info": null, "warnings": null,
            "data": {"data": {"foo": "bar"}, "metadata": {"version": 1}}
        });
        let table = text(render_response(Format::Table, &response, None));
        assert!(table.contains(r#"data        {"foo":"bar"}"#), "{table}");
        assert!(table.contains(r#"metadata    {"version":1}"#), "{table}");
        let json = text(render_response(Format::Json, &response, None));
        assert_eq!(serde_json::from_str::<Value>(&json).ok(), Some(response));
    }

    #[test]
    fn an_unwrapped_token_shows_the_auth_block() {
        let response = json!({
            "lease_id": "", "lease_duration": 0, "renewable": false, "data": null,
            "wrap_info": null, "warnings": null,
            "auth": {"client_token": "hvs.new", "accessor": "acc", "lease_duration": 2764800,
                     "renewable": true, "policies": ["default"],
                     "token_policies": ["default"], "metadata": null}
        });
        let table = text(render_response(Format::Table, &response, None));
        let keys: Vec<&str> = table
            .lines()
            .skip(2)
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        assert_eq!(
            keys.get(..5),
            Some(
                &[
                    "token",
                    "token_accessor",
                    "token_duration",
                    "token_renewable",
                    "token_policies"
                ][..]
            )
        );
        assert!(table.contains("token_duration       768h"), "{table}");
        assert_eq!(
            render_response(Format::Table, &response, Some("token")).ok(),
            Some(Rendered::Field("hvs.new".into()))
        );
    }
}
