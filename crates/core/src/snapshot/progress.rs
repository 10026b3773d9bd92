//! What a snapshot restore is doing, for `GET sys/storage/raft/snapshot-restore-status` and the
//! CLI's progress line: the current (or last) restore's stage, how far the stage is, and how
//! the restore ended.
//!
//! One restore runs at a time (the HTTP layer reads one upload at a time and holds its slot
//! until the restore is over), so one record is enough. The stage's counter is an atomic the
//! working code bumps without taking a lock; the rest changes a few times per restore.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

/// The steps of a restore, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestoreStage {
    /// The HTTP layer reads the upload (bytes).
    Receiving,
    /// Every checksum, key order and the manifest (bytes of the file).
    Checking,
    /// The snapshot's entries read into storage operations (bytes of the file).
    Reading,
    /// The current keys listed, to delete those the snapshot lacks (keys; no total).
    Listing,
    /// The change committed as one transaction (operations; no count while it runs).
    Applying,
    /// The keyring and tables loaded again.
    Reloading,
}

impl RestoreStage {
    fn name(self) -> &'static str {
        match self {
            RestoreStage::Receiving => "receiving",
            RestoreStage::Checking => "checking",
            RestoreStage::Reading => "reading",
            RestoreStage::Listing => "listing",
            RestoreStage::Applying => "applying",
            RestoreStage::Reloading => "reloading",
        }
    }

    fn unit(self) -> &'static str {
        match self {
            RestoreStage::Receiving | RestoreStage::Checking | RestoreStage::Reading => "bytes",
            RestoreStage::Listing => "keys",
            RestoreStage::Applying | RestoreStage::Reloading => "operations",
        }
    }
}

#[derive(Clone, Debug)]
struct Run {
    force: bool,
    started: Instant,
    started_unix: u64,
    stage: RestoreStage,
    stage_total: Option<u64>,
    file_bytes: Option<u64>,
    entries: Option<u64>,
    /// Set once the restore ended: `Ok` or the error it answered.
    outcome: Option<Result<(), String>>,
    elapsed_ms: u64,
}

/// The current or last restore of this process.
#[derive(Debug, Default)]
pub struct RestoreProgress {
    run: Mutex<Option<Run>>,
    done: AtomicU64,
}

impl RestoreProgress {
    /// A restore begins (its upload is about to be read): `declared_bytes` is the body's
    /// declared length, when the client sent one.
    pub fn begin(&self, force: bool, declared_bytes: Option<u64>) {
        self.done.store(0, Ordering::Relaxed);
        *self.lock() = Some(Run {
            force,
            started: Instant::now(),
            started_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            stage: RestoreStage::Receiving,
            stage_total: declared_bytes,
            file_bytes: declared_bytes,
            entries: None,
            outcome: None,
            elapsed_ms: 0,
        });
    }

    /// The counter of the running stage's units, for the code doing the work.
    pub fn counter(&self) -> &AtomicU64 {
        &self.done
    }

    /// The whole file is in memory: its size is known from here on.
    pub fn received(&self, file_bytes: u64) {
        if let Some(run) = self.lock().as_mut() {
            run.file_bytes = Some(file_bytes);
        }
    }

    /// The manifest was read: the snapshot's entry count.
    pub fn entries(&self, entries: u64) {
        if let Some(run) = self.lock().as_mut() {
            run.entries = Some(entries);
        }
    }

    /// The restore moves on to `stage`, of `total` units when known.
    pub fn stage(&self, stage: RestoreStage, total: Option<u64>) {
        let mut run = self.lock();
        if let Some(run) = run.as_mut().filter(|r| r.outcome.is_none()) {
            run.stage = stage;
            run.stage_total = total;
            self.done.store(0, Ordering::Relaxed);
        }
    }

    /// The restore ended, as `outcome` says (the error is what the client was answered).
    pub fn finish(&self, outcome: Result<(), String>) {
        if let Some(run) = self.lock().as_mut().filter(|r| r.outcome.is_none()) {
            run.elapsed_ms = millis(run.started);
            run.outcome = Some(outcome);
        }
    }

