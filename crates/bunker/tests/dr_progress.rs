//! Progress of a long sync (issue "Operating Bunker", part 3): `dr/status` reports
//! `sync_progress` while a secondary syncs, and `secondary enable -wait` follows it with the
//! real CLI until the secondary streams WALs.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use common::cli;
use common::dr::{
    activation_token, bulk_put, dr_server, dr_status, enable_primary, wait_converged, CONVERGE,
    SYNC_BATCH_APPLIED,
};
use serde_json::json;

#[test]
fn secondary_enable_wait_shows_the_sync_progress_until_it_streams() {
    let a = dr_server();
    a.mount_kv2();
    bulk_put(&a, "app/", 0..3000, "a");
    enable_primary(&a);
    // The primary's status refresher has counted its keys: the snapshot announces them.
    // (Before the first scan the root is empty and its index 0, which a primary that has
    // recorded nothing yet also has as its last WAL index: wait for a root.)
    let counted = common::poll_until(CONVERGE, || {
        let st = dr_status(&a);
        st["merkle_root"].as_str().is_some_and(|r| !r.is_empty())
            && st["merkle_root_wal"] == st["last_wal"]
    });
    assert!(counted);

    let s = dr_server();
    let (code, _, err) = cli(&s, &["login", &s.root_token]);
    assert_eq!(code, 0, "{err}");
    let token = activation_token(&a, "site-b");
    s.hold_at(SYNC_BATCH_APPLIED);
    // The CLI runs in the background with its output in a file, so the test can see each
    // line it prints while the sync is held.
    let out_path = s.dir().join("wait.out");
    let mut waiting = std::process::Command::new(env!("CARGO_BIN_EXE_bunker"))
        .args(["operator", "replication", "secondary", "enable"])
        .arg(format!("-token={token}"))
        .arg("-wait")
        .env("VAULT_ADDR", s.addr())
        .env("HOME", s.dir().join("cli-home"))
        .env_remove("VAULT_TOKEN")
        .env_remove("VAULT_FORMAT")
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .spawn()
        .unwrap();
    // Held after the first batch of the snapshot: the status shows how far it got...
    s.wait_held(SYNC_BATCH_APPLIED, CONVERGE);
    let st = dr_status(&s);
    let progress = &st["sync_progress"];
    assert_eq!(progress["kind"], json!("snapshot"), "{st}");
    assert!(progress["keys_fetched"].as_u64().unwrap() > 0, "{st}");
    assert!(progress["bytes_fetched"].as_u64().unwrap() > 0, "{st}");
    let total = progress["units_total"]
        .as_u64()
        .unwrap_or_else(|| panic!("no total: {st}"));
    assert!(total >= 3000, "the primary's key count: {st}");
    assert!(progress["percent"].as_u64().unwrap() < 100, "{st}");
    // ...and so does the waiting CLI.
    let read = || std::fs::read_to_string(&out_path).unwrap_or_default();
    // (A line from before the first batch shows 0 keys and no ETA: wait for the held one.)
    let shown = common::poll_until(CONVERGE, || read().contains("%, ETA "));
    assert!(shown, "{}", read());
    s.release(SYNC_BATCH_APPLIED);
    let code = waiting.wait().unwrap();
    let out = read();
    assert!(code.success(), "{out}");
    assert!(out.contains("%, ETA "), "{out}");
    assert!(
        out.contains("Success! The secondary streams WALs from the primary"),
        "{out}"
    );
    // Streaming: no sync in progress any more.
    let mut s = s;
    common::dr::adopt_credentials(&mut s, &a);
    wait_converged(&a, &s);
    assert!(dr_status(&s)["sync_progress"].is_null());
}
