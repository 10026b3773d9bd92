//! The Merkle index: one leaf entry per replicated key, by cell, kept by the commits that write
//! the keys, and the tree's sums in memory, so neither the tree nor a cell's listing costs a
//! scan of the keyspace.
//!
//! Design:
//! - **Same transaction as the data.** The backend feeds each commit's writes of replicated keys,
//!   with the values they replace, to a [`CommitIndex`] update; the update writes each key's
//!   leaf entry in that transaction. A crash can never leave data and index apart.
//! - **One leaf entry per key, by cell** (`repl/merkle/leaf/{cell:05x}/{key id}`: the key's
//!   leaf digest and its name), local to the cluster like the WAL. A Merkle sync lists the keys
//!   of a differing cell with one seek instead of a scan of the keyspace.
//! - **Sums in memory.** Cell sums are additive, so the writer keeps every bucket's key count
//!   and cell sums in a mirror, changed by `+ new - old` after each durable commit, with the
//!   bucket hashes and the WAL index written by the same commit. The tree, the root and the
//!   cell sums are read from it without touching storage: O(buckets), never O(keys). Opening
//!   the index sums the leaf entries once (they are small: about 60 bytes and the key's name),
//!   instead of keeping 2 MiB of sums in storage rewritten by every commit.
//! - **Rebuilt while writes go on.** A rebuild reads one consistent snapshot and queues every
//!   key and every leaf entry in it; commits (a thousand keys each, as the snapshot goes)
//!   rewrite each key's entry from its value as the commit reads it and delete entries that
//!   name no key. Keys written meanwhile got their entries from their own commits, so the
//!   entries end exact whatever was written. A last commit then sums them into a new mirror.
//!   `merkle-check` compares the snapshot's keys with its leaf entries without changing
//!   anything.
//! - **Built once.** [`INDEX_STATE_KEY`] holds the format and the WAL index of the last commit
//!   the index saw. A store without it (an older version's data, a first start), or whose WAL
//!   moved since (a version without the index recorded writes), is rebuilt when the index is
//!   opened; until then callers fall back to scanning. Only backends that feed indexes keep one
//!   (PostgreSQL does not: the replaced values would cost a read round trip in every group
//!   commit).
//!
//! The index is only exact if every commit since it was built went through it: the hook is
//! installed when the WAL is opened, before the server serves writes. Entries written by
//! anything but the index (seen by the commit that writes them) put it back to `Building`,
//! and the replication task rebuilds it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use bunker_storage::{
    Backend, CommitIndex, IndexUpdate, Op, SnapshotPage, SnapshotSink, StorageError,
};
use sha2::{Digest, Sha256};

use super::{
    cell_of_hash, digest_of_leaf, leaf_hash, root_of, KeyId, MerkleError, MerkleTree, BUCKETS,
    CELLS, CELLS_PER_BUCKET,
};
use crate::wal::{is_local, WAL_LAST_KEY};

/// Everything of the index lives under this prefix (local: never replicated).
pub const INDEX_PREFIX: &str = "repl/merkle/";
/// One entry per replicated key: `repl/merkle/leaf/{cell:05x}/{key id, hex}`.
pub const LEAF_PREFIX: &str = "repl/merkle/leaf/";
/// The format byte and the WAL index (u64 BE) of the last commit the index saw; present once
/// the leaf entries are complete.
pub const INDEX_STATE_KEY: &str = "repl/merkle/state";
/// 2: leaf entries (1 kept bucket records: rebuilt).
const INDEX_FORMAT: u8 = 2;
/// Written by the commits a rebuild makes to carry its queued work (never read).
const INDEX_BARRIER_KEY: &str = "repl/merkle/barrier";
/// Keys whose leaf entries one commit rewrites during a rebuild.
const RECHECKS_PER_COMMIT: usize = 1024;
/// Entries read per page when summing the leaf entries or listing a cell.
const PAGE: usize = 1024;

/// One bucket's key count and cell sums (wrapping: a delta is a sum like any other).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BucketSums {
    pub keys: u64,
    pub cells: [u64; CELLS_PER_BUCKET],
}

