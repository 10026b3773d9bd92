//! The cryptography of the transit engine, all of it aws-lc-rs.
//!
//! - AEAD (aes128/aes256-gcm96, chacha20-poly1305): a fresh random 96-bit nonce per message;
//!   the blob is `nonce || ciphertext || tag`, as Vault lays it out.
//! - RSA encryption: OAEP with SHA-256 and MGF1-SHA-256.
//! - Key derivation (`derived` keys): HKDF-SHA256 (RFC 5869) with the version's key as input
//!   keying material, an empty salt, and the request's `context` as `info`; the output is as
//!   long as the key (32 bytes for AES-256, ChaCha20 and the Ed25519 seed, 16 for AES-128).
//! - Signatures: Ed25519 (over the input), ECDSA (see `ecdsa`: P-256, P-384, P-521; ASN.1 or
//!   JWS encoding), RSA PSS (salt length = hash length) or PKCS#1 v1.5 with SHA-256/384/512.
//! - HMAC with SHA-224/256/384/512.
//!
//! Every buffer holding a key or a plaintext is `Zeroizing`.

use aws_lc_rs::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, NONCE_LEN};
use aws_lc_rs::digest::{self, Digest};
use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
use aws_lc_rs::hkdf;
use aws_lc_rs::hmac;
use aws_lc_rs::rand::{self, SystemRandom};
use aws_lc_rs::rsa::{
    KeySize, OaepPrivateDecryptingKey, OaepPublicEncryptingKey, PrivateDecryptingKey,
    OAEP_SHA256_MGF1SHA256,
};
use aws_lc_rs::signature::{self, Ed25519KeyPair, KeyPair as _, RsaKeyPair};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bunker_sdk::{LogicalError, Result};
use zeroize::Zeroizing;

use super::ecdsa;
use super::policy::{KeyType, KeyVersion, SecretBytes};

/// A fault inside the crypto library (not the client's doing).
fn internal(what: &str) -> LogicalError {
    LogicalError::Internal(format!("transit: {what} failed"))
}

fn bad(msg: impl Into<String>) -> LogicalError {
    LogicalError::InvalidRequest(msg.into())
}

/// `n` random bytes from the system generator.
pub(crate) fn random_bytes(n: usize) -> Result<Zeroizing<Vec<u8>>> {
    let mut out = Zeroizing::new(vec![0u8; n]);
    rand::fill(&mut out).map_err(|_| internal("random generation"))?;
    Ok(out)
}

/// Default size of the key of the `hmac` endpoint, in bytes.
pub(crate) const HMAC_KEY_BYTES: usize = 32;

/// Make a new version of a key of `key_type` (`hmac_key_size` is used by `hmac` keys).
pub(crate) fn generate_version(
    key_type: KeyType,
    hmac_key_size: usize,
    now_unix: u64,
) -> Result<KeyVersion> {
    let mut public_key = String::new();
    let mut hmac_key = SecretBytes::new(random_bytes(HMAC_KEY_BYTES)?);
    let key = match key_type {
        KeyType::Aes128Gcm96 => SecretBytes::new(random_bytes(16)?),
        KeyType::Aes256Gcm96 | KeyType::ChaCha20Poly1305 => SecretBytes::new(random_bytes(32)?),
        KeyType::Hmac => {
            hmac_key = SecretBytes::new(random_bytes(hmac_key_size)?);
            SecretBytes::default()
        }
        KeyType::Ed25519 => {
            let seed = random_bytes(32)?;
            let pair = ed25519_from_seed(&seed)?;
            public_key = STANDARD.encode(pair.public_key().as_ref());
            SecretBytes::new(seed)
        }
        KeyType::EcdsaP256 | KeyType::EcdsaP384 | KeyType::EcdsaP521 => {
            let (key, public) = ecdsa::generate(key_type)?;
            public_key = public;
            key
        }
        KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096 => {
            let size = match key_type {
                KeyType::Rsa2048 => KeySize::Rsa2048,
                KeyType::Rsa3072 => KeySize::Rsa3072,
                _ => KeySize::Rsa4096,
            };
            let pair = RsaKeyPair::generate(size).map_err(|_| internal("RSA key generation"))?;
            let pkcs8: Pkcs8V1Der<'static> = pair
                .as_der()
                .map_err(|_| internal("encoding the RSA key"))?;
            let der = pair
                .public_key()
                .as_der()
                .map_err(|_| internal("encoding the RSA public key"))?;
            public_key = pem("PUBLIC KEY", der.as_ref());
            SecretBytes::from_slice(pkcs8.as_ref())
        }
    };
    Ok(KeyVersion {
        created_unix: now_unix,
        key,
        hmac_key,
        public_key,
    })
}

