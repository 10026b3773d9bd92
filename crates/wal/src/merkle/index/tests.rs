use std::sync::Arc;

use bunker_storage::{Backend, EmbeddedBackend, HookedBackend, InmemBackend, Op};

use super::*;
use crate::merkle::compute_with_cells;
use crate::merkle::BucketSums;
use crate::wal::Wal;

fn put(key: &str, value: &[u8]) -> Op {
    Op::Put {
        key: key.to_owned(),
        value: value.to_vec(),
    }
}

fn delete(key: &str) -> Op {
    Op::Delete {
        key: key.to_owned(),
    }
}

/// A small deterministic generator (xorshift), so failures replay.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A batch of puts and deletes over a hot set of `keys` keys; the same key may appear twice.
/// Keys sort before, right after (`repl0/`: not local) and far after the local range.
fn random_batch(rng: &mut Rng, keys: u64) -> Vec<Op> {
    (0..1 + rng.below(8))
        .map(|_| {
            let prefix = ["logical/", "repl0/", "zz/"][rng.below(3) as usize];
            let key = format!("{prefix}k{}", rng.below(keys));
            if rng.below(4) == 0 {
                delete(&key)
            } else {
                put(&key, &rng.next().to_be_bytes()[..1 + rng.below(8) as usize])
            }
        })
        .collect()
}

/// The index's tree and cell sums equal a full scan's, it reports the WAL's index, and a check
/// (the keyspace summed inside a commit) finds nothing.
async fn assert_index_exact(wal: &Wal, backend: &dyn Backend) {
    let index = wal.merkle_index().expect("the backend feeds an index");
    let (tree, cells, wal_index) = index.fingerprint().expect("the index is ready");
    let (scanned, scanned_cells) = compute_with_cells(backend).await.expect("scan");
    assert_eq!(tree, scanned, "the index's tree is the scan's");
    assert!(
        cells == scanned_cells,
        "the index's cell sums are the scan's"
    );
    assert_eq!(wal_index, wal.last_index(), "the index names the WAL index");
    let (root, keys, _) = index.root().expect("root");
    assert_eq!((root, keys), (scanned.root_hex(), scanned.keys));
    let check = index.check(backend).await.expect("check");
    assert_eq!(check.differing_cells, 0, "{check:?}");
    assert_eq!(check.tree, scanned);
    // The check's scan jumps over the local range yet reads every replicated key and the WAL
    // index.
    assert_eq!(check.scanned, scanned.keys);
    assert_eq!(check.wal_index, wal.last_index());
    assert!(!index.is_corrupt());
}

/// Concurrent writers (sharing group commits, hitting the same keys) keep the index exact.
async fn concurrent_writes_keep_the_index_exact(backend: Arc<dyn HookedBackend>) {
    let wal = Wal::open(backend.clone()).await.expect("open");
    wal.set_recording(true);
    for task in spawn_writers(&backend, 0x9e37_79b9_7f4a_7c15, 50) {
        task.await.expect("writer");
    }
    assert_index_exact(&wal, backend.as_ref()).await;
}

