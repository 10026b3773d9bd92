//! Graceful shutdown: SIGTERM stops the server cleanly, in-flight work finishes, and the data
//! is there after a restart.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use bunker_testkit as common;

use std::time::Duration;

use common::TestServer;
use serde_json::json;

#[test]
fn sigterm_exits_cleanly_and_keeps_acknowledged_writes() {
    let mut s = TestServer::initialized();
    s.mount_kv2();
    for i in 0..20 {
        s.kv_put(&format!("before-term/{i}"), json!({ "i": i.to_string() }));
    }
    let status = s
        .terminate(Duration::from_secs(20))
        .expect("the server did not exit within 20 s of SIGTERM");
    assert!(status.success(), "exit status after SIGTERM: {status}");

    s.restart();
    s.unseal();
    for i in 0..20 {
        let (code, data) = s.kv_get(&format!("before-term/{i}"));
        assert_eq!(code, 200);
        assert_eq!(data["i"], json!(i.to_string()));
    }
}
