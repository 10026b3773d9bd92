//! The primary end: the cluster listener and one session per connected secondary, which
//! answers reconciliation requests and then streams the WAL.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::frame::{read_frame, read_frame_limited, write_frame};
use crate::manager::Inner;
use crate::messages::{now_ms, Hello, Position, ToPrimary, ToSecondary};
use crate::rpc_metrics::{self, Timed};
use crate::state::{Mode, ReplState};
use crate::status::PeerStatus;
use crate::ReplError;
use reconcile::Reconciler;

pub(crate) mod reconcile;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A secondary acks at least every second; silence this long means the link is dead.
const PEER_SILENCE_TIMEOUT: Duration = Duration::from_secs(15);
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
const WAL_BATCH_ENTRIES: usize = 512;
const WAL_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Largest hello accepted: until the peer is identified it may not make us allocate more.
const MAX_HELLO_BYTES: usize = 16 * 1024;
/// A session asks for the whole tree (or a snapshot) once per sync; a peer that keeps asking
/// only makes the primary scan its keyspace again and again.
const MAX_FULL_SCANS_PER_SESSION: usize = 4;
/// Connections in the TLS handshake or hello at once; more are dropped.
const MAX_PENDING_HANDSHAKES: usize = 16;
/// Of those, at most this many from one address: one peer cannot take the whole budget.
const MAX_PENDING_PER_PEER: usize = 4;

/// Pending handshakes per peer address; a [`PeerSlot`] gives its place back when dropped.
#[derive(Default, Clone)]
struct PendingPeers(Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>);

struct PeerSlot {
    peers: PendingPeers,
    ip: std::net::IpAddr,
}

impl PendingPeers {
    fn take(&self, ip: std::net::IpAddr) -> Option<PeerSlot> {
        let mut map = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = map.entry(ip).or_insert(0);
        if *n >= MAX_PENDING_PER_PEER {
            return None;
        }
        *n += 1;
        Some(PeerSlot {
            peers: self.clone(),
            ip,
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut map = self
            .peers
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = map.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// Accept cluster connections for as long as the process lives. Connections arriving while
/// this cluster is not a primary are dropped before the handshake.
pub(crate) async fn run_listener(inner: Arc<Inner>, listener: TcpListener) {
    let pending = Arc::new(tokio::sync::Semaphore::new(MAX_PENDING_HANDSHAKES));
    let per_peer = PendingPeers::default();
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "cluster accept failed");
                continue;
            }
        };
        // Nothing to serve: neither a DR primary nor a node that takes forwarded requests.
        let forwarding = inner
            .forwarding()
            .is_some_and(|f| f.server_config().is_some());
        if inner.server_tls().is_none() && !forwarding {
            drop(stream);
            continue;
        }
        let Some(peer_slot) = per_peer.take(remote.ip()) else {
            tracing::warn!(%remote, "too many cluster handshakes from this address; connection dropped");
            drop(stream);
            continue;
        };
        let Ok(permit) = pending.clone().try_acquire_owned() else {
            tracing::warn!(%remote, "too many cluster handshakes in progress; connection dropped");
            drop(stream);
            continue;
        };
        let permit = (permit, peer_slot);
        let inner = inner.clone();
        // The handshake, before anything is authenticated, is computed on the request runtime:
        // the costly part of a flood of handshakes (bounded above, but each costs a signature)
        // competes with client requests, as before the streams had a thread, not with the
        // streams (the socket's readiness still comes from this thread's reactor). A
        // connection whose client certificate was accepted has its session (hello, admission,
        // stream) handed to the replication thread below.
        let requests = inner.requests_runtime().clone();
        // The deadline counts from the accept, however long the task waits for a worker.
        let started = Instant::now();
        requests.spawn(async move {
            debug_assert!(!crate::runtime::on_streams_thread());
            let start = match crate::tls::client_hello(stream, HANDSHAKE_TIMEOUT).await {
                Ok(start) => start,
                Err(e) => {
                    tracing::info!(%remote, error = %e, "cluster connection refused");
                    return;
                }
            };
            let rest = HANDSHAKE_TIMEOUT.saturating_sub(started.elapsed());
            let peer = remote.to_string();
            if crate::tls::offers_alpn(&start, crate::tls::ALPN_FORWARD) {
                let Some(forwarding) = inner.forwarding() else {
                    return;
                };
                let Some(config) = forwarding.server_config() else {
                    tracing::debug!(%remote, "a forwarded request reached a node that is not active");
                    return;
                };
                let alpn = crate::tls::ALPN_FORWARD;
                match crate::tls::accept_started(start, &peer, config, alpn, rest).await {
                    Ok((tls, _)) => {
                        drop(permit);
                        // Served on the request runtime, where this task runs; only this
                        // socket's readiness comes from the replication thread's reactor.
                        forwarding.serve(tls, remote);
                    }
                    Err(e) => tracing::info!(%remote, error = %e, "forwarding handshake refused"),
                }
                return;
            }
            let Some(config) = inner.server_tls() else {
                return;
            };
            match crate::tls::accept_started(start, &peer, config, crate::tls::ALPN_DR, rest).await
            {
                Ok((tls, peer_cn)) => {
                    let fingerprint = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(crate::tls::cert_fingerprint)
                        .unwrap_or_default();
                    let span = tracing::info_span!("dr_session", peer = %peer_cn);
                    let streams = inner.streams_runtime().clone();
                    streams.spawn(async move {
                        debug_assert!(crate::runtime::on_streams_thread());
                        let session = tracing::Instrument::instrument(
                            run_session(&inner, tls, &peer_cn, fingerprint, permit),
                            span,
                        );
                        if let Err(e) = session.await {
                            tracing::info!(peer = %peer_cn, error = %e, "secondary session ended");
                        }
                    });
                }
                Err(e) => tracing::info!(%remote, error = %e, "cluster handshake refused"),
            }
        });
    }
}

