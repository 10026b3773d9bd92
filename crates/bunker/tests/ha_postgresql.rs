//! High availability on PostgreSQL (issue "High availability inside a cluster, on PostgreSQL"):
//! several real `bunker server` processes on one real PostgreSQL, one active. Failover after
//! kill -9, step-down and graceful shutdown; standbys' health, leader and 307 answers; request
//! forwarding from standbys over the cluster port; and the fence: a node that missed its
//! renewals while it still believes it is active cannot commit, and a paused node that wakes
//! up steps down.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use bunker_testkit as common;

use std::process::Command;
use std::time::Duration;

use common::dr::{
    activation_token, adopt_credentials, dr_status, enable_primary, enable_secondary,
    promote_with_keys, wait_converged, ALLOW_HTTP_ACTIVATION,
};
use common::postgres::Postgres;
use common::{free_port, poll_until, ServerOptions, TestServer};
use serde_json::{json, Value};

/// Short, so failovers in the tests take seconds; the server refuses less than 2 s.
const LOCK_TTL_SECS: u64 = 3;
/// How long a takeover may take: the TTL, plus generous room for a loaded CI machine.
const TAKEOVER: Duration = Duration::from_secs(LOCK_TTL_SECS + 20);

fn node(pg: &Postgres) -> TestServer {
    node_with(pg, String::new())
}

/// A node with a cluster port (DR) when `listener_extra` sets one.
fn node_with(pg: &Postgres, listener_extra: String) -> TestServer {
    TestServer::with_config(ServerOptions {
        listener_extra,
        config_extra: ALLOW_HTTP_ACTIVATION.to_owned(),
        storage: format!(
            "storage \"postgresql\" {{\n  connection_url = \"{}\"\n  table = \"bunker_kv\"\n  \
             ha_enabled = \"true\"\n  ha_table = \"bunker_ha_locks\"\n  lock_ttl = \"{LOCK_TTL_SECS}s\"\n}}",
            pg.url()
        ),
        ..Default::default()
    })
}

fn health(s: &TestServer) -> (u16, Value) {
    s.get("sys/health", None)
}

fn wait_health(s: &TestServer, code: u16) {
    let ok = poll_until(TAKEOVER, || health(s).0 == code);
    if !ok {
        s.dump_logs();
    }
    assert!(
        ok,
        "{} never answered sys/health {code}: {:?}",
        s.addr(),
        health(s)
    );
}

/// Three nodes on one database: the first initialised and active, the others unsealed with
/// its key shares and standing by.
fn cluster(pg: &Postgres, n: usize) -> Vec<TestServer> {
    start_cluster((0..n).map(|_| node(pg)).collect())
}

fn start_cluster(mut nodes: Vec<TestServer>) -> Vec<TestServer> {
    nodes[0].init_unseal(5, 3);
    wait_health(&nodes[0], 200);
    let (keys, root) = (nodes[0].keys.clone(), nodes[0].root_token.clone());
    for s in nodes.iter_mut().skip(1) {
        s.keys = keys.clone();
        s.root_token = root.clone();
        s.unseal();
        wait_health(s, 429);
    }
    nodes
}

fn signal(s: &TestServer, sig: &str) {
    let pid = s.pid().expect("running").to_string();
    assert!(Command::new("kill")
        .args([sig, &pid])
        .status()
        .unwrap()
        .success());
}

/// The one node (of those given) that answers sys/health 200, once exactly one does.
fn wait_one_active(nodes: &[&TestServer]) -> usize {
    let mut active = None;
    let ok = poll_until(TAKEOVER, || {
        let up: Vec<usize> = (0..nodes.len())
            .filter(|i| health(nodes[*i]).0 == 200)
            .collect();
        active = (up.len() == 1).then(|| up[0]);
        active.is_some()
    });
    assert!(ok, "no single active node among {}", nodes.len());
    active.unwrap()
}

