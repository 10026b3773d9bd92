//! `sys/replication/*` endpoints: each request is authorized and executed against the same
//! locked control-plane state (see [`crate::control`]).

use std::sync::Arc;
use std::time::Duration;

use bunker_sdk::fields::{get_bool, get_duration, get_str};
use bunker_sdk::{capability_for, Caller};
use bunker_sdk::{Data, LogicalError, Operation, Request, Response, Result};

use crate::core_port::DrCore;
use serde_json::{json, Value};
use tokio::sync::MutexGuard;

use super::{fetch, EffectInputs, Inner};
use crate::control::{self, Access, Activation, Command, Endpoint};
use crate::state::{PrimaryState, ReplState, SecondaryState};
use crate::tls::ReplicationCa;
use crate::ReplError;
use bunker_seal::OtpTokenCeremony;

const DEFAULT_TOKEN_TTL_SECS: u64 = 30 * 60;
/// Activation tokens live at most a day: they are meant to be used within minutes.
const MAX_TOKEN_TTL_SECS: u64 = 24 * 60 * 60;

fn bad(msg: impl Into<String>) -> LogicalError {
    LogicalError::InvalidRequest(msg.into())
}

fn refused(r: control::Refusal) -> LogicalError {
    LogicalError::InvalidRequest(r.0)
}

fn now_unix() -> u64 {
    crate::messages::now_ms() / 1000
}

