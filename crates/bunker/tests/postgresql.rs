//! Storage on a real PostgreSQL (issue "High availability inside a cluster, on PostgreSQL",
//! first part: the storage backend): the conformance suite every backend passes, a server on
//! it that keeps acknowledged writes across kill -9, a database that goes away and comes back,
//! and DR replication between two clusters on PostgreSQL.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use bunker_testkit as common;

use common::dr::{
    activation_token, adopt_credentials, enable_primary, enable_secondary, promote_with_keys,
    wait_converged, ALLOW_HTTP_ACTIVATION,
};
use common::postgres::Postgres;
use common::{free_port, ServerOptions, TestServer};
use serde_json::json;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn pg_config(pg: &Postgres, table: &str) -> bunker_storage::PostgresConfig {
    bunker_storage::PostgresConfig {
        connection_url: pg.url(),
        table: table.into(),
        max_parallel: 8,
        skip_create_table: false,
        ha_table: None,
        read_cache: true,
    }
}

#[test]
fn postgresql_backend_passes_the_conformance_suite() {
    let pg = Postgres::start();
    runtime().block_on(async {
        let backend = bunker_storage::PostgresBackend::connect(&pg_config(&pg, "conformance_kv"))
            .await
            .expect("connect");
        bunker_storage::conformance::exercise_backend(&backend).await;
    });
    // The rows are in PostgreSQL's table, nowhere else.
    assert_eq!(pg.sql("SELECT count(*) FROM conformance_kv"), "0");
}

/// A backend holding `k/0..n` = `value-0..n`.
async fn seeded_backend(
    config: &bunker_storage::PostgresConfig,
    n: usize,
) -> std::sync::Arc<bunker_storage::PostgresBackend> {
    use bunker_storage::Backend;
    let backend = bunker_storage::PostgresBackend::connect(config)
        .await
        .expect("connect");
    let ops = (0..n)
        .map(|i| bunker_storage::Op::Put {
            key: format!("k/{i}"),
            value: format!("value-{i}").into_bytes(),
        })
        .collect();
    backend.batch(ops).await.expect("seed");
    std::sync::Arc::new(backend)
}

/// Point reads that miss the cache are coalesced into shared queries: hundreds at once, of
/// present, absent and repeated keys, each get exactly its own key's value.
#[test]
fn concurrent_reads_each_get_their_own_keys_value() {
    use bunker_storage::Backend;
    let pg = Postgres::start();
    let mut config = pg_config(&pg, "coalesced_reads");
    config.read_cache = false;
    runtime().block_on(async {
        let backend = seeded_backend(&config, 200).await;
        let mut reads = tokio::task::JoinSet::new();
        for round in 0..3 {
            for i in 0..400 {
                let backend = backend.clone();
                reads.spawn(async move {
                    let key = format!("k/{i}");
                    let value = backend.get(&key).await;
                    (round, i, value.unwrap_or_else(|e| panic!("get {key}: {e}")))
                });
            }
        }
        // A key PostgreSQL refuses (a NUL byte in TEXT) fails its own read only, not the reads
        // that share its query.
        let refused = {
            let backend = backend.clone();
            tokio::spawn(async move { backend.get("k/\0").await })
        };
        let mut answered = 0;
        while let Some(joined) = reads.join_next().await {
            let (round, i, value) = joined.expect("read task");
            let expected = (i < 200).then(|| format!("value-{i}").into_bytes());
            assert_eq!(value, expected, "round {round}, key k/{i}");
            answered += 1;
        }
        assert_eq!(answered, 1200);
        assert!(refused.await.expect("read task").is_err());
    });
}

