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
use std::pin::Pin;
use std::task::{ready, Context, Poll};

tokio::task_local! {
    static STAMP: Cell<Option<u64>>;
}

/// Runs `request`, and returns with its output the highest stamp of the batches it committed
/// (`None` if it committed none that a hook stamped).
///
/// A plain wrapper rather than an `async` block around `request.await`: the block would hold
/// `request` twice (as captured, and as awaited), and request futures are large (a request's
/// whole path through the core, 15 KiB); an `async fn` around that tripled it, and every
/// request's future is moved a few times before it first runs.
pub fn collect<F: Future>(request: F) -> impl Future<Output = (F::Output, Option<u64>)> {
    STAMP.scope(Cell::new(None), Stamped { request })
}

pin_project_lite::pin_project! {
    /// `request`, then the stamp it left, read inside the scope.
    struct Stamped<F> {
        #[pin]
        request: F,
    }
}

impl<F: Future> Future for Stamped<F> {
    type Output = (F::Output, Option<u64>);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let output = ready!(self.project().request.poll(cx));
        Poll::Ready((output, STAMP.with(Cell::get)))
    }
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
