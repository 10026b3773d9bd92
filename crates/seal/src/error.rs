use thiserror::Error;

/// Errors of the seal layer.
///
/// `AlreadyInitialized`, `NotInitialized`, `InvalidConfig`, `InvalidKey` and `BadInput` are
/// caused by the caller; `Corrupt`, `Internal`, `Barrier` and `Storage` are server-side.
#[derive(Debug, Error)]
pub enum SealError {
    #[error("Vault is already initialized")]
    AlreadyInitialized,
    #[error("Vault is not initialized")]
    NotInitialized,
    #[error("invalid seal configuration: {0}")]
    InvalidConfig(String),
    #[error("invalid key share: {0}")]
    InvalidKey(String),
    #[error("{0}")]
    BadInput(String),
    /// The stored seal configuration could not be read back.
    #[error("stored seal configuration is corrupt: {0}")]
    Corrupt(String),
    /// A primitive failed (system RNG, secret sharing library, encoder); not caused by input.
    #[error("seal internal failure while {0}")]
    Internal(String),
    #[error(transparent)]
    Barrier(#[from] bunker_barrier::BarrierError),
    #[error(transparent)]
    Storage(#[from] bunker_storage::StorageError),
}
