//! The DR manager: owns the replication state, answers `sys/replication/*`, and starts and
//! stops the primary listener sessions and the secondary stream as the mode changes.

mod ceremony;
mod certificates;
mod endpoints;
mod fetch;
mod status_json;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bunker_core::{Core, DrMode, ReplicationHandler};
use bunker_sdk::Caller;
use bunker_sdk::{Request, Response, Result as LResult};
use bunker_storage::{Backend, HookedBackend};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::core_port::DrCore;
use crate::messages::now_ms;
use crate::state::{Mode, ReplState};
use crate::status::{PeerStatus, SecondaryStatus, SyncState};
use crate::tls::ForwardedConnections;
use crate::wal::Wal;
use crate::ReplError;

/// How often old WAL entries beyond the retention are deleted. Often, so each pass is small:
/// a pass every 2 s under 3k writes/s deleted 6k entries at once and showed up as a spike in
/// a secondary's apply latency, and every 250 ms instead of 50 ms put 10-15 ms on figure 4's
/// per-write p99 at 6,500 writes/s (bench/README.md, "Known problems"): the deletes of a pass
/// land in the next checkpoint, which the writes committed meanwhile wait behind.
const TRUNCATE_INTERVAL: Duration = Duration::from_millis(50);
/// How often a primary checks whether its server certificate is due for renewal.
const CERTIFICATE_CHECK_INTERVAL: Duration = Duration::from_secs(600);

/// Settings from the server configuration.
#[derive(Clone, Debug)]
pub struct DrConfig {
    /// Address the cluster port listens on (`listener.cluster_address`); none disables DR.
    pub cluster_listen_addr: Option<String>,
    /// Cluster address advertised to secondaries (`cluster_addr`).
    pub cluster_addr: String,
    /// This cluster's API address (`api_addr`), put in activation tokens.
    pub api_addr: String,
    /// WAL entries kept for secondaries to resume from.
    pub wal_retention: u64,
    /// WAL indices whose keys the key journal keeps, for secondaries the WAL no longer
    /// reaches to catch up without a Merkle diff (0: no journal).
    pub key_journal_retention: u64,
    /// Unwrap activation tokens over plain `http://` on loopback (test setups only).
    pub activation_allow_http: bool,
}

/// Inputs of effects that are not state: the root key a promotion was authorised with.
#[derive(Default)]
pub(crate) struct EffectInputs {
    pub root_key: Option<zeroize::Zeroizing<Vec<u8>>>,
}

/// How long revocation waits for a secondary's stream to stop sending. Every write of a
/// session races its cancellation, so this is reached only by a task that does not run.
const SESSION_CLOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a mode change waits for the follower to stop (it stops at its next await).
const FOLLOWER_STOP_TIMEOUT: Duration = Duration::from_secs(10);

pub struct DrManager {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub config: DrConfig,
    pub backend: Arc<dyn Backend>,
    pub wal: Arc<Wal>,
    /// The core, through the narrow trait of what DR needs of it.
    pub core: Weak<dyn DrCore>,
    /// The control-plane state. Held for a whole transition: authorize, apply, persist,
    /// effects (see [`crate::control`]).
    pub(crate) state: tokio::sync::Mutex<ReplState>,
    mode: AtomicU8,
    server_tls: RwLock<Option<Arc<rustls::ServerConfig>>>,
    /// The other protocol of the cluster port (HA request forwarding), when the node has one.
    forwarding: RwLock<Option<Arc<dyn ForwardedConnections>>>,
    peers: Mutex<BTreeMap<String, PeerStatus>>,
    sessions: Mutex<sessions::Sessions>,
    /// A `secondary/enable` is under way (see `holds_lock_sealed`).
    pub(crate) becoming_secondary: std::sync::atomic::AtomicBool,
    /// The running follower: its stop signal and its task.
    follower: Mutex<Option<(watch::Sender<bool>, tokio::task::JoinHandle<()>)>>,
    sec_status: Mutex<SecondaryStatus>,
    pub(crate) ceremonies: ceremony::Ceremonies,
    /// The last Merkle tree computed, with the WAL index and epoch it is valid for.
    merkle_cache: tokio::sync::Mutex<Option<CachedTree>>,
    /// Bumped by every change of the replicated keyspace that bypasses the WAL (Merkle sync,
    /// wipe, mode changes), so a cached tree is never served stale.
    merkle_epoch: std::sync::atomic::AtomicU64,
    /// The root the refresher computed last: (root hex, WAL index, epoch) it is exact for.
    published_root: Mutex<Option<(String, u64, u64)>>,
    /// Progress of `reindex` for status (Vault's `reindex_*` fields).
    pub(crate) reindex: ReindexProgress,
    /// The primary's root key from the activation bundle, used once the first sync brought
    /// the primary's keyring, then dropped (the barrier keeps what it needs).
    replicated_root_key: Mutex<Option<zeroize::Zeroizing<Vec<u8>>>>,
    /// Private half of `generate-public-key`, consumed by `secondary/enable`.
    pub(crate) activation_key: Mutex<Option<aws_lc_rs::agreement::PrivateKey>>,
    /// The WAL position (u64::MAX: none) at which a session that asked for a journal
    /// catch-up failed: the next session from the same position goes straight to the Merkle
    /// diff, so a primary that cannot serve the journal never holds the secondary in a loop.
    pub(crate) journal_failed_at: std::sync::atomic::AtomicU64,
    /// The replication thread (the cluster port, the follower) and the request runtime.
    runtimes: crate::runtime::Runtimes,
}

/// A computed Merkle tree and cell sums, and what they are valid for.
pub(crate) struct CachedTree {
    wal_index: u64,
    epoch: u64,
    tree: crate::merkle::MerkleTree,
    cells: Arc<crate::merkle::CellSums>,
}

fn mode_to_u8(m: Mode) -> u8 {
    match m {
        Mode::Disabled => 0,
        Mode::Primary => 1,
        Mode::Secondary => 2,
    }
}

impl DrManager {
    /// Serve HA request forwarding on the cluster port too.
    pub fn set_forwarding(&self, forwarding: Arc<dyn ForwardedConnections>) {
        *self
            .inner
            .forwarding
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(forwarding);
    }

