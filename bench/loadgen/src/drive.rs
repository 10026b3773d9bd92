//! Closed-loop load: N connections, each sending its next request as soon as the previous one
//! is answered, until a deadline or until a fixed number of operations has been issued.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::{json, Value};

use crate::http::Conn;
use crate::stats::{r3, summary};
use crate::target::{value_of, Target};

#[derive(Clone, Copy, Debug)]
pub enum Stop {
    After(Duration),
    /// Issue exactly this many operations (indices 0..n), however long it takes.
    Count(u64),
}

#[derive(Clone, Debug)]
pub enum Op {
    /// Write key `prefix/k{i}` for a fresh index `i` each time: every key is unique.
    Write { value_bytes: usize },
    /// Read one of the keys `prefix/k0..k{keys}` (written beforehand), spread evenly.
    Read { keys: u64 },
}

pub struct Plan {
    pub addr: String,
    pub target: Target,
    pub op: Op,
    pub prefix: String,
    pub conns: usize,
    pub stop: Stop,
    /// First index to use (lets repeated runs keep keys unique).
    pub first_index: u64,
}

struct TaskResult {
    latencies_us: Vec<u64>,
    errors: u64,
    first_error: Option<String>,
}

/// Run the plan; returns the JSON report (ops, ops_per_sec, p50_ms, p99_ms, max_ms, errors).
pub async fn run(plan: Plan) -> Result<Value> {
    let plan = Arc::new(plan);
    let next = Arc::new(AtomicU64::new(0));
    let value = Arc::new(match plan.op {
        Op::Write { value_bytes } => value_of(value_bytes),
        Op::Read { .. } => String::new(),
    });
    let started = Instant::now();
    let deadline = match plan.stop {
        Stop::After(d) => Some(started + d),
        Stop::Count(_) => None,
    };
    let mut tasks = Vec::with_capacity(plan.conns);
    for _ in 0..plan.conns {
        let plan = plan.clone();
        let next = next.clone();
        let value = value.clone();
        tasks.push(tokio::spawn(async move {
            client_loop(&plan, &next, &value, deadline).await
        }));
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    for t in tasks {
        let r = t.await?;
        latencies.extend(r.latencies_us);
        errors += r.errors;
        if first_error.is_none() {
            first_error = r.first_error;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let ops = latencies.len() as u64;
    if ops == 0 {
        bail!(
            "no operation succeeded against {} ({} errors; first: {})",
            plan.addr,
            errors,
            first_error.unwrap_or_default()
        );
    }
    let mut report = json!({
        "ops": ops,
        "errors": errors,
        "conns": plan.conns,
        "elapsed_s": r3(elapsed),
        "ops_per_sec": r3(ops as f64 / elapsed),
    });
    if let (Some(obj), Value::Object(s)) = (report.as_object_mut(), summary(&mut latencies)) {
        obj.extend(s);
        if let Some(e) = first_error {
            obj.insert("first_error".into(), json!(e));
        }
    }
    Ok(report)
}

async fn client_loop(
    plan: &Plan,
    next: &AtomicU64,
    value: &str,
    deadline: Option<Instant>,
) -> TaskResult {
    let mut conn = Conn::new(&plan.addr);
    let mut out = TaskResult {
        latencies_us: Vec::new(),
        errors: 0,
        first_error: None,
    };
    loop {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let n = next.fetch_add(1, Ordering::Relaxed);
        if let Stop::Count(total) = plan.stop {
            if n >= total {
                break;
            }
        }
        let req = match plan.op {
            Op::Write { .. } => {
                let key = Target::key(&plan.prefix, plan.first_index + n);
                plan.target.write(&key, plan.target.write_body(&key, value))
            }
            Op::Read { keys } => {
                // A multiplicative walk over 0..keys touches keys in a scattered order.
                let i = n.wrapping_mul(2_654_435_761) % keys.max(1);
                plan.target
                    .read(&Target::key(&plan.prefix, plan.first_index + i))
            }
        };
        let t0 = Instant::now();
        let result = conn.send(&req).await;
        let us = t0.elapsed().as_micros() as u64;
        let failure = match result {
            Ok(r) if r.ok() && matches!(plan.op, Op::Write { .. }) => None,
            Ok(r) if r.ok() && plan.target.read_found(&r.body) => None,
            Ok(r) => Some(format!(
                "{} {}: {} {}",
                req.method,
                req.path,
                r.status,
                String::from_utf8_lossy(&r.body)
                    .chars()
                    .take(200)
                    .collect::<String>()
            )),
            Err(e) => Some(format!("{e:#}")),
        };
        match failure {
            None => out.latencies_us.push(us),
            Some(e) => {
                out.errors += 1;
                if out.first_error.is_none() {
                    out.first_error = Some(e);
                }
                if out.errors > 1000 && out.latencies_us.is_empty() {
                    break;
                }
            }
        }
    }
    out
}
