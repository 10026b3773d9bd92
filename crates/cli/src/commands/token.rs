//! `bunker token ...`: create, lookup, renew, revoke, capabilities.

use clap::{Args, Subcommand};
use serde_json::{json, Map, Value};

use super::{print_json_or_table, send_for_body, success, CmdResult, Ctx};
use crate::client::{ApiRequest, Verb};
use crate::error::{CliError, Doing, EXIT_OK};
use crate::input::{duration_flag, parse_options};
use crate::output;

#[derive(Subcommand, Debug)]
pub(crate) enum TokenCommand {
    /// Create a token (a child of the current one unless -orphan).
    Create(CreateArgs),
    /// Show a token's properties (the current token when none is given).
    Lookup(LookupArgs),
    /// Extend a token's lease (the current token when none is given).
    Renew(RenewArgs),
    /// Revoke a token and, unless -mode=orphan, its children.
    Revoke(RevokeArgs),
    /// Show a token's capabilities on a path.
    Capabilities(CapabilitiesArgs),
}

#[derive(Args, Debug, Default)]
pub(crate) struct CreateArgs {
    /// Policy to attach; repeatable or comma-separated.
    #[arg(long, value_delimiter = ',')]
    policy: Vec<String>,
    /// Initial TTL, e.g. `1h`.
    #[arg(long, value_parser = duration_flag)]
    ttl: Option<String>,
    /// Hard limit on the token's lifetime.
    #[arg(long, value_parser = duration_flag)]
    explicit_max_ttl: Option<String>,
    /// Make a periodic token renewed for this period.
    #[arg(long, value_parser = duration_flag)]
    period: Option<String>,
    /// Create a token with no parent.
    #[arg(long)]
    orphan: bool,
    /// Do not attach the `default` policy.
    #[arg(long)]
    no_default_policy: bool,
    /// Name shown in audit logs and lookups.
    #[arg(long)]
    display_name: Option<String>,
    /// Number of uses before the token is revoked (0 = unlimited).
    #[arg(long)]
    use_limit: Option<u64>,
    /// Token type.
    #[arg(long = "type", value_parser = ["service", "batch", "default"])]
    token_type: Option<String>,
    /// Create the token against this token role.
    #[arg(long)]
    role: Option<String>,
    /// Whether the token may be renewed.
    #[arg(long)]
    renewable: Option<bool>,
    /// Metadata as `k=v`; repeatable.
    #[arg(long)]
    metadata: Vec<String>,
    /// Explicit token id (root only).
    #[arg(long)]
    id: Option<String>,
    /// Print only this field (e.g. `-field=token`).
    #[arg(long)]
    field: Option<String>,
}

#[derive(Args, Debug)]
pub(crate) struct LookupArgs {
    /// Treat the argument as an accessor.
    #[arg(long)]
    accessor: bool,
    /// Print only this field.
    #[arg(long)]
    field: Option<String>,
    /// The token (or accessor); the current token when omitted.
    token: Option<String>,
}

#[derive(Args, Debug)]
pub(crate) struct RenewArgs {
    /// Requested extension, e.g. `1h`.
    #[arg(long, short = 'i', value_parser = duration_flag)]
    increment: Option<String>,
    /// Print only this field.
    #[arg(long)]
    field: Option<String>,
    /// The token; the current token when omitted.
    token: Option<String>,
}

#[derive(Args, Debug, Default)]
pub(crate) struct RevokeArgs {
    /// Revoke the current token.
    #[arg(long = "self")]
    revoke_self: bool,
    /// Treat the argument as an accessor.
    #[arg(long)]
    accessor: bool,
    /// `orphan`: keep the children; `path`: revoke tokens created under this path prefix.
    #[arg(long, value_parser = ["orphan", "path"])]
    mode: Option<String>,
    /// The token (or accessor, or path prefix).
    token: Option<String>,
}

#[derive(Args, Debug)]
pub(crate) struct CapabilitiesArgs {
    /// `[TOKEN] PATH`: the current token's capabilities when only PATH is given.
    #[arg(num_args = 1..=2, required = true, value_names = ["TOKEN", "PATH"])]
    args: Vec<String>,
}

pub(crate) fn run(ctx: &Ctx, command: TokenCommand) -> CmdResult {
    match command {
        TokenCommand::Create(args) => create(ctx, &args),
        TokenCommand::Lookup(args) => lookup(ctx, &args),
        TokenCommand::Renew(args) => renew(ctx, &args),
        TokenCommand::Revoke(args) => revoke(ctx, &args),
        TokenCommand::Capabilities(args) => capabilities(ctx, &args),
    }
}

