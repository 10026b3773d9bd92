#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use async_trait::async_trait;
use bunker_storage::{Backend, InmemBackend, Op};

use crate::envelope::{HEADER_LEN, TAG_LEN};
use crate::keyring::Keyring;
use crate::{root_cipher, Barrier, BarrierError, KEYRING_PATH, ROOT_KEY_UPGRADE_PATH};

/// Raw (ciphertext) access to the backend under the barrier.
#[async_trait]
trait RawAccess {
    async fn raw(&self, key: &str) -> Option<Vec<u8>>;
    async fn set_raw(&self, key: &str, value: Vec<u8>);
}

#[async_trait]
impl RawAccess for InmemBackend {
    async fn raw(&self, key: &str) -> Option<Vec<u8>> {
        self.get(key).await.unwrap()
    }
    async fn set_raw(&self, key: &str, value: Vec<u8>) {
        self.put(key, value).await.unwrap()
    }
}

/// An initialized and unsealed barrier, its root key and its raw backend.
async fn unsealed() -> (Barrier, Vec<u8>, Arc<InmemBackend>) {
    let backend = Arc::new(InmemBackend::new());
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

    let raw = backend.raw("secret/a").await.unwrap();
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
    let a = backend.raw("secret/a").await.unwrap();
    let b = backend.raw("secret/b").await.unwrap();
    backend.set_raw("secret/a", b).await;
    backend.set_raw("secret/b", a).await;
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
    let good = backend.raw("k").await.unwrap();

    for len in 0..good.len() {
        backend.set_raw("k", good[..len].to_vec()).await;
        assert_corrupt(barrier.get("k").await);
    }
    for i in 0..good.len() {
        let mut flipped = good.clone();
        flipped[i] ^= 0x01;
        backend.set_raw("k", flipped).await;
        assert_corrupt(barrier.get("k").await);
    }
    backend.set_raw("k", vec![0xAB; 200]).await;
    assert_corrupt(barrier.get("k").await);

    // A well-formed envelope naming a term that does not exist.
    let mut unknown_term = good.clone();
    unknown_term[1..5].copy_from_slice(&99u32.to_be_bytes());
    backend.set_raw("k", unknown_term).await;
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
        barrier.exists("a").await,
        Err(BarrierError::Sealed)
    ));
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
    let barrier = Barrier::new(Arc::new(InmemBackend::new()));
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
    assert_eq!(term_of(&backend.raw("old").await.unwrap()), 1);

    let status = barrier.rotate().await.unwrap();
    assert_eq!(status.term, 2);
    assert_eq!(barrier.key_status().unwrap().term, 2);
    barrier.put("new", b"written under term 2").await.unwrap();
    assert_eq!(term_of(&backend.raw("new").await.unwrap()), 2);
    assert_eq!(term_of(&backend.raw("old").await.unwrap()), 1);
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
    assert_eq!(term_of(&backend.raw(KEYRING_PATH).await.unwrap()), 0);
}

