//! Load for the DR consistency and fault tests, and the checks of what a secondary must hold.
//!
//! Writers run on their own threads against a primary's address: pairs of counters
//! (`pair/<w>/a = n`, then `pair/<w>/b = n`, so every prefix of the primary's history has
//! `b <= a <= b + 1`) and a hot KV v2 set with version deletes and destroys. Every
//! acknowledged counter write is logged with the `X-Bunker-Wal-Index` bound it came with. A
//! write that fails (the primary killed, stopped or sealed) is retried with the same value, so
//! the pairs stay ordered across faults.

// Test helpers fail by panicking, like the tests they serve.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockWriteGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use super::TestServer;

pub const PAIR_WRITERS: usize = 3;
pub const HOT_WRITERS: usize = 2;
pub const HOT_KEYS: usize = 4;

/// One acknowledged write: the value written and the upper bound of its WAL index that the
/// primary returned with the acknowledgement.
#[derive(Clone, Copy, Debug)]
pub struct Acked {
    pub n: u64,
    pub wal_bound: u64,
}

#[derive(Clone, Default)]
pub struct Log {
    /// Acknowledged writes of each counter key, in order.
    pub acked: BTreeMap<String, Vec<Acked>>,
    pub hot_ops: u64,
    /// Requests that failed and were retried (the primary was down, stopped or sealed).
    pub retries: u64,
}

impl Log {
    pub fn acked_writes(&self) -> usize {
        self.acked.values().map(Vec::len).sum()
    }

    /// The last acknowledged value of `key` (0 if none).
    pub fn last_acked(&self, key: &str) -> u64 {
        self.acked
            .get(key)
            .and_then(|v| v.last())
            .map_or(0, |a| a.n)
    }
}

struct Shared {
    stop: AtomicBool,
    /// Writers hold it for reading around each request; `pause` takes it for writing.
    gate: RwLock<()>,
    log: Mutex<Log>,
    acked: AtomicU64,
}

pub struct Writers {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

/// While held, no writer has a request in flight or starts one.
pub struct Paused<'a>(#[allow(dead_code)] RwLockWriteGuard<'a, ()>);

impl Writers {
    pub fn start(p: &TestServer, seed: u64) -> Writers {
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            gate: RwLock::new(()),
            log: Mutex::new(Log::default()),
            acked: AtomicU64::new(0),
        });
        let token = p.root().unwrap().to_owned();
        let mut threads = Vec::new();
        for w in 0..PAIR_WRITERS {
            let (shared, addr, token) = (shared.clone(), p.addr(), token.clone());
            threads.push(std::thread::spawn(move || {
                pair_writer(&addr, &token, w, &shared)
            }));
        }
        for h in 0..HOT_WRITERS {
            let (shared, addr, token) = (shared.clone(), p.addr(), token.clone());
            let seed = seed.wrapping_add(h as u64);
            threads.push(std::thread::spawn(move || {
                hot_writer(&addr, &token, seed, &shared)
            }));
        }
        Writers { shared, threads }
    }

    /// Acknowledged counter writes so far.
    pub fn acked(&self) -> u64 {
        self.shared.acked.load(Ordering::SeqCst)
    }

    /// Wait until `more` further counter writes were acknowledged.
    pub fn wait_for(&self, more: u64) {
        let target = self.acked() + more;
        assert!(
            super::poll_until(super::dr::CONVERGE, || self.acked() >= target),
            "writers stalled at {} acknowledged writes",
            self.acked()
        );
    }

    /// A copy of the log so far (take it while paused for a consistent cut).
    pub fn log(&self) -> Log {
        self.shared.log.lock().unwrap().clone()
    }

    pub fn pause(&self) -> Paused<'_> {
        Paused(self.shared.gate.write().unwrap())
    }

    pub fn stop(self) -> Log {
        self.shared.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            t.join().unwrap();
        }
        std::mem::take(&mut *self.shared.log.lock().unwrap())
    }
}

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// One request under the gate. `None` if it failed (not acknowledged: it may or may not have
/// been applied).
fn send(
    shared: &Shared,
    c: &reqwest::blocking::Client,
    method: reqwest::Method,
    url: &str,
    token: &str,
    body: &Value,
) -> Option<(Value, u64)> {
    let _gate = shared.gate.read().unwrap();
    let resp = c
        .request(method, url)
        .header("X-Vault-Token", token)
        .json(body)
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
    Some((resp.json().unwrap_or(Value::Null), bound))
}

