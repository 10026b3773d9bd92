//! The token auth method, built in at `auth/token/`: an ordinary [`LogicalBackend`] over the
//! token store. It is served through the same pipeline as any mount (ACL with the sudo paths it
//! declares, audit, wrapping); what it needs besides the store is the caller (from the
//! request), its roles (its storage view, `sys/token/role/`), the system's TTLs and the
//! [`Revoker`], so a revoked token's cubbyhole goes with it.

use async_trait::async_trait;
use bunker_sdk::path_help as path;
use bunker_sdk::{expect_op, BackendHelp, SpecialPaths, WRITE};

use super::create_plan::{plan, CreateContext, CreatePlan};
use super::revoker::Revoker;
use super::{TokenEntry, TokenRole, TokenStore};
use crate::logical::fields::{get_duration, get_str};
use crate::logical::{
    Auth, BackendRequest, Caller, LogicalBackend, LogicalError, Operation, Response, Result,
};
use crate::mounts::SystemTtls;
use std::sync::Arc;

/// The backend's storage view in the barrier: its roles, one key per name, where they were
/// before the backend existed. (Token entries, accessors and parent links, also under
/// `sys/token/`, are the token store's and out of the view's reach.)
pub(crate) const STORAGE_PREFIX: &str = "sys/token/role/";

/// The token backend's root-protected paths, as Vault's.
const SPECIAL_PATHS: SpecialPaths = SpecialPaths {
    root: &[
        "accessors",
        "accessors/",
        "revoke-orphan",
        "revoke-orphan/*",
    ],
    unauthenticated: &[],
};

pub(crate) const HELP: BackendHelp = BackendHelp {
    description: "The token auth method is built in at auth/token/: it creates tokens, looks \
        them up, renews and revokes them (with their children), by token or by accessor, and \
        manages token roles.",
    paths: &[
        path("create", "Create a token (POST policies, ttl, explicit_max_ttl, period, num_uses, type, meta, ...)."),
        path("create-orphan", "Create a token with no parent."),
        path("create/:role_name", "Create a token from a token role."),
        path("lookup", "Look a token up (POST token)."),
        path("lookup-self", "Look the caller's token up."),
        path("lookup-accessor", "Look a token up by its accessor."),
        path("renew", "Renew a token (POST token, increment)."),
        path("renew-self", "Renew the caller's token."),
        path("renew-accessor", "Renew a token by its accessor."),
        path("revoke", "Revoke a token and its children (POST token)."),
        path("revoke-self", "Revoke the caller's token and its children."),
        path("revoke-accessor", "Revoke a token by its accessor."),
        path("revoke-orphan", "Revoke a token, leaving its children as orphans (needs sudo)."),
        path("accessors", "List the accessors of all tokens (LIST; needs sudo)."),
        path("roles", "List the token roles."),
        path("roles/:role_name", "Create, read or delete a token role."),
        path("tidy", "Remove expired tokens and their indexes."),
    ],
};

pub(crate) struct TokenBackend {
    tokens: Arc<TokenStore>,
    revoker: Revoker,
    ttls: SystemTtls,
}

impl TokenBackend {
    pub(crate) fn new(tokens: Arc<TokenStore>, revoker: Revoker, ttls: SystemTtls) -> Self {
        TokenBackend {
            tokens,
            revoker,
            ttls,
        }
    }
}

