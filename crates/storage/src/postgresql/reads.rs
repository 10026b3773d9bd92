//! Point reads that miss the read cache, coalesced: the reads waiting at one moment go to the
//! database as **one** query (`WHERE key = ANY($1)`), as the writes of one moment go as one
//! statement (`crate::group_commit`).
//!
//! Why: a KV v2 write must read the key's metadata first, and a new key is never in the cache,
//! so under 64 writers every write cost a query of its own; PostgreSQL's per-statement work
//! (and the client's), not the data, was what the CPU went to. When no query runs, a read goes
//! at once. While one runs, the reads that arrive wait for it and go together in the next one
//! (up to [`MAX_KEYS`]). Another query starts beside it only for a full batch, or when the
//! running one has taken longer than [`STALL`] (so one slow query does not hold every read on
//! the node), up to [`MAX_QUERIES`]. A task stops when it finds nothing queued. (A task beside
//! others used to stop as soon as fewer than a full batch waited; beside a stalled query that
//! left the reads queued behind the stall, so it no longer does.)
//! (Measured on 2 cores, 64 writers of new keys: allowing 4 queries at once from the first read
//! formed almost no batches and gained little; one at a time took the writes from about
//! 6,300/s to 9,600/s.)
//!
//! Bounds: a query takes at most [`QUERY_TIMEOUT`]; a batch the server refuses as a whole (one
//! key it cannot take) is retried key by key, so one bad key fails only its own read; reads
//! whose caller has gone are left out; values are moved, not copied, to their reader. Query
//! tasks are spawned, so a request that gives up never strands the reads that rode with it.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::{Result, StorageError};

/// Queries in flight at once (each holds a pooled connection).
pub(super) const MAX_QUERIES: usize = 4;
/// Keys one query carries at most; this many waiting start another query.
pub(super) const MAX_KEYS: usize = 64;
/// A query running longer than this lets the next reads start a query of their own.
pub(super) const STALL: Duration = Duration::from_millis(20);
/// Longest a read query may take (the single-key reads before had only the pool's wait).
pub(super) const QUERY_TIMEOUT: Duration = Duration::from_secs(30);

/// The clock the query start times count from.
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

fn now_us() -> u64 {
    u64::try_from(EPOCH.elapsed().as_micros()).unwrap_or(u64::MAX)
}

type Answer = std::result::Result<Option<Vec<u8>>, Arc<StorageError>>;
type Waiting = (String, oneshot::Sender<Answer>);

pub(super) struct ReadBatcher {
    pool: deadpool_postgres::Pool,
    /// `SELECT key, value FROM <table> WHERE key = ANY($1)`.
    sql: String,
    queue: Mutex<VecDeque<Waiting>>,
    /// Query tasks running.
    running: AtomicUsize,
    /// When the last query started ([`now_us`]), to see a stalled one.
    query_started_us: AtomicU64,
}

/// Counts a query task as running for as long as it lives, panics and cancellation included.
struct Running(Arc<ReadBatcher>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
    }
}

impl ReadBatcher {
    pub(super) fn new(pool: deadpool_postgres::Pool, table: &str) -> Arc<Self> {
        Arc::new(ReadBatcher {
            pool,
            sql: format!("SELECT key, value FROM {table} WHERE key = ANY($1::text[])"),
            queue: Mutex::new(VecDeque::new()),
            running: AtomicUsize::new(0),
            query_started_us: AtomicU64::new(0),
        })
    }

