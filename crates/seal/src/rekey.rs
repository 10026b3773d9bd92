//! Rekey (Vault's `sys/rekey`): replace the unseal key shares with a new set, optionally with a
//! new share count and threshold.
//!
//! As in Vault, a rekey makes a **new root key**: a quorum of the current shares proves the
//! operators hold the current one, then a fresh key is split into the new shares and the
//! keyring is re-encrypted under it. Shares that leaked before the rekey then reconstruct a key
//! that opens nothing. (`sys/rotate` is the other operation: it adds a keyring term for data.)
//!
//! Two [`KeyCeremony`]s do the collecting: one over the current shares (`sys/rekey/update`),
//! and, when verification was asked for, one over the new shares (`sys/rekey/verify`). Until
//! verification completes the new key lives only in memory and the current shares still
//! unseal; sealing, cancelling or a restart discards it.
//!
//! Durability: the new seal configuration and the keyring encrypted under the new root key are
//! written in one atomic batch (`Barrier::rekey_root`), so after a crash either the old shares
//! or the new ones open the barrier, never neither.

use bunker_barrier::{Barrier, BarrierError};
use bunker_storage::Op;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::{shamir, KeyCeremony, Result, Seal, SealConfig, SealError, SEAL_CONFIG_PATH};

/// What `sys/rekey/init` asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RekeyRequest {
    pub secret_shares: u8,
    pub secret_threshold: u8,
    pub require_verification: bool,
}

/// Progress of a rekey (`GET sys/rekey/init`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RekeyStatus {
    pub started: bool,
    pub nonce: String,
    /// Shares and threshold of the new key.
    pub new_shares: u8,
    pub new_threshold: u8,
    /// Current shares given so far, out of `required` (the current threshold).
    pub progress: u8,
    pub required: u8,
    pub verification_required: bool,
    /// Set once the new shares exist and wait for verification.
    pub verification_nonce: String,
}

/// Progress of the verification of the new shares (`GET sys/rekey/verify`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerificationStatus {
    pub started: bool,
    pub nonce: String,
    pub new_shares: u8,
    pub new_threshold: u8,
    pub progress: u8,
}

/// The new shares, handed out once when the current quorum is complete.
pub struct RekeyResult {
    pub nonce: String,
    pub keys: Vec<Zeroizing<Vec<u8>>>,
    pub verification_required: bool,
    pub verification_nonce: String,
}

impl std::fmt::Debug for RekeyResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RekeyResult")
            .field("nonce", &self.nonce)
            .field("keys", &format_args!("<{} redacted>", self.keys.len()))
            .field("verification_required", &self.verification_required)
            .field("verification_nonce", &self.verification_nonce)
            .finish()
    }
}

/// The answer to one current share.
#[derive(Debug)]
pub enum RekeyUpdate {
    Pending(RekeyStatus),
    Complete(RekeyResult),
}

/// The answer to one new share during verification.
#[derive(Debug, PartialEq, Eq)]
pub enum VerifyUpdate {
    Pending(VerificationStatus),
    /// The new shares are active; `nonce` is the verification nonce.
    Complete {
        nonce: String,
    },
}

/// A rekey in progress (memory only).
pub(crate) struct RekeyOperation {
    new_config: SealConfig,
    verification_required: bool,
    /// Collects the current shares; its nonce is the rekey nonce.
    current: KeyCeremony,
    /// Set once the new key exists, when verification is required.
    verification: Option<Verification>,
}

/// New shares handed out, waiting for a quorum of them to come back.
struct Verification {
    new_root_key: Zeroizing<Vec<u8>>,
    /// Collects new shares; its nonce is the verification nonce.
    ceremony: KeyCeremony,
}

