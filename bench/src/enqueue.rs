//! `enqueue`: scheduled messages through the timer's enqueue pipeline, in process.
//!
//! Each run opens a fresh `Store` (the default profile's options: 1 GiB segments, async flush
//! every 200 ms) and starts a `TimerEngine` with the options the server derives from the default
//! profile (`chime::server::timer_options`: 1,209,600 slots of 1 s, queue capacity 65536). One
//! thread then schedules `count` messages through the use case the HTTP send path calls
//! (`service::Broker::append`, without waiting for the fsync): batches of `--batch`, counted by
//! the timer, appended to its system topic and committed. Deliver times are drawn from a fixed seed over
//! `[now + 1 min, now + 1 min + 1 h)`, so nothing falls due during the run.
//!
//! The clock runs from the first append until `timer.stats().enqueue_lag == 0` (every message
//! has a timer-log unit linked into its wheel slot); `msgs_per_s` is count / that time. The
//! time to append alone and the drain after the last append are reported beside it. The
//! pipeline runs while the appends go on, and on this machine both share two cores.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chime::clock::{Clock, SystemClock};
use chime::config::{Config, BUILTIN_PROFILES};
use chime::service::{Broker, BrokerOptions};
use chime::store::{NewMessage, Store};
use chime::timer::TimerEngine;
use serde_json::json;

use crate::report::{cpu_seconds, machine_busy_seconds, Figures, Report};
use crate::rng::{self, SEED};

const TOPIC: &str = "bench";
const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 3_600_000;

