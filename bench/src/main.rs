//! `chime-bench`: throughput and latency of chime, in process (`append`, `wheel-flush`,
//! `enqueue`) and over HTTP (`http-send`, `http-receive`, `same-timestamp`, `burst`, `pending`).
//!
//! The workloads are deterministic: fixed bodies of `x` bytes, requests handed out from one
//! shared counter; the timer scenarios draw deliver times and wheel slots from a fixed seed
//! (`rng::SEED`, recorded in their JSON). Subcommands repeat (`--runs`, or `--reps` for
//! `wheel-flush`) and report the median of each figure; with `--json` the last stdout line is
//! one JSON object (scenario, params, runs, median) for a later run to compare against.
//! Progress goes to stderr. Results on the reference machine are in `bench/RESULTS.md`.

mod append;
mod dist;
mod enqueue;
mod http;
mod http_receive;
mod http_send;
mod pending;
mod report;
mod rng;
mod target;
mod timer_http;
mod wheel_flush;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "chime-bench", about = "Benchmarks and load generator for chime")]
struct Cli {
    /// Print the results as one JSON object on the last line of stdout.
    #[arg(long, global = true)]
    json: bool,
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
    /// Scheduled messages all due at one millisecond, received by long-polling consumers:
    /// lateness on the client's clock and by the server's visible_at_ms.
    SameTimestamp(timer_http::SameTimestampArgs),
    /// Scheduled messages (1M by default) due within one second: how late the last is visible.
    Burst(timer_http::BurstArgs),
    /// The timer wheel's flush with N dirty slots, against RocketMQ's whole-wheel
    /// compare-and-copy (in process).
    WheelFlush(wheel_flush::WheelFlushArgs),
    /// Scheduled messages through the timer's enqueue pipeline into the wheel (in process).
    Enqueue(enqueue::EnqueueArgs),
    /// Memory (RssAnon) of a server holding N pending scheduled messages.
    Pending(pending::PendingArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.cmd {
        Cmd::Append(a) => append::run(a),
        Cmd::HttpSend(a) => http_send::run(a),
        Cmd::HttpReceive(a) => http_receive::run(a),
        Cmd::SameTimestamp(a) => timer_http::run_same_timestamp(a),
        Cmd::Burst(a) => timer_http::run_burst(a),
        Cmd::WheelFlush(a) => wheel_flush::run(a),
        Cmd::Enqueue(a) => enqueue::run(a),
        Cmd::Pending(a) => pending::run(a),
    };
    match result {
        Ok(report) => {
            report.print(cli.json);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("chime-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
