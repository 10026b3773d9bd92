//! Promotion (figure 7): time from sending `secondary/promote` to the first KV write the new
//! primary acknowledges. Writes are retried every millisecond after the promote answer.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::{json, Value};

use crate::http::{Conn, Req};
use crate::stats::r3;
use crate::target::Target;

const GIVE_UP: Duration = Duration::from_secs(60);

pub async fn run(secondary: &str, key: &str, token: &str) -> Result<Value> {
    let mut conn = Conn::new(secondary);
    let t0 = Instant::now();
    let body = json!({ "key": key }).to_string();
    let r = conn
        .send(&Req::post("/v1/sys/replication/dr/secondary/promote", body))
        .await?;
    let promote_ms = t0.elapsed().as_secs_f64() * 1000.0;
    if !r.ok() {
        bail!(
            "promote answered {}: {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
    }
    let target = Target::Bunker {
        token: token.to_owned(),
    };
    let mut attempts = 0u64;
    loop {
        attempts += 1;
        let key = Target::key("promote-probe", attempts);
        let last = match conn
            .send(&target.write(&key, target.write_body(&key, "x")))
            .await
        {
            Ok(w) if w.ok() => break,
            Ok(w) => format!("{} {}", w.status, String::from_utf8_lossy(&w.body)),
            Err(e) => format!("{e:#}"),
        };
        if t0.elapsed() > GIVE_UP {
            bail!("no write accepted {GIVE_UP:?} after promote; last answer: {last}");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(json!({
        "promote_request_ms": r3(promote_ms),
        "first_write_ms": r3(t0.elapsed().as_secs_f64() * 1000.0),
        "write_attempts": attempts,
    }))
}
