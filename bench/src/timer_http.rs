//! `same-timestamp`, `burst`, `spread` and `steady`: scheduled messages falling due, sent and
//! consumed over HTTP, with the lateness of every message measured on both sides.
//!
//! Each run starts a fresh server (unless `--url`), creates topic "timer-bench" (8 queues) and
//! starts `--consumers` long-polling consumers of one group (`wait_ms` 1000, `max_messages`
//! 1000, `invisible_ms` 600000, each batch acked) before anything is sent. Then it sends
//! `count` messages from `--send-concurrency` tasks, every message with an explicit
//! `deliver_at_ms`:
//! - `same-timestamp`: all at one millisecond, `D = now + --lead-ms` (3 s);
//! - `burst`: spread over one second `[D, D + 1000)`, `D` a whole second at least `--lead-ms`
//!   ahead (default `count / 100k` s + 5 s, so the sends and the wheel placement finish first).
//!   Offsets are drawn from a fixed seed (`--order random`) or rise with the message index
//!   (`--order ascending`, sends in deliver order);
//! - `spread`: RocketMQ's `TimerProducer` (its timer benchmark): `--slots` S slots `--slot-ms`
//!   apart (1 s), `--per-slot` M messages in each, due at `D + 10 ms + slot × slot_ms` with `D`
//!   a whole second (as TimerProducer aligns to the precision and adds 10 ms); the S × M deliver
//!   times are shuffled with the fixed seed, so each batch mixes all slots. Lead as for `burst`;
//! - `steady`: `--rate` R messages per second for `--duration` seconds, message `i` due at
//!   `D + i / R`, each batch sent `--lead-ms` (3 s) before its first message is due, so the
//!   server takes sends and fires at the same rate throughout. Batches hold R / 10 messages
//!   (1..=1000), about ten requests a second.
//!
//! `spread` and `steady` add one row per second of due time (count, client lateness
//! p50/p99/max, server lateness p99/max) and the worst second's p99: lateness over time.
//!
//! The first three send in batches of 1000 as fast as the server answers, all before `D`.
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

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::dist::{self, Summary};
use crate::http::{self, now_ms, now_ms_f64, Consumer, Schedule, SendPlan};
use crate::http_send::{client_runtime, CpuMeter};
use crate::progress;
use crate::report::{Figures, Report};
use crate::rng::{self, SplitMix64, SEED};
use crate::target::{Mode, RunArgs, Target};

pub const TOPIC: &str = "timer-bench";
const QUEUES: u16 = 8;
const BATCH: usize = 1000;
const INVISIBLE_MS: u64 = 600_000;
/// `spread`: TimerProducer's offset of the first deliver time past the aligned second.
const SPREAD_OFFSET_MS: i64 = 10;

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

#[derive(Debug, Clone, clap::Args)]
pub struct SpreadArgs {
    /// Slots (due times) the messages are spread over.
    #[arg(long, default_value_t = 100)]
    pub slots: u32,
    /// Messages due in each slot.
    #[arg(long, default_value_t = 5000)]
    pub per_slot: u64,
    /// Time between two slots (ms).
    #[arg(long, default_value_t = 1000)]
    pub slot_ms: i64,
    /// Least time from the start of the sends to the first slot (ms). Default: count / 100k
    /// seconds + 5 s.
    #[arg(long)]
    pub lead_ms: Option<i64>,
    #[command(flatten)]
    pub common: DueArgs,
}

#[derive(Debug, Clone, clap::Args)]
pub struct SteadyArgs {
    /// Messages falling due per second.
    #[arg(long, default_value_t = 10_000)]
    pub rate: u64,
    /// Seconds of due times.
    #[arg(long, default_value_t = 30)]
    pub duration: u64,
    /// How long before its first message is due each batch is sent (ms).
    #[arg(long, default_value_t = 3000)]
    pub lead_ms: i64,
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
    /// Concurrent send requests.
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
    #[command(flatten)]
    pub run: RunArgs,
}

/// When the messages of a scenario are due, relative to the start of the window `D`.
#[derive(Debug, Clone)]
enum Shape {
    /// All at `D`.
    Same,
    /// Over `[D, D + spread_ms)`.
    Window { spread_ms: i64, order: Order },
    /// TimerProducer's: message `i` in slot `slot_of[i]`, due at `D + slot × slot_ms`.
    Slots { slots: u32, per_slot: u64, slot_ms: i64, slot_of: Arc<Vec<u32>> },
    /// `rate` a second for `duration_ms`: message `i` due at `D + i × 1000 / rate`.
    Steady { rate: u64, duration_ms: i64 },
}