/// Pooled connections that died while idle (the database restarted behind a NAT, a proxy
/// dropped idle sessions) are found out by the next read, which goes again on another
/// connection and answers instead of failing; with every pooled connection dead, the last try
/// opens a new one.
#[test]
fn reads_survive_pooled_connections_that_died_while_idle() {
    use bunker_storage::Backend;
    let pg = Postgres::start();
    let proxy = common::proxy::FaultProxy::start(pg.addr().parse().unwrap());
    let mut config = pg_config(&pg, "dead_pool");
    config.connection_url = pg.url().replace(&pg.addr(), &proxy.addr());
    config.read_cache = false;
    runtime().block_on(async {
        let backend = seeded_backend(&config, 8).await;
        // Listings at once each take a pooled connection, so the pool holds several.
        let mut lists = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let backend = backend.clone();
            lists.spawn(async move { backend.list("k/").await });
        }
        while let Some(listed) = lists.join_next().await {
            assert_eq!(listed.expect("list task").expect("list").len(), 8);
        }
        // The writer's connection and at least three pooled ones (more than a read tries
        // before it opens a new one).
        let before = proxy.accepted();
        assert!(before >= 4, "the pool holds {} connections", before - 1);
        proxy.break_silently();
        assert_eq!(
            backend
                .get("k/3")
                .await
                .expect("a read after the pool died"),
            Some(b"value-3".to_vec())
        );
        assert_eq!(backend.list("k/").await.expect("a listing").len(), 8);
        for i in 0..8 {
            let value = backend.get(&format!("k/{i}")).await.expect("read");
            assert_eq!(value, Some(format!("value-{i}").into_bytes()));
        }
        assert!(
            proxy.accepted() > before,
            "the reads went to new connections"
        );
    });
}

#[test]
fn postgresql_backend_passes_the_conformance_suite_as_an_ha_lock_holder() {
    use bunker_storage::ha::{Acquire, Fence, HaBackend, HaNode};
    let pg = Postgres::start();
    let mut config = pg_config(&pg, "conformance_ha_kv");
    config.ha_table = Some("conformance_ha_locks".into());
    runtime().block_on(async {
        let backend = bunker_storage::PostgresBackend::connect(&config)
            .await
            .expect("connect");
        let me = HaNode {
            id: "conformance".into(),
            hostname: "h".into(),
            api_addr: "http://127.0.0.1:1".into(),
            cluster_addr: "https://127.0.0.1:2".into(),
            version: "test".into(),
        };
        let ttl = std::time::Duration::from_secs(30);
        let Acquire::Acquired(epoch) = backend.try_acquire(&me, ttl).await.expect("acquire") else {
            panic!("the lock of a fresh table is free");
        };
        let fence = backend.fence();
        fence.set(Fence::Active {
            node_id: me.id.clone(),
            epoch,
        });
        fence.extend_lease(epoch, std::time::Instant::now() + ttl / 2);
        // Every write fenced by the lock, a batch larger than one statement included (its
        // last statement carries the fence).
        bunker_storage::conformance::exercise_backend(&backend).await;
        // The lock still renews: a long write does not hold its row.
        assert!(backend.renew(&me.id, epoch, ttl).await.expect("renew"));
    });
    assert_eq!(pg.sql("SELECT count(*) FROM conformance_ha_kv"), "0");
}

/// A Bunker server on `storage "postgresql"` (with a cluster port when `cluster`).
fn server_on(pg: &Postgres, table: &str, cluster: bool) -> TestServer {
    let listener_extra = if cluster {
        format!("  cluster_address = \"127.0.0.1:{}\"", free_port())
    } else {
        String::new()
    };
    TestServer::with_config(ServerOptions {
        listener_extra,
        config_extra: ALLOW_HTTP_ACTIVATION.to_owned(),
        storage: format!(
            "storage \"postgresql\" {{\n  connection_url = \"{}\"\n  table = \"{table}\"\n}}",
            pg.url()
        ),
        ..Default::default()
    })
}

