//! Shamir secret sharing of the root key over GF(2^8), in Vault's share layout.
//!
//! The arithmetic is vsss-rs's `Gf256` (polynomial 0x11b, the same field as Vault's, and
//! constant time: no log/exp tables indexed by secret bytes). vsss-rs lays a share out as
//! `[x, y_0 .. y_n]`; Vault hands operators `[y_0 .. y_n, x]`. We convert at this boundary
//! so shares are interchangeable with Vault's: a 32-byte root key gives 33-byte shares.
//!
//! With one share (threshold 1) there is nothing to split and, as in Vault, the single unseal
//! key is the root key itself.

use std::convert::Infallible;

use bunker_barrier::ROOT_KEY_LEN;
use subtle::ConstantTimeEq;
use vsss_rs::Gf256;
use zeroize::Zeroizing;

use crate::{Result, SealError};

/// Length of one share handed to operators when the threshold is above one.
pub const SHARE_LEN: usize = ROOT_KEY_LEN + 1;

/// The length an unseal key must have for `threshold`.
pub(crate) fn expected_key_len(threshold: u8) -> usize {
    if threshold <= 1 {
        ROOT_KEY_LEN
    } else {
        SHARE_LEN
    }
}

/// Refuse a key of the wrong length, with Vault's wording.
pub(crate) fn check_key_len(key: &[u8], threshold: u8) -> Result<()> {
    let expected = expected_key_len(threshold);
    if key.len() < expected {
        return Err(SealError::InvalidKey(format!(
            "key is shorter than minimum {expected} bytes"
        )));
    }
    if key.len() > expected {
        return Err(SealError::InvalidKey(format!(
            "key is longer than maximum {expected} bytes"
        )));
    }
    Ok(())
}

/// Whether `share` equals one already in `shares` (constant time per comparison).
pub(crate) fn contains_share(shares: &[Zeroizing<Vec<u8>>], share: &[u8]) -> bool {
    shares.iter().fold(0u8, |found, s| {
        found | s.as_slice().ct_eq(share).unwrap_u8()
    }) == 1
}

/// Split `root_key` into `shares` Vault-layout shares of which `threshold` recombine it.
pub(crate) fn split(root_key: &[u8], shares: u8, threshold: u8) -> Result<Vec<Zeroizing<Vec<u8>>>> {
    if shares == 1 && threshold == 1 {
        return Ok(vec![Zeroizing::new(root_key.to_vec())]);
    }
    let mut rng = AwsLcRng::default();
    let split = Gf256::split_bytes(
        usize::from(threshold),
        usize::from(shares),
        root_key,
        &mut rng,
    );
    // Wrap every share at once so they are zeroized whatever happens next.
    let mut out: Vec<Zeroizing<Vec<u8>>> = match split {
        Ok(raw) => raw.into_iter().map(Zeroizing::new).collect(),
        Err(e) => return Err(SealError::Internal(format!("splitting the root key: {e}"))),
    };
    if rng.failed {
        return Err(SealError::Internal(
            "splitting the root key: system RNG failed".into(),
        ));
    }
    for share in &mut out {
        // vsss-rs [x, y..] -> Vault [y.., x].
        share.rotate_left(1);
    }
    Ok(out)
}

/// Recombine `threshold` Vault-layout shares (or take the key itself when threshold is 1).
///
/// Any failure is reported as `InvalidKey`: the shares were wrong, inconsistent, or repeated
/// an x coordinate.
pub(crate) fn combine(shares: &[Zeroizing<Vec<u8>>], threshold: u8) -> Result<Zeroizing<Vec<u8>>> {
    if threshold <= 1 {
        return match shares {
            [key] => {
                check_key_len(key, threshold)?;
                Ok(key.clone())
            }
            _ => Err(SealError::InvalidKey(
                "exactly one key is required for a threshold of one".into(),
            )),
        };
    }
    let mut vsss_layout: Zeroizing<Vec<Vec<u8>>> = Zeroizing::new(Vec::with_capacity(shares.len()));
    for share in shares {
        check_key_len(share, threshold)?;
        let mut converted = share.to_vec();
        // Vault [y.., x] -> vsss-rs [x, y..].
        converted.rotate_right(1);
        vsss_layout.push(converted);
    }
    let secret = Gf256::combine_bytes(vsss_layout.as_slice())
        .map_err(|e| SealError::InvalidKey(format!("failed to compute combined key: {e}")))?;
    Ok(Zeroizing::new(secret))
}

/// vsss-rs wants an infallible `CryptoRng`; AWS-LC's RNG returns a `Result`. On failure this
/// records it and yields zeros, and the caller discards the output (see `split`). AWS-LC
/// itself aborts on RNG failure, so the flag is defence in depth.
#[derive(Default)]
struct AwsLcRng {
    failed: bool,
}

impl rand_core::TryRng for AwsLcRng {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> std::result::Result<u32, Infallible> {
        let mut bytes = [0u8; 4];
        self.try_fill_bytes(&mut bytes)?;
        Ok(u32::from_le_bytes(bytes))
    }

