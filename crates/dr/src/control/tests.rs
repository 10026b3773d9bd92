//! Unit tests of the control plane's transitions and access rules, and a seeded property test
//! over random command sequences.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::tls::CertPair;

fn primary_state(tag: &str) -> PrimaryState {
    PrimaryState {
        ca_cert_pem: format!("ca-{tag}"),
        ca_key_pem: zeroize::Zeroizing::new(format!("ca-key-{tag}")),
        server: CertPair {
            cert_pem: format!("server-{tag}"),
            key_pem: zeroize::Zeroizing::new(format!("server-key-{tag}")),
        },
        sealed_keys: None,
        primary_cluster_addr: "127.0.0.1:8201".into(),
        secondaries: Default::default(),
    }
}

fn activation(cluster_id: &str, generation: u64) -> Activation {
    Activation {
        cluster_id: cluster_id.into(),
        generation,
        link: SecondaryState {
            secondary_id: "s1".into(),
            primary_cluster_addr: "127.0.0.1:8201".into(),
            primary_api_addr: "http://127.0.0.1:8200".into(),
            ca_cert_pem: "ca".into(),
            client: CertPair {
                cert_pem: "c".into(),
                key_pem: zeroize::Zeroizing::new("k".into()),
            },
            client_renewed: false,
            known_primary_cluster_addrs: Vec::new(),
        },
    }
}

fn apply(state: &ReplState, cmd: Command) -> ReplState {
    transition(state, cmd).expect("transition").state
}

/// `s` after its first sync completed and the stream bounded it.
fn consistent(s: &ReplState) -> ReplState {
    apply(
        s,
        Command::MarkConsistentAfter {
            cluster_id: s.cluster_id.clone(),
            wal_index: 0,
        },
    )
}

fn primary() -> ReplState {
    apply(
        &ReplState::default(),
        Command::EnablePrimary {
            cluster_id: "c1".into(),
            primary: primary_state("a"),
        },
    )
}

fn issue(state: &ReplState, id: &str, cert: &str) -> Result<Step, Refusal> {
    transition(
        state,
        Command::IssueSecondaryToken {
            id: id.into(),
            cert_sha256: cert.into(),
            now_unix: 100,
        },
    )
}

#[test]
fn enable_primary_persists_then_serves() {
    let step = transition(
        &ReplState::default(),
        Command::EnablePrimary {
            cluster_id: "c1".into(),
            primary: primary_state("a"),
        },
    )
    .unwrap();
    assert_eq!(step.state.mode, Mode::Primary);
    assert_eq!(step.state.generation, 1);
    assert_eq!(
        step.effects,
        vec![
            Effect::Persist,
            Effect::InstallTls,
            Effect::StartWalRecording
        ]
    );
    let again = transition(
        &step.state,
        Command::EnablePrimary {
            cluster_id: "c2".into(),
            primary: primary_state("b"),
        },
    );
    assert_eq!(
        again.unwrap_err().0,
        "this cluster is already a DR primary".to_owned()
    );
}

#[test]
fn revoked_secondary_stays_revoked_until_a_new_token_and_binds_the_new_certificate() {
    let p = apply(&issue(&primary(), "s1", "cert-1").unwrap().state, {
        Command::RevokeSecondary { id: "s1".into() }
    });
    let rec = &p.primary.as_ref().unwrap().secondaries["s1"];
    assert!(rec.revoked);
    // A new token for the same id binds the new certificate, not the old one.
    let p2 = issue(&p, "s1", "cert-2").unwrap().state;
    let rec = &p2.primary.as_ref().unwrap().secondaries["s1"];
    assert!(!rec.revoked);
    assert_eq!(rec.cert_sha256, "cert-2");
    // An id in use cannot be issued again.
    assert!(issue(&p2, "s1", "cert-3").is_err());
}

#[test]
fn revocation_closes_that_secondarys_sessions_after_persisting() {
    let p = issue(&primary(), "s1", "c").unwrap().state;
    let step = transition(&p, Command::RevokeSecondary { id: "s1".into() }).unwrap();
    let persist = step.effects.iter().position(|e| *e == Effect::Persist);
    let close = step
        .effects
        .iter()
        .position(|e| *e == Effect::CloseSessions(Some("s1".into())));
    assert!(persist.unwrap() < close.unwrap(), "{:?}", step.effects);
}

