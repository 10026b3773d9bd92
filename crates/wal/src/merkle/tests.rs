use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bunker_storage::hooked_store::{HookedStore, StoreHooks};
use bunker_storage::limits::MAX_KEY_BYTES;
use bunker_storage::{Backend, InmemBackend, Op};

use super::*;
use crate::wal::Wal;

fn put(key: &str, value: &[u8]) -> Op {
    Op::Put {
        key: key.to_owned(),
        value: value.to_vec(),
    }
}

/// The tree computed the obvious way, from all pairs in memory: per bucket, its key count and
/// the slot and sum of each cell whose sum of leaf digests (first 8 bytes of each leaf hash) is
/// not zero, hashed big-endian; the root over each non-empty bucket's number and hash.
fn reference_tree(pairs: &BTreeMap<String, Vec<u8>>) -> MerkleTree {
    let mut counts = vec![0u64; BUCKETS];
    let sums = reference_cells(pairs);
    let mut keys = 0;
    for key in pairs.keys().filter(|key| !is_local(key)) {
        counts[cell_of(key) as usize / CELLS_PER_BUCKET] += 1;
        keys += 1;
    }
    let buckets: Vec<(u32, [u8; 32])> = (0..BUCKETS)
        .filter(|&bucket| counts[bucket] > 0)
        .map(|bucket| {
            let mut hasher = Sha256::new();
            hasher.update(counts[bucket].to_be_bytes());
            let cells = &sums[bucket * CELLS_PER_BUCKET..(bucket + 1) * CELLS_PER_BUCKET];
            for (slot, sum) in cells.iter().enumerate() {
                if *sum != 0 {
                    hasher.update([slot as u8]);
                    hasher.update(sum.to_be_bytes());
                }
            }
            (bucket as u32, hasher.finalize().into())
        })
        .collect();
    let mut root = Sha256::new();
    for (bucket, hash) in &buckets {
        root.update(bucket.to_be_bytes());
        root.update(hash);
    }
    MerkleTree {
        buckets,
        root: root.finalize().into(),
        keys,
    }
}

/// Every cell's sum, dense, the obvious way.
fn reference_cells(pairs: &BTreeMap<String, Vec<u8>>) -> Vec<u64> {
    let mut sums = vec![0u64; CELLS];
    for (key, value) in pairs.iter().filter(|(key, _)| !is_local(key)) {
        let cell = cell_of(key) as usize;
        sums[cell] = sums[cell].wrapping_add(leaf_digest(key, value));
    }
    sums
}

/// The sparse sums, every cell read out.
fn dense(sums: &CellSums) -> Vec<u64> {
    (0..CELLS as u32).map(|cell| sums.cell(cell)).collect()
}

/// Replicated keys, including ones that sort right around the local range.
fn replicated_pairs(count: usize) -> BTreeMap<String, Vec<u8>> {
    let mut pairs: BTreeMap<String, Vec<u8>> = (0..count)
        .map(|i| (format!("logical/{i:05}"), i.to_be_bytes().to_vec()))
        .collect();
    for key in [
        "repl",
        "repl.",
        "repl0",
        "repl0/x",
        "replica/a",
        "rep/l",
        "zzz",
    ] {
        pairs.insert(key.to_owned(), key.as_bytes().to_vec());
    }
    pairs
}

async fn backend_with(pairs: &BTreeMap<String, Vec<u8>>) -> Arc<InmemBackend> {
    let backend = Arc::new(InmemBackend::new());
    let ops: Vec<Op> = pairs.iter().map(|(key, value)| put(key, value)).collect();
    for chunk in ops.chunks(1000) {
        backend.batch(chunk.to_vec()).await.expect("loading");
    }
    backend
}

async fn tree(backend: &dyn Backend) -> MerkleTree {
    compute(backend).await.expect("computing tree")
}

#[test]
fn bucket_is_the_first_12_bits_of_the_key_hash() {
    // sha256("") = e3b0c442...
    assert_eq!(bucket_of(""), 0xe3b);
    assert!((0..10_000).all(|i| (bucket_of(&format!("k{i}")) as usize) < BUCKETS));
}

