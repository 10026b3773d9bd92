//! What the header and idle timeouts need to know about a connection: when bytes last moved,
//! how many requests are being handled on it, and since when it has been waiting for the
//! headers of a request (from the accept, or from the first byte after a response, as Go's
//! `ReadHeaderTimeout` counts).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// `head_since_ms` when no request's headers are awaited.
const NOT_WAITING: u64 = u64::MAX;

pub(crate) struct Activity {
    start: Instant,
    /// Milliseconds after `start` at which bytes last moved.
    last_ms: AtomicU64,
    /// Milliseconds after `start` since when a request's headers are awaited, or
    /// [`NOT_WAITING`].
    head_since_ms: AtomicU64,
    in_flight: AtomicUsize,
}

impl Activity {
    pub(crate) fn new() -> Self {
        Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            head_since_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
        }
    }

    /// Time since the connection was accepted.
    pub(crate) fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(NOT_WAITING - 1)
    }

    fn touch(&self) {
        self.last_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// Bytes arrived: with no request in flight they begin the next request's headers.
    fn touch_read(&self) {
        let now = self.now_ms();
        self.last_ms.store(now, Ordering::Relaxed);
        if self.in_flight() == 0 {
            let _ = self.head_since_ms.compare_exchange(
                NOT_WAITING,
                now,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    /// When bytes last moved, as time since the accept.
    pub(crate) fn last_activity(&self) -> Duration {
        Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }

    /// Since when a request's headers have been awaited, as time since the accept.
    pub(crate) fn awaiting_headers_since(&self) -> Option<Duration> {
        match self.head_since_ms.load(Ordering::Relaxed) {
            NOT_WAITING => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// Counts one request as in flight for as long as it lives.
pub(crate) struct InFlight(Arc<Activity>);

impl InFlight {
    /// A request's headers have been read and it is being handled.
    pub(crate) fn start(activity: Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        activity.head_since_ms.store(NOT_WAITING, Ordering::Relaxed);
        InFlight(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A transport that records activity on every read or write that moves bytes.
pub(crate) struct TrackedIo<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T> TrackedIo<T> {
    pub(crate) fn new(inner: T, activity: Arc<Activity>) -> Self {
        TrackedIo { inner, activity }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for TrackedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.touch_read();
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for TrackedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write(cx, buf);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        result
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_wait_starts_at_accept_and_after_each_response() {
        let a = Arc::new(Activity::new());
        assert_eq!(a.awaiting_headers_since(), Some(Duration::ZERO));
        let g = InFlight::start(a.clone());
        assert_eq!(a.in_flight(), 1);
        assert_eq!(a.awaiting_headers_since(), None);
        // Body bytes of the request in flight do not start a header wait.
        a.touch_read();
        assert_eq!(a.awaiting_headers_since(), None);
        drop(g);
        assert_eq!(a.in_flight(), 0);
        // Idle between requests: no header wait until the next byte arrives.
        assert_eq!(a.awaiting_headers_since(), None);
        a.touch_read();
        assert!(a.awaiting_headers_since().is_some());
        assert!(a.last_activity() <= a.elapsed());
    }
}
