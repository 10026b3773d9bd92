//! Fuzz targets: one function per kind of input Bunker decodes from outside. Each takes any
//! bytes and must return, without panicking or hanging; a decode error is a fine answer.
//!
//! | target | what it decodes |
//! |---|---|
//! | [`frame`] | cluster frames (`bunker_wal::frame`) carrying either direction's messages |
//! | [`messages`] | protocol messages (postcard) and WAL records, and the checks run on them |
//! | [`activation_token`] | `bdr1.` wrapped tokens, `bdr1e.` encrypted tokens, the bundle inside |
//! | [`hcl_config`] | the server configuration file (`bunker::config::parse`) |
//! | [`json_body`] | HTTP request bodies (`bunker_http::parse_body`) and the field decoders |
//! | [`acl_policy`] | ACL policies (HCL and JSON) and path matching against them |
//!
//! The afl driver (`fuzz/afl`, built by `scripts/fuzz`) calls them through [`TARGETS`];
//! `tests/corpus.rs` replays the committed corpus through them under plain `cargo test`.
//!
//! This is a test harness, not server code: where a target checks a property of the code
//! under test (a round trip, a future over in-memory bytes that must complete), it panics to
//! report the failure to the fuzzer.
#![allow(clippy::panic)]

use std::future::Future;
use std::path::Path;
use std::sync::OnceLock;
use std::task::{Context, Poll, Waker};

use bunker_dr::activation::{ActivationToken, Bundle};
use bunker_dr::merkle::{self, MerkleTree};
use bunker_dr::messages::{ToPrimary, ToSecondary};
use bunker_dr::{frame as wire, sealed_activation, tls, wal};
use bunker_policy::{Acl, Capability, Policy, DEFAULT_POLICY};
use bunker_sdk::fields;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// A fuzz target: any bytes in, nothing out.
pub type Target = fn(&[u8]);

/// Every target by the name `scripts/fuzz` and the corpus folders use.
pub const TARGETS: &[(&str, Target)] = &[
    ("frame", frame),
    ("messages", messages),
    ("activation_token", activation_token),
    ("hcl_config", hcl_config),
    ("json_body", json_body),
    ("acl_policy", acl_policy),
];

/// The target called `name`.
pub fn target(name: &str) -> Option<Target> {
    TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, target)| *target)
}

/// Frames read from one input, at most (an input holds several frames back to back).
const MAX_FRAMES: usize = 64;
/// Paths matched against a fuzzed policy, at most.
const MAX_PATHS: usize = 32;
/// "Now" for expiry checks, fixed so that a corpus replays the same way every day
/// (2027-01-15).
const NOW_UNIX: u64 = 1_800_000_000;
/// The hello limit of the primary's accept path is small; any small limit exercises the
/// same check.
const SMALL_FRAME_LIMIT: usize = 4096;

/// Drives a future over in-memory input to completion. Reading a frame from a byte slice
/// never waits, so a future still pending after many polls is a hang in the code under test.
fn complete<F: Future>(fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..1_000 {
        if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return out;
        }
    }
    panic!("a future over in-memory bytes is still pending after 1000 polls");
}

/// The bytes of `msg` as postcard encodes them. Encoding a decoded message cannot fail.
fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    match postcard::to_stdvec(msg) {
        Ok(bytes) => bytes,
        Err(e) => panic!("re-encoding a decoded message failed: {e}"),
    }
}

