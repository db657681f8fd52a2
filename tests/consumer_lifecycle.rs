//! The consumer lifecycle (API.md "Consumer groups: retry, dead letters, lag, seek, lookup by
//! key") on the simulated clock: nack with the group's backoff (a timer job: the redelivery is a
//! scheduled message of the group's retry topic), dead letters after the last attempt, once,
//! with where they came from, also when a crash interrupts them; invisibility timeouts count as
//! attempts; attempts survive restarts; extend; seek; the group's figures.

mod common;

use chime::group::config::retry_topic;
use chime::group::SeekTo;
use chime::service::consume;
use common::consumer::{dead_letters, receive, receive_soon, rt, topic};
use common::lifecycle::{H, T0, TOPIC};

const G: &str = "workers";

fn nack(h: &H, handles: &[String], delay_ms: Option<i64>) -> consume::NackOutcome {
    common::consumer::nack(h, G, handles, delay_ms)
}

fn configure(h: &H, max: u32) {
    common::consumer::configure(h, G, max)
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

/// Extend racing the invisibility deadline: a millisecond before it, extend keeps the delivery;
/// at it, an extend and a receive of the same group race, and exactly one wins. Either the
/// extend succeeded, the receive got nothing and the old handle acks; or the receive redelivered
/// it (attempt 2), the extend answered the handle invalid and only the new handle acks. Never
/// both: a message extended by one consumer is never handed to another.
#[test]
fn extend_racing_the_invisibility_deadline_either_keeps_the_delivery_or_loses_it_never_both() {
    let _failpoints = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let h = H::new(dir.path());
    let id = h.send("race".into(), None);
    let t = topic(&h);
    // Deterministic edge: one millisecond before the deadline, the extend wins.
    let got = receive(&h, "edge", 5_000);
    h.clock.set(T0 + 4_999);
    assert_eq!(h.groups.extend("edge", &t, &[got[0].3.clone()], 60_000).0, 1);
    h.clock.set(T0 + 5_000);
    assert!(receive(&h, "edge", 5_000).is_empty(), "extended: still invisible at its first deadline");
    // Deterministic edge the other way: at the deadline a receive comes first, so the extend
    // of the old handle is refused and only the new handle acks.
    h.clock.set(T0);
    let old = receive(&h, "edge-2", 5_000);
    h.clock.set(T0 + 5_000);
    let again = receive(&h, "edge-2", 5_000);
    assert_eq!((again.len(), again[0].2), (1, 2), "redelivered at its deadline");
    assert_eq!(h.groups.extend("edge-2", &t, &[old[0].3.clone()], 60_000), (0, vec![old[0].3.clone()]));
    assert_eq!(h.groups.ack("edge-2", &t, &[old[0].3.clone()]).0, 0, "the old handle is spent");
    assert_eq!(h.groups.ack("edge-2", &t, &[again[0].3.clone()]).0, 1);
    h.clock.set(T0);
    let (mut extend_won, mut receive_won) = (0, 0);
    // One group per round (the harness allows 100 per topic).
    for round in 0..80 {
        let group = format!("race-{round}");
        h.clock.set(T0);
        let first = receive(&h, &group, 5_000);
        assert_eq!((&first[0].0, first[0].2), (&id, 1));
        h.clock.set(T0 + 5_000);
        let barrier = std::sync::Barrier::new(2);
        // The receive's runtime is built before the barrier, so both start level.
        let rt = rt();
        let (extended, again) = std::thread::scope(|s| {
            let extender = s.spawn(|| {
                barrier.wait();
                h.groups.extend(&group, &t, &[first[0].3.clone()], 60_000).0
            });
            let receiver = s.spawn(|| {
                barrier.wait();
                let batch = chime::group::Batch { max: 100, max_bytes: 8 << 20 };
                let got = rt.block_on(h.consumers.receive(&group, &t, batch, 5_000, &chime::group::TagExpr::All));
                got.unwrap()
                    .messages
                    .iter()
                    .map(|d| {
                        let m = chime::service::deliver(&d.record.record(), d.log_offset);
                        (m.id, String::new(), d.attempt, d.receipt_handle.clone())
                    })
                    .collect::<Vec<_>>()
            });
            (extender.join().unwrap(), receiver.join().unwrap())
        });
        let old_acks = h.groups.ack(&group, &t, &[first[0].3.clone()]).0;
        match (extended, again.as_slice()) {
            (1, []) => {
                extend_won += 1;
                assert_eq!(old_acks, 1, "round {round}: the extended handle stayed valid");
            }
            (0, [m]) => {
                receive_won += 1;
                assert_eq!((&m.0, m.2), (&id, 2), "round {round}: redelivered as the second attempt");
                assert_eq!(old_acks, 0, "round {round}: the first handle is spent");
                assert_eq!(h.groups.ack(&group, &t, std::slice::from_ref(&m.3)).0, 1);
            }
            other => panic!("round {round}: extend and receive both won or both lost: {other:?}"),
        }
        let s = h.groups.summary(&group, &t).unwrap();
        assert_eq!((s.backlog, s.in_flight), (0, 0), "round {round}: acked once, nothing left: {s:?}");
    }
    eprintln!("extend won {extend_won} rounds, receive won {receive_won}");
}
