//! The DR control plane as one pure state machine.
//!
//! Every change of the replication mode or of the tables a mode owns (secondaries, operation
//! tokens, generation) is a [`Command`] applied by [`transition`] to the current [`ReplState`],
//! which answers with the next state and the [`Effect`]s the runtime must carry out, in order.
//! Nothing here touches a socket, a clock or storage: the time, certificates and fetched
//! activation bundles are inputs of the commands, persistence and task control are effects.
//!
//! Who may call each `sys/replication/*` endpoint is decided here too ([`access`]), from the
//! same state the command is applied to. The runtime (`manager`) holds one async lock over the
//! state for the whole authorize → transition → persist → effects sequence, so no two
//! operations interleave and no request is authorized under one mode and executed under
//! another. Effects that need the network (unwrapping an activation token at the primary) run
//! outside the lock, and their result comes back as a new command checked against the state as
//! it is then.
//!
//! Design reason: the previous design read the mode in two places and committed copies of the
//! state after awaits, so a `secondary-token` racing a `revoke-secondary` re-admitted a revoked
//! secondary, and an unauthenticated call made during a promotion ran with the new mode's
//! powers. One function over one locked state makes both impossible by construction.

use crate::state::{
    Mode, OperationToken, PrimaryState, ReplState, SecondaryRecord, SecondaryState,
};
use crate::status::SyncState;

#[cfg(test)]
mod tests;

/// Longest time a DR operation token lives (Vault's batch tokens carry a TTL; ours too).
pub const OPERATION_TOKEN_TTL_SECS: u64 = 60 * 60;
/// At most this many live DR operation tokens are kept; the oldest is dropped beyond it.
pub const MAX_OPERATION_TOKENS: usize = 64;

/// The `sys/replication/*` endpoints, told apart before any state is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Status,
    DrStatus,
    PerformanceStatus,
    PrimaryEnable,
    PrimaryDemote,
    PrimaryDisable,
    SecondaryToken,
    RevokeSecondary,
    SecondaryEnable,
    GeneratePublicKey,
    Promote,
    UpdatePrimary,
    SecondaryDisable,
    OperationTokenAttempt,
    OperationTokenUpdate,
    OperationTokenDelete,
    Recover,
    Reindex,
    MerkleCheck,
}

impl Endpoint {
    /// The endpoint of a path relative to `sys/replication/`.
    pub fn parse(path: &str) -> Option<Endpoint> {
        use Endpoint::*;
        Some(match path {
            "status" => Status,
            "dr/status" => DrStatus,
            "performance/status" => PerformanceStatus,
            "dr/primary/enable" => PrimaryEnable,
            "dr/primary/demote" => PrimaryDemote,
            "dr/primary/disable" => PrimaryDisable,
            "dr/primary/secondary-token" => SecondaryToken,
            "dr/primary/revoke-secondary" => RevokeSecondary,
            "dr/secondary/enable" => SecondaryEnable,
            "dr/secondary/generate-public-key" => GeneratePublicKey,
            "dr/secondary/promote" => Promote,
            "dr/secondary/update-primary" => UpdatePrimary,
            "dr/secondary/disable" => SecondaryDisable,
            "dr/secondary/generate-operation-token/attempt" => OperationTokenAttempt,
            "dr/secondary/generate-operation-token/update" => OperationTokenUpdate,
            "dr/secondary/operation-token/delete" => OperationTokenDelete,
            "dr/secondary/recover" | "recover" => Recover,
            "dr/secondary/reindex" | "reindex" => Reindex,
            "dr/secondary/merkle-check" | "merkle-check" | "dr/primary/merkle-check" => MerkleCheck,
            _ => return None,
        })
    }
}

/// What a caller must present for an endpoint in the current mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Anyone (status for monitoring, the key-share ceremony whose shares are the credential).
    Anyone,
    /// A client token whose policy grants the operation's capability on the path (and `sudo`).
    Token { sudo: bool },
    /// A DR operation token of this secondary (not any replicated token).
    OperationToken,
    /// A quorum of the primary's unseal key shares, or a DR operation token.
    KeySharesOrOperationToken,
}

