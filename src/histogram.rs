//! Latency histograms: HdrHistogram (3 significant figures) recorded on the hot path, read as
//! cumulative buckets when metrics are scraped, so the hot path pays one record per event and
//! nothing is formatted until someone asks.

use hdrhistogram::Histogram;

/// A histogram read at fixed upper bounds, as Prometheus wants it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Cumulative {
    /// For each bound, the values at most that bound.
    pub counts: Vec<u64>,
    pub count: u64,
    pub sum: f64,
}

/// A histogram of values from 0 up, 3 significant figures.
pub fn new() -> Histogram<u64> {
    Histogram::new(3).expect("3 significant figures is valid")
}

/// Reads `h` at the upper bounds `bounds` (ascending, in the histogram's unit).
pub fn cumulative(h: &Histogram<u64>, bounds: &[u64]) -> Cumulative {
    Cumulative {
        counts: bounds.iter().map(|&b| h.count_between(0, b)).collect(),
        count: h.len(),
        sum: h.iter_recorded().map(|v| v.value_iterated_to() as f64 * v.count_at_value() as f64).sum(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_sum_is_close() {
        let mut h = new();
        for v in [1, 2, 2, 10, 100] {
            h.record(v).unwrap();
        }
        let c = cumulative(&h, &[1, 2, 50, 1000]);
        assert_eq!(c.counts, vec![1, 3, 4, 5]);
        assert_eq!(c.count, 5);
        assert!((c.sum - 115.0).abs() < 1.0, "{}", c.sum);
    }
}
