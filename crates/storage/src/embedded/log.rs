//! The commit log: where an embedded write becomes durable.
//!
//! A redb durable commit writes every page the transaction dirtied (a lone KV write dirties
//! about nine, scattered through the file) and then syncs them: on this project's disks that
//! was 0.8 ms, two to three times one small sequential sync. So each group commit instead
//! appends one record (its ops, numbered) to this file and syncs it; redb commits the same
//! transaction without syncing ([`redb::Durability::None`]: visible at once, persisted by the
//! next durable commit). Every few commits, every [`CHECKPOINT_INTERVAL`], or when a region of
//! the log is full, redb makes everything so far durable (a *checkpoint*, numbered in redb's
//! own `log` table) on a thread of its own while the writer goes on logging into the other
//! region (`embedded.rs`, `overlay.rs`). Opening replays, in order, the records numbered after
//! the last checkpoint, following them from one region into the other. Each run numbers its
//! records from a base of its own, recorded as a checkpoint when the database opens
//! (`run_base` in `embedded.rs`), so a log is replayed only into the database it was written
//! for (unless the clock was wrong by centuries), and a log that is not is reported. Design
//! reason: PostgreSQL's and etcd's split (a sequential log for durability, pages written in
//! the background), kept inside the storage layer so nothing above it changes.
//!
//! The file is two regions of [`REGION_BYTES`], zero-filled once; the writer appends to one,
//! and moves to the start of the other when it starts a checkpoint (the other's records are
//! all in the checkpoint before that one, which has ended: there is one checkpoint at a time).
//! An append never changes the file's size (no inode write per sync). A record is
//! `len u32 | crc32 u32 | seq u64 | ops`, the CRC over `seq` and `ops`. Replay stops at the
//! first record that is short, fails its CRC, or is not the next number: a record torn by a
//! crash was never acknowledged, and what follows the newest record of a region (zeros, or
//! older records from before it was last rewritten) is numbered below it.
//!
//! A record is written only after the one before it was synced, so a valid record of this
//! run numbered past a missing one (where an invalid record's length points, or where the
//! records stop, or first in the other region) means a record that was synced was damaged
//! since (the disk, a power loss on a device that does not protect written sectors, an
//! edit), or the database file is older than its log. Opening then fails and names the
//! record (etcd, too, refuses a WAL record whose CRC fails unless it looks torn): replaying up
//! to it would silently drop that write and every later one. The way out is the operator's:
//! restore from a backup, or move the log aside to open at the last checkpoint, losing what
//! came after it. Not caught: a damaged length field with nothing valid behind it, or a
//! damaged last record (a torn write looks the same).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::{Op, Result, StorageError};

/// File name of the commit log inside the data directory.
pub(crate) const LOG_FILE: &str = "bunker.log";
/// Size of one region of the log: a checkpoint comes at the latest when the next record would
/// not fit, and a group that does not fit an empty one is made durable by redb itself.
pub(crate) const REGION_BYTES: u64 = 16 << 20;
/// Size of the log file: two regions (a log of one region, from before checkpoints ran in the
/// background, is its first region and grows in place).
pub(crate) const LOG_BYTES: u64 = 2 * REGION_BYTES;
/// A group commit at least this long after the last checkpoint is the next checkpoint. Bounds
/// the replay at open and how long redb holds pages it cannot reuse until a durable commit.
pub(crate) const CHECKPOINT_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);
/// ...and so is the group commit after this many logged ones, which bounds what one checkpoint
/// writes (and the overlay that grows while it runs). Checkpoints run beside the writer, so
/// their cost is the CPU and the disk they share with it: 64 instead of 8 (2026-12-02,
/// interleaved, `bench/README.md`) took lone writes from 2,415-2,447 to 2,694-2,765 per second
/// and the replay lag p50 at 3,500 writes/s from 1.14-1.19 to 0.84-0.87 ms, with no checkpoint
/// wait at 256 connections (checkpoints 9.5 ms on average, 4 ms before); 256 was no faster and
/// made checkpoints of 30 ms. (When checkpoints held the writer, 8 had the shortest stalls.)
pub(crate) const CHECKPOINT_COMMITS: usize = 64;
/// The writer's record buffer is trimmed back to this after a larger record.
pub(crate) const KEPT_RECORD_BYTES: usize = 1 << 20;
/// Bytes before a record's ops: length, CRC, sequence number.
const HEADER: usize = 16;