impl RekeyOperation {
    fn status(&self) -> RekeyStatus {
        RekeyStatus {
            started: true,
            nonce: self.current.nonce.clone(),
            new_shares: self.new_config.secret_shares,
            new_threshold: self.new_config.secret_threshold,
            progress: self.current.progress(),
            required: self.current.required,
            verification_required: self.verification_required,
            verification_nonce: self
                .verification
                .as_ref()
                .map(|v| v.ceremony.nonce.clone())
                .unwrap_or_default(),
        }
    }

    fn verification_status(&self) -> VerificationStatus {
        let (started, nonce, progress) = match &self.verification {
            Some(v) => (true, v.ceremony.nonce.clone(), v.ceremony.progress()),
            None => (false, String::new(), 0),
        };
        VerificationStatus {
            started,
            nonce,
            new_shares: self.new_config.secret_shares,
            new_threshold: self.new_config.secret_threshold,
            progress,
        }
    }
}

fn bad(message: impl Into<String>) -> SealError {
    SealError::BadInput(message.into())
}

fn nonce_matches(expected: &str, given: &str) -> bool {
    expected.len() == given.len() && bool::from(expected.as_bytes().ct_eq(given.as_bytes()))
}

impl Seal {
    /// `GET sys/rekey/init`.
    pub async fn rekey_status(&self) -> Result<RekeyStatus> {
        let current = self.initialized_config().await?;
        self.require_unsealed()?;
        Ok(self.rekey_state().as_ref().map_or_else(
            || RekeyStatus {
                required: current.secret_threshold,
                ..RekeyStatus::default()
            },
            RekeyOperation::status,
        ))
    }

    /// `PUT sys/rekey/init`: start a rekey to `request`'s shares and threshold.
    pub async fn rekey_init(&self, request: &RekeyRequest) -> Result<RekeyStatus> {
        let new_config = SealConfig {
            secret_shares: request.secret_shares,
            secret_threshold: request.secret_threshold,
        };
        if new_config.secret_threshold > new_config.secret_shares {
            return Err(bad("provided threshold greater than the total shares"));
        }
        new_config.validate().map_err(|e| match e {
            SealError::InvalidConfig(m) => {
                SealError::InvalidConfig(format!("invalid rekey seal configuration: {m}"))
            }
            other => other,
        })?;
        let _serial = self.rekey_serial.lock().await;
        let current = self.initialized_config().await?;
        self.require_unsealed()?;
        let mut state = self.rekey_state();
        if state.is_some() {
            return Err(bad("rekey already in progress"));
        }
        let operation = RekeyOperation {
            new_config,
            verification_required: request.require_verification,
            current: KeyCeremony::new(current.secret_threshold),
            verification: None,
        };
        let status = operation.status();
        *state = Some(operation);
        tracing::info!(
            nonce = %status.nonce,
            shares = status.new_shares,
            threshold = status.new_threshold,
            verification_required = status.verification_required,
            "rekey initialized"
        );
        Ok(status)
    }

    /// `DELETE sys/rekey/init`: forget the rekey, its shares and any unverified new key.
    pub async fn rekey_cancel(&self) -> Result<()> {
        let _serial = self.rekey_serial.lock().await;
        self.require_unsealed()?;
        if self.rekey_state().take().is_some() {
            tracing::info!("rekey canceled");
        }
        Ok(())
    }

