//! Secret ids of AppRole roles: generate (random or custom), look up and destroy by id or by
//! accessor, list accessors, tidy expired ones, and the `login` that spends them.
//!
//! A secret id is stored only as its HMAC under the mount's salt. Spending a use is a
//! read-check-write under a lock of the secret id, so N concurrent logins spend exactly N uses
//! and a secret id with one use left logs in once.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use bunker_sdk::cidr::{addr_allowed, cidrs_within, validate_cidrs};
use bunker_sdk::fields::{get_duration, get_str, get_str_list, get_str_map, get_u64};
use bunker_sdk::time_util::{now_unix, rfc3339};
use bunker_sdk::{BackendRequest, Data, LogicalError, LoginAuth, Response, Result, StorageView};
use bunker_storage::Op;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use zeroize::Zeroizing;

use super::{role_by_role_id, role_or_error, Role};
use crate::salt::{mount_salt, salted};

const SECRET_ID_PREFIX: &str = "secret_id/";
const ACCESSOR_PREFIX: &str = "accessor/";
const INVALID_CREDENTIALS: &str = "invalid role or secret ID";
const LOCK_STRIPES: usize = 64;

/// Locks of secret ids, striped by storage key, shared by every mount (a tune replaces a
/// mount's backend object, not its data).
static SECRET_ID_LOCKS: LazyLock<Vec<tokio::sync::Mutex<()>>> = LazyLock::new(|| {
    (0..LOCK_STRIPES)
        .map(|_| tokio::sync::Mutex::new(()))
        .collect()
});

async fn lock_secret_id(key: &str) -> Result<tokio::sync::MutexGuard<'static, ()>> {
    let stripe = key.bytes().fold(0usize, |acc, b| {
        acc.wrapping_mul(31).wrapping_add(usize::from(b))
    }) % LOCK_STRIPES;
    let lock = SECRET_ID_LOCKS
        .get(stripe)
        .ok_or_else(|| LogicalError::Internal("secret id lock stripe out of range".into()))?;
    Ok(lock.lock().await)
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct SecretIdEntry {
    accessor: String,
    num_uses: u64,
    ttl: u64,
    creation_time: u64,
    /// 0: never expires.
    expiration_time: u64,
    last_updated_time: u64,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    #[serde(default)]
    cidr_list: Vec<String>,
    #[serde(default)]
    token_bound_cidrs: Vec<String>,
}

impl SecretIdEntry {
    fn is_expired(&self, now: u64) -> bool {
        self.expiration_time != 0 && now >= self.expiration_time
    }

    fn lookup_data(&self) -> Data {
        let expiration = if self.expiration_time == 0 {
            "0001-01-01T00:00:00Z".to_owned()
        } else {
            rfc3339(self.expiration_time)
        };
        let mut d = Data::new();
        d.insert("cidr_list".into(), json!(self.cidr_list));
        d.insert("creation_time".into(), json!(rfc3339(self.creation_time)));
        d.insert("expiration_time".into(), json!(expiration));
        d.insert(
            "last_updated_time".into(),
            json!(rfc3339(self.last_updated_time)),
        );
        d.insert("metadata".into(), json!(self.metadata));
        d.insert("secret_id_accessor".into(), json!(self.accessor));
        d.insert("secret_id_num_uses".into(), json!(self.num_uses));
        d.insert("secret_id_ttl".into(), json!(self.ttl));
        d.insert("token_bound_cidrs".into(), json!(self.token_bound_cidrs));
        d
    }
}

/// Where an accessor's secret id is.
#[derive(Serialize, Deserialize)]
struct AccessorIndex {
    role_hmac: String,
    secret_hmac: String,
}

/// The storage keys of one role's secret ids.
struct Keys {
    salt: Zeroizing<Vec<u8>>,
    role_dir: String,
    role_hmac: String,
}

impl Keys {
    async fn new(storage: &StorageView, role_name: &str) -> Result<Keys> {
        let salt = mount_salt(storage).await?;
        let role_hmac = salted(&salt, role_name)?;
        Ok(Keys {
            role_dir: format!("{SECRET_ID_PREFIX}{role_hmac}/"),
            role_hmac,
            salt,
        })
    }

    fn entry(&self, secret_id: &str) -> Result<String> {
        Ok(format!(
            "{}{}",
            self.role_dir,
            salted(&self.salt, secret_id)?
        ))
    }

    fn accessor(&self, accessor: &str) -> Result<String> {
        Ok(format!(
            "{ACCESSOR_PREFIX}{}",
            salted(&self.salt, accessor)?
        ))
    }
}

