//! DR replication: the write-ahead log, the Merkle index, the mTLS cluster transport and the
//! DR state machine. Sits beside the barrier and sees only ciphertext.
//!
//! Layout: [`wal`] records every replicated write in the same atomic batch as the data;
//! [`merkle`] hashes the replicated keyspace for reconciliation; [`tls`] and [`frame`] are the
//! cluster transport; [`messages`] the protocol; [`primary`] and [`secondary`] the two ends of
//! a stream; [`manager`] the `sys/replication/*` endpoints and the mode changes.

pub mod activation;
pub mod control;
pub mod frame;
pub mod manager;
pub mod merkle;
pub mod messages;
mod primary;
pub mod sealed_activation;
mod secondary;
pub mod state;
mod status;
pub mod tls;
pub mod wal;

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

impl From<ReplError> for bunker_core::logical::LogicalError {
    fn from(e: ReplError) -> Self {
        use bunker_core::logical::LogicalError as L;
        match e {
            ReplError::BadRequest(m) => L::InvalidRequest(m),
            ReplError::Unavailable(m) => L::Unavailable(m),
            other => L::Internal(other.to_string()),
        }
    }
}
