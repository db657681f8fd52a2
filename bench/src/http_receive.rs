//! `http-receive`: preload `count` messages (batches of 1000), then `concurrency` consumers of
//! one group receive (`max_messages` = `--max`) and ack until every message was received once.
//!
//! Phases, each on a fresh consumer group of the same preloaded topic:
//! 1. receive + ack (group "bench-ack"): the headline figure. Receive and ack latencies are kept
//!    apart, with the share of the consumers' time spent in each.
//! 2. receive only (group "bench-noack", unless `--skip-receive-only`): no acks, so every
//!    message stays in flight (invisible for 10 minutes) until the run ends.
//!
//! Every message id received is kept, so duplicates (a redelivery within the run) are counted.
//! A phase fails if it makes no progress for 10 s (a message lost by the server).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::json;

use crate::http::{self, Consumer, SendPlan};
use crate::http_send::{client_runtime, CpuMeter, QUEUES, TOPIC};
use crate::progress;
use crate::report::{new_histogram, record_us, Figures, Report};
use crate::target::{Mode, RunArgs, Target};

const INVISIBLE_MS: u64 = 600_000;
const STALL: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, clap::Args)]
pub struct HttpReceiveArgs {
    /// Messages to preload and then receive.
    #[arg(long, default_value_t = 1_000_000)]
    pub count: u64,
    /// max_messages per receive request (1..=1000).
    #[arg(long, default_value_t = 256)]
    pub max: usize,
    /// Concurrent consumers (tasks sharing one keep-alive client).
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Body size in bytes.
    #[arg(long, default_value_t = 256)]
    pub bodies: usize,
    /// Concurrent senders for the preload (batches of 1000).
    #[arg(long, default_value_t = 4)]
    pub preload_concurrency: usize,
    /// Skip the receive-only phase.
    #[arg(long)]
    pub skip_receive_only: bool,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Default)]
pub struct ConsumerOut {
    recv: Option<Histogram<u64>>,
    ack: Option<Histogram<u64>>,
    ids: Vec<u128>,
    recv_time: Duration,
    ack_time: Duration,
    empty: u64,
}

pub fn run(args: &HttpReceiveArgs) -> Result<Report, String> {
    if args.count == 0 || !(1..=1000).contains(&args.max) || args.concurrency == 0 || args.run.runs == 0 {
        return Err("--count, --concurrency and --runs must be at least 1 and --max 1..=1000".into());
    }
    let mode = args.run.target.mode()?;
    let rt = client_runtime(args.run.client_threads)?;
    let params = json!({
        "count": args.count, "max": args.max, "concurrency": args.concurrency, "bodies": args.bodies,
        "preload_batch": 1000, "preload_concurrency": args.preload_concurrency, "invisible_ms": INVISIBLE_MS,
    });
    let mut report = Report::new("http-receive", args.run.params(params)?);
    report.runs = args.run.each("http-receive", |target| one_run(args, &rt, target, mode))?;
    Ok(report)
}

fn one_run(
    args: &HttpReceiveArgs,
    rt: &tokio::runtime::Runtime,
    target: &Target,
    mode: Mode,
) -> Result<Figures, String> {
    let base = target.base().to_owned();
    let client = http::client(args.concurrency.max(args.preload_concurrency))?;
    let mut f = Figures::default();
    // A run against --url may find the groups already used: name them per run.
    let suffix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
    rt.block_on(http::create_topic(&client, &base, TOPIC, QUEUES))?;
    crate::note!("http-receive: preloading {} messages", args.count);
    let plan = SendPlan::normal(args.count, 1000, args.bodies, args.preload_concurrency).label("preload");
    let pre = rt.block_on(http::send_all(&client, &base, TOPIC, plan))?;
    f.add("preload_msgs_per_s", args.count as f64 / pre.elapsed.as_secs_f64());

    crate::note!("http-receive: receive + ack");
    let cpu = CpuMeter::start(target);
    let (secs, outs) = rt.block_on(consume(&client, &base, &format!("bench-ack-{suffix}"), args, true))?;
    f.add("receive_ack_msgs_per_s", args.count as f64 / secs);
    f.add("receive_ack_elapsed_s", secs);
    summarize(&mut f, "receive_ack", &outs, args.count)?;
    cpu.finish(&mut f, mode, args.count, secs);

    if !args.skip_receive_only {
        crate::note!("http-receive: receive only");
        let (secs, outs) = rt.block_on(consume(&client, &base, &format!("bench-noack-{suffix}"), args, false))?;
        f.add("receive_only_msgs_per_s", args.count as f64 / secs);
        f.add("receive_only_elapsed_s", secs);
        summarize(&mut f, "receive_only", &outs, args.count)?;
    }
    Ok(f)
}

