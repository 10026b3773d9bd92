//! A deterministic simulation of DR replication: one primary, one secondary, an in-memory link
//! and a seeded scheduler that interleaves client writes, WAL truncation, link cuts, stalls
//! and crashes of either side with every step of the protocol.
//!
//! The code under test is the real one: the secondary's sync and stream
//! ([`secondary::reconcile`], [`Streamer`], [`crate::secondary::stage`]), the primary's
//! reconciliation ([`Reconciler`], [`send_snapshot`]), its resume decision ([`resumable`]) and
//! stream batches ([`next_batch`]), the frame codec, the WAL and its crash recovery, the Merkle
//! index, and the control plane's consistency marks and promotion gate ([`transition`],
//! [`caught_up`]). Only the sockets, the disks (in memory, with injected crashes and yields
//! inside storage calls), the clock and the processes are simulated, and the few lines that
//! glue a session together (hello, welcome, dispatch) are the runtime's, restated.
//!
//! Every future is polled by hand with a no-op waker, one at a time, in an order drawn from
//! the seed; nothing within a schedule runs on threads or timers. So a schedule is a function
//! of its seed, and a failing seed replays exactly: `BUNKER_SIM_SEED=<seed>
//! BUNKER_SIM_SCHEDULES=1`. Separate schedules run on separate threads (one per core).
//!
//! After every step it checks what `docs/reliability.md` promises, on the secondary's durable
//! state (what a restart would find: the WAL reopened, an interrupted reset finished):
//! 1. prefix: when the secondary calls itself consistent at WAL index `i`, its replicated
//!    keyspace is exactly the primary's after write `i`: nothing torn, nothing missing at or
//!    below `i`, nothing written after it;
//! 2. promotion tells the truth: the promotion gate never passes a state that is not such a
//!    prefix;
//! 3. the primary loses no acknowledged write across its crashes;
//! 4. convergence: once faults stop, the secondary reaches the primary's index with the same
//!    keyspace and Merkle root within a bounded number of steps.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use async_trait::async_trait;
use bunker_storage::hooked_store::{HookedStore, StoreHooks};
use bunker_storage::{Backend, InmemBackend, Op, StorageError};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::control::{caught_up, transition, Command};
use crate::frame::{write_frame, FrameReader};
use crate::merkle::{self, MerkleTree};
use crate::messages::{Hello, Position, ToPrimary, ToSecondary};
use crate::primary::reconcile::{send_journal, send_snapshot, Reconciler};
use crate::primary::{next_batch, resumable, Next};
use crate::secondary::{self, join_arrived, Frame, SecondaryHost, Streamer};
use crate::state::{Mode, PrimaryState, ReplState};
use crate::status::SyncState;
use crate::wal::{is_local, Wal};
use crate::ReplError;

const CLUSTER: &str = "sim";
const GENERATION: u64 = 1;

type Rand = Arc<Mutex<StdRng>>;

thread_local! {
    /// `BUNKER_SIM_TRACE=1`: print what a schedule does, to follow a replayed seed.
    static TRACE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

macro_rules! trace {
    ($($arg:tt)*) => {
        if TRACE.with(|t| t.get()) {
            eprintln!($($arg)*);
        }
    };
}

fn draw<T>(rng: &Rand, f: impl FnOnce(&mut StdRng) -> T) -> T {
    f(&mut rng.lock().unwrap())
}

/// Pending once, then ready: lets the scheduler run something else at this point.
struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            Poll::Ready(())
        } else {
            self.0 = true;
            Poll::Pending
        }
    }
}

fn poll_once<F: Future + ?Sized>(f: Pin<&mut F>) -> Poll<F::Output> {
    f.poll(&mut Context::from_waker(Waker::noop()))
}

/// Run a future that needs nothing from outside (it may yield) to its end.
fn run<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    for _ in 0..1_000_000 {
        if let Poll::Ready(v) = poll_once(f.as_mut()) {
            return v;
        }
    }
    panic!("a local operation never finished");
}

/// Run a future that may wait for another actor (a lock a suspended session holds): given up,
/// and dropped where it stands, if it does not finish within a few polls.
fn try_run<F: Future>(f: F) -> Option<F::Output> {
    let mut f = pin!(f);
    for _ in 0..1_000 {
        if let Poll::Ready(v) = poll_once(f.as_mut()) {
            return Some(v);
        }
    }
    None
}

// ---------------------------------------------------------------------------------------
// Disks

/// A node's disk: an in-memory store whose calls may yield to the scheduler (so other actors
/// run in the middle of a scan or between two writes of one operation), and that can crash:
/// from the armed write on, nothing more is written until the node restarts.
type Disk = HookedStore<Faults>;

fn disk(seed: u64, yield_percent: u32) -> Arc<Disk> {
    Arc::new(HookedStore::new(Faults::new(seed, yield_percent)))
}

/// What a [`Disk`] does around its store's calls.
struct Faults {
    rng: Rand,
    yield_percent: u32,
    /// Writes left before the crash, when armed.
    crash_in: Mutex<Option<u32>>,
    crashed: AtomicBool,
    writes: AtomicU64,
}

impl Faults {
    fn new(seed: u64, yield_percent: u32) -> Faults {
        Faults {
            rng: Arc::new(Mutex::new(StdRng::seed_from_u64(seed))),
            yield_percent,
            crash_in: Mutex::new(None),
            crashed: AtomicBool::new(false),
            writes: AtomicU64::new(0),
        }
    }

    async fn maybe_yield(&self) {
        if self.yield_percent > 0 && draw(&self.rng, |r| r.gen_ratio(self.yield_percent, 100)) {
            YieldOnce(false).await;
        }
    }

