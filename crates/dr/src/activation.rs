//! The activation token a primary mints for a secondary.
//!
//! The bundle (client certificate and key, CA, addresses, cluster id, secondary id) is stored
//! in a single-use response-wrapping token on the primary. What the operator carries is that
//! wrapping token plus the primary's API address, so the secondary knows where to unwrap it —
//! the role Vault's JWT plays. Format: `bdr1.` + base64url(JSON { addr, token }).

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::tls::CertPair;
use crate::ReplError;

const PREFIX: &str = "bdr1.";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ActivationToken {
    /// The primary's API address.
    pub addr: String,
    /// The response-wrapping token holding the bundle.
    pub token: String,
}

impl ActivationToken {
    pub fn encode(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        format!(
            "{PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
        )
    }

    pub fn decode(s: &str) -> Result<Self, ReplError> {
        let bad = || ReplError::BadRequest("invalid activation token".into());
        let body = s.trim().strip_prefix(PREFIX).ok_or_else(bad)?;
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| bad())?;
        serde_json::from_slice(&json).map_err(|_| bad())
    }
}

/// What the wrapped activation token carries. `Debug` never shows key material.
#[derive(Clone, Serialize, Deserialize)]
pub struct Bundle {
    pub cluster_id: String,
    pub secondary_id: String,
    pub generation: u64,
    pub primary_cluster_addr: String,
    pub primary_api_addr: String,
    pub ca_cert_pem: String,
    pub client: CertPair,
    /// The primary's root key (base64), so the secondary opens the replicated keyring and
    /// stays unsealed after activation, as a Vault DR secondary does. After a restart it is
    /// unsealed with the primary's key shares.
    #[serde(default, with = "crate::tls::zeroizing_string")]
    pub root_key_b64: zeroize::Zeroizing<String>,
    /// The cluster addresses of all the primary cluster's nodes (HA), tried in turn.
    #[serde(default)]
    pub primary_cluster_addrs: Vec<String>,
}

impl std::fmt::Debug for Bundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bundle")
            .field("cluster_id", &self.cluster_id)
            .field("secondary_id", &self.secondary_id)
            .field("generation", &self.generation)
            .field("primary_cluster_addr", &self.primary_cluster_addr)
            .finish_non_exhaustive()
    }
}

impl Bundle {
    pub fn root_key(&self) -> Option<zeroize::Zeroizing<Vec<u8>>> {
        use base64::Engine as _;
        if self.root_key_b64.is_empty() {
            return None;
        }
        base64::engine::general_purpose::STANDARD
            .decode(self.root_key_b64.as_bytes())
            .ok()
            .map(zeroize::Zeroizing::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_garbage() {
        let t = ActivationToken {
            addr: "http://127.0.0.1:8200".into(),
            token: "hvs.abc".into(),
        };
        let d = ActivationToken::decode(&t.encode()).expect("decodes");
        assert_eq!(d.addr, t.addr);
        assert_eq!(d.token, t.token);
        assert!(ActivationToken::decode("hvs.abc").is_err());
        assert!(ActivationToken::decode("bdr1.!!!").is_err());
    }
}