#[test]
fn three_nodes_fail_over_on_kill_step_down_and_shutdown_without_losing_writes() {
    let pg = Postgres::start();
    let mut nodes = cluster(&pg, 3);
    let (a, b) = (&nodes[0], &nodes[1]);

    // A standby: 429 for load balancers, 200 with standbyok, and who the leader is.
    let (code, body) = health(b);
    assert_eq!(
        (code, body["standby"].clone()),
        (429, json!(true)),
        "{body}"
    );
    assert_eq!(b.get("sys/health?standbyok=true", None).0, 200);
    assert_eq!(body["cluster_id"], health(a).1["cluster_id"], "{body}");
    assert!(body["cluster_id"].as_str().is_some_and(|c| !c.is_empty()));
    let (_, leader) = b.get("sys/leader", None);
    assert_eq!(leader["ha_enabled"], json!(true), "{leader}");
    assert_eq!(leader["is_self"], json!(false));
    assert_eq!(leader["leader_address"], json!(a.addr()));
    let (_, leader) = a.get("sys/leader", None);
    assert_eq!(leader["is_self"], json!(true), "{leader}");
    assert_ne!(leader["active_time"], json!("0001-01-01T00:00:00Z"));

    // A standby sends clients to the active node: 307 to the same path and query.
    let head = format!(
        "GET /v1/secret/data/x?version=1 HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Vault-Token: {}\r\nConnection: close\r\n\r\n",
        b.root_token
    );
    let response = raw_response(b, &head);
    assert!(response.starts_with("HTTP/1.1 307"), "{response}");
    let location = format!("location: {}/v1/secret/data/x?version=1", a.addr());
    assert!(
        response.to_ascii_lowercase().contains(&location),
        "{response}"
    );
    // (The test client follows the redirect, as hvac and the vault CLI do.)
    a.mount_kv2();
    let mut written = Vec::new();
    for i in 0..10 {
        let via = &nodes[i % 3];
        via.kv_put(&format!("k{i}"), json!({"n": i.to_string()}));
        written.push(i);
    }
    let (code, status) = a.get("sys/ha-status", a.root());
    assert_eq!(code, 200, "{status}");
    let listed = status["data"]["nodes"].as_array().unwrap();
    assert_eq!(listed.len(), 3, "{status}");
    assert_eq!(
        listed
            .iter()
            .filter(|n| n["active_node"] == json!(true))
            .count(),
        1
    );
    // A standby is not sealed through the API (Vault's answer), which would seal the active.
    let (code, _) = b.put("sys/seal", b.root(), json!({}));
    assert_eq!(code, 500);
    wait_health(a, 200);

    // kill -9 of the active node: a standby takes over, everything acknowledged is there.
    nodes[0].kill9();
    let active = 1 + wait_one_active(&[&nodes[1], &nodes[2]]);
    let other = 3 - active;
    for i in &written {
        assert_eq!(
            nodes[active].kv_get(&format!("k{i}")).1["n"],
            json!(i.to_string())
        );
    }
    for i in 10..15 {
        nodes[active].kv_put(&format!("k{i}"), json!({"n": i.to_string()}));
        written.push(i);
    }

    // A graceful shutdown releases the lock at once: with the last standby held before it
    // tries the lock, the lock row is already expired when the process has exited.
    nodes[other].hold_at("ha-before-acquire");
    nodes[other].wait_held("ha-before-acquire", TAKEOVER);
    let exit = nodes[active].terminate(Duration::from_secs(30));
    assert!(exit.is_some(), "the active node did not shut down");
    assert_eq!(
        lock_expired(&pg),
        "t",
        "SIGTERM did not release the HA lock"
    );
    nodes[other].release("ha-before-acquire");
    wait_health(&nodes[other], 200);
    nodes[other].kv_put("after-shutdown", json!({"n": "sd"}));

    // The killed node comes back as a standby; step-down (sudo) hands the lock over to it, and
    // releases it at once too.
    nodes[0].restart();
    nodes[0].unseal();
    wait_health(&nodes[0], 429);
    nodes[0].hold_at("ha-before-acquire");
    nodes[0].wait_held("ha-before-acquire", TAKEOVER);
    let (code, body) = nodes[other].put("sys/step-down", nodes[other].root(), json!({}));
    assert_eq!(code, 204, "{body}");
    wait_health(&nodes[other], 429);
    assert_eq!(
        lock_expired(&pg),
        "t",
        "step-down did not release the HA lock"
    );
    nodes[0].release("ha-before-acquire");
    wait_health(&nodes[0], 200);
    assert_eq!(nodes[0].kv_get("after-shutdown").1["n"], json!("sd"));
    for i in &written {
        assert_eq!(
            nodes[0].kv_get(&format!("k{i}")).1["n"],
            json!(i.to_string()),
            "k{i}"
        );
    }
}

