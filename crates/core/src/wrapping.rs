//! Response wrapping: a response is stored in the cubbyhole of a fresh single-use token and the
//! client gets only that token (`wrap_info`). Unwrapping reads and destroys it under a lock, so
//! a wrapping token can never be unwrapped twice.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::core::Core;
use crate::logical::fields::get_str;
use crate::logical::{
    Auth, BackendRequest, Data, LogicalError, Operation, Request, Response, Result, WrapInfo,
};
use crate::policy_store::RESPONSE_WRAPPING_POLICY;
use crate::time_util::{now_unix, rfc3339};
use crate::token::{TokenEntry, TokenType};
use bunker_sdk::expect_op;
use bunker_sdk::Caller;

const WRAPPED_KEY: &str = "response";
/// Vault's bounds on wrapping TTLs.
const MAX_WRAP_TTL_SECS: u64 = 768 * 3600;

#[derive(Serialize, Deserialize)]
struct Wrapped {
    data: Option<Data>,
    auth: Option<Box<Auth>>,
    warnings: Vec<String>,
    lease_duration: u64,
    lease_id: String,
    renewable: bool,
    creation_path: String,
    creation_ttl: u64,
    creation_time: u64,
}

impl Wrapped {
    /// The response it wraps, as unwrapping hands it back.
    fn into_response(self) -> Response {
        Response {
            data: self.data,
            auth: self.auth,
            warnings: self.warnings,
            lease_duration: self.lease_duration,
            lease_id: self.lease_id,
            renewable: self.renewable,
            ..Default::default()
        }
    }
}

/// Where DR activation tokens are wrapped (`sys/replication/dr/primary/secondary-token`).
pub const ACTIVATION_TOKEN_PATH: &str = "sys/replication/dr/primary/secondary-token";

impl Core {
    /// Wrap `resp` for `ttl`; returns the response that carries only `wrap_info`.
    pub(crate) async fn wrap_response(
        &self,
        resp: Response,
        ttl: Duration,
        creation_path: &str,
    ) -> Result<Response> {
        let ttl_secs = ttl.as_secs();
        if ttl_secs == 0 || ttl_secs > MAX_WRAP_TTL_SECS {
            return Err(LogicalError::InvalidRequest(
                "wrapping TTL must be between 1 second and 768h".into(),
            ));
        }
        let view = self
            .revoker
            .cubbyhole_view()
            .ok_or_else(|| LogicalError::Internal("no cubbyhole mount for wrapping".into()))?;
        let entry = TokenEntry {
            policies: vec![RESPONSE_WRAPPING_POLICY.into()],
            num_uses: 1,
            ttl: ttl_secs,
            orphan: true,
            path: creation_path.to_owned(),
            token_type: TokenType::Service,
            ..Default::default()
        };
        let (token, entry) = self.tokens.create(entry, None).await?;
        let wrapped_accessor = resp
            .auth
            .as_ref()
            .map(|a| a.accessor.clone())
            .unwrap_or_default();
        let wrapped = Wrapped {
            data: resp.data,
            auth: resp.auth,
            warnings: resp.warnings,
            lease_duration: resp.lease_duration,
            lease_id: resp.lease_id,
            renewable: resp.renewable,
            creation_path: creation_path.to_owned(),
            creation_ttl: ttl_secs,
            creation_time: entry.creation_time,
        };
        view.put_json(&format!("{}/{WRAPPED_KEY}", entry.id_hash), &wrapped)
            .await?;
        Ok(Response {
            wrap_info: Some(Box::new(WrapInfo {
                token,
                accessor: entry.accessor,
                ttl: ttl_secs,
                creation_time: rfc3339(entry.creation_time),
                creation_path: creation_path.to_owned(),
                wrapped_accessor,
            })),
            ..Default::default()
        })
    }

    /// Wrap arbitrary data (used by `sys/wrapping/wrap` and the replication activation token).
    pub async fn wrap_data(
        &self,
        data: Data,
        ttl: Duration,
        creation_path: &str,
    ) -> Result<Response> {
        self.wrap_response(Response::data(data), ttl, creation_path)
            .await
    }

    async fn load_wrapped(&self, token: &str) -> Result<(TokenEntry, Wrapped)> {
        let invalid =
            || LogicalError::InvalidRequest("wrapping token is not valid or does not exist".into());
        let entry = self.tokens.lookup(token).await?.ok_or_else(invalid)?;
        if entry.policies != [RESPONSE_WRAPPING_POLICY] {
            return Err(invalid());
        }
        let view = self
            .revoker
            .cubbyhole_view()
            .ok_or_else(|| LogicalError::Internal("no cubbyhole mount for wrapping".into()))?;
        let wrapped: Wrapped = view
            .get_json(&format!("{}/{WRAPPED_KEY}", entry.id_hash))
            .await?
            .ok_or_else(invalid)?;
        Ok((entry, wrapped))
    }

