//! The mount table: which secrets engine serves which path prefix.
//!
//! The table is one JSON document in the barrier at `core/mounts`, rewritten whole on every
//! change (mount changes are rare; one key keeps them atomic). Each mount's data lives under
//! `logical/<uuid>/`, so renaming or disabling a mount never collides with another.
//!
//! Auth methods are mounts too: the router holds them at `auth/<path>/`, their table is
//! `core/auth` and their data lives under `auth/<uuid>/`, as in Vault. Both tables are
//! barrier data, so they replicate to DR secondaries like everything else.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::logical::{LogicalBackend, StorageView};

pub const MOUNT_TABLE_PATH: &str = "core/mounts";
pub const AUTH_TABLE_PATH: &str = "core/auth";
/// Where auth methods are mounted in the router.
pub const AUTH_MOUNT_PREFIX: &str = "auth/";

/// The system's lease TTLs: the server settings `default_lease_ttl` and `max_lease_ttl`, 768 h
/// each unless set, as Vault's. A mount that sets no TTL of its own uses them, and
/// `auth/token/create` gives its tokens the default and lets none outlive the maximum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SystemTtls {
    pub default_secs: u64,
    pub max_secs: u64,
}

impl SystemTtls {
    /// Vault's value for both when the configuration sets none (32 days).
    pub const VAULT_DEFAULT_SECS: u64 = 768 * 3600;

    /// From the configuration, where 0 means unset. A default above the maximum is refused, as
    /// Vault refuses to start with one (so `max_lease_ttl` below 768 h needs a default too).
    pub fn new(default_secs: u64, max_secs: u64) -> std::result::Result<Self, String> {
        let or_vault = |secs: u64| {
            if secs == 0 {
                Self::VAULT_DEFAULT_SECS
            } else {
                secs
            }
        };
        let ttls = SystemTtls {
            default_secs: or_vault(default_secs),
            max_secs: or_vault(max_secs),
        };
        if ttls.default_secs > ttls.max_secs {
            return Err(format!(
                "default_lease_ttl ({}s) cannot be larger than max_lease_ttl ({}s)",
                ttls.default_secs, ttls.max_secs
            ));
        }
        Ok(ttls)
    }
}

