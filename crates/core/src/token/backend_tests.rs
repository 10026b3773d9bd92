//! The token backend over an in-memory store, without the core: what `auth/token/*` answers
//! and what it changes.

use std::sync::{Arc, RwLock};

use bunker_barrier::Barrier;
use bunker_policy::{Acl, Policy};
use bunker_storage::InmemBackend;
use serde_json::{json, Map, Value};

use super::*;
use crate::logical::{Data, StorageView};
use crate::mounts::{MountEntry, Mounted, Router};

struct Fixture {
    backend: TokenBackend,
    view: StorageView,
    tokens: Arc<TokenStore>,
    cubbyhole: StorageView,
}

/// A cubbyhole mount only for its storage: the revoker finds it by kind.
struct NoBackend;

#[async_trait]
impl LogicalBackend for NoBackend {
    async fn handle(&self, _req: BackendRequest<'_>) -> Result<Response> {
        Err(LogicalError::UnsupportedOperation)
    }
}

async fn fixture() -> Fixture {
    let barrier = Arc::new(Barrier::new(Arc::new(InmemBackend::new())));
    let root = Barrier::generate_root_key();
    barrier.initialize(&root).await.unwrap();
    barrier.unseal(&root).await.unwrap();
    let tokens = Arc::new(TokenStore::new(barrier.clone(), SystemTtls::default()));
    tokens.create_salt().await.unwrap();
    let entry = MountEntry::new("cubbyhole/", "cubbyhole", "", Map::new());
    let cubbyhole = StorageView::new(barrier.clone(), entry.storage_prefix());
    let mut router = Router::default();
    router.insert(Mounted {
        entry: Arc::new(entry),
        backend: Arc::new(NoBackend),
        view: cubbyhole.clone(),
    });
    let revoker = Revoker::new(tokens.clone(), Arc::new(RwLock::new(router)));
    Fixture {
        backend: TokenBackend::new(tokens.clone(), revoker, SystemTtls::default()),
        view: StorageView::new(barrier, STORAGE_PREFIX),
        tokens,
        cubbyhole,
    }
}

fn caller_with(entry: TokenEntry, token: &str, policy: &str) -> Caller {
    let policy = Policy::parse("p", policy).unwrap();
    Caller {
        token: token.to_owned(),
        entry: std::sync::Arc::new(entry),
        acl: Acl::new(&[policy]),
    }
}

impl Fixture {
    async fn root(&self) -> Caller {
        let (token, entry) = self.tokens.create(TokenEntry::root(), None).await.unwrap();
        caller_with(
            entry,
            &token,
            r#"path "*" { capabilities = ["sudo", "update"] }"#,
        )
    }

    async fn call(
        &self,
        caller: Option<&Caller>,
        operation: Operation,
        path: &str,
        body: Value,
    ) -> Result<Response> {
        let data: Data = bunker_sdk::data_of(body);
        let options = Map::new();
        let req = BackendRequest {
            operation,
            path,
            data: &data,
            storage: &self.view,
            mount_point: "auth/token/",
            token_namespace: "",
            mount_options: &options,
            default_lease_ttl_secs: 0,
            remote_addr: None,
            caller,
            wrap_ttl: None,
        };
        if operation == Operation::Create || operation == Operation::Update {
            if let Some(exists) = self.backend.exists(&req).await? {
                let expected = if exists {
                    Operation::Update
                } else {
                    Operation::Create
                };
                assert_eq!(operation, expected, "existence check of {path}");
            }
        }
        self.backend.handle(req).await
    }

    async fn ok(&self, caller: &Caller, operation: Operation, path: &str, body: Value) -> Response {
        self.call(Some(caller), operation, path, body)
            .await
            .unwrap()
    }

    async fn err(
        &self,
        caller: &Caller,
        operation: Operation,
        path: &str,
        body: Value,
    ) -> LogicalError {
        self.call(Some(caller), operation, path, body)
            .await
            .unwrap_err()
    }

    /// A token created by `caller` at `auth/token/create`, and its entry.
    async fn child_of(&self, caller: &Caller, body: Value) -> (String, TokenEntry) {
        let resp = self.ok(caller, Operation::Update, "create", body).await;
        let token = resp.auth.unwrap().client_token;
        let entry = self.tokens.lookup(&token).await.unwrap().unwrap();
        (token, entry)
    }
}

#[tokio::test]
async fn every_path_needs_a_caller() {
    let f = fixture().await;
    let err = f
        .call(None, Operation::Read, "lookup-self", json!({}))
        .await
        .unwrap_err();
    assert!(matches!(err, LogicalError::PermissionDenied), "{err:?}");
}

