//! `sys/rekey` end to end against the real binary: new unseal key shares replace the old ones
//! (which stop working), across seal, kill -9 and restart; the verification flow; bad input;
//! a rekeyed DR primary whose secondary then unseals with the new shares; the CLI.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use bunker_testkit as common;

use common::dr::{
    activation_token, adopt_credentials, assert_dr_refused, dr_server, enable_primary,
    enable_secondary, promote_with_keys, wait_converged, CONVERGE,
};
use common::{cli, errors, poll_until, ServerOptions, TestServer};
use reqwest::Method;
use serde_json::{json, Value};

/// A config-file server initialised `shares`/`threshold`, unsealed, KV v2 at `secret/` with
/// one secret written.
fn server(shares: u32, threshold: u32) -> TestServer {
    let mut s = TestServer::with_config(ServerOptions::default());
    s.init_unseal(shares, threshold);
    s.mount_kv2();
    s.kv_put("app/config", json!({"password": "before-rekey"}));
    s
}

fn assert_secret_readable(s: &TestServer) {
    let (code, data) = s.kv_get("app/config");
    assert_eq!(code, 200, "read after rekey: {data}");
    assert_eq!(data["password"], "before-rekey");
}

fn rekey_status(s: &TestServer) -> Value {
    let (code, body) = s.get("sys/rekey/init", None);
    assert_eq!(code, 200, "rekey status: {body}");
    body
}

fn start_rekey(s: &TestServer, shares: u32, threshold: u32, verify: bool) -> String {
    let (code, body) = s.put(
        "sys/rekey/init",
        None,
        json!({
            "secret_shares": shares,
            "secret_threshold": threshold,
            "require_verification": verify,
        }),
    );
    assert_eq!(code, 200, "rekey init: {body}");
    assert_eq!(body["started"], json!(true), "{body}");
    assert_eq!(body["n"], json!(shares), "{body}");
    assert_eq!(body["t"], json!(threshold), "{body}");
    assert_eq!(body["progress"], json!(0), "{body}");
    assert_eq!(body["verification_required"], json!(verify), "{body}");
    body["nonce"].as_str().expect("nonce").to_owned()
}

/// Submit `keys` to `sys/rekey/update`; returns the final (complete) answer.
fn submit_current_keys(s: &TestServer, keys: &[String], nonce: &str) -> Value {
    let mut last = Value::Null;
    for (i, k) in keys.iter().enumerate() {
        let (code, body) = s.put("sys/rekey/update", None, json!({"key": k, "nonce": nonce}));
        assert_eq!(code, 200, "rekey update {i}: {body}");
        if i + 1 < keys.len() {
            assert_eq!(body["progress"], json!(i + 1), "{body}");
            assert!(body.get("complete").is_none(), "{body}");
        }
        last = body;
    }
    assert_eq!(last["complete"], json!(true), "{last}");
    assert_eq!(last["nonce"], json!(nonce), "{last}");
    last
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|k| k.as_str().expect("string").to_owned())
        .collect()
}

fn seal(s: &TestServer) {
    let (code, body) = s.put("sys/seal", s.root(), json!({}));
    assert_eq!(code, 204, "seal: {body}");
}

/// Submit `keys` to `sys/unseal`; the last one must be refused as a wrong key and the server
/// must stay sealed (then progress is reset).
fn assert_keys_refused(s: &TestServer, keys: &[String]) {
    let mut last = (0, Value::Null);
    for k in keys {
        last = s.put("sys/unseal", None, json!({ "key": k }));
    }
    assert_eq!(last.0, 400, "old keys must be refused: {}", last.1);
    let (_, status) = s.get("sys/seal-status", None);
    assert_eq!(status["sealed"], json!(true), "{status}");
    assert_eq!(status["progress"], json!(0), "{status}");
}

fn seal_config(s: &TestServer) -> (u64, u64) {
    let (_, status) = s.get("sys/seal-status", None);
    (
        status["n"].as_u64().expect("n"),
        status["t"].as_u64().expect("t"),
    )
}

