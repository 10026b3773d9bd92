//! The system backend, mounted at `sys/` as a built-in mount: reached only by authenticated
//! requests, through the same pipeline as any mount (ACL with the root paths it declares,
//! audit, wrapping). Its endpoints act on the whole server, so it holds the core, weakly (the
//! core holds it); a core that is gone can only mean the server is shutting down.

use bunker_sdk::path_help as path;
use std::sync::Weak;

use async_trait::async_trait;
use bunker_sdk::{BackendHelp, SpecialPaths};

use super::mounts;
use crate::core::Core;
use crate::logical::{BackendRequest, Caller, LogicalBackend, LogicalError, Response, Result};

/// The system backend's root-protected paths (relative to `sys/`), as Vault's.
const SPECIAL_PATHS: SpecialPaths = SpecialPaths {
    root: &[
        "auth/*",
        "audit",
        "audit/*",
        "remount",
        "rotate",
        "seal",
        "raw",
        "raw/*",
        "step-down",
        "storage/raft/snapshot",
        "storage/raft/snapshot-force",
        "storage/raft/snapshot-restore-status",
    ],
    unauthenticated: &[],
};

/// The system backend's help.
pub(crate) const HELP: BackendHelp = BackendHelp {
    description: "The system backend is built in at sys/: it controls the server (seal, \
        unseal, init, key rotation, rekey, generate-root), its mount tables (secrets engines and \
        auth methods), ACL policies, response wrapping, audit devices and DR replication.",
    paths: &[
        path("init", "Initialise the server (PUT secret_shares, secret_threshold) or read whether it is."),
        path("seal-status", "The seal status: sealed, threshold, shares, unseal progress."),
        path("unseal", "Submit one unseal key share (PUT key), or reset the progress (reset=true)."),
        path("seal", "Seal the server (needs sudo)."),
        path("health", "Health of the server, with Vault's status codes."),
        path("leader", "The active node's address."),
        path("rotate", "Add a new key term to the keyring (needs sudo)."),
        path("key-status", "The keyring's current term and when it was installed."),
        path("rekey/*", "New unseal key shares: init, update with the current shares, verify."),
        path("generate-root/*", "Generate a root token from a quorum of unseal key shares."),
        path("mounts", "List the secrets engines."),
        path("mounts/*", "Enable (POST type, config, options), read or disable (DELETE) the secrets engine at a path; <path>/tune reads or sets its TTLs and description."),
        path("auth", "List the auth methods."),
        path("auth/*", "Enable (POST type, config), read or disable (DELETE) the auth method at a path (needs sudo); <path>/tune reads or sets its TTLs."),
        path("remount", "Move a secrets engine or auth method to a new path with its data (POST from, to; needs sudo)."),
        path("remount/status/:migration_id", "The status of a mount move."),
        path("policy", "List the ACL policies."),
        path("policy/*", "Read, write (PUT rules) or delete an ACL policy."),
        path("policies/acl", "List the ACL policies."),
        path("policies/acl/*", "Read, write (PUT policy) or delete an ACL policy."),
        path("capabilities", "The capabilities of a token on paths (POST token, paths)."),
        path("capabilities-self", "The capabilities of the caller's token on paths (POST paths)."),
        path("capabilities-accessor", "The capabilities of the token of an accessor on paths."),
        path("wrapping/*", "Response wrapping: wrap, unwrap, lookup and rewrap."),
        path("audit", "List the audit devices (needs sudo)."),
        path("audit/*", "Enable (PUT type, options) or disable an audit device (needs sudo)."),
        path("audit-hash/*", "The HMAC an audit device would log for an input."),
        path("replication/*", "DR replication: status, primary and secondary operations."),
        path("metrics", "Server metrics, in Prometheus or Vault's JSON format."),
        path("internal/ui/mounts/*", "The mount serving a path, for clients (kv version discovery)."),
        path("decode-token", "Decode an OTP-encoded root token."),
    ],
};

pub(crate) struct SysBackend {
    core: Weak<Core>,
}

impl SysBackend {
    pub(crate) fn new(core: Weak<Core>) -> Self {
        SysBackend { core }
    }
}

#[async_trait]
impl LogicalBackend for SysBackend {
    async fn handle(&self, req: BackendRequest<'_>) -> Result<Response> {
        let caller = req.caller.ok_or(LogicalError::PermissionDenied)?;
        let core = self
            .core
            .upgrade()
            .ok_or_else(|| LogicalError::Internal("the server is shutting down".into()))?;
        core.handle_sys(&req, caller).await
    }

    fn special_paths(&self) -> SpecialPaths {
        SPECIAL_PATHS
    }

    fn help(&self) -> BackendHelp {
        HELP
    }
}

impl Core {
    /// Where the system backend sends a request (`req.path` is relative to `sys/`).
    async fn handle_sys(&self, req: &BackendRequest<'_>, caller: &Caller) -> Result<Response> {
        let op = req.operation;
        let (head, rest) = req.path.split_once('/').unwrap_or((req.path, ""));
        match head {
            "seal" => self.sys_seal(op).await,
            "rotate" => self.sys_rotate(op).await,
            "key-status" => self.sys_key_status(op),
            "mounts" => {
                self.sys_mount_table(req, rest, mounts::Table::Secrets)
                    .await
            }
            "remount" => self.sys_remount(req, rest).await,
            "auth" => self.sys_mount_table(req, rest, mounts::Table::Auth).await,
            "internal" => self.sys_internal(req, rest, caller).await,
            "policy" => self.sys_policies(req, rest, true).await,
            "policies" => match rest.split_once('/') {
                Some(("acl", name)) => self.sys_policies(req, name, false).await,
                None if rest == "acl" => self.sys_policies(req, "", false).await,
                _ => Err(LogicalError::UnsupportedPath(req.full_path())),
            },
            "capabilities-self" => self.sys_capabilities(req, caller, true).await,
            "capabilities" => self.sys_capabilities(req, caller, false).await,
            "capabilities-accessor" => self.sys_capabilities_accessor(req).await,
            "wrapping" => self.sys_wrapping(req, rest, caller).await,
            "audit" => self.sys_audit(req, rest).await,
            "audit-hash" => self.sys_audit_hash(req, rest).await,
            "metrics" => self.sys_metrics(req).await,
            "storage" => self.sys_storage(req, rest),
            "step-down" => self.sys_step_down(op).await,
            "ha-status" => self.sys_ha_status(op).await,
            _ => Err(LogicalError::UnsupportedPath(req.full_path())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_paths_are_vaults() {
        let root = |p| SPECIAL_PATHS.is_root(p);
        assert!(root("audit") && root("audit/file") && root("rotate"));
        assert!(root("remount") && root("auth/userpass") && root("seal"));
        assert!(!root("audit-hash/file") && !root("mounts") && !root("auth"));
        assert!(!root("remount/status/x"));
    }
}
