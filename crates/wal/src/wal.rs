//! The write-ahead log: every committed batch of replicated keys, numbered in commit order.
//!
//! Design:
//! - **Stored in the backend it describes.** Each entry lives at `repl/wal/{index:020}` and is
//!   written by a [`bunker_storage::CommitHook`] in the same transaction as its batch, together
//!   with [`WAL_LAST_KEY`]. A crash can never leave data without its entry or an entry without
//!   its data, and no second file needs its own fsync discipline.
//! - **Commit order, not call order.** The hook runs where the backend decides commit order, so
//!   applying entries in index order on a secondary reproduces the primary's state exactly.
//!   Indices may have gaps (a failed commit attempt), never reorderings.
//! - **Ciphertext only.** Values are barrier ciphertext; the WAL never decrypts them.
//! - **Local keys stay local.** Keys under [`LOCAL_PREFIX`] (the WAL itself, replication state)
//!   are never recorded, so truncating the WAL or saving replication progress does not grow it.
//! - **Secondaries keep the same log.** Applied entries are stored under their primary index,
//!   so a promoted secondary can serve followers from the same history and numbering.
//!
//! Limits: while recording, a batch's replicated ops must fit in one record (at most
//! `MAX_VALUE_BYTES` encoded) and the batch plus its two WAL ops in `MAX_BATCH_OPS`; a batch
//! that does not is rejected by the backend. Deleting pages reads values too, because
//! `Backend::scan` has no key-only form; pages are kept small for that reason.
//!
//! Open one [`Wal`] per backend, once: it installs its recorder as the backend's only hook, and
//! the hook stays installed for the life of the backend.

mod commit_clock;
mod journal;
mod record;
mod recorder;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bunker_storage::{Backend, HookedBackend, Op, StorageError};
use thiserror::Error;
use tokio::sync::{watch, Mutex};

pub use journal::{ChangedKeys, JOURNAL_EPOCH_KEY, JOURNAL_PREFIX};
pub use record::{decode_entry, encode_entry, entry_key, WalEntry, ENTRY_VERSION};

use record::{decode_index, decode_stored, decode_stored_keys, encode_index, parse_entry_key};
use recorder::Recorder;

pub use crate::keys::{is_local, LOCAL_PREFIX, WAL_LAST_KEY, WAL_PREFIX};
/// Present (u64 BE target index) while a [`Wal::reset_to`] is deleting the old history; a reset
/// interrupted by a crash is finished by [`Wal::open`].
pub const WAL_RESET_KEY: &str = "repl/wal-reset";

/// Entries read per scan in [`Wal::read_after`].
pub const READ_PAGE: usize = 16;
/// Entries deleted per batch when truncating or resetting: small enough that a page's commit
/// never stalls the writes queued behind it for long.
const DELETE_PAGE: usize = 256;
/// Journal spans dropped per batch: each is a page of entries, and is read whole to be found.
const JOURNAL_TRIM_PAGE: usize = 16;
/// Bounds of one atomic batch when a secondary applies streamed entries (under the storage
/// layer's 10,000-op batch limit).
const APPLY_GROUP_MAX_OPS: usize = 8_000;
const APPLY_GROUP_MAX_BYTES: usize = 32 * 1024 * 1024;

#[derive(Debug, Error)]
pub enum WalError {
    /// The backend failed; fatal for the operation, the WAL itself is unchanged or consistent.
    #[error("WAL storage failed while {context}: {source}")]
    Storage {
        context: String,
        #[source]
        source: StorageError,
    },
    /// A stored record (named by its key, or "WAL entry" when decoded without one) is damaged.
    #[error("corrupt WAL record {record}: {reason}")]
    Corrupt { record: String, reason: String },
    /// An entry received from the primary is unacceptable; nothing of it was applied.
    #[error("replicated WAL entry {index} rejected: {reason}")]
    InvalidEntry { index: u64, reason: String },
    /// A secondary-only operation was called while this node records its own WAL.
    #[error("cannot {action} while this node records its own WAL (it is a primary)")]
    Recording { action: &'static str },
}

type Result<T> = std::result::Result<T, WalError>;

fn storage(context: impl Into<String>) -> impl FnOnce(StorageError) -> WalError {
    let context = context.into();
    move |source| WalError::Storage { context, source }
}

/// The write-ahead log of one backend.
pub struct Wal {
    backend: Arc<dyn Backend>,
    recorder: Arc<Recorder>,
    /// Serializes the operations that write the WAL themselves (apply, reset, truncate).
    maintenance: Mutex<()>,
    /// A write of the WAL's own (applied entries, a reset) may have committed without its index
    /// being published: set before such a write, cleared once its index is published. A
    /// caller dropped in between (a follower cancelled while its batch was being committed)
    /// leaves it set, and the next operation first reads the position back from storage,
    /// finishing a half-done reset. Otherwise the next apply would start from a stale index
    /// (replaying entries over newer values: a torn store), or a half-done reset, completed at
    /// the next start, would delete the entries applied since and move the index back.
    unsettled: AtomicBool,
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal")
            .field("last_index", &self.last_index())
            .field("recording", &self.recorder.is_recording())
            .finish_non_exhaustive()
    }
}

