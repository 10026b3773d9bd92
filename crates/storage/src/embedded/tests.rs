use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use async_trait::async_trait;

use super::*;
use crate::SnapshotSink;

fn open(dir: &Path) -> EmbeddedBackend {
    EmbeddedBackend::open(dir).expect("opening embedded backend")
}

fn temp_dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("creating temp dir")
}

#[tokio::test]
async fn embedded_passes_conformance() {
    let dir = temp_dir();
    let backend = open(dir.path());
    crate::conformance::exercise_backend(&backend).await;
}

/// Every write after the first meets a running checkpoint (held until the writer cannot go
/// on without it): reads are served from the overlay laid over redb.
#[tokio::test]
async fn embedded_passes_conformance_with_writes_during_checkpoints() {
    let dir = temp_dir();
    let backend = EmbeddedBackend::open_holding_checkpoints(dir.path(), usize::MAX).expect("open");
    crate::conformance::exercise_backend(&backend).await;
    let (overlaid, batches) = (backend.shared.overlaid_groups(), backend.metrics().batches);
    assert!(
        overlaid * 2 > batches,
        "most groups must have met a running checkpoint: {overlaid} of {batches}"
    );
}

/// Checkpoints end, and their overlays are applied to redb, every third write, including
/// while the suite's snapshot is being read.
#[tokio::test]
async fn embedded_passes_conformance_with_checkpoints_ending_between_writes() {
    let dir = temp_dir();
    let backend = EmbeddedBackend::open_holding_checkpoints(dir.path(), 2).expect("open");
    crate::conformance::exercise_backend(&backend).await;
    assert!(backend.shared.overlaid_groups() > 10);
    assert!(backend.shared.applied_overlays() > 5);
}

/// Readers racing a writer whose every write (round `r` puts `r` into key `r % KEYS`) meets a
/// checkpoint that ends a write later: overlays are published and applied to redb all the
/// time. No read may go back to an older round (an acknowledged write vanishing while the
/// overlay is applied), and every scan must see the last `KEYS` rounds exactly (a scan mixing
/// an older overlay with a newer redb state, or the reverse, would miss one). Mutation-checked:
/// emptying the overlay outside the fence fails it; opening redb's snapshot outside the fence
/// (after taking the overlay) needs two checkpoints to end in between, too narrow to hit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_racing_overlay_applications_see_one_point_in_time() {
    const KEYS: u32 = 8;
    const ROUNDS: u32 = 600;
    let dir = temp_dir();
    let backend = Arc::new(EmbeddedBackend::open_holding_checkpoints(dir.path(), 1).expect("open"));
    let round_of = |value: &[u8]| u32::from_le_bytes(value.try_into().expect("a round"));
    let write = |round: u32| {
        let backend = backend.clone();
        async move {
            let key = format!("r/{}", round % KEYS);
            backend
                .put(&key, round.to_le_bytes().to_vec())
                .await
                .expect("write");
            key
        }
    };
    for round in 0..KEYS {
        write(round).await;
    }
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..3)
        .map(|reader| {
            let (backend, done) = (backend.clone(), done.clone());
            tokio::spawn(async move {
                let mut seen = 0u32;
                let mut reads = 0u64;
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    let newest = if reader == 0 {
                        let value = backend.get("r/3").await.expect("get").expect("present");
                        round_of(&value)
                    } else {
                        let all = backend.scan("r/", None, 100).await.expect("scan");
                        let mut rounds: Vec<u32> = all.iter().map(|(_, v)| round_of(v)).collect();
                        rounds.sort_unstable();
                        let newest = rounds.last().copied().unwrap_or_default();
                        let want: Vec<u32> = (newest + 1 - KEYS..=newest).collect();
                        assert_eq!(rounds, want, "a scan saw rounds {rounds:?}");
                        newest
                    };
                    assert!(
                        newest >= seen,
                        "reads went back from round {seen} to {newest}"
                    );
                    seen = newest;
                    reads += 1;
                    tokio::task::yield_now().await;
                }
                reads
            })
        })
        .collect();
    for round in KEYS..ROUNDS {
        let key = write(round).await;
        let value = backend.get(&key).await.expect("get").expect("present");
        assert_eq!(
            round_of(&value),
            round,
            "a write is read back once acknowledged"
        );
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    for reader in readers {
        assert!(reader.await.expect("reader") > 0);
    }
    let (overlaid, applied) = (
        backend.shared.overlaid_groups(),
        backend.shared.applied_overlays(),
    );
    // How many checkpoints end depends on the disk (a slow sync spans many writes); ten
    // overlay applications under the readers are enough to have met the fence.
    assert!(
        overlaid > u64::from(ROUNDS) / 2 && applied >= 10,
        "writes met running checkpoints ({overlaid}) that ended ({applied})"
    );
}

