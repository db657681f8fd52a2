//! Back-pressure on sends (src/http/admission.rs): 429 BUSY with Retry-After when the bodies
//! of the sends in progress would pass `admission.max_inflight_bytes`, or when the timer's
//! enqueue lag passes `admission.max_enqueue_lag`; a refused send stores nothing, and sends
//! pass again once the server has caught up.

mod common;

use std::time::{Duration, Instant};

use chime::config::{ByteSize, HumanDuration};
use chime::http::admission::memory::PROMISE_MIN_AGE;
use chime::store::fault;
use common::{assert_error, test_config, TestServer};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads one HTTP answer (headers and a Content-Length body) from `c`.
async fn read_answer(c: &mut TcpStream) -> (u16, String, Value) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(20), c.read(&mut chunk)).await.expect("answer").unwrap();
        assert!(n > 0, "closed without an answer: {}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let head = text[..end].to_ascii_lowercase();
            let len: usize =
                head.lines().find_map(|l| l.strip_prefix("content-length:")).map_or(0, |v| v.trim().parse().unwrap());
            if buf.len() >= end + 4 + len {
                let status = text[9..12].parse().unwrap();
                let body = serde_json::from_slice(&buf[end + 4..end + 4 + len]).unwrap_or(Value::Null);
                return (status, head, body);
            }
        }
    }
}

/// A figure from `/metrics`.
async fn gauge(s: &TestServer, name: &str) -> u64 {
    common::metrics::figure(&s.http, &s.base, name).await as u64
}

