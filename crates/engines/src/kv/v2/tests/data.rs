//! `data/`, cas, patch, max_versions trimming and delete_version_after.

use bunker_sdk::{LogicalError, Operation};
use serde_json::{json, Value};

use super::*;

#[tokio::test]
async fn write_returns_version_metadata() {
    let h = Harness::new();
    let written = h.put("app/db", json!({"user": "admin"})).await;
    assert_eq!(
        written,
        json!({
            "created_time": START_TIME,
            "custom_metadata": null,
            "deletion_time": "",
            "destroyed": false,
            "version": 1
        })
    );
    h.advance_secs(1);
    assert_eq!(
        h.put("app/db", json!({"user": "root"})).await["version"],
        json!(2)
    );
}

#[tokio::test]
async fn read_latest_and_specific_versions() {
    let h = Harness::new();
    h.put("k", json!({"v": 1})).await;
    h.advance_secs(5);
    h.put("k", json!({"v": 2, "nested": {"a": [1, 2]}})).await;

    let latest = h.get("k", 0).await;
    assert_eq!(latest["data"], json!({"v": 2, "nested": {"a": [1, 2]}}));
    assert_eq!(latest["metadata"]["version"], json!(2));
    assert_eq!(
        latest["metadata"]["created_time"],
        json!("2023-11-14T22:13:25Z")
    );
    assert_eq!(latest["metadata"]["deletion_time"], json!(""));
    assert_eq!(latest["metadata"]["destroyed"], json!(false));
    assert_eq!(latest["metadata"]["custom_metadata"], Value::Null);

    assert_eq!(h.get("k", 1).await["data"], json!({"v": 1}));
    // `version` may come as a string (query parameter) and absent means latest.
    let by_string = body(
        h.ok(Operation::Read, "data/k", json!({"version": "1"}))
            .await,
    );
    assert_eq!(by_string["data"], json!({"v": 1}));
    let absent = body(h.ok(Operation::Read, "data/k", json!({})).await);
    assert_eq!(absent["metadata"]["version"], json!(2));

    assert!(is_empty_not_found(
        &h.req(Operation::Read, "data/k", json!({"version": 3}))
            .await
    ));
    assert!(is_empty_not_found(
        &h.req(Operation::Read, "data/missing", json!({})).await
    ));
    let bad = h
        .req(Operation::Read, "data/k", json!({"version": "latest"}))
        .await;
    assert!(matches!(bad, Err(LogicalError::InvalidRequest(_))));
}

#[tokio::test]
async fn write_needs_a_data_object() {
    let h = Harness::new();
    let missing = h
        .req(Operation::Create, "data/k", json!({"options": {}}))
        .await;
    assert_eq!(invalid_request_message(missing), "no data provided");
    let null = h
        .req(Operation::Create, "data/k", json!({"data": null}))
        .await;
    assert_eq!(invalid_request_message(null), "no data provided");
    for bad in [json!("text"), json!([1]), json!(3)] {
        let result = h
            .req(Operation::Update, "data/k", json!({"data": bad}))
            .await;
        assert!(matches!(result, Err(LogicalError::InvalidRequest(_))));
    }
    assert!(h.store.keys().is_empty(), "a refused write stores nothing");

    // An empty object is a valid secret.
    h.put("k", json!({})).await;
    assert_eq!(h.get("k", 0).await["data"], json!({}));
}

#[tokio::test]
async fn check_and_set() {
    let h = Harness::new();
    let write = |cas: Value| json!({"data": {"x": 1}, "options": {"cas": cas}});

    // cas 0: only if the key does not exist yet.
    h.ok(Operation::Create, "data/k", write(json!(0))).await;
    let again = h.req(Operation::Update, "data/k", write(json!(0))).await;
    assert_eq!(
        invalid_request_message(again),
        "check-and-set parameter did not match the current version"
    );

    h.ok(Operation::Update, "data/k", write(json!(1))).await;
    h.ok(Operation::Update, "data/k", write(json!("2"))).await;
    let stale = h.req(Operation::Update, "data/k", write(json!(2))).await;
    assert!(invalid_request_message(stale).contains("did not match"));
    let ahead = h.req(Operation::Update, "data/k", write(json!(9))).await;
    assert!(invalid_request_message(ahead).contains("did not match"));
    assert_eq!(h.metadata("k").await["current_version"], json!(3));

    let bad_cas = h.req(Operation::Update, "data/k", write(json!("x"))).await;
    assert!(matches!(bad_cas, Err(LogicalError::InvalidRequest(_))));
    let bad_options = h
        .req(
            Operation::Update,
            "data/k",
            json!({"data": {}, "options": "cas=1"}),
        )
        .await;
    assert!(matches!(bad_options, Err(LogicalError::InvalidRequest(_))));
}

