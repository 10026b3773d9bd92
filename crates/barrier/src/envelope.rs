//! The byte format of one encrypted value, and AES-256-GCM sealing/opening of it.
//!
//! ```text
//! [version: 1 byte = 1][term: u32 big-endian][nonce: 12 bytes][ciphertext || tag (16 bytes)]
//! ```
//!
//! The term names the keyring key that encrypted the value, so values written before a
//! rotation still decrypt afterwards. Nonces are 96 random bits from AWS-LC's RNG; with random
//! nonces NIST SP 800-38D bounds one key to 2^32 encryptions, which is why the barrier counts
//! encryptions (see `Barrier::key_status`) so operators can rotate long before that.
//!
//! The random bits are drawn [`NONCES_PER_DRAW`] nonces at a time into a per-thread pool
//! ([`next_nonce`]): each draw from AWS-LC's CTR-DRBG costs a fixed ~2,300 instructions (its
//! reseed checks and state update) however few bytes it returns, which was half of a seal and
//! 4.5 % of a KV write's request CPU (`bench/README.md`). A GCM nonce must be unique, not
//! secret (it is stored in the clear beside the ciphertext), so holding the next few in memory
//! reveals nothing; each pooled nonce is handed out once and zeroed as it is taken, and an
//! all-zero slot is refused, so a pool that failed to advance or refill fails the seal rather
//! than repeat a nonce. The pool assumes the process never forks (Bunker does not: no fork,
//! no daemonizing): a forked child would inherit and hand out the same pooled nonces, which
//! AWS-LC's own fork detection cannot see.
//!
//! The associated data is supplied by the caller (the storage path for barrier values), so a
//! ciphertext copied to another path fails authentication instead of decrypting.
//!
//! Every length is checked before any slicing: a short or garbled value is an error, never a
//! panic.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use zeroize::{Zeroize, Zeroizing};

/// Format version written in the first byte of every value.
pub(crate) const FORMAT_VERSION: u8 = 1;
/// AES-256 key length in bytes.
pub(crate) const KEY_LEN: usize = 32;
/// GCM tag length in bytes.
pub(crate) const TAG_LEN: usize = 16;
const TERM_LEN: usize = 4;
/// Bytes before the ciphertext: version, term, nonce.
pub(crate) const HEADER_LEN: usize = 1 + TERM_LEN + NONCE_LEN;

/// An AES-256-GCM key bound to the keyring term it belongs to.
///
/// The expanded key lives inside AWS-LC, whose `OPENSSL_free` cleanses memory on drop.
pub(crate) struct TermCipher {
    term: u32,
    key: LessSafeKey,
}

impl std::fmt::Debug for TermCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TermCipher")
            .field("term", &self.term)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// Nonces drawn from the RNG at once into a thread's pool (384 bytes).
const NONCES_PER_DRAW: usize = 32;

/// A thread's random bytes not yet handed out as nonces: `bytes[taken..]` are unused.
struct NoncePool {
    bytes: [u8; NONCE_LEN * NONCES_PER_DRAW],
    taken: usize,
}

thread_local! {
    static NONCE_POOL: std::cell::RefCell<NoncePool> = const {
        std::cell::RefCell::new(NoncePool {
            bytes: [0; NONCE_LEN * NONCES_PER_DRAW],
            // Empty: the first nonce draws.
            taken: NONCE_LEN * NONCES_PER_DRAW,
        })
    };
}

/// The next 96 random bits for a nonce, from this thread's pool, refilled from AWS-LC's RNG
/// when it is used up. `None` (the seal fails, nothing is handed out) if the RNG fails, if
/// the pool is already borrowed (re-entry: cannot happen, nothing here calls back) or if the
/// slot is all zero (a slot already taken; a fresh one is all zero once in 2^96).
fn next_nonce() -> Option<[u8; NONCE_LEN]> {
    NONCE_POOL.with(|pool| {
        let mut pool = pool.try_borrow_mut().ok()?;
        let pool = &mut *pool;
        if pool.taken + NONCE_LEN > pool.bytes.len() {
            aws_lc_rs::rand::fill(&mut pool.bytes).ok()?;
            pool.taken = 0;
        }
        let slot = pool.bytes.get_mut(pool.taken..pool.taken + NONCE_LEN)?;
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(slot);
        // Taken bytes are zeroed and a zero slot refused: a bug that stopped the pool from
        // advancing or refilling fails seals instead of repeating a nonce.
        slot.fill(0);
        pool.taken += NONCE_LEN;
        (nonce != [0; NONCE_LEN]).then_some(nonce)
    })
}

/// A parsed, not yet authenticated, stored value.
pub(crate) struct Envelope<'a> {
    pub(crate) term: u32,
    nonce: [u8; NONCE_LEN],
    sealed: &'a [u8],
}

