//! Tokens and ACL policies: path capabilities, TTL expiry, use limits, revocation trees,
//! batch tokens, token roles, sudo paths and the Bearer header.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use bunker_testkit as common;

use std::time::Duration;

use common::{poll_until, TestServer};
use reqwest::Method;
use serde_json::{json, Value};

const APP_POLICY: &str = r#"
path "secret/data/app/*" {
  capabilities = ["read", "create", "update"]
}
"#;

const CREATOR_POLICY: &str = r#"
path "auth/token/create" {
  capabilities = ["update"]
}
"#;

fn denied() -> Value {
    json!({"errors": ["permission denied"]})
}

fn lookup_self(s: &TestServer, token: &str) -> (u16, Value) {
    s.get("auth/token/lookup-self", Some(token))
}

/// `create` and `update` are told apart by the KV v2 existence check (the secret's metadata
/// present or not, answered by the barrier without decrypting it): each capability alone
/// allows only its own kind of write, as in Vault.
#[test]
fn create_and_update_capabilities_follow_whether_the_secret_exists() {
    let s = TestServer::dev();
    s.write_policy(
        "creator",
        r#"path "secret/data/*" { capabilities = ["create"] }"#,
    );
    s.write_policy(
        "updater",
        r#"path "secret/data/*" { capabilities = ["update"] }"#,
    );
    s.kv_put("existing", json!({"v": 1}));
    let creator = s.create_token(json!({"policies": ["creator"]}));
    let updater = s.create_token(json!({"policies": ["updater"]}));

    let (st, b) = s.put("secret/data/new", Some(&creator), json!({"data": {"v": 1}}));
    assert_eq!(st, 200, "create of a new secret: {b}");
    let (st, b) = s.put("secret/data/new", Some(&creator), json!({"data": {"v": 2}}));
    assert_eq!((st, b), (403, denied()), "create-only cannot overwrite");
    let (st, b) = s.put(
        "secret/data/existing",
        Some(&creator),
        json!({"data": {"v": 2}}),
    );
    assert_eq!(
        (st, b),
        (403, denied()),
        "create-only on an existing secret"
    );

    let (st, b) = s.put(
        "secret/data/other",
        Some(&updater),
        json!({"data": {"v": 1}}),
    );
    assert_eq!((st, b), (403, denied()), "update-only cannot create");
    let (st, b) = s.put(
        "secret/data/existing",
        Some(&updater),
        json!({"data": {"v": 2}}),
    );
    assert_eq!(st, 200, "update of an existing secret: {b}");
    let (st, b) = s.get("secret/data/existing", s.root());
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["data"]["data"], json!({"v": 2}));
    assert_eq!(b["data"]["metadata"]["version"], json!(2));
}