/// The endpoint and body for `token create`.
fn create_request(args: &CreateArgs) -> Result<(String, Value), CliError> {
    let path = match (&args.role, args.orphan) {
        (Some(role), _) => format!("auth/token/create/{role}"),
        (None, true) => "auth/token/create-orphan".to_string(),
        (None, false) => "auth/token/create".to_string(),
    };
    let mut body = Map::new();
    if !args.policy.is_empty() {
        body.insert("policies".into(), json!(args.policy));
    }
    let strings = [
        ("ttl", &args.ttl),
        ("explicit_max_ttl", &args.explicit_max_ttl),
        ("period", &args.period),
        ("display_name", &args.display_name),
        ("type", &args.token_type),
        ("id", &args.id),
    ];
    for (key, value) in strings {
        if let Some(value) = value {
            body.insert(key.into(), json!(value));
        }
    }
    if args.no_default_policy {
        body.insert("no_default_policy".into(), json!(true));
    }
    if args.orphan && args.role.is_some() {
        body.insert("no_parent".into(), json!(true));
    }
    if let Some(uses) = args.use_limit {
        body.insert("num_uses".into(), json!(uses));
    }
    if let Some(renewable) = args.renewable {
        body.insert("renewable".into(), json!(renewable));
    }
    if !args.metadata.is_empty() {
        body.insert("meta".into(), Value::Object(parse_options(&args.metadata)?));
    }
    Ok((path, Value::Object(body)))
}

fn create(ctx: &Ctx, args: &CreateArgs) -> CmdResult {
    let (path, body) = create_request(args)?;
    let request = ApiRequest::new(Verb::Post, &path).json(&body);
    let response = send_for_body(&ctx.client()?, request, "creating token")?;
    output::print_response(ctx.format(), &response, args.field.as_deref())?;
    Ok(EXIT_OK)
}

fn lookup(ctx: &Ctx, args: &LookupArgs) -> CmdResult {
    let request = match (&args.token, args.accessor) {
        (Some(accessor), true) => ApiRequest::new(Verb::Post, "auth/token/lookup-accessor")
            .json(&json!({ "accessor": accessor })),
        (None, true) => {
            return Err(CliError::Usage(
                "-accessor needs the accessor as an argument".into(),
            ))
        }
        (Some(token), false) => {
            ApiRequest::new(Verb::Post, "auth/token/lookup").json(&json!({ "token": token }))
        }
        (None, false) => ApiRequest::new(Verb::Get, "auth/token/lookup-self"),
    };
    let response = send_for_body(&ctx.client()?, request, "looking up token")?;
    output::print_response(ctx.format(), &response, args.field.as_deref())?;
    Ok(EXIT_OK)
}

fn renew(ctx: &Ctx, args: &RenewArgs) -> CmdResult {
    let mut body = Map::new();
    if let Some(increment) = &args.increment {
        body.insert("increment".into(), json!(increment));
    }
    let path = match &args.token {
        Some(token) => {
            body.insert("token".into(), json!(token));
            "auth/token/renew"
        }
        None => "auth/token/renew-self",
    };
    let request = ApiRequest::new(Verb::Put, path).json(&Value::Object(body));
    let response = send_for_body(&ctx.client()?, request, "renewing token")?;
    output::print_response(ctx.format(), &response, args.field.as_deref())?;
    Ok(EXIT_OK)
}

/// The endpoint and body for `token revoke`, after checking the flag combination.
fn revoke_request(args: &RevokeArgs) -> Result<(String, Option<Value>), CliError> {
    if args.revoke_self {
        if args.token.is_some() || args.accessor || args.mode.is_some() {
            return Err(CliError::Usage(
                "-self cannot be combined with a token, -accessor or -mode".into(),
            ));
        }
        return Ok(("auth/token/revoke-self".into(), None));
    }
    let token = args.token.as_deref().ok_or_else(|| {
        CliError::Usage("Not enough arguments: give a token, or use -self".into())
    })?;
    match (args.accessor, args.mode.as_deref()) {
        (true, None) => Ok((
            "auth/token/revoke-accessor".into(),
            Some(json!({ "accessor": token })),
        )),
        (true, Some(_)) => Err(CliError::Usage(
            "-mode cannot be combined with -accessor".into(),
        )),
        (false, Some("orphan")) => Ok((
            "auth/token/revoke-orphan".into(),
            Some(json!({ "token": token })),
        )),
        (false, Some(_)) => Ok((
            format!("sys/leases/revoke-prefix/{}", token.trim_start_matches('/')),
            None,
        )),
        (false, None) => Ok(("auth/token/revoke".into(), Some(json!({ "token": token })))),
    }
}

fn revoke(ctx: &Ctx, args: &RevokeArgs) -> CmdResult {
    let (path, body) = revoke_request(args)?;
    let mut request = ApiRequest::new(Verb::Put, path);
    if let Some(body) = &body {
        request = request.json(body);
    }
    ctx.client()?.send(request).doing("revoking token")?;
    success(ctx, "Success! Revoked token (if it existed)")
}

