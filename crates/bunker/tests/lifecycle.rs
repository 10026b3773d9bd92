//! Seal lifecycle against a config-file server on embedded storage: init, unseal progress,
//! seal, restart, generate-root (OTP), and barrier key rotation.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use bunker_testkit as common;

use common::{errors, ServerOptions, TestServer};
use serde_json::{json, Value};

/// Flip every bit of the share's value bytes, keeping its last byte (the x coordinate), so
/// the share is well formed and distinct but wrong.
fn corrupt_share(hex_key: &str) -> String {
    let n = hex_key.len();
    let (value, x) = hex_key.split_at(n - 2);
    let flipped: String = value
        .as_bytes()
        .chunks(2)
        .map(|c| {
            let b = u8::from_str_radix(std::str::from_utf8(c).unwrap(), 16).unwrap();
            format!("{:02x}", !b)
        })
        .collect();
    format!("{flipped}{x}")
}

fn seal_status(s: &TestServer) -> Value {
    let (st, b) = s.get("sys/seal-status", None);
    assert_eq!(st, 200, "seal-status: {b}");
    b
}

fn unseal_key(s: &TestServer, key: &str) -> (u16, Value) {
    s.put("sys/unseal", None, json!({ "key": key }))
}

#[test]
fn init_unseal_progress_seal_and_restart() {
    let mut s = TestServer::with_config(ServerOptions::default());

    // Uninitialised: health says 501, seal-status says not initialised.
    let (st, b) = s.get("sys/health", None);
    assert_eq!(st, 501, "health before init: {b}");
    assert_eq!(b["initialized"], json!(false));
    let (st, b) = s.get("sys/init", None);
    assert_eq!(st, 200);
    assert_eq!(b["initialized"], json!(false));

    let (st, init) = s.put(
        "sys/init",
        None,
        json!({"secret_shares": 5, "secret_threshold": 3}),
    );
    assert_eq!(st, 200, "init: {init}");
    let keys: Vec<String> = init["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(keys.len(), 5);
    assert_eq!(init["keys_base64"].as_array().map(Vec::len), Some(5));
    let root = init["root_token"].as_str().unwrap().to_owned();
    assert!(!root.is_empty());
    s.keys = keys.clone();
    s.root_token = root.clone();

    // A second init is refused.
    let (st, b) = s.put(
        "sys/init",
        None,
        json!({"secret_shares": 1, "secret_threshold": 1}),
    );
    assert_eq!(st, 400, "second init: {b}");

    let st0 = seal_status(&s);
    assert_eq!(st0["initialized"], json!(true));
    assert_eq!(st0["sealed"], json!(true));
    assert_eq!(st0["t"], json!(3));
    assert_eq!(st0["n"], json!(5));
    assert_eq!(st0["progress"], json!(0));

    // Sealed: KV and authenticated sys paths answer 503 "Vault is sealed".
    let (st, b) = s.get("secret/data/x", Some(&root));
    assert_eq!(st, 503, "{b}");
    assert_eq!(b, json!({"errors": ["Vault is sealed"]}));

    // Progress counts; a duplicate key is ignored.
    let (st, b) = unseal_key(&s, &keys[0]);
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["progress"], json!(1));
    assert_eq!(b["sealed"], json!(true));
    let nonce = b["nonce"].as_str().unwrap_or_default().to_owned();
    assert!(
        !nonce.is_empty(),
        "unseal in progress should report a nonce: {b}"
    );
    let (st, b) = unseal_key(&s, &keys[0]);
    assert_eq!(st, 200, "duplicate key: {b}");
    assert_eq!(b["progress"], json!(1), "duplicate key must not count: {b}");
    let (st, b) = unseal_key(&s, &keys[1]);
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["progress"], json!(2));
    assert_eq!(b["sealed"], json!(true));

    // A wrong (well-formed) key completing the quorum fails with 400 and resets progress.
    let (st, b) = unseal_key(&s, &corrupt_share(&keys[3]));
    assert_eq!(st, 400, "wrong key at quorum: {b}");
    assert!(!errors(&b).is_empty(), "400 must carry errors: {b}");
    let after = seal_status(&s);
    assert_eq!(after["sealed"], json!(true));
    assert_eq!(after["progress"], json!(0), "progress must reset: {after}");

    // A malformed key is a 400 and does not count.
    let (st, b) = unseal_key(&s, "not-a-key!!");
    assert_eq!(st, 400, "malformed key: {b}");
    assert_eq!(seal_status(&s)["progress"], json!(0));

    // Reset clears progress.
    let (st, b) = unseal_key(&s, &keys[0]);
    assert_eq!((st, b["progress"].clone()), (200, json!(1)), "{b}");
    let (st, b) = s.put("sys/unseal", None, json!({"reset": true}));
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["progress"], json!(0));

    // Now a correct quorum unseals.
    for (i, k) in keys[..3].iter().enumerate() {
        let (st, b) = unseal_key(&s, k);
        assert_eq!(st, 200, "{b}");
        if i < 2 {
            assert_eq!(b["progress"], json!(i + 1));
            assert_eq!(b["sealed"], json!(true));
        } else {
            assert_eq!(b["sealed"], json!(false), "{b}");
            assert_eq!(b["progress"], json!(0));
        }
    }
    let (st, b) = s.get("sys/health", None);
    assert_eq!(st, 200, "{b}");

    s.mount_kv2();
    s.kv_put("life/one", json!({"v": "first"}));

    // Seal: KV refuses with 503 and Vault's message; health says 503.
    let (st, b) = s.put("sys/seal", Some(&root), json!({}));
    assert!(st == 204 || st == 200, "seal: {st} {b}");
    let (st, b) = s.get("secret/data/life/one", Some(&root));
    assert_eq!(st, 503);
    assert_eq!(b, json!({"errors": ["Vault is sealed"]}));
    let (st, b) = s.put(
        "secret/data/life/two",
        Some(&root),
        json!({"data": {"v": "x"}}),
    );
    assert_eq!(st, 503);
    assert_eq!(b, json!({"errors": ["Vault is sealed"]}));
    let (st, _) = s.get("sys/health", None);
    assert_eq!(st, 503);

    // Unseal with a different subset of keys.
    s.unseal_with(&[keys[4].clone(), keys[2].clone(), keys[3].clone()]);
    assert_eq!(s.kv_get("life/one"), (200, json!({"v": "first"})));
    s.kv_put("life/two", json!({"v": "second"}));

    // Restart keeps data but comes back sealed; the same keys unseal it.
    s.restart();
    let st_after = seal_status(&s);
    assert_eq!(st_after["initialized"], json!(true));
    assert_eq!(st_after["sealed"], json!(true), "{st_after}");
    assert_eq!(st_after["t"], json!(3));
    let (st, b) = s.get("secret/data/life/one", Some(&root));
    assert_eq!(st, 503, "{b}");
    s.unseal_with(&[keys[1].clone(), keys[3].clone(), keys[4].clone()]);
    assert_eq!(s.kv_get("life/one"), (200, json!({"v": "first"})));
    assert_eq!(s.kv_get("life/two"), (200, json!({"v": "second"})));
    // The root token survived the restart too.
    let (st, b) = s.get("auth/token/lookup-self", Some(&root));
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["data"]["policies"], json!(["root"]));
}

