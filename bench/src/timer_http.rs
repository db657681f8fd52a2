//! `same-timestamp` and `burst`: many scheduled messages falling due together, sent and
//! consumed over HTTP, with the lateness of every message measured on both sides.
//!
//! Each run starts a fresh server (unless `--url`), creates topic "timer-bench" (8 queues) and
//! starts `--consumers` long-polling consumers of one group (`wait_ms` 1000, `max_messages`
//! 1000, `invisible_ms` 600000, each batch acked) before anything is sent. Then it sends
//! `count` messages in batches of 1000 from `--send-concurrency` tasks, every message with an
//! explicit `deliver_at_ms`:
//! - `same-timestamp`: all at one millisecond, `D = now + --lead-ms` (3 s);
//! - `burst`: spread over one second `[D, D + 1000)`, `D` a whole second at least `--lead-ms`
//!   ahead (default `count / 100k` s + 5 s, so the sends and the wheel placement finish first).
//!   Offsets are drawn from a fixed seed (`--order random`) or rise with the message index
//!   (`--order ascending`, sends in deliver order).
//!
//! Per message: client lateness = the client's wall clock (µs) when the receive answer was
//! complete − `deliver_at_ms`; server lateness = `visible_at_ms − deliver_at_ms` from the answer.
//! `early` counts messages with `visible_at_ms < deliver_at_ms` (must be 0), `client_early`
//! those received before their time by the client's clock (must be 0; server and client share
//! the machine's clock). `drain_ms`: from `D` to the last message received. At the end,
//! `GET /v1/timer/stats` gives the server's own lateness histogram. A run fails if a message is
//! missing 60 s after the last deliver time (`--timeout-ms`).
//!
//! Two switches separate the timer from what surrounds it: `--consumers 0` receives nothing
//! (the run waits for `fired` to reach the count and reports the server's histogram only), and
//! `--warm-topic` sends one normal message to each queue first, so the first fires do not pay
//! for fresh consume-queue files (their pages are zeroed on first touch; see RESULTS.md).
//! In the burst, the worst server lateness per tenth of the due window shows whether messages
//! due early in the second wait behind later ones.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{json, Value};

use crate::dist::{self, Summary};
use crate::http;
use crate::http_send::{client_runtime, CpuMeter};
use crate::report::{Figures, Report};
use crate::rng::{self, SEED};
use crate::target::{Mode, Target, TargetArgs};

pub const TOPIC: &str = "timer-bench";
const QUEUES: u16 = 8;
const BATCH: u64 = 1000;
const INVISIBLE_MS: u64 = 600_000;

#[derive(Debug, Clone, clap::Args)]
pub struct SameTimestampArgs {
    /// Messages, all due at the same millisecond.
    #[arg(long, default_value_t = 10_000)]
    pub count: u64,
    /// How far ahead of the send the deliver time is (ms).
    #[arg(long, default_value_t = 3000)]
    pub lead_ms: i64,
    #[command(flatten)]
    pub common: DueArgs,
}

