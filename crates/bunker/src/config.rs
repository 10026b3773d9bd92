//! The server's HCL configuration file, in Vault's shape:
//!
//! ```hcl
//! storage "embedded" { path = "/var/lib/bunker" }   # or: storage "inmem" {}
//! listener "tcp" {
//!   address         = "127.0.0.1:8200"
//!   cluster_address = "127.0.0.1:8201"
//!   tls_disable     = true            # or tls_cert_file / tls_key_file
//!   # optional limits (defaults shown): http_read_header_timeout = "10s",
//!   # http_read_timeout = "30s", http_write_timeout = "0", http_idle_timeout = "5m",
//!   # max_connections = 4096, max_request_size = 33554432
//! }
//! api_addr     = "http://127.0.0.1:8200"
//! cluster_addr = "https://127.0.0.1:8201"
//! log_level    = "info"
//! ```
//!
//! The file is walked as an HCL body rather than deserialised, so unknown keys can be
//! reported by name and Vault-only settings (`ui`, `disable_mlock`) accepted and ignored.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use hcl::{Body, Expression};

#[derive(Clone, Debug, PartialEq)]
pub enum StorageConfig {
    Inmem,
    Embedded {
        path: PathBuf,
        /// redb page cache (`cache_size`, default 256 MiB).
        cache_bytes: usize,
    },
    Postgresql(bunker_storage::PostgresConfig),
}

#[derive(Clone, Debug, PartialEq)]
pub struct ListenerConfig {
    pub address: String,
    pub cluster_address: String,
    pub tls_disable: bool,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// `max_request_size`, the `http_*_timeout` settings and `max_connections`.
    pub limits: bunker_http::ListenerLimits,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ServerConfig {
    pub storage: StorageConfig,
    pub listener: ListenerConfig,
    pub api_addr: String,
    pub cluster_addr: String,
    pub cluster_name: String,
    pub log_level: Option<String>,
    /// WAL entries a DR primary keeps for secondaries to resume from.
    pub wal_retention: u64,
    /// WAL indices whose keys the key journal keeps (`replication { key_journal_retention }`;
    /// 0 turns the journal off).
    pub key_journal_retention: u64,
    /// `replication { activation_allow_http }`: a secondary may unwrap its activation token
    /// over plain http:// on loopback. For test setups; never in production.
    pub activation_allow_http: bool,
    /// The `telemetry` block.
    pub telemetry: TelemetryConfig,
    /// TTL of the HA lock (`lock_ttl` in a storage block with `ha_enabled`).
    pub ha_lock_ttl: Duration,
    /// `default_lease_ttl` and `max_lease_ttl` (768 h each unless set; the default may not
    /// exceed the maximum).
    pub lease_ttls: bunker_core::SystemTtls,
    /// The `snapshot` block: scheduled snapshots, when present.
    pub snapshot: Option<crate::scheduled_snapshots::ScheduleConfig>,
    /// Settings Vault has that are accepted (so existing files load) but have no effect here;
    /// the server warns about each at start.
    pub ignored: Vec<String>,
}

/// The `telemetry` block (Vault's keys; the Prometheus recorder is the only sink).
#[derive(Clone, Debug, PartialEq)]
pub struct TelemetryConfig {
    /// How long a metric that stopped changing is kept; zero disables Prometheus output.
    pub prometheus_retention_time: Duration,
    /// Accepted for Vault's files: Bunker never prefixes metric names with the host name.
    pub disable_hostname: bool,
    /// How often usage gauges (the token count) are recomputed.
    pub usage_gauge_period: Duration,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            prometheus_retention_time: Duration::from_secs(24 * 60 * 60),
            disable_hostname: false,
            usage_gauge_period: bunker_core::DEFAULT_USAGE_GAUGE_PERIOD,
        }
    }
}

