//! The transit secrets engine through the real binary: mount it like Vault, create keys of
//! every type, encrypt/decrypt/rotate/rewrap, `min_decryption_version`, sign/verify,
//! hmac/verify, batches, ACLs with upsert, keys that survive a restart, and ciphertext made on
//! a DR primary that decrypts on the promoted secondary.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use bunker_testkit as common;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use common::dr::{dr_server, enable_primary, fail_over, secondary_of};
use common::{errors, TestServer};
use serde_json::{json, Value};

fn b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

fn ok(s: &TestServer, path: &str, body: Value) -> Value {
    let (status, b) = s.post(path, s.root(), body);
    assert_eq!(status, 200, "POST {path}: {b}");
    b["data"].clone()
}

fn encrypt(s: &TestServer, key: &str, plaintext: &[u8]) -> String {
    ok(
        s,
        &format!("transit/encrypt/{key}"),
        json!({ "plaintext": b64(plaintext) }),
    )["ciphertext"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn decrypt(s: &TestServer, key: &str, ciphertext: &str) -> (u16, Value) {
    s.post(
        &format!("transit/decrypt/{key}"),
        s.root(),
        json!({ "ciphertext": ciphertext }),
    )
}

fn plaintext_of(body: &Value) -> Vec<u8> {
    STANDARD
        .decode(body["data"]["plaintext"].as_str().unwrap())
        .unwrap()
}

fn mount_transit(s: &TestServer) {
    let (status, b) = s.post("sys/mounts/transit", s.root(), json!({"type": "transit"}));
    assert!(
        status == 200 || status == 204,
        "mount transit: {status} {b}"
    );
    let (_, mounts) = s.get("sys/mounts", s.root());
    assert_eq!(mounts["transit/"]["type"], json!("transit"), "{mounts}");
}

const ENCRYPTION_TYPES: [&str; 5] = [
    "aes128-gcm96",
    "aes256-gcm96",
    "chacha20-poly1305",
    "rsa-2048",
    "rsa-4096",
];
const SIGNING_TYPES: [&str; 6] = [
    "ed25519",
    "ecdsa-p256",
    "ecdsa-p384",
    "ecdsa-p521",
    "rsa-2048",
    "rsa-4096",
];

#[test]
fn transit_keys_encrypt_sign_and_survive_a_restart() {
    let mut s = TestServer::initialized();
    mount_transit(&s);

    // Keys of every type, each readable with Vault's fields.
    for t in ENCRYPTION_TYPES
        .iter()
        .chain(SIGNING_TYPES.iter())
        .chain(["hmac"].iter())
    {
        let name = format!("key-{t}");
        let created = ok(&s, &format!("transit/keys/{name}"), json!({ "type": t }));
        assert_eq!(created["type"], json!(t), "{created}");
        let (status, read) = s.get(&format!("transit/keys/{name}"), s.root());
        assert_eq!(status, 200, "{read}");
        assert_eq!(read["data"]["latest_version"], json!(1));
        assert_eq!(read["data"]["min_decryption_version"], json!(1));
    }
    let (status, listed) = s.list("transit/keys", s.root());
    assert_eq!(status, 200, "{listed}");
    // The RSA keys are in both lists: ten distinct keys.
    assert_eq!(listed["data"]["keys"].as_array().unwrap().len(), 10);
    let (status, _) = s.get("transit/keys/missing", s.root());
    assert_eq!(status, 404);

    // Encrypt/decrypt round trip for every encryption type.
    for t in ENCRYPTION_TYPES {
        let ct = encrypt(&s, &format!("key-{t}"), b"attack at dawn");
        assert!(ct.starts_with("vault:v1:"), "{ct}");
        let (status, body) = decrypt(&s, &format!("key-{t}"), &ct);
        assert_eq!(status, 200, "{t}: {body}");
        assert_eq!(plaintext_of(&body), b"attack at dawn");
    }

    // Rotate: old ciphertext still decrypts, new ciphertext uses v2, rewrap moves v1 to v2.
    let key = "key-aes256-gcm96";
    let v1 = encrypt(&s, key, b"old secret");
    let rotated = ok(&s, &format!("transit/keys/{key}/rotate"), json!({}));
    assert_eq!(rotated["latest_version"], json!(2));
    let v2 = encrypt(&s, key, b"new secret");
    assert!(v2.starts_with("vault:v2:"), "{v2}");
    assert_eq!(plaintext_of(&decrypt(&s, key, &v1).1), b"old secret");
    let rewrapped = ok(
        &s,
        &format!("transit/rewrap/{key}"),
        json!({ "ciphertext": v1 }),
    )["ciphertext"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(rewrapped.starts_with("vault:v2:"));

    // min_decryption_version refuses v1 with a 400.
    ok(
        &s,
        &format!("transit/keys/{key}/config"),
        json!({"min_decryption_version": 2}),
    );
    let (status, body) = decrypt(&s, key, &v1);
    assert_eq!(status, 400, "{body}");
    assert!(
        errors(&body).iter().any(|e| e.contains("too old")),
        "{body}"
    );

    // Sign and verify with every signing type; a tampered input does not verify.
    let mut signatures = Vec::new();
    for t in SIGNING_TYPES {
        let name = format!("key-{t}");
        let sig = ok(
            &s,
            &format!("transit/sign/{name}"),
            json!({"input": b64(b"a document")}),
        )["signature"]
            .as_str()
            .unwrap()
            .to_owned();
        let valid = ok(
            &s,
            &format!("transit/verify/{name}"),
            json!({"input": b64(b"a document"), "signature": sig}),
        );
        assert_eq!(valid["valid"], json!(true), "{t}");
        let invalid = ok(
            &s,
            &format!("transit/verify/{name}"),
            json!({"input": b64(b"another document"), "signature": sig}),
        );
        assert_eq!(invalid["valid"], json!(false), "{t}");
        signatures.push((name, sig));
    }

    // HMAC and verify, with the hmac key type and with an AES key's HMAC key.
    let mut macs = Vec::new();
    for name in ["key-hmac", key] {
        let mac = ok(
            &s,
            &format!("transit/hmac/{name}/sha2-512"),
            json!({"input": b64(b"payload")}),
        )["hmac"]
            .as_str()
            .unwrap()
            .to_owned();
        let valid = ok(
            &s,
            &format!("transit/verify/{name}/sha2-512"),
            json!({"input": b64(b"payload"), "hmac": mac}),
        );
        assert_eq!(valid["valid"], json!(true), "{name}");
        macs.push((name.to_owned(), mac));
    }

    // A batch with one bad item: HTTP 400 with every item's result.
    let (status, body) = s.post(
        &format!("transit/decrypt/{key}"),
        s.root(),
        json!({"batch_input": [{"ciphertext": v2}, {"ciphertext": "vault:v2:bm9wZQ=="}]}),
    );
    assert_eq!(status, 400, "{body}");
    let results = body["data"]["batch_results"].as_array().unwrap();
    assert_eq!(
        STANDARD
            .decode(results[0]["plaintext"].as_str().unwrap())
            .unwrap(),
        b"new secret"
    );
    assert!(results[1]["error"].is_string(), "{body}");

    // Bad input is a 400 with Vault's error body, never a crash.
    for (path, body) in [
        (
            format!("transit/encrypt/{key}"),
            json!({"plaintext": "%%%"}),
        ),
        (
            format!("transit/decrypt/{key}"),
            json!({"ciphertext": "nope"}),
        ),
        ("transit/keys/bad".to_owned(), json!({"type": "des"})),
        (format!("transit/encrypt/{key}"), json!({"batch_input": 3})),
    ] {
        let (status, b) = s.post(&path, s.root(), body);
        assert_eq!(status, 400, "{path}: {b}");
        assert!(!errors(&b).is_empty(), "{b}");
    }
    let (status, b) = s.delete(&format!("transit/keys/{key}"), s.root());
    assert_eq!(status, 400, "{b}");
    assert!(errors(&b)[0].contains("deletion is not allowed"), "{b}");

    // Keys survive a restart: the same ciphertexts decrypt and signatures verify.
    s.restart();
    s.unseal();
    let (status, read) = s.get(&format!("transit/keys/{key}"), s.root());
    assert_eq!(status, 200, "{read}");
    assert_eq!(read["data"]["latest_version"], json!(2));
    assert_eq!(read["data"]["min_decryption_version"], json!(2));
    assert_eq!(plaintext_of(&decrypt(&s, key, &v2).1), b"new secret");
    assert_eq!(plaintext_of(&decrypt(&s, key, &rewrapped).1), b"old secret");
    assert_eq!(decrypt(&s, key, &v1).0, 400);
    for (name, sig) in signatures {
        let valid = ok(
            &s,
            &format!("transit/verify/{name}"),
            json!({"input": b64(b"a document"), "signature": sig}),
        );
        assert_eq!(valid["valid"], json!(true), "{name} after restart");
    }
    for (name, mac) in macs {
        let valid = ok(
            &s,
            &format!("transit/verify/{name}/sha2-512"),
            json!({"input": b64(b"payload"), "hmac": mac}),
        );
        assert_eq!(valid["valid"], json!(true), "{name} after restart");
    }

    // Deletion once allowed.
    ok(
        &s,
        &format!("transit/keys/{key}/config"),
        json!({"deletion_allowed": true}),
    );
    let (status, b) = s.delete(&format!("transit/keys/{key}"), s.root());
    assert_eq!(status, 204, "{b}");
    let (status, _) = s.get(&format!("transit/keys/{key}"), s.root());
    assert_eq!(status, 404);
}

#[test]
fn transit_acl_encrypt_only_token_and_upsert_needs_create() {
    let s = TestServer::dev();
    mount_transit(&s);
    ok(&s, "transit/keys/app", json!({}));
    let (status, b) = s.put(
        "sys/policies/acl/encrypt-only",
        s.root(),
        json!({"policy": "path \"transit/encrypt/*\" { capabilities = [\"update\"] }"}),
    );
    assert!(status == 200 || status == 204, "{b}");
    let token = s.create_token(json!({"policies": ["encrypt-only"]}));

    let (status, b) = s.post(
        "transit/encrypt/app",
        Some(&token),
        json!({"plaintext": b64(b"x")}),
    );
    assert_eq!(status, 200, "{b}");
    let ct = b["data"]["ciphertext"].as_str().unwrap().to_owned();
    let (status, _) = s.post(
        "transit/decrypt/app",
        Some(&token),
        json!({ "ciphertext": ct }),
    );
    assert_eq!(status, 403);
    // Encrypting with a key that does not exist would create it: that needs `create`.
    let (status, _) = s.post(
        "transit/encrypt/new-key",
        Some(&token),
        json!({"plaintext": b64(b"x")}),
    );
    assert_eq!(status, 403);
    // The root token may upsert.
    let ct = encrypt(&s, "new-key", b"upserted");
    assert_eq!(plaintext_of(&decrypt(&s, "new-key", &ct).1), b"upserted");

    // datakey, random, hash through HTTP.
    let d = ok(&s, "transit/datakey/plaintext/app", json!({}));
    let (status, body) = decrypt(&s, "app", d["ciphertext"].as_str().unwrap());
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["plaintext"], d["plaintext"]);
    let r = ok(&s, "transit/random/64", json!({"format": "hex"}));
    assert_eq!(r["random_bytes"].as_str().unwrap().len(), 128);
    let h = ok(&s, "transit/hash/sha2-256", json!({"input": b64(b"abc")}));
    assert_eq!(
        h["sum"],
        json!("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    );
}

#[test]
fn transit_keys_fail_over_to_a_promoted_dr_secondary() {
    let a = dr_server();
    mount_transit(&a);
    ok(&a, "transit/keys/orders", json!({}));
    ok(&a, "transit/keys/orders/rotate", json!({}));
    ok(&a, "transit/keys/signer", json!({"type": "ed25519"}));
    let ciphertext = encrypt(&a, "orders", b"made on the primary");
    let signature = ok(
        &a,
        "transit/sign/signer",
        json!({"input": b64(b"contract")}),
    )["signature"]
        .clone();

    enable_primary(&a);
    let b = secondary_of(&a, "site-b");

    fail_over(&a, &b);

    // The promoted secondary holds the keys: old ciphertext decrypts, signatures verify, and
    // it keeps encrypting and rotating.
    let (status, body) = decrypt(&b, "orders", &ciphertext);
    assert_eq!(status, 200, "{body}");
    assert_eq!(plaintext_of(&body), b"made on the primary");
    let valid = ok(
        &b,
        "transit/verify/signer",
        json!({"input": b64(b"contract"), "signature": signature}),
    );
    assert_eq!(valid["valid"], json!(true));
    let newer = encrypt(&b, "orders", b"made on b");
    assert!(newer.starts_with("vault:v2:"), "{newer}");
    let rotated = ok(&b, "transit/keys/orders/rotate", json!({}));
    assert_eq!(rotated["latest_version"], json!(3));
}
