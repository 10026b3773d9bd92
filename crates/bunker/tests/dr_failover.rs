//! DR failover and faults end to end: planned failover and failback, kill -9 of either side,
//! a lagging secondary, two secondaries, and promotion or sync against a frozen primary.
//! Activation and convergence tests are in `dr.rs`; shared helpers in `crates/testkit/src/dr.rs`.
//!
//! Every wait polls `sys/replication/dr/status` against a deadline; nothing sleeps.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use bunker_testkit as common;

use common::dr::{
    activation_token, adopt_credentials, assert_dr_refused, assert_kv, bulk_put, demote,
    dr_operation_token_by_ceremony, dr_server, dr_server_with_config, dr_status, enable_primary,
    enable_secondary, fail_over, last_keys_fetched, merkle_syncs, primary_holding, promote_attempt,
    promote_with_keys, replicated_key_count, secondary_held_in_merkle_sync, secondary_of, signal,
    update_primary, wait_converged, wait_status, wait_wal_truncated, CONVERGE, SYNC_BATCH_APPLIED,
};
use common::{errors, poll_until};
use serde_json::{json, Value};

#[test]
fn planned_failover_and_failback() {
    const TOTAL: usize = 1000;
    const CHANGED: usize = 20;
    const NEW: usize = 5;
    let a = dr_server();
    a.mount_kv2();
    bulk_put(&a, "app/", 0..TOTAL, "a");
    // A pre-staged batch token that may operate DR-secondary endpoints; it replicates.
    let (code, body) = a.put(
        "sys/policies/acl/dr-ops",
        a.root(),
        json!({"policy": "path \"sys/replication/dr/secondary/*\" { capabilities = [\"update\"] }"}),
    );
    assert_eq!(code, 204, "policy: {body}");
    let batch_op_token =
        a.create_token(json!({"type": "batch", "policies": ["dr-ops"], "ttl": "1h"}));
    enable_primary(&a);
    let b = secondary_of(&a, "site-b");
    let total_keys = replicated_key_count(&a);

    // Fail over: demote A, promote B with A's unseal keys (B's own were wiped).
    fail_over(&a, &b);
    let bs = dr_status(&b);
    assert_eq!(bs["mode"], "primary", "{bs}");
    assert_eq!(
        bs["generation"],
        json!(2),
        "promotion starts a new generation: {bs}"
    );
    assert_kv(&b, "app/7", 7, "a");

    // Clients write on B while A is away: changed and new keys.
    for i in 0..CHANGED {
        b.kv_put(
            &format!("app/{i}"),
            json!({ "n": i.to_string(), "round": "b" }),
        );
    }
    for i in 0..NEW {
        b.kv_put(
            &format!("new/{i}"),
            json!({ "n": i.to_string(), "round": "b" }),
        );
    }

    // A follows B again, without a wipe.
    let op_token_a = dr_operation_token_by_ceremony(&a, &a.keys);
    update_primary(&a, &activation_token(&b, "site-a"), &op_token_a);
    wait_converged(&b, &a);
    let st = dr_status(&a);
    assert_eq!(st["secondary_id"], "site-a", "{st}");
    assert_eq!(st["generation"], json!(2), "{st}");
    assert_eq!(st["cluster_id"], bs["cluster_id"], "{st}");
    let fetched = last_keys_fetched(&st);
    let deleted = st["sync"]["last_merkle_sync"]["keys_deleted"]
        .as_u64()
        .unwrap();
    // Each KV v2 write touches two storage keys (metadata and the new version).
    let bound = 2 * (CHANGED + NEW) as u64 + 20;
    eprintln!(
        "A rejoined: fetched {fetched}, deleted {deleted} of {total_keys} keys; sync {}",
        st["sync"]
    );
    assert!(
        fetched <= bound && deleted <= 20,
        "A must only fetch what changed (<= {bound} of {total_keys} keys), not be wiped: {st}"
    );
    assert!(total_keys > 10 * bound, "{total_keys} keys");
    assert_dr_refused(&a, "secret/data/app/1", a.root());
    // B writes after A reconnected arrive by the stream.
    b.kv_put("new/streamed", json!({ "n": "0", "round": "b" }));
    wait_converged(&b, &a);

    // Fail back: demote B, promote A, B follows A with the replicated batch token.
    demote(&b);
    let done = promote_with_keys(&a, &a.keys);
    assert_eq!(done["data"]["complete"], json!(true), "{done}");
    let st = dr_status(&a);
    assert_eq!(st["mode"], "primary", "{st}");
    assert_eq!(st["generation"], json!(3), "{st}");
    update_primary(&b, &activation_token(&a, "site-b2"), &batch_op_token);
    wait_converged(&a, &b);
    assert_eq!(dr_status(&b)["secondary_id"], "site-b2");
    assert!(
        last_keys_fetched(&dr_status(&b)) <= 20,
        "B had everything already: {}",
        dr_status(&b)
    );
    assert_dr_refused(&b, "secret/data/app/1", b.root());

    // A serves what was written on B, and what it had before.
    for i in 0..CHANGED {
        assert_kv(&a, &format!("app/{i}"), i, "b");
    }
    for i in 0..NEW {
        assert_kv(&a, &format!("new/{i}"), i, "b");
    }
    assert_kv(&a, "new/streamed", 0, "b");
    for i in (CHANGED..TOTAL).step_by(53) {
        assert_kv(&a, &format!("app/{i}"), i, "a");
    }
    let (code, body) = a.put(
        "secret/data/after-failback",
        a.root(),
        json!({"data": {"x": "y"}}),
    );
    assert_eq!(code, 200, "A accepts writes again: {body}");
}