#[test]
fn rekey_replaces_the_shares_across_seal_and_restart() {
    let mut s = server(5, 3);
    let old = s.keys.clone();
    let idle = rekey_status(&s);
    assert_eq!(
        idle,
        json!({
            "started": false, "nonce": "", "t": 0, "n": 0, "progress": 0, "required": 3,
            "pgp_fingerprints": null, "backup": false, "verification_required": false,
        })
    );

    let nonce = start_rekey(&s, 3, 2, false);
    assert_eq!(nonce.len(), 36);
    assert_eq!(rekey_status(&s)["required"], json!(3));
    let done = submit_current_keys(&s, &old[1..4], &nonce);
    let new = strings(&done["keys"]);
    let new_b64 = strings(&done["keys_base64"]);
    assert_eq!(new.len(), 3);
    assert_eq!(new_b64.len(), 3);
    assert!(new.iter().all(|k| k.len() == 66), "{done}");
    assert!(new.iter().all(|k| !old.contains(k)));
    assert_eq!(done["verification_required"], json!(false));
    assert!(done.get("verification_nonce").is_none(), "{done}");
    assert_eq!(done["backup"], json!(false));

    // Active at once: no rekey in progress, the new configuration shows, data is readable.
    assert_eq!(rekey_status(&s)["started"], json!(false));
    assert_eq!(seal_config(&s), (3, 2));
    assert_secret_readable(&s);

    seal(&s);
    assert_keys_refused(&s, &old[..2]);
    assert_keys_refused(&s, &old[3..5]);
    s.unseal_with(&[new[0].clone(), new_b64[2].clone()]);
    assert_secret_readable(&s);

    // kill -9 and start again: the new shares are what is on disk.
    s.restart();
    assert_eq!(seal_config(&s), (3, 2));
    assert_keys_refused(&s, &old[2..4]);
    s.unseal_with(&new[1..]);
    assert_secret_readable(&s);
    s.kv_put("app/after", json!({"ok": "yes"}));
}

#[test]
fn verification_keeps_the_old_shares_until_the_new_ones_come_back() {
    let mut s = server(3, 2);
    let old = s.keys.clone();
    let nonce = start_rekey(&s, 2, 2, true);
    let done = submit_current_keys(&s, &old[..2], &nonce);
    assert_eq!(done["verification_required"], json!(true), "{done}");
    let vnonce = done["verification_nonce"]
        .as_str()
        .expect("verification_nonce")
        .to_owned();
    let new = strings(&done["keys"]);
    assert_eq!(new.len(), 2);

    let status = rekey_status(&s);
    assert_eq!(status["started"], json!(true));
    assert_eq!(status["verification_nonce"], json!(vnonce), "{status}");
    let (code, body) = s.put(
        "sys/rekey/update",
        None,
        json!({"key": old[2], "nonce": nonce}),
    );
    assert_eq!(code, 400, "{body}");
    assert!(errors(&body)[0].contains("verification must be performed"));
    assert_eq!(seal_config(&s), (3, 2), "not active before verification");

    let (code, v) = s.get("sys/rekey/verify", None);
    assert_eq!(code, 200, "{v}");
    assert_eq!(
        v,
        json!({"started": true, "nonce": vnonce, "t": 2, "n": 2, "progress": 0})
    );
    let (code, body) = s.put(
        "sys/rekey/verify",
        None,
        json!({"key": new[0], "nonce": nonce}),
    );
    assert_eq!(code, 400, "wrong nonce: {body}");
    let (code, body) = s.put(
        "sys/rekey/verify",
        None,
        json!({"key": new[0], "nonce": vnonce}),
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["progress"], json!(1));
    let (code, restarted) = s.delete("sys/rekey/verify", None);
    assert_eq!(code, 200, "{restarted}");
    assert_eq!(restarted["progress"], json!(0));
    assert_ne!(restarted["nonce"], json!(vnonce));

    // A crash before verification: the old shares are still the ones on disk.
    s.restart();
    assert_eq!(seal_config(&s), (3, 2));
    assert_keys_refused(&s, &new);
    s.unseal_with(&old[1..]);
    assert_eq!(
        rekey_status(&s)["started"],
        json!(false),
        "pending rekey is gone"
    );

    // Again, this time verified.
    let nonce = start_rekey(&s, 2, 2, true);
    let done = submit_current_keys(&s, &old[..2], &nonce);
    let new = strings(&done["keys"]);
    let vnonce = done["verification_nonce"].as_str().unwrap().to_owned();
    // Old shares after verification has started: they are not the new key.
    let (code, _) = s.put(
        "sys/rekey/verify",
        None,
        json!({"key": old[0], "nonce": vnonce}),
    );
    assert_eq!(code, 200);
    let (code, body) = s.put(
        "sys/rekey/verify",
        None,
        json!({"key": old[1], "nonce": vnonce}),
    );
    assert_eq!(code, 400, "{body}");
    assert_eq!(
        errors(&body),
        vec!["rekey verification failed; incorrect key shares supplied".to_owned()]
    );
    let (_, v) = s.get("sys/rekey/verify", None);
    let vnonce = v["nonce"].as_str().unwrap().to_owned();
    let mut last = Value::Null;
    for k in &new {
        let (code, body) = s.put("sys/rekey/verify", None, json!({"key": k, "nonce": vnonce}));
        assert_eq!(code, 200, "verify: {body}");
        last = body;
    }
    assert_eq!(last, json!({"nonce": vnonce, "complete": true}));
    assert_eq!(seal_config(&s), (2, 2));
    assert_eq!(rekey_status(&s)["started"], json!(false));

    seal(&s);
    assert_keys_refused(&s, &old[..2]);
    s.unseal_with(&new);
    assert_secret_readable(&s);
    s.restart();
    assert_keys_refused(&s, &old[1..]);
    s.unseal_with(&new);
    assert_secret_readable(&s);
}

