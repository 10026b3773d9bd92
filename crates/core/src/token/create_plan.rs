//! What `auth/token/create[-orphan|/<role>]` will create, decided from the request, the parent
//! token and the role alone: no storage, no clock. The handler checks the caller, asks for a
//! plan, and stores it.

use super::create_policies::{token_policies, PolicyRequest};
use super::{TokenEntry, TokenRole, TokenType};
use crate::logical::fields::{get_bool, get_duration, get_str, get_str_list, get_str_map, get_u64};
use crate::logical::{Data, LogicalError, Result};
use crate::mounts::SystemTtls;

/// Who is creating the token, and through which endpoint.
pub(crate) struct CreateContext<'a> {
    pub parent: &'a TokenEntry,
    /// Root, or `sudo` on the creation path.
    pub privileged: bool,
    /// `auth/token/create-orphan`.
    pub orphan_endpoint: bool,
    pub role: Option<&'a TokenRole>,
    /// The system's default and maximum lease TTLs.
    pub system: SystemTtls,
}

/// A token ready to be stored: its entry, the custom id if one was asked for, and its TTL.
#[derive(Debug)]
pub(crate) struct CreatePlan {
    pub entry: TokenEntry,
    pub id: Option<String>,
    pub ttl: u64,
}

fn bad(msg: impl Into<String>) -> LogicalError {
    LogicalError::InvalidRequest(msg.into())
}

/// Decide the token `d` asks for, within what `ctx` allows.
pub(crate) fn plan(d: &Data, ctx: &CreateContext<'_>) -> Result<CreatePlan> {
    if ctx.parent.token_type == TokenType::Batch {
        return Err(bad("batch tokens cannot create more tokens"));
    }
    let id = get_str(d, "id")?.filter(|s| !s.is_empty());
    if id.is_some() && !ctx.privileged {
        return Err(bad("root or sudo privileges required to specify token id"));
    }
    let no_parent = get_bool(d, "no_parent")?.unwrap_or(false);
    if no_parent && !ctx.privileged {
        return Err(bad(
            "root or sudo privileges required to create orphan token",
        ));
    }
    let token_type = token_type(d, ctx.role)?;
    let no_default = get_bool(d, "no_default_policy")?.unwrap_or(false)
        || ctx.role.is_some_and(|r| r.token_no_default_policy);
    let requested: Option<Vec<String>> =
        get_str_list(d, "policies")?.map(|v| v.into_iter().map(|p| p.to_lowercase()).collect());
    let policies = token_policies(&PolicyRequest {
        requested,
        no_default,
        parent: &ctx.parent.policies,
        privileged: ctx.privileged,
        role: ctx.role,
    })?;
    let is_root_token = policies.iter().any(|p| p == "root");
    let life = lifetimes(d, ctx, is_root_token)?;
    let num_uses = get_u64(d, "num_uses")?.unwrap_or(0);
    let mut renewable =
        get_bool(d, "renewable")?.unwrap_or(true) && ctx.role.is_none_or(|r| r.renewable);
    if token_type == TokenType::Batch {
        if is_root_token {
            return Err(bad("batch tokens cannot be root tokens"));
        }
        if life.period > 0 || num_uses > 0 || id.is_some() {
            return Err(bad(
                "batch tokens cannot be periodic, use-limited or have a custom id",
            ));
        }
        renewable = false;
    }
    let orphan = ctx.orphan_endpoint || no_parent || ctx.role.is_some_and(|r| r.orphan);
    let entry = TokenEntry {
        parent_hash: if orphan {
            String::new()
        } else {
            ctx.parent.id_hash.clone()
        },
        policies,
        meta: get_str_map(d, "meta")?.unwrap_or_default(),
        display_name: display_name(d)?,
        num_uses,
        ttl: life.ttl,
        explicit_max_ttl: life.explicit_max_ttl,
        period: life.period,
        renewable: renewable && life.ttl > 0,
        orphan,
        token_type,
        role: ctx.role.map(|r| r.name.clone()).unwrap_or_default(),
        path: creation_path(ctx.role, ctx.orphan_endpoint),
        ..Default::default()
    };
    Ok(CreatePlan {
        entry,
        id,
        ttl: life.ttl,
    })
}