#[test]
fn kill9_primary_during_streaming_resumes() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    let mut a = dr_server();
    a.mount_kv2();
    bulk_put(&a, "base/", 0..200, "a");
    enable_primary(&a);
    let b = secondary_of(&a, "site-b");
    let before = dr_status(&b);
    let syncs_before = merkle_syncs(&before);
    let streamed_before = before["sync"]["wal_entries_streamed"].as_u64().unwrap();

    // A client writes as fast as A acknowledges; only acknowledged writes are recorded.
    let acked: Arc<Mutex<Vec<usize>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (client, base, token) = (
            a.client().clone(),
            a.url("secret/data/w/"),
            a.root_token.clone(),
        );
        let (acked, stop) = (acked.clone(), stop.clone());
        std::thread::spawn(move || {
            for i in 0.. {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let resp = client
                    .put(format!("{base}{i}"))
                    .header("X-Vault-Token", &token)
                    .json(&json!({"data": {"n": i.to_string(), "round": "w"}}))
                    .send();
                match resp {
                    Ok(r) if r.status().as_u16() == 200 => acked.lock().unwrap().push(i),
                    _ => return,
                }
            }
        })
    };
    // Kill A once B is visibly receiving the stream and a few hundred writes were acknowledged.
    let streaming = poll_until(CONVERGE, || {
        let st = dr_status(&b);
        acked.lock().unwrap().len() >= 300
            && st["state"] == "stream-wals"
            && st["sync"]["wal_entries_streamed"].as_u64().unwrap() > streamed_before + 100
    });
    assert!(streaming, "B is not streaming: {}", dr_status(&b));
    a.kill9();
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("writer thread");
    let acked: Vec<usize> = acked.lock().unwrap().clone();
    let last_acked = *acked.last().expect("acknowledged writes");
    eprintln!(
        "killed A after {} acknowledged writes (last w/{last_acked})",
        acked.len()
    );
    wait_status(&b, CONVERGE, "B to notice A is gone", |st| {
        st["connection_state"] != "ready"
    });

    // A comes back (sealed; unsealed with its keys) and takes more writes.
    a.restart();
    a.unseal();
    for i in 0..50 {
        a.kv_put(
            &format!("after/{i}"),
            json!({ "n": i.to_string(), "round": "after" }),
        );
    }
    wait_converged(&a, &b);
    let st = dr_status(&b);
    assert_eq!(
        merkle_syncs(&st),
        syncs_before,
        "B must resume from its WAL position, not reconcile by Merkle: {st}"
    );

    // Fail over to B: every acknowledged write is there, including the last ones before the kill.
    a.kill9();
    let done = promote_with_keys(&b, &b.keys);
    assert_eq!(done["data"]["complete"], json!(true), "{done}");
    for &i in &acked {
        assert_kv(&b, &format!("w/{i}"), i, "w");
    }
    for i in 0..50 {
        assert_kv(&b, &format!("after/{i}"), i, "after");
    }
}

