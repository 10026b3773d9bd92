//! ECDSA keys: P-256, P-384 and P-521 (aws-lc-rs).
//!
//! A version's key is its PKCS#8 document. aws-lc-rs pairs each curve with the hashes it
//! signs with, so the hash a request may name depends on the curve: P-256 takes sha2-256;
//! P-384 sha2-384 or sha3-384; P-521 sha2-224/256/384/512 or sha3-512. Without a
//! `hash_algorithm` a request gets Vault's default sha2-256 where the curve has it, else
//! sha2-384 (P-384). Signatures are ASN.1 DER, or `r || s` for JWS.

use aws_lc_rs::digest::{self, Digest};
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    self, EcdsaKeyPair, EcdsaSigningAlgorithm, EcdsaVerificationAlgorithm, KeyPair as _,
};
use bunker_sdk::{LogicalError, Result};

use super::crypto::{pem, HashAlgorithm};
use super::policy::{KeyType, SecretBytes};

fn bad(msg: impl Into<String>) -> LogicalError {
    LogicalError::InvalidRequest(msg.into())
}

fn internal(what: &str) -> LogicalError {
    LogicalError::Internal(format!("transit: {what} failed"))
}

/// The algorithms of one (curve, hash) pair: signing and verifying, ASN.1 and fixed.
struct Algorithms {
    sign_asn1: &'static EcdsaSigningAlgorithm,
    sign_fixed: &'static EcdsaSigningAlgorithm,
    verify_asn1: &'static EcdsaVerificationAlgorithm,
    verify_fixed: &'static EcdsaVerificationAlgorithm,
    hash: HashAlgorithm,
}

fn algorithms(key_type: KeyType, hash: Option<HashAlgorithm>) -> Result<Algorithms> {
    use signature as s;
    use HashAlgorithm as H;
    let hash = match (key_type, hash) {
        (KeyType::EcdsaP384, None) => H::Sha384,
        (_, None) => H::Sha256,
        (_, Some(h)) => h,
    };
    let (sign_asn1, sign_fixed, verify_asn1, verify_fixed) = match (key_type, hash) {
        (KeyType::EcdsaP256, H::Sha256) => (
            &s::ECDSA_P256_SHA256_ASN1_SIGNING,
            &s::ECDSA_P256_SHA256_FIXED_SIGNING,
            &s::ECDSA_P256_SHA256_ASN1,
            &s::ECDSA_P256_SHA256_FIXED,
        ),
        (KeyType::EcdsaP384, H::Sha384) => (
            &s::ECDSA_P384_SHA384_ASN1_SIGNING,
            &s::ECDSA_P384_SHA384_FIXED_SIGNING,
            &s::ECDSA_P384_SHA384_ASN1,
            &s::ECDSA_P384_SHA384_FIXED,
        ),
        (KeyType::EcdsaP384, H::Sha3_384) => (
            &s::ECDSA_P384_SHA3_384_ASN1_SIGNING,
            &s::ECDSA_P384_SHA3_384_FIXED_SIGNING,
            &s::ECDSA_P384_SHA3_384_ASN1,
            &s::ECDSA_P384_SHA3_384_FIXED,
        ),
        (KeyType::EcdsaP521, H::Sha224) => (
            &s::ECDSA_P521_SHA224_ASN1_SIGNING,
            &s::ECDSA_P521_SHA224_FIXED_SIGNING,
            &s::ECDSA_P521_SHA224_ASN1,
            &s::ECDSA_P521_SHA224_FIXED,
        ),
        (KeyType::EcdsaP521, H::Sha256) => (
            &s::ECDSA_P521_SHA256_ASN1_SIGNING,
            &s::ECDSA_P521_SHA256_FIXED_SIGNING,
            &s::ECDSA_P521_SHA256_ASN1,
            &s::ECDSA_P521_SHA256_FIXED,
        ),
        (KeyType::EcdsaP521, H::Sha384) => (
            &s::ECDSA_P521_SHA384_ASN1_SIGNING,
            &s::ECDSA_P521_SHA384_FIXED_SIGNING,
            &s::ECDSA_P521_SHA384_ASN1,
            &s::ECDSA_P521_SHA384_FIXED,
        ),
        (KeyType::EcdsaP521, H::Sha512) => (
            &s::ECDSA_P521_SHA512_ASN1_SIGNING,
            &s::ECDSA_P521_SHA512_FIXED_SIGNING,
            &s::ECDSA_P521_SHA512_ASN1,
            &s::ECDSA_P521_SHA512_FIXED,
        ),
        (KeyType::EcdsaP521, H::Sha3_512) => (
            &s::ECDSA_P521_SHA3_512_ASN1_SIGNING,
            &s::ECDSA_P521_SHA3_512_FIXED_SIGNING,
            &s::ECDSA_P521_SHA3_512_ASN1,
            &s::ECDSA_P521_SHA3_512_FIXED,
        ),
        (KeyType::EcdsaP256 | KeyType::EcdsaP384 | KeyType::EcdsaP521, _) => {
            return Err(bad(format!(
                "hash algorithm {} is not supported for {} keys in Bunker",
                hash.as_str(),
                key_type.as_str()
            )))
        }
        _ => return Err(bad("not an ECDSA key")),
    };
    Ok(Algorithms {
        sign_asn1,
        sign_fixed,
        verify_asn1,
        verify_fixed,
        hash,
    })
}

