//! PostgreSQL storage: `storage "postgresql" { connection_url, table, max_parallel, ... }`.
//!
//! One table, `key TEXT COLLATE "C" PRIMARY KEY, value BYTEA`: plain rows and plain
//! statements, no advisory locks and no LISTEN/NOTIFY, so PostgreSQL-compatible distributed
//! databases can serve too. `COLLATE "C"` makes the key order byte order, the order every
//! backend scans in.
//!
//! Design:
//! - **Writes go through the shared group-commit writer** ([`crate::group_commit`]): one
//!   thread owns a synchronous connection and commits every batch waiting in one transaction
//!   (one round of statements, one WAL flush on the server), with the commit hook's extra ops
//!   (replication's WAL record) in the same transaction, as on the embedded store. The group
//!   is folded to each key's last operation, then written as one upsert (`UNNEST` arrays) and
//!   one delete. A broken connection is dropped and opened again at the next commit, so the
//!   node recovers by itself when the database is back; meanwhile writes fail with an error
//!   and nothing unacknowledged is reported as written.
//! - **Reads use a pool** (deadpool-postgres, `max_parallel` connections, Vault's default 128).
//!   Point reads that miss the read cache are coalesced: those waiting at one moment go as one
//!   `key = ANY(...)` query (`postgresql/reads.rs`), never waiting to form a batch. A read that
//!   finds its pooled connection closed (the database restarted, a proxy or NAT dropped idle
//!   sessions) goes again on another, the last time on a new one ([`on_live_connection`]), as
//!   Go's `database/sql` under Vault retries a bad connection: reads change nothing, so going
//!   again is safe, and a client no longer gets a 503 for a session nobody was using.
//! - **TLS with rustls**, as everywhere in Bunker. libpq's `sslmode=verify-full|verify-ca` and
//!   `sslrootcert=FILE` are understood: the CA file (PEM) is the only trust anchor when given,
//!   the Mozilla roots (webpki-roots) otherwise. Certificates are always verified: `require`
//!   here means what `verify-full` means in libpq. `sslmode=disable` connects in the clear
//!   (loopback and tests).
//! - `VAULT_PG_CONNECTION_URL` overrides `connection_url`, as in Vault. The URL (it may hold a
//!   password) is never logged.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;

mod reads;

use crate::group_commit::{GroupStore, Writer};
use crate::ha::{
    Acquire, Fence, FenceCell, HaBackend, HaNode, LockHolder, NodeHeartbeat, ReadScope,
};
use crate::limits::validate_key;
use crate::read_cache::{Lookup, ReadCache, CACHE_BYTES};
use crate::timed::Timed;
use crate::{
    Backend, CommitHook, Op, Result, SnapshotPage, SnapshotSink, StorageError, StorageMetrics,
    SNAPSHOT_PAGE_ENTRIES,
};

// Operations that reach the database are timed under Vault's names for its PostgreSQL backend
// (`vault.postgres.get`, `put`, `delete`, `list`), so dashboards built for Vault on PostgreSQL
// read Bunker's. A read answered by the cache is not timed (Vault's cache sits above its
// backend too).

/// A batch counts as Vault's `put` when it writes anything, else as `delete`.
fn write_metric(ops: &[Op]) -> &'static str {
    if ops.iter().any(|op| matches!(op, Op::Put { .. })) {
        "vault_postgres_put"
    } else {
        "vault_postgres_delete"
    }
}

/// Vault's default table name.
pub const DEFAULT_TABLE: &str = "vault_kv_store";
/// The default HA lock table.
pub const DEFAULT_HA_TABLE: &str = "vault_ha_locks";
/// The lock row's key in the HA table; heartbeats are `node/<id>`.
const LOCK_KEY: &str = "leader";
/// Time to open a connection (TCP and TLS) before giving up.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// Time a request waits for a free pooled connection.
const POOL_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
/// A session idle inside a transaction this long is ended by the server, so a writer that
/// died mid-transaction (its host lost, its link cut) does not hold the HA lock row.
const IDLE_IN_TRANSACTION_MS: u64 = 5_000;
/// Longest wait for a row lock (the HA lock row): a takeover or a renewal that cannot get it
/// fails and is retried instead of hanging.
const LOCK_TIMEOUT_MS: u64 = 2_000;

/// Bound every session in time: connect timeout, TCP keepalives, and server-side limits on
/// idle transactions and lock waits (appended to any `options` of the URL).
fn bound_sessions(pg: &mut tokio_postgres::Config) {
    if pg.get_connect_timeout().is_none() {
        pg.connect_timeout(CONNECT_TIMEOUT);
    }
    pg.keepalives(true)
        .keepalives_idle(std::time::Duration::from_secs(10));
    let extra = format!(
        "-c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_MS} -c lock_timeout={LOCK_TIMEOUT_MS}"
    );
    let options = match pg.get_options() {
        Some(given) if !given.is_empty() => format!("{given} {extra}"),
        _ => extra,
    };
    pg.options(&options);
}

