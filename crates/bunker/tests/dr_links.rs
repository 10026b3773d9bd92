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
    proxy.restore();
    wait_converged(&p, &s);
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
