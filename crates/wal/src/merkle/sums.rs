//! Cell sums and the tree they make, held sparse: only buckets that hold keys take memory or
//! time.
//!
//! Design (measured in `bench/README.md`, "Sparse Merkle sums"): the sums were a dense array
//! of all 262,144 cells (2 MiB) and the tree a dense list of 4,096 bucket hashes. At a million
//! keys every bucket holds keys and both forms cost about the same, but a small keyspace (a
//! new cluster, a test, the deterministic simulation with its tens of keys) paid for zeroing,
//! copying and hashing 2 MiB and 128 KiB for every tree. Now only the buckets that hold keys
//! are allocated, each boxed (520 bytes, with its first key): a full index is 2 MiB plus 33
//! KiB of pointers, and a small index costs in proportion to its buckets (an earlier form
//! kept one pointer for every bucket, 32 KiB that every open, tree and comparison walked
//! whatever the keyspace held).
//!
//! The boxes are found through a two-level table (64 groups of 64 buckets, a group allocated
//! with its first bucket, freed with its last): a small keyspace walks 64 group pointers plus
//! its few groups, and a lookup is two small arrays deep. It replaced an ordered map, whose
//! walk over 4,096 boxes was four or five dependent cache misses per lookup: the storage
//! writer looks up two random buckets per KV write, and that lookup was 7 % of its samples at
//! 64 connections (`bench/README.md`, the "instructions" table).

use sha2::{Digest, Sha256};

use super::{cell_of_hash, leaf_digest, root_of, MerkleTree, BUCKETS, CELLS_PER_BUCKET};

/// One bucket's key count and cell sums (wrapping: a delta is a sum like any other).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BucketSums {
    pub keys: u64,
    pub cells: [u64; CELLS_PER_BUCKET],
}

impl Default for BucketSums {
    fn default() -> Self {
        BucketSums {
            keys: 0,
            cells: [0; CELLS_PER_BUCKET],
        }
    }
}

impl BucketSums {
    pub fn is_zero(&self) -> bool {
        self.keys == 0 && self.cells.iter().all(|&sum| sum == 0)
    }

    fn add(&mut self, other: &BucketSums) {
        self.keys = self.keys.wrapping_add(other.keys);
        for (sum, more) in self.cells.iter_mut().zip(other.cells.iter()) {
            *sum = sum.wrapping_add(*more);
        }
    }

    /// Adds (`sign` true) or removes one key whose cell slot is `slot` and leaf digest `digest`
    /// (tests build deltas with it; commits go through [`CellSums::add_cell`]).
    #[cfg(test)]
    pub(crate) fn count(&mut self, slot: usize, digest: u64, sign: bool) {
        if let Some(sum) = self.cells.get_mut(slot) {
            if sign {
                self.keys = self.keys.wrapping_add(1);
                *sum = sum.wrapping_add(digest);
            } else {
                self.keys = self.keys.wrapping_sub(1);
                *sum = sum.wrapping_sub(digest);
            }
        }
    }

    /// The bucket's hash: all zero for an empty bucket, else sha256 over the key count
    /// (big-endian) and, for each cell whose sum is not zero, its slot (one byte) and sum
    /// (big-endian), in slot order. It depends only on the bucket's `(key, value)` pairs, and
    /// a bucket with few keys hashes few bytes.
    pub fn hash(&self) -> [u8; 32] {
        if self.is_zero() {
            return [0; 32];
        }
        let mut hasher = Sha256::new();
        hasher.update(self.keys.to_be_bytes());
        for (slot, sum) in self.cells.iter().enumerate().filter(|(_, sum)| **sum != 0) {
            // Fewer than 256 slots: the slot fits in one byte.
            hasher.update([slot as u8]);
            hasher.update(sum.to_be_bytes());
        }
        hasher.finalize().into()
    }
}

/// Buckets per group of [`BucketTable`], and groups.
const GROUP: usize = 64;
const GROUPS: usize = BUCKETS / GROUP;
const _: () = assert!(BUCKETS.is_multiple_of(GROUP), "every bucket has its group");

type Group = [Option<Box<BucketSums>>; GROUP];