/// Decoding is canonical: what decodes re-encodes to bytes that decode to the same encoding.
fn check_round_trip<T: Serialize + DeserializeOwned>(msg: &T) {
    let bytes = encode(msg);
    match postcard::from_bytes::<T>(&bytes) {
        Ok(again) => assert_eq!(
            encode(&again),
            bytes,
            "postcard round trip changed a message"
        ),
        Err(e) => panic!("a re-encoded message does not decode: {e}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Cluster frames and messages

/// Cluster frames, as the primary (messages to it) and the secondary (messages to it) read
/// them: first the bytes as they are, then with every frame's version and CRC set right, so
/// that mutations reach the payload decoding instead of stopping at the checksum.
pub fn frame(data: &[u8]) {
    read_frames::<ToPrimary>(data, None, on_to_primary);
    read_frames::<ToSecondary>(data, None, on_to_secondary);
    read_frames::<ToPrimary>(data, Some(SMALL_FRAME_LIMIT), on_to_primary);
    let fixed = with_valid_headers(data);
    read_frames::<ToPrimary>(&fixed, None, on_to_primary);
    read_frames::<ToSecondary>(&fixed, None, on_to_secondary);
}

fn read_frames<T: DeserializeOwned>(data: &[u8], limit: Option<usize>, on: fn(&T)) {
    if let Some(limit) = limit {
        let mut input = data;
        if let Ok((msg, _)) = complete(wire::read_frame_limited::<_, T>(&mut input, limit)) {
            on(&msg);
        }
        return;
    }
    let mut reader = wire::FrameReader::new(data);
    let mut consumed = 0usize;
    for _ in 0..MAX_FRAMES {
        match complete(reader.read_frame::<T>()) {
            Ok((msg, n)) => {
                consumed += n;
                assert!(consumed <= data.len(), "frames longer than their input");
                on(&msg);
            }
            Err(_) => break,
        }
    }
}

/// `data` with each frame header's version set to the current one and its CRC computed over
/// the payload bytes that follow (or as many as there are).
fn with_valid_headers(data: &[u8]) -> Vec<u8> {
    let mut out = data.to_vec();
    let mut at = 0usize;
    while let Some(header) = out.get(at..at.saturating_add(wire::FRAME_HEADER_BYTES)) {
        let mut len = [0u8; 4];
        len.copy_from_slice(header.get(..4).unwrap_or(&[0; 4]));
        let len = u32::from_be_bytes(len) as usize;
        let start = at + wire::FRAME_HEADER_BYTES;
        let end = start.saturating_add(len).min(out.len());
        let crc = crc32fast::hash(out.get(start..end).unwrap_or_default());
        if let Some(version) = out.get_mut(at + 4) {
            *version = wire::FRAME_VERSION;
        }
        if let Some(slot) = out.get_mut(at + 5..start) {
            slot.copy_from_slice(&crc.to_be_bytes());
        }
        at = start.saturating_add(len);
    }
    out
}

/// What the primary does with a message before (or instead of) touching storage.
fn on_to_primary(msg: &ToPrimary) {
    check_round_trip(msg);
    match msg {
        ToPrimary::CellSums { buckets, sums, .. } => {
            let cells = merkle::cells_of_buckets(buckets);
            let ours: Vec<u64> = cells.iter().map(|&c| u64::from(c)).collect();
            let _ = merkle::differing_cells(&cells, &ours, sums);
        }
        ToPrimary::ChunkRequest { cells } => {
            let set = merkle::CellSet::new(cells);
            assert!(set.len() <= cells.len());
            for &cell in cells.iter().take(MAX_PATHS) {
                let _ = set.contains(cell);
            }
        }
        ToPrimary::Listing { entries, .. } => {
            // The primary compares the listing with its own keys by id.
            let by_id: std::collections::HashMap<merkle::KeyId, u64> =
                entries.iter().copied().collect();
            assert!(by_id.len() <= entries.len());
        }
        ToPrimary::RenewCertificate { public_key } => {
            if let Some(ca) = fuzz_ca() {
                if let Ok(pem) = ca.renew_client_cert("fuzz-secondary", public_key) {
                    let _ = tls::validity_unix(&pem);
                }
            }
        }
        ToPrimary::Hello { .. }
        | ToPrimary::MerkleRequest
        | ToPrimary::StreamFrom { .. }
        | ToPrimary::Ack { .. }
        | ToPrimary::SnapshotRequest
        | ToPrimary::JournalRequest => {}
    }
}

/// What the secondary checks on a message before applying it.
fn on_to_secondary(msg: &ToSecondary) {
    check_round_trip(msg);
    match msg {
        ToSecondary::Tree { tree, .. } => {
            let _ = tree.is_consistent();
            let _ = tree.root_hex();
            let empty = MerkleTree {
                buckets: Vec::new(),
                root: [0; 32],
                keys: 0,
            };
            let diff = tree.diff(&empty);
            assert!(
                diff.windows(2).all(|pair| matches!(pair, [a, b] if a < b)),
                "ascending, once each"
            );
            if tree.is_consistent() {
                assert_eq!(diff.len(), tree.buckets.len());
            } else {
                assert!(diff.len() <= tree.buckets.len());
            }
            assert!(tree.diff(tree).is_empty());
        }
        ToSecondary::CellDiff { cells } => {
            let _ = merkle::CellSet::new(cells);
        }
        ToSecondary::Wal { entries, .. } => {
            let mut previous = None;
            for entry in entries {
                if wal::check_replicated(entry, previous).is_err() {
                    break;
                }
                previous = Some(entry.index);
                let record = wal::encode_entry(entry);
                match wal::decode_entry(&record) {
                    Ok(back) => assert_eq!(&back, entry, "WAL record round trip"),
                    Err(e) => panic!("an encoded WAL entry does not decode: {e}"),
                }
            }
        }
        ToSecondary::Values { entries } => {
            for (key, _) in entries.iter().take(MAX_PATHS) {
                let _ = wal::is_local(key);
                let _ = merkle::cell_and_id(key);
            }
        }
        ToSecondary::Certificate { cert_pem } => {
            if let Ok(validity) = tls::validity_unix(cert_pem) {
                let _ = tls::renewal_due(validity, NOW_UNIX as i64);
            }
            let _ = tls::pem_fingerprint_hex(cert_pem);
        }
        ToSecondary::Welcome { .. }
        | ToSecondary::Refused { .. }
        | ToSecondary::Deletions { .. }
        | ToSecondary::ChunkDone
        | ToSecondary::Heartbeat { .. }
        | ToSecondary::SnapshotDone { .. }
        | ToSecondary::SnapshotStart { .. }
        | ToSecondary::JournalDone { .. }
        | ToSecondary::JournalUnavailable { .. } => {}
    }
}

/// A replication CA for the renewal path, made once per process.
fn fuzz_ca() -> Option<&'static tls::ReplicationCa> {
    static CA: OnceLock<Option<tls::ReplicationCa>> = OnceLock::new();
    CA.get_or_init(|| tls::ReplicationCa::generate("fuzz-cluster").ok())
        .as_ref()
}

/// Protocol messages without the frame around them (either direction), and WAL records as
/// stored and replicated.
pub fn messages(data: &[u8]) {
    if let Ok(msg) = postcard::from_bytes::<ToPrimary>(data) {
        on_to_primary(&msg);
    }
    if let Ok(msg) = postcard::from_bytes::<ToSecondary>(data) {
        on_to_secondary(&msg);
    }
    if let Ok(entry) = wal::decode_entry(data) {
        let _ = wal::check_replicated(&entry, None);
        assert_eq!(
            wal::decode_entry(&wal::encode_entry(&entry)).ok().as_ref(),
            Some(&entry),
            "WAL record round trip"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Activation tokens

/// The private key of the fuzzed secondary: fixed, so that a committed encrypted token replays
/// the same way (tests/corpus.rs seeds one sealed to it).
pub const FUZZ_SECONDARY_KEY: [u8; 32] = [0x42; 32];

/// Activation tokens as `sys/replication/dr/secondary/enable` decodes them: the wrapped form
/// (`bdr1.`), the encrypted form (`bdr1e.`, opened with a fixed key), the decrypted document
/// past the AEAD, and the bundle that the primary's unwrap answer carries, with the PEM and
/// key material in it parsed as the secondary does.
pub fn activation_token(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(token) = ActivationToken::decode(&text) {
        let again = ActivationToken::decode(&token.encode());
        assert!(
            again.is_ok(),
            "a re-encoded activation token does not decode"
        );
    }
    if let Ok(private) = aws_lc_rs::agreement::PrivateKey::from_private_key(
        &aws_lc_rs::agreement::X25519,
        &FUZZ_SECONDARY_KEY,
    ) {
        if let Ok(bundle) = sealed_activation::open(&text, &private, NOW_UNIX) {
            check_bundle(&bundle);
        }
    }
    if let Ok(bundle) = sealed_activation::decode_sealed(data, NOW_UNIX) {
        check_bundle(&bundle);
    }
    if let Ok(bundle) = serde_json::from_slice::<Bundle>(data) {
        check_bundle(&bundle);
    }
}

/// What activation does with a bundle's contents before it trusts them.
fn check_bundle(bundle: &Bundle) {
    let _ = bundle.root_key();
    let _ = format!("{bundle:?}");
    let _ = tls::client_config(&bundle.ca_cert_pem, &bundle.client);
    if let Ok(validity) = tls::validity_unix(&bundle.client.cert_pem) {
        let _ = tls::renewal_due(validity, NOW_UNIX as i64);
    }
    let _ = tls::cert_matches_key(&bundle.client.cert_pem, &bundle.client.key_pem);
    let _ = tls::pem_fingerprint_hex(&bundle.ca_cert_pem);
}

// ---------------------------------------------------------------------------------------------
// Configuration, request bodies, policies

/// The server configuration file (HCL), as `bunker server -config` reads it.
pub fn hcl_config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(config) = bunker::config::parse(&text, Path::new("/fuzz/config")) {
        let _ = format!("{config:?}");
    }
}

/// Request bodies as the HTTP layer parses them, then the field decoders every backend uses
/// on the result, and the duration syntax of `X-Vault-Wrap-TTL`-style headers.
pub fn json_body(data: &[u8]) {
    if let Ok(body) = bunker_http::parse_body(data) {
        for name in body.keys().take(MAX_PATHS) {
            let _ = fields::get_str(&body, name);
            let _ = fields::get_bool(&body, name);
            let _ = fields::get_u64(&body, name);
            let _ = fields::get_duration(&body, name);
            let _ = fields::get_str_list(&body, name);
            let _ = fields::get_str_map(&body, name);
        }
        let _ = fields::unknown_fields_warning(&body, &["data", "options", "ttl"]);
    }
    if data.len() <= 256 {
        let _ = bunker_sdk::duration::parse_duration_secs(&String::from_utf8_lossy(data));
    }
}

/// An ACL policy, then paths matched against it: the input is the policy text, optionally
/// followed by a NUL byte and newline-separated request paths.
pub fn acl_policy(data: &[u8]) {
    let (text, paths) = match data.iter().position(|&b| b == 0) {
        Some(nul) => (
            data.get(..nul).unwrap_or_default(),
            data.get(nul + 1..).unwrap_or_default(),
        ),
        None => (data, &[][..]),
    };
    let text = String::from_utf8_lossy(text);
    let Ok(policy) = Policy::parse("fuzz", &text) else {
        return;
    };
    for rule in policy.rules() {
        let _ = rule.pattern();
        let _ = rule.capabilities();
    }
    let mut policies = vec![policy];
    if let Some(default) = default_policy() {
        policies.push(default.clone());
    }
    let acl = Acl::new(&policies);
    let paths = String::from_utf8_lossy(paths);
    let fixed = ["secret/data/hello", "sys/policies/acl/x", "", "a/b/c"];
    for path in paths.split('\n').take(MAX_PATHS).chain(fixed) {
        let caps = acl.capabilities(path);
        let _ = acl.capability_names_for(path);
        let _ = acl.has_access_under(path);
        // `allows` and `capabilities` answer from the same governing rule.
        let denied = caps.contains(&Capability::Deny);
        for cap in Capability::GRANTING {
            assert_eq!(
                acl.allows(path, cap),
                !denied && caps.contains(&cap),
                "allows({path:?}, {cap:?}) disagrees with capabilities {caps:?}"
            );
        }
    }
}

fn default_policy() -> Option<&'static Policy> {
    static DEFAULT: OnceLock<Option<Policy>> = OnceLock::new();
    DEFAULT
        .get_or_init(|| Policy::parse("default", DEFAULT_POLICY).ok())
        .as_ref()
}
