//! Commit-hook behaviour every backend must show: hook order is commit order, extra ops are
//! atomic with their batch, and hooking does not change any other behaviour.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use super::*;
use crate::limits::MAX_BATCH_OPS;
use crate::{Backend, EmbeddedBackend, HookedBackend, InmemBackend};

const HOOK_PREFIX: &str = "hook/";
/// The key every test batch writes; the hook records its value for each batch.
const SHARED_KEY: &str = "k";

/// Numbers each batch it sees and records `hook/<n>` = the batch's value of [`SHARED_KEY`].
#[derive(Default)]
struct NumberingHook {
    next: Mutex<u64>,
    after_commits: AtomicU64,
}

impl CommitHook for NumberingHook {
    fn extra_ops(&self, ops: &[Op]) -> Vec<Op> {
        let value = ops.iter().find_map(|op| match op {
            Op::Put { key, value } if key == SHARED_KEY => Some(value.clone()),
            _ => None,
        });
        let Some(value) = value else {
            return Vec::new();
        };
        let mut next = self.next.lock().unwrap_or_else(PoisonError::into_inner);
        *next += 1;
        vec![Op::Put {
            key: format!("{HOOK_PREFIX}{:08}", *next),
            value,
        }]
    }

    fn after_commit(&self) {
        self.after_commits.fetch_add(1, Ordering::SeqCst);
    }
}

/// Returns whatever extra ops it was built with.
struct FixedHook(Vec<Op>);

impl CommitHook for FixedHook {
    fn extra_ops(&self, _ops: &[Op]) -> Vec<Op> {
        self.0.clone()
    }

    fn after_commit(&self) {}
}

fn put(key: &str, value: &[u8]) -> Op {
    Op::Put {
        key: key.to_owned(),
        value: value.to_vec(),
    }
}

async fn scan_all(backend: &dyn Backend, prefix: &str) -> Vec<(String, Vec<u8>)> {
    backend
        .scan(prefix, None, usize::MAX)
        .await
        .expect("scanning")
}

