//! Which policies a new token gets: Vault's rules from `handleCreateCommon`.
//!
//! * A role with `allowed_policies` bounds the request to that list (plus `default`), whatever
//!   the caller holds; a role with `disallowed_policies` refuses those names.
//! * Otherwise (no role, or a role with neither list) a caller without root or sudo on the
//!   create path may only hand out policies it holds itself, so permission to create tokens is
//!   never permission to mint any policy.
//! * `default` is added as Vault adds it; `no_default_policy` always strips it.

use super::TokenRole;
use crate::logical::{LogicalError, Result};

/// The inputs of the policy decision for one token creation.
pub(super) struct PolicyRequest<'a> {
    /// `policies` from the request, lowercased; `None` or empty when not given.
    pub requested: Option<Vec<String>>,
    /// The request's `no_default_policy`, or the role's `token_no_default_policy`.
    pub no_default: bool,
    /// The calling token's policies.
    pub parent: &'a [String],
    /// The caller is root or has sudo on the create path.
    pub privileged: bool,
    pub role: Option<&'a TokenRole>,
}

const DEFAULT: &str = "default";

/// Trim, drop empty names, sort and deduplicate; add `default` when asked. A set holding
/// `root` is just `root`, as in Vault.
pub(super) fn sanitize(policies: &[String], add_default: bool) -> Vec<String> {
    let mut out: Vec<String> = policies
        .iter()
        .map(|p| p.trim().to_lowercase())
        .filter(|p| !p.is_empty())
        .collect();
    if out.iter().any(|p| p == "root") {
        return vec!["root".to_owned()];
    }
    if add_default && !out.iter().any(|p| p == DEFAULT) {
        out.push(DEFAULT.to_owned());
    }
    out.sort();
    out.dedup();
    out
}

/// The sorted, deduplicated policy set of the new token, or why the request is refused.
pub(super) fn token_policies(r: &PolicyRequest<'_>) -> Result<Vec<String>> {
    let requested = r.requested.clone().unwrap_or_default();
    let requested = sanitize(&requested, false);
    let mut policies = match r.role {
        Some(role) if !role.allowed_policies.is_empty() || !role.disallowed_policies.is_empty() => {
            role_policies(role, &requested, r)?
        }
        // No policies asked for: inherit the parent's, adding `default` only if it has it.
        _ if requested.is_empty() => sanitize(r.parent, false),
        _ if !r.privileged => {
            let parent = sanitize(r.parent, false);
            if requested.iter().any(|p| !parent.contains(p)) {
                return Err(LogicalError::InvalidRequest(
                    "child policies must be subset of parent".into(),
                ));
            }
            let add_default = !r.no_default && parent.iter().any(|p| p == DEFAULT);
            sanitize(&requested, add_default)
        }
        _ => sanitize(&requested, !r.no_default),
    };
    if r.no_default {
        policies.retain(|p| p != DEFAULT);
    }
    if policies.iter().any(|p| p == "root") && !r.parent.iter().any(|p| p == "root") {
        return Err(LogicalError::InvalidRequest(
            "root tokens may not be created without parent token being root".into(),
        ));
    }
    Ok(policies)
}