#[test]
fn generate_root_with_otp() {
    let mut s = TestServer::with_config(ServerOptions::default());
    let (keys, old_root) = s.init_unseal(5, 3);
    s.mount_kv2();
    s.kv_put("gen/root", json!({"v": "kept"}));

    // Idle status.
    let (st, b) = s.get("sys/generate-root/attempt", None);
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["started"], json!(false));
    assert_eq!(b["required"], json!(3));

    // Start with a server-generated OTP.
    let (st, b) = s.put("sys/generate-root/attempt", None, json!({}));
    assert_eq!(st, 200, "attempt: {b}");
    assert_eq!(b["started"], json!(true));
    assert_eq!(b["progress"], json!(0));
    assert_eq!(b["required"], json!(3));
    let otp = b["otp"].as_str().unwrap().to_owned();
    assert_eq!(otp.len() as u64, b["otp_length"].as_u64().unwrap(), "{b}");
    let nonce = b["nonce"].as_str().unwrap().to_owned();
    assert!(!nonce.is_empty());

    // A second attempt while one is running is refused.
    let (st, b) = s.put("sys/generate-root/attempt", None, json!({}));
    assert_eq!(st, 400, "second attempt: {b}");

    // A wrong nonce is refused and does not count.
    let (st, b) = s.put(
        "sys/generate-root/update",
        None,
        json!({"key": keys[0], "nonce": "00000000-0000-0000-0000-000000000000"}),
    );
    assert_eq!(st, 400, "wrong nonce: {b}");

    let mut last = Value::Null;
    for (i, k) in keys[1..4].iter().enumerate() {
        let (st, b) = s.put(
            "sys/generate-root/update",
            None,
            json!({"key": k, "nonce": nonce}),
        );
        assert_eq!(st, 200, "update {i}: {b}");
        assert_eq!(b["nonce"], json!(nonce));
        if i < 2 {
            assert_eq!(b["progress"], json!(i + 1), "{b}");
            assert_eq!(b["complete"], json!(false));
        }
        last = b;
    }
    assert_eq!(last["complete"], json!(true), "{last}");
    let encoded = last["encoded_token"].as_str().unwrap().to_owned();
    assert!(!encoded.is_empty(), "{last}");
    assert_eq!(last["encoded_root_token"], json!(encoded));

    let (st, b) = s.put(
        "sys/decode-token",
        None,
        json!({"encoded_token": encoded, "otp": otp}),
    );
    assert_eq!(st, 200, "decode-token: {b}");
    let new_root = b["data"]["token"].as_str().unwrap().to_owned();
    assert!(!new_root.is_empty());
    assert_ne!(new_root, old_root);

    // The new root token works: lookup shows root policy, and it can read and write.
    let (st, b) = s.get("auth/token/lookup-self", Some(&new_root));
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["data"]["policies"], json!(["root"]));
    let (st, b) = s.get("secret/data/gen/root", Some(&new_root));
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["data"]["data"], json!({"v": "kept"}));
    let (st, b) = s.put(
        "sys/policies/acl/made-by-new-root",
        Some(&new_root),
        json!({"policy": "path \"x/*\" { capabilities = [\"read\"] }"}),
    );
    assert!(st == 200 || st == 204, "{st} {b}");

    // The ceremony is over.
    let (st, b) = s.get("sys/generate-root/attempt", None);
    assert_eq!(st, 200);
    assert_eq!(b["started"], json!(false), "{b}");

    // Cancelling an attempt works, and a caller-supplied OTP of the wrong length is refused.
    let (st, b) = s.put("sys/generate-root/attempt", None, json!({"otp": "short"}));
    assert_eq!(st, 400, "short otp: {b}");
    let (st, _) = s.put("sys/generate-root/attempt", None, json!({}));
    assert_eq!(st, 200);
    let (st, _) = s.delete("sys/generate-root/attempt", None);
    assert!(st == 200 || st == 204);
    let (_, b) = s.get("sys/generate-root/attempt", None);
    assert_eq!(b["started"], json!(false), "{b}");
}

