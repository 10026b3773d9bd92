//! An in-memory store with hooks around its calls, for tests that need storage to misbehave
//! at a precise point: yield to a scheduler, fail a write as a crash would, stall after a
//! commit, change the data between two pages of a scan, count what a scan hands out. One
//! implementation of the [`Backend`] delegation, so each test writes only its hooks.

use std::sync::Arc;

use async_trait::async_trait;

use crate::{Backend, CommitHook, HookedBackend, InmemBackend, Op, Result, SnapshotSink};

/// What a test does around the store's calls. Every hook does nothing by default.
#[async_trait]
pub trait StoreHooks: Send + Sync + 'static {
    /// Before a `get` or a `scan`.
    async fn before_read(&self) {}
    /// Before a `scan` (after [`StoreHooks::before_read`]); may change `store` under it.
    async fn before_scan(&self, _store: &InmemBackend) -> Result<()> {
        Ok(())
    }
    /// What a `scan` handed out.
    fn scanned(&self, _page: &[(String, Vec<u8>)]) {}
    /// Before a `batch`: an error refuses it (nothing is written).
    async fn before_batch(&self) -> Result<()> {
        Ok(())
    }
    /// After a `batch` committed, before its caller hears so.
    async fn after_batch(&self) {}
}

/// An [`InmemBackend`] whose calls go through `hooks`.
pub struct HookedStore<H> {
    pub store: InmemBackend,
    pub hooks: H,
}

impl<H: StoreHooks> HookedStore<H> {
    pub fn new(hooks: H) -> Self {
        HookedStore {
            store: InmemBackend::new(),
            hooks,
        }
    }
}

#[async_trait]
impl<H: StoreHooks> Backend for HookedStore<H> {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.hooks.before_read().await;
        self.store.get(key).await
    }

    async fn batch(&self, ops: Vec<Op>) -> Result<()> {
        self.hooks.before_batch().await?;
        self.store.batch(ops).await?;
        self.hooks.after_batch().await;
        Ok(())
    }

    async fn batch_unbounded(&self, ops: Vec<Op>) -> Result<()> {
        self.hooks.before_batch().await?;
        self.store.batch_unbounded(ops).await?;
        self.hooks.after_batch().await;
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        self.store.list(prefix).await
    }

    async fn scan(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>> {
        self.hooks.before_read().await;
        self.hooks.before_scan(&self.store).await?;
        let page = self.store.scan(prefix, after, limit).await?;
        self.hooks.scanned(&page);
        Ok(page)
    }

    async fn snapshot(&self, sink: &mut dyn SnapshotSink) -> Result<()> {
        self.store.snapshot(sink).await
    }
}

impl<H: StoreHooks> HookedBackend for HookedStore<H> {
    fn set_commit_hook(&self, hook: Option<Arc<dyn CommitHook>>) {
        self.store.set_commit_hook(hook);
    }

    fn feeds_indexes(&self) -> bool {
        self.store.feeds_indexes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NoHooks;

    impl StoreHooks for NoHooks {}

    /// A hooked store's reads go through `get`, so that its hooks run: it must never answer
    /// [`Backend::get_now`] (the barrier tries that first), not even by forwarding it.
    #[tokio::test]
    async fn a_hooked_store_answers_reads_only_through_its_hooks() {
        let store = HookedStore::new(NoHooks);
        store.put("k", b"v".to_vec()).await.expect("put");
        assert!(store.get_now("k").is_none());
        assert_eq!(store.get("k").await.expect("get"), Some(b"v".to_vec()));
    }
}
