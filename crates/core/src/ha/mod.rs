//! High availability inside a cluster: several nodes on one shared storage (PostgreSQL), one of
//! them active. Every node is unsealed with the key shares (the keyring lives in the shared
//! storage); only the node holding the storage's HA lock loads the mount table and serves
//! requests. Standbys answer `sys/health`, `sys/leader`, `sys/seal-status` and the unseal
//! endpoints themselves and send every other request to the active node with a 307 to its
//! `api_addr` (what Vault does under `X-Vault-No-Request-Forwarding`; forwarding over the
//! cluster port is not built yet).
//!
//! The runner ([`run`]) takes the lock when it is free, renews it three times per `lock_ttl`,
//! and steps down when it is sealed, told to (`sys/step-down`), or finds the lock gone. The
//! storage's fence guarantees a node that lost the lock never commits a write afterwards; the
//! runner only makes the node notice. Decisions live in [`decide`], apart from the I/O.

pub mod decide;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bunker_storage::ha::{Acquire, Fence, FenceCell, HaBackend, HaNode, LockHolder};
use serde_json::json;

use crate::core::Core;
use crate::logical::{LogicalError, Operation, Request, Response, Result};
use decide::{Facts, Role, Step};

/// Vault's default lock TTL.
pub const DEFAULT_LOCK_TTL: Duration = Duration::from_secs(15);
/// How often a standby tries the lock, and the runner's tick.
const TICK: Duration = Duration::from_millis(250);
/// After a step-down, this node leaves the lock to the others this long.
pub const STEP_DOWN_BACKOFF: Duration = Duration::from_secs(5);
/// `active_time` of a node that is not active, as Vault shows it.
const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// HA settings of a node.
#[derive(Clone, Debug)]
pub struct HaConfig {
    pub lock_ttl: Duration,
    pub node: HaNode,
}

