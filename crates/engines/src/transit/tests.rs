//! Unit tests of the transit engine over the in-memory store.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bunker_sdk::{Data, LogicalError, Operation, Response, Result};
use serde_json::{json, Value};

use super::input::MAX_INPUT_BYTES;
use super::Transit;
use crate::store::mem::MemStore;
use crate::store::Call;

struct Env {
    transit: Transit,
    store: MemStore,
    now: Arc<AtomicU64>,
}

fn env() -> Env {
    let now = Arc::new(AtomicU64::new(1_700_000_000));
    let clock = now.clone();
    Env {
        transit: Transit::with_clock(Arc::new(move || clock.load(Ordering::SeqCst))),
        store: MemStore::new(),
        now,
    }
}

use bunker_sdk::data_of as obj;

fn b64(s: &[u8]) -> String {
    STANDARD.encode(s)
}

impl Env {
    async fn call(&self, op: Operation, path: &str, body: Value) -> Result<Response> {
        let data = obj(body);
        let call = Call {
            operation: op,
            path,
            data: &data,
            store: crate::store::Store::Double(&self.store),
            mount_point: "transit/",
            token_namespace: "",
        };
        self.transit.handle_call(&call).await
    }

    async fn write(&self, path: &str, body: Value) -> Data {
        self.call(Operation::Update, path, body)
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"))
            .data
            .unwrap_or_default()
    }

    async fn write_err(&self, path: &str, body: Value) -> String {
        match self.call(Operation::Update, path, body).await {
            Err(LogicalError::InvalidRequest(m)) => m,
            other => panic!("{path}: expected a 400, got {other:?}"),
        }
    }

    async fn read(&self, path: &str) -> Data {
        self.call(Operation::Read, path, json!({}))
            .await
            .unwrap()
            .data
            .unwrap_or_default()
    }

    async fn encrypt(&self, key: &str, plaintext: &[u8]) -> String {
        let d = self
            .write(
                &format!("encrypt/{key}"),
                json!({"plaintext": b64(plaintext)}),
            )
            .await;
        d["ciphertext"].as_str().unwrap().to_owned()
    }

    async fn decrypt(&self, key: &str, ciphertext: &str) -> Result<Vec<u8>> {
        let resp = self
            .call(
                Operation::Update,
                &format!("decrypt/{key}"),
                json!({ "ciphertext": ciphertext }),
            )
            .await?;
        let text = resp.data.unwrap()["plaintext"].as_str().unwrap().to_owned();
        Ok(STANDARD.decode(text).unwrap())
    }
}

#[tokio::test]
async fn key_lifecycle() {
    let e = env();
    let created = e.write("keys/k1", json!({})).await;
    assert_eq!(created["type"], json!("aes256-gcm96"));
    assert_eq!(created["latest_version"], json!(1));
    e.write("keys/k2", json!({"type": "ed25519"})).await;
    let list = e
        .call(Operation::List, "keys/", json!({}))
        .await
        .unwrap()
        .data
        .unwrap();
    assert_eq!(list["keys"], json!(["k1", "k2"]));

    let read = e.read("keys/k1").await;
    assert_eq!(read["min_decryption_version"], json!(1));
    assert_eq!(read["min_encryption_version"], json!(0));
    assert_eq!(read["supports_encryption"], json!(true));
    assert_eq!(read["supports_signing"], json!(false));
    assert!(read["keys"]["1"].is_u64());
    let read = e.read("keys/k2").await;
    assert!(read["keys"]["1"]["public_key"].as_str().unwrap().len() > 40);
    assert_eq!(read["supports_signing"], json!(true));

    // A missing key reads as nothing (404), and deletion needs deletion_allowed.
    assert!(e
        .call(Operation::Read, "keys/nope", json!({}))
        .await
        .unwrap()
        .data
        .is_none());
    let msg = match e.call(Operation::Delete, "keys/k1", json!({})).await {
        Err(LogicalError::InvalidRequest(m)) => m,
        other => panic!("{other:?}"),
    };
    assert!(msg.contains("deletion is not allowed"), "{msg}");
    e.write("keys/k1/config", json!({"deletion_allowed": true}))
        .await;
    e.call(Operation::Delete, "keys/k1", json!({}))
        .await
        .unwrap();
    assert!(e.read("keys/k1").await.is_empty());

    // Creating an existing key changes nothing.
    let before = e.read("keys/k2").await;
    e.write("keys/k2", json!({"type": "aes256-gcm96"})).await;
    assert_eq!(e.read("keys/k2").await, before);

    for bad in ["keys/bad%20name", "keys/-x", "keys/a..", "keys/"] {
        e.write_err(bad, json!({})).await;
    }
    assert!(e
        .write_err("keys/t", json!({"type": "des"}))
        .await
        .contains("unknown key type"));
    assert!(e
        .write_err("keys/t", json!({"type": "ecdsa-p256", "derived": true}))
        .await
        .contains("not supported"));
    e.write_err("keys/t", json!({"convergent_encryption": true}))
        .await;
    e.write_err(
        "keys/t",
        json!({"convergent_encryption": true, "derived": true, "type": "ed25519"}),
    )
    .await;
}

