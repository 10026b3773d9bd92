//! The DR control plane against an attacker: each test drives the real binaries the way an
//! attack of the security review did (issue "Secure the DR control plane by construction").

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use bunker_testkit as common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use common::dr::{
    activation_token, adopt_credentials, demote, dr_operation_token_by_ceremony, dr_server,
    dr_status, enable_primary, enable_secondary, inner_wrapping_token, promote_with_keys,
    secondary_of, signal, wait_converged, wait_status, CONVERGE,
};
use common::{errors, poll_until, ServerOptions, TestServer};
use reqwest::Method;
use serde_json::{json, Value};

/// Primary-only operations an anonymous caller sprays at a cluster being promoted.
const ANONYMOUS_ATTACKS: &[(&str, &str)] = &[
    (
        "GET",
        "sys/replication/dr/primary/secondary-token?id=attacker",
    ),
    ("POST", "sys/replication/dr/primary/demote"),
    ("POST", "sys/replication/dr/primary/disable"),
    ("POST", "sys/replication/dr/primary/revoke-secondary"),
    ("POST", "sys/replication/dr/primary/enable"),
    ("POST", "sys/replication/dr/secondary/disable"),
];

fn method(m: &str) -> Method {
    Method::from_bytes(m.as_bytes()).expect("method")
}

/// Finding 1: unauthenticated primary operations sprayed at a secondary while it is promoted
/// (and demoted again, several times) never succeed, and no activation token is issued.
#[test]
fn anonymous_requests_racing_promotions_never_run_primary_operations() {
    // The race of the old code lasted microseconds per mode change: it took a couple of
    // hundred promotions under six sprayers to hit it about half the time. Each cycle costs a
    // few milliseconds here.
    const CYCLES: usize = 300;
    const SPRAYERS: usize = 6;
    let a = dr_server();
    enable_primary(&a);
    let b = secondary_of(&a, "site-b");
    let stop = AtomicBool::new(false);
    let leaked: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let sent = std::sync::atomic::AtomicUsize::new(0);
    // Nothing inside the scope panics (a panic before `stop` would leave the sprayers running):
    // the cycle records what went wrong and stops.
    let mut broken: Option<String> = None;
    std::thread::scope(|scope| {
        for t in 0..SPRAYERS {
            let (b, stop, leaked, sent) = (&b, &stop, &leaked, &sent);
            scope.spawn(move || {
                let mut i = t;
                while !stop.load(Ordering::Relaxed) {
                    let (m, path) = ANONYMOUS_ATTACKS[i % ANONYMOUS_ATTACKS.len()];
                    let (code, body) =
                        b.request(method(m), path, None, Some(json!({"id": "site-x"})));
                    sent.fetch_add(1, Ordering::Relaxed);
                    if code == 200 || code == 204 {
                        leaked
                            .lock()
                            .unwrap()
                            .push(format!("{m} {path}: {code} {body}"));
                    }
                    i += 1;
                }
            });
        }
        // Each mode change happens while the sprayers are busy.
        let sprayed = |n: usize| {
            let from = sent.load(Ordering::Relaxed);
            poll_until(CONVERGE, || sent.load(Ordering::Relaxed) >= from + n)
        };
        for round in 0..CYCLES {
            if !sprayed(SPRAYERS) {
                broken = Some(format!("round {round}: the sprayers stopped sending"));
                break;
            }
            // Shares one by one, without the helpers' asserts (see above).
            let mut done = serde_json::Value::Null;
            for k in a.keys.iter().take(3) {
                done = b
                    .post(
                        "sys/replication/dr/secondary/promote",
                        None,
                        json!({ "key": k }),
                    )
                    .1;
            }
            let mode = dr_status(&b)["mode"].clone();
            if done["data"]["complete"] != json!(true) || mode != "primary" {
                broken = Some(format!("round {round}: promote {done}, mode {mode}"));
                break;
            }
            let (code, body) = b.post("sys/replication/dr/primary/demote", b.root(), json!({}));
            if code != 204 || dr_status(&b)["mode"] != "secondary" {
                broken = Some(format!("round {round}: demote {code} {body}"));
                break;
            }
        }
        stop.store(true, Ordering::Relaxed);
    });
    let leaked = leaked.into_inner().unwrap();
    assert!(
        leaked.is_empty(),
        "anonymous requests succeeded: {leaked:#?}"
    );
    assert_eq!(broken, None, "an anonymous request changed the mode");
    let sent = sent.into_inner();
    assert!(
        sent >= SPRAYERS * CYCLES,
        "only {sent} anonymous requests were sent"
    );
    let st = dr_status(&b);
    assert_eq!(st["mode"], "secondary", "{st}");
    // No activation token was issued to anyone: promote once more and look.
    let done = promote_with_keys(&b, &a.keys);
    assert_eq!(done["data"]["complete"], json!(true), "{done}");
    assert_eq!(
        dr_status(&b)["known_secondaries"],
        json!([]),
        "an anonymous request got a secondary token"
    );
}

