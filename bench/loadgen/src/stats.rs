//! Latency percentiles over every recorded request (no sampling, no histogram buckets).

use serde_json::{json, Value};

/// The `q`-quantile (0..=1) of sorted microsecond values, in milliseconds.
pub fn quantile_ms(sorted_us: &[u64], q: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let rank = ((sorted_us.len() as f64) * q).ceil() as usize;
    let i = rank.clamp(1, sorted_us.len()) - 1;
    sorted_us.get(i).copied().unwrap_or(0) as f64 / 1000.0
}

/// Round to 3 decimals so reports stay readable.
pub fn r3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// p50/p99/max of `latencies_us` (sorted in place) as JSON fields.
pub fn summary(latencies_us: &mut [u64]) -> Value {
    latencies_us.sort_unstable();
    json!({
        "p50_ms": r3(quantile_ms(latencies_us, 0.50)),
        "p99_ms": r3(quantile_ms(latencies_us, 0.99)),
        "max_ms": r3(quantile_ms(latencies_us, 1.0)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_pick_the_ranked_value() {
        let v: Vec<u64> = (1..=100).map(|i| i * 1000).collect();
        assert_eq!(quantile_ms(&v, 0.5), 50.0);
        assert_eq!(quantile_ms(&v, 0.99), 99.0);
        assert_eq!(quantile_ms(&v, 1.0), 100.0);
        assert_eq!(quantile_ms(&[], 0.5), 0.0);
    }
}
