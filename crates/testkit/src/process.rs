//! One `bunker server` process: its temporary directory (data, config, logs, failpoint gates),
//! its port, starting, killing and restarting it, and its logs when a test fails. Free of any
//! HTTP client, so the blocking harness ([`crate::TestServer`]) and async ones (the vaultrs
//! suite) share it.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::poll_until;

/// The root token of every dev-mode server started here.
pub const DEV_ROOT_TOKEN: &str = "root";

/// The server binary: the one cargo built for the running test when it says so
/// (`CARGO_BIN_EXE_bunker`, set at run time for the `bunker` package's tests), else
/// `$BUNKER_BIN`, else `bunker` in the target directory of the running test
/// (`target/debug/deps/<test>` → `target/debug/bunker`; `./scripts/test` builds it first).
pub fn bunker_bin() -> PathBuf {
    for var in ["CARGO_BIN_EXE_bunker", "BUNKER_BIN"] {
        if let Some(path) = std::env::var_os(var) {
            return PathBuf::from(path);
        }
    }
    let exe = std::env::current_exe().expect("the test's own path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("a test runs from target/<profile>/deps");
    let bin = profile_dir.join("bunker");
    assert!(
        bin.is_file(),
        "the bunker binary is missing at {}: run `cargo build -p bunker` first (./scripts/test \
         does), or point BUNKER_BIN at one",
        bin.display()
    );
    bin
}

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

/// A `bunker server` process (not started until [`ServerProcess::start`]).
pub struct ServerProcess {
    dir: TempDir,
    port: u16,
    mode: Mode,
    https: bool,
    child: Option<Child>,
    /// How many times the process has been started (names the log files).
    starts: u32,
}

impl ServerProcess {
    /// `bunker server -dev`: in memory, unsealed, root token [`DEV_ROOT_TOKEN`].
    pub fn dev() -> ServerProcess {
        ServerProcess {
            dir: tempfile::tempdir().expect("tempdir"),
            port: free_port(),
            mode: Mode::Dev,
            https: false,
            child: None,
            starts: 0,
        }
    }

    /// A server from a config file written into its directory (embedded storage there
    /// unless `opts.storage` says otherwise).
    pub fn with_config(opts: &ServerOptions) -> ServerProcess {
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
            opts.storage.clone()
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
        ServerProcess {
            dir,
            port,
            mode: Mode::Config(config_path),
            https: opts.tls.is_some(),
            child: None,
            starts: 0,
        }
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

    /// The API URL of `path` (under `/v1/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}/v1/{}", self.addr(), path.trim_start_matches('/'))
    }

    /// Start the process (on the same directory and port as before, after a kill).
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "server already running");
        self.starts += 1;
        let log = |stream: &str| {
            File::create(self.log_path(stream, self.starts)).expect("create a log file")
        };
        let mut cmd = Command::new(bunker_bin());
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
            .stdout(log("stdout"))
            .stderr(log("stderr"));
        self.child = Some(cmd.spawn().expect("spawn bunker server"));
    }

    /// Panics (after printing the logs) if the process has exited: a server that dies while
    /// a test waits for it to listen.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.exit_status() {
            self.panic_exited(status);
        }
    }

    /// Panics, after printing the logs: the server exited with `status` before it listened.
    pub fn panic_exited(&self, status: ExitStatus) -> ! {
        self.dump_logs();
        panic!("bunker server exited before becoming ready: {status}");
    }

    /// Where this server looks for failpoint gates (crates/core/src/failpoint.rs).
    fn failpoints_dir(&self) -> PathBuf {
        self.dir().join("failpoints")
    }

    /// Close the gate of failpoint `name`: the server's task stops there when it arrives, until
    /// [`ServerProcess::release`]. Needs a binary built with `--features bunker/failpoints`
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

    /// SIGKILL the process and reap it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill(); // SIGKILL on Unix
            let _ = child.wait();
        }
    }

    /// Send SIGTERM and wait (up to `timeout`) for the process to exit; returns its status,
    /// or `None` if it is still running at the deadline (it is then killed).
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
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

    /// The exit status if the process has exited (it is then reaped and counts as stopped).
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        Some(status)
    }

    /// What the current (or last) start wrote to `stream` ("stdout" or "stderr").
    pub fn log_text(&self, stream: &str) -> String {
        self.start_log(stream, self.starts)
    }

    /// What start number `n` wrote to `stream`.
    fn start_log(&self, stream: &str, n: u32) -> String {
        std::fs::read_to_string(self.log_path(stream, n)).unwrap_or_default()
    }

    /// Where start number `n` writes `stream` ("stdout" or "stderr").
    fn log_path(&self, stream: &str, n: u32) -> PathBuf {
        self.dir().join(format!("{stream}-{n}.log"))
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Print the tail of every log of every start (used on failure).
    pub fn dump_logs(&self) {
        for n in 1..=self.starts {
            for stream in ["stdout", "stderr"] {
                let text = self.start_log(stream, n);
                let start = text.len().saturating_sub(20_000);
                let tail = text.get(start..).unwrap_or(&text);
                eprintln!(
                    "===== bunker {stream} (port {}, start #{n}) =====\n{tail}",
                    self.port
                );
            }
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        self.kill9();
    }
}
