//! Point reads that miss the read cache, coalesced: the reads waiting at one moment go to the
//! database as **one** query (`WHERE key = ANY($1)`), as the writes of one moment go as one
//! statement (`crate::group_commit`).
//!
//! Why: a KV v2 write must read the key's metadata first, and a new key is never in the cache,
//! so under 64 writers every write cost a query of its own; PostgreSQL's per-statement work
//! (and the client's), not the data, was what the CPU went to. A read is never delayed to form
//! a batch: when no query runs, it runs at once. While one runs, the reads that arrive wait
//! for it and go together in the next one (up to [`MAX_KEYS`]); a further query starts at once
//! only for a full batch, up to [`MAX_QUERIES`] at a time. (Measured on 2 cores, 64 writers
//! of new keys: allowing 4 queries at once from the first read formed almost no batches and
//! gained little; one at a time took the writes from about 6,300/s to 9,600/s.)
//!
//! Each query runs in a task of its own, so a request that gives up (its client gone) never
//! abandons the reads that rode with it.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::oneshot;

use crate::{Result, StorageError};

/// Queries in flight at once (each holds a pooled connection).
pub(super) const MAX_QUERIES: usize = 4;
/// Keys one query carries at most; this many waiting start another query.
pub(super) const MAX_KEYS: usize = 64;

type Answer = std::result::Result<Option<Vec<u8>>, Arc<StorageError>>;
type Waiting = (String, oneshot::Sender<Answer>);

pub(super) struct ReadBatcher {
    pool: deadpool_postgres::Pool,
    /// `SELECT key, value FROM <table> WHERE key = ANY($1)`.
    sql: String,
    queue: Mutex<VecDeque<Waiting>>,
    /// Query tasks running.
    running: AtomicUsize,
}

impl ReadBatcher {
    pub(super) fn new(pool: deadpool_postgres::Pool, table: &str) -> Arc<Self> {
        Arc::new(ReadBatcher {
            pool,
            sql: format!("SELECT key, value FROM {table} WHERE key = ANY($1::text[])"),
            queue: Mutex::new(VecDeque::new()),
            running: AtomicUsize::new(0),
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

    /// Starts a query task when none runs, or when a full batch waits and fewer than
    /// [`MAX_QUERIES`] run; otherwise a running task takes what is queued.
    fn drive(self: &Arc<Self>) {
        loop {
            let running = self.running.load(Ordering::SeqCst);
            let queued = self.queue().len();
            if queued == 0 || (running > 0 && (queued < MAX_KEYS || running >= MAX_QUERIES)) {
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
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                let batch: Vec<Waiting> = {
                    let mut queue = this.queue();
                    let n = queue.len().min(MAX_KEYS);
                    queue.drain(..n).collect()
                };
                if batch.is_empty() {
                    this.running.fetch_sub(1, Ordering::SeqCst);
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
        let keys: Vec<&str> = batch.iter().map(|(k, _)| k.as_str()).collect();
        match self.query(&keys).await {
            Ok(found) => {
                for (key, tx) in batch {
                    let _ = tx.send(Ok(found.get(&key).cloned()));
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
        let client = self
            .pool
            .get()
            .await
            .map_err(|e| StorageError::Unavailable(format!("PostgreSQL: {e}")))?;
        let statement = client
            .prepare_cached(&self.sql)
            .await
            .map_err(|e| super::pg_error("reading", e))?;
        let rows = client
            .query(&statement, &[&keys])
            .await
            .map_err(|e| super::pg_error("reading", e))?;
        rows.iter()
            .map(|row| {
                let key: String = row.try_get(0).map_err(|e| super::pg_error("reading", e))?;
                let value: Vec<u8> = row.try_get(1).map_err(|e| super::pg_error("reading", e))?;
                Ok((key, value))
            })
            .collect()
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
