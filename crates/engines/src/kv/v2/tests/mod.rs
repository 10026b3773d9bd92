//! Unit tests of KV v2 over the in-memory store, with a clock the tests move by hand.

mod data;
mod metadata;
mod robustness;
mod versions;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use bunker_sdk::{Data, LogicalError, Operation, Response, Result};
use serde_json::{json, Value};

use super::KvV2;
use crate::store::mem::MemStore;
use crate::store::Call;

/// 2023-11-14T22:13:20Z
pub(super) const START_NS: i64 = 1_700_000_000_000_000_000;
pub(super) const START_TIME: &str = "2023-11-14T22:13:20Z";

pub(super) struct Harness {
    pub kv: KvV2,
    pub store: MemStore,
    now: Arc<AtomicI64>,
}

pub(super) fn obj(v: Value) -> Data {
    match v {
        Value::Object(m) => m,
        other => panic!("test body must be an object, got {other}"),
    }
}

/// The data of a normal response, as a JSON value.
pub(super) fn body(response: Response) -> Value {
    assert!(
        response.raw.is_none(),
        "unexpected raw response {:?}",
        response.raw
    );
    Value::Object(response.data.expect("response has data"))
}

/// Status and body of a raw response.
pub(super) fn raw(response: Response) -> (u16, Value) {
    let raw = response.raw.expect("response is raw");
    (raw.status, raw.body)
}

pub(super) fn is_empty_not_found<T: std::fmt::Debug>(result: &Result<T>) -> bool {
    matches!(result, Err(LogicalError::NotFound(m)) if m.is_empty())
}

pub(super) fn invalid_request_message<T: std::fmt::Debug>(result: Result<T>) -> String {
    match result {
        Err(LogicalError::InvalidRequest(m)) => m,
        other => panic!("expected InvalidRequest, got {other:?}"),
    }
}

impl Harness {
    pub fn new() -> Self {
        let now = Arc::new(AtomicI64::new(START_NS));
        let clock_now = now.clone();
        Harness {
            kv: KvV2::with_clock(Arc::new(move || clock_now.load(Ordering::SeqCst))),
            store: MemStore::new(),
            now,
        }
    }

    pub fn advance_secs(&self, secs: i64) {
        self.now.fetch_add(secs * 1_000_000_000, Ordering::SeqCst);
    }

    pub async fn req(&self, operation: Operation, path: &str, body: Value) -> Result<Response> {
        let data = obj(body);
        let call = Call {
            operation,
            path,
            data: &data,
            store: crate::store::Store::Double(&self.store),
            mount_point: "secret/",
            token_namespace: "",
        };
        self.kv.handle_call(&call).await
    }

    pub async fn ok(&self, operation: Operation, path: &str, body: Value) -> Response {
        match self.req(operation, path, body).await {
            Ok(r) => r,
            Err(e) => panic!("{operation:?} {path} failed: {e:?}"),
        }
    }

    /// Write a new version of `key`; returns the write response body.
    pub async fn put(&self, key: &str, data: Value) -> Value {
        body(
            self.ok(
                Operation::Create,
                &format!("data/{key}"),
                json!({ "data": data }),
            )
            .await,
        )
    }

    /// Read a version (0 = latest) of `key` that must be readable.
    pub async fn get(&self, key: &str, version: u64) -> Value {
        body(
            self.ok(
                Operation::Read,
                &format!("data/{key}"),
                json!({ "version": version }),
            )
            .await,
        )
    }

    pub async fn metadata(&self, key: &str) -> Value {
        body(
            self.ok(Operation::Read, &format!("metadata/{key}"), json!({}))
                .await,
        )
    }

    pub async fn list(&self, path: &str) -> Result<Value> {
        let response = self.req(Operation::List, path, json!({})).await?;
        Ok(body(response)["keys"].clone())
    }

    pub async fn exists(&self, path: &str) -> Option<bool> {
        let data = Data::new();
        let call = Call {
            operation: Operation::Create,
            path,
            data: &data,
            store: crate::store::Store::Double(&self.store),
            mount_point: "secret/",
            token_namespace: "",
        };
        self.kv.exists_call(&call).await.unwrap()
    }
}
