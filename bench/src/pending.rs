//! `pending`: memory of a server holding many scheduled messages.
//!
//! Starts `target/release/chime` as a child (a server of its own is needed to read its memory),
//! sends `count` messages in batches of 1000 from `--concurrency` tasks, each due at a time drawn
//! from a fixed seed over `[now + 1 h, now + 1 h + --spread-days)` (10 days by default, inside
//! the default 14-day wheel, so nothing rolls and nothing fires during the run). Then it polls
//! `GET /v1/timer/stats` until `enqueue_lag` is 0 (every message placed in the wheel) and reads
//! `/proc/PID/status` of the server: `RssAnon` (heap and other private memory: the figure of
//! the goal), `RssFile` / `RssShmem` (mapped files: page cache the kernel can drop) and
//! `VmHWM`. Memory is sampled again after `--settle-s` seconds. Then the server is restarted
//! twice on its data, each time checking that `pending_total` and a day of congestion buckets
//! come back identical: cleanly (SIGTERM), and after SIGKILL with the page cache emptied (when
//! run as root), as after a crash or power cut.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::http;
use crate::http::{now_ms, timer_stats, Schedule, SendPlan};
use crate::http_send::client_runtime;
use crate::report::{Figures, Report};
use crate::rng::{self, SEED};
use crate::target::{Mode, Target, TargetArgs};

const TOPIC: &str = "pending-bench";
const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 86_400_000;

#[derive(Debug, Clone, clap::Args)]
pub struct PendingArgs {
    /// Messages to schedule.
    #[arg(long, default_value_t = 10_000_000)]
    pub count: u64,
    /// Days the deliver times are spread over (starting one hour from now).
    #[arg(long, default_value_t = 10)]
    pub spread_days: i64,
    /// Concurrent send requests (batches of 1000).
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Body size in bytes.
    #[arg(long, default_value_t = 256)]
    pub bodies: usize,
    /// Give up waiting for the wheel placement after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub placement_timeout_s: u64,
    /// Seconds to wait after placement before the second memory sample.
    #[arg(long, default_value_t = 5)]
    pub settle_s: u64,
    /// Worker threads of the load generator's runtime. Default: the number of cores.
    #[arg(long)]
    pub client_threads: Option<usize>,
    #[command(flatten)]
    pub target: TargetArgs,
}

/// `/proc/PID/status` memory fields, in bytes.
pub fn proc_memory(pid: u32) -> Result<Vec<(String, f64)>, String> {
    let text =
        std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    let mut out = Vec::new();
    for key in ["RssAnon", "RssFile", "RssShmem", "VmRSS", "VmHWM"] {
        let kb = text
            .lines()
            .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(':')))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .ok_or_else(|| format!("no {key} in /proc/{pid}/status"))?;
        out.push((key.to_owned(), kb * 1024.0));
    }
    Ok(out)
}

pub fn run(args: &PendingArgs) -> Result<Report, String> {
    if args.count == 0 || args.concurrency == 0 || args.spread_days <= 0 {
        return Err("--count, --concurrency and --spread-days must be at least 1".into());
    }
    let mode = args.target.mode()?;
    if mode != Mode::Spawn {
        return Err(
            "pending reads the server's /proc/PID/status: it needs a spawned server (build target/release/chime)"
                .into(),
        );
    }
    let rt = client_runtime(args.client_threads)?;
    let mut report = Report::new(
        "pending",
        json!({
            "count": args.count, "spread_days": args.spread_days, "first_due_in_ms": HOUR_MS, "seed": SEED,
            "batch": 1000, "concurrency": args.concurrency, "bodies": args.bodies,
            "profile": args.target.profile, "server": mode.name(),
        }),
    );
    crate::note!("pending: {} messages over {} days", args.count, args.spread_days);
    let (f, _) = Target::run(&args.target, |target| one_run(args, &rt, target))?;
    let mib = |k: &str| f.get(k).map(|v| (v / 1048576.0 * 10.0).round() / 10.0);
    report.extra.insert("count".into(), json!(args.count));
    report.extra.insert("rss_anon_mib".into(), json!(mib("placed_RssAnon_bytes")));
    report.extra.insert("rss_anon_mib_after_settle".into(), json!(mib("settled_RssAnon_bytes")));
    report.extra.insert("goal_rss_anon_mib".into(), json!(256));
    report.runs.push(f);
    Ok(report)
}

