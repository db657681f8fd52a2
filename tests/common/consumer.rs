//! Consumer-lifecycle calls on the lifecycle harness ([`super::lifecycle::H`]) for the tests of
//! nacks, dead letters and extend: receive, nack, configure, and what a dead letter topic holds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chime::group::config::Retry;
use chime::group::{Batch, GroupConfig, TagExpr};
use chime::service::{consume, deliver};
use chime::store::topics::Topic;

use super::lifecycle::{H, TOPIC};

/// (id, body, attempt, receipt handle) of a delivery.
pub type Delivery = (String, String, u32, String);

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

pub fn topic(h: &H) -> Arc<Topic> {
    h.store.topics().get(TOPIC).unwrap()
}

/// What one receive of `group` hands out.
pub fn receive(h: &H, group: &str, invisible_ms: i64) -> Vec<Delivery> {
    let t = topic(h);
    let batch = Batch { max: 100, max_bytes: 8 << 20 };
    let got = rt().block_on(h.consumers.receive(group, &t, batch, invisible_ms, &TagExpr::All)).unwrap();
    got.messages
        .iter()
        .map(|d| {
            let rec = d.record.record();
            let m = deliver(&rec, d.log_offset);
            (m.id, String::from_utf8_lossy(m.body).into_owned(), d.attempt, d.receipt_handle.clone())
        })
        .collect()
}

/// Waits (in real time, for the timer) until a receive hands something out.
pub fn receive_soon(h: &H, group: &str, invisible_ms: i64) -> Vec<Delivery> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = receive(h, group, invisible_ms);
        if !got.is_empty() {
            return got;
        }
        assert!(Instant::now() < deadline, "nothing to receive");
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub fn nack(h: &H, group: &str, handles: &[String], delay_ms: Option<i64>) -> consume::NackOutcome {
    rt().block_on(h.consumers.nack(group, &topic(h), handles, delay_ms)).unwrap()
}

/// The messages of a dead letter topic, as a fresh group ("audit") receives them:
/// (id, body, from topic, from group, delivery attempts).
pub fn dead_letters(h: &H, dlq: &str) -> Vec<(String, String, String, String, u32)> {
    let Some(t) = h.store.topics().get(dlq) else { return Vec::new() };
    let batch = Batch { max: 100, max_bytes: 8 << 20 };
    let got = h.groups.receive("audit", &t, batch, 60_000, &TagExpr::All).unwrap();
    got.messages
        .iter()
        .map(|d| {
            let rec = d.record.record();
            let m = deliver(&rec, d.log_offset);
            let dl = m.dead_letter.expect("a dead letter says where it came from");
            (
                m.id,
                String::from_utf8_lossy(m.body).into_owned(),
                dl.topic.to_string(),
                dl.group.to_string(),
                dl.delivery_attempts,
            )
        })
        .collect()
}

/// Configures `group` with `max` delivery attempts and a backoff of 1 s, 2 s, 4 s, at most 5 s;
/// asserts that the first call creates it and a second updates it.
pub fn configure(h: &H, group: &str, max: u32) {
    let cfg = GroupConfig {
        max_delivery_attempts: max,
        retry: Retry { initial_ms: 1000, max_ms: 5000, multiplier: 2.0 },
        ..GroupConfig::default()
    };
    assert!(h.consumers.configure(group, &topic(h), cfg.clone()).unwrap(), "first configuration: created");
    assert!(!h.consumers.configure(group, &topic(h), cfg).unwrap(), "again: updated");
}
