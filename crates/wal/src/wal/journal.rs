//! The key journal: which keys each WAL entry wrote, kept after the entry's values are gone.
//!
//! Truncation moves entries out of the WAL into the journal, in the same batch: their records
//! are deleted and the keys they wrote are stored as one *span* record at
//! `repl/journal/{epoch:020}-{last:020}`, `last` being the newest index it covers; the record
//! holds the oldest (`first`) and the distinct keys of every entry in `first..=last`. So for
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
//! - **A span per page, not a record per entry.** A record per entry made each page's batch
//!   256 deletes and 256 puts, and the journal's own trimming 256 more deletes: at 6,500
//!   writes/s a DR pair's storage writers spent milliseconds per page on them, and client
//!   commits queued behind (bench/README.md, "Known problems"). A span is one put, and
//!   trimming drops a span once all of it has passed the retention, so the journal keeps up to
//!   a span more than asked. A span is cut at [`SPAN_KEY_BYTES`] of keys, and where the
//!   journal's retention ends, so that what truncation moves past the reach is dropped whole.
//!   Each key carries the newest index of the span that wrote it, so a catch-up from inside a
//!   span fetches only what was written after its position. Records of one entry each
//!   (version 1, from before spans) are read as spans of one.
//! - **Epochs instead of deletions at a reset.** A reset (a sync that replaced this store's
//!   history) bumps the epoch in the batch that writes its marker, before it deletes any entry; older
//!   epochs are ignored at once and deleted by later truncation passes, so a reset never waits
//!   for a million journal deletions.

use std::collections::{BTreeMap, BTreeSet};

use bunker_storage::{Backend, Op};

use super::record::{decode_index, encode_index, seal, unseal, ENTRY_VERSION};
use super::{storage, Result, WalError};
use crate::keys::LOCAL_PREFIX;

/// Journal entries live at `repl/journal/{epoch:020}-{index:020}`.
pub const JOURNAL_PREFIX: &str = "repl/journal/";
/// u64 BE of the current epoch (absent: 0); bumped by every reset.
pub const JOURNAL_EPOCH_KEY: &str = "repl/journal-epoch";

/// The storage key of the journal span of `epoch` that ends at `index`.
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

/// Version of a span record (`[2][crc32][postcard (first, keys)]`, as WAL records are sealed).
const SPAN_VERSION: u8 = 2;
/// Keys of at most about this many bytes go into one span; the next entry starts another.
const SPAN_KEY_BYTES: usize = 256 * 1024;

/// The keys of a run of consecutive WAL entries: what one journal record holds.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Span {
    /// The oldest index it covers (its key names the newest).
    pub first: u64,
    /// The distinct keys the entries in `first..=last` wrote, each with the newest index that
    /// wrote it, so that a catch-up from inside the span gets only what was written after.
    pub keys: Vec<(String, u64)>,
}

/// Gathers the keys of entries being truncated, oldest first, into the puts of their span
/// records in one epoch.
pub(super) struct SpanWriter {
    epoch: u64,
    /// Entries at or below this index are past the journal's reach: they close a span of
    /// their own, which trimming drops whole.
    reach_cutoff: u64,
    /// The open span: its first and last index, its keys and their bytes.
    open: Option<(u64, u64)>,
    keys: BTreeMap<String, u64>,
    key_bytes: usize,
    puts: Vec<Op>,
}

impl SpanWriter {
    pub(super) fn new(epoch: u64, reach_cutoff: u64) -> SpanWriter {
        SpanWriter {
            epoch,
            reach_cutoff,
            open: None,
            keys: BTreeMap::new(),
            key_bytes: 0,
            puts: Vec::new(),
        }
    }

    /// Adds entry `index`, which wrote `keys` and is newer than every entry added before.
    pub(super) fn add<'k>(&mut self, index: u64, keys: impl IntoIterator<Item = &'k str>) {
        if let Some((_, last)) = self.open {
            let crosses_reach = last <= self.reach_cutoff && index > self.reach_cutoff;
            if crosses_reach || self.key_bytes >= SPAN_KEY_BYTES {
                self.close();
            }
        }
        let first = self.open.map_or(index, |(first, _)| first);
        self.open = Some((first, index));
        for key in keys {
            match self.keys.get_mut(key) {
                Some(newest) => *newest = index,
                None => {
                    self.key_bytes += key.len();
                    self.keys.insert(key.to_owned(), index);
                }
            }
        }
    }

    fn close(&mut self) {
        let Some((first, last)) = self.open.take() else {
            return;
        };
        let keys = std::mem::take(&mut self.keys);
        self.key_bytes = 0;
        self.puts.push(Op::Put {
            key: journal_key(self.epoch, last),
            value: encode_span(first, last, &keys),
        });
    }

    /// The puts of every span, the last one closed.
    pub(super) fn finish(mut self) -> Vec<Op> {
        self.close();
        self.puts
    }
}

