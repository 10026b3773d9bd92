//! The group-commit writer: one thread that owns every write to the database.
//!
//! A durable commit costs an fsync, which takes milliseconds no matter how little was written.
//! Committing each batch on its own would cap throughput at one batch per fsync. Instead,
//! callers queue their batches on a bounded channel; the writer takes one, drains whatever else
//! is already waiting, applies them all in one transaction and pays a single fsync for the lot.
//! Under no contention a batch is committed alone, so latency does not grow; under contention
//! the fsync cost is shared.
//!
//! The drain is bounded ([`MAX_GROUP_BATCHES`], [`MAX_GROUP_BYTES`]) so one commit holds a
//! bounded amount of memory and a bounded wait for the callers at the front of the group. A
//! batch that would cross the byte bound is carried over to start the next group.
//!
//! Each batch stays atomic: the group transaction contains all of them or none. If the group
//! transaction fails, each batch is retried in its own transaction, so one bad batch fails only
//! its own caller.
//!
//! The writer is also where commit order is decided, so it is where the [`CommitHook`] runs:
//! as each batch joins the transaction the hook's extra ops for it are added right after it,
//! and once the transaction is durable the hook hears `after_commit`. A retried batch asks the
//! hook again, so what the hook numbers always follows commit order (possibly with gaps for
//! attempts that failed). The byte bound counts callers' bytes only; extra ops come on top.
//!
//! **Committing on the caller's thread.** A writer that opts in ([`Writer::spawn_inline`]) lets
//! a caller on a thread that allows it ([`commit_inline_on_this_thread`]) commit its batch
//! itself when the writer thread waits with nothing queued and no commit runs: the batch then
//! skips two thread hand-offs (waking the writer, waking the caller back). Only a thread whose
//! blocking holds nobody else's work may allow it: the DR secondary's follower, alone on the
//! replication thread, whose next frames wait in the socket meanwhile. (The same on the
//! request runtime, through `block_in_place`, cost more than it saved: bench/README.md,
//! "Tried, not kept".) The store sits behind one lock taken by whoever commits, so commits
//! never overlap, the hook still sees them in commit order, and a drain queued meanwhile waits
//! for the inline commit; a batch committed this way is a group of one. Only batches up to
//! [`INLINE_MAX_BYTES`] are committed inline. A request the writer has just taken off the
//! queue, before it marks itself busy, may be overtaken by an inline commit: both callers are
//! still waiting for their answers, so neither has seen the other's outcome, and drains always
//! go through the queue.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::hook::{checked_extra_ops_within, HookSlot};
use crate::limits::{batch_bytes, validate_batch, validate_ops, MAX_BATCH_OPS};
use crate::{CommitHook, CommitIndex, Op, Result, StorageError, StorageMetrics};

/// A running writer thread and what callers share with it. Dropping it closes the queue and
/// waits for the thread to commit what was queued.
pub(crate) struct Writer {
    queue: Option<mpsc::Sender<WriteRequest>>,
    thread: Option<JoinHandle<()>>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) hook: Arc<HookSlot>,
    /// Set when callers may commit on their own thread ([`Writer::spawn_inline`]).
    inline: Option<Arc<dyn CommitNow>>,
    name: &'static str,
}

impl Writer {
    /// Start the writer thread `name` over `store`; every batch is committed on that thread.
    pub(crate) fn spawn(
        store: impl GroupStore + Send + 'static,
        name: &'static str,
    ) -> Result<Writer> {
        Self::start(store, name, false)
    }

    /// As [`Writer::spawn`], and a caller on a thread that allows it commits its batch itself
    /// when the writer is idle (see the module documentation). For stores whose commit is
    /// local work (a file and its sync), not a network round trip.
    pub(crate) fn spawn_inline(
        store: impl GroupStore + Send + 'static,
        name: &'static str,
    ) -> Result<Writer> {
        Self::start(store, name, true)
    }