#[test]
fn path_policy_allows_only_its_paths() {
    let s = TestServer::dev();
    s.write_policy("app", APP_POLICY);
    s.kv_put("other/secret", json!({"v": "not-yours"}));
    let t = s.create_token(json!({"policies": ["app"]}));
    let tok = Some(t.as_str());

    // Allowed: create, update, read under secret/data/app/.
    let (st, b) = s.put(
        "secret/data/app/config",
        tok,
        json!({"data": {"user": "a"}}),
    );
    assert_eq!(st, 200, "create under app/: {b}");
    let (st, b) = s.put(
        "secret/data/app/config",
        tok,
        json!({"data": {"user": "b"}}),
    );
    assert_eq!(st, 200, "update under app/: {b}");
    let (st, b) = s.get("secret/data/app/config", tok);
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["data"]["data"], json!({"user": "b"}));
    assert_eq!(b["data"]["metadata"]["version"], json!(2));

    // Denied elsewhere, with Vault's body.
    let (st, b) = s.get("secret/data/other/secret", tok);
    assert_eq!((st, b), (403, denied()), "read outside app/");
    let (st, b) = s.put("secret/data/other/new", tok, json!({"data": {"x": 1}}));
    assert_eq!((st, b), (403, denied()), "write outside app/");
    let (st, b) = s.get("secret/data/app", tok);
    assert_eq!(
        (st, b),
        (403, denied()),
        "the glob does not match the bare prefix"
    );
    let (st, b) = s.delete("secret/data/app/config", tok);
    assert_eq!((st, b), (403, denied()), "no delete capability");
    let (st, b) = s.get("secret/metadata/app/config", tok);
    assert_eq!((st, b), (403, denied()), "metadata is a different path");

    // And on sys/policies: cannot read or grant itself more.
    let (st, b) = s.get("sys/policies/acl/app", tok);
    assert_eq!((st, b), (403, denied()));
    let (st, b) = s.put(
        "sys/policies/acl/escalate",
        tok,
        json!({"policy": "path \"*\" { capabilities = [\"sudo\",\"read\"] }"}),
    );
    assert_eq!((st, b), (403, denied()));
    let (st, b) = s.get("sys/mounts", tok);
    assert_eq!((st, b), (403, denied()));
    // The denied write did not happen.
    let (st, _) = s.get("sys/policies/acl/escalate", s.root());
    assert_eq!(st, 404);
    let (st, _) = s.get("secret/data/other/new", s.root());
    assert_eq!(st, 404);

    // No token and an unknown token are both 403.
    let (st, b) = s.get("secret/data/app/config", None);
    assert_eq!((st, b), (403, denied()), "no token");
    let (st, b) = s.get("secret/data/app/config", Some("hvs.not-a-real-token"));
    assert_eq!((st, b), (403, denied()), "unknown token");

    // The default policy lets a token look itself up.
    let (st, b) = lookup_self(&s, &t);
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["data"]["policies"], json!(["app", "default"]));
}

#[test]
fn token_with_short_ttl_expires() {
    let s = TestServer::dev();
    let t = s.create_token(json!({"ttl": "2s", "policies": ["default"]}));
    let (st, b) = lookup_self(&s, &t);
    assert_eq!(st, 200, "fresh token: {b}");
    let ttl = b["data"]["ttl"].as_u64().unwrap();
    assert!(ttl <= 2, "ttl {ttl}");
    assert!(b["data"]["expire_time"].is_string(), "{b}");
    let expired = poll_until(Duration::from_secs(10), || lookup_self(&s, &t).0 == 403);
    assert!(expired, "a 2s token still works after 10s");
    assert_eq!(lookup_self(&s, &t), (403, denied()));
}

#[test]
fn renew_self_extends_a_renewable_token() {
    let s = TestServer::dev();
    let t = s.create_token(json!({"ttl": "1h", "policies": ["default"]}));
    let (st, b) = s.post(
        "auth/token/renew-self",
        Some(&t),
        json!({"increment": "2h"}),
    );
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["auth"]["client_token"], json!(t));
    assert!(b["auth"]["lease_duration"].as_u64().unwrap() > 3600, "{b}");
    // A non-renewable token cannot be renewed.
    let t2 = s.create_token(json!({"ttl": "1h", "renewable": false, "policies": ["default"]}));
    let (st, b) = s.post("auth/token/renew-self", Some(&t2), json!({}));
    assert_eq!(st, 400, "renewing a non-renewable token: {b}");
}

#[test]
fn use_limited_token_works_exactly_num_uses_times() {
    let s = TestServer::dev();
    s.write_policy("app", APP_POLICY);
    s.kv_put("app/x", json!({"v": 1}));
    let t = s.create_token(json!({"policies": ["app"], "num_uses": 2}));
    let (st, b) = s.get("secret/data/app/x", Some(&t));
    assert_eq!(st, 200, "use 1: {b}");
    let (st, b) = s.get("secret/data/app/x", Some(&t));
    assert_eq!(st, 200, "use 2: {b}");
    let (st, b) = s.get("secret/data/app/x", Some(&t));
    assert_eq!((st, b), (403, denied()), "use 3 must be refused");
    // The token is gone, not just refusing this path.
    let (st, _) = s.post("auth/token/lookup", s.root(), json!({"token": t}));
    assert_eq!(st, 403, "lookup of a used-up token (Vault: 403 bad token)");
}