/// Why a request or command was refused; the text is for the operator.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);

fn refuse<T>(msg: impl Into<String>) -> Result<T, Refusal> {
    Err(Refusal(msg.into()))
}

const NOT_PRIMARY: &str = "this cluster is not a DR primary";
const NOT_SECONDARY: &str = "this cluster is not a DR secondary";

/// Who may call `endpoint` while the cluster is in `mode`, or why nobody may.
pub fn access(mode: Mode, endpoint: Endpoint) -> Result<Access, Refusal> {
    use Endpoint::*;
    match (mode, endpoint) {
        (_, Status | DrStatus | PerformanceStatus) => Ok(Access::Anyone),
        // On a secondary every DR operation is authorised by the primary's key shares or a DR
        // operation token; client tokens are the primary's and mean nothing here.
        (Mode::Secondary, Promote | SecondaryDisable | UpdatePrimary) => {
            Ok(Access::KeySharesOrOperationToken)
        }
        (Mode::Secondary, OperationTokenAttempt | OperationTokenUpdate) => Ok(Access::Anyone),
        (Mode::Secondary, OperationTokenDelete | Recover | Reindex | MerkleCheck) => {
            Ok(Access::OperationToken)
        }
        (Mode::Secondary, PrimaryEnable) => {
            refuse("this cluster is a DR secondary; promote it instead")
        }
        (Mode::Secondary, PrimaryDemote | PrimaryDisable | SecondaryToken | RevokeSecondary) => {
            refuse(NOT_PRIMARY)
        }
        (Mode::Secondary, SecondaryEnable) => {
            refuse("this cluster is already a DR secondary; use update-primary")
        }
        (Mode::Secondary, GeneratePublicKey) => {
            refuse("generate-public-key is for a cluster about to become a DR secondary")
        }
        // A primary or a cluster without DR: ordinary client tokens and ACLs.
        (Mode::Primary, PrimaryEnable) => refuse("this cluster is already a DR primary"),
        (Mode::Disabled, PrimaryDemote | PrimaryDisable | SecondaryToken | RevokeSecondary) => {
            refuse(NOT_PRIMARY)
        }
        (Mode::Primary, SecondaryEnable) => {
            refuse("this cluster is a DR primary; disable or demote it first")
        }
        (Mode::Primary, GeneratePublicKey) => {
            refuse("generate-public-key is for a cluster about to become a DR secondary")
        }
        (
            _,
            Promote
            | UpdatePrimary
            | SecondaryDisable
            | OperationTokenAttempt
            | OperationTokenUpdate
            | OperationTokenDelete,
        ) => refuse(NOT_SECONDARY),
        (_, SecondaryToken | Reindex) => Ok(Access::Token { sudo: true }),
        (
            _,
            PrimaryEnable | PrimaryDemote | PrimaryDisable | RevokeSecondary | SecondaryEnable
            | GeneratePublicKey | Recover | MerkleCheck,
        ) => Ok(Access::Token { sudo: false }),
    }
}

/// Where a secondary gets its primary from: the fields of an activation bundle.
#[derive(Clone, Debug)]
pub struct Activation {
    pub cluster_id: String,
    pub generation: u64,
    pub link: SecondaryState,
}

