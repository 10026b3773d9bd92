//! The `Core` ties the layers together: barrier and seal below, mounts, tokens and policies
//! above. It owns the post-unseal setup (mount table, audit devices) and the pre-seal teardown.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use bunker_barrier::Barrier;
use bunker_seal::Seal;
use bunker_storage::StorageMetrics;
use serde::{Deserialize, Serialize};
use serde_json::Map;
use zeroize::Zeroizing;

use crate::audit::AuditBroker;
use crate::logical::{BackendFactory, LogicalError, Result, StorageView};
use crate::mounts::{
    MountEntry, Mounted, Router, StoredMountTable, SystemTtls, AUTH_TABLE_PATH, MOUNT_TABLE_PATH,
};
use crate::policy_store::PolicyStore;
use crate::token::{Revoker, TokenEntry, TokenStore};
use bunker_seal::OtpTokenCeremony;

const CLUSTER_INFO_PATH: &str = "core/cluster-info";

/// Settings the server passes to the core.
#[derive(Clone, Debug)]
pub struct CoreConfig {
    pub cluster_name: String,
    pub api_addr: String,
    pub cluster_addr: String,
    /// Storage type shown in seal-status (`inmem`, `embedded`).
    pub storage_type: String,
    /// How often usage gauges (the token count) are recomputed (`telemetry.usage_gauge_period`).
    pub usage_gauge_period: std::time::Duration,
    /// The server's `default_lease_ttl` and `max_lease_ttl`.
    pub lease_ttls: SystemTtls,
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            cluster_name: String::new(),
            api_addr: "http://127.0.0.1:8200".into(),
            cluster_addr: String::new(),
            storage_type: "inmem".into(),
            usage_gauge_period: crate::sys::DEFAULT_USAGE_GAUGE_PERIOD,
            lease_ttls: SystemTtls::default(),
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct ClusterInfo {
    pub cluster_id: String,
    pub cluster_name: String,
}

/// What `sys/init` hands back.
pub struct InitResult {
    pub keys: Vec<Zeroizing<Vec<u8>>>,
    pub root_token: String,
}

pub struct Core {
    pub(crate) config: CoreConfig,
    pub(crate) barrier: Arc<Barrier>,
    pub(crate) seal: Seal,
    pub(crate) policies: PolicyStore,
    pub(crate) tokens: Arc<TokenStore>,
    /// Revokes tokens with their cubbyholes (shared with the token backend).
    pub(crate) revoker: Revoker,
    pub(crate) audit: AuditBroker,
    /// The mounts of the mount tables. Shared with the revoker, which finds the cubbyhole
    /// mount in it.
    pub(crate) router: Arc<RwLock<Router>>,
    /// The mounts built into the core (the system backend at `sys/`, the token auth method at
    /// `auth/token/`): routed like any mount, but not in the mount tables, so seal, load,
    /// persist and remount never touch them.
    pub(crate) builtin_mounts: Vec<Mounted>,
    pub(crate) factories: RwLock<HashMap<String, Arc<dyn BackendFactory>>>,
    /// Factories of auth method types (`userpass`, `approle`), mounted under `auth/`.
    pub(crate) auth_factories: RwLock<HashMap<String, Arc<dyn BackendFactory>>>,
    pub(crate) root_generation: Mutex<Option<OtpTokenCeremony>>,
    /// Serialises changes to the mount and audit tables.
    pub(crate) table_lock: tokio::sync::Mutex<()>,
    /// Makes read-then-revoke of a wrapping token atomic (single use).
    pub(crate) wrapping_lock: tokio::sync::Mutex<()>,
    pub(crate) cluster: RwLock<ClusterInfo>,
    pub(crate) replication: RwLock<Arc<dyn crate::replication_hook::ReplicationHandler>>,
    pub(crate) requests_total: std::sync::atomic::AtomicU64,
    pub(crate) metrics_renderer: RwLock<Option<Arc<dyn crate::sys::MetricsRenderer>>>,
    pub(crate) token_count_cache: Mutex<Option<(std::time::Instant, u64)>>,
    /// Set when the storage is shared by an HA cluster.
    pub(crate) ha: std::sync::OnceLock<Arc<crate::ha::Ha>>,
    /// Mount moves done since start, for `sys/remount/status`.
    pub(crate) migrations: crate::sys::Migrations,
    /// One snapshot restore at a time (each holds a whole file in memory).
    pub(crate) snapshot_restore_lock: tokio::sync::Mutex<()>,
    /// The current or last restore, for `sys/storage/raft/snapshot-restore-status`.
    pub(crate) restore_progress: crate::snapshot::RestoreProgress,
}

impl Core {
    pub fn config(&self) -> &CoreConfig {
        &self.config
    }

