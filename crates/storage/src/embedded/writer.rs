//! The writer's side of the embedded store: each group commit logged (`log.rs`) and applied to
//! redb, and checkpoints that do not hold the writer.
//!
//! A group is normally applied in a redb write transaction, appended to the commit log and
//! synced, and committed without a sync. Every few groups a *checkpoint* starts: the checkpoint
//! thread commits an otherwise empty redb transaction durably (redb writes and syncs every
//! page dirtied since the last one), numbered as the last record logged. Until it ends the
//! writer cannot open a write transaction, so it logs the next groups into the log's other
//! region and lays them over redb for readers (`overlay.rs`); the first group after the
//! checkpoint ends applies the overlay to redb. Each group's commit index update is computed
//! and committed as it is logged, against redb and the overlay, so hooks, replies and the
//! replication sender see what they see with every other commit (`docs/checkpoint-design.md`).
//!
//! **A lone group's redb commit is deferred until the writer is idle.** A group of one request
//! (no other writer waiting: one client, or a lull) is logged and synced, laid over redb for
//! readers exactly as a group during a checkpoint is, and acknowledged; its redb transaction
//! is committed when the writer next finds its queue empty ([`GroupStore::idle`]), or before
//! the next group if one came first. A lone write's acknowledgement then waits for its inserts
//! into the overlay, not for redb's B-tree inserts and non-durable commit (about a tenth of a
//! lone write's time on the reference VM, `bench/README.md`), which happen while the client
//! reads its answer. Larger groups are busy periods: they are committed to redb as before.
//! Design reason: the checkpoint's overlay already lays logged groups over redb with one
//! point in time for readers; a deferred group is an overlay of one group with no checkpoint.
//!
//! The writer waits for a running checkpoint only when a group does not fit the log's region
//! or the overlay's bound, or the log is broken. A checkpoint or an overlay application that
//! fails stops the store taking writes until a restart (what redb holds is unknown; the log
//! still holds every acknowledged group, and the overlay keeps them readable), as PostgreSQL
//! stops on a failed fsync.

use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Instant;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, WriteTransaction};

use super::log::{self, CommitLog};
use super::overlay::{Entries, Overlay, OverlayTable, Shared, OVERLAY_BYTES};
use super::{engine, engine_error, CHECKPOINT_KEY, ENTRIES, LOG_TABLE};
use crate::group_commit::GroupStore;
use crate::hook::{apply_indexed, Replaced, TxnTable};
use crate::timed::{Timed, SLOW_BACKGROUND, SLOW_WRITE_PATH};
use crate::{CommitIndex, Op, Result, StorageError};

/// How long a group commit took, by kind (`docs/monitoring.md`): one made durable by its
/// commit-log record, or by redb itself (a checkpoint, on the checkpoint thread or, for a
/// group too large for the log, on the writer). And how long the writer waited for a running
/// checkpoint (only when it could not go on without it).
const LOGGED_METRIC: &str = "bunker_storage_commit_logged";
const CHECKPOINT_METRIC: &str = "bunker_storage_commit_checkpoint";
const WAIT_METRIC: &str = "bunker_storage_checkpoint_wait";
/// Parts of a logged group commit (`docs/monitoring.md`): its B-tree inserts and commit-index
/// updates before the record is written, and the record's write and sync alone (the rest of
/// `LOGGED_METRIC` is redb's non-durable commit).
const APPLY_METRIC: &str = "bunker_storage_commit_apply";
const APPEND_METRIC: &str = "bunker_storage_log_append";
/// A deferred lone group's redb commit (`docs/monitoring.md`), when the writer is idle or
/// before the next group.
const DEFERRED_METRIC: &str = "bunker_storage_deferred_apply";

/// The checkpoint thread's name; at most 15 bytes, the kernel's limit, so `top -H` and `ps -L`
/// tell it from the writer (`bunker-writer`, `embedded.rs`).
const CHECKPOINT_THREAD: &str = "bunker-checkpt";

/// What tests change about the writer.
#[derive(Debug, Clone)]
pub(crate) struct Tuning {
    /// A checkpoint starts after this many logged group commits.
    pub(crate) checkpoint_commits: usize,
    /// Test-only: keeps each checkpoint from committing until released ([`Hold`]).
    pub(crate) hold: Option<Arc<Hold>>,
    /// Test-only: checkpoints fail (after opening their transaction) instead of committing.
    pub(crate) fail_checkpoints: bool,
    /// A lone group's redb commit waits for the writer to be idle (module documentation).
    pub(crate) defer_lone_groups: bool,
    /// Test-only: an idle writer leaves a deferred group laid over redb; the next group
    /// applies it, so tests see reads served from it.
    pub(crate) keep_deferred_when_idle: bool,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            checkpoint_commits: log::CHECKPOINT_COMMITS,
            hold: None,
            fail_checkpoints: false,
            defer_lone_groups: true,
            keep_deferred_when_idle: false,
        }
    }
}

