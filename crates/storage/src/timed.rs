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
/// sync, a wait for a checkpoint, a frame's send or apply, a deferred group's commit) warn past
/// this: a hundred times a group commit on this project's reference disk, and what figure 4 of
/// `bench/` allows a replicated write in all.
pub const SLOW_WRITE_PATH: Duration = Duration::from_millis(50);

/// Stages nothing waits for (a checkpoint runs beside the writer; a WAL truncation pass shares
/// the writer a page at a time) warn past this, etcd's threshold for a slow fdatasync.
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
        let now = Instant::now();
        record_at(
            self.name,
            now.saturating_duration_since(self.started),
            self.slow_after,
            now,
        );
    }
}

/// Records `took` in the summary `name`, in milliseconds, and warns when it is over
/// `slow_after`: for stages timed from an instant taken elsewhere (a commit, a queueing).
pub fn record(name: &'static str, took: Duration, slow_after: Option<Duration>) {
    record_at(name, took, slow_after, Instant::now());
}

fn record_at(name: &'static str, took: Duration, slow_after: Option<Duration>, now: Instant) {
    record_ms(name, took.as_secs_f64() * 1000.0, now);
    if let Some(threshold) = slow_after {
        warn_if_slow(name, took, threshold);
    }
}

/// How long a thread reuses a histogram handle before asking the recorder for it again.
///
/// `metrics::histogram!` asks the recorder for a handle on every use: the Prometheus
/// exporter hashes the name, looks it up in its registry under a lock and allocates the
/// handle, ~200 instructions before the sample is recorded, and a KV write records six
/// timings on the request runtime (reusing handles: −1.3 % of its instructions,
/// `bench/README.md`). A handle is kept per thread, per recorder and per name, and asked for
/// again after this long: the exporter drops a summary idle for longer than
/// `prometheus_retention_time`, and a handle kept past that would record into the dropped
/// one; a summary in use is never idle (recording through a handle marks it used), and one
/// idle that long is looked up afresh on its next use (the retention is configured in whole
/// seconds, at least one, far above this; a scrape that drops a summary in the instant a
/// thread asks for it loses that thread's samples of it for at most this long). The recorder
/// is part of the key, so a recorder installed later, or set for a scope (a test's), is asked
/// for its own handles; a scope's recorder dropped and another set at the same address within
/// this long on one thread would get the first one's handles (no test does that).
const HANDLE_REUSE: Duration = Duration::from_millis(100);

/// At most this many handles per thread (names are static; more would mean many recorders,
/// as in tests): past it the thread's handles are dropped and asked for again.
const HANDLES_PER_THREAD: usize = 64;

/// A histogram handle a thread reuses: the recorder it came from (its address), the name, and
/// when it was asked for.
struct Handle {
    recorder: usize,
    name: &'static str,
    histogram: metrics::Histogram,
    asked: Instant,
}

thread_local! {
    static HANDLES: std::cell::RefCell<Vec<Handle>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Records `ms` in the summary `name` through this thread's handle for it (`now` is the
/// current instant, which the caller has read anyway to time what it records).
pub fn record_ms(name: &'static str, ms: f64, now: Instant) {
    // The current recorder (a scope's, else the global one, else the no-op): its address
    // tells recorders apart for as long as they live.
    let recorder = metrics::with_recorder(|r| std::ptr::from_ref(r).cast::<()>() as usize);
    // While the thread's handles are being torn down (a timing dropped in another
    // thread-local's destructor) or already in use, the handle is asked for as before.
    let cached = HANDLES.try_with(|handles| {
        let Ok(mut handles) = handles.try_borrow_mut() else {
            return false;
        };
        if let Some(handle) = handles
            .iter_mut()
            .find(|h| h.recorder == recorder && h.name == name)
        {
            if now.saturating_duration_since(handle.asked) >= HANDLE_REUSE {
                handle.histogram = metrics::histogram!(name);
                handle.asked = now;
            }
            handle.histogram.record(ms);
            return true;
        }
        let histogram = metrics::histogram!(name);
        histogram.record(ms);
        if handles.len() >= HANDLES_PER_THREAD {
            handles.clear();
        }
        handles.push(Handle {
            recorder,
            name,
            histogram,
            asked: now,
        });
        true
    });
    if cached != Ok(true) {
        metrics::histogram!(name).record(ms);
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

    /// Counts the samples recorded in each histogram, and the handles asked for.
    #[derive(Default)]
    struct Samples(Mutex<Vec<(String, Arc<AtomicU64>)>>, AtomicU64);

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
            self.1.fetch_add(1, Ordering::SeqCst);
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

    /// A thread reuses its handle for a while, asks again after [`HANDLE_REUSE`], and never
    /// records into another recorder's handle: every sample lands in the recorder current
    /// when it is recorded.
    #[test]
    fn handles_are_reused_per_recorder_and_asked_for_again_in_time() {
        let first = Samples::default();
        let t0 = Instant::now();
        metrics::with_local_recorder(&first, || {
            for _ in 0..100 {
                record_ms("timed-test-reuse", 1.0, t0);
            }
        });
        assert_eq!(first.of("timed-test-reuse"), 100);
        assert_eq!(
            first.1.load(Ordering::SeqCst),
            1,
            "one handle for 100 samples"
        );
        // Another recorder (alive beside the first, so at another address) gets its own.
        let second = Samples::default();
        metrics::with_local_recorder(&second, || record_ms("timed-test-reuse", 1.0, t0));
        assert_eq!(second.of("timed-test-reuse"), 1);
        assert_eq!(first.of("timed-test-reuse"), 100);
        // Past the reuse time the recorder is asked again, and the sample still lands.
        metrics::with_local_recorder(&first, || {
            record_ms("timed-test-reuse", 1.0, t0 + HANDLE_REUSE / 2);
            record_ms("timed-test-reuse", 1.0, t0 + HANDLE_REUSE);
        });
        assert_eq!(first.1.load(Ordering::SeqCst), 2);
        assert_eq!(first.of("timed-test-reuse"), 102);
    }
}