/// Whether the lock row is past its expiry ("t"/"f"), read in the database.
fn lock_expired(pg: &Postgres) -> String {
    pg.sql("SELECT valid_until < now() FROM bunker_ha_locks WHERE ha_key = 'leader'")
}

/// A raw HTTP exchange with `s` (no redirect following): the whole response text.
fn raw_response(s: &TestServer, head: &str) -> String {
    use std::io::{Read, Write};
    let port: u16 = s.addr().rsplit(':').next().unwrap().parse().unwrap();
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = stream.read_to_string(&mut out);
    out
}

/// A raw request to `s` (no redirect following): the status and the whole response text.
fn raw(
    s: &TestServer,
    method: &str,
    path: &str,
    headers: &str,
    body: Option<&Value>,
) -> (u16, String) {
    let body = body.map(Value::to_string).unwrap_or_default();
    // The root token unless the caller sends a token of its own.
    let token = if headers.contains("X-Vault-Token") {
        String::new()
    } else {
        format!("X-Vault-Token: {}\r\n", s.root_token)
    };
    let head = format!(
        "{method} /v1/{path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{token}{headers}\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let text = raw_response(s, &head);
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, text)
}

#[test]
fn standbys_forward_requests_to_the_active_node_over_the_cluster_port() {
    let pg = Postgres::start();
    let with_port = || {
        format!(
            "  cluster_address = \"127.0.0.1:{}\"\n  telemetry {{ unauthenticated_metrics_access = true }}",
            free_port()
        )
    };
    let mut nodes = start_cluster(vec![
        node_with(&pg, with_port()),
        node_with(&pg, with_port()),
        node_with(&pg, with_port()),
    ]);
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    a.mount_kv2();
    let log = a.enable_file_audit();

    // A write sent to one standby and a read sent to another: answered by the active node,
    // not redirected. The client's forged forwarded-for header is not believed.
    let spoof = "X-Bunker-Forwarded-For: 10.9.9.9\r\n";
    let secret = json!({"data": {"v": "through-a-standby"}});
    let (code, text) = raw(b, "PUT", "secret/data/fw", spoof, Some(&secret));
    assert_eq!(code, 200, "{text}");
    let (code, text) = raw(c, "GET", "secret/data/fw", "", None);
    assert_eq!(code, 200, "{text}");
    assert!(text.contains("through-a-standby"), "{text}");
    let (code, _) = raw(a, "GET", "secret/data/fw", spoof, None);
    assert_eq!(code, 200);
    // The active node's errors come back as they are.
    let (code, text) = raw(b, "GET", "secret/data/fw", "X-Vault-Token: bogus\r\n", None);
    assert!(code == 403 || code == 400, "{text}");
    // The standby still answers its own status.
    assert_eq!(health(b).0, 429);
    // A burst of concurrent requests shares the standby's few connections to the active node:
    // every one is answered (none turned into a redirect by the active node's handshake limits).
    let codes: Vec<u16> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..12)
            .map(|_| scope.spawn(|| raw(c, "GET", "secret/data/fw", "", None).0))
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    assert!(codes.iter().all(|c| *c == 200), "{codes:?}");

    // Audited once, on the active node, with the client's address.
    let records: Vec<Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let writes: Vec<&Value> = records
        .iter()
        .filter(|r| {
            r["type"] == json!("request") && r["request"]["path"] == json!("secret/data/fw")
        })
        .collect();
    assert!(writes.len() >= 15, "{records:?}");
    for r in &writes {
        assert_eq!(r["request"]["remote_address"], json!("127.0.0.1"), "{r}");
    }
    assert!(!records.iter().any(|r| r.to_string().contains("10.9.9.9")));

    // Each node reports its own role and the standby its forwarding (open metrics are
    // answered where they are asked, not forwarded).
    let metric = |s: &TestServer, name: &str| -> f64 {
        let (code, text) = raw(s, "GET", "sys/metrics?format=prometheus", "", None);
        assert_eq!(code, 200, "{text}");
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN)
    };
    assert_eq!(metric(a, "vault_core_active"), 1.0);
    assert_eq!(metric(b, "vault_core_active"), 0.0);
    assert!(metric(c, "vault_ha_rpc_client_forward_count") >= 12.0);

    // Vault's opt-out header: a 307 to the active node instead.
    let (code, text) = raw(
        b,
        "GET",
        "secret/data/fw",
        "X-Vault-No-Request-Forwarding: true\r\n",
        None,
    );
    assert_eq!(code, 307, "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains(&format!("location: {}/v1/secret/data/fw", a.addr())),
        "{text}"
    );

    // The active node dies: the standby that remains forwards to the new one, with the
    // credentials it advertised (new ones: the old active's are no use any more).
    nodes[0].kill9();
    let active = 1 + wait_one_active(&[&nodes[1], &nodes[2]]);
    let standby = &nodes[3 - active];
    let forwarded = poll_until(TAKEOVER, || {
        let (code, text) = raw(standby, "GET", "secret/data/fw", "", None);
        code == 200 && text.contains("through-a-standby")
    });
    if !forwarded {
        standby.dump_logs();
    }
    assert!(
        forwarded,
        "the standby never forwarded to the new active node"
    );
    let (code, text) = raw(
        standby,
        "PUT",
        "secret/data/after",
        "",
        Some(&json!({"data": {"v": "2"}})),
    );
    assert_eq!(code, 200, "{text}");
    assert_eq!(nodes[active].kv_get("after"), (200, json!({"v": "2"})));
}