/// Boxed bucket sums by bucket number, in two levels: a group of [`GROUP`] buckets is
/// allocated with its first bucket and freed with its last.
#[derive(Clone)]
struct BucketTable {
    groups: [Option<Box<Group>>; GROUPS],
}

impl Default for BucketTable {
    fn default() -> Self {
        BucketTable {
            groups: std::array::from_fn(|_| None),
        }
    }
}

impl BucketTable {
    /// `bucket`'s group and place in it; `None` past the last bucket.
    fn place(bucket: u32) -> Option<(usize, usize)> {
        let bucket = bucket as usize;
        (bucket < BUCKETS).then_some((bucket / GROUP, bucket % GROUP))
    }

    fn get(&self, bucket: u32) -> Option<&BucketSums> {
        let (group, at) = Self::place(bucket)?;
        self.groups.get(group)?.as_ref()?.get(at)?.as_deref()
    }

    /// `bucket`'s sums, created empty if absent; `None` past the last bucket.
    fn get_or_insert(&mut self, bucket: u32) -> Option<&mut BucketSums> {
        let (group, at) = Self::place(bucket)?;
        let group = self
            .groups
            .get_mut(group)?
            .get_or_insert_with(|| Box::new(std::array::from_fn(|_| None)));
        Some(group.get_mut(at)?.get_or_insert_with(Box::default))
    }

    fn remove(&mut self, bucket: u32) {
        let Some((group, at)) = Self::place(bucket) else {
            return;
        };
        let Some(slot) = self.groups.get_mut(group) else {
            return;
        };
        if let Some(members) = slot {
            if let Some(member) = members.get_mut(at) {
                *member = None;
            }
            if members.iter().all(Option::is_none) {
                *slot = None;
            }
        }
    }

    /// Groups allocated (for tests: an emptied group must be freed).
    #[cfg(test)]
    pub(crate) fn groups_allocated(&self) -> usize {
        self.groups.iter().filter(|group| group.is_some()).count()
    }

    /// The buckets present, ascending.
    fn iter(&self) -> impl Iterator<Item = (u32, &BucketSums)> {
        self.groups
            .iter()
            .enumerate()
            .filter_map(|(group, members)| members.as_ref().map(|members| (group, members)))
            .flat_map(|(group, members)| {
                members.iter().enumerate().filter_map(move |(at, sums)| {
                    // Below BUCKETS (4,096): fits a u32.
                    sums.as_deref()
                        .map(|sums| ((group * GROUP + at) as u32, sums))
                })
            })
    }
}

impl PartialEq for BucketTable {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for BucketTable {}

impl std::fmt::Debug for BucketTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// The sums of every bucket that holds keys, by bucket; a bucket absent is empty (all zero).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CellSums {
    /// Never an all-zero bucket, so equal keyspaces compare equal; never a bucket past the
    /// last ([`BUCKETS`]).
    buckets: BucketTable,
}

impl CellSums {
    pub fn new() -> CellSums {
        CellSums::default()
    }

    /// Adds one replicated entry.
    pub fn add_entry(&mut self, key: &str, value: &[u8]) {
        let (bucket, slot, digest) = locate(key, value);
        self.add_cell(bucket, slot, 1, digest);
    }

    /// Adds `delta` to `bucket`'s sums; a bucket that becomes empty is dropped. A bucket past
    /// the last is ignored.
    pub fn add(&mut self, bucket: u32, delta: &BucketSums) {
        if bucket as usize >= BUCKETS {
            return;
        }
        self.change(bucket, |sums| sums.add(delta));
    }

    /// Adds one cell's change: `keys` to the bucket's key count and `sum` to the sum of its
    /// cell `slot` (both wrapping: a removal adds the negation). What a commit's writes do,
    /// one value at a time, without building a whole bucket's delta (`CellDelta`).
    pub fn add_cell(&mut self, bucket: u32, slot: usize, keys: u64, sum: u64) {
        // A slot past the last must not count a key either (a bucket past the last is
        // ignored by `change`).
        if slot >= CELLS_PER_BUCKET {
            return;
        }
        self.change(bucket, |sums| {
            sums.keys = sums.keys.wrapping_add(keys);
            if let Some(cell) = sums.cells.get_mut(slot) {
                *cell = cell.wrapping_add(sum);
            }
        });
    }