async fn refuse<W: AsyncWrite + Unpin>(wr: &mut W, reason: &str) -> Result<(), ReplError> {
    write_frame(
        wr,
        &ToSecondary::Refused {
            reason: reason.to_owned(),
        },
    )
    .await?;
    Err(ReplError::Refused(reason.to_owned()))
}

/// Check a hello against the locked state and register the session under the same lock, so a
/// revocation either comes before (and the hello is refused) or after (and closes the session).
async fn admit(
    inner: &Arc<Inner>,
    hello: &Hello,
    peer_cn: &str,
    peer_cert: [u8; 32],
) -> Result<(ReplState, watch::Receiver<bool>), &'static str> {
    let mut state = inner.state.lock().await;
    if state.mode != Mode::Primary {
        return Err("this cluster is not a DR primary");
    }
    // Sealed or stepped down since this connection's handshake: the keys it was served with
    // are gone, and the sessions were closed under this lock.
    if !inner.serving() || inner.server_tls().is_none() {
        return Err("this cluster does not serve secondaries now (sealed or standby)");
    }
    if hello.secondary_id != peer_cn {
        return Err("certificate does not match secondary id");
    }
    if hello.cluster_id != state.cluster_id {
        return Err("secondary belongs to another replication set");
    }
    let known = state
        .primary
        .as_ref()
        .and_then(|p| p.secondaries.get(&hello.secondary_id))
        .is_some_and(|s| s.admits(&hex::encode(peer_cert)));
    if !known {
        return Err("secondary is unknown or revoked");
    }
    // Connected with a renewed certificate: the one before it is retired.
    let presented = hex::encode(peer_cert);
    let retire = state
        .primary
        .as_ref()
        .and_then(|p| p.secondaries.get(&hello.secondary_id))
        .is_some_and(|s| s.cert_sha256 == presented && s.previous_cert_sha256.is_some());
    if retire {
        let command = crate::control::Command::ConfirmSecondaryCertificate {
            id: hello.secondary_id.clone(),
            presented,
        };
        let core = inner.core.upgrade().ok_or("the server is shutting down")?;
        if let Err(e) = inner
            .apply(&mut state, command, core.as_ref(), Default::default())
            .await
        {
            tracing::warn!(error = %e, "retiring a secondary's previous certificate failed");
        }
    }
    if hello.generation > state.generation {
        tracing::warn!(
            ours = state.generation,
            theirs = hello.generation,
            "a secondary follows a newer primary: this primary is stale and must be demoted"
        );
        return Err("primary is of an older generation than the secondary");
    }
    let cancel = inner.register_session(
        &hello.secondary_id,
        PeerStatus {
            node_id: hello.secondary_id.clone(),
            api_address: hello.api_addr.clone(),
            cluster_address: hello.cluster_addr.clone(),
            connected: true,
            last_heartbeat_ms: now_ms(),
            acked_wal: hello.position.map(|p| p.wal_index).unwrap_or(0),
            // What it held before this session is not this session's lag (PostgreSQL's
            // walsender too measures only what it sent).
            replay_lag_through: hello.position.map(|p| p.wal_index).unwrap_or(0),
            ..PeerStatus::default()
        },
    );
    Ok((state.clone(), cancel))
}

