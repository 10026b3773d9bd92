//! The secondary end: connect to the primary, reconcile by Merkle diff when the WAL cannot
//! be resumed, then apply streamed WAL entries in order, acknowledging as it goes.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bunker_storage::{Backend, Op};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use crate::frame::{read_frame, write_frame, FrameReader};
use crate::manager::Inner;
use crate::merkle;
use crate::messages::{now_ms, Hello, Position, ToPrimary, ToSecondary};
use crate::rpc_metrics::{self, Timed, SLOW_WRITE_PATH};
use crate::status::SyncState;
use crate::wal::WalEntry;
use crate::ReplError;

use self::stage::Stage;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The primary sends at least a heartbeat a second.
const PRIMARY_SILENCE_TIMEOUT: Duration = Duration::from_secs(10);
const ACK_INTERVAL: Duration = Duration::from_secs(1);
const RETRY_MIN: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// The primary computes a Merkle tree or a bucket listing by scanning its store; allow for
/// that, but no longer: a primary that stops answering mid-sync must not hang the secondary.
const SYNC_REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// Buckets per `CellSums` frame (32 KiB of sums).
const CELL_SUMS_PAGE_BUCKETS: usize = 64;
/// Differing cells reconciled per chunk: an eighth of the keyspace at most, so neither side
/// ever holds more than that share of the keys in memory while listing.
const CHUNK_CELLS: usize = merkle::CELLS / 8;
/// Listing entries per frame.
const LISTING_PAGE: usize = 4096;

/// Follow the primary until `stop` flips, reconnecting with backoff.
pub(crate) async fn run(inner: Arc<Inner>, mut stop: watch::Receiver<bool>) {
    let mut backoff = RETRY_MIN;
    // Which of the primary cluster's addresses to try: the next one after each failure, so a
    // secondary finds the new active node of an HA primary by itself.
    let mut attempt = 0usize;
    loop {
        if *stop.borrow() {
            return;
        }
        inner.set_sync_state(SyncState::Connecting, "connecting");
        let result = tokio::select! {
            r = follow_once(&inner, attempt) => r,
            _ = stop.changed() => return,
        };
        match result {
            Ok(()) => backoff = RETRY_MIN,
            Err(e) => {
                let text = explain_refusal(&e.to_string());
                tracing::warn!(error = %text, "replication stream from primary failed");
                inner.record_error(&text);
                attempt = attempt.wrapping_add(1);
            }
        }
        inner.set_sync_state(SyncState::Connecting, "transient_failure");
        tokio::select! {
            () = tokio::time::sleep(backoff) => {},
            _ = stop.changed() => return,
        }
        backoff = (backoff * 2).min(RETRY_MAX);
    }
}

