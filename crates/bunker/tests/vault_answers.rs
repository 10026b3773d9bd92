//! Where Bunker used to answer differently from Vault (issue "What applications actually use",
//! part 3), through the real binary with the requests real clients send.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use bunker_testkit as common;

use common::{errors, ServerOptions, TestServer};
use reqwest::Method;
use serde_json::{json, Value};

#[test]
fn list_takes_every_boolean_go_accepts_and_refuses_the_rest() {
    let s = TestServer::initialized();
    s.mount_kv2();
    s.kv_put("dir/a", json!({"v": "1"}));
    for value in ["True", "true", "1", "t", "T", "TRUE"] {
        let (code, body) = s.get(&format!("secret/metadata/dir?list={value}"), s.root());
        assert_eq!(code, 200, "list={value}: {body}");
        assert_eq!(body["data"]["keys"], json!(["a"]), "list={value}");
    }
    let (code, body) = s.get("secret/metadata/dir?list=yes", s.root());
    assert_eq!(code, 400, "a list value that is not a boolean: {body}");
}

#[test]
fn wrapping_an_empty_object_gives_a_wrapping_token() {
    let s = TestServer::initialized();
    let resp = s
        .client()
        .post(s.url("sys/wrapping/wrap"))
        .header("X-Vault-Token", s.root().unwrap())
        .header("X-Vault-Wrap-TTL", "60s")
        .json(&json!({}))
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let body: serde_json::Value = resp.json().unwrap();
    assert!(
        body["wrap_info"]["token"]
            .as_str()
            .is_some_and(|t| !t.is_empty()),
        "{body}"
    );
}

#[test]
fn looking_up_an_unknown_or_revoked_token_is_403_bad_token() {
    let s = TestServer::initialized();
    let (code, body) = s.post("auth/token/lookup", s.root(), json!({"token": "hvs.nope"}));
    assert_eq!(code, 403, "{body}");
    assert_eq!(errors(&body), vec!["bad token".to_owned()]);
    let t = s.create_token(json!({"policies": ["default"]}));
    let (code, _) = s.post("auth/token/revoke", s.root(), json!({"token": t}));
    assert_eq!(code, 204);
    let (code, body) = s.post("auth/token/lookup", s.root(), json!({"token": t}));
    assert_eq!(code, 403, "a revoked token: {body}");
}

#[test]
fn a_negative_cas_is_a_check_and_set_mismatch() {
    let s = TestServer::initialized();
    s.mount_kv2();
    s.kv_put("k", json!({"v": "1"}));
    let (code, body) = s.put(
        "secret/data/k",
        s.root(),
        json!({"data": {"v": "2"}, "options": {"cas": -1}}),
    );
    assert_eq!(code, 400, "{body}");
    assert!(
        errors(&body)[0].contains("check-and-set parameter did not match the current version"),
        "{body}"
    );
    assert_eq!(s.kv_get("k").1["v"], json!("1"));
}

#[test]
fn unknown_fields_are_ignored_with_vaults_warning() {
    let s = TestServer::initialized();
    // node-vault's mount() sends mount_point; its enableAudit() sends name.
    let (code, body) = s.post(
        "sys/mounts/nv",
        s.root(),
        json!({"type": "kv", "mount_point": "nv"}),
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        body["warnings"],
        json!(["Endpoint ignored these unrecognized parameters: [mount_point]"])
    );
    let audit = s.dir().join("audit.log");
    let (code, body) = s.put(
        "sys/audit/nv",
        s.root(),
        json!({"type": "file", "name": "nv", "options": {"file_path": audit.to_str().unwrap()}}),
    );
    assert_eq!(code, 200, "{body}");
    assert!(body["warnings"][0].as_str().unwrap().contains("[name]"));
    // Raw-bodied endpoints ignore them too.
    let (code, body) = s.raw(
        Method::PUT,
        "sys/unseal",
        None,
        serde_json::to_vec(&json!({"reset": true, "extra": 1})).unwrap(),
    );
    assert_eq!(
        code, 400,
        "an unsealed server refuses reset, not the field: {body}"
    );
    assert!(!errors(&body)[0].contains("unknown"), "{body}");
}

