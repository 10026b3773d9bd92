//! What an unauthenticated client can hold on the API listener: connections that never finish
//! their headers are closed after `http_read_header_timeout`, connections over
//! `max_connections` are closed at once, and a large anonymous body costs neither unbounded
//! memory nor audit log space.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use bunker_testkit as common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{poll_until, ServerOptions, TestServer};
use reqwest::Method;
use serde_json::{json, Value};

/// How long a test waits for the server to close a connection it should close.
const CLOSE_DEADLINE: Duration = Duration::from_secs(20);

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("read timeout");
    s
}

/// Read (discarding any bytes, such as a 408 response) until the peer closes the
/// connection; false if it is still open at the deadline.
fn wait_closed(stream: &mut TcpStream, deadline: Instant) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return true, // reset by the server
        }
        if Instant::now() > deadline {
            return false;
        }
    }
}

/// True if the peer closes the connection before the deadline without sending anything.
fn closed_without_response(stream: &mut TcpStream, deadline: Instant) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => return false,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return true,
        }
        if Instant::now() > deadline {
            return false;
        }
    }
}

/// True while the connection is open: a short read times out instead of seeing EOF.
fn still_open(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    match stream.read(&mut buf) {
        Err(e) => matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        // EOF, or bytes an unanswered request should not have produced.
        Ok(_read) => false,
    }
}

#[test]
fn partial_headers_are_closed_after_the_header_timeout() {
    let s = TestServer::with_config(ServerOptions {
        listener_extra: "  http_read_header_timeout = \"1s\"".into(),
        ..Default::default()
    });
    let mut conns: Vec<TcpStream> = (0..50)
        .map(|_| {
            let mut c = connect(s.port());
            c.write_all(b"GET /v1/sys/health HTTP/1.1\r\nHost: bunker\r\nX-Slow: ")
                .expect("write partial head");
            c
        })
        .collect();
    let deadline = Instant::now() + CLOSE_DEADLINE;
    for (i, c) in conns.iter_mut().enumerate() {
        assert!(
            wait_closed(c, deadline),
            "connection {i} with an unfinished header still open after {CLOSE_DEADLINE:?}"
        );
    }
    let (st, b) = s.get("sys/health", None);
    assert!(st == 501 || st == 200, "server still answers: {st} {b}");
}

/// A request whose body never finishes: it stays in flight (holding its connection) until
/// `http_read_timeout`, and is never idle.
fn busy_connection(port: u16) -> TcpStream {
    let mut c = connect(port);
    c.write_all(
        b"PUT /v1/sys/unseal HTTP/1.1\r\nHost: bunker\r\nContent-Type: application/json\r\n\
          Content-Length: 100\r\n\r\n{\"key\":",
    )
    .expect("write head");
    c
}

#[test]
fn connections_over_the_cap_are_closed_at_once() {
    let s = TestServer::with_config(ServerOptions {
        listener_extra: "  max_connections = 5\n  http_read_header_timeout = \"5s\"\n  \
                         http_idle_timeout = \"3s\"\n  http_read_timeout = \"60s\""
            .into(),
        ..Default::default()
    });
    // The harness's own pooled connection is closed by the idle timeout; until then it may
    // hold one of the five slots, so try again until five busy connections fit.
    let mut held = Vec::new();
    let fitted = poll_until(CLOSE_DEADLINE, || {
        held = (0..5)
            .map(|_| busy_connection(s.port()))
            .collect::<Vec<_>>();
        // Over the cap: closed without a response, well before any timeout (3 s) could
        // close it. Without a cap this never holds and the test fails at the deadline.
        let mut sixth = connect(s.port());
        if !closed_without_response(&mut sixth, Instant::now() + Duration::from_secs(2)) {
            return false;
        }
        let open = held.iter_mut().all(still_open);
        if !open {
            held.clear();
        }
        open
    });
    assert!(
        fitted,
        "a 6th connection must be closed at once while 5 stay open (max_connections = 5)"
    );
    assert!(
        held.iter_mut().all(still_open),
        "the five connections under the cap must stay open"
    );
    drop(held);
    // Their slots come back: the server answers again.
    let answered = poll_until(CLOSE_DEADLINE, || {
        s.client()
            .get(s.url("sys/health"))
            .timeout(Duration::from_secs(2))
            .send()
            .is_ok()
    });
    assert!(
        answered,
        "server must answer once the held connections close"
    );
}