impl Wal {
    /// Install the recorder hook on `backend` and recover the last index from WAL_LAST_KEY.
    /// Recording starts off. A reset interrupted by a crash is finished first. The Merkle index
    /// (if the backend feeds one) is summed before this returns, unless the store cannot write
    /// (then it is summed later, by [`crate::merkle::MerkleIndex::build`]).
    pub async fn open(hooked: Arc<dyn HookedBackend>) -> Result<Arc<Wal>> {
        Wal::open_with(hooked, true).await
    }

    /// As [`Wal::open`], but the Merkle index is only marked as being summed: the caller runs
    /// [`crate::merkle::MerkleIndex::build`] (a server, in the background, so that it serves
    /// while it sums).
    pub async fn open_deferred(hooked: Arc<dyn HookedBackend>) -> Result<Arc<Wal>> {
        Wal::open_with(hooked, false).await
    }

    async fn open_with(hooked: Arc<dyn HookedBackend>, sum_now: bool) -> Result<Arc<Wal>> {
        let backend: Arc<dyn Backend> = hooked.clone();
        if let Some(target) = read_index(backend.as_ref(), WAL_RESET_KEY).await? {
            tracing::warn!(wal_index = target, "finishing an interrupted WAL reset");
            finish_reset(backend.as_ref(), target).await?;
        }
        let last_index = read_index(backend.as_ref(), WAL_LAST_KEY)
            .await?
            .unwrap_or(0);
        let index = hooked
            .feeds_indexes()
            .then(|| Arc::new(crate::merkle::MerkleIndex::new()));
        // The summing starts before the hook is installed, so every commit the index sees
        // belongs to it.
        if let Some(index) = &index {
            index.start_build();
        }
        let recorder = Arc::new(Recorder::new(last_index, index.clone()));
        hooked.set_commit_hook(Some(recorder.clone()));
        if let Some(index) = index.as_ref().filter(|_| sum_now) {
            // Summing needs commits: a store that cannot write now (a full disk) still opens;
            // trees are then scanned until the summing is run again (replication's refresher).
            if let Err(error) = index.build(backend.as_ref()).await {
                tracing::warn!(%error, "the Merkle index could not be summed; trees are scanned until it is");
            }
        }
        tracing::info!(wal_index = last_index, "WAL opened");
        Ok(Arc::new(Wal {
            backend,
            recorder,
            maintenance: Mutex::new(()),
            unsettled: AtomicBool::new(false),
        }))
    }

    /// Read the last index from storage again: another node of an HA cluster may have written
    /// the WAL since this one opened it. Recording is left as it was.
    pub async fn reload(&self) -> Result<()> {
        let _maintenance = self.maintenance.lock().await;
        // A batch of an apply whose caller was dropped (a stopped follower) may still be in
        // the storage writer's queue: read the position after it, not before.
        self.backend
            .drain()
            .await
            .map_err(storage("waiting for queued writes"))?;
        if let Some(target) = read_index(self.backend.as_ref(), WAL_RESET_KEY).await? {
            tracing::warn!(wal_index = target, "finishing an interrupted WAL reset");
            finish_reset(self.backend.as_ref(), target).await?;
        }
        self.unsettled.store(false, Ordering::SeqCst);
        let last_index = read_index(self.backend.as_ref(), WAL_LAST_KEY)
            .await?
            .unwrap_or(0);
        self.recorder.reset_to(last_index);
        tracing::info!(wal_index = last_index, "WAL reloaded");
        Ok(())
    }

