use std::sync::Arc;

use bunker_barrier::Barrier;
use bunker_storage::Op;
use serde::{de::DeserializeOwned, Serialize};

use super::{LogicalError, Result};

/// A prefixed view of the barrier: a mount sees only its own keys.
#[derive(Clone)]
pub struct StorageView {
    barrier: Arc<Barrier>,
    /// Shared: a view is cloned with its mount on every request.
    prefix: Arc<str>,
}

impl StorageView {
    pub fn new(barrier: Arc<Barrier>, prefix: impl Into<String>) -> Self {
        StorageView {
            barrier,
            prefix: Arc::from(prefix.into()),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A view nested inside this one.
    pub fn sub_view(&self, prefix: &str) -> StorageView {
        StorageView::new(self.barrier.clone(), format!("{}{}", self.prefix, prefix))
    }

    /// `prefix` then `key`, in one allocation (`format!` cost a write 1 % of its CPU here):
    /// for keys that go into a batch, which owns them.
    fn full(&self, key: &str) -> String {
        [&*self.prefix, key].concat()
    }

    /// `prefix` then `key`, for a call that only borrows it: inline when short.
    fn joined(&self, key: &str) -> JoinedKey {
        JoinedKey::new(&self.prefix, key)
    }

    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.barrier.get(self.joined(key).as_str()?).await?)
    }

    /// Whether `key` holds a value ([`bunker_barrier::Barrier::exists`]: not decrypted).
    pub async fn exists(&self, key: &str) -> Result<bool> {
        Ok(self.barrier.exists(self.joined(key).as_str()?).await?)
    }

    pub async fn put(&self, key: &str, value: &[u8]) -> Result<()> {
        Ok(self.barrier.put(self.joined(key).as_str()?, value).await?)
    }

    pub async fn delete(&self, key: &str) -> Result<()> {
        Ok(self.barrier.delete(self.joined(key).as_str()?).await?)
    }

    /// Immediate children of `prefix` (relative to this view), Vault LIST semantics.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        Ok(self.barrier.list(self.joined(prefix).as_str()?).await?)
    }

    /// Atomic batch of keys relative to this view.
    pub async fn batch(&self, ops: Vec<Op>) -> Result<()> {
        let ops = ops
            .into_iter()
            .map(|op| match op {
                Op::Put { key, value } => Op::Put {
                    key: self.full(&key),
                    value,
                },
                Op::Delete { key } => Op::Delete {
                    key: self.full(&key),
                },
            })
            .collect();
        Ok(self.barrier.batch(ops).await?)
    }

    pub async fn get_json<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        match self.get(key).await? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| LogicalError::Internal(format!("decoding stored entry {key:?}: {e}"))),
        }
    }

    pub async fn put_json<T: Serialize>(&self, key: &str, value: &T) -> Result<()> {
        let bytes = serde_json::to_vec(value)?;
        self.put(key, &bytes).await
    }

    /// Delete every key under `prefix` (relative), recursively.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<()> {
        let mut stack = vec![prefix.to_owned()];
        while let Some(dir) = stack.pop() {
            for child in self.list(&dir).await? {
                let key = format!("{dir}{child}");
                if child.ends_with('/') {
                    stack.push(key);
                } else {
                    self.delete(&key).await?;
                }
            }
        }
        Ok(())
    }
}

/// The longest joined key kept inline: a mount's prefix (`logical/<uuid>/`, 45 bytes) and a
/// KV path of a few dozen bytes fit with room to spare.
const INLINE_KEY_BYTES: usize = 160;

/// A view's prefix and a key, joined for a read that only borrows the result: inline when it
/// fits (a KV v2 write reads three such keys, each an allocation and a free before), else on
/// the heap. It lives in the read's future, inside the engine's (boxed once, as the
/// `LogicalBackend` call), not on the request's own.
enum JoinedKey {
    Inline {
        bytes: [u8; INLINE_KEY_BYTES],
        len: usize,
    },
    Heap(String),
}

impl JoinedKey {
    fn new(prefix: &str, key: &str) -> JoinedKey {
        let mut bytes = [0; INLINE_KEY_BYTES];
        let parts = bytes
            .split_at_mut_checked(prefix.len())
            .and_then(|(head, rest)| Some((head, rest.get_mut(..key.len())?)));
        let Some((head, tail)) = parts else {
            return JoinedKey::Heap([prefix, key].concat());
        };
        head.copy_from_slice(prefix.as_bytes());
        tail.copy_from_slice(key.as_bytes());
        JoinedKey::Inline {
            bytes,
            len: prefix.len() + key.len(),
        }
    }

    /// The joined key. Two `str`s one after the other are UTF-8, so this does not fail; were
    /// it to, the call fails rather than use another key (an empty prefix lists the root).
    fn as_str(&self) -> Result<&str> {
        match self {
            JoinedKey::Inline { bytes, len } => bytes
                .get(..*len)
                .and_then(|joined| std::str::from_utf8(joined).ok())
                .ok_or_else(|| LogicalError::Internal("joining a storage key".into())),
            JoinedKey::Heap(key) => Ok(key),
        }
    }
}

#[cfg(test)]
mod joined_key_tests {
    use super::*;

    #[test]
    fn a_joined_key_is_the_prefix_then_the_key_inline_or_not() {
        for (prefix, key) in [
            ("logical/3f0c/", "data/a"),
            ("", ""),
            ("p/", "ключ/値"),
            ("logical/3f0c/", &"k".repeat(INLINE_KEY_BYTES - 13)),
            ("logical/3f0c/", &"k".repeat(INLINE_KEY_BYTES - 12)),
            ("logical/3f0c/", &"k".repeat(4096)),
        ] {
            let joined = JoinedKey::new(prefix, key);
            assert_eq!(
                joined.as_str().ok(),
                Some(format!("{prefix}{key}").as_str())
            );
            let fits = prefix.len() + key.len() <= INLINE_KEY_BYTES;
            assert_eq!(matches!(joined, JoinedKey::Inline { .. }), fits, "{key:?}");
        }
    }
}
