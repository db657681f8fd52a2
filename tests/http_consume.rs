//! Consumer groups over HTTP: receive, long poll, invisibility and redelivery (on a manual
//! clock), tag filters, acks, and progress across a clean restart.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chime::clock::ManualClock;
use common::{assert_error, test_config, TestServer};
use serde_json::json;

#[tokio::test]
async fn receive_returns_payload_as_sent_and_ack_consumes() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(&test_config(dir.path())).await;
    s.call("PUT", "/v1/topics/t", Some(r#"{"queues": 2}"#)).await;
    let (_, sent) =
        s.send("t", json!({"body": "text", "tag": "A", "keys": ["k1", "k2"], "properties": {"p": "v"}})).await;
    s.send("t", json!({"body_base64": "AP8="})).await;

    let got = s.receive("t", "g", json!({})).await;
    assert_eq!(got.len(), 2);
    let text = got.iter().find(|m| m["body"] == "text").expect("text message");
    assert_eq!(text["message_id"], sent["message_id"]);
    assert_eq!(text["topic"], "t");
    assert_eq!(text["tag"], "A");
    assert_eq!(text["keys"], json!(["k1", "k2"]));
    assert_eq!(text["properties"], json!({"p": "v"}));
    assert_eq!(text["delivery_attempt"], 1);
    assert!(text["visible_at_ms"].as_i64().unwrap() >= text["deliver_at_ms"].as_i64().unwrap());
    assert!(text.get("body_base64").is_none());
    let bin = got.iter().find(|m| m["body_base64"] == "AP8=").expect("binary message");
    assert_eq!(bin["tag"], serde_json::Value::Null);
    assert!(bin.get("body").is_none());

    // In flight: not received again while invisible.
    assert!(s.receive("t", "g", json!({})).await.is_empty());
    // Another group sees everything.
    assert_eq!(s.receive("t", "other", json!({})).await.len(), 2);

    let v = s.ack("t", "g", &got).await;
    assert_eq!(v["acked"], 2);
    assert_eq!(v["invalid"], json!([]));
    // Acking again: the handles are no longer valid.
    let v = s.ack("t", "g", &got).await;
    assert_eq!(v["acked"], 0);
    assert_eq!(v["invalid"].as_array().unwrap().len(), 2);
    let (st, v) = s.call("POST", "/v1/topics/t/groups/g/ack", Some(r#"{"receipt_handles": ["garbage", ""]}"#)).await;
    assert_eq!(st, 200);
    assert_eq!(v["invalid"], json!(["garbage", ""]));
    s.stop().await;
}

#[tokio::test]
async fn max_messages_and_store_order_per_queue() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(&test_config(dir.path())).await;
    s.call("PUT", "/v1/topics/q1", Some(r#"{"queues": 1}"#)).await;
    let batch: Vec<_> = (0..50).map(|i| json!({"body": format!("m{i}")})).collect();
    s.send("q1", json!(batch)).await;
    let mut bodies = Vec::new();
    loop {
        let got = s.receive("q1", "g", json!({"max_messages": 7})).await;
        if got.is_empty() {
            break;
        }
        assert!(got.len() <= 7);
        bodies.extend(got.iter().map(|m| m["body"].as_str().unwrap().to_string()));
    }
    let want: Vec<_> = (0..50).map(|i| format!("m{i}")).collect();
    assert_eq!(bodies, want, "one queue: store order");
    s.stop().await;
}

#[tokio::test]
async fn invisibility_ends_and_redelivery_counts_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_700_000_000_000);
    let s = TestServer::start_with_clock(&test_config(dir.path()), clock.clone()).await;
    s.send("t", json!({"body": "x"})).await;
    let first = s.receive("t", "g", json!({"invisible_ms": 5000})).await;
    assert_eq!(first[0]["delivery_attempt"], 1);
    clock.advance(4999);
    assert!(s.receive("t", "g", json!({})).await.is_empty(), "still invisible at 4999 ms");
    clock.advance(1);
    let second = s.receive("t", "g", json!({"invisible_ms": 1000})).await;
    assert_eq!(second.len(), 1);
    assert_eq!(second[0]["delivery_attempt"], 2);
    assert_eq!(second[0]["message_id"], first[0]["message_id"]);
    // The first handle was superseded by the redelivery.
    assert_eq!(s.ack("t", "g", &first).await["acked"], 0);
    assert_eq!(s.ack("t", "g", &second).await["acked"], 1);
    clock.advance(10_000);
    assert!(s.receive("t", "g", json!({})).await.is_empty(), "acked: never again");
    s.stop().await;
}

#[tokio::test]
async fn long_poll_wakes_on_send_and_times_out_empty() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(TestServer::start(&test_config(dir.path())).await);
    s.send("t", json!({"body": "first"})).await;
    assert_eq!(s.receive("t", "g", json!({})).await.len(), 1);

    // Empty after the wait.
    let t0 = Instant::now();
    assert!(s.receive("t", "g", json!({"wait_ms": 300})).await.is_empty());
    assert!(t0.elapsed() >= Duration::from_millis(290), "answered before the wait ended");

    // Woken by a send well before the wait ends.
    let s2 = s.clone();
    let waiter = tokio::spawn(async move {
        let t0 = Instant::now();
        let got = s2.receive("t", "g", json!({"wait_ms": 20000})).await;
        (got, t0.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.send("t", json!({"body": "wake"})).await;
    let (got, took) = waiter.await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["body"], "wake");
    // Nothing but the send can end it before its 20 s (no periodic re-check), so 5 s is room
    // for a loaded machine and still tells a wake from a time-out.
    assert!(took < Duration::from_secs(5), "long poll was not woken by the send: {took:?}");

    // A topic that does not exist: empty after the wait, and not created.
    assert!(s.receive("nosuch", "g", json!({"wait_ms": 50})).await.is_empty());
    let (_, v) = s.call("GET", "/v1/topics", None).await;
    assert_eq!(v["topics"].as_array().unwrap().len(), 1);
    Arc::try_unwrap(s).ok().unwrap().stop().await;
}

#[tokio::test]
async fn tag_expressions_filter_for_the_group() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(&test_config(dir.path())).await;
    s.call("PUT", "/v1/topics/t", Some(r#"{"queues": 1}"#)).await;
    for tag in ["A", "B", "C"] {
        s.send("t", json!({"body": tag, "tag": tag})).await;
    }
    s.send("t", json!({"body": "none"})).await;
    let got = s.receive("t", "ab", json!({"tag": "A || B"})).await;
    let bodies: Vec<_> = got.iter().map(|m| m["body"].as_str().unwrap()).collect();
    assert_eq!(bodies, ["A", "B"]);
    // README: what a group's expression skipped is skipped for that group for good; a later
    // receive with another expression does not get it back.
    s.ack("t", "ab", &got).await;
    assert!(s.receive("t", "ab", json!({"tag": "*"})).await.is_empty(), "skipped C and the untagged one came back");
    s.send("t", json!({"body": "C2", "tag": "C"})).await;
    let got = s.receive("t", "ab", json!({"tag": "C"})).await;
    let bodies: Vec<_> = got.iter().map(|m| m["body"].as_str().unwrap()).collect();
    assert_eq!(bodies, ["C2"], "only what was sent after the expression changed");
    let got = s.receive("t", "all", json!({"tag": "*"})).await;
    assert_eq!(got.len(), 5, "another group gets everything, the skipped ones included");
    for bad in [
        r#"{"tag": ""}"#,
        r#"{"tag": "A |"}"#,
        r#"{"max_messages": 0}"#,
        r#"{"max_messages": 1001}"#,
        r#"{"wait_ms": 30001}"#,
        r#"{"invisible_ms": 999}"#,
        r#"{"invisible_ms": 43200001}"#,
        r#"{"nope": 1}"#,
        "[1]",
    ] {
        let (st, v) = s.call("POST", "/v1/topics/t/groups/g/receive", Some(bad)).await;
        assert_error(st, &v, 400, "INVALID_ARGUMENT");
    }
    let (st, v) = s.call("POST", "/v1/topics/t/groups/bad.group/receive", None).await;
    assert_error(st, &v, 400, "INVALID_ARGUMENT");
    let (st, v) = s.call("POST", "/v1/topics/bad.topic/groups/g/receive", None).await;
    assert_error(st, &v, 400, "INVALID_TOPIC");
    let (st, v) = s.call("POST", "/v1/topics/t/groups/g/ack", Some("{}")).await;
    assert_error(st, &v, 400, "INVALID_ARGUMENT");
    s.stop().await;
}

#[tokio::test]
async fn progress_survives_a_clean_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let s = TestServer::start(&config).await;
    let batch: Vec<_> = (0..20).map(|i| json!({"body": format!("m{i}")})).collect();
    s.send("t", json!(batch)).await;
    let got = s.receive("t", "g", json!({"max_messages": 10, "invisible_ms": 1000})).await;
    assert_eq!(got.len(), 10);
    s.ack("t", "g", &got[..6]).await;
    s.stop().await;

    let s = TestServer::start(&config).await;
    let mut seen = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.len() < 14 && Instant::now() < deadline {
        for m in s.receive("t", "g", json!({"max_messages": 100, "wait_ms": 500})).await {
            assert!(seen.insert(m["body"].as_str().unwrap().to_string()), "duplicate {m}");
        }
    }
    let acked: Vec<_> = got[..6].iter().map(|m| m["body"].as_str().unwrap().to_string()).collect();
    assert_eq!(seen.len(), 14, "got {seen:?}");
    assert!(acked.iter().all(|b| !seen.contains(b)), "an acked message came back: {seen:?}");
    s.stop().await;
}

/// Two names of 127 characters each (both valid) made a progress file name of 260 bytes, over
/// the file system's 255: that group was never saved, and the persist pass stopped there, so
/// the groups after it were never saved either. Every group's acks must survive a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_of_groups_with_the_longest_names_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let long_topic = "t".repeat(127);
    let groups = ["g".repeat(127), "a".to_string(), "z".repeat(100)];
    let s = TestServer::start(&config).await;
    for topic in [long_topic.as_str(), "short"] {
        for i in 0..3 {
            let (st, v) = s.send(topic, json!({ "body": format!("m{i}") })).await;
            assert_eq!(st, 201, "{v}");
        }
        for g in &groups {
            let got = s.receive(topic, g, json!({"max_messages": 10})).await;
            assert_eq!(got.len(), 3, "{topic}/{g}");
            let a = s.ack(topic, g, &got).await;
            assert_eq!(a["acked"], 3, "{a}");
        }
    }
    s.stop().await; // persists every group; fails if one cannot be written
    let s = TestServer::start(&config).await;
    for topic in [long_topic.as_str(), "short"] {
        for g in &groups {
            let got = s.receive(topic, g, json!({"max_messages": 10})).await;
            assert!(got.is_empty(), "{topic}/{g}: acked messages delivered again after the restart: {got:?}");
        }
    }
    s.stop().await;
}