    /// Open the WAL on `backend`, restore the saved mode, and start the cluster listener and
    /// the secondary stream as the state says. Registers itself on the core.
    pub async fn start(
        core: &Arc<Core>,
        hooked: Arc<dyn HookedBackend>,
        config: DrConfig,
    ) -> Result<Arc<DrManager>, ReplError> {
        // The Merkle index sums the keyspace in the background, in steps, while the server
        // serves (a restart after a crash otherwise waited for a scan of every key).
        let runtimes = crate::runtime::Runtimes::start()?;
        let wal = Wal::open_deferred(hooked.clone()).await?;
        let backend: Arc<dyn Backend> = hooked;
        let state = ReplState::load(backend.as_ref()).await?;
        if let Some(index) = wal.merkle_index() {
            // A secondary stopped mid-sync holds data its WAL index does not describe.
            let torn = state.mode == Mode::Secondary && state.consistent_after.is_none();
            index.set_exact(!torn);
            let (index, backend) = (index.clone(), backend.clone());
            tokio::spawn(async move {
                if let Err(error) = index.build(backend.as_ref()).await {
                    tracing::warn!(%error, "the Merkle index could not be summed; trees are scanned until it is");
                }
            });
        }
        let inner = Arc::new(Inner {
            config,
            backend,
            wal,
            core: Arc::downgrade(core) as Weak<dyn DrCore>,
            mode: AtomicU8::new(mode_to_u8(state.mode)),
            state: tokio::sync::Mutex::new(state.clone()),
            server_tls: RwLock::new(None),
            forwarding: RwLock::new(None),
            peers: Mutex::new(BTreeMap::new()),
            sessions: Mutex::new(HashMap::new()),
            follower: Mutex::new(None),
            becoming_secondary: std::sync::atomic::AtomicBool::new(false),
            sec_status: Mutex::new(SecondaryStatus::default()),
            ceremonies: ceremony::Ceremonies::default(),
            activation_key: Mutex::new(None),
            journal_failed_at: std::sync::atomic::AtomicU64::new(u64::MAX),
            replicated_root_key: Mutex::new(None),
            merkle_cache: tokio::sync::Mutex::new(None),
            merkle_epoch: std::sync::atomic::AtomicU64::new(0),
            published_root: Mutex::new(None),
            reindex: ReindexProgress::default(),
            runtimes,
        });
        if let Some(addr) = inner.config.cluster_listen_addr.clone() {
            let listener = TcpListener::bind(&addr).await.map_err(|e| {
                ReplError::Internal(format!("binding the cluster listener to {addr}: {e}"))
            })?;
            tracing::info!(address = %addr, "cluster listener started");
            // Registered with the replication thread's reactor, so its connections are too; a
            // failure here is a start-up error like the bind's.
            let listener = {
                let _streams = inner.runtimes.streams.enter();
                listener
                    .into_std()
                    .and_then(TcpListener::from_std)
                    .map_err(|e| {
                        ReplError::Internal(format!(
                            "moving the cluster listener to the replication thread: {e}"
                        ))
                    })?
            };
            (inner.runtimes.streams).spawn(crate::primary::run_listener(inner.clone(), listener));
        }
        match state.mode {
            Mode::Primary => {
                inner.wal.promote();
                // Keys sealed by the barrier wait for the unseal ([`DrManager::unsealed`]);
                // a state written before they were sealed still has them in the clear.
                if state
                    .primary
                    .as_ref()
                    .is_some_and(crate::state::PrimaryState::has_keys)
                {
                    inner.install_tls_for(&state)?;
                }
            }
            // With HA, only the lock holder follows (it starts when it takes the lock).
            Mode::Secondary if state.secondary.is_some() && inner.active_node() => {
                inner.start_follower()
            }
            _ => {}
        }
        let truncator = Arc::downgrade(&inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(TRUNCATE_INTERVAL);
            loop {
                tick.tick().await;
                let Some(inner) = truncator.upgrade() else {
                    return;
                };
                // Only the node that writes (the active one of an HA cluster) truncates.
                if !inner.active_node() {
                    continue;
                }
                // A pass's deletes go through the storage writer with clients' writes, a page
                // at a time (each page's commit is timed and warned about by the storage), so
                // nothing waits for a whole pass: it warns as background work does. At the
                // write path's 50 ms, passes that only shared a busy writer warned in every
                // benchmark run, and read as stalls.
                let gc = crate::rpc_metrics::Timed::warn_after(
                    crate::rpc_metrics::WAL_GC,
                    crate::rpc_metrics::SLOW_BACKGROUND,
                );
                crate::failpoint::hold("wal-truncation-pass").await;
                match inner
                    .wal
                    .truncate(
                        inner.config.wal_retention,
                        inner.config.key_journal_retention,
                    )
                    .await
                {
                    Ok(deleted) => {
                        drop(gc);
                        metrics::gauge!(crate::rpc_metrics::WAL_GC_DELETED).set(deleted as f64);
                        if let Ok(Some(oldest)) = inner.wal.oldest_index().await {
                            let kept = inner.wal.last_index().saturating_sub(oldest) + 1;
                            metrics::gauge!(crate::rpc_metrics::WAL_GC_TOTAL).set(kept as f64);
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "WAL truncation failed"),
                }
            }
        });
        tokio::spawn(refresh_merkle_root(Arc::downgrade(&inner)));
        let renewer = Arc::downgrade(&inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(CERTIFICATE_CHECK_INTERVAL);
            loop {
                tick.tick().await;
                let Some(inner) = renewer.upgrade() else {
                    return;
                };
                if inner.mode() == Mode::Primary && inner.active_node() {
                    if let Err(e) = inner.renew_server_certificate_if_due().await {
                        tracing::warn!(error = %e, "renewing the server certificate failed");
                    }
                }
            }
        });
        let manager = Arc::new(DrManager { inner });
        core.set_replication(manager.clone());
        Ok(manager)
    }

    pub fn wal(&self) -> &Arc<Wal> {
        &self.inner.wal
    }

    /// Stop the secondary's follower and wait for it (bounded) before the process exits: it
    /// runs on the replication thread, which the request runtime's end does not stop.
    pub async fn shutdown(&self) {
        if let Some(task) = self.inner.stop_follower() {
            if tokio::time::timeout(FOLLOWER_STOP_TIMEOUT, task)
                .await
                .is_err()
            {
                tracing::warn!(timeout = ?FOLLOWER_STOP_TIMEOUT, "the replication follower did not stop in time");
            }
        }
    }
}

/// What status says of `reindex`: whether one runs, the replicated entries its scan has read,
/// how many it expects (the last tree's key count), and when the last one finished.
#[derive(Debug, Default)]
pub(crate) struct ReindexProgress {
    pub(crate) running: std::sync::atomic::AtomicBool,
    pub(crate) scanned: std::sync::atomic::AtomicU64,
    pub(crate) total: std::sync::atomic::AtomicU64,
    pub(crate) last_epoch: std::sync::atomic::AtomicU64,
}

impl ReindexProgress {
    /// Vault's status fields for it.
    pub(crate) fn to_json(&self) -> serde_json::Value {
        let running = self.running.load(Ordering::Acquire);
        let last = self.last_epoch.load(Ordering::Relaxed).to_string();
        if !running {
            return serde_json::json!({"reindex_in_progress": false, "last_reindex_epoch": last});
        }
        let scanned = self.scanned.load(Ordering::Relaxed);
        serde_json::json!({
            "reindex_in_progress": true,
            "reindex_stage": "building",
            "reindex_building_progress": scanned,
            "reindex_building_total": self.total.load(Ordering::Relaxed).max(scanned),
            "last_reindex_epoch": last,
        })
    }
}

