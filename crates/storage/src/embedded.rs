//! The durable default backend: a redb file, `<dir>/bunker.redb`, holding one table of
//! `&str -> &[u8]`, and its commit log `<dir>/bunker.log` (`log.rs`). The two make up the
//! database: copy the directory, not the file, and only while the server is stopped.
//!
//! Reads open a redb read transaction directly in the async fn: they are MVCC snapshots that
//! never wait for the writer, and a B-tree lookup is fast enough not to need a blocking pool.
//!
//! Writes go through a single writer thread that group-commits (see `group_commit.rs`):
//! `batch()` queues its ops on a bounded channel and waits for the reply, which arrives only
//! after the group holding them is durable: appended to the commit log and synced (`log.rs`),
//! or committed by redb with [`Durability::Immediate`] at a checkpoint. So an acknowledged
//! batch survives a crash, and concurrent batches share fsyncs.
//!
//! A [`crate::CommitHook`] installed with `set_commit_hook` runs on the writer thread, in commit
//! order (see `writer.rs`).
//!
//! Dropping the backend closes the channel; the writer finishes what is queued, exits, and is
//! joined before the database is closed.

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use async_trait::async_trait;
use redb::{
    Database, Durability, ReadOnlyTable, ReadableDatabase, ReadableTable, TableDefinition,
    WriteTransaction,
};

use crate::group_commit::{GroupStore, Writer};
use crate::hook::{apply_indexed, TxnTable};
use crate::limits::validate_key;
use crate::listing::{list_children, scan_prefix};
use crate::snapshot::PageBuilder;
use crate::timed::Timed;
use crate::{
    Backend, CommitHook, CommitIndex, Op, Result, SnapshotPage, SnapshotSink, StorageError,
    StorageMetrics,
};

/// File name of the database inside the data directory.
pub(crate) const DATABASE_FILE: &str = "bunker.redb";

const ENTRIES: TableDefinition<&str, &[u8]> = TableDefinition::new("entries");
/// The commit log's number of the last record a durable commit holds (`log.rs`).
const LOG_TABLE: TableDefinition<&str, u64> = TableDefinition::new("log");
const CHECKPOINT_KEY: &str = "checkpoint";

/// Durable ordered key-value store on redb with group commit.
pub struct EmbeddedBackend {
    db: Arc<Database>,
    path: PathBuf,
    /// The group-commit writer thread; dropping the backend waits for it to finish.
    writer: Writer,
}

/// redb's page cache by default. Its own default (1 GiB) made a store of a million secrets hold
/// over a GiB resident; hot paths (tokens, policies, recent secrets) fit comfortably in far
/// less, and the OS page cache still serves the rest. `storage "embedded" { cache_size }`.
pub const DEFAULT_CACHE_BYTES: usize = 256 * 1024 * 1024;

/// The data directory is the server's alone (0700) and the database file too (0600): it holds
/// ciphertext, but also what must work while sealed (the cluster port's TLS keys). Tightened on
/// every open, so a directory created by hand with a laxer umask is fixed too.
#[cfg(unix)]
fn restrict_permissions(dir: &Path, db_file: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let io = |context: String| move |source| StorageError::Io { context, source };
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(io(format!("restricting data directory {}", dir.display())))?;
    open_private(db_file, "database file").map(drop)
}

/// Opens (creating if missing) a file of the data directory, readable by the server alone.
#[cfg(unix)]
fn open_private(path: &Path, what: &str) -> Result<std::fs::File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let io = |context: String| move |source| StorageError::Io { context, source };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(io(format!("opening {what} {}", path.display())))?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(io(format!("restricting {what} {}", path.display())))?;
    Ok(file)
}

#[cfg(not(unix))]
fn restrict_permissions(_dir: &Path, _db_file: &Path) -> Result<()> {
    Ok(())
}

impl EmbeddedBackend {
    /// Opens (creating if missing) `dir` and the database file in it with the default cache,
    /// and starts the writer thread.
    pub fn open(dir: &Path) -> Result<Self> {
        Self::open_with_cache(dir, DEFAULT_CACHE_BYTES)
    }

