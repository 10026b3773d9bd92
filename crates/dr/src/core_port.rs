//! The few things DR asks of the core, as one narrow trait: everything else of the core is out
//! of DR's reach. The runtime holds a `dyn DrCore`; the only implementation is for
//! [`bunker_core::Core`], here, so this file is the whole of DR's dependence on the core's
//! behaviour (its request and response types aside).

use std::time::Duration;

use async_trait::async_trait;
use bunker_core::Core;
use bunker_sdk::{Data, Response, Result};
use zeroize::Zeroizing;

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
