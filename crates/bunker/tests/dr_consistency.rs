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

use bunker_testkit as common;

use common::dr::{dr_status, promote_attempt, proxied_pair, wait_status, CONVERGE};
use common::writers::{check_prefix, seed_from_env, Writers};
use serde_json::json;

/// Small, so that a cut pushes B past A's retention, but not so small that a sync's stream
/// start is truncated before B reaches it: truncation passes run every 50 ms, and at 30 entries
/// the writers outran a staged sync's replay again and again (it restarts the sync).
const RETENTION: u64 = 200;

/// The scenario, with the secondary held at failpoint `hold` of a Merkle sync (`journal`
/// false: the primary keeps no key journal) or of a catch-up from the key journal while the
/// primary is killed.
fn primary_killed_during_sync(hold: &str, journal: bool) {
    eprintln!("hold at {hold}");
    let seed = seed_from_env("BUNKER_CONSISTENCY_SEED");
    let (mut a, b, proxy) = proxied_pair(RETENTION, if journal { 100_000 } else { 0 });

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
    writers.wait_for(20);
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
        log.acked_writes(),
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

/// The primary dies after B received the tree and before it fetched anything: B stays at its
/// last consistent point (before the cut).
#[test]
fn primary_killed_at_the_start_of_a_merkle_sync() {
    primary_killed_during_sync("secondary-merkle-sync", false);
}

/// The primary dies while B fetches the values that differ (after the first batch).
#[test]
fn primary_killed_while_a_merkle_sync_fetches() {
    primary_killed_during_sync("secondary-merkle-values-fetched", false);
}

/// The primary dies after B replayed past the bound, before B committed: B commits what it
/// holds, the primary's state at the stage's position.
#[test]
fn primary_killed_before_a_staged_sync_commits() {
    primary_killed_during_sync("secondary-before-stage-commit", false);
}

/// The primary dies while B fetches the values of the keys its journal names (after the
/// first batch): B stays at its last consistent point.
#[test]
fn primary_killed_while_a_journal_catch_up_fetches() {
    primary_killed_during_sync("secondary-journal-values-fetched", true);
}

/// As `primary_killed_before_a_staged_sync_commits`, for a catch-up from the key journal.
#[test]
fn primary_killed_before_a_journal_catch_up_commits() {
    primary_killed_during_sync("secondary-before-stage-commit", true);
}
