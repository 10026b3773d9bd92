//! `sys/metrics` against the real binary: Vault's metric names in the Prometheus text and in
//! Vault's JSON shape, the token requirement and `unauthenticated_metrics_access`, the seal
//! gauge, the replication gauges of a DR primary and its secondary, and Vault's replication RPC
//! timings across a Merkle reconciliation.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use bunker_testkit as common;

use common::dr::{
    activation_token, bulk_put, enable_primary, enable_secondary, wait_converged,
    wait_wal_truncated, ALLOW_HTTP_ACTIVATION, CONVERGE,
};
use common::{free_port, poll_until, ServerOptions, TestServer};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// The Prometheus text of `s`'s `sys/metrics` (status, body).
fn prometheus(s: &TestServer, token: Option<&str>) -> (u16, String) {
    let mut rb = s.client().get(s.url("sys/metrics?format=prometheus"));
    if let Some(t) = token {
        rb = rb.header("X-Vault-Token", t);
    }
    let resp = rb.send().unwrap();
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = resp.text().unwrap();
    if status == 200 {
        assert_eq!(content_type.as_deref(), Some("text/plain; version=0.0.4"));
    }
    (status, body)
}

/// The value of series `name` in Prometheus text (with its labels as the exporter writes them).
fn value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

const OPEN_METRICS: &str = "  telemetry {\n    unauthenticated_metrics_access = true\n  }";

#[test]
fn vault_metric_names_in_prometheus_and_json_behind_a_token() {
    let s = TestServer::initialized();
    s.mount_kv2();
    for i in 0..5 {
        s.kv_put(&format!("m/{i}"), json!({"v": "x"}));
    }
    let (code, text) = prometheus(&s, s.root());
    assert_eq!(code, 200, "{text}");
    for name in [
        "vault_core_handle_request",
        "vault_barrier_get",
        "vault_barrier_put",
        "vault_core_unsealed",
        "vault_core_active",
        "vault_token_count",
        "bunker_storage_fsyncs_total",
        "bunker_requests_total",
    ] {
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "{name} missing:\n{text}"
        );
    }
    // Embedded storage times its group commits by kind and how long batches queued for the
    // writer: the lone puts above went through the commit log, and a checkpoint started at the
    // latest with the 65th logged commit or 0.5 s after the last one (the open's own is not one).
    // Checkpoints run beside the writer and are timed when they end: wait for one.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let text = loop {
        let (_, text) = prometheus(&s, s.root());
        if value(&text, "bunker_storage_commit_checkpoint_count").unwrap_or(0.0) >= 1.0
            || std::time::Instant::now() > deadline
        {
            break text;
        }
        s.kv_put("m/more", json!({"v": "x"}));
    };
    for name in [
        "bunker_storage_commit_logged_count",
        "bunker_storage_commit_apply_count",
        "bunker_storage_log_append_count",
        "bunker_storage_commit_checkpoint_count",
        "bunker_storage_queue_wait_count",
    ] {
        assert!(value(&text, name).unwrap_or(0.0) >= 1.0, "{name}:\n{text}");
    }
    assert_eq!(value(&text, "vault_core_unsealed"), Some(1.0));
    assert!(value(&text, "vault_token_count").unwrap() >= 1.0, "{text}");
    assert!(value(&text, "vault_core_handle_request_count").unwrap() >= 6.0);

    // Vault's JSON shape.
    let (code, body) = s.get("sys/metrics", s.root());
    assert_eq!(code, 200, "{body}");
    let gauges = body["Gauges"].as_array().unwrap();
    assert!(gauges
        .iter()
        .any(|g| g["Name"] == "vault_core_unsealed" && g["Value"] == json!(1.0)));
    let samples = body["Samples"].as_array().unwrap();
    let handle = samples
        .iter()
        .find(|x| x["Name"] == "vault_core_handle_request")
        .expect("request timings");
    assert!(handle["Count"].as_f64().unwrap() >= 6.0, "{handle}");
    assert!(body["Counters"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["Name"] == "bunker_storage_fsyncs_total"));

    // Without a token, as in Vault: refused.
    let (code, _) = prometheus(&s, None);
    assert_eq!(code, 403);
}

#[test]
fn unauthenticated_metrics_access_also_while_sealed() {
    let mut s = TestServer::initialized_with(ServerOptions {
        listener_extra: OPEN_METRICS.into(),
        ..Default::default()
    });
    let (code, text) = prometheus(&s, None);
    assert_eq!(code, 200, "{text}");
    assert_eq!(value(&text, "vault_core_unsealed"), Some(1.0));
    s.restart();
    let (code, text) = prometheus(&s, None);
    assert_eq!(code, 200, "a sealed node reports that it is sealed: {text}");
    assert_eq!(value(&text, "vault_core_unsealed"), Some(0.0), "{text}");
}

/// A DR server whose API listener serves metrics without a token (a DR secondary refuses
/// token-authenticated client requests).
fn dr_server_open_metrics() -> TestServer {
    dr_server_open_metrics_with("")
}

