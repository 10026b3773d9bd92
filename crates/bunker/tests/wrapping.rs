//! Response wrapping: wrap, lookup, unwrap (once), rewrap, wrapped token creation, expiry.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use bunker_testkit as common;

use std::time::Duration;

use common::{errors, poll_until, TestServer};
use reqwest::Method;
use serde_json::{json, Value};

fn wrap(s: &TestServer, data: Value, ttl: &str) -> Value {
    let (st, b) = s.request_with(
        Method::POST,
        "sys/wrapping/wrap",
        s.root(),
        Some(data),
        &[("X-Vault-Wrap-TTL", ttl)],
    );
    assert_eq!(st, 200, "wrap: {b}");
    assert!(b["wrap_info"].is_object(), "no wrap_info: {b}");
    assert!(
        b["data"].is_null(),
        "wrapped response must not carry the data: {b}"
    );
    b["wrap_info"].clone()
}

fn unwrap_body(s: &TestServer, token: &str) -> (u16, Value) {
    s.post("sys/wrapping/unwrap", s.root(), json!({ "token": token }))
}

#[test]
fn wrap_unwrap_once_and_lookup() {
    let s = TestServer::dev();
    let info = wrap(&s, json!({"password": "hunter2", "n": 7}), "60s");
    let token = info["token"].as_str().unwrap().to_owned();
    assert_eq!(info["ttl"], json!(60));
    assert_eq!(info["creation_path"], json!("sys/wrapping/wrap"));
    assert!(
        info["accessor"].as_str().is_some_and(|a| !a.is_empty()),
        "{info}"
    );

    // Lookup needs no client token and does not consume.
    let (st, b) = s.post("sys/wrapping/lookup", None, json!({ "token": token }));
    assert_eq!(st, 200, "lookup: {b}");
    assert_eq!(b["data"]["creation_path"], json!("sys/wrapping/wrap"));
    assert_eq!(b["data"]["creation_ttl"], json!(60));
    assert!(b["data"]["creation_time"].is_string(), "{b}");
    let (st, _) = s.post("sys/wrapping/lookup", None, json!({ "token": token }));
    assert_eq!(st, 200, "lookup twice is fine");

    let (st, b) = unwrap_body(&s, &token);
    assert_eq!(st, 200, "unwrap: {b}");
    assert_eq!(b["data"], json!({"password": "hunter2", "n": 7}));

    let (st, b) = unwrap_body(&s, &token);
    assert_eq!(st, 400, "second unwrap: {b}");
    assert!(!errors(&b).is_empty(), "{b}");
    let (st, b) = s.post("sys/wrapping/lookup", None, json!({ "token": token }));
    assert_eq!(st, 400, "lookup after unwrap: {b}");
}

#[test]
fn unwrap_with_wrapping_token_as_client_token_works_once() {
    let s = TestServer::dev();
    let info = wrap(&s, json!({"k": "v"}), "5m");
    let token = info["token"].as_str().unwrap().to_owned();
    let (st, b) = s.post("sys/wrapping/unwrap", Some(&token), json!({}));
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["data"], json!({"k": "v"}));
    // Vault answers a spent wrapping token on sys/wrapping/unwrap with 400
    // "wrapping token is not valid or does not exist".
    let (st, b) = s.post("sys/wrapping/unwrap", Some(&token), json!({}));
    assert_eq!(st, 400, "second self-unwrap: {b}");
    assert!(
        errors(&b)
            .iter()
            .any(|e| e.contains("wrapping token is not valid")),
        "{b}"
    );
}

/// sys/wrapping/lookup is unauthenticated in Vault: presenting the wrapping token as the
/// client token to look it up must not spend its single use.
#[test]
fn lookup_with_wrapping_token_in_header_does_not_consume_it() {
    let s = TestServer::dev();
    let info = wrap(&s, json!({"check": "before-unwrap"}), "5m");
    let token = info["token"].as_str().unwrap().to_owned();
    let (st, b) = s.post("sys/wrapping/lookup", Some(&token), json!({}));
    assert_eq!(
        st, 200,
        "lookup with the wrapping token as X-Vault-Token: {b}"
    );
    assert_eq!(b["data"]["creation_path"], json!("sys/wrapping/wrap"));
    let (st, b) = unwrap_body(&s, &token);
    assert_eq!(st, 200, "unwrap after a header lookup: {b}");
    assert_eq!(b["data"], json!({"check": "before-unwrap"}));
}

