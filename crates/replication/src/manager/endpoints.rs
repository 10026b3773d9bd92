//! `sys/replication/*` endpoints.

use std::sync::Arc;
use std::time::Duration;

use bunker_core::logical::fields::{get_bool, get_duration, get_str};
use bunker_core::logical::{Data, LogicalError, Operation, Request, Response, Result};
use bunker_core::{Caller, Core};
use bunker_policy::Capability;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::ceremony::{idle_status, OpTokenGeneration, OTP_LENGTH};
use super::Inner;
use crate::activation::{ActivationToken, Bundle};
use crate::state::{Mode, PrimaryState, ReplState, SecondaryRecord, SecondaryState};
use crate::status::SyncState;
use crate::tls::ReplicationCa;
use crate::ReplError;

const DEFAULT_TOKEN_TTL_SECS: u64 = 30 * 60;
const SECONDARY_TOKEN_PATH: &str = "sys/replication/dr/primary/secondary-token";

fn bad(msg: impl Into<String>) -> LogicalError {
    LogicalError::InvalidRequest(msg.into())
}

fn write_op(op: Operation) -> Result<()> {
    match op {
        Operation::Create | Operation::Update => Ok(()),
        _ => Err(LogicalError::UnsupportedOperation),
    }
}

fn sha_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

pub(crate) async fn handle(
    inner: &Arc<Inner>,
    core: &Core,
    req: &Request,
    caller: Option<&Caller>,
) -> Result<Response> {
    let path = req.path.strip_prefix("sys/replication/").unwrap_or("");
    let op = req.operation;
    let mode = inner.mode();
    let with_merkle_root = get_bool(&req.data, "merkle_root")?.unwrap_or(true);
    match path {
        "status" => {
            let mut data = Data::new();
            data.insert("dr".into(), inner.status_json(with_merkle_root).await);
            data.insert("performance".into(), json!({"mode": "disabled"}));
            Ok(Response::data(data))
        }
        "dr/status" => status_response(inner.status_json(with_merkle_root).await),
        "performance/status" => status_response(json!({"mode": "disabled"})),
        "dr/primary/enable" => {
            write_op(op)?;
            primary_enable(inner, req).await
        }
        "dr/primary/demote" => {
            write_op(op)?;
            require(mode, Mode::Primary)?;
            primary_demote(inner).await
        }
        "dr/primary/disable" => {
            write_op(op)?;
            require(mode, Mode::Primary)?;
            primary_disable(inner).await
        }
        "dr/primary/secondary-token" => {
            require(mode, Mode::Primary)?;
            secondary_token(inner, core, req).await
        }
        "dr/primary/revoke-secondary" => {
            write_op(op)?;
            require(mode, Mode::Primary)?;
            revoke_secondary(inner, req).await
        }
        "dr/secondary/enable" => {
            write_op(op)?;
            if caller.is_none() || mode != Mode::Disabled {
                return Err(bad(match mode {
                    Mode::Primary => "this cluster is a DR primary; disable or demote it first",
                    _ => "this cluster is already a DR secondary; use update-primary",
                }));
            }
            secondary_enable(inner, core, req).await
        }
        "dr/secondary/generate-public-key" => {
            write_op(op)?;
            if mode != Mode::Disabled {
                return Err(bad(
                    "generate-public-key is for a cluster about to become a DR secondary",
                ));
            }
            let (private, public) = crate::sealed_activation::generate_keypair()?;
            if let Ok(mut k) = inner.activation_key.lock() {
                *k = Some(private);
            }
            let mut data = Data::new();
            data.insert("secondary_public_key".into(), json!(public));
            Ok(Response::data(data))
        }
        p if p.starts_with("dr/secondary/") && mode != Mode::Secondary => {
            Err(bad("this cluster is not a DR secondary"))
        }
        "dr/secondary/promote" => {
            write_op(op)?;
            promote(inner, core, req).await
        }
        "dr/secondary/update-primary" => {
            write_op(op)?;
            authorize_op_token(inner, core, req).await?;
            update_primary(inner, req).await
        }
        "dr/secondary/disable" => {
            write_op(op)?;
            authorize_op_token(inner, core, req).await?;
            secondary_disable(inner, core).await
        }
        "dr/secondary/generate-operation-token/attempt" => op_token_attempt(inner, core, req).await,
        "dr/secondary/generate-operation-token/update" => {
            write_op(op)?;
            op_token_update(inner, core, req).await
        }
        "dr/secondary/operation-token/delete" => {
            write_op(op)?;
            authorize_op_token(inner, core, req).await?;
            let token = get_str(&req.data, "dr_operation_token")?.unwrap_or_default();
            let mut state = inner.state_snapshot().await;
            let hash = sha_hex(&token);
            state.operation_token_hashes.retain(|h| *h != hash);
            inner.commit_state(state).await?;
            Ok(Response::empty())
        }
        "dr/secondary/recover" | "recover" => {
            write_op(op)?;
            if mode == Mode::Secondary {
                authorize_op_token(inner, core, req).await?;
                inner.start_follower();
            }
            Ok(Response::empty())
        }
        "dr/secondary/reindex"
        | "reindex"
        | "dr/secondary/merkle-check"
        | "merkle-check"
        | "dr/primary/merkle-check" => {
            write_op(op)?;
            if mode == Mode::Secondary {
                authorize_op_token(inner, core, req).await?;
            }
            inner.invalidate_merkle();
            let tree = inner.merkle_tree().await?;
            let mut data = Data::new();
            data.insert("merkle_root".into(), json!(tree.root_hex()));
            data.insert("keys".into(), json!(tree.keys));
            data.insert("corrupted_merkle_tree".into(), json!(false));
            data.insert("last_wal".into(), json!(inner.wal.last_index()));
            Ok(Response::data(data).with_warning(
                "the Merkle tree is recomputed from storage on every check; nothing to repair",
            ))
        }
        _ => Err(LogicalError::UnsupportedPath(req.path.clone())),
    }
}

