//! `bunker operator raft snapshot save|restore` and `bunker operator snapshot inspect`.

use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};

use serde_json::Value;

use super::follow::{self, Follow};
use super::{emit_json_or_table, success, CmdResult, Ctx};
use crate::client::{ApiRequest, Verb};
use crate::error::{CliError, Doing};
use crate::output;

#[derive(Subcommand, Debug)]
pub(crate) enum RaftCommand {
    /// Save or restore a snapshot of the whole storage (any storage backend).
    #[command(subcommand)]
    Snapshot(RaftSnapshotCommand),
}

#[derive(Subcommand, Debug)]
pub(crate) enum RaftSnapshotCommand {
    /// Save a snapshot of the server's storage into FILE.
    Save { file: PathBuf },
    /// Replace the server's storage with the snapshot in FILE.
    Restore(RestoreArgs),
}

/// `bunker operator raft snapshot restore [-force] FILE`
#[derive(Args, Debug)]
pub(crate) struct RestoreArgs {
    /// Restore a snapshot whose keyring this server's root key does not open (another
    /// cluster's); the server seals and needs the snapshot's unseal keys.
    #[arg(long)]
    force: bool,
    file: PathBuf,
}

#[derive(Subcommand, Debug)]
pub(crate) enum SnapshotCommand {
    /// Check a snapshot file and print its manifest.
    Inspect { file: PathBuf },
}

pub(crate) fn run_raft(ctx: &Ctx, command: RaftCommand) -> CmdResult {
    match command {
        RaftCommand::Snapshot(RaftSnapshotCommand::Save { file }) => save(ctx, &file),
        RaftCommand::Snapshot(RaftSnapshotCommand::Restore(args)) => restore(ctx, &args),
    }
}

pub(crate) fn run(ctx: &Ctx, command: SnapshotCommand) -> CmdResult {
    match command {
        SnapshotCommand::Inspect { file } => inspect(ctx, &file),
    }
}

/// Counts what goes through to the file and, on a terminal, shows it on stderr (bytes so far
/// and the rate), rewritten in place at most four times a second; stdout stays clean.
struct Progress<'a> {
    out: &'a mut std::fs::File,
    bytes: u64,
    started: std::time::Instant,
    shown: Option<std::time::Instant>,
    terminal: bool,
}

impl Progress<'_> {
    fn line(&self) -> String {
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        format!(
            "{} received ({}/s)",
            output::human_bytes(self.bytes),
            output::human_bytes((self.bytes as f64 / secs) as u64)
        )
    }
}

