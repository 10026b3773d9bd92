//! `delete/<path>`, `undelete/<path>`, `destroy/<path>`: act on listed versions.
//!
//! Versions the key does not have are skipped, as in Vault, and a missing key is a no-op.
//! Destroy removes the version data and marks the version in the same batch.

use bunker_sdk::{LogicalError, Operation, Response, Result};
use bunker_storage::Op;

use super::model::{load_metadata, metadata_op, version_key};
use super::KvV2;
use crate::params::{validate_key_path, versions_field};
use crate::store::Call;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum VersionAction {
    /// Soft delete: hide the version, keep its data.
    Delete,
    /// Reverse a soft delete (not a destroy).
    Undelete,
    /// Remove the data for good.
    Destroy,
}

pub(super) async fn handle(
    kv: &KvV2,
    call: &Call<'_>,
    path: &str,
    action: VersionAction,
) -> Result<Response> {
    if !matches!(call.operation, Operation::Create | Operation::Update) {
        return Err(LogicalError::UnsupportedOperation);
    }
    validate_key_path(path)?;
    let versions = versions_field(call.data)?;

    let _guard = kv.lock_key(path).await;
    let Some(mut meta) = load_metadata(call.store, path).await? else {
        return Ok(Response::empty());
    };
    let now = kv.now_ns();
    let mut ops = Vec::new();
    let mut changed = false;
    for version in versions {
        let Some(vm) = meta.versions.get_mut(&version) else {
            continue;
        };
        match action {
            VersionAction::Delete => {
                if vm.is_readable(now) {
                    vm.deletion_ns = Some(now);
                    changed = true;
                }
            }
            VersionAction::Undelete => {
                if !vm.destroyed && vm.deletion_ns.is_some() {
                    vm.deletion_ns = None;
                    changed = true;
                }
            }
            VersionAction::Destroy => {
                if !vm.destroyed {
                    vm.destroyed = true;
                    ops.push(Op::Delete {
                        key: version_key(path, version),
                    });
                    changed = true;
                }
            }
        }
    }
    if changed {
        ops.push(metadata_op(path, &meta));
        call.store.batch(ops).await?;
    }
    Ok(Response::empty())
}