/// Vault's default `max_parallel`.
pub const DEFAULT_MAX_PARALLEL: usize = 128;
/// Keys read per query while listing.
const LIST_PAGE: i64 = 512;

/// The `storage "postgresql"` settings.
#[derive(Clone, PartialEq, Eq)]
pub struct PostgresConfig {
    pub connection_url: String,
    pub table: String,
    pub max_parallel: usize,
    pub skip_create_table: bool,
    /// The HA lock table when `ha_enabled` (Vault's `ha_table`), `None` without HA.
    pub ha_table: Option<String>,
    /// Point reads answered from memory on the node that writes ([`crate::read_cache`]); off
    /// with Vault's top-level `disable_cache = true`.
    pub read_cache: bool,
}

impl std::fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("connection_url", &"<redacted>")
            .field("table", &self.table)
            .field("max_parallel", &self.max_parallel)
            .field("skip_create_table", &self.skip_create_table)
            .field("ha_table", &self.ha_table)
            .finish()
    }
}

pub struct PostgresBackend {
    pool: deadpool_postgres::Pool,
    /// Point reads that miss the cache, coalesced into one query per moment.
    reads: Arc<reads::ReadBatcher>,
    table: String,
    writer: Writer,
    /// The quoted HA table, when HA is on.
    ha_table: Option<String>,
    fence: Arc<FenceCell>,
    cache: Option<Arc<ReadCache>>,
}

impl std::fmt::Debug for PostgresBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresBackend")
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

fn engine_error(context: impl Into<String>, error: impl std::fmt::Display) -> StorageError {
    StorageError::Engine {
        context: context.into(),
        message: error.to_string(),
    }
}

/// A table name, optionally schema-qualified, quoted for SQL. Only letters, digits and `_`.
fn quoted_table(name: &str) -> Result<String> {
    let parts: Vec<&str> = name.split('.').collect();
    let valid = |p: &&str| {
        !p.is_empty()
            && p.len() <= 63
            && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !p.starts_with(|c: char| c.is_ascii_digit())
    };
    if parts.len() > 2 || !parts.iter().all(valid) {
        return Err(StorageError::InvalidArgument(format!(
            "table {name:?}: use letters, digits and '_' (optionally schema.table)"
        )));
    }
    Ok(parts
        .iter()
        .map(|p| format!("\"{p}\""))
        .collect::<Vec<_>>()
        .join("."))
}

/// TLS settings taken out of a libpq connection string, which tokio-postgres does not parse.
#[derive(Debug, Default, PartialEq, Eq)]
struct TlsOptions {
    disable: bool,
    root_cert: Option<String>,
}

/// Split libpq's `sslmode=verify-*` and `sslrootcert` off a URL or key=value connection
/// string; returns what tokio-postgres can parse and the TLS options.
fn split_tls_options(url: &str) -> (String, TlsOptions) {
    let (mut out, tls) = split_tls_options_as_given(url);
    // Without `sslmode`, tokio-postgres would *prefer* TLS: fall back to plaintext when the
    // server (or someone in between) says no. TLS is required unless disabled explicitly.
    if !has_sslmode(url) {
        let sep = if url.contains("://") {
            if out.contains('?') {
                "&"
            } else {
                "?"
            }
        } else {
            " "
        };
        out = format!("{out}{sep}sslmode=require");
    }
    (out, tls)
}

fn has_sslmode(url: &str) -> bool {
    url.split(['?', '&', ' '])
        .any(|pair| pair.trim_start().starts_with("sslmode="))
}

fn split_tls_options_as_given(url: &str) -> (String, TlsOptions) {
    let mut tls = TlsOptions::default();
    let mut take = |k: &str, v: &str| -> Option<String> {
        match (k, v) {
            ("sslrootcert", path) => {
                tls.root_cert = Some(path.to_owned());
                None
            }
            // Certificates are always verified; libpq's weaker modes mean TLS required here.
            ("sslmode", "verify-full" | "verify-ca" | "require" | "prefer" | "allow") => {
                Some("require".into())
            }
            ("sslmode", "disable") => {
                tls.disable = true;
                Some("disable".into())
            }
            (_, v) => Some(v.to_owned()),
        }
    };
    if let Some((base, query)) = url.split_once('?') {
        let kept: Vec<String> = query
            .split('&')
            .filter_map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                take(k, v).map(|v| format!("{k}={v}"))
            })
            .collect();
        let out = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        return (out, tls);
    }
    if url.contains("://") {
        return (url.to_owned(), tls);
    }
    let kept: Vec<String> = url
        .split_whitespace()
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            take(k, v).map(|v| format!("{k}={v}"))
        })
        .collect();
    (kept.join(" "), tls)
}

