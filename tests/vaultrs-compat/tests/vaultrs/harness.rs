//! Runs the real `bunker` binary as a separate process on a free loopback port, with its
//! data and logs in a temporary directory, and hands out `vaultrs` clients for it.
//!
//! Readiness is decided by polling `GET /v1/sys/health` against a deadline, never by a fixed
//! sleep. The process is killed when the [`Server`] is dropped; if that happens because a test
//! panicked, the tail of the server's logs is printed first.

// Test helpers fail by panicking, like the tests they serve.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tempfile::TempDir;
use vaultrs::client::{VaultClient, VaultClientSettingsBuilder};
use vaultrs::error::ClientError;

/// Root token of every dev-mode server started here.
pub const DEV_ROOT_TOKEN: &str = "root";
/// How long a freshly spawned server may take to answer on its port.
pub const READY_DEADLINE: Duration = Duration::from_secs(30);
/// Per-request timeout for both the vaultrs client and the raw setup client.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Interval between two polls of a condition that has a deadline.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// The server binary: `$BUNKER_BIN`, else `<target dir>/debug/bunker` of this workspace.
pub fn bunker_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("BUNKER_BIN") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "BUNKER_BIN={} does not exist; build it with `cargo build -p bunker`",
            p.display()
        );
        return p;
    }
    let workspace_root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let target_dir = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace_root.join(dir),
        None => workspace_root.join("target"),
    };
    let p = target_dir.join("debug").join("bunker");
    assert!(
        p.is_file(),
        "the bunker binary is missing at {}: run `cargo build -p bunker` first \
         (./scripts/test does), or point BUNKER_BIN at a built binary",
        p.display()
    );
    p
}

/// A port that is free right now (bind port 0, read it, release it).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral loopback port");
    l.local_addr()
        .expect("local addr of ephemeral socket")
        .port()
}

/// A vaultrs client for `addr` using `token`; every setting that could otherwise come
/// from `VAULT_*` environment variables is set explicitly.
pub fn vault_client(addr: &str, token: &str) -> VaultClient {
    let settings = VaultClientSettingsBuilder::default()
        .address(addr)
        .token(token)
        .timeout(Some(REQUEST_TIMEOUT))
        .verify(true)
        .ca_certs(Vec::new())
        .namespace(None)
        .build()
        .expect("vaultrs client settings");
    VaultClient::new(settings).expect("vaultrs client")
}

/// The HTTP status of a vaultrs error that came from a server response, whichever way
/// vaultrs reported it: `APIError` when the body was Vault's `{"errors": [...]}`, or the
/// underlying rustify `ServerResponseError` for any other body (e.g. a health document).
pub fn http_status(err: &ClientError) -> Option<u16> {
    match err {
        ClientError::APIError { code, .. } => Some(*code),
        ClientError::RestClientError {
            source: rustify::errors::ClientError::ServerResponseError { code, .. },
        } => Some(*code),
        _ => None,
    }
}

/// Asserts `res` failed with a server response of `code`; returns the error.
#[track_caller]
pub fn expect_status<T: std::fmt::Debug>(res: Result<T, ClientError>, code: u16) -> ClientError {
    match res {
        Ok(v) => panic!("expected HTTP {code}, got success: {v:?}"),
        Err(e) => {
            assert_eq!(
                http_status(&e),
                Some(code),
                "expected HTTP {code}, got {e:?}"
            );
            e
        }
    }
}

enum Mode {
    Dev,
    Config(PathBuf),
}

/// One `bunker server` process.
pub struct Server {
    dir: TempDir,
    port: u16,
    child: Option<Child>,
    http: reqwest::Client,
    /// Root token: `root` in dev mode, from `sys/init` otherwise.
    pub root_token: String,
    /// The one unseal key of [`Server::initialized`] (empty otherwise).
    pub unseal_key: String,
}

impl Server {
    /// `bunker server -dev`: in-memory, unsealed, root token `root`, KV v2 at `secret/`.
    pub async fn dev() -> Server {
        let port = free_port();
        let mut s = Server::new(port, DEV_ROOT_TOKEN.to_owned());
        s.spawn(Mode::Dev);
        s.wait_ready().await;
        s
    }

    /// A config-file server on embedded storage with a cluster port; listening but
    /// uninitialised.
    pub async fn with_config() -> Server {
        let port = free_port();
        let cluster_port = free_port();
        let mut s = Server::new(port, String::new());
        let data = s.dir.path().join("data");
        std::fs::create_dir_all(&data).expect("create data dir");
        let config = format!(
            "storage \"embedded\" {{\n  path = \"{data}\"\n}}\n\
             listener \"tcp\" {{\n  address = \"127.0.0.1:{port}\"\n  \
             cluster_address = \"127.0.0.1:{cluster_port}\"\n  tls_disable = true\n}}\n\
             api_addr = \"http://127.0.0.1:{port}\"\n\
             replication {{\n  activation_allow_http = true\n}}\n",
            data = data.display(),
        );
        let path = s.dir.path().join("bunker.hcl");
        std::fs::write(&path, config).expect("write server config");
        s.spawn(Mode::Config(path));
        s.wait_ready().await;
        s
    }