/// Finding 2: whoever holds (or watches the unwrap of) a wrapped activation token gets a
/// certificate to stream ciphertext, never a key that decrypts it; the token cannot be kept
/// alive by rewrapping; the unwrap is audited.
#[test]
fn activation_token_holder_gets_no_key_and_cannot_extend_it() {
    let p = dr_server();
    enable_primary(&p);
    let audit = p.enable_file_audit();

    // The attacker unwraps a stolen activation token.
    let stolen = inner_wrapping_token(&activation_token(&p, "site-stolen"));
    let (code, body) = p.post("sys/wrapping/unwrap", Some(&stolen), json!({}));
    assert_eq!(code, 200, "{body}");
    let bundle = body["data"]["bundle"].as_object().expect("bundle").clone();
    let root_key = bundle.get("root_key_b64").and_then(Value::as_str);
    assert!(
        root_key.is_none_or(str::is_empty),
        "the activation bundle carries the root key: {root_key:?}"
    );
    // Nothing in the answer is the primary's root key or key shares.
    let text = body.to_string();
    for k in &p.keys {
        assert!(!text.contains(k.as_str()), "a key share in the bundle");
    }
    // Its certificate dies with the token (10 minutes, plus an hour to connect once).
    let cert = bundle["client"]["cert_pem"]
        .as_str()
        .expect("client certificate");
    let (not_before, not_after) = bunker_dr::tls::validity_unix(cert).unwrap();
    let lifetime = not_after - not_before;
    assert!(
        lifetime <= 600 + 3600 + 5 * 60 + 5,
        "the activation certificate outlives its token by {lifetime}s"
    );
    let unwraps = audit_lines(&audit, "sys/wrapping/unwrap");
    assert!(unwraps >= 2, "the unwrap was not audited ({unwraps} lines)");

    // Rewrapping keeps the original expiry.
    let (code, body) = p.post(
        "sys/replication/dr/primary/secondary-token",
        p.root(),
        json!({"id": "site-rewrap", "ttl": "60s"}),
    );
    assert_eq!(code, 200, "{body}");
    let wrapped = inner_wrapping_token(body["wrap_info"]["token"].as_str().unwrap());
    let (code, body) = p.post("sys/wrapping/rewrap", p.root(), json!({"token": wrapped}));
    assert_eq!(code, 200, "rewrap: {body}");
    let ttl = body["wrap_info"]["ttl"].as_u64().expect("ttl");
    assert!(ttl <= 60, "rewrap extended an activation token to {ttl}s");

    // A token lives at most a day.
    let (code, body) = p.post(
        "sys/replication/dr/primary/secondary-token",
        p.root(),
        json!({"id": "site-long", "ttl": "8760h"}),
    );
    assert_eq!(code, 400, "a year-long activation token: {body}");
}

/// Finding 2: a secondary refuses to unwrap its activation token over plain http:// unless its
/// configuration allows it for a loopback test setup, and says so.
#[test]
fn secondary_refuses_http_unwrap_unless_allowed() {
    let p = dr_server();
    enable_primary(&p);
    let token = activation_token(&p, "site-b");
    let mut s = TestServer::with_config(ServerOptions {
        listener_extra: format!("  cluster_address = \"127.0.0.1:{}\"", common::free_port()),
        ..Default::default()
    });
    s.init_unseal(1, 1);
    let (code, body) = s.post(
        "sys/replication/dr/secondary/enable",
        s.root(),
        json!({ "token": token }),
    );
    assert_eq!(code, 400, "{body}");
    let e = errors(&body).join(" ");
    assert!(
        e.contains("https://") && e.contains("activation_allow_http"),
        "{e}"
    );
    // The token was not spent: a secondary that allows loopback http still uses it.
    let s2 = dr_server();
    enable_secondary(&s2, &token);
}