fn status_response(v: Value) -> Result<Response> {
    let mut resp = match v {
        Value::Object(m) => Response::data(m),
        _ => Response::empty(),
    };
    resp.data_at_top_level = true;
    Ok(resp)
}

fn require(mode: Mode, want: Mode) -> Result<()> {
    if mode == want {
        return Ok(());
    }
    Err(bad(match want {
        Mode::Primary => "this cluster is not a DR primary",
        Mode::Secondary => "this cluster is not a DR secondary",
        Mode::Disabled => "DR replication is already enabled on this cluster",
    }))
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
        ca_key_pem: ca.key_pem().to_owned(),
        server,
        primary_cluster_addr: addr_override
            .filter(|a| !a.is_empty())
            .unwrap_or_else(|| inner.config.cluster_addr.clone()),
        secondaries: Default::default(),
    })
}

async fn primary_enable(inner: &Arc<Inner>, req: &Request) -> Result<Response> {
    if inner.config.cluster_listen_addr.is_none() {
        return Err(bad(
            "DR replication needs a cluster port: set cluster_address in the listener block",
        ));
    }
    let addr = get_str(&req.data, "primary_cluster_addr")?;
    let current = inner.state_snapshot().await;
    match current.mode {
        Mode::Primary => return Err(bad("this cluster is already a DR primary")),
        Mode::Secondary => return Err(bad("this cluster is a DR secondary; promote it instead")),
        Mode::Disabled => {}
    }
    let cluster_id = uuid::Uuid::new_v4().to_string();
    let state = ReplState {
        mode: Mode::Primary,
        primary: Some(new_primary_state(inner, &cluster_id, addr)?),
        cluster_id,
        generation: 1,
        secondary: None,
        synced_generation: None,
        operation_token_hashes: current.operation_token_hashes,
    };
    inner.install_tls_for(&state)?;
    inner.commit_state(state).await?;
    inner.wal.promote();
    tracing::info!("DR primary enabled");
    Ok(Response::empty())
}

async fn primary_demote(inner: &Arc<Inner>) -> Result<Response> {
    let mut state = inner.state_snapshot().await;
    state.mode = Mode::Secondary;
    state.primary = None;
    state.secondary = None;
    state.synced_generation = Some(state.generation);
    inner.wal.set_recording(false);
    inner.commit_state(state).await?;
    inner.close_sessions(None);
    inner.forget_peer(None);
    inner.set_sync_state(SyncState::Idle, "shutdown");
    tracing::info!("DR primary demoted to secondary; use update-primary to follow a new primary");
    Ok(Response::empty())
}