#[test]
fn a_server_on_postgresql_keeps_acknowledged_writes_and_survives_the_database_restarting() {
    let mut pg = Postgres::start();
    let mut s = server_on(&pg, "bunker_kv", false);
    s.init_unseal(3, 2);
    s.mount_kv2();
    for i in 0..20 {
        s.kv_put(&format!("app/{i}"), json!({"n": i.to_string()}));
    }
    // Acknowledged writes are in the database, as ciphertext.
    let rows: u64 = pg.sql("SELECT count(*) FROM bunker_kv").parse().unwrap();
    assert!(rows > 20, "{rows} rows");
    let plain =
        pg.sql("SELECT count(*) FROM bunker_kv WHERE position('\"n\"'::bytea in value) > 0");
    assert_eq!(plain, "0", "plaintext in the table");

    // kill -9 of the server: everything acknowledged is there after the restart.
    s.restart();
    s.unseal();
    for i in (0..20).step_by(7) {
        let (code, data) = s.kv_get(&format!("app/{i}"));
        assert_eq!(code, 200);
        assert_eq!(data["n"], json!(i.to_string()));
    }

    // The database goes away: writes fail with a clear 5xx error, nothing is acknowledged.
    pg.stop();
    let (code, body) = s.put(
        "secret/data/while-down",
        s.root(),
        json!({"data": {"n": "x"}}),
    );
    assert!(code >= 500, "a write with the database down: {code} {body}");
    assert!(
        body["errors"].as_array().is_some_and(|e| !e.is_empty()),
        "{body}"
    );
    // It comes back: the server recovers by itself.
    pg.restart();
    let recovered = common::poll_until(common::dr::CONVERGE, || {
        s.put("secret/data/after", s.root(), json!({"data": {"n": "y"}}))
            .0
            == 200
    });
    assert!(
        recovered,
        "the server did not recover when the database came back"
    );
    assert_eq!(s.kv_get("after").1["n"], json!("y"));
    // The write refused while the database was down was not stored after all.
    assert_eq!(s.kv_get("while-down").0, 404);
    assert_eq!(s.kv_get("app/3").1["n"], json!("3"));
}

