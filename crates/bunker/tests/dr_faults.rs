//! Seeded random fault schedules against a primary and its DR secondary under load, checking
//! the DR invariants after every fault, and kill -9 loops. Short by default (CI); the long
//! modes run from `scripts/dr-faults` (see docs/reliability.md).
//!
//! - `BUNKER_FAULT_SEED`: replay one schedule (each run prints its seed).
//! - `BUNKER_FAULT_ROUNDS`: faults injected per schedule (default 8).
//! - `BUNKER_KILL_CYCLES`: kill -9 cycles of the kill loop (default 6).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use bunker_testkit as common;

use std::time::Instant;

use common::dr::{
    dr_status, promote_attempt, proxied_pair, signal, wait_converged, wait_status, wait_stopped,
    CONVERGE,
};
use common::proxy::FaultProxy;
use common::writers::{
    check_acknowledged_on, check_no_torn_secret, check_prefix, seed_from_env, Writers,
};
use common::TestServer;
use rand::{Rng, SeedableRng};
use serde_json::json;

/// Small, so that long cuts push the secondary past retention and into Merkle syncs.
const RETENTION: u64 = 200;
/// Key journal retention of the primary, when the schedule gives it one (half of the seeds):
/// far beyond what a fault lets the secondary miss, so a secondary the WAL no longer reaches
/// catches up from the journal; without one, by Merkle diff.
const JOURNAL: u64 = 1_000_000;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Cut the link for a while (the secondary resumes from the WAL).
    Cut,
    /// Cut it until the primary truncated past the secondary (a Merkle sync follows).
    CutPastRetention,
    /// The link passes nothing and closes nothing.
    Stall,
    Kill9Primary,
    Kill9Secondary,
    StopSecondary,
    StopPrimary,
    /// Kill the secondary in the middle of a Merkle sync.
    Kill9SecondaryMidSync,
}

const FAULTS: [Fault; 8] = [
    Fault::Cut,
    Fault::CutPastRetention,
    Fault::Stall,
    Fault::Kill9Primary,
    Fault::Kill9Secondary,
    Fault::StopSecondary,
    Fault::StopPrimary,
    Fault::Kill9SecondaryMidSync,
];

/// Restart the primary after a kill: sealed, it is unsealed with its shares.
fn restart_primary(a: &mut TestServer) {
    a.restart();
    a.unseal();
}

/// Injects `fault` into the pair (`journal`: its primary keeps a key journal).
fn inject(
    fault: Fault,
    journal: bool,
    rng: &mut rand::rngs::StdRng,
    a: &mut TestServer,
    b: &mut TestServer,
    proxy: &FaultProxy,
    writers: &Writers,
) {
    let writes = rng.gen_range(5..60);
    match fault {
        Fault::Cut => {
            proxy.cut();
            writers.wait_for(writes);
            proxy.restore();
        }
        Fault::CutPastRetention => {
            proxy.cut();
            let behind = dr_status(b)["last_remote_wal"].as_u64().unwrap_or(0);
            wait_status(a, CONVERGE, "the primary past retention", |st| {
                st["last_wal"].as_u64() > Some(behind + 2 * RETENTION)
            });
            common::dr::wait_wal_truncated(a);
            proxy.restore();
        }
        Fault::Stall => {
            proxy.stall();
            writers.wait_for(writes);
            proxy.restore();
        }
        Fault::Kill9Primary => {
            a.kill9();
            restart_primary(a);
        }
        Fault::Kill9Secondary => {
            b.kill9();
            writers.wait_for(writes);
            b.restart();
        }
        Fault::StopSecondary => {
            signal(b, "STOP");
            wait_stopped(b);
            writers.wait_for(writes);
            signal(b, "CONT");
        }
        Fault::StopPrimary => {
            // Writers block on it, and the secondary sees a silent primary, until it resumes.
            signal(a, "STOP");
            wait_stopped(a);
            signal(a, "CONT");
        }
        Fault::Kill9SecondaryMidSync => {
            // The sync is a catch-up from the key journal if the primary keeps one.
            let hold = if journal {
                "secondary-journal-values-fetched"
            } else {
                "secondary-merkle-values-fetched"
            };
            proxy.cut();
            let behind = dr_status(b)["last_remote_wal"].as_u64().unwrap_or(0);
            wait_status(a, CONVERGE, "the primary past retention", |st| {
                st["last_wal"].as_u64() > Some(behind + 2 * RETENTION)
            });
            common::dr::wait_wal_truncated(a);
            b.hold_at(hold);
            proxy.restore();
            b.wait_held(hold, CONVERGE);
            b.kill9();
            b.release(hold);
            b.restart();
        }
    }
}