async fn primary_disable(inner: &Arc<Inner>) -> Result<Response> {
    let state = ReplState::default();
    inner.wal.set_recording(false);
    inner.commit_state(state).await?;
    inner.close_sessions(None);
    inner.forget_peer(None);
    tracing::info!("DR primary disabled");
    Ok(Response::empty())
}

async fn secondary_token(inner: &Arc<Inner>, core: &Core, req: &Request) -> Result<Response> {
    if !matches!(
        req.operation,
        Operation::Read | Operation::Create | Operation::Update
    ) {
        return Err(LogicalError::UnsupportedOperation);
    }
    let id = get_str(&req.data, "id")?
        .filter(|s| !s.is_empty())
        .ok_or_else(|| bad("missing required parameter \"id\""))?;
    if id.len() > 128
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(bad(
            "id must be letters, digits, '-', '_' or '.' (at most 128)",
        ));
    }
    let secondary_public_key =
        get_str(&req.data, "secondary_public_key")?.filter(|s| !s.is_empty());
    let ttl = get_duration(&req.data, "ttl")?
        .filter(|t| *t > 0)
        .unwrap_or(DEFAULT_TOKEN_TTL_SECS);
    let mut state = inner.state_snapshot().await;
    let Some(primary) = state.primary.as_mut() else {
        return Err(bad("this cluster is not a DR primary"));
    };
    if primary.secondaries.get(&id).is_some_and(|s| !s.revoked) {
        return Err(bad(format!("a secondary with id {id:?} already exists")));
    }
    let ca = ReplicationCa::from_pem(&primary.ca_cert_pem, &primary.ca_key_pem)
        .map_err(ReplError::from)?;
    let client = ca.issue_client_cert(&id).map_err(ReplError::from)?;
    let bundle = Bundle {
        cluster_id: state.cluster_id.clone(),
        secondary_id: id.clone(),
        generation: state.generation,
        primary_cluster_addr: primary.primary_cluster_addr.clone(),
        primary_api_addr: inner.config.api_addr.clone(),
        ca_cert_pem: primary.ca_cert_pem.clone(),
        client,
        root_key_b64: zeroize::Zeroizing::new({
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.encode(&*core.barrier().root_key()?)
        }),
    };
    primary.secondaries.insert(
        id.clone(),
        SecondaryRecord {
            id: id.clone(),
            revoked: false,
            issued_unix: crate::messages::now_ms() / 1000,
        },
    );
    if let Some(public_key) = secondary_public_key {
        let expires = crate::messages::now_ms() / 1000 + ttl;
        let token = crate::sealed_activation::seal(&bundle, &public_key, expires)?;
        inner.commit_state(state).await?;
        let mut data = Data::new();
        data.insert("token".into(), json!(token));
        tracing::info!(secondary = %id, ttl, "DR secondary activation token issued (encrypted to its key)");
        return Ok(Response::data(data));
    }
    let mut data = Data::new();
    data.insert(
        "bundle".into(),
        serde_json::to_value(&bundle).map_err(|e| LogicalError::Internal(e.to_string()))?,
    );
    let mut resp = core
        .wrap_data(data, Duration::from_secs(ttl), SECONDARY_TOKEN_PATH)
        .await?;
    inner.commit_state(state).await?;
    if let Some(info) = resp.wrap_info.as_mut() {
        info.token = ActivationToken {
            addr: inner.config.api_addr.clone(),
            token: info.token.clone(),
        }
        .encode();
    }
    tracing::info!(secondary = %id, ttl, "DR secondary activation token issued");
    Ok(resp)
}

async fn revoke_secondary(inner: &Arc<Inner>, req: &Request) -> Result<Response> {
    let id = get_str(&req.data, "id")?
        .filter(|s| !s.is_empty())
        .ok_or_else(|| bad("missing required parameter \"id\""))?;
    let mut state = inner.state_snapshot().await;
    if let Some(rec) = state
        .primary
        .as_mut()
        .and_then(|p| p.secondaries.get_mut(&id))
    {
        rec.revoked = true;
    }
    inner.commit_state(state).await?;
    inner.close_sessions(Some(&id));
    inner.forget_peer(Some(&id));
    tracing::info!(secondary = %id, "DR secondary revoked");
    Ok(Response::empty())
}

