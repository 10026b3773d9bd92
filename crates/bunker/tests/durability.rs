//! Crash durability: every KV write the server acknowledged must survive `kill -9`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use bunker_testkit as common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{TestServer, REQUEST_TIMEOUT};
use serde_json::{json, Value};

const WRITERS: usize = 16;
/// Acknowledged writes to collect before the kill.
const ACKS_BEFORE_KILL: usize = 500;
/// Upper bound on writes per thread, so the loop is bounded even if the kill never comes.
const MAX_WRITES_PER_WRITER: usize = 5_000;
/// Give up if the server is too slow to reach the target.
const WRITE_PHASE_DEADLINE: Duration = Duration::from_secs(180);

#[test]
fn acknowledged_kv_writes_survive_kill_9() {
    let mut s = TestServer::initialized();
    s.mount_kv2();
    let root = s.root_token.clone();

    let acked_count = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::new(Mutex::new(Vec::new()));
    let mut handles = Vec::new();
    for w in 0..WRITERS {
        let url_base = s.url("secret/data/durable");
        let client = reqwest::blocking::Client::builder()
            .no_proxy()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .unwrap();
        let (acked_count, stop, acked, root) = (
            acked_count.clone(),
            stop.clone(),
            acked.clone(),
            root.clone(),
        );
        handles.push(std::thread::spawn(move || {
            let mut other_statuses = 0usize;
            for n in 0..MAX_WRITES_PER_WRITER {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let key = format!("w{w}-{n}");
                let value = format!("value-{w}-{n}-{}", "x".repeat(n % 64));
                let r = client
                    .put(format!("{url_base}/{key}"))
                    .header("X-Vault-Token", &root)
                    .json(&json!({"data": {"v": value}}))
                    .send();
                match r {
                    Ok(resp) if resp.status().as_u16() == 200 => {
                        // Read the whole body: the write counts as acknowledged only once the
                        // client has the full response.
                        if resp.text().is_ok() {
                            acked.lock().unwrap().push((key, value));
                            acked_count.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok(resp) => {
                        other_statuses += 1;
                        if !stop.load(Ordering::Relaxed) {
                            eprintln!(
                                "writer {w}: unexpected status {} before kill",
                                resp.status()
                            );
                        }
                    }
                    // Connection errors are expected once the server is killed.
                    Err(_) => {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                    }
                }
            }
            other_statuses
        }));
    }

    let deadline = Instant::now() + WRITE_PHASE_DEADLINE;
    while acked_count.load(Ordering::Relaxed) < ACKS_BEFORE_KILL {
        assert!(
            Instant::now() < deadline,
            "only {} writes acknowledged in {WRITE_PHASE_DEADLINE:?}",
            acked_count.load(Ordering::Relaxed)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // Writers are still running: the kill lands with requests in flight.
    s.kill9();
    stop.store(true, Ordering::Relaxed);
    let mut unexpected = 0;
    for h in handles {
        unexpected += h.join().expect("writer thread");
    }
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    assert!(acked.len() >= ACKS_BEFORE_KILL);
    assert_eq!(
        unexpected, 0,
        "writers saw non-200 statuses before the kill"
    );
    eprintln!("{} writes acknowledged before kill -9", acked.len());

    s.restart();
    let (st, b) = s.get("sys/seal-status", None);
    assert_eq!(st, 200);
    assert_eq!(
        b["sealed"],
        json!(true),
        "restart must come back sealed: {b}"
    );
    s.unseal();

    let mut missing = Vec::new();
    let mut wrong = Vec::new();
    for (key, value) in &acked {
        let (st, data) = s.kv_get(&format!("durable/{key}"));
        if st != 200 {
            missing.push(format!("{key} (status {st})"));
        } else if data != json!({"v": value}) {
            wrong.push(format!("{key}: {data}"));
        }
    }
    assert!(
        missing.is_empty() && wrong.is_empty(),
        "{} of {} acknowledged writes lost, {} wrong; first lost: {:?}; first wrong: {:?}",
        missing.len(),
        acked.len(),
        wrong.len(),
        missing.iter().take(10).collect::<Vec<_>>(),
        wrong.iter().take(10).collect::<Vec<_>>()
    );

    // The server still takes writes after recovery, and reads them back.
    s.kv_put("durable/after-restart", json!({"v": "ok"}));
    assert_eq!(s.kv_get("durable/after-restart"), (200, json!({"v": "ok"})));
    let first = &acked[0].0;
    let (st, meta) = s.get(&format!("secret/metadata/durable/{first}"), s.root());
    assert_eq!(st, 200, "{meta}");
    assert_eq!(meta["data"]["current_version"], Value::from(1));
}

/// A lone writer's writes are acknowledged once their commit-log record is synced, before redb
/// writes their pages (`crates/storage/src/embedded/log.rs`); after `kill -9` the restart
/// replays the log. The test goes round until a restart reports that it replayed records (a
/// kill that lands just after a checkpoint leaves none to replay, and would prove nothing).
#[test]
fn lone_writes_acknowledged_from_the_commit_log_survive_kill_9() {
    const REPLAYED: &str = "replayed the commit log after an unclean stop";
    let mut s = TestServer::initialized();
    s.mount_kv2();
    let mut acked: Vec<(String, String)> = Vec::new();
    let mut rounds = 0;
    while common::dr::log_count(&s, REPLAYED) == 0 {
        rounds += 1;
        assert!(
            rounds <= 5,
            "no restart replayed the commit log in 5 rounds"
        );
        for n in 0..10 {
            let key = format!("lone/r{rounds}-{n}");
            let value = format!("value-{rounds}-{n}");
            s.kv_put(&key, json!({"v": value}));
            acked.push((key, value));
        }
        s.kill9();
        s.restart();
        s.unseal();
        for (key, value) in &acked {
            assert_eq!(
                s.kv_get(key),
                (200, json!({"v": value})),
                "acknowledged write {key} after kill -9 in round {rounds}"
            );
        }
    }
    // A clean stop checkpoints what the log holds: the next start has nothing to replay.
    for n in 0..5 {
        s.kv_put(&format!("lone/clean-{n}"), json!({"v": n}));
    }
    let replays = common::dr::log_count(&s, REPLAYED);
    let status = s
        .terminate(Duration::from_secs(30))
        .expect("server stops on SIGTERM");
    assert!(status.success(), "server exited with {status}");
    s.start();
    s.wait_ready();
    s.unseal();
    assert_eq!(s.kv_get("lone/clean-4"), (200, json!({"v": 4})));
    assert_eq!(common::dr::log_count(&s, REPLAYED), replays);
    assert_eq!(s.kv_get(&acked[0].0).0, 200);
}

/// The commit log's valid records, region by region, as the embedded store lays them out
/// (`crates/storage/src/embedded/log.rs`: two regions of 16 MiB, each a run of records
/// `len u32 | crc32 u32 | seq u64 | ops` from its start): (offset, length, number).
fn log_records(log: &[u8]) -> Vec<(usize, usize, u64)> {
    const REGION: usize = 16 << 20;
    let u32_at = |at: usize| u32::from_le_bytes(log[at..at + 4].try_into().unwrap()) as usize;
    let mut records = Vec::new();
    for base in [0, REGION] {
        let end = (base + REGION).min(log.len());
        let mut at = base;
        while at + 16 <= end {
            let len = u32_at(at);
            if len < 16 || at + len > end {
                break;
            }
            let body = &log[at + 8..at + len];
            if crc32fast::hash(body) as usize != u32_at(at + 4) {
                break;
            }
            records.push((at, len, u64::from_le_bytes(body[..8].try_into().unwrap())));
            at += len;
        }
    }
    records
}

/// A commit-log record damaged on disk after it was synced, while the record after it is
/// intact, stops the real server: it exits non-zero naming the record on stderr, and again on
/// the next try, instead of opening without that acknowledged write and every later one.
/// With the log moved aside it starts at its last checkpoint. Each round writes, kills -9 and
/// damages the newest record but one; a round whose damage a checkpoint had already covered
/// (so nothing replays it) starts normally and the next round tries again.
#[test]
fn a_damaged_commit_log_record_stops_the_server_until_the_log_is_moved_aside() {
    let mut s = TestServer::initialized();
    s.mount_kv2();
    s.kv_put("kept", json!({"v": "checkpointed"}));
    let status = s.terminate(Duration::from_secs(30)).expect("clean stop");
    assert!(status.success(), "server exited with {status}");
    let log_path = s.dir().join("data").join("bunker.log");
    let mut refused = None;
    for round in 1..=5 {
        s.start();
        s.wait_ready();
        s.unseal();
        for n in 0..10 {
            s.kv_put(&format!("logged/{round}-{n}"), json!({"v": n}));
        }
        s.kill9();
        let mut log = std::fs::read(&log_path).expect("reading the log");
        let records = log_records(&log);
        let newest = records
            .iter()
            .map(|r| r.2)
            .max()
            .expect("records in the log");
        let &(at, len, _) = records
            .iter()
            .find(|r| r.2 == newest - 1)
            .expect("the record before the newest");
        log[at + len - 1] ^= 0x01;
        std::fs::write(&log_path, &log).expect("writing the log");
        if let Some(status) = s.start_or_exit() {
            refused = Some((status, at, newest));
            break;
        }
        s.kill9();
    }
    let (status, at, newest) = refused.expect("no round left a damaged record to replay");
    assert!(!status.success(), "exited with {status}");
    let stderr = s.log_text("stderr");
    assert!(
        stderr.contains(&format!("record {} (at byte {at}) is damaged", newest - 1))
            && stderr.contains(&format!("record {newest} after it is intact")),
        "{stderr}"
    );
    // Nothing was replayed or checkpointed past the damage: refused again.
    assert!(s.start_or_exit().is_some_and(|status| !status.success()));

    std::fs::rename(&log_path, s.dir().join("bunker.log.damaged")).expect("moving the log aside");
    assert_eq!(s.start_or_exit(), None, "starts without the log");
    s.unseal();
    assert_eq!(s.kv_get("kept"), (200, json!({"v": "checkpointed"})));
    s.kv_put("after", json!({"v": 1}));
    assert_eq!(s.kv_get("after"), (200, json!({"v": 1})));
}
