//! The unmodified `vaultrs` client (crates.io) against the real `bunker` binary.
//!
//! Each test starts its own server process on a free loopback port and asserts what a
//! vaultrs user relies on when talking to Vault. Build the server first:
//! `cargo build -p bunker` (or set `BUNKER_BIN`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod harness;

mod dr;
mod kv1;
mod kv2;
mod sys;
mod tokens;
mod transit;
mod wrapping;
