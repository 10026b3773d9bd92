//! The ciphertext-only half of DR replication: what sits beside the barrier and never needs a
//! key that decrypts the data.
//!
//! May see: the physical storage (`bunker-storage`), its keys and its (encrypted) values.
//! May not see: the barrier, the seal, the core, requests or tokens. Anything that needs the
//! root key, the keyring or the `sys/replication/*` API lives in `bunker-dr`.
//!
//! Layout: [`wal`] records every replicated write in the same atomic batch as the data (it
//! requires a backend that can run a commit hook, [`bunker_storage::HookedBackend`]);
//! [`merkle`] hashes the replicated keyspace for reconciliation; [`tls`] and [`frame`] are the
//! cluster transport (mutual TLS 1.3, versioned and checksummed frames); [`messages`] the
//! protocol between a primary and a secondary.

pub mod frame;
pub mod keys;
pub mod merkle;
pub mod messages;
pub mod tls;
pub mod wal;