fn capabilities(ctx: &Ctx, args: &CapabilitiesArgs) -> CmdResult {
    let (token, path) = match args.args.as_slice() {
        [path] => (None, path),
        [token, path] => (Some(token), path),
        _ => return Err(CliError::Usage("Expected [TOKEN] PATH".into())),
    };
    let request = match token {
        Some(token) => ApiRequest::new(Verb::Post, "sys/capabilities")
            .json(&json!({ "token": token, "paths": [path] })),
        None => {
            ApiRequest::new(Verb::Post, "sys/capabilities-self").json(&json!({ "paths": [path] }))
        }
    };
    let response = send_for_body(&ctx.client()?, request, "listing capabilities")?;
    print_json_or_table(ctx, &response, || {
        capability_list(&response, path).join(", ")
    })
}

/// The capabilities on `path` from a capabilities response, sorted.
fn capability_list(response: &Value, path: &str) -> Vec<String> {
    let lookup = |container: &Value| -> Option<Vec<String>> {
        let list = container
            .get(path)
            .or_else(|| container.get("capabilities"))?
            .as_array()?;
        Some(list.iter().map(output::raw).collect())
    };
    let mut list = response
        .get("data")
        .and_then(lookup)
        .or_else(|| lookup(response))
        .unwrap_or_default();
    list.sort();
    list
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_picks_the_endpoint() -> Result<(), CliError> {
        let plain = CreateArgs::default();
        assert_eq!(create_request(&plain)?.0, "auth/token/create");
        let orphan = CreateArgs {
            orphan: true,
            ..CreateArgs::default()
        };
        assert_eq!(create_request(&orphan)?.0, "auth/token/create-orphan");
        let role = CreateArgs {
            role: Some("ci".into()),
            ..CreateArgs::default()
        };
        assert_eq!(create_request(&role)?.0, "auth/token/create/ci");
        Ok(())
    }

    #[test]
    fn create_body_carries_only_given_flags() -> Result<(), CliError> {
        let args = CreateArgs {
            policy: vec!["a".into(), "b".into()],
            ttl: Some("1h".into()),
            no_default_policy: true,
            use_limit: Some(2),
            token_type: Some("batch".into()),
            renewable: Some(false),
            metadata: vec!["user=ann".into()],
            ..CreateArgs::default()
        };
        assert_eq!(
            create_request(&args)?.1,
            json!({
                "policies": ["a", "b"], "ttl": "1h", "no_default_policy": true,
                "num_uses": 2, "type": "batch", "renewable": false, "meta": {"user": "ann"}
            })
        );
        assert_eq!(create_request(&CreateArgs::default())?.1, json!({}));
        Ok(())
    }

    #[test]
    fn revoke_picks_the_endpoint() -> Result<(), CliError> {
        let token = |mode: Option<&str>, accessor: bool| RevokeArgs {
            token: Some("t".into()),
            mode: mode.map(str::to_string),
            accessor,
            ..RevokeArgs::default()
        };
        assert_eq!(revoke_request(&token(None, false))?.0, "auth/token/revoke");
        assert_eq!(
            revoke_request(&token(Some("orphan"), false))?.0,
            "auth/token/revoke-orphan"
        );
        assert_eq!(
            revoke_request(&token(None, true))?,
            (
                "auth/token/revoke-accessor".to_string(),
                Some(json!({"accessor": "t"}))
            )
        );
        let self_args = RevokeArgs {
            revoke_self: true,
            ..RevokeArgs::default()
        };
        assert_eq!(
            revoke_request(&self_args)?,
            ("auth/token/revoke-self".into(), None)
        );
        Ok(())
    }

    #[test]
    fn revoke_rejects_bad_combinations() {
        assert!(revoke_request(&RevokeArgs::default()).is_err());
        let both = RevokeArgs {
            revoke_self: true,
            token: Some("t".into()),
            ..RevokeArgs::default()
        };
        assert!(revoke_request(&both).is_err());
        let accessor_orphan = RevokeArgs {
            accessor: true,
            mode: Some("orphan".into()),
            token: Some("a".into()),
            ..RevokeArgs::default()
        };
        assert!(revoke_request(&accessor_orphan).is_err());
    }

    #[test]
    fn capabilities_are_found_and_sorted() {
        let by_path = json!({"data": {"secret/foo": ["update", "read"]}});
        assert_eq!(
            capability_list(&by_path, "secret/foo"),
            vec!["read", "update"]
        );
        let generic = json!({"capabilities": ["deny"]});
        assert_eq!(capability_list(&generic, "x"), vec!["deny"]);
    }
}