#[tokio::test]
async fn cas_required_by_mount_config() {
    let h = Harness::new();
    h.ok(Operation::Update, "config", json!({"cas_required": true}))
        .await;
    let without = h
        .req(Operation::Create, "data/k", json!({"data": {"a": 1}}))
        .await;
    assert_eq!(
        invalid_request_message(without),
        "check-and-set parameter required for this call"
    );
    h.ok(
        Operation::Create,
        "data/k",
        json!({"data": {"a": 1}, "options": {"cas": 0}}),
    )
    .await;
    let patch_without = h
        .req(Operation::Patch, "data/k", json!({"data": {"a": 2}}))
        .await;
    assert!(invalid_request_message(patch_without).contains("required"));
    h.ok(
        Operation::Patch,
        "data/k",
        json!({"data": {"a": 2}, "options": {"cas": 1}}),
    )
    .await;
}

#[tokio::test]
async fn cas_required_by_key_metadata_only_affects_that_key() {
    let h = Harness::new();
    h.ok(
        Operation::Create,
        "metadata/strict",
        json!({"cas_required": true}),
    )
    .await;
    let without = h
        .req(Operation::Create, "data/strict", json!({"data": {"a": 1}}))
        .await;
    assert!(invalid_request_message(without).contains("required"));
    h.ok(
        Operation::Create,
        "data/strict",
        json!({"data": {"a": 1}, "options": {"cas": 0}}),
    )
    .await;
    h.put("relaxed", json!({"a": 1})).await;
    h.put("relaxed", json!({"a": 2})).await;
}

#[tokio::test]
async fn max_versions_trims_oldest_atomically() {
    let h = Harness::new();
    h.ok(Operation::Update, "config", json!({"max_versions": 3}))
        .await;
    for v in 1..=5 {
        h.put("k", json!({"v": v})).await;
    }
    let meta = h.metadata("k").await;
    assert_eq!(meta["current_version"], json!(5));
    assert_eq!(meta["oldest_version"], json!(3));
    let kept: Vec<&String> = meta["versions"].as_object().unwrap().keys().collect();
    assert_eq!(kept, ["3", "4", "5"]);
    assert!(is_empty_not_found(
        &h.req(Operation::Read, "data/k", json!({"version": 2}))
            .await
    ));
    assert_eq!(h.get("k", 3).await["data"], json!({"v": 3}));
    assert_eq!(
        h.store.keys(),
        [
            "config",
            "metadata/k",
            "versions/k/3",
            "versions/k/4",
            "versions/k/5"
        ],
        "trimmed versions leave no data behind"
    );

    // A key's own max_versions wins over the mount's.
    h.ok(Operation::Update, "metadata/k", json!({"max_versions": 1}))
        .await;
    h.put("k", json!({"v": 6})).await;
    let meta = h.metadata("k").await;
    assert_eq!(meta["versions"].as_object().unwrap().len(), 1);
    assert_eq!(meta["oldest_version"], json!(6));
    assert_eq!(h.store.keys(), ["config", "metadata/k", "versions/k/6"]);
}

#[tokio::test]
async fn default_max_versions_is_ten() {
    let h = Harness::new();
    for v in 1..=12 {
        h.put("k", json!({"v": v})).await;
    }
    let meta = h.metadata("k").await;
    assert_eq!(meta["versions"].as_object().unwrap().len(), 10);
    assert_eq!(meta["oldest_version"], json!(3));
    assert_eq!(meta["max_versions"], json!(0));
}

#[tokio::test]
async fn oldest_version_is_zero_until_trimmed() {
    let h = Harness::new();
    h.put("k", json!({"v": 1})).await;
    h.put("k", json!({"v": 2})).await;
    assert_eq!(h.metadata("k").await["oldest_version"], json!(0));
}

#[tokio::test]
async fn patch_merges_into_latest() {
    let h = Harness::new();
    h.put(
        "k",
        json!({"keep": 1, "drop": 2, "change": "old", "obj": {"a": 1, "b": 2}, "scalar": 5}),
    )
    .await;
    let patched = body(
        h.ok(
            Operation::Patch,
            "data/k",
            json!({"data": {"drop": null, "change": "new", "add": true, "obj": {"b": null, "c": 3}, "scalar": {"now": "object"}}}),
        )
        .await,
    );
    assert_eq!(patched["version"], json!(2));
    assert_eq!(
        h.get("k", 0).await["data"],
        json!({"keep": 1, "change": "new", "add": true, "obj": {"a": 1, "c": 3}, "scalar": {"now": "object"}})
    );
    assert_eq!(
        h.get("k", 1).await["data"]["drop"],
        json!(2),
        "the old version is untouched"
    );
}

