//! Secrets engines mounted by the router: kv (v1 and v2), cubbyhole and transit.
//!
//! Layout:
//! - [`kv::v1`]: unversioned KV, [`kv::v2`]: versioned KV with Vault's full v2 API,
//!   [`cubbyhole`]: per-token private KV, [`transit`]: encryption as a service. [`kv_factory`],
//!   [`cubbyhole_factory`] and [`transit_factory`] build them for mounts.
//! - `flat`: the unversioned store shared by KV v1 and cubbyhole.
//! - `store`: the seam between engine logic and the core's `StorageView`, so engines are unit
//!   tested over an in-memory store (including injected storage failures).
//! - `params`: lenient, Vault-style request field decoding and path checks.
//! - durations: `bunker_sdk::duration` (one implementation for the whole server).
//! - `view_tests` (tests only): the engines end to end over a real barrier-backed `StorageView`.
//!
//! Engines return `LogicalError` for everything a client caused and never panic on input.
//!
//! May see: the SDK only (their storage is a `StorageView`; their caller a namespace). May not
//! see: the core, tokens, policies, the barrier's keys, HTTP.

#![cfg_attr(
    not(test),
    warn(clippy::expect_used, clippy::indexing_slicing, clippy::panic)
)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod cubbyhole;
pub mod flat;
mod help;
pub mod kv;
mod params;
mod store;
pub mod transit;

pub use bunker_sdk::duration::{format_duration, parse_duration_secs, parse_duration_value};
pub use cubbyhole::{cubbyhole_factory, destroy_cubbyhole, Cubbyhole};
pub use kv::{kv_factory, KvV1, KvV2};
pub use transit::{transit_factory, Transit};

#[cfg(test)]
mod view_tests;
