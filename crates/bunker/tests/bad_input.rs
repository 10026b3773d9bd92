//! Hostile and malformed requests: each gets the right 4xx, nothing is stored, and the server
//! stays healthy with earlier data intact.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use bunker_testkit as common;

use std::io::Cursor;

use common::{errors, raw_http, ServerOptions, TestServer};
use reqwest::blocking::Body;
use reqwest::Method;
use serde_json::{json, Value};

const MAX_REQUEST_SIZE: usize = 1024;

/// A config-file server with `max_request_size = 1024`, uninitialised.
fn small_limit_server() -> TestServer {
    TestServer::with_config(ServerOptions {
        listener_extra: format!("  max_request_size = {MAX_REQUEST_SIZE}"),
        ..Default::default()
    })
}

/// Initialised (1 share), unsealed, KV v2 mounted, a canary secret written.
fn ready_server() -> TestServer {
    let mut s = small_limit_server();
    s.init_unseal(1, 1);
    s.mount_kv2();
    s.kv_put("canary", json!({"alive": "yes"}));
    s
}

/// The server answers health, is unsealed, and the canary secret is intact.
fn assert_intact(s: &TestServer) {
    s.assert_healthy();
    assert_eq!(s.kv_get("canary"), (200, json!({"alive": "yes"})), "canary");
}

fn assert_not_stored(s: &TestServer, name: &str) {
    let (st, b) = s.get(&format!("secret/data/{name}"), s.root());
    assert_eq!(st, 404, "{name} must not exist: {b}");
}

fn assert_400_with_errors(what: &str, st: u16, b: &Value) {
    assert_eq!(st, 400, "{what}: {b}");
    assert!(!errors(b).is_empty(), "{what}: 400 without errors: {b}");
}