/// Written (a local key) after a restore on a primary, through the storage's write queue: when
/// it is durable, every write admitted during the restore window is too.
const RESTORE_SETTLED_KEY: &str = "repl/restore/settled-generation";

/// Turns WAL recording back on when dropped, if this cluster is still a primary.
struct ResumeRecording<'a>(&'a Arc<Inner>);

impl Drop for ResumeRecording<'_> {
    fn drop(&mut self) {
        if self.0.mode() == Mode::Primary && !self.0.wal.is_recording() {
            self.0.wal.promote();
        }
    }
}

#[async_trait]
impl ReplicationHandler for DrManager {
    fn dr_mode(&self) -> DrMode {
        match self.inner.mode.load(Ordering::Acquire) {
            1 => DrMode::Primary,
            2 => DrMode::Secondary,
            _ => DrMode::Disabled,
        }
    }

    fn wal_index(&self) -> Option<u64> {
        (self.dr_mode() == DrMode::Primary).then(|| self.inner.wal.last_index())
    }

    fn answers_on_standby(&self, path: &str) -> bool {
        use crate::control::Endpoint;
        let endpoint = path
            .strip_prefix("sys/replication/")
            .and_then(Endpoint::parse);
        matches!(endpoint, Some(Endpoint::Status | Endpoint::DrStatus))
    }

    /// The restore runs under the replication state's lock: no secondary is admitted until it
    /// is over, and the new generation is persisted before the storage changes, so a crash in
    /// the middle still makes every secondary resync (from whatever the restore left, which is
    /// what this cluster then holds too). Writes of clients during the window are not in the
    /// WAL either; the secondaries' Merkle sync, which compares whole keyspaces, brings them.
    async fn restore_on_primary(&self, restore: bunker_core::RestoreFuture<'_>) -> LResult<()> {
        let inner = &self.inner;
        let core = inner.core.upgrade().ok_or_else(|| {
            bunker_sdk::LogicalError::Unavailable("the server is shutting down".into())
        })?;
        let mut state = inner.state.lock().await;
        let command = crate::control::Command::BeginRestore;
        inner
            .apply(&mut state, command, core.as_ref(), Default::default())
            .await?;
        // Whatever happens from here (an error, a panic, this future dropped), recording
        // resumes: a primary that stopped recording for good would let its secondaries drift.
        let resume = ResumeRecording(inner);
        tracing::warn!(
            generation = state.generation,
            "restoring a snapshot on a DR primary: a new history; every secondary resyncs"
        );
        let restored = restore.await;
        let command = crate::control::Command::EndRestore;
        let ended = inner
            .apply(&mut state, command, core.as_ref(), Default::default())
            .await;
        drop(resume);
        // Writes admitted while recording was off may still be committing: one more write
        // through the same queue waits for them, then the cached Merkle tree is dropped, so no
        // tree that misses them serves a secondary's sync.
        let settled = inner
            .backend
            .put(
                RESTORE_SETTLED_KEY,
                state.generation.to_string().into_bytes(),
            )
            .await;
        inner.invalidate_merkle();
        inner.mark_merkle_exact();
        // Once the storage was replaced, the restore succeeded: the caller must reload what it
        // caches from the new storage whatever else failed here (the new generation was
        // persisted before; recording resumed with the guard).
        restored?;
        if let Err(e) = ended {
            tracing::warn!(error = %e, "ending the restore window: persisting the state failed");
        }
        if let Err(e) = settled {
            tracing::warn!(error = %e, "the write after a restore failed; the Merkle cache was dropped anyway");
        }
        Ok(())
    }

    async fn handle(
        &self,
        core: &dyn DrCore,
        req: &Request,
        caller: Option<&Caller>,
    ) -> LResult<Response> {
        endpoints::handle(&self.inner, core, req, caller).await
    }

    fn record_metrics(&self) {
        self.inner.record_metrics();
    }

    async fn unsealed(&self) {
        if let Err(e) = self.inner.open_primary_keys().await {
            tracing::error!(error = %e, "the DR primary's keys could not be opened; the cluster port stays closed");
        }
    }

    async fn reload(&self) -> bunker_sdk::Result<DrMode> {
        self.inner.reload_state().await?;
        Ok(self.dr_mode())
    }

    async fn refresh_standby(&self) -> DrMode {
        if let Err(e) = self.inner.refresh_standby_state().await {
            tracing::debug!(error = %e, "a standby could not read the DR state");
        }
        self.dr_mode()
    }

    async fn stored_dr_mode(&self) -> DrMode {
        match ReplState::load(self.inner.backend.as_ref()).await {
            Ok(state) => match state.mode {
                Mode::Primary => DrMode::Primary,
                Mode::Secondary => DrMode::Secondary,
                Mode::Disabled => DrMode::Disabled,
            },
            Err(_) => self.dr_mode(),
        }
    }

    fn holds_lock_sealed(&self) -> bool {
        // Becoming a secondary wipes the storage and seals this node before the new mode is
        // stored: the lock must not be given up in between.
        self.dr_mode() == DrMode::Secondary || self.inner.becoming_secondary.load(Ordering::SeqCst)
    }

    async fn activated(&self) -> bunker_sdk::Result<()> {
        Ok(self.inner.reactivate().await?)
    }

    fn deactivated(&self) {
        // Only the lock holder applies the stream: stop at once (its writes carry the epoch it
        // was started under, so the fence refuses them from now on anyway).
        self.inner.stop_follower();
        let inner = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            if let Some(inner) = inner.upgrade() {
                inner.forget_primary_keys().await;
            }
        });
    }

    fn sealed(&self) {
        let inner = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            if let Some(inner) = inner.upgrade() {
                inner.forget_primary_keys().await;
            }
        });
    }
}

/// Shortest pause between two background Merkle scans.
const MERKLE_REFRESH_MIN: Duration = Duration::from_millis(200);
/// A scan that took `d` is followed by a pause of this many times `d`: the refresher uses at
/// most a tenth of a core, however large the keyspace...
const MERKLE_REFRESH_DUTY: u32 = 9;
/// ...but never pauses longer than this: a scan's wall time can include a stopped process or a
/// starved machine, and a root that lags by minutes misleads whoever compares two clusters.
const MERKLE_REFRESH_MAX: Duration = Duration::from_secs(10);

