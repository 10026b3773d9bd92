//! A read cache in front of a shared database, for the node that writes to it.
//!
//! Every request reads several keys (the token, its policies, the mount's configuration, then
//! the secret). On PostgreSQL each read is a round trip and the database's CPU; on a 2-core
//! machine those reads, not the writes, were what capped throughput. Vault has the same layer
//! (`physical/cache.go`, on by default, `disable_cache` turns it off). This one differs from
//! Vault's where Vault's is unsafe:
//!
//! - **Only a node that is the sole writer caches.** Without HA, that is this node
//!   ([`ReadScope::Single`]). With HA, only the active node, and only **within its lease**
//!   ([`crate::FenceCell::read_scope`]): a node paused past its TTL may have been replaced, so it
//!   reads from the database until it renews. Each stretch of being active is a new scope
//!   (the lock epoch, and the fence's term in case an epoch number comes back): entries of an
//!   earlier scope are dropped before anything is read under a new one (another node may have
//!   written in between). While nothing may be cached, the entries are dropped.
//! - **Writes update it in commit order.** The writer thread, which decides commit order,
//!   stores each committed value (write-through) or, after a commit the server refused, drops
//!   the keys. Callers never update it, so two writes of one key can never leave the older
//!   value cached.
//! - **A commit without an answer suspends it.** When the connection breaks during a commit,
//!   the statement may still be running on the server (waiting on a lock, on a slow fsync, on
//!   a synchronous replica) and commit later, after a read cached the old value. So the cache
//!   is emptied and suspended until the writer has terminated that session and seen it gone
//!   from `pg_stat_activity` (its outcome is then final); meanwhile reads go to the database.
//! - **A read never caches a value a write has replaced.** Keys fall in stripes, each with a
//!   generation the writer bumps under the stripe's lock. A read notes the generation (and the
//!   scope's) before it asks the database, and stores its answer only if neither moved; a
//!   write that raced the read bumped one of them.
//! - **Bounded by bytes** ([`CACHE_BYTES`]), not by entries as Vault's `cache_size` is: values
//!   range from bytes to megabytes, so an entry count does not bound memory. Values larger than
//!   [`MAX_CACHED_VALUE`] are not cached. Eviction is quick_cache's (S3-FIFO), which keeps hot
//!   keys (tokens, policies) under a scan of cold ones.
//! - Absent keys are cached too: many reads look for configuration that is not there.
//!
//! Lists and scans are not cached; only point reads are.

use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Instant;

use crate::ha::{FenceCell, ReadScope};
use crate::Op;

/// Most bytes (keys, values and per-entry overhead) the cache holds.
pub const CACHE_BYTES: u64 = 64 * 1024 * 1024;
/// Values larger than this are read from the database every time.
pub const MAX_CACHED_VALUE: usize = 256 * 1024;
/// Bookkeeping counted per entry on top of its key and value (the String and Arc headers, the
/// cache's slot and hash entry).
const ENTRY_OVERHEAD: u64 = 160;
/// quick_cache's shards, fixed: its default (four per CPU) would cut the capacity into shards
/// too small for large values on a large host.
const SHARDS: usize = 16;
/// Stripes of write generations (a power of two).
const STRIPES: usize = 1024;

type Value = Option<Arc<[u8]>>;

#[derive(Clone)]
struct ByteWeight;

impl quick_cache::Weighter<String, Value> for ByteWeight {
    fn weight(&self, key: &String, value: &Value) -> u64 {
        let value_len = value.as_ref().map_or(0, |v| v.len());
        (key.len() as u64)
            .saturating_add(value_len as u64)
            .saturating_add(ENTRY_OVERHEAD)
    }
}

/// What a read noted before asking the database; see [`ReadCache::fill`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ticket {
    scope: ReadScope,
    scope_generation: u64,
    stripe_generation: u64,
}

/// The result of looking a key up.
pub(crate) enum Lookup {
    /// The cached answer: the value, or `None` for a key known to be absent.
    Hit(Option<Vec<u8>>),
    /// Not cached: read the database, then hand the answer and this ticket to `fill`.
    Miss(Ticket),
    /// Caching is off now (a standby, or an active node past its lease): read the database.
    Bypass,
}

#[derive(Debug, Default)]
struct ScopeState {
    current: Option<ReadScope>,
    generation: u64,
    /// A commit's outcome is unknown and its statement may still commit on the server: nothing
    /// is cached until the writer has made sure it cannot ([`ReadCache::suspend`]).
    suspended: bool,
}

pub(crate) struct ReadCache {
    entries: quick_cache::sync::Cache<String, Value, ByteWeight>,
    scope: RwLock<ScopeState>,
    stripes: Vec<Mutex<u64>>,
    /// Never used: `stripe` always finds its index in `stripes`; this only spares it a panic
    /// path.
    spare: Mutex<u64>,
    fence: Arc<FenceCell>,
}

impl ReadCache {
    pub(crate) fn new(fence: Arc<FenceCell>, capacity_bytes: u64) -> ReadCache {
        // An estimate of the entry count sizes quick_cache's tables; a few hundred bytes each.
        let estimated = usize::try_from(capacity_bytes / 512)
            .unwrap_or(usize::MAX)
            .max(SHARDS * 32);
        let options = quick_cache::OptionsBuilder::new()
            .estimated_items_capacity(estimated)
            .weight_capacity(capacity_bytes)
            .shards(SHARDS)
            .build();
        let entries = match options {
            Ok(options) => quick_cache::sync::Cache::with_options(
                options,
                ByteWeight,
                Default::default(),
                Default::default(),
            ),
            // Only an invalid option (none is) fails; the default sharding is then used.
            Err(_) => {
                quick_cache::sync::Cache::with_weighter(estimated, capacity_bytes, ByteWeight)
            }
        };
        ReadCache {
            entries,
            scope: RwLock::new(ScopeState::default()),
            stripes: (0..STRIPES).map(|_| Mutex::new(0)).collect(),
            spare: Mutex::new(0),
            fence,
        }
    }