    /// The system's default and maximum lease TTLs.
    pub(crate) fn lease_ttls(&self) -> &SystemTtls {
        &self.config.lease_ttls
    }

    /// Register the factory for a mount type (`kv`, `cubbyhole`, ...).
    pub fn register_backend(&self, kind: &str, factory: Arc<dyn BackendFactory>) {
        {
            let mut f = self
                .factories
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            f.insert(kind.to_owned(), factory);
        }
    }

    /// Register the factory for an auth method type (`userpass`, `approle`, ...).
    pub fn register_auth_backend(&self, kind: &str, factory: Arc<dyn BackendFactory>) {
        self.auth_factories
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(kind.to_owned(), factory);
    }

    pub fn is_sealed(&self) -> bool {
        self.barrier.is_sealed()
    }

    pub async fn is_initialized(&self) -> Result<bool> {
        Ok(self.seal.config().await.map_err(seal_err)?.is_some())
    }

    pub fn storage_metrics(&self) -> StorageMetrics {
        self.barrier.backend().metrics()
    }

    pub fn cluster_id(&self) -> String {
        self.cluster
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .cluster_id
            .clone()
    }

    /// Initialise: generate the root key and its shares, write the initial tables and the root
    /// token, and leave the core sealed (as Vault does).
    pub async fn initialize(
        &self,
        shares: u8,
        threshold: u8,
        root_token_id: Option<String>,
    ) -> Result<InitResult> {
        // In an HA cluster the writes below need the lock, like any other write. An initialised
        // cluster is refused first, so anonymous calls cannot take the lock.
        if self.ha().is_some() && self.is_initialized().await? {
            return Err(LogicalError::InvalidRequest(
                "Vault is already initialized".into(),
            ));
        }
        let ha_epoch = match self.ha() {
            Some(ha) => Some(ha.lock_for_init().await?),
            None => None,
        };
        let result = self
            .initialize_locked(shares, threshold, root_token_id)
            .await;
        if let (Some(ha), Some(epoch)) = (self.ha(), ha_epoch) {
            ha.unlock_after_init(epoch).await;
        }
        result
    }

    async fn initialize_locked(
        &self,
        shares: u8,
        threshold: u8,
        root_token_id: Option<String>,
    ) -> Result<InitResult> {
        let out = self
            .seal
            .initialize(shares, threshold)
            .await
            .map_err(seal_err)?;
        for key in out.keys.iter().take(usize::from(threshold)) {
            self.seal.submit_unseal_key(key).await.map_err(seal_err)?;
        }
        if self.is_sealed() {
            return Err(LogicalError::Internal(
                "initialization produced keys that do not unseal".into(),
            ));
        }
        let cluster = ClusterInfo {
            cluster_id: uuid::Uuid::new_v4().to_string(),
            cluster_name: if self.config.cluster_name.is_empty() {
                format!("bunker-cluster-{}", &crate::token::random_base62(8))
            } else {
                self.config.cluster_name.clone()
            },
        };
        self.barrier
            .put(CLUSTER_INFO_PATH, &serde_json::to_vec(&cluster)?)
            .await?;
        let table = StoredMountTable {
            entries: vec![MountEntry::new(
                "cubbyhole/",
                "cubbyhole",
                "per-token private secret storage",
                Map::new(),
            )],
        };
        self.barrier
            .put(MOUNT_TABLE_PATH, &serde_json::to_vec(&table)?)
            .await?;
        self.policies.setup_defaults().await?;
        self.tokens.create_salt().await?;
        let root = TokenEntry::root();
        let (root_token, _) = self.tokens.create(root, root_token_id).await?;
        self.post_unseal().await?;
        self.seal_core();
        Ok(InitResult {
            keys: out.keys,
            root_token,
        })
    }

