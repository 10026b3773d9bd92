//! The transit secrets engine: encryption as a service, Vault's API (see `docs/transit.md`).
//!
//! Endpoints (paths relative to the mount):
//! - `keys/` (LIST), `keys/<name>` (create, read, delete), `keys/<name>/config`,
//!   `keys/<name>/rotate`, `keys/<name>/trim`: [`keys`].
//! - `encrypt/<name>`, `decrypt/<name>`, `rewrap/<name>`, `datakey/<plaintext|wrapped>/<name>`:
//!   [`encryption`].
//! - `hmac/<name>[/<alg>]`, `sign/<name>[/<alg>]`, `verify/<name>[/<alg>]`: [`signing`].
//! - `random[/<source>][/<bytes>]`, `hash[/<alg>]`, `export/<kind>/<name>[/<version>]`,
//!   `backup/<name>`, `restore[/<name>]`: [`utility`].
//!
//! Storage: one record per key at `policy/<name>` (a [`policy::KeyPolicy`]), under the barrier
//! like everything a mount stores; nothing is cached in memory between requests, so a DR
//! secondary promoted with the replicated storage has every key.
//!
//! Concurrency: every change of a key ring (create, config, rotate, trim, delete, restore,
//! auto-rotation) is a read-modify-write of its record under an async mutex striped by the
//! key's name, as KV v2 does; encrypting and decrypting take no lock.

mod crypto;
mod ecdsa;
mod encryption;
mod input;
mod keys;
mod policy;
mod signing;
mod utility;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use async_trait::async_trait;
use bunker_sdk::{
    BackendFactory, BackendRequest, Data, LogicalBackend, LogicalError, Operation, Response, Result,
};
use serde_json::{json, Map, Value};
use tokio::sync::Mutex;
use zeroize::Zeroizing;

use crate::store::{Call, Store};
use policy::{validate_key_name, KeyPolicy};

/// Lock stripes per mount (see the module docs).
const LOCK_STRIPES: usize = 64;

/// Current time in Unix seconds; injected so tests can move time.
pub(crate) type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The transit engine for one mount.
pub struct Transit {
    key_locks: Vec<Mutex<()>>,
    fallback_lock: Mutex<()>,
    clock: Clock,
}

impl std::fmt::Debug for Transit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transit").finish_non_exhaustive()
    }
}

impl Default for Transit {
    fn default() -> Self {
        Self::new()
    }
}

impl Transit {
    pub fn new() -> Self {
        Self::with_clock(Arc::new(bunker_sdk::time_util::now_unix))
    }

    pub(crate) fn with_clock(clock: Clock) -> Self {
        Transit {
            key_locks: (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
            fallback_lock: Mutex::new(()),
            clock,
        }
    }

    pub(crate) fn now(&self) -> u64 {
        (self.clock)()
    }

    /// The lock of one key name's stripe.
    pub(crate) async fn lock_key(&self, name: &str) -> tokio::sync::MutexGuard<'_, ()> {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        name.hash(&mut hasher);
        let stripe = (hasher.finish() as usize) % LOCK_STRIPES;
        match self.key_locks.get(stripe) {
            Some(lock) => lock.lock().await,
            None => self.fallback_lock.lock().await,
        }
    }