/// A change requested of the control plane: by an endpoint, or by the secondary's stream
/// reporting what it learned from the primary.
#[derive(Clone, Debug)]
pub enum Command {
    EnablePrimary {
        cluster_id: String,
        primary: PrimaryState,
    },
    DemotePrimary,
    DisablePrimary,
    /// A snapshot restore is about to replace this primary's storage: a new history starts.
    /// The generation moves on (no secondary can resume from a WAL position of the old one:
    /// each resyncs by Merkle diff), the live streams close, and nothing is recorded in the WAL
    /// until [`Command::EndRestore`] (the restore's batches are far larger than WAL entries,
    /// and no secondary could use them).
    BeginRestore,
    /// The restore is over (done or failed): the WAL records again.
    EndRestore,
    /// Record a secondary and the fingerprint of the certificate issued with its token.
    IssueSecondaryToken {
        id: String,
        cert_sha256: String,
        now_unix: u64,
    },
    RevokeSecondary {
        id: String,
    },
    /// A secondary connected with `presented` renews its certificate to `renewed`.
    RenewSecondaryCertificate {
        id: String,
        presented: String,
        renewed: String,
    },
    /// A secondary connected with its current certificate: the one before it is retired.
    ConfirmSecondaryCertificate {
        id: String,
        presented: String,
    },
    /// The primary's own server certificate, renewed (its key is new too).
    RenewServerCertificate {
        server: crate::tls::CertPair,
    },
    /// This secondary's client certificate, renewed with a key generated here.
    RenewClientCertificate {
        secondary_id: String,
        client: crate::tls::CertPair,
    },
    EnableSecondary(Activation),
    UpdatePrimary(Activation),
    DisableSecondary,
    /// `caught_up` and `force` are inputs: the stream's progress is runtime state.
    Promote {
        primary: PrimaryState,
        caught_up: bool,
        force: bool,
    },
    AddOperationToken {
        hash: String,
        now_unix: u64,
    },
    DeleteOperationToken {
        hash: String,
    },
    /// The primary announced its cluster's addresses (all its HA nodes).
    LearnPrimaryAddrs {
        cluster_id: String,
        addrs: Vec<String>,
    },
    /// The stream met a primary of a newer generation.
    AdoptGeneration {
        cluster_id: String,
        generation: u64,
    },
    /// The stream finished a sync with the primary of `generation`. A staged sync commits
    /// everything at once, so the local state is then consistent at `consistent_at`.
    MarkSynced {
        cluster_id: String,
        generation: u64,
        consistent_at: Option<u64>,
    },
    /// A sync is about to write values that may be ahead of the WAL: the local state is torn
    /// until the stream says how far the primary was.
    MarkTorn {
        cluster_id: String,
    },
    /// The first stream frame after a sync: the primary's last WAL index then bounds every
    /// value the sync read, so replaying through it makes the local state consistent.
    MarkConsistentAfter {
        cluster_id: String,
        wal_index: u64,
    },
}

/// What the runtime must do after a transition, in this order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Write the new state durably and make it the live one.
    Persist,
    StopFollower,
    StartFollower,
    /// Delete every local key (a cluster becoming a secondary).
    WipeStorage,
    StartWalRecording,
    StopWalRecording,
    /// Serve the cluster port with the new state's certificates (or stop serving it).
    InstallTls,
    /// Close the live streams of one secondary (or all) and wait until they stopped sending.
    CloseSessions(Option<String>),
    /// Open the barrier with the key shares the promotion was authorised by, or reload the
    /// tables from storage when it is already open.
    OpenBarrier,
    /// Reload everything cached from storage (replication changed it underneath).
    ReloadTables,
}

/// The result of a transition: the next state and the effects to carry out.
#[derive(Clone, Debug)]
pub struct Step {
    pub state: ReplState,
    pub effects: Vec<Effect>,
}

fn require(state: &ReplState, mode: Mode) -> Result<(), Refusal> {
    if state.mode == mode {
        return Ok(());
    }
    refuse(match mode {
        Mode::Primary => NOT_PRIMARY,
        Mode::Secondary => NOT_SECONDARY,
        Mode::Disabled => "DR replication is already enabled on this cluster",
    })
}

/// Secondary `id`'s record on a primary.
fn record_mut<'a>(state: &'a mut ReplState, id: &str) -> Option<&'a mut SecondaryRecord> {
    state.primary.as_mut()?.secondaries.get_mut(id)
}

