//! Bunker's core: the request pipeline and logical router, the built-in system (`sys/`) and
//! token (`auth/token/`) backends, the token and policy stores, response wrapping and audit.
//! The core never sees HTTP: the HTTP layer hands it a [`logical::Request`] and turns the
//! [`logical::Response`] or [`logical::LogicalError`] into Vault's envelope.
//!
//! May see: the SDK, policies, the barrier, the seal and the storage below it. May not see:
//! HTTP (the `http` crate translates), the engines' code (they are mounted through the SDK's
//! backend trait) or replication's (it is a `ReplicationHandler` registered by the binary).

mod assemble;
pub mod audit;
mod core;
pub mod failpoint;
pub mod ha;
mod help;
mod hex_text;
mod lifecycle;
/// The SDK types, re-exported under their old path for the core's own modules.
pub use bunker_sdk as logical;
/// The WAL index of the writes one request made (`X-Bunker-Wal-Index`).
pub use bunker_storage::stamp as storage_stamp;
mod mounts;
mod policy_store;
mod replication_hook;
mod replication_port;
mod request_handling;
pub mod snapshot;
pub use request_handling::{capability_for, Caller};
mod sys;
pub(crate) use bunker_sdk::time_util;
pub mod token;
mod wrapping;

pub use crate::core::{Core, CoreConfig};
pub use mounts::{MountEntry, SystemTtls};
pub use replication_hook::{DrCore, DrMode, ReplicationHandler, RestoreFuture};
pub use sys::{
    attempt_request, prometheus_to_vault_json, MetricsRenderer, DEFAULT_USAGE_GAUGE_PERIOD,
};
pub use wrapping::ACTIVATION_TOKEN_PATH;
