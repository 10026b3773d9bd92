//! The token of a successful login: an auth method says who logged in and with which
//! `token_*` parameters ([`LoginAuth`]); the core decides the token within the mount's TTLs,
//! as Vault's `handleLoginRequest` and `framework.CalculateTTL` do, and stores it.

use super::backend::auth_for;
use super::create_policies::sanitize;
use super::{TokenEntry, TokenType};
use crate::core::Core;
use crate::logical::{LogicalError, LoginAuth, Response, Result};
use crate::mounts::{MountEntry, SystemTtls, AUTH_MOUNT_PREFIX};

/// A login's token, ready to store.
#[derive(Debug)]
pub(crate) struct LoginPlan {
    pub entry: TokenEntry,
    pub ttl: u64,
    pub warnings: Vec<String>,
}

/// Decide the token for `login` on `mount`, requested at `path` (`auth/userpass/login/alice`),
/// where a mount without TTLs of its own takes the `system` ones.
pub(crate) fn plan_login(
    login: &LoginAuth,
    mount: &MountEntry,
    system: &SystemTtls,
    path: &str,
) -> Result<LoginPlan> {
    let p = &login.params;
    let mut policies = sanitize(&p.token_policies, !p.token_no_default_policy);
    if p.token_no_default_policy {
        policies.retain(|name| name != "default");
    }
    if policies.iter().any(|name| name == "root") {
        return Err(LogicalError::InvalidRequest(
            "auth methods cannot create root tokens".into(),
        ));
    }
    let mut warnings = Vec::new();
    // The role's max TTL counts only below the mount's (which, as in Vault, may be set above
    // the system's).
    let mount_max = mount.max_lease_ttl_secs(system);
    let max_ttl = if p.token_max_ttl > 0 && p.token_max_ttl < mount_max {
        p.token_max_ttl
    } else {
        mount_max
    };
    let mut ttl = if p.token_period > 0 {
        p.token_period
    } else {
        let wanted = if p.token_ttl > 0 {
            p.token_ttl
        } else {
            mount.default_lease_ttl_secs(system)
        };
        if wanted > max_ttl {
            warnings.push(format!(
                "TTL of {wanted}s exceeded the effective max_ttl of {max_ttl}s; TTL value is capped accordingly"
            ));
        }
        wanted.min(max_ttl)
    };
    if p.token_explicit_max_ttl > 0 && ttl > p.token_explicit_max_ttl {
        ttl = p.token_explicit_max_ttl;
    }
    let token_type = if p.is_batch() {
        TokenType::Batch
    } else {
        TokenType::Service
    };
    let entry = TokenEntry {
        policies,
        meta: login.metadata.clone(),
        display_name: display_name(&mount.path, &login.display_name),
        num_uses: p.token_num_uses,
        ttl,
        explicit_max_ttl: p.token_explicit_max_ttl,
        period: p.token_period,
        max_ttl,
        bound_cidrs: p.token_bound_cidrs.clone(),
        renewable: token_type == TokenType::Service && ttl > 0,
        orphan: true,
        token_type,
        path: path.to_owned(),
        ..Default::default()
    };
    Ok(LoginPlan {
        entry,
        ttl,
        warnings,
    })
}

/// `userpass-alice` for user `alice` on `auth/userpass/`, as Vault names login tokens.
fn display_name(mount_path: &str, who: &str) -> String {
    let source = mount_path
        .strip_prefix(AUTH_MOUNT_PREFIX)
        .unwrap_or(mount_path)
        .replace('/', "-");
    let source = source.trim_end_matches('-');
    if who.is_empty() {
        source.to_owned()
    } else {
        format!("{source}-{who}")
    }
}

