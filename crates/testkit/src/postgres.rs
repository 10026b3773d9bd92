//! A real PostgreSQL server for a test: `initdb` in a temporary directory, started on a free
//! loopback port, stopped on drop. PostgreSQL refuses to run as root, so as root (CI) it runs
//! as the `postgres` user (Debian's package creates it), switched to at exec.
//!
//! The test fails, rather than passing vacuously, when PostgreSQL is not installed:
//! `.ci/run` installs Debian's `postgresql`.

// Test helpers fail by panicking, like the tests they serve.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_port, poll_until};

pub struct Postgres {
    root: PathBuf,
    bin: PathBuf,
    port: u16,
    child: Option<Child>,
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// The newest `/usr/lib/postgresql/<version>/bin`.
fn pg_bin() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is not installed (apt-get install postgresql; .ci/run does it)")
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .expect("no PostgreSQL server binaries under /usr/lib/postgresql")
}

impl Postgres {
    /// Initialise and start a server; returns once it accepts connections.
    pub fn start() -> Postgres {
        let bin = pg_bin();
        // Under /tmp and world-traversable, so the postgres user can reach it.
        let root = std::env::temp_dir().join(format!(
            "bunker-test-pg-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&root).unwrap();
        run(Command::new("chmod").args(["755", root.to_str().unwrap()]));
        if is_root() {
            run(Command::new("chown").args(["postgres", root.to_str().unwrap()]));
        }
        let data = root.join("data");
        run(as_postgres(&bin.join("initdb"))
            .args([
                "-D",
                data.to_str().unwrap(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
            ])
            .arg("--no-sync"));
        let mut pg = Postgres {
            root,
            bin,
            port: free_port(),
            child: None,
        };
        pg.launch();
        pg
    }

    fn launch(&mut self) {
        let log =
            std::fs::File::create(self.root.join(format!("postgres-{}.log", self.port))).unwrap();
        let child = as_postgres(&self.bin.join("postgres"))
            .args(["-D", self.root.join("data").to_str().unwrap()])
            .args(["-p", &self.port.to_string()])
            .args(["-k", self.root.to_str().unwrap()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start postgres");
        self.child = Some(child);
        let ready = poll_until(Duration::from_secs(60), || {
            as_postgres(&self.bin.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-q"])
                .status()
                .is_ok_and(|s| s.success())
        });
        assert!(
            ready,
            "PostgreSQL did not start (logs in {})",
            self.root.display()
        );
    }

    /// The server's address, `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A connection URL for database `postgres` (`sslmode=disable`: loopback).
    pub fn url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?sslmode=disable",
            self.port
        )
    }

    /// Stop the server (fast shutdown) and wait for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }

    /// Start it again on the same data and port.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    /// psql to this server, as the `postgres` user, unaligned and quiet, without ~/.psqlrc.
    fn psql(&self) -> Command {
        let mut c = as_postgres(&self.bin.join("psql"));
        c.args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", "postgres", "-XAtq"]);
        c
    }

    /// Run SQL with psql; returns its output.
    pub fn sql(&self, sql: &str) -> String {
        let out = self
            .psql()
            .args(["-c", sql, "postgres"])
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

/// A psql session kept open, to hold a lock across a test's steps.
pub struct Session {
    child: std::process::Child,
}

impl Session {
    /// Send SQL to the session (executed as soon as psql reads it).
    pub fn send(&mut self, sql: &str) {
        use std::io::Write as _;
        let stdin = self.child.stdin.as_mut().expect("psql stdin");
        writeln!(stdin, "{sql}").expect("write to psql");
        stdin.flush().expect("flush psql");
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // End of input ends psql, and its session's locks with it.
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

impl Postgres {
    /// An interactive psql session on database `postgres`.
    pub fn session(&self) -> Session {
        let child = self
            .psql()
            .arg("postgres")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start psql");
        Session { child }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// `program` run as the `postgres` user when we are root. The child is the program itself
/// (set-uid at exec, no `runuser` in between), so signals sent to it reach PostgreSQL.
fn as_postgres(program: &Path) -> Command {
    let mut c = Command::new(program);
    if is_root() {
        use std::os::unix::process::CommandExt as _;
        let id = |flag: &str| -> u32 {
            let out = Command::new("id")
                .args([flag, "postgres"])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "no postgres user (Debian's package creates it)"
            );
            String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
        };
        c.gid(id("-g")).uid(id("-u"));
    }
    c
}

fn run(c: &mut Command) {
    let out = c.output().expect("run command");
    assert!(
        out.status.success(),
        "{c:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
