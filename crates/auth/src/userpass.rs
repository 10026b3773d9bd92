//! The userpass auth method: users with a password and token parameters
//! (`users/<name>`, `users/<name>/password`, `users/<name>/policies`), and
//! `login/<name>`.
//!
//! Passwords are stored as argon2id hashes (PHC strings) and checked off the async runtime.
//! An unknown user is checked against a dummy hash, so it costs what a wrong password costs and
//! gets the same answer.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use argon2::password_hash::{phc::PasswordHash, PasswordHasher, PasswordVerifier};
use argon2::Argon2;
use async_trait::async_trait;
use bunker_sdk::cidr::addr_allowed;
use bunker_sdk::fields::{get_str, get_str_list};
use bunker_sdk::{
    BackendRequest, Data, LogicalBackend, LogicalError, LoginAuth, Operation, Response, Result,
    SpecialPaths, StorageView, TokenParams,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use zeroize::Zeroizing;

use crate::checked_name;

const USER_PREFIX: &str = "user/";
const INVALID_CREDENTIALS: &str = "invalid username or password";
/// Longest password accepted, in bytes (hashing cost is linear in it).
const MAX_PASSWORD_BYTES: usize = 1024;

/// The userpass backend (stateless: everything is in the mount's storage).
pub struct Userpass;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct User {
    /// argon2id PHC string.
    password_hash: String,
    #[serde(flatten)]
    params: TokenParams,
}

/// Verified against when the user does not exist, so the answer takes as long.
static DUMMY_HASH: LazyLock<Option<String>> = LazyLock::new(|| {
    let mut random = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut random);
    Argon2::default()
        .hash_password(&random)
        .ok()
        .map(|h| h.to_string())
});

fn blocking_failed(e: tokio::task::JoinError) -> LogicalError {
    LogicalError::Internal(format!("password hashing task failed: {e}"))
}

async fn hash_password(password: Zeroizing<String>) -> Result<String> {
    tokio::task::spawn_blocking(move || {
        Argon2::default()
            .hash_password(password.as_bytes())
            .map(|h| h.to_string())
            .map_err(|e| LogicalError::Internal(format!("hashing password: {e}")))
    })
    .await
    .map_err(blocking_failed)?
}

/// Whether `password` matches `stored` (or, with no stored hash, burn the same time and say no).
async fn verify_password(password: Zeroizing<String>, stored: Option<String>) -> Result<bool> {
    tokio::task::spawn_blocking(move || {
        let matched = match stored.as_deref().or(DUMMY_HASH.as_deref()) {
            Some(hash) => PasswordHash::new(hash).is_ok_and(|parsed| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            }),
            None => false,
        };
        matched && stored.is_some()
    })
    .await
    .map_err(blocking_failed)
}

fn password_field(data: &Data) -> Result<Option<Zeroizing<String>>> {
    let Some(password) = get_str(data, "password")?.map(Zeroizing::new) else {
        return Ok(None);
    };
    if password.is_empty() || password.len() > MAX_PASSWORD_BYTES {
        return Err(LogicalError::InvalidRequest(format!(
            "password must be 1 to {MAX_PASSWORD_BYTES} bytes"
        )));
    }
    Ok(Some(password))
}

async fn load_user(storage: &StorageView, name: &str) -> Result<Option<User>> {
    storage.get_json(&format!("{USER_PREFIX}{name}")).await
}

async fn save_user(storage: &StorageView, name: &str, user: &User) -> Result<()> {
    storage
        .put_json(&format!("{USER_PREFIX}{name}"), user)
        .await
}