/// After a fault has healed: the secondary converges to the primary (same WAL index and
/// Merkle root: the same state), is consistent, and the primary lost no acknowledged write.
fn check_round(a: &TestServer, b: &TestServer, writers: &Writers) {
    let paused = writers.pause();
    let log = writers.log();
    check_acknowledged_on(a, &log);
    wait_converged(a, b);
    let st = dr_status(b);
    assert_eq!(
        st["consistent"],
        json!(true),
        "converged but not consistent: {st}"
    );
    drop(paused);
}

/// A seeded schedule of faults under load, the invariants after each, and a final kill -9 of
/// the primary with a promotion of the secondary without force.
#[test]
fn seeded_fault_schedule_keeps_the_secondary_a_consistent_prefix() {
    let seed = seed_from_env("BUNKER_FAULT_SEED");
    let rounds = env_u64("BUNKER_FAULT_ROUNDS", 8);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let journal = rng.gen_bool(0.5);
    eprintln!("the primary keeps a key journal: {journal}");
    let (mut a, mut b, proxy) = proxied_pair(RETENTION, if journal { JOURNAL } else { 0 });
    let writers = Writers::start(&a, seed);
    let started = Instant::now();
    let mut injected = std::collections::BTreeMap::<String, u64>::new();
    for round in 0..rounds {
        let fault = FAULTS[rng.gen_range(0..FAULTS.len())];
        eprintln!("round {round}: {fault:?}");
        inject(fault, journal, &mut rng, &mut a, &mut b, &proxy, &writers);
        check_round(&a, &b, &writers);
        *injected.entry(format!("{fault:?}")).or_default() += 1;
    }
    // The site is lost under load; the secondary is promoted as it is.
    writers.wait_for(20);
    a.kill9();
    let log = writers.stop();
    let st = wait_status(&b, CONVERGE, "the lost primary to be noticed", |st| {
        st["connection_state"] != "ready" && st["state"] == "connecting"
    });
    assert_eq!(st["consistent"], json!(true), "{st}");
    let index = st["last_remote_wal"].as_u64().unwrap();
    let (code, body) = promote_attempt(&b, &a.keys, false);
    assert_eq!(code, 200, "promote without force: {body}");
    assert_eq!(body["data"]["wal_index"], json!(index), "{body}");
    check_prefix(&b, index, &log);
    eprintln!(
        "seed {seed}: {rounds} faults {injected:?} in {:?}; {} acknowledged counter writes \
         ({} retried requests), {} hot operations; promoted at WAL {index}; 0 anomalies",
        started.elapsed(),
        log.acked_writes(),
        log.retries,
        log.hot_ops
    );
}

/// kill -9 of the primary or the secondary, cycle after cycle, under load: no acknowledged
/// write is ever lost on the primary, and the secondary converges after each cycle.
#[test]
fn kill9_loop_loses_no_acknowledged_write() {
    let seed = seed_from_env("BUNKER_KILL_SEED");
    let cycles = env_u64("BUNKER_KILL_CYCLES", 6);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (mut a, mut b, _proxy) = proxied_pair(RETENTION, JOURNAL);
    let writers = Writers::start(&a, seed);
    let started = Instant::now();
    let (mut primary_kills, mut secondary_kills) = (0u64, 0u64);
    for _ in 0..cycles {
        writers.wait_for(rng.gen_range(1..40));
        if rng.gen_bool(0.5) {
            a.kill9();
            restart_primary(&mut a);
            primary_kills += 1;
        } else {
            b.kill9();
            b.restart();
            secondary_kills += 1;
        }
        check_round(&a, &b, &writers);
    }
    let log = writers.stop();
    let checked = check_acknowledged_on(&a, &log);
    check_no_torn_secret(&a);
    eprintln!(
        "seed {seed}: {primary_kills} primary and {secondary_kills} secondary kill -9 cycles in \
         {:?}; {checked} acknowledged writes, 0 lost",
        started.elapsed()
    );
}
