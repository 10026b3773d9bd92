//! `sys/metrics`: Vault's telemetry endpoint, in the Prometheus text format
//! (`format=prometheus`) or Vault's JSON shape (`Gauges`, `Counters`, `Samples`).
//!
//! Metrics are recorded through the `metrics` facade wherever they happen (request handling,
//! the barrier, replication); the binary installs the Prometheus recorder and hands the core a
//! [`MetricsRenderer`]. Values that are state rather than events (seal state, storage
//! counters, replication positions, the token count) are read at scrape time
//! ([`Core::record_gauges`]), so an idle server reports current values.
//!
//! Names follow Vault's where Vault has the metric (`vault_core_handle_request`,
//! `vault_barrier_get`, `vault_core_unsealed`, `vault_replication_wal_last_wal`, ...), so
//! existing dashboards and alerts work; what Vault does not export is `bunker_*`
//! (docs/monitoring.md lists them all).

use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Map, Value};

use crate::core::Core;
use crate::logical::fields::get_str;
use crate::logical::{BackendRequest, Data, Operation, RawResponse, Request, Response, Result};
use bunker_sdk::expect_op;

use super::metrics_renderer::MetricsRenderer;

impl Core {
    /// Serve `sys/metrics` from `renderer` (installed by the binary).
    pub fn set_metrics_renderer(&self, renderer: Arc<dyn MetricsRenderer>) {
        let mut r = self
            .metrics_renderer
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *r = Some(renderer);
    }

    /// Whether a request to `path` counts as a login (`vault_core_handle_login_request`).
    pub(crate) fn is_login_path(path: &str) -> bool {
        let path = path.trim_start_matches('/');
        path.starts_with("auth/") && path.split('/').any(|seg| seg == "login")
    }

    /// Time one request: `vault_core_handle_request`, or `vault_core_handle_login_request`
    /// for a login, in milliseconds (Vault's units).
    pub(crate) fn record_request_time(login: bool, started: Instant) {
        let now = Instant::now();
        let ms = now.saturating_duration_since(started).as_secs_f64() * 1000.0;
        let name = if login {
            "vault_core_handle_login_request"
        } else {
            "vault_core_handle_request"
        };
        // Through the thread's reused handle (`bunker_storage::timed::record_ms`).
        bunker_storage::timed::record_ms(name, ms, now);
    }

    /// Set the gauges that describe state, read now.
    async fn record_gauges(&self) {
        let unsealed = !self.is_sealed();
        metrics::gauge!("vault_core_unsealed").set(f64::from(u8::from(unsealed)));
        // Without HA every unsealed node is its cluster's active node; with HA the lock holder
        // (a DR secondary's may be sealed).
        let active = match self.ha() {
            Some(ha) => ha.is_active(),
            None => unsealed,
        };
        metrics::gauge!("vault_core_active").set(f64::from(u8::from(active)));
        let storage = self.storage_metrics();
        metrics::counter!("bunker_storage_fsyncs_total").absolute(storage.fsyncs);
        metrics::counter!("bunker_storage_batches_total").absolute(storage.batches);
        metrics::counter!("bunker_storage_ops_total").absolute(storage.ops);
        metrics::counter!("bunker_requests_total").absolute(
            self.requests_total
                .load(std::sync::atomic::Ordering::Relaxed),
        );
        if unsealed {
            if let Some(count) = self.token_count().await {
                metrics::gauge!("vault_token_count").set(count as f64);
            }
        }
        self.replication_handler().record_metrics();
    }

    /// The number of tokens, recomputed at most once a `usage_gauge_period` (it lists every
    /// token's storage key).
    async fn token_count(&self) -> Option<u64> {
        let period = self.config.usage_gauge_period;
        {
            let cached = self
                .token_count_cache
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some((at, count)) = *cached {
                if at.elapsed() < period {
                    return Some(count);
                }
            }
        }
        let count = self.tokens.count().await.ok()?;
        let mut cached = self
            .token_count_cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *cached = Some((Instant::now(), count));
        Some(count)
    }

    async fn render_metrics(&self, op: Operation, data: &Data) -> Result<Response> {
        expect_op(op, &[Operation::Read])?;
        self.record_gauges().await;
        let renderer = self
            .metrics_renderer
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let text = renderer.map(|r| r.render()).unwrap_or_default();
        if get_str(data, "format")?.as_deref() == Some("prometheus") {
            return Ok(Response {
                raw: Some(Box::new(RawResponse {
                    status: 200,
                    body: json!(text),
                    content_type: Some("text/plain; version=0.0.4"),
                })),
                ..Default::default()
            });
        }
        Ok(Response::raw(200, prometheus_to_vault_json(&text)))
    }

    pub(crate) async fn sys_metrics(&self, req: &BackendRequest<'_>) -> Result<Response> {
        self.render_metrics(req.operation, req.data).await
    }

