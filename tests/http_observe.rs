//! Timer observability over HTTP: congestion counts (exact, through cancel, fire and restart),
//! window validation, slot admission control (429 BUSY), `/v1/timer/stats` and `/metrics`.

mod common;

use std::time::{Duration, Instant};

use chime::clock::ManualClock;
use common::metrics::value;
use common::{assert_error, test_config, TestServer};
use serde_json::{json, Value};

const T0: i64 = 1_700_000_000_000;

async fn congestion(s: &TestServer, from: i64, to: i64, bucket: i64) -> (i64, Vec<u64>) {
    let (st, v) =
        s.call("GET", &format!("/v1/timer/congestion?from_ms={from}&to_ms={to}&bucket_ms={bucket}"), None).await;
    assert_eq!(st, 200, "{v}");
    let mut start = from;
    let counts = v["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            assert_eq!(b["start_ms"], start, "{v}");
            start = (start + bucket).min(to);
            b["count"].as_u64().unwrap()
        })
        .collect();
    (v["pending_total"].as_i64().unwrap(), counts)
}

async fn stats(s: &TestServer) -> Value {
    let (st, v) = s.call("GET", "/v1/timer/stats", None).await;
    assert_eq!(st, 200, "{v}");
    v
}

async fn wait_fired(s: &TestServer, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while stats(s).await["fired"].as_u64().unwrap() < n {
        assert!(Instant::now() < deadline, "never fired {n}: {}", stats(s).await);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn congestion_counts_sends_cancels_fires_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let clock = ManualClock::new(T0);
    let s = TestServer::start_with_clock(&config, clock.clone()).await;
    let far = T0 + 20 * 86_400_000 + 123; // beyond the test wheel's two hours: it rolls
    let mut ids = Vec::new();
    for at in [T0 + 10_000, T0 + 10_000, T0 + 10_499, T0 + 10_500, T0 + 70_000, far] {
        let (st, v) = s.send("t", json!({"body": "x", "deliver_at_ms": at})).await;
        assert_eq!(st, 201, "{v}");
        ids.push(v["message_id"].as_str().unwrap().to_string());
    }
    assert_eq!(congestion(&s, T0, T0 + 120_000, 60_000).await, (6, vec![4, 1]));
    // Bucket edges cut the 1 s slots: counts are exact to the millisecond.
    assert_eq!(congestion(&s, T0 + 10_000, T0 + 11_000, 500).await.1, vec![3, 1]);
    assert_eq!(congestion(&s, T0 + 10_000, T0 + 10_500, 499).await.1, vec![2, 1]);
    assert_eq!(congestion(&s, far, far + 1, 1).await.1, vec![1]);

    let (st, _) = s.call("DELETE", &format!("/v1/topics/t/messages/{}", ids[0]), None).await;
    assert_eq!(st, 200);
    assert_eq!(congestion(&s, T0, T0 + 120_000, 60_000).await, (5, vec![3, 1]));

    clock.set(T0 + 10_600);
    wait_fired(&s, 3).await;
    assert_eq!(congestion(&s, T0, T0 + 120_000, 60_000).await, (2, vec![0, 1]));
    s.stop().await;

    // Counts come back from disk, the rolled far-future message in its true bucket.
    let s = TestServer::start_with_clock(&config, clock.clone()).await;
    assert_eq!(congestion(&s, T0, T0 + 120_000, 60_000).await, (2, vec![0, 1]));
    assert_eq!(congestion(&s, far - 1_000, far + 1_000, 1_000).await, (2, vec![0, 1]));
    let st = stats(&s).await;
    assert_eq!(st["pending_total"], 2, "{st}");
    s.stop().await;
}

#[tokio::test]
async fn congestion_defaults_and_bad_windows() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let s = TestServer::start_with_clock(&test_config(dir.path()), clock).await;
    let (st, v) = s.call("GET", "/v1/timer/congestion", None).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["now_ms"], T0);
    assert_eq!(v["pending_total"], 0);
    let buckets = v["buckets"].as_array().unwrap();
    assert_eq!(buckets.len(), 60, "an hour of minutes by default");
    assert_eq!(buckets[0], json!({"start_ms": T0, "count": 0}));
    assert_eq!(buckets[59]["start_ms"], T0 + 59 * 60_000);
    for q in [
        "from_ms=10&to_ms=5",
        "bucket_ms=0",
        "bucket_ms=-1",
        "from_ms=abc",
        "from_ms=0&to_ms=10001&bucket_ms=1",
        "from_ms=0&to_ms=1&bucket_ms=1.5",
    ] {
        let (st, v) = s.call("GET", &format!("/v1/timer/congestion?{q}"), None).await;
        assert_error(st, &v, 400, "INVALID_ARGUMENT");
    }
    let (st, v) = s.call("GET", "/v1/timer/congestion?from_ms=5&to_ms=5", None).await;
    assert_eq!((st, v["buckets"].as_array().map(Vec::len)), (200, Some(0)), "an empty window: {v}");
    // The ends of time are windows like any other (schemathesis found a panic at i64::MIN).
    for q in ["from_ms=-9223372036854775808", "from_ms=9223372036854771807&to_ms=9223372036854775807"] {
        let (st, v) = s.call("GET", &format!("/v1/timer/congestion?{q}"), None).await;
        assert_eq!(st, 200, "{q}: {v}");
    }
    let (st, v) = s.call("GET", "/v1/timer/congestion?from_ms=0&to_ms=10000&bucket_ms=1", None).await;
    assert_eq!((st, v["buckets"].as_array().unwrap().len()), (200, 10_000));
    s.stop().await;
}

