//! One-time-pad encoding of generated tokens (generate-root, DR operation token).
//!
//! As in Vault 1.10+: the operator supplies an OTP as long as the token; the token bytes are
//! XORed with the OTP bytes and the result is base64 without padding (Go's `RawStdEncoding`).
//! Decoding accepts padded and unpadded input.

use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::Engine as _;
use zeroize::Zeroizing;

use crate::{Result, SealError};

const ALPHANUMERIC: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/// Largest multiple of 62 that fits a byte: bytes at or above it are rejected so every
/// character is equally likely.
const UNBIASED_LIMIT: u8 = 248;

/// A random alphanumeric string of `len` characters from AWS-LC's RNG.
///
/// AWS-LC aborts on RNG failure; should a failure be reported instead this aborts as well
/// rather than return a predictable pad. [`try_generate_otp`] returns the error instead.
pub fn generate_otp(len: usize) -> String {
    match try_generate_otp(len) {
        Ok(otp) => otp,
        Err(e) => {
            tracing::error!(error = %e, "system RNG failed; aborting");
            std::process::abort()
        }
    }
}

/// Like [`generate_otp`], returning `Internal` if the RNG fails.
pub fn try_generate_otp(len: usize) -> Result<String> {
    let mut otp = String::with_capacity(len);
    let mut pool = Zeroizing::new([0u8; 64]);
    while otp.len() < len {
        aws_lc_rs::rand::fill(pool.as_mut_slice())
            .map_err(|_| SealError::Internal("generating a one-time pad".into()))?;
        for &byte in pool.iter().filter(|&&b| b < UNBIASED_LIMIT) {
            if otp.len() == len {
                break;
            }
            if let Some(&c) = ALPHANUMERIC.get(usize::from(byte % 62)) {
                otp.push(char::from(c));
            }
        }
    }
    Ok(otp)
}

fn xor(a: &[u8], b: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
    if a.len() != b.len() {
        return Err(SealError::BadInput(format!(
            "length of the token and the OTP differ: {} != {}",
            a.len(),
            b.len()
        )));
    }
    Ok(Zeroizing::new(
        a.iter().zip(b).map(|(x, y)| x ^ y).collect(),
    ))
}

/// XOR `token` with `otp` (same length) and base64-encode without padding.
pub fn encode_token(token: &str, otp: &str) -> Result<String> {
    let mixed = xor(token.as_bytes(), otp.as_bytes())?;
    Ok(STANDARD_NO_PAD.encode(mixed.as_slice()))
}

/// Reverse [`encode_token`]; accepts padded or unpadded standard base64.
pub fn decode_token(encoded: &str, otp: &str) -> Result<String> {
    let unpadded = encoded.trim().trim_end_matches('=');
    let mixed = Zeroizing::new(
        STANDARD_NO_PAD
            .decode(unpadded)
            .map_err(|e| SealError::BadInput(format!("encoded token is not base64: {e}")))?,
    );
    let token = xor(&mixed, otp.as_bytes())?;
    String::from_utf8(token.to_vec())
        .map_err(|_| SealError::BadInput("decoded token is not UTF-8 (wrong OTP?)".into()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use base64::engine::general_purpose::STANDARD;

    #[test]
    fn otp_is_alphanumeric_of_the_requested_length() {
        for len in [0, 1, 28, 100, 1000] {
            let otp = generate_otp(len);
            assert_eq!(otp.len(), len);
            assert!(otp.bytes().all(|b| b.is_ascii_alphanumeric()));
        }
        assert_ne!(generate_otp(28), generate_otp(28));
    }

    #[test]
    fn token_round_trips_through_the_pad() {
        let token = "hvs.AAAAAAAAAAAAAAAAAAAAAAAA";
        let otp = generate_otp(token.len());
        let encoded = encode_token(token, &otp).unwrap();
        assert!(!encoded.ends_with('='), "RawStd encoding has no padding");
        assert_ne!(encoded, STANDARD_NO_PAD.encode(token));
        assert_eq!(decode_token(&encoded, &otp).unwrap(), token);

        // Padded input is accepted too.
        let padded_source = "s.abcdefghijklmnopqrstuvw"; // 25 bytes: padded form ends in '='
        let otp = generate_otp(padded_source.len());
        let mixed = xor(padded_source.as_bytes(), otp.as_bytes()).unwrap();
        let padded = STANDARD.encode(mixed.as_slice());
        assert!(padded.ends_with('='));
        assert_eq!(decode_token(&padded, &otp).unwrap(), padded_source);
    }

    #[test]
    fn length_mismatch_is_an_error() {
        assert!(matches!(
            encode_token("short", "longer-otp"),
            Err(SealError::BadInput(_))
        ));
        let otp = generate_otp(5);
        let encoded = encode_token("token", &otp).unwrap();
        assert!(matches!(
            decode_token(&encoded, "other-length"),
            Err(SealError::BadInput(_))
        ));
        assert!(matches!(
            decode_token("!!not base64!!", &otp),
            Err(SealError::BadInput(_))
        ));
    }
}
