//! Limits and hardening (API.md "Limits and hardening"): quotas on topics and consumer groups
//! (403 LIMIT_EXCEEDED naming the limit), and a long poll on a topic that does not exist yet.

mod common;

use std::time::{Duration, Instant};

use common::{assert_error, test_config, TestServer};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_past_the_quota_are_refused_and_existing_ones_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.limits.max_topics = 3;
    let s = TestServer::start(&config).await;
    let (st, v) = s.call("PUT", "/v1/topics/a", None).await;
    assert_eq!(st, 201, "{v}");
    for t in ["b", "c"] {
        let (st, v) = s.send(t, json!({"body": "x"})).await;
        assert_eq!(st, 201, "{v}");
    }
    // Past the quota: by a first send and by PUT.
    let (st, v) = s.send("d", json!({"body": "x"})).await;
    assert_error(st, &v, 403, "LIMIT_EXCEEDED");
    assert!(v["error"]["message"].as_str().unwrap().contains("limits.max_topics"), "{v}");
    let (st, v) = s.call("PUT", "/v1/topics/e", Some(r#"{"queues": 64}"#)).await;
    assert_error(st, &v, 403, "LIMIT_EXCEEDED");
    assert!(!dir.path().join("consumequeue/e").exists(), "nothing of a refused topic is allocated");
    // Existing topics go on, scheduled messages too (the timer's own topic does not count).
    let (st, v) = s.send("a", json!({"body": "later", "delay_ms": 50})).await;
    assert_eq!(st, 201, "{v}");
    let (st, v) = s.call("PUT", "/v1/topics/a", None).await;
    assert_eq!(st, 200, "an existing topic is no creation: {v}");
    s.stop().await;
    // The quota counts what is on disk after a restart.
    let s = TestServer::start(&config).await;
    let (st, v) = s.send("d", json!({"body": "x"})).await;
    assert_error(st, &v, 403, "LIMIT_EXCEEDED");
    let (st, v) = s.send("c", json!({"body": "y"})).await;
    assert_eq!(st, 201, "{v}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_past_the_quota_are_refused_per_topic() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.limits.max_groups_per_topic = 2;
    let s = TestServer::start(&config).await;
    for t in ["t", "u"] {
        let (st, v) = s.send(t, json!({"body": "m"})).await;
        assert_eq!(st, 201, "{v}");
    }
    let receive = |topic: &'static str, group: &'static str| {
        let s = &s;
        async move {
            s.call("POST", &format!("/v1/topics/{topic}/groups/{group}/receive"), Some(r#"{"max_messages": 1}"#)).await
        }
    };
    for g in ["g1", "g2"] {
        let (st, v) = receive("t", g).await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["messages"].as_array().unwrap().len(), 1, "{v}");
    }
    let (st, v) = receive("t", "g3").await;
    assert_error(st, &v, 403, "LIMIT_EXCEEDED");
    assert!(v["error"]["message"].as_str().unwrap().contains("limits.max_groups_per_topic"), "{v}");
    // An ack with a group that does not exist creates nothing.
    let (st, v) = s
        .call("POST", "/v1/topics/t/groups/g4/ack", Some(r#"{"receipt_handles": ["00000000000000000000000000ab"]}"#))
        .await;
    assert_eq!((st, v["acked"].as_u64()), (200, Some(0)), "{v}");
    // The quota is per topic; existing groups go on.
    let (st, v) = receive("u", "g3").await;
    assert_eq!(st, 200, "{v}");
    let (st, v) = receive("t", "g1").await;
    assert_eq!(st, 200, "{v}");
    s.stop().await;
    let s = TestServer::start(&config).await;
    let (st, v) = s.call("POST", "/v1/topics/t/groups/g3/receive", Some(r#"{"max_messages": 1}"#)).await;
    assert_error(st, &v, 403, "LIMIT_EXCEEDED");
    let (st, v) = s.call("POST", "/v1/topics/t/groups/g2/receive", Some(r#"{"max_messages": 1}"#)).await;
    assert_eq!(st, 200, "the saved groups load after a restart: {v}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_on_a_topic_not_yet_created_answers_when_a_send_creates_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(&test_config(dir.path())).await;
    let started = Instant::now();
    let (http, url) = (s.http.clone(), s.url("/v1/topics/late/groups/g/receive"));
    let poll = tokio::spawn(async move {
        let r = http.post(url).body(r#"{"wait_ms": 20000}"#).header("content-type", "application/json").send().await;
        r.unwrap().json::<serde_json::Value>().await.unwrap()
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (st, v) = s.send("late", json!({"body": "first"})).await;
    assert_eq!(st, 201, "{v}");
    let got = tokio::time::timeout(Duration::from_secs(15), poll).await.expect("the poll answered").unwrap();
    assert_eq!(got["messages"][0]["body"], "first", "{got}");
    assert!(started.elapsed() < Duration::from_secs(5), "answered at the send, not after its 20 s wait");
    s.stop().await;
}

/// `max_message_bytes` bounds the whole message as stored (body, tag, keys, properties), not
/// only the body: a large property used to pass and then fail with a 503 that could never heal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_message_bytes_counts_keys_and_properties() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path()); // max_message_bytes 1 MiB
    let s = TestServer::start(&config).await;
    let big = "p".repeat(1_100_000);
    let (st, v) = s.send("t", json!({"body": "small", "properties": {"blob": big}})).await;
    assert_error(st, &v, 413, "MESSAGE_TOO_LARGE");
    assert!(v["error"]["message"].as_str().unwrap().contains("properties"), "{v}");
    let (st, v) = s
        .send("t", json!([{"body": "ok"}, {"body": "x", "keys": ["k".repeat(1000)], "properties": {"blob": big}}]))
        .await;
    assert_error(st, &v, 413, "MESSAGE_TOO_LARGE");
    let (st, v) = s.send("t", json!({"body": "b".repeat(500_000), "properties": {"half": "p".repeat(500_000)}})).await;
    assert_eq!(st, 201, "just under the limit: {v}");
    s.stop().await;
}

/// A receive answer is bounded by `max_bytes` of payload (bodies, keys, properties), but always
/// holds at least one message; what does not fit stays for the next receive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receive_answer_holds_at_most_max_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(&test_config(dir.path())).await;
    let (st, v) = s.call("PUT", "/v1/topics/big", Some(r#"{"queues": 1}"#)).await;
    assert_eq!(st, 201, "{v}");
    for i in 0..3 {
        let (st, v) = s.send("big", json!({"body": format!("{i}{}", "b".repeat(399_999))})).await;
        assert_eq!(st, 201, "{v}");
    }
    let receive = |max_bytes: i64| {
        let s = &s;
        async move {
            let body = json!({"max_messages": 10, "max_bytes": max_bytes}).to_string();
            s.call("POST", "/v1/topics/big/groups/g/receive", Some(&body)).await
        }
    };
    let (st, v) = receive(1 << 20).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["messages"].as_array().unwrap().len(), 2, "800,000 bytes fit in 1 MiB, 1,200,000 do not");
    let (_, v) = receive(1 << 20).await;
    let rest = v["messages"].as_array().unwrap();
    assert_eq!(rest.len(), 1, "the one that did not fit comes next");
    assert!(rest[0]["body"].as_str().unwrap().starts_with('2'));
    for bad in [(1 << 20) - 1, (64 << 20) + 1] {
        let (st, v) = receive(bad).await;
        assert_error(st, &v, 400, "INVALID_ARGUMENT");
    }
    s.stop().await;
}

/// A send that declares a body over `max_request_bytes` and waits for `100 Continue` is
/// answered 413 at once: it is not invited to upload what would be read and thrown away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_upload_that_expects_100_continue_gets_413_before_sending() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(&test_config(dir.path())).await; // max_request_bytes 4 MiB
    let addr = s.base.trim_start_matches("http://").to_string();
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /v1/topics/t/messages HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: 100000000\r\nExpect: 100-continue\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf)).await.expect("an answer").unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 413"), "answered {text:?}");
    assert!(text.contains("MESSAGE_TOO_LARGE"), "{text}");
    s.stop().await;
}

/// README "Behaviour the contract leaves open": per message at most 64 keys of at most 1 KiB
/// and 128 properties with names of at most 1 KiB; per ack at most 10,000 handles. At each limit
/// the request passes; one past it is 400 INVALID_ARGUMENT and stores nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_message_and_per_ack_limits_hold_at_their_edges() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(&test_config(dir.path())).await;
    let keys = |n: usize, len: usize| -> Vec<String> { (0..n).map(|i| format!("{i:0>len$}")).collect() };
    let props = |n: usize, len: usize| -> serde_json::Map<String, serde_json::Value> {
        (0..n).map(|i| (format!("{i:0>len$}"), json!("v"))).collect()
    };
    let ok = [
        json!({"body": "k", "keys": keys(64, 4)}),
        json!({"body": "k", "keys": [ "x".repeat(1024) ]}),
        json!({"body": "p", "properties": props(128, 4)}),
        json!({"body": "p", "properties": { "y".repeat(1024): "v" }}),
    ];
    for m in &ok {
        let (st, v) = s.send("edges", m.clone()).await;
        assert_eq!(st, 201, "at the limit: {v}");
    }
    let over = [
        json!({"body": "k", "keys": keys(65, 4)}),
        json!({"body": "k", "keys": [ "x".repeat(1025) ]}),
        json!({"body": "p", "properties": props(129, 4)}),
        json!({"body": "p", "properties": { "y".repeat(1025): "v" }}),
    ];
    for m in &over {
        let (st, v) = s.send("edges", m.clone()).await;
        assert_error(st, &v, 400, "INVALID_ARGUMENT");
    }
    let (_, v) = s.call("GET", "/v1/topics", None).await;
    let edges = v["topics"].as_array().unwrap().iter().find(|t| t["name"] == "edges").cloned();
    assert_eq!(edges.map(|t| t["messages"].clone()), Some(json!(ok.len())), "nothing past a limit was stored: {v}");

    let handles = |n: usize| json!({ "receipt_handles": vec!["0-0-0"; n] }).to_string();
    let (st, v) = s.call("POST", "/v1/topics/edges/groups/g/ack", Some(&handles(10_000))).await;
    assert_eq!(st, 200, "10,000 handles: {v}");
    assert_eq!(v["invalid"].as_array().map(|a| a.len()), Some(10_000), "{v}");
    let (st, v) = s.call("POST", "/v1/topics/edges/groups/g/ack", Some(&handles(10_001))).await;
    assert_error(st, &v, 400, "INVALID_ARGUMENT");
    s.stop().await;
}
