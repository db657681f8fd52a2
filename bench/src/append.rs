//! `append`: the store alone, in process, without HTTP.
//!
//! Each run opens a fresh store in a temporary directory (1 GiB segments, like the default
//! profile), creates topic "bench" with 8 queues and appends `count` messages of `bodies` bytes
//! in batches of `batch`, from `appenders` tokio tasks. Under `--flush sync` each task awaits
//! `wait_durable` after every batch, so concurrent tasks share fsyncs (group commit).
//!
//! Two times are reported: until the last append (or durable wait) returned, and until
//! `Store::shutdown` finished its final fsync, which is the fair figure to compare with a raw
//! `write` + `fdatasync` of the same number of bytes. That baseline is measured in the same run,
//! in the same parent directory, right after the store is closed (see [`disk_baseline`]).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chime::clock::{Clock, SystemClock};
use chime::store::record::{encoded_len, NewMessage};
use chime::store::{FlushPolicy, Store, StoreOptions};
use serde_json::json;

use crate::report::{new_histogram, record_us, Figures, Report};

const TOPIC: &str = "bench";
const QUEUES: u16 = 8;
const SEGMENT_SIZE: u64 = 1 << 30;
const CQ_SEGMENT_ENTRIES: u32 = 300_000;
const ASYNC_INTERVAL: Duration = Duration::from_millis(200);
const MB: f64 = 1e6;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Flush {
    Async,
    Sync,
}

#[derive(Debug, Clone, clap::Args)]
pub struct AppendArgs {
    /// Body size in bytes.
    #[arg(long, default_value_t = 256)]
    pub bodies: usize,
    /// Messages per run.
    #[arg(long, default_value_t = 2_000_000)]
    pub count: u64,
    /// async: fsync every 200ms in the background; sync: await durability after every batch.
    #[arg(long, value_enum, default_value_t = Flush::Async)]
    pub flush: Flush,
    /// Messages per append call (1 = single appends; >1 = all-or-nothing batches).
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Concurrent appending tasks. Default: 1 for async, 8 for sync.
    #[arg(long)]
    pub appenders: Option<usize>,
    /// Runs; the median of each figure is reported.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Parent directory for the temporary data directories. Default: the system temp dir.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Skip the raw write+fdatasync baseline.
    #[arg(long)]
    pub no_baseline: bool,
}

pub fn run(args: &AppendArgs) -> Result<Report, String> {
    if args.batch == 0 || args.count == 0 || args.runs == 0 {
        return Err("--batch, --count and --runs must be at least 1".into());
    }
    let appenders = args.appenders.unwrap_or(match args.flush {
        Flush::Async => 1,
        Flush::Sync => 8,
    });
    let parent = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let msg = NewMessage { body: vec![b'x'; args.bodies], born_ms: SystemClock.now_ms(), ..Default::default() };
    let record_bytes = encoded_len(TOPIC, &msg) as u64;
    let mut report = Report::new(
        "append",
        json!({
            "bodies": args.bodies, "count": args.count, "flush": format!("{:?}", args.flush).to_lowercase(),
            "batch": args.batch, "appenders": appenders, "runs": args.runs, "record_bytes": record_bytes,
            "segment_size": SEGMENT_SIZE, "queues": QUEUES, "dir": parent.display().to_string(),
        }),
    );
    for i in 0..args.runs {
        crate::note!("append: run {}/{}", i + 1, args.runs);
        let mut f = one_run(args, appenders, &parent, &msg, record_bytes)?;
        if !args.no_baseline {
            let total = record_bytes * args.count;
            let secs = disk_baseline(&parent, total).map_err(|e| format!("disk baseline: {e}"))?;
            let base_mb_s = total as f64 / MB / secs;
            f.add("baseline_write_fdatasync_mb_s", base_mb_s);
            let store_mb_s = f.get("mb_s_incl_final_fsync").unwrap_or(0.0);
            f.add("ratio_store_to_baseline", store_mb_s / base_mb_s);
        }
        report.runs.push(f);
    }
    if !args.no_baseline {
        report.extra.insert(
            "baseline".into(),
            json!(
                "the same number of bytes written with 1 MiB write() calls and one fdatasync, \
                   in the same parent directory, right after each store run"
            ),
        );
    }
    Ok(report)
}

