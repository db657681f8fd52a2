//! `cancel`: how fast scheduled messages are cancelled over HTTP, and how long a cancel takes,
//! on the default and the durable profile. A 200 on `DELETE` is final even after a power cut,
//! so each cancel fsyncs its state cell before it answers: this measures what that costs.
//!
//! Per run and profile, one fresh server (unless `--url`). `--count` scheduled messages, due
//! 1–2 h ahead (nothing fires during the run), are sent in batches of 1,000; then every one is
//! cancelled, one `DELETE` per message, from `--concurrency` tasks. Figures: cancels/s (count /
//! time from the first `DELETE` to the last answer) and latency p50, p99 and max. Every answer
//! must be 200 and `pending_total` must be back where it was.

use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value};

use crate::http::{self, now_ms};
use crate::http_send::client_runtime;
use crate::report::{new_histogram, record_us, Figures, Report};
use crate::rng::{self, SEED};
use crate::target::{ProfileRuns, Target};

const HOUR_MS: i64 = 3_600_000;
const TOPIC: &str = "cancel-bench";
const SEND_BATCH: usize = 1000;

#[derive(Debug, Clone, clap::Args)]
pub struct CancelArgs {
    /// Scheduled messages to send, then cancel.
    #[arg(long, default_value_t = 20_000)]
    pub count: u64,
    /// Concurrent cancelling tasks.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    #[command(flatten)]
    pub each: ProfileRuns,
}

pub fn run(args: &CancelArgs) -> Result<Report, String> {
    if args.count == 0 || args.concurrency == 0 {
        return Err("--count and --concurrency must be at least 1".into());
    }
    let profiles = args.each.profiles()?;
    let rt = client_runtime(args.each.run.client_threads)?;
    let mut report = Report::new(
        "cancel",
        json!({"count": args.count, "concurrency": args.concurrency, "profiles": profiles, "runs": args.each.run.runs,
               "server": args.each.run.target.mode()?.name(), "url": args.each.run.target.url, "seed": SEED}),
    );
    report.runs = args.each.each("cancel", |profile, target, f| rt.block_on(profile_run(args, profile, target, f)))?;
    let m = report.median();
    let mut text = format!("cancel: {} scheduled messages, {} concurrent DELETEs\n", args.count, args.concurrency);
    for p in &profiles {
        let g = |k: &str| m.get(&format!("{p}_{k}")).unwrap_or(f64::NAN);
        text.push_str(&format!(
            "  {p:<8} {:>9.0} cancels/s   latency p50 {:>6.0} µs  p99 {:>6.0} µs  max {:>7.0} µs\n",
            g("cancels_per_s"),
            g("latency_p50_us"),
            g("latency_p99_us"),
            g("latency_max_us")
        ));
    }
    report.text.push(text);
    Ok(report)
}

async fn profile_run(args: &CancelArgs, profile: &str, target: &Target, f: &mut Figures) -> Result<(), String> {
    let base = target.base().to_owned();
    let client = http::client(args.concurrency + 1)?;
    let pending_before = http::timer_stats(&client, &base).await?["pending_total"].as_u64().unwrap_or(0);
    // Send: batches of scheduled messages 1-2 h ahead; collect their ids.
    let first = now_ms() + HOUR_MS;
    let url = format!("{base}/v1/topics/{TOPIC}/messages");
    let mut ids = Vec::with_capacity(args.count as usize);
    let mut i = 0u64;
    while i < args.count {
        let n = (args.count - i).min(SEND_BATCH as u64);
        let msgs: Vec<Value> = (i..i + n)
            .map(|k| json!({"body": format!("c{k}"), "deliver_at_ms": first + (rng::nth(SEED, k) % HOUR_MS as u64) as i64}))
            .collect();
        let answer = http::post(&client, &url, Value::Array(msgs).to_string(), 201, "scheduled send").await?;
        let v: Value = serde_json::from_slice(&answer).map_err(|e| format!("send answer: {e}"))?;
        for m in v["messages"].as_array().ok_or("send answer without messages")? {
            ids.push(m["message_id"].as_str().ok_or("a message without message_id")?.to_string());
        }
        i += n;
    }
    // Cancel: one DELETE per message, from `concurrency` tasks sharing the list.
    let ids = Arc::new(ids);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let (client, base, ids, next) = (client.clone(), base.clone(), ids.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut h = new_histogram();
            loop {
                let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(id) = ids.get(k) else { return Ok::<_, String>(h) };
                let t = Instant::now();
                let r = client
                    .delete(format!("{base}/v1/topics/{TOPIC}/messages/{id}"))
                    .send()
                    .await
                    .map_err(|e| format!("DELETE {id}: {e}"))?;
                let status = r.status().as_u16();
                let _ = r.bytes().await;
                record_us(&mut h, t.elapsed());
                if status != 200 {
                    return Err(format!("DELETE {id} answered {status}"));
                }
            }
        }));
    }
    let mut latency = new_histogram();
    for t in tasks {
        let h = t.await.map_err(|e| format!("cancel task: {e}"))??;
        latency.add(&h).map_err(|e| format!("histogram: {e}"))?;
    }
    let secs = start.elapsed().as_secs_f64();
    let pending_after = http::timer_stats(&client, &base).await?["pending_total"].as_u64().unwrap_or(u64::MAX);
    if pending_after != pending_before {
        return Err(format!("pending_total is {pending_after} after cancelling everything, was {pending_before}"));
    }
    f.add(&format!("{profile}_cancels_per_s"), args.count as f64 / secs);
    f.add(&format!("{profile}_latency_p50_us"), latency.value_at_quantile(0.5) as f64);
    f.add(&format!("{profile}_latency_p99_us"), latency.value_at_quantile(0.99) as f64);
    f.add(&format!("{profile}_latency_max_us"), latency.max() as f64);
    crate::note!(
        "cancel: {profile}: {:.0} cancels/s, p99 {} µs",
        args.count as f64 / secs,
        latency.value_at_quantile(0.99)
    );
    Ok(())
}