#[tokio::test]
async fn keyring_path_is_reserved() {
    let (barrier, _, backend) = unsealed().await;
    let keyring_before = backend.raw(KEYRING_PATH).await.unwrap();
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
    assert!(matches!(
        barrier.exists(KEYRING_PATH).await,
        Err(BarrierError::ReservedPath(_))
    ));
    assert_eq!(backend.raw(KEYRING_PATH).await.unwrap(), keyring_before);
    assert_eq!(
        backend.raw("fine").await,
        None,
        "a refused batch writes nothing"
    );
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
    assert_ne!(backend.raw("dir/a").await.unwrap(), b"alpha");
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

#[tokio::test]
async fn rekey_root_replaces_the_root_key_atomically() {
    let (barrier, old_root, backend) = unsealed().await;
    barrier.put("a", b"before").await.unwrap();
    barrier.rotate().await.unwrap();
    let new_root = Barrier::generate_root_key();
    let config = Op::Put {
        key: "core/seal-config".into(),
        value: b"new-config".to_vec(),
    };
    // A reserved path among the extra ops is refused and nothing changes.
    let reserved = Op::Put {
        key: KEYRING_PATH.into(),
        value: b"x".to_vec(),
    };
    assert!(matches!(
        barrier.rekey_root(&new_root, vec![reserved]).await,
        Err(BarrierError::ReservedPath(_))
    ));
    barrier.verify_root_key(&old_root).await.unwrap();

    barrier.rekey_root(&new_root, vec![config]).await.unwrap();
    assert_eq!(
        backend.raw("core/seal-config").await.as_deref(),
        Some(&b"new-config"[..])
    );
    assert_eq!(*barrier.root_key().unwrap(), *new_root);
    // Still unsealed, same terms: data stays readable and new writes use the active term.
    assert_eq!(barrier.key_status().unwrap().term, 2);
    assert_eq!(
        barrier.get("a").await.unwrap().as_deref(),
        Some(&b"before"[..])
    );
    barrier.rotate().await.unwrap();

    barrier.seal();
    assert!(matches!(
        barrier.unseal(&old_root).await,
        Err(BarrierError::InvalidRootKey)
    ));
    assert!(barrier.verify_root_key(&old_root).await.is_err());
    barrier.unseal(&new_root).await.unwrap();
    assert_eq!(barrier.key_status().unwrap().term, 3);
    assert_eq!(
        barrier.get("a").await.unwrap().as_deref(),
        Some(&b"before"[..])
    );

    barrier.seal();
    assert!(matches!(
        barrier.rekey_root(&old_root, Vec::new()).await,
        Err(BarrierError::Sealed)
    ));
    barrier.verify_root_key(&new_root).await.unwrap();
}

#[tokio::test]
async fn reload_after_a_rekey_elsewhere_seals() {
    let (barrier, old_root, backend) = unsealed().await;
    barrier.put("a", b"v").await.unwrap();
    // A second barrier over the same storage rekeys (like a DR primary whose writes replay
    // here): the root key in this one's memory is stale.
    let other = Barrier::new(backend.clone());
    other.unseal(&old_root).await.unwrap();
    let new_root = Barrier::generate_root_key();
    other.rekey_root(&new_root, Vec::new()).await.unwrap();
    assert!(matches!(
        barrier.reload_keyring().await,
        Err(BarrierError::InvalidRootKey)
    ));
    assert!(barrier.is_sealed());
    barrier.unseal(&new_root).await.unwrap();
    assert_eq!(barrier.get("a").await.unwrap().as_deref(), Some(&b"v"[..]));
}

#[tokio::test]
async fn a_restored_keyring_keeps_the_terms_newer_than_the_snapshots() {
    let (barrier, root, backend) = unsealed().await;
    barrier.put("old", b"term 1").await.unwrap();
    let snapshot_keyring = backend.raw(KEYRING_PATH).await.unwrap();

    // Same keyring: the snapshot's record is installed byte for byte.
    let held = barrier.hold_keyring().await;
    let same = barrier
        .keyring_for_restore(&held, &snapshot_keyring)
        .unwrap();
    assert_eq!(same.record, snapshot_keyring);
    assert!(same.kept_terms.is_empty() && !same.forgets_term);
    drop(held);

    // Rotated twice since the snapshot: both newer terms are kept and the newest stays active,
    // so what they encrypted (here "new") still opens once the record is installed.
    barrier.rotate().await.unwrap();
    barrier.rotate().await.unwrap();
    barrier.put("new", b"term 3").await.unwrap();
    let held = barrier.hold_keyring().await;
    let restored = barrier
        .keyring_for_restore(&held, &snapshot_keyring)
        .unwrap();
    assert_eq!(restored.kept_terms, vec![2, 3]);
    assert!(!restored.forgets_term);
    drop(held);
    backend
        .batch(vec![Op::Put {
            key: KEYRING_PATH.into(),
            value: restored.record,
        }])
        .await
        .unwrap();
    barrier.seal();
    barrier.unseal(&root).await.unwrap();
    assert_eq!(barrier.key_status().unwrap().term, 3);
    for (key, value) in [("old", &b"term 1"[..]), ("new", &b"term 3"[..])] {
        assert_eq!(barrier.get(key).await.unwrap().as_deref(), Some(value));
    }

    // Another history under the same root key (as after an earlier restore and rotations on
    // both sides): term 3 exists in both with different keys, so the active term is lost.
    let other = Barrier::new(Arc::new(InmemBackend::new()));
    other.initialize(&root).await.unwrap();
    other.unseal(&root).await.unwrap();
    other.rotate().await.unwrap();
    other.rotate().await.unwrap();
    other.rotate().await.unwrap();
    let diverged = other.backend().get(KEYRING_PATH).await.unwrap().unwrap();
    other.seal();
    let held = barrier.hold_keyring().await;
    let clash = barrier.keyring_for_restore(&held, &diverged).unwrap();
    assert!(clash.kept_terms.is_empty());
    assert!(clash.forgets_term);
    // An older diverged snapshot (terms 1 and 2 of the other history): term 3 is kept, but
    // this cluster's terms 1 and 2 are lost, and that is said too.
    let older = Barrier::new(Arc::new(InmemBackend::new()));
    older.initialize(&root).await.unwrap();
    older.unseal(&root).await.unwrap();
    older.rotate().await.unwrap();
    let older_keyring = older.backend().get(KEYRING_PATH).await.unwrap().unwrap();
    let partial = barrier.keyring_for_restore(&held, &older_keyring).unwrap();
    assert_eq!(partial.kept_terms, vec![3]);
    assert!(
        partial.forgets_term,
        "terms below the snapshot's newest differ"
    );
    assert!(matches!(
        barrier.keyring_for_restore(&held, b"not a keyring"),
        Err(BarrierError::Corrupt { .. })
    ));
}

#[tokio::test]
async fn a_node_sharing_the_storage_follows_a_rekey_made_on_another() {
    let (standby, old_root, backend) = unsealed().await;
    standby.put("a", b"v").await.unwrap();
    // The active node (another barrier over the same storage) rekeys.
    let active = Barrier::new(backend.clone());
    active.unseal(&old_root).await.unwrap();
    let new_root = Barrier::generate_root_key();
    active.rekey_root(&new_root, Vec::new()).await.unwrap();
    // Nothing outside the barrier may write or read the record.
    assert!(matches!(
        standby.put(ROOT_KEY_UPGRADE_PATH, b"x").await,
        Err(BarrierError::ReservedPath(_))
    ));
    assert!(matches!(
        standby.get(ROOT_KEY_UPGRADE_PATH).await,
        Err(BarrierError::ReservedPath(_))
    ));

    standby.reload_keyring_following_rekey().await.unwrap();
    assert!(!standby.is_sealed());
    assert_eq!(standby.root_key().unwrap().as_slice(), new_root.as_slice());
    assert_eq!(standby.get("a").await.unwrap().as_deref(), Some(&b"v"[..]));
    // What it writes now opens on the active node, and a fresh unseal needs the new key.
    standby.put("b", b"w").await.unwrap();
    assert_eq!(active.get("b").await.unwrap().as_deref(), Some(&b"w"[..]));
    let fresh = Barrier::new(backend.clone());
    assert!(matches!(
        fresh.unseal(&old_root).await,
        Err(BarrierError::InvalidRootKey)
    ));
    fresh.unseal(&new_root).await.unwrap();
}

#[tokio::test]
async fn a_node_that_never_loaded_the_term_of_a_rekey_seals() {
    let (standby, old_root, backend) = unsealed().await;
    let active = Barrier::new(backend.clone());
    active.unseal(&old_root).await.unwrap();
    // A rotation the standby never loaded, then a rekey: the record is under the new term.
    active.rotate().await.unwrap();
    let new_root = Barrier::generate_root_key();
    active.rekey_root(&new_root, Vec::new()).await.unwrap();
    assert!(matches!(
        standby.reload_keyring_following_rekey().await,
        Err(BarrierError::InvalidRootKey)
    ));
    assert!(standby.is_sealed());
    standby.unseal(&new_root).await.unwrap();
}

#[tokio::test]
async fn the_root_key_record_moves_to_each_new_term_and_only_after_a_rekey() {
    let (barrier, old_root, backend) = unsealed().await;
    barrier.rotate().await.unwrap();
    assert_eq!(
        backend.raw(ROOT_KEY_UPGRADE_PATH).await,
        None,
        "no rekey, no record"
    );
    // Someone copies the keyring record and keeps the old shares; then a rekey.
    let copied = backend.raw(KEYRING_PATH).await.unwrap();
    let new_root = Barrier::generate_root_key();
    barrier.rekey_root(&new_root, Vec::new()).await.unwrap();
    let old_terms = Keyring::open_with_root(&root_cipher(&old_root).unwrap(), &copied).unwrap();
    let record = backend.raw(ROOT_KEY_UPGRADE_PATH).await.unwrap();
    assert_eq!(term_of(&record), 2, "under the active term");
    assert_eq!(
        old_terms
            .decrypt(ROOT_KEY_UPGRADE_PATH, &record)
            .unwrap()
            .as_slice(),
        new_root.as_slice(),
        "the terms the copy holds open it (as Vault's core/master): rekey, then rotate"
    );
    // The rotation moves it to term 3, which the copy never had.
    barrier.rotate().await.unwrap();
    let record = backend.raw(ROOT_KEY_UPGRADE_PATH).await.unwrap();
    assert_eq!(term_of(&record), 3);
    assert!(old_terms.decrypt(ROOT_KEY_UPGRADE_PATH, &record).is_err());
    // Nothing through the barrier reads or writes it, nor uses its associated data.
    assert!(matches!(
        barrier.encrypt(ROOT_KEY_UPGRADE_PATH, b"x"),
        Err(BarrierError::ReservedPath(_))
    ));
    assert!(matches!(
        barrier.decrypt(ROOT_KEY_UPGRADE_PATH, &record),
        Err(BarrierError::ReservedPath(_))
    ));
    assert!(matches!(
        barrier.delete(ROOT_KEY_UPGRADE_PATH).await,
        Err(BarrierError::ReservedPath(_))
    ));
    assert!(matches!(
        barrier
            .batch(vec![Op::Delete {
                key: ROOT_KEY_UPGRADE_PATH.into()
            }])
            .await,
        Err(BarrierError::ReservedPath(_))
    ));
}

#[tokio::test]
async fn a_node_that_reloaded_after_a_rotation_follows_the_rekey_after_it() {
    let (standby, old_root, backend) = unsealed().await;
    let active = Barrier::new(backend.clone());
    active.unseal(&old_root).await.unwrap();
    active.rotate().await.unwrap();
    // The standby's periodic reload picks up term 2 under the root key it holds.
    standby.reload_keyring_following_rekey().await.unwrap();
    let new_root = Barrier::generate_root_key();
    active.rekey_root(&new_root, Vec::new()).await.unwrap();
    standby.reload_keyring_following_rekey().await.unwrap();
    assert_eq!(standby.root_key().unwrap().as_slice(), new_root.as_slice());
    assert_eq!(standby.key_status().unwrap().term, 2);
}

/// `get_decoded` decodes only ciphertext it has not decoded before, whoever wrote the value:
/// through the barrier, or straight into the backend below it (a replayed or restored write),
/// where a value copied from another path still fails to decrypt rather than hitting the cache.
#[tokio::test]
async fn decoded_reads_follow_every_change_of_the_ciphertext() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let (barrier, _, backend) = unsealed().await;
    let cache = crate::DecodedCache::<String>::new(8);
    let decodes = AtomicUsize::new(0);
    let read = |key: &'static str| {
        let (barrier, cache, decodes) = (&barrier, &cache, &decodes);
        async move {
            barrier
                .get_decoded(key, cache, |bytes| {
                    decodes.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, BarrierError>(String::from_utf8(bytes.to_vec()).unwrap())
                })
                .await
                .map(|value| value.map(|value| String::clone(&value)))
        }
    };
    assert_eq!(read("t/a").await.unwrap(), None);
    barrier.put("t/a", b"one").await.unwrap();
    assert_eq!(read("t/a").await.unwrap().as_deref(), Some("one"));
    assert_eq!(read("t/a").await.unwrap().as_deref(), Some("one"));
    assert_eq!(decodes.load(Ordering::SeqCst), 1, "the second read hits");

    // The same plaintext written again is new ciphertext (a fresh nonce): decoded again.
    barrier.put("t/a", b"one").await.unwrap();
    assert_eq!(read("t/a").await.unwrap().as_deref(), Some("one"));
    assert_eq!(decodes.load(Ordering::SeqCst), 2);

    // Written below the barrier (as DR replay or a snapshot restore does).
    barrier.put("t/b", b"two").await.unwrap();
    let from_b = backend.raw("t/b").await.unwrap();
    let earlier = backend.raw("t/a").await.unwrap();
    barrier.put("t/a", b"three").await.unwrap();
    assert_eq!(read("t/a").await.unwrap().as_deref(), Some("three"));
    backend.set_raw("t/a", earlier).await;
    assert_eq!(read("t/a").await.unwrap().as_deref(), Some("one"));
    backend.set_raw("t/a", from_b).await;
    assert_corrupt(read("t/a").await);
    backend.delete("t/a").await.unwrap();
    assert_eq!(read("t/a").await.unwrap(), None);

    // Sealed: refused before the cache is consulted.
    barrier.put("t/c", b"four").await.unwrap();
    assert_eq!(read("t/c").await.unwrap().as_deref(), Some("four"));
    barrier.seal();
    assert!(matches!(read("t/c").await, Err(BarrierError::Sealed)));
}

