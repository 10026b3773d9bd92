//! The security barrier: AES-256-GCM encryption of every value with a keyring of numbered
//! terms.
//!
//! Everything below the barrier (the physical backend, the WAL, replication) sees only
//! ciphertext. Design choices:
//!
//! - **Format.** Each value is `[version 1][term u32 BE][nonce 12][ciphertext || tag]` (see
//!   `envelope`), with the storage path as associated data so a value moved to another path
//!   fails to decrypt. Keys (paths) are not encrypted: LIST and ordered scans must work on
//!   the untrusted store, as in Vault.
//! - **Keyring under the root key.** Data is encrypted with keyring terms; only the keyring is
//!   encrypted with the root key (see `keyring`). Rotation adds a term without re-encrypting
//!   data. The root key is persisted only after a rekey, encrypted under the active term at a
//!   cluster-local path, for HA standbys to follow ([`ROOT_KEY_UPGRADE_PATH`]).
//! - **Sealed = no keys in memory.** The unsealed state (root-key cipher + keyring) lives in an
//!   `Arc` behind a std `RwLock` that is held only long enough to clone the `Arc`, never across
//!   an `.await`. `seal()` drops it; key bytes are in `Zeroizing` and AWS-LC cleanses its
//!   expanded keys when freed. An operation already in flight finishes with its snapshot.
//! - **Keyring changes are serialized** by an async mutex (initialize, unseal, rotate), and the
//!   new keyring is persisted before it replaces the in-memory one, so a failed write changes
//!   nothing.
//!
//! May see: the physical storage. May not see: the seal (it is handed a root key), tokens,
//! requests, HTTP, replication.

use bunker_storage::timed::Timed;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use bunker_storage::{Backend, Op};
use zeroize::Zeroizing;

mod decoded;
mod envelope;
mod error;
mod keyring;
#[cfg(test)]
mod tests;

pub use decoded::DecodedCache;
pub use error::BarrierError;

use envelope::{TermCipher, KEY_LEN};
use keyring::{Keyring, ROOT_TERM};

pub type Result<T> = std::result::Result<T, BarrierError>;

/// Physical key of the encrypted keyring (written by the barrier only).
pub const KEYRING_PATH: &str = "core/keyring";

/// Physical key of the root key a rekey installed, encrypted with the keyring's active term
/// (written by the barrier only: with the rekeyed keyring, and again under each new term a
/// rotation adds, so a rotation shuts out whoever held only older terms). An HA standby holds
/// the keyring terms but a root key the rekey replaced; this is how it follows, as Vault's
/// standbys reload `core/master`. It lives under the prefix the storage keeps local to one
/// cluster (`repl/`, see `bunker_wal::wal::LOCAL_PREFIX`): never replicated to a DR secondary
/// (whose site a rekey is meant to shut out) and never restored from a snapshot.
pub const ROOT_KEY_UPGRADE_PATH: &str = "repl/barrier/root-key";

/// Length in bytes of the root key (AES-256).
pub const ROOT_KEY_LEN: usize = KEY_LEN;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyStatus {
    pub term: u32,
    pub install_time_unix: u64,
    pub encryptions: u64,
}

/// Proof that the caller holds the keyring still ([`Barrier::hold_keyring`]).
pub struct KeyringHeld<'a> {
    _guard: tokio::sync::MutexGuard<'a, ()>,
}

/// The keyring a snapshot restore writes ([`Barrier::keyring_for_restore`]).
pub struct RestoredKeyring {
    /// The record to store at [`KEYRING_PATH`] with the snapshot's data: the snapshot's own
    /// bytes when nothing was added.
    pub record: Vec<u8>,
    /// Terms of this keyring newer than the snapshot's, kept (their keys may have encrypted
    /// values that outlive the restore); the newest of them stays active.
    pub kept_terms: Vec<u32>,
    /// A term of this keyring is lost anyway: the snapshot lacks it or holds that term number
    /// with another key (histories that diverged after an earlier restore).
    pub forgets_term: bool,
}

