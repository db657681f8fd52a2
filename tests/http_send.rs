//! The send path and topics over HTTP: every success shape and every error code of API.md.

mod common;

use common::{assert_error, test_config, TestServer};
use serde_json::json;

#[tokio::test]
async fn send_single_and_batch_then_read_status() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(&test_config(dir.path())).await;

    let (st, v) = s.send("orders", json!({"body": "hi", "tag": "A", "keys": ["o-1"], "properties": {"k": "v"}})).await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["topic"], "orders");
    assert_eq!(v["state"], "delivered");
    let id = v["message_id"].as_str().unwrap().to_string();
    assert!(v["deliver_at_ms"].as_i64().unwrap() > 1_600_000_000_000);

    let (st, v) = s.send("orders", json!([{"body": "a"}, {"body_base64": "AAEC"}, {"body": "c"}])).await;
    assert_eq!(st, 201, "{v}");
    let batch = v["messages"].as_array().unwrap();
    assert_eq!(batch.len(), 3);
    assert!(batch.iter().all(|m| m["state"] == "delivered"));

    let (st, v) = s.call("GET", &format!("/v1/topics/orders/messages/{id}"), None).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["message_id"], id.as_str());
    assert_eq!(v["state"], "delivered");

    // A normal message is visible: cancelling it is a conflict.
    let (st, v) = s.call("DELETE", &format!("/v1/topics/orders/messages/{id}"), None).await;
    assert_error(st, &v, 409, "ALREADY_DELIVERED");
    // Unknown, malformed and other-topic ids are 404.
    for bad in ["000000000000000000000000", "nope", &id.replace('0', "F")] {
        let (st, v) = s.call("GET", &format!("/v1/topics/orders/messages/{bad}"), None).await;
        assert_error(st, &v, 404, "NOT_FOUND");
        let (st, v) = s.call("DELETE", &format!("/v1/topics/orders/messages/{bad}"), None).await;
        assert_error(st, &v, 404, "NOT_FOUND");
    }
    let (st, v) = s.call("GET", &format!("/v1/topics/other/messages/{id}"), None).await;
    assert_error(st, &v, 404, "NOT_FOUND");

    // A time at or before now is delivered at once.
    let (st, v) = s.send("orders", json!({"body": "past", "deliver_at_ms": 1000})).await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["state"], "delivered");
    let (st, v) = s.send("orders", json!({"body": "now", "delay_ms": 0})).await;
    assert_eq!(st, 201, "{v}");

    let (st, v) = s.call("GET", "/v1/topics", None).await;
    assert_eq!(st, 200);
    assert_eq!(v["topics"][0]["name"], "orders");
    assert_eq!(v["topics"][0]["messages"], 6);
    assert_eq!(v["topics"][0]["queues"], 8);
    s.stop().await;
}