#[test]
fn leaf_hashes_are_length_prefixed() {
    let expected: [u8; 32] = Sha256::new()
        .chain_update(3u32.to_be_bytes())
        .chain_update(b"abc")
        .chain_update(Sha256::digest(b"v"))
        .finalize()
        .into();
    assert_eq!(leaf_hash("abc", b"v"), expected);
    assert_ne!(leaf_hash("ab", b"cv"), leaf_hash("abc", b"v"));
}

#[test]
fn the_local_bound_covers_the_longest_local_keys() {
    let bound = past_local_keys();
    let longest = format!(
        "{LOCAL_PREFIX}{}",
        char::MAX
            .to_string()
            .repeat((MAX_KEY_BYTES - LOCAL_PREFIX.len()) / 4)
    );
    assert!(longest.len() <= MAX_KEY_BYTES);
    assert!(longest.as_str() < bound.as_str());
    assert!("repl/\u{10FFFF}zzz" < bound.as_str());
    assert!(bound.as_str() < "repl0");
}

#[tokio::test]
async fn empty_keyspace() {
    let backend = InmemBackend::new();
    let tree = tree(&backend).await;
    assert_eq!(tree.keys, 0);
    assert!(tree.buckets.is_empty(), "an empty bucket is left out");
    assert_eq!(tree, reference_tree(&BTreeMap::new()));
    assert!(tree.is_consistent());
    assert_eq!(tree.root_hex().len(), 64);
}

#[tokio::test]
async fn compute_matches_the_reference_across_pages() {
    let pairs = replicated_pairs(3000);
    let backend = backend_with(&pairs).await;
    backend
        .put("repl/state", b"local".to_vec())
        .await
        .expect("put");
    let tree = tree(backend.as_ref()).await;
    assert_eq!(tree, reference_tree(&pairs));
    assert_eq!(tree.keys, pairs.len() as u64);
    assert!(tree.is_consistent());
}

#[tokio::test]
async fn local_data_does_not_change_the_tree() {
    let pairs = replicated_pairs(1500);
    let plain = backend_with(&pairs).await;

    let busy = Arc::new(HookedStore::new(CountLocal::default()));
    for chunk in pairs
        .iter()
        .map(|(key, value)| put(key, value))
        .collect::<Vec<_>>()
        .chunks(1000)
    {
        busy.batch(chunk.to_vec()).await.expect("loading");
    }
    // A WAL with many entries and other local state, around and between the replicated keys.
    let wal = Wal::open(busy.clone()).await.expect("opening WAL");
    wal.set_recording(true);
    for i in 0..1500u32 {
        busy.put(
            &format!("logical/{i:05}"),
            (i as usize).to_be_bytes().to_vec(),
        )
        .await
        .expect("rewriting the same value");
    }
    let edge = format!(
        "{LOCAL_PREFIX}{}",
        char::MAX
            .to_string()
            .repeat((MAX_KEY_BYTES - LOCAL_PREFIX.len()) / 4)
    );
    busy.batch(vec![put("repl/dr/state", b"x"), put(&edge, b"edge")])
        .await
        .expect("local keys");
    assert!(wal.last_index() >= 1500);

    let plain_tree = tree(plain.as_ref()).await;
    busy.hooks.0.store(0, Ordering::SeqCst);
    let busy_tree = tree(busy.as_ref()).await;
    assert!(
        busy.hooks.0.load(Ordering::SeqCst) <= SCAN_PAGE,
        "the local range is skipped with a seek, not read through"
    );
    assert_eq!(busy_tree, plain_tree);
    assert!(busy_tree.diff(&plain_tree).is_empty());
}

