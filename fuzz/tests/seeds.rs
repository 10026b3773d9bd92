//! The valid inputs the committed corpus started from: real frames and messages, real
//! activation tokens, the configurations and policies of the README and the tests, real
//! request bodies. `cargo test -p bunker-fuzz --test seeds -- --ignored` rewrites the
//! `seed-*` files of `fuzz/corpus/`; the test that is not ignored checks that the seeds are
//! accepted by the code they feed (a seed that fails to decode would teach the fuzzer little).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use bunker_dr::activation::{ActivationToken, Bundle};
use bunker_dr::frame::write_frame;
use bunker_dr::merkle::CellSums;
use bunker_dr::messages::{Hello, Position, ToPrimary, ToSecondary};
use bunker_dr::sealed_activation;
use bunker_dr::tls::{new_client_key, ReplicationCa};
use bunker_dr::wal::{encode_entry, WalEntry};
use bunker_storage::Op;

fn to_primary() -> Vec<(&'static str, ToPrimary)> {
    let (_, public_key) = new_client_key().unwrap();
    vec![
        (
            "hello",
            ToPrimary::Hello(Hello {
                cluster_id: "cluster-1".into(),
                secondary_id: "dr-east".into(),
                generation: 3,
                position: Some(Position {
                    generation: 3,
                    wal_index: 42,
                }),
                api_addr: "https://10.0.0.2:8200".into(),
                cluster_addr: "https://10.0.0.2:8201".into(),
            }),
        ),
        ("merkle-request", ToPrimary::MerkleRequest),
        (
            "cell-sums",
            ToPrimary::CellSums {
                buckets: vec![0, 7, 4095],
                sums: vec![1, 2, 3, u64::MAX],
                last: true,
            },
        ),
        (
            "chunk-request",
            ToPrimary::ChunkRequest {
                cells: vec![0, 63, 64, 262_143],
            },
        ),
        (
            "listing",
            ToPrimary::Listing {
                entries: vec![([7; 16], 99), ([0; 16], 0)],
                last: false,
            },
        ),
        ("stream-from", ToPrimary::StreamFrom { after: 1000 }),
        (
            "ack",
            ToPrimary::Ack {
                applied: 1000,
                time_ms: 1_790_000_000_000,
            },
        ),
        ("snapshot-request", ToPrimary::SnapshotRequest),
        ("renew", ToPrimary::RenewCertificate { public_key }),
        ("journal-request", ToPrimary::JournalRequest),
    ]
}

fn to_secondary() -> Vec<(&'static str, ToSecondary)> {
    let ca = ReplicationCa::generate("cluster-1").unwrap();
    let cert = ca
        .issue_client_cert("dr-east", Duration::from_secs(3600))
        .unwrap();
    vec![
        (
            "welcome",
            ToSecondary::Welcome {
                generation: 3,
                last_wal: 44,
                resume: true,
                cluster_addrs: vec![
                    "https://10.0.0.1:8201".into(),
                    "https://10.0.0.3:8201".into(),
                ],
            },
        ),
        (
            "refused",
            ToSecondary::Refused {
                reason: "unknown secondary".into(),
            },
        ),
        (
            "tree",
            ToSecondary::Tree {
                wal_index: 44,
                tree: {
                    let mut sums = CellSums::new();
                    sums.add_entry("logical/a", b"1");
                    sums.add_entry("logical/b", b"2");
                    sums.tree()
                },
            },
        ),
        (
            "cell-diff",
            ToSecondary::CellDiff {
                cells: vec![5, 6, 262_143],
            },
        ),
        ("deletions", ToSecondary::Deletions { ids: vec![[3; 16]] }),
        ("chunk-done", ToSecondary::ChunkDone),
        (
            "values",
            ToSecondary::Values {
                entries: vec![
                    ("logical/abc/secret".into(), Some(vec![1, 2, 3])),
                    ("core/mounts".into(), None),
                ],
            },
        ),
        (
            "wal",
            ToSecondary::Wal {
                entries: vec![wal_entry(43), wal_entry(44)],
                last_wal: 44,
            },
        ),
        (
            "heartbeat",
            ToSecondary::Heartbeat {
                last_wal: 44,
                time_ms: 1_790_000_000_000,
            },
        ),
        (
            "certificate",
            ToSecondary::Certificate {
                cert_pem: cert.cert_pem,
            },
        ),
        (
            "snapshot-done",
            ToSecondary::SnapshotDone {
                wal_index: 44,
                keys: 2,
            },
        ),
        (
            "snapshot-start",
            ToSecondary::SnapshotStart {
                keys_estimate: 1_000_000,
            },
        ),
        (
            "journal-done",
            ToSecondary::JournalDone {
                wal_index: 44,
                keys: 20_000,
            },
        ),
        (
            "journal-unavailable",
            ToSecondary::JournalUnavailable {
                reason: "the key journal does not cover the secondary's position".into(),
            },
        ),
    ]
}

