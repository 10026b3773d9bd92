//! Shared harness for the integration tests: runs the real `bunker` binary as a separate
//! process on loopback, with its data, config and logs in a temporary directory.
//!
//! Readiness is decided by polling `GET /v1/sys/health` against a deadline, never by sleeping.
//! When a test panics while a server is alive, the server's stdout/stderr are printed.

// Test helpers fail by panicking, like the tests they serve.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
#![allow(dead_code)]

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::blocking::Client;
use reqwest::Method;
use serde_json::{json, Value};
use tempfile::TempDir;

pub mod dr;
pub mod postgres;
pub mod proxy;
pub mod writers;

/// How long a server may take to start listening.
pub const READY_DEADLINE: Duration = Duration::from_secs(30);
/// Per-request timeout of the test client.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The root token of every dev-mode server started here.
pub const DEV_ROOT_TOKEN: &str = "root";

/// Pick a port that is free right now (bind port 0, read it, drop the socket).
/// A free loopback port, never one handed out before in this test process: a server restarted
/// on its port must not find it taken by another test's new server (tests of one binary run in
/// parallel, and the kernel may hand a just-freed port out again).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
        let port = l.local_addr().expect("local addr").port();
        let mut given = GIVEN
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// TLS material for an HTTPS listener.
pub struct TlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// PEM of the certificate, for the client to trust.
    pub cert_pem: String,
}

/// How a server is started. Build with `..Default::default()` so new fields need no edits
/// elsewhere.
#[derive(Default)]
pub struct ServerOptions {
    /// Extra lines inside the `listener "tcp" { ... }` block.
    pub listener_extra: String,
    /// Extra top-level HCL lines appended to the generated config file.
    pub config_extra: String,
    pub tls: Option<TlsFiles>,
    /// The whole `storage "..." { ... }` block; embedded storage in the server's temporary
    /// directory when empty.
    pub storage: String,
}

enum Mode {
    Dev,
    Config(PathBuf),
}

/// One `bunker server` process under test.
pub struct TestServer {
    dir: TempDir,
    port: u16,
    mode: Mode,
    child: Option<Child>,
    https: bool,
    client: Client,
    /// How many times the process has been started (names the log files).
    starts: u32,
    /// Unseal keys (hex) and root token, once known.
    pub keys: Vec<String>,
    pub root_token: String,
}

fn build_client(tls: Option<&TlsFiles>) -> Client {
    let mut b = Client::builder()
        .no_proxy()
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(Duration::from_secs(5));
    if let Some(t) = tls {
        let cert = reqwest::Certificate::from_pem(t.cert_pem.as_bytes()).expect("parse cert PEM");
        b = b.tls_certs_only([cert]);
    }
    b.build().expect("build HTTP client")
}

