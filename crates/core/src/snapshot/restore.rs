//! Restoring a snapshot file over this server's storage.
//!
//! Order: refuse on DR secondaries (and forced restores on DR primaries); check the whole file
//! (every checksum, key order, the manifest) before anything changes; check that the
//! snapshot's keyring opens with this server's root key unless forced; then replace the
//! storage's contents with the snapshot's.
//!
//! On a DR primary the replacement runs inside replication's restore window
//! ([`crate::replication_hook::ReplicationHandler::restore_on_primary`]): a new history
//! (generation) starts, so every secondary resyncs by Merkle diff instead of resuming.
//!
//! - **One atomic batch** when the change (puts and deletes) fits the storage's batch limits:
//!   all or nothing, and the server keeps serving throughout.
//! - **Staged** otherwise: the server is sealed first, a marker is written, the change is
//!   applied in batches, and the marker is removed in the last one. A staged restore that
//!   fails leaves the marker, and the server refuses to unseal until a restore completes
//!   (restoring the same file again finishes the job): it is never served half restored.
//!
//! Afterwards a server that was not initialised is initialised and sealed (unseal with the
//! snapshot's keys); a forced restore seals (the keyring may be another cluster's); a restore
//! of this cluster's snapshot reloads the keyring and tables and stays unsealed.

use std::collections::BTreeSet;

use bunker_storage::limits::MAX_BATCH_OPS;
use bunker_storage::Op;

use super::{snapshot_error, SnapshotPermit, REPLICATION_PREFIX};
use crate::core::Core;
use crate::logical::{LogicalError, Result};
use crate::replication_hook::DrMode;

/// Plaintext marker of a staged restore in progress.
pub const RESTORE_MARKER_PATH: &str = "core/snapshot-restore";
/// Largest change applied as one batch (keys and values).
const ONE_BATCH_BYTES: usize = 32 * 1024 * 1024;
/// Ops per batch of a staged restore.
const STAGE_OPS: usize = 1024;

/// What a snapshot holds, read into storage operations.
struct Plan {
    puts: Vec<Op>,
    deletes: Vec<Op>,
    bytes: usize,
}

impl Core {
    /// Replaces the storage with the snapshot in `file` (see the module documentation).
    pub async fn snapshot_restore(
        &self,
        _permit: &SnapshotPermit,
        file: &[u8],
        force: bool,
    ) -> Result<()> {
        match (self.dr_mode(), force) {
            (DrMode::Disabled, _) | (DrMode::Primary, false) => {}
            (DrMode::Primary, true) => {
                return Err(LogicalError::InvalidRequest(
                    "a forced restore (another cluster's keys) is not supported on a DR \
                     primary: its secondaries could not follow the new keys; disable \
                     replication first (docs/snapshots.md)"
                        .into(),
                ))
            }
            (DrMode::Secondary, _) => {
                return Err(LogicalError::InvalidRequest(
                    "a DR secondary holds its primary's data: restore the snapshot on the \
                     primary, and this cluster follows (docs/snapshots.md)"
                        .into(),
                ))
            }
        }
        let Ok(_guard) = self.snapshot_restore_lock.try_lock() else {
            return Err(LogicalError::InvalidRequest(
                "a snapshot restore is already running".into(),
            ));
        };
        let manifest = bunker_snapshot::verify(file).map_err(snapshot_error)?;
        let plan = self.plan(file).await?;
        let keyring = plan.puts.iter().find_map(|op| match op {
            Op::Put { key, value } if key == bunker_barrier::KEYRING_PATH => Some(value),
            _ => None,
        });
        let Some(keyring) = keyring else {
            return Err(LogicalError::InvalidRequest(
                "invalid snapshot: it holds no keyring (not a snapshot of an initialised server)"
                    .into(),
            ));
        };
        let initialized = self.is_initialized().await?;
        if initialized && !force && self.barrier.check_keyring(keyring).is_err() {
            return Err(LogicalError::InvalidRequest(
                "the snapshot's keyring does not open with this server's root key (a snapshot \
                 of another cluster, or from before a rekey); use snapshot-force to restore it \
                 anyway, then unseal with the snapshot's keys"
                    .into(),
            ));
        }
        let ops = plan.puts.len() + plan.deletes.len();
        let one_batch = ops < MAX_BATCH_OPS && plan.bytes <= ONE_BATCH_BYTES;
        tracing::info!(
            entries = manifest.entries,
            snapshot_cluster_id = %manifest.meta.cluster_id,
            force,
            one_batch,
            "restoring a snapshot"
        );
        let root_key = if one_batch || force || !initialized {
            None
        } else {
            Some(self.barrier.root_key()?)
        };
        let apply = async move {
            if one_batch {
                let mut all = plan.puts;
                all.extend(plan.deletes);
                self.barrier.backend().batch(all).await?;
            } else {
                self.seal_core();
                self.apply_staged(plan).await?;
            }
            Ok(())
        };
        // The mode again, as it is now: replication re-checks it under its own lock.
        match (self.dr_mode(), self.replication_handler()) {
            (DrMode::Disabled, _) => apply.await?,
            (DrMode::Primary, Some(replication)) => {
                replication.restore_on_primary(Box::pin(apply)).await?
            }
            _ => {
                return Err(LogicalError::InvalidRequest(
                    "the DR mode changed while the snapshot was read: nothing was restored".into(),
                ))
            }
        }
        if !initialized || force {
            self.seal_core();
            tracing::info!("snapshot restored; sealed: unseal with the snapshot's keys");
            return Ok(());
        }
        self.teardown();
        let reloaded = match root_key {
            Some(key) => self.unseal_with_root_key(&key).await,
            None => self.reload_tables().await,
        };
        if let Err(e) = reloaded {
            self.seal_core();
            return Err(LogicalError::Internal(format!(
                "snapshot restored, but loading it failed and the server is sealed: {e}"
            )));
        }
        tracing::info!("snapshot restored");
        Ok(())
    }