/// Get the bundle of an activation token: decrypt it locally when it was encrypted to our
/// `generate-public-key` key, otherwise unwrap it through the primary's API.
async fn fetch_bundle(inner: &Inner, req: &Request) -> Result<Bundle> {
    let token = get_str(&req.data, "token")?
        .filter(|s| !s.is_empty())
        .ok_or_else(|| bad("missing required parameter \"token\""))?;
    if token.starts_with(crate::sealed_activation::PREFIX) {
        let mut guard = inner
            .activation_key
            .lock()
            .map_err(|_| LogicalError::Internal("activation key state poisoned".into()))?;
        let private = guard.as_ref().ok_or_else(|| {
            bad("no secondary public key was generated on this cluster (or it was used)")
        })?;
        let bundle =
            crate::sealed_activation::open(&token, private, crate::messages::now_ms() / 1000)?;
        *guard = None;
        return Ok(bundle);
    }
    let activation = ActivationToken::decode(&token)?;
    let addr = get_str(&req.data, "primary_api_addr")?
        .filter(|s| !s.is_empty())
        .unwrap_or(activation.addr);
    let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(30));
    let mut pems: Vec<Vec<u8>> = Vec::new();
    if let Some(file) = get_str(&req.data, "ca_file")?.filter(|s| !s.is_empty()) {
        pems.push(std::fs::read(&file).map_err(|e| bad(format!("reading ca_file {file:?}: {e}")))?);
    }
    if let Some(dir) = get_str(&req.data, "ca_path")?.filter(|s| !s.is_empty()) {
        let entries =
            std::fs::read_dir(&dir).map_err(|e| bad(format!("reading ca_path {dir:?}: {e}")))?;
        for entry in entries.flatten() {
            if entry.path().is_file() {
                if let Ok(bytes) = std::fs::read(entry.path()) {
                    pems.push(bytes);
                }
            }
        }
    }
    for pem in pems {
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| bad(format!("invalid CA certificate: {e}")))?;
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    let client = builder
        .build()
        .map_err(|e| LogicalError::Internal(format!("building HTTP client: {e}")))?;
    let url = format!("{}/v1/sys/wrapping/unwrap", addr.trim_end_matches('/'));
    let resp = client
        .post(&url)
        .header("X-Vault-Token", &activation.token)
        .json(&json!({}))
        .send()
        .await
        .map_err(|e| {
            bad(format!(
                "error unwrapping the activation token at {url}: {e}"
            ))
        })?;
    let status = resp.status();
    let body: Value = resp
        .json()
        .await
        .map_err(|e| bad(format!("unreadable answer from the primary: {e}")))?;
    if !status.is_success() {
        return Err(bad(format!(
            "the primary refused the activation token ({status}): {}",
            body.get("errors").cloned().unwrap_or(Value::Null)
        )));
    }
    let bundle = body
        .get("data")
        .and_then(|d| d.get("bundle"))
        .cloned()
        .ok_or_else(|| bad("the activation token does not carry a DR bundle"))?;
    serde_json::from_value(bundle).map_err(|e| bad(format!("invalid DR bundle: {e}")))
}

async fn secondary_enable(inner: &Arc<Inner>, core: &Core, req: &Request) -> Result<Response> {
    let bundle = fetch_bundle(inner, req).await?;
    let root_key = bundle.root_key();
    tracing::warn!(secondary = %bundle.secondary_id, "enabling DR secondary: wiping all local data");
    inner.stop_follower();
    core.wipe_storage().await?;
    inner.invalidate_merkle();
    inner.wal.reset_to(0).await.map_err(ReplError::from)?;
    let state = ReplState {
        mode: Mode::Secondary,
        cluster_id: bundle.cluster_id.clone(),
        generation: bundle.generation,
        primary: None,
        secondary: Some(SecondaryState {
            secondary_id: bundle.secondary_id,
            primary_cluster_addr: bundle.primary_cluster_addr,
            primary_api_addr: bundle.primary_api_addr,
            ca_cert_pem: bundle.ca_cert_pem,
            client: bundle.client,
        }),
        synced_generation: None,
        operation_token_hashes: Vec::new(),
    };
    inner.wal.set_recording(false);
    inner.commit_state(state).await?;
    inner.remember_root_key(root_key);
    inner.start_follower();
    Ok(Response::empty())
}