/// Findings 4 and 9: after revoke-secondary, a new token for the same id does not re-admit
/// the old certificate; the cluster port refuses it in the TLS handshake.
#[test]
fn a_new_token_for_a_revoked_id_does_not_readmit_the_old_certificate() {
    let p = dr_server();
    p.mount_kv2();
    enable_primary(&p);
    let mut s = dr_server();
    enable_secondary(&s, &activation_token(&p, "site-b"));
    wait_converged(&p, &s);
    let (code, body) = p.post(
        "sys/replication/dr/primary/revoke-secondary",
        p.root(),
        json!({"id": "site-b"}),
    );
    assert_eq!(code, 204, "{body}");
    // The operator issues a new token for the same id (not used yet).
    let _fresh = activation_token(&p, "site-b");
    p.kv_put("after-revoke", json!({"n": "1"}));
    let last_wal = dr_status(&p)["last_wal"].clone();
    // A fresh process of the old secondary connects with its old certificate after the new
    // token exists: the handshake refuses it.
    s.restart();
    let st = wait_status(&s, CONVERGE, "the old certificate to be refused", |st| {
        st["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("CertificateRevoked"))
    });
    assert_ne!(st["connection_state"], "ready", "{st}");
    assert_ne!(
        st["last_remote_wal"], last_wal,
        "the old certificate streamed after a new token was issued: {st}"
    );
}

/// Finding 5: a secondary that is stalled (SIGSTOP) while it is revoked receives nothing that
/// was written after revoke-secondary returned, however much was queued for it.
#[test]
fn revocation_cuts_a_stalled_stream() {
    let p = dr_server();
    p.mount_kv2();
    enable_primary(&p);
    let s = dr_server();
    enable_secondary(&s, &activation_token(&p, "site-b"));
    wait_converged(&p, &s);
    signal(&s, "STOP");
    // Enough to fill the socket buffers, so the primary's sender blocks in a write.
    std::thread::scope(|scope| {
        for t in 0..4 {
            let p = &p;
            scope.spawn(move || {
                for i in (0..1600).filter(|i| i % 4 == t) {
                    p.kv_put(&format!("queued/{i}"), json!({"pad": "q".repeat(8 * 1024)}));
                }
            });
        }
    });
    let (code, body) = p.post(
        "sys/replication/dr/primary/revoke-secondary",
        p.root(),
        json!({"id": "site-b"}),
    );
    assert_eq!(code, 204, "{body}");
    let revoked_at = dr_status(&p)["last_wal"].as_u64().unwrap();
    common::dr::bulk_put(&p, "after/", 0..300, "after");
    assert!(dr_status(&p)["last_wal"].as_u64().unwrap() >= revoked_at + 300);
    signal(&s, "CONT");
    wait_status(&s, CONVERGE, "the stream to be cut", |st| {
        st["connection_state"] != "ready"
    });
    let applied = dr_status(&s)["last_remote_wal"].as_u64().unwrap();
    assert!(
        applied <= revoked_at,
        "the revoked secondary applied WAL {applied}, past {revoked_at} where it was revoked"
    );
    let (code, _) = s.get("sys/replication/dr/status", None);
    assert_eq!(code, 200);
}

/// Finding 6: anonymous status calls never make the server scan the keyspace; the Merkle root
/// they read is computed in the background at a bounded pace.
#[test]
fn anonymous_status_calls_never_scan() {
    const ROUNDS: u64 = 100;
    let p = dr_server();
    p.mount_kv2();
    enable_primary(&p);
    common::dr::bulk_put(&p, "k/", 0..200, "a");
    wait_status(&p, CONVERGE, "a published root", |st| {
        st["merkle_root_wal"] == st["last_wal"]
    });
    let scans = |st: &Value| st["merkle_scans"].as_u64().expect("merkle_scans");
    let quiet = scans(&dr_status(&p));
    for _ in 0..ROUNDS {
        let (code, _) = p.get("sys/replication/status", None);
        assert_eq!(code, 200);
        dr_status(&p);
    }
    assert_eq!(
        scans(&dr_status(&p)),
        quiet,
        "status scanned with nothing written"
    );
    // With a write before every status call, scans follow the refresher's pace, not the calls.
    let start = scans(&dr_status(&p));
    for i in 0..ROUNDS {
        p.kv_put(&format!("w/{i}"), json!({"n": i.to_string()}));
        dr_status(&p);
    }
    let during = scans(&dr_status(&p)) - start;
    assert!(
        during < ROUNDS / 4,
        "{during} scans for {ROUNDS} anonymous status calls after writes"
    );
}

/// Finding 8: on a secondary only DR operation tokens authorize DR operations (not the
/// primary's root token nor any replicated service token), they die with the mode, and the
/// secondary's control plane is audited.
#[test]
fn dr_operation_tokens_are_the_only_credential_and_die_with_the_mode() {
    let mut a = dr_server();
    a.mount_kv2();
    let (code, body) = a.put(
        "sys/policies/acl/dr-ops",
        a.root(),
        json!({"policy": "path \"sys/replication/dr/secondary/*\" { capabilities = [\"update\", \"sudo\"] }"}),
    );
    assert_eq!(code, 204, "{body}");
    let service = a.create_token(json!({"policies": ["dr-ops"], "ttl": "1h"}));
    let audit = a.enable_file_audit();
    enable_primary(&a);
    let b = secondary_of(&a, "site-b");
    b.unseal();

    let recover = |token: &str| {
        b.post(
            "sys/replication/dr/secondary/recover",
            None,
            json!({ "dr_operation_token": token }),
        )
    };
    let root = a.root().unwrap().to_owned();
    assert_eq!(recover(&root).0, 403, "the primary's root token");
    assert_eq!(recover(&service).0, 403, "a replicated service token");
    let op = dr_operation_token_by_ceremony(&b, &a.keys);
    let (code, body) = recover(&op);
    assert_eq!(code, 204, "a DR operation token: {body}");

    // The secondary's control plane is audited (the audit table replicated; the secondary
    // writes its own lines).
    let secondary_lines = audit_lines(&audit, "sys/replication/dr/secondary/recover");
    assert!(
        secondary_lines >= 6,
        "{secondary_lines} audit lines for recover"
    );

    // Promote and demote: the token dies with the secondary mode that issued it.
    a.terminate(Duration::from_secs(10));
    let done = promote_with_keys(&b, &a.keys);
    assert_eq!(done["data"]["complete"], json!(true), "{done}");
    demote(&b);
    let (code, body) = recover(&op);
    assert_eq!(
        code, 403,
        "an operation token survived promote and demote: {body}"
    );
}

/// Finding 10: `ca_file` / `ca_path` never read more than a bound, never block, and fail with
/// one message whatever the file is.
#[test]
fn ca_file_is_bounded_and_errors_are_generic() {
    let s = dr_server();
    // A well-formed activation token for a primary that does not exist; the CA is read first.
    let token = {
        use base64::Engine as _;
        let json = json!({"addr": "http://127.0.0.1:1", "token": "hvs.x"}).to_string();
        format!(
            "bdr1.{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
        )
    };
    let not_pem = s.dir().join("not-pem");
    std::fs::write(&not_pem, "hello").unwrap();
    let mut answers = Vec::new();
    for file in [
        "/dev/zero",
        "/nonexistent/ca.pem",
        not_pem.to_str().unwrap(),
    ] {
        let started = std::time::Instant::now();
        let (code, body) = s.post(
            "sys/replication/dr/secondary/enable",
            s.root(),
            json!({ "token": token, "ca_file": file }),
        );
        assert_eq!(code, 400, "{file}: {body}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{file} took {:?}",
            started.elapsed()
        );
        answers.push(errors(&body));
    }
    assert!(
        answers.windows(2).all(|w| w[0] == w[1]),
        "the errors tell files apart: {answers:?}"
    );
    s.assert_healthy();
}

/// How many audit records name `path`.
fn audit_lines(file: &Path, path: &str) -> usize {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r["request"]["path"] == path)
        .count()
}

