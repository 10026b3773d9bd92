//! Errors of the physical storage layer.
//!
//! `InvalidKey`, `ValueTooLarge` and `BatchTooLarge` are caused by the caller's input and leave
//! storage untouched; `Io`, `Engine`, `Closed` and `Unavailable` are failures of the backend
//! itself (`Unavailable`: a remote store that may come back).

use thiserror::Error;

#[derive(Debug, Error)]
pub enum StorageError {
    #[error("storage I/O failed while {context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("storage engine failed while {context}: {message}")]
    Engine { context: String, message: String },
    #[error("invalid storage key {key:?}: {reason}")]
    InvalidKey { key: String, reason: &'static str },
    #[error("storage value for key {key:?} too large: {bytes} bytes, limit {limit}")]
    ValueTooLarge {
        key: String,
        bytes: usize,
        limit: usize,
    },
    #[error("storage batch too large: {ops} operations, limit {limit}")]
    BatchTooLarge { ops: usize, limit: usize },
    #[error("storage backend is shut down")]
    Closed,
    /// The storage service cannot be reached now (a database down or restarting); the
    /// request may be retried, nothing unacknowledged was written.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// A configuration value the backend cannot use.
    #[error("storage configuration: {0}")]
    InvalidArgument(String),
}
