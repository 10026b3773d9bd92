//! The replication streams' own thread: a current-thread tokio runtime that runs the cluster
//! port's listener, the primary's sessions and the secondary's follower, and nothing else.
//! Each incoming connection's TLS handshake is computed on the request runtime, so the costly
//! work done for a peer not yet authenticated does not hold the streams (accepting and the
//! sockets' readiness still come from this thread's reactor); a connection whose client
//! certificate was accepted then has its DR session spawned here (`primary::run_listener`).
//!
//! Why: on the request runtime a stream's tasks queued behind the client requests of every
//! connection. At half the primary's capacity the primary's next frame went out ~0.45 ms
//! after its commit and the acknowledgement waited as long again on its way back; on a thread
//! of their own, which uses little CPU, the OS scheduler runs them as soon as they wake
//! (bench/README.md, "The replication streams on a thread of their own").
//!
//! One per process (a server is one process); started by [`crate::DrManager::start`], so a
//! failure to create it is a start-up error. The request runtime's handle is kept beside it:
//! handshakes and a standby's forwarded requests arrive on the cluster port but run with the
//! API's requests.
//!
//! Batches written on this thread (the secondary's applies) may be committed on it when the
//! embedded store's writer is idle (`bunker_storage::commit_inline_on_this_thread`), which
//! saves the two hand-offs to the writer thread and back (bench/README.md, "The follower
//! commits on its own thread").

use std::sync::Mutex;

use tokio::runtime::Handle;

use crate::ReplError;

/// The handles of both runtimes.
pub(crate) struct Runtimes {
    /// Where the streams run.
    pub streams: Handle,
    /// Where requests run (the runtime that started the manager).
    pub requests: Handle,
}

impl Runtimes {
    /// The streams' thread (started on first use), and the caller's runtime for requests.
    /// Must be called from within a tokio runtime.
    pub(crate) fn start() -> Result<Self, ReplError> {
        static STREAMS: Mutex<Option<Handle>> = Mutex::new(None);
        let mut streams = STREAMS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let handle = match &*streams {
            Some(handle) => handle.clone(),
            None => streams.insert(spawn_thread()?).clone(),
        };
        Ok(Self {
            streams: handle,
            requests: Handle::current(),
        })
    }
}

/// The replication thread's name.
const THREAD_NAME: &str = "bunker-replication";

/// The replication thread's nice value (the process keeps its own, usually 0). On a busy
/// machine a thread that wakes for each commit and each acknowledgement waits for a core; a
/// higher priority lets it run first. It uses little CPU while it streams (a frame, an
/// acknowledgement), so the requests lose little; during a full sync it takes more of a core
/// than they do. Measured: bench/README.md, "The replication thread's priority".
const STREAMS_NICE: i32 = -10;

/// Gives the calling thread [`STREAMS_NICE`], if the process may (root, `CAP_SYS_NICE`, or a
/// `RLIMIT_NICE` that allows it, e.g. systemd's `LimitNICE=`); otherwise says so once and
/// runs at the process's priority.
fn raise_priority() {
    let this_thread = rustix::thread::gettid();
    if let Err(error) = rustix::process::setpriority_process(Some(this_thread), STREAMS_NICE) {
        tracing::info!(
            %error,
            nice = STREAMS_NICE,
            "the replication thread keeps the process's priority (raising it needs CAP_SYS_NICE \
             or LimitNICE=; docs/replication.md, \"Threads\")"
        );
    }
}

/// Whether the caller runs on the replication thread (placement checks in debug builds, which
/// every DR test then exercises).
pub(crate) fn on_streams_thread() -> bool {
    std::thread::current().name() == Some(THREAD_NAME)
}

fn spawn_thread() -> Result<Handle, ReplError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ReplError::Internal(format!("creating the replication runtime: {e}")))?;
    let handle = runtime.handle().clone();
    std::thread::Builder::new()
        .name(THREAD_NAME.into())
        .spawn(move || {
            raise_priority();
            // The follower's applies commit here when the storage writer is idle: blocking
            // this thread holds only the streams, whose frames wait in their sockets.
            bunker_storage::commit_inline_on_this_thread();
            runtime.block_on(std::future::pending::<()>())
        })
        .map_err(|e| ReplError::Internal(format!("starting the replication thread: {e}")))?;
    Ok(handle)
}

#[cfg(test)]
mod tests {
    use super::Runtimes;

    #[tokio::test]
    async fn streams_run_on_their_own_thread_and_requests_where_they_were() {
        let rt = Runtimes::start().unwrap();
        let caller = std::thread::current().id();
        let on_streams = rt
            .streams
            .spawn(async { std::thread::current().name().map(str::to_owned) })
            .await
            .unwrap();
        assert_eq!(on_streams.as_deref(), Some("bunker-replication"));
        let on_requests = rt
            .requests
            .spawn(async { std::thread::current().id() })
            .await
            .unwrap();
        assert_eq!(
            on_requests, caller,
            "a current-thread test runtime runs here"
        );
        // One thread per process, however many managers start.
        let thread_of = |rt: &Runtimes| rt.streams.spawn(async { std::thread::current().id() });
        let again = Runtimes::start().unwrap();
        assert_eq!(
            thread_of(&again).await.unwrap(),
            thread_of(&rt).await.unwrap()
        );
    }

    #[tokio::test]
    async fn the_streams_thread_runs_at_a_higher_priority_when_allowed() {
        let rt = Runtimes::start().unwrap();
        let nice_of_this_thread =
            || rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap();
        let on_streams = rt.streams.spawn(async move { nice_of_this_thread() });
        let on_streams = on_streams.await.unwrap();
        let here = nice_of_this_thread();
        // Whether this process may raise a thread's priority (root alone is not enough in a
        // container without CAP_SYS_NICE): try on a thread of its own.
        let allowed = std::thread::spawn(|| {
            rustix::process::setpriority_process(
                Some(rustix::thread::gettid()),
                super::STREAMS_NICE,
            )
            .is_ok()
        })
        .join()
        .unwrap();
        // Without the privilege it keeps the process's priority.
        let expected = if allowed { super::STREAMS_NICE } else { here };
        assert_eq!(on_streams, expected);
        let main_thread = rustix::process::getpriority_process(Some(rustix::process::getpid()));
        assert_eq!(
            Ok(here),
            main_thread,
            "the rest of the process keeps its priority"
        );
    }
}