    /// [`EmbeddedBackend::open`] with a page cache of `cache_bytes`.
    pub fn open_with_cache(dir: &Path, cache_bytes: usize) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|source| StorageError::Io {
            context: format!("creating data directory {}", dir.display()),
            source,
        })?;
        let path = dir.join(DATABASE_FILE);
        restrict_permissions(dir, &path)?;
        let started = std::time::Instant::now();
        // After an unclean stop (kill -9, power loss) redb walks the whole file to check it and
        // rebuild its allocator state before the open returns: seconds at a million keys, with
        // nothing else to show for it. Say so, at each step redb reports (a few per repair).
        let repaired = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reported = repaired.clone();
        let db = redb::Builder::new()
            .set_cache_size(cache_bytes)
            .set_repair_callback(move |session| {
                reported.store(true, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(
                    progress_percent = (session.progress() * 100.0).round(),
                    "repairing the database after an unclean shutdown (it walks the whole file)"
                );
            })
            .create(&path)
            .map_err(|e| engine_error(format!("opening database {}", path.display()), e))?;
        sync_dir(dir)?;
        let mut log = CommitLog::open(dir)?;
        let (seq, replayed) = replay_log(&db, &log)?;
        log.restart();
        tracing::info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            repaired = repaired.load(std::sync::atomic::Ordering::Relaxed),
            replayed_commits = replayed,
            "embedded storage opened"
        );

        let db = Arc::new(db);
        let store = RedbStore {
            db: db.clone(),
            log: Mutex::new(LogState {
                log,
                seq,
                last_checkpoint: Instant::now(),
                logged: 0,
                record: Vec::new(),
            }),
        };
        let writer = Writer::spawn(store, "bunker-storage-writer")?;
        Ok(Self { db, path, writer })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn entries(&self) -> Result<ReadOnlyTable<&'static str, &'static [u8]>> {
        let txn = self
            .db
            .begin_read()
            .map_err(engine("starting read transaction"))?;
        txn.open_table(ENTRIES)
            .map_err(engine("opening entries table for reading"))
    }
}

impl std::fmt::Debug for EmbeddedBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedBackend")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Backend for EmbeddedBackend {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        validate_key(key)?;
        // The table (which holds the read transaction) must outlive the guard: the guard
        // borrows a page of the snapshot, and once the transaction is gone the writer may free
        // and reuse that page (redb's debug builds assert on exactly this).
        let table = self.entries()?;
        let value = table
            .get(key)
            .map_err(|e| engine_error(format!("reading key {key:?}"), e))?
            .map(|guard| guard.value().to_vec());
        drop(table);
        Ok(value)
    }

    /// If the returned future is dropped after the batch was queued, the batch is still
    /// committed; only the acknowledgement is lost.
    async fn batch(&self, ops: Vec<Op>) -> Result<()> {
        self.writer.submit(ops).await
    }

    async fn batch_unbounded(&self, ops: Vec<Op>) -> Result<()> {
        self.writer.submit_unbounded(ops, None).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let entries = self.entries()?;
        list_children(prefix, |start| {
            let range = entries
                .range::<&str>((Bound::Included(start), Bound::Unbounded))
                .map_err(|e| engine_error(format!("listing {prefix:?}"), e))?;
            Ok(range.map(|entry| {
                entry
                    .map(|(key, _)| key.value().to_owned())
                    .map_err(|e| engine_error(format!("listing {prefix:?}"), e))
            }))
        })
    }

    async fn scan(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>> {
        let entries = self.entries()?;
        scan_prefix(prefix, after, limit, |start| {
            let range = entries
                .range::<&str>((start, Bound::Unbounded))
                .map_err(|e| engine_error(format!("scanning {prefix:?}"), e))?;
            Ok(range.map(|entry| {
                entry
                    .map(|(key, value)| (key.value().to_owned(), value.value().to_vec()))
                    .map_err(|e| engine_error(format!("scanning {prefix:?}"), e))
            }))
        })
    }

    /// One read transaction for the whole snapshot (redb's MVCC view: writers go on, the pages
    /// they free are kept until it ends); each page is read by a fresh range from after the
    /// last key, so no iterator is held across the sink's awaits.
    async fn snapshot(&self, sink: &mut dyn SnapshotSink) -> Result<()> {
        let entries = self.entries()?;
        let mut after: Option<String> = None;
        loop {
            let page = read_page(&entries, after.as_deref())?;
            let Some((last, _)) = page.last() else {
                return Ok(());
            };
            after = Some(last.clone());
            sink.page(page).await?;
        }
    }

    /// A group commit syncs once: its log record, or redb's commit at a checkpoint.
    fn metrics(&self) -> StorageMetrics {
        self.writer.counters.snapshot()
    }
}

/// The next snapshot page of `entries`: keys strictly after `after`.
fn read_page(
    entries: &ReadOnlyTable<&'static str, &'static [u8]>,
    after: Option<&str>,
) -> Result<SnapshotPage> {
    let start = match after {
        Some(key) => Bound::Excluded(key),
        None => Bound::Unbounded,
    };
    let range = entries
        .range::<&str>((start, Bound::Unbounded))
        .map_err(engine("reading a snapshot page"))?;
    let mut pages = PageBuilder::default();
    for entry in range {
        let (key, value) = entry.map_err(engine("reading a snapshot page"))?;
        if let Some(page) = pages.push(key.value().to_owned(), value.value().to_vec()) {
            return Ok(page);
        }
    }
    Ok(pages.take())
}