/// A snapshot taken while a checkpoint runs, read while later checkpoints end and their
/// overlays are applied to redb, holds the keys as they were when it started.
#[tokio::test]
async fn a_snapshot_spanning_overlay_applications_is_one_point_in_time() {
    struct Sink<'a> {
        backend: &'a EmbeddedBackend,
        pages: Vec<SnapshotPage>,
    }
    #[async_trait]
    impl SnapshotSink for Sink<'_> {
        async fn page(&mut self, entries: SnapshotPage) -> Result<()> {
            if self.pages.is_empty() {
                // Write (rewriting keys the snapshot has yet to deliver, and deleting one)
                // until an overlay has been applied to redb.
                let applied = self.backend.shared.applied_overlays();
                let mut writes = 0;
                while self.backend.shared.applied_overlays() == applied {
                    writes += 1;
                    assert!(writes < 10_000, "no checkpoint ended");
                    self.backend
                        .batch(vec![
                            Op::Put {
                                key: "s/1500".into(),
                                value: b"new".to_vec(),
                            },
                            Op::Delete {
                                key: "s/2000".into(),
                            },
                            Op::Put {
                                key: format!("s/late/{writes}"),
                                value: Vec::new(),
                            },
                        ])
                        .await?;
                }
            }
            self.pages.push(entries);
            Ok(())
        }
    }
    let dir = temp_dir();
    let backend = EmbeddedBackend::open_holding_checkpoints(dir.path(), 1).expect("open");
    for chunk in 0..3 {
        let ops = (chunk * 1000..(chunk + 1) * 1000)
            .map(|i| Op::Put {
                key: format!("s/{i:04}"),
                value: b"old".to_vec(),
            })
            .collect();
        backend.batch(ops).await.expect("seed");
    }
    // The seed's last batch went into an overlay: the snapshot starts over one.
    assert!(backend.shared.overlaid_groups() > 0);
    let mut sink = Sink {
        backend: &backend,
        pages: Vec::new(),
    };
    backend.snapshot(&mut sink).await.expect("snapshot");
    let entries: Vec<(String, Vec<u8>)> = sink.pages.into_iter().flatten().collect();
    assert_eq!(entries.len(), 3000);
    assert!(entries.iter().all(|(_, value)| value == b"old"));
    assert_eq!(
        backend.get("s/1500").await.expect("get"),
        Some(b"new".to_vec())
    );
    assert_eq!(backend.get("s/2000").await.expect("get"), None);
}

/// A checkpoint that fails stops the store taking writes (what redb holds is unknown), while
/// every acknowledged write stays readable, and all of them are there after a restart (the
/// log still holds them).
#[tokio::test]
async fn a_failed_checkpoint_stops_writes_and_loses_no_acknowledged_one() {
    let dir = temp_dir();
    let mut acked = 0u32;
    {
        let tuning = Tuning {
            checkpoint_commits: 1,
            hold: None,
            fail_checkpoints: true,
            ..Tuning::default()
        };
        let backend =
            EmbeddedBackend::open_tuned(dir.path(), DEFAULT_CACHE_BYTES, tuning).expect("open");
        let error = loop {
            assert!(acked < 1000, "no write saw the failed checkpoint");
            match backend.put(&format!("f/{acked:04}"), b"v".to_vec()).await {
                Ok(()) => acked += 1,
                Err(error) => break error,
            }
        };
        assert!(acked >= 1, "the first write needs no checkpoint");
        assert!(error.to_string().contains("injected failure"), "{error}");
        let again = backend
            .put("f/after", b"v".to_vec())
            .await
            .expect_err("poisoned");
        assert!(
            again
                .to_string()
                .contains("no writes until it is restarted"),
            "{again}"
        );
        for i in 0..acked {
            assert!(backend
                .get(&format!("f/{i:04}"))
                .await
                .expect("get")
                .is_some());
        }
    }
    let backend = open(dir.path());
    for i in 0..acked {
        assert!(
            backend
                .get(&format!("f/{i:04}"))
                .await
                .expect("get")
                .is_some(),
            "acknowledged write {i} of {acked} lost"
        );
    }
    assert_eq!(backend.get("f/after").await.expect("get"), None);
    backend
        .put("f/after", b"v".to_vec())
        .await
        .expect("writes again");
}