#[test]
fn access_follows_the_mode() {
    use Endpoint::*;
    assert_eq!(access(Mode::Secondary, Status), Ok(Access::Anyone));
    assert_eq!(
        access(Mode::Primary, SecondaryToken),
        Ok(Access::Token { sudo: true })
    );
    // The attack of the security review: during a promotion the same request must not go
    // from "unauthenticated on a secondary" to "executed on a primary".
    assert!(access(Mode::Secondary, SecondaryToken).is_err());
    assert!(access(Mode::Secondary, PrimaryDemote).is_err());
    assert!(access(Mode::Secondary, PrimaryDisable).is_err());
    assert!(access(Mode::Secondary, RevokeSecondary).is_err());
    for e in [
        PrimaryEnable,
        PrimaryDemote,
        PrimaryDisable,
        SecondaryToken,
        RevokeSecondary,
        SecondaryEnable,
        GeneratePublicKey,
        Recover,
        Reindex,
        MerkleCheck,
    ] {
        for mode in [Mode::Primary, Mode::Disabled] {
            if let Ok(a) = access(mode, e) {
                assert!(matches!(a, Access::Token { .. }), "{mode:?} {e:?}: {a:?}");
            }
        }
    }
    for e in [OperationTokenDelete, Recover, Reindex, MerkleCheck] {
        assert_eq!(
            access(Mode::Secondary, e),
            Ok(Access::OperationToken),
            "{e:?}"
        );
    }
    assert_eq!(
        access(Mode::Secondary, Promote),
        Ok(Access::KeySharesOrOperationToken)
    );
    assert!(access(Mode::Primary, Promote).is_err());
    assert!(access(Mode::Disabled, OperationTokenAttempt).is_err());
}

#[test]
fn operation_tokens_expire_and_die_with_the_mode() {
    let s = apply(
        &ReplState::default(),
        Command::EnableSecondary(activation("c1", 1)),
    );
    let s = apply(
        &s,
        Command::AddOperationToken {
            hash: "h1".into(),
            now_unix: 1_000,
        },
    );
    assert!(operation_token_valid(&s, "h1", 1_001));
    assert!(!operation_token_valid(&s, "h2", 1_001));
    assert!(!operation_token_valid(
        &s,
        "h1",
        1_000 + OPERATION_TOKEN_TTL_SECS
    ));
    let promoted = apply(
        &consistent(&s),
        Command::Promote {
            primary: primary_state("b"),
            caught_up: true,
            force: false,
        },
    );
    assert!(promoted.operation_tokens.is_empty());
    assert!(!operation_token_valid(&promoted, "h1", 1_001));
    let demoted = apply(&promoted, Command::DemotePrimary);
    assert!(!operation_token_valid(&demoted, "h1", 1_001));
}

#[test]
fn promote_refuses_a_secondary_that_is_behind_unless_forced() {
    let s = apply(
        &ReplState::default(),
        Command::EnableSecondary(activation("c1", 3)),
    );
    let behind = transition(
        &s,
        Command::Promote {
            primary: primary_state("b"),
            caught_up: false,
            force: false,
        },
    );
    assert!(behind.is_err());
    let forced = apply(
        &s,
        Command::Promote {
            primary: primary_state("b"),
            caught_up: false,
            force: true,
        },
    );
    assert_eq!(forced.generation, 4);
    assert_eq!(forced.mode, Mode::Primary);
}

#[test]
fn promote_refuses_a_secondary_that_was_never_consistent_and_says_what_force_means() {
    let s = apply(
        &ReplState::default(),
        Command::EnableSecondary(activation("c1", 3)),
    );
    let promote = |state: &ReplState, force| {
        transition(
            state,
            Command::Promote {
                primary: primary_state("b"),
                caught_up: true,
                force,
            },
        )
    };
    let refused = promote(&s, false).unwrap_err().0;
    assert!(refused.contains("no consistent copy"), "{refused}");
    assert!(refused.contains("force=true"), "{refused}");
    assert!(promote(&s, true).is_ok());
    assert!(promote(&consistent(&s), false).is_ok());
}

