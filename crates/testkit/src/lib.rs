//! The one harness of the Rust integration tests (`crates/bunker/tests`, and the process
//! management of `tests/vaultrs-compat`): runs the real `bunker` binary as a separate process
//! on loopback, with its data, config and logs in a temporary directory.
//!
//! Readiness is decided by polling `GET /v1/sys/health` against a deadline, never by sleeping.
//! When a test panics while a server is alive, the server's stdout/stderr are printed.
//! [`ServerProcess`] is the process alone (no HTTP client); [`TestServer`] adds a blocking
//! client and the request helpers the tests use.

// Test helpers fail by panicking, like the tests they serve.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::ops::{Deref, DerefMut};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::blocking::Client;
use reqwest::Method;
use serde_json::{json, Value};

pub mod dr;
pub mod postgres;
mod process;
pub mod proxy;
pub mod writers;

pub use process::{bunker_bin, free_port, ServerOptions, ServerProcess, TlsFiles, DEV_ROOT_TOKEN};

/// How long a server may take to start listening.
pub const READY_DEADLINE: Duration = Duration::from_secs(30);
/// Per-request timeout of the test client.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// One `bunker server` process under test, with a blocking client. The process's own
/// methods (`kill9`, `hold_at`, `dir`, ...) are reached through `Deref`.
pub struct TestServer {
    process: ServerProcess,
    client: Client,
    /// Unseal keys (hex) and root token, once known.
    pub keys: Vec<String>,
    pub root_token: String,
}

impl Deref for TestServer {
    type Target = ServerProcess;
    fn deref(&self) -> &ServerProcess {
        &self.process
    }
}

impl DerefMut for TestServer {
    fn deref_mut(&mut self) -> &mut ServerProcess {
        &mut self.process
    }
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
        let mut s = TestServer {
            process: ServerProcess::dev(),
            client: build_client(None),
            keys: Vec::new(),
            root_token: DEV_ROOT_TOKEN.to_owned(),
        };
        s.start();
        s.wait_ready();
        s
    }

    /// A config-file server on embedded storage, started and listening but uninitialised.
    pub fn with_config(opts: ServerOptions) -> TestServer {
        let mut s = TestServer {
            process: ServerProcess::with_config(&opts),
            client: build_client(opts.tls.as_ref()),
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

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Poll `GET /v1/sys/health` until any HTTP response arrives (30 s deadline).
    pub fn wait_ready(&mut self) {
        if let Some(status) = self.listening_or_exited() {
            self.process.panic_exited(status);
        }
    }

    /// Whether the server answers `GET /v1/sys/health` (any HTTP response).
    fn listening(&self) -> bool {
        self.client
            .get(self.url("sys/health"))
            .timeout(Duration::from_secs(2))
            .send()
            .is_ok()
    }

    /// Start the process and wait until it listens (`None`) or exits first (its status): for
    /// a server that may refuse to start.
    pub fn start_or_exit(&mut self) -> Option<std::process::ExitStatus> {
        self.process.start();
        self.listening_or_exited()
    }

    /// Wait until the server listens (`None`) or its process exits (its status); panics after
    /// [`READY_DEADLINE`].
    fn listening_or_exited(&mut self) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            if let Some(status) = self.process.exit_status() {
                return Some(status);
            }
            if self.listening() {
                return None;
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

    /// Start again on the same data directory and port, and wait until listening.
    pub fn restart(&mut self) {
        self.kill9();
        self.start();
        self.wait_ready();
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

    /// Rekey to `shares`/`threshold` with the recorded keys (no verification); records and
    /// returns the new keys.
    pub fn rekey(&mut self, shares: u32, threshold: u32) -> Vec<String> {
        let (status, body) = self.put(
            "sys/rekey/init",
            None,
            json!({"secret_shares": shares, "secret_threshold": threshold}),
        );
        assert_eq!(status, 200, "rekey init failed: {body}");
        let nonce = body["nonce"].as_str().expect("nonce").to_owned();
        let (_, seal) = self.get("sys/seal-status", None);
        let t = seal["t"].as_u64().expect("threshold") as usize;
        let mut last = Value::Null;
        for k in self.keys.iter().take(t) {
            let (status, body) =
                self.put("sys/rekey/update", None, json!({"key": k, "nonce": nonce}));
            assert_eq!(status, 200, "rekey update failed: {body}");
            last = body;
        }
        assert_eq!(
            last["complete"],
            json!(true),
            "rekey did not complete: {last}"
        );
        let keys: Vec<String> = last["keys"]
            .as_array()
            .expect("keys array")
            .iter()
            .map(|k| k.as_str().expect("key string").to_owned())
            .collect();
        self.keys = keys.clone();
        keys
    }

    /// Unseal with the recorded keys (first `threshold`).
    pub fn unseal(&self) {
        let (_, status) = self.get("sys/seal-status", None);
        let t = status["t"].as_u64().expect("threshold") as usize;
        self.unseal_with(&self.keys[..t]);
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

    /// Enable a file audit device at `sys/audit/file` writing to `audit.log` in the server's
    /// directory, with the root token; asserts 204 and returns the log's path.
    pub fn enable_file_audit(&self) -> std::path::PathBuf {
        let log = self.dir().join("audit.log");
        let (code, body) = self.put(
            "sys/audit/file",
            self.root(),
            json!({"type": "file", "options": {"file_path": log.to_string_lossy()}}),
        );
        assert_eq!(code, 204, "enable audit: {body}");
        log
    }

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

    /// Write the ACL policy `name` with the root token; asserts success.
    pub fn write_policy(&self, name: &str, text: &str) {
        let (st, b) = self.put(
            &format!("sys/policies/acl/{name}"),
            self.root(),
            json!({ "policy": text }),
        );
        assert!(st == 200 || st == 204, "write policy {name}: {st} {b}");
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
    let mut command = Command::new(bunker_bin());
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