    /// The snapshot's entries as puts, and deletes of every current key it does not hold.
    /// Replication's keys are neither written nor deleted.
    async fn plan(&self, file: &[u8]) -> Result<Plan> {
        let mut puts = Vec::new();
        let mut bytes = 0usize;
        let mut keys = BTreeSet::new();
        bunker_snapshot::read_snapshot(file, |part| {
            for (key, value) in part {
                if key.starts_with(REPLICATION_PREFIX) || key == RESTORE_MARKER_PATH {
                    continue;
                }
                bytes = bytes.saturating_add(key.len() + value.len());
                keys.insert(key.clone());
                puts.push(Op::Put { key, value });
            }
            Ok(())
        })
        .map_err(snapshot_error)?;
        let backend = self.barrier.backend();
        let mut deletes = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = backend.scan("", after.as_deref(), STAGE_OPS).await?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            for (key, _) in page {
                let keep = key.starts_with(REPLICATION_PREFIX) || key == RESTORE_MARKER_PATH;
                if !keep && !keys.contains(&key) {
                    bytes = bytes.saturating_add(key.len());
                    deletes.push(Op::Delete { key });
                }
            }
        }
        Ok(Plan {
            puts,
            deletes,
            bytes,
        })
    }

    /// A restore too large for one batch: marker, batches, marker removed with the last.
    async fn apply_staged(&self, plan: Plan) -> Result<()> {
        let backend = self.barrier.backend();
        backend
            .put(RESTORE_MARKER_PATH, b"{\"state\":\"restoring\"}".to_vec())
            .await?;
        let mut ops = plan.puts;
        ops.extend(plan.deletes);
        ops.push(Op::Delete {
            key: RESTORE_MARKER_PATH.into(),
        });
        let mut rest = ops.as_slice();
        while !rest.is_empty() {
            let (batch, tail) = rest.split_at(rest.len().min(STAGE_OPS));
            backend.batch(batch.to_vec()).await?;
            rest = tail;
        }
        Ok(())
    }

    /// Refuses to unseal over a staged restore that did not finish.
    pub(crate) async fn check_no_partial_restore(&self) -> Result<()> {
        if self
            .barrier
            .backend()
            .get(RESTORE_MARKER_PATH)
            .await?
            .is_some()
        {
            return Err(LogicalError::InvalidRequest(
                "a snapshot restore did not complete: restore the snapshot again before \
                 unsealing"
                    .into(),
            ));
        }
        Ok(())
    }
}
