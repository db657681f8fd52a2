//! Lookup by key over HTTP (API.md `GET /v1/topics/{topic}/messages?key=K&limit=`): normal and
//! scheduled messages (pending, cancelled, delivered), newest first, one answer per id, only
//! the topic's, with the limit; the index survives a restart (kept and replayed in recovery).

mod common;

use std::time::Duration;

use common::{test_config, TestServer};
use serde_json::{json, Value};

async fn by_key(s: &TestServer, topic: &str, key: &str, limit: Option<u32>) -> Vec<Value> {
    let q = limit.map_or(String::new(), |l| format!("&limit={l}"));
    let (code, v) = s.call("GET", &format!("/v1/topics/{topic}/messages?key={key}{q}"), None).await;
    assert_eq!(code, 200, "{v}");
    v["messages"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_are_found_by_key_newest_first_whatever_their_state_and_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let s = TestServer::start(&config).await;
    let id = |v: &Value| v["message_id"].as_str().unwrap().to_string();
    let (_, first) = s.send("orders", json!({"body": "paid", "keys": ["order-1", "cust-9"], "tag": "paid"})).await;
    let (_, soon) = s.send("orders", json!({"body": "remind", "keys": ["order-1"], "delay_ms": 1000})).await;
    let (_, far) = s.send("orders", json!({"body": "expire", "keys": ["order-1"], "delay_ms": 3_600_000})).await;
    let (_, gone) = s.send("orders", json!({"body": "undo", "keys": ["order-1"], "delay_ms": 3_600_000})).await;
    let (code, _) = s.call("DELETE", &format!("/v1/topics/orders/messages/{}", id(&gone)), None).await;
    assert_eq!(code, 200);
    s.send("orders", json!({"body": "other", "keys": ["order-2"]})).await;
    s.send("invoices", json!({"body": "same key, other topic", "keys": ["order-1"]})).await;
    tokio::time::sleep(Duration::from_millis(1500)).await; // `soon` fires

    let check = |got: Vec<Value>| {
        let ids: Vec<String> = got.iter().map(id).collect();
        assert_eq!(ids, vec![id(&gone), id(&far), id(&soon), id(&first)], "newest first, once each: {got:?}");
        let states: Vec<&str> = got.iter().map(|m| m["state"].as_str().unwrap()).collect();
        assert_eq!(states, ["cancelled", "scheduled", "delivered", "delivered"]);
        assert_eq!(got[3]["tag"], "paid");
        assert_eq!(got[3]["keys"], json!(["order-1", "cust-9"]));
        assert_eq!(got[1]["deliver_at_ms"], far["deliver_at_ms"]);
        assert!(got[3]["born_at_ms"].as_i64().unwrap() > 0);
    };
    check(by_key(&s, "orders", "order-1", None).await);
    assert_eq!(by_key(&s, "orders", "order-1", Some(2)).await.len(), 2);
    assert_eq!(by_key(&s, "orders", "cust-9", None).await.len(), 1);
    assert!(by_key(&s, "orders", "nobody", None).await.is_empty());
    assert!(by_key(&s, "nosuchtopic", "order-1", None).await.is_empty());
    for bad in ["", "?key=", "?key=a&limit=0", "?key=a&limit=1001", "?key=a&limit=x"] {
        let (code, v) = s.call("GET", &format!("/v1/topics/orders/messages{bad}"), None).await;
        assert_eq!((code, v["error"]["code"].as_str()), (400, Some("INVALID_ARGUMENT")), "{bad}: {v}");
    }
    // A restart: the index is kept (flushed at the store's checkpoint) and what came after the
    // checkpoint is indexed again by the replay, once.
    s.stop().await;
    let s = TestServer::start(&config).await;
    check(by_key(&s, "orders", "order-1", None).await);
    s.stop().await;
}
