//! `sys/remount` and `sys/remount/status/:migration_id`: move a secrets engine or an auth
//! method to a new path, with its data, as Vault's mount migration does.
//!
//! A mount's data lives under its UUID (`logical/<uuid>/`, `auth/<uuid>/`), not under its
//! path, so a move is one rewrite of the mount table: nothing is copied, and the move is as
//! atomic as any table change. The tokens an auth method issued are revoked, as Vault revokes
//! the leases of the source mount. Vault runs the move in the background and reports it by
//! migration id; here it is done before the answer, so its status is at once `success`.

use serde_json::json;

use super::migrations::Migration;
use crate::core::Core;
use crate::logical::fields::get_str;
use crate::logical::{BackendRequest, Data, LogicalError, Operation, Response, Result};
use crate::mounts::{is_reserved_mount, normalize_mount_path, AUTH_MOUNT_PREFIX};
use bunker_sdk::{expect_op, WRITE};

/// The token method's mount, which cannot move.
const TOKEN_AUTH_MOUNT: &str = "auth/token/";

fn invalid(message: String) -> LogicalError {
    LogicalError::InvalidRequest(message)
}

/// The router paths of a move's source and destination, checked as Vault checks them: both
/// given without surrounding spaces, an auth method only to `auth/<path>/`, a secrets engine
/// never to a reserved path, and neither the token method, `sys/` nor `cubbyhole/`.
fn remount_paths(from: &str, to: &str) -> Result<(String, String)> {
    if from.trim_matches('/').is_empty() || to.trim_matches('/').is_empty() {
        return Err(invalid(
            "both 'from' and 'to' path must be specified as a string".into(),
        ));
    }
    for (name, path) in [("from", from), ("to", to)] {
        if path.trim() != path {
            return Err(invalid(format!(
                "'{name}' path cannot contain trailing whitespace"
            )));
        }
    }
    let (source, target) = (normalize_mount_path(from), normalize_mount_path(to));
    if target.contains("//") || target.len() > 256 || target.chars().any(char::is_control) {
        return Err(invalid(format!("invalid destination mount {target:?}")));
    }
    if source.starts_with(AUTH_MOUNT_PREFIX) {
        if !target.starts_with(AUTH_MOUNT_PREFIX) || target == AUTH_MOUNT_PREFIX {
            return Err(invalid(format!(
                "cannot remount auth mount to non-auth mount {target:?}"
            )));
        }
        if source.starts_with(TOKEN_AUTH_MOUNT) {
            return Err(invalid(format!("cannot remount {source:?}")));
        }
        if target.starts_with(TOKEN_AUTH_MOUNT) {
            return Err(invalid(format!("cannot remount to destination {target:?}")));
        }
    } else {
        if is_reserved_mount(&source) {
            return Err(invalid(format!("cannot remount {source:?}")));
        }
        if is_reserved_mount(&target) {
            return Err(invalid(format!("cannot remount to destination {target:?}")));
        }
    }
    Ok((source, target))
}

impl Core {
    /// `sys/remount` (POST `from`, `to`) and `sys/remount/status/<migration_id>` (GET).
    pub(crate) async fn sys_remount(
        &self,
        req: &BackendRequest<'_>,
        rest: &str,
    ) -> Result<Response> {
        if let Some(id) = rest.strip_prefix("status/") {
            expect_op(req.operation, &[Operation::Read])?;
            // An unknown id is a 404 without errors, as Vault answers.
            let m = self
                .migrations
                .find(id)
                .ok_or_else(|| LogicalError::NotFound(String::new()))?;
            let mut data = Data::new();
            data.insert("migration_id".into(), json!(m.id));
            data.insert(
                "migration_info".into(),
                json!({
                    "source_mount": m.source_mount,
                    "target_mount": m.target_mount,
                    "status": "success",
                }),
            );
            return Ok(Response::data(data));
        }
        if !rest.is_empty() {
            return Err(LogicalError::UnsupportedPath(req.full_path()));
        }
        expect_op(req.operation, WRITE)?;
        let from = get_str(req.data, "from")?.unwrap_or_default();
        let to = get_str(req.data, "to")?.unwrap_or_default();
        let (source, target) = remount_paths(&from, &to)?;
        self.remount(&source, &target).await?;
        let migration = Migration {
            id: uuid::Uuid::new_v4().to_string(),
            source_mount: source,
            target_mount: target,
        };
        tracing::info!(
            migration_id = %migration.id,
            from = %migration.source_mount,
            to = %migration.target_mount,
            "mount moved"
        );
        let mut data = Data::new();
        data.insert("migration_id".into(), json!(migration.id));
        self.migrations.record(migration);
        Ok(Response::data(data))
    }

    /// Move the mount at `source` to `target` (router paths, checked by [`remount_paths`]):
    /// the same entry, backend and storage under a new path, persisted in one table write.
    async fn remount(&self, source: &str, target: &str) -> Result<()> {
        let _guard = self.table_lock.lock().await;
        {
            let mut router = self
                .router
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if !router.entries().any(|e| e.path == source) {
                return Err(invalid(format!("no matching mount at {source:?}")));
            }
            if router.overlaps(target) || self.overlaps_builtin(target) {
                return Err(invalid(format!("path already in use at {target:?}")));
            }
            let mut moved = router
                .remove(source)
                .ok_or_else(|| invalid(format!("no matching mount at {source:?}")))?;
            std::sync::Arc::make_mut(&mut moved.entry).path = target.to_owned();
            router.insert(moved);
        }
        if let Err(e) = self.persist_mounts().await {
            // The table on disk is the old one: put the router back the way it was.
            let mut router = self
                .router
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(mut back) = router.remove(target) {
                std::sync::Arc::make_mut(&mut back.entry).path = source.to_owned();
                router.insert(back);
            }
            return Err(e);
        }
        if source.starts_with(AUTH_MOUNT_PREFIX) {
            self.revoke_tokens_of_auth_mount(source).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::remount_paths;

    #[test]
    fn moves_stay_within_their_table_and_off_protected_paths() {
        let ok = |from: &str, to: &str| remount_paths(from, to).ok();
        assert_eq!(ok("secret", "/kv/"), Some(("secret/".into(), "kv/".into())));
        assert_eq!(
            ok("auth/approle", "auth/machines"),
            Some(("auth/approle/".into(), "auth/machines/".into()))
        );
        for (from, to) in [
            ("", "kv"),
            ("secret", ""),
            ("secret ", "kv"),
            ("secret", "auth/kv"),
            ("secret", "sys/kv"),
            ("secret", "cubbyhole"),
            ("cubbyhole", "kv"),
            ("sys", "kv"),
            ("auth/approle", "approle"),
            ("auth/approle", "auth/"),
            ("auth/approle", "auth/token/x"),
            ("auth/token", "auth/tokens"),
            ("secret", "a//b"),
        ] {
            assert!(remount_paths(from, to).is_err(), "{from} -> {to}");
        }
    }
}
