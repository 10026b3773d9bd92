//! A timing recorded when it is dropped, so a function's every exit (errors and `?` included)
//! is measured, as Vault's deferred `MeasureSince` is; and a warning in the log when a stage
//! that holds up writes or replication took too long.
//!
//! The warnings are etcd's "apply request took too long" and "slow fdatasync" for Bunker: a
//! stall an operator would otherwise see only as a spike in a summary's maximum, named by its
//! stage, with its duration, in the log at the moment it happened. Each stage warns at most
//! once a second and says how many more stalls it left out, so a sick disk cannot flood the
//! log (`docs/monitoring.md`, "Slow stages").

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Stages that hold up acknowledgements or the replication stream (a group commit, its log
/// sync, a wait for a checkpoint, a frame's send or apply, a WAL truncation pass) warn past
/// this: a hundred times a group commit on this project's reference disk, and what figure 4 of
/// `bench/` allows a replicated write in all.
pub const SLOW_WRITE_PATH: Duration = Duration::from_millis(50);

/// Stages nothing waits for (a checkpoint runs beside the writer) warn past this, etcd's
/// threshold for a slow fdatasync.
pub const SLOW_BACKGROUND: Duration = Duration::from_secs(1);

/// At most one warning per stage in this long.
const WARN_EVERY: Duration = Duration::from_secs(1);

/// Records the milliseconds from [`Timed::start`] to its drop in the summary `name` (through
/// the `metrics` facade; nothing happens without a recorder installed).
pub struct Timed {
    name: &'static str,
    started: Instant,
    slow_after: Option<Duration>,
}

impl Timed {
    pub fn start(name: &'static str) -> Timed {
        Timed {
            name,
            started: Instant::now(),
            slow_after: None,
        }
    }

    /// As [`Timed::start`], and warns in the log when the stage takes longer than `after`.
    pub fn warn_after(name: &'static str, after: Duration) -> Timed {
        Timed {
            slow_after: Some(after),
            ..Timed::start(name)
        }
    }
}

impl Drop for Timed {
    fn drop(&mut self) {
        record(self.name, self.started.elapsed(), self.slow_after);
    }
}

/// Records `took` in the summary `name`, in milliseconds, and warns when it is over
/// `slow_after`: for stages timed from an instant taken elsewhere (a commit, a queueing).
pub fn record(name: &'static str, took: Duration, slow_after: Option<Duration>) {
    metrics::histogram!(name).record(took.as_secs_f64() * 1000.0);
    if let Some(threshold) = slow_after {
        warn_if_slow(name, took, threshold);
    }
}

/// The process's warnings, for every stage.
static LIMITER: Mutex<WarnLimiter> = Mutex::new(WarnLimiter::new());

/// Warns (at most once a second per stage) when `stage` took longer than `threshold`.
pub fn warn_if_slow(stage: &'static str, took: Duration, threshold: Duration) {
    if took <= threshold {
        return;
    }
    let left_out = LIMITER
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .admit(stage, Instant::now());
    if let Some(left_out) = left_out {
        tracing::warn!(
            stage,
            took_ms = took.as_millis() as u64,
            threshold_ms = threshold.as_millis() as u64,
            left_out,
            "slow stage: took longer than its threshold"
        );
    }
}

/// Decides which stalls are written to the log: the first of each stage, then at most one per
/// stage and [`WARN_EVERY`], each carrying how many it left out since the last.
#[derive(Debug)]
struct WarnLimiter {
    /// Per stage: when it last warned, and the stalls left out since. A handful of stages.
    stages: Vec<(&'static str, Instant, u64)>,
}

impl WarnLimiter {
    const fn new() -> WarnLimiter {
        WarnLimiter { stages: Vec::new() }
    }

    /// `Some(left out since the last warning)` when this stall is to be written.
    fn admit(&mut self, stage: &'static str, now: Instant) -> Option<u64> {
        match self.stages.iter_mut().find(|(name, ..)| *name == stage) {
            None => {
                self.stages.push((stage, now, 0));
                Some(0)
            }
            Some((_, last, left_out)) if now.duration_since(*last) >= WARN_EVERY => {
                *last = now;
                Some(std::mem::take(left_out))
            }
            Some((.., left_out)) => {
                *left_out += 1;
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_stage_warns_at_most_once_a_second_and_counts_what_it_left_out() {
        let mut limiter = WarnLimiter::new();
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        assert_eq!(limiter.admit("a", ms(0)), Some(0));
        assert_eq!(limiter.admit("a", ms(10)), None);
        assert_eq!(limiter.admit("a", ms(999)), None);
        // Another stage has its own budget.
        assert_eq!(limiter.admit("b", ms(500)), Some(0));
        assert_eq!(limiter.admit("a", ms(1000)), Some(2));
        assert_eq!(limiter.admit("a", ms(1500)), None);
        assert_eq!(limiter.admit("b", ms(1500)), Some(0));
        assert_eq!(limiter.admit("a", ms(5000)), Some(1));
        assert_eq!(limiter.admit("a", ms(6000)), Some(0));
    }

    fn seen(stage: &str) -> Option<u64> {
        let limiter = LIMITER.lock().unwrap_or_else(PoisonError::into_inner);
        limiter
            .stages
            .iter()
            .find(|(name, ..)| *name == stage)
            .map(|(.., left_out)| *left_out)
    }

    #[test]
    fn only_a_stage_over_its_threshold_is_counted_as_slow() {
        // Under or at its threshold, or without one, a stage never reaches the limiter.
        record(
            "timed-test-a",
            Duration::from_millis(5),
            Some(SLOW_WRITE_PATH),
        );
        record("timed-test-a", SLOW_WRITE_PATH, Some(SLOW_WRITE_PATH));
        record("timed-test-a", Duration::from_secs(9), None);
        drop(Timed::start("timed-test-a"));
        assert_eq!(seen("timed-test-a"), None);
        // Over it, the first warns and the next, within the second, is left out and counted.
        record(
            "timed-test-a",
            Duration::from_millis(51),
            Some(SLOW_WRITE_PATH),
        );
        assert_eq!(seen("timed-test-a"), Some(0));
        let timed = Timed::warn_after("timed-test-a", Duration::ZERO);
        std::thread::sleep(Duration::from_millis(1));
        drop(timed);
        assert_eq!(seen("timed-test-a"), Some(1));
    }
}