    pub(crate) async fn handle_call(&self, call: &Call<'_>) -> Result<Response> {
        let segments: Vec<&str> = call.path.split('/').collect();
        let op = call.operation;
        match segments.as_slice() {
            ["keys"] | ["keys", ""] if op == Operation::List => keys::list(call).await,
            ["keys", name] => keys::handle(self, call, name).await,
            ["keys", name, "config"] => write_only(op, keys::config(self, call, name)).await,
            ["keys", name, "rotate"] => write_only(op, keys::rotate(self, call, name)).await,
            ["keys", name, "trim"] => write_only(op, keys::trim(self, call, name)).await,
            ["encrypt", name] => write_only(op, encryption::encrypt(self, call, name)).await,
            ["decrypt", name] => write_only(op, encryption::decrypt(call, name)).await,
            ["rewrap", name] => write_only(op, encryption::rewrap(self, call, name)).await,
            ["datakey", kind, name] => {
                write_only(op, encryption::datakey(self, call, kind, name)).await
            }
            ["hmac", name] => write_only(op, signing::hmac(self, call, name, None)).await,
            ["hmac", name, alg] => write_only(op, signing::hmac(self, call, name, Some(alg))).await,
            ["sign", name] => write_only(op, signing::sign(self, call, name, None)).await,
            ["sign", name, alg] => write_only(op, signing::sign(self, call, name, Some(alg))).await,
            ["verify", name] => write_only(op, signing::verify(call, name, None)).await,
            ["verify", name, alg] => write_only(op, signing::verify(call, name, Some(alg))).await,
            ["random", rest @ ..] if rest.len() <= 2 => {
                write_only(op, async { utility::random(call, rest) }).await
            }
            ["hash"] => write_only(op, async { utility::hash(call, None) }).await,
            ["hash", alg] => write_only(op, async { utility::hash(call, Some(alg)) }).await,
            ["export", kind, name] => read_only(op, utility::export(call, kind, name, None)).await,
            ["export", kind, name, version] => {
                read_only(op, utility::export(call, kind, name, Some(version))).await
            }
            ["backup", name] => read_only(op, utility::backup(self, call, name)).await,
            ["restore"] => write_only(op, utility::restore(self, call, None)).await,
            ["restore", name] => write_only(op, utility::restore(self, call, Some(name))).await,
            _ => Err(LogicalError::UnsupportedPath(format!(
                "{}{}",
                call.mount_point, call.path
            ))),
        }
    }

    /// `encrypt/<name>` on a key that does not exist creates it (Vault's upsert), so the ACL
    /// needs `create` there; other paths do not distinguish.
    pub(crate) async fn exists_call(&self, call: &Call<'_>) -> Result<Option<bool>> {
        match call.path.split_once('/') {
            Some(("encrypt", name)) if validate_key_name(name).is_ok() => {
                Ok(Some(load(call.store, name).await?.is_some()))
            }
            _ => Ok(None),
        }
    }
}

async fn write_only<F>(op: Operation, f: F) -> Result<Response>
where
    F: std::future::Future<Output = Result<Response>>,
{
    match op {
        Operation::Create | Operation::Update => f.await,
        _ => Err(LogicalError::UnsupportedOperation),
    }
}

async fn read_only<F>(op: Operation, f: F) -> Result<Response>
where
    F: std::future::Future<Output = Result<Response>>,
{
    match op {
        Operation::Read => f.await,
        _ => Err(LogicalError::UnsupportedOperation),
    }
}

#[async_trait]
impl LogicalBackend for Transit {
    async fn handle(&self, req: BackendRequest<'_>) -> Result<Response> {
        self.handle_call(&Call::from_request(&req)).await
    }

    fn help(&self) -> bunker_sdk::BackendHelp {
        crate::help::TRANSIT
    }

    async fn exists(&self, req: &BackendRequest<'_>) -> Result<Option<bool>> {
        self.exists_call(&Call::from_request(req)).await
    }
}

/// Factory for `transit` mounts. Transit takes no options.
pub fn transit_factory() -> impl BackendFactory {
    |_options: &Map<String, Value>| -> Result<Arc<dyn LogicalBackend>> {
        Ok(Arc::new(Transit::new()))
    }
}

fn storage_key(name: &str) -> String {
    format!("policy/{name}")
}

/// Load a key ring; `None` when there is no key of that name.
pub(crate) async fn load(store: Store<'_>, name: &str) -> Result<Option<KeyPolicy>> {
    validate_key_name(name)?;
    let Some(bytes) = store.get(&storage_key(name)).await? else {
        return Ok(None);
    };
    let bytes = Zeroizing::new(bytes);
    let policy: KeyPolicy = serde_json::from_slice(&bytes)
        .map_err(|e| LogicalError::Internal(format!("decoding transit key {name:?}: {e}")))?;
    if policy.format != policy::RECORD_FORMAT {
        return Err(LogicalError::Internal(format!(
            "transit key {name:?} has unknown record format {}",
            policy.format
        )));
    }
    Ok(Some(policy))
}

