//! The seam between the core and DR replication, both ways. Replication lives in its own crate
//! beside the barrier; the core knows only [`ReplicationHandler`] (which DR mode the cluster is
//! in, and who answers `sys/replication/*`), and replication knows only [`DrCore`], the few
//! things it may ask of the core. Neither trait names the core's type: this file imports
//! nothing of the core, and `replication_port.rs` implements [`DrCore`] for it.

use std::time::Duration;

use async_trait::async_trait;
use zeroize::Zeroizing;

use crate::logical::{Data, LogicalError, Request, Response, Result};
use bunker_sdk::Caller;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DrMode {
    Disabled,
    Primary,
    Secondary,
}

impl DrMode {
    pub fn as_str(self) -> &'static str {
        match self {
            DrMode::Disabled => "disabled",
            DrMode::Primary => "primary",
            DrMode::Secondary => "secondary",
        }
    }
}

#[async_trait]
pub trait ReplicationHandler: Send + Sync {
    fn dr_mode(&self) -> DrMode;

    /// On a DR primary, the index of the last WAL entry committed: read right after a write
    /// is acknowledged, it bounds that write's own index from above (`X-Bunker-Wal-Index`).
    fn wal_index(&self) -> Option<u64> {
        None
    }

    /// Answer a `sys/replication/*` request. `caller` is the authenticated client token, if one
    /// was presented and could be checked (its ACL not yet applied); `None` otherwise. The
    /// handler authorizes the request itself, on the state that executes it: status reads are
    /// open, DR-secondary endpoints take key shares or a DR operation token, the others a
    /// token whose policy allows the path.
    async fn handle(
        &self,
        core: &dyn DrCore,
        req: &Request,
        caller: Option<&Caller>,
    ) -> Result<Response>;

    /// Whether an HA standby answers `path` (under `sys/replication/`) itself: the status
    /// reads, which are anyone's. Every other replication request runs on the active node.
    fn answers_on_standby(&self, path: &str) -> bool;

    /// The barrier was opened with key shares (`sys/unseal`): load what lives under it.
    async fn unsealed(&self) {}

    /// The core sealed: drop whatever was opened with the barrier. Must not block.
    fn sealed(&self) {}

    /// An HA node is taking the lock: what replication keeps in memory may be stale (another
    /// node was active); reload it from storage. Returns the mode found there.
    async fn reload(&self) -> Result<DrMode> {
        Ok(self.dr_mode())
    }

    /// The mode stored in the (shared) storage, which another node may have changed.
    async fn stored_dr_mode(&self) -> DrMode {
        self.dr_mode()
    }

    /// An HA standby: the active node may have changed the DR mode in the shared storage (a
    /// promotion, a demotion). Take the stored state as what this node reports, and return
    /// the mode. Must start and stop nothing: a standby serves no replication (taking the
    /// lock runs [`ReplicationHandler::reload`] and [`ReplicationHandler::activated`]).
    async fn refresh_standby(&self) -> DrMode {
        self.stored_dr_mode().await
    }

    /// Whether this node may hold the HA lock with its barrier sealed: a DR secondary (or one
    /// becoming it) replicates ciphertext and serves nothing behind the barrier.
    fn holds_lock_sealed(&self) -> bool {
        self.dr_mode() == DrMode::Secondary
    }

    /// An HA node took the lock: start serving (a primary its cluster port, a secondary its
    /// follower). The barrier is open, except on a DR secondary.
    async fn activated(&self) -> Result<()> {
        Ok(())
    }

    /// An HA node lost or gave up the lock: stop serving replication (a primary's cluster
    /// port, a secondary's follower). Must not block.
    fn deactivated(&self) {}

    /// Set the replication gauges (a `sys/metrics` scrape is about to render). Must not block.
    fn record_metrics(&self) {}

    /// On a DR primary, run `restore` (a snapshot restore replacing the storage) as the start
    /// of a new history: the secondaries must resync instead of resuming (see `crates/dr`).
    /// `restore` must not call back into replication.
    async fn restore_on_primary(&self, restore: RestoreFuture<'_>) -> Result<()> {
        drop(restore);
        Err(LogicalError::InvalidRequest(
            "restoring a snapshot on a DR primary is not supported by this build".into(),
        ))
    }
}

