//! The primary's half of reconciliation: Merkle tree, cell comparison, and pushing the values
//! of differing cells (or a whole snapshot to an empty secondary).
//!
//! The primary holds per session at most: its own cell sums (up to 2 MiB), the list of differing
//! cells, and the secondary's listing of one chunk of cells (the secondary sizes chunks so a
//! listing is a bounded share of the keyspace; [`MAX_CHUNK_LISTING`] refuses more).

use std::collections::HashMap;
use std::sync::Arc;

use tokio::io::AsyncWrite;

use bunker_storage::Backend;

use crate::frame::write_frame;
use crate::merkle::{self, CellSet, KeyId, ReplicatedPages, CELLS_PER_BUCKET};
use crate::messages::{Position, ToPrimary, ToSecondary};
use crate::rpc_metrics::{self, Timed};
use crate::ReplError;

/// Most entries one chunk's listing may hold (a secondary sizes its chunks far below this).
const MAX_CHUNK_LISTING: usize = 4_000_000;
/// Most cells one chunk names (the secondary asks for an eighth of them at most).
const MAX_CHUNK_CELLS: usize = merkle::CELLS / 8;
/// Key ids per `Deletions` frame.
const DELETIONS_PAGE: usize = 16_384;
/// A `Values` frame is sent once it holds this many entries...
const VALUES_PAGE_ENTRIES: usize = 1000;
/// ...or this many key and value bytes (so a frame stays far below the frame limit).
const VALUES_PAGE_BYTES: usize = 4 * 1024 * 1024;

/// Reconciliation state of one secondary session.
#[derive(Default)]
pub(crate) struct Reconciler {
    /// This cluster's cell sums: from the scan that made the tree the secondary compares
    /// against, or computed on the first `CellSums` page.
    our_sums: Option<Arc<merkle::CellSums>>,
    /// Differing cells found so far.
    differing: Vec<u32>,
    /// The chunk being listed, and the secondary's listing of it.
    chunk: Option<CellSet>,
    listing: HashMap<KeyId, u64>,
    /// Running timings of the cell comparison and of the chunk being answered (Vault's
    /// `conflicting_pages_request` and `fetch_keys_request`).
    comparing: Option<Timed>,
    fetching: Option<Timed>,
}

impl Reconciler {
    /// Handles `msg` if it is a cell-reconciliation request (`CellSums`, `ChunkRequest`,
    /// `Listing`), answering on `wr`; any other message is handed back.
    pub(crate) async fn handle<W: AsyncWrite + Unpin>(
        &mut self,
        backend: &dyn Backend,
        wr: &mut W,
        msg: ToPrimary,
    ) -> Result<Option<ToPrimary>, ReplError> {
        match msg {
            ToPrimary::CellSums {
                buckets,
                sums,
                last,
            } => self.cell_sums(backend, wr, buckets, sums, last).await?,
            ToPrimary::ChunkRequest { cells } => self.chunk_request(&cells)?,
            ToPrimary::Listing { entries, last } => {
                self.listing(backend, wr, entries, last).await?;
            }
            other => return Ok(Some(other)),
        }
        Ok(None)
    }

    /// One page of the secondary's cell sums. Answers `CellDiff` after the last page.
    async fn cell_sums<W: AsyncWrite + Unpin>(
        &mut self,
        backend: &dyn Backend,
        wr: &mut W,
        buckets: Vec<u32>,
        theirs: Vec<u64>,
        last: bool,
    ) -> Result<(), ReplError> {
        if theirs.len() != buckets.len() * CELLS_PER_BUCKET {
            return Err(ReplError::Refused(
                "cell sums do not match their buckets".into(),
            ));
        }
        if self.comparing.is_none() {
            self.comparing = Some(Timed::start(rpc_metrics::SERVER_CONFLICTING_PAGES));
        }
        if self.our_sums.is_none() {
            self.our_sums = Some(Arc::new(merkle::cell_sums(backend).await?));
        }
        let empty = merkle::CellSums::new();
        let ours_all = self.our_sums.as_deref().unwrap_or(&empty);
        let cells = merkle::cells_of_buckets(&buckets);
        if cells.len() != theirs.len() {
            return Err(ReplError::Refused("cell sums name unknown buckets".into()));
        }
        let ours = ours_all.cells(&cells);
        self.differing
            .extend(merkle::differing_cells(&cells, &ours, &theirs));
        if self.differing.len() > merkle::CELLS {
            // More than every cell once: the secondary repeats buckets; refuse rather than grow.
            return Err(ReplError::Refused(
                "cell sums repeat buckets beyond the whole keyspace".into(),
            ));
        }
        if last {
            // From the first page of sums (when the comparison started) to the answer.
            let _answer = self.comparing.take();
            let mut cells = std::mem::take(&mut self.differing);
            cells.sort_unstable();
            cells.dedup();
            write_frame(wr, &ToSecondary::CellDiff { cells }).await?;
        }
        Ok(())
    }