/// Send until acknowledged, or until told to stop (`None`).
fn send_until_acked(
    shared: &Shared,
    c: &reqwest::blocking::Client,
    method: reqwest::Method,
    url: &str,
    token: &str,
    body: &Value,
) -> Option<(Value, u64)> {
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            return None;
        }
        if let Some(ok) = send(shared, c, method.clone(), url, token, body) {
            return Some(ok);
        }
        shared.log.lock().unwrap().retries += 1;
        // The primary is down, stopped or sealed: wait until it reports itself healthy (the
        // harness brings it back) or the writers are told to stop.
        let health = format!("{}/v1/sys/health", url.split("/v1/").next().unwrap_or(url));
        super::poll_until(super::dr::CONVERGE, || {
            shared.stop.load(Ordering::SeqCst)
                || c.get(&health)
                    .send()
                    .is_ok_and(|r| r.status().as_u16() == 200)
        });
    }
}

fn pair_writer(addr: &str, token: &str, w: usize, shared: &Shared) {
    let c = client();
    let mut n = 0u64;
    while !shared.stop.load(Ordering::SeqCst) {
        n += 1;
        for half in ["a", "b"] {
            let key = format!("pair/{w}/{half}");
            let url = format!("{addr}/v1/secret/data/{key}");
            let body = json!({"data": {"n": n.to_string()}});
            let Some((_, wal_bound)) =
                send_until_acked(shared, &c, reqwest::Method::PUT, &url, token, &body)
            else {
                return;
            };
            shared
                .log
                .lock()
                .unwrap()
                .acked
                .entry(key)
                .or_default()
                .push(Acked { n, wal_bound });
            shared.acked.fetch_add(1, Ordering::SeqCst);
        }
    }
}

fn hot_writer(addr: &str, token: &str, seed: u64, shared: &Shared) {
    let c = client();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    while !shared.stop.load(Ordering::SeqCst) {
        let key = format!("hot/{}", rng.gen_range(0..HOT_KEYS));
        let url = format!("{addr}/v1/secret/data/{key}");
        let body = json!({"data": {"v": rng.gen::<u32>().to_string()}});
        let Some((resp, _)) =
            send_until_acked(shared, &c, reqwest::Method::PUT, &url, token, &body)
        else {
            return;
        };
        let version = resp["data"]["version"].as_u64().unwrap_or(1);
        let older = json!({"versions": [version.saturating_sub(1).max(1)]});
        match rng.gen_range(0..4) {
            0 => {
                let url = format!("{addr}/v1/secret/delete/{key}");
                send(shared, &c, reqwest::Method::POST, &url, token, &older);
            }
            1 => {
                let url = format!("{addr}/v1/secret/destroy/{key}");
                send(shared, &c, reqwest::Method::PUT, &url, token, &older);
            }
            _ => {}
        }
        shared.log.lock().unwrap().hot_ops += 1;
    }
}

/// The seed in environment variable `name`, or a random one; printed so a run can be replayed.
pub fn seed_from_env(name: &str) -> u64 {
    let seed = std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("{name}={seed}");
    seed
}

/// The value of counter `key` on `s` (0 when absent).
pub fn counter(s: &TestServer, key: &str) -> u64 {
    let (code, data) = s.kv_get(key);
    if code == 404 {
        return 0;
    }
    assert_eq!(code, 200, "read {key}: {data}");
    data["n"].as_str().unwrap().parse().unwrap()
}

/// What a cluster that continues the primary's history at WAL index `index` must hold: the
/// counter pairs in order, every counter write acknowledged with a bound `<= index`, and no
/// KV v2 version that the metadata lists as live without its data.
pub fn check_prefix(s: &TestServer, index: u64, log: &Log) {
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
    check_no_torn_secret(s);
}

/// Every KV v2 version of the hot set that the metadata lists as live has its data.
pub fn check_no_torn_secret(s: &TestServer) {
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

/// No acknowledged counter write is missing on the primary `p` itself (after a kill -9 and
/// restart, for instance). Returns how many were checked.
pub fn check_acknowledged_on(p: &TestServer, log: &Log) -> usize {
    for w in 0..PAIR_WRITERS {
        for half in ["a", "b"] {
            let key = format!("pair/{w}/{half}");
            let must = log.last_acked(&key);
            let seen = counter(p, &key);
            assert!(
                seen >= must,
                "{key}: acknowledged {must}, the primary holds {seen} after the fault"
            );
        }
    }
    log.acked_writes()
}
