//! The persisted form of the WAL: entry records, their keys, and the last-index value.
//!
//! A record is `[version u8 = 1][crc32 u32 BE of payload][postcard payload]`. The version lets a
//! later format be told apart from this one; the checksum catches torn or rotted records before
//! their ops are applied anywhere. postcard is compact and deterministic, so a secondary that
//! re-encodes a received entry stores the very bytes the primary stored.
//!
//! Entry keys are `repl/wal/{index:020}`: zero-padded, so byte order (the order of
//! `Backend::scan`) is index order.

use bunker_storage::Op;
use serde::{Deserialize, Serialize};

use super::{WalError, WAL_PREFIX};

/// Format version written in the first byte of every entry record (and of the key journal's
/// older per-entry records, `journal.rs`).
pub const ENTRY_VERSION: u8 = 1;
/// Version byte plus checksum.
const HEADER_BYTES: usize = 5;

/// One committed batch of the primary: its replicated (non-local) ops, in batch order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalEntry {
    /// Position in the log; strictly increasing in commit order, possibly with gaps.
    pub index: u64,
    /// Primary's wall clock when the batch was committed, in ms since the Unix epoch.
    pub time_ms: u64,
    pub ops: Vec<Op>,
}

/// Borrowed twin of [`WalEntry`] with the same serialized form, so the recorder can encode a
/// batch without cloning its values.
#[derive(Serialize)]
struct WalEntryRef<'a> {
    index: u64,
    time_ms: u64,
    ops: &'a [&'a Op],
}

/// Encodes `e` as a versioned, checksummed record.
pub fn encode_entry(e: &WalEntry) -> Vec<u8> {
    let ops: Vec<&Op> = e.ops.iter().collect();
    match encode_parts(e.index, e.time_ms, &ops) {
        Ok(record) => record,
        // Serializing integers, strings and byte vectors into a Vec cannot fail; an empty
        // record is rejected by `decode_entry`, so this could never pass as valid.
        Err(reason) => {
            tracing::error!(wal_index = e.index, %reason, "encoding WAL entry failed");
            Vec::new()
        }
    }
}

/// Encodes an entry from borrowed ops. Fails only if postcard does.
pub(super) fn encode_parts(index: u64, time_ms: u64, ops: &[&Op]) -> Result<Vec<u8>, String> {
    let entry = WalEntryRef {
        index,
        time_ms,
        ops,
    };
    let payload = postcard::to_allocvec(&entry).map_err(|e| e.to_string())?;
    Ok(seal(ENTRY_VERSION, &payload))
}

/// `payload` with the record header: `version` and checksum.
pub(super) fn seal(version: u8, payload: &[u8]) -> Vec<u8> {
    let mut record = Vec::with_capacity(HEADER_BYTES + payload.len());
    record.push(version);
    record.extend_from_slice(&crc32fast::hash(payload).to_be_bytes());
    record.extend_from_slice(payload);
    record
}

/// Decodes a record, checking its length, version and checksum, and that the payload holds
/// exactly one entry. Never panics, whatever the input.
pub fn decode_entry(bytes: &[u8]) -> Result<WalEntry, WalError> {
    decode(bytes).map_err(|reason| WalError::Corrupt {
        record: "WAL entry".into(),
        reason,
    })
}

fn decode(bytes: &[u8]) -> Result<WalEntry, String> {
    decode_as(bytes)
}

/// A record's one entry, read as `T` ([`WalEntry`], or a borrowed twin of it): its version and
/// checksum checked, and nothing after the entry.
fn decode_as<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, String> {
    let payload = unseal_version(bytes, ENTRY_VERSION)?;
    let (entry, trailing) =
        postcard::take_from_bytes::<T>(payload).map_err(|e| format!("undecodable payload: {e}"))?;
    if !trailing.is_empty() {
        return Err(format!("{} trailing bytes after the entry", trailing.len()));
    }
    Ok(entry)
}

/// The payload of a record made by [`seal`] with `expected` as its version, its checksum
/// checked.
fn unseal_version(bytes: &[u8], expected: u8) -> Result<&[u8], String> {
    let (version, payload) = unseal(bytes)?;
    if version != expected {
        return Err(format!(
            "unsupported record version {version} (expected {expected})"
        ));
    }
    Ok(payload)
}

