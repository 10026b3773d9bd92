//! DR replication: the control plane and the runtime that feeds it sockets, clocks and storage.
//!
//! May see: the ciphertext-only parts (`bunker-wal`: WAL, Merkle index, cluster TLS, frames,
//! messages), the physical storage, and the core through the few operations DR needs (unseal
//! with a root key, wipe, wrap, reload, verify key shares, check a DR batch token). Unlike
//! `bunker-wal`, this crate handles key material: the root key of a promotion or of an
//! activation bundle encrypted to this cluster.
//!
//! Layout: [`control`] the pure state machine of the DR control plane (who may call what, and
//! every mode change); `manager` the runtime around it and the `sys/replication/*` endpoints;
//! `primary` and `secondary` the two ends of a stream; [`activation`] and
//! [`sealed_activation`] the activation tokens.

pub mod activation;
pub mod control;
pub mod core_port;
/// Test-only pause points, shared with the core (which holds the HA runner at them).
pub use bunker_core::failpoint;
pub mod manager;
mod primary;
mod rpc_metrics;
mod runtime;
pub mod sealed_activation;
mod secondary;
#[cfg(test)]
mod sim;

/// The unit tests (the simulation above all) allocate with the server's allocator: closer to
/// production, and about a fifth of the simulation's time was glibc's malloc and free.
#[cfg(test)]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
pub mod state;
mod status;

pub use bunker_wal::{frame, merkle, messages, tls, wal};

pub use manager::{DrConfig, DrManager};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum ReplError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("replication state is corrupt: {0}")]
    Corrupt(String),
    #[error("replication internal error: {0}")]
    Internal(String),
    #[error("peer refused: {0}")]
    Refused(String),
    #[error(transparent)]
    Storage(#[from] bunker_storage::StorageError),
    #[error(transparent)]
    Wal(#[from] wal::WalError),
    #[error(transparent)]
    Merkle(#[from] merkle::MerkleError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Frame(#[from] frame::FrameError),
}

impl From<ReplError> for bunker_sdk::LogicalError {
    fn from(e: ReplError) -> Self {
        use bunker_sdk::LogicalError as L;
        match e {
            ReplError::BadRequest(m) => L::InvalidRequest(m),
            ReplError::Unavailable(m) => L::Unavailable(m),
            other => L::Internal(other.to_string()),
        }
    }
}