/// Finding 14: a wiped secondary that has not synced yet refuses `sys/init` (it would
/// otherwise take a seal and root token from anyone).
#[test]
fn a_wiped_secondary_refuses_init_before_its_first_sync() {
    let p = dr_server();
    // Secondaries of this primary dial a cluster address where nothing listens.
    let (code, body) = p.post(
        "sys/replication/dr/primary/enable",
        p.root(),
        json!({"primary_cluster_addr": "127.0.0.1:1"}),
    );
    assert_eq!(code, 204, "{body}");
    let s = dr_server();
    enable_secondary(&s, &activation_token(&p, "site-b"));
    let (_, status) = s.get("sys/init", None);
    assert_eq!(status["initialized"], json!(false), "wiped: {status}");
    let (code, body) = s.put(
        "sys/init",
        None,
        json!({"secret_shares": 1, "secret_threshold": 1}),
    );
    assert_eq!(code, 400, "sys/init on a DR secondary: {body}");
    assert_eq!(
        errors(&body),
        vec![common::dr::DR_SECONDARY_ERROR.to_owned()]
    );
    assert_eq!(dr_status(&s)["mode"], "secondary");
}

/// Finding 9: before a peer is identified it costs little and cannot take the cluster port's
/// whole handshake budget: at most 4 pending handshakes from one address; the next connection
/// is closed at once. (A revoked certificate fails in the handshake itself: see
/// `a_new_token_for_a_revoked_id_does_not_readmit_the_old_certificate`.)
#[test]
fn the_cluster_port_bounds_pending_handshakes_per_peer() {
    use std::io::Read;
    let p = dr_server();
    enable_primary(&p);
    let addr = format!("127.0.0.1:{}", common::dr::cluster_port(&p));
    let idle: Vec<std::net::TcpStream> = (0..4)
        .map(|_| std::net::TcpStream::connect(&addr).unwrap())
        .collect();
    // The four idle connections are kept (each waits for its handshake deadline)...
    for mut c in &idle {
        c.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut buf = [0u8; 16];
        let r = c.read(&mut buf);
        assert!(
            matches!(&r, Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)),
            "an idle pending connection was closed early: {r:?}"
        );
    }
    // ...and the fifth from the same address is closed at once.
    let mut fifth = std::net::TcpStream::connect(&addr).unwrap();
    fifth
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 16];
    let r = fifth.read(&mut buf);
    assert!(
        matches!(r, Ok(0))
            || matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "a fifth pending connection from one address was kept: {r:?}"
    );
    drop(idle);
    // Once they are gone the port takes connections again.
    let ok = common::poll_until(Duration::from_secs(15), || {
        let mut c = std::net::TcpStream::connect(&addr).unwrap();
        c.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        matches!(c.read(&mut buf), Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut))
    });
    assert!(ok, "the handshake budget was not given back");
}