#[test]
fn a_node_that_lost_the_lock_cannot_write_and_a_paused_node_steps_down() {
    let pg = Postgres::start();
    let nodes = cluster(&pg, 2);
    let (a, b) = (&nodes[0], &nodes[1]);
    a.mount_kv2();
    a.kv_put("before", json!({"n": "0"}));

    // Hold A's runner before its next renewal: it still believes it is active while its lock
    // expires and B takes it.
    a.hold_at("ha-before-renew");
    a.wait_held("ha-before-renew", TAKEOVER);
    wait_health(b, 200);
    assert_eq!(health(a).0, 200, "A should still believe it is active");
    // A still answers reads itself (before any write of its own found the lock gone), but its
    // lease ran out before B took the lock: it reads the database, not its cache of what it
    // wrote.
    b.kv_put("before", json!({"n": "b"}));
    assert_eq!(
        a.kv_get("before").1["n"],
        json!("b"),
        "a node past its lease must not answer from its read cache"
    );
    assert_eq!(health(a).0, 200, "A should still believe it is active");
    // A's writes reach the database and are refused there by the fence.
    let (code, body) = a.put("secret/data/stale", a.root(), json!({"data": {"n": "x"}}));
    assert_eq!(code, 503, "{body}");
    assert!(
        body["errors"][0]
            .as_str()
            .unwrap_or("")
            .contains("lost the HA lock: another node is active"),
        "{body}"
    );
    let (code, _) = b.get("secret/data/stale", b.root());
    assert_eq!(code, 404, "a fenced write must not be stored");
    b.kv_put("on-b", json!({"n": "b"}));
    // Released, A finds the lock gone and stands by.
    a.release("ha-before-renew");
    wait_health(a, 429);

    // SIGSTOP the active node past the TTL: the standby takes over; SIGCONT: the paused node
    // steps down by itself, and nothing it had in flight was committed.
    signal(b, "-STOP");
    wait_health(a, 200);
    a.kv_put("while-b-paused", json!({"n": "p"}));
    // A write sent to B while it is paused waits in its socket; B handles it on waking up,
    // still believing it is active, or already as a standby: either way it is not committed.
    let head = format!(
        "PUT /v1/secret/data/from-paused HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Vault-Token: {}\r\n\
         Content-Type: application/json\r\nContent-Length: 18\r\nConnection: close\r\n\r\n\
         {{\"data\":{{\"n\":\"z\"}}}}",
        b.root_token
    );
    let port: u16 = b.addr().rsplit(':').next().unwrap().parse().unwrap();
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    {
        use std::io::Write;
        stream.write_all(head.as_bytes()).unwrap();
    }
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    signal(b, "-CONT");
    let mut answer = String::new();
    {
        use std::io::Read;
        let _ = stream.read_to_string(&mut answer);
    }
    assert!(
        answer.starts_with("HTTP/1.1 503") || answer.starts_with("HTTP/1.1 307"),
        "a paused node's write after the takeover: {answer}"
    );
    assert_eq!(a.get("secret/data/from-paused", a.root()).0, 404);
    wait_health(b, 429);
    assert_eq!(b.kv_get("while-b-paused").1["n"], json!("p"));
    assert_eq!(a.kv_get("on-b").1["n"], json!("b"));
    assert_eq!(a.kv_get("before").1["n"], json!("b"));
}

