//! A bounded cache of values decoded from what the barrier decrypted, checked against the
//! stored ciphertext on every read ([`crate::Barrier::get_decoded`]).
//!
//! Design reason: a token is looked up on every request, and decrypting and decoding its entry
//! was about 40 % of the lookup. Caching by key with invalidation would have to catch every
//! path that writes the key (the token store, raw writes, DR replay and promotion, snapshot
//! restores, another HA node); validating instead needs none of them. The stored ciphertext is
//! still read on every lookup (a B-tree lookup), and a cached value is used only when the
//! ciphertext is byte for byte the one it was decoded from: a term's key never changes, the
//! path is the associated data, and each write draws a fresh nonce, so equal ciphertext at the
//! same path decrypts to the same plaintext.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

/// Values of type `T` decoded from ciphertext, by storage key; at most `capacity` of them.
pub struct DecodedCache<T> {
    /// foldhash (randomly seeded), as the storage's read memo: SipHash cost more than the map.
    entries: Mutex<HashMap<String, Cached<T>, foldhash::fast::RandomState>>,
    capacity: usize,
}

struct Cached<T> {
    ciphertext: Vec<u8>,
    value: Arc<T>,
}

impl<T> DecodedCache<T> {
    /// A cache of at most `capacity` values (at least one).
    pub fn new(capacity: usize) -> Self {
        DecodedCache {
            entries: Mutex::new(HashMap::default()),
            capacity: capacity.max(1),
        }
    }

    /// The value decoded from `ciphertext` at `key`, if it is the one cached.
    pub(crate) fn hit(&self, key: &str, ciphertext: &[u8]) -> Option<Arc<T>> {
        let entries = self.lock();
        let cached = entries.get(key)?;
        (cached.ciphertext == ciphertext).then(|| cached.value.clone())
    }

    /// Remembers `value` as decoded from `ciphertext` at `key`. When full, an arbitrary entry
    /// makes room (the map's hash order: no reader can steer which).
    pub(crate) fn insert(&self, key: &str, ciphertext: Vec<u8>, value: Arc<T>) {
        let mut entries = self.lock();
        if entries.len() >= self.capacity && !entries.contains_key(key) {
            if let Some(victim) = entries.keys().next().cloned() {
                entries.remove(&victim);
            }
        }
        entries.insert(key.to_owned(), Cached { ciphertext, value });
    }

    /// Forgets everything (at seal: nothing decrypted outlives the keys).
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// How many values are cached.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, Cached<T>, foldhash::fast::RandomState>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<T> std::fmt::Debug for DecodedCache<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecodedCache")
            .field("len", &self.len())
            .field("capacity", &self.capacity)
            .finish()
    }
}
