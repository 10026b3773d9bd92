//! High availability: the lock that makes one node of a cluster the active one, and the fence
//! that keeps every other node's writes out of the shared storage.
//!
//! A backend shared by several nodes (PostgreSQL) implements [`HaBackend`]. The lock is a row
//! with a holder, an **epoch** bumped at every change of holder, and an expiry in the
//! database's clock. The holder renews it well before it expires; anyone may take an expired
//! lock. Expiry alone cannot stop a paused holder from writing after it wakes up, so the
//! backend also enforces a [`Fence`]: while a node believes it is active, each of its write
//! transactions first checks, inside the transaction, that the lock row still names it at the
//! epoch it acquired (and holds a shared row lock on it until commit, so a takeover waits for
//! writes in flight and every later write of the old holder fails). A standby's writes are
//! refused before they reach the database.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::Result;

/// A node of an HA cluster, as other nodes see it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaNode {
    /// Random per process: a restarted node is a new holder.
    pub id: String,
    pub hostname: String,
    pub api_addr: String,
    pub cluster_addr: String,
    pub version: String,
}

/// The current holder of the lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockHolder {
    pub node: HaNode,
    pub epoch: u64,
    /// When this holder took the lock (RFC 3339, the database's clock).
    pub acquired_at: String,
    /// Whether the lock is past its expiry (the holder stopped renewing).
    pub expired: bool,
}

/// A node's last heartbeat.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeHeartbeat {
    pub node: HaNode,
    /// RFC 3339, the database's clock.
    pub last_echo: String,
}

/// What [`HaBackend::try_acquire`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Acquire {
    /// This node holds the lock now, at this epoch.
    Acquired(u64),
    /// Someone else holds it (and it has not expired).
    Held(LockHolder),
}

/// Which writes the backend lets through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fence {
    /// HA is off: every write goes through.
    Off,
    /// This node is a standby: every write is refused.
    Standby,
    /// This node is active: writes commit only while the lock row names `node_id` at `epoch`.
    Active { node_id: String, epoch: u64 },
}

/// The fence shared by the HA runner (which sets it) and the backend's writer (which checks it
/// in every transaction). A failed check turns it to [`Fence::Standby`] at once, so later
/// writes fail without a round trip and the runner sees the loss.
///
/// It also carries the active node's **lease**: the local instant until which no other node
/// can have taken the lock (the runner extends it from the time it *sent* each successful
/// acquire or renewal, minus a margin for clock rates). Writes do not need it (the fence in the
/// transaction protects them); the read cache does, so a node that was paused or partitioned
/// past its TTL never answers from a cache another node's writes have made stale.
#[derive(Debug)]
pub struct FenceCell {
    fence: RwLock<Fence>,
    lease_until: RwLock<Option<std::time::Instant>>,
    /// Bumped by every change of the fence (under its write lock), so a cache scope names one
    /// stretch of being active even if an epoch number comes back (the HA table recreated).
    term: std::sync::atomic::AtomicU64,
}