fn sha_hex(s: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// The operations each endpoint answers to.
fn check_operation(endpoint: Endpoint, op: Operation) -> Result<()> {
    use Endpoint::*;
    let ok = match endpoint {
        Status | DrStatus | PerformanceStatus => op == Operation::Read,
        SecondaryToken => matches!(op, Operation::Read | Operation::Create | Operation::Update),
        OperationTokenAttempt => matches!(
            op,
            Operation::Read | Operation::Create | Operation::Update | Operation::Delete
        ),
        _ => matches!(op, Operation::Create | Operation::Update),
    };
    if ok {
        Ok(())
    } else {
        Err(LogicalError::UnsupportedOperation)
    }
}

/// Whether the request carries a DR operation token valid for it: one generated on this
/// secondary by the key-share ceremony and still live, or a replicated batch DR operation
/// token (see [`DrCore::dr_batch_token_allows`]). A token that is neither is refused.
async fn operation_token_presented(
    state: &ReplState,
    core: &dyn DrCore,
    req: &Request,
) -> Result<bool> {
    let Some(token) = get_str(&req.data, "dr_operation_token")?.filter(|t| !t.is_empty()) else {
        return Ok(false);
    };
    if control::operation_token_valid(state, &sha_hex(&token), now_unix())
        || core.dr_batch_token_allows(&token, &req.path).await?
    {
        Ok(true)
    } else {
        Err(LogicalError::PermissionDenied)
    }
}

/// Decide, on the locked state, whether the caller may run `endpoint`. Returns the access
/// rule that applied (promotion with key shares still has to collect them).
async fn authorize(
    state: &ReplState,
    endpoint: Endpoint,
    core: &dyn DrCore,
    req: &Request,
    caller: Option<&Caller>,
) -> Result<Access> {
    let access = control::access(state.mode, endpoint).map_err(refused)?;
    match access {
        Access::Anyone => {}
        Access::Token { sudo } => {
            if core.is_sealed() {
                return Err(LogicalError::Sealed);
            }
            let caller = caller.ok_or(LogicalError::PermissionDenied)?;
            if !caller.has(&req.path, capability_for(req.operation))
                || (sudo && !caller.is_sudo(&req.path))
            {
                return Err(LogicalError::PermissionDenied);
            }
        }
        Access::OperationToken => {
            if !operation_token_presented(state, core, req).await? {
                return Err(LogicalError::PermissionDenied);
            }
        }
        Access::KeySharesOrOperationToken => {
            let with_token = operation_token_presented(state, core, req).await?;
            if !with_token && endpoint != Endpoint::Promote {
                return Err(LogicalError::PermissionDenied);
            }
        }
    }
    Ok(access)
}

pub(crate) async fn handle(
    inner: &Arc<Inner>,
    core: &dyn DrCore,
    req: &Request,
    caller: Option<&Caller>,
) -> Result<Response> {
    let path = req.path.strip_prefix("sys/replication/").unwrap_or("");
    let endpoint =
        Endpoint::parse(path).ok_or_else(|| LogicalError::UnsupportedPath(req.path.clone()))?;
    check_operation(endpoint, req.operation)?;
    let with_merkle_root = get_bool(&req.data, "merkle_root")?.unwrap_or(true);
    match endpoint {
        Endpoint::Status => {
            let mut data = Data::new();
            data.insert("dr".into(), inner.status_json(with_merkle_root).await);
            data.insert("performance".into(), json!({"mode": "disabled"}));
            return Ok(Response::data(data));
        }
        Endpoint::DrStatus => return status_response(inner.status_json(with_merkle_root).await),
        Endpoint::PerformanceStatus => return status_response(json!({"mode": "disabled"})),
        Endpoint::SecondaryEnable | Endpoint::UpdatePrimary => {
            return activate(inner, core, req, caller, endpoint).await
        }
        _ => {}
    }
    let mut state = inner.state.lock().await;
    authorize(&state, endpoint, core, req, caller).await?;
    match endpoint {
        Endpoint::PrimaryEnable => primary_enable(inner, core, req, &mut state).await,
        Endpoint::PrimaryDemote => {
            apply(inner, core, &mut state, Command::DemotePrimary).await?;
            tracing::info!(
                "DR primary demoted to secondary; use update-primary to follow a new primary"
            );
            Ok(Response::empty())
        }
        Endpoint::PrimaryDisable => {
            apply(inner, core, &mut state, Command::DisablePrimary).await?;
            tracing::info!("DR primary disabled");
            Ok(Response::empty())
        }
        Endpoint::SecondaryToken => secondary_token(inner, core, req, &mut state).await,
        Endpoint::RevokeSecondary => {
            let id = required_id(req)?;
            apply(
                inner,
                core,
                &mut state,
                Command::RevokeSecondary { id: id.clone() },
            )
            .await?;
            tracing::info!(secondary = %id, "DR secondary revoked");
            Ok(Response::empty())
        }
        Endpoint::GeneratePublicKey => {
            let (private, public) = crate::sealed_activation::generate_keypair()?;
            {
                let mut k = inner
                    .activation_key
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                *k = Some(private);
            }
            let mut data = Data::new();
            data.insert("secondary_public_key".into(), json!(public));
            Ok(Response::data(data))
        }
        Endpoint::SecondaryDisable => {
            apply(inner, core, &mut state, Command::DisableSecondary).await?;
            Ok(Response::empty())
        }
        Endpoint::Promote => promote(inner, core, req, &mut state).await,
        Endpoint::OperationTokenAttempt => op_token_attempt(inner, core, req).await,
        Endpoint::OperationTokenUpdate => op_token_update(inner, core, req, &mut state).await,
        Endpoint::OperationTokenDelete => {
            let token = get_str(&req.data, "dr_operation_token")?.unwrap_or_default();
            let hash = sha_hex(&token);
            apply(
                inner,
                core,
                &mut state,
                Command::DeleteOperationToken { hash },
            )
            .await?;
            Ok(Response::empty())
        }
        Endpoint::Recover => {
            if state.mode == crate::state::Mode::Secondary {
                inner.start_follower();
            }
            Ok(Response::empty())
        }
        Endpoint::Reindex => {
            drop(state);
            reindex(inner).await
        }
        Endpoint::MerkleCheck => {
            drop(state);
            merkle_check(inner).await
        }
        Endpoint::Status
        | Endpoint::DrStatus
        | Endpoint::PerformanceStatus
        | Endpoint::SecondaryEnable
        | Endpoint::UpdatePrimary => Err(LogicalError::UnsupportedPath(req.path.clone())),
    }
}

/// Apply one command to the locked state and carry out its effects.
async fn apply(
    inner: &Arc<Inner>,
    core: &dyn DrCore,
    state: &mut MutexGuard<'_, ReplState>,
    command: Command,
) -> Result<()> {
    inner
        .apply(state, command, core, EffectInputs::default())
        .await
}

fn status_response(v: Value) -> Result<Response> {
    let mut resp = match v {
        Value::Object(m) => Response::data(m),
        _ => Response::empty(),
    };
    resp.data_at_top_level = true;
    Ok(resp)
}

/// `reindex`: where the backend keeps the Merkle index, its sums compared with the keyspace
/// summed inside one commit and replaced by them; otherwise the tree recomputed by a full
/// scan. Its progress is in status while it runs (`reindex_in_progress`,
/// `reindex_building_progress` of `reindex_building_total`), and `last_reindex_epoch` once it
/// is done. One at a time.
async fn reindex(inner: &Arc<Inner>) -> Result<Response> {
    use std::sync::atomic::Ordering;
    if inner.reindex.running.swap(true, Ordering::AcqRel) {
        return Err(LogicalError::InvalidRequest(
            "a reindex is already running; its progress is in the replication status".into(),
        ));
    }
    struct Done<'a>(&'a Inner);
    impl Drop for Done<'_> {
        fn drop(&mut self) {
            self.0.reindex.running.store(false, Ordering::Release);
        }
    }
    let done = Done(inner);
    let expected = inner.cached_key_count().await;
    inner.reindex.total.store(expected, Ordering::Relaxed);
    inner.reindex.scanned.store(0, Ordering::Relaxed);
    crate::failpoint::hold("reindex-before-scan").await;
    let result = match inner.wal.merkle_index() {
        Some(index) => {
            // The sum runs inside a commit on the storage writer: its progress is copied to
            // status while it runs.
            let rebuild = index.rebuild(inner.backend.as_ref());
            tokio::pin!(rebuild);
            let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
            let result = loop {
                tokio::select! {
                    result = &mut rebuild => break result,
                    _ = tick.tick() => {
                        inner.reindex.scanned.store(index.progress(), Ordering::Relaxed);
                    }
                }
            };
            inner
                .reindex
                .scanned
                .store(index.progress(), Ordering::Relaxed);
            result
                .map_err(|e| LogicalError::Internal(format!("reindex: {e}")))
                .map(|check| index_report(&check, true))
        }
        None => merkle_check(inner).await,
    };
    if result.is_ok() {
        let now = crate::messages::now_ms() / 1000;
        inner.reindex.last_epoch.store(now, Ordering::Relaxed);
    }
    drop(done);
    result
}

