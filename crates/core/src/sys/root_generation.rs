//! `sys/generate-root`: a new root token from a quorum of unseal key shares, handed out
//! XOR-encoded with a one-time pad (the OTP flow of Vault 1.10+; PGP is not supported).

use serde_json::{json, Value};

use super::{expect_op, WRITE};
use crate::core::{seal_err, Core};
use crate::logical::fields::{get_str, reject_unknown};
use crate::logical::{LogicalError, Operation, Request, Response, Result};
use crate::token::{TokenEntry, TokenType};

/// Length of a generated service token (`hvs.` + 24), which the OTP must match.
pub(crate) const OTP_LENGTH: usize = 28;

/// An in-progress key-share ceremony that ends in a token encoded with `otp`.
pub(crate) struct RootGeneration {
    pub ceremony: bunker_seal::KeyCeremony,
    pub otp: zeroize::Zeroizing<String>,
    /// Set once complete (a later status read still shows it).
    pub encoded_token: String,
}

impl RootGeneration {
    pub fn status_body(&self, otp_to_show: &str) -> Value {
        json!({
            "started": true,
            "nonce": self.ceremony.nonce(),
            "progress": self.ceremony.progress(),
            "required": self.ceremony.required,
            "complete": !self.encoded_token.is_empty(),
            "encoded_token": self.encoded_token,
            "encoded_root_token": self.encoded_token,
            "pgp_fingerprint": "",
            "otp": otp_to_show,
            "otp_length": OTP_LENGTH,
        })
    }
}

pub(crate) fn idle_status_body(required: u8) -> Value {
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
        "otp_length": OTP_LENGTH,
    })
}

/// Start a ceremony: validates a caller-given OTP or makes one.
pub(crate) fn start_ceremony(req: &Request, required: u8) -> Result<(RootGeneration, String)> {
    reject_unknown(&req.data, &["otp", "pgp_key"])?;
    if get_str(&req.data, "pgp_key")?.is_some_and(|s| !s.is_empty()) {
        return Err(LogicalError::InvalidRequest(
            "PGP-encrypted tokens are not supported; use an OTP".into(),
        ));
    }
    let (otp, shown) = match get_str(&req.data, "otp")?.filter(|s| !s.is_empty()) {
        Some(otp) if otp.len() == OTP_LENGTH => (otp, String::new()),
        Some(_) => {
            return Err(LogicalError::InvalidRequest(format!(
                "OTP string is wrong length; must be {OTP_LENGTH} characters"
            )))
        }
        None => {
            let otp = bunker_seal::otp::generate_otp(OTP_LENGTH);
            (otp.clone(), otp)
        }
    };
    Ok((
        RootGeneration {
            ceremony: bunker_seal::KeyCeremony::new(required),
            otp: zeroize::Zeroizing::new(otp),
            encoded_token: String::new(),
        },
        shown,
    ))
}

impl Core {
    async fn required_shares(&self) -> Result<u8> {
        Ok(self
            .seal
            .config()
            .await
            .map_err(seal_err)?
            .map(|c| c.secret_threshold)
            .unwrap_or(0))
    }

    pub(crate) async fn sys_generate_root_attempt(&self, req: &Request) -> Result<Response> {
        if self.is_sealed() {
            return Err(LogicalError::Sealed);
        }
        let required = self.required_shares().await?;
        let mut guard = self
            .root_generation
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match req.operation {
            Operation::Read => Ok(Response::raw(
                200,
                guard
                    .as_ref()
                    .map(|g| g.status_body(""))
                    .unwrap_or_else(|| idle_status_body(required)),
            )),
            Operation::Create | Operation::Update => {
                if guard.is_some() {
                    return Err(LogicalError::InvalidRequest(
                        "root generation already in progress".into(),
                    ));
                }
                let (generation, shown) = start_ceremony(req, required)?;
                let body = generation.status_body(&shown);
                *guard = Some(generation);
                Ok(Response::raw(200, body))
            }
            Operation::Delete => {
                *guard = None;
                Ok(Response::empty())
            }
            _ => Err(LogicalError::UnsupportedOperation),
        }
    }

    pub(crate) async fn sys_generate_root_update(&self, req: &Request) -> Result<Response> {
        expect_op(req.operation, WRITE)?;
        if self.is_sealed() {
            return Err(LogicalError::Sealed);
        }
        reject_unknown(&req.data, &["key", "nonce"])?;
        let key = get_str(&req.data, "key")?
            .ok_or_else(|| LogicalError::InvalidRequest("'key' must be specified".into()))?;
        let nonce = get_str(&req.data, "nonce")?.unwrap_or_default();
        let share = bunker_seal::parse_key_share(&key).map_err(seal_err)?;
        let (root_key, otp) = {
            let mut guard = self
                .root_generation
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let generation = guard.as_mut().ok_or_else(|| {
                LogicalError::InvalidRequest("no root generation in progress".into())
            })?;
            if !constant_time_eq(generation.ceremony.nonce(), &nonce) {
                return Err(LogicalError::InvalidRequest(
                    "incorrect nonce supplied; nonce for this root generation operation is different"
                        .into(),
                ));
            }
            match generation.ceremony.add_share(&share).map_err(seal_err)? {
                None => return Ok(Response::raw(200, generation.status_body(""))),
                Some(root_key) => (root_key, generation.otp.clone()),
            }
        };
        if self.barrier.verify_root_key(&root_key).await.is_err() {
            {
                let mut g = self
                    .root_generation
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                *g = None;
            }
            return Err(LogicalError::InvalidRequest(
                "root generation aborted: the key shares do not reconstruct the root key".into(),
            ));
        }
        let entry = TokenEntry {
            policies: vec!["root".into()],
            display_name: "root".into(),
            path: "auth/token/root".into(),
            orphan: true,
            token_type: TokenType::Service,
            ..Default::default()
        };
        let (token, _) = self.tokens.create(entry, None).await?;
        let encoded = bunker_seal::otp::encode_token(&token, &otp).map_err(seal_err)?;
        tracing::warn!("a new root token was generated by key-share quorum");
        let mut guard = self
            .root_generation
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let body = match guard.take() {
            Some(mut g) => {
                g.encoded_token = encoded;
                g.status_body("")
            }
            None => idle_status_body(0),
        };
        Ok(Response::raw(200, body))
    }
}

pub(crate) fn constant_time_eq(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}