/// A new mode starts without the operation tokens of the old one.
fn new_mode(mode: Mode, cluster_id: String, generation: u64) -> ReplState {
    ReplState {
        mode,
        cluster_id,
        generation,
        ..ReplState::default()
    }
}

/// Apply `command` to `state`. Pure: the same inputs always give the same step.
pub fn transition(state: &ReplState, command: Command) -> Result<Step, Refusal> {
    use Effect::*;
    let step = |state, effects: &[Effect]| {
        Ok(Step {
            state,
            effects: effects.to_vec(),
        })
    };
    match command {
        Command::EnablePrimary {
            cluster_id,
            primary,
        } => {
            require(state, Mode::Disabled).or_else(|_| match state.mode {
                Mode::Primary => refuse("this cluster is already a DR primary"),
                _ => refuse("this cluster is a DR secondary; promote it instead"),
            })?;
            let mut next = new_mode(Mode::Primary, cluster_id, 1);
            next.primary = Some(primary);
            step(next, &[Persist, InstallTls, StartWalRecording])
        }
        Command::BeginRestore => {
            require(state, Mode::Primary)?;
            let mut next = state.clone();
            next.generation = state.generation.saturating_add(1);
            step(next, &[Persist, CloseSessions(None), StopWalRecording])
        }
        Command::EndRestore => {
            require(state, Mode::Primary)?;
            // Recording first: it must resume even if the persist (of an unchanged state) fails.
            step(state.clone(), &[StartWalRecording, Persist])
        }
        Command::DemotePrimary => {
            require(state, Mode::Primary)?;
            let mut next = new_mode(Mode::Secondary, state.cluster_id.clone(), state.generation);
            next.synced_generation = Some(state.generation);
            // A demoted primary holds exactly its own history: consistent as it is.
            next.consistent_after = Some(0);
            step(
                next,
                &[
                    StopWalRecording,
                    Persist,
                    InstallTls,
                    CloseSessions(None),
                    StopFollower,
                ],
            )
        }
        Command::DisablePrimary => {
            require(state, Mode::Primary)?;
            step(
                ReplState::default(),
                &[StopWalRecording, Persist, InstallTls, CloseSessions(None)],
            )
        }
        Command::IssueSecondaryToken {
            id,
            cert_sha256,
            now_unix,
        } => {
            require(state, Mode::Primary)?;
            let mut next = state.clone();
            let Some(primary) = next.primary.as_mut() else {
                return refuse(NOT_PRIMARY);
            };
            if primary.secondaries.get(&id).is_some_and(|s| !s.revoked) {
                return refuse(format!("a secondary with id {id:?} already exists"));
            }
            primary.secondaries.insert(
                id.clone(),
                SecondaryRecord {
                    id,
                    revoked: false,
                    issued_unix: now_unix,
                    cert_sha256,
                    previous_cert_sha256: None,
                },
            );
            step(next, &[Persist, InstallTls])
        }
        Command::RevokeSecondary { id } => {
            require(state, Mode::Primary)?;
            let mut next = state.clone();
            if let Some(rec) = record_mut(&mut next, &id) {
                rec.revoked = true;
            }
            step(next, &[Persist, InstallTls, CloseSessions(Some(id))])
        }
        Command::RenewSecondaryCertificate {
            id,
            presented,
            renewed,
        } => {
            require(state, Mode::Primary)?;
            let mut next = state.clone();
            let Some(rec) = record_mut(&mut next, &id).filter(|r| r.admits(&presented)) else {
                return refuse("secondary is unknown or revoked");
            };
            rec.previous_cert_sha256 = Some(presented);
            rec.cert_sha256 = renewed;
            step(next, &[Persist, InstallTls])
        }
        Command::ConfirmSecondaryCertificate { id, presented } => {
            require(state, Mode::Primary)?;
            let mut next = state.clone();
            let Some(rec) = record_mut(&mut next, &id)
                .filter(|r| !r.revoked && r.cert_sha256 == presented)
                .filter(|r| r.previous_cert_sha256.is_some())
            else {
                return refuse("nothing to confirm");
            };
            rec.previous_cert_sha256 = None;
            step(next, &[Persist, InstallTls])
        }
        Command::RenewServerCertificate { server } => {
            require(state, Mode::Primary)?;
            let mut next = state.clone();
            let Some(primary) = next.primary.as_mut() else {
                return refuse(NOT_PRIMARY);
            };
            primary.server = server;
            // The new key is sealed again when persisted.
            primary.sealed_keys = None;
            step(next, &[Persist, InstallTls])
        }
        Command::RenewClientCertificate {
            secondary_id,
            client,
        } => {
            require(state, Mode::Secondary)?;
            let mut next = state.clone();
            let Some(link) = next
                .secondary
                .as_mut()
                .filter(|l| l.secondary_id == secondary_id)
            else {
                return refuse("stale certificate renewal");
            };
            link.client = client;
            link.client_renewed = true;
            step(next, &[Persist])
        }
        Command::EnableSecondary(activation) => {
            require(state, Mode::Disabled).or_else(|_| match state.mode {
                Mode::Primary => refuse("this cluster is a DR primary; disable or demote it first"),
                _ => refuse("this cluster is already a DR secondary; use update-primary"),
            })?;
            let mut next = new_mode(
                Mode::Secondary,
                activation.cluster_id,
                activation.generation,
            );
            next.secondary = Some(activation.link);
            step(
                next,
                &[
                    StopFollower,
                    StopWalRecording,
                    WipeStorage,
                    Persist,
                    StartFollower,
                ],
            )
        }
        Command::UpdatePrimary(activation) => {
            require(state, Mode::Secondary)?;
            if activation.cluster_id != state.cluster_id {
                return refuse(
                    "the activation token is for another replication set; disable and enable instead",
                );
            }
            let mut next = state.clone();
            next.secondary = Some(activation.link);
            step(next, &[Persist, StartFollower])
        }
        Command::DisableSecondary => {
            require(state, Mode::Secondary)?;
            step(ReplState::default(), &[StopFollower, Persist, ReloadTables])
        }
        Command::Promote {
            primary,
            caught_up,
            force,
        } => {
            require(state, Mode::Secondary)?;
            if !force && state.consistent_after.is_none() {
                return refuse(
                    "this secondary holds no consistent copy of the primary: its first sync has not finished, or a sync too large to stage is writing in place; it is a mix of the primary's states and may hold torn secrets. Retry once it streams, or use force=true to promote it as it is",
                );
            }
            if !force && !caught_up {
                return refuse(
                    "the secondary is still catching up with the primary; retry, or use force=true to accept losing unreplicated writes",
                );
            }
            let mut next = new_mode(
                Mode::Primary,
                state.cluster_id.clone(),
                state.generation.saturating_add(1),
            );
            next.primary = Some(primary);
            step(
                next,
                // The barrier opens before the state is persisted: the new primary's keys
                // are written sealed by it.
                &[
                    StopFollower,
                    OpenBarrier,
                    Persist,
                    InstallTls,
                    StartWalRecording,
                ],
            )
        }
        Command::AddOperationToken { hash, now_unix } => {
            require(state, Mode::Secondary)?;
            let mut next = state.clone();
            next.operation_tokens.retain(|t| t.expires_unix > now_unix);
            next.operation_tokens.push(OperationToken {
                hash,
                expires_unix: now_unix.saturating_add(OPERATION_TOKEN_TTL_SECS),
            });
            let excess = next
                .operation_tokens
                .len()
                .saturating_sub(MAX_OPERATION_TOKENS);
            next.operation_tokens.drain(..excess);
            step(next, &[Persist])
        }
        Command::DeleteOperationToken { hash } => {
            require(state, Mode::Secondary)?;
            let mut next = state.clone();
            next.operation_tokens.retain(|t| t.hash != hash);
            step(next, &[Persist])
        }
        Command::AdoptGeneration {
            cluster_id,
            generation,
        } => {
            require(state, Mode::Secondary)?;
            if cluster_id != state.cluster_id || generation <= state.generation {
                return refuse("stale generation report");
            }
            let mut next = state.clone();
            next.generation = generation;
            step(next, &[Persist])
        }
        Command::LearnPrimaryAddrs { cluster_id, addrs } => {
            require(state, Mode::Secondary)?;
            if cluster_id != state.cluster_id {
                return refuse("stale address report");
            }
            let Some(link) = state.secondary.as_ref() else {
                return refuse(NOT_SECONDARY);
            };
            // Newest first, then what was known before, bounded.
            let mut known: Vec<String> = Vec::new();
            for a in addrs.iter().chain(&link.known_primary_cluster_addrs) {
                if !a.is_empty() && a.len() <= 512 && !known.contains(a) {
                    known.push(a.clone());
                }
            }
            known.truncate(crate::state::MAX_KNOWN_PRIMARY_ADDRS);
            let mut next = state.clone();
            if known == link.known_primary_cluster_addrs {
                return step(next, &[]);
            }
            if let Some(link) = next.secondary.as_mut() {
                link.known_primary_cluster_addrs = known;
            }
            step(next, &[Persist])
        }
        Command::MarkTorn { cluster_id } => {
            require(state, Mode::Secondary)?;
            if cluster_id != state.cluster_id {
                return refuse("stale sync report");
            }
            let mut next = state.clone();
            next.consistent_after = None;
            step(next, &[Persist])
        }
        Command::MarkConsistentAfter {
            cluster_id,
            wal_index,
        } => {
            require(state, Mode::Secondary)?;
            if cluster_id != state.cluster_id || state.consistent_after.is_some() {
                return refuse("stale or repeated consistency report");
            }
            let mut next = state.clone();
            next.consistent_after = Some(wal_index);
            step(next, &[Persist])
        }
        Command::MarkSynced {
            cluster_id,
            generation,
            consistent_at,
        } => {
            require(state, Mode::Secondary)?;
            if cluster_id != state.cluster_id || generation != state.generation {
                return refuse("stale sync report");
            }
            let mut next = state.clone();
            next.synced_generation = Some(generation);
            if consistent_at.is_some() {
                next.consistent_after = consistent_at;
            }
            step(next, &[Persist])
        }
    }
}

