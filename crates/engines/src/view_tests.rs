//! End-to-end tests of the engines through `LogicalBackend` over a real `StorageView`: the
//! barrier on the in-memory physical backend, as the router will use them.

use std::sync::Arc;

use bunker_barrier::Barrier;
use bunker_sdk::{
    BackendFactory, BackendRequest, Data, LogicalBackend, LogicalError, Operation, Response,
    Result, StorageView,
};
use bunker_storage::{Backend, InmemBackend};
use serde_json::{json, Map, Value};

use crate::{cubbyhole_factory, destroy_cubbyhole, kv_factory};

async fn unsealed_barrier() -> (Arc<Barrier>, Arc<InmemBackend>) {
    let physical = Arc::new(InmemBackend::new());
    let barrier = Arc::new(Barrier::new(physical.clone()));
    let root_key = Barrier::generate_root_key();
    barrier.initialize(&root_key).await.unwrap();
    barrier.unseal(&root_key).await.unwrap();
    (barrier, physical)
}

use bunker_sdk::data_of as obj;

struct Mount {
    backend: Arc<dyn LogicalBackend>,
    view: StorageView,
    point: &'static str,
    options: Map<String, Value>,
}

impl Mount {
    fn new(
        factory: &dyn BackendFactory,
        barrier: &Arc<Barrier>,
        prefix: &str,
        point: &'static str,
        options: Value,
    ) -> Self {
        let options = obj(options);
        Mount {
            backend: factory.create(&options).unwrap(),
            view: StorageView::new(barrier.clone(), prefix),
            point,
            options,
        }
    }

    fn request<'a>(
        &'a self,
        op: Operation,
        path: &'a str,
        data: &'a Data,
        ns: &'a str,
    ) -> BackendRequest<'a> {
        BackendRequest {
            operation: op,
            path,
            data,
            storage: &self.view,
            mount_point: self.point,
            token_namespace: ns,
            mount_options: &self.options,
            default_lease_ttl_secs: 0,
            remote_addr: None,
            caller: None,
            wrap_ttl: None,
        }
    }

    async fn call(&self, op: Operation, path: &str, body: Value, ns: &str) -> Result<Response> {
        let data = obj(body);
        self.backend.handle(self.request(op, path, &data, ns)).await
    }

    async fn exists(&self, path: &str) -> Option<bool> {
        let data = Data::new();
        self.backend
            .exists(&self.request(Operation::Create, path, &data, ""))
            .await
            .unwrap()
    }
}

fn data_of(r: Response) -> Value {
    Value::Object(r.data.unwrap())
}

#[tokio::test]
async fn kv_v2_over_the_barrier() {
    let (barrier, physical) = unsealed_barrier().await;
    let kv = Mount::new(
        &kv_factory(),
        &barrier,
        "logical/kv2/",
        "secret/",
        json!({"version": "2"}),
    );
    kv.backend.initialize(&kv.view, &kv.options).await.unwrap();

    assert_eq!(kv.exists("data/app/db").await, Some(false));
    let written = data_of(
        kv.call(
            Operation::Create,
            "data/app/db",
            json!({"data": {"password": "hunter2"}}),
            "",
        )
        .await
        .unwrap(),
    );
    assert_eq!(written["version"], json!(1));
    assert_eq!(kv.exists("data/app/db").await, Some(true));
    kv.call(
        Operation::Update,
        "data/app/db",
        json!({"data": {"password": "hunter3"}, "options": {"cas": 1}}),
        "",
    )
    .await
    .unwrap();

    let read = data_of(
        kv.call(Operation::Read, "data/app/db", json!({"version": "1"}), "")
            .await
            .unwrap(),
    );
    assert_eq!(read["data"], json!({"password": "hunter2"}));
    let listed = data_of(
        kv.call(Operation::List, "metadata/", json!({}), "")
            .await
            .unwrap(),
    );
    assert_eq!(listed["keys"], json!(["app/"]));

    // Only ciphertext reaches the physical store, under the mount's prefix.
    let stored = physical
        .get("logical/kv2/versions/app/db/1")
        .await
        .unwrap()
        .unwrap();
    assert!(!stored.windows(7).any(|w| w == b"hunter2"));

    kv.call(Operation::Delete, "metadata/app/db", json!({}), "")
        .await
        .unwrap();
    assert!(matches!(
        kv.call(Operation::Read, "data/app/db", json!({}), "").await,
        Err(LogicalError::NotFound(_))
    ));
    assert!(physical
        .get("logical/kv2/versions/app/db/1")
        .await
        .unwrap()
        .is_none());
    assert!(physical
        .get("logical/kv2/versions/app/db/2")
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn kv_v1_mounts_are_isolated() {
    let (barrier, _physical) = unsealed_barrier().await;
    let one = Mount::new(&kv_factory(), &barrier, "logical/one/", "one/", json!({}));
    let two = Mount::new(
        &kv_factory(),
        &barrier,
        "logical/two/",
        "two/",
        json!({"version": 1}),
    );
    one.call(
        Operation::Create,
        "shared",
        json!({"ttl": "1h", "v": 1}),
        "",
    )
    .await
    .unwrap();
    let read = one
        .call(Operation::Read, "shared", json!({}), "")
        .await
        .unwrap();
    assert_eq!(read.lease_duration, 3600);
    assert!(
        matches!(two.call(Operation::Read, "shared", json!({}), "").await, Err(LogicalError::NotFound(m)) if m.is_empty())
    );
    assert_eq!(one.exists("shared").await, Some(true));
    assert_eq!(two.exists("shared").await, Some(false));
}

#[tokio::test]
async fn cubbyhole_over_the_barrier() {
    let (barrier, _physical) = unsealed_barrier().await;
    let cubby = Mount::new(
        &cubbyhole_factory(),
        &barrier,
        "logical/cubby/",
        "cubbyhole/",
        json!({}),
    );
    cubby
        .call(Operation::Create, "note", json!({"v": "a"}), "nsA")
        .await
        .unwrap();
    cubby
        .call(Operation::Create, "note", json!({"v": "b"}), "nsB")
        .await
        .unwrap();
    let read_a = data_of(
        cubby
            .call(Operation::Read, "note", json!({}), "nsA")
            .await
            .unwrap(),
    );
    assert_eq!(read_a["v"], json!("a"));

    destroy_cubbyhole(&cubby.view, "nsA").await.unwrap();
    assert!(matches!(
        cubby.call(Operation::Read, "note", json!({}), "nsA").await,
        Err(LogicalError::NotFound(_))
    ));
    let read_b = data_of(
        cubby
            .call(Operation::Read, "note", json!({}), "nsB")
            .await
            .unwrap(),
    );
    assert_eq!(read_b["v"], json!("b"));
    assert!(matches!(
        cubby.call(Operation::Read, "note", json!({}), "").await,
        Err(LogicalError::PermissionDenied)
    ));
}

#[tokio::test]
async fn sealed_barrier_is_an_error_not_a_panic() {
    let (barrier, _physical) = unsealed_barrier().await;
    let kv = Mount::new(
        &kv_factory(),
        &barrier,
        "logical/kv2/",
        "secret/",
        json!({"version": 2}),
    );
    barrier.seal();
    let result = kv
        .call(Operation::Create, "data/k", json!({"data": {"a": 1}}), "")
        .await;
    assert!(matches!(result, Err(LogicalError::Sealed)), "{result:?}");
    assert!(matches!(
        kv.call(Operation::Read, "data/k", json!({}), "").await,
        Err(LogicalError::Sealed)
    ));
}