impl TestServer {
    /// A dev-mode server: in-memory, unsealed, root token `root`, KV v2 at `secret/`.
    pub fn dev() -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = TestServer {
            dir,
            port: free_port(),
            mode: Mode::Dev,
            child: None,
            https: false,
            client: build_client(None),
            starts: 0,
            keys: Vec::new(),
            root_token: DEV_ROOT_TOKEN.to_owned(),
        };
        s.start();
        s.wait_ready();
        s
    }

    /// A config-file server on embedded storage, started and listening but uninitialised.
    pub fn with_config(opts: ServerOptions) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).expect("create data dir");
        let listener_tls = match &opts.tls {
            None => "  tls_disable = true".to_owned(),
            Some(t) => format!(
                "  tls_cert_file = \"{}\"\n  tls_key_file = \"{}\"",
                t.cert_file.display(),
                t.key_file.display()
            ),
        };
        let scheme = if opts.tls.is_some() { "https" } else { "http" };
        let storage = if opts.storage.is_empty() {
            format!(
                "storage \"embedded\" {{\n  path = \"{}\"\n}}",
                data.display()
            )
        } else {
            opts.storage
        };
        let config = format!(
            "{storage}\n\
             listener \"tcp\" {{\n  address = \"127.0.0.1:{port}\"\n{listener_tls}\n{extra}\n}}\n\
             api_addr = \"{scheme}://127.0.0.1:{port}\"\n\
             log_level = \"debug\"\n\
             {config_extra}\n",
            extra = opts.listener_extra,
            config_extra = opts.config_extra,
        );
        let config_path = dir.path().join("bunker.hcl");
        std::fs::write(&config_path, config).expect("write config");
        let mut s = TestServer {
            dir,
            port,
            mode: Mode::Config(config_path),
            child: None,
            https: opts.tls.is_some(),
            client: build_client(opts.tls.as_ref()),
            starts: 0,
            keys: Vec::new(),
            root_token: String::new(),
        };
        s.start();
        s.wait_ready();
        s
    }

    /// A config-file server, initialised with 1 share and unsealed; ready for requests.
    pub fn initialized() -> TestServer {
        Self::initialized_with(ServerOptions::default())
    }

    pub fn initialized_with(opts: ServerOptions) -> TestServer {
        let mut s = Self::with_config(opts);
        s.init_unseal(1, 1);
        s
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> String {
        format!(
            "{}://127.0.0.1:{}",
            if self.https { "https" } else { "http" },
            self.port
        )
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}/v1/{}", self.addr(), path.trim_start_matches('/'))
    }

    fn log_paths(&self) -> (PathBuf, PathBuf) {
        (
            self.dir.path().join(format!("stdout-{}.log", self.starts)),
            self.dir.path().join(format!("stderr-{}.log", self.starts)),
        )
    }

    fn start(&mut self) {
        assert!(self.child.is_none(), "server already running");
        self.starts += 1;
        let (out, err) = self.log_paths();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_bunker"));
        cmd.arg("server");
        match &self.mode {
            Mode::Dev => {
                cmd.arg("-dev")
                    .arg(format!("-dev-root-token-id={DEV_ROOT_TOKEN}"))
                    .arg(format!("-dev-listen-address=127.0.0.1:{}", self.port));
            }
            Mode::Config(path) => {
                cmd.arg("-config").arg(path);
            }
        }
        cmd.env_remove("VAULT_ADDR")
            .env("BUNKER_FAILPOINTS_DIR", self.failpoints_dir())
            .env_remove("VAULT_TOKEN")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(File::create(out).expect("create stdout log"))
            .stderr(File::create(err).expect("create stderr log"));
        self.child = Some(cmd.spawn().expect("spawn bunker server"));
    }

    /// Where this server looks for failpoint gates (crates/dr/src/failpoint.rs).
    fn failpoints_dir(&self) -> PathBuf {
        self.dir.path().join("failpoints")
    }

    /// Close the gate of failpoint `name`: the server's task stops there when it arrives, until
    /// [`TestServer::release`]. Needs a binary built with `--features bunker/failpoints`
    /// (`./scripts/test` builds it so).
    pub fn hold_at(&self, name: &str) {
        let dir = self.failpoints_dir();
        std::fs::create_dir_all(&dir).expect("failpoints dir");
        let _ = std::fs::remove_file(dir.join(format!("{name}.reached")));
        std::fs::write(dir.join(name), b"").expect("close failpoint gate");
    }

    /// Wait until a task of the server is held at failpoint `name`.
    pub fn wait_held(&self, name: &str, timeout: Duration) {
        let dir = self.failpoints_dir();
        assert!(
            dir.join("enabled").exists(),
            "this test needs a server built with failpoints: cargo test --features bunker/failpoints (./scripts/test does)"
        );
        let held = poll_until(timeout, || dir.join(format!("{name}.reached")).exists());
        assert!(held, "the server never reached failpoint {name}");
    }

    /// Open the gate of failpoint `name`: a held task goes on.
    pub fn release(&self, name: &str) {
        let _ = std::fs::remove_file(self.failpoints_dir().join(name));
    }

    /// Poll `GET /v1/sys/health` until any HTTP response arrives (30 s deadline).
    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.dump_logs();
                    panic!("bunker server exited before becoming ready: {status}");
                }
            }
            let r = self
                .client
                .get(self.url("sys/health"))
                .timeout(Duration::from_secs(2))
                .send();
            if r.is_ok() {
                return;
            }
            if Instant::now() > deadline {
                self.dump_logs();
                panic!(
                    "bunker server not listening on {} after {READY_DEADLINE:?}",
                    self.addr()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Initialise with `shares`/`threshold`, unseal with the first `threshold` keys; records
    /// and returns the keys (hex) and root token.
    pub fn init_unseal(&mut self, shares: u32, threshold: u32) -> (Vec<String>, String) {
        let (status, body) = self.put(
            "sys/init",
            None,
            json!({"secret_shares": shares, "secret_threshold": threshold}),
        );
        assert_eq!(status, 200, "init failed: {body}");
        let keys: Vec<String> = body["keys"]
            .as_array()
            .expect("keys array")
            .iter()
            .map(|k| k.as_str().expect("key string").to_owned())
            .collect();
        assert_eq!(keys.len(), shares as usize, "init returned {body}");
        let root = body["root_token"].as_str().expect("root_token").to_owned();
        self.keys = keys.clone();
        self.root_token = root.clone();
        self.unseal_with(&keys[..threshold as usize]);
        (keys, root)
    }

    /// Submit the given keys; asserts the server ends unsealed.
    pub fn unseal_with(&self, keys: &[String]) {
        let mut last = Value::Null;
        for k in keys {
            let (status, body) = self.put("sys/unseal", None, json!({ "key": k }));
            assert_eq!(status, 200, "unseal failed: {body}");
            last = body;
        }
        assert_eq!(
            last["sealed"],
            json!(false),
            "still sealed after keys: {last}"
        );
    }

    /// Unseal with the recorded keys (first `threshold`).
    pub fn unseal(&self) {
        let (_, status) = self.get("sys/seal-status", None);
        let t = status["t"].as_u64().expect("threshold") as usize;
        self.unseal_with(&self.keys[..t]);
    }

    /// SIGKILL the process and reap it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill(); // SIGKILL on Unix
            let _ = child.wait();
        }
    }

    /// Send SIGTERM and wait (up to `timeout`) for the process to exit; returns its status,
    /// or `None` if it is still running at the deadline (it is then killed).
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(exit)) = child.try_wait() {
                return Some(exit);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Start again on the same data directory and port, and wait until listening.
    pub fn restart(&mut self) {
        self.kill9();
        self.start();
        self.wait_ready();
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Print the server's logs (used on failure).
    pub fn dump_logs(&self) {
        for n in 1..=self.starts {
            for stream in ["stdout", "stderr"] {
                let p = self.dir.path().join(format!("{stream}-{n}.log"));
                let text = std::fs::read_to_string(&p).unwrap_or_default();
                let tail: String = if text.len() > 20_000 {
                    text[text.len() - 20_000..].to_owned()
                } else {
                    text
                };
                eprintln!("===== bunker {stream} (start #{n}) =====\n{tail}");
            }
        }
    }

    // ----- JSON request helpers, returning (status, body). A non-JSON or empty body is
    // returned as Value::Null. -----

    pub fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        self.request_with(method, path, token, body, &[])
    }

    pub fn request_with(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> (u16, Value) {
        let mut rb = self.client.request(method.clone(), self.url(path));
        if let Some(t) = token {
            rb = rb.header("X-Vault-Token", t);
        }
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let resp = rb
            .send()
            .unwrap_or_else(|e| panic!("{method} {path}: transport error: {e}"));
        let status = resp.status().as_u16();
        let text = resp.text().unwrap_or_default();
        let value = serde_json::from_str(&text).unwrap_or(Value::Null);
        (status, value)
    }

    /// Send a raw body with a given content type.
    pub fn raw(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Vec<u8>,
    ) -> (u16, Value) {
        let mut rb = self
            .client
            .request(method.clone(), self.url(path))
            .header("Content-Type", "application/json")
            .body(body);
        if let Some(t) = token {
            rb = rb.header("X-Vault-Token", t);
        }
        let resp = rb
            .send()
            .unwrap_or_else(|e| panic!("{method} {path}: transport error: {e}"));
        let status = resp.status().as_u16();
        let text = resp.text().unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        self.request(Method::GET, path, token, None)
    }

    pub fn put(&self, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
        self.request(Method::PUT, path, token, Some(body))
    }

    pub fn post(&self, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
        self.request(Method::POST, path, token, Some(body))
    }

    pub fn delete(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        self.request(Method::DELETE, path, token, None)
    }

    pub fn list(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        self.request(
            Method::from_bytes(b"LIST").expect("LIST method"),
            path,
            token,
            None,
        )
    }

    /// The root token as an `Option<&str>` for the helpers.
    pub fn root(&self) -> Option<&str> {
        Some(self.root_token.as_str())
    }

    // ----- common operations -----

    /// Write a KV v2 secret at `secret/data/<name>` with the root token; asserts 200.
    pub fn kv_put(&self, name: &str, data: Value) -> Value {
        let (s, b) = self.put(
            &format!("secret/data/{name}"),
            self.root(),
            json!({ "data": data }),
        );
        assert_eq!(s, 200, "kv put {name}: {b}");
        b
    }

    /// Read `secret/data/<name>` with the root token: (status, data.data).
    pub fn kv_get(&self, name: &str) -> (u16, Value) {
        let (s, b) = self.get(&format!("secret/data/{name}"), self.root());
        (s, b["data"]["data"].clone())
    }

    /// Mount KV v2 at `secret/` (config-file servers start without it).
    pub fn mount_kv2(&self) {
        let (s, b) = self.post(
            "sys/mounts/secret",
            self.root(),
            json!({"type": "kv", "options": {"version": "2"}}),
        );
        assert!(s == 200 || s == 204, "mount secret/: {s} {b}");
    }

    /// Create a token with `body` using the root token; returns auth.client_token.
    pub fn create_token(&self, body: Value) -> String {
        let (s, b) = self.post("auth/token/create", self.root(), body);
        assert_eq!(s, 200, "token create: {b}");
        b["auth"]["client_token"]
            .as_str()
            .expect("client_token")
            .to_owned()
    }

    /// Assert the server is up and unsealed.
    pub fn assert_healthy(&self) {
        let (s, b) = self.get("sys/health", None);
        assert_eq!(s, 200, "sys/health: {b}");
        assert_eq!(b["sealed"], json!(false), "sys/health: {b}");
        if let Some(child) = self.child.as_ref() {
            // A child that exited would also fail the request above; this is belt and braces.
            let _ = child.id();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        self.kill9();
    }
}

/// Send one raw HTTP/1.1 request over a fresh TCP connection (for requests a URL library
/// would normalise, such as `..` segments) and return (status, body as JSON or Null).
pub fn raw_http(port: u16, request_head: &str, body: &[u8]) -> (u16, Value) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(REQUEST_TIMEOUT))
        .expect("read timeout");
    stream
        .write_all(request_head.as_bytes())
        .expect("write head");
    stream.write_all(body).expect("write body");
    let mut buf = Vec::new();
    let _ = stream.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status line in response: {text:?}"));
    let body_text = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    // Bodies may be chunked; find the JSON object inside.
    let json = match (body_text.find('{'), body_text.rfind('}')) {
        (Some(a), Some(b)) if b > a => {
            serde_json::from_str(&body_text[a..=b]).unwrap_or(Value::Null)
        }
        _ => Value::Null,
    };
    (status, json)
}

