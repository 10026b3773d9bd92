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

/// p50/p99/max of `latencies_us` (sorted in place) as JSON fields, and the distribution
/// (`cdf_ms`) that bench/plots.py draws.
pub fn summary(latencies_us: &mut [u64]) -> Value {
    latencies_us.sort_unstable();
    json!({
        "p50_ms": r3(quantile_ms(latencies_us, 0.50)),
        "p99_ms": r3(quantile_ms(latencies_us, 0.99)),
        "max_ms": r3(quantile_ms(latencies_us, 1.0)),
        "cdf_ms": cdf(latencies_us),
    })
}

/// The distribution of sorted values as `[quantile, ms]` pairs: every percent, then the tail
/// (99.5, 99.9, 99.99 %, max). About a hundred points whatever the number of requests.
pub fn cdf(sorted_us: &[u64]) -> Value {
    if sorted_us.is_empty() {
        return json!([]);
    }
    let tail = [0.995, 0.999, 0.9999, 1.0];
    let points: Vec<Value> = (0..100)
        .map(|p| f64::from(p) / 100.0)
        .chain(tail)
        .map(|q| json!([q, r3(quantile_ms(sorted_us, q))]))
        .collect();
    Value::Array(points)
}

/// `(time, value)` points (sorted by time) cut into `slices` equal stretches of time, each
/// kept as its start and its largest value: a series the report can draw without carrying
/// every sample, and without hiding a spike between two kept points.
pub fn slice_max(points: &[(u64, u64)], slices: usize) -> Vec<(u64, u64)> {
    let (Some(first), Some(last)) = (points.first(), points.last()) else {
        return Vec::new();
    };
    let width = ((last.0 - first.0) / slices.max(1) as u64).max(1);
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (t, v) in points {
        let start = first.0 + (t - first.0) / width * width;
        match out.last_mut() {
            Some(slice) if slice.0 == start => slice.1 = slice.1.max(*v),
            _ => out.push((start, *v)),
        }
    }
    out
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

    #[test]
    fn the_cdf_has_every_percent_and_the_tail() {
        let v: Vec<u64> = (1..=1000).map(|i| i * 1000).collect();
        let cdf = cdf(&v);
        let points = cdf.as_array().unwrap();
        assert_eq!(points.len(), 104);
        assert_eq!(points[50], json!([0.5, 500.0]));
        assert_eq!(points[103], json!([1.0, 1000.0]));
        assert_eq!(super::cdf(&[]), json!([]));
    }

    #[test]
    fn slices_keep_their_largest_value() {
        let points: Vec<(u64, u64)> = (0..1000)
            .map(|t| (t, if t == 503 { 99 } else { 1 }))
            .collect();
        let sliced = slice_max(&points, 10);
        assert_eq!(
            sliced.len(),
            11,
            "999 / 10 = 99 wide, so a last short slice"
        );
        assert_eq!(
            sliced.iter().map(|s| s.1).max(),
            Some(99),
            "the spike survives"
        );
        assert_eq!(sliced[0], (0, 1));
        assert!(slice_max(&[], 10).is_empty());
    }
}
