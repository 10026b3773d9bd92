//! The Merkle index: every bucket's key count and cell sums, kept in storage by the commits
//! that change them, so the tree costs no scan.
//!
//! Design:
//! - **Same transaction as the data.** The backend feeds each commit's writes of replicated keys,
//!   with the values they replace, to a [`CommitIndex`] update; the update reads the bucket
//!   records it touches inside that transaction and writes them back changed by `+ new - old`
//!   (cell sums are additive). A crash can never leave data and index apart.
//! - **One record per bucket** (`repl/merkle/bucket/{bucket:03x}`: key count and 64 cell sums,
//!   520 bytes), local to the cluster like the WAL. A write of one key rewrites one record.
//! - **A mirror in memory.** Once loaded, the writer installs each committed record in a mirror
//!   with its bucket hash, so the tree, the root and the cell sums are read without touching
//!   storage: O(buckets), never O(keys). The mirror also keeps the WAL index written in the same
//!   commit, so a root is always reported with the exact index it describes.
//! - **Rebuilt by correction, while writes go on.** A rebuild reads one consistent snapshot,
//!   which holds the data and the records as of the same commit, and computes per bucket
//!   `correction = true - stored`. The next commit adds it to the records. Commits in between
//!   changed the records by exact deltas, so adding the correction makes them exact whatever was
//!   written meanwhile. The same comparison without the correction is `merkle-check`.
//! - **Built once.** [`INDEX_STATE_KEY`] says the records are complete. A store without it (an
//!   older version's data, or a first start) is rebuilt when the index is opened; until then
//!   callers fall back to scanning. Only backends that feed indexes keep one (PostgreSQL does
//!   not: the replaced values would cost a read round trip in every group commit).
//!
//! The index is only exact if every commit since it was built went through it: the hook is
//! installed when the WAL is opened, before the server serves writes. Data written by a
//! version without the index leaves it stale; `reindex` repairs it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use bunker_storage::{
    Backend, CommitIndex, IndexUpdate, Op, SnapshotPage, SnapshotSink, StorageError,
};
use sha2::{Digest, Sha256};

use super::{
    cell_of_hash, digest_of_leaf, leaf_hash, root_of, MerkleError, MerkleTree, BUCKETS,
    CELLS_PER_BUCKET,
};
use crate::wal::{is_local, WAL_LAST_KEY};