/// Keys held while unsealed.
struct Unsealed {
    /// Encrypts the keyring record; kept so `rotate` can persist without the operator.
    root: Arc<TermCipher>,
    /// The root key itself, for handing to a DR secondary inside its activation bundle.
    root_key: Arc<Zeroizing<Vec<u8>>>,
    keyring: Keyring,
}

pub struct Barrier {
    backend: Arc<dyn Backend>,
    state: RwLock<Option<Arc<Unsealed>>>,
    /// Serializes every change of the keyring, in storage and in memory.
    keyring_change: tokio::sync::Mutex<()>,
    /// Encryptions since the last unseal.
    encryptions: AtomicU64,
}

impl std::fmt::Debug for Barrier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let active_term = self.snapshot().map(|s| s.keyring.active().term());
        f.debug_struct("Barrier")
            .field("sealed", &active_term.is_none())
            .field("active_term", &active_term)
            .finish_non_exhaustive()
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn root_cipher(root_key: &[u8]) -> Result<TermCipher> {
    TermCipher::new(ROOT_TERM, root_key).ok_or(BarrierError::InvalidRootKey)
}

/// The op that stores `root_key` at [`ROOT_KEY_UPGRADE_PATH`] under `keyring`'s active term.
fn root_key_record(keyring: &Keyring, root_key: &[u8]) -> Result<Op> {
    Ok(Op::Put {
        key: ROOT_KEY_UPGRADE_PATH.to_owned(),
        value: seal_active(keyring, ROOT_KEY_UPGRADE_PATH, root_key)?,
    })
}

/// `plaintext` sealed under `keyring`'s active term, with `aad` as associated data.
fn seal_active(keyring: &Keyring, aad: &str, plaintext: &[u8]) -> Result<Vec<u8>> {
    keyring
        .active()
        .cipher()
        .seal(aad.as_bytes(), plaintext)
        .map_err(|what| BarrierError::Internal(format!("{what} at {aad:?}")))
}

fn refuse_reserved(key: &str) -> Result<()> {
    if key == KEYRING_PATH || key == ROOT_KEY_UPGRADE_PATH {
        return Err(BarrierError::ReservedPath(key.to_owned()));
    }
    Ok(())
}

