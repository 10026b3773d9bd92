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
#[derive(Debug)]
pub struct FenceCell(RwLock<Fence>);

impl Default for FenceCell {
    fn default() -> Self {
        FenceCell(RwLock::new(Fence::Off))
    }
}

impl FenceCell {
    pub fn get(&self) -> Fence {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub fn set(&self, fence: Fence) {
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = fence;
    }

    /// Mark the lock lost, if it is still the one at `epoch`.
    pub fn lost(&self, epoch: u64) {
        let mut fence = self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if matches!(&*fence, Fence::Active { epoch: e, .. } if *e == epoch) {
            *fence = Fence::Standby;
        }
    }
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
}