#[test]
fn malformed_and_non_object_json_is_400() {
    let s = ready_server();
    let cases: &[(&str, &[u8])] = &[
        ("truncated object", br#"{"data": {"#),
        ("not json", b"hello"),
        ("trailing garbage", br#"{"data": {"a": "b"}} xyz"#),
        ("json array", br#"[1, 2, 3]"#),
        ("array of objects", br#"[{"data": {"a": "b"}}]"#),
        ("json string", br#""just a string""#),
        ("json number", b"42"),
        ("invalid utf-8", b"{\"data\": {\"a\": \"\xff\xfe\"}}"),
    ];
    for (i, (what, body)) in cases.iter().enumerate() {
        let name = format!("bad-json-{i}");
        let (st, b) = s.raw(
            Method::PUT,
            &format!("secret/data/{name}"),
            s.root(),
            body.to_vec(),
        );
        assert_400_with_errors(what, st, &b);
        assert_not_stored(&s, &name);
        assert_intact(&s);
    }
    // Malformed JSON on a sys endpoint too.
    let (st, b) = s.raw(Method::PUT, "sys/policies/acl/x", s.root(), b"{".to_vec());
    assert_400_with_errors("sys malformed", st, &b);
    assert_intact(&s);
}

#[test]
fn oversized_body_is_413_and_not_stored() {
    let s = ready_server();
    // Just under the limit works.
    let small = json!({"data": {"v": "s".repeat(MAX_REQUEST_SIZE / 2)}});
    let (st, b) = s.put("secret/data/fits", s.root(), small);
    assert_eq!(st, 200, "body under the limit: {b}");

    // Over the limit, with Content-Length.
    let big = json!({"data": {"v": "b".repeat(MAX_REQUEST_SIZE * 4)}});
    let (st, b) = s.put("secret/data/too-big", s.root(), big);
    assert_eq!(st, 413, "oversized body: {b}");
    assert_not_stored(&s, "too-big");
    assert_intact(&s);

    // Over the limit, chunked (no Content-Length).
    let payload =
        serde_json::to_vec(&json!({"data": {"v": "c".repeat(MAX_REQUEST_SIZE * 4)}})).unwrap();
    // A separate client: the server may close this connection after refusing the body, and
    // that must not poison the pooled connections of the main client.
    let chunk_client = reqwest::blocking::Client::builder()
        .no_proxy()
        .build()
        .unwrap();
    let resp = chunk_client
        .put(s.url("secret/data/too-big-chunked"))
        .header("X-Vault-Token", &s.root_token)
        .header("Content-Type", "application/json")
        .body(Body::new(Cursor::new(payload)))
        .send()
        .expect("chunked request");
    assert_eq!(resp.status().as_u16(), 413, "oversized chunked body");
    assert_not_stored(&s, "too-big-chunked");

    // Far over the limit (256 KiB): the client must still get the 413, not a reset.
    let huge = json!({"data": {"v": "h".repeat(256 * 1024)}});
    let huge_client = reqwest::blocking::Client::builder()
        .no_proxy()
        .build()
        .unwrap();
    let resp = huge_client
        .put(s.url("secret/data/huge"))
        .header("X-Vault-Token", &s.root_token)
        .json(&huge)
        .send();
    match resp {
        Ok(r) => assert_eq!(r.status().as_u16(), 413, "256 KiB body"),
        Err(e) => panic!("256 KiB body: no 413 response, transport error instead: {e:?}"),
    }
    assert_not_stored(&s, "huge");

    // Oversized but on an unauthenticated endpoint.
    let (st, _) = s.put(
        "sys/unseal",
        None,
        json!({"key": "0".repeat(MAX_REQUEST_SIZE * 2)}),
    );
    assert_eq!(st, 413);
    assert_intact(&s);
}

#[test]
fn unknown_paths_are_404() {
    let s = ready_server();
    for path in [
        "nonexistent/path",
        "sys/not-a-sys-endpoint",
        "auth/token/nope",
    ] {
        let (st, b) = s.get(path, s.root());
        assert_eq!(st, 404, "GET {path}: {b}");
        let (st, b) = s.put(path, s.root(), json!({"a": 1}));
        assert_eq!(st, 404, "PUT {path}: {b}");
    }
    // Outside /v1/ entirely.
    let resp = s
        .client()
        .get(format!("{}/v2/secret/data/canary", s.addr()))
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);
    // A KV key that was never written.
    let (st, _) = s.get("secret/data/never-written", s.root());
    assert_eq!(st, 404);
    assert_intact(&s);
}

#[test]
fn unsupported_methods_are_405() {
    let s = ready_server();
    // PATCH is a real operation in Vault, but sys/mounts has no patch handler: Vault answers
    // logical.ErrUnsupportedOperation with 405.
    let (st, b) = s.request(Method::PATCH, "sys/mounts", s.root(), Some(json!({"a": 1})));
    assert_eq!(st, 405, "PATCH sys/mounts: {b}");
    // A method HTTP does not define: Vault's buildLogicalRequest answers 405.
    let brew = Method::from_bytes(b"BREW").unwrap();
    let (st, b) = s.request(brew, "sys/mounts", s.root(), None);
    assert_eq!(st, 405, "BREW sys/mounts: {b}");
    // OPTIONS (no CORS configured): must not be treated as a read or write, nor crash.
    let (st, b) = s.request(Method::OPTIONS, "sys/mounts", s.root(), None);
    assert!(
        st == 405 || st == 204 || st == 200,
        "OPTIONS sys/mounts: {st} {b}"
    );
    assert!(
        b.get("data").is_none_or(Value::is_null),
        "OPTIONS leaked data: {b}"
    );
    let (st, b) = s.get("sys/mounts", s.root());
    assert_eq!(st, 200, "{b}");
    assert!(b["data"]["secret/"].is_object(), "mount table intact: {b}");
    assert_intact(&s);
}

/// Vault's seal endpoints check the method themselves (http/sys_seal.go): seal-status
/// answers only GET, unseal only PUT/POST; anything else is 405.
#[test]
fn seal_endpoints_reject_other_methods() {
    let s = ready_server();
    let (st, b) = s.get("sys/unseal", None);
    assert_eq!(st, 405, "GET sys/unseal: {b}");
    let (st, b) = s.request(Method::DELETE, "sys/seal-status", s.root(), None);
    assert_eq!(st, 405, "DELETE sys/seal-status: {b}");
    let (st, b) = s.put("sys/seal-status", None, json!({}));
    assert_eq!(st, 405, "PUT sys/seal-status: {b}");
    assert_intact(&s);
}

/// Vault (http/sys_seal.go): `reset` on an unsealed server is a 400 "vault is unsealed".
#[test]
fn unseal_reset_on_unsealed_server_is_400() {
    let s = ready_server();
    let (st, b) = s.put("sys/unseal", None, json!({"reset": true}));
    assert_400_with_errors("reset while unsealed", st, &b);
    assert_intact(&s);
}

#[test]
fn wrong_types_are_400() {
    let mut s = small_limit_server();
    // Before init: a wrongly-typed init is refused and leaves the server uninitialised.
    for body in [
        json!({"secret_shares": "abc", "secret_threshold": 1}),
        json!({"secret_shares": 1, "secret_threshold": [1]}),
        json!({"secret_shares": -1, "secret_threshold": 1}),
        json!({"secret_shares": 1.5, "secret_threshold": 1}),
        json!({"secret_shares": 2, "secret_threshold": 3}),
        json!({"secret_shares": 0, "secret_threshold": 0}),
    ] {
        let (st, b) = s.put("sys/init", None, body.clone());
        assert_400_with_errors(&format!("init {body}"), st, &b);
        let (_, init) = s.get("sys/init", None);
        assert_eq!(init["initialized"], json!(false), "after {body}");
    }
    s.init_unseal(1, 1);
    s.mount_kv2();
    s.kv_put("canary", json!({"alive": "yes"}));

    let (st, b) = s.put("secret/data/typed", s.root(), json!({"data": "not-a-map"}));
    assert_400_with_errors("kv data as string", st, &b);
    assert_not_stored(&s, "typed");
    let (st, b) = s.put(
        "secret/data/typed",
        s.root(),
        json!({"data": {"a": 1}, "options": {"cas": "x"}}),
    );
    assert_400_with_errors("kv cas as string", st, &b);
    assert_not_stored(&s, "typed");

    let (st, b) = s.post("auth/token/create", s.root(), json!({"ttl": "banana"}));
    assert_400_with_errors("token ttl banana", st, &b);
    let (st, b) = s.post("auth/token/create", s.root(), json!({"num_uses": "many"}));
    assert_400_with_errors("token num_uses string", st, &b);
    let (st, b) = s.post("auth/token/create", s.root(), json!({"policies": {"a": 1}}));
    assert_400_with_errors("token policies as map", st, &b);

    let (st, b) = s.put(
        "sys/policies/acl/broken",
        s.root(),
        json!({"policy": "path { nope"}),
    );
    assert_400_with_errors("unparseable policy", st, &b);
    let (st, _) = s.get("sys/policies/acl/broken", s.root());
    assert_eq!(st, 404, "broken policy must not be stored");

    let (st, b) = s.post("sys/mounts/typed", s.root(), json!({"type": 42}));
    assert_400_with_errors("mount type as number", st, &b);
    let (_, mounts) = s.get("sys/mounts", s.root());
    assert!(mounts["data"]["typed/"].is_null(), "{mounts}");
    assert_intact(&s);
}

#[test]
fn bad_tokens_are_403() {
    let s = ready_server();
    let denied = json!({"errors": ["permission denied"]});
    for token in [
        "",
        "hvs.AAAAAAAAAAAAAAAAAAAAAAAA",
        "root",
        "s.x",
        &"z".repeat(900),
    ] {
        let (st, b) = s.get("secret/data/canary", Some(token));
        assert_eq!((st, b), (403, denied.clone()), "token {token:?}");
        let (st, b) = s.put("secret/data/stolen", Some(token), json!({"data": {"a": 1}}));
        assert_eq!(st, 403, "write with token {token:?}: {b}");
    }
    assert_not_stored(&s, "stolen");
    assert_intact(&s);
}

#[test]
fn path_traversal_is_400() {
    let s = ready_server();
    let port = s.port();
    let token = s.root_token.clone();
    for path in [
        "/v1/secret/data/../../sys/mounts",
        "/v1/secret/data/../../sys/policies/acl/pwn",
        "/v1/secret/data/./canary",
        "/v1/secret/../sys/seal",
        // Percent-encoded dots and slashes decode to the same traversal.
        "/v1/secret/data/%2e%2e/%2e%2e/sys/mounts",
        "/v1/secret/data/%2E%2E%2F%2E%2E%2Fsys%2Fpolicies%2Facl%2Fpwn",
    ] {
        let body = br#"{"data": {"a": "b"}, "policy": "path \"*\" { capabilities = [\"sudo\"] }"}"#;
        for method in ["GET", "PUT"] {
            let head = format!(
                "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-Vault-Token: {token}\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let (st, b) = raw_http(port, &head, body);
            assert_eq!(st, 400, "{method} {path}: {b}");
        }
    }
    // Nothing reached sys/: no policy written, still unsealed.
    let (st, _) = s.get("sys/policies/acl/pwn", s.root());
    assert_eq!(st, 404);
    assert_intact(&s);
}

#[test]
fn wrong_unseal_keys_are_400() {
    let s = ready_server();
    let key = s.keys[0].clone();
    let (st, b) = s.put("sys/seal", s.root(), json!({}));
    assert!(st == 204 || st == 200, "seal: {st} {b}");

    // Same length, wrong bytes.
    let wrong: String = hex_flip(&key);
    let (st, b) = s.put("sys/unseal", None, json!({ "key": wrong }));
    assert_400_with_errors("wrong key", st, &b);
    // Not hex or base64; too short; too long; wrong type.
    for bad in [
        json!("!!!not a key!!!"),
        json!("abcd"),
        json!(format!("{key}00")),
        json!(12345),
    ] {
        let (st, b) = s.put("sys/unseal", None, json!({ "key": bad }));
        assert_400_with_errors(&format!("key {bad}"), st, &b);
    }
    let (st, b) = s.put("sys/unseal", None, json!({}));
    assert_400_with_errors("no key", st, &b);
    let (_, status) = s.get("sys/seal-status", None);
    assert_eq!(status["sealed"], json!(true));
    assert_eq!(status["progress"], json!(0), "{status}");

    s.unseal_with(&[key]);
    assert_intact(&s);
}

fn hex_flip(hex_key: &str) -> String {
    (0..hex_key.len())
        .step_by(2)
        .map(|i| {
            let b = u8::from_str_radix(&hex_key[i..i + 2], 16).unwrap();
            format!("{:02x}", b ^ 0x5a)
        })
        .collect()
}