    /// One durable write is about to happen: refused once crashed.
    fn write_allowed(&self) -> Result<(), StorageError> {
        if !self.crashed.load(Ordering::SeqCst) {
            let mut armed = self.crash_in.lock().unwrap();
            match armed.as_mut() {
                Some(0) => {
                    *armed = None;
                    self.crashed.store(true, Ordering::SeqCst);
                }
                Some(n) => *n -= 1,
                None => {}
            }
        }
        if self.crashed.load(Ordering::SeqCst) {
            return Err(StorageError::Engine {
                context: "writing".into(),
                message: "simulated crash".into(),
            });
        }
        self.writes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn crash_now(&self) {
        self.crashed.store(true, Ordering::SeqCst);
    }

    fn arm_crash(&self, writes: u32) {
        *self.crash_in.lock().unwrap() = Some(writes);
    }

    fn is_crashed(&self) -> bool {
        self.crashed.load(Ordering::SeqCst)
    }

    fn restart(&self) {
        *self.crash_in.lock().unwrap() = None;
        self.crashed.store(false, Ordering::SeqCst);
    }
}

#[async_trait]
impl StoreHooks for Faults {
    async fn before_read(&self) {
        self.maybe_yield().await;
    }

    async fn before_batch(&self) -> bunker_storage::Result<()> {
        self.maybe_yield().await;
        self.write_allowed()
    }