/// Writes committed while a checkpoint is held open are read back, deleted keys included, and
/// are all in redb, durably, after a clean stop: nothing is left to replay.
#[tokio::test]
async fn writes_during_a_checkpoint_are_read_and_survive_a_clean_stop() {
    let dir = temp_dir();
    {
        let backend =
            EmbeddedBackend::open_holding_checkpoints(dir.path(), usize::MAX).expect("open");
        backend.put("k/a", b"1".to_vec()).await.expect("put");
        // The checkpoint of the first write starts; these go into the overlay.
        backend.put("k/b", b"2".to_vec()).await.expect("put");
        backend.delete("k/a").await.expect("delete");
        backend.put("k/c/d", Vec::new()).await.expect("put");
        assert_eq!(backend.shared.overlaid_groups(), 3);
        assert_eq!(backend.get("k/a").await.expect("get"), None);
        assert_eq!(backend.get("k/c/d").await.expect("get"), Some(Vec::new()));
        assert_eq!(backend.list("k/").await.expect("list"), ["b", "c/"]);
        let scanned = backend.scan("k/", None, 10).await.expect("scan");
        assert_eq!(
            scanned,
            [
                ("k/b".to_owned(), b"2".to_vec()),
                ("k/c/d".to_owned(), Vec::new())
            ]
        );
    }
    let checkpoint = checkpoint_of(dir.path());
    let log = CommitLog::open(dir.path()).expect("log");
    assert!(log.replay(checkpoint).expect("replay").0.is_empty());
    drop(log);
    let backend = open(dir.path());
    assert_eq!(backend.list("k/").await.expect("list"), ["b", "c/"]);
    assert_eq!(backend.get("k/b").await.expect("get"), Some(b"2".to_vec()));
}

/// A store whose idle writer leaves a deferred lone group laid over redb (the next group
/// applies it): every read after a write goes through the overlay.
fn open_keeping_deferred(dir: &Path) -> EmbeddedBackend {
    let tuning = Tuning {
        keep_deferred_when_idle: true,
        ..Tuning::default()
    };
    EmbeddedBackend::open_tuned(dir, DEFAULT_CACHE_BYTES, tuning).expect("open")
}

/// Lone groups committed straight to redb, as before deferral (and as a caller committing
/// on its own thread still does).
#[tokio::test]
async fn embedded_passes_conformance_without_deferral() {
    let dir = temp_dir();
    let tuning = Tuning {
        defer_lone_groups: false,
        ..Tuning::default()
    };
    let backend =
        EmbeddedBackend::open_tuned(dir.path(), DEFAULT_CACHE_BYTES, tuning).expect("open");
    crate::conformance::exercise_backend(&backend).await;
    assert_eq!(backend.shared.applied_deferred(), 0);
}

/// Every write is a lone group read back through its overlay before it reaches redb (the
/// next write applies it).
#[tokio::test]
async fn embedded_passes_conformance_with_lone_groups_laid_over() {
    let dir = temp_dir();
    let backend = open_keeping_deferred(dir.path());
    crate::conformance::exercise_backend(&backend).await;
    let (applied, batches) = (backend.shared.applied_deferred(), backend.metrics().batches);
    assert!(
        applied * 2 > batches,
        "most groups must have been deferred: {applied} of {batches}"
    );
}

