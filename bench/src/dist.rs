//! Exact percentiles of a list of values that may be negative (lateness in ms: a negative
//! value would be a message seen before its time, which the histograms of `report` cannot hold).

use serde_json::{json, Value};

use crate::report::Figures;

/// p50, p90, p99, p99.9 and max of a list (nearest rank), plus the minimum and the count.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Summary {
    pub count: usize,
    pub min: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

pub const FIELDS: [&str; 5] = ["p50", "p90", "p99", "p999", "max"];

impl Summary {
    /// Sorts `v` in place.
    pub fn of(v: &mut [f64]) -> Summary {
        if v.is_empty() {
            return Summary::default();
        }
        v.sort_by(|a, b| a.total_cmp(b));
        let at = |q: f64| {
            // Nearest rank: the smallest value with at least q of the values at or below it.
            let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
            v[rank - 1]
        };
        Summary {
            count: v.len(),
            min: v[0],
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            p999: at(0.999),
            max: v[v.len() - 1],
        }
    }

    pub fn get(&self, field: &str) -> f64 {
        match field {
            "p50" => self.p50,
            "p90" => self.p90,
            "p99" => self.p99,
            "p999" => self.p999,
            "max" => self.max,
            "min" => self.min,
            _ => f64::NAN,
        }
    }

    /// Adds `{prefix}_min`, `{prefix}_p50` .. `{prefix}_max`.
    pub fn add_to(&self, f: &mut Figures, prefix: &str) {
        f.add(&format!("{prefix}_min"), self.min);
        for k in FIELDS {
            f.add(&format!("{prefix}_{k}"), self.get(k));
        }
    }
}

/// `{p50, p90, p99, p999, max}` of the figures `{prefix}_p50` .. in `f` (e.g. the medians).
pub fn object(f: &Figures, prefix: &str) -> Value {
    let mut m = serde_json::Map::new();
    for k in FIELDS {
        if let Some(v) = f.get(&format!("{prefix}_{k}")) {
            m.insert(k.to_owned(), json!((v * 1000.0).round() / 1000.0));
        }
    }
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let mut v: Vec<f64> = (1..=1000).rev().map(f64::from).collect();
        let s = Summary::of(&mut v);
        assert_eq!((s.min, s.p50, s.p90, s.p99, s.p999, s.max), (1.0, 500.0, 900.0, 990.0, 999.0, 1000.0));
        let mut one = vec![-3.0];
        let s = Summary::of(&mut one);
        assert_eq!((s.p50, s.max, s.count), (-3.0, -3.0, 1));
    }
}