impl Core {
    /// Turn a login's [`LoginAuth`] into a stored token and Vault's `auth` block.
    pub(crate) async fn finish_login(
        &self,
        mut resp: Response,
        mount: &MountEntry,
        path: &str,
    ) -> Result<Response> {
        let Some(login) = resp.login.take() else {
            return Ok(resp);
        };
        let LoginPlan {
            entry,
            ttl,
            warnings,
        } = plan_login(&login, mount, self.lease_ttls(), path)?;
        let (token, entry) = self.tokens.create(entry, None).await?;
        resp.auth = Some(Box::new(auth_for(&token, &entry, ttl)));
        resp.warnings.extend(warnings);
        Ok(resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logical::TokenParams;
    use serde_json::Map;

    const SYS: SystemTtls = SystemTtls {
        default_secs: SystemTtls::VAULT_DEFAULT_SECS,
        max_secs: SystemTtls::VAULT_DEFAULT_SECS,
    };

    fn mount(default_ttl: u64, max_ttl: u64) -> MountEntry {
        let mut m = MountEntry::new("auth/my/userpass/", "userpass", "", Map::new());
        m.config.default_lease_ttl = default_ttl;
        m.config.max_lease_ttl = max_ttl;
        m
    }

    fn login(params: TokenParams) -> LoginAuth {
        LoginAuth {
            display_name: "alice".into(),
            params,
            ..Default::default()
        }
    }

    #[test]
    fn policies_get_default_unless_the_role_says_no() {
        let params = TokenParams {
            token_policies: vec!["App".into(), "app".into()],
            ..Default::default()
        };
        let plan = plan_login(&login(params.clone()), &mount(0, 0), &SYS, "auth/x").unwrap();
        assert_eq!(plan.entry.policies, ["app", "default"]);
        assert!(plan.entry.orphan && plan.entry.renewable);
        assert_eq!(plan.entry.display_name, "my-userpass-alice");
        let no_default = TokenParams {
            token_no_default_policy: true,
            ..params
        };
        let plan = plan_login(&login(no_default), &mount(0, 0), &SYS, "auth/x").unwrap();
        assert_eq!(plan.entry.policies, ["app"]);
        let root = TokenParams {
            token_policies: vec!["root".into()],
            ..Default::default()
        };
        assert!(plan_login(&login(root), &mount(0, 0), &SYS, "auth/x").is_err());
    }

    #[test]
    fn ttls_are_bounded_by_the_role_and_the_mount() {
        let plan = plan_login(&login(TokenParams::default()), &mount(0, 0), &SYS, "p").unwrap();
        assert_eq!(plan.ttl, SystemTtls::VAULT_DEFAULT_SECS);
        let plan = plan_login(&login(TokenParams::default()), &mount(600, 0), &SYS, "p").unwrap();
        assert_eq!(plan.ttl, 600);
        let role = TokenParams {
            token_ttl: 7200,
            token_max_ttl: 10800,
            ..Default::default()
        };
        let plan = plan_login(&login(role.clone()), &mount(0, 0), &SYS, "p").unwrap();
        assert_eq!((plan.ttl, plan.entry.max_ttl), (7200, 10800));
        // The mount's max TTL wins over a larger role max, with a warning when it cuts.
        let plan = plan_login(&login(role), &mount(0, 3600), &SYS, "p").unwrap();
        assert_eq!((plan.ttl, plan.entry.max_ttl), (3600, 3600));
        assert_eq!(plan.warnings.len(), 1);
        let periodic = TokenParams {
            token_period: 300,
            token_ttl: 7200,
            ..Default::default()
        };
        let plan = plan_login(&login(periodic), &mount(0, 0), &SYS, "p").unwrap();
        assert_eq!((plan.ttl, plan.entry.period), (300, 300));
        let batch = TokenParams {
            token_type: "batch".into(),
            token_explicit_max_ttl: 60,
            ..Default::default()
        };
        let plan = plan_login(&login(batch), &mount(0, 0), &SYS, "p").unwrap();
        assert_eq!(plan.entry.token_type, TokenType::Batch);
        assert!(!plan.entry.renewable);
        assert_eq!(plan.ttl, 60);
    }
}