#[test]
fn a_dr_secondary_follows_the_active_node_of_an_ha_primary_without_update_primary() {
    let pg = Postgres::start();
    let with_port = || format!("  cluster_address = \"127.0.0.1:{}\"", free_port());
    let mut nodes = start_cluster(vec![
        node_with(&pg, with_port()),
        node_with(&pg, with_port()),
    ]);
    nodes[0].mount_kv2();
    nodes[0].kv_put("before", json!({"n": "0"}));
    enable_primary(&nodes[0]);

    // A secondary on embedded storage, activated by the active node.
    let mut s = TestServer::with_config(ServerOptions {
        listener_extra: with_port(),
        config_extra: ALLOW_HTTP_ACTIVATION.to_owned(),
        ..Default::default()
    });
    s.init_unseal(5, 3);
    enable_secondary(&s, &activation_token(&nodes[0], "site-b"));
    adopt_credentials(&mut s, &nodes[0]);
    wait_converged(&nodes[0], &s);
    // The secondary learnt both nodes' cluster addresses.
    let known = dr_status(&s)["known_primary_cluster_addrs"].clone();
    assert_eq!(known.as_array().map(Vec::len), Some(2), "{known}");

    // The active node dies: the standby takes over and continues the WAL from the database;
    // the secondary finds it by itself and resumes from its position.
    nodes[0].kill9();
    wait_health(&nodes[1], 200);
    let b = &nodes[1];
    let before = dr_status(b)["last_wal"].as_u64().unwrap();
    b.kv_put("after", json!({"n": "1"}));
    assert!(
        dr_status(b)["last_wal"].as_u64().unwrap() > before,
        "the new active node records the WAL"
    );
    wait_converged(b, &s);
    assert_eq!(
        dr_status(&s)["sync"]["merkle_syncs"].as_u64(),
        Some(1),
        "the secondary resumed by WAL after the failover, without another Merkle sync: {}",
        dr_status(&s)
    );

    // The primary site is lost: the secondary is promoted and holds everything.
    nodes[1].kill9();
    let done = promote_with_keys(&s, &nodes[0].keys);
    assert_eq!(done["data"]["complete"], json!(true), "{done}");
    assert_eq!(s.kv_get("before").1["n"], json!("0"));
    assert_eq!(s.kv_get("after").1["n"], json!("1"));
}

/// A node of an HA cluster on database `url`, with a cluster port.
fn node_on(url: &str) -> TestServer {
    TestServer::with_config(ServerOptions {
        listener_extra: format!("  cluster_address = \"127.0.0.1:{}\"", free_port()),
        config_extra: ALLOW_HTTP_ACTIVATION.to_owned(),
        storage: format!(
            "storage \"postgresql\" {{\n  connection_url = \"{url}\"\n  table = \"bunker_kv\"\n  \
             ha_enabled = \"true\"\n  ha_table = \"bunker_ha_locks\"\n  lock_ttl = \"{LOCK_TTL_SECS}s\"\n}}"
        ),
        ..Default::default()
    })
}

/// `s`'s DR status when it answers it itself (its active node), else `None`.
fn own_dr_status(s: &TestServer) -> Option<Value> {
    let head = "X-Vault-No-Request-Forwarding: true\r\n";
    let (code, text) = raw(s, "GET", "sys/replication/dr/status", head, None);
    let body = text.split("\r\n\r\n").nth(1)?;
    if code != 200 {
        return None;
    }
    let mut body: Value = serde_json::from_str(body).ok()?;
    Some(body["data"].take())
}

