#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
//! Snapshots through the real binary: save, restore into a fresh server, refusal of damaged
//! files, forced restore of another cluster's snapshot, scheduled snapshots and pruning.

use bunker_testkit as common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use common::{cli, errors, poll_until, ServerOptions, TestServer};
use serde_json::{json, Value};

const SNAPSHOT: &str = "sys/storage/raft/snapshot";

/// A server with KV v2 at `secret/` and two secrets.
fn server_with_data() -> TestServer {
    let s = TestServer::initialized();
    s.mount_kv2();
    s.kv_put("app/db", json!({"password": "hunter2"}));
    s.kv_put("app/api", json!({"key": "k-1"}));
    s
}

fn save(s: &TestServer) -> Vec<u8> {
    let resp = s
        .client()
        .get(s.url(SNAPSHOT))
        .header("X-Vault-Token", &s.root_token)
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "application/octet-stream"
    );
    resp.bytes().unwrap().to_vec()
}

fn restore(s: &TestServer, path: &str, token: Option<&str>, file: &[u8]) -> (u16, Value) {
    let mut req = s.client().post(s.url(path)).body(file.to_vec());
    if let Some(token) = token {
        req = req.header("X-Vault-Token", token);
    }
    let resp = req.send().unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn cluster_id(s: &TestServer) -> String {
    let (_, health) = s.get("sys/health", None);
    health["cluster_id"].as_str().unwrap().to_owned()
}

fn sealed(s: &TestServer) -> bool {
    s.get("sys/seal-status", None).1["sealed"] == json!(true)
}

#[test]
fn cli_save_then_restore_into_a_fresh_server() {
    let a = server_with_data();
    let file = a.dir().join("backup.snap");
    let file_arg = file.to_str().unwrap();
    let (code, _, err) = cli(&a, &["login", &a.root_token]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = cli(&a, &["operator", "raft", "snapshot", "save", file_arg]);
    assert_eq!(code, 0, "save: {out} {err}");
    // The size and time of the transfer; no progress line when stderr is not a terminal.
    assert!(
        out.contains("Success! Snapshot saved to ") && out.contains(" s)."),
        "{out}"
    );
    assert!(!err.contains("received"), "{err}");

    let (code, out, err) = cli(
        &a,
        &["operator", "snapshot", "inspect", "-format=json", file_arg],
    );
    assert_eq!(code, 0, "inspect: {err}");
    let manifest: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(manifest["format_version"], json!(1));
    assert_eq!(manifest["cluster_id"], json!(cluster_id(&a)));
    assert!(manifest["entries"].as_u64().unwrap() > 5, "{manifest}");
    let parts = manifest["parts"].as_array().unwrap();
    assert!(!parts.is_empty());
    assert!(parts
        .iter()
        .all(|p| p["sha256"].as_str().unwrap().len() == 64));

    // A fresh server: no token exists yet, the restore needs none.
    let b = TestServer::with_config(ServerOptions::default());
    assert_eq!(b.get("sys/init", None).1["initialized"], json!(false));
    let (code, out, err) = cli(&b, &["operator", "raft", "snapshot", "restore", file_arg]);
    assert_eq!(code, 0, "restore: {out} {err}");
    // The upload's progress, as one plain line when stderr is not a terminal.
    assert!(
        err.contains("sent (100%") && err.contains("Uploaded: the server checks"),
        "{err}"
    );
    assert!(out.contains("Success! Snapshot restored"), "{out}");
    assert_eq!(b.get("sys/init", None).1["initialized"], json!(true));
    assert!(
        sealed(&b),
        "a restored server waits for the snapshot's keys"
    );
    b.unseal_with(&a.keys);
    assert_eq!(cluster_id(&b), cluster_id(&a));
    let (status, body) = b.get("secret/data/app/db", Some(&a.root_token));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["data"]["password"], json!("hunter2"));
}

#[test]
fn damaged_files_are_refused_and_change_nothing() {
    let a = server_with_data();
    let good = save(&a);
    a.kv_put("after", json!({"v": "kept"}));
    let mut flipped = good.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x40;
    let damaged = [
        ("truncated", good[..good.len() - 7].to_vec()),
        ("cut in half", good[..middle].to_vec()),
        ("flipped byte", flipped),
        ("not a snapshot", b"{\"hello\":1}".to_vec()),
        ("empty", Vec::new()),
    ];
    for (what, file) in &damaged {
        for path in [SNAPSHOT, "sys/storage/raft/snapshot-force"] {
            let (status, body) = restore(&a, path, Some(&a.root_token), file);
            assert_eq!(status, 400, "{what} at {path}: {body}");
            assert!(
                errors(&body).iter().any(|e| e.contains("invalid snapshot")),
                "{what}: {body}"
            );
        }
    }
    assert!(!sealed(&a));
    assert_eq!(a.kv_get("after").1["v"], json!("kept"));
    assert_eq!(a.kv_get("app/db").1["password"], json!("hunter2"));

    // Nor does a damaged file initialise a fresh server.
    let fresh = TestServer::with_config(ServerOptions::default());
    let (status, body) = restore(&fresh, SNAPSHOT, None, &damaged[0].1);
    assert_eq!(status, 400, "{body}");
    assert_eq!(fresh.get("sys/init", None).1["initialized"], json!(false));
}

#[test]
fn a_restore_takes_the_server_back_and_needs_sudo() {
    let a = server_with_data();
    let file = save(&a);
    a.kv_put("app/db", json!({"password": "changed"}));
    a.kv_put("later", json!({"v": 1}));

    let no_sudo = a.create_token(json!({"policies": ["default"]}));
    let (status, body) = restore(&a, SNAPSHOT, Some(&no_sudo), &file);
    assert_eq!(status, 403, "{body}");
    let (status, body) = restore(&a, SNAPSHOT, None, &file);
    assert_eq!(status, 403, "{body}");
    let (status, _) = a.get(SNAPSHOT, Some(&no_sudo));
    assert_eq!(status, 403);

    let (status, body) = restore(&a, SNAPSHOT, Some(&a.root_token), &file);
    assert_eq!(status, 204, "{body}");
    assert!(
        !sealed(&a),
        "a restore of this cluster's snapshot stays unsealed"
    );
    assert_eq!(a.kv_get("app/db").1["password"], json!("hunter2"));
    assert_eq!(a.kv_get("later").0, 404);
}

#[test]
fn another_clusters_snapshot_needs_force_and_its_keys() {
    let a = server_with_data();
    let file = save(&a);
    let c = TestServer::initialized();
    let (status, body) = restore(&c, SNAPSHOT, Some(&c.root_token), &file);
    assert_eq!(status, 400, "{body}");
    assert!(
        errors(&body).iter().any(|e| e.contains("snapshot-force")),
        "{body}"
    );
    assert!(!sealed(&c), "a refused restore changes nothing");

    let (status, body) = restore(
        &c,
        "sys/storage/raft/snapshot-force",
        Some(&c.root_token),
        &file,
    );
    assert_eq!(status, 204, "{body}");
    assert!(sealed(&c), "a forced restore seals");
    let (status, _) = c.put("sys/unseal", None, json!({"key": c.keys[0]}));
    assert_eq!(status, 400, "the old cluster's key no longer unseals");
    c.unseal_with(&a.keys);
    assert_eq!(cluster_id(&c), cluster_id(&a));
    let (status, body) = c.get("secret/data/app/api", Some(&a.root_token));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["data"]["key"], json!("k-1"));
}