    /// `PUT sys/rekey/update`: one current share. At the threshold the current root key is
    /// checked, a new one is made and split, and (without verification) made active.
    pub async fn rekey_update(&self, share: &[u8], nonce: &str) -> Result<RekeyUpdate> {
        let _serial = self.rekey_serial.lock().await;
        self.initialized_config().await?;
        self.require_unsealed()?;
        let (current_root_key, new_config, verification_required, rekey_nonce) = {
            let mut state = self.rekey_state();
            let operation = state
                .as_mut()
                .ok_or_else(|| bad("no barrier rekey in progress"))?;
            if let Some(v) = &operation.verification {
                return Err(bad(format!(
                    "rekey operation already finished; verification must be performed; \
                     nonce for the verification operation is {:?}",
                    v.ceremony.nonce
                )));
            }
            if !nonce_matches(&operation.current.nonce, nonce) {
                return Err(bad(format!(
                    "incorrect nonce supplied; nonce for this rekey operation is {:?}",
                    operation.current.nonce
                )));
            }
            match operation.current.add_share(share)? {
                None => return Ok(RekeyUpdate::Pending(operation.status())),
                Some(key) => (
                    key,
                    operation.new_config.clone(),
                    operation.verification_required,
                    operation.current.nonce.clone(),
                ),
            }
        };
        // The ceremony is empty again: a wrong quorum starts over, the rekey stays (as Vault).
        match self.barrier.verify_root_key(&current_root_key).await {
            Ok(()) => {}
            Err(BarrierError::InvalidRootKey) => {
                return Err(SealError::InvalidKey(
                    "root key verification failed: the key shares do not reconstruct the root key"
                        .into(),
                ))
            }
            Err(e) => return Err(e.into()),
        }
        drop(current_root_key);
        let new_root_key = Barrier::try_generate_root_key()?;
        let keys = shamir::split(
            &new_root_key,
            new_config.secret_shares,
            new_config.secret_threshold,
        )?;
        if verification_required {
            let verification_nonce =
                self.await_verification(new_root_key, new_config.secret_threshold, &rekey_nonce)?;
            return Ok(RekeyUpdate::Complete(RekeyResult {
                nonce: rekey_nonce,
                keys,
                verification_required: true,
                verification_nonce,
            }));
        }
        self.still_current(&rekey_nonce)?;
        self.activate_rekey(&new_root_key, &new_config, &rekey_nonce)
            .await?;
        Ok(RekeyUpdate::Complete(RekeyResult {
            nonce: rekey_nonce,
            keys,
            verification_required: false,
            verification_nonce: String::new(),
        }))
    }

    /// Only a seal can have ended the rekey while its lock was not held (the other rekey calls
    /// are serialized).
    fn still_current(&self, rekey_nonce: &str) -> Result<()> {
        match self.rekey_state().as_ref() {
            Some(op) if op.current.nonce == rekey_nonce => Ok(()),
            _ => Err(bad("the rekey was canceled")),
        }
    }

    /// Keep `new_root_key` until a quorum of its shares comes back; returns the verification
    /// nonce.
    fn await_verification(
        &self,
        new_root_key: Zeroizing<Vec<u8>>,
        new_threshold: u8,
        rekey_nonce: &str,
    ) -> Result<String> {
        let mut state = self.rekey_state();
        let operation = state
            .as_mut()
            .filter(|op| op.current.nonce == rekey_nonce)
            .ok_or_else(|| bad("the rekey was canceled"))?;
        let ceremony = KeyCeremony::new(new_threshold);
        let verification_nonce = ceremony.nonce.clone();
        operation.verification = Some(Verification {
            new_root_key,
            ceremony,
        });
        tracing::info!("rekey: new key shares made; they wait for verification");
        Ok(verification_nonce)
    }

    /// `GET sys/rekey/verify`.
    pub async fn rekey_verify_status(&self) -> Result<VerificationStatus> {
        self.initialized_config().await?;
        self.require_unsealed()?;
        self.rekey_state()
            .as_ref()
            .map(RekeyOperation::verification_status)
            .ok_or_else(|| bad("no rekey configuration found"))
    }

    /// `DELETE sys/rekey/verify`: drop the new shares given so far and change the
    /// verification nonce; the new key and shares stay.
    pub async fn rekey_verify_restart(&self) -> Result<VerificationStatus> {
        let _serial = self.rekey_serial.lock().await;
        self.initialized_config().await?;
        self.require_unsealed()?;
        let mut state = self.rekey_state();
        let operation = state
            .as_mut()
            .ok_or_else(|| bad("no rekey configuration found"))?;
        if let Some(v) = operation.verification.as_mut() {
            v.ceremony = KeyCeremony::new(operation.new_config.secret_threshold);
        }
        Ok(operation.verification_status())
    }