impl crate::HookedBackend for EmbeddedBackend {
    fn set_commit_hook(&self, hook: Option<Arc<dyn CommitHook>>) {
        self.writer.hook.set(hook);
    }

    fn feeds_indexes(&self) -> bool {
        true
    }
}

/// How long a group commit took, by kind (`docs/monitoring.md`): one made durable by its
/// commit-log record, or a checkpoint (redb writes every page dirtied since the last one, and
/// syncs). Checkpoints hold the writer, so they set the tail of write and replication latency.
const LOGGED_METRIC: &str = "bunker_storage_commit_logged";
const CHECKPOINT_METRIC: &str = "bunker_storage_commit_checkpoint";

/// The writer's side of the database.
struct RedbStore {
    db: Arc<Database>,
    /// Only the writer thread locks it.
    log: Mutex<LogState>,
}

struct LogState {
    log: CommitLog,
    /// The number of the last record appended or checkpointed.
    seq: u64,
    last_checkpoint: Instant,
    /// Commits logged since the last checkpoint: redb has not made them durable itself, and
    /// each left pages that the next checkpoint writes.
    logged: usize,
    /// The buffer records are made in.
    record: Vec<u8>,
}

impl GroupStore for RedbStore {
    fn commit(&self, batches: &[&[Op]], index: Option<&dyn CommitIndex>) -> Result<()> {
        let mut state = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        let mut txn = self
            .db
            .begin_write()
            .map_err(engine("starting write transaction"))?;
        let update = {
            let mut table = RedbTable(
                txn.open_table(ENTRIES)
                    .map_err(engine("opening entries table for writing"))?,
            );
            apply_indexed(
                &mut table,
                batches.iter().flat_map(|batch| batch.iter()),
                index,
            )?
        };
        // Only a damaged checkpoint number gets here; refuse rather than wrap to reused numbers.
        let seq = state.seq.checked_add(1).ok_or_else(|| {
            engine_error(
                "numbering a commit-log record".into(),
                "record numbers exhausted",
            )
        })?;
        let ops = || batches.iter().flat_map(|batch| batch.iter());
        let checkpointed = batches.len() > log::MAX_SLICES
            || state.logged >= log::CHECKPOINT_COMMITS
            || state.last_checkpoint.elapsed() >= log::CHECKPOINT_INTERVAL
            || !state.log.fits(log::encoded_len(ops()))
            || state.log.is_broken();
        let timed = Timed::start(if checkpointed {
            CHECKPOINT_METRIC
        } else {
            LOGGED_METRIC
        });
        let committed = if checkpointed {
            checkpoint(txn, seq)
        } else {
            let mut record = std::mem::take(&mut state.record);
            log::encode_into(&mut record, seq, ops());
            let appended = state.log.append(&record);
            // Kept for the next record, unless a rare large group grew it.
            record.shrink_to(log::KEPT_RECORD_BYTES);
            state.record = record;
            appended.and_then(|()| {
                txn.set_durability(Durability::None)
                    .map_err(engine("setting commit durability"))?;
                txn.commit().map_err(engine("committing write transaction"))
            })
        };
        drop(timed);
        // Spent whatever the outcome: a failed commit may still have become durable (redb's
        // documented contract), with record `seq` in the log or `seq` as the checkpoint. So no
        // later record may reuse the number, and the log stops (every later commit is a
        // durable checkpoint past it): a restart never applies a failed group on top of newer
        // ones, nor skips a newer one as already checkpointed.
        state.seq = seq;
        if let Err(error) = committed {
            state.log.mark_broken();
            return Err(error);
        }
        if checkpointed {
            state.log.restart();
            state.last_checkpoint = Instant::now();
            state.logged = 0;
        } else {
            state.logged += 1;
        }
        if let Some(update) = update {
            update.committed();
        }
        Ok(())
    }

    /// The writer is stopping: make what the log holds durable in redb, so a clean stop leaves
    /// nothing to replay.
    fn close(&self) {
        let state = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        if state.logged == 0 && !state.log.is_broken() {
            return;
        }
        let done = self
            .db
            .begin_write()
            .map_err(engine("starting the closing checkpoint"))
            .and_then(|txn| checkpoint(txn, state.seq));
        if let Err(error) = done {
            tracing::warn!(%error, "closing checkpoint failed; the next start replays the commit log");
        }
    }
}