#[tokio::test]
async fn diff_finds_exactly_the_changed_buckets() {
    let pairs = replicated_pairs(500);
    let a = backend_with(&pairs).await;
    let b = backend_with(&pairs).await;
    let changed = ["logical/00007", "logical/00123"];
    b.put(changed[0], b"changed".to_vec()).await.expect("put");
    b.delete(changed[1]).await.expect("delete");
    b.put("logical/new", b"added".to_vec()).await.expect("put");
    b.put("repl/ignored", b"local".to_vec()).await.expect("put");

    let expected: BTreeSet<u32> = [changed[0], changed[1], "logical/new"]
        .into_iter()
        .map(bucket_of)
        .collect();
    let (tree_a, tree_b) = (tree(a.as_ref()).await, tree(b.as_ref()).await);
    assert_ne!(tree_a.root, tree_b.root);
    assert_eq!(
        tree_a.diff(&tree_b),
        expected.iter().copied().collect::<Vec<_>>()
    );
    assert_eq!(tree_b.diff(&tree_a), tree_a.diff(&tree_b));

    // A bucket missing on one side differs; a malformed tree is seen as such.
    let mut truncated = tree_b.clone();
    let (last, _) = truncated.buckets.pop().expect("buckets");
    assert!(!truncated.is_consistent(), "the root no longer adds up");
    assert_eq!(tree_b.diff(&truncated), vec![last]);
    let mut unordered = tree_b.clone();
    unordered.buckets.swap(0, 1);
    assert!(!unordered.is_consistent());
    let mut repeated = tree_b.clone();
    repeated.buckets.push(repeated.buckets[0]);
    assert!(!repeated.is_consistent());
    let mut zero = tree_b.clone();
    zero.buckets[0].1 = [0; 32];
    zero.root = root_of(&zero.buckets);
    assert!(!zero.is_consistent(), "an empty bucket is never listed");
    let mut outside = tree_b.clone();
    outside.buckets.push((BUCKETS as u32, [1; 32]));
    outside.root = root_of(&outside.buckets);
    assert!(!outside.is_consistent(), "no such bucket");
    assert!(tree_b.is_consistent());
}

#[test]
fn cell_is_the_first_18_bits_and_refines_the_bucket() {
    // sha256("") = e3b0c442...: 1110 0011 1011 0000 11...
    assert_eq!(cell_of(""), 0b11_1000_1110_1100_0011);
    for i in 0..10_000 {
        let key = format!("k{i}");
        assert_eq!(
            cell_of(&key) as usize / CELLS_PER_BUCKET,
            bucket_of(&key) as usize
        );
        let (cell, id) = cell_and_id(&key);
        assert_eq!(cell, cell_of(&key));
        assert_eq!(id[..], Sha256::digest(key.as_bytes())[..16]);
    }
    assert_eq!(cells_of_buckets(&[0, 2]).len(), 2 * CELLS_PER_BUCKET);
    assert_eq!(cells_of_buckets(&[2])[0], 2 * CELLS_PER_BUCKET as u32);
    assert!(
        cells_of_buckets(&[BUCKETS as u32]).is_empty(),
        "no such bucket"
    );
}

#[tokio::test]
async fn cell_sums_match_the_reference_and_skip_local_keys() {
    let pairs = replicated_pairs(2500);
    let backend = backend_with(&pairs).await;
    backend.put("repl/local", b"x".to_vec()).await.expect("put");
    let expected = reference_cells(&pairs);
    assert_eq!(
        dense(&cell_sums(backend.as_ref()).await.expect("sums")),
        expected
    );
    let (tree, cells) = compute_with_cells(backend.as_ref()).await.expect("both");
    assert_eq!(dense(&cells), expected, "one scan gives the same sums");
    assert_eq!(tree, reference_tree(&pairs), "and the same tree");
}

#[tokio::test]
async fn changed_keys_show_up_in_their_cells_only() {
    let pairs = replicated_pairs(5000);
    let (a, b) = (backend_with(&pairs).await, backend_with(&pairs).await);
    let changed = ["logical/00042", "logical/04000", "zzz"];
    b.put(changed[0], b"new".to_vec()).await.expect("put");
    b.delete(changed[1]).await.expect("delete");
    b.put("logical/added", b"x".to_vec()).await.expect("put");
    let buckets = tree(a.as_ref()).await.diff(&tree(b.as_ref()).await);
    let cells = cells_of_buckets(&buckets);
    let (sums_a, sums_b) = (
        cell_sums(a.as_ref()).await.expect("sums"),
        cell_sums(b.as_ref()).await.expect("sums"),
    );
    let pick = |sums: &CellSums| -> Vec<u64> { cells.iter().map(|&c| sums.cell(c)).collect() };
    let found = differing_cells(&cells, &pick(&sums_a), &pick(&sums_b));
    let mut wanted: Vec<u32> = [changed[0], changed[1], "logical/added"]
        .into_iter()
        .map(cell_of)
        .collect();
    wanted.sort_unstable();
    wanted.dedup();
    assert_eq!(found, wanted);

    let set = CellSet::new(&found);
    assert_eq!(set.len(), found.len());
    assert!(found.iter().all(|&cell| set.contains(cell)));
    assert!(
        !CellSet::new(&[CELLS as u32]).contains(CELLS as u32),
        "out of range"
    );
}

