//! Auth methods through the real binary: `sys/auth` enable, list, tune and disable; userpass
//! and AppRole logins (tokens, policies and TTLs from the user or role, secret-id use limits,
//! wrapped secret ids); and a DR failover after which the same credentials log in.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use bunker_testkit as common;

use common::dr::{
    activation_token, adopt_credentials, assert_dr_refused, dr_server, enable_primary,
    enable_secondary, promote_with_keys, wait_converged, DR_SECONDARY_ERROR,
};
use common::{cli, errors, TestServer};
use reqwest::Method;
use serde_json::{json, Value};

const INVALID_USER: &str = "invalid username or password";
const INVALID_ROLE: &str = "invalid role or secret ID";

fn ok(st: u16, body: &Value, what: &str) {
    assert!(st == 200 || st == 204, "{what}: {st} {body}");
}

fn enable(s: &TestServer, path: &str, body: Value) {
    let (st, b) = s.post(&format!("sys/auth/{path}"), s.root(), body);
    ok(st, &b, &format!("enable auth at {path}"));
}

fn write(s: &TestServer, path: &str, body: Value) -> Value {
    let (st, b) = s.post(path, s.root(), body);
    ok(st, &b, path);
    b
}

fn reader_policy(s: &TestServer) {
    write(
        s,
        "sys/policies/acl/reader",
        json!({"policy": "path \"secret/data/*\" { capabilities = [\"read\"] }"}),
    );
}

fn login_userpass(s: &TestServer, mount: &str, user: &str, password: &str) -> (u16, Value) {
    s.post(
        &format!("auth/{mount}/login/{user}"),
        None,
        json!({ "password": password }),
    )
}

fn login_approle(s: &TestServer, role_id: &str, secret_id: &str) -> (u16, Value) {
    s.post(
        "auth/approle/login",
        None,
        json!({ "role_id": role_id, "secret_id": secret_id }),
    )
}

