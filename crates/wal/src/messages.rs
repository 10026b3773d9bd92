//! The DR stream protocol: what a secondary and its primary say to each other, as postcard
//! frames (see [`crate::frame`]) over the mutually authenticated cluster connection.
//!
//! ```text
//! S -> P  Hello { cluster, id, generation, position }
//! P -> S  Welcome { generation, last_wal, resume }      or Refused { reason }
//! resume:     S -> P StreamFrom { after }               then P -> S Wal* / Heartbeat*, S -> P Ack*
//! otherwise:  S -> P MerkleRequest; P -> S Tree { wal_index, tree }            (merkle-diff)
//!             S -> P CellSums* (last); P -> S CellDiff { cells }              (merkle-diff)
//!             per chunk of differing cells:                                    (merkle-sync)
//!               S -> P ChunkRequest { cells }, Listing* (last)
//!               P -> S Values* Deletions* ChunkDone
//!             S -> P StreamFrom { after: wal_index } ...                       (stream-wals)
//! empty S:    S -> P SnapshotRequest; P -> S Values* SnapshotDone { wal_index } (merkle-sync)
//! journal:    S -> P JournalRequest (first, when S has a position);
//!             P -> S Values* JournalDone { wal_index }, or JournalUnavailable { reason }
//!             (then the merkle-diff above)
//! renewal:    S -> P RenewCertificate { public_key }; P -> S Certificate { cert_pem }
//!             (after Welcome, before StreamFrom; at most once a session)
//! ```

use serde::{Deserialize, Serialize};

use crate::merkle::MerkleTree;
use crate::wal::WalEntry;

/// Where a secondary stands in the primary's history.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// Generation of the replication set the position belongs to.
    pub generation: u64,
    /// Last WAL index applied (after a completed sync).
    pub wal_index: u64,
}

/// A secondary's first message on a connection. (A newtype variant of [`ToPrimary`]:
/// postcard encodes it exactly as the struct variant it was, so the wire is unchanged.)
#[derive(Debug, Serialize, Deserialize)]
pub struct Hello {
    pub cluster_id: String,
    pub secondary_id: String,
    /// Highest generation this secondary has followed (it refuses older primaries).
    pub generation: u64,
    /// `None` until a first full sync completed.
    pub position: Option<Position>,
    pub api_addr: String,
    pub cluster_addr: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum ToPrimary {
    Hello(Hello),
    MerkleRequest,
    /// The secondary's cell sums for buckets whose hashes differ: 64 per bucket, in order.
    CellSums {
        buckets: Vec<u32>,
        sums: Vec<u64>,
        /// The last page: answer with `CellDiff`.
        last: bool,
    },
    /// The cells whose keys the following `Listing` pages hold.
    ChunkRequest {
        cells: Vec<u32>,
    },
    /// The secondary's keys in the chunk's cells, by key id (`merkle::cell_and_id`), with
    /// their leaf digests: 24 bytes a key, whatever its length.
    Listing {
        entries: Vec<(crate::merkle::KeyId, u64)>,
        /// The last page: answer with what differs (`Values*`, then `ChunkDone`).
        last: bool,
    },
    StreamFrom {
        after: u64,
    },
    /// Progress report and heartbeat.
    Ack {
        applied: u64,
        time_ms: u64,
    },
    /// An empty secondary asks for every replicated key at once (initial sync).
    SnapshotRequest,
    /// Renew this session's client certificate for a key the secondary generated (DER
    /// SubjectPublicKeyInfo): its private key never leaves the secondary.
    RenewCertificate {
        public_key: Vec<u8>,
    },
    /// A secondary whose position the WAL no longer holds asks for the current values of the
    /// keys written since (its position is the one in its hello), from the key journal.
    JournalRequest,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum ToSecondary {
    Welcome {
        generation: u64,
        last_wal: u64,
        /// The secondary may resume streaming from its position.
        resume: bool,
        /// The cluster addresses of the primary cluster's nodes (HA), for the secondary to
        /// try in turn when the active node changes.
        cluster_addrs: Vec<String>,
    },
    Refused {
        reason: String,
    },
    Tree {
        wal_index: u64,
        tree: MerkleTree,
    },
    /// Cells whose sums differ, ascending.
    CellDiff {
        cells: Vec<u32>,
    },
    /// Keys of the chunk the secondary listed and this cluster does not have, by key id.
    Deletions {
        ids: Vec<crate::merkle::KeyId>,
    },
    /// Every value of a chunk that the secondary lacks or holds differently has been sent.
    ChunkDone,
    /// Current values; `None` means the key no longer exists on the primary.
    Values {
        entries: Vec<(String, Option<Vec<u8>>)>,
    },
    Wal {
        entries: Vec<WalEntry>,
        last_wal: u64,
    },
    Heartbeat {
        last_wal: u64,
        time_ms: u64,
    },
    /// The renewed client certificate (PEM), recorded as this secondary's identity.
    Certificate {
        cert_pem: String,
    },
    /// End of a snapshot; stream from `wal_index` next.
    SnapshotDone {
        wal_index: u64,
        keys: u64,
    },
    /// First frame of a snapshot: about how many keys follow (0 = unknown), for progress.
    SnapshotStart {
        keys_estimate: u64,
    },
    /// End of a journal catch-up: the current values of every key written after the
    /// secondary's position through `wal_index` were sent; stream from `wal_index` next.
    JournalDone {
        wal_index: u64,
        keys: u64,
    },
    /// The journal cannot serve this secondary (its history is not all kept, or is too
    /// large): reconcile by Merkle diff instead.
    JournalUnavailable {
        reason: String,
    },
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
