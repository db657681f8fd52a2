//! `GET /v1/storage` and the disk's hard limit over HTTP (API.md "Storage lifecycle"): above
//! it, sends answer 503 "disk full" with Retry-After and store nothing, while receives and the
//! timer go on; sends pass again by themselves once space returns. The disk's figures are
//! injected through the `retention::disk` failpoint.

mod common;

use std::time::{Duration, Instant};

use common::{assert_error, test_config, TestServer};
use serde_json::{json, Value};

async fn storage(s: &TestServer) -> Value {
    let (status, v) = s.call("GET", "/v1/storage", None).await;
    assert_eq!(status, 200, "{v}");
    v
}

async fn wait_accepting(s: &TestServer, want: bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let v = storage(s).await;
        if v["accepting"] == json!(want) {
            return;
        }
        assert!(Instant::now() < deadline, "accepting never became {want}: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hard_limit_refuses_sends_until_space_returns_and_storage_says_so() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(&test_config(dir.path())).await;
    assert_eq!(s.send("t", json!({"body": "before"})).await.0, 201);
    let v = storage(&s).await;
    assert!(v["disk"]["total_bytes"].as_u64().unwrap() > 0, "{v}");
    assert!(v["disk"]["free_bytes"].as_u64().is_some(), "{v}");
    assert!((0.0..=1.0).contains(&v["disk"]["used_ratio"].as_f64().unwrap()), "{v}");
    assert!(v["commitlog"]["segments"].as_u64().unwrap() >= 1, "{v}");
    assert!(v["commitlog"]["bytes"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(v["commitlog"]["first_offset"], 0, "{v}");
    assert!(v["commitlog"]["oldest_store_ms"].as_i64().unwrap() > 0, "{v}");
    assert_eq!(v["pinned"]["segments"], 0, "{v}");
    assert_eq!(v["pinned"]["pending_messages"], 0, "{v}");
    assert_eq!(v["reclaimed"], json!({"segments": 0, "bytes": 0}), "{v}");
    assert_eq!(v["carried_forward"], 0, "{v}");
    assert_eq!(v["accepting"], true, "{v}");
    // Nothing scheduled yet: no timer-log segment, no state file.
    assert_eq!(
        v["timer"],
        json!({"timer_log_segments": 0, "state_files": 0, "moved_ids": 0,
               "timer_log_reclaimed_bytes": 0, "state_reclaimed_bytes": 0}),
        "{v}"
    );

    // A scheduled message sent before the disk fills still fires while it is full.
    assert_eq!(s.send("t", json!({"body": "scheduled", "delay_ms": 1500})).await.0, 201);
    fail::cfg(chime::retention::DISK, "return(1000,10)").unwrap(); // 99% used
    wait_accepting(&s, false).await;
    let (status, body) = s.send("t", json!({"body": "refused"})).await;
    assert_error(status, &body, 503, "UNAVAILABLE");
    assert!(body["error"]["message"].as_str().unwrap().contains("disk full"), "{body}");
    let r = s.http.post(s.url("/v1/topics/t/messages")).json(&json!({"body": "refused"})).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().get("retry-after").is_some(), "503 disk full says when to retry");
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while got.len() < 2 {
        assert!(Instant::now() < deadline, "receives go on while the disk is full: {got:?}");
        let msgs = s.receive("t", "g", json!({"max_messages": 10, "wait_ms": 500})).await;
        s.ack("t", "g", &msgs).await;
        got.extend(msgs.iter().map(|m| m["body"].as_str().unwrap().to_string()));
    }
    assert_eq!(got, vec!["before", "scheduled"], "nothing refused was stored; the timer fired");
    let v = storage(&s).await;
    assert!(v["disk"]["used_ratio"].as_f64().unwrap() > 0.98, "{v}");

    // Space returns: sends pass again by themselves.
    fail::remove(chime::retention::DISK);
    wait_accepting(&s, true).await;
    assert_eq!(s.send("t", json!({"body": "after"})).await.0, 201);
    let m = common::metrics::scrape(&s.http, &s.base).await;
    assert_eq!(common::metrics::value(&m, "chime_storage_accepting", &[]), 1.0);
    assert!(common::metrics::value(&m, "chime_storage_commitlog_segments", &[]) >= 1.0);
    s.stop().await;
    scenario.teardown();
}