impl HaConfig {
    /// This process as a node: a fresh id, the host name, the configured addresses.
    pub fn new(lock_ttl: Duration, api_addr: &str, cluster_addr: &str) -> HaConfig {
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_default();
        HaConfig {
            lock_ttl,
            node: HaNode {
                id: uuid::Uuid::new_v4().to_string(),
                hostname,
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
    /// Serialises role changes (the runner, step-down, init).
    transition: tokio::sync::Mutex<()>,
    wake: tokio::sync::Notify,
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
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, HaState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn role(&self) -> Role {
        self.state().role.clone()
    }

    pub fn is_active(&self) -> bool {
        matches!(self.role(), Role::Active { .. })
    }

    pub fn node(&self) -> &HaNode {
        &self.config.node
    }

    fn fence_holds(&self, epoch: u64) -> bool {
        matches!(self.fence.get(), Fence::Active { epoch: e, .. } if e == epoch)
    }

    /// The active node's API address, for redirects; `None` when no node holds the lock.
    pub async fn leader(&self) -> Option<LockHolder> {
        match self.backend.holder().await {
            Ok(holder) => holder.filter(|h| !h.expired),
            Err(e) => {
                tracing::warn!(error = %e, "reading the HA lock failed");
                None
            }
        }
    }

    /// Take the lock and open the fence; the caller then activates the core.
    async fn take(&self) -> Result<Option<u64>> {
        match self
            .backend
            .try_acquire(&self.config.node, self.config.lock_ttl)
            .await?
        {
            Acquire::Acquired(epoch) => {
                self.fence.set(Fence::Active {
                    node_id: self.config.node.id.clone(),
                    epoch,
                });
                Ok(Some(epoch))
            }
            Acquire::Held(_) => Ok(None),
        }
    }

    /// Close the fence and give the lock up (best effort: it expires anyway).
    async fn let_go(&self, epoch: u64) {
        self.fence.set(Fence::Standby);
        if let Err(e) = self.backend.release(&self.config.node.id, epoch).await {
            tracing::warn!(error = %e, "releasing the HA lock failed; it expires by itself");
        }
    }

    /// Hold the lock for `sys/init`, which writes before any node is active. Fails when
    /// another node is active (the cluster is initialised).
    pub(crate) async fn lock_for_init(&self) -> Result<u64> {
        let _t = self.transition.lock().await;
        match self.take().await? {
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

    /// One decision of the runner, and its effects.
    async fn step(&self, core: &Core) {
        let _t = self.transition.lock().await;
        let facts = {
            let s = self.state();
            Facts {
                fence_holds: match &s.role {
                    Role::Active { epoch, .. } => self.fence_holds(*epoch),
                    Role::Standby => false,
                },
                role: s.role.clone(),
                sealed: core.is_sealed(),
                backoff_until: s.backoff_until,
                last_renewed: s.last_renewed,
                now: Instant::now(),
                lock_ttl: self.config.lock_ttl,
            }
        };
        match decide::decide(&facts) {
            Step::Idle => {}
            Step::Acquire => {
                if !core.is_initialized().await.unwrap_or(false) {
                    return;
                }
                match self.take().await {
                    Ok(Some(epoch)) => self.activate(core, epoch).await,
                    Ok(None) => {}
                    Err(e) => tracing::debug!(error = %e, "taking the HA lock failed"),
                }
            }
            Step::Renew { epoch } => {
                // Tests hold here to make this node miss its renewals while it still believes
                // it is active (the state a paused or partitioned node wakes up in).
                crate::failpoint::hold("ha-before-renew").await;
                match self
                    .backend
                    .renew(&self.config.node.id, epoch, self.config.lock_ttl)
                    .await
                {
                    Ok(true) => self.state().last_renewed = facts.now,
                    Ok(false) => {
                        tracing::warn!(epoch, "another node took the HA lock; stepping down");
                        self.fence.lost(epoch);
                        self.deactivate(core, epoch, None).await;
                    }
                    Err(e) if decide::renewal_failed_is_lost(&facts) => {
                        tracing::warn!(error = %e, epoch, "HA lock not renewed for a whole TTL; stepping down");
                        self.fence.lost(epoch);
                        self.deactivate(core, epoch, None).await;
                    }
                    Err(e) => tracing::warn!(error = %e, "renewing the HA lock failed; retrying"),
                }
            }
            Step::Release { epoch } => {
                tracing::info!(epoch, "sealed: releasing the HA lock");
                self.let_go(epoch).await;
                self.deactivate(core, epoch, None).await;
            }
            Step::StepDown { epoch } => {
                tracing::warn!(
                    epoch,
                    "lost the HA lock (a write was fenced); stepping down"
                );
                self.deactivate(core, epoch, None).await;
            }
        }
    }

    async fn activate(&self, core: &Core, epoch: u64) {
        match core.become_active().await {
            Ok(()) => {
                let since = self
                    .backend
                    .holder()
                    .await
                    .ok()
                    .flatten()
                    .filter(|h| h.epoch == epoch)
                    .map(|h| h.acquired_at)
                    .unwrap_or_else(|| ZERO_TIME.to_owned());
                let mut s = self.state();
                s.role = Role::Active { epoch, since };
                s.last_renewed = Instant::now();
                tracing::info!(epoch, "acquired the HA lock: this node is active");
            }
            Err(e) => {
                tracing::error!(error = %e, "could not become active; giving the HA lock back");
                self.let_go(epoch).await;
                core.become_standby();
                self.state().backoff_until = Some(Instant::now() + STEP_DOWN_BACKOFF);
            }
        }
    }

    async fn deactivate(&self, core: &Core, epoch: u64, backoff: Option<Duration>) {
        // Stop serving first, then drop what the active node kept.
        {
            let mut s = self.state();
            if matches!(&s.role, Role::Active { epoch: e, .. } if *e == epoch) {
                s.role = Role::Standby;
            }
            s.backoff_until = backoff.map(|b| Instant::now() + b);
        }
        core.become_standby();
        tracing::info!(epoch, "this node is a standby");
    }

    /// `sys/step-down`: give the lock up and leave it to the other nodes for a while.
    pub(crate) async fn step_down(&self, core: &Core) {
        let _t = self.transition.lock().await;
        let Role::Active { epoch, .. } = self.role() else {
            return;
        };
        tracing::info!(epoch, "stepping down on request");
        self.let_go(epoch).await;
        self.deactivate(core, epoch, Some(STEP_DOWN_BACKOFF)).await;
    }

    /// Graceful shutdown: release the lock at once so a standby takes over without waiting for
    /// the TTL. No lock is taken afterwards.
    pub async fn shutdown(&self, core: &Core) {
        let _t = self.transition.lock().await;
        self.state().backoff_until = Some(Instant::now() + Duration::from_secs(86_400 * 365));
        if let Role::Active { epoch, .. } = self.role() {
            tracing::info!(epoch, "shutting down: releasing the HA lock");
            self.let_go(epoch).await;
            self.deactivate(core, epoch, Some(Duration::from_secs(86_400 * 365)))
                .await;
        }
    }

    /// Wake the runner now (after an unseal).
    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }
}

/// The runner: one step per tick, and a heartbeat for `sys/ha-status`.
pub async fn run(core: Arc<Core>, ha: Arc<Ha>) {
    let heartbeat_age = ha.config.lock_ttl.max(Duration::from_secs(3));
    let mut last_heartbeat: Option<Instant> = None;
    loop {
        ha.step(&core).await;
        if !core.is_sealed() && last_heartbeat.is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            if let Err(e) = ha.backend.heartbeat(&ha.config.node, heartbeat_age).await {
                tracing::debug!(error = %e, "HA heartbeat failed");
            }
            last_heartbeat = Some(Instant::now());
        }
        tokio::select! {
            () = tokio::time::sleep(TICK) => {}
            () = ha.wake.notified() => {}
        }
    }
}

impl Core {
    /// This node's HA membership, when the storage is shared (`ha_enabled`).
    pub fn ha(&self) -> Option<&Arc<Ha>> {
        self.ha.get()
    }

    /// Join an HA cluster: from now on this node serves only while it holds the lock. Call
    /// before serving; run [`run`] beside it.
    pub fn enable_ha(&self, ha: Arc<Ha>) {
        let _ = self.ha.set(ha);
    }

    /// Whether this node serves requests: always without HA, only when active with it.
    pub fn is_active_node(&self) -> bool {
        self.ha().is_none_or(|ha| ha.is_active())
    }

    /// A standby that holds the barrier open but serves nothing.
    pub(crate) fn is_standby(&self) -> bool {
        !self.is_sealed() && !self.is_active_node()
    }

    /// The lock is ours: load what lives behind the barrier, as at unseal. The keyring is read
    /// again first (the previous active node may have rotated it).
    pub(crate) async fn become_active(&self) -> Result<()> {
        self.barrier.reload_keyring().await?;
        if let Err(e) = self.post_unseal().await {
            self.teardown();
            return Err(e);
        }
        if let Some(handler) = self.replication_handler() {
            handler.activated().await;
        }
        Ok(())
    }

    /// Back to standby: drop the tables and caches the active node keeps; the barrier stays
    /// open.
    pub(crate) fn become_standby(&self) {
        self.teardown();
        if let Some(handler) = self.replication_handler() {
            handler.deactivated();
        }
    }

    /// The cluster addresses of every node of an HA cluster (those heard from recently, and
    /// this one), for DR secondaries to try in turn when the active node changes. Empty
    /// without HA: secondaries keep the address they were given (which may be a proxy).
    pub async fn cluster_addrs(&self) -> Vec<String> {
        let Some(ha) = self.ha() else {
            return Vec::new();
        };
        let mut addrs = vec![self.config.cluster_addr.clone()];
        let age = ha.config.lock_ttl.max(Duration::from_secs(3));
        match ha.backend.nodes(age).await {
            Ok(nodes) => addrs.extend(nodes.into_iter().map(|n| n.node.cluster_addr)),
            Err(e) => tracing::warn!(error = %e, "listing HA nodes failed"),
        }
        addrs.retain(|a| !a.is_empty());
        addrs.sort();
        addrs.dedup();
        addrs
    }

    /// The standby's answer to any request it does not serve itself.
    pub(crate) async fn standby_error(&self, ha: &Ha) -> LogicalError {
        LogicalError::Standby(ha.leader().await.map(|h| h.node.api_addr))
    }

    /// `sys/leader`.
    pub(crate) async fn sys_leader(&self, op: Operation) -> Result<Response> {
        crate::sys::expect_op(op, &[Operation::Read])?;
        let Some(ha) = self.ha() else {
            return Ok(Response::raw(
                200,
                json!({
                    "ha_enabled": false,
                    "is_self": false,
                    "active_time": ZERO_TIME,
                    "leader_address": "",
                    "leader_cluster_address": "",
                    "performance_standby": false,
                    "performance_standby_last_remote_wal": 0,
                }),
            ));
        };
        if self.is_sealed() {
            return Err(LogicalError::Sealed);
        }
        let role = ha.role();
        let leader = ha.leader().await;
        let active_time = match &role {
            Role::Active { since, .. } => since.clone(),
            Role::Standby => ZERO_TIME.to_owned(),
        };
        let (address, cluster_address) = leader
            .map(|h| (h.node.api_addr, h.node.cluster_addr))
            .unwrap_or_default();
        Ok(Response::raw(
            200,
            json!({
                "ha_enabled": true,
                "is_self": matches!(role, Role::Active { .. }),
                "active_time": active_time,
                "leader_address": address,
                "leader_cluster_address": cluster_address,
                "performance_standby": false,
                "performance_standby_last_remote_wal": 0,
            }),
        ))
    }

    /// `sys/ha-status`: the nodes that sent a heartbeat recently, the active one marked.
    pub(crate) async fn sys_ha_status(&self, req: &Request) -> Result<Response> {
        crate::sys::expect_op(req.operation, &[Operation::Read])?;
        let Some(ha) = self.ha() else {
            return Err(LogicalError::InvalidRequest(
                "this node is not in an HA cluster (ha_enabled is off)".into(),
            ));
        };
        let age = ha.config.lock_ttl.max(Duration::from_secs(3));
        let leader = ha.leader().await;
        let nodes = ha.backend.nodes(age).await?;
        let nodes: Vec<_> = nodes
            .into_iter()
            .map(|n| {
                let active = leader.as_ref().is_some_and(|l| l.node.id == n.node.id);
                json!({
                    "hostname": n.node.hostname,
                    "api_address": n.node.api_addr,
                    "cluster_address": n.node.cluster_addr,
                    "active_node": active,
                    "last_echo": if active { serde_json::Value::Null } else { n.last_echo.into() },
                    "version": n.node.version,
                    "upgrade_version": n.node.version,
                    "redundancy_zone": "",
                })
            })
            .collect();
        let mut data = crate::logical::Data::new();
        data.insert("nodes".into(), nodes.into());
        Ok(Response::data(data))
    }

    /// `sys/step-down` (sudo): the active node gives the lock up; a no-op without HA, as Vault.
    pub(crate) async fn sys_step_down(&self, op: Operation) -> Result<Response> {
        crate::sys::expect_op(op, &[Operation::Update])?;
        if let Some(ha) = self.ha() {
            ha.step_down(self).await;
        }
        Ok(Response::empty())
    }
}