impl Default for BucketSums {
    fn default() -> Self {
        BucketSums {
            keys: 0,
            cells: [0; CELLS_PER_BUCKET],
        }
    }
}

impl BucketSums {
    pub fn is_zero(&self) -> bool {
        self.keys == 0 && self.cells.iter().all(|&sum| sum == 0)
    }

    fn add(&mut self, other: &BucketSums) {
        self.keys = self.keys.wrapping_add(other.keys);
        for (sum, more) in self.cells.iter_mut().zip(other.cells.iter()) {
            *sum = sum.wrapping_add(*more);
        }
    }

    /// Adds (`sign` true) or removes one key whose cell slot is `slot` and leaf digest `digest`.
    pub(crate) fn count(&mut self, slot: usize, digest: u64, sign: bool) {
        if let Some(sum) = self.cells.get_mut(slot) {
            if sign {
                self.keys = self.keys.wrapping_add(1);
                *sum = sum.wrapping_add(digest);
            } else {
                self.keys = self.keys.wrapping_sub(1);
                *sum = sum.wrapping_sub(digest);
            }
        }
    }

    /// The bucket's hash: all zero for an empty bucket, else sha256 over the key count and the
    /// 64 cell sums (big-endian). It depends only on the bucket's `(key, value)` pairs.
    pub fn hash(&self) -> [u8; 32] {
        if self.is_zero() {
            return [0; 32];
        }
        let mut hasher = Sha256::new();
        hasher.update(self.keys.to_be_bytes());
        for sum in &self.cells {
            hasher.update(sum.to_be_bytes());
        }
        hasher.finalize().into()
    }
}

/// Every bucket's sums, indexed by bucket.
type Sums = Vec<BucketSums>;

fn empty_sums() -> Sums {
    vec![BucketSums::default(); BUCKETS]
}

/// Adds one key (its cell and leaf digest) to `sums`.
fn count_in(sums: &mut Sums, cell: u32, digest: u64) {
    let cell = cell as usize;
    if let Some(bucket) = sums.get_mut(cell / CELLS_PER_BUCKET) {
        bucket.count(cell % CELLS_PER_BUCKET, digest, true);
    }
}

/// The tree of a keyspace given every bucket's sums ([`BUCKETS`] of them).
pub fn tree_of(buckets: &[BucketSums]) -> MerkleTree {
    let hashes: Vec<[u8; 32]> = buckets.iter().map(BucketSums::hash).collect();
    let root = root_of(&hashes);
    MerkleTree {
        keys: buckets.iter().fold(0u64, |n, b| n.wrapping_add(b.keys)),
        buckets: hashes,
        root,
    }
}

/// Every cell's sum, in cell order, from the buckets' sums.
pub fn cells_of(buckets: &[BucketSums]) -> Vec<u64> {
    buckets.iter().flat_map(|b| b.cells).collect()
}

/// The bucket, the slot in it and the leaf digest of one replicated entry.
pub(crate) fn locate(key: &str, value: &[u8]) -> (usize, usize, u64) {
    let key_hash: [u8; 32] = Sha256::digest(key.as_bytes()).into();
    let cell = cell_of_hash(&key_hash) as usize;
    let digest = digest_of_leaf(&leaf_hash(key, value));
    (cell / CELLS_PER_BUCKET, cell % CELLS_PER_BUCKET, digest)
}

/// The leaf entry of a key in `cell` whose id is `id`.
pub fn leaf_key(cell: u32, id: &KeyId) -> String {
    format!("{LEAF_PREFIX}{cell:05x}/{}", hex::encode(id))
}

/// The prefix of every leaf entry of `cell`.
fn cell_prefix(cell: u32) -> String {
    format!("{LEAF_PREFIX}{cell:05x}/")
}

fn encode_leaf(digest: u64, key: &str) -> Vec<u8> {
    let mut value = Vec::with_capacity(8 + key.len());
    value.extend_from_slice(&digest.to_be_bytes());
    value.extend_from_slice(key.as_bytes());
    value
}