fn tls_connector(tls: &TlsOptions) -> Result<tokio_postgres_rustls::MakeRustlsConnect> {
    let mut roots = rustls::RootCertStore::empty();
    match &tls.root_cert {
        Some(path) => {
            use rustls_pki_types::pem::PemObject as _;
            let pem = std::fs::read(path).map_err(|e| engine_error("reading sslrootcert", e))?;
            for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| engine_error("parsing sslrootcert", e))?;
                roots
                    .add(cert)
                    .map_err(|e| engine_error("adding sslrootcert", e))?;
            }
            if roots.is_empty() {
                return Err(engine_error("sslrootcert", "no certificate in the file"));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| engine_error("configuring TLS", e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

impl PostgresBackend {
    /// Connect (the URL from `VAULT_PG_CONNECTION_URL` when set), create the table unless
    /// `skip_create_table`, and start the writer.
    pub async fn connect(config: &PostgresConfig) -> Result<PostgresBackend> {
        let url = std::env::var("VAULT_PG_CONNECTION_URL")
            .ok()
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| config.connection_url.clone());
        let (url, tls) = split_tls_options(&url);
        let mut pg: tokio_postgres::Config = url
            .parse()
            .map_err(|e| engine_error("parsing connection_url", e))?;
        bound_sessions(&mut pg);
        let table = quoted_table(&config.table)?;
        let connector = tls_connector(&tls)?;
        let manager = deadpool_postgres::Manager::new(pg.clone(), connector.clone());
        let pool = deadpool_postgres::Pool::builder(manager)
            .max_size(config.max_parallel.max(1))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| engine_error("building the connection pool", e))?;
        let backend_table = table.clone();
        let client = pool
            .get()
            .await
            .map_err(|e| engine_error("connecting to PostgreSQL", e))?;
        if !config.skip_create_table {
            client
                .batch_execute(&format!(
                    "CREATE TABLE IF NOT EXISTS {table} (key TEXT COLLATE \"C\" PRIMARY KEY, value BYTEA NOT NULL)"
                ))
                .await
                .map_err(|e| engine_error(format!("creating table {}", config.table), e))?;
        }
        let ha_table = config.ha_table.as_deref().map(quoted_table).transpose()?;
        if let (Some(ha), false) = (&ha_table, config.skip_create_table) {
            client
                .batch_execute(&format!(
                    "CREATE TABLE IF NOT EXISTS {ha} (ha_key TEXT COLLATE \"C\" PRIMARY KEY, \
                     ha_identity TEXT NOT NULL, ha_value TEXT NOT NULL, epoch BIGINT NOT NULL, \
                     acquired_at TIMESTAMPTZ NOT NULL, valid_until TIMESTAMPTZ NOT NULL)"
                ))
                .await
                .map_err(|e| engine_error("creating the HA table", e))?;
        }
        drop(client);
        let fence = Arc::new(FenceCell::default());
        if ha_table.is_some() {
            // A node starts as a standby; the HA runner opens the fence when it takes the lock.
            fence.set(Fence::Standby);
        }
        let cache = config
            .read_cache
            .then(|| Arc::new(ReadCache::new(fence.clone(), CACHE_BYTES)));
        let store = PgStore {
            config: postgres::Config::from(pg),
            connector,
            table,
            ha_table: ha_table.clone(),
            fence: fence.clone(),
            client: Mutex::new(None),
            cache: cache.clone(),
            orphan: Mutex::new(None),
        };
        let writer = Writer::spawn(store, "bunker-pg-writer")?;
        Ok(PostgresBackend {
            reads: reads::ReadBatcher::new(pool.clone(), &backend_table),
            pool,
            table: backend_table,
            writer,
            ha_table,
            fence,
            cache,
        })
    }

    async fn client(&self) -> Result<deadpool_postgres::Object> {
        pooled(&self.pool).await
    }

    /// Keys `>= start` (or `> start` when `exclusive`), in order, at most `limit`.
    async fn keys_from(&self, start: &str, exclusive: bool, limit: i64) -> Result<Vec<String>> {
        let op = if exclusive { ">" } else { ">=" };
        let sql = format!(
            "SELECT key FROM {} WHERE key {op} $1 ORDER BY key LIMIT $2",
            self.table
        );
        let rows = self.rows("listing", &sql, &[&start, &limit]).await?;
        Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
    }

    /// Run a read with a statement prepared once per pooled connection (one round trip
    /// instead of a parse and an execute each time).
    async fn rows(
        &self,
        what: &str,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>> {
        on_live_connection(&self.pool, what, |client| async move {
            let statement = client.prepare_cached(sql).await?;
            client.query(&statement, params).await
        })
        .await
    }
}

async fn pooled(pool: &deadpool_postgres::Pool) -> Result<deadpool_postgres::Object> {
    pool.get()
        .await
        .map_err(|e| StorageError::Unavailable(format!("PostgreSQL: {e}")))
}

/// Tries a read may make when it finds its connection closed.
const READ_ATTEMPTS: usize = 3;

/// Runs the read `run` on a pooled connection; when the connection turns out closed (no answer
/// came, so the read did nothing), again on another, up to [`READ_ATTEMPTS`]. Before the last
/// try the idle connections opened before this read began are dropped: a cut that closed two
/// likely closed them all, and the last try then opens a new one. Only for reads: a write
/// without an answer may have committed (`PgStore`'s orphan handling).
async fn on_live_connection<T, F, Fut>(
    pool: &deadpool_postgres::Pool,
    what: &str,
    mut run: F,
) -> Result<T>
where
    F: FnMut(deadpool_postgres::Object) -> Fut,
    Fut: std::future::Future<Output = std::result::Result<T, tokio_postgres::Error>>,
{
    let started = std::time::Instant::now();
    let mut attempt = 1;
    loop {
        if attempt == READ_ATTEMPTS {
            drop(pool.retain(|_, metrics| metrics.created > started));
        }
        match run(pooled(pool).await?).await {
            Err(e) if e.is_closed() && attempt < READ_ATTEMPTS => {
                tracing::debug!("PostgreSQL {what}: connection closed, trying another");
                attempt += 1;
            }
            result => return result.map_err(|e| pg_error(what, e)),
        }
    }
}

fn pg_error(what: &str, e: tokio_postgres::Error) -> StorageError {
    match e.as_db_error() {
        // The server's own message ("db error" alone says nothing).
        Some(db) if !e.is_closed() => engine_error(
            format!("PostgreSQL {what}"),
            format!("{}: {}", db.code().code(), db.message()),
        ),
        _ => StorageError::Unavailable(format!("PostgreSQL {what}: {e}")),
    }
}

#[async_trait]
impl Backend for PostgresBackend {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        validate_key(key)?;
        let ticket = match self.cache.as_ref().map(|cache| cache.lookup(key)) {
            Some(Lookup::Hit(value)) => return Ok(value),
            Some(Lookup::Miss(ticket)) => Some(ticket),
            Some(Lookup::Bypass) | None => None,
        };
        let _timed = Timed::start("vault_postgres_get");
        let value = self.reads.get(key).await?;
        if let (Some(cache), Some(ticket)) = (&self.cache, ticket) {
            cache.fill(key, value.as_deref(), ticket);
        }
        Ok(value)
    }

    async fn batch(&self, ops: Vec<Op>) -> Result<()> {
        let _timed = Timed::start(write_metric(&ops));
        let epoch = crate::ha::current_write_epoch();
        self.writer.submit_tagged(ops, epoch).await
    }

    async fn drain(&self) -> Result<()> {
        self.writer.drain().await
    }

    async fn batch_unbounded(&self, ops: Vec<Op>) -> Result<()> {
        let epoch = crate::ha::current_write_epoch();
        self.writer.submit_unbounded(ops, epoch).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let _timed = Timed::start("vault_postgres_list");
        // As `listing::list_children`, one query per page or per child directory.
        let mut children = Vec::new();
        let (mut start, mut exclusive) = (prefix.to_owned(), false);
        loop {
            let keys = self.keys_from(&start, exclusive, LIST_PAGE).await?;
            let full = keys.len() as i64 == LIST_PAGE;
            let mut next = None;
            for key in &keys {
                let Some(rest) = key.strip_prefix(prefix) else {
                    return Ok(children);
                };
                match rest.split_once('/') {
                    Some((dir, _)) => {
                        children.push(format!("{dir}/"));
                        next = Some((format!("{prefix}{dir}0"), false));
                        break;
                    }
                    None if rest.is_empty() => {}
                    None => children.push(rest.to_owned()),
                }
            }
            match (next, keys.last()) {
                (Some(seek), _) => (start, exclusive) = seek,
                (None, Some(last)) if full => (start, exclusive) = (last.clone(), true),
                _ => return Ok(children),
            }
        }
    }

    async fn scan(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let (start, op) = match after {
            Some(after) if after >= prefix => (after, ">"),
            _ => (prefix, ">="),
        };
        let sql = format!(
            "SELECT key, value FROM {} WHERE key {op} $1 ORDER BY key LIMIT $2",
            self.table
        );
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self.rows("scanning", &sql, &[&start, &limit]).await?;
        Ok(rows
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, Vec<u8>>(1)))
            .take_while(|(k, _)| k.starts_with(prefix))
            .collect())
    }

    /// One `REPEATABLE READ READ ONLY` transaction on one pooled connection: every page is read
    /// from the same database snapshot, by key after the last page's last key.
    async fn snapshot(&self, sink: &mut dyn SnapshotSink) -> Result<()> {
        let mut client = self.client().await?;
        let txn = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(|e| pg_error("starting the snapshot transaction", e))?;
        let sql = format!(
            "SELECT key, value FROM {} WHERE key > $1 ORDER BY key LIMIT $2",
            self.table
        );
        let limit = i64::try_from(SNAPSHOT_PAGE_ENTRIES).unwrap_or(i64::MAX);
        // "" sorts before every key (keys are never empty).
        let mut after = String::new();
        loop {
            let rows = txn
                .query(&sql, &[&after, &limit])
                .await
                .map_err(|e| pg_error("reading a snapshot page", e))?;
            let page: SnapshotPage = rows
                .iter()
                .map(|r| (r.get::<_, String>(0), r.get::<_, Vec<u8>>(1)))
                .collect();
            let Some((last, _)) = page.last() else {
                break;
            };
            after = last.clone();
            sink.page(page).await?;
        }
        txn.commit()
            .await
            .map_err(|e| pg_error("ending the snapshot transaction", e))
    }

    fn metrics(&self) -> StorageMetrics {
        self.writer.counters.snapshot()
    }
}

