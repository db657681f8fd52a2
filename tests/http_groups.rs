//! The consumer-group routes over HTTP (API.md "Consumer groups: retry, dead letters, lag,
//! seek, lookup by key"): configuration, listing with lag, nack (at once and delayed), dead
//! letters with where they came from, extend, seek, and their errors.

mod common;

use common::{test_config, TestServer};
use serde_json::{json, Value};

fn handles(msgs: &[Value]) -> Value {
    Value::from(msgs.iter().map(|m| m["receipt_handle"].clone()).collect::<Vec<_>>())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configure_list_nack_dead_letter_extend_and_seek() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(&test_config(dir.path())).await;
    let (code, v) = s.call("GET", "/v1/topics/t/groups/g", None).await;
    assert_eq!(code, 404, "{v}");
    let (code, _) = s.call("GET", "/v1/topics/t/groups", None).await;
    assert_eq!(code, 404, "no such topic");

    // Configure: 201 the first time, 200 after; the whole configuration comes back.
    let cfg = json!({"max_delivery_attempts": 2, "retry": {"initial_ms": 0, "max_ms": 0}}).to_string();
    let (code, v) = s.call("PUT", "/v1/topics/t/groups/g", Some(&cfg)).await;
    assert_eq!(code, 201, "{v}");
    assert_eq!(v["max_delivery_attempts"], 2);
    assert_eq!(v["retry"], json!({"initial_ms": 0, "max_ms": 0, "multiplier": 2.0}));
    assert_eq!(v["dead_letter_topic"], "%DLQ%g");
    assert_eq!(v["fifo"], false);
    let (code, _) = s.call("PUT", "/v1/topics/t/groups/g", Some(&cfg)).await;
    assert_eq!(code, 200);
    for bad in [
        json!({"max_delivery_attempts": 0}),
        json!({"max_delivery_attempts": 1001}),
        json!({"retry": {"multiplier": 0.5}}),
        json!({"retry": {"initial_ms": 10, "max_ms": 5}}),
        json!({"dead_letter_topic": "__x"}),
        json!({"unknown": 1}),
        json!({"fifo": "yes"}),
    ] {
        let (code, v) = s.call("PUT", "/v1/topics/t/groups/g", Some(&bad.to_string())).await;
        assert_eq!((code, v["error"]["code"].as_str()), (400, Some("INVALID_ARGUMENT")), "{bad}: {v}");
    }

    // Two messages; the listing shows the lag.
    for body in ["a", "b"] {
        assert_eq!(s.send("t", json!({"body": body})).await.0, 201);
    }
    let (_, v) = s.call("GET", "/v1/topics/t/groups", None).await;
    assert_eq!(
        v["groups"],
        json!([{"name": "g", "backlog": 2, "in_flight": 0, "dead_lettered": 0, "expired": 0, "fifo": false,
                "max_delivery_attempts": 2}])
    );
    let msgs = s.receive("t", "g", json!({"max_messages": 10})).await;
    assert_eq!(msgs.len(), 2);
    assert!(msgs.iter().all(|m| m["message_group"].is_null() && m["dead_letter"].is_null()), "{msgs:?}");
    let (_, v) = s.call("GET", "/v1/topics/t/groups/g", None).await;
    assert_eq!((v["backlog"].as_u64(), v["in_flight"].as_u64()), (Some(0), Some(2)), "{v}");

    // Extend one, nack the other (no backoff configured: at once).
    let (code, v) = s
        .call(
            "POST",
            "/v1/topics/t/groups/g/extend",
            Some(&json!({"receipt_handles": [msgs[0]["receipt_handle"]], "invisible_ms": 60000}).to_string()),
        )
        .await;
    assert_eq!((code, v["extended"].as_u64()), (200, Some(1)), "{v}");
    let (code, v) = s
        .call(
            "POST",
            "/v1/topics/t/groups/g/nack",
            Some(&json!({"receipt_handles": [msgs[1]["receipt_handle"], "junk"]}).to_string()),
        )
        .await;
    assert_eq!((code, v["nacked"].as_u64(), v["invalid"].clone()), (200, Some(1), json!(["junk"])), "{v}");
    let again = s.receive("t", "g", json!({"max_messages": 10, "wait_ms": 5000})).await;
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!(again[0]["message_id"], msgs[1]["message_id"], "redelivered under its id");
    assert_eq!(again[0]["topic"], "t", "shown as the topic's, not the retry topic's");
    assert_eq!((again[0]["delivery_attempt"].as_u64(), again[0]["body"].as_str()), (Some(2), msgs[1]["body"].as_str()));
    // Its last attempt nacked: to the dead letter topic, where any group receives it.
    let (_, v) = s
        .call("POST", "/v1/topics/t/groups/g/nack", Some(&json!({"receipt_handles": handles(&again)}).to_string()))
        .await;
    assert_eq!(v["nacked"], 1, "{v}");
    let dead = s.receive("%DLQ%g", "ops", json!({"wait_ms": 5000})).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["message_id"], msgs[1]["message_id"]);
    assert_eq!(dead[0]["dead_letter"], json!({"topic": "t", "group": "g", "delivery_attempts": 2}));
    let (_, v) = s.call("GET", "/v1/topics/t/groups/g", None).await;
    assert_eq!(v["dead_lettered"], 1, "{v}");
    // The same figures per group in /metrics.
    let m = common::metrics::scrape(&s.http, &s.url("")).await;
    let labels = [("topic", "t"), ("group", "g")];
    assert_eq!(common::metrics::value(&m, "chime_group_dead_lettered_total", &labels), 1.0);
    assert_eq!(common::metrics::value(&m, "chime_group_in_flight", &labels), 1.0, "the extended one");
    assert_eq!(common::metrics::value(&m, "chime_group_backlog", &labels), 0.0);

    // Seek: back to the earliest (both again), to the latest (nothing); errors named.
    let seek = |body: Value| {
        let s = &s;
        async move { s.call("POST", "/v1/topics/t/groups/g/seek", Some(&body.to_string())).await }
    };
    assert_eq!(seek(json!({"to": "earliest"})).await, (200, json!({"backlog": 2})));
    assert_eq!(seek(json!({"to": "latest"})).await, (200, json!({"backlog": 0})));
    assert_eq!(seek(json!({"to_ms": 0})).await, (200, json!({"backlog": 2})));
    for bad in [json!({}), json!({"to": "middle"}), json!({"to": "latest", "to_ms": 5})] {
        let (code, v) = seek(bad.clone()).await;
        assert_eq!((code, v["error"]["code"].as_str()), (400, Some("INVALID_ARGUMENT")), "{bad}: {v}");
    }
    for (route, bad) in [
        ("nack", json!({"receipt_handles": [], "delay_ms": -1})),
        ("nack", json!({"receipt_handles": [], "delay_ms": 43200001})),
        ("nack", json!({})),
        ("extend", json!({"receipt_handles": [], "invisible_ms": 999})),
        ("extend", json!({"receipt_handles": []})),
    ] {
        let (code, v) = s.call("POST", &format!("/v1/topics/t/groups/g/{route}"), Some(&bad.to_string())).await;
        assert_eq!((code, v["error"]["code"].as_str()), (400, Some("INVALID_ARGUMENT")), "{route} {bad}: {v}");
    }
    s.stop().await;
}

