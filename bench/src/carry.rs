//! `carry`: what retention costs when the segments it reclaims are full of pending scheduled
//! messages, in process.
//!
//! Each run opens a fresh `Store` on a simulated clock (the default profile's options, with
//! `--segment-mib` segments) and the timer the server would start, and schedules `--count`
//! messages (`--bodies` bytes) due in 364 days through the send use case, in batches of 1000.
//! Once the timer has placed them, the clock moves past `store.retention` (72 h) and one
//! retention pass runs: every segment written before it is past retention, so each pending
//! message in them is carried forward. Reported: the pass's time, the messages carried, the
//! bytes it wrote to the commit log (per message, and per message and year of delay at this
//! retention: a message due in `d` is carried about `d / retention` times), and the segments
//! reclaimed.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chime::clock::{Clock, ManualClock, SystemClock};
use chime::config::{ByteSize, Config, BUILTIN_PROFILES};
use chime::retention::{real_disk, Retention};
use chime::service::{Broker, BrokerOptions};
use chime::store::{NewMessage, Store};
use chime::timer::TimerEngine;
use serde_json::json;

use crate::report::{Figures, Report};

const TOPIC: &str = "bench";
const DAY_MS: i64 = 86_400_000;

#[derive(Debug, Clone, clap::Args)]
pub struct CarryArgs {
    /// Pending messages in the segments reclaimed.
    #[arg(long, default_value_t = 1_000_000)]
    pub count: u64,
    /// Body size in bytes.
    #[arg(long, default_value_t = 256)]
    pub bodies: usize,
    /// Commit-log segment size, MiB.
    #[arg(long, default_value_t = 64)]
    pub segment_mib: u64,
    /// Runs; the median of each figure is reported.
    #[arg(long, default_value_t = 1)]
    pub runs: usize,
    /// Parent directory for the temporary data directories. Default: the system temp dir.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

pub fn run(args: &CarryArgs) -> Result<Report, String> {
    if args.count == 0 || args.runs == 0 {
        return Err("--count and --runs must be at least 1".into());
    }
    let parent = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let mut report = Report::new(
        "carry",
        json!({"count": args.count, "bodies": args.bodies, "segment_mib": args.segment_mib, "runs": args.runs,
               "delay_days": 364, "retention": "72h"}),
    );
    for i in 0..args.runs {
        crate::note!("carry: run {}/{}, {} pending", i + 1, args.runs, args.count);
        report.runs.push(one_run(args, &parent)?);
    }
    Ok(report)
}

fn one_run(args: &CarryArgs, parent: &std::path::Path) -> Result<Figures, String> {
    let dir = tempfile::Builder::new().prefix("chime-bench-carry-").tempdir_in(parent).map_err(|e| e.to_string())?;
    let text = BUILTIN_PROFILES.iter().find(|(n, _)| *n == "default").map(|(_, t)| *t).ok_or("no default profile")?;
    let mut config = Config::from_profile_str(text).map_err(|e| format!("default profile: {e}"))?;
    config.data_dir = dir.path().join("data");
    config.store.segment_size = ByteSize::mib(args.segment_mib);
    let start = SystemClock.now_ms();
    let clock = ManualClock::new(start);
    let store = Store::open(chime::server::store_options(&config), clock.clone()).map_err(|e| format!("open: {e}"))?;
    let timer = TimerEngine::start(store.clone(), chime::server::timer_options(&config))
        .map_err(|e| format!("start timer: {e}"))?;
    let broker = Broker::new(store.clone(), timer.clone(), BrokerOptions::new(true, 8));
    let template = NewMessage { body: vec![b'x'; args.bodies], born_ms: start, ..Default::default() };
    let mut sent = 0;
    while sent < args.count {
        let n = (args.count - sent).min(1000);
        let msgs: Vec<NewMessage> = (0..n)
            .map(|k| NewMessage { deliver_at_ms: Some(start + 364 * DAY_MS + (sent + k) as i64), ..template.clone() })
            .collect();
        broker.append(TOPIC, msgs).map_err(|e| format!("send: {e}"))?;
        sent += n;
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    while timer.stats().enqueue_lag > 0 {
        if Instant::now() > deadline {
            return Err("the timer did not place everything in 600 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // One more record, so the last segment of the load is not the one being written.
    broker
        .append(TOPIC, vec![NewMessage { body: vec![b'y'; 1], born_ms: start, ..Default::default() }])
        .map_err(|e| format!("send: {e}"))?;
    let segments = store.log_segments().len();
    clock.set(start + 73 * 3_600_000);
    let groups = chime::group::Groups::open(store.clone(), chime::server::group_options(&config))
        .map_err(|e| format!("open groups: {e}"))?;
    let retention = Retention::new(
        store.clone(),
        timer.clone(),
        groups,
        clock.clone(),
        chime::server::retention_options(&config),
        Arc::new(real_disk),
    );
    let before = store.write_pos();
    let t0 = Instant::now();
    let tick = retention.tick().map_err(|e| format!("retention: {e}"))?;
    let took = t0.elapsed().as_secs_f64();
    let written = store.write_pos() - before;
    let mut f = Figures::default();
    f.add("segments_before", segments as f64);
    f.add("segments_reclaimed", tick.reclaimed.len() as f64);
    f.add("carried", tick.carried as f64);
    f.add("pass_s", took);
    f.add("carried_per_s", tick.carried as f64 / took);
    f.add("bytes_written", written as f64);
    f.add("bytes_per_carried", written as f64 / tick.carried.max(1) as f64);
    // 364 days at 72 h retention: carried about 121 times.
    f.add("bytes_per_message_year", written as f64 / tick.carried.max(1) as f64 * (364.0 * 24.0 / 72.0));
    f.add("pending_after", timer.stats().pending_total as f64);
    if tick.carried < args.count {
        crate::note!("carry: carried {} of {} (pinned: {:?})", tick.carried, args.count, tick.pinned);
    }
    timer.shutdown().map_err(|e| e.to_string())?;
    store.shutdown().map_err(|e| e.to_string())?;
    Ok(f)
}