async fn follow_once(inner: &Arc<Inner>, attempt: usize) -> Result<(), ReplError> {
    let snapshot = inner.state_snapshot().await;
    let secondary = snapshot
        .secondary
        .clone()
        .ok_or_else(|| ReplError::Internal("no primary configured".into()))?;
    let config = crate::tls::client_config(&secondary.ca_cert_pem, &secondary.client)?;
    let addrs = secondary.primary_addrs();
    let chosen = addrs
        .get(attempt % addrs.len().max(1))
        .cloned()
        .unwrap_or_else(|| secondary.primary_cluster_addr.clone());
    let addr = chosen
        .trim_start_matches("https://")
        .trim_start_matches("tcp://")
        .to_owned();
    let tls = crate::tls::connect(&addr, config, CONNECT_TIMEOUT)
        .await
        .map_err(explain_tls_failure)?;
    let (mut rd, mut wr) = tokio::io::split(tls);
    // Settled first: the last session may have been cancelled while committing.
    let wal_index = inner.wal.settled_index().await?;
    let position = snapshot.synced_generation.map(|g| Position {
        generation: g,
        wal_index,
    });
    write_frame(
        &mut wr,
        &ToPrimary::Hello(Hello {
            cluster_id: snapshot.cluster_id.clone(),
            secondary_id: secondary.secondary_id.clone(),
            generation: snapshot.generation,
            position,
            api_addr: inner.config.api_addr.clone(),
            cluster_addr: inner.config.cluster_addr.clone(),
        }),
    )
    .await?;
    let (welcome, _) = tokio::time::timeout(
        PRIMARY_SILENCE_TIMEOUT,
        read_frame::<_, ToSecondary>(&mut rd),
    )
    .await
    .map_err(|_| ReplError::Refused("primary did not answer".into()))??;
    let (generation, last_wal, resume, cluster_addrs) = match welcome {
        ToSecondary::Welcome {
            generation,
            last_wal,
            resume,
            cluster_addrs,
        } => (generation, last_wal, resume, cluster_addrs),
        ToSecondary::Refused { reason } => return Err(ReplError::Refused(reason)),
        _ => return Err(ReplError::Refused("unexpected answer to hello".into())),
    };
    if generation < snapshot.generation {
        return Err(ReplError::Refused(format!(
            "refusing a primary of generation {generation}: this secondary already follows generation {}",
            snapshot.generation
        )));
    }
    inner.connected_to_primary(&chosen, last_wal);
    inner
        .learn_primary_addrs(&snapshot.cluster_id, cluster_addrs)
        .await?;
    if generation > snapshot.generation {
        inner
            .adopt_generation(&snapshot.cluster_id, generation)
            .await?;
    }
    let mut link = secondary;
    if Inner::client_renewal_due(&link) {
        link.client = renew_client_certificate(inner, &link.secondary_id, &mut rd, &mut wr).await?;
    }
    let journal = position.is_some() && inner.journal_failed_at.load(Ordering::SeqCst) != wal_index;
    let reconciled = reconcile(
        inner,
        &snapshot.cluster_id,
        generation,
        resume,
        journal,
        &mut rd,
        &mut wr,
    )
    .await;
    let (staged, after) = match reconciled {
        Ok(reconciled) => reconciled,
        Err(error) => {
            if journal && !resume {
                inner.journal_failed_at.store(wal_index, Ordering::SeqCst);
            }
            return Err(error);
        }
    };
    crate::failpoint::hold("secondary-before-stream").await;
    write_frame(&mut wr, &ToPrimary::StreamFrom { after }).await?;
    inner.set_sync_state(SyncState::StreamWals, "ready");
    // The session ends when the certificate falls due, and the next one renews it.
    let until_renewal = Inner::client_renewal_time(&link)
        .map(|at| at.saturating_sub(time::OffsetDateTime::now_utc().unix_timestamp()))
        .and_then(|secs| u64::try_from(secs).ok())
        .map_or(Duration::MAX, Duration::from_secs);
    let streamer = Streamer::new(&snapshot.cluster_id, generation, staged);
    tokio::select! {
        r = stream(inner, streamer, rd, wr) => r,
        () = tokio::time::sleep(until_renewal) => {
            tracing::info!("the client certificate is due for renewal: reconnecting");
            Ok(())
        }
    }
}

/// Renew this secondary's client certificate on its session: a key generated here, signed by
/// the primary; the answer is checked and stored before it is used.
async fn renew_client_certificate<R, W>(
    inner: &Arc<Inner>,
    secondary_id: &str,
    rd: &mut R,
    wr: &mut W,
) -> Result<crate::tls::CertPair, ReplError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (key_pem, public_key) = crate::tls::new_client_key()?;
    write_frame(wr, &ToPrimary::RenewCertificate { public_key }).await?;
    let cert_pem = match sync_reply(rd).await?.0 {
        ToSecondary::Certificate { cert_pem } => cert_pem,
        ToSecondary::Refused { reason } => return Err(ReplError::Refused(reason)),
        _ => return Err(ReplError::Refused("expected a renewed certificate".into())),
    };
    let client = crate::tls::CertPair { cert_pem, key_pem };
    inner
        .store_client_certificate(secondary_id, client.clone())
        .await?;
    tracing::info!("renewed the client certificate with a key generated here");
    Ok(client)
}

/// In TLS 1.3 a refused client certificate shows up on the first read, as an alert: say what
/// it means for the operator.
fn explain_refusal(text: &str) -> String {
    if text.contains("CertificateRevoked") {
        return format!(
            "{text}: the primary refused this secondary's certificate: it was revoked \
             (revoke-secondary) or replaced by a newer activation token for the same id; get a \
             new activation token (secondary-token) and run update-primary"
        );
    }
    if text.contains("CertificateExpired") || text.contains("Expired") {
        return format!(
            "{text}: this secondary's certificate expired (it was not connected for longer than \
             half its validity, when it would have been renewed); get a new activation token \
             (secondary-token) and run update-primary"
        );
    }
    text.to_owned()
}

/// A primary that no longer trusts our certificate (or that we no longer trust) was
/// re-enabled or replaced: say what the operator must do, not only what TLS saw.
fn explain_tls_failure(e: crate::tls::TlsError) -> ReplError {
    let text = e.to_string();
    if text.contains("UnknownIssuer")
        || text.contains("UnknownCA")
        || text.contains("BadCertificate")
    {
        return ReplError::Refused(format!(
            "{text}: the primary's replication CA does not match this secondary's; it was disabled \
             and re-enabled (another replication set) or replaced. Get a new activation token \
             (secondary-token) and run update-primary, or disable and enable this secondary"
        ));
    }
    ReplError::from(e)
}