/// The version and payload of a record made by [`seal`], its checksum checked.
pub(super) fn unseal(bytes: &[u8]) -> Result<(u8, &[u8]), String> {
    let Some((&version, rest)) = bytes.split_first() else {
        return Err("record is empty".into());
    };
    let Some((crc, payload)) = rest.split_first_chunk::<4>() else {
        return Err(format!(
            "record of {} bytes is shorter than its {HEADER_BYTES}-byte header",
            bytes.len()
        ));
    };
    let expected = u32::from_be_bytes(*crc);
    let actual = crc32fast::hash(payload);
    if expected != actual {
        return Err(format!(
            "checksum mismatch: stored {expected:08x}, computed {actual:08x}"
        ));
    }
    Ok((version, payload))
}

/// Decodes the record stored at `key`, checking that the index inside matches the key.
pub(super) fn decode_stored(key: &str, bytes: &[u8]) -> Result<WalEntry, WalError> {
    decode_stored_as(key, bytes, |entry: &WalEntry| entry.index)
}

/// The record stored at `key` read as `T`, checked as [`decode_as`] checks it and for the
/// index inside (`index_of`) matching the key's.
fn decode_stored_as<'a, T: Deserialize<'a>>(
    key: &str,
    bytes: &'a [u8],
    index_of: impl Fn(&T) -> u64,
) -> Result<T, WalError> {
    let corrupt = |reason: String| WalError::Corrupt {
        record: key.to_owned(),
        reason,
    };
    let index = parse_entry_key(key)?;
    let entry = decode_as::<T>(bytes).map_err(corrupt)?;
    let found = index_of(&entry);
    if found != index {
        return Err(corrupt(format!(
            "holds entry {found} under the key of entry {index}"
        )));
    }
    Ok(entry)
}

/// Borrowed twin of [`WalEntry`] for readers that need each op's key only (the key journal):
/// keys and values are borrowed from the record, never copied. The wire form is the same:
/// postcard writes a `Vec<u8>` and a byte string alike (a length, then the bytes), and fields
/// and variants by position.
#[derive(Deserialize)]
struct WalEntryKeys<'a> {
    index: u64,
    _time_ms: u64,
    #[serde(borrow)]
    ops: Vec<OpKey<'a>>,
}

#[derive(Deserialize)]
enum OpKey<'a> {
    Put {
        #[serde(borrow)]
        key: &'a str,
        #[serde(borrow)]
        _value: &'a [u8],
    },
    Delete {
        #[serde(borrow)]
        key: &'a str,
    },
}

/// The keys the record stored at `key` writes, in order, checked as [`decode_stored`] checks
/// the whole record (checksum, version, one entry, its index), without copying its values.
pub(super) fn decode_stored_keys<'a>(key: &str, bytes: &'a [u8]) -> Result<Vec<&'a str>, WalError> {
    let entry = decode_stored_as(key, bytes, |entry: &WalEntryKeys<'a>| entry.index)?;
    Ok(entry
        .ops
        .into_iter()
        .map(|op| match op {
            OpKey::Put { key, .. } | OpKey::Delete { key } => key,
        })
        .collect())
}

/// The storage key of entry `index`.
pub fn entry_key(index: u64) -> String {
    format!("{WAL_PREFIX}{index:020}")
}

/// The index named by an entry key.
pub(super) fn parse_entry_key(key: &str) -> Result<u64, WalError> {
    let digits = key.strip_prefix(WAL_PREFIX).unwrap_or_default();
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(WalError::Corrupt {
            record: key.to_owned(),
            reason: "not a WAL entry key (repl/wal/ and 20 digits)".into(),
        });
    }
    digits.parse().map_err(|_| WalError::Corrupt {
        record: key.to_owned(),
        reason: "entry index out of range".into(),
    })
}

/// The stored form of a last index.
pub(super) fn encode_index(index: u64) -> Vec<u8> {
    index.to_be_bytes().to_vec()
}

/// Reads an index stored by [`encode_index`] at `key`.
pub(super) fn decode_index(key: &str, bytes: &[u8]) -> Result<u64, WalError> {
    let bytes: [u8; 8] = bytes.try_into().map_err(|_| WalError::Corrupt {
        record: key.to_owned(),
        reason: format!("expected an 8-byte index, found {} bytes", bytes.len()),
    })?;
    Ok(u64::from_be_bytes(bytes))
}
