//! The seal: Shamir shares of the root key, unseal progress, and key-share ceremonies.
//!
//! Design choices:
//!
//! - **Vault-compatible shares.** GF(2^8) Shamir (vsss-rs, constant time) with Vault's layout,
//!   y bytes then the x byte; one share means the root key itself (see `shamir`).
//! - **Plaintext seal configuration.** The share count and threshold are not secret and must
//!   be readable while sealed (status, unseal), so they are stored unencrypted on the
//!   physical backend at [`SEAL_CONFIG_PATH`], written in the same atomic batch as the
//!   barrier's keyring (`Barrier::initialize_with`): a crash cannot leave one without the
//!   other.
//! - **Progress in memory only.** Submitted shares live in a std `Mutex` (never held across an
//!   `.await`), wrapped in `Zeroizing`, and are dropped when the quorum is reached, on reset,
//!   on seal, and when a combination fails (Vault resets progress on a bad key). A share
//!   identical to one already submitted is ignored, as Vault does.
//! - **Rekey** (see `rekey`) replaces the root key and its shares; the new configuration and
//!   the keyring re-encrypted under the new key are one atomic batch (`Barrier::rekey_root`).
//! - **The root key is checked by the barrier**: a combination that yields the wrong key is
//!   detected because it cannot authenticate the keyring.
//!
//! May see: the barrier (it opens it with the reconstructed root key) and the physical
//! storage (for the plaintext seal configuration). May not see: tokens, requests, HTTP.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bunker_barrier::{Barrier, BarrierError};
use bunker_storage::Op;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

mod ceremony;
mod error;
pub mod otp;
mod otp_ceremony;
mod rekey;
mod shamir;
#[cfg(test)]
mod tests;

pub use ceremony::{parse_key_share, KeyCeremony};
pub use error::SealError;
pub use otp_ceremony::{AttemptRequest, OtpTokenCeremony, OTP_TOKEN_LENGTH};
pub use rekey::{
    RekeyRequest, RekeyResult, RekeyStatus, RekeyUpdate, VerificationStatus, VerifyUpdate,
};
pub use shamir::SHARE_LEN;

pub type Result<T> = std::result::Result<T, SealError>;

/// Physical key of the (plaintext, non-secret) seal configuration.
pub const SEAL_CONFIG_PATH: &str = "core/seal-config";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealConfig {
    pub secret_shares: u8,
    pub secret_threshold: u8,
}

impl SealConfig {
    /// Vault's rules and messages (`SealConfig.Validate`); the 255 limits hold by type.
    pub fn validate(&self) -> Result<()> {
        let invalid = |m: &str| Err(SealError::InvalidConfig(m.to_owned()));
        if self.secret_shares < 1 {
            return invalid("shares must be at least one");
        }
        if self.secret_threshold < 1 {
            return invalid("threshold must be at least one");
        }
        if self.secret_shares > 1 && self.secret_threshold == 1 {
            return invalid("threshold must be greater than one for multiple shares");
        }
        if self.secret_threshold > self.secret_shares {
            return invalid("threshold cannot be larger than shares");
        }
        Ok(())
    }
}

pub struct InitOutput {
    /// The unseal key shares, in the byte form handed to operators.
    pub keys: Vec<Zeroizing<Vec<u8>>>,
}

impl std::fmt::Debug for InitOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InitOutput")
            .field("keys", &format_args!("<{} redacted>", self.keys.len()))
            .finish()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealStatus {
    pub initialized: bool,
    pub sealed: bool,
    pub threshold: u8,
    pub shares: u8,
    pub progress: u8,
    pub nonce: String,
}

/// Shares submitted toward the current unseal attempt.
#[derive(Default)]
struct UnsealProgress {
    nonce: String,
    shares: Vec<Zeroizing<Vec<u8>>>,
}

impl UnsealProgress {
    fn count(&self) -> u8 {
        u8::try_from(self.shares.len()).unwrap_or(u8::MAX)
    }
}

pub struct Seal {
    barrier: Arc<Barrier>,
    unseal_progress: Mutex<UnsealProgress>,
    /// Serializes `initialize` within this process.
    init: tokio::sync::Mutex<()>,
    /// The rekey in progress, if any (see `rekey`). Held only briefly, never across an
    /// `.await`.
    rekey: Mutex<Option<rekey::RekeyOperation>>,
    /// Serializes the rekey calls, across their `.await`s (Vault's rekey lock).
    rekey_serial: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Seal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Seal")
            .field("sealed", &self.barrier.is_sealed())
            .field("unseal_progress", &self.progress().count())
            .finish_non_exhaustive()
    }
}

impl Seal {
    pub fn new(barrier: Arc<Barrier>) -> Self {
        Seal {
            barrier,
            unseal_progress: Mutex::new(UnsealProgress::default()),
            init: tokio::sync::Mutex::new(()),
            rekey: Mutex::new(None),
            rekey_serial: tokio::sync::Mutex::new(()),
        }
    }

