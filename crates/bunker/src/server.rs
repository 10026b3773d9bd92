//! `bunker server`: wires storage, core, engines and the HTTP listener, handles dev mode,
//! signals and the periodic token tidy.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use bunker_cli::ServerArgs;
use bunker_core::{Core, CoreConfig, MountEntry};
use bunker_storage::{Backend, EmbeddedBackend, HookedBackend, InmemBackend};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;

use bunker::config::{self, ListenerConfig, ServerConfig, StorageConfig};

/// How often expired tokens are revoked in the background.
const TIDY_INTERVAL: Duration = Duration::from_secs(60);

pub fn run(args: ServerArgs) -> Result<()> {
    let cfg = if args.dev {
        dev_config(&args)
    } else {
        match &args.config {
            Some(path) => config::load(path)?,
            None => bail!("a configuration file must be given with -config, or use -dev"),
        }
    };
    let level = args
        .log_level
        .clone()
        .or_else(|| cfg.log_level.clone())
        .unwrap_or_else(|| "info".into());
    init_tracing(&level, args.log_format.as_deref() == Some("json"))?;
    bunker_dr::failpoint::announce();
    for what in &cfg.ignored {
        tracing::warn!(
            "configuration {what} is accepted for compatibility with Vault but has no effect"
        );
    }
    let workers = worker_threads(
        std::env::var_os("TOKIO_WORKER_THREADS")
            .as_deref()
            .map(std::ffi::OsStr::to_string_lossy)
            .as_deref(),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
    )?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(cfg, args))
}

/// How many async worker threads to run: what the operator set in `TOKIO_WORKER_THREADS`
/// (checked here, so a bad value is an error rather than tokio's panic), else one fewer than
/// the cores, at least one. The storage writer is a thread of its own that is busy whenever
/// writes are, so a worker per core makes the two fight for a core and doubles the wake-ups
/// per request: on 2 cores one worker measured lower DR replication lag (p50 1.5-1.7 against
/// 2.0-2.8 ms) and ~20 % less CPU per write (bench/README.md, "One worker thread per core but
/// one").
fn worker_threads(operator: Option<&str>, cores: usize) -> Result<usize> {
    let Some(text) = operator else {
        return Ok(cores.saturating_sub(1).max(1));
    };
    match text.trim().parse::<usize>() {
        Ok(workers) if workers > 0 => Ok(workers),
        _ => bail!("TOKIO_WORKER_THREADS must be a number of threads, at least 1 (it is {text:?})"),
    }
}

fn dev_config(args: &ServerArgs) -> ServerConfig {
    ServerConfig {
        storage: StorageConfig::Inmem,
        listener: ListenerConfig {
            address: args.dev_listen_address.clone(),
            cluster_address: String::new(),
            tls_disable: true,
            tls_cert_file: None,
            tls_key_file: None,
            limits: bunker_http::ListenerLimits::default(),
        },
        api_addr: format!("http://{}", args.dev_listen_address),
        cluster_addr: String::new(),
        cluster_name: String::new(),
        log_level: None,
        wal_retention: config::DEFAULT_WAL_RETENTION,
        key_journal_retention: config::DEFAULT_KEY_JOURNAL_RETENTION,
        activation_allow_http: false,
        telemetry: config::TelemetryConfig::default(),
        ha_lock_ttl: bunker_core::ha::DEFAULT_LOCK_TTL,
        lease_ttls: bunker_core::SystemTtls::default(),
        snapshot: None,
        ignored: Vec::new(),
    }
}

fn init_tracing(level: &str, json: bool) -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .context("invalid log level")?;
    // Colours only on a terminal: a log redirected to a file or a journal stays plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let result = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    result.map_err(|e| anyhow::anyhow!("initialising logging: {e}"))
}

/// Build a core with every built-in engine registered.
pub fn build_core(backend: Arc<dyn Backend>, config: CoreConfig) -> Arc<Core> {
    let core = Core::new(backend, config);
    core.register_backend("kv", Arc::new(bunker_engines::kv_factory()));
    core.register_backend("generic", Arc::new(bunker_engines::kv_factory()));
    core.register_backend("cubbyhole", Arc::new(bunker_engines::cubbyhole_factory()));
    core.register_backend("transit", Arc::new(bunker_engines::transit_factory()));
    core.register_auth_backend("userpass", Arc::new(bunker_auth::userpass_factory()));
    core.register_auth_backend("approle", Arc::new(bunker_auth::approle_factory()));
    core
}

