//! A bucketed hash tree over the replicated keyspace, to find what differs between two
//! clusters without shipping the data.
//!
//! Design:
//! - **Two levels, fixed shape.** Every replicated key falls in one of [`CELLS`] cells by the
//!   first 18 bits of `sha256(key)`; the first 12 of those bits are its bucket ([`BUCKETS`]), so
//!   keys spread evenly whatever their paths look like. Two clusters compare roots, then the
//!   hashes of the buckets that hold keys (at most 4096, about 140 KiB), then the 64 cell sums of
//!   each differing bucket (512 bytes a bucket), and only then list keys, and only those of
//!   differing cells. With a million keys and ten thousand scattered changes every bucket
//!   differs, but only a few percent of cells do: listing whole buckets would ship the
//!   keyspace, listing cells ships little more than what changed.
//! - **Cell sums are additive.** A cell's fingerprint is the wrapping sum of its keys' 64-bit
//!   leaf digests ([`leaf_digest`]), so all 262,144 cells come out of one scan in at most
//!   2 MiB, in any order, and the [`index`] updates a cell with `+ new - old`. 64 bits are
//!   enough to find accidental differences (a changed cell that sums the same: 2^-64); the
//!   bucket and root hashes stay full SHA-256.
//! - **Bucket hashes from cell sums.** A bucket's hash is sha256 over its key count and the
//!   slot and sum of each of its cells whose sum is not zero, so it depends only on the set of
//!   `(key, value)` pairs, not on insertion history or order, and a commit can keep it current
//!   from the cells it changed. Leaf hashes are length-prefixed (`len(key) BE u32 || key ||
//!   sha256(value)`), so no two different pairs can produce the same hashed bytes.
//! - **Sparse.** Empty buckets are left out of the sums, the tree and its root, and empty
//!   cells out of a bucket's hash, so all of them cost in proportion to the keys present, not
//!   to the 4096 buckets or the 262,144 cells ([`sums`]). At a million keys every bucket and
//!   cell holds keys and the cost is about a dense form's (`bench/README.md`, "Sparse Merkle
//!   sums").
//! - **Ciphertext only.** Values are hashed as stored (barrier ciphertext); nothing is
//!   decrypted. Local keys (under [`LOCAL_PREFIX`]: the WAL and replication state) are skipped,
//!   so two clusters with the same replicated data have the same root.
//! - **Kept by every commit, or computed by a scan.** Where the backend feeds indexes, the
//!   [`index`] keeps every bucket's sums in memory, updated by each commit, so the tree costs
//!   no scan. Otherwise (and to check the index) [`compute`] walks the keyspace in pages of
//!   1024 and adds each key to its cell: memory is the sums (at most 2 MiB) and one page.
//!   A scan costs a read and a hash of every value; at 1M keys, seconds.
//! - **Not a snapshot.** Pages are separate reads, so writes during a scan can be half seen.
//!   Callers compare trees computed while the data is quiet (a secondary pauses applying), or
//!   repeat the comparison until it converges.
//!
//! The local range is skipped with a single seek rather than read through: the WAL can be far
//! larger than the data, so [`compute`] jumps from the first local key straight past every key
//! that starts with [`LOCAL_PREFIX`] (possible because keys are at most `MAX_KEY_BYTES` long).

use bunker_storage::limits::MAX_KEY_BYTES;
use bunker_storage::{Backend, StorageError};
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::keys::{is_local, LOCAL_PREFIX};

pub mod index;
pub mod sums;

pub use index::{IndexCheck, MerkleIndex};
pub use sums::{BucketSums, CellSums};

/// Number of buckets: the first 12 bits of a key's hash.
pub const BUCKETS: usize = 4096;
/// Cells per bucket: the next 6 bits of a key's hash.
pub const CELLS_PER_BUCKET: usize = 64;
/// Number of cells: the first 18 bits of a key's hash.
pub const CELLS: usize = BUCKETS * CELLS_PER_BUCKET;
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

/// The cell of `key`: the first 18 bits of sha256(key); `cell_of(key) / 64 == bucket_of(key)`.
pub fn cell_of(key: &str) -> u32 {
    cell_of_hash(&Sha256::digest(key.as_bytes()).into())
}

/// The cell of a key whose sha256 is `hash`.
pub fn cell_of_hash(hash: &[u8; 32]) -> u32 {
    let [first, second, third, ..] = *hash;
    (u32::from(first) << 10) | (u32::from(second) << 2) | u32::from(third >> 6)
}

/// What a listing names a key by: the first 16 bytes of sha256(key). Within the few hundred
/// thousand keys of one chunk, two keys sharing an id is a 2^-90 event.
pub type KeyId = [u8; 16];

/// The key's cell and listing id, from one hash.
pub fn cell_and_id(key: &str) -> (u32, KeyId) {
    let hash: [u8; 32] = Sha256::digest(key.as_bytes()).into();
    let mut id = [0u8; 16];
    id.copy_from_slice(&hash[..16]);
    (cell_of_hash(&hash), id)
}