/// `merkle-check`: where the backend keeps the Merkle index, its sums compared with the
/// keyspace summed inside one commit (nothing changed; `corrupted_merkle_tree` says whether
/// they differ, `reindex` repairs); otherwise the tree recomputed by a full scan.
async fn merkle_check(inner: &Arc<Inner>) -> Result<Response> {
    if let Some(index) = inner.wal.merkle_index() {
        // No sums yet to compare (summing at open failed; the refresher retries): saying
        // "no difference" would be a lie.
        if !index.is_ready() {
            return Err(LogicalError::Unavailable(
                "the Merkle index is not summed yet (it is summed again in the background); \
                 try again, or run reindex"
                    .into(),
            ));
        }
        let check = index
            .check(inner.backend.as_ref())
            .await
            .map_err(|e| LogicalError::Internal(format!("merkle-check: {e}")))?;
        return Ok(index_report(&check, false));
    }
    inner.invalidate_merkle();
    let tree = inner.merkle_tree().await?;
    let mut data = Data::new();
    data.insert("merkle_root".into(), json!(tree.root_hex()));
    data.insert("keys".into(), json!(tree.keys));
    data.insert("corrupted_merkle_tree".into(), json!(false));
    data.insert("last_wal".into(), json!(inner.wal.last_index()));
    Ok(Response::data(data).with_warning(
        "this storage keeps no Merkle index: the tree is recomputed from storage on every \
         check; nothing to repair",
    ))
}

/// What `merkle-check` and `reindex` found: the recomputed tree, and how far the stored index
/// was from it (`repaired`: and that it has been corrected).
fn index_report(check: &crate::merkle::IndexCheck, repaired: bool) -> Response {
    let mut data = Data::new();
    let (root, keys) = (check.tree.root_hex(), check.tree.keys);
    let differs = check.differing_cells > 0 || check.differing_buckets > 0;
    data.insert("merkle_root".into(), json!(root));
    data.insert("keys".into(), json!(keys));
    data.insert("scanned".into(), json!(check.scanned));
    data.insert("corrupted_merkle_tree".into(), json!(differs && !repaired));
    data.insert("differing_buckets".into(), json!(check.differing_buckets));
    data.insert("differing_cells".into(), json!(check.differing_cells));
    data.insert("repaired".into(), json!(differs && repaired));
    // The WAL index the recomputed root is exact for.
    data.insert("last_wal".into(), json!(check.wal_index));
    let response = Response::data(data);
    match (differs, repaired) {
        (true, false) => response.with_warning(
            "the stored Merkle index differs from the keyspace; run sys/replication/reindex to \
             repair it",
        ),
        (true, true) => response.with_warning(
            "the stored Merkle index differed from the keyspace and has been repaired",
        ),
        (false, _) => response,
    }
}