#[test]
fn revoking_a_parent_revokes_children_but_revoke_orphan_keeps_them() {
    let s = TestServer::dev();
    s.write_policy("creator", CREATOR_POLICY);

    // revoke: the whole tree goes.
    let parent = s.create_token(json!({"policies": ["creator"]}));
    let (st, b) = s.post(
        "auth/token/create",
        Some(&parent),
        json!({"policies": ["default"]}),
    );
    assert_eq!(st, 200, "child create: {b}");
    let child = b["auth"]["client_token"].as_str().unwrap().to_owned();
    let (st, b) = lookup_self(&s, &child);
    assert_eq!(st, 200);
    assert_eq!(b["data"]["orphan"], json!(false));
    let (st, b) = s.post("auth/token/revoke", s.root(), json!({"token": parent}));
    assert!(st == 204 || st == 200, "revoke: {st} {b}");
    assert_eq!(lookup_self(&s, &parent), (403, denied()));
    assert_eq!(
        lookup_self(&s, &child),
        (403, denied()),
        "child must die with parent"
    );

    // revoke-orphan: only the parent goes; the child lives on as an orphan.
    let parent2 = s.create_token(json!({"policies": ["creator"]}));
    let (st, b) = s.post(
        "auth/token/create",
        Some(&parent2),
        json!({"policies": ["default"]}),
    );
    assert_eq!(st, 200, "{b}");
    let child2 = b["auth"]["client_token"].as_str().unwrap().to_owned();
    let (st, b) = s.post(
        "auth/token/revoke-orphan",
        s.root(),
        json!({"token": parent2}),
    );
    assert!(st == 204 || st == 200, "revoke-orphan: {st} {b}");
    assert_eq!(lookup_self(&s, &parent2), (403, denied()));
    let (st, b) = lookup_self(&s, &child2);
    assert_eq!(st, 200, "child of revoke-orphan must survive: {b}");
    assert_eq!(
        b["data"]["orphan"],
        json!(true),
        "survivor is now an orphan: {b}"
    );

    // revoke-self works too.
    let (st, _) = s.post("auth/token/revoke-self", Some(&child2), json!({}));
    assert!(st == 204 || st == 200);
    assert_eq!(lookup_self(&s, &child2), (403, denied()));

    // A child's policies must be a subset of the parent's.
    let parent3 = s.create_token(json!({"policies": ["creator"]}));
    let (st, b) = s.post(
        "auth/token/create",
        Some(&parent3),
        json!({"policies": ["root"]}),
    );
    assert_eq!(st, 400, "child asking for root: {b}");
}

#[test]
fn batch_token_reads_but_cannot_create_tokens() {
    let s = TestServer::dev();
    s.write_policy("app", APP_POLICY);
    s.write_policy("creator", CREATOR_POLICY);
    s.kv_put("app/b", json!({"v": "batch-readable"}));
    let (st, b) = s.post(
        "auth/token/create",
        s.root(),
        json!({"type": "batch", "policies": ["app", "creator"], "ttl": "1h"}),
    );
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["auth"]["token_type"], json!("batch"));
    assert_eq!(b["auth"]["renewable"], json!(false));
    let t = b["auth"]["client_token"].as_str().unwrap().to_owned();

    let (st, b) = s.get("secret/data/app/b", Some(&t));
    assert_eq!(st, 200, "batch read: {b}");
    assert_eq!(b["data"]["data"], json!({"v": "batch-readable"}));
    let (st, b) = s.get("secret/data/elsewhere", Some(&t));
    assert_eq!((st, b), (403, denied()));

    let (st, b) = s.post("auth/token/create", Some(&t), json!({"policies": ["app"]}));
    assert_eq!(st, 400, "batch token creating a token: {b}");

    let (st, b) = lookup_self(&s, &t);
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["data"]["type"], json!("batch"), "{b}");

    // A batch token cannot be use-limited.
    let (st, b) = s.post(
        "auth/token/create",
        s.root(),
        json!({"type": "batch", "num_uses": 3}),
    );
    assert_eq!(st, 400, "use-limited batch token: {b}");
}