/// `storage "postgresql"`, with Vault's keys, and `lock_ttl` for the HA lock (Vault's 15 s by
/// default). Returns the storage settings and the lock TTL.
fn parse_postgresql(body: &Body, ignored: &mut Vec<String>) -> Result<(StorageConfig, Duration)> {
    let mut pg = bunker_storage::PostgresConfig {
        connection_url: String::new(),
        table: bunker_storage::postgresql::DEFAULT_TABLE.into(),
        max_parallel: bunker_storage::postgresql::DEFAULT_MAX_PARALLEL,
        skip_create_table: false,
        ha_table: None,
        read_cache: true,
    };
    let (mut ha_enabled, mut ha_table) = (false, None);
    let mut lock_ttl = bunker_core::ha::DEFAULT_LOCK_TTL;
    for attr in body.attributes() {
        let (key, e) = (attr.key(), attr.expr());
        match key {
            "connection_url" => pg.connection_url = expr_string(key, e)?,
            "table" => pg.table = expr_string(key, e)?,
            "max_parallel" => {
                pg.max_parallel = expr_string(key, e)?
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| anyhow!("max_parallel must be a positive integer"))?
            }
            "skip_create_table" => pg.skip_create_table = expr_bool(key, e)?,
            "ha_enabled" => ha_enabled = expr_bool(key, e)?,
            "ha_table" => ha_table = Some(expr_string(key, e)?),
            "lock_ttl" => {
                lock_ttl = expr_duration(key, e)?;
                if lock_ttl < Duration::from_secs(2) {
                    bail!("storage \"postgresql\": lock_ttl must be at least 2s");
                }
            }
            "max_idle_connections" | "max_connect_retries" => {
                ignored.push(format!("storage setting {key:?}"))
            }
            other => bail!("unknown storage \"postgresql\" setting {other:?}"),
        }
    }
    if pg.connection_url.is_empty() && std::env::var_os("VAULT_PG_CONNECTION_URL").is_none() {
        bail!("storage \"postgresql\": connection_url (or VAULT_PG_CONNECTION_URL) is required");
    }
    if ha_enabled {
        pg.ha_table = Some(
            ha_table.unwrap_or_else(|| bunker_storage::postgresql::DEFAULT_HA_TABLE.to_owned()),
        );
    }
    Ok((StorageConfig::Postgresql(pg), lock_ttl))
}

fn parse_telemetry(body: &Body, ignored: &mut Vec<String>) -> Result<TelemetryConfig> {
    let mut t = TelemetryConfig::default();
    for attr in body.attributes() {
        let (key, e) = (attr.key(), attr.expr());
        match key {
            "prometheus_retention_time" => t.prometheus_retention_time = expr_duration(key, e)?,
            "disable_hostname" => t.disable_hostname = expr_bool(key, e)?,
            "usage_gauge_period" => {
                t.usage_gauge_period = expr_duration(key, e)?;
                if t.usage_gauge_period.is_zero() {
                    bail!("usage_gauge_period must be positive");
                }
            }
            other => ignored.push(format!(
                "telemetry setting {other:?} (only Prometheus output)"
            )),
        }
    }
    Ok(t)
}

/// `snapshot { interval = "1h", retain = 24, path = "/var/backups/bunker" }`.
fn parse_snapshot(
    body: &Body,
    base_dir: &Path,
) -> Result<crate::scheduled_snapshots::ScheduleConfig> {
    let (mut interval, mut retain, mut path) = (None, None, None);
    for attr in body.attributes() {
        let (key, e) = (attr.key(), attr.expr());
        match key {
            "interval" => interval = Some(expr_duration(key, e)?),
            "retain" => retain = Some(expr_positive(key, e)?),
            "path" => path = Some(base_dir.join(expr_string(key, e)?)),
            other => bail!("unknown snapshot setting {other:?}"),
        }
    }
    let interval = interval.ok_or_else(|| anyhow!("snapshot interval is required"))?;
    if interval.is_zero() {
        bail!("snapshot interval must be positive");
    }
    let retain = retain.unwrap_or(1);
    let dir = path.ok_or_else(|| anyhow!("snapshot path is required"))?;
    Ok(crate::scheduled_snapshots::ScheduleConfig {
        interval,
        retain,
        dir,
    })
}

