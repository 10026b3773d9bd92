//! Tokens and accessors given in the URL path (`auth/token/lookup/<token>` and friends) are
//! HMAC'd in the audit log, as Vault does.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use bunker_testkit as common;

use common::TestServer;
use serde_json::{json, Value};

fn audit_hash(s: &TestServer, input: &str) -> String {
    let (st, b) = s.post("sys/audit-hash/file", s.root(), json!({ "input": input }));
    assert_eq!(st, 200, "audit-hash: {b}");
    b["data"]["hash"].as_str().expect("hash").to_owned()
}

#[test]
fn tokens_and_accessors_in_paths_are_hmacd_in_the_audit_log() {
    let s = TestServer::initialized();
    let log = s.enable_file_audit();

    let (st, b) = s.post(
        "auth/token/create",
        s.root(),
        json!({"policies": ["default"], "ttl": "1h"}),
    );
    assert_eq!(st, 200, "{b}");
    let token = b["auth"]["client_token"].as_str().unwrap().to_owned();
    let accessor = b["auth"]["accessor"].as_str().unwrap().to_owned();

    let (st, b) = s.get(&format!("auth/token/lookup/{token}"), s.root());
    assert_eq!(st, 200, "lookup by path: {b}");
    let (st, b) = s.post(&format!("auth/token/renew/{token}"), s.root(), json!({}));
    assert_eq!(st, 200, "renew by path: {b}");
    let (st, b) = s.post(
        &format!("auth/token/lookup-accessor/{accessor}"),
        s.root(),
        json!({}),
    );
    assert_eq!(st, 200, "lookup-accessor by path: {b}");
    let (st, b) = s.post(&format!("auth/token/revoke/{token}"), s.root(), json!({}));
    assert_eq!(st, 204, "revoke by path: {b}");

    let text = std::fs::read_to_string(&log).expect("audit log");
    assert!(
        !text.contains(&token),
        "the token appears verbatim in the audit log"
    );
    assert!(
        !text.contains(&accessor),
        "the accessor appears verbatim in the audit log"
    );
    let paths: Vec<String> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|r| r["request"]["path"].as_str().map(str::to_owned))
        .collect();
    let token_hash = audit_hash(&s, &token);
    let accessor_hash = audit_hash(&s, &accessor);
    for expected in [
        format!("auth/token/lookup/{token_hash}"),
        format!("auth/token/renew/{token_hash}"),
        format!("auth/token/revoke/{token_hash}"),
        format!("auth/token/lookup-accessor/{accessor_hash}"),
    ] {
        assert_eq!(
            paths.iter().filter(|p| **p == expected).count(),
            2,
            "request and response records with path {expected}; paths: {paths:?}"
        );
    }
}