    fn try_next_u64(&mut self) -> std::result::Result<u64, Infallible> {
        let mut bytes = [0u8; 8];
        self.try_fill_bytes(&mut bytes)?;
        Ok(u64::from_le_bytes(bytes))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> std::result::Result<(), Infallible> {
        if aws_lc_rs::rand::fill(dst).is_err() {
            self.failed = true;
            dst.fill(0);
        }
        Ok(())
    }
}

impl rand_core::TryCryptoRng for AwsLcRng {}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn root() -> Zeroizing<Vec<u8>> {
        bunker_barrier::Barrier::generate_root_key()
    }

    /// Every subset of `k` indices out of `0..n`.
    fn subsets(n: usize, k: usize) -> Vec<Vec<usize>> {
        (0u32..(1 << n))
            .filter(|m| m.count_ones() as usize == k)
            .map(|m| (0..n).filter(|i| m & (1 << i) != 0).collect())
            .collect()
    }

    #[test]
    fn every_threshold_subset_recombines() {
        let root = root();
        let shares = split(&root, 5, 3).unwrap();
        assert_eq!(shares.len(), 5);
        for share in &shares {
            assert_eq!(share.len(), SHARE_LEN);
        }
        // Vault layout: x is the last byte, and distinct per share.
        let mut xs: Vec<u8> = shares.iter().map(|s| s[SHARE_LEN - 1]).collect();
        xs.sort_unstable();
        xs.dedup();
        assert_eq!(xs.len(), 5);
        assert!(!xs.contains(&0));

        let picked = subsets(5, 3);
        assert_eq!(picked.len(), 10);
        for subset in picked {
            let chosen: Vec<_> = subset.iter().map(|&i| shares[i].clone()).collect();
            assert_eq!(*combine(&chosen, 3).unwrap(), *root, "subset {subset:?}");
        }
        // Fewer than the threshold yield something else (combine itself cannot know).
        for subset in subsets(5, 2) {
            let chosen: Vec<_> = subset.iter().map(|&i| shares[i].clone()).collect();
            if let Ok(value) = combine(&chosen, 3) {
                assert_ne!(*value, *root, "two shares must not reveal the key");
            }
        }
    }

    /// Textbook GF(2^8) multiply modulo x^8+x^4+x^3+x+1 (0x11b), as Vault's `mult`.
    /// Test-only and not constant time: an independent check of field and layout.
    fn gf_mul(mut a: u8, mut b: u8) -> u8 {
        let mut r = 0u8;
        while b != 0 {
            if b & 1 == 1 {
                r ^= a;
            }
            let carry = a & 0x80 != 0;
            a <<= 1;
            if carry {
                a ^= 0x1b;
            }
            b >>= 1;
        }
        r
    }

    fn gf_inv(a: u8) -> u8 {
        (1..=255u8).find(|&b| gf_mul(a, b) == 1).unwrap()
    }

    #[test]
    fn shares_follow_vaults_field_and_layout() {
        let root = root();
        let shares = split(&root, 4, 3).unwrap();
        let picked = [&shares[3], &shares[1], &shares[0]];
        // Vault layout: the x coordinate is the LAST byte.
        let xs: Vec<u8> = picked.iter().map(|s| s[SHARE_LEN - 1]).collect();
        for (byte, expected) in root.iter().enumerate() {
            // Lagrange interpolation at 0; subtraction is XOR in GF(2^8).
            let mut value = 0u8;
            for (i, share) in picked.iter().enumerate() {
                let mut basis = 1u8;
                for (j, &xj) in xs.iter().enumerate() {
                    if i != j {
                        basis = gf_mul(basis, gf_mul(xj, gf_inv(xj ^ xs[i])));
                    }
                }
                value ^= gf_mul(share[byte], basis);
            }
            assert_eq!(value, *expected, "byte {byte}");
        }
    }

    #[test]
    fn repeated_x_coordinate_is_invalid() {
        let shares = split(&root(), 3, 2).unwrap();
        let mut twin = shares[0].clone();
        twin[0] ^= 1; // same x, different y
        let err = combine(&[shares[0].clone(), twin], 2).unwrap_err();
        assert!(matches!(err, SealError::InvalidKey(_)), "{err:?}");
    }

    #[test]
    fn single_share_is_the_root_key() {
        let root = root();
        let shares = split(&root, 1, 1).unwrap();
        assert_eq!(shares.len(), 1);
        assert_eq!(*shares[0], *root);
        assert_eq!(*combine(&shares, 1).unwrap(), *root);
    }

    #[test]
    fn lengths_are_checked() {
        assert!(check_key_len(&[0; 33], 3).is_ok());
        assert!(check_key_len(&[0; 32], 1).is_ok());
        assert!(
            matches!(check_key_len(&[0; 32], 3), Err(SealError::InvalidKey(m)) if m.contains("shorter"))
        );
        assert!(
            matches!(check_key_len(&[0; 34], 3), Err(SealError::InvalidKey(m)) if m.contains("longer"))
        );
        assert!(check_key_len(&[0; 33], 1).is_err());
    }
}
