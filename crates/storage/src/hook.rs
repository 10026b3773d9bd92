//! Commit hooks: let a layer beside the barrier add ops to every batch, in commit order.
//!
//! Replication needs a write-ahead log whose order is exactly the order in which batches become
//! visible, and whose records are committed atomically with the data they describe. Numbering
//! batches in `batch()` would not give that: two callers can number their batches 1 and 2 and
//! then be committed as 2, 1. So the backend itself asks the hook for extra ops at the single
//! point where commit order is decided (the group-commit writer thread, or the in-memory write
//! lock), and commits them in the same transaction.
//!
//! Extra ops go through the same limits as a caller's ops: the batch together with its extra
//! ops must be a valid batch (see [`crate::limits`]), otherwise the caller's batch is rejected
//! whole. A hook that wants to veto a batch can therefore return an invalid op.

use std::ops::Bound;
use std::sync::{Arc, PoisonError, RwLock};

use crate::limits::validate_batch;
use crate::{Op, Result, StorageError};

/// Called by a backend for every batch it commits, in commit order.
///
/// Both methods run on the backend's write path (the writer thread, or under the in-memory
/// backend's write lock): they must be quick and must never call back into the backend.
pub trait CommitHook: Send + Sync + 'static {
    /// Extra ops to commit atomically with `ops` (e.g. a WAL record). Called in commit order,
    /// exactly once per committed batch attempt, on the writer side.
    ///
    /// A batch attempt can still fail after this was called (a failed transaction, or extra ops
    /// that break the batch limits); the hook is then called again for the batch's retry, if
    /// any. So the values a hook hands out may have gaps, but never go back in commit order.
    fn extra_ops(&self, ops: &[Op]) -> Vec<Op>;

    /// Called after a commit containing batches that got extra ops is durable.
    fn after_commit(&self);

    /// What the batch whose extra ops are `extra` is stamped with, handed back to the task
    /// that wrote it once durable ([`crate::stamp`]): replication's WAL index of its entry.
    fn stamp(&self, _extra: &[Op]) -> Option<u64> {
        None
    }

    /// An index the backend keeps in each commit's own transaction, if the hook has one and
    /// the backend can feed it ([`crate::HookedBackend::feeds_indexes`]).
    fn index(&self) -> Option<Arc<dyn CommitIndex>> {
        None
    }

    /// Another hook replaced this one: it sees no commit from now on.
    fn retired(&self) {}
}

/// An index kept inside the transaction it describes, from each write's value before and
/// after it (replication's Merkle index: a cell sum changes by `+ new - old`).
///
/// For every commit the backend calls [`CommitIndex::begin`], feeds the update every write of a
/// watched key in commit order with the value it replaces (as seen inside the transaction, so
/// an earlier batch of the same group counts), then shows it the entries it asks to see as the
/// transaction leaves them. Only a durable commit calls [`IndexUpdate::committed`]; an update
/// dropped without it was not committed. An index writes nothing to the store.
pub trait CommitIndex: Send + Sync + 'static {
    /// Whether writes of `key` are fed to the index.
    fn watches(&self, key: &str) -> bool;
    /// The update of one transaction. Updates never overlap: a backend runs one at a time, in
    /// commit order.
    fn begin(&self) -> Box<dyn IndexUpdate>;
}

/// A range of keys: its lower and upper bound.
pub type KeyRange = (Bound<String>, Bound<String>);

/// One transaction's update of a [`CommitIndex`].
pub trait IndexUpdate: Send {
    /// A write of a watched key, in commit order: `old` is the value it replaces, `new` the
    /// value written (`None`: absent, deleted).
    fn change(&mut self, key: &str, old: Option<&[u8]>, new: Option<&[u8]>);
    /// Key ranges whose entries, as the transaction leaves them, the update wants to see
    /// through [`IndexUpdate::scanned`], in this order; none (the default): no scan.
    fn scan_ranges(&self) -> Vec<KeyRange> {
        Vec::new()
    }
    /// One entry in one of [`IndexUpdate::scan_ranges`], in key order within its range.
    /// Returns whether to go on: false ends the scan (a summing in steps bounds what each
    /// commit reads).
    fn scanned(&mut self, _key: &str, _value: &[u8]) -> bool {
        true
    }
    /// The transaction is durable.
    fn committed(self: Box<Self>);
}

/// The installed hook of a backend, shared with its writer.
#[derive(Default)]
pub(crate) struct HookSlot(RwLock<Option<Arc<dyn CommitHook>>>);

