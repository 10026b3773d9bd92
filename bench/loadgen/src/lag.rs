//! Replication lag (figure 4): open-loop writes at a fixed rate to a DR primary while one
//! connection samples the secondary's applied WAL index (`last_remote_wal`) every millisecond.
//!
//! Which WAL index a write got is the primary's `X-Bunker-Wal-Index` response header: the
//! index of the write's own entry (since `stamp.rs`; before, the last committed index read
//! right after the write was acknowledged, an upper bound). Against a server without the header it falls back to a looser bound: each KV v2 write
//! appends exactly `k` WAL entries (calibrated first, and checked at the end against the
//! primary's `last_wal`), and a write acknowledged when `started` writes had been sent cannot
//! have committed after more than `started` writes, so its entries end at or below
//! `w0 + k * started`. A write counts as applied at the first sample, received after its
//! acknowledgement, showing the secondary at or past its bound. Both approximations can only
//! make the reported lag larger, never smaller; the sampling interval is reported too.
//!
//! Sampled every millisecond, that bound carries about half the interval (~0.5 ms) on top of
//! the lag itself. So every `probe_every`-th write (by schedule, so a uniform sample) is also a
//! *probe*: its writer wakes the sampler when the write is acknowledged, and the sampler polls
//! back to back, without its pause, until the secondary shows the probe applied or
//! [`PROBE_TIGHT`] has passed (a stall is then sampled at the usual pace, not polled through:
//! polling takes CPU from the servers on two cores). A probe's lag is then bounded above
//! within about two status requests and the sampler's wake-up, and below by the send time of
//! the last sample that did not show it (the secondary read its index after that); both are
//! reported.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use crate::http::{Conn, Req};
use crate::stats::{quantile_ms, r3, slice_max, summary};
use crate::target::{value_of, Target};

pub struct LagPlan {
    pub primary: String,
    pub secondary: String,
    pub token: String,
    pub rate: f64,
    pub duration: Duration,
    pub conns: usize,
    pub value_bytes: usize,
    pub prefix: String,
    /// Interval of the secondary's status samples.
    pub sample_every: Duration,
    /// Every this many writes one is a probe (0: none).
    pub probe_every: u64,
}

/// Lag sampling skips the Merkle root, which costs a full scan per request.
const STATUS: &str = "/v1/sys/replication/dr/status?merkle_root=false";
/// How long the secondary may take to apply everything once the load stops.
const CATCH_UP: Duration = Duration::from_secs(600);

async fn status_wal(conn: &mut Conn, field: &str) -> Result<u64> {
    let r = conn.send(&Req::get(STATUS)).await?;
    let v = r.json()?;
    // Vault puts the status under `data`; accept it at the top level too.
    v.get("data")
        .and_then(|d| d.get(field))
        .or_else(|| v.get(field))
        .and_then(Value::as_u64)
        .ok_or_else(|| anyhow!("status has no {field}: {v}"))
}