/// Default WAL retention: enough for minutes of heavy writes; older gaps catch up from the key
/// journal, and beyond it by Merkle diff.
pub const DEFAULT_WAL_RETENTION: u64 = 100_000;
/// Default key journal retention, in multiples of the WAL's: ten times its reach, for about
/// what the WAL's values cost on disk (a write's keys are about a tenth of its values).
pub const KEY_JOURNAL_REACH: u64 = 10;
/// The default key journal retention with the default WAL retention.
pub const DEFAULT_KEY_JOURNAL_RETENTION: u64 = DEFAULT_WAL_RETENTION * KEY_JOURNAL_REACH;

fn expr_string(key: &str, e: &Expression) -> Result<String> {
    match e {
        Expression::String(s) => Ok(s.clone()),
        Expression::Number(n) => Ok(n.to_string()),
        Expression::Bool(b) => Ok(b.to_string()),
        _ => bail!("{key} must be a string"),
    }
}

/// A whole number above zero.
fn expr_positive(key: &str, e: &Expression) -> Result<usize> {
    match expr_string(key, e)?.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => bail!("{key} must be a positive integer"),
    }
}

fn expr_bool(key: &str, e: &Expression) -> Result<bool> {
    match e {
        Expression::Bool(b) => Ok(*b),
        Expression::String(s) => match s.as_str() {
            "true" | "1" => Ok(true),
            "false" | "0" | "" => Ok(false),
            _ => bail!("{key} must be a boolean"),
        },
        Expression::Number(n) => Ok(n.as_u64().unwrap_or(0) != 0),
        _ => bail!("{key} must be a boolean"),
    }
}

/// A duration such as `"30s"`, `"5m"` or a number of seconds, in whole seconds; zero disables
/// the limit. A value under a second (`"500ms"`) is refused rather than truncated to zero,
/// which would silently turn the setting off.
fn expr_duration(key: &str, e: &Expression) -> Result<Duration> {
    use bunker_core::logical::duration::{is_under_a_second, parse_duration_secs};
    let text = expr_string(key, e)?;
    if is_under_a_second(&text) {
        bail!("{key} is counted in whole seconds: {text:?} would be 0, which turns it off; use 0 or at least \"1s\"");
    }
    let secs = parse_duration_secs(&text)
        .map_err(|_| anyhow!("{key} must be a duration such as \"30s\", not {text:?}"))?;
    Ok(Duration::from_secs(secs))
}

