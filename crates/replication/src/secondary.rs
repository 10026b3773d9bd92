//! The secondary end: connect to the primary, reconcile by Merkle diff when the WAL cannot
//! be resumed, then apply streamed WAL entries in order, acknowledging as it goes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use bunker_storage::Op;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use crate::frame::{read_frame, write_frame, FrameReader};
use crate::manager::Inner;
use crate::merkle;
use crate::messages::{now_ms, Position, ToPrimary, ToSecondary};
use crate::status::SyncState;
use crate::ReplError;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The primary sends at least a heartbeat a second.
const PRIMARY_SILENCE_TIMEOUT: Duration = Duration::from_secs(10);
const ACK_INTERVAL: Duration = Duration::from_secs(1);
const RETRY_MIN: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// The primary computes a Merkle tree or a bucket listing by scanning its store; allow for
/// that, but no longer: a primary that stops answering mid-sync must not hang the secondary.
const SYNC_REPLY_TIMEOUT: Duration = Duration::from_secs(30);
const FETCH_CHUNK: usize = 1000;
const DELETE_CHUNK: usize = 1000;

/// Follow the primary until `stop` flips, reconnecting with backoff.
pub(crate) async fn run(inner: Arc<Inner>, mut stop: watch::Receiver<bool>) {
    let mut backoff = RETRY_MIN;
    loop {
        if *stop.borrow() {
            return;
        }
        inner.set_sync_state(SyncState::Connecting, "connecting");
        let result = tokio::select! {
            r = follow_once(&inner) => r,
            _ = stop.changed() => return,
        };
        match result {
            Ok(()) => backoff = RETRY_MIN,
            Err(e) => {
                tracing::warn!(error = %e, "replication stream from primary failed");
                inner.record_error(&e.to_string());
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

async fn follow_once(inner: &Arc<Inner>) -> Result<(), ReplError> {
    let snapshot = inner.state_snapshot().await;
    let secondary = snapshot
        .secondary
        .clone()
        .ok_or_else(|| ReplError::Internal("no primary configured".into()))?;
    let config = crate::tls::client_config(&secondary.ca_cert_pem, &secondary.client)?;
    let addr = secondary
        .primary_cluster_addr
        .trim_start_matches("https://")
        .trim_start_matches("tcp://")
        .to_owned();
    let tls = crate::tls::connect(&addr, config, CONNECT_TIMEOUT)
        .await
        .map_err(explain_tls_failure)?;
    let (mut rd, mut wr) = tokio::io::split(tls);
    let position = snapshot.synced_generation.map(|g| Position {
        generation: g,
        wal_index: inner.wal.last_index(),
    });
    write_frame(
        &mut wr,
        &ToPrimary::Hello {
            cluster_id: snapshot.cluster_id.clone(),
            secondary_id: secondary.secondary_id.clone(),
            generation: snapshot.generation,
            position,
            api_addr: inner.config.api_addr.clone(),
            cluster_addr: inner.config.cluster_addr.clone(),
        },
    )
    .await?;
    let (welcome, _) = tokio::time::timeout(
        PRIMARY_SILENCE_TIMEOUT,
        read_frame::<_, ToSecondary>(&mut rd),
    )
    .await
    .map_err(|_| ReplError::Refused("primary did not answer".into()))??;
    let (generation, last_wal, resume) = match welcome {
        ToSecondary::Welcome {
            generation,
            last_wal,
            resume,
        } => (generation, last_wal, resume),
        ToSecondary::Refused { reason } => return Err(ReplError::Refused(reason)),
        _ => return Err(ReplError::Refused("unexpected answer to hello".into())),
    };
    if generation < snapshot.generation {
        return Err(ReplError::Refused(format!(
            "refusing a primary of generation {generation}: this secondary already follows generation {}",
            snapshot.generation
        )));
    }
    inner.connected_to_primary(&secondary.primary_cluster_addr, last_wal);
    if generation > snapshot.generation {
        inner.adopt_generation(generation).await?;
    }
    if !resume {
        merkle_sync(inner, &mut rd, &mut wr).await?;
        inner.mark_synced(generation).await?;
    }
    let after = inner.wal.last_index();
    write_frame(&mut wr, &ToPrimary::StreamFrom { after }).await?;
    inner.set_sync_state(SyncState::StreamWals, "ready");
    stream(inner, rd, wr).await
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

async fn merkle_sync<R, W>(inner: &Arc<Inner>, rd: &mut R, wr: &mut W) -> Result<(), ReplError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    inner.set_sync_state(SyncState::MerkleDiff, "ready");
    let ours = inner.merkle_tree().await?;
    if ours.keys == 0 {
        return snapshot_sync(inner, rd, wr).await;
    }
    write_frame(wr, &ToPrimary::MerkleRequest).await?;
    let (wal_index, theirs) = match sync_reply(rd).await?.0 {
        ToSecondary::Tree { wal_index, tree } => (wal_index, tree),
        ToSecondary::Refused { reason } => return Err(ReplError::Refused(reason)),
        _ => return Err(ReplError::Refused("expected a Merkle tree".into())),
    };
    let buckets = ours.diff(&theirs);
    let mut fetched_keys = 0u64;
    let mut fetched_bytes = 0u64;
    let mut deleted = 0u64;
    if !buckets.is_empty() {
        write_frame(
            wr,
            &ToPrimary::BucketRequest {
                buckets: buckets.clone(),
            },
        )
        .await?;
        let listing = match sync_reply(rd).await?.0 {
            ToSecondary::BucketListing { entries } => entries,
            ToSecondary::Refused { reason } => return Err(ReplError::Refused(reason)),
            _ => return Err(ReplError::Refused("expected a bucket listing".into())),
        };
        let set: BTreeSet<u32> = buckets.iter().copied().collect();
        let mine: BTreeMap<String, [u8; 32]> = merkle::bucket_listing(inner.backend.as_ref(), &set)
            .await?
            .into_iter()
            .collect();
        let theirs: BTreeMap<String, [u8; 32]> = listing.into_iter().collect();
        inner.set_sync_state(SyncState::MerkleSync, "ready");
        let stale: Vec<String> = mine
            .keys()
            .filter(|k| !theirs.contains_key(*k))
            .cloned()
            .collect();
        for chunk in stale.chunks(DELETE_CHUNK) {
            let ops = chunk
                .iter()
                .map(|k| Op::Delete { key: k.clone() })
                .collect();
            inner.backend.batch(ops).await?;
            deleted += chunk.len() as u64;
        }
        let wanted: Vec<String> = theirs
            .iter()
            .filter(|(k, h)| mine.get(*k) != Some(*h))
            .map(|(k, _)| k.clone())
            .collect();
        for chunk in wanted.chunks(FETCH_CHUNK) {
            write_frame(
                wr,
                &ToPrimary::KeysRequest {
                    keys: chunk.to_vec(),
                },
            )
            .await?;
            let (msg, bytes) = sync_reply(rd).await?;
            let ToSecondary::Values { entries } = msg else {
                return Err(ReplError::Refused("expected values".into()));
            };
            let ops: Vec<Op> = entries
                .into_iter()
                .filter(|(k, _)| !crate::wal::is_local(k))
                .map(|(key, value)| match value {
                    Some(value) => Op::Put { key, value },
                    None => Op::Delete { key },
                })
                .collect();
            fetched_keys += ops.len() as u64;
            fetched_bytes += bytes as u64;
            inner.backend.batch(ops).await?;
        }
    }
    inner.wal.reset_to(wal_index).await?;
    inner.invalidate_merkle();
    inner.record_merkle_sync(buckets.len() as u64, fetched_keys, deleted, fetched_bytes);
    tracing::info!(
        buckets = buckets.len(),
        fetched_keys,
        deleted,
        fetched_bytes,
        wal_index,
        "Merkle sync complete"
    );
    Ok(())
}

/// Initial sync of an empty secondary: take every key the primary streams, then its WAL index.
/// Nothing to compare, so no bucket listings and no request per chunk.
async fn snapshot_sync<R, W>(inner: &Arc<Inner>, rd: &mut R, wr: &mut W) -> Result<(), ReplError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    inner.set_sync_state(SyncState::MerkleSync, "ready");
    write_frame(wr, &ToPrimary::SnapshotRequest).await?;
    let mut fetched_keys = 0u64;
    let mut fetched_bytes = 0u64;
    loop {
        let (msg, bytes) = sync_reply(rd).await?;
        match msg {
            ToSecondary::Values { entries } => {
                let ops: Vec<Op> = entries
                    .into_iter()
                    .filter(|(k, _)| !crate::wal::is_local(k))
                    .map(|(key, value)| match value {
                        Some(value) => Op::Put { key, value },
                        None => Op::Delete { key },
                    })
                    .collect();
                fetched_keys += ops.len() as u64;
                fetched_bytes += bytes as u64;
                inner.backend.batch(ops).await?;
            }
            ToSecondary::SnapshotDone { wal_index, .. } => {
                inner.wal.reset_to(wal_index).await?;
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

async fn stream<R, W>(inner: &Arc<Inner>, rd: R, mut wr: W) -> Result<(), ReplError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    // The ack timer can win the select while a frame is half read: FrameReader keeps the
    // partial frame, so nothing is lost when the read future is dropped.
    let mut rd = FrameReader::new(rd);
    let mut ack = tokio::time::interval(ACK_INTERVAL);
    loop {
        tokio::select! {
            frame = tokio::time::timeout(PRIMARY_SILENCE_TIMEOUT, rd.read_frame::<ToSecondary>()) => {
                let (msg, bytes) = frame.map_err(|_| ReplError::Refused("primary went silent".into()))??;
                match msg {
                    ToSecondary::Wal { entries, last_wal } => {
                        let touches_keyring = entries
                            .iter()
                            .any(|e| e.ops.iter().any(|op| op.key() == "core/keyring"));
                        let newest_ms = entries.last().map(|e| e.time_ms).unwrap_or(0);
                        let count = entries.len() as u64;
                        inner.wal.apply_replicated(&entries).await?;
                        inner.record_applied(count, bytes as u64, last_wal, newest_ms);
                        if touches_keyring {
                            inner.reload_core_keyring().await;
                        }
                        let applied = inner.wal.last_index();
                        write_frame(&mut wr, &ToPrimary::Ack { applied, time_ms: now_ms() }).await?;
                    }
                    ToSecondary::Heartbeat { last_wal, time_ms } => inner.primary_heartbeat(last_wal, time_ms),
                    ToSecondary::Refused { reason } => return Err(ReplError::Refused(reason)),
                    _ => return Err(ReplError::Refused("unexpected message while streaming".into())),
                }
            }
            _ = ack.tick() => {
                let applied = inner.wal.last_index();
                write_frame(&mut wr, &ToPrimary::Ack { applied, time_ms: now_ms() }).await?;
            }
        }
    }
}
