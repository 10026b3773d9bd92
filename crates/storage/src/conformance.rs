//! The conformance suite every [`Backend`] must pass.
//!
//! Call [`exercise_backend`] from a test with a fresh backend (other crates enable this
//! crate's `testing` feature). It uses only keys under [`ROOT`], requires that none exist when
//! it starts, and deletes all it wrote when it passes. It panics on the first violation, naming
//! the behaviour that broke.

// A test suite: it fails by panicking.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use async_trait::async_trait;

use crate::limits::{MAX_BATCH_OPS, MAX_KEY_BYTES, MAX_VALUE_BYTES};
use crate::{
    Backend, Op, Result, SnapshotPage, SnapshotSink, StorageError, SNAPSHOT_PAGE_BYTES,
    SNAPSHOT_PAGE_ENTRIES,
};

/// Every key the suite touches starts with this.
pub const ROOT: &str = "conformance/";

/// Runs every check against `backend`.
pub async fn exercise_backend(backend: &dyn Backend) {
    let leftovers = ok(
        backend.scan(ROOT, None, 1).await,
        "scanning the suite's root",
    );
    assert!(
        leftovers.is_empty(),
        "keys under {ROOT:?} exist before the suite runs"
    );

    crud(backend).await;
    binary_values(backend).await;
    invalid_input(backend).await;
    batches(backend).await;
    unbounded_batches(backend).await;
    list(backend).await;
    scan(backend).await;
    snapshot(backend).await;

    clear_root(backend).await;
}

/// `get`, and `get_now` when the backend answers it: the same answer.
async fn read(b: &dyn Backend, key: &str, what: &str) -> Option<Vec<u8>> {
    let found = ok(b.get(key).await, what);
    if let Some(now) = b.get_now(key) {
        assert_eq!(ok(now, what), found, "get_now answers as get: {what}");
    }
    found
}

async fn crud(b: &dyn Backend) {
    let key = "conformance/crud/key";
    assert_eq!(
        read(b, key, "get missing").await,
        None,
        "a missing key reads as None"
    );

    ok(b.put(key, b"one".to_vec()).await, "put");
    assert_eq!(
        read(b, key, "get").await,
        Some(b"one".to_vec()),
        "put then get"
    );

    ok(b.put(key, b"two".to_vec()).await, "overwrite");
    assert_eq!(
        read(b, key, "get").await,
        Some(b"two".to_vec()),
        "overwrite wins"
    );

    ok(b.delete(key).await, "delete");
    assert_eq!(
        read(b, key, "get").await,
        None,
        "a deleted key reads as None"
    );
    ok(b.delete(key).await, "deleting a missing key is Ok");

    let unicode = "conformance/crud/ключ/値";
    ok(b.put(unicode, b"u".to_vec()).await, "put unicode key");
    assert_eq!(
        read(b, unicode, "get").await,
        Some(b"u".to_vec()),
        "unicode key"
    );
    ok(b.delete(unicode).await, "delete unicode key");
}

async fn binary_values(b: &dyn Backend) {
    let every_byte: Vec<u8> = (0..=255u8).rev().collect();
    ok(
        b.put("conformance/bin/all", every_byte.clone()).await,
        "put binary",
    );
    assert_eq!(
        read(b, "conformance/bin/all", "get binary").await,
        Some(every_byte),
        "every byte value round-trips"
    );

    ok(
        b.put("conformance/bin/empty", Vec::new()).await,
        "put empty value",
    );
    assert_eq!(
        read(b, "conformance/bin/empty", "get empty value").await,
        Some(Vec::new()),
        "an empty value is present, not missing"
    );
}

