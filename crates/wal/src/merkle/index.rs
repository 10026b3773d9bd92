//! The Merkle index: the tree's sums in memory, kept current by every commit, so status, a
//! primary answering a secondary's tree request and a secondary comparing its own tree never
//! scan the keyspace.
//!
//! Design:
//! - **Fed by the commit itself.** The backend hands each commit's writes of replicated keys,
//!   with the values they replace (redb's `insert`/`remove` return them inside the writer's
//!   transaction), to a [`CommitIndex`] update. Cell sums are additive, so the update's
//!   `+ new - old` per cell is added to the sums once the commit is durable, in commit order
//!   (the writer runs one commit at a time). The WAL index the same commit writes is kept with
//!   them, so a root is always reported with the exact index it describes.
//! - **Nothing stored.** Keeping sums or per-key entries in storage was built and measured
//!   (`bench/README.md`, "The Merkle index"): every commit then rewrites pages at random places
//!   in the B-tree (index keys are ordered by hash, data keys by path), which cost 35–55 % of
//!   the write throughput at 64 connections. Memory costs about 2.2 MiB at most (the sums
//!   of the buckets that hold keys, their table and hashes) and no write.
//! - **Summed once at open, in steps.** Opening sums the replicated keyspace once; afterwards
//!   only commits change the sums. The summing reads the keyspace in steps of [`STEP_ENTRIES`]
//!   entries, each inside a commit, while every commit adds its own writes of the keys already
//!   summed, so a server serves while its index is summed (`MerkleIndex::build`) and no write
//!   waits for more than a step. A restart pays that scan again, in the background.
//! - **Checked and rebuilt inside a commit.** `merkle-check` and `reindex` have the next commit
//!   sum the whole keyspace inside its own transaction, after its writes: the recomputation and
//!   the sums describe the same point, exactly, whatever is written around it. Writes wait for
//!   that one commit (a scan of the keyspace); `reindex` then replaces the sums with it.
//!
//! Only backends that feed indexes keep one (PostgreSQL does not: the replaced values would
//! cost a read round trip in every group commit). The sums are only exact if every commit
//! since the open went through the index: the hook is installed when the WAL is opened, before
//! the server serves writes.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bunker_storage::{Backend, CommitIndex, IndexUpdate, KeyRange, Op, StorageError};
use tokio::sync::oneshot;

use super::sums::{locate_key, CellSums};
use super::{leaf_digest, root_of, MerkleError, MerkleTree, BUCKETS, PAST_LOCAL_KEYS};
use crate::keys::{is_local, LOCAL_PREFIX, WAL_LAST_KEY};

/// Written by the commit that carries a check, a rebuild or a summing step (never read).
const INDEX_BARRIER_KEY: &str = "repl/merkle-barrier";
/// Replicated entries one summing step reads inside its commit (about 0.1 s of a writer's
/// time, so the writes queued behind a step wait that long at most)...
const STEP_ENTRIES: usize = 50_000;
/// ...and bytes of keys and values (values may be large).
const STEP_BYTES: usize = 32 << 20;
/// Commits a check asks for before it gives up.
const VERIFY_ATTEMPTS: usize = 3;

/// Takes a check request back from the index when dropped.
struct Pending<'a>(&'a Shared);

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.0.verify().take();
    }
}

fn decode_wal_index(value: Option<&[u8]>) -> u64 {
    value
        .and_then(|v| <[u8; 8]>::try_from(v).ok())
        .map_or(0, u64::from_be_bytes)
}