fn wal_entry(index: u64) -> WalEntry {
    WalEntry {
        index,
        time_ms: 1_790_000_000_000 + index,
        ops: vec![
            Op::Put {
                key: format!("logical/kv/data/{index}"),
                value: vec![0xAB; 40],
            },
            Op::Delete {
                key: "logical/kv/old".into(),
            },
        ],
    }
}

async fn frame_of<T: serde::Serialize>(msg: &T) -> Vec<u8> {
    let mut buf = Vec::new();
    write_frame(&mut buf, msg).await.unwrap();
    buf
}

fn bundle() -> Bundle {
    let ca = ReplicationCa::generate("cluster-1").unwrap();
    let client = ca
        .issue_client_cert("dr-east", Duration::from_secs(30 * 60))
        .unwrap();
    let ca_cert_pem = ca.cert_pem.clone();
    Bundle {
        cluster_id: "cluster-1".into(),
        secondary_id: "dr-east".into(),
        generation: 1,
        primary_cluster_addr: "127.0.0.1:8201".into(),
        primary_api_addr: "https://127.0.0.1:8200".into(),
        ca_cert_pem,
        client,
        root_key_b64: zeroize::Zeroizing::new(
            base64::engine::general_purpose::STANDARD.encode([7u8; 32]),
        ),
        primary_cluster_addrs: vec!["127.0.0.1:8201".into(), "127.0.0.1:8211".into()],
    }
}

fn fuzz_public_key() -> String {
    use aws_lc_rs::agreement::{PrivateKey, X25519};
    let private = PrivateKey::from_private_key(&X25519, &bunker_fuzz::FUZZ_SECONDARY_KEY).unwrap();
    let public = private.compute_public_key().unwrap();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(public.as_ref())
}

const CONFIGS: &[(&str, &str)] = &[
    (
        "readme",
        r#"storage "embedded" {
  path       = "./data"        # relative paths are relative to this file
  cache_size = "256MiB"        # storage engine page cache (the default); the OS caches the rest
}

listener "tcp" {
  address         = "127.0.0.1:8200"
  cluster_address = "127.0.0.1:8201"   # DR replication port (TLS 1.3, mutual auth); omit to disable DR
  tls_disable     = true               # or: tls_cert_file = "...", tls_key_file = "..."
  max_request_size = 33554432          # bytes; the default
}

api_addr     = "http://127.0.0.1:8200"
cluster_addr = "https://127.0.0.1:8201"
"#,
    ),
    (
        "dr",
        r#"storage "embedded" { path = "data" }
listener "tcp" {
  address = "127.0.0.1:8300"
  cluster_address = "127.0.0.1:8301"
  tls_disable = true
}
api_addr = "http://127.0.0.1:8300"
log_level = "debug"
ui = true
replication {
  wal_retention = 50
  activation_allow_http = true
}
"#,
    ),
    (
        "limits",
        r#"storage "inmem" {}
listener "tcp" {
  tls_disable = true
  http_read_header_timeout = "2s"
  http_read_timeout = "1m"
  http_write_timeout = 90
  http_idle_timeout = "0"
  max_connections = 5
  max_request_size = 1048576
}
telemetry { statsd_address = "127.0.0.1:8125" }
disable_mlock = true
"#,
    ),
    (
        "tls",
        r#"backend "file" {
  path = "/var/lib/bunker"
  cache_size = "1GiB"
}
listener "tcp" {
  address = "0.0.0.0:8200"
  tls_cert_file = "/etc/bunker/tls.crt"
  tls_key_file  = "/etc/bunker/tls.key"
  tls_min_version = "tls13"
}
cluster_name = "east"
"#,
    ),
];