impl Default for FenceCell {
    fn default() -> Self {
        FenceCell {
            fence: RwLock::new(Fence::Off),
            lease_until: RwLock::new(None),
            term: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

/// Which history the data a node reads belongs to, for caches: one per lock epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadScope {
    /// HA is off: this node is the only writer.
    Single,
    /// This node is active at this epoch, within its lease; `term` tells apart two stretches of
    /// being active at the same epoch number ([`FenceCell`]).
    Epoch { epoch: u64, term: u64 },
}

impl FenceCell {
    pub fn get(&self) -> Fence {
        self.fence
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The fence and its term (see [`ReadScope`]), read together.
    pub fn get_with_term(&self) -> (Fence, u64) {
        let fence = self
            .fence
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        (
            fence.clone(),
            self.term.load(std::sync::atomic::Ordering::Acquire),
        )
    }

    /// Sets the fence; any lease ends with it (a new one starts with [`FenceCell::extend_lease`]).
    pub fn set(&self, fence: Fence) {
        let mut current = self
            .fence
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *self.lease() = None;
        self.term.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        *current = fence;
    }

    /// Mark the lock lost, if it is still the one at `epoch`.
    pub fn lost(&self, epoch: u64) {
        let mut fence = self
            .fence
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if matches!(&*fence, Fence::Active { epoch: e, .. } if *e == epoch) {
            *self.lease() = None;
            self.term.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            *fence = Fence::Standby;
        }
    }

    /// The lock at `epoch` cannot be anyone else's before `until` (if the fence is still at
    /// that epoch). Never moves the lease back.
    pub fn extend_lease(&self, epoch: u64, until: std::time::Instant) {
        let fence = self
            .fence
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if matches!(&*fence, Fence::Active { epoch: e, .. } if *e == epoch) {
            let mut lease = self.lease();
            *lease = Some(lease.map_or(until, |current| current.max(until)));
        }
    }

    /// What this node may cache reads under now: `None` on a standby, and on an active node
    /// whose lease has run out (another node may be writing).
    pub fn read_scope(&self, now: std::time::Instant) -> Option<ReadScope> {
        let fence = self
            .fence
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match &*fence {
            Fence::Off => Some(ReadScope::Single),
            Fence::Standby => None,
            Fence::Active { epoch, .. } => self
                .lease_until
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .is_some_and(|until| now < until)
                .then(|| ReadScope::Epoch {
                    epoch: *epoch,
                    term: self.term.load(std::sync::atomic::Ordering::Acquire),
                }),
        }
    }

    fn lease(&self) -> std::sync::RwLockWriteGuard<'_, Option<std::time::Instant>> {
        self.lease_until
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The part of a TTL a lease counts on: a tenth is left for the two clocks' rates (the
/// database's, which expires the lock, and this node's monotonic clock).
pub fn lease_span(ttl: std::time::Duration) -> std::time::Duration {
    ttl.saturating_sub(ttl / 10)
}

tokio::task_local! {
    /// The HA lock epoch a request was admitted under: the core sets it around each request an
    /// active node handles, and a shared backend tags the request's writes with it, so a write
    /// of a request that outlived its epoch (the node lost the lock and took it again) is
    /// refused instead of committed under the new epoch.
    pub static WRITE_EPOCH: u64;
}

/// The epoch of the request running on this task, if any (see [`WRITE_EPOCH`]).
pub fn current_write_epoch() -> Option<u64> {
    WRITE_EPOCH.try_with(|e| *e).ok()
}

/// The error of a write refused inside its transaction: the lock row names another holder or
/// another epoch.
pub fn lock_lost_error() -> crate::StorageError {
    crate::StorageError::Unavailable(
        "this node lost the HA lock: another node is active (the write was not committed)".into(),
    )
}

/// The error of a write refused by the fence.
pub fn fenced_error() -> crate::StorageError {
    crate::StorageError::Unavailable(
        "this node is not the active node of its HA cluster (standby, or it lost the HA lock)"
            .into(),
    )
}

/// A storage backend several nodes share, with the HA lock in it.
#[async_trait]
pub trait HaBackend: Send + Sync + 'static {
    /// Take the lock when it is free or expired (bumping the epoch), else report its holder.
    async fn try_acquire(&self, me: &HaNode, ttl: Duration) -> Result<Acquire>;

    /// Extend the lock held at `epoch`; `false` when another node has taken it.
    async fn renew(&self, node_id: &str, epoch: u64, ttl: Duration) -> Result<bool>;

    /// Give the lock up at once (graceful shutdown, step-down, seal); no-op if not held.
    async fn release(&self, node_id: &str, epoch: u64) -> Result<()>;

    /// The current holder, if the lock was ever taken.
    async fn holder(&self) -> Result<Option<LockHolder>>;

    /// Record that `me` is alive; heartbeats older than `max_age` are forgotten.
    async fn heartbeat(&self, me: &HaNode, max_age: Duration) -> Result<()>;

    /// Nodes that sent a heartbeat within `max_age`.
    async fn nodes(&self, max_age: Duration) -> Result<Vec<NodeHeartbeat>>;

    /// The fence the backend's writes obey.
    fn fence(&self) -> Arc<FenceCell>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_lock_fences_only_its_own_epoch() {
        let cell = FenceCell::default();
        assert_eq!(cell.get(), Fence::Off);
        cell.set(Fence::Active {
            node_id: "a".into(),
            epoch: 4,
        });
        cell.lost(3);
        assert!(matches!(cell.get(), Fence::Active { epoch: 4, .. }));
        cell.lost(4);
        assert_eq!(cell.get(), Fence::Standby);
    }

    #[test]
    fn reads_are_scoped_to_an_epoch_only_within_its_lease() {
        let cell = FenceCell::default();
        let now = std::time::Instant::now();
        let later = now + Duration::from_secs(10);
        assert_eq!(cell.read_scope(now), Some(ReadScope::Single));
        cell.set(Fence::Standby);
        assert_eq!(cell.read_scope(now), None);
        cell.set(Fence::Active {
            node_id: "a".into(),
            epoch: 7,
        });
        // Active without a lease yet: nothing is cached.
        assert_eq!(cell.read_scope(now), None);
        cell.extend_lease(6, later);
        assert_eq!(cell.read_scope(now), None, "a lease of another epoch");
        cell.extend_lease(7, later);
        let scope = cell.read_scope(now);
        assert!(
            matches!(scope, Some(ReadScope::Epoch { epoch: 7, .. })),
            "{scope:?}"
        );
        assert_eq!(cell.read_scope(later), None, "the lease ran out");
        cell.extend_lease(7, now);
        assert_eq!(
            cell.read_scope(now + Duration::from_secs(1)),
            scope,
            "a lease never moves back"
        );
        cell.lost(7);
        assert_eq!(cell.read_scope(now), None);
        cell.set(Fence::Active {
            node_id: "a".into(),
            epoch: 8,
        });
        assert_eq!(
            cell.read_scope(now),
            None,
            "a new epoch starts without a lease"
        );
    }
}