async fn invalid_input(b: &dyn Backend) {
    let too_long = format!("{ROOT}{}", "k".repeat(MAX_KEY_BYTES));
    let longest = format!("{ROOT}{}", "k".repeat(MAX_KEY_BYTES - ROOT.len()));

    assert_invalid_key(b.put("", b"v".to_vec()).await, "put of an empty key");
    assert_invalid_key(b.get("").await, "get of an empty key");
    if let Some(now) = b.get_now("") {
        assert_invalid_key(now, "get_now of an empty key");
    }
    assert_invalid_key(b.delete("").await, "delete of an empty key");
    assert_invalid_key(
        b.put(&too_long, b"v".to_vec()).await,
        "put of a 4097+ byte key",
    );
    assert_invalid_key(b.get(&too_long).await, "get of a 4097+ byte key");
    if let Some(now) = b.get_now(&too_long) {
        assert_invalid_key(now, "get_now of a 4097+ byte key");
    }

    ok(
        b.put(&longest, b"v".to_vec()).await,
        "put of a 4096-byte key",
    );
    assert_eq!(
        read(b, &longest, "get").await,
        Some(b"v".to_vec()),
        "4096-byte key"
    );
    ok(b.delete(&longest).await, "delete of a 4096-byte key");

    let huge = b
        .put("conformance/huge", vec![0; MAX_VALUE_BYTES + 1])
        .await;
    assert!(
        matches!(huge, Err(StorageError::ValueTooLarge { .. })),
        "a value over 64 MiB must be rejected, got {huge:?}"
    );
    assert_eq!(
        read(b, "conformance/huge", "get").await,
        None,
        "rejected put left a value"
    );
}

async fn batches(b: &dyn Backend) {
    ok(b.batch(Vec::new()).await, "an empty batch is Ok");

    ok(
        b.batch(vec![
            put("conformance/batch/x", b"1"),
            put("conformance/batch/y", b"1"),
            put("conformance/batch/y", b"2"),
            Op::Delete {
                key: "conformance/batch/x".into(),
            },
        ])
        .await,
        "a valid batch",
    );
    assert_eq!(
        ok(b.get("conformance/batch/x").await, "get"),
        None,
        "ops apply in order"
    );
    assert_eq!(
        ok(b.get("conformance/batch/y").await, "get"),
        Some(b"2".to_vec()),
        "the later put in a batch wins"
    );

    let rejected = b
        .batch(vec![
            put("conformance/batch/a", b"1"),
            Op::Delete {
                key: "conformance/batch/y".into(),
            },
            put("", b"bad"),
        ])
        .await;
    assert_invalid_key(rejected, "a batch with an empty key");
    assert_eq!(
        ok(b.get("conformance/batch/a").await, "get"),
        None,
        "a rejected batch applies nothing"
    );
    assert_eq!(
        ok(b.get("conformance/batch/y").await, "get"),
        Some(b"2".to_vec()),
        "a rejected batch deletes nothing"
    );

    let oversized: Vec<Op> = (0..=MAX_BATCH_OPS)
        .map(|i| put(&format!("conformance/batch/many/{i}"), b""))
        .collect();
    let result = b.batch(oversized).await;
    assert!(
        matches!(result, Err(StorageError::BatchTooLarge { .. })),
        "a batch over 10000 ops must be rejected, got {result:?}"
    );
    assert!(
        ok(b.list("conformance/batch/many/").await, "list").is_empty(),
        "an oversized batch applies nothing"
    );
}

/// `batch_unbounded`: more ops than a batch may hold, in one transaction; each key and value is
/// still checked, and a bad one rejects the whole batch.
async fn unbounded_batches(b: &dyn Backend) {
    let many = MAX_BATCH_OPS + 7;
    let key = |i: usize| format!("conformance/unbounded/{i:06}");
    let mut ops: Vec<Op> = (0..many).map(|i| put(&key(i), b"v")).collect();
    ops.push(Op::Delete { key: key(3) });
    ok(b.batch_unbounded(ops).await, "an unbounded batch");
    let listed = ok(b.list("conformance/unbounded/").await, "list");
    assert_eq!(listed.len(), many - 1, "every put but the deleted key");
    assert_eq!(ok(b.get(&key(3)).await, "get"), None, "ops apply in order");
    assert_eq!(ok(b.get(&key(many - 1)).await, "get"), Some(b"v".to_vec()));

    let mut bad: Vec<Op> = (0..many).map(|i| Op::Delete { key: key(i) }).collect();
    bad.push(put("", b"no key"));
    assert!(
        b.batch_unbounded(bad).await.is_err(),
        "an empty key rejects the whole batch"
    );
    assert_eq!(
        ok(b.list("conformance/unbounded/").await, "list").len(),
        many - 1,
        "a rejected unbounded batch deletes nothing"
    );
    let cleanup: Vec<Op> = (0..many).map(|i| Op::Delete { key: key(i) }).collect();
    ok(
        b.batch_unbounded(cleanup).await,
        "deleting them all at once",
    );
    assert!(ok(b.list("conformance/unbounded/").await, "list").is_empty());
}