#[tokio::test]
async fn encrypt_decrypt_every_encryption_type() {
    let e = env();
    for t in [
        "aes128-gcm96",
        "aes256-gcm96",
        "chacha20-poly1305",
        "rsa-2048",
    ] {
        e.write(&format!("keys/{t}"), json!({"type": t})).await;
        let ct = e.encrypt(t, b"the plaintext").await;
        assert!(ct.starts_with("vault:v1:"), "{ct}");
        assert_eq!(e.decrypt(t, &ct).await.unwrap(), b"the plaintext", "{t}");
        // Empty plaintext is allowed.
        let empty = e.encrypt(t, b"").await;
        assert_eq!(e.decrypt(t, &empty).await.unwrap(), b"");
    }
    // Tampered, malformed and foreign ciphertexts are 400s.
    let ct = e.encrypt("aes256-gcm96", b"x").await;
    let other = e.encrypt("chacha20-poly1305", b"x").await;
    for bad in [
        "garbage".to_owned(),
        "vault:v1:!!!".to_owned(),
        "vault:v1:AAAA".to_owned(),
        other,
        format!("{}A", &ct[..ct.len() - 2]),
    ] {
        assert!(
            matches!(
                e.decrypt("aes256-gcm96", &bad).await,
                Err(LogicalError::InvalidRequest(_))
            ),
            "{bad}"
        );
    }
    // Signing-only keys do not encrypt.
    e.write("keys/sig", json!({"type": "ed25519"})).await;
    e.write_err("encrypt/sig", json!({"plaintext": b64(b"x")}))
        .await;
    e.write_err("encrypt/aes256-gcm96", json!({})).await;
    e.write_err("encrypt/aes256-gcm96", json!({"plaintext": "not base64!"}))
        .await;
}