impl Default for SystemTtls {
    fn default() -> Self {
        SystemTtls {
            default_secs: Self::VAULT_DEFAULT_SECS,
            max_secs: Self::VAULT_DEFAULT_SECS,
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct MountConfig {
    #[serde(default)]
    pub default_lease_ttl: u64,
    #[serde(default)]
    pub max_lease_ttl: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MountEntry {
    /// Mount point with a trailing slash, e.g. `secret/`.
    pub path: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub description: String,
    pub uuid: String,
    pub accessor: String,
    #[serde(default)]
    pub config: MountConfig,
    #[serde(default)]
    pub options: Map<String, Value>,
    #[serde(default)]
    pub local: bool,
    #[serde(default)]
    pub seal_wrap: bool,
}

impl MountEntry {
    pub fn new(path: &str, kind: &str, description: &str, options: Map<String, Value>) -> Self {
        let uuid = uuid::Uuid::new_v4().to_string();
        let short = uuid.split('-').next().unwrap_or_default().to_owned();
        let accessor = if path.starts_with(AUTH_MOUNT_PREFIX) {
            format!("auth_{kind}_{short}")
        } else {
            format!("{kind}_{short}")
        };
        MountEntry {
            path: path.to_owned(),
            kind: kind.to_owned(),
            description: description.to_owned(),
            accessor,
            uuid,
            config: MountConfig::default(),
            options,
            local: false,
            seal_wrap: false,
        }
    }

    /// A mount built into the core (`sys/`, `auth/token/`): no uuid, as Vault shows its
    /// built-in ones, and no mount-table entry.
    pub(crate) fn builtin(path: &str, kind: &str, description: &str) -> Self {
        let accessor = if path.starts_with(AUTH_MOUNT_PREFIX) {
            format!("auth_{kind}_bunker")
        } else {
            format!("{kind}_bunker")
        };
        MountEntry {
            path: path.to_owned(),
            kind: kind.to_owned(),
            description: description.to_owned(),
            uuid: String::new(),
            accessor,
            config: MountConfig::default(),
            options: Map::new(),
            local: false,
            seal_wrap: false,
        }
    }

    /// The mount's default lease TTL (the system default when the mount sets none).
    pub fn default_lease_ttl_secs(&self, system: &SystemTtls) -> u64 {
        if self.config.default_lease_ttl > 0 {
            self.config.default_lease_ttl
        } else {
            system.default_secs
        }
    }

    /// The mount's largest lease TTL (the system maximum when the mount sets none).
    pub fn max_lease_ttl_secs(&self, system: &SystemTtls) -> u64 {
        if self.config.max_lease_ttl > 0 {
            self.config.max_lease_ttl
        } else {
            system.max_secs
        }
    }

    /// An auth method (mounted under `auth/`) rather than a secrets engine.
    pub fn is_auth(&self) -> bool {
        self.path.starts_with(AUTH_MOUNT_PREFIX)
    }

    pub fn storage_prefix(&self) -> String {
        if self.is_auth() {
            format!("auth/{}/", self.uuid)
        } else {
            format!("logical/{}/", self.uuid)
        }
    }

    /// The JSON shape of `sys/mounts` entries.
    pub fn to_json(&self) -> Value {
        let options = if self.options.is_empty() {
            Value::Null
        } else {
            Value::Object(self.options.clone())
        };
        serde_json::json!({
            "type": self.kind,
            "description": self.description,
            "accessor": self.accessor,
            "uuid": self.uuid,
            "config": {
                "default_lease_ttl": self.config.default_lease_ttl,
                "max_lease_ttl": self.config.max_lease_ttl,
                "force_no_cache": false,
            },
            "options": options,
            "local": self.local,
            "seal_wrap": self.seal_wrap,
            "external_entropy_access": false,
            "plugin_version": "",
            "running_plugin_version": format!("v{}+builtin.bunker", env!("CARGO_PKG_VERSION")),
        })
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StoredMountTable {
    pub entries: Vec<MountEntry>,
}

/// A mounted engine, ready to serve.
#[derive(Clone)]
pub struct Mounted {
    /// Shared: every request clones the `Mounted` it routes to, and a clone of the entry (its
    /// strings and options) was a dozen allocations per request.
    pub entry: Arc<MountEntry>,
    pub backend: Arc<dyn LogicalBackend>,
    pub view: StorageView,
}

/// The live routing table (longest prefix wins).
#[derive(Clone, Default)]
pub struct Router {
    by_path: BTreeMap<String, Mounted>,
}

impl Router {
    pub fn insert(&mut self, mounted: Mounted) {
        self.by_path.insert(mounted.entry.path.clone(), mounted);
    }

    pub fn remove(&mut self, path: &str) -> Option<Mounted> {
        self.by_path.remove(path)
    }

    /// The mount serving `path`, and the path relative to it (a suffix of `path`).
    pub fn route<'p>(&self, path: &'p str) -> Option<(&Mounted, &'p str)> {
        // Longest matching prefix. Also match the mount point itself without its slash.
        self.by_path
            .iter()
            .filter_map(|(mount, m)| Some((mount.len(), m, relative_to(path, mount)?)))
            .max_by_key(|(len, _, _)| *len)
            .map(|(_, m, rel)| (m, rel))
    }

    /// Whether a mount at `path` would overlap one already there (one is a prefix of the other).
    pub fn overlaps(&self, path: &str) -> bool {
        self.by_path
            .keys()
            .any(|mounted| paths_overlap(mounted, path))
    }

    pub fn entries(&self) -> impl Iterator<Item = &MountEntry> {
        self.by_path.values().map(|m| &*m.entry)
    }

    pub fn first_of_kind(&self, kind: &str) -> Option<&Mounted> {
        self.by_path.values().find(|m| m.entry.kind == kind)
    }

    pub fn clear(&mut self) {
        self.by_path.clear();
    }
}

/// Whether mounts at `a` and `b` would overlap: one is a prefix of the other.
pub(crate) fn paths_overlap(a: &str, b: &str) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

/// `path` relative to the mount point `mount` (`secret/`), the mount point without its slash
/// included: always a suffix of `path` (borrowed: routing allocates nothing).
pub(crate) fn relative_to<'p>(path: &'p str, mount: &str) -> Option<&'p str> {
    if Some(path) == mount.strip_suffix('/') {
        return Some(&path[path.len()..]);
    }
    path.strip_prefix(mount)
}

/// Normalise a user-supplied mount path: no leading slash, exactly one trailing slash.
pub fn normalize_mount_path(path: &str) -> String {
    let trimmed = path.trim_matches('/');
    format!("{trimmed}/")
}

/// Paths that cannot be mounted over.
pub fn is_reserved_mount(path: &str) -> bool {
    ["sys/", "auth/", "cubbyhole/", "identity/"]
        .iter()
        .any(|r| path == *r || path.starts_with(r))
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use async_trait::async_trait;
    use bunker_barrier::Barrier;
    use bunker_sdk::{BackendRequest, LogicalBackend, Response, Result, StorageView};
    use serde_json::Map;

    use super::*;

    struct Nothing;

    #[async_trait]
    impl LogicalBackend for Nothing {
        async fn handle(&self, _req: BackendRequest<'_>) -> Result<Response> {
            Ok(Response::default())
        }
    }

    /// A mount at `path` whose backend answers every request with an empty response.
    pub(crate) fn mount_of_nothing(barrier: &Arc<Barrier>, path: &str) -> Mounted {
        Mounted {
            entry: Arc::new(MountEntry::new(path, "kv", "", Map::new())),
            backend: Arc::new(Nothing),
            view: StorageView::new(barrier.clone(), path),
        }
    }

    #[test]
    fn the_longest_mount_wins_and_the_relative_path_is_the_rest_of_the_path() {
        let barrier = Arc::new(Barrier::new(Arc::new(bunker_storage::InmemBackend::new())));
        let mut router = Router::default();
        for path in ["kv/", "kv/team/", "kvx/"] {
            router.insert(mount_of_nothing(&barrier, path));
        }
        let route = |path: &str| {
            router
                .route(path)
                .map(|(m, rel)| (m.entry.path.clone(), rel.to_owned()))
        };
        let expect = |mount: &str, rel: &str| Some((mount.to_owned(), rel.to_owned()));
        assert_eq!(route("kv/team/a/b"), expect("kv/team/", "a/b"));
        assert_eq!(route("kv/teams"), expect("kv/", "teams"));
        assert_eq!(route("kv/team"), expect("kv/team/", ""));
        assert_eq!(route("kv/team/"), expect("kv/team/", ""));
        assert_eq!(route("kv"), expect("kv/", ""));
        assert_eq!(route("kvx/a"), expect("kvx/", "a"));
        assert_eq!(route("kvy/a"), None);
        assert_eq!(route("k"), None);
        // The relative path is the request path's own tail (routing borrows, never copies).
        let path = String::from("kv/team/x");
        let (_, rel) = router.route(&path).unwrap();
        assert_eq!(rel.as_ptr(), path[8..].as_ptr());
    }
}