fn ttl_secs(ttl: std::time::Duration) -> f64 {
    ttl.as_secs_f64()
}

/// RFC 3339 in UTC, formatted by the database (no date crate needed).
fn rfc3339(column: &str) -> String {
    format!("to_char(({column}) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")
}

impl PostgresBackend {
    fn ha(&self) -> Result<&str> {
        self.ha_table
            .as_deref()
            .ok_or_else(|| StorageError::InvalidArgument("ha_enabled is off".into()))
    }
}

fn node_json(node: &HaNode) -> Result<String> {
    serde_json::to_string(node).map_err(|e| engine_error("encoding the HA node", e))
}

fn parse_node(value: &str) -> HaNode {
    serde_json::from_str(value).unwrap_or_default()
}

fn to_epoch(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

#[async_trait]
impl HaBackend for PostgresBackend {
    async fn try_acquire(&self, me: &HaNode, ttl: std::time::Duration) -> Result<Acquire> {
        let ha = self.ha()?;
        // A plain read first: the upsert below locks the row even when it changes nothing,
        // and the active node's writes would queue behind every standby's poll.
        if let Some(holder) = self.holder().await? {
            if !holder.expired {
                return Ok(Acquire::Held(holder));
            }
        }
        // One statement: insert the first lock, or take an expired one with the next epoch.
        // Concurrent takers serialize on the row; the loser sees the winner's expiry.
        let sql = format!(
            "INSERT INTO {ha} AS l (ha_key, ha_identity, ha_value, epoch, acquired_at, valid_until) \
             VALUES ($1, $2, $3, 1, now(), now() + $4::float8 * interval '1 second') \
             ON CONFLICT (ha_key) DO UPDATE SET ha_identity = EXCLUDED.ha_identity, \
             ha_value = EXCLUDED.ha_value, epoch = l.epoch + 1, acquired_at = now(), \
             valid_until = EXCLUDED.valid_until WHERE l.valid_until < now() RETURNING l.epoch"
        );
        let value = node_json(me)?;
        let row = self
            .client()
            .await?
            .query_opt(&sql, &[&LOCK_KEY, &me.id, &value, &ttl_secs(ttl)])
            .await
            .map_err(|e| pg_error("taking the HA lock", e))?;
        if let Some(row) = row {
            return Ok(Acquire::Acquired(to_epoch(row.get(0))));
        }
        match self.holder().await? {
            Some(holder) => Ok(Acquire::Held(holder)),
            // Released between the two statements: the next attempt takes it.
            None => Err(StorageError::Unavailable(
                "the HA lock changed hands".into(),
            )),
        }
    }

    async fn renew(&self, node_id: &str, epoch: u64, ttl: std::time::Duration) -> Result<bool> {
        let ha = self.ha()?;
        let sql = format!(
            "UPDATE {ha} SET valid_until = now() + $4::float8 * interval '1 second' \
             WHERE ha_key = $1 AND ha_identity = $2 AND epoch = $3"
        );
        let epoch = i64::try_from(epoch).unwrap_or(i64::MAX);
        let n = self
            .client()
            .await?
            .execute(&sql, &[&LOCK_KEY, &node_id, &epoch, &ttl_secs(ttl)])
            .await
            .map_err(|e| pg_error("renewing the HA lock", e))?;
        Ok(n == 1)
    }

    async fn release(&self, node_id: &str, epoch: u64) -> Result<()> {
        let ha = self.ha()?;
        // Expire it rather than delete it: the epoch keeps counting.
        let sql = format!(
            "UPDATE {ha} SET valid_until = now() - interval '1 second' \
             WHERE ha_key = $1 AND ha_identity = $2 AND epoch = $3"
        );
        let epoch = i64::try_from(epoch).unwrap_or(i64::MAX);
        self.client()
            .await?
            .execute(&sql, &[&LOCK_KEY, &node_id, &epoch])
            .await
            .map_err(|e| pg_error("releasing the HA lock", e))?;
        Ok(())
    }

    async fn holder(&self) -> Result<Option<LockHolder>> {
        let ha = self.ha()?;
        let sql = format!(
            "SELECT ha_value, epoch, {}, valid_until < now() FROM {ha} WHERE ha_key = $1",
            rfc3339("acquired_at")
        );
        let row = self
            .client()
            .await?
            .query_opt(&sql, &[&LOCK_KEY])
            .await
            .map_err(|e| pg_error("reading the HA lock", e))?;
        Ok(row.map(|r| LockHolder {
            node: parse_node(r.get(0)),
            epoch: to_epoch(r.get(1)),
            acquired_at: r.get(2),
            expired: r.get(3),
        }))
    }

    async fn heartbeat(&self, me: &HaNode, max_age: std::time::Duration) -> Result<()> {
        let ha = self.ha()?;
        let client = self.client().await?;
        let sql = format!(
            "INSERT INTO {ha} (ha_key, ha_identity, ha_value, epoch, acquired_at, valid_until) \
             VALUES ($1, $2, $3, 0, now(), now() + $4::float8 * interval '1 second') \
             ON CONFLICT (ha_key) DO UPDATE SET ha_value = EXCLUDED.ha_value, \
             valid_until = EXCLUDED.valid_until"
        );
        let key = format!("node/{}", me.id);
        client
            .execute(&sql, &[&key, &me.id, &node_json(me)?, &ttl_secs(max_age)])
            .await
            .map_err(|e| pg_error("recording the HA heartbeat", e))?;
        let sql = format!("DELETE FROM {ha} WHERE ha_key LIKE 'node/%' AND valid_until < now()");
        client
            .execute(&sql, &[])
            .await
            .map_err(|e| pg_error("forgetting old HA heartbeats", e))?;
        Ok(())
    }

    async fn nodes(&self, max_age: std::time::Duration) -> Result<Vec<NodeHeartbeat>> {
        let ha = self.ha()?;
        let sql = format!(
            // A heartbeat is kept `max_age` from when it was sent.
            "SELECT ha_value, {} FROM {ha} WHERE ha_key LIKE 'node/%' AND valid_until >= now() \
             ORDER BY ha_key",
            rfc3339("valid_until - $1::float8 * interval '1 second'")
        );
        let rows = self
            .client()
            .await?
            .query(&sql, &[&ttl_secs(max_age)])
            .await
            .map_err(|e| pg_error("listing HA nodes", e))?;
        Ok(rows
            .iter()
            .map(|r| NodeHeartbeat {
                node: parse_node(r.get(0)),
                last_echo: r.get(1),
            })
            .collect())
    }

    fn fence(&self) -> Arc<FenceCell> {
        self.fence.clone()
    }
}

impl crate::HookedBackend for PostgresBackend {
    fn set_commit_hook(&self, hook: Option<Arc<dyn CommitHook>>) {
        self.writer.hook.set(hook);
    }
}

/// The writer's connection: opened on first use and after any failure.
struct PgStore {
    config: postgres::Config,
    connector: tokio_postgres_rustls::MakeRustlsConnect,
    table: String,
    ha_table: Option<String>,
    fence: Arc<FenceCell>,
    client: Mutex<Option<WriterConnection>>,
    /// Updated here, in commit order, before any caller hears of the commit.
    cache: Option<Arc<ReadCache>>,
    /// The server process of a connection that broke during a commit: until it is gone, its
    /// statement may still commit, and the cache stays suspended.
    orphan: Mutex<Option<i32>>,
}

/// The writer's connection, its one prepared write statement, and its server process id.
struct WriterConnection {
    client: postgres::Client,
    write: postgres::Statement,
    /// The same write without the HA fence: the leading statements of a transaction that
    /// spans several, whose last statement carries the fence (see `commit_with`).
    bulk: postgres::Statement,
    pid: i32,
}

impl PgStore {
    /// The whole group in **one statement** (one round trip, one implicit transaction, one
    /// WAL flush): upsert of the puts and delete of the deletes as data-modifying CTEs, and
    /// with HA the fence as a third CTE they both depend on. The fence's `FOR SHARE` holds the
    /// lock row until the statement commits; when it finds no row (another holder or epoch),
    /// the upsert and the delete change nothing and the write is refused.
    fn write_sql(&self, fenced: bool) -> String {
        let t = &self.table;
        match self.ha_table.as_ref().filter(|_| fenced) {
            None => format!(
                "WITH ins AS (INSERT INTO {t} (key, value) \
                 SELECT * FROM UNNEST($1::text[], $2::bytea[]) \
                 ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value RETURNING 1), \
                 del AS (DELETE FROM {t} WHERE key = ANY($3::text[]) RETURNING 1) \
                 SELECT 1::bigint"
            ),
            Some(ha) => format!(
                "WITH fence AS (SELECT 1 FROM {ha} WHERE ha_key = $4 AND ha_identity = $5 \
                 AND epoch = $6 FOR SHARE), \
                 ins AS (INSERT INTO {t} (key, value) \
                 SELECT k, v FROM UNNEST($1::text[], $2::bytea[]) AS u(k, v) \
                 WHERE EXISTS (SELECT 1 FROM fence) \
                 ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value RETURNING 1), \
                 del AS (DELETE FROM {t} WHERE key = ANY($3::text[]) \
                 AND EXISTS (SELECT 1 FROM fence) RETURNING 1) \
                 SELECT count(*) FROM fence"
            ),
        }
    }

    fn connect(&self) -> Result<WriterConnection> {
        let mut client = self
            .config
            .connect(self.connector.clone())
            .map_err(|e| StorageError::Unavailable(format!("PostgreSQL: {e}")))?;
        let write = client
            .prepare(&self.write_sql(true))
            .map_err(|e| pg_error("preparing the write statement", e))?;
        let pid = client
            .query_one("SELECT pg_backend_pid()", &[])
            .map_err(|e| pg_error("reading the session's process id", e))?
            .get(0);
        let bulk = match self.ha_table {
            None => write.clone(),
            Some(_) => client
                .prepare(&self.write_sql(false))
                .map_err(|e| pg_error("preparing the write statement", e))?,
        };
        Ok(WriterConnection {
            client,
            write,
            bulk,
            pid,
        })
    }

    /// Ends the session of a commit whose outcome was unknown and resumes the cache once that
    /// session is gone (its statement then either committed or never will). Terminating a
    /// session of the same role needs no privilege; if it fails, the cache stays suspended and
    /// this is tried again at the next commit.
    fn settle_orphan(&self, conn: &mut WriterConnection, cache: &ReadCache) {
        let mut orphan = self
            .orphan
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(pid) = *orphan else { return };
        let _ = conn
            .client
            .query_one("SELECT pg_terminate_backend($1)", &[&pid]);
        match conn.client.query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = $1",
            &[&pid],
        ) {
            Ok(row) if row.get::<_, i64>(0) == 0 => {
                *orphan = None;
                cache.resume();
            }
            Ok(_) => tracing::debug!(pid, "the session of an unknown write is still ending"),
            Err(e) => tracing::warn!(error = %e, "checking the session of an unknown write failed"),
        }
    }

    /// Commits `batches`; on success, the scope the data was written under (for the cache).
    /// `unanswered` is set when the statement failed without an answer from the server (it may
    /// still commit there).
    fn commit_with(
        &self,
        conn: &mut WriterConnection,
        batches: &[&[Op]],
        unanswered: &mut bool,
    ) -> Result<Option<ReadScope>> {
        let mut write_error = |e: tokio_postgres::Error| {
            *unanswered = e.as_db_error().is_none();
            pg_error("writing", e)
        };
        // The group's net effect: each key's last operation (a key appears once in the
        // statement, which an upsert requires).
        let mut last: std::collections::BTreeMap<&str, Option<&[u8]>> = Default::default();
        for op in batches.iter().flat_map(|b| b.iter()) {
            match op {
                Op::Put { key, value } => last.insert(key, Some(value)),
                Op::Delete { key } => last.insert(key, None),
            };
        }
        let fence_and_term = self.fence.get_with_term();
        let fence = match (fence_and_term.0, &self.ha_table) {
            (Fence::Off, _) => None,
            (Fence::Active { node_id, epoch }, Some(_)) => Some((node_id, epoch)),
            _ => return Err(crate::ha::fenced_error()),
        };
        let scope = match &fence {
            None => ReadScope::Single,
            Some((_, epoch)) => ReadScope::Epoch {
                epoch: *epoch,
                term: fence_and_term.1,
            },
        };
        let entries: Vec<WriteRow<'_>> = last.into_iter().collect();
        let chunks = statement_chunks(&entries);
        let WriterConnection {
            client,
            write,
            bulk,
            ..
        } = conn;
        let fenced_out = match chunks.split_last() {
            None => false,
            // One statement: its own transaction.
            Some((last, [])) => {
                !write_chunk(client, write, last, fence.as_ref()).map_err(&mut write_error)?
            }
            // A group larger than one statement should carry (a snapshot restore): several
            // statements, one transaction, all or nothing. Only the last takes the fence's row
            // lock, held from there to the commit: taken first, it would hold the lock row for
            // the whole transaction and block this node's own renewals of it.
            Some((last, leading)) => {
                let mut txn = client.transaction().map_err(&mut write_error)?;
                for chunk in leading {
                    write_chunk(&mut txn, bulk, chunk, None).map_err(&mut write_error)?;
                }
                let held =
                    write_chunk(&mut txn, write, last, fence.as_ref()).map_err(&mut write_error)?;
                if held {
                    txn.commit().map_err(&mut write_error)?;
                }
                !held
            }
        };
        if let (true, Some((_, epoch))) = (fenced_out, &fence) {
            self.fence.lost(*epoch);
            tracing::warn!(epoch, "write refused: this node lost the HA lock");
            return Err(crate::ha::lock_lost_error());
        }
        Ok(Some(scope))
    }
}

