//! What the secondary's protocol needs of the node it runs on, as one trait: its store and WAL,
//! the control plane's consistency marks, and status reports. The runtime implements it on the
//! manager; the deterministic simulation (`crate::sim`) implements it on an in-memory node, so
//! the same sync and stream code runs under both.

use std::sync::Arc;

use bunker_storage::Backend;

use crate::merkle::{CellSums, MerkleTree};
use crate::status::SyncState;
use crate::wal::Wal;
use crate::ReplError;

pub(crate) trait SecondaryHost {
    fn backend(&self) -> &dyn Backend;
    fn wal(&self) -> &Wal;
    /// Bytes of keys and values a Merkle sync stages before it spills in place.
    fn stage_limit(&self) -> usize {
        super::stage::STAGE_MAX_BYTES
    }
    /// A sync starts writing in place: the local state is torn from now on.
    async fn mark_torn(&self, cluster_id: &str) -> Result<(), ReplError>;
    /// The stream's first frame: a torn state is consistent once the WAL reaches `wal_index`.
    async fn mark_consistent_after(&self, cluster_id: &str, wal_index: u64);
    /// A sync with the primary of `generation` finished (`consistent_at`: a staged commit).
    async fn mark_synced(
        &self,
        cluster_id: &str,
        generation: u64,
        consistent_at: Option<u64>,
    ) -> Result<(), ReplError>;
    /// The Merkle tree and cell sums of the local replicated keyspace.
    async fn merkle_fingerprint(&self) -> Result<(MerkleTree, Arc<CellSums>), ReplError>;
    /// The replicated keyspace changed in a way the WAL index does not show.
    fn invalidate_merkle(&self);
    /// The primary's keyring was replicated: reopen it.
    async fn reload_core_keyring(&self);

    // Status and metrics only: nothing stored depends on them.
    fn set_sync_state(&self, _state: SyncState, _connection: &'static str) {}
    fn progress_start(&self, _kind: &'static str, _total: u64) {}
    fn progress_total(&self, _total: u64) {}
    fn progress_add(&self, _keys: u64, _bytes: u64, _units: u64) {}
    fn record_merkle_sync(&self, _buckets: u64, _keys: u64, _deleted: u64, _bytes: u64) {}
    fn record_journal_sync(&self, _keys: u64, _deleted: u64, _bytes: u64) {}
    fn record_applied(&self, _entries: u64, _bytes: u64, _last_wal: u64, _newest_ms: u64) {}
    fn primary_heartbeat(&self, _last_wal: u64, _time_ms: u64) {}
}

impl SecondaryHost for Arc<crate::manager::Inner> {
    fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }

    fn wal(&self) -> &Wal {
        &self.wal
    }

    async fn mark_torn(&self, cluster_id: &str) -> Result<(), ReplError> {
        crate::manager::Inner::mark_torn(self, cluster_id).await
    }

    async fn mark_consistent_after(&self, cluster_id: &str, wal_index: u64) {
        crate::manager::Inner::mark_consistent_after(self, cluster_id, wal_index).await;
    }

    async fn mark_synced(
        &self,
        cluster_id: &str,
        generation: u64,
        consistent_at: Option<u64>,
    ) -> Result<(), ReplError> {
        crate::manager::Inner::mark_synced(self, cluster_id, generation, consistent_at).await
    }

    async fn merkle_fingerprint(&self) -> Result<(MerkleTree, Arc<CellSums>), ReplError> {
        crate::manager::Inner::merkle_fingerprint(self).await
    }

    fn invalidate_merkle(&self) {
        crate::manager::Inner::invalidate_merkle(self);
    }

    async fn reload_core_keyring(&self) {
        crate::manager::Inner::reload_core_keyring(self).await;
    }

    fn set_sync_state(&self, state: SyncState, connection: &'static str) {
        crate::manager::Inner::set_sync_state(self, state, connection);
    }

    fn progress_start(&self, kind: &'static str, total: u64) {
        crate::manager::Inner::progress_start(self, kind, total);
    }

    fn progress_total(&self, total: u64) {
        crate::manager::Inner::progress_total(self, total);
    }

    fn progress_add(&self, keys: u64, bytes: u64, units: u64) {
        crate::manager::Inner::progress_add(self, keys, bytes, units);
    }

    fn record_merkle_sync(&self, buckets: u64, keys: u64, deleted: u64, bytes: u64) {
        crate::manager::Inner::record_merkle_sync(self, buckets, keys, deleted, bytes);
    }

    fn record_journal_sync(&self, keys: u64, deleted: u64, bytes: u64) {
        crate::manager::Inner::record_journal_sync(self, keys, deleted, bytes);
    }

    fn record_applied(&self, entries: u64, bytes: u64, last_wal: u64, newest_ms: u64) {
        crate::manager::Inner::record_applied(self, entries, bytes, last_wal, newest_ms);
    }

    fn primary_heartbeat(&self, last_wal: u64, time_ms: u64) {
        crate::manager::Inner::primary_heartbeat(self, last_wal, time_ms);
    }
}