/// Resolves once the session was told to stop (or its handle is gone).
async fn cancelled(cancel: &mut watch::Receiver<bool>) {
    loop {
        if *cancel.borrow_and_update() {
            return;
        }
        if cancel.changed().await.is_err() {
            return;
        }
    }
}

async fn run_session<S>(
    inner: &Arc<Inner>,
    stream: S,
    peer_cn: &str,
    peer_cert: [u8; 32],
    handshake_permit: (tokio::sync::OwnedSemaphorePermit, PeerSlot),
) -> Result<(), ReplError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let (hello, _) = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        read_frame_limited::<_, ToPrimary>(&mut rd, MAX_HELLO_BYTES),
    )
    .await
    .map_err(|_| ReplError::Refused("no hello".into()))??;
    let ToPrimary::Hello(hello) = hello else {
        return refuse(&mut wr, "expected hello").await;
    };
    let (snapshot, mut cancel) = match admit(inner, &hello, peer_cn, peer_cert).await {
        Ok(admitted) => admitted,
        Err(reason) => return refuse(&mut wr, reason).await,
    };
    drop(handshake_permit);
    let registered = cancel.clone();
    // Everything from here races the session's cancellation: revocation returns only once the
    // session stopped, whatever it was waiting on.
    let ended = tokio::select! {
        biased;
        () = cancelled(&mut cancel) => Err(ReplError::Refused("secondary revoked or replication stopped".into())),
        r = serve(inner, &snapshot, hello, peer_cert, rd, wr) => r,
    };
    inner.session_ended(peer_cn, &registered);
    ended
}

async fn serve<R, W>(
    inner: &Arc<Inner>,
    snapshot: &ReplState,
    hello: Hello,
    peer_cert: [u8; 32],
    mut rd: R,
    mut wr: W,
) -> Result<(), ReplError>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin,
{
    let secondary_id = hello.secondary_id;
    let last_wal = inner.wal.last_index();
    let oldest = inner.wal.oldest_index().await?;
    let resume = resumable(hello.position, snapshot.generation, last_wal, oldest);
    let guard = if resume {
        rpc_metrics::GUARD_FOUND
    } else {
        rpc_metrics::MISSING_GUARD
    };
    metrics::counter!(guard).increment(1);
    write_frame(
        &mut wr,
        &ToSecondary::Welcome {
            generation: snapshot.generation,
            last_wal,
            resume,
            cluster_addrs: match inner.core.upgrade() {
                Some(core) => core.cluster_addrs().await,
                None => Vec::new(),
            },
        },
    )
    .await?;
    tracing::info!(secondary = %secondary_id, resume, "secondary connected");

    // Reconciliation requests until the secondary asks to stream.
    let mut reconciler = Reconciler::default();
    let mut full_scans = 0usize;
    let mut renewed = false;
    let mut journal_served = false;
    let after = loop {
        let msg = tokio::time::timeout(
            PEER_SILENCE_TIMEOUT * 8,
            read_frame::<_, ToPrimary>(&mut rd),
        )
        .await
        .map_err(|_| ReplError::Refused("secondary went silent".into()))??
        .0;
        let Some(msg) = reconciler
            .handle(inner.backend.as_ref(), &mut wr, msg)
            .await?
        else {
            continue;
        };
        match msg {
            ToPrimary::MerkleRequest | ToPrimary::SnapshotRequest
                if full_scans >= MAX_FULL_SCANS_PER_SESSION =>
            {
                return refuse(&mut wr, "too many full reconciliations in one session").await;
            }
            ToPrimary::MerkleRequest => {
                let _answer = Timed::start(rpc_metrics::SERVER_SUB_PAGE_HASHES);
                full_scans += 1;
                let (tree, cells, wal_index) = inner.merkle_fingerprint_at().await?;
                reconciler.use_cell_sums(cells);
                write_frame(&mut wr, &ToSecondary::Tree { wal_index, tree }).await?;
            }
            ToPrimary::JournalRequest if journal_served => {
                return refuse(&mut wr, "one journal catch-up per session").await;
            }
            ToPrimary::JournalRequest => {
                journal_served = true;
                reconcile::send_journal(
                    &inner.wal,
                    inner.backend.as_ref(),
                    hello.position,
                    snapshot.generation,
                    &mut wr,
                )
                .await?;
            }
            ToPrimary::SnapshotRequest => {
                full_scans += 1;
                let keys_estimate = inner.cached_key_count().await;
                reconcile::send_snapshot(&inner.wal, inner.backend.as_ref(), keys_estimate, &mut wr)
                    .await?
            }
            ToPrimary::Ack { applied, time_ms } => {
                inner.peer_ack(&secondary_id, applied, time_ms, Instant::now())
            }
            ToPrimary::RenewCertificate { .. } if renewed => {
                return refuse(&mut wr, "one certificate renewal per session").await;
            }
            ToPrimary::RenewCertificate { public_key } => {
                renewed = true;
                let cert_pem = match inner
                    .renew_secondary_certificate(&secondary_id, peer_cert, &public_key)
                    .await
                {
                    Ok(cert_pem) => cert_pem,
                    Err(e) => {
                        tracing::warn!(secondary = %secondary_id, error = %e, "certificate renewal refused");
                        return refuse(&mut wr, "certificate renewal refused").await;
                    }
                };
                write_frame(&mut wr, &ToSecondary::Certificate { cert_pem }).await?;
            }
            ToPrimary::StreamFrom { after } => break after,
            ToPrimary::Hello(_) => return refuse(&mut wr, "unexpected hello").await,
            ToPrimary::CellSums { .. }
            | ToPrimary::ChunkRequest { .. }
            | ToPrimary::Listing { .. } => {}
        }
    };
    stream_wal(inner, &secondary_id, after, rd, wr).await
}

