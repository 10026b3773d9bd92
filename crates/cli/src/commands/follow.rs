//! Progress of a request that takes long (a restore, a reindex): while it runs, a second thread
//! reads a status endpoint every half second and shows one line on stderr, rewritten in place
//! on a terminal, a new line whenever it changes otherwise (logs, CI). stdout keeps only the
//! command's result.

use std::io::{IsTerminal as _, Write as _};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use serde_json::Value;

use crate::client::{ApiRequest, Client, Verb};

const POLL: Duration = Duration::from_millis(500);

/// What to read and how to show it.
pub(crate) struct Follow {
    /// The status endpoint (an API path, read with GET).
    pub(crate) status_path: &'static str,
    /// A line for a status (its `data`), `None` when there is nothing to show (yet).
    pub(crate) line: fn(&Value) -> Option<String>,
    /// Showing begins once this is set (a restore: once its upload is over).
    pub(crate) begun: Arc<AtomicBool>,
}

/// How long the command waits, once `work` returned, for a status read still in flight.
const LAST_READ: Duration = Duration::from_secs(1);

/// Runs `work` while `follow` shows progress; returns what `work` returned. A status that
/// cannot be read (a sealed or busy server, no permission) shows nothing: the progress is a
/// courtesy, the answer of `work` is what counts, and a slow status read never holds it up.
pub(crate) fn while_running<T>(client: Client, follow: Follow, work: impl FnOnce() -> T) -> T {
    let terminal = std::io::stderr().is_terminal();
    let (stop, stopped) = mpsc::channel::<()>();
    let (ended, poller_ended) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        let mut shown = String::new();
        // Waiting on the channel is the poll interval, and ends it at once when stopped.
        while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(POLL) {
            if !follow.begun.load(Ordering::Acquire) {
                continue;
            }
            let Some(line) = read_status(&client, follow.status_path)
                .as_ref()
                .and_then(follow.line)
            else {
                continue;
            };
            let mut err = std::io::stderr();
            if terminal {
                let _ = write!(err, "\r\x1b[2K{line}");
            } else if line != shown {
                let _ = writeln!(err, "{line}");
            }
            shown = line;
        }
        if terminal && !shown.is_empty() {
            let _ = writeln!(std::io::stderr());
        }
        drop(ended);
    });
    let result = work();
    drop(stop);
    // The thread ends at once unless a status read is in flight; then it is left behind.
    let _ = poller_ended.recv_timeout(LAST_READ);
    result
}

fn read_status(client: &Client, path: &str) -> Option<Value> {
    let body = client
        .send(ApiRequest::new(Verb::Get, path).without_wrapping())
        .ok()?
        .body?;
    match body.get("data") {
        Some(data) if data.is_object() => Some(data.clone()),
        _ => Some(body),
    }
}