/// What one scenario sends.
#[derive(Debug, Clone)]
struct Plan {
    count: u64,
    lead_ms: i64,
    /// Round `D` up to a whole second (so a 1 s spread is one slot of the default wheel).
    align: bool,
    /// Added to `D` after the alignment.
    offset_ms: i64,
    shape: Shape,
    /// Messages per send request.
    batch: usize,
}

impl Plan {
    /// Deliver time of message `i`, given the start of the due window.
    fn deliver_at(&self, d0: i64, i: u64) -> i64 {
        match &self.shape {
            Shape::Same => d0,
            Shape::Window { spread_ms, .. } if *spread_ms <= 0 => d0,
            Shape::Window { spread_ms, order: Order::Random } => d0 + (rng::nth(SEED, i) % *spread_ms as u64) as i64,
            Shape::Window { spread_ms, order: Order::Ascending } => {
                d0 + (i as u128 * *spread_ms as u128 / self.count as u128) as i64
            }
            Shape::Slots { slot_ms, slot_of, .. } => d0 + slot_of[i as usize] as i64 * slot_ms,
            Shape::Steady { rate, .. } => d0 + (i as u128 * 1000 / *rate as u128) as i64,
        }
    }

    /// Length of the due window: its last millisecond is `D + window_ms() - 1`.
    fn window_ms(&self) -> i64 {
        match &self.shape {
            Shape::Same => 1,
            Shape::Window { spread_ms, .. } => (*spread_ms).max(1),
            Shape::Slots { slots, slot_ms, .. } => (*slots as i64 - 1) * slot_ms + 1,
            Shape::Steady { .. } => self.deliver_at(0, self.count - 1) + 1,
        }
    }

    fn steady(&self) -> bool {
        matches!(self.shape, Shape::Steady { .. })
    }

    fn params(&self) -> Value {
        let mut p = json!({"count": self.count, "lead_ms": self.lead_ms, "send_batch": self.batch, "seed": SEED});
        match &self.shape {
            Shape::Same => {}
            Shape::Window { spread_ms, order } => {
                p["spread_ms"] = json!(spread_ms);
                p["order"] = json!(format!("{order:?}").to_lowercase());
            }
            Shape::Slots { slots, per_slot, slot_ms, .. } => {
                p["slots"] = json!(slots);
                p["per_slot"] = json!(per_slot);
                p["slot_ms"] = json!(slot_ms);
                p["first_slot_offset_ms"] = json!(self.offset_ms);
            }
            Shape::Steady { rate, duration_ms } => {
                p["rate"] = json!(rate);
                p["duration_s"] = json!(duration_ms / 1000);
            }
        }
        p
    }
}

/// The slot of each of `slots × per_slot` messages: every slot `per_slot` times, shuffled
/// (Fisher-Yates) with the fixed seed.
fn shuffled_slots(slots: u32, per_slot: u64) -> Vec<u32> {
    let mut v: Vec<u32> = (0..slots).flat_map(|s| std::iter::repeat_n(s, per_slot as usize)).collect();
    let mut rng = SplitMix64::new(SEED);
    for i in (1..v.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        v.swap(i, j);
    }
    v
}

fn burst_lead(count: u64) -> i64 {
    (count / 100) as i64 + 5000
}

pub fn run_same_timestamp(args: &SameTimestampArgs) -> Result<Report, String> {
    let plan =
        Plan { count: args.count, lead_ms: args.lead_ms, align: false, offset_ms: 0, shape: Shape::Same, batch: BATCH };
    run("same-timestamp", plan, &args.common)
}

pub fn run_burst(args: &BurstArgs) -> Result<Report, String> {
    let plan = Plan {
        count: args.count,
        lead_ms: args.lead_ms.unwrap_or(burst_lead(args.count)),
        align: true,
        offset_ms: 0,
        shape: Shape::Window { spread_ms: args.spread_ms, order: args.order },
        batch: BATCH,
    };
    run("burst", plan, &args.common)
}