impl Barrier {
    pub fn new(backend: Arc<dyn Backend>) -> Self {
        Barrier {
            backend,
            state: RwLock::new(None),
            keyring_change: tokio::sync::Mutex::new(()),
            encryptions: AtomicU64::new(0),
        }
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// 32 random bytes from AWS-LC's RNG.
    ///
    /// AWS-LC treats an RNG failure as fatal and aborts inside `RAND_bytes`; should a failure
    /// ever be reported instead, this aborts too rather than hand out a weak key. Use
    /// [`Barrier::try_generate_root_key`] to get the error instead.
    pub fn generate_root_key() -> Zeroizing<Vec<u8>> {
        match Self::try_generate_root_key() {
            Ok(key) => key,
            Err(e) => {
                tracing::error!(error = %e, "system RNG failed; aborting");
                std::process::abort()
            }
        }
    }

    /// 32 random bytes from AWS-LC's RNG, or `Internal` if the RNG fails.
    pub fn try_generate_root_key() -> Result<Zeroizing<Vec<u8>>> {
        let mut key = Zeroizing::new(vec![0u8; ROOT_KEY_LEN]);
        aws_lc_rs::rand::fill(key.as_mut_slice())
            .map_err(|_| BarrierError::Internal("generating a root key".into()))?;
        Ok(key)
    }

    /// Whether a keyring has been written.
    pub async fn initialized(&self) -> Result<bool> {
        Ok(self.backend.get(KEYRING_PATH).await?.is_some())
    }

    /// Create keyring term 1 and persist it under `root_key` (32 bytes). Leaves the barrier
    /// sealed.
    pub async fn initialize(&self, root_key: &[u8]) -> Result<()> {
        self.initialize_with(root_key, Vec::new()).await
    }

    /// Like [`Barrier::initialize`], committing `extra` plaintext physical ops in the same
    /// atomic batch as the keyring (the seal uses this for its configuration, so a crash
    /// cannot leave one without the other).
    pub async fn initialize_with(&self, root_key: &[u8], extra: Vec<Op>) -> Result<()> {
        for op in &extra {
            refuse_reserved(op.key())?;
        }
        let root = root_cipher(root_key)?;
        let _change = self.keyring_change.lock().await;
        if self.initialized().await? {
            return Err(BarrierError::AlreadyInitialized);
        }
        let keyring = Keyring::initial(now_unix())?;
        let mut ops = extra;
        ops.push(Op::Put {
            key: KEYRING_PATH.to_owned(),
            value: keyring.seal_with_root(&root)?,
        });
        self.backend.batch(ops).await?;
        tracing::info!("barrier initialized with key term 1");
        Ok(())
    }

    pub fn is_sealed(&self) -> bool {
        self.snapshot().is_none()
    }

    /// Load the keyring with `root_key`. A no-op when already unsealed (as in Vault).
    pub async fn unseal(&self, root_key: &[u8]) -> Result<()> {
        let root = root_cipher(root_key)?;
        let _change = self.keyring_change.lock().await;
        if !self.is_sealed() {
            return Ok(());
        }
        let keyring = self.load_keyring(&root).await?;
        let active_term = keyring.active().term();
        self.encryptions.store(0, Ordering::Relaxed);
        self.replace_state(Some(Arc::new(Unsealed {
            root: Arc::new(root),
            root_key: Arc::new(Zeroizing::new(root_key.to_vec())),
            keyring,
        })));
        tracing::info!(active_term, "barrier unsealed");
        Ok(())
    }

    /// Check that `root_key` decrypts the stored keyring, sealed or not, changing nothing.
    pub async fn verify_root_key(&self, root_key: &[u8]) -> Result<()> {
        let root = root_cipher(root_key)?;
        self.load_keyring(&root).await.map(|_| ())
    }

    /// Check that a stored keyring record (e.g. one inside a snapshot) opens with the root key
    /// in memory, changing nothing. `Sealed` while sealed, `InvalidRootKey` when it does not.
    pub fn check_keyring(&self, stored: &[u8]) -> Result<()> {
        let state = self.unsealed()?;
        Keyring::open_with_root(&state.root, stored).map(|_| ())
    }

    /// Hold off every other change of the keyring (rotate, rekey, reload) while a snapshot
    /// restore computes the keyring it installs and commits it.
    pub async fn hold_keyring(&self) -> KeyringHeld<'_> {
        KeyringHeld {
            _guard: self.keyring_change.lock().await,
        }
    }

    /// The keyring record a restore of this cluster's snapshot writes, given the snapshot's
    /// (`stored`): the snapshot's terms plus this keyring's newer ones (see
    /// [`RestoredKeyring`]). `InvalidRootKey` when `stored` does not open with the root key in
    /// memory, `Sealed` while sealed.
    pub fn keyring_for_restore(
        &self,
        _held: &KeyringHeld<'_>,
        stored: &[u8],
    ) -> Result<RestoredKeyring> {
        let state = self.unsealed()?;
        let snapshot = Keyring::open_with_root(&state.root, stored)?;
        let (merged, kept_terms, forgets_term) = snapshot.restored_over(&state.keyring);
        let record = match merged {
            None => stored.to_vec(),
            Some(merged) => merged.seal_with_root(&state.root)?,
        };
        Ok(RestoredKeyring {
            record,
            kept_terms,
            forgets_term,
        })
    }

