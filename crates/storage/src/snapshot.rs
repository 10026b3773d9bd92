//! What [`crate::Backend::snapshot`] hands out: pages of entries read at one point in time.
//!
//! Each backend reads inside one consistent view (redb: one read transaction; PostgreSQL: one
//! `REPEATABLE READ` transaction; in memory: a copy taken under the lock) and cuts it into
//! pages, so the caller can stream a store of millions of keys with a page or two in memory.

use async_trait::async_trait;

use crate::Result;

/// Most entries in one page (well under a batch's op limit, so a page can be restored as one
/// batch).
pub const SNAPSHOT_PAGE_ENTRIES: usize = 1024;
/// A page is closed once its keys and values pass this many bytes.
pub const SNAPSHOT_PAGE_BYTES: usize = 4 * 1024 * 1024;

/// One page of a snapshot: entries in strictly increasing key order.
pub type SnapshotPage = Vec<(String, Vec<u8>)>;

/// Where a backend delivers the pages of a snapshot, in key order.
#[async_trait]
pub trait SnapshotSink: Send {
    /// Takes the next page. An error aborts the snapshot (a client that went away).
    async fn page(&mut self, entries: SnapshotPage) -> Result<()>;
}

/// Collects entries into pages bounded by [`SNAPSHOT_PAGE_ENTRIES`] and
/// [`SNAPSHOT_PAGE_BYTES`].
#[derive(Default)]
pub(crate) struct PageBuilder {
    entries: SnapshotPage,
    bytes: usize,
}

impl PageBuilder {
    /// Adds one entry; returns the page when it is full.
    pub(crate) fn push(&mut self, key: String, value: Vec<u8>) -> Option<SnapshotPage> {
        self.bytes = self
            .bytes
            .saturating_add(key.len())
            .saturating_add(value.len());
        self.entries.push((key, value));
        let full = self.entries.len() >= SNAPSHOT_PAGE_ENTRIES || self.bytes >= SNAPSHOT_PAGE_BYTES;
        full.then(|| self.take())
    }

    /// The entries gathered so far (possibly none).
    pub(crate) fn take(&mut self) -> SnapshotPage {
        self.bytes = 0;
        std::mem::take(&mut self.entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_close_on_entries_or_bytes() {
        let mut pages = PageBuilder::default();
        for i in 0..SNAPSHOT_PAGE_ENTRIES - 1 {
            assert!(pages.push(format!("k{i}"), vec![1]).is_none());
        }
        let full = pages.push("last".into(), vec![1]);
        assert_eq!(full.map(|p| p.len()), Some(SNAPSHOT_PAGE_ENTRIES));
        let big = pages.push("big".into(), vec![0; SNAPSHOT_PAGE_BYTES]);
        assert_eq!(
            big.map(|p| p.len()),
            Some(1),
            "one large value is a page alone"
        );
        assert!(pages.take().is_empty());
    }
}