    /// The cell sums computed with the tree just sent (the same scan), so the cell comparison
    /// needs no scan of its own.
    pub(crate) fn use_cell_sums(&mut self, sums: Arc<merkle::CellSums>) {
        self.our_sums = Some(sums);
    }

    /// The secondary is about to list the keys of `cells` (at most [`MAX_CHUNK_CELLS`], each
    /// a cell that exists).
    fn chunk_request(&mut self, cells: &[u32]) -> Result<(), ReplError> {
        if cells.len() > MAX_CHUNK_CELLS || cells.iter().any(|&c| c as usize >= merkle::CELLS) {
            return Err(ReplError::Refused(format!(
                "a chunk names at most {MAX_CHUNK_CELLS} cells, each below {}",
                merkle::CELLS
            )));
        }
        self.fetching = Some(Timed::start(rpc_metrics::DR_SERVER_FETCH_KEYS));
        self.chunk = Some(CellSet::new(cells));
        self.listing.clear();
        Ok(())
    }

    /// One page of the secondary's listing of the current chunk. After the last page, sends
    /// every value of the chunk's cells that the secondary lacks or holds differently, a
    /// deletion for each key it holds that this cluster does not, and `ChunkDone`.
    async fn listing<W: AsyncWrite + Unpin>(
        &mut self,
        backend: &dyn Backend,
        wr: &mut W,
        entries: Vec<(KeyId, u64)>,
        last: bool,
    ) -> Result<(), ReplError> {
        if self.chunk.is_none() {
            return Err(ReplError::Refused("listing without a chunk request".into()));
        }
        if self.listing.len() + entries.len() > MAX_CHUNK_LISTING {
            return Err(ReplError::Refused(format!(
                "a chunk listing holds more than {MAX_CHUNK_LISTING} keys"
            )));
        }
        self.listing.extend(entries);
        if !last {
            return Ok(());
        }
        let cells = self.chunk.take().unwrap_or_else(|| CellSet::new(&[]));
        let mut theirs = std::mem::take(&mut self.listing);
        let mut out = ValuesPager::default();
        let mut pages = ReplicatedPages::new(backend);
        while let Some(page) = pages.next_page().await? {
            for (key, value) in page {
                let (cell, id) = merkle::cell_and_id(&key);
                if !cells.contains(cell) {
                    continue;
                }
                let same = theirs
                    .remove(&id)
                    .is_some_and(|digest| digest == merkle::leaf_digest(&key, &value));
                if !same {
                    out.push(wr, key, Some(value)).await?;
                }
            }
        }
        out.flush(wr).await?;
        // What the secondary listed and this cluster no longer has.
        let gone: Vec<KeyId> = theirs.into_keys().collect();
        for ids in gone.chunks(DELETIONS_PAGE) {
            let ids = ids.to_vec();
            write_frame(wr, &ToSecondary::Deletions { ids }).await?;
        }
        write_frame(wr, &ToSecondary::ChunkDone).await?;
        drop(self.fetching.take());
        Ok(())
    }
}

/// Collects `Values` entries and sends them in bounded frames.
#[derive(Default)]
struct ValuesPager {
    entries: Vec<(String, Option<Vec<u8>>)>,
    bytes: usize,
    sent: u64,
}

impl ValuesPager {
    async fn push<W: AsyncWrite + Unpin>(
        &mut self,
        wr: &mut W,
        key: String,
        value: Option<Vec<u8>>,
    ) -> Result<(), ReplError> {
        self.bytes += key.len() + value.as_ref().map_or(0, Vec::len);
        self.entries.push((key, value));
        if self.entries.len() >= VALUES_PAGE_ENTRIES || self.bytes >= VALUES_PAGE_BYTES {
            self.flush(wr).await?;
        }
        Ok(())
    }

