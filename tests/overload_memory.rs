//! Overload: many clients push large sends at once. With admission control the server's
//! anonymous memory (RssAnon of the real binary) follows `admission.max_inflight_bytes` (plus a
//! connection read buffer per client, at most 64 KiB); without it (the budget set to 64 GiB) it
//! grows with all the bodies pushed. Prints both figures.
//!
//! The clients declare 1 MiB bodies and send them in 64 KiB pieces over about a second, so all
//! of them are in progress at once without writing much to disk.

mod common;

use std::time::{Duration, Instant};

use common::binary::{DumpLogsOnPanic, Proc};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CLIENTS: usize = 160;
const PIECE: usize = 64 * 1024;
const PIECES: usize = 16;

fn rss_anon_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
    let line = status.lines().find(|l| l.starts_with("RssAnon:")).expect("RssAnon line");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// One client: headers, then the body in pieces; returns the answer's status (0: cut off).
async fn push(addr: String) -> u16 {
    let body_len = PIECE * PIECES;
    let payload = "x".repeat(body_len - 12);
    let body = format!(r#"{{"body": "{payload}"}}"#);
    assert_eq!(body.len(), body_len);
    let Ok(mut c) = TcpStream::connect(&addr).await else { return 0 };
    let head = format!(
        "POST /v1/topics/load/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {body_len}\r\n\r\n"
    );
    if c.write_all(head.as_bytes()).await.is_err() {
        return 0;
    }
    for piece in body.as_bytes().chunks(PIECE) {
        tokio::time::sleep(Duration::from_millis(60)).await;
        if c.write_all(piece).await.is_err() {
            break; // refused and closed: the answer may still be readable
        }
    }
    let mut buf = [0u8; 12];
    match tokio::time::timeout(Duration::from_secs(30), c.read_exact(&mut buf)).await {
        Ok(Ok(_)) => std::str::from_utf8(&buf[9..12]).unwrap().parse().unwrap_or(0),
        _ => 0,
    }
}

/// Runs the load against a fresh server with `budget`; returns (peak RssAnon growth in KiB,
/// 201s, 429s). Every client must get one of the two.
async fn run(budget: &str, name: &str) -> (u64, usize, usize) {
    let dir = tempfile::tempdir().unwrap();
    let _dump = DumpLogsOnPanic(dir.path().to_path_buf());
    let http = reqwest::Client::new();
    let mut p = Proc::spawn(
        &dir.path().join("data"),
        dir.path().join(format!("{name}.stderr")),
        &[("CHIME_ADMISSION_MAX_INFLIGHT_BYTES", budget)],
    );
    p.wait_ready(&http).await;
    let pid = p.child.id();
    let baseline = rss_anon_kib(pid);
    let addr = p.base.trim_start_matches("http://").to_owned();
    let clients: Vec<_> = (0..CLIENTS).map(|_| tokio::spawn(push(addr.clone()))).collect();
    let mut peak = baseline;
    let start = Instant::now();
    while !clients.iter().all(|c| c.is_finished()) {
        peak = peak.max(rss_anon_kib(pid));
        assert!(start.elapsed() < Duration::from_secs(120), "load did not finish");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (mut ok, mut busy, mut other) = (0, 0, Vec::new());
    for c in clients {
        match c.await.unwrap() {
            201 => ok += 1,
            429 => busy += 1,
            s => other.push(s),
        }
    }
    assert!(other.is_empty(), "{name}: answers neither 201 nor 429 (0: none read): {other:?}");
    p.terminate().await;
    let growth = peak.saturating_sub(baseline);
    println!(
        "{name}: admission.max_inflight_bytes={budget}, {CLIENTS} clients x 1 MiB: RssAnon {baseline} KiB at rest, \
         peak {peak} KiB (+{growth} KiB); {ok} stored, {busy} refused 429"
    );
    (growth, ok, busy)
}

#[tokio::test]
async fn anonymous_memory_stays_bounded_under_overload() {
    let (bounded, ok, busy) = run("16MiB", "bounded").await;
    // About what fits in the budget at once is stored (16 x 1 MiB; some finish and make room
    // for others), the rest refused before their bodies.
    assert!((8..=48).contains(&ok), "{ok} stored, {busy} refused with a 16 MiB budget for 1 MiB bodies");
    let (unbounded, ok_all, busy_all) = run("64GiB", "unbounded").await;
    assert_eq!((ok_all, busy_all), (CLIENTS, 0), "without admission every send is stored");
    // The bound: the budget (16 MiB) times the copies a send makes, plus allocator slack.
    assert!(bounded < 80 * 1024, "RssAnon grew {bounded} KiB with a 16 MiB budget");
    // And the contrast, so the bound is admission's doing and not the load's size.
    assert!(unbounded > bounded + 48 * 1024, "without admission: +{unbounded} KiB, with: +{bounded} KiB");
}
