//! Live connection status and sync counters, and their JSON shape in `sys/replication/dr/status`.

use serde_json::{json, Value};

use crate::messages::now_ms;

fn rfc3339_ms(ms: u64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// What a primary knows about one connected (or once connected) secondary.
#[derive(Clone, Debug, Default)]
pub struct PeerStatus {
    pub node_id: String,
    pub api_address: String,
    pub cluster_address: String,
    pub connected: bool,
    pub last_heartbeat_ms: u64,
    pub acked_wal: u64,
    pub clock_skew_ms: i64,
    /// The last replay lag measured ([`PeerStatus::acked`]), in µs.
    pub replay_lag_us: Option<u64>,
    /// The highest acknowledged index a replay lag was measured for.
    pub replay_lag_through: u64,
}

impl PeerStatus {
    /// The secondary acknowledged `applied` at `now`. When that is past the last index
    /// measured, returns the replay lag as PostgreSQL's walsender measures `replay_lag`: from
    /// this node's commit of entry `applied` (`committed_at`) until now. An index whose commit
    /// time is unknown (older than the commit clock) gives no measurement.
    pub fn acked(
        &mut self,
        applied: u64,
        committed_at: impl FnOnce(u64) -> Option<std::time::Instant>,
        now: std::time::Instant,
    ) -> Option<std::time::Duration> {
        self.acked_wal = applied;
        if applied <= self.replay_lag_through {
            return None;
        }
        self.replay_lag_through = applied;
        let lag = now.saturating_duration_since(committed_at(applied)?);
        self.replay_lag_us = Some(u64::try_from(lag.as_micros()).unwrap_or(u64::MAX));
        Some(lag)
    }

    /// `canary_age_ms`: how stale the peer's data is (Vault's
    /// `replication_primary_canary_age_ms`).
    pub fn to_json(&self, with_node_id: bool, last_wal: u64, canary_age_ms: u64) -> Value {
        let since = if self.last_heartbeat_ms == 0 {
            0
        } else {
            now_ms().saturating_sub(self.last_heartbeat_ms)
        };
        let mut v = json!({
            "api_address": self.api_address,
            "cluster_address": self.cluster_address,
            "connection_status": if self.connected { "connected" } else { "disconnected" },
            "last_heartbeat": if self.last_heartbeat_ms == 0 { String::new() } else { rfc3339_ms(self.last_heartbeat_ms) },
            "last_heartbeat_duration_ms": since.to_string(),
            "clock_skew_ms": self.clock_skew_ms.to_string(),
            "replication_primary_canary_age_ms": canary_age_ms.to_string(),
        });
        if let Value::Object(m) = &mut v {
            if with_node_id {
                m.insert("node_id".into(), json!(self.node_id));
                // Milliseconds with microseconds, as pg_stat_replication's interval has them.
                m.insert(
                    "replay_lag_ms".into(),
                    json!(self.replay_lag_us.map(|us| us as f64 / 1000.0)),
                );
                m.insert("last_acked_wal".into(), json!(self.acked_wal));
                m.insert(
                    "lag_wal_entries".into(),
                    json!(last_wal.saturating_sub(self.acked_wal)),
                );
            }
        }
        v
    }
}

/// Secondary-side state of the stream (`state` in status).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SyncState {
    #[default]
    Idle,
    Connecting,
    MerkleDiff,
    MerkleSync,
    StreamWals,
}

impl SyncState {
    pub fn as_str(self) -> &'static str {
        match self {
            SyncState::Idle => "idle",
            SyncState::Connecting => "connecting",
            SyncState::MerkleDiff => "merkle-diff",
            SyncState::MerkleSync => "merkle-sync",
            SyncState::StreamWals => "stream-wals",
        }
    }
}

/// What the syncs of one kind (Merkle diff, key journal) fetched.
#[derive(Clone, Copy, Debug, Default)]
pub struct SyncTally {
    pub syncs: u64,
    pub keys_fetched: u64,
    pub keys_deleted: u64,
    pub bytes_fetched: u64,
    pub last_keys_fetched: u64,
    pub last_keys_deleted: u64,
    pub last_bytes_fetched: u64,
}

impl SyncTally {
    /// One more sync, which fetched `keys` (of which `deleted` deletions) in `bytes`.
    pub fn record(&mut self, keys: u64, deleted: u64, bytes: u64) {
        self.syncs += 1;
        self.last_keys_fetched = keys;
        self.last_keys_deleted = deleted;
        self.last_bytes_fetched = bytes;
        self.keys_fetched += keys;
        self.keys_deleted += deleted;
        self.bytes_fetched += bytes;
    }

    fn last_json(&self) -> serde_json::Map<String, Value> {
        let mut last = serde_json::Map::new();
        last.insert("keys_fetched".into(), json!(self.last_keys_fetched));
        last.insert("keys_deleted".into(), json!(self.last_keys_deleted));
        last.insert("bytes_fetched".into(), json!(self.last_bytes_fetched));
        last
    }
}

/// Counters of what syncing cost, for operators (`sync` in status).
#[derive(Clone, Copy, Debug, Default)]
pub struct SyncCounters {
    pub merkle: SyncTally,
    pub last_merkle_buckets_differing: u64,
    pub journal: SyncTally,
    pub wal_entries_streamed: u64,
    pub wal_bytes_streamed: u64,
}

