//! In-memory backend for dev mode and tests: a `BTreeMap` behind a `RwLock`.
//!
//! Nothing is durable. The lock is only ever held inside synchronous code, never across an
//! `.await`, and a batch is validated before it is applied, so it applies whole or not at all.
//!
//! The write lock is what orders commits here, so a [`crate::CommitHook`] runs under it: its
//! extra ops are computed, validated and applied with the batch, and `after_commit` follows
//! before the lock is released.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use async_trait::async_trait;

use crate::hook::{apply_indexed, checked_extra_ops_within, HookSlot, Replaced, TxnTable};
use crate::limits::{validate_batch, validate_key, validate_ops, MAX_BATCH_OPS};
use crate::listing::{list_children, scan_prefix};
use crate::snapshot::PageBuilder;
use crate::{Backend, CommitHook, Op, Result, SnapshotSink, StorageMetrics};

/// A volatile, ordered key-value store.
#[derive(Debug, Default)]
pub struct InmemBackend {
    entries: RwLock<BTreeMap<String, Vec<u8>>>,
    batches: AtomicU64,
    ops: AtomicU64,
    hook: HookSlot,
    /// Feeds no commit index (as PostgreSQL): see [`InmemBackend::unindexed`].
    unindexed: bool,
}

impl InmemBackend {
    pub fn new() -> Self {
        Self::default()
    }

    /// A store that feeds no commit index, as PostgreSQL does: a WAL opened on it keeps no
    /// Merkle index (nothing is summed at open). For tests that only need the WAL's recovery.
    pub fn unindexed() -> Self {
        Self {
            unindexed: true,
            ..Self::default()
        }
    }

    /// A copy of this store's entries in a store that feeds no commit index: what a restart
    /// would find, for tests that reopen it without disturbing this one.
    pub fn unindexed_copy(&self) -> Self {
        Self {
            entries: RwLock::new(self.entries()),
            unindexed: true,
            ..Self::default()
        }
    }

    /// A copy of every entry (tests: the store as a restart would find it).
    pub fn entries(&self) -> BTreeMap<String, Vec<u8>> {
        self.read().clone()
    }

    // No code path panics while holding the lock, so a poisoned map is still consistent.
    fn read(&self) -> RwLockReadGuard<'_, BTreeMap<String, Vec<u8>>> {
        self.entries.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies `ops` (already checked) and the hook's extra ops, which may bring the total to
    /// at most `limit`.
    fn commit(&self, ops: Vec<Op>, limit: usize) -> Result<()> {
        if ops.is_empty() {
            return Ok(());
        }
        let mut entries = self.write();
        let hook = self.hook.get();
        let extra = match &hook {
            Some(hook) => checked_extra_ops_within(hook.as_ref(), &ops, limit)?,
            None => Vec::new(),
        };
        let op_count = (ops.len() + extra.len()) as u64;
        let notify = !extra.is_empty();
        let stamp = hook.as_ref().and_then(|hook| hook.stamp(&extra));
        let index = hook
            .as_ref()
            .filter(|_| !self.unindexed)
            .and_then(|hook| hook.index());
        let update = apply_indexed(
            &mut MapTable(&mut entries),
            ops.iter().chain(extra.iter()),
            index.as_deref(),
        )?;
        if let Some(update) = update {
            update.committed();
        }
        if let (Some(hook), true) = (&hook, notify) {
            hook.after_commit();
        }
        drop(entries);
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.ops.fetch_add(op_count, Ordering::Relaxed);
        crate::stamp::note(stamp);
        Ok(())
    }

    fn write(&self) -> RwLockWriteGuard<'_, BTreeMap<String, Vec<u8>>> {
        self.entries.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// One key ([`Backend::get`] and [`Backend::get_now`]).
    fn read_now(&self, key: &str) -> Result<Option<Vec<u8>>> {
        validate_key(key)?;
        Ok(self.read().get(key).cloned())
    }
}

#[async_trait]
impl Backend for InmemBackend {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.read_now(key)
    }

    fn get_now(&self, key: &str) -> Option<Result<Option<Vec<u8>>>> {
        Some(self.read_now(key))
    }

    async fn batch(&self, ops: Vec<Op>) -> Result<()> {
        validate_batch(&ops)?;
        self.commit(ops, MAX_BATCH_OPS)
    }

    async fn batch_unbounded(&self, ops: Vec<Op>) -> Result<()> {
        validate_ops(&ops)?;
        self.commit(ops, usize::MAX)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let entries = self.read();
        list_children(prefix, |start| {
            Ok(entries
                .range::<str, _>((Bound::Included(start), Bound::Unbounded))
                .map(|(key, _)| Ok(key)))
        })
    }

    async fn scan(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>> {
        let entries = self.read();
        scan_prefix(prefix, after, limit, |start| {
            Ok(entries
                .range::<str, _>((start, Bound::Unbounded))
                .map(|(key, value)| Ok((key.clone(), value.clone()))))
        })
    }

    /// The map is copied under the read lock (the point in time), then paged out without it:
    /// the in-memory store holds its whole data set in memory anyway, and writers are not held
    /// up for as long as the sink takes.
    async fn snapshot(&self, sink: &mut dyn SnapshotSink) -> Result<()> {
        let copy = self.read().clone();
        let mut pages = PageBuilder::default();
        for (key, value) in copy {
            if let Some(page) = pages.push(key, value) {
                sink.page(page).await?;
            }
        }
        let last = pages.take();
        if !last.is_empty() {
            sink.page(last).await?;
        }
        Ok(())
    }

    fn metrics(&self) -> StorageMetrics {
        StorageMetrics {
            fsyncs: 0,
            batches: self.batches.load(Ordering::Relaxed),
            ops: self.ops.load(Ordering::Relaxed),
        }
    }
}

impl crate::HookedBackend for InmemBackend {
    fn set_commit_hook(&self, hook: Option<Arc<dyn CommitHook>>) {
        self.hook.set(hook);
    }

    fn feeds_indexes(&self) -> bool {
        !self.unindexed
    }
}

/// The map under the write lock, as a transaction's table (nothing in it can fail, so a commit
/// is never left half applied).
struct MapTable<'a>(&'a mut BTreeMap<String, Vec<u8>>);

impl TxnTable for MapTable<'_> {
    fn put(&mut self, key: &str, value: &[u8], replaced: Replaced<'_>) -> Result<()> {
        let old = self.0.insert(key.to_owned(), value.to_vec());
        if let Some(replaced) = replaced {
            replaced(old.as_deref());
        }
        Ok(())
    }

    fn delete(&mut self, key: &str, replaced: Replaced<'_>) -> Result<()> {
        let old = self.0.remove(key);
        if let Some(replaced) = replaced {
            replaced(old.as_deref());
        }
        Ok(())
    }

    fn for_each(
        &mut self,
        range: (Bound<&str>, Bound<&str>),
        visit: &mut dyn FnMut(&str, &[u8]) -> bool,
    ) -> Result<()> {
        if !crate::hook::is_valid_range(range) {
            return Ok(());
        }
        for (key, value) in self.0.range::<str, _>(range) {
            if !visit(key, value) {
                break;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn inmem_passes_conformance() {
        let backend = InmemBackend::new();
        crate::conformance::exercise_backend(&backend).await;
    }
}