fn snapshot_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.ends_with(".snap"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn scheduled_snapshots_are_written_and_pruned() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("snaps");
    let s = TestServer::initialized_with(ServerOptions {
        config_extra: format!(
            "snapshot {{\n  interval = \"1s\"\n  retain = 2\n  path = \"{}\"\n}}",
            dir.display()
        ),
        ..Default::default()
    });
    s.mount_kv2();
    s.kv_put("scheduled", json!({"v": "x"}));
    let mut seen = BTreeSet::new();
    let done = poll_until(Duration::from_secs(60), || {
        let names = snapshot_files(&dir);
        // A new snapshot is renamed into place before the oldest goes (a crash between the two
        // leaves one too many, never one too few): retain + 1 at most, for that moment.
        assert!(names.len() <= 3, "pruning keeps retain = 2: {names:?}");
        seen.extend(names);
        seen.len() >= 4
    });
    assert!(done, "four scheduled snapshots within a minute: {seen:?}");
    // Once a round has pruned, retain = 2 are left.
    let mut names = Vec::new();
    let pruned = poll_until(Duration::from_secs(10), || {
        names = snapshot_files(&dir);
        names.len() == 2
    });
    assert!(pruned, "pruning keeps retain = 2: {names:?}");
    for name in &names {
        let path = dir.join(name);
        let (code, out, err) = cli(
            &s,
            &["operator", "snapshot", "inspect", path.to_str().unwrap()],
        );
        assert_eq!(code, 0, "{name}: {err}");
        assert!(out.contains(&cluster_id(&s)), "{out}");
    }
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(
        leftovers.is_empty() || leftovers.len() == 1,
        "{leftovers:?}"
    );
}

