//! Helpers shared by the DR replication tests (`dr.rs`, `dr_failover.rs`): servers with a
//! cluster port, activation, convergence, promotion and fault injection.
//!
//! Every wait polls `sys/replication/dr/status` against a deadline; nothing sleeps.

// Test helpers fail by panicking, like the tests they serve.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::time::Duration;

use serde_json::{json, Value};

use super::{free_port, poll_until, ServerOptions, TestServer};

pub const CONVERGE: Duration = Duration::from_secs(60);
pub const DR_SECONDARY_ERROR: &str = "path disabled in replication DR secondary mode";

/// Tests unwrap activation tokens over plain http on loopback, which a server refuses unless
/// its configuration allows it.
pub const ALLOW_HTTP_ACTIVATION: &str = "replication {\n  activation_allow_http = true\n}";

/// A config-file server with a cluster port, initialised 5/3 and unsealed.
pub fn dr_server() -> TestServer {
    dr_server_with_config("")
}

pub fn dr_status(s: &TestServer) -> Value {
    let (code, body) = s.get("sys/replication/dr/status", None);
    assert_eq!(code, 200, "dr status: {body}");
    body["data"].clone()
}

pub fn enable_primary(p: &TestServer) {
    let (code, body) = p.post("sys/replication/dr/primary/enable", p.root(), json!({}));
    assert_eq!(code, 204, "primary enable: {body}");
}

pub fn activation_token(p: &TestServer, id: &str) -> String {
    let (code, body) = p.post(
        "sys/replication/dr/primary/secondary-token",
        p.root(),
        json!({ "id": id, "ttl": "10m" }),
    );
    assert_eq!(code, 200, "secondary-token: {body}");
    assert!(
        body["data"].is_null(),
        "token must only be in wrap_info: {body}"
    );
    body["wrap_info"]["token"]
        .as_str()
        .expect("wrap_info.token")
        .to_owned()
}

pub fn enable_secondary(s: &TestServer, token: &str) {
    let (code, body) = s.post(
        "sys/replication/dr/secondary/enable",
        s.root(),
        json!({ "token": token }),
    );
    assert_eq!(code, 204, "secondary enable: {body}");
}

/// Wait until `s` streams from `p` with the same WAL index and Merkle root.
pub fn wait_converged(p: &TestServer, s: &TestServer) {
    let mut last = (Value::Null, Value::Null);
    let ok = poll_until(CONVERGE, || {
        let ps = dr_status(p);
        let ss = dr_status(s);
        // Status reports the root computed last in the background, with the WAL index it is
        // exact for: compare only roots of the same, current index.
        let done = ss["state"] == "stream-wals"
            && ss["last_remote_wal"] == ps["last_wal"]
            && ps["merkle_root_wal"] == ps["last_wal"]
            && ss["merkle_root_wal"] == ss["last_remote_wal"]
            && ps["merkle_root"].as_str().is_some_and(|r| !r.is_empty())
            && ss["merkle_root"] == ps["merkle_root"];
        last = (ps, ss);
        done
    });
    assert!(
        ok,
        "secondary did not converge:\nprimary {}\nsecondary {}",
        last.0, last.1
    );
}

/// The response-wrapping token inside an activation token (`bdr1.` + base64url JSON).
pub fn inner_wrapping_token(activation: &str) -> String {
    use base64::Engine as _;
    let body = activation
        .strip_prefix("bdr1.")
        .expect("activation token prefix");
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(body)
        .expect("base64url");
    let v: Value = serde_json::from_slice(&json).expect("json");
    v["token"].as_str().expect("token").to_owned()
}

pub fn promote_with_keys(s: &TestServer, keys: &[String]) -> Value {
    let mut last = Value::Null;
    for k in keys.iter().take(3) {
        let (code, body) = s.post(
            "sys/replication/dr/secondary/promote",
            None,
            json!({ "key": k }),
        );
        assert_eq!(code, 200, "promote: {body}");
        last = body;
    }
    last
}

