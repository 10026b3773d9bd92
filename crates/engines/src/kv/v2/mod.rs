//! KV version 2: versioned secrets with Vault's full v2 API.
//!
//! Endpoints (paths relative to the mount):
//! - `config`: mount-wide `max_versions`, `cas_required`, `delete_version_after`.
//! - `data/<path>`: read a version (`version` field, 0 or absent = latest), write a new version
//!   (`data`, optional `options.cas`), JSON-merge-patch the latest, soft-delete the latest.
//!   LIST is accepted here too and lists like `metadata/`.
//! - `delete/<path>`, `undelete/<path>`, `destroy/<path>`: act on the listed `versions`.
//! - `metadata/<path>`: read, write, patch and delete key metadata (delete removes every version);
//!   LIST on `metadata/<folder>` lists keys and subfolders.
//! - `subkeys/<path>`: the key structure of a version with values replaced by null.
//!
//! Storage layout inside the mount's view:
//! - `config`: the mount config (absent means defaults).
//! - `metadata/<path>`: the key's metadata, including the bookkeeping of every kept version.
//!   LIST of metadata folders is a plain storage LIST of this prefix.
//! - `versions/<path>/<version>`: the data of one version. Destroyed and trimmed versions have
//!   no data record.
//!
//! Consistency: every change that touches version data and metadata together (a new version,
//! trimming past `max_versions`, destroy, metadata delete) is one atomic storage batch, so a
//! crash can never leave metadata naming data that is gone or data no metadata knows about.
//! Every mutation is a read-modify-write of the key's metadata, so mutations of one secret are
//! serialized by an async mutex (one of 256 stripes chosen by the secret's path hash): two
//! concurrent writes to the same key always produce two versions instead of both claiming the
//! same number, while writes to different secrets proceed together and share the storage
//! layer's group commits (one mount-wide lock made every write wait for the previous write's
//! fsync). The lock is held across storage
//! awaits (hence tokio's mutex) and only in this process; it assumes one backend instance per
//! mount and one active node, as the router and HA design provide. Reads take no lock: a read
//! racing a trim may find a version's data already gone, and answers 404 as it would a moment
//! later.

mod config;
mod data;
mod metadata;
mod model;
mod subkeys;
mod versions;

#[cfg(test)]
mod tests;

use async_trait::async_trait;
use bunker_sdk::{BackendRequest, LogicalBackend, LogicalError, Response, Result};
use tokio::sync::Mutex;

use crate::params::validate_key_path;
use crate::store::Call;
use model::{system_clock, Clock};
use versions::VersionAction;

/// Lock stripes per mount: writes to different secrets proceed in parallel (and so share
/// group commits), writes to the same secret are serialised.
const LOCK_STRIPES: usize = 256;

/// The KV v2 engine for one mount.
pub struct KvV2 {
    /// Serialises the read-modify-write of one secret (see the module docs). Striped by the
    /// hash of the secret's path: a global lock would serialise every write behind an fsync.
    key_locks: Vec<Mutex<()>>,
    /// Serialises writes of the mount's `config`.
    config_lock: Mutex<()>,
    clock: Clock,
}

impl Default for KvV2 {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for KvV2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvV2").finish_non_exhaustive()
    }
}

impl KvV2 {
    pub fn new() -> Self {
        Self::with_clock(system_clock())
    }

    pub(crate) fn with_clock(clock: Clock) -> Self {
        KvV2 {
            key_locks: (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
            config_lock: Mutex::new(()),
            clock,
        }
    }

    /// The lock of one secret's stripe.
    pub(crate) async fn lock_key(&self, path: &str) -> tokio::sync::MutexGuard<'_, ()> {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        path.hash(&mut hasher);
        let stripe = (hasher.finish() as usize) % LOCK_STRIPES;
        match self.key_locks.get(stripe) {
            Some(lock) => lock.lock().await,
            None => self.config_lock.lock().await,
        }
    }

    /// Current time in Unix nanoseconds.
    fn now_ns(&self) -> i64 {
        (self.clock)()
    }

    pub(crate) async fn handle_call(&self, call: &Call<'_>) -> Result<Response> {
        let (endpoint, rest) = match call.path.split_once('/') {
            Some((endpoint, rest)) => (endpoint, Some(rest)),
            None => (call.path, None),
        };
        let key = rest.unwrap_or("");
        match (endpoint, rest) {
            ("config", None) => config::handle(self, call).await,
            ("data", _) => data::handle(self, call, key).await,
            ("metadata", _) => metadata::handle(self, call, key).await,
            ("delete", _) => versions::handle(self, call, key, VersionAction::Delete).await,
            ("undelete", _) => versions::handle(self, call, key, VersionAction::Undelete).await,
            ("destroy", _) => versions::handle(self, call, key, VersionAction::Destroy).await,
            ("subkeys", _) => subkeys::handle(self, call, key).await,
            _ => Err(LogicalError::UnsupportedPath(format!(
                "{}{}",
                call.mount_point, call.path
            ))),
        }
    }

    /// For `data/<path>` and `metadata/<path>`: whether the key has metadata. Other paths do
    /// not distinguish create from update.
    pub(crate) async fn exists_call(&self, call: &Call<'_>) -> Result<Option<bool>> {
        let Some((endpoint, key)) = call.path.split_once('/') else {
            return Ok(None);
        };
        if !matches!(endpoint, "data" | "metadata") || validate_key_path(key).is_err() {
            return Ok(None);
        }
        // Presence only: the metadata is neither decrypted nor parsed here; the request that
        // follows reads and checks it. Vault's check decodes it and fails the request on a
        // record it cannot read, before the ACL; here such a record counts as present, so the
        // write needs `update` and fails in the handler (docs/security.md, "Existence checks").
        Ok(Some(call.store.exists(&model::metadata_key(key)).await?))
    }
}

#[async_trait]
impl LogicalBackend for KvV2 {
    async fn handle(&self, req: BackendRequest<'_>) -> Result<Response> {
        self.handle_call(&Call::from_request(&req)).await
    }

    fn help(&self) -> bunker_sdk::BackendHelp {
        crate::help::KV_V2
    }

    async fn exists(&self, req: &BackendRequest<'_>) -> Result<Option<bool>> {
        self.exists_call(&Call::from_request(req)).await
    }
}
