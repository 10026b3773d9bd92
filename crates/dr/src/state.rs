//! Replication state persisted locally at `repl/state` (never replicated).
//!
//! It is stored as plaintext JSON on the physical backend, not behind the barrier: a DR
//! secondary must be able to follow its primary while sealed, and its barrier keyring is
//! replaced by the primary's during sync. It holds TLS keys for the cluster port, which get the
//! same protection as a listener's `tls_key_file`: file permissions of the data directory.

use std::collections::BTreeMap;

use bunker_storage::Backend;
use serde::{Deserialize, Serialize};

use crate::tls::CertPair;
use crate::ReplError;

pub const STATE_KEY: &str = "repl/state";

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Disabled,
    Primary,
    Secondary,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SecondaryRecord {
    pub id: String,
    pub revoked: bool,
    pub issued_unix: u64,
    /// SHA-256 (hex) of the client certificate issued with this secondary's activation token:
    /// only that certificate identifies it, so a new token for the same id does not re-admit
    /// an old certificate.
    #[serde(default)]
    pub cert_sha256: String,
}

/// A DR operation token generated on this secondary by the key-share ceremony.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperationToken {
    /// SHA-256 (hex) of the token; the token itself is never stored.
    pub hash: String,
    pub expires_unix: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PrimaryState {
    pub ca_cert_pem: String,
    pub ca_key_pem: String,
    pub server: CertPair,
    pub primary_cluster_addr: String,
    pub secondaries: BTreeMap<String, SecondaryRecord>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SecondaryState {
    pub secondary_id: String,
    pub primary_cluster_addr: String,
    pub primary_api_addr: String,
    pub ca_cert_pem: String,
    pub client: CertPair,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ReplState {
    pub mode: Mode,
    pub cluster_id: String,
    /// Increases at every promotion; a secondary refuses primaries of an older generation.
    pub generation: u64,
    pub primary: Option<PrimaryState>,
    /// `None` on a secondary with no primary configured (after demote): state `idle`.
    pub secondary: Option<SecondaryState>,
    /// Position after the last completed sync (secondary side).
    pub synced_generation: Option<u64>,
    /// A secondary's local state is a consistent prefix of the primary's once it has applied
    /// the WAL through this index. `None` while that is unknown: a Merkle or snapshot sync has
    /// written values read from the primary's *current* store (possibly ahead of the WAL index
    /// the secondary replays from), and the first stream frame after it has not yet said how far
    /// the primary was. Promotion without `force` refuses a secondary in that state.
    #[serde(default)]
    pub consistent_after: Option<u64>,
    /// The live DR operation tokens generated on this secondary; they die with its mode.
    #[serde(default)]
    pub operation_tokens: Vec<OperationToken>,
}

impl ReplState {
    pub async fn load(backend: &dyn Backend) -> Result<ReplState, ReplError> {
        match backend.get(STATE_KEY).await? {
            None => Ok(ReplState::default()),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| ReplError::Corrupt(format!("replication state: {e}"))),
        }
    }

    pub async fn save(&self, backend: &dyn Backend) -> Result<(), ReplError> {
        let bytes = serde_json::to_vec(self)
            .map_err(|e| ReplError::Internal(format!("encoding replication state: {e}")))?;
        backend.put(STATE_KEY, bytes).await?;
        Ok(())
    }
}
