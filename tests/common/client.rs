//! A JSON client for a chime at any base URL (an in-process server or the binary): post,
//! receive, ack, and draining a group. Each asserts the answers a healthy server gives.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// POSTs `body` as JSON; returns the status and the answer (JSON, or the text as a string).
pub async fn post(http: &reqwest::Client, url: &str, body: &Value) -> (u16, Value) {
    let r = http.post(url).json(body).send().await.unwrap_or_else(|e| panic!("POST {url}: {e}"));
    let status = r.status().as_u16();
    let text = r.text().await.unwrap_or_else(|e| panic!("POST {url}: reading the body: {e}"));
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// One receive; asserts 200.
pub async fn receive(http: &reqwest::Client, base: &str, topic: &str, group: &str, req: Value) -> Vec<Value> {
    let url = format!("{base}/v1/topics/{topic}/groups/{group}/receive");
    let (s, v) = post(http, &url, &req).await;
    assert_eq!(s, 200, "receive {req}: {v}");
    v["messages"].as_array().unwrap_or_else(|| panic!("receive answer without messages: {v}")).clone()
}

/// Acks `msgs` (fresh deliveries); asserts every handle is acked.
pub async fn ack(http: &reqwest::Client, base: &str, topic: &str, group: &str, msgs: &[Value]) {
    let handles: Vec<_> = msgs.iter().map(|m| m["receipt_handle"].clone()).collect();
    let url = format!("{base}/v1/topics/{topic}/groups/{group}/ack");
    let (s, v) = post(http, &url, &json!({ "receipt_handles": handles })).await;
    assert_eq!(s, 200, "ack: {v}");
    assert_eq!(v["acked"].as_u64(), Some(msgs.len() as u64), "ack of {} fresh handles: {v}", msgs.len());
}

/// When [`drain`] stops.
#[derive(Debug, Clone, Copy)]
pub enum Until {
    /// After two empty answers in a row (each a 200 ms long poll); fails after 60 s.
    Quiet,
    /// After this long, whatever arrives (for messages that are still to fall due).
    For(Duration),
}

/// Receives with `group` (1000 at a time) and acks as it goes; returns the messages in delivery
/// order.
pub async fn drain(http: &reqwest::Client, base: &str, topic: &str, group: &str, until: Until) -> Vec<Value> {
    let start = Instant::now();
    let mut out = Vec::new();
    let mut empties = 0;
    loop {
        match until {
            Until::Quiet if empties >= 2 => break,
            Until::Quiet => assert!(
                start.elapsed() < Duration::from_secs(60),
                "draining {topic}/{group} takes over 60 s ({} so far)",
                out.len()
            ),
            Until::For(d) if start.elapsed() >= d => break,
            Until::For(_) => {}
        }
        let msgs = receive(http, base, topic, group, json!({"max_messages": 1000, "wait_ms": 200})).await;
        if msgs.is_empty() {
            empties += 1;
            continue;
        }
        empties = 0;
        ack(http, base, topic, group, &msgs).await;
        out.extend(msgs);
    }
    out
}

/// A message's text body.
pub fn body_of(m: &Value) -> String {
    m["body"].as_str().unwrap_or_else(|| panic!("message without a text body: {m}")).to_string()
}
