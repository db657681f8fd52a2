//! `--compare PREVIOUS.json`: this run's figures against a previous run's, flagging every one
//! that got more than a threshold (10% by default) worse.
//!
//! What is compared: every number in the report's JSON except the per-run lists (`runs`), the
//! parameters, bookkeeping (`nproc`, `unix_time_s`, notes) and lists of rows (per-second or
//! per-tenth details; their summaries are compared). A top-level figure that repeats one of
//! `median` (`lateness_ms.p99` and `median.lateness_ms_p99`) is compared once.
//!
//! Which way is better is read from the figure's name ([`direction`]): rates (`*_per_s`,
//! `mb_s`) and `ratio_*` are better higher; times (`*_ms`, `*_us`, `*_s`), latency and
//! lateness, CPU per message, memory (`*bytes*`), lags, `early` and `duplicates` are better
//! lower. Figures of the baselines themselves (the raw disk, RocketMQ's method), counts and
//! shares of the machine are not judged: they describe the run, not chime. Small absolute
//! changes are not flagged ([`tolerance`]): below 1 ms for figures in ms, 10 µs in µs, 1 ms in
//! seconds, so a lateness going from 0 to 1 ms is not "infinitely worse". `early` and
//! `duplicates` have no tolerance: any increase is a regression.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::{json, Map, Value};

pub const DEFAULT_THRESHOLD_PCT: f64 = 10.0;

/// Top-level keys that are not figures.
const SKIP_TOP: [&str; 8] =
    ["scenario", "params", "runs", "nproc", "unix_time_s", "note", "server_warnings", "comparison"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    Higher,
    Lower,
}

/// Which way `path` (a flattened figure name, `a.b.c`) is better, or `None` if it is not judged.
pub fn direction(path: &str) -> Option<Better> {
    let p = path.to_ascii_lowercase();
    let last = p.rsplit('.').next().unwrap_or(&p);
    if last.starts_with("ratio_") {
        return Some(Better::Higher);
    }
    const NOT_JUDGED: [&str; 20] = [
        "baseline",
        "one_fdatasync",
        "rocketmq",
        "cores_busy",
        "time_share",
        "count",
        "processed",
        "dirty_pages",
        "page_runs",
        "msgs_per_receive",
        "empty_receives",
        "stats_fired",
        "client_cpu",
        "_min",
        "log_bytes",
        "goal",
        "slots",
        "requests",
        "lead_ms",
        "first_due",
    ];
    if NOT_JUDGED.iter().any(|k| p.contains(k)) {
        return None;
    }
    if last.ends_with("per_s") || last.contains("_per_s_") || last.contains("mb_s") || last.contains("done_before_due")
    {
        return Some(Better::Higher);
    }
    const LOWER: [&str; 9] = ["early", "duplicates", "lateness", "latency", "cpu", "bytes", "rss", "lag", "behind"];
    if LOWER.iter().any(|k| p.contains(k)) {
        return Some(Better::Lower);
    }
    if last.ends_with("_ms") || last.ends_with("_us") || last.ends_with("_s") {
        return Some(Better::Lower);
    }
    None
}

/// The largest absolute change of `path` that is never flagged.
pub fn tolerance(path: &str) -> f64 {
    let p = path.to_ascii_lowercase();
    if p.contains("early") || p.contains("duplicates") {
        0.0
    } else if p.contains("_ms") {
        1.0
    } else if p.contains("_us") {
        10.0
    } else if p.ends_with("_s") {
        0.001
    } else {
        0.0
    }
}

/// The figures of a report's JSON, flattened to `(path, value)`.
pub fn figures(report: &Value) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    let Some(top) = report.as_object() else { return out };
    let median = top.get("median").and_then(Value::as_object);
    for (k, v) in top {
        if SKIP_TOP.contains(&k.as_str()) {
            continue;
        }
        let mut flat = Vec::new();
        flatten(k, v, &mut flat);
        for (path, x) in flat {
            // `lateness_ms.p99` repeats `median.lateness_ms_p99`: keep the median's.
            let repeated = k != "median" && median.is_some_and(|m| m.contains_key(&path.replace('.', "_")));
            if !repeated {
                out.push((path, x));
            }
        }
    }
    out
}

