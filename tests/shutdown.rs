//! README "Quick start": on `SIGTERM` chime stops accepting, finishes in-flight requests,
//! persists consumer-group progress, flushes and checkpoints, then exits 0.
//!
//! Under load (senders of normal and scheduled messages, a consumer acking what it gets) the
//! binary gets a SIGTERM. It runs with the power-cut simulation and with its periodic flush and
//! group persist set to a minute, so that only the shutdown itself can have made the last
//! sends and acks durable; the next server starts on what a power cut right after the exit
//! would leave. Every 201 must be there, and no message whose ack was answered 200 comes back.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::binary::{DumpLogsOnPanic, Proc};
use common::client::{self, Until};
use serde_json::{json, Value};

const TOPIC: &str = "term";

/// Sends until a request fails; returns the bodies answered 201.
async fn sender(
    http: reqwest::Client,
    base: String,
    w: usize,
    stop: Arc<AtomicBool>,
    created: Arc<AtomicUsize>,
) -> Vec<String> {
    let mut acked = Vec::new();
    for i in 0.. {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let body = format!("w{w}-{i}");
        let msg = if i % 3 == 0 { json!({"body": body, "delay_ms": 1500}) } else { json!({"body": body}) };
        match http.post(format!("{base}/v1/topics/{TOPIC}/messages")).json(&msg).send().await {
            Ok(r) if r.status().as_u16() == 201 => {
                acked.push(body);
                created.fetch_add(1, Ordering::Relaxed);
            }
            Ok(r) if r.status().as_u16() == 503 => break, // shutting down: no longer accepting
            Ok(r) => panic!("send answered {}: {:?}", r.status(), r.text().await),
            Err(_) => break,
        }
    }
    acked
}

/// Receives and acks with group `g` until a request fails; returns the bodies whose ack was
/// answered 200 (and not listed invalid).
async fn consumer(http: reqwest::Client, base: String, stop: Arc<AtomicBool>) -> Vec<String> {
    let mut acked = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let Ok(r) = http
            .post(format!("{base}/v1/topics/{TOPIC}/groups/g/receive"))
            .json(&json!({"max_messages": 100, "wait_ms": 200}))
            .send()
            .await
        else {
            break;
        };
        let Ok(v) = r.json::<Value>().await else { break };
        let msgs = v["messages"].as_array().cloned().unwrap_or_default();
        if msgs.is_empty() {
            continue;
        }
        let handles: Vec<Value> = msgs.iter().map(|m| m["receipt_handle"].clone()).collect();
        let Ok(r) = http
            .post(format!("{base}/v1/topics/{TOPIC}/groups/g/ack"))
            .json(&json!({"receipt_handles": handles}))
            .send()
            .await
        else {
            break;
        };
        if r.status().as_u16() != 200 {
            break;
        }
        let Ok(a) = r.json::<Value>().await else { break };
        let invalid: BTreeSet<&str> =
            a["invalid"].as_array().map(|v| v.iter().filter_map(|h| h.as_str()).collect()).unwrap_or_default();
        for m in &msgs {
            if !invalid.contains(m["receipt_handle"].as_str().unwrap()) {
                acked.push(m["body"].as_str().unwrap().to_string());
            }
        }
    }
    acked
}

/// Everything group `group` receives within `for_ms` (acking it).
async fn drain(http: &reqwest::Client, base: &str, group: &str, for_ms: u64) -> Vec<String> {
    let msgs = client::drain(http, base, TOPIC, group, Until::For(Duration::from_millis(for_ms))).await;
    msgs.iter().map(client::body_of).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_keeps_every_201_and_every_ack_through_a_power_cut_after_it() {
    let tmp = tempfile::tempdir().unwrap();
    let _dump = DumpLogsOnPanic(tmp.path().to_path_buf());
    let (data, shadow, after) = (tmp.path().join("data"), tmp.path().join("shadow"), tmp.path().join("after"));
    std::fs::create_dir_all(&data).unwrap();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let failpoints = format!("{}=return({})", chime::store::powercut::FAILPOINT, shadow.display());
    let env = [
        ("FAILPOINTS", failpoints.as_str()),
        ("CHIME_STORE_FLUSH_INTERVAL", "60s"),
        ("CHIME_GROUP_PERSIST_INTERVAL", "60s"),
    ];
    let mut server = Proc::start_with(&data, tmp.path(), "first", &http, &env).await;

    let stop = Arc::new(AtomicBool::new(false));
    let created = Arc::new(AtomicUsize::new(0));
    let senders: Vec<_> = (0..4)
        .map(|w| tokio::spawn(sender(http.clone(), server.base.clone(), w, stop.clone(), created.clone())))
        .collect();
    let cons = tokio::spawn(consumer(http.clone(), server.base.clone(), stop.clone()));
    // Under load for a while, and long enough for the test to check something (a busy machine
    // may answer slowly at first).
    tokio::time::sleep(Duration::from_millis(800)).await;
    let until = Instant::now() + Duration::from_secs(30);
    while created.load(Ordering::Relaxed) < 300 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let t0 = Instant::now();
    server.terminate().await; // exit 0 within 10 s, asserted
    eprintln!("exited {:?} after SIGTERM", t0.elapsed());
    stop.store(true, Ordering::Relaxed);
    let mut sent = BTreeSet::new();
    for s in senders {
        sent.extend(s.await.unwrap());
    }
    let consumed: BTreeSet<String> = cons.await.unwrap().into_iter().collect();
    assert!(
        sent.len() > 100 && !consumed.is_empty(),
        "{} sent, {} consumed: the test checks little",
        sent.len(),
        consumed.len()
    );

    // The power goes right after the exit: only what was fsync'd is there.
    chime::store::powercut::materialize(&shadow, &after).unwrap();
    let mut second = Proc::start(&after, tmp.path(), "second", &http).await;
    // Every 201, once the scheduled ones are due; seen by a new group.
    let all: BTreeSet<String> = drain(&http, &second.base, "fresh", 3000).await.into_iter().collect();
    let missing: Vec<_> = sent.difference(&all).collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged sends lost, e.g. {:?}",
        missing.len(),
        sent.len(),
        &missing[..missing.len().min(10)]
    );
    // Group g goes on where its acks left it: nothing acked comes back.
    let again: BTreeSet<String> = drain(&http, &second.base, "g", 1000).await.into_iter().collect();
    let redelivered: Vec<_> = consumed.intersection(&again).collect();
    assert!(
        redelivered.is_empty(),
        "{} acked messages redelivered, e.g. {:?}",
        redelivered.len(),
        &redelivered[..redelivered.len().min(10)]
    );
    eprintln!(
        "{} sends acknowledged, {} acks; after the SIGTERM and a power cut: all there, none redelivered",
        sent.len(),
        consumed.len()
    );
    second.terminate().await;
}
