use thiserror::Error;

/// Errors of the barrier layer.
///
/// `Sealed`, `InvalidRootKey`, `ReservedPath`, `NotInitialized` and `AlreadyInitialized` are
/// caused by the caller; `Corrupt`, `Internal` and `Storage` are server-side failures.
#[derive(Debug, Error)]
pub enum BarrierError {
    #[error("Vault is sealed")]
    Sealed,
    #[error("barrier is not initialized")]
    NotInitialized,
    #[error("barrier is already initialized")]
    AlreadyInitialized,
    #[error("root key is invalid")]
    InvalidRootKey,
    #[error("stored value at {key:?} is corrupt: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("path {0:?} is reserved for the barrier")]
    ReservedPath(String),
    /// A cryptographic primitive or encoder failed (e.g. the system RNG); not caused by input.
    #[error("barrier internal failure while {0}")]
    Internal(String),
    #[error(transparent)]
    Storage(#[from] bunker_storage::StorageError),
}

impl BarrierError {
    pub(crate) fn corrupt(key: &str, reason: impl Into<String>) -> Self {
        BarrierError::Corrupt {
            key: key.to_owned(),
            reason: reason.into(),
        }
    }
}
