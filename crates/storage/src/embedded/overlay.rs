//! The writes made durable while a checkpoint runs, or a lone group whose redb commit waits
//! for the writer to be idle (`writer.rs`), laid over redb for every reader.
//!
//! A checkpoint (redb's durable commit) holds redb's single write transaction for milliseconds.
//! Meanwhile the writer goes on: each group is appended to the commit log and synced as usual,
//! but, with no write transaction to put it in, its net effect goes into an in-memory
//! [`Overlay`] (key → value, or `None` for deleted) published to readers as a new `Arc` once
//! its record is synced, one whole group at a time and in commit order. When the checkpoint
//! ends, the writer applies the overlay to redb (a non-durable commit, like any logged group's)
//! and empties it.
//!
//! A read pairs one overlay with one redb read transaction ([`Shared::view`]). The pair is
//! taken under a read lock that the writer holds for writing only while it publishes an
//! overlay, or commits the overlay's application and empties it: taken in either order without
//! it, a reader could get the redb state from before the application with the emptied overlay
//! (acknowledged writes gone), or the state after it with an older overlay hiding newer values.
//! Design reason: the smallest change that keeps redb's MVCC snapshots as the only read path
//! and readers out of the writer's way; an overlay is bounded ([`OVERLAY_BYTES`]), so copying
//! it per group stays cheap.
//!
//! Reads between two changes share one view: taking a view (a redb read transaction and its
//! table) was about a fifth of a read's cost, and a KV write reads twice (its token, its
//! metadata). The writer drops the shared view after every commit, before the commit is
//! acknowledged ([`Shared::changed`]), under the lock a reader takes and fills it under, so a
//! view is shared only by reads that began after the last acknowledged write it holds, and no
//! snapshot outlives the next write for long (redb keeps the pages a live snapshot can see).
//! A view also remembers what its point reads found (bounded, [`MEMO_BYTES`]): the keys every
//! request reads (its token, its mount's configuration) then cost one B-tree lookup per commit.

use std::collections::btree_map;
use std::collections::BTreeMap;
use std::iter::Peekable;
use std::ops::Bound;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use redb::{Database, ReadOnlyTable, ReadableDatabase};

use super::{engine, engine_error, ENTRIES};
use crate::hook::{is_valid_range, Replaced, TxnTable};
use crate::Result;

/// The entries table of a read transaction.
pub(super) type Entries = ReadOnlyTable<&'static str, &'static [u8]>;

/// Above this many bytes of keys and values in the overlay, the writer waits for the
/// checkpoint rather than copying the overlay for every group.
pub(super) const OVERLAY_BYTES: usize = 1 << 20;

/// The net effect of the groups committed since a checkpoint began.
#[derive(Debug, Clone, Default)]
pub(super) struct Overlay {
    entries: BTreeMap<String, Option<Vec<u8>>>,
    bytes: usize,
}

impl Overlay {
    pub(super) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes of keys and values written into it (an upper bound of what it holds).
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Its entries in key order: a key's value, or `None` where it was deleted.
    pub(super) fn entries(&self) -> impl Iterator<Item = (&str, Option<&[u8]>)> {
        self.entries
            .iter()
            .map(|(key, value)| (key.as_str(), value.as_deref()))
    }

    fn set(&mut self, key: &str, value: Option<&[u8]>) {
        self.bytes = self
            .bytes
            .saturating_add(key.len() + value.map_or(0, <[u8]>::len));
        self.entries
            .insert(key.to_owned(), value.map(<[u8]>::to_vec));
    }
}

/// The published overlay, and the lock that pairs it with redb's state.
#[derive(Default)]
pub(super) struct Shared {
    current: RwLock<Arc<Overlay>>,
    /// The view reads share until the writer's next commit.
    latest: Mutex<Option<Arc<View>>>,
    /// Groups committed into a checkpoint's overlay, and those overlays applied to redb (tests
    /// check that they reached both).
    overlaid: std::sync::atomic::AtomicU64,
    applied: std::sync::atomic::AtomicU64,
    /// Deferred lone groups committed to redb (writer.rs).
    deferred_applied: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

impl Shared {
    /// A consistent view holding every acknowledged write: the one shared since the last
    /// commit, or a new one (then shared). Taken and stored under `latest`, which
    /// [`Shared::changed`] empties after each commit, so a stored view is never older than
    /// the last commit acknowledged.
    pub(super) fn view(&self, db: &Database) -> Result<Arc<View>> {
        let mut latest = self.latest.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(view) = &*latest {
            return Ok(view.clone());
        }
        let view = Arc::new(self.fresh_view(db)?);
        *latest = Some(view.clone());
        Ok(view)
    }

    /// Called by the writer after every commit (whatever its outcome) and before it is
    /// acknowledged: later reads take a new view. The old one is dropped by its last reader
    /// (here if none holds it).
    pub(super) fn changed(&self) {
        let old = self
            .latest
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        drop(old);
    }