#[tokio::test]
async fn created_tokens_are_looked_up_renewed_and_revoked_with_their_children() {
    use Operation::Update;
    let f = fixture().await;
    let root = f.root().await;
    let parent_body = json!({"policies": ["default"], "ttl": "1h"});
    let (parent, parent_entry) = f.child_of(&root, parent_body).await;
    let parent_caller = caller_with(parent_entry.clone(), &parent, "");
    let (child, child_entry) = f.child_of(&parent_caller, json!({})).await;
    assert_eq!(child_entry.parent_hash, parent_entry.id_hash);

    let looked = f.ok(&root, Update, "lookup", json!({"token": child})).await;
    let data = looked.data.unwrap();
    assert_eq!(data["accessor"], json!(child_entry.accessor));
    assert_eq!(data["policies"], json!(["default"]));

    let renew = json!({"increment": "30m"});
    let renewed = f.ok(&parent_caller, Update, "renew-self", renew).await;
    assert_eq!(renewed.auth.unwrap().lease_duration, 1800);

    // The child's cubbyhole goes with it when its parent is revoked.
    let child_cubby = format!("{}/secret", child_entry.cubbyhole_namespace());
    f.cubbyhole.put(&child_cubby, b"x").await.unwrap();
    f.ok(&root, Update, "revoke", json!({"token": parent}))
        .await;
    assert!(f.tokens.lookup(&parent).await.unwrap().is_none());
    assert!(f.tokens.lookup(&child).await.unwrap().is_none());
    assert!(f.cubbyhole.get(&child_cubby).await.unwrap().is_none());

    // Vault: an unknown token is a 403 "bad token".
    let err = f
        .err(&root, Update, "lookup", json!({"token": child}))
        .await;
    assert!(
        matches!(err, LogicalError::Forbidden(ref m) if m == "bad token"),
        "{err:?}"
    );
}

#[tokio::test]
async fn revoke_orphan_keeps_the_children_as_orphans() {
    let f = fixture().await;
    let root = f.root().await;
    let (parent, parent_entry) = f.child_of(&root, json!({})).await;
    let parent_caller = caller_with(parent_entry, &parent, "");
    let (child, _) = f.child_of(&parent_caller, json!({})).await;
    let body = json!({"token": parent});
    f.ok(&root, Operation::Update, "revoke-orphan", body).await;
    assert!(f.tokens.lookup(&parent).await.unwrap().is_none());
    let orphan = f.tokens.lookup(&child).await.unwrap().unwrap();
    assert!(orphan.orphan && orphan.parent_hash.is_empty());
}

#[tokio::test]
async fn roles_are_created_then_updated_and_bound_the_tokens_made_from_them() {
    use Operation::{Create, Delete, List, Read, Update};
    let f = fixture().await;
    let root = f.root().await;
    let role = json!({"allowed_policies": ["app"], "orphan": true});
    f.ok(&root, Create, "roles/app", role).await;
    f.ok(&root, Update, "roles/app", json!({"token_ttl": "10m"}))
        .await;
    let read = f
        .ok(&root, Read, "roles/app", json!({}))
        .await
        .data
        .unwrap();
    assert_eq!(read["allowed_policies"], json!(["app"]));
    assert_eq!(read["token_ttl"], json!(600));
    let listed = f.ok(&root, List, "roles/", json!({})).await.data.unwrap();
    assert_eq!(listed["keys"], json!(["app"]));

    let app = json!({"policies": ["app"]});
    let made = f.ok(&root, Update, "create/app", app).await.auth.unwrap();
    assert!(made.orphan);
    assert_eq!(made.lease_duration, 600);
    let other = json!({"policies": ["other"]});
    let err = f.err(&root, Update, "create/app", other).await;
    assert!(matches!(err, LogicalError::InvalidRequest(_)), "{err:?}");

    f.ok(&root, Delete, "roles/app", json!({})).await;
    let err = f.err(&root, Read, "roles/app", json!({})).await;
    assert!(matches!(err, LogicalError::NotFound(_)), "{err:?}");
}

#[tokio::test]
async fn unknown_paths_are_named_with_their_mount() {
    let f = fixture().await;
    let root = f.root().await;
    let err = f.err(&root, Operation::Read, "nope", json!({})).await;
    let named = matches!(err, LogicalError::UnsupportedPath(ref p) if p == "auth/token/nope");
    assert!(named, "{err:?}");
    assert!(SPECIAL_PATHS.is_root("accessors/"));
    assert!(SPECIAL_PATHS.is_root("revoke-orphan"));
    assert!(!SPECIAL_PATHS.is_root("create"));
}
