//! Vault's snapshot endpoints, whose bodies are files, not JSON: `GET sys/storage/raft/snapshot`
//! streams the snapshot as `application/octet-stream`; `POST sys/storage/raft/snapshot` and
//! `snapshot-force` take one as the body.
//!
//! The request is authorised (token, sudo, audit) by the core **before** any body byte is
//! read, so only a sudo token holder can make the server read a large body; only on a server
//! that is not initialised is a restore open to anyone, as `sys/init` is. A restore's body has
//! its own bound (`max_snapshot_size`, well above `max_request_size`) and its own read timeout,
//! and one upload is read at a time (a second gets 503): at most one file is in memory.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response as HttpResponse};
use bunker_core::snapshot::{SnapshotAction, SnapshotPermit};
use bunker_core::Core;
use bunker_sdk::{LogicalError, Request};
use hyper::body::Frame;
use tokio::sync::{mpsc, Semaphore};

use crate::{body, status};

/// Frames buffered between the storage read and the client.
const SAVE_CHANNEL_FRAMES: usize = 4;

/// Whether `path` (after `/v1/`) is one of the snapshot endpoints.
pub(crate) fn is_snapshot_path(path: &str) -> bool {
    matches!(
        path.trim_end_matches('/'),
        "sys/storage/raft/snapshot" | "sys/storage/raft/snapshot-force"
    )
    // `snapshot-restore-status` is an ordinary JSON endpoint: it takes the usual path.
}

/// The bounds of a restore upload.
#[derive(Clone)]
pub(crate) struct RestoreLimits {
    pub(crate) max_bytes: usize,
    pub(crate) read_timeout: Duration,
    pub(crate) uploads: Arc<Semaphore>,
}

pub(crate) async fn handle(
    core: Arc<Core>,
    req: Request,
    uri: &Uri,
    headers: &HeaderMap,
    body: Body,
    limits: &RestoreLimits,
) -> HttpResponse {
    let (action, permit) = match core.authorize_snapshot(req).await {
        Ok(authorised) => authorised,
        Err(LogicalError::Standby(Some(leader))) => return crate::standby_redirect(&leader, uri),
        Err(e) => return status::from_error(&e),
    };
    match action {
        SnapshotAction::Save => save(core, permit).await,
        SnapshotAction::Restore { force } => {
            let Ok(upload) = limits.uploads.clone().try_acquire_owned() else {
                return status::from_error(&LogicalError::Unavailable(
                    "a snapshot upload is already in progress".into(),
                ));
            };
            let progress = core.restore_progress();
            // A declared length over the bound is refused below: never recorded as the size.
            let declared = body::content_length(headers)
                .filter(|n| *n <= limits.max_bytes)
                .map(|n| n as u64);
            progress.begin(force, declared);
            // Whatever ends this restore (a client gone mid-upload, a timeout, a panic), its
            // record ends too.
            let unfinished = Unfinished(Arc::clone(&core));
            let read = body::read_body_counted(
                body,
                headers,
                limits.max_bytes,
                limits.read_timeout,
                Some(progress.counter()),
            );
            let file = match read.await {
                Ok(file) => file,
                Err(e) => {
                    progress.finish(Err(match e {
                        body::BodyError::TooLarge => "the upload is over max_snapshot_size",
                        body::BodyError::TimedOut => "the upload timed out",
                        body::BodyError::Broken => "the upload broke off",
                    }
                    .into()));
                    return status::body_error(e);
                }
            };
            // Its own task: a client that hangs up does not cut a restore in the middle (on a
            // DR primary that would end the restore window at an arbitrary point). The upload
            // slot is held until it is over.
            let restore = tokio::spawn(async move {
                let result = core.snapshot_restore(&permit, &file, force).await;
                drop(unfinished);
                drop(upload);
                result
            });
            match restore.await {
                Ok(Ok(())) => StatusCode::NO_CONTENT.into_response(),
                Ok(Err(e)) => status::from_error(&e),
                Err(e) => status::from_error(&LogicalError::Internal(format!(
                    "the snapshot restore stopped: {e}"
                ))),
            }
        }
    }
}

/// Ends the restore record as abandoned when dropped before the restore ended it.
struct Unfinished(Arc<Core>);

impl Drop for Unfinished {
    fn drop(&mut self) {
        self.0.restore_progress().finish(Err(
            "the restore was abandoned (the upload or the server's task stopped)".into(),
        ));
    }
}

/// Streams the snapshot. An error before the first frame is an ordinary error answer; one
/// after it aborts the response, so the client sees a failed transfer, never a short file
/// taken for a whole one.
async fn save(core: Arc<Core>, permit: SnapshotPermit) -> HttpResponse {
    let (frames_tx, mut frames) = mpsc::channel::<Vec<u8>>(SAVE_CHANNEL_FRAMES);
    let (done_tx, done) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let result = core.snapshot_save(&permit, frames_tx).await;
        if let Err(e) = &result {
            tracing::warn!(error = %e, "snapshot save failed");
        }
        let _ = done_tx.send(result);
    });
    let Some(first) = frames.recv().await else {
        let error = match done.await {
            Ok(Err(e)) => e,
            _ => LogicalError::Internal("the snapshot ended before it began".into()),
        };
        return status::from_error(&error);
    };
    let body = SnapshotBody {
        first: Some(first),
        frames,
        done: Some(done),
    };
    (
        [(header::CONTENT_TYPE, "application/octet-stream")],
        Body::new(body),
    )
        .into_response()
}

/// The response body of a save: the frames as they come, then the save's outcome.
struct SnapshotBody {
    first: Option<Vec<u8>>,
    frames: mpsc::Receiver<Vec<u8>>,
    done: Option<tokio::sync::oneshot::Receiver<Result<(), LogicalError>>>,
}

impl hyper::body::Body for SnapshotBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(Bytes::from(first)))));
        }
        match self.frames.poll_recv(cx) {
            Poll::Ready(Some(frame)) => Poll::Ready(Some(Ok(Frame::data(Bytes::from(frame))))),
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                let Some(done) = self.done.as_mut() else {
                    return Poll::Ready(None);
                };
                let outcome = match Pin::new(done).poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(outcome) => outcome,
                };
                self.done = None;
                match outcome {
                    Ok(Ok(())) => Poll::Ready(None),
                    _ => Poll::Ready(Some(Err(std::io::Error::other("snapshot save failed")))),
                }
            }
        }
    }
}
