//! The AppRole auth method: roles (`role/<name>`) with a role id and secret ids, and `login`
//! with both.
//!
//! Storage of the mount (ids never in clear, see [`crate::salt`]):
//! - `role/<name>`: the role, its role id and token parameters;
//! - `role_id/<hmac(role id)>`: the role a role id belongs to;
//! - `secret_id/<hmac(role name)>/<hmac(secret id)>`: a secret id's entry;
//! - `accessor/<hmac(accessor)>`: where a secret id accessor's entry is.

mod role_fields;
mod secret_id;

use async_trait::async_trait;
use bunker_sdk::cidr::validate_cidrs;
use bunker_sdk::fields::{get_bool, get_duration, get_str, get_str_list, get_u64};
use bunker_sdk::{
    BackendRequest, Data, LogicalBackend, LogicalError, Operation, Response, Result, SpecialPaths,
    StorageView, TokenParams,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::checked_name;
use crate::salt::{mount_salt, salted};

const ROLE_PREFIX: &str = "role/";
const ROLE_ID_PREFIX: &str = "role_id/";

/// The AppRole backend (stateless: everything is in the mount's storage).
pub struct AppRole;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Role {
    name: String,
    role_id: String,
    bind_secret_id: bool,
    #[serde(default)]
    secret_id_num_uses: u64,
    #[serde(default)]
    secret_id_ttl: u64,
    #[serde(default)]
    secret_id_bound_cidrs: Vec<String>,
    #[serde(flatten)]
    params: TokenParams,
}

#[derive(Serialize, Deserialize)]
struct RoleIdIndex {
    name: String,
}

impl Role {
    fn update_from(&mut self, d: &Data) -> Result<()> {
        self.params.update_from(d)?;
        if let Some(v) = get_bool(d, "bind_secret_id")? {
            self.bind_secret_id = v;
        }
        if let Some(v) = get_u64(d, "secret_id_num_uses")? {
            self.secret_id_num_uses = v;
        }
        if let Some(v) = get_duration(d, "secret_id_ttl")? {
            self.secret_id_ttl = v;
        }
        if let Some(v) =
            get_str_list(d, "secret_id_bound_cidrs")?.or(get_str_list(d, "bound_cidr_list")?)
        {
            self.secret_id_bound_cidrs = validate_cidrs(&v)?;
        }
        if !self.bind_secret_id
            && self.secret_id_bound_cidrs.is_empty()
            && self.params.token_bound_cidrs.is_empty()
        {
            return Err(LogicalError::InvalidRequest(
                "at least one constraint should be enabled on the role".into(),
            ));
        }
        Ok(())
    }

    fn to_data(&self) -> Data {
        let mut d = Data::new();
        self.params.write_to(&mut d);
        d.insert("bind_secret_id".into(), json!(self.bind_secret_id));
        d.insert("secret_id_num_uses".into(), json!(self.secret_id_num_uses));
        d.insert("secret_id_ttl".into(), json!(self.secret_id_ttl));
        d.insert(
            "secret_id_bound_cidrs".into(),
            json!(self.secret_id_bound_cidrs),
        );
        d.insert("local_secret_ids".into(), json!(false));
        d
    }
}

pub(crate) async fn load_role(storage: &StorageView, name: &str) -> Result<Option<Role>> {
    storage.get_json(&format!("{ROLE_PREFIX}{name}")).await
}

async fn role_or_error(storage: &StorageView, name: &str) -> Result<Role> {
    load_role(storage, name)
        .await?
        .ok_or_else(|| LogicalError::InvalidRequest(format!("role {name:?} does not exist")))
}

/// The role a role id belongs to.
pub(crate) async fn role_by_role_id(storage: &StorageView, role_id: &str) -> Result<Option<Role>> {
    let salt = mount_salt(storage).await?;
    let key = format!("{ROLE_ID_PREFIX}{}", salted(&salt, role_id)?);
    let Some(index) = storage.get_json::<RoleIdIndex>(&key).await? else {
        return Ok(None);
    };
    // The index and the role must agree (a stale index after a role id change says nothing).
    Ok(load_role(storage, &index.name)
        .await?
        .filter(|role| role.role_id == role_id))
}

fn is_write(op: Operation) -> bool {
    matches!(op, Operation::Create | Operation::Update)
}

fn unsupported(req: &BackendRequest<'_>) -> LogicalError {
    LogicalError::UnsupportedPath(format!("{}{}", req.mount_point, req.path))
}

#[async_trait]
impl LogicalBackend for AppRole {
    async fn handle(&self, req: BackendRequest<'_>) -> Result<Response> {
        let path = req.path;
        match path {
            "login" if is_write(req.operation) => return secret_id::login(&req).await,
            "tidy/secret-id" if is_write(req.operation) => return secret_id::tidy(&req).await,
            "role" | "role/" => {
                return match req.operation {
                    Operation::List | Operation::Read => {
                        Ok(Response::list(req.storage.list(ROLE_PREFIX).await?))
                    }
                    _ => Err(LogicalError::UnsupportedOperation),
                }
            }
            _ => {}
        }
        let Some(rest) = path.strip_prefix("role/") else {
            return Err(unsupported(&req));
        };
        let (name, sub) = rest.split_once('/').unwrap_or((rest, ""));
        let name = checked_name(name, "role name")?;
        let op = req.operation;
        match (sub, op) {
            ("", _) => role(&req, &name).await,
            ("role-id", Operation::Read) => {
                let role = role_or_error(req.storage, &name).await?;
                let mut d = Data::new();
                d.insert("role_id".into(), json!(role.role_id));
                Ok(Response::data(d))
            }
            ("role-id", _) if is_write(op) => set_role_id(&req, &name).await,
            ("secret-id" | "secret-id/", Operation::List) => secret_id::list(&req, &name).await,
            ("secret-id", _) if is_write(op) => secret_id::generate(&req, &name, false).await,
            ("custom-secret-id", _) if is_write(op) => secret_id::generate(&req, &name, true).await,
            ("secret-id/lookup", _) if is_write(op) => secret_id::lookup(&req, &name).await,
            ("secret-id/destroy", _) if is_write(op) || op == Operation::Delete => {
                secret_id::destroy(&req, &name).await
            }
            ("secret-id-accessor/lookup", _) if is_write(op) => {
                secret_id::lookup_accessor(&req, &name).await
            }
            ("secret-id-accessor/destroy", _) if is_write(op) || op == Operation::Delete => {
                secret_id::destroy_accessor(&req, &name).await
            }
            (
                "role-id"
                | "secret-id"
                | "custom-secret-id"
                | "secret-id/lookup"
                | "secret-id/destroy"
                | "secret-id-accessor/lookup"
                | "secret-id-accessor/destroy",
                _,
            ) => Err(LogicalError::UnsupportedOperation),
            (field, _) if role_fields::is_field_endpoint(field) => {
                role_fields::handle(&req, &name, field).await
            }
            _ => Err(unsupported(&req)),
        }
    }

    async fn exists(&self, req: &BackendRequest<'_>) -> Result<Option<bool>> {
        let Some(name) = req.path.strip_prefix("role/") else {
            return Ok(None);
        };
        let Ok(name) = checked_name(name, "role name") else {
            return Ok(None);
        };
        Ok(Some(load_role(req.storage, &name).await?.is_some()))
    }

    fn help(&self) -> bunker_sdk::BackendHelp {
        crate::help::APPROLE
    }

    fn special_paths(&self) -> SpecialPaths {
        SpecialPaths {
            root: &[],
            unauthenticated: &["login"],
        }
    }
}

/// `role/<name>`: read, create or update, delete (with its secret ids).
async fn role(req: &BackendRequest<'_>, name: &str) -> Result<Response> {
    match req.operation {
        Operation::Read => {
            let role = load_role(req.storage, name)
                .await?
                .ok_or_else(|| LogicalError::NotFound(String::new()))?;
            Ok(Response::data(role.to_data()))
        }
        Operation::Create | Operation::Update => {
            let existing = load_role(req.storage, name).await?;
            let created = existing.is_none();
            let mut role = existing.unwrap_or_else(|| Role {
                name: name.to_owned(),
                role_id: String::new(),
                bind_secret_id: true,
                secret_id_num_uses: 0,
                secret_id_ttl: 0,
                secret_id_bound_cidrs: Vec::new(),
                params: TokenParams::default(),
            });
            role.update_from(req.data)?;
            let role_id = match get_str(req.data, "role_id")?.filter(|s| !s.is_empty()) {
                Some(id) => Some(id),
                None if created => Some(uuid::Uuid::new_v4().to_string()),
                None => None,
            };
            match role_id {
                Some(id) => store_with_role_id(req.storage, role, &id).await?,
                None => {
                    req.storage
                        .put_json(&format!("{ROLE_PREFIX}{name}"), &role)
                        .await?
                }
            }
            Ok(Response::empty())
        }
        Operation::Delete => {
            let Some(role) = load_role(req.storage, name).await? else {
                return Ok(Response::empty());
            };
            secret_id::destroy_all(req.storage, name).await?;
            let salt = mount_salt(req.storage).await?;
            req.storage
                .delete(&format!(
                    "{ROLE_ID_PREFIX}{}",
                    salted(&salt, &role.role_id)?
                ))
                .await?;
            req.storage.delete(&format!("{ROLE_PREFIX}{name}")).await?;
            Ok(Response::empty())
        }
        _ => Err(LogicalError::UnsupportedOperation),
    }
}

/// `role/<name>/role-id`: a custom role id.
async fn set_role_id(req: &BackendRequest<'_>, name: &str) -> Result<Response> {
    let role = role_or_error(req.storage, name).await?;
    let role_id = get_str(req.data, "role_id")?
        .filter(|s| !s.is_empty())
        .ok_or_else(|| LogicalError::InvalidRequest("missing role_id".into()))?;
    store_with_role_id(req.storage, role, &role_id).await?;
    Ok(Response::empty())
}

/// Store `role` with `role_id`, moving its index; a role id belongs to one role only.
async fn store_with_role_id(storage: &StorageView, mut role: Role, role_id: &str) -> Result<()> {
    if role_id.len() > 512 {
        return Err(LogicalError::InvalidRequest("role_id is too long".into()));
    }
    let salt = mount_salt(storage).await?;
    if let Some(owner) = role_by_role_id(storage, role_id).await? {
        if owner.name != role.name {
            return Err(LogicalError::InvalidRequest(
                "role_id already in use".into(),
            ));
        }
    }
    let mut ops = Vec::new();
    if !role.role_id.is_empty() && role.role_id != role_id {
        ops.push(bunker_storage::Op::Delete {
            key: format!("{ROLE_ID_PREFIX}{}", salted(&salt, &role.role_id)?),
        });
    }
    role_id.clone_into(&mut role.role_id);
    ops.push(bunker_storage::Op::Put {
        key: format!("{ROLE_ID_PREFIX}{}", salted(&salt, role_id)?),
        value: serde_json::to_vec(&RoleIdIndex {
            name: role.name.clone(),
        })?,
    });
    ops.push(bunker_storage::Op::Put {
        key: format!("{ROLE_PREFIX}{}", role.name),
        value: serde_json::to_vec(&role)?,
    });
    storage.batch(ops).await
}

#[cfg(test)]
mod tests;