impl SyncCounters {
    pub fn to_json(self) -> Value {
        let mut last_merkle = self.merkle.last_json();
        last_merkle.insert(
            "buckets_differing".into(),
            json!(self.last_merkle_buckets_differing),
        );
        json!({
            "merkle_syncs": self.merkle.syncs,
            "last_merkle_sync": last_merkle,
            "merkle_keys_fetched_total": self.merkle.keys_fetched,
            "merkle_bytes_fetched_total": self.merkle.bytes_fetched,
            "journal_syncs": self.journal.syncs,
            "last_journal_sync": self.journal.last_json(),
            "journal_keys_fetched_total": self.journal.keys_fetched,
            "journal_bytes_fetched_total": self.journal.bytes_fetched,
            "wal_entries_streamed": self.wal_entries_streamed,
            "wal_bytes_streamed": self.wal_bytes_streamed,
        })
    }
}

impl SecondaryStatus {
    /// Track since when we are behind the primary, given our applied WAL index.
    pub fn note_position(&mut self, applied: u64) {
        if self.primary_last_wal > applied {
            if self.behind_since_ms == 0 {
                self.behind_since_ms = now_ms();
            }
        } else {
            self.behind_since_ms = 0;
        }
    }

    /// Replication lag in ms: 0 when caught up; otherwise how long we have been behind, and
    /// at least how late the last entry was applied.
    pub fn lag_ms(&self, applied: u64) -> u64 {
        if self.primary_last_wal <= applied {
            return 0;
        }
        let behind = if self.behind_since_ms == 0 {
            0
        } else {
            now_ms().saturating_sub(self.behind_since_ms)
        };
        behind.max(self.last_apply_lag_ms)
    }
}

/// A sync in progress, reported as `sync_progress` in status while it runs.
#[derive(Clone, Debug)]
pub struct SyncProgress {
    /// `snapshot` (a first, full sync) or `merkle` (a catch-up by Merkle diff).
    pub kind: &'static str,
    pub started_ms: u64,
    pub keys: u64,
    pub bytes: u64,
    /// Units of work done and expected: keys for a snapshot sync (expected: the primary's
    /// estimate, 0 when unknown), chunks of differing cells for a Merkle sync.
    pub done: u64,
    pub total: u64,
}

impl SyncProgress {
    pub fn to_json(&self) -> Value {
        let elapsed_ms = now_ms().saturating_sub(self.started_ms).max(1);
        let per_second = |n: u64| n.saturating_mul(1000) / elapsed_ms;
        let known = self.total > 0;
        let percent = known.then(|| (self.done.min(self.total) * 100) / self.total);
        let eta_seconds = (known && self.done > 0).then(|| {
            let left = self.total.saturating_sub(self.done);
            left.saturating_mul(elapsed_ms) / self.done / 1000
        });
        json!({
            "kind": self.kind,
            "elapsed_ms": elapsed_ms,
            "keys_fetched": self.keys,
            "bytes_fetched": self.bytes,
            "units": if self.kind == "snapshot" { "keys" } else { "chunks" },
            "units_done": self.done,
            "units_total": if known { Some(self.total) } else { None },
            "percent": percent,
            "keys_per_second": per_second(self.keys),
            "bytes_per_second": per_second(self.bytes),
            "eta_seconds": eta_seconds,
        })
    }
}

/// Everything a secondary reports about its stream.
#[derive(Clone, Debug, Default)]
pub struct SecondaryStatus {
    pub state: SyncState,
    pub connection_state: &'static str,
    pub primary: PeerStatus,
    pub primary_last_wal: u64,
    /// How late (ms after the primary committed it) the last entry was applied.
    pub last_apply_lag_ms: u64,
    /// When this secondary was first seen behind the primary (0 = caught up).
    pub behind_since_ms: u64,
    pub last_error: String,
    pub last_start_ms: u64,
    pub counters: SyncCounters,
    /// The sync running now, if any.
    pub progress: Option<SyncProgress>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::{Duration, Instant};

    use super::*;

    #[test]
    fn replay_lag_is_measured_once_per_new_index_from_its_commit() {
        let mut peer = PeerStatus::default();
        let t0 = Instant::now();
        let commit = |i: u64| (i <= 10).then(|| t0 + Duration::from_micros(i * 100));
        // Entry 4 committed at 400 µs, acknowledged at 1,400 µs: 1 ms.
        let lag = peer.acked(4, commit, t0 + Duration::from_micros(1_400));
        assert_eq!(lag, Some(Duration::from_millis(1)));
        assert_eq!(peer.replay_lag_us, Some(1_000));
        assert_eq!(peer.acked_wal, 4);
        // The same index again (a heartbeat ack while idle) measures nothing: the last value
        // stays, it does not grow with idle time.
        assert_eq!(peer.acked(4, commit, t0 + Duration::from_secs(5)), None);
        assert_eq!(peer.replay_lag_us, Some(1_000));
        // An index whose commit time is unknown measures nothing and keeps the last value.
        assert_eq!(peer.acked(12, commit, t0 + Duration::from_secs(6)), None);
        assert_eq!((peer.acked_wal, peer.replay_lag_us), (12, Some(1_000)));
        // A new session starts from the position the secondary held: acknowledging it again
        // measures nothing (it was applied before the session; primary.rs `admit`).
        let mut resumed = PeerStatus {
            acked_wal: 12,
            replay_lag_through: 12,
            ..PeerStatus::default()
        };
        assert_eq!(resumed.acked(12, commit, t0 + Duration::from_secs(9)), None);
        assert_eq!(resumed.replay_lag_us, None);
        let json = peer.to_json(true, 20, 37);
        assert_eq!(json["replay_lag_ms"], json!(1.0));
        assert_eq!(json["replication_primary_canary_age_ms"], json!("37"));
        assert_eq!(json["lag_wal_entries"], json!(8));
    }
}