#[derive(Debug, Clone, clap::Args)]
pub struct EnqueueArgs {
    /// Messages per run.
    #[arg(long, default_value_t = 1_000_000)]
    pub count: u64,
    /// Messages per append.
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
    /// Body size in bytes.
    #[arg(long, default_value_t = 256)]
    pub bodies: usize,
    /// Runs; the median of each figure is reported.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Give up on a run whose pipeline has not placed everything after this many seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout_s: u64,
    /// Skip the second measurement of each run (the pipeline alone, on a preloaded system topic).
    #[arg(long)]
    pub no_preloaded: bool,
    /// Parent directory for the temporary data directories. Default: the system temp dir.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

pub fn run(args: &EnqueueArgs) -> Result<Report, String> {
    if args.count == 0 || args.batch == 0 || args.runs == 0 {
        return Err("--count, --batch and --runs must be at least 1".into());
    }
    let parent = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let mut report = Report::new(
        "enqueue",
        json!({
            "count": args.count, "batch": args.batch, "bodies": args.bodies, "runs": args.runs,
            "profile": "default", "seed": SEED, "deliver_window": "now + 1 min .. now + 61 min",
            "dir": parent.display().to_string(),
        }),
    );
    for i in 0..args.runs {
        crate::note!("enqueue: run {}/{}, {} messages", i + 1, args.runs, args.count);
        let mut f = one_run(args, &parent)?;
        if !args.no_preloaded {
            preloaded_run(args, &parent, &mut f)?;
        }
        report.runs.push(f);
    }
    let m = report.median();
    report.extra.insert("count".into(), json!(args.count));
    report.extra.insert("msgs_per_s".into(), json!(m.get("msgs_per_s").map(f64::round)));
    if !args.no_preloaded {
        report
            .extra
            .insert("pipeline_only_msgs_per_s".into(), json!(m.get("pipeline_only_msgs_per_s").map(f64::round)));
    }
    report.extra.insert("goal_msgs_per_s".into(), json!(500_000));
    Ok(report)
}

/// The default profile's config with its data directory under `dir`.
fn default_config(dir: &std::path::Path) -> Result<Config, String> {
    let text = BUILTIN_PROFILES.iter().find(|(n, _)| *n == "default").map(|(_, t)| *t).ok_or("no default profile")?;
    let mut config = Config::from_profile_str(text).map_err(|e| format!("default profile: {e}"))?;
    config.data_dir = dir.join("data");
    Ok(config)
}

/// Message `k` of a run: `template` with its deliver time.
fn message(template: &NewMessage, first: i64, k: u64) -> NewMessage {
    let mut m = template.clone();
    m.deliver_at_ms = Some(first + (rng::nth(SEED, k) % HOUR_MS as u64) as i64);
    m
}

fn template(bodies: usize, now: i64) -> NewMessage {
    NewMessage { body: vec![b'x'; bodies], born_ms: now, ..Default::default() }
}

fn one_run(args: &EnqueueArgs, parent: &std::path::Path) -> Result<Figures, String> {
    let dir = tempfile::Builder::new().prefix("chime-bench-enqueue-").tempdir_in(parent).map_err(|e| e.to_string())?;
    let config = default_config(dir.path())?;
    let store = Store::open(chime::server::store_options(&config), Arc::new(SystemClock))
        .map_err(|e| format!("open store: {e}"))?;
    store.topics().create(TOPIC, config.default_queues).map_err(|e| format!("create topic: {e}"))?;
    let timer = TimerEngine::start(store.clone(), chime::server::timer_options(&config))
        .map_err(|e| format!("start timer: {e}"))?;

    let now = SystemClock.now_ms();
    let first = now + MINUTE_MS;
    let template = template(args.bodies, now);
    let broker = Broker::new(store.clone(), timer.clone(), BrokerOptions::new(true, config.default_queues));
    let mut batch: Vec<NewMessage> = Vec::with_capacity(args.batch);
    let cpu0 = cpu_seconds(None);
    let machine0 = machine_busy_seconds();
    let mut max_lag = 0u64;
    let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let bar = crate::progress::track("enqueue", args.count, done.clone());
    let start = Instant::now();
    let mut i = 0u64;
    let mut batches = 0u64;
    while i < args.count {
        let n = (args.count - i).min(args.batch as u64);
        batch.extend((i..i + n).map(|k| message(&template, first, k)));
        broker.append(TOPIC, std::mem::take(&mut batch)).map_err(|e| format!("append: {e}"))?;
        i += n;
        done.store(i, std::sync::atomic::Ordering::Relaxed);
        batches += 1;
        if batches.is_multiple_of(100) {
            max_lag = max_lag.max(timer.stats().enqueue_lag);
        }
    }
    let appended = start.elapsed();
    let deadline = Instant::now() + Duration::from_secs(args.timeout_s);
    let stats = loop {
        let s = timer.stats();
        if s.enqueue_lag == 0 {
            break s;
        }
        max_lag = max_lag.max(s.enqueue_lag);
        if Instant::now() > deadline {
            return Err(format!("enqueue_lag still {} after {} s", s.enqueue_lag, args.timeout_s));
        }
        std::thread::sleep(Duration::from_micros(500));
    };
    let placed = start.elapsed();
    drop(bar);
    let cpu = cpu_seconds(None).zip(cpu0).map(|(b, a)| b - a);
    let machine = machine_busy_seconds().zip(machine0).map(|(b, a)| b - a);
    if stats.pending_total as u64 != args.count {
        return Err(format!("pending_total {} after placing {} messages", stats.pending_total, args.count));
    }
    let n = args.count as f64;
    let mut f = Figures::default();
    f.add("msgs_per_s", n / placed.as_secs_f64());
    f.add("placed_s", placed.as_secs_f64());
    f.add("append_only_msgs_per_s", n / appended.as_secs_f64());
    f.add("append_s", appended.as_secs_f64());
    f.add("drain_after_last_append_s", (placed - appended).as_secs_f64());
    f.add("max_enqueue_lag_seen", max_lag as f64);
    for (name, st) in &stats.stages {
        f.add(&format!("stage_{name}_processed"), st.processed as f64);
    }
    if let Some(c) = cpu {
        f.add("cpu_s", c);
        f.add("cores_busy", c / placed.as_secs_f64());
        f.add("cpu_us_per_msg", c * 1e6 / n);
        if let Some(m) = machine {
            f.add("other_cores_busy", ((m - c) / placed.as_secs_f64()).max(0.0));
        }
    }
    crate::note!(
        "enqueue: placed {} in {:.3} s ({:.0} msgs/s; appends alone {:.3} s)",
        args.count,
        placed.as_secs_f64(),
        n / placed.as_secs_f64(),
        appended.as_secs_f64()
    );
    timer.shutdown().map_err(|e| format!("timer shutdown: {e}"))?;
    store.shutdown().map_err(|e| format!("store shutdown: {e}"))?;
    drop(timer);
    drop(store);
    drop(dir);
    Ok(f)
}

/// The pipeline alone: the same messages appended to the system topic before the engine
/// starts (`timer::append_before_start`: start-up counts them), then the time from the end of
/// `TimerEngine::start` until `enqueue_lag` is 0. Adds `pipeline_only_*` figures.
fn preloaded_run(args: &EnqueueArgs, parent: &std::path::Path, f: &mut Figures) -> Result<(), String> {
    let dir = tempfile::Builder::new().prefix("chime-bench-enqueue-").tempdir_in(parent).map_err(|e| e.to_string())?;
    let config = default_config(dir.path())?;
    let store = Store::open(chime::server::store_options(&config), Arc::new(SystemClock))
        .map_err(|e| format!("open store: {e}"))?;
    store.topics().create(TOPIC, config.default_queues).map_err(|e| format!("create topic: {e}"))?;
    let now = SystemClock.now_ms();
    let first = now + MINUTE_MS;
    let template = template(args.bodies, now);
    let mut i = 0u64;
    let mut batch = Vec::with_capacity(args.batch);
    while i < args.count {
        batch.clear();
        let n = (args.count - i).min(args.batch as u64);
        batch.extend((i..i + n).map(|k| message(&template, first, k)));
        chime::timer::append_before_start(&store, TOPIC, &mut batch).map_err(|e| format!("append: {e}"))?;
        i += n;
    }
    let t = Instant::now();
    let timer = TimerEngine::start(store.clone(), chime::server::timer_options(&config))
        .map_err(|e| format!("start timer: {e}"))?;
    let start_s = t.elapsed().as_secs_f64();
    let cpu0 = cpu_seconds(None);
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.timeout_s);
    let stats = loop {
        let s = timer.stats();
        if s.enqueue_lag == 0 {
            break s;
        }
        if Instant::now() > deadline {
            return Err(format!("preloaded: enqueue_lag still {} after {} s", s.enqueue_lag, args.timeout_s));
        }
        std::thread::sleep(Duration::from_micros(500));
    };
    let placed = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds(None).zip(cpu0).map(|(b, a)| b - a);
    if stats.pending_total as u64 != args.count {
        return Err(format!("preloaded: pending_total {} for {} messages", stats.pending_total, args.count));
    }
    f.add("pipeline_only_msgs_per_s", args.count as f64 / placed);
    f.add("pipeline_only_s", placed);
    f.add("pipeline_only_engine_start_s", start_s);
    if let Some(c) = cpu {
        f.add("pipeline_only_cores_busy", c / placed);
        f.add("pipeline_only_cpu_us_per_msg", c * 1e6 / args.count as f64);
    }
    crate::note!(
        "enqueue: pipeline alone placed {} in {placed:.3} s ({:.0} msgs/s; engine start {start_s:.3} s)",
        args.count,
        args.count as f64 / placed
    );
    timer.shutdown().map_err(|e| format!("timer shutdown: {e}"))?;
    store.shutdown().map_err(|e| format!("store shutdown: {e}"))?;
    drop(timer);
    drop(store);
    drop(dir);
    Ok(())
}