/// Keep the published Merkle root current: recompute it when the WAL index or the epoch
/// moved, paced by its own cost. Status readers only read what this published, so no number
/// of (unauthenticated) status calls can make the server scan.
async fn refresh_merkle_root(inner: Weak<Inner>) {
    let mut pause = MERKLE_REFRESH_MIN;
    loop {
        tokio::time::sleep(pause).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        // An index whose summing failed (the store could not write then) is summed again.
        // (Not while the summing at start runs: it would only sum again.)
        let unsummed =
            |i: &&crate::merkle::MerkleIndex| !i.is_ready() && !i.is_retired() && !i.is_building();
        if let Some(index) = inner.wal.merkle_index().filter(unsummed) {
            index.start_build();
            if let Err(error) = index.build(inner.backend.as_ref()).await {
                tracing::debug!(%error, "summing the Merkle index failed again");
            }
        }
        // An HA standby serves no status that needs it; the active node computes its own. A
        // backend that keeps the Merkle index needs no refresher: status reads the index (once
        // it is summed).
        let indexed = inner
            .wal
            .merkle_index()
            .is_some_and(|i| i.is_ready() || i.is_building());
        if inner.mode() == Mode::Disabled || !inner.active_node() || indexed {
            continue;
        }
        let index = inner.wal.last_index();
        let epoch = inner.merkle_epoch.load(Ordering::Acquire);
        let fresh = inner
            .published_root
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .map(|(_, i, e)| *i == index && *e == epoch)
            .unwrap_or(false);
        if fresh {
            pause = MERKLE_REFRESH_MIN;
            continue;
        }
        let started = std::time::Instant::now();
        match inner.merkle_fingerprint().await {
            Ok((tree, _)) => {
                let mut p = inner
                    .published_root
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                *p = Some((tree.root_hex(), index, epoch));
            }
            Err(e) => tracing::warn!(error = %e, "computing the Merkle root failed"),
        }
        pause =
            (started.elapsed() * MERKLE_REFRESH_DUTY).clamp(MERKLE_REFRESH_MIN, MERKLE_REFRESH_MAX);
    }
}

impl Inner {
    /// The last published Merkle root and the WAL index it is exact for, if it still
    /// describes the keyspace (no change outside the WAL since).
    pub(crate) fn published_merkle_root(&self) -> Option<(String, u64)> {
        if let Some((root, _, exact_at)) = self.wal.merkle_index().and_then(|i| i.root()) {
            return exact_at.map(|wal_index| (root, wal_index));
        }
        let epoch = self.merkle_epoch.load(Ordering::Acquire);
        let p = self
            .published_root
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        p.as_ref()
            .filter(|(_, _, e)| *e == epoch)
            .map(|(root, index, _)| (root.clone(), *index))
    }

    pub fn mode(&self) -> Mode {
        match self.mode.load(Ordering::Acquire) {
            1 => Mode::Primary,
            2 => Mode::Secondary,
            _ => Mode::Disabled,
        }
    }

