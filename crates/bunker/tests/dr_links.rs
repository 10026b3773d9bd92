//! DR over a faulty link: a TCP fault proxy between the clusters cuts or stalls the stream at
//! the moment the test chooses, and the secondary must notice, say so, and resume.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use bunker_testkit as common;

use common::dr::{
    activation_token, cluster_port, dr_server, dr_status, enable_primary_at, enable_secondary,
    merkle_syncs, wait_converged, wait_status, CONVERGE,
};
use common::proxy::FaultProxy;
use serde_json::json;

fn proxied_pair() -> (common::TestServer, common::TestServer, FaultProxy) {
    let p = dr_server();
    p.mount_kv2();
    let proxy = FaultProxy::start(
        format!("127.0.0.1:{}", cluster_port(&p))
            .parse()
            .expect("addr"),
    );
    enable_primary_at(&p, &proxy.addr());
    let s = dr_server();
    enable_secondary(&s, &activation_token(&p, "site-b"));
    for i in 0..50 {
        p.kv_put(&format!("before/{i}"), json!({ "n": i.to_string() }));
    }
    wait_converged(&p, &s);
    assert!(
        proxy.accepted() >= 1,
        "the secondary did not go through the proxy"
    );
    (p, s, proxy)
}

/// The primary's view of its one secondary: `replication_primary_canary_age_ms` (a string of
/// digits, as Vault sends it).
fn canary_age_ms(primary_status: &serde_json::Value) -> u64 {
    let age = &primary_status["secondaries"][0]["replication_primary_canary_age_ms"];
    age.as_str()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no canary age in {primary_status}"))
}

/// A cut link: the secondary reports it at once, and once the link is back it resumes from
/// its WAL position (no new Merkle sync) with what was written meanwhile.
#[test]
fn a_cut_link_resumes_from_the_wal() {
    let (p, s, proxy) = proxied_pair();
    let syncs = merkle_syncs(&dr_status(&s));
    proxy.cut();
    wait_status(&s, CONVERGE, "the cut to be noticed", |st| {
        st["connection_state"] != "ready"
    });
    for i in 0..100 {
        p.kv_put(&format!("during-cut/{i}"), json!({ "n": i.to_string() }));
    }
    let behind = dr_status(&s)["last_remote_wal"].as_u64().unwrap();
    assert!(behind < dr_status(&p)["last_wal"].as_u64().unwrap());
    // The primary tells how stale the cut-off secondary is, and it grows while the link is
    // down (Vault's replication_primary_canary_age_ms).
    wait_status(&p, CONVERGE, "the secondary's data to age", |st| {
        canary_age_ms(st) >= 200
    });
    proxy.restore();
    wait_converged(&p, &s);
    wait_status(&p, CONVERGE, "the secondary to be current again", |st| {
        canary_age_ms(st) == 0
    });
    let replay_lag = dr_status(&p)["secondaries"][0]["replay_lag_ms"].clone();
    assert!(
        replay_lag.as_f64().is_some_and(|ms| ms >= 0.0),
        "a replay lag was measured: {replay_lag}"
    );
    let st = dr_status(&s);
    assert_eq!(
        merkle_syncs(&st),
        syncs,
        "resumed by a Merkle sync, not the WAL: {st}"
    );
}

/// A stalled link (bytes stop, the connection stays open): the secondary gives up on the
/// silent primary instead of showing a ready connection forever, and recovers once the link
/// passes bytes again.
#[test]
fn a_stalled_link_is_noticed_and_recovers() {
    let (p, s, proxy) = proxied_pair();
    proxy.stall();
    p.kv_put("during-stall", json!({ "n": "1" }));
    wait_status(&s, CONVERGE, "the stall to be noticed", |st| {
        st["connection_state"] != "ready"
    });
    proxy.restore();
    wait_converged(&p, &s);
    let (code, _) = s.get("sys/replication/dr/status", None);
    assert_eq!(code, 200);
}

/// The secondary gives up on a hung connection and reconnects while the primary still holds
/// the old one (its end of it stays open and silent): the new session replaces the old, the
/// stream goes on, and the primary shows the secondary connected. (That a replaced session,
/// ending, leaves the new one's status alone is pinned by a unit test in the manager: here a
/// later reconnection can hide it.)
#[test]
fn a_reconnect_over_a_hung_connection_shows_the_secondary_connected() {
    let (p, s, proxy) = proxied_pair();
    let connections = proxy.accepted();
    proxy.stall_open();
    p.kv_put("during-hang", json!({ "n": "1" }));
    // The secondary notices the silence (10 s) and connects again; only new connections pass.
    wait_converged(&p, &s);
    assert!(proxy.accepted() > connections, "the secondary reconnected");
    // One more round trip, so the replaced session has long ended.
    p.kv_put("after-reconnect", json!({ "n": "2" }));
    wait_converged(&p, &s);
    let status = dr_status(&p);
    assert_eq!(
        status["secondaries"][0]["connection_status"], "connected",
        "{status}"
    );
    proxy.restore();
}
