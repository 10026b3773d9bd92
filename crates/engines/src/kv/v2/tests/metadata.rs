//! `metadata/`, `config`, listing and `subkeys/`.

use bunker_sdk::{LogicalError, Operation};
use serde_json::{json, Value};

use super::*;

#[tokio::test]
async fn metadata_read_shape() {
    let h = Harness::new();
    h.put("k", json!({"a": 1})).await;
    h.advance_secs(2);
    h.put("k", json!({"a": 2})).await;
    assert_eq!(
        h.metadata("k").await,
        json!({
            "cas_required": false,
            "created_time": START_TIME,
            "current_version": 2,
            "custom_metadata": null,
            "delete_version_after": "0s",
            "max_versions": 0,
            "oldest_version": 0,
            "updated_time": "2023-11-14T22:13:22Z",
            "versions": {
                "1": {"created_time": START_TIME, "deletion_time": "", "destroyed": false},
                "2": {"created_time": "2023-11-14T22:13:22Z", "deletion_time": "", "destroyed": false}
            }
        })
    );
    assert!(is_empty_not_found(
        &h.req(Operation::Read, "metadata/other", json!({})).await
    ));
}

#[tokio::test]
async fn metadata_write_creates_and_updates_settings() {
    let h = Harness::new();
    h.ok(
        Operation::Create,
        "metadata/k",
        json!({"max_versions": 5, "cas_required": true, "delete_version_after": "1h30m", "custom_metadata": {"owner": "ops", "n": 7}}),
    )
    .await;
    let meta = h.metadata("k").await;
    assert_eq!(meta["current_version"], json!(0));
    assert_eq!(meta["max_versions"], json!(5));
    assert_eq!(meta["cas_required"], json!(true));
    assert_eq!(meta["delete_version_after"], json!("1h30m0s"));
    assert_eq!(meta["custom_metadata"], json!({"n": "7", "owner": "ops"}));
    assert_eq!(meta["versions"], json!({}));
    // A key with metadata but no versions has nothing to read.
    assert!(is_empty_not_found(
        &h.req(Operation::Read, "data/k", json!({})).await
    ));

    // Fields not given stay; a given custom_metadata replaces the old one.
    h.ok(
        Operation::Update,
        "metadata/k",
        json!({"custom_metadata": {"team": "db"}}),
    )
    .await;
    let meta = h.metadata("k").await;
    assert_eq!(meta["max_versions"], json!(5));
    assert_eq!(meta["custom_metadata"], json!({"team": "db"}));

    // Version reads carry the key's custom metadata.
    h.ok(
        Operation::Create,
        "data/k",
        json!({"data": {"a": 1}, "options": {"cas": 0}}),
    )
    .await;
    assert_eq!(
        h.get("k", 0).await["metadata"]["custom_metadata"],
        json!({"team": "db"})
    );
}

#[tokio::test]
async fn metadata_patch_merges() {
    let h = Harness::new();
    let patch = h
        .req(Operation::Patch, "metadata/k", json!({"max_versions": 2}))
        .await;
    assert!(is_empty_not_found(&patch));
    h.ok(
        Operation::Create,
        "metadata/k",
        json!({"max_versions": 4, "custom_metadata": {"a": "1", "b": "2"}}),
    )
    .await;
    h.ok(
        Operation::Patch,
        "metadata/k",
        json!({"cas_required": true, "custom_metadata": {"a": null, "c": "3"}}),
    )
    .await;
    let meta = h.metadata("k").await;
    assert_eq!(meta["max_versions"], json!(4));
    assert_eq!(meta["cas_required"], json!(true));
    assert_eq!(meta["custom_metadata"], json!({"b": "2", "c": "3"}));
    h.ok(
        Operation::Patch,
        "metadata/k",
        json!({"custom_metadata": {"b": null, "c": null}}),
    )
    .await;
    assert_eq!(h.metadata("k").await["custom_metadata"], Value::Null);
}

#[tokio::test]
async fn custom_metadata_limits() {
    let h = Harness::new();
    let too_many: serde_json::Map<String, Value> =
        (0..65).map(|i| (format!("k{i}"), json!("v"))).collect();
    for bad in [
        json!({"custom_metadata": "owner=ops"}),
        json!({"custom_metadata": {"nested": {"a": 1}}}),
        json!({"custom_metadata": {"null": null}}),
        json!({"custom_metadata": {"": "empty key"}}),
        json!({"custom_metadata": {"long": "x".repeat(513)}}),
        json!({"custom_metadata": {"k".repeat(129): "v"}}),
        json!({"custom_metadata": too_many}),
        json!({"max_versions": -1}),
        json!({"max_versions": "many"}),
        json!({"cas_required": "perhaps"}),
        json!({"delete_version_after": "soon"}),
    ] {
        let result = h.req(Operation::Create, "metadata/k", bad.clone()).await;
        assert!(
            matches!(result, Err(LogicalError::InvalidRequest(_))),
            "{bad} gave {result:?}"
        );
    }
    assert!(h.store.keys().is_empty());

    // A patch may not push the total past the limit either.
    let sixty_four: serde_json::Map<String, Value> =
        (0..64).map(|i| (format!("k{i}"), json!("v"))).collect();
    h.ok(
        Operation::Create,
        "metadata/k",
        json!({"custom_metadata": sixty_four}),
    )
    .await;
    let over = h
        .req(
            Operation::Patch,
            "metadata/k",
            json!({"custom_metadata": {"one_more": "v"}}),
        )
        .await;
    assert!(matches!(over, Err(LogicalError::InvalidRequest(_))));
}

