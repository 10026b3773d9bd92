//! The replication dashboard at `/ui/`: its files and security headers over plain HTTP, then
//! the page itself in headless Chromium against a real DR pair, checking that what it shows is
//! what `sys/replication/dr/status` says.
//!
//! Chromium is Debian's `chromium` (installed by `.ci/run` and `./scripts/test` as root); the
//! browser test fails, with a message saying so, when it is missing. Set
//! `BUNKER_UPDATE_SCREENSHOT=1` to refresh `docs/dashboard.png` from the test's screenshot.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use bunker_testkit as common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::dr::{
    activation_token, adopt_credentials, dr_server, dr_status, enable_primary, enable_secondary,
    wait_converged,
};
use common::{poll_until, TestServer};
use serde_json::json;

const BROWSER_DEADLINE: Duration = Duration::from_secs(90);
/// How long one Chromium run may take before it is killed.
const CHROMIUM_RUN: Duration = Duration::from_secs(60);

fn no_redirect_client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

#[test]
fn ui_files_carry_security_headers_and_the_api_is_unchanged() {
    let s = TestServer::dev();
    let http = no_redirect_client();
    let get = |path: &str| http.get(format!("{}{path}", s.addr())).send().unwrap();

    let r = get("/ui");
    assert_eq!(r.status(), 301);
    assert_eq!(r.headers()["location"], "/ui/");

    for (path, content_type) in [
        ("/ui/", "text/html; charset=utf-8"),
        ("/ui/app.js", "text/javascript; charset=utf-8"),
        ("/ui/style.css", "text/css; charset=utf-8"),
    ] {
        let r = get(path);
        assert_eq!(r.status(), 200, "{path}");
        let h = r.headers().clone();
        assert_eq!(h["content-type"], content_type, "{path}");
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(csp.starts_with("default-src 'self'"), "{path}: {csp}");
        assert!(csp.contains("script-src 'self'"), "{path}: {csp}");
        assert!(!csp.contains("unsafe-inline"), "{path}: {csp}");
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(h["x-frame-options"], "DENY", "{path}");
        assert_eq!(h["cache-control"], "no-store", "{path}");
        let body = r.text().unwrap();
        assert!(!body.is_empty(), "{path}");
        if path == "/ui/" {
            // No inline script: the only script is the external file the CSP allows.
            assert!(body.contains("<script src=\"/ui/app.js\""), "{body}");
            assert_eq!(body.matches("<script").count(), 1, "{body}");
            assert!(!body.contains("http://") && !body.contains("https://"));
        }
    }
    let r = get("/ui/missing.js");
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");

    // Everything else answers as before: the API under /v1/, JSON 404 elsewhere.
    let (code, body) = s.get("sys/seal-status", None);
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["sealed"], json!(false));
    let r = get("/uix");
    assert_eq!(r.status(), 404);
    let body: serde_json::Value = r.json().unwrap();
    assert_eq!(body, json!({"errors": []}));
    let (code, _) = s.get("sys/mounts", None);
    assert_eq!(code, 403, "the API still wants a token");
}

/// Debian's Chromium, or a failure that says how to get it.
fn chromium() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for name in ["chromium", "chromium-browser"] {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "chromium is not installed: the dashboard test drives the page in headless Chromium; \
         install Debian's package (apt-get install chromium), as .ci/run and ./scripts/test do as root"
    );
}

/// Run headless Chromium on `url` with `extra` arguments; its stdout. Killed after
/// [`CHROMIUM_RUN`].
fn run_chromium(url: &str, extra: &[&str]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = tempfile::NamedTempFile::new().unwrap();
    let mut child = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--hide-scrollbars",
            // Run the page's timers and fetches for this much (virtual) time before dumping.
            "--virtual-time-budget=8000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(out.reopen().unwrap())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    let deadline = Instant::now() + CHROMIUM_RUN;
    let finished = poll_until(CHROMIUM_RUN, || {
        child.try_wait().unwrap().is_some() || Instant::now() > deadline
    });
    if !finished || child.try_wait().unwrap().is_none() {
        let _ = child.kill();
        let _ = child.wait();
        panic!("chromium did not finish within {CHROMIUM_RUN:?} on {url}");
    }
    std::fs::read_to_string(out.path()).unwrap()
}

/// The text of the first element carrying `data-field="{field}"` after `from` in `dom`.
fn field(dom: &str, from: &str, field: &str) -> Option<String> {
    let start = dom.find(from)?;
    let rest = &dom[start..];
    let attr = format!("data-field=\"{field}\"");
    let at = rest.find(&attr)?;
    let rest = &rest[at..];
    let open_end = rest.find('>')? + 1;
    let close = rest[open_end..].find("</")?;
    Some(rest[open_end..open_end + close].to_owned())
}

