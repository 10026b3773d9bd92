#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use bunker_barrier::Barrier;

use crate::{Seal, SealConfig, SealError, SealStatus, SEAL_CONFIG_PATH};

fn new_seal() -> Seal {
    Seal::new(Arc::new(Barrier::new(Arc::new(
        bunker_storage::InmemBackend::new(),
    ))))
}

fn assert_invalid_key<T: std::fmt::Debug>(result: crate::Result<T>) {
    assert!(
        matches!(result, Err(SealError::InvalidKey(_))),
        "expected InvalidKey, got {result:?}"
    );
}

#[tokio::test]
async fn initialize_validates_like_vault() {
    let seal = new_seal();
    let message = |r: crate::Result<crate::InitOutput>| match r {
        Err(SealError::InvalidConfig(m)) => m,
        other => panic!("expected InvalidConfig, got {other:?}"),
    };
    assert_eq!(
        message(seal.initialize(0, 0).await),
        "shares must be at least one"
    );
    assert_eq!(
        message(seal.initialize(3, 0).await),
        "threshold must be at least one"
    );
    assert_eq!(
        message(seal.initialize(3, 1).await),
        "threshold must be greater than one for multiple shares"
    );
    assert_eq!(
        message(seal.initialize(2, 3).await),
        "threshold cannot be larger than shares"
    );
    assert!(!seal.status().await.unwrap().initialized);

    let output = seal.initialize(255, 255).await.unwrap();
    assert_eq!(output.keys.len(), 255);
    assert!(!format!("{output:?}").contains('['));
    assert!(matches!(
        seal.initialize(5, 3).await,
        Err(SealError::AlreadyInitialized)
    ));
}

#[tokio::test]
async fn not_initialized_refuses_unseal_keys() {
    let seal = new_seal();
    assert!(matches!(
        seal.submit_unseal_key(&[1; 33]).await,
        Err(SealError::NotInitialized)
    ));
    assert_eq!(
        seal.status().await.unwrap(),
        SealStatus {
            initialized: false,
            sealed: true,
            threshold: 0,
            shares: 0,
            progress: 0,
            nonce: String::new(),
        }
    );
}

#[tokio::test]
async fn init_unseal_seal_unseal_flow() {
    let seal = new_seal();
    let keys = seal.initialize(5, 3).await.unwrap().keys;
    assert_eq!(keys.len(), 5);
    assert!(keys.iter().all(|k| k.len() == 33));

    // The configuration is plaintext on the physical backend, readable while sealed.
    let raw = seal
        .barrier()
        .backend()
        .get(SEAL_CONFIG_PATH)
        .await
        .unwrap()
        .unwrap();
    let stored: SealConfig = serde_json::from_slice(&raw).unwrap();
    assert_eq!(
        stored,
        SealConfig {
            secret_shares: 5,
            secret_threshold: 3
        }
    );

    let status = seal.status().await.unwrap();
    assert!(status.initialized && status.sealed, "init must not unseal");
    assert_eq!(
        (status.shares, status.threshold, status.progress),
        (5, 3, 0)
    );
    assert_eq!(status.nonce, "");

    let first = seal.submit_unseal_key(&keys[3]).await.unwrap();
    assert_eq!(first.progress, 1);
    assert!(first.sealed);
    assert_eq!(first.nonce.len(), 36);
    // A repeated key is ignored, progress and nonce unchanged.
    let again = seal.submit_unseal_key(&keys[3]).await.unwrap();
    assert_eq!(again, first);
    let second = seal.submit_unseal_key(&keys[0]).await.unwrap();
    assert_eq!(second.progress, 2);
    assert_eq!(second.nonce, first.nonce);
    assert!(
        seal.barrier().is_sealed(),
        "two of three shares must not unseal"
    );

    let done = seal.submit_unseal_key(&keys[4]).await.unwrap();
    assert!(!done.sealed);
    assert_eq!((done.progress, done.nonce.as_str()), (0, ""));
    assert!(!seal.barrier().is_sealed());
    seal.barrier().put("secret/x", b"kept").await.unwrap();

    // Submitting while unsealed just reports status.
    assert_eq!(seal.submit_unseal_key(&keys[1]).await.unwrap(), done);

    seal.seal();
    assert!(seal.status().await.unwrap().sealed);
    for key in [&keys[1], &keys[2], &keys[0]] {
        seal.submit_unseal_key(key).await.unwrap();
    }
    assert!(!seal.barrier().is_sealed());
    assert_eq!(
        seal.barrier().get("secret/x").await.unwrap().as_deref(),
        Some(&b"kept"[..])
    );
}

#[tokio::test]
async fn wrong_share_resets_progress() {
    let seal = new_seal();
    let keys = seal.initialize(5, 3).await.unwrap().keys;
    let foreign = new_seal().initialize(5, 3).await.unwrap().keys;

    // A share of another root key combines to the wrong key: the barrier refuses it.
    seal.submit_unseal_key(&keys[0]).await.unwrap();
    seal.submit_unseal_key(&keys[1]).await.unwrap();
    assert_invalid_key(seal.submit_unseal_key(&foreign[2]).await);
    let status = seal.status().await.unwrap();
    assert!(status.sealed);
    assert_eq!((status.progress, status.nonce.as_str()), (0, ""));

    // A corrupted y byte also yields the wrong key.
    let mut damaged = keys[2].to_vec();
    damaged[5] ^= 0x40;
    seal.submit_unseal_key(&keys[0]).await.unwrap();
    seal.submit_unseal_key(&keys[1]).await.unwrap();
    assert_invalid_key(seal.submit_unseal_key(&damaged).await);
    assert_eq!(seal.status().await.unwrap().progress, 0);

    // Wrong lengths are refused without touching progress.
    seal.submit_unseal_key(&keys[0]).await.unwrap();
    assert_invalid_key(seal.submit_unseal_key(&keys[1][..32]).await);
    assert_invalid_key(seal.submit_unseal_key(&[0u8; 34]).await);
    assert_eq!(seal.status().await.unwrap().progress, 1);

    // And the right shares still work afterwards.
    seal.submit_unseal_key(&keys[1]).await.unwrap();
    assert!(!seal.submit_unseal_key(&keys[2]).await.unwrap().sealed);
}

#[tokio::test]
async fn reset_unseal_discards_progress() {
    let seal = new_seal();
    let keys = seal.initialize(3, 2).await.unwrap().keys;
    seal.submit_unseal_key(&keys[0]).await.unwrap();
    seal.reset_unseal();
    let status = seal.status().await.unwrap();
    assert_eq!((status.progress, status.nonce.as_str()), (0, ""));
    // After the reset one more share is not enough.
    assert!(seal.submit_unseal_key(&keys[1]).await.unwrap().sealed);
    assert!(!seal.submit_unseal_key(&keys[2]).await.unwrap().sealed);
}

#[tokio::test]
async fn single_share_is_the_root_key() {
    let seal = new_seal();
    let keys = seal.initialize(1, 1).await.unwrap().keys;
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].len(), 32);
    seal.barrier().verify_root_key(&keys[0]).await.unwrap();
    assert_invalid_key(seal.submit_unseal_key(&[7u8; 33]).await);
    assert_invalid_key(seal.submit_unseal_key(&[7u8; 32]).await);
    assert!(seal.barrier().is_sealed());
    let status = seal.submit_unseal_key(&keys[0]).await.unwrap();
    assert!(!status.sealed);
    assert_eq!((status.shares, status.threshold), (1, 1));
}
