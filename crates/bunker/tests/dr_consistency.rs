//! A DR secondary is always a consistent, promotable prefix of its primary (issue "A DR
//! secondary is always a consistent, promotable prefix of its primary"): the operator's worst
//! day, as a test. Writers hammer the primary (paired counters, a hot KV v2 set with version
//! deletes and destroys); the link is cut until the secondary falls past WAL retention; when
//! it is restored the secondary reconciles by Merkle sync, and the primary is killed with -9
//! in the middle of it. The secondary is then promoted **without force**, and must hold the
//! primary's state at the index it reported: no torn KV v2 secret, no acknowledged write at or
//! below that index missing, no pair of writes seen out of order.
//!
//! Each run prints its seed (`BUNKER_CONSISTENCY_SEED` replays one).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use common::dr::{
    activation_token, adopt_credentials, cluster_port, dr_server, dr_server_with_config, dr_status,
    enable_primary_at, enable_secondary, promote_attempt, wait_converged, wait_status, CONVERGE,
};
use common::proxy::FaultProxy;
use common::TestServer;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

const RETENTION: u64 = 30;
const PAIR_WRITERS: usize = 3;
const HOT_WRITERS: usize = 2;
const HOT_KEYS: usize = 4;

/// One acknowledged write: the value written and the upper bound of its WAL index that the
/// primary returned with the acknowledgement (`X-Bunker-Wal-Index`).
#[derive(Clone, Copy, Debug)]
struct Acked {
    n: u64,
    wal_bound: u64,
}

#[derive(Default)]
struct Log {
    /// Acknowledged writes of each paired-counter key, in order.
    acked: BTreeMap<String, Vec<Acked>>,
    hot_ops: u64,
}

struct Writers {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Log>>,
    threads: Vec<JoinHandle<()>>,
}

impl Writers {
    fn start(p: &TestServer, seed: u64) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Log::default()));
        let mut threads = Vec::new();
        for w in 0..PAIR_WRITERS {
            let (stop, log) = (stop.clone(), log.clone());
            let (addr, token) = (p.addr(), p.root().unwrap().to_owned());
            threads.push(std::thread::spawn(move || {
                pair_writer(&addr, &token, w, &stop, &log)
            }));
        }
        for h in 0..HOT_WRITERS {
            let (stop, log) = (stop.clone(), log.clone());
            let (addr, token) = (p.addr(), p.root().unwrap().to_owned());
            let seed = seed.wrapping_add(h as u64);
            threads.push(std::thread::spawn(move || {
                hot_writer(&addr, &token, seed, &stop, &log)
            }));
        }
        Writers { stop, log, threads }
    }

    fn acked_pairs(&self) -> usize {
        let log = self.log.lock().unwrap();
        log.acked.values().map(Vec::len).sum()
    }

    fn stop(self) -> Log {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            t.join().unwrap();
        }
        Arc::try_unwrap(self.log)
            .ok()
            .expect("writers stopped")
            .into_inner()
            .unwrap()
    }
}

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// A request to the primary; `None` once it is gone (the writer then stops).
fn send(
    c: &reqwest::blocking::Client,
    method: reqwest::Method,
    url: String,
    token: &str,
    body: Value,
) -> Option<(Value, u64)> {
    let resp = c
        .request(method, url)
        .header("X-Vault-Token", token)
        .json(&body)
        .send()
        .ok()?;
    if !resp.status().is_success() {
        return None;
    }
    let bound = resp
        .headers()
        .get("x-bunker-wal-index")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("a primary's write carries X-Bunker-Wal-Index");
    let body = resp.json().unwrap_or(Value::Null);
    Some((body, bound))
}