#[async_trait]
impl LogicalBackend for TokenBackend {
    async fn handle(&self, req: BackendRequest<'_>) -> Result<Response> {
        // Every path of this backend needs a token: the core authenticated the caller.
        let caller = req.caller.ok_or(LogicalError::PermissionDenied)?;
        let (head, rest) = req.path.split_once('/').unwrap_or((req.path, ""));
        let op = req.operation;
        match head {
            "create" if rest.is_empty() => {
                expect_op(op, WRITE)?;
                self.create(&req, caller, false, None).await
            }
            "create-orphan" => {
                expect_op(op, WRITE)?;
                self.create(&req, caller, true, None).await
            }
            "create" => {
                expect_op(op, WRITE)?;
                let role = read_role(&req, rest)
                    .await?
                    .ok_or_else(|| LogicalError::InvalidRequest(format!("unknown role {rest}")))?;
                self.create(&req, caller, false, Some(role)).await
            }
            "lookup-self" => {
                expect_op(op, &[Operation::Read, Operation::Update, Operation::Create])?;
                Ok(Response::data(caller.entry.lookup_data(&caller.token)))
            }
            "lookup" => {
                expect_op(op, &[Operation::Read, Operation::Update, Operation::Create])?;
                let token = token_arg(&req, rest)?;
                // Vault: looking up an unknown or revoked token is a 403 "bad token".
                let entry = self.lookup_or_bad(&token).await.map_err(|e| match e {
                    LogicalError::InvalidRequest(m) if m == "bad token" => {
                        LogicalError::Forbidden(m)
                    }
                    other => other,
                })?;
                Ok(Response::data(entry.lookup_data(&token)))
            }
            "lookup-accessor" => {
                expect_op(op, WRITE)?;
                let entry = self.accessor_or_bad(&req, rest).await?;
                Ok(Response::data(entry.lookup_data("")))
            }
            "renew-self" => {
                expect_op(op, WRITE)?;
                let mut entry = TokenEntry::clone(&caller.entry);
                self.renew(&mut entry, &caller.token, &req).await
            }
            "renew" => {
                expect_op(op, WRITE)?;
                let token = token_arg(&req, rest)?;
                let mut entry = self.lookup_or_bad(&token).await?;
                self.renew(&mut entry, &token, &req).await
            }
            "renew-accessor" => {
                expect_op(op, WRITE)?;
                let mut entry = self.accessor_or_bad(&req, rest).await?;
                self.renew(&mut entry, "", &req).await
            }
            "revoke-self" => {
                expect_op(op, WRITE)?;
                self.revoker.revoke_tree(&caller.entry.id_hash).await?;
                Ok(Response::empty())
            }
            "revoke" => {
                expect_op(op, WRITE)?;
                let token = token_arg(&req, rest)?;
                if let Some(entry) = self.tokens.lookup(&token).await? {
                    self.revoker.revoke_tree(&entry.id_hash).await?;
                }
                Ok(Response::empty())
            }
            "revoke-accessor" => {
                expect_op(op, WRITE)?;
                let entry = self.accessor_or_bad(&req, rest).await?;
                self.revoker.revoke_tree(&entry.id_hash).await?;
                Ok(Response::empty())
            }
            "revoke-orphan" => {
                expect_op(op, WRITE)?;
                let token = token_arg(&req, rest)?;
                if let Some(entry) = self.tokens.lookup(&token).await? {
                    self.revoker.revoke_orphan(&entry.id_hash).await?;
                }
                Ok(Response::empty())
            }
            "accessors" => {
                expect_op(op, &[Operation::List])?;
                let (accessors, warnings) = self.tokens.accessors().await?;
                let mut resp = Response::list(accessors);
                resp.warnings.extend(warnings);
                Ok(resp)
            }
            "roles" => roles(&req, rest).await,
            "tidy" => {
                expect_op(op, WRITE)?;
                let n = self.revoker.tidy().await?;
                Ok(Response::empty().with_warning(format!("tidied {n} expired tokens")))
            }
            _ => Err(LogicalError::UnsupportedPath(req.full_path())),
        }
    }

    /// A write to `roles/<name>` creates or updates the role, as Vault's existence check
    /// decides (a policy may allow one and not the other).
    async fn exists(&self, req: &BackendRequest<'_>) -> Result<Option<bool>> {
        match req.path.strip_prefix("roles/") {
            Some(name) if valid_role_name(name) => Ok(Some(read_role(req, name).await?.is_some())),
            _ => Ok(None),
        }
    }

    fn special_paths(&self) -> SpecialPaths {
        SPECIAL_PATHS
    }

    fn help(&self) -> BackendHelp {
        HELP
    }
}

impl TokenBackend {
    async fn lookup_or_bad(&self, token: &str) -> Result<TokenEntry> {
        self.tokens
            .lookup(token)
            .await?
            .ok_or_else(|| LogicalError::InvalidRequest("bad token".into()))
    }