    /// Read and destroy a wrapped response (single use).
    async fn take_wrapped(&self, token: &str) -> Result<Wrapped> {
        let _guard = self.wrapping_lock.lock().await;
        let (entry, wrapped) = self.load_wrapped(token).await?;
        self.revoke_token_tree(&entry.id_hash).await?;
        Ok(wrapped)
    }

    /// Unwrap a wrapping token directly (used by replication activation on the primary side).
    pub async fn unwrap_token(&self, token: &str) -> Result<Option<Data>> {
        Ok(self.take_wrapped(token).await?.data)
    }

    /// `sys/wrapping/unwrap` with the wrapping token as the client token.
    pub(crate) async fn sys_wrapping_self_unwrap(&self, req: &Request) -> Result<Response> {
        expect_op(req.operation, &[Operation::Create, Operation::Update])?;
        let token = req.client_token.clone().unwrap_or_default();
        let wrapped = self.take_wrapped(&token).await?;
        Ok(wrapped.into_response())
    }

    pub(crate) async fn sys_wrapping_lookup(&self, req: &Request) -> Result<Response> {
        expect_op(
            req.operation,
            &[Operation::Create, Operation::Update, Operation::Read],
        )?;
        let token = get_str(&req.data, "token")?
            .or_else(|| req.client_token.clone())
            .filter(|t| !t.is_empty())
            .ok_or_else(|| LogicalError::InvalidRequest("missing token".into()))?;
        let (_, wrapped) = self.load_wrapped(&token).await?;
        let mut data = Data::new();
        data.insert("creation_path".into(), json!(wrapped.creation_path));
        data.insert(
            "creation_time".into(),
            json!(rfc3339(wrapped.creation_time)),
        );
        data.insert("creation_ttl".into(), json!(wrapped.creation_ttl));
        Ok(Response::data(data))
    }

    /// `sys/wrapping/*` reached through the system backend (`lookup`, and `unwrap` of the
    /// client token itself, are answered before routing: `lifecycle.rs`).
    pub(crate) async fn sys_wrapping(
        &self,
        req: &BackendRequest<'_>,
        rest: &str,
        caller: &Caller,
    ) -> Result<Response> {
        match rest {
            "wrap" => {
                expect_op(req.operation, &[Operation::Create, Operation::Update])?;
                if req.wrap_ttl.is_none() {
                    return Err(LogicalError::InvalidRequest(
                        "wrap TTL must be set via X-Vault-Wrap-TTL".into(),
                    ));
                }
                // The pipeline wraps (an empty object too, as Vault wraps `{}`) any response when a wrap TTL is set; hand it the data.
                Ok(Response::data(req.data.clone()))
            }
            "unwrap" => {
                expect_op(req.operation, &[Operation::Create, Operation::Update])?;
                let token = match get_str(req.data, "token")?.filter(|t| !t.is_empty()) {
                    Some(t) => t,
                    None => caller.token.clone(),
                };
                let wrapped = self.take_wrapped(&token).await?;
                Ok(wrapped.into_response())
            }
            "rewrap" => {
                expect_op(req.operation, &[Operation::Create, Operation::Update])?;
                let token = get_str(req.data, "token")?
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| LogicalError::InvalidRequest("missing token".into()))?;
                let wrapped = self.take_wrapped(&token).await?;
                let remaining = wrapped
                    .creation_time
                    .saturating_add(wrapped.creation_ttl)
                    .saturating_sub(now_unix())
                    .max(1);
                // Vault gives the new token the original TTL. A DR activation token keeps its
                // original expiry instead: rewrapping must not keep a bearer credential alive.
                let ttl_secs = if wrapped.creation_path == ACTIVATION_TOKEN_PATH {
                    remaining
                } else {
                    wrapped.creation_ttl.max(remaining)
                };
                let ttl = Duration::from_secs(ttl_secs);
                let path = wrapped.creation_path.clone();
                let resp = Response {
                    data: wrapped.data,
                    auth: wrapped.auth,
                    warnings: wrapped.warnings,
                    lease_duration: wrapped.lease_duration,
                    lease_id: wrapped.lease_id,
                    renewable: wrapped.renewable,
                    ..Default::default()
                };
                self.wrap_response(resp, ttl, &path).await
            }
            _ => Err(LogicalError::UnsupportedPath(req.full_path())),
        }
    }
}