/// One reply of the primary during reconciliation, within [`SYNC_REPLY_TIMEOUT`].
async fn sync_reply<R: AsyncRead + Unpin>(rd: &mut R) -> Result<(ToSecondary, usize), ReplError> {
    tokio::time::timeout(SYNC_REPLY_TIMEOUT, read_frame::<_, ToSecondary>(rd))
        .await
        .map_err(|_| {
            ReplError::Refused(format!(
                "the primary did not answer within {}s during reconciliation",
                SYNC_REPLY_TIMEOUT.as_secs()
            ))
        })?
        .map_err(ReplError::from)
}

/// How a sync left the store.
enum Synced {
    /// Written in place, the WAL reset to the primary's position: consistent once the stream
    /// replays past the bound its first frame reports.
    InPlace,
    /// Nothing written yet: the stream replays into the stage, then commits it.
    Staged(Stage),
}

/// After the primary's welcome: reconcile unless the stream resumes, from the primary's key
/// journal first if `journal` (this secondary has a position to catch up from), else or if the
/// journal cannot serve it by Merkle diff. Returns the stage of a staged sync (nothing of it
/// visible yet) and the WAL index to stream from.
pub(crate) async fn reconcile<H, R, W>(
    host: &H,
    cluster_id: &str,
    generation: u64,
    resume: bool,
    journal: bool,
    rd: &mut R,
    wr: &mut W,
) -> Result<(Option<Stage>, u64), ReplError>
where
    H: SecondaryHost,
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut staged = None;
    if !resume {
        let journaled = match journal {
            true => journal_sync(host, cluster_id, rd, wr).await?,
            false => None,
        };
        let synced = match journaled {
            Some(synced) => synced,
            None => merkle_sync(host, cluster_id, rd, wr).await?,
        };
        match synced {
            Synced::Staged(stage) => staged = Some(stage),
            Synced::InPlace => host.mark_synced(cluster_id, generation, None).await?,
        }
    }
    // A staged sync streams from the tree it compared with; the store is still where it was.
    let after = staged
        .as_ref()
        .map_or_else(|| host.wal().last_index(), |s| s.base);
    Ok((staged, after))
}

/// Where a sync puts what the primary pushes.
trait Sink {
    async fn apply(&mut self, ops: Vec<Op>) -> Result<(), ReplError>;

    /// The sync has `units` chunks of cells to go through.
    fn planned(&mut self, _units: u64) {}

    /// A chunk is done, having fetched `keys` keys of `bytes` bytes.
    fn chunk_done(&mut self, _keys: u64, _bytes: u64) {}
}

/// Straight into a store (a secondary's first sync, and the unit tests).
impl Sink for &dyn Backend {
    async fn apply(&mut self, ops: Vec<Op>) -> Result<(), ReplError> {
        Ok(self.batch(ops).await?)
    }
}

/// Into a [`Stage`] while it fits; in place, reported torn, once it spilled.
struct StagingSink<'a, H> {
    inner: &'a H,
    cluster_id: &'a str,
    stage: Option<Stage>,
}

impl<H: SecondaryHost> Sink for StagingSink<'_, H> {
    fn planned(&mut self, units: u64) {
        self.inner.progress_total(units);
    }

    fn chunk_done(&mut self, keys: u64, bytes: u64) {
        self.inner.progress_add(keys, bytes, 1);
    }

    async fn apply(&mut self, ops: Vec<Op>) -> Result<(), ReplError> {
        let Some(stage) = self.stage.as_mut() else {
            return Ok(self.inner.backend().batch(ops).await?);
        };
        if stage.add(ops) {
            return Ok(());
        }
        match self.stage.take() {
            Some(stage) => spill(self.inner, self.cluster_id, stage).await,
            None => Ok(()),
        }
    }
}

/// A stage outgrew its bound: write it in place. The store is torn from now until the stream
/// replays past its bound.
async fn spill<H: SecondaryHost>(
    inner: &H,
    cluster_id: &str,
    stage: Stage,
) -> Result<(), ReplError> {
    tracing::warn!(
        keys = stage.len(),
        "a sync outgrew its stage: writing in place; not promotable without force until it catches up"
    );
    inner.mark_torn(cluster_id).await?;
    inner.backend().batch(stage.into_ops()).await?;
    Ok(())
}