fn parse_listener(body: &Body, ignored: &mut Vec<String>) -> Result<ListenerConfig> {
    let mut l = ListenerConfig {
        address: "127.0.0.1:8200".into(),
        cluster_address: String::new(),
        tls_disable: false,
        tls_cert_file: None,
        tls_key_file: None,
        limits: bunker_http::ListenerLimits::default(),
    };
    for attr in body.attributes() {
        let key = attr.key();
        let e = attr.expr();
        match key {
            "address" => l.address = expr_string(key, e)?,
            "cluster_address" => l.cluster_address = expr_string(key, e)?,
            "tls_disable" => l.tls_disable = expr_bool(key, e)?,
            "tls_cert_file" => l.tls_cert_file = Some(expr_string(key, e)?.into()),
            "tls_key_file" => l.tls_key_file = Some(expr_string(key, e)?.into()),
            "max_request_size" => {
                let n: i64 = expr_string(key, e)?
                    .parse()
                    .map_err(|_| anyhow!("max_request_size must be an integer"))?;
                // Vault: 0 means the default, negative disables the limit (we cap at 1 GiB).
                l.limits.max_request_bytes = match n {
                    0 => bunker_http::DEFAULT_MAX_REQUEST_BYTES,
                    n if n < 0 => 1 << 30,
                    n => usize::try_from(n).unwrap_or(1 << 30),
                };
            }
            "http_read_header_timeout" => l.limits.read_header_timeout = expr_duration(key, e)?,
            "http_read_timeout" => l.limits.read_timeout = expr_duration(key, e)?,
            "http_write_timeout" => l.limits.write_timeout = expr_duration(key, e)?,
            "http_idle_timeout" => l.limits.idle_timeout = expr_duration(key, e)?,
            "max_snapshot_size" => l.limits.max_snapshot_bytes = expr_positive(key, e)?,
            "max_connections" => l.limits.max_connections = expr_positive(key, e)?,
            "tls_min_version" | "proxy_protocol_behavior" => {
                ignored.push(format!("listener setting {key:?}"))
            }
            other => bail!("unknown listener setting {other:?}"),
        }
    }
    for block in body.blocks() {
        match block.identifier() {
            "telemetry" => {
                for attr in block.body().attributes() {
                    match attr.key() {
                        "unauthenticated_metrics_access" => {
                            l.limits.unauthenticated_metrics_access =
                                expr_bool(attr.key(), attr.expr())?
                        }
                        other => ignored.push(format!("listener telemetry setting {other:?}")),
                    }
                }
            }
            other => ignored.push(format!("listener block {other:?}")),
        }
    }
    if !l.tls_disable && (l.tls_cert_file.is_none() || l.tls_key_file.is_none()) {
        bail!("listener: tls_cert_file and tls_key_file are required unless tls_disable = true");
    }
    Ok(l)
}

