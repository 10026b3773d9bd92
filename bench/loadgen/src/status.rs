//! `dr/status` latency (issue "Performance, round two": p99 < 5 ms at 1M keys, no scan):
//! sequential GETs on one connection, and the status's own account of full scans before and
//! after, so a report shows the answers cost no scan.

use std::time::Instant;

use anyhow::{bail, Result};
use serde_json::{json, Value};

use crate::http::{Conn, Req};
use crate::stats::summary;

const PATH: &str = "/v1/sys/replication/dr/status";

pub async fn run(addr: &str, count: u64) -> Result<Value> {
    let mut conn = Conn::new(addr);
    let first = fetch(&mut conn).await?;
    let mut latencies = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
    let mut last = first.clone();
    for _ in 0..count {
        let t0 = Instant::now();
        last = fetch(&mut conn).await?;
        latencies.push(u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX));
    }
    let mut report = summary(&mut latencies);
    let field = |body: &Value, name: &str| body.get(name).cloned().unwrap_or(Value::Null);
    if let Value::Object(map) = &mut report {
        map.insert("requests".into(), json!(count));
        map.insert("merkle_index".into(), field(&last, "merkle_index"));
        map.insert("merkle_scans_before".into(), field(&first, "merkle_scans"));
        map.insert("merkle_scans_after".into(), field(&last, "merkle_scans"));
        map.insert("last_wal".into(), field(&last, "last_wal"));
        map.insert("merkle_root_wal".into(), field(&last, "merkle_root_wal"));
    }
    Ok(report)
}

async fn fetch(conn: &mut Conn) -> Result<Value> {
    let r = conn.send(&Req::get(PATH)).await?;
    if !r.ok() {
        bail!(
            "dr/status answered {}: {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
    }
    let body = r.json()?;
    Ok(body.get("data").cloned().unwrap_or(body))
}
