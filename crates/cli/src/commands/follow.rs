//! Progress of a request that takes long (a restore, a reindex): while it runs, a second thread
//! reads a status endpoint every half second and shows one line on stderr, rewritten in place
//! on a terminal, a new line whenever it changes otherwise (logs, CI). stdout keeps only the
//! command's result.

use std::io::{IsTerminal as _, Write as _};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

use crate::client::{ApiRequest, Client, Verb};

const POLL: Duration = Duration::from_millis(500);

/// What to read and how to show it.
pub(crate) struct Follow<'a> {
    /// The status endpoint (an API path, read with GET).
    pub(crate) status_path: &'a str,
    /// A line for a status (its `data`), `None` when there is nothing to show (yet).
    pub(crate) line: fn(&Value) -> Option<String>,
    /// Showing begins once this is set (a restore: once its upload is over).
    pub(crate) begun: &'a AtomicBool,
}

/// Runs `work` while `follow` shows progress; returns what `work` returned. A status that
/// cannot be read (a sealed or busy server, no permission) shows nothing: the progress is a
/// courtesy, the answer of `work` is what counts.
pub(crate) fn while_running<T>(client: Client, follow: Follow<'_>, work: impl FnOnce() -> T) -> T {
    let terminal = std::io::stderr().is_terminal();
    let (stop, stopped) = mpsc::channel::<()>();
    std::thread::scope(|scope| {
        let poller = scope.spawn(move || {
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
        });
        let result = work();
        drop(stop);
        let _ = poller.join();
        result
    })
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
