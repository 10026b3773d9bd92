//! Auth backends over a real barrier-backed storage view, as the router mounts them.

use std::sync::Arc;

use bunker_barrier::Barrier;
use bunker_sdk::{BackendRequest, LogicalBackend, Operation, Response, Result, StorageView};
use bunker_storage::InmemBackend;
use serde_json::{Map, Value};

pub(crate) async fn view(prefix: &str) -> StorageView {
    let barrier = Arc::new(Barrier::new(Arc::new(InmemBackend::new())));
    let root_key = Barrier::generate_root_key();
    barrier.initialize(&root_key).await.unwrap();
    barrier.unseal(&root_key).await.unwrap();
    StorageView::new(barrier, prefix)
}

pub(crate) use bunker_sdk::data_of as obj;

/// One request to `backend` at `path` from `remote_addr`.
pub(crate) async fn call(
    backend: &dyn LogicalBackend,
    storage: &StorageView,
    op: Operation,
    path: &str,
    body: Value,
    remote_addr: Option<&str>,
) -> Result<Response> {
    let data = obj(body);
    let options = Map::new();
    backend
        .handle(BackendRequest {
            operation: op,
            path,
            data: &data,
            storage,
            mount_point: "auth/test/",
            token_namespace: "",
            mount_options: &options,
            default_lease_ttl_secs: 0,
            remote_addr,
            caller: None,
            wrap_ttl: None,
        })
        .await
}
