use std::path::Path;
use std::sync::Arc;

use bunker_storage::{Backend, EmbeddedBackend, HookedBackend, InmemBackend, Op, StorageError};

use bunker_storage::hooked_store::{HookedStore, StoreHooks};

use super::*;

fn put(key: &str, value: &[u8]) -> Op {
    Op::Put {
        key: key.to_owned(),
        value: value.to_vec(),
    }
}

fn entry(index: u64, ops: Vec<Op>) -> WalEntry {
    WalEntry {
        index,
        time_ms: 1_700_000_000_000 + index,
        ops,
    }
}

fn inmem() -> Arc<InmemBackend> {
    Arc::new(InmemBackend::new())
}

async fn open(backend: &Arc<impl HookedBackend>) -> Arc<Wal> {
    let backend: Arc<dyn HookedBackend> = backend.clone();
    Wal::open(backend).await.expect("opening WAL")
}

async fn recording(backend: &Arc<impl HookedBackend>) -> Arc<Wal> {
    let wal = open(backend).await;
    wal.set_recording(true);
    wal
}

async fn all_entries(wal: &Wal) -> Vec<WalEntry> {
    wal.read_after(0, usize::MAX, usize::MAX)
        .await
        .expect("reading WAL")
}

fn indices(entries: &[WalEntry]) -> Vec<u64> {
    entries.iter().map(|e| e.index).collect()
}

/// Every non-local key and value, in order.
async fn replicated_state(backend: &dyn Backend) -> Vec<(String, Vec<u8>)> {
    let all = backend.scan("", None, usize::MAX).await.expect("scanning");
    all.into_iter().filter(|(key, _)| !is_local(key)).collect()
}

// ---- record format ----

#[test]
fn entries_round_trip() {
    let original = entry(
        42,
        vec![
            put("sys/a", &[0, 255, 7]),
            Op::Delete {
                key: "logical/x/ключ".into(),
            },
            put("sys/empty", b""),
        ],
    );
    let bytes = encode_entry(&original);
    assert_eq!(bytes.first(), Some(&ENTRY_VERSION));
    assert_eq!(decode_entry(&bytes).expect("decoding"), original);
    let empty = entry(1, Vec::new());
    assert_eq!(
        decode_entry(&encode_entry(&empty)).expect("decoding"),
        empty
    );
}

#[test]
fn every_truncation_is_rejected() {
    let bytes = encode_entry(&entry(7, vec![put("sys/a", b"value")]));
    for len in 0..bytes.len() {
        let result = decode_entry(&bytes[..len]);
        assert!(
            matches!(result, Err(WalError::Corrupt { .. })),
            "a record cut to {len} of {} bytes must be corrupt, got {result:?}",
            bytes.len()
        );
    }
}

#[test]
fn damaged_records_are_rejected() {
    let bytes = encode_entry(&entry(7, vec![put("sys/a", b"value")]));
    let reason = |bytes: &[u8]| match decode_entry(bytes) {
        Err(WalError::Corrupt { reason, .. }) => reason,
        other => panic!("expected a corrupt record, got {other:?}"),
    };

    let mut flipped = bytes.clone();
    if let Some(last) = flipped.last_mut() {
        *last ^= 0x01;
    }
    assert!(reason(&flipped).contains("checksum"), "payload bit flip");

    let mut wrong_version = bytes.clone();
    wrong_version[0] = 2;
    assert!(
        reason(&wrong_version).contains("version"),
        "unknown version"
    );

    // Extra bytes with a matching checksum: the payload must hold exactly one entry.
    let mut payload = bytes[5..].to_vec();
    payload.push(0);
    let mut trailing = vec![ENTRY_VERSION];
    trailing.extend_from_slice(&crc32fast::hash(&payload).to_be_bytes());
    trailing.extend_from_slice(&payload);
    assert!(reason(&trailing).contains("trailing"), "trailing bytes");

    // Garbage with a valid header must fail cleanly, not panic or allocate wildly.
    let garbage = [0xffu8; 64];
    let mut forged = vec![ENTRY_VERSION];
    forged.extend_from_slice(&crc32fast::hash(&garbage).to_be_bytes());
    forged.extend_from_slice(&garbage);
    assert!(reason(&forged).contains("undecodable"), "garbage payload");
}

#[test]
fn entry_keys_sort_by_index() {
    assert_eq!(entry_key(12), "repl/wal/00000000000000000012");
    assert!(entry_key(9) < entry_key(10));
    assert!(entry_key(u64::MAX).len() == WAL_PREFIX.len() + 20);
    assert!(is_local(&entry_key(1)) && is_local(WAL_LAST_KEY) && is_local(WAL_RESET_KEY));
    assert!(!is_local("repl") && !is_local("replx/a") && !is_local("sys/repl/"));
}

// ---- recorder ----

