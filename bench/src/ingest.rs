//! `ingest`: how fast the server accepts messages over HTTP, normal and scheduled, one per
//! request and in batches, on the default and the durable profile.
//!
//! Per run and profile, one fresh server (unless `--url`: then the one server, whatever its
//! profile). Four cases in this order, each into a topic of its own (8 queues):
//! - normal, single: `--single-count` messages, one per request, from `--single-concurrency`
//!   tasks (64);
//! - normal, batch: `--batch-count` messages, `--batch` (100) per request, from
//!   `--batch-concurrency` tasks (16);
//! - scheduled, single and scheduled, batch: the same, every message with a `deliver_at_ms`
//!   drawn from the fixed seed over `[now + 1 h, now + 2 h)`, so nothing fires during the run.
//!
//! Per case: messages/s (count / time from the first request to the last answer), request
//! latency p50 and p99, and the server's CPU µs per message. A normal case checks that its topic
//! grew by exactly the count. A scheduled case also waits until the timer has placed every
//! message in the wheel (`enqueue_lag` 0 in `GET /v1/timer/stats`) and reports
//! `placed_msgs_per_s` (count / time from the first request until then); it checks that
//! `pending_total` grew by the count. `ratio_scheduled_to_normal_*` compares the two kinds of
//! the same size on the same server, the cost of scheduling.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::http::{self, now_ms, Schedule, SendPlan};
use crate::http_send::{client_runtime, CpuMeter};
use crate::report::{cpu_seconds, Figures, Report};
use crate::rng::{self, SEED};
use crate::target::{Mode, ProfileRuns, Target};

const QUEUES: u16 = 8;
const HOUR_MS: i64 = 3_600_000;
const PLACEMENT_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, clap::Args)]
pub struct IngestArgs {
    /// Messages of each single-send case.
    #[arg(long, default_value_t = 50_000)]
    pub single_count: u64,
    /// Messages of each batch case.
    #[arg(long, default_value_t = 500_000)]
    pub batch_count: u64,
    /// Messages per request in the batch cases (2..=1000).
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Concurrent requests of the single-send cases.
    #[arg(long, default_value_t = 64)]
    pub single_concurrency: usize,
    /// Concurrent requests of the batch cases.
    #[arg(long, default_value_t = 16)]
    pub batch_concurrency: usize,
    /// Body size in bytes.
    #[arg(long, default_value_t = 256)]
    pub bodies: usize,
    #[command(flatten)]
    pub each: ProfileRuns,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Normal,
    Scheduled,
}

/// One case of a profile.
#[derive(Debug, Clone, Copy)]
struct Case {
    kind: Kind,
    batch: usize,
    count: u64,
    concurrency: usize,
}

impl Case {
    fn kind_name(&self) -> &'static str {
        match self.kind {
            Kind::Normal => "normal",
            Kind::Scheduled => "scheduled",
        }
    }

    fn size_name(&self) -> String {
        if self.batch == 1 {
            "single".into()
        } else {
            format!("batch{}", self.batch)
        }
    }

    /// `default_scheduled_batch100`.
    fn name(&self, profile: &str) -> String {
        format!("{profile}_{}_{}", self.kind_name(), self.size_name())
    }
}

fn cases(args: &IngestArgs) -> Vec<Case> {
    let mut v = Vec::new();
    for kind in [Kind::Normal, Kind::Scheduled] {
        v.push(Case { kind, batch: 1, count: args.single_count, concurrency: args.single_concurrency });
        v.push(Case { kind, batch: args.batch, count: args.batch_count, concurrency: args.batch_concurrency });
    }
    v
}