    /// Status fields (see docs/snapshots.md, "Progress").
    pub fn to_json(&self) -> Value {
        let Some(run) = self.lock().clone() else {
            return json!({"state": "idle", "in_progress": false});
        };
        let (state, in_progress, error) = match &run.outcome {
            None => (run.stage.name(), true, None),
            Some(Ok(())) => ("complete", false, None),
            Some(Err(e)) => ("failed", false, Some(e.clone())),
        };
        let elapsed_ms = if in_progress {
            millis(run.started)
        } else {
            run.elapsed_ms
        };
        let mut status = json!({
            "state": state,
            "in_progress": in_progress,
            "force": run.force,
            "started_unix": run.started_unix,
            "elapsed_ms": elapsed_ms,
            "file_bytes": run.file_bytes,
            "entries": run.entries,
            "error": error,
        });
        if in_progress {
            let done = self.done.load(Ordering::Relaxed);
            let total = run.stage_total;
            let percent = total
                .filter(|t| *t > 0)
                .map(|t| (done.min(t) * 100 / t).min(100));
            if let Some(fields) = status.as_object_mut() {
                fields.insert("stage_unit".into(), json!(run.stage.unit()));
                fields.insert("stage_done".into(), json!(done));
                fields.insert("stage_total".into(), json!(total));
                fields.insert("stage_percent".into(), json!(percent));
            }
        }
        status
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Run>> {
        // The record holds plain figures: one a panic left half-written is still readable.
        self.run
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn millis(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// A reader over the uploaded file that counts the bytes read into the stage's counter.
pub(crate) struct Counting<'a> {
    pub(crate) inner: &'a [u8],
    pub(crate) read: &'a AtomicU64,
}

impl std::io::Read for Counting<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restore_reports_its_stages_then_how_it_ended() {
        let p = RestoreProgress::default();
        assert_eq!(p.to_json(), json!({"state": "idle", "in_progress": false}));

        p.begin(false, Some(1000));
        p.counter().fetch_add(250, Ordering::Relaxed);
        let s = p.to_json();
        assert_eq!(s["state"], "receiving");
        assert_eq!(s["stage_unit"], "bytes");
        assert_eq!(
            (s["stage_done"].clone(), s["stage_percent"].clone()),
            (json!(250), json!(25))
        );

        p.received(1000);
        p.stage(RestoreStage::Checking, Some(1000));
        assert_eq!(p.to_json()["stage_done"], 0, "a new stage counts from zero");
        p.entries(42);
        p.stage(RestoreStage::Listing, None);
        p.counter().fetch_add(7, Ordering::Relaxed);
        let s = p.to_json();
        assert_eq!(s["state"], "listing");
        assert_eq!(s["stage_total"], Value::Null);
        assert_eq!(s["stage_percent"], Value::Null);
        assert_eq!(s["entries"], 42);

        p.finish(Ok(()));
        let s = p.to_json();
        assert_eq!(s["state"], "complete");
        assert_eq!(s["in_progress"], false);
        assert!(s.get("stage_done").is_none());
        // An ended restore stays as it ended: a late stage or outcome changes nothing.
        p.stage(RestoreStage::Applying, None);
        p.finish(Err("late".into()));
        assert_eq!(p.to_json()["state"], "complete");

        p.begin(true, None);
        p.finish(Err("invalid snapshot: truncated".into()));
        let s = p.to_json();
        assert_eq!(s["state"], "failed");
        assert_eq!(s["force"], true);
        assert_eq!(s["error"], "invalid snapshot: truncated");
    }

    #[test]
    fn percent_never_exceeds_the_whole() {
        let p = RestoreProgress::default();
        p.begin(false, Some(10));
        p.counter().fetch_add(15, Ordering::Relaxed);
        assert_eq!(p.to_json()["stage_percent"], 100);
    }
}