#[tokio::test]
async fn a_full_slot_answers_busy_and_takes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.timer.max_per_slot = 3;
    let s = TestServer::start_with_clock(&config, ManualClock::new(T0)).await;
    let at = T0 + 60_000;
    let batch = json!([{"body": "1", "deliver_at_ms": at}, {"body": "2", "deliver_at_ms": at + 1}, {"body": "3", "deliver_at_ms": at + 999}]);
    let (st, v) = s.send("t", batch).await;
    assert_eq!(st, 201, "{v}");
    let first = v["messages"][0]["message_id"].as_str().unwrap().to_string();

    let resp = s
        .http
        .post(s.url("/v1/topics/t/messages"))
        .json(&json!({"body": "4", "deliver_at_ms": at + 500}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "1");
    let v: Value = resp.json().await.unwrap();
    assert_error(429, &v, 429, "BUSY");
    assert!(v["error"]["message"].as_str().unwrap().contains("max_per_slot"), "{v}");
    // All or nothing: the message for a free slot is not taken either.
    let (st, v) =
        s.send("t", json!([{"body": "5", "deliver_at_ms": at + 1_000}, {"body": "6", "deliver_at_ms": at}])).await;
    assert_error(st, &v, 429, "BUSY");
    assert_eq!(stats(&s).await["pending_total"], 3);
    let (st, _) = s.send("t", json!({"body": "7", "deliver_at_ms": at + 1_000})).await;
    assert_eq!(st, 201, "the next slot is free");
    // Normal messages are never limited.
    assert_eq!(s.send("t", json!({"body": "n"})).await.0, 201);
    // A cancel makes room.
    assert_eq!(s.call("DELETE", &format!("/v1/topics/t/messages/{first}"), None).await.0, 200);
    assert_eq!(s.send("t", json!({"body": "8", "deliver_at_ms": at + 2})).await.0, 201);
    let st = stats(&s).await;
    assert_eq!((st["pending_total"].as_i64(), st["refused_slot_full"].as_u64()), (Some(4), Some(3)), "{st}");
    let metrics = scrape(&s).await;
    assert_eq!(value(&metrics, "chime_send_rejected_total", &[("code", "BUSY")]), 2.0);
    assert_eq!(value(&metrics, "chime_timer_refused_slot_full_total", &[]), 3.0);
    s.stop().await;
}

#[tokio::test]
async fn stats_list_every_stage_and_lateness() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(&test_config(dir.path())).await;
    let (st, v) = s.send("t", json!({"body": "x", "delay_ms": 50})).await;
    assert_eq!(st, 201, "{v}");
    wait_fired(&s, 1).await;
    let v = stats(&s).await;
    for stage in ["enqueue_get", "enqueue_put", "dequeue_get", "dequeue_get_message", "dequeue_put"] {
        for k in ["queue_depth", "queue_capacity", "processed"] {
            assert!(v["stages"][stage][k].is_u64(), "{stage}.{k}: {v}");
        }
    }
    assert!(v["stages"]["dequeue_put"]["processed"].as_u64().unwrap() >= 1, "{v}");
    assert_eq!(v["stages"]["dequeue_put"]["queue_capacity"], 4096, "{v}");
    assert_eq!(v["lateness_ms"]["count"], 1, "{v}");
    for k in ["p50", "p90", "p99", "p999", "max"] {
        assert!(v["lateness_ms"][k].is_u64(), "{k}: {v}");
    }
    for k in ["pending_total", "enqueue_lag", "dequeue_lag_ms", "fired", "cancelled", "rolled", "late_after_downtime"] {
        assert!(v[k].is_number(), "{k}: {v}");
    }
    s.stop().await;
}

