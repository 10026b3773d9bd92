//! Restoring a snapshot file over this server's storage.
//!
//! Order: refuse on DR secondaries (and forced restores on DR primaries); check the whole file
//! (every checksum, key order, the manifest) before anything changes; check that the
//! snapshot's keyring opens with this server's root key unless forced; then replace the
//! storage's contents with the snapshot's.
//!
//! The keyring written is the snapshot's plus the current keyring's newer terms
//! ([`bunker_barrier::Barrier::keyring_for_restore`]): a snapshot from before a `sys/rotate`
//! must not make a retired key active again, nor strand what the newer terms encrypted (a DR
//! primary's own keys, writes racing the restore).
//!
//! On a DR primary the replacement runs inside replication's restore window
//! ([`crate::replication_hook::ReplicationHandler::restore_on_primary`]): a new history
//! (generation) starts, so every secondary resyncs by Merkle diff instead of resuming.
//!
//! The change (puts and deletes) is **one transaction** whatever its size
//! ([`bunker_storage::Backend::batch_unbounded`]: one redb write transaction, one PostgreSQL
//! transaction of several statements): all or nothing, a failed restore leaves the server as it
//! was, and the server keeps serving the old data until the new is committed. It holds the
//! change in memory, bounded by the upload's own bound (`max_snapshot_size`).
//!
//! Earlier versions applied large restores in stages behind a marker; a server that still holds
//! that marker (a staged restore that did not finish) refuses to unseal until a restore
//! completes.
//!
//! Afterwards a server that was not initialised is initialised and sealed (unseal with the
//! snapshot's keys); a forced restore seals (the keyring may be another cluster's); a restore
//! of this cluster's snapshot reloads the keyring and tables and stays unsealed.

use std::collections::BTreeSet;

use bunker_storage::Op;

use std::sync::atomic::Ordering;

use super::progress::Counting;
use super::{snapshot_error, RestoreStage, SnapshotPermit, REPLICATION_PREFIX};
use crate::core::Core;
use crate::logical::{LogicalError, Result};
use crate::replication_hook::DrMode;

/// Plaintext marker of a staged restore in progress (written by earlier versions).
pub const RESTORE_MARKER_PATH: &str = "core/snapshot-restore";
/// Keys read per page when listing what the restore deletes.
const SCAN_PAGE: usize = 1024;

/// What a snapshot holds, read into storage operations.
struct Plan {
    puts: Vec<Op>,
    deletes: Vec<Op>,
    bytes: usize,
}

impl Core {
    /// Replaces the storage with the snapshot in `file` (see the module documentation). On an
    /// HA node it runs as a request does: under the gate a step-down waits for, its writes
    /// tagged with the lock epoch it started under.
    pub async fn snapshot_restore(
        &self,
        permit: &SnapshotPermit,
        file: &[u8],
        force: bool,
    ) -> Result<()> {
        let progress = &self.restore_progress;
        progress.received(file.len() as u64);
        let result = match self.ha() {
            Some(ha) => {
                self.handle_gated(ha, self.restore_ungated(permit, file, force))
                    .await
            }
            None => self.restore_ungated(permit, file, force).await,
        };
        progress.finish(result.as_ref().map(|_| ()).map_err(ToString::to_string));
        result
    }

