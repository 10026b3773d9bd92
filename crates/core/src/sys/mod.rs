//! The system backend (`sys/`): seal lifecycle, health, mounts, policies, capabilities,
//! wrapping and audit configuration. Routing is a plain match on the path; each group of
//! endpoints lives in its own file.

mod audit;
mod health;
mod metrics;
mod metrics_renderer;
mod migrations;
pub use metrics::prometheus_to_vault_json;
pub use metrics_renderer::{MetricsRenderer, DEFAULT_USAGE_GAUGE_PERIOD};
mod mounts;
mod policies;
mod rekey;
mod remount;
pub(crate) use migrations::Migrations;
mod root_generation;
pub use root_generation::attempt_request;
mod seal;

use crate::core::Core;
use crate::logical::{LogicalError, Operation, Request, Response, Result};
use bunker_sdk::{expect_op, Caller};

/// The system backend's root-protected paths (relative to `sys/`), as Vault's.
pub(crate) const SPECIAL_PATHS: bunker_sdk::SpecialPaths = bunker_sdk::SpecialPaths {
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

impl Core {
    /// Endpoints that answer whether or not the core is sealed.
    pub(crate) async fn handle_unsealed_not_required(
        &self,
        req: &Request,
    ) -> Result<Option<Response>> {
        let op = req.operation;
        let resp = match req.path.as_str() {
            "sys/init" => self.sys_init(req).await?,
            "sys/seal-status" => {
                expect_op(op, &[Operation::Read])?;
                self.sys_seal_status().await?
            }
            "sys/unseal" => self.sys_unseal(req).await?,
            "sys/health" => {
                expect_op(op, &[Operation::Read])?;
                self.sys_health(req).await?
            }
            "sys/leader" => self.sys_leader(op).await?,
            // Anyone may restore a server that is not initialised: anyone may follow it.
            "sys/storage/raft/snapshot-restore-status"
                if op == Operation::Read
                    && self.dr_mode() == crate::replication_hook::DrMode::Disabled
                    && !self.is_initialized().await? =>
            {
                self.restore_status()?
            }
            "sys/generate-root/attempt" => self.sys_generate_root_attempt(req).await?,
            "sys/generate-root/update" => self.sys_generate_root_update(req).await?,
            "sys/decode-token" => self.sys_decode_token(req)?,
            // Unauthenticated like sys/unseal; they check sealed and DR mode themselves.
            "sys/rekey/init" => self.sys_rekey_init(req).await?,
            "sys/rekey/update" => self.sys_rekey_update(req).await?,
            "sys/rekey/verify" => self.sys_rekey_verify(req).await?,
            _ => return Ok(None),
        };
        Ok(Some(resp))
    }

    /// Endpoints that need the barrier open but no token.
    pub(crate) async fn handle_unauthenticated(&self, req: &Request) -> Result<Option<Response>> {
        match req.path.as_str() {
            // Looking a wrapping token up never uses it, whether it comes in the body or as
            // the client token.
            "sys/wrapping/lookup" => self.sys_wrapping_lookup(req).await.map(Some),
            // A wrapping token presented as the client token unwraps itself: it is checked
            // before normal authentication, so a spent one gets Vault's 400, not a 403.
            "sys/wrapping/unwrap"
                if !req.data.contains_key("token") && req.client_token.is_some() =>
            {
                self.sys_wrapping_self_unwrap(req).await.map(Some)
            }
            _ => Ok(None),
        }
    }

    pub(crate) async fn handle_sys(&self, req: &Request, caller: &Caller) -> Result<Response> {
        let path = req.path.strip_prefix("sys/").unwrap_or("");
        let op = req.operation;
        let (head, rest) = path.split_once('/').unwrap_or((path, ""));
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
                _ => Err(LogicalError::UnsupportedPath(req.path.clone())),
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
            "ha-status" => self.sys_ha_status(req).await,
            "host-info" | "config" | "raw" => Err(LogicalError::UnsupportedPath(req.path.clone())),
            _ => Err(LogicalError::UnsupportedPath(req.path.clone())),
        }
    }
}
