//! Progress of a long sync (issue "Operating Bunker", part 3): `dr/status` reports
//! `sync_progress` while a secondary syncs, and `secondary enable -wait` follows it with the
//! real CLI until the secondary streams WALs.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use bunker_testkit as common;

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
    let enable = ["operator", "replication", "secondary", "enable"];
    let token_flag = format!("-token={token}");
    let args = [&enable[..], &[token_flag.as_str(), "-wait"]].concat();
    let mut waiting = common::cli_background(&s, &args, &out_path, &s.dir().join("wait.err"));
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

#[test]
fn reindex_shows_its_progress_then_its_report() {
    let a = dr_server();
    a.mount_kv2();
    bulk_put(&a, "app/", 0..500, "a");
    enable_primary(&a);
    let (code, _, err) = cli(&a, &["login", &a.root_token]);
    assert_eq!(code, 0, "{err}");
    a.hold_at("reindex-before-scan");
    let (out_path, err_path) = (a.dir().join("reindex.out"), a.dir().join("reindex.err"));
    let args = ["operator", "replication", "reindex"];
    let mut running = common::cli_background(&a, &args, &out_path, &err_path);
    // Held with the reindex begun: the status says so, and the CLI shows it on stderr.
    a.wait_held("reindex-before-scan", CONVERGE);
    let st = dr_status(&a);
    assert_eq!(st["reindex_in_progress"], json!(true), "{st}");
    let read = |path: &std::path::Path| std::fs::read_to_string(path).unwrap_or_default();
    let shown = common::poll_until(CONVERGE, || read(&err_path).contains("reindex: 0 of "));
    assert!(shown, "{}", read(&err_path));
    a.release("reindex-before-scan");
    let code = running.wait().unwrap();
    let (out, err) = (read(&out_path), read(&err_path));
    assert!(code.success(), "{out}{err}");
    // The report, as a table: the recomputed root is the one status shows.
    let root = dr_status(&a)["merkle_root"].as_str().unwrap().to_owned();
    assert!(out.contains(&root), "{out}");
    assert!(out.contains("corrupted_merkle_tree"), "{out}");
    assert_eq!(dr_status(&a)["reindex_in_progress"], json!(false));

    // merkle-check answers the same way, and changes nothing.
    let (code, out, err) = cli(&a, &["operator", "replication", "merkle-check"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&root), "{out}");
}
