//! The `auth/token/*` endpoints.

use super::create_policies::{token_policies, PolicyRequest};
use super::roles::ROLE_PREFIX;
use super::{TokenEntry, TokenRole, TokenType, SYSTEM_MAX_TTL_SECS};
use crate::core::Core;
use crate::logical::fields::{get_bool, get_duration, get_str, get_str_list, get_str_map, get_u64};
use crate::logical::{Auth, LogicalError, Operation, Request, Response, Result};
use crate::request_handling::Caller;
use crate::sys::{expect_op, WRITE};

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
                let entry = self.lookup_or_bad(&token).await?;
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
                Ok(Response::list(self.tokens.accessors().await?))
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
        let d = &req.data;
        let parent = &caller.entry;
        if parent.token_type == TokenType::Batch {
            return Err(LogicalError::InvalidRequest(
                "batch tokens cannot create more tokens".into(),
            ));
        }
        let privileged = parent.is_root() || caller.is_sudo(&req.path);
        let id = get_str(d, "id")?.filter(|s| !s.is_empty());
        if id.is_some() && !privileged {
            return Err(LogicalError::InvalidRequest(
                "root or sudo privileges required to specify token id".into(),
            ));
        }
        let no_parent = get_bool(d, "no_parent")?.unwrap_or(false);
        if no_parent && !privileged {
            return Err(LogicalError::InvalidRequest(
                "root or sudo privileges required to create orphan token".into(),
            ));
        }
        let token_type = match get_str(d, "type")?.as_deref() {
            None | Some("") | Some("service") => match role.as_ref().map(|r| r.token_type.as_str())
            {
                Some("batch") | Some("default-batch") if get_str(d, "type")?.is_none() => {
                    TokenType::Batch
                }
                _ => TokenType::Service,
            },
            Some("batch") => TokenType::Batch,
            Some(other) => {
                return Err(LogicalError::InvalidRequest(format!(
                    "invalid 'type' value {other:?}"
                )))
            }
        };
        let no_default = get_bool(d, "no_default_policy")?.unwrap_or(false)
            || role.as_ref().is_some_and(|r| r.token_no_default_policy);
        let requested: Option<Vec<String>> =
            get_str_list(d, "policies")?.map(|v| v.into_iter().map(|p| p.to_lowercase()).collect());
        let policies = token_policies(&PolicyRequest {
            requested,
            no_default,
            parent: &parent.policies,
            privileged,
            role: role.as_ref(),
        })?;
        let is_root_token = policies.iter().any(|p| p == "root");

        let period = get_duration(d, "period")?
            .unwrap_or(0)
            .max(role.as_ref().map(|r| r.period).unwrap_or(0));
        if period > 0 && role.is_none() && !privileged {
            return Err(LogicalError::InvalidRequest(
                "root or sudo privileges required to create periodic token".into(),
            ));
        }
        let mut explicit_max_ttl = get_duration(d, "explicit_max_ttl")?.unwrap_or(0);
        if let Some(r) = &role {
            if r.explicit_max_ttl > 0
                && (explicit_max_ttl == 0 || r.explicit_max_ttl < explicit_max_ttl)
            {
                explicit_max_ttl = r.explicit_max_ttl;
            }
        }
        let mut ttl = if period > 0 {
            period
        } else {
            match get_duration(d, "ttl")?.or(get_duration(d, "lease")?) {
                Some(t) if t > 0 => t,
                _ => match role.as_ref().map(|r| r.token_ttl).filter(|t| *t > 0) {
                    Some(t) => t,
                    None if is_root_token => 0,
                    None => SYSTEM_MAX_TTL_SECS,
                },
            }
        };
        if explicit_max_ttl > 0 && (ttl == 0 || ttl > explicit_max_ttl) {
            ttl = explicit_max_ttl;
        }
        if ttl > SYSTEM_MAX_TTL_SECS && period == 0 {
            ttl = SYSTEM_MAX_TTL_SECS;
        }
        let num_uses = get_u64(d, "num_uses")?.unwrap_or(0);
        let mut renewable = get_bool(d, "renewable")?.unwrap_or(true);
        if let Some(r) = &role {
            renewable = renewable && r.renewable;
        }
        if token_type == TokenType::Batch {
            if is_root_token {
                return Err(LogicalError::InvalidRequest(
                    "batch tokens cannot be root tokens".into(),
                ));
            }
            if period > 0 || num_uses > 0 || id.is_some() {
                return Err(LogicalError::InvalidRequest(
                    "batch tokens cannot be periodic, use-limited or have a custom id".into(),
                ));
            }
            renewable = false;
        }
        let orphan = orphan_endpoint || no_parent || role.as_ref().is_some_and(|r| r.orphan);
        let display = get_str(d, "display_name")?.unwrap_or_default();
        let display_name = if display.is_empty() {
            "token".to_owned()
        } else {
            format!("token-{}", display.to_lowercase().replace(' ', "-"))
        };
        let mut path = match &role {
            Some(r) => format!("auth/token/create/{}", r.name),
            None if orphan_endpoint => "auth/token/create-orphan".into(),
            None => "auth/token/create".into(),
        };
        if let Some(r) = role.as_ref().filter(|r| !r.path_suffix.is_empty()) {
            path = format!("{path}/{}", r.path_suffix);
        }
        let entry = TokenEntry {
            parent_hash: if orphan {
                String::new()
            } else {
                parent.id_hash.clone()
            },
            policies: policies.clone(),
            meta: get_str_map(d, "meta")?.unwrap_or_default(),
            display_name,
            num_uses,
            ttl,
            explicit_max_ttl,
            period,
            renewable: renewable && ttl > 0,
            orphan,
            token_type,
            role: role.as_ref().map(|r| r.name.clone()).unwrap_or_default(),
            path,
            ..Default::default()
        };
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

fn auth_for(token: &str, entry: &TokenEntry, ttl: u64) -> Auth {
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
