//! The seam between the core and DR replication. Replication lives in its own crate beside the
//! barrier; the core only knows this trait: which DR mode the cluster is in, and who answers
//! `sys/replication/*`.

use std::sync::Arc;

use async_trait::async_trait;
use bunker_policy::Capability;

use crate::core::Core;
use crate::logical::{LogicalError, Request, Response, Result};
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
    async fn handle(&self, core: &Core, req: &Request, caller: Option<&Caller>)
        -> Result<Response>;

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
        _core: &Core,
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

impl Core {
    pub fn set_replication(&self, handler: Arc<dyn ReplicationHandler>) {
        *self
            .replication
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = handler;
    }

    pub(crate) fn replication_handler(&self) -> Arc<dyn ReplicationHandler> {
        Arc::clone(
            &self
                .replication
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// See [`ReplicationHandler::wal_index`].
    pub fn replication_wal_index(&self) -> Option<u64> {
        self.replication_handler().wal_index()
    }

    pub fn dr_mode(&self) -> DrMode {
        self.replication_handler().dr_mode()
    }

    /// Unseal directly with a reconstructed root key (DR promotion) and load the tables.
    pub async fn unseal_with_root_key(&self, root_key: &[u8]) -> Result<()> {
        if !self.is_sealed() && self.barrier.reload_keyring().await.is_err() {
            // Open with another cluster's key: an HA standby of a cluster that became a DR
            // secondary (the keyring in storage is the primary's now). Open it again with this.
            self.seal_core();
        }
        if self.is_sealed() {
            self.barrier.unseal(root_key).await?;
        }
        self.reload_tables().await
    }

    /// Reload everything cached from storage (after replication changed it underneath).
    pub async fn reload_tables(&self) -> Result<()> {
        if self.is_sealed() {
            return Ok(());
        }
        self.barrier.reload_keyring().await?;
        self.post_unseal().await
    }

    pub async fn verify_root_key(&self, root_key: &[u8]) -> Result<()> {
        self.barrier.verify_root_key(root_key).await.map_err(|_| {
            LogicalError::InvalidRequest("the key shares do not reconstruct the root key".into())
        })
    }

    pub fn barrier(&self) -> &Arc<bunker_barrier::Barrier> {
        &self.barrier
    }

    /// Unseal threshold of the stored seal configuration (0 when uninitialised).
    pub async fn seal_threshold(&self) -> Result<u8> {
        Ok(self
            .seal
            .config()
            .await
            .map_err(crate::core::seal_err)?
            .map(|c| c.secret_threshold)
            .unwrap_or(0))
    }

    /// Whether `token` is a DR operation batch token (Vault's "batch DR operation token"
    /// strategy): a batch token with a TTL, made on the primary and replicated here, whose
    /// policies grant `update` on `path`. Service tokens, and tokens without a TTL such as the
    /// root token, never are. Policies are read afresh: on a DR secondary they change by
    /// replication, underneath the policy cache.
    pub async fn dr_batch_token_allows(&self, token: &str, path: &str) -> Result<bool> {
        if self.is_sealed() || !token.starts_with(crate::token::BATCH_TOKEN_PREFIX) {
            return Ok(false);
        }
        let Some(entry) = self.tokens.lookup(token).await? else {
            return Ok(false);
        };
        if entry.token_type != crate::token::TokenType::Batch || entry.expire_time == 0 {
            return Ok(false);
        }
        self.policies.clear_cache();
        let acl = self.policies.acl(&entry.policies).await?;
        Ok(acl.allows(path, Capability::Update))
    }

    /// Wipe every key of the physical storage (DR secondary activation).
    pub async fn wipe_storage(&self) -> Result<()> {
        self.seal_core();
        let backend = self.barrier.backend().clone();
        loop {
            let page = backend.scan("", None, 1000).await?;
            if page.is_empty() {
                return Ok(());
            }
            let ops = page
                .into_iter()
                .map(|(key, _)| bunker_storage::Op::Delete { key })
                .collect();
            backend.batch(ops).await?;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;
    use bunker_sdk::Operation;
    use bunker_storage::InmemBackend;

    /// The root key record a rekey writes for HA standbys never leaves the cluster: it is
    /// under the prefix replication keeps local (not replicated, not restored).
    #[test]
    fn the_root_key_record_is_local_to_the_cluster() {
        assert!(bunker_wal::wal::is_local(
            bunker_barrier::ROOT_KEY_UPGRADE_PATH
        ));
    }

    /// A core nothing was wired into answers replication status as a cluster without it, to
    /// anyone (as the DR handler does), even sealed and uninitialised; it refuses the rest.
    #[tokio::test]
    async fn without_replication_the_status_says_disabled() {
        let core = Core::new(Arc::new(InmemBackend::new()), Default::default());
        assert_eq!(core.dr_mode(), DrMode::Disabled);
        let status = core
            .handle(Request::new(Operation::Read, "sys/replication/status"))
            .await
            .unwrap();
        let data = status.data.unwrap();
        assert_eq!(data["dr"]["mode"], "disabled");
        assert_eq!(data["performance"]["mode"], "disabled");
        let dr = core
            .handle(Request::new(Operation::Read, "sys/replication/dr/status"))
            .await
            .unwrap();
        assert!(dr.data_at_top_level);
        let enable = Request::new(Operation::Update, "sys/replication/dr/primary/enable");
        assert!(matches!(
            core.handle(enable).await,
            Err(LogicalError::UnsupportedPath(_))
        ));
        assert!(core
            .replication_handler()
            .answers_on_standby("sys/replication/dr/status"));
    }
}
