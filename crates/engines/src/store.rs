//! The storage seam between the engines and the core's `StorageView`.
//!
//! Engines never touch `StorageView` directly: each `LogicalBackend` impl turns its
//! `BackendRequest` into a [`Call`] whose storage is a [`Store`], and all engine logic runs
//! against that. In production the `Store` is the mount's `StorageView` (the barrier); in unit
//! tests it is an in-memory map, so the engines are tested without the barrier or a disk, and a
//! test store can also fail on command to check that a failed batch changes nothing.
//!
//! `Store` is an enum, not a trait object: through `&dyn Store` (an `async_trait`) every
//! storage call boxed its future, four allocations per KV write; the view's futures now run
//! inline in the engine's (bench/README.md, "Instructions per write").

use bunker_sdk::{BackendRequest, Data, LogicalError, Operation, Result, StorageView};
use bunker_storage::Op;
use serde::{de::DeserializeOwned, Serialize};

/// The storage operations the engines use, with `StorageView`'s semantics: keys are relative
/// to the mount, `list` returns immediate children (folders with a trailing `/`), and `batch`
/// is atomic.
#[derive(Clone, Copy)]
pub(crate) enum Store<'a> {
    /// A mount's view of the barrier.
    View(&'a StorageView),
    /// A test double ([`mem::MemStore`]).
    #[cfg(test)]
    Double(&'a dyn StoreDouble),
}

impl Store<'_> {
    pub(crate) async fn get(self, key: &str) -> Result<Option<Vec<u8>>> {
        match self {
            Store::View(view) => view.get(key).await,
            #[cfg(test)]
            Store::Double(double) => double.get(key).await,
        }
    }

    /// Whether `key` holds a value; the barrier answers without decrypting it.
    pub(crate) async fn exists(self, key: &str) -> Result<bool> {
        match self {
            Store::View(view) => view.exists(key).await,
            #[cfg(test)]
            Store::Double(double) => Ok(double.get(key).await?.is_some()),
        }
    }

    pub(crate) async fn put(self, key: &str, value: &[u8]) -> Result<()> {
        match self {
            Store::View(view) => view.put(key, value).await,
            #[cfg(test)]
            Store::Double(double) => double.put(key, value).await,
        }
    }

    pub(crate) async fn delete(self, key: &str) -> Result<()> {
        match self {
            Store::View(view) => view.delete(key).await,
            #[cfg(test)]
            Store::Double(double) => double.delete(key).await,
        }
    }

    pub(crate) async fn list(self, prefix: &str) -> Result<Vec<String>> {
        match self {
            Store::View(view) => view.list(prefix).await,
            #[cfg(test)]
            Store::Double(double) => double.list(prefix).await,
        }
    }

    pub(crate) async fn batch(self, ops: Vec<Op>) -> Result<()> {
        match self {
            Store::View(view) => view.batch(ops).await,
            #[cfg(test)]
            Store::Double(double) => double.batch(ops).await,
        }
    }
}

/// What a test double of the storage answers (boxed futures: tests only).
#[cfg(test)]
#[async_trait::async_trait]
pub(crate) trait StoreDouble: Send + Sync {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>>;
    async fn put(&self, key: &str, value: &[u8]) -> Result<()>;
    async fn delete(&self, key: &str) -> Result<()>;
    async fn list(&self, prefix: &str) -> Result<Vec<String>>;
    async fn batch(&self, ops: Vec<Op>) -> Result<()>;
}

/// Read and decode a JSON record; `None` when the key is absent.
pub(crate) async fn get_json<T: DeserializeOwned>(
    store: Store<'_>,
    key: &str,
) -> Result<Option<T>> {
    match store.get(key).await? {
        None => Ok(None),
        Some(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| LogicalError::Internal(format!("decoding stored entry {key:?}: {e}"))),
    }
}

/// Room for a typical record (a KV v2 secret's metadata is about 300 bytes, a version of a
/// small secret about as much): `serde_json::to_vec` starts at 128 bytes, and growing to 512
/// cost two more allocations and copies per record.
pub(crate) const RECORD_BYTES: usize = 512;