/// A role with allowed or disallowed policies decides the set on its own terms.
fn role_policies(
    role: &TokenRole,
    requested: &[String],
    r: &PolicyRequest<'_>,
) -> Result<Vec<String>> {
    let disallowed = sanitize(&role.disallowed_policies, false);
    let add_default = !r.no_default && !disallowed.iter().any(|p| p == DEFAULT);
    let mut policies = if requested.is_empty() {
        Vec::new()
    } else {
        sanitize(requested, add_default)
    };
    if !role.allowed_policies.is_empty() {
        let allowed = sanitize(&role.allowed_policies, add_default);
        if policies.is_empty() {
            policies = allowed;
        } else if policies.iter().any(|p| !allowed.contains(p)) {
            return Err(LogicalError::InvalidRequest(format!(
                "token policies ({policies:?}) must be subset of the role's allowed policies ({allowed:?})"
            )));
        }
    } else if policies.is_empty() {
        policies = sanitize(r.parent, add_default);
    }
    if let Some(p) = policies.iter().find(|p| disallowed.contains(p)) {
        return Err(LogicalError::InvalidRequest(format!(
            "token policy {p:?} is disallowed by this role"
        )));
    }
    Ok(policies)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    fn role(allowed: &[&str], disallowed: &[&str]) -> TokenRole {
        TokenRole {
            name: "r".into(),
            allowed_policies: strings(allowed),
            disallowed_policies: strings(disallowed),
            ..Default::default()
        }
    }

    fn decide(
        requested: Option<&[&str]>,
        parent: &[&str],
        privileged: bool,
        role: Option<&TokenRole>,
    ) -> Result<Vec<String>> {
        let parent = strings(parent);
        token_policies(&PolicyRequest {
            requested: requested.map(strings),
            no_default: false,
            parent: &parent,
            privileged,
            role,
        })
    }

    #[test]
    fn role_without_lists_bounds_to_the_callers_policies() {
        let r = role(&[], &[]);
        let parent = ["app", "default"];
        assert!(decide(Some(&["admin"]), &parent, false, Some(&r)).is_err());
        assert!(decide(Some(&["app", "admin"]), &parent, false, Some(&r)).is_err());
        assert_eq!(
            decide(Some(&["app"]), &parent, false, Some(&r)).ok(),
            Some(strings(&["app", "default"]))
        );
        assert_eq!(
            decide(None, &parent, false, Some(&r)).ok(),
            Some(strings(&["app", "default"]))
        );
        // Root (or sudo) may hand out any policy, as in Vault.
        assert_eq!(
            decide(Some(&["admin"]), &["root"], true, Some(&r)).ok(),
            Some(strings(&["admin", "default"]))
        );
    }

    #[test]
    fn no_role_bounds_to_the_callers_policies() {
        let parent = ["creator", "default"];
        assert!(decide(Some(&["admin"]), &parent, false, None).is_err());
        assert!(decide(Some(&["default"]), &["creator"], false, None).is_err());
        assert_eq!(
            decide(Some(&["creator"]), &["creator"], false, None).ok(),
            Some(strings(&["creator"]))
        );
        assert!(decide(Some(&["root"]), &["creator"], true, None).is_err());
    }

    #[test]
    fn allowed_and_disallowed_lists() {
        let r = role(&["app"], &[]);
        // The role's list bounds even root, and `default` is always allowed.
        assert!(decide(Some(&["admin"]), &["root"], true, Some(&r)).is_err());
        assert_eq!(
            decide(Some(&["default"]), &["x"], false, Some(&r)).ok(),
            Some(strings(&["default"]))
        );
        assert_eq!(
            decide(None, &["x"], false, Some(&r)).ok(),
            Some(strings(&["app", "default"]))
        );
        let r = role(&["app", "admin"], &["admin"]);
        assert!(decide(Some(&["admin"]), &["x"], false, Some(&r)).is_err());
        // A disallowed `default` is neither added nor grantable.
        let r = role(&["app"], &["default"]);
        assert_eq!(
            decide(None, &["x"], false, Some(&r)).ok(),
            Some(strings(&["app"]))
        );
        assert!(decide(Some(&["default"]), &["x"], false, Some(&r)).is_err());
        // Only a disallowed list: Vault lets the role grant anything else.
        let r = role(&[], &["admin"]);
        assert!(decide(Some(&["admin"]), &["x"], false, Some(&r)).is_err());
        assert!(decide(Some(&["root"]), &["x"], false, Some(&r)).is_err());
        assert_eq!(
            decide(Some(&["ops"]), &["x"], false, Some(&r)).ok(),
            Some(strings(&["default", "ops"]))
        );
    }
}