    async fn flush<W: AsyncWrite + Unpin>(&mut self, wr: &mut W) -> Result<(), ReplError> {
        if self.entries.is_empty() {
            return Ok(());
        }
        let entries = std::mem::take(&mut self.entries);
        self.sent += entries.len() as u64;
        self.bytes = 0;
        write_frame(wr, &ToSecondary::Values { entries }).await?;
        Ok(())
    }
}

/// Most keys one journal catch-up fetches, and most bytes of their names; a secondary further
/// behind reconciles by Merkle diff. The set is held in memory while the values are read
/// (about 100 bytes a key with the set's overhead: 25 MiB at most), and a secondary's stage
/// (64 MiB) would spill past about a hundred thousand KV values anyway.
const MAX_JOURNAL_KEYS: usize = 250_000;
const MAX_JOURNAL_KEY_BYTES: usize = 16 << 20;

/// Answer a `JournalRequest` from a secondary at `position`: the current value (or absence) of
/// every key written after it, from the key journal and the WAL, then `JournalDone` with the
/// last index they cover, or `JournalUnavailable`. The values are read after that index was
/// taken, so, as with a snapshot, replaying the WAL from it converges. Returns whether the
/// journal served it.
pub(crate) async fn send_journal<W: AsyncWrite + Unpin>(
    wal: &crate::wal::Wal,
    backend: &dyn Backend,
    position: Option<Position>,
    generation: u64,
    wr: &mut W,
) -> Result<bool, ReplError> {
    let unavailable = |reason: &str| ToSecondary::JournalUnavailable {
        reason: reason.to_owned(),
    };
    let Some(position) = position.filter(|p| p.generation == generation) else {
        let reason = "the secondary follows another history";
        write_frame(wr, &unavailable(reason)).await?;
        return Ok(false);
    };
    let _fetch = Timed::start(rpc_metrics::DR_SERVER_FETCH_KEYS);
    let changed = wal
        .changed_keys_after(position.wal_index, MAX_JOURNAL_KEYS, MAX_JOURNAL_KEY_BYTES)
        .await;
    let (changed, wal_index) = match changed {
        Ok(Some(changed)) => changed,
        Ok(None) => {
            let reason = "the key journal does not cover the secondary's position";
            write_frame(wr, &unavailable(reason)).await?;
            return Ok(false);
        }
        // Nothing was sent yet: a journal that cannot be read (a damaged record) must not
        // end the session, or the secondary would ask again forever instead of reconciling.
        Err(error) => {
            tracing::warn!(%error, "the key journal could not be read: answering with a Merkle diff");
            write_frame(wr, &unavailable("the key journal could not be read")).await?;
            return Ok(false);
        }
    };
    let mut out = ValuesPager::default();
    for key in changed.keys {
        let value = backend.get(&key).await?;
        out.push(wr, key, value).await?;
    }
    out.flush(wr).await?;
    let keys = out.sent;
    write_frame(wr, &ToSecondary::JournalDone { wal_index, keys }).await?;
    tracing::info!(
        keys,
        after = position.wal_index,
        wal_index,
        "journal catch-up sent to secondary"
    );
    Ok(true)
}

/// Send every replicated key and value to an empty secondary, in bounded pages, then the WAL
/// index taken before the scan: writes made during the scan are replayed from it, so the result
/// converges even though the scan is not a snapshot.
pub(crate) async fn send_snapshot<W: AsyncWrite + Unpin>(
    wal: &crate::wal::Wal,
    backend: &dyn Backend,
    keys_estimate: u64,
    wr: &mut W,
) -> Result<(), ReplError> {
    let wal_index = wal.last_index();
    write_frame(wr, &ToSecondary::SnapshotStart { keys_estimate }).await?;
    let mut out = ValuesPager::default();
    let mut pages = ReplicatedPages::new(backend);
    while let Some(page) = pages.next_page().await? {
        for (key, value) in page {
            out.push(wr, key, Some(value)).await?;
        }
    }
    out.flush(wr).await?;
    let keys = out.sent;
    write_frame(wr, &ToSecondary::SnapshotDone { wal_index, keys }).await?;
    tracing::info!(keys, wal_index, "snapshot sent to secondary");
    Ok(())
}