    /// `sys/metrics` on a listener with `telemetry { unauthenticated_metrics_access = true }`:
    /// no token needed, also while sealed; audited like every request when audit devices are
    /// loaded (the node is unsealed).
    pub async fn handle_metrics_unauthenticated(&self, req: Request) -> Result<Response> {
        let started = Instant::now();
        let result = self.render_metrics(req.operation, &req.data).await;
        if !self.is_sealed() {
            let logged = self.audit.log_request(&req, None).await?;
            self.audit
                .log_response(Some(logged), &req, None, &result)
                .await?;
        }
        Self::record_request_time(Self::is_login_path(&req.path), started);
        result
    }
}

/// Vault's JSON form of the metrics, from the Prometheus text: gauges and counters by name
/// and labels, summaries (timings) as samples with count, sum and quantiles.
pub fn prometheus_to_vault_json(text: &str) -> Value {
    let mut kinds: Map<String, Value> = Map::new();
    let mut gauges = Vec::new();
    let mut counters = Vec::new();
    let mut samples: std::collections::BTreeMap<String, Sample> = Default::default();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some((name, kind)) = rest.split_once(' ') {
                kinds.insert(name.to_owned(), json!(kind));
            }
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => (name, parse_labels(labels.trim_end_matches('}'))),
            None => (series, Map::new()),
        };
        let base = name
            .strip_suffix("_sum")
            .or_else(|| name.strip_suffix("_count"))
            .filter(|b| {
                kinds
                    .get(*b)
                    .is_some_and(|k| k == "summary" || k == "histogram")
            })
            .unwrap_or(name);
        match kinds.get(base).and_then(Value::as_str) {
            Some("counter") => {
                counters.push(json!({"Name": name, "Count": value, "Labels": labels}))
            }
            Some("summary") | Some("histogram") => {
                let entry = samples.entry(base.to_owned()).or_default();
                if name.ends_with("_count") {
                    entry.count = value;
                } else if name.ends_with("_sum") {
                    entry.sum = value;
                } else if let Some(q) = labels.get("quantile").and_then(Value::as_str) {
                    entry.quantiles.insert(q.to_owned(), json!(value));
                }
            }
            _ => gauges.push(json!({"Name": name, "Value": value, "Labels": labels})),
        }
    }
    let samples: Vec<Value> = samples
        .into_iter()
        .map(|(name, s)| {
            let mean = if s.count > 0.0 { s.sum / s.count } else { 0.0 };
            json!({"Name": name, "Count": s.count, "Sum": s.sum, "Mean": mean, "Quantiles": s.quantiles, "Labels": {}})
        })
        .collect();
    json!({
        "Timestamp": crate::time_util::now_rfc3339(),
        "Gauges": gauges,
        "Counters": counters,
        "Samples": samples,
    })
}

/// A summary's figures, gathered from its `_count`, `_sum` and quantile lines.
#[derive(Default)]
struct Sample {
    count: f64,
    sum: f64,
    quantiles: Map<String, Value>,
}

/// `a="x",b="y"` into a map (values unescaped for `\"` and `\\`).
fn parse_labels(s: &str) -> Map<String, Value> {
    let mut out = Map::new();
    let mut rest = s;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, escaped)) = chars.next() {
                        value.push(if escaped == 'n' { '\n' } else { escaped });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.insert(key.trim_start_matches(',').trim().to_owned(), json!(value));
        rest = after.get(end..).unwrap_or("");
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;

    #[test]
    fn logins_are_told_apart_by_their_path() {
        for path in [
            "auth/userpass/login/alice",
            "/auth/approle/login",
            "auth/ldap/login",
        ] {
            assert!(Core::is_login_path(path), "{path}");
        }
        for path in [
            "secret/data/login",
            "auth/token/lookup-self",
            "auth/userpass/users/login-page",
            "sys/metrics",
        ] {
            assert!(!Core::is_login_path(path), "{path}");
        }
    }

    #[test]
    fn prometheus_text_becomes_vaults_json() {
        let text = "# TYPE vault_core_unsealed gauge\nvault_core_unsealed 1\n\
            # TYPE bunker_storage_fsyncs_total counter\nbunker_storage_fsyncs_total 42\n\
            # TYPE vault_core_handle_request summary\n\
            vault_core_handle_request{quantile=\"0.5\"} 0.25\n\
            vault_core_handle_request{quantile=\"0.99\"} 2\n\
            vault_core_handle_request_sum 10\nvault_core_handle_request_count 20\n\
            # TYPE bunker_replication_lag_ms gauge\nbunker_replication_lag_ms{secondary=\"a\\\"b\"} 3\n";
        let v = prometheus_to_vault_json(text);
        assert_eq!(
            v["Gauges"][0],
            json!({"Name": "vault_core_unsealed", "Value": 1.0, "Labels": {}})
        );
        assert_eq!(v["Gauges"][1]["Labels"], json!({"secondary": "a\"b"}));
        assert_eq!(v["Counters"][0]["Count"], json!(42.0));
        let s = &v["Samples"][0];
        assert_eq!(s["Name"], "vault_core_handle_request");
        assert_eq!(s["Count"], json!(20.0));
        assert_eq!(s["Mean"], json!(0.5));
        assert_eq!(s["Quantiles"]["0.99"], json!(2.0));
    }
}