/// Commits `txn` durably (redb's one-sync commit) as the checkpoint of log record `seq`: every
/// record up to it is in redb, and the log starts over. Not with redb's quick repair (a faster
/// open after a crash): it adds a second sync to every durable commit.
fn checkpoint(mut txn: WriteTransaction, seq: u64) -> Result<()> {
    txn.set_durability(Durability::Immediate)
        .map_err(engine("setting commit durability"))?;
    txn.open_table(LOG_TABLE)
        .map_err(engine("opening the log table"))?
        .insert(CHECKPOINT_KEY, seq)
        .map_err(engine("recording the checkpoint"))?;
    txn.commit().map_err(engine("committing a checkpoint"))
}

/// Applies the log's records after the last checkpoint (a crash came first) and starts this
/// run's numbering ([`run_base`]), in the open's one durable commit. Returns the number the run's first
/// record follows and how many records were replayed.
fn replay_log(db: &Database, log: &CommitLog) -> Result<(u64, usize)> {
    // Also creates both tables on a new database, so readers can always open them.
    let txn = db
        .begin_write()
        .map_err(engine("starting write transaction"))?;
    let checkpoint_seq = txn
        .open_table(LOG_TABLE)
        .map_err(engine("opening the log table"))?
        .get(CHECKPOINT_KEY)
        .map_err(engine("reading the checkpoint"))?
        .map_or(0, |guard| guard.value());
    let records = log.replay(checkpoint_seq)?;
    let last = records.last().map_or(checkpoint_seq, |&(seq, _)| seq);
    let base = run_base(last);
    {
        let mut table = RedbTable(
            txn.open_table(ENTRIES)
                .map_err(engine("opening entries table for writing"))?,
        );
        let ops = records.iter().flat_map(|(_, ops)| ops.iter());
        apply_indexed(&mut table, ops, None)?;
    }
    checkpoint(txn, base)?;
    if !records.is_empty() {
        tracing::info!(
            from = checkpoint_seq + 1,
            to = last,
            "replayed the commit log after an unclean stop"
        );
    }
    Ok((base, records.len()))
}

/// Where a run's record numbers start: the clock in nanoseconds, past the last number used.
/// A log replays only records numbered from its database's checkpoint on, so numbers that
/// differ from run to run tie a log to the run of the database it was written for: a log left
/// next to a database file restored from a backup, or copied from another server, holds
/// numbers that database never checkpointed (with numbers counted from zero in every
/// database, two young databases would share them and one would replay the other's writes).
fn run_base(last: u64) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_nanos()).unwrap_or(u64::MAX / 2)
        });
    now.max(last.saturating_add(1))
}

/// The writer's open table; what a write replaces is read from the same B-tree operation.
struct RedbTable<'txn>(redb::Table<'txn, &'static str, &'static [u8]>);

impl TxnTable for RedbTable<'_> {
    fn put(
        &mut self,
        key: &str,
        value: &[u8],
        replaced: &mut dyn FnMut(Option<&[u8]>),
    ) -> Result<()> {
        let old = self
            .0
            .insert(key, value)
            .map_err(|e| engine_error(format!("writing key {key:?}"), e))?;
        replaced(old.as_ref().map(|guard| guard.value()));
        Ok(())
    }

    fn delete(&mut self, key: &str, replaced: &mut dyn FnMut(Option<&[u8]>)) -> Result<()> {
        let old = self
            .0
            .remove(key)
            .map_err(|e| engine_error(format!("deleting key {key:?}"), e))?;
        replaced(old.as_ref().map(|guard| guard.value()));
        Ok(())
    }

    fn for_each(
        &mut self,
        range: (Bound<&str>, Bound<&str>),
        visit: &mut dyn FnMut(&str, &[u8]) -> bool,
    ) -> Result<()> {
        let entries = self
            .0
            .range::<&str>(range)
            .map_err(|e| engine_error("scanning for the commit index".into(), e))?;
        for entry in entries {
            let (key, value) =
                entry.map_err(|e| engine_error("scanning for the commit index".into(), e))?;
            if !visit(key.value(), value.value()) {
                break;
            }
        }
        Ok(())
    }
}

/// Fsyncs the directory so a newly created database file's name survives a crash.
#[cfg(unix)]
fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|handle| handle.sync_all())
        .map_err(|source| StorageError::Io {
            context: format!("syncing data directory {}", dir.display()),
            source,
        })
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> Result<()> {
    Ok(())
}

/// Maps a redb error to [`StorageError::Engine`], saying what was being done.
fn engine<E: std::fmt::Display>(context: &'static str) -> impl FnOnce(E) -> StorageError {
    move |error| engine_error(context.to_owned(), error)
}

fn engine_error(context: String, error: impl std::fmt::Display) -> StorageError {
    StorageError::Engine {
        context,
        message: error.to_string(),
    }
}

mod log;
#[cfg(test)]
mod tests;

use log::CommitLog;