/// Numbered records, each a group's ops.
pub(crate) type Records = Vec<(u64, Vec<Op>)>;

/// The open log file and where the next record goes.
#[derive(Debug)]
pub(crate) struct CommitLog {
    file: File,
    path: PathBuf,
    /// The region records are appended to (0 or 1).
    region: u64,
    /// Offset of the next record within the region.
    end: u64,
    /// An append, a commit or a checkpoint failed: what the file or redb holds is unknown (the
    /// kernel may have dropped the pages it could not write), so the store stops logging and
    /// commits every group durably in redb (each a checkpoint) until a restart.
    broken: bool,
}

impl CommitLog {
    /// Opens `dir`'s log, creating and zero-filling it if missing or short.
    pub(crate) fn open(dir: &Path) -> Result<CommitLog> {
        let path = dir.join(LOG_FILE);
        let file = super::open_private(&path, "commit log")?;
        let len = file
            .metadata()
            .map_err(io(format!("reading the size of {}", path.display())))?
            .len();
        if len < LOG_BYTES {
            // Written, not fallocated: a write into an unwritten extent changes metadata too.
            let zeros = vec![0u8; 1 << 20];
            let mut at = len;
            while at < LOG_BYTES {
                let n = (LOG_BYTES - at).min(zeros.len() as u64) as usize;
                file.write_all_at(zeros.get(..n).unwrap_or_default(), at)
                    .map_err(io(format!("zero-filling {}", path.display())))?;
                at += n as u64;
            }
            file.sync_all()
                .map_err(io(format!("syncing {}", path.display())))?;
            super::sync_dir(dir)?;
        }
        Ok(CommitLog {
            file,
            path,
            region: 0,
            end: 0,
            broken: false,
        })
    }

    /// The records after `checkpoint`, in order, up to the first that is missing or torn; an
    /// error if a record after that one shows it had been synced (see the module doc). Also
    /// the highest number the log was seen to hold, which the next run must number past.
    pub(crate) fn replay(&self, checkpoint: u64) -> Result<(Records, u64)> {
        let len = self
            .file
            .metadata()
            .map_err(io(format!("reading the size of {}", self.path.display())))?
            .len();
        // Records are only ever written within the first LOG_BYTES.
        let mut bytes = vec![0u8; len.min(LOG_BYTES) as usize];
        self.file
            .read_exact_at(&mut bytes, 0)
            .map_err(io(format!("reading {}", self.path.display())))?;
        let (first, second) = bytes.split_at(bytes.len().min(REGION_BYTES as usize));
        let Parsed { records, end, gap } = parse_regions([first, second], checkpoint);
        let last = records.last().map_or(checkpoint, |&(seq, _)| seq);
        match gap {
            Some(gap) if gap.is_damage() => Err(StorageError::Engine {
                context: format!("replaying the commit log {}", self.path.display()),
                message: format!(
                    "record {} (at byte {end}) is damaged or missing, yet record {} after \
                         it is intact: a record that was synced, and its write acknowledged, \
                         was damaged since (by the disk, a power loss on a device that does \
                         not protect written sectors, or an edit), or the database file is \
                         older than this log (restored without it). Restore the data \
                         directory from a backup, or move {} aside to open at checkpoint \
                         {checkpoint}, losing every write logged after it ({} intact records \
                         before the damaged one, and all after it)",
                    gap.missing,
                    gap.found,
                    self.path.display(),
                    records.len(),
                ),
            }),
            Some(gap) => {
                tracing::warn!(
                    path = %self.path.display(),
                    checkpoint,
                    record = gap.found,
                    "the commit log holds records of another database or of another run of \
                     this one (a database file restored or copied without its log?); they are \
                     not replayed"
                );
                Ok((records, last.max(gap.found)))
            }
            None => Ok((records, last)),
        }
    }

    /// Whether a record of `len` bytes fits after the last one.
    pub(crate) fn fits(&self, len: usize) -> bool {
        self.end + len as u64 <= REGION_BYTES
    }