    fn start(
        store: impl GroupStore + Send + 'static,
        name: &'static str,
        inline: bool,
    ) -> Result<Writer> {
        let counters = Arc::new(Counters::default());
        let hook = Arc::new(HookSlot::default());
        let committer = Arc::new(Committer {
            store: Mutex::new(store),
            counters: counters.clone(),
            hook: hook.clone(),
            writer_idle: AtomicBool::new(false),
        });
        let (queue, requests) = mpsc::channel(QUEUE_CAPACITY);
        let on_thread = committer.clone();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || run(&on_thread, requests))
            .map_err(|source| StorageError::Io {
                context: format!("starting the {name} thread"),
                source,
            })?;
        Ok(Writer {
            queue: Some(queue),
            thread: Some(thread),
            counters,
            hook,
            inline: inline.then_some(committer as Arc<dyn CommitNow>),
            name,
        })
    }

    /// Validate `ops`, queue them, and wait until they are durable (or failed).
    pub(crate) async fn submit(&self, ops: Vec<Op>) -> Result<()> {
        self.submit_tagged(ops, None).await
    }

    /// As [`Writer::submit`], for a request admitted while this node held the HA lock at
    /// `epoch`: the store commits it only if the lock is still held at that epoch
    /// ([`GroupStore::admits`]).
    pub(crate) async fn submit_tagged(&self, ops: Vec<Op>, epoch: Option<u64>) -> Result<()> {
        validate_batch(&ops)?;
        self.enqueue(ops, epoch, false).await
    }

    /// As [`Writer::submit_tagged`], without the limit on the number of ops
    /// ([`crate::Backend::batch_unbounded`]).
    pub(crate) async fn submit_unbounded(&self, ops: Vec<Op>, epoch: Option<u64>) -> Result<()> {
        validate_ops(&ops)?;
        self.enqueue(ops, epoch, true).await
    }

    /// Waits until every batch queued before this call is committed or failed (whether or not
    /// its caller still waits for it): a caller that dropped a batch's future can then read
    /// what the store holds after it.
    pub(crate) async fn drain(&self) -> Result<()> {
        self.send(Vec::new(), None, false).await
    }

    async fn enqueue(&self, ops: Vec<Op>, epoch: Option<u64>, unbounded: bool) -> Result<()> {
        if ops.is_empty() {
            return Ok(());
        }
        self.send(ops, epoch, unbounded).await
    }

    async fn send(&self, ops: Vec<Op>, epoch: Option<u64>, unbounded: bool) -> Result<()> {
        let queue = self.queue.as_ref().ok_or(StorageError::Closed)?;
        let (reply, mut committed) = oneshot::channel();
        let bytes = batch_bytes(&ops);
        let mut request = WriteRequest {
            ops,
            bytes,
            reply,
            epoch,
            unbounded,
            queued: Instant::now(),
        };
        // Nothing queued (a drain, which has no ops, always goes through the queue): commit
        // here if this thread allows it and no commit runs. All of it happens within this
        // poll, so a caller that drops the future cannot leave it half done.
        if let Some(inline) = &self.inline {
            if !request.ops.is_empty()
                && !request.unbounded
                && request.bytes <= INLINE_MAX_BYTES
                && COMMIT_HERE.get()
                && queue.capacity() == queue.max_capacity()
            {
                match inline.commit_now(request) {
                    Ok(()) => {
                        let stamp = committed.try_recv().map_err(|_| StorageError::Closed)??;
                        crate::stamp::note(stamp);
                        return Ok(());
                    }
                    Err(busy) => request = busy,
                }
            }
        }
        queue
            .send(request)
            .await
            .map_err(|_| StorageError::Closed)?;
        let stamp = committed.await.map_err(|_| StorageError::Closed)??;
        crate::stamp::note(stamp);
        Ok(())
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        drop(self.queue.take());
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!(writer = self.name, "storage writer thread panicked");
            }
        }
    }
}

/// Most batches committed in one transaction.
pub(crate) const MAX_GROUP_BATCHES: usize = 1024;
/// Most key and value bytes drained into one transaction (64 MiB); a single batch larger than
/// this is still committed, alone.
pub(crate) const MAX_GROUP_BYTES: usize = 64 * 1024 * 1024;
/// Capacity of the queue in front of the writer; callers wait when it is full.
pub(crate) const QUEUE_CAPACITY: usize = 1024;

/// One caller's batch, waiting to be committed.
pub(crate) struct WriteRequest {
    pub(crate) ops: Vec<Op>,
    /// Key and value bytes in `ops`.
    pub(crate) bytes: usize,
    /// Answered once the batch is durable (with the hook's stamp of it) or failed.
    pub(crate) reply: oneshot::Sender<Result<Option<u64>>>,
    /// The HA lock epoch the request was admitted under, if any.
    pub(crate) epoch: Option<u64>,
    /// Exempt from the limit on the number of ops ([`Writer::submit_unbounded`]).
    pub(crate) unbounded: bool,
    /// When it was queued.
    pub(crate) queued: Instant,
}

/// Largest batch (key and value bytes) committed on its caller's thread. A larger one (a
/// staged sync's commit, a snapshot's values) may wait for a checkpoint or be synced by redb
/// itself, and would hold the caller's thread, and the streams on it, for as long.
const INLINE_MAX_BYTES: usize = 1024 * 1024;

thread_local! {
    /// Whether batches submitted on this thread may be committed on it.
    static COMMIT_HERE: Cell<bool> = const { Cell::new(false) };
}

/// Lets the calling thread commit its own batches to an idle embedded store's writer instead of
/// handing them to the writer thread (module documentation). Call it only on a thread whose
/// blocking for a commit (a log write and its sync) delays nobody else's work.
pub fn commit_inline_on_this_thread() {
    COMMIT_HERE.set(true);
}

/// The store and what every commit of it needs, shared by the writer thread and the callers
/// that commit on their own thread. Whoever holds `store` is the one committing.
struct Committer<S> {
    store: Mutex<S>,
    counters: Arc<Counters>,
    hook: Arc<HookSlot>,
    /// The writer thread waits for a request with none in hand: only then may a caller
    /// commit on its own thread (a busy writer is forming groups, which a caller committing
    /// alone would only make smaller).
    writer_idle: AtomicBool,
}