#[test]
fn userpass_logins_issue_tokens_from_the_user() {
    let s = TestServer::dev();
    reader_policy(&s);
    s.kv_put("app/config", json!({"k": "v"}));
    enable(
        &s,
        "people",
        json!({"type": "userpass", "description": "humans"}),
    );
    let (st, list) = s.get("sys/auth", s.root());
    assert_eq!(st, 200);
    assert_eq!(list["data"]["people/"]["type"], "userpass");
    assert_eq!(list["data"]["people/"]["description"], "humans");
    assert_eq!(list["data"]["token/"]["type"], "token");
    assert_eq!(
        list["people/"]["type"], "userpass",
        "Vault also lists at the top level"
    );

    write(
        &s,
        "auth/people/users/alice",
        json!({"password": "correct horse", "token_policies": "reader",
               "token_ttl": "60s", "token_max_ttl": "120s"}),
    );
    let (st, user) = s.get("auth/people/users/alice", s.root());
    assert_eq!(st, 200, "{user}");
    assert_eq!(user["data"]["token_policies"], json!(["reader"]));
    assert!(user["data"].get("password").is_none(), "{user}");

    let (st, login) = login_userpass(&s, "people", "alice", "correct horse");
    assert_eq!(st, 200, "{login}");
    let auth = &login["auth"];
    assert_eq!(auth["policies"], json!(["default", "reader"]));
    assert_eq!(auth["lease_duration"], 60);
    assert_eq!(auth["renewable"], true);
    assert_eq!(auth["metadata"]["username"], "alice");
    let token = auth["client_token"].as_str().unwrap().to_owned();
    let (st, body) = s.get("secret/data/app/config", Some(&token));
    assert_eq!(st, 200, "the user's policy applies: {body}");
    let (st, _) = s.put("secret/data/app/config", Some(&token), json!({"data": {}}));
    assert_eq!(st, 403);
    let (st, me) = s.get("auth/token/lookup-self", Some(&token));
    assert_eq!(st, 200);
    assert_eq!(me["data"]["display_name"], "people-alice");
    assert_eq!(me["data"]["path"], "auth/people/login/alice");
    // Renewal stops at the user's max TTL.
    let (st, renewed) = s.post(
        "auth/token/renew-self",
        Some(&token),
        json!({"increment": "1h"}),
    );
    assert_eq!(st, 200, "{renewed}");
    let ttl = renewed["auth"]["lease_duration"].as_u64().unwrap();
    assert!(
        ttl <= 120 && ttl > 60,
        "renewal bounded by token_max_ttl: {ttl}"
    );

    // A wrong password and an unknown user get the same answer.
    for (user, password) in [("alice", "wrong"), ("mallory", "correct horse")] {
        let (st, body) = login_userpass(&s, "people", user, password);
        assert_eq!(st, 400, "{body}");
        assert_eq!(errors(&body), vec![INVALID_USER.to_owned()]);
    }

    write(
        &s,
        "auth/people/users/alice/password",
        json!({"password": "new"}),
    );
    assert_eq!(
        login_userpass(&s, "people", "alice", "correct horse").0,
        400
    );
    assert_eq!(login_userpass(&s, "people", "alice", "new").0, 200);
    write(
        &s,
        "auth/people/users/alice/policies",
        json!({"token_policies": ["other"]}),
    );
    let (_, login) = login_userpass(&s, "people", "alice", "new");
    assert_eq!(login["auth"]["policies"], json!(["default", "other"]));
    write(&s, "auth/people/users/bob", json!({"password": "b"}));
    let (st, users) = s.list("auth/people/users", s.root());
    assert_eq!(st, 200);
    assert_eq!(users["data"]["keys"], json!(["alice", "bob"]));
    let (st, _) = s.delete("auth/people/users/bob", s.root());
    assert_eq!(st, 204);
    assert_eq!(login_userpass(&s, "people", "bob", "b").0, 400);

    // Managing users needs a token; logging in does not.
    let (st, _) = s.post("auth/people/users/eve", None, json!({"password": "x"}));
    assert_eq!(st, 403);
    let (st, _) = s.post(
        "auth/people/users/eve",
        Some(&token),
        json!({"password": "x"}),
    );
    assert_eq!(st, 403);

    // Disabling revokes the method's tokens and its users; re-enabling starts empty.
    let (st, _) = s.delete("sys/auth/people", s.root());
    assert_eq!(st, 204);
    assert_eq!(s.get("auth/token/lookup-self", Some(&token)).0, 403);
    assert_eq!(login_userpass(&s, "people", "alice", "new").0, 403);
    let (st, _) = s.delete("sys/auth/people", s.root());
    assert_eq!(
        st, 204,
        "disabling a path that is not mounted is not an error"
    );
    enable(&s, "people", json!({"type": "userpass"}));
    assert_eq!(login_userpass(&s, "people", "alice", "new").0, 400);
}