fn required_id(req: &Request) -> Result<String> {
    get_str(&req.data, "id")?
        .filter(|s| !s.is_empty())
        .ok_or_else(|| bad("missing required parameter \"id\""))
}

fn new_primary_state(
    inner: &Inner,
    cluster_id: &str,
    addr_override: Option<String>,
) -> std::result::Result<PrimaryState, ReplError> {
    let ca = ReplicationCa::generate(cluster_id)?;
    let server = ca.issue_server_cert()?;
    Ok(PrimaryState {
        ca_cert_pem: ca.cert_pem.clone(),
        ca_key_pem: zeroize::Zeroizing::new(ca.key_pem().to_owned()),
        server,
        sealed_keys: None,
        primary_cluster_addr: addr_override
            .filter(|a| !a.is_empty())
            .unwrap_or_else(|| inner.config.cluster_addr.clone()),
        secondaries: Default::default(),
    })
}

async fn primary_enable(
    inner: &Arc<Inner>,
    core: &dyn DrCore,
    req: &Request,
    state: &mut MutexGuard<'_, ReplState>,
) -> Result<Response> {
    if inner.config.cluster_listen_addr.is_none() {
        return Err(bad(
            "DR replication needs a cluster port: set cluster_address in the listener block",
        ));
    }
    let addr = get_str(&req.data, "primary_cluster_addr")?;
    let cluster_id = uuid::Uuid::new_v4().to_string();
    let primary = new_primary_state(inner, &cluster_id, addr)?;
    let command = Command::EnablePrimary {
        cluster_id,
        primary,
    };
    apply(inner, core, state, command).await?;
    tracing::info!("DR primary enabled");
    Ok(Response::empty())
}

async fn secondary_token(
    inner: &Arc<Inner>,
    core: &dyn DrCore,
    req: &Request,
    state: &mut MutexGuard<'_, ReplState>,
) -> Result<Response> {
    let id = required_id(req)?;
    if id.len() > crate::tls::MAX_ID_LEN
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(bad(format!(
            "id must be letters, digits, '-', '_' or '.' (at most {})",
            crate::tls::MAX_ID_LEN
        )));
    }
    let secondary_public_key =
        get_str(&req.data, "secondary_public_key")?.filter(|s| !s.is_empty());
    let ttl = get_duration(&req.data, "ttl")?
        .filter(|t| *t > 0)
        .unwrap_or(DEFAULT_TOKEN_TTL_SECS);
    if ttl > MAX_TOKEN_TTL_SECS {
        return Err(bad(format!(
            "ttl must be at most {MAX_TOKEN_TTL_SECS} seconds (24h)"
        )));
    }
    let Some(primary) = state.primary.as_ref() else {
        return Err(bad("this cluster is not a DR primary"));
    };
    if !primary.has_keys() {
        return Err(LogicalError::Unavailable(
            "the DR primary's keys are not open (they open with the barrier at unseal)".into(),
        ));
    }
    let ca = ReplicationCa::from_pem(&primary.ca_cert_pem, &primary.ca_key_pem)
        .map_err(ReplError::from)?;
    let client = ca
        .issue_client_cert(
            &id,
            Duration::from_secs(ttl).saturating_add(crate::tls::ACTIVATION_CERT_GRACE),
        )
        .map_err(ReplError::from)?;
    let cert_sha256 = crate::tls::pem_fingerprint_hex(&client.cert_pem).map_err(ReplError::from)?;
    let mut bundle = crate::activation::Bundle {
        cluster_id: state.cluster_id.clone(),
        secondary_id: id.clone(),
        generation: state.generation,
        primary_cluster_addr: primary.primary_cluster_addr.clone(),
        primary_api_addr: inner.config.api_addr.clone(),
        ca_cert_pem: primary.ca_cert_pem.clone(),
        client,
        root_key_b64: zeroize::Zeroizing::new(String::new()),
        primary_cluster_addrs: core.cluster_addrs().await,
    };
    // Validate the transition before anything is handed out; apply it once the token exists.
    let command = Command::IssueSecondaryToken {
        id: id.clone(),
        cert_sha256,
        now_unix: now_unix(),
    };
    control::transition(state, command.clone()).map_err(refused)?;
    let resp = match secondary_public_key {
        // Encrypted to a key only the secondary holds: the root key may travel inside, so the
        // secondary opens the replicated keyring without the primary's key shares.
        Some(public_key) => {
            use base64::Engine as _;
            bundle.root_key_b64 = zeroize::Zeroizing::new(
                base64::engine::general_purpose::STANDARD.encode(&*core.root_key()?),
            );
            let expires = now_unix().saturating_add(ttl);
            let token = crate::sealed_activation::seal(&bundle, &public_key, expires)?;
            let mut data = Data::new();
            data.insert("token".into(), json!(token));
            Response::data(data)
        }
        // A wrapping token is a bearer credential: it carries the certificate that lets its
        // holder stream ciphertext, never a key that decrypts it.
        None => {
            let mut data = Data::new();
            data.insert(
                "bundle".into(),
                serde_json::to_value(&bundle).map_err(|e| LogicalError::Internal(e.to_string()))?,
            );
            let mut resp = core
                .wrap_data(
                    data,
                    Duration::from_secs(ttl),
                    bunker_core::ACTIVATION_TOKEN_PATH,
                )
                .await?;
            if let Some(info) = resp.wrap_info.as_mut() {
                info.token = crate::activation::ActivationToken {
                    addr: inner.config.api_addr.clone(),
                    token: info.token.clone(),
                }
                .encode();
            }
            resp
        }
    };
    apply(inner, core, state, command).await?;
    tracing::info!(secondary = %id, ttl, "DR secondary activation token issued");
    Ok(resp)
}