    fn stripe(&self, key: &str) -> &Mutex<u64> {
        // FNV-1a: cheap, and spreads paths that share long prefixes.
        let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        let index = usize::try_from(hash).unwrap_or(0) & (STRIPES - 1);
        self.stripes.get(index).unwrap_or(&self.spare)
    }

    /// The scope reads are cached under now, after dropping what an earlier scope cached. When
    /// nothing may be cached (a standby, a lapsed lease, a suspension) the entries are dropped
    /// too: they are not needed, and they would be stale by the time they could be.
    fn enter_scope(&self) -> Option<(ReadScope, u64)> {
        let scope = self.fence.read_scope(Instant::now());
        {
            let state = self.scope.read().unwrap_or_else(PoisonError::into_inner);
            if state.suspended {
                return None;
            }
            match scope {
                Some(scope) if state.current == Some(scope) => {
                    return Some((scope, state.generation))
                }
                None if state.current.is_none() => return None,
                _ => {}
            }
        }
        let mut state = self.scope.write().unwrap_or_else(PoisonError::into_inner);
        if state.suspended {
            return None;
        }
        if state.current != scope {
            self.entries.clear();
            state.current = scope;
            state.generation = state.generation.wrapping_add(1);
            tracing::debug!(?scope, "read cache: scope changed, entries dropped");
        }
        scope.map(|scope| (scope, state.generation))
    }

    /// Stops caching and drops every entry: a commit was sent and its outcome is unknown (the
    /// connection broke), so the server may still apply it at any moment, and a value read now
    /// could be made stale by it without any write of ours to say so. The writer calls
    /// [`ReadCache::resume`] once that statement can no longer commit.
    pub(crate) fn suspend(&self) {
        let mut state = self.scope.write().unwrap_or_else(PoisonError::into_inner);
        self.entries.clear();
        state.suspended = true;
        state.current = None;
        state.generation = state.generation.wrapping_add(1);
        metrics::counter!("bunker_storage_read_cache_suspensions_total").increment(1);
        tracing::warn!("read cache suspended: a write's outcome is unknown until its session ends");
    }

    pub(crate) fn resume(&self) {
        let mut state = self.scope.write().unwrap_or_else(PoisonError::into_inner);
        if state.suspended {
            state.suspended = false;
            state.generation = state.generation.wrapping_add(1);
            tracing::info!("read cache resumed: the session of the unknown write has ended");
        }
    }

    pub(crate) fn lookup(&self, key: &str) -> Lookup {
        let Some((scope, scope_generation)) = self.enter_scope() else {
            return Lookup::Bypass;
        };
        // The stripe's generation is read before the entry: a write that lands after this
        // point changes it, and `fill` then declines.
        let stripe_generation = *self
            .stripe(key)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(value) = self.entries.get(key) {
            metrics::counter!("bunker_storage_read_cache_hits_total").increment(1);
            return Lookup::Hit(value.map(|v| v.to_vec()));
        }
        metrics::counter!("bunker_storage_read_cache_misses_total").increment(1);
        Lookup::Miss(Ticket {
            scope,
            scope_generation,
            stripe_generation,
        })
    }

    /// Stores what the database answered for `key`, unless a write or a change of scope came
    /// in between (then the answer may already be stale, and the next read asks again).
    pub(crate) fn fill(&self, key: &str, value: Option<&[u8]>, ticket: Ticket) {
        if value.is_some_and(|v| v.len() > MAX_CACHED_VALUE) {
            return;
        }
        let state = self.scope.read().unwrap_or_else(PoisonError::into_inner);
        if state.current != Some(ticket.scope) || state.generation != ticket.scope_generation {
            return;
        }
        let stripe = self
            .stripe(key)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if *stripe == ticket.stripe_generation {
            self.entries.insert(key.to_owned(), value.map(Arc::from));
        }
    }

    /// After the writer committed `batches` (in order) under `scope`: the new values replace
    /// the cached ones. A commit made under another scope than the cache's only drops keys.
    pub(crate) fn committed(&self, batches: &[&[Op]], scope: Option<ReadScope>) {
        let state = self.scope.read().unwrap_or_else(PoisonError::into_inner);
        let store = scope.is_some() && state.current == scope;
        for op in batches.iter().flat_map(|batch| batch.iter()) {
            let mut stripe = self
                .stripe(op.key())
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            *stripe = stripe.wrapping_add(1);
            match op {
                Op::Put { key, value } if store && value.len() <= MAX_CACHED_VALUE => {
                    self.entries
                        .insert(key.clone(), Some(Arc::from(value.as_slice())));
                }
                Op::Delete { key } if store => {
                    self.entries.insert(key.clone(), None);
                }
                _ => {
                    self.entries.remove(op.key());
                }
            }
        }
    }

    /// After a commit of `batches` failed with an answer from the server (nothing was applied):
    /// their keys are dropped all the same, and the next read asks the database. A failure
    /// without an answer is [`ReadCache::suspend`].
    pub(crate) fn failed(&self, batches: &[&[Op]]) {
        self.committed(batches, None);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests;
