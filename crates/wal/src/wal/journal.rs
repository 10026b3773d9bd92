//! The key journal: which keys each WAL entry wrote, kept after the entry's values are gone.
//!
//! Truncation moves an entry out of the WAL into the journal, in the same batch: its record is
//! deleted and the keys it wrote are stored at `repl/journal/{epoch:020}-{index:020}`. So for
//! every index after the journal's oldest, the WAL (values) or the journal (keys) says what
//! changed, and a secondary whose position the WAL no longer holds can catch up by fetching the
//! current values of those keys: work in the number of writes it missed, not in the keyspace
//! (the Merkle diff lists every key of the differing cells by a scan of both stores).
//!
//! Design reasons:
//! - **Keys only.** A KV write's keys are a tenth of its values, so the journal reaches about
//!   ten times further back than a WAL of the same size (`key_journal_retention`, in indices).
//! - **Written by truncation, not by commits.** The commit path stays as it was (a second table
//!   rewritten per commit is what the stored Merkle forms cost); moving a page of 256 entries
//!   is one background batch.
//! - **Epochs instead of deletions at a reset.** A reset (a sync that replaced this store's
//!   history) bumps the epoch in the batch that writes its marker, before it deletes any entry; older
//!   epochs are ignored at once and deleted by later truncation passes, so a reset never waits
//!   for a million journal deletions.

use std::collections::BTreeSet;

use bunker_storage::{Backend, Op};

use super::record::{decode_index, encode_index, seal, unseal};
use super::{storage, Result, WalEntry, WalError};
use crate::keys::LOCAL_PREFIX;

/// Journal entries live at `repl/journal/{epoch:020}-{index:020}`.
pub const JOURNAL_PREFIX: &str = "repl/journal/";
/// u64 BE of the current epoch (absent: 0); bumped by every reset.
pub const JOURNAL_EPOCH_KEY: &str = "repl/journal-epoch";

/// The storage key of the journal entry of `index` in `epoch`.
pub(super) fn journal_key(epoch: u64, index: u64) -> String {
    format!("{JOURNAL_PREFIX}{epoch:020}-{index:020}")
}

/// The prefix of every journal entry of `epoch`.
fn epoch_prefix(epoch: u64) -> String {
    format!("{JOURNAL_PREFIX}{epoch:020}-")
}

/// The epoch and index named by a journal key.
pub(super) fn parse_journal_key(key: &str) -> Result<(u64, u64)> {
    let corrupt = || WalError::Corrupt {
        record: key.to_owned(),
        reason: "not a journal key (repl/journal/, 20 digits, '-', 20 digits)".into(),
    };
    let rest = key.strip_prefix(JOURNAL_PREFIX).ok_or_else(corrupt)?;
    let (epoch, index) = rest.split_once('-').ok_or_else(corrupt)?;
    let number = |digits: &str| {
        if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(corrupt());
        }
        digits.parse::<u64>().map_err(|_| corrupt())
    };
    Ok((number(epoch)?, number(index)?))
}

/// The stored journal record of `entry`: the distinct keys it wrote, checksummed like a WAL
/// record.
pub(super) fn encode_keys(entry: &WalEntry) -> Vec<u8> {
    let keys: BTreeSet<&str> = entry.ops.iter().map(Op::key).collect();
    match postcard::to_allocvec(&keys) {
        Ok(payload) => seal(&payload),
        // Serializing strings into a Vec cannot fail; an empty record fails to decode, so the
        // primary answers a catch-up that meets it with `JournalUnavailable` (a Merkle diff).
        Err(reason) => {
            tracing::error!(wal_index = entry.index, %reason, "encoding a journal record failed");
            Vec::new()
        }
    }
}

/// The keys of the journal record stored at `key`.
pub(super) fn decode_keys(key: &str, bytes: &[u8]) -> Result<Vec<String>> {
    let corrupt = |reason: String| WalError::Corrupt {
        record: key.to_owned(),
        reason,
    };
    let payload = unseal(bytes).map_err(corrupt)?;
    let (keys, trailing) = postcard::take_from_bytes::<Vec<String>>(payload)
        .map_err(|e| corrupt(format!("undecodable payload: {e}")))?;
    if !trailing.is_empty() {
        return Err(corrupt(format!("{} trailing bytes", trailing.len())));
    }
    if let Some(local) = keys.iter().find(|k| k.starts_with(LOCAL_PREFIX)) {
        return Err(corrupt(format!("names the local key {local:?}")));
    }
    Ok(keys)
}