async fn merkle_sync<H, R, W>(
    inner: &H,
    cluster_id: &str,
    rd: &mut R,
    wr: &mut W,
) -> Result<Synced, ReplError>
where
    H: SecondaryHost,
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let _sync = Timed::start(rpc_metrics::MERKLE_SYNC);
    inner.set_sync_state(SyncState::MerkleDiff, "ready");
    let (ours, our_cells) = inner.merkle_fingerprint().await?;
    if ours.keys == 0 {
        // Nothing to keep consistent: a first sync is torn until it completes.
        inner.mark_torn(cluster_id).await?;
        snapshot_sync(inner, rd, wr).await?;
        return Ok(Synced::InPlace);
    }
    let tree_fetch = Timed::start(rpc_metrics::CLIENT_SUB_PAGE_HASHES);
    write_frame(wr, &ToPrimary::MerkleRequest).await?;
    let reply = sync_reply(rd).await?.0;
    drop(tree_fetch);
    let (wal_index, theirs) = received_tree(reply)?;
    let buckets = ours.diff(&theirs);
    inner.set_sync_state(SyncState::MerkleSync, "ready");
    inner.progress_start("merkle", 0);
    crate::failpoint::hold("secondary-merkle-sync").await;
    let mut sink = StagingSink {
        inner,
        cluster_id,
        stage: Some(Stage::with_limit(wal_index, inner.stage_limit())),
    };
    let pushed = reconcile_cells(
        inner.backend(),
        &mut sink,
        rd,
        wr,
        &buckets,
        &our_cells,
        CHUNK_CELLS,
    )
    .await?;
    finish_sync(
        inner,
        sink,
        wal_index,
        buckets.len() as u64,
        pushed,
        SyncKind::Merkle,
    )
    .await
}

/// The end of a sync that fetched `pushed` (by `kind`, Merkle or journal) for the primary's
/// `wal_index`: its stage, to be replayed and committed, or the in-place writes' reset.
async fn finish_sync<H: SecondaryHost>(
    inner: &H,
    sink: StagingSink<'_, H>,
    wal_index: u64,
    buckets: u64,
    pushed: Pushed,
    kind: SyncKind,
) -> Result<Synced, ReplError> {
    let Pushed {
        keys: fetched_keys,
        deleted,
        bytes: fetched_bytes,
    } = pushed;
    match kind {
        SyncKind::Merkle => {
            inner.record_merkle_sync(buckets, fetched_keys, deleted, fetched_bytes);
        }
        SyncKind::Journal => inner.record_journal_sync(fetched_keys, deleted, fetched_bytes),
    }
    tracing::info!(
        buckets,
        fetched_keys,
        deleted,
        fetched_bytes,
        wal_index,
        staged = sink.stage.is_some(),
        "{} sync fetched what differs",
        kind.name()
    );
    match sink.stage {
        Some(mut stage) => {
            stage.fetched = [buckets, fetched_keys, deleted, fetched_bytes];
            stage.kind = kind;
            stage.base = wal_index;
            stage.position = wal_index;
            Ok(Synced::Staged(stage))
        }
        None => {
            inner.wal().reset_to(wal_index).await?;
            inner.invalidate_merkle();
            // `bench/` reads this line (and its fields) to time a catch-up.
            tracing::info!(
                buckets,
                fetched_keys,
                deleted,
                fetched_bytes,
                wal_index,
                "{} sync complete (written in place)",
                kind.name()
            );
            Ok(Synced::InPlace)
        }
    }
}

