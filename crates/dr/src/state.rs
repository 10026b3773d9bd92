//! Replication state persisted locally at `repl/state` (never replicated).
//!
//! It is stored as JSON on the physical backend, not behind the barrier: a DR secondary must be
//! able to follow its primary while sealed, and its barrier keyring is replaced by the
//! primary's during sync. What in it is secret is protected as follows:
//!
//! - **A primary's private keys** (the replication CA key, which signs secondaries'
//!   certificates, and the cluster port's server key) are written only encrypted by the
//!   barrier ([`PrimaryState::sealed_keys`], AAD [`PRIMARY_KEYS_AAD`]): a copy of the data
//!   directory does not yield them, and a sealed primary does not serve the cluster port. The
//!   plaintext fields are never serialized; states written before this change are still read
//!   and re-sealed at the next unseal.
//! - **A secondary's client key** stays in the file (mode 0600 in a 0700 directory). Design
//!   reason: a warm standby replicates while sealed and reconnects unattended after a restart,
//!   so its credential must open without an operator; and it grants no more than the data file
//!   beside it already holds, the barrier ciphertext (it lets its holder receive that
//!   ciphertext, not read it). Its key is generated on the secondary at the first connection
//!   (certificate renewal), so after activation it has never left the machine.
//! - **DR operation tokens** are stored as SHA-256 hashes of 24 random bytes, never the tokens.

use std::collections::BTreeMap;

use base64::Engine as _;
use bunker_storage::Backend;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::tls::CertPair;
use crate::ReplError;

pub const STATE_KEY: &str = "repl/state";
/// Barrier AAD of [`PrimaryState::sealed_keys`]: the blob opens only as what it is.
pub const PRIMARY_KEYS_AAD: &str = "repl/state/primary-keys";

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
    /// The certificate this secondary held before its last renewal, still admitted until it
    /// connects with the new one (the renewal's answer may have been lost on the way).
    #[serde(default)]
    pub previous_cert_sha256: Option<String>,
}

impl SecondaryRecord {
    /// Whether the certificate with fingerprint `sha256` (hex) identifies this secondary.
    pub fn admits(&self, sha256: &str) -> bool {
        !self.revoked
            && (self.cert_sha256 == sha256 || self.previous_cert_sha256.as_deref() == Some(sha256))
    }
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
    /// The CA private key, PEM: in memory only once the barrier is open (empty before).
    /// Never serialized; read when present for states written before keys were sealed.
    #[serde(default, skip_serializing, with = "crate::tls::zeroizing_string")]
    pub ca_key_pem: Zeroizing<String>,
    /// The server certificate; its key is in memory only, like `ca_key_pem`.
    #[serde(serialize_with = "certificate_only")]
    pub server: CertPair,
    /// `ca_key_pem` and the server key, encrypted by the barrier (base64). `None` while the
    /// keys in memory have not been sealed yet: whoever replaces the keys resets it, and
    /// persisting seals them again.
    #[serde(default)]
    pub sealed_keys: Option<String>,
    pub primary_cluster_addr: String,
    pub secondaries: BTreeMap<String, SecondaryRecord>,
}

impl PrimaryState {
    /// Whether the private keys are in memory (the barrier was open since they were loaded).
    pub fn has_keys(&self) -> bool {
        !self.ca_key_pem.is_empty() && !self.server.key_pem.is_empty()
    }

    /// Encrypt the in-memory keys with `seal` into [`Self::sealed_keys`], unless they already
    /// are. Fails when there are keys to seal and `seal` cannot (a sealed barrier).
    pub fn seal_keys(
        &mut self,
        seal: impl FnOnce(&[u8]) -> Result<Vec<u8>, ReplError>,
    ) -> Result<(), ReplError> {
        if self.sealed_keys.is_some() || !self.has_keys() {
            return Ok(());
        }
        let plain = Zeroizing::new(
            serde_json::to_vec(&KeysBlob {
                ca_key_pem: self.ca_key_pem.to_string(),
                server_key_pem: self.server.key_pem.to_string(),
            })
            .map_err(|e| ReplError::Internal(format!("encoding the primary's keys: {e}")))?,
        );
        let sealed = seal(&plain)?;
        self.sealed_keys = Some(base64::engine::general_purpose::STANDARD.encode(sealed));
        Ok(())
    }

    /// Fill the in-memory keys from [`Self::sealed_keys`] with `open` (the barrier).
    pub fn open_keys(
        &mut self,
        open: impl FnOnce(&[u8]) -> Result<Vec<u8>, ReplError>,
    ) -> Result<(), ReplError> {
        if self.has_keys() {
            return Ok(());
        }
        let Some(sealed) = &self.sealed_keys else {
            return Err(ReplError::Corrupt(
                "the DR primary's keys are missing from the replication state".into(),
            ));
        };
        let sealed = base64::engine::general_purpose::STANDARD
            .decode(sealed)
            .map_err(|e| ReplError::Corrupt(format!("the DR primary's sealed keys: {e}")))?;
        let plain = Zeroizing::new(open(&sealed)?);
        let mut blob: KeysBlob = serde_json::from_slice(&plain)
            .map_err(|e| ReplError::Corrupt(format!("the DR primary's sealed keys: {e}")))?;
        self.ca_key_pem = Zeroizing::new(std::mem::take(&mut blob.ca_key_pem));
        self.server.key_pem = Zeroizing::new(std::mem::take(&mut blob.server_key_pem));
        Ok(())
    }

