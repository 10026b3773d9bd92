//! Token creation never grants more than the creator may grant: a role without
//! `allowed_policies` is bounded by the calling token's own policies (Vault's rule), a role's
//! `disallowed_policies` always apply, and plain `auth/token/create` keeps the same bound.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use bunker_testkit as common;

use common::{errors, TestServer};
use serde_json::{json, Value};

const APP_POLICY: &str = r#"path "secret/data/app/*" { capabilities = ["read"] }"#;
const ADMIN_POLICY: &str =
    r#"path "*" { capabilities = ["create", "read", "update", "delete", "list", "sudo"] }"#;
const ROLE_USER_POLICY: &str = r#"
path "auth/token/create/myrole" { capabilities = ["update"] }
path "auth/token/create/denyadmin" { capabilities = ["update"] }
path "auth/token/create" { capabilities = ["update"] }
"#;

fn write_role(s: &TestServer, name: &str, body: Value) {
    let (st, b) = s.post(&format!("auth/token/roles/{name}"), s.root(), body);
    assert!(st == 200 || st == 204, "write role {name}: {st} {b}");
}

fn policies_of(body: &Value) -> Value {
    body["auth"]["policies"].clone()
}

fn setup() -> (TestServer, String) {
    let s = TestServer::dev();
    s.write_policy("app", APP_POLICY);
    s.write_policy("admin", ADMIN_POLICY);
    s.write_policy("role-user", ROLE_USER_POLICY);
    // A role with no allowed_policies, exactly the shape that used to mint any policy.
    write_role(&s, "myrole", json!({"orphan": false}));
    let caller = s.create_token(json!({"policies": ["role-user", "app"]}));
    (s, caller)
}

#[test]
fn role_without_allowed_policies_cannot_mint_policies_the_caller_lacks() {
    let (s, caller) = setup();
    let (st, b) = s.post(
        "auth/token/create/myrole",
        Some(&caller),
        json!({"policies": ["admin"]}),
    );
    assert_eq!(st, 400, "minting admin through a role: {b}");
    assert_eq!(
        errors(&b),
        vec!["child policies must be subset of parent".to_owned()],
        "{b}"
    );
    let (st, b) = s.post(
        "auth/token/create/myrole",
        Some(&caller),
        json!({"policies": ["app", "admin"]}),
    );
    assert_eq!(st, 400, "admin hidden among held policies: {b}");
    let (st, b) = s.post(
        "auth/token/create/myrole",
        Some(&caller),
        json!({"policies": ["root"]}),
    );
    assert_eq!(st, 400, "minting root through a role: {b}");

    // A subset of its own policies is fine, and the token really is that subset.
    let (st, b) = s.post(
        "auth/token/create/myrole",
        Some(&caller),
        json!({"policies": ["app"]}),
    );
    assert_eq!(st, 200, "subset of own policies: {b}");
    assert_eq!(policies_of(&b), json!(["app", "default"]), "{b}");
    let child = b["auth"]["client_token"].as_str().unwrap().to_owned();
    let (st, _) = s.get("sys/policies/acl/admin", Some(&child));
    assert_eq!(st, 403, "the child must not read what admin could");

    // No policies asked for: the caller's own set.
    let (st, b) = s.post("auth/token/create/myrole", Some(&caller), json!({}));
    assert_eq!(st, 200, "{b}");
    assert_eq!(
        policies_of(&b),
        json!(["app", "default", "role-user"]),
        "{b}"
    );

    // Root may still give the role's tokens any policy.
    let (st, b) = s.post(
        "auth/token/create/myrole",
        s.root(),
        json!({"policies": ["admin"]}),
    );
    assert_eq!(st, 200, "root through the role: {b}");
    assert_eq!(policies_of(&b), json!(["admin", "default"]), "{b}");
}

#[test]
fn disallowed_policies_always_apply() {
    let (s, caller) = setup();
    write_role(
        &s,
        "denyadmin",
        json!({"allowed_policies": ["app", "admin"], "disallowed_policies": ["admin"]}),
    );
    for token in [caller.as_str(), s.root_token.as_str()] {
        let (st, b) = s.post(
            "auth/token/create/denyadmin",
            Some(token),
            json!({"policies": ["admin"]}),
        );
        assert_eq!(st, 400, "a disallowed policy: {b}");
    }
    let (st, b) = s.post(
        "auth/token/create/denyadmin",
        Some(&caller),
        json!({"policies": ["app"]}),
    );
    assert_eq!(st, 200, "an allowed policy: {b}");
    assert_eq!(policies_of(&b), json!(["app", "default"]), "{b}");
}

#[test]
fn plain_create_is_bounded_by_the_callers_policies() {
    let (s, caller) = setup();
    let (st, b) = s.post(
        "auth/token/create",
        Some(&caller),
        json!({"policies": ["admin"]}),
    );
    assert_eq!(st, 400, "minting admin without a role: {b}");
    assert_eq!(
        errors(&b),
        vec!["child policies must be subset of parent".to_owned()],
        "{b}"
    );
    let (st, b) = s.post(
        "auth/token/create",
        Some(&caller),
        json!({"policies": ["app"]}),
    );
    assert_eq!(st, 200, "{b}");
    assert_eq!(policies_of(&b), json!(["app", "default"]), "{b}");
}

/// As in Vault, `auth/token/roles/<name>` has an existence check: writing a new role needs
/// `create`, changing one needs `update`.
#[test]
fn writing_a_role_needs_create_for_a_new_one_and_update_for_an_existing_one() {
    let s = TestServer::dev();
    s.write_policy(
        "role-editor",
        r#"path "auth/token/roles/*" { capabilities = ["update", "read"] }"#,
    );
    s.write_policy(
        "role-creator",
        r#"path "auth/token/roles/*" { capabilities = ["create", "read"] }"#,
    );
    let editor = s.create_token(json!({"policies": ["role-editor"]}));
    let creator = s.create_token(json!({"policies": ["role-creator"]}));
    let role = json!({"allowed_policies": ["app"]});
    let (st, b) = s.post("auth/token/roles/fresh", Some(&editor), role.clone());
    assert_eq!(st, 403, "update alone creates a role: {b}");
    let (st, b) = s.post("auth/token/roles/fresh", Some(&creator), role.clone());
    assert!(st == 200 || st == 204, "create makes a role: {st} {b}");
    let (st, b) = s.post("auth/token/roles/fresh", Some(&creator), role.clone());
    assert_eq!(st, 403, "create alone changes a role: {b}");
    let (st, b) = s.post("auth/token/roles/fresh", Some(&editor), role);
    assert!(st == 200 || st == 204, "update changes a role: {st} {b}");
}