    /// Drop every key from memory.
    pub fn seal(&self) {
        if self.replace_state(None).is_some() {
            tracing::info!("barrier sealed");
        }
    }

    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let _timer = Timed::start("vault_barrier_get");
        refuse_reserved(key)?;
        let state = self.unsealed()?;
        let Some(stored) = self.stored(key).await? else {
            return Ok(None);
        };
        let mut plaintext = state.keyring.decrypt(key, &stored)?;
        Ok(Some(std::mem::take(&mut *plaintext)))
    }

    /// Whether `key` holds a value, without decrypting it: for existence checks (which pick the
    /// `create` or `update` capability), where the value itself is not used.
    pub async fn exists(&self, key: &str) -> Result<bool> {
        let _timer = Timed::start("vault_barrier_get");
        refuse_reserved(key)?;
        self.unsealed()?;
        Ok(self.stored(key).await?.is_some())
    }

    /// The stored bytes of `key`: answered within the call when the backend can
    /// ([`bunker_storage::Backend::get_now`]: no boxed future), else awaited.
    async fn stored(&self, key: &str) -> bunker_storage::Result<Option<Vec<u8>>> {
        match self.backend.get_now(key) {
            Some(found) => found,
            None => self.backend.get(key).await,
        }
    }

    /// [`Barrier::get`], decoded by `decode`, through `cache`: the stored ciphertext is read
    /// every time, and decrypted and decoded only when it is not the one the cached value was
    /// decoded from (`decoded.rs`).
    pub async fn get_decoded<T, E>(
        &self,
        key: &str,
        cache: &DecodedCache<T>,
        decode: impl FnOnce(&[u8]) -> std::result::Result<T, E>,
    ) -> std::result::Result<Option<Arc<T>>, E>
    where
        E: From<BarrierError>,
    {
        let _timer = Timed::start("vault_barrier_get");
        refuse_reserved(key)?;
        let state = self.unsealed()?;
        let Some(stored) = self.stored(key).await.map_err(BarrierError::from)? else {
            return Ok(None);
        };
        if let Some(value) = cache.hit(key, &stored) {
            return Ok(Some(value));
        }
        let plaintext = state.keyring.decrypt(key, &stored)?;
        let value = Arc::new(decode(&plaintext)?);
        cache.insert(key, stored, value.clone());
        Ok(Some(value))
    }

    pub async fn put(&self, key: &str, value: &[u8]) -> Result<()> {
        let _timer = Timed::start("vault_barrier_put");
        refuse_reserved(key)?;
        let state = self.unsealed()?;
        let sealed = self.encrypt_with(&state, key, value)?;
        Ok(self.backend.put(key, sealed).await?)
    }

    pub async fn delete(&self, key: &str) -> Result<()> {
        let _timer = Timed::start("vault_barrier_delete");
        refuse_reserved(key)?;
        self.unsealed()?;
        Ok(self.backend.delete(key).await?)
    }

    /// Backend LIST pass-through (keys are not encrypted).
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let _timer = Timed::start("vault_barrier_list");
        self.unsealed()?;
        Ok(self.backend.list(prefix).await?)
    }

    /// Encrypt every put (associated data = its key) and commit all ops in one atomic backend
    /// batch.
    pub async fn batch(&self, ops: Vec<Op>) -> Result<()> {
        let _timer = Timed::start("bunker_barrier_batch");
        for op in &ops {
            refuse_reserved(op.key())?;
        }
        let state = self.unsealed()?;
        let mut sealed_ops = Vec::with_capacity(ops.len());
        for op in ops {
            sealed_ops.push(match op {
                Op::Put { key, value } => {
                    let value = self.encrypt_with(&state, &key, &Zeroizing::new(value))?;
                    Op::Put { key, value }
                }
                delete @ Op::Delete { .. } => delete,
            });
        }
        Ok(self.backend.batch(sealed_ops).await?)
    }

    /// Add term N+1 with a fresh random key, persist the keyring, and make it active.
    pub async fn rotate(&self) -> Result<KeyStatus> {
        let _change = self.keyring_change.lock().await;
        let state = self.unsealed()?;
        let keyring = state.keyring.rotated(now_unix())?;
        let mut ops = vec![Op::Put {
            key: KEYRING_PATH.to_owned(),
            value: keyring.seal_with_root(&state.root)?,
        }];
        // A rekey's record moves to the new term with the keyring, in the same batch.
        if self.backend.get(ROOT_KEY_UPGRADE_PATH).await?.is_some() {
            ops.push(root_key_record(&keyring, &state.root_key)?);
        }
        self.backend.batch(ops).await?;
        let active = keyring.active();
        let status = KeyStatus {
            term: active.term(),
            install_time_unix: active.install_time_unix,
            encryptions: self.encryptions.load(Ordering::Relaxed),
        };
        let next = Arc::new(Unsealed {
            root: Arc::clone(&state.root),
            root_key: Arc::clone(&state.root_key),
            keyring,
        });
        {
            let mut current = self.state.write().unwrap_or_else(PoisonError::into_inner);
            // Sealed meanwhile: the new term is persisted and loads at the next unseal.
            if current.is_some() {
                *current = Some(next);
            }
        }
        tracing::info!(term = status.term, "barrier key rotated");
        Ok(status)
    }

    /// Replace the root key (rekey): re-encrypt the current keyring under `new_root_key` and
    /// commit it together with the `extra` plaintext physical ops (the seal adds its new
    /// configuration) and the new root key under the active term ([`ROOT_KEY_UPGRADE_PATH`])
    /// in one atomic backend batch, then keep using the new root key in memory.
    ///
    /// The keyring terms are unchanged, so no data is re-encrypted. A crash leaves either the
    /// old keyring and ops or the new ones on disk, never a mix. Needs the barrier unsealed.
    pub async fn rekey_root(&self, new_root_key: &[u8], extra: Vec<Op>) -> Result<()> {
        for op in &extra {
            refuse_reserved(op.key())?;
        }
        let root = root_cipher(new_root_key)?;
        let _change = self.keyring_change.lock().await;
        let state = self.unsealed()?;
        let mut ops = extra;
        ops.push(Op::Put {
            key: KEYRING_PATH.to_owned(),
            value: state.keyring.seal_with_root(&root)?,
        });
        ops.push(root_key_record(&state.keyring, new_root_key)?);
        self.backend.batch(ops).await?;
        let next = Arc::new(Unsealed {
            root: Arc::new(root),
            root_key: Arc::new(Zeroizing::new(new_root_key.to_vec())),
            keyring: state.keyring.clone(),
        });
        {
            let mut current = self.state.write().unwrap_or_else(PoisonError::into_inner);
            // Sealed meanwhile: the new root key is persisted and opens the next unseal.
            if current.is_some() {
                *current = Some(next);
            }
        }
        tracing::info!("barrier root key replaced (rekey)");
        Ok(())
    }

    /// A copy of the root key while unsealed (DR activation bundles carry it so a secondary
    /// can stay unsealed on the primary's keyring). `Sealed` otherwise.
    pub fn root_key(&self) -> Result<Zeroizing<Vec<u8>>> {
        let state = self.unsealed()?;
        Ok(Zeroizing::new(state.root_key.to_vec()))
    }

    pub fn key_status(&self) -> Result<KeyStatus> {
        let state = self.unsealed()?;
        let active = state.keyring.active();
        Ok(KeyStatus {
            term: active.term(),
            install_time_unix: active.install_time_unix,
            encryptions: self.encryptions.load(Ordering::Relaxed),
        })
    }

    /// Encrypt a standalone blob (e.g. a batch token) in the barrier format.
    pub fn encrypt(&self, aad: &str, plaintext: &[u8]) -> Result<Vec<u8>> {
        refuse_reserved(aad)?;
        let state = self.unsealed()?;
        self.encrypt_with(&state, aad, plaintext)
    }

    /// Decrypt a blob made by [`Barrier::encrypt`] with the same `aad`.
    pub fn decrypt(&self, aad: &str, ciphertext: &[u8]) -> Result<Vec<u8>> {
        refuse_reserved(aad)?;
        let state = self.unsealed()?;
        let mut plaintext = state.keyring.decrypt(aad, ciphertext)?;
        Ok(std::mem::take(&mut *plaintext))
    }

    /// Re-read the keyring from storage with the in-memory root key, e.g. after a replicated
    /// rotation wrote a new keyring record underneath this node.
    ///
    /// If the stored keyring is no longer under the in-memory root key (a rekey replicated
    /// from a DR primary), the keys in memory are stale: the barrier seals itself and returns
    /// `InvalidRootKey`; the new key shares open it again.
    pub async fn reload_keyring(&self) -> Result<()> {
        let _change = self.keyring_change.lock().await;
        self.reload_keyring_locked(false).await
    }

    /// [`Barrier::reload_keyring`] for a node that shares its storage with others (an HA
    /// standby taking the lock): when another node rekeyed, the new root key is read from
    /// [`ROOT_KEY_UPGRADE_PATH`] with the terms in memory and kept if it opens the stored
    /// keyring. A node that cannot follow (the record is under a term it never loaded: a
    /// rotation came between its unseal and the rekey) seals itself as `reload_keyring` does.
    pub async fn reload_keyring_following_rekey(&self) -> Result<()> {
        let _change = self.keyring_change.lock().await;
        self.reload_keyring_locked(true).await
    }

    /// The unsealed state under the root key in [`ROOT_KEY_UPGRADE_PATH`], read with the
    /// terms of `previous`.
    async fn adopt_rekeyed_root(&self, previous: &Unsealed) -> Result<Unsealed> {
        let sealed = self
            .backend
            .get(ROOT_KEY_UPGRADE_PATH)
            .await?
            .ok_or(BarrierError::InvalidRootKey)?;
        let root_key = previous
            .keyring
            .decrypt(ROOT_KEY_UPGRADE_PATH, &sealed)
            .map_err(|_| BarrierError::InvalidRootKey)?;
        let root = root_cipher(&root_key)?;
        let keyring = self.load_keyring(&root).await?;
        Ok(Unsealed {
            root: Arc::new(root),
            root_key: Arc::new(root_key),
            keyring,
        })
    }

    /// [`Barrier::reload_keyring`] by the holder of the keyring (a restore, right after it
    /// committed the keyring it computed, before any rotation may run).
    pub async fn reload_keyring_held(&self, _held: &KeyringHeld<'_>) -> Result<()> {
        self.reload_keyring_locked(false).await
    }

    async fn reload_keyring_locked(&self, follow_rekey: bool) -> Result<()> {
        let state = self.unsealed()?;
        let next = match self.load_keyring(&state.root).await {
            Ok(keyring) => Unsealed {
                root: Arc::clone(&state.root),
                root_key: Arc::clone(&state.root_key),
                keyring,
            },
            Err(BarrierError::InvalidRootKey) => {
                let adopted = match follow_rekey {
                    true => match self.adopt_rekeyed_root(&state).await {
                        // The storage failed, not the keys: nothing to conclude yet.
                        Err(e @ BarrierError::Storage(_)) => return Err(e),
                        other => other.map_err(|e| {
                            tracing::warn!(error = %e, "the root key of a rekey made on another node could not be read");
                            BarrierError::InvalidRootKey
                        }),
                    },
                    false => Err(BarrierError::InvalidRootKey),
                };
                match adopted {
                    Ok(next) => {
                        tracing::info!(
                            "the stored keyring is under a new root key (rekeyed on another node); following it"
                        );
                        next
                    }
                    Err(e) => {
                        drop(state);
                        self.replace_state(None);
                        tracing::warn!(
                            "the stored keyring is under a new root key (rekeyed); barrier sealed"
                        );
                        return Err(e);
                    }
                }
            }
            Err(e) => return Err(e),
        };
        let mut current = self.state.write().unwrap_or_else(PoisonError::into_inner);
        if current.is_some() {
            *current = Some(Arc::new(next));
        }
        Ok(())
    }

    fn encrypt_with(&self, state: &Unsealed, aad: &str, plaintext: &[u8]) -> Result<Vec<u8>> {
        let sealed = seal_active(&state.keyring, aad, plaintext)?;
        self.encryptions.fetch_add(1, Ordering::Relaxed);
        Ok(sealed)
    }

    async fn load_keyring(&self, root: &TermCipher) -> Result<Keyring> {
        let stored = self
            .backend
            .get(KEYRING_PATH)
            .await?
            .ok_or(BarrierError::NotInitialized)?;
        Keyring::open_with_root(root, &stored)
    }

    fn snapshot(&self) -> Option<Arc<Unsealed>> {
        self.state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn unsealed(&self) -> Result<Arc<Unsealed>> {
        self.snapshot().ok_or(BarrierError::Sealed)
    }

    fn replace_state(&self, next: Option<Arc<Unsealed>>) -> Option<Arc<Unsealed>> {
        let mut current = self.state.write().unwrap_or_else(PoisonError::into_inner);
        std::mem::replace(&mut *current, next)
    }
}