fn secret_id_field(data: &Data) -> Result<Zeroizing<String>> {
    get_str(data, "secret_id")?
        .filter(|s| !s.is_empty())
        .map(Zeroizing::new)
        .ok_or_else(|| LogicalError::InvalidRequest("missing secret_id".into()))
}

/// `metadata`: a JSON object, or (as Vault takes it) a string holding one.
fn metadata_field(data: &Data) -> Result<BTreeMap<String, String>> {
    match data.get("metadata") {
        Some(Value::String(s)) if !s.is_empty() => {
            let parsed: Data = serde_json::from_str(s).map_err(|_| {
                LogicalError::InvalidRequest("metadata must be a JSON object of strings".into())
            })?;
            let mut holder = Data::new();
            holder.insert("metadata".into(), Value::Object(parsed));
            Ok(get_str_map(&holder, "metadata")?.unwrap_or_default())
        }
        Some(Value::String(_)) => Ok(BTreeMap::new()),
        _ => Ok(get_str_map(data, "metadata")?.unwrap_or_default()),
    }
}

/// A limit the request may lower but not raise above the role's (0 is "the role's").
fn within_role(requested: Option<u64>, role_limit: u64, what: &str) -> Result<u64> {
    match requested.filter(|v| *v > 0) {
        None => Ok(role_limit),
        Some(v) if role_limit > 0 && v > role_limit => Err(LogicalError::InvalidRequest(format!(
            "{what} cannot be higher than the role's secret_id_{what}"
        ))),
        Some(v) => Ok(v),
    }
}

/// `role/<name>/secret-id` and `role/<name>/custom-secret-id`.
pub(super) async fn generate(
    req: &BackendRequest<'_>,
    name: &str,
    custom: bool,
) -> Result<Response> {
    let role = role_or_error(req.storage, name).await?;
    if !role.bind_secret_id {
        return Err(LogicalError::InvalidRequest(
            "bind_secret_id is not set on the role".into(),
        ));
    }
    let secret_id = if custom {
        secret_id_field(req.data)?
    } else {
        Zeroizing::new(uuid::Uuid::new_v4().to_string())
    };
    if secret_id.len() > 512 {
        return Err(LogicalError::InvalidRequest("secret_id is too long".into()));
    }
    let now = now_unix();
    let ttl = within_role(get_duration(req.data, "ttl")?, role.secret_id_ttl, "ttl")?;
    let entry = SecretIdEntry {
        accessor: uuid::Uuid::new_v4().to_string(),
        num_uses: within_role(
            get_u64(req.data, "num_uses")?,
            role.secret_id_num_uses,
            "num_uses",
        )?,
        ttl,
        creation_time: now,
        expiration_time: if ttl == 0 { 0 } else { now.saturating_add(ttl) },
        last_updated_time: now,
        metadata: metadata_field(req.data)?,
        cidr_list: validate_cidrs(&get_str_list(req.data, "cidr_list")?.unwrap_or_default())?,
        token_bound_cidrs: validate_cidrs(
            &get_str_list(req.data, "token_bound_cidrs")?.unwrap_or_default(),
        )?,
    };
    // As Vault: a secret id may narrow the role's CIDR bounds, never widen them.
    if !cidrs_within(&entry.cidr_list, &role.secret_id_bound_cidrs)
        || !cidrs_within(&entry.token_bound_cidrs, &role.params.token_bound_cidrs)
    {
        return Err(LogicalError::InvalidRequest(
            "failed to verify the CIDR restrictions set on the secret ID: its blocks must lie \
             within the role's"
                .into(),
        ));
    }
    let keys = Keys::new(req.storage, name).await?;
    let entry_key = keys.entry(&secret_id)?;
    let _guard = lock_secret_id(&entry_key).await?;
    if req.storage.get(&entry_key).await?.is_some() {
        return Err(LogicalError::InvalidRequest(
            "SecretID is already registered".into(),
        ));
    }
    let index = AccessorIndex {
        role_hmac: keys.role_hmac.clone(),
        secret_hmac: salted(&keys.salt, &secret_id)?,
    };
    req.storage
        .batch(vec![
            Op::Put {
                key: entry_key,
                value: serde_json::to_vec(&entry)?,
            },
            Op::Put {
                key: keys.accessor(&entry.accessor)?,
                value: serde_json::to_vec(&index)?,
            },
        ])
        .await?;
    let mut d = Data::new();
    d.insert("secret_id".into(), json!(secret_id.as_str()));
    d.insert("secret_id_accessor".into(), json!(entry.accessor));
    d.insert("secret_id_ttl".into(), json!(entry.ttl));
    d.insert("secret_id_num_uses".into(), json!(entry.num_uses));
    Ok(Response::data(d))
}