impl HookSlot {
    /// The hook installed now. Callers keep the returned `Arc` for a whole commit, so a commit
    /// sees one hook from `extra_ops` to `after_commit` even if it is replaced meanwhile.
    pub(crate) fn get(&self) -> Option<Arc<dyn CommitHook>> {
        // Nothing panics while holding this lock, so a poisoned slot is still consistent.
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn set(&self, hook: Option<Arc<dyn CommitHook>>) {
        let old = std::mem::replace(
            &mut *self.0.write().unwrap_or_else(PoisonError::into_inner),
            hook,
        );
        if let Some(old) = old {
            old.retired();
        }
    }
}

impl std::fmt::Debug for HookSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let installed = self.get().is_some();
        f.debug_struct("HookSlot")
            .field("installed", &installed)
            .finish()
    }
}

/// Asks `hook` for the extra ops of `ops` and checks them like a caller's batch: each key and
/// value within limits, and `ops` plus the extra ops at most `limit`. `limit` bounds `ops` with its extra ops ([`crate::limits::MAX_BATCH_OPS`] for a batch, `usize::MAX` for an
/// unbounded one, whose extra ops still form a valid batch on their own).
pub(crate) fn checked_extra_ops_within(
    hook: &dyn CommitHook,
    ops: &[Op],
    limit: usize,
) -> Result<Vec<Op>> {
    let extra = hook.extra_ops(ops);
    if limit == usize::MAX && !extra.is_empty() {
        // An unbounded batch (a restore) cannot be recorded: a WAL entry of that size could
        // not be streamed. Replication stops recording around a restore; if it records now,
        // refuse rather than commit a record that breaks the log.
        return Err(StorageError::InvalidArgument(
            "a batch this large cannot be recorded in the replication log (a DR primary \
             restores only inside its restore window)"
                .into(),
        ));
    }
    validate_batch(&extra)?;
    let total = ops.len().saturating_add(extra.len());
    if total > limit {
        return Err(StorageError::BatchTooLarge { ops: total, limit });
    }
    Ok(extra)
}

/// What a write hands the value it replaces to, when someone wants it (`None`: nobody does,
/// and a table need not look it up).
pub(crate) type Replaced<'r> = Option<&'r mut dyn FnMut(Option<&[u8]>)>;

/// A transaction's table as [`apply_indexed`] uses it: writes that hand over the value they
/// replace, and a scan that sees the transaction's own writes.
pub(crate) trait TxnTable {
    fn put(&mut self, key: &str, value: &[u8], replaced: Replaced<'_>) -> Result<()>;
    fn delete(&mut self, key: &str, replaced: Replaced<'_>) -> Result<()>;
    /// Every entry in `range`, in key order, as the transaction leaves them, until `visit`
    /// returns false.
    fn for_each(
        &mut self,
        range: (Bound<&str>, Bound<&str>),
        visit: &mut dyn FnMut(&str, &[u8]) -> bool,
    ) -> Result<()>;
}

/// Whether `range` is one `BTreeMap::range` accepts (it panics on a start past the end, and on
/// a start equal to an excluded end); a range that is not holds no keys.
pub(crate) fn is_valid_range((start, end): (Bound<&str>, Bound<&str>)) -> bool {
    match (start, end) {
        (Bound::Included(a), Bound::Included(b)) => a <= b,
        (Bound::Included(a) | Bound::Excluded(a), Bound::Excluded(b))
        | (Bound::Excluded(a), Bound::Included(b)) => a < b,
        _ => true,
    }
}

/// Applies `ops` to `table` in order, feeding `index` (if any) each watched write, then the
/// entries it asks to see. Returns the update, to be told once the transaction is durable.
pub(crate) fn apply_indexed<'a>(
    table: &mut impl TxnTable,
    ops: impl Iterator<Item = &'a Op>,
    index: Option<&dyn CommitIndex>,
) -> Result<Option<Box<dyn IndexUpdate>>> {
    let Some(index) = index else {
        for op in ops {
            match op {
                Op::Put { key, value } => table.put(key, value, None)?,
                Op::Delete { key } => table.delete(key, None)?,
            }
        }
        return Ok(None);
    };
    let mut update = index.begin();
    for op in ops {
        let key = op.key();
        let watched = index.watches(key);
        match op {
            Op::Put { key, value } if watched => table.put(
                key,
                value,
                Some(&mut |old| update.change(key, old, Some(value))),
            )?,
            Op::Delete { key } if watched => table.delete(
                key,
                Some(&mut |old| {
                    if old.is_some() {
                        update.change(key, old, None);
                    }
                }),
            )?,
            Op::Put { key, value } => table.put(key, value, None)?,
            Op::Delete { key } => table.delete(key, None)?,
        }
    }
    let mut more = true;
    for (from, to) in update.scan_ranges() {
        if !more {
            break;
        }
        let range = (
            from.as_ref().map(String::as_str),
            to.as_ref().map(String::as_str),
        );
        table.for_each(range, &mut |key, value| {
            more = update.scanned(key, value);
            more
        })?;
    }
    Ok(Some(update))
}

#[cfg(test)]
mod tests;
