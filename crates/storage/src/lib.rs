//! Physical storage: an untrusted, ordered key-value store.
//!
//! Everything above this layer (the barrier) stores only ciphertext here. A backend offers
//! get/put/delete/list, an ordered `scan`, and an atomic, durable multi-key `batch`; an
//! acknowledged write (the returned future resolved `Ok`) is on stable storage.
//!
//! Backends: [`InmemBackend`] (dev mode, tests), [`EmbeddedBackend`] (redb, the durable
//! default) and [`PostgresBackend`] (a PostgreSQL table, for operators who run PostgreSQL). redb was chosen because it is pure Rust, ACID and crash-safe with a single file,
//! and has the fastest ordered scans of the crates tried here (LIST and Merkle pages need them).
//!
//! Every backend enforces the same input limits (see [`limits`]) and passes the same
//! [`conformance`] suite (built for this crate's tests, and for other crates with the `testing`
//! feature).
//!
//! A backend can carry one [`CommitHook`], which adds ops to each batch at the point where
//! commit order is decided; replication uses it to write its log in commit order.
//!
//! May see: nothing of Bunker (no other crate). May not see: keys, plaintext, tokens. It is
//! told nothing but keys and opaque bytes, and runs the commit hook replication installs.

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

#[cfg(any(test, feature = "testing"))]
pub mod conformance;
pub mod embedded;
mod error;
mod group_commit;
pub mod ha;
mod hook;
#[cfg(any(test, feature = "testing"))]
pub mod hooked_store;
mod inmem;
pub mod limits;
mod listing;
pub mod postgresql;
mod read_cache;
mod snapshot;
pub mod stamp;
pub mod timed;

pub use embedded::EmbeddedBackend;
pub use error::StorageError;
pub use group_commit::commit_inline_on_this_thread;
pub use ha::{Fence, FenceCell, HaBackend, HaNode, ReadScope};
pub use hook::{CommitHook, CommitIndex, IndexUpdate, KeyRange};
pub use inmem::InmemBackend;
pub use postgresql::{PostgresBackend, PostgresConfig};
pub use snapshot::{SnapshotPage, SnapshotSink, SNAPSHOT_PAGE_BYTES, SNAPSHOT_PAGE_ENTRIES};

pub type Result<T> = std::result::Result<T, StorageError>;

/// One operation of an atomic batch. Serializable so a log of batches can be shipped
/// elsewhere (replication's WAL).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    Put {
        key: String,
        #[serde(with = "byte_string")]
        value: Vec<u8>,
    },
    Delete {
        key: String,
    },
}

/// A value as one byte string rather than a sequence of bytes: the same bytes in postcard (a
/// length, then the bytes: the WAL's records and frames) and in JSON (an array of numbers), but
/// written and read in bulk instead of one serde call per byte, which was most of the cost of
/// encoding and decoding a WAL entry (`bunker_wal`'s tests check that the bytes are the same).
mod byte_string {
    use serde::de::{SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(value: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(value)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<u8>, D::Error> {
        deserializer.deserialize_byte_buf(Bytes)
    }

    struct Bytes;

    impl<'de> Visitor<'de> for Bytes {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a byte string")
        }

        fn visit_bytes<E>(self, bytes: &[u8]) -> Result<Vec<u8>, E> {
            Ok(bytes.to_vec())
        }

        fn visit_byte_buf<E>(self, bytes: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(bytes)
        }

        /// Formats that write bytes as a sequence (JSON's array of numbers).
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 16));
            while let Some(byte) = seq.next_element::<u8>()? {
                bytes.push(byte);
            }
            Ok(bytes)
        }
    }
}

impl Op {
    pub fn key(&self) -> &str {
        match self {
            Op::Put { key, .. } | Op::Delete { key } => key,
        }
    }
}

/// Counters a backend keeps about its own durability work.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StorageMetrics {
    /// Number of fsyncs (durable commits) issued.
    pub fsyncs: u64,
    /// Number of batches acknowledged.
    pub batches: u64,
    /// Number of individual put/delete operations committed.
    pub ops: u64,
}

