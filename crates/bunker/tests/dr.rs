//! DR replication end to end: two (or three) real `bunker` processes on loopback.
//!
//! Every wait polls `sys/replication/dr/status` against a deadline; nothing sleeps.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{free_port, poll_until, ServerOptions, TestServer};
use serde_json::{json, Value};

const CONVERGE: Duration = Duration::from_secs(60);
const DR_SECONDARY_ERROR: &str = "path disabled in replication DR secondary mode";

/// A config-file server with a cluster port, initialised 5/3 and unsealed.
fn dr_server() -> TestServer {
    let cluster_port = free_port();
    let mut s = TestServer::with_config(ServerOptions {
        listener_extra: format!("  cluster_address = \"127.0.0.1:{cluster_port}\""),
        ..Default::default()
    });
    s.init_unseal(5, 3);
    s
}

fn dr_status(s: &TestServer) -> Value {
    let (code, body) = s.get("sys/replication/dr/status", None);
    assert_eq!(code, 200, "dr status: {body}");
    body["data"].clone()
}

fn enable_primary(p: &TestServer) {
    let (code, body) = p.post("sys/replication/dr/primary/enable", p.root(), json!({}));
    assert_eq!(code, 204, "primary enable: {body}");
}

fn activation_token(p: &TestServer, id: &str) -> String {
    let (code, body) = p.post(
        "sys/replication/dr/primary/secondary-token",
        p.root(),
        json!({ "id": id, "ttl": "10m" }),
    );
    assert_eq!(code, 200, "secondary-token: {body}");
    assert!(
        body["data"].is_null(),
        "token must only be in wrap_info: {body}"
    );
    body["wrap_info"]["token"]
        .as_str()
        .expect("wrap_info.token")
        .to_owned()
}

fn enable_secondary(s: &TestServer, token: &str) {
    let (code, body) = s.post(
        "sys/replication/dr/secondary/enable",
        s.root(),
        json!({ "token": token }),
    );
    assert_eq!(code, 204, "secondary enable: {body}");
}

/// Wait until `s` streams from `p` with the same WAL index and Merkle root.
fn wait_converged(p: &TestServer, s: &TestServer) {
    let mut last = (Value::Null, Value::Null);
    let ok = poll_until(CONVERGE, || {
        let ps = dr_status(p);
        let ss = dr_status(s);
        let done = ss["state"] == "stream-wals"
            && ss["last_remote_wal"] == ps["last_wal"]
            && ss["merkle_root"] == ps["merkle_root"];
        last = (ps, ss);
        done
    });
    assert!(
        ok,
        "secondary did not converge:\nprimary {}\nsecondary {}",
        last.0, last.1
    );
}

/// The response-wrapping token inside an activation token (`bdr1.` + base64url JSON).
fn inner_wrapping_token(activation: &str) -> String {
    use base64::Engine as _;
    let body = activation
        .strip_prefix("bdr1.")
        .expect("activation token prefix");
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(body)
        .expect("base64url");
    let v: Value = serde_json::from_slice(&json).expect("json");
    v["token"].as_str().expect("token").to_owned()
}

fn promote_with_keys(s: &TestServer, keys: &[String]) -> Value {
    let mut last = Value::Null;
    for k in keys.iter().take(3) {
        let (code, body) = s.post(
            "sys/replication/dr/secondary/promote",
            None,
            json!({ "key": k }),
        );
        assert_eq!(code, 200, "promote: {body}");
        last = body;
    }
    last
}

fn assert_dr_refused(s: &TestServer, path: &str, token: Option<&str>) {
    let (code, body) = s.get(path, token);
    assert_eq!(code, 400, "{path} on a DR secondary: {body}");
    assert_eq!(common::errors(&body), vec![DR_SECONDARY_ERROR.to_owned()]);
}

