//! The `auth/token/*` endpoints.

use super::create_plan::{plan, CreateContext, CreatePlan};
use super::roles::ROLE_PREFIX;
use super::{TokenEntry, TokenRole};
use crate::core::Core;
use crate::logical::fields::{get_duration, get_str};
use crate::logical::{Auth, LogicalError, Operation, Request, Response, Result};
use bunker_sdk::Caller;
use bunker_sdk::{expect_op, WRITE};

impl Core {
    pub(crate) async fn handle_token(&self, req: &Request, caller: &Caller) -> Result<Response> {
        let path = req.path.strip_prefix("auth/token/").unwrap_or("");
        let (head, rest) = path.split_once('/').unwrap_or((path, ""));
        let op = req.operation;
        match head {
            "create" if rest.is_empty() => {
                expect_op(op, WRITE)?;
                self.token_create(req, caller, false, None).await
            }
            "create-orphan" => {
                expect_op(op, WRITE)?;
                self.token_create(req, caller, true, None).await
            }
            "create" => {
                expect_op(op, WRITE)?;
                let role = self
                    .read_role(rest)
                    .await?
                    .ok_or_else(|| LogicalError::InvalidRequest(format!("unknown role {rest}")))?;
                self.token_create(req, caller, false, Some(role)).await
            }
            "lookup-self" => {
                expect_op(op, &[Operation::Read, Operation::Update, Operation::Create])?;
                Ok(Response::data(caller.entry.lookup_data(&caller.token)))
            }
            "lookup" => {
                expect_op(op, &[Operation::Read, Operation::Update, Operation::Create])?;
                let token = token_arg(req, rest)?;
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
                let entry = self.accessor_or_bad(req, rest).await?;
                Ok(Response::data(entry.lookup_data("")))
            }
            "renew-self" => {
                expect_op(op, WRITE)?;
                let mut entry = caller.entry.clone();
                self.token_renew(&mut entry, &caller.token, req).await
            }
            "renew" => {
                expect_op(op, WRITE)?;
                let token = token_arg(req, rest)?;
                let mut entry = self.lookup_or_bad(&token).await?;
                self.token_renew(&mut entry, &token, req).await
            }
            "renew-accessor" => {
                expect_op(op, WRITE)?;
                let mut entry = self.accessor_or_bad(req, rest).await?;
                self.token_renew(&mut entry, "", req).await
            }
            "revoke-self" => {
                expect_op(op, WRITE)?;
                self.revoke_token_tree(&caller.entry.id_hash).await?;
                Ok(Response::empty())
            }
            "revoke" => {
                expect_op(op, WRITE)?;
                let token = token_arg(req, rest)?;
                if let Some(entry) = self.tokens.lookup(&token).await? {
                    self.revoke_token_tree(&entry.id_hash).await?;
                }
                Ok(Response::empty())
            }
            "revoke-accessor" => {
                expect_op(op, WRITE)?;
                let entry = self.accessor_or_bad(req, rest).await?;
                self.revoke_token_tree(&entry.id_hash).await?;
                Ok(Response::empty())
            }
            "revoke-orphan" => {
                expect_op(op, WRITE)?;
                let token = token_arg(req, rest)?;
                if let Some(entry) = self.tokens.lookup(&token).await? {
                    let revoked = self.tokens.revoke_orphan(&entry.id_hash).await?;
                    self.destroy_cubbyholes(&revoked).await?;
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
            "roles" => self.token_roles(req, rest).await,
            "tidy" => {
                expect_op(op, WRITE)?;
                let n = self.tidy_tokens().await?;
                Ok(Response::empty().with_warning(format!("tidied {n} expired tokens")))
            }
            _ => Err(LogicalError::UnsupportedPath(req.path.clone())),
        }
    }

    async fn lookup_or_bad(&self, token: &str) -> Result<TokenEntry> {
        self.tokens
            .lookup(token)
            .await?
            .ok_or_else(|| LogicalError::InvalidRequest("bad token".into()))
    }

    async fn accessor_or_bad(&self, req: &Request, rest: &str) -> Result<TokenEntry> {
        let accessor = match get_str(&req.data, "accessor")? {
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

    async fn token_renew(
        &self,
        entry: &mut TokenEntry,
        token: &str,
        req: &Request,
    ) -> Result<Response> {
        let increment = get_duration(&req.data, "increment")?.unwrap_or(0);
        let ttl = self.tokens.renew(entry, increment).await?;
        Ok(Response {
            auth: Some(auth_for(token, entry, ttl)),
            ..Default::default()
        })
    }

    async fn read_role(&self, name: &str) -> Result<Option<TokenRole>> {
        if name.is_empty() || name.contains('/') {
            return Ok(None);
        }
        match self.barrier.get(&format!("{ROLE_PREFIX}{name}")).await? {
            None => Ok(None),
            Some(b) => Ok(Some(serde_json::from_slice(&b)?)),
        }
    }

    async fn token_roles(&self, req: &Request, name: &str) -> Result<Response> {
        if name.is_empty() {
            expect_op(req.operation, &[Operation::List, Operation::Read])?;
            return Ok(Response::list(self.barrier.list(ROLE_PREFIX).await?));
        }
        if name.contains('/') || name.len() > 128 {
            return Err(LogicalError::InvalidRequest("invalid role name".into()));
        }
        match req.operation {
            Operation::Read => {
                let role = self
                    .read_role(name)
                    .await?
                    .ok_or_else(|| LogicalError::NotFound(String::new()))?;
                Ok(Response::data(role.to_data()))
            }
            Operation::Create | Operation::Update => {
                let mut role = self.read_role(name).await?.unwrap_or_else(|| TokenRole {
                    name: name.to_owned(),
                    renewable: true,
                    ..Default::default()
                });
                role.update_from(&req.data)?;
                self.barrier
                    .put(&format!("{ROLE_PREFIX}{name}"), &serde_json::to_vec(&role)?)
                    .await?;
                Ok(Response::empty())
            }
            Operation::Delete => {
                self.barrier.delete(&format!("{ROLE_PREFIX}{name}")).await?;
                Ok(Response::empty())
            }
            _ => Err(LogicalError::UnsupportedOperation),
        }
    }

    async fn token_create(
        &self,
        req: &Request,
        caller: &Caller,
        orphan_endpoint: bool,
        role: Option<TokenRole>,
    ) -> Result<Response> {
        let ctx = CreateContext {
            parent: &caller.entry,
            privileged: caller.entry.is_root() || caller.is_sudo(&req.path),
            orphan_endpoint,
            role: role.as_ref(),
            system: *self.lease_ttls(),
        };
        let CreatePlan { entry, id, ttl } = plan(&req.data, &ctx)?;
        let (token, entry) = self.tokens.create(entry, id).await?;
        Ok(Response {
            auth: Some(auth_for(&token, &entry, ttl)),
            ..Default::default()
        })
    }
}

fn token_arg(req: &Request, rest: &str) -> Result<String> {
    match get_str(&req.data, "token")? {
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