    /// redb's latest commit and the overlay that goes with it.
    fn fresh_view(&self, db: &Database) -> Result<View> {
        let guard = self.current.read().unwrap_or_else(PoisonError::into_inner);
        let overlay = guard.clone();
        let txn = db.begin_read().map_err(engine("starting read transaction"));
        drop(guard);
        let entries = txn?
            .open_table(ENTRIES)
            .map_err(engine("opening entries table for reading"))?;
        Ok(View {
            entries,
            overlay,
            memo: Mutex::default(),
        })
    }

    /// Makes a group's `overlay` what readers see, during a checkpoint.
    pub(super) fn publish(&self, overlay: Arc<Overlay>) {
        self.lay_over(overlay);
        self.overlaid
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Makes `overlay` what readers see (a deferred lone group's, or a checkpoint's).
    pub(super) fn lay_over(&self, overlay: Arc<Overlay>) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = overlay;
    }

    /// Runs `apply` (the commit that puts the overlay in redb) while no reader can take a view,
    /// and empties the overlay if it succeeds.
    pub(super) fn clear_after(&self, apply: impl FnOnce() -> Result<()>) -> Result<()> {
        let mut guard = self.current.write().unwrap_or_else(PoisonError::into_inner);
        apply()?;
        *guard = Arc::default();
        self.applied
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Empties the overlay of a deferred group that its (already committed) redb commit now
    /// holds: readers took it with redb before or after that commit, the same values either
    /// way (writer.rs, `apply_deferred_overlay`).
    pub(super) fn clear_once_applied(&self) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::default();
        self.deferred_applied
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    #[cfg(test)]
    pub(super) fn overlaid_groups(&self) -> u64 {
        self.overlaid.load(std::sync::atomic::Ordering::Relaxed)
    }

    #[cfg(test)]
    pub(super) fn applied_overlays(&self) -> u64 {
        self.applied.load(std::sync::atomic::Ordering::Relaxed)
    }

    #[cfg(test)]
    pub(super) fn applied_deferred(&self) -> u64 {
        self.deferred_applied
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether readers are served anything over redb (a deferred group or a checkpoint's).
    #[cfg(test)]
    pub(super) fn lays_over(&self) -> bool {
        !self
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
    }
}

/// One read's redb snapshot and overlay.
pub(super) struct View {
    entries: Entries,
    overlay: Arc<Overlay>,
    /// What reads through this view found, for the reads after them (see [`Memo`]).
    memo: Mutex<Memo>,
}

/// Above this many bytes of keys and values a view remembers no more reads.
const MEMO_BYTES: usize = 256 << 10;
/// Values larger than this are not remembered (they would cost a copy more than they save).
const MEMO_VALUE_BYTES: usize = 4 << 10;

/// Keys read through a view and what each held (`None`: absent). A view is one point in
/// time, so what one read found is what every later read of the key finds; views are shared
/// between commits, so the keys every request reads (its token, its mount's config) are looked
/// up in redb's B-tree once per commit instead of once per request.
///
/// Hashed with foldhash, not SipHash (2026-12-04: SipHash of the storage keys was about 1.5 %
/// of the request runtime's instructions); its per-process random seed, and the memo's byte
/// bound, keep crafted colliding keys from costing more than a bounded few lookups.
#[derive(Default)]
struct Memo {
    found: std::collections::HashMap<String, Option<Vec<u8>>, foldhash::fast::RandomState>,
    bytes: usize,
}

impl View {
    pub(super) fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        if let Some(found) = self.memo().found.get(key) {
            return Ok(found.clone());
        }
        let found = self.read(key)?;
        let size = key.len() + found.as_ref().map_or(0, Vec::len);
        if found
            .as_ref()
            .is_none_or(|value| value.len() <= MEMO_VALUE_BYTES)
        {
            let mut memo = self.memo();
            if memo.bytes.saturating_add(size) <= MEMO_BYTES {
                memo.bytes += size;
                memo.found.insert(key.to_owned(), found.clone());
            }
        }
        Ok(found)
    }

    fn memo(&self) -> std::sync::MutexGuard<'_, Memo> {
        self.memo.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn read(&self, key: &str) -> Result<Option<Vec<u8>>> {
        if let Some(value) = self.overlay.entries.get(key) {
            return Ok(value.clone());
        }
        // The guard borrows a page of the snapshot: copied out while `entries` (holding the
        // read transaction) is alive, so the writer cannot have reused the page.
        Ok(self
            .entries
            .get(key)
            .map_err(|e| engine_error(format!("reading key {key:?}"), e))?
            .map(|guard| guard.value().to_vec()))
    }

    /// Entries from `start` on, in key order, with the overlay's over redb's; `value` makes
    /// what each yields of a value.
    pub(super) fn range<'v, V: 'v>(
        &'v self,
        start: Bound<&str>,
        value: fn(&[u8]) -> V,
        context: &'v str,
    ) -> Result<impl Iterator<Item = Result<(String, V)>> + 'v> {
        let base = self
            .entries
            .range::<&str>((start, Bound::Unbounded))
            .map_err(|e| engine_error(context.to_owned(), e))?
            .map(move |entry| {
                entry
                    .map(|(key, val)| (key.value().to_owned(), value(val.value())))
                    .map_err(|e| engine_error(context.to_owned(), e))
            });
        Ok(Merged {
            base: base.peekable(),
            over: self
                .overlay
                .entries
                .range::<str, _>((start, Bound::Unbounded))
                .peekable(),
            value,
        })
    }
}

/// redb's entries and an overlay's, merged in key order: the overlay's win, its deletions
/// hide redb's.
struct Merged<'o, B: Iterator, V> {
    base: Peekable<B>,
    over: Peekable<btree_map::Range<'o, String, Option<Vec<u8>>>>,
    value: fn(&[u8]) -> V,
}

impl<B, V> Iterator for Merged<'_, B, V>
where
    B: Iterator<Item = Result<(String, V)>>,
{
    type Item = Result<(String, V)>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let from_overlay = match (self.base.peek(), self.over.peek()) {
                (None, None) => return None,
                (Some(Ok((base_key, _))), Some((over_key, _))) => {
                    match over_key.as_str().cmp(base_key.as_str()) {
                        std::cmp::Ordering::Less => true,
                        std::cmp::Ordering::Equal => {
                            self.base.next();
                            true
                        }
                        std::cmp::Ordering::Greater => false,
                    }
                }
                (None, Some(_)) => true,
                // An error is passed on where it happens.
                (Some(_), _) => false,
            };
            if !from_overlay {
                return self.base.next();
            }
            let (key, value) = self.over.next()?;
            if let Some(value) = value {
                return Some(Ok((key.clone(), (self.value)(value))));
            }
        }
    }
}