#[test]
fn stale_stream_reports_are_refused() {
    let s = apply(
        &ReplState::default(),
        Command::EnableSecondary(activation("c1", 3)),
    );
    let other_set = transition(
        &s,
        Command::MarkSynced {
            cluster_id: "c2".into(),
            generation: 3,
            consistent_at: None,
        },
    );
    assert!(other_set.is_err());
    let older = transition(
        &s,
        Command::AdoptGeneration {
            cluster_id: "c1".into(),
            generation: 2,
        },
    );
    assert!(older.is_err());
    // After a promotion, a follower that had not stopped yet cannot mark anything.
    let p = apply(
        &consistent(&s),
        Command::Promote {
            primary: primary_state("b"),
            caught_up: true,
            force: false,
        },
    );
    assert!(transition(
        &p,
        Command::MarkSynced {
            cluster_id: "c1".into(),
            generation: 3,
            consistent_at: None,
        }
    )
    .is_err());
}

#[test]
fn a_restore_on_a_primary_starts_a_new_history() {
    let p = primary();
    let begun = transition(&p, Command::BeginRestore).expect("on a primary");
    assert_eq!(begun.state.generation, p.generation + 1);
    assert_eq!(
        begun.effects,
        vec![
            Effect::Persist,
            Effect::CloseSessions(None),
            Effect::StopWalRecording
        ]
    );
    let ended = transition(&begun.state, Command::EndRestore).expect("on a primary");
    assert_eq!(ended.state.generation, p.generation + 1);
    assert_eq!(
        ended.effects,
        vec![Effect::StartWalRecording, Effect::Persist]
    );
    // Nowhere else: a secondary follows its primary's history, a disabled cluster has none.
    let secondary = consistent(&apply(
        &ReplState::default(),
        Command::EnableSecondary(activation("c1", 1)),
    ));
    for s in [ReplState::default(), secondary] {
        assert!(transition(&s, Command::BeginRestore).is_err());
        assert!(transition(&s, Command::EndRestore).is_err());
    }
}

/// A random command that is valid-looking for some mode.
fn random_command(rng: &mut StdRng, now: u64) -> Command {
    let id = format!("s{}", rng.gen_range(0..3));
    let cert = |rng: &mut StdRng| format!("cert-{}", rng.gen_range(0..6));
    match rng.gen_range(0..20) {
        18 => Command::BeginRestore,
        19 => Command::EndRestore,
        15 => Command::RenewSecondaryCertificate {
            id,
            presented: cert(rng),
            renewed: cert(rng),
        },
        16 => Command::ConfirmSecondaryCertificate {
            id,
            presented: cert(rng),
        },
        17 => Command::RenewClientCertificate {
            secondary_id: id,
            client: CertPair {
                cert_pem: cert(rng),
                key_pem: zeroize::Zeroizing::new("k2".into()),
            },
        },
        13 => Command::MarkTorn {
            cluster_id: format!("c{}", rng.gen_range(0..2)),
        },
        14 => Command::MarkConsistentAfter {
            cluster_id: format!("c{}", rng.gen_range(0..2)),
            wal_index: rng.gen_range(0..100),
        },
        0 => Command::EnablePrimary {
            cluster_id: format!("c{}", rng.gen_range(0..2)),
            primary: primary_state("x"),
        },
        1 => Command::DemotePrimary,
        2 => Command::DisablePrimary,
        3 => Command::IssueSecondaryToken {
            id,
            cert_sha256: cert(rng),
            now_unix: now,
        },
        4 => Command::RevokeSecondary { id },
        5 => Command::EnableSecondary(activation(
            &format!("c{}", rng.gen_range(0..2)),
            rng.gen_range(1..5),
        )),
        6 => Command::UpdatePrimary(activation(
            &format!("c{}", rng.gen_range(0..2)),
            rng.gen_range(1..5),
        )),
        7 => Command::DisableSecondary,
        8 => Command::Promote {
            primary: primary_state("y"),
            caught_up: rng.gen(),
            force: rng.gen(),
        },
        9 => Command::AddOperationToken {
            hash: format!("h{}", rng.gen_range(0..4)),
            now_unix: now,
        },
        10 => Command::DeleteOperationToken {
            hash: format!("h{}", rng.gen_range(0..4)),
        },
        11 => Command::AdoptGeneration {
            cluster_id: format!("c{}", rng.gen_range(0..2)),
            generation: rng.gen_range(0..8),
        },
        _ => Command::MarkSynced {
            cluster_id: format!("c{}", rng.gen_range(0..2)),
            generation: rng.gen_range(0..8),
            consistent_at: rng.gen::<bool>().then(|| rng.gen_range(0..100)),
        },
    }
}