/// 64 writers race; the hook's numbering must match the order the batches took effect.
async fn hook_order_is_commit_order(backend: Arc<dyn HookedBackend>) {
    const TASKS: usize = 64;
    const WRITES_PER_TASK: usize = 10;
    let hook = Arc::new(NumberingHook::default());
    backend.set_commit_hook(Some(hook.clone()));

    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let backend = backend.clone();
            tokio::spawn(async move {
                for write in 0..WRITES_PER_TASK {
                    let id = format!("{task:02}-{write:02}");
                    backend
                        .batch(vec![
                            put(SHARED_KEY, id.as_bytes()),
                            put(&format!("data/{id}"), b"x"),
                        ])
                        .await
                        .expect("concurrent batch");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("writer task");
    }

    let records = scan_all(backend.as_ref(), HOOK_PREFIX).await;
    assert_eq!(
        records.len(),
        TASKS * WRITES_PER_TASK,
        "one record per batch"
    );
    let numbers: Vec<String> = records.iter().map(|(key, _)| key.clone()).collect();
    let expected: Vec<String> = (1..=records.len())
        .map(|n| format!("{HOOK_PREFIX}{n:08}"))
        .collect();
    assert_eq!(numbers, expected, "no failed attempts, so no gaps");
    let last_recorded = records.last().map(|(_, value)| value.clone());
    assert_eq!(
        backend.get(SHARED_KEY).await.expect("get"),
        last_recorded,
        "the batch numbered last must be the one committed last"
    );
    let mut ids: Vec<Vec<u8>> = records.into_iter().map(|(_, value)| value).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(
        ids.len(),
        TASKS * WRITES_PER_TASK,
        "each batch recorded once"
    );
    assert!(hook.after_commits.load(Ordering::SeqCst) >= 1);

    // Batches without the shared key get no extra ops and are not recorded.
    backend.put("plain", b"p".to_vec()).await.expect("put");
    assert_eq!(
        scan_all(backend.as_ref(), HOOK_PREFIX).await.len(),
        TASKS * WRITES_PER_TASK
    );

    backend.set_commit_hook(None);
    backend
        .put(SHARED_KEY, b"unhooked".to_vec())
        .await
        .expect("put");
    assert_eq!(
        scan_all(backend.as_ref(), HOOK_PREFIX).await.len(),
        TASKS * WRITES_PER_TASK,
        "a removed hook is no longer called"
    );
}

/// Extra ops are checked like a caller's: an invalid one rejects the whole batch.
async fn invalid_extra_ops_reject_the_batch(backend: &dyn HookedBackend) {
    backend.set_commit_hook(Some(Arc::new(FixedHook(vec![put("", b"bad")]))));
    let result = backend.put("victim", b"v".to_vec()).await;
    assert!(
        matches!(result, Err(StorageError::InvalidKey { .. })),
        "an empty extra key must be rejected, got {result:?}"
    );
    assert_eq!(backend.get("victim").await.expect("get"), None);

    backend.set_commit_hook(Some(Arc::new(FixedHook(vec![put("extra", b"e")]))));
    let full: Vec<Op> = (0..MAX_BATCH_OPS)
        .map(|i| put(&format!("full/{i}"), b""))
        .collect();
    let result = backend.batch(full).await;
    assert!(
        matches!(result, Err(StorageError::BatchTooLarge { .. })),
        "a batch plus its extra ops over the limit must be rejected, got {result:?}"
    );
    assert!(scan_all(backend, "full/").await.is_empty());
    assert_eq!(backend.get("extra").await.expect("get"), None);

    backend.put("victim", b"v".to_vec()).await.expect("put");
    assert_eq!(
        backend.get("extra").await.expect("get"),
        Some(b"e".to_vec()),
        "valid extra ops are committed with the batch"
    );
    backend.set_commit_hook(None);
}

async fn conformance_with_a_hook(backend: &dyn HookedBackend) {
    backend.set_commit_hook(Some(Arc::new(NumberingHook::default())));
    crate::conformance::exercise_backend(backend).await;
    backend.set_commit_hook(None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn inmem_hook_order_is_commit_order() {
    hook_order_is_commit_order(Arc::new(InmemBackend::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_hook_order_is_commit_order() {
    let dir = tempfile::tempdir().expect("temp dir");
    let backend = EmbeddedBackend::open(dir.path()).expect("open");
    hook_order_is_commit_order(Arc::new(backend)).await;
}

#[tokio::test]
async fn inmem_rejects_invalid_extra_ops() {
    invalid_extra_ops_reject_the_batch(&InmemBackend::new()).await;
}

#[tokio::test]
async fn embedded_rejects_invalid_extra_ops() {
    let dir = tempfile::tempdir().expect("temp dir");
    let backend = EmbeddedBackend::open(dir.path()).expect("open");
    invalid_extra_ops_reject_the_batch(&backend).await;
}

#[tokio::test]
async fn inmem_passes_conformance_with_a_hook() {
    conformance_with_a_hook(&InmemBackend::new()).await;
}

#[tokio::test]
async fn embedded_passes_conformance_with_a_hook() {
    let dir = tempfile::tempdir().expect("temp dir");
    let backend = EmbeddedBackend::open(dir.path()).expect("open");
    conformance_with_a_hook(&backend).await;
}

/// An unbounded batch (a restore) that the hook would record is refused whole: a log record
/// of that size could not be streamed, and a half-numbered one would break the log.
async fn unbounded_batches_that_get_extra_ops_are_refused(backend: &dyn HookedBackend) {
    backend.set_commit_hook(Some(Arc::new(FixedHook(vec![put("record", b"r")]))));
    let ops: Vec<Op> = (0..3).map(|i| put(&format!("big/{i}"), b"v")).collect();
    let result = backend.batch_unbounded(ops).await;
    assert!(
        matches!(result, Err(StorageError::InvalidArgument(_))),
        "{result:?}"
    );
    assert!(
        scan_all(backend, "big/").await.is_empty(),
        "nothing applied"
    );
    assert_eq!(backend.get("record").await.expect("get"), None);
    backend.set_commit_hook(None);
    let ops: Vec<Op> = (0..3).map(|i| put(&format!("big/{i}"), b"v")).collect();
    backend
        .batch_unbounded(ops)
        .await
        .expect("without a record");
    assert_eq!(scan_all(backend, "big/").await.len(), 3);
}

#[tokio::test]
async fn inmem_refuses_unbounded_batches_the_hook_would_record() {
    unbounded_batches_that_get_extra_ops_are_refused(&InmemBackend::new()).await;
}

#[tokio::test]
async fn embedded_refuses_unbounded_batches_the_hook_would_record() {
    let dir = tempfile::tempdir().expect("temp dir");
    let backend = EmbeddedBackend::open(dir.path()).expect("open");
    unbounded_batches_that_get_extra_ops_are_refused(&backend).await;
}