async fn list(b: &dyn Backend) {
    for key in [
        "conformance/list/a",
        "conformance/list/b-x",
        "conformance/list/b/c",
        "conformance/list/b/d/e",
        "conformance/list/b/d/f",
        "conformance/list/c",
        "conformance/list/ca/x",
        "conformance/lisz",
    ] {
        ok(b.put(key, key.as_bytes().to_vec()).await, "put for list");
    }
    let cases: [(&str, &[&str]); 7] = [
        ("conformance/list/", &["a", "b-x", "b/", "c", "ca/"]),
        ("conformance/list/b/", &["c", "d/"]),
        ("conformance/list/b/d/", &["e", "f"]),
        ("conformance/", &["batch/", "bin/", "list/", "lisz"]),
        // A prefix need not end in '/': children are what follows it.
        ("conformance/list/c", &["a/"]),
        ("conformance/list/b", &["-x", "/"]),
        ("conformance/list/nothing/", &[]),
    ];
    for (prefix, expected) in cases {
        assert_eq!(
            ok(b.list(prefix).await, "list"),
            expected,
            "list({prefix:?})"
        );
    }
}

async fn scan(b: &dyn Backend) {
    let keys: Vec<String> = (0..10)
        .map(|i| format!("conformance/scan/k{i:02}"))
        .collect();
    for key in &keys {
        ok(b.put(key, key.as_bytes().to_vec()).await, "put for scan");
    }
    ok(b.put("conformance/scam", b"before".to_vec()).await, "put");
    ok(b.put("conformance/scan0", b"after".to_vec()).await, "put");
    let prefix = "conformance/scan/";

    let all = ok(b.scan(prefix, None, 100).await, "scan");
    let expected: Vec<(String, Vec<u8>)> = keys
        .iter()
        .map(|key| (key.clone(), key.as_bytes().to_vec()))
        .collect();
    assert_eq!(all, expected, "scan returns the prefix's entries in order");

    assert_eq!(
        scanned_keys(b, prefix, Some("conformance/scan/k06"), 100).await,
        &keys[7..],
        "scan after a present key starts strictly after it"
    );
    assert_eq!(
        scanned_keys(b, prefix, Some("conformance/scan/k06x"), 100).await,
        &keys[7..],
        "scan after an absent key starts at the next key"
    );
    assert_eq!(
        scanned_keys(b, prefix, None, 3).await,
        &keys[..3],
        "scan stops at limit"
    );
    assert_eq!(
        scanned_keys(b, prefix, Some("a"), 2).await,
        &keys[..2],
        "an `after` before the prefix scans from the prefix"
    );
    assert!(
        scanned_keys(b, prefix, Some("conformance/scan/k09"), 10)
            .await
            .is_empty(),
        "scan after the last key is empty"
    );
    assert!(
        scanned_keys(b, prefix, None, 0).await.is_empty(),
        "scan with limit 0 is empty"
    );

    let mut paged = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = scanned_keys(b, prefix, after.as_deref(), 4).await;
        let Some(last) = page.last().cloned() else {
            break;
        };
        paged.extend(page);
        after = Some(last);
    }
    assert_eq!(paged, keys, "paging with `after` visits every key once");
}

async fn scanned_keys(
    b: &dyn Backend,
    prefix: &str,
    after: Option<&str>,
    limit: usize,
) -> Vec<String> {
    ok(b.scan(prefix, after, limit).await, "scan")
        .into_iter()
        .map(|(key, _)| key)
        .collect()
}

/// Records the pages of a snapshot; while the first page is delivered it writes keys that later
/// pages hold, which the snapshot must not see (it was taken before).
struct SnapshotProbe<'a> {
    backend: &'a dyn Backend,
    pages: Vec<SnapshotPage>,
    fail_after: Option<usize>,
}

