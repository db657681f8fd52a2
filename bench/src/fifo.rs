//! `fifo`: receive + ack throughput of a FIFO consumer group with 1, 100 and 10,000 message
//! groups, against a group that is not FIFO receiving the same messages in the same run.
//!
//! For each message-group count `n` (`--groups`), a topic of 8 queues is loaded with `count`
//! messages (message `i` in group `mg{i % n}`; with one group, `--count-one`: it goes one
//! message per round trip). Then a plain group and a FIFO group (`PUT .../groups/{g}` with
//! `fifo: true`) each receive and ack all of them with `concurrency` long-polling consumers.
//! `at_{n}_fifo_over_plain` is the FIFO group's rate over the plain group's.
//!
//! With `--held N`, a last phase measures what held messages cost: N messages in 8 message
//! groups, a FIFO group receives the 8 heads and never acks them, then receives until it holds
//! all it can (20,000 per queue at most); the server's RssAnon before and after, per held
//! message (`held_bytes_per_message`).

use serde_json::json;

use crate::http::{self, SendPlan};
use crate::http_receive::{consume_topic, summarize, ConsumeSpec};
use crate::http_send::client_runtime;
use crate::report::{Figures, Report};
use crate::target::{RunArgs, Target};

#[derive(Debug, Clone, clap::Args)]
pub struct FifoArgs {
    /// Message-group counts to run, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,100,10000")]
    pub groups: Vec<u64>,
    /// Messages per topic.
    #[arg(long, default_value_t = 200_000)]
    pub count: u64,
    /// Messages with a single message group (one message per round trip).
    #[arg(long, default_value_t = 20_000)]
    pub count_one: u64,
    /// max_messages per receive.
    #[arg(long, default_value_t = 64)]
    pub max: usize,
    /// Concurrent consumers of each group.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Body size in bytes.
    #[arg(long, default_value_t = 100)]
    pub bodies: usize,
    /// Messages for the held-memory phase (0: skip it).
    #[arg(long, default_value_t = 0)]
    pub held: u64,
    #[command(flatten)]
    pub run: RunArgs,
}

pub fn run(args: &FifoArgs) -> Result<Report, String> {
    if args.groups.is_empty() || args.groups.contains(&0) || args.count == 0 || args.count_one == 0 {
        return Err("--groups, --count and --count-one must be at least 1".into());
    }
    if !(1..=1000).contains(&args.max) || args.concurrency == 0 || args.run.runs == 0 {
        return Err("--max must be 1..=1000, --concurrency and --runs at least 1".into());
    }
    let rt = client_runtime(args.run.client_threads)?;
    let params = json!({
        "groups": args.groups, "count": args.count, "count_one": args.count_one, "max": args.max,
        "concurrency": args.concurrency, "bodies": args.bodies, "queues": 8, "wait_ms": 200,
    });
    let mut report = Report::new("fifo", args.run.params(params)?);
    report.runs = args.run.each("fifo", |target| one_run(args, &rt, target))?;
    Ok(report)
}

fn one_run(args: &FifoArgs, rt: &tokio::runtime::Runtime, target: &Target) -> Result<Figures, String> {
    let base = target.base().to_owned();
    let client = http::client(args.concurrency * 2)?;
    let mut f = Figures::default();
    for &n in &args.groups {
        let topic = format!("fifo-{n}");
        let count = if n == 1 { args.count_one } else { args.count };
        rt.block_on(http::create_topic(&client, &base, &topic, 8))?;
        crate::note!("fifo: {count} messages in {n} message groups");
        let plan = SendPlan::normal(count, 1000, args.bodies, 4).grouped(n).label("load");
        rt.block_on(http::send_all(&client, &base, &topic, plan))?;
        let url = format!("{base}/v1/topics/{topic}/groups/ordered");
        let put =
            async { client.put(url).header("content-type", "application/json").body("{\"fifo\":true}").send().await };
        let status = rt.block_on(put).map_err(|e| format!("configure: {e}"))?.status();
        if !status.is_success() {
            return Err(format!("configure the FIFO group: {status}"));
        }
        let spec =
            ConsumeSpec { topic: &topic, count, max: args.max, concurrency: args.concurrency, wait_ms: Some(200) };
        let mut rates = Vec::new();
        for group in ["plain", "ordered"] {
            crate::note!("fifo: {group} group, {n} message groups");
            let (secs, outs) = rt.block_on(consume_topic(&client, &base, group, &spec, true))?;
            let label = if group == "plain" { "plain" } else { "fifo" };
            f.add(&format!("at_{n}_{label}_msgs_per_s"), count as f64 / secs);
            summarize(&mut f, &format!("at_{n}_{label}"), &outs, count)?;
            rates.push(count as f64 / secs);
        }
        f.add(&format!("at_{n}_fifo_over_plain"), rates[1] / rates[0]);
    }
    if args.held > 0 {
        rt.block_on(held_memory(args, &client, &base, target, &mut f))?;
    }
    Ok(f)
}

/// The held-memory phase (module doc).
async fn held_memory(
    args: &FifoArgs,
    client: &reqwest::Client,
    base: &str,
    target: &Target,
    f: &mut Figures,
) -> Result<(), String> {
    let pid = target.server_pid().ok_or("--held needs a server this tool starts (its memory is read)")?;
    let anon = || -> Result<f64, String> {
        let mem = crate::pending::proc_memory(pid)?;
        Ok(mem.iter().find(|(k, _)| k == "RssAnon").map_or(0.0, |(_, v)| *v))
    };
    let topic = "fifo-held";
    http::create_topic(client, base, topic, 8).await?;
    let plan = SendPlan::normal(args.held, 1000, args.bodies, 4).grouped(8).label("load");
    http::send_all(client, base, topic, plan).await?;
    let put = client.put(format!("{base}/v1/topics/{topic}/groups/held")).header("content-type", "application/json");
    let status = put.body("{\"fifo\":true}").send().await.map_err(|e| format!("configure: {e}"))?.status();
    if !status.is_success() {
        return Err(format!("configure the FIFO group: {status}"));
    }
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let before = anon()?;
    let url = format!("{base}/v1/topics/{topic}/groups/held/receive");
    let blocked_url = format!("{base}/v1/topics/{topic}/groups/held/blocked?limit=1000");
    let (mut held, mut last) = (0u64, u64::MAX);
    while held != last {
        last = held;
        for _ in 0..16 {
            let body = "{\"max_messages\":1000,\"invisible_ms\":3600000}";
            http::post(client, &url, body, 200, "receive").await?;
        }
        let v = http::get_json(client, &blocked_url, "blocked").await?;
        held = v["blocked"].as_array().map_or(0, |b| b.iter().filter_map(|x| x["waiting"].as_u64()).sum());
    }
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let after = anon()?;
    f.add("held_messages", held as f64);
    f.add("held_RssAnon_before_bytes", before);
    f.add("held_RssAnon_after_bytes", after);
    f.add("held_bytes_per_message", (after - before) / held.max(1) as f64);
    Ok(())
}
