//! A bucketed hash tree over the replicated keyspace, to find what differs between two
//! clusters without shipping the data.
//!
//! Design:
//! - **Fixed buckets, not a deep tree.** Every replicated key falls in one of [`BUCKETS`]
//!   buckets by the first 12 bits of `sha256(key)`, so keys spread evenly whatever their paths
//!   look like. Two clusters compare roots, then the 4096 bucket hashes (128 KiB), then list only
//!   the differing buckets' `(key, leaf hash)` pairs and copy the keys that differ. One level of
//!   fan-out is enough for millions of keys and keeps the protocol to three round trips.
//! - **Order-defined bucket hashes.** A bucket's hash is sha256 over its leaf hashes in key
//!   order, so it depends only on the set of `(key, value)` pairs, not on insertion history.
//!   Leaf hashes are length-prefixed (`len(key) BE u32 || key || sha256(value)`), so no two
//!   different pairs can produce the same hashed bytes.
//! - **Ciphertext only.** Values are hashed as stored (barrier ciphertext); nothing is
//!   decrypted. Local keys (under [`LOCAL_PREFIX`]: the WAL and replication state) are skipped,
//!   so two clusters with the same replicated data have the same root.
//! - **Computed by a full ordered scan.** [`compute`] walks the keyspace in pages of 1024 and
//!   feeds each key's leaf hash to its bucket's running hasher: memory is the 4096 hasher states
//!   and one page, never the whole keyspace. It costs a read and a hash of every value; a scan
//!   of 1M keys takes seconds. The next step is an incremental index (bucket hashes maintained
//!   by the commit hook, or per-bucket leaf tables) so only changed buckets are rehashed.
//! - **Not a snapshot.** Pages are separate reads, so writes during a scan can be half seen.
//!   Callers compare trees computed while the data is quiet (a secondary pauses applying), or
//!   repeat the comparison until it converges.
//!
//! The local range is skipped with a single seek rather than read through: the WAL can be far
//! larger than the data, so [`compute`] jumps from the first local key straight past every key
//! that starts with [`LOCAL_PREFIX`] (possible because keys are at most `MAX_KEY_BYTES` long).

use std::collections::BTreeSet;

use bunker_storage::limits::MAX_KEY_BYTES;
use bunker_storage::{Backend, StorageError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::wal::{is_local, LOCAL_PREFIX};

/// Number of buckets: the first 12 bits of a key's hash.
pub const BUCKETS: usize = 4096;
/// Entries read per scan.
const SCAN_PAGE: usize = 1024;

#[derive(Debug, Error)]
pub enum MerkleError {
    #[error("Merkle scan failed while {context}: {source}")]
    Storage {
        context: String,
        #[source]
        source: StorageError,
    },
}

type Result<T> = std::result::Result<T, MerkleError>;

/// The bucket of `key`: the first 12 bits of sha256(key).
pub fn bucket_of(key: &str) -> u32 {
    let [first, second, ..]: [u8; 32] = Sha256::digest(key.as_bytes()).into();
    (u32::from(first) << 4) | u32::from(second >> 4)
}

/// sha256(len(key) BE u32 || key || sha256(value)).
pub fn leaf_hash(key: &str, value: &[u8]) -> [u8; 32] {
    // Keys are at most MAX_KEY_BYTES long, far below u32::MAX.
    let key_len = u32::try_from(key.len()).unwrap_or(u32::MAX);
    Sha256::new()
        .chain_update(key_len.to_be_bytes())
        .chain_update(key.as_bytes())
        .chain_update(Sha256::digest(value))
        .finalize()
        .into()
}

/// The hash tree of one cluster's replicated keyspace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MerkleTree {
    /// [`BUCKETS`] entries; an empty bucket is all zero.
    pub buckets: Vec<[u8; 32]>,
    /// sha256 of the bucket hashes concatenated.
    pub root: [u8; 32],
    /// Number of replicated keys.
    pub keys: u64,
}

impl MerkleTree {
    pub fn root_hex(&self) -> String {
        hex::encode(self.root)
    }

    /// Buckets whose hashes differ, ascending. A bucket missing from one side (a malformed tree
    /// from a peer) counts as differing.
    pub fn diff(&self, other: &MerkleTree) -> Vec<u32> {
        let len = self.buckets.len().max(other.buckets.len());
        (0..len)
            .filter(|&i| self.buckets.get(i) != other.buckets.get(i))
            .filter_map(|i| u32::try_from(i).ok())
            .collect()
    }