    /// Applies `change` to `bucket`'s sums (empty if absent), keeping no all-zero bucket.
    fn change(&mut self, bucket: u32, change: impl FnOnce(&mut BucketSums)) {
        let Some(sums) = self.buckets.get_or_insert(bucket) else {
            return;
        };
        change(sums);
        if sums.is_zero() {
            self.buckets.remove(bucket);
        }
    }

    /// `bucket`'s sums, `None` when it is empty.
    pub fn bucket(&self, bucket: u32) -> Option<&BucketSums> {
        self.buckets.get(bucket)
    }

    /// One cell's sum (0 for an empty cell or one past the last).
    pub fn cell(&self, cell: u32) -> u64 {
        let per_bucket = CELLS_PER_BUCKET as u32;
        self.bucket(cell / per_bucket)
            .and_then(|sums| sums.cells.get((cell % per_bucket) as usize))
            .copied()
            .unwrap_or(0)
    }

    /// The sums of `cells`, in order: one lookup per run of cells in the same bucket (the
    /// cells of a bucket list come bucket by bucket).
    pub fn cells(&self, cells: &[u32]) -> Vec<u64> {
        let per_bucket = CELLS_PER_BUCKET as u32;
        let mut current: Option<(u32, Option<&BucketSums>)> = None;
        cells
            .iter()
            .map(|&cell| {
                let bucket = cell / per_bucket;
                let sums = match current {
                    Some((b, sums)) if b == bucket => sums,
                    _ => {
                        let sums = self.bucket(bucket);
                        current = Some((bucket, sums));
                        sums
                    }
                };
                sums.and_then(|sums| sums.cells.get((cell % per_bucket) as usize))
                    .copied()
                    .unwrap_or(0)
            })
            .collect()
    }

    /// Groups of the bucket table allocated (for tests).
    #[cfg(test)]
    pub(crate) fn groups_allocated(&self) -> usize {
        self.buckets.groups_allocated()
    }

    /// The number of keys summed.
    pub fn keys(&self) -> u64 {
        self.iter()
            .fold(0u64, |n, (_, sums)| n.wrapping_add(sums.keys))
    }

    /// The non-empty buckets, ascending.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &BucketSums)> {
        self.buckets.iter()
    }

    /// The tree these sums make.
    pub fn tree(&self) -> MerkleTree {
        let buckets: Vec<(u32, [u8; 32])> = self
            .iter()
            .map(|(bucket, sums)| (bucket, sums.hash()))
            .collect();
        MerkleTree {
            root: root_of(&buckets),
            buckets,
            keys: self.keys(),
        }
    }

    /// The buckets, and the cells in them, whose sums differ from `other`'s.
    pub fn compare(&self, other: &CellSums) -> (u64, u64) {
        let empty = BucketSums::default();
        let mut differing = (0, 0);
        let buckets: std::collections::BTreeSet<u32> = self
            .iter()
            .chain(other.iter())
            .map(|(bucket, _)| bucket)
            .collect();
        for bucket in buckets {
            let ours = self.bucket(bucket).unwrap_or(&empty);
            let theirs = other.bucket(bucket).unwrap_or(&empty);
            if ours != theirs {
                differing.0 += 1;
                differing.1 += ours
                    .cells
                    .iter()
                    .zip(theirs.cells.iter())
                    .filter(|(a, b)| a != b)
                    .count() as u64;
            }
        }
        differing
    }
}

/// The bucket, the slot in it and the leaf digest of one replicated entry.
pub(crate) fn locate(key: &str, value: &[u8]) -> (u32, usize, u64) {
    let (bucket, slot) = locate_key(key);
    (bucket, slot, leaf_digest(key, value))
}

/// The bucket and the slot in it of one replicated key (one hash, whatever its values).
pub(crate) fn locate_key(key: &str) -> (u32, usize) {
    let key_hash: [u8; 32] = Sha256::digest(key.as_bytes()).into();
    let cell = cell_of_hash(&key_hash);
    let per_bucket = CELLS_PER_BUCKET as u32;
    (cell / per_bucket, (cell % per_bucket) as usize)
}