pub fn parse(text: &str, base_dir: &Path) -> Result<ServerConfig> {
    let body = hcl::parse(text).context("parsing configuration")?;
    let mut storage = None;
    let mut listener = None;
    let mut journal = None;
    let mut cfg = ServerConfig {
        storage: StorageConfig::Inmem,
        listener: parse_listener(
            &hcl::Body::builder()
                .add_attribute(("tls_disable", true))
                .build(),
            &mut Vec::new(),
        )?,
        api_addr: String::new(),
        cluster_addr: String::new(),
        cluster_name: String::new(),
        log_level: None,
        wal_retention: DEFAULT_WAL_RETENTION,
        key_journal_retention: DEFAULT_KEY_JOURNAL_RETENTION,
        activation_allow_http: false,
        telemetry: TelemetryConfig::default(),
        ha_lock_ttl: bunker_core::ha::DEFAULT_LOCK_TTL,
        lease_ttls: bunker_core::SystemTtls::default(),
        snapshot: None,
        ignored: Vec::new(),
    };
    let (mut default_lease_ttl, mut max_lease_ttl) = (Duration::ZERO, Duration::ZERO);
    let mut disable_cache = false;
    for block in body.blocks() {
        let label = block
            .labels()
            .first()
            .map(|l| l.as_str().to_owned())
            .unwrap_or_default();
        match block.identifier() {
            "storage" | "backend" => {
                if storage.is_some() {
                    bail!("only one storage block is allowed");
                }
                storage = Some(match label.as_str() {
                    "inmem" => StorageConfig::Inmem,
                    "embedded" | "raft" | "file" => {
                        let attr = |key: &str| {
                            block
                                .body()
                                .attributes()
                                .find(|a| a.key() == key)
                                .map(|a| expr_string(key, a.expr()))
                                .transpose()
                        };
                        let path = attr("path")?
                            .ok_or_else(|| anyhow!("storage {label:?}: path is required"))?;
                        let cache_bytes = match attr("cache_size")? {
                            Some(size) => parse_size(&size).with_context(|| {
                                format!("storage {label:?}: cache_size {size:?}")
                            })?,
                            None => bunker_storage::embedded::DEFAULT_CACHE_BYTES,
                        };
                        let path = PathBuf::from(path);
                        StorageConfig::Embedded {
                            path: if path.is_absolute() {
                                path
                            } else {
                                base_dir.join(path)
                            },
                            cache_bytes,
                        }
                    }
                    "postgresql" => {
                        let (storage, lock_ttl) = parse_postgresql(block.body(), &mut cfg.ignored)?;
                        cfg.ha_lock_ttl = lock_ttl;
                        storage
                    }
                    other => bail!(
                        "unknown storage type {other:?} (use \"embedded\", \"postgresql\" or \"inmem\")"
                    ),
                });
            }
            "listener" => {
                if label != "tcp" {
                    bail!("unknown listener type {label:?}");
                }
                if listener.is_some() {
                    bail!("only one listener is supported");
                }
                listener = Some(parse_listener(block.body(), &mut cfg.ignored)?);
            }
            "replication" => {
                for attr in block.body().attributes() {
                    match attr.key() {
                        "wal_retention" => {
                            cfg.wal_retention = expr_string("wal_retention", attr.expr())?
                                .parse()
                                .map_err(|_| anyhow!("wal_retention must be a positive integer"))?;
                            if cfg.wal_retention == 0 {
                                bail!("wal_retention must be a positive integer");
                            }
                        }
                        "key_journal_retention" => {
                            journal = Some(
                                expr_string("key_journal_retention", attr.expr())?
                                    .parse()
                                    .map_err(|_| {
                                        anyhow!(
                                            "key_journal_retention must be a non-negative integer"
                                        )
                                    })?,
                            );
                        }
                        "activation_allow_http" => {
                            cfg.activation_allow_http = match attr.expr() {
                                Expression::Bool(b) => *b,
                                e => expr_string("activation_allow_http", e)?.parse().map_err(
                                    |_| anyhow!("activation_allow_http must be true or false"),
                                )?,
                            };
                        }
                        other => bail!("unknown replication setting {other:?}"),
                    }
                }
            }
            "telemetry" => cfg.telemetry = parse_telemetry(block.body(), &mut cfg.ignored)?,
            "snapshot" => cfg.snapshot = Some(parse_snapshot(block.body(), base_dir)?),
            "seal" | "service_registration" => {
                if block.identifier() == "seal" {
                    bail!("only the Shamir seal is supported; remove the seal block");
                }
                cfg.ignored.push(format!("block {:?}", block.identifier()));
            }
            other => bail!("unknown configuration block {other:?}"),
        }
    }
    for attr in body.attributes() {
        let key = attr.key();
        let e = attr.expr();
        match key {
            "api_addr" => cfg.api_addr = expr_string(key, e)?,
            "cluster_addr" => cfg.cluster_addr = expr_string(key, e)?,
            "cluster_name" => cfg.cluster_name = expr_string(key, e)?,
            "log_level" => cfg.log_level = Some(expr_string(key, e)?),
            "default_lease_ttl" => default_lease_ttl = expr_duration(key, e)?,
            "max_lease_ttl" => max_lease_ttl = expr_duration(key, e)?,
            "disable_cache" => disable_cache = expr_bool(key, e)?,
            "cache_size" => cfg.ignored.push(
                "setting \"cache_size\" (Vault's entry count; the PostgreSQL read cache is bounded in bytes instead)"
                    .into(),
            ),
            "ui" | "disable_mlock" | "log_format" | "pid_file" => {
                cfg.ignored.push(format!("setting {key:?}"))
            }
            other => bail!("unknown configuration setting {other:?}"),
        }
    }
    cfg.lease_ttls =
        bunker_core::SystemTtls::new(default_lease_ttl.as_secs(), max_lease_ttl.as_secs())
            .map_err(|e| anyhow!(e))?;
    cfg.storage = storage.ok_or_else(|| anyhow!("a storage block is required"))?;
    if let (true, StorageConfig::Postgresql(pg)) = (disable_cache, &mut cfg.storage) {
        pg.read_cache = false;
    }
    cfg.listener = listener.ok_or_else(|| anyhow!("a listener \"tcp\" block is required"))?;
    if cfg.api_addr.is_empty() {
        let scheme = if cfg.listener.tls_disable {
            "http"
        } else {
            "https"
        };
        cfg.api_addr = format!("{scheme}://{}", cfg.listener.address);
    }
    if cfg.cluster_addr.is_empty() && !cfg.listener.cluster_address.is_empty() {
        cfg.cluster_addr = format!("https://{}", cfg.listener.cluster_address);
    }
    cfg.key_journal_retention = match journal {
        None => cfg.wal_retention.saturating_mul(KEY_JOURNAL_REACH),
        Some(j) if j == 0 || j > cfg.wal_retention => j,
        Some(j) => bail!(
            "key_journal_retention ({j}) must be 0 (no journal) or more than wal_retention ({}): \
             the journal keeps the keys of entries older than the WAL keeps",
            cfg.wal_retention
        ),
    };
    Ok(cfg)
}