/// FIFO over HTTP: `message_group` on send comes back on receive; one message of a group at a
/// time; the blocked listing names the group waiting, with its head and what waits behind it;
/// a bad `message_group` is a 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifo_groups_deliver_a_message_group_one_at_a_time_and_list_the_blocked_ones() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(&test_config(dir.path())).await;
    let (code, v) = s.call("PUT", "/v1/topics/f/groups/g", Some(&json!({"fifo": true}).to_string())).await;
    assert_eq!((code, &v["fifo"]), (201, &json!(true)), "{v}");
    let (code, v) = s.call("GET", "/v1/topics/f/groups/g/blocked", None).await;
    assert_eq!((code, &v), (200, &json!({"blocked": []})));
    let (code, v) = s
        .send("f", json!([{"body": "a0", "message_group": "a"}, {"body": "a1", "message_group": "a"}, {"body": "x"}]))
        .await;
    assert_eq!(code, 201, "{v}");
    let first_id = v["messages"][0]["message_id"].clone();
    let msgs = s.receive("f", "g", json!({"max_messages": 10})).await;
    let mut got: Vec<(String, Value)> =
        msgs.iter().map(|m| (m["body"].as_str().unwrap().to_string(), m["message_group"].clone())).collect();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(got, vec![("a0".into(), json!("a")), ("x".into(), Value::Null)], "a1 waits for a0");
    let (code, v) = s.call("GET", "/v1/topics/f/groups/g/blocked?limit=10", None).await;
    assert_eq!(code, 200, "{v}");
    let b = &v["blocked"];
    assert_eq!(b.as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!((&b[0]["message_group"], &b[0]["message_id"]), (&json!("a"), &first_id));
    assert_eq!((b[0]["attempts"].as_u64(), b[0]["waiting"].as_u64()), (Some(1), Some(1)), "{v}");
    assert!(b[0]["since_ms"].as_i64().unwrap() > 0);
    let (_, v) = s.call("GET", "/v1/topics/f/groups/g", None).await;
    assert_eq!((v["backlog"].as_u64(), v["in_flight"].as_u64()), (Some(1), Some(2)), "held a1 is backlog: {v}");
    let text = s.http.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let m = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    let labels = [("topic", "f"), ("group", "g")];
    assert_eq!(common::metrics::value(&m, "chime_group_held", &labels), 1.0);
    assert_eq!(common::metrics::value(&m, "chime_group_blocked_message_groups", &labels), 1.0);
    // A long poll waiting for a1 is woken by the ack that frees it (not by its timeout).
    let s = std::sync::Arc::new(s);
    let poll = {
        let s = s.clone();
        tokio::spawn(async move {
            let t0 = std::time::Instant::now();
            (s.receive("f", "g", json!({"max_messages": 10, "wait_ms": 20000})).await, t0.elapsed())
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    s.ack("f", "g", &msgs).await;
    let (next, waited) = poll.await.unwrap();
    assert_eq!(next.iter().map(|m| m["body"].as_str().unwrap()).collect::<Vec<_>>(), vec!["a1"]);
    assert!(waited < std::time::Duration::from_secs(15), "woken by the ack, not the 20 s wait: {waited:?}");
    for (bad, path) in [
        (json!({"body": "x", "message_group": ""}), "/v1/topics/f/messages"),
        (json!({"body": "x", "message_group": "g".repeat(129)}), "/v1/topics/f/messages"),
    ] {
        let (code, v) = s.call("POST", path, Some(&bad.to_string())).await;
        assert_eq!((code, v["error"]["code"].as_str()), (400, Some("INVALID_ARGUMENT")), "{v}");
    }
    for q in ["limit=0", "limit=1001", "limit=x"] {
        let (code, v) = s.call("GET", &format!("/v1/topics/f/groups/g/blocked?{q}"), None).await;
        assert_eq!((code, v["error"]["code"].as_str()), (400, Some("INVALID_ARGUMENT")), "{q}: {v}");
    }
    let (code, _) = s.call("GET", "/v1/topics/f/groups/none/blocked", None).await;
    assert_eq!(code, 404);
}

/// A receive of a FIFO group that stopped reading early (it held as many as one receive may)
/// reads on within the same long poll: a message of another group behind 3,000 held ones comes
/// back from one request, well before its wait ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_of_a_fifo_group_reads_on_past_what_one_receive_holds() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(&test_config(dir.path())).await;
    // One queue: b0 lies behind every message of a.
    let (code, _) = s.call("PUT", "/v1/topics/h", Some(&json!({"queues": 1}).to_string())).await;
    assert_eq!(code, 201);
    let (code, _) = s.call("PUT", "/v1/topics/h/groups/g", Some(&json!({"fifo": true}).to_string())).await;
    assert_eq!(code, 201);
    for from in (0..3000).step_by(1000) {
        let batch: Vec<Value> =
            (from..from + 1000).map(|i| json!({"body": format!("a{i}"), "message_group": "a"})).collect();
        assert_eq!(s.send("h", Value::from(batch)).await.0, 201);
    }
    assert_eq!(s.send("h", json!({"body": "b0", "message_group": "b"})).await.0, 201);
    let first = s.receive("h", "g", json!({"max_messages": 10})).await;
    assert_eq!(first.iter().map(|m| m["body"].as_str().unwrap()).collect::<Vec<_>>(), vec!["a0"]);
    let t0 = std::time::Instant::now();
    let next = s.receive("h", "g", json!({"max_messages": 10, "wait_ms": 20000})).await;
    assert_eq!(next.iter().map(|m| m["body"].as_str().unwrap()).collect::<Vec<_>>(), vec!["b0"]);
    assert!(t0.elapsed() < std::time::Duration::from_secs(15), "read on, not after the wait: {:?}", t0.elapsed());
}