#[derive(Debug, Clone, clap::Args)]
pub struct BurstArgs {
    /// Messages, due within one second.
    #[arg(long, default_value_t = 1_000_000)]
    pub count: u64,
    /// Least time from the start of the sends to the due second (ms). Default: count / 100k
    /// seconds + 5 s.
    #[arg(long)]
    pub lead_ms: Option<i64>,
    /// Width of the due window (ms).
    #[arg(long, default_value_t = 1000)]
    pub spread_ms: i64,
    /// random: deliver offsets drawn from a fixed seed; ascending: rising with the message
    /// index, so the messages are sent in deliver order.
    #[arg(long, value_enum, default_value_t = Order::Random)]
    pub order: Order,
    #[command(flatten)]
    pub common: DueArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Order {
    Random,
    Ascending,
}

#[derive(Debug, Clone, clap::Args)]
pub struct DueArgs {
    /// Long-polling consumers of one group. With 0, nothing is received: the run waits until
    /// the server has fired every message and reports the server's own lateness histogram
    /// (`GET /v1/timer/stats`) only, which shows the timer without the consumers' load.
    #[arg(long, default_value_t = 4)]
    pub consumers: usize,
    /// Concurrent send requests (batches of 1000).
    #[arg(long, default_value_t = 4)]
    pub send_concurrency: usize,
    /// Body size in bytes.
    #[arg(long, default_value_t = 256)]
    pub bodies: usize,
    /// Before the run, send one normal message to each of the topic's 8 queues (received and
    /// acked, not counted), so the first fires do not meet fresh consume-queue files.
    #[arg(long)]
    pub warm_topic: bool,
    /// Fail if a message is still missing this long after the last deliver time (ms).
    #[arg(long, default_value_t = 60_000)]
    pub timeout_ms: i64,
    /// Runs, each against a fresh server; the median of each figure is reported.
    #[arg(long, default_value_t = 1)]
    pub runs: usize,
    /// Worker threads of the load generator's runtime. Default: the number of cores.
    #[arg(long)]
    pub client_threads: Option<usize>,
    #[command(flatten)]
    pub target: TargetArgs,
}

/// What one scenario sends.
#[derive(Debug, Clone, Copy)]
struct Plan {
    count: u64,
    lead_ms: i64,
    spread_ms: i64,
    /// Round `D` up to a whole second (so a 1 s spread is one slot of the default wheel).
    align: bool,
    order: Order,
}

impl Plan {
    /// Deliver time of message `i`, given the start of the due window.
    fn deliver_at(&self, d0: i64, i: u64) -> i64 {
        if self.spread_ms <= 0 {
            return d0;
        }
        let off = match self.order {
            Order::Random => (rng::nth(SEED, i) % self.spread_ms as u64) as i64,
            Order::Ascending => (i as u128 * self.spread_ms as u128 / self.count as u128) as i64,
        };
        d0 + off
    }
}

pub fn run_same_timestamp(args: &SameTimestampArgs) -> Result<Report, String> {
    let plan = Plan { count: args.count, lead_ms: args.lead_ms, spread_ms: 0, align: false, order: Order::Random };
    run("same-timestamp", plan, &args.common)
}

pub fn run_burst(args: &BurstArgs) -> Result<Report, String> {
    let lead_ms = args.lead_ms.unwrap_or((args.count / 100) as i64 + 5000);
    let plan = Plan { count: args.count, lead_ms, spread_ms: args.spread_ms, align: true, order: args.order };
    run("burst", plan, &args.common)
}

pub fn now_ms_f64() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_micros() as f64 / 1000.0)
}

pub fn now_ms() -> i64 {
    now_ms_f64() as i64
}