#[test]
fn token_role_restricts_policies() {
    let s = TestServer::dev();
    s.write_policy("app", APP_POLICY);
    s.write_policy("admin", "path \"*\" { capabilities = [\"read\"] }");
    let (st, b) = s.post(
        "auth/token/roles/limited",
        s.root(),
        json!({"allowed_policies": ["app"]}),
    );
    assert!(st == 204 || st == 200, "role create: {st} {b}");
    let (st, b) = s.get("auth/token/roles/limited", s.root());
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["data"]["allowed_policies"], json!(["app"]));

    // Without policies, the role's allowed policies are used.
    let (st, b) = s.post("auth/token/create/limited", s.root(), json!({}));
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["auth"]["policies"], json!(["app", "default"]));
    let t = b["auth"]["client_token"].as_str().unwrap().to_owned();
    let (st, b) = lookup_self(&s, &t);
    assert_eq!(st, 200);
    assert_eq!(b["data"]["role"], json!("limited"), "{b}");
    assert_eq!(b["data"]["path"], json!("auth/token/create/limited"), "{b}");

    // Asking for a policy outside the role is refused, even by root.
    let (st, b) = s.post(
        "auth/token/create/limited",
        s.root(),
        json!({"policies": ["admin"]}),
    );
    assert_eq!(st, 400, "policy outside the role: {b}");
    let (st, b) = s.post(
        "auth/token/create/limited",
        s.root(),
        json!({"policies": ["app"]}),
    );
    assert_eq!(st, 200, "{b}");

    // An unknown role is refused.
    let (st, b) = s.post("auth/token/create/nope", s.root(), json!({}));
    assert_eq!(st, 400, "unknown role: {b}");

    // The role's token is confined to its policy.
    s.kv_put("app/r", json!({"v": 1}));
    let (st, _) = s.get("secret/data/app/r", Some(&t));
    assert_eq!(st, 200);
    let (st, b) = s.get("sys/policies/acl/admin", Some(&t));
    assert_eq!((st, b), (403, denied()));
}

#[test]
fn sudo_paths_need_sudo() {
    let s = TestServer::dev();
    s.write_policy(
        "rotate-no-sudo",
        "path \"sys/rotate\" { capabilities = [\"update\"] }",
    );
    s.write_policy(
        "rotate-sudo",
        "path \"sys/rotate\" { capabilities = [\"update\", \"sudo\"] }",
    );
    let term = |s: &TestServer| {
        let (st, b) = s.get("sys/key-status", s.root());
        assert_eq!(st, 200, "{b}");
        b["data"]["term"].as_u64().unwrap()
    };
    let before = term(&s);

    let t = s.create_token(json!({"policies": ["rotate-no-sudo"]}));
    let (st, b) = s.put("sys/rotate", Some(&t), json!({}));
    assert_eq!(
        (st, b),
        (403, denied()),
        "update without sudo on a root path"
    );
    assert_eq!(term(&s), before, "denied rotate must not rotate");

    let t2 = s.create_token(json!({"policies": ["rotate-sudo"]}));
    let (st, b) = s.put("sys/rotate", Some(&t2), json!({}));
    assert!(st == 204 || st == 200, "rotate with sudo: {st} {b}");
    assert_eq!(term(&s), before + 1);
}

#[test]
fn authorization_bearer_header_is_accepted() {
    let s = TestServer::dev();
    let t = s.create_token(json!({"policies": ["default"]}));
    let bearer = format!("Bearer {t}");
    let (st, b) = s.request_with(
        Method::GET,
        "auth/token/lookup-self",
        None,
        None,
        &[("Authorization", bearer.as_str())],
    );
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["data"]["id"], json!(t));

    let (st, b) = s.request_with(
        Method::GET,
        "auth/token/lookup-self",
        None,
        None,
        &[("Authorization", "Bearer hvs.bogus")],
    );
    assert_eq!((st, b), (403, denied()));

    // Root via Bearer can write.
    let (st, b) = s.request_with(
        Method::PUT,
        "secret/data/bearer",
        None,
        Some(json!({"data": {"v": "b"}})),
        &[("Authorization", "Bearer root")],
    );
    assert_eq!(st, 200, "{b}");
    assert_eq!(s.kv_get("bearer"), (200, json!({"v": "b"})));
}