/// A group's writes during a checkpoint: into a copy of the overlay, with what they replace
/// read from it or else from redb (the state the checkpoint is making durable).
pub(super) struct OverlayTable<'a> {
    pub(super) base: &'a Entries,
    pub(super) work: &'a mut Overlay,
}

impl OverlayTable<'_> {
    fn replaced(&self, key: &str, replaced: Replaced<'_>) -> Result<()> {
        let Some(replaced) = replaced else {
            return Ok(());
        };
        match self.work.entries.get(key) {
            Some(value) => replaced(value.as_deref()),
            None => {
                let old = self
                    .base
                    .get(key)
                    .map_err(|e| engine_error(format!("reading key {key:?}"), e))?;
                replaced(old.as_ref().map(|guard| guard.value()));
            }
        }
        Ok(())
    }
}

impl TxnTable for OverlayTable<'_> {
    fn put(&mut self, key: &str, value: &[u8], replaced: Replaced<'_>) -> Result<()> {
        self.replaced(key, replaced)?;
        self.work.set(key, Some(value));
        Ok(())
    }

    fn delete(&mut self, key: &str, replaced: Replaced<'_>) -> Result<()> {
        self.replaced(key, replaced)?;
        self.work.set(key, None);
        Ok(())
    }

    fn for_each(
        &mut self,
        range: (Bound<&str>, Bound<&str>),
        visit: &mut dyn FnMut(&str, &[u8]) -> bool,
    ) -> Result<()> {
        if !is_valid_range(range) {
            return Ok(());
        }
        let context = "scanning for the commit index";
        let base = self
            .base
            .range::<&str>(range)
            .map_err(|e| engine_error(context.into(), e))?
            .map(|entry| {
                entry
                    .map(|(key, value)| (key.value().to_owned(), value.value().to_vec()))
                    .map_err(|e| engine_error(context.into(), e))
            });
        let merged = Merged {
            base: base.peekable(),
            over: self.work.entries.range::<str, _>(range).peekable(),
            value: <[u8]>::to_vec,
        };
        for entry in merged {
            let (key, value) = entry?;
            if !visit(&key, &value) {
                break;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn merged(base: &[(&str, &str)], over: &Overlay) -> Vec<(String, String)> {
        let base = base
            .iter()
            .map(|(k, v)| Ok(((*k).to_owned(), v.as_bytes().to_vec())));
        Merged {
            base: base.peekable(),
            over: over
                .entries
                .range::<str, _>((Bound::Unbounded, Bound::Unbounded))
                .peekable(),
            value: <[u8]>::to_vec,
        }
        .map(|entry| {
            let (k, v) = entry.expect("no error");
            (k, String::from_utf8(v).expect("utf-8"))
        })
        .collect()
    }

    #[test]
    fn the_overlay_wins_and_its_deletions_hide_redbs_entries() {
        let mut over = Overlay::default();
        over.set("b", Some(b"B"));
        over.set("c", None);
        over.set("e", Some(b""));
        over.set("z", None);
        let got = merged(&[("a", "1"), ("b", "2"), ("c", "3"), ("d", "4")], &over);
        let want = [("a", "1"), ("b", "B"), ("d", "4"), ("e", "")];
        assert_eq!(
            got,
            want.map(|(k, v)| (k.to_owned(), v.to_owned())).to_vec()
        );
        assert_eq!(merged(&[], &Overlay::default()), vec![]);
        assert!(over.bytes() >= 4);
    }
}