/// Records of the index live under this prefix (local: never replicated).
pub const INDEX_PREFIX: &str = "repl/merkle/";
/// One record per non-empty bucket: `repl/merkle/bucket/{bucket:03x}`.
pub const BUCKET_PREFIX: &str = "repl/merkle/bucket/";
/// Present (one byte, the format) once the bucket records are complete.
pub const INDEX_STATE_KEY: &str = "repl/merkle/state";
const INDEX_FORMAT: u8 = 1;
const RECORD_BYTES: usize = 8 + 8 * CELLS_PER_BUCKET;

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

    fn minus(&self, other: &BucketSums) -> BucketSums {
        let mut diff = *self;
        diff.keys = diff.keys.wrapping_sub(other.keys);
        for (sum, less) in diff.cells.iter_mut().zip(other.cells.iter()) {
            *sum = sum.wrapping_sub(*less);
        }
        diff
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

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(RECORD_BYTES);
        out.extend_from_slice(&self.keys.to_be_bytes());
        for sum in &self.cells {
            out.extend_from_slice(&sum.to_be_bytes());
        }
        out
    }

    fn decode(bytes: &[u8]) -> Option<BucketSums> {
        if bytes.len() != RECORD_BYTES {
            return None;
        }
        let mut words = bytes
            .chunks_exact(8)
            .map(|word| <[u8; 8]>::try_from(word).map(u64::from_be_bytes));
        let keys = words.next()?.ok()?;
        let mut cells = [0u64; CELLS_PER_BUCKET];
        for cell in cells.iter_mut() {
            *cell = words.next()?.ok()?;
        }
        Some(BucketSums { keys, cells })
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

fn record_key(bucket: usize) -> String {
    format!("{BUCKET_PREFIX}{bucket:03x}")
}

fn bucket_of_record(key: &str) -> Option<usize> {
    let hex = key.strip_prefix(BUCKET_PREFIX)?;
    usize::from_str_radix(hex, 16)
        .ok()
        .filter(|&b| b < BUCKETS && hex.len() == 3)
}

/// The index as the writer keeps it in memory.
struct Mirror {
    buckets: Vec<BucketSums>,
    hashes: Vec<[u8; 32]>,
    keys: u64,
    /// The WAL index written by the last commit the mirror includes...
    wal_index: u64,
    /// ...and whether the data is exactly as of that index: false after a commit that changed
    /// replicated data without writing the WAL index (a Merkle or snapshot sync's pages, a
    /// restore), until the next commit that writes one.
    exact: bool,
    root: Option<[u8; 32]>,
}

impl Mirror {
    fn new(buckets: Vec<BucketSums>, wal_index: u64) -> Mirror {
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
}

enum State {
    /// The records are incomplete (being built); commits keep them by deltas all the same.
    Building,
    /// The records are complete; the next commit reads them all and installs the mirror.
    Load,
    Ready(Mirror),
}

struct Shared {
    state: Mutex<State>,
    /// Corrections computed by a rebuild, waiting for a commit to add them.
    pending: Mutex<BTreeMap<usize, BucketSums>>,
    /// A record was malformed (read as empty) or written by something other than the index;
    /// `merkle-check` and status report it until a rebuild.
    corrupt: AtomicBool,
    /// `open` finished: a `Building` state from then on means the records need a rebuild.
    opened: AtomicBool,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding this lock; the state is consistent at every unlock.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn pending(&self) -> MutexGuard<'_, BTreeMap<usize, BucketSums>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What a comparison of the stored index with the keyspace found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IndexCheck {
    /// The tree recomputed from the keyspace.
    pub tree: Option<MerkleTree>,
    /// Buckets and cells whose stored sums differed from the recomputed ones.
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
    /// An index not yet opened: commits keep its records, nothing is read from it.
    pub fn new() -> MerkleIndex {
        MerkleIndex {
            shared: Arc::new(Shared {
                state: Mutex::new(State::Building),
                pending: Mutex::new(BTreeMap::new()),
                corrupt: AtomicBool::new(false),
                opened: AtomicBool::new(false),
            }),
            rebuilding: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// Loads the records if they are complete, else builds them (one snapshot of the store).
    /// Call with the index installed in the backend's hook, before the backend serves writes.
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
        let wal_index = backend
            .get(WAL_LAST_KEY)
            .await
            .map_err(storage("reading the WAL index"))?
            .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
            .map_or(0, u64::from_be_bytes);
        let usable = match state.as_deref() {
            Some([INDEX_FORMAT]) => true,
            // The WAL index the index last saw: another one means a version without the index
            // recorded writes since.
            Some([INDEX_FORMAT, seen @ ..]) => {
                <[u8; 8]>::try_from(seen).ok().map(u64::from_be_bytes) == Some(wal_index)
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
        let mut buckets = vec![BucketSums::default(); BUCKETS];
        let mut after: Option<String> = None;
        loop {
            let page = backend
                .scan(BUCKET_PREFIX, after.as_deref(), 1024)
                .await
                .map_err(storage("loading the Merkle index"))?;
            for (key, value) in &page {
                if let Some(slot) = bucket_of_record(key).and_then(|b| buckets.get_mut(b)) {
                    *slot = self.decode_record(key, value);
                }
            }
            match page.last() {
                Some((last, _)) if page.len() == 1024 => after = Some(last.clone()),
                _ => break,
            }
        }
        *self.shared.state() = State::Ready(Mirror::new(buckets, wal_index));
        Ok(())
    }

    fn decode_record(&self, key: &str, value: &[u8]) -> BucketSums {
        BucketSums::decode(value).unwrap_or_else(|| {
            tracing::error!(record = key, "malformed Merkle index record; run reindex");
            self.shared.corrupt.store(true, Ordering::Relaxed);
            BucketSums::default()
        })
    }

    /// Whether the tree can be read from the index (no scan).
    pub fn is_ready(&self) -> bool {
        matches!(*self.shared.state(), State::Ready(_))
    }

    /// Whether a malformed record was met since the last rebuild.
    pub fn is_corrupt(&self) -> bool {
        self.shared.corrupt.load(Ordering::Relaxed)
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

    /// Declares the data exactly the state at the last WAL index written: replication calls
    /// this where changes made outside the WAL become a new starting point (a mode change, a
    /// restore, the end of a sync).
    pub fn mark_exact(&self) {
        if let State::Ready(mirror) = &mut *self.shared.state() {
            mirror.exact = true;
        }
    }

    /// Whether the index was opened and found (or made) inconsistent: its records were
    /// written by something other than the index. A rebuild repairs it.
    pub fn needs_rebuild(&self) -> bool {
        self.shared.opened.load(Ordering::Acquire)
            && matches!(*self.shared.state(), State::Building)
    }

    /// The tree and the WAL index it is exact for.
    pub fn tree(&self) -> Option<(MerkleTree, u64)> {
        let mut state = self.shared.state();
        let State::Ready(mirror) = &mut *state else {
            return None;
        };
        let root = mirror.root();
        let tree = MerkleTree {
            buckets: mirror.hashes.clone(),
            root,
            keys: mirror.keys,
        };
        Some((tree, mirror.wal_index))
    }

    /// The tree, every cell's sum, and the WAL index both are exact for.
    pub fn fingerprint(&self) -> Option<(MerkleTree, Vec<u64>, u64)> {
        let mut state = self.shared.state();
        let State::Ready(mirror) = &mut *state else {
            return None;
        };
        let root = mirror.root();
        let tree = MerkleTree {
            buckets: mirror.hashes.clone(),
            root,
            keys: mirror.keys,
        };
        Some((tree, cells_of(&mirror.buckets), mirror.wal_index))
    }

    /// Compares the stored records with the keyspace, as of one snapshot; changes nothing.
    pub async fn check(
        &self,
        backend: &dyn Backend,
        scanned: &AtomicU64,
    ) -> Result<IndexCheck, MerkleError> {
        let _one = self.rebuilding.lock().await;
        let (check, _) = compare(backend, scanned).await?;
        Ok(check)
    }

    /// Makes the stored records exact (and loads the mirror if it was not): compares them with
    /// one snapshot of the keyspace and has the next commit add the difference, then commits
    /// the index state. Writes may go on meanwhile.
    pub async fn rebuild(
        &self,
        backend: &dyn Backend,
        scanned: &AtomicU64,
    ) -> Result<IndexCheck, MerkleError> {
        let _one = self.rebuilding.lock().await;
        // A correction left by a rebuild whose commit failed, or carried by a commit still in
        // flight, is not in the records the snapshot would show: a commit first, so every
        // earlier one has landed, or it would be counted twice.
        mark_complete(backend).await?;
        let (check, corrections) = compare(backend, scanned).await?;
        self.shared.pending().extend(corrections);
        // The next commit adds the correction and reloads the mirror from the corrected
        // records (the mirror may differ from the records it was loaded from).
        *self.shared.state() = State::Load;
        self.shared.corrupt.store(false, Ordering::Relaxed);
        mark_complete(backend).await?;
        Ok(check)
    }
}

/// Writes the index state; its commit carries any pending correction.
async fn mark_complete(backend: &dyn Backend) -> Result<(), MerkleError> {
    backend
        .batch(vec![Op::Put {
            key: INDEX_STATE_KEY.into(),
            value: vec![INDEX_FORMAT],
        }])
        .await
        .map_err(storage("committing the Merkle index"))
}

/// The keyspace's true sums against the stored records, from one snapshot: the check, and
/// per differing bucket the correction `true - stored`.
async fn compare(
    backend: &dyn Backend,
    scanned: &AtomicU64,
) -> Result<(IndexCheck, BTreeMap<usize, BucketSums>), MerkleError> {
    let mut sink = CompareSink {
        truth: vec![BucketSums::default(); BUCKETS],
        stored: vec![BucketSums::default(); BUCKETS],
        scanned,
        read: 0,
    };
    backend
        .snapshot(&mut sink)
        .await
        .map_err(storage("reading a snapshot for the Merkle index"))?;
    let mut corrections = BTreeMap::new();
    let mut check = IndexCheck {
        scanned: sink.read,
        ..IndexCheck::default()
    };
    for (bucket, (truth, stored)) in sink.truth.iter().zip(sink.stored.iter()).enumerate() {
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
        corrections.insert(bucket, truth.minus(stored));
    }
    check.tree = Some(tree_of(&sink.truth));
    Ok((check, corrections))
}

struct CompareSink<'a> {
    truth: Vec<BucketSums>,
    stored: Vec<BucketSums>,
    scanned: &'a AtomicU64,
    read: u64,
}

#[async_trait]
impl SnapshotSink for CompareSink<'_> {
    async fn page(&mut self, entries: SnapshotPage) -> bunker_storage::Result<()> {
        for (key, value) in entries {
            if !is_local(&key) {
                let (bucket, slot, digest) = locate(&key, &value);
                if let Some(sums) = self.truth.get_mut(bucket) {
                    sums.count(slot, digest, true);
                }
                self.read += 1;
                self.scanned.fetch_add(1, Ordering::Relaxed);
            } else if let Some(bucket) = bucket_of_record(&key) {
                if let Some(slot) = self.stored.get_mut(bucket) {
                    // A malformed record reads as empty: the correction rewrites it whole.
                    *slot = BucketSums::decode(&value).unwrap_or_default();
                }
            }
        }
        Ok(())
    }
}

impl CommitIndex for MerkleIndex {
    /// Replicated keys, the WAL index, and the index's own records (written by anyone else,
    /// they can no longer be trusted).
    fn watches(&self, key: &str) -> bool {
        !is_local(key) || key == WAL_LAST_KEY || key.starts_with(BUCKET_PREFIX)
    }

    fn begin(&self) -> Box<dyn IndexUpdate> {
        let (load, complete) = match *self.shared.state() {
            State::Building => (false, false),
            State::Load => (true, true),
            State::Ready(_) => (false, true),
        };
        let correction = std::mem::take(&mut *self.shared.pending());
        Box::new(Update {
            shared: self.shared.clone(),
            load,
            complete,
            tampered: false,
            deltas: correction.clone(),
            correction,
            wal_index: None,
            written: Vec::new(),
        })
    }
}

/// One commit's update.
struct Update {
    shared: Arc<Shared>,
    /// Read every record and install the mirror at the commit.
    load: bool,
    /// The records are complete: the commit also records the WAL index it writes in the index
    /// state, so an open can tell whether writes happened without the index.
    complete: bool,
    /// The commit writes the index's records itself: the index is no longer exact.
    tampered: bool,
    /// Per bucket: the commit's writes, plus the correction.
    deltas: BTreeMap<usize, BucketSums>,
    /// The correction this commit carries, handed back if it does not commit.
    correction: BTreeMap<usize, BucketSums>,
    /// The WAL index the commit writes, if it writes one.
    wal_index: Option<u64>,
    /// The records after the commit: the buckets it touched (all of them when loading).
    written: Vec<(usize, BucketSums)>,
}

impl IndexUpdate for Update {
    fn change(&mut self, key: &str, old: Option<&[u8]>, new: Option<&[u8]>) {
        if key == WAL_LAST_KEY {
            // Deleted (a wipe): no WAL, index 0.
            self.wal_index = Some(
                new.and_then(|v| <[u8; 8]>::try_from(v).ok())
                    .map_or(0, u64::from_be_bytes),
            );
            return;
        }
        if key.starts_with(BUCKET_PREFIX) {
            tracing::error!(
                record = key,
                "a Merkle index record was written outside the index"
            );
            self.tampered = true;
            return;
        }
        for (value, sign) in [(old, false), (new, true)] {
            if let Some(value) = value {
                let (bucket, slot, digest) = locate(key, value);
                self.deltas
                    .entry(bucket)
                    .or_default()
                    .count(slot, digest, sign);
            }
        }
    }

    fn reads(&self) -> Vec<String> {
        let mut keys: Vec<String> = if self.load {
            (0..BUCKETS).map(record_key).collect()
        } else {
            self.deltas.keys().map(|&b| record_key(b)).collect()
        };
        if self.load && self.wal_index.is_none() {
            keys.push(WAL_LAST_KEY.into());
        }
        keys
    }

    fn finish(&mut self, records: Vec<Option<Vec<u8>>>) -> bunker_storage::Result<Vec<Op>> {
        let buckets: Vec<usize> = if self.load {
            (0..BUCKETS).collect()
        } else {
            self.deltas.keys().copied().collect()
        };
        let mut ops = Vec::new();
        let mut records = records.into_iter();
        for bucket in buckets {
            let key = record_key(bucket);
            let mut sums = match records.next().flatten() {
                Some(value) => BucketSums::decode(&value).unwrap_or_else(|| {
                    tracing::error!(record = %key, "malformed Merkle index record; run reindex");
                    self.shared.corrupt.store(true, Ordering::Relaxed);
                    BucketSums::default()
                }),
                None => BucketSums::default(),
            };
            if let Some(delta) = self.deltas.get(&bucket).filter(|d| !d.is_zero()) {
                sums.add(delta);
                ops.push(if sums.is_zero() {
                    Op::Delete { key }
                } else {
                    Op::Put {
                        key,
                        value: sums.encode(),
                    }
                });
            }
            self.written.push((bucket, sums));
        }
        if self.load && self.wal_index.is_none() {
            self.wal_index = Some(
                records
                    .next()
                    .flatten()
                    .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
                    .map_or(0, u64::from_be_bytes),
            );
        }
        if let (true, false, Some(wal_index)) = (self.complete, self.tampered, self.wal_index) {
            let mut state = vec![INDEX_FORMAT];
            state.extend_from_slice(&wal_index.to_be_bytes());
            ops.push(Op::Put {
                key: INDEX_STATE_KEY.into(),
                value: state,
            });
        }
        Ok(ops)
    }

    fn committed(mut self: Box<Self>) {
        self.correction.clear();
        let mut state = self.shared.state();
        if self.tampered {
            self.shared.corrupt.store(true, Ordering::Relaxed);
            *state = State::Building;
            return;
        }
        let changed = self.deltas.values().any(|d| !d.is_zero());
        match &mut *state {
            State::Building => {}
            State::Load if !self.load => {}
            State::Load => {
                let mut buckets = vec![BucketSums::default(); BUCKETS];
                for (bucket, sums) in self.written.drain(..) {
                    if let Some(slot) = buckets.get_mut(bucket) {
                        *slot = sums;
                    }
                }
                *state = State::Ready(Mirror::new(buckets, self.wal_index.unwrap_or(0)));
            }
            State::Ready(mirror) => {
                for (bucket, sums) in self.written.drain(..) {
                    let (Some(slot), Some(hash)) = (
                        mirror.buckets.get_mut(bucket),
                        mirror.hashes.get_mut(bucket),
                    ) else {
                        continue;
                    };
                    if *slot != sums {
                        mirror.keys = mirror.keys.wrapping_sub(slot.keys).wrapping_add(sums.keys);
                        *slot = sums;
                        *hash = sums.hash();
                        mirror.root = None;
                    }
                }
                match self.wal_index {
                    Some(index) => {
                        mirror.wal_index = index;
                        mirror.exact = true;
                    }
                    None if changed => mirror.exact = false,
                    None => {}
                }
            }
        }
    }
}

impl Drop for Update {
    fn drop(&mut self) {
        // Not committed: the correction waits for the next commit.
        if self.correction.is_empty() {
            return;
        }
        let mut pending = self.shared.pending();
        for (bucket, correction) in std::mem::take(&mut self.correction) {
            pending.entry(bucket).or_default().add(&correction);
        }
    }
}

#[cfg(test)]
mod tests;