    /// Whether a record of `len` bytes fits an empty region.
    pub(crate) fn fits_a_region(len: usize) -> bool {
        len as u64 <= REGION_BYTES
    }

    /// Appends `record` (from [`encode_into`]) and syncs it: once this returns, the record survives
    /// a crash.
    pub(crate) fn append(&mut self, record: &[u8]) -> Result<()> {
        let at = self.region * REGION_BYTES + self.end;
        let written = self.file.write_all_at(record, at);
        if let Err(source) = written.and_then(|()| self.file.sync_data()) {
            self.broken = true;
            return Err(StorageError::Io {
                context: format!("appending to {}", self.path.display()),
                source,
            });
        }
        self.end += record.len() as u64;
        Ok(())
    }

    /// A commit's outcome is unknown (its append, its redb commit or a checkpoint failed): from
    /// now on every commit is a checkpoint, numbered past it.
    pub(crate) fn mark_broken(&mut self) {
        self.broken = true;
    }

    /// Everything logged so far is in a durable redb commit: start the region over.
    pub(crate) fn restart(&mut self) {
        self.end = 0;
    }

    /// A checkpoint of everything logged so far has started: append to the start of the other
    /// region, whose records the checkpoint before it (which has ended) holds.
    pub(crate) fn switch(&mut self) {
        self.region ^= 1;
        self.end = 0;
    }

    pub(crate) fn is_broken(&self) -> bool {
        self.broken
    }
}

/// One record holding `ops`, numbered `seq`.
#[cfg(test)]
pub(crate) fn encode<'a>(seq: u64, ops: impl Iterator<Item = &'a Op> + Clone) -> Vec<u8> {
    let mut record = Vec::new();
    encode_into(&mut record, seq, ops);
    record
}

/// Makes in `record` (cleared first) the record holding `ops`, numbered `seq`. The writer keeps
/// one buffer for all its records: a fresh one per commit cost allocations and page faults
/// (4 % of a secondary's CPU under load).
pub(crate) fn encode_into<'a>(
    record: &mut Vec<u8>,
    seq: u64,
    ops: impl Iterator<Item = &'a Op> + Clone,
) {
    record.clear();
    record.reserve(encoded_len(ops.clone()));
    // Length and checksum are filled in once the body is there.
    record.extend_from_slice(&[0; 8]);
    record.extend_from_slice(&seq.to_le_bytes());
    for op in ops {
        match op {
            Op::Put { key, value } => {
                record.push(0);
                put_bytes(record, key.as_bytes());
                put_bytes(record, value);
            }
            Op::Delete { key } => {
                record.push(1);
                put_bytes(record, key.as_bytes());
            }
        }
    }
    let len = record.len() as u32;
    let (len_field, rest) = record.split_at_mut(4);
    let (crc_field, body) = rest.split_at_mut(4);
    len_field.copy_from_slice(&len.to_le_bytes());
    crc_field.copy_from_slice(&crc32fast::hash(body).to_le_bytes());
}

/// The length of the record [`encode_into`] makes of `ops`, without making it.
pub(crate) fn encoded_len<'a>(ops: impl Iterator<Item = &'a Op>) -> usize {
    ops.map(|op| match op {
        Op::Put { key, value } => 9 + key.len() + value.len(),
        Op::Delete { key } => 5 + key.len(),
    })
    .fold(HEADER, usize::saturating_add)
}

fn put_bytes(record: &mut Vec<u8>, bytes: &[u8]) {
    record.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    record.extend_from_slice(bytes);
}

/// The records of `log` numbered `checkpoint + 1`, `+ 2`, … in order, skipping those at or
/// below `checkpoint` that come first (a restart before the checkpoint's log was rewritten).
#[cfg(test)]
fn parse(log: &[u8], checkpoint: u64) -> Vec<(u64, Vec<Op>)> {
    parse_checked(log, checkpoint).records
}

/// Where the records after a checkpoint stop at a valid record numbered above the next one
/// expected. No crash leaves that (after a checkpoint the log starts over with the number
/// after it, and a record is written only after the one before it was synced).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Gap {
    /// The number expected next.
    missing: u64,
    /// The valid record's number.
    found: u64,
}

