//! Cubbyhole: a private, unversioned KV store per token.
//!
//! Every token gets its own namespace: a secret at `path` is stored at
//! `<token_namespace>/<path>` in the mount's view, and every operation is confined to the
//! caller's namespace, so tokens cannot see each other's data even by listing the root. A
//! request without a namespace (no token) is refused. The namespace is an opaque id chosen by
//! the core; one containing `/` could alias another namespace, so it is refused as a server
//! fault. When a token is revoked, the core calls [`destroy_cubbyhole`] to wipe its data.
//!
//! As in Vault, a write must carry at least one field and there is no `ttl` handling.

use std::sync::Arc;

use async_trait::async_trait;
use bunker_sdk::{
    BackendFactory, BackendRequest, LogicalBackend, LogicalError, Response, Result, StorageView,
};
use serde_json::{Map, Value};

use crate::flat::{self, FlatRules};
use crate::store::{Call, Store};

const RULES: FlatRules = FlatRules {
    lease_from_ttl: false,
    allow_empty_write: false,
};

/// Most keys removed by one [`destroy_cubbyhole`] call; a namespace bigger than this is
/// reported as an error rather than walked forever.
const MAX_DESTROY_KEYS: usize = 100_000;

/// The cubbyhole engine. Stateless: all state is in the mount's storage.
#[derive(Debug, Default)]
pub struct Cubbyhole;

impl Cubbyhole {
    pub fn new() -> Self {
        Cubbyhole
    }

    pub(crate) async fn handle_call(&self, call: &Call<'_>) -> Result<Response> {
        let prefix = namespace_prefix(call.token_namespace)?;
        flat::handle(call, &prefix, RULES).await
    }

    pub(crate) async fn exists_call(&self, call: &Call<'_>) -> Result<Option<bool>> {
        let prefix = namespace_prefix(call.token_namespace)?;
        flat::exists(call, &prefix).await
    }
}

#[async_trait]
impl LogicalBackend for Cubbyhole {
    async fn handle(&self, req: BackendRequest<'_>) -> Result<Response> {
        self.handle_call(&Call::from_request(&req)).await
    }

    fn help(&self) -> bunker_sdk::BackendHelp {
        crate::help::CUBBYHOLE
    }

    async fn exists(&self, req: &BackendRequest<'_>) -> Result<Option<bool>> {
        self.exists_call(&Call::from_request(req)).await
    }
}

/// Factory for `cubbyhole` mounts. Cubbyhole takes no options.
pub fn cubbyhole_factory() -> impl BackendFactory {
    |_options: &Map<String, Value>| -> Result<Arc<dyn LogicalBackend>> {
        Ok(Arc::new(Cubbyhole::new()))
    }
}

/// Delete everything a token stored in its cubbyhole. `storage` is the cubbyhole mount's view.
/// Call when the token is revoked. Deleting an empty namespace is a no-op.
pub async fn destroy_cubbyhole(storage: &StorageView, token_namespace: &str) -> Result<()> {
    destroy_namespace(Store::View(storage), token_namespace).await
}

pub(crate) async fn destroy_namespace(store: Store<'_>, token_namespace: &str) -> Result<()> {
    let prefix = namespace_prefix(token_namespace)?;
    let mut folders = vec![prefix];
    let mut removed = 0usize;
    while let Some(folder) = folders.pop() {
        for child in store.list(&folder).await? {
            let key = format!("{folder}{child}");
            if child.ends_with('/') {
                folders.push(key);
            } else {
                store.delete(&key).await?;
            }
            removed = removed.saturating_add(1);
            if removed > MAX_DESTROY_KEYS {
                return Err(LogicalError::Internal(format!(
                    "cubbyhole of namespace {token_namespace:?} has more than {MAX_DESTROY_KEYS} entries; destroy stopped"
                )));
            }
        }
    }
    Ok(())
}

/// The storage prefix of a token's cubbyhole.
fn namespace_prefix(token_namespace: &str) -> Result<String> {
    if token_namespace.is_empty() {
        return Err(LogicalError::PermissionDenied);
    }
    if token_namespace.contains('/') || token_namespace == "." || token_namespace == ".." {
        return Err(LogicalError::Internal(
            "token namespace for cubbyhole is not a single path segment".into(),
        ));
    }
    Ok(format!("{token_namespace}/"))
}

#[cfg(test)]
mod tests {
    use bunker_sdk::{Data, Operation};
    use serde_json::json;

    use super::*;
    use crate::store::mem::MemStore;

    use bunker_sdk::data_of as obj;

    async fn run(
        store: &MemStore,
        ns: &str,
        op: Operation,
        path: &str,
        body: Value,
    ) -> Result<Response> {
        let data = obj(body);
        let call = Call {
            operation: op,
            path,
            data: &data,
            store: Store::Double(store),
            mount_point: "cubbyhole/",
            token_namespace: ns,
        };
        Cubbyhole::new().handle_call(&call).await
    }

    /// A write that must succeed.
    async fn write(store: &MemStore, ns: &str, path: &str, body: Value) {
        run(store, ns, Operation::Create, path, body)
            .await
            .unwrap_or_else(|e| panic!("writing {path} in {ns}: {e:?}"));
    }

