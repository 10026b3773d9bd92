//! High availability inside a cluster: several nodes on one shared storage (PostgreSQL), one of
//! them active. Every node is unsealed with the key shares (the keyring lives in the shared
//! storage); only the node holding the storage's HA lock loads the mount table and serves
//! requests. Standbys answer `sys/health`, `sys/leader`, `sys/seal-status` and the unseal
//! endpoints themselves and every other request goes to the active node: forwarded over the
//! cluster port by the HTTP layer (with the credentials the active node advertises through an
//! [`Advertiser`]), or answered with a 307 to its `api_addr` (under
//! `X-Vault-No-Request-Forwarding`, or when forwarding is not possible).
//!
//! The runner ([`run`]) takes the lock when it is free, renews it three times per `lock_ttl`,
//! and steps down when it is sealed, told to (`sys/step-down`), or finds the lock gone. The
//! storage's fence guarantees a node that lost the lock never commits a write afterwards; the
//! runner only makes the node notice. Decisions live in [`decide`], apart from the I/O.

pub mod decide;
mod node;

pub use node::run;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bunker_storage::ha::{lease_span, Acquire, Fence, FenceCell, HaBackend, HaNode, LockHolder};

use crate::logical::{LogicalError, Result};
use decide::Role;

/// Vault's default lock TTL.
pub const DEFAULT_LOCK_TTL: Duration = Duration::from_secs(15);
/// How often a standby tries the lock, and the runner's tick.
const TICK: Duration = Duration::from_millis(250);
/// How often a standby reads the stored DR state and the keyring again (see [`run`]).
const KEYRING_REFRESH: Duration = Duration::from_secs(5);
/// After a step-down, this node leaves the lock to the others this long.
pub const STEP_DOWN_BACKOFF: Duration = Duration::from_secs(5);
/// `active_time` of a node that is not active, as Vault shows it.
const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// Where active nodes advertise their addresses (and forwarding's credentials), behind the
/// barrier, under replication's local prefix: an advertisement belongs to this cluster and is
/// never replicated to a DR secondary (whose sites could then forward as this cluster's
/// standbys).
const LEADER_PREFIX: &str = "repl/ha/leader/";
/// Where they were before: removed at the next advertisement.
const OLD_LEADER_PREFIX: &str = "core/ha/leader/";

/// An absolute `http(s)://host[:port]` URL and nothing more: what a redirect may point at.
fn is_base_url(addr: &str) -> bool {
    let Some(rest) = addr
        .strip_prefix("https://")
        .or_else(|| addr.strip_prefix("http://"))
    else {
        return false;
    };
    let host = rest.strip_suffix('/').unwrap_or(rest);
    !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
}

/// This machine's host name, as `sys/ha-status` shows it.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}

/// What the node adds to its advertisement when it becomes active, behind the barrier with its
/// addresses: request forwarding's credentials for standbys. Called at each activation (so
/// the credentials are new each time); `withdraw` when the node stops being active.
pub trait Advertiser: Send + Sync {
    fn advertise(&self) -> Option<serde_json::Value>;
    fn withdraw(&self);
}

/// The paths a standby answers itself (its status and the unseal endpoints), and `sys/seal`,
/// which it refuses rather than send on (as Vault: it would seal the active node).
/// Exact paths only: `sys/seal/` is not `sys/seal` (it goes to the active node, which refuses
/// it).
pub fn standby_answers(path: &str) -> bool {
    matches!(
        path,
        "sys/health" | "sys/leader" | "sys/seal-status" | "sys/unseal" | "sys/init" | "sys/seal"
    )
}

/// HA settings of a node.
#[derive(Clone, Debug)]
pub struct HaConfig {
    pub lock_ttl: Duration,
    pub node: HaNode,
}