    async fn restore_ungated(
        &self,
        permit: &SnapshotPermit,
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
        let progress = &self.restore_progress;
        progress.stage(RestoreStage::Checking, Some(file.len() as u64));
        let manifest = bunker_snapshot::verify(Counting {
            inner: file,
            read: progress.counter(),
        })
        .map_err(snapshot_error)?;
        progress.entries(manifest.entries);
        let mut plan = self.plan(file).await?;
        let keyring = plan.puts.iter_mut().find_map(|op| match op {
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
        if initialized && permit.uninitialised_only {
            return Err(LogicalError::PermissionDenied);
        }
        // Held from computing the keyring written until it is loaded (or, for a forced restore,
        // until the server sealed): no rotation or rekey writes a keyring between. Lock order:
        // this, then replication's state lock (taken by `restore_on_primary`); nothing that
        // holds the state lock waits for the keyring.
        let held_keyring = if initialized {
            Some(self.barrier.hold_keyring().await)
        } else {
            None
        };
        if let (Some(held), false) = (&held_keyring, force) {
            let restored = match self.barrier.keyring_for_restore(held, keyring) {
                Ok(restored) => restored,
                Err(bunker_barrier::BarrierError::InvalidRootKey) => {
                    return Err(LogicalError::InvalidRequest(
                        "the snapshot's keyring does not open with this server's root key (a \
                         snapshot of another cluster, or from before a rekey); use \
                         snapshot-force to restore it anyway, then unseal with the snapshot's \
                         keys"
                            .into(),
                    ))
                }
                Err(e @ bunker_barrier::BarrierError::Corrupt { .. }) => {
                    return Err(LogicalError::InvalidRequest(format!(
                        "invalid snapshot: {e}"
                    )))
                }
                Err(e) => return Err(e.into()),
            };
            if restored.forgets_term {
                if self.dr_mode() == DrMode::Primary {
                    return Err(LogicalError::InvalidRequest(
                        "the snapshot's keyring holds one of this cluster's key terms with \
                         another key, or lacks it (a history that diverged after an earlier \
                         restore): the DR primary's own keys could not be opened after it; \
                         disable replication to restore it"
                            .into(),
                    ));
                }
                tracing::warn!(
                    "the snapshot's keyring lacks one of this cluster's key terms or holds it \
                     with another key: what only that key encrypted will not open"
                );
            }
            if !restored.kept_terms.is_empty() {
                tracing::info!(
                    kept_terms = ?restored.kept_terms,
                    "the snapshot predates key rotations: their terms are kept"
                );
            }
            *keyring = restored.record;
        }
        tracing::info!(
            entries = manifest.entries,
            snapshot_cluster_id = %manifest.meta.cluster_id,
            force,
            puts = plan.puts.len(),
            deletes = plan.deletes.len(),
            bytes = plan.bytes,
            "restoring a snapshot"
        );
        let operations = (plan.puts.len() + plan.deletes.len() + 1) as u64;
        progress.stage(RestoreStage::Applying, Some(operations));
        crate::failpoint::hold("snapshot-restore-before-apply").await;
        let apply = async move {
            let mut all = plan.puts;
            all.extend(plan.deletes);
            // A marker left by an earlier version's staged restore goes with the rest.
            all.push(Op::Delete {
                key: RESTORE_MARKER_PATH.into(),
            });
            // Another cluster's keyring (forced, or onto a new server): this cluster's rekey
            // record names a root key that no longer opens anything, and a later rotation
            // must not write the restored cluster's root key into one.
            if force || !initialized {
                all.push(Op::Delete {
                    key: bunker_barrier::ROOT_KEY_UPGRADE_PATH.into(),
                });
            }
            self.barrier.backend().batch_unbounded(all).await?;
            progress.counter().store(operations, Ordering::Relaxed);
            Ok(())
        };
        // The mode again, as it is now: replication re-checks it under its own lock.
        match self.dr_mode() {
            DrMode::Disabled => apply.await?,
            DrMode::Primary => {
                let replication = self.replication_handler();
                replication.restore_on_primary(Box::pin(apply)).await?
            }
            DrMode::Secondary => {
                return Err(LogicalError::InvalidRequest(
                    "the DR mode changed while the snapshot was read: nothing was restored".into(),
                ))
            }
        }
        if !initialized || force {
            // Sealed before the keyring is let go: nothing rotates the replaced keyring.
            self.seal_core();
            drop(held_keyring);
            tracing::info!("snapshot restored; sealed: unseal with the snapshot's keys");
            return Ok(());
        }
        // The keyring in memory becomes the one just committed while it is still held: a
        // rotation or rekey queued meanwhile starts from it, never from the one replaced.
        if let Some(held) = &held_keyring {
            if let Err(e) = self.barrier.reload_keyring_held(held).await {
                self.seal_core();
                drop(held_keyring);
                return Err(LogicalError::Internal(format!(
                    "snapshot restored, but loading its keyring failed and the server is \
                     sealed: {e}"
                )));
            }
        }
        drop(held_keyring);
        progress.stage(RestoreStage::Reloading, None);
        self.teardown();
        let reloaded = self.reload_tables().await;
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
        let progress = &self.restore_progress;
        progress.stage(RestoreStage::Reading, Some(file.len() as u64));
        let counted = Counting {
            inner: file,
            read: progress.counter(),
        };
        bunker_snapshot::read_snapshot(counted, |part| {
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
        progress.stage(RestoreStage::Listing, None);
        loop {
            let page = backend.scan("", after.as_deref(), SCAN_PAGE).await?;
            progress
                .counter()
                .fetch_add(page.len() as u64, Ordering::Relaxed);
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