/// Writes `w/a = n` then `w/b = n` for n = 1, 2, ...: in any prefix of the primary's history
/// `b <= a <= b + 1`.
fn pair_writer(addr: &str, token: &str, w: usize, stop: &AtomicBool, log: &Mutex<Log>) {
    let c = client();
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        for half in ["a", "b"] {
            let key = format!("pair/{w}/{half}");
            let url = format!("{addr}/v1/secret/data/{key}");
            let body = json!({"data": {"n": n.to_string()}});
            let Some((_, wal_bound)) = send(&c, reqwest::Method::PUT, url, token, body) else {
                return;
            };
            log.lock()
                .unwrap()
                .acked
                .entry(key)
                .or_default()
                .push(Acked { n, wal_bound });
        }
    }
}

/// New versions of a small hot set, with version deletes and destroys mixed in.
fn hot_writer(addr: &str, token: &str, seed: u64, stop: &AtomicBool, log: &Mutex<Log>) {
    let c = client();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    while !stop.load(Ordering::SeqCst) {
        let key = format!("hot/{}", rng.gen_range(0..HOT_KEYS));
        let url = format!("{addr}/v1/secret/data/{key}");
        let body = json!({"data": {"v": rng.gen::<u32>().to_string()}});
        let Some((resp, _)) = send(&c, reqwest::Method::PUT, url, token, body) else {
            return;
        };
        let version = resp["data"]["version"].as_u64().unwrap_or(1);
        let older = json!({"versions": [version.saturating_sub(1).max(1)]});
        let done = match rng.gen_range(0..4) {
            0 => send(
                &c,
                reqwest::Method::POST,
                format!("{addr}/v1/secret/delete/{key}"),
                token,
                older,
            ),
            1 => send(
                &c,
                reqwest::Method::PUT,
                format!("{addr}/v1/secret/destroy/{key}"),
                token,
                older,
            ),
            _ => Some((Value::Null, 0)),
        };
        if done.is_none() {
            return;
        }
        log.lock().unwrap().hot_ops += 1;
    }
}

/// The value of counter `key` on `s` (0 when absent).
fn counter(s: &TestServer, key: &str) -> u64 {
    let (code, data) = s.kv_get(key);
    if code == 404 {
        return 0;
    }
    assert_eq!(code, 200, "read {key}: {data}");
    data["n"].as_str().unwrap().parse().unwrap()
}

/// Invariants 1 and 2 on the promoted secondary `s`, which reported WAL index `index`.
fn check_prefix(s: &TestServer, index: u64, log: &Log) {
    for w in 0..PAIR_WRITERS {
        let (ka, kb) = (format!("pair/{w}/a"), format!("pair/{w}/b"));
        let (a, b) = (counter(s, &ka), counter(s, &kb));
        assert!(
            b <= a && a <= b + 1,
            "writer {w}: a = {a}, b = {b} is no prefix of the primary's history"
        );
        for (key, seen) in [(&ka, a), (&kb, b)] {
            let must = log
                .acked
                .get(key)
                .into_iter()
                .flatten()
                .filter(|w| w.wal_bound <= index)
                .map(|w| w.n)
                .max()
                .unwrap_or(0);
            assert!(
                seen >= must,
                "{key}: the write of {must} was acknowledged at or below WAL {index} and is lost (holds {seen})"
            );
        }
    }
    for h in 0..HOT_KEYS {
        let key = format!("hot/{h}");
        let (code, meta) = s.get(&format!("secret/metadata/{key}"), s.root());
        if code == 404 {
            continue;
        }
        assert_eq!(code, 200, "{key} metadata: {meta}");
        let versions = meta["data"]["versions"].as_object().expect("versions");
        for (v, info) in versions {
            let live = info["deletion_time"] == "" && info["destroyed"] == json!(false);
            if !live {
                continue;
            }
            let (code, body) = s.get(&format!("secret/data/{key}?version={v}"), s.root());
            assert_eq!(
                code, 200,
                "torn secret: {key} metadata lists live version {v}, its data reads {body}"
            );
            assert!(
                body["data"]["data"]["v"].is_string(),
                "torn secret {key} v{v}: {body}"
            );
        }
    }
}