/// `secondary/enable` and `secondary/update-primary`: authorize on the locked state, fetch the
/// bundle without the lock (it may cross the network), then apply the command to the state as
/// it is by then, authorizing again on it.
async fn activate(
    inner: &Arc<Inner>,
    core: &dyn DrCore,
    req: &Request,
    caller: Option<&Caller>,
    endpoint: Endpoint,
) -> Result<Response> {
    {
        let state = inner.state.lock().await;
        authorize(&state, endpoint, core, req, caller).await?;
    }
    let bundle = match fetch::open_sealed(inner, req)? {
        Some(b) => b,
        None => fetch::unwrap_at_primary(inner, req).await?,
    };
    let root_key = bundle.root_key();
    let activation = Activation {
        cluster_id: bundle.cluster_id.clone(),
        generation: bundle.generation,
        link: SecondaryState {
            secondary_id: bundle.secondary_id.clone(),
            primary_cluster_addr: bundle.primary_cluster_addr.clone(),
            primary_api_addr: bundle.primary_api_addr.clone(),
            ca_cert_pem: bundle.ca_cert_pem.clone(),
            client: bundle.client.clone(),
            client_renewed: false,
            known_primary_cluster_addrs: bundle.primary_cluster_addrs.clone(),
        },
    };
    let mut state = inner.state.lock().await;
    authorize(&state, endpoint, core, req, caller).await?;
    if endpoint == Endpoint::SecondaryEnable {
        tracing::warn!(secondary = %bundle.secondary_id, "enabling DR secondary: wiping all local data");
        inner.remember_root_key(root_key);
        apply(
            inner,
            core,
            &mut state,
            Command::EnableSecondary(activation),
        )
        .await?;
    } else {
        apply(inner, core, &mut state, Command::UpdatePrimary(activation)).await?;
        tracing::info!("DR secondary re-pointed at a new primary");
    }
    Ok(Response::empty())
}

fn caught_up(inner: &Inner, state: &ReplState) -> bool {
    let s = inner.sec_status();
    control::caught_up(state, inner.wal.last_index(), s.state, s.primary_last_wal)
}

fn promote_progress(progress: u8, required: u8, complete: bool) -> Response {
    let mut data = Data::new();
    data.insert("progress".into(), json!(progress));
    data.insert("required".into(), json!(required));
    data.insert("complete".into(), json!(complete));
    let mut resp = Response::data(data);
    resp.data_at_top_level = true;
    resp
}

