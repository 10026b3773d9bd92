//! Vault ACL policies: parsing HCL/JSON policy documents and answering, for a token's set of
//! policies, which capabilities it holds on a request path.
//!
//! - [`Policy::parse`] reads one document into [`PathRule`]s.
//! - [`Acl::new`] merges the rules of several policies; [`Acl::capabilities`] and
//!   [`Acl::allows`] pick the one rule that governs a path by Vault's priority rules.
//! - [`DEFAULT_POLICY`] and [`RESPONSE_WRAPPING_POLICY`] are the built-in documents.
//!
//! May see: nothing of Bunker (pure parsing and matching). May not see: storage, tokens.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )
)]

mod acl;
mod builtin;
mod capability;
mod error;
mod pattern;
mod policy;

pub use acl::Acl;
pub use builtin::{DEFAULT_POLICY, RESPONSE_WRAPPING_POLICY};
pub use capability::{capability_names, Capability};
pub use error::PolicyError;
pub use policy::{PathRule, Policy};

#[cfg(test)]
mod tests;
