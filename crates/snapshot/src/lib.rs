//! The snapshot file: a whole storage, as stored (ciphertext), with a manifest.
//!
//! Layout (all integers big-endian):
//!
//! ```text
//! "BUNKSNAP" u32 format_version
//! 'P' u32 len  part          (repeated; a part is entries: u32 key_len key u32 value_len value)
//! 'M' u32 len  manifest JSON  sha256(manifest JSON)
//! ```
//!
//! The manifest comes last so a snapshot can be written as it is read from storage, a page at
//! a time, without holding it: it names the format version, the cluster, the WAL index and
//! Merkle root where known, and the entry count and SHA-256 of every part. Reading checks
//! everything: the magic and version, every frame's length against its bounds, every part's
//! checksum and entry count, strictly increasing keys across the whole file, the manifest's
//! own checksum, and that nothing follows it. A truncated or altered file is refused.
//!
//! May see: nothing of Bunker. It is given keys and opaque bytes.

use std::io::Read;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

mod read;
pub use read::{read_snapshot, verify};

/// The first bytes of every snapshot file.
pub const MAGIC: &[u8; 8] = b"BUNKSNAP";
/// The version this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Largest part accepted: a storage page (4 MiB, or one value of up to 64 MiB with its key).
pub const MAX_PART_BYTES: usize = 72 * 1024 * 1024;
/// Largest manifest accepted (about 100 bytes a part; a million keys make about a thousand).
pub const MAX_MANIFEST_BYTES: usize = 16 * 1024 * 1024;

const PART_TAG: u8 = b'P';
const MANIFEST_TAG: u8 = b'M';

#[derive(Debug, Error)]
pub enum SnapshotError {
    #[error("invalid snapshot: {0}")]
    Invalid(String),
    #[error("reading snapshot: {0}")]
    Io(#[from] std::io::Error),
    /// The consumer of the entries refused them (restore failed while applying).
    #[error("{0}")]
    Consumer(String),
}

pub type Result<T> = std::result::Result<T, SnapshotError>;

/// One part's summary in the manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartInfo {
    pub entries: u64,
    pub bytes: u64,
    /// Hex SHA-256 of the part's bytes.
    pub sha256: String,
}

/// What the writer knows of the snapshot besides its entries.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    pub cluster_id: String,
    pub storage_type: String,
    /// Seconds since the Unix epoch when the snapshot was read.
    pub created_unix: u64,
    /// The last WAL index recorded in the snapshot (`None`: this node records no WAL).
    pub wal_index: Option<u64>,
    /// Hex Merkle root of the replicated keys in the snapshot (`None`: not computed).
    pub merkle_root: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    #[serde(flatten)]
    pub meta: SnapshotMeta,
    pub entries: u64,
    pub bytes: u64,
    pub parts: Vec<PartInfo>,
}

/// Writes a snapshot frame by frame: [`Encoder::header`], a [`Encoder::part`] per page, then
/// [`Encoder::finish`]. Only the part summaries are kept.
#[derive(Default)]
pub struct Encoder {
    parts: Vec<PartInfo>,
}

impl Encoder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn header() -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
        out
    }

    /// The frame of one part holding `entries` (in key order, after every earlier part's).
    pub fn part(&mut self, entries: &[(String, Vec<u8>)]) -> Result<Vec<u8>> {
        let mut body = Vec::new();
        for (key, value) in entries {
            body.extend_from_slice(&len_u32(key.len())?.to_be_bytes());
            body.extend_from_slice(key.as_bytes());
            body.extend_from_slice(&len_u32(value.len())?.to_be_bytes());
            body.extend_from_slice(value);
        }
        if body.len() > MAX_PART_BYTES {
            return Err(SnapshotError::Invalid(format!(
                "a part of {} bytes is over the {MAX_PART_BYTES}-byte limit",
                body.len()
            )));
        }
        self.parts.push(PartInfo {
            entries: entries.len() as u64,
            bytes: body.len() as u64,
            sha256: hex::encode(Sha256::digest(&body)),
        });
        Ok(frame(PART_TAG, &body))
    }

    /// The manifest frame and its checksum: the end of the file.
    pub fn finish(self, meta: SnapshotMeta) -> Result<Vec<u8>> {
        let manifest = Manifest {
            format_version: FORMAT_VERSION,
            meta,
            entries: self.parts.iter().map(|p| p.entries).sum(),
            bytes: self.parts.iter().map(|p| p.bytes).sum(),
            parts: self.parts,
        };
        let json = serde_json::to_vec(&manifest)
            .map_err(|e| SnapshotError::Invalid(format!("encoding the manifest: {e}")))?;
        let mut out = frame(MANIFEST_TAG, &json);
        out.extend_from_slice(&Sha256::digest(&json));
        Ok(out)
    }
}

fn len_u32(len: usize) -> Result<u32> {
    u32::try_from(len).map_err(|_| SnapshotError::Invalid(format!("{len} bytes is too long")))
}

fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(tag);
    // Parts and manifests are bounded far below u32::MAX.
    out.extend_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// Reads exactly `n` bytes or reports the file as truncated.
fn read_exact(r: &mut impl Read, n: usize, what: &str) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    r.take(n as u64).read_to_end(&mut buf)?;
    if buf.len() != n {
        return Err(SnapshotError::Invalid(format!("truncated in {what}")));
    }
    Ok(buf)
}

#[cfg(test)]
mod tests;