/// A leaf entry's cell and id (from its key), digest and key name (from its value).
fn decode_leaf(entry_key: &str, value: &[u8]) -> Option<(u32, KeyId, u64, String)> {
    let rest = entry_key.strip_prefix(LEAF_PREFIX)?;
    let (cell_hex, id_hex) = (rest.get(..5)?, rest.get(6..)?);
    if rest.get(5..6)? != "/" || id_hex.len() != 32 {
        return None;
    }
    let cell = u32::from_str_radix(cell_hex, 16)
        .ok()
        .filter(|&c| (c as usize) < CELLS)?;
    let mut id = [0u8; 16];
    hex::decode_to_slice(id_hex, &mut id).ok()?;
    let (digest, name) = value.split_at_checked(8)?;
    let digest = u64::from_be_bytes(<[u8; 8]>::try_from(digest).ok()?);
    let name = String::from_utf8(name.to_vec()).ok()?;
    // The name must be the key the entry's place says: a listing turns ids back into names
    // (a deletion by id deletes that name).
    if super::cell_and_id(&name) != (cell, id) {
        return None;
    }
    Some((cell, id, digest, name))
}

fn decode_wal_index(value: Option<&[u8]>) -> u64 {
    value
        .and_then(|v| <[u8; 8]>::try_from(v).ok())
        .map_or(0, u64::from_be_bytes)
}

/// The sums as the writer keeps them in memory.
struct Mirror {
    buckets: Sums,
    hashes: Vec<[u8; 32]>,
    keys: u64,
    /// The WAL index written by the last commit the mirror includes...
    wal_index: u64,
    /// ...and whether the data is exactly as of that index: false after a commit that changed
    /// replicated data without writing the WAL index (a Merkle or snapshot sync's pages, a
    /// restore), until the next commit that writes one or replication declares it exact.
    exact: bool,
    root: Option<[u8; 32]>,
}

impl Mirror {
    fn new(buckets: Sums, wal_index: u64) -> Mirror {
        let hashes = buckets.iter().map(BucketSums::hash).collect();
        let keys = buckets.iter().fold(0u64, |n, b| n.wrapping_add(b.keys));
        Mirror {
            buckets,
            hashes,
            keys,
            wal_index,
            exact: true,
            root: None,
        }
    }

    fn root(&mut self) -> [u8; 32] {
        *self.root.get_or_insert_with(|| root_of(&self.hashes))
    }

    fn tree(&mut self) -> MerkleTree {
        MerkleTree {
            root: self.root(),
            buckets: self.hashes.clone(),
            keys: self.keys,
        }
    }

    fn apply(&mut self, deltas: &BTreeMap<usize, BucketSums>) {
        for (&bucket, delta) in deltas.iter().filter(|(_, d)| !d.is_zero()) {
            let (Some(sums), Some(hash)) =
                (self.buckets.get_mut(bucket), self.hashes.get_mut(bucket))
            else {
                continue;
            };
            sums.add(delta);
            self.keys = self.keys.wrapping_add(delta.keys);
            *hash = sums.hash();
            self.root = None;
        }
    }
}

enum State {
    /// The leaf entries are incomplete or untrusted; commits keep them all the same.
    Building,
    /// As `Building`, while a rebuild makes them exact.
    Rebuilding,
    /// The entries are exact; the next commit sums them into the mirror.
    Load,
    Ready(Mirror),
}

/// A key whose leaf entry a rebuild rewrites from its value (an empty name: none), and the
/// entry the snapshot held in its place, if any, with the value it had.
type Recheck = (String, Option<(String, Vec<u8>)>);

