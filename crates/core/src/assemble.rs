//! Putting a core together: its stores, and the built-in mounts that hold parts of it (the
//! token backend holds the token store, the system backend the core itself, weakly). Apart
//! from `core.rs` so that the core's type names none of the backends that name it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use bunker_barrier::Barrier;
use bunker_seal::Seal;
use bunker_storage::Backend;

use crate::audit::AuditBroker;
use crate::core::{ClusterInfo, Core, CoreConfig};
use crate::logical::StorageView;
use crate::mounts::{MountEntry, Mounted, Router};
use crate::policy_store::PolicyStore;
use crate::sys::SysBackend;
use crate::token::{Revoker, TokenBackend, TokenStore};

impl Core {
    pub fn new(backend: Arc<dyn Backend>, config: CoreConfig) -> Arc<Core> {
        let barrier = Arc::new(Barrier::new(backend));
        let lease_ttls = config.lease_ttls;
        let tokens = Arc::new(TokenStore::new(barrier.clone(), lease_ttls));
        let router = Arc::new(RwLock::new(Router::default()));
        let revoker = Revoker::new(tokens.clone(), router.clone());
        let token_mount = Mounted {
            entry: Arc::new(MountEntry::builtin(
                "auth/token/",
                "token",
                "token based credentials",
            )),
            backend: Arc::new(TokenBackend::new(
                tokens.clone(),
                revoker.clone(),
                lease_ttls,
            )),
            view: StorageView::new(barrier.clone(), crate::token::STORAGE_PREFIX),
        };
        Arc::new_cyclic(|core| {
            let sys_mount = Mounted {
                entry: Arc::new(MountEntry {
                    // As Vault's system mount.
                    seal_wrap: true,
                    ..MountEntry::builtin(
                        "sys/",
                        "system",
                        "system endpoints used for control, policy and debugging",
                    )
                }),
                backend: Arc::new(SysBackend::new(core.clone())),
                // The endpoints act on the core's own stores: the view is confined to a prefix
                // that holds nothing, so the backend's storage handle reaches nothing.
                view: StorageView::new(barrier.clone(), "sys/system-backend/"),
            };
            Core {
                config,
                seal: Seal::new(barrier.clone()),
                policies: PolicyStore::new(barrier.clone()),
                tokens,
                revoker,
                audit: AuditBroker::new(barrier.clone()),
                router,
                builtin_mounts: vec![sys_mount, token_mount],
                factories: RwLock::new(HashMap::new()),
                auth_factories: RwLock::new(HashMap::new()),
                root_generation: Mutex::new(None),
                table_lock: tokio::sync::Mutex::new(()),
                wrapping_lock: tokio::sync::Mutex::new(()),
                cluster: RwLock::new(ClusterInfo::default()),
                replication: RwLock::new(Arc::new(crate::replication_hook::NoReplication)),
                requests_total: std::sync::atomic::AtomicU64::new(0),
                metrics_renderer: RwLock::new(None),
                token_count_cache: Mutex::new(None),
                ha: std::sync::OnceLock::new(),
                migrations: crate::sys::Migrations::default(),
                snapshot_restore_lock: tokio::sync::Mutex::new(()),
                restore_progress: crate::snapshot::RestoreProgress::default(),
                barrier,
            }
        })
    }
}
