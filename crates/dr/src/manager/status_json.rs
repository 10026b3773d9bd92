//! The body of `sys/replication/dr/status` for each mode, and the same figures as metrics.

use serde_json::{json, Value};

use super::Inner;
use crate::state::Mode;
use crate::status::SyncState;

impl Inner {
    /// The status body. It never scans the keyspace (anyone may read it): `merkle_root` is
    /// the root the background refresher computed last, exact for WAL index `merkle_root_wal`
    /// (empty while a change that the WAL index does not show is not yet hashed).
    /// `with_merkle_root = false` (query `merkle_root=false`) leaves both out.
    pub(crate) async fn status_json(&self, with_merkle_root: bool) -> Value {
        let state = self.state_snapshot().await;
        if state.mode == Mode::Disabled {
            // A reindex may run without DR (it checks the local index): its progress shows.
            let mut status = json!({"mode": "disabled"});
            if let (Some(fields), Value::Object(reindex)) =
                (status.as_object_mut(), self.reindex.to_json())
            {
                if reindex.get("reindex_in_progress") == Some(&Value::Bool(true)) {
                    fields.extend(reindex);
                }
            }
            return status;
        }
        let (merkle_root, merkle_root_wal) = if with_merkle_root {
            self.published_merkle_root().unwrap_or_default()
        } else {
            (String::new(), 0)
        };
        let last_wal = self.wal.last_index();
        // Every full scan of the replicated keyspace (trees, listings, snapshot syncs).
        let merkle_scans = crate::merkle::full_scans();
        let index = self.wal.merkle_index();
        let corrupted = index.is_some_and(|i| i.is_corrupt());
        let merkle_index = match index {
            Some(i) if i.is_ready() => "ready",
            Some(i) if i.is_building() => "building",
            // Its summing failed (the store could not write); the refresher runs it again.
            Some(_) => "unsummed",
            None => "unsupported",
        };
        let mut status = match state.mode {
            Mode::Disabled => json!({"mode": "disabled"}),
            Mode::Primary => {
                let primary = state.primary.as_ref();
                let known: Vec<String> = primary
                    .map(|p| {
                        p.secondaries
                            .values()
                            .filter(|s| !s.revoked)
                            .map(|s| s.id.clone())
                            .collect()
                    })
                    .unwrap_or_default();
                let secondaries: Vec<Value> = self
                    .peers()
                    .iter()
                    .map(|p| p.to_json(true, last_wal, self.staleness_ms(p.acked_wal, last_wal)))
                    .collect();
                json!({
                    "mode": "primary",
                    "cluster_id": state.cluster_id,
                    "generation": state.generation,
                    "state": "running",
                    "known_secondaries": known,
                    "secondaries": secondaries,
                    "last_wal": last_wal,
                    "last_dr_wal": last_wal,
                    "last_corruption_check_epoch": "-62135596800",
                    "merkle_root": merkle_root,
                    "merkle_root_wal": merkle_root_wal,
                    "merkle_scans": merkle_scans,
                    "corrupted_merkle_tree": corrupted,
                    "merkle_index": merkle_index,
                    "primary_cluster_addr": primary.map(|p| p.primary_cluster_addr.clone()).unwrap_or_default(),
                    "ssct_generation_counter": 0,
                })
            }
            Mode::Secondary => {
                let s = self.sec_status();
                let secondary = state.secondary.as_ref();
                let lag_entries = s.primary_last_wal.saturating_sub(last_wal);
                let lag_ms = s.lag_ms(last_wal);
                let primaries: Vec<Value> =
                    if secondary.is_some() && s.primary.last_heartbeat_ms > 0 {
                        vec![s.primary.to_json(false, 0, lag_ms)]
                    } else {
                        vec![]
                    };
                let addr = secondary
                    .map(|x| x.primary_cluster_addr.clone())
                    .unwrap_or_default();
                json!({
                    "mode": "secondary",
                    "cluster_id": state.cluster_id,
                    "generation": state.generation,
                    "secondary_id": secondary.map(|x| x.secondary_id.clone()).unwrap_or_default(),
                    "primary_cluster_addr": addr,
                    "known_primary_cluster_addrs": secondary.map(crate::state::SecondaryState::primary_addrs).unwrap_or_default(),
                    "last_remote_wal": last_wal,
                    "consistent": state.consistent_after.is_some_and(|b| last_wal >= b),
                    "consistent_after_wal": state.consistent_after,
                    "last_primary_wal": s.primary_last_wal,
                    "lag_wal_entries": lag_entries,
                    "lag_ms": lag_ms,
                    "merkle_root": merkle_root,
                    "merkle_root_wal": merkle_root_wal,
                    "merkle_scans": merkle_scans,
                    "state": if secondary.is_none() { "idle" } else { s.state.as_str() },
                    "connection_state": if secondary.is_none() { "shutdown" } else if s.connection_state.is_empty() { "connecting" } else { s.connection_state },
                    "last_start": if s.last_start_ms == 0 { String::new() } else { s.last_start_ms.to_string() },
                    "last_error": s.last_error,
                    "corrupted_merkle_tree": corrupted,
                    "merkle_index": merkle_index,
                    "primaries": primaries,
                    "sync": s.counters.to_json(),
                    "sync_progress": s.progress.as_ref().map(crate::status::SyncProgress::to_json),
                })
            }
        };
        if let (Some(fields), Value::Object(reindex)) =
            (status.as_object_mut(), self.reindex.to_json())
        {
            fields.extend(reindex);
        }
        status
    }
}