/// As [`dr_server_open_metrics`], with `replication` settings (`wal_retention = 20`, say).
fn dr_server_open_metrics_with(replication: &str) -> TestServer {
    let cluster_port = free_port();
    let mut s = TestServer::with_config(ServerOptions {
        listener_extra: format!("  cluster_address = \"127.0.0.1:{cluster_port}\"\n{OPEN_METRICS}"),
        config_extra: ALLOW_HTTP_ACTIVATION.replace("\n}", &format!("\n  {replication}\n}}")),
        ..Default::default()
    });
    s.init_unseal(5, 3);
    s
}

#[test]
fn replication_gauges_on_a_primary_and_its_secondary() {
    let p = dr_server_open_metrics();
    p.mount_kv2();
    enable_primary(&p);
    let s = dr_server_open_metrics();
    enable_secondary(&s, &activation_token(&p, "site-b"));
    wait_converged(&p, &s);
    // Streamed, not part of the first sync.
    p.kv_put("x", json!({"v": "1"}));
    wait_converged(&p, &s);

    let (_, pt) = prometheus(&p, None);
    let last_wal = value(&pt, "vault_replication_wal_last_wal").expect("last_wal");
    assert!(last_wal > 0.0, "{pt}");
    assert_eq!(
        value(&pt, "vault_replication_wal_last_dr_wal"),
        Some(last_wal)
    );
    assert_eq!(
        value(&pt, "bunker_replication_connected_secondaries"),
        Some(1.0)
    );
    assert_eq!(value(&pt, "bunker_replication_dr_mode"), Some(1.0));
    assert!(
        pt.contains("bunker_replication_secondary_lag_wal_entries{secondary=\"site-b\"}"),
        "{pt}"
    );

    let (code, st) = prometheus(&s, None);
    assert_eq!(code, 200, "a DR secondary serves open metrics: {st}");
    assert_eq!(
        value(&st, "vault_replication_fsm_last_remote_wal"),
        Some(last_wal)
    );
    assert_eq!(value(&st, "bunker_replication_streaming"), Some(1.0));
    assert_eq!(value(&st, "bunker_replication_lag_wal_entries"), Some(0.0));
    assert_eq!(value(&st, "bunker_replication_dr_mode"), Some(2.0));
    assert!(value(&st, "bunker_replication_wal_entries_streamed_total").unwrap() >= 1.0);
    // The secondary's follower commits its applies on the replication thread while the storage
    // writer is idle (a few writes, in case one met the writer busy); client requests never do.
    let inline = |server| {
        value(
            &prometheus(server, None).1,
            "bunker_storage_commits_inline_total",
        )
    };
    let (on_primary, on_secondary) = (inline(&p), inline(&s).unwrap_or(0.0));
    for i in 0..3 {
        p.kv_put(&format!("inline-{i}"), json!({"v": "1"}));
        wait_converged(&p, &s);
    }
    assert!(inline(&s).unwrap_or(0.0) > on_secondary);
    assert_eq!(inline(&p), on_primary);
    // The JSON form works there too.
    let resp: Value = s
        .client()
        .get(s.url("sys/metrics"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert!(
        resp["Gauges"].as_array().is_some_and(|g| !g.is_empty()),
        "{resp}"
    );
}

/// The `_count` of summary `name` in Prometheus text (0 when it was never recorded).
fn count(text: &str, name: &str) -> f64 {
    value(text, &format!("{name}_count")).unwrap_or(0.0)
}

#[test]
fn vault_replication_rpc_timings_across_a_merkle_reconciliation() {
    // Without the key journal, the Merkle diff is the only catch-up past the WAL.
    let p = dr_server_open_metrics_with("wal_retention = 20\n  key_journal_retention = 0");
    p.mount_kv2();
    bulk_put(&p, "app/", 0..100, "a");
    enable_primary(&p);
    let mut s = dr_server_open_metrics();
    enable_secondary(&s, &activation_token(&p, "site-b"));
    wait_converged(&p, &s);

    // The secondary is down while the primary moves past what it keeps: it comes back,
    // cannot resume from the WAL, and reconciles by Merkle diff.
    s.kill9();
    bulk_put(&p, "app/", 0..60, "b");
    wait_wal_truncated(&p);
    s.restart();
    wait_converged(&p, &s);
    let (_, st) = prometheus(&s, None);
    assert!(
        value(&st, "bunker_replication_merkle_syncs_total").unwrap_or(0.0) >= 1.0,
        "the test must reach a Merkle sync: {st}"
    );
    for name in [
        "vault_replication_rpc_client_sub_page_hashes",
        "vault_replication_rpc_client_conflicting_pages",
        "vault_replication_rpc_client_fetch_keys",
        "vault_replication_merkleDiff",
        "vault_replication_merkleSync",
    ] {
        assert!(count(&st, name) >= 1.0, "{name} on the secondary: {st}");
    }
    p.kv_put("streamed", json!({"v": "1"}));
    wait_converged(&p, &s);
    let (_, pt) = prometheus(&p, None);
    let last_wal = value(&pt, "vault_replication_wal_last_wal").unwrap();
    let (_, st) = prometheus(&s, None);
    assert_eq!(
        value(&st, "vault_replication_fsm_last_upstream_remote_wal"),
        Some(last_wal),
        "{st}"
    );

    for name in [
        "vault_replication_rpc_server_sub_page_hashes_request",
        "vault_replication_rpc_server_conflicting_pages_request",
        "vault_replication_rpc_dr_server_fetch_keys_request",
        // The first session ended when the secondary was killed.
        "vault_replication_rpc_server_stream_wals_request",
        "vault_replication_wal_gc",
    ] {
        assert!(count(&pt, name) >= 1.0, "{name} on the primary: {pt}");
    }
    // Neither connection could resume from the WAL: the first had no position, the second
    // was behind what the primary keeps.
    assert!(value(&pt, "vault_logshipper_streamWALs_missing_guard").unwrap_or(0.0) >= 2.0);
    assert!(
        value(&pt, "vault_wal_gc_total").unwrap_or(0.0) >= 20.0,
        "{pt}"
    );
    let heartbeat = pt
        .lines()
        .find_map(|l| {
            l.strip_prefix("vault_replication_rpc_server_last_heartbeat{secondary=\"site-b\"} ")
        })
        .and_then(|v| v.parse::<f64>().ok())
        .expect("the secondary's last heartbeat");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!((now - heartbeat).abs() < 120.0, "{heartbeat} vs {now}");
}

/// The names of `pid`'s threads.
fn thread_names(pid: u32) -> Vec<String> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_owned())
        .collect()
}