/// Catch-up from the primary's key journal (`wal::journal`): the current values of the keys
/// written since this secondary's position, staged as a Merkle sync's are. No scan on either
/// side: the work is in the writes missed, not in the keyspace. `None` when the primary cannot
/// serve it; then the Merkle diff runs on the same connection.
async fn journal_sync<H, R, W>(
    inner: &H,
    cluster_id: &str,
    rd: &mut R,
    wr: &mut W,
) -> Result<Option<Synced>, ReplError>
where
    H: SecondaryHost,
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let _sync = Timed::start(rpc_metrics::JOURNAL_SYNC);
    write_frame(wr, &ToPrimary::JournalRequest).await?;
    let mut sink = StagingSink {
        inner,
        cluster_id,
        stage: Some(Stage::with_limit(0, inner.stage_limit())),
    };
    let mut pushed = Pushed::default();
    loop {
        let (msg, bytes) = sync_reply(rd).await?;
        match msg {
            ToSecondary::Values { entries } => {
                if pushed.bytes == 0 {
                    inner.set_sync_state(SyncState::MerkleSync, "ready");
                    inner.progress_start("journal", 0);
                }
                let ops = values_to_ops(entries);
                let keys = ops.len() as u64;
                pushed.keys += keys;
                pushed.deleted += ops
                    .iter()
                    .filter(|op| matches!(op, Op::Delete { .. }))
                    .count() as u64;
                pushed.bytes += bytes as u64;
                inner.progress_add(keys, bytes as u64, keys);
                sink.apply(ops).await?;
                crate::failpoint::hold("secondary-journal-values-fetched").await;
            }
            ToSecondary::JournalDone { wal_index, .. } => {
                return finish_sync(inner, sink, wal_index, 0, pushed, SyncKind::Journal)
                    .await
                    .map(Some);
            }
            ToSecondary::JournalUnavailable { reason } if pushed.bytes == 0 => {
                tracing::info!(%reason, "no catch-up from the key journal: reconciling by Merkle diff");
                return Ok(None);
            }
            ToSecondary::Refused { reason } => return Err(ReplError::Refused(reason)),
            _ => {
                return Err(ReplError::Refused(
                    "expected values from the key journal".into(),
                ))
            }
        }
    }
}

/// The primary's answer to `MerkleRequest`: its tree and the WAL index it is exact for. A
/// tree whose buckets or root do not add up is refused before anything is compared with it.
fn received_tree(reply: ToSecondary) -> Result<(u64, merkle::MerkleTree), ReplError> {
    match reply {
        ToSecondary::Tree { wal_index, tree } if tree.is_consistent() => Ok((wal_index, tree)),
        ToSecondary::Tree { .. } => Err(ReplError::Refused(
            "the primary's Merkle tree is malformed (its buckets or root do not add up)".into(),
        )),
        ToSecondary::Refused { reason } => Err(ReplError::Refused(reason)),
        _ => Err(ReplError::Refused("expected a Merkle tree".into())),
    }
}

/// What the primary pushed during a Merkle sync.
#[derive(Debug, Default)]
struct Pushed {
    keys: u64,
    deleted: u64,
    bytes: u64,
}

/// The cell exchange for `buckets` (whose hashes differ; `our_sums` are this cluster's cell
/// sums), then the differing cells' keys in chunks of at most `chunk_cells` cells; applies
/// what the primary pushes.
async fn reconcile_cells<R, W>(
    backend: &dyn Backend,
    sink: &mut impl Sink,
    rd: &mut R,
    wr: &mut W,
    buckets: &[u32],
    our_sums: &merkle::CellSums,
    chunk_cells: usize,
) -> Result<Pushed, ReplError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut pushed = Pushed::default();
    if buckets.is_empty() {
        return Ok(pushed);
    }
    let cells = {
        let _diff = Timed::start(rpc_metrics::MERKLE_DIFF);
        let _rpc = Timed::start(rpc_metrics::CLIENT_CONFLICTING_PAGES);
        differing_cells(our_sums, rd, wr, buckets).await?
    };
    let chunks = cells.chunks(chunk_cells.max(1));
    sink.planned(chunks.len() as u64);
    for chunk in chunks {
        let before = (pushed.keys, pushed.bytes);
        let fetch = Timed::start(rpc_metrics::CLIENT_FETCH_KEYS);
        sync_chunk(backend, sink, rd, wr, chunk, &mut pushed).await?;
        drop(fetch);
        sink.chunk_done(pushed.keys - before.0, pushed.bytes - before.1);
    }
    Ok(pushed)
}

/// Sends this cluster's cell sums for `buckets` and returns the cells the primary found
/// differing.
async fn differing_cells<R, W>(
    sums: &merkle::CellSums,
    rd: &mut R,
    wr: &mut W,
    buckets: &[u32],
) -> Result<Vec<u32>, ReplError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let pages = buckets.chunks(CELL_SUMS_PAGE_BUCKETS);
    let count = pages.len();
    for (i, page) in pages.enumerate() {
        let page_sums = sums.cells(&merkle::cells_of_buckets(page));
        let msg = ToPrimary::CellSums {
            buckets: page.to_vec(),
            sums: page_sums,
            last: i + 1 == count,
        };
        write_frame(wr, &msg).await?;
    }
    match sync_reply(rd).await?.0 {
        ToSecondary::CellDiff { cells } => Ok(cells),
        ToSecondary::Refused { reason } => Err(ReplError::Refused(reason)),
        _ => Err(ReplError::Refused("expected the differing cells".into())),
    }
}

