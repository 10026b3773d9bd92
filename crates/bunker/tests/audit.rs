//! The file audit device: JSON lines for request and response, secrets HMAC'd, the hash
//! reproducible through sys/audit-hash, bad paths refused, and a failing device blocking
//! requests instead of letting them through unaudited.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use bunker_testkit as common;

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read};
use std::path::Path;
use std::process::Command;

use common::TestServer;
use serde_json::{json, Value};

const SECRET_VALUE: &str = "s3cr3t-AUDIT-canary-7f3a9c";

fn enable_file_audit(s: &TestServer, name: &str, path: &Path) -> (u16, Value) {
    s.put(
        &format!("sys/audit/{name}"),
        s.root(),
        json!({"type": "file", "options": {"file_path": path.to_str().unwrap()}}),
    )
}

fn records(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("audit line is not JSON ({e}): {l}"))
        })
        .collect()
}

#[test]
fn file_audit_logs_hmacs_not_secrets() {
    let s = TestServer::dev();
    let log = s.dir().join("audit.log");
    let (st, b) = enable_file_audit(&s, "file", &log);
    assert!(st == 204 || st == 200, "enable audit: {st} {b}");
    let (st, b) = s.get("sys/audit", s.root());
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["data"]["file/"]["type"], json!("file"), "{b}");

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&log).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "audit log must not be readable by others");
    }

    // Use a non-root token so we can also check the token itself is not logged.
    let (st, _) = s.put(
        "sys/policies/acl/writer",
        s.root(),
        json!({"policy": "path \"secret/data/*\" { capabilities = [\"create\",\"update\",\"read\"] }"}),
    );
    assert!(st == 204 || st == 200);
    let token = s.create_token(json!({"policies": ["writer"]}));
    let (st, b) = s.put(
        "secret/data/audited",
        Some(&token),
        json!({"data": {"v": SECRET_VALUE}}),
    );
    assert_eq!(st, 200, "{b}");
    let (st, b) = s.get("secret/data/audited", Some(&token));
    assert_eq!(st, 200, "{b}");

    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains(SECRET_VALUE), "secret value in audit log");
    assert!(!text.contains(&token), "client token in audit log");
    assert!(text.contains("hmac-sha256:"), "no HMACs in audit log");

    let recs = records(&log);
    let write_req = recs
        .iter()
        .find(|r| {
            r["type"] == "request"
                && r["request"]["path"] == "secret/data/audited"
                && r["request"]["operation"] != "read"
        })
        .unwrap_or_else(|| panic!("no request record for the write in {recs:#?}"));
    let id = write_req["request"]["id"].clone();
    assert!(id.as_str().is_some_and(|i| !i.is_empty()));
    let write_resp = recs
        .iter()
        .find(|r| r["type"] == "response" && r["request"]["id"] == id)
        .unwrap_or_else(|| panic!("no response record for request {id}"));
    assert!(write_resp["response"].is_object(), "{write_resp}");
    // The response entry repeats the request entry's request and auth, hashed alike.
    assert_eq!(write_resp["request"], write_req["request"], "{write_resp}");
    assert_eq!(write_resp["auth"], write_req["auth"], "{write_resp}");

    // The logged value is the HMAC that sys/audit-hash gives for the plaintext.
    let (st, b) = s.post(
        "sys/audit-hash/file",
        s.root(),
        json!({"input": SECRET_VALUE}),
    );
    assert_eq!(st, 200, "{b}");
    let hash = b["data"]["hash"].as_str().unwrap().to_owned();
    assert!(hash.starts_with("hmac-sha256:"), "{hash}");
    assert_eq!(
        write_req["request"]["data"]["data"]["v"],
        json!(hash),
        "{write_req}"
    );

    // The read's response carries the same HMAC.
    let read_resp = recs
        .iter()
        .find(|r| {
            r["type"] == "response"
                && r["request"]["path"] == "secret/data/audited"
                && r["request"]["operation"] == "read"
        })
        .unwrap_or_else(|| panic!("no response record for the read"));
    assert_eq!(
        read_resp["response"]["data"]["data"]["v"],
        json!(hash),
        "{read_resp}"
    );

    // The token appears only as its HMAC.
    let (_, b) = s.post("sys/audit-hash/file", s.root(), json!({"input": token}));
    assert_eq!(
        write_req["auth"]["client_token"], b["data"]["hash"],
        "{write_req}"
    );

    // Disabling stops logging.
    let (st, _) = s.delete("sys/audit/file", s.root());
    assert!(st == 204 || st == 200);
    let before = std::fs::read_to_string(&log).unwrap().len();
    s.kv_put("after-disable", json!({"v": 1}));
    assert_eq!(std::fs::read_to_string(&log).unwrap().len(), before);
}