#[tokio::test]
async fn rotation_versions_and_min_decryption_version() {
    let e = env();
    e.write("keys/k", json!({})).await;
    let v1 = e.encrypt("k", b"one").await;
    let rotated = e.write("keys/k/rotate", json!({})).await;
    assert_eq!(rotated["latest_version"], json!(2));
    let v2 = e.encrypt("k", b"two").await;
    assert!(v2.starts_with("vault:v2:"));
    assert_eq!(e.decrypt("k", &v1).await.unwrap(), b"one");

    // Encrypting with an explicit old version, and refusing one that is too new.
    let d = e
        .write(
            "encrypt/k",
            json!({"plaintext": b64(b"x"), "key_version": 1}),
        )
        .await;
    assert!(d["ciphertext"].as_str().unwrap().starts_with("vault:v1:"));
    e.write_err(
        "encrypt/k",
        json!({"plaintext": b64(b"x"), "key_version": 3}),
    )
    .await;

    // Rewrap moves v1 ciphertext to v2.
    let d = e.write("rewrap/k", json!({ "ciphertext": v1 })).await;
    let rewrapped = d["ciphertext"].as_str().unwrap().to_owned();
    assert!(rewrapped.starts_with("vault:v2:"));
    assert_eq!(e.decrypt("k", &rewrapped).await.unwrap(), b"one");

    // min_decryption_version = 2 refuses v1.
    e.write("keys/k/config", json!({"min_decryption_version": 2}))
        .await;
    let err = match e.decrypt("k", &v1).await {
        Err(LogicalError::InvalidRequest(m)) => m,
        other => panic!("{other:?}"),
    };
    assert!(err.contains("too old"), "{err}");
    assert_eq!(e.decrypt("k", &v2).await.unwrap(), b"two");
    let read = e.read("keys/k").await;
    assert!(read["keys"].get("1").is_none());
    assert!(read["keys"].get("2").is_some());

    // Config bounds.
    e.write_err("keys/k/config", json!({"min_decryption_version": 5}))
        .await;
    e.write_err("keys/k/config", json!({"min_encryption_version": 1}))
        .await;
    e.write("keys/k/config", json!({"min_encryption_version": 2}))
        .await;
    e.write_err(
        "encrypt/k",
        json!({"plaintext": b64(b"x"), "key_version": 1}),
    )
    .await;
    e.write_err("keys/k/config", json!({"auto_rotate_period": "10m"}))
        .await;
    e.write("keys/k/config", json!({"exportable": true})).await;
    e.write_err("keys/k/config", json!({"exportable": false}))
        .await;

    // Trim removes versions below min_available_version for good.
    e.write_err("keys/k/trim", json!({"min_available_version": 3}))
        .await;
    e.write("keys/k/trim", json!({"min_available_version": 2}))
        .await;
    assert_eq!(e.read("keys/k").await["min_available_version"], json!(2));
    e.write_err("keys/k/config", json!({"min_decryption_version": 1}))
        .await;
}

#[tokio::test]
async fn derived_keys_need_their_context() {
    let e = env();
    e.write("keys/d", json!({"derived": true})).await;
    assert_eq!(e.read("keys/d").await["kdf"], json!("hkdf_sha256"));
    let msg = e
        .write_err("encrypt/d", json!({"plaintext": b64(b"x")}))
        .await;
    assert!(msg.contains("context"), "{msg}");
    let d = e
        .write(
            "encrypt/d",
            json!({"plaintext": b64(b"secret"), "context": b64(b"user-1")}),
        )
        .await;
    let ct = d["ciphertext"].as_str().unwrap();
    let ok = e
        .write(
            "decrypt/d",
            json!({"ciphertext": ct, "context": b64(b"user-1")}),
        )
        .await;
    assert_eq!(ok["plaintext"], json!(b64(b"secret")));
    e.write_err(
        "decrypt/d",
        json!({"ciphertext": ct, "context": b64(b"user-2")}),
    )
    .await;

    // Derived ed25519: signatures depend on the context.
    e.write("keys/ds", json!({"type": "ed25519", "derived": true}))
        .await;
    let sig = e
        .write("sign/ds", json!({"input": b64(b"m"), "context": b64(b"a")}))
        .await;
    let sig = sig["signature"].as_str().unwrap();
    let good = e
        .write(
            "verify/ds",
            json!({"input": b64(b"m"), "context": b64(b"a"), "signature": sig}),
        )
        .await;
    assert_eq!(good["valid"], json!(true));
    let wrong = e
        .write(
            "verify/ds",
            json!({"input": b64(b"m"), "context": b64(b"b"), "signature": sig}),
        )
        .await;
    assert_eq!(wrong["valid"], json!(false));
}

