//! Soft delete, undelete and destroy.

use bunker_sdk::Operation;
use serde_json::{json, Value};

use super::*;

async fn three_versions() -> Harness {
    let h = Harness::new();
    for v in 1..=3 {
        h.put("k", json!({"v": v})).await;
    }
    h
}

#[tokio::test]
async fn delete_latest_then_undelete() {
    let h = three_versions().await;
    h.advance_secs(7);
    assert!(h
        .ok(Operation::Delete, "data/k", json!({}))
        .await
        .is_empty());

    let (status, deleted) = raw(h.ok(Operation::Read, "data/k", json!({})).await);
    assert_eq!(status, 404);
    assert_eq!(
        deleted,
        json!({"data": {"data": null, "metadata": {
            "created_time": START_TIME,
            "custom_metadata": null,
            "deletion_time": "2023-11-14T22:13:27Z",
            "destroyed": false,
            "version": 3
        }}})
    );
    assert_eq!(
        h.get("k", 2).await["data"],
        json!({"v": 2}),
        "older versions stay readable"
    );
    assert_eq!(
        h.metadata("k").await["versions"]["3"]["deletion_time"],
        json!("2023-11-14T22:13:27Z")
    );

    // Deleting again keeps the first deletion time.
    h.advance_secs(1);
    h.ok(Operation::Delete, "data/k", json!({})).await;
    assert_eq!(
        h.metadata("k").await["versions"]["3"]["deletion_time"],
        json!("2023-11-14T22:13:27Z")
    );

    h.ok(Operation::Create, "undelete/k", json!({"versions": [3]}))
        .await;
    assert_eq!(h.get("k", 0).await["data"], json!({"v": 3}));
    assert_eq!(h.get("k", 0).await["metadata"]["deletion_time"], json!(""));
}

#[tokio::test]
async fn delete_and_undelete_listed_versions() {
    let h = three_versions().await;
    h.ok(
        Operation::Update,
        "delete/k",
        json!({"versions": [1, 2, 99]}),
    )
    .await;
    for v in [1, 2] {
        let (status, _) = raw(h.ok(Operation::Read, "data/k", json!({"version": v})).await);
        assert_eq!(status, 404);
    }
    assert_eq!(h.get("k", 3).await["data"], json!({"v": 3}));
    h.ok(Operation::Update, "undelete/k", json!({"versions": "1"}))
        .await;
    assert_eq!(h.get("k", 1).await["data"], json!({"v": 1}));
    let (status, _) = raw(h.ok(Operation::Read, "data/k", json!({"version": 2})).await);
    assert_eq!(status, 404);
}

#[tokio::test]
async fn destroy_removes_data_for_good() {
    let h = three_versions().await;
    h.ok(Operation::Update, "destroy/k", json!({"versions": [2]}))
        .await;
    assert!(
        !h.store.keys().contains(&"versions/k/2".to_string()),
        "data removed from storage"
    );

    let (status, destroyed) = raw(h.ok(Operation::Read, "data/k", json!({"version": 2})).await);
    assert_eq!(status, 404);
    assert_eq!(destroyed["data"]["data"], Value::Null);
    assert_eq!(destroyed["data"]["metadata"]["destroyed"], json!(true));
    assert_eq!(
        h.metadata("k").await["versions"]["2"]["destroyed"],
        json!(true)
    );

    // Undelete cannot bring back a destroyed version.
    h.ok(Operation::Update, "undelete/k", json!({"versions": [2]}))
        .await;
    let (status, _) = raw(h.ok(Operation::Read, "data/k", json!({"version": 2})).await);
    assert_eq!(status, 404);
    // Destroying a soft-deleted version works too.
    h.ok(Operation::Delete, "data/k", json!({})).await;
    h.ok(Operation::Update, "destroy/k", json!({"versions": [3]}))
        .await;
    assert_eq!(
        h.metadata("k").await["versions"]["3"]["destroyed"],
        json!(true)
    );
    assert_eq!(h.store.keys(), ["metadata/k", "versions/k/1"]);
}

#[tokio::test]
async fn version_actions_need_versions_and_tolerate_missing_keys() {
    let h = Harness::new();
    for action in ["delete", "undelete", "destroy"] {
        let path = format!("{action}/k");
        let none = h.req(Operation::Update, &path, json!({})).await;
        assert_eq!(invalid_request_message(none), "no version number provided");
        let empty = h
            .req(Operation::Update, &path, json!({"versions": []}))
            .await;
        assert_eq!(invalid_request_message(empty), "no version number provided");
        assert!(h
            .ok(Operation::Update, &path, json!({"versions": [1]}))
            .await
            .is_empty());
        let bad = h
            .req(Operation::Update, &path, json!({"versions": ["one"]}))
            .await;
        assert!(invalid_request_message(bad).contains("versions"));
        assert!(matches!(
            h.req(Operation::Read, &path, json!({})).await,
            Err(LogicalError::UnsupportedOperation)
        ));
        let no_key = h
            .req(
                Operation::Update,
                &format!("{action}/"),
                json!({"versions": [1]}),
            )
            .await;
        assert!(matches!(no_key, Err(LogicalError::InvalidRequest(_))));
    }
    assert!(h.store.keys().is_empty());
    assert!(h
        .ok(Operation::Delete, "data/never", json!({}))
        .await
        .is_empty());
}
