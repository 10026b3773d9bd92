//! The recorder: the [`CommitHook`] that turns each committed batch into a WAL entry.
//!
//! It runs where the backend decides commit order (the writer thread of the embedded backend),
//! so entry indices follow commit order, and its record is committed in the same transaction as
//! the batch, so the log and the data can never disagree after a crash.
//!
//! Numbering: `assigned` is the last index handed out. It advances in `extra_ops`, before the
//! commit is known to succeed, because several batches of one group commit need consecutive
//! indices. A failed commit therefore leaves a gap, which is harmless: readers follow the keys
//! that exist. `after_commit` runs only after a successful commit and before the writer asks for
//! the next group, so at that moment `assigned` is the highest committed index; that is what it
//! publishes.
//!
//! Batches written by [`super::Wal`] itself (a replicated entry being applied, a reset) already
//! carry their own record and [`WAL_LAST_KEY`]; the recorder never records them again, but
//! adopts their index so numbering continues from there after a promotion.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use bunker_storage::limits::{validate_batch, MAX_BATCH_OPS};
use bunker_storage::{CommitHook, Op};
use tokio::sync::watch;

use super::record::{decode_index, encode_index, encode_parts, entry_key};
use super::{is_local, WAL_LAST_KEY};

pub(super) struct Recorder {
    recording: AtomicBool,
    /// Last index handed out (or adopted from a batch that wrote its own record).
    assigned: Mutex<u64>,
    /// Last committed index, for `last_index()` and subscribers.
    committed: watch::Sender<u64>,
    /// The Merkle index the backend keeps in each commit, if it feeds one.
    pub(super) index: Option<std::sync::Arc<crate::merkle::MerkleIndex>>,
    /// When recent recorded commits became durable.
    pub(super) clock: super::commit_clock::CommitClock,
}

impl Recorder {
    pub(super) fn new(
        last_index: u64,
        index: Option<std::sync::Arc<crate::merkle::MerkleIndex>>,
    ) -> Self {
        Self {
            recording: AtomicBool::new(false),
            assigned: Mutex::new(last_index),
            committed: watch::Sender::new(last_index),
            index,
            clock: super::commit_clock::CommitClock::default(),
        }
    }

    pub(super) fn set_recording(&self, on: bool) {
        self.recording.store(on, Ordering::SeqCst);
    }

    pub(super) fn is_recording(&self) -> bool {
        self.recording.load(Ordering::SeqCst)
    }

    pub(super) fn committed(&self) -> u64 {
        *self.committed.borrow()
    }

    pub(super) fn subscribe(&self) -> watch::Receiver<u64> {
        self.committed.subscribe()
    }

    /// Publishes `index` as the last committed index (it may go down, after a reset).
    pub(super) fn publish(&self, index: u64) {
        self.committed.send_if_modified(|current| {
            let changed = *current != index;
            *current = index;
            changed
        });
    }

    /// Continue from `index` as the last committed and assigned index (a reload from storage).
    pub(super) fn reset_to(&self, index: u64) {
        *self.assigned() = index;
        self.clock.clear();
        self.publish(index);
    }

    /// Makes sure the next index handed out is above `index`. Used after a failed WAL write,
    /// whose adopted index may not have been committed, with the index found in storage.
    pub(super) fn assign_at_least(&self, index: u64) {
        let mut assigned = self.assigned();
        *assigned = (*assigned).max(index);
    }

    fn assigned(&self) -> MutexGuard<'_, u64> {
        // Nothing panics while holding this lock, so a poisoned value is still consistent.
        self.assigned.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The record ops for `replicated` as entry `index`, or why they cannot be made.
    fn record_ops(index: u64, replicated: &[&Op]) -> Result<Vec<Op>, String> {
        let record = encode_parts(index, now_ms(), replicated)?;
        Ok(vec![
            Op::Put {
                key: entry_key(index),
                value: record,
            },
            Op::Put {
                key: WAL_LAST_KEY.to_owned(),
                value: encode_index(index),
            },
        ])
    }
}

impl CommitHook for Recorder {
    fn extra_ops(&self, ops: &[Op]) -> Vec<Op> {
        if let Some(index) = written_last_index(ops) {
            *self.assigned() = index;
            return Vec::new();
        }
        if !self.is_recording() {
            return Vec::new();
        }
        let replicated: Vec<&Op> = ops.iter().filter(|op| !is_local(op.key())).collect();
        if replicated.is_empty() {
            return Vec::new();
        }
        let mut assigned = self.assigned();
        let Some(index) = assigned.checked_add(1) else {
            tracing::error!("WAL index space exhausted; refusing the batch");
            return refuse_batch();
        };
        let extra = match Self::record_ops(index, &replicated) {
            Ok(extra) => extra,
            Err(reason) => {
                tracing::error!(wal_index = index, %reason, "encoding WAL entry failed; refusing the batch");
                return refuse_batch();
            }
        };
        // The backend checks extra ops with these same rules and rejects the batch if they
        // fail; the index is only taken when the batch can commit, so no committed-looking
        // index is published for a rejected batch.
        let fits = validate_batch(&extra).is_ok()
            && ops.len().saturating_add(extra.len()) <= MAX_BATCH_OPS;
        if fits {
            *assigned = index;
        } else {
            tracing::warn!(
                wal_index = index,
                ops = ops.len(),
                "batch too large to record in the WAL; the backend will reject it"
            );
        }
        extra
    }

    /// A recorded batch's entry index, from the [`WAL_LAST_KEY`] op of its record.
    fn stamp(&self, extra: &[Op]) -> Option<u64> {
        written_last_index(extra)
    }

    fn retired(&self) {
        if let Some(index) = &self.index {
            index.retire();
        }
    }

    fn index(&self) -> Option<std::sync::Arc<dyn bunker_storage::CommitIndex>> {
        self.index
            .clone()
            .map(|index| index as std::sync::Arc<dyn bunker_storage::CommitIndex>)
    }

    fn after_commit(&self) {
        let assigned = *self.assigned();
        self.clock.record(assigned, std::time::Instant::now());
        self.publish(assigned);
    }
}

/// The index a batch writes to [`WAL_LAST_KEY`], if it does: such a batch was made by the WAL
/// itself and already holds its own record.
fn written_last_index(ops: &[Op]) -> Option<u64> {
    ops.iter().rev().find_map(|op| match op {
        Op::Put { key, value } if key == WAL_LAST_KEY => decode_index(key, value).ok(),
        _ => None,
    })
}

/// Extra ops no backend accepts (an empty key), so the batch fails instead of committing a
/// replicated write that is missing from the WAL.
fn refuse_batch() -> Vec<Op> {
    vec![Op::Delete { key: String::new() }]
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