    pub fn barrier(&self) -> &Arc<Barrier> {
        &self.barrier
    }

    /// The stored seal configuration, `None` before initialization.
    pub async fn config(&self) -> Result<Option<SealConfig>> {
        let Some(raw) = self.barrier.backend().get(SEAL_CONFIG_PATH).await? else {
            return Ok(None);
        };
        let config: SealConfig =
            serde_json::from_slice(&raw).map_err(|e| SealError::Corrupt(e.to_string()))?;
        config
            .validate()
            .map_err(|e| SealError::Corrupt(e.to_string()))?;
        Ok(Some(config))
    }

    /// Generate a root key, initialize the barrier with it, store the configuration, and
    /// return the unseal keys. Leaves the barrier sealed.
    pub async fn initialize(&self, shares: u8, threshold: u8) -> Result<InitOutput> {
        let config = SealConfig {
            secret_shares: shares,
            secret_threshold: threshold,
        };
        config.validate()?;
        let _init = self.init.lock().await;
        if self.config().await?.is_some() || self.barrier.initialized().await? {
            return Err(SealError::AlreadyInitialized);
        }
        let root_key = Barrier::try_generate_root_key()?;
        let keys = shamir::split(&root_key, shares, threshold)?;
        let config_record = serde_json::to_vec(&config)
            .map_err(|e| SealError::Internal(format!("encoding the seal configuration: {e}")))?;
        let config_op = Op::Put {
            key: SEAL_CONFIG_PATH.to_owned(),
            value: config_record,
        };
        match self
            .barrier
            .initialize_with(&root_key, vec![config_op])
            .await
        {
            Ok(()) => {}
            Err(BarrierError::AlreadyInitialized) => return Err(SealError::AlreadyInitialized),
            Err(e) => return Err(e.into()),
        }
        self.reset_unseal();
        tracing::info!(shares, threshold, "seal initialized");
        Ok(InitOutput { keys })
    }

    pub async fn status(&self) -> Result<SealStatus> {
        let config = self.config().await?;
        Ok(self.status_for(config.as_ref()))
    }

    /// Submit one unseal key. Returns the status after it; unseals when the threshold is met.
    pub async fn submit_unseal_key(&self, key: &[u8]) -> Result<SealStatus> {
        let config = self.config().await?.ok_or(SealError::NotInitialized)?;
        if !self.barrier.is_sealed() {
            return Ok(self.status_for(Some(&config)));
        }
        let threshold = config.secret_threshold;
        shamir::check_key_len(key, threshold)?;

        let quorum = {
            let mut progress = self.progress();
            if shamir::contains_share(&progress.shares, key) {
                // Vault ignores a key it already has.
                drop(progress);
                return Ok(self.status_for(Some(&config)));
            }
            if progress.shares.is_empty() {
                progress.nonce = uuid::Uuid::new_v4().to_string();
            }
            progress.shares.push(Zeroizing::new(key.to_vec()));
            if progress.shares.len() < usize::from(threshold) {
                drop(progress);
                return Ok(self.status_for(Some(&config)));
            }
            std::mem::take(&mut *progress)
        };

        // Progress is already cleared: whatever happens now, the next attempt starts over.
        let root_key = shamir::combine(&quorum.shares, threshold)?;
        drop(quorum);
        match self.barrier.unseal(&root_key).await {
            Ok(()) => {}
            Err(BarrierError::InvalidRootKey) => {
                return Err(SealError::InvalidKey("Unseal failed, invalid key".into()));
            }
            Err(e) => return Err(e.into()),
        }
        tracing::info!("unsealed with {threshold} key share(s)");
        Ok(self.status_for(Some(&config)))
    }

    /// Discard the shares submitted so far.
    pub fn reset_unseal(&self) {
        *self.progress() = UnsealProgress::default();
    }

    /// Seal the barrier and discard any unseal progress and any rekey in progress (with its
    /// unverified new key).
    pub fn seal(&self) {
        self.barrier.seal();
        self.reset_unseal();
        *self.rekey_state() = None;
    }

    fn progress(&self) -> MutexGuard<'_, UnsealProgress> {
        self.unseal_progress
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn rekey_state(&self) -> MutexGuard<'_, Option<rekey::RekeyOperation>> {
        self.rekey.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn status_for(&self, config: Option<&SealConfig>) -> SealStatus {
        let sealed = self.barrier.is_sealed();
        let Some(config) = config else {
            return SealStatus {
                initialized: false,
                sealed,
                threshold: 0,
                shares: 0,
                progress: 0,
                nonce: String::new(),
            };
        };
        let progress = self.progress();
        let (count, nonce) = if sealed && progress.count() > 0 {
            (progress.count(), progress.nonce.clone())
        } else {
            (0, String::new())
        };
        SealStatus {
            initialized: true,
            sealed,
            threshold: config.secret_threshold,
            shares: config.secret_shares,
            progress: count,
            nonce,
        }
    }
}