fn check_invariants(before: &ReplState, cmd: &Command, step: &Step, now: u64) {
    let after = &step.state;
    // At most one of primary / secondary, and it matches the mode.
    assert!(
        !(after.primary.is_some() && after.secondary.is_some()),
        "{after:?}"
    );
    match after.mode {
        Mode::Primary => assert!(after.primary.is_some()),
        Mode::Secondary => assert!(after.primary.is_none()),
        Mode::Disabled => assert!(after.primary.is_none() && after.secondary.is_none()),
    }
    // Every transition persists exactly once.
    assert_eq!(
        step.effects
            .iter()
            .filter(|e| **e == Effect::Persist)
            .count(),
        1,
        "{cmd:?}: {:?}",
        step.effects
    );
    // Within one replication set, the generation never goes back.
    if before.mode != Mode::Disabled && after.cluster_id == before.cluster_id {
        assert!(after.generation >= before.generation, "{cmd:?}");
    }
    // Operation tokens die with the mode that issued them.
    if after.mode != before.mode {
        assert!(after.operation_tokens.is_empty(), "{cmd:?}: {after:?}");
    }
    if after.mode != Mode::Secondary {
        assert!(!operation_token_valid(after, "h0", now));
    }
    // A revoked secondary stays revoked until a new token is issued for its id.
    if let (Some(b), Some(a)) = (&before.primary, &after.primary) {
        for (id, rec) in &b.secondaries {
            let reissued = matches!(cmd, Command::IssueSecondaryToken { id: i, .. } if i == id);
            if rec.revoked && !reissued {
                assert!(a.secondaries.get(id).is_none_or(|r| r.revoked), "{cmd:?}");
            }
        }
    }
    // A certificate is admitted only if it was before, or this command issued it.
    if let (Some(b), Some(a)) = (&before.primary, &after.primary) {
        let issued = match cmd {
            Command::IssueSecondaryToken { cert_sha256, .. } => Some(cert_sha256),
            Command::RenewSecondaryCertificate { renewed, .. } => Some(renewed),
            _ => None,
        };
        for (id, rec) in &a.secondaries {
            for cert in std::iter::once(&rec.cert_sha256).chain(&rec.previous_cert_sha256) {
                let admitted_before = b.secondaries.get(id).is_some_and(|r| r.admits(cert));
                assert!(
                    !rec.admits(cert) || admitted_before || issued == Some(cert),
                    "{cmd:?} admitted {cert} for {id}"
                );
            }
        }
    }
    // Revocation cuts the live streams after the state that refuses them is persisted.
    if let Command::RevokeSecondary { id } = cmd {
        let persist = step.effects.iter().position(|e| *e == Effect::Persist);
        let close = step
            .effects
            .iter()
            .position(|e| *e == Effect::CloseSessions(Some(id.clone())));
        assert!(persist < close && close.is_some(), "{:?}", step.effects);
    }
    assert!(after.operation_tokens.len() <= MAX_OPERATION_TOKENS);
}

