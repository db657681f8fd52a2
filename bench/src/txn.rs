//! `txn`: transactions (prepare + commit) of 1 and of 10 messages against plain sends of the
//! same messages in the same run; commit-to-visible latency; memory and restart time with
//! `--prepared` transactions left open.
//!
//! Phases, each with `concurrency` clients over keep-alive connections:
//! 1. plain sends of `count` messages, batches of 1 and of 10 (the baseline);
//! 2. transactions of 1 and of 10 messages (a prepare, then a commit), `count` messages each;
//!    while they run, one long-polling consumer receives them, and every message's latency from
//!    the moment its commit was sent to the moment it was received is recorded (client clock);
//! 3. with `--prepared N`: N transactions of one message prepared and left open; the server's
//!    RssAnon before and after, then a clean restart and the time until `/readyz`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::{json, Value};

use crate::http;
use crate::http_send::client_runtime;
use crate::report::{new_histogram, record_us, Figures, Report};
use crate::target::{RunArgs, Target};

#[derive(Debug, Clone, clap::Args)]
pub struct TxnArgs {
    /// Messages per phase.
    #[arg(long, default_value_t = 50_000)]
    pub count: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Body size in bytes.
    #[arg(long, default_value_t = 100)]
    pub bodies: usize,
    /// Transactions left prepared for the memory and restart phase (0: skip it).
    #[arg(long, default_value_t = 0)]
    pub prepared: u64,
    #[command(flatten)]
    pub run: RunArgs,
}

pub fn run(args: &TxnArgs) -> Result<Report, String> {
    if args.count == 0 || args.concurrency == 0 || args.run.runs == 0 {
        return Err("--count, --concurrency and --runs must be at least 1".into());
    }
    let rt = client_runtime(args.run.client_threads)?;
    let params =
        json!({"count": args.count, "concurrency": args.concurrency, "bodies": args.bodies, "prepared": args.prepared});
    let mut report = Report::new("txn", args.run.params(params)?);
    report.runs = args.run.each("txn", |target| one_run(args, &rt, target))?;
    Ok(report)
}

fn messages(topic: &str, from: u64, n: u64, body_len: usize) -> Vec<Value> {
    (from..from + n).map(|i| json!({"topic": topic, "body": format!("{i}:{}", "x".repeat(body_len))})).collect()
}

fn one_run(args: &TxnArgs, rt: &tokio::runtime::Runtime, target: &mut Target) -> Result<Figures, String> {
    let base = target.base().to_owned();
    let client = http::client(args.concurrency + 1)?;
    let mut f = Figures::default();
    for size in [1u64, 10] {
        let topic = format!("plain-{size}");
        let t0 = Instant::now();
        let (t, bodies) = (topic.clone(), args.bodies);
        rt.block_on(run_clients(args, &client, &base, size, move |client, base, from| {
            let topic = t.clone();
            let body = Value::from(
                messages(&topic, from, size, bodies)
                    .into_iter()
                    .map(|mut m| {
                        m.as_object_mut().map(|o| o.remove("topic"));
                        m
                    })
                    .collect::<Vec<_>>(),
            );
            let url = format!("{base}/v1/topics/{topic}/messages");
            async move { http::post(&client, &url, body.to_string(), 201, "send").await.map(|_| ()) }
        }))?;
        let secs = t0.elapsed().as_secs_f64();
        f.add(&format!("send_{size}_msgs_per_s"), args.count as f64 / secs);
        f.add(&format!("send_{size}_requests_per_s"), (args.count / size) as f64 / secs);

        let topic = format!("txn-{size}");
        let sent_at: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(AtomicU64::new(0));
        let consumer = rt.spawn(consume(
            client.clone(),
            base.clone(),
            topic.clone(),
            sent_at.clone(),
            stop.clone(),
            received.clone(),
        ));
        let t0 = Instant::now();
        let (t, bodies, at) = (topic.clone(), args.bodies, sent_at.clone());
        rt.block_on(run_clients(args, &client, &base, size, move |client, base, from| {
            let body = json!({"producer_group": "bench", "messages": messages(&t, from, size, bodies)});
            let sent_at = at.clone();
            async move {
                let v =
                    http::post(&client, &format!("{base}/v1/transactions"), body.to_string(), 201, "prepare").await?;
                let v: Value = serde_json::from_slice(&v).map_err(|e| e.to_string())?;
                let id = v["transaction_id"].as_str().ok_or("no transaction_id")?.to_string();
                {
                    let now = Instant::now();
                    let mut m = sent_at.lock().expect("not poisoned");
                    (from..from + size).for_each(|i| {
                        m.insert(i, now);
                    });
                }
                http::post(&client, &format!("{base}/v1/transactions/{id}/commit"), "{}", 200, "commit")
                    .await
                    .map(|_| ())
            }
        }))?;
        let secs = t0.elapsed().as_secs_f64();
        f.add(&format!("txn_{size}_msgs_per_s"), args.count as f64 / secs);
        f.add(&format!("txn_{size}_per_s"), (args.count / size) as f64 / secs);
        f.add(
            &format!("txn_{size}_over_send_{size}"),
            f.get(&format!("txn_{size}_msgs_per_s")).unwrap_or(0.0)
                / f.get(&format!("send_{size}_msgs_per_s")).unwrap_or(1.0),
        );
        let deadline = Instant::now() + std::time::Duration::from_secs(30);
        while received.load(Ordering::Relaxed) < args.count && Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        stop.store(true, Ordering::Relaxed);
        let h = rt.block_on(consumer).map_err(|e| e.to_string())??;
        if h.len() != args.count {
            return Err(format!("txn-{size}: received {} of {} committed messages", h.len(), args.count));
        }
        f.add_latency(&format!("txn_{size}_commit_to_visible"), &h);
    }
    if args.prepared > 0 {
        prepared_phase(args, rt, target, &client, &mut f)?;
    }
    Ok(f)
}

