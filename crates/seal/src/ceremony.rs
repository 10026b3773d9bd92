//! Quorum ceremonies (generate-root, DR operation token, DR promote) and key-share parsing.
//!
//! A ceremony only collects shares and recombines them; it does not know the root key. The
//! caller checks the result with `Barrier::verify_root_key`, exactly as unseal does.

use base64::Engine as _;
use zeroize::Zeroizing;

use crate::shamir;
use crate::{Result, SealError};

/// A quorum ceremony (generate-root, DR operation token, DR promote).
pub struct KeyCeremony {
    pub nonce: String,
    pub required: u8,
    shares: Vec<Zeroizing<Vec<u8>>>,
}

impl std::fmt::Debug for KeyCeremony {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyCeremony")
            .field("nonce", &self.nonce)
            .field("required", &self.required)
            .field("progress", &self.shares.len())
            .finish()
    }
}

impl KeyCeremony {
    /// A ceremony needing `required` distinct shares (the seal threshold), with a fresh
    /// random nonce.
    pub fn new(required: u8) -> Self {
        KeyCeremony {
            nonce: uuid::Uuid::new_v4().to_string(),
            required,
            shares: Vec::new(),
        }
    }

    pub fn nonce(&self) -> &str {
        &self.nonce
    }

    /// Distinct shares collected so far.
    pub fn progress(&self) -> u8 {
        u8::try_from(self.shares.len()).unwrap_or(u8::MAX)
    }

    /// Add one share. Returns the combined root key once `required` distinct shares are in
    /// (and empties the ceremony); `None` while more are needed.
    ///
    /// A share already given is an error (as in Vault's generate-root). If the shares do not
    /// combine, they are all discarded and the error is `InvalidKey`.
    pub fn add_share(&mut self, share: &[u8]) -> Result<Option<Zeroizing<Vec<u8>>>> {
        if self.required == 0 {
            return Err(SealError::InvalidConfig(
                "a ceremony needs at least one share".into(),
            ));
        }
        shamir::check_key_len(share, self.required)?;
        if shamir::contains_share(&self.shares, share) {
            return Err(SealError::BadInput(
                "given key has already been provided during this operation".into(),
            ));
        }
        self.shares.push(Zeroizing::new(share.to_vec()));
        if self.shares.len() < usize::from(self.required) {
            return Ok(None);
        }
        let shares = std::mem::take(&mut self.shares);
        shamir::combine(&shares, self.required).map(Some)
    }
}

/// Decode a key share typed by an operator: hex first, then standard base64, as Vault does.
pub fn parse_key_share(s: &str) -> Result<Zeroizing<Vec<u8>>> {
    let s = s.trim();
    if s.is_empty() {
        return Err(SealError::InvalidKey("key share is empty".into()));
    }
    if let Ok(bytes) = hex::decode(s) {
        return Ok(Zeroizing::new(bytes));
    }
    if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(s) {
        return Ok(Zeroizing::new(bytes));
    }
    Err(SealError::InvalidKey(
        "key share must be a valid hex or base64 string".into(),
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ceremony_combines_at_quorum_and_rejects_duplicates() {
        let root = bunker_barrier::Barrier::generate_root_key();
        let shares = shamir::split(&root, 5, 3).unwrap();
        let mut ceremony = KeyCeremony::new(3);
        assert_eq!(ceremony.nonce().len(), 36);
        assert_eq!(ceremony.nonce(), ceremony.nonce);
        assert!(ceremony.add_share(&shares[4]).unwrap().is_none());
        assert!(matches!(
            ceremony.add_share(&shares[4]),
            Err(SealError::BadInput(_))
        ));
        assert_eq!(ceremony.progress(), 1);
        assert!(ceremony.add_share(&shares[0]).unwrap().is_none());
        assert_eq!(ceremony.progress(), 2);
        let key = ceremony.add_share(&shares[2]).unwrap().unwrap();
        assert_eq!(*key, *root);
        assert_eq!(ceremony.progress(), 0);
        assert!(!format!("{ceremony:?}").contains("shares:"));
    }

    #[test]
    fn ceremony_with_one_share_returns_it() {
        let root = bunker_barrier::Barrier::generate_root_key();
        let mut ceremony = KeyCeremony::new(1);
        assert!(ceremony.add_share(&root[..31]).is_err());
        assert_eq!(*ceremony.add_share(&root).unwrap().unwrap(), *root);
    }

    #[test]
    fn ceremony_discards_shares_that_do_not_combine() {
        let shares = shamir::split(&bunker_barrier::Barrier::generate_root_key(), 3, 2).unwrap();
        let mut twin = shares[0].clone();
        twin[0] ^= 0xFF;
        let mut ceremony = KeyCeremony::new(2);
        ceremony.add_share(&shares[0]).unwrap();
        assert!(matches!(
            ceremony.add_share(&twin),
            Err(SealError::InvalidKey(_))
        ));
        assert_eq!(ceremony.progress(), 0);
    }

    #[test]
    fn parses_hex_and_base64() {
        let bytes: Vec<u8> = (0u8..33).collect();
        let hex_form = hex::encode(&bytes);
        let b64_form = base64::engine::general_purpose::STANDARD.encode(&bytes);
        assert_eq!(*parse_key_share(&hex_form).unwrap(), bytes);
        assert_eq!(*parse_key_share(&hex_form.to_uppercase()).unwrap(), bytes);
        assert_eq!(*parse_key_share(&format!("  {b64_form}\n")).unwrap(), bytes);
        // 32 bytes: padded base64.
        let root: Vec<u8> = (100u8..132).collect();
        let padded = base64::engine::general_purpose::STANDARD.encode(&root);
        assert!(padded.ends_with('='));
        assert_eq!(*parse_key_share(&padded).unwrap(), root);

        for bad in ["", "   ", "not a key!", "abc", "zz==", "%%%%"] {
            assert!(
                matches!(parse_key_share(bad), Err(SealError::InvalidKey(_))),
                "{bad:?} parsed"
            );
        }
    }
}