/// Load a key ring that must exist.
pub(crate) async fn load_existing(store: Store<'_>, name: &str) -> Result<KeyPolicy> {
    load(store, name)
        .await?
        .ok_or_else(|| LogicalError::InvalidRequest("encryption key not found".into()))
}

pub(crate) async fn save(store: Store<'_>, policy: &KeyPolicy) -> Result<()> {
    let bytes = to_json_zeroizing(policy).map_err(|e| {
        LogicalError::Internal(format!("encoding transit key {:?}: {e}", policy.name))
    })?;
    store.put(&storage_key(&policy.name), &bytes).await
}

/// JSON of a value holding key material, in a buffer allocated once at its exact size (a
/// growing `Vec` would leave unzeroized copies behind in freed memory) and zeroized on drop.
pub(crate) fn to_json_zeroizing<T: serde::Serialize>(
    value: &T,
) -> std::result::Result<Zeroizing<Vec<u8>>, serde_json::Error> {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 = self.0.saturating_add(buf.len());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    serde_json::to_writer(&mut counter, value)?;
    let mut out = Zeroizing::new(Vec::with_capacity(counter.0));
    serde_json::to_writer(&mut *out, value)?;
    Ok(out)
}

/// Load a key for an encrypting use, rotating it first when `auto_rotate_period` says so.
pub(crate) async fn load_for_use(t: &Transit, store: Store<'_>, name: &str) -> Result<KeyPolicy> {
    let policy = load_existing(store, name).await?;
    if !policy.rotation_due(t.now()) {
        return Ok(policy);
    }
    let _guard = t.lock_key(name).await;
    let mut policy = load_existing(store, name).await?;
    if policy.rotation_due(t.now()) {
        keys::rotate_in_place(t, &mut policy)?;
        save(store, &policy).await?;
        tracing::info!(key = %name, version = policy.latest_version, "transit key auto-rotated");
    }
    Ok(policy)
}

/// One item's answer in a batch (or the whole answer of a single request).
pub(crate) type ItemResult = Result<Data>;

/// Turn per-item results into Vault's response: a single request answers with its data or
/// its error; a batch answers `batch_results`, with 400 when any item failed (or
/// `partial_failure_response_code` when some succeeded).
pub(crate) fn respond(
    results: Vec<ItemResult>,
    batch: bool,
    references: Vec<Option<Value>>,
    partial_failure_code: u64,
) -> Result<Response> {
    if !batch {
        let Some(first) = results.into_iter().next() else {
            return Err(LogicalError::InvalidRequest(
                "missing input to process".into(),
            ));
        };
        return first.map(Response::data);
    }
    let total = results.len();
    let mut failed = 0usize;
    let mut out = Vec::with_capacity(total);
    for (result, reference) in results.into_iter().zip(references) {
        let mut item = match result {
            Ok(data) => data,
            Err(e) => {
                if matches!(e, LogicalError::Internal(_) | LogicalError::Sealed) {
                    return Err(e);
                }
                failed = failed.saturating_add(1);
                let mut m = Data::new();
                m.insert("error".into(), Value::String(e.to_string()));
                m
            }
        };
        if let Some(r) = reference {
            item.insert("reference".into(), r);
        }
        out.push(Value::Object(item));
    }
    let mut data = Data::new();
    data.insert("batch_results".into(), Value::Array(out));
    if failed == 0 {
        return Ok(Response::data(data));
    }
    let status = if failed < total && (200..=599).contains(&partial_failure_code) {
        partial_failure_code as u16
    } else {
        400
    };
    Ok(Response::raw(
        status,
        json!({
            "request_id": "",
            "lease_id": "",
            "renewable": false,
            "lease_duration": 0,
            "data": data,
            "wrap_info": null,
            "warnings": null,
            "auth": null,
        }),
    ))
}

/// The `reference` of each item, echoed back in batch results.
pub(crate) fn references(items: &[Data]) -> Vec<Option<Value>> {
    items
        .iter()
        .map(|i| i.get("reference").filter(|v| !v.is_null()).cloned())
        .collect()
}