/// A new key of an ECDSA type: the PKCS#8 document and the PEM of the public key.
pub(crate) fn generate(key_type: KeyType) -> Result<(SecretBytes, String)> {
    let algs = algorithms(key_type, None)?;
    let doc = EcdsaKeyPair::generate_pkcs8(algs.sign_asn1, &SystemRandom::new())
        .map_err(|_| internal("ECDSA key generation"))?;
    let key = SecretBytes::from_slice(doc.as_ref());
    let pair = EcdsaKeyPair::from_pkcs8(algs.sign_asn1, key.expose())
        .map_err(|_| internal("ECDSA key"))?;
    let der = pair
        .public_key()
        .as_der()
        .map_err(|_| internal("encoding the ECDSA public key"))?;
    Ok((key, pem("PUBLIC KEY", der.as_ref())))
}

/// The digest to sign or verify: the input hashed, or the input itself when `prehashed`.
fn message_digest(hash: HashAlgorithm, prehashed: bool, input: &[u8]) -> Result<Digest> {
    let alg = hash.digest_algorithm();
    if prehashed {
        Digest::import_less_safe(input, alg)
            .map_err(|_| bad("prehashed input does not have the length of the hash algorithm"))
    } else {
        Ok(digest::digest(alg, input))
    }
}

/// What a sign or verify request chose.
pub(crate) struct EcdsaOptions {
    pub hash: Option<HashAlgorithm>,
    pub prehashed: bool,
    pub jws: bool,
}

pub(crate) fn sign(
    key_type: KeyType,
    pkcs8: &[u8],
    input: &[u8],
    opts: &EcdsaOptions,
) -> Result<Vec<u8>> {
    let algs = algorithms(key_type, opts.hash)?;
    let alg = if opts.jws {
        algs.sign_fixed
    } else {
        algs.sign_asn1
    };
    let pair = EcdsaKeyPair::from_pkcs8(alg, pkcs8).map_err(|_| internal("ECDSA key"))?;
    let sig = if opts.prehashed {
        pair.sign_digest(&message_digest(algs.hash, true, input)?)
    } else {
        pair.sign(&SystemRandom::new(), input)
    }
    .map_err(|_| internal("ECDSA signing"))?;
    Ok(sig.as_ref().to_vec())
}

pub(crate) fn verify(
    key_type: KeyType,
    pkcs8: &[u8],
    input: &[u8],
    sig: &[u8],
    opts: &EcdsaOptions,
) -> Result<bool> {
    let algs = algorithms(key_type, opts.hash)?;
    let pair =
        EcdsaKeyPair::from_pkcs8(algs.sign_asn1, pkcs8).map_err(|_| internal("ECDSA key"))?;
    let alg = if opts.jws {
        algs.verify_fixed
    } else {
        algs.verify_asn1
    };
    let public = signature::UnparsedPublicKey::new(alg, pair.public_key().as_ref());
    Ok(if opts.prehashed {
        public
            .verify_digest(&message_digest(algs.hash, true, input)?, sig)
            .is_ok()
    } else {
        public.verify(input, sig).is_ok()
    })
}

/// PEM (SEC1, `EC PRIVATE KEY`) of the private key, as Vault exports it.
pub(crate) fn export_private(key_type: KeyType, pkcs8: &[u8]) -> Result<String> {
    let algs = algorithms(key_type, None)?;
    let pair =
        EcdsaKeyPair::from_pkcs8(algs.sign_asn1, pkcs8).map_err(|_| internal("ECDSA key"))?;
    let der = pair
        .private_key()
        .as_der()
        .map_err(|_| internal("encoding the ECDSA key"))?;
    Ok(pem("EC PRIVATE KEY", der.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_curve_and_hash_round_trips() {
        let cases = [
            (KeyType::EcdsaP256, vec![None, Some(HashAlgorithm::Sha256)]),
            (
                KeyType::EcdsaP384,
                vec![
                    None,
                    Some(HashAlgorithm::Sha384),
                    Some(HashAlgorithm::Sha3_384),
                ],
            ),
            (
                KeyType::EcdsaP521,
                vec![
                    None,
                    Some(HashAlgorithm::Sha224),
                    Some(HashAlgorithm::Sha512),
                    Some(HashAlgorithm::Sha3_512),
                ],
            ),
        ];
        for (t, hashes) in cases {
            let (key, public) = generate(t).unwrap();
            assert!(public.starts_with("-----BEGIN PUBLIC KEY-----"));
            assert!(export_private(t, key.expose())
                .unwrap()
                .starts_with("-----BEGIN EC PRIVATE KEY-----"));
            for hash in hashes {
                for jws in [false, true] {
                    let opts = EcdsaOptions {
                        hash,
                        prehashed: false,
                        jws,
                    };
                    let sig = sign(t, key.expose(), b"m", &opts).unwrap();
                    assert!(verify(t, key.expose(), b"m", &sig, &opts).unwrap());
                    assert!(!verify(t, key.expose(), b"x", &sig, &opts).unwrap());
                }
            }
        }
        let (key, _) = generate(KeyType::EcdsaP384).unwrap();
        let opts = EcdsaOptions {
            hash: Some(HashAlgorithm::Sha256),
            prehashed: false,
            jws: false,
        };
        assert!(sign(KeyType::EcdsaP384, key.expose(), b"m", &opts).is_err());
    }
}