pub fn assert_dr_refused(s: &TestServer, path: &str, token: Option<&str>) {
    let (code, body) = s.get(path, token);
    assert_eq!(code, 400, "{path} on a DR secondary: {body}");
    assert_eq!(super::errors(&body), vec![DR_SECONDARY_ERROR.to_owned()]);
}

/// Like [`dr_server`], with top-level HCL lines (`config_extra`) in the config file.
pub fn dr_server_with_config(config_extra: &str) -> TestServer {
    let cluster_port = free_port();
    let mut s = TestServer::with_config(ServerOptions {
        listener_extra: format!("  cluster_address = \"127.0.0.1:{cluster_port}\""),
        config_extra: format!("{ALLOW_HTTP_ACTIVATION}\n{config_extra}"),
        ..Default::default()
    });
    s.init_unseal(5, 3);
    s
}

/// After `secondary/enable` the secondary holds the primary's data, seal and tokens: from now
/// on it is operated with the primary's unseal keys and root token.
pub fn adopt_credentials(s: &mut TestServer, p: &TestServer) {
    s.keys = p.keys.clone();
    s.root_token = p.root_token.clone();
}

/// A new DR server made secondary `id` of the primary `p`, with `p`'s credentials, once it
/// has converged with `p`.
pub fn secondary_of(p: &TestServer, id: &str) -> TestServer {
    let mut s = dr_server();
    enable_secondary(&s, &activation_token(p, id));
    adopt_credentials(&mut s, p);
    wait_converged(p, &s);
    s
}

pub fn merkle_syncs(st: &Value) -> u64 {
    st["sync"]["merkle_syncs"]
        .as_u64()
        .expect("sync.merkle_syncs")
}

pub fn last_keys_fetched(st: &Value) -> u64 {
    st["sync"]["last_merkle_sync"]["keys_fetched"]
        .as_u64()
        .expect("sync.last_merkle_sync.keys_fetched")
}

/// Number of replicated storage keys on a primary (`sys/replication/merkle-check`).
pub fn replicated_key_count(p: &TestServer) -> u64 {
    let (code, body) = p.post("sys/replication/merkle-check", p.root(), json!({}));
    assert_eq!(code, 200, "merkle-check: {body}");
    body["data"]["keys"].as_u64().expect("merkle-check keys")
}

/// Write `secret/data/{prefix}{i}` for every i in `range`, on a few threads.
pub fn bulk_put(s: &TestServer, prefix: &str, range: std::ops::Range<usize>, round: &str) {
    const THREADS: usize = 4;
    std::thread::scope(|scope| {
        for t in 0..THREADS {
            let range = range.clone();
            scope.spawn(move || {
                for i in range.filter(|i| i % THREADS == t) {
                    s.kv_put(
                        &format!("{prefix}{i}"),
                        json!({ "n": i.to_string(), "round": round, "pad": "p".repeat(200) }),
                    );
                }
            });
        }
    });
}

pub fn assert_kv(s: &TestServer, name: &str, n: usize, round: &str) {
    let (code, data) = s.kv_get(name);
    assert_eq!(code, 200, "read {name}: {data}");
    assert_eq!(data["n"], json!(n.to_string()), "{name}: {data}");
    assert_eq!(data["round"], json!(round), "{name}: {data}");
}

/// Fail over from `p` to its secondary `s`: demote `p`, then promote `s` with `p`'s unseal keys;
/// asserts the promotion completed and returns its answer.
pub fn fail_over(p: &TestServer, s: &TestServer) -> Value {
    demote(p);
    let done = promote_with_keys(s, &p.keys);
    assert_eq!(done["data"]["complete"], json!(true), "{done}");
    done
}

pub fn demote(p: &TestServer) {
    let (code, body) = p.post("sys/replication/dr/primary/demote", p.root(), json!({}));
    assert_eq!(code, 204, "demote: {body}");
    let st = dr_status(p);
    assert_eq!(st["mode"], "secondary", "after demote: {st}");
    assert_eq!(st["state"], "idle", "after demote: {st}");
}