    /// The maintenance lock, with a reset that an earlier caller left unfinished completed first
    /// (and its index published).
    async fn maintenance(&self) -> Result<tokio::sync::MutexGuard<'_, ()>> {
        let guard = self.maintenance.lock().await;
        if self.unsettled.load(Ordering::SeqCst) {
            self.settle().await?;
        }
        Ok(guard)
    }

    /// The last index, read back from storage first if a write of the WAL's own may have
    /// committed unpublished (see `unsettled`): what a follower reports as its position.
    pub async fn settled_index(&self) -> Result<u64> {
        let _maintenance = self.maintenance().await?;
        Ok(self.last_index())
    }

    /// Read the position back from storage (finishing a reset left half-done) and publish it.
    /// The caller holds the maintenance lock.
    async fn settle(&self) -> Result<()> {
        // The write that left the WAL unsettled may still be queued (see `reload`).
        self.backend
            .drain()
            .await
            .map_err(storage("waiting for queued writes"))?;
        if let Some(target) = read_index(self.backend.as_ref(), WAL_RESET_KEY).await? {
            tracing::warn!(wal_index = target, "finishing an interrupted WAL reset");
            finish_reset(self.backend.as_ref(), target).await?;
        }
        let last = read_index(self.backend.as_ref(), WAL_LAST_KEY)
            .await?
            .unwrap_or(0);
        self.recorder.assign_at_least(last);
        self.recorder.publish(last);
        self.unsettled.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// Primary records; secondary/disabled doesn't.
    pub fn set_recording(&self, on: bool) {
        self.recorder.set_recording(on);
    }

    pub fn is_recording(&self) -> bool {
        self.recorder.is_recording()
    }

    /// Continue numbering from the current last index (after promotion) — recording on.
    pub fn promote(&self) {
        self.recorder.assign_at_least(self.last_index());
        self.recorder.set_recording(true);
    }

    /// Last committed index (0 = none).
    /// The Merkle index kept by every commit, if the backend feeds one.
    pub fn merkle_index(&self) -> Option<&crate::merkle::MerkleIndex> {
        self.recorder.index.as_deref()
    }

    pub fn last_index(&self) -> u64 {
        self.recorder.committed()
    }

    /// When the commit holding entry `index` became durable on this node, if it is among the
    /// last few thousand commits this process recorded (`commit_clock.rs`).
    pub fn committed_at(&self, index: u64) -> Option<std::time::Instant> {
        self.recorder.clock.committed_at(index)
    }

    /// For a committed entry `index`: [`Wal::committed_at`] if known, else the latest its
    /// commit can have been, so its age is at least that (`commit_clock.rs`).
    pub fn committed_by(&self, index: u64) -> Option<std::time::Instant> {
        self.recorder.clock.committed_by(index)
    }

    /// Bumped after each commit with new entries (and after applies and resets).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.recorder.subscribe()
    }

    /// Entries with index > `after`, in order: at most `limit`, and at most `max_bytes` of
    /// encoded records, except that the first entry is returned whatever its size, so one large
    /// entry cannot stall a follower. Indices may have gaps; use [`Wal::oldest_index`] to tell
    /// whether `after` is still covered.
    pub async fn read_after(
        &self,
        after: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<WalEntry>> {
        let mut entries = Vec::new();
        let mut bytes = 0usize;
        let mut cursor = entry_key(after);
        while entries.len() < limit {
            let page = (limit - entries.len()).min(READ_PAGE);
            let rows = self
                .backend
                .scan(WAL_PREFIX, Some(&cursor), page)
                .await
                .map_err(storage(format!("reading WAL entries after {cursor}")))?;
            let full = rows.len() == page;
            for (key, value) in rows {
                let grown = bytes.saturating_add(value.len());
                if !entries.is_empty() && grown > max_bytes {
                    return Ok(entries);
                }
                entries.push(decode_stored(&key, &value)?);
                bytes = grown;
                cursor = key;
            }
            if !full {
                break;
            }
        }
        Ok(entries)
    }

    /// Index of the oldest stored entry, if any.
    pub async fn oldest_index(&self) -> Result<Option<u64>> {
        let first = self
            .backend
            .scan(WAL_PREFIX, None, 1)
            .await
            .map_err(storage("reading the oldest WAL entry"))?;
        first
            .first()
            .map(|(key, _)| parse_entry_key(key))
            .transpose()
    }

    /// Delete entries older than (last_index - keep) in bounded batches, keeping the newest
    /// `keep` indices, and move their keys to the key journal (`journal.rs`), which keeps the
    /// newest `journal_keep` indices (0: no journal). Returns the number of WAL entries deleted.
    pub async fn truncate(&self, keep: u64, journal_keep: u64) -> Result<u64> {
        // The maintenance lock is taken per page, not for the whole truncation: a secondary
        // applying streamed entries waits for at most one page's commit, never for all of them.
        let backend = self.backend.as_ref();
        let mut deleted = 0u64;
        let mut cutoff;
        loop {
            let _maintenance = self.maintenance().await?;
            cutoff = self.last_index().saturating_sub(keep);
            let epoch = journal::epoch(backend).await?;
            let journaling = if journal_keep > keep {
                Journaling::Into {
                    epoch,
                    reach_cutoff: self.last_index().saturating_sub(journal_keep),
                }
            } else if journal::oldest(backend, epoch).await?.is_some() {
                // Entries deleted without their keys would leave a hole in the journal's
                // history: the same batch starts a new epoch, disowning it.
                Journaling::Disown
            } else {
                Journaling::Off
            };
            let (count, more) = delete_page_through(backend, cutoff, journaling).await?;
            deleted += count;
            if !more {
                break;
            }
        }
        let mut dropped = 0u64;
        loop {
            let _maintenance = self.maintenance().await?;
            let epoch = journal::epoch(backend).await?;
            let journal_cutoff = self.last_index().saturating_sub(journal_keep.max(keep));
            let (count, more) =
                journal::delete_page(backend, epoch, journal_cutoff, JOURNAL_TRIM_PAGE).await?;
            dropped += count;
            if !more {
                break;
            }
        }
        if deleted > 0 || dropped > 0 {
            tracing::debug!(wal_index = cutoff, deleted, dropped, "WAL truncated");
        }
        Ok(deleted)
    }

    /// Every key written after `after` through the last index, from the key journal and the
    /// WAL, with that last index: what a secondary at `after` must fetch to catch up. `None`
    /// when the history after `after` is not all here (truncated from the journal too, or of
    /// another epoch) or holds more than `max_keys` keys or `max_bytes` bytes of keys.
    ///
    /// Takes no lock, so it holds up neither truncation nor a secondary's applies, and it is
    /// right even when another process truncates (an HA node that just lost its lock): the WAL
    /// is read first, then the journal. Truncation moves entries from the WAL to the journal in
    /// one batch, oldest first, so an entry moved between the two reads is found in the
    /// journal; what the reads cannot see is an entry dropped from the journal's old end or a
    /// new epoch (a reset, entries deleted without their keys), and both are checked after.
    pub async fn changed_keys_after(
        &self,
        after: u64,
        max_keys: usize,
        max_bytes: usize,
    ) -> Result<Option<(ChangedKeys, u64)>> {
        let backend = self.backend.as_ref();
        let last = self.last_index();
        let mut changed = ChangedKeys::default();
        if after > last {
            return Ok(None);
        }
        if after == last {
            return Ok(Some((changed, last)));
        }
        let epoch = journal::epoch(backend).await?;
        let mut position = after;
        loop {
            let entries = self.read_after(position, READ_PAGE, usize::MAX).await?;
            let Some(newest) = entries.last().map(|e| e.index) else {
                break;
            };
            for entry in entries.into_iter().take_while(|e| e.index <= last) {
                let keys = entry.ops.into_iter().map(|op| match op {
                    Op::Put { key, .. } | Op::Delete { key } => key,
                });
                if !changed.add(keys, max_keys, max_bytes) {
                    return Ok(None);
                }
            }
            if newest >= last {
                break;
            }
            position = newest;
        }
        let bound = (max_keys, max_bytes);
        if !journal::collect(backend, epoch, after, last, &mut changed, bound).await? {
            return Ok(None);
        }
        // Whole if nothing after `after` left the journal (it drops its oldest first) and no
        // epoch began; with an empty journal, the WAL alone must reach back to `after`.
        if journal::epoch(backend).await? != epoch {
            return Ok(None);
        }
        let oldest = match journal::oldest(backend, epoch).await? {
            Some(oldest) => Some(oldest),
            None => self.oldest_index().await?,
        };
        if oldest.is_none_or(|oldest| oldest > after + 1) {
            return Ok(None);
        }
        Ok(Some((changed, last)))
    }

    /// Secondary side: apply entries IN ORDER, each atomically: its ops + its own record at
    /// repl/wal/{index} + WAL_LAST_KEY (so a promoted secondary can serve the same history).
    /// Entries with index <= last_index() are skipped (idempotent resume). Returns the encoded
    /// bytes of the entries applied.
    ///
    /// Entries must have strictly increasing indices and no local keys; the first offending
    /// entry fails with [`WalError::InvalidEntry`], after the entries before it were applied.
    pub async fn apply_replicated(&self, entries: &[WalEntry]) -> Result<usize> {
        let _maintenance = self.maintenance().await?;
        if self.recorder.is_recording() {
            return Err(WalError::Recording {
                action: "apply replicated WAL entries",
            });
        }
        // Check every entry before applying any.
        let mut previous: Option<u64> = None;
        for entry in entries {
            check_replicated(entry, previous)?;
            previous = Some(entry.index);
        }
        let last = self.last_index();
        let fresh: Vec<&WalEntry> = entries.iter().filter(|e| e.index > last).collect();
        // Consecutive entries share one atomic batch (one fsync): applying them one commit at
        // a time capped a secondary at the disk's fsync rate. Each group is bounded in ops and
        // bytes; each still commits its entries with their records and the new last index.
        let mut applied_bytes = 0usize;
        let mut group: Vec<Op> = Vec::new();
        let mut group_bytes = 0usize;
        let mut group_last: Option<u64> = None;
        for entry in fresh {
            let record = encode_entry(entry);
            let entry_bytes = record.len();
            if group_last.is_some()
                && (group.len() + entry.ops.len() + 2 > APPLY_GROUP_MAX_OPS
                    || group_bytes + entry_bytes > APPLY_GROUP_MAX_BYTES)
            {
                self.commit_group(std::mem::take(&mut group), group_last)
                    .await?;
                group_bytes = 0;
            }
            group.extend(entry.ops.iter().cloned());
            group.push(Op::Put {
                key: entry_key(entry.index),
                value: record,
            });
            group_bytes += entry_bytes;
            applied_bytes = applied_bytes.saturating_add(entry_bytes);
            group_last = Some(entry.index);
        }
        self.commit_group(group, group_last).await?;
        Ok(applied_bytes)
    }

    /// Commit a group of applied entries together with the new last index.
    async fn commit_group(&self, mut ops: Vec<Op>, last: Option<u64>) -> Result<()> {
        let Some(index) = last else {
            return Ok(());
        };
        ops.push(Op::Put {
            key: WAL_LAST_KEY.to_owned(),
            value: encode_index(index),
        });
        let context = format!("applying replicated WAL entries up to {index}");
        self.commit_wal_batch(ops, index, context).await
    }

    /// After a Merkle sync to primary position `index`: set last index (WAL_LAST_KEY) without
    /// entries, and delete any local WAL entries (they belong to an old history).
    ///
    /// Crash-safe: the target is first saved at [`WAL_RESET_KEY`], and [`Wal::open`] finishes a
    /// reset that was interrupted.
    pub async fn reset_to(&self, index: u64) -> Result<()> {
        let _maintenance = self.maintenance().await?;
        if self.recorder.is_recording() {
            return Err(WalError::Recording {
                action: "reset the WAL",
            });
        }
        self.unsettled.store(true, Ordering::SeqCst);
        // The marker starts a new journal epoch in the same batch: while the reset deletes the
        // old entries page by page, no catch-up reads the old history across its holes.
        let next_epoch = journal::next_epoch_op(self.backend.as_ref()).await?;
        self.backend
            .batch(vec![
                Op::Put {
                    key: WAL_RESET_KEY.to_owned(),
                    value: encode_index(index),
                },
                next_epoch,
            ])
            .await
            .map_err(storage(format!("starting WAL reset to {index}")))?;
        if let Err(error) = finish_reset(self.backend.as_ref(), index).await {
            self.resync_assigned().await;
            return Err(error);
        }
        self.recorder.publish(index);
        self.unsettled.store(false, Ordering::SeqCst);
        tracing::info!(wal_index = index, "WAL reset");
        Ok(())
    }

    /// After a staged sync: commit everything it fetched and replayed (`ops`, replicated keys
    /// only) and the new position `index` in **one** batch, so the store moves from its last
    /// consistent point to the next with nothing torn in between, however many keys it holds
    /// (beyond a batch's 10,000 ops: one transaction all the same). The old history's entries
    /// are then deleted as by [`Wal::reset_to`] (crash-safe the same way: the reset marker
    /// commits with the data).
    pub async fn commit_staged(&self, mut ops: Vec<Op>, index: u64) -> Result<()> {
        let _maintenance = self.maintenance().await?;
        if self.recorder.is_recording() {
            return Err(WalError::Recording {
                action: "commit a staged sync",
            });
        }
        if let Some(op) = ops.iter().find(|op| is_local(op.key())) {
            return Err(WalError::InvalidEntry {
                index,
                reason: format!("a staged sync writes the local key {:?}", op.key()),
            });
        }
        ops.push(Op::Put {
            key: WAL_RESET_KEY.to_owned(),
            value: encode_index(index),
        });
        // As in `reset_to`: the old history's journal is disowned with the marker.
        ops.push(journal::next_epoch_op(self.backend.as_ref()).await?);
        self.unsettled.store(true, Ordering::SeqCst);
        // Unbounded: a stage is bounded by its bytes, and ten thousand missed KV v2 writes
        // already stage twenty thousand keys. Nothing records it (a secondary does not record).
        self.backend
            .batch_unbounded(ops)
            .await
            .map_err(storage(format!("committing a staged sync at {index}")))?;
        if let Err(error) = finish_reset(self.backend.as_ref(), index).await {
            self.resync_assigned().await;
            return Err(error);
        }
        self.recorder.publish(index);
        self.unsettled.store(false, Ordering::SeqCst);
        tracing::info!(wal_index = index, "staged sync committed");
        Ok(())
    }

    /// Commits a batch that writes [`WAL_LAST_KEY`] = `index` itself, then publishes `index`.
    async fn commit_wal_batch(&self, ops: Vec<Op>, index: u64, context: String) -> Result<()> {
        self.unsettled.store(true, Ordering::SeqCst);
        if let Err(source) = self.backend.batch(ops).await {
            self.resync_assigned().await;
            return Err(WalError::Storage { context, source });
        }
        self.recorder.publish(index);
        self.unsettled.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// After a failed WAL write, whose index the recorder may have adopted without it being
    /// committed: never hand out an index at or below the one in storage.
    async fn resync_assigned(&self) {
        match read_index(self.backend.as_ref(), WAL_LAST_KEY).await {
            Ok(stored) => self.recorder.assign_at_least(stored.unwrap_or(0)),
            Err(error) => tracing::error!(%error, "re-reading the WAL's last index"),
        }
    }
}

/// Checks an entry received from the primary before any of it is applied.
pub fn check_replicated(entry: &WalEntry, previous: Option<u64>) -> Result<()> {
    let invalid = |reason: String| WalError::InvalidEntry {
        index: entry.index,
        reason,
    };
    if entry.index == 0 {
        return Err(invalid("index 0 is never assigned".into()));
    }
    if let Some(previous) = previous {
        if entry.index <= previous {
            return Err(invalid(format!("out of order after entry {previous}")));
        }
    }
    if let Some(op) = entry.ops.iter().find(|op| is_local(op.key())) {
        return Err(invalid(format!(
            "writes the cluster-local key {:?}",
            op.key()
        )));
    }
    Ok(())
}

/// Reads an index stored at `key`.
async fn read_index(backend: &dyn Backend, key: &str) -> Result<Option<u64>> {
    let value = backend
        .get(key)
        .await
        .map_err(storage(format!("reading {key}")))?;
    value.map(|bytes| decode_index(key, &bytes)).transpose()
}

/// Deletes every entry, then sets the last index to `index` and clears the reset marker in one
/// batch. Idempotent, so it can be rerun after a crash.
async fn finish_reset(backend: &dyn Backend, index: u64) -> Result<()> {
    // The journal of the history being replaced was disowned by the batch that wrote the
    // reset marker (a new epoch), before any entry was deleted.
    delete_entries_through(backend, u64::MAX).await?;
    backend
        .batch(vec![
            Op::Put {
                key: WAL_LAST_KEY.to_owned(),
                value: encode_index(index),
            },
            Op::Delete {
                key: WAL_RESET_KEY.to_owned(),
            },
        ])
        .await
        .map_err(storage(format!("setting the WAL's last index to {index}")))
}

/// Deletes entries with index <= `cutoff`, oldest first, [`DELETE_PAGE`] per batch. Returns
/// how many were deleted.
async fn delete_entries_through(backend: &dyn Backend, cutoff: u64) -> Result<u64> {
    let mut deleted = 0u64;
    loop {
        let (count, more) = delete_page_through(backend, cutoff, Journaling::Off).await?;
        deleted += count;
        if !more {
            return Ok(deleted);
        }
    }
}

/// The oldest `page` rows under `prefix` if the oldest of them is `due` for deletion, else
/// none. A truncation pass runs every 50 ms and, once it caught up (always, on an idle server),
/// finds nothing due: it looks at one row, not a page of them (`Backend::scan` reads values too,
/// and journal spans are large).
pub(super) async fn oldest_page_if_due(
    backend: &dyn Backend,
    prefix: &str,
    page: usize,
    due: impl Fn(&str) -> Result<bool>,
) -> Result<Vec<(String, Vec<u8>)>> {
    let oldest = backend
        .scan(prefix, None, 1)
        .await
        .map_err(storage(format!("reading the oldest row of {prefix}")))?;
    match oldest.first() {
        Some((key, _)) if due(key)? => backend
            .scan(prefix, None, page)
            .await
            .map_err(storage(format!("scanning {prefix} for rows to delete"))),
        _ => Ok(Vec::new()),
    }
}

/// What deleting WAL entries does to the key journal.
#[derive(Clone, Copy)]
enum Journaling {
    /// Nothing (no journal, or a reset, which starts a new epoch itself).
    Off,
    /// Their keys go to the journal of `epoch`, in the same batch, as spans (`journal.rs`);
    /// entries at or below `reach_cutoff` are past the journal's reach and get spans of
    /// their own, which trimming drops whole.
    Into { epoch: u64, reach_cutoff: u64 },
    /// The batch starts a new epoch (the journal is off but still holds entries).
    Disown,
}

/// Deletes the oldest entries up to `cutoff`, at most [`DELETE_PAGE`] in one batch, and does
/// `journaling` in the same batch. Returns how many were deleted, and whether more may remain.
async fn delete_page_through(
    backend: &dyn Backend,
    cutoff: u64,
    mut journaling: Journaling,
) -> Result<(u64, bool)> {
    let rows = oldest_page_if_due(backend, WAL_PREFIX, DELETE_PAGE, |key| {
        Ok(parse_entry_key(key)? <= cutoff)
    })
    .await?;
    let page_full = rows.len() == DELETE_PAGE;
    let mut deletes = Vec::with_capacity(rows.len() + 1);
    let mut spans = match journaling {
        Journaling::Into {
            epoch,
            reach_cutoff,
        } => Some(journal::SpanWriter::new(epoch, reach_cutoff)),
        Journaling::Off | Journaling::Disown => None,
    };
    let mut count = 0usize;
    for (key, value) in rows {
        let index = parse_entry_key(&key)?;
        if index > cutoff {
            break;
        }
        if let Some(writer) = spans.as_mut() {
            // The keys only: the journal needs nothing else, and the values are most of it.
            match decode_stored_keys(&key, &value) {
                Ok(keys) => writer.add(index, keys),
                // A record whose keys cannot be read leaves a hole in the journal: this batch
                // disowns it instead (failing would stop truncation for good).
                Err(error) => {
                    tracing::warn!(%error, "a WAL record being truncated is damaged: starting a new key journal epoch");
                    journaling = Journaling::Disown;
                    spans = None;
                }
            }
        }
        deletes.push(Op::Delete { key });
        count += 1;
    }
    if count == 0 {
        return Ok((0, false));
    }
    match (journaling, spans) {
        (Journaling::Disown, _) => deletes.push(journal::next_epoch_op(backend).await?),
        (_, Some(writer)) => deletes.extend(writer.finish()),
        (_, None) => {}
    }
    backend
        .batch(deletes)
        .await
        .map_err(storage(format!("deleting WAL entries through {cutoff}")))?;
    Ok((count as u64, count == DELETE_PAGE && page_full))
}

#[cfg(test)]
mod tests;