/// Dump the page at `url` until `ready` holds for its DOM; the last DOM.
fn dom_when(url: &str, what: &str, ready: impl Fn(&str) -> bool) -> String {
    let mut dom = String::new();
    let ok = poll_until(BROWSER_DEADLINE, || {
        dom = run_chromium(url, &["--dump-dom"]);
        ready(&dom)
    });
    assert!(ok, "the dashboard never showed {what}; last DOM:\n{dom}");
    dom
}

fn ui_url(s: &TestServer, token: &str) -> String {
    format!("{}/ui/#token={token}", s.addr())
}

#[test]
fn dashboard_in_chromium_shows_the_dr_pair_as_the_api_does() {
    chromium();
    let p = dr_server();
    p.mount_kv2();
    let mut s = dr_server();
    enable_primary(&p);
    let token = activation_token(&p, "site-b");
    enable_secondary(&s, &token);
    adopt_credentials(&mut s, &p);
    for i in 0..20 {
        p.kv_put(&format!("dash/{i}"), json!({ "n": i.to_string() }));
    }
    wait_converged(&p, &s);
    let ps = dr_status(&p);
    let ss = dr_status(&s);
    let root = p.root_token.clone();

    // The primary's page: this cluster, and the secondary's row.
    let dom = dom_when(&ui_url(&p, &root), "the secondary's row", |dom| {
        field(dom, "data-secondary=\"site-b\"", "connection_status").as_deref() == Some("connected")
    });
    let row = "data-secondary=\"site-b\"";
    assert_eq!(field(&dom, row, "node_id").as_deref(), Some("site-b"));
    assert_eq!(
        field(&dom, row, "connection_status").as_deref(),
        ps["secondaries"][0]["connection_status"].as_str()
    );
    assert_eq!(
        field(&dom, row, "last_acked_wal"),
        Some(ss["last_remote_wal"].to_string()),
        "primary {ps}\nsecondary {ss}"
    );
    assert_eq!(
        field(&dom, row, "last_acked_wal"),
        Some(ps["secondaries"][0]["last_acked_wal"].to_string())
    );
    assert_eq!(field(&dom, "id=\"dr\"", "mode").as_deref(), Some("primary"));
    assert_eq!(
        field(&dom, "id=\"dr\"", "cluster_id").as_deref(),
        ps["cluster_id"].as_str()
    );
    assert_eq!(
        field(&dom, "id=\"dr\"", "last_wal"),
        Some(ps["last_wal"].to_string())
    );
    assert_eq!(
        field(&dom, "id=\"seal\"", "sealed").as_deref(),
        Some("unsealed")
    );
    // The token was moved out of the address into sessionStorage, and is nowhere in the page.
    assert!(!dom.contains(&root), "the token must not be in the DOM");

    // The secondary's page: its id, its primary connection and its WAL index.
    let sdom = dom_when(&ui_url(&s, &root), "the secondary's status", |dom| {
        field(dom, "id=\"primary\"", "connection_state").as_deref() == Some("ready")
    });
    assert_eq!(
        field(&sdom, "id=\"dr\"", "secondary_id").as_deref(),
        Some("site-b")
    );
    assert_eq!(
        field(&sdom, "id=\"dr\"", "last_remote_wal"),
        Some(ss["last_remote_wal"].to_string())
    );
    assert_eq!(
        field(&sdom, "id=\"sync\"", "last_keys_fetched"),
        Some(ss["sync"]["last_merkle_sync"]["keys_fetched"].to_string())
    );

    // Without a token the page asks for one and shows no figures.
    let signed_out = run_chromium(&format!("{}/ui/", p.addr()), &["--dump-dom"]);
    assert!(
        signed_out.contains("<form id=\"sign-in\" class=\"card narrow\">"),
        "the sign-in form must show: {signed_out}"
    );
    assert!(
        signed_out.contains("<div id=\"dashboard\" hidden=\"\">"),
        "{signed_out}"
    );
    assert_eq!(field(&signed_out, "id=\"dr\"", "mode"), None);

    // A screenshot of the primary's page, as the README shows it.
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("dashboard.png");
    run_chromium(
        &ui_url(&p, &root),
        &[
            &format!("--screenshot={}", png.display()),
            "--window-size=1280,900",
        ],
    );
    let bytes = std::fs::read(&png).expect("chromium wrote no screenshot");
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert!(bytes.len() > 10_000, "screenshot of {} bytes", bytes.len());
    if std::env::var_os("BUNKER_UPDATE_SCREENSHOT").is_some() {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/dashboard.png");
        std::fs::copy(&png, docs).unwrap();
    }
}
