//! The system backend (`sys/`): mounts, policies, capabilities, wrapping, audit
//! configuration, key rotation, metrics, HA status. It is mounted like any backend
//! (`backend.rs`); the endpoints that answer before routing (seal lifecycle, health) are in
//! `lifecycle.rs`, and each group of endpoints lives in its own file here.

mod audit;
mod backend;
pub(crate) use backend::SysBackend;
#[cfg(test)]
pub(crate) use backend::HELP;
mod health;
mod metrics;
mod metrics_renderer;
mod migrations;
pub use metrics::prometheus_to_vault_json;
pub use metrics_renderer::{MetricsRenderer, DEFAULT_USAGE_GAUGE_PERIOD};
mod mounts;
mod policies;
mod rekey;
mod remount;
pub(crate) use migrations::Migrations;
mod root_generation;
pub use root_generation::attempt_request;
mod seal;
