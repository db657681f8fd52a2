//! Deduplicated sends over HTTP (API.md "Deduplication"), on a simulated clock: a repeat
//! within `dedup.window` stores nothing and answers 200 with the first message (its state now);
//! per topic; in batches (a duplicate element answered with its original, the new ones stored,
//! 201 if anything was stored); scheduled and cancelled originals; after the window a new
//! message; across a clean restart; concurrent repeats store one message; bad ids are 400.

mod common;

use std::sync::Arc;

use chime::clock::ManualClock;
use common::{test_config, TestServer};
use serde_json::{json, Value};

const T0: i64 = 1_800_000_000_000;

fn ids(v: &Value) -> Vec<String> {
    v["messages"].as_array().unwrap().iter().map(|m| m["message_id"].as_str().unwrap().to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeats_within_the_window_are_answered_with_the_first_message_and_store_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let s = TestServer::start_with_clock(&test_config(dir.path()), clock.clone()).await;
    let (code, first) = s.send("t", json!({"body": "a", "dedup_id": "d1", "keys": ["k"]})).await;
    assert_eq!(code, 201, "{first}");
    let (code, again) = s.send("t", json!({"body": "a, again", "dedup_id": "d1"})).await;
    assert_eq!((code, &again["message_id"], &again["state"]), (200, &first["message_id"], &json!("delivered")));
    assert_eq!(again["deliver_at_ms"], first["deliver_at_ms"]);
    // Per topic: the same id elsewhere is new.
    assert_eq!(s.send("u", json!({"body": "a", "dedup_id": "d1"})).await.0, 201);

    // A batch: a repeat, a new one, the new one again, one without an id.
    let (code, v) = s
        .send(
            "t",
            json!([{"body": "x", "dedup_id": "d1"}, {"body": "b", "dedup_id": "d2"}, {"body": "b2", "dedup_id": "d2"}, {"body": "c"}]),
        )
        .await;
    assert_eq!(code, 201, "{v}");
    let got = ids(&v);
    assert_eq!(got[0], first["message_id"].as_str().unwrap());
    assert_eq!(got[1], got[2], "a repeat inside the batch answers as its first");
    assert_ne!(got[1], got[3]);
    // Only repeats: 200.
    let (code, v) = s.send("t", json!([{"body": "x", "dedup_id": "d1"}, {"body": "y", "dedup_id": "d2"}])).await;
    assert_eq!((code, ids(&v)), (200, vec![got[0].clone(), got[1].clone()]));
    // One message of each stored: a, b, c (and the other topic's).
    let msgs = s.receive("t", "g", json!({"max_messages": 100})).await;
    let mut bodies: Vec<&str> = msgs.iter().map(|m| m["body"].as_str().unwrap()).collect();
    bodies.sort();
    assert_eq!(bodies, vec!["a", "b", "c"]);
    // The reserved key is never shown: not on receive, not in a lookup by key.
    let a = msgs.iter().find(|m| m["body"] == "a").unwrap();
    assert_eq!(a["keys"], json!(["k"]));
    let (_, v) = s.call("GET", "/v1/topics/t/messages?key=k", None).await;
    assert_eq!(v["messages"][0]["keys"], json!(["k"]), "{v}");

    // A scheduled original: the repeat says scheduled, then cancelled once it is cancelled.
    let (code, sch) = s.send("t", json!({"body": "later", "dedup_id": "d3", "delay_ms": 60000})).await;
    assert_eq!((code, &sch["state"]), (201, &json!("scheduled")));
    let (code, v) = s.send("t", json!({"body": "later", "dedup_id": "d3", "delay_ms": 60000})).await;
    assert_eq!((code, &v["message_id"], &v["state"]), (200, &sch["message_id"], &json!("scheduled")));
    let (code, _) =
        s.call("DELETE", &format!("/v1/topics/t/messages/{}", sch["message_id"].as_str().unwrap()), None).await;
    assert_eq!(code, 200);
    let (code, v) = s.send("t", json!({"body": "later", "dedup_id": "d3", "delay_ms": 60000})).await;
    assert_eq!((code, &v["message_id"], &v["state"]), (200, &sch["message_id"], &json!("cancelled")));

    // Past the window (5 minutes by default): a new message.
    clock.set(T0 + 300_001);
    let (code, v) = s.send("t", json!({"body": "a", "dedup_id": "d1"})).await;
    assert_eq!(code, 201, "{v}");
    assert_ne!(v["message_id"], first["message_id"]);
    let renewed = v["message_id"].clone();

    // Across a restart: still a repeat.
    s.stop().await;
    let s = TestServer::start_with_clock(&test_config(dir.path()), clock.clone()).await;
    let (code, v) = s.send("t", json!({"body": "a", "dedup_id": "d1"})).await;
    assert_eq!((code, &v["message_id"]), (200, &renewed));

    // Bad ids and reserved keys.
    for bad in [
        json!({"body": "x", "dedup_id": ""}),
        json!({"body": "x", "dedup_id": "d".repeat(129)}),
        json!({"body": "x", "keys": ["\u{0}dedup\u{0}d1"]}),
    ] {
        let (code, v) = s.send("t", bad.clone()).await;
        assert_eq!((code, v["error"]["code"].as_str()), (400, Some("INVALID_ARGUMENT")), "{bad}: {v}");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_repeats_store_one_message() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(TestServer::start(&test_config(dir.path())).await);
    for round in 0..20 {
        let mut tasks = Vec::new();
        for i in 0..8 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                s.send("c", json!({"body": format!("{round}/{i}"), "dedup_id": format!("r{round}")})).await
            }));
        }
        let mut answers = Vec::new();
        for t in tasks {
            answers.push(t.await.unwrap());
        }
        let created = answers.iter().filter(|(c, _)| *c == 201).count();
        assert_eq!(created, 1, "round {round}: {answers:?}");
        assert!(answers.iter().all(|(c, v)| (*c == 200 || *c == 201) && v["message_id"] == answers[0].1["message_id"]));
    }
    let (_, v) = s.call("GET", "/v1/topics", None).await;
    let c = v["topics"].as_array().unwrap().iter().find(|t| t["name"] == "c").unwrap();
    assert_eq!(c["messages"], 20, "one stored per id");
}
