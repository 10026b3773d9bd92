//! The primary end: the cluster listener and one session per connected secondary, which
//! answers reconciliation requests and then streams the WAL.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::frame::{read_frame, write_frame};
use crate::manager::Inner;
use crate::messages::{now_ms, Position, ToPrimary, ToSecondary};
use crate::state::Mode;
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

/// Accept cluster connections for as long as the process lives. Connections arriving while
/// this cluster is not a primary are dropped before the handshake.
pub(crate) async fn run_listener(inner: Arc<Inner>, listener: TcpListener) {
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "cluster accept failed");
                continue;
            }
        };
        let Some(config) = inner.server_tls() else {
            drop(stream);
            continue;
        };
        let inner = inner.clone();
        tokio::spawn(async move {
            match crate::tls::accept(stream, config, HANDSHAKE_TIMEOUT).await {
                Ok((tls, peer_cn)) => {
                    let span = tracing::info_span!("dr_session", peer = %peer_cn);
                    let session =
                        tracing::Instrument::instrument(run_session(&inner, tls, &peer_cn), span);
                    if let Err(e) = session.await {
                        tracing::info!(peer = %peer_cn, error = %e, "secondary session ended");
                    }
                    inner.mark_peer_disconnected(&peer_cn);
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

async fn run_session<S>(inner: &Arc<Inner>, stream: S, peer_cn: &str) -> Result<(), ReplError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let (hello, _) = tokio::time::timeout(HANDSHAKE_TIMEOUT, read_frame::<_, ToPrimary>(&mut rd))
        .await
        .map_err(|_| ReplError::Refused("no hello".into()))??;
    let ToPrimary::Hello {
        cluster_id,
        secondary_id,
        generation,
        position,
        api_addr,
        cluster_addr,
    } = hello
    else {
        return refuse(&mut wr, "expected hello").await;
    };
    let snapshot = inner.state_snapshot().await;
    if snapshot.mode != Mode::Primary {
        return refuse(&mut wr, "this cluster is not a DR primary").await;
    }
    if secondary_id != peer_cn {
        return refuse(&mut wr, "certificate does not match secondary id").await;
    }
    if cluster_id != snapshot.cluster_id {
        return refuse(&mut wr, "secondary belongs to another replication set").await;
    }
    let known = snapshot
        .primary
        .as_ref()
        .and_then(|p| p.secondaries.get(&secondary_id))
        .is_some_and(|s| !s.revoked);
    if !known {
        return refuse(&mut wr, "secondary is unknown or revoked").await;
    }
    if generation > snapshot.generation {
        tracing::warn!(
            ours = snapshot.generation,
            theirs = generation,
            "a secondary follows a newer primary: this primary is stale and must be demoted"
        );
        return refuse(
            &mut wr,
            "primary is of an older generation than the secondary",
        )
        .await;
    }
    let last_wal = inner.wal.last_index();
    let oldest = inner.wal.oldest_index().await?.unwrap_or(last_wal + 1);
    let resume = match position {
        Some(Position {
            generation: g,
            wal_index,
        }) => g == snapshot.generation && wal_index <= last_wal && wal_index + 1 >= oldest,
        None => false,
    };
    let mut cancel = inner.register_session(
        &secondary_id,
        PeerStatus {
            node_id: secondary_id.clone(),
            api_address: api_addr,
            cluster_address: cluster_addr,
            connected: true,
            last_heartbeat_ms: now_ms(),
            acked_wal: position.map(|p| p.wal_index).unwrap_or(0),
            clock_skew_ms: 0,
        },
    );
    write_frame(
        &mut wr,
        &ToSecondary::Welcome {
            generation: snapshot.generation,
            last_wal,
            resume,
        },
    )
    .await?;
    tracing::info!(secondary = %secondary_id, resume, "secondary connected");

    // Reconciliation requests until the secondary asks to stream.
    let mut reconciler = Reconciler::default();
    let after = loop {
        let msg = tokio::select! {
            r = tokio::time::timeout(PEER_SILENCE_TIMEOUT * 8, read_frame::<_, ToPrimary>(&mut rd)) => {
                r.map_err(|_| ReplError::Refused("secondary went silent".into()))??.0
            }
            _ = cancel.changed() => return Err(ReplError::Refused("secondary revoked".into())),
        };
        let Some(msg) = reconciler
            .handle(inner.backend.as_ref(), &mut wr, msg)
            .await?
        else {
            continue;
        };
        match msg {
            ToPrimary::MerkleRequest => {
                let wal_index = inner.wal.last_index();
                let (tree, cells) = inner.merkle_fingerprint().await?;
                reconciler.use_cell_sums(cells);
                write_frame(&mut wr, &ToSecondary::Tree { wal_index, tree }).await?;
            }
            ToPrimary::SnapshotRequest => reconcile::send_snapshot(inner, &mut wr).await?,
            ToPrimary::Ack { applied, time_ms } => inner.peer_ack(&secondary_id, applied, time_ms),
            ToPrimary::StreamFrom { after } => break after,
            ToPrimary::Hello { .. } => return refuse(&mut wr, "unexpected hello").await,
            ToPrimary::CellSums { .. }
            | ToPrimary::ChunkRequest { .. }
            | ToPrimary::Listing { .. } => {}
        }
    };
    stream_wal(inner, &secondary_id, after, rd, wr, cancel).await
}

async fn stream_wal<R, W>(
    inner: &Arc<Inner>,
    secondary_id: &str,
    after: u64,
    mut rd: R,
    mut wr: W,
    mut cancel: watch::Receiver<bool>,
) -> Result<(), ReplError>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin,
{
    // Acks arrive on their own task so a slow reader never stalls the sender.
    let (ack_tx, mut ack_rx) = tokio::sync::mpsc::channel::<(u64, u64)>(64);
    let reader = tokio::spawn(async move {
        loop {
            match tokio::time::timeout(PEER_SILENCE_TIMEOUT, read_frame::<_, ToPrimary>(&mut rd))
                .await
            {
                Ok(Ok((ToPrimary::Ack { applied, time_ms }, _))) => {
                    if ack_tx.send((applied, time_ms)).await.is_err() {
                        return;
                    }
                }
                Ok(Ok(_)) => {}
                _ => return,
            }
        }
    });
    let mut wal_rx = inner.wal.subscribe();
    let mut position = after;
    let mut heartbeat = tokio::time::interval(HEARTBEAT_INTERVAL);
    let result = loop {
        let entries = inner
            .wal
            .read_after(position, WAL_BATCH_ENTRIES, WAL_BATCH_BYTES)
            .await?;
        if let Some(first) = entries.first() {
            if first.index > position + 1 {
                let oldest = inner.wal.oldest_index().await?.unwrap_or(0);
                if oldest > position + 1 {
                    break refuse(&mut wr, "WAL position is no longer retained").await;
                }
            }
            position = entries.last().map(|e| e.index).unwrap_or(position);
            let last_wal = inner.wal.last_index();
            write_frame(&mut wr, &ToSecondary::Wal { entries, last_wal }).await?;
            continue;
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
                Some((applied, time_ms)) => inner.peer_ack(secondary_id, applied, time_ms),
                None => break Err(ReplError::Refused("secondary connection lost".into())),
            },
            _ = cancel.changed() => break Err(ReplError::Refused("secondary revoked or replication stopped".into())),
        }
    };
    reader.abort();
    let _ = tokio::io::AsyncWriteExt::shutdown(&mut wr).await;
    result
}