    #[tokio::test]
    async fn namespaces_are_isolated() {
        let store = MemStore::new();
        write(&store, "tokA", "secret", json!({"v": "a"})).await;
        write(&store, "tokB", "secret", json!({"v": "b"})).await;
        write(&store, "tokA", "dir/only-a", json!({"v": 1})).await;

        let read_a = run(&store, "tokA", Operation::Read, "secret", json!({}))
            .await
            .unwrap();
        assert_eq!(read_a.data.unwrap().get("v"), Some(&json!("a")));
        let read_b = run(&store, "tokB", Operation::Read, "secret", json!({}))
            .await
            .unwrap();
        assert_eq!(read_b.data.unwrap().get("v"), Some(&json!("b")));

        assert!(matches!(
            run(&store, "tokB", Operation::Read, "dir/only-a", json!({})).await,
            Err(LogicalError::NotFound(_))
        ));
        let list_b = run(&store, "tokB", Operation::List, "", json!({}))
            .await
            .unwrap();
        assert_eq!(list_b.data.unwrap().get("keys"), Some(&json!(["secret"])));
        let list_a = run(&store, "tokA", Operation::List, "", json!({}))
            .await
            .unwrap();
        assert_eq!(
            list_a.data.unwrap().get("keys"),
            Some(&json!(["dir/", "secret"]))
        );
        assert!(matches!(
            run(&store, "tokC", Operation::List, "", json!({})).await,
            Err(LogicalError::NotFound(_))
        ));

        // Deleting in one namespace leaves the other alone.
        run(&store, "tokB", Operation::Delete, "secret", json!({}))
            .await
            .unwrap();
        assert!(run(&store, "tokA", Operation::Read, "secret", json!({}))
            .await
            .is_ok());
    }

    #[tokio::test]
    async fn escaping_the_namespace_is_refused() {
        let store = MemStore::new();
        write(&store, "tokA", "secret", json!({"v": "a"})).await;
        for path in ["../tokA/secret", "x/../../tokA/secret", "/tokA/secret"] {
            assert!(
                matches!(
                    run(&store, "tokB", Operation::Read, path, json!({})).await,
                    Err(LogicalError::InvalidRequest(_))
                ),
                "{path}"
            );
        }
        assert!(matches!(
            run(&store, "tok/A", Operation::Read, "secret", json!({})).await,
            Err(LogicalError::Internal(_))
        ));
    }

    #[tokio::test]
    async fn no_token_is_permission_denied() {
        let store = MemStore::new();
        for op in [
            Operation::Read,
            Operation::Create,
            Operation::Delete,
            Operation::List,
        ] {
            assert!(matches!(
                run(&store, "", op, "x", json!({"a": 1})).await,
                Err(LogicalError::PermissionDenied)
            ));
        }
        let data = Data::new();
        let call = Call {
            operation: Operation::Create,
            path: "x",
            data: &data,
            store: Store::Double(&store),
            mount_point: "cubbyhole/",
            token_namespace: "",
        };
        assert!(matches!(
            Cubbyhole::new().exists_call(&call).await,
            Err(LogicalError::PermissionDenied)
        ));
    }

    #[tokio::test]
    async fn empty_write_is_rejected_and_no_ttl_lease() {
        let store = MemStore::new();
        assert!(matches!(
            run(&store, "t", Operation::Create, "x", json!({})).await,
            Err(LogicalError::InvalidRequest(_))
        ));
        run(&store, "t", Operation::Create, "x", json!({"ttl": "1h"}))
            .await
            .unwrap();
        assert_eq!(
            run(&store, "t", Operation::Read, "x", json!({}))
                .await
                .unwrap()
                .lease_duration,
            0
        );
        assert!(matches!(
            run(&store, "t", Operation::Patch, "x", json!({"a": 1})).await,
            Err(LogicalError::UnsupportedOperation)
        ));
    }

    #[tokio::test]
    async fn destroy_wipes_only_that_namespace() {
        let store = MemStore::new();
        for path in ["a", "b/c", "b/d/e"] {
            run(&store, "gone", Operation::Create, path, json!({"v": 1}))
                .await
                .unwrap();
        }
        run(&store, "kept", Operation::Create, "a", json!({"v": 1}))
            .await
            .unwrap();
        run(&store, "gone2", Operation::Create, "a", json!({"v": 1}))
            .await
            .unwrap();
        destroy_namespace(Store::Double(&store), "gone")
            .await
            .unwrap();
        assert_eq!(
            store.keys(),
            vec!["gone2/a".to_string(), "kept/a".to_string()]
        );
        destroy_namespace(Store::Double(&store), "never-used")
            .await
            .unwrap();
        assert!(matches!(
            destroy_namespace(Store::Double(&store), "").await,
            Err(LogicalError::PermissionDenied)
        ));
    }

    #[test]
    fn factory_builds_a_backend() {
        assert!(cubbyhole_factory().create(&Map::new()).is_ok());
    }
}