/// The handler of a core that no replication was wired into (unit tests; the binary starts
/// DR before it serves): DR is disabled, and `sys/replication/*` answers the status reads as
/// Vault does on a cluster without replication.
pub struct NoReplication;

#[async_trait]
impl ReplicationHandler for NoReplication {
    fn dr_mode(&self) -> DrMode {
        DrMode::Disabled
    }

    fn answers_on_standby(&self, path: &str) -> bool {
        matches!(path, "sys/replication/status" | "sys/replication/dr/status")
    }

    async fn handle(
        &self,
        _core: &dyn DrCore,
        req: &Request,
        _caller: Option<&Caller>,
    ) -> Result<Response> {
        let rest = req.path.strip_prefix("sys/replication/").unwrap_or("");
        if req.operation != bunker_sdk::Operation::Read {
            return Err(LogicalError::UnsupportedPath(req.path.clone()));
        }
        let disabled = serde_json::json!({"mode": "disabled"});
        match rest {
            "status" => {
                let mut data = crate::logical::Data::new();
                data.insert("dr".into(), disabled.clone());
                data.insert("performance".into(), disabled);
                Ok(Response::data(data))
            }
            "dr/status" | "performance/status" => {
                let mut resp = Response::from_serialize(&disabled)?;
                resp.data_at_top_level = true;
                Ok(resp)
            }
            _ => Err(LogicalError::UnsupportedPath(req.path.clone())),
        }
    }
}

/// What [`ReplicationHandler::restore_on_primary`] runs.
pub type RestoreFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + Send + 'a>>;

/// The few things DR asks of the core, as one narrow trait: everything else of the core is out
/// of DR's reach. The DR runtime holds a `dyn DrCore`; the only implementation is the core's
/// (`replication_port.rs`).
#[async_trait]
pub trait DrCore: Send + Sync {
    fn is_sealed(&self) -> bool;
    /// Whether this node serves: always without HA; only while it holds the lock with it.
    fn is_active_node(&self) -> bool;
    /// With HA, the epoch of the lock this node holds, also while it is becoming active
    /// (`None` without HA, or when it holds none).
    fn held_epoch(&self) -> Option<u64>;
    /// Whether this node may write: always without HA; while it holds the lock with it.
    fn holds_lock(&self) -> bool;
    /// With HA, write this node's advertisement again (after a mode change made it serve).
    async fn readvertise(&self);
    /// The cluster addresses of this cluster's nodes (all HA nodes), for secondaries.
    async fn cluster_addrs(&self) -> Vec<String>;
    /// Unseal threshold of the (replicated) seal configuration; 0 when uninitialised.
    async fn seal_threshold(&self) -> Result<u8>;
    /// Whether `root_key` opens the stored keyring (a key-share ceremony's result).
    async fn verify_root_key(&self, root_key: &[u8]) -> Result<()>;
    /// Open the barrier with a root key (promotion, an encrypted activation bundle).
    async fn unseal_with_root_key(&self, root_key: &[u8]) -> Result<()>;
    /// Reload everything cached from storage after replication changed it underneath.
    async fn reload_tables(&self) -> Result<()>;
    /// Reload the barrier keyring (the primary rotated its key).
    async fn reload_keyring(&self) -> Result<()>;
    /// Delete every key of the physical storage (a cluster becoming a secondary).
    async fn wipe_storage(&self) -> Result<()>;
    /// The root key of an unsealed barrier, for a bundle encrypted to a secondary's own key.
    fn root_key(&self) -> Result<Zeroizing<Vec<u8>>>;
    /// Encrypt a standalone blob with the barrier (fails while sealed).
    fn barrier_encrypt(&self, aad: &str, plaintext: &[u8]) -> Result<Vec<u8>>;
    /// Decrypt a blob made by [`DrCore::barrier_encrypt`] with the same `aad`.
    fn barrier_decrypt(&self, aad: &str, ciphertext: &[u8]) -> Result<Vec<u8>>;
    /// Store `data` in a single-use response-wrapping token.
    async fn wrap_data(&self, data: Data, ttl: Duration, creation_path: &str) -> Result<Response>;
    /// Whether `token` is a batch DR operation token allowed on `path`.
    async fn dr_batch_token_allows(&self, token: &str, path: &str) -> Result<bool>;
}