/// Whether a secondary that applied the WAL through `applied` may be promoted without
/// `force`: it finished a sync, its state is a consistent prefix of the primary's (a sync
/// wrote values ahead of what was replayed until the WAL passes the bound the stream
/// reported), and it has everything it heard the primary had (`primary_last_wal`), or the
/// primary is unreachable. The promotion endpoint and the simulation both ask this.
pub fn caught_up(
    state: &ReplState,
    applied: u64,
    sync_state: SyncState,
    primary_last_wal: u64,
) -> bool {
    if state.synced_generation.is_none() {
        return false;
    }
    match state.consistent_after {
        Some(bound) if applied >= bound => {}
        _ => return false,
    }
    match sync_state {
        SyncState::MerkleDiff | SyncState::MerkleSync => false,
        SyncState::StreamWals => primary_last_wal <= applied,
        // Primary unreachable after a completed sync: everything received is applied.
        SyncState::Connecting | SyncState::Idle => true,
    }
}

/// Whether `hash` (SHA-256 hex of a presented token) is a live DR operation token of `state`.
/// Compares in constant time.
pub fn operation_token_valid(state: &ReplState, hash: &str, now_unix: u64) -> bool {
    use subtle::ConstantTimeEq;
    state.mode == Mode::Secondary
        && state.operation_tokens.iter().fold(false, |found, t| {
            let same =
                t.hash.len() == hash.len() && bool::from(t.hash.as_bytes().ct_eq(hash.as_bytes()));
            found | (same && t.expires_unix > now_unix)
        })
}
