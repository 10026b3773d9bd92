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

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{mpsc, oneshot};

use crate::{Op, Result, StorageMetrics};

/// Most batches committed in one transaction.
pub(super) const MAX_GROUP_BATCHES: usize = 1024;
/// Most key and value bytes drained into one transaction (64 MiB); a single batch larger than
/// this is still committed, alone.
pub(super) const MAX_GROUP_BYTES: usize = 64 * 1024 * 1024;
/// Capacity of the queue in front of the writer; callers wait when it is full.
pub(super) const QUEUE_CAPACITY: usize = 1024;

/// One caller's batch, waiting to be committed.
pub(super) struct WriteRequest {
    pub(super) ops: Vec<Op>,
    /// Key and value bytes in `ops`.
    pub(super) bytes: usize,
    pub(super) reply: oneshot::Sender<Result<()>>,
}

/// Where the writer commits: applies a group of batches in one durable transaction.
pub(super) trait GroupStore {
    fn commit(&self, batches: &[&[Op]]) -> Result<()>;
}

/// Durability counters, updated by the writer and read by `metrics()`.
#[derive(Debug, Default)]
pub(super) struct Counters {
    fsyncs: AtomicU64,
    batches: AtomicU64,
    ops: AtomicU64,
}

impl Counters {
    fn record_commit(&self, batches: &[&[Op]]) {
        let ops: usize = batches.iter().map(|batch| batch.len()).sum();
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.batches
            .fetch_add(batches.len() as u64, Ordering::Relaxed);
        self.ops.fetch_add(ops as u64, Ordering::Relaxed);
    }

    pub(super) fn snapshot(&self) -> StorageMetrics {
        StorageMetrics {
            fsyncs: self.fsyncs.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
            ops: self.ops.load(Ordering::Relaxed),
        }
    }
}

/// Runs until every sender of `queue` is dropped and the queue is empty.
pub(super) fn run(
    store: impl GroupStore,
    mut queue: mpsc::Receiver<WriteRequest>,
    counters: &Counters,
) {
    let mut carried = None;
    loop {
        let first = match carried.take() {
            Some(request) => request,
            None => match queue.blocking_recv() {
                Some(request) => request,
                None => return,
            },
        };
        let (group, next) = drain_group(first, &mut queue);
        carried = next;
        commit_group(&store, group, counters);
    }
}

/// `first` plus every request already queued, within the group bounds. Returns the group and
/// the request that would have crossed the byte bound, if any.
fn drain_group(
    first: WriteRequest,
    queue: &mut mpsc::Receiver<WriteRequest>,
) -> (Vec<WriteRequest>, Option<WriteRequest>) {
    let mut bytes = first.bytes;
    let mut group = vec![first];
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

fn commit_group(store: &impl GroupStore, group: Vec<WriteRequest>, counters: &Counters) {
    let batches: Vec<&[Op]> = group.iter().map(|request| request.ops.as_slice()).collect();
    let group_result = store.commit(&batches);
    if group_result.is_ok() {
        counters.record_commit(&batches);
    }
    drop(batches);
    match group_result {
        Ok(()) => {
            for request in group {
                // The caller may have stopped waiting; its batch is committed regardless.
                let _ = request.reply.send(Ok(()));
            }
        }
        Err(error) if group.len() == 1 => {
            if let Some(request) = group.into_iter().next() {
                let _ = request.reply.send(Err(error));
            }
        }
        Err(error) => {
            tracing::warn!(
                batches = group.len(),
                %error,
                "group commit failed; committing its batches one by one"
            );
            for request in group {
                let single = [request.ops.as_slice()];
                let result = store.commit(&single);
                if result.is_ok() {
                    counters.record_commit(&single);
                }
                let _ = request.reply.send(result);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::StorageError;

    /// Records each commit; fails any commit that contains the key `poison`.
    #[derive(Default)]
    struct RecordingStore {
        commits: Mutex<Vec<Vec<String>>>,
    }

    impl GroupStore for &RecordingStore {
        fn commit(&self, batches: &[&[Op]]) -> Result<()> {
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

    fn request(key: &str, value_len: usize) -> (WriteRequest, oneshot::Receiver<Result<()>>) {
        let (reply, receiver) = oneshot::channel();
        let ops = vec![Op::Put {
            key: key.to_owned(),
            value: vec![0; value_len],
        }];
        let bytes = crate::limits::batch_bytes(&ops);
        (WriteRequest { ops, bytes, reply }, receiver)
    }

    /// Queues `requests` before the writer starts, so they are all waiting when it drains.
    fn run_queued(store: &RecordingStore, requests: Vec<WriteRequest>) -> Counters {
        let (sender, queue) = mpsc::channel(requests.len().max(1));
        for request in requests {
            assert!(sender.try_send(request).is_ok(), "queue has room");
        }
        drop(sender);
        let counters = Counters::default();
        run(store, queue, &counters);
        counters
    }

    #[test]
    fn queued_batches_share_one_commit() {
        let store = RecordingStore::default();
        let (requests, replies): (Vec<_>, Vec<_>) = ["a", "b", "c"]
            .into_iter()
            .map(|key| request(key, 1))
            .unzip();
        let counters = run_queued(&store, requests);
        for mut reply in replies {
            assert!(matches!(reply.try_recv(), Ok(Ok(()))));
        }
        let commits = store
            .commits
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        assert_eq!(*commits, vec![vec!["a", "b", "c"]]);
        assert_eq!(
            counters.snapshot(),
            StorageMetrics {
                fsyncs: 1,
                batches: 3,
                ops: 3
            }
        );
    }

    #[test]
    fn a_failing_batch_fails_only_its_own_caller() {
        let store = RecordingStore::default();
        let (requests, replies): (Vec<_>, Vec<_>) = ["a", "poison", "c"]
            .into_iter()
            .map(|key| request(key, 1))
            .unzip();
        let counters = run_queued(&store, requests);
        let results: Vec<bool> = replies
            .into_iter()
            .map(|mut reply| matches!(reply.try_recv(), Ok(Ok(()))))
            .collect();
        assert_eq!(results, [true, false, true]);
        let commits = store
            .commits
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        assert_eq!(*commits, vec![vec!["a"], vec!["c"]]);
        assert_eq!(counters.snapshot().batches, 2);
    }

    #[test]
    fn group_bytes_are_bounded() {
        let store = RecordingStore::default();
        let third = MAX_GROUP_BYTES / 3;
        let (requests, _replies): (Vec<_>, Vec<_>) = ["a", "b", "c", "d"]
            .into_iter()
            .map(|key| request(key, third))
            .unzip();
        run_queued(&store, requests);
        let commits = store
            .commits
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Three values plus their keys cross the bound, so each group holds two.
        assert_eq!(*commits, vec![vec!["a", "b"], vec!["c", "d"]]);
    }

    #[test]
    fn group_batch_count_is_bounded() {
        let store = RecordingStore::default();
        let keys: Vec<String> = (0..MAX_GROUP_BATCHES + 5)
            .map(|i| format!("k{i}"))
            .collect();
        let (requests, _replies): (Vec<_>, Vec<_>) = keys.iter().map(|key| request(key, 0)).unzip();
        run_queued(&store, requests);
        let commits = store
            .commits
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let group_sizes: Vec<usize> = commits.iter().map(Vec::len).collect();
        assert_eq!(group_sizes, [MAX_GROUP_BATCHES, 5]);
    }
}
