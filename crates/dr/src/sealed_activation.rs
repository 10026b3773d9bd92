//! Activation without reaching the primary's API (`generate-public-key` +
//! `secondary_public_key`): the secondary makes an X25519 key pair and hands its public key to
//! the primary's operator; the primary encrypts the bundle to it (ephemeral X25519, SHA-256 KDF,
//! AES-256-GCM) and returns it directly instead of wrapping it. The private key lives only in
//! the secondary's memory and is consumed by a successful `enable`, so such a token works once.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::agreement::{agree, PrivateKey, UnparsedPublicKey, X25519};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::activation::Bundle;
use crate::ReplError;

pub const PREFIX: &str = "bdr1e.";
const KDF_LABEL: &[u8] = b"bunker-dr-activation-v1";

#[derive(Serialize, Deserialize)]
struct Envelope {
    /// Ephemeral public key of the primary.
    epk: String,
    nonce: String,
    ciphertext: String,
}

#[derive(Serialize, Deserialize)]
struct Sealed {
    bundle: Bundle,
    expires_unix: u64,
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
}

fn bad(msg: &str) -> ReplError {
    ReplError::BadRequest(msg.to_owned())
}

fn derive_key(shared: &[u8], epk: &[u8], spk: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(KDF_LABEL);
    h.update(shared);
    h.update(epk);
    h.update(spk);
    h.finalize().into()
}

/// A fresh key pair for the secondary; returns the private key and the public key (base64url).
pub fn generate_keypair() -> Result<(PrivateKey, String), ReplError> {
    let private = PrivateKey::generate(&X25519)
        .map_err(|_| ReplError::Internal("generating an X25519 key".into()))?;
    let public = private
        .compute_public_key()
        .map_err(|_| ReplError::Internal("computing an X25519 public key".into()))?;
    Ok((private, b64().encode(public.as_ref())))
}

/// Primary side: encrypt `bundle` to the secondary's public key.
pub fn seal(
    bundle: &Bundle,
    secondary_public_key: &str,
    expires_unix: u64,
) -> Result<String, ReplError> {
    let spk = b64()
        .decode(secondary_public_key.trim())
        .or_else(|_| base64::engine::general_purpose::STANDARD.decode(secondary_public_key.trim()))
        .map_err(|_| bad("secondary_public_key is not valid base64"))?;
    if spk.len() != 32 {
        return Err(bad(
            "secondary_public_key must be a 32-byte X25519 public key",
        ));
    }
    let ephemeral = PrivateKey::generate(&X25519)
        .map_err(|_| ReplError::Internal("generating an X25519 key".into()))?;
    let epk = ephemeral
        .compute_public_key()
        .map_err(|_| ReplError::Internal("computing an X25519 public key".into()))?;
    let key = agree(
        &ephemeral,
        UnparsedPublicKey::new(&X25519, &spk),
        bad("secondary_public_key is not a usable X25519 key"),
        |shared| Ok(derive_key(shared, epk.as_ref(), &spk)),
    )?;
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| ReplError::Internal("random nonce".into()))?;
    let aead = LessSafeKey::new(
        UnboundKey::new(&AES_256_GCM, &key).map_err(|_| ReplError::Internal("AEAD key".into()))?,
    );
    let mut data = serde_json::to_vec(&Sealed {
        bundle: bundle.clone(),
        expires_unix,
    })
    .map_err(|e| ReplError::Internal(e.to_string()))?;
    aead.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(KDF_LABEL),
        &mut data,
    )
    .map_err(|_| ReplError::Internal("encrypting the activation bundle".into()))?;
    let envelope = Envelope {
        epk: b64().encode(epk.as_ref()),
        nonce: b64().encode(nonce),
        ciphertext: b64().encode(&data),
    };
    let json = serde_json::to_vec(&envelope).map_err(|e| ReplError::Internal(e.to_string()))?;
    Ok(format!("{PREFIX}{}", b64().encode(json)))
}

/// Secondary side: decrypt a token made by [`seal`] with our private key.
pub fn open(token: &str, private: &PrivateKey, now_unix: u64) -> Result<Bundle, ReplError> {
    let invalid = || bad("invalid encrypted activation token");
    let body = token.trim().strip_prefix(PREFIX).ok_or_else(invalid)?;
    let json = b64().decode(body).map_err(|_| invalid())?;
    let env: Envelope = serde_json::from_slice(&json).map_err(|_| invalid())?;
    let epk = b64().decode(&env.epk).map_err(|_| invalid())?;
    let nonce: [u8; NONCE_LEN] = b64()
        .decode(&env.nonce)
        .ok()
        .and_then(|n| n.try_into().ok())
        .ok_or_else(invalid)?;
    let mut data = b64().decode(&env.ciphertext).map_err(|_| invalid())?;
    let spk = private
        .compute_public_key()
        .map_err(|_| ReplError::Internal("computing an X25519 public key".into()))?;
    let key = agree(
        private,
        UnparsedPublicKey::new(&X25519, &epk),
        invalid(),
        |shared| Ok(derive_key(shared, &epk, spk.as_ref())),
    )?;
    let aead = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &key).map_err(|_| invalid())?);
    let plain = aead
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(KDF_LABEL),
            &mut data,
        )
        .map_err(|_| {
            bad("the activation token was not encrypted to this secondary's public key")
        })?;
    decode_sealed(plain, now_unix)
}

/// The last step of [`open`]: the decrypted JSON document, checked for expiry. Separate so
/// that it can be fuzzed past the AEAD (`fuzz/`); any bytes are an error, never a panic.
pub fn decode_sealed(plain: &[u8], now_unix: u64) -> Result<Bundle, ReplError> {
    let sealed: Sealed =
        serde_json::from_slice(plain).map_err(|_| bad("invalid encrypted activation token"))?;
    if now_unix > sealed.expires_unix {
        return Err(bad("the activation token has expired"));
    }
    Ok(sealed.bundle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::CertPair;

    fn bundle() -> Bundle {
        Bundle {
            cluster_id: "c".into(),
            secondary_id: "s".into(),
            generation: 1,
            primary_cluster_addr: "127.0.0.1:1".into(),
            primary_api_addr: "http://127.0.0.1:2".into(),
            ca_cert_pem: "ca".into(),
            client: CertPair {
                cert_pem: "cert".into(),
                key_pem: zeroize::Zeroizing::new("key".into()),
            },
            root_key_b64: zeroize::Zeroizing::new(String::new()),
            primary_cluster_addrs: Vec::new(),
        }
    }

    #[test]
    fn round_trip_wrong_key_and_expiry() {
        let (private, public) = generate_keypair().expect("keypair");
        let token = seal(&bundle(), &public, 100).expect("seal");
        let opened = open(&token, &private, 50).expect("open");
        assert_eq!(opened.secondary_id, "s");
        assert!(open(&token, &private, 101).is_err(), "expired");
        let (other, _) = generate_keypair().expect("keypair");
        assert!(open(&token, &other, 50).is_err(), "another secondary's key");
        assert!(open("bdr1e.garbage", &private, 50).is_err());
        assert!(seal(&bundle(), "short", 100).is_err());
    }
}