#[test]
fn the_manifest_carries_the_dr_merkle_root_of_the_saved_state() {
    let mut s = TestServer::with_config(ServerOptions {
        listener_extra: format!("  cluster_address = \"127.0.0.1:{}\"", common::free_port()),
        ..Default::default()
    });
    s.init_unseal(1, 1);
    s.mount_kv2();
    s.kv_put("app/db", json!({"password": "hunter2"}));
    common::dr::enable_primary(&s);
    s.kv_put("app/after", json!({"n": "1"}));
    let file = s.dir().join("rooted.snap");
    std::fs::write(&file, save(&s)).unwrap();
    let (code, out, err) = cli(
        &s,
        &[
            "operator",
            "snapshot",
            "inspect",
            "-format=json",
            file.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "inspect: {err}");
    let manifest: Value = serde_json::from_str(&out).unwrap();
    let root = manifest["merkle_root"].as_str().unwrap().to_owned();
    assert_eq!(root.len(), 64, "{manifest}");
    // Nothing was written since: the primary's own root of this state, which a DR secondary
    // would have too, is the same.
    let mut status = Value::Null;
    let same = poll_until(Duration::from_secs(20), || {
        status = common::dr::dr_status(&s);
        status["merkle_root"] == json!(root)
    });
    assert!(same, "manifest root {root}, dr/status {status}");
}

#[test]
fn a_restore_on_a_dr_primary_starts_a_new_history_that_its_secondary_follows() {
    use common::dr::{
        activation_token, adopt_credentials, dr_server, dr_status, enable_primary,
        enable_secondary, fail_over, merkle_syncs, wait_converged,
    };
    let p = dr_server();
    p.mount_kv2();
    p.kv_put("kept", json!({"v": "before"}));
    p.kv_put("changed", json!({"v": "before"}));
    enable_primary(&p);
    let mut s = dr_server();
    enable_secondary(&s, &activation_token(&p, "site-b"));
    adopt_credentials(&mut s, &p);
    wait_converged(&p, &s);
    let file = save(&p);
    // Written after the snapshot, streamed to the secondary: the restore takes them back.
    p.kv_put("changed", json!({"v": "after"}));
    p.kv_put("added", json!({"v": "after"}));
    wait_converged(&p, &s);
    let syncs = merkle_syncs(&dr_status(&s));
    let generation = dr_status(&p)["generation"].as_u64().unwrap();

    // Refused where it cannot work: another cluster's keys on a primary, any restore on a
    // secondary.
    let (status, body) = restore(
        &p,
        "sys/storage/raft/snapshot-force",
        Some(&p.root_token),
        &file,
    );
    assert_eq!(status, 400, "{body}");
    assert!(errors(&body).join(" ").contains("DR primary"), "{body}");
    let (status, body) = restore(&s, SNAPSHOT, Some(&s.root_token), &file);
    assert!(status == 400 || status == 403, "{status} {body}");
    assert_eq!(
        p.kv_get("added").0,
        200,
        "a refused restore changes nothing"
    );

    let (status, body) = restore(&p, SNAPSHOT, Some(&p.root_token), &file);
    assert_eq!(status, 204, "{body}");
    assert_eq!(p.kv_get("added").0, 404);
    assert_eq!(p.kv_get("changed").1["v"], json!("before"));
    assert_eq!(
        dr_status(&p)["generation"].as_u64(),
        Some(generation + 1),
        "a new history"
    );
    // The secondary cannot resume from its WAL position: it resyncs by Merkle diff, then
    // streams what comes next.
    wait_converged(&p, &s);
    assert!(
        merkle_syncs(&dr_status(&s)) > syncs,
        "the secondary must have resynced: {}",
        dr_status(&s)
    );
    p.kv_put("streamed", json!({"v": "next"}));
    wait_converged(&p, &s);

    // Promoted, it holds the restored history and what followed, nothing of the old one.
    fail_over(&p, &s);
    assert_eq!(s.kv_get("added").0, 404);
    assert_eq!(s.kv_get("changed").1["v"], json!("before"));
    assert_eq!(s.kv_get("kept").1["v"], json!("before"));
    assert_eq!(s.kv_get("streamed").1["v"], json!("next"));
}

#[test]
fn a_restore_larger_than_a_storage_batch_is_one_transaction() {
    use common::dr::bulk_put;
    // Over 10,000 storage operations (a KV v2 secret is two keys): more than one batch.
    const SECRETS: usize = 2600;
    let a = TestServer::initialized();
    a.mount_kv2();
    bulk_put(&a, "app/", 0..SECRETS, "kept");
    let file = save(&a);
    bulk_put(&a, "extra/", 0..SECRETS, "undone");
    bulk_put(&a, "app/", 0..SECRETS, "changed");

    let (status, body) = restore(&a, SNAPSHOT, Some(&a.root_token), &file);
    assert_eq!(status, 204, "{body}");
    // Applied in one transaction: the server never sealed and serves the snapshot's data.
    assert!(
        !sealed(&a),
        "a restore of this cluster's snapshot keeps serving"
    );
    for i in (0..SECRETS).step_by(173).chain([SECRETS - 1]) {
        let (code, data) = a.kv_get(&format!("app/{i}"));
        assert_eq!(code, 200);
        assert_eq!(data["round"], json!("kept"), "app/{i}: {data}");
        assert_eq!(a.kv_get(&format!("extra/{i}")).0, 404, "extra/{i}");
    }
}

#[test]
fn a_snapshot_from_before_a_rotation_restores_on_a_dr_primary_and_its_keys_survive() {
    use common::dr::{
        activation_token, adopt_credentials, dr_server, dr_status, enable_primary,
        enable_secondary, wait_converged,
    };
    let mut p = dr_server();
    p.mount_kv2();
    p.kv_put("kept", json!({"v": "before"}));
    let file = save(&p);
    // Rotated, then made a DR primary: its own keys (CA, server key) are sealed under term 2,
    // which the snapshot's keyring lacks.
    let (code, body) = p.post("sys/rotate", p.root(), json!({}));
    assert_eq!(code, 204, "{body}");
    enable_primary(&p);
    let mut s = dr_server();
    enable_secondary(&s, &activation_token(&p, "site-b"));
    adopt_credentials(&mut s, &p);
    p.kv_put("undone", json!({"v": "after the rotation"}));
    wait_converged(&p, &s);

    let (status, body) = restore(&p, SNAPSHOT, Some(&p.root_token), &file);
    assert_eq!(status, 204, "{body}");
    assert!(!sealed(&p));
    assert_eq!(p.kv_get("undone").0, 404);
    // The rotation is not undone: term 2 stays the active term.
    let (_, key_status) = p.get("sys/key-status", p.root());
    assert_eq!(key_status["data"]["term"], json!(2), "{key_status}");
    p.kv_put("written-after", json!({"v": "term 2"}));
    wait_converged(&p, &s);

    // After a restart the primary's own keys (sealed under term 2) still open: it issues
    // activation tokens and its secondary streams again.
    p.restart();
    p.unseal();
    activation_token(&p, "site-d");
    p.kv_put("after-restart", json!({"v": "streamed"}));
    wait_converged(&p, &s);
    assert_eq!(p.kv_get("kept").1["v"], json!("before"));
    assert_eq!(p.kv_get("written-after").1["v"], json!("term 2"));
    assert_eq!(dr_status(&s)["state"], json!("stream-wals"));
}

const RESTORE_STATUS: &str = "sys/storage/raft/snapshot-restore-status";
const BEFORE_APPLY: &str = "snapshot-restore-before-apply";

#[test]
fn a_restore_shows_its_progress_in_its_status_and_in_the_cli() {
    let s = server_with_data();
    let file = save(&s);
    let path = s.dir().join("backup.snap");
    std::fs::write(&path, &file).unwrap();
    let (code, idle) = s.get(RESTORE_STATUS, s.root());
    assert_eq!(code, 200, "{idle}");
    assert_eq!(idle["data"]["state"], json!("idle"), "{idle}");
    // Root-protected as the restore itself.
    let plain = s.create_token(json!({"policies": ["default"]}));
    assert_eq!(s.get(RESTORE_STATUS, Some(&plain)).0, 403);
    assert_eq!(
        s.get(RESTORE_STATUS, None).0,
        403,
        "anonymous, once initialised"
    );

    let (code, _, err) = cli(&s, &["login", &s.root_token]);
    assert_eq!(code, 0, "{err}");
    s.hold_at(BEFORE_APPLY);
    let (out_path, err_path) = (s.dir().join("restore.out"), s.dir().join("restore.err"));
    let args = [
        "operator",
        "raft",
        "snapshot",
        "restore",
        path.to_str().unwrap(),
    ];
    let mut restoring = common::cli_background(&s, &args, &out_path, &err_path);
    s.wait_held(BEFORE_APPLY, Duration::from_secs(30));
    // Held before the commit: the status names the stage and its size.
    let (_, status) = s.get(RESTORE_STATUS, s.root());
    let data = &status["data"];
    assert_eq!(data["state"], json!("applying"), "{status}");
    assert_eq!(data["in_progress"], json!(true), "{status}");
    assert_eq!(data["file_bytes"], json!(file.len()), "{status}");
    assert!(data["entries"].as_u64().unwrap() > 0, "{status}");
    assert_eq!(data["stage_unit"], json!("operations"), "{status}");
    assert!(data["stage_total"].as_u64().unwrap() > 0, "{status}");
    // The CLI, past the upload, shows the server's stage (stderr: stdout keeps the result).
    let read = |path: &Path| std::fs::read_to_string(path).unwrap_or_default();
    let shown = poll_until(Duration::from_secs(30), || {
        read(&err_path).contains("server: applying, ")
    });
    assert!(shown, "{}", read(&err_path));
    s.release(BEFORE_APPLY);
    let code = restoring.wait().unwrap();
    assert!(code.success(), "{}{}", read(&out_path), read(&err_path));
    assert!(read(&out_path).contains("Success! Snapshot restored"));
    let (_, done) = s.get(RESTORE_STATUS, s.root());
    assert_eq!(done["data"]["state"], json!("complete"), "{done}");
    assert!(done["data"].get("stage_done").is_none(), "{done}");

    // A refused restore ends as failed, with the error the client was given.
    let (code, _) = restore(&s, SNAPSHOT, Some(&s.root_token), &file[..file.len() - 7]);
    assert_eq!(code, 400);
    let (_, failed) = s.get(RESTORE_STATUS, s.root());
    assert_eq!(failed["data"]["state"], json!("failed"), "{failed}");
    assert!(
        failed["data"]["error"]
            .as_str()
            .unwrap()
            .contains("invalid snapshot"),
        "{failed}"
    );

    // On a server that is not initialised anyone may restore, and so read how it goes.
    let fresh = TestServer::with_config(ServerOptions::default());
    let (code, anonymous) = fresh.get(RESTORE_STATUS, None);
    assert_eq!(code, 200, "{anonymous}");
    assert_eq!(anonymous["data"]["state"], json!("idle"), "{anonymous}");
}