    /// Note a change of the replicated keyspace that the WAL index does not show.
    /// (The Merkle index needs no recomputation: it sees every write.)
    pub fn invalidate_merkle(&self) {
        self.merkle_epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// The data as it stands is the state at the last WAL index written (a new primary's
    /// history starts here: a mode change into primary, a restore on a primary).
    fn mark_merkle_exact(&self) {
        if let Some(index) = self.wal.merkle_index() {
            index.set_exact(true);
        }
    }

    /// The Merkle tree of the replicated keyspace. Recomputing costs a full scan, so the last
    /// tree is reused while neither the WAL index nor the epoch moved: every replicated write
    /// moves one of them (recorded or applied WAL entries; Merkle sync, wipe and mode changes
    /// bump the epoch). On a cluster with replication disabled nothing is cached.
    pub async fn merkle_tree(&self) -> Result<crate::merkle::MerkleTree, ReplError> {
        Ok(self.merkle_fingerprint().await?.0)
    }

    /// The tree and the cell sums of the replicated keyspace, computed by one scan and cached
    /// together (the sums are up to 2 MiB), so a reconciliation that starts from the tree does not
    /// scan again for the cells. A status read always gets the exact tree: reusing a recent one
    /// under write load was tried, and a root that lags the WAL index misleads anyone comparing
    /// two clusters' roots.
    pub async fn merkle_fingerprint(
        &self,
    ) -> Result<(crate::merkle::MerkleTree, Arc<crate::merkle::CellSums>), ReplError> {
        let (tree, cells, _) = self.merkle_fingerprint_at().await?;
        Ok((tree, cells))
    }

    /// As [`Inner::merkle_fingerprint`], with the WAL index the tree is exact for. From the
    /// Merkle index where the backend keeps one (no scan); else from the cache or a scan, with
    /// the WAL index read before it.
    pub async fn merkle_fingerprint_at(
        &self,
    ) -> Result<(crate::merkle::MerkleTree, Arc<crate::merkle::CellSums>, u64), ReplError> {
        // While the index sums at start, waiting for it costs less than a scan of our own.
        if let Some(index) = self.wal.merkle_index().filter(|i| i.is_building()) {
            index.wait_ready().await;
        }
        if let Some((tree, cells, wal_index)) = self
            .wal
            .merkle_index()
            .and_then(|index| index.fingerprint())
        {
            return Ok((tree, Arc::new(cells), wal_index));
        }
        let index = self.wal.last_index();
        let (tree, cells) = self.scanned_fingerprint().await?;
        Ok((tree, cells, index))
    }

    /// The tree and cell sums by a scan, or the cached ones while neither the WAL index nor the
    /// epoch moved.
    async fn scanned_fingerprint(
        &self,
    ) -> Result<(crate::merkle::MerkleTree, Arc<crate::merkle::CellSums>), ReplError> {
        let mut cache = self.merkle_cache.lock().await;
        let epoch = self.merkle_epoch.load(Ordering::Acquire);
        let index = self.wal.last_index();
        if self.mode() != Mode::Disabled {
            if let Some(c) = cache.as_ref() {
                if c.wal_index == index && c.epoch == epoch {
                    return Ok((c.tree.clone(), c.cells.clone()));
                }
            }
        }
        // Scans are serialised by the cache's lock; only a reindex's scan feeds its progress
        // (a background refresh must not reset or advance it).
        let uncounted = std::sync::atomic::AtomicU64::new(0);
        let scanned = if self.reindex.running.load(Ordering::Acquire) {
            self.reindex.scanned.store(0, Ordering::Relaxed);
            &self.reindex.scanned
        } else {
            &uncounted
        };
        let (tree, cells) =
            crate::merkle::compute_with_cells_counting(self.backend.as_ref(), scanned).await?;
        let cells = Arc::new(cells);
        // A write that landed during the scan moved the index: cache under the index read
        // before the scan, so the next exact request recomputes.
        *cache = Some(CachedTree {
            wal_index: index,
            epoch,
            tree: tree.clone(),
            cells: cells.clone(),
        });
        Ok((tree, cells))
    }

    pub async fn state_snapshot(&self) -> ReplState {
        self.state.lock().await.clone()
    }

    /// Apply `command` to the locked state: the pure transition, then its effects in order.
    /// The caller holds the lock for the whole call, so nothing interleaves.
    pub(crate) async fn apply(
        self: &Arc<Self>,
        state: &mut tokio::sync::MutexGuard<'_, ReplState>,
        command: crate::control::Command,
        core: &dyn DrCore,
        mut inputs: EffectInputs,
    ) -> Result<(), bunker_sdk::LogicalError> {
        let enabling = matches!(command, crate::control::Command::EnableSecondary(_));
        // A mode change that makes an HA node serve requests: it advertises itself (as at an
        // activation), so standbys find it.
        let serves = matches!(
            command,
            crate::control::Command::Promote { .. } | crate::control::Command::DisableSecondary
        );
        let step = crate::control::transition(state, command)
            .map_err(|r| bunker_sdk::LogicalError::InvalidRequest(r.0))?;
        if enabling {
            self.becoming_secondary.store(true, Ordering::SeqCst);
        }
        let result = self.run_effects(state, step, core, &mut inputs).await;
        self.becoming_secondary.store(false, Ordering::SeqCst);
        if serves && result.is_ok() {
            core.readvertise().await;
        }
        result
    }

    /// The effects of a transition, in order.
    async fn run_effects(
        self: &Arc<Self>,
        state: &mut tokio::sync::MutexGuard<'_, ReplState>,
        step: crate::control::Step,
        core: &dyn DrCore,
        inputs: &mut EffectInputs,
    ) -> Result<(), bunker_sdk::LogicalError> {
        use crate::control::Effect;
        let mut next = Some(step.state);
        for effect in step.effects {
            match effect {
                Effect::Persist => {
                    if let Some(mut next) = next.take() {
                        if let Some(primary) = next.primary.as_mut() {
                            primary.seal_keys(|plain| {
                                core.barrier_encrypt(crate::state::PRIMARY_KEYS_AAD, plain)
                                    .map_err(|e| {
                                        ReplError::Unavailable(format!(
                                            "sealing the DR primary's keys: {e}"
                                        ))
                                    })
                            })?;
                        }
                        next.save(self.backend.as_ref()).await?;
                        self.invalidate_merkle();
                        if next.mode == Mode::Primary && state.mode != Mode::Primary {
                            self.mark_merkle_exact();
                        }
                        **state = next;
                        self.mode.store(mode_to_u8(state.mode), Ordering::Release);
                    }
                }
                Effect::StopFollower => {
                    self.settle_follower().await?;
                }
                Effect::StartFollower => self.start_follower(),
                Effect::WipeStorage => {
                    core.wipe_storage().await?;
                    self.invalidate_merkle();
                    self.wal.reset_to(0).await.map_err(ReplError::from)?;
                }
                Effect::StartWalRecording => self.wal.promote(),
                Effect::StopWalRecording => self.wal.set_recording(false),
                Effect::InstallTls => self.install_tls_for(state)?,
                Effect::CloseSessions(id) => {
                    self.close_sessions(id.as_deref()).await;
                    self.forget_peer(id.as_deref());
                }
                Effect::OpenBarrier => match inputs.root_key.take() {
                    Some(root) => core.unseal_with_root_key(&root).await?,
                    None => core.reload_tables().await?,
                },
                Effect::ReloadTables => core.reload_tables().await?,
            }
        }
        Ok(())
    }

    fn core_or_shutdown(&self) -> Result<Arc<dyn DrCore>, ReplError> {
        self.core
            .upgrade()
            .ok_or_else(|| ReplError::Unavailable("the server is shutting down".into()))
    }

    /// Apply a command reported by the secondary's stream (it holds no request).
    async fn apply_reported(
        self: &Arc<Self>,
        command: crate::control::Command,
    ) -> Result<(), ReplError> {
        let core = self.core_or_shutdown()?;
        let mut state = self.state.lock().await;
        self.apply(&mut state, command, core.as_ref(), EffectInputs::default())
            .await
            .map_err(|e| ReplError::Refused(e.to_string()))
    }

    pub fn forwarding(&self) -> Option<Arc<dyn ForwardedConnections>> {
        self.forwarding
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub fn server_tls(&self) -> Option<Arc<rustls::ServerConfig>> {
        if self.mode() != Mode::Primary {
            return None;
        }
        self.server_tls
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// After an unseal: open a primary's keys with the barrier and serve the cluster port. A
    /// state that still holds them in the clear (written before keys were sealed) is sealed
    /// and persisted now, which removes the clear copy.
    pub(crate) async fn open_primary_keys(self: &Arc<Self>) -> Result<(), ReplError> {
        let core = self
            .core
            .upgrade()
            .ok_or_else(|| ReplError::Unavailable("the server is shutting down".into()))?;
        let mut state = self.state.lock().await;
        if state.mode != Mode::Primary || core.is_sealed() {
            return Ok(());
        }
        let Some(primary) = state.primary.as_mut() else {
            return Ok(());
        };
        if primary.sealed_keys.is_none() {
            primary.seal_keys(|plain| {
                core.barrier_encrypt(crate::state::PRIMARY_KEYS_AAD, plain)
                    .map_err(|e| {
                        ReplError::Unavailable(format!("sealing the DR primary's keys: {e}"))
                    })
            })?;
            state.save(self.backend.as_ref()).await?;
            tracing::info!("the DR primary's keys are now stored sealed by the barrier");
        } else {
            primary.open_keys(|sealed| {
                core.barrier_decrypt(crate::state::PRIMARY_KEYS_AAD, sealed)
                    .map_err(|e| ReplError::Corrupt(format!("opening the DR primary's keys: {e}")))
            })?;
        }
        self.install_tls_for(&state)?;
        drop(state);
        // A primary sealed for weeks may find its server certificate due.
        self.renew_server_certificate_if_due().await
    }

    /// This node took the HA lock: another node may have written the WAL and the replication
    /// state since this one loaded them. Read both again, then serve as the state says.
    pub(crate) async fn reactivate(self: &Arc<Self>) -> Result<(), ReplError> {
        let mode = self.reload_state().await?;
        match mode {
            Mode::Primary => self.open_primary_keys().await,
            Mode::Secondary => {
                if self.state.lock().await.secondary.is_some() {
                    tracing::info!(
                        wal_index = self.wal.last_index(),
                        "this node took the HA lock of a DR secondary: following the primary from the stored position"
                    );
                    self.start_follower();
                }
                Ok(())
            }
            Mode::Disabled => Ok(()),
        }
    }

    /// Read the WAL position and the replication state from storage again (another node of
    /// an HA cluster wrote them until now). Returns the mode found.
    pub(crate) async fn reload_state(self: &Arc<Self>) -> Result<Mode, ReplError> {
        self.wal.reload().await?;
        let loaded = ReplState::load(self.backend.as_ref()).await?;
        {
            let mut state = self.state.lock().await;
            *state = loaded;
            self.mode.store(mode_to_u8(state.mode), Ordering::Release);
            if state.mode == Mode::Primary {
                self.wal.promote();
            } else {
                self.wal.set_recording(false);
            }
        }
        self.forget_derived().await;
        tracing::info!(
            wal_index = self.wal.last_index(),
            "DR replication reloaded: this node is active"
        );
        Ok(self.mode())
    }

    /// On an HA standby: take the stored state when the active node changed it (a promotion,
    /// a demotion, `update-primary`, a new activation), so this node's status and health report
    /// the cluster's. The WAL and the sessions are left alone: a standby runs neither, and
    /// taking the lock reloads everything ([`Inner::reload_state`]). A standby holds no opened
    /// keys (they are opened by the active node only), so nothing is lost by the replacement;
    /// what was computed from the old view (the Merkle cache, the published root) is dropped.
    pub(crate) async fn refresh_standby_state(&self) -> Result<(), ReplError> {
        let loaded = ReplState::load(self.backend.as_ref()).await?;
        let stored = serde_json::to_value(&loaded)
            .map_err(|e| ReplError::Corrupt(format!("replication state: {e}")))?;
        let mut state = self.state.lock().await;
        let held = serde_json::to_value(&*state)
            .map_err(|e| ReplError::Corrupt(format!("replication state: {e}")))?;
        if held == stored {
            return Ok(());
        }
        if state.mode != loaded.mode || state.generation != loaded.generation {
            tracing::info!(
                mode = ?loaded.mode,
                generation = loaded.generation,
                "the active node changed the DR mode; this standby follows it"
            );
        }
        *state = loaded;
        self.mode.store(mode_to_u8(state.mode), Ordering::Release);
        drop(state);
        self.forget_derived().await;
        Ok(())
    }

    /// The state was replaced from storage: whatever was computed from the old view of it (the
    /// Merkle cache, the published root) is stale.
    async fn forget_derived(&self) {
        self.merkle_epoch.fetch_add(1, Ordering::SeqCst);
        *self.merkle_cache.lock().await = None;
        *self
            .published_root
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }

    /// Whether this node writes: always without HA, only the active node of an HA cluster.
    pub(crate) fn active_node(&self) -> bool {
        self.core
            .upgrade()
            .is_some_and(|core| core.is_active_node())
    }

    /// Whether this node may serve the cluster port: unsealed and active.
    pub(crate) fn serving(&self) -> bool {
        self.core
            .upgrade()
            .is_some_and(|core| !core.is_sealed() && core.is_active_node())
    }

    /// After a seal, or when an HA node stops being active: stop serving the cluster port and
    /// drop the primary's keys from memory.
    pub(crate) async fn forget_primary_keys(self: &Arc<Self>) {
        let mut state = self.state.lock().await;
        // This runs after the seal (or step-down) that asked for it; an unseal or a new
        // activation may have come in between.
        if state.mode != Mode::Primary || self.serving() {
            return;
        }
        if let Some(primary) = state.primary.as_mut() {
            primary.forget_keys();
        }
        {
            let mut t = self
                .server_tls
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            *t = None;
        }
        self.close_sessions(None).await;
        tracing::info!(
            "sealed or standby: the cluster port refuses secondaries until this node serves again"
        );
    }

    /// Serve the cluster port for `state`: only the certificates of live secondaries complete
    /// the handshake.
    pub(crate) fn install_tls_for(&self, state: &ReplState) -> Result<(), ReplError> {
        let config = match &state.primary {
            Some(p) if state.mode == Mode::Primary => {
                let allowed = p
                    .secondaries
                    .values()
                    .filter(|s| !s.revoked)
                    .flat_map(|s| std::iter::once(&s.cert_sha256).chain(&s.previous_cert_sha256))
                    .filter_map(|h| hex::decode(h).ok())
                    .filter_map(|h| <[u8; 32]>::try_from(h).ok())
                    .collect();
                Some(crate::tls::server_config_pinned(
                    &p.ca_cert_pem,
                    &p.server,
                    Some(allowed),
                )?)
            }
            _ => None,
        };
        {
            let mut t = self
                .server_tls
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            *t = config;
        }
        Ok(())
    }

    /// Register a secondary's live session. Call with the state lock held, after checking the
    /// secondary against that state, so a revocation cannot slip between check and register.
    pub fn register_session(&self, id: &str, status: PeerStatus) -> watch::Receiver<bool> {
        let (mut s, mut p) = self.sessions_and_peers();
        sessions::register(&mut s, &mut p, id, status)
    }

    /// Both maps, always locked in this order (sessions, then peers), so a session's
    /// registration and its end are each seen whole.
    fn sessions_and_peers(
        &self,
    ) -> (
        std::sync::MutexGuard<'_, sessions::Sessions>,
        std::sync::MutexGuard<'_, BTreeMap<String, PeerStatus>>,
    ) {
        let s = self
            .sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let p = self
            .peers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        (s, p)
    }

    /// Close one secondary's live session (revocation) or all of them (`None`), and wait until
    /// each has stopped: a session drops its receiver when it returns, and it returns as soon
    /// as it sees the signal, whatever it was writing.
    pub(crate) async fn close_sessions(&self, id: Option<&str>) {
        let closing: Vec<watch::Sender<bool>> = {
            let mut s = self
                .sessions
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match id {
                Some(id) => s.remove(id).into_iter().collect(),
                None => s.drain().map(|(_, tx)| tx).collect(),
            }
        };
        for tx in closing {
            let _ = tx.send(true);
            if tokio::time::timeout(SESSION_CLOSE_TIMEOUT, tx.closed())
                .await
                .is_err()
            {
                tracing::error!("a replication session did not stop after it was closed");
            }
        }
    }

    pub(crate) fn forget_peer(&self, id: Option<&str>) {
        {
            let mut p = self
                .peers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match id {
                Some(id) => {
                    p.remove(id);
                }
                None => p.clear(),
            }
        }
    }

    /// The session registered for `id` with `session` ([`Inner::register_session`]'s receiver)
    /// ended: the secondary shows disconnected, unless a newer session replaced this one (that
    /// one is connected, and ends on its own).
    pub fn session_ended(&self, id: &str, session: &watch::Receiver<bool>) {
        let (mut s, mut p) = self.sessions_and_peers();
        sessions::ended(&mut s, &mut p, id, session);
    }

    /// A secondary's acknowledgement of `applied`, which arrived at `received`.
    pub fn peer_ack(&self, id: &str, applied: u64, time_ms: u64, received: std::time::Instant) {
        let lag = {
            let mut p = self
                .peers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let Some(peer) = p.get_mut(id) else {
                return;
            };
            let now = now_ms();
            peer.last_heartbeat_ms = now;
            peer.clock_skew_ms =
                i64::try_from(time_ms).unwrap_or(0) - i64::try_from(now).unwrap_or(0);
            peer.acked(applied, |i| self.wal.committed_at(i), received)
        };
        if let Some(lag) = lag {
            metrics::histogram!(crate::rpc_metrics::REPLAY_LAG, "secondary" => id.to_owned())
                .record(lag.as_secs_f64() * 1000.0);
        }
    }

    /// How stale a secondary that acknowledged `acked` is, in ms: 0 when it holds every entry
    /// committed (`last_wal`), else the age of the oldest entry it lacks (at least).
    pub(crate) fn staleness_ms(&self, acked: u64, last_wal: u64) -> u64 {
        if acked >= last_wal {
            return 0;
        }
        self.wal.committed_by(acked + 1).map_or(0, |at| {
            u64::try_from(at.elapsed().as_millis()).unwrap_or(u64::MAX)
        })
    }

    /// The runtime client requests run on (see [`crate::runtime`]).
    pub(crate) fn requests_runtime(&self) -> &tokio::runtime::Handle {
        &self.runtimes.requests
    }

    /// The replication streams' runtime (see [`crate::runtime`]).
    pub(crate) fn streams_runtime(&self) -> &tokio::runtime::Handle {
        &self.runtimes.streams
    }

    pub(crate) fn peers(&self) -> Vec<PeerStatus> {
        self.peers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    // --- secondary side ---

    pub(crate) fn start_follower(self: &Arc<Self>) {
        self.stop_follower();
        if !self.core.upgrade().is_some_and(|core| core.holds_lock()) {
            tracing::warn!("not following the primary: this node does not hold the HA lock");
            return;
        }
        let (tx, rx) = watch::channel(false);
        {
            let mut s = self
                .sec_status
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            *s = SecondaryStatus {
                last_start_ms: now_ms(),
                counters: s.counters,
                ..Default::default()
            };
        }
        // With HA, the follower writes under the epoch its node holds the lock at: if the node
        // loses the lock, even to take it again, the fence refuses every write of this one.
        let follow = crate::secondary::run(self.clone(), rx);
        let epoch = self.core.upgrade().and_then(|core| core.held_epoch());
        let streams = &self.runtimes.streams;
        let task = match epoch {
            Some(epoch) => streams.spawn(bunker_storage::ha::WRITE_EPOCH.scope(epoch, follow)),
            None => streams.spawn(follow),
        };
        let mut f = self
            .follower
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *f = Some((tx, task));
    }

    /// Tell the follower to stop (it stops at its next await, wherever it is).
    pub(crate) fn stop_follower(&self) -> Option<tokio::task::JoinHandle<()>> {
        let stopped = {
            let mut f = self
                .follower
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            f.take().map(|(tx, task)| {
                let _ = tx.send(true);
                task
            })
        };
        self.set_sync_state(SyncState::Idle, "shutdown");
        stopped
    }

    /// Stop the follower, wait until it stopped, and read the WAL's position from storage
    /// again: a follower stopped in the middle of committing a sync leaves the store at the
    /// new position before the WAL says so (the WAL finishes that commit on its next
    /// operation; this is that operation). Returns the WAL index the store is now at.
    /// A promotion does this before reading the index it reports.
    pub(crate) async fn settle_follower(&self) -> Result<u64, ReplError> {
        if let Some(task) = self.stop_follower() {
            if tokio::time::timeout(FOLLOWER_STOP_TIMEOUT, task)
                .await
                .is_err()
            {
                return Err(ReplError::Unavailable(
                    "the replication follower did not stop in time; retry".into(),
                ));
            }
        }
        self.wal.reload().await?;
        Ok(self.wal.last_index())
    }

    pub fn sec_status(&self) -> SecondaryStatus {
        self.sec_status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn with_status(&self, f: impl FnOnce(&mut SecondaryStatus)) {
        {
            let mut s = self
                .sec_status
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            f(&mut s);
        }
    }

    /// A sync starts: report its progress from now on (`sync_progress`).
    pub(crate) fn progress_start(&self, kind: &'static str, total: u64) {
        self.with_status(|s| {
            s.progress = Some(crate::status::SyncProgress {
                kind,
                started_ms: now_ms(),
                keys: 0,
                bytes: 0,
                done: 0,
                total,
            });
        });
    }

    /// The sync in progress learnt how much work there is.
    pub(crate) fn progress_total(&self, total: u64) {
        self.with_status(|s| {
            if let Some(p) = s.progress.as_mut() {
                p.total = total;
            }
        });
    }

    /// The sync in progress fetched `keys` keys of `bytes` bytes and finished `units` units.
    pub(crate) fn progress_add(&self, keys: u64, bytes: u64, units: u64) {
        self.with_status(|s| {
            if let Some(p) = s.progress.as_mut() {
                p.keys += keys;
                p.bytes += bytes;
                p.done += units;
            }
        });
    }

    /// The primary's key count from its last Merkle scan, without scanning (0 = none yet).
    /// Waits for a scan in progress rather than reporting none while it runs.
    pub(crate) async fn cached_key_count(&self) -> u64 {
        if let Some(keys) = self.wal.merkle_index().and_then(|index| index.keys()) {
            return keys;
        }
        self.merkle_cache
            .lock()
            .await
            .as_ref()
            .map_or(0, |c| c.tree.keys)
    }

    pub fn set_sync_state(&self, state: SyncState, connection: &'static str) {
        self.with_status(|s| {
            if matches!(state, SyncState::Connecting | SyncState::StreamWals) {
                s.progress = None;
            }
            s.state = state;
            s.connection_state = connection;
            if connection != "ready" {
                s.primary.connected = false;
            }
        });
    }

    pub fn record_error(&self, e: &str) {
        self.with_status(|s| s.last_error = e.to_owned());
    }

    pub fn connected_to_primary(&self, addr: &str, last_wal: u64) {
        self.with_status(|s| {
            s.primary.cluster_address = addr.to_owned();
            s.primary.connected = true;
            s.primary.last_heartbeat_ms = now_ms();
            s.primary_last_wal = last_wal;
            s.last_error.clear();
        });
        self.note_position();
    }

    pub fn primary_heartbeat(&self, last_wal: u64, time_ms: u64) {
        self.with_status(|s| {
            let now = now_ms();
            s.primary.last_heartbeat_ms = now;
            s.primary.clock_skew_ms =
                i64::try_from(time_ms).unwrap_or(0) - i64::try_from(now).unwrap_or(0);
            s.primary_last_wal = last_wal;
        });
        self.note_position();
    }

    fn note_position(&self) {
        let applied = self.wal.last_index();
        self.with_status(|s| s.note_position(applied));
    }

    pub fn record_applied(&self, entries: u64, bytes: u64, last_wal: u64, newest_ms: u64) {
        self.with_status(|s| {
            s.counters.wal_entries_streamed += entries;
            s.counters.wal_bytes_streamed += bytes;
            s.primary_last_wal = s.primary_last_wal.max(last_wal);
            s.primary.last_heartbeat_ms = now_ms();
            if newest_ms > 0 {
                s.last_apply_lag_ms = now_ms().saturating_sub(newest_ms);
            }
        });
        self.note_position();
    }

    pub fn record_merkle_sync(&self, buckets: u64, keys: u64, deleted: u64, bytes: u64) {
        self.with_status(|s| {
            s.counters.merkle.record(keys, deleted, bytes);
            s.counters.last_merkle_buckets_differing = buckets;
        });
    }

    pub fn record_journal_sync(&self, keys: u64, deleted: u64, bytes: u64) {
        self.with_status(|s| s.counters.journal.record(keys, deleted, bytes));
    }

    /// The primary announced its cluster's addresses: remember them for the next connection.
    pub async fn learn_primary_addrs(
        self: &Arc<Self>,
        cluster_id: &str,
        addrs: Vec<String>,
    ) -> Result<(), ReplError> {
        self.apply_reported(crate::control::Command::LearnPrimaryAddrs {
            cluster_id: cluster_id.to_owned(),
            addrs,
        })
        .await
    }

    pub async fn adopt_generation(
        self: &Arc<Self>,
        cluster_id: &str,
        generation: u64,
    ) -> Result<(), ReplError> {
        self.apply_reported(crate::control::Command::AdoptGeneration {
            cluster_id: cluster_id.to_owned(),
            generation,
        })
        .await
    }

    /// A sync starts writing: the local state is torn until [`Inner::mark_consistent_after`].
    pub async fn mark_torn(self: &Arc<Self>, cluster_id: &str) -> Result<(), ReplError> {
        self.apply_reported(crate::control::Command::MarkTorn {
            cluster_id: cluster_id.to_owned(),
        })
        .await
    }

    /// The first frame of a stream: if the local state is torn, it is consistent once the WAL
    /// is applied through `wal_index` (the primary's last index when it sent the frame, after
    /// every value of the sync was read).
    pub async fn mark_consistent_after(self: &Arc<Self>, cluster_id: &str, wal_index: u64) {
        if self.state.lock().await.consistent_after.is_some() {
            return;
        }
        let command = crate::control::Command::MarkConsistentAfter {
            cluster_id: cluster_id.to_owned(),
            wal_index,
        };
        if let Err(e) = self.apply_reported(command).await {
            tracing::debug!(error = %e, "consistency point not recorded");
        }
    }

    /// A sync with the primary of `generation` is complete; `consistent_at` is the WAL index
    /// at which a staged sync committed (the state is a prefix of the primary's from then).
    pub async fn mark_synced(
        self: &Arc<Self>,
        cluster_id: &str,
        generation: u64,
        consistent_at: Option<u64>,
    ) -> Result<(), ReplError> {
        self.apply_reported(crate::control::Command::MarkSynced {
            cluster_id: cluster_id.to_owned(),
            generation,
            consistent_at,
        })
        .await?;
        self.unseal_with_replicated_key().await;
        Ok(())
    }

    pub(crate) fn remember_root_key(&self, key: Option<zeroize::Zeroizing<Vec<u8>>>) {
        {
            let mut k = self
                .replicated_root_key
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            *k = key;
        }
    }

    /// After the first sync the primary's keyring is here: open it with the root key of an
    /// activation bundle that was encrypted to this cluster's key. A wrapped activation token
    /// carries no key, so such a secondary stays sealed until the primary's key shares open it.
    async fn unseal_with_replicated_key(&self) {
        let key = self
            .replicated_root_key
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let (Some(key), Some(core)) = (key, self.core.upgrade()) else {
            return;
        };
        if !core.is_sealed() {
            return;
        }
        match core.unseal_with_root_key(&key).await {
            Ok(()) => tracing::info!("DR secondary unsealed with the primary's keyring"),
            Err(e) => tracing::warn!(error = %e, "could not open the replicated keyring"),
        }
    }

    /// After the primary rotated its barrier key, an unsealed secondary reloads its keyring.
    pub async fn reload_core_keyring(&self) {
        if let Some(core) = self.core.upgrade() {
            if !core.is_sealed() {
                if let Err(e) = core.reload_keyring().await {
                    tracing::warn!(error = %e, "reloading the replicated keyring failed");
                }
            }
        }
    }
}

/// The primary's registry of live secondary sessions and what its status shows of them,
/// without the locks (which `Inner` holds around each call).
mod sessions {
    use std::collections::{BTreeMap, HashMap};

    use tokio::sync::watch;

    use crate::status::PeerStatus;

    /// The live session of each secondary, by id: sending `true` closes it.
    pub(super) type Sessions = HashMap<String, watch::Sender<bool>>;

    /// Registers `id`'s new session (closing the one it replaces) with `status`; the session
    /// watches the returned receiver.
    pub(super) fn register(
        sessions: &mut Sessions,
        peers: &mut BTreeMap<String, PeerStatus>,
        id: &str,
        status: PeerStatus,
    ) -> watch::Receiver<bool> {
        let (tx, rx) = watch::channel(false);
        if let Some(old) = sessions.insert(id.to_owned(), tx) {
            let _ = old.send(true);
        }
        peers.insert(id.to_owned(), status);
        rx
    }

    /// `id`'s session watching `session` ended: unless a newer session replaced it, it is
    /// forgotten and the secondary shows disconnected.
    pub(super) fn ended(
        sessions: &mut Sessions,
        peers: &mut BTreeMap<String, PeerStatus>,
        id: &str,
        session: &watch::Receiver<bool>,
    ) {
        match sessions.get(id) {
            Some(current) if !current.subscribe().same_channel(session) => return,
            Some(_) => {
                sessions.remove(id);
            }
            None => {}
        }
        if let Some(peer) = peers.get_mut(id) {
            peer.connected = false;
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn connected() -> PeerStatus {
            PeerStatus {
                connected: true,
                ..PeerStatus::default()
            }
        }

        #[test]
        fn a_replaced_session_ending_leaves_the_new_one_connected() {
            let (mut sessions, mut peers) = (Sessions::new(), BTreeMap::new());
            let old = register(&mut sessions, &mut peers, "b", connected());
            let new = register(&mut sessions, &mut peers, "b", connected());
            assert!(*old.borrow(), "the replaced session is told to stop");
            ended(&mut sessions, &mut peers, "b", &old);
            assert!(peers["b"].connected);
            assert!(
                sessions.contains_key("b"),
                "the new session stays registered"
            );
            ended(&mut sessions, &mut peers, "b", &new);
            assert!(!peers["b"].connected);
            assert!(sessions.is_empty());
        }

        #[test]
        fn a_session_closed_by_revocation_shows_disconnected() {
            let (mut sessions, mut peers) = (Sessions::new(), BTreeMap::new());
            let session = register(&mut sessions, &mut peers, "b", connected());
            sessions.remove("b");
            ended(&mut sessions, &mut peers, "b", &session);
            assert!(!peers["b"].connected);
        }
    }
}