#[test]
fn enable_refuses_unknown_types_and_the_token_path_and_tune_bounds_logins() {
    let s = TestServer::dev();
    let (st, _) = s.post("sys/auth/x", s.root(), json!({"type": "nope"}));
    assert_eq!(st, 400);
    let (st, _) = s.post("sys/auth/x", s.root(), json!({"type": "kv"}));
    assert_eq!(st, 400, "a secrets engine is not an auth method");
    let (st, _) = s.post("sys/mounts/x", s.root(), json!({"type": "userpass"}));
    assert_eq!(st, 400, "an auth method is not a secrets engine");
    let (st, _) = s.post("sys/auth/token", s.root(), json!({"type": "userpass"}));
    assert_eq!(st, 400);
    let (st, _) = s.delete("sys/auth/token", s.root());
    assert_eq!(st, 400);

    enable(
        &s,
        "userpass",
        json!({"type": "userpass", "config": {"default_lease_ttl": "30m", "max_lease_ttl": "1h"}}),
    );
    let (st, tune) = s.get("sys/auth/userpass/tune", s.root());
    assert_eq!(st, 200, "{tune}");
    assert_eq!(tune["data"]["default_lease_ttl"], 1800);
    assert_eq!(tune["data"]["max_lease_ttl"], 3600);
    write(&s, "auth/userpass/users/u", json!({"password": "p"}));
    let (_, login) = login_userpass(&s, "userpass", "u", "p");
    assert_eq!(login["auth"]["lease_duration"], 1800, "{login}");
    write(&s, "auth/userpass/users/u", json!({"token_ttl": "2h"}));
    let (_, login) = login_userpass(&s, "userpass", "u", "p");
    assert_eq!(
        login["auth"]["lease_duration"], 3600,
        "mount max caps: {login}"
    );
    assert!(!login["warnings"].as_array().unwrap().is_empty());

    // A max below the mount's default is refused, as Vault refuses it.
    let (st, body) = s.post(
        "sys/auth/userpass/tune",
        s.root(),
        json!({"max_lease_ttl": "10m"}),
    );
    assert_eq!(st, 400, "{body}");
    write(
        &s,
        "sys/auth/userpass/tune",
        json!({"default_lease_ttl": "5m", "max_lease_ttl": "10m", "description": "d"}),
    );
    let (_, tune) = s.get("sys/auth/userpass/tune", s.root());
    assert_eq!(tune["data"]["max_lease_ttl"], 600);
    assert_eq!(tune["data"]["description"], "d");
    let (_, login) = login_userpass(&s, "userpass", "u", "p");
    assert_eq!(login["auth"]["lease_duration"], 600, "{login}");
    // Tuning keeps the users.
    let (_, list) = s.get("sys/auth", s.root());
    assert_eq!(list["data"]["userpass/"]["config"]["max_lease_ttl"], 600);
    let (st, _) = s.get("sys/auth/nothere/tune", s.root());
    assert_eq!(st, 400);
}

fn approle_role(s: &TestServer, role: &str, body: Value) -> String {
    write(s, &format!("auth/approle/role/{role}"), body);
    let (st, rid) = s.get(&format!("auth/approle/role/{role}/role-id"), s.root());
    assert_eq!(st, 200, "{rid}");
    rid["data"]["role_id"].as_str().unwrap().to_owned()
}

fn secret_id(s: &TestServer, role: &str) -> Value {
    let b = write(s, &format!("auth/approle/role/{role}/secret-id"), json!({}));
    b["data"].clone()
}