/// Runs `concurrency` clients calling `one(client, base, first_message)` until `count`
/// messages (in requests of `size`) are done.
async fn run_clients<F, Fut>(
    args: &TxnArgs,
    client: &reqwest::Client,
    base: &str,
    size: u64,
    one: F,
) -> Result<(), String>
where
    F: Fn(reqwest::Client, String, u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send,
{
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let (client, base, next, one, count) =
            (client.clone(), base.to_string(), next.clone(), one.clone(), args.count);
        tasks.push(tokio::spawn(async move {
            loop {
                let from = next.fetch_add(size, Ordering::Relaxed);
                if from >= count {
                    return Ok::<_, String>(());
                }
                one(client.clone(), base.clone(), from).await?;
            }
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    Ok(())
}

/// Receives `topic` (acking) until told to stop; the commit-to-visible latency of each message.
async fn consume(
    client: reqwest::Client,
    base: String,
    topic: String,
    sent_at: Arc<Mutex<HashMap<u64, Instant>>>,
    stop: Arc<AtomicBool>,
    received: Arc<AtomicU64>,
) -> Result<hdrhistogram::Histogram<u64>, String> {
    let consumer = http::Consumer::new(&base, &topic, "bench", 1000, Some(200), 600_000);
    let mut h = new_histogram();
    while !stop.load(Ordering::Relaxed) {
        let bytes = consumer.receive(&client).await?;
        let now = Instant::now();
        let v: Value = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
        let got = http::parse_received(&bytes)?;
        for m in v["messages"].as_array().into_iter().flatten() {
            let i: u64 = m["body"].as_str().and_then(|b| b.split(':').next()?.parse().ok()).ok_or("bad body")?;
            // The commit was sent after the prepare answered: the time is there by now, except
            // for a message seen before its client recorded it (then it counts as 0).
            let at = sent_at.lock().expect("not poisoned").get(&i).copied().unwrap_or(now);
            record_us(&mut h, now.saturating_duration_since(at));
        }
        received.fetch_add(got.messages.len() as u64, Ordering::Relaxed);
        if !got.messages.is_empty() {
            consumer.ack(&client, &got).await?;
        }
    }
    Ok(h)
}

fn prepared_phase(
    args: &TxnArgs,
    rt: &tokio::runtime::Runtime,
    target: &mut Target,
    client: &reqwest::Client,
    f: &mut Figures,
) -> Result<(), String> {
    let pid = target.server_pid().ok_or("--prepared needs a server this tool starts")?;
    let anon = |pid: u32| -> Result<f64, String> {
        let mem = crate::pending::proc_memory(pid)?;
        Ok(mem.iter().find(|(k, _)| k == "RssAnon").map_or(0.0, |(_, v)| *v))
    };
    let base = target.base().to_owned();
    std::thread::sleep(std::time::Duration::from_secs(2));
    let before = anon(pid)?;
    let a = TxnArgs { count: args.prepared, ..args.clone() };
    let t0 = Instant::now();
    let bodies = args.bodies;
    rt.block_on(run_clients(&a, client, &base, 1, move |client, base, from| {
        let body =
            json!({"producer_group": "open", "check_after_ms": 3600000, "messages": messages("open", from, 1, bodies)});
        async move {
            http::post(&client, &format!("{base}/v1/transactions"), body.to_string(), 201, "prepare").await.map(|_| ())
        }
    }))?;
    f.add("prepare_open_per_s", args.prepared as f64 / t0.elapsed().as_secs_f64());
    std::thread::sleep(std::time::Duration::from_secs(2));
    let after = anon(pid)?;
    f.add("prepared_RssAnon_before_bytes", before);
    f.add("prepared_RssAnon_after_bytes", after);
    f.add("prepared_bytes_per_transaction", (after - before) / args.prepared as f64);
    let (stop, ready) = target.restart()?;
    f.add("prepared_restart_stop_s", stop.as_secs_f64());
    f.add("prepared_restart_ready_s", ready.as_secs_f64());
    let v =
        rt.block_on(http::get_json(client, &format!("{base}/v1/transactions?state=prepared&limit=1000"), "list"))?;
    let n = v["transactions"].as_array().map_or(0, Vec::len);
    if n != (args.prepared as usize).min(1000) {
        return Err(format!("after the restart {n} prepared transactions listed"));
    }
    if let Some(pid) = target.server_pid() {
        f.add("prepared_RssAnon_after_restart_bytes", anon(pid)?);
    }
    Ok(())
}