#[test]
fn kill9_secondary_during_merkle_sync_then_converges() {
    const TOTAL: usize = 3000;
    let a = primary_holding(TOTAL);
    // Kill B while keys are being copied: held after its first applied batch.
    let mut b = secondary_held_in_merkle_sync(&a);
    b.kill9();

    // B restarts sealed and still follows A; it reconciles again and streams.
    b.release(SYNC_BATCH_APPLIED);
    b.restart();
    wait_converged(&a, &b);
    let st = dr_status(&b);
    assert_eq!(st["secondary_id"], "site-held", "{st}");
    assert!(merkle_syncs(&st) >= 1, "{st}");
    // Streaming works after the crash.
    a.kv_put("after-crash", json!({ "n": "0", "round": "after" }));
    wait_converged(&a, &b);

    // What B holds is usable: fail over to it and read.
    fail_over(&a, &b);
    for i in (0..TOTAL).step_by(97).chain([TOTAL - 1]) {
        assert_kv(&b, &format!("app/{i}"), i, "a");
    }
    assert_kv(&b, "after-crash", 0, "after");
}

#[test]
fn lagging_secondary_catches_up_by_merkle_diff() {
    lagging_secondary_catches_up(false);
}

/// As above with the key journal on (the default): the catch-up fetches the keys written
/// since B's position, by name, with no Merkle diff.
#[test]
fn lagging_secondary_catches_up_from_the_key_journal() {
    lagging_secondary_catches_up(true);
}

/// Past the WAL's retention, B catches up from the key journal (`journal`) or else by Merkle
/// diff, fetching only what changed.
fn lagging_secondary_catches_up(journal: bool) {
    const TOTAL: usize = 2000;
    const CHANGED: usize = 200;
    const RETENTION: u64 = 20;
    let journal_retention = if journal { 1_000_000 } else { 0 };
    let a = dr_server_with_config(&format!(
        "replication {{\n  wal_retention = {RETENTION}\n  key_journal_retention = {journal_retention}\n}}"
    ));
    a.mount_kv2();
    bulk_put(&a, "app/", 0..TOTAL, "a");
    enable_primary(&a);
    let mut b = secondary_of(&a, "site-b");
    let total_keys = replicated_key_count(&a);

    // B is down while A moves far past what it retains.
    b.kill9();
    let wal_before = dr_status(&a)["last_wal"].as_u64().unwrap();
    bulk_put(&a, "app/", 0..CHANGED, "changed");
    let wal_after = dr_status(&a)["last_wal"].as_u64().unwrap();
    assert!(
        wal_after > wal_before + RETENTION,
        "{wal_before} -> {wal_after}"
    );
    wait_wal_truncated(&a);

    // B comes back (sealed), cannot resume by WAL, catches up and streams.
    b.restart();
    wait_converged(&a, &b);
    let st = dr_status(&b);
    let (fetched, syncs) = if journal {
        let sync = &st["sync"];
        assert_eq!(merkle_syncs(&st), 0, "no Merkle diff: {st}");
        let fetched = sync["last_journal_sync"]["keys_fetched"].as_u64();
        (
            fetched.expect("keys fetched"),
            sync["journal_syncs"].as_u64(),
        )
    } else {
        (last_keys_fetched(&st), Some(merkle_syncs(&st)))
    };
    eprintln!(
        "B caught up: fetched {fetched} of {total_keys} keys; sync {}",
        st["sync"]
    );
    assert!(
        syncs >= Some(1),
        "B must have caught up by {}: {st}",
        if journal {
            "the key journal"
        } else {
            "Merkle diff"
        }
    );
    assert!(
        fetched >= CHANGED as u64,
        "every changed secret must be fetched ({CHANGED}): {st}"
    );
    assert!(
        fetched <= 2 * CHANGED as u64 + 40 && fetched * 4 < total_keys,
        "only what changed is fetched, not the {total_keys} keys: {st}"
    );
    a.kv_put("after-catch-up", json!({ "n": "0", "round": "after" }));
    wait_converged(&a, &b);
    assert_eq!(
        merkle_syncs(&dr_status(&b)),
        merkle_syncs(&st),
        "streams after the catch-up"
    );

    fail_over(&a, &b);
    for i in (0..CHANGED).step_by(13) {
        assert_kv(&b, &format!("app/{i}"), i, "changed");
    }
    for i in (CHANGED..TOTAL).step_by(131) {
        assert_kv(&b, &format!("app/{i}"), i, "a");
    }
    assert_kv(&b, "after-catch-up", 0, "after");
}