#[tokio::test]
async fn numbering_continues_across_reopen() {
    let dir = tempfile::tempdir().expect("temp dir");
    let open_embedded =
        |path: &Path| Arc::new(EmbeddedBackend::open(path).expect("opening embedded backend"));
    {
        let backend = open_embedded(dir.path());
        let wal = recording(&backend).await;
        for i in 0..3u8 {
            backend
                .put(&format!("sys/{i}"), vec![i])
                .await
                .expect("put");
        }
        assert_eq!(wal.last_index(), 3);
    }
    let backend = open_embedded(dir.path());
    let wal = recording(&backend).await;
    assert_eq!(wal.last_index(), 3, "recovered from {WAL_LAST_KEY}");
    backend.put("sys/after", b"x".to_vec()).await.expect("put");
    assert_eq!(wal.last_index(), 4);
    let entries = all_entries(&wal).await;
    assert_eq!(indices(&entries), [1, 2, 3, 4]);
    assert_eq!(entries[3].ops, [put("sys/after", b"x")]);
    assert_eq!(entries[0].ops, [put("sys/0", &[0])]);
}

#[tokio::test]
async fn only_replicated_ops_are_recorded() {
    let backend = inmem();
    let wal = recording(&backend).await;

    backend
        .batch(vec![put("repl/state", b"s"), put("repl/other", b"o")])
        .await
        .expect("local batch");
    assert_eq!(wal.last_index(), 0, "a local-only batch creates no entry");

    backend
        .batch(vec![
            put("repl/state", b"t"),
            put("sys/a", b"1"),
            Op::Delete {
                key: "sys/b".into(),
            },
        ])
        .await
        .expect("mixed batch");
    let entries = all_entries(&wal).await;
    assert_eq!(indices(&entries), [1]);
    assert_eq!(
        entries[0].ops,
        [
            put("sys/a", b"1"),
            Op::Delete {
                key: "sys/b".into()
            }
        ]
    );

    wal.set_recording(false);
    backend.put("sys/c", b"3".to_vec()).await.expect("put");
    assert_eq!(wal.last_index(), 1, "nothing is recorded while off");
    assert_eq!(all_entries(&wal).await.len(), 1);
}

#[tokio::test]
async fn subscribers_see_each_commit() {
    let backend = inmem();
    let wal = recording(&backend).await;
    let mut updates = wal.subscribe();
    backend.put("sys/a", b"1".to_vec()).await.expect("put");
    assert!(updates.has_changed().expect("sender alive"));
    assert_eq!(*updates.borrow_and_update(), 1);
    backend.put("repl/local", b"1".to_vec()).await.expect("put");
    assert!(!updates.has_changed().expect("sender alive"));
}

#[tokio::test]
async fn too_large_batches_are_rejected_without_using_an_index() {
    let backend = inmem();
    let wal = recording(&backend).await;
    let full: Vec<Op> = (0..bunker_storage::limits::MAX_BATCH_OPS)
        .map(|i| put(&format!("sys/{i}"), b""))
        .collect();
    let result = backend.batch(full).await;
    assert!(
        matches!(result, Err(StorageError::BatchTooLarge { .. })),
        "got {result:?}"
    );
    assert!(replicated_state(backend.as_ref()).await.is_empty());
    backend.put("sys/a", b"1".to_vec()).await.expect("put");
    assert_eq!(indices(&all_entries(&wal).await), [1]);
}