/// A device enabled by a request logs that request's response (its broker has it by then), and
/// a device disabled by a request logs only its request entry, as Vault's broker does.
#[test]
fn devices_added_or_removed_by_a_request_log_what_the_broker_has_then() {
    let s = TestServer::dev();
    let log_a = s.dir().join("a.log");
    let log_b = s.dir().join("b.log");
    let (st, b) = enable_file_audit(&s, "a", &log_a);
    assert!(st == 204 || st == 200, "enable a: {st} {b}");
    let (st, b) = enable_file_audit(&s, "b", &log_b);
    assert!(st == 204 || st == 200, "enable b: {st} {b}");
    let entries = |log: &Path, path: &str| -> Vec<String> {
        records(log)
            .iter()
            .filter(|r| r["request"]["path"] == path)
            .map(|r| r["type"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    // b's own enabling: a logged both entries, b only the response.
    assert_eq!(entries(&log_a, "sys/audit/b"), ["request", "response"]);
    assert_eq!(entries(&log_b, "sys/audit/b"), ["response"]);
    let (st, _) = s.delete("sys/audit/b", s.root());
    assert!(st == 204 || st == 200);
    assert_eq!(
        entries(&log_a, "sys/audit/b"),
        ["request", "response", "request", "response"]
    );
    assert_eq!(entries(&log_b, "sys/audit/b"), ["response", "request"]);
}

/// Vault audits requests it refuses: a bad token and an ACL denial both leave a record with
/// the error, so an operator can see probing in the log.
#[test]
fn denied_requests_are_audited() {
    let s = TestServer::dev();
    let log = s.dir().join("audit.log");
    let (st, b) = enable_file_audit(&s, "file", &log);
    assert!(st == 204 || st == 200, "enable audit: {st} {b}");
    let weak = s.create_token(json!({"policies": ["default"]}));

    let (st, _) = s.get(
        "secret/data/probe-bad-token",
        Some("hvs.definitely-not-valid"),
    );
    assert_eq!(st, 403);
    let (st, _) = s.get("secret/data/probe-acl-denied", Some(&weak));
    assert_eq!(st, 403);

    let recs = records(&log);
    for path in [
        "secret/data/probe-bad-token",
        "secret/data/probe-acl-denied",
    ] {
        let found: Vec<&Value> = recs
            .iter()
            .filter(|r| r["request"]["path"] == path)
            .collect();
        assert!(
            !found.is_empty(),
            "denied request to {path} left no audit record"
        );
        assert!(
            found.iter().any(|r| r["error"]
                .as_str()
                .is_some_and(|e| e.contains("permission denied"))),
            "audit records for {path} do not carry the error: {found:#?}"
        );
    }
}

/// A request that routes nowhere (no mount at its path) is audited like any other: its
/// request entry as well as its error.
#[test]
fn unrouted_requests_are_audited_in_both_entries() {
    let s = TestServer::dev();
    let log = s.dir().join("audit.log");
    let (st, b) = enable_file_audit(&s, "file", &log);
    assert!(st == 204 || st == 200, "enable audit: {st} {b}");
    let (st, b) = s.get("nowhere/probe-unrouted", s.root());
    assert_eq!(st, 404, "{b}");
    let types: Vec<String> = records(&log)
        .iter()
        .filter(|r| r["request"]["path"] == "nowhere/probe-unrouted")
        .map(|r| r["type"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        types,
        ["request", "response"],
        "audit entries of the request"
    );
}

#[test]
fn audit_device_on_unwritable_path_is_refused() {
    let s = TestServer::dev();
    // A path under a directory that does not exist, and a path that is a directory.
    for (name, path) in [
        ("missing", s.dir().join("no-such-dir").join("audit.log")),
        ("isdir", s.dir().to_path_buf()),
    ] {
        let (st, b) = enable_file_audit(&s, name, &path);
        assert_eq!(st, 400, "enable audit at {}: {b}", path.display());
        assert!(b["errors"].as_array().is_some_and(|e| !e.is_empty()), "{b}");
    }
    let (st, b) = s.get("sys/audit", s.root());
    assert_eq!(st, 200);
    assert!(
        b["data"]["missing/"].is_null() && b["data"]["isdir/"].is_null(),
        "{b}"
    );
    // A refused device does not block requests.
    s.kv_put("still-works", json!({"v": 1}));
    assert_eq!(s.kv_get("still-works"), (200, json!({"v": 1})));
}

/// O_NONBLOCK on Linux (x86_64 and aarch64).
const O_NONBLOCK: i32 = 0o4000;

/// Open the read end of a FIFO without blocking.
fn open_fifo_reader(path: &Path) -> File {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .read(true)
        .custom_flags(O_NONBLOCK)
        .open(path)
        .expect("open FIFO for reading")
}

/// Read everything currently in the FIFO.
fn drain(reader: &mut File) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => panic!("reading FIFO: {e}"),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Running as root, chmod cannot make the audit file unwritable. A FIFO can: once its last
/// reader closes, every write to it fails (EPIPE). Vault refuses a request it cannot audit.
#[test]
#[cfg(target_os = "linux")]
fn failing_audit_device_blocks_requests() {
    let s = TestServer::dev();
    let fifo = s.dir().join("audit.fifo");
    let st = Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("run mkfifo");
    assert!(st.success(), "mkfifo failed");
    let mut reader = open_fifo_reader(&fifo);

    let (st, b) = enable_file_audit(&s, "pipe", &fifo);
    assert!(st == 204 || st == 200, "enable audit on FIFO: {st} {b}");
    drain(&mut reader);
    s.kv_put("before", json!({"v": "audited"}));
    let logged = drain(&mut reader);
    assert!(
        logged.contains("secret/data/before"),
        "audit lines reach the FIFO: {logged}"
    );

    // The device breaks.
    drop(reader);
    let (st, b) = s.put(
        "secret/data/during",
        s.root(),
        json!({"data": {"v": "unaudited"}}),
    );
    assert_eq!(st, 500, "a request that cannot be audited must fail: {b}");
    let (st, b) = s.get("secret/data/before", s.root());
    assert_eq!(st, 500, "reads must not be served unaudited either: {b}");
    // Unaudited endpoints still answer, and the process is alive.
    let (st, b) = s.get("sys/health", None);
    assert_eq!(st, 200, "{b}");

    // The device recovers: requests flow again, and the refused write never happened.
    let mut reader = open_fifo_reader(&fifo);
    let (st, b) = s.get("secret/data/during", s.root());
    assert_eq!(st, 404, "the refused write must not be stored: {b}");
    assert_eq!(s.kv_get("before"), (200, json!({"v": "audited"})));
    let logged = drain(&mut reader);
    assert!(logged.contains("secret/data/during"), "{logged}");
}

/// Requests that take no token are audited as the rest are: a userpass login (accepted and
/// refused) and a self-unwrap each leave a request and a response record, and the login's
/// password is in the log only as an HMAC.
#[test]
fn logins_and_unwraps_are_audited() {
    let s = TestServer::dev();
    let log = s.dir().join("audit-logins.log");
    let (st, b) = enable_file_audit(&s, "file", &log);
    assert!(st == 204 || st == 200, "enable audit: {st} {b}");
    let (st, b) = s.post("sys/auth/people", s.root(), json!({"type": "userpass"}));
    assert!(st == 204 || st == 200, "enable userpass: {st} {b}");
    let (st, b) = s.post(
        "auth/people/users/alice",
        s.root(),
        json!({"password": SECRET_VALUE}),
    );
    assert!(st == 204 || st == 200, "create user: {st} {b}");
    let login = |password: &str| {
        s.post(
            "auth/people/login/alice",
            None,
            json!({ "password": password }),
        )
    };
    let (st, b) = login(SECRET_VALUE);
    assert_eq!(st, 200, "{b}");
    let (st, b) = login("wrong");
    assert!(
        st == 400 || st == 403,
        "a wrong password is refused: {st} {b}"
    );
    // A wrapped answer unwrapped with its own wrapping token (no other token).
    let (st, wrapped) = s.request_with(
        reqwest::Method::POST,
        "sys/wrapping/wrap",
        s.root(),
        Some(json!({"k": "v"})),
        &[("X-Vault-Wrap-TTL", "60s")],
    );
    assert_eq!(st, 200, "{wrapped}");
    let wrapping_token = wrapped["wrap_info"]["token"].as_str().unwrap().to_owned();
    let (st, b) = s.post("sys/wrapping/unwrap", Some(&wrapping_token), json!({}));
    assert_eq!(st, 200, "{b}");

    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        !text.contains(SECRET_VALUE),
        "the password is in the audit log"
    );
    let recs = records(&log);
    let count = |kind: &str, path: &str| {
        recs.iter()
            .filter(|r| r["type"] == kind && r["request"]["path"] == path)
            .count()
    };
    assert_eq!(count("request", "auth/people/login/alice"), 2, "{recs:#?}");
    assert_eq!(count("response", "auth/people/login/alice"), 2, "{recs:#?}");
    assert_eq!(count("request", "sys/wrapping/unwrap"), 1, "{recs:#?}");
    assert_eq!(count("response", "sys/wrapping/unwrap"), 1, "{recs:#?}");
}