#[tokio::test]
async fn metadata_delete_removes_every_version() {
    let h = Harness::new();
    for v in 1..=3 {
        h.put("k", json!({"v": v})).await;
    }
    h.put("k/child", json!({"v": 1})).await;
    h.ok(Operation::Update, "destroy/k", json!({"versions": [2]}))
        .await;
    assert!(h
        .ok(Operation::Delete, "metadata/k", json!({}))
        .await
        .is_empty());
    assert_eq!(
        h.store.keys(),
        ["metadata/k/child", "versions/k/child/1"],
        "only the other key is left"
    );
    assert!(is_empty_not_found(
        &h.req(Operation::Read, "metadata/k", json!({})).await
    ));
    assert!(is_empty_not_found(
        &h.req(Operation::Read, "data/k", json!({"version": 1}))
            .await
    ));
    assert_eq!(h.get("k/child", 0).await["data"], json!({"v": 1}));
    // Deleting again is fine, and the key starts over at version 1.
    h.ok(Operation::Delete, "metadata/k", json!({})).await;
    assert_eq!(h.put("k", json!({"v": "new"})).await["version"], json!(1));
}

#[tokio::test]
async fn listing_nested_folders() {
    let h = Harness::new();
    for key in ["a", "b", "b/c", "b/d/e", "b/d/f", "z/y/x"] {
        h.put(key, json!({"k": key})).await;
    }
    assert_eq!(
        h.list("metadata/").await.unwrap(),
        json!(["a", "b", "b/", "z/"])
    );
    assert_eq!(
        h.list("metadata").await.unwrap(),
        json!(["a", "b", "b/", "z/"])
    );
    assert_eq!(h.list("metadata/b/").await.unwrap(), json!(["c", "d/"]));
    assert_eq!(h.list("metadata/b/d").await.unwrap(), json!(["e", "f"]));
    assert_eq!(h.list("metadata/z/").await.unwrap(), json!(["y/"]));
    assert_eq!(h.list("data/b/").await.unwrap(), json!(["c", "d/"]));
    assert!(is_empty_not_found(&h.list("metadata/nothing/").await));
    assert!(matches!(
        h.list("metadata/../").await,
        Err(LogicalError::InvalidRequest(_))
    ));

    // Soft-deleted and destroyed keys still list (their metadata exists); deleted metadata does not.
    h.ok(Operation::Delete, "data/a", json!({})).await;
    h.ok(Operation::Delete, "metadata/b", json!({})).await;
    assert_eq!(h.list("metadata/").await.unwrap(), json!(["a", "b/", "z/"]));
}

#[tokio::test]
async fn config_defaults_and_updates() {
    let h = Harness::new();
    assert_eq!(
        body(h.ok(Operation::Read, "config", json!({})).await),
        json!({"cas_required": false, "delete_version_after": "0s", "max_versions": 0})
    );
    assert!(h
        .ok(
            Operation::Update,
            "config",
            json!({"max_versions": "7", "delete_version_after": 3600})
        )
        .await
        .is_empty());
    h.ok(Operation::Create, "config", json!({"cas_required": "true"}))
        .await;
    assert_eq!(
        body(h.ok(Operation::Read, "config", json!({})).await),
        json!({"cas_required": true, "delete_version_after": "1h0m0s", "max_versions": 7})
    );
    for bad in [
        json!({"max_versions": -2}),
        json!({"cas_required": []}),
        json!({"delete_version_after": "-1h"}),
    ] {
        assert!(matches!(
            h.req(Operation::Update, "config", bad).await,
            Err(LogicalError::InvalidRequest(_))
        ));
    }
    assert_eq!(
        body(h.ok(Operation::Read, "config", json!({})).await)["max_versions"],
        json!(7)
    );
}

#[tokio::test]
async fn subkeys_show_structure_only() {
    let h = Harness::new();
    h.put(
        "k",
        json!({"a": 1, "b": {"c": "secret", "d": {"e": [1, 2]}}, "f": null}),
    )
    .await;
    let all = body(h.ok(Operation::Read, "subkeys/k", json!({})).await);
    assert_eq!(
        all["subkeys"],
        json!({"a": null, "b": {"c": null, "d": {"e": null}}, "f": null})
    );
    assert_eq!(all["metadata"]["version"], json!(1));
    let shallow = body(
        h.ok(Operation::Read, "subkeys/k", json!({"depth": "1"}))
            .await,
    );
    assert_eq!(shallow["subkeys"], json!({"a": null, "b": null, "f": null}));
    let two = body(
        h.ok(
            Operation::Read,
            "subkeys/k",
            json!({"depth": 2, "version": 1}),
        )
        .await,
    );
    assert_eq!(
        two["subkeys"],
        json!({"a": null, "b": {"c": null, "d": null}, "f": null})
    );

    h.ok(Operation::Delete, "data/k", json!({})).await;
    let (status, deleted) = raw(h.ok(Operation::Read, "subkeys/k", json!({})).await);
    assert_eq!(status, 404);
    assert_eq!(deleted["data"]["subkeys"], Value::Null);
    assert!(is_empty_not_found(
        &h.req(Operation::Read, "subkeys/none", json!({})).await
    ));
    assert!(matches!(
        h.req(Operation::Update, "subkeys/k", json!({})).await,
        Err(LogicalError::UnsupportedOperation)
    ));
}