/// Sixteen tasks writing forty random batches each over `keys` hot keys (seeds from `seed`).
fn spawn_writers(
    backend: &Arc<dyn HookedBackend>,
    seed: u64,
    keys: u64,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..16u64)
        .map(|task| {
            let backend = backend.clone();
            tokio::spawn(async move {
                let mut rng = Rng(seed ^ (task + 1));
                for _ in 0..40 {
                    backend
                        .batch(random_batch(&mut rng, keys))
                        .await
                        .expect("batch");
                }
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writes_keep_the_embedded_index_exact() {
    let dir = tempfile::tempdir().expect("temp dir");
    let backend = Arc::new(EmbeddedBackend::open(dir.path()).expect("open"));
    concurrent_writes_keep_the_index_exact(backend).await;
}

/// Groups committed while a checkpoint runs are indexed against redb and the overlay laid over
/// it (checkpoints after every group, each held for four).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writes_during_checkpoints_keep_the_embedded_index_exact() {
    let dir = tempfile::tempdir().expect("temp dir");
    let backend = Arc::new(EmbeddedBackend::open_holding_checkpoints(dir.path(), 4).expect("open"));
    concurrent_writes_keep_the_index_exact(backend).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writes_keep_the_inmem_index_exact() {
    concurrent_writes_keep_the_index_exact(Arc::new(InmemBackend::new())).await;
}

/// Bucket hashes are computed when the tree is read, not at each commit: reads after one
/// commit, after several that changed the same buckets, and after a bucket emptied all give
/// the scan's tree and root (a bucket left stale, or hashed from older sums, would not).
#[tokio::test]
async fn the_tree_read_between_commits_is_always_the_scans() {
    let backend: Arc<dyn HookedBackend> = Arc::new(InmemBackend::new());
    let wal = Wal::open(backend.clone()).await.expect("open");
    wal.set_recording(true);
    let index = wal.merkle_index().expect("the backend feeds an index");
    let mut rng = Rng(0x5eed_1e55_0b5e_55ed);
    let mut reads = 0;
    for round in 0..300u64 {
        // Few keys, so commits keep changing (and emptying) the same buckets.
        backend
            .batch(random_batch(&mut rng, 12))
            .await
            .expect("batch");
        // Reads after one to seven commits, so a read finds one or several stale changes;
        // every other read asks for the root first (as status does), the rest for the tree.
        if rng.below(5) == 0 || round % 7 == 0 {
            let (scanned, _) = compute_with_cells(backend.as_ref()).await.expect("scan");
            if reads % 2 == 0 {
                let (root, keys, _) = index.root().expect("the index is ready");
                assert_eq!(
                    (root, keys),
                    (scanned.root_hex(), scanned.keys),
                    "after commit {round}"
                );
            }
            let (tree, _, _) = index.fingerprint().expect("the index is ready");
            assert_eq!(tree, scanned, "after commit {round}");
            assert_eq!(index.keys(), Some(scanned.keys));
            reads += 1;
        }
    }
    assert!(reads > 40, "the tree was read {reads} times");
    assert_index_exact(&wal, backend.as_ref()).await;
}

#[tokio::test]
async fn a_store_is_summed_when_opened_and_again_after_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut rng = Rng(7);
    {
        // Written with no index (an older version).
        let backend = EmbeddedBackend::open(dir.path()).expect("open");
        for _ in 0..50 {
            backend
                .batch(random_batch(&mut rng, 200))
                .await
                .expect("batch");
        }
    }
    let backend = Arc::new(EmbeddedBackend::open(dir.path()).expect("reopen"));
    let wal = Wal::open(backend.clone()).await.expect("open");
    assert_index_exact(&wal, backend.as_ref()).await;
    for _ in 0..50 {
        backend
            .batch(random_batch(&mut rng, 200))
            .await
            .expect("batch");
    }
    assert_index_exact(&wal, backend.as_ref()).await;
    drop(wal);
    drop(backend);
    let backend = Arc::new(EmbeddedBackend::open(dir.path()).expect("reopen"));
    let wal = Wal::open(backend.clone()).await.expect("open");
    assert_index_exact(&wal, backend.as_ref()).await;
}

#[tokio::test]
async fn an_unbounded_batch_is_indexed() {
    let backend = Arc::new(InmemBackend::new());
    let wal = Wal::open(backend.clone()).await.expect("open");
    let mut ops: Vec<Op> = (0..12_000)
        .map(|i| put(&format!("logical/{i}"), &[i as u8]))
        .collect();
    ops.extend((0..100).map(|i| delete(&format!("logical/{i}"))));
    backend.batch_unbounded(ops).await.expect("unbounded batch");
    assert_index_exact(&wal, backend.as_ref()).await;
}

#[tokio::test]
async fn deleting_everything_leaves_an_empty_exact_index() {
    let backend = Arc::new(InmemBackend::new());
    let wal = Wal::open(backend.clone()).await.expect("open");
    wal.set_recording(true);
    let mut rng = Rng(3);
    for _ in 0..30 {
        backend
            .batch(random_batch(&mut rng, 100))
            .await
            .expect("batch");
    }
    // As a DR secondary's activation wipes: page by page, WAL included.
    loop {
        let page = backend.scan("", None, 7).await.expect("scan");
        if page.is_empty() {
            break;
        }
        let ops: Vec<Op> = page.iter().map(|(key, _)| delete(key)).collect();
        backend.batch(ops).await.expect("delete");
    }
    wal.reload().await.expect("reload");
    assert_index_exact(&wal, backend.as_ref()).await;
    let (_, keys, exact_at) = wal.merkle_index().unwrap().root().unwrap();
    assert_eq!(
        (keys, exact_at),
        (0, Some(0)),
        "empty, and the WAL index is gone"
    );
}

#[tokio::test]
async fn a_root_changed_outside_the_wal_is_not_exact_for_any_index() {
    let backend = Arc::new(InmemBackend::new());
    let wal = Wal::open(backend.clone()).await.expect("open");
    wal.set_recording(true);
    backend.batch(vec![put("logical/a", b"1")]).await.unwrap();
    let index = wal.merkle_index().expect("index");
    assert_eq!(index.root().unwrap().2, Some(wal.last_index()));
    // A sync's page: replicated data written without the WAL index.
    wal.set_recording(false);
    backend.batch(vec![put("logical/b", b"2")]).await.unwrap();
    assert_eq!(index.root().unwrap().2, None);
    index.set_exact(true);
    assert_eq!(index.root().unwrap().2, Some(wal.last_index()));
    wal.set_recording(true);
    backend.batch(vec![put("logical/c", b"3")]).await.unwrap();
    assert_eq!(index.root().unwrap().2, Some(wal.last_index()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_check_finds_wrong_sums_and_a_rebuild_repairs_them_while_writes_go_on() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Checkpoints run beside most commits: the check's and the rebuild's scans inside a commit
    // read redb and the overlay.
    let backend = Arc::new(EmbeddedBackend::open_holding_checkpoints(dir.path(), 4).expect("open"));
    let wal = Wal::open(backend.clone()).await.expect("open");
    let mut rng = Rng(11);
    for _ in 0..100 {
        backend
            .batch(random_batch(&mut rng, 300))
            .await
            .expect("batch");
    }
    let index = wal.merkle_index().expect("index").clone();
    // Damage the sums of two buckets (as a bug would).
    {
        let mut mirror = index.shared.mirror();
        let mirror = mirror.as_mut().expect("ready");
        let wrong = [3, 4000].map(|bucket| CellDelta {
            bucket,
            slot: 5,
            keys: 1,
            sum: 77,
        });
        mirror.apply(&wrong);
    }
    let check = index.check(backend.as_ref()).await.expect("check");
    assert_eq!((check.differing_buckets, check.differing_cells), (2, 2));
    assert!(index.is_corrupt(), "status reports it");
    // The repair runs while writers keep changing the keyspace.
    let writers: Vec<_> = (0..4u64)
        .map(|task| {
            let backend = backend.clone();
            tokio::spawn(async move {
                let mut rng = Rng(100 + task);
                for _ in 0..100 {
                    backend
                        .batch(random_batch(&mut rng, 300))
                        .await
                        .expect("batch");
                }
            })
        })
        .collect();
    let rebuilt = index.rebuild(backend.as_ref()).await.expect("rebuild");
    assert_eq!(rebuilt.differing_buckets, 2, "{rebuilt:?}");
    assert!(
        index.progress() >= rebuilt.scanned && rebuilt.scanned > 0,
        "the rebuild reports its progress"
    );
    for writer in writers {
        writer.await.expect("writer");
    }
    assert_index_exact(&wal, backend.as_ref()).await;
}

#[test]
fn an_empty_bucket_hashes_to_zero() {
    let mut sums = BucketSums::default();
    assert_eq!(sums.hash(), [0; 32]);
    sums.count(3, 9, true);
    assert_ne!(sums.hash(), [0; 32]);
    sums.count(3, 9, false);
    assert_eq!(
        sums.hash(),
        [0; 32],
        "adding and removing a key leaves it empty"
    );
}

#[tokio::test]
async fn an_index_replaced_by_another_answers_nothing() {
    let backend = Arc::new(InmemBackend::new());
    let first = Wal::open(backend.clone()).await.expect("open");
    backend.batch(vec![put("logical/a", b"1")]).await.unwrap();
    let second = Wal::open(backend.clone()).await.expect("reopen");
    backend.batch(vec![put("logical/b", b"2")]).await.unwrap();
    assert!(
        !first.merkle_index().expect("index").is_ready(),
        "no longer fed: no frozen sums"
    );
    assert_index_exact(&second, backend.as_ref()).await;
}

/// Holds every batch until released.
#[derive(Default)]
struct Held(tokio::sync::Notify, std::sync::atomic::AtomicBool);

#[async_trait::async_trait]
impl bunker_storage::hooked_store::StoreHooks for Held {
    async fn before_batch(&self) -> bunker_storage::Result<()> {
        while self.1.load(Ordering::SeqCst) {
            self.0.notified().await;
        }
        Ok(())
    }
}

#[tokio::test]
async fn a_check_whose_caller_stops_waiting_leaves_no_request_behind() {
    let backend = Arc::new(bunker_storage::hooked_store::HookedStore::new(
        Held::default(),
    ));
    let wal = Wal::open(backend.clone()).await.expect("open");
    let index = wal.merkle_index().expect("index").clone();
    backend.hooks.1.store(true, Ordering::SeqCst);
    {
        let check = index.check(backend.as_ref());
        tokio::pin!(check);
        assert!(
            !poll_once(check.as_mut()).await,
            "the check waits for its commit"
        );
        assert!(index.shared.verify().is_some(), "its request is set");
    }
    assert!(index.shared.verify().is_none(), "taken back when dropped");
    backend.hooks.1.store(false, Ordering::SeqCst);
    backend.hooks.0.notify_waiters();
    backend.batch(vec![put("logical/a", b"1")]).await.unwrap();
    assert_index_exact(&wal, backend.as_ref()).await;
}

/// Polls `future` once; whether it finished.
async fn poll_once<F: std::future::Future>(future: std::pin::Pin<&mut F>) -> bool {
    let mut future = Some(future);
    std::future::poll_fn(|cx| {
        let done = future.take().is_some_and(|f| f.poll(cx).is_ready());
        std::task::Poll::Ready(done)
    })
    .await
}

/// Refuses every batch while set.
#[derive(Default)]
struct ReadOnly(std::sync::atomic::AtomicBool);

#[async_trait::async_trait]
impl bunker_storage::hooked_store::StoreHooks for ReadOnly {
    async fn before_batch(&self) -> bunker_storage::Result<()> {
        if self.0.load(Ordering::SeqCst) {
            return Err(bunker_storage::StorageError::Unavailable(
                "read-only".into(),
            ));
        }
        Ok(())
    }
}

/// A store holding one key, whose WAL was opened while it refused every write (so its index
/// could not be summed); writes are refused still.
async fn opened_read_only() -> (
    Arc<bunker_storage::hooked_store::HookedStore<ReadOnly>>,
    Arc<Wal>,
    MerkleIndex,
) {
    let backend = Arc::new(bunker_storage::hooked_store::HookedStore::new(
        ReadOnly::default(),
    ));
    backend.batch(vec![put("logical/a", b"1")]).await.unwrap();
    backend.hooks.0.store(true, Ordering::SeqCst);
    let wal = Wal::open(backend.clone())
        .await
        .expect("opens all the same");
    let index = wal.merkle_index().expect("index").clone();
    (backend, wal, index)
}

#[tokio::test]
async fn a_store_that_cannot_write_at_open_is_summed_later() {
    let (backend, wal, index) = opened_read_only().await;
    assert!(!index.is_ready(), "not summed: callers scan");
    // The failed summing is over: nobody waits for it, and another can start.
    assert!(
        !index.is_building(),
        "a failed summing is not left under way"
    );
    assert!(!index.wait_ready().await, "waiters do not hang");
    backend.hooks.0.store(false, Ordering::SeqCst);
    index.rebuild(backend.as_ref()).await.expect("summed now");
    assert_index_exact(&wal, backend.as_ref()).await;
}

/// As the refresher does after a failed open: a summing in steps started again later.
#[tokio::test]
async fn a_summing_that_failed_at_open_runs_again_in_steps() {
    let (backend, wal, index) = opened_read_only().await;
    backend.hooks.0.store(false, Ordering::SeqCst);
    index.start_build();
    index.build(backend.as_ref()).await.expect("summed now");
    assert_index_exact(&wal, backend.as_ref()).await;
}

/// A commit that began before a summing started adds nothing to it (its writes were not
/// filtered by the cursor: the steps read what it left), and the summing ends exact.
#[tokio::test]
async fn a_commit_begun_before_the_summing_adds_nothing_to_it() {
    let backend = Arc::new(InmemBackend::new());
    let wal = Wal::open(backend.clone()).await.expect("open");
    wal.set_recording(true);
    let index = wal.merkle_index().expect("index").clone();
    backend
        .batch(vec![put("logical/a", b"1")])
        .await
        .expect("put");
    // The sums are dropped as a retire would not (a test-only way to be unsummed again).
    *index.shared.mirror() = None;
    let early = index.begin();
    index.start_build();
    let mut early = early;
    early.change("logical/b", None, Some(b"2"));
    backend
        .batch(vec![put("logical/b", b"2")])
        .await
        .expect("put");
    early.committed();
    index.set_step_entries(1);
    index.build(backend.as_ref()).await.expect("summed");
    assert_index_exact(&wal, backend.as_ref()).await;
}

#[tokio::test]
async fn a_check_of_an_index_no_commit_feeds_ends() {
    let backend = Arc::new(InmemBackend::new());
    let first = Wal::open(backend.clone()).await.expect("open");
    let _second = Wal::open(backend.clone()).await.expect("reopen");
    let index = first.merkle_index().expect("index");
    assert!(index.is_retired());
    assert!(
        index.check(backend.as_ref()).await.is_err(),
        "an error, not a hang"
    );
    // An index installed nowhere: its check's commits never take the request.
    let stray = MerkleIndex::new();
    assert!(
        stray.check(backend.as_ref()).await.is_err(),
        "an error, not a hang"
    );
    assert!(stray.shared.verify().is_none());
}

/// Torn data declared before the sums exist (a secondary stopped mid-sync whose store could
/// not be summed at open) stays not exact in the sums a later rebuild installs.
#[tokio::test]
async fn data_declared_torn_before_summing_is_not_exact_once_summed() {
    let (backend, _wal, index) = opened_read_only().await;
    assert!(!index.is_ready());
    index.set_exact(false);
    backend.hooks.0.store(false, Ordering::SeqCst);
    index.rebuild(backend.as_ref()).await.expect("summed now");
    let (_, _, exact_at) = index.root().expect("ready");
    assert_eq!(exact_at, None, "still torn: no exact root");
}

/// A rebuild of an index that another replaced installs no sums: the retired index keeps
/// answering nothing.
#[tokio::test]
async fn a_retired_index_installs_no_sums() {
    let backend = Arc::new(InmemBackend::new());
    let first = Wal::open(backend.clone()).await.expect("open");
    let retired = first.merkle_index().expect("index").clone();
    let _second = Wal::open(backend.clone()).await.expect("reopen");
    assert!(retired.is_retired());
    assert!(retired.rebuild(backend.as_ref()).await.is_err());
    assert!(!retired.is_ready());
}

/// The store of a restarted server: keys written before any index (no hook), then a WAL
/// opened without summing (`open_deferred`), with steps of `step` entries.
async fn restarted(backend: Arc<dyn HookedBackend>, step: usize) -> Arc<Wal> {
    let mut rng = Rng(0x5eed);
    for _ in 0..60 {
        backend
            .batch(random_batch(&mut rng, 200))
            .await
            .expect("batch");
    }
    let wal = Wal::open_deferred(backend.clone()).await.expect("open");
    wal.set_recording(true);
    let index = wal.merkle_index().expect("index");
    index.set_step_entries(step);
    assert!(index.is_building() && !index.is_ready());
    wal
}

/// One step after another, with writes between them (before, inside and past the step's
/// cursor, deletes and rewrites of summed keys included): the sums end exact.
#[tokio::test]
async fn summing_in_steps_between_writes_ends_exact() {
    // In memory, embedded, and embedded with checkpoints running beside most commits.
    for store in 0..3 {
        let dir = tempfile::tempdir().expect("temp dir");
        let backend: Arc<dyn HookedBackend> = match store {
            0 => Arc::new(InmemBackend::new()),
            1 => Arc::new(EmbeddedBackend::open(dir.path()).expect("open")),
            _ => Arc::new(EmbeddedBackend::open_holding_checkpoints(dir.path(), 3).expect("open")),
        };
        let wal = restarted(backend.clone(), 7).await;
        let index = wal.merkle_index().expect("index").clone();
        let mut rng = Rng(0xb0b);
        let mut steps = 0;
        while index.is_building() {
            for _ in 0..rng.below(3) {
                backend
                    .batch(random_batch(&mut rng, 200))
                    .await
                    .expect("batch");
            }
            index.shared.step_wanted.store(true, Ordering::SeqCst);
            backend
                .batch(random_batch(&mut rng, 200))
                .await
                .expect("a write carrying a step");
            steps += 1;
            assert!(steps < 10_000, "the summing ends");
        }
        assert!(
            steps > 20,
            "the keyspace was summed in many steps ({steps})"
        );
        assert_index_exact(&wal, backend.as_ref()).await;
    }
}

/// `build` running while sixteen writers hit the same keys ends exact, and its waiters wake.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn summing_in_the_background_under_concurrent_writes_ends_exact() {
    let dir = tempfile::tempdir().expect("temp dir");
    let backend: Arc<dyn HookedBackend> =
        Arc::new(EmbeddedBackend::open_holding_checkpoints(dir.path(), 4).expect("open"));
    let wal = restarted(backend.clone(), 5).await;
    let index = wal.merkle_index().expect("index").clone();
    let waiter = {
        let index = index.clone();
        tokio::spawn(async move { index.wait_ready().await })
    };
    let writers = spawn_writers(&backend, 0x1234_5678, 200);
    index.build(backend.as_ref()).await.expect("summed");
    for writer in writers {
        writer.await.expect("writer");
    }
    assert!(
        waiter.await.expect("waiter"),
        "the waiter saw the sums ready"
    );
    assert_index_exact(&wal, backend.as_ref()).await;
}

#[test]
fn stale_buckets_are_taken_once_in_order() {
    let mut stale = StaleBuckets::default();
    for bucket in [4095, 0, 63, 64, 63, 1000, BUCKETS as u32] {
        stale.insert(bucket);
    }
    assert_eq!(stale.take(), vec![0, 63, 64, 1000, 4095]);
    assert_eq!(stale.take(), Vec::<u32>::new());
}