/// Split a stored value into its parts, checking every length first.
pub(crate) fn parse(stored: &[u8]) -> Result<Envelope<'_>, &'static str> {
    let (version, rest) = stored.split_first().ok_or("value is empty")?;
    if *version != FORMAT_VERSION {
        return Err("unsupported format version");
    }
    let (term, rest) = rest
        .split_first_chunk::<TERM_LEN>()
        .ok_or("value is shorter than its header")?;
    let (nonce, sealed) = rest
        .split_first_chunk::<NONCE_LEN>()
        .ok_or("value is shorter than its header")?;
    if sealed.len() < TAG_LEN {
        return Err("value is shorter than its authentication tag");
    }
    Ok(Envelope {
        term: u32::from_be_bytes(*term),
        nonce: *nonce,
        sealed,
    })
}

impl TermCipher {
    /// `None` when `key` is not exactly [`KEY_LEN`] bytes.
    pub(crate) fn new(term: u32, key: &[u8]) -> Option<Self> {
        if key.len() != KEY_LEN {
            return None;
        }
        let unbound = UnboundKey::new(&AES_256_GCM, key).ok()?;
        Some(TermCipher {
            term,
            key: LessSafeKey::new(unbound),
        })
    }

    pub(crate) fn term(&self) -> u32 {
        self.term
    }

    /// Encrypt `plaintext` into the stored format. Fails only if the RNG or AWS-LC fails.
    pub(crate) fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, &'static str> {
        let nonce = next_nonce().ok_or("generating a random nonce")?;
        // Exact capacity: the buffer never reallocates, so no stray plaintext copy is left.
        let mut out = Vec::with_capacity(HEADER_LEN + plaintext.len() + TAG_LEN);
        out.push(FORMAT_VERSION);
        out.extend_from_slice(&self.term.to_be_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let body = out
            .get_mut(HEADER_LEN..)
            .ok_or("building the value header")?;
        match self.key.seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            body,
        ) {
            Ok(tag) => {
                out.extend_from_slice(tag.as_ref());
                Ok(out)
            }
            Err(_) => {
                out.zeroize();
                Err("encrypting a value")
            }
        }
    }

    /// Authenticate and decrypt a parsed value. The caller has checked `envelope.term`.
    pub(crate) fn open(&self, aad: &[u8], envelope: &Envelope<'_>) -> Option<Zeroizing<Vec<u8>>> {
        let mut buf = Zeroizing::new(envelope.sealed.to_vec());
        let plaintext_len = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(envelope.nonce),
                Aad::from(aad),
                buf.as_mut_slice(),
            )
            .ok()?
            .len();
        buf.truncate(plaintext_len);
        Some(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_rejects_every_short_prefix() {
        let cipher = TermCipher::new(7, &[9u8; KEY_LEN]).expect("key");
        let stored = cipher.seal(b"aad", b"").expect("seal");
        assert_eq!(stored.len(), HEADER_LEN + TAG_LEN);
        for len in 0..stored.len() {
            assert!(
                parse(&stored[..len]).is_err(),
                "prefix of {len} bytes parsed"
            );
        }
        let envelope = parse(&stored).expect("parse");
        assert_eq!(envelope.term, 7);
        assert_eq!(cipher.open(b"aad", &envelope).expect("open").len(), 0);
    }

    /// Every seal gets a nonce of its own, across pool refills and threads (each thread has
    /// its own pool): a nonce handed out twice, or a used-up pool not refilled (its taken
    /// bytes are zeroed), shows as a repeat.
    #[test]
    fn nonces_are_never_repeated_across_refills_and_threads() {
        let seals = NONCES_PER_DRAW * 4 + 5;
        let per_thread: Vec<Vec<[u8; NONCE_LEN]>> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..3)
                .map(|_| {
                    scope.spawn(|| {
                        let cipher = TermCipher::new(1, &[3u8; KEY_LEN]).expect("key");
                        (0..seals)
                            .map(|i| {
                                let stored = cipher.seal(b"aad", &[i as u8]).expect("seal");
                                let envelope = parse(&stored).expect("parse");
                                assert_eq!(
                                    cipher.open(b"aad", &envelope).expect("open").as_slice(),
                                    &[i as u8]
                                );
                                envelope.nonce
                            })
                            .collect()
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().expect("thread"))
                .collect()
        });
        let all: Vec<_> = per_thread.into_iter().flatten().collect();
        let distinct: std::collections::HashSet<_> = all.iter().collect();
        assert_eq!(all.len(), 3 * seals);
        assert_eq!(distinct.len(), all.len(), "a nonce was handed out twice");
    }

    #[test]
    fn wrong_key_length_is_refused() {
        assert!(TermCipher::new(1, &[0u8; 31]).is_none());
        assert!(TermCipher::new(1, &[0u8; 33]).is_none());
    }
}