#[tokio::test]
async fn replicated_pages_cover_every_replicated_key_once() {
    let pairs = replicated_pairs(3000);
    let backend = backend_with(&pairs).await;
    backend
        .put("repl/wal/1", b"local".to_vec())
        .await
        .expect("put");
    let mut pages = ReplicatedPages::new(backend.as_ref());
    let mut seen = BTreeMap::new();
    while let Some(page) = pages.next_page().await.expect("page") {
        for (key, value) in page {
            assert!(seen.insert(key, value).is_none(), "a key came twice");
        }
    }
    assert_eq!(seen, pairs);
}

/// Counts the local entries handed out by `scan`.
#[derive(Default)]
struct CountLocal(AtomicUsize);

impl StoreHooks for CountLocal {
    fn scanned(&self, page: &[(String, Vec<u8>)]) {
        let local = page.iter().filter(|(key, _)| is_local(key)).count();
        self.0.fetch_add(local, Ordering::SeqCst);
    }
}

#[test]
fn sums_hold_only_the_buckets_that_hold_keys() {
    let mut sums = CellSums::new();
    assert_eq!(sums.tree().buckets, Vec::new());
    sums.add_entry("a", b"1");
    sums.add_entry("b", b"2");
    let tree = sums.tree();
    assert_eq!(tree.keys, 2);
    assert_eq!(tree.buckets.len(), 2);
    assert!(tree.is_consistent());
    // Taking both keys out again leaves no trace: equal to sums that never held them.
    for (key, value) in [("a", b"1"), ("b", b"2")] {
        let (bucket, slot, digest) = sums::locate(key, value);
        let mut delta = BucketSums::default();
        delta.count(slot, digest, false);
        sums.add(bucket, &delta);
    }
    assert_eq!(sums, CellSums::new());
    assert_eq!(sums.tree(), CellSums::new().tree());
    assert_eq!(sums.cell(u32::MAX), 0, "a cell past the last sums to 0");
}

/// The bucket table (two levels of 64): buckets iterate in order across groups, a group
/// emptied and filled again holds what it should, cell changes undone leave sums equal to
/// ones that never saw them (whatever groups were allocated on the way), and cells and
/// buckets past the last are ignored.
#[test]
fn cell_changes_in_any_order_give_the_sums_of_what_is_left() {
    let entries: Vec<(String, Vec<u8>)> = (0..3000)
        .map(|i| (format!("t/{i}"), format!("v{}", i % 7).into_bytes()))
        .collect();
    let mut changed = CellSums::new();
    // Add everything one cell at a time, then take two thirds out again, backwards.
    for (key, value) in &entries {
        let (bucket, slot, digest) = sums::locate(key, value);
        changed.add_cell(bucket, slot, 1, digest);
    }
    for (key, value) in entries.iter().rev().filter(|(k, _)| !k.ends_with('0')) {
        let (bucket, slot, digest) = sums::locate(key, value);
        changed.add_cell(bucket, slot, 1u64.wrapping_neg(), digest.wrapping_neg());
    }
    let mut fresh = CellSums::new();
    for (key, value) in entries.iter().filter(|(k, _)| k.ends_with('0')) {
        fresh.add_entry(key, value);
    }
    assert_eq!(changed, fresh);
    assert_eq!(changed.tree(), fresh.tree());
    assert_eq!(changed.keys(), 300);
    let order: Vec<u32> = changed.iter().map(|(b, _)| b).collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "ascending");
    assert!(
        order.first().is_some_and(|&b| b < 64) && order.last().is_some_and(|&b| b >= 4032),
        "300 keys spread over the first and last groups: {order:?}"
    );
    let groups: BTreeSet<u32> = order.iter().map(|bucket| bucket / 64).collect();
    assert_eq!(
        changed.groups_allocated(),
        groups.len(),
        "a group per group in use"
    );
    // Past the last bucket or cell: ignored.
    changed.add_cell(BUCKETS as u32, 0, 1, 1);
    changed.add_cell(0, CELLS_PER_BUCKET, 1, 1);
    assert_eq!(changed, fresh);
    // Emptied completely, then one key again: one bucket.
    for (key, value) in entries.iter().filter(|(k, _)| k.ends_with('0')) {
        let (bucket, slot, digest) = sums::locate(key, value);
        changed.add_cell(bucket, slot, 1u64.wrapping_neg(), digest.wrapping_neg());
    }
    assert_eq!(changed, CellSums::new());
    assert_eq!(changed.iter().count(), 0);
    assert_eq!(changed.groups_allocated(), 0, "emptied groups are freed");
    changed.add_entry("t/again", b"v");
    assert_eq!(changed.iter().count(), 1);
    assert_eq!(changed.groups_allocated(), 1);
}