fn load_tls(listener: &ListenerConfig) -> Result<Option<bunker_http::ListenerTls>> {
    if listener.tls_disable {
        return Ok(None);
    }
    let (Some(cert), Some(key)) = (&listener.tls_cert_file, &listener.tls_key_file) else {
        bail!("tls_cert_file and tls_key_file are required");
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing certificates in {}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading private key {}", key.display()))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS protocol versions")?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .context("loading the TLS certificate and key")?;
    Ok(Some(Arc::new(config)))
}

async fn serve(cfg: ServerConfig, args: ServerArgs) -> Result<()> {
    // Both backends run a commit hook, which replication requires (the WAL is written in the
    // same commit as the data).
    let mut ha_backend: Option<Arc<dyn bunker_storage::HaBackend>> = None;
    let (backend, storage_type): (Arc<dyn HookedBackend>, &str) = match &cfg.storage {
        StorageConfig::Inmem => (Arc::new(InmemBackend::new()), "inmem"),
        StorageConfig::Embedded { path, cache_bytes } => (
            Arc::new(
                EmbeddedBackend::open_with_cache(path, *cache_bytes)
                    .with_context(|| format!("opening storage at {}", path.display()))?,
            ),
            "embedded",
        ),
        StorageConfig::Postgresql(pg) => {
            let backend = Arc::new(
                bunker_storage::PostgresBackend::connect(pg)
                    .await
                    .context("connecting to PostgreSQL storage")?,
            );
            if pg.ha_table.is_some() {
                ha_backend = Some(backend.clone());
            }
            (backend, "postgresql")
        }
    };
    let core = build_core(
        backend.clone() as Arc<dyn Backend>,
        CoreConfig {
            cluster_name: cfg.cluster_name.clone(),
            api_addr: cfg.api_addr.clone(),
            cluster_addr: cfg.cluster_addr.clone(),
            storage_type: storage_type.into(),
            usage_gauge_period: cfg.telemetry.usage_gauge_period,
            lease_ttls: cfg.lease_ttls,
        },
    );
    install_metrics(&core, &cfg.telemetry);
    let mut forwarding = None;
    if let Some(ha_backend) = ha_backend {
        if cfg.api_addr.is_empty() {
            anyhow::bail!("ha_enabled needs api_addr: standbys send clients to the active node's");
        }
        let ha = bunker_core::ha::Ha::new(
            ha_backend,
            bunker_core::ha::HaConfig::new(cfg.ha_lock_ttl, &cfg.api_addr, &cfg.cluster_addr),
        );
        // Standbys forward requests to the active node over the cluster port, with the
        // credentials it advertises at each activation.
        if !cfg.listener.cluster_address.is_empty() {
            let f = bunker_http::forward::Forwarding::new(core.clone());
            ha.set_advertiser(f.clone());
            forwarding = Some(f);
        }
        core.enable_ha(ha);
    }
    let dr = bunker_dr::DrManager::start(
        &core,
        backend,
        bunker_dr::DrConfig {
            cluster_listen_addr: Some(cfg.listener.cluster_address.clone())
                .filter(|a| !a.is_empty()),
            cluster_addr: cfg.cluster_addr.clone(),
            api_addr: cfg.api_addr.clone(),
            wal_retention: cfg.wal_retention,
            key_journal_retention: cfg.key_journal_retention,
            activation_allow_http: cfg.activation_allow_http,
        },
    )
    .await
    .context("starting DR replication")?;
    if let Some(ha) = core.ha() {
        // The runner starts once replication is registered, so an activation reaches it.
        tokio::spawn(bunker_core::ha::run(core.clone(), ha.clone()));
        tracing::info!(lock_ttl = ?cfg.ha_lock_ttl, "HA enabled: this node starts as a standby");
    }
    let tls = load_tls(&cfg.listener)?;
    let listener = TcpListener::bind(&cfg.listener.address)
        .await
        .with_context(|| format!("binding the API listener to {}", cfg.listener.address))?;
    let local = listener.local_addr()?;
    let api_addr = if cfg.api_addr.is_empty() || args.dev {
        format!("{}://{local}", if tls.is_some() { "https" } else { "http" })
    } else {
        cfg.api_addr.clone()
    };

    if args.dev {
        setup_dev(&core, &args, &api_addr).await?;
    } else {
        println!("==> Bunker server configuration:\n");
        println!("             Api Address: {api_addr}");
        println!("                 Storage: {storage_type}");
        println!(
            "                Listener: tcp (addr: \"{local}\", tls: \"{}\")",
            if tls.is_some() { "enabled" } else { "disabled" }
        );
        println!(
            "                 Version: Bunker v{}\n",
            env!("CARGO_PKG_VERSION")
        );
        println!("==> Bunker server started! Log data will stream in below:\n");
    }

    let tidy_core = core.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(TIDY_INTERVAL);
        loop {
            tick.tick().await;
            // Only the active node of an HA cluster writes.
            if !tidy_core.is_active_node() {
                continue;
            }
            if let Err(e) = tidy_core.tidy_tokens().await {
                tracing::warn!(error = %e, "token tidy failed");
            }
        }
    });

    if let Some(schedule) = cfg.snapshot.clone() {
        tracing::info!(
            dir = %schedule.dir.display(),
            interval_secs = schedule.interval.as_secs(),
            retain = schedule.retain,
            "scheduled snapshots enabled"
        );
        tokio::spawn(bunker::scheduled_snapshots::run(core.clone(), schedule));
    }

    tracing::info!(address = %local, "API listener started");
    let limits = cfg.listener.limits;
    let app = bunker_http::router_forwarding(core.clone(), &limits, forwarding.clone());
    if let Some(f) = &forwarding {
        f.set_router(app.clone(), limits);
        dr.set_forwarding(f.clone());
    }
    let shutdown_core = core.clone();
    let shutdown = async move {
        shutdown_signal().await;
        // Release the HA lock first, so a standby takes over while requests drain here
        // (their writes are fenced from now on).
        if let Some(ha) = shutdown_core.ha() {
            // Bounded: a database that does not answer must not keep the process alive (the
            // lock then expires by itself).
            let released =
                tokio::time::timeout(Duration::from_secs(5), ha.shutdown(&shutdown_core)).await;
            if released.is_err() {
                tracing::warn!("the HA lock was not released within 5 s; it expires by itself");
            }
        }
    };
    bunker_http::serve(listener, tls, app, limits, shutdown)
        .await
        .context("serving the API")?;
    dr.shutdown().await;
    drop(dr);
    tracing::info!("shutdown complete");
    Ok(())
}

