//! Who is calling, once the core has authenticated the request: what a backend may check
//! itself (defence in depth) without reaching into the token store.

use std::sync::Arc;

use bunker_policy::{Acl, Capability};

use crate::token_entry::TokenEntry;
use crate::Operation;

/// An authenticated caller: its token, the token's entry and the ACL of its policies.
pub struct Caller {
    pub token: String,
    /// Shared with the token store's decoded cache: a request reads its token's entry without
    /// copying it (six strings, the policies and the metadata).
    pub entry: Arc<TokenEntry>,
    pub acl: Acl,
}

impl Caller {
    pub fn has(&self, path: &str, cap: Capability) -> bool {
        self.acl.allows(path, cap)
    }

    pub fn is_sudo(&self, path: &str) -> bool {
        self.acl.allows(path, Capability::Sudo)
    }
}

/// The ACL capability an operation needs.
pub fn capability_for(op: Operation) -> Capability {
    match op {
        Operation::Read => Capability::Read,
        Operation::Create => Capability::Create,
        Operation::Update => Capability::Update,
        Operation::Delete => Capability::Delete,
        Operation::List => Capability::List,
        Operation::Patch => Capability::Patch,
        // Help needs a valid token and no capability (Vault's ACL always allows it); the core
        // answers it before any ACL check, so this is never consulted.
        Operation::Help => Capability::Read,
    }
}
