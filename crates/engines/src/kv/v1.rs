//! KV version 1: one unversioned JSON object per path.
//!
//! Secrets live directly at their path in the mount's storage view, matching Vault's v1
//! layout. Read of a missing path is a 404 with no message (Vault answers `{"errors":[]}`),
//! LIST of an empty folder likewise. A stored `ttl` field is reported as the lease duration.

use async_trait::async_trait;
use bunker_sdk::{BackendRequest, LogicalBackend, Operation, Response, Result};

use crate::flat::{self, FlatRules};
use crate::store::Call;

const RULES: FlatRules = FlatRules {
    lease_from_ttl: true,
    allow_empty_write: true,
};

/// The KV v1 engine. Stateless: all state is in the mount's storage.
#[derive(Debug, Default)]
pub struct KvV1;

impl KvV1 {
    pub fn new() -> Self {
        KvV1
    }

    pub(crate) async fn handle_call(&self, call: &Call<'_>) -> Result<Response> {
        flat::handle(call, "", RULES).await
    }

    pub(crate) async fn exists_call(&self, call: &Call<'_>) -> Result<Option<bool>> {
        flat::exists(call, "").await
    }
}

#[async_trait]
impl LogicalBackend for KvV1 {
    async fn handle(&self, req: BackendRequest<'_>) -> Result<Response> {
        let mut resp = self.handle_call(&Call::from_request(&req)).await?;
        // Without a stored `ttl`, Vault reports the mount's default lease as the refresh
        // interval of a kv v1 read.
        if req.operation == Operation::Read && resp.data.is_some() && resp.lease_duration == 0 {
            resp.lease_duration = req.default_lease_ttl_secs;
        }
        Ok(resp)
    }

    fn help(&self) -> bunker_sdk::BackendHelp {
        crate::help::KV_V1
    }

    async fn exists(&self, req: &BackendRequest<'_>) -> Result<Option<bool>> {
        self.exists_call(&Call::from_request(req)).await
    }
}

#[cfg(test)]
mod tests {
    use bunker_sdk::{Data, LogicalError, Operation};
    use serde_json::{json, Value};

    use super::*;
    use crate::store::mem::MemStore;

    use bunker_sdk::data_of as obj;

    async fn run(store: &MemStore, op: Operation, path: &str, body: Value) -> Result<Response> {
        let data = obj(body);
        let call = Call {
            operation: op,
            path,
            data: &data,
            store: crate::store::Store::Double(store),
            mount_point: "secret/",
            token_namespace: "",
        };
        KvV1::new().handle_call(&call).await
    }

    async fn exists(store: &MemStore, path: &str) -> Option<bool> {
        let data = Data::new();
        let call = Call {
            operation: Operation::Create,
            path,
            data: &data,
            store: crate::store::Store::Double(store),
            mount_point: "secret/",
            token_namespace: "",
        };
        KvV1::new().exists_call(&call).await.unwrap()
    }

    #[tokio::test]
    async fn write_read_delete_round_trip() {
        let store = MemStore::new();
        let written = run(
            &store,
            Operation::Create,
            "app/db",
            json!({"user": "u", "n": 3, "nested": {"a": [1, 2]}}),
        )
        .await
        .unwrap();
        assert!(written.is_empty(), "a write answers 204");
        let read = run(&store, Operation::Read, "app/db", json!({}))
            .await
            .unwrap();
        assert_eq!(
            Value::Object(read.data.unwrap()),
            json!({"user": "u", "n": 3, "nested": {"a": [1, 2]}})
        );
        assert_eq!(read.lease_duration, 0);

        // Overwrite replaces the whole object.
        run(&store, Operation::Update, "app/db", json!({"only": "this"}))
            .await
            .unwrap();
        let read = run(&store, Operation::Read, "app/db", json!({}))
            .await
            .unwrap();
        assert_eq!(Value::Object(read.data.unwrap()), json!({"only": "this"}));

        run(&store, Operation::Delete, "app/db", json!({}))
            .await
            .unwrap();
        let missing = run(&store, Operation::Read, "app/db", json!({})).await;
        assert!(matches!(missing, Err(LogicalError::NotFound(ref m)) if m.is_empty()));
    }

