use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use bunker_storage::{Backend, EmbeddedBackend, HookedBackend, InmemBackend, Op};

use super::*;
use crate::merkle::compute_with_cells;
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
fn random_batch(rng: &mut Rng, keys: u64) -> Vec<Op> {
    (0..1 + rng.below(8))
        .map(|_| {
            let key = format!("logical/k{}", rng.below(keys));
            if rng.below(4) == 0 {
                delete(&key)
            } else {
                put(&key, &rng.next().to_be_bytes()[..1 + rng.below(8) as usize])
            }
        })
        .collect()
}

/// The index's tree and cell sums equal a full scan's, and it reports the WAL's index.
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
    let check = index
        .check(backend, &AtomicU64::new(0))
        .await
        .expect("check");
    assert_eq!(
        check.differing_cells, 0,
        "the leaf entries sum to the keyspace"
    );
    // One leaf entry per replicated key, with its digest and name, and no other.
    let mut expected: Vec<(String, Vec<u8>)> = backend
        .scan("", None, usize::MAX)
        .await
        .expect("scan")
        .into_iter()
        .filter(|(key, _)| !is_local(key))
        .map(|(key, value)| {
            let (cell, id) = crate::merkle::cell_and_id(&key);
            let digest = crate::merkle::leaf_digest(&key, &value);
            (leaf_key(cell, &id), encode_leaf(digest, &key))
        })
        .collect();
    expected.sort();
    let leaves = backend
        .scan(LEAF_PREFIX, None, usize::MAX)
        .await
        .expect("leaves");
    assert!(leaves == expected, "the leaf entries are exact");
}