#[test]
fn approle_logins_spend_secret_ids_and_take_the_roles_token_settings() {
    let s = TestServer::dev();
    reader_policy(&s);
    enable(&s, "approle", json!({"type": "approle"}));
    let role_id = approle_role(
        &s,
        "web",
        json!({"token_policies": ["reader"], "secret_id_num_uses": 2,
               "token_ttl": "5m", "token_num_uses": 3, "token_no_default_policy": true}),
    );
    let (st, role) = s.get("auth/approle/role/web", s.root());
    assert_eq!(st, 200);
    assert_eq!(role["data"]["secret_id_num_uses"], 2);
    assert_eq!(role["data"]["bind_secret_id"], true);

    let sid = secret_id(&s, "web");
    let secret = sid["secret_id"].as_str().unwrap();
    assert_eq!(sid["secret_id_num_uses"], 2);
    let (st, login) = login_approle(&s, &role_id, secret);
    assert_eq!(st, 200, "{login}");
    let auth = &login["auth"];
    assert_eq!(auth["policies"], json!(["reader"]));
    assert_eq!(auth["lease_duration"], 300);
    assert_eq!(auth["num_uses"], 3);
    assert_eq!(auth["metadata"]["role_name"], "web");
    let token = auth["client_token"].as_str().unwrap();
    s.kv_put("app/x", json!({"a": "b"}));
    assert_eq!(s.get("secret/data/app/x", Some(token)).0, 200);
    // The second use is the last one.
    assert_eq!(login_approle(&s, &role_id, secret).0, 200);
    let (st, body) = login_approle(&s, &role_id, secret);
    assert_eq!(st, 400, "{body}");
    assert_eq!(errors(&body), vec![INVALID_ROLE.to_owned()]);
    let (st, body) = login_approle(&s, "not-a-role-id", secret);
    assert_eq!(st, 400);
    assert_eq!(errors(&body), vec![INVALID_ROLE.to_owned()]);

    // Secret ids by accessor: list, lookup, destroy.
    let sid = secret_id(&s, "web");
    let accessor = sid["secret_id_accessor"].as_str().unwrap();
    let (st, listed) = s.list("auth/approle/role/web/secret-id", s.root());
    assert_eq!(st, 200, "{listed}");
    assert_eq!(listed["data"]["keys"], json!([accessor]));
    let looked = write(
        &s,
        "auth/approle/role/web/secret-id/lookup",
        json!({"secret_id": sid["secret_id"]}),
    );
    assert_eq!(looked["data"]["secret_id_accessor"], accessor);
    let looked = write(
        &s,
        "auth/approle/role/web/secret-id-accessor/lookup",
        json!({"secret_id_accessor": accessor}),
    );
    assert_eq!(looked["data"]["secret_id_num_uses"], 2);
    write(
        &s,
        "auth/approle/role/web/secret-id-accessor/destroy",
        json!({"secret_id_accessor": accessor}),
    );
    assert_eq!(
        login_approle(&s, &role_id, sid["secret_id"].as_str().unwrap()).0,
        400
    );

    // Custom ids.
    write(
        &s,
        "auth/approle/role/web/role-id",
        json!({"role_id": "web-role-id"}),
    );
    write(
        &s,
        "auth/approle/role/web/custom-secret-id",
        json!({"secret_id": "my-secret"}),
    );
    assert_eq!(
        login_approle(&s, &role_id, "my-secret").0,
        400,
        "old role id"
    );
    assert_eq!(login_approle(&s, "web-role-id", "my-secret").0, 200);
    write(
        &s,
        "auth/approle/role/web/secret-id/destroy",
        json!({"secret_id": "my-secret"}),
    );
    assert_eq!(login_approle(&s, "web-role-id", "my-secret").0, 400);
    let tidy = write(&s, "auth/approle/tidy/secret-id", json!({}));
    assert!(tidy["warnings"].is_array(), "{tidy}");
    let (st, roles) = s.list("auth/approle/role", s.root());
    assert_eq!(st, 200);
    assert_eq!(roles["data"]["keys"], json!(["web"]));
}

#[test]
fn a_wrapped_secret_id_unwraps_once_and_logs_in() {
    let s = TestServer::dev();
    enable(&s, "approle", json!({"type": "approle"}));
    let role_id = approle_role(
        &s,
        "batch",
        json!({"token_type": "batch", "token_ttl": "1m"}),
    );
    let (st, wrapped) = s.request_with(
        Method::POST,
        "auth/approle/role/batch/secret-id",
        s.root(),
        Some(json!({})),
        &[("X-Vault-Wrap-TTL", "2m")],
    );
    assert_eq!(st, 200, "{wrapped}");
    assert!(wrapped["data"].is_null(), "{wrapped}");
    assert_eq!(
        wrapped["wrap_info"]["creation_path"],
        "auth/approle/role/batch/secret-id"
    );
    let wrapping_token = wrapped["wrap_info"]["token"].as_str().unwrap();
    let (st, unwrapped) = s.post("sys/wrapping/unwrap", Some(wrapping_token), json!({}));
    assert_eq!(st, 200, "{unwrapped}");
    let secret = unwrapped["data"]["secret_id"].as_str().unwrap();
    let (st, _) = s.post("sys/wrapping/unwrap", Some(wrapping_token), json!({}));
    assert_eq!(st, 400, "single use");
    let (st, login) = login_approle(&s, &role_id, secret);
    assert_eq!(st, 200, "{login}");
    assert_eq!(login["auth"]["token_type"], "batch");
    assert_eq!(login["auth"]["renewable"], false);
    let token = login["auth"]["client_token"].as_str().unwrap();
    assert!(token.starts_with("hvb."));
    assert_eq!(s.get("auth/token/lookup-self", Some(token)).0, 200);
}