fn flatten(prefix: &str, v: &Value, out: &mut Vec<(String, f64)>) {
    match v {
        Value::Number(n) => {
            if let Some(x) = n.as_f64() {
                out.push((prefix.to_owned(), x));
            }
        }
        Value::Object(m) => {
            for (k, x) in m {
                flatten(&format!("{prefix}.{k}"), x, out);
            }
        }
        // Lists are rows of detail (per second, per tenth of a window): not compared.
        _ => {}
    }
}

/// One figure found in both runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub path: String,
    pub before: f64,
    pub after: f64,
    pub better: Better,
    /// How much worse, in percent of `before` (negative: better). Infinite when `before` is 0
    /// and the figure got worse.
    pub worse_pct: f64,
    pub regressed: bool,
}

#[derive(Debug, Clone)]
pub struct Comparison {
    pub scenario: String,
    pub threshold_pct: f64,
    pub changes: Vec<Change>,
    /// Judged figures of the previous run that this run does not have.
    pub missing: Vec<String>,
    /// The parameters differ (the figures may not be comparable).
    pub params_differ: bool,
}

/// Compares `current` with `previous`; fails if they are not of the same scenario.
pub fn compare(previous: &Value, current: &Value, threshold_pct: f64) -> Result<Comparison, String> {
    let scenario = |v: &Value| v.get("scenario").and_then(Value::as_str).unwrap_or("").to_owned();
    let (sp, sc) = (scenario(previous), scenario(current));
    if sp != sc {
        return Err(format!("the previous result is of scenario {sp:?}, this one of {sc:?}"));
    }
    let before = figures(previous);
    let after = figures(current);
    let mut changes = Vec::new();
    let mut missing = Vec::new();
    for (path, b) in &before {
        let Some(better) = direction(path) else { continue };
        let Some(a) = after.iter().find(|(p, _)| p == path).map(|(_, a)| *a) else {
            missing.push(path.clone());
            continue;
        };
        let worse_by = match better {
            Better::Higher => b - a,
            Better::Lower => a - b,
        };
        let worse_pct = if *b != 0.0 {
            worse_by / b.abs() * 100.0
        } else if worse_by > 0.0 {
            f64::INFINITY
        } else if worse_by < 0.0 {
            f64::NEG_INFINITY
        } else {
            0.0
        };
        let regressed = worse_pct > threshold_pct && worse_by > tolerance(path);
        changes.push(Change { path: path.clone(), before: *b, after: a, better, worse_pct, regressed });
    }
    Ok(Comparison {
        scenario: sc,
        threshold_pct,
        changes,
        missing,
        params_differ: previous.get("params") != current.get("params"),
    })
}

impl Comparison {
    pub fn regressed(&self) -> bool {
        self.changes.iter().any(|c| c.regressed)
    }

    pub fn regressions(&self) -> impl Iterator<Item = &Change> {
        self.changes.iter().filter(|c| c.regressed)
    }

    pub fn to_json(&self, previous: &Path) -> Value {
        let regressions: Vec<Value> = self
            .regressions()
            .map(|c| {
                json!({
                    "figure": c.path, "before": c.before, "after": c.after,
                    "worse_pct": if c.worse_pct.is_finite() { json!((c.worse_pct * 10.0).round() / 10.0) } else { json!("inf") },
                })
            })
            .collect();
        let mut m = Map::new();
        m.insert("previous".into(), json!(previous.display().to_string()));
        m.insert("threshold_pct".into(), json!(self.threshold_pct));
        m.insert("compared".into(), json!(self.changes.len()));
        m.insert("regressed".into(), json!(self.regressed()));
        m.insert("regressions".into(), Value::Array(regressions));
        m.insert("params_differ".into(), json!(self.params_differ));
        if !self.missing.is_empty() {
            m.insert("missing".into(), json!(self.missing));
        }
        Value::Object(m)
    }