    /// `PUT sys/rekey/verify`: one new share. At the new threshold, if the shares rebuild the
    /// new key, it becomes active; otherwise the verification starts over with a new nonce.
    pub async fn rekey_verify(&self, share: &[u8], nonce: &str) -> Result<VerifyUpdate> {
        let _serial = self.rekey_serial.lock().await;
        self.initialized_config().await?;
        self.require_unsealed()?;
        let (new_root_key, new_config, rekey_nonce, verification_nonce) = {
            let mut state = self.rekey_state();
            let operation = state.as_mut().ok_or_else(|| bad("no rekey in progress"))?;
            let new_config = operation.new_config.clone();
            let rekey_nonce = operation.current.nonce.clone();
            let v = operation
                .verification
                .as_mut()
                .ok_or_else(|| bad("no rekey verification in progress"))?;
            if !nonce_matches(&v.ceremony.nonce, nonce) {
                return Err(bad(format!(
                    "incorrect nonce supplied; nonce for this verify operation is {:?}",
                    v.ceremony.nonce
                )));
            }
            let given_before = v.ceremony.progress();
            let combined = match v.ceremony.add_share(share) {
                Ok(None) => return Ok(VerifyUpdate::Pending(operation.verification_status())),
                Ok(Some(key)) => key,
                Err(e) => {
                    if v.ceremony.progress() < given_before {
                        // The quorum did not combine: start over under a new nonce (as Vault).
                        v.ceremony = KeyCeremony::new(new_config.secret_threshold);
                    }
                    return Err(e);
                }
            };
            if !bool::from(combined.as_slice().ct_eq(v.new_root_key.as_slice())) {
                v.ceremony = KeyCeremony::new(new_config.secret_threshold);
                tracing::warn!("rekey verification failed: the new shares given do not match");
                return Err(bad(
                    "rekey verification failed; incorrect key shares supplied",
                ));
            }
            (
                v.new_root_key.clone(),
                new_config,
                rekey_nonce,
                v.ceremony.nonce.clone(),
            )
        };
        self.activate_rekey(&new_root_key, &new_config, &rekey_nonce)
            .await?;
        Ok(VerifyUpdate::Complete {
            nonce: verification_nonce,
        })
    }

    /// Make `new_root_key` and `new_config` the stored seal, in one atomic batch, and end the
    /// rekey `rekey_nonce`. The caller holds `rekey_serial`.
    async fn activate_rekey(
        &self,
        new_root_key: &[u8],
        new_config: &SealConfig,
        rekey_nonce: &str,
    ) -> Result<()> {
        let record = serde_json::to_vec(new_config)
            .map_err(|e| SealError::Internal(format!("encoding the seal configuration: {e}")))?;
        let config_op = Op::Put {
            key: SEAL_CONFIG_PATH.to_owned(),
            value: record,
        };
        self.barrier
            .rekey_root(new_root_key, vec![config_op])
            .await?;
        self.end_rekey(rekey_nonce);
        tracing::info!(
            shares = new_config.secret_shares,
            threshold = new_config.secret_threshold,
            "rekey complete: the new unseal key shares are active"
        );
        Ok(())
    }

    fn end_rekey(&self, rekey_nonce: &str) {
        let mut state = self.rekey_state();
        if state
            .as_ref()
            .is_some_and(|op| op.current.nonce == rekey_nonce)
        {
            *state = None;
        }
    }

    async fn initialized_config(&self) -> Result<SealConfig> {
        self.config().await?.ok_or(SealError::NotInitialized)
    }

    fn require_unsealed(&self) -> Result<()> {
        if self.barrier.is_sealed() {
            return Err(SealError::Barrier(BarrierError::Sealed));
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "rekey_tests.rs"]
mod tests;