    #[tokio::test]
    async fn missing_read_is_empty_not_found_and_delete_is_idempotent() {
        let store = MemStore::new();
        assert!(
            matches!(run(&store, Operation::Read, "nope", json!({})).await, Err(LogicalError::NotFound(m)) if m.is_empty())
        );
        assert!(run(&store, Operation::Delete, "nope", json!({}))
            .await
            .unwrap()
            .is_empty());
    }

    #[tokio::test]
    async fn empty_write_is_allowed() {
        let store = MemStore::new();
        run(&store, Operation::Create, "empty", json!({}))
            .await
            .unwrap();
        let read = run(&store, Operation::Read, "empty", json!({}))
            .await
            .unwrap();
        assert_eq!(read.data.unwrap().len(), 0);
    }

    #[tokio::test]
    async fn ttl_becomes_lease_duration() {
        let store = MemStore::new();
        for (ttl, want) in [
            (json!("1h"), 3600u64),
            (json!("30m"), 1800),
            (json!("90s"), 90),
            (json!(45), 45),
            (json!("120"), 120),
        ] {
            run(&store, Operation::Create, "t", json!({"ttl": ttl, "v": 1}))
                .await
                .unwrap();
            let read = run(&store, Operation::Read, "t", json!({})).await.unwrap();
            assert_eq!(read.lease_duration, want);
            assert_eq!(
                read.data.unwrap().get("ttl"),
                Some(&ttl),
                "ttl stays in the data"
            );
        }
        // An unparsable TTL gives no lease; `lease` is the older name of `ttl`.
        for (body, want) in [(json!({"ttl": "soon"}), 0), (json!({"lease": "2m"}), 120)] {
            run(&store, Operation::Create, "t", body.clone())
                .await
                .unwrap();
            let read = run(&store, Operation::Read, "t", json!({})).await.unwrap();
            assert_eq!(read.lease_duration, want, "{body}");
        }
    }

    #[tokio::test]
    async fn list_shows_keys_and_folders() {
        let store = MemStore::new();
        for path in ["a", "b/c", "b/d/e", "b/x"] {
            run(&store, Operation::Create, path, json!({"k": "v"}))
                .await
                .unwrap();
        }
        let keys = |r: Response| r.data.unwrap().get("keys").cloned().unwrap();
        assert_eq!(
            keys(run(&store, Operation::List, "", json!({})).await.unwrap()),
            json!(["a", "b/"])
        );
        assert_eq!(
            keys(run(&store, Operation::List, "b/", json!({})).await.unwrap()),
            json!(["c", "d/", "x"])
        );
        assert_eq!(
            keys(run(&store, Operation::List, "b", json!({})).await.unwrap()),
            json!(["c", "d/", "x"])
        );
        assert!(matches!(
            run(&store, Operation::List, "zzz/", json!({})).await,
            Err(LogicalError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn bad_paths_and_operations() {
        let store = MemStore::new();
        for path in ["", "a/", "../x", "a/../b", "a//b"] {
            assert!(
                matches!(
                    run(&store, Operation::Create, path, json!({"a": 1})).await,
                    Err(LogicalError::InvalidRequest(_))
                ),
                "{path:?}"
            );
            assert!(
                matches!(
                    run(&store, Operation::Read, path, json!({})).await,
                    Err(LogicalError::InvalidRequest(_))
                ),
                "{path:?}"
            );
        }
        assert!(matches!(
            run(&store, Operation::Patch, "a", json!({"a": 1})).await,
            Err(LogicalError::UnsupportedOperation)
        ));
        assert!(store.keys().is_empty(), "nothing was written");
    }

    #[tokio::test]
    async fn exists_tracks_the_key() {
        let store = MemStore::new();
        assert_eq!(exists(&store, "k").await, Some(false));
        run(&store, Operation::Create, "k", json!({"a": 1}))
            .await
            .unwrap();
        assert_eq!(exists(&store, "k").await, Some(true));
        assert_eq!(exists(&store, "").await, None);
    }

    #[tokio::test]
    async fn storage_failure_is_an_error_not_a_panic() {
        let store = MemStore::new();
        store.fail_writes(true);
        assert!(matches!(
            run(&store, Operation::Create, "k", json!({"a": 1})).await,
            Err(LogicalError::Internal(_))
        ));
    }
}