pub fn run(args: &IngestArgs) -> Result<Report, String> {
    if args.single_count == 0
        || args.batch_count == 0
        || !(2..=1000).contains(&args.batch)
        || args.single_concurrency == 0
        || args.batch_concurrency == 0
    {
        return Err("--single-count, --batch-count and the concurrencies must be at least 1, --batch 2..=1000".into());
    }
    let profiles = args.each.profiles()?;
    let rt = client_runtime(args.each.run.client_threads)?;
    let mut report = Report::new(
        "ingest",
        json!({
            "single_count": args.single_count, "batch_count": args.batch_count, "batch": args.batch,
            "single_concurrency": args.single_concurrency, "batch_concurrency": args.batch_concurrency,
            "bodies": args.bodies, "profiles": profiles, "runs": args.each.run.runs,
            "server": args.each.run.target.mode()?.name(), "url": args.each.run.target.url, "seed": SEED,
            "deliver_within_ms": [HOUR_MS, 2 * HOUR_MS],
        }),
    );
    report.runs = args.each.each("ingest", |profile, target, f| profile_run(args, profile, &rt, target, f))?;
    let m = report.median();
    report.text.push(table(args, &profiles, &m));
    Ok(report)
}

fn profile_run(
    args: &IngestArgs,
    profile: &str,
    rt: &tokio::runtime::Runtime,
    target: &Target,
    f: &mut Figures,
) -> Result<(), String> {
    let base = target.base().to_owned();
    let client = http::client(args.single_concurrency.max(args.batch_concurrency) + 1)?;
    let pid = target.server_pid();
    let meter = CpuMeter::start(target);
    let t0 = Instant::now();
    for case in cases(args) {
        let name = case.name(profile);
        let topic = format!("ingest-{}-{}", case.kind_name(), case.size_name());
        rt.block_on(http::create_topic(&client, &base, &topic, QUEUES))?;
        let mut plan = SendPlan::normal(case.count, case.batch, args.bodies, case.concurrency).label("ingest");
        let (before, pending_before) = rt.block_on(async {
            let n = http::topic_messages(&client, &base, &topic).await?;
            let p = http::timer_stats(&client, &base).await?["pending_total"].as_u64().unwrap_or(0);
            Ok::<_, String>((n, p))
        })?;
        if case.kind == Kind::Scheduled {
            let first = now_ms() + HOUR_MS;
            let deliver: Schedule = Arc::new(move |i| first + (rng::nth(SEED, i) % HOUR_MS as u64) as i64);
            plan.deliver_at = Some(deliver);
        }
        let cpu0 = pid.and_then(|p| cpu_seconds(Some(p)));
        let start = Instant::now();
        let out = rt.block_on(http::send_all(&client, &base, &topic, plan))?;
        let secs = out.elapsed.as_secs_f64();
        let n = case.count as f64;
        f.add(&format!("{name}_msgs_per_s"), n / secs);
        f.add(&format!("{name}_latency_p50_us"), out.latency.value_at_quantile(0.5) as f64);
        f.add(&format!("{name}_latency_p99_us"), out.latency.value_at_quantile(0.99) as f64);
        match case.kind {
            Kind::Normal => {
                let after = rt.block_on(http::topic_messages(&client, &base, &topic))?;
                if after - before != case.count {
                    return Err(format!(
                        "{name}: topic {topic} grew by {} messages, expected {}",
                        after - before,
                        case.count
                    ));
                }
            }
            Kind::Scheduled => {
                let stats = wait_placed(rt, &client, &base)?;
                let placed = start.elapsed().as_secs_f64();
                f.add(&format!("{name}_placed_msgs_per_s"), n / placed);
                let pending = stats["pending_total"].as_u64().unwrap_or(0);
                if pending - pending_before != case.count {
                    return Err(format!(
                        "{name}: pending_total grew by {}, expected {}",
                        pending - pending_before,
                        case.count
                    ));
                }
            }
        }
        if let Some(c) = pid.and_then(|p| cpu_seconds(Some(p))).zip(cpu0).map(|(b, a)| b - a) {
            f.add(&format!("{name}_server_cpu_us_per_msg"), c * 1e6 / n);
        }
        crate::note!("ingest: {name}: {:.0} msgs/s, p99 {} µs", n / secs, out.latency.value_at_quantile(0.99));
    }
    // What the rest of the machine used meanwhile (a shared machine makes every figure lower).
    let mut m = Figures::default();
    meter.finish(&mut m, target_mode(target), 1, t0.elapsed().as_secs_f64());
    if let Some(o) = m.get("other_cores_busy") {
        f.add(&format!("{profile}_other_cores_busy"), o);
    }
    // The cost of scheduling, on this server: scheduled msgs/s over normal msgs/s, per size.
    for size in ["single".to_owned(), format!("batch{}", args.batch)] {
        let g = |k: &str| f.get(&format!("{profile}_{k}_{size}_msgs_per_s"));
        if let (Some(s), Some(n)) = (g("scheduled"), g("normal")) {
            f.add(&format!("ratio_scheduled_to_normal_{profile}_{size}"), s / n);
        }
    }
    Ok(())
}