fn one_run(args: &PendingArgs, rt: &tokio::runtime::Runtime, target: &mut Target) -> Result<Figures, String> {
    let base = target.base().to_owned();
    let pid = target.server_pid().ok_or("no server pid")?;
    let client = http::client(args.concurrency + 1)?;
    rt.block_on(http::create_topic(&client, &base, TOPIC, 8))?;
    let mut f = Figures::default();
    for (k, v) in proc_memory(pid)? {
        f.add(&format!("idle_{k}_bytes"), v);
    }
    let first = now_ms() + HOUR_MS;
    let spread = (args.spread_days * DAY_MS) as u64;
    let deliver: Schedule = Arc::new(move |i| first + (rng::nth(SEED, i) % spread) as i64);
    let start = Instant::now();
    let plan = SendPlan::scheduled(args.count, 1000, args.bodies, args.concurrency, deliver);
    let sent = rt.block_on(http::send_all(&client, &base, TOPIC, plan))?;
    let sent_s = sent.elapsed.as_secs_f64();
    f.add("send_per_s", args.count as f64 / sent_s);
    f.add("send_s", sent_s);
    for (k, v) in proc_memory(pid)? {
        f.add(&format!("sent_{k}_bytes"), v);
    }
    crate::note!("pending: sent in {sent_s:.1} s; waiting for enqueue_lag 0");
    let deadline = Instant::now() + Duration::from_secs(args.placement_timeout_s);
    let mut last_report = Instant::now();
    let stats = loop {
        let s = rt.block_on(timer_stats(&client, &base))?;
        let lag = s["enqueue_lag"].as_u64().unwrap_or(u64::MAX);
        if lag == 0 {
            break s;
        }
        if Instant::now() > deadline {
            return Err(format!("enqueue_lag still {lag} after {} s", args.placement_timeout_s));
        }
        if last_report.elapsed() > Duration::from_secs(5) {
            crate::note!("pending: enqueue_lag {lag}");
            last_report = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let placed_s = start.elapsed().as_secs_f64();
    f.add("placed_s", placed_s);
    f.add("placed_per_s", args.count as f64 / placed_s);
    let pending = stats["pending_total"].as_f64().unwrap_or(f64::NAN);
    f.add("pending_total", pending);
    f.add("fired", stats["fired"].as_f64().unwrap_or(f64::NAN));
    if pending as u64 != args.count {
        return Err(format!("pending_total is {pending}, expected {}", args.count));
    }
    let mem = proc_memory(pid)?;
    for (k, v) in &mem {
        f.add(&format!("placed_{k}_bytes"), *v);
    }
    let anon = mem.iter().find(|(k, _)| k == "RssAnon").map_or(0.0, |(_, v)| *v);
    f.add("rss_anon_bytes_per_pending", anon / args.count as f64);
    crate::note!("pending: placed after {placed_s:.1} s; RssAnon {:.1} MiB", anon / 1048576.0);
    rt.block_on(time_queries(&client, &base, first, &mut f))?;
    std::thread::sleep(Duration::from_secs(args.settle_s));
    for (k, v) in proc_memory(pid)? {
        f.add(&format!("settled_{k}_bytes"), v);
    }
    if let Ok(data) = data_dir_bytes(target) {
        f.add("data_dir_bytes", data as f64);
    }
    // A clean restart on the same data: how long until ready (start-up recounts the pending
    // messages), and the counts must come back the same.
    let day = |rt: &tokio::runtime::Runtime| rt.block_on(congestion_day(&client, &base, first));
    let before = day(rt)?;
    let (stop, ready) = target.restart()?;
    f.add("restart_stop_s", stop.as_secs_f64());
    f.add("restart_ready_s", ready.as_secs_f64());
    let stats = rt.block_on(timer_stats(&client, &base))?;
    if stats["pending_total"].as_u64() != Some(args.count) {
        return Err(format!("after the restart pending_total is {}, expected {}", stats["pending_total"], args.count));
    }
    if day(rt)? != before {
        return Err("after the restart the 24 h congestion buckets differ from before".into());
    }
    let pid = target.server_pid().ok_or("no server pid")?;
    for (k, v) in proc_memory(pid)? {
        f.add(&format!("restarted_{k}_bytes"), v);
    }
    crate::note!(
        "pending: restart stopped in {:.1} s, ready after {:.1} s, counts unchanged",
        stop.as_secs_f64(),
        ready.as_secs_f64()
    );
    // The restart after a crash or power cut: SIGKILL (no final checkpoint), the page cache
    // dropped where this tool may (root), then ready again with the same counts.
    let (ready, cold) = target.restart_after_kill(true)?;
    f.add("killed_restart_ready_s", ready.as_secs_f64());
    f.add("killed_restart_cold_cache", if cold { 1.0 } else { 0.0 });
    let stats = rt.block_on(timer_stats(&client, &base))?;
    if stats["pending_total"].as_u64() != Some(args.count) {
        return Err(format!("after the kill pending_total is {}, expected {}", stats["pending_total"], args.count));
    }
    if day(rt)? != before {
        return Err("after the kill the 24 h congestion buckets differ from before".into());
    }
    crate::note!(
        "pending: after SIGKILL{} ready after {:.1} s, counts unchanged",
        if cold { " and an emptied page cache" } else { "" },
        ready.as_secs_f64()
    );
    Ok(f)
}

/// The 24 h of congestion buckets (60 s) from the first deliver time's next second.
async fn congestion_day(client: &reqwest::Client, base: &str, first: i64) -> Result<serde_json::Value, String> {
    let from = first.div_euclid(1000) * 1000 + 1000;
    let url = format!("{base}/v1/timer/congestion?from_ms={from}&to_ms={}&bucket_ms=60000", from + DAY_MS);
    let resp = client.get(&url).send().await.map_err(|e| format!("congestion: {e}"))?;
    let v: serde_json::Value = resp.json().await.map_err(|e| format!("congestion: {e}"))?;
    Ok(v["buckets"].clone())
}

/// Round trips (loopback, one at a time: an upper bound of the server's time) of the
/// observability reads with everything pending: a 24-hour congestion window in 60 s buckets
/// (API.md's goal: under 5 ms), `/v1/timer/stats` (1 ms) and a `/metrics` scrape (10 ms).
async fn time_queries(client: &reqwest::Client, base: &str, first: i64, f: &mut Figures) -> Result<(), String> {
    const ROUNDS: usize = 50;
    // On the 1 s slot grid, and 123 ms off it (every bucket edge then cuts a slot).
    let aligned = first.div_euclid(1000) * 1000 + 1000;
    let congestion = format!("{base}/v1/timer/congestion?from_ms={aligned}&to_ms={}&bucket_ms=60000", aligned + DAY_MS);
    let unaligned = format!(
        "{base}/v1/timer/congestion?from_ms={}&to_ms={}&bucket_ms=60000",
        aligned + 123,
        aligned + 123 + DAY_MS
    );
    for (name, url) in [
        ("congestion_24h_60s", congestion),
        ("congestion_24h_60s_unaligned", unaligned),
        ("stats", format!("{base}/v1/timer/stats")),
        ("metrics", format!("{base}/metrics")),
    ] {
        let mut h = crate::report::new_histogram();
        for _ in 0..ROUNDS {
            let t = Instant::now();
            let resp = client.get(&url).send().await.map_err(|e| format!("{name}: {e}"))?;
            if !resp.status().is_success() {
                return Err(format!("{name}: {}", resp.status()));
            }
            let body = resp.bytes().await.map_err(|e| format!("{name}: {e}"))?;
            crate::report::record_us(&mut h, t.elapsed());
            if name.starts_with("congestion") {
                let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| format!("{name}: {e}"))?;
                let n = v["buckets"].as_array().map_or(0, |b| b.len());
                if n != 1440 {
                    return Err(format!("{name}: {n} buckets, expected 1440"));
                }
            }
        }
        f.add_latency(&format!("{name}_rtt"), &h);
        crate::note!(
            "pending: {name}: round trip p50 {:.2} ms, max {:.2} ms",
            h.value_at_quantile(0.5) as f64 / 1e3,
            h.max() as f64 / 1e3
        );
    }
    Ok(())
}

/// Disk blocks allocated under the server's data directory, from `du -s -B1`.
fn data_dir_bytes(target: &Target) -> Result<u64, String> {
    let Some(dir) = target.data_dir() else { return Err("no data dir".into()) };
    let out = std::process::Command::new("du").arg("-s").arg("-B1").arg(dir).output().map_err(|e| e.to_string())?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| "du: no answer".into())
}
