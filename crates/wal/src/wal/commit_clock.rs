//! When this node committed its recent WAL entries (monotonic time, microsecond precision), so
//! a primary can tell how long ago a secondary's acknowledged index was written: the replay
//! lag, as PostgreSQL's walsender computes `pg_stat_replication.replay_lag` (time from the
//! primary's commit of the newest entry the standby has applied until the primary hears of
//! it), and how stale a secondary is.
//!
//! One sample per commit that recorded entries, `(last index of the commit, when it became
//! durable)`, in a ring of [`CAPACITY`] commits: at tens of thousands of commits a second that
//! still spans a fraction of a second, enough for a secondary that keeps up. Older indices are
//! unknown (`None`), never guessed from a later commit.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

/// Commits remembered.
pub(super) const CAPACITY: usize = 8192;

#[derive(Default)]
pub(super) struct CommitClock {
    ring: Mutex<Ring>,
}

struct Ring {
    /// `(last index of a commit, when it was durable)`, indices increasing.
    commits: VecDeque<(u64, Instant)>,
    /// When recording started (the process opened the WAL, or its history was replaced or
    /// reloaded: a promotion, an HA takeover): every entry older than the ring was committed
    /// before its front, or before this.
    started: Instant,
}

impl Default for Ring {
    fn default() -> Self {
        Ring {
            commits: VecDeque::new(),
            started: Instant::now(),
        }
    }
}

impl CommitClock {
    /// A commit ending at `index` became durable at `at`. An index at or below the last one
    /// recorded (the history was reset) starts the ring again, as [`CommitClock::clear`] does.
    pub(super) fn record(&self, index: u64, at: Instant) {
        let mut ring = self.lock();
        if ring.commits.back().is_some_and(|&(last, _)| last >= index) {
            *ring = Ring::default();
        }
        let commits = &mut ring.commits;
        if commits.len() == CAPACITY {
            commits.pop_front();
        }
        commits.push_back((index, at));
    }

    /// Forget every commit (the history was replaced or reloaded): what is stored now was
    /// committed before this moment.
    pub(super) fn clear(&self) {
        *self.lock() = Ring::default();
    }

    /// When the commit holding entry `index` became durable: `None` if that commit is older
    /// than the ring (or `index` not committed here yet).
    pub(super) fn committed_at(&self, index: u64) -> Option<Instant> {
        let ring = self.lock();
        let commits = &ring.commits;
        let k = commits.partition_point(|&(last, _)| last < index);
        let &(last, at) = commits.get(k)?;
        // The first commit kept may also hold indices below its last: known only for its last.
        (k > 0 || last == index).then_some(at)
    }

    /// For a committed entry `index`: when its commit became durable if the ring holds it,
    /// else the latest it can have been (the oldest commit kept, or when recording started),
    /// so its age is at least that. `None` for an index above every commit recorded.
    pub(super) fn committed_by(&self, index: u64) -> Option<Instant> {
        let ring = self.lock();
        let commits = &ring.commits;
        let k = commits.partition_point(|&(last, _)| last < index);
        match commits.get(k) {
            Some(&(_, at)) => Some(at),
            None if commits.is_empty() => Some(ring.started),
            None => None,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ring> {
        // Nothing panics while holding it: a poisoned ring is still ordered.
        self.ring.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use super::*;

    #[test]
    fn an_index_maps_to_the_commit_that_holds_it() {
        let clock = CommitClock::default();
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        clock.record(5, at(1));
        clock.record(9, at(2));
        clock.record(10, at(3));
        // 6..=9 were committed together, after 5.
        assert_eq!(clock.committed_at(6), Some(at(2)));
        assert_eq!(clock.committed_at(9), Some(at(2)));
        assert_eq!(clock.committed_at(10), Some(at(3)));
        // 5 is the oldest commit's last index: known; below it, not (it may be older).
        assert_eq!(clock.committed_at(5), Some(at(1)));
        assert_eq!(clock.committed_at(4), None);
        // Not committed yet.
        assert_eq!(clock.committed_at(11), None);
        // An older entry was committed by the oldest commit kept, at the latest.
        assert_eq!(clock.committed_by(4), Some(at(1)));
        assert_eq!(clock.committed_by(7), Some(at(2)));
        assert_eq!(clock.committed_by(11), None);
    }

    #[test]
    fn the_ring_is_bounded_and_a_reset_starts_it_again() {
        let clock = CommitClock::default();
        let t0 = Instant::now();
        for i in 1..=(CAPACITY as u64 + 10) {
            clock.record(i, t0);
        }
        assert_eq!(clock.committed_at(11), Some(t0));
        assert_eq!(clock.committed_at(10), None);
        assert!(clock.committed_at(12).is_some());
        clock.record(3, t0);
        assert_eq!(clock.committed_at(3), Some(t0));
        assert_eq!(clock.committed_at(12), None);
        let before_clear = Instant::now();
        clock.clear();
        // Nothing recorded since: an entry was committed before the clear (a promotion, an HA
        // takeover), not merely before the process started.
        let by = clock.committed_by(1).unwrap();
        assert!(by >= before_clear, "the bound moved to the clear");
    }
}
