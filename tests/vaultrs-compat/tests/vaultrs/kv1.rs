//! `vaultrs::kv1` on a mount enabled with `vaultrs::sys::mount::enable`.

use std::collections::HashMap;

use vaultrs::api::sys::requests::EnableEngineRequest;

use crate::harness::{expect_status, Server};

const MOUNT: &str = "kv1";

#[tokio::test]
async fn kv_version_1_mount_set_get_list_delete() {
    let server = Server::dev().await;
    let client = server.root_client();

    let mut opts = EnableEngineRequest::builder();
    opts.options(HashMap::from([("version".to_owned(), "1".to_owned())]))
        .description("vaultrs kv v1");
    vaultrs::sys::mount::enable(&client, MOUNT, "kv", Some(&mut opts))
        .await
        .expect("enable kv version 1");

    // The mount table lists it as kv with version 1 (and parses as vaultrs's type).
    let mounts = vaultrs::sys::mount::list(&client)
        .await
        .expect("sys::mount::list parses");
    let mount = mounts.get("kv1/").expect("kv1/ in the mount table");
    assert_eq!(mount.mount_type, "kv");
    assert_eq!(mount.description, "vaultrs kv v1");
    let version = mount
        .options
        .as_ref()
        .and_then(|o| o.get("version"))
        .map(String::as_str);
    assert_eq!(version, Some("1"), "{mount:?}");
    assert!(
        mounts.contains_key("secret/"),
        "dev server's kv v2 mount: {:?}",
        mounts.keys()
    );

    let data = HashMap::from([("user", "bob"), ("password", "hunter2")]);
    vaultrs::kv1::set(&client, MOUNT, "db/creds", &data)
        .await
        .expect("kv1 set");
    vaultrs::kv1::set(&client, MOUNT, "db/other", &HashMap::from([("a", "b")]))
        .await
        .expect("kv1 set other");

    let got: HashMap<String, String> = vaultrs::kv1::get(&client, MOUNT, "db/creds")
        .await
        .expect("kv1 get");
    let want: HashMap<String, String> = data
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    assert_eq!(
        got, want,
        "kv v1 stores the body as-is, not under a data key"
    );
    let raw = vaultrs::kv1::get_raw(&client, MOUNT, "db/creds")
        .await
        .expect("kv1 get_raw");
    assert_eq!(raw.lease_id, "");
    assert!(!raw.renewable);

    let listed = vaultrs::kv1::list(&client, MOUNT, "db")
        .await
        .expect("kv1 list");
    assert_eq!(
        listed.data.keys,
        vec!["creds".to_owned(), "other".to_owned()]
    );
    let top = vaultrs::kv1::list(&client, MOUNT, "")
        .await
        .expect("kv1 list root");
    assert_eq!(top.data.keys, vec!["db/".to_owned()]);

    // Overwrite replaces the whole secret.
    vaultrs::kv1::set(
        &client,
        MOUNT,
        "db/creds",
        &HashMap::from([("user", "carol")]),
    )
    .await
    .expect("kv1 overwrite");
    let got: HashMap<String, String> = vaultrs::kv1::get(&client, MOUNT, "db/creds")
        .await
        .expect("kv1 get after overwrite");
    assert_eq!(
        got,
        HashMap::from([("user".to_owned(), "carol".to_owned())])
    );

    vaultrs::kv1::delete(&client, MOUNT, "db/creds")
        .await
        .expect("kv1 delete");
    expect_status(
        vaultrs::kv1::get::<HashMap<String, String>>(&client, MOUNT, "db/creds").await,
        404,
    );
    let listed = vaultrs::kv1::list(&client, MOUNT, "db")
        .await
        .expect("kv1 list after delete");
    assert_eq!(listed.data.keys, vec!["other".to_owned()]);
    vaultrs::kv1::delete(&client, MOUNT, "db/other")
        .await
        .expect("kv1 delete other");
    expect_status(vaultrs::kv1::list(&client, MOUNT, "db").await, 404);
}