    /// Whether the tree has [`BUCKETS`] buckets and its root matches them; check this on a tree
    /// received from a peer before trusting its root.
    pub fn is_consistent(&self) -> bool {
        self.buckets.len() == BUCKETS && self.root == root_of(&self.buckets)
    }
}

fn root_of(buckets: &[[u8; 32]]) -> [u8; 32] {
    buckets
        .iter()
        .fold(Sha256::new(), |hasher, bucket| hasher.chain_update(bucket))
        .finalize()
        .into()
}

/// Full scan (pages of 1024 via `Backend::scan("", after, 1024)`), skipping local keys. Bucket
/// hash = sha256 over the leaf hashes of its keys in key order; empty bucket = all zero; root =
/// sha256 of the bucket hashes concatenated.
pub async fn compute(backend: &dyn Backend) -> Result<MerkleTree> {
    let mut hashers: Vec<Option<Sha256>> = vec![None; BUCKETS];
    let mut keys = 0u64;
    for_each_replicated(backend, |key, value| {
        let bucket = usize::try_from(bucket_of(key)).unwrap_or(usize::MAX);
        if let Some(slot) = hashers.get_mut(bucket) {
            slot.get_or_insert_with(Sha256::new)
                .update(leaf_hash(key, value));
            keys += 1;
        }
    })
    .await?;
    let buckets: Vec<[u8; 32]> = hashers
        .into_iter()
        .map(|hasher| hasher.map_or([0; 32], |hasher| hasher.finalize().into()))
        .collect();
    let root = root_of(&buckets);
    let tree = MerkleTree {
        buckets,
        root,
        keys,
    };
    tracing::debug!(merkle_root = %tree.root_hex(), keys, "Merkle tree computed");
    Ok(tree)
}

/// (key, leaf hash) for every replicated key in the given buckets, in key order (one full scan).
pub async fn bucket_listing(
    backend: &dyn Backend,
    buckets: &BTreeSet<u32>,
) -> Result<Vec<(String, [u8; 32])>> {
    let mut listing = Vec::new();
    if buckets.is_empty() {
        return Ok(listing);
    }
    for_each_replicated(backend, |key, value| {
        if buckets.contains(&bucket_of(key)) {
            listing.push((key.to_owned(), leaf_hash(key, value)));
        }
    })
    .await?;
    Ok(listing)
}

/// Calls `visit` for every replicated key and its value, in key order, one page in memory at a
/// time. Jumps over the local range with one seek.
async fn for_each_replicated(
    backend: &dyn Backend,
    mut visit: impl FnMut(&str, &[u8]),
) -> Result<()> {
    let mut after: Option<String> = None;
    loop {
        let mut page = backend
            .scan("", after.as_deref(), SCAN_PAGE)
            .await
            .map_err(|source| MerkleError::Storage {
                context: "scanning the replicated keyspace".into(),
                source,
            })?;
        let full = page.len() == SCAN_PAGE;
        let mut reached_local = false;
        for (key, value) in &page {
            if is_local(key) {
                reached_local = true;
                break;
            }
            visit(key, value);
        }
        if reached_local {
            // Keys past the local range in this page are read again by the next scan.
            after = Some(past_local_keys());
            continue;
        }
        match page.pop() {
            Some((last, _)) if full => after = Some(last),
            _ => return Ok(()),
        }
    }
}

/// A string greater than every valid key that starts with [`LOCAL_PREFIX`] and smaller than
/// every key past that range: the prefix followed by `char::MAX` repeated beyond
/// `MAX_KEY_BYTES`. UTF-8 byte order is code point order and no key is longer than
/// `MAX_KEY_BYTES`, so every local key is either a proper prefix of it or smaller at its first
/// differing character.
fn past_local_keys() -> String {
    let mut bound = String::with_capacity(LOCAL_PREFIX.len() + MAX_KEY_BYTES + 4);
    bound.push_str(LOCAL_PREFIX);
    while bound.len() <= MAX_KEY_BYTES {
        bound.push(char::MAX);
    }
    bound
}

#[cfg(test)]
mod tests;
