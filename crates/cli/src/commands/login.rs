//! `bunker login [TOKEN]`: check a token with `auth/token/lookup-self` and store it in the
//! token helper (`~/.vault-token`, mode 0600). `-method=userpass username=... [password=...]`
//! and `-method=approle role_id=... secret_id=...` log in to the auth method at `-path`
//! (default: the method's name) and store the token it issues.

use clap::Args;
use serde_json::{json, Value};
use zeroize::Zeroizing;

use super::{CmdResult, Ctx};
use crate::client::{ApiRequest, Verb};
use crate::error::{CliError, Doing, EXIT_OK};
use crate::input::{parse_kv_args, secret_arg, StdinSource};
use crate::output::{self, auth_rows, Format};
use crate::token_helper;

#[derive(Args, Debug)]
pub(crate) struct LoginArgs {
    /// Auth method: `token`, `userpass` or `approle`.
    #[arg(long, default_value = "token")]
    method: String,
    /// Where the auth method is mounted (default: its name).
    #[arg(long)]
    path: Option<String>,
    /// Do not store the token in the token helper.
    #[arg(long)]
    no_store: bool,
    /// Print only this field (e.g. `-field=token_policies`).
    #[arg(long)]
    field: Option<String>,
    /// The token (read from stdin when absent or `-`), or the method's `key=value` pairs.
    args: Vec<String>,
}

/// The `key=value` login data of an auth method; a userpass password missing from it is
/// read from stdin (hidden on a terminal).
fn login_request(args: &LoginArgs) -> Result<ApiRequest, CliError> {
    let mut data = parse_kv_args(&args.args, &mut StdinSource::process())?;
    let mount = args
        .path
        .as_deref()
        .unwrap_or(&args.method)
        .trim_matches('/');
    let path = match args.method.as_str() {
        "userpass" => {
            let username = match data.remove("username") {
                Some(Value::String(u)) if !u.is_empty() => u,
                _ => return Err(CliError::Usage("username=... is required".into())),
            };
            if !data.contains_key("password") {
                let password = secret_arg(None, "Password (will be hidden): ")?;
                data.insert("password".into(), Value::String(password.to_string()));
            }
            format!("auth/{mount}/login/{username}")
        }
        "approle" => format!("auth/{mount}/login"),
        other => {
            return Err(CliError::Usage(format!(
                "Unsupported auth method {other:?}: use token, userpass or approle"
            )))
        }
    };
    Ok(ApiRequest::new(Verb::Post, path)
        .json(&Value::Object(data))
        .without_wrapping())
}

/// Log in: the token and its `auth` block, and the whole response for `-format=json`.
fn authenticate(
    ctx: &Ctx,
    args: &LoginArgs,
) -> Result<(Zeroizing<String>, Value, Value), CliError> {
    if args.method != "token" {
        let response = ctx
            .client()?
            .send(login_request(args)?)
            .doing("authenticating")?
            .body
            .unwrap_or(Value::Null);
        let auth = response.get("auth").cloned().unwrap_or(Value::Null);
        let token = auth
            .get("client_token")
            .and_then(Value::as_str)
            .ok_or_else(|| CliError::Invalid("The login response holds no token".into()))?;
        return Ok((Zeroizing::new(token.to_owned()), auth, response));
    }
    let token = secret_arg(
        args.args.first().map(String::as_str),
        "Token (will be hidden): ",
    )?;
    let lookup = ctx
        .client()?
        .send(
            ApiRequest::new(Verb::Get, "auth/token/lookup-self")
                .with_token(&token)
                .without_wrapping(),
        )
        .doing("authenticating")?
        .body
        .unwrap_or(Value::Null);
    let auth = auth_from_lookup(&token, &lookup);
    let mut shown = lookup;
    if let Some(object) = shown.as_object_mut() {
        object.insert("auth".into(), auth.clone());
    }
    Ok((token, auth, shown))
}

pub(crate) fn run(ctx: &Ctx, args: LoginArgs) -> CmdResult {
    let (token, auth, shown) = authenticate(ctx, &args)?;
    if !args.no_store {
        let path = token_helper::token_path()
            .ok_or_else(|| CliError::Invalid("Error storing token: HOME is not set".into()))?;
        token_helper::store_token(&path, &token)?;
    }
    if token_helper::env_token().is_some() {
        output::emit_err(
            "WARNING! The VAULT_TOKEN environment variable is set! It takes precedence over \
             the token just stored; unset VAULT_TOKEN or update its value if that is unwanted.\n",
        );
    }
    if let Some(field) = &args.field {
        output::print_field(&auth_rows(&auth), field)?;
        return Ok(EXIT_OK);
    }
    match ctx.format() {
        Format::Json => output::emit(&output::pretty_json(&shown))?,
        Format::Table => {
            let intro = if args.no_store {
                "Success! You are now authenticated. The token was NOT stored; set \
                 VAULT_TOKEN to use it\nin later commands."
            } else {
                "Success! You are now authenticated. The token information displayed below\n\
                 is already stored in the token helper. You do NOT need to run \"bunker login\"\n\
                 again. Future requests will automatically use this token."
            };
            output::emit(&format!(
                "{intro}\n\n{}",
                output::key_value_table(&auth_rows(&auth))
            ))?;
        }
    }
    Ok(EXIT_OK)
}

/// An `auth` block like the one login methods return, built from a lookup-self response.
fn auth_from_lookup(token: &str, lookup: &Value) -> Value {
    let data = lookup.get("data").cloned().unwrap_or(Value::Null);
    let get = |key: &str| data.get(key).cloned().unwrap_or(Value::Null);
    let policies = get("policies");
    let identity = data
        .get("identity_policies")
        .cloned()
        .unwrap_or_else(|| json!([]));
    let mut all: Vec<Value> = policies.as_array().cloned().unwrap_or_default();
    for policy in identity.as_array().into_iter().flatten() {
        if !all.contains(policy) {
            all.push(policy.clone());
        }
    }
    json!({
        "client_token": token,
        "accessor": get("accessor"),
        "lease_duration": data.get("ttl").and_then(Value::as_u64).unwrap_or(0),
        "renewable": data.get("renewable").and_then(Value::as_bool).unwrap_or(false),
        "token_policies": policies,
        "identity_policies": identity,
        "policies": all,
        "metadata": get("meta"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_becomes_auth_rows() {
        let lookup = json!({"data": {
            "accessor": "acc1", "ttl": 3600, "renewable": true,
            "policies": ["default", "dev"], "identity_policies": ["ops"],
            "meta": {"user": "ann"}
        }});
        let auth = auth_from_lookup("hvs.tok", &lookup);
        let rows = auth_rows(&auth);
        let get = |key: &str| rows.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
        assert_eq!(get("token"), Some("hvs.tok"));
        assert_eq!(get("token_accessor"), Some("acc1"));
        assert_eq!(get("token_duration"), Some("1h"));
        assert_eq!(get("token_renewable"), Some("true"));
        assert_eq!(get("token_policies"), Some(r#"["default","dev"]"#));
        assert_eq!(get("policies"), Some(r#"["default","dev","ops"]"#));
        assert_eq!(get("token_meta_user"), Some("ann"));
    }

    #[test]
    fn root_token_lookup_has_infinite_duration() {
        let lookup = json!({"data": {"accessor": "a", "ttl": 0, "policies": ["root"]}});
        let rows = auth_rows(&auth_from_lookup("root", &lookup));
        assert!(rows.contains(&("token_duration".to_string(), "∞".to_string())));
    }
}
