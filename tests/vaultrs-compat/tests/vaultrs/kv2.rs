//! `vaultrs::kv2` on the dev server's `secret/` mount.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use vaultrs::api::kv2::requests::SetSecretMetadataRequest;

use crate::harness::{expect_status, Server};

const MOUNT: &str = "secret";

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Creds {
    user: String,
    password: String,
}

fn creds(password: &str) -> Creds {
    Creds {
        user: "alice".to_owned(),
        password: password.to_owned(),
    }
}

#[tokio::test]
async fn versions_read_list_delete_and_undelete() {
    let server = Server::dev().await;
    let client = server.root_client();

    let v1 = vaultrs::kv2::set(&client, MOUNT, "app/db", &creds("one"))
        .await
        .expect("set v1");
    assert_eq!(v1.version, 1);
    assert!(!v1.destroyed);
    assert_eq!(
        v1.deletion_time, "",
        "a live version has an empty deletion_time"
    );
    assert!(!v1.created_time.is_empty());
    let v2 = vaultrs::kv2::set(&client, MOUNT, "app/db", &creds("two"))
        .await
        .expect("set v2");
    assert_eq!(v2.version, 2);
    vaultrs::kv2::set(&client, MOUNT, "app/api", &creds("api"))
        .await
        .expect("set app/api");

    let latest: Creds = vaultrs::kv2::read(&client, MOUNT, "app/db")
        .await
        .expect("read");
    assert_eq!(latest, creds("two"));
    let first: Creds = vaultrs::kv2::read_version(&client, MOUNT, "app/db", 1)
        .await
        .expect("read_version 1");
    assert_eq!(first, creds("one"));

    let keys = vaultrs::kv2::list(&client, MOUNT, "app")
        .await
        .expect("list app");
    assert_eq!(
        keys,
        vec!["api".to_owned(), "db".to_owned()],
        "sorted leaf keys"
    );
    let top = vaultrs::kv2::list(&client, MOUNT, "")
        .await
        .expect("list mount root");
    assert_eq!(top, vec!["app/".to_owned()], "folders end with '/'");

    // Soft delete of the latest version: reads of it fail with 404, older versions stay.
    vaultrs::kv2::delete_latest(&client, MOUNT, "app/db")
        .await
        .expect("delete_latest");
    expect_status(
        vaultrs::kv2::read::<Creds>(&client, MOUNT, "app/db").await,
        404,
    );
    let still: Creds = vaultrs::kv2::read_version(&client, MOUNT, "app/db", 1)
        .await
        .expect("v1 survives");
    assert_eq!(still, creds("one"));

    let meta = vaultrs::kv2::read_metadata(&client, MOUNT, "app/db")
        .await
        .expect("read_metadata");
    assert_eq!(meta.current_version, 2);
    assert!(
        !meta.versions["2"].deletion_time.is_empty(),
        "v2 marked deleted: {meta:?}"
    );
    assert_eq!(
        meta.versions["1"].deletion_time, "",
        "v1 untouched: {meta:?}"
    );
    // The key is still listed while any version exists.
    let keys = vaultrs::kv2::list(&client, MOUNT, "app")
        .await
        .expect("list after delete");
    assert!(keys.contains(&"db".to_owned()), "{keys:?}");

    vaultrs::kv2::undelete_versions(&client, MOUNT, "app/db", vec![2])
        .await
        .expect("undelete");
    let back: Creds = vaultrs::kv2::read(&client, MOUNT, "app/db")
        .await
        .expect("read undeleted");
    assert_eq!(back, creds("two"));
    let meta = vaultrs::kv2::read_metadata(&client, MOUNT, "app/db")
        .await
        .expect("metadata");
    assert_eq!(
        meta.versions["2"].deletion_time, "",
        "undelete clears deletion_time"
    );
}

#[tokio::test]
async fn max_versions_in_metadata_prunes_old_versions() {
    let server = Server::dev().await;
    let client = server.root_client();

    for pw in ["one", "two", "three"] {
        vaultrs::kv2::set(&client, MOUNT, "rotating", &creds(pw))
            .await
            .expect("set");
    }
    let meta = vaultrs::kv2::read_metadata(&client, MOUNT, "rotating")
        .await
        .expect("metadata");
    assert_eq!(meta.current_version, 3);
    assert_eq!(meta.max_versions, 0, "0 = the mount's default");
    assert!(!meta.cas_required);
    assert_eq!(meta.versions.len(), 3, "{meta:?}");

    let mut opts = SetSecretMetadataRequest::builder();
    opts.max_versions(2u64);
    vaultrs::kv2::set_metadata(&client, MOUNT, "rotating", Some(&mut opts))
        .await
        .expect("set_metadata max_versions=2");
    let meta = vaultrs::kv2::read_metadata(&client, MOUNT, "rotating")
        .await
        .expect("metadata");
    assert_eq!(meta.max_versions, 2);

    // The next write keeps only the newest two versions.
    vaultrs::kv2::set(&client, MOUNT, "rotating", &creds("four"))
        .await
        .expect("set v4");
    let meta = vaultrs::kv2::read_metadata(&client, MOUNT, "rotating")
        .await
        .expect("metadata");
    assert_eq!(meta.current_version, 4);
    assert_eq!(meta.oldest_version, 3, "{meta:?}");
    let mut kept: Vec<&String> = meta.versions.keys().collect();
    kept.sort();
    assert_eq!(kept, vec!["3", "4"], "{meta:?}");
    expect_status(
        vaultrs::kv2::read_version::<Creds>(&client, MOUNT, "rotating", 1).await,
        404,
    );
    let v3: Creds = vaultrs::kv2::read_version(&client, MOUNT, "rotating", 3)
        .await
        .expect("v3 kept");
    assert_eq!(v3, creds("three"));

    // Custom metadata set through the same call comes back on read.
    let mut opts = SetSecretMetadataRequest::builder();
    opts.custom_metadata(HashMap::from([("owner".to_owned(), "team-a".to_owned())]));
    vaultrs::kv2::set_metadata(&client, MOUNT, "rotating", Some(&mut opts))
        .await
        .expect("set_metadata custom_metadata");
    let meta = vaultrs::kv2::read_metadata(&client, MOUNT, "rotating")
        .await
        .expect("metadata");
    let custom = meta.custom_metadata.expect("custom_metadata present");
    assert_eq!(custom.get("owner").map(String::as_str), Some("team-a"));
}
