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

/// Stalls over their stage's threshold, by stage (`docs/monitoring.md`).
pub const SLOW_STAGES_METRIC: &str = "bunker_slow_stages_total";

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
        Timed::new(name, None)
    }

    /// As [`Timed::start`], and warns in the log when the stage takes longer than `after`.
    pub fn warn_after(name: &'static str, after: Duration) -> Timed {
        Timed::new(name, Some(after))
    }

    // The one constructor: building a `Timed` from another (`..Timed::start(name)`) would drop
    // that other one and record a sample of nothing in the summary.
    fn new(name: &'static str, slow_after: Option<Duration>) -> Timed {
        Timed {
            name,
            started: Instant::now(),
            slow_after,
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

/// Warns (at most once a second per stage and threshold) when `stage` took longer than
/// `threshold`.
pub fn warn_if_slow(stage: &'static str, took: Duration, threshold: Duration) {
    if took <= threshold {
        return;
    }
    // Every stall counts, written to the log or not: what an alert rule watches.
    metrics::counter!(SLOW_STAGES_METRIC, "stage" => stage).increment(1);
    let left_out = LIMITER
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .admit((stage, threshold), Instant::now());
    if let Some(left_out) = left_out {
        tracing::warn!(
            stage,
            took_ms = tenths_of_ms(took),
            threshold_ms = tenths_of_ms(threshold),
            left_out,
            "slow stage: took longer than its threshold"
        );
    }
}

/// Milliseconds to a tenth, so a stall just over its threshold does not read as equal to it.
fn tenths_of_ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 10_000.0).round() / 10.0
}

/// A stage and its threshold: one stage may have two (a checkpoint on the writer, which
/// clients wait for, or beside it), and one must not silence the other.
type StageKey = (&'static str, Duration);

/// Decides which stalls are written to the log: the first of each stage, then at most one per
/// stage and [`WARN_EVERY`], each carrying how many it left out since the last.
#[derive(Debug)]
struct WarnLimiter {
    /// Per stage: when it last warned, and the stalls left out since. A handful of stages.
    stages: Vec<(StageKey, Instant, u64)>,
}

impl WarnLimiter {
    const fn new() -> WarnLimiter {
        WarnLimiter { stages: Vec::new() }
    }

    /// `Some(left out since the last warning)` when this stall is to be written.
    fn admit(&mut self, stage: StageKey, now: Instant) -> Option<u64> {
        match self.stages.iter_mut().find(|(key, ..)| *key == stage) {
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
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    const A: StageKey = ("a", SLOW_WRITE_PATH);

    #[test]
    fn each_stage_warns_at_most_once_a_second_and_counts_what_it_left_out() {
        let mut limiter = WarnLimiter::new();
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        assert_eq!(limiter.admit(A, ms(0)), Some(0));
        assert_eq!(limiter.admit(A, ms(10)), None);
        assert_eq!(limiter.admit(A, ms(999)), None);
        // Another stage, or the same stage under another threshold, has its own budget.
        assert_eq!(limiter.admit(("b", SLOW_WRITE_PATH), ms(500)), Some(0));
        assert_eq!(limiter.admit(("a", SLOW_BACKGROUND), ms(500)), Some(0));
        assert_eq!(limiter.admit(A, ms(1000)), Some(2));
        assert_eq!(limiter.admit(A, ms(1500)), None);
        assert_eq!(limiter.admit(("b", SLOW_WRITE_PATH), ms(1500)), Some(0));
        assert_eq!(limiter.admit(A, ms(5000)), Some(1));
        assert_eq!(limiter.admit(A, ms(6000)), Some(0));
    }

    fn seen(stage: &'static str) -> Option<u64> {
        let limiter = LIMITER.lock().unwrap_or_else(PoisonError::into_inner);
        limiter
            .stages
            .iter()
            .find(|(key, ..)| *key == (stage, SLOW_WRITE_PATH))
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
        // A timing started longer ago than the threshold, as if its stage had stalled.
        let mut timed = Timed::warn_after("timed-test-a", SLOW_WRITE_PATH);
        timed.started = timed
            .started
            .checked_sub(SLOW_WRITE_PATH + Duration::from_millis(5))
            .expect("an instant 55 ms before now");
        drop(timed);
        assert_eq!(seen("timed-test-a"), Some(1));
    }

    #[test]
    fn a_stall_just_over_its_threshold_reads_as_over_it() {
        assert_eq!(tenths_of_ms(Duration::from_micros(50_700)), 50.7);
        assert_eq!(tenths_of_ms(SLOW_WRITE_PATH), 50.0);
    }

    /// Counts the samples recorded in each histogram.
    #[derive(Default)]
    struct Samples(Mutex<Vec<(String, Arc<AtomicU64>)>>);

    struct Count(Arc<AtomicU64>);

    impl metrics::HistogramFn for Count {
        fn record(&self, _value: f64) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    impl metrics::Recorder for Samples {
        fn describe_counter(
            &self,
            _: metrics::KeyName,
            _: Option<metrics::Unit>,
            _: metrics::SharedString,
        ) {
        }
        fn describe_gauge(
            &self,
            _: metrics::KeyName,
            _: Option<metrics::Unit>,
            _: metrics::SharedString,
        ) {
        }
        fn describe_histogram(
            &self,
            _: metrics::KeyName,
            _: Option<metrics::Unit>,
            _: metrics::SharedString,
        ) {
        }
        fn register_counter(
            &self,
            _: &metrics::Key,
            _: &metrics::Metadata<'_>,
        ) -> metrics::Counter {
            metrics::Counter::noop()
        }
        fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
            metrics::Gauge::noop()
        }
        fn register_histogram(
            &self,
            key: &metrics::Key,
            _: &metrics::Metadata<'_>,
        ) -> metrics::Histogram {
            let mut all = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            let count = match all.iter().find(|(name, _)| name == key.name()) {
                Some((_, count)) => count.clone(),
                None => {
                    let count = Arc::new(AtomicU64::new(0));
                    all.push((key.name().to_owned(), count.clone()));
                    count
                }
            };
            metrics::Histogram::from_arc(Arc::new(Count(count)))
        }
    }

    impl Samples {
        fn of(&self, name: &str) -> u64 {
            let all = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            all.iter()
                .find(|(n, _)| n == name)
                .map_or(0, |(_, count)| count.load(Ordering::SeqCst))
        }
    }

    #[test]
    fn one_timing_is_one_sample() {
        let samples = Samples::default();
        metrics::with_local_recorder(&samples, || {
            drop(Timed::start("timed-test-start"));
            drop(Timed::warn_after("timed-test-warn", SLOW_BACKGROUND));
            record(
                "timed-test-record",
                Duration::from_millis(1),
                Some(SLOW_BACKGROUND),
            );
        });
        assert_eq!(samples.of("timed-test-start"), 1);
        assert_eq!(samples.of("timed-test-warn"), 1);
        assert_eq!(samples.of("timed-test-record"), 1);
    }
}
