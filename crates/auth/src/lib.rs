//! Auth methods mounted under `auth/<path>/`: [`userpass`] (people) and [`approle`]
//! (machines). They are ordinary backends of the SDK: each declares its login paths as
//! unauthenticated special paths, checks credentials, and answers a login with a
//! [`bunker_sdk::LoginAuth`]; the core creates the token from it.
//!
//! Secrets are never stored in clear: passwords as argon2 hashes, role ids and secret ids under
//! an HMAC with the mount's salt ([`salt`]). A wrong credential and an unknown name give the
//! same answer.
//!
//! May see: the SDK (their storage is a `StorageView` of the mount). May not see: the core, the
//! token store, policies, HTTP.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::indexing_slicing))]

pub mod approle;
mod help;
mod salt;
pub mod userpass;

use std::sync::Arc;

use bunker_sdk::{LogicalBackend, LogicalError, Result};
use serde_json::{Map, Value};

pub use approle::AppRole;
pub use userpass::Userpass;

/// Builds userpass mounts.
pub fn userpass_factory() -> impl Fn(&Map<String, Value>) -> Result<Arc<dyn LogicalBackend>> {
    |_options| Ok(Arc::new(Userpass) as Arc<dyn LogicalBackend>)
}

/// Builds AppRole mounts.
pub fn approle_factory() -> impl Fn(&Map<String, Value>) -> Result<Arc<dyn LogicalBackend>> {
    |_options| Ok(Arc::new(AppRole) as Arc<dyn LogicalBackend>)
}

/// A user or role name: lowercased (names are case-insensitive, as in Vault), 1 to 128 of
/// letters, digits, `-`, `_`, `.` and `@`.
pub(crate) fn checked_name(name: &str, what: &str) -> Result<String> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'));
    if ok {
        Ok(name.to_lowercase())
    } else {
        Err(LogicalError::InvalidRequest(format!(
            "invalid {what} {name:?}"
        )))
    }
}

#[cfg(test)]
mod test_support;