#[test]
fn secondary_converges_refuses_clients_and_promotes_with_primary_keys() {
    let p = dr_server();
    p.mount_kv2();
    let s = dr_server();
    enable_primary(&p);
    let token = activation_token(&p, "site-b");
    enable_secondary(&s, &token);

    // Data written both before and after the secondary connected must arrive.
    for i in 0..1000 {
        p.kv_put(
            &format!("app/{i}"),
            json!({ "n": i.to_string(), "pad": "x".repeat(64) }),
        );
    }
    let (code, body) = p.put(
        "sys/policies/acl/reader",
        p.root(),
        json!({"policy": "path \"secret/data/*\" { capabilities = [\"read\"] }"}),
    );
    assert_eq!(code, 204, "policy: {body}");
    let reader = p.create_token(json!({"policies": ["reader"], "ttl": "1h"}));
    wait_converged(&p, &s);

    let status = dr_status(&s);
    assert_eq!(status["mode"], "secondary");
    assert_eq!(status["cluster_id"], dr_status(&p)["cluster_id"]);
    assert_eq!(status["secondary_id"], "site-b");
    let primary = dr_status(&p);
    assert_eq!(primary["known_secondaries"], json!(["site-b"]));
    assert_eq!(primary["secondaries"][0]["connection_status"], "connected");

    // A DR secondary refuses client requests, reads included, and says so in health.
    assert_dr_refused(&s, "secret/data/app/1", p.root());
    assert_dr_refused(&s, "sys/mounts", p.root());
    let (code, health) = s.get("sys/health", None);
    assert_eq!(code, 472, "health on a DR secondary: {health}");
    assert_eq!(health["replication_dr_mode"], "secondary");

    // Promote with the PRIMARY's unseal keys; everything is there.
    let done = promote_with_keys(&s, &p.keys);
    assert_eq!(done["data"]["complete"], json!(true), "{done}");
    assert_eq!(dr_status(&s)["mode"], "primary");
    for i in (0..1000).step_by(37) {
        let (code, body) = s.get(&format!("secret/data/app/{i}"), p.root());
        assert_eq!(code, 200, "read after promotion: {body}");
        assert_eq!(body["data"]["data"]["n"], json!(i.to_string()));
        let (code, body) = s.get(&format!("secret/data/app/{i}"), Some(&reader));
        assert_eq!(code, 200, "non-root token made on the primary: {body}");
    }
    let (code, _) = s.put(
        "secret/data/after",
        Some(&reader),
        json!({"data": {"a": "b"}}),
    );
    assert_eq!(code, 403, "the reader policy replicated too");
    let (code, body) = s.put("secret/data/after", p.root(), json!({"data": {"a": "b"}}));
    assert_eq!(code, 200, "promoted cluster accepts writes: {body}");
}

#[test]
fn activation_tokens_are_single_use_sudo_only_and_revocation_disconnects() {
    let p = dr_server();
    enable_primary(&p);

    // Minting needs sudo on the path, not only update.
    let (code, _) = p.put(
        "sys/policies/acl/no-sudo",
        p.root(),
        json!({"policy": "path \"sys/replication/*\" { capabilities = [\"create\", \"read\", \"update\"] }"}),
    );
    assert_eq!(code, 204);
    let weak = p.create_token(json!({"policies": ["no-sudo"]}));
    let (code, body) = p.post(
        "sys/replication/dr/primary/secondary-token",
        Some(&weak),
        json!({"id": "x"}),
    );
    assert_eq!(code, 403, "secondary-token without sudo: {body}");

    let s = dr_server();
    let token = activation_token(&p, "site-b");
    enable_secondary(&s, &token);
    wait_converged(&p, &s);

    // The same activation token cannot be used twice.
    let other = dr_server();
    let (code, body) = other.post(
        "sys/replication/dr/secondary/enable",
        other.root(),
        json!({ "token": token }),
    );
    assert_eq!(code, 400, "reusing an activation token: {body}");

    // An expired activation token is refused.
    let (code, body) = p.post(
        "sys/replication/dr/primary/secondary-token",
        p.root(),
        json!({"id": "site-late", "ttl": "1s"}),
    );
    assert_eq!(code, 200, "{body}");
    let late = body["wrap_info"]["token"].as_str().unwrap().to_owned();
    let inner = inner_wrapping_token(&late);
    let expired = poll_until(Duration::from_secs(10), || {
        p.post("sys/wrapping/lookup", None, json!({ "token": inner }))
            .0
            == 400
    });
    assert!(
        expired,
        "the wrapping token behind the activation token never expired"
    );
    let (code, body) = other.post(
        "sys/replication/dr/secondary/enable",
        other.root(),
        json!({ "token": late }),
    );
    assert_eq!(
        code, 400,
        "an expired activation token must be refused: {body}"
    );

    // Revocation closes the live connection quickly and for good.
    let (code, body) = p.post(
        "sys/replication/dr/primary/revoke-secondary",
        p.root(),
        json!({"id": "site-b"}),
    );
    assert_eq!(code, 204, "{body}");
    let cut = poll_until(Duration::from_secs(1), || {
        let st = dr_status(&s);
        st["connection_state"] != "ready"
    });
    assert!(cut, "revoked secondary still connected: {}", dr_status(&s));
    assert_eq!(dr_status(&p)["known_secondaries"], json!(["site-late"]));
    let refused = poll_until(Duration::from_secs(15), || {
        dr_status(&s)["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("revoked"))
    });
    assert!(refused, "reconnect not refused: {}", dr_status(&s));
}