/// Waits (up to 10 s) until the figure `name` satisfies `ok`.
async fn wait_gauge(s: &TestServer, name: &str, ok: impl Fn(u64) -> bool) {
    let start = Instant::now();
    loop {
        let b = gauge(s, name).await;
        if ok(b) {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{name} {b}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn sends_over_the_memory_budget_are_refused_before_their_body_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.max_message_bytes = ByteSize::kib(512);
    config.max_request_bytes = ByteSize::mib(1);
    config.admission.max_inflight_bytes = ByteSize::mib(2);
    config.admission.retry_after = HumanDuration::from_secs(3);
    let s = TestServer::start(&config).await;
    let addr = s.running.as_ref().unwrap().addr;

    // Two sends that have sent all but the last byte of a 900 KiB body hold 1.8 MiB.
    let half = "x".repeat(450 * 1024 - 16);
    let body = format!(r#"[{{"body": "{half}"}}, {{"body": "{half}"}}]"#);
    assert!(body.len() > 800 * 1024 && body.len() <= 1024 * 1024);
    let head = |topic: &str| {
        format!(
            "POST /v1/topics/{topic}/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
    };
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(head("big").as_bytes()).await.unwrap();
        c.write_all(&body.as_bytes()[..body.len() - 1]).await.unwrap();
        held.push(c);
    }
    let held_bytes = 2 * (body.len() as u64 - 1);
    wait_gauge(&s, "chime_http_inflight_request_bytes", |b| b >= held_bytes).await;
    // A third that waits for `100 Continue` is refused as soon as its headers are in: its
    // declared body does not fit in what is left.
    let mut c = TcpStream::connect(addr).await.unwrap();
    let expect = head("third").replace("\r\n\r\n", "\r\nExpect: 100-continue\r\n\r\n");
    c.write_all(expect.as_bytes()).await.unwrap();
    let (status, headers, v) = read_answer(&mut c).await;
    assert_eq!(status, 429, "the third send, before its body: {headers} {v}");
    assert_error(429, &v, 429, "BUSY");
    assert!(headers.contains("retry-after: 3"), "{headers}");
    assert!(v["error"]["message"].as_str().unwrap().contains("max_inflight_bytes"), "{v}");
    // One that sends its body at once gets its 429 too, readable after the body (which was
    // dropped, not stored), on a connection that stays usable.
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(head("third").as_bytes()).await.unwrap();
    c.write_all(body.as_bytes()).await.unwrap();
    let (status, headers, v) = read_answer(&mut c).await;
    assert_eq!(status, 429, "{headers} {v}");
    assert_error(429, &v, 429, "BUSY");
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let (status, _, _) = read_answer(&mut c).await;
    assert_eq!(status, 200);
    // A small send fits in what is left.
    let (status, v) = s.send("small", json!({"body": "fits"})).await;
    assert_eq!(status, 201, "{v}");

    // The held sends complete normally once their last bytes arrive.
    for c in &mut held {
        c.write_all(&body.as_bytes()[body.len() - 1..]).await.unwrap();
        let (status, _, v) = read_answer(c).await;
        assert_eq!(status, 201, "{v}");
    }
    drop(held);
    // Their reservations are returned: a full-size send passes again.
    let (status, v) = s.call("POST", "/v1/topics/third/messages", Some(&body)).await;
    assert_eq!(status, 201, "{v}");
    let (_, v) = s.call("GET", "/v1/topics", None).await;
    let counts: Vec<(String, u64)> = v["topics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["name"].as_str().unwrap().to_owned(), t["messages"].as_u64().unwrap()))
        .collect();
    // Two held sends and the last one (2 messages each), and the small one.
    assert_eq!(counts.iter().map(|(_, n)| n).sum::<u64>(), 7, "{counts:?}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_sends_are_refused_while_the_timer_lags_and_normal_ones_pass() {
    // The timer is made to lag on purpose, not by hoping it falls behind a fast client: its log
    // cannot allocate a segment (a full disk, see tests/faults.rs), so scheduled messages are
    // stored but cannot enter the wheel. (Failpoints are global to the process; the filter
    // keeps this one off the other test's commit log.)
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.admission.max_enqueue_lag = 100;
    let s = TestServer::start(&config).await;
    fail::cfg(fault::ALLOCATE, "return(ENOSPC:timerlog)").unwrap();

    let batch: Value = (0..40).map(|i| json!({"body": format!("m{i}"), "delay_ms": 3_600_000})).collect();
    let batch = batch.to_string();
    // Sends pass until the lag is over 100 (the limit is checked before a send, and the lag is
    // re-read at most every LAG_RECHECK), then every scheduled send is refused.
    let mut accepted = 0u64;
    let deadline = Instant::now() + Duration::from_secs(30);
    let v = loop {
        let (status, v) = s.call("POST", "/v1/topics/sched/messages", Some(&batch)).await;
        match status {
            201 => accepted += 40,
            429 => break v,
            _ => panic!("{status} {v}"),
        }
        assert!(Instant::now() < deadline, "no scheduled send refused after {accepted} accepted");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert!(accepted > 100, "refused at a lag of {accepted}, within the limit of 100");
    assert_error(429, &v, 429, "BUSY");
    assert!(v["error"]["message"].as_str().unwrap().contains("max_enqueue_lag"), "{v}");
    let (_, stats) = s.call("GET", "/v1/timer/stats", None).await;
    assert!(stats["enqueue_lag"].as_u64().unwrap() > 100, "{stats}");
    // While the timer lags, a single scheduled message is refused as well...
    let (status, v) = s.send("sched", json!({"body": "one", "delay_ms": 3_600_000})).await;
    assert_error(status, &v, 429, "BUSY");
    // ...and normal messages are not held back.
    let (status, v) = s.send("sched", json!({"body": "normal"})).await;
    assert_eq!(status, 201, "{v}");

    // Space returns: the timer catches up, and scheduled sends pass again.
    fail::remove(fault::ALLOCATE);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, v) = s.send("sched", json!({"body": "later", "delay_ms": 3_600_000})).await;
        if status == 201 {
            accepted += 1;
            break;
        }
        assert_error(status, &v, 429, "BUSY");
        assert!(Instant::now() < deadline, "scheduled sends still refused after 30 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Refused sends stored nothing: the timer holds exactly what was accepted.
    let v = s.wait_stats("the timer to catch up", 30, |v| v["enqueue_lag"] == 0).await;
    assert_eq!(v["pending_total"].as_u64().unwrap(), accepted, "{v}");
    s.stop().await;
    scenario.teardown();
}

/// Issue 11, item 3: connections that declare a large body and trickle it hold only what they
/// have sent, so a few slow clients do not lock every other send out. (Before, admission
/// charged the declared `Content-Length` until `http.body_read_timeout`: four of these made
/// every send 429.)
#[tokio::test]
async fn slow_bodies_hold_only_what_has_arrived() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.max_message_bytes = ByteSize::kib(512);
    config.max_request_bytes = ByteSize::mib(1);
    config.admission.max_inflight_bytes = ByteSize::mib(2);
    config.http.body_read_timeout = HumanDuration::from_secs(30);
    let s = TestServer::start(&config).await;
    let addr = s.running.as_ref().unwrap().addr;

    // Four clients declare the largest body allowed and send one byte of it.
    let mut slow = Vec::new();
    for _ in 0..4 {
        let mut c = TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "POST /v1/topics/slow/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n[",
            1024 * 1024
        );
        c.write_all(head.as_bytes()).await.unwrap();
        slow.push(c);
    }
    // Two of them fit in the budget by what they declared and are admitted (the other two are
    // refused); once their promises are older than PROMISE_MIN_AGE, the first send that needs
    // the room revokes them, and they hold only the byte each has sent.
    wait_gauge(&s, "chime_http_promised_request_bytes", |b| b >= 2 * (1024 * 1024 - 1)).await;
    tokio::time::sleep(2 * PROMISE_MIN_AGE).await;
    // Every other send still passes, small and large.
    let big = format!(r#"{{"body": "{}"}}"#, "y".repeat(500 * 1024));
    for i in 0..20 {
        let (status, v) = s.send("fast", json!({"body": format!("m{i}")})).await;
        assert_eq!(status, 201, "send {i} behind four slow bodies: {v}");
    }
    let (status, v) = s.call("POST", "/v1/topics/fast/messages", Some(&big)).await;
    assert_eq!(status, 201, "a 500 KiB send behind four slow bodies: {v}");
    assert_eq!(gauge(&s, "chime_http_inflight_request_bytes").await, 2, "the slow sends hold what they sent");
    // Revoked only as far as room was needed: the 500 KiB send took one slow send's promise.
    assert_eq!(gauge(&s, "chime_http_request_promises_revoked_total").await, 1);
    assert_eq!(gauge(&s, "chime_http_promised_request_bytes").await, 1024 * 1024 - 1);
    drop(slow);
    s.stop().await;
}
