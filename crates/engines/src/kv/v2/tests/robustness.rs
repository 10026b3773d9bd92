//! Routing, existence checks, and odd input on every endpoint.

use bunker_sdk::{LogicalError, Operation};
use serde_json::{json, Value};

use super::*;

const ALL_OPERATIONS: [Operation; 6] = [
    Operation::Read,
    Operation::Create,
    Operation::Update,
    Operation::Delete,
    Operation::List,
    Operation::Patch,
];

#[tokio::test]
async fn unknown_paths_are_unsupported_path() {
    let h = Harness::new();
    for path in ["", "foo", "foo/bar", "config/x", "datax/k", "Data/k"] {
        for op in ALL_OPERATIONS {
            let result = h.req(op, path, json!({})).await;
            assert!(
                matches!(result, Err(LogicalError::UnsupportedPath(_))),
                "{op:?} {path:?}: {result:?}"
            );
        }
    }
    match h.req(Operation::Read, "foo", json!({})).await {
        Err(LogicalError::UnsupportedPath(p)) => assert_eq!(p, "secret/foo"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn wrong_operations_are_unsupported_operation() {
    let h = Harness::new();
    let cases = [
        (Operation::Patch, "config"),
        (Operation::Delete, "config"),
        (Operation::List, "config"),
        (Operation::Read, "delete/k"),
        (Operation::Patch, "undelete/k"),
        (Operation::List, "destroy/k"),
        (Operation::Update, "subkeys/k"),
        (Operation::List, "subkeys/"),
    ];
    for (op, path) in cases {
        let result = h.req(op, path, json!({"versions": [1], "data": {}})).await;
        assert!(
            matches!(result, Err(LogicalError::UnsupportedOperation)),
            "{op:?} {path}: {result:?}"
        );
    }
}

#[tokio::test]
async fn bad_secret_paths_are_invalid_requests() {
    let h = Harness::new();
    for key in ["", "k/", "../k", "a/../k", "a//b", "/k", ".", "a/."] {
        for endpoint in ["data", "metadata", "subkeys"] {
            for op in [
                Operation::Read,
                Operation::Create,
                Operation::Delete,
                Operation::Patch,
            ] {
                let path = format!("{endpoint}/{key}");
                let result = h.req(op, &path, json!({"data": {"a": 1}})).await;
                let fine = matches!(result, Err(LogicalError::InvalidRequest(_)))
                    || (endpoint == "subkeys"
                        && matches!(result, Err(LogicalError::UnsupportedOperation)));
                assert!(fine, "{op:?} {path:?}: {result:?}");
            }
        }
    }
    let bare = h
        .req(Operation::Create, "data", json!({"data": {"a": 1}}))
        .await;
    assert_eq!(invalid_request_message(bare), "missing secret path");
    assert!(h.store.keys().is_empty());
}

#[tokio::test]
async fn exists_reports_key_metadata() {
    let h = Harness::new();
    assert_eq!(h.exists("data/k").await, Some(false));
    assert_eq!(h.exists("metadata/k").await, Some(false));
    h.put("k", json!({"a": 1})).await;
    assert_eq!(h.exists("data/k").await, Some(true));
    assert_eq!(h.exists("metadata/k").await, Some(true));
    h.ok(Operation::Create, "metadata/only-meta", json!({}))
        .await;
    assert_eq!(h.exists("data/only-meta").await, Some(true));
    for other in [
        "config",
        "delete/k",
        "destroy/k",
        "data/",
        "data/../k",
        "nope/k",
        "",
    ] {
        assert_eq!(h.exists(other).await, None, "{other}");
    }
}

/// The existence check answers presence only: a metadata record that cannot be read counts
/// as present (the write then needs `update`), and the write itself still refuses it.
#[tokio::test]
async fn exists_does_not_read_the_metadata_record() {
    use crate::store::StoreDouble;
    let h = Harness::new();
    h.store
        .put(&super::super::model::metadata_key("bad"), b"not json")
        .await
        .unwrap();
    assert_eq!(h.exists("data/bad").await, Some(true));
    assert_eq!(h.exists("metadata/bad").await, Some(true));
    assert!(h
        .req(Operation::Update, "data/bad", json!({"data": {"a": 1}}))
        .await
        .is_err());
}

#[tokio::test]
async fn odd_bodies_never_panic() {
    let h = Harness::new();
    h.put("k", json!({"a": {"b": 1}})).await;
    let bodies = [
        json!({}),
        json!({"data": null, "options": null, "version": null, "versions": null}),
        json!({"data": {"x": 1}, "options": {"cas": -1}}),
        json!({"data": {"x": 1}, "options": {"cas": 1.5}}),
        json!({"data": {"x": 1}, "options": []}),
        json!({"data": [1, 2]}),
        json!({"version": -1}),
        json!({"version": 1e300}),
        json!({"version": "18446744073709551616"}),
        json!({"version": {"a": 1}}),
        json!({"versions": {"1": true}}),
        json!({"versions": [null]}),
        json!({"versions": ",,,"}),
        json!({"depth": "deep"}),
        json!({"max_versions": 1e30, "cas_required": {}, "delete_version_after": [], "custom_metadata": 5}),
        json!({"custom_metadata": {"a": [1]}}),
    ];
    let paths = [
        "config",
        "data/k",
        "data/new",
        "metadata/k",
        "delete/k",
        "undelete/k",
        "destroy/k",
        "subkeys/k",
        "metadata/",
        "data/",
    ];
    for path in paths {
        for op in ALL_OPERATIONS {
            for body in &bodies {
                // Any outcome but a panic is acceptable; internal errors would be a bug.
                let result = h.req(op, path, body.clone()).await;
                assert!(
                    !matches!(result, Err(LogicalError::Internal(_))),
                    "{op:?} {path} {body}: {result:?}"
                );
            }
        }
    }
}

#[tokio::test]
async fn huge_version_numbers_are_just_missing() {
    let h = Harness::new();
    h.put("k", json!({"a": 1})).await;
    let big = h
        .req(Operation::Read, "data/k", json!({"version": u64::MAX}))
        .await;
    assert!(is_empty_not_found(&big));
    h.ok(
        Operation::Update,
        "destroy/k",
        json!({"versions": [u64::MAX]}),
    )
    .await;
    assert_eq!(h.get("k", 0).await["data"], json!({"a": 1}));
    let _: Value = h.metadata("k").await;
}
