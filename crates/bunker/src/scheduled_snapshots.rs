//! Scheduled snapshots: `snapshot { interval = "1h", retain = 24, path = "/var/backups/bunker" }`.
//!
//! Every `interval`, an active, unsealed node writes a snapshot to
//! `path/bunker-<unix milliseconds>.snap`: into a temporary file first, fsynced, renamed into
//! place, then the directory fsynced, so a crash leaves either the whole file or none under
//! the final name. Then the oldest snapshots beyond `retain` are removed (names sort by time).
//! A failed round is logged and retried at the next tick.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use bunker_core::Core;
use tokio::sync::mpsc;

const PREFIX: &str = "bunker-";
const SUFFIX: &str = ".snap";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScheduleConfig {
    pub interval: Duration,
    pub retain: usize,
    pub dir: PathBuf,
}

/// Runs forever: one snapshot per interval (the first after one interval).
pub async fn run(core: Arc<Core>, config: ScheduleConfig) {
    let mut tick = tokio::time::interval(config.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        match take(&core, &config).await {
            Ok(Some(path)) => tracing::info!(path = %path.display(), "scheduled snapshot written"),
            Ok(None) => tracing::debug!("scheduled snapshot skipped: sealed or not active"),
            Err(e) => tracing::warn!(error = format!("{e:#}"), "scheduled snapshot failed"),
        }
    }
}

/// One round: write a snapshot and prune; `None` when this node may not take one now.
pub async fn take(core: &Arc<Core>, config: &ScheduleConfig) -> Result<Option<PathBuf>> {
    let Some(permit) = core.scheduled_snapshot_permit() else {
        return Ok(None);
    };
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let name = format!("{PREFIX}{millis:020}{SUFFIX}");
    let (tx, rx) = mpsc::channel::<Vec<u8>>(4);
    let dir = config.dir.clone();
    let writer = tokio::task::spawn_blocking(move || write_file(&dir, &name, rx));
    let saved = core.snapshot_save(&permit, tx).await;
    let written = writer.await.context("snapshot writer thread")?;
    saved.context("reading the snapshot")?;
    let path = written?;
    let dir = config.dir.clone();
    let retain = config.retain;
    tokio::task::spawn_blocking(move || prune(&dir, retain))
        .await
        .context("snapshot pruning thread")??;
    Ok(Some(path))
}

/// Writes the frames to a temporary file and moves it into place (see the module docs). If
/// the sender stops early (a failed save) the temporary file is removed.
fn write_file(dir: &Path, name: &str, mut frames: mpsc::Receiver<Vec<u8>>) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(".{name}.tmp"));
    let result = (|| -> Result<PathBuf> {
        let mut file =
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        while let Some(frame) = frames.blocking_recv() {
            file.write_all(&frame)
                .with_context(|| format!("writing {}", tmp.display()))?;
        }
        file.sync_all()
            .with_context(|| format!("syncing {}", tmp.display()))?;
        drop(file);
        // The save's own result says whether the file is whole; check what was written.
        bunker_snapshot::verify(std::io::BufReader::new(std::fs::File::open(&tmp)?))
            .with_context(|| format!("checking {}", tmp.display()))?;
        let path = dir.join(name);
        std::fs::rename(&tmp, &path)
            .with_context(|| format!("renaming {} into place", tmp.display()))?;
        sync_dir(dir)?;
        Ok(path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing directory {}", dir.display()))
}

/// Removes the oldest `bunker-*.snap` files beyond `retain`.
fn prune(dir: &Path, retain: usize) -> Result<()> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with(PREFIX) && name.ends_with(SUFFIX))
        .collect();
    names.sort();
    let excess = names.len().saturating_sub(retain);
    for name in names.iter().take(excess) {
        let path = dir.join(name);
        std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        tracing::info!(path = %path.display(), "old snapshot removed");
    }
    if excess > 0 {
        sync_dir(dir)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prune_keeps_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        for n in [3, 1, 2] {
            std::fs::write(dir.path().join(format!("{PREFIX}{n:020}{SUFFIX}")), b"x").unwrap();
        }
        std::fs::write(dir.path().join("other.txt"), b"x").unwrap();
        prune(dir.path(), 2).unwrap();
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                format!("{PREFIX}{:020}{SUFFIX}", 2),
                format!("{PREFIX}{:020}{SUFFIX}", 3),
                "other.txt".to_string()
            ]
        );
    }
}