    /// Drop the in-memory keys (the barrier sealed).
    pub fn forget_keys(&mut self) {
        if self.sealed_keys.is_some() {
            self.ca_key_pem = Zeroizing::new(String::new());
            self.server.key_pem = Zeroizing::new(String::new());
        }
    }
}

#[derive(Serialize, Deserialize, zeroize::ZeroizeOnDrop)]
struct KeysBlob {
    ca_key_pem: String,
    server_key_pem: String,
}

/// Serialize a [`CertPair`] without its key.
fn certificate_only<S: serde::Serializer>(
    pair: &CertPair,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeStruct;
    let mut s = serializer.serialize_struct("CertPair", 2)?;
    s.serialize_field("cert_pem", &pair.cert_pem)?;
    s.serialize_field("key_pem", "")?;
    s.end()
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SecondaryState {
    pub secondary_id: String,
    pub primary_cluster_addr: String,
    pub primary_api_addr: String,
    pub ca_cert_pem: String,
    pub client: CertPair,
    /// The client certificate was renewed with a key generated here; until then it is the
    /// one from the activation token, renewed at the first connection.
    #[serde(default)]
    pub client_renewed: bool,
    /// Every cluster address the primary cluster announced (its HA nodes), newest first; the
    /// stream tries them in turn, so a change of active node needs no `update-primary`.
    #[serde(default)]
    pub known_primary_cluster_addrs: Vec<String>,
}

/// Most primary cluster addresses a secondary remembers.
pub const MAX_KNOWN_PRIMARY_ADDRS: usize = 16;

impl SecondaryState {
    /// The addresses to try, in order: the configured one first, then the announced ones.
    pub fn primary_addrs(&self) -> Vec<String> {
        let mut addrs = vec![self.primary_cluster_addr.clone()];
        for a in &self.known_primary_cluster_addrs {
            if !addrs.contains(a) {
                addrs.push(a.clone());
            }
        }
        addrs.retain(|a| !a.is_empty());
        addrs
    }
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn primary() -> PrimaryState {
        PrimaryState {
            ca_cert_pem: "ca-cert".into(),
            ca_key_pem: Zeroizing::new("ca-secret".into()),
            server: CertPair {
                cert_pem: "server-cert".into(),
                key_pem: Zeroizing::new("server-secret".into()),
            },
            sealed_keys: None,
            primary_cluster_addr: "127.0.0.1:8201".into(),
            secondaries: BTreeMap::new(),
        }
    }

    /// A stand-in for the barrier: XOR with a byte, so a test can see what was sealed.
    fn xor(bytes: &[u8]) -> Result<Vec<u8>, ReplError> {
        Ok(bytes.iter().map(|b| b ^ 0x5a).collect())
    }

    #[test]
    fn the_serialized_state_never_holds_a_private_key() {
        let mut p = primary();
        p.seal_keys(xor).unwrap();
        let state = ReplState {
            mode: Mode::Primary,
            primary: Some(p),
            ..Default::default()
        };
        let json = String::from_utf8(serde_json::to_vec(&state).unwrap()).unwrap();
        assert!(!json.contains("secret"), "{json}");
        assert!(json.contains("server-cert") && json.contains("ca-cert"));

        // Read back: certificates, no keys, until opened with the same barrier.
        let mut back: ReplState = serde_json::from_str(&json).unwrap();
        let p = back.primary.as_mut().unwrap();
        assert!(!p.has_keys());
        p.open_keys(xor).unwrap();
        assert_eq!(&*p.ca_key_pem, "ca-secret");
        assert_eq!(&*p.server.key_pem, "server-secret");
        p.forget_keys();
        assert!(!p.has_keys());
    }

    #[test]
    fn sealing_needs_an_open_barrier_and_happens_once() {
        let mut p = primary();
        let sealed = |_: &[u8]| Err(ReplError::Unavailable("sealed".into()));
        assert!(p.seal_keys(sealed).is_err());
        assert!(p.sealed_keys.is_none());
        p.seal_keys(xor).unwrap();
        let first = p.sealed_keys.clone();
        // Already sealed: no barrier call at all.
        p.seal_keys(|_| unreachable!("sealed twice")).unwrap();
        assert_eq!(p.sealed_keys, first);
    }

    #[test]
    fn a_state_written_before_keys_were_sealed_still_loads_them() {
        let legacy = r#"{"mode":"primary","cluster_id":"c","generation":1,
            "primary":{"ca_cert_pem":"ca-cert","ca_key_pem":"ca-secret",
              "server":{"cert_pem":"server-cert","key_pem":"server-secret"},
              "primary_cluster_addr":"a","secondaries":{}},
            "secondary":null,"synced_generation":null}"#;
        let state: ReplState = serde_json::from_str(legacy).unwrap();
        let p = state.primary.unwrap();
        assert!(p.has_keys());
        assert!(p.sealed_keys.is_none(), "to be sealed at the next unseal");
    }

    #[test]
    fn keys_without_a_sealed_copy_are_not_forgotten() {
        let mut p = primary();
        p.forget_keys();
        assert!(p.has_keys(), "nothing could bring them back");
    }
}