#[async_trait]
impl LogicalBackend for Userpass {
    async fn handle(&self, req: BackendRequest<'_>) -> Result<Response> {
        let path = req.path;
        if path == "users" || path == "users/" {
            return match req.operation {
                Operation::List | Operation::Read => {
                    Ok(Response::list(req.storage.list(USER_PREFIX).await?))
                }
                _ => Err(LogicalError::UnsupportedOperation),
            };
        }
        if let Some(name) = path.strip_prefix("login/") {
            return login(&req, name).await;
        }
        let Some(rest) = path.strip_prefix("users/") else {
            return Err(LogicalError::UnsupportedPath(format!(
                "{}{}",
                req.mount_point, req.path
            )));
        };
        let (name, field) = rest.split_once('/').unwrap_or((rest, ""));
        let name = checked_name(name, "username")?;
        match field {
            "" => user(&req, &name).await,
            "password" | "policies" => {
                if !matches!(req.operation, Operation::Create | Operation::Update) {
                    return Err(LogicalError::UnsupportedOperation);
                }
                update_field(&req, &name, field).await
            }
            _ => Err(LogicalError::UnsupportedPath(format!(
                "{}{}",
                req.mount_point, req.path
            ))),
        }
    }

    async fn exists(&self, req: &BackendRequest<'_>) -> Result<Option<bool>> {
        let Some(name) = req.path.strip_prefix("users/") else {
            return Ok(None);
        };
        if name.contains('/') {
            return Ok(None);
        }
        let Ok(name) = checked_name(name, "username") else {
            return Ok(None);
        };
        Ok(Some(load_user(req.storage, &name).await?.is_some()))
    }

    fn help(&self) -> bunker_sdk::BackendHelp {
        crate::help::USERPASS
    }

    fn special_paths(&self) -> SpecialPaths {
        SpecialPaths {
            root: &[],
            unauthenticated: &["login", "login/*"],
        }
    }
}

/// `users/<name>`: read, create or update, delete.
async fn user(req: &BackendRequest<'_>, name: &str) -> Result<Response> {
    match req.operation {
        Operation::Read => {
            let user = load_user(req.storage, name)
                .await?
                .ok_or_else(|| LogicalError::NotFound(String::new()))?;
            let mut data = Data::new();
            user.params.write_to(&mut data);
            Ok(Response::data(data))
        }
        Operation::Create | Operation::Update => {
            let existing = load_user(req.storage, name).await?;
            let password = password_field(req.data)?;
            if existing.is_none() && password.is_none() {
                return Err(LogicalError::InvalidRequest("missing password".into()));
            }
            let mut user = existing.unwrap_or_default();
            user.params.update_from(req.data)?;
            if let Some(cidrs) = get_str_list(req.data, "bound_cidrs")? {
                user.params.token_bound_cidrs = bunker_sdk::cidr::validate_cidrs(&cidrs)?;
            }
            if let Some(password) = password {
                user.password_hash = hash_password(password).await?;
            }
            save_user(req.storage, name, &user).await?;
            Ok(Response::empty())
        }
        Operation::Delete => {
            req.storage.delete(&format!("{USER_PREFIX}{name}")).await?;
            Ok(Response::empty())
        }
        _ => Err(LogicalError::UnsupportedOperation),
    }
}

/// `users/<name>/password` and `users/<name>/policies`: change one thing of an existing user.
async fn update_field(req: &BackendRequest<'_>, name: &str, field: &str) -> Result<Response> {
    let mut user = load_user(req.storage, name)
        .await?
        .ok_or_else(|| LogicalError::InvalidRequest("username does not exist".into()))?;
    if field == "password" {
        let password = password_field(req.data)?
            .ok_or_else(|| LogicalError::InvalidRequest("missing password".into()))?;
        user.password_hash = hash_password(password).await?;
    } else {
        let policies = get_str_list(req.data, "token_policies")?
            .or(get_str_list(req.data, "policies")?)
            .unwrap_or_default();
        let mut only_policies = Data::new();
        only_policies.insert("token_policies".into(), json!(policies));
        user.params.update_from(&only_policies)?;
    }
    save_user(req.storage, name, &user).await?;
    Ok(Response::empty())
}