/// LIST `role/<name>/secret-id`: the accessors of the role's secret ids.
pub(super) async fn list(req: &BackendRequest<'_>, name: &str) -> Result<Response> {
    role_or_error(req.storage, name).await?;
    let keys = Keys::new(req.storage, name).await?;
    let mut accessors = Vec::new();
    for child in req.storage.list(&keys.role_dir).await? {
        let key = format!("{}{child}", keys.role_dir);
        if let Some(entry) = req.storage.get_json::<SecretIdEntry>(&key).await? {
            accessors.push(entry.accessor);
        }
    }
    accessors.sort();
    Ok(Response::list(accessors))
}

/// `role/<name>/secret-id/lookup`; an unknown secret id is an empty answer, as in Vault.
pub(super) async fn lookup(req: &BackendRequest<'_>, name: &str) -> Result<Response> {
    role_or_error(req.storage, name).await?;
    let secret_id = secret_id_field(req.data)?;
    let keys = Keys::new(req.storage, name).await?;
    match req
        .storage
        .get_json::<SecretIdEntry>(&keys.entry(&secret_id)?)
        .await?
    {
        Some(entry) if !entry.is_expired(now_unix()) => Ok(Response::data(entry.lookup_data())),
        _ => Ok(Response::empty()),
    }
}

/// `role/<name>/secret-id/destroy`.
pub(super) async fn destroy(req: &BackendRequest<'_>, name: &str) -> Result<Response> {
    role_or_error(req.storage, name).await?;
    let secret_id = secret_id_field(req.data)?;
    let keys = Keys::new(req.storage, name).await?;
    let entry_key = keys.entry(&secret_id)?;
    let _guard = lock_secret_id(&entry_key).await?;
    delete_entry(req.storage, &keys, &entry_key).await?;
    Ok(Response::empty())
}

/// Delete a secret id's entry and its accessor index (the caller holds its lock).
async fn delete_entry(storage: &StorageView, keys: &Keys, entry_key: &str) -> Result<()> {
    let mut ops = vec![Op::Delete {
        key: entry_key.to_owned(),
    }];
    if let Some(entry) = storage.get_json::<SecretIdEntry>(entry_key).await? {
        ops.push(Op::Delete {
            key: keys.accessor(&entry.accessor)?,
        });
    }
    storage.batch(ops).await
}

/// The entry key of the secret id behind `secret_id_accessor`, if it belongs to this role.
async fn accessor_entry_key(req: &BackendRequest<'_>, keys: &Keys) -> Result<String> {
    let accessor = get_str(req.data, "secret_id_accessor")?
        .filter(|s| !s.is_empty())
        .ok_or_else(|| LogicalError::InvalidRequest("missing secret_id_accessor".into()))?;
    let not_found = || {
        LogicalError::InvalidRequest(format!(
            "failed to find accessor entry for secret_id_accessor: {accessor:?}"
        ))
    };
    let index = req
        .storage
        .get_json::<AccessorIndex>(&keys.accessor(&accessor)?)
        .await?
        .filter(|i| i.role_hmac == keys.role_hmac)
        .ok_or_else(not_found)?;
    Ok(format!("{}{}", keys.role_dir, index.secret_hmac))
}

/// `role/<name>/secret-id-accessor/lookup`.
pub(super) async fn lookup_accessor(req: &BackendRequest<'_>, name: &str) -> Result<Response> {
    role_or_error(req.storage, name).await?;
    let keys = Keys::new(req.storage, name).await?;
    let entry_key = accessor_entry_key(req, &keys).await?;
    match req.storage.get_json::<SecretIdEntry>(&entry_key).await? {
        Some(entry) if !entry.is_expired(now_unix()) => Ok(Response::data(entry.lookup_data())),
        _ => Ok(Response::empty()),
    }
}

/// `role/<name>/secret-id-accessor/destroy`.
pub(super) async fn destroy_accessor(req: &BackendRequest<'_>, name: &str) -> Result<Response> {
    role_or_error(req.storage, name).await?;
    let keys = Keys::new(req.storage, name).await?;
    let entry_key = accessor_entry_key(req, &keys).await?;
    let _guard = lock_secret_id(&entry_key).await?;
    delete_entry(req.storage, &keys, &entry_key).await?;
    Ok(Response::empty())
}

/// Every secret id of a role (the role is being deleted).
pub(super) async fn destroy_all(storage: &StorageView, name: &str) -> Result<()> {
    let keys = Keys::new(storage, name).await?;
    for child in storage.list(&keys.role_dir).await? {
        let entry_key = format!("{}{child}", keys.role_dir);
        let _guard = lock_secret_id(&entry_key).await?;
        delete_entry(storage, &keys, &entry_key).await?;
    }
    Ok(())
}

