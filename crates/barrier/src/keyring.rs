//! The keyring: numbered data-encryption keys ("terms"), and its persisted form.
//!
//! Values are never encrypted with the root key directly. The root key encrypts only the
//! keyring (stored at [`crate::KEYRING_PATH`]) and the keyring's terms encrypt data. This is
//! Vault's design and it buys two things: rotating the data key (`rotate`) is cheap because
//! old values keep decrypting under their old term, and changing the root key (rekey) only
//! re-encrypts one small record. The root key itself is stored only after a rekey, under a
//! term, for HA standbys (see [`crate::ROOT_KEY_UPGRADE_PATH`]).
//!
//! The keyring record uses the same envelope as every other value, with term
//! [`ROOT_TERM`] (0) naming the root key and the path as associated data.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::envelope::{self, TermCipher, KEY_LEN};
use crate::{BarrierError, Result, KEYRING_PATH};

/// The envelope term that marks a value encrypted with the root key.
pub(crate) const ROOT_TERM: u32 = 0;
/// Version of the JSON keyring record.
const KEYRING_VERSION: u32 = 1;

/// One data-encryption key of the keyring.
pub(crate) struct Term {
    pub(crate) install_time_unix: u64,
    key: Zeroizing<[u8; KEY_LEN]>,
    cipher: TermCipher,
}

impl std::fmt::Debug for Term {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Term")
            .field("term", &self.cipher.term())
            .field("install_time_unix", &self.install_time_unix)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl Term {
    fn new(term: u32, key: Zeroizing<[u8; KEY_LEN]>, install_time_unix: u64) -> Result<Self> {
        let cipher = TermCipher::new(term, key.as_slice())
            .ok_or_else(|| BarrierError::Internal("building a keyring term cipher".into()))?;
        Ok(Term {
            install_time_unix,
            key,
            cipher,
        })
    }

    fn generate(term: u32, install_time_unix: u64) -> Result<Self> {
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        aws_lc_rs::rand::fill(key.as_mut_slice())
            .map_err(|_| BarrierError::Internal("generating a data-encryption key".into()))?;
        Term::new(term, key, install_time_unix)
    }

    pub(crate) fn term(&self) -> u32 {
        self.cipher.term()
    }

    pub(crate) fn cipher(&self) -> &TermCipher {
        &self.cipher
    }
}

/// The in-memory keyring: the active (highest) term and every older one.
#[derive(Debug, Clone)]
pub(crate) struct Keyring {
    active: Arc<Term>,
    previous: Vec<Arc<Term>>,
}

impl Keyring {
    /// A fresh keyring holding term 1.
    pub(crate) fn initial(now_unix: u64) -> Result<Self> {
        Ok(Keyring {
            active: Arc::new(Term::generate(1, now_unix)?),
            previous: Vec::new(),
        })
    }

    pub(crate) fn active(&self) -> &Term {
        &self.active
    }

    pub(crate) fn term(&self, term: u32) -> Option<&Term> {
        if self.active.term() == term {
            return Some(&self.active);
        }
        self.previous
            .iter()
            .map(|t| t.as_ref())
            .find(|t| t.term() == term)
    }

    /// A new keyring whose active term is one above the current one.
    pub(crate) fn rotated(&self, now_unix: u64) -> Result<Self> {
        let next =
            self.active.term().checked_add(1).ok_or_else(|| {
                BarrierError::Internal("rotating: key term space exhausted".into())
            })?;
        let mut previous = self.previous.clone();
        previous.push(Arc::clone(&self.active));
        Ok(Keyring {
            active: Arc::new(Term::generate(next, now_unix)?),
            previous,
        })
    }

    /// The keyring a snapshot restore installs: the snapshot's terms (`self`), plus every term
    /// of `current` above the snapshot's newest. A restore thus never forgets a key that
    /// encrypted something still stored or written meanwhile (the DR primary's sealed keys, a
    /// write racing the restore), and never makes an older term active again after a rotation.
    /// `None` when `current` has no such term: the snapshot's record is installed as it is.
    /// Also returns the terms kept, and whether a term of `current` at or below the
    /// snapshot's newest is lost anyway: the snapshot lacks it or holds that number with
    /// another key (histories that diverged after an earlier restore).
    pub(crate) fn restored_over(&self, current: &Keyring) -> (Option<Keyring>, Vec<u32>, bool) {
        let newest = self.active.term();
        let all = || {
            current
                .previous
                .iter()
                .chain(std::iter::once(&current.active))
        };
        let forgets = all()
            .filter(|t| t.term() <= newest)
            .any(|t| self.term(t.term()).is_none_or(|s| *s.key != *t.key));
        let mut newer: Vec<Arc<Term>> = all().filter(|t| t.term() > newest).cloned().collect();
        newer.sort_by_key(|t| t.term());
        let kept = newer.iter().map(|t| t.term()).collect();
        let Some(active) = newer.pop() else {
            return (None, kept, forgets);
        };
        let mut previous = self.previous.clone();
        previous.push(Arc::clone(&self.active));
        previous.extend(newer);
        (Some(Keyring { active, previous }), kept, forgets)
    }