/// The first 8 bytes of [`leaf_hash`], big-endian: what cell sums add up and listings carry.
pub fn leaf_digest(key: &str, value: &[u8]) -> u64 {
    digest_of_leaf(&leaf_hash(key, value))
}

fn digest_of_leaf(leaf: &[u8; 32]) -> u64 {
    let mut first = [0u8; 8];
    first.copy_from_slice(&leaf[..8]);
    u64::from_be_bytes(first)
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
    /// The hash of every bucket that holds keys, by bucket ascending; an empty bucket is
    /// absent (its hash would be all zero).
    pub buckets: Vec<(u32, [u8; 32])>,
    /// sha256 over each listed bucket's number (big-endian u32) and hash, in order.
    pub root: [u8; 32],
    /// Number of replicated keys.
    pub keys: u64,
}

impl MerkleTree {
    pub fn root_hex(&self) -> String {
        hex::encode(self.root)
    }

    /// Buckets whose hashes differ (present on one side only, or with different hashes),
    /// ascending. Meant for consistent trees; on a malformed one (unordered, repeated) it
    /// still ends and names no bucket twice.
    pub fn diff(&self, other: &MerkleTree) -> Vec<u32> {
        let ours: BTreeMap<u32, [u8; 32]> = self.buckets.iter().copied().collect();
        let theirs: BTreeMap<u32, [u8; 32]> = other.buckets.iter().copied().collect();
        let mut differing: Vec<u32> = ours
            .iter()
            .filter(|(bucket, hash)| theirs.get(bucket) != Some(hash))
            .map(|(&bucket, _)| bucket)
            .chain(
                theirs
                    .keys()
                    .filter(|bucket| !ours.contains_key(bucket))
                    .copied(),
            )
            .collect();
        differing.sort_unstable();
        differing
    }

    /// Whether the buckets are strictly ascending, each below [`BUCKETS`] with a hash that is
    /// not all zero, and the root matches them; check this on a tree received from a peer
    /// before trusting it.
    pub fn is_consistent(&self) -> bool {
        self.buckets.len() <= BUCKETS
            && self
                .buckets
                .iter()
                .all(|&(bucket, hash)| (bucket as usize) < BUCKETS && hash != [0; 32])
            && self.buckets.windows(2).all(|pair| match pair {
                [(a, _), (b, _)] => a < b,
                _ => true,
            })
            && self.root == root_of(&self.buckets)
    }
}

fn root_of(buckets: &[(u32, [u8; 32])]) -> [u8; 32] {
    buckets
        .iter()
        .fold(Sha256::new(), |hasher, (bucket, hash)| {
            hasher.chain_update(bucket.to_be_bytes()).chain_update(hash)
        })
        .finalize()
        .into()
}

/// Full scan (pages of 1024 via `Backend::scan("", after, 1024)`), skipping local keys. Bucket
/// hash = sha256 over its key count and non-zero cell sums ([`BucketSums::hash`]); an empty bucket is
/// left out; root = sha256 over each present bucket's number and hash ([`MerkleTree`]).
pub async fn compute(backend: &dyn Backend) -> Result<MerkleTree> {
    Ok(compute_with_cells(backend).await?.0)
}

/// Builds the tree and the cell sums from entries given in any order, local keys skipped:
/// the scans below, and a snapshot's pages as they are written.
#[derive(Default)]
pub struct TreeBuilder {
    sums: CellSums,
}

impl TreeBuilder {
    pub fn new() -> TreeBuilder {
        TreeBuilder::default()
    }

    /// The same as [`TreeBuilder::new`] (every builder keeps the cell sums).
    pub fn with_cells() -> TreeBuilder {
        TreeBuilder::new()
    }

    /// One entry. Local keys are not part of the tree.
    pub fn add(&mut self, key: &str, value: &[u8]) {
        if is_local(key) {
            return;
        }
        self.sums.add_entry(key, value);
    }

    /// The tree and the cell sums.
    pub fn finish(self) -> (MerkleTree, CellSums) {
        (self.sums.tree(), self.sums)
    }
}

/// The tree and every cell's sum (see [`cell_sums`]) from the same single scan: each key's
/// hash and leaf hash serve both.
pub async fn compute_with_cells(backend: &dyn Backend) -> Result<(MerkleTree, CellSums)> {
    compute_with_cells_counting(backend, &std::sync::atomic::AtomicU64::new(0)).await
}

/// As [`compute_with_cells`], adding one to `scanned` for every replicated entry read (a
/// progress figure for whoever watches the scan).
pub async fn compute_with_cells_counting(
    backend: &dyn Backend,
    scanned: &std::sync::atomic::AtomicU64,
) -> Result<(MerkleTree, CellSums)> {
    let mut builder = TreeBuilder::with_cells();
    for_each_replicated(backend, |key, value| {
        builder.add(key, value);
        scanned.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    })
    .await?;
    let (tree, cells) = builder.finish();
    tracing::debug!(merkle_root = %tree.root_hex(), keys = tree.keys, "Merkle tree computed");
    Ok((tree, cells))
}