#[tokio::test]
async fn encrypt_upserts_only_on_create() {
    let e = env();
    e.write_err("encrypt/new", json!({"plaintext": b64(b"x")}))
        .await;
    let data = obj(json!({"plaintext": b64(b"x")}));
    let call = Call {
        operation: Operation::Create,
        path: "encrypt/new",
        data: &data,
        store: crate::store::Store::Double(&e.store),
        mount_point: "transit/",
        token_namespace: "",
    };
    assert_eq!(e.transit.exists_call(&call).await.unwrap(), Some(false));
    e.transit.handle_call(&call).await.unwrap();
    assert_eq!(e.transit.exists_call(&call).await.unwrap(), Some(true));
    assert_eq!(e.read("keys/new").await["type"], json!("aes256-gcm96"));
}

#[tokio::test]
async fn batches_report_each_item() {
    let e = env();
    e.write("keys/k", json!({})).await;
    let d = e
        .write(
            "encrypt/k",
            json!({"batch_input": [
                {"plaintext": b64(b"a"), "reference": "r1"},
                {"plaintext": b64(b"b")},
            ]}),
        )
        .await;
    let results = d["batch_results"].as_array().unwrap().clone();
    assert_eq!(results.len(), 2);
    assert_eq!(results[0]["reference"], json!("r1"));
    let batch: Vec<Value> = results
        .iter()
        .map(|r| json!({"ciphertext": r["ciphertext"]}))
        .collect();
    let d = e.write("decrypt/k", json!({ "batch_input": batch })).await;
    assert_eq!(d["batch_results"][1]["plaintext"], json!(b64(b"b")));

    // One bad item: 400 with every item's result.
    let resp = e
        .call(
            Operation::Update,
            "decrypt/k",
            json!({"batch_input": [{"ciphertext": "junk"}, {"ciphertext": results[0]["ciphertext"]}]}),
        )
        .await
        .unwrap();
    let raw = resp.raw.unwrap();
    assert_eq!(raw.status, 400);
    assert!(raw.body["data"]["batch_results"][0]["error"].is_string());
    assert_eq!(
        raw.body["data"]["batch_results"][1]["plaintext"],
        json!(b64(b"a"))
    );
    e.write_err("encrypt/k", json!({"batch_input": []})).await;
    e.write_err("encrypt/k", json!({"batch_input": "x"})).await;
}

#[tokio::test]
async fn inputs_are_bounded() {
    let e = env();
    e.write("keys/k", json!({})).await;
    let big = vec![0u8; MAX_INPUT_BYTES + 1];
    let msg = e
        .write_err("encrypt/k", json!({"plaintext": b64(&big)}))
        .await;
    assert!(msg.contains("larger than"), "{msg}");
    e.write_err("random/200000", json!({})).await;
    e.write_err("keys/h", json!({"type": "hmac", "key_size": 4096}))
        .await;
}

#[tokio::test]
async fn hmac_and_verify() {
    let e = env();
    e.write("keys/k", json!({})).await;
    for alg in ["sha2-224", "sha2-256", "sha2-384", "sha2-512"] {
        let d = e
            .write(&format!("hmac/k/{alg}"), json!({"input": b64(b"data")}))
            .await;
        let mac = d["hmac"].as_str().unwrap();
        assert!(mac.starts_with("vault:v1:"));
        let ok = e
            .write(
                &format!("verify/k/{alg}"),
                json!({"input": b64(b"data"), "hmac": mac}),
            )
            .await;
        assert_eq!(ok["valid"], json!(true), "{alg}");
        let bad = e
            .write(
                &format!("verify/k/{alg}"),
                json!({"input": b64(b"other"), "hmac": mac}),
            )
            .await;
        assert_eq!(bad["valid"], json!(false), "{alg}");
    }
    // hmac-type keys.
    e.write("keys/h", json!({"type": "hmac", "key_size": 64}))
        .await;
    let d = e.write("hmac/h", json!({"input": b64(b"x")})).await;
    let ok = e
        .write("verify/h", json!({"input": b64(b"x"), "hmac": d["hmac"]}))
        .await;
    assert_eq!(ok["valid"], json!(true));
    // verify names the HMAC's algorithm with hash_algorithm (hvac does) or algorithm.
    let d = e
        .write(
            "hmac/h",
            json!({"input": b64(b"x"), "algorithm": "sha2-384"}),
        )
        .await;
    for field in ["hash_algorithm", "algorithm"] {
        let ok = e
            .write(
                "verify/h",
                json!({"input": b64(b"x"), "hmac": d["hmac"], field: "sha2-384"}),
            )
            .await;
        assert_eq!(ok["valid"], json!(true), "{field}");
    }
    e.write_err("encrypt/h", json!({"plaintext": b64(b"x")}))
        .await;
    e.write_err("hmac/k/md5", json!({"input": b64(b"x")})).await;
}

