//! `key-lookup`: the lookup by business key (`GET /v1/topics/{topic}/messages?key=`) as the
//! log grows, so the claim "cost independent of the log size" is a measurement.
//!
//! The topic is loaded in stages (`--sizes`, cumulative message counts; 10M by default), every
//! message with its own key (`order-{i}`). After each stage `concurrency` clients look up
//! `--lookups` keys drawn uniformly from every key stored so far (hits: each answer must hold
//! exactly that message) and as many keys never sent (misses: each answer must be empty).
//! Latency is per request over HTTP with keep-alive, client clock. Each stage's figures carry
//! its size as a prefix (`at_1000000_hit_p99_us`); `hit_p50_last_over_first` is the growth of the
//! median from the smallest stage to the largest (1.0: independent of the log's size).

use std::sync::Arc;
use std::time::Instant;

use serde_json::json;

use crate::http::{self, SendPlan};
use crate::http_send::{client_runtime, QUEUES, TOPIC};
use crate::report::{new_histogram, record_us, Figures, Report};
use crate::rng::{self, SplitMix64};
use crate::target::{RunArgs, Target};

#[derive(Debug, Clone, clap::Args)]
pub struct KeyLookupArgs {
    /// Messages stored before each round of lookups (cumulative, increasing), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "100000,1000000,10000000")]
    pub sizes: Vec<u64>,
    /// Lookups of stored keys per stage (and as many of keys never sent).
    #[arg(long, default_value_t = 20_000)]
    pub lookups: u64,
    /// Concurrent lookup clients.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Body size in bytes.
    #[arg(long, default_value_t = 100)]
    pub bodies: usize,
    /// Concurrent senders of the load (batches of 1000).
    #[arg(long, default_value_t = 4)]
    pub preload_concurrency: usize,
    #[command(flatten)]
    pub run: RunArgs,
}

pub fn run(args: &KeyLookupArgs) -> Result<Report, String> {
    if args.sizes.is_empty() || args.sizes.windows(2).any(|w| w[0] >= w[1]) || args.sizes[0] == 0 {
        return Err("--sizes must be increasing and at least 1".into());
    }
    if args.lookups == 0 || args.concurrency == 0 || args.run.runs == 0 {
        return Err("--lookups, --concurrency and --runs must be at least 1".into());
    }
    let rt = client_runtime(args.run.client_threads)?;
    let params = json!({
        "sizes": args.sizes, "lookups": args.lookups, "concurrency": args.concurrency,
        "bodies": args.bodies, "preload_batch": 1000, "preload_concurrency": args.preload_concurrency,
        "keys_per_message": 1, "limit": 100,
    });
    let mut report = Report::new("key-lookup", args.run.params(params)?);
    report.runs = args.run.each("key-lookup", |target| one_run(args, &rt, target))?;
    Ok(report)
}

fn one_run(args: &KeyLookupArgs, rt: &tokio::runtime::Runtime, target: &Target) -> Result<Figures, String> {
    let base = target.base().to_owned();
    let client = http::client(args.concurrency.max(args.preload_concurrency))?;
    let mut f = Figures::default();
    // A run against --url may find keys already used: start this run's keys past them.
    let first_key =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()) * 100_000_000;
    rt.block_on(http::create_topic(&client, &base, TOPIC, QUEUES))?;
    let mut stored = 0u64;
    let mut first_p50 = None;
    for &size in &args.sizes {
        crate::note!("key-lookup: storing messages {stored}..{size}");
        let plan = SendPlan::normal(size - stored, 1000, args.bodies, args.preload_concurrency)
            .keyed(first_key + stored)
            .label("load");
        let t0 = Instant::now();
        rt.block_on(http::send_all(&client, &base, TOPIC, plan))?;
        f.add(&format!("at_{size}_load_msgs_per_s"), (size - stored) as f64 / t0.elapsed().as_secs_f64());
        stored = size;
        crate::note!("key-lookup: {} lookups with {size} messages stored", args.lookups * 2);
        let (hit, miss) = rt.block_on(lookups(&client, &base, args, first_key, size))?;
        let p50 = hit.value_at_quantile(0.5) as f64;
        let first = *first_p50.get_or_insert(p50);
        f.add_latency(&format!("at_{size}_hit"), &hit);
        f.add_latency(&format!("at_{size}_miss"), &miss);
        if let Some(bytes) = target.data_dir().and_then(|d| dir_bytes(&d.join("keyindex"))) {
            f.add(&format!("at_{size}_key_index_bytes"), bytes as f64);
        }
        if size == *args.sizes.last().expect("not empty") {
            f.add("hit_p50_last_over_first", p50 / first.max(1.0));
        }
    }
    Ok(f)
}

/// `lookups` hits and as many misses from `concurrency` clients; the hit and miss latencies.
async fn lookups(
    client: &reqwest::Client,
    base: &str,
    args: &KeyLookupArgs,
    first_key: u64,
    stored: u64,
) -> Result<(hdrhistogram::Histogram<u64>, hdrhistogram::Histogram<u64>), String> {
    let url: Arc<str> = format!("{base}/v1/topics/{TOPIC}/messages").into();
    let per_task = args.lookups.div_ceil(args.concurrency as u64);
    let mut tasks = Vec::new();
    for t in 0..args.concurrency as u64 {
        let (client, url) = (client.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = SplitMix64::new(rng::nth(rng::SEED, t ^ stored));
            let (mut hit, mut miss) = (new_histogram(), new_histogram());
            for _ in 0..per_task {
                let i = rng.below(stored);
                let k = http::key(first_key + i);
                let t0 = Instant::now();
                let v = http::get_json(&client, &format!("{url}?key={k}"), "lookup").await?;
                record_us(&mut hit, t0.elapsed());
                let found = v["messages"].as_array().map_or(0, |m| m.len());
                let key_matches = v["messages"][0]["keys"][0].as_str() == Some(k.as_str());
                if found != 1 || !key_matches {
                    return Err(format!("lookup of {k}: expected its one message, got {v}"));
                }
                // A key never sent: one past every key of this run.
                let k = http::key(first_key + stored + 1 + rng.below(1 << 40));
                let t0 = Instant::now();
                let v = http::get_json(&client, &format!("{url}?key={k}"), "lookup").await?;
                record_us(&mut miss, t0.elapsed());
                if v["messages"].as_array().is_none_or(|m| !m.is_empty()) {
                    return Err(format!("lookup of {k} (never sent): expected none, got {v}"));
                }
            }
            Ok::<_, String>((hit, miss))
        }));
    }
    let (mut hit, mut miss) = (new_histogram(), new_histogram());
    for t in tasks {
        let (h, m) = t.await.map_err(|e| e.to_string())??;
        hit.add(&h).map_err(|e| e.to_string())?;
        miss.add(&m).map_err(|e| e.to_string())?;
    }
    Ok((hit, miss))
}

/// Bytes of the files in `dir` (allocated size is not asked for: the files are sparse mmaps,
/// so this is their length, an upper bound).
fn dir_bytes(dir: &std::path::Path) -> Option<u64> {
    let mut total = 0;
    for e in std::fs::read_dir(dir).ok()? {
        total += e.ok()?.metadata().ok()?.len();
    }
    Some(total)
}