/// PEM armour (64-character lines).
pub(crate) fn pem(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    let mut rest = body.as_str();
    while !rest.is_empty() {
        let (line, tail) = rest.split_at(rest.len().min(64));
        out.push_str(line);
        out.push('\n');
        rest = tail;
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// HKDF-SHA256(ikm = key, salt = empty, info = context), `key.len()` bytes out.
pub(crate) fn derive_key(key: &[u8], context: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &[]).extract(key);
    let info = [context];
    let okm = prk
        .expand(&info, Len(key.len()))
        .map_err(|_| internal("key derivation"))?;
    let mut out = Zeroizing::new(vec![0u8; key.len()]);
    okm.fill(&mut out).map_err(|_| internal("key derivation"))?;
    Ok(out)
}

/// The key a request uses: the version's key, or the one derived from `context`.
pub(crate) fn effective_key(
    key: &SecretBytes,
    derived: bool,
    context: Option<&[u8]>,
) -> Result<Zeroizing<Vec<u8>>> {
    if !derived {
        return Ok(Zeroizing::new(key.expose().to_vec()));
    }
    match context {
        Some(ctx) if !ctx.is_empty() => derive_key(key.expose(), ctx),
        _ => Err(bad(
            "missing 'context' for key derivation; the key was created using a derived key, \
             which means additional, per-request information must be included in order to \
             perform operations with the key",
        )),
    }
}

fn aead_algorithm(key_type: KeyType) -> Result<&'static aead::Algorithm> {
    match key_type {
        KeyType::Aes128Gcm96 => Ok(&aead::AES_128_GCM),
        KeyType::Aes256Gcm96 => Ok(&aead::AES_256_GCM),
        KeyType::ChaCha20Poly1305 => Ok(&aead::CHACHA20_POLY1305),
        other => Err(bad(format!(
            "key type {} does not support this operation",
            other.as_str()
        ))),
    }
}

/// The nonce of convergent encryption: the first 96 bits of HMAC-SHA256 over the associated
/// data and the plaintext (each length-prefixed, so the nonce changes with either), keyed with
/// HKDF-SHA256(the request's derived key, info = [`CONVERGENT_NONCE_INFO`]); the nonce key is
/// not the encryption key itself. Equal (context, associated data, plaintext) give equal
/// ciphertexts; a nonce repeats only for an identical message.
pub(crate) fn convergent_nonce(
    key: &[u8],
    plaintext: &[u8],
    aad: &[u8],
) -> Result<[u8; NONCE_LEN]> {
    let nonce_key = derive_key(key, CONVERGENT_NONCE_INFO)?;
    let hmac_key = hmac::Key::new(hmac::HMAC_SHA256, &nonce_key);
    let mut ctx = hmac::Context::with_key(&hmac_key);
    ctx.update(&(aad.len() as u64).to_be_bytes());
    ctx.update(aad);
    ctx.update(&(plaintext.len() as u64).to_be_bytes());
    ctx.update(plaintext);
    let tag = ctx.sign();
    let mut nonce = [0u8; NONCE_LEN];
    let head = tag
        .as_ref()
        .get(..NONCE_LEN)
        .ok_or_else(|| internal("convergent nonce"))?;
    nonce.copy_from_slice(head);
    Ok(nonce)
}

/// HKDF `info` of the convergent nonce key.
const CONVERGENT_NONCE_INFO: &[u8] = b"bunker-transit-convergent-nonce-v1";

/// AEAD-encrypt: `nonce || ciphertext || tag`, with a random nonce unless `convergent`.
pub(crate) fn aead_seal(
    key_type: KeyType,
    key: &[u8],
    plaintext: &[u8],
    aad: &[u8],
    convergent: bool,
) -> Result<Vec<u8>> {
    let alg = aead_algorithm(key_type)?;
    let sealing = LessSafeKey::new(UnboundKey::new(alg, key).map_err(|_| internal("AEAD key"))?);
    let nonce = if convergent {
        convergent_nonce(key, plaintext, aad)?
    } else {
        let mut nonce = [0u8; NONCE_LEN];
        rand::fill(&mut nonce).map_err(|_| internal("nonce generation"))?;
        nonce
    };
    let mut buf = Zeroizing::new(plaintext.to_vec());
    sealing
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut *buf,
        )
        .map_err(|_| internal("encryption"))?;
    let mut out = Vec::with_capacity(NONCE_LEN.saturating_add(buf.len()));
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&buf);
    Ok(out)
}