pub fn run_spread(args: &SpreadArgs) -> Result<Report, String> {
    if args.slots == 0 || args.per_slot == 0 || args.slot_ms <= 0 {
        return Err("--slots, --per-slot and --slot-ms must be at least 1".into());
    }
    let count = args.slots as u64 * args.per_slot;
    let plan = Plan {
        count,
        lead_ms: args.lead_ms.unwrap_or(burst_lead(count)),
        align: true,
        offset_ms: SPREAD_OFFSET_MS,
        shape: Shape::Slots {
            slots: args.slots,
            per_slot: args.per_slot,
            slot_ms: args.slot_ms,
            slot_of: Arc::new(shuffled_slots(args.slots, args.per_slot)),
        },
        batch: BATCH,
    };
    run("spread", plan, &args.common)
}

pub fn run_steady(args: &SteadyArgs) -> Result<Report, String> {
    if args.rate == 0 || args.duration == 0 {
        return Err("--rate and --duration must be at least 1".into());
    }
    let plan = Plan {
        count: args.rate * args.duration,
        lead_ms: args.lead_ms,
        align: false,
        offset_ms: 0,
        shape: Shape::Steady { rate: args.rate, duration_ms: args.duration as i64 * 1000 },
        batch: (args.rate / 10).clamp(1, BATCH as u64) as usize,
    };
    run("steady", plan, &args.common)
}