pub fn update_primary(s: &TestServer, activation: &str, dr_operation_token: &str) {
    let (code, body) = s.post(
        "sys/replication/dr/secondary/update-primary",
        None,
        json!({ "token": activation, "dr_operation_token": dr_operation_token }),
    );
    assert_eq!(code, 204, "update-primary: {body}");
}

/// A DR operation token made on the secondary `s` by the key-share ceremony (OTP flow).
pub fn dr_operation_token_by_ceremony(s: &TestServer, keys: &[String]) -> String {
    let path = "sys/replication/dr/secondary/generate-operation-token";
    let (code, body) = s.post(&format!("{path}/attempt"), None, json!({}));
    assert_eq!(code, 200, "operation token attempt: {body}");
    let nonce = body["nonce"].as_str().expect("nonce").to_owned();
    let otp = body["otp"].as_str().expect("otp").to_owned();
    let required = body["required"].as_u64().expect("required") as usize;
    assert!(required > 0 && !otp.is_empty(), "attempt: {body}");
    let mut last = Value::Null;
    for k in keys.iter().take(required) {
        let (code, body) = s.put(
            &format!("{path}/update"),
            None,
            json!({ "key": k, "nonce": nonce }),
        );
        assert_eq!(code, 200, "operation token update: {body}");
        last = body;
    }
    assert_eq!(last["complete"], json!(true), "{last}");
    let encoded = last["encoded_token"].as_str().expect("encoded_token");
    let (code, body) = s.post(
        "sys/decode-token",
        None,
        json!({ "encoded_token": encoded, "otp": otp }),
    );
    assert_eq!(code, 200, "decode-token: {body}");
    body["data"]["token"].as_str().expect("token").to_owned()
}

/// Poll `s`'s DR status until `pred` holds; panics with the last status after `timeout`.
pub fn wait_status(
    s: &TestServer,
    timeout: Duration,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let mut last = Value::Null;
    let ok = poll_until(timeout, || {
        last = dr_status(s);
        pred(&last)
    });
    assert!(ok, "timed out waiting for {what}: {last}");
    last
}

/// How many times `needle` appears in the logs of every start of `s` so far.
pub fn log_count(s: &TestServer, needle: &str) -> usize {
    let mut n = 0;
    for entry in std::fs::read_dir(s.dir()).expect("server dir").flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".log") {
            n += std::fs::read_to_string(entry.path())
                .unwrap_or_default()
                .matches(needle)
                .count();
        }
    }
    n
}

/// Wait until a WAL truncation pass that started after this call has deleted entries on `p`.
/// Truncation passes run one after another, so the second pass logged after this call began
/// started after it; a write before each wait gives that pass something to delete.
pub fn wait_wal_truncated(p: &TestServer) {
    for round in 0..2 {
        let seen = log_count(p, "WAL truncated");
        p.kv_put(&format!("truncation-tick/{round}"), json!({ "n": "0" }));
        let ok = poll_until(CONVERGE, || log_count(p, "WAL truncated") > seen);
        assert!(ok, "no WAL truncation logged on the primary");
    }
}

/// Send a signal (`STOP`, `CONT`) to a server process.
pub fn signal(s: &TestServer, sig: &str) {
    let pid = s.pid().expect("server running");
    let status = std::process::Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{sig} {pid}");
}

/// Wait until the process of `s` is stopped (after `signal(s, "STOP")`), from `/proc`.
pub fn wait_stopped(s: &TestServer) {
    let pid = s.pid().expect("server running");
    let stopped = poll_until(CONVERGE, || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| {
                // "pid (comm) S ...": the state follows the last ')'.
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().next().map(str::to_owned))
            })
            .is_some_and(|state| state == "T" || state == "t")
    });
    assert!(stopped, "process {pid} did not stop");
}