struct Shared {
    state: Mutex<State>,
    /// Keys whose leaf entries a rebuild has the next commits rewrite from their values then,
    /// with the entry found for each (if any), deleted if it is not the right one. An empty
    /// name: an undecodable entry, deleted.
    rechecks: Mutex<Vec<Recheck>>,
    /// An entry was malformed or written by something other than the index; `merkle-check`
    /// and status report it until a rebuild.
    corrupt: AtomicBool,
    /// `open` finished: a `Building` state from then on means the entries need a rebuild.
    opened: AtomicBool,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding these locks; the data is consistent at every unlock.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn rechecks(&self) -> MutexGuard<'_, Vec<Recheck>> {
        self.rechecks.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What a comparison of the leaf entries with the keyspace found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IndexCheck {
    /// The tree recomputed from the keyspace.
    pub tree: Option<MerkleTree>,
    /// Buckets and cells whose leaf entries did not sum to the keyspace's.
    pub differing_buckets: u64,
    pub differing_cells: u64,
    /// Replicated entries read.
    pub scanned: u64,
}

/// Replication's Merkle index over one backend (see the module documentation).
#[derive(Clone)]
pub struct MerkleIndex {
    shared: Arc<Shared>,
    /// One rebuild or check at a time.
    rebuilding: Arc<tokio::sync::Mutex<()>>,
}

impl std::fmt::Debug for MerkleIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MerkleIndex")
            .field("ready", &self.is_ready())
            .finish_non_exhaustive()
    }
}

impl Default for MerkleIndex {
    fn default() -> Self {
        MerkleIndex::new()
    }
}

fn storage(context: &str) -> impl FnOnce(StorageError) -> MerkleError + '_ {
    move |source| MerkleError::Storage {
        context: context.into(),
        source,
    }
}