/// Poll `f` until it returns true or `timeout` passes; returns whether it became true.
pub fn poll_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The `{"errors": [...]}` list of a response body, as strings.
pub fn errors(body: &Value) -> Vec<String> {
    body["errors"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| e.as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Run the `bunker` CLI against `s`, with `s.dir()/cli-home` as its home (where `bunker login`
/// stores its token) and no token in the environment; returns (exit code, stdout, stderr).
pub fn cli(s: &TestServer, args: &[&str]) -> (i32, String, String) {
    let out = cli_command(s, args).output().expect("run the bunker CLI");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn cli_command(s: &TestServer, args: &[&str]) -> Command {
    let home = s.dir().join("cli-home");
    std::fs::create_dir_all(&home).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_bunker"));
    command
        .args(args)
        .env("VAULT_ADDR", s.addr())
        .env("HOME", &home)
        .env_remove("VAULT_TOKEN")
        .env_remove("VAULT_FORMAT")
        .env_remove("VAULT_WRAP_TTL")
        .stdin(Stdio::null());
    command
}

/// Start the CLI as [`cli`] does, in the background, its stdout and stderr going to the files
/// `out` and `err`, so a test can read each line it prints while the server is held.
pub fn cli_background(s: &TestServer, args: &[&str], out: &Path, err: &Path) -> Child {
    cli_command(s, args)
        .stdout(std::fs::File::create(out).unwrap())
        .stderr(std::fs::File::create(err).unwrap())
        .spawn()
        .expect("start the bunker CLI")
}
