//! Renewal of the cluster port's certificates.
//!
//! Leaves are short-lived ([`crate::tls::LEAF_VALIDITY_DAYS`]) and renewed at half-life, so a
//! stolen certificate stops working on its own and no identity outlives its secondary by
//! years. The primary renews its server certificate itself. A secondary renews its client
//! certificate over its authenticated session, for a key it generated: the primary signs the
//! public key and records the new fingerprint (keeping the presented one admitted until the
//! secondary connects with the new one, in case the answer was lost). The certificate that
//! came in the activation token is replaced at the first connection, so after activation the
//! secondary's key has never left it.

use std::sync::Arc;

use crate::control::Command;
use crate::tls::{self, ReplicationCa};
use crate::ReplError;

use super::{EffectInputs, Inner};

fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

impl Inner {
    /// Primary: sign `public_key` as secondary `id`'s new certificate and record it. `presented`
    /// is the fingerprint of the certificate the session was authenticated with.
    pub(crate) async fn renew_secondary_certificate(
        self: &Arc<Self>,
        id: &str,
        presented: [u8; 32],
        public_key: &[u8],
    ) -> Result<String, ReplError> {
        let core = self.core_or_shutdown()?;
        let mut state = self.state.lock().await;
        let primary = state
            .primary
            .as_ref()
            .filter(|p| p.has_keys())
            .ok_or_else(|| ReplError::Unavailable("the DR primary's keys are not open".into()))?;
        let ca = ReplicationCa::from_pem(&primary.ca_cert_pem, &primary.ca_key_pem)?;
        let cert_pem = ca.renew_client_cert(id, public_key)?;
        let command = Command::RenewSecondaryCertificate {
            id: id.to_owned(),
            presented: hex::encode(presented),
            renewed: tls::pem_fingerprint_hex(&cert_pem)?,
        };
        self.apply(&mut state, command, core.as_ref(), EffectInputs::default())
            .await
            .map_err(|e| ReplError::Refused(e.to_string()))?;
        tracing::info!(secondary = %id, "renewed a secondary's client certificate");
        Ok(cert_pem)
    }

    /// Primary: renew the server certificate once half of its validity has passed.
    pub(crate) async fn renew_server_certificate_if_due(self: &Arc<Self>) -> Result<(), ReplError> {
        let core = self.core_or_shutdown()?;
        let mut state = self.state.lock().await;
        let Some(primary) = state.primary.as_ref().filter(|p| p.has_keys()) else {
            return Ok(());
        };
        if !tls::renewal_due(tls::validity_unix(&primary.server.cert_pem)?, now_unix()) {
            return Ok(());
        }
        let ca = ReplicationCa::from_pem(&primary.ca_cert_pem, &primary.ca_key_pem)?;
        let server = ca.issue_server_cert()?;
        self.apply(
            &mut state,
            Command::RenewServerCertificate { server },
            core.as_ref(),
            EffectInputs::default(),
        )
        .await
        .map_err(|e| ReplError::Refused(e.to_string()))?;
        tracing::info!("renewed the cluster port's server certificate");
        Ok(())
    }

    /// Secondary: whether this session should renew the client certificate: the one from the
    /// activation token always, a renewed one at half-life.
    pub(crate) fn client_renewal_due(link: &crate::state::SecondaryState) -> bool {
        !link.client_renewed
            || tls::validity_unix(&link.client.cert_pem)
                .map(|v| tls::renewal_due(v, now_unix()))
                .unwrap_or(true)
    }

    /// Secondary: keep the renewed certificate (checked against the key generated for it).
    pub(crate) async fn store_client_certificate(
        self: &Arc<Self>,
        secondary_id: &str,
        client: tls::CertPair,
    ) -> Result<(), ReplError> {
        if !tls::cert_matches_key(&client.cert_pem, &client.key_pem)? {
            return Err(ReplError::Refused(
                "the primary's renewed certificate is not for the key sent".into(),
            ));
        }
        self.apply_reported(Command::RenewClientCertificate {
            secondary_id: secondary_id.to_owned(),
            client,
        })
        .await
    }

    /// When the client certificate in use falls due for renewal (Unix seconds): a session
    /// ends then, and the next one renews it.
    pub(crate) fn client_renewal_time(link: &crate::state::SecondaryState) -> Option<i64> {
        let (not_before, not_after) = tls::validity_unix(&link.client.cert_pem).ok()?;
        Some(not_before.saturating_add(not_after.saturating_sub(not_before) / 2))
    }
}