/// The sums as the writer keeps them.
struct Mirror {
    sums: CellSums,
    /// The hash of every non-empty bucket, as of the last read of the tree: buckets in `stale`
    /// are hashed again (or dropped) by [`Mirror::refresh`] before the tree or root is read.
    /// Lazy because the writer changes a bucket far more often than status reads the root:
    /// hashing a bucket (one to ten SHA-256 blocks, as it fills) on every commit that touched
    /// it was the storage writer's largest Merkle cost. The reader hashes under the mirror's
    /// lock, so the writer's next commit may wait for a refresh of every bucket changed since
    /// the last read; in all, never more hashing than the commits did before.
    hashes: BTreeMap<u32, [u8; 32]>,
    /// Buckets whose sums changed since their hash in `hashes` was computed.
    stale: StaleBuckets,
    keys: u64,
    /// The WAL index written by the last commit the sums include...
    wal_index: u64,
    /// ...and whether the data is exactly as of that index: false after a commit that changed
    /// replicated data without writing the WAL index (a Merkle or snapshot sync's pages, a
    /// restore), until the next commit that writes one or replication declares it exact.
    exact: bool,
    root: Option<[u8; 32]>,
}

impl Mirror {
    /// The mirror of `sums`, whose tree (computed from them) is `tree`.
    fn new(sums: CellSums, tree: &MerkleTree, wal_index: u64) -> Mirror {
        Mirror {
            sums,
            hashes: tree.buckets.iter().copied().collect(),
            stale: StaleBuckets::default(),
            keys: tree.keys,
            wal_index,
            exact: true,
            root: Some(tree.root),
        }
    }

    /// Brings `hashes` up to date with the sums: each stale bucket hashed once, however many
    /// commits changed it since the last read.
    fn refresh(&mut self) {
        for bucket in self.stale.take() {
            match self.sums.bucket(bucket) {
                Some(sums) => self.hashes.insert(bucket, sums.hash()),
                None => self.hashes.remove(&bucket),
            };
        }
    }

    fn buckets(&mut self) -> Vec<(u32, [u8; 32])> {
        self.refresh();
        self.hashes.iter().map(|(&b, &hash)| (b, hash)).collect()
    }

    fn root(&mut self) -> [u8; 32] {
        match self.root {
            Some(root) => root,
            None => {
                let buckets = self.buckets();
                self.cache_root(&buckets)
            }
        }
    }

    /// The root of `buckets` (this mirror's), cached.
    fn cache_root(&mut self, buckets: &[(u32, [u8; 32])]) -> [u8; 32] {
        let root = root_of(buckets);
        self.root = Some(root);
        root
    }

    fn tree(&mut self) -> MerkleTree {
        let buckets = self.buckets();
        let root = match self.root {
            Some(root) => root,
            None => self.cache_root(&buckets),
        };
        MerkleTree {
            root,
            buckets,
            keys: self.keys,
        }
    }

    fn apply(&mut self, deltas: &[CellDelta]) {
        for delta in deltas {
            self.sums
                .add_cell(delta.bucket, delta.slot, delta.keys, delta.sum);
            self.stale.insert(delta.bucket);
            self.keys = self.keys.wrapping_add(delta.keys);
            self.root = None;
        }
    }
}

/// One replicated value's change to the sums: a key added (`keys` 1, `sum` its leaf digest)
/// or removed (the negations, wrapping), in cell `slot` of `bucket`.
///
/// A commit's changes are kept as a list of these rather than a whole bucket's sums per
/// bucket touched (520 bytes, zeroed, moved into a map, then added cell by cell to the mirror
/// and checked for zero): a KV write changes one cell in each of two buckets. The sums are
/// additive, so the order of the changes does not change the result; a value's addition is
/// recorded before the removal of the one it replaces, so that overwriting a bucket's only
/// key does not empty the bucket (freeing and allocating it again) in between.
#[derive(Clone, Copy, Debug)]
struct CellDelta {
    bucket: u32,
    slot: usize,
    keys: u64,
    sum: u64,
}

/// A set of bucket numbers as one bit each (512 bytes): marking a bucket is a bit set in a
/// line the writer keeps in cache, where a `BTreeSet` insert cost an allocation and a few
/// cache misses per changed bucket on the storage writer (`bench/README.md`).
#[derive(Clone)]
struct StaleBuckets([u64; BUCKETS / 64]);

const _: () = assert!(BUCKETS.is_multiple_of(64), "every bucket has its bit");

impl Default for StaleBuckets {
    fn default() -> Self {
        StaleBuckets([0; BUCKETS / 64])
    }
}

