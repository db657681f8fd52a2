//! Retention in real time, over HTTP: tiny segments and a retention of two seconds while normal
//! and scheduled messages stream in. The log stays bounded, old segments are reclaimed, the
//! scheduled messages in them are carried forward and still fire once at their time under
//! their ids, a cancel of a carried-forward one holds, and a group that was not reading counts
//! what it missed as expired.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chime::config::{ByteSize, HumanDuration};
use common::{test_config, TestServer};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_retention_keeps_the_log_bounded_and_every_scheduled_message() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.max_message_bytes = ByteSize::kib(16);
    config.max_request_bytes = ByteSize::mib(1);
    config.admission.max_inflight_bytes = ByteSize::mib(64);
    config.store.segment_size = ByteSize::kib(128);
    config.store.retention = HumanDuration::from_secs(2);
    config.store.retention_check_interval = HumanDuration::from_millis(200);
    let s = TestServer::start(&config).await;

    let start = Instant::now();
    let due = chrono_now_ms() + 9_000;
    let body = "n".repeat(1000);
    let mut scheduled: Vec<String> = Vec::new();
    let mut sent_bytes = 0u64;
    while start.elapsed() < Duration::from_secs(6) {
        let mut batch: Vec<Value> = (0..50).map(|_| json!({"body": body})).collect();
        batch.push(json!({"body": format!("s{}", scheduled.len()), "deliver_at_ms": due}));
        let (st, v) = s.call("POST", "/v1/topics/rt/messages", Some(&Value::from(batch).to_string())).await;
        assert_eq!(st, 201, "{v}");
        scheduled.push(v["messages"].as_array().unwrap().last().unwrap()["message_id"].as_str().unwrap().into());
        sent_bytes += 51 * 1100;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Reclaimed and carried forward while the load ran; the log holds a few segments, not all.
    let (_, st) = s.call("GET", "/v1/storage", None).await;
    assert!(st["reclaimed"]["segments"].as_u64().unwrap() > 0, "{st}");
    assert!(st["carried_forward"].as_u64().unwrap() > 0, "{st}");
    let log = st["commitlog"]["bytes"].as_u64().unwrap();
    assert!(log < sent_bytes / 2, "the log stays bounded: {log} bytes of {sent_bytes} sent: {st}");
    assert!(st["commitlog"]["first_offset"].as_u64().unwrap() > 0, "{st}");
    assert!(st["timer"]["moved_ids"].as_u64().unwrap() > 0, "carried ids lead to their copies: {st}");
    assert!(st["timer"]["state_files"].as_u64().unwrap() >= 1, "{st}");

    // A cancel of a carried-forward message, by the id its send returned, holds.
    let (code, v) = s.call("DELETE", &format!("/v1/topics/rt/messages/{}", scheduled[0]), None).await;
    assert_eq!(code, 200, "{v}");
    let (code, v) = s.call("GET", &format!("/v1/topics/rt/messages/{}", scheduled[1]), None).await;
    assert_eq!((code, v["state"].as_str()), (200, Some("scheduled")), "{v}");

    // Every other scheduled message fires once, at its time, under its id.
    let mut got: BTreeMap<String, u32> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(40);
    while got.len() < scheduled.len() - 1 {
        assert!(Instant::now() < deadline, "{} of {} fired", got.len(), scheduled.len() - 1);
        let msgs = s.receive("rt", "sched", json!({"max_messages": 1000, "wait_ms": 500})).await;
        s.ack("rt", "sched", &msgs).await;
        for m in &msgs {
            if m["body"].as_str().unwrap().starts_with('s') {
                assert!(m["visible_at_ms"].as_i64().unwrap() >= due, "never early: {m}");
                *got.entry(m["message_id"].as_str().unwrap().to_string()).or_default() += 1;
            }
        }
    }
    assert!(!got.contains_key(&scheduled[0]), "the cancelled one never fires");
    assert!(scheduled[1..].iter().all(|id| got.get(id) == Some(&1)), "each fires once, under its id");
    s.stop().await;
}

fn chrono_now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}