/// Concurrent writers on the group-committing backend; replaying the WAL on a fresh backend
/// must give exactly the primary's replicated state.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replaying_the_wal_reproduces_the_primary() {
    let dir = tempfile::tempdir().expect("temp dir");
    let primary = Arc::new(EmbeddedBackend::open(dir.path()).expect("open"));
    let wal = recording(&primary).await;
    let tasks: Vec<_> = (0..32u8)
        .map(|task| {
            let primary = primary.clone();
            tokio::spawn(async move {
                for write in 0..10u8 {
                    primary
                        .batch(vec![
                            put("sys/shared", &[task, write]),
                            put(&format!("sys/{task}/{write}"), &[write]),
                            put(&format!("repl/progress/{task}"), &[write]),
                        ])
                        .await
                        .expect("batch");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("writer task");
    }
    let entries = all_entries(&wal).await;
    assert_eq!(indices(&entries), (1..=320).collect::<Vec<u64>>());

    let secondary = inmem();
    let replica = open(&secondary).await;
    replica.apply_replicated(&entries).await.expect("applying");
    assert_eq!(replica.last_index(), 320);
    assert_eq!(
        replicated_state(secondary.as_ref()).await,
        replicated_state(primary.as_ref()).await
    );
    assert_eq!(all_entries(&replica).await, entries, "same history");
}

// ---- reading and truncation ----

async fn wal_with_entries(count: u8, value_len: usize) -> (Arc<InmemBackend>, Arc<Wal>) {
    let backend = inmem();
    let wal = recording(&backend).await;
    for i in 0..count {
        backend
            .put(&format!("sys/{i:03}"), vec![i; value_len])
            .await
            .expect("put");
    }
    (backend, wal)
}

#[tokio::test]
async fn read_after_pages_by_limit_and_bytes() {
    let (_backend, wal) = wal_with_entries(40, 100).await;
    let read = |after, limit, max_bytes| {
        let wal = wal.clone();
        async move {
            indices(
                &wal.read_after(after, limit, max_bytes)
                    .await
                    .expect("reading"),
            )
        }
    };
    assert_eq!(read(0, 3, usize::MAX).await, [1, 2, 3]);
    assert_eq!(read(10, 2, usize::MAX).await, [11, 12]);
    assert_eq!(
        read(0, 100, usize::MAX).await,
        (1..=40).collect::<Vec<u64>>(),
        "reads across scan pages"
    );
    assert!(read(40, 10, usize::MAX).await.is_empty());
    assert!(read(0, 0, usize::MAX).await.is_empty());

    let record_bytes = encode_entry(&all_entries(&wal).await[0]).len();
    assert_eq!(read(0, 100, record_bytes * 3).await, [1, 2, 3]);
    assert_eq!(read(0, 100, record_bytes * 3 - 1).await, [1, 2]);
    assert_eq!(
        read(5, 100, 1).await,
        [6],
        "the first entry is returned even when larger than max_bytes"
    );
}

#[tokio::test]
async fn read_after_reports_corruption() {
    let (backend, wal) = wal_with_entries(3, 10).await;
    backend
        .put(&entry_key(2), b"not a record".to_vec())
        .await
        .expect("damaging entry 2");
    let result = wal.read_after(0, 10, usize::MAX).await;
    assert!(
        matches!(&result, Err(WalError::Corrupt { record, .. }) if *record == entry_key(2)),
        "got {result:?}"
    );

    let moved = encode_entry(&entry(9, Vec::new()));
    backend.put(&entry_key(2), moved).await.expect("put");
    let result = wal.read_after(1, 10, usize::MAX).await;
    assert!(
        matches!(&result, Err(WalError::Corrupt { reason, .. }) if reason.contains("key of entry 2")),
        "an entry under another index's key is corrupt, got {result:?}"
    );
}

// ---- key journal ----

/// The keys `changed_keys_after(after)` reports, and the index they run to.
async fn changed(wal: &Wal, after: u64) -> Option<(Vec<String>, u64)> {
    wal.changed_keys_after(after, usize::MAX, usize::MAX)
        .await
        .expect("reading the journal")
        .map(|(changed, last)| (changed.keys.into_iter().collect(), last))
}

fn names(range: std::ops::Range<u8>) -> Vec<String> {
    range.map(|i| format!("sys/{i:03}")).collect()
}

#[tokio::test]
async fn truncation_moves_keys_to_the_journal_and_catch_up_reads_both() {
    // 150 entries, one key each (sys/000 is entry 1).
    let (backend, wal) = wal_with_entries(150, 1).await;
    assert_eq!(wal.truncate(20, 100).await.expect("truncate"), 130);
    assert_eq!(wal.oldest_index().await.expect("oldest"), Some(131));
    // Entries 51..=130 moved to the journal, as one span; 1..=50 were beyond its reach (a
    // span of their own, dropped whole).
    let journal = backend
        .scan(JOURNAL_PREFIX, None, usize::MAX)
        .await
        .expect("scan");
    assert_eq!(journal.len(), 1);
    let span = journal::decode_span(&journal[0].0, &journal[0].1).expect("span");
    assert_eq!(journal[0].0, journal::journal_key(0, 130));
    let expected: Vec<(String, u64)> = names(50..130).into_iter().zip(51..).collect();
    assert_eq!((span.first, span.keys), (51, expected));
    // After 60: keys of entries 61..=150, from the journal (61..=130) and the WAL.
    assert_eq!(changed(&wal, 60).await, Some((names(60..150), 150)));
    // The journal's oldest is 51: a secondary at 50 is covered, one at 49 is not.
    assert_eq!(changed(&wal, 50).await, Some((names(50..150), 150)));
    assert_eq!(changed(&wal, 49).await, None);
    assert_eq!(
        changed(&wal, 150).await,
        Some((Vec::new(), 150)),
        "nothing missed"
    );
    assert_eq!(changed(&wal, 151).await, None, "ahead of this history");
    // Rewriting one key shows it once.
    backend.put("sys/070", vec![9]).await.expect("put");
    let (keys, last) = changed(&wal, 60).await.expect("covered");
    assert_eq!((keys.len(), last), (90, 151));

    // The journal keeps at least the newest 100 indices (of 151 now, 52..=151): the span
    // 51..=130 stays whole until all of it is past the reach.
    wal.truncate(20, 100).await.expect("truncate");
    assert!(changed(&wal, 50).await.is_some());
    assert_eq!(changed(&wal, 49).await, None);
    // Bounds: more keys than allowed is "not covered", not a partial answer.
    let capped = wal
        .changed_keys_after(60, 10, usize::MAX)
        .await
        .expect("read");
    assert!(capped.is_none());
    // Without a journal (retention 0), truncation leaves none behind.
    wal.truncate(20, 0).await.expect("truncate");
    let journal = backend
        .scan(JOURNAL_PREFIX, None, usize::MAX)
        .await
        .expect("scan");
    assert!(journal.is_empty(), "left {journal:?}");
    let mut expected = names(131..150);
    expected.insert(0, "sys/070".to_owned());
    assert_eq!(changed(&wal, 131).await, Some((expected, 151)));
    assert_eq!(changed(&wal, 130).await, None);
}

#[tokio::test]
async fn the_journal_holds_one_span_per_page_and_drops_it_once_past_the_reach() {
    let (backend, wal) = wal_with_entries(150, 1).await;
    wal.truncate(20, 100).await.expect("truncate"); // spans 1..=50 (dropped) and 51..=130
    for i in 0..80u8 {
        backend
            .put(&format!("app/{i:03}"), vec![i])
            .await
            .expect("put");
    }
    // Last 230: the reach starts at 131, so the span 51..=130 is dropped and the WAL's
    // entries 131..=210 become one span.
    wal.truncate(20, 100).await.expect("truncate");
    let journal = backend
        .scan(JOURNAL_PREFIX, None, usize::MAX)
        .await
        .expect("scan");
    let keys: Vec<&str> = journal.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, [journal::journal_key(0, 210)]);
    assert_eq!(changed(&wal, 129).await, None);
    let (keys, last) = changed(&wal, 130).await.expect("covered");
    assert_eq!((keys.len(), last), (100, 230));
    // A position inside the span gets the keys written after it only.
    let (keys, _) = changed(&wal, 200).await.expect("covered");
    assert_eq!(keys.len(), 30);
}

/// Stores written before spans hold one record per entry (version 1): they are read as spans
/// of one, beside newer spans.
#[tokio::test]
async fn journal_records_of_one_entry_each_are_read_as_spans() {
    let (backend, wal) = wal_with_entries(30, 1).await;
    // Entries 1..=10 as records of one entry each, as truncation wrote them before spans.
    let old_entries = wal.read_after(0, 10, usize::MAX).await.expect("read");
    let mut ops = Vec::new();
    for entry in &old_entries {
        let keys: Vec<&str> = entry.ops.iter().map(Op::key).collect();
        let payload = postcard::to_allocvec(&keys).expect("encode");
        ops.push(Op::Put {
            key: journal::journal_key(0, entry.index),
            value: record::seal(ENTRY_VERSION, &payload),
        });
        ops.push(Op::Delete {
            key: entry_key(entry.index),
        });
    }
    backend.batch(ops).await.expect("old journal");
    let journal = backend
        .scan(JOURNAL_PREFIX, None, usize::MAX)
        .await
        .expect("scan");
    let (key, value) = &journal[3];
    let span = journal::decode_span(key, value).expect("a record of one entry");
    assert_eq!(
        (span.first, span.keys),
        (4, vec![("sys/003".to_owned(), 4)])
    );
    wal.truncate(5, 1000).await.expect("truncate"); // span 11..=25
    assert_eq!(changed(&wal, 0).await.map(|(k, _)| k), Some(names(0..30)));
    assert_eq!(changed(&wal, 6).await.map(|(k, _)| k), Some(names(6..30)));
}

#[tokio::test]
async fn a_reset_disowns_the_journal_of_the_history_it_replaces() {
    let (backend, wal) = wal_with_entries(40, 1).await;
    wal.truncate(5, 1000).await.expect("truncate");
    assert!(changed(&wal, 0).await.is_some());
    // A sync replaces this store's history at index 500 (as a secondary would).
    wal.set_recording(false);
    wal.reset_to(500).await.expect("reset");
    assert_eq!(
        changed(&wal, 10).await,
        None,
        "old history no longer answers"
    );
    assert_eq!(changed(&wal, 500).await, Some((Vec::new(), 500)));
    // The old epoch's entries are deleted by the next truncation pass.
    wal.truncate(5, 1000).await.expect("truncate");
    let journal = backend
        .scan(JOURNAL_PREFIX, None, usize::MAX)
        .await
        .expect("scan");
    assert!(journal.is_empty(), "left {} entries", journal.len());
    // The new history journals under the new epoch.
    let applied: Vec<WalEntry> = (501..=530)
        .map(|i| entry(i, vec![put(&format!("app/{i}"), b"v")]))
        .collect();
    wal.apply_replicated(&applied).await.expect("apply");
    wal.truncate(5, 1000).await.expect("truncate");
    let (keys, last) = changed(&wal, 500).await.expect("covered");
    assert_eq!((keys.len(), last), (30, 530));
    let journal = backend
        .scan(JOURNAL_PREFIX, None, usize::MAX)
        .await
        .expect("scan");
    assert!(journal
        .iter()
        .all(|(k, _)| k.starts_with("repl/journal/00000000000000000001-")));
}

/// Found by the simulation: with the journal turned off, truncation deleted WAL entries
/// without their keys while older journal entries were still there, and a catch-up in between
/// read the journal and the WAL across the hole (it skipped the keys of the deleted entries).
#[tokio::test]
async fn deleting_entries_without_their_keys_disowns_the_journal_in_the_same_batch() {
    let (backend, wal) = wal_with_entries(40, 1).await;
    wal.truncate(30, 1000).await.expect("truncate"); // journal 1..=10, WAL 11..=40
    assert!(changed(&wal, 0).await.is_some());
    // The journal is turned off: the first page that deletes entries 11..=35 disowns it.
    let backend_dyn: &dyn Backend = backend.as_ref();
    delete_page_through(backend_dyn, 35, Journaling::Disown)
        .await
        .expect("delete");
    assert_eq!(changed(&wal, 0).await, None, "no catch-up across the hole");
    assert_eq!(changed(&wal, 35).await.map(|(k, _)| k.len()), Some(5));
    wal.truncate(5, 0).await.expect("truncate");
    let journal = backend
        .scan(JOURNAL_PREFIX, None, usize::MAX)
        .await
        .expect("scan");
    assert!(journal.is_empty(), "left {} entries", journal.len());
}

/// Flips a bit of the oldest journal record's checksummed payload; returns its key.
async fn damage_oldest_journal_record(backend: &InmemBackend) -> String {
    let journal = backend.scan(JOURNAL_PREFIX, None, 1).await.expect("scan");
    let (key, mut value) = journal.first().cloned().expect("a journal record");
    let last = value.len() - 1;
    value[last] ^= 0xff;
    backend.put(&key, value).await.expect("damage");
    key
}

#[tokio::test]
async fn a_damaged_journal_record_fails_the_catch_up_instead_of_skipping_keys() {
    let (backend, wal) = wal_with_entries(30, 1).await;
    wal.truncate(5, 1000).await.expect("truncate");
    let key = damage_oldest_journal_record(&backend).await;
    let result = wal.changed_keys_after(0, usize::MAX, usize::MAX).await;
    assert!(
        matches!(&result, Err(WalError::Corrupt { record, .. }) if *record == key),
        "got {result:?}"
    );
}

/// Found in review: `oldest` decoded the oldest span, so a damaged one stopped truncation with
/// the journal off (it asks whether the journal still holds anything) and refused every
/// catch-up from the journal.
#[tokio::test]
async fn a_damaged_oldest_span_stops_neither_truncation_nor_later_catch_ups() {
    let (backend, wal) = wal_with_entries(60, 1).await;
    wal.truncate(20, 1000).await.expect("truncate"); // span 1..=40, WAL 41..=60
    damage_oldest_journal_record(&backend).await;
    // A position past the damaged span still catches up from the journal and the WAL.
    assert_eq!(changed(&wal, 45).await.map(|(k, _)| k), Some(names(45..60)));
    // One that needs it is refused, never answered without its keys.
    let inside = wal.changed_keys_after(10, usize::MAX, usize::MAX).await;
    assert!(!matches!(inside, Ok(Some(_))), "got {inside:?}");
    // Truncation with the journal turned off disowns it instead of failing.
    assert_eq!(wal.truncate(10, 0).await.expect("truncate"), 10);
}

#[tokio::test]
async fn truncate_keeps_the_newest_entries() {
    let (_backend, wal) = wal_with_entries(150, 1).await;
    assert_eq!(wal.oldest_index().await.expect("oldest"), Some(1));
    assert_eq!(wal.truncate(200, 0).await.expect("truncate"), 0);
    assert_eq!(wal.truncate(20, 0).await.expect("truncate"), 130);
    assert_eq!(wal.oldest_index().await.expect("oldest"), Some(131));
    assert_eq!(
        indices(&all_entries(&wal).await),
        (131..=150).collect::<Vec<u64>>()
    );
    assert_eq!(
        wal.truncate(20, 0).await.expect("truncate"),
        0,
        "idempotent"
    );
    assert_eq!(wal.last_index(), 150, "truncation is not recorded");
    assert_eq!(wal.truncate(0, 0).await.expect("truncate"), 20);
    assert_eq!(wal.oldest_index().await.expect("oldest"), None);
    assert_eq!(
        wal.last_index(),
        150,
        "the last index survives an empty WAL"
    );
}

// ---- secondary side ----

fn sample_entries() -> Vec<WalEntry> {
    vec![
        entry(3, vec![put("sys/a", b"1"), put("sys/b", b"2")]),
        entry(
            5,
            vec![Op::Delete {
                key: "sys/a".into(),
            }],
        ),
        entry(6, vec![put("sys/c", b"3")]),
    ]
}

#[tokio::test]
async fn apply_replicated_is_idempotent() {
    let backend = inmem();
    let wal = open(&backend).await;
    let entries = sample_entries();
    let bytes = wal.apply_replicated(&entries).await.expect("applying");
    let expected: usize = entries.iter().map(|e| encode_entry(e).len()).sum();
    assert_eq!(bytes, expected);
    assert_eq!(wal.last_index(), 6);
    let state = replicated_state(backend.as_ref()).await;
    assert_eq!(
        state,
        [
            ("sys/b".to_owned(), b"2".to_vec()),
            ("sys/c".to_owned(), b"3".to_vec())
        ]
    );
    assert_eq!(
        all_entries(&wal).await,
        entries,
        "records stored as received"
    );

    assert_eq!(wal.apply_replicated(&entries).await.expect("again"), 0);
    let overlapping = [entries[2].clone(), entry(8, vec![put("sys/d", b"4")])];
    let bytes = wal.apply_replicated(&overlapping).await.expect("resume");
    assert_eq!(bytes, encode_entry(&overlapping[1]).len());
    assert_eq!(wal.last_index(), 8);
    assert_eq!(
        replicated_state(backend.as_ref()).await.len(),
        3,
        "entry 6 was not applied twice"
    );

    let reopened = open(&backend).await;
    assert_eq!(reopened.last_index(), 8);
}

#[tokio::test]
async fn a_failing_group_applies_nothing() {
    let backend = inmem();
    let wal = open(&backend).await;
    let entries = [
        entry(1, vec![put("sys/a", b"1")]),
        entry(2, vec![put("sys/b", b"2"), put("", b"invalid key")]),
        entry(3, vec![put("sys/c", b"3")]),
    ];
    let result = wal.apply_replicated(&entries).await;
    assert!(
        matches!(result, Err(WalError::Storage { .. })),
        "got {result:?}"
    );
    // The entries of one call share an atomic batch: none of them is applied.
    assert_eq!(wal.last_index(), 0);
    assert_eq!(backend.get("sys/a").await.expect("get"), None);
    assert_eq!(backend.get("sys/b").await.expect("get"), None);
    assert_eq!(backend.get(&entry_key(2)).await.expect("get"), None);
    assert_eq!(backend.get("sys/c").await.expect("get"), None);
    assert!(indices(&all_entries(&wal).await).is_empty());
}

#[tokio::test]
async fn invalid_replicated_entries_are_rejected() {
    let backend = inmem();
    let wal = open(&backend).await;
    let local = [entry(1, vec![put(WAL_LAST_KEY, &99u64.to_be_bytes())])];
    assert!(matches!(
        wal.apply_replicated(&local).await,
        Err(WalError::InvalidEntry { index: 1, .. })
    ));
    let unordered = [entry(4, Vec::new()), entry(4, Vec::new())];
    assert!(matches!(
        wal.apply_replicated(&unordered).await,
        Err(WalError::InvalidEntry { index: 4, .. })
    ));
    assert_eq!(
        wal.last_index(),
        0,
        "a call with an invalid entry applies nothing"
    );
    assert!(matches!(
        wal.apply_replicated(&[entry(0, Vec::new())]).await,
        Err(WalError::InvalidEntry { index: 0, .. })
    ));

    wal.set_recording(true);
    assert!(matches!(
        wal.apply_replicated(&sample_entries()).await,
        Err(WalError::Recording { .. })
    ));
    assert!(matches!(
        wal.reset_to(1).await,
        Err(WalError::Recording { .. })
    ));
}

#[tokio::test]
async fn a_promoted_secondary_continues_the_primary_numbering() {
    let backend = inmem();
    let wal = open(&backend).await;
    wal.apply_replicated(&sample_entries())
        .await
        .expect("applying");
    wal.promote();
    assert!(wal.is_recording());
    backend.put("sys/new", b"n".to_vec()).await.expect("put");
    assert_eq!(
        indices(&all_entries(&wal).await),
        [3, 5, 6, 7],
        "serves the primary's history and continues it"
    );
}

#[tokio::test]
async fn reset_to_replaces_the_history() {
    let (backend, wal) = wal_with_entries(100, 1).await;
    wal.set_recording(false);
    wal.reset_to(40).await.expect("reset");
    assert_eq!(wal.last_index(), 40);
    assert_eq!(wal.oldest_index().await.expect("oldest"), None);
    assert_eq!(backend.get(WAL_RESET_KEY).await.expect("get"), None);

    let next = entry(41, vec![put("sys/next", b"x")]);
    wal.apply_replicated(&[entry(40, Vec::new()), next.clone()])
        .await
        .expect("applying after reset");
    assert_eq!(all_entries(&wal).await, [next]);

    wal.promote();
    backend.put("sys/own", b"o".to_vec()).await.expect("put");
    assert_eq!(indices(&all_entries(&wal).await), [41, 42]);
    assert_eq!(open(&backend).await.last_index(), 42);
}

#[tokio::test]
async fn open_finishes_an_interrupted_reset() {
    let (backend, wal) = wal_with_entries(10, 1).await;
    wal.set_recording(false);
    drop(wal);
    // What a crash in the middle of `reset_to(4)` leaves behind.
    backend
        .batch(vec![
            put(WAL_RESET_KEY, &4u64.to_be_bytes()),
            Op::Delete { key: entry_key(1) },
        ])
        .await
        .expect("simulating a half-done reset");
    let wal = open(&backend).await;
    assert_eq!(wal.last_index(), 4);
    assert_eq!(wal.oldest_index().await.expect("oldest"), None);
    assert_eq!(backend.get(WAL_RESET_KEY).await.expect("get"), None);
}

#[tokio::test]
async fn a_corrupt_last_index_fails_open() {
    let backend = inmem();
    backend
        .put(WAL_LAST_KEY, b"short".to_vec())
        .await
        .expect("put");
    let dyn_backend: Arc<dyn HookedBackend> = backend;
    assert!(matches!(
        Wal::open(dyn_backend).await,
        Err(WalError::Corrupt { .. })
    ));
}

// ---- cancellation: a caller dropped after its write committed ----

/// Once set, a write commits and then never answers: the caller's future can be dropped after
/// the write landed, as a cancelled task's is while a group commit syncs.
#[derive(Default)]
struct StallAfterCommit(std::sync::atomic::AtomicBool);

#[async_trait::async_trait]
impl StoreHooks for StallAfterCommit {
    async fn after_batch(&self) {
        if self.0.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
    }
}

fn stalling() -> Arc<HookedStore<StallAfterCommit>> {
    Arc::new(HookedStore::new(StallAfterCommit::default()))
}

/// Poll `f` once and drop it: a task cancelled at its first await.
fn poll_once_then_drop<F: std::future::Future>(f: F) -> bool {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    f.as_mut().poll(&mut cx).is_ready()
}

#[tokio::test]
async fn an_apply_cancelled_after_its_commit_is_settled_before_the_next() {
    let backend = stalling();
    let wal = open(&backend).await;
    wal.apply_replicated(&[entry(1, vec![put("k", b"1")])])
        .await
        .unwrap();
    backend.hooks.0.store(true, Ordering::SeqCst);
    let batch = [
        entry(2, vec![put("k", b"2")]),
        entry(3, vec![put("k", b"3")]),
    ];
    assert!(!poll_once_then_drop(wal.apply_replicated(&batch)));
    backend.hooks.0.store(false, Ordering::SeqCst);
    assert_eq!(
        wal.last_index(),
        1,
        "the cancelled apply never published its index"
    );
    // The position a follower reports comes from storage, and a resent entry changes nothing.
    assert_eq!(wal.settled_index().await.unwrap(), 3);
    wal.apply_replicated(&[entry(2, vec![put("k", b"2")])])
        .await
        .unwrap();
    assert_eq!(wal.last_index(), 3);
    assert_eq!(
        replicated_state(backend.as_ref()).await,
        vec![("k".to_owned(), b"3".to_vec())],
        "an entry already applied is not applied again over newer values"
    );
}

#[tokio::test]
async fn a_staged_commit_larger_than_a_batch_is_one_commit() {
    let backend = inmem();
    let wal = open(&backend).await;
    let ops: Vec<Op> = (0..25_000)
        .map(|i| put(&format!("logical/{i:05}"), b"v"))
        .collect();
    wal.commit_staged(ops, 7)
        .await
        .expect("a large stage commits");
    assert_eq!(wal.last_index(), 7);
    assert_eq!(replicated_state(backend.as_ref()).await.len(), 25_000);
}

#[tokio::test]
async fn a_staged_commit_cancelled_mid_reset_is_finished_before_the_next_apply() {
    let backend = stalling();
    let wal = open(&backend).await;
    wal.apply_replicated(&[entry(1, vec![put("a", b"1")])])
        .await
        .unwrap();
    // The stage commits (data and reset marker), then the task is dropped before the old
    // entries are deleted and the position is written.
    backend.hooks.0.store(true, Ordering::SeqCst);
    assert!(!poll_once_then_drop(
        wal.commit_staged(vec![put("a", b"9"), put("b", b"9")], 9)
    ));
    backend.hooks.0.store(false, Ordering::SeqCst);
    // The stream goes on from 9: the reset is finished first, so it is not finished later
    // (at a restart) over the entries applied since.
    wal.apply_replicated(&[entry(10, vec![put("b", b"10")])])
        .await
        .unwrap();
    assert_eq!(wal.last_index(), 10);
    assert_eq!(indices(&all_entries(&wal).await), vec![10]);
    let reopened = open(&backend).await;
    assert_eq!(reopened.last_index(), 10, "a restart keeps the position");
    assert_eq!(indices(&all_entries(&reopened).await), vec![10]);
    assert_eq!(
        replicated_state(backend.as_ref()).await,
        vec![
            ("a".to_owned(), b"9".to_vec()),
            ("b".to_owned(), b"10".to_vec())
        ]
    );
}

// ---- key journal: truncation by another process during a catch-up's reads ----

/// After the first page of WAL entries a read handed out, the next scan first moves the WAL's
/// entries through `cutoff` to the journal, as a truncation of another process (an HA node
/// that just lost its lock) does between two pages of a catch-up's reads.
#[derive(Default)]
struct TruncatedBetweenPages {
    cutoff: std::sync::Mutex<Option<u64>>,
    wal_page_seen: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl StoreHooks for TruncatedBetweenPages {
    fn scanned(&self, page: &[(String, Vec<u8>)]) {
        if page.iter().any(|(key, _)| key.starts_with(WAL_PREFIX)) {
            self.wal_page_seen.store(true, Ordering::SeqCst);
        }
    }

    async fn before_scan(&self, store: &InmemBackend) -> bunker_storage::Result<()> {
        if !self.wal_page_seen.load(Ordering::SeqCst) {
            return Ok(());
        }
        let cutoff = self.cutoff.lock().unwrap().take();
        if let Some(cutoff) = cutoff {
            let backend: &dyn Backend = store;
            let journaling = Journaling::Into {
                epoch: 0,
                reach_cutoff: 0,
            };
            delete_page_through(backend, cutoff, journaling)
                .await
                .expect("moving entries to the journal");
        }
        Ok(())
    }
}

#[tokio::test]
async fn a_truncation_between_the_catch_ups_reads_loses_no_key() {
    let backend = Arc::new(HookedStore::new(TruncatedBetweenPages::default()));
    let wal = recording(&backend).await;
    for i in 0..100u8 {
        backend
            .put(&format!("sys/{i:03}"), vec![i])
            .await
            .expect("put");
    }
    wal.truncate(60, 1000).await.expect("truncate"); // journal 1..=40, WAL 41..=100
    backend.hooks.wal_page_seen.store(false, Ordering::SeqCst);
    *backend.hooks.cutoff.lock().unwrap() = Some(70);
    let (changed, last) = wal
        .changed_keys_after(30, usize::MAX, usize::MAX)
        .await
        .expect("read")
        .expect("covered");
    assert!(
        backend.hooks.cutoff.lock().unwrap().is_none(),
        "the truncation ran during the reads"
    );
    assert_eq!(last, 100);
    let keys: Vec<String> = changed.keys.into_iter().collect();
    assert_eq!(keys, names(30..100), "entries 31..=100, each key once");
}

/// The key journal reads only the keys of the entries it truncates, from the same bytes the
/// full decoding reads, and refuses what the full decoding refuses.
#[test]
fn an_entrys_keys_read_alone_are_the_keys_of_its_full_decoding() {
    let values = [
        Vec::new(),
        vec![0u8; 1],
        vec![7u8; 300],
        vec![255u8; 70_000],
    ];
    for (index, value) in (1u64..).zip(values) {
        let entry = WalEntry {
            index,
            time_ms: 1_700_000_000_000 + index,
            ops: vec![
                Op::Put {
                    key: format!("secret/data/ünïcode-{index}"),
                    value: value.clone(),
                },
                Op::Delete {
                    key: "sys/token/id/x".into(),
                },
                Op::Put {
                    key: String::new(),
                    value,
                },
            ],
        };
        let key = entry_key(index);
        let bytes = encode_entry(&entry);
        let full = record::decode_stored(&key, &bytes).expect("full decoding");
        let keys = record::decode_stored_keys(&key, &bytes).expect("keys alone");
        let expected: Vec<&str> = full.ops.iter().map(Op::key).collect();
        assert_eq!(keys, expected);
        // Under another entry's key, damaged, cut short or with bytes after it: refused alike.
        assert!(record::decode_stored_keys(&entry_key(index + 1), &bytes).is_err());
        let mut damaged = bytes.clone();
        let last = damaged.len() - 1;
        damaged[last] ^= 1;
        assert!(record::decode_stored_keys(&key, &damaged).is_err());
        assert!(record::decode_stored_keys(&key, &bytes[..bytes.len() - 1]).is_err());
        let mut trailing = record::seal(ENTRY_VERSION, &{
            let (_, payload) = record::unseal(&bytes).expect("unseal");
            let mut payload = payload.to_vec();
            payload.push(0);
            payload
        });
        assert!(record::decode_stored(&key, &trailing).is_err());
        assert!(record::decode_stored_keys(&key, &trailing).is_err());
        trailing.clear();
        assert!(record::decode_stored_keys(&key, &trailing).is_err());
    }
}

/// `Op`'s value is written as one byte string: the bytes postcard writes (records, frames) are
/// the ones the derived sequence of bytes wrote before, both ways, and JSON is unchanged too.
#[test]
fn an_ops_value_encodes_to_the_same_bytes_as_a_sequence_of_bytes() {
    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    enum SequenceOp {
        Put { key: String, value: Vec<u8> },
        Delete { key: String },
    }
    let values = [
        Vec::new(),
        vec![0u8],
        vec![200u8; 127],
        vec![1u8; 128],
        vec![9u8; 70_000],
    ];
    for value in values {
        let op = Op::Put {
            key: "secret/data/a".into(),
            value: value.clone(),
        };
        let old = SequenceOp::Put {
            key: "secret/data/a".into(),
            value,
        };
        let bytes = postcard::to_allocvec(&op).expect("encode");
        assert_eq!(bytes, postcard::to_allocvec(&old).expect("encode"));
        assert_eq!(postcard::from_bytes::<Op>(&bytes).expect("decode"), op);
        assert_eq!(
            postcard::from_bytes::<SequenceOp>(&bytes).expect("decode"),
            old
        );
        let json = serde_json::to_string(&op).expect("json");
        assert_eq!(json, serde_json::to_string(&old).expect("json"));
        assert_eq!(serde_json::from_str::<Op>(&json).expect("json"), op);
    }
    let delete = Op::Delete { key: "k".into() };
    let old = SequenceOp::Delete { key: "k".into() };
    assert_eq!(
        postcard::to_allocvec(&delete).expect("encode"),
        postcard::to_allocvec(&old).expect("encode")
    );
}
