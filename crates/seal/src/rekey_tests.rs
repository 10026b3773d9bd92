#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use bunker_barrier::{Barrier, BarrierError};
use zeroize::Zeroizing;

use super::*;

async fn unsealed_seal(shares: u8, threshold: u8) -> (Seal, Vec<Zeroizing<Vec<u8>>>) {
    let seal = Seal::new(Arc::new(Barrier::new(Arc::new(
        bunker_storage::InmemBackend::new(),
    ))));
    let keys = seal.initialize(shares, threshold).await.unwrap().keys;
    for key in keys.iter().take(usize::from(threshold)) {
        seal.submit_unseal_key(key).await.unwrap();
    }
    assert!(!seal.barrier().is_sealed());
    seal.barrier().put("data/x", b"kept").await.unwrap();
    (seal, keys)
}

fn request(shares: u8, threshold: u8, verify: bool) -> RekeyRequest {
    RekeyRequest {
        secret_shares: shares,
        secret_threshold: threshold,
        require_verification: verify,
    }
}

fn bad_message<T: std::fmt::Debug>(result: Result<T>) -> String {
    match result {
        Err(SealError::BadInput(m)) => m,
        other => panic!("expected BadInput, got {other:?}"),
    }
}

/// Seal, then check that `keys` (the first `threshold`) unseal and the data is intact.
async fn assert_unseals_with(seal: &Seal, keys: &[Zeroizing<Vec<u8>>], threshold: u8) {
    seal.seal();
    for key in keys.iter().take(usize::from(threshold)) {
        seal.submit_unseal_key(key).await.unwrap();
    }
    assert!(!seal.barrier().is_sealed(), "the keys must unseal");
    assert_eq!(
        seal.barrier().get("data/x").await.unwrap().as_deref(),
        Some(&b"kept"[..])
    );
}

/// Seal, then check that a quorum (for the stored threshold) of `keys` is refused.
async fn assert_refused(seal: &Seal, keys: &[Zeroizing<Vec<u8>>]) {
    seal.seal();
    let threshold = seal.config().await.unwrap().unwrap().secret_threshold;
    assert!(keys.len() >= usize::from(threshold));
    let mut last = None;
    for key in keys.iter().take(usize::from(threshold)) {
        last = Some(seal.submit_unseal_key(key).await);
    }
    assert!(
        matches!(last, Some(Err(SealError::InvalidKey(_)))),
        "old keys must be refused: {last:?}"
    );
    assert!(seal.barrier().is_sealed());
}

async fn complete(seal: &Seal, keys: &[Zeroizing<Vec<u8>>], nonce: &str) -> RekeyResult {
    let mut last = None;
    for key in keys {
        last = Some(seal.rekey_update(key, nonce).await.unwrap());
    }
    match last {
        Some(RekeyUpdate::Complete(result)) => result,
        other => panic!("expected completion, got {other:?}"),
    }
}

#[tokio::test]
async fn rekey_replaces_the_shares_and_the_root_key() {
    let (seal, old_keys) = unsealed_seal(5, 3).await;
    let old_root = seal.barrier().root_key().unwrap();
    let idle = seal.rekey_status().await.unwrap();
    assert_eq!(
        idle,
        RekeyStatus {
            required: 3,
            ..RekeyStatus::default()
        }
    );

    let started = seal.rekey_init(&request(3, 2, false)).await.unwrap();
    assert!(started.started);
    assert_eq!(started.nonce.len(), 36);
    assert_eq!((started.new_shares, started.new_threshold), (3, 2));
    assert_eq!((started.progress, started.required), (0, 3));

    let first = seal
        .rekey_update(&old_keys[4], &started.nonce)
        .await
        .unwrap();
    assert!(matches!(&first, RekeyUpdate::Pending(s) if s.progress == 1));
    let result = complete(&seal, &old_keys[1..3], &started.nonce).await;
    assert_eq!(result.nonce, started.nonce);
    assert_eq!(result.keys.len(), 3);
    assert!(result.keys.iter().all(|k| k.len() == 33));
    assert!(!result.verification_required && result.verification_nonce.is_empty());
    assert!(
        !format!("{result:?}").contains('['),
        "keys must not be shown"
    );

    // Done: no rekey in progress, the new configuration is stored, a new root key is in use.
    assert!(!seal.rekey_status().await.unwrap().started);
    let config = seal.config().await.unwrap().unwrap();
    assert_eq!((config.secret_shares, config.secret_threshold), (3, 2));
    assert_ne!(*seal.barrier().root_key().unwrap(), *old_root);

    assert_refused(&seal, &old_keys).await;
    assert_unseals_with(&seal, &result.keys[1..], 2).await;
}