/// `login/<name>` with `password`.
async fn login(req: &BackendRequest<'_>, name: &str) -> Result<Response> {
    if !matches!(req.operation, Operation::Create | Operation::Update) {
        return Err(LogicalError::UnsupportedOperation);
    }
    let invalid = || LogicalError::InvalidRequest(INVALID_CREDENTIALS.into());
    let password = password_field(req.data)
        .ok()
        .flatten()
        .ok_or_else(invalid)?;
    // A name that cannot exist is checked like an unknown one: same answer, same cost.
    let name = checked_name(name, "username").ok();
    let user = match &name {
        Some(n) => load_user(req.storage, n).await?,
        None => None,
    };
    let matched = verify_password(password, user.as_ref().map(|u| u.password_hash.clone())).await?;
    let (Some(name), Some(user), true) = (name, user, matched) else {
        return Err(invalid());
    };
    if !addr_allowed(req.remote_addr, &user.params.token_bound_cidrs) {
        return Err(LogicalError::PermissionDenied);
    }
    let mut metadata = BTreeMap::new();
    metadata.insert("username".to_owned(), name.clone());
    Ok(Response {
        login: Some(Box::new(LoginAuth {
            display_name: name,
            metadata,
            params: user.params,
        })),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{call, view};
    use bunker_sdk::Operation::{Delete, List, Read, Update};
    use serde_json::Value;

    /// A write to `path`, from `remote_addr`.
    async fn write_from(
        s: &StorageView,
        path: &str,
        body: Value,
        remote_addr: Option<&str>,
    ) -> Result<Response> {
        call(&Userpass, s, Update, path, body, remote_addr).await
    }

    async fn write(s: &StorageView, path: &str, body: Value) -> Result<Response> {
        write_from(s, path, body, None).await
    }

    async fn logs_in(s: &StorageView, user: &str, password: &str) -> bool {
        let body = json!({ "password": password });
        write(s, &format!("login/{user}"), body).await.is_ok()
    }

    #[tokio::test]
    async fn users_log_in_with_their_password_only() {
        let s = view("auth/u/").await;
        let body = json!({"password": "pw", "token_policies": "app", "token_ttl": "1h"});
        write(&s, "users/Alice", body).await.unwrap();
        let stored = String::from_utf8(s.get("user/alice").await.unwrap().unwrap()).unwrap();
        assert!(!stored.contains("\"pw\"") && stored.contains("$argon2id$"));
        let ok = write(&s, "login/alice", json!({"password": "pw"})).await;
        let login = ok.unwrap().login.unwrap();
        assert_eq!(login.params.token_policies, ["app"]);
        assert_eq!(login.params.token_ttl, 3600);
        assert_eq!(login.metadata["username"], "alice");
        for (who, pw) in [
            ("alice", "wrong"),
            ("bob", "pw"),
            ("bad/name", "pw"),
            ("alice", ""),
        ] {
            let body = json!({ "password": pw });
            let err = write(&s, &format!("login/{who}"), body).await.unwrap_err();
            assert_eq!(err.to_string(), INVALID_CREDENTIALS, "{who}");
        }
        write(&s, "users/alice/password", json!({"password": "new"}))
            .await
            .unwrap();
        assert!(!logs_in(&s, "alice", "pw").await);
        assert!(logs_in(&s, "alice", "new").await);
        write(&s, "users/alice/policies", json!({"policies": ["a", "b"]}))
            .await
            .unwrap();
        let read = call(&Userpass, &s, Read, "users/alice", json!({}), None).await;
        assert_eq!(
            read.unwrap().data.unwrap()["token_policies"],
            json!(["a", "b"])
        );
        let list = call(&Userpass, &s, List, "users/", json!({}), None).await;
        assert_eq!(list.unwrap().data.unwrap()["keys"], json!(["alice"]));
        let deleted = call(&Userpass, &s, Delete, "users/alice", json!({}), None).await;
        assert!(deleted.is_ok());
        assert!(!logs_in(&s, "alice", "new").await);
    }

    #[tokio::test]
    async fn creating_needs_a_password_and_cidrs_bind_logins() {
        let s = view("auth/u/").await;
        assert!(write(&s, "users/carol", json!({"token_ttl": "1h"}))
            .await
            .is_err());
        let body = json!({"password": "pw", "token_bound_cidrs": "10.0.0.0/8"});
        write(&s, "users/carol", body).await.unwrap();
        let login = json!({"password": "pw"});
        assert!(
            write_from(&s, "login/carol", login.clone(), Some("10.1.2.3"))
                .await
                .is_ok()
        );
        let err = write_from(&s, "login/carol", login, Some("127.0.0.1")).await;
        assert!(matches!(err, Err(LogicalError::PermissionDenied)));
    }
}
