//! `chime-bench`: throughput and latency of chime, in process (`append`, `wheel-flush`,
//! `enqueue`) and over HTTP (`http-send`, `http-receive`, `ingest`, `cancel`, `same-timestamp`,
//! `burst`, `spread`, `steady`, `pending`).
//!
//! The workloads are deterministic: fixed bodies of `x` bytes, requests handed out from one
//! shared counter; the timer scenarios draw deliver times and wheel slots from a fixed seed
//! (`rng::SEED`, recorded in their JSON). Subcommands repeat (`--runs`, or `--reps` for
//! `wheel-flush`) and report the median of each figure; with `--json` the last stdout line is
//! one JSON object (scenario, params, runs, median) for a later run to compare against
//! (`--compare PREVIOUS.json`, or the `compare` subcommand). Progress goes to stderr: notes, and
//! a progress bar for phases longer than a few seconds when stderr is a terminal and `--json` is
//! not given. Results on the reference machine are in `bench/RESULTS.md`.
//!
//! Exit status: 0 on success, 1 if the run failed, 2 if `--compare` found a figure more than
//! the threshold worse than the previous run's.

use std::path::PathBuf;
use std::process::ExitCode;

use chime_bench::{
    append, cancel, carry, compare, dedup, enqueue, fifo, http_receive, http_send, ingest, key_lookup, note, pending,
    progress, timer_http, txn, wheel_flush,
};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "chime-bench", about = "Benchmarks and load generator for chime")]
struct Cli {
    /// Print the results as one JSON object on the last line of stdout (and no progress bar).
    #[arg(long, global = true)]
    json: bool,
    /// Compare this run with a previous one (a file whose last line is a `--json` result of the
    /// same scenario) and flag every figure more than --threshold percent worse; exit status 2
    /// if any is.
    #[arg(long, global = true, value_name = "PREVIOUS.json")]
    compare: Option<PathBuf>,
    /// How much worse (percent) a figure may get before --compare flags it.
    #[arg(long, global = true, default_value_t = compare::DEFAULT_THRESHOLD_PCT)]
    threshold: f64,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Append to a Store in process (no HTTP): messages/s and MB/s, against a raw-write baseline.
    Append(append::AppendArgs),
    /// Send messages over HTTP with keep-alive: messages/s, requests/s and latency percentiles.
    HttpSend(http_send::HttpSendArgs),
    /// Preload messages, then receive and ack them over HTTP with concurrent consumers.
    HttpReceive(http_receive::HttpReceiveArgs),
    /// Normal and scheduled sends, single and in batches, on the default and durable profiles:
    /// messages/s accepted (and, for scheduled ones, placed in the wheel).
    Ingest(ingest::IngestArgs),
    /// Scheduled messages cancelled one DELETE each, on the default and durable profiles:
    /// cancels/s and latency (each cancel fsyncs its state cell before answering).
    Cancel(cancel::CancelArgs),
    /// Scheduled messages all due at one millisecond, received by long-polling consumers:
    /// lateness on the client's clock and by the server's visible_at_ms.
    SameTimestamp(timer_http::SameTimestampArgs),
    /// Scheduled messages (1M by default) due within one second: how late the last is visible.
    Burst(timer_http::BurstArgs),
    /// RocketMQ's TimerProducer shape: S slots (seconds) × M messages each, sent shuffled.
    Spread(timer_http::SpreadArgs),
    /// A constant fire rate for a while, each message sent a few seconds ahead of its time:
    /// lateness over time, one row per second.
    Steady(timer_http::SteadyArgs),
    /// The timer wheel's flush with N dirty slots, against RocketMQ's whole-wheel
    /// compare-and-copy (in process).
    WheelFlush(wheel_flush::WheelFlushArgs),
    /// Scheduled messages through the timer's enqueue pipeline into the wheel (in process).
    Enqueue(enqueue::EnqueueArgs),
    /// Retention reclaiming segments full of pending scheduled messages: the carry-forward's
    /// time and bytes (in process).
    Carry(carry::CarryArgs),
    /// Lookups by business key (hits and misses) after each of several log sizes (10M by
    /// default): latency percentiles over HTTP and their growth with the log.
    KeyLookup(key_lookup::KeyLookupArgs),
    /// FIFO consumer groups with 1, 100 and 10,000 message groups: receive + ack against a
    /// plain group in the same run.
    Fifo(fifo::FifoArgs),
    /// Sends with a dedup_id against without, repeats, and memory with 1M ids in the window.
    Dedup(dedup::DedupArgs),
    /// Transactions (prepare + commit) of 1 and 10 messages against plain sends, the
    /// commit-to-visible latency, and memory and restart time with open transactions.
    Txn(txn::TxnArgs),
    /// Memory (RssAnon) of a server holding N pending scheduled messages.
    Pending(pending::PendingArgs),
    /// Compare two `--json` results of one scenario (as `--compare` does after a run).
    Compare {
        /// The earlier result.
        previous: PathBuf,
        /// The later result.
        current: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    progress::init(cli.json);
    if let Cmd::Compare { previous, current } = &cli.cmd {
        return match (compare::load(previous), compare::load(current)) {
            (Ok(p), Ok(c)) => finish_compare(&p, &c, cli.threshold, cli.json, previous),
            (Err(e), _) | (_, Err(e)) => {
                eprintln!("chime-bench: {e}");
                ExitCode::FAILURE
            }
        };
    }
    // Read the previous result first: a bad path should fail before a long run, not after.
    let previous = match cli.compare.as_deref().map(compare::load).transpose() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("chime-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(p) = &previous {
        let want = scenario_name(&cli.cmd);
        if p["scenario"] != want {
            eprintln!(
                "chime-bench: --compare: the previous result is of scenario {}, this run is {want:?}",
                p["scenario"]
            );
            return ExitCode::FAILURE;
        }
    }
    let result = match &cli.cmd {
        Cmd::Append(a) => append::run(a),
        Cmd::HttpSend(a) => http_send::run(a),
        Cmd::HttpReceive(a) => http_receive::run(a),
        Cmd::Ingest(a) => ingest::run(a),
        Cmd::Cancel(a) => cancel::run(a),
        Cmd::SameTimestamp(a) => timer_http::run_same_timestamp(a),
        Cmd::Burst(a) => timer_http::run_burst(a),
        Cmd::Spread(a) => timer_http::run_spread(a),
        Cmd::Steady(a) => timer_http::run_steady(a),
        Cmd::WheelFlush(a) => wheel_flush::run(a),
        Cmd::Enqueue(a) => enqueue::run(a),
        Cmd::Carry(a) => carry::run(a),
        Cmd::Pending(a) => pending::run(a),
        Cmd::KeyLookup(a) => key_lookup::run(a),
        Cmd::Fifo(a) => fifo::run(a),
        Cmd::Dedup(a) => dedup::run(a),
        Cmd::Txn(a) => txn::run(a),
        Cmd::Compare { .. } => unreachable!("handled above"),
    };
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!("chime-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let Some(previous) = previous else {
        report.print(cli.json);
        return ExitCode::SUCCESS;
    };
    let path = cli.compare.as_deref().expect("set with previous");
    let current = report.to_json();
    match compare::compare(&previous, &current, cli.threshold) {
        Ok(c) => {
            // The run's own output first; in JSON mode its last line stays the run's object,
            // with the comparison's verdict added.
            if cli.json {
                let mut v = current;
                v["comparison"] = c.to_json(path);
                println!("{v}");
                eprint!("{}", c.table(path));
            } else {
                report.print(false);
                println!();
                print!("{}", c.table(path));
            }
            if c.regressed() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            report.print(cli.json);
            note!("chime-bench: --compare: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The `scenario` of the report a subcommand produces.
fn scenario_name(cmd: &Cmd) -> &'static str {
    match cmd {
        Cmd::Append(_) => "append",
        Cmd::HttpSend(_) => "http-send",
        Cmd::HttpReceive(_) => "http-receive",
        Cmd::Ingest(_) => "ingest",
        Cmd::Cancel(_) => "cancel",
        Cmd::SameTimestamp(_) => "same-timestamp",
        Cmd::Burst(_) => "burst",
        Cmd::Spread(_) => "spread",
        Cmd::Steady(_) => "steady",
        Cmd::WheelFlush(_) => "wheel-flush",
        Cmd::Enqueue(_) => "enqueue",
        Cmd::Carry(_) => "carry",
        Cmd::Pending(_) => "pending",
        Cmd::KeyLookup(_) => "key-lookup",
        Cmd::Fifo(_) => "fifo",
        Cmd::Dedup(_) => "dedup",
        Cmd::Txn(_) => "txn",
        Cmd::Compare { .. } => "compare",
    }
}

fn finish_compare(
    previous: &serde_json::Value,
    current: &serde_json::Value,
    threshold: f64,
    json: bool,
    path: &std::path::Path,
) -> ExitCode {
    match compare::compare(previous, current, threshold) {
        Ok(c) => {
            if json {
                println!("{}", c.to_json(path));
            } else {
                print!("{}", c.table(path));
            }
            if c.regressed() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("chime-bench: compare: {e}");
            ExitCode::FAILURE
        }
    }
}