/// AEAD-decrypt a `nonce || ciphertext || tag` blob.
pub(crate) fn aead_open(
    key_type: KeyType,
    key: &[u8],
    blob: &[u8],
    aad: &[u8],
) -> Result<Zeroizing<Vec<u8>>> {
    let alg = aead_algorithm(key_type)?;
    if blob.len() < NONCE_LEN.saturating_add(alg.tag_len()) {
        return Err(bad("invalid ciphertext: too short"));
    }
    let (nonce, sealed) = blob
        .split_at_checked(NONCE_LEN)
        .ok_or_else(|| bad("invalid ciphertext: too short"))?;
    let nonce = Nonce::try_assume_unique_for_key(nonce)
        .map_err(|_| bad("invalid ciphertext: bad nonce"))?;
    let opening = LessSafeKey::new(UnboundKey::new(alg, key).map_err(|_| internal("AEAD key"))?);
    let mut buf = Zeroizing::new(sealed.to_vec());
    let len = opening
        .open_in_place(nonce, Aad::from(aad), &mut buf)
        .map_err(|_| bad("cipher: message authentication failed"))?
        .len();
    buf.truncate(len);
    Ok(buf)
}

/// RSA-OAEP (SHA-256) encryption with the public half of a PKCS#8 key.
pub(crate) fn rsa_encrypt(pkcs8: &[u8], plaintext: &[u8]) -> Result<Vec<u8>> {
    let private = PrivateDecryptingKey::from_pkcs8(pkcs8).map_err(|_| internal("RSA key"))?;
    let public = OaepPublicEncryptingKey::new(private.public_key())
        .map_err(|_| internal("RSA public key"))?;
    let max = public.max_plaintext_size(&OAEP_SHA256_MGF1SHA256);
    if plaintext.len() > max {
        return Err(bad(format!(
            "plaintext is too long for this RSA key (at most {max} bytes)"
        )));
    }
    let mut out = vec![0u8; public.ciphertext_size()];
    let written = public
        .encrypt(&OAEP_SHA256_MGF1SHA256, plaintext, &mut out, None)
        .map_err(|_| internal("RSA encryption"))?
        .len();
    out.truncate(written);
    Ok(out)
}

/// RSA-OAEP (SHA-256) decryption.
pub(crate) fn rsa_decrypt(pkcs8: &[u8], ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
    let private = PrivateDecryptingKey::from_pkcs8(pkcs8).map_err(|_| internal("RSA key"))?;
    let key = OaepPrivateDecryptingKey::new(private).map_err(|_| internal("RSA key"))?;
    let mut out = Zeroizing::new(vec![0u8; key.min_output_size()]);
    let len = key
        .decrypt(&OAEP_SHA256_MGF1SHA256, ciphertext, &mut out, None)
        .map_err(|_| bad("invalid ciphertext: RSA decryption failed"))?
        .len();
    out.truncate(len);
    Ok(out)
}

/// Hash algorithms accepted by `hash`, `hmac`, `sign` and `verify`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HashAlgorithm {
    Sha224,
    Sha256,
    Sha384,
    Sha512,
    Sha512_256,
    Sha3_256,
    Sha3_384,
    Sha3_512,
}