/// `type` of the request, else the role's default, else a service token.
fn token_type(d: &Data, role: Option<&TokenRole>) -> Result<TokenType> {
    match get_str(d, "type")?.as_deref() {
        None | Some("") => Ok(match role.map(|r| r.token_type.as_str()) {
            Some("batch") | Some("default-batch") => TokenType::Batch,
            _ => TokenType::Service,
        }),
        Some("service") => Ok(TokenType::Service),
        Some("batch") => Ok(TokenType::Batch),
        Some(other) => Err(bad(format!("invalid 'type' value {other:?}"))),
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Lifetimes {
    ttl: u64,
    explicit_max_ttl: u64,
    period: u64,
}

/// TTL, explicit max TTL and period, as Vault bounds them: a period is the TTL of a periodic
/// token; without a TTL a token gets the role's, else the system default; the explicit max TTL
/// (the smaller of the request's and the role's) caps the TTL; no non-periodic token outlives
/// the system maximum; a root token without a TTL never expires.
fn lifetimes(d: &Data, ctx: &CreateContext<'_>, is_root_token: bool) -> Result<Lifetimes> {
    let period = get_duration(d, "period")?
        .unwrap_or(0)
        .max(ctx.role.map(|r| r.period).unwrap_or(0));
    if period > 0 && ctx.role.is_none() && !ctx.privileged {
        return Err(bad(
            "root or sudo privileges required to create periodic token",
        ));
    }
    let mut explicit_max_ttl = get_duration(d, "explicit_max_ttl")?.unwrap_or(0);
    if let Some(r) = ctx.role {
        if r.explicit_max_ttl > 0
            && (explicit_max_ttl == 0 || r.explicit_max_ttl < explicit_max_ttl)
        {
            explicit_max_ttl = r.explicit_max_ttl;
        }
    }
    let mut ttl = if period > 0 {
        period
    } else {
        match get_duration(d, "ttl")?.or(get_duration(d, "lease")?) {
            Some(t) if t > 0 => t,
            _ => match ctx.role.map(|r| r.token_ttl).filter(|t| *t > 0) {
                Some(t) => t,
                None if is_root_token => 0,
                None => ctx.system.default_secs,
            },
        }
    };
    if explicit_max_ttl > 0 && (ttl == 0 || ttl > explicit_max_ttl) {
        ttl = explicit_max_ttl;
    }
    if ttl > ctx.system.max_secs && period == 0 {
        ttl = ctx.system.max_secs;
    }
    Ok(Lifetimes {
        ttl,
        explicit_max_ttl,
        period,
    })
}

fn display_name(d: &Data) -> Result<String> {
    let display = get_str(d, "display_name")?.unwrap_or_default();
    Ok(if display.is_empty() {
        "token".to_owned()
    } else {
        format!("token-{}", display.to_lowercase().replace(' ', "-"))
    })
}

fn creation_path(role: Option<&TokenRole>, orphan_endpoint: bool) -> String {
    let base = match role {
        Some(r) => format!("auth/token/create/{}", r.name),
        None if orphan_endpoint => "auth/token/create-orphan".into(),
        None => "auth/token/create".into(),
    };
    match role.filter(|r| !r.path_suffix.is_empty()) {
        Some(r) => format!("{base}/{}", r.path_suffix),
        None => base,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    use bunker_sdk::data_of as data;

    fn parent(policies: &[&str]) -> TokenEntry {
        TokenEntry {
            id_hash: "parent-hash".into(),
            policies: policies.iter().map(|p| (*p).to_owned()).collect(),
            ..Default::default()
        }
    }

    fn ctx<'a>(parent: &'a TokenEntry, role: Option<&'a TokenRole>) -> CreateContext<'a> {
        CreateContext {
            parent,
            privileged: parent.is_root(),
            orphan_endpoint: false,
            role,
            system: SystemTtls::default(),
        }
    }

    #[test]
    fn a_plain_token_inherits_and_is_bounded_by_the_system_max() {
        let p = parent(&["default", "app"]);
        let planned = super::plan(&data(json!({})), &ctx(&p, None)).unwrap();
        assert_eq!(planned.ttl, SystemTtls::VAULT_DEFAULT_SECS);
        assert_eq!(planned.entry.parent_hash, "parent-hash");
        assert_eq!(planned.entry.path, "auth/token/create");
        assert_eq!(planned.entry.token_type, TokenType::Service);
        assert!(planned.entry.renewable);
        let long = plan_for(&p, json!({"ttl": "10000h"}));
        assert_eq!(long.ttl, SystemTtls::VAULT_DEFAULT_SECS);
    }

    #[test]
    fn the_configured_system_ttls_give_the_default_and_bound_the_rest() {
        let p = parent(&["default"]);
        let ctx = CreateContext {
            system: SystemTtls::new(3600, 7200).unwrap(),
            ..ctx(&p, None)
        };
        assert_eq!(super::plan(&data(json!({})), &ctx).unwrap().ttl, 3600);
        let long = super::plan(&data(json!({"ttl": "10h"})), &ctx).unwrap();
        assert_eq!(long.ttl, 7200);
        assert!(
            SystemTtls::new(0, 3600).is_err(),
            "768h default above a 1h max"
        );
        assert_eq!(SystemTtls::new(0, 0).unwrap(), SystemTtls::default());
    }

    fn plan_for(p: &TokenEntry, body: Value) -> CreatePlan {
        super::plan(&data(body), &ctx(p, None)).unwrap()
    }

    #[test]
    fn explicit_max_ttl_caps_and_the_role_takes_the_smaller() {
        let p = parent(&["root"]);
        let planned = plan_for(&p, json!({"ttl": "2h", "explicit_max_ttl": "1h"}));
        assert_eq!(planned.ttl, 3600);
        let role = TokenRole {
            name: "r".into(),
            explicit_max_ttl: 600,
            path_suffix: "v1".into(),
            ..Default::default()
        };
        let planned = super::plan(
            &data(json!({"explicit_max_ttl": "1h"})),
            &ctx(&p, Some(&role)),
        )
        .unwrap();
        assert_eq!(planned.entry.explicit_max_ttl, 600);
        assert_eq!(planned.ttl, 600);
        assert_eq!(planned.entry.path, "auth/token/create/r/v1");
    }

    #[test]
    fn privileges_gate_ids_orphans_and_periods() {
        let p = parent(&["default"]);
        for body in [
            json!({"id": "custom"}),
            json!({"no_parent": true}),
            json!({"period": "1h"}),
        ] {
            assert!(
                super::plan(&data(body.clone()), &ctx(&p, None)).is_err(),
                "{body}"
            );
        }
        let root = parent(&["root"]);
        let orphan = plan_for(&root, json!({"no_parent": true, "period": "1h"}));
        assert!(orphan.entry.orphan && orphan.entry.parent_hash.is_empty());
        assert_eq!(orphan.ttl, 3600);
        assert_eq!(orphan.entry.period, 3600);
    }

    #[test]
    fn batch_tokens_are_plain() {
        let p = parent(&["root"]);
        let batch = plan_for(
            &p,
            json!({"type": "batch", "policies": ["app"], "ttl": "1h"}),
        );
        assert_eq!(batch.entry.token_type, TokenType::Batch);
        assert!(!batch.entry.renewable);
        for body in [
            json!({"type": "batch", "policies": ["app"], "num_uses": 2}),
            json!({"type": "batch", "policies": ["app"], "period": "1h"}),
            json!({"type": "batch"}),
            json!({"type": "other"}),
        ] {
            assert!(
                super::plan(&data(body.clone()), &ctx(&p, None)).is_err(),
                "{body}"
            );
        }
        let child = TokenEntry {
            token_type: TokenType::Batch,
            ..parent(&["app"])
        };
        assert!(super::plan(&data(json!({})), &ctx(&child, None)).is_err());
    }

    #[test]
    fn display_names_are_prefixed_and_normalised() {
        let p = parent(&["root"]);
        let planned = plan_for(&p, json!({"display_name": "My App"}));
        assert_eq!(planned.entry.display_name, "token-my-app");
    }
}