/// Whether a secondary at `position` can resume streaming: it follows this generation, and
/// the entries after its index are all still here (`oldest`: the oldest kept, if any).
pub(crate) fn resumable(
    position: Option<Position>,
    generation: u64,
    last_wal: u64,
    oldest: Option<u64>,
) -> bool {
    let oldest = oldest.unwrap_or(last_wal + 1);
    match position {
        Some(Position {
            generation: g,
            wal_index,
        }) => g == generation && wal_index <= last_wal && wal_index + 1 >= oldest,
        None => false,
    }
}

/// Entries `Wal::read_after` reads in one storage scan.
fn wal_read_page() -> usize {
    crate::wal::READ_PAGE
}

/// What a stream at `position` sends next.
pub(crate) enum Next {
    /// A `Wal` frame, and the position after it.
    Entries(ToSecondary, u64),
    /// Nothing new yet.
    Idle,
    /// The entries after `position` were truncated: the secondary must reconcile.
    NotRetained,
}

/// The next batch of WAL entries after `position`, at most `max_entries` (the runtime sends
/// [`WAL_BATCH_ENTRIES`]) and [`WAL_BATCH_BYTES`].
pub(crate) async fn next_batch(
    wal: &crate::wal::Wal,
    position: u64,
    max_entries: usize,
) -> Result<Next, ReplError> {
    // Read before the entries: whatever was committed by then must be found.
    let committed = wal.last_index();
    let entries = wal
        .read_after(position, max_entries, WAL_BATCH_BYTES)
        .await?;
    let Some(first) = entries.first() else {
        // Entries after `position` were committed and none is left: all were truncated.
        // Retention keeps at least the newest entry, so this is defensive (the simulation
        // met it with a retention of 0, which the configuration refuses).
        if committed > position {
            return Ok(Next::NotRetained);
        }
        return Ok(Next::Idle);
    };
    // Truncation deletes the oldest entries first, and may run while the read goes from one
    // page to the next: then the batch has a hole where the entries deleted under it were.
    // Read after the batch, the oldest entry says whether anything after `position` is gone
    // (a gap before the first entry read, or a hole inside): then the stream cannot go on
    // (found by the simulation: a secondary near the retention bound skipped the hole and
    // called itself consistent).
    match wal.oldest_index().await? {
        Some(oldest) if oldest <= position + 1 => {}
        _ if first.index == position + 1 && entries.len() <= wal_read_page() => {
            // One page, read in one scan, starting right after `position`: no hole possible,
            // whatever was truncated since.
        }
        _ => return Ok(Next::NotRetained),
    }
    let next = entries.last().map(|e| e.index).unwrap_or(position);
    let last_wal = wal.last_index();
    Ok(Next::Entries(ToSecondary::Wal { entries, last_wal }, next))
}