/// Test-only: holds each checkpoint open (its write transaction begun, so redb's one writer is
/// taken: a writer that tried to open another would hang the test) until the writer has logged
/// `groups` groups during it, or must wait for it; the group after those waits for it to end,
/// so checkpoints end at known points. The suites are sequential and fast: without it their
/// writes would rarely meet a running checkpoint.
#[derive(Debug)]
pub(crate) struct Hold {
    groups: usize,
    released: Mutex<bool>,
    changed: Condvar,
}

impl Hold {
    #[cfg(any(test, feature = "testing"))]
    pub(crate) fn for_groups(groups: usize) -> Arc<Hold> {
        Arc::new(Hold {
            groups,
            released: Mutex::new(true),
            changed: Condvar::new(),
        })
    }

    fn set(&self, released: bool) {
        *self.released.lock().unwrap_or_else(PoisonError::into_inner) = released;
        self.changed.notify_all();
    }

    fn wait(&self) {
        let mut released = self.released.lock().unwrap_or_else(PoisonError::into_inner);
        while !*released {
            released = self
                .changed
                .wait(released)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// The writer's side of the database.
pub(super) struct RedbStore {
    db: Arc<Database>,
    shared: Arc<Shared>,
    /// Only the committer locks it (the writer thread, or a caller committing inline while
    /// holding the writer's store: `group_commit.rs`).
    state: Mutex<LogState>,
}

struct LogState {
    log: CommitLog,
    /// The number of the last record appended or checkpointed.
    seq: u64,
    last_checkpoint: Instant,
    /// Groups logged into the current region of the log.
    logged: usize,
    /// The buffer records are made in.
    record: Vec<u8>,
    checkpointer: Checkpointer,
    running: Option<Running>,
    /// Why the store takes no more writes: a checkpoint or an overlay application failed.
    poisoned: Option<String>,
    /// A lone group logged and laid over redb, its redb commit deferred (module
    /// documentation). Never while a checkpoint runs.
    deferred: Option<Arc<Overlay>>,
    tuning: Tuning,
}

/// Largest lone group (its log record's bytes) whose redb commit is deferred: its overlay is
/// built for it alone, so this bounds the memory and the copy.
const DEFERRED_MAX_BYTES: usize = 64 << 10;

/// A checkpoint on the checkpoint thread.
struct Running {
    /// The redb state it makes durable, which the groups committed meanwhile are laid over.
    base: Entries,
    /// Those groups' net effect, as published.
    overlay: Arc<Overlay>,
    /// How many there were.
    groups: usize,
}

impl RedbStore {
    pub(super) fn new(
        db: Arc<Database>,
        shared: Arc<Shared>,
        log: CommitLog,
        seq: u64,
        syncs: Arc<AtomicU64>,
        tuning: Tuning,
    ) -> Result<RedbStore> {
        let checkpointer = Checkpointer::spawn(db.clone(), &tuning, syncs)?;
        Ok(RedbStore {
            db,
            shared,
            state: Mutex::new(LogState {
                log,
                seq,
                last_checkpoint: Instant::now(),
                logged: 0,
                record: Vec::new(),
                checkpointer,
                running: None,
                poisoned: None,
                deferred: None,
                tuning,
            }),
        })
    }

    /// Starts the checkpoint of every record so far on the checkpoint thread; the next records
    /// go to the other region of the log.
    fn start_checkpoint(&self, state: &mut LogState) -> Result<()> {
        let base = self
            .db
            .begin_read()
            .map_err(engine("starting read transaction"))?
            .open_table(ENTRIES)
            .map_err(engine("opening entries table for reading"))?;
        if let Some(hold) = &state.tuning.hold {
            hold.set(false);
        }
        if let Err(error) = state.checkpointer.start(state.seq) {
            if let Some(hold) = &state.tuning.hold {
                hold.set(true);
            }
            return Err(error);
        }
        state.running = Some(Running {
            base,
            overlay: Arc::default(),
            groups: 0,
        });
        state.log.switch();
        state.logged = 0;
        state.last_checkpoint = Instant::now();
        Ok(())
    }

    /// If a checkpoint is running and has ended (or, with `wait`, once it ends), applies the
    /// overlay to redb. A failure of either poisons the store.
    fn finish_checkpoint(&self, state: &mut LogState, wait: bool) -> Result<()> {
        let Some(running) = &state.running else {
            return Ok(());
        };
        let outcome = if wait {
            if let Some(hold) = &state.tuning.hold {
                hold.set(true);
            }
            let _timed = Timed::warn_after(WAIT_METRIC, SLOW_WRITE_PATH);
            state.checkpointer.wait()
        } else {
            match state.checkpointer.try_wait() {
                Some(outcome) => outcome,
                None => return Ok(()),
            }
        };
        let applied = outcome.and_then(|()| self.apply_overlay(&running.overlay));
        if let Err(error) = &applied {
            state.poisoned = Some(error.to_string());
        } else {
            state.running = None;
        }
        applied
    }

    /// Puts the overlay's entries in redb (not durably: the log holds them until the next
    /// checkpoint) and empties it, with no reader in between.
    fn apply_overlay(&self, overlay: &Overlay) -> Result<()> {
        if overlay.is_empty() {
            return Ok(());
        }
        let txn = self.overlay_transaction(overlay)?;
        self.shared
            .clear_after(|| txn.commit().map_err(engine("applying the overlay")))
    }

    /// Puts a deferred group's overlay in redb (not durably) and stops laying it over redb.
    /// Unlike a checkpoint's, the commit does not hold readers off: until the overlay is
    /// emptied (after the commit) it holds the group, and from then redb does, so a reader
    /// pairs redb with or without the group with the overlay holding it, the same values
    /// either way, or redb with it with the empty overlay (`Shared::clear_once_applied`).
    fn apply_deferred_overlay(&self, overlay: &Overlay) -> Result<()> {
        self.overlay_transaction(overlay)?
            .commit()
            .map_err(engine("applying a deferred group"))?;
        self.shared.clear_once_applied();
        Ok(())
    }

    /// A write transaction holding the overlay's entries, to be committed without a sync.
    fn overlay_transaction(&self, overlay: &Overlay) -> Result<WriteTransaction> {
        let mut txn = self
            .db
            .begin_write()
            .map_err(engine("starting write transaction"))?;
        {
            let mut table = txn
                .open_table(ENTRIES)
                .map_err(engine("opening entries table for writing"))?;
            for (key, value) in overlay.entries() {
                match value {
                    Some(value) => table.insert(key, value).map(drop),
                    None => table.remove(key).map(drop),
                }
                .map_err(|e| engine_error(format!("applying key {key:?}"), e))?;
            }
        }
        txn.set_durability(Durability::None)
            .map_err(engine("setting commit durability"))?;
        Ok(txn)
    }

    /// A group while a checkpoint runs: logged, and laid over redb for readers.
    fn commit_overlaid(
        &self,
        state: &mut LogState,
        batches: &[&[Op]],
        index: Option<&dyn CommitIndex>,
    ) -> Result<()> {
        // Out of the state while the group is logged (which needs the rest of it), and back
        // whatever the outcome.
        let Some(mut running) = state.running.take() else {
            return Err(engine_error(
                "committing into the overlay".into(),
                "no checkpoint is running",
            ));
        };
        let work = Overlay::clone(&running.overlay);
        let (work, update) = match log_over(state, &running.base, work, batches, index) {
            Ok(logged) => logged,
            Err(error) => {
                state.running = Some(running);
                return Err(error);
            }
        };
        self.shared.publish(work.clone());
        state.logged += 1;
        running.overlay = work;
        running.groups += 1;
        if let Some(hold) = &state.tuning.hold {
            if running.groups >= hold.groups {
                hold.set(true);
            }
        }
        state.running = Some(running);
        if let Some(update) = update {
            update.committed();
        }
        Ok(())
    }

    /// Whether a group (`lone`: of one request, never a caller's inline commit) whose record
    /// is `len` bytes has its redb commit wait for the writer to be idle. Asked only with no
    /// checkpoint running and nothing deferred (`commit_group`).
    fn defers(state: &LogState, lone: bool, len: usize) -> bool {
        state.tuning.defer_lone_groups
            && lone
            && len <= DEFERRED_MAX_BYTES
            && !state.log.is_broken()
            && state.log.fits(len)
    }

    /// A lone group: applied into an overlay of its own over redb's latest state, logged and
    /// synced, and laid over redb for readers; its redb commit waits ([`RedbStore::apply_deferred`]).
    fn commit_deferred(
        &self,
        state: &mut LogState,
        batches: &[&[Op]],
        index: Option<&dyn CommitIndex>,
    ) -> Result<()> {
        debug_assert!(state.running.is_none() && state.deferred.is_none());
        let base = self
            .db
            .begin_read()
            .map_err(engine("starting read transaction"))?
            .open_table(ENTRIES)
            .map_err(engine("opening entries table for reading"))?;
        let (work, update) = log_over(state, &base, Overlay::default(), batches, index)?;
        drop(base);
        self.shared.lay_over(work.clone());
        state.logged += 1;
        state.deferred = Some(work);
        if let Some(update) = update {
            update.committed();
        }
        Ok(())
    }

    /// Commits the deferred group, if any, to redb (not durably: the log holds it until the
    /// next checkpoint) and stops laying it over redb. A failure poisons the store; the group
    /// stays laid over redb, so readers still see it, and the log still holds it.
    /// `slow_after`: its warning threshold, the write path's when a group waits for it, the
    /// background's when the writer is idle.
    fn apply_deferred(&self, state: &mut LogState, slow_after: std::time::Duration) -> Result<()> {
        let Some(overlay) = state.deferred.take() else {
            return Ok(());
        };
        let _timed = Timed::warn_after(DEFERRED_METRIC, slow_after);
        let applied = self.apply_deferred_overlay(&overlay);
        if let Err(error) = &applied {
            state.poisoned = Some(error.to_string());
        }
        applied
    }

    /// A group with no checkpoint running: applied in a redb write transaction, and logged, or
    /// (too large for the log, or the log is broken) committed durably by redb itself. `len`
    /// is the length of its log record.
    fn commit_direct(
        &self,
        state: &mut LogState,
        batches: &[&[Op]],
        index: Option<&dyn CommitIndex>,
        len: usize,
    ) -> Result<()> {
        let ops = || batches.iter().flat_map(|batch| batch.iter());
        let applying = Timed::warn_after(APPLY_METRIC, SLOW_WRITE_PATH);
        let mut txn = self
            .db
            .begin_write()
            .map_err(engine("starting write transaction"))?;
        let update = {
            let mut table = RedbTable(
                txn.open_table(ENTRIES)
                    .map_err(engine("opening entries table for writing"))?,
            );
            apply_indexed(&mut table, ops(), index)?
        };
        drop(applying);
        let seq = next_seq(state.seq)?;
        let checkpointed = !state.log.fits(len) || state.log.is_broken();
        // Either way the group's writers wait for it.
        let timed = Timed::warn_after(
            if checkpointed {
                CHECKPOINT_METRIC
            } else {
                LOGGED_METRIC
            },
            SLOW_WRITE_PATH,
        );
        let committed = if checkpointed {
            checkpoint(txn, seq)
        } else {
            append(state, seq, batches).and_then(|()| {
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
}

/// A group laid over redb, logged: its overlay and its index update, to commit once published.
type Logged = (Arc<Overlay>, Option<Box<dyn crate::hook::IndexUpdate>>);

/// Applies `batches` into `work` (an overlay over `base`), with the index's updates computed
/// against both, then logs and syncs their record: a group laid over redb (a checkpoint's, or a
/// deferred lone one), not yet published. The record's number is spent whatever the outcome
/// (see `commit_direct`); a failed append marked the log broken.
fn log_over(
    state: &mut LogState,
    base: &Entries,
    mut work: Overlay,
    batches: &[&[Op]],
    index: Option<&dyn CommitIndex>,
) -> Result<Logged> {
    let applying = Timed::warn_after(APPLY_METRIC, SLOW_WRITE_PATH);
    let update = apply_indexed(
        &mut OverlayTable {
            base,
            work: &mut work,
        },
        batches.iter().flat_map(|batch| batch.iter()),
        index,
    )?;
    drop(applying);
    let seq = next_seq(state.seq)?;
    let timed = Timed::warn_after(LOGGED_METRIC, SLOW_WRITE_PATH);
    let appended = append(state, seq, batches);
    drop(timed);
    state.seq = seq;
    appended?;
    Ok((Arc::new(work), update))
}

/// The number after `seq`. Only a damaged checkpoint number runs out: refuse rather than wrap
/// to reused numbers.
fn next_seq(seq: u64) -> Result<u64> {
    seq.checked_add(1).ok_or_else(|| {
        engine_error(
            "numbering a commit-log record".into(),
            "record numbers exhausted",
        )
    })
}

/// Appends the record of `batches`, numbered `seq`, to the log and syncs it. A failure marks
/// the log broken (the record may be there, whole or not).
fn append(state: &mut LogState, seq: u64, batches: &[&[Op]]) -> Result<()> {
    let mut record = std::mem::take(&mut state.record);
    log::encode_into(
        &mut record,
        seq,
        batches.iter().flat_map(|batch| batch.iter()),
    );
    let timed = Timed::warn_after(APPEND_METRIC, SLOW_WRITE_PATH);
    let appended = state.log.append(&record);
    drop(timed);
    // Kept for the next record, unless a rare large group grew it.
    record.shrink_to(log::KEPT_RECORD_BYTES);
    state.record = record;
    appended
}

impl GroupStore for RedbStore {
    /// Whatever the outcome, reads after it take a new view (`overlay.rs`).
    fn commit(&self, batches: &[&[Op]], index: Option<&dyn CommitIndex>) -> Result<()> {
        let outcome = self.commit_group(batches, false, index);
        self.shared.changed();
        outcome
    }

    fn commit_lone(&self, batches: &[&[Op]], index: Option<&dyn CommitIndex>) -> Result<()> {
        let outcome = self.commit_group(batches, true, index);
        self.shared.changed();
        outcome
    }

    fn idle(&self) {
        self.apply_when_idle();
    }

    /// The writer is stopping: make what the log holds durable in redb, so a clean stop leaves
    /// nothing to replay, and let go of the readers' shared view.
    fn close(&self) {
        self.close_log();
        self.shared.changed();
    }
}

impl RedbStore {
    fn commit_group(
        &self,
        batches: &[&[Op]],
        lone: bool,
        index: Option<&dyn CommitIndex>,
    ) -> Result<()> {
        let mut guard = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let state = &mut *guard;
        if let Some(reason) = &state.poisoned {
            return Err(poisoned(reason));
        }
        // The next group came before the writer was idle: the deferred one goes to redb
        // first, so no checkpoint starts without it and groups stay in commit order.
        self.apply_deferred(state, SLOW_WRITE_PATH)?;
        self.finish_checkpoint(state, false)?;
        let len = log::encoded_len(batches.iter().flat_map(|batch| batch.iter()));
        let due = state.logged >= state.tuning.checkpoint_commits
            || state.last_checkpoint.elapsed() >= log::CHECKPOINT_INTERVAL
            || !state.log.fits(len);
        // A group too large for any region is made durable by redb itself, on the writer:
        // starting a checkpoint first would only add a second durable commit to wait for.
        if state.running.is_none()
            && state.logged > 0
            && !state.log.is_broken()
            && CommitLog::fits_a_region(len)
            && due
        {
            self.start_checkpoint(state)?;
        }
        if let Some(running) = &state.running {
            let held_long_enough =
                (state.tuning.hold.as_ref()).is_some_and(|hold| running.groups >= hold.groups);
            if !held_long_enough
                && !state.log.is_broken()
                && state.log.fits(len)
                && running.overlay.bytes().saturating_add(len) <= OVERLAY_BYTES
            {
                return self.commit_overlaid(state, batches, index);
            }
            self.finish_checkpoint(state, true)?;
        }
        if Self::defers(state, lone, len) {
            return self.commit_deferred(state, batches, index);
        }
        self.commit_direct(state, batches, index, len)
    }

    /// The writer found its queue empty: a deferred group goes to redb now.
    fn apply_when_idle(&self) {
        let mut guard = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let state = &mut *guard;
        if state.deferred.is_none() || state.tuning.keep_deferred_when_idle {
            return;
        }
        if state.poisoned.is_some() {
            return;
        }
        if let Err(error) = self.apply_deferred(state, SLOW_BACKGROUND) {
            tracing::error!(%error, "applying a logged write to the database failed; the store takes no more writes until a restart");
        }
        drop(guard);
        // Later reads take a view of redb without the overlay (the old one stays consistent).
        self.shared.changed();
    }

    fn close_log(&self) {
        let mut guard = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let state = &mut *guard;
        let finished = match &state.poisoned {
            Some(reason) => Err(poisoned(reason)),
            None => self
                .apply_deferred(state, SLOW_WRITE_PATH)
                .and_then(|()| self.finish_checkpoint(state, true)),
        };
        let done = finished.and_then(|()| {
            if state.logged == 0 && !state.log.is_broken() {
                return Ok(());
            }
            self.db
                .begin_write()
                .map_err(engine("starting the closing checkpoint"))
                .and_then(|txn| checkpoint(txn, state.seq))
        });
        if let Err(error) = done {
            tracing::warn!(%error, "closing checkpoint failed; the next start replays the commit log");
        }
    }
}

fn poisoned(reason: &str) -> StorageError {
    engine_error(
        "writing".into(),
        format!("the store takes no writes until it is restarted: {reason}"),
    )
}

/// The checkpoint thread: commits one checkpoint at a time, numbered as asked.
struct Checkpointer {
    start: Option<mpsc::Sender<u64>>,
    done: mpsc::Receiver<Result<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    fn spawn(db: Arc<Database>, tuning: &Tuning, syncs: Arc<AtomicU64>) -> Result<Checkpointer> {
        let (start, started) = mpsc::channel::<u64>();
        let (report, done) = mpsc::channel();
        let (hold, fail) = (tuning.hold.clone(), tuning.fail_checkpoints);
        let thread = std::thread::Builder::new()
            .name(CHECKPOINT_THREAD.into())
            .spawn(move || {
                for seq in started {
                    let timed = Timed::warn_after(CHECKPOINT_METRIC, SLOW_BACKGROUND);
                    let outcome = db
                        .begin_write()
                        .map_err(engine("starting a checkpoint"))
                        .and_then(|txn| {
                            if let Some(hold) = &hold {
                                hold.wait();
                            }
                            if fail {
                                return Err(engine_error(
                                    "committing a checkpoint".into(),
                                    "injected failure",
                                ));
                            }
                            checkpoint(txn, seq)
                        });
                    drop(timed);
                    if outcome.is_ok() {
                        syncs.fetch_add(1, Ordering::Relaxed);
                    }
                    if report.send(outcome).is_err() {
                        return;
                    }
                }
            })
            .map_err(|source| StorageError::Io {
                context: "starting the checkpoint thread".into(),
                source,
            })?;
        Ok(Checkpointer {
            start: Some(start),
            done,
            thread: Some(thread),
        })
    }

    fn start(&self, seq: u64) -> Result<()> {
        self.start
            .as_ref()
            .and_then(|start| start.send(seq).ok())
            .ok_or_else(gone)
    }

    fn wait(&self) -> Result<()> {
        self.done.recv().unwrap_or_else(|_| Err(gone()))
    }

    fn try_wait(&self) -> Option<Result<()>> {
        match self.done.try_recv() {
            Ok(outcome) => Some(outcome),
            Err(mpsc::TryRecvError::Empty) => None,
            Err(mpsc::TryRecvError::Disconnected) => Some(Err(gone())),
        }
    }
}

fn gone() -> StorageError {
    engine_error("checkpointing".into(), "the checkpoint thread has stopped")
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        drop(self.start.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Commits `txn` durably (redb's one-sync commit) as the checkpoint of log record `seq`: every
/// record up to it is in redb. Not with redb's quick repair (a faster open after a crash): it
/// adds a second sync to every durable commit.
pub(super) fn checkpoint(mut txn: WriteTransaction, seq: u64) -> Result<()> {
    txn.set_durability(Durability::Immediate)
        .map_err(engine("setting commit durability"))?;
    txn.open_table(LOG_TABLE)
        .map_err(engine("opening the log table"))?
        .insert(CHECKPOINT_KEY, seq)
        .map_err(engine("recording the checkpoint"))?;
    txn.commit().map_err(engine("committing a checkpoint"))
}

/// The writer's open table; what a write replaces is read from the same B-tree operation.
pub(super) struct RedbTable<'txn>(pub(super) redb::Table<'txn, &'static str, &'static [u8]>);

impl TxnTable for RedbTable<'_> {
    fn put(&mut self, key: &str, value: &[u8], replaced: Replaced<'_>) -> Result<()> {
        let old = self
            .0
            .insert(key, value)
            .map_err(|e| engine_error(format!("writing key {key:?}"), e))?;
        if let Some(replaced) = replaced {
            replaced(old.as_ref().map(|guard| guard.value()));
        }
        Ok(())
    }

    fn delete(&mut self, key: &str, replaced: Replaced<'_>) -> Result<()> {
        let old = self
            .0
            .remove(key)
            .map_err(|e| engine_error(format!("deleting key {key:?}"), e))?;
        if let Some(replaced) = replaced {
            replaced(old.as_ref().map(|guard| guard.value()));
        }
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