fn one_run(
    args: &AppendArgs,
    appenders: usize,
    parent: &Path,
    msg: &NewMessage,
    record_bytes: u64,
) -> Result<Figures, String> {
    let dir = tempfile::Builder::new().prefix("chime-bench-append-").tempdir_in(parent).map_err(|e| e.to_string())?;
    let opts = StoreOptions {
        dir: dir.path().to_path_buf(),
        segment_size: SEGMENT_SIZE,
        cq_segment_entries: CQ_SEGMENT_ENTRIES,
        flush: match args.flush {
            Flush::Async => FlushPolicy::Async { interval: ASYNC_INTERVAL },
            Flush::Sync => FlushPolicy::Sync,
        },
        checkpoint_interval: ASYNC_INTERVAL,
    };
    let store = Store::open(opts, Arc::new(SystemClock)).map_err(|e| format!("open store: {e}"))?;
    let (topic, _) = store.topics().create(TOPIC, QUEUES).map_err(|e| format!("create topic: {e}"))?;
    let batches = args.count.div_ceil(args.batch as u64);
    let full: Arc<Vec<NewMessage>> = Arc::new(vec![msg.clone(); args.batch]);
    let last_len = (args.count - (batches - 1) * args.batch as u64) as usize;
    let last: Arc<Vec<NewMessage>> = Arc::new(vec![msg.clone(); last_len]);
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("bench-append")
        .build()
        .map_err(|e| e.to_string())?;
    let cpu0 = crate::report::cpu_seconds(None);
    let machine0 = crate::report::machine_busy_seconds();
    let bar = crate::progress::track("append", args.count, done.clone());
    let start = Instant::now();
    let hists = rt.block_on(async {
        let mut tasks = Vec::with_capacity(appenders);
        for _ in 0..appenders {
            let (store, topic, full, last, next, done) =
                (store.clone(), topic.clone(), full.clone(), last.clone(), next.clone(), done.clone());
            tasks.push(tokio::spawn(async move {
                let mut h = new_histogram();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= batches {
                        return Ok::<_, String>(h);
                    }
                    let msgs = if i + 1 == batches { &last[..] } else { &full[..] };
                    let t0 = Instant::now();
                    let r = store.append(&topic, msgs).map_err(|e| format!("append: {e}"))?;
                    store.wait_durable(r.end).await.map_err(|e| format!("wait_durable: {e}"))?;
                    record_us(&mut h, t0.elapsed());
                    done.fetch_add(msgs.len() as u64, Ordering::Relaxed);
                }
            }));
        }
        let mut hs = Vec::new();
        for t in tasks {
            hs.push(t.await.map_err(|e| e.to_string())??);
        }
        Ok::<_, String>(hs)
    })?;
    let appended = start.elapsed();
    drop(bar);
    store.shutdown().map_err(|e| format!("shutdown: {e}"))?;
    let total = start.elapsed();
    let cpu = crate::report::cpu_seconds(None).zip(cpu0).map(|(b, a)| b - a);
    let machine = crate::report::machine_busy_seconds().zip(machine0).map(|(b, a)| b - a);
    let log_bytes = store.log_bytes();
    drop(store);
    drop(rt);
    drop(dir);

    let mut h = new_histogram();
    for x in &hists {
        h.add(x).map_err(|e| e.to_string())?;
    }
    let n = args.count as f64;
    let bytes = (record_bytes * args.count) as f64;
    let mut f = Figures::default();
    f.add("msgs_per_s", n / appended.as_secs_f64());
    f.add("mb_s", bytes / MB / appended.as_secs_f64());
    f.add("elapsed_s", appended.as_secs_f64());
    f.add("msgs_per_s_incl_final_fsync", n / total.as_secs_f64());
    f.add("mb_s_incl_final_fsync", bytes / MB / total.as_secs_f64());
    f.add("final_fsync_s", (total - appended).as_secs_f64());
    f.add("log_bytes", log_bytes as f64);
    if let Some(c) = cpu {
        f.add("cpu_s", c);
        f.add("cpu_us_per_msg", c * 1e6 / n);
        if let Some(m) = machine {
            f.add("other_cores_busy", ((m - c) / total.as_secs_f64()).max(0.0));
        }
    }
    f.add_latency("batch_latency", &h);
    Ok(f)
}

/// Seconds to write `total` bytes sequentially (1 MiB `write` calls) into a new file under
/// `parent` and `fdatasync` it once; the file is removed afterwards.
pub fn disk_baseline(parent: &Path, total: u64) -> std::io::Result<f64> {
    let dir = tempfile::Builder::new().prefix("chime-bench-dd-").tempdir_in(parent)?;
    let path = dir.path().join("baseline");
    let buf = vec![0u8; 1 << 20];
    let start = Instant::now();
    let mut f = std::fs::File::create(&path)?;
    let mut left = total;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.sync_data()?;
    let secs = start.elapsed().as_secs_f64();
    drop(f);
    std::fs::remove_file(&path)?;
    Ok(secs)
}
