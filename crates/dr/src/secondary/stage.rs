//! Staging of a Merkle sync, so that no sync in progress is ever visible.
//!
//! A secondary that reconciles with its primary compares against the primary's tree at WAL
//! index `base`, but the values the primary pushes are read from its store as it is *then*
//! (some later index). Written in place, they would leave the secondary torn: neither its old
//! state nor the primary's at any index, until the stream replays the WAL past the point the
//! primary had reached. So the sync writes nothing: what it fetches, and then the WAL entries
//! streamed after `base`, go into a [`Stage`]. Once the replay has passed the primary's last
//! index at the start of the stream (the *bound*: every pushed value was read before it), the
//! stage holds exactly the primary's state at [`Stage::position`], and it is committed with
//! that position in one storage batch ([`crate::wal::Wal::commit_staged`]). Until then the
//! secondary's store is its last consistent point, and a primary lost mid-sync leaves it
//! promotable there.
//!
//! Design reason: staging in memory, bounded by [`STAGE_MAX_BYTES`], rather than in storage:
//! the commit must be one batch either way (built in memory), and a crash discards a stage
//! that a new sync rebuilds. A sync that outgrows the bound (a secondary very far behind)
//! spills: it writes in place as before and reports itself torn (not promotable without
//! `force`) until its replay reaches the bound.

use std::collections::BTreeMap;

use bunker_storage::Op;

use crate::wal::{check_replicated, WalEntry, WalError};

/// Most bytes of keys and values a stage holds before it spills to the store.
pub(crate) const STAGE_MAX_BYTES: usize = 64 << 20;

/// What a Merkle sync fetched and replayed, not yet visible.
#[derive(Debug)]
pub(crate) struct Stage {
    /// Latest value (`None`: deleted) of every key written since the sync started.
    ops: BTreeMap<String, Option<Vec<u8>>>,
    bytes: usize,
    limit: usize,
    /// The primary's WAL index of the tree the sync compared with; the stream starts after it.
    pub(crate) base: u64,
    /// The last WAL entry replayed into the stage (`base` before any).
    pub(crate) position: u64,
    /// What the sync fetched, for the log line at its commit: buckets differing, keys
    /// fetched, keys deleted, bytes fetched.
    pub(crate) fetched: [u64; 4],
    /// What filled it, for the log line at its commit.
    pub(crate) kind: SyncKind,
}

/// How a sync found what to fetch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SyncKind {
    /// By comparing Merkle trees and cell sums, then listing the differing cells.
    Merkle,
    /// From the primary's key journal: the keys written since the secondary's position.
    Journal,
}

impl SyncKind {
    /// As it appears in log lines (`bench/` reads "Merkle sync complete" and "journal sync
    /// complete").
    pub(crate) fn name(self) -> &'static str {
        match self {
            SyncKind::Merkle => "Merkle",
            SyncKind::Journal => "journal",
        }
    }
}

impl Stage {
    #[cfg(test)]
    pub(crate) fn new(base: u64) -> Stage {
        Stage::with_limit(base, STAGE_MAX_BYTES)
    }

    pub(crate) fn with_limit(base: u64, limit: usize) -> Stage {
        Stage {
            ops: BTreeMap::new(),
            bytes: 0,
            limit,
            base,
            position: base,
            fetched: [0; 4],
            kind: SyncKind::Merkle,
        }
    }

    /// Whether the stage is still within its bound.
    pub(crate) fn fits(&self) -> bool {
        self.bytes <= self.limit
    }

    /// Add pushed values and deletions. Returns [`Stage::fits`].
    pub(crate) fn add(&mut self, ops: Vec<Op>) -> bool {
        for op in ops {
            self.insert(op);
        }
        self.fits()
    }

    fn insert(&mut self, op: Op) {
        let (key, value) = match op {
            Op::Put { key, value } => (key, Some(value)),
            Op::Delete { key } => (key, None),
        };
        self.bytes = self
            .bytes
            .saturating_add(key.len() + value.as_ref().map_or(0, Vec::len));
        self.ops.insert(key, value);
    }

    /// Replay streamed WAL entries on top of what was fetched, in order. Entries at or below
    /// [`Stage::position`] are skipped (a resent frame); each is checked as the live path
    /// checks it, and none is applied if one is invalid. Returns [`Stage::fits`].
    pub(crate) fn replay(&mut self, entries: &[WalEntry]) -> Result<bool, WalError> {
        let mut previous = None;
        for entry in entries {
            check_replicated(entry, previous)?;
            previous = Some(entry.index);
        }
        for entry in entries {
            if entry.index <= self.position {
                continue;
            }
            for op in &entry.ops {
                self.insert(op.clone());
            }
            self.position = entry.index;
        }
        Ok(self.fits())
    }

    /// Whether the stage writes `key`.
    pub(crate) fn writes(&self, key: &str) -> bool {
        self.ops.contains_key(key)
    }

    pub(crate) fn len(&self) -> usize {
        self.ops.len()
    }

    /// The stage as storage operations, in key order.
    pub(crate) fn into_ops(self) -> Vec<Op> {
        self.ops
            .into_iter()
            .map(|(key, value)| match value {
                Some(value) => Op::Put { key, value },
                None => Op::Delete { key },
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn put(key: &str, value: &str) -> Op {
        Op::Put {
            key: key.into(),
            value: value.as_bytes().to_vec(),
        }
    }

    fn entry(index: u64, ops: Vec<Op>) -> WalEntry {
        WalEntry {
            index,
            time_ms: 0,
            ops,
        }
    }

    #[test]
    fn replay_overrides_fetched_values_in_order_and_skips_what_it_saw() {
        let mut stage = Stage::new(10);
        assert!(stage.add(vec![put("a", "pushed"), put("b", "pushed")]));
        stage
            .replay(&[
                entry(11, vec![put("a", "w11")]),
                entry(12, vec![Op::Delete { key: "b".into() }]),
            ])
            .unwrap();
        // A resent frame changes nothing.
        stage.replay(&[entry(12, vec![put("b", "again")])]).unwrap();
        assert_eq!(stage.position, 12);
        assert!(stage.writes("a") && stage.writes("b") && !stage.writes("c"));
        assert_eq!(
            stage.into_ops(),
            vec![put("a", "w11"), Op::Delete { key: "b".into() }]
        );
    }

    #[test]
    fn an_invalid_frame_is_refused_whole() {
        let mut stage = Stage::new(0);
        let bad = [
            entry(1, vec![put("a", "1")]),
            entry(2, vec![put("repl/state", "x")]),
        ];
        assert!(stage.replay(&bad).is_err());
        assert_eq!(stage.len(), 0, "nothing of a refused frame is staged");
        assert_eq!(stage.position, 0);
        let out_of_order = [entry(3, vec![]), entry(2, vec![])];
        assert!(stage.replay(&out_of_order).is_err());
    }

    #[test]
    fn the_bound_is_reported_when_exceeded() {
        let mut stage = Stage::with_limit(0, 10);
        assert!(stage.add(vec![put("k", "12345")]));
        assert!(!stage.add(vec![put("l", "123456")]));
        assert!(!stage.fits());
    }
}
