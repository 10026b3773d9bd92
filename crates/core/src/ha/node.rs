//! What a node does with its HA membership, as the core: the runner's steps (take the lock,
//! activate, step down), the runner itself, and the core's HA methods. The membership's state
//! and its database calls are in `mod.rs`, which names nothing of the core.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use super::decide::{self, Facts, Role, Step};
use super::*;
use crate::core::Core;
use crate::logical::{LogicalError, Operation, Response, Result};

impl Ha {
    /// One decision of the runner, and its effects.
    async fn step(&self, core: &Core) {
        let _t = self.transition.lock().await;
        if self
            .step_down_requested
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            self.step_down(core).await;
            return;
        }
        let facts = {
            let s = self.state();
            Facts {
                fence_holds: match &s.role {
                    Role::Active { epoch, .. } => self.fence_holds(*epoch),
                    Role::Standby => false,
                },
                role: s.role.clone(),
                sealed: core.is_sealed(),
                dr_secondary: false,
                backoff_until: s.backoff_until,
                last_renewed: s.last_renewed,
                now: Instant::now(),
                lock_ttl: self.config.lock_ttl,
            }
        };
        // A standby's view of the DR mode is the stored one, read again every
        // `KEYRING_REFRESH` by the runner (`run`): a sealed standby started before the cluster
        // became a DR secondary, or before it was promoted, decides by the current mode.
        let mut facts = facts;
        let replication = core.replication_handler();
        facts.dr_secondary = replication.holds_lock_sealed();
        match decide::decide(&facts) {
            Step::Idle => {}
            Step::Acquire => {
                // A DR secondary's storage holds no seal configuration until its first sync
                // ends, and its nodes may be sealed: it needs the lock to sync at all.
                let secondary = facts.dr_secondary
                    || replication.stored_dr_mode().await == crate::DrMode::Secondary;
                if !secondary && !core.is_initialized().await.unwrap_or(false) {
                    return;
                }
                // Tests hold standbys here to look at the lock row before anyone takes it.
                crate::failpoint::hold("ha-before-acquire").await;
                // The lock's expiry was fixed when the acquire ran: count from before it.
                let asked = Instant::now();
                match self.take(asked).await {
                    Ok(Some(epoch)) => self.activate(core, epoch, asked).await,
                    Ok(None) => {}
                    Err(e) => tracing::debug!(error = %e, "taking the HA lock failed"),
                }
            }
            Step::Renew { epoch } => {
                // Tests hold here to make this node miss its renewals while it still believes
                // it is active (the state a paused or partitioned node wakes up in).
                crate::failpoint::hold("ha-before-renew").await;
                let renew = self
                    .backend
                    .renew(&self.config.node.id, epoch, self.config.lock_ttl);
                match self.db("renewing the HA lock", renew).await {
                    Ok(true) => {
                        // `facts.now` was read before the renewal was sent.
                        self.fence
                            .extend_lease(epoch, facts.now + lease_span(self.config.lock_ttl));
                        self.state().last_renewed = facts.now;
                    }
                    Ok(false) => {
                        metrics::counter!("vault_core_leadership_lost").increment(1);
                        tracing::warn!(epoch, "another node took the HA lock; stepping down");
                        self.fence.lost(epoch);
                        self.deactivate(core, epoch, None).await;
                    }
                    Err(e) if decide::renewal_failed_is_lost(&facts) => {
                        metrics::counter!("vault_core_leadership_lost").increment(1);
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
                metrics::counter!("vault_core_leadership_lost").increment(1);
                tracing::warn!(
                    epoch,
                    "lost the HA lock (a write was fenced); stepping down"
                );
                self.deactivate(core, epoch, None).await;
            }
        }
    }

    async fn activate(&self, core: &Core, epoch: u64, asked: Instant) {
        match core.become_active().await {
            Ok(()) => {
                let holder = self
                    .db("reading the HA lock", self.backend.holder())
                    .await
                    .ok()
                    .flatten();
                let Some(since) = holder
                    .filter(|h| h.epoch == epoch && h.node.id == self.config.node.id)
                    .map(|h| h.acquired_at)
                else {
                    tracing::warn!(
                        epoch,
                        "the HA lock changed hands while this node loaded; standing by"
                    );
                    self.fence.lost(epoch);
                    core.become_standby();
                    self.withdraw_advertisement();
                    return;
                };
                let mut s = self.state();
                s.role = Role::Active { epoch, since };
                s.last_renewed = asked;
                tracing::info!(epoch, "acquired the HA lock: this node is active");
            }
            Err(e) => {
                metrics::counter!("vault_core_leadership_setup_failed").increment(1);
                tracing::error!(error = %e, "could not become active; giving the HA lock back");
                self.let_go(epoch).await;
                core.become_standby();
                self.withdraw_advertisement();
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
        // Requests already running finish on the tables they started with (their writes are
        // fenced by the epoch they were admitted under); new ones are sent to the active node.
        let drained = tokio::time::timeout(self.config.lock_ttl, self.gate.write()).await;
        if drained.is_err() {
            tracing::warn!(
                epoch,
                "requests still running after lock_ttl; stepping down anyway"
            );
        }
        core.become_standby();
        self.withdraw_advertisement();
        drop(drained);
        tracing::info!(epoch, "this node is a standby");
    }

    async fn step_down(&self, core: &Core) {
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
}

/// The runner: one step per tick, and a heartbeat for `sys/ha-status`.
pub async fn run(core: Arc<Core>, ha: Arc<Ha>) {
    let heartbeat_age = ha.config.lock_ttl.max(Duration::from_secs(3));
    let mut last_heartbeat: Option<Instant> = None;
    let mut last_keyring: Option<Instant> = None;
    loop {
        ha.step(&core).await;
        // A standby keeps its keyring current (rotations, and a rekey's root key), so a
        // rekey right after a rotation does not strand it. A DR secondary's keyring is its
        // primary's and follows the replicated one instead. The mode is the stored one, which
        // the standby takes as its own: it may predate a promotion the active node made (a
        // standby unsealed while its cluster was a DR secondary would otherwise report itself
        // a secondary and never follow a rekey).
        if !core.is_active_node() && last_keyring.is_none_or(|t| t.elapsed() >= KEYRING_REFRESH) {
            // Bounded as every database call of the runner, so a hung read cannot hold up the
            // heartbeat and the lock. Sealed standbys refresh the mode too (they decide by it
            // whether they may take the lock sealed); only an open barrier has a keyring.
            let reload = async {
                let mode = core.replication_handler().refresh_standby().await;
                if mode == crate::DrMode::Secondary || !core.is_standby() {
                    return Ok(());
                }
                core.barrier.reload_keyring_following_rekey().await
            };
            match tokio::time::timeout(ha.config.lock_ttl / 3, reload).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "a standby could not read the keyring again")
                }
                Err(_) => tracing::warn!("a standby's keyring read timed out"),
            }
            last_keyring = Some(Instant::now());
        }
        if !core.is_sealed() && last_heartbeat.is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            let beat = ha.backend.heartbeat(&ha.config.node, heartbeat_age);
            if let Err(e) = ha.db("recording the HA heartbeat", beat).await {
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
    pub fn is_standby(&self) -> bool {
        !self.is_sealed() && !self.is_active_node()
    }

    /// The lock is ours: load what lives behind the barrier, as at unseal. The keyring is read
    /// again first (the previous active node may have rotated it, or rekeyed: then the new
    /// root key is followed, see `Barrier::reload_keyring_following_rekey`).
    pub(crate) async fn become_active(&self) -> Result<()> {
        // A DR secondary's storage is its primary's: it serves nothing behind the barrier, so
        // it loads nothing and needs no open barrier; its follower resumes from the position
        // the cluster's previous active node stored.
        let replication = self.replication_handler();
        if replication.reload().await? == crate::DrMode::Secondary {
            // A failure gives the lock back (the runner backs off and another node tries):
            // a lock holder that does not follow would stall the secondary for good.
            replication.activated().await?;
            return Ok(());
        }
        self.barrier.reload_keyring_following_rekey().await?;
        if let Err(e) = self.post_unseal().await {
            self.teardown();
            return Err(e);
        }
        // Replication first: it resumes recording the WAL, so every write from here on (the
        // advertisement below included) reaches DR secondaries.
        if let Err(e) = replication.activated().await {
            tracing::error!(error = %e, "DR replication could not resume on this node after it took the HA lock");
        }
        if let Some(ha) = self.ha() {
            if let Err(e) = self.advertise(ha).await {
                self.teardown();
                return Err(e);
            }
        }
        Ok(())
    }

    /// Back to standby: drop the tables and caches the active node keeps; the barrier stays
    /// open.
    pub(crate) fn become_standby(&self) {
        self.teardown();
        self.replication_handler().deactivated();
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
        match ha.db("listing HA nodes", ha.backend.nodes(age)).await {
            Ok(nodes) => addrs.extend(nodes.into_iter().map(|n| n.node.cluster_addr)),
            Err(e) => tracing::warn!(error = %e, "listing HA nodes failed"),
        }
        addrs.retain(|a| !a.is_empty());
        addrs.sort();
        addrs.dedup();
        addrs
    }

    /// Record, behind the barrier, the addresses this node serves at, keyed by its node id: the
    /// lock row (plain text in the database) only names the holder, and standbys send clients
    /// only where an advertisement written through the barrier says (as Vault's
    /// `core/leader/<uuid>`). Older advertisements are removed.
    async fn advertise(&self, ha: &Ha) -> Result<()> {
        let node = ha.node();
        let mut advert = json!({"api_addr": node.api_addr, "cluster_addr": node.cluster_addr});
        let extra = ha.advertiser.get().and_then(|a| a.advertise());
        if let (Some(extra), Some(fields)) = (extra, advert.as_object_mut()) {
            fields.insert("forwarding".into(), extra);
        }
        // One batch: a crash in between never leaves the cluster without an advertisement.
        let mut ops: Vec<bunker_storage::Op> = self
            .barrier
            .list(LEADER_PREFIX)
            .await?
            .into_iter()
            .filter(|old| *old != node.id)
            .map(|old| bunker_storage::Op::Delete {
                key: format!("{LEADER_PREFIX}{old}"),
            })
            .collect();
        ops.extend(
            self.barrier
                .list(OLD_LEADER_PREFIX)
                .await?
                .into_iter()
                .map(|old| bunker_storage::Op::Delete {
                    key: format!("{OLD_LEADER_PREFIX}{old}"),
                }),
        );
        ops.push(bunker_storage::Op::Put {
            key: format!("{LEADER_PREFIX}{}", node.id),
            value: serde_json::to_vec(&advert)?,
        });
        self.barrier.batch(ops).await?;
        Ok(())
    }

    /// Advertise this node again when it is the active one (after a DR mode change made it
    /// serve: a promoted secondary, a disabled one).
    pub async fn readvertise(&self) {
        let Some(ha) = self.ha() else {
            return;
        };
        if ha.is_active() && !self.is_sealed() {
            if let Err(e) = self.advertise(ha).await {
                tracing::warn!(error = %e, "advertising this node failed");
            }
        }
    }

    /// The active node's advertised API and cluster addresses, when a live holder has one.
    async fn advertised_leader(&self, ha: &Ha) -> Option<(LockHolder, String, String)> {
        let (holder, advert) = self.advertisement(ha).await?;
        let api = advert
            .get("api_addr")
            .and_then(serde_json::Value::as_str)
            .filter(|a| is_base_url(a))?
            .to_owned();
        let cluster = advert
            .get("cluster_addr")
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_owned();
        Some((holder, api, cluster))
    }

    /// The live lock holder and its advertisement (read through the barrier).
    async fn advertisement(&self, ha: &Ha) -> Option<(LockHolder, serde_json::Value)> {
        let holder = ha.leader().await?;
        let bytes = self
            .barrier
            .get(&format!("{LEADER_PREFIX}{}", holder.node.id))
            .await
            .ok()
            .flatten()?;
        let advert = serde_json::from_slice(&bytes).ok()?;
        Some((holder, advert))
    }

    /// On a standby: the active node's cluster address and what it advertised for request
    /// forwarding. `None` on an active node, without HA, sealed, or when no other node is
    /// active.
    pub async fn forwarding_target(&self) -> Option<(String, serde_json::Value)> {
        let ha = self.ha()?;
        if !self.is_standby() {
            return None;
        }
        let (holder, mut advert) = self.advertisement(ha).await?;
        if holder.node.id == ha.config.node.id {
            return None;
        }
        let cluster = advert
            .get("cluster_addr")
            .and_then(serde_json::Value::as_str)
            .filter(|a| !a.is_empty())?
            .to_owned();
        let forwarding = advert.get_mut("forwarding")?.take();
        Some((cluster, forwarding))
    }

    /// The standby's answer to any request it does not serve itself.
    pub(crate) async fn standby_error(&self, ha: &Ha) -> LogicalError {
        let cached = ha
            .redirect_cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
            .filter(|(at, _)| at.elapsed() < TICK);
        if let Some((_, target)) = cached {
            return LogicalError::Standby(target);
        }
        // The holder may be this very node, still loading (or initialising): no redirect loop.
        let target = self
            .advertised_leader(ha)
            .await
            .filter(|(h, _, _)| h.node.id != ha.config.node.id)
            .map(|(_, api, _)| api);
        *ha.redirect_cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some((Instant::now(), target.clone()));
        LogicalError::Standby(target)
    }

    /// `sys/leader`.
    pub(crate) async fn sys_leader(&self, op: Operation) -> Result<Response> {
        bunker_sdk::expect_op(op, &[Operation::Read])?;
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
        let active_time = match &role {
            Role::Active { since, .. } => since.clone(),
            Role::Standby => ZERO_TIME.to_owned(),
        };
        let (address, cluster_address) = self
            .advertised_leader(ha)
            .await
            .map(|(_, api, cluster)| (api, cluster))
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
    pub(crate) async fn sys_ha_status(&self, op: Operation) -> Result<Response> {
        bunker_sdk::expect_op(op, &[Operation::Read])?;
        let Some(ha) = self.ha() else {
            // As Vault: a node without HA lists itself, active.
            let version = env!("CARGO_PKG_VERSION");
            let mut data = crate::logical::Data::new();
            data.insert(
                "nodes".into(),
                json!([{
                    "hostname": hostname(),
                    "api_address": self.config.api_addr,
                    "cluster_address": self.config.cluster_addr,
                    "active_node": true,
                    "last_echo": null,
                    "version": version,
                    "upgrade_version": version,
                    "redundancy_zone": "",
                }]),
            );
            return Ok(Response::data(data));
        };
        let age = ha.config.lock_ttl.max(Duration::from_secs(3));
        let leader = ha.leader().await;
        let nodes = ha.db("listing HA nodes", ha.backend.nodes(age)).await?;
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
        bunker_sdk::expect_op(op, &[Operation::Update])?;
        if let Some(ha) = self.ha() {
            ha.request_step_down();
        }
        Ok(Response::empty())
    }

    /// Run one request on an HA node: under the gate, and with its writes tagged with the epoch
    /// it was admitted under.
    pub(crate) async fn handle_gated<F, T>(&self, ha: &Ha, run: F) -> Result<T>
    where
        F: std::future::Future<Output = Result<T>>,
    {
        let _gate = ha.gate.read().await;
        match ha.active_epoch() {
            Some(epoch) => bunker_storage::ha::WRITE_EPOCH.scope(epoch, run).await,
            None => run.await,
        }
    }
}