/// The physical backend contract.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Read one key.
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>>;

    /// [`Backend::get`] answered within the call, by a backend whose reads never wait on
    /// anything but memory and its own file (the embedded store, the in-memory one): `None`
    /// when it cannot (a network backend, a test store with hooks), and the caller awaits
    /// `get`. Callers on the request path ([`Backend::get`] through the barrier) try it
    /// first: a `get` is a boxed future, one allocation per read.
    fn get_now(&self, _key: &str) -> Option<Result<Option<Vec<u8>>>> {
        None
    }

    /// Apply every op atomically and durably: all or none are visible, and when this resolves
    /// `Ok` the batch survives a crash. Concurrent batches may be committed together (group
    /// commit).
    async fn batch(&self, ops: Vec<Op>) -> Result<()>;

    /// As [`Backend::batch`], without the limit on the number of ops (each key and value is
    /// still checked): one transaction, all or nothing, however large. For replacing the whole
    /// store at once (a snapshot restore); it holds the batch in memory, so callers bound it.
    /// The default refuses what does not fit a batch: a backend that cannot commit more says
    /// so.
    /// Waits until every batch queued before this call is committed or failed, including
    /// batches whose callers stopped waiting (a dropped `batch` future). The default is for
    /// backends that commit within the call.
    async fn drain(&self) -> Result<()> {
        Ok(())
    }

    async fn batch_unbounded(&self, ops: Vec<Op>) -> Result<()> {
        if ops.len() > limits::MAX_BATCH_OPS {
            return Err(StorageError::BatchTooLarge {
                ops: ops.len(),
                limit: limits::MAX_BATCH_OPS,
            });
        }
        self.batch(ops).await
    }

    /// Vault's LIST semantics: the immediate children of `prefix`, sorted and deduplicated.
    /// A key `prefix + "a"` lists as `a`; a key `prefix + "b/c"` lists as `b/`.
    async fn list(&self, prefix: &str) -> Result<Vec<String>>;

    /// Ordered scan over keys starting with `prefix`, strictly greater than `after` when given,
    /// at most `limit` entries.
    async fn scan(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>>;

    async fn put(&self, key: &str, value: Vec<u8>) -> Result<()> {
        self.batch(vec![Op::Put {
            key: key.to_owned(),
            value,
        }])
        .await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.batch(vec![Op::Delete {
            key: key.to_owned(),
        }])
        .await
    }

    /// Every entry, in key order, as it stood at one point in time (a consistent snapshot,
    /// taken while writes go on), handed to `sink` in pages of at most
    /// [`SNAPSHOT_PAGE_ENTRIES`] entries and about [`SNAPSHOT_PAGE_BYTES`] (a page always takes
    /// at least one entry). Memory stays bounded by a page or two; the sink applies back
    /// pressure by taking its time. An error from the sink stops the snapshot and is returned.
    async fn snapshot(&self, sink: &mut dyn SnapshotSink) -> Result<()>;

    fn metrics(&self) -> StorageMetrics {
        StorageMetrics::default()
    }
}

/// A backend that runs a [`CommitHook`] inside each commit, at the point where commit order is
/// decided. Replication requires it (its WAL is written by the hook, in the same atomic batch
/// as the data): a backend that cannot do this cannot be replicated, and says so by not
/// implementing this trait rather than by silently ignoring a hook.
pub trait HookedBackend: Backend {
    /// Installs (`Some`) or removes (`None`) the hook called for every committed batch,
    /// replacing any hook installed before. Batches already being committed may still see the
    /// previous hook.
    fn set_commit_hook(&self, hook: Option<Arc<dyn CommitHook>>);

    /// Whether each commit feeds the hook's [`CommitIndex`] (the values its writes replace, read
    /// inside the transaction). A backend that does not keeps no index; replication then
    /// computes its Merkle tree by scanning.
    fn feeds_indexes(&self) -> bool {
        false
    }
}