impl Inner {
    /// The replication gauges and counters of `sys/metrics` (Vault's names where Vault has
    /// them; docs/monitoring.md). Reads only what status reads: no scan, no lock held long.
    pub(crate) fn record_metrics(&self) {
        use metrics::{counter, gauge};
        let last_wal = self.wal.last_index();
        let mode = self.mode();
        gauge!("bunker_replication_dr_mode").set(match mode {
            Mode::Disabled => 0.0,
            Mode::Primary => 1.0,
            Mode::Secondary => 2.0,
        });
        if let Some((_, root_wal)) = self.published_merkle_root() {
            gauge!("vault_replication_merkle_commit_index").set(root_wal as f64);
        }
        match mode {
            Mode::Disabled => {}
            Mode::Primary => {
                gauge!("vault_replication_wal_last_wal").set(last_wal as f64);
                gauge!("vault_replication_wal_last_dr_wal").set(last_wal as f64);
                let peers = self.peers();
                let connected = peers.iter().filter(|p| p.connected).count();
                gauge!("bunker_replication_connected_secondaries").set(connected as f64);
                for p in &peers {
                    let id = p.node_id.clone();
                    gauge!("bunker_replication_secondary_lag_wal_entries", "secondary" => id.clone())
                        .set(last_wal.saturating_sub(p.acked_wal) as f64);
                    gauge!("bunker_replication_secondary_connected", "secondary" => id.clone())
                        .set(f64::from(u8::from(p.connected)));
                    if p.last_heartbeat_ms > 0 {
                        gauge!(crate::rpc_metrics::SERVER_LAST_HEARTBEAT, "secondary" => id)
                            .set(p.last_heartbeat_ms as f64 / 1000.0);
                    }
                }
            }
            Mode::Secondary => {
                let s = self.sec_status();
                gauge!("vault_replication_fsm_last_remote_wal").set(last_wal as f64);
                gauge!("bunker_replication_primary_last_wal").set(s.primary_last_wal as f64);
                gauge!("bunker_replication_lag_ms").set(s.lag_ms(last_wal) as f64);
                gauge!("bunker_replication_lag_wal_entries")
                    .set(s.primary_last_wal.saturating_sub(last_wal) as f64);
                gauge!("bunker_replication_streaming")
                    .set(f64::from(u8::from(s.state == SyncState::StreamWals)));
                gauge!("bunker_replication_connected")
                    .set(f64::from(u8::from(s.connection_state == "ready")));
                let c = s.counters;
                counter!("bunker_replication_wal_entries_streamed_total")
                    .absolute(c.wal_entries_streamed);
                counter!("bunker_replication_wal_bytes_streamed_total")
                    .absolute(c.wal_bytes_streamed);
                for (kind, tally) in [("merkle", c.merkle), ("journal", c.journal)] {
                    counter!(format!("bunker_replication_{kind}_syncs_total"))
                        .absolute(tally.syncs);
                    counter!(format!("bunker_replication_{kind}_keys_fetched_total"))
                        .absolute(tally.keys_fetched);
                    counter!(format!("bunker_replication_{kind}_bytes_fetched_total"))
                        .absolute(tally.bytes_fetched);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use serde_json::json;

    use crate::manager::ReindexProgress;

    #[test]
    fn a_running_reindex_reports_its_progress_in_vaults_fields() {
        let progress = ReindexProgress::default();
        assert_eq!(
            progress.to_json(),
            json!({"reindex_in_progress": false, "last_reindex_epoch": "0"})
        );
        progress.running.store(true, Ordering::Release);
        progress.total.store(1000, Ordering::Relaxed);
        progress.scanned.store(250, Ordering::Relaxed);
        assert_eq!(
            progress.to_json(),
            json!({
                "reindex_in_progress": true,
                "reindex_stage": "building",
                "reindex_building_progress": 250,
                "reindex_building_total": 1000,
                "last_reindex_epoch": "0",
            })
        );
        // More keys than the last tree had: the total is never below what was read.
        progress.scanned.store(1200, Ordering::Relaxed);
        assert_eq!(progress.to_json()["reindex_building_total"], json!(1200));
        progress.running.store(false, Ordering::Release);
        progress.last_epoch.store(1_700_000_000, Ordering::Relaxed);
        assert_eq!(
            progress.to_json()["last_reindex_epoch"],
            json!("1700000000")
        );
    }
}