#[async_trait]
impl SnapshotSink for SnapshotProbe<'_> {
    async fn page(&mut self, entries: SnapshotPage) -> Result<()> {
        if self.pages.is_empty() {
            let ops = vec![
                put("conformance/snap/zy-late", b"late"),
                Op::Delete {
                    key: "conformance/snap/1030".into(),
                },
            ];
            ok(self.backend.batch(ops).await, "writing during a snapshot");
        }
        self.pages.push(entries);
        if self.fail_after == Some(self.pages.len()) {
            return Err(StorageError::Closed);
        }
        Ok(())
    }
}

async fn snapshot(b: &dyn Backend) {
    // More entries than one page holds, and one value large enough to close a page by bytes.
    let count = SNAPSHOT_PAGE_ENTRIES + 10;
    let keys: Vec<String> = (0..count)
        .map(|i| format!("conformance/snap/{i:04}"))
        .collect();
    for chunk in keys.chunks(500) {
        let ops = chunk.iter().map(|k| put(k, k.as_bytes())).collect();
        ok(b.batch(ops).await, "writing the snapshot's keys");
    }
    let big = vec![7u8; SNAPSHOT_PAGE_BYTES];
    ok(
        b.put("conformance/snap/zz-big", big.clone()).await,
        "big value",
    );

    let mut probe = SnapshotProbe {
        backend: b,
        pages: Vec::new(),
        fail_after: None,
    };
    ok(b.snapshot(&mut probe).await, "snapshot");
    let mut seen: Vec<(String, Vec<u8>)> = Vec::new();
    for page in &probe.pages {
        assert!(!page.is_empty(), "a snapshot page is never empty");
        assert!(
            page.len() <= SNAPSHOT_PAGE_ENTRIES,
            "a snapshot page holds at most {SNAPSHOT_PAGE_ENTRIES} entries"
        );
        seen.extend(page.iter().cloned());
    }
    assert!(
        seen.windows(2).all(|w| w[0].0 < w[1].0),
        "snapshot entries come in strictly increasing key order"
    );
    let ours: Vec<&(String, Vec<u8>)> = seen
        .iter()
        .filter(|(k, _)| k.starts_with("conformance/snap/"))
        .collect();
    assert_eq!(
        ours.len(),
        count + 1,
        "the snapshot holds every key as of its start, and none written during it"
    );
    assert!(
        ours.iter()
            .any(|(k, v)| k == "conformance/snap/1030" && v == k.as_bytes()),
        "a key deleted during the snapshot is still in it"
    );
    assert!(
        ours.iter()
            .any(|(k, v)| k == "conformance/snap/zz-big" && *v == big),
        "large values are in the snapshot whole"
    );
    assert!(
        ok(b.get("conformance/snap/zy-late").await, "get").is_some(),
        "the write made during the snapshot was committed"
    );

    // An error from the sink stops the snapshot and comes back.
    let mut failing = SnapshotProbe {
        backend: b,
        pages: Vec::new(),
        fail_after: Some(1),
    };
    assert!(
        matches!(b.snapshot(&mut failing).await, Err(StorageError::Closed)),
        "a sink's error ends the snapshot with that error"
    );
    assert_eq!(failing.pages.len(), 1, "no page follows a sink's error");
    clear_root(b).await;
}

async fn clear_root(b: &dyn Backend) {
    loop {
        let page = ok(b.scan(ROOT, None, 1000).await, "scanning for cleanup");
        if page.is_empty() {
            break;
        }
        let deletes = page
            .into_iter()
            .map(|(key, _)| Op::Delete { key })
            .collect();
        ok(b.batch(deletes).await, "deleting the suite's keys");
    }
    assert!(
        ok(b.list(ROOT).await, "list").is_empty(),
        "deleted keys are gone from list"
    );
}

fn put(key: &str, value: &[u8]) -> Op {
    Op::Put {
        key: key.to_owned(),
        value: value.to_vec(),
    }
}

fn ok<T>(result: Result<T>, what: &str) -> T {
    match result {
        Ok(value) => value,
        Err(error) => panic!("{what} failed: {error}"),
    }
}

fn assert_invalid_key<T: std::fmt::Debug>(result: Result<T>, what: &str) {
    assert!(
        matches!(result, Err(StorageError::InvalidKey { .. })),
        "{what} must fail with InvalidKey, got {result:?}"
    );
}