impl HashAlgorithm {
    pub(crate) fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "sha2-224" => HashAlgorithm::Sha224,
            "" | "sha2-256" => HashAlgorithm::Sha256,
            "sha2-384" => HashAlgorithm::Sha384,
            "sha2-512" => HashAlgorithm::Sha512,
            "sha2-512/256" => HashAlgorithm::Sha512_256,
            "sha3-256" => HashAlgorithm::Sha3_256,
            "sha3-384" => HashAlgorithm::Sha3_384,
            "sha3-512" => HashAlgorithm::Sha3_512,
            other => return Err(bad(format!("unsupported hash algorithm {other}"))),
        })
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            HashAlgorithm::Sha224 => "sha2-224",
            HashAlgorithm::Sha256 => "sha2-256",
            HashAlgorithm::Sha384 => "sha2-384",
            HashAlgorithm::Sha512 => "sha2-512",
            HashAlgorithm::Sha512_256 => "sha2-512/256",
            HashAlgorithm::Sha3_256 => "sha3-256",
            HashAlgorithm::Sha3_384 => "sha3-384",
            HashAlgorithm::Sha3_512 => "sha3-512",
        }
    }

    pub(crate) fn digest_algorithm(self) -> &'static digest::Algorithm {
        match self {
            HashAlgorithm::Sha224 => &digest::SHA224,
            HashAlgorithm::Sha256 => &digest::SHA256,
            HashAlgorithm::Sha384 => &digest::SHA384,
            HashAlgorithm::Sha512 => &digest::SHA512,
            HashAlgorithm::Sha512_256 => &digest::SHA512_256,
            HashAlgorithm::Sha3_256 => &digest::SHA3_256,
            HashAlgorithm::Sha3_384 => &digest::SHA3_384,
            HashAlgorithm::Sha3_512 => &digest::SHA3_512,
        }
    }

    fn hmac_algorithm(self) -> Result<hmac::Algorithm> {
        match self {
            HashAlgorithm::Sha224 => Ok(hmac::HMAC_SHA224),
            HashAlgorithm::Sha256 => Ok(hmac::HMAC_SHA256),
            HashAlgorithm::Sha384 => Ok(hmac::HMAC_SHA384),
            HashAlgorithm::Sha512 => Ok(hmac::HMAC_SHA512),
            _ => Err(bad("unsupported algorithm for HMAC")),
        }
    }
}

pub(crate) fn hash(alg: HashAlgorithm, input: &[u8]) -> Vec<u8> {
    digest::digest(alg.digest_algorithm(), input)
        .as_ref()
        .to_vec()
}

pub(crate) fn hmac_sign(alg: HashAlgorithm, key: &[u8], input: &[u8]) -> Result<Vec<u8>> {
    let key = hmac::Key::new(alg.hmac_algorithm()?, key);
    Ok(hmac::sign(&key, input).as_ref().to_vec())
}

/// Constant-time HMAC check.
pub(crate) fn hmac_verify(
    alg: HashAlgorithm,
    key: &[u8],
    input: &[u8],
    mac: &[u8],
) -> Result<bool> {
    let key = hmac::Key::new(alg.hmac_algorithm()?, key);
    Ok(hmac::verify(&key, input, mac).is_ok())
}

/// How a signature is made beyond the key: hash, RSA padding, ECDSA encoding, prehashing.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SignOptions {
    /// The hash (sha2-256 when the request names none).
    pub hash: HashAlgorithm,
    /// Whether the request named the hash (ECDSA P-384 defaults to sha2-384 otherwise).
    pub hash_given: bool,
    pub prehashed: bool,
    /// RSA: PSS (`true`, the default) or PKCS#1 v1.5.
    pub pss: bool,
    /// ECDSA: JWS (fixed `r || s`) instead of ASN.1 DER.
    pub jws: bool,
}

impl SignOptions {
    fn ecdsa(&self) -> super::ecdsa::EcdsaOptions {
        super::ecdsa::EcdsaOptions {
            hash: self.hash_given.then_some(self.hash),
            prehashed: self.prehashed,
            jws: self.jws,
        }
    }
}

fn ed25519_from_seed(seed: &[u8]) -> Result<Ed25519KeyPair> {
    Ed25519KeyPair::from_seed_unchecked(seed).map_err(|_| internal("Ed25519 key"))
}

/// The digest to sign or verify for ECDSA/RSA: the input hashed, or the input itself when
/// `prehashed` (its length must match the hash).
fn message_digest(opts: &SignOptions, input: &[u8]) -> Result<Digest> {
    let alg = opts.hash.digest_algorithm();
    if opts.prehashed {
        Digest::import_less_safe(input, alg)
            .map_err(|_| bad("prehashed input does not have the length of the hash algorithm"))
    } else {
        Ok(digest::digest(alg, input))
    }
}