#[tokio::test]
async fn topics_put_and_get() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(&test_config(dir.path())).await;
    let (st, v) = s.call("PUT", "/v1/topics/t1", Some(r#"{"queues": 3}"#)).await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["queues"], 3);
    let (st, v) = s.call("PUT", "/v1/topics/t1", Some(r#"{"queues": 3}"#)).await;
    assert_eq!(st, 200, "{v}");
    let (st, _) = s.call("PUT", "/v1/topics/t2", None).await;
    assert_eq!(st, 201);
    for bad in [r#"{"queues": 0}"#, r#"{"queues": 65}"#, r#"{"queues": "x"}"#, r#"{"queue": 1}"#, "{"] {
        let (st, v) = s.call("PUT", "/v1/topics/t3", Some(bad)).await;
        assert_error(st, &v, 400, "INVALID_ARGUMENT");
    }
    let (st, v) = s.call("PUT", "/v1/topics/rmq_sys_x", None).await;
    assert_error(st, &v, 400, "INVALID_TOPIC");
    let (_, v) = s.call("GET", "/v1/topics", None).await;
    let names: Vec<_> =
        v["topics"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap().to_string()).collect();
    assert_eq!(names, ["t1", "t2"]);
    assert_eq!(v["topics"][1]["queues"], 8);
    s.stop().await;
}

#[tokio::test]
async fn every_bad_send_gets_its_code_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let max = config.max_message_bytes.0 as usize;
    let s = TestServer::start(&config).await;

    let long_name = "x".repeat(128);
    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("t", r#"{"body": "x", "delay_ms": 1, "delay_level": 1}"#.into(), 400, "INVALID_ARGUMENT"),
        ("t", r#"{"body": "x", "body_base64": "eA=="}"#.into(), 400, "INVALID_ARGUMENT"),
        ("t", r#"{}"#.into(), 400, "INVALID_ARGUMENT"),
        ("t", r#"{"body_base64": "***"}"#.into(), 400, "INVALID_ARGUMENT"),
        ("t", r#"{"body": "x", "tag": "a|b"}"#.into(), 400, "INVALID_ARGUMENT"),
        ("t", r#"{"body": "x", "tag": ""}"#.into(), 400, "INVALID_ARGUMENT"),
        ("t", format!(r#"{{"body": "x", "tag": "{}"}}"#, "t".repeat(129)), 400, "INVALID_ARGUMENT"),
        ("t", r#"{"body": "x", "delay_ms": -1}"#.into(), 400, "INVALID_ARGUMENT"),
        ("t", r#"{"body": "x", "delay_ms": 1.5}"#.into(), 400, "INVALID_ARGUMENT"),
        ("t", r#"{"body": "x", "delay_level": 19}"#.into(), 400, "INVALID_ARGUMENT"),
        ("t", r#"{"body": "x", "deliver_at": "soon"}"#.into(), 400, "INVALID_ARGUMENT"),
        ("t", r#"{"body": "x", "unknown": 1}"#.into(), 400, "INVALID_ARGUMENT"),
        ("t", r#"{"body": 5}"#.into(), 400, "INVALID_ARGUMENT"),
        ("t", r#"{"body": "x", "properties": {"__chime": "x"}}"#.into(), 400, "INVALID_ARGUMENT"),
        ("t", "not json".into(), 400, "INVALID_ARGUMENT"),
        ("t", "".into(), 400, "INVALID_ARGUMENT"),
        ("t", "[]".into(), 400, "INVALID_ARGUMENT"),
        // An element that is an array of a message's fields in order (serde alone accepts it).
        ("t", "[[\"x\"]]".into(), 400, "INVALID_ARGUMENT"),
        ("t", "[{\"body\":\"ok\"}, [\"x\"]]".into(), 400, "INVALID_ARGUMENT"),
        ("t", "[{\"body\":\"ok\"}, {\"body\": 1}]".into(), 400, "INVALID_ARGUMENT"),
        ("t", "[{\"body\":\"ok\"}, {\"body\":\"x\",\"delay_level\":0}]".into(), 400, "INVALID_ARGUMENT"),
        ("t", r#"{"body": "x", "delay_ms": 400000000000}"#.into(), 400, "DELAY_OUT_OF_RANGE"),
        ("t", r#"{"body": "x", "deliver_at": "2999-01-01T00:00:00Z"}"#.into(), 400, "DELAY_OUT_OF_RANGE"),
        ("bad.topic", r#"{"body": "x"}"#.into(), 400, "INVALID_TOPIC"),
        ("rmq_sys_wheel_timer", r#"{"body": "x"}"#.into(), 400, "INVALID_TOPIC"),
        ("__t", r#"{"body": "x"}"#.into(), 400, "INVALID_TOPIC"),
        (&long_name, r#"{"body": "x"}"#.into(), 400, "INVALID_TOPIC"),
        ("t", format!(r#"{{"body": "{}"}}"#, "x".repeat(max + 1)), 413, "MESSAGE_TOO_LARGE"),
    ];
    for (topic, body, status, code) in &cases {
        let (st, v) = s.call("POST", &format!("/v1/topics/{topic}/messages"), Some(body)).await;
        assert_error(st, &v, *status, code);
        if *code == "DELAY_OUT_OF_RANGE" {
            assert!(v["error"]["message"].as_str().unwrap().contains("timer.max_delay (365d)"), "{v}");
        }
    }
    let batch: Vec<_> = (0..1001).map(|_| json!({"body": "x"})).collect();
    let (st, v) = s.send("t", json!(batch)).await;
    assert_error(st, &v, 400, "INVALID_ARGUMENT");
    // A batch with one bad message stored nothing, and no topic was created by the failures.
    let (_, v) = s.call("GET", "/v1/topics", None).await;
    assert_eq!(v["topics"], json!([]), "{v}");
    s.stop().await;
}

#[tokio::test]
async fn oversized_body_gets_a_readable_413() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let limit = config.max_request_bytes.0 as usize;
    let s = TestServer::start(&config).await;
    let big = format!(r#"{{"body": "{}"}}"#, "x".repeat(limit + 10));
    let (st, v) = s.call("POST", "/v1/topics/t/messages", Some(&big)).await;
    assert_error(st, &v, 413, "MESSAGE_TOO_LARGE");
    // The connection is still usable afterwards.
    let (st, _) = s.send("t", json!({"body": "small"})).await;
    assert_eq!(st, 201);
    s.stop().await;
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_in_shape() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(&test_config(dir.path())).await;
    let (st, v) = s.call("GET", "/nope", None).await;
    assert_error(st, &v, 404, "NOT_FOUND");
    // (GET of this path is the lookup by key, API.md's v1 additions.)
    let (st, v) = s.call("PUT", "/v1/topics/t/messages", None).await;
    assert_error(st, &v, 405, "METHOD_NOT_ALLOWED");
    let (st, v) = s.call("DELETE", "/v1/topics", None).await;
    assert_error(st, &v, 405, "METHOD_NOT_ALLOWED");
    let (st, v) = s.call("GET", "/healthz", None).await;
    assert_eq!(st, 200, "{v}");
    let (st, v) = s.call("GET", "/readyz", None).await;
    assert_eq!(st, 200, "{v}");
    // Percent-encoded names decode before validation: %2F is '/', not allowed.
    let (st, v) = s.call("POST", "/v1/topics/a%2Fb/messages", Some(r#"{"body":"x"}"#)).await;
    assert_error(st, &v, 400, "INVALID_TOPIC");
    // '%' itself is allowed in names.
    let (st, v) = s.call("POST", "/v1/topics/a%25b/messages", Some(r#"{"body":"x"}"#)).await;
    assert_eq!(st, 201, "{v}");
    s.stop().await;
}

#[tokio::test]
async fn auto_create_off_answers_404() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.auto_create_topics = false;
    let s = TestServer::start(&config).await;
    let (st, v) = s.send("t", json!({"body": "x"})).await;
    assert_error(st, &v, 404, "NOT_FOUND");
    let (st, _) = s.call("PUT", "/v1/topics/t", None).await;
    assert_eq!(st, 201);
    let (st, _) = s.send("t", json!({"body": "x"})).await;
    assert_eq!(st, 201);
    s.stop().await;
}
