//! HTTPS listener: a self-signed certificate made with rcgen; the client trusts exactly it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use bunker_testkit as common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, ServerOptions, TestServer, TlsFiles};
use serde_json::json;

/// Write a self-signed certificate for 127.0.0.1/localhost into `dir`.
fn make_cert(dir: &Path, name: &str) -> TlsFiles {
    let ck =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("generate certificate");
    let cert_pem = ck.cert.pem();
    let cert_file = dir.join(format!("{name}.crt"));
    let key_file = dir.join(format!("{name}.key"));
    std::fs::write(&cert_file, &cert_pem).unwrap();
    std::fs::write(&key_file, ck.signing_key.serialize_pem()).unwrap();
    TlsFiles {
        cert_file,
        key_file,
        cert_pem,
    }
}

fn tls_server(certs: &tempfile::TempDir) -> TestServer {
    let tls = make_cert(certs.path(), "server");
    TestServer::with_config(ServerOptions {
        tls: Some(tls),
        ..Default::default()
    })
}

#[test]
fn https_round_trip_with_trusted_self_signed_cert() {
    let certs = tempfile::tempdir().unwrap();
    let mut s = tls_server(&certs);
    assert!(s.addr().starts_with("https://"));
    let (st, b) = s.get("sys/health", None);
    assert_eq!(st, 501, "uninitialised over TLS: {b}");
    s.init_unseal(3, 2);
    s.mount_kv2();
    s.kv_put("tls/secret", json!({"over": "https"}));
    assert_eq!(s.kv_get("tls/secret"), (200, json!({"over": "https"})));
    let (st, b) = s.get("sys/seal-status", None);
    assert_eq!(st, 200);
    assert_eq!(b["sealed"], json!(false), "{b}");

    // A restart serves the same certificate; data survives.
    s.restart();
    s.unseal();
    assert_eq!(s.kv_get("tls/secret"), (200, json!({"over": "https"})));
}

#[test]
fn plain_http_to_tls_port_fails() {
    let certs = tempfile::tempdir().unwrap();
    let mut s = tls_server(&certs);
    s.init_unseal(1, 1);
    s.mount_kv2();
    s.kv_put("tls/plain", json!({"v": "secret-value"}));

    let plain = reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let url = format!("http://127.0.0.1:{}/v1/secret/data/tls/plain", s.port());
    match plain
        .get(&url)
        .header("X-Vault-Token", &s.root_token)
        .send()
    {
        Err(_) => {} // connection dropped by the TLS layer: refused, as it should be
        Ok(resp) => {
            // Go's TLS server answers 400 "Client sent an HTTP request to an HTTPS server."
            let status = resp.status().as_u16();
            let text = resp.text().unwrap_or_default();
            assert_eq!(status, 400, "plain HTTP on the TLS port: {status} {text}");
            assert!(
                !text.contains("secret-value"),
                "secret served over plain HTTP: {text}"
            );
        }
    }
    // The listener is unharmed.
    assert_eq!(s.kv_get("tls/plain"), (200, json!({"v": "secret-value"})));
}

#[test]
fn client_that_does_not_trust_the_cert_is_refused() {
    let certs = tempfile::tempdir().unwrap();
    let mut s = tls_server(&certs);
    s.init_unseal(1, 1);
    let other = make_cert(certs.path(), "other");
    let untrusting = reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .tls_certs_only([reqwest::Certificate::from_pem(other.cert_pem.as_bytes()).unwrap()])
        .build()
        .unwrap();
    let r = untrusting.get(s.url("sys/health")).send();
    assert!(
        r.is_err(),
        "a client trusting another cert must fail the handshake: {r:?}"
    );
    // The trusting client still works afterwards.
    let (st, _) = s.get("sys/health", None);
    assert_eq!(st, 200);
}

#[test]
fn server_refuses_to_start_with_missing_key_file() {
    let dir = tempfile::tempdir().unwrap();
    let tls = make_cert(dir.path(), "server");
    let port = free_port();
    let config = format!(
        "storage \"embedded\" {{ path = \"{}\" }}\n\
         listener \"tcp\" {{\n  address = \"127.0.0.1:{port}\"\n  tls_cert_file = \"{}\"\n  tls_key_file = \"{}\"\n}}\n",
        dir.path().join("data").display(),
        tls.cert_file.display(),
        dir.path().join("missing.key").display(),
    );
    let cfg = dir.path().join("bunker.hcl");
    std::fs::write(&cfg, config).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_bunker"))
        .arg("server")
        .arg("-config")
        .arg(&cfg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("server with a missing TLS key file did not exit");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success(), "must exit non-zero");
    let mut err = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(
        err.contains("missing.key"),
        "error should name the file: {err}"
    );
}