/// Lists this cluster's keys in `cells` to the primary and applies what it pushes back.
async fn sync_chunk<R, W>(
    backend: &dyn Backend,
    sink: &mut impl Sink,
    rd: &mut R,
    wr: &mut W,
    cells: &[u32],
    pushed: &mut Pushed,
) -> Result<(), ReplError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    write_frame(
        wr,
        &ToPrimary::ChunkRequest {
            cells: cells.to_vec(),
        },
    )
    .await?;
    let set = merkle::CellSet::new(cells);
    // The chunk's keys by id, to turn the primary's deletions back into keys.
    let mut keys: HashMap<merkle::KeyId, String> = HashMap::new();
    let mut listing = Vec::new();
    let mut pages = merkle::ReplicatedPages::new(backend);
    while let Some(page) = pages.next_page().await? {
        for (key, value) in page {
            let (cell, id) = merkle::cell_and_id(&key);
            if set.contains(cell) {
                listing.push((id, merkle::leaf_digest(&key, &value)));
                keys.insert(id, key);
            }
        }
        if listing.len() >= LISTING_PAGE {
            let entries = std::mem::take(&mut listing);
            write_frame(
                wr,
                &ToPrimary::Listing {
                    entries,
                    last: false,
                },
            )
            .await?;
        }
    }
    write_frame(
        wr,
        &ToPrimary::Listing {
            entries: listing,
            last: true,
        },
    )
    .await?;
    loop {
        let (msg, bytes) = sync_reply(rd).await?;
        pushed.bytes += bytes as u64;
        let ops = match msg {
            ToSecondary::Values { entries } => {
                let ops = values_to_ops(entries);
                pushed.keys += ops.len() as u64;
                ops
            }
            ToSecondary::Deletions { ids } => {
                let ops: Vec<Op> = ids
                    .iter()
                    .filter_map(|id| keys.remove(id))
                    .map(|key| Op::Delete { key })
                    .collect();
                pushed.deleted += ops.len() as u64;
                ops
            }
            ToSecondary::ChunkDone => return Ok(()),
            ToSecondary::Refused { reason } => return Err(ReplError::Refused(reason)),
            _ => {
                return Err(ReplError::Refused(
                    "expected values of differing cells".into(),
                ))
            }
        };
        sink.apply(ops).await?;
        crate::failpoint::hold("secondary-merkle-values-fetched").await;
    }
}

/// Puts and deletes for pushed values, local keys dropped (a primary never sends them).
fn values_to_ops(entries: Vec<(String, Option<Vec<u8>>)>) -> Vec<Op> {
    entries
        .into_iter()
        .filter(|(k, _)| !crate::wal::is_local(k))
        .map(|(key, value)| match value {
            Some(value) => Op::Put { key, value },
            None => Op::Delete { key },
        })
        .collect()
}

/// Initial sync of an empty secondary: take every key the primary streams, then its WAL index.
/// Nothing to compare, so no bucket listings and no request per chunk.
async fn snapshot_sync<H, R, W>(inner: &H, rd: &mut R, wr: &mut W) -> Result<(), ReplError>
where
    H: SecondaryHost,
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    inner.set_sync_state(SyncState::MerkleSync, "ready");
    inner.progress_start("snapshot", 0);
    write_frame(wr, &ToPrimary::SnapshotRequest).await?;
    let mut fetched_keys = 0u64;
    let mut fetched_bytes = 0u64;
    loop {
        let (msg, bytes) = sync_reply(rd).await?;
        match msg {
            ToSecondary::SnapshotStart { keys_estimate } => inner.progress_total(keys_estimate),
            ToSecondary::Values { entries } => {
                let ops = values_to_ops(entries);
                let keys = ops.len() as u64;
                fetched_keys += keys;
                fetched_bytes += bytes as u64;
                inner.backend().batch(ops).await?;
                inner.progress_add(keys, bytes as u64, keys);
                crate::failpoint::hold("secondary-sync-batch-applied").await;
            }
            ToSecondary::SnapshotDone { wal_index, .. } => {
                inner.wal().reset_to(wal_index).await?;
                inner.invalidate_merkle();
                inner.record_merkle_sync(
                    crate::merkle::BUCKETS as u64,
                    fetched_keys,
                    0,
                    fetched_bytes,
                );
                tracing::info!(
                    fetched_keys,
                    fetched_bytes,
                    wal_index,
                    "snapshot sync complete"
                );
                return Ok(());
            }
            ToSecondary::Refused { reason } => return Err(ReplError::Refused(reason)),
            _ => {
                return Err(ReplError::Refused(
                    "unexpected message during snapshot".into(),
                ))
            }
        }
    }
}