/// Finding 13: storage keys (plaintext on the physical backend) do not reveal tokens: a token
/// with a guessable custom id is stored under a salted HMAC, not its plain SHA-256, and the
/// salt comes back after a restart.
#[test]
fn token_storage_keys_are_salted() {
    use sha2::Digest as _;
    let mut s = TestServer::initialized();
    let (code, body) = s.post(
        "auth/token/create",
        s.root(),
        json!({"id": "guessable-id", "policies": ["default"]}),
    );
    assert_eq!(code, 200, "{body}");
    s.terminate(Duration::from_secs(10));
    let plain = hex::encode(sha2::Sha256::digest(b"guessable-id"));
    let keys: Vec<String> = {
        let backend =
            bunker_storage::EmbeddedBackend::open(&s.dir().join("data")).expect("open storage");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let page = rt
            .block_on(bunker_storage::Backend::scan(
                &backend,
                "sys/token/id/",
                None,
                10_000,
            ))
            .expect("scan");
        page.into_iter().map(|(k, _)| k).collect()
    };
    assert!(keys.len() >= 2, "root and the new token: {keys:?}");
    assert!(
        !keys.iter().any(|k| k.ends_with(&plain)),
        "a token is stored under its plain SHA-256: {keys:?}"
    );
    s.restart();
    s.unseal();
    let (code, body) = s.get("auth/token/lookup-self", Some("guessable-id"));
    assert_eq!(code, 200, "the token works after a restart: {body}");
}

/// A primary with KV v2 at `secret/` and secondary `s1` streaming from it (sealed, with the
/// primary's credentials).
fn primary_and_streaming_secondary() -> (TestServer, TestServer) {
    let p = dr_server();
    p.mount_kv2();
    enable_primary(&p);
    let mut s = dr_server();
    enable_secondary(&s, &activation_token(&p, "s1"));
    adopt_credentials(&mut s, &p);
    wait_converged(&p, &s);
    (p, s)
}