#[test]
fn dr_between_two_ha_clusters_follows_failovers_on_both_sides() {
    let pg = Postgres::start();
    pg.sql("CREATE DATABASE site_b");
    let url_a = pg.url();
    let url_b = url_a.replace("/postgres?", "/site_b?");
    // Site A: two nodes, a DR primary.
    let mut a = start_cluster(vec![node_on(&url_a), node_on(&url_a)]);
    a[0].mount_kv2();
    a[0].kv_put("before", json!({"n": "0"}));
    enable_primary(&a[0]);
    // Site B: two nodes on their own database, initialised on their own, then made a DR
    // secondary through the active node (its storage is wiped: it goes on sealed, holding the
    // lock, and follows site A).
    let mut b = start_cluster(vec![node_on(&url_b), node_on(&url_b)]);
    enable_secondary(&b[0], &activation_token(&a[0], "site-b"));
    for node in b.iter_mut() {
        adopt_credentials(node, &a[0]);
    }
    wait_converged(&a[0], &b[0]);
    a[0].kv_put("streamed", json!({"n": "1"}));
    wait_converged(&a[0], &b[0]);
    // B's standby restarts: it comes back sealed (its storage is A's, and A's keys are not
    // given to it), as the nodes of a DR secondary usually are. Only the active node follows:
    // the primary sees one secondary session.
    b[1].restart();
    assert_eq!(b[1].get("sys/seal-status", None).1["sealed"], json!(true));
    a[0].kv_put("while-b1-sealed", json!({"n": "1"}));
    wait_converged(&a[0], &b[0]);
    let connected = dr_status(&a[0])["secondaries"].as_array().map(|s| {
        s.iter()
            .filter(|x| x["connection_status"] == json!("connected"))
            .count()
    });
    assert_eq!(connected, Some(1), "{}", dr_status(&a[0]));
    // A sealed standby runs no DR operation on its own view of the state.
    let (code, _) = raw(
        &b[1],
        "POST",
        "sys/replication/dr/secondary/recover",
        "",
        None,
    );
    assert!(code >= 400 && code != 404, "{code}");

    // B's active node dies: the sealed standby takes the lock and follows from the position
    // stored in site B's database, without a Merkle sync.
    b[0].kill9();
    let mut status = Value::Null;
    let took_over = poll_until(TAKEOVER, || {
        status = own_dr_status(&b[1]).unwrap_or(Value::Null);
        status["state"] == json!("stream-wals")
    });
    if !took_over {
        b[1].dump_logs();
    }
    assert!(took_over, "site B's standby never followed: {status}");
    a[0].kv_put("after-b-failover", json!({"n": "2"}));
    wait_converged(&a[0], &b[1]);
    let status = dr_status(&b[1]);
    assert_eq!(
        status["sync"]["merkle_syncs"],
        json!(0),
        "resumed without a sync: {status}"
    );

    // A's active node dies: site B follows A's new active node by itself.
    a[0].kill9();
    wait_health(&a[1], 200);
    a[1].kv_put("after-a-failover", json!({"n": "3"}));
    wait_converged(&a[1], &b[1]);

    // B's other node comes back while site B is still a DR secondary, and is unsealed with A's
    // key shares: it stands by with the secondary's view of the DR mode.
    b[0].restart();
    b[0].unseal();
    assert_eq!(b[0].get("sys/seal-status", None).1["sealed"], json!(false));

    // Site A is lost: site B is promoted at its active node with A's key shares, and serves
    // everything A acknowledged.
    a[1].kill9();
    let promoted = promote_with_keys(&b[1], &b[1].keys.clone());
    assert_eq!(promoted["data"]["complete"], json!(true), "{promoted}");
    wait_health(&b[1], 200);
    for (key, n) in [
        ("before", "0"),
        ("streamed", "1"),
        ("while-b1-sealed", "1"),
        ("after-b-failover", "2"),
        ("after-a-failover", "3"),
    ] {
        assert_eq!(b[1].kv_get(key), (200, json!({"n": n})), "{key}");
    }
    b[1].kv_put("on-b", json!({"n": "4"}));
    // B's other node stands by: it knows the promoted node as its leader and forwards to it.
    wait_health(&b[0], 429);
    let (_, leader) = b[0].get("sys/leader", None);
    assert_eq!(leader["leader_address"], json!(b[1].addr()), "{leader}");
    let (code, text) = raw(&b[0], "GET", "secret/data/on-b", "", None);
    assert_eq!(code, 200, "{text}");

    // The promoted node is rekeyed. The standby, unsealed while site B was a secondary, reads
    // the new root key all the same (what is stored decides its mode, not what it saw when it
    // started), so after the rotation docs/rekey.md asks for it takes over and serves.
    let new = b[1].rekey(3, 2);
    b[0].keys = new;
    let followed = poll_until(TAKEOVER, || {
        common::dr::log_count(&b[0], "rekeyed on another node); following it") > 0
    });
    if !followed {
        b[0].dump_logs();
    }
    assert!(followed, "the standby never read the new root key");
    let (code, body) = b[1].put("sys/rotate", b[1].root(), json!({}));
    assert_eq!(code, 204, "rotate: {body}");
    let (code, body) = b[1].put("sys/step-down", b[1].root(), json!({}));
    assert_eq!(code, 204, "step-down: {body}");
    wait_health(&b[0], 200);
    assert_eq!(b[0].kv_get("on-b"), (200, json!({"n": "4"})));
}

