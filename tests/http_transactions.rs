//! Transaction messages over HTTP (API.md "Transaction messages"), on a simulated clock:
//! prepared messages are invisible to consumers and lookups; a commit makes all of them
//! visible at once (a scheduled one timed from the commit); a rollback none; repeats answer
//! the same, the other resolution 409; GET and the listing; the pulled check-back counts only
//! checks handed out, once per interval; after `check_max` checks the transaction is resolved
//! by timeout; prepared and resolved transactions survive a restart.

mod common;

use std::time::Duration;

use chime::clock::ManualClock;
use common::{test_config, TestServer};
use serde_json::{json, Value};

const T0: i64 = 1_800_000_000_000;

fn config(dir: &std::path::Path) -> chime::config::Config {
    let mut c = test_config(dir);
    c.transaction.check_interval = chime::config::HumanDuration::from_secs(10);
    c.transaction.check_max = 2;
    c
}

async fn bodies(s: &TestServer, topic: &str, group: &str) -> Vec<String> {
    let msgs = s.receive(topic, group, json!({"max_messages": 100})).await;
    s.ack(topic, group, &msgs).await;
    let mut v: Vec<String> = msgs.iter().map(|m| m["body"].as_str().unwrap().to_string()).collect();
    v.sort();
    v
}

async fn post(s: &TestServer, path: &str, body: Value) -> (u16, Value) {
    s.call("POST", path, Some(&body.to_string())).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepare_commit_rollback_get_list_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let s = TestServer::start_with_clock(&config(dir.path()), clock.clone()).await;
    // Consumers of both topics exist before anything is prepared.
    assert!(bodies(&s, "a", "g").await.is_empty());
    assert!(bodies(&s, "b", "g").await.is_empty());
    let (code, t) = post(
        &s,
        "/v1/transactions",
        json!({"producer_group": "pg", "messages": [
            {"topic": "a", "body": "a1", "keys": ["order-1"]},
            {"topic": "b", "body": "b1", "tag": "x"},
            {"topic": "a", "body": "a-later", "delay_ms": 60000},
        ]}),
    )
    .await;
    assert_eq!(code, 201, "{t}");
    assert_eq!(t["state"], "prepared");
    let id = t["transaction_id"].as_str().unwrap().to_string();
    assert_eq!(t["messages"].as_array().unwrap().len(), 3);
    assert!(t["messages"].as_array().unwrap().iter().all(|m| m["state"] == "prepared"));
    // Invisible: to consumers, lookups by key, the topic listing.
    assert!(bodies(&s, "a", "g").await.is_empty());
    assert!(bodies(&s, "b", "g").await.is_empty());
    let (_, v) = s.call("GET", "/v1/topics/a/messages?key=order-1", None).await;
    assert_eq!(v["messages"], json!([]), "{v}");
    let (_, v) = s.call("GET", "/v1/topics", None).await;
    assert!(!v.to_string().contains("trans"), "{v}");
    let (code, v) = s.call("GET", &format!("/v1/transactions/{id}"), None).await;
    assert_eq!(
        (code, &v["state"], &v["checks"], &v["resolved_by"]),
        (200, &json!("prepared"), &json!(0), &Value::Null)
    );

    // Commit: all at once; the scheduled one 60 s after the commit.
    clock.set(T0 + 5_000);
    let (code, c) = post(&s, &format!("/v1/transactions/{id}/commit"), json!({})).await;
    assert_eq!((code, &c["state"]), (200, &json!("committed")), "{c}");
    let states: Vec<&str> = c["messages"].as_array().unwrap().iter().map(|m| m["state"].as_str().unwrap()).collect();
    assert_eq!(states, vec!["delivered", "delivered", "scheduled"]);
    assert_eq!(c["messages"][2]["deliver_at_ms"], T0 + 65_000, "timed from the commit");
    assert_eq!(bodies(&s, "a", "g").await, vec!["a1"]);
    assert_eq!(bodies(&s, "b", "g").await, vec!["b1"]);
    let (_, v) = s.call("GET", "/v1/topics/a/messages?key=order-1", None).await;
    assert_eq!(v["messages"][0]["keys"], json!(["order-1"]), "visible, the reserved key hidden: {v}");
    // A repeat answers the same; the other resolution is a conflict.
    let (code, again) = post(&s, &format!("/v1/transactions/{id}/commit"), json!({})).await;
    assert_eq!((code, &again["messages"]), (200, &c["messages"]));
    let (code, v) = post(&s, &format!("/v1/transactions/{id}/rollback"), json!({})).await;
    assert_eq!((code, v["error"]["code"].as_str()), (409, Some("TRANSACTION_RESOLVED")), "{v}");
    clock.set(T0 + 65_000);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = bodies(&s, "a", "g").await;
        if got == vec!["a-later"] {
            break;
        }
        assert!(got.is_empty() && std::time::Instant::now() < deadline, "{got:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Rollback: never visible.
    let (_, t2) =
        post(&s, "/v1/transactions", json!({"producer_group": "pg", "messages": [{"topic": "a", "body": "never"}]}))
            .await;
    let id2 = t2["transaction_id"].as_str().unwrap().to_string();
    let (code, v) = post(&s, &format!("/v1/transactions/{id2}/rollback"), json!({})).await;
    assert_eq!((code, v), (200, json!({"transaction_id": id2, "state": "rolled_back"})));
    let (code, v) = post(&s, &format!("/v1/transactions/{id2}/commit"), json!({})).await;
    assert_eq!((code, v["error"]["code"].as_str()), (409, Some("TRANSACTION_RESOLVED")));
    assert!(bodies(&s, "a", "g").await.is_empty());
    let (_, v) = s.call("GET", &format!("/v1/transactions/{id2}"), None).await;
    assert_eq!((&v["state"], &v["resolved_by"]), (&json!("rolled_back"), &json!("client")), "{v}");

    // Unknown and malformed ids.
    for bad in ["00000000000000000000000000000000", "nope"] {
        let (code, _) = s.call("GET", &format!("/v1/transactions/{bad}"), None).await;
        assert_eq!(code, 404);
        let (code, _) = post(&s, &format!("/v1/transactions/{bad}/commit"), json!({})).await;
        assert_eq!(code, 404);
    }
    // Bad requests.
    for bad in [
        json!({"messages": [{"topic": "a", "body": "x"}]}),
        json!({"producer_group": "pg", "messages": []}),
        json!({"producer_group": "pg", "messages": [{"body": "no topic"}]}),
        json!({"producer_group": "pg", "messages": [{"topic": "a", "body": "x", "dedup_id": "d"}]}),
        json!({"producer_group": "pg", "messages": [{"topic": "a", "body": "x"}], "check_after_ms": 5}),
    ] {
        let (code, v) = post(&s, "/v1/transactions", bad.clone()).await;
        assert_eq!((code, v["error"]["code"].as_str()), (400, Some("INVALID_ARGUMENT")), "{bad}: {v}");
    }

    // One left prepared; the listing, then a restart.
    let (_, t3) =
        post(&s, "/v1/transactions", json!({"producer_group": "other", "messages": [{"topic": "b", "body": "b3"}]}))
            .await;
    let id3 = t3["transaction_id"].as_str().unwrap().to_string();
    let (_, v) = s.call("GET", "/v1/transactions?state=prepared", None).await;
    let ids: Vec<&str> =
        v["transactions"].as_array().unwrap().iter().map(|t| t["transaction_id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec![id3.as_str()]);
    let (_, v) = s.call("GET", "/v1/transactions?producer_group=pg", None).await;
    let ids: Vec<&str> =
        v["transactions"].as_array().unwrap().iter().map(|t| t["transaction_id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec![id2.as_str(), id.as_str()], "newest first");
    s.stop().await;
    let s = TestServer::start_with_clock(&config(dir.path()), clock.clone()).await;
    let (_, v) = s.call("GET", &format!("/v1/transactions/{id3}"), None).await;
    assert_eq!(v["state"], "prepared", "{v}");
    let (_, v) = s.call("GET", &format!("/v1/transactions/{id}"), None).await;
    assert_eq!((&v["state"], v["messages"].as_array().map(Vec::len)), (&json!("committed"), Some(3)), "{v}");
    assert!(bodies(&s, "b", "g").await.is_empty(), "still prepared after the restart");
    let (code, _) = post(&s, &format!("/v1/transactions/{id3}/commit"), json!({})).await;
    assert_eq!(code, 200);
    assert_eq!(bodies(&s, "b", "g").await, vec!["b3"]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_are_counted_when_handed_out_and_the_last_one_ends_in_a_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let s = TestServer::start_with_clock(&config(dir.path()), clock.clone()).await;
    let (_, t) = post(
        &s,
        "/v1/transactions",
        json!({"producer_group": "pg", "check_after_ms": 1000, "messages": [{"topic": "a", "body": "m"}]}),
    )
    .await;
    let id = t["transaction_id"].as_str().unwrap().to_string();
    let check = |group: &'static str| {
        let s = &s;
        async move { post(s, &format!("/v1/producers/{group}/transactions/check"), json!({"max": 10})).await }
    };
    assert_eq!(check("pg").await, (200, json!({"transactions": []})), "not before check_after_ms");
    clock.set(T0 + 1_000);
    assert_eq!(check("other").await.1["transactions"], json!([]), "another group's");
    let (code, v) = check("pg").await;
    assert_eq!(code, 200);
    assert_eq!((&v["transactions"][0]["transaction_id"], &v["transactions"][0]["checks"]), (&json!(id), &json!(1)));
    assert_eq!(v["transactions"][0]["messages"][0]["body"], "m");
    assert_eq!(v["transactions"][0]["messages"][0]["topic"], "a");
    assert_eq!(check("pg").await.1["transactions"], json!([]), "once per interval");
    // Nobody asks for a while: nothing is counted.
    clock.set(T0 + 500_000);
    let (_, v) = s.call("GET", &format!("/v1/transactions/{id}"), None).await;
    assert_eq!((&v["state"], &v["checks"]), (&json!("prepared"), &json!(1)), "{v}");
    assert_eq!(check("pg").await.1["transactions"][0]["checks"], 2);
    // check_max (2) handed out: one interval later it is resolved by timeout (rollback).
    assert_eq!(check("pg").await.1["transactions"], json!([]));
    clock.set(T0 + 510_000);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let v = loop {
        let (_, v) = s.call("GET", &format!("/v1/transactions/{id}"), None).await;
        if v["state"] != "prepared" {
            break v;
        }
        assert!(std::time::Instant::now() < deadline, "not resolved by timeout: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!((&v["state"], &v["resolved_by"], &v["checks"]), (&json!("rolled_back"), &json!("timeout"), &json!(2)));
    assert!(bodies(&s, "a", "g").await.is_empty());
    let (code, v) = post(&s, &format!("/v1/transactions/{id}/commit"), json!({})).await;
    assert_eq!((code, v["error"]["code"].as_str()), (409, Some("TRANSACTION_RESOLVED")));
    let text = s.http.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let m = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    for (name, want) in [
        ("chime_transactions_prepared", 0.0),
        ("chime_transactions_rolled_back_total", 1.0),
        ("chime_transactions_resolved_by_timeout_total", 1.0),
        ("chime_transactions_checks_total", 2.0),
        ("chime_transactions_committed_total", 0.0),
    ] {
        assert_eq!(common::metrics::value(&m, name, &[]), want, "{name}");
    }
    // Bad check requests.
    for bad in [json!({"max": 0}), json!({"max": 101}), json!({"wait_ms": 30001}), json!({"x": 1})] {
        let (code, _) = post(&s, "/v1/producers/pg/transactions/check", bad.clone()).await;
        assert_eq!(code, 400, "{bad}");
    }
    s.stop().await;
}
