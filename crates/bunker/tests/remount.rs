//! `sys/remount` through the real binary: a secrets engine and an auth method move to a new
//! path with their data (and stay there across a restart), the moved method's tokens are
//! revoked, protected paths and cross-table moves are refused, sudo is needed, and the CLI's
//! `secrets move` / `auth move` follow the migration to its end.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use bunker_testkit as common;

use common::{cli, errors, TestServer};
use serde_json::{json, Value};

fn remount(s: &TestServer, token: Option<&str>, from: &str, to: &str) -> (u16, Value) {
    s.post("sys/remount", token, json!({"from": from, "to": to}))
}

fn moved(s: &TestServer, from: &str, to: &str) -> String {
    let (st, body) = remount(s, s.root(), from, to);
    assert_eq!(st, 200, "remount {from} -> {to}: {body}");
    let id = body["data"]["migration_id"].as_str().unwrap().to_owned();
    let (st, status) = s.get(&format!("sys/remount/status/{id}"), s.root());
    assert_eq!(st, 200, "{status}");
    assert_eq!(status["data"]["migration_id"], id.as_str());
    assert_eq!(status["data"]["migration_info"]["status"], "success");
    id
}

#[test]
fn a_secrets_engine_moves_with_its_data_and_stays_moved_after_a_restart() {
    let mut s = TestServer::initialized();
    s.mount_kv2();
    s.kv_put("app/db", json!({"password": "hunter2"}));
    let (_, before) = s.get("sys/mounts", s.root());
    let uuid = before["data"]["secret/"]["uuid"].clone();

    let id = moved(&s, "secret", "moved/kv");
    let (_, status) = s.get(&format!("sys/remount/status/{id}"), s.root());
    assert_eq!(
        status["data"]["migration_info"],
        json!({"source_mount": "secret/", "target_mount": "moved/kv/", "status": "success"})
    );
    let (st, body) = s.get("moved/kv/data/app/db", s.root());
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["data"]["data"]["password"], "hunter2");
    assert_eq!(s.get("secret/data/app/db", s.root()).0, 404);
    let (_, after) = s.get("sys/mounts", s.root());
    assert!(after["data"]["secret/"].is_null(), "{after}");
    assert_eq!(
        after["data"]["moved/kv/"]["uuid"], uuid,
        "the same mount, moved"
    );

    s.restart();
    s.unseal();
    let (st, body) = s.get("moved/kv/data/app/db", s.root());
    assert_eq!(st, 200, "after a restart: {body}");
    assert_eq!(body["data"]["data"]["password"], "hunter2");
}

#[test]
fn an_auth_method_moves_with_its_users_and_its_tokens_are_revoked() {
    let s = TestServer::dev();
    let (st, body) = s.post("sys/auth/userpass", s.root(), json!({"type": "userpass"}));
    assert_eq!(st, 204, "{body}");
    let (st, body) = s.post(
        "auth/userpass/users/ann",
        s.root(),
        json!({"password": "pw", "token_policies": "default"}),
    );
    assert_eq!(st, 204, "{body}");
    let login = |mount: &str| {
        s.post(
            &format!("auth/{mount}/login/ann"),
            None,
            json!({"password": "pw"}),
        )
    };
    let (st, body) = login("userpass");
    assert_eq!(st, 200, "{body}");
    let old_token = body["auth"]["client_token"].as_str().unwrap().to_owned();

    moved(&s, "auth/userpass", "auth/people");
    assert_eq!(
        s.get("auth/token/lookup-self", Some(&old_token)).0,
        403,
        "a token of the moved method is revoked, as Vault revokes its leases"
    );
    let (st, body) = login("people");
    assert_eq!(st, 200, "the user logs in at the new path: {body}");
    let token = body["auth"]["client_token"].as_str().unwrap();
    assert_eq!(s.get("auth/token/lookup-self", Some(token)).0, 200);
    assert_ne!(login("userpass").0, 200);
    let (_, list) = s.get("sys/auth", s.root());
    assert_eq!(list["data"]["people/"]["type"], "userpass");
    assert!(list["data"]["userpass/"].is_null());
}