    /// A readable table: every judged figure, previous, now, change, and the flagged ones.
    pub fn table(&self, previous: &Path) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "compared with {} ({} figures, flagged when more than {}% worse):",
            previous.display(),
            self.changes.len(),
            self.threshold_pct
        );
        if self.params_differ {
            let _ = writeln!(s, "note: the parameters differ from the previous run's");
        }
        let width = self.changes.iter().map(|c| c.path.len()).max().unwrap_or(6).max(6);
        let _ = writeln!(s, "{:<width$} {:>14} {:>14} {:>9}  better", "figure", "previous", "now", "worse by");
        for c in &self.changes {
            let pct = if c.worse_pct.is_finite() { format!("{:+.1}%", c.worse_pct) } else { "inf".into() };
            let better = match c.better {
                Better::Higher => "higher",
                Better::Lower => "lower",
            };
            let flag = if c.regressed { "  <- WORSE" } else { "" };
            let _ =
                writeln!(s, "{:<width$} {:>14} {:>14} {pct:>9}  {better}{flag}", c.path, num(c.before), num(c.after));
        }
        for m in &self.missing {
            let _ = writeln!(s, "missing in this run: {m}");
        }
        let n = self.regressions().count();
        if n == 0 {
            let _ = writeln!(s, "no figure is more than {}% worse", self.threshold_pct);
        } else {
            let _ = writeln!(s, "{n} figure(s) more than {}% worse", self.threshold_pct);
        }
        s
    }
}

fn num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

