//! `http-send`: `POST /v1/topics/bench/messages` from `concurrency` keep-alive tasks.
//!
//! Each run starts a fresh server (unless `--url`), creates topic "bench" with 8 queues, sends
//! `count` messages in requests of `batch`, then checks through `GET /v1/topics` that the topic
//! grew by exactly `count`. CPU time of the server process and of this process are reported
//! apart (in process they are one figure), which shows which side a slow run spends its time in.

use serde_json::json;

use crate::http::{self, SendPlan};
use crate::report::{cpu_seconds, machine_busy_seconds, Figures, Report};
use crate::target::{Mode, RunArgs, Target};

pub const TOPIC: &str = "bench";
pub const QUEUES: u16 = 8;

#[derive(Debug, Clone, clap::Args)]
pub struct HttpSendArgs {
    /// Messages per run.
    #[arg(long, default_value_t = 200_000)]
    pub count: u64,
    /// Messages per request (1 = single-message body; 2..=1000 = JSON array).
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Concurrent requests (tasks sharing one keep-alive client).
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Body size in bytes.
    #[arg(long, default_value_t = 256)]
    pub bodies: usize,
    #[command(flatten)]
    pub run: RunArgs,
}

pub fn client_runtime(threads: Option<usize>) -> Result<tokio::runtime::Runtime, String> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = threads {
        b.worker_threads(n.max(1));
    }
    b.enable_all().thread_name("bench-client").build().map_err(|e| e.to_string())
}

/// CPU seconds of the server process and of this one, read at two points of a run.
pub struct CpuMeter {
    server_pid: Option<u32>,
    server0: Option<f64>,
    self0: Option<f64>,
    machine0: Option<f64>,
}

impl CpuMeter {
    pub fn start(target: &Target) -> Self {
        let server_pid = target.server_pid();
        Self {
            server_pid,
            server0: server_pid.and_then(|p| cpu_seconds(Some(p))),
            self0: cpu_seconds(None),
            machine0: machine_busy_seconds(),
        }
    }

    /// Adds `server_cpu_s` / `client_cpu_s` (or `process_cpu_s` in process), per-message µs, and
    /// `other_cores_busy`: what the rest of the machine used meanwhile (a shared machine).
    pub fn finish(&self, f: &mut Figures, mode: Mode, messages: u64, elapsed_s: f64) {
        let own = cpu_seconds(None).zip(self.self0).map(|(b, a)| b - a);
        let server = self.server_pid.and_then(|p| cpu_seconds(Some(p))).zip(self.server0).map(|(b, a)| b - a);
        let n = messages.max(1) as f64;
        if let Some(s) = server {
            f.add("server_cpu_s", s);
            f.add("server_cores_busy", s / elapsed_s);
            f.add("server_cpu_us_per_msg", s * 1e6 / n);
        }
        if let Some(c) = own {
            let name = if mode == Mode::InProcess { "process" } else { "client" };
            f.add(&format!("{name}_cpu_s"), c);
            f.add(&format!("{name}_cores_busy"), c / elapsed_s);
            f.add(&format!("{name}_cpu_us_per_msg"), c * 1e6 / n);
        }
        if let Some(m) = machine_busy_seconds().zip(self.machine0).map(|(b, a)| b - a) {
            let ours = own.unwrap_or(0.0) + server.unwrap_or(0.0);
            f.add("other_cores_busy", ((m - ours) / elapsed_s).max(0.0));
        }
    }
}

pub fn run(args: &HttpSendArgs) -> Result<Report, String> {
    if args.count == 0 || args.batch == 0 || args.batch > 1000 || args.concurrency == 0 || args.run.runs == 0 {
        return Err("--count, --concurrency and --runs must be at least 1 and --batch 1..=1000".into());
    }
    let mode = args.run.target.mode()?;
    let rt = client_runtime(args.run.client_threads)?;
    let params =
        json!({"count": args.count, "batch": args.batch, "concurrency": args.concurrency, "bodies": args.bodies});
    let mut report = Report::new("http-send", args.run.params(params)?);
    report.runs = args.run.each("http-send", |target| one_run(args, &rt, target, mode))?;
    Ok(report)
}

fn one_run(args: &HttpSendArgs, rt: &tokio::runtime::Runtime, target: &Target, mode: Mode) -> Result<Figures, String> {
    let base = target.base().to_owned();
    let client = http::client(args.concurrency)?;
    let plan = SendPlan::normal(args.count, args.batch, args.bodies, args.concurrency);
    let before = rt.block_on(async {
        http::create_topic(&client, &base, TOPIC, QUEUES).await?;
        http::topic_messages(&client, &base, TOPIC).await
    })?;
    let cpu = CpuMeter::start(target);
    let out = rt.block_on(http::send_all(&client, &base, TOPIC, plan))?;
    let secs = out.elapsed.as_secs_f64();
    let mut f = Figures::default();
    f.add("msgs_per_s", args.count as f64 / secs);
    f.add("requests_per_s", out.requests as f64 / secs);
    f.add("elapsed_s", secs);
    f.add_latency("request_latency", &out.latency);
    cpu.finish(&mut f, mode, args.count, secs);
    let after = rt.block_on(http::topic_messages(&client, &base, TOPIC))?;
    if after - before != args.count {
        return Err(format!("topic {TOPIC} grew by {} messages, expected {}", after - before, args.count));
    }
    Ok(f)
}