#[tokio::test]
async fn sign_and_verify_each_signing_type() {
    let e = env();
    let cases: [(&str, Value); 5] = [
        ("ed25519", json!({})),
        ("ecdsa-p256", json!({})),
        ("ecdsa-p256", json!({"marshaling_algorithm": "jws"})),
        ("rsa-2048", json!({})),
        (
            "rsa-2048",
            json!({"signature_algorithm": "pkcs1v15", "hash_algorithm": "sha2-512"}),
        ),
    ];
    for (i, (t, extra)) in cases.iter().enumerate() {
        let name = format!("s{i}");
        e.write(&format!("keys/{name}"), json!({ "type": t })).await;
        let mut body = obj(extra.clone());
        body.insert("input".into(), json!(b64(b"message")));
        let d = e
            .write(&format!("sign/{name}"), Value::Object(body.clone()))
            .await;
        let sig = d["signature"].as_str().unwrap().to_owned();
        assert!(sig.starts_with("vault:v1:"), "{sig}");
        body.insert("signature".into(), json!(sig));
        let ok = e
            .write(&format!("verify/{name}"), Value::Object(body.clone()))
            .await;
        assert_eq!(ok["valid"], json!(true), "{t} {extra}");
        body.insert("input".into(), json!(b64(b"tampered")));
        let bad = e
            .write(&format!("verify/{name}"), Value::Object(body))
            .await;
        assert_eq!(bad["valid"], json!(false), "{t} {extra}");
    }
    // A signature of an old version is refused once min_decryption_version passes it.
    let d = e.write("sign/s0", json!({"input": b64(b"m")})).await;
    e.write("keys/s0/rotate", json!({})).await;
    e.write("keys/s0/config", json!({"min_decryption_version": 2}))
        .await;
    e.write_err(
        "verify/s0",
        json!({"input": b64(b"m"), "signature": d["signature"]}),
    )
    .await;
    // AES keys do not sign; ECDSA only with SHA-256.
    e.write("keys/aes", json!({})).await;
    e.write_err("sign/aes", json!({"input": b64(b"m")})).await;
    e.write_err("sign/s1/sha2-512", json!({"input": b64(b"m")}))
        .await;
}

#[tokio::test]
async fn datakeys() {
    let e = env();
    e.write("keys/k", json!({})).await;
    let d = e.write("datakey/plaintext/k", json!({})).await;
    let plaintext = STANDARD.decode(d["plaintext"].as_str().unwrap()).unwrap();
    assert_eq!(plaintext.len(), 32);
    let ct = d["ciphertext"].as_str().unwrap();
    assert_eq!(e.decrypt("k", ct).await.unwrap(), plaintext);
    let d = e.write("datakey/wrapped/k", json!({"bits": 512})).await;
    assert!(d.get("plaintext").is_none());
    assert_eq!(
        e.decrypt("k", d["ciphertext"].as_str().unwrap())
            .await
            .unwrap()
            .len(),
        64
    );
    e.write_err("datakey/other/k", json!({})).await;
    e.write_err("datakey/plaintext/k", json!({"bits": 100}))
        .await;
}