impl MerkleIndex {
    /// An index not yet opened: commits keep its entries, nothing is read from it.
    pub fn new() -> MerkleIndex {
        MerkleIndex {
            shared: Arc::new(Shared {
                state: Mutex::new(State::Building),
                rechecks: Mutex::new(Vec::new()),
                corrupt: AtomicBool::new(false),
                opened: AtomicBool::new(false),
            }),
            rebuilding: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// Sums the leaf entries if they are complete, else builds them (one snapshot of the
    /// store). Call with the index installed in the backend's hook, before the backend serves
    /// writes.
    pub async fn open(&self, backend: &dyn Backend) -> Result<(), MerkleError> {
        let result = self.load_or_build(backend).await;
        self.shared.opened.store(true, Ordering::Release);
        result
    }

    async fn load_or_build(&self, backend: &dyn Backend) -> Result<(), MerkleError> {
        let state = backend
            .get(INDEX_STATE_KEY)
            .await
            .map_err(storage("reading the Merkle index state"))?;
        let wal_index = decode_wal_index(
            backend
                .get(WAL_LAST_KEY)
                .await
                .map_err(storage("reading the WAL index"))?
                .as_deref(),
        );
        let usable = match state.as_deref() {
            // The WAL index the index last saw: another one means a version without the index
            // recorded writes since.
            Some([INDEX_FORMAT, seen @ ..]) if seen.len() == 8 => {
                decode_wal_index(Some(seen)) == wal_index
            }
            _ => false,
        };
        if !usable {
            tracing::info!("building the Merkle index (one pass over the store)");
            let check = self.rebuild(backend, &AtomicU64::new(0)).await?;
            tracing::info!(
                keys = check.tree.map_or(0, |t| t.keys),
                "Merkle index built"
            );
            return Ok(());
        }
        let mut sums = empty_sums();
        let mut after: Option<String> = None;
        loop {
            let page = backend
                .scan(LEAF_PREFIX, after.as_deref(), PAGE)
                .await
                .map_err(storage("summing the Merkle index"))?;
            for (key, value) in &page {
                match decode_leaf(key, value) {
                    Some((cell, _, digest, _)) => count_in(&mut sums, cell, digest),
                    None => {
                        self.malformed(key);
                        tracing::info!("rebuilding the Merkle index");
                        self.rebuild(backend, &AtomicU64::new(0)).await?;
                        return Ok(());
                    }
                }
            }
            match page.last() {
                Some((last, _)) if page.len() == PAGE => after = Some(last.clone()),
                _ => break,
            }
        }
        *self.shared.state() = State::Ready(Mirror::new(sums, wal_index));
        Ok(())
    }

    fn malformed(&self, entry: &str) {
        tracing::error!(entry, "malformed Merkle index entry; run reindex");
        self.shared.corrupt.store(true, Ordering::Relaxed);
    }

    /// Whether the tree can be read from the index (no scan).
    pub fn is_ready(&self) -> bool {
        matches!(*self.shared.state(), State::Ready(_))
    }

    /// Whether a malformed entry, or one written outside the index, was met since the last
    /// rebuild.
    pub fn is_corrupt(&self) -> bool {
        self.shared.corrupt.load(Ordering::Relaxed)
    }

    /// Whether the index was opened and found (or made) inconsistent: its entries were
    /// written by something other than the index, or a rebuild failed. A rebuild repairs it.
    pub fn needs_rebuild(&self) -> bool {
        self.shared.opened.load(Ordering::Acquire)
            && matches!(*self.shared.state(), State::Building)
    }

    /// The root (hex), the number of keys, and the WAL index they are exact for (`None` while
    /// the data holds changes the WAL index does not show).
    pub fn root(&self) -> Option<(String, u64, Option<u64>)> {
        let mut state = self.shared.state();
        let State::Ready(mirror) = &mut *state else {
            return None;
        };
        let root = mirror.root();
        let exact_at = mirror.exact.then_some(mirror.wal_index);
        Some((hex::encode(root), mirror.keys, exact_at))
    }

    /// The tree and the WAL index it is exact for.
    pub fn tree(&self) -> Option<(MerkleTree, u64)> {
        let mut state = self.shared.state();
        let State::Ready(mirror) = &mut *state else {
            return None;
        };
        Some((mirror.tree(), mirror.wal_index))
    }

    /// The tree, every cell's sum, and the WAL index both are exact for.
    pub fn fingerprint(&self) -> Option<(MerkleTree, Vec<u64>, u64)> {
        let mut state = self.shared.state();
        let State::Ready(mirror) = &mut *state else {
            return None;
        };
        Some((mirror.tree(), cells_of(&mirror.buckets), mirror.wal_index))
    }

    /// Declares the data exactly the state at the last WAL index written: replication calls
    /// this where changes made outside the WAL become a new starting point (a mode change, a
    /// restore, the end of a sync).
    pub fn mark_exact(&self) {
        if let State::Ready(mirror) = &mut *self.shared.state() {
            mirror.exact = true;
        }
    }

    /// The replicated keys of `cells`, with their ids and leaf digests, read from the leaf
    /// entries (a seek per cell, no scan of the keyspace); `None` while the index is not ready.
    /// Not a snapshot: a write between two cells' reads shows as written.
    pub async fn list_cells(
        &self,
        backend: &dyn Backend,
        cells: &[u32],
    ) -> Result<Option<Vec<(KeyId, u64, String)>>, MerkleError> {
        if !self.is_ready() {
            return Ok(None);
        }
        let mut listed = Vec::new();
        for &cell in cells {
            let prefix = cell_prefix(cell);
            let mut after: Option<String> = None;
            loop {
                let page = backend
                    .scan(&prefix, after.as_deref(), PAGE)
                    .await
                    .map_err(storage("listing a cell's leaf entries"))?;
                for (key, value) in &page {
                    match decode_leaf(key, value) {
                        Some((_, id, digest, name)) => listed.push((id, digest, name)),
                        None => {
                            // A listing missing a key would delete it on the other side: the
                            // index is not trusted until rebuilt.
                            self.malformed(key);
                            *self.shared.state() = State::Building;
                            return Ok(None);
                        }
                    }
                }
                match page.last() {
                    Some((last, _)) if page.len() == PAGE => after = Some(last.clone()),
                    _ => break,
                }
            }
        }
        Ok(Some(listed))
    }

    /// Compares the leaf entries with the keyspace, as of one snapshot; changes nothing.
    pub async fn check(
        &self,
        backend: &dyn Backend,
        scanned: &AtomicU64,
    ) -> Result<IndexCheck, MerkleError> {
        let _one = self.rebuilding.lock().await;
        compare(backend, scanned, None).await
    }

    /// Makes the leaf entries exact and sums them into a new mirror, while writes go on (see
    /// the module documentation). Returns what the comparison found before the repair.
    pub async fn rebuild(
        &self,
        backend: &dyn Backend,
        scanned: &AtomicU64,
    ) -> Result<IndexCheck, MerkleError> {
        let _one = self.rebuilding.lock().await;
        *self.shared.state() = State::Rebuilding;
        let result = self.rebuild_entries(backend, scanned).await;
        {
            let mut state = self.shared.state();
            match (&result, &*state) {
                // Entries written outside the index meanwhile (back to `Building`) leave it for
                // another rebuild.
                (Ok(_), State::Rebuilding) => *state = State::Load,
                (Ok(_), _) => {}
                (Err(_), _) => *state = State::Building,
            }
        }
        let check = result?;
        // The commit that sums the entries into the mirror and records the state.
        barrier(backend).await?;
        if self.is_ready() {
            self.shared.corrupt.store(false, Ordering::Relaxed);
        }
        Ok(check)
    }

    async fn rebuild_entries(
        &self,
        backend: &dyn Backend,
        scanned: &AtomicU64,
    ) -> Result<IndexCheck, MerkleError> {
        // Incomplete from here until the Load commit records the state again: a rebuild cut
        // short is redone at the next open.
        backend
            .delete(INDEX_STATE_KEY)
            .await
            .map_err(storage("clearing the Merkle index state"))?;
        let check = compare(backend, scanned, Some(&self.shared)).await?;
        flush_rechecks(backend, &self.shared, 0).await?;
        Ok(check)
    }
}

/// Commits until at most `keep` rechecks are queued (each commit takes
/// [`RECHECKS_PER_COMMIT`] of them).
async fn flush_rechecks(
    backend: &dyn Backend,
    shared: &Shared,
    keep: usize,
) -> Result<(), MerkleError> {
    while shared.rechecks().len() > keep {
        barrier(backend).await?;
    }
    Ok(())
}

/// A commit of its own: it carries whatever the index has queued.
async fn barrier(backend: &dyn Backend) -> Result<(), MerkleError> {
    backend
        .batch(vec![Op::Put {
            key: INDEX_BARRIER_KEY.into(),
            value: vec![INDEX_FORMAT],
        }])
        .await
        .map_err(storage("committing the Merkle index"))
}

/// The keyspace's sums against its leaf entries' sums, from one snapshot. With `recheck`,
/// every key and every leaf entry of the snapshot is also queued for a recheck, and the queue
/// is worked off by commits as the snapshot goes.
async fn compare(
    backend: &dyn Backend,
    scanned: &AtomicU64,
    recheck: Option<&Shared>,
) -> Result<IndexCheck, MerkleError> {
    let mut sink = CompareSink {
        truth: empty_sums(),
        stored: empty_sums(),
        scanned,
        read: 0,
        recheck: recheck.map(|shared| (shared, backend)),
    };
    backend
        .snapshot(&mut sink)
        .await
        .map_err(storage("reading a snapshot for the Merkle index"))?;
    let mut check = IndexCheck {
        scanned: sink.read,
        ..IndexCheck::default()
    };
    for (truth, stored) in sink.truth.iter().zip(sink.stored.iter()) {
        if truth == stored {
            continue;
        }
        check.differing_buckets += 1;
        check.differing_cells += truth
            .cells
            .iter()
            .zip(stored.cells.iter())
            .filter(|(a, b)| a != b)
            .count() as u64;
    }
    check.tree = Some(tree_of(&sink.truth));
    Ok(check)
}

struct CompareSink<'a> {
    truth: Sums,
    stored: Sums,
    scanned: &'a AtomicU64,
    read: u64,
    recheck: Option<(&'a Shared, &'a dyn Backend)>,
}

#[async_trait]
impl SnapshotSink for CompareSink<'_> {
    async fn page(&mut self, entries: SnapshotPage) -> bunker_storage::Result<()> {
        let mut rechecks = Vec::new();
        for (key, value) in entries {
            if !is_local(&key) {
                let (bucket, slot, digest) = locate(&key, &value);
                if let Some(sums) = self.truth.get_mut(bucket) {
                    sums.count(slot, digest, true);
                }
                self.read += 1;
                self.scanned.fetch_add(1, Ordering::Relaxed);
                rechecks.push((key, None));
            } else if key.starts_with(LEAF_PREFIX) {
                match decode_leaf(&key, &value) {
                    Some((cell, _, digest, name)) => {
                        count_in(&mut self.stored, cell, digest);
                        rechecks.push((name, Some((key, value))));
                    }
                    // Rechecked under no name: deleted (if still as the snapshot saw it).
                    None => rechecks.push((String::new(), Some((key, value)))),
                }
            }
        }
        if let Some((shared, backend)) = self.recheck {
            shared.rechecks().extend(rechecks);
            flush_rechecks(backend, shared, RECHECKS_PER_COMMIT)
                .await
                .map_err(|MerkleError::Storage { source, .. }| source)?;
        }
        Ok(())
    }
}

