//! The core's side of the replication seam (`replication_hook.rs`): how it holds its
//! replication handler, and what it offers replication through [`DrCore`].

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bunker_policy::Capability;
use zeroize::Zeroizing;

use crate::core::Core;
use crate::logical::{Data, LogicalError, Response, Result};
use crate::replication_hook::{DrCore, DrMode, ReplicationHandler};

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

#[async_trait]
impl DrCore for Core {
    fn is_sealed(&self) -> bool {
        Core::is_sealed(self)
    }

    fn is_active_node(&self) -> bool {
        Core::is_active_node(self)
    }

    fn held_epoch(&self) -> Option<u64> {
        self.ha().and_then(|ha| ha.held_epoch())
    }

    fn holds_lock(&self) -> bool {
        self.ha().is_none_or(|ha| ha.held_epoch().is_some())
    }

    async fn readvertise(&self) {
        Core::readvertise(self).await;
    }

    async fn cluster_addrs(&self) -> Vec<String> {
        Core::cluster_addrs(self).await
    }

    async fn seal_threshold(&self) -> Result<u8> {
        Core::seal_threshold(self).await
    }

    async fn verify_root_key(&self, root_key: &[u8]) -> Result<()> {
        Core::verify_root_key(self, root_key).await
    }

    async fn unseal_with_root_key(&self, root_key: &[u8]) -> Result<()> {
        Core::unseal_with_root_key(self, root_key).await
    }

    async fn reload_tables(&self) -> Result<()> {
        Core::reload_tables(self).await
    }

    async fn reload_keyring(&self) -> Result<()> {
        Ok(self.barrier().reload_keyring().await?)
    }

    async fn wipe_storage(&self) -> Result<()> {
        Core::wipe_storage(self).await
    }

    fn root_key(&self) -> Result<Zeroizing<Vec<u8>>> {
        Ok(self.barrier().root_key()?)
    }

    fn barrier_encrypt(&self, aad: &str, plaintext: &[u8]) -> Result<Vec<u8>> {
        Ok(self.barrier().encrypt(aad, plaintext)?)
    }

    fn barrier_decrypt(&self, aad: &str, ciphertext: &[u8]) -> Result<Vec<u8>> {
        Ok(self.barrier().decrypt(aad, ciphertext)?)
    }

    async fn wrap_data(&self, data: Data, ttl: Duration, creation_path: &str) -> Result<Response> {
        Core::wrap_data(self, data, ttl, creation_path).await
    }

    async fn dr_batch_token_allows(&self, token: &str, path: &str) -> Result<bool> {
        Core::dr_batch_token_allows(self, token, path).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;
    use crate::logical::Request;
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