/// One row of a write: a key and its new value (`None`: deleted).
type WriteRow<'a> = (&'a str, Option<&'a [u8]>);

/// Most rows one write statement carries, and about the most key and value bytes (a bound well
/// below PostgreSQL's 1 GB per parameter).
const STATEMENT_ROWS: usize = 10_000;
const STATEMENT_BYTES: usize = 64 * 1024 * 1024;

/// `entries` cut into runs of at most [`STATEMENT_ROWS`] rows and about [`STATEMENT_BYTES`]
/// (a run always takes at least one entry).
fn statement_chunks<'a>(entries: &'a [WriteRow<'a>]) -> Vec<&'a [WriteRow<'a>]> {
    let mut chunks = Vec::new();
    let mut rest = entries;
    while !rest.is_empty() {
        let mut bytes = 0usize;
        let mut take = 0usize;
        for (key, value) in rest.iter().take(STATEMENT_ROWS) {
            let size = key.len() + value.map_or(0, <[u8]>::len);
            if take > 0 && bytes.saturating_add(size) > STATEMENT_BYTES {
                break;
            }
            bytes = bytes.saturating_add(size);
            take += 1;
        }
        let (chunk, tail) = rest.split_at(take.max(1).min(rest.len()));
        chunks.push(chunk);
        rest = tail;
    }
    chunks
}

/// Runs the write statement for `chunk` (upserts and deletes) on `client`, fenced by the HA
/// lock at `fence` when given. Returns whether the fence held (without HA: always).
fn write_chunk(
    client: &mut impl postgres::GenericClient,
    write: &postgres::Statement,
    chunk: &[WriteRow<'_>],
    fence: Option<&(String, u64)>,
) -> std::result::Result<bool, tokio_postgres::Error> {
    let (mut put_keys, mut put_values, mut deletes) = (Vec::new(), Vec::new(), Vec::new());
    for (key, value) in chunk {
        match value {
            Some(v) => {
                put_keys.push(*key);
                put_values.push(*v);
            }
            None => deletes.push(*key),
        }
    }
    match fence {
        None => {
            client.query_one(write, &[&put_keys, &put_values, &deletes])?;
            Ok(true)
        }
        Some((node_id, epoch)) => {
            let epoch_sql = i64::try_from(*epoch).unwrap_or(i64::MAX);
            let row = client.query_one(
                write,
                &[
                    &put_keys,
                    &put_values,
                    &deletes,
                    &LOCK_KEY,
                    node_id,
                    &epoch_sql,
                ],
            )?;
            Ok(row.get::<_, i64>(0) > 0)
        }
    }
}

impl GroupStore for PgStore {
    fn admits(&self, epoch: Option<u64>) -> Result<()> {
        match (self.fence.get(), epoch) {
            (Fence::Active { epoch: held, .. }, Some(e)) if held != e => {
                tracing::warn!(
                    request_epoch = e,
                    held,
                    "write refused: admitted under an earlier HA epoch"
                );
                Err(crate::ha::fenced_error())
            }
            _ => Ok(()),
        }
    }

    /// PostgreSQL feeds no index (`feeds_indexes` is false): the values a write replaces would
    /// cost a read round trip inside every group's transaction.
    fn commit(&self, batches: &[&[Op]], _index: Option<&dyn crate::CommitIndex>) -> Result<()> {
        let mut slot = self
            .client
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if slot.as_ref().is_none_or(|c| c.client.is_closed()) {
            *slot = Some(self.connect()?);
        }
        let Some(conn) = slot.as_mut() else {
            return Err(StorageError::Unavailable(
                "PostgreSQL: no connection".into(),
            ));
        };
        if let Some(cache) = &self.cache {
            self.settle_orphan(conn, cache);
        }
        let mut unanswered = false;
        let result = self.commit_with(conn, batches, &mut unanswered);
        if let Some(cache) = &self.cache {
            match &result {
                Ok(scope) => cache.committed(batches, *scope),
                // No answer: the statement may still commit on the server, later.
                Err(_) if unanswered || conn.client.is_closed() => {
                    cache.suspend();
                    *self
                        .orphan
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(conn.pid);
                }
                Err(_) => cache.failed(batches),
            }
        }
        if result.is_err() && conn.client.is_closed() {
            *slot = None;
        }
        result.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn libpq_tls_options_are_taken_out() {
        let (url, tls) = split_tls_options(
            "postgres://u:p@db:5432/b?sslmode=verify-full&sslrootcert=/etc/ca.pem&application_name=x",
        );
        assert_eq!(
            url,
            "postgres://u:p@db:5432/b?sslmode=require&application_name=x"
        );
        assert_eq!(
            tls,
            TlsOptions {
                disable: false,
                root_cert: Some("/etc/ca.pem".into())
            }
        );
        let (url, tls) = split_tls_options("host=db sslmode=disable user=u");
        assert_eq!(url, "host=db sslmode=disable user=u");
        assert!(tls.disable);
        let (url, _) = split_tls_options("postgres://db/b");
        assert_eq!(url, "postgres://db/b?sslmode=require");
        let (url, _) = split_tls_options("postgres://db/b?application_name=x");
        assert_eq!(url, "postgres://db/b?application_name=x&sslmode=require");
        let (url, _) = split_tls_options("host=db user=u");
        assert_eq!(url, "host=db user=u sslmode=require");
        let (url, _) = split_tls_options("postgres://db/b?sslmode=prefer");
        assert_eq!(url, "postgres://db/b?sslmode=require");
    }

    #[test]
    fn table_names_are_checked_and_quoted() {
        assert_eq!(
            quoted_table("vault_kv_store").unwrap(),
            "\"vault_kv_store\""
        );
        assert_eq!(quoted_table("s.t1").unwrap(), "\"s\".\"t1\"");
        for bad in ["", "a;drop", "a.b.c", "1abc", "a b", "a\"b"] {
            assert!(quoted_table(bad).is_err(), "{bad}");
        }
    }
}