#[tokio::test]
async fn verification_keeps_the_old_shares_until_the_new_ones_come_back() {
    let (seal, old_keys) = unsealed_seal(3, 2).await;
    let nonce = seal.rekey_init(&request(2, 2, true)).await.unwrap().nonce;
    let result = complete(&seal, &old_keys[..2], &nonce).await;
    assert!(result.verification_required);
    assert_eq!(result.verification_nonce.len(), 36);
    let new_keys = result.keys;

    let status = seal.rekey_status().await.unwrap();
    assert!(status.started && status.verification_required);
    assert_eq!(status.verification_nonce, result.verification_nonce);
    let message = bad_message(seal.rekey_update(&old_keys[2], &nonce).await);
    assert!(
        message.contains("verification must be performed"),
        "{message}"
    );
    let config = seal.config().await.unwrap().unwrap();
    assert_eq!(config.secret_threshold, 2);
    assert_eq!(config.secret_shares, 3, "not active before verification");

    // Wrong nonce: refused, nothing counted.
    let message = bad_message(seal.rekey_verify(&new_keys[0], &nonce).await);
    assert!(message.starts_with("incorrect nonce supplied"), "{message}");
    let v = seal.rekey_verify_status().await.unwrap();
    assert!(v.started);
    assert_eq!((v.progress, v.new_shares, v.new_threshold), (0, 2, 2));

    // Old shares have the right length but rebuild the old key: verification starts over
    // under a new nonce.
    let vnonce = v.nonce.clone();
    seal.rekey_verify(&old_keys[0], &vnonce).await.unwrap();
    let message = bad_message(seal.rekey_verify(&old_keys[1], &vnonce).await);
    assert_eq!(
        message,
        "rekey verification failed; incorrect key shares supplied"
    );
    let v = seal.rekey_verify_status().await.unwrap();
    assert_ne!(v.nonce, vnonce);
    assert_eq!(v.progress, 0);

    // Restart drops progress and changes the nonce again.
    seal.rekey_verify(&new_keys[0], &v.nonce).await.unwrap();
    let restarted = seal.rekey_verify_restart().await.unwrap();
    assert_eq!(restarted.progress, 0);
    assert_ne!(restarted.nonce, v.nonce);

    // Old shares still unseal while the new ones wait; sealing forgets the pending rekey.
    assert_unseals_with(&seal, &old_keys[1..], 2).await;
    assert!(!seal.rekey_status().await.unwrap().started);
}

#[tokio::test]
async fn verified_rekey_activates_the_new_shares() {
    let (seal, old_keys) = unsealed_seal(3, 2).await;
    let nonce = seal.rekey_init(&request(5, 3, true)).await.unwrap().nonce;
    let result = complete(&seal, &old_keys[1..], &nonce).await;
    let vnonce = result.verification_nonce.clone();
    let mut last = None;
    for key in &result.keys[2..] {
        last = Some(seal.rekey_verify(key, &vnonce).await.unwrap());
    }
    assert_eq!(last, Some(VerifyUpdate::Complete { nonce: vnonce }));
    assert!(matches!(
        seal.rekey_verify_status().await,
        Err(SealError::BadInput(_))
    ));
    let config = seal.config().await.unwrap().unwrap();
    assert_eq!((config.secret_shares, config.secret_threshold), (5, 3));
    assert_refused(&seal, &old_keys).await;
    assert_unseals_with(&seal, &result.keys, 3).await;
}