/// Submit the first `threshold` of `keys` to promote `s`; returns the last (status, body).
pub fn promote_attempt(s: &TestServer, keys: &[String], force: bool) -> (u16, Value) {
    let mut last = (0, Value::Null);
    for (n, k) in keys.iter().take(3).enumerate() {
        last = s.post(
            "sys/replication/dr/secondary/promote",
            None,
            json!({ "key": k, "force": force }),
        );
        if n < 2 {
            assert_eq!(last.0, 200, "promote share {n}: {}", last.1);
            assert_eq!(last.1["data"]["progress"], json!(n + 1), "{}", last.1);
        }
    }
    last
}

/// The failpoint a secondary reaches after applying a batch of its initial (snapshot) sync.
pub const SYNC_BATCH_APPLIED: &str = "secondary-sync-batch-applied";

/// Enable a fresh secondary of `a` and hold it in merkle-sync (a failpoint after its first
/// applied batch, which holds the primary's seal configuration). Release it with
/// `s.release(SYNC_BATCH_APPLIED)`.
/// A DR primary holding `total` KV v2 secrets `secret/data/app/<i>` (round "a", 200-byte
/// padding): what a sync has to copy.
pub fn primary_holding(total: usize) -> TestServer {
    let a = dr_server();
    a.mount_kv2();
    bulk_put(&a, "app/", 0..total, "a");
    enable_primary(&a);
    a
}

pub fn secondary_held_in_merkle_sync(a: &TestServer) -> TestServer {
    let mut s = dr_server();
    s.hold_at(SYNC_BATCH_APPLIED);
    enable_secondary(&s, &activation_token(a, "site-held"));
    adopt_credentials(&mut s, a);
    s.wait_held(SYNC_BATCH_APPLIED, CONVERGE);
    let st = dr_status(&s);
    assert_eq!(st["state"], "merkle-sync", "held secondary: {st}");
    let (_, seal) = s.get("sys/seal-status", None);
    assert_eq!(
        seal["t"],
        json!(3),
        "the first batch holds the seal configuration: {seal}"
    );
    s
}

/// The cluster port `s` listens on (from its configuration file).
pub fn cluster_port(s: &TestServer) -> u16 {
    let config = std::fs::read_to_string(s.dir().join("bunker.hcl")).expect("read config");
    config
        .lines()
        .find_map(|l| {
            let rest = l.trim().strip_prefix("cluster_address")?;
            let addr = rest.split('"').nth(1)?;
            addr.rsplit(':').next()?.parse().ok()
        })
        .expect("cluster_address in the config")
}

/// Enable `p` as a primary whose secondaries dial `cluster_addr` (a fault proxy, say).
pub fn enable_primary_at(p: &TestServer, cluster_addr: &str) {
    let (code, body) = p.post(
        "sys/replication/dr/primary/enable",
        p.root(),
        json!({ "primary_cluster_addr": cluster_addr }),
    );
    assert_eq!(code, 204, "primary enable: {body}");
}

/// A primary with KV v2 at `secret/`, WAL retention `retention` and key journal retention
/// `journal` (0: none, so a secondary past the WAL reconciles by Merkle diff), whose cluster
/// port is reached through a fault proxy, and secondary `site-b` streaming from it through the
/// proxy (operated with the primary's credentials).
pub fn proxied_pair(
    retention: u64,
    journal: u64,
) -> (TestServer, TestServer, super::proxy::FaultProxy) {
    let a = dr_server_with_config(&format!(
        "replication {{\n  wal_retention = {retention}\n  key_journal_retention = {journal}\n}}"
    ));
    a.mount_kv2();
    let proxy = super::proxy::FaultProxy::start(
        format!("127.0.0.1:{}", cluster_port(&a))
            .parse()
            .expect("addr"),
    );
    enable_primary_at(&a, &proxy.addr());
    let mut b = dr_server();
    enable_secondary(&b, &activation_token(&a, "site-b"));
    adopt_credentials(&mut b, &a);
    wait_converged(&a, &b);
    (a, b, proxy)
}