impl CommitIndex for MerkleIndex {
    /// Replicated keys, the WAL index, and the index's own entries (written by anyone else,
    /// they can no longer be trusted).
    fn watches(&self, key: &str) -> bool {
        !is_local(key) || key == WAL_LAST_KEY || key.starts_with(LEAF_PREFIX)
    }

    fn begin(&self) -> Box<dyn IndexUpdate> {
        let (load, complete) = match *self.shared.state() {
            State::Building | State::Rebuilding => (false, false),
            State::Load => (true, true),
            State::Ready(_) => (false, true),
        };
        let rechecks = {
            let mut queue = self.shared.rechecks();
            let take = queue.len().min(RECHECKS_PER_COMMIT);
            queue.drain(..take).collect()
        };
        Box::new(Update {
            shared: self.shared.clone(),
            load,
            complete,
            tampered: false,
            deltas: BTreeMap::new(),
            wal_index: None,
            leaves: BTreeMap::new(),
            rechecks,
            loaded: None,
        })
    }
}

/// One commit's update.
struct Update {
    shared: Arc<Shared>,
    /// Sum every entry (as the commit leaves them) into a new mirror.
    load: bool,
    /// The entries are complete: the commit records the WAL index it saw in the index state,
    /// so an open can tell whether writes happened without the index.
    complete: bool,
    /// The commit writes the index's entries itself: the index is no longer exact.
    tampered: bool,
    /// Per bucket: the change the commit's writes make to the sums.
    deltas: BTreeMap<usize, BucketSums>,
    /// The WAL index the commit writes (or, loading, the one it leaves).
    wal_index: Option<u64>,
    /// Leaf entries to write (`None`: delete), by entry key.
    leaves: BTreeMap<String, Option<Vec<u8>>>,
    /// Keys (with the entry found for each) whose entries this commit rewrites from their
    /// values, handed back if it does not commit.
    rechecks: Vec<Recheck>,
    /// Loading: the sums of every entry.
    loaded: Option<Sums>,
}

