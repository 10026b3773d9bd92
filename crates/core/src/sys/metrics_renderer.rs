//! What the core holds for `sys/metrics` (the endpoint is in `metrics.rs`): the renderer the
//! binary installs, and the default period of the usage gauges.

use std::time::Duration;

/// Renders every recorded metric in the Prometheus text exposition format.
pub trait MetricsRenderer: Send + Sync {
    fn render(&self) -> String;
}

/// Vault's default `usage_gauge_period`: how often the token count is recomputed.
pub const DEFAULT_USAGE_GAUGE_PERIOD: Duration = Duration::from_secs(10 * 60);