/// The stored record of the span `first..=last` that wrote `keys` (each with its newest index).
fn encode_span(first: u64, last: u64, keys: &BTreeMap<String, u64>) -> Vec<u8> {
    match postcard::to_allocvec(&(first, keys)) {
        Ok(payload) => seal(SPAN_VERSION, &payload),
        // Serializing integers and strings into a Vec cannot fail; an empty record fails to
        // decode, so the primary answers a catch-up that meets it with `JournalUnavailable`
        // (a Merkle diff).
        Err(reason) => {
            tracing::error!(wal_index = last, %reason, "encoding a journal record failed");
            Vec::new()
        }
    }
}

/// The span stored at `key` (a record of version 1 is the span of the one entry it names).
pub(super) fn decode_span(key: &str, bytes: &[u8]) -> Result<Span> {
    let corrupt = |reason: String| WalError::Corrupt {
        record: key.to_owned(),
        reason,
    };
    let (_, last) = parse_journal_key(key)?;
    let (version, payload) = unseal(bytes).map_err(corrupt)?;
    let undecodable = |e: postcard::Error| corrupt(format!("undecodable payload: {e}"));
    let (span, trailing) = match version {
        ENTRY_VERSION => {
            let (keys, trailing) =
                postcard::take_from_bytes::<Vec<String>>(payload).map_err(undecodable)?;
            let keys = keys.into_iter().map(|key| (key, last)).collect();
            (Span { first: last, keys }, trailing)
        }
        SPAN_VERSION => {
            let ((first, keys), trailing) =
                postcard::take_from_bytes::<(u64, BTreeMap<String, u64>)>(payload)
                    .map_err(undecodable)?;
            if let Some((key, index)) = keys.iter().find(|(_, i)| !(first..=last).contains(*i)) {
                return Err(corrupt(format!(
                    "names {key:?} at {index}, outside its span {first}..={last}"
                )));
            }
            let keys = keys.into_iter().collect();
            (Span { first, keys }, trailing)
        }
        other => {
            return Err(corrupt(format!(
                "unsupported record version {other} (expected {ENTRY_VERSION} or {SPAN_VERSION})"
            )))
        }
    };
    if !trailing.is_empty() {
        return Err(corrupt(format!("{} trailing bytes", trailing.len())));
    }
    if span.first > last {
        return Err(corrupt(format!(
            "a span from {} cannot end at {last}",
            span.first
        )));
    }
    if let Some((local, _)) = span.keys.iter().find(|(k, _)| k.starts_with(LOCAL_PREFIX)) {
        return Err(corrupt(format!("names the local key {local:?}")));
    }
    Ok(span)
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

/// The oldest index the journal holds in `epoch` (the first of its oldest span), if any.
pub(super) async fn oldest(backend: &dyn Backend, epoch: u64) -> Result<Option<u64>> {
    let first = backend
        .scan(&epoch_prefix(epoch), None, 1)
        .await
        .map_err(storage("reading the oldest journal entry"))?;
    let Some((key, value)) = first.first() else {
        return Ok(None);
    };
    match decode_span(key, value) {
        Ok(span) => Ok(Some(span.first)),
        // A damaged oldest span must neither stop truncation (which asks whether the journal
        // holds anything) nor end every catch-up: its key's index, the span's last, reaches
        // less far back than its first did, so positions before it are refused (a Merkle
        // diff), and a catch-up that reads it fails on it.
        Err(error) => {
            tracing::warn!(%error, "the oldest key journal record is damaged");
            Ok(Some(parse_journal_key(key)?.1))
        }
    }
}

/// Journal records read per scan (spans of up to [`SPAN_KEY_BYTES`] each).
const READ_PAGE: usize = 16;

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

/// Adds the keys that spans of `epoch` say were written in `(after, through]` (and maybe some
/// written later in the last span read); false if the bound was passed.
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
            let span = decode_span(&key, &value)?;
            if span.first > through {
                return Ok(true);
            }
            let written_after = span.keys.into_iter().filter(|(_, i)| *i > after);
            if !changed.add(written_after.map(|(key, _)| key), max_keys, max_bytes) {
                return Ok(false);
            }
            cursor = key;
        }
        if !full {
            return Ok(true);
        }
    }
}

/// Deletes the oldest journal records that are of an older epoch than `epoch` or whose span
/// ends at or below `cutoff`, at most `page` in one batch. Returns how many, and whether more may remain.
pub(super) async fn delete_page(
    backend: &dyn Backend,
    epoch: u64,
    cutoff: u64,
    page: usize,
) -> Result<(u64, bool)> {
    // A key that does not parse was not written by this module: it and what follows are kept.
    let kept =
        |key: &str| parse_journal_key(key).map_or(true, |(e, index)| e >= epoch && index > cutoff);
    let rows =
        super::oldest_page_if_due(backend, JOURNAL_PREFIX, page, |key| Ok(!kept(key))).await?;
    let page_full = rows.len() == page;
    let mut deletes = Vec::with_capacity(rows.len());
    for (key, _) in rows {
        if kept(&key) {
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