impl StaleBuckets {
    /// Marks `bucket`; one past the last is ignored.
    fn insert(&mut self, bucket: u32) {
        if let Some(word) = self.0.get_mut(bucket as usize / 64) {
            *word |= 1 << (bucket % 64);
        }
    }

    /// The marked buckets, ascending, leaving none marked.
    fn take(&mut self) -> Vec<u32> {
        let mut taken = Vec::new();
        for (at, word) in self.0.iter_mut().enumerate() {
            let mut bits = std::mem::take(word);
            while bits != 0 {
                // Below BUCKETS (4,096): fits a u32.
                taken.push((at * 64) as u32 + bits.trailing_zeros());
                bits &= bits - 1;
            }
        }
        taken
    }
}

/// A check (and, `repair`, a rebuild) waiting for the commit that carries it.
struct Verify {
    repair: bool,
    reply: oneshot::Sender<IndexCheck>,
}

struct Shared {
    /// `None` until opened (or after a failed open): callers fall back to scanning.
    mirror: Mutex<Option<Mirror>>,
    verify: Mutex<Option<Verify>>,
    /// Entries a check's commit has summed so far (progress for status).
    progress: AtomicU64,
    /// The last check found the sums wrong (and did not repair them).
    corrupt: AtomicBool,
    /// Another index replaced this one on the backend: it is fed no more. Set under the
    /// mirror's lock, so no commit in flight installs sums after it.
    retired: AtomicBool,
    /// Whether the data is exact at its last WAL index while there are no sums (before the
    /// first summing, or after a failed one): what `set_exact` and the commits since said, for
    /// the sums a rebuild installs.
    exact_unsummed: AtomicBool,
    /// A summing in steps under way (see [`MerkleIndex::build`]); never while `mirror` is set.
    build: Mutex<Option<Build>>,
    /// A summing step is wanted: the next commit carries it.
    step_wanted: AtomicBool,
    /// The generation of the last summing started.
    builds: AtomicU64,
    /// Entries per step ([`STEP_ENTRIES`]; tests take fewer).
    step_entries: std::sync::atomic::AtomicUsize,
    /// Whether `mirror` holds sums, for [`MerkleIndex::wait_ready`].
    ready: tokio::sync::watch::Sender<bool>,
}

/// The state of a summing in steps: the sums of every replicated key up to `through`, kept
/// current by every commit since (a commit's writes of keys past `through` are left for the
/// step that reaches them, which reads them as they are then).
#[derive(Default)]
struct Build {
    /// Which summing this is: an update that began under another (or none) adds nothing.
    generation: u64,
    sums: CellSums,
    /// The last key summed (`None`: none yet).
    through: Option<String>,
    /// The WAL index the sums are exact for.
    wal_index: u64,
}

/// What one summing step read inside its commit.
#[derive(Default)]
struct Step {
    sums: CellSums,
    /// The last replicated key read.
    last: Option<String>,
    /// The WAL index, read with the keys.
    wal_index: Option<u64>,
    /// Replicated entries and their bytes read, against `limit` and [`STEP_BYTES`].
    entries: usize,
    bytes: usize,
    limit: usize,
    /// The step ended the scan at a bound (false: the keyspace is done).
    stopped: bool,
}

/// The key ranges a step after `through` reads: the replicated keys below the local prefix,
/// the WAL index, the replicated keys past the local range.
fn step_ranges(through: Option<&str>) -> Vec<KeyRange> {
    let mut ranges = Vec::with_capacity(3);
    match through {
        None => ranges.push((Bound::Unbounded, Bound::Excluded(LOCAL_PREFIX.to_owned()))),
        Some(t) if t < LOCAL_PREFIX => ranges.push((
            Bound::Excluded(t.to_owned()),
            Bound::Excluded(LOCAL_PREFIX.to_owned()),
        )),
        Some(_) => {}
    }
    ranges.push((
        Bound::Included(WAL_LAST_KEY.to_owned()),
        Bound::Included(WAL_LAST_KEY.to_owned()),
    ));
    let past_local = match through {
        Some(t) if t > PAST_LOCAL_KEYS.as_str() => t,
        _ => PAST_LOCAL_KEYS.as_str(),
    };
    ranges.push((Bound::Excluded(past_local.to_owned()), Bound::Unbounded));
    ranges
}