#[test]
fn the_sums_of_many_cells_are_each_cells_sum() {
    let mut sums = CellSums::new();
    for i in 0..200 {
        sums.add_entry(&format!("key/{i}"), b"v");
    }
    // Whole buckets in order, a bucket repeated, cells out of order and one past the last.
    let buckets: Vec<u32> = sums.iter().map(|(b, _)| b).take(5).collect();
    let mut cells = super::cells_of_buckets(&buckets);
    cells.extend(super::cells_of_buckets(&buckets[..1]));
    cells.extend([7, 3, 70_000, u32::MAX]);
    let one_by_one: Vec<u64> = cells.iter().map(|&c| sums.cell(c)).collect();
    assert_eq!(sums.cells(&cells), one_by_one);
    assert!(one_by_one.iter().any(|&sum| sum != 0));
}

#[test]
fn a_bucket_whose_cells_cancel_out_but_holds_keys_is_kept() {
    // Two keys whose digests sum to zero in one cell (a 2^-64 event, made by hand).
    let mut delta = BucketSums::default();
    delta.count(5, 1234, true);
    delta.count(5, 1234u64.wrapping_neg(), true);
    assert_eq!((delta.keys, delta.cells[5]), (2, 0));
    let mut sums = CellSums::new();
    sums.add(9, &delta);
    assert!(sums.bucket(9).is_some(), "the key count keeps it");
    assert_ne!(sums.bucket(9).map(BucketSums::hash), Some([0; 32]));
    assert_eq!(sums.tree().buckets.len(), 1);
    // A bucket past the last is ignored rather than kept.
    sums.add(BUCKETS as u32, &delta);
    assert_eq!(sums.iter().count(), 1);
}

#[test]
fn comparing_sums_counts_buckets_present_on_one_side_only() {
    let mut ours = CellSums::new();
    let mut theirs = CellSums::new();
    for key in ["a", "b", "c"] {
        ours.add_entry(key, b"v");
        theirs.add_entry(key, b"v");
    }
    assert_eq!(ours.compare(&theirs), (0, 0));
    ours.add_entry("only-ours", b"v");
    theirs.add_entry("only-theirs", b"v");
    assert_eq!(ours.compare(&theirs), (2, 2));
    assert_eq!(ours.compare(&CellSums::new()), (4, 4));
}

#[tokio::test]
async fn a_wal_on_a_store_that_feeds_no_index_keeps_none() {
    let wal = Wal::open(Arc::new(InmemBackend::unindexed()))
        .await
        .expect("open");
    assert!(wal.merkle_index().is_none());
    let indexed = Wal::open(Arc::new(InmemBackend::new()))
        .await
        .expect("open");
    assert!(indexed.merkle_index().is_some());
}