    async fn accessor_or_bad(&self, req: &BackendRequest<'_>, rest: &str) -> Result<TokenEntry> {
        let accessor = match get_str(req.data, "accessor")? {
            Some(a) => a,
            None => rest.to_owned(),
        };
        if accessor.is_empty() {
            return Err(LogicalError::InvalidRequest("missing accessor".into()));
        }
        self.tokens
            .lookup_accessor(&accessor)
            .await?
            .ok_or_else(|| LogicalError::InvalidRequest("invalid accessor".into()))
    }

    async fn renew(
        &self,
        entry: &mut TokenEntry,
        token: &str,
        req: &BackendRequest<'_>,
    ) -> Result<Response> {
        let increment = get_duration(req.data, "increment")?.unwrap_or(0);
        let ttl = self.tokens.renew(entry, increment).await?;
        Ok(Response {
            auth: Some(Box::new(auth_for(token, entry, ttl))),
            ..Default::default()
        })
    }

    async fn create(
        &self,
        req: &BackendRequest<'_>,
        caller: &Caller,
        orphan_endpoint: bool,
        role: Option<TokenRole>,
    ) -> Result<Response> {
        let ctx = CreateContext {
            parent: &caller.entry,
            privileged: caller.entry.is_root() || caller.is_sudo(&req.full_path()),
            orphan_endpoint,
            role: role.as_ref(),
            system: self.ttls,
        };
        let CreatePlan { entry, id, ttl } = plan(req.data, &ctx)?;
        let (token, entry) = self.tokens.create(entry, id).await?;
        Ok(Response {
            auth: Some(Box::new(auth_for(&token, &entry, ttl))),
            ..Default::default()
        })
    }
}

fn valid_role_name(name: &str) -> bool {
    !name.is_empty() && !name.contains('/') && name.len() <= 128
}

async fn read_role(req: &BackendRequest<'_>, name: &str) -> Result<Option<TokenRole>> {
    if !valid_role_name(name) {
        return Ok(None);
    }
    req.storage.get_json(name).await
}

async fn roles(req: &BackendRequest<'_>, name: &str) -> Result<Response> {
    if name.is_empty() {
        expect_op(req.operation, &[Operation::List, Operation::Read])?;
        return Ok(Response::list(req.storage.list("").await?));
    }
    if !valid_role_name(name) {
        return Err(LogicalError::InvalidRequest("invalid role name".into()));
    }
    match req.operation {
        Operation::Read => {
            let role = read_role(req, name)
                .await?
                .ok_or_else(|| LogicalError::NotFound(String::new()))?;
            Ok(Response::data(role.to_data()))
        }
        Operation::Create | Operation::Update => {
            let mut role = read_role(req, name).await?.unwrap_or_else(|| TokenRole {
                name: name.to_owned(),
                renewable: true,
                ..Default::default()
            });
            role.update_from(req.data)?;
            req.storage.put_json(name, &role).await?;
            Ok(Response::empty())
        }
        Operation::Delete => {
            req.storage.delete(name).await?;
            Ok(Response::empty())
        }
        _ => Err(LogicalError::UnsupportedOperation),
    }
}

fn token_arg(req: &BackendRequest<'_>, rest: &str) -> Result<String> {
    match get_str(req.data, "token")? {
        Some(t) if !t.is_empty() => Ok(t),
        _ if !rest.is_empty() => Ok(rest.to_owned()),
        _ => Err(LogicalError::InvalidRequest("missing token".into())),
    }
}

pub(super) fn auth_for(token: &str, entry: &TokenEntry, ttl: u64) -> Auth {
    Auth {
        client_token: token.to_owned(),
        accessor: entry.accessor.clone(),
        policies: entry.policies.clone(),
        token_policies: entry.policies.clone(),
        metadata: if entry.meta.is_empty() {
            None
        } else {
            Some(entry.meta.clone())
        },
        lease_duration: ttl,
        renewable: entry.renewable,
        entity_id: String::new(),
        token_type: entry.token_type.as_str().to_owned(),
        orphan: entry.orphan,
        mfa_requirement: None,
        num_uses: entry.num_uses,
    }
}

#[cfg(test)]
#[path = "backend_tests.rs"]
mod tests;
