//! The key-share ceremony that ends in a token handed out XOR-encoded with a one-time pad:
//! `sys/generate-root` (a root token) and the DR operation token are the same ceremony with a
//! different strategy for what the token is. The caller runs that strategy when [`submit`]
//! returns the root key, then calls [`finish`] with the token it made.
//!
//! [`submit`]: OtpTokenCeremony::submit
//! [`finish`]: OtpTokenCeremony::finish

use serde_json::{json, Value};
use zeroize::Zeroizing;

use crate::{KeyCeremony, Result, SealError};

/// Length of the tokens these ceremonies make (`hvs.` + 24), which the OTP must match.
pub const OTP_TOKEN_LENGTH: usize = 28;

/// What a caller asks of a ceremony's `attempt` endpoint.
#[derive(Debug)]
pub enum AttemptRequest {
    /// Read: the status, or the idle status when none is in progress.
    Status,
    /// Create/update: start one (refused while one is in progress).
    Start {
        otp: Option<String>,
        pgp_key: Option<String>,
    },
    /// Delete: cancel the one in progress.
    Cancel,
}

/// An in-progress ceremony, or a finished one whose encoded token is still shown.
pub struct OtpTokenCeremony {
    ceremony: KeyCeremony,
    otp: Zeroizing<String>,
    /// Set once complete.
    encoded: String,
}

impl std::fmt::Debug for OtpTokenCeremony {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtpTokenCeremony")
            .field("ceremony", &self.ceremony)
            .field("complete", &!self.encoded.is_empty())
            .finish_non_exhaustive()
    }
}

impl OtpTokenCeremony {
    /// Start a ceremony needing `required` shares, with the caller's OTP (which must be
    /// [`OTP_TOKEN_LENGTH`] long) or a fresh one. PGP-encrypted tokens are not supported.
    /// Returns the ceremony and the OTP to show (empty when the caller gave it).
    pub fn start(
        required: u8,
        otp: Option<String>,
        pgp_key: Option<String>,
    ) -> Result<(OtpTokenCeremony, String)> {
        if pgp_key.is_some_and(|k| !k.is_empty()) {
            return Err(SealError::BadInput(
                "PGP-encrypted tokens are not supported; use an OTP".into(),
            ));
        }
        let (otp, shown) = match otp.filter(|s| !s.is_empty()) {
            Some(otp) if otp.len() == OTP_TOKEN_LENGTH => (otp, String::new()),
            Some(_) => {
                return Err(SealError::BadInput(format!(
                    "OTP string is wrong length; must be {OTP_TOKEN_LENGTH} characters"
                )))
            }
            None => {
                let otp = crate::otp::generate_otp(OTP_TOKEN_LENGTH);
                (otp.clone(), otp)
            }
        };
        let ceremony = OtpTokenCeremony {
            ceremony: KeyCeremony::new(required),
            otp: Zeroizing::new(otp),
            encoded: String::new(),
        };
        Ok((ceremony, shown))
    }

    /// Answer an `attempt` endpoint on the ceremony `slot` of a server: its status body, or
    /// `None` for an empty answer (a cancel). `what` names the ceremony in the "already in
    /// progress" error.
    pub fn attempt(
        slot: &mut Option<OtpTokenCeremony>,
        request: AttemptRequest,
        required: u8,
        what: &str,
    ) -> Result<Option<Value>> {
        match request {
            AttemptRequest::Status => Ok(Some(
                slot.as_ref()
                    .map(|c| c.status(""))
                    .unwrap_or_else(|| Self::idle_status(required)),
            )),
            AttemptRequest::Start { otp, pgp_key } => {
                if slot.is_some() {
                    return Err(SealError::BadInput(format!("{what} already in progress")));
                }
                let (ceremony, shown) = Self::start(required, otp, pgp_key)?;
                let body = ceremony.status(&shown);
                *slot = Some(ceremony);
                Ok(Some(body))
            }
            AttemptRequest::Cancel => {
                *slot = None;
                Ok(None)
            }
        }
    }