#[test]
fn random_command_sequences_keep_the_invariants() {
    let base_seed: u64 = std::env::var("BUNKER_CONTROL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x05ee_dd12);
    let runs = 300;
    let mut applied = 0usize;
    let mut seen_modes = std::collections::BTreeSet::new();
    for run in 0..runs {
        let seed = base_seed.wrapping_add(run);
        let mut rng = StdRng::seed_from_u64(seed);
        let mut state = ReplState::default();
        let mut now = 1_000u64;
        for _ in 0..200 {
            now += rng.gen_range(0..600);
            let cmd = random_command(&mut rng, now);
            let result = std::panic::catch_unwind(|| {
                let r = transition(&state, cmd.clone());
                if let Ok(step) = &r {
                    check_invariants(&state, &cmd, step, now);
                }
                r
            });
            match result {
                Ok(Ok(step)) => {
                    applied += 1;
                    state = step.state;
                    seen_modes.insert(format!("{:?}", state.mode));
                }
                Ok(Err(_)) => {}
                Err(_) => panic!(
                    "invariant broken; replay with BUNKER_CONTROL_SEED={seed} (run {run}) after {cmd:?}"
                ),
            }
        }
    }
    // The generator must reach every mode and apply a good share of commands, or the test
    // would pass without exercising anything.
    assert_eq!(seen_modes.len(), 3, "{seen_modes:?}");
    assert!(
        applied > runs as usize * 20,
        "only {applied} commands applied"
    );
}

#[test]
fn a_sync_tears_the_state_until_the_stream_bounds_it() {
    let s = apply(
        &ReplState::default(),
        Command::EnableSecondary(activation("c1", 1)),
    );
    assert_eq!(
        s.consistent_after, None,
        "a new secondary holds nothing consistent"
    );
    let bound = apply(
        &s,
        Command::MarkConsistentAfter {
            cluster_id: "c1".into(),
            wal_index: 42,
        },
    );
    assert_eq!(bound.consistent_after, Some(42));
    // Only the first frame after a sync bounds it.
    assert!(transition(
        &bound,
        Command::MarkConsistentAfter {
            cluster_id: "c1".into(),
            wal_index: 50
        }
    )
    .is_err());
    let torn = apply(
        &bound,
        Command::MarkTorn {
            cluster_id: "c1".into(),
        },
    );
    assert_eq!(torn.consistent_after, None);
    // A demoted primary is consistent as it is.
    let demoted = apply(&primary(), Command::DemotePrimary);
    assert_eq!(demoted.consistent_after, Some(0));
}

#[test]
fn a_renewed_certificate_replaces_the_presented_one_once_it_is_used() {
    let p = issue(&primary(), "s1", "cert-1").unwrap().state;
    let renew = |state: &ReplState, presented: &str, renewed: &str| {
        transition(
            state,
            Command::RenewSecondaryCertificate {
                id: "s1".into(),
                presented: presented.into(),
                renewed: renewed.into(),
            },
        )
    };
    let step = renew(&p, "cert-1", "cert-2").unwrap();
    assert_eq!(step.effects, vec![Effect::Persist, Effect::InstallTls]);
    let rec = &step.state.primary.as_ref().unwrap().secondaries["s1"];
    assert!(rec.admits("cert-1") && rec.admits("cert-2"));
    // The answer was lost: the old certificate renews again, and the lost one is dropped.
    let again = renew(&step.state, "cert-1", "cert-3").unwrap().state;
    let rec = &again.primary.as_ref().unwrap().secondaries["s1"];
    assert!(rec.admits("cert-1") && rec.admits("cert-3") && !rec.admits("cert-2"));
    // Connecting with the new one retires the old one.
    let confirmed = apply(
        &again,
        Command::ConfirmSecondaryCertificate {
            id: "s1".into(),
            presented: "cert-3".into(),
        },
    );
    let rec = &confirmed.primary.as_ref().unwrap().secondaries["s1"];
    assert!(rec.admits("cert-3") && !rec.admits("cert-1"));
    // An unknown certificate, or a revoked secondary, renews nothing.
    assert!(renew(&confirmed, "cert-1", "cert-4").is_err());
    let revoked = apply(&confirmed, Command::RevokeSecondary { id: "s1".into() });
    assert!(renew(&revoked, "cert-3", "cert-4").is_err());
}

#[test]
fn a_secondary_keeps_a_renewed_client_certificate_only_for_its_own_link() {
    let s = apply(
        &ReplState::default(),
        Command::EnableSecondary(activation("c1", 1)),
    );
    assert!(!s.secondary.as_ref().unwrap().client_renewed);
    let client = CertPair {
        cert_pem: "renewed".into(),
        key_pem: zeroize::Zeroizing::new("local key".into()),
    };
    let renewed = apply(
        &s,
        Command::RenewClientCertificate {
            secondary_id: "s1".into(),
            client: client.clone(),
        },
    );
    let link = renewed.secondary.as_ref().unwrap();
    assert!(link.client_renewed);
    assert_eq!(link.client.cert_pem, "renewed");
    assert!(transition(
        &s,
        Command::RenewClientCertificate {
            secondary_id: "other".into(),
            client,
        }
    )
    .is_err());
}