fn assert_400(s: &TestServer, path: &str, body: Value, needle: &str) {
    let (code, resp) = s.put(path, None, body);
    assert_eq!(code, 400, "{path}: {resp}");
    let errs = errors(&resp);
    assert!(
        errs.iter().any(|e| e.contains(needle)),
        "{path}: expected an error containing {needle:?}, got {errs:?}"
    );
}

#[test]
fn bad_input_is_refused_without_changing_state() {
    let s = server(5, 3);
    let old = s.keys.clone();
    assert_400(
        &s,
        "sys/rekey/update",
        json!({"key": old[0], "nonce": "x"}),
        "no barrier rekey in progress",
    );
    let init = "sys/rekey/init";
    assert_400(
        &s,
        init,
        json!({"secret_shares": 3, "secret_threshold": 2, "backup": true}),
        "backup",
    );
    assert_400(
        &s,
        init,
        json!({"secret_shares": 3, "secret_threshold": 2, "pgp_keys": ["k1", "k2", "k3"]}),
        "PGP",
    );
    assert_400(
        &s,
        init,
        json!({"secret_shares": 2, "secret_threshold": 3}),
        "threshold greater than the total shares",
    );
    assert_400(
        &s,
        init,
        json!({"secret_shares": 3, "secret_threshold": 1}),
        "invalid rekey seal configuration",
    );
    assert_400(&s, init, json!({"secret_shares": 300}), "less than 256");
    assert_eq!(rekey_status(&s)["started"], json!(false));

    let nonce = start_rekey(&s, 3, 2, false);
    assert_400(
        &s,
        init,
        json!({"secret_shares": 3, "secret_threshold": 2}),
        "rekey already in progress",
    );
    let update = "sys/rekey/update";
    assert_400(
        &s,
        update,
        json!({"key": old[0], "nonce": "not-the-nonce"}),
        "incorrect nonce supplied",
    );
    assert_400(
        &s,
        update,
        json!({"key": "not a key!", "nonce": nonce}),
        "hex or base64",
    );
    assert_400(
        &s,
        update,
        json!({"key": "abcd", "nonce": nonce}),
        "shorter than minimum",
    );
    assert_400(
        &s,
        update,
        json!({"nonce": nonce}),
        "'key' must be specified",
    );
    let status = rekey_status(&s);
    assert_eq!(status["progress"], json!(0), "{status}");
    assert_eq!(status["nonce"], json!(nonce), "{status}");

    let (code, body) = s.put(update, None, json!({"key": old[0], "nonce": nonce}));
    assert_eq!(code, 200, "{body}");
    assert_400(
        &s,
        update,
        json!({"key": old[0], "nonce": nonce}),
        "already been provided",
    );
    assert_eq!(rekey_status(&s)["progress"], json!(1));

    // A quorum that does not rebuild the root key: refused, progress reset, rekey kept.
    let damaged: String = old[2]
        .char_indices()
        .map(|(i, c)| match (i, c) {
            (6, '0') => '1',
            (6, _) => '0',
            _ => c,
        })
        .collect();
    assert_ne!(damaged, old[2]);
    let (code, _) = s.put(update, None, json!({"key": old[1], "nonce": nonce}));
    assert_eq!(code, 200);
    assert_400(
        &s,
        update,
        json!({"key": damaged, "nonce": nonce}),
        "root key verification failed",
    );
    let status = rekey_status(&s);
    assert_eq!(
        (&status["started"], &status["progress"]),
        (&json!(true), &json!(0))
    );
    assert_eq!(seal_config(&s), (5, 3));

    // Cancel resets progress; the old nonce is dead.
    let (code, _) = s.put(update, None, json!({"key": old[4], "nonce": nonce}));
    assert_eq!(code, 200);
    let (code, body) = s.delete("sys/rekey/init", None);
    assert_eq!(code, 204, "cancel: {body}");
    let status = rekey_status(&s);
    assert_eq!(
        (&status["started"], &status["progress"], &status["nonce"]),
        (&json!(false), &json!(0), &json!(""))
    );
    assert_400(
        &s,
        update,
        json!({"key": old[0], "nonce": nonce}),
        "no barrier rekey in progress",
    );
    let (code, body) = s.get("sys/rekey/verify", None);
    assert_eq!(code, 400, "verify status without a rekey: {body}");
    let (code, _) = s.get("sys/rekey/update", None);
    assert_eq!(code, 405);

    // Sealed: Vault answers 503 on every rekey endpoint.
    seal(&s);
    let init_body = json!({"secret_shares": 3, "secret_threshold": 2});
    let key_body = json!({"key": old[0], "nonce": ""});
    for (method, path, body) in [
        (Method::GET, "sys/rekey/init", None),
        (Method::PUT, "sys/rekey/init", Some(init_body)),
        (Method::DELETE, "sys/rekey/init", None),
        (Method::PUT, "sys/rekey/update", Some(key_body.clone())),
        (Method::GET, "sys/rekey/verify", None),
        (Method::PUT, "sys/rekey/verify", Some(key_body)),
    ] {
        let (code, resp) = s.request(method.clone(), path, None, body);
        assert_eq!(code, 503, "{method} {path} while sealed: {resp}");
        assert_eq!(errors(&resp), vec!["Vault is sealed".to_owned()]);
    }
    // And the old shares still unseal: nothing was changed by any of the above.
    s.unseal_with(&old[2..]);
    assert_secret_readable(&s);
}

