//! `vaultrs::transit` on a mount enabled with `vaultrs::sys::mount::enable`: its typed
//! responses must parse from Bunker's answers.

use vaultrs::api::transit::requests::{
    CreateKeyRequest, UpdateKeyConfigurationRequest, VerifySignedDataRequest,
};
use vaultrs::api::transit::responses::ReadKeyData;
use vaultrs::api::transit::KeyType;

use crate::harness::{expect_status, Server};

const MOUNT: &str = "transit";

fn b64(bytes: &[u8]) -> String {
    // A few bytes of ASCII: the standard alphabet by hand keeps this crate's dependencies
    // to what vaultrs already brings.
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[tokio::test]
async fn transit_keys_encrypt_decrypt_sign_verify() {
    let server = Server::dev().await;
    let client = server.root_client();
    vaultrs::sys::mount::enable(&client, MOUNT, "transit", None)
        .await
        .expect("enable transit");

    vaultrs::transit::key::create(&client, MOUNT, "app", None)
        .await
        .expect("create key");
    let key = vaultrs::transit::key::read(&client, MOUNT, "app")
        .await
        .expect("read key parses");
    assert!(matches!(key.key_type, KeyType::Aes256Gcm96));
    assert!(matches!(key.keys, ReadKeyData::Symmetric(ref m) if m.contains_key("1")));
    let listed = vaultrs::transit::key::list(&client, MOUNT)
        .await
        .expect("list keys");
    assert_eq!(listed.keys, vec!["app".to_owned()]);

    let plaintext = b64(b"vaultrs secret");
    let old = vaultrs::transit::data::encrypt(&client, MOUNT, "app", &plaintext, None)
        .await
        .expect("encrypt")
        .ciphertext;
    assert!(old.starts_with("vault:v1:"), "{old}");
    let back = vaultrs::transit::data::decrypt(&client, MOUNT, "app", &old, None)
        .await
        .expect("decrypt");
    assert_eq!(back.plaintext, plaintext);

    vaultrs::transit::key::rotate(&client, MOUNT, "app")
        .await
        .expect("rotate");
    let new = vaultrs::transit::data::rewrap(&client, MOUNT, "app", &old, None)
        .await
        .expect("rewrap")
        .ciphertext;
    assert!(new.starts_with("vault:v2:"), "{new}");
    let mut config = UpdateKeyConfigurationRequest::builder();
    config.min_decryption_version(2u64);
    vaultrs::transit::key::update(&client, MOUNT, "app", Some(&mut config))
        .await
        .expect("config");
    expect_status(
        vaultrs::transit::data::decrypt(&client, MOUNT, "app", &old, None).await,
        400,
    );

    // Signing keys read as asymmetric, with their public keys.
    let mut opts = CreateKeyRequest::builder();
    opts.key_type(KeyType::Ed25519);
    vaultrs::transit::key::create(&client, MOUNT, "signer", Some(&mut opts))
        .await
        .expect("create ed25519 key");
    let key = vaultrs::transit::key::read(&client, MOUNT, "signer")
        .await
        .expect("read ed25519 key parses");
    match key.keys {
        ReadKeyData::Asymmetric(m) => assert!(!m["1"].public_key.is_empty()),
        other => panic!("expected public keys, got {other:?}"),
    }
    let input = b64(b"document");
    let signature = vaultrs::transit::data::sign(&client, MOUNT, "signer", &input, None)
        .await
        .expect("sign")
        .signature;
    let mut verify = VerifySignedDataRequest::builder();
    verify.signature(signature.clone());
    let valid = vaultrs::transit::data::verify(&client, MOUNT, "signer", &input, Some(&mut verify))
        .await
        .expect("verify");
    assert!(valid.valid);
    let mut verify = VerifySignedDataRequest::builder();
    verify.signature(signature);
    let other = b64(b"another");
    let invalid =
        vaultrs::transit::data::verify(&client, MOUNT, "signer", &other, Some(&mut verify))
            .await
            .expect("verify other input");
    assert!(!invalid.valid);

    let mac = vaultrs::transit::generate::hmac(&client, MOUNT, "app", &input, None)
        .await
        .expect("hmac")
        .hmac;
    assert!(mac.starts_with("vault:v2:"), "{mac}");
}
