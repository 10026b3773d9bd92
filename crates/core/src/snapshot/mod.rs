//! Snapshots of the whole storage, as stored (ciphertext), behind Vault's
//! `sys/storage/raft/snapshot` endpoints: save streams the storage's consistent snapshot
//! ([`bunker_storage::Backend::snapshot`]) through the file format of `bunker_snapshot`; restore
//! (`restore.rs`) checks a whole file before it changes anything.
//!
//! The HTTP layer moves the bytes; the core decides who may: [`Core::authorize_snapshot`] runs
//! the request pipeline (token, ACL with sudo, audit) on the request without its body, before
//! the body is read, and hands out the [`SnapshotPermit`] that save and restore require.

mod progress;
mod restore;

use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bunker_snapshot::{Encoder, SnapshotMeta};
use bunker_storage::{SnapshotPage, SnapshotSink, StorageError};
use tokio::sync::mpsc;

use crate::core::Core;
use crate::logical::{BackendRequest, LogicalError, Operation, Request, Response, Result};
use crate::replication_hook::DrMode;

pub use progress::{RestoreProgress, RestoreStage};
pub use restore::RESTORE_MARKER_PATH;

/// Vault's paths (relative to `sys/`).
pub const SNAPSHOT_PATH: &str = "storage/raft/snapshot";
pub const SNAPSHOT_FORCE_PATH: &str = "storage/raft/snapshot-force";
/// Bunker's: what the current or last restore is doing (Vault has no such endpoint).
pub const RESTORE_STATUS_PATH: &str = "storage/raft/snapshot-restore-status";

/// Replication's keys: this cluster's WAL and DR state. Saved as everything else, never
/// restored: a restore starts a new history.
use bunker_wal::wal::{LOCAL_PREFIX as REPLICATION_PREFIX, WAL_LAST_KEY};

/// Proof that a snapshot request was authorised (or is the server's own scheduled snapshot).
#[derive(Debug)]
pub struct SnapshotPermit {
    /// Granted without a token because the server was not initialised: the restore must find
    /// it still uninitialised (an operator may have run `sys/init` while the body uploaded).
    pub(crate) uninitialised_only: bool,
}

/// What the HTTP layer asks of a snapshot endpoint, once authorised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotAction {
    Save,
    Restore { force: bool },
}

impl Core {
    /// Authorises a snapshot request, without its body: sudo on the path, as every root path.
    /// A restore into a server that is not initialised needs no token: whoever can reach such
    /// a server can initialise it anyway.
    pub async fn authorize_snapshot(
        &self,
        req: Request,
    ) -> Result<(SnapshotAction, SnapshotPermit)> {
        let action = match (req.path.trim_start_matches('/'), req.operation) {
            ("sys/storage/raft/snapshot", Operation::Read) => SnapshotAction::Save,
            ("sys/storage/raft/snapshot", Operation::Update) => {
                SnapshotAction::Restore { force: false }
            }
            ("sys/storage/raft/snapshot-force", Operation::Update) => {
                SnapshotAction::Restore { force: true }
            }
            _ => return Err(LogicalError::UnsupportedOperation),
        };
        let fresh = matches!(action, SnapshotAction::Restore { .. })
            && self.dr_mode() == DrMode::Disabled
            && !self.is_initialized().await?;
        if !fresh {
            self.handle(req).await?;
        }
        Ok((
            action,
            SnapshotPermit {
                uninitialised_only: fresh,
            },
        ))
    }

    /// The permit of the server's scheduled snapshots: only on an active, unsealed node.
    pub fn scheduled_snapshot_permit(&self) -> Option<SnapshotPermit> {
        (!self.is_sealed() && self.is_active_node()).then_some(SnapshotPermit {
            uninitialised_only: false,
        })
    }

    /// `sys/storage/raft/snapshot*` reached through the request pipeline: only from
    /// [`Core::authorize_snapshot`], which has checked the token; the work is done by the
    /// caller, with the body the pipeline never sees.
    pub(crate) fn sys_storage(&self, req: &BackendRequest<'_>, rest: &str) -> Result<Response> {
        match (rest, req.operation) {
            ("raft/snapshot-restore-status", Operation::Read) => self.restore_status(),
            ("raft/snapshot", Operation::Read | Operation::Update)
            | ("raft/snapshot-force", Operation::Update) => Ok(Response::empty()),
            _ => Err(LogicalError::UnsupportedPath(req.full_path())),
        }
    }

