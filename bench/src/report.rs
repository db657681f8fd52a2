//! Results: figures per run, their medians, a readable table, and one JSON line.
//!
//! Every scenario produces a [`Report`]: its name, the parameters it ran with, one [`Figures`]
//! per run, and optional extra sections (a baseline measured in the same invocation, notes).
//! With `--json` the last line of stdout is the whole report as one JSON object, so a later run
//! can be compared against it; otherwise a table with one column per run and the median.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{json, Map, Value};

/// Named figures of one run, in the order they were added (the table keeps that order).
#[derive(Debug, Clone, Default)]
pub struct Figures(pub Vec<(String, f64)>);

impl Figures {
    pub fn add(&mut self, name: &str, value: f64) {
        self.0.push((name.to_owned(), value));
    }

    /// Adds `{prefix}_p50_us` .. `{prefix}_max_us` and `{prefix}_count` from a histogram of
    /// microseconds.
    pub fn add_latency(&mut self, prefix: &str, h: &Histogram<u64>) {
        self.add(&format!("{prefix}_count"), h.len() as f64);
        if h.is_empty() {
            return;
        }
        for (label, q) in [("p50", 0.50), ("p90", 0.90), ("p99", 0.99), ("p99_9", 0.999)] {
            self.add(&format!("{prefix}_{label}_us"), h.value_at_quantile(q) as f64);
        }
        self.add(&format!("{prefix}_max_us"), h.max() as f64);
    }

    pub fn get(&self, name: &str) -> Option<f64> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
    }

    fn to_json(&self) -> Value {
        let mut m = Map::new();
        for (k, v) in &self.0 {
            m.insert(k.clone(), num(*v));
        }
        Value::Object(m)
    }
}

pub struct Report {
    pub scenario: String,
    pub params: Value,
    pub runs: Vec<Figures>,
    /// Extra sections (e.g. "baseline", "notes"), printed after the table.
    pub extra: Map<String, Value>,
    /// Preformatted text (e.g. a table of rows) printed last, in the readable output only; the
    /// same data belongs in `extra` for the JSON.
    pub text: Vec<String>,
}

impl Report {
    pub fn new(scenario: &str, params: Value) -> Self {
        Self { scenario: scenario.to_owned(), params, runs: Vec::new(), extra: Map::new(), text: Vec::new() }
    }

    /// Per figure, the median over the runs that have it (the upper median for an even count).
    pub fn median(&self) -> Figures {
        let mut out = Figures::default();
        let Some(first) = self.runs.first() else { return out };
        for (name, _) in &first.0 {
            let mut vals: Vec<f64> = self.runs.iter().filter_map(|r| r.get(name)).collect();
            vals.sort_by(|a, b| a.total_cmp(b));
            out.add(name, vals[vals.len() / 2]);
        }
        out
    }

    pub fn to_json(&self) -> Value {
        let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
        let mut v = json!({
            "scenario": self.scenario,
            "params": self.params,
            "nproc": nproc,
            "unix_time_s": std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            "runs": self.runs.iter().map(Figures::to_json).collect::<Vec<_>>(),
            "median": self.median().to_json(),
        });
        if let Value::Object(m) = &mut v {
            for (k, x) in &self.extra {
                m.insert(k.clone(), x.clone());
            }
        }
        v
    }

    pub fn print(&self, as_json: bool) {
        if as_json {
            println!("{}", self.to_json());
            return;
        }
        println!("scenario: {}", self.scenario);
        println!("params:   {}", self.params);
        let median = self.median();
        let width = median.0.iter().map(|(n, _)| n.len()).max().unwrap_or(8).max(8);
        let mut header = format!("{:<width$}", "figure");
        for i in 0..self.runs.len() {
            header.push_str(&format!(" {:>14}", format!("run {}", i + 1)));
        }
        header.push_str(&format!(" {:>14}", "median"));
        println!("{header}");
        println!("{}", "-".repeat(header.len()));
        for (name, m) in &median.0 {
            let mut line = format!("{name:<width$}");
            for r in &self.runs {
                line.push_str(&format!(" {:>14}", r.get(name).map_or("-".to_owned(), fmt_num)));
            }
            line.push_str(&format!(" {:>14}", fmt_num(*m)));
            println!("{line}");
        }
        for (k, x) in &self.extra {
            // Lists of rows are printed as text below, when the scenario has a table for them.
            if x.is_array() && !self.text.is_empty() {
                continue;
            }
            println!("{k}: {x}");
        }
        for t in &self.text {
            println!();
            print!("{t}");
        }
    }
}

/// Whole numbers print without decimals; others with up to 3 significant decimals.
fn fmt_num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else if v.abs() >= 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// JSON number, rounded to 3 decimals; whole numbers stay integers.
fn num(v: f64) -> Value {
    if v.fract() == 0.0 && v.abs() < 9e15 {
        json!(v as i64)
    } else {
        json!((v * 1000.0).round() / 1000.0)
    }
}

/// A latency histogram in microseconds, 1 µs .. 60 s, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

pub fn record_us(h: &mut Histogram<u64>, d: Duration) {
    let us = (d.as_micros() as u64).clamp(1, 60_000_000);
    h.record(us).expect("value within bounds");
}

/// CPU time (user + system) used so far by a process, from `/proc/{pid}/stat`.
pub fn cpu_seconds(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    let text = std::fs::read_to_string(path).ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

/// CPU time (all cores, busy states only) the whole machine has used since boot, from
/// `/proc/stat`: compared with our processes' own CPU time it shows load from other processes.
pub fn machine_busy_seconds() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<f64> = line.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal: everything but idle and iowait.
    let busy = v.first()? + v.get(1)? + v.get(2)? + v.get(5)? + v.get(6)? + v.get(7)?;
    Some(busy / clock_ticks())
}

fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_per_figure() {
        let mut r = Report::new("t", json!({}));
        for v in [3.0, 1.0, 2.0] {
            let mut f = Figures::default();
            f.add("x", v);
            f.add("y", v * 10.0);
            r.runs.push(f);
        }
        let m = r.median();
        assert_eq!(m.get("x"), Some(2.0));
        assert_eq!(m.get("y"), Some(20.0));
        let j = r.to_json();
        assert_eq!(j["median"]["x"], json!(2));
        assert_eq!(j["runs"].as_array().map(Vec::len), Some(3));
    }

    #[test]
    fn own_cpu_time_is_readable() {
        assert!(cpu_seconds(None).is_some());
        assert!(machine_busy_seconds().is_some());
    }
}