impl Shared {
    fn mirror(&self) -> MutexGuard<'_, Option<Mirror>> {
        // Nothing panics while holding these locks; the data is consistent at every unlock.
        self.mirror.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn verify(&self) -> MutexGuard<'_, Option<Verify>> {
        self.verify.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Taken after `mirror` when both are held.
    fn build(&self) -> MutexGuard<'_, Option<Build>> {
        self.build.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Installs `mirror` (sums now ready) and ends any summing under way.
    fn install(&self, slot: &mut Option<Mirror>, mirror: Mirror) {
        *slot = Some(mirror);
        *self.build() = None;
        self.ready.send_replace(true);
    }
}

/// What a comparison of the sums with the keyspace found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexCheck {
    /// The tree recomputed from the keyspace.
    pub tree: MerkleTree,
    /// Buckets and cells whose sums differed from the recomputed ones.
    pub differing_buckets: u64,
    pub differing_cells: u64,
    /// Replicated entries read.
    pub scanned: u64,
    /// The WAL index the recomputed tree is exact for (the one its commit left).
    pub wal_index: u64,
}

/// Replication's Merkle index over one backend (see the module documentation).
#[derive(Clone)]
pub struct MerkleIndex {
    shared: Arc<Shared>,
    /// One check or rebuild at a time.
    checking: Arc<tokio::sync::Mutex<()>>,
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
    /// An index not yet opened: it answers nothing.
    pub fn new() -> MerkleIndex {
        MerkleIndex {
            shared: Arc::new(Shared {
                mirror: Mutex::new(None),
                verify: Mutex::new(None),
                progress: AtomicU64::new(0),
                corrupt: AtomicBool::new(false),
                retired: AtomicBool::new(false),
                exact_unsummed: AtomicBool::new(true),
                build: Mutex::new(None),
                step_wanted: AtomicBool::new(false),
                builds: AtomicU64::new(0),
                step_entries: std::sync::atomic::AtomicUsize::new(STEP_ENTRIES),
                ready: tokio::sync::watch::Sender::new(false),
            }),
            checking: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// Sums the replicated keyspace in steps (see [`MerkleIndex::build`]) and waits for the
    /// sums. Call with the index installed in the backend's hook.
    pub async fn open(&self, backend: &dyn Backend) -> Result<(), MerkleError> {
        self.start_build();
        self.build(backend).await
    }

    /// Marks a summing in steps as under way (if the index has no sums), so that the commits
    /// from now on keep what the steps sum current; [`MerkleIndex::build`] then runs it.
    pub fn start_build(&self) {
        let mirror = self.shared.mirror();
        if mirror.is_none() && !self.is_retired() {
            let mut build = self.shared.build();
            if build.is_none() {
                *build = Some(Build {
                    generation: self.shared.builds.fetch_add(1, Ordering::SeqCst) + 1,
                    ..Build::default()
                });
            }
        }
    }

    /// Ends a summing that failed, so that status says so, waiters stop waiting (and scan),
    /// and the refresher starts another.
    fn abandon_build(&self) {
        let mirror = self.shared.mirror();
        if mirror.is_none() {
            *self.shared.build() = None;
        }
        drop(mirror);
        self.shared.ready.send_replace(self.is_ready());
    }

    /// Runs the summing [`MerkleIndex::start_build`] began: one commit after another carries a
    /// step that reads the next [`STEP_ENTRIES`] replicated entries after the last one summed,
    /// as that commit leaves them, while every commit adds its own writes of keys already
    /// summed. So the sums are exact when the last step ends, and writes are never held for
    /// more than a step: a restarted server serves while it sums (design reason: at ten million
    /// keys one summing commit held writes for most of a minute).
    pub async fn build(&self, backend: &dyn Backend) -> Result<(), MerkleError> {
        let started = std::time::Instant::now();
        let result = self.run_steps(backend).await;
        if let Err(error) = result {
            self.shared.step_wanted.store(false, Ordering::SeqCst);
            self.abandon_build();
            return Err(error);
        }
        if !self.is_ready() {
            return Err(check_failed("the summing stopped (the index was replaced)"));
        }
        tracing::info!(
            keys = self.root().map_or(0, |(_, keys, _)| keys),
            entries = self.progress(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "Merkle index summed"
        );
        Ok(())
    }

    /// The steps of [`MerkleIndex::build`], until the summing is no longer under way. Between
    /// two steps the writer gets half a step's time to itself.
    async fn run_steps(&self, backend: &dyn Backend) -> Result<(), MerkleError> {
        let mut untaken = 0;
        self.shared.progress.store(0, Ordering::Relaxed);
        while self.is_building() {
            self.shared.step_wanted.store(true, Ordering::SeqCst);
            let step = std::time::Instant::now();
            backend
                .batch(vec![Op::Put {
                    key: INDEX_BARRIER_KEY.into(),
                    value: vec![1],
                }])
                .await
                .map_err(storage("committing a Merkle index summing step"))?;
            // Still wanted: no commit took it (none fed this index).
            if self.shared.step_wanted.load(Ordering::SeqCst) {
                untaken += 1;
                if untaken >= VERIFY_ATTEMPTS {
                    return Err(check_failed("no commit carried the summing step"));
                }
                continue;
            }
            untaken = 0;
            if self.is_building() {
                tokio::time::sleep(step.elapsed() / 2).await;
            }
        }
        Ok(())
    }

    /// Entries each summing step reads (tests take a few, to cut small keyspaces in steps).
    #[cfg(test)]
    pub(crate) fn set_step_entries(&self, entries: usize) {
        self.shared
            .step_entries
            .store(entries.max(1), Ordering::Relaxed);
    }

    /// Whether a summing in steps is under way.
    pub fn is_building(&self) -> bool {
        self.shared.build().is_some()
    }

    /// Waits until the sums are ready; false if no summing is under way to make them so.
    pub async fn wait_ready(&self) -> bool {
        let mut ready = self.shared.ready.subscribe();
        loop {
            if self.is_ready() {
                return true;
            }
            if !self.is_building() || ready.changed().await.is_err() {
                return self.is_ready();
            }
        }
    }

    /// Whether the tree can be read from the index (no scan).
    pub fn is_ready(&self) -> bool {
        self.shared.mirror().is_some()
    }

    /// Whether the last check found the sums wrong.
    pub fn is_corrupt(&self) -> bool {
        self.shared.corrupt.load(Ordering::Relaxed)
    }

    /// Entries the running check or rebuild has summed so far.
    pub fn progress(&self) -> u64 {
        self.shared.progress.load(Ordering::Relaxed)
    }

    /// The root (hex), the number of keys, and the WAL index they are exact for (`None` while
    /// the data holds changes the WAL index does not show).
    pub fn root(&self) -> Option<(String, u64, Option<u64>)> {
        let mut mirror = self.shared.mirror();
        let mirror = mirror.as_mut()?;
        let root = mirror.root();
        let exact_at = mirror.exact.then_some(mirror.wal_index);
        Some((hex::encode(root), mirror.keys, exact_at))
    }

    /// The number of keys the sums hold, without hashing what changed since the last read.
    pub fn keys(&self) -> Option<u64> {
        self.shared.mirror().as_ref().map(|mirror| mirror.keys)
    }

    /// The tree and the WAL index it is exact for.
    pub fn tree(&self) -> Option<(MerkleTree, u64)> {
        let mut mirror = self.shared.mirror();
        let mirror = mirror.as_mut()?;
        Some((mirror.tree(), mirror.wal_index))
    }

    /// The tree, the cell sums, and the WAL index both are exact for.
    pub fn fingerprint(&self) -> Option<(MerkleTree, CellSums, u64)> {
        let mut mirror = self.shared.mirror();
        let mirror = mirror.as_mut()?;
        Some((mirror.tree(), mirror.sums.clone(), mirror.wal_index))
    }

    /// Declares whether the data is exactly the state at the last WAL index written:
    /// replication says so where changes made outside the WAL become a new starting point (a
    /// mode change into primary, a restore), and says not where it knows the data torn (a
    /// secondary stopped mid-sync).
    pub fn set_exact(&self, exact: bool) {
        let mut mirror = self.shared.mirror();
        match mirror.as_mut() {
            Some(mirror) => mirror.exact = exact,
            None => self.shared.exact_unsummed.store(exact, Ordering::SeqCst),
        }
    }

    /// This index is no longer fed (another was installed on the backend): it answers nothing
    /// from now on, rather than sums that no longer move.
    pub fn retire(&self) {
        let mut mirror = self.shared.mirror();
        self.shared.retired.store(true, Ordering::SeqCst);
        *mirror = None;
        *self.shared.build() = None;
        self.shared.ready.send_replace(false);
    }

    /// Whether another index replaced this one (see [`MerkleIndex::retire`]).
    pub fn is_retired(&self) -> bool {
        self.shared.retired.load(Ordering::SeqCst)
    }

    /// Compares the sums with the keyspace, summed inside one commit (see the module
    /// documentation); changes nothing.
    pub async fn check(&self, backend: &dyn Backend) -> Result<IndexCheck, MerkleError> {
        self.verify(backend, false).await
    }

    /// As [`MerkleIndex::check`], then replaces the sums with the recomputed ones (and makes
    /// an index whose open failed ready). Returns what the comparison found.
    pub async fn rebuild(&self, backend: &dyn Backend) -> Result<IndexCheck, MerkleError> {
        self.verify(backend, true).await
    }

    async fn verify(&self, backend: &dyn Backend, repair: bool) -> Result<IndexCheck, MerkleError> {
        let _one = self.checking.lock().await;
        if self.is_retired() {
            return Err(check_failed("this index was replaced and is fed no more"));
        }
        // A group commit that failed drops the request with it (its batches are retried one
        // by one, without it): ask again, a few times.
        for _ in 0..VERIFY_ATTEMPTS {
            let (reply, answer) = oneshot::channel();
            *self.shared.verify() = Some(Verify { repair, reply });
            // Taken back however this ends (also if the caller stops waiting): a request no
            // commit took must not ride on a later, unrelated commit.
            let _pending = Pending(&self.shared);
            self.shared.progress.store(0, Ordering::Relaxed);
            backend
                .batch(vec![Op::Put {
                    key: INDEX_BARRIER_KEY.into(),
                    value: vec![1],
                }])
                .await
                .map_err(storage("committing the Merkle index check"))?;
            // Still there: no commit took it (none fed this index); try again.
            if self.shared.verify().take().is_some() {
                continue;
            }
            if let Ok(check) = answer.await {
                return Ok(check);
            }
        }
        Err(check_failed("no commit carried the check to its end"))
    }
}

fn check_failed(message: &str) -> MerkleError {
    MerkleError::Storage {
        context: "checking the Merkle index".into(),
        source: StorageError::Engine {
            context: "checking the Merkle index".into(),
            message: message.into(),
        },
    }
}

impl CommitIndex for MerkleIndex {
    /// Replicated keys and the WAL index.
    fn watches(&self, key: &str) -> bool {
        !is_local(key) || key == WAL_LAST_KEY
    }

    fn begin(&self) -> Box<dyn IndexUpdate> {
        let verify = self.shared.verify().take();
        let truth = verify.as_ref().map(|_| (CellSums::new(), 0, 0));
        let (build_generation, build_through) = match self.shared.build().as_ref() {
            Some(build) => (Some(build.generation), Some(build.through.clone())),
            None => (None, None),
        };
        // A check reads everything already; a step waits for the next commit.
        let step = (verify.is_none()
            && build_through.is_some()
            && self.shared.step_wanted.swap(false, Ordering::SeqCst))
        .then(|| Step {
            limit: self.shared.step_entries.load(Ordering::Relaxed),
            ..Step::default()
        });
        Box::new(Update {
            shared: self.shared.clone(),
            deltas: Vec::new(),
            wal_index: None,
            verify,
            truth,
            build_generation,
            build_through,
            step,
            touched: false,
        })
    }
}

/// One commit's update.
struct Update {
    shared: Arc<Shared>,
    /// The changes the commit's writes make to the sums, one per value added or removed.
    deltas: Vec<CellDelta>,
    /// The WAL index the commit writes, if it writes one.
    wal_index: Option<u64>,
    /// A check this commit carries: it sums the keyspace as the commit leaves it.
    verify: Option<Verify>,
    /// The sums of the keyspace as the commit leaves it, the entries read, the WAL index
    /// (0 if the commit leaves none).
    truth: Option<(CellSums, u64, u64)>,
    /// While a summing in steps is under way: the last key it summed when this commit began.
    /// Writes of keys past it do not count (the step that reaches them reads them).
    build_through: Option<Option<String>>,
    /// The summing under way when this commit began, if any.
    build_generation: Option<u64>,
    /// The summing step this commit carries.
    step: Option<Step>,
    /// Whether the commit changed a replicated value (whatever the sums count of it).
    touched: bool,
}

impl IndexUpdate for Update {
    fn change(&mut self, key: &str, old: Option<&[u8]>, new: Option<&[u8]>) {
        if key == WAL_LAST_KEY {
            // Deleted (a wipe): no WAL, index 0.
            self.wal_index = Some(decode_wal_index(new));
            return;
        }
        if old == new {
            // Rewritten with the same value: the sums do not move.
            return;
        }
        self.touched = true;
        if let Some(through) = &self.build_through {
            if through.as_deref().is_none_or(|through| key > through) {
                return;
            }
        }
        let (bucket, slot) = locate_key(key);
        for (value, added) in [(new, true), (old, false)] {
            if let Some(value) = value {
                let digest = leaf_digest(key, value);
                let (keys, sum) = if added {
                    (1, digest)
                } else {
                    (1u64.wrapping_neg(), digest.wrapping_neg())
                };
                self.deltas.push(CellDelta {
                    bucket,
                    slot,
                    keys,
                    sum,
                });
            }
        }
    }

    /// The replicated keys and the WAL index, jumping over the rest of the local range (the
    /// WAL's entries, staged pages): a summing costs the keyspace, not the retained WAL.
    fn scan_ranges(&self) -> Vec<KeyRange> {
        if self.verify.is_none() {
            return match (&self.step, &self.build_through) {
                (Some(_), Some(through)) => step_ranges(through.as_deref()),
                _ => Vec::new(),
            };
        }
        vec![
            (Bound::Unbounded, Bound::Excluded(LOCAL_PREFIX.to_owned())),
            (
                Bound::Included(WAL_LAST_KEY.to_owned()),
                Bound::Included(WAL_LAST_KEY.to_owned()),
            ),
            (Bound::Excluded(PAST_LOCAL_KEYS.clone()), Bound::Unbounded),
        ]
    }

    /// Every entry of the scan ranges as the commit leaves them: the replicated ones are
    /// summed, and the WAL index is the one the recomputed tree is exact for.
    fn scanned(&mut self, key: &str, value: &[u8]) -> bool {
        if let (None, Some(step)) = (&self.truth, self.step.as_mut()) {
            if key == WAL_LAST_KEY {
                step.wal_index = Some(decode_wal_index(Some(value)));
            } else if !is_local(key) {
                if step.entries >= step.limit || step.bytes >= STEP_BYTES {
                    step.stopped = true;
                    return false;
                }
                step.sums.add_entry(key, value);
                step.entries += 1;
                step.bytes += key.len() + value.len();
                match step.last.as_mut() {
                    Some(last) => {
                        last.clear();
                        last.push_str(key);
                    }
                    None => step.last = Some(key.to_owned()),
                }
                self.shared.progress.fetch_add(1, Ordering::Relaxed);
            }
            return true;
        }
        let Some((sums, read, wal_index)) = self.truth.as_mut() else {
            return true;
        };
        if key == WAL_LAST_KEY {
            *wal_index = decode_wal_index(Some(value));
        } else if !is_local(key) {
            sums.add_entry(key, value);
            *read += 1;
            self.shared.progress.fetch_add(1, Ordering::Relaxed);
        }
        true
    }

    fn committed(mut self: Box<Self>) {
        let shared = Arc::clone(&self.shared);
        let mut mirror = shared.mirror();
        let exact = match self.wal_index {
            Some(_) => Some(true),
            None if self.touched => Some(false),
            None => None,
        };
        match mirror.as_mut() {
            Some(mirror) => {
                mirror.apply(&self.deltas);
                if let Some(index) = self.wal_index {
                    mirror.wal_index = index;
                }
                if let Some(exact) = exact {
                    mirror.exact = exact;
                }
            }
            None => {
                if let Some(exact) = exact {
                    self.shared.exact_unsummed.store(exact, Ordering::SeqCst);
                }
                if let Some(done) = self.advance_build() {
                    let tree = done.sums.tree();
                    let mut summed = Mirror::new(done.sums, &tree, done.wal_index);
                    summed.exact = self.shared.exact_unsummed.load(Ordering::SeqCst);
                    self.shared.install(&mut mirror, summed);
                }
            }
        }
        let (Some(verify), Some((truth, scanned, wal_index))) =
            (self.verify.take(), self.truth.take())
        else {
            return;
        };
        let (differing_buckets, differing_cells) = match mirror.as_ref() {
            Some(current) => current.sums.compare(&truth),
            None => (0, 0),
        };
        let check = IndexCheck {
            tree: truth.tree(),
            differing_buckets,
            differing_cells,
            scanned,
            wal_index,
        };
        let wrong = differing_buckets > 0;
        // A retired index installs nothing: no commit feeds it any more.
        if verify.repair && !self.shared.retired.load(Ordering::SeqCst) {
            let exact = match mirror.as_ref() {
                Some(current) => current.exact,
                None => self.shared.exact_unsummed.load(Ordering::SeqCst),
            };
            let mut repaired = Mirror::new(truth, &check.tree, wal_index);
            repaired.exact = exact;
            self.shared.install(&mut mirror, repaired);
            self.shared.corrupt.store(false, Ordering::Relaxed);
        } else if wrong {
            tracing::error!(
                differing_buckets,
                differing_cells,
                "the Merkle index differs from the keyspace; run reindex"
            );
            self.shared.corrupt.store(true, Ordering::Relaxed);
        }
        // The caller may have gone (a dropped request): the result is still applied.
        let _ = verify.reply.send(check);
    }
}

impl Update {
    /// Adds this commit to a summing under way: its writes of keys already summed, and the
    /// step it carried. Returns the summing once its last step is done.
    fn advance_build(&mut self) -> Option<Build> {
        let mut slot = self.shared.build();
        // A commit that began before this summing (or under an abandoned one) adds nothing:
        // its writes were not filtered by this cursor; the steps read what it left.
        let build = slot
            .as_mut()
            .filter(|build| Some(build.generation) == self.build_generation)?;
        for delta in &self.deltas {
            build
                .sums
                .add_cell(delta.bucket, delta.slot, delta.keys, delta.sum);
        }
        if let Some(index) = self.wal_index {
            build.wal_index = index;
        }
        let step = self.step.take()?;
        for (bucket, sums) in step.sums.iter() {
            build.sums.add(bucket, sums);
        }
        if let Some(index) = step.wal_index {
            build.wal_index = index;
        }
        if step.last.is_some() {
            build.through = step.last;
        }
        (!step.stopped).then(|| slot.take()).flatten()
    }
}

#[cfg(test)]
mod tests;