/// Wait until the secondary has applied `wal`.
async fn wait_applied(sec: &mut Conn, wal: u64) -> Result<()> {
    let deadline = Instant::now() + CATCH_UP;
    loop {
        if status_wal(sec, "last_remote_wal").await? >= wal {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("secondary did not reach WAL index {wal} within {CATCH_UP:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Entries per write, measured with sequential writes on a quiet primary.
async fn calibrate(plan: &LagPlan, target: &Target, pri: &mut Conn, sec: &mut Conn) -> Result<u64> {
    const N: u64 = 20;
    let w_before = status_wal(pri, "last_wal").await?;
    let value = value_of(plan.value_bytes);
    let mut conn = Conn::new(&plan.primary);
    for i in 0..N {
        let key = Target::key(&format!("{}-calibrate", plan.prefix), i);
        let r = conn
            .send(&target.write(&key, target.write_body(&key, &value)))
            .await?;
        if !r.ok() {
            bail!(
                "calibration write failed: {} {}",
                r.status,
                String::from_utf8_lossy(&r.body)
            );
        }
    }
    let w_after = status_wal(pri, "last_wal").await?;
    wait_applied(sec, w_after).await?;
    let delta = w_after.saturating_sub(w_before);
    if delta == 0 || delta % N != 0 {
        bail!(
            "{N} writes moved the primary's WAL by {delta} entries: not a whole number per write"
        );
    }
    Ok(delta / N)
}

/// What bounds a write's WAL index.
#[derive(Clone, Copy)]
enum Bound {
    /// The primary's `X-Bunker-Wal-Index` on the write's response.
    Header(u64),
    /// Writes started when it was acknowledged.
    Started(u64),
}

struct Shared {
    started: AtomicU64,
    next: AtomicU64,
    stop: AtomicBool,
    /// The writers are done (the replay-lag sampler stops).
    load_done: AtomicBool,
    acks: Mutex<Vec<Ack>>,
    errors: AtomicU64,
    /// The highest WAL index of an acknowledged probe (0: none yet): the sampler polls back to
    /// back while the secondary is below it.
    probe_wal: AtomicU64,
    /// Until when (µs since t0) the sampler polls back to back for the probes acknowledged.
    probe_until_us: AtomicU64,
    /// The sampler's thread, which a probe's writer wakes from its pause.
    sampler: OnceLock<std::thread::Thread>,
}

/// How long after a probe's acknowledgement the sampler polls back to back for it at most.
const PROBE_TIGHT: Duration = Duration::from_millis(2);

/// An acknowledged write.
struct Ack {
    /// Microseconds since t0 when acknowledged.
    t_ack: u64,
    bound: Bound,
    probe: bool,
}

pub async fn run(plan: LagPlan) -> Result<Value> {
    let target = Target::Bunker {
        token: plan.token.clone(),
    };
    let mut pri = Conn::new(&plan.primary);
    let mut sec = Conn::new(&plan.secondary);
    wait_applied(&mut sec, status_wal(&mut pri, "last_wal").await?).await?;
    let k = calibrate(&plan, &target, &mut pri, &mut sec).await?;
    let w0 = status_wal(&mut pri, "last_wal").await?;
    wait_applied(&mut sec, w0).await?;

    let secondary_stages = [&STAGES[..], &SECONDARY_STORAGE[..]].concat();
    let stages_before = (
        stage_sums(&mut pri, &STAGES).await,
        stage_sums(&mut sec, &secondary_stages).await,
    );
    let t0 = Instant::now();
    let shared = Arc::new(Shared {
        started: AtomicU64::new(0),
        next: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        load_done: AtomicBool::new(false),
        acks: Mutex::new(Vec::new()),
        errors: AtomicU64::new(0),
        probe_wal: AtomicU64::new(0),
        probe_until_us: AtomicU64::new(0),
        sampler: OnceLock::new(),
    });
    let sampler = spawn_sampler(
        plan.secondary.clone(),
        plan.sample_every,
        t0,
        shared.clone(),
    )?;
    let replay_sampler = spawn_replay_sampler(plan.primary.clone(), shared.clone())?;
    let interval = Duration::from_secs_f64(1.0 / plan.rate.max(0.001));
    let value = Arc::new(value_of(plan.value_bytes));
    let plan = Arc::new(plan);
    let mut writers = Vec::new();
    for _ in 0..plan.conns {
        let (plan, shared, value, target) =
            (plan.clone(), shared.clone(), value.clone(), target.clone());
        writers.push(tokio::spawn(async move {
            writer(&plan, &target, &shared, &value, t0, interval).await
        }));
    }
    for w in writers {
        w.await?;
    }
    let load_secs = t0.elapsed().as_secs_f64();
    // PostgreSQL's replay_lag is sampled while its load runs; so is ours.
    shared.load_done.store(true, Ordering::SeqCst);
    let mut replay_us = replay_sampler
        .join()
        .map_err(|_| anyhow!("the replay-lag sampler thread panicked"))??;
    let stages_after = (
        stage_sums(&mut pri, &STAGES).await,
        stage_sums(&mut sec, &secondary_stages).await,
    );
    // Every acknowledged write's entries are at or below the primary's last index now; a
    // failed write may never have committed, so what was started is no bound to wait for.
    let acked = shared.acks.lock().map_or(0, |acks| acks.len()) as u64;
    let w_end = status_wal(&mut pri, "last_wal").await?;
    wait_applied(&mut sec, w_end.max(w0 + k * acked)).await?;
    let expected_end = w0 + k * shared.started.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(20)).await;
    shared.stop.store(true, Ordering::SeqCst);
    let (samples, poll_us) = sampler
        .join()
        .map_err(|_| anyhow!("the sampler thread panicked"))??;

    let acks = std::mem::take(&mut *shared.acks.lock().map_err(|_| anyhow!("lock poisoned"))?);
    let mut lags_us = Vec::with_capacity(acks.len());
    let mut over_time = Vec::with_capacity(acks.len());
    let mut probe_us = Vec::new();
    let mut probe_lower_us = Vec::new();
    let mut header_bounds = 0u64;
    for ack in &acks {
        let t_ack = ack.t_ack;
        let bound = match ack.bound {
            Bound::Header(index) => {
                header_bounds += 1;
                index
            }
            Bound::Started(started) => w0 + k * started,
        };
        let (lag, lower) = bounds(&samples, &poll_us, t_ack, bound)
            .ok_or_else(|| anyhow!("no sample shows WAL index {bound} applied"))?;
        lags_us.push(lag);
        over_time.push((t_ack, lag));
        if ack.probe {
            probe_us.push(lag);
            probe_lower_us.push(lower);
        }
    }
    // Lag over time for the report's picture: [seconds since the first write, the largest lag
    // of the writes acknowledged in that 1/600th of the run, ms].
    over_time.sort_unstable();
    let first = over_time.first().map_or(0, |(t, _)| *t);
    let series: Vec<Value> = slice_max(&over_time, 600)
        .iter()
        .map(|(t, lag)| json!([r3((t - first) as f64 / 1e6), r3(*lag as f64 / 1000.0)]))
        .collect();
    let probes = probe_us.len();
    let mut poll_sorted = poll_us;
    poll_sorted.sort_unstable();
    let gaps: Vec<u64> = samples
        .windows(2)
        .filter_map(|w| match w {
            [a, b] => Some(b.0 - a.0),
            _ => None,
        })
        .collect();
    let mut gaps_sorted = gaps;
    gaps_sorted.sort_unstable();
    let mut report = json!({
        "secondary_apply_entries_per_sec": r3(apply_rate(&samples)),
        "writes": acks.len(),
        "errors": shared.errors.load(Ordering::SeqCst),
        "rate_target": r3(plan.rate),
        "rate_achieved": r3(acks.len() as f64 / load_secs),
        "wal_entries_per_write": k,
        "writes_bounded_by_header": header_bounds,
        "probes": probes,
        "probe_every": plan.probe_every,
        "wal_drift_entries": w_end as i64 - expected_end as i64,
        "samples": samples.len(),
        "sample_interval_p50_ms": r3(quantile_ms(&gaps_sorted, 0.5)),
        "sample_interval_p99_ms": r3(quantile_ms(&gaps_sorted, 0.99)),
        "status_request_p50_ms": r3(quantile_ms(&poll_sorted, 0.5)),
        "series": series,
        "stages": stage_means(&stages_before, &stages_after),
    });
    if let (Some(obj), Value::Object(s)) = (report.as_object_mut(), summary(&mut lags_us)) {
        obj.extend(s);
    }
    if let (Some(obj), Value::Object(s)) = (report.as_object_mut(), summary(&mut replay_us)) {
        obj.insert("replay_lag_samples".into(), json!(replay_us.len()));
        for (k, v) in s {
            obj.insert(format!("replay_lag_{k}"), v);
        }
    }
    if probes > 0 {
        for (name, lags) in [
            ("probe", &mut probe_us),
            ("probe_lower", &mut probe_lower_us),
        ] {
            if let (Some(obj), Value::Object(s)) = (report.as_object_mut(), summary(lags)) {
                for (k, v) in s {
                    obj.insert(format!("{name}_{k}"), v);
                }
            }
        }
    }
    Ok(report)
}

/// A write's lag, acknowledged at `t_ack` with its entries up to WAL index `bound`, from the
/// samples `(received at, index)` in order and each one's request time (`poll_us`): the upper
/// bound (the first sample received after the acknowledgement showing the index applied,
/// minus the acknowledgement), and the lower bound (the last sample that did not show it was
/// sent at its receipt minus its request time, and the secondary read its index after that;
/// 0 when it left before the acknowledgement). `None` when no sample shows it.
fn bounds(samples: &[(u64, u64)], poll_us: &[u64], t_ack: u64, bound: u64) -> Option<(u64, u64)> {
    let first_after = samples.partition_point(|(t, _)| *t < t_ack);
    let rest = samples.get(first_after..)?;
    // The index only grows, so the samples below the bound come first.
    let seen_at = first_after + rest.partition_point(|(_, wal)| *wal < bound);
    let (t_seen, _) = samples.get(seen_at)?;
    let sent_before = seen_at
        .checked_sub(1)
        .and_then(|i| Some(samples.get(i)?.0.saturating_sub(*poll_us.get(i)?)))
        .unwrap_or(0);
    Some((t_seen - t_ack, sent_before.saturating_sub(t_ack)))
}

/// Entries per second the secondary applied between its first and last change of index.
fn apply_rate(samples: &[(u64, u64)]) -> f64 {
    let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
        return 0.0;
    };
    let start = samples
        .iter()
        .rev()
        .find(|(_, w)| *w == first.1)
        .unwrap_or(first);
    let end = samples.iter().find(|(_, w)| *w == last.1).unwrap_or(last);
    let secs = end.0.saturating_sub(start.0) as f64 / 1e6;
    if secs <= 0.0 {
        return 0.0;
    }
    last.1.saturating_sub(first.1) as f64 / secs
}

async fn writer(
    plan: &LagPlan,
    target: &Target,
    shared: &Shared,
    value: &str,
    t0: Instant,
    interval: Duration,
) {
    let mut conn = Conn::new(&plan.primary);
    let end = t0 + plan.duration;
    loop {
        let n = shared.next.fetch_add(1, Ordering::SeqCst);
        let due = t0 + interval.mul_f64(n as f64);
        // The run ends at its duration even when the writes fall behind their schedule: a
        // rate beyond what the pair takes (bench/run's capacity under the samplers) is then
        // writes back to back on every connection for that long.
        if due >= end || Instant::now() >= end {
            return;
        }
        tokio::time::sleep_until(due.into()).await;
        let key = Target::key(&plan.prefix, n);
        let req = target.write(&key, target.write_body(&key, value));
        shared.started.fetch_add(1, Ordering::SeqCst);
        match conn.send(&req).await {
            Ok(r) if r.ok() => {
                let t_ack = t0.elapsed().as_micros() as u64;
                let bound = match r.wal_index {
                    Some(index) => Bound::Header(index),
                    None => Bound::Started(shared.started.load(Ordering::SeqCst)),
                };
                // Only a write with its own index is a probe: the sampler must know what to
                // wait for.
                let probe_index = match bound {
                    Bound::Header(index) if plan.probe_every > 0 && n % plan.probe_every == 0 => {
                        Some(index)
                    }
                    _ => None,
                };
                let probe = probe_index.is_some();
                if let Some(index) = probe_index {
                    shared.probe_wal.fetch_max(index, Ordering::SeqCst);
                    let until = t_ack + PROBE_TIGHT.as_micros() as u64;
                    shared.probe_until_us.fetch_max(until, Ordering::SeqCst);
                    if let Some(sampler) = shared.sampler.get() {
                        sampler.unpark();
                    }
                }
                if let Ok(mut acks) = shared.acks.lock() {
                    acks.push(Ack {
                        t_ack,
                        bound,
                        probe,
                    });
                }
            }
            _ => {
                shared.errors.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
}

type Samples = (Vec<(u64, u64)>, Vec<u64>);

/// Runs [`sample`] on its own thread and runtime, so its pacing can use a precise blocking
/// sleep: tokio's timer rounds a 1 ms sleep up to about 2 ms, and polling back to back instead
/// took a share of the two cores from the servers being measured.
fn spawn_sampler(
    secondary: String,
    every: Duration,
    t0: Instant,
    shared: Arc<Shared>,
) -> Result<std::thread::JoinHandle<Result<Samples>>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let thread_shared = shared.clone();
    let handle = std::thread::Builder::new()
        .name("lag-sampler".into())
        .spawn(move || rt.block_on(sample(secondary, every, t0, thread_shared)))?;
    // Set once: the sampler of one run.
    let _ = shared.sampler.set(handle.thread().clone());
    Ok(handle)
}

/// Poll the secondary's applied WAL index every `every` (1 ms in the report; back to back when a request
/// takes longer, or while an acknowledged probe is not yet applied, and at once when a probe's
/// writer wakes it); samples are (µs since t0 when received, index).
async fn sample(
    secondary: String,
    every: Duration,
    t0: Instant,
    shared: Arc<Shared>,
) -> Result<Samples> {
    let mut conn = Conn::new(&secondary);
    let mut samples = Vec::new();
    let mut poll_us = Vec::new();
    while !shared.stop.load(Ordering::SeqCst) {
        let sent = Instant::now();
        let wal = status_wal(&mut conn, "last_remote_wal")
            .await
            .context("sampling the secondary's status")?;
        poll_us.push(sent.elapsed().as_micros() as u64);
        samples.push((t0.elapsed().as_micros() as u64, wal));
        let now_us = t0.elapsed().as_micros() as u64;
        if wal < shared.probe_wal.load(Ordering::SeqCst)
            && now_us < shared.probe_until_us.load(Ordering::SeqCst)
        {
            continue;
        }
        // Blocking is fine: this runtime runs only the sampler (and its idle connection). A
        // probe's writer unparks it; an early return from the pause only takes a sample early.
        if let Some(rest) = every.checked_sub(sent.elapsed()) {
            std::thread::park_timeout(rest);
        }
    }
    Ok((samples, poll_us))
}

/// How often the primary's replay lag is sampled: as `pg_stat_replication.replay_lag` is.
const REPLAY_SAMPLE_EVERY: Duration = Duration::from_millis(5);

/// Samples the primary's own measure of its secondary's replay lag
/// (`secondaries[0].replay_lag_ms`, computed as PostgreSQL computes `replay_lag`) every
/// [`REPLAY_SAMPLE_EVERY`] while the load runs, on its own thread as [`spawn_sampler`] does;
/// returns the samples in µs (`null`, not measured yet, is no sample).
fn spawn_replay_sampler(
    primary: String,
    shared: Arc<Shared>,
) -> Result<std::thread::JoinHandle<Result<Vec<u64>>>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok(std::thread::Builder::new()
        .name("replay-lag-sampler".into())
        .spawn(move || {
            rt.block_on(async move {
                let mut conn = Conn::new(&primary);
                let mut samples = Vec::new();
                while !shared.load_done.load(Ordering::SeqCst) {
                    let sent = Instant::now();
                    let v = conn
                        .send(&Req::get(STATUS))
                        .await
                        .context("sampling the primary's status")?
                        .json()?;
                    let lag = v
                        .get("data")
                        .unwrap_or(&v)
                        .pointer("/secondaries/0/replay_lag_ms")
                        .and_then(Value::as_f64);
                    if let Some(ms) = lag {
                        samples.push((ms * 1000.0).round() as u64);
                    }
                    if let Some(rest) = REPLAY_SAMPLE_EVERY.checked_sub(sent.elapsed()) {
                        std::thread::sleep(rest);
                    }
                }
                Ok(samples)
            })
        })?)
}

/// Where the replay lag goes: the servers' own timings (`docs/monitoring.md`).
const STAGES: [&str; 3] = [
    "bunker_replication_send_delay",
    "bunker_replication_apply",
    "bunker_replication_replay_lag",
];

/// The secondary's storage timings, which split its `apply` (`docs/monitoring.md`): queued for
/// its writer, the inserts, the log record's write and sync, and the whole logged commit.
const SECONDARY_STORAGE: [&str; 4] = [
    "bunker_storage_queue_wait",
    "bunker_storage_commit_apply",
    "bunker_storage_log_append",
    "bunker_storage_commit_logged",
];

/// `(count, sum in ms)` of each of `names` a node reports (`sys/metrics`, open on the
/// benchmark's listeners); empty when it answers none (an older server).
async fn stage_sums(conn: &mut Conn, names: &[&str]) -> Vec<(String, f64, f64)> {
    let Ok(v) = async { conn.send(&Req::get("/v1/sys/metrics")).await?.json() }.await else {
        return Vec::new();
    };
    let samples = v
        .get("data")
        .unwrap_or(&v)
        .get("Samples")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    samples
        .iter()
        .filter_map(|s| {
            let name = s.get("Name")?.as_str()?;
            names.contains(&name).then(|| {
                let n = |k: &str| s.get(k).and_then(Value::as_f64).unwrap_or(0.0);
                (name.to_owned(), n("Count"), n("Sum"))
            })
        })
        .collect()
}

type NodeSums = Vec<(String, f64, f64)>;

/// The mean of each stage over the load (its sums after minus before), in ms, by name.
fn stage_means(before: &(NodeSums, NodeSums), after: &(NodeSums, NodeSums)) -> Value {
    let mut out = serde_json::Map::new();
    for (b, a) in [(&before.0, &after.0), (&before.1, &after.1)] {
        for (name, count, sum) in a {
            let (c0, s0) = b
                .iter()
                .find(|(n, _, _)| n == name)
                .map_or((0.0, 0.0), |(_, c, s)| (*c, *s));
            if count - c0 > 0.0 {
                let short = match name.strip_prefix("bunker_storage_") {
                    Some(rest) => format!("secondary_{rest}"),
                    None => name.trim_start_matches("bunker_replication_").to_owned(),
                };
                out.insert(
                    format!("{short}_mean_ms"),
                    json!(r3((sum - s0) / (count - c0))),
                );
                out.insert(format!("{short}_count"), json!(count - c0));
            }
        }
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::bounds;

    #[test]
    fn a_write_is_bounded_by_the_samples_around_it() {
        // (received at µs, applied index), each request 100 µs.
        let samples = [(1_000, 5), (1_200, 6), (1_400, 8), (1_600, 9)];
        let poll = [100; 4];
        // Acknowledged at 1,050 with index 8: seen at 1,400; the sample that missed it left
        // at 1,100, after the acknowledgement.
        assert_eq!(bounds(&samples, &poll, 1_050, 8), Some((350, 50)));
        // Index 6 acknowledged at 1,050: the first sample after already shows it; the one
        // before it left at 900, before the acknowledgement: no lower bound.
        assert_eq!(bounds(&samples, &poll, 1_050, 6), Some((150, 0)));
        // A sample received before the acknowledgement never counts, even showing the index.
        assert_eq!(bounds(&samples, &poll, 1_250, 6), Some((150, 0)));
        // Never shown applied, or acknowledged after the last sample.
        assert_eq!(bounds(&samples, &poll, 1_050, 10), None);
        assert_eq!(bounds(&samples, &poll, 1_700, 9), None);
    }
}