async fn update_primary(inner: &Arc<Inner>, req: &Request) -> Result<Response> {
    let bundle = fetch_bundle(inner, req).await?;
    let mut state = inner.state_snapshot().await;
    if bundle.cluster_id != state.cluster_id {
        return Err(bad(
            "the activation token is for another replication set; disable and enable instead",
        ));
    }
    state.secondary = Some(SecondaryState {
        secondary_id: bundle.secondary_id,
        primary_cluster_addr: bundle.primary_cluster_addr,
        primary_api_addr: bundle.primary_api_addr,
        ca_cert_pem: bundle.ca_cert_pem,
        client: bundle.client,
    });
    inner.commit_state(state).await?;
    inner.start_follower();
    tracing::info!("DR secondary re-pointed at a new primary");
    Ok(Response::empty())
}

async fn secondary_disable(inner: &Arc<Inner>, core: &Core) -> Result<Response> {
    inner.stop_follower();
    inner.commit_state(ReplState::default()).await?;
    core.reload_tables().await?;
    Ok(Response::empty())
}

/// DR-secondary endpoints authorise with a DR operation token: one generated here by the
/// key-share ceremony, or a token from the replicated token store (e.g. a batch token made on
/// the primary) whose policy grants `update` on the path (needs this cluster unsealed).
async fn authorize_op_token(inner: &Arc<Inner>, core: &Core, req: &Request) -> Result<()> {
    let token = get_str(&req.data, "dr_operation_token")?
        .filter(|t| !t.is_empty())
        .ok_or(LogicalError::PermissionDenied)?;
    let hash = sha_hex(&token);
    let known = inner
        .state_snapshot()
        .await
        .operation_token_hashes
        .iter()
        .any(|h| ct_eq(h.as_bytes(), hash.as_bytes()));
    if known
        || core
            .token_allows(&token, &req.path, Capability::Update)
            .await?
    {
        Ok(())
    } else {
        Err(LogicalError::PermissionDenied)
    }
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

fn caught_up(inner: &Inner, state: &ReplState) -> bool {
    if state.synced_generation.is_none() {
        return false;
    }
    let s = inner.sec_status();
    match s.state {
        SyncState::MerkleDiff | SyncState::MerkleSync => false,
        SyncState::StreamWals => s.primary_last_wal <= inner.wal.last_index(),
        // Primary unreachable after a completed sync: everything received is applied.
        SyncState::Connecting | SyncState::Idle => true,
    }
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

async fn promote(inner: &Arc<Inner>, core: &Core, req: &Request) -> Result<Response> {
    let force = get_bool(&req.data, "force")?.unwrap_or(false);
    let required = core.seal_threshold().await?;
    let mut root_key = None;
    if get_str(&req.data, "dr_operation_token")?.is_some_and(|t| !t.is_empty()) {
        authorize_op_token(inner, core, req).await?;
    } else {
        if get_bool(&req.data, "reset")?.unwrap_or(false) {
            if let Ok(mut c) = inner.ceremonies.promote.lock() {
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
                .map_err(|_| LogicalError::Internal("promote state poisoned".into()))?;
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
    let state = inner.state_snapshot().await;
    if !force && !caught_up(inner, &state) {
        return Err(LogicalError::Unavailable(
            "the secondary is still catching up with the primary; retry, or use force=true to accept losing unreplicated writes".into(),
        ));
    }
    let addr = get_str(&req.data, "primary_cluster_addr")?;
    inner.stop_follower();
    let mut state = state;
    state.mode = Mode::Primary;
    state.generation += 1;
    state.primary = Some(new_primary_state(inner, &state.cluster_id, addr)?);
    state.secondary = None;
    inner.install_tls_for(&state)?;
    inner.commit_state(state).await?;
    inner.wal.promote();
    match root_key {
        Some(root) => core.unseal_with_root_key(&root).await?,
        None => core.reload_tables().await?,
    }
    tracing::warn!("DR secondary promoted to primary");
    Ok(promote_progress(required, required, true))
}

async fn op_token_attempt(inner: &Arc<Inner>, core: &Core, req: &Request) -> Result<Response> {
    let required = core.seal_threshold().await?;
    let mut guard = inner
        .ceremonies
        .op_token
        .lock()
        .map_err(|_| LogicalError::Internal("ceremony state poisoned".into()))?;
    match req.operation {
        Operation::Read => Ok(Response::raw(
            200,
            guard
                .as_ref()
                .map(|g| g.status(""))
                .unwrap_or_else(|| idle_status(required)),
        )),
        Operation::Create | Operation::Update => {
            if guard.is_some() {
                return Err(bad("DR operation token generation already in progress"));
            }
            if get_str(&req.data, "pgp_key")?.is_some_and(|s| !s.is_empty()) {
                return Err(bad("PGP-encrypted tokens are not supported; use an OTP"));
            }
            let (otp, shown) = match get_str(&req.data, "otp")?.filter(|s| !s.is_empty()) {
                Some(otp) if otp.len() == OTP_LENGTH => (otp, String::new()),
                Some(_) => {
                    return Err(bad(format!(
                        "OTP string is wrong length; must be {OTP_LENGTH} characters"
                    )))
                }
                None => {
                    let otp = bunker_seal::otp::generate_otp(OTP_LENGTH);
                    (otp.clone(), otp)
                }
            };
            let generation = OpTokenGeneration {
                ceremony: bunker_seal::KeyCeremony::new(required),
                otp: zeroize::Zeroizing::new(otp),
                encoded: String::new(),
            };
            let body = generation.status(&shown);
            *guard = Some(generation);
            Ok(Response::raw(200, body))
        }
        Operation::Delete => {
            *guard = None;
            Ok(Response::empty())
        }
        _ => Err(LogicalError::UnsupportedOperation),
    }
}

async fn op_token_update(inner: &Arc<Inner>, core: &Core, req: &Request) -> Result<Response> {
    let key = get_str(&req.data, "key")?.ok_or_else(|| bad("'key' must be specified"))?;
    let nonce = get_str(&req.data, "nonce")?.unwrap_or_default();
    let share = bunker_seal::parse_key_share(&key).map_err(|e| bad(e.to_string()))?;
    let (root, otp) = {
        let mut guard = inner
            .ceremonies
            .op_token
            .lock()
            .map_err(|_| LogicalError::Internal("ceremony state poisoned".into()))?;
        let generation = guard
            .as_mut()
            .ok_or_else(|| bad("no DR operation token generation in progress"))?;
        if !ct_eq(generation.ceremony.nonce().as_bytes(), nonce.as_bytes()) {
            return Err(bad("incorrect nonce supplied"));
        }
        match generation
            .ceremony
            .add_share(&share)
            .map_err(|e| bad(e.to_string()))?
        {
            None => return Ok(Response::raw(200, generation.status(""))),
            Some(root) => (root, generation.otp.clone()),
        }
    };
    if core.verify_root_key(&root).await.is_err() {
        if let Ok(mut g) = inner.ceremonies.op_token.lock() {
            *g = None;
        }
        return Err(bad("the key shares do not reconstruct the root key"));
    }
    let token = format!("hvs.{}", bunker_core::token::random_base62(24));
    let encoded = bunker_seal::otp::encode_token(&token, &otp).map_err(|e| bad(e.to_string()))?;
    let mut state = inner.state_snapshot().await;
    state.operation_token_hashes.push(sha_hex(&token));
    inner.commit_state(state).await?;
    let mut guard = inner
        .ceremonies
        .op_token
        .lock()
        .map_err(|_| LogicalError::Internal("ceremony state poisoned".into()))?;
    let body = match guard.take() {
        Some(mut g) => {
            g.encoded = encoded;
            g.status("")
        }
        None => idle_status(0),
    };
    Ok(Response::raw(200, body))
}
