//! Finding 13: token accessors are not storage keys. The accessor index is keyed by the salted
//! storage id of the accessor (storage keys are plaintext on disk), and `auth/token/accessors`
//! reads the accessors from the entries' values, as Vault does. Checked on the database file of
//! a stopped server, and through the API before and after a restart.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use bunker_testkit as common;

use std::time::Duration;

use common::TestServer;
use serde_json::{json, Value};

const ACCESSOR_INDEX: &str = "sys/token/accessor/";

/// Every key and raw value in the stopped server's database file.
fn raw_storage(s: &TestServer) -> Vec<(String, Vec<u8>)> {
    let backend =
        bunker_storage::EmbeddedBackend::open(&s.dir().join("data")).expect("open storage");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    rt.block_on(bunker_storage::Backend::scan(&backend, "", None, 100_000))
        .expect("scan")
}

fn create(s: &TestServer, body: Value) -> (String, String) {
    let (code, b) = s.post("auth/token/create", s.root(), body);
    assert_eq!(code, 200, "{b}");
    (
        b["auth"]["client_token"].as_str().unwrap().to_owned(),
        b["auth"]["accessor"].as_str().unwrap().to_owned(),
    )
}

fn listed_accessors(s: &TestServer, token: Option<&str>) -> Vec<String> {
    let (code, b) = s.list("auth/token/accessors", token);
    assert_eq!(code, 200, "{b}");
    assert_eq!(b["warnings"], Value::Null, "{b}");
    let mut keys: Vec<String> = b["data"]["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| k.as_str().unwrap().to_owned())
        .collect();
    keys.sort();
    keys
}

fn lookup_accessor(s: &TestServer, accessor: &str) -> (u16, Value) {
    s.post(
        "auth/token/lookup-accessor",
        s.root(),
        json!({ "accessor": accessor }),
    )
}

fn assert_not_in_storage(s: &TestServer, accessors: &[String], index_entries: usize) {
    let raw = raw_storage(s);
    let index = raw
        .iter()
        .filter(|(k, _)| k.starts_with(ACCESSOR_INDEX))
        .count();
    assert_eq!(index, index_entries, "accessor index entries");
    for a in accessors {
        let keys: Vec<&String> = raw.iter().map(|(k, _)| k).collect();
        assert!(
            !keys.iter().any(|k| k.contains(a)),
            "accessor {a} is in a storage key: {keys:?}"
        );
        assert!(
            !raw.iter()
                .any(|(_, v)| v.windows(a.len()).any(|w| w == a.as_bytes())),
            "accessor {a} is in a raw storage value"
        );
    }
}

#[test]
fn accessors_are_not_storage_keys_and_every_accessor_endpoint_works() {
    let mut s = TestServer::initialized();
    let (code, b) = s.get("auth/token/lookup-self", s.root());
    assert_eq!(code, 200, "{b}");
    let root_accessor = b["data"]["accessor"].as_str().unwrap().to_owned();
    let (_, kept) = create(
        &s,
        json!({"policies": ["default"], "ttl": "1h", "display_name": "kept"}),
    );
    let (revoked_token, revoked) = create(&s, json!({"policies": ["default"], "ttl": "1h"}));

    // LIST is root-protected, as Vault's: the capability without sudo is not enough.
    for (name, caps) in [
        ("list-only", r#"["list"]"#),
        ("list-sudo", r#"["list", "sudo"]"#),
    ] {
        let (code, b) = s.put(
            &format!("sys/policies/acl/{name}"),
            s.root(),
            json!({ "policy": format!("path \"auth/token/accessors\" {{ capabilities = {caps} }}") }),
        );
        assert_eq!(code, 204, "{b}");
    }
    let (list_only, list_only_accessor) = create(&s, json!({"policies": ["list-only"]}));
    let (list_sudo, list_sudo_accessor) = create(&s, json!({"policies": ["list-sudo"]}));
    let (code, b) = s.list("auth/token/accessors", Some(&list_only));
    assert_eq!(code, 403, "LIST without sudo: {b}");

    let mut all = vec![
        root_accessor.clone(),
        kept.clone(),
        revoked.clone(),
        list_only_accessor.clone(),
        list_sudo_accessor.clone(),
    ];
    all.sort();
    assert_eq!(listed_accessors(&s, Some(&list_sudo)), all);
    let (code, b) = lookup_accessor(&s, &kept);
    assert_eq!(code, 200, "{b}");
    assert_eq!(b["data"]["display_name"], "token-kept", "{b}");
    assert_eq!(b["data"]["accessor"], kept.as_str(), "{b}");
    assert_eq!(
        b["data"]["id"], "",
        "lookup by accessor reveals the token: {b}"
    );

    s.terminate(Duration::from_secs(10));
    let every: Vec<String> = all.clone();
    assert_not_in_storage(&s, &every, all.len());

    s.restart();
    s.unseal();
    assert_eq!(listed_accessors(&s, s.root()), all, "after a restart");
    let (code, b) = lookup_accessor(&s, &kept);
    assert_eq!(code, 200, "after a restart: {b}");
    assert_eq!(b["data"]["display_name"], "token-kept", "{b}");
    let (code, b) = s.post(
        &format!("auth/token/renew-accessor/{kept}"),
        s.root(),
        json!({"increment": "2h"}),
    );
    assert_eq!(code, 200, "renew-accessor: {b}");
    assert_eq!(b["auth"]["accessor"], kept.as_str(), "{b}");
    assert_eq!(b["auth"]["client_token"], "", "{b}");
    assert_eq!(b["auth"]["lease_duration"], 7200, "{b}");
    let (code, b) = s.post(
        "auth/token/revoke-accessor",
        s.root(),
        json!({ "accessor": revoked }),
    );
    assert_eq!(code, 204, "revoke-accessor: {b}");
    let (code, b) = s.get("auth/token/lookup-self", Some(&revoked_token));
    assert_eq!(code, 403, "the revoked token still works: {b}");
    let (code, b) = lookup_accessor(&s, &revoked);
    assert_eq!(code, 400, "{b}");
    assert_eq!(common::errors(&b), vec!["invalid accessor"], "{b}");
    all.retain(|a| *a != revoked);
    assert_eq!(listed_accessors(&s, s.root()), all);

    // The revocation took the index entry with it; nothing else changed on disk.
    s.terminate(Duration::from_secs(10));
    assert_not_in_storage(&s, &every, all.len());
}

/// The salt and the accessor index are ordinary barrier data: a promoted DR secondary finds,
/// lists and revokes tokens by accessor as the primary did.
#[test]
fn a_promoted_dr_secondary_serves_accessors() {
    use common::dr::{dr_server, enable_primary, fail_over, secondary_of};
    let a = dr_server();
    let (_, kept) = create(&a, json!({"policies": ["default"], "display_name": "kept"}));
    let (revoked_token, revoked) = create(&a, json!({"policies": ["default"]}));
    let on_a = listed_accessors(&a, a.root());
    enable_primary(&a);
    let b = secondary_of(&a, "site-b");
    fail_over(&a, &b);

    assert_eq!(listed_accessors(&b, b.root()), on_a);
    let (code, body) = lookup_accessor(&b, &kept);
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["data"]["display_name"], "token-kept", "{body}");
    let (code, body) = b.post(
        &format!("auth/token/revoke-accessor/{revoked}"),
        b.root(),
        json!({}),
    );
    assert_eq!(code, 204, "{body}");
    let (code, body) = b.get("auth/token/lookup-self", Some(&revoked_token));
    assert_eq!(code, 403, "the revoked token still works: {body}");
    assert!(!listed_accessors(&b, b.root()).contains(&revoked));
}