/// Aborts the task when dropped (the session's future may be dropped at any await).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn stream_wal<R, W>(
    inner: &Arc<Inner>,
    secondary_id: &str,
    after: u64,
    mut rd: R,
    mut wr: W,
) -> Result<(), ReplError>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin,
{
    let _session = Timed::start(rpc_metrics::SERVER_STREAM_WALS);
    // Acks arrive on their own task so a slow reader never stalls the sender.
    // Each with when it arrived, so the replay lag counts to its arrival, not to when this
    // loop, busy sending, gets to it.
    let (ack_tx, mut ack_rx) = tokio::sync::mpsc::channel::<(u64, u64, Instant)>(64);
    let reader = AbortOnDrop(tokio::spawn(async move {
        loop {
            match tokio::time::timeout(PEER_SILENCE_TIMEOUT, read_frame::<_, ToPrimary>(&mut rd))
                .await
            {
                Ok(Ok((ToPrimary::Ack { applied, time_ms }, _))) => {
                    if ack_tx
                        .send((applied, time_ms, Instant::now()))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Ok(Ok(_)) => {}
                _ => return,
            }
        }
    }));
    let mut wal_rx = inner.wal.subscribe();
    let mut position = after;
    let mut heartbeat = tokio::time::interval(HEARTBEAT_INTERVAL);
    let result = loop {
        match next_batch(&inner.wal, position, WAL_BATCH_ENTRIES).await? {
            Next::Entries(frame, next) => {
                let first = match &frame {
                    ToSecondary::Wal { entries, .. } => entries.first().map(|e| e.index),
                    _ => None,
                };
                position = next;
                write_frame(&mut wr, &frame).await?;
                if let Some(at) = first.and_then(|i| inner.wal.committed_at(i)) {
                    // No warning: after a reconnection the backlog's first frames carry
                    // commits from before it, a delay that is no stall of the stream.
                    rpc_metrics::record(rpc_metrics::SEND_DELAY, at.elapsed(), None);
                }
                // Under steady writes this loop may not reach the select below for a while.
                while let Ok((applied, time_ms, received)) = ack_rx.try_recv() {
                    inner.peer_ack(secondary_id, applied, time_ms, received);
                }
                continue;
            }
            Next::NotRetained => {
                break refuse(&mut wr, "WAL position is no longer retained").await;
            }
            Next::Idle => {}
        }
        tokio::select! {
            changed = wal_rx.changed() => {
                if changed.is_err() {
                    break Ok(());
                }
            }
            _ = heartbeat.tick() => {
                let msg = ToSecondary::Heartbeat { last_wal: inner.wal.last_index(), time_ms: now_ms() };
                write_frame(&mut wr, &msg).await?;
            }
            ack = ack_rx.recv() => match ack {
                Some((applied, time_ms, received)) => inner.peer_ack(secondary_id, applied, time_ms, received),
                None => break Err(ReplError::Refused("secondary connection lost".into())),
            },
        }
    };
    drop(reader);
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        tokio::io::AsyncWriteExt::shutdown(&mut wr),
    )
    .await;
    result
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;
    use bunker_storage::hooked_store::{HookedStore, StoreHooks};
    use bunker_storage::{Backend, InmemBackend, Op};

    use super::*;

    /// The second scan first deletes the WAL's oldest entries through `cutoff`: a truncation
    /// that runs while a read goes from one page to the next.
    #[derive(Default)]
    struct TruncatedMidRead {
        scans: AtomicUsize,
        cutoff: std::sync::Mutex<Option<u64>>,
    }

    #[async_trait]
    impl StoreHooks for TruncatedMidRead {
        async fn before_scan(&self, store: &InmemBackend) -> bunker_storage::Result<()> {
            let cutoff = *self.cutoff.lock().unwrap();
            if let Some(cutoff) = cutoff.filter(|_| self.scans.fetch_add(1, Ordering::SeqCst) == 1)
            {
                let deletes = (1..=cutoff)
                    .map(|i| Op::Delete {
                        key: crate::wal::entry_key(i),
                    })
                    .collect();
                store.batch(deletes).await?;
            }
            Ok(())
        }
    }

    #[tokio::test]
    async fn entries_truncated_between_two_pages_of_a_read_are_not_streamed_across() {
        let backend = Arc::new(HookedStore::new(TruncatedMidRead::default()));
        let wal = crate::wal::Wal::open(backend.clone()).await.unwrap();
        wal.set_recording(true);
        for i in 0..40 {
            backend
                .batch(vec![Op::Put {
                    key: format!("logical/k{}", i % 3),
                    value: vec![i],
                }])
                .await
                .unwrap();
        }
        assert_eq!(wal.last_index(), 40);
        // Untouched, the stream goes on from the start.
        assert!(matches!(
            next_batch(&wal, 0, WAL_BATCH_ENTRIES).await.unwrap(),
            Next::Entries(_, 40)
        ));
        // Entries 1..=30 deleted after the first page (1..=16) was read: the batch would jump
        // from 16 to 31.
        backend.hooks.scans.store(0, Ordering::SeqCst);
        *backend.hooks.cutoff.lock().unwrap() = Some(30);
        assert!(matches!(
            next_batch(&wal, 0, WAL_BATCH_ENTRIES).await.unwrap(),
            Next::NotRetained
        ));
    }
}