fn run(scenario: &'static str, plan: Plan, args: &DueArgs) -> Result<Report, String> {
    if plan.count == 0 || args.send_concurrency == 0 || args.runs == 0 {
        return Err("--count, --send-concurrency and --runs must be at least 1".into());
    }
    let mode = args.target.mode()?;
    let rt = client_runtime(args.client_threads)?;
    let mut report = Report::new(
        scenario,
        json!({
            "count": plan.count, "lead_ms": plan.lead_ms, "spread_ms": plan.spread_ms,
            "order": format!("{:?}", plan.order).to_lowercase(), "seed": SEED,
            "consumers": args.consumers, "max_messages": 1000, "wait_ms": 1000, "invisible_ms": INVISIBLE_MS,
            "send_batch": BATCH, "send_concurrency": args.send_concurrency, "bodies": args.bodies,
            "runs": args.runs, "profile": args.target.profile, "server": mode.name(), "url": args.target.url,
            "warm_topic": args.warm_topic,
        }),
    );
    let mut early_total = 0.0;
    let mut client_early_total = 0.0;
    let mut warnings = Vec::new();
    for i in 0..args.runs {
        eprintln!("{scenario}: run {}/{} ({}), {} messages", i + 1, args.runs, mode.name(), plan.count);
        let target = Target::start(&args.target)?;
        let result = one_run(scenario, plan, args, &rt, &target, mode);
        if let Some(log) = target.server_log() {
            warnings.extend(log.lines().filter(|l| l.contains("WARN") || l.contains("ERROR")).map(str::to_owned));
        }
        let stopped = target.stop();
        let f = result?;
        stopped?;
        early_total += f.get("early").unwrap_or(0.0);
        client_early_total += f.get("client_early").unwrap_or(0.0);
        report.runs.push(f);
    }
    let m = report.median();
    let x = &mut report.extra;
    x.insert("count".into(), json!(plan.count));
    x.insert("early".into(), json!(early_total as u64));
    x.insert("client_early".into(), json!(client_early_total as u64));
    for k in [
        "send_per_s",
        "drain_ms",
        "last_visible_ms",
        "last_visible_after_window_ms",
        "last_received_after_window_ms",
        "all_fired_seen_ms",
    ] {
        if let Some(v) = m.get(k) {
            x.insert(k.into(), json!(v.round()));
        }
    }
    x.insert("lateness_ms".into(), dist::object(&m, "lateness_ms"));
    x.insert("server_lateness_ms".into(), dist::object(&m, "server_lateness_ms"));
    let mut stats = serde_json::Map::new();
    for k in ["count", "p50", "p99", "p999", "max"] {
        if let Some(v) = m.get(&format!("stats_lateness_ms_{k}")) {
            stats.insert(k.into(), json!(v));
        }
    }
    x.insert("timer_stats_lateness_ms".into(), Value::Object(stats));
    if m.get("server_lateness_max_bucket0").is_some() {
        let buckets: Vec<Value> = (0..10).map(|b| json!(m.get(&format!("server_lateness_max_bucket{b}")))).collect();
        x.insert("server_lateness_max_by_tenth_of_window".into(), json!(buckets));
    }
    x.insert(
        "note".into(),
        json!("top-level figures are the medians over the runs; early and client_early are totals"),
    );
    if !warnings.is_empty() {
        warnings.truncate(20);
        x.insert("server_warnings".into(), json!(warnings));
    }
    Ok(report)
}

#[derive(Deserialize)]
struct Received<'a> {
    #[serde(borrow)]
    messages: Vec<Msg<'a>>,
}

#[derive(Deserialize)]
struct Msg<'a> {
    message_id: &'a str,
    deliver_at_ms: i64,
    visible_at_ms: i64,
    receipt_handle: &'a str,
}

/// One message as a consumer saw it.
#[derive(Debug, Clone, Copy)]
struct Seen {
    id: u128,
    deliver_at: i64,
    visible_at: i64,
    /// Client wall clock when the receive answer was complete, ms with µs precision.
    received: f64,
}

/// `GET /v1/timer/stats` as JSON.
pub async fn timer_stats(client: &reqwest::Client, base: &str) -> Result<Value, String> {
    let r = client.get(format!("{base}/v1/timer/stats")).send().await.map_err(|e| format!("timer stats: {e}"))?;
    let status = r.status();
    let bytes = r.bytes().await.map_err(|e| format!("timer stats: {e}"))?;
    if !status.is_success() {
        return Err(format!("timer stats: {status}: {}", String::from_utf8_lossy(&bytes)));
    }
    serde_json::from_slice(&bytes).map_err(|e| format!("timer stats: {e}"))
}

/// The body of one send request: messages `from..to` with their deliver times.
pub fn scheduled_body(from: u64, to: u64, body_len: usize, deliver_at: impl Fn(u64) -> i64) -> bytes::Bytes {
    let body = "x".repeat(body_len);
    let mut s = String::with_capacity((to - from) as usize * (body_len + 40) + 2);
    s.push('[');
    for i in from..to {
        if i > from {
            s.push(',');
        }
        s.push_str("{\"body\":\"");
        s.push_str(&body);
        s.push_str("\",\"deliver_at_ms\":");
        s.push_str(&deliver_at(i).to_string());
        s.push('}');
    }
    s.push(']');
    bytes::Bytes::from(s)
}

/// What [`send_scheduled`] sends: messages `0..count` in batches of 1000 from `concurrency`
/// tasks, `deliver_at(i)` giving each message's time; `progress` names the scenario in a
/// progress line every million messages.
pub struct ScheduledSend {
    pub count: u64,
    pub concurrency: usize,
    pub body_len: usize,
    pub deliver_at: Arc<dyn Fn(u64) -> i64 + Send + Sync>,
    pub progress: Option<&'static str>,
}

