//! The SDK of Bunker's logical layer: requests, responses, errors, field and duration
//! decoding, the storage view and the backend trait (OpenBao's `sdk/logical`).
//!
//! May see: the barrier (a backend's storage view is a prefix of it) and the storage errors.
//! May not see: the core (router, tokens, policies, audit), HTTP, replication. Engines depend on
//! this crate and not on the core, so a backend cannot reach into the core's state.

mod caller;
pub mod cidr;
pub mod duration;
mod error;
pub mod fields;
mod help;
pub mod json_text;
mod login;
mod request;
mod response;
mod special_paths;
mod storage_view;
pub mod time_util;
mod token_entry;

pub use caller::{capability_for, Caller};
pub use error::LogicalError;
pub use help::{path_help, BackendHelp, PathHelp};
pub use login::{LoginAuth, TokenParams};
pub use request::{expect_op, Operation, Request, RequestId, WRITE};
pub use response::{Auth, RawResponse, Response, WrapInfo};
pub use special_paths::SpecialPaths;
pub use storage_view::StorageView;
pub use token_entry::{TokenEntry, TokenType};

use async_trait::async_trait;
use serde_json::{Map, Value};

pub type Result<T> = std::result::Result<T, LogicalError>;

/// JSON object used for request and response data.
pub type Data = Map<String, Value>;

/// `value` as request or response data: its fields if it is an object, else no data.
pub fn data_of(value: Value) -> Data {
    match value {
        Value::Object(fields) => fields,
        _ => Data::new(),
    }
}

/// What a mounted backend receives: the operation, the path relative to its mount, the request
/// data, and a storage view confined to the mount.
pub struct BackendRequest<'a> {
    pub operation: Operation,
    /// Path relative to the mount point (no leading slash), e.g. `data/foo` on a KV v2 mount.
    pub path: &'a str,
    pub data: &'a Data,
    pub storage: &'a StorageView,
    /// The mount point including its trailing slash, e.g. `secret/`.
    pub mount_point: &'a str,
    /// Opaque per-token namespace id used by cubbyhole (empty when unauthenticated).
    pub token_namespace: &'a str,
    /// Mount options (e.g. `version` for kv).
    pub mount_options: &'a Map<String, Value>,
    /// The mount's default lease TTL (the system default when the mount sets none).
    pub default_lease_ttl_secs: u64,
    /// The client's IP address, when the request came over the network.
    pub remote_addr: Option<&'a str>,
    /// Who is calling, token included, for the core's built-in backends (`sys/`,
    /// `auth/token/`: `lookup-self`, whether the caller has `sudo` on the path). As in Vault,
    /// other backends never see the token: `None` for them, and on unauthenticated paths.
    pub caller: Option<&'a Caller>,
    /// The wrap TTL the client asked for (`X-Vault-Wrap-TTL`); the core wraps the answer, a
    /// backend only reads it (`sys/wrapping/wrap` needs one).
    pub wrap_ttl: Option<std::time::Duration>,
}

impl BackendRequest<'_> {
    /// The request's path with its mount point, as the client sent it (`secret/data/foo`).
    pub fn full_path(&self) -> String {
        format!("{}{}", self.mount_point, self.path)
    }
}

/// A secrets engine mounted at a path.
#[async_trait]
pub trait LogicalBackend: Send + Sync {
    /// Handle one request. `Ok(None)` is not allowed to mean "unhandled": unknown paths are
    /// `LogicalError::UnsupportedPath`.
    async fn handle(&self, req: BackendRequest<'_>) -> Result<Response>;

    /// For a write, whether the target already exists (decides `create` vs `update` for ACL).
    /// `None` when the backend does not distinguish (treated as `update`).
    async fn exists(&self, _req: &BackendRequest<'_>) -> Result<Option<bool>> {
        Ok(None)
    }

    /// The paths of this backend that need `sudo` or no token at all (relative to its mount).
    fn special_paths(&self) -> SpecialPaths {
        SpecialPaths::NONE
    }

    /// What `?help=1` on the backend's paths shows (Vault's path help).
    fn help(&self) -> BackendHelp {
        BackendHelp::NONE
    }

    /// Called once when the mount is created, before its first request.
    async fn initialize(
        &self,
        _storage: &StorageView,
        _options: &Map<String, Value>,
    ) -> Result<()> {
        Ok(())
    }
}

/// Builds a backend for a mount type (`kv`, `cubbyhole`, ...). Registered on the core by the
/// binary, like Vault's builtin registry.
pub trait BackendFactory: Send + Sync {
    fn create(&self, options: &Map<String, Value>) -> Result<std::sync::Arc<dyn LogicalBackend>>;
}

impl<F> BackendFactory for F
where
    F: Fn(&Map<String, Value>) -> Result<std::sync::Arc<dyn LogicalBackend>> + Send + Sync,
{
    fn create(&self, options: &Map<String, Value>) -> Result<std::sync::Arc<dyn LogicalBackend>> {
        self(options)
    }
}