async fn setup_dev(core: &Arc<Core>, args: &ServerArgs, api_addr: &str) -> Result<()> {
    let init = core
        .initialize(1, 1, args.dev_root_token_id.clone())
        .await
        .map_err(|e| anyhow::anyhow!("initialising dev server: {e}"))?;
    let key = init
        .keys
        .first()
        .ok_or_else(|| anyhow::anyhow!("initialisation returned no key"))?;
    core.submit_unseal_key(key)
        .await
        .map_err(|e| anyhow::anyhow!("unsealing dev server: {e}"))?;
    let mut options = serde_json::Map::new();
    options.insert("version".into(), serde_json::json!("2"));
    core.mount(MountEntry::new(
        "secret/",
        "kv",
        "key/value secret storage",
        options,
    ))
    .await
    .map_err(|e| anyhow::anyhow!("mounting secret/: {e}"))?;
    let unseal_b64 = base64::engine::general_purpose::STANDARD.encode(&key[..]);
    if let Err(e) = save_token_helper(&init.root_token) {
        tracing::warn!(error = %e, "could not save the root token to ~/.vault-token");
    }
    println!("==> Bunker server configuration:\n");
    println!("             Api Address: {api_addr}");
    println!("                 Storage: inmem");
    println!(
        "                 Version: Bunker v{}\n",
        env!("CARGO_PKG_VERSION")
    );
    println!("WARNING! dev mode is enabled! In this mode, Bunker runs entirely in-memory");
    println!("and starts unsealed with a single unseal key. The root token is already");
    println!("authenticated to the CLI, so you can immediately begin using Bunker.\n");
    println!("You may need to set the following environment variables:\n");
    println!("    $ export VAULT_ADDR='{api_addr}'\n");
    println!("The unseal key and root token are displayed below in case you want to");
    println!("seal/unseal the Vault or re-authenticate.\n");
    println!("Unseal Key: {unseal_b64}");
    println!("Root Token: {}\n", init.root_token);
    println!("Development mode should NOT be used in production installations!\n");
    println!("==> Bunker server started! Log data will stream in below:\n");
    Ok(())
}