#[tokio::test]
async fn patch_needs_a_readable_latest_version() {
    let h = Harness::new();
    assert!(is_empty_not_found(
        &h.req(Operation::Patch, "data/k", json!({"data": {"a": 1}}))
            .await
    ));
    h.ok(Operation::Create, "metadata/k", json!({"max_versions": 2}))
        .await;
    assert!(is_empty_not_found(
        &h.req(Operation::Patch, "data/k", json!({"data": {"a": 1}}))
            .await
    ));
    h.put("k", json!({"a": 0})).await;
    h.ok(Operation::Delete, "data/k", json!({})).await;
    assert!(is_empty_not_found(
        &h.req(Operation::Patch, "data/k", json!({"data": {"a": 1}}))
            .await
    ));
    h.ok(Operation::Create, "destroy/k", json!({"versions": [1]}))
        .await;
    assert!(is_empty_not_found(
        &h.req(Operation::Patch, "data/k", json!({"data": {"a": 1}}))
            .await
    ));

    h.put("k", json!({"a": 0})).await;
    let no_data = h.req(Operation::Patch, "data/k", json!({})).await;
    assert_eq!(invalid_request_message(no_data), "no data provided");
    let cas_wrong = h
        .req(
            Operation::Patch,
            "data/k",
            json!({"data": {"a": 1}, "options": {"cas": 1}}),
        )
        .await;
    assert!(invalid_request_message(cas_wrong).contains("did not match"));
    h.ok(
        Operation::Patch,
        "data/k",
        json!({"data": {"a": 1}, "options": {"cas": 2}}),
    )
    .await;
    assert_eq!(h.get("k", 0).await["data"], json!({"a": 1}));
}

#[tokio::test]
async fn delete_version_after_hides_versions_when_due() {
    let h = Harness::new();
    h.ok(
        Operation::Update,
        "config",
        json!({"delete_version_after": "1m"}),
    )
    .await;
    let written = h.put("k", json!({"a": 1})).await;
    assert_eq!(written["deletion_time"], json!("2023-11-14T22:14:20Z"));
    h.advance_secs(59);
    assert_eq!(h.get("k", 0).await["data"], json!({"a": 1}));
    h.advance_secs(1);
    let (status, gone) = raw(h.ok(Operation::Read, "data/k", json!({})).await);
    assert_eq!(status, 404);
    assert_eq!(gone["data"]["data"], Value::Null);
    assert_eq!(
        gone["data"]["metadata"]["deletion_time"],
        json!("2023-11-14T22:14:20Z")
    );

    // The shorter of key and mount setting applies; "0s" on the mount disables it.
    h.ok(
        Operation::Update,
        "metadata/k",
        json!({"delete_version_after": "10s"}),
    )
    .await;
    assert_eq!(
        h.put("k", json!({"a": 2})).await["deletion_time"],
        json!("2023-11-14T22:14:30Z")
    );
    h.ok(
        Operation::Update,
        "config",
        json!({"delete_version_after": "0s"}),
    )
    .await;
    h.ok(
        Operation::Update,
        "metadata/k",
        json!({"delete_version_after": 0}),
    )
    .await;
    assert_eq!(
        h.put("k", json!({"a": 3})).await["deletion_time"],
        json!("")
    );
}

#[tokio::test]
async fn a_failed_write_changes_nothing() {
    let h = Harness::new();
    h.ok(Operation::Update, "config", json!({"max_versions": 2}))
        .await;
    h.put("k", json!({"v": 1})).await;
    h.put("k", json!({"v": 2})).await;
    let before = h.store.snapshot();
    h.store.fail_writes(true);
    let failed = h
        .req(Operation::Create, "data/k", json!({"data": {"v": 3}}))
        .await;
    assert!(matches!(failed, Err(LogicalError::Internal(_))));
    assert!(h
        .req(Operation::Patch, "data/k", json!({"data": {"v": 3}}))
        .await
        .is_err());
    assert!(h
        .req(Operation::Create, "destroy/k", json!({"versions": [1]}))
        .await
        .is_err());
    assert!(h
        .req(Operation::Delete, "metadata/k", json!({}))
        .await
        .is_err());
    assert_eq!(h.store.snapshot(), before);
    h.store.fail_writes(false);
    assert_eq!(h.get("k", 1).await["data"], json!({"v": 1}));
    assert_eq!(h.put("k", json!({"v": 3})).await["version"], json!(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_never_lose_versions() {
    let h = Arc::new(Harness::new());
    h.ok(Operation::Update, "config", json!({"max_versions": 100}))
        .await;
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let h = h.clone();
            tokio::spawn(async move {
                h.put("hot", json!({"writer": i})).await["version"]
                    .as_u64()
                    .unwrap()
            })
        })
        .collect();
    let mut versions = Vec::new();
    for task in tasks {
        versions.push(task.await.unwrap());
    }
    versions.sort_unstable();
    assert_eq!(versions, (1..=32).collect::<Vec<u64>>());
    let meta = h.metadata("hot").await;
    assert_eq!(meta["current_version"], json!(32));
    assert_eq!(meta["versions"].as_object().unwrap().len(), 32);
    for v in 1..=32u64 {
        assert!(h.get("hot", v).await["data"]["writer"].is_u64());
    }
}