    /// The status body (Vault's shape for generate-root and generate-operation-token).
    pub fn status(&self, otp_shown: &str) -> Value {
        json!({
            "started": true,
            "nonce": self.ceremony.nonce(),
            "progress": self.ceremony.progress(),
            "required": self.ceremony.required,
            "complete": !self.encoded.is_empty(),
            "encoded_token": self.encoded,
            "encoded_root_token": self.encoded,
            "pgp_fingerprint": "",
            "otp": otp_shown,
            "otp_length": OTP_TOKEN_LENGTH,
        })
    }

    /// The status body when no ceremony is in progress.
    pub fn idle_status(required: u8) -> Value {
        json!({
            "started": false,
            "nonce": "",
            "progress": 0,
            "required": required,
            "complete": false,
            "encoded_token": "",
            "encoded_root_token": "",
            "pgp_fingerprint": "",
            "otp": "",
            "otp_length": OTP_TOKEN_LENGTH,
        })
    }

    /// Add one share, after checking the ceremony's nonce in constant time. Returns the
    /// combined root key once the quorum is in: the caller verifies it, makes the token and
    /// calls [`OtpTokenCeremony::finish`].
    pub fn submit(&mut self, nonce: &str, share: &[u8]) -> Result<Option<Zeroizing<Vec<u8>>>> {
        use subtle::ConstantTimeEq;
        let expected = self.ceremony.nonce().as_bytes();
        let same = expected.len() == nonce.len() && bool::from(expected.ct_eq(nonce.as_bytes()));
        if !same {
            return Err(SealError::BadInput(
                "incorrect nonce supplied; nonce for this operation is different".into(),
            ));
        }
        self.ceremony.add_share(share)
    }

    /// Encode `token` with the OTP and return the final status body (which shows it).
    pub fn finish(mut self, token: &str) -> Result<Value> {
        self.encoded = crate::otp::encode_token(token, &self.otp)?;
        Ok(self.status(""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn otp_rules() {
        assert!(OtpTokenCeremony::start(3, None, Some("pgp".into())).is_err());
        assert!(OtpTokenCeremony::start(3, Some("short".into()), None).is_err());
        let (c, shown) = OtpTokenCeremony::start(3, None, None).unwrap();
        assert_eq!(shown.len(), OTP_TOKEN_LENGTH);
        assert_eq!(c.status(&shown)["otp"], json!(shown));
        let given = "x".repeat(OTP_TOKEN_LENGTH);
        let (_, shown) = OtpTokenCeremony::start(3, Some(given), None).unwrap();
        assert!(shown.is_empty(), "a caller's own OTP is not echoed");
    }

    #[test]
    fn attempts_start_once_and_cancel() {
        let mut slot = None;
        let start = || AttemptRequest::Start {
            otp: None,
            pgp_key: None,
        };
        let idle = OtpTokenCeremony::attempt(&mut slot, AttemptRequest::Status, 3, "x").unwrap();
        assert_eq!(idle.unwrap()["started"], json!(false));
        assert!(OtpTokenCeremony::attempt(&mut slot, start(), 3, "x").is_ok());
        let again = OtpTokenCeremony::attempt(&mut slot, start(), 3, "root generation");
        assert_eq!(
            again.unwrap_err().to_string(),
            "root generation already in progress"
        );
        assert!(
            OtpTokenCeremony::attempt(&mut slot, AttemptRequest::Cancel, 3, "x")
                .unwrap()
                .is_none()
        );
        assert!(slot.is_none());
    }

    #[test]
    fn a_wrong_nonce_is_refused_before_the_share_is_read() {
        let (mut c, _) = OtpTokenCeremony::start(2, None, None).unwrap();
        assert!(c.submit("not-the-nonce", b"garbage").is_err());
        assert_eq!(c.status("")["progress"], json!(0));
        assert_eq!(OtpTokenCeremony::idle_status(2)["started"], json!(false));
    }
}