impl HaConfig {
    /// This process as a node: a fresh id, the host name, the configured addresses.
    pub fn new(lock_ttl: Duration, api_addr: &str, cluster_addr: &str) -> HaConfig {
        HaConfig {
            lock_ttl,
            node: HaNode {
                id: uuid::Uuid::new_v4().to_string(),
                hostname: hostname(),
                api_addr: api_addr.to_owned(),
                cluster_addr: cluster_addr.to_owned(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
            },
        }
    }
}

struct HaState {
    role: Role,
    last_renewed: Instant,
    backoff_until: Option<Instant>,
}

/// A node's HA membership: the lock backend, its fence and this node's role.
pub struct Ha {
    backend: Arc<dyn HaBackend>,
    fence: Arc<FenceCell>,
    config: HaConfig,
    state: Mutex<HaState>,
    /// Serialises role changes (the runner, init).
    transition: tokio::sync::Mutex<()>,
    wake: tokio::sync::Notify,
    /// Requests an active node handles hold this shared; stepping down takes it exclusively
    /// (for at most `lock_ttl`) before it drops the tables, so no request runs half on the
    /// old state and half on none (an unaudited answer, a lost write).
    gate: tokio::sync::RwLock<()>,
    /// `sys/step-down` asked; the runner does it at its next step.
    step_down_requested: std::sync::atomic::AtomicBool,
    /// Where a standby sent clients last, and when it looked: unauthenticated requests to a
    /// standby cost one database read per tick, not one each.
    redirect_cache: Mutex<Option<(Instant, Option<String>)>>,
    advertiser: std::sync::OnceLock<Arc<dyn Advertiser>>,
}

impl Ha {
    pub fn new(backend: Arc<dyn HaBackend>, config: HaConfig) -> Arc<Ha> {
        let fence = backend.fence();
        fence.set(Fence::Standby);
        Arc::new(Ha {
            backend,
            fence,
            config,
            state: Mutex::new(HaState {
                role: Role::Standby,
                last_renewed: Instant::now(),
                backoff_until: None,
            }),
            transition: tokio::sync::Mutex::new(()),
            wake: tokio::sync::Notify::new(),
            gate: tokio::sync::RwLock::new(()),
            step_down_requested: std::sync::atomic::AtomicBool::new(false),
            redirect_cache: Mutex::new(None),
            advertiser: std::sync::OnceLock::new(),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, HaState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn withdraw_advertisement(&self) {
        if let Some(advertiser) = self.advertiser.get() {
            advertiser.withdraw();
        }
    }

    /// Set what this node advertises besides its addresses when active (once, at start).
    pub fn set_advertiser(&self, advertiser: Arc<dyn Advertiser>) {
        if self.advertiser.set(advertiser).is_err() {
            tracing::warn!("an HA advertiser was already set");
        }
    }

    pub fn role(&self) -> Role {
        self.state().role.clone()
    }

    pub fn is_active(&self) -> bool {
        matches!(self.role(), Role::Active { .. })
    }

    /// The epoch of the lock this node holds, from the moment it took it (while it is still
    /// loading, too) until it lets it go or loses it.
    pub fn held_epoch(&self) -> Option<u64> {
        match self.fence.get() {
            Fence::Active { epoch, .. } => Some(epoch),
            Fence::Off | Fence::Standby => None,
        }
    }

    /// The epoch this node holds the lock at, when active.
    pub fn active_epoch(&self) -> Option<u64> {
        match self.role() {
            Role::Active { epoch, .. } => Some(epoch),
            Role::Standby => None,
        }
    }

    pub fn node(&self) -> &HaNode {
        &self.config.node
    }

    fn fence_holds(&self, epoch: u64) -> bool {
        matches!(self.fence.get(), Fence::Active { epoch: e, .. } if e == epoch)
    }

    /// A call to the lock backend, bounded by a third of the TTL: a database that does not
    /// answer must not stall the runner past the point where the lock is lost anyway.
    async fn db<T>(
        &self,
        what: &str,
        call: impl std::future::Future<Output = bunker_storage::Result<T>>,
    ) -> bunker_storage::Result<T> {
        let limit = self.config.lock_ttl / 3;
        tokio::time::timeout(limit, call).await.unwrap_or_else(|_| {
            Err(bunker_storage::StorageError::Unavailable(format!(
                "{what}: no answer from the database within {limit:?}"
            )))
        })
    }

    /// The active node's API address, for redirects; `None` when no node holds the lock.
    pub async fn leader(&self) -> Option<LockHolder> {
        match self.db("reading the HA lock", self.backend.holder()).await {
            Ok(holder) => holder.filter(|h| !h.expired),
            Err(e) => {
                tracing::warn!(error = %e, "reading the HA lock failed");
                None
            }
        }
    }

    /// Take the lock and open the fence; the caller then activates the core.
    /// `asked` is when the request was sent: the lease counts from there.
    async fn take(&self, asked: Instant) -> Result<Option<u64>> {
        let acquire = self
            .backend
            .try_acquire(&self.config.node, self.config.lock_ttl);
        match self.db("taking the HA lock", acquire).await? {
            Acquire::Acquired(epoch) => {
                self.fence.set(Fence::Active {
                    node_id: self.config.node.id.clone(),
                    epoch,
                });
                self.fence
                    .extend_lease(epoch, asked + lease_span(self.config.lock_ttl));
                Ok(Some(epoch))
            }
            Acquire::Held(_) => Ok(None),
        }
    }

    /// Close the fence and give the lock up (best effort: it expires anyway).
    async fn let_go(&self, epoch: u64) {
        self.fence.set(Fence::Standby);
        let release = self.backend.release(&self.config.node.id, epoch);
        if let Err(e) = self.db("releasing the HA lock", release).await {
            tracing::warn!(error = %e, "releasing the HA lock failed; it expires by itself");
        }
    }

    /// Hold the lock for `sys/init`, which writes before any node is active. Fails when
    /// another node is active (the cluster is initialised).
    pub(crate) async fn lock_for_init(&self) -> Result<u64> {
        let _t = self.transition.lock().await;
        match self.take(Instant::now()).await? {
            Some(epoch) => Ok(epoch),
            None => Err(LogicalError::InvalidRequest(
                "another node of this HA cluster is active: the cluster is already initialized"
                    .into(),
            )),
        }
    }

    pub(crate) async fn unlock_after_init(&self, epoch: u64) {
        let _t = self.transition.lock().await;
        self.let_go(epoch).await;
    }

    /// `sys/step-down`: ask the runner to give the lock up and leave it to the other nodes for
    /// a while. Asynchronous, as in Vault: the request that asks runs under the gate the
    /// step-down waits for.
    pub(crate) fn request_step_down(&self) {
        if self.is_active() {
            self.step_down_requested
                .store(true, std::sync::atomic::Ordering::SeqCst);
            self.wake();
        }
    }

    /// Wake the runner now (after an unseal).
    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::is_base_url;

    #[test]
    fn redirects_go_only_to_plain_base_urls() {
        for good in [
            "http://10.0.0.1:8200",
            "https://vault.internal:8200/",
            "https://[::1]:8200",
        ] {
            assert!(is_base_url(good), "{good}");
        }
        for bad in [
            "",
            "ftp://x",
            "https://",
            "https://evil/path",
            "https://u@host",
            "//host",
            "https://a b",
        ] {
            assert!(!is_base_url(bad), "{bad}");
        }
    }
}