    /// Decrypt a barrier value with the term named in its envelope.
    pub(crate) fn decrypt(&self, aad: &str, stored: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        let envelope = envelope::parse(stored).map_err(|r| BarrierError::corrupt(aad, r))?;
        let term = self.term(envelope.term).ok_or_else(|| {
            BarrierError::corrupt(aad, format!("unknown key term {}", envelope.term))
        })?;
        term.cipher()
            .open(aad.as_bytes(), &envelope)
            .ok_or_else(|| BarrierError::corrupt(aad, "authentication failed"))
    }

    /// Encrypt the keyring under the root key, ready to store at [`KEYRING_PATH`].
    pub(crate) fn seal_with_root(&self, root: &TermCipher) -> Result<Vec<u8>> {
        let mut terms: Vec<StoredTerm> = self
            .previous
            .iter()
            .chain(std::iter::once(&self.active))
            .map(|t| StoredTerm {
                term: t.term(),
                install_time_unix: t.install_time_unix,
                key: *t.key,
            })
            .collect();
        terms.sort_by_key(|t| t.term);
        let record = StoredKeyring {
            version: KEYRING_VERSION,
            terms,
        };
        let json = Zeroizing::new(
            serde_json::to_vec(&record)
                .map_err(|e| BarrierError::Internal(format!("encoding the keyring: {e}")))?,
        );
        root.seal(KEYRING_PATH.as_bytes(), &json)
            .map_err(|what| BarrierError::Internal(format!("{what} (keyring)")))
    }

    /// Decrypt a stored keyring record with the root key.
    ///
    /// An authentication failure means the root key is wrong: `InvalidRootKey`. A record that
    /// is malformed, or authentic but unparseable, is `Corrupt`.
    pub(crate) fn open_with_root(root: &TermCipher, stored: &[u8]) -> Result<Self> {
        let envelope =
            envelope::parse(stored).map_err(|r| BarrierError::corrupt(KEYRING_PATH, r))?;
        if envelope.term != ROOT_TERM {
            return Err(BarrierError::corrupt(
                KEYRING_PATH,
                format!(
                    "keyring is sealed with term {}, not the root key",
                    envelope.term
                ),
            ));
        }
        let json = root
            .open(KEYRING_PATH.as_bytes(), &envelope)
            .ok_or(BarrierError::InvalidRootKey)?;
        let record: StoredKeyring = serde_json::from_slice(&json)
            .map_err(|e| BarrierError::corrupt(KEYRING_PATH, format!("decoding keyring: {e}")))?;
        Keyring::from_record(&record)
    }

    fn from_record(record: &StoredKeyring) -> Result<Self> {
        let bad = |reason: String| BarrierError::corrupt(KEYRING_PATH, reason);
        if record.version != KEYRING_VERSION {
            return Err(bad(format!(
                "unsupported keyring version {}",
                record.version
            )));
        }
        let mut terms = Vec::with_capacity(record.terms.len());
        for stored in &record.terms {
            if stored.term == ROOT_TERM {
                return Err(bad("keyring contains reserved term 0".into()));
            }
            if terms.iter().any(|t: &Arc<Term>| t.term() == stored.term) {
                return Err(bad(format!("keyring repeats term {}", stored.term)));
            }
            let key = Zeroizing::new(stored.key);
            terms.push(Arc::new(Term::new(
                stored.term,
                key,
                stored.install_time_unix,
            )?));
        }
        terms.sort_by_key(|t| t.term());
        let active = terms
            .pop()
            .ok_or_else(|| bad("keyring has no terms".into()))?;
        Ok(Keyring {
            active,
            previous: terms,
        })
    }
}

/// The JSON record of the keyring (only ever stored encrypted under the root key).
#[derive(Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
struct StoredKeyring {
    version: u32,
    terms: Vec<StoredTerm>,
}

#[derive(Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
struct StoredTerm {
    term: u32,
    install_time_unix: u64,
    key: [u8; KEY_LEN],
}