const BODIES: &[(&str, &str)] = &[
    ("kv-put", r#"{"data":{"foo":"bar"},"options":{"cas":0}}"#),
    (
        "token-create",
        r#"{"policies":["hello-read"],"ttl":"1h","renewable":true,"num_uses":3,"meta":{"app":"x"}}"#,
    ),
    (
        "policy",
        r#"{"policy":"path \"secret/data/hello\" { capabilities = [\"read\"] }"}"#,
    ),
    (
        "audit",
        r#"{"type":"file","options":{"file_path":"/tmp/bunker-audit2.log"}}"#,
    ),
    (
        "mount",
        r#"{"type":"kv","options":{"version":"2"},"config":{"default_lease_ttl":"768h"}}"#,
    ),
    ("null", "null"),
    (
        "durations",
        r#"{"ttl":"1h30m","max_ttl":3600,"explicit_max_ttl":"0","period":"-1s"}"#,
    ),
    (
        "numbers",
        r#"{"a":1e300,"b":-0,"c":18446744073709551616,"d":1.5,"e":"true","f":"0"}"#,
    ),
];

const POLICIES: &[(&str, &str)] = &[
    (
        "readme",
        "path \"secret/data/hello\" {\n  capabilities = [\"read\"]\n}\n\0secret/data/hello\nsecret/data/other",
    ),
    (
        "globs",
        r#"path "secret/+/team/*" { capabilities = ["create", "update", "read", "list"] }
path "secret/data/team/admin" { capabilities = ["deny"] }
path "sys/*" { policy = "sudo" }
path "auth/token/lookup-self" { policy = "read" }
path "kv/data/+/x" {
  capabilities = ["patch"]
  allowed_parameters = { "foo" = [] }
  min_wrapping_ttl = "1m"
}
"#,
    ),
    (
        "json",
        r#"{"path":{"secret/*":{"capabilities":["read","list"]},"secret/data/x":[{"policy":"deny"}]}}"#,
    ),
    (
        "json-list",
        "{\"path\":[{\"a/b\":{\"capabilities\":[\"read\"]}},{\"+/c/*\":{\"capabilities\":[\"sudo\",\"update\"]}}]}\0a/b\nz/c/d\n/a/b",
    ),
];

fn corpus(target: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target)
}

/// Every seed as (target, name, bytes).
async fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut all_frames = Vec::new();
    for (name, msg) in to_primary() {
        let frame = frame_of(&msg).await;
        all_frames.extend_from_slice(&frame);
        out.push(("frame", format!("seed-to-primary-{name}"), frame));
        out.push((
            "messages",
            format!("seed-to-primary-{name}"),
            postcard::to_stdvec(&msg).unwrap(),
        ));
    }
    for (name, msg) in to_secondary() {
        let frame = frame_of(&msg).await;
        out.push(("frame", format!("seed-to-secondary-{name}"), frame));
        out.push((
            "messages",
            format!("seed-to-secondary-{name}"),
            postcard::to_stdvec(&msg).unwrap(),
        ));
    }
    out.push(("frame", "seed-to-primary-all".into(), all_frames));
    out.push((
        "messages",
        "seed-wal-record".into(),
        encode_entry(&wal_entry(7)),
    ));

    let bundle = bundle();
    let wrapped = ActivationToken {
        addr: "https://127.0.0.1:8200".into(),
        token: "hvs.CAESIJ1234567890abcdef".into(),
    };
    out.push((
        "activation_token",
        "seed-wrapped".into(),
        wrapped.encode().into_bytes(),
    ));
    let sealed = sealed_activation::seal(&bundle, &fuzz_public_key(), 4_000_000_000).unwrap();
    out.push((
        "activation_token",
        "seed-encrypted".into(),
        sealed.into_bytes(),
    ));
    let document = serde_json::json!({ "bundle": &bundle, "expires_unix": 4_000_000_000u64 });
    out.push((
        "activation_token",
        "seed-decrypted".into(),
        serde_json::to_vec(&document).unwrap(),
    ));
    out.push((
        "activation_token",
        "seed-bundle".into(),
        serde_json::to_vec(&bundle).unwrap(),
    ));

    for (name, text) in CONFIGS {
        out.push((
            "hcl_config",
            format!("seed-{name}"),
            text.as_bytes().to_vec(),
        ));
    }
    for (name, text) in BODIES {
        out.push((
            "json_body",
            format!("seed-{name}"),
            text.as_bytes().to_vec(),
        ));
    }
    for (name, text) in POLICIES {
        out.push((
            "acl_policy",
            format!("seed-{name}"),
            text.as_bytes().to_vec(),
        ));
    }
    out.push((
        "acl_policy",
        "seed-default".into(),
        bunker_policy::DEFAULT_POLICY.as_bytes().to_vec(),
    ));
    out
}

