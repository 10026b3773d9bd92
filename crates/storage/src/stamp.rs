//! What a commit hook stamped on the batches one request wrote (replication's WAL index of
//! each batch's entry), handed back to the request that wrote them.
//!
//! A task-local, so no signature between the HTTP handler and the backend changes: the handler
//! runs the request inside [`collect`], and every batch committed from that task notes its
//! stamp when its commit is durable. Writes made on other tasks are not counted (a request's
//! answer does not wait for them either). Why: a DR primary answers each write with the WAL
//! index a secondary must reach to hold it (`X-Bunker-Wal-Index`); the last index at
//! acknowledgement time overstates it by whatever other writers committed meanwhile.

use std::cell::Cell;
use std::future::Future;

tokio::task_local! {
    static STAMP: Cell<Option<u64>>;
}

/// Runs `request`, and returns with its output the highest stamp of the batches it committed
/// (`None` if it committed none that a hook stamped).
pub async fn collect<F: Future>(request: F) -> (F::Output, Option<u64>) {
    STAMP
        .scope(Cell::new(None), async {
            let output = request.await;
            (output, STAMP.with(Cell::get))
        })
        .await
}

/// A batch of the current task committed durably with `stamp`.
pub(crate) fn note(stamp: Option<u64>) {
    if let Some(stamp) = stamp {
        // Outside `collect` there is nobody to tell.
        let _ = STAMP.try_with(|cell| cell.set(Some(cell.get().map_or(stamp, |s| s.max(stamp)))));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_highest_stamp_of_the_request_is_returned() {
        let ((), stamp) = collect(async {
            note(Some(7));
            note(None);
            note(Some(3));
        })
        .await;
        assert_eq!(stamp, Some(7));
        let ((), none) = collect(async {}).await;
        assert_eq!(none, None);
        // Outside a request, noting does nothing (and does not panic).
        note(Some(1));
    }

    #[tokio::test]
    async fn a_spawned_task_does_not_stamp_the_request() {
        let ((), stamp) = collect(async {
            tokio::spawn(async { note(Some(9)) }).await.unwrap_or(());
        })
        .await;
        assert_eq!(stamp, None);
    }
}