/// A byte size: a number of bytes, or a number with KiB/MiB/GiB (or KB/MB/GB) after it. At
/// least 1 MiB.
fn parse_size(text: &str) -> Result<usize> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let number: usize = digits
        .parse()
        .map_err(|_| anyhow!("expected a size such as 512MiB"))?;
    let scale: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" | "k" => 1 << 10,
        "mib" | "m" => 1 << 20,
        "gib" | "g" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        other => bail!("unknown size unit {other:?} (use KiB, MiB or GiB)"),
    };
    let bytes = number
        .checked_mul(scale)
        .ok_or_else(|| anyhow!("size too large"))?;
    if bytes < 1 << 20 {
        bail!("must be at least 1MiB");
    }
    Ok(bytes)
}

pub fn load(path: &Path) -> Result<ServerConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    parse(&text, base).with_context(|| format!("in config file {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_snapshot_block() {
        let text = |block: &str| {
            format!("storage \"inmem\" {{}}\nlistener \"tcp\" {{ tls_disable = true }}\n{block}")
        };
        let cfg = parse(
            &text("snapshot {\n interval = \"1h\"\n retain = 24\n path = \"backups\"\n}"),
            Path::new("/etc/bunker"),
        )
        .unwrap();
        assert_eq!(
            cfg.snapshot,
            Some(crate::scheduled_snapshots::ScheduleConfig {
                interval: Duration::from_secs(3600),
                retain: 24,
                dir: "/etc/bunker/backups".into(),
            })
        );
        for bad in [
            "snapshot { path = \"x\" }",
            "snapshot { interval = \"1h\" }",
            "snapshot {\n interval = \"0s\"\n path = \"x\"\n}",
            "snapshot {\n interval = \"1h\"\n path = \"x\"\n retain = 0\n}",
            "snapshot {\n interval = \"1h\"\n path = \"x\"\n every = 2\n}",
        ] {
            assert!(parse(&text(bad), Path::new("/")).is_err(), "{bad}");
        }
    }

    #[test]
    fn parses_telemetry_blocks() {
        let cfg = parse(
            r#"
            storage "inmem" {}
            listener "tcp" {
              tls_disable = true
              telemetry { unauthenticated_metrics_access = true }
            }
            telemetry {
              prometheus_retention_time = "30s"
              disable_hostname = true
              usage_gauge_period = "1m"
              statsd_address = "127.0.0.1:8125"
            }
            "#,
            Path::new("/tmp/x"),
        )
        .expect("parses");
        assert!(cfg.listener.limits.unauthenticated_metrics_access);
        assert_eq!(
            cfg.telemetry,
            TelemetryConfig {
                prometheus_retention_time: Duration::from_secs(30),
                disable_hostname: true,
                usage_gauge_period: Duration::from_secs(60),
            }
        );
        assert!(
            cfg.ignored.iter().any(|i| i.contains("statsd_address")),
            "{:?}",
            cfg.ignored
        );
        let defaults = parse(
            "storage \"inmem\" {}\nlistener \"tcp\" { tls_disable = true }",
            Path::new("/"),
        )
        .expect("parses");
        assert!(!defaults.listener.limits.unauthenticated_metrics_access);
        assert_eq!(defaults.telemetry, TelemetryConfig::default());
    }

    #[test]
    fn parses_vault_shape() {
        let cfg = parse(
            r#"
            storage "embedded" { path = "data" }
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
              key_journal_retention = 0
            }
            "#,
            Path::new("/tmp/x"),
        )
        .expect("parses");
        assert_eq!(
            cfg.storage,
            StorageConfig::Embedded {
                path: "/tmp/x/data".into(),
                cache_bytes: bunker_storage::embedded::DEFAULT_CACHE_BYTES,
            }
        );
        assert_eq!(cfg.listener.address, "127.0.0.1:8300");
        assert!(cfg.listener.tls_disable);
        assert_eq!(cfg.cluster_addr, "https://127.0.0.1:8301");
        assert_eq!(cfg.log_level.as_deref(), Some("debug"));
        assert_eq!(cfg.wal_retention, 50);
        assert_eq!(cfg.key_journal_retention, 0);
        let journal = |replication: &str| {
            let text = format!("storage \"inmem\" {{}}\nlistener \"tcp\" {{\naddress = \"127.0.0.1:8200\"\ntls_disable = true\n}}\nreplication {{\n{replication}\n}}");
            parse(&text, Path::new("/tmp/x")).map(|c| c.key_journal_retention)
        };
        assert_eq!(
            journal("wal_retention = 50").unwrap(),
            500,
            "ten times the WAL by default"
        );
        assert_eq!(
            journal("wal_retention = 50\nkey_journal_retention = 51").unwrap(),
            51
        );
        let err = journal("wal_retention = 50\nkey_journal_retention = 50").unwrap_err();
        assert!(
            err.to_string().contains("more than wal_retention (50)"),
            "{err}"
        );
        assert_eq!(cfg.listener.limits, bunker_http::ListenerLimits::default());
        // `ui` is Vault's and does nothing here: accepted, and reported so the server warns.
        assert_eq!(cfg.ignored, vec!["setting \"ui\"".to_owned()]);
        assert!(!cfg.activation_allow_http);
    }

    #[test]
    fn listener_limits() {
        let cfg = parse(
            r#"
            storage "inmem" {}
            listener "tcp" {
              tls_disable = true
              http_read_header_timeout = "2s"
              http_read_timeout = "1m"
              http_write_timeout = 90
              http_idle_timeout = "0"
              max_connections = 5
              max_request_size = 1048576
            }
            "#,
            Path::new("/"),
        )
        .expect("parses");
        let l = cfg.listener.limits;
        assert_eq!(l.read_header_timeout, Duration::from_secs(2));
        assert_eq!(l.read_timeout, Duration::from_secs(60));
        assert_eq!(l.write_timeout, Duration::from_secs(90));
        assert_eq!(l.idle_timeout, Duration::ZERO);
        assert_eq!(l.max_connections, 5);
        assert_eq!(l.max_request_bytes, 1 << 20);
        for bad in [
            "http_read_timeout = \"soon\"",
            // Under a second would be truncated to 0 (off): refused instead.
            "http_idle_timeout = \"500ms\"",
            "max_connections = 0",
            "max_connections = -3",
        ] {
            let text = format!(
                "storage \"inmem\" {{}}\nlistener \"tcp\" {{\n tls_disable = true\n {bad}\n}}"
            );
            assert!(
                parse(&text, Path::new("/")).is_err(),
                "{bad} must be refused"
            );
        }
    }

    #[test]
    fn storage_cache_size() {
        let with = |size: &str| {
            parse(
                &format!(
                    "storage \"embedded\" {{\n  path = \"d\"\n  cache_size = {size}\n}}\nlistener \"tcp\" {{ tls_disable = true }}"
                ),
                Path::new("/"),
            )
            .map(|cfg| match cfg.storage {
                StorageConfig::Embedded { cache_bytes, .. } => cache_bytes,
                StorageConfig::Inmem | StorageConfig::Postgresql(_) => 0,
            })
        };
        assert_eq!(with("\"64MiB\"").expect("valid size"), 64 << 20);
        assert_eq!(with("\"1 GiB\"").expect("valid size"), 1 << 30);
        assert_eq!(with("\"100MB\"").expect("valid size"), 100_000_000);
        assert_eq!(with("2097152").expect("valid size"), 2 << 20);
        for bad in [
            "\"12\"",
            "\"lots\"",
            "\"5 parsecs\"",
            "\"99999999999999999999GiB\"",
        ] {
            assert!(with(bad).is_err(), "{bad} must be refused");
        }
    }

    #[test]
    fn disable_cache_turns_the_postgresql_read_cache_off() {
        let read_cache = |top: &str| {
            let cfg = parse(
                &format!(
                    "{top}\nstorage \"postgresql\" {{ connection_url = \"postgres://db/x\" }}\nlistener \"tcp\" {{ tls_disable = true }}"
                ),
                Path::new("/"),
            )
            .expect("valid config");
            match cfg.storage {
                StorageConfig::Postgresql(pg) => (pg.read_cache, cfg.ignored),
                _ => panic!("postgresql storage expected"),
            }
        };
        assert!(read_cache("").0, "on by default, as Vault's cache");
        assert!(read_cache("disable_cache = false").0);
        assert!(!read_cache("disable_cache = true").0);
        let (on, ignored) = read_cache("cache_size = 1000");
        assert!(on);
        assert!(
            ignored.iter().any(|i| i.contains("cache_size")),
            "Vault's entry count is reported as ignored: {ignored:?}"
        );
    }

    #[test]
    fn rejects_bad_configs() {
        let base = Path::new("/");
        assert!(parse("listener \"tcp\" { tls_disable = true }", base).is_err());
        assert!(parse(
            "storage \"s3\" {}\nlistener \"tcp\" { tls_disable = true }",
            base
        )
        .is_err());
        assert!(parse("storage \"inmem\" {}\nlistener \"tcp\" {}", base).is_err());
        assert!(parse(
            "storage \"inmem\" {}\nlistener \"tcp\" { tls_disable = true }\nbogus = 1",
            base
        )
        .is_err());
        assert!(parse("storage {", base).is_err());
    }

    #[test]
    fn lease_ttls_default_to_vaults_and_the_default_may_not_exceed_the_max() {
        let with = |extra: &str| {
            parse(
                &format!(
                    "storage \"inmem\" {{}}\nlistener \"tcp\" {{ tls_disable = true }}\n{extra}"
                ),
                Path::new("/"),
            )
        };
        let vault = bunker_core::SystemTtls::default();
        assert_eq!(with("").expect("parses").lease_ttls, vault);
        let set = with("default_lease_ttl = \"1h\"\nmax_lease_ttl = 7200").expect("parses");
        assert_eq!(
            (set.lease_ttls.default_secs, set.lease_ttls.max_secs),
            (3600, 7200)
        );
        assert!(set.ignored.is_empty(), "{:?}", set.ignored);
        // As Vault: a max below the 768h default needs a default too.
        assert!(with("max_lease_ttl = \"1h\"").is_err());
        assert!(with("default_lease_ttl = \"2h\"\nmax_lease_ttl = \"1h\"").is_err());
        assert!(with("default_lease_ttl = \"soon\"").is_err());
    }
}