/// The JSON object on the last non-empty line of `path` (a `--json` run's whole stdout will do).
pub fn load(path: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let line = text.lines().rev().find(|l| !l.trim().is_empty()).ok_or(format!("{}: empty", path.display()))?;
    let v: Value = serde_json::from_str(line).map_err(|e| format!("{}: last line is not JSON: {e}", path.display()))?;
    if v.get("scenario").is_none() {
        return Err(format!("{}: not a chime-bench result (no \"scenario\")", path.display()));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directions_by_name() {
        use Better::*;
        for (path, want) in [
            ("median.msgs_per_s", Some(Higher)),
            ("median.msgs_per_s_incl_final_fsync", Some(Higher)),
            ("median.mb_s", Some(Higher)),
            ("median.send_per_s", Some(Higher)),
            ("median.ratio_store_to_baseline", Some(Higher)),
            ("median_of_reps.1x.random.ratio_rocketmq_to_chime", Some(Higher)),
            ("median.send_done_before_due_ms", Some(Higher)),
            ("median.lateness_ms_p99", Some(Lower)),
            ("server_lateness_ms.max", Some(Lower)),
            ("median.request_latency_p99_us", Some(Lower)),
            ("median.drain_ms", Some(Lower)),
            ("median.elapsed_s", Some(Lower)),
            ("median.cpu_us_per_msg", Some(Lower)),
            ("rss_anon_mib", Some(Lower)),
            ("median.placed_RssAnon_bytes", Some(Lower)),
            ("median.early", Some(Lower)),
            ("median.duplicates", Some(Lower)),
            ("median.max_enqueue_lag_seen", Some(Lower)),
            ("median.consecutive_1x_chime_flush_ms", Some(Lower)),
            ("median.enqueue_lag_1500ms_before_due", Some(Lower)),
            ("median.all_fired_seen_ms", Some(Lower)),
            ("median.client_cpu_us_per_msg", None),
            // Baselines, counts and the machine's load are not judged.
            ("median.baseline_write_fdatasync_mb_s", None),
            ("median.consecutive_1x_rocketmq_ms", None),
            ("median.random_1x_one_fdatasync_ms", None),
            ("median.other_cores_busy", None),
            ("median.server_cores_busy", None),
            ("median.stats_lateness_ms_count", None),
            ("median.lateness_ms_min", None),
            ("median.receive_ack_time_share_ack", None),
            ("count", None),
            ("median.stage_enqueue_get_processed", None),
        ] {
            assert_eq!(direction(path), want, "{path}");
        }
    }

    fn report(scenario: &str, median: Value, extra: Value) -> Value {
        let mut v = json!({"scenario": scenario, "params": {"count": 10}, "nproc": 2, "unix_time_s": 1,
            "runs": [median.clone()], "median": median});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        v
    }

    #[test]
    fn flags_only_what_got_more_than_the_threshold_worse() {
        let prev = report(
            "t",
            json!({"msgs_per_s": 1000, "lateness_ms_p99": 20, "lateness_ms_p50": 0, "early": 0,
                   "request_latency_p99_us": 1000, "other_cores_busy": 0.1}),
            json!({"lateness_ms": {"p99": 20}, "rss_anon_mib": 30}),
        );
        let cur = report(
            "t",
            json!({"msgs_per_s": 880, "lateness_ms_p99": 21, "lateness_ms_p50": 1, "early": 0,
                   "request_latency_p99_us": 1200, "other_cores_busy": 0.9}),
            json!({"lateness_ms": {"p99": 21}, "rss_anon_mib": 32}),
        );
        let c = compare(&prev, &cur, 10.0).unwrap();
        let flagged: Vec<&str> = c.regressions().map(|c| c.path.as_str()).collect();
        // 12% fewer msgs/s and 20% more latency are flagged; +5% lateness, +6.7% memory, the
        // 0 -> 1 ms p50 (within the 1 ms tolerance) and the machine's load are not.
        assert_eq!(flagged, vec!["median.msgs_per_s", "median.request_latency_p99_us"]);
        assert!(c.regressed());
        // The top-level copy of a median figure is compared once.
        assert_eq!(c.changes.iter().filter(|c| c.path.contains("lateness_ms") && c.path.ends_with("p99")).count(), 1);
        assert!(c.changes.iter().any(|c| c.path == "rss_anon_mib"));
        assert!(!c.params_differ);
        let j = c.to_json(Path::new("prev.json"));
        assert_eq!(j["regressed"], json!(true));
        assert_eq!(j["regressions"].as_array().map(Vec::len), Some(2));
        assert!(c.table(Path::new("prev.json")).contains("<- WORSE"));
    }

    #[test]
    fn better_figures_and_equal_runs_pass() {
        let prev = report("t", json!({"msgs_per_s": 1000, "drain_ms": 50}), json!({}));
        let cur = report("t", json!({"msgs_per_s": 2000, "drain_ms": 10}), json!({}));
        let c = compare(&prev, &cur, 10.0).unwrap();
        assert!(!c.regressed());
        assert!(c.changes.iter().all(|c| c.worse_pct < 0.0));
        assert!(!compare(&prev, &prev, 10.0).unwrap().regressed());
        // Exactly at the threshold is not worse than it.
        let at = report("t", json!({"msgs_per_s": 900, "drain_ms": 55}), json!({}));
        assert!(!compare(&prev, &at, 10.0).unwrap().regressed());
        // A threshold of 0 flags any change for the worse beyond the tolerance.
        let slightly = report("t", json!({"msgs_per_s": 999, "drain_ms": 50}), json!({}));
        assert!(compare(&prev, &slightly, 0.0).unwrap().regressed());
    }

    #[test]
    fn early_messages_are_a_regression_from_zero() {
        let prev = report("t", json!({"early": 0, "duplicates": 0}), json!({}));
        let cur = report("t", json!({"early": 1, "duplicates": 0}), json!({}));
        let c = compare(&prev, &cur, 10.0).unwrap();
        let r: Vec<&Change> = c.regressions().collect();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].path, "median.early");
        assert!(r[0].worse_pct.is_infinite());
        assert_eq!(c.to_json(Path::new("p"))["regressions"][0]["worse_pct"], json!("inf"));
    }

    #[test]
    fn missing_figures_other_scenarios_and_changed_params() {
        let prev = report("t", json!({"msgs_per_s": 1000, "drain_ms": 5}), json!({}));
        let mut cur = report("t", json!({"msgs_per_s": 1000}), json!({}));
        cur["params"] = json!({"count": 20});
        let c = compare(&prev, &cur, 10.0).unwrap();
        assert_eq!(c.missing, vec!["median.drain_ms".to_owned()]);
        assert!(c.params_differ);
        assert!(!c.regressed());
        let other = report("u", json!({"msgs_per_s": 1000}), json!({}));
        assert!(compare(&prev, &other, 10.0).is_err());
    }

    #[test]
    fn lists_and_bookkeeping_are_not_compared() {
        let v = report(
            "t",
            json!({"msgs_per_s": 1}),
            json!({"lateness_ms_by_second": [{"p99": 3}], "note": "x", "wheel": {"1x": {"chime_flush_ms": 2}}}),
        );
        let names: Vec<String> = figures(&v).into_iter().map(|(p, _)| p).collect();
        assert_eq!(names, vec!["median.msgs_per_s".to_owned(), "wheel.1x.chime_flush_ms".to_owned()]);
    }

    #[test]
    fn loads_the_last_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.json");
        std::fs::write(&p, "progress line\n{\"scenario\":\"t\",\"median\":{}}\n\n").unwrap();
        assert_eq!(load(&p).unwrap()["scenario"], json!("t"));
        std::fs::write(&p, "{\"x\":1}\n").unwrap();
        assert!(load(&p).is_err());
        assert!(load(&dir.path().join("none.json")).is_err());
    }
}
