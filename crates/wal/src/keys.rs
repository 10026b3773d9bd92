//! The keys of replication's storage layout that both the WAL and the Merkle code read: the
//! local prefix (never replicated) and the WAL's entries and index. A leaf module, so that the
//! WAL (which installs the Merkle index) and the Merkle code (which skips the local keys and
//! reads the WAL index) do not import each other. Keys only one of them uses stay with it.

/// Keys under this prefix belong to this cluster only and are never replicated.
pub const LOCAL_PREFIX: &str = "repl/";
/// Entries live at `repl/wal/{index:020}`.
pub const WAL_PREFIX: &str = "repl/wal/";
/// u64 BE of the last index, written in the same batch as each entry.
pub const WAL_LAST_KEY: &str = "repl/wal-last";

/// Whether `key` is local to this cluster (never replicated).
pub fn is_local(key: &str) -> bool {
    key.starts_with(LOCAL_PREFIX)
}