#[test]
fn a_write_without_an_answer_suspends_the_read_cache_until_its_session_is_gone() {
    let pg = Postgres::start();
    // Bunker reaches the database through a proxy the test can cut.
    let proxy = common::proxy::FaultProxy::start(pg.addr().parse().unwrap());
    let url = pg.url().replace(&pg.addr(), &proxy.addr());
    let mut s = TestServer::with_config(ServerOptions {
        storage: format!(
            "storage \"postgresql\" {{\n  connection_url = \"{url}\"\n  table = \"bunker_cache\"\n}}"
        ),
        ..Default::default()
    });
    s.init_unseal(1, 1);
    s.mount_kv2();
    s.kv_put("k", json!({"n": "1"}));
    let hits = read_cache_counter(&s, "hits");
    assert_eq!(s.kv_get("k").1["n"], json!("1"));
    assert!(read_cache_counter(&s, "hits") > hits, "reads are cached");
    // Vault's timings of the PostgreSQL backend's operations (what reached the database).
    for name in [
        "vault_postgres_get",
        "vault_postgres_put",
        "vault_postgres_list",
    ] {
        assert!(sample_count(&s, name) >= 1.0, "{name}");
    }

    // Every write to the table now waits inside the database (a trigger) for an advisory lock
    // another session holds, the way a write waits on a slow disk or a synchronous replica:
    // it goes on when the test releases the lock, not after some time. (The function sets its
    // own lock_timeout: Bunker's sessions give up lock waits after 2 s.)
    pg.sql(
        "CREATE FUNCTION held_write() RETURNS trigger LANGUAGE plpgsql SET lock_timeout = 0 \
         AS $$ BEGIN PERFORM pg_advisory_xact_lock(4242); RETURN NEW; END $$; \
         CREATE TRIGGER held_write BEFORE INSERT OR UPDATE ON bunker_cache \
         FOR EACH STATEMENT EXECUTE FUNCTION held_write();",
    );
    let mut holder = pg.session();
    holder.send("SELECT pg_advisory_lock(4242);");
    let held = common::poll_until(common::dr::CONVERGE, || {
        pg.sql("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted") == "1"
    });
    assert!(held, "the advisory lock was not taken");
    let rows_before: u64 = pg.sql("SELECT count(*) FROM bunker_cache").parse().unwrap();
    std::thread::scope(|scope| {
        let put = scope.spawn(|| s.put("secret/data/k", s.root(), json!({"data": {"n": "2"}})));
        let waiting = common::poll_until(common::dr::CONVERGE, || {
            pg.sql("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
                == "1"
        });
        assert!(waiting, "the write never reached the database");
        // The connection is cut while the statement waits: Bunker gets no answer, and the
        // server goes on and commits it once the lock is released.
        proxy.cut();
        let (code, body) = put.join().unwrap();
        assert!(code >= 500, "a write without an answer: {code} {body}");
    });
    proxy.restore();
    assert!(read_cache_counter(&s, "suspensions") >= 1.0);
    // Read while the orphaned statement still waits: the old value, from the database, and
    // not cached.
    assert_eq!(s.kv_get("k").1["n"], json!("1"));
    holder.send("SELECT pg_advisory_unlock(4242);");
    let committed = common::poll_until(common::dr::CONVERGE, || {
        pg.sql("SELECT count(*) FROM bunker_cache")
            .parse::<u64>()
            .unwrap()
            > rows_before
    });
    assert!(
        committed,
        "the orphaned write should have committed in the database"
    );
    drop(holder);
    pg.sql("DROP TRIGGER held_write ON bunker_cache");
    // The write Bunker reported as failed did commit: a cache that had kept the value read
    // above would answer it forever.
    assert_eq!(s.kv_get("k").1["n"], json!("2"));
    // The next write reconnects, finds the old session gone, and caching resumes.
    let mut n = 2;
    let resumed = common::poll_until(common::dr::CONVERGE, || {
        n += 1;
        s.kv_put("k", json!({"n": n.to_string()}));
        let hits = read_cache_counter(&s, "hits");
        assert_eq!(s.kv_get("k").1["n"], json!(n.to_string()));
        read_cache_counter(&s, "hits") > hits
    });
    assert!(resumed, "the read cache did not resume");
}

/// How many times summary `name` was recorded on `s` (0 when never).
fn sample_count(s: &TestServer, name: &str) -> f64 {
    let (code, body) = s.get("sys/metrics", s.root());
    assert_eq!(code, 200, "{body}");
    body["Samples"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["Name"] == name)
        .and_then(|c| c["Count"].as_f64())
        .unwrap_or(0.0)
}

/// `bunker_storage_read_cache_<name>_total` on `s`.
fn read_cache_counter(s: &TestServer, name: &str) -> f64 {
    let (code, body) = s.get("sys/metrics", s.root());
    assert_eq!(code, 200, "{body}");
    let wanted = format!("bunker_storage_read_cache_{name}_total");
    body["Counters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["Name"] == wanted.as_str())
        .and_then(|c| c["Count"].as_f64())
        .unwrap_or(0.0)
}

#[test]
fn dr_between_two_clusters_on_postgresql() {
    let pg = Postgres::start();
    let mut p = server_on(&pg, "site_a", true);
    p.init_unseal(5, 3);
    p.mount_kv2();
    p.kv_put("before", json!({"n": "0"}));
    enable_primary(&p);
    let mut s = server_on(&pg, "site_b", true);
    s.init_unseal(5, 3);
    enable_secondary(&s, &activation_token(&p, "site-b"));
    adopt_credentials(&mut s, &p);
    wait_converged(&p, &s);
    p.kv_put("after", json!({"n": "1"}));
    wait_converged(&p, &s);

    // Site A is lost; B is promoted with A's key shares and serves A's data.
    p.kill9();
    let done = promote_with_keys(&s, &p.keys);
    assert_eq!(done["data"]["complete"], json!(true), "{done}");
    assert_eq!(s.kv_get("before").1["n"], json!("0"));
    assert_eq!(s.kv_get("after").1["n"], json!("1"));
}