/// The recorder folds its buffered timings on a thread of its own, every second: on the request
/// runtime, every five seconds, the fold held a worker for tens of milliseconds under load. (That
/// the thread's loop runs its work repeatedly is `server::tests::periodic_work_runs_repeatedly_on_its_own_thread`;
/// a scrape folds too, so a scrape cannot tell whether the thread did.)
#[test]
fn the_metrics_fold_runs_on_a_thread_of_its_own() {
    let s = TestServer::initialized();
    let pid = s.pid().expect("the server runs");
    let names = thread_names(pid);
    assert!(
        names.iter().any(|n| n == "bunker-metrics"),
        "threads of the server: {names:?}"
    );
    // The summaries still answer, with what was timed.
    s.mount_kv2();
    s.kv_put("fold/a", json!({"v": "x"}));
    let (code, text) = prometheus(&s, s.root());
    assert_eq!(code, 200, "{text}");
    assert!(
        value(&text, "vault_core_handle_request_count").is_some_and(|n| n >= 1.0),
        "{text}"
    );
}

/// A stage that stalls past its threshold is named in the log, with how long it took
/// (docs/monitoring.md, "Slow stages"): here a WAL truncation pass, held at a
/// failpoint inside its timing. It is held past its threshold (1 s: a pass is background
/// work), and the line is told from an earlier slow pass's by its duration. The log, written
/// to a file, has no colour codes.
#[test]
fn a_stalled_stage_is_named_in_the_log() {
    const POINT: &str = "wal-truncation-pass";
    const STAGE: &str = "stage=\"vault_replication_wal_gc\"";
    const HELD: Duration = Duration::from_millis(1300);
    let s = dr_server_open_metrics_with("wal_retention = 20");
    s.mount_kv2();
    s.hold_at(POINT);
    s.wait_held(POINT, CONVERGE);
    // The pass stays held past the threshold, while clients' writes go on beside it: a stalled
    // truncation pass holds no lock they need.
    let held = Instant::now();
    let mut written = 0;
    assert!(poll_until(CONVERGE, || {
        s.kv_put(&format!("beside-the-stall/{written}"), json!({ "n": "1" }));
        written += 1;
        held.elapsed() >= HELD
    }));
    s.release(POINT);
    let took = |line: &str| -> Option<f64> {
        line.split("took_ms=")
            .nth(1)?
            .split(' ')
            .next()?
            .parse()
            .ok()
    };
    let held_line = || {
        s.log_text("stderr")
            .lines()
            .find(|l| l.contains(STAGE) && took(l).is_some_and(|ms| ms >= HELD.as_millis() as f64))
            .map(str::to_owned)
    };
    assert!(
        poll_until(CONVERGE, || held_line().is_some()),
        "no slow-stage warning for the held pass: {}",
        s.log_text("stderr")
    );
    let line = held_line().unwrap();
    assert!(line.contains("WARN"), "{line}");
    assert!(
        line.contains("slow stage: took longer than its threshold"),
        "{line}"
    );
    assert!(line.contains("threshold_ms=1000"), "{line}");
    assert!(
        !s.log_text("stderr").contains('\x1b'),
        "colour codes in a log file: {line}"
    );
    // Every stall is counted for alerting, written to the log or not.
    let (code, text) = prometheus(&s, None);
    assert_eq!(code, 200, "{text}");
    let stalls = value(
        &text,
        "bunker_slow_stages_total{stage=\"vault_replication_wal_gc\"}",
    );
    assert!(stalls >= Some(1.0), "{text}");
    // Truncation goes on after the stall.
    enable_primary(&s);
    bulk_put(&s, "after/", 0..40, "a");
    wait_wal_truncated(&s);
}