impl<S: GroupStore> Committer<S> {
    /// The store, or `None` once a commit panicked holding it: what that commit left is
    /// unknown (a record logged, an index not updated), so nothing commits after it, as when
    /// the writer thread itself died.
    fn lock(&self) -> Option<std::sync::MutexGuard<'_, S>> {
        self.store.lock().ok()
    }

    /// Commits `group` (in queue order) holding the store. `lone`: a group of one request
    /// with nothing queued behind it ([`GroupStore::commit_lone`]).
    fn commit(&self, store: &S, group: Vec<WriteRequest>, lone: bool) {
        let hook = self.hook.get();
        commit_group(store, group, &self.counters, hook.as_deref(), lone);
    }
}

/// A caller's way to commit on its own thread, without knowing the store's type.
trait CommitNow: Send + Sync {
    /// Commits `request` alone and answers its reply, if the writer thread is idle and no
    /// other caller is committing; otherwise gives `request` back.
    fn commit_now(&self, request: WriteRequest) -> std::result::Result<(), WriteRequest>;

    /// Whether the writer thread waits for a request.
    #[cfg(test)]
    fn writer_idle(&self) -> bool;
}

impl<S: GroupStore + Send> CommitNow for Committer<S> {
    #[cfg(test)]
    fn writer_idle(&self) -> bool {
        self.writer_idle.load(Ordering::Acquire)
    }

    fn commit_now(&self, request: WriteRequest) -> std::result::Result<(), WriteRequest> {
        if !self.writer_idle.load(Ordering::Acquire) {
            return Err(request);
        }
        let store = match self.store.try_lock() {
            Ok(store) => store,
            Err(std::sync::TryLockError::WouldBlock) => return Err(request),
            Err(std::sync::TryLockError::Poisoned(_)) => {
                // A commit panicked holding the store ([`Committer::lock`]).
                let _ = request.reply.send(Err(StorageError::Closed));
                return Ok(());
            }
        };
        // Never lone: a deferred group waits for the writer thread to find its queue empty,
        // and that thread, waiting, would not see it (the next commit would apply it).
        self.commit(&store, vec![request], false);
        metrics::counter!(INLINE_METRIC).increment(1);
        Ok(())
    }
}

/// Batches committed (or failed) on their caller's thread (`docs/monitoring.md`).
const INLINE_METRIC: &str = "bunker_storage_commits_inline_total";

/// How long a batch waited in the writer's queue before its group commit began
/// (`docs/monitoring.md`): the writer busy with earlier groups, or the commit delay.
const QUEUE_WAIT_METRIC: &str = "bunker_storage_queue_wait";

/// Where the writer commits: applies a group of batches in one durable transaction.
pub(crate) trait GroupStore {
    /// Commits `batches` in one durable transaction, feeding `index` if the store keeps one.
    fn commit(&self, batches: &[&[Op]], index: Option<&dyn CommitIndex>) -> Result<()>;

    /// [`GroupStore::commit`] of a group of one request (its batch and the hook's extra ops
    /// for it): nobody else's write was waiting when the group formed. The embedded store
    /// defers such a group's database commit until the writer is idle.
    fn commit_lone(&self, batches: &[&[Op]], index: Option<&dyn CommitIndex>) -> Result<()> {
        self.commit(batches, index)
    }

    /// Whether a request admitted under HA lock `epoch` may still commit (checked on the
    /// writer thread just before its transaction). Stores without HA admit everything.
    fn admits(&self, _epoch: Option<u64>) -> Result<()> {
        Ok(())
    }

    /// The writer found its queue empty and is about to wait for the next request: work a
    /// commit deferred is done now (the embedded store's lone groups).
    fn idle(&self) {}

    /// The writer is stopping (its queue closed and drained).
    fn close(&self) {}
}

/// Durability counters, updated by the writer and read by `metrics()`.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    fsyncs: AtomicU64,
    batches: AtomicU64,
    ops: AtomicU64,
}

