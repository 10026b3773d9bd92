//! Input limits every backend enforces before touching storage.
//!
//! The limits keep one request from monopolising memory or a commit: a key is a storage path
//! (at most [`MAX_KEY_BYTES`]), a value is one encrypted entry (at most [`MAX_VALUE_BYTES`]),
//! and a batch is at most [`MAX_BATCH_OPS`] operations. A batch that breaks any limit is
//! rejected whole, so nothing of it is applied.

use crate::{Op, Result, StorageError};

/// Longest accepted key, in bytes.
pub const MAX_KEY_BYTES: usize = 4096;
/// Largest accepted value, in bytes (64 MiB).
pub const MAX_VALUE_BYTES: usize = 64 * 1024 * 1024;
/// Most operations accepted in one batch.
pub const MAX_BATCH_OPS: usize = 10_000;

/// How much of an offending key an error message repeats.
const KEY_ECHO_CHARS: usize = 64;

/// Checks that `key` is non-empty and at most [`MAX_KEY_BYTES`] long.
pub fn validate_key(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(invalid_key(key, "key is empty"));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(invalid_key(key, "key is longer than 4096 bytes"));
    }
    Ok(())
}

/// Checks every limit on a batch: op count, then each key and value.
pub fn validate_batch(ops: &[Op]) -> Result<()> {
    if ops.len() > MAX_BATCH_OPS {
        return Err(StorageError::BatchTooLarge {
            ops: ops.len(),
            limit: MAX_BATCH_OPS,
        });
    }
    validate_ops(ops)
}

/// Checks each key and value of `ops`, whatever their number (see
/// [`crate::Backend::batch_unbounded`]).
pub fn validate_ops(ops: &[Op]) -> Result<()> {
    for op in ops {
        validate_key(op.key())?;
        if let Op::Put { key, value } = op {
            if value.len() > MAX_VALUE_BYTES {
                return Err(StorageError::ValueTooLarge {
                    key: echo_key(key),
                    bytes: value.len(),
                    limit: MAX_VALUE_BYTES,
                });
            }
        }
    }
    Ok(())
}

/// Bytes of keys and values a batch carries; used to bound group commits.
pub(crate) fn batch_bytes(ops: &[Op]) -> usize {
    ops.iter().fold(0usize, |total, op| {
        let value_len = match op {
            Op::Put { value, .. } => value.len(),
            Op::Delete { .. } => 0,
        };
        total
            .saturating_add(op.key().len())
            .saturating_add(value_len)
    })
}

fn invalid_key(key: &str, reason: &'static str) -> StorageError {
    StorageError::InvalidKey {
        key: echo_key(key),
        reason,
    }
}

/// The start of a key, short enough to put in an error message.
fn echo_key(key: &str) -> String {
    let mut echo: String = key.chars().take(KEY_ECHO_CHARS).collect();
    if echo.len() < key.len() {
        echo.push('…');
    }
    echo
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_limits_are_inclusive() {
        assert!(validate_key(&"k".repeat(MAX_KEY_BYTES)).is_ok());
        assert!(matches!(
            validate_key(&"k".repeat(MAX_KEY_BYTES + 1)),
            Err(StorageError::InvalidKey { .. })
        ));
        assert!(matches!(
            validate_key(""),
            Err(StorageError::InvalidKey { .. })
        ));
    }

    #[test]
    fn long_keys_are_echoed_short() {
        let Err(StorageError::InvalidKey { key, .. }) = validate_key(&"é".repeat(5000)) else {
            panic!("a 10000-byte key must be rejected");
        };
        assert_eq!(key.chars().count(), KEY_ECHO_CHARS + 1);
    }

    #[test]
    fn batch_bytes_counts_keys_and_values() {
        let ops = vec![
            Op::Put {
                key: "ab".into(),
                value: vec![0; 10],
            },
            Op::Delete { key: "cde".into() },
        ];
        assert_eq!(batch_bytes(&ops), 15);
    }
}