impl Write for Progress<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.out.write(buf)?;
        self.bytes += n as u64;
        let due = self
            .shown
            .is_none_or(|t| t.elapsed() >= std::time::Duration::from_millis(250));
        if self.terminal && due {
            let _ = write!(std::io::stderr(), "\r\x1b[2K{}", self.line());
            self.shown = Some(std::time::Instant::now());
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

fn io_error(doing: String) -> impl FnOnce(std::io::Error) -> CliError {
    move |source| CliError::Io { doing, source }
}

/// Downloads into a temporary file beside FILE, checks it, then renames it into place, so
/// FILE is never a partial snapshot.
fn save(ctx: &Ctx, file: &Path) -> CmdResult {
    let client = ctx.client()?;
    let tmp = file.with_extension("partial");
    let mut out =
        std::fs::File::create(&tmp).map_err(io_error(format!("creating {}", tmp.display())))?;
    let request = ApiRequest::new(Verb::Get, "sys/storage/raft/snapshot")
        .without_wrapping()
        .transfer();
    use std::io::IsTerminal as _;
    let mut progress = Progress {
        out: &mut out,
        bytes: 0,
        started: std::time::Instant::now(),
        shown: None,
        terminal: std::io::stderr().is_terminal(),
    };
    let downloaded = client.download(request, &mut progress);
    if progress.shown.is_some() {
        let _ = writeln!(std::io::stderr(), "\r\x1b[2K{}", progress.line());
    }
    let (size, took) = (progress.bytes, progress.started.elapsed());
    let result = downloaded
        .doing("taking the snapshot")
        .and_then(|_| {
            out.flush()
                .and_then(|()| out.sync_all())
                .map_err(io_error(format!("writing {}", tmp.display())))
        })
        .and_then(|()| check(&tmp).map(drop))
        .and_then(|()| {
            std::fs::rename(&tmp, file).map_err(io_error(format!(
                "renaming {} to {}",
                tmp.display(),
                file.display()
            )))
        });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result?;
    success(
        ctx,
        &format!(
            "Success! Snapshot saved to {} ({} in {:.1} s).",
            file.display(),
            output::human_bytes(size),
            took.as_secs_f64()
        ),
    )
}

fn restore(ctx: &Ctx, args: &RestoreArgs) -> CmdResult {
    check(&args.file)?;
    let bytes =
        std::fs::read(&args.file).map_err(io_error(format!("reading {}", args.file.display())))?;
    let path = if args.force {
        "sys/storage/raft/snapshot-force"
    } else {
        "sys/storage/raft/snapshot"
    };
    let size = bytes.len() as u64;
    let started = std::time::Instant::now();
    use std::io::IsTerminal as _;
    let terminal = std::io::stderr().is_terminal();
    let mut request = ApiRequest::new(Verb::Post, path)
        .without_wrapping()
        .file(bytes);
    // On a terminal the line is rewritten in place as the upload goes; otherwise one plain
    // line says when the upload is over and the server's work begins.
    let mut shown: Option<std::time::Instant> = None;
    let uploaded = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let begun = std::sync::Arc::clone(&uploaded);
    request = request.on_sent(move |sent| {
        let done = sent == size;
        let due = shown.is_none_or(|t| t.elapsed() >= std::time::Duration::from_millis(250));
        if terminal && (due || done) {
            let line = upload_line(sent, size, started.elapsed());
            let _ = write!(std::io::stderr(), "\r\x1b[2K{line}");
            shown = Some(std::time::Instant::now());
        }
        if done {
            let (end, line) = if terminal {
                ("\n", String::new())
            } else {
                ("", upload_line(sent, size, started.elapsed()))
            };
            let _ = writeln!(
                std::io::stderr(),
                "{end}{line}{}Uploaded: the server checks the whole file, then restores...",
                if terminal { "" } else { "; " }
            );
            begun.store(true, std::sync::atomic::Ordering::Release);
        }
    });
    // Then the server's side, from its restore status, until the restore answers.
    let client = ctx.client()?;
    let follow = Follow {
        status_path: "sys/storage/raft/snapshot-restore-status",
        line: restore_line,
        begun: uploaded,
    };
    follow::while_running(ctx.client()?, follow, || client.send(request))
        .doing("restoring the snapshot")?;
    success(
        ctx,
        &format!(
            "Success! Snapshot restored ({} in {:.1} s).",
            output::human_bytes(size),
            started.elapsed().as_secs_f64()
        ),
    )
}

/// The server's side of a restore, from `sys/storage/raft/snapshot-restore-status`:
/// `server: checking, 40.0 MiB of 120.0 MiB (33%)`; `None` once the restore is over. No
/// elapsed time: off a terminal a line is printed each time it changes.
fn restore_line(status: &Value) -> Option<String> {
    if status.get("in_progress") != Some(&Value::Bool(true)) {
        return None;
    }
    let state = status.get("state").and_then(Value::as_str)?;
    let unit = status
        .get("stage_unit")
        .and_then(Value::as_str)
        .unwrap_or("");
    let done = status
        .get("stage_done")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let total = status.get("stage_total").and_then(Value::as_u64);
    let amount = |n: u64| match unit {
        "bytes" => output::human_bytes(n),
        _ => format!("{n} {unit}"),
    };
    let mut line = format!("server: {state}");
    match (state, total) {
        ("reloading", _) => {}
        ("applying", Some(total)) => {
            line.push_str(&format!(", {} in one transaction", amount(total)));
        }
        (_, Some(total)) => {
            let percent = status
                .get("stage_percent")
                .and_then(Value::as_u64)
                .unwrap_or(0);
            line.push_str(&format!(
                ", {} of {} ({percent}%)",
                amount(done),
                amount(total)
            ));
        }
        (_, None) => line.push_str(&format!(", {}", amount(done))),
    }
    Some(line)
}

/// `12.0 MiB of 40.0 MiB sent (30%, 6.0 MiB/s, ETA 5s)`.
fn upload_line(sent: u64, size: u64, elapsed: std::time::Duration) -> String {
    let secs = elapsed.as_secs_f64().max(0.001);
    let rate = sent as f64 / secs;
    let percent = (sent * 100).checked_div(size).unwrap_or(100);
    let eta = if rate >= 1.0 {
        format!(
            ", ETA {}s",
            ((size - sent.min(size)) as f64 / rate).ceil() as u64
        )
    } else {
        String::new()
    };
    format!(
        "{} of {} sent ({percent}%, {}/s{eta})",
        output::human_bytes(sent),
        output::human_bytes(size),
        output::human_bytes(rate as u64)
    )
}

fn inspect(ctx: &Ctx, file: &Path) -> CmdResult {
    let manifest = check(file)?;
    let json = serde_json::to_value(&manifest)
        .map_err(|e| CliError::Invalid(format!("encoding the manifest: {e}")))?;
    let meta = &manifest.meta;
    let or_none = |v: Option<String>| v.unwrap_or_else(|| "n/a".into());
    emit_json_or_table(ctx, &json, || {
        output::key_value_table(&[
            ("Format Version".into(), manifest.format_version.to_string()),
            ("Cluster ID".into(), meta.cluster_id.clone()),
            ("Storage Type".into(), meta.storage_type.clone()),
            ("Created (Unix)".into(), meta.created_unix.to_string()),
            (
                "WAL Index".into(),
                or_none(meta.wal_index.map(|i| i.to_string())),
            ),
            ("Merkle Root".into(), or_none(meta.merkle_root.clone())),
            ("Entries".into(), manifest.entries.to_string()),
            ("Bytes".into(), manifest.bytes.to_string()),
            ("Parts".into(), manifest.parts.len().to_string()),
        ])
    })
}

/// Verifies the whole file: every part's checksum and the manifest.
fn check(file: &Path) -> Result<bunker_snapshot::Manifest, CliError> {
    let reader =
        std::fs::File::open(file).map_err(io_error(format!("opening {}", file.display())))?;
    bunker_snapshot::verify(BufReader::new(reader))
        .map_err(|e| CliError::Invalid(format!("Error checking {}: {e}", file.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_upload_line_shows_the_share_sent_the_rate_and_what_is_left() {
        let second = std::time::Duration::from_secs(1);
        assert_eq!(
            upload_line(2 * 1024 * 1024, 8 * 1024 * 1024, second),
            "2.0 MiB of 8.0 MiB sent (25%, 2.0 MiB/s, ETA 3s)"
        );
        assert_eq!(upload_line(0, 0, second), "0 B of 0 B sent (100%, 0 B/s)");
    }

    #[test]
    fn the_servers_side_of_a_restore_is_one_line_per_stage() {
        use serde_json::json;
        let at = |state: &str, unit: &str, done: u64, total: Value| {
            json!({"state": state, "in_progress": true, "stage_unit": unit, "stage_done": done,
                   "stage_total": total, "stage_percent": total.as_u64().map(|t| done * 100 / t),
                   "elapsed_ms": 1500})
        };
        assert_eq!(
            restore_line(&at(
                "checking",
                "bytes",
                1024 * 1024,
                json!(4 * 1024 * 1024)
            )),
            Some("server: checking, 1.0 MiB of 4.0 MiB (25%)".into())
        );
        assert_eq!(
            restore_line(&at("listing", "keys", 5000, Value::Null)),
            Some("server: listing, 5000 keys".into())
        );
        assert_eq!(
            restore_line(&at("applying", "operations", 0, json!(9000))),
            Some("server: applying, 9000 operations in one transaction".into())
        );
        assert_eq!(
            restore_line(&json!({"state": "complete", "in_progress": false})),
            None
        );
    }
}