/// The current epoch.
pub(super) async fn epoch(backend: &dyn Backend) -> Result<u64> {
    let value = backend
        .get(JOURNAL_EPOCH_KEY)
        .await
        .map_err(storage("reading the journal epoch"))?;
    value
        .map(|bytes| decode_index(JOURNAL_EPOCH_KEY, &bytes))
        .transpose()
        .map(Option::unwrap_or_default)
}

/// The op that starts the next epoch (written with a reset's new last index).
pub(super) async fn next_epoch_op(backend: &dyn Backend) -> Result<Op> {
    let next = epoch(backend).await?.wrapping_add(1);
    Ok(Op::Put {
        key: JOURNAL_EPOCH_KEY.to_owned(),
        value: encode_index(next),
    })
}

/// The oldest index the journal holds in `epoch`, if any.
pub(super) async fn oldest(backend: &dyn Backend, epoch: u64) -> Result<Option<u64>> {
    let first = backend
        .scan(&epoch_prefix(epoch), None, 1)
        .await
        .map_err(storage("reading the oldest journal entry"))?;
    match first.first() {
        Some((key, _)) => Ok(Some(parse_journal_key(key)?.1)),
        None => Ok(None),
    }
}

/// Journal entries read per scan.
const READ_PAGE: usize = 256;

/// What the journal and the WAL say was written after a position.
#[derive(Debug, Default)]
pub struct ChangedKeys {
    /// Every key written after the position, each once.
    pub keys: BTreeSet<String>,
    /// Their bytes, for the caller's bound.
    pub bytes: usize,
}

impl ChangedKeys {
    /// Adds `keys`; false once more than `max_keys` keys or `max_bytes` bytes are held.
    pub(super) fn add(
        &mut self,
        keys: impl IntoIterator<Item = String>,
        max_keys: usize,
        max_bytes: usize,
    ) -> bool {
        for key in keys {
            let len = key.len();
            if self.keys.insert(key) {
                self.bytes = self.bytes.saturating_add(len);
            }
        }
        self.keys.len() <= max_keys && self.bytes <= max_bytes
    }
}

/// Adds the keys of journal entries of `epoch` in `(after, through]`; false if the bound was
/// passed.
pub(super) async fn collect(
    backend: &dyn Backend,
    epoch: u64,
    after: u64,
    through: u64,
    changed: &mut ChangedKeys,
    (max_keys, max_bytes): (usize, usize),
) -> Result<bool> {
    let prefix = epoch_prefix(epoch);
    let mut cursor = journal_key(epoch, after);
    loop {
        let rows = backend
            .scan(&prefix, Some(&cursor), READ_PAGE)
            .await
            .map_err(storage(format!("reading journal entries after {cursor}")))?;
        let full = rows.len() == READ_PAGE;
        for (key, value) in rows {
            if parse_journal_key(&key)?.1 > through {
                return Ok(true);
            }
            if !changed.add(decode_keys(&key, &value)?, max_keys, max_bytes) {
                return Ok(false);
            }
            cursor = key;
        }
        if !full {
            return Ok(true);
        }
    }
}

/// Deletes the oldest journal entries that are of an older epoch than `epoch` or at or below
/// `cutoff`, at most `page` in one batch. Returns how many, and whether more may remain.
pub(super) async fn delete_page(
    backend: &dyn Backend,
    epoch: u64,
    cutoff: u64,
    page: usize,
) -> Result<(u64, bool)> {
    let rows = backend
        .scan(JOURNAL_PREFIX, None, page)
        .await
        .map_err(storage("scanning journal entries to delete"))?;
    let page_full = rows.len() == page;
    let mut deletes = Vec::with_capacity(rows.len());
    for (key, _) in rows {
        // A key that does not parse was not written by this module: leave it.
        let Ok((e, index)) = parse_journal_key(&key) else {
            break;
        };
        if e >= epoch && index > cutoff {
            break;
        }
        deletes.push(Op::Delete { key });
    }
    let count = deletes.len();
    if count == 0 {
        return Ok((0, false));
    }
    backend.batch(deletes).await.map_err(storage(format!(
        "deleting journal entries through {cutoff}"
    )))?;
    Ok((count as u64, count == page && page_full))
}
