//! Vault's replication telemetry names, so dashboards and alerts built for Vault's DR
//! replication read Bunker's. The RPC timings are summaries in milliseconds, each named after
//! the Vault RPC that does the same work (docs/monitoring.md has the mapping); Bunker's
//! protocol is its own, so a name stands for the exchange that plays that part:
//!
//! | Vault RPC | Bunker exchange |
//! |---|---|
//! | `stream_wals` | one streaming session, from `StreamFrom` until it ends |
//! | `sub_page_hashes` | `MerkleRequest` → `Tree` (the bucket hashes) |
//! | `conflicting_pages` | `CellSums` pages → `CellDiff` (the differing cells) |
//! | `fetch_keys` (DR) | one chunk: `ChunkRequest` and `Listing` → values, deletions, `ChunkDone` |
//!
//! A timing is recorded when its exchange ends, whether it succeeded or not (as Vault's
//! deferred measurements are).

/// Primary: a streaming session.
pub(crate) const SERVER_STREAM_WALS: &str = "vault_replication_rpc_server_stream_wals_request";
/// Primary: answering `MerkleRequest`.
pub(crate) const SERVER_SUB_PAGE_HASHES: &str =
    "vault_replication_rpc_server_sub_page_hashes_request";
/// Primary: comparing the secondary's cell sums, up to `CellDiff`.
pub(crate) const SERVER_CONFLICTING_PAGES: &str =
    "vault_replication_rpc_server_conflicting_pages_request";
/// Primary: answering one chunk's listing.
pub(crate) const DR_SERVER_FETCH_KEYS: &str = "vault_replication_rpc_dr_server_fetch_keys_request";
/// Primary: epoch seconds of the last acknowledgement a secondary sent (label `secondary`).
pub(crate) const SERVER_LAST_HEARTBEAT: &str = "vault_replication_rpc_server_last_heartbeat";
/// Primary: replay lag, ms from this node's commit of the newest entry a secondary applied to
/// its acknowledgement (label `secondary`; as PostgreSQL's `replay_lag`; Bunker's own).
pub(crate) const REPLAY_LAG: &str = "bunker_replication_replay_lag";
/// Primary: ms from this node's commit of a frame's first entry until the frame was written to
/// the secondary's connection (the sender's part of the replay lag; Bunker's own).
pub(crate) const SEND_DELAY: &str = "bunker_replication_send_delay";
/// Secondary: ms from taking a batch of received frames off the queue until it was applied
/// durably and acknowledged (the secondary's part of the replay lag; Bunker's own).
pub(crate) const APPLY: &str = "bunker_replication_apply";
/// Primary: a secondary's position was found in the WAL (it resumes streaming) or not (it
/// reconciles first).
pub(crate) const GUARD_FOUND: &str = "vault_logshipper_streamWALs_guard_found";
pub(crate) const MISSING_GUARD: &str = "vault_logshipper_streamWALs_missing_guard";
/// Primary: one WAL truncation, what it deleted, and how many entries are kept.
pub(crate) const WAL_GC: &str = "vault_replication_wal_gc";
pub(crate) const WAL_GC_DELETED: &str = "vault_wal_gc_deleted";
pub(crate) const WAL_GC_TOTAL: &str = "vault_wal_gc_total";

/// Secondary: a streaming session.
pub(crate) const CLIENT_STREAM_WALS: &str = "vault_replication_rpc_client_stream_wals";
/// Secondary: `MerkleRequest` until the tree arrived.
pub(crate) const CLIENT_SUB_PAGE_HASHES: &str = "vault_replication_rpc_client_sub_page_hashes";
/// Secondary: sending the cell sums until `CellDiff` arrived.
pub(crate) const CLIENT_CONFLICTING_PAGES: &str = "vault_replication_rpc_client_conflicting_pages";
/// Secondary: one chunk, from `ChunkRequest` to `ChunkDone`.
pub(crate) const CLIENT_FETCH_KEYS: &str = "vault_replication_rpc_client_fetch_keys";
/// Secondary: a whole Merkle (or snapshot) sync, and its comparison part.
pub(crate) const MERKLE_SYNC: &str = "vault_replication_merkleSync";
pub(crate) const MERKLE_DIFF: &str = "vault_replication_merkleDiff";
/// Secondary: a catch-up from the primary's key journal (Bunker's own; Vault has none).
pub(crate) const JOURNAL_SYNC: &str = "bunker_replication_journal_sync";
/// Secondary: the highest WAL index received from the primary (applied or not yet).
pub(crate) const LAST_UPSTREAM_REMOTE_WAL: &str = "vault_replication_fsm_last_upstream_remote_wal";

pub(crate) use bunker_storage::timed::{record, Timed, SLOW_BACKGROUND, SLOW_WRITE_PATH};