impl IndexUpdate for Update {
    fn change(&mut self, key: &str, old: Option<&[u8]>, new: Option<&[u8]>) {
        if key == WAL_LAST_KEY {
            // Deleted (a wipe): no WAL, index 0.
            self.wal_index = Some(decode_wal_index(new));
            return;
        }
        if key.starts_with(LEAF_PREFIX) {
            tracing::error!(
                entry = key,
                "a Merkle index entry was written outside the index"
            );
            self.tampered = true;
            return;
        }
        let key_hash: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let cell = cell_of_hash(&key_hash);
        let (bucket, slot) = (
            cell as usize / CELLS_PER_BUCKET,
            cell as usize % CELLS_PER_BUCKET,
        );
        let mut id = [0u8; 16];
        id.copy_from_slice(key_hash.get(..16).unwrap_or(&[0; 16]));
        let mut leaf = None;
        for (value, sign) in [(old, false), (new, true)] {
            if let Some(value) = value {
                let digest = digest_of_leaf(&leaf_hash(key, value));
                self.deltas
                    .entry(bucket)
                    .or_default()
                    .count(slot, digest, sign);
                if sign {
                    leaf = Some(encode_leaf(digest, key));
                }
            }
        }
        self.leaves.insert(leaf_key(cell, &id), leaf);
    }