/// Streamed frames read ahead of the applier. Each holds at most the primary's WAL batch
/// (4 MiB), so this bounds what waits in memory.
const READ_AHEAD_FRAMES: usize = 16;
/// WAL entries applied together at most: what has arrived while the last batch committed is
/// applied in one batch (one fsync), up to this many.
const APPLY_MAX_ENTRIES: usize = 4096;

pub(crate) type Frame = Result<(ToSecondary, usize), ReplError>;

/// Reads frames on its own task, so the next frames arrive while a batch is being committed.
fn spawn_reader<R>(rd: R) -> (tokio::sync::mpsc::Receiver<Frame>, AbortOnDrop)
where
    R: AsyncRead + Unpin + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(READ_AHEAD_FRAMES);
    let task = tokio::spawn(async move {
        let mut rd = FrameReader::new(rd);
        loop {
            let frame = match tokio::time::timeout(PRIMARY_SILENCE_TIMEOUT, rd.read_frame()).await {
                Ok(Ok(frame)) => Ok(frame),
                Ok(Err(e)) => Err(ReplError::from(e)),
                Err(_) => Err(ReplError::Refused("primary went silent".into())),
            };
            let failed = frame.is_err();
            if tx.send(frame).await.is_err() || failed {
                return;
            }
        }
    });
    (rx, AbortOnDrop(task))
}

/// Aborts the task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn stream<R, W>(
    inner: &Arc<Inner>,
    mut streamer: Streamer,
    rd: R,
    mut wr: W,
) -> Result<(), ReplError>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin,
{
    let _session = Timed::start(rpc_metrics::CLIENT_STREAM_WALS);
    let (mut frames, _reader) = spawn_reader(rd);
    let mut ack = tokio::time::interval(ACK_INTERVAL);
    // A frame taken off the queue that did not fit in the last batch.
    let mut held: Option<Frame> = None;
    loop {
        let frame = match held.take() {
            Some(frame) => frame,
            None => tokio::select! {
                frame = frames.recv() => frame.unwrap_or_else(|| Err(ReplError::Refused("replication stream closed".into()))),
                _ = ack.tick() => {
                    let applied = inner.wal.last_index();
                    write_frame(&mut wr, &ToPrimary::Ack { applied, time_ms: now_ms() }).await?;
                    continue;
                }
            },
        };
        let (msg, bytes) = frame?;
        let taken = std::time::Instant::now();
        let (mut entries, mut last_wal, mut bytes) = match msg {
            ToSecondary::Wal { entries, last_wal } => (entries, last_wal, bytes),
            ToSecondary::Heartbeat { last_wal, time_ms } => {
                inner.primary_heartbeat(last_wal, time_ms);
                (Vec::new(), last_wal, 0)
            }
            ToSecondary::Refused { reason } => return Err(ReplError::Refused(reason)),
            _ => {
                return Err(ReplError::Refused(
                    "unexpected message while streaming".into(),
                ))
            }
        };
        streamer.bound_by(inner, last_wal).await;
        held = join_arrived(&mut entries, &mut last_wal, &mut bytes, || {
            frames.try_recv().ok()
        });
        if let Some(received) = entries.last() {
            metrics::gauge!(rpc_metrics::LAST_UPSTREAM_REMOTE_WAL).set(received.index as f64);
        }
        if streamer.apply(inner, entries, last_wal, bytes).await? {
            let applied = inner.wal.last_index();
            write_frame(
                &mut wr,
                &ToPrimary::Ack {
                    applied,
                    time_ms: now_ms(),
                },
            )
            .await?;
            rpc_metrics::record(rpc_metrics::APPLY, taken.elapsed(), Some(SLOW_WRITE_PATH));
        }
    }
}

/// Frames that already arrived (`next` gives them without waiting) join a batch of entries,
/// up to [`APPLY_MAX_ENTRIES`], so they commit together. Returns the first frame that cannot
/// join (not entries, an error, or too many), to be handled next, after this batch.
pub(crate) fn join_arrived(
    entries: &mut Vec<WalEntry>,
    last_wal: &mut u64,
    bytes: &mut usize,
    mut next: impl FnMut() -> Option<Frame>,
) -> Option<Frame> {
    while !entries.is_empty() && entries.len() < APPLY_MAX_ENTRIES {
        match next()? {
            Ok((
                ToSecondary::Wal {
                    entries: more,
                    last_wal: newer,
                },
                more_bytes,
            )) if entries.len() + more.len() <= APPLY_MAX_ENTRIES => {
                entries.extend(more);
                *last_wal = (*last_wal).max(newer);
                *bytes += more_bytes;
            }
            other => return Some(other),
        }
    }
    None
}