    /// What the current or last restore is doing (sudo, as the restore; open to anyone on a
    /// server that is not initialised, where anyone may restore).
    pub(crate) fn restore_status(&self) -> Result<Response> {
        match self.restore_progress.to_json() {
            serde_json::Value::Object(data) => Ok(Response::data(data)),
            _ => Err(LogicalError::Internal(
                "restore status is not an object".into(),
            )),
        }
    }

    /// The record the HTTP layer updates while it reads a restore's upload.
    pub fn restore_progress(&self) -> &RestoreProgress {
        &self.restore_progress
    }

    /// Streams a snapshot of the whole storage into `out`, a frame at a time. Memory holds a
    /// storage page and its frame; a slow reader slows the storage read (the channel is
    /// bounded). Fails if the reader goes away.
    pub async fn snapshot_save(
        &self,
        _permit: &SnapshotPermit,
        out: mpsc::Sender<Vec<u8>>,
    ) -> Result<()> {
        if self.is_sealed() {
            return Err(LogicalError::Sealed);
        }
        let created_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut sink = FrameSink {
            encoder: Encoder::new(),
            out,
            wal_index: None,
            tree: bunker_wal::merkle::TreeBuilder::new(),
        };
        sink.send(Encoder::header()).await?;
        self.barrier.backend().snapshot(&mut sink).await?;
        let meta = SnapshotMeta {
            cluster_id: self.cluster_id(),
            storage_type: self.config.storage_type.clone(),
            created_unix,
            wal_index: sink.wal_index,
            merkle_root: None,
        };
        let FrameSink {
            encoder, out, tree, ..
        } = sink;
        // The DR Merkle root of the replicated keys, computed from the pages as they went by:
        // what `dr/status` shows for this state on a DR cluster.
        let meta = SnapshotMeta {
            merkle_root: Some(tree.finish().0.root_hex()),
            ..meta
        };
        let trailer = encoder.finish(meta).map_err(snapshot_error)?;
        out.send(trailer).await.map_err(|_| reader_gone())?;
        tracing::info!(created_unix, "snapshot saved");
        Ok(())
    }
}

/// Encodes storage pages as parts and sends them on.
struct FrameSink {
    encoder: Encoder,
    out: mpsc::Sender<Vec<u8>>,
    wal_index: Option<u64>,
    /// Pages arrive in key order, as the tree wants them.
    tree: bunker_wal::merkle::TreeBuilder,
}

impl FrameSink {
    async fn send(&self, frame: Vec<u8>) -> std::result::Result<(), StorageError> {
        self.out.send(frame).await.map_err(|_| StorageError::Closed)
    }
}

#[async_trait]
impl SnapshotSink for FrameSink {
    async fn page(&mut self, mut entries: SnapshotPage) -> std::result::Result<(), StorageError> {
        // The rekey record (the root key under a term, for HA standbys) stays in the cluster:
        // a snapshot file outlives the rotation that retires the term it is under.
        entries.retain(|(key, _)| key != bunker_barrier::ROOT_KEY_UPGRADE_PATH);
        if entries.is_empty() {
            return Ok(());
        }
        for (key, value) in entries.iter() {
            self.tree.add(key, value);
        }
        if let Some((_, value)) = entries.iter().find(|(key, _)| key == WAL_LAST_KEY) {
            self.wal_index = <[u8; 8]>::try_from(value.as_slice())
                .ok()
                .map(u64::from_be_bytes);
        }
        let frame = self
            .encoder
            .part(&entries)
            .map_err(|e| StorageError::Engine {
                context: "encoding a snapshot part".into(),
                message: e.to_string(),
            })?;
        self.send(frame).await
    }
}

fn reader_gone() -> LogicalError {
    LogicalError::Internal("the snapshot's reader went away".into())
}

fn snapshot_error(e: bunker_snapshot::SnapshotError) -> LogicalError {
    match e {
        bunker_snapshot::SnapshotError::Invalid(m) => {
            LogicalError::InvalidRequest(format!("invalid snapshot: {m}"))
        }
        other => LogicalError::Internal(other.to_string()),
    }
}