/// A lone write is acknowledged before its redb commit, read from the overlay meanwhile, and
/// committed to redb once the writer is idle: the overlay empties, the value stays, and a
/// clean stop leaves nothing to replay.
#[tokio::test]
async fn a_lone_write_reaches_redb_when_the_writer_is_idle() {
    let dir = temp_dir();
    {
        let backend = open_keeping_deferred(dir.path());
        backend.put("d/a", b"1".to_vec()).await.expect("put");
        assert!(backend.shared.lays_over(), "deferred, and kept");
        assert_eq!(backend.get("d/a").await.expect("get"), Some(b"1".to_vec()));
        assert_eq!(backend.list("d/").await.expect("list"), ["a"]);
        // The next group applies it first, then is deferred itself.
        backend.delete("d/a").await.expect("delete");
        assert_eq!(backend.shared.applied_deferred(), 1);
        assert_eq!(backend.get("d/a").await.expect("get"), None);
        assert!(backend.list("d/").await.expect("list").is_empty());
    }
    let backend = open(dir.path());
    assert_eq!(backend.get("d/a").await.expect("get"), None);
    backend.put("d/b", b"2".to_vec()).await.expect("put");
    // The writer applies it when it finds its queue empty, right after the acknowledgement.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while backend.shared.applied_deferred() == 0 {
        assert!(std::time::Instant::now() < deadline, "never applied");
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    assert!(!backend.shared.lays_over());
    assert_eq!(backend.get("d/b").await.expect("get"), Some(b"2".to_vec()));
    drop(backend);
    let checkpoint = checkpoint_of(dir.path());
    let log = CommitLog::open(dir.path()).expect("log");
    assert!(log.replay(checkpoint).expect("replay").0.is_empty());
}