#[test]
fn rotate_bumps_term_and_old_data_survives_restart() {
    let mut s = TestServer::with_config(ServerOptions::default());
    let (_keys, root) = s.init_unseal(3, 2);
    s.mount_kv2();
    s.kv_put("rot/before", json!({"v": "old-term"}));

    let (st, b) = s.get("sys/key-status", Some(&root));
    assert_eq!(st, 200, "{b}");
    let term1 = b["data"]["term"].as_u64().expect("term");
    assert!(term1 >= 1);

    let (st, b) = s.put("sys/rotate", Some(&root), json!({}));
    assert!(st == 200 || st == 204, "rotate: {st} {b}");
    let (_, b) = s.get("sys/key-status", Some(&root));
    let term2 = b["data"]["term"].as_u64().expect("term");
    assert_eq!(term2, term1 + 1, "{b}");

    s.kv_put("rot/after", json!({"v": "new-term"}));
    assert_eq!(s.kv_get("rot/before"), (200, json!({"v": "old-term"})));

    s.restart();
    s.unseal();
    let (_, b) = s.get("sys/key-status", Some(&root));
    assert_eq!(
        b["data"]["term"].as_u64(),
        Some(term2),
        "term persisted: {b}"
    );
    assert_eq!(s.kv_get("rot/before"), (200, json!({"v": "old-term"})));
    assert_eq!(s.kv_get("rot/after"), (200, json!({"v": "new-term"})));
}
