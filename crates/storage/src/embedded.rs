//! The durable default backend: a redb file, `<dir>/bunker.redb`, holding one table of
//! `&str -> &[u8]`, and its commit log `<dir>/bunker.log` (`log.rs`). The two make up the
//! database: copy the directory, not the file, and only while the server is stopped.
//!
//! Reads open a redb read transaction directly in the async fn: they are MVCC snapshots that
//! never wait for the writer, and a B-tree lookup is fast enough not to need a blocking pool.
//! While a checkpoint runs, the groups committed meanwhile are laid over that snapshot, and so
//! is a lone group until the writer is idle (`embedded/overlay.rs`, `embedded/writer.rs`).
//!
//! Writes go through a single writer thread that group-commits (see `group_commit.rs`):
//! `batch()` queues its ops on a bounded channel and waits for the reply, which arrives only
//! after the group holding them is durable: appended to the commit log and synced (`log.rs`),
//! or committed by redb with `Durability::Immediate`. So an acknowledged batch survives a
//! crash, and concurrent batches share fsyncs. Checkpoints run beside the writer
//! (`embedded/writer.rs`).
//!
//! A [`crate::CommitHook`] installed with `set_commit_hook` runs on the writer thread, in commit
//! order (see `writer.rs`).
//!
//! Dropping the backend closes the channel; the writer finishes what is queued, exits, and is
//! joined before the database is closed.

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use redb::{Database, ReadableTable, TableDefinition};

use crate::group_commit::Writer;
use crate::hook::apply_indexed;
use crate::limits::validate_key;
use crate::listing::{list_children, scan_prefix};
use crate::snapshot::PageBuilder;
use crate::{
    Backend, CommitHook, Op, Result, SnapshotPage, SnapshotSink, StorageError, StorageMetrics,
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
    /// The overlay readers lay over redb (while a checkpoint runs, or a lone group's redb
    /// commit waits).
    shared: Arc<Shared>,
    /// Syncs of checkpoints run beside the writer (the writer counts its own).
    checkpoint_syncs: Arc<AtomicU64>,
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
        Self::open_tuned(dir, cache_bytes, Tuning::default())
    }

    /// For tests of what runs on the store: a checkpoint starts after every group commit, and
    /// each is held open until `groups` more groups were committed during it (or the writer
    /// cannot go on without it), so writes meet running checkpoints all the time.
    #[cfg(any(test, feature = "testing"))]
    pub fn open_holding_checkpoints(dir: &Path, groups: usize) -> Result<Self> {
        let tuning = Tuning {
            checkpoint_commits: 1,
            hold: Some(writer::Hold::for_groups(groups)),
            fail_checkpoints: false,
            ..Tuning::default()
        };
        Self::open_tuned(dir, DEFAULT_CACHE_BYTES, tuning)
    }

    fn open_tuned(dir: &Path, cache_bytes: usize, tuning: Tuning) -> Result<Self> {
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
        let shared = Arc::new(Shared::default());
        let checkpoint_syncs = Arc::new(AtomicU64::new(0));
        let store = RedbStore::new(
            db.clone(),
            shared.clone(),
            log,
            seq,
            checkpoint_syncs.clone(),
            tuning,
        )?;
        let writer = Writer::spawn_inline(store, "bunker-writer")?;
        Ok(Self {
            db,
            shared,
            checkpoint_syncs,
            path,
            writer,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What a read sees: redb's latest commit, with the overlay that goes with it.
    fn view(&self) -> Result<Arc<View>> {
        self.shared.view(&self.db)
    }

    /// One key from the current view ([`Backend::get`] and [`Backend::get_now`]).
    fn read_now(&self, key: &str) -> Result<Option<Vec<u8>>> {
        validate_key(key)?;
        self.view()?.get(key)
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
        self.read_now(key)
    }

    fn get_now(&self, key: &str) -> Option<Result<Option<Vec<u8>>>> {
        Some(self.read_now(key))
    }

    /// If the returned future is dropped after the batch was queued, the batch is still
    /// committed; only the acknowledgement is lost.
    async fn batch(&self, ops: Vec<Op>) -> Result<()> {
        self.writer.submit(ops).await
    }

    async fn drain(&self) -> Result<()> {
        self.writer.drain().await
    }

    async fn batch_unbounded(&self, ops: Vec<Op>) -> Result<()> {
        self.writer.submit_unbounded(ops, None).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let view = self.view()?;
        let context = format!("listing {prefix:?}");
        list_children(prefix, |start| {
            let range = view.range(Bound::Included(start), |_| (), &context)?;
            Ok(range.map(|entry| entry.map(|(key, ())| key)))
        })
    }

    async fn scan(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>> {
        let view = self.view()?;
        let context = format!("scanning {prefix:?}");
        scan_prefix(prefix, after, limit, |start| {
            view.range(start, <[u8]>::to_vec, &context)
        })
    }

    /// One view for the whole snapshot (redb's MVCC snapshot, and the overlay that went with
    /// it: writers go on, the pages they free are kept until it ends); each page is read by a
    /// fresh range from after the last key, so no iterator is held across the sink's awaits.
    async fn snapshot(&self, sink: &mut dyn SnapshotSink) -> Result<()> {
        let entries = self.view()?;
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

    /// A group commit syncs once (its log record, or redb's commit when it is too large for the
    /// log), and so does each checkpoint run beside the writer.
    fn metrics(&self) -> StorageMetrics {
        let mut metrics = self.writer.counters.snapshot();
        metrics.fsyncs += self.checkpoint_syncs.load(Ordering::Relaxed);
        metrics
    }
}

/// The next snapshot page of `view`: keys strictly after `after`.
fn read_page(view: &View, after: Option<&str>) -> Result<SnapshotPage> {
    let start = match after {
        Some(key) => Bound::Excluded(key),
        None => Bound::Unbounded,
    };
    let mut pages = PageBuilder::default();
    for entry in view.range(start, <[u8]>::to_vec, "reading a snapshot page")? {
        let (key, value) = entry?;
        if let Some(page) = pages.push(key, value) {
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
    let (records, highest) = log.replay(checkpoint_seq)?;
    let last = records.last().map_or(checkpoint_seq, |&(seq, _)| seq);
    // Past the records of another run left in the log too, whatever the clock says.
    let base = run_base(highest);
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
mod overlay;
#[cfg(test)]
mod tests;
mod writer;

use log::CommitLog;
use overlay::{Shared, View};
use writer::{checkpoint, RedbStore, RedbTable, Tuning};