    /// [`Server::with_config`], then initialised with one key share and unsealed.
    pub async fn initialized() -> Server {
        let mut s = Server::with_config().await;
        let (code, body) = s
            .raw(
                "PUT",
                "sys/init",
                None,
                Some(json!({"secret_shares": 1, "secret_threshold": 1})),
            )
            .await;
        assert_eq!(code, 200, "sys/init: {body}");
        let key = body["keys"][0]
            .as_str()
            .expect("keys[0] in sys/init")
            .to_owned();
        s.root_token = body["root_token"]
            .as_str()
            .expect("root_token in sys/init")
            .to_owned();
        s.unseal_key = key.clone();
        let (code, body) = s
            .raw("PUT", "sys/unseal", None, Some(json!({ "key": key })))
            .await;
        assert_eq!(code, 200, "sys/unseal: {body}");
        assert_eq!(
            body["sealed"],
            json!(false),
            "still sealed after the only key: {body}"
        );
        s
    }

    fn new(port: u16, root_token: String) -> Server {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(Duration::from_secs(5))
            .build()
            .expect("build raw HTTP client");
        Server {
            dir: tempfile::tempdir().expect("tempdir"),
            port,
            child: None,
            http,
            root_token,
            unseal_key: String::new(),
        }
    }

    fn spawn(&mut self, mode: Mode) {
        let mut cmd = Command::new(bunker_bin());
        cmd.arg("server");
        match mode {
            Mode::Dev => {
                cmd.arg("-dev")
                    .arg(format!("-dev-root-token-id={DEV_ROOT_TOKEN}"))
                    .arg(format!("-dev-listen-address=127.0.0.1:{}", self.port));
            }
            Mode::Config(path) => {
                cmd.arg("-config").arg(path);
            }
        }
        let log = |name: &str| File::create(self.dir.path().join(name)).expect("create log file");
        cmd.env_remove("VAULT_ADDR")
            .env_remove("VAULT_TOKEN")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(log("stdout.log"))
            .stderr(log("stderr.log"));
        self.child = Some(cmd.spawn().expect("spawn bunker server"));
    }

    /// Poll `GET /v1/sys/health` until the server answers at all (any status).
    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                self.dump_logs();
                panic!("bunker server exited before it was ready: {status}");
            }
            let probe = self
                .http
                .get(self.url("sys/health"))
                .timeout(Duration::from_secs(2))
                .send()
                .await;
            if probe.is_ok() {
                return;
            }
            if Instant::now() > deadline {
                self.dump_logs();
                panic!(
                    "bunker server not answering on {} after {READY_DEADLINE:?}",
                    self.addr()
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    pub fn addr(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn url(&self, path: &str) -> String {
        format!("{}/v1/{}", self.addr(), path.trim_start_matches('/'))
    }

    /// A vaultrs client with the root token.
    pub fn root_client(&self) -> VaultClient {
        vault_client(&self.addr(), &self.root_token)
    }

    /// A vaultrs client with `token`.
    pub fn client(&self, token: &str) -> VaultClient {
        vault_client(&self.addr(), token)
    }

    /// A raw JSON request for setup steps vaultrs has no call for; returns the status and
    /// the body (`Value::Null` when empty or not JSON).
    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("HTTP method");
        let mut req = self.http.request(method.clone(), self.url(path));
        if let Some(t) = token {
            req = req.header("X-Vault-Token", t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: transport error: {e}"));
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    fn dump_logs(&self) {
        for name in ["stdout.log", "stderr.log"] {
            let text = std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
            let start = text.len().saturating_sub(20_000);
            let tail = text.get(start..).unwrap_or(&text);
            eprintln!("===== bunker {name} (port {}) =====\n{tail}", self.port);
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Poll `check` every [`POLL_INTERVAL`] until it returns `Some`, or panic with the last
/// observation (`describe`) once `deadline` has passed.
pub async fn poll_until<T, F, Fut>(deadline: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let end = Instant::now() + deadline;
    loop {
        match check().await {
            Ok(v) => return v,
            Err(last) if Instant::now() > end => {
                panic!("{what}: not reached within {deadline:?}; last observation: {last}")
            }
            Err(_) => tokio::time::sleep(POLL_INTERVAL).await,
        }
    }
}