#[test]
fn policy_names_take_any_character_and_are_lowercased() {
    let s = TestServer::initialized();
    let rules = "path \"secret/data/*\" { capabilities = [\"read\"] }";
    // hvac's tests use this name; requests sends the brackets and quotes as they are.
    let (code, body) = s.put(
        "sys/policy/['TestPolicy']",
        s.root(),
        json!({"rules": rules}),
    );
    assert_eq!(code, 204, "{body}");
    let (code, body) = s.get("sys/policy/['testpolicy']", s.root());
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["name"], "['testpolicy']");
    // Percent-encoded, the same name; a name with a slash lives in a folder and lists whole.
    let (code, body) = s.get("sys/policies/acl/%5B%27testpolicy%27%5D", s.root());
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["data"]["policy"], rules);
    let (code, body) = s.put(
        "sys/policies/acl/Team/App",
        s.root(),
        json!({"policy": rules}),
    );
    assert_eq!(code, 204, "{body}");
    let (_, listed) = s.get("sys/policy", s.root());
    for name in ["['testpolicy']", "team/app", "default", "root"] {
        assert!(
            listed["policies"]
                .as_array()
                .unwrap()
                .contains(&json!(name)),
            "{name} in {listed}"
        );
    }
    // A token with the policy gets it.
    let t = s.create_token(json!({"policies": ["['testpolicy']", "team/app"]}));
    let (code, me) = s.get("auth/token/lookup-self", Some(&t));
    assert_eq!(code, 200, "{me}");
    assert_eq!(
        me["data"]["policies"],
        json!(["['testpolicy']", "default", "team/app"])
    );
    for name in ["['testpolicy']", "team/app"] {
        let (code, body) = s.delete(&format!("sys/policy/{name}"), s.root());
        assert_eq!(code, 204, "delete {name}: {body}");
        assert_eq!(s.get(&format!("sys/policy/{name}"), s.root()).0, 404);
    }
    let (code, body) = s.put("sys/policy/%20", s.root(), json!({"rules": rules}));
    assert_eq!(code, 400, "an empty name: {body}");
    assert_eq!(errors(&body), vec!["policy name missing".to_owned()]);
}

#[test]
fn tune_reads_show_the_effective_ttls_which_the_server_config_sets() {
    // Vault's defaults (768h) where the mount sets none.
    let s = TestServer::dev();
    let (st, tune) = s.get("sys/mounts/secret/tune", s.root());
    assert_eq!(st, 200, "{tune}");
    assert_eq!(tune["data"]["default_lease_ttl"], 2_764_800);
    assert_eq!(tune["data"]["max_lease_ttl"], 2_764_800);
    let (_, mounts) = s.get("sys/mounts", s.root());
    assert_eq!(
        mounts["data"]["secret/"]["config"]["default_lease_ttl"], 0,
        "the list shows the mount's own setting, as Vault's"
    );
    drop(s);

    let s = TestServer::initialized_with(ServerOptions {
        config_extra: "default_lease_ttl = \"1h\"\nmax_lease_ttl = \"2h\"".into(),
        ..Default::default()
    });
    s.mount_kv2();
    for path in ["sys/mounts/secret/tune", "sys/auth/token/tune"] {
        let (st, tune) = s.get(path, s.root());
        assert_eq!(st, 200, "{path}: {tune}");
        assert_eq!(tune["data"]["default_lease_ttl"], 3600, "{path}");
        assert_eq!(tune["data"]["max_lease_ttl"], 7200, "{path}");
    }
    // Tokens get the system default and live no longer than the system max.
    let ttl_of = |body: Value| {
        let (st, created) = s.post("auth/token/create", s.root(), body);
        assert_eq!(st, 200, "{created}");
        created["auth"]["lease_duration"].as_u64().unwrap()
    };
    assert_eq!(ttl_of(json!({"policies": ["default"]})), 3600);
    assert_eq!(ttl_of(json!({"policies": ["default"], "ttl": "10h"})), 7200);
    // So do logins on a mount without TTLs of its own, and a tuned mount shows its own.
    let (st, _) = s.post("sys/auth/userpass", s.root(), json!({"type": "userpass"}));
    assert_eq!(st, 204);
    let (st, _) = s.post("auth/userpass/users/u", s.root(), json!({"password": "p"}));
    assert_eq!(st, 204);
    let (st, login) = s.post("auth/userpass/login/u", None, json!({"password": "p"}));
    assert_eq!(st, 200, "{login}");
    assert_eq!(login["auth"]["lease_duration"], 3600);
    let (st, body) = s.post(
        "sys/mounts/secret/tune",
        s.root(),
        json!({"default_lease_ttl": "30m"}),
    );
    assert_eq!(st, 204, "{body}");
    let (_, tune) = s.get("sys/mounts/secret/tune", s.root());
    assert_eq!(tune["data"]["default_lease_ttl"], 1800);
    assert_eq!(tune["data"]["max_lease_ttl"], 7200);
    // A default above the system max, with no max of the mount's own, is refused.
    let (st, body) = s.post(
        "sys/mounts/other",
        s.root(),
        json!({"type": "kv", "config": {"default_lease_ttl": "3h"}}),
    );
    assert_eq!(st, 400, "{body}");
}

#[test]
fn a_config_whose_default_lease_ttl_exceeds_its_max_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bunker.hcl");
    std::fs::write(
        &config,
        "storage \"inmem\" {}\nlistener \"tcp\" {\n  address = \"127.0.0.1:0\"\n  tls_disable = true\n}\nmax_lease_ttl = \"1h\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bunker"))
        .arg("server")
        .arg("-config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("default_lease_ttl"), "{stderr}");
}

