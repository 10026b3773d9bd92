//! Where a `kv` command's path lives: which mount, which KV version, and the API path.
//!
//! KV v2 puts an operation segment after the mount (`secret/data/foo`, `secret/metadata/foo`,
//! ...); v1 uses the path as given. The version comes from
//! `GET sys/internal/ui/mounts/<path>`.

use serde_json::Value;

use crate::client::{ApiRequest, Client, Verb};
use crate::error::{CliError, Doing};

/// A resolved KV location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KvTarget {
    /// The path as the user means it: `secret/foo`.
    pub full_path: String,
    /// The mount, with a trailing slash (`secret/`); empty when the server did not say.
    pub mount_path: String,
    /// 1 or 2.
    pub version: u8,
}

impl KvTarget {
    /// The API path for an operation: for v2 `prefix` (`data`, `metadata`, `delete`,
    /// `undelete`, `destroy`) goes after the mount; for v1 the path is used as is.
    pub fn api_path(&self, prefix: &str) -> String {
        kv_api_path(&self.mount_path, &self.full_path, self.version, prefix)
    }

    /// Fails with a usage error unless this is a KV v2 mount.
    pub fn require_v2(&self, what: &str) -> Result<(), CliError> {
        if self.version == 2 {
            Ok(())
        } else {
            Err(CliError::Usage(format!(
                "{what} is only supported on KV version 2 mounts; {} is version 1",
                self.full_path
            )))
        }
    }
}

/// The path the user means: `-mount=secret foo` and `secret/foo` both give `secret/foo`.
pub(crate) fn full_path(mount: Option<&str>, path: &str) -> String {
    let path = path.trim_start_matches('/');
    match mount {
        Some(mount) => format!("{}/{}", mount.trim_matches('/'), path),
        None => path.to_string(),
    }
}

/// Inserts `prefix` after the mount for KV v2 (`secret/foo` → `secret/data/foo`).
pub(crate) fn kv_api_path(mount_path: &str, full_path: &str, version: u8, prefix: &str) -> String {
    if version != 2 {
        return full_path.to_string();
    }
    let mount = mount_path.trim_matches('/');
    let rest = if full_path == mount {
        ""
    } else {
        full_path
            .strip_prefix(mount)
            .and_then(|rest| rest.strip_prefix('/'))
            .unwrap_or(full_path)
    };
    format!("{mount}/{prefix}/{rest}")
}

/// Reads the mount's path and version out of a `sys/internal/ui/mounts/...` response.
pub(crate) fn parse_preflight(response: Option<&Value>) -> (String, u8) {
    let data = response.and_then(|r| r.get("data"));
    let mount_path = data
        .and_then(|d| d.get("path"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let version = data
        .and_then(|d| d.get("options"))
        .and_then(|o| o.get("version"))
        .and_then(|v| match v {
            Value::String(s) => s.parse::<u8>().ok(),
            Value::Number(n) => n.as_u64().and_then(|n| u8::try_from(n).ok()),
            _ => None,
        })
        .unwrap_or(1);
    if mount_path.is_empty() {
        (mount_path, 1)
    } else {
        (mount_path, if version == 2 { 2 } else { 1 })
    }
}

/// Asks the server which mount holds the path and its KV version. A 404 (a server without
/// the endpoint) means KV v1.
pub(crate) fn resolve(
    client: &Client,
    mount: Option<&str>,
    path: &str,
) -> Result<KvTarget, CliError> {
    let full_path = full_path(mount, path);
    if full_path.trim_matches('/').is_empty() {
        return Err(CliError::Usage(
            "A path is required: give MOUNT/PATH or -mount=MOUNT PATH".into(),
        ));
    }
    let response = client
        .send(
            ApiRequest::new(Verb::Get, format!("sys/internal/ui/mounts/{full_path}"))
                .not_found_ok()
                .without_wrapping(),
        )
        .doing(format!("checking the KV mount of {full_path}"))?;
    let (mount_path, version) = parse_preflight(response.body.as_ref());
    Ok(KvTarget {
        full_path,
        mount_path,
        version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn mount_flag_and_path_syntax_agree() {
        assert_eq!(full_path(Some("secret"), "foo/bar"), "secret/foo/bar");
        assert_eq!(full_path(Some("/secret/"), "/foo"), "secret/foo");
        assert_eq!(full_path(None, "/secret/foo"), "secret/foo");
        assert_eq!(full_path(Some("secret"), ""), "secret/");
    }

    #[test]
    fn the_operation_goes_after_a_v2_mount_and_nowhere_in_v1() {
        for (mount, path, version, operation, api) in [
            ("secret/", "secret/foo", 2, "data", "secret/data/foo"),
            (
                "secret/",
                "secret/a/b",
                2,
                "metadata",
                "secret/metadata/a/b",
            ),
            ("secret/", "secret/", 2, "metadata", "secret/metadata/"),
            ("secret/", "secret", 2, "metadata", "secret/metadata/"),
            (
                "team/kv/",
                "team/kv/app/db",
                2,
                "destroy",
                "team/kv/destroy/app/db",
            ),
            // A similar mount name is not the mount.
            (
                "secret/",
                "secrets/foo",
                2,
                "data",
                "secret/data/secrets/foo",
            ),
            ("kv/", "kv/foo", 1, "data", "kv/foo"),
            ("", "kv/foo", 1, "metadata", "kv/foo"),
        ] {
            assert_eq!(
                kv_api_path(mount, path, version, operation),
                api,
                "{mount} {path} v{version} {operation}"
            );
        }
    }

    #[test]
    fn preflight_reads_path_and_version() {
        let v2 = json!({"data": {"path": "secret/", "type": "kv", "options": {"version": "2"}}});
        assert_eq!(parse_preflight(Some(&v2)), ("secret/".to_string(), 2));
        let numeric = json!({"data": {"path": "kv/", "options": {"version": 2}}});
        assert_eq!(parse_preflight(Some(&numeric)), ("kv/".to_string(), 2));
        let v1 = json!({"data": {"path": "kv/", "type": "kv", "options": null}});
        assert_eq!(parse_preflight(Some(&v1)), ("kv/".to_string(), 1));
        assert_eq!(parse_preflight(None), (String::new(), 1));
    }

    #[test]
    fn target_builds_api_paths() {
        let target = KvTarget {
            full_path: "secret/foo".into(),
            mount_path: "secret/".into(),
            version: 2,
        };
        assert_eq!(target.api_path("undelete"), "secret/undelete/foo");
        assert!(target.require_v2("patch").is_ok());
        let v1 = KvTarget {
            version: 1,
            ..target
        };
        assert!(v1.require_v2("patch").is_err());
    }
}