/// The seeds decode: frames and messages into messages, tokens into bundles, configurations
/// and policies and bodies without an error.
#[tokio::test]
async fn seeds_are_valid_inputs() {
    use aws_lc_rs::agreement::{PrivateKey, X25519};
    let key = PrivateKey::from_private_key(&X25519, &bunker_fuzz::FUZZ_SECONDARY_KEY).unwrap();
    for (target, name, bytes) in seeds().await {
        let ok = match (target, name.as_str()) {
            ("frame", n) if n.starts_with("seed-to-primary") => {
                bunker_dr::frame::read_frame::<_, ToPrimary>(&mut bytes.as_slice())
                    .await
                    .is_ok()
            }
            ("frame", _) => bunker_dr::frame::read_frame::<_, ToSecondary>(&mut bytes.as_slice())
                .await
                .is_ok(),
            ("messages", n) if n.starts_with("seed-to-primary") => {
                postcard::from_bytes::<ToPrimary>(&bytes).is_ok()
            }
            ("messages", n) if n.starts_with("seed-to-secondary") => {
                postcard::from_bytes::<ToSecondary>(&bytes).is_ok()
            }
            ("messages", _) => bunker_dr::wal::decode_entry(&bytes).is_ok(),
            ("activation_token", "seed-wrapped") => {
                ActivationToken::decode(std::str::from_utf8(&bytes).unwrap()).is_ok()
            }
            ("activation_token", "seed-encrypted") => {
                sealed_activation::open(std::str::from_utf8(&bytes).unwrap(), &key, 1_800_000_000)
                    .is_ok()
            }
            ("activation_token", "seed-decrypted") => {
                sealed_activation::decode_sealed(&bytes, 1_800_000_000).is_ok()
            }
            ("activation_token", _) => serde_json::from_slice::<Bundle>(&bytes).is_ok(),
            ("hcl_config", _) => {
                bunker::config::parse(std::str::from_utf8(&bytes).unwrap(), Path::new("/")).is_ok()
            }
            ("json_body", _) => bunker_http::parse_body(&bytes).is_ok(),
            ("acl_policy", _) => {
                let text = String::from_utf8_lossy(&bytes);
                let text = text.split('\0').next().unwrap();
                bunker_policy::Policy::parse("seed", text).is_ok()
            }
            _ => panic!("unknown target {target}"),
        };
        assert!(ok, "seed {target}/{name} is not accepted");
        // Each seed also passes through its fuzz target.
        bunker_fuzz::target(target).unwrap()(&bytes);
    }
}

/// Rewrites the `seed-*` files of the corpus (certificates and keys are new each time).
#[tokio::test]
#[ignore = "writes fuzz/corpus/*/seed-*; run by hand when the seeds change"]
async fn write_seeds() {
    for (target, name, bytes) in seeds().await {
        let dir = corpus(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}
