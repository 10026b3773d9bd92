//! The cell reconciliation protocol end to end, both halves over an in-memory stream: a
//! secondary that diverged every way (changed, missing and extra keys) ends up with exactly the
//! primary's replicated keyspace, in one chunk or in many, and local keys stay where they are.

use std::collections::BTreeMap;
use std::sync::Arc;

use bunker_storage::{Backend, InmemBackend, Op};

use super::*;
use crate::frame::read_frame;
use crate::merkle::{cell_sums, compute, ReplicatedPages};
use crate::primary::reconcile::Reconciler;

const KEYS: usize = 3000;

fn put(key: String, value: Vec<u8>) -> Op {
    Op::Put { key, value }
}

async fn backend_with(ops: Vec<Op>) -> Arc<InmemBackend> {
    let backend = Arc::new(InmemBackend::new());
    for chunk in ops.chunks(1000) {
        backend.batch(chunk.to_vec()).await.expect("loading");
    }
    backend
}

async fn replicated(backend: &dyn Backend) -> BTreeMap<String, Vec<u8>> {
    let mut all = BTreeMap::new();
    let mut pages = ReplicatedPages::new(backend);
    while let Some(page) = pages.next_page().await.expect("scanning") {
        all.extend(page);
    }
    all
}

/// The primary's end: answers reconciliation requests from `backend` until the stream ends.
async fn serve(backend: Arc<InmemBackend>, stream: tokio::io::DuplexStream) {
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut reconciler = Reconciler::default();
    while let Ok((msg, _)) = read_frame::<_, ToPrimary>(&mut rd).await {
        let unhandled = reconciler
            .handle(backend.as_ref(), &mut wr, msg)
            .await
            .expect("the primary serves the request");
        assert!(unhandled.is_none(), "unexpected request {unhandled:?}");
    }
}

/// A primary with KEYS keys and a local WAL key; a secondary that has 100 of them changed,
/// lacks 40, holds 50 the primary never had, and has a local key of its own.
async fn diverged_pair() -> (Arc<InmemBackend>, Arc<InmemBackend>) {
    let primary_ops: Vec<Op> = (0..KEYS)
        .map(|i| put(format!("logical/k{i:05}"), i.to_be_bytes().to_vec()))
        .chain([put("repl/wal/00000001".into(), b"primary-local".to_vec())])
        .collect();
    let primary = backend_with(primary_ops).await;
    let mut secondary_ops: Vec<Op> = Vec::new();
    for i in 0..KEYS {
        let key = format!("logical/k{i:05}");
        match i {
            _ if i % 30 == 0 => secondary_ops.push(put(key, b"stale".to_vec())),
            _ if i % 75 == 1 => {} // missing on the secondary
            _ => secondary_ops.push(put(key, i.to_be_bytes().to_vec())),
        }
    }
    for i in 0..50 {
        secondary_ops.push(put(format!("logical/extra{i}"), b"gone".to_vec()));
    }
    secondary_ops.push(put("repl/state".into(), b"secondary-local".to_vec()));
    let secondary = backend_with(secondary_ops).await;
    (primary, secondary)
}

#[tokio::test]
async fn a_diverged_secondary_converges_in_one_chunk_or_many() {
    for chunk_cells in [CHUNK_CELLS, 7, 1] {
        let (primary, secondary) = diverged_pair().await;
        let theirs = compute(primary.as_ref()).await.expect("primary tree");
        let ours = compute(secondary.as_ref()).await.expect("secondary tree");
        let buckets = ours.diff(&theirs);
        assert!(!buckets.is_empty());

        let (near, far) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(serve(primary.clone(), far));
        let (mut rd, mut wr) = tokio::io::split(near);
        let sums = cell_sums(secondary.as_ref()).await.expect("sums");
        let mut sink: &dyn Backend = secondary.as_ref();
        let pushed = reconcile_cells(
            secondary.as_ref(),
            &mut sink,
            &mut rd,
            &mut wr,
            &buckets,
            &sums,
            chunk_cells,
        )
        .await
        .expect("reconciling");
        drop((rd, wr));
        server.await.expect("primary task");

        assert_eq!(
            replicated(secondary.as_ref()).await,
            replicated(primary.as_ref()).await,
            "chunks of {chunk_cells} cells"
        );
        let changed = (0..KEYS).filter(|i| i % 30 == 0).count() as u64;
        let missing = (0..KEYS).filter(|i| i % 75 == 1 && i % 30 != 0).count() as u64;
        assert_eq!(pushed.keys, changed + missing, "only what differs is sent");
        assert_eq!(pushed.deleted, 50);
        assert_eq!(
            secondary.get("repl/state").await.expect("get"),
            Some(b"secondary-local".to_vec()),
            "local keys are not touched"
        );
        assert_eq!(secondary.get("repl/wal/00000001").await.expect("get"), None);
        assert_eq!(
            compute(secondary.as_ref()).await.expect("tree").root,
            theirs.root
        );
    }
}

