//! Capabilities a policy grants on a path, and the small set type the ACL stores per rule.

use std::fmt;
use std::str::FromStr;

use crate::PolicyError;

/// One operation a path rule can grant (or, for `Deny`, forbid outright).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Capability {
    Create,
    Read,
    Update,
    Delete,
    List,
    Patch,
    Sudo,
    Deny,
}

impl Capability {
    /// Every capability, in declaration order.
    pub const ALL: [Capability; 8] = [
        Capability::Create,
        Capability::Read,
        Capability::Update,
        Capability::Delete,
        Capability::List,
        Capability::Patch,
        Capability::Sudo,
        Capability::Deny,
    ];

    /// Every capability that grants something (all but `Deny`): what a root token holds.
    pub const GRANTING: [Capability; 7] = [
        Capability::Create,
        Capability::Read,
        Capability::Update,
        Capability::Delete,
        Capability::List,
        Capability::Patch,
        Capability::Sudo,
    ];

    /// The lowercase name Vault uses in policies and API responses.
    pub fn as_str(self) -> &'static str {
        match self {
            Capability::Create => "create",
            Capability::Read => "read",
            Capability::Update => "update",
            Capability::Delete => "delete",
            Capability::List => "list",
            Capability::Patch => "patch",
            Capability::Sudo => "sudo",
            Capability::Deny => "deny",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Capability {
    type Err = PolicyError;

    /// Parses a capability name exactly as Vault spells it (lowercase).
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Capability::ALL
            .into_iter()
            .find(|cap| cap.as_str() == name)
            .ok_or_else(|| PolicyError::Invalid(unknown_capability_message(name)))
    }
}

pub(crate) fn unknown_capability_message(name: &str) -> String {
    let known: Vec<&str> = Capability::ALL.iter().map(|c| c.as_str()).collect();
    format!(
        "unknown capability {name:?} (expected one of: {})",
        known.join(", ")
    )
}

/// Lowercase capability names for API responses (`sys/capabilities*`, token lookups).
///
/// Names are sorted alphabetically and deduplicated, as Vault returns them. An empty list
/// means nothing is granted and becomes `["deny"]`; a list containing `Deny` is `["deny"]`
/// regardless of what else it holds.
pub fn capability_names(caps: &[Capability]) -> Vec<String> {
    if caps.is_empty() || caps.contains(&Capability::Deny) {
        return vec![Capability::Deny.as_str().to_owned()];
    }
    let mut names: Vec<String> = caps.iter().map(|c| c.as_str().to_owned()).collect();
    names.sort_unstable();
    names.dedup();
    names
}

/// A set of capabilities as a bitmask. Holding `Deny` makes the set deny-only: adding `Deny`
/// clears every grant, and nothing can be granted once `Deny` is in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct CapabilitySet(u8);

impl CapabilitySet {
    pub(crate) fn insert(&mut self, cap: Capability) {
        if self.is_deny() {
            return;
        }
        self.0 = if cap == Capability::Deny {
            Capability::Deny.bit()
        } else {
            self.0 | cap.bit()
        };
    }

    pub(crate) fn union_with(&mut self, other: CapabilitySet) {
        for cap in other.iter() {
            self.insert(cap);
        }
    }

    pub(crate) fn is_deny(self) -> bool {
        self.0 & Capability::Deny.bit() != 0
    }

    /// True if `cap` is granted. A deny-only set grants nothing, not even `Deny`.
    pub(crate) fn grants(self, cap: Capability) -> bool {
        !self.is_deny() && cap != Capability::Deny && self.0 & cap.bit() != 0
    }

    /// The members in declaration order; `[Deny]` for a deny-only set.
    pub(crate) fn iter(self) -> impl Iterator<Item = Capability> {
        Capability::ALL
            .into_iter()
            .filter(move |cap| self.0 & cap.bit() != 0)
    }

    pub(crate) fn to_vec(self) -> Vec<Capability> {
        self.iter().collect()
    }
}

impl FromIterator<Capability> for CapabilitySet {
    fn from_iter<I: IntoIterator<Item = Capability>>(caps: I) -> Self {
        let mut set = CapabilitySet::default();
        for cap in caps {
            set.insert(cap);
        }
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for cap in Capability::ALL {
            assert_eq!(cap.as_str().parse::<Capability>().ok(), Some(cap));
            assert_eq!(cap.to_string(), cap.as_str());
        }
    }

    #[test]
    fn unknown_and_miscased_names_are_rejected_with_the_name() {
        for bad in ["root", "Read", "write", ""] {
            match bad.parse::<Capability>() {
                Err(PolicyError::Invalid(msg)) => {
                    assert!(msg.contains(&format!("{bad:?}")), "{msg}")
                }
                other => panic!("{bad:?} parsed as {other:?}"),
            }
        }
    }

    #[test]
    fn capability_names_sorted_and_deny_when_empty() {
        assert_eq!(capability_names(&[]), ["deny"]);
        assert_eq!(
            capability_names(&[Capability::Update, Capability::List, Capability::Read]),
            ["list", "read", "update"]
        );
        assert_eq!(
            capability_names(&[Capability::Read, Capability::Deny]),
            ["deny"]
        );
    }

    #[test]
    fn deny_absorbs_everything() {
        let mut set: CapabilitySet = [Capability::Read, Capability::Sudo].into_iter().collect();
        assert!(set.grants(Capability::Read));
        set.insert(Capability::Deny);
        assert_eq!(set.to_vec(), [Capability::Deny]);
        set.insert(Capability::Create);
        assert_eq!(set.to_vec(), [Capability::Deny]);
        assert!(!set.grants(Capability::Create));
        assert!(!set.grants(Capability::Deny));
    }
}