#[tokio::test]
async fn random_and_hash() {
    let e = env();
    let d = e.write("random", json!({})).await;
    assert_eq!(
        STANDARD
            .decode(d["random_bytes"].as_str().unwrap())
            .unwrap()
            .len(),
        32
    );
    let d = e
        .write("random/platform/16", json!({"format": "hex"}))
        .await;
    assert_eq!(d["random_bytes"].as_str().unwrap().len(), 32);
    let d = e.write("hash", json!({"input": b64(b"abc")})).await;
    assert_eq!(
        d["sum"],
        json!("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    );
    let d = e
        .write(
            "hash/sha2-512",
            json!({"input": b64(b""), "format": "base64"}),
        )
        .await;
    assert!(d["sum"].as_str().unwrap().ends_with("=="));
    e.write_err("hash/md5", json!({"input": b64(b"abc")})).await;
    e.write_err("hash", json!({})).await;
}

#[tokio::test]
async fn export_backup_restore_need_permission() {
    let e = env();
    e.write("keys/k", json!({})).await;
    let ct = e.encrypt("k", b"kept").await;
    assert!(e
        .call(Operation::Read, "export/encryption-key/k", json!({}))
        .await
        .is_err());
    assert!(e
        .call(Operation::Read, "backup/k", json!({}))
        .await
        .is_err());
    e.write(
        "keys/k/config",
        json!({"exportable": true, "allow_plaintext_backup": true}),
    )
    .await;
    let exported = e.read("export/encryption-key/k/latest").await;
    let key = STANDARD
        .decode(exported["keys"]["1"].as_str().unwrap())
        .unwrap();
    assert_eq!(key.len(), 32);
    assert!(e.read("export/hmac-key/k").await["keys"]["1"].is_string());
    assert!(e
        .call(Operation::Read, "export/signing-key/k", json!({}))
        .await
        .is_err());

    let backup = e.read("backup/k").await["backup"]
        .as_str()
        .unwrap()
        .to_owned();
    // Restore under the same name refuses to overwrite without force.
    e.write_err("restore", json!({ "backup": backup })).await;
    e.call(
        Operation::Update,
        "restore/copy",
        json!({ "backup": backup }),
    )
    .await
    .unwrap();
    assert_eq!(e.decrypt("copy", &ct).await.unwrap(), b"kept");
    assert!(e.read("keys/copy").await["restore_info"].is_object());
    e.write_err("restore/x", json!({"backup": "bm90IGEgYmFja3Vw"}))
        .await;

    // Public keys export without `exportable`.
    e.write("keys/pub", json!({"type": "ecdsa-p256"})).await;
    let pk = e.read("export/public-key/pub").await;
    assert!(pk["keys"]["1"]
        .as_str()
        .unwrap()
        .starts_with("-----BEGIN PUBLIC KEY-----"));
}

#[tokio::test]
async fn auto_rotation_happens_at_first_use_after_the_period() {
    let e = env();
    e.write("keys/k", json!({"auto_rotate_period": "1h"})).await;
    assert_eq!(e.read("keys/k").await["auto_rotate_period"], json!(3600));
    assert!(e.encrypt("k", b"x").await.starts_with("vault:v1:"));
    e.now.fetch_add(3600, Ordering::SeqCst);
    assert!(e.encrypt("k", b"x").await.starts_with("vault:v2:"));
    assert!(e.encrypt("k", b"x").await.starts_with("vault:v2:"));
    assert_eq!(e.read("keys/k").await["latest_version"], json!(2));
}

#[tokio::test]
async fn stored_record_shows_no_key_in_debug_and_failed_writes_change_nothing() {
    let e = env();
    e.write("keys/k", json!({})).await;
    let p = super::load(crate::store::Store::Double(&e.store), "k")
        .await
        .unwrap()
        .unwrap();
    let shown = format!("{p:?} {:?}", p.versions.get(&1).unwrap().key);
    assert!(!shown.contains(&b64(p.versions.get(&1).unwrap().key.expose())));
    let before = e.store.snapshot();
    e.store.fail_writes(true);
    assert!(e
        .call(Operation::Update, "keys/k/rotate", json!({}))
        .await
        .is_err());
    e.store.fail_writes(false);
    assert_eq!(e.store.snapshot(), before);
}

#[tokio::test]
async fn wrong_operations_and_paths() {
    let e = env();
    assert!(matches!(
        e.call(Operation::Read, "encrypt/k", json!({})).await,
        Err(LogicalError::UnsupportedOperation)
    ));
    assert!(matches!(
        e.call(Operation::Update, "nothing/here", json!({})).await,
        Err(LogicalError::UnsupportedPath(_))
    ));
    e.write_err("decrypt/missing", json!({"ciphertext": "vault:v1:AAAA"}))
        .await;
}

#[test]
fn key_records_are_encoded_at_their_exact_size() {
    let v = super::crypto::generate_version(super::policy::KeyType::Aes256Gcm96, 0, 1).unwrap();
    let json = super::to_json_zeroizing(&v).unwrap();
    assert_eq!(json.len(), json.capacity());
    assert_eq!(*json, serde_json::to_vec(&v).unwrap());
}

#[tokio::test]
async fn convergent_encryption_is_deterministic_per_context_and_input() {
    let e = env();
    e.write(
        "keys/c",
        json!({"derived": true, "convergent_encryption": true}),
    )
    .await;
    assert_eq!(e.read("keys/c").await["convergent_encryption"], json!(true));
    let enc = |pt: &'static [u8], ctx: &'static [u8], aad: &'static [u8]| {
        let mut body = json!({"plaintext": b64(pt), "context": b64(ctx)});
        if !aad.is_empty() {
            body["associated_data"] = json!(b64(aad));
        }
        body
    };
    let a1 = e.write("encrypt/c", enc(b"same", b"ctx", b"")).await;
    let a2 = e.write("encrypt/c", enc(b"same", b"ctx", b"")).await;
    assert_eq!(a1["ciphertext"], a2["ciphertext"]);
    for other in [
        enc(b"diff", b"ctx", b""),
        enc(b"same", b"ctx2", b""),
        enc(b"same", b"ctx", b"aad"),
    ] {
        let b = e.write("encrypt/c", other).await;
        assert_ne!(a1["ciphertext"], b["ciphertext"]);
    }
    let back = e
        .write(
            "decrypt/c",
            json!({"ciphertext": a1["ciphertext"], "context": b64(b"ctx")}),
        )
        .await;
    assert_eq!(back["plaintext"], json!(b64(b"same")));
    // Rotation changes the ciphertext of the same input.
    e.write("keys/c/rotate", json!({})).await;
    let a3 = e.write("encrypt/c", enc(b"same", b"ctx", b"")).await;
    assert_ne!(a1["ciphertext"], a3["ciphertext"]);

    // Upsert: encrypt with a context and convergent_encryption creates a convergent key.
    let data =
        obj(json!({"plaintext": b64(b"u"), "context": b64(b"c"), "convergent_encryption": true}));
    let call = Call {
        operation: Operation::Create,
        path: "encrypt/up",
        data: &data,
        store: crate::store::Store::Double(&e.store),
        mount_point: "transit/",
        token_namespace: "",
    };
    e.transit.handle_call(&call).await.unwrap();
    let up = e.read("keys/up").await;
    assert_eq!(up["derived"], json!(true));
    assert_eq!(up["convergent_encryption"], json!(true));

    // A non-convergent derived key stays randomised.
    e.write("keys/r", json!({"derived": true})).await;
    let r1 = e
        .write(
            "encrypt/r",
            json!({"plaintext": b64(b"x"), "context": b64(b"c")}),
        )
        .await;
    let r2 = e
        .write(
            "encrypt/r",
            json!({"plaintext": b64(b"x"), "context": b64(b"c")}),
        )
        .await;
    assert_ne!(r1["ciphertext"], r2["ciphertext"]);
}
