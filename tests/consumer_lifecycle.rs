//! The consumer lifecycle (API.md "Consumer groups: retry, dead letters, lag, seek, lookup by
//! key") on the simulated clock: nack with the group's backoff (a timer job: the redelivery is a
//! scheduled message of the group's retry topic), dead letters after the last attempt, once,
//! with where they came from, also when a crash interrupts them; invisibility timeouts count as
//! attempts; attempts survive restarts; extend; seek; the group's figures.

mod common;

use chime::group::config::{retry_topic, Retry};
use chime::group::{Batch, GroupConfig, SeekTo, TagExpr};
use chime::service::{consume, deliver};
use chime::store::topics::Topic;
use common::lifecycle::{H, T0, TOPIC};
use std::sync::Arc;

const G: &str = "workers";

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn topic(h: &H) -> Arc<Topic> {
    h.store.topics().get(TOPIC).unwrap()
}

/// (id, body, attempt, handle) of what one receive hands out.
fn receive(h: &H, group: &str, invisible_ms: i64) -> Vec<(String, String, u32, String)> {
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
fn receive_soon(h: &H, group: &str, invisible_ms: i64) -> Vec<(String, String, u32, String)> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let got = receive(h, group, invisible_ms);
        if !got.is_empty() {
            return got;
        }
        assert!(std::time::Instant::now() < deadline, "nothing to receive");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

fn nack(h: &H, handles: &[String], delay_ms: Option<i64>) -> consume::NackOutcome {
    rt().block_on(h.consumers.nack(G, &topic(h), handles, delay_ms)).unwrap()
}

/// The messages of a dead letter topic, as a fresh group receives them: (id, body, dead_letter).
fn dead_letters(h: &H, dlq: &str) -> Vec<(String, String, String, String, u32)> {
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

fn configure(h: &H, max: u32) {
    let cfg = GroupConfig {
        max_delivery_attempts: max,
        retry: Retry { initial_ms: 1000, max_ms: 5000, multiplier: 2.0 },
        ..GroupConfig::default()
    };
    assert!(h.consumers.configure(G, &topic(h), cfg.clone()).unwrap(), "first configuration: created");
    assert!(!h.consumers.configure(G, &topic(h), cfg).unwrap(), "again: updated");
}

#[test]
fn nacks_back_off_through_the_timer_and_the_last_attempt_goes_to_the_dead_letter_topic_once() {
    let _failpoints = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let h = H::new(dir.path());
    let id = h.send("payload".into(), None);
    configure(&h, 4);
    // Attempts 1..3 are nacked: redelivered after 1 s, 2 s, 4 s, never before; the 4th nack
    // (the last attempt) dead-letters it.
    let mut now = T0;
    for (attempt, backoff) in [(1u32, 1000i64), (2, 2000), (3, 4000)] {
        let got = receive_soon(&h, G, 30_000);
        assert_eq!(got.len(), 1, "attempt {attempt}");
        assert_eq!((&got[0].0, got[0].1.as_str(), got[0].2), (&id, "payload", attempt));
        let out = nack(&h, &[got[0].3.clone()], None);
        assert_eq!((out.nacked, out.dead_lettered), (1, 0));
        assert!(out.invalid.is_empty());
        assert!(nack(&h, &[got[0].3.clone()], None).invalid.len() == 1, "a nacked handle is spent");
        // It waits in the timer (no memory of the group's): nothing to receive until its time.
        assert_eq!(h.timer.stats().pending_total, 1);
        h.clock.set(now + backoff - 1);
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(receive(&h, G, 30_000).is_empty(), "attempt {attempt}: redelivered early");
        now += backoff;
        h.clock.set(now);
    }
    let got = receive_soon(&h, G, 30_000);
    assert_eq!((&got[0].0, got[0].2), (&id, 4));
    let out = nack(&h, &[got[0].3.clone()], None);
    assert_eq!((out.nacked, out.dead_lettered), (1, 1));
    let s = h.groups.summary(G, &topic(&h)).unwrap();
    assert_eq!((s.backlog, s.in_flight, s.dead_lettered), (0, 0, 1), "{s:?}");
    h.clock.set(now + 60_000);
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(receive(&h, G, 30_000).is_empty(), "never redelivered after its dead letter");
    let dl = dead_letters(&h, "%DLQ%workers");
    assert_eq!(dl, vec![(id, "payload".into(), TOPIC.into(), G.into(), 4)], "once, same id and body");
    assert!(h.store.topics().get(&retry_topic(TOPIC, G)).is_some(), "the retries went through the retry topic");
}

#[test]
fn invisibility_timeouts_count_as_attempts_and_attempts_survive_a_restart() {
    let _failpoints = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let h = H::new(dir.path());
    let id = h.send("x".into(), None);
    configure(&h, 3);
    assert_eq!(receive(&h, G, 5_000)[0].2, 1);
    h.advance_to(T0 + 5_000);
    let got = receive(&h, G, 5_000);
    assert_eq!(got[0].2, 2, "the timeout was an attempt");
    // A nack with its own delay, then a crash while the redelivery waits in the timer.
    nack(&h, &[got[0].3.clone()], Some(600_000));
    h.groups.persist_all().unwrap();
    let h = h.crash();
    h.clock.set(T0 + 5_000 + 599_999);
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(receive(&h, G, 5_000).is_empty());
    h.clock.set(T0 + 5_000 + 600_000);
    let got = receive_soon(&h, G, 5_000);
    assert_eq!((&got[0].0, got[0].2), (&id, 3), "attempt 3 after the restart");
    // Its invisibility ends on the last attempt: the next delivery would be the 4th, so it goes
    // to the dead letter topic instead.
    h.clock.set(T0 + 5_000 + 610_000);
    assert!(receive(&h, G, 5_000).is_empty());
    assert_eq!(dead_letters(&h, "%DLQ%workers").len(), 1);
    assert_eq!(h.groups.summary(G, &topic(&h)).unwrap().dead_lettered, 1);
}

#[test]
fn a_crash_while_storing_a_dead_letter_neither_loses_it_nor_stores_it_twice() {
    for failpoint in [consume::STOP_BEFORE_DEAD_LETTER, consume::STOP_AFTER_DEAD_LETTER] {
        let scenario = fail::FailScenario::setup();
        let dir = tempfile::tempdir().unwrap();
        let h = H::new(dir.path());
        let id = h.send("dl".into(), None);
        configure(&h, 1);
        let got = receive(&h, G, 30_000);
        fail::cfg(failpoint, "return").unwrap();
        let r = rt().block_on(h.consumers.nack(G, &topic(&h), &[got[0].3.clone()], None));
        assert!(r.is_err(), "{failpoint}: stopped");
        fail::remove(failpoint);
        // The crash: nothing after the failpoint happened; the mark was made durable first.
        let h = h.crash();
        h.advance_to(T0 + 120_000);
        assert!(receive(&h, G, 30_000).is_empty(), "{failpoint}: never redelivered");
        let dl = dead_letters(&h, "%DLQ%workers");
        assert_eq!(dl.len(), 1, "{failpoint}: stored once: {dl:?}");
        assert_eq!(dl[0].0, id);
        assert_eq!(h.groups.summary(G, &topic(&h)).unwrap().dead_lettered, 1, "{failpoint}");
        scenario.teardown();
    }
}

#[test]
fn extend_keeps_a_message_invisible_and_its_handle_valid_and_seek_moves_the_group() {
    let _failpoints = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let h = H::new(dir.path());
    let t0 = h.send("first".into(), None);
    let got = receive(&h, G, 5_000);
    let (n, invalid) = h.groups.extend(G, &topic(&h), &[got[0].3.clone(), "junk".into()], 60_000);
    assert_eq!((n, invalid), (1, vec!["junk".to_string()]));
    let s = h.groups.summary(G, &topic(&h)).unwrap();
    assert_eq!((s.backlog, s.in_flight), (0, 1));
    h.advance_to(T0 + 30_000);
    assert!(receive(&h, G, 5_000).is_empty(), "still invisible past its first deadline");
    let (acked, _) = h.groups.ack(G, &topic(&h), &[got[0].3.clone()]);
    assert_eq!(acked, 1, "the handle stayed valid");
    // Ten more, one a minute; then seek by time, to the earliest and to the latest.
    let mut ids = vec![t0];
    for i in 0..10 {
        h.advance_to(T0 + 60_000 * (i + 1));
        ids.push(h.send(format!("m{i}"), None));
    }
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    let all: Vec<String> = receive(&h, G, 60_000).into_iter().map(|m| m.0).collect();
    assert_eq!(sorted(all), sorted(ids[1..].to_vec()));
    let rt = rt();
    let backlog = rt.block_on(h.consumers.seek(G, &topic(&h), SeekTo::Time(T0 + 60_000 * 6))).unwrap();
    assert_eq!(backlog, 5, "stored at or after minute 6: the last five");
    let again: Vec<String> = receive(&h, G, 60_000).into_iter().map(|m| m.0).collect();
    assert_eq!(sorted(again), sorted(ids[6..].to_vec()), "from there on");
    assert_eq!(rt.block_on(h.consumers.seek(G, &topic(&h), SeekTo::Earliest)).unwrap(), 11);
    assert_eq!(rt.block_on(h.consumers.seek(G, &topic(&h), SeekTo::Latest)).unwrap(), 0);
    assert!(receive(&h, G, 60_000).is_empty());
}

#[test]
fn a_crash_while_storing_a_delayed_redelivery_redelivers_it_once() {
    for failpoint in [consume::STOP_BEFORE_DEAD_LETTER, consume::STOP_AFTER_DEAD_LETTER] {
        let scenario = fail::FailScenario::setup();
        let dir = tempfile::tempdir().unwrap();
        let h = H::new(dir.path());
        let id = h.send("again".into(), None);
        configure(&h, 5);
        let got = receive(&h, G, 30_000);
        fail::cfg(failpoint, "return").unwrap();
        let r = rt().block_on(h.consumers.nack(G, &topic(&h), &[got[0].3.clone()], Some(10_000)));
        assert!(r.is_err(), "{failpoint}: stopped");
        fail::remove(failpoint);
        let h = h.crash();
        // Past the original's invisibility and the redelivery's time: it comes back once, as
        // attempt 2, whether the crash came before or after the redelivery was stored.
        assert!(receive(&h, G, 30_000).is_empty(), "{failpoint}: taken out of delivery for good");
        h.clock.set(T0 + 60_000);
        let again = receive_soon(&h, G, 30_000);
        assert_eq!(again.len(), 1, "{failpoint}: {again:?}");
        assert_eq!((&again[0].0, again[0].2), (&id, 2), "{failpoint}");
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert!(receive(&h, G, 30_000).is_empty(), "{failpoint}: once");
        scenario.teardown();
    }
}