    /// Submit one unseal key share; runs the post-unseal setup when the barrier opens.
    pub async fn submit_unseal_key(&self, key: &[u8]) -> Result<bunker_seal::SealStatus> {
        let was_sealed = self.is_sealed();
        if was_sealed {
            self.check_no_partial_restore().await?;
        }
        let status = self.seal.submit_unseal_key(key).await.map_err(seal_err)?;
        if was_sealed && !status.sealed {
            if let Some(ha) = self.ha() {
                // A standby loads nothing until it takes the lock (the runner does it) but
                // its cluster's name and id.
                if let Err(e) = self.load_cluster_info().await {
                    tracing::warn!(error = %e, "reading the cluster info failed");
                }
                ha.wake();
                tracing::info!("vault is unsealed (HA: active once it holds the lock)");
                return Ok(status);
            }
            if let Err(e) = self.post_unseal().await {
                self.seal_core();
                return Err(e);
            }
            self.replication_handler().unsealed().await;
            tracing::info!("vault is unsealed");
        }
        Ok(status)
    }

    /// Load everything that lives behind the barrier: cluster info, mounts, audit devices.
    pub(crate) async fn post_unseal(&self) -> Result<()> {
        self.policies.clear_cache();
        self.load_cluster_info().await?;
        self.tokens.load_salt().await?;
        self.load_mounts().await?;
        self.audit.load().await?;
        Ok(())
    }

    /// Read the cluster's name and id (shown by `sys/health` and `sys/seal-status`, also on an
    /// HA standby, which loads nothing else).
    pub(crate) async fn load_cluster_info(&self) -> Result<()> {
        if let Some(bytes) = self.barrier.get(CLUSTER_INFO_PATH).await? {
            let info: ClusterInfo = serde_json::from_slice(&bytes)?;
            *self
                .cluster
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = info;
        }
        Ok(())
    }

    /// Seal: drop keys, caches and live tables.
    pub fn seal_core(&self) {
        self.teardown();
        self.seal.seal();
        self.replication_handler().sealed();
    }

    /// Drop the live tables and caches (at seal, and when an HA node steps down).
    pub(crate) fn teardown(&self) {
        {
            let mut r = self
                .router
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            r.clear();
        }
        self.policies.clear_cache();
        self.tokens.forget_salt();
        self.audit.unload();
        {
            let mut g = self
                .root_generation
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            *g = None;
        }
    }

    async fn load_mounts(&self) -> Result<()> {
        let mut router = Router::default();
        for table_path in [MOUNT_TABLE_PATH, AUTH_TABLE_PATH] {
            let table: StoredMountTable = match self.barrier.get(table_path).await? {
                Some(bytes) => serde_json::from_slice(&bytes)?,
                None => StoredMountTable::default(),
            };
            for entry in table.entries {
                let mounted = self.instantiate(entry)?;
                router.insert(mounted);
            }
        }
        {
            let mut r = self
                .router
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            *r = router;
        }
        Ok(())
    }

    pub(crate) fn instantiate(&self, entry: MountEntry) -> Result<Mounted> {
        let factories = if entry.is_auth() {
            &self.auth_factories
        } else {
            &self.factories
        };
        let factory = factories
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&entry.kind)
            .cloned()
            .ok_or_else(|| {
                LogicalError::InvalidRequest(format!(
                    "plugin not found in the catalog: {}",
                    entry.kind
                ))
            })?;
        let backend = factory.create(&entry.options)?;
        let view = StorageView::new(self.barrier.clone(), entry.storage_prefix());
        Ok(Mounted {
            entry: Arc::new(entry),
            backend,
            view,
        })
    }