/// The raw value of `key` in a stopped server's embedded storage.
fn stored_value(s: &TestServer, key: &str) -> Option<Vec<u8>> {
    let backend =
        bunker_storage::EmbeddedBackend::open(&s.dir().join("data")).expect("open storage");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    rt.block_on(bunker_storage::Backend::get(&backend, key))
        .expect("get")
}

/// Finding 11: the primary's replication CA key and cluster port key rest only sealed by the
/// barrier, so a copy of its data directory does not yield them, and a sealed primary serves
/// no secondary until it is unsealed.
#[test]
fn primary_keys_rest_sealed_and_a_sealed_primary_serves_no_secondary() {
    let (mut p, s) = primary_and_streaming_secondary();

    // At rest: certificates in the clear, keys only sealed.
    p.terminate(Duration::from_secs(10));
    let state = String::from_utf8(stored_value(&p, "repl/state").expect("repl/state")).unwrap();
    assert!(
        !state.contains("PRIVATE KEY"),
        "a private key at rest: {state}"
    );
    assert!(state.contains("BEGIN CERTIFICATE"), "{state}");
    let v: Value = serde_json::from_str(&state).unwrap();
    assert!(
        v["primary"]["sealed_keys"]
            .as_str()
            .is_some_and(|k| k.len() > 100),
        "{v}"
    );

    // Restarted, the primary is sealed: the cluster port completes no handshake.
    p.restart();
    let refused = poll_until(CONVERGE, || {
        dr_status(&s)["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("handshake"))
    });
    assert!(
        refused,
        "the secondary never met a refused handshake: {}",
        dr_status(&s)
    );
    assert_ne!(dr_status(&s)["connection_state"], "ready");

    // Unsealed with its key shares, it opens its keys and the secondary streams again.
    p.unseal();
    p.kv_put("after-unseal", json!({"v": "1"}));
    wait_converged(&p, &s);

    // Sealing stops the service again: every session is closed at once.
    let (code, body) = p.put("sys/seal", p.root(), json!({}));
    assert_eq!(code, 204, "{body}");
    let closed = poll_until(CONVERGE, || {
        dr_status(&p)["secondaries"]
            .as_array()
            .is_some_and(|a| a.iter().all(|x| x["connection_status"] == "disconnected"))
    });
    assert!(closed, "a sealed primary kept streaming: {}", dr_status(&p));
    p.unseal();
    p.kv_put("after-reseal", json!({"v": "2"}));
    wait_converged(&p, &s);
}

/// Finding 14: leaf certificates are short-lived and renewed. A secondary replaces the
/// certificate of its activation token at its first connection, with a key generated on it;
/// connecting with the new one retires the old one on the primary.
#[test]
fn client_certificates_are_renewed_with_a_local_key_and_short_lived() {
    const DAY: i64 = 86_400;
    let (mut p, mut s) = primary_and_streaming_secondary();
    // A new session, with the renewed certificate.
    s.restart();
    p.kv_put("after-restart", json!({"v": "1"}));
    wait_converged(&p, &s);
    p.terminate(Duration::from_secs(10));
    s.terminate(Duration::from_secs(10));

    let read = |server: &TestServer| -> Value {
        serde_json::from_slice(&stored_value(server, "repl/state").expect("repl/state")).unwrap()
    };
    let (ps, ss) = (read(&p), read(&s));
    let link = &ss["secondary"];
    assert_eq!(link["client_renewed"], json!(true), "{link}");
    let client = link["client"]["cert_pem"].as_str().unwrap();
    let (nb, na) = bunker_dr::tls::validity_unix(client).unwrap();
    assert!((29 * DAY..=31 * DAY).contains(&(na - nb)), "{}", na - nb);
    let record = &ps["primary"]["secondaries"]["s1"];
    assert_eq!(
        record["cert_sha256"].as_str(),
        Some(
            bunker_dr::tls::pem_fingerprint_hex(client)
                .unwrap()
                .as_str()
        ),
        "the primary admits the renewed certificate: {record}"
    );
    assert!(
        record["previous_cert_sha256"].is_null(),
        "the activation certificate is retired: {record}"
    );
    let server = ps["primary"]["server"]["cert_pem"].as_str().unwrap();
    let (nb, na) = bunker_dr::tls::validity_unix(server).unwrap();
    assert!((29 * DAY..=31 * DAY).contains(&(na - nb)), "{}", na - nb);
}