#[tokio::test]
async fn the_decoded_cache_holds_at_most_its_capacity() {
    let (barrier, _, _) = unsealed().await;
    let cache = crate::DecodedCache::<Vec<u8>>::new(3);
    for i in 0..10 {
        let key = format!("t/{i}");
        barrier.put(&key, &[i]).await.unwrap();
        let value = barrier
            .get_decoded(&key, &cache, |bytes| Ok::<_, BarrierError>(bytes.to_vec()))
            .await
            .unwrap();
        assert_eq!(value.as_deref(), Some(&vec![i]));
        assert!(cache.len() <= 3);
    }
    assert_eq!(cache.len(), 3);
    cache.clear();
    assert!(cache.is_empty());
}

#[tokio::test]
async fn exists_answers_presence_without_decrypting() {
    let (barrier, _, backend) = unsealed().await;
    assert!(!barrier.exists("a").await.unwrap());
    barrier.put("a", b"1").await.unwrap();
    assert!(barrier.exists("a").await.unwrap());
    // A value that would not decrypt is still present: the check does not read it.
    backend
        .set_raw("garbled", b"not a sealed value".to_vec())
        .await;
    assert!(barrier.exists("garbled").await.unwrap());
    assert!(barrier.get("garbled").await.is_err());
    barrier.delete("a").await.unwrap();
    assert!(!barrier.exists("a").await.unwrap());
}