#[test]
fn a_standby_follows_a_rekey_made_on_the_active_node_when_it_takes_over() {
    let pg = Postgres::start();
    let mut nodes = cluster(&pg, 2);
    nodes[0].mount_kv2();
    nodes[0].kv_put("app/config", json!({"password": "before-rekey"}));
    // The active node replaces the root key; the standby still holds the old one.
    let new = nodes[0].rekey(3, 2);
    nodes[1].keys = new.clone();

    let (code, body) = nodes[0].put("sys/step-down", nodes[0].root(), json!({}));
    assert_eq!(code, 204, "{body}");
    wait_health(&nodes[1], 200);
    let (code, data) = nodes[1].kv_get("app/config");
    assert_eq!(
        (code, &data["password"]),
        (200, &json!("before-rekey")),
        "{data}"
    );
    nodes[1].kv_put("app/after", json!({"n": "1"}));
    let (_, seal) = nodes[1].get("sys/seal-status", None);
    assert_eq!((&seal["n"], &seal["t"]), (&json!(3), &json!(2)), "{seal}");

    // The former active node stands by with the new root key, and a restarted node takes
    // only the new shares.
    wait_health(&nodes[0], 429);
    nodes[0].restart();
    nodes[0].unseal_with(&new[1..]);
    wait_health(&nodes[0], 429);
    let (code, body) = nodes[1].put("sys/step-down", nodes[1].root(), json!({}));
    assert_eq!(code, 204, "{body}");
    wait_health(&nodes[0], 200);
    assert_eq!(nodes[0].kv_get("app/after").1["n"], json!("1"));
}

#[test]
fn a_node_without_ha_answers_the_ha_endpoints_as_vault() {
    let s = TestServer::dev();
    let (_, leader) = s.get("sys/leader", None);
    assert_eq!(leader["ha_enabled"], json!(false), "{leader}");
    let (code, status) = s.get("sys/ha-status", s.root());
    assert_eq!(code, 200, "{status}");
    let listed = status["data"]["nodes"].as_array().unwrap();
    assert_eq!(listed.len(), 1, "{status}");
    assert_eq!(listed[0]["active_node"], json!(true));
    assert_eq!(s.put("sys/step-down", s.root(), json!({})).0, 204);
    assert_eq!(health(&s).0, 200);
}

#[test]
fn a_snapshot_restore_on_the_active_node_is_served_by_every_node() {
    const SNAPSHOT: &str = "sys/storage/raft/snapshot";
    let pg = Postgres::start();
    let nodes = cluster(&pg, 2);
    let (a, b) = (&nodes[0], &nodes[1]);
    a.mount_kv2();
    a.kv_put("kept", json!({"n": "0"}));
    let file = a
        .client()
        .get(a.url(SNAPSHOT))
        .header("X-Vault-Token", &a.root_token)
        .send()
        .unwrap()
        .bytes()
        .unwrap()
        .to_vec();
    a.kv_put("kept", json!({"n": "1"}));
    a.kv_put("undone", json!({"n": "1"}));
    let resp = a
        .client()
        .post(a.url(SNAPSHOT))
        .header("X-Vault-Token", &a.root_token)
        .body(file)
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204, "{:?}", resp.text());
    // Still the active node, holding the lock it restored under.
    assert_eq!(health(a).0, 200);
    assert_eq!(a.kv_get("kept").1["n"], json!("0"));
    assert_eq!(a.kv_get("undone").0, 404);
    // The standby forwards to it and sees the same.
    assert_eq!(health(b).0, 429);
    assert_eq!(b.kv_get("kept").1["n"], json!("0"));
    assert_eq!(b.kv_get("undone").0, 404);
}
