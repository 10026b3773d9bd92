//! Where replication keeps its own keys in the storage: the layout the WAL writes and the
//! Merkle code skips. A leaf module, so that the WAL (which installs the Merkle index) and the
//! Merkle code (which must skip the WAL's keys) both read it without importing each other.

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