/// Sends the plan to `topic`; any answer other than 201 fails it. Returns the elapsed time.
pub async fn send_scheduled(
    client: &reqwest::Client,
    base: &str,
    topic: &str,
    plan: ScheduledSend,
) -> Result<Duration, String> {
    let ScheduledSend { count, concurrency, body_len, deliver_at, progress } = plan;
    let requests = count.div_ceil(BATCH);
    let url: Arc<str> = format!("{base}/v1/topics/{topic}/messages").into();
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, url, next, deliver_at) = (client.clone(), url.clone(), next.clone(), deliver_at.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= requests {
                    return Ok::<_, String>(());
                }
                if let Some(name) = progress {
                    if k > 0 && k.is_multiple_of(1000) {
                        eprintln!(
                            "{name}: {} of {count} sent, {:.0} msgs/s",
                            k * BATCH,
                            (k * BATCH) as f64 / start.elapsed().as_secs_f64()
                        );
                    }
                }
                let (from, to) = (k * BATCH, ((k + 1) * BATCH).min(count));
                let body = scheduled_body(from, to, body_len, |i| deliver_at(i));
                let r = client
                    .post(&*url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| format!("send: {e}"))?;
                let status = r.status();
                let answer = r.bytes().await.map_err(|e| format!("send: reading the answer: {e}"))?;
                if status.as_u16() != 201 {
                    return Err(format!("send: {status}: {}", String::from_utf8_lossy(&answer)));
                }
            }
        }));
    }
    let mut first_err = None;
    for t in tasks {
        if let Err(e) = t.await.map_err(|e| e.to_string()).and_then(|r| r) {
            first_err.get_or_insert(e);
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(start.elapsed()),
    }
}