/// Every cell's sum of leaf digests (one full scan); an empty cell sums to 0.
/// The same scan as [`compute_with_cells`], whose tree is dropped.
pub async fn cell_sums(backend: &dyn Backend) -> Result<CellSums> {
    Ok(compute_with_cells(backend).await?.1)
}

/// Cells whose sums differ, ascending. `ours` and `theirs` hold the sums of the same cells in
/// the same order; `cells` names them.
pub fn differing_cells(cells: &[u32], ours: &[u64], theirs: &[u64]) -> Vec<u32> {
    cells
        .iter()
        .enumerate()
        .filter(|&(i, _)| ours.get(i) != theirs.get(i))
        .map(|(_, cell)| *cell)
        .collect()
}

/// The cells of `buckets`, ascending (64 per bucket).
pub fn cells_of_buckets(buckets: &[u32]) -> Vec<u32> {
    let per_bucket = CELLS_PER_BUCKET as u32;
    buckets
        .iter()
        .filter(|&&bucket| (bucket as usize) < BUCKETS)
        .flat_map(|bucket| (bucket * per_bucket)..((bucket + 1) * per_bucket))
        .collect()
}

/// A set of cells, as a bitmap over all [`CELLS`].
#[derive(Clone, Debug)]
pub struct CellSet {
    bits: Vec<u64>,
    len: usize,
}

impl CellSet {
    pub fn new(cells: &[u32]) -> Self {
        let mut set = Self {
            bits: vec![0; CELLS / 64],
            len: 0,
        };
        for &cell in cells {
            let (word, bit) = (cell as usize / 64, cell % 64);
            if let Some(word) = set.bits.get_mut(word) {
                if *word & (1 << bit) == 0 {
                    *word |= 1 << bit;
                    set.len += 1;
                }
            }
        }
        set
    }

    pub fn contains(&self, cell: u32) -> bool {
        self.bits
            .get(cell as usize / 64)
            .is_some_and(|word| word & (1 << (cell % 64)) != 0)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Replicated entries of the store, page by page in key order, local keys skipped: for
/// callers that must await between pages (to send them).
pub struct ReplicatedPages<'a> {
    backend: &'a dyn Backend,
    after: Option<std::borrow::Cow<'static, str>>,
    done: bool,
}

/// Full scans of the replicated keyspace started by this process (status's `merkle_scans`).
static FULL_SCANS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many full scans of the replicated keyspace this process has started.
pub fn full_scans() -> u64 {
    FULL_SCANS.load(std::sync::atomic::Ordering::Relaxed)
}

impl<'a> ReplicatedPages<'a> {
    /// Starts a full scan (counted in [`full_scans`]).
    pub fn new(backend: &'a dyn Backend) -> Self {
        FULL_SCANS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self {
            backend,
            after: None,
            done: false,
        }
    }

    /// The next page of replicated entries; `None` once the keyspace is exhausted. A page can
    /// be empty (the local range was skipped) without the scan being over.
    pub async fn next_page(&mut self) -> Result<Option<Vec<(String, Vec<u8>)>>> {
        if self.done {
            return Ok(None);
        }
        let mut page = self
            .backend
            .scan("", self.after.as_deref(), SCAN_PAGE)
            .await
            .map_err(|source| MerkleError::Storage {
                context: "scanning the replicated keyspace".into(),
                source,
            })?;
        let full = page.len() == SCAN_PAGE;
        if let Some(local) = page.iter().position(|(key, _)| is_local(key)) {
            // Keys past the local range in this page are read again by the next scan.
            page.truncate(local);
            self.after = Some(std::borrow::Cow::Borrowed(PAST_LOCAL_KEYS.as_str()));
            return Ok(Some(page));
        }
        match page.last() {
            Some((last, _)) if full => self.after = Some(last.clone().into()),
            _ => self.done = true,
        }
        Ok(Some(page))
    }
}

/// Calls `visit` for every replicated key and its value, in key order, one page in memory at a
/// time. Jumps over the local range with one seek.
async fn for_each_replicated(
    backend: &dyn Backend,
    mut visit: impl FnMut(&str, &[u8]),
) -> Result<()> {
    let mut pages = ReplicatedPages::new(backend);
    while let Some(page) = pages.next_page().await? {
        for (key, value) in &page {
            visit(key, value);
        }
    }
    Ok(())
}

/// A string greater than every valid key that starts with [`LOCAL_PREFIX`] and smaller than
/// every key past that range: the prefix followed by `char::MAX` repeated beyond
/// `MAX_KEY_BYTES`. UTF-8 byte order is code point order and no key is longer than
/// `MAX_KEY_BYTES`, so every local key is either a proper prefix of it or smaller at its first
/// differing character. Built once (4 KiB).
static PAST_LOCAL_KEYS: std::sync::LazyLock<String> = std::sync::LazyLock::new(past_local_keys);

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