    /// Persist the current router's entries as the mount table and the auth table, in one
    /// batch.
    pub(crate) async fn persist_mounts(&self) -> Result<()> {
        let (auth, secrets): (Vec<MountEntry>, Vec<MountEntry>) = self
            .router
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entries()
            .cloned()
            .partition(MountEntry::is_auth);
        let mut ops = Vec::new();
        for (path, entries) in [(MOUNT_TABLE_PATH, secrets), (AUTH_TABLE_PATH, auth)] {
            ops.push(bunker_storage::Op::Put {
                key: path.to_owned(),
                value: serde_json::to_vec(&StoredMountTable { entries })?,
            });
        }
        self.barrier.batch(ops).await?;
        Ok(())
    }

    /// Whether a mount at `path` would overlap a built-in mount (`auth/token/x/` would never be
    /// routed to: the built-in mounts are routed first).
    pub(crate) fn overlaps_builtin(&self, path: &str) -> bool {
        self.builtin_mounts
            .iter()
            .any(|m| crate::mounts::paths_overlap(&m.entry.path, path))
    }

    /// Whether `mounted` is one of the built-in mounts.
    pub(crate) fn is_builtin(&self, mounted: &Mounted) -> bool {
        self.builtin_mounts
            .iter()
            .any(|m| m.entry.path == mounted.entry.path)
    }

    /// Mount an engine (used by `sys/mounts` and by dev mode for `secret/`).
    pub async fn mount(&self, entry: MountEntry) -> Result<()> {
        let _guard = self.table_lock.lock().await;
        let exists = self
            .router
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .overlaps(&entry.path);
        if exists || self.overlaps_builtin(&entry.path) {
            return Err(LogicalError::InvalidRequest(format!(
                "path is already in use at {}",
                entry.path
            )));
        }
        self.install_mount(entry).await
    }

    /// Instantiates and initialises the engine of `entry`, routes to it (replacing any mount
    /// at the same path), and persists the mount table.
    pub(crate) async fn install_mount(&self, entry: MountEntry) -> Result<()> {
        let mounted = self.instantiate(entry)?;
        mounted
            .backend
            .initialize(&mounted.view, &mounted.entry.options)
            .await?;
        {
            let mut r = self
                .router
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            r.insert(mounted);
        }
        self.persist_mounts().await
    }

    /// Unmount an engine and delete its data.
    pub async fn unmount(&self, path: &str) -> Result<()> {
        let _guard = self.table_lock.lock().await;
        let removed = self
            .router
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(path);
        let Some(mounted) = removed else {
            return Ok(());
        };
        self.persist_mounts().await?;
        if mounted.entry.is_auth() {
            // The tokens the method issued die with it, as in Vault.
            self.revoke_tokens_of_auth_mount(&mounted.entry.path)
                .await?;
        }
        mounted.view.delete_prefix("").await?;
        Ok(())
    }

    /// Revoke every token logged in through the auth method mounted at `path` (`auth/x/`).
    pub(crate) async fn revoke_tokens_of_auth_mount(&self, path: &str) -> Result<()> {
        self.revoker.revoke_by_path_prefix(path).await
    }

    pub(crate) async fn revoke_token_tree(&self, hash: &str) -> Result<()> {
        self.revoker.revoke_tree(hash).await
    }

    /// Background tidy of expired tokens (the server calls this periodically).
    pub async fn tidy_tokens(&self) -> Result<usize> {
        if self.is_sealed() {
            return Ok(0);
        }
        self.revoker.tidy().await
    }
}

pub(crate) fn seal_err(e: bunker_seal::SealError) -> LogicalError {
    use bunker_seal::SealError as S;
    match e {
        S::AlreadyInitialized => {
            LogicalError::InvalidRequest("Vault is already initialized".into())
        }
        S::NotInitialized => LogicalError::InvalidRequest("Vault is not initialized".into()),
        S::InvalidConfig(m) | S::BadInput(m) => LogicalError::InvalidRequest(m),
        S::InvalidKey(m) => LogicalError::InvalidRequest(m),
        S::Barrier(b) => b.into(),
        S::Storage(s) => s.into(),
        other => LogicalError::Internal(other.to_string()),
    }
}
