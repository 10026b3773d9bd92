//! The limits of one API listener, named after Vault's listener settings. They bound what an
//! unauthenticated client can hold: connections, time to send headers and body, idle time.

use std::time::Duration;

/// Vault's default `max_request_size`.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 32 * 1024 * 1024;
/// Vault's default `http_read_header_timeout`.
pub const DEFAULT_READ_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Vault's default `http_read_timeout`.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Vault's default `http_idle_timeout`.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// Default `max_snapshot_size`: the largest snapshot a restore accepts (held in memory).
pub const DEFAULT_MAX_SNAPSHOT_BYTES: usize = 1024 * 1024 * 1024;
/// Time a restore's client has to send the snapshot file.
pub const DEFAULT_SNAPSHOT_READ_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// Default cap on concurrent connections of one listener.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenerLimits {
    /// Largest request body accepted (`max_request_size`).
    pub max_request_bytes: usize,
    /// Time a client has to send a request's headers (`http_read_header_timeout`), counted
    /// from the accept, or on a kept-alive connection from the first byte of the next request.
    /// (A next request already buffered with the previous one, pipelined, is bounded by the
    /// idle timeout instead, like any idle connection.)
    pub read_header_timeout: Duration,
    /// Time a client has to send a request's body once its headers arrived
    /// (`http_read_timeout`).
    pub read_timeout: Duration,
    /// Time allowed from the end of the headers to the response (`http_write_timeout`);
    /// zero means no limit, as in Vault.
    pub write_timeout: Duration,
    /// A connection with no request in flight and no bytes moving for this long is closed
    /// (`http_idle_timeout`).
    pub idle_timeout: Duration,
    /// Connections served at once; a connection over the cap is closed as soon as it is
    /// accepted (`max_connections`).
    pub max_connections: usize,
    /// `telemetry { unauthenticated_metrics_access = true }`: `GET sys/metrics` without a
    /// token on this listener.
    pub unauthenticated_metrics_access: bool,
    /// Largest body of a snapshot restore (`max_snapshot_size`); only that endpoint, only
    /// after its token was checked, one upload at a time.
    pub max_snapshot_bytes: usize,
    /// Time a snapshot restore's client has to send the file.
    pub snapshot_read_timeout: Duration,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        ListenerLimits {
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            read_header_timeout: DEFAULT_READ_HEADER_TIMEOUT,
            read_timeout: DEFAULT_READ_TIMEOUT,
            write_timeout: Duration::ZERO,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            unauthenticated_metrics_access: false,
            max_snapshot_bytes: DEFAULT_MAX_SNAPSHOT_BYTES,
            snapshot_read_timeout: DEFAULT_SNAPSHOT_READ_TIMEOUT,
        }
    }
}
