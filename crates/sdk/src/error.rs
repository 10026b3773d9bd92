use thiserror::Error;

/// Errors a request can end in. The HTTP layer alone maps these to status codes.
#[derive(Debug, Error)]
pub enum LogicalError {
    /// The client sent something invalid (400).
    #[error("{0}")]
    InvalidRequest(String),
    /// Several validation messages at once (400).
    #[error("{}", .0.join("; "))]
    InvalidRequestMulti(Vec<String>),
    /// Missing or invalid token, or the ACL denies (403).
    #[error("permission denied")]
    PermissionDenied,
    /// Refused with a message for the client (403), e.g. Vault's "bad token".
    #[error("{0}")]
    Forbidden(String),
    /// No mount or no route handles this path (404).
    #[error("no handler for route {0:?}. route entry not found.")]
    UnsupportedPath(String),
    /// The path exists but not with this operation (405).
    #[error("unsupported operation")]
    UnsupportedOperation,
    /// A read of something that does not exist with a message for the client (404).
    #[error("{0}")]
    NotFound(String),
    /// The barrier is sealed (503).
    #[error("Vault is sealed")]
    Sealed,
    /// The server is not initialized (400 for most paths, as Vault).
    #[error("Vault is not initialized")]
    NotInitialized,
    /// A DR secondary refuses client requests (400).
    #[error("path disabled in replication DR secondary mode")]
    DrSecondary,
    /// The operation cannot proceed now, e.g. replication catching up (503).
    #[error("{0}")]
    Unavailable(String),
    /// The request conflicts with current state, e.g. a check-and-set mismatch (400 in Vault).
    #[error("{0}")]
    Conflict(String),
    /// Writing the audit log failed, so the request is refused (500).
    #[error("failed to write audit log: {0}")]
    AuditFailed(String),
    /// An HA standby does not serve this request: the client goes to the active node (307 to
    /// its API address), or gets 503 when no node is active.
    #[error("local node not active but active cluster node not found")]
    Standby(Option<String>),
    /// A fault inside the server (500); the message is safe to show.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<bunker_barrier::BarrierError> for LogicalError {
    fn from(e: bunker_barrier::BarrierError) -> Self {
        match e {
            bunker_barrier::BarrierError::Sealed => LogicalError::Sealed,
            bunker_barrier::BarrierError::Storage(e) => e.into(),
            other => LogicalError::Internal(other.to_string()),
        }
    }
}

impl From<bunker_storage::StorageError> for LogicalError {
    fn from(e: bunker_storage::StorageError) -> Self {
        match e {
            // A database that is down or restarting: 503, the client may retry.
            e @ bunker_storage::StorageError::Unavailable(_) => {
                LogicalError::Unavailable(e.to_string())
            }
            e => LogicalError::Internal(e.to_string()),
        }
    }
}

impl From<serde_json::Error> for LogicalError {
    fn from(e: serde_json::Error) -> Self {
        LogicalError::Internal(format!("encoding stored entry: {e}"))
    }
}