/// Most records one region can hold: a gap no wider than this is records of this log that
/// are missing. Runs number from the clock in nanoseconds, so another run's records (or
/// another database's) are millions of numbers away.
const RECORDS_PER_REGION: u64 = REGION_BYTES / HEADER as u64;

impl Gap {
    /// Records of this run are missing: synced, then damaged (a record is written only after
    /// the one before it was synced). A wider gap is a log written for another database or
    /// another run of it (a database file restored without its log, or copied next to
    /// another's).
    fn is_damage(&self) -> bool {
        self.found.saturating_sub(self.missing) < RECORDS_PER_REGION
    }
}

/// The records after a checkpoint in one region or in both.
#[derive(Debug, PartialEq, Eq)]
struct Parsed {
    records: Vec<(u64, Vec<Op>)>,
    /// Byte offset where they stop (in the region; in the file for [`parse_regions`]).
    end: usize,
    /// The valid record numbered above the next one expected found there, if any.
    gap: Option<Gap>,
}

/// [`parse`], where the records stop, and the [`Gap`] there if they stop at one. A record
/// that is not valid counts as a gap only if the record its length points past is the one
/// after it.
fn parse_checked(log: &[u8], checkpoint: u64) -> Parsed {
    let mut records = Vec::new();
    let mut rest = log;
    let stop = |records, rest: &[u8], gap| Parsed {
        records,
        end: log.len() - rest.len(),
        gap,
    };
    // No number follows the last one: nothing after such a checkpoint is replayed.
    let Some(mut expected) = checkpoint.checked_add(1) else {
        return stop(records, rest, None);
    };
    loop {
        let Some((seq, ops, after)) = record_at(rest) else {
            // What follows a torn record is older (zeros, or an earlier round's records).
            let behind = declared_len(rest).and_then(|len| record_at(rest.get(len..)?));
            let gap = behind
                .map(|(found, _, _)| Gap {
                    missing: expected,
                    found,
                })
                .filter(|gap| gap.found > expected && gap.is_damage());
            return stop(records, rest, gap);
        };
        if seq == expected {
            records.push((seq, ops));
            let Some(next) = expected.checked_add(1) else {
                return stop(records, after, None);
            };
            expected = next;
        } else if !(records.is_empty() && seq <= checkpoint) {
            let gap = (seq > expected).then_some(Gap {
                missing: expected,
                found: seq,
            });
            return stop(records, rest, gap);
        }
        rest = after;
    }
}

/// The length a record at the start of `bytes` declares, if it could be one.
fn declared_len(bytes: &[u8]) -> Option<usize> {
    let (len, _) = take_u32(bytes)?;
    let len = len as usize;
    (len >= HEADER && len <= bytes.len()).then_some(len)
}

/// [`parse_checked`] over the two regions: the records after `checkpoint` start in one of them
/// and may go on in the other (a crash while a checkpoint ran: the records it was making
/// durable, then those logged meanwhile). A region whose records start past the next number
/// expected is reported only if it does not follow on from the other.
fn parse_regions(regions: [&[u8]; 2], checkpoint: u64) -> Parsed {
    let [a, b] = regions;
    // Offsets in the file: the second region starts where the first ends.
    let (in_a, mut in_b) = (parse_checked(a, checkpoint), parse_checked(b, checkpoint));
    in_b.end += a.len();
    let (mut first, other, other_base) = if !in_a.records.is_empty() {
        (in_a, b, a.len())
    } else if !in_b.records.is_empty() {
        (in_b, a, 0)
    } else {
        // Damage in either region outweighs another run's records in the other.
        let rank = |parsed: &Parsed| parsed.gap.map(|gap| gap.is_damage());
        return if rank(&in_b) > rank(&in_a) {
            in_b
        } else {
            in_a
        };
    };
    if first.gap.is_some() {
        return first;
    }
    let last = first.records.last().map_or(checkpoint, |&(seq, _)| seq);
    let mut more = parse_checked(other, last);
    // The records stop in the other region if any follow on there, or if they stop there at a
    // record that is not valid (the damaged one, the next behind it); else they stop where
    // they stopped in the first, and a valid record beyond is what should have come next.
    let damaged_there = more.gap.is_some() && other.get(more.end..).and_then(record_at).is_none();
    if !more.records.is_empty() || damaged_there {
        first.end = more.end + other_base;
    }
    first.records.append(&mut more.records);
    first.gap = more.gap;
    first
}