#[tokio::test]
async fn bad_input_changes_nothing() {
    let (seal, old_keys) = unsealed_seal(5, 3).await;
    let foreign = unsealed_seal(5, 3).await.1;
    assert!(bad_message(seal.rekey_update(&old_keys[0], "n").await).contains("no barrier rekey"));
    assert_eq!(
        bad_message(seal.rekey_init(&request(2, 3, false)).await),
        "provided threshold greater than the total shares"
    );
    assert!(matches!(
        seal.rekey_init(&request(3, 1, false)).await,
        Err(SealError::InvalidConfig(m)) if m.starts_with("invalid rekey seal configuration")
    ));

    let nonce = seal.rekey_init(&request(3, 2, false)).await.unwrap().nonce;
    assert_eq!(
        bad_message(seal.rekey_init(&request(3, 2, false)).await),
        "rekey already in progress"
    );
    seal.rekey_update(&old_keys[0], &nonce).await.unwrap();
    let message = bad_message(seal.rekey_update(&old_keys[1], "wrong").await);
    assert!(message.starts_with("incorrect nonce supplied"), "{message}");
    assert!(bad_message(seal.rekey_update(&old_keys[0], &nonce).await).contains("already"));
    assert!(matches!(
        seal.rekey_update(&old_keys[1][..20], &nonce).await,
        Err(SealError::InvalidKey(_))
    ));
    assert_eq!(seal.rekey_status().await.unwrap().progress, 1);

    // A quorum that is not the root key: refused, the rekey stays with no progress.
    seal.rekey_update(&foreign[1], &nonce).await.unwrap();
    assert!(matches!(
        seal.rekey_update(&foreign[2], &nonce).await,
        Err(SealError::InvalidKey(m)) if m.starts_with("root key verification failed")
    ));
    let status = seal.rekey_status().await.unwrap();
    assert!(status.started);
    assert_eq!(
        (status.progress, status.nonce.as_str()),
        (0, nonce.as_str())
    );
    let config = seal.config().await.unwrap().unwrap();
    assert_eq!(config.secret_shares, 5);

    seal.rekey_cancel().await.unwrap();
    assert!(!seal.rekey_status().await.unwrap().started);

    seal.seal();
    assert!(matches!(
        seal.rekey_status().await,
        Err(SealError::Barrier(BarrierError::Sealed))
    ));
    assert!(matches!(
        seal.rekey_init(&request(3, 2, false)).await,
        Err(SealError::Barrier(BarrierError::Sealed))
    ));
    assert_unseals_with(&seal, &old_keys, 3).await;
}

#[tokio::test]
async fn rekey_to_a_single_share() {
    let (seal, old_keys) = unsealed_seal(3, 2).await;
    let nonce = seal.rekey_init(&request(1, 1, false)).await.unwrap().nonce;
    let result = complete(&seal, &old_keys[..2], &nonce).await;
    assert_eq!(result.keys.len(), 1);
    assert_eq!(result.keys[0].len(), 32);
    assert_unseals_with(&seal, &result.keys, 1).await;
}

#[tokio::test]
async fn verification_quorum_that_does_not_combine_starts_over() {
    let (seal, old_keys) = unsealed_seal(3, 2).await;
    let nonce = seal.rekey_init(&request(3, 2, true)).await.unwrap().nonce;
    let result = complete(&seal, &old_keys[..2], &nonce).await;
    let vnonce = result.verification_nonce.clone();
    seal.rekey_verify(&result.keys[0], &vnonce).await.unwrap();
    // A wrong length is refused without touching progress or nonce.
    assert!(matches!(
        seal.rekey_verify(&result.keys[1][..32], &vnonce).await,
        Err(SealError::InvalidKey(_))
    ));
    let v = seal.rekey_verify_status().await.unwrap();
    assert_eq!((v.progress, v.nonce.as_str()), (1, vnonce.as_str()));
    // Same x coordinate as the first share: the shares do not combine.
    let mut twin = result.keys[0].clone();
    twin[0] ^= 0x01;
    assert!(matches!(
        seal.rekey_verify(&twin, &vnonce).await,
        Err(SealError::InvalidKey(_))
    ));
    let v = seal.rekey_verify_status().await.unwrap();
    assert_eq!(v.progress, 0);
    assert_ne!(v.nonce, vnonce);
    let mut last = None;
    for key in &result.keys[1..] {
        last = Some(seal.rekey_verify(key, &v.nonce).await.unwrap());
    }
    assert!(matches!(last, Some(VerifyUpdate::Complete { .. })));
    assert_unseals_with(&seal, &result.keys[..2], 2).await;
}
