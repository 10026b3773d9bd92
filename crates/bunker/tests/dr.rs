//! DR replication end to end: activation, convergence and revocation, with two (or more) real
//! `bunker` processes on loopback. Failover, failback and fault tests are in `dr_failover.rs`;
//! the helpers both use are in `crates/testkit/src/dr.rs`.
//!
//! Every wait polls `sys/replication/dr/status` against a deadline; nothing sleeps.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use bunker_testkit as common;

use std::time::Duration;

use common::dr::{
    activation_token, adopt_credentials, assert_dr_refused, dr_server, dr_status, enable_primary,
    enable_secondary, inner_wrapping_token, promote_with_keys, wait_converged, CONVERGE,
};
use common::{errors, poll_until, TestServer};
use serde_json::json;

#[test]
fn secondary_converges_refuses_clients_and_promotes_with_primary_keys() {
    let p = dr_server();
    p.mount_kv2();
    let mut s = dr_server();
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
    // A wrapped activation token carries no key that decrypts the data: the secondary
    // replicates ciphertext while sealed, until the primary's key shares open it.
    let (code, health) = s.get("sys/health", None);
    assert_eq!(code, 503, "health on a sealed DR secondary: {health}");
    assert_eq!(health["replication_dr_mode"], "secondary");
    adopt_credentials(&mut s, &p);
    s.unseal();
    let (code, health) = s.get("sys/health", None);
    assert_eq!(code, 472, "health on an unsealed DR secondary: {health}");
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

    // Revocation closes the live connection for good: when revoke-secondary returns, the
    // primary's session has stopped and the peer is gone from its status; the secondary sees
    // the close on its next read.
    let (code, body) = p.post(
        "sys/replication/dr/primary/revoke-secondary",
        p.root(),
        json!({"id": "site-b"}),
    );
    assert_eq!(code, 204, "{body}");
    let peers = dr_status(&p)["secondaries"].clone();
    assert!(
        peers
            .as_array()
            .is_some_and(|a| a.iter().all(|x| x["node_id"] != "site-b")),
        "the revoked secondary is still a peer of the primary: {peers}"
    );
    let cut = poll_until(CONVERGE, || dr_status(&s)["connection_state"] != "ready");
    assert!(cut, "revoked secondary still connected: {}", dr_status(&s));
    assert_eq!(dr_status(&p)["known_secondaries"], json!(["site-late"]));
    let refused = poll_until(Duration::from_secs(15), || {
        dr_status(&s)["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("was revoked"))
    });
    assert!(refused, "reconnect not refused: {}", dr_status(&s));
}

/// An API address nothing listens on: a secondary that tried to unwrap through it would fail.
const DEAD_API_ADDR: &str = "http://127.0.0.1:1";

/// `generate-public-key` on a server about to become a secondary; returns its public key.
fn generate_public_key(s: &TestServer) -> String {
    let (code, body) = s.post(
        "sys/replication/dr/secondary/generate-public-key",
        s.root(),
        json!({}),
    );
    assert_eq!(code, 200, "generate-public-key: {body}");
    body["data"]["secondary_public_key"]
        .as_str()
        .filter(|k| !k.is_empty())
        .unwrap_or_else(|| panic!("no secondary_public_key: {body}"))
        .to_owned()
}

/// An activation token for `id` encrypted to `public_key`: returned directly, not wrapped.
fn encrypted_activation_token(p: &TestServer, id: &str, public_key: &str) -> String {
    let (code, body) = p.post(
        "sys/replication/dr/primary/secondary-token",
        p.root(),
        json!({ "id": id, "secondary_public_key": public_key }),
    );
    assert_eq!(code, 200, "secondary-token with a public key: {body}");
    assert!(
        body["wrap_info"].is_null(),
        "an encrypted token is not wrapped: {body}"
    );
    let token = body["data"]["token"]
        .as_str()
        .expect("data.token")
        .to_owned();
    assert!(
        token.starts_with("bdr1e."),
        "encrypted token prefix: {token}"
    );
    token
}

/// Enable `s` as a secondary with `token`, pointing it at a dead primary API address.
fn enable_without_api(s: &TestServer, token: &str) -> (u16, serde_json::Value) {
    s.post(
        "sys/replication/dr/secondary/enable",
        s.root(),
        json!({ "token": token, "primary_api_addr": DEAD_API_ADDR }),
    )
}

#[test]
fn activation_by_secondary_public_key_without_the_primary_api() {
    let p = dr_server();
    p.mount_kv2();
    p.kv_put("before", json!({ "n": "0" }));
    enable_primary(&p);

    // S hands its public key to P's operator and gets back a token only S can open; S enables
    // without ever reaching P's API.
    let s = dr_server();
    let token = encrypted_activation_token(&p, "site-b", &generate_public_key(&s));
    let (code, body) = enable_without_api(&s, &token);
    assert_eq!(
        code, 204,
        "secondary enable with an encrypted token: {body}"
    );
    p.kv_put("after", json!({ "n": "1" }));
    wait_converged(&p, &s);
    let st = dr_status(&s);
    assert_eq!(st["mode"], "secondary", "{st}");
    assert_eq!(st["secondary_id"], "site-b", "{st}");
    assert_eq!(st["cluster_id"], dr_status(&p)["cluster_id"], "{st}");

    // The same token again on S, now a secondary: refused, and S keeps following P.
    let (code, body) = enable_without_api(&s, &token);
    assert_eq!(code, 400, "reusing an encrypted activation token: {body}");
    p.kv_put("after-reuse", json!({ "n": "2" }));
    wait_converged(&p, &s);
    assert_eq!(dr_status(&s)["secondary_id"], "site-b");

    // A token encrypted to T's key is useless to U, which generated its own key; U is untouched.
    let t = dr_server();
    let token_for_t = encrypted_activation_token(&p, "site-t", &generate_public_key(&t));
    let u = dr_server();
    generate_public_key(&u);
    let (code, body) = enable_without_api(&u, &token_for_t);
    assert_eq!(code, 400, "a token encrypted to another key: {body}");
    assert!(
        errors(&body)
            .iter()
            .any(|e| e.contains("not encrypted to this secondary's public key")),
        "{body}"
    );
    assert_eq!(dr_status(&u)["mode"], "disabled", "{}", dr_status(&u));
    let (code, body) = u.get("sys/mounts", u.root());
    assert_eq!(code, 200, "U still serves its own data: {body}");
}

/// A write acknowledged by a DR primary names the WAL index a secondary must reach to hold it.
#[test]
fn primary_writes_carry_a_wal_index_bound() {
    let p = dr_server();
    p.mount_kv2();
    let write = |name: &str| {
        let resp = p
            .client()
            .post(p.url(&format!("secret/data/{name}")))
            .header("x-vault-token", p.root().unwrap())
            .json(&json!({"data": {"v": name}}))
            .send()
            .unwrap();
        assert!(resp.status().is_success(), "{name}: {}", resp.status());
        resp.headers()
            .get("x-bunker-wal-index")
            .map(|v| v.to_str().unwrap().parse::<u64>().unwrap())
    };
    assert_eq!(
        write("before"),
        None,
        "no WAL before replication is enabled"
    );
    enable_primary(&p);
    let first = write("one").expect("a primary's write names its WAL bound");
    let second = write("two").expect("a primary's write names its WAL bound");
    assert!(second > first, "{first} then {second}");
    assert!(dr_status(&p)["last_wal"].as_u64().unwrap() >= second);
    let read = p
        .client()
        .get(p.url("secret/data/one"))
        .header("x-vault-token", p.root().unwrap())
        .send()
        .unwrap();
    assert!(
        read.headers().get("x-bunker-wal-index").is_none(),
        "reads carry none"
    );
    // Under concurrent writers, each write names its own entry, not the last one committed
    // when it was acknowledged (writes committed in one group would all name the group's last).
    let indices: Vec<u64> = std::thread::scope(|scope| {
        let writers: Vec<_> = (0..8)
            .map(|w| {
                let write = &write;
                scope.spawn(move || {
                    (0..25)
                        .map(|i| write(&format!("w{w}-{i}")).expect("a WAL index"))
                        .collect::<Vec<u64>>()
                })
            })
            .collect();
        writers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    let distinct: std::collections::BTreeSet<u64> = indices.iter().copied().collect();
    assert_eq!(distinct.len(), indices.len(), "each write its own index");
    assert!(distinct.iter().all(|&i| i > second));
    let second = *distinct.last().unwrap();

    let s = dr_server();
    enable_secondary(&s, &activation_token(&p, "site-b"));
    assert!(
        poll_until(Duration::from_secs(30), || {
            dr_status(&s)["last_remote_wal"].as_u64().unwrap_or(0) >= second
        }),
        "the secondary reaches the bound: {}",
        dr_status(&s)
    );
}

#[test]
fn reindex_recomputes_the_tree_and_status_reports_it() {
    let p = dr_server();
    p.mount_kv2();
    for i in 0..20 {
        p.kv_put(&format!("app/{i}"), json!({"n": i.to_string()}));
    }
    enable_primary(&p);
    let before = dr_status(&p);
    assert_eq!(before["reindex_in_progress"], json!(false), "{before}");
    assert_eq!(before["last_reindex_epoch"], json!("0"), "never reindexed");

    // Root-protected, as in Vault: a token without sudo is refused.
    let (code, body) = p.post("sys/replication/reindex", Some("not-a-token"), json!({}));
    assert!(code == 403 || code == 400, "{code} {body}");
    let (code, body) = p.post("sys/replication/reindex", p.root(), json!({}));
    assert_eq!(code, 200, "{body}");
    let keys = body["data"]["keys"].as_u64().unwrap();
    assert!(keys >= 40, "two keys per KV v2 secret: {body}");
    let root = body["data"]["merkle_root"].as_str().unwrap().to_owned();
    assert_eq!(root.len(), 64, "{body}");

    let after = dr_status(&p);
    assert_eq!(after["reindex_in_progress"], json!(false), "{after}");
    let epoch: u64 = after["last_reindex_epoch"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(now.abs_diff(epoch) < 120, "{epoch} vs {now}");
    // merkle-check recomputes the same tree (nothing was written since).
    let (code, check) = p.post("sys/replication/merkle-check", p.root(), json!({}));
    assert_eq!(code, 200, "{check}");
    assert_eq!(check["data"]["merkle_root"], json!(root));
}