    async fn after_batch(&self) {
        // Committed, not yet answered (a group commit's fsync): a caller dropped here never
        // learns that its write landed.
        self.maybe_yield().await;
    }
}

/// The replicated keyspace of `store` (what DR copies; local keys excluded), read straight
/// from the map rather than through the scans under test.
fn replicated(store: &InmemBackend) -> BTreeMap<String, Vec<u8>> {
    let mut all = store.entries();
    all.retain(|key, _| !is_local(key));
    all
}

// ---------------------------------------------------------------------------------------
// The link

#[derive(Default)]
struct Pipe {
    bytes: VecDeque<u8>,
}

/// One direction of a connection. Reads take at most `chunk` bytes at a time, so frames
/// arrive in pieces; an empty pipe is pending (the scheduler decides when the peer runs).
struct PipeEnd {
    pipe: Arc<Mutex<Pipe>>,
    chunk: usize,
}

impl AsyncRead for PipeEnd {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut pipe = self.pipe.lock().unwrap();
        if pipe.bytes.is_empty() {
            return Poll::Pending;
        }
        let n = buf.remaining().min(self.chunk).min(pipe.bytes.len());
        let taken: Vec<u8> = pipe.bytes.drain(..n).collect();
        buf.put_slice(&taken);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for PipeEnd {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.pipe.lock().unwrap().bytes.extend(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A connection: the primary's and the secondary's ends of two pipes.
fn connection(chunk: usize) -> ((PipeEnd, PipeEnd), (PipeEnd, PipeEnd)) {
    let to_primary = Arc::new(Mutex::new(Pipe::default()));
    let to_secondary = Arc::new(Mutex::new(Pipe::default()));
    let end = |pipe: &Arc<Mutex<Pipe>>| PipeEnd {
        pipe: pipe.clone(),
        chunk,
    };
    (
        (end(&to_primary), end(&to_secondary)), // the primary reads, writes
        (end(&to_secondary), end(&to_primary)), // the secondary reads, writes
    )
}

// ---------------------------------------------------------------------------------------
// The secondary node

/// What survives a secondary's crash: its disk, and the control state persisted on it.
struct SecondaryDisk {
    disk: Arc<Disk>,
    state: Mutex<ReplState>,
    /// How many times `state` changed (keys the checks' memo of the promotion gate).
    state_changes: AtomicU64,
}

impl SecondaryDisk {
    /// Apply a control-plane command and persist its state (one durable write).
    fn apply(&self, command: Command) -> Result<(), ReplError> {
        let mut state = self.state.lock().unwrap();
        let step = transition(&state, command).map_err(|r| ReplError::Refused(r.0))?;
        self.disk.hooks.write_allowed()?;
        *state = step.state;
        self.state_changes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

#[derive(Default)]
struct Observed {
    sync_state: SyncState,
    primary_last_wal: u64,
}

/// A running secondary process: what it holds in memory dies with it.
struct SecondaryNode {
    durable: Arc<SecondaryDisk>,
    wal: Arc<Wal>,
    stage_limit: usize,
    observed: Mutex<Observed>,
    stats: Arc<Stats>,
}

impl SecondaryHost for Arc<SecondaryNode> {
    fn backend(&self) -> &dyn Backend {
        self.durable.disk.as_ref()
    }

    fn wal(&self) -> &Wal {
        &self.wal
    }

    fn stage_limit(&self) -> usize {
        self.stage_limit
    }

    async fn mark_torn(&self, cluster_id: &str) -> Result<(), ReplError> {
        trace!("  secondary: mark torn");
        self.stats.torn.fetch_add(1, Ordering::Relaxed);
        self.durable.apply(Command::MarkTorn {
            cluster_id: cluster_id.to_owned(),
        })
    }

    async fn mark_consistent_after(&self, cluster_id: &str, wal_index: u64) {
        if self
            .durable
            .state
            .lock()
            .unwrap()
            .consistent_after
            .is_some()
        {
            return;
        }
        trace!("  secondary: consistent after {wal_index}");
        // As the runtime: a failure here is only logged.
        let _ = self.durable.apply(Command::MarkConsistentAfter {
            cluster_id: cluster_id.to_owned(),
            wal_index,
        });
    }

    async fn mark_synced(
        &self,
        cluster_id: &str,
        generation: u64,
        consistent_at: Option<u64>,
    ) -> Result<(), ReplError> {
        trace!("  secondary: synced, consistent at {consistent_at:?}");
        if consistent_at.is_some() {
            self.stats.staged_commits.fetch_add(1, Ordering::Relaxed);
        }
        self.durable.apply(Command::MarkSynced {
            cluster_id: cluster_id.to_owned(),
            generation,
            consistent_at,
        })
    }

    async fn merkle_fingerprint(&self) -> Result<(MerkleTree, Arc<merkle::CellSums>), ReplError> {
        if let Some((tree, cells, _)) = self.wal.merkle_index().and_then(|i| i.fingerprint()) {
            return Ok((tree, Arc::new(cells)));
        }
        let (tree, cells) = merkle::compute_with_cells(self.durable.disk.as_ref()).await?;
        Ok((tree, Arc::new(cells)))
    }

    fn invalidate_merkle(&self) {}

    async fn reload_core_keyring(&self) {}

    fn set_sync_state(&self, state: SyncState, _connection: &'static str) {
        if state == SyncState::MerkleSync {
            self.stats.syncs.fetch_add(1, Ordering::Relaxed);
        }
        self.observed.lock().unwrap().sync_state = state;
    }

    fn record_applied(&self, _entries: u64, _bytes: u64, last_wal: u64, _newest_ms: u64) {
        let mut o = self.observed.lock().unwrap();
        o.primary_last_wal = o.primary_last_wal.max(last_wal);
    }

    fn primary_heartbeat(&self, last_wal: u64, _time_ms: u64) {
        self.observed.lock().unwrap().primary_last_wal = last_wal;
    }
}

impl SecondaryNode {
    /// Start (or restart) the process on its disk: the WAL reopened, an interrupted reset
    /// finished, as the runtime does.
    fn start(durable: Arc<SecondaryDisk>, stage_limit: usize, stats: Arc<Stats>) -> Arc<Self> {
        durable.disk.hooks.restart();
        let wal = run(Wal::open(durable.disk.clone())).expect("the WAL reopens");
        Arc::new(SecondaryNode {
            durable,
            wal,
            stage_limit,
            observed: Mutex::new(Observed::default()),
            stats,
        })
    }
}

/// What the secondary's follower does with one connection (the runtime's `follow_once`,
/// without TLS and timers).
async fn secondary_session(
    node: Arc<SecondaryNode>,
    rd: PipeEnd,
    mut wr: PipeEnd,
    rng: Rand,
) -> Result<(), ReplError> {
    let state = node.durable.state.lock().unwrap().clone();
    let wal_index = node.wal.settled_index().await?;
    let position = state.synced_generation.map(|generation| Position {
        generation,
        wal_index,
    });
    write_frame(
        &mut wr,
        &ToPrimary::Hello(Hello {
            cluster_id: CLUSTER.into(),
            secondary_id: "secondary".into(),
            generation: state.generation,
            position,
            api_addr: String::new(),
            cluster_addr: String::new(),
        }),
    )
    .await?;
    let mut rd = FrameReader::new(rd);
    trace!("  secondary: hello at {position:?}");
    let (generation, last_wal, resume) = match rd.read_frame::<ToSecondary>().await?.0 {
        ToSecondary::Welcome {
            generation,
            last_wal,
            resume,
            ..
        } => (generation, last_wal, resume),
        other => return Err(ReplError::Refused(format!("unexpected {other:?}"))),
    };
    trace!("  secondary: welcome, primary at {last_wal}, resume {resume}");
    node.observed.lock().unwrap().primary_last_wal = last_wal;
    let mut raw = rd.into_inner();
    let (staged, after) = secondary::reconcile(
        &node,
        CLUSTER,
        generation,
        resume,
        position.is_some(),
        &mut raw,
        &mut wr,
    )
    .await?;
    trace!(
        "  secondary: stream from {after}, staged {}",
        staged.is_some()
    );
    write_frame(&mut wr, &ToPrimary::StreamFrom { after }).await?;
    node.set_sync_state(SyncState::StreamWals, "ready");
    let mut streamer = Streamer::new(CLUSTER, generation, staged);
    let mut rd = FrameReader::new(raw);
    // The runtime's `stream` loop, with its reader task's queue replaced by the frames that
    // already arrived in the pipe.
    let mut held: Option<Frame> = None;
    loop {
        let frame = match held.take() {
            Some(frame) => frame,
            None => rd
                .read_frame::<ToSecondary>()
                .await
                .map_err(ReplError::from),
        };
        let (msg, bytes) = frame?;
        let (mut entries, mut last_wal, mut bytes) = match msg {
            ToSecondary::Wal { entries, last_wal } => (entries, last_wal, bytes),
            ToSecondary::Heartbeat { last_wal, time_ms } => {
                node.primary_heartbeat(last_wal, time_ms);
                (Vec::new(), last_wal, 0)
            }
            ToSecondary::Refused { reason } => return Err(ReplError::Refused(reason)),
            other => return Err(ReplError::Refused(format!("unexpected {other:?}"))),
        };
        trace!(
            "  secondary: frame of {} entries {:?}, primary at {last_wal}",
            entries.len(),
            entries.first().map(|e| e.index)..entries.last().map(|e| e.index)
        );
        streamer.bound_by(&node, last_wal).await;
        held = join_arrived(&mut entries, &mut last_wal, &mut bytes, || {
            if !draw(&rng, |r| r.gen_bool(0.7)) {
                return None;
            }
            let mut read = pin!(rd.read_frame::<ToSecondary>());
            match poll_once(read.as_mut()) {
                Poll::Ready(frame) => Some(frame.map_err(ReplError::from)),
                Poll::Pending => None,
            }
        });
        if streamer.apply(&node, entries, last_wal, bytes).await? {
            let applied = node.wal.last_index();
            write_frame(
                &mut wr,
                &ToPrimary::Ack {
                    applied,
                    time_ms: 0,
                },
            )
            .await?;
        }
    }
}

// ---------------------------------------------------------------------------------------
// The primary node

struct PrimaryNode {
    disk: Arc<Disk>,
    wal: Arc<Wal>,
}

impl PrimaryNode {
    fn start(disk: Arc<Disk>) -> Arc<Self> {
        disk.hooks.restart();
        let wal = run(Wal::open(disk.clone())).expect("the WAL reopens");
        wal.promote();
        Arc::new(PrimaryNode { disk, wal })
    }
}

/// The primary's side of one connection (the runtime's `serve` and `stream_wal`, without
/// TLS, admission and timers).
async fn primary_session(
    node: Arc<PrimaryNode>,
    rd: PipeEnd,
    mut wr: PipeEnd,
    rng: Rand,
    stats: Arc<Stats>,
) -> Result<(), ReplError> {
    let mut rd = FrameReader::new(rd);
    let hello_position = match rd.read_frame::<ToPrimary>().await?.0 {
        ToPrimary::Hello(hello) => hello.position,
        other => return Err(ReplError::Refused(format!("unexpected {other:?}"))),
    };
    let last_wal = node.wal.last_index();
    let oldest = node.wal.oldest_index().await?;
    let resume = resumable(hello_position, GENERATION, last_wal, oldest);
    let welcome = ToSecondary::Welcome {
        generation: GENERATION,
        last_wal,
        resume,
        cluster_addrs: Vec::new(),
    };
    write_frame(&mut wr, &welcome).await?;
    let backend: &dyn Backend = node.disk.as_ref();
    let mut reconciler = Reconciler::default();
    let after = loop {
        let (msg, _) = rd.read_frame::<ToPrimary>().await?;
        let Some(msg) = reconciler.handle(backend, &mut wr, msg).await? else {
            continue;
        };
        match msg {
            ToPrimary::MerkleRequest => {
                // As the real primary: from the Merkle index its disk keeps.
                let indexed = node.wal.merkle_index().and_then(|i| i.fingerprint());
                let (tree, cells, wal_index) = match indexed {
                    Some(fingerprint) => fingerprint,
                    None => {
                        let wal_index = node.wal.last_index();
                        let (tree, cells) = merkle::compute_with_cells(backend).await?;
                        (tree, cells, wal_index)
                    }
                };
                reconciler.use_cell_sums(Arc::new(cells));
                write_frame(&mut wr, &ToSecondary::Tree { wal_index, tree }).await?;
            }
            ToPrimary::JournalRequest => {
                trace!("  primary: journal after {hello_position:?}");
                if send_journal(&node.wal, backend, hello_position, GENERATION, &mut wr).await? {
                    stats.journal_syncs.fetch_add(1, Ordering::Relaxed);
                }
            }
            ToPrimary::SnapshotRequest => {
                trace!("  primary: snapshot at {}", node.wal.last_index());
                send_snapshot(&node.wal, backend, 0, &mut wr).await?
            }
            ToPrimary::StreamFrom { after } => break after,
            ToPrimary::Ack { .. } => {}
            other => return Err(ReplError::Refused(format!("unexpected {other:?}"))),
        }
    };
    let mut position = after;
    loop {
        // Small frames as well as whole batches: a stream's first frame then need not reach
        // the bound it reports.
        let max_entries = draw(&rng, |r| [1, 3, 512][r.gen_range(0..3)]);
        match next_batch(&node.wal, position, max_entries).await? {
            Next::Entries(frame, next) => {
                trace!("  primary: entries after {position} through {next}");
                position = next;
                write_frame(&mut wr, &frame).await?;
            }
            Next::NotRetained => {
                trace!("  primary: {position} not retained");
                let reason = "WAL position is no longer retained".to_owned();
                write_frame(&mut wr, &ToSecondary::Refused { reason }).await?;
                return Err(ReplError::Refused("not retained".into()));
            }
            Next::Idle => {
                if draw(&rng, |r| r.gen_bool(0.3)) {
                    let last_wal = node.wal.last_index();
                    let beat = ToSecondary::Heartbeat {
                        last_wal,
                        time_ms: 0,
                    };
                    write_frame(&mut wr, &beat).await?;
                }
                YieldOnce(false).await;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The schedule

/// Counts over all schedules, for the report.
#[derive(Default)]
pub(crate) struct Stats {
    steps: AtomicU64,
    writes: AtomicU64,
    faults: AtomicU64,
    syncs: AtomicU64,
    /// Catch-ups the primary served from its key journal.
    journal_syncs: AtomicU64,
    torn: AtomicU64,
    staged_commits: AtomicU64,
    promotable_checks: AtomicU64,
    rehearsals: AtomicU64,
    schedules: AtomicU64,
    refused_checks: AtomicU64,
}

type SessionFuture = Pin<Box<dyn Future<Output = Result<(), ReplError>>>>;

struct Session {
    secondary: Option<SessionFuture>,
    primary: Option<SessionFuture>,
}

/// The KV v2-like secrets the clients write: metadata listing live versions, one key per
/// version, always written together, so a torn secret is visible as such.
fn client_ops(rng: &mut StdRng, secrets: u32, model: &BTreeMap<String, Vec<u8>>) -> Vec<Op> {
    let s = rng.gen_range(0..secrets);
    let meta_key = format!("logical/kv/metadata/s{s}");
    let mut versions: Vec<u32> = model
        .get(&meta_key)
        .map(|v| serde_json::from_slice(v).unwrap())
        .unwrap_or_default();
    let data_key = |v: u32| format!("logical/kv/data/s{s}/{v}");
    let mut ops = Vec::new();
    match rng.gen_range(0..10) {
        0..=5 => {
            let v = versions.last().map_or(1, |v| v + 1);
            versions.push(v);
            ops.push(Op::Put {
                key: data_key(v),
                value: format!("s{s} v{v} {}", rng.gen::<u32>()).into_bytes(),
            });
        }
        6..=7 if !versions.is_empty() => {
            let v = versions.remove(rng.gen_range(0..versions.len()));
            ops.push(Op::Delete { key: data_key(v) });
        }
        8 => {
            for v in versions.drain(..) {
                ops.push(Op::Delete { key: data_key(v) });
            }
        }
        _ => {
            // The barrier keyring changes now and then (the secondary reloads it).
            return vec![Op::Put {
                key: "core/keyring".into(),
                value: rng.gen::<[u8; 8]>().to_vec(),
            }];
        }
    }
    if versions.is_empty() {
        ops.push(Op::Delete { key: meta_key });
    } else {
        ops.push(Op::Put {
            key: meta_key,
            value: serde_json::to_vec(&versions).unwrap(),
        });
    }
    ops
}

struct Schedule {
    seed: u64,
    rng: Rand,
    stats: Arc<Stats>,
    secrets: u32,
    stage_limit: usize,
    chunk: usize,
    primary_disk: Arc<Disk>,
    primary: Arc<PrimaryNode>,
    /// The primary's replicated keyspace after each acknowledged write, by WAL index.
    history: Vec<(u64, BTreeMap<String, Vec<u8>>)>,
    secondary_disk: Arc<SecondaryDisk>,
    secondary: Arc<SecondaryNode>,
    session: Option<Session>,
    /// The secondary disk's write count at the last durable check, and what it found.
    last_check: std::cell::Cell<Option<(u64, u64, bool)>>,
    /// The promotion gate's last inputs and answer: it is a pure function of them, and asked
    /// after every step (most steps change none of them).
    last_gate: std::cell::Cell<Option<(GateInputs, bool)>>,
}

/// What the promotion gate reads: the control state (by its change count), the WAL index
/// applied, and what the follower observed.
type GateInputs = (u64, u64, SyncState, u64);

/// Why a schedule failed, with what to replay it.
#[derive(Debug)]
pub(crate) struct Anomaly {
    pub seed: u64,
    pub step: usize,
    pub what: String,
}

impl Schedule {
    fn new(seed: u64, stats: Arc<Stats>) -> Schedule {
        let mut rng = StdRng::seed_from_u64(seed);
        let yield_percent = [0, 10, 30][rng.gen_range(0..3)];
        let stage_limit =
            [120, 2_000, crate::secondary::stage::STAGE_MAX_BYTES][rng.gen_range(0..3)];
        let chunk = [3, 64, 1 << 20][rng.gen_range(0..3)];
        let secrets = rng.gen_range(1..=6);
        let primary_disk = disk(rng.gen(), yield_percent);
        let primary = PrimaryNode::start(primary_disk.clone());
        let state = ReplState {
            mode: Mode::Secondary,
            cluster_id: CLUSTER.into(),
            generation: GENERATION,
            ..ReplState::default()
        };
        let secondary_disk = Arc::new(SecondaryDisk {
            disk: disk(rng.gen(), yield_percent),
            state: Mutex::new(state),
            state_changes: AtomicU64::new(0),
        });
        let secondary = SecondaryNode::start(secondary_disk.clone(), stage_limit, stats.clone());
        Schedule {
            seed,
            rng: Arc::new(Mutex::new(rng)),
            stats,
            secrets,
            stage_limit,
            chunk,
            primary_disk,
            primary,
            history: vec![(0, BTreeMap::new())],
            secondary_disk,
            secondary,
            session: None,
            last_check: std::cell::Cell::new(None),
            last_gate: std::cell::Cell::new(None),
        }
    }

    /// A truncation's WAL retention and key journal retention (none a third of the time).
    fn retention(&self) -> (u64, u64) {
        let keep = u64::from(self.gen_range(0..6));
        let journal = match self.gen_range(0..3) {
            0 => 0,
            _ => keep + u64::from(self.gen_range(0..24)),
        };
        (keep, journal)
    }

    fn gen_range(&self, range: std::ops::Range<u32>) -> u32 {
        draw(&self.rng, |r| r.gen_range(range))
    }

    fn connect(&mut self) {
        let ((p_rd, p_wr), (s_rd, s_wr)) = connection(self.chunk);
        let rng = Arc::new(Mutex::new(StdRng::seed_from_u64(draw(&self.rng, |r| {
            r.gen()
        }))));
        self.session = Some(Session {
            secondary: Some(Box::pin(secondary_session(
                self.secondary.clone(),
                s_rd,
                s_wr,
                rng.clone(),
            ))),
            primary: Some(Box::pin(primary_session(
                self.primary.clone(),
                p_rd,
                p_wr,
                rng,
                self.stats.clone(),
            ))),
        });
    }

    /// The connection is gone (cut, or either end died): both sessions end where they were.
    fn disconnect(&mut self) {
        self.session = None;
        self.secondary
            .set_sync_state(SyncState::Connecting, "transient_failure");
    }

    fn restart_secondary(&mut self) {
        self.disconnect();
        self.secondary = SecondaryNode::start(
            self.secondary_disk.clone(),
            self.stage_limit,
            self.stats.clone(),
        );
    }

    /// Poll one end of the session. An end that finished ends the connection; a secondary
    /// error is expected only from a crash, a cut, or a truncated WAL position.
    fn poll_end(&mut self, secondary_end: bool) -> Result<(), String> {
        let Some(session) = self.session.as_mut() else {
            return Ok(());
        };
        let slot = if secondary_end {
            &mut session.secondary
        } else {
            &mut session.primary
        };
        let Some(fut) = slot.as_mut() else {
            return Ok(());
        };
        let Poll::Ready(result) = poll_once(fut.as_mut()) else {
            return Ok(());
        };
        *slot = None;
        let crashed = self.secondary_disk.disk.hooks.is_crashed();
        let outcome = match result {
            Ok(()) => Ok(()),
            Err(_) if crashed => Ok(()),
            Err(ReplError::Refused(reason))
                if reason.contains("no longer retained") || reason.contains("not retained") =>
            {
                Ok(())
            }
            Err(e) if !secondary_end => Err(format!("the primary's session failed: {e}")),
            Err(e) => Err(format!("the secondary's session failed: {e}")),
        };
        if crashed {
            self.restart_secondary();
        } else {
            self.disconnect();
        }
        outcome
    }

    /// A client write; acknowledged (and so part of the primary's history) only if it
    /// committed before a crash.
    fn client_write(&mut self) {
        let model = self
            .history
            .last()
            .map(|(_, m)| m.clone())
            .unwrap_or_default();
        let ops = draw(&self.rng, |r| client_ops(r, self.secrets, &model));
        let before = self.primary.wal.last_index();
        if run(self.primary_disk.batch(ops.clone())).is_err() {
            assert!(
                self.primary_disk.hooks.is_crashed(),
                "only a crash fails a write"
            );
            return;
        }
        let index = self.primary.wal.last_index();
        assert!(index > before, "a replicated write got a WAL index");
        let mut next = model;
        for op in ops {
            match op {
                Op::Put { key, value } => next.insert(key, value),
                Op::Delete { key } => next.remove(&key),
            };
        }
        self.history.push((index, next));
        self.stats.writes.fetch_add(1, Ordering::Relaxed);
    }

    /// The primary's keyspace after its write `index`, or `None` past its last write.
    fn primary_at(&self, index: u64) -> Option<&BTreeMap<String, Vec<u8>>> {
        if index > self.history.last().map_or(0, |(i, _)| *i) {
            return None;
        }
        let at = self.history.partition_point(|(i, _)| *i <= index);
        self.history.get(at.checked_sub(1)?).map(|(_, m)| m)
    }

    /// The invariants, on the secondary's durable state (as a restart right now would find it).
    /// Invariant 1 on the durable state, as a restart right now would find it: the WAL index
    /// it reports, and whether it calls itself consistent there. Checked again only after the
    /// secondary wrote something (every durable write goes through its disk's count).
    fn check_durable(&self) -> Result<(u64, bool), String> {
        let writes = self.secondary_disk.disk.hooks.writes.load(Ordering::SeqCst);
        if let Some((at, index, consistent)) = self.last_check.get() {
            if at == writes {
                return Ok((index, consistent));
            }
        }
        let state = self.secondary_disk.state.lock().unwrap().clone();
        // The check needs the WAL's recovery, not a Merkle index (summing one is most of an
        // open's cost).
        let copy = Arc::new(self.secondary_disk.disk.store.unindexed_copy());
        let wal =
            run(Wal::open(copy.clone())).map_err(|e| format!("the WAL does not reopen: {e}"))?;
        let durable_index = wal.last_index();
        let store = replicated(&copy);
        let consistent = state.consistent_after.is_some_and(|b| durable_index >= b);
        if consistent {
            let Some(expected) = self.primary_at(durable_index) else {
                return Err(format!(
                    "the secondary reports WAL index {durable_index}, past the primary's last write"
                ));
            };
            if &store != expected {
                return Err(format!(
                    "not a prefix: the secondary is consistent at WAL index {durable_index} \
                     (consistent_after {:?}) but differs from the primary there: {}",
                    state.consistent_after,
                    describe_difference(&store, expected)
                ));
            }
        }
        self.last_check
            .set(Some((writes, durable_index, consistent)));
        Ok((durable_index, consistent))
    }

    /// The invariants after a step.
    fn check(&self) -> Result<(), String> {
        let (durable_index, consistent) = self.check_durable()?;
        if self.gate_passes() {
            self.stats.promotable_checks.fetch_add(1, Ordering::Relaxed);
            if !consistent {
                return Err(format!(
                    "promotion without force is allowed on a state that is not a consistent \
                     prefix (durable WAL index {durable_index}, consistent_after {:?})",
                    self.secondary_disk.state.lock().unwrap().consistent_after
                ));
            }
        } else {
            self.stats.refused_checks.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Whether the promotion endpoint would promote without force now: the real gate, on the
    /// inputs the runtime gives it.
    fn gate_passes(&self) -> bool {
        let state = self.secondary_disk.state.lock().unwrap();
        let observed = self.secondary.observed.lock().unwrap();
        let inputs = (
            self.secondary_disk.state_changes.load(Ordering::SeqCst),
            self.secondary.wal.last_index(),
            observed.sync_state,
            observed.primary_last_wal,
        );
        if let Some((last, passes)) = self.last_gate.get() {
            if last == inputs {
                return passes;
            }
        }
        let gate = caught_up(&state, inputs.1, inputs.2, inputs.3);
        let promote = Command::Promote {
            primary: dummy_primary(),
            caught_up: gate,
            force: false,
        };
        let passes = transition(&state, promote).is_ok();
        self.last_gate.set(Some((inputs, passes)));
        passes
    }

    /// What a promotion does when the gate lets it, up to the mode change: stop the follower
    /// wherever it is (the session is dropped), settle the WAL as `settle_follower` does, and
    /// take the store at the index it then reports. That store must be the primary's at that
    /// index. The follower then starts again: the simulation keeps one primary.
    fn rehearse_promotion(&mut self) -> Result<(), String> {
        if !self.gate_passes() {
            return Ok(());
        }
        self.stats.rehearsals.fetch_add(1, Ordering::Relaxed);
        self.disconnect();
        match try_run(self.secondary.wal.reload()) {
            None => return Err("the WAL did not settle after the follower stopped".into()),
            Some(Err(_)) if self.secondary_disk.disk.hooks.is_crashed() => return Ok(()),
            Some(Err(e)) => return Err(format!("settling the WAL: {e}")),
            Some(Ok(())) => {}
        }
        let index = self.secondary.wal.last_index();
        let store = replicated(&self.secondary_disk.disk.store);
        if self.primary_at(index) != Some(&store) {
            let expected = self.primary_at(index).cloned().unwrap_or_default();
            return Err(format!(
                "a promotion allowed without force would take WAL index {index} with a store \
                 that is not the primary's there: {}",
                describe_difference(&store, &expected)
            ));
        }
        Ok(())
    }

    /// The primary lost nothing it acknowledged.
    fn check_primary(&self) -> Result<(), String> {
        let store = replicated(&self.primary_disk.store);
        let (index, latest) = self
            .history
            .last()
            .expect("history starts with the empty state");
        if &store != latest {
            return Err(format!(
                "the primary lost acknowledged writes across a crash: {}",
                describe_difference(&store, latest)
            ));
        }
        if self.primary.wal.last_index() != *index {
            return Err(format!(
                "the primary restarted at WAL index {} after acknowledging write {index}",
                self.primary.wal.last_index()
            ));
        }
        Ok(())
    }

    /// A crashed primary restarts on its disk: its sessions die with it.
    fn restart_primary(&mut self) -> Result<(), String> {
        self.disconnect();
        self.primary = PrimaryNode::start(self.primary_disk.clone());
        self.check_primary()
    }

    /// One step of the fault phase.
    fn step(&mut self) -> Result<(), String> {
        self.stats.steps.fetch_add(1, Ordering::Relaxed);
        if self.session.is_none() && self.gen_range(0..3) == 0 {
            self.connect();
        }
        let action = self.gen_range(0..100);
        trace!(
            "step: action {action}, secondary at {} ({:?}), primary at {}",
            self.secondary.wal.last_index(),
            self.secondary_disk.state.lock().unwrap().consistent_after,
            self.primary.wal.last_index()
        );
        match action {
            0..=30 => self.poll_end(true)?,
            31..=32 => {
                // The follower is cancelled wherever this poll left it (a mode change, a
                // certificate renewal, a cut noticed elsewhere).
                self.poll_end(true)?;
                self.fault();
                self.disconnect();
            }
            33..=34 => self.rehearse_promotion()?,
            35..=69 => self.poll_end(false)?,
            70..=86 => self.client_write(),
            87..=88 => {
                self.fault();
                let (keep, journal) = self.retention();
                trace!("  primary: truncate keeping {keep}, keys of {journal}");
                if let Some(Err(e)) = try_run(self.primary.wal.truncate(keep, journal)) {
                    if !self.primary_disk.hooks.is_crashed() {
                        return Err(format!("truncating the primary's WAL: {e}"));
                    }
                }
            }
            89 => {
                self.fault();
                let (keep, journal) = self.retention();
                // A crashed disk refuses it; the restart follows at the next poll.
                let _ = try_run(self.secondary.wal.truncate(keep, journal));
            }
            90..=92 => {
                self.fault();
                self.disconnect();
            }
            93..=95 => {
                self.fault();
                let writes = self.gen_range(0..6);
                self.secondary_disk.disk.hooks.arm_crash(writes);
            }
            96..=97 => {
                self.fault();
                self.secondary_disk.disk.hooks.crash_now();
                self.restart_secondary();
            }
            98 => {
                // The primary dies at one of its next few writes (a client write or a page of
                // a truncation): that write is lost, unacknowledged.
                self.fault();
                let writes = self.gen_range(0..3);
                self.primary_disk.hooks.arm_crash(writes);
            }
            _ => {
                self.fault();
                self.primary_disk.hooks.crash_now();
            }
        }
        if self.primary_disk.hooks.is_crashed() {
            self.restart_primary()?;
        }
        if self.secondary_disk.disk.hooks.is_crashed() && self.session.is_none() {
            self.restart_secondary();
        }
        self.check()
    }

    fn fault(&self) {
        self.stats.faults.fetch_add(1, Ordering::Relaxed);
    }

    /// Faults and writes stop: the secondary must reach the primary within `budget` steps.
    fn converge(&mut self, budget: usize) -> Result<(), String> {
        for _ in 0..budget {
            if self.session.is_none() {
                self.connect();
            }
            self.poll_end(true)?;
            self.poll_end(false)?;
            if self.secondary_disk.disk.hooks.is_crashed() {
                self.restart_secondary();
            }
            self.check()?;
            if self.converged() {
                return Ok(());
            }
        }
        let session = self
            .session
            .as_ref()
            .map(|s| (s.secondary.is_some(), s.primary.is_some()));
        Err(format!(
            "no convergence within {budget} steps: secondary at {} ({:?}, {:?}), primary at {} \
             (oldest WAL entry {:?}), session ends alive (secondary, primary): {session:?}",
            self.secondary.wal.last_index(),
            self.secondary.observed.lock().unwrap().sync_state,
            self.secondary_disk.state.lock().unwrap().consistent_after,
            self.primary.wal.last_index(),
            run(self.primary.wal.oldest_index()).ok().flatten(),
        ))
    }

    fn converged(&self) -> bool {
        let last = self.primary.wal.last_index();
        let state = self.secondary_disk.state.lock().unwrap().clone();
        if self.secondary.wal.last_index() != last
            || self.secondary.observed.lock().unwrap().sync_state != SyncState::StreamWals
            || state.consistent_after.is_none_or(|b| last < b)
        {
            return false;
        }
        let ours = run(merkle::compute(self.secondary_disk.disk.as_ref())).unwrap();
        let theirs = run(merkle::compute(self.primary_disk.as_ref())).unwrap();
        // The Merkle index each side keeps by its commits says the same as the scans.
        for (side, wal, scanned) in [
            ("secondary", &self.secondary.wal, &ours),
            ("primary", &self.primary.wal, &theirs),
        ] {
            if let Some((tree, _)) = wal.merkle_index().and_then(|index| index.tree()) {
                assert!(
                    tree == *scanned,
                    "seed {}: the {side}'s Merkle index differs from a scan",
                    self.seed
                );
            }
        }
        ours.root == theirs.root
    }

    fn play(mut self, steps: usize) -> Result<(), Anomaly> {
        let seed = self.seed;
        for step in 0..steps {
            self.step().map_err(|what| Anomaly { seed, step, what })?;
        }
        self.converge(20_000).map_err(|what| Anomaly {
            seed,
            step: steps,
            what,
        })
    }
}

fn dummy_primary() -> PrimaryState {
    PrimaryState {
        ca_cert_pem: String::new(),
        ca_key_pem: Default::default(),
        server: crate::tls::CertPair {
            cert_pem: String::new(),
            key_pem: Default::default(),
        },
        sealed_keys: None,
        primary_cluster_addr: String::new(),
        secondaries: BTreeMap::new(),
    }
}

fn describe_difference(
    ours: &BTreeMap<String, Vec<u8>>,
    theirs: &BTreeMap<String, Vec<u8>>,
) -> String {
    let mut out = Vec::new();
    for (key, value) in ours {
        match theirs.get(key) {
            None => out.push(format!("{key} should not exist")),
            Some(v) if v != value => out.push(format!("{key} holds another value")),
            Some(_) => {}
        }
    }
    for key in theirs.keys().filter(|k| !ours.contains_key(*k)) {
        out.push(format!("{key} is missing"));
    }
    out.truncate(6);
    out.join("; ")
}

/// Play `schedules` schedules from `first_seed` on; the first anomaly stops the run.
pub(crate) fn simulate(first_seed: u64, schedules: u64) -> (Arc<Stats>, Result<(), Anomaly>) {
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    simulate_on(first_seed, schedules, threads as u64)
}

/// As [`simulate`], on `threads` threads: thread `t` plays schedules `t`, `t + threads`, ...
/// Each schedule depends on its seed alone, so the split changes no schedule; an anomaly (or
/// a panic inside a schedule, reported with its seed) stops every thread at its next schedule.
fn simulate_on(first_seed: u64, schedules: u64, threads: u64) -> (Arc<Stats>, Result<(), Anomaly>) {
    let stats = Arc::new(Stats::default());
    let stop = AtomicBool::new(false);
    let threads = threads.clamp(1, schedules.max(1));
    let failures: Vec<Anomaly> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|thread| {
                let (stats, stop) = (stats.clone(), &stop);
                scope.spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_time()
                        .build()
                        .expect("a runtime for the timers the code under test sets");
                    // Timers are registered, never driven: nothing in a schedule waits for time.
                    let _context = runtime.enter();
                    TRACE.with(|t| t.set(std::env::var_os("BUNKER_SIM_TRACE").is_some()));
                    let mut i = thread;
                    while i < schedules && !stop.load(Ordering::Relaxed) {
                        let seed = first_seed.wrapping_add(i);
                        let steps = StdRng::seed_from_u64(seed ^ 0x5eed).gen_range(50..400);
                        stats.schedules.fetch_add(1, Ordering::Relaxed);
                        // An assertion inside a schedule is an anomaly of that seed too.
                        let played = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            Schedule::new(seed, stats.clone()).play(steps)
                        }));
                        let result = played.unwrap_or_else(|panic| {
                            Err(Anomaly {
                                seed,
                                step: 0,
                                what: format!(
                                    "panicked (the step is not known): {}",
                                    panic_message(panic.as_ref())
                                ),
                            })
                        });
                        if let Err(anomaly) = result {
                            stop.store(true, Ordering::Relaxed);
                            return Some(anomaly);
                        }
                        i += threads;
                    }
                    None
                })
            })
            .collect();
        workers
            .into_iter()
            .filter_map(|worker| {
                worker
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    });
    // Of the schedules that failed before every thread stopped, the first by seed (not
    // necessarily the first failing seed overall: threads stop at their next schedule).
    match failures
        .into_iter()
        .min_by_key(|a| a.seed.wrapping_sub(first_seed))
    {
        Some(anomaly) => (stats, Err(anomaly)),
        None => (stats, Ok(())),
    }
}

/// The text of a panic's payload.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("(no message)")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_u64(name: &str) -> Option<u64> {
        std::env::var(name).ok().and_then(|v| v.parse().ok())
    }

    #[test]
    fn splitting_schedules_over_threads_changes_none_of_them() {
        let figures = |threads| {
            let (stats, result) = simulate_on(7, 12, threads);
            result.expect("no anomaly");
            let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
            [
                n(&stats.schedules),
                n(&stats.steps),
                n(&stats.writes),
                n(&stats.faults),
                n(&stats.syncs),
                n(&stats.promotable_checks),
            ]
        };
        let one = figures(1);
        assert_eq!(one[0], 12);
        assert_eq!(figures(3), one);
    }

    /// `BUNKER_SIM_SCHEDULES` schedules (200 by default; `scripts/dr-sim` runs 100,000),
    /// from `BUNKER_SIM_SEED` (random by default, printed).
    #[test]
    fn seeded_schedules_keep_every_invariant() {
        let schedules = env_u64("BUNKER_SIM_SCHEDULES").unwrap_or(200);
        let seed =
            env_u64("BUNKER_SIM_SEED").unwrap_or_else(|| rand::thread_rng().gen::<u32>().into());
        let started = std::time::Instant::now();
        let (stats, result) = simulate(seed, schedules);
        let secs = started.elapsed().as_secs_f64();
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let played = n(&stats.schedules);
        println!(
            "simulation from seed {seed}: {played} schedules in {secs:.1} s ({:.0}/s), {} steps, \
             {} client writes, {} faults, {} syncs ({} from the key journal), {} torn syncs, \
             {} staged commits, promotion gate passed {} times and refused {} times, \
             {} promotions rehearsed",
            played as f64 / secs.max(1e-9),
            n(&stats.steps),
            n(&stats.writes),
            n(&stats.faults),
            n(&stats.syncs),
            n(&stats.journal_syncs),
            n(&stats.torn),
            n(&stats.staged_commits),
            n(&stats.promotable_checks),
            n(&stats.refused_checks),
            n(&stats.rehearsals),
        );
        if let Err(a) = result {
            panic!(
                "schedule {} failed at step {}: {}\nreplay: scripts/dr-sim 1 {} \
                 (add BUNKER_SIM_TRACE=1 to follow it)",
                a.seed, a.step, a.what, a.seed
            );
        }
        // Not vacuous: the schedules reached what the invariants are about.
        assert!(
            n(&stats.syncs) > n(&stats.journal_syncs)
                && n(&stats.journal_syncs) > 0
                && n(&stats.staged_commits) > 0
                && n(&stats.torn) > 0
                && n(&stats.promotable_checks) > 0
                && n(&stats.refused_checks) > 0
                && n(&stats.rehearsals) > 0,
            "the schedules reached syncs from the key journal and by Merkle diff, staged \
             commits, torn states, and both answers of the promotion gate"
        );
    }
}