pub fn summarize(f: &mut Figures, prefix: &str, outs: &[ConsumerOut], count: u64) -> Result<(), String> {
    let mut recv = new_histogram();
    let mut ack = new_histogram();
    let mut ids = Vec::new();
    let (mut recv_t, mut ack_t, mut empty) = (Duration::ZERO, Duration::ZERO, 0);
    for o in outs {
        if let Some(h) = &o.recv {
            recv.add(h).map_err(|e| e.to_string())?;
        }
        if let Some(h) = &o.ack {
            ack.add(h).map_err(|e| e.to_string())?;
        }
        ids.extend_from_slice(&o.ids);
        recv_t += o.recv_time;
        ack_t += o.ack_time;
        empty += o.empty;
    }
    let received = ids.len() as u64;
    ids.sort_unstable();
    ids.dedup();
    let unique = ids.len() as u64;
    if unique != count {
        return Err(format!("{prefix}: received {unique} distinct messages, expected {count}"));
    }
    f.add(&format!("{prefix}_duplicates"), (received - unique) as f64);
    f.add(&format!("{prefix}_empty_receives"), empty as f64);
    f.add(&format!("{prefix}_msgs_per_receive"), received as f64 / (recv.len() - empty).max(1) as f64);
    if !ack.is_empty() {
        let busy = (recv_t + ack_t).as_secs_f64();
        f.add(&format!("{prefix}_time_share_receive"), recv_t.as_secs_f64() / busy);
        f.add(&format!("{prefix}_time_share_ack"), ack_t.as_secs_f64() / busy);
    }
    f.add_latency(&format!("{prefix}_receive_latency"), &recv);
    if !ack.is_empty() {
        f.add_latency(&format!("{prefix}_ack_latency"), &ack);
    }
    Ok(())
}

/// Runs `concurrency` consumers of `group` until `count` messages were received; returns the
/// elapsed seconds and each consumer's results.
async fn consume(
    client: &reqwest::Client,
    base: &str,
    group: &str,
    args: &HttpReceiveArgs,
    do_ack: bool,
) -> Result<(f64, Vec<ConsumerOut>), String> {
    let spec =
        ConsumeSpec { topic: TOPIC, count: args.count, max: args.max, concurrency: args.concurrency, wait_ms: None };
    consume_topic(client, base, group, &spec, do_ack).await
}

/// What [`consume_topic`] receives: `count` messages of `topic`, `max` per receive, from
/// `concurrency` consumers, long-polling `wait_ms` (`None`: polling every millisecond).
pub struct ConsumeSpec<'a> {
    pub topic: &'a str,
    pub count: u64,
    pub max: usize,
    pub concurrency: usize,
    pub wait_ms: Option<u64>,
}

/// Receives (and acks, with `do_ack`) until `spec.count` messages were received, each once or
/// more; returns the elapsed seconds and each consumer's results.
pub async fn consume_topic(
    client: &reqwest::Client,
    base: &str,
    group: &str,
    spec: &ConsumeSpec<'_>,
    do_ack: bool,
) -> Result<(f64, Vec<ConsumerOut>), String> {
    let consumer = Consumer::new(base, spec.topic, group, spec.max, spec.wait_ms, INVISIBLE_MS);
    let received = Arc::new(AtomicU64::new(0));
    let count = spec.count;
    let _bar = progress::track(if do_ack { "receive + ack" } else { "receive" }, count, received.clone());
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..spec.concurrency {
        let (client, consumer, received) = (client.clone(), consumer.clone(), received.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = ConsumerOut { recv: Some(new_histogram()), ..Default::default() };
            if do_ack {
                out.ack = Some(new_histogram());
            }
            let mut last_progress = Instant::now();
            while received.load(Ordering::Relaxed) < count {
                let t0 = Instant::now();
                let bytes = consumer.receive(&client).await?;
                let d = t0.elapsed();
                out.recv_time += d;
                record_us(out.recv.as_mut().expect("set"), d);
                let got = http::parse_received(&bytes)?;
                if got.messages.is_empty() {
                    out.empty += 1;
                    if last_progress.elapsed() > STALL {
                        return Err(format!(
                            "receive: no message for {STALL:?} with {} of {count} received",
                            received.load(Ordering::Relaxed)
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
                last_progress = Instant::now();
                for m in &got.messages {
                    out.ids.push(m.id()?);
                }
                received.fetch_add(got.messages.len() as u64, Ordering::Relaxed);
                if !do_ack {
                    continue;
                }
                let t0 = Instant::now();
                consumer.ack(&client, &got).await?;
                let d = t0.elapsed();
                out.ack_time += d;
                record_us(out.ack.as_mut().expect("set"), d);
            }
            Ok::<_, String>(out)
        }));
    }
    let mut outs = Vec::new();
    let mut first_err = None;
    for t in tasks {
        match t.await.map_err(|e| e.to_string()).and_then(|r| r) {
            Ok(o) => outs.push(o),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    Ok((start.elapsed().as_secs_f64(), outs))
}