async fn scrape(s: &TestServer) -> prometheus_parse::Scrape {
    common::metrics::scrape(&s.http, &s.base).await
}

#[tokio::test]
async fn metrics_parse_as_prometheus_text_and_count_what_happened() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(&test_config(dir.path())).await;
    for i in 0..3 {
        assert_eq!(s.send("t", json!({"body": format!("n{i}")})).await.0, 201);
    }
    assert_eq!(s.send("t", json!({"body": "late", "delay_ms": 20})).await.0, 201);
    assert_eq!(s.send("t", json!({"body": "x", "delay_ms": 1, "delay_level": 1})).await.0, 400);
    assert_eq!(s.call("GET", "/nowhere", None).await.0, 404);
    wait_fired(&s, 1).await;
    let m = scrape(&s).await;
    let route = "/v1/topics/:topic/messages";
    assert_eq!(value(&m, "chime_http_requests_total", &[("route", route), ("method", "POST"), ("status", "201")]), 4.0);
    assert_eq!(value(&m, "chime_http_requests_total", &[("route", route), ("status", "400")]), 1.0);
    assert_eq!(value(&m, "chime_http_requests_total", &[("route", "unmatched"), ("status", "404")]), 1.0);
    assert_eq!(value(&m, "chime_send_rejected_total", &[("code", "INVALID_ARGUMENT")]), 1.0);
    assert_eq!(value(&m, "chime_timer_fired_total", &[]), 1.0);
    assert_eq!(value(&m, "chime_timer_pending", &[]), 0.0);
    assert_eq!(value(&m, "chime_ready", &[]), 1.0);
    assert!(value(&m, "chime_store_log_bytes", &[]) > 0.0);
    for stage in ["enqueue_get", "enqueue_put", "dequeue_get", "dequeue_get_message", "dequeue_put"] {
        value(&m, "chime_timer_stage_queue_depth", &[("stage", stage)]);
        value(&m, "chime_timer_stage_processed_total", &[("stage", stage)]);
    }
    for name in ["chime_timer_lateness_seconds", "chime_http_request_duration_seconds", "chime_store_fsync_seconds"] {
        let sample = m.samples.iter().find(|s| s.metric == name).unwrap_or_else(|| panic!("no {name}"));
        let prometheus_parse::Value::Histogram(ref buckets) = sample.value else {
            panic!("{name}: {:?}", sample.value)
        };
        assert!(buckets.windows(2).all(|w| w[0].less_than < w[1].less_than && w[0].count <= w[1].count), "{name}");
        assert!(buckets.last().unwrap().less_than.is_infinite(), "{name} ends at +Inf");
    }
    let lateness = m.samples.iter().find(|s| s.metric == "chime_timer_lateness_seconds").unwrap();
    let prometheus_parse::Value::Histogram(ref b) = lateness.value else { unreachable!() };
    assert_eq!(b.last().unwrap().count, 1.0, "one fire observed");
    for name in ["chime_timer_pending", "chime_http_requests", "chime_timer_lateness_seconds"] {
        assert!(m.docs.contains_key(name), "HELP for {name}");
    }
    s.stop().await;
}

/// Every distinct method string used to add a permanent `chime_http_requests_total` series, even
/// unauthenticated: a client could grow the server's memory and `/metrics` without bound.
#[tokio::test]
async fn invented_methods_add_no_metric_series() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(&test_config(dir.path())).await;
    let series = |text: &str| text.lines().filter(|l| l.starts_with("chime_http_requests_total{")).count();
    let before = s.http.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
    for i in 0..200 {
        let m = reqwest::Method::from_bytes(format!("X{i}").as_bytes()).unwrap();
        let _ = s.http.request(m, s.url("/v1/topics")).send().await.unwrap();
    }
    let after = s.http.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(series(&after) <= series(&before) + 2, "{} series before, {} after", series(&before), series(&after));
    assert!(after.contains("method=\"other\""), "invented methods are counted as other");
    assert!(!after.contains("method=\"X1\""));
    s.stop().await;
}
