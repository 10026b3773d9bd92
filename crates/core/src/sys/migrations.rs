//! What `sys/remount/status` reports: the mount migrations this server ran since it started
//! (state the core holds; the endpoints are in `remount.rs`).

use std::collections::VecDeque;
use std::sync::Mutex;

/// How many finished migrations `sys/remount/status` remembers (Vault keeps them in memory
/// too); the oldest are forgotten first.
const MIGRATIONS_KEPT: usize = 256;

#[derive(Clone, Debug)]
pub(super) struct Migration {
    pub id: String,
    pub source_mount: String,
    pub target_mount: String,
}

/// The migrations this server ran since it started, newest last.
#[derive(Default)]
pub(crate) struct Migrations {
    recent: Mutex<VecDeque<Migration>>,
}

impl Migrations {
    pub(super) fn record(&self, migration: Migration) {
        let mut recent = self
            .recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if recent.len() >= MIGRATIONS_KEPT {
            recent.pop_front();
        }
        recent.push_back(migration);
    }

    pub(super) fn find(&self, id: &str) -> Option<Migration> {
        self.recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .find(|m| m.id == id)
            .cloned()
    }
}