/// The secondary's side of one stream, without its I/O: what each batch of streamed WAL
/// entries does to the store and to the consistency marks. The runtime's read loop and the
/// simulation both drive it.
pub(crate) struct Streamer {
    cluster_id: String,
    generation: u64,
    /// A staged sync's stage: entries replay into it until it passes the bound.
    staged: Option<Stage>,
    /// The primary's last WAL index in the first frame of the stream: every value a sync read
    /// is at or below it.
    bound: Option<u64>,
}

impl Streamer {
    pub(crate) fn new(cluster_id: &str, generation: u64, staged: Option<Stage>) -> Streamer {
        Streamer {
            cluster_id: cluster_id.to_owned(),
            generation,
            staged,
            bound: None,
        }
    }

    /// A frame (entries or heartbeat) said the primary was at `last_wal`. The first one bounds
    /// the sync before the stream; later ones change nothing.
    pub(crate) async fn bound_by<H: SecondaryHost>(&mut self, host: &H, last_wal: u64) {
        if self.bound.is_some() {
            return;
        }
        self.bound = Some(last_wal);
        if self.staged.is_none() {
            host.mark_consistent_after(&self.cluster_id, last_wal).await;
        }
    }

    /// Apply streamed entries, in order (one frame's or several): into the stage while there
    /// is one, else to the store; commits the stage once it passed the bound. Returns whether
    /// entries were received (and an acknowledgement is due).
    pub(crate) async fn apply<H: SecondaryHost>(
        &mut self,
        host: &H,
        entries: Vec<WalEntry>,
        last_wal: u64,
        bytes: usize,
    ) -> Result<bool, ReplError> {
        let newest_ms = entries.last().map(|e| e.time_ms).unwrap_or(0);
        let count = entries.len() as u64;
        if let Some(stage) = self.staged.as_mut() {
            // Replayed into the stage; visible only once it is committed whole.
            if !stage.replay(&entries)? {
                if let Some(stage) = self.staged.take() {
                    let position = stage.position;
                    spill(host, &self.cluster_id, stage).await?;
                    host.wal().reset_to(position).await?;
                    host.invalidate_merkle();
                    host.mark_synced(&self.cluster_id, self.generation, None)
                        .await?;
                    if let Some(bound) = self.bound {
                        host.mark_consistent_after(&self.cluster_id, bound).await;
                    }
                }
            }
        } else if !entries.is_empty() {
            let touches_keyring = entries
                .iter()
                .any(|e| e.ops.iter().any(|op| op.key() == "core/keyring"));
            host.wal().apply_replicated(&entries).await?;
            if touches_keyring {
                host.reload_core_keyring().await;
            }
        }
        if count > 0 {
            host.record_applied(count, bytes as u64, last_wal, newest_ms);
        }
        if let (Some(stage), Some(bound)) = (self.staged.as_ref(), self.bound) {
            if stage.position >= bound {
                if let Some(stage) = self.staged.take() {
                    commit_stage(host, &self.cluster_id, self.generation, stage).await?;
                }
            }
        }
        Ok(count > 0)
    }
}

/// The stage replayed past the bound: it is the primary's state at its position. Commit it
/// with that position in one batch; from now on the store is that consistent point.
async fn commit_stage<H: SecondaryHost>(
    inner: &H,
    cluster_id: &str,
    generation: u64,
    stage: Stage,
) -> Result<(), ReplError> {
    let position = stage.position;
    let keys = stage.len();
    let touches_keyring = stage.writes("core/keyring");
    let fetched = stage.fetched;
    let kind = stage.kind;
    crate::failpoint::hold("secondary-before-stage-commit").await;
    inner
        .wal()
        .commit_staged(stage.into_ops(), position)
        .await?;
    inner.invalidate_merkle();
    inner
        .mark_synced(cluster_id, generation, Some(position))
        .await?;
    if touches_keyring {
        inner.reload_core_keyring().await;
    }
    let [buckets, fetched_keys, deleted, fetched_bytes] = fetched;
    // `bench/` reads this line (and its fields) to time a catch-up.
    tracing::info!(
        buckets,
        fetched_keys,
        deleted,
        fetched_bytes,
        wal_index = position,
        keys,
        "{} sync complete (staged, committed)",
        kind.name()
    );
    Ok(())
}

mod host;
pub(crate) mod stage;

use stage::SyncKind;
#[cfg(test)]
mod tests;

pub(crate) use host::SecondaryHost;