#[test]
fn help_answers_with_vaults_shape_and_needs_a_valid_token() {
    let s = TestServer::dev();
    let (st, body) = s.post("sys/mounts/transit", s.root(), json!({"type": "transit"}));
    assert_eq!(st, 204, "{body}");
    let (st, body) = s.post("sys/auth/approle", s.root(), json!({"type": "approle"}));
    assert_eq!(st, 204, "{body}");
    s.kv_put("app", json!({"password": "hunter2"}));
    // A token with no capability on the paths may read their help, as in Vault.
    let weak = s.create_token(json!({"policies": ["default"]}));
    for (path, pattern, openapi_path) in [
        ("secret/data/app", "data/*", "/secret/data/{path}"),
        (
            "transit/keys/orders/rotate",
            "keys/:name/rotate",
            "/transit/keys/{name}/rotate",
        ),
        ("auth/approle/login", "login", "/auth/approle/login"),
        ("sys/mounts", "mounts", "/sys/mounts"),
        (
            "auth/token/lookup-self",
            "lookup-self",
            "/auth/token/lookup-self",
        ),
        ("cubbyhole/x", "*", "/cubbyhole/{path}"),
    ] {
        let (st, body) = s.get(&format!("{path}?help=1"), Some(&weak));
        assert_eq!(st, 200, "{path}: {body}");
        let help = body["help"].as_str().unwrap_or_default();
        assert!(
            help.contains(&format!("Matching Route: {pattern}")),
            "{path}: {help}"
        );
        assert!(!help.contains("hunter2"), "help never shows the secret");
        assert_eq!(body["openapi"]["openapi"], "3.0.2");
        assert!(
            body["openapi"]["paths"][openapi_path]["description"].is_string(),
            "{path}: {body}"
        );
    }
    // A mount's root lists its paths; help works whatever the method.
    let (st, body) = s.request(reqwest::Method::POST, "transit?help=1", Some(&weak), None);
    assert_eq!(st, 200, "{body}");
    let help = body["help"].as_str().unwrap();
    assert!(
        help.contains("## PATHS") && help.contains("encrypt/:name"),
        "{help}"
    );
    // No token, or a bad one: 403; an unmounted path: an error, not help.
    for token in [None, Some("hvs.nope")] {
        let (st, body) = s.get("secret/data/app?help=1", token);
        assert_eq!(st, 403, "{body}");
    }
    let (st, body) = s.get("nowhere/x?help=1", s.root());
    assert_eq!(st, 404, "{body}");
}

/// The built-in mounts (`sys/`, `auth/token/`) are listed like any mount and cannot be mounted
/// under or over, as in Vault ("path is already in use").
#[test]
fn built_in_mounts_are_listed_and_nothing_mounts_over_them() {
    let s = TestServer::initialized();
    let (code, body) = s.get("sys/mounts", s.root());
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["sys/"]["type"], json!("system"), "{body}");
    assert_eq!(body["sys/"]["seal_wrap"], json!(true), "{body}");
    let (code, body) = s.get("sys/auth", s.root());
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["token/"]["type"], json!("token"), "{body}");
    assert_eq!(body["token/"]["accessor"], json!("auth_token_bunker"));
    assert_eq!(
        body["token/"]["config"]["token_type"],
        json!("default-service")
    );

    let (code, body) = s.post("sys/auth/token/x", s.root(), json!({"type": "userpass"}));
    assert_eq!(code, 400, "an auth method under auth/token/: {body}");
    assert!(errors(&body)[0].contains("already in use"), "{body}");
    let (code, body) = s.post("sys/auth/token2", s.root(), json!({"type": "userpass"}));
    assert!(
        code == 200 || code == 204,
        "a path beside auth/token/: {body}"
    );
    let (code, body) = s.post(
        "sys/remount",
        s.root(),
        json!({"from": "auth/token2", "to": "auth/token/y"}),
    );
    assert_eq!(code, 400, "a remount under auth/token/: {body}");
}

/// `sys/internal/ui/mounts` lists only the mounts the caller has some access below, as Vault.
#[test]
fn the_ui_mount_listing_shows_what_the_caller_may_reach() {
    let s = TestServer::initialized();
    s.mount_kv2();
    let (code, body) = s.post("sys/mounts/hidden", s.root(), json!({"type": "kv"}));
    assert!(code == 200 || code == 204, "{body}");
    s.write_policy(
        "app",
        r#"path "secret/data/app/*" { capabilities = ["read"] }"#,
    );
    let app = s.create_token(json!({"policies": ["app"]}));
    let (code, body) = s.get("sys/internal/ui/mounts", Some(&app));
    assert_eq!(code, 200, "{body}");
    let secret = body["data"]["secret"].as_object().unwrap();
    assert!(secret.contains_key("secret/"), "{body}");
    assert!(
        !secret.contains_key("hidden/"),
        "a mount the caller cannot reach: {body}"
    );
    let (_, body) = s.get("sys/internal/ui/mounts", s.root());
    let secret = body["data"]["secret"].as_object().unwrap();
    assert!(
        secret.contains_key("hidden/") && secret.contains_key("sys/"),
        "{body}"
    );
    assert!(body["data"]["auth"]["token/"].is_object(), "{body}");
    let (code, body) = s.get("sys/internal/ui/mounts/auth/token/lookup-self", s.root());
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["data"]["type"], json!("token"), "{body}");
}
