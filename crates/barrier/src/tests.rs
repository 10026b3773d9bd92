#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bunker_storage::{Backend, Op, StorageError};

use crate::envelope::{HEADER_LEN, TAG_LEN};
use crate::{Barrier, BarrierError, KEYRING_PATH};

/// A tiny in-memory backend, private to these tests.
#[derive(Default)]
struct MemBackend {
    data: Mutex<BTreeMap<String, Vec<u8>>>,
}

impl MemBackend {
    fn raw(&self, key: &str) -> Option<Vec<u8>> {
        self.data.lock().unwrap().get(key).cloned()
    }
    fn set_raw(&self, key: &str, value: Vec<u8>) {
        self.data.lock().unwrap().insert(key.to_owned(), value);
    }
}

#[async_trait]
impl Backend for MemBackend {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.raw(key))
    }
    async fn batch(&self, ops: Vec<Op>) -> Result<(), StorageError> {
        let mut data = self.data.lock().unwrap();
        for op in ops {
            match op {
                Op::Put { key, value } => {
                    data.insert(key, value);
                }
                Op::Delete { key } => {
                    data.remove(&key);
                }
            }
        }
        Ok(())
    }
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let data = self.data.lock().unwrap();
        let mut out: Vec<String> = data
            .keys()
            .filter_map(|k| k.strip_prefix(prefix))
            .map(|rest| match rest.find('/') {
                Some(i) => rest[..=i].to_owned(),
                None => rest.to_owned(),
            })
            .collect();
        out.dedup();
        Ok(out)
    }
    async fn scan(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StorageError> {
        let data = self.data.lock().unwrap();
        Ok(data
            .iter()
            .filter(|(k, _)| k.starts_with(prefix) && after.is_none_or(|a| k.as_str() > a))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}

/// An initialized and unsealed barrier, its root key and its raw backend.
async fn unsealed() -> (Barrier, Vec<u8>, Arc<MemBackend>) {
    let backend = Arc::new(MemBackend::default());
    let barrier = Barrier::new(backend.clone());
    let root = Barrier::generate_root_key();
    barrier.initialize(&root).await.unwrap();
    assert!(barrier.is_sealed(), "initialize must not unseal");
    barrier.unseal(&root).await.unwrap();
    (barrier, root.to_vec(), backend)
}

fn term_of(raw: &[u8]) -> u32 {
    assert_eq!(raw[0], 1, "format version");
    u32::from_be_bytes(raw[1..5].try_into().unwrap())
}

fn assert_corrupt<T: std::fmt::Debug>(result: crate::Result<T>) {
    assert!(
        matches!(result, Err(BarrierError::Corrupt { .. })),
        "expected Corrupt, got {result:?}"
    );
}

#[tokio::test]
async fn round_trip_and_ciphertext_at_rest() {
    let (barrier, _, backend) = unsealed().await;
    barrier.put("secret/a", b"hunter2").await.unwrap();
    assert_eq!(
        barrier.get("secret/a").await.unwrap().as_deref(),
        Some(&b"hunter2"[..])
    );
    assert_eq!(barrier.get("secret/missing").await.unwrap(), None);

    let raw = backend.raw("secret/a").unwrap();
    assert_eq!(raw.len(), HEADER_LEN + b"hunter2".len() + TAG_LEN);
    assert!(!raw.windows(7).any(|w| w == b"hunter2"));

    barrier.put("secret/empty", b"").await.unwrap();
    assert_eq!(barrier.get("secret/empty").await.unwrap(), Some(Vec::new()));

    barrier.delete("secret/a").await.unwrap();
    assert_eq!(barrier.get("secret/a").await.unwrap(), None);
}

#[tokio::test]
async fn values_are_bound_to_their_path() {
    let (barrier, _, backend) = unsealed().await;
    barrier.put("secret/a", b"value a").await.unwrap();
    barrier.put("secret/b", b"value b").await.unwrap();
    let a = backend.raw("secret/a").unwrap();
    let b = backend.raw("secret/b").unwrap();
    backend.set_raw("secret/a", b);
    backend.set_raw("secret/b", a);
    assert_corrupt(barrier.get("secret/a").await);
    assert_corrupt(barrier.get("secret/b").await);

    let blob = barrier.encrypt("token/1", b"payload").unwrap();
    assert_eq!(barrier.decrypt("token/1", &blob).unwrap(), b"payload");
    assert_corrupt(barrier.decrypt("token/2", &blob));
}

#[tokio::test]
async fn short_or_garbled_values_are_corrupt_not_panics() {
    let (barrier, _, backend) = unsealed().await;
    barrier.put("k", b"some value").await.unwrap();
    let good = backend.raw("k").unwrap();

    for len in 0..good.len() {
        backend.set_raw("k", good[..len].to_vec());
        assert_corrupt(barrier.get("k").await);
    }
    for i in 0..good.len() {
        let mut flipped = good.clone();
        flipped[i] ^= 0x01;
        backend.set_raw("k", flipped);
        assert_corrupt(barrier.get("k").await);
    }
    backend.set_raw("k", vec![0xAB; 200]);
    assert_corrupt(barrier.get("k").await);

    // A well-formed envelope naming a term that does not exist.
    let mut unknown_term = good.clone();
    unknown_term[1..5].copy_from_slice(&99u32.to_be_bytes());
    backend.set_raw("k", unknown_term);
    assert_corrupt(barrier.get("k").await);

    for len in 0..good.len() {
        assert_corrupt(barrier.decrypt("k", &good[..len]));
    }
}

#[tokio::test]
async fn sealed_barrier_refuses_everything() {
    let (barrier, root, _) = unsealed().await;
    barrier.put("a", b"1").await.unwrap();
    barrier.seal();
    assert!(barrier.is_sealed());
    assert!(matches!(barrier.get("a").await, Err(BarrierError::Sealed)));
    assert!(matches!(
        barrier.put("a", b"2").await,
        Err(BarrierError::Sealed)
    ));
    assert!(matches!(
        barrier.delete("a").await,
        Err(BarrierError::Sealed)
    ));
    assert!(matches!(barrier.list("").await, Err(BarrierError::Sealed)));
    assert!(matches!(
        barrier.batch(vec![Op::Delete { key: "a".into() }]).await,
        Err(BarrierError::Sealed)
    ));
    assert!(matches!(barrier.rotate().await, Err(BarrierError::Sealed)));
    assert!(matches!(barrier.key_status(), Err(BarrierError::Sealed)));
    assert!(matches!(
        barrier.encrypt("x", b"y"),
        Err(BarrierError::Sealed)
    ));
    assert!(matches!(
        barrier.decrypt("x", b"y"),
        Err(BarrierError::Sealed)
    ));

    // Re-unseal after seal works and the data is intact.
    barrier.unseal(&root).await.unwrap();
    assert!(!barrier.is_sealed());
    assert_eq!(barrier.get("a").await.unwrap().as_deref(), Some(&b"1"[..]));
}

#[tokio::test]
async fn wrong_root_key_is_refused() {
    let barrier = Barrier::new(Arc::new(MemBackend::default()));
    let root = Barrier::generate_root_key();
    assert!(matches!(
        barrier.unseal(&root).await,
        Err(BarrierError::NotInitialized)
    ));
    assert!(!barrier.initialized().await.unwrap());
    barrier.initialize(&root).await.unwrap();
    assert!(barrier.initialized().await.unwrap());
    assert!(matches!(
        barrier.initialize(&root).await,
        Err(BarrierError::AlreadyInitialized)
    ));

    let wrong = Barrier::generate_root_key();
    assert!(matches!(
        barrier.unseal(&wrong).await,
        Err(BarrierError::InvalidRootKey)
    ));
    assert!(matches!(
        barrier.unseal(&root[..31]).await,
        Err(BarrierError::InvalidRootKey)
    ));
    assert!(barrier.is_sealed());

    assert!(matches!(
        barrier.verify_root_key(&wrong).await,
        Err(BarrierError::InvalidRootKey)
    ));
    barrier.verify_root_key(&root).await.unwrap();
    assert!(barrier.is_sealed(), "verify_root_key must not unseal");
}

#[tokio::test]
async fn rotation_keeps_old_values_and_writes_with_new_term() {
    let (barrier, root, backend) = unsealed().await;
    let before = barrier.key_status().unwrap();
    assert_eq!(before.term, 1);
    barrier.put("old", b"written under term 1").await.unwrap();
    assert_eq!(term_of(&backend.raw("old").unwrap()), 1);

    let status = barrier.rotate().await.unwrap();
    assert_eq!(status.term, 2);
    assert_eq!(barrier.key_status().unwrap().term, 2);
    barrier.put("new", b"written under term 2").await.unwrap();
    assert_eq!(term_of(&backend.raw("new").unwrap()), 2);
    assert_eq!(term_of(&backend.raw("old").unwrap()), 1);
    assert_eq!(
        barrier.get("old").await.unwrap().as_deref(),
        Some(&b"written under term 1"[..])
    );

    // The rotated keyring was persisted: after seal/unseal both terms are there, 2 active.
    barrier.seal();
    barrier.unseal(&root).await.unwrap();
    assert_eq!(barrier.key_status().unwrap().term, 2);
    assert_eq!(
        barrier.get("old").await.unwrap().as_deref(),
        Some(&b"written under term 1"[..])
    );
    assert_eq!(
        barrier.get("new").await.unwrap().as_deref(),
        Some(&b"written under term 2"[..])
    );
    // The keyring record itself is sealed with the root key (term 0).
    assert_eq!(term_of(&backend.raw(KEYRING_PATH).unwrap()), 0);
}

#[tokio::test]
async fn keyring_path_is_reserved() {
    let (barrier, _, backend) = unsealed().await;
    let keyring_before = backend.raw(KEYRING_PATH).unwrap();
    let reserved = |r: crate::Result<()>| matches!(r, Err(BarrierError::ReservedPath(_)));
    assert!(reserved(barrier.put(KEYRING_PATH, b"x").await));
    assert!(reserved(barrier.delete(KEYRING_PATH).await));
    assert!(reserved(
        barrier
            .batch(vec![
                Op::Put {
                    key: "fine".into(),
                    value: b"v".to_vec()
                },
                Op::Delete {
                    key: KEYRING_PATH.into()
                },
            ])
            .await
    ));
    assert!(matches!(
        barrier.get(KEYRING_PATH).await,
        Err(BarrierError::ReservedPath(_))
    ));
    assert_eq!(backend.raw(KEYRING_PATH).unwrap(), keyring_before);
    assert_eq!(backend.raw("fine"), None, "a refused batch writes nothing");
}

#[tokio::test]
async fn batch_encrypts_each_put_and_list_passes_through() {
    let (barrier, _, backend) = unsealed().await;
    barrier.put("dir/gone", b"x").await.unwrap();
    barrier
        .batch(vec![
            Op::Put {
                key: "dir/a".into(),
                value: b"alpha".to_vec(),
            },
            Op::Put {
                key: "dir/sub/b".into(),
                value: b"beta".to_vec(),
            },
            Op::Delete {
                key: "dir/gone".into(),
            },
        ])
        .await
        .unwrap();
    assert_eq!(
        barrier.get("dir/a").await.unwrap().as_deref(),
        Some(&b"alpha"[..])
    );
    assert_eq!(
        barrier.get("dir/sub/b").await.unwrap().as_deref(),
        Some(&b"beta"[..])
    );
    assert_eq!(barrier.get("dir/gone").await.unwrap(), None);
    assert_ne!(backend.raw("dir/a").unwrap(), b"alpha");
    assert_eq!(barrier.list("dir/").await.unwrap(), vec!["a", "sub/"]);
}

#[tokio::test]
async fn key_status_counts_encryptions_since_unseal() {
    let (barrier, root, _) = unsealed().await;
    assert_eq!(barrier.key_status().unwrap().encryptions, 0);
    barrier.put("a", b"1").await.unwrap();
    barrier
        .batch(vec![
            Op::Put {
                key: "b".into(),
                value: b"2".to_vec(),
            },
            Op::Put {
                key: "c".into(),
                value: b"3".to_vec(),
            },
        ])
        .await
        .unwrap();
    barrier.encrypt("blob", b"4").unwrap();
    let status = barrier.key_status().unwrap();
    assert_eq!(status.encryptions, 4);
    assert!(status.install_time_unix > 0);
    barrier.seal();
    barrier.unseal(&root).await.unwrap();
    assert_eq!(barrier.key_status().unwrap().encryptions, 0);
}

#[tokio::test]
async fn reload_picks_up_a_keyring_rotated_elsewhere() {
    let (barrier, root, backend) = unsealed().await;
    // A second barrier over the same storage (like a node replaying replicated writes).
    let other = Barrier::new(backend.clone());
    other.unseal(&root).await.unwrap();
    other.rotate().await.unwrap();
    other.put("from-other", b"v").await.unwrap();
    assert_corrupt(barrier.get("from-other").await);
    barrier.reload_keyring().await.unwrap();
    assert_eq!(barrier.key_status().unwrap().term, 2);
    assert_eq!(
        barrier.get("from-other").await.unwrap().as_deref(),
        Some(&b"v"[..])
    );
}

#[tokio::test]
async fn debug_output_redacts_keys() {
    let (barrier, _, _) = unsealed().await;
    let shown = format!("{barrier:?}");
    assert!(shown.contains("active_term: Some(1)"), "{shown}");
    let state = barrier.unsealed().unwrap();
    let term = format!("{:?}", state.keyring.active());
    assert!(term.contains("<redacted>"), "{term}");
    let keyring = format!("{:?}", state.keyring);
    assert!(!keyring.contains("key: ["), "{keyring}");
}
