//! `dedup`: sends with a `dedup_id` against the same sends without, in one run, and the
//! server's memory with a million ids in the window.
//!
//! On one server: `count` messages without ids (topic `plain`), then `count` with new ids
//! (topic `dedup`), then the same `count` ids again (every one a repeat, answered 200). Batches
//! of `--batch` from `--concurrency` senders. RssAnon (private memory) and RssFile (mapped
//! files: the key index lives there) are read after each phase.

use std::time::Instant;

use serde_json::json;

use crate::http::{self, SendPlan};
use crate::http_send::client_runtime;
use crate::pending::proc_memory;
use crate::report::{Figures, Report};
use crate::target::{RunArgs, Target};

#[derive(Debug, Clone, clap::Args)]
pub struct DedupArgs {
    /// Messages per phase (ids in the window after the second).
    #[arg(long, default_value_t = 1_000_000)]
    pub count: u64,
    /// Messages per send request.
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Concurrent senders.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Body size in bytes.
    #[arg(long, default_value_t = 100)]
    pub bodies: usize,
    #[command(flatten)]
    pub run: RunArgs,
}

pub fn run(args: &DedupArgs) -> Result<Report, String> {
    if args.count == 0 || !(1..=1000).contains(&args.batch) || args.concurrency == 0 || args.run.runs == 0 {
        return Err("--count, --concurrency and --runs must be at least 1, --batch 1..=1000".into());
    }
    let rt = client_runtime(args.run.client_threads)?;
    let params =
        json!({"count": args.count, "batch": args.batch, "concurrency": args.concurrency, "bodies": args.bodies});
    let mut report = Report::new("dedup", args.run.params(params)?);
    report.runs = args.run.each("dedup", |target| one_run(args, &rt, target))?;
    Ok(report)
}

fn one_run(args: &DedupArgs, rt: &tokio::runtime::Runtime, target: &Target) -> Result<Figures, String> {
    let base = target.base().to_owned();
    let client = http::client(args.concurrency)?;
    let mut f = Figures::default();
    let first =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()) * 100_000_000;
    let memory = |f: &mut Figures, phase: &str| {
        if let Some(pid) = target.server_pid() {
            if let Ok(mem) = proc_memory(pid) {
                for (k, v) in mem.into_iter().filter(|(k, _)| k == "RssAnon" || k == "RssFile") {
                    f.add(&format!("{phase}_{k}_bytes"), v);
                }
            }
        }
    };
    let phases: [(&str, &str, SendPlan); 3] = [
        ("plain", "plain", SendPlan::normal(args.count, args.batch, args.bodies, args.concurrency)),
        (
            "with_ids",
            "dedup",
            SendPlan::normal(args.count, args.batch, args.bodies, args.concurrency).deduplicated(first),
        ),
        (
            "repeats",
            "dedup",
            SendPlan::normal(args.count, args.batch, args.bodies, args.concurrency).deduplicated(first).expect(200),
        ),
    ];
    for (phase, topic, plan) in phases {
        crate::note!("dedup: {phase}");
        let t0 = Instant::now();
        rt.block_on(http::send_all(&client, &base, topic, plan.label("send")))?;
        f.add(&format!("{phase}_msgs_per_s"), args.count as f64 / t0.elapsed().as_secs_f64());
        memory(&mut f, phase);
    }
    let (plain, ids) = (f.get("plain_msgs_per_s").unwrap_or(0.0), f.get("with_ids_msgs_per_s").unwrap_or(0.0));
    f.add("ratio_with_ids_over_plain", ids / plain.max(1.0));
    Ok(f)
}