    /// The value of `key` in the database.
    pub(super) async fn get(self: &Arc<Self>, key: &str) -> Result<Option<Vec<u8>>> {
        let (tx, rx) = oneshot::channel();
        self.queue().push_back((key.to_owned(), tx));
        self.drive();
        match rx.await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(copy_error(&e)),
            Err(_) => Err(StorageError::Unavailable(
                "PostgreSQL: a read was dropped".into(),
            )),
        }
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<Waiting>> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts a query task when none runs, or beside running ones (fewer than
    /// [`MAX_QUERIES`]) when a full batch waits or the last query started over [`STALL`] ago;
    /// otherwise a running task takes what is queued.
    fn drive(self: &Arc<Self>) {
        loop {
            let running = self.running.load(Ordering::SeqCst);
            let queued = self.queue().len();
            let stalled = now_us().saturating_sub(self.query_started_us.load(Ordering::SeqCst))
                > STALL.as_micros() as u64;
            let wanted = running == 0 || (running < MAX_QUERIES && (queued >= MAX_KEYS || stalled));
            if queued == 0 || !wanted {
                return;
            }
            if self
                .running
                .compare_exchange(running, running + 1, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                break;
            }
        }
        let running = Running(self.clone());
        tokio::spawn(async move {
            let this = running.0.clone();
            loop {
                let batch: Vec<Waiting> = {
                    let mut queue = this.queue();
                    let n = queue.len().min(MAX_KEYS);
                    queue.drain(..n).collect()
                };
                if batch.is_empty() {
                    drop(running);
                    // A read queued after the look above saw this task running and left its
                    // read to it: start a task for it.
                    this.drive();
                    return;
                }
                this.answer(batch).await;
            }
        });
    }

    async fn answer(&self, batch: Vec<Waiting>) {
        // Reads whose caller has gone are not asked for.
        let batch: Vec<Waiting> = batch
            .into_iter()
            .filter(|(_, tx)| !tx.is_closed())
            .collect();
        if batch.is_empty() {
            return;
        }
        let keys: Vec<&str> = batch.iter().map(|(k, _)| k.as_str()).collect();
        self.query_started_us.store(now_us(), Ordering::SeqCst);
        match self.query(&keys).await {
            Ok(found) => deliver(batch, found),
            // The server refused the statement (not the connection): maybe one key it cannot
            // take. Each read alone, so only that one fails.
            Err(StorageError::Engine { .. }) if batch.len() > 1 => {
                for (key, tx) in batch {
                    let answer = self
                        .query(&[key.as_str()])
                        .await
                        .map(|mut found| found.remove(&key))
                        .map_err(Arc::new);
                    let _ = tx.send(answer);
                }
            }
            Err(e) => {
                let e = Arc::new(e);
                for (_, tx) in batch {
                    let _ = tx.send(Err(e.clone()));
                }
            }
        }
    }

    async fn query(&self, keys: &[&str]) -> Result<HashMap<String, Vec<u8>>> {
        tokio::time::timeout(QUERY_TIMEOUT, self.query_unbounded(keys))
            .await
            .map_err(|_| {
                StorageError::Unavailable(format!(
                    "PostgreSQL: a read took longer than {} s",
                    QUERY_TIMEOUT.as_secs()
                ))
            })?
    }

    async fn query_unbounded(&self, keys: &[&str]) -> Result<HashMap<String, Vec<u8>>> {
        let sql = self.sql.as_str();
        let rows = super::on_live_connection(&self.pool, "reading", |client| async move {
            let statement = client.prepare_cached(sql).await?;
            client.query(&statement, &[&keys]).await
        })
        .await?;
        // Row by row, so each row's bytes are freed once copied out.
        rows.into_iter()
            .map(|row| {
                let key: String = row.try_get(0).map_err(|e| super::pg_error("reading", e))?;
                let value: Vec<u8> = row.try_get(1).map_err(|e| super::pg_error("reading", e))?;
                Ok((key, value))
            })
            .collect()
    }
}

/// Each read its key's value: moved to the last reader of a key, copied for the ones before
/// (a key asked twice in one batch).
fn deliver(batch: Vec<Waiting>, mut found: HashMap<String, Vec<u8>>) {
    let last: Vec<bool> = batch
        .iter()
        .enumerate()
        .map(|(i, (key, _))| !batch.iter().skip(i + 1).any(|(k, _)| k == key))
        .collect();
    for ((key, tx), last) in batch.into_iter().zip(last) {
        let value = if last {
            found.remove(&key)
        } else {
            found.get(&key).cloned()
        };
        let _ = tx.send(Ok(value));
    }
}

/// One query's failure, for each read that rode with it (`pg_error` makes only these two).
fn copy_error(e: &StorageError) -> StorageError {
    match e {
        StorageError::Unavailable(m) => StorageError::Unavailable(m.clone()),
        StorageError::Engine { context, message } => StorageError::Engine {
            context: context.clone(),
            message: message.clone(),
        },
        other => StorageError::Engine {
            context: "PostgreSQL reading".into(),
            message: other.to_string(),
        },
    }
}