#[test]
fn a_promoted_dr_secondary_accepts_the_same_logins() {
    let p = dr_server();
    let mut s = dr_server();
    enable_primary(&p);
    enable_secondary(&s, &activation_token(&p, "site-b"));
    enable(&p, "userpass", json!({"type": "userpass"}));
    enable(&p, "approle", json!({"type": "approle"}));
    write(
        &p,
        "auth/userpass/users/ops",
        json!({"password": "pw", "token_policies": "default"}),
    );
    let role_id = approle_role(&p, "app", json!({}));
    let sid = secret_id(&p, "app");
    let secret = sid["secret_id"].as_str().unwrap();
    assert_eq!(login_userpass(&p, "userpass", "ops", "pw").0, 200);
    wait_converged(&p, &s);

    adopt_credentials(&mut s, &p);
    s.unseal();
    // Auth paths on a DR secondary are refused like any client request.
    let (st, body) = login_userpass(&s, "userpass", "ops", "pw");
    assert_eq!(st, 400, "{body}");
    assert_eq!(errors(&body), vec![DR_SECONDARY_ERROR.to_owned()]);
    assert_dr_refused(&s, "sys/auth", p.root());

    let done = promote_with_keys(&s, &p.keys);
    assert_eq!(done["data"]["complete"], json!(true), "{done}");
    let (st, body) = login_userpass(&s, "userpass", "ops", "pw");
    assert_eq!(st, 200, "userpass login on the promoted cluster: {body}");
    let (st, body) = login_approle(&s, &role_id, secret);
    assert_eq!(st, 200, "approle login on the promoted cluster: {body}");
    let token = body["auth"]["client_token"].as_str().unwrap();
    assert_eq!(s.get("auth/token/lookup-self", Some(token)).0, 200);
    let (_, list) = s.get("sys/auth", s.root());
    assert_eq!(list["data"]["approle/"]["type"], "approle");
}

#[test]
fn the_cli_enables_tunes_lists_and_logs_in() {
    let s = TestServer::dev();
    let (code, _, err) = cli(&s, &["login", "root"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = cli(&s, &["auth", "enable", "-path=people", "userpass"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("people/"), "{out}");
    let (code, _, err) = cli(&s, &["auth", "enable", "-max-lease-ttl=1h", "approle"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = cli(&s, &["auth", "tune", "-default-lease-ttl=10m", "people"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, _) = cli(&s, &["auth", "list", "-detailed"]);
    assert_eq!(code, 0);
    for expected in ["people/", "userpass", "approle/", "token/", "10m", "1h"] {
        assert!(out.contains(expected), "{expected} in {out}");
    }
    write(&s, "auth/people/users/ann", json!({"password": "pw"}));
    let (code, token, err) = cli(
        &s,
        &[
            "login",
            "-method=userpass",
            "-path=people",
            "-no-store",
            "-field=token",
            "username=ann",
            "password=pw",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let (st, me) = s.get("auth/token/lookup-self", Some(token.trim()));
    assert_eq!(st, 200, "{me}");
    assert_eq!(
        me["data"]["creation_ttl"], 600,
        "the tuned default TTL: {me}"
    );
    let (code, _, err) = cli(
        &s,
        &[
            "login",
            "-method=userpass",
            "-path=people",
            "-no-store",
            "username=ann",
            "password=no",
        ],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains(INVALID_USER), "{err}");

    let role_id = approle_role(&s, "ci", json!({}));
    let secret = secret_id(&s, "ci")["secret_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (code, out, err) = cli(
        &s,
        &[
            "login",
            "-method=approle",
            "-no-store",
            &format!("role_id={role_id}"),
            &format!("secret_id={secret}"),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("token_meta_role_name"), "{out}");
    let (code, _, err) = cli(&s, &["auth", "disable", "people"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, _) = cli(&s, &["auth", "list"]);
    assert_eq!(code, 0);
    assert!(!out.contains("people/"), "{out}");
}
