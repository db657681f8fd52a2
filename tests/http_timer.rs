//! Scheduled messages over HTTP: every delay form, status, cancel, a mixed batch, and the
//! 10,000-messages-with-one-timestamp test (all arrive, none early).

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{assert_error, test_config, TestServer};
use serde_json::json;

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

#[tokio::test]
async fn schedule_status_cancel_and_receive() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(&test_config(dir.path())).await;
    let t0 = now_ms();
    let (st, a) = s.send("t", json!({"body": "a", "delay_ms": 700, "tag": "T", "properties": {"p": "1"}})).await;
    assert_eq!(st, 201, "{a}");
    assert_eq!(a["state"], "scheduled");
    let at = a["deliver_at_ms"].as_i64().unwrap();
    assert!(at >= t0 + 700 && at < t0 + 5_000, "{a}");
    let (_, b) = s.send("t", json!({"body": "b", "delay_ms": 600})).await;
    let (_, c) = s.send("t", json!({"body": "c", "deliver_at": "2999-01-01T00:00:00Z", "delay_ms": null})).await;
    assert_error(400, &c, 400, "DELAY_OUT_OF_RANGE");
    let (st, lvl) = s.send("t", json!({"body": "lvl", "delay_level": 2})).await;
    assert_eq!(st, 201);
    assert!(lvl["deliver_at_ms"].as_i64().unwrap() >= t0 + 5_000);

    let id_a = a["message_id"].as_str().unwrap();
    let id_b = b["message_id"].as_str().unwrap();
    let (st, v) = s.call("GET", &format!("/v1/topics/t/messages/{id_a}"), None).await;
    assert_eq!(st, 200);
    assert_eq!(v["state"], "scheduled");
    assert_eq!(v["deliver_at_ms"], at);
    // The same id under another topic is unknown.
    let (st, v) = s.call("GET", &format!("/v1/topics/u/messages/{id_a}"), None).await;
    assert_error(st, &v, 404, "NOT_FOUND");
    let (st, v) = s.call("DELETE", &format!("/v1/topics/u/messages/{id_a}"), None).await;
    assert_error(st, &v, 404, "NOT_FOUND");

    let (st, v) = s.call("DELETE", &format!("/v1/topics/t/messages/{id_b}"), None).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v, json!({"message_id": id_b, "state": "cancelled"}));
    let (st, v) = s.call("DELETE", &format!("/v1/topics/t/messages/{id_b}"), None).await;
    assert_eq!(st, 200, "cancelling again answers the same: {v}");
    let (_, v) = s.call("GET", "/v1/topics", None).await;
    assert_eq!(v["topics"][0]["scheduled"], 2, "{v}");

    // Receive: only a arrives, at or after its time, with the id the send returned.
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.is_empty() && Instant::now() < deadline {
        got = s.receive("t", "g", json!({"wait_ms": 2000})).await;
    }
    assert_eq!(got.len(), 1, "{got:?}");
    let m = &got[0];
    assert_eq!(m["message_id"], id_a);
    assert_eq!(m["body"], "a");
    assert_eq!(m["tag"], "T");
    assert_eq!(m["properties"], json!({"p": "1"}), "system properties are hidden");
    assert_eq!(m["deliver_at_ms"], at);
    assert!(m["visible_at_ms"].as_i64().unwrap() >= at, "early: {m}");
    assert!(now_ms() >= at);
    let (st, v) = s.call("GET", &format!("/v1/topics/t/messages/{id_a}"), None).await;
    assert_eq!((st, v["state"].as_str()), (200, Some("delivered")));
    let (st, v) = s.call("DELETE", &format!("/v1/topics/t/messages/{id_a}"), None).await;
    assert_error(st, &v, 409, "ALREADY_DELIVERED");
    let (_, v) = s.call("GET", &format!("/v1/topics/t/messages/{id_b}"), None).await;
    assert_eq!(v["state"], "cancelled");
    // b never shows up.
    assert!(s.receive("t", "g", json!({"wait_ms": 500})).await.is_empty());
    s.stop().await;
}

#[tokio::test]
async fn a_mixed_batch_answers_each_message_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(&test_config(dir.path())).await;
    let (st, v) = s
        .send("t", json!([{"body": "now"}, {"body": "later", "delay_ms": 300}, {"body": "past", "deliver_at_ms": 5}]))
        .await;
    assert_eq!(st, 201, "{v}");
    let states: Vec<_> = v["messages"].as_array().unwrap().iter().map(|m| m["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["delivered", "scheduled", "delivered"]);
    let mut bodies = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while bodies.len() < 3 && Instant::now() < deadline {
        for m in s.receive("t", "g", json!({"wait_ms": 1000})).await {
            bodies.insert(m["body"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(bodies.len(), 3, "{bodies:?}");
    s.stop().await;
}

#[tokio::test]
async fn ten_thousand_with_one_timestamp_all_arrive_none_early() {
    const N: usize = 10_000;
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(&test_config(dir.path())).await;
    let at = now_ms() + 2_500;
    for chunk in 0..N / 1000 {
        let batch: Vec<_> =
            (0..1000).map(|i| json!({"body": format!("m{}", chunk * 1000 + i), "deliver_at_ms": at})).collect();
        let (st, v) = s.send("burst", json!(batch)).await;
        assert_eq!(st, 201, "{v}");
    }
    assert!(now_ms() < at, "sending took too long for the test to mean anything");
    let mut seen = HashSet::new();
    let mut max_late = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.len() < N && Instant::now() < deadline {
        let got = s.receive("burst", "g", json!({"wait_ms": 1000, "max_messages": 1000})).await;
        let received_at = now_ms();
        for m in &got {
            let visible = m["visible_at_ms"].as_i64().unwrap();
            assert_eq!(m["deliver_at_ms"], at);
            assert!(visible >= at, "visible at {visible}, before {at}");
            assert!(received_at >= at, "received before its time");
            max_late = max_late.max(visible - at);
            assert!(seen.insert(m["body"].as_str().unwrap().to_string()), "duplicate {m}");
        }
        if !got.is_empty() {
            s.ack("burst", "g", &got).await;
        }
    }
    if seen.len() != N {
        let (_, stats) = s.call("GET", "/v1/timer/stats", None).await;
        let (_, topics) = s.call("GET", "/v1/topics", None).await;
        panic!("received {} of {N}; stats {stats}; topics {topics}", seen.len());
    }
    println!("10k same-timestamp: server-side max lateness {max_late} ms");
    // All 10k visible within half a second of their millisecond, in a debug build on two
    // noisy cores (74-96 ms seen); the release figures are in bench/RESULTS.md (`burst`).
    assert!(max_late < 500, "the last of the burst became visible {max_late} ms after its time");
    let (_, stats) = s.call("GET", "/v1/timer/stats", None).await;
    assert_eq!(stats["lateness_ms"]["count"], N as u64, "{stats}");
    assert_eq!(stats["pending_total"], 0, "{stats}");
    s.stop().await;
}