#[test]
fn rekeyed_dr_primary_secondary_unseals_and_promotes_with_the_new_shares() {
    let mut p = dr_server();
    p.mount_kv2();
    p.kv_put("app/config", json!({"password": "before-rekey"}));
    let mut s = dr_server();
    enable_primary(&p);
    enable_secondary(&s, &activation_token(&p, "site-b"));
    adopt_credentials(&mut s, &p);
    wait_converged(&p, &s);
    let old = p.keys.clone();
    // The secondary, unsealed with the primary's (current) shares, follows its seal.
    s.unseal();
    assert_dr_refused(&s, "sys/rekey/init", None);

    let nonce = start_rekey(&p, 3, 2, false);
    let done = submit_current_keys(&p, &old[..3], &nonce);
    let new = strings(&done["keys"]);
    p.kv_put("app/after", json!({"n": "1"}));
    wait_converged(&p, &s);
    assert_eq!(seal_config(&s), (3, 2), "the seal configuration replicated");
    // Its root key in memory is stale now: it seals itself, and the new shares open it.
    let sealed = poll_until(CONVERGE, || {
        s.get("sys/seal-status", None).1["sealed"] == json!(true)
    });
    assert!(
        sealed,
        "the secondary must seal when the primary was rekeyed"
    );
    assert_keys_refused(&s, &old[..2]);
    s.unseal_with(&new[..2]);
    let (code, health) = s.get("sys/health", None);
    assert_eq!(code, 472, "unsealed DR secondary: {health}");

    // kill -9: the secondary comes back sealed and takes only the new shares.
    s.restart();
    assert_eq!(seal_config(&s), (3, 2));
    assert_keys_refused(&s, &old[2..4]);
    s.unseal_with(&new[1..]);
    wait_converged(&p, &s);

    // So does the primary.
    p.restart();
    assert_keys_refused(&p, &old[..2]);
    p.unseal_with(&[new[2].clone(), new[0].clone()]);
    assert_secret_readable(&p);
    wait_converged(&p, &s);

    // Promote the secondary with the new shares: the data is all there.
    let last = promote_with_keys(&s, &new[..2]);
    assert_eq!(last["data"]["complete"], json!(true), "{last}");
    assert_secret_readable(&s);
    let (code, data) = s.kv_get("app/after");
    assert_eq!((code, &data["n"]), (200, &json!("1")), "{data}");
}