fn one_run(
    scenario: &'static str,
    plan: Plan,
    args: &DueArgs,
    rt: &tokio::runtime::Runtime,
    target: &Target,
    mode: Mode,
) -> Result<Figures, String> {
    let base = target.base().to_owned();
    let client = http::client(args.consumers + args.send_concurrency + 1)?;
    let suffix = now_ms();
    let group = format!("g{suffix}");
    rt.block_on(http::create_topic(&client, &base, TOPIC, QUEUES))?;
    if args.warm_topic {
        rt.block_on(async {
            for _ in 0..QUEUES {
                let r = client
                    .post(format!("{base}/v1/topics/{TOPIC}/messages"))
                    .header("content-type", "application/json")
                    .body("{\"body\":\"warm\"}")
                    .send()
                    .await
                    .map_err(|e| format!("warm-up send: {e}"))?;
                if r.status().as_u16() != 201 {
                    return Err(format!("warm-up send: {}", r.status()));
                }
            }
            Ok::<_, String>(())
        })?;
    }
    // Messages due before this are the warm-up's (normal messages: due at their store time).
    let count_from = now_ms() + 1;

    // Consumers first, so they are waiting when the messages become visible.
    let received = Arc::new(AtomicU64::new(0));
    let stop_at = Arc::new(std::sync::atomic::AtomicI64::new(i64::MAX));
    let mut consumers = Vec::new();
    for _ in 0..args.consumers {
        let (client, base, group, received, stop_at) =
            (client.clone(), base.clone(), group.clone(), received.clone(), stop_at.clone());
        consumers.push(rt.spawn(consume(client, base, group, plan.count, count_from, received, stop_at)));
    }
    // Let every consumer's first long poll reach the server.
    std::thread::sleep(Duration::from_millis(200));

    let cpu = CpuMeter::start(target);
    let send_start = now_ms();
    let mut d0 = send_start + plan.lead_ms;
    if plan.align {
        d0 = (d0 + 999) / 1000 * 1000;
    }
    let d_last = d0 + plan.spread_ms.max(1) - 1;
    stop_at.store(d_last + args.timeout_ms, Ordering::Relaxed);
    let deliver: Arc<dyn Fn(u64) -> i64 + Send + Sync> = Arc::new(move |i| plan.deliver_at(d0, i));
    let progress = if plan.count >= 1_000_000 { Some(scenario) } else { None };
    let send = rt.block_on(send_scheduled(
        &client,
        &base,
        TOPIC,
        ScheduledSend {
            count: plan.count,
            concurrency: args.send_concurrency,
            body_len: args.bodies,
            deliver_at: deliver,
            progress,
        },
    ));
    let send_end = now_ms();
    let send = match send {
        Ok(d) => d,
        Err(e) => {
            stop_at.store(0, Ordering::Relaxed);
            return Err(e);
        }
    };
    eprintln!(
        "{scenario}: sent {} in {:.3} s ({:.0} msgs/s); due in {} ms (at {d0})",
        plan.count,
        send.as_secs_f64(),
        plan.count as f64 / send.as_secs_f64(),
        d0 - send_end
    );
    // Where the server stands shortly before the messages fall due.
    let probe_at = d0 - 1500;
    let wait = probe_at - now_ms();
    if wait > 0 {
        std::thread::sleep(Duration::from_millis(wait as u64));
    }
    let before = rt.block_on(timer_stats(&client, &base))?;
    if args.consumers == 0 {
        return server_only(
            scenario,
            plan,
            args,
            rt,
            &client,
            &base,
            (d0, send_start, send_end, send),
            &before,
            cpu,
            mode,
        );
    }

    let mut seen = Vec::with_capacity(plan.count as usize);
    let mut first_err = None;
    for c in consumers {
        match rt.block_on(c).map_err(|e| e.to_string()).and_then(|r| r) {
            Ok(v) => seen.extend(v),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    let end_wall = now_ms_f64();
    if let Some(e) = first_err {
        return Err(e);
    }
    let stats = rt.block_on(timer_stats(&client, &base))?;

    let total_seen = seen.len() as u64;
    let mut ids: Vec<u128> = seen.iter().map(|s| s.id).collect();
    ids.sort_unstable();
    ids.dedup();
    let unique = ids.len() as u64;
    drop(ids);
    if unique != plan.count {
        return Err(format!("received {unique} distinct messages, expected {}", plan.count));
    }
    let wrong_time = seen.iter().filter(|s| s.deliver_at < d0 || s.deliver_at > d_last).count();
    if wrong_time > 0 {
        return Err(format!("{wrong_time} messages came back with a deliver_at_ms outside [{d0}, {d_last}]"));
    }

    let mut f = Figures::default();
    f.add("send_per_s", plan.count as f64 / send.as_secs_f64());
    f.add("send_s", send.as_secs_f64());
    f.add("send_done_before_due_ms", (d0 - send_end) as f64);
    f.add("enqueue_lag_1500ms_before_due", before["enqueue_lag"].as_f64().unwrap_or(f64::NAN));
    let early = seen.iter().filter(|s| s.visible_at < s.deliver_at).count();
    let client_early = seen.iter().filter(|s| s.received < s.deliver_at as f64).count();
    f.add("early", early as f64);
    f.add("client_early", client_early as f64);
    f.add("duplicates", (total_seen - unique) as f64);
    let last_recv = seen.iter().map(|s| s.received).fold(f64::MIN, f64::max);
    let first_vis = seen.iter().map(|s| s.visible_at).min().unwrap_or(0);
    let last_vis = seen.iter().map(|s| s.visible_at).max().unwrap_or(0);
    f.add("drain_ms", last_recv - d0 as f64);
    f.add("first_visible_ms", (first_vis - d0) as f64);
    f.add("last_visible_ms", (last_vis - d0) as f64);
    if plan.spread_ms > 0 {
        f.add("last_visible_after_window_ms", (last_vis - (d_last + 1)) as f64);
        f.add("last_received_after_window_ms", last_recv - (d_last + 1) as f64);
    }
    f.add("visible_per_s", plan.count as f64 * 1000.0 / ((last_vis - first_vis).max(1)) as f64);
    let mut late: Vec<f64> = seen.iter().map(|s| s.received - s.deliver_at as f64).collect();
    Summary::of(&mut late).add_to(&mut f, "lateness_ms");
    drop(late);
    let mut slate: Vec<f64> = seen.iter().map(|s| (s.visible_at - s.deliver_at) as f64).collect();
    Summary::of(&mut slate).add_to(&mut f, "server_lateness_ms");
    drop(slate);
    if plan.spread_ms > 0 {
        // Worst server lateness per tenth of the due window: shows whether the early part of the
        // window waits behind the late part.
        let mut worst = [f64::NAN; 10];
        for s in &seen {
            let b = (((s.deliver_at - d0) * 10) / plan.spread_ms).clamp(0, 9) as usize;
            let l = (s.visible_at - s.deliver_at) as f64;
            if worst[b].is_nan() || l > worst[b] {
                worst[b] = l;
            }
        }
        for (b, w) in worst.iter().enumerate() {
            f.add(&format!("server_lateness_max_bucket{b}"), *w);
        }
    }
    let lat = &stats["lateness_ms"];
    for k in ["count", "p50", "p99", "p999", "max"] {
        f.add(&format!("stats_lateness_ms_{k}"), lat[k].as_f64().unwrap_or(f64::NAN));
    }
    f.add("stats_fired", stats["fired"].as_f64().unwrap_or(f64::NAN));
    cpu.finish(&mut f, mode, plan.count, ((end_wall - send_start as f64) / 1000.0).max(1e-3));
    eprintln!(
        "{scenario}: all {} received; server lateness p99 {} max {} ms; client lateness p99 {:.1} max {:.1} ms; early {}",
        plan.count,
        f.get("server_lateness_ms_p99").unwrap_or(0.0),
        f.get("server_lateness_ms_max").unwrap_or(0.0),
        f.get("lateness_ms_p99").unwrap_or(0.0),
        f.get("lateness_ms_max").unwrap_or(0.0),
        early
    );
    Ok(f)
}

/// The end of a run without consumers: polls `GET /v1/timer/stats` (every 5 ms) until
/// `fired` reaches the count, then reports the server's lateness histogram.
#[allow(clippy::too_many_arguments)]
fn server_only(
    scenario: &str,
    plan: Plan,
    args: &DueArgs,
    rt: &tokio::runtime::Runtime,
    client: &reqwest::Client,
    base: &str,
    (d0, send_start, send_end, send): (i64, i64, i64, Duration),
    before: &Value,
    cpu: CpuMeter,
    mode: Mode,
) -> Result<Figures, String> {
    let d_last = d0 + plan.spread_ms.max(1) - 1;
    let stats = loop {
        let s = rt.block_on(timer_stats(client, base))?;
        if s["fired"].as_u64().unwrap_or(0) >= plan.count {
            break s;
        }
        if now_ms() > d_last + args.timeout_ms {
            return Err(format!("timed out: {} of {} fired", s["fired"], plan.count));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let all_fired = now_ms_f64();
    let mut f = Figures::default();
    f.add("send_per_s", plan.count as f64 / send.as_secs_f64());
    f.add("send_s", send.as_secs_f64());
    f.add("send_done_before_due_ms", (d0 - send_end) as f64);
    f.add("enqueue_lag_1500ms_before_due", before["enqueue_lag"].as_f64().unwrap_or(f64::NAN));
    f.add("all_fired_seen_ms", all_fired - d0 as f64);
    if plan.spread_ms > 0 {
        f.add("all_fired_seen_after_window_ms", all_fired - (d_last + 1) as f64);
    }
    let lat = &stats["lateness_ms"];
    for k in ["p50", "p99", "p999", "max"] {
        let v = lat[k].as_f64().unwrap_or(f64::NAN);
        f.add(&format!("server_lateness_ms_{k}"), v);
    }
    for k in ["count", "p50", "p99", "p999", "max"] {
        f.add(&format!("stats_lateness_ms_{k}"), lat[k].as_f64().unwrap_or(f64::NAN));
    }
    f.add("stats_fired", stats["fired"].as_f64().unwrap_or(f64::NAN));
    cpu.finish(&mut f, mode, plan.count, ((all_fired - send_start as f64) / 1000.0).max(1e-3));
    eprintln!(
        "{scenario}: all {} fired (no consumers); server lateness p99 {} max {} ms; all fired {:.0} ms after the start of the window",
        plan.count,
        f.get("server_lateness_ms_p99").unwrap_or(0.0),
        f.get("server_lateness_ms_max").unwrap_or(0.0),
        all_fired - d0 as f64
    );
    Ok(f)
}

/// One long-polling consumer: receives (and acks) until `count` messages due at or after
/// `count_from` were received in all, or the wall clock passes `stop_at` (then fails).
async fn consume(
    client: reqwest::Client,
    base: String,
    group: String,
    count: u64,
    count_from: i64,
    received: Arc<AtomicU64>,
    stop_at: Arc<std::sync::atomic::AtomicI64>,
) -> Result<Vec<Seen>, String> {
    let recv_url = format!("{base}/v1/topics/{TOPIC}/groups/{group}/receive");
    let ack_url = format!("{base}/v1/topics/{TOPIC}/groups/{group}/ack");
    let recv_body =
        bytes::Bytes::from(format!("{{\"max_messages\":1000,\"wait_ms\":1000,\"invisible_ms\":{INVISIBLE_MS}}}"));
    let mut out = Vec::new();
    let mut ack_body = String::new();
    while received.load(Ordering::Relaxed) < count {
        if now_ms() > stop_at.load(Ordering::Relaxed) {
            return Err(format!("timed out: {} of {count} messages received", received.load(Ordering::Relaxed)));
        }
        let r = client
            .post(&recv_url)
            .header("content-type", "application/json")
            .body(recv_body.clone())
            .send()
            .await
            .map_err(|e| format!("receive: {e}"))?;
        let status = r.status();
        let bytes = r.bytes().await.map_err(|e| format!("receive: reading the answer: {e}"))?;
        let at = now_ms_f64();
        if status.as_u16() != 200 {
            return Err(format!("receive: {status}: {}", String::from_utf8_lossy(&bytes)));
        }
        let got: Received<'_> = serde_json::from_slice(&bytes).map_err(|e| format!("receive: bad answer: {e}"))?;
        if got.messages.is_empty() {
            continue;
        }
        let mut counted = 0u64;
        for m in got.messages.iter().filter(|m| m.deliver_at_ms >= count_from) {
            counted += 1;
            out.push(Seen {
                id: u128::from_str_radix(m.message_id, 16).map_err(|_| format!("bad id {}", m.message_id))?,
                deliver_at: m.deliver_at_ms,
                visible_at: m.visible_at_ms,
                received: at,
            });
        }
        received.fetch_add(counted, Ordering::Relaxed);
        ack_body.clear();
        ack_body.push_str("{\"receipt_handles\":[");
        for (i, m) in got.messages.iter().enumerate() {
            if i > 0 {
                ack_body.push(',');
            }
            ack_body.push('"');
            ack_body.push_str(m.receipt_handle);
            ack_body.push('"');
        }
        ack_body.push_str("]}");
        let r = client
            .post(&ack_url)
            .header("content-type", "application/json")
            .body(ack_body.clone())
            .send()
            .await
            .map_err(|e| format!("ack: {e}"))?;
        let status = r.status();
        let bytes = r.bytes().await.map_err(|e| format!("ack: reading the answer: {e}"))?;
        if status.as_u16() != 200 {
            return Err(format!("ack: {status}: {}", String::from_utf8_lossy(&bytes)));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deliver_times_stay_in_the_window() {
        let p = Plan { count: 1000, lead_ms: 0, spread_ms: 1000, align: true, order: Order::Random };
        let d0 = 1_800_000_000_000;
        let v: Vec<i64> = (0..1000).map(|i| p.deliver_at(d0, i)).collect();
        assert!(v.iter().all(|&t| (d0..d0 + 1000).contains(&t)));
        assert!(v.iter().collect::<std::collections::HashSet<_>>().len() > 500, "spread out");
        let a = Plan { order: Order::Ascending, ..p };
        assert_eq!(a.deliver_at(d0, 0), d0);
        assert_eq!(a.deliver_at(d0, 999), d0 + 999);
        let same = Plan { spread_ms: 0, ..p };
        assert_eq!(same.deliver_at(d0, 7), d0);
    }

    #[test]
    fn scheduled_body_is_a_json_array() {
        let b = scheduled_body(5, 8, 3, |i| 100 + i as i64);
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v.as_array().map(Vec::len), Some(3));
        assert_eq!(v[0]["deliver_at_ms"], 105);
        assert_eq!(v[2]["body"], "xxx");
    }
}
