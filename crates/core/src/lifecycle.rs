//! The endpoints answered before routing, as Vault's HTTP handlers answer them: those that
//! work whether or not the server is sealed (init, seal status, unseal, health, leader,
//! generate-root, rekey) and those that need the barrier open but no token (looking up or
//! self-unwrapping a wrapping token). They are not the system backend: it is mounted at `sys/`
//! and only reached by an authenticated request (`sys/backend.rs`).

use crate::core::Core;
use crate::logical::{Operation, Request, Response, Result};
use bunker_sdk::expect_op;

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
}