async fn promote(
    inner: &Arc<Inner>,
    core: &dyn DrCore,
    req: &Request,
    state: &mut MutexGuard<'_, ReplState>,
) -> Result<Response> {
    let force = get_bool(&req.data, "force")?.unwrap_or(false);
    let required = core.seal_threshold().await?;
    let mut root_key = None;
    // `authorize` already refused a wrong operation token.
    if !operation_token_presented(state, core, req).await? {
        if get_bool(&req.data, "reset")?.unwrap_or(false) {
            {
                let mut c = inner
                    .ceremonies
                    .promote
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                *c = None;
            }
            return Ok(promote_progress(0, required, false));
        }
        if required == 0 {
            return Err(LogicalError::Unavailable(
                "the secondary has not received the primary's seal configuration yet".into(),
            ));
        }
        let key = get_str(&req.data, "key")?
            .filter(|k| !k.is_empty())
            .ok_or_else(|| bad("'key' or 'dr_operation_token' must be specified"))?;
        let share = bunker_seal::parse_key_share(&key).map_err(|e| bad(e.to_string()))?;
        let outcome = {
            let mut guard = inner
                .ceremonies
                .promote
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let ceremony = guard.get_or_insert_with(|| bunker_seal::KeyCeremony::new(required));
            match ceremony.add_share(&share) {
                Ok(None) => Err(ceremony.progress()),
                Ok(Some(root)) => {
                    *guard = None;
                    Ok(root)
                }
                Err(e) => return Err(bad(e.to_string())),
            }
        };
        match outcome {
            Err(progress) => return Ok(promote_progress(progress, required, false)),
            Ok(root) => {
                core.verify_root_key(&root).await?;
                root_key = Some(root);
            }
        }
    }
    let addr = get_str(&req.data, "primary_cluster_addr")?;
    let command = Command::Promote {
        primary: new_primary_state(inner, &state.cluster_id, addr)?,
        caught_up: caught_up(inner, state),
        force,
    };
    // A secondary that is behind is unavailable for promotion, not a bad request.
    control::transition(state, command.clone()).map_err(|r| LogicalError::Unavailable(r.0))?;
    let inputs = EffectInputs {
        root_key: root_key.map(|k| zeroize::Zeroizing::new(k.to_vec())),
    };
    // The index the store is at once the follower stopped (it may have been committing).
    let wal_index = inner.settle_follower().await?;
    inner.apply(state, command, core, inputs).await?;
    tracing::warn!(wal_index, "DR secondary promoted to primary");
    let mut resp = promote_progress(required, required, true);
    if let Some(data) = resp.data.as_mut() {
        // The point of the old primary's history this cluster now continues from.
        data.insert("wal_index".into(), json!(wal_index));
    }
    Ok(resp)
}

async fn op_token_attempt(
    inner: &Arc<Inner>,
    core: &dyn DrCore,
    req: &Request,
) -> Result<Response> {
    let required = core.seal_threshold().await?;
    let request = bunker_core::attempt_request(req)?;
    let mut slot = inner
        .ceremonies
        .op_token
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let body = OtpTokenCeremony::attempt(
        &mut slot,
        request,
        required,
        "DR operation token generation",
    )
    .map_err(|e| bad(e.to_string()))?;
    Ok(body.map_or_else(Response::empty, |b| Response::raw(200, b)))
}

async fn op_token_update(
    inner: &Arc<Inner>,
    core: &dyn DrCore,
    req: &Request,
    state: &mut MutexGuard<'_, ReplState>,
) -> Result<Response> {
    let key = get_str(&req.data, "key")?.ok_or_else(|| bad("'key' must be specified"))?;
    let nonce = get_str(&req.data, "nonce")?.unwrap_or_default();
    let share = bunker_seal::parse_key_share(&key).map_err(|e| bad(e.to_string()))?;
    let root = {
        let mut guard = inner
            .ceremonies
            .op_token
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let generation = guard
            .as_mut()
            .ok_or_else(|| bad("no DR operation token generation in progress"))?;
        match generation
            .submit(&nonce, &share)
            .map_err(|e| bad(e.to_string()))?
        {
            None => return Ok(Response::raw(200, generation.status(""))),
            Some(root) => root,
        }
    };
    if core.verify_root_key(&root).await.is_err() {
        *inner
            .ceremonies
            .op_token
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        return Err(bad("the key shares do not reconstruct the root key"));
    }
    // The strategy of this ceremony: a DR operation token, known to this secondary only by
    // its hash, living one hour and dying with the secondary mode.
    let token = zeroize::Zeroizing::new(format!("hvs.{}", bunker_core::token::random_base62(24)));
    let command = Command::AddOperationToken {
        hash: sha_hex(&token),
        now_unix: now_unix(),
    };
    apply(inner, core, state, command).await?;
    let generation = inner
        .ceremonies
        .op_token
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    let body = match generation {
        Some(g) => g.finish(&token).map_err(|e| bad(e.to_string()))?,
        None => OtpTokenCeremony::idle_status(0),
    };
    Ok(Response::raw(200, body))
}
