//! The access-control list of a token: the merged rules of all its policies.

use std::collections::HashMap;

use crate::capability::{capability_names, CapabilitySet};
use crate::pattern::PathPattern;
use crate::{Capability, Policy};

/// The merged rules of a set of policies, answering "what may be done on this path".
///
/// Rules with the same pattern string are unioned across policies; `deny` in any of them makes
/// that pattern deny-only. A request path is governed by exactly one rule: an exact pattern if
/// one is equal to the path, otherwise the highest-priority matching wildcard pattern (see
/// Vault's priority rules on `PathPattern::cmp_priority`).
///
/// Construction is O(rules · log rules). Lookup is a hash probe for exact patterns, then a
/// linear scan of the wildcard patterns sorted by priority, stopping at the first match. That
/// is fine for the tens of rules tokens carry; a segment trie would be the next step if
/// policies grow to thousands of wildcard rules.
#[derive(Clone, Debug)]
pub struct Acl {
    root: bool,
    exact: HashMap<String, CapabilitySet>,
    /// Wildcard rules, highest priority first.
    wildcard: Vec<(PathPattern, CapabilitySet)>,
}

impl Acl {
    /// Merges the rules of `policies`. An empty list yields an ACL that denies everything.
    pub fn new(policies: &[Policy]) -> Acl {
        let mut exact: HashMap<String, CapabilitySet> = HashMap::new();
        let mut wildcard: HashMap<String, (PathPattern, CapabilitySet)> = HashMap::new();
        for rule in policies.iter().flat_map(|policy| policy.rules()) {
            let key = rule.pattern.as_str().to_owned();
            if rule.pattern.is_exact() {
                exact.entry(key).or_default().union_with(rule.capabilities);
            } else {
                wildcard
                    .entry(key)
                    .or_insert_with(|| (rule.pattern.clone(), CapabilitySet::default()))
                    .1
                    .union_with(rule.capabilities);
            }
        }
        let mut wildcard: Vec<_> = wildcard.into_values().collect();
        wildcard.sort_by(|(a, _), (b, _)| b.cmp_priority(a));
        Acl {
            root: false,
            exact,
            wildcard,
        }
    }

    /// The ACL of a root token: every capability, including `sudo`, on every path.
    pub fn root() -> Acl {
        Acl {
            root: true,
            exact: HashMap::new(),
            wildcard: Vec::new(),
        }
    }

    pub fn is_root(&self) -> bool {
        self.root
    }

    /// The capabilities of the rule governing `path`: `[Deny]` if it denies, `[]` if no rule
    /// matches (callers show that as "deny"). A leading `/` on `path` is ignored.
    ///
    /// A root ACL returns [`Capability::GRANTING`] (every capability except `Deny`); use
    /// [`Acl::capability_names_for`] to get Vault's `["root"]` for display.
    pub fn capabilities(&self, path: &str) -> Vec<Capability> {
        if self.root {
            return Capability::GRANTING.to_vec();
        }
        self.governing_rule(path)
            .map(CapabilitySet::to_vec)
            .unwrap_or_default()
    }

    /// True if the rule governing `path` grants `cap` and does not deny. A root ACL allows
    /// every capability except `Deny` itself.
    pub fn allows(&self, path: &str, cap: Capability) -> bool {
        if self.root {
            return cap != Capability::Deny;
        }
        self.governing_rule(path)
            .is_some_and(|caps| caps.grants(cap))
    }

    /// Capability names as `sys/capabilities` reports them: `["root"]` for a root ACL,
    /// otherwise [`capability_names`] of [`Acl::capabilities`] (sorted, `["deny"]` if none).
    pub fn capability_names_for(&self, path: &str) -> Vec<String> {
        if self.root {
            return vec!["root".to_owned()];
        }
        capability_names(&self.capabilities(path))
    }

    /// True if any rule grants something on `prefix` or below it (Vault's test for showing a
    /// mount in `sys/internal/ui/mounts`).
    pub fn has_access_under(&self, prefix: &str) -> bool {
        if self.root {
            return true;
        }
        let prefix = prefix.trim_start_matches('/');
        let grants = |caps: &CapabilitySet| !caps.is_deny() && caps.iter().next().is_some();
        let exact = self
            .exact
            .iter()
            .any(|(path, caps)| path.starts_with(prefix) && grants(caps));
        exact
            || self.wildcard.iter().any(|(pattern, caps)| {
                let text = pattern.as_str();
                let literal = text.split(['*', '+']).next().unwrap_or("");
                grants(caps)
                    && (text.starts_with(prefix)
                        || pattern.matches(prefix)
                        || prefix.starts_with(literal))
            })
    }

    fn governing_rule(&self, path: &str) -> Option<CapabilitySet> {
        let path = path.trim_start_matches('/');
        if let Some(caps) = self.exact.get(path) {
            return Some(*caps);
        }
        self.wildcard
            .iter()
            .find(|(pattern, _)| pattern.matches(path))
            .map(|(_, caps)| *caps)
    }
}

#[cfg(test)]
mod access_under_tests {
    use crate::{Acl, Policy};

    #[test]
    fn access_under_a_mount() {
        let p = Policy::parse(
            "p",
            r#"path "secret/data/hello" { capabilities = ["read"] }
               path "kv/+/x" { capabilities = ["read"] }
               path "other/*" { capabilities = ["deny"] }"#,
        )
        .expect("parses");
        let acl = Acl::new(&[p]);
        assert!(acl.has_access_under("secret/"));
        assert!(acl.has_access_under("kv/"));
        assert!(!acl.has_access_under("other/"));
        assert!(!acl.has_access_under("cubbyhole/"));
        assert!(Acl::root().has_access_under("anything/"));
    }
}
