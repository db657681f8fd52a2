//! `chime-bench`: throughput and latency of chime, in process (`append`) and over HTTP
//! (`http-send`, `http-receive`).
//!
//! The workloads are deterministic: fixed bodies of `x` bytes, requests handed out from one
//! shared counter; nothing is random, so there is no seed to record. Every subcommand runs
//! `--runs` times and reports the median of each figure; with `--json` the last stdout line is
//! one JSON object (scenario, params, runs, median) for a later run to compare against.
//! Progress goes to stderr. Results on the reference machine are in `bench/RESULTS.md`.

mod append;
mod http;
mod http_receive;
mod http_send;
mod report;
mod target;

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.cmd {
        Cmd::Append(a) => append::run(a),
        Cmd::HttpSend(a) => http_send::run(a),
        Cmd::HttpReceive(a) => http_receive::run(a),
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