fn target_mode(t: &Target) -> Mode {
    match t {
        Target::Url(_) => Mode::Url,
        Target::Spawned { .. } => Mode::Spawn,
        Target::InProcess { .. } => Mode::InProcess,
    }
}

/// Polls the timer's stats until `enqueue_lag` is 0.
fn wait_placed(rt: &tokio::runtime::Runtime, client: &reqwest::Client, base: &str) -> Result<Value, String> {
    let deadline = Instant::now() + PLACEMENT_TIMEOUT;
    loop {
        let s = rt.block_on(http::timer_stats(client, base))?;
        let lag = s["enqueue_lag"].as_u64().unwrap_or(u64::MAX);
        if lag == 0 {
            return Ok(s);
        }
        if Instant::now() > deadline {
            return Err(format!("enqueue_lag still {lag} after {PLACEMENT_TIMEOUT:?}"));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The medians as one row per case.
fn table(args: &IngestArgs, profiles: &[String], m: &Figures) -> String {
    use std::fmt::Write as _;
    let mut s = String::from("ingest (medians):\n");
    let _ = writeln!(
        s,
        "{:<9} {:<10} {:<9} {:>12} {:>9} {:>9} {:>14} {:>12}",
        "profile", "kind", "size", "msgs/s", "p50 µs", "p99 µs", "placed msgs/s", "server µs/msg"
    );
    for p in profiles {
        for c in cases(args) {
            let name = c.name(p);
            let g = |k: &str| m.get(&format!("{name}_{k}"));
            let cell = |v: Option<f64>, d: usize| v.map_or("-".to_owned(), |v| format!("{v:.d$}"));
            let _ = writeln!(
                s,
                "{:<9} {:<10} {:<9} {:>12} {:>9} {:>9} {:>14} {:>12}",
                p,
                c.kind_name(),
                c.size_name(),
                cell(g("msgs_per_s"), 0),
                cell(g("latency_p50_us"), 0),
                cell(g("latency_p99_us"), 0),
                cell(g("placed_msgs_per_s"), 0),
                cell(g("server_cpu_us_per_msg"), 2),
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        a: IngestArgs,
    }

    #[test]
    fn four_cases_per_profile_with_distinct_names() {
        let a = T::parse_from(["t"]).a;
        assert_eq!(a.each.profiles, vec!["default".to_owned(), "durable".to_owned()]);
        let names: Vec<String> = cases(&a).iter().map(|c| c.name("durable")).collect();
        assert_eq!(
            names,
            vec![
                "durable_normal_single",
                "durable_normal_batch100",
                "durable_scheduled_single",
                "durable_scheduled_batch100"
            ]
        );
        let mut f = Figures::default();
        f.add("default_normal_single_msgs_per_s", 10.0);
        let t = table(&a, &["default".to_owned()], &f);
        assert!(t.contains("default   normal     single"), "{t}");
    }
}