/// Encode a record as JSON for storage.
pub(crate) fn encode_json<T: Serialize>(key: &str, value: &T) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(RECORD_BYTES);
    serde_json::to_writer(&mut out, value)
        .map_err(|e| LogicalError::Internal(format!("encoding entry {key:?}: {e}")))?;
    Ok(out)
}

/// One request as an engine sees it.
pub(crate) struct Call<'a> {
    pub operation: Operation,
    /// Path relative to the mount, no leading slash.
    pub path: &'a str,
    pub data: &'a Data,
    pub store: Store<'a>,
    /// The mount point, for log messages only.
    pub mount_point: &'a str,
    /// Per-token namespace (cubbyhole only).
    pub token_namespace: &'a str,
}

impl<'a> Call<'a> {
    pub(crate) fn from_request(req: &'a BackendRequest<'_>) -> Self {
        Call {
            operation: req.operation,
            path: req.path,
            data: req.data,
            store: Store::View(req.storage),
            mount_point: req.mount_point,
            token_namespace: req.token_namespace,
        }
    }
}

#[cfg(test)]
pub(crate) mod mem {
    //! An in-memory `Store` for unit tests, with LIST semantics matching the storage layer and
    //! a switch that makes writes fail.

    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;

    use super::*;

    #[derive(Default)]
    pub(crate) struct MemStore {
        entries: Mutex<BTreeMap<String, Vec<u8>>>,
        fail_writes: AtomicBool,
    }

    impl MemStore {
        pub(crate) fn new() -> Self {
            Self::default()
        }

        /// Make every later put, delete and batch fail (without applying anything).
        pub(crate) fn fail_writes(&self, fail: bool) {
            self.fail_writes.store(fail, Ordering::SeqCst);
        }

        /// Every key currently stored, in order.
        pub(crate) fn keys(&self) -> Vec<String> {
            self.entries.lock().unwrap().keys().cloned().collect()
        }

        pub(crate) fn snapshot(&self) -> BTreeMap<String, Vec<u8>> {
            self.entries.lock().unwrap().clone()
        }

        fn check_writable(&self) -> Result<()> {
            if self.fail_writes.load(Ordering::SeqCst) {
                return Err(LogicalError::Internal("injected storage failure".into()));
            }
            Ok(())
        }
    }

    #[async_trait::async_trait]
    impl StoreDouble for MemStore {
        async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
            // Yield like real storage would, so concurrent requests interleave in tests.
            tokio::task::yield_now().await;
            Ok(self.entries.lock().unwrap().get(key).cloned())
        }
        async fn put(&self, key: &str, value: &[u8]) -> Result<()> {
            self.check_writable()?;
            self.entries
                .lock()
                .unwrap()
                .insert(key.to_owned(), value.to_vec());
            Ok(())
        }
        async fn delete(&self, key: &str) -> Result<()> {
            self.check_writable()?;
            self.entries.lock().unwrap().remove(key);
            Ok(())
        }
        async fn list(&self, prefix: &str) -> Result<Vec<String>> {
            let entries = self.entries.lock().unwrap();
            let mut children = BTreeSet::new();
            for key in entries.keys().filter(|k| k.starts_with(prefix)) {
                let rest = &key[prefix.len()..];
                match rest.find('/') {
                    Some(i) => children.insert(rest[..=i].to_owned()),
                    None => children.insert(rest.to_owned()),
                };
            }
            Ok(children.into_iter().collect())
        }
        async fn batch(&self, ops: Vec<Op>) -> Result<()> {
            tokio::task::yield_now().await;
            self.check_writable()?;
            let mut entries = self.entries.lock().unwrap();
            for op in ops {
                match op {
                    Op::Put { key, value } => {
                        entries.insert(key, value);
                    }
                    Op::Delete { key } => {
                        entries.remove(&key);
                    }
                }
            }
            Ok(())
        }
    }
}