fn rsa_encoding(opts: &SignOptions) -> Result<&'static signature::RsaSignatureEncoding> {
    Ok(match (opts.pss, opts.hash) {
        (true, HashAlgorithm::Sha256) => &signature::RSA_PSS_SHA256,
        (true, HashAlgorithm::Sha384) => &signature::RSA_PSS_SHA384,
        (true, HashAlgorithm::Sha512) => &signature::RSA_PSS_SHA512,
        (false, HashAlgorithm::Sha256) => &signature::RSA_PKCS1_SHA256,
        (false, HashAlgorithm::Sha384) => &signature::RSA_PKCS1_SHA384,
        (false, HashAlgorithm::Sha512) => &signature::RSA_PKCS1_SHA512,
        _ => return Err(bad("unsupported hash algorithm for RSA signatures")),
    })
}

fn rsa_parameters(opts: &SignOptions) -> Result<&'static signature::RsaParameters> {
    Ok(match (opts.pss, opts.hash) {
        (true, HashAlgorithm::Sha256) => &signature::RSA_PSS_2048_8192_SHA256,
        (true, HashAlgorithm::Sha384) => &signature::RSA_PSS_2048_8192_SHA384,
        (true, HashAlgorithm::Sha512) => &signature::RSA_PSS_2048_8192_SHA512,
        (false, HashAlgorithm::Sha256) => &signature::RSA_PKCS1_2048_8192_SHA256,
        (false, HashAlgorithm::Sha384) => &signature::RSA_PKCS1_2048_8192_SHA384,
        (false, HashAlgorithm::Sha512) => &signature::RSA_PKCS1_2048_8192_SHA512,
        _ => return Err(bad("unsupported hash algorithm for RSA signatures")),
    })
}

/// Sign `input` with a key version (`key` already derived for derived Ed25519 keys).
pub(crate) fn sign(
    key_type: KeyType,
    key: &[u8],
    input: &[u8],
    opts: &SignOptions,
) -> Result<Vec<u8>> {
    match key_type {
        KeyType::Ed25519 => {
            if opts.prehashed {
                return Err(bad("prehashed input is not supported for ed25519 keys"));
            }
            Ok(ed25519_from_seed(key)?.sign(input).as_ref().to_vec())
        }
        t if t.is_ecdsa() => ecdsa::sign(t, key, input, &opts.ecdsa()),
        t if t.is_rsa() => {
            let pair = RsaKeyPair::from_pkcs8(key).map_err(|_| internal("RSA key"))?;
            let encoding = rsa_encoding(opts)?;
            let mut sig = vec![0u8; pair.public_modulus_len()];
            if opts.prehashed {
                pair.sign_digest(encoding, &message_digest(opts, input)?, &mut sig)
            } else {
                pair.sign(encoding, &SystemRandom::new(), input, &mut sig)
            }
            .map_err(|_| internal("RSA signing"))?;
            Ok(sig)
        }
        other => Err(bad(format!(
            "key type {} does not support signing",
            other.as_str()
        ))),
    }
}

/// Verify a signature; `Ok(false)` when it does not match.
pub(crate) fn verify(
    key_type: KeyType,
    key: &[u8],
    input: &[u8],
    sig: &[u8],
    opts: &SignOptions,
) -> Result<bool> {
    match key_type {
        KeyType::Ed25519 => {
            if opts.prehashed {
                return Err(bad("prehashed input is not supported for ed25519 keys"));
            }
            let pair = ed25519_from_seed(key)?;
            let public =
                signature::UnparsedPublicKey::new(&signature::ED25519, pair.public_key().as_ref());
            Ok(public.verify(input, sig).is_ok())
        }
        t if t.is_ecdsa() => ecdsa::verify(t, key, input, sig, &opts.ecdsa()),
        t if t.is_rsa() => {
            let pair = RsaKeyPair::from_pkcs8(key).map_err(|_| internal("RSA key"))?;
            let public = signature::UnparsedPublicKey::new(
                rsa_parameters(opts)?,
                pair.public_key().as_ref(),
            );
            Ok(if opts.prehashed {
                public
                    .verify_digest(&message_digest(opts, input)?, sig)
                    .is_ok()
            } else {
                public.verify(input, sig).is_ok()
            })
        }
        other => Err(bad(format!(
            "key type {} does not support signing",
            other.as_str()
        ))),
    }
}