/// Concurrent writers (sharing group commits, hitting the same keys) keep the index exact.
async fn concurrent_writes_keep_the_index_exact(backend: Arc<dyn HookedBackend>) {
    let wal = Wal::open(backend.clone()).await.expect("open");
    wal.set_recording(true);
    let tasks: Vec<_> = (0..16u64)
        .map(|task| {
            let backend = backend.clone();
            tokio::spawn(async move {
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (task + 1));
                for _ in 0..40 {
                    backend
                        .batch(random_batch(&mut rng, 50))
                        .await
                        .expect("batch");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("writer");
    }
    assert_index_exact(&wal, backend.as_ref()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writes_keep_the_embedded_index_exact() {
    let dir = tempfile::tempdir().expect("temp dir");
    let backend = Arc::new(EmbeddedBackend::open(dir.path()).expect("open"));
    concurrent_writes_keep_the_index_exact(backend).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writes_keep_the_inmem_index_exact() {
    concurrent_writes_keep_the_index_exact(Arc::new(InmemBackend::new())).await;
}

#[tokio::test]
async fn a_store_written_without_the_index_is_indexed_when_opened() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut rng = Rng(7);
    {
        // An older version: data written with no index.
        let backend = EmbeddedBackend::open(dir.path()).expect("open");
        for _ in 0..50 {
            backend
                .batch(random_batch(&mut rng, 200))
                .await
                .expect("batch");
        }
        assert!(backend.get(INDEX_STATE_KEY).await.unwrap().is_none());
    }
    let backend = Arc::new(EmbeddedBackend::open(dir.path()).expect("reopen"));
    let wal = Wal::open(backend.clone()).await.expect("open");
    assert!(backend.get(INDEX_STATE_KEY).await.unwrap().is_some());
    assert_index_exact(&wal, backend.as_ref()).await;
    // And kept from there, across a restart (loaded, not rebuilt).
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
async fn writes_recorded_without_the_index_are_found_when_opened() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut rng = Rng(5);
    {
        let backend = Arc::new(EmbeddedBackend::open(dir.path()).expect("open"));
        let wal = Wal::open(backend.clone()).await.expect("open");
        wal.set_recording(true);
        for _ in 0..20 {
            backend
                .batch(random_batch(&mut rng, 100))
                .await
                .expect("batch");
        }
        assert_index_exact(&wal, backend.as_ref()).await;
    }
    {
        // A version without the index records a write: data and the WAL index, no records.
        let backend = EmbeddedBackend::open(dir.path()).expect("open");
        let last = backend.get(WAL_LAST_KEY).await.unwrap().expect("WAL index");
        let next = u64::from_be_bytes(last.try_into().unwrap()) + 1;
        backend
            .batch(vec![
                put("logical/written-by-an-older-version", b"x"),
                put(WAL_LAST_KEY, &next.to_be_bytes()),
            ])
            .await
            .expect("batch");
    }
    let backend = Arc::new(EmbeddedBackend::open(dir.path()).expect("reopen"));
    let wal = Wal::open(backend.clone()).await.expect("open");
    assert_index_exact(&wal, backend.as_ref()).await;
}

#[tokio::test]
async fn deleting_everything_but_the_records_leaves_an_empty_exact_index() {
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
    // As a DR secondary's activation wipes: page by page, the index's own records skipped.
    let mut after: Option<String> = None;
    loop {
        let page = backend.scan("", after.as_deref(), 7).await.expect("scan");
        let Some((last, _)) = page.last() else { break };
        after = Some(last.clone());
        let ops: Vec<Op> = page
            .iter()
            .filter(|(key, _)| !key.starts_with(INDEX_PREFIX))
            .map(|(key, _)| delete(key))
            .collect();
        if !ops.is_empty() {
            backend.batch(ops).await.expect("delete");
        }
    }
    // The WAL (as activation does) reads its position back: none.
    wal.reload().await.expect("reload");
    assert_index_exact(&wal, backend.as_ref()).await;
    let (_, keys, exact_at) = wal.merkle_index().unwrap().root().unwrap();
    assert_eq!(
        (keys, exact_at),
        (0, Some(0)),
        "empty, and the WAL index is gone"
    );
    assert!(
        backend
            .scan(LEAF_PREFIX, None, 10)
            .await
            .unwrap()
            .is_empty(),
        "no key, no entry"
    );
}

#[tokio::test]
async fn records_written_outside_the_index_make_it_rebuild() {
    let backend = Arc::new(InmemBackend::new());
    let wal = Wal::open(backend.clone()).await.expect("open");
    let index = wal.merkle_index().expect("index").clone();
    backend.batch(vec![put("logical/a", b"1")]).await.unwrap();
    assert!(index.is_ready() && !index.needs_rebuild());
    let records = backend.scan(LEAF_PREFIX, None, 1).await.unwrap();
    assert_eq!(records.len(), 1, "logical/a has its entry");
    backend
        .batch(vec![delete(&records[0].0), put("logical/b", b"2")])
        .await
        .unwrap();
    assert!(!index.is_ready(), "the mirror is no longer trusted");
    assert!(index.needs_rebuild() && index.is_corrupt());
    index
        .rebuild(backend.as_ref(), &AtomicU64::new(0))
        .await
        .expect("rebuild");
    assert!(!index.needs_rebuild() && !index.is_corrupt());
    assert_index_exact(&wal, backend.as_ref()).await;
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
    wal.set_recording(true);
    backend.batch(vec![put("logical/c", b"3")]).await.unwrap();
    assert_eq!(index.root().unwrap().2, Some(wal.last_index()));
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebuild_repairs_damaged_entries_while_writes_go_on() {
    let dir = tempfile::tempdir().expect("temp dir");
    let backend = Arc::new(EmbeddedBackend::open(dir.path()).expect("open"));
    let wal = Wal::open(backend.clone()).await.expect("open");
    let mut rng = Rng(11);
    for _ in 0..100 {
        backend
            .batch(random_batch(&mut rng, 300))
            .await
            .expect("batch");
    }
    let index = wal.merkle_index().expect("index").clone();
    // Damage: one entry with a wrong digest, one with garbage, one removed, one for no key.
    let leaves = backend.scan(LEAF_PREFIX, None, 3).await.expect("entries");
    assert_eq!(leaves.len(), 3, "the writes made entries");
    let (_, _, _, name) = decode_leaf(&leaves[0].0, &leaves[0].1).expect("an entry");
    backend
        .batch(vec![
            put(&leaves[0].0, &encode_leaf(12345, &name)),
            put(&leaves[1].0, b"garbage"),
            delete(&leaves[2].0),
            put(
                &format!("{LEAF_PREFIX}00000/{}", "ab".repeat(16)),
                &encode_leaf(1, "logical/none"),
            ),
        ])
        .await
        .expect("damaging");
    assert!(
        index.needs_rebuild() && index.is_corrupt(),
        "written outside the index"
    );
    let check = index
        .check(backend.as_ref(), &AtomicU64::new(0))
        .await
        .expect("check");
    assert!(check.differing_cells >= 3, "{check:?}");
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
    let scanned = AtomicU64::new(0);
    let rebuilt = index
        .rebuild(backend.as_ref(), &scanned)
        .await
        .expect("rebuild");
    assert!(rebuilt.differing_cells >= 3, "{rebuilt:?}");
    assert!(
        scanned.load(Ordering::Relaxed) > 0,
        "the rebuild reports its progress"
    );
    for writer in writers {
        writer.await.expect("writer");
    }
    assert!(!index.is_corrupt());
    assert_index_exact(&wal, backend.as_ref()).await;
    drop(wal);
    let wal = Wal::open(backend.clone()).await.expect("reopen");
    assert_index_exact(&wal, backend.as_ref()).await;
}

#[tokio::test]
async fn rechecks_that_do_not_commit_wait_for_the_next_commit() {
    let index = MerkleIndex::new();
    index.shared.rechecks().push(("logical/a".into(), None));
    let update = index.begin();
    assert!(index.shared.rechecks().is_empty(), "the commit carries it");
    drop(update);
    assert_eq!(index.shared.rechecks().len(), 1, "handed back");
    let mut update = index.begin();
    assert_eq!(update.reads(), vec!["logical/a".to_owned()]);
    let ops = update.finish(vec![Some(b"v".to_vec())]).expect("finish");
    let (cell, id) = crate::merkle::cell_and_id("logical/a");
    let digest = crate::merkle::leaf_digest("logical/a", b"v");
    assert_eq!(
        ops,
        vec![put(&leaf_key(cell, &id), &encode_leaf(digest, "logical/a"))]
    );
    update.committed();
    assert!(index.shared.rechecks().is_empty(), "a commit consumes it");
}

#[tokio::test]
async fn a_cell_lists_its_keys_from_the_leaf_entries() {
    let backend = Arc::new(InmemBackend::new());
    let wal = Wal::open(backend.clone()).await.expect("open");
    let index = wal.merkle_index().expect("index");
    let keys: Vec<String> = (0..50).map(|i| format!("logical/{i}")).collect();
    backend
        .batch(keys.iter().map(|k| put(k, k.as_bytes())).collect())
        .await
        .unwrap();
    backend.batch(vec![delete("logical/7")]).await.unwrap();
    let cells = [
        crate::merkle::cell_and_id("logical/3").0,
        crate::merkle::cell_and_id("logical/7").0,
    ];
    let listed = index
        .list_cells(backend.as_ref(), &cells)
        .await
        .unwrap()
        .expect("ready");
    let names: Vec<&str> = listed.iter().map(|(_, _, name)| name.as_str()).collect();
    assert!(names.contains(&"logical/3"), "{names:?}");
    assert!(
        !names.contains(&"logical/7"),
        "a deleted key is not listed: {names:?}"
    );
    for (id, digest, name) in &listed {
        assert_eq!(
            (*id, *digest),
            (
                crate::merkle::cell_and_id(name).1,
                crate::merkle::leaf_digest(name, name.as_bytes())
            )
        );
    }
    let expected = keys
        .iter()
        .filter(|k| *k != "logical/7")
        .filter(|k| cells.contains(&crate::merkle::cell_and_id(k).0))
        .count();
    assert_eq!(listed.len(), expected);
}

#[test]
fn leaf_entries_round_trip_and_refuse_malformed_ones() {
    let (cell, id) = crate::merkle::cell_and_id("logical/x");
    let entry = leaf_key(cell, &id);
    assert_eq!(
        decode_leaf(&entry, &encode_leaf(7, "logical/x")),
        Some((cell, id, 7, "logical/x".to_owned()))
    );
    assert_eq!(decode_leaf(&entry, b"short"), None);
    let too_far = format!("{LEAF_PREFIX}fffff/{}", "00".repeat(16));
    assert_eq!(decode_leaf(&too_far, &[0; 9]), None);
    assert_eq!(
        decode_leaf(&format!("{LEAF_PREFIX}00000/abc"), &[0; 9]),
        None
    );
    let mut sums = BucketSums::default();
    assert_eq!(sums.hash(), [0; 32], "an empty bucket hashes to zero");
    sums.count(3, 9, true);
    assert_ne!(sums.hash(), [0; 32]);
}