#[test]
fn moves_to_or_from_protected_paths_or_across_tables_are_refused() {
    let s = TestServer::dev();
    let (st, _) = s.post("sys/auth/approle", s.root(), json!({"type": "approle"}));
    assert_eq!(st, 204);
    for (from, to, error) in [
        (
            "",
            "kv",
            "both 'from' and 'to' path must be specified as a string",
        ),
        (
            "secret",
            "sys/kv",
            "cannot remount to destination \"sys/kv/\"",
        ),
        (
            "secret",
            "auth/kv",
            "cannot remount to destination \"auth/kv/\"",
        ),
        (
            "secret",
            "cubbyhole",
            "cannot remount to destination \"cubbyhole/\"",
        ),
        ("cubbyhole", "kv", "cannot remount \"cubbyhole/\""),
        ("sys", "system", "cannot remount \"sys/\""),
        (
            "auth/token",
            "auth/tokens",
            "cannot remount \"auth/token/\"",
        ),
        (
            "auth/approle",
            "approle",
            "cannot remount auth mount to non-auth mount \"approle/\"",
        ),
        (
            "auth/approle",
            "auth/token/x",
            "cannot remount to destination \"auth/token/x/\"",
        ),
        ("nothere", "kv", "no matching mount at \"nothere/\""),
        (
            "secret",
            "secret/sub",
            "path already in use at \"secret/sub/\"",
        ),
        (
            "secret",
            "cubbyhole/x",
            "cannot remount to destination \"cubbyhole/x/\"",
        ),
    ] {
        let (st, body) = remount(&s, s.root(), from, to);
        assert_eq!(st, 400, "{from} -> {to}: {body}");
        assert_eq!(errors(&body), vec![error.to_owned()], "{from} -> {to}");
    }
    let (st, body) = s.get("sys/remount/status/no-such-id", s.root());
    assert_eq!(st, 404, "{body}");
    // Nothing moved.
    let (_, mounts) = s.get("sys/mounts", s.root());
    assert_eq!(mounts["data"]["secret/"]["type"], "kv");
}

#[test]
fn a_move_needs_sudo_and_its_status_does_not() {
    let s = TestServer::dev();
    let rules = |caps: &str| {
        format!(
            "path \"sys/remount\" {{ capabilities = [{caps}] }}\n\
             path \"sys/remount/status/*\" {{ capabilities = [\"read\"] }}"
        )
    };
    for (name, caps) in [
        ("mover", "\"update\""),
        ("sudo-mover", "\"update\", \"sudo\""),
    ] {
        let (st, body) = s.put(
            &format!("sys/policies/acl/{name}"),
            s.root(),
            json!({"policy": rules(caps)}),
        );
        assert_eq!(st, 204, "{body}");
    }
    let plain = s.create_token(json!({"policies": ["mover"]}));
    let (st, body) = remount(&s, Some(&plain), "secret", "kv");
    assert_eq!(st, 403, "update without sudo: {body}");
    let sudo = s.create_token(json!({"policies": ["sudo-mover"]}));
    let (st, body) = remount(&s, Some(&sudo), "secret", "kv");
    assert_eq!(st, 200, "{body}");
    let id = body["data"]["migration_id"].as_str().unwrap();
    let (st, body) = s.get(&format!("sys/remount/status/{id}"), Some(&plain));
    assert_eq!(st, 200, "reading the status needs no sudo: {body}");
}

#[test]
fn the_cli_moves_secrets_engines_and_auth_methods() {
    let s = TestServer::dev();
    let (code, _, err) = cli(&s, &["login", "root"]);
    assert_eq!(code, 0, "{err}");
    s.kv_put("a", json!({"v": "1"}));
    let (code, out, err) = cli(&s, &["secrets", "move", "secret", "kv"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("Started moving secrets engine secret/ to kv/, with migration ID ")
            && out.contains("Success! Finished moving secrets engine secret/ to kv/"),
        "{out}"
    );
    let (code, out, err) = cli(&s, &["kv", "get", "-field=v", "kv/a"]);
    assert_eq!((code, out.trim()), (0, "1"), "{err}");

    let (code, _, err) = cli(&s, &["auth", "enable", "approle"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = cli(&s, &["auth", "move", "approle", "machines"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("Success! Finished moving auth method approle/ to machines/"),
        "{out}"
    );
    let (_, list) = s.get("sys/auth", s.root());
    assert_eq!(list["data"]["machines/"]["type"], "approle");
    let (code, _, err) = cli(&s, &["secrets", "move", "kv", "sys/kv"]);
    assert_eq!(code, 2, "refused by the server");
    assert!(err.contains("cannot remount to destination"), "{err}");
}