fn audit_records(path: &std::path::Path) -> Vec<(usize, Value)> {
    let text = std::fs::read_to_string(path).expect("read audit log");
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            (
                l.len(),
                serde_json::from_str(l).expect("audit line is JSON"),
            )
        })
        .collect()
}

#[test]
fn anonymous_large_body_is_audited_without_its_body() {
    let s = TestServer::dev();
    let log = s.enable_file_audit();

    // Keys and numbers are logged as they are (only strings are HMAC'd), so a body made of
    // them is what could fill the log. About 2 MiB, well within the node budget.
    let key = "k".repeat(1 << 20);
    let numbers: Vec<u64> = vec![1_000_000_000_000_000; 50_000];
    let body = serde_json::to_vec(&json!({ key: numbers })).unwrap();
    let body_len = body.len();
    let (st, _) = s.raw(Method::PUT, "secret/data/anonymous-big", None, body);
    assert_eq!(st, 403, "an anonymous write is refused");

    let records: Vec<(usize, Value)> = audit_records(&log)
        .into_iter()
        .filter(|(_, r)| r["request"]["path"] == json!("secret/data/anonymous-big"))
        .collect();
    assert_eq!(records.len(), 2, "request and response are audited");
    for (len, record) in &records {
        assert_eq!(
            record["request"]["data"],
            Value::Null,
            "body logged: {len} bytes"
        );
        assert!(
            *len < 4096,
            "audit line of {len} bytes for a refused {body_len}-byte body"
        );
    }
    assert_eq!(records[1].1["error"], json!("permission denied"));
}

/// Peak resident memory of a process (kB), from /proc.
fn peak_rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

#[test]
fn anonymous_dense_body_costs_bounded_memory() {
    let s = TestServer::dev();
    let Some(before) = peak_rss_kb(s.pid().expect("pid")) else {
        eprintln!("no /proc VmHWM on this system; skipping");
        return;
    };
    // 32 MiB less a little of "[1,1,1,...]": each element is two bytes of text but a whole
    // JSON value in memory.
    let n = (32 * 1024 * 1024 - 1024) / 2;
    let mut body = Vec::with_capacity(n * 2 + 16);
    body.extend_from_slice(b"{\"a\":[");
    for _ in 0..n - 1 {
        body.extend_from_slice(b"1,");
    }
    body.extend_from_slice(b"1]}");
    let body_kb = (body.len() / 1024) as u64;
    let (st, b) = s.raw(Method::PUT, "secret/data/dense", None, body);
    assert!(st == 400 || st == 403, "anonymous dense body: {st} {b}");
    let after = peak_rss_kb(s.pid().expect("pid")).expect("VmHWM");
    let growth = after.saturating_sub(before);
    assert!(
        growth < 8 * body_kb,
        "peak memory grew by {growth} kB for a {body_kb} kB body"
    );
    s.assert_healthy();
}

/// Send one whole request on a kept-alive connection; the response is left unread.
fn keep_alive_request(port: u16) -> TcpStream {
    let mut c = connect(port);
    c.write_all(b"GET /v1/sys/health HTTP/1.1\r\nHost: bunker\r\n\r\n")
        .expect("write request");
    c
}

#[test]
fn idle_kept_alive_connections_are_closed_after_the_idle_timeout() {
    let s = TestServer::with_config(ServerOptions {
        listener_extra: "  http_read_header_timeout = \"60s\"\n  http_idle_timeout = \"1s\"".into(),
        ..Default::default()
    });
    let mut c = keep_alive_request(s.port());
    assert!(
        wait_closed(&mut c, Instant::now() + CLOSE_DEADLINE),
        "an idle kept-alive connection still open after {CLOSE_DEADLINE:?}"
    );
}