#[test]
fn cli_rekey_prints_new_keys_that_unseal() {
    let s = server(3, 2);
    let old = s.keys.clone();
    let (code, out, err) = cli(
        &s,
        &[
            "operator",
            "rekey",
            "-init",
            "-key-shares=4",
            "-key-threshold=3",
        ],
    );
    assert_eq!(code, 0, "init: {out} {err}");
    assert!(
        out.contains("Rekey Progress") && out.contains("0/2"),
        "{out}"
    );

    let (code, out, err) = cli(&s, &["operator", "rekey", "-status"]);
    assert_eq!(code, 0, "status: {err}");
    assert!(out.contains("New Shares") && out.contains('4'), "{out}");

    let (code, out, err) = cli(&s, &["operator", "rekey", &old[0]]);
    assert_eq!(code, 0, "first key: {out} {err}");
    assert!(out.contains("1/2"), "{out}");
    let (code, out, err) = cli(&s, &["operator", "rekey", &old[2]]);
    assert_eq!(code, 0, "second key: {out} {err}");
    assert!(out.contains("Operation nonce: "), "{out}");
    assert!(
        out.contains("4 key shares and a key threshold of 3"),
        "{out}"
    );
    let new = new_keys_in(&out);
    assert_eq!(new.len(), 4, "{out}");

    let (code, _, err) = cli(&s, &["operator", "rekey", &old[1]]);
    assert_ne!(code, 0, "no rekey in progress any more");
    assert!(err.contains("No rekey is in progress"), "{err}");
    let (code, out, _) = cli(&s, &["operator", "rekey", "-cancel"]);
    assert_eq!(code, 0);
    assert!(out.contains("Canceled rekeying"), "{out}");

    seal(&s);
    assert_keys_refused(&s, &old);
    s.unseal_with(&new[1..]);
    assert_secret_readable(&s);

    // With verification: the new keys are printed, then given back with -verify.
    let (code, out, err) = cli(
        &s,
        &[
            "operator",
            "rekey",
            "-init",
            "-key-shares=2",
            "-key-threshold=2",
            "-verify",
        ],
    );
    assert_eq!(code, 0, "init -verify: {out} {err}");
    let mut out = String::new();
    for k in &new[..3] {
        let (code, o, err) = cli(&s, &["operator", "rekey", k]);
        assert_eq!(code, 0, "current key: {o} {err}");
        out = o;
    }
    assert!(
        out.contains("will not be active until after verification"),
        "{out}"
    );
    assert!(out.contains("Verification Nonce"), "{out}");
    let verified: Vec<String> = new_keys_in(&out);
    assert_eq!(verified.len(), 2, "{out}");
    let (code, out, _) = cli(&s, &["operator", "rekey", "-verify", "-status"]);
    assert_eq!(code, 0);
    assert!(out.contains("0/2"), "{out}");
    let (code, out, err) = cli(&s, &["operator", "rekey", "-verify", &verified[1]]);
    assert_eq!(code, 0, "verify 1: {out} {err}");
    assert!(out.contains("1/2"), "{out}");
    let (code, out, err) = cli(&s, &["operator", "rekey", "-verify", &verified[0]]);
    assert_eq!(code, 0, "verify 2: {out} {err}");
    assert!(out.contains("Rekey verification was successful"), "{out}");

    seal(&s);
    assert_keys_refused(&s, &new[..2]);
    s.unseal_with(&verified);
    assert_secret_readable(&s);
}

/// The `Key N: <key>` lines of `bunker operator rekey` output.
fn new_keys_in(out: &str) -> Vec<String> {
    out.lines()
        .filter_map(|l| l.strip_prefix("Key ").and_then(|r| r.split_once(": ")))
        .map(|(_, k)| k.trim().to_owned())
        .collect()
}

/// The root key a rekey keeps for HA standbys (under a key term, at a cluster-local path)
/// never leaves in a snapshot file, which would outlive the rotation that retires its term.
#[test]
fn a_snapshot_after_a_rekey_does_not_carry_the_new_root_key() {
    let mut s = server(3, 2);
    s.rekey(3, 2);
    let resp = s
        .client()
        .get(s.url("sys/storage/raft/snapshot"))
        .header("X-Vault-Token", &s.root_token)
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let file = resp.bytes().unwrap();
    let holds = |needle: &[u8]| file.windows(needle.len()).any(|w| w == needle);
    assert!(holds(b"core/keyring"), "keys are named in the file");
    assert!(!holds(b"repl/barrier/root-key"));
}