/// The private key of a version in the form `export` gives it.
pub(crate) fn export_private(key_type: KeyType, version: &KeyVersion) -> Result<String> {
    let key = version.key.expose();
    match key_type {
        t if t.is_aead() => Ok(STANDARD.encode(key)),
        KeyType::Ed25519 => {
            let pair = ed25519_from_seed(key)?;
            let mut full = Zeroizing::new(key.to_vec());
            full.extend_from_slice(pair.public_key().as_ref());
            Ok(STANDARD.encode(full.as_slice()))
        }
        t if t.is_ecdsa() => ecdsa::export_private(t, key),
        t if t.is_rsa() => Ok(pem("PRIVATE KEY", key)),
        KeyType::Hmac => Ok(STANDARD.encode(version.hmac_key.expose())),
        _ => Err(bad("key type has no exportable private key")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hkdf_is_deterministic_and_context_bound() {
        let key = [7u8; 32];
        let a = derive_key(&key, b"ctx-a").unwrap();
        let a2 = derive_key(&key, b"ctx-a").unwrap();
        let b = derive_key(&key, b"ctx-b").unwrap();
        assert_eq!(a.len(), 32);
        assert_eq!(*a, *a2);
        assert_ne!(*a, *b);
        assert_ne!(a.as_slice(), &key);
    }

    #[test]
    fn aead_round_trip_and_tamper() {
        for (t, len) in [
            (KeyType::Aes128Gcm96, 16),
            (KeyType::Aes256Gcm96, 32),
            (KeyType::ChaCha20Poly1305, 32),
        ] {
            let key = random_bytes(len).unwrap();
            let blob = aead_seal(t, &key, b"hello", b"aad", false).unwrap();
            assert_eq!(blob.len(), 12 + 5 + 16);
            assert_eq!(
                aead_open(t, &key, &blob, b"aad").unwrap().as_slice(),
                b"hello"
            );
            assert!(aead_open(t, &key, &blob, b"other").is_err());
            let mut bad = blob.clone();
            *bad.last_mut().unwrap() ^= 1;
            assert!(aead_open(t, &key, &bad, b"aad").is_err());
            assert!(aead_open(t, &key, &blob[..10], b"aad").is_err());
        }
    }

    #[test]
    fn signatures_round_trip() {
        let opts = SignOptions {
            hash: HashAlgorithm::Sha256,
            hash_given: false,
            prehashed: false,
            pss: true,
            jws: false,
        };
        for t in [KeyType::Ed25519, KeyType::EcdsaP256, KeyType::Rsa2048] {
            let v = generate_version(t, 0, 0).unwrap();
            let sig = sign(t, v.key.expose(), b"msg", &opts).unwrap();
            assert!(
                verify(t, v.key.expose(), b"msg", &sig, &opts).unwrap(),
                "{t:?}"
            );
            assert!(
                !verify(t, v.key.expose(), b"other", &sig, &opts).unwrap(),
                "{t:?}"
            );
        }
        let v = generate_version(KeyType::EcdsaP256, 0, 0).unwrap();
        let jws = SignOptions { jws: true, ..opts };
        let sig = sign(KeyType::EcdsaP256, v.key.expose(), b"m", &jws).unwrap();
        assert_eq!(sig.len(), 64);
        assert!(verify(KeyType::EcdsaP256, v.key.expose(), b"m", &sig, &jws).unwrap());
        let pre = SignOptions {
            prehashed: true,
            ..opts
        };
        let d = hash(HashAlgorithm::Sha256, b"m");
        let sig = sign(KeyType::EcdsaP256, v.key.expose(), &d, &pre).unwrap();
        assert!(verify(KeyType::EcdsaP256, v.key.expose(), b"m", &sig, &opts).unwrap());
        assert!(sign(KeyType::EcdsaP256, v.key.expose(), b"short", &pre).is_err());
    }

    #[test]
    fn rsa_oaep_round_trip() {
        let v = generate_version(KeyType::Rsa2048, 0, 0).unwrap();
        let ct = rsa_encrypt(v.key.expose(), b"secret").unwrap();
        assert_eq!(ct.len(), 256);
        assert_eq!(
            rsa_decrypt(v.key.expose(), &ct).unwrap().as_slice(),
            b"secret"
        );
        assert!(rsa_encrypt(v.key.expose(), &[0u8; 300]).is_err());
        assert!(v.public_key.starts_with("-----BEGIN PUBLIC KEY-----\n"));
    }
}