impl Counters {
    /// Counts one durable commit of `group`, extra ops included.
    fn record_commit(&self, group: &[Prepared]) {
        let ops: usize = group.iter().map(Prepared::op_count).sum();
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.batches
            .fetch_add(group.len() as u64, Ordering::Relaxed);
        self.ops.fetch_add(ops as u64, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> StorageMetrics {
        StorageMetrics {
            fsyncs: self.fsyncs.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
            ops: self.ops.load(Ordering::Relaxed),
        }
    }
}

/// Runs until every sender of `queue` is dropped and the queue is empty. Each group is
/// committed with the hook installed in the committer's slot when the group starts.
fn run<S: GroupStore>(committer: &Committer<S>, mut queue: mpsc::Receiver<WriteRequest>) {
    let mut carried = None;
    let mut last_group_len = 0usize;
    let mut last_commit = Duration::ZERO;
    loop {
        let first = match carried.take() {
            Some(request) => request,
            None => match queue.try_recv().ok().or_else(|| {
                // Nothing queued: the store's deferred work, before the writer sleeps.
                if let Some(store) = committer.lock() {
                    store.idle();
                }
                committer.writer_idle.store(true, Ordering::Release);
                let next = queue.blocking_recv();
                committer.writer_idle.store(false, Ordering::Release);
                next
            }) {
                Some(request) => request,
                None => {
                    if let Some(store) = committer.lock() {
                        store.close();
                    }
                    return;
                }
            },
        };
        let (mut group, mut next) = drain_group(first, &mut queue);
        // Commit delay (PostgreSQL's commit_delay, made adaptive): when the last commit was
        // shared by several writers, more are on their way; waiting a fraction of a commit's
        // cost lets them share this fsync too. Never when uncontended, so a lone write pays
        // no extra latency.
        if next.is_none()
            && last_group_len >= COMMIT_DELAY_MIN_GROUP
            && group.len() < last_group_len
        {
            std::thread::sleep((last_commit / COMMIT_DELAY_FRACTION).min(COMMIT_DELAY_MAX));
            let (more, carried_over) = drain_more(group, &mut queue);
            group = more;
            next = carried_over;
        }
        carried = next;
        last_group_len = group.len();
        // Waits here for a caller's inline commit, if one runs.
        let Some(store) = committer.lock() else {
            // The queue closes with this thread, so every caller hears `Closed`.
            tracing::error!("a storage commit panicked: no more writes until a restart");
            return;
        };
        let started = Instant::now();
        // Nothing waits behind a group of one: the store may finish part of its work once the
        // writer is idle. Under load a group of one with more queued is committed as any other.
        let lone = group.len() == 1 && carried.is_none() && queue.is_empty();
        committer.commit(&store, group, lone);
        drop(store);
        last_commit = started.elapsed();
    }
}

/// Contention (writers in the last group) from which the writer waits for more.
const COMMIT_DELAY_MIN_GROUP: usize = 4;
/// The wait is this fraction of the last commit's duration...
const COMMIT_DELAY_FRACTION: u32 = 4;
/// ...and never longer than this.
const COMMIT_DELAY_MAX: Duration = Duration::from_micros(500);

/// Add to `group` whatever has been queued since, within the group bounds.
fn drain_more(
    group: Vec<WriteRequest>,
    queue: &mut mpsc::Receiver<WriteRequest>,
) -> (Vec<WriteRequest>, Option<WriteRequest>) {
    let mut bytes: usize = group.iter().map(|r| r.bytes).sum();
    let mut group = group;
    while group.len() < MAX_GROUP_BATCHES {
        let Ok(request) = queue.try_recv() else {
            break;
        };
        let grown = bytes.saturating_add(request.bytes);
        if grown > MAX_GROUP_BYTES {
            return (group, Some(request));
        }
        bytes = grown;
        group.push(request);
    }
    (group, None)
}

/// `first` plus every request already queued, within the group bounds. Returns the group and
/// the request that would have crossed the byte bound, if any.
fn drain_group(
    first: WriteRequest,
    queue: &mut mpsc::Receiver<WriteRequest>,
) -> (Vec<WriteRequest>, Option<WriteRequest>) {
    drain_more(vec![first], queue)
}

/// A request with the extra ops its hook gave it for this commit attempt.
struct Prepared {
    request: WriteRequest,
    extra: Vec<Op>,
    /// The hook's stamp of this batch ([`CommitHook::stamp`]).
    stamp: Option<u64>,
}

impl Prepared {
    fn op_count(&self) -> usize {
        self.request.ops.len() + self.extra.len()
    }
}

/// Asks the hook for `request`'s extra ops. A request whose extra ops break the batch limits is
/// answered with that error here and left out of the commit.
fn prepare(request: WriteRequest, hook: Option<&dyn CommitHook>) -> Option<Prepared> {
    let Some(hook) = hook else {
        return Some(Prepared {
            request,
            extra: Vec::new(),
            stamp: None,
        });
    };
    let limit = if request.unbounded {
        usize::MAX
    } else {
        MAX_BATCH_OPS
    };
    match checked_extra_ops_within(hook, &request.ops, limit) {
        Ok(extra) => {
            let stamp = hook.stamp(&extra);
            Some(Prepared {
                request,
                extra,
                stamp,
            })
        }
        Err(error) => {
            let _ = request.reply.send(Err(error));
            None
        }
    }
}

/// Commits `group` in one durable transaction, each batch followed by its extra ops, then
/// tells the hook if any batch had extra ops.
fn commit_prepared(
    store: &impl GroupStore,
    group: &[Prepared],
    counters: &Counters,
    hook: Option<&dyn CommitHook>,
    lone: bool,
) -> Result<()> {
    let batches: Vec<&[Op]> = group
        .iter()
        .flat_map(|prepared| [prepared.request.ops.as_slice(), prepared.extra.as_slice()])
        .filter(|ops| !ops.is_empty())
        .collect();
    let index = hook.and_then(|hook| hook.index());
    // One request (its ops and the hook's extra ops for it), nothing queued behind it: the
    // store may treat it as a lone write.
    if lone && group.len() == 1 {
        store.commit_lone(&batches, index.as_deref())?;
    } else {
        store.commit(&batches, index.as_deref())?;
    }
    counters.record_commit(group);
    if let Some(hook) = hook {
        if group.iter().any(|prepared| !prepared.extra.is_empty()) {
            hook.after_commit();
        }
    }
    Ok(())
}

fn commit_group(
    store: &impl GroupStore,
    group: Vec<WriteRequest>,
    counters: &Counters,
    hook: Option<&dyn CommitHook>,
    lone: bool,
) {
    // Empty requests are drains ([`Writer::drain`]): answered once the rest of the group (and
    // every group before it) is committed or failed.
    let (drains, group): (Vec<_>, Vec<_>) = group
        .into_iter()
        .partition(|request| request.ops.is_empty());
    let started = Instant::now();
    let queue_wait = metrics::histogram!(QUEUE_WAIT_METRIC);
    let mut longest = std::time::Duration::ZERO;
    for request in &group {
        let waited = started.duration_since(request.queued);
        queue_wait.record(waited.as_secs_f64() * 1000.0);
        longest = longest.max(waited);
    }
    crate::timed::warn_if_slow(QUEUE_WAIT_METRIC, longest, crate::timed::SLOW_WRITE_PATH);
    commit_requests(store, group, counters, hook, lone);
    for drain in drains {
        let _ = drain.reply.send(Ok(None));
    }
}

fn commit_requests(
    store: &impl GroupStore,
    group: Vec<WriteRequest>,
    counters: &Counters,
    hook: Option<&dyn CommitHook>,
    lone: bool,
) {
    // In queue order, so the hook sees batches in the order they are committed. A request
    // admitted under an HA epoch that is no longer this node's is refused here.
    let group: Vec<Prepared> = group
        .into_iter()
        .filter_map(|request| match store.admits(request.epoch) {
            Ok(()) => prepare(request, hook),
            Err(error) => {
                let _ = request.reply.send(Err(error));
                None
            }
        })
        .collect();
    if group.is_empty() {
        return;
    }
    match commit_prepared(store, &group, counters, hook, lone) {
        Ok(()) => {
            for prepared in group {
                // The caller may have stopped waiting; its batch is committed regardless.
                let _ = prepared.request.reply.send(Ok(prepared.stamp));
            }
        }
        Err(error) if group.len() == 1 => {
            if let Some(prepared) = group.into_iter().next() {
                let _ = prepared.request.reply.send(Err(error));
            }
        }
        Err(error) => {
            tracing::warn!(
                batches = group.len(),
                %error,
                "group commit failed; committing its batches one by one"
            );
            for prepared in group {
                // The failed attempt's extra ops are dropped; the retry asks the hook again.
                let Some(retry) = prepare(prepared.request, hook) else {
                    continue;
                };
                let single = [retry];
                let result = commit_prepared(store, &single, counters, hook, false);
                let [retry] = single;
                let _ = retry.request.reply.send(result.map(|()| retry.stamp));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::StorageError;

    /// Records each commit; fails any commit that contains the key `poison`.
    #[derive(Default)]
    struct RecordingStore {
        commits: Mutex<Vec<Vec<String>>>,
    }

    impl GroupStore for &RecordingStore {
        fn commit(&self, batches: &[&[Op]], _index: Option<&dyn CommitIndex>) -> Result<()> {
            let keys: Vec<String> = batches
                .iter()
                .flat_map(|batch| batch.iter().map(|op| op.key().to_owned()))
                .collect();
            if keys.iter().any(|key| key == "poison") {
                return Err(StorageError::Engine {
                    context: "committing test group".into(),
                    message: "poisoned".into(),
                });
            }
            self.commits
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(keys);
            Ok(())
        }
    }

    fn request(
        key: &str,
        value_len: usize,
    ) -> (WriteRequest, oneshot::Receiver<Result<Option<u64>>>) {
        let (reply, receiver) = oneshot::channel();
        let ops = vec![Op::Put {
            key: key.to_owned(),
            value: vec![0; value_len],
        }];
        let bytes = crate::limits::batch_bytes(&ops);
        (
            WriteRequest {
                ops,
                bytes,
                reply,
                epoch: None,
                unbounded: false,
                queued: Instant::now(),
            },
            receiver,
        )
    }

    /// What the writer did with queued batches: whether each succeeded, the commits the store
    /// saw (keys in order), and the counters.
    struct Played {
        ok: Vec<bool>,
        commits: Vec<Vec<String>>,
        counters: Counters,
    }

    /// Queues one batch per key (a put of `value_len` bytes) before the writer starts, so they
    /// are all waiting when it drains, and runs the writer with `hook` until the queue closes.
    fn play<K: AsRef<str>>(keys: &[K], value_len: usize, hook: HookSlot) -> Played {
        let store = RecordingStore::default();
        let (requests, replies): (Vec<_>, Vec<_>) = keys
            .iter()
            .map(|key| request(key.as_ref(), value_len))
            .unzip();
        let (sender, queue) = mpsc::channel(requests.len().max(1));
        for request in requests {
            assert!(sender.try_send(request).is_ok(), "queue has room");
        }
        drop(sender);
        let committer = Committer {
            store: Mutex::new(&store),
            counters: Arc::new(Counters::default()),
            hook: Arc::new(hook),
            writer_idle: AtomicBool::new(false),
        };
        run(&committer, queue);
        let counters = Arc::into_inner(committer.counters).expect("the only owner");
        let ok = replies
            .into_iter()
            .map(|mut reply| matches!(reply.try_recv(), Ok(Ok(_))))
            .collect();
        let commits = std::mem::take(
            &mut *store
                .commits
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        Played {
            ok,
            commits,
            counters,
        }
    }

    /// Numbers every batch it sees with a `hook/<n>` key and counts `after_commit` calls.
    #[derive(Default)]
    struct NumberingHook {
        calls: AtomicU64,
        after_commits: AtomicU64,
    }

    impl CommitHook for NumberingHook {
        fn extra_ops(&self, ops: &[Op]) -> Vec<Op> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
            if ops.iter().any(|op| op.key() == "unhooked") {
                return Vec::new();
            }
            if ops.iter().any(|op| op.key() == "bad-extra") {
                return vec![Op::Delete { key: String::new() }];
            }
            vec![Op::Put {
                key: format!("hook/{n}"),
                value: Vec::new(),
            }]
        }

        fn after_commit(&self) {
            self.after_commits.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn hooked(hook: &Arc<NumberingHook>) -> HookSlot {
        let slot = HookSlot::default();
        slot.set(Some(hook.clone()));
        slot
    }

    /// Commits only when the test opens its gate, once per commit.
    struct GatedStore {
        gate: Mutex<std::sync::mpsc::Receiver<()>>,
        commits: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl GroupStore for GatedStore {
        fn commit(&self, _batches: &[&[Op]], _index: Option<&dyn CommitIndex>) -> Result<()> {
            let gate = self
                .gate
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            gate.recv().map_err(|_| StorageError::Closed)?;
            self.commits
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        }
    }

    /// Each commit made: the thread that made it and its keys.
    type Commits = Arc<Mutex<Vec<(String, Vec<String>)>>>;

    /// Lets commits through one token at a time; a commit waiting for one holds no lock.
    #[derive(Default)]
    struct Gate {
        tokens: Mutex<usize>,
        opened: std::sync::Condvar,
    }

    impl Gate {
        fn open(&self) {
            *locked(&self.tokens) += 1;
            self.opened.notify_all();
        }

        fn pass(&self) {
            let mut tokens = locked(&self.tokens);
            while *tokens == 0 {
                tokens = self
                    .opened
                    .wait(tokens)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            }
            *tokens -= 1;
        }
    }

    /// Records which thread made each commit, of which keys, and the most commits that ran at
    /// once. Each commit first says it began (on `began`), then passes the gate.
    struct ThreadStore {
        began: Mutex<std::sync::mpsc::Sender<String>>,
        gate: Arc<Gate>,
        commits: Commits,
        in_flight: AtomicU64,
        most_in_flight: Arc<AtomicU64>,
    }

    impl GroupStore for ThreadStore {
        fn commit(&self, batches: &[&[Op]], _index: Option<&dyn CommitIndex>) -> Result<()> {
            let running = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.most_in_flight.fetch_max(running, Ordering::SeqCst);
            let thread = std::thread::current().name().unwrap_or("?").to_owned();
            let _ = locked(&self.began).send(thread.clone());
            self.gate.pass();
            let keys: Vec<String> = batches
                .iter()
                .flat_map(|batch| batch.iter().map(|op| op.key().to_owned()))
                .collect();
            assert!(!keys.iter().any(|key| key == "panic"), "a commit panicked");
            locked(&self.commits).push((thread, keys));
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            Ok(())
        }
    }

    fn locked<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        mutex
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A writer over a [`ThreadStore`] and the store's handles.
    struct Fixture {
        writer: Arc<Writer>,
        gate: Arc<Gate>,
        began: std::sync::mpsc::Receiver<String>,
        commits: Commits,
        most_in_flight: Arc<AtomicU64>,
    }

    /// A writer named `name`, letting callers commit inline when `inline` says so.
    fn fixture(name: &'static str, inline: bool) -> Fixture {
        let (began_tx, began) = std::sync::mpsc::channel();
        let (gate, commits) = (Arc::new(Gate::default()), Commits::default());
        let most_in_flight = Arc::new(AtomicU64::new(0));
        let store = ThreadStore {
            began: Mutex::new(began_tx),
            gate: gate.clone(),
            commits: commits.clone(),
            in_flight: AtomicU64::new(0),
            most_in_flight: most_in_flight.clone(),
        };
        let writer = if inline {
            Writer::spawn_inline(store, name)
        } else {
            Writer::spawn(store, name)
        };
        Fixture {
            writer: Arc::new(writer.expect("writer")),
            gate,
            began,
            commits,
            most_in_flight,
        }
    }

    /// Submits a put of `key` from a new thread named `name`, which allows inline commits
    /// when `inline` says so.
    fn submit_from(
        writer: &Arc<Writer>,
        name: &str,
        key: &str,
        inline: bool,
    ) -> std::thread::JoinHandle<Result<()>> {
        let put = Op::Put {
            key: key.to_owned(),
            value: b"v".to_vec(),
        };
        submit_ops_from(writer, name, vec![put], Limit::Bounded, inline)
    }

    /// Which submission a test makes: [`Writer::submit`] or [`Writer::submit_unbounded`].
    #[derive(Clone, Copy)]
    enum Limit {
        Bounded,
        Unbounded,
    }

    /// Submits `ops` from a new thread named `name`, which allows inline commits when `inline`
    /// says so, and returns that thread (joined: the outcome).
    fn submit_ops_from(
        writer: &Arc<Writer>,
        name: &str,
        ops: Vec<Op>,
        limit: Limit,
        inline: bool,
    ) -> std::thread::JoinHandle<Result<()>> {
        let writer = writer.clone();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                if inline {
                    commit_inline_on_this_thread();
                }
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .expect("runtime");
                runtime.block_on(async {
                    match limit {
                        Limit::Bounded => writer.submit(ops).await,
                        Limit::Unbounded => writer.submit_unbounded(ops, None).await,
                    }
                })
            })
            .expect("thread")
    }

    /// Waits until the writer thread is (or is not) waiting for a request.
    fn until_writer_idle(writer: &Writer, idle: bool) {
        let inline = writer.inline.as_ref().expect("an inline writer");
        while inline.writer_idle() != idle {
            std::thread::yield_now();
        }
    }

    #[test]
    fn an_idle_writer_lets_a_thread_that_allows_it_commit_on_that_thread() {
        let f = fixture("test-writer", true);
        let commit = |name, key, inline| {
            until_writer_idle(&f.writer, true);
            f.gate.open();
            submit_from(&f.writer, name, key, inline)
                .join()
                .expect("thread")
                .expect("committed");
        };
        commit("plain", "a", false);
        commit("replication", "b", true);
        assert_eq!(
            *locked(&f.commits),
            [
                ("test-writer".to_owned(), vec!["a".to_owned()]),
                ("replication".to_owned(), vec!["b".to_owned()]),
            ]
        );
        assert_eq!(f.writer.counters.snapshot().batches, 2);
        // Without the opt-in, no caller ever commits.
        let plain = fixture("plain-writer", false);
        plain.gate.open();
        submit_from(&plain.writer, "replication", "c", true)
            .join()
            .expect("thread")
            .expect("committed");
        assert_eq!(locked(&plain.commits)[0].0, "plain-writer");
    }

    /// While a caller commits inline, the writer thread's next group (a batch, a drain) waits
    /// for it, so commits never overlap and a drain still sees everything before it.
    #[tokio::test]
    async fn the_writer_and_drains_wait_for_an_inline_commit() {
        use std::future::Future;
        use std::task::{Context, Waker};
        let f = fixture("test-writer", true);
        until_writer_idle(&f.writer, true);
        let first = submit_from(&f.writer, "replication", "a", true);
        assert_eq!(f.began.recv().expect("began"), "replication");
        // The inline commit holds the store: this batch goes through the queue and waits.
        let second = submit_from(&f.writer, "replication-2", "b", true);
        until_writer_idle(&f.writer, false);
        let mut drain = Box::pin(f.writer.drain());
        assert!(
            drain
                .as_mut()
                .poll(&mut Context::from_waker(Waker::noop()))
                .is_pending(),
            "the drain waits for the inline commit"
        );
        // The writer thread holds "b" and must not start its commit before "a" ends (a store
        // that did not serialise commits itself would show it here at once).
        assert!(f.began.recv_timeout(Duration::from_millis(100)).is_err());
        f.gate.open();
        assert_eq!(f.began.recv().expect("began"), "test-writer");
        f.gate.open();
        first.join().expect("thread").expect("committed");
        second.join().expect("thread").expect("committed");
        drain.await.expect("drained");
        assert_eq!(
            *locked(&f.commits),
            [
                ("replication".to_owned(), vec!["a".to_owned()]),
                ("test-writer".to_owned(), vec!["b".to_owned()]),
            ]
        );
        assert_eq!(f.most_in_flight.load(Ordering::SeqCst), 1);
    }

    /// Large batches and those exempt from the op limit (a staged sync's commit) go to the
    /// writer thread even from a thread that allows inline commits.
    #[test]
    fn large_batches_are_not_committed_inline() {
        let f = fixture("test-writer", true);
        let big = Op::Put {
            key: "big".into(),
            value: vec![0; INLINE_MAX_BYTES + 1],
        };
        let unbounded = Op::Put {
            key: "unbounded".into(),
            value: b"v".to_vec(),
        };
        for (op, limit) in [(big, Limit::Bounded), (unbounded, Limit::Unbounded)] {
            until_writer_idle(&f.writer, true);
            f.gate.open();
            submit_ops_from(&f.writer, "replication", vec![op], limit, true)
                .join()
                .expect("thread")
                .expect("committed");
        }
        let threads: Vec<String> = locked(&f.commits).iter().map(|c| c.0.clone()).collect();
        assert_eq!(threads, ["test-writer", "test-writer"]);
    }

    /// A commit that panicked on its caller's thread left the store in an unknown state: as
    /// when the writer thread itself dies, no write is committed after it.
    #[tokio::test]
    async fn after_an_inline_commit_panicked_nothing_commits() {
        let f = fixture("test-writer", true);
        for _ in 0..3 {
            f.gate.open();
        }
        until_writer_idle(&f.writer, true);
        let panicked = submit_from(&f.writer, "replication", "panic", true).join();
        assert!(panicked.is_err(), "the caller's thread panicked");
        let inline = submit_from(&f.writer, "replication", "a", true).join();
        assert!(matches!(inline.expect("thread"), Err(StorageError::Closed)));
        let queued = f.writer.submit(vec![Op::Put {
            key: "b".into(),
            value: b"v".to_vec(),
        }]);
        assert!(matches!(queued.await, Err(StorageError::Closed)));
        assert!(locked(&f.commits).is_empty());
    }

    /// A batch whose caller stopped waiting once it was queued is still committed, and a
    /// drain returns only after it was: what a replication follower stopped mid-commit relies
    /// on before it reads its position back.
    #[tokio::test]
    async fn a_drain_waits_for_batches_whose_callers_stopped_waiting() {
        use std::future::Future;
        use std::task::{Context, Poll, Waker};
        let poll_once = |future: std::pin::Pin<&mut dyn Future<Output = Result<()>>>| {
            future.poll(&mut Context::from_waker(Waker::noop()))
        };
        let (open, gate) = std::sync::mpsc::channel();
        let commits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let writer = Writer::spawn(
            GatedStore {
                gate: Mutex::new(gate),
                commits: commits.clone(),
            },
            "test-writer",
        )
        .expect("writer");
        // Dropped before the writer if an assertion fails, so its thread is not left waiting.
        let open = open;
        let mut abandoned = Box::pin(writer.submit(vec![Op::Put {
            key: "k".into(),
            value: b"v".to_vec(),
        }]));
        assert!(
            poll_once(abandoned.as_mut()).is_pending(),
            "queued, not committed"
        );
        drop(abandoned);
        let mut drain = Box::pin(writer.drain());
        assert!(
            matches!(poll_once(drain.as_mut()), Poll::Pending),
            "the drain waits while the abandoned batch is uncommitted"
        );
        open.send(()).expect("opening the gate");
        drain.await.expect("drained");
        assert_eq!(commits.load(std::sync::atomic::Ordering::SeqCst), 1);
        // A drain with nothing queued returns at once (no commit).
        writer.drain().await.expect("drained");
        assert_eq!(commits.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[test]
    fn queued_batches_share_one_commit() {
        let played = play(&["a", "b", "c"], 1, HookSlot::default());
        assert_eq!(played.ok, [true, true, true]);
        assert_eq!(played.commits, vec![vec!["a", "b", "c"]]);
        assert_eq!(
            played.counters.snapshot(),
            StorageMetrics {
                fsyncs: 1,
                batches: 3,
                ops: 3
            }
        );
    }

    #[test]
    fn a_failing_batch_fails_only_its_own_caller() {
        let played = play(&["a", "poison", "c"], 1, HookSlot::default());
        assert_eq!(played.ok, [true, false, true]);
        assert_eq!(played.commits, vec![vec!["a"], vec!["c"]]);
        assert_eq!(played.counters.snapshot().batches, 2);
    }

    #[test]
    fn group_bytes_are_bounded() {
        let played = play(
            &["a", "b", "c", "d"],
            MAX_GROUP_BYTES / 3,
            HookSlot::default(),
        );
        // Three values plus their keys cross the bound, so each group holds two.
        assert_eq!(played.commits, vec![vec!["a", "b"], vec!["c", "d"]]);
    }

    #[test]
    fn group_batch_count_is_bounded() {
        let keys: Vec<String> = (0..MAX_GROUP_BATCHES + 5)
            .map(|i| format!("k{i}"))
            .collect();
        let played = play(&keys, 0, HookSlot::default());
        let group_sizes: Vec<usize> = played.commits.iter().map(Vec::len).collect();
        assert_eq!(group_sizes, [MAX_GROUP_BATCHES, 5]);
    }

    #[test]
    fn the_hook_adds_ops_after_each_batch_of_the_group() {
        let hook = Arc::new(NumberingHook::default());
        let played = play(&["a", "unhooked", "c"], 1, hooked(&hook));
        assert_eq!(played.ok, [true, true, true]);
        assert_eq!(
            played.commits,
            vec![vec!["a", "hook/1", "unhooked", "c", "hook/3"]]
        );
        assert_eq!(hook.after_commits.load(Ordering::SeqCst), 1);
        assert_eq!(played.counters.snapshot().ops, 5, "extra ops are counted");
    }

    #[test]
    fn a_retried_batch_asks_the_hook_again_in_order() {
        let hook = Arc::new(NumberingHook::default());
        let played = play(&["a", "poison", "c"], 1, hooked(&hook));
        assert_eq!(played.ok, [true, false, true]);
        // 1..=3 went to the failed group transaction; the retries got 4, 5 (failed) and 6.
        assert_eq!(
            played.commits,
            vec![vec!["a", "hook/4"], vec!["c", "hook/6"]]
        );
        assert_eq!(hook.after_commits.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn invalid_extra_ops_reject_only_their_batch() {
        let hook = Arc::new(NumberingHook::default());
        let played = play(&["a", "bad-extra", "c"], 1, hooked(&hook));
        assert_eq!(played.ok, [true, false, true]);
        assert_eq!(played.commits, vec![vec!["a", "hook/1", "c", "hook/3"]]);
    }
}