/// Dev mode authenticates the CLI as Vault does: the root token goes to `~/.vault-token`.
fn save_token_helper(token: &str) -> Result<()> {
    use std::io::Write;
    let Some(home) = std::env::var_os("HOME") else {
        return Ok(());
    };
    let path = std::path::Path::new(&home).join(".vault-token");
    let mut opts = std::fs::OpenOptions::new();
    opts.create(true).write(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut file = opts
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    file.write_all(token.as_bytes())?;
    file.sync_all()?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown signal received");
}

/// The Prometheus recorder behind `sys/metrics` (metrics-exporter-prometheus, without its
/// HTTP listener: the API port serves the text). `prometheus_retention_time = 0` disables it,
/// as in Vault.
///
/// Without its listener the exporter runs no upkeep of its own: every histogram sample is
/// buffered until the next upkeep, so a server nobody scrapes grew by every request it timed
/// (about 120 bytes a write: 1.6 GiB after ten million, `bench/README.md`). A thread of its
/// own runs it every [`METRICS_UPKEEP`], as the exporter's listener would.
struct Prometheus(metrics_exporter_prometheus::PrometheusHandle);

/// How often the recorder folds buffered histogram samples into its summaries. The fold costs
/// about half a microsecond per sample buffered; every 5 s (the exporter's default) it ran for
/// tens of milliseconds at a time under load (ten-odd samples per write), and on the request
/// runtime it held a worker that long: the tail of every request's latency. So it runs every
/// second, on a thread of its own (`bench/README.md`, "The metrics fold").
const METRICS_UPKEEP: Duration = Duration::from_secs(1);

impl bunker_core::MetricsRenderer for Prometheus {
    fn render(&self) -> String {
        self.0.run_upkeep();
        self.0.render()
    }
}

fn install_metrics(core: &bunker_core::Core, telemetry: &config::TelemetryConfig) {
    if telemetry.prometheus_retention_time.is_zero() {
        return;
    }
    let builder = metrics_exporter_prometheus::PrometheusBuilder::new().idle_timeout(
        metrics_util::MetricKindMask::ALL,
        Some(telemetry.prometheus_retention_time),
    );
    match builder.install_recorder() {
        Ok(handle) => {
            let upkeep = handle.clone();
            if let Err(e) = spawn_periodic("bunker-metrics", METRICS_UPKEEP, move || {
                upkeep.run_upkeep();
            }) {
                // Scrapes still fold what is buffered (`Prometheus::render`), but a server
                // nobody scrapes keeps every timing it records.
                tracing::warn!(
                    error = %e,
                    "metrics upkeep thread not started: timings are folded only when scraped, \
                     and memory grows with every request until then"
                );
            }
            core.set_metrics_renderer(Arc::new(Prometheus(handle)));
        }
        Err(e) => tracing::warn!(error = %e, "metrics recorder not installed"),
    }
}

/// Runs `work` every `period` on a thread of its own named `name`, for the process's life.
fn spawn_periodic(
    name: &str,
    period: Duration,
    mut work: impl FnMut() + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || loop {
            std::thread::sleep(period);
            work();
        })
}

#[cfg(test)]
mod tests {
    use super::{spawn_periodic, worker_threads};

    #[test]
    fn one_core_is_left_to_the_storage_writer_unless_the_operator_chose() {
        assert_eq!(worker_threads(None, 1).unwrap(), 1);
        assert_eq!(worker_threads(None, 2).unwrap(), 1);
        assert_eq!(worker_threads(None, 16).unwrap(), 15);
        assert_eq!(worker_threads(Some("2"), 16).unwrap(), 2);
        assert_eq!(worker_threads(Some(" 4 "), 2).unwrap(), 4);
    }

    #[test]
    fn a_worker_count_that_is_not_a_positive_number_is_refused() {
        for bad in ["0", "", "two", "-1", "1.5"] {
            let error = worker_threads(Some(bad), 2).unwrap_err().to_string();
            assert!(error.contains("TOKIO_WORKER_THREADS"), "{bad:?}: {error}");
        }
    }

    /// The metrics fold's loop: the work runs again and again, on the named thread.
    #[test]
    fn periodic_work_runs_repeatedly_on_its_own_thread() {
        let (sender, runs) = std::sync::mpsc::channel();
        spawn_periodic(
            "periodic-test",
            std::time::Duration::from_millis(1),
            move || {
                let name = std::thread::current().name().map(str::to_owned);
                let _ = sender.send(name);
            },
        )
        .unwrap();
        for _ in 0..3 {
            let name = runs
                .recv_timeout(std::time::Duration::from_secs(10))
                .expect("the work ran");
            assert_eq!(name.as_deref(), Some("periodic-test"));
        }
    }
}