/// The valid record at the start of `bytes`, and what follows it.
fn record_at(bytes: &[u8]) -> Option<(u64, Vec<Op>, &[u8])> {
    let (len, rest) = take_u32(bytes)?;
    let (crc, rest) = take_u32(rest)?;
    let body_len = (len as usize).checked_sub(8)?;
    if body_len < 8 || body_len > rest.len() {
        return None;
    }
    let (body, after) = rest.split_at(body_len);
    if crc32fast::hash(body) != crc {
        return None;
    }
    let (seq, mut body) = body.split_at(8);
    let seq = u64::from_le_bytes(seq.try_into().ok()?);
    let mut ops = Vec::new();
    while let Some((&tag, rest)) = body.split_first() {
        let (key, rest) = take_bytes(rest)?;
        let key = String::from_utf8(key.to_vec()).ok()?;
        body = match tag {
            0 => {
                let (value, rest) = take_bytes(rest)?;
                ops.push(Op::Put {
                    key,
                    value: value.to_vec(),
                });
                rest
            }
            1 => {
                ops.push(Op::Delete { key });
                rest
            }
            _ => return None,
        };
    }
    Some((seq, ops, after))
}

fn take_u32(bytes: &[u8]) -> Option<(u32, &[u8])> {
    let (head, rest) = bytes.split_at_checked(4)?;
    Some((u32::from_le_bytes(head.try_into().ok()?), rest))
}

fn take_bytes(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, rest) = take_u32(bytes)?;
    rest.split_at_checked(len as usize)
}