#[tokio::test]
async fn identical_stores_exchange_nothing() {
    let (primary, _) = diverged_pair().await;
    let copy = backend_with(
        replicated(primary.as_ref())
            .await
            .into_iter()
            .map(|(k, v)| put(k, v))
            .collect(),
    )
    .await;
    let buckets = compute(copy.as_ref())
        .await
        .expect("tree")
        .diff(&compute(primary.as_ref()).await.expect("tree"));
    assert!(buckets.is_empty());
    let (near, _far) = tokio::io::duplex(1024);
    let (mut rd, mut wr) = tokio::io::split(near);
    let mut sink: &dyn Backend = copy.as_ref();
    let pushed = reconcile_cells(
        copy.as_ref(),
        &mut sink,
        &mut rd,
        &mut wr,
        &buckets,
        &merkle::CellSums::new(),
        CHUNK_CELLS,
    )
    .await
    .expect("nothing to do");
    assert_eq!((pushed.keys, pushed.deleted, pushed.bytes), (0, 0, 0));
}

#[tokio::test]
async fn a_primary_refuses_cell_sums_that_repeat_without_end() {
    let (primary, _) = diverged_pair().await;
    let mut reconciler = Reconciler::default();
    let mut sink = tokio::io::sink();
    let page = |last| ToPrimary::CellSums {
        buckets: vec![7; 64],
        sums: vec![1; 64 * crate::merkle::CELLS_PER_BUCKET],
        last,
    };
    let mut refused = None;
    for _ in 0..crate::merkle::BUCKETS {
        if let Err(e) = reconciler
            .handle(primary.as_ref(), &mut sink, page(false))
            .await
        {
            refused = Some(e);
            break;
        }
    }
    let refused = refused.expect("endless repeats are refused");
    assert!(refused.to_string().contains("repeat"), "{refused}");
}

#[tokio::test]
async fn a_primary_refuses_chunks_of_unknown_or_too_many_cells() {
    let (primary, _) = diverged_pair().await;
    let mut sink = tokio::io::sink();
    for cells in [
        vec![crate::merkle::CELLS as u32],
        (0..crate::merkle::CELLS as u32 / 8 + 1).collect(),
    ] {
        let mut reconciler = Reconciler::default();
        let refused = reconciler
            .handle(
                primary.as_ref(),
                &mut sink,
                ToPrimary::ChunkRequest { cells },
            )
            .await;
        assert!(matches!(refused, Err(ReplError::Refused(_))), "{refused:?}");
    }
}

#[test]
fn a_malformed_tree_from_the_primary_is_refused_before_any_comparison() {
    let mut sums = merkle::CellSums::new();
    sums.add_entry("logical/a", b"1");
    sums.add_entry("logical/b", b"2");
    let tree = sums.tree();
    let (wal_index, accepted) = received_tree(ToSecondary::Tree {
        wal_index: 9,
        tree: tree.clone(),
    })
    .expect("a consistent tree");
    assert_eq!((wal_index, &accepted), (9, &tree));

    let mut wrong_root = tree.clone();
    wrong_root.root = [7; 32];
    let mut reordered = tree.clone();
    reordered.buckets.reverse();
    for malformed in [wrong_root, reordered] {
        let refused = received_tree(ToSecondary::Tree {
            wal_index: 9,
            tree: malformed,
        });
        assert!(
            matches!(&refused, Err(ReplError::Refused(reason)) if reason.contains("malformed")),
            "{refused:?}"
        );
    }
    assert!(matches!(
        received_tree(ToSecondary::ChunkDone),
        Err(ReplError::Refused(_))
    ));
}