#[tokio::test]
async fn writes_survive_reopen() {
    let dir = temp_dir();
    let data_dir = dir.path().join("not/yet/created");
    {
        let backend = open(&data_dir);
        backend.put("sys/a", b"1".to_vec()).await.expect("put");
        backend
            .batch(vec![
                Op::Put {
                    key: "sys/b/c".into(),
                    value: b"2".to_vec(),
                },
                Op::Put {
                    key: "sys/gone".into(),
                    value: b"3".to_vec(),
                },
            ])
            .await
            .expect("batch");
        backend.delete("sys/gone").await.expect("delete");
    }
    assert!(data_dir.join(DATABASE_FILE).is_file());

    // Reopening fails while the file is still open, so this also shows drop closed it.
    let backend = open(&data_dir);
    assert_eq!(
        backend.get("sys/a").await.expect("get"),
        Some(b"1".to_vec())
    );
    assert_eq!(
        backend.get("sys/b/c").await.expect("get"),
        Some(b"2".to_vec())
    );
    assert_eq!(backend.get("sys/gone").await.expect("get"), None);
    assert_eq!(backend.list("sys/").await.expect("list"), ["a", "b/"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_batches_share_fsyncs() {
    const TASKS: u8 = 64;
    const WRITES_PER_TASK: u8 = 20;
    let dir = temp_dir();
    let backend = Arc::new(open(dir.path()));

    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let backend = backend.clone();
            tokio::spawn(async move {
                for write in 0..WRITES_PER_TASK {
                    backend
                        .put(&format!("group/{task:02}/{write:02}"), vec![task, write])
                        .await
                        .expect("concurrent put");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("writer task");
    }

    for task in 0..TASKS {
        for write in 0..WRITES_PER_TASK {
            let key = format!("group/{task:02}/{write:02}");
            assert_eq!(
                backend.get(&key).await.expect("get"),
                Some(vec![task, write]),
                "{key}"
            );
        }
    }
    let total = u64::from(TASKS) * u64::from(WRITES_PER_TASK);
    let metrics = backend.metrics();
    assert_eq!(metrics.batches, total);
    assert_eq!(metrics.ops, total);
    assert!(
        metrics.fsyncs < metrics.batches,
        "concurrent batches must share commits: {metrics:?}"
    );
}

/// Reads share one view until the next commit (`overlay.rs`): a read taken right after a
/// write is acknowledged sees it, with or without a checkpoint running, and between writes the
/// reads share the view. Mutation-checked: not dropping the view after a commit fails it.
#[tokio::test]
async fn a_shared_view_never_hides_an_acknowledged_write() {
    for hold in [None, Some(3)] {
        let dir = temp_dir();
        let backend = match hold {
            None => open(dir.path()),
            Some(groups) => {
                EmbeddedBackend::open_holding_checkpoints(dir.path(), groups).expect("open")
            }
        };
        for round in 0u32..40 {
            let before = backend.get("v").await.expect("get");
            let again = backend.view().expect("view");
            assert!(
                Arc::ptr_eq(&backend.view().expect("view"), &again),
                "reads between two writes share one view"
            );
            drop(again);
            if round % 5 == 4 {
                backend.delete("v").await.expect("delete");
                assert_eq!(backend.get("v").await.expect("get"), None);
                continue;
            }
            backend
                .put("v", round.to_le_bytes().to_vec())
                .await
                .expect("put");
            assert_ne!(before, Some(round.to_le_bytes().to_vec()));
            assert_eq!(
                backend.get("v").await.expect("get"),
                Some(round.to_le_bytes().to_vec()),
                "round {round} (checkpoints held: {hold:?})"
            );
            assert_eq!(backend.list("").await.expect("list"), vec!["v".to_owned()]);
        }
    }
}

/// Readers racing a writer that keeps overwriting the same keys: every value read must be one
/// that was written, whole. A reader that let its snapshot go before copying the value out
/// could see a page the writer had already freed and reused (and redb's debug build asserts).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_racing_overwrites_see_whole_values() {
    const KEYS: u8 = 4;
    const ROUNDS: u8 = 250;
    const READERS: usize = 3;
    let dir = temp_dir();
    let backend = Arc::new(open(dir.path()));
    for key in 0..KEYS {
        backend
            .put(&format!("hot/{key}"), vec![0; 3000])
            .await
            .expect("seed");
    }
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..READERS)
        .map(|_| {
            let (backend, done) = (backend.clone(), done.clone());
            tokio::spawn(async move {
                let mut reads = 0u64;
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    for key in 0..KEYS {
                        let value = backend.get(&format!("hot/{key}")).await.expect("get");
                        let value = value.expect("seeded key exists");
                        assert_eq!(value.len(), 3000);
                        assert!(
                            value.iter().all(|byte| *byte == value[0]),
                            "torn value for hot/{key}"
                        );
                        reads += 1;
                    }
                    tokio::task::yield_now().await;
                }
                reads
            })
        })
        .collect();
    for round in 1..=ROUNDS {
        let ops = (0..KEYS)
            .map(|key| Op::Put {
                key: format!("hot/{key}"),
                value: vec![round; 3000],
            })
            .collect();
        backend.batch(ops).await.expect("overwrite");
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    for reader in readers {
        assert!(reader.await.expect("reader task") > 0);
    }
    assert_eq!(
        backend.get("hot/0").await.expect("get"),
        Some(vec![ROUNDS; 3000])
    );
}

/// Environment variable that makes [`crash_writer_child`] write into the given directory.
const CRASH_DIR_ENV: &str = "BUNKER_STORAGE_CRASH_DIR";
/// ...and, when set, hold each checkpoint for this many writes: the kill lands while one runs
/// (records in both regions of the log, some of the acknowledged writes only in the overlay)
/// as often as not.
const CRASH_HOLD_ENV: &str = "BUNKER_STORAGE_CRASH_HOLD";
/// Set (to a number of groups between checkpoints): the child's writer leaves each lone
/// group's redb commit to the next group, so the last acknowledged write is only in the log
/// and the overlay when the kill lands, and checkpoints start right after such a group.
const CRASH_KEEP_DEFERRED_ENV: &str = "BUNKER_STORAGE_CRASH_KEEP_DEFERRED";
/// Full test name of the child, for re-executing this test binary.
const CRASH_CHILD_TEST: &str = "embedded::tests::crash_writer_child";
/// Marker the child prints before the index of each acknowledged write.
const ACK_MARKER: &str = "BUNKER_STORAGE_ACK";
/// Acknowledged writes the parent waits for before killing the child.
const ACKS_BEFORE_KILL: u64 = 200;
/// The child stops by itself after this many writes if it is never killed.
const CHILD_MAX_WRITES: u64 = 100_000;

fn crash_key(index: u64) -> String {
    format!("crash/{index:08}")
}

fn crash_value(index: u64) -> Vec<u8> {
    index.to_le_bytes().to_vec()
}

/// The index in a line `... ACK_MARKER <index> ...`, if any.
fn parse_ack(line: &str) -> Option<u64> {
    let mut words = line.split_whitespace();
    words.find(|word| *word == ACK_MARKER)?;
    words.next()?.parse().ok()
}

/// Run only as a child of `acknowledged_writes_survive_kill_9`: writes keys one batch at a
/// time and prints each index once its batch is acknowledged.
#[tokio::test]
#[ignore = "child process of acknowledged_writes_survive_kill_9"]
async fn crash_writer_child() {
    let Some(dir) = std::env::var_os(CRASH_DIR_ENV) else {
        return;
    };
    let backend = match std::env::var(CRASH_HOLD_ENV) {
        Ok(groups) => EmbeddedBackend::open_holding_checkpoints(
            Path::new(&dir),
            groups.parse().expect("a number of groups"),
        )
        .expect("open"),
        Err(_) if std::env::var_os(CRASH_KEEP_DEFERRED_ENV).is_some() => {
            let every = std::env::var(CRASH_KEEP_DEFERRED_ENV).expect("a number of groups");
            let tuning = Tuning {
                checkpoint_commits: every.parse().expect("a number of groups"),
                keep_deferred_when_idle: true,
                ..Tuning::default()
            };
            EmbeddedBackend::open_tuned(Path::new(&dir), DEFAULT_CACHE_BYTES, tuning).expect("open")
        }
        Err(_) => open(Path::new(&dir)),
    };
    let mut stdout = std::io::stdout();
    for index in 0..CHILD_MAX_WRITES {
        backend
            .put(&crash_key(index), crash_value(index))
            .await
            .expect("child put");
        writeln!(stdout, "{ACK_MARKER} {index}").expect("parent stopped reading");
        stdout.flush().expect("flushing ack");
    }
}

/// The child's writes are lone groups: each is logged, laid over redb and acknowledged
/// before its redb commit, which runs when the writer is idle; the kill lands anywhere in that.
#[tokio::test]
async fn acknowledged_writes_survive_kill_9() {
    kill_9_loses_no_acknowledged_write(None).await;
}

/// The same with every lone group's redb commit left to the next group: at the kill, the last
/// acknowledged write is in the log and the overlay only. With the default checkpoint spacing,
/// then with a checkpoint after every second group (each starts right after a deferred group
/// was applied, and must hold it).
#[tokio::test]
async fn acknowledged_writes_survive_kill_9_before_their_deferred_commit() {
    kill_9_loses_no_acknowledged_write(Some(Crash::KeepDeferred(log::CHECKPOINT_COMMITS))).await;
    kill_9_loses_no_acknowledged_write(Some(Crash::KeepDeferred(2))).await;
}

/// The same while checkpoints run: one held from the second write to the kill (every later
/// write is only in the log's other region and the overlay), then checkpoints started after
/// every write and held for three (the kill lands at any point of their cycle).
#[tokio::test]
async fn acknowledged_writes_survive_kill_9_during_checkpoints() {
    kill_9_loses_no_acknowledged_write(Some(Crash::Hold(usize::MAX))).await;
    kill_9_loses_no_acknowledged_write(Some(Crash::Hold(3))).await;
}

/// How the crash child's store is tuned.
enum Crash {
    /// Checkpoints held for this many groups.
    Hold(usize),
    /// Deferred lone groups left for the next group; a checkpoint every this many groups.
    KeepDeferred(usize),
}

async fn kill_9_loses_no_acknowledged_write(tuned: Option<Crash>) {
    let dir = temp_dir();
    let exe = std::env::current_exe().expect("locating test binary");
    let mut command = Command::new(exe);
    match tuned {
        Some(Crash::Hold(groups)) => {
            command.env(CRASH_HOLD_ENV, groups.to_string());
        }
        Some(Crash::KeepDeferred(every)) => {
            command.env(CRASH_KEEP_DEFERRED_ENV, every.to_string());
        }
        None => {}
    }
    let mut child = command
        .args([CRASH_CHILD_TEST, "--exact", "--ignored", "--nocapture"])
        .args(["--test-threads", "1"])
        .env(CRASH_DIR_ENV, dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawning crash child");
    let stdout = child.stdout.take().expect("child stdout is piped");
    let mut lines = BufReader::new(stdout).lines();

    let mut acked = 0u64;
    while acked < ACKS_BEFORE_KILL {
        let Some(line) = lines.next() else {
            break;
        };
        if let Some(index) = parse_ack(&line.expect("reading child stdout")) {
            assert_eq!(index, acked, "child acknowledges writes in order");
            acked += 1;
        }
    }
    child.kill().expect("sending SIGKILL to child");
    child.wait().expect("reaping child");
    assert!(
        acked >= ACKS_BEFORE_KILL,
        "child exited after only {acked} acknowledged writes"
    );
    // Acks the child printed before it died are still in the pipe, and count too.
    for line in lines.map_while(std::io::Result::ok) {
        if let Some(index) = parse_ack(&line) {
            acked = acked.max(index + 1);
        }
    }

    let backend = open(dir.path());
    for index in 0..acked {
        assert_eq!(
            backend
                .get(&crash_key(index))
                .await
                .expect("get after crash"),
            Some(crash_value(index)),
            "acknowledged write {index} of {acked} lost"
        );
    }
}

#[cfg(unix)]
#[test]
fn data_directory_and_file_are_private_to_the_server() {
    use std::os::unix::fs::PermissionsExt;
    let parent = temp_dir();
    let dir = parent.path().join("data");
    // A directory made by hand with a lax mode is tightened too.
    std::fs::create_dir(&dir).expect("mkdir");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let backend = open(&dir);
    let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join(DATABASE_FILE)), 0o600);
    let log = dir.join(super::log::LOG_FILE);
    assert_eq!(mode(&log), 0o600);
    drop(backend);
    // A log loosened by hand is tightened at the next open.
    std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    drop(open(&dir));
    assert_eq!(mode(&log), 0o600);
}

/// The checkpoint number a (closed) data directory's database holds.
fn checkpoint_of(dir: &Path) -> u64 {
    use redb::ReadableDatabase;
    let db = Database::open(dir.join(DATABASE_FILE)).expect("opening the database file");
    let txn = db.begin_read().expect("read transaction");
    let table = txn.open_table(LOG_TABLE).expect("log table");
    let seq = table
        .get(CHECKPOINT_KEY)
        .expect("reading")
        .expect("a checkpoint");
    seq.value()
}

/// Appends to `dir`'s commit log, as a crash right after acknowledging it would leave it, the
/// record numbered after the database's checkpoint that puts `key`.
fn log_unreplayed_put(dir: &Path, key: &str) {
    log_unreplayed_puts(dir, &[key]);
}

/// [`log_unreplayed_put`] for each of `keys` in turn, one record each; returns the records'
/// offsets in the log file.
fn log_unreplayed_puts(dir: &Path, keys: &[&str]) -> Vec<usize> {
    log_puts_from(dir, checkpoint_of(dir) + 1, keys)
}

/// Appends to `dir`'s commit log one record per key, numbered from `seq`, each putting its key
/// to "from the log"; returns the records' offsets in the log file.
fn log_puts_from(dir: &Path, seq: u64, keys: &[&str]) -> Vec<usize> {
    let mut log = CommitLog::open(dir).expect("opening the log");
    let mut offsets = Vec::new();
    let mut at = 0;
    for (seq, key) in (seq..).zip(keys) {
        let ops = [Op::Put {
            key: (*key).to_owned(),
            value: b"from the log".to_vec(),
        }];
        let record = log::encode(seq, ops.iter());
        log.append(&record).expect("appending");
        offsets.push(at);
        at += record.len();
    }
    offsets
}

/// A data directory whose database holds `a` = `1`, closed cleanly (nothing left to replay).
async fn closed_database_holding_a() -> tempfile::TempDir {
    let dir = temp_dir();
    let db = open(dir.path());
    db.put("a", b"1".to_vec()).await.expect("put");
    drop(db);
    dir
}

/// Records of another run left in the log, numbered ahead of this run's clock, are not
/// replayed, and the next run numbers its records past them: its own records could otherwise
/// fall among them (a clock running behind) and one run's log would replay another's.
#[tokio::test]
async fn the_next_run_numbers_past_records_of_another_run() {
    let dir = closed_database_holding_a().await;
    let ahead = checkpoint_of(dir.path()) + (1 << 40);
    log_puts_from(dir.path(), ahead, &["foreign"]);

    let db = open(dir.path());
    assert_eq!(db.get("foreign").await.expect("get"), None);
    assert_eq!(db.get("a").await.expect("get"), Some(b"1".to_vec()));
    drop(db);
    assert!(checkpoint_of(dir.path()) > ahead);
}

/// A record that was synced (the one after it is intact) and then damaged on disk stops the
/// open with an error that names it, instead of silently dropping it and every write after
/// it; moving the log aside opens the database at its last checkpoint.
#[tokio::test]
async fn a_record_damaged_after_it_was_synced_stops_the_open() {
    let dir = closed_database_holding_a().await;
    let offsets = log_unreplayed_puts(dir.path(), &["first", "second", "third"]);
    let path = dir.path().join(log::LOG_FILE);
    let mut bytes = std::fs::read(&path).expect("reading the log");
    // The last byte of the second record's value.
    bytes[offsets[2] - 1] ^= 0x01;
    std::fs::write(&path, &bytes).expect("writing the log");

    let Err(error) = EmbeddedBackend::open(dir.path()) else {
        panic!("the damaged log must stop the open");
    };
    let error = error.to_string();
    assert!(
        error.contains(&format!("at byte {}", offsets[1])) && error.contains("is intact"),
        "{error}"
    );
    // Nothing was replayed or checkpointed past the damage: the same error again.
    assert!(EmbeddedBackend::open(dir.path()).is_err());

    std::fs::rename(&path, dir.path().join("bunker.log.damaged")).expect("moving the log aside");
    let db = open(dir.path());
    assert_eq!(db.get("a").await.expect("get"), Some(b"1".to_vec()));
    assert_eq!(db.get("first").await.expect("get"), None);
    drop(db);

    // The same log undamaged replays all three: the error above was the damage's doing.
    let whole = temp_dir();
    drop(open(whole.path()));
    log_unreplayed_puts(whole.path(), &["first", "second", "third"]);
    let db = open(whole.path());
    for key in ["first", "second", "third"] {
        assert_eq!(
            db.get(key).await.expect("get"),
            Some(b"from the log".to_vec())
        );
    }
}

/// Two databases given the same writes, and a log crafted as one of them would have left it.
/// Replayed into its own database; ignored next to the other (a copied or restored file),
/// whose run numbered its records differently.
#[tokio::test]
async fn a_log_is_replayed_only_into_the_database_it_was_written_for() {
    let (own, other) = (temp_dir(), temp_dir());
    for dir in [own.path(), other.path()] {
        let db = open(dir);
        db.put("a", b"1".to_vec()).await.expect("put");
        drop(db);
    }
    log_unreplayed_put(own.path(), "logged");
    std::fs::copy(
        own.path().join(log::LOG_FILE),
        other.path().join(log::LOG_FILE),
    )
    .expect("copying the log");

    let db = open(own.path());
    assert_eq!(
        db.get("logged").await.expect("get"),
        Some(b"from the log".to_vec()),
        "the log's own database replays it"
    );
    let foreign = open(other.path());
    assert_eq!(foreign.get("logged").await.expect("get"), None);
    assert_eq!(foreign.get("a").await.expect("get"), Some(b"1".to_vec()));
    drop((db, foreign));
    // Every open starts a run past the numbers used before.
    let before = checkpoint_of(own.path());
    drop(open(own.path()));
    assert!(checkpoint_of(own.path()) > before);
}