fn run(scenario: &'static str, plan: Plan, args: &DueArgs) -> Result<Report, String> {
    if plan.count == 0 || args.send_concurrency == 0 || args.run.runs == 0 {
        return Err("--count, --send-concurrency and --runs must be at least 1".into());
    }
    let mode = args.run.target.mode()?;
    let rt = client_runtime(args.run.client_threads)?;
    let mut params = plan.params();
    for (k, v) in [
        ("consumers", json!(args.consumers)),
        ("max_messages", json!(1000)),
        ("wait_ms", json!(1000)),
        ("invisible_ms", json!(INVISIBLE_MS)),
        ("send_concurrency", json!(args.send_concurrency)),
        ("bodies", json!(args.bodies)),
        ("warm_topic", json!(args.warm_topic)),
    ] {
        params[k] = v;
    }
    let mut report = Report::new(scenario, args.run.params(params)?);
    let mut warnings = Vec::new();
    let mut by_second = Vec::new();
    crate::note!("{scenario}: {} messages a run", plan.count);
    report.runs = args.run.each(scenario, |target| {
        let result = one_run(scenario, &plan, args, &rt, target, mode);
        if let Some(log) = target.server_log() {
            warnings.extend(log.lines().filter(|l| l.contains("WARN") || l.contains("ERROR")).map(str::to_owned));
        }
        let (f, rows) = result?;
        by_second = rows;
        Ok(f)
    })?;
    let early_total: f64 = report.runs.iter().map(|f| f.get("early").unwrap_or(0.0)).sum();
    let client_early_total: f64 = report.runs.iter().map(|f| f.get("client_early").unwrap_or(0.0)).sum();
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
        "worst_second_lateness_ms_p99",
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
    if !by_second.is_empty() {
        report.text.push(second_table(&by_second));
        x.insert("lateness_ms_by_second".into(), json!(by_second.iter().map(Second::to_json).collect::<Vec<_>>()));
        x.insert("lateness_ms_by_second_note".into(), json!("rows of the last run, by second of due time"));
    }
    if !warnings.is_empty() {
        warnings.truncate(20);
        x.insert("server_warnings".into(), json!(warnings));
    }
    Ok(report)
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

/// `steady`: the messages due in one second of the window.
#[derive(Debug, Clone, PartialEq)]
struct Second {
    second: i64,
    count: usize,
    client: Summary,
    server: Summary,
}

impl Second {
    fn to_json(&self) -> Value {
        let r = |v: f64| (v * 1000.0).round() / 1000.0;
        json!({
            "second": self.second, "count": self.count,
            "p50": r(self.client.p50), "p99": r(self.client.p99), "max": r(self.client.max),
            "server_p99": self.server.p99, "server_max": self.server.max,
        })
    }
}

/// Rows per second of due time (from `D`).
fn by_second(seen: &[Seen], d0: i64) -> Vec<Second> {
    let mut groups: std::collections::BTreeMap<i64, (Vec<f64>, Vec<f64>)> = Default::default();
    for s in seen {
        let g = groups.entry((s.deliver_at - d0).div_euclid(1000)).or_default();
        g.0.push(s.received - s.deliver_at as f64);
        g.1.push((s.visible_at - s.deliver_at) as f64);
    }
    groups
        .into_iter()
        .map(|(second, (mut c, mut v))| Second {
            second,
            count: c.len(),
            client: Summary::of(&mut c),
            server: Summary::of(&mut v),
        })
        .collect()
}

fn second_table(rows: &[Second]) -> String {
    use std::fmt::Write as _;
    let mut s = String::from(
        "lateness by second of due time (ms; client = received - deliver_at, server = visible_at - deliver_at):\n",
    );
    let _ = writeln!(
        s,
        "{:>6} {:>8} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "second", "count", "p50", "p99", "max", "server_p99", "server_max"
    );
    for r in rows {
        let _ = writeln!(
            s,
            "{:>6} {:>8} {:>10.1} {:>10.1} {:>10.1} {:>10} {:>10}",
            r.second, r.count, r.client.p50, r.client.p99, r.client.max, r.server.p99, r.server.max
        );
    }
    s
}

/// Sends the warm-up messages: one normal message per queue.
async fn warm_topic(client: &reqwest::Client, base: &str) -> Result<(), String> {
    let url = format!("{base}/v1/topics/{TOPIC}/messages");
    for _ in 0..QUEUES {
        http::post(client, &url, "{\"body\":\"warm\"}", 201, "warm-up send").await?;
    }
    Ok(())
}

fn one_run(
    scenario: &'static str,
    plan: &Plan,
    args: &DueArgs,
    rt: &tokio::runtime::Runtime,
    target: &Target,
    mode: Mode,
) -> Result<(Figures, Vec<Second>), String> {
    let base = target.base().to_owned();
    let client = http::client(args.consumers + args.send_concurrency + 1)?;
    let group = format!("g{}", now_ms());
    rt.block_on(http::create_topic(&client, &base, TOPIC, QUEUES))?;
    if args.warm_topic {
        rt.block_on(warm_topic(&client, &base))?;
    }
    // Messages due before this are the warm-up's (normal messages: due at their store time).
    let count_from = now_ms() + 1;

    // Consumers first, so they are waiting when the messages become visible.
    let received = Arc::new(AtomicU64::new(0));
    let stop_at = Arc::new(AtomicI64::new(i64::MAX));
    let consumer = Consumer::new(&base, TOPIC, &group, 1000, Some(1000), INVISIBLE_MS);
    let mut consumers = Vec::new();
    for _ in 0..args.consumers {
        let (client, consumer, received, stop_at) =
            (client.clone(), consumer.clone(), received.clone(), stop_at.clone());
        consumers.push(rt.spawn(consume(client, consumer, plan.count, count_from, received, stop_at)));
    }
    // Let every consumer's first long poll reach the server.
    std::thread::sleep(Duration::from_millis(200));

    let cpu = CpuMeter::start(target);
    let send_start = now_ms();
    let mut d0 = send_start + plan.lead_ms;
    if plan.align {
        d0 = (d0 + 999) / 1000 * 1000;
    }
    d0 += plan.offset_ms;
    let d_last = d0 + plan.window_ms() - 1;
    stop_at.store(d_last + args.timeout_ms, Ordering::Relaxed);
    let p = plan.clone();
    let deliver: Schedule = Arc::new(move |i| p.deliver_at(d0, i));
    let mut send_plan =
        SendPlan::scheduled(plan.count, plan.batch, args.bodies, args.send_concurrency, deliver.clone());
    if plan.steady() {
        let (batch, lead) = (plan.batch as u64, plan.lead_ms);
        send_plan.pace = Some(Arc::new(move |k| deliver(k * batch) - lead));
    }
    let send = rt.block_on(http::send_all(&client, &base, TOPIC, send_plan));
    let send_end = now_ms();
    let send = match send {
        Ok(d) => d,
        Err(e) => {
            stop_at.store(0, Ordering::Relaxed);
            return Err(e);
        }
    };
    let send_s = send.elapsed.as_secs_f64();
    // A bar of the time left until the window opens (until the end of the run).
    let _due = progress::track_time("until due", (d0 - now_ms()).max(0) as u64);
    crate::note!(
        "{scenario}: sent {} in {send_s:.3} s ({:.0} msgs/s); {} ms {} the window (at {d0})",
        plan.count,
        plan.count as f64 / send_s,
        (d0 - send_end).abs(),
        if d0 >= send_end { "before" } else { "into" }
    );
    let mut f = Figures::default();
    f.add("send_per_s", plan.count as f64 / send_s);
    f.add("send_s", send_s);
    if plan.steady() {
        f.add("send_max_behind_ms", send.max_behind_ms);
    } else {
        f.add("send_done_before_due_ms", (d0 - send_end) as f64);
        // Where the server stands shortly before the messages fall due.
        let wait = d0 - 1500 - now_ms();
        if wait > 0 {
            std::thread::sleep(Duration::from_millis(wait as u64));
        }
        let before = rt.block_on(http::timer_stats(&client, &base))?;
        f.add("enqueue_lag_1500ms_before_due", before["enqueue_lag"].as_f64().unwrap_or(f64::NAN));
    }
    if args.consumers == 0 {
        let f = server_only(scenario, plan, args, rt, &client, &base, (d0, send_start), f, cpu, mode)?;
        return Ok((f, Vec::new()));
    }

    let mut seen = Vec::with_capacity(plan.count as usize);
    let mut first_err = None;
    {
        let _bar = progress::track("receive", plan.count, received.clone());
        for c in consumers {
            match rt.block_on(c).map_err(|e| e.to_string()).and_then(|r| r) {
                Ok(v) => seen.extend(v),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
    }
    let end_wall = now_ms_f64();
    if let Some(e) = first_err {
        return Err(e);
    }
    let stats = rt.block_on(http::timer_stats(&client, &base))?;

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
    if plan.window_ms() > 1 {
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
    if plan.window_ms() > 1 {
        // Worst server lateness per tenth of the due window: shows whether the early part of the
        // window waits behind the late part.
        let window = plan.window_ms();
        let mut worst = [f64::NAN; 10];
        for s in &seen {
            let b = (((s.deliver_at - d0) * 10) / window).clamp(0, 9) as usize;
            let l = (s.visible_at - s.deliver_at) as f64;
            if worst[b].is_nan() || l > worst[b] {
                worst[b] = l;
            }
        }
        for (b, w) in worst.iter().enumerate() {
            f.add(&format!("server_lateness_max_bucket{b}"), *w);
        }
    }
    let rows = match plan.shape {
        Shape::Steady { .. } | Shape::Slots { .. } => by_second(&seen, d0),
        _ => Vec::new(),
    };
    if !rows.is_empty() {
        let worst = |g: fn(&Second) -> f64| rows.iter().map(g).fold(f64::MIN, f64::max);
        f.add("worst_second_lateness_ms_p99", worst(|r| r.client.p99));
        f.add("worst_second_server_lateness_ms_p99", worst(|r| r.server.p99));
    }
    let lat = &stats["lateness_ms"];
    for k in ["count", "p50", "p99", "p999", "max"] {
        f.add(&format!("stats_lateness_ms_{k}"), lat[k].as_f64().unwrap_or(f64::NAN));
    }
    f.add("stats_fired", stats["fired"].as_f64().unwrap_or(f64::NAN));
    cpu.finish(&mut f, mode, plan.count, ((end_wall - send_start as f64) / 1000.0).max(1e-3));
    crate::note!(
        "{scenario}: all {} received; server lateness p99 {} max {} ms; client lateness p99 {:.1} max {:.1} ms; early {}",
        plan.count,
        f.get("server_lateness_ms_p99").unwrap_or(0.0),
        f.get("server_lateness_ms_max").unwrap_or(0.0),
        f.get("lateness_ms_p99").unwrap_or(0.0),
        f.get("lateness_ms_max").unwrap_or(0.0),
        early
    );
    Ok((f, rows))
}

/// The end of a run without consumers: polls `GET /v1/timer/stats` (every 5 ms) until
/// `fired` reaches the count, then reports the server's lateness histogram.
#[allow(clippy::too_many_arguments)]
fn server_only(
    scenario: &str,
    plan: &Plan,
    args: &DueArgs,
    rt: &tokio::runtime::Runtime,
    client: &reqwest::Client,
    base: &str,
    (d0, send_start): (i64, i64),
    mut f: Figures,
    cpu: CpuMeter,
    mode: Mode,
) -> Result<Figures, String> {
    let d_last = d0 + plan.window_ms() - 1;
    let fired = Arc::new(AtomicU64::new(0));
    let bar = progress::track("fired", plan.count, fired.clone());
    let stats = loop {
        let s = rt.block_on(http::timer_stats(client, base))?;
        let n = s["fired"].as_u64().unwrap_or(0);
        fired.store(n, Ordering::Relaxed);
        if n >= plan.count {
            break s;
        }
        if now_ms() > d_last + args.timeout_ms {
            return Err(format!("timed out: {} of {} fired", s["fired"], plan.count));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    drop(bar);
    let all_fired = now_ms_f64();
    f.add("all_fired_seen_ms", all_fired - d0 as f64);
    if plan.window_ms() > 1 {
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
    crate::note!(
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
    consumer: Consumer,
    count: u64,
    count_from: i64,
    received: Arc<AtomicU64>,
    stop_at: Arc<AtomicI64>,
) -> Result<Vec<Seen>, String> {
    let mut out = Vec::new();
    while received.load(Ordering::Relaxed) < count {
        if now_ms() > stop_at.load(Ordering::Relaxed) {
            return Err(format!("timed out: {} of {count} messages received", received.load(Ordering::Relaxed)));
        }
        let bytes = consumer.receive(&client).await?;
        let at = now_ms_f64();
        let got = http::parse_received(&bytes)?;
        if got.messages.is_empty() {
            continue;
        }
        let mut counted = 0u64;
        for m in got.messages.iter().filter(|m| m.deliver_at_ms >= count_from) {
            counted += 1;
            out.push(Seen { id: m.id()?, deliver_at: m.deliver_at_ms, visible_at: m.visible_at_ms, received: at });
        }
        received.fetch_add(counted, Ordering::Relaxed);
        consumer.ack(&client, &got).await?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(shape: Shape, count: u64) -> Plan {
        Plan { count, lead_ms: 0, align: true, offset_ms: 0, shape, batch: BATCH }
    }

    #[test]
    fn deliver_times_stay_in_the_window() {
        let d0 = 1_800_000_000_000;
        let p = plan(Shape::Window { spread_ms: 1000, order: Order::Random }, 1000);
        let v: Vec<i64> = (0..1000).map(|i| p.deliver_at(d0, i)).collect();
        assert!(v.iter().all(|&t| (d0..d0 + 1000).contains(&t)));
        assert!(v.iter().collect::<std::collections::HashSet<_>>().len() > 500, "spread out");
        let a = plan(Shape::Window { spread_ms: 1000, order: Order::Ascending }, 1000);
        assert_eq!(a.deliver_at(d0, 0), d0);
        assert_eq!(a.deliver_at(d0, 999), d0 + 999);
        let same = plan(Shape::Same, 1000);
        assert_eq!((same.deliver_at(d0, 7), same.window_ms()), (d0, 1));
    }

    #[test]
    fn spread_puts_per_slot_messages_in_every_slot_shuffled() {
        let v = shuffled_slots(10, 50);
        assert_eq!(v, shuffled_slots(10, 50), "fixed seed");
        let mut counts = [0; 10];
        for &s in &v {
            counts[s as usize] += 1;
        }
        assert_eq!(counts, [50; 10]);
        assert_ne!(v[..50], [0; 50], "shuffled");
        let p = plan(Shape::Slots { slots: 10, per_slot: 50, slot_ms: 1000, slot_of: Arc::new(v) }, 500);
        let d0 = 1_000_000;
        let times: Vec<i64> = (0..500).map(|i| p.deliver_at(d0, i)).collect();
        assert!(times.iter().all(|t| (t - d0) % 1000 == 0 && (d0..d0 + p.window_ms()).contains(t)));
        assert_eq!(p.window_ms(), 9001);
    }

    #[test]
    fn steady_is_rate_per_second() {
        let p = plan(Shape::Steady { rate: 4, duration_ms: 3000 }, 12);
        let v: Vec<i64> = (0..12).map(|i| p.deliver_at(0, i)).collect();
        assert_eq!(v, vec![0, 250, 500, 750, 1000, 1250, 1500, 1750, 2000, 2250, 2500, 2750]);
        assert_eq!(p.window_ms(), 2751);
        assert!(p.steady());
    }

    #[test]
    fn rows_by_second() {
        let s = |d: i64, v: i64, r: f64| Seen { id: 0, deliver_at: d, visible_at: v, received: r };
        let seen = [s(100, 101, 103.0), s(900, 900, 905.0), s(1500, 1510, 1520.0)];
        let rows = by_second(&seen, 100);
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].second, rows[0].count, rows[0].client.max, rows[0].server.max), (0, 2, 5.0, 1.0));
        assert_eq!((rows[1].second, rows[1].count, rows[1].server.p99), (1, 1, 10.0));
        assert!(second_table(&rows).lines().count() == 4);
    }
}