#[test]
fn wrapping_token_is_useless_for_anything_else() {
    let s = TestServer::dev();
    s.kv_put("wrapped/other", json!({"v": 1}));
    let info = wrap(&s, json!({"k": "v"}), "5m");
    let token = info["token"].as_str().unwrap().to_owned();
    let (st, b) = s.get("secret/data/wrapped/other", Some(&token));
    assert_eq!(st, 403, "wrapping token reading KV: {b}");
    // Unwrapping with the root token still works afterwards.
    let (st, b) = unwrap_body(&s, &token);
    assert_eq!(st, 200, "{b}");
}

#[test]
fn wrapped_token_create_yields_a_working_token() {
    let s = TestServer::dev();
    let (st, b) = s.request_with(
        Method::POST,
        "auth/token/create",
        s.root(),
        Some(json!({"policies": ["default"], "ttl": "1h"})),
        &[("X-Vault-Wrap-TTL", "5m")],
    );
    assert_eq!(st, 200, "{b}");
    assert!(
        b["auth"].is_null(),
        "auth must be wrapped, not returned: {b}"
    );
    let info = &b["wrap_info"];
    assert_eq!(info["creation_path"], json!("auth/token/create"));
    assert!(
        info["wrapped_accessor"]
            .as_str()
            .is_some_and(|a| !a.is_empty()),
        "wrapped_accessor: {b}"
    );
    let wt = info["token"].as_str().unwrap().to_owned();

    let (st, b) = unwrap_body(&s, &wt);
    assert_eq!(st, 200, "{b}");
    let new_token = b["auth"]["client_token"].as_str().unwrap().to_owned();
    assert_eq!(b["auth"]["accessor"], info["wrapped_accessor"]);
    let (st, b) = s.get("auth/token/lookup-self", Some(&new_token));
    assert_eq!(st, 200, "unwrapped token must work: {b}");
    assert_eq!(b["data"]["policies"], json!(["default"]));
}

#[test]
fn wrapped_kv_read_unwraps_to_the_secret() {
    let s = TestServer::dev();
    s.kv_put("wrapped/read", json!({"api_key": "abc123"}));
    let (st, b) = s.request_with(
        Method::GET,
        "secret/data/wrapped/read",
        s.root(),
        None,
        &[("X-Vault-Wrap-TTL", "2m")],
    );
    assert_eq!(st, 200, "{b}");
    assert!(b["data"].is_null(), "{b}");
    let wt = b["wrap_info"]["token"].as_str().unwrap().to_owned();
    assert_eq!(
        b["wrap_info"]["creation_path"],
        json!("secret/data/wrapped/read")
    );
    let (st, b) = unwrap_body(&s, &wt);
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["data"]["data"], json!({"api_key": "abc123"}));
}

#[test]
fn rewrap_issues_a_new_token_and_invalidates_the_old() {
    let s = TestServer::dev();
    let info = wrap(&s, json!({"rotate": "me"}), "10m");
    let old = info["token"].as_str().unwrap().to_owned();
    let (st, b) = s.post("sys/wrapping/rewrap", s.root(), json!({ "token": old }));
    assert_eq!(st, 200, "rewrap: {b}");
    let new = b["wrap_info"]["token"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    assert!(b["data"].is_null(), "rewrap must not reveal the data: {b}");
    assert_eq!(b["wrap_info"]["creation_path"], json!("sys/wrapping/wrap"));

    let (st, b) = unwrap_body(&s, &old);
    assert_eq!(st, 400, "old token after rewrap: {b}");
    let (st, b) = unwrap_body(&s, &new);
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["data"], json!({"rotate": "me"}));
}

#[test]
fn expired_wrapping_token_is_refused() {
    let s = TestServer::dev();
    let info = wrap(&s, json!({"short": "lived"}), "1s");
    let token = info["token"].as_str().unwrap().to_owned();
    assert_eq!(info["ttl"], json!(1));
    let gone = poll_until(Duration::from_secs(10), || {
        s.post("sys/wrapping/lookup", None, json!({ "token": token }))
            .0
            == 400
    });
    assert!(gone, "a 1s wrapping token is still valid after 10s");
    let (st, b) = unwrap_body(&s, &token);
    assert_eq!(st, 400, "unwrap of expired token: {b}");
    assert!(b["data"].is_null());
}

#[test]
fn wrap_requires_a_ttl_header_and_a_body() {
    let s = TestServer::dev();
    let (st, b) = s.post("sys/wrapping/wrap", s.root(), json!({"a": 1}));
    assert_eq!(st, 400, "wrap without TTL header: {b}");
    let (st, b) = s.request_with(
        Method::POST,
        "sys/wrapping/wrap",
        s.root(),
        Some(json!({"a": 1})),
        &[("X-Vault-Wrap-TTL", "not-a-duration")],
    );
    assert_eq!(st, 400, "bad TTL header: {b}");
}