/// The scenario, with the secondary held at failpoint `hold` while the primary is killed.
fn primary_killed_during_merkle_sync(hold: &str) {
    let seed: u64 = std::env::var("BUNKER_CONSISTENCY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("BUNKER_CONSISTENCY_SEED={seed} (hold at {hold})");

    let mut a = dr_server_with_config(&format!(
        "replication {{\n  wal_retention = {RETENTION}\n}}"
    ));
    a.mount_kv2();
    let proxy = FaultProxy::start(format!("127.0.0.1:{}", cluster_port(&a)).parse().unwrap());
    enable_primary_at(&a, &proxy.addr());
    let mut b = dr_server();
    enable_secondary(&b, &activation_token(&a, "site-b"));
    adopt_credentials(&mut b, &a);
    wait_converged(&a, &b);

    let writers = Writers::start(&a, seed);
    wait_status(&b, CONVERGE, "B consistent while streaming", |st| {
        st["consistent"] == json!(true) && st["last_remote_wal"].as_u64() > Some(40)
    });

    // The link is cut until B falls past A's WAL retention.
    proxy.cut();
    wait_status(&b, CONVERGE, "the cut to be noticed", |st| {
        st["connection_state"] != "ready"
    });
    let behind = dr_status(&b)["last_remote_wal"].as_u64().unwrap();
    wait_status(&a, CONVERGE, "A far past B", |st| {
        st["last_wal"].as_u64() > Some(behind + 4 * RETENTION)
    });
    common::dr::wait_wal_truncated(&a);

    // Restored, B cannot resume from its WAL position: it syncs, and is held in the sync.
    b.hold_at(hold);
    proxy.restore();
    b.wait_held(hold, CONVERGE);
    let st = dr_status(&b);
    assert!(
        st["state"] == "merkle-sync" || st["state"] == "stream-wals",
        "B is syncing: {st}"
    );
    // Writes go on while B syncs, then A's site is lost.
    let before_kill = writers.acked_pairs();
    assert!(
        poll(|| writers.acked_pairs() > before_kill + 20),
        "writers stalled"
    );
    a.kill9();
    let log = writers.stop();
    b.release(hold);
    let st = wait_status(&b, CONVERGE, "the lost primary to be noticed", |st| {
        st["connection_state"] != "ready" && st["state"] == "connecting"
    });

    // The truth B reports, then promotion without force.
    assert_eq!(st["consistent"], json!(true), "B must be consistent: {st}");
    let index = st["last_remote_wal"].as_u64().unwrap();
    eprintln!(
        "B promotable at WAL {index} (A was at {}; {} pair writes, {} hot operations acknowledged)",
        st["last_primary_wal"],
        log.acked.values().map(Vec::len).sum::<usize>(),
        log.hot_ops
    );
    let (code, body) = promote_attempt(&b, &a.keys, false);
    assert_eq!(code, 200, "promote without force: {body}");
    assert_eq!(body["data"]["complete"], json!(true), "{body}");
    assert_eq!(
        body["data"]["wal_index"],
        json!(index),
        "promote reports the index it promoted at: {body}"
    );
    check_prefix(&b, index, &log);
}

fn poll(f: impl FnMut() -> bool) -> bool {
    common::poll_until(CONVERGE, f)
}

/// The primary dies after B received the tree and before it fetched anything: B stays at its
/// last consistent point (before the cut).
#[test]
fn primary_killed_at_the_start_of_a_merkle_sync() {
    primary_killed_during_merkle_sync("secondary-merkle-sync");
}

/// The primary dies while B fetches the values that differ (after the first batch).
#[test]
fn primary_killed_while_a_merkle_sync_fetches() {
    primary_killed_during_merkle_sync("secondary-merkle-values-fetched");
}

/// The primary dies after B replayed past the bound, before B committed: B commits what it
/// holds, the primary's state at the stage's position.
#[test]
fn primary_killed_before_a_staged_sync_commits() {
    primary_killed_during_merkle_sync("secondary-before-stage-commit");
}