/// `tidy/secret-id`: delete expired secret ids and accessor indexes that point nowhere.
pub(super) async fn tidy(req: &BackendRequest<'_>) -> Result<Response> {
    let storage = req.storage;
    let salt = mount_salt(storage).await?;
    let now = now_unix();
    let mut removed = 0usize;
    for role_dir in storage.list(SECRET_ID_PREFIX).await? {
        let role_dir = format!("{SECRET_ID_PREFIX}{role_dir}");
        for child in storage.list(&role_dir).await? {
            let entry_key = format!("{role_dir}{child}");
            let _guard = lock_secret_id(&entry_key).await?;
            let Some(entry) = storage.get_json::<SecretIdEntry>(&entry_key).await? else {
                continue;
            };
            if entry.is_expired(now) {
                storage
                    .batch(vec![
                        Op::Delete { key: entry_key },
                        Op::Delete {
                            key: format!("{ACCESSOR_PREFIX}{}", salted(&salt, &entry.accessor)?),
                        },
                    ])
                    .await?;
                removed = removed.saturating_add(1);
            }
        }
    }
    for accessor_key in storage.list(ACCESSOR_PREFIX).await? {
        let key = format!("{ACCESSOR_PREFIX}{accessor_key}");
        let Some(index) = storage.get_json::<AccessorIndex>(&key).await? else {
            continue;
        };
        let target = format!(
            "{SECRET_ID_PREFIX}{}/{}",
            index.role_hmac, index.secret_hmac
        );
        if storage.get(&target).await?.is_none() {
            storage.delete(&key).await?;
        }
    }
    Ok(Response::empty().with_warning(format!("tidied {removed} expired secret IDs")))
}

/// `login` with `role_id` and (when the role binds one) `secret_id`.
pub(super) async fn login(req: &BackendRequest<'_>) -> Result<Response> {
    let invalid = || LogicalError::InvalidRequest(INVALID_CREDENTIALS.into());
    let role_id = get_str(req.data, "role_id")?
        .filter(|s| !s.is_empty())
        .map(Zeroizing::new)
        .ok_or_else(|| LogicalError::InvalidRequest("missing role_id".into()))?;
    let role = role_by_role_id(req.storage, &role_id)
        .await?
        .ok_or_else(invalid)?;
    if !addr_allowed(req.remote_addr, &role.secret_id_bound_cidrs) {
        return Err(source_refused(req.remote_addr, "role"));
    }
    let mut metadata = BTreeMap::new();
    let mut token_bound_cidrs = role.params.token_bound_cidrs.clone();
    if role.bind_secret_id {
        let secret_id = secret_id_field(req.data)?;
        let entry = spend(req, &role, &secret_id).await?;
        metadata = entry.metadata;
        if !entry.token_bound_cidrs.is_empty() {
            token_bound_cidrs = entry.token_bound_cidrs;
        }
    }
    if !addr_allowed(req.remote_addr, &token_bound_cidrs) {
        return Err(LogicalError::PermissionDenied);
    }
    metadata.insert("role_name".into(), role.name.clone());
    let mut params = role.params;
    params.token_bound_cidrs = token_bound_cidrs;
    Ok(Response {
        login: Some(Box::new(LoginAuth {
            display_name: String::new(),
            metadata,
            params,
        })),
        ..Default::default()
    })
}

fn source_refused(remote_addr: Option<&str>, on: &str) -> LogicalError {
    LogicalError::InvalidRequest(format!(
        "source address {:?} unauthorized through CIDR restrictions on the {on}",
        remote_addr.unwrap_or("")
    ))
}

/// Check a secret id of `role` and spend one of its uses, atomically.
async fn spend(req: &BackendRequest<'_>, role: &Role, secret_id: &str) -> Result<SecretIdEntry> {
    let invalid = || LogicalError::InvalidRequest(INVALID_CREDENTIALS.into());
    let keys = Keys::new(req.storage, &role.name).await?;
    let entry_key = keys.entry(secret_id)?;
    let _guard = lock_secret_id(&entry_key).await?;
    let mut entry = req
        .storage
        .get_json::<SecretIdEntry>(&entry_key)
        .await?
        .ok_or_else(invalid)?;
    let now = now_unix();
    if entry.is_expired(now) {
        delete_entry(req.storage, &keys, &entry_key).await?;
        return Err(invalid());
    }
    if !addr_allowed(req.remote_addr, &entry.cidr_list) {
        return Err(source_refused(req.remote_addr, "secret ID"));
    }
    match entry.num_uses {
        0 => {}
        1 => delete_entry(req.storage, &keys, &entry_key).await?,
        n => {
            entry.num_uses = n - 1;
            entry.last_updated_time = now;
            req.storage.put_json(&entry_key, &entry).await?;
        }
    }
    Ok(entry)
}