fn io(context: String) -> impl FnOnce(std::io::Error) -> StorageError {
    move |source| StorageError::Io { context, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, value: &str) -> Op {
        Op::Put {
            key: key.into(),
            value: value.as_bytes().to_vec(),
        }
    }

    fn log_of(records: &[Vec<u8>]) -> Vec<u8> {
        let mut log: Vec<u8> = records.concat();
        log.resize(log.len() + 64, 0);
        log
    }

    #[test]
    fn records_round_trip_in_order_after_the_checkpoint() {
        let ops = [put("a", "1"), Op::Delete { key: "b".into() }, put("", "")];
        let log = log_of(&[
            encode(5, ops.iter()),
            encode(6, [put("c", "3")].iter()),
            encode(7, [].iter()),
        ]);
        assert_eq!(encoded_len(ops.iter()), encode(5, ops.iter()).len());
        let records = parse(&log, 4);
        assert_eq!(records.len(), 3);
        assert_eq!(records[0], (5, ops.to_vec()));
        assert_eq!(records[1], (6, vec![put("c", "3")]));
        assert_eq!(records[2], (7, vec![]));
        // Records at or below the checkpoint that come first are skipped.
        assert_eq!(parse(&log, 5).len(), 2);
        assert!(parse(&log, 7).is_empty());
    }

    #[test]
    fn replay_stops_at_a_torn_record_a_gap_or_an_older_one() {
        let first = encode(1, [put("a", "1")].iter());
        let second = encode(2, [put("b", "2")].iter());
        // Torn: the second record's last byte never reached the disk.
        let mut torn = log_of(&[first.clone(), second.clone()]);
        let last = first.len() + second.len() - 1;
        torn[last] ^= 0xff;
        assert_eq!(parse(&torn, 0).len(), 1);
        // Cut short.
        let short = [first.clone(), second[..second.len() - 3].to_vec()].concat();
        assert_eq!(parse(&short, 0).len(), 1);
        // A gap in the numbers.
        let gap = log_of(&[first.clone(), encode(3, [].iter())]);
        assert_eq!(parse(&gap, 0).len(), 1);
        // Rewritten from the start after a checkpoint at 2: records 3 and 4, then the rest of
        // the older round (2), which must not be applied again.
        let rewritten = log_of(&[
            encode(3, [put("c", "3")].iter()),
            encode(4, [].iter()),
            second,
        ]);
        let records = parse(&rewritten, 2);
        assert_eq!(records.iter().map(|r| r.0).collect::<Vec<_>>(), vec![3, 4]);
        // A length that points past the end, and a zeroed log.
        let mut long = first.clone();
        long[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(parse(&long, 0).is_empty());
        assert!(parse(&[0u8; 64], 0).is_empty());
        // Records far above the next number expected: another run's (or database's) log.
        let run = 1 << 40;
        let foreign = log_of(&[encode(run, [].iter()), encode(run + 1, [].iter())]);
        let foreign_gap = Gap {
            missing: 3,
            found: run,
        };
        let parsed = parse_checked(&foreign, 2);
        assert_eq!((parsed.records, parsed.end), (vec![], 0));
        assert_eq!(parsed.gap, Some(foreign_gap));
        assert!(!foreign_gap.is_damage());
        assert_eq!(parse_checked(&rewritten, 2).gap, None);
        // One record missing between two that are there: it was lost after it was written.
        let missing = Gap {
            missing: 2,
            found: 3,
        };
        assert_eq!(parse_checked(&gap, 0).gap, Some(missing));
        assert_eq!(parse_checked(&gap, 0).end, first.len());
        assert!(missing.is_damage());
        // Several records missing (a damaged page holds many): damage too, up to what one
        // region can hold.
        let wide = log_of(&[first.clone(), encode(40, [].iter())]);
        let wide_gap = parse_checked(&wide, 0).gap.expect("a gap");
        assert!(wide_gap.is_damage());
        assert!(!Gap {
            missing: 2,
            found: 2 + RECORDS_PER_REGION
        }
        .is_damage());
        // Torn and cut-short records end the log: no gap.
        assert_eq!(parse_checked(&torn, 0).gap, None);
        assert_eq!(parse_checked(&short, 0).gap, None);
        // A damaged checkpoint at the last number: nothing follows it, nothing is replayed.
        let last = log_of(&[encode(u64::MAX, [put("a", "1")].iter())]);
        let parsed = parse_checked(&last, u64::MAX);
        assert_eq!((parsed.records, parsed.gap), (vec![], None));
    }

    #[test]
    fn replay_follows_the_records_from_one_region_into_the_other() {
        // Checkpoint at 2 still running when the crash came: region 1 holds 3 and 4 (made
        // durable by it), region 0 was rewritten with 5 and 6, logged meanwhile, over an older
        // round (1, 2).
        let older = [encode(1, [].iter()), encode(2, [].iter())];
        let mut zero = log_of(&[
            encode(5, [put("e", "5")].iter()),
            encode(6, [put("f", "6")].iter()),
        ]);
        zero.extend(older.concat());
        let one = log_of(&[
            encode(3, [put("c", "3")].iter()),
            encode(4, [put("d", "4")].iter()),
        ]);
        let seqs = |parsed: Parsed| {
            assert_eq!(parsed.gap, None);
            parsed.records.iter().map(|r| r.0).collect::<Vec<_>>()
        };
        assert_eq!(seqs(parse_regions([&zero, &one], 2)), vec![3, 4, 5, 6]);
        // The checkpoint at 4 had ended: only region 0 is replayed.
        assert_eq!(seqs(parse_regions([&zero, &one], 4)), vec![5, 6]);
        assert_eq!(seqs(parse_regions([&zero, &one], 6)), Vec::<u64>::new());
        // Either region may come first.
        assert_eq!(seqs(parse_regions([&one, &zero], 2)), vec![3, 4, 5, 6]);
        // A region that does not follow on from the other is not replayed, and is reported.
        let run = 1 << 40;
        let far = log_of(&[encode(run, [].iter())]);
        let found = |parsed: Parsed| parsed.gap.map(|gap| gap.found);
        assert_eq!(found(parse_regions([&one, &far], 2)), Some(run));
        assert_eq!(parse_regions([&one, &far], 2).records.len(), 2);
        assert_eq!(found(parse_regions([&far, &[0; 64]], 2)), Some(run));
    }

    #[test]
    fn a_record_damaged_after_it_was_synced_is_reported_not_skipped() {
        let records = [
            encode(1, [put("a", "1")].iter()),
            encode(2, [put("b", "2")].iter()),
            encode(3, [put("c", "3")].iter()),
        ];
        // A flipped bit in the middle record's value (its CRC no longer matches), in its CRC,
        // or in its number: record 3 behind it proves it had been written whole.
        let value_at = records[0].len() + records[1].len() - 1;
        let crc_at = records[0].len() + 4;
        let seq_at = records[0].len() + 8;
        for at in [value_at, crc_at, seq_at] {
            let mut damaged = log_of(&records);
            damaged[at] ^= 0x10;
            let parsed = parse_checked(&damaged, 0);
            assert_eq!(parsed.records.len(), 1, "byte {at}");
            assert_eq!(parsed.end, records[0].len());
            let gap =
                (parsed.gap).unwrap_or_else(|| panic!("byte {at}: the damage went unnoticed"));
            assert_eq!((gap.missing, gap.found), (2, 3));
            assert!(gap.is_damage());
        }
        // The last record damaged: nothing proves it was ever whole (a torn write looks the
        // same), so replay ends before it, as after a crash.
        let mut last = log_of(&records);
        let end = records.concat().len();
        last[end - 1] ^= 0x10;
        assert_eq!(parse_checked(&last, 0).records.len(), 2);
        assert_eq!(parse_checked(&last, 0).gap, None);
        // The last record of one region damaged while the next is the first of the other: the
        // gap is found across regions, at the damaged record's offset in the file.
        let mut zero = log_of(&records[..2]);
        zero[value_at] ^= 0x10;
        let one = log_of(&records[2..]);
        let parsed = parse_regions([&zero, &one], 0);
        assert_eq!(parsed.records.len(), 1);
        assert_eq!(parsed.gap.map(|gap| gap.found), Some(3));
        assert_eq!(parsed.end, records[0].len());
        // The same with the regions the other way round.
        let parsed = parse_regions([&one, &zero], 0);
        assert_eq!(parsed.records.len(), 1);
        assert_eq!(parsed.gap.map(|gap| gap.found), Some(3));
        assert_eq!(parsed.end, one.len() + records[0].len());
        // The damaged record first in the other region, the next behind it: the offset is the
        // damaged record's, in the other region.
        let zero = log_of(&records[..1]);
        let mut one = log_of(&records[1..]);
        one[records[1].len() - 1] ^= 0x10;
        let parsed = parse_regions([&zero, &one], 0);
        assert_eq!(parsed.records.len(), 1);
        assert_eq!(parsed.gap.map(|gap| gap.found), Some(3));
        assert_eq!(parsed.end, zero.len());
        // Neither region has records after the checkpoint: damage in one outweighs another
        // run's records in the other. Record 1 (the checkpoint's next) damaged in region 1,
        // region 0 rewritten since with a later run's records.
        let later = log_of(&[encode(1 << 40, [].iter())]);
        let mut damaged = log_of(&records);
        damaged[records[0].len() - 1] ^= 0x10;
        for regions in [[&later[..], &damaged[..]], [&damaged[..], &later[..]]] {
            let parsed = parse_regions(regions, 0);
            assert!(parsed.records.is_empty());
            assert_eq!(parsed.gap.map(|gap| gap.is_damage()), Some(true));
        }
    }

    #[test]
    fn a_log_file_appends_in_place_and_replays_what_it_holds() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = CommitLog::open(dir.path()).expect("open");
        log.append(&encode(1, [put("a", "1")].iter()))
            .expect("append");
        log.append(&encode(2, [put("b", "2")].iter()))
            .expect("append");
        assert_eq!(log.replay(0).expect("replay").0.len(), 2);
        // After a checkpoint at 2 the log is rewritten from its start.
        log.restart();
        log.append(&encode(3, [put("c", "3")].iter()))
            .expect("append");
        let (records, _) = log.replay(2).expect("replay");
        assert_eq!(records, vec![(3, vec![put("c", "3")])]);
        // A checkpoint at 3 starts: the next records go to the other region.
        log.switch();
        log.append(&encode(4, [put("d", "4")].iter()))
            .expect("append");
        assert_eq!(log.replay(2).expect("replay").0.len(), 2);
        assert_eq!(log.replay(3).expect("replay").0.len(), 1);
        assert_eq!(
            std::fs::metadata(dir.path().join(LOG_FILE))
                .expect("stat")
                .len(),
            LOG_BYTES
        );
    }
}