#[test]
fn two_secondaries_and_new_cluster_id_after_disable() {
    let a = dr_server();
    a.mount_kv2();
    bulk_put(&a, "app/", 0..100, "a");
    enable_primary(&a);
    let old_cluster_id = dr_status(&a)["cluster_id"].clone();
    let mut b = dr_server();
    let mut c = dr_server();
    enable_secondary(&b, &activation_token(&a, "site-b"));
    enable_secondary(&c, &activation_token(&a, "site-c"));
    adopt_credentials(&mut b, &a);
    adopt_credentials(&mut c, &a);
    wait_converged(&a, &b);
    wait_converged(&a, &c);
    let st = wait_status(&a, CONVERGE, "both secondaries connected", |st| {
        st["secondaries"].as_array().is_some_and(|s| {
            s.len() == 2 && s.iter().all(|x| x["connection_status"] == "connected")
        })
    });
    assert_eq!(st["known_secondaries"], json!(["site-b", "site-c"]), "{st}");
    let mut ids: Vec<&str> = st["secondaries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["node_id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, ["site-b", "site-c"], "{st}");
    for s in [&b, &c] {
        assert_eq!(dr_status(s)["cluster_id"], old_cluster_id);
    }

    // Disable and enable again: a new replication set.
    let (code, body) = a.post("sys/replication/dr/primary/disable", a.root(), json!({}));
    assert_eq!(code, 204, "disable: {body}");
    assert_eq!(dr_status(&a)["mode"], "disabled");
    enable_primary(&a);
    let st = dr_status(&a);
    assert_eq!(st["mode"], "primary", "{st}");
    assert_ne!(
        st["cluster_id"], old_cluster_id,
        "a new enable makes a new cluster id: {st}"
    );
    assert_eq!(st["known_secondaries"], json!([]), "{st}");
    a.kv_put("new-set", json!({ "n": "0", "round": "new" }));

    // The old secondaries are refused and receive nothing of the new set. The refusal names
    // the other replication set, or (the new set has a new replication CA) the certificate.
    for s in [&b, &c] {
        let st = wait_status(s, CONVERGE, "the old secondary to be refused", |st| {
            st["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("another replication set") || e.contains("certificate"))
        });
        eprintln!("{} refused: {}", st["secondary_id"], st["last_error"]);
        assert_ne!(st["connection_state"], "ready", "{st}");
        assert_eq!(st["cluster_id"], old_cluster_id, "{st}");
    }
    let a_root = wait_status(&a, CONVERGE, "a's current Merkle root", |st| {
        st["merkle_root_wal"] == st["last_wal"]
            && st["merkle_root"].as_str().is_some_and(|r| !r.is_empty())
    })["merkle_root"]
        .clone();
    for s in [&b, &c] {
        let st = dr_status(s);
        assert_ne!(
            st["merkle_root"], a_root,
            "an old secondary got the new set's data: {st}"
        );
        assert_ne!(st["state"], "stream-wals", "{st}");
        assert_ne!(st["connection_state"], "ready", "{st}");
    }
    let st = dr_status(&a);
    assert!(
        st["secondaries"]
            .as_array()
            .is_some_and(|s| s.iter().all(|x| x["connection_status"] != "connected")),
        "no old secondary may be connected to the new set: {st}"
    );
}

#[test]
fn promote_refuses_while_catching_up_without_force() {
    const TOTAL: usize = 5000;
    let a = primary_holding(TOTAL);
    let s = secondary_held_in_merkle_sync(&a);

    // Without force: 503, and the secondary stays a secondary. Its first sync is unfinished,
    // so it holds no consistent copy, and the error says so and what force would mean.
    let (code, body) = promote_attempt(&s, &a.keys, false);
    assert_eq!(code, 503, "promote while catching up: {body}");
    assert!(
        errors(&body)
            .iter()
            .any(|e| e.contains("no consistent copy") && e.contains("force=true")),
        "{body}"
    );
    let st = dr_status(&s);
    assert_eq!(st["mode"], "secondary", "{st}");

    // With force: promoted, unsealed and serving as a primary (with whatever it had copied).
    let (code, body) = promote_attempt(&s, &a.keys, true);
    assert_eq!(code, 200, "forced promote: {body}");
    assert_eq!(body["data"]["complete"], json!(true), "{body}");
    let st = dr_status(&s);
    assert_eq!(st["mode"], "primary", "{st}");
    assert_eq!(st["generation"], json!(2), "{st}");
    let (code, health) = s.get("sys/health", None);
    assert_eq!(code, 200, "health after a forced promotion: {health}");
    assert_eq!(health["sealed"], json!(false), "{health}");
    assert_eq!(health["replication_dr_mode"], "primary", "{health}");
}

#[test]
fn secondary_gives_up_on_a_hung_primary_during_merkle_sync() {
    const TOTAL: usize = 5000;
    let a = primary_holding(TOTAL);
    let s = secondary_held_in_merkle_sync(&a);
    // Freeze the primary, then let the secondary ask it for the rest.
    signal(&a, "STOP");
    s.release(SYNC_BATCH_APPLIED);

    // The primary is alive at the TCP level but answers nothing. Like the WAL stream (which
    // gives up after a silent period), the Merkle exchange must time out and report it, rather
    // than show a healthy "ready" connection forever.
    let mut last = Value::Null;
    let noticed = poll_until(CONVERGE, || {
        last = dr_status(&s);
        last["connection_state"] != "ready"
    });
    assert!(
        noticed,
        "a secondary still reports a ready connection to a primary that has been silent for {CONVERGE:?}: {last}"
    );
    // Once the primary answers again, the secondary finishes its sync.
    signal(&a, "CONT");
    wait_converged(&a, &s);
}

/// The torn window: a sync wrote values read from the primary's current store, and the
/// primary died before the stream said how far it was. The secondary is not a prefix of the
/// primary and says so; promotion without force refuses it.
#[test]
fn a_secondary_torn_by_a_sync_is_not_promoted_without_force() {
    const TOTAL: usize = 500;
    let mut a = primary_holding(TOTAL);
    let mut b = dr_server();
    b.hold_at("secondary-before-stream");
    enable_secondary(&b, &activation_token(&a, "site-b"));
    adopt_credentials(&mut b, &a);
    b.wait_held("secondary-before-stream", CONVERGE);
    let st = dr_status(&b);
    assert_eq!(st["consistent"], json!(false), "mid-sync: {st}");
    // The primary's site is lost right after the sync, before any stream frame.
    a.kill9();
    b.release("secondary-before-stream");
    let st = wait_status(&b, CONVERGE, "the lost primary to be noticed", |st| {
        st["connection_state"] != "ready"
    });
    assert_eq!(st["consistent"], json!(false), "{st}");
    let (code, body) = promote_attempt(&b, &a.keys, false);
    assert_eq!(code, 503, "promote of a torn secondary: {body}");
    assert_eq!(dr_status(&b)["mode"], "secondary");
    // With force the operator accepts it.
    let (code, body) = promote_attempt(&b, &a.keys, true);
    assert_eq!(code, 200, "forced promote: {body}");
}

/// A secondary that streamed after its sync is consistent, and says so.
#[test]
fn a_streaming_secondary_reports_itself_consistent() {
    let a = dr_server();
    a.mount_kv2();
    bulk_put(&a, "app/", 0..100, "a");
    enable_primary(&a);
    let b = dr_server();
    enable_secondary(&b, &activation_token(&a, "site-b"));
    wait_converged(&a, &b);
    let st = wait_status(&b, CONVERGE, "consistency", |st| {
        st["consistent"] == json!(true)
    });
    assert!(st["consistent_after_wal"].as_u64().is_some(), "{st}");
}