    /// Per recheck: its key (if named) and the entry found (if any); then, loading, the WAL
    /// index.
    fn reads(&self) -> Vec<String> {
        let mut keys: Vec<String> = Vec::new();
        for (name, found) in &self.rechecks {
            if !name.is_empty() {
                keys.push(name.clone());
            }
            if let Some((found, _)) = found {
                keys.push(found.clone());
            }
        }
        if self.load && self.wal_index.is_none() {
            keys.push(WAL_LAST_KEY.into());
        }
        keys
    }

    fn finish(&mut self, records: Vec<Option<Vec<u8>>>) -> bunker_storage::Result<Vec<Op>> {
        let mut records = records.into_iter();
        // Rechecks: each key's entry from its value as this commit leaves it (the reads see
        // the commit's own writes, so a key it also wrote gets the same entry).
        for (name, found) in &self.rechecks {
            let right = if name.is_empty() {
                None
            } else {
                let (cell, id) = super::cell_and_id(name);
                let entry = records
                    .next()
                    .flatten()
                    .map(|value| encode_leaf(digest_of_leaf(&leaf_hash(name, &value)), name));
                let right = leaf_key(cell, &id);
                self.leaves.entry(right.clone()).or_insert(entry);
                Some(right)
            };
            if let Some((found, seen)) = found {
                let now = records.next().flatten();
                // Not the entry of its name: deleted, unless it changed since the snapshot (a
                // commit since wrote it for the key whose place it is).
                if Some(found) != right.as_ref() && now.as_ref() == Some(seen) {
                    self.leaves.entry(found.clone()).or_insert(None);
                }
            }
        }
        if self.load && self.wal_index.is_none() {
            self.wal_index = Some(decode_wal_index(records.next().flatten().as_deref()));
        }
        let mut ops: Vec<Op> = std::mem::take(&mut self.leaves)
            .into_iter()
            .map(|(key, value)| match value {
                Some(value) => Op::Put { key, value },
                None => Op::Delete { key },
            })
            .collect();
        if self.tampered {
            // Not to be trusted at the next open either.
            ops.push(Op::Delete {
                key: INDEX_STATE_KEY.into(),
            });
        } else if let (true, Some(wal_index)) = (self.complete, self.wal_index) {
            let mut state = vec![INDEX_FORMAT];
            state.extend_from_slice(&wal_index.to_be_bytes());
            ops.push(Op::Put {
                key: INDEX_STATE_KEY.into(),
                value: state,
            });
        }
        if self.load {
            self.loaded = Some(empty_sums());
        }
        Ok(ops)
    }

    fn scan_prefix(&self) -> Option<&str> {
        self.load.then_some(LEAF_PREFIX)
    }

    fn scanned(&mut self, key: &str, value: &[u8]) {
        let Some(sums) = self.loaded.as_mut() else {
            return;
        };
        match decode_leaf(key, value) {
            Some((cell, _, digest, _)) => count_in(sums, cell, digest),
            None => {
                tracing::error!(entry = key, "malformed Merkle index entry; run reindex");
                self.shared.corrupt.store(true, Ordering::Relaxed);
            }
        }
    }

    fn committed(mut self: Box<Self>) {
        self.rechecks.clear();
        let mut state = self.shared.state();
        if self.tampered {
            self.shared.corrupt.store(true, Ordering::Relaxed);
            *state = State::Building;
            return;
        }
        match &mut *state {
            State::Building | State::Rebuilding => {}
            State::Load => {
                if let Some(sums) = self.loaded.take() {
                    *state = State::Ready(Mirror::new(sums, self.wal_index.unwrap_or(0)));
                }
            }
            State::Ready(mirror) => {
                mirror.apply(&self.deltas);
                match self.wal_index {
                    Some(index) => {
                        mirror.wal_index = index;
                        mirror.exact = true;
                    }
                    None if self.deltas.values().any(|d| !d.is_zero()) => mirror.exact = false,
                    None => {}
                }
            }
        }
    }
}

impl Drop for Update {
    fn drop(&mut self) {
        // Not committed: the rechecks wait for the next commit.
        if !self.rechecks.is_empty() {
            self.shared
                .rechecks()
                .extend(std::mem::take(&mut self.rechecks));
        }
    }
}

#[cfg(test)]
mod tests;
