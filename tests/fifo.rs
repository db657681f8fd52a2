//! FIFO consumer groups (API.md "Ordered messages and deduplication") on the simulated clock:
//! per message group one message out at a time, in the order the messages became visible
//! (a scheduled one when it fires), a nack or timeout hands the same message out again first,
//! message groups never wait for each other even in one queue, a dead-lettered head lets its
//! group move on, the order survives a restart, and turning FIFO off releases what it held.

mod common;

use std::collections::HashMap;

use chime::group::config::Retry;
use chime::group::fifo::PROP_MESSAGE_GROUP;
use chime::group::GroupConfig;
use chime::store::NewMessage;
use common::consumer::{nack, receive, topic, Delivery};
use common::lifecycle::{NowForTest, H, T0, TOPIC};
use parking_lot::Mutex;

const G: &str = "ordered";

fn fifo_config(max_attempts: u32) -> GroupConfig {
    GroupConfig {
        fifo: true,
        max_delivery_attempts: max_attempts,
        retry: Retry { initial_ms: 1000, max_ms: 1000, multiplier: 1.0 },
        ..GroupConfig::default()
    }
}

/// A harness whose topic has `queues` queues and a FIFO group `G`.
fn harness(dir: &std::path::Path, queues: u16, max_attempts: u32) -> H {
    let h = H::new(dir);
    h.store.topics().create(TOPIC, queues).unwrap();
    h.consumers.configure(G, &topic(&h), fifo_config(max_attempts)).unwrap();
    h
}

/// Sends `body` in message group `group` (delivered at `at` if given); returns its id.
fn send(h: &H, group: &str, body: &str, at: Option<i64>) -> String {
    let mut m = NewMessage {
        body: body.as_bytes().to_vec(),
        born_ms: h.clock.now_ms_for_test(),
        deliver_at_ms: at,
        ..Default::default()
    };
    m.properties.insert(PROP_MESSAGE_GROUP.into(), group.into());
    h.broker.append(TOPIC, vec![m]).unwrap().sent[0].id.to_string()
}

fn bodies(got: &[Delivery]) -> Vec<&str> {
    let mut v: Vec<&str> = got.iter().map(|m| m.1.as_str()).collect();
    v.sort();
    v
}

fn ack(h: &H, m: &Delivery) {
    assert_eq!(h.groups.ack(G, &topic(h), std::slice::from_ref(&m.3)).0, 1, "ack {}", m.1);
}

#[test]
fn one_message_of_a_group_at_a_time_in_order_and_groups_in_one_queue_do_not_wait_for_each_other() {
    let _failpoints = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    // One queue: every message group shares it.
    let h = harness(dir.path(), 1, 3);
    // A scheduled one joins its group when it fires: sent right after a0, it comes after a2.
    send(&h, "a", "a0", None);
    send(&h, "a", "a-late", Some(T0 + 10_000));
    send(&h, "a", "a1", None);
    send(&h, "a", "a2", None);
    send(&h, "b", "b0", None);
    send(&h, "b", "b1", None);
    let first = receive(&h, G, 5_000);
    assert_eq!(bodies(&first), vec!["a0", "b0"], "the head of each group, no more");
    let s = h.groups.summary(G, &topic(&h)).unwrap();
    assert_eq!((s.backlog, s.in_flight), (3, 2), "held messages are backlog: {s:?}");
    assert!(receive(&h, G, 5_000).is_empty(), "both groups wait for their heads");
    // b moves on when b0 is acked; a is still waiting for a0 (a slow group delays only itself).
    ack(&h, first.iter().find(|m| m.1 == "b0").unwrap());
    let b1 = receive(&h, G, 5_000);
    assert_eq!(bodies(&b1), vec!["b1"]);
    ack(&h, &b1[0]);
    // A nack hands the same message out again first, after its delay, as the next attempt.
    let a0 = first.iter().find(|m| m.1 == "a0").unwrap();
    let out = nack(&h, G, std::slice::from_ref(&a0.3), Some(2_000));
    assert_eq!((out.nacked, out.dead_lettered), (1, 0));
    h.clock.set(T0 + 1_999);
    assert!(receive(&h, G, 5_000).is_empty(), "not before its delay, and a1 not instead of it");
    h.clock.set(T0 + 2_000);
    let again = receive(&h, G, 5_000);
    assert_eq!(again.iter().map(|m| (m.1.as_str(), m.2)).collect::<Vec<_>>(), vec![("a0", 2)]);
    // An invisibility timeout too: a0 again (attempt 3, its last).
    h.clock.set(T0 + 7_000);
    let again = receive(&h, G, 5_000);
    assert_eq!(again.iter().map(|m| (m.1.as_str(), m.2)).collect::<Vec<_>>(), vec![("a0", 3)]);
    // The blocked listing shows a waiting for a0, with what waits behind it.
    let blocked = h.groups.blocked(G, &topic(&h), 10);
    let a = blocked.iter().find(|b| b.message_group == "a").expect("a is blocked");
    assert_eq!((a.attempts, a.waiting), (3, 2), "{blocked:?}");
    // Its last attempt times out: dead-lettered, and a moves on to a1.
    h.clock.set(T0 + 12_001);
    h.wait_caught_up();
    let got = receive(&h, G, 5_000);
    assert_eq!(bodies(&got), vec!["a1"], "the dead-lettered head let its group move on");
    assert_eq!(common::consumer::dead_letters(&h, "%DLQ%ordered").len(), 1);
    ack(&h, &got[0]);
    let got = receive(&h, G, 5_000);
    assert_eq!(bodies(&got), vec!["a2"]);
    ack(&h, &got[0]);
    let got = receive(&h, G, 5_000);
    assert_eq!(bodies(&got), vec!["a-late"], "the scheduled one, in the order it became visible");
    ack(&h, &got[0]);
    assert!(receive(&h, G, 5_000).is_empty());
}

#[test]
fn a_nack_and_held_messages_keep_their_delay_and_order_across_a_crash_and_fifo_off_releases_them() {
    let _failpoints = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let h = harness(dir.path(), 2, 16);
    for i in 0..4 {
        send(&h, "g", &format!("g{i}"), None);
    }
    let head = receive(&h, G, 60_000);
    assert_eq!(bodies(&head), vec!["g0"]);
    // A nack with a delay is written before it answers: no other write before the crash.
    assert_eq!(nack(&h, G, std::slice::from_ref(&head[0].3), Some(30_000)).nacked, 1);
    let h = h.crash();
    // Restored: g0 still out until its delay ends, g1..g3 held behind it, never early.
    assert!(receive(&h, G, 60_000).is_empty(), "nothing of g while g0 is out");
    h.clock.set(T0 + 29_999);
    assert!(receive(&h, G, 60_000).is_empty(), "the nack's delay survived the crash");
    h.clock.set(T0 + 30_000);
    let again = receive(&h, G, 60_000);
    assert_eq!(again.iter().map(|m| (m.1.as_str(), m.2)).collect::<Vec<_>>(), vec![("g0", 2)]);
    ack(&h, &again[0]);
    let next = receive(&h, G, 60_000);
    assert_eq!(next.iter().map(|m| (m.1.as_str(), m.2)).collect::<Vec<_>>(), vec![("g1", 1)], "first delivery");
    // FIFO off: what it held is receivable at once, all together.
    let cfg = GroupConfig { fifo: false, ..fifo_config(16) };
    h.consumers.configure(G, &topic(&h), cfg).unwrap();
    assert_eq!(bodies(&receive(&h, G, 60_000)), vec!["g2", "g3"]);
}

/// 100 message groups interleaved in 8 queues, normal and scheduled, 4 consumers of one FIFO
/// group with random acks, nacks and invisibility timeouts on the simulated clock. Per message
/// group the deliveries are in order and never two out at once; one group whose head is never
/// acked delays nobody else.
#[test]
fn order_under_concurrency_with_nacks_and_timeouts_and_a_stuck_group_delays_no_other() {
    let _failpoints = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let h = harness(dir.path(), 8, 1000);
    const GROUPS: usize = 100;
    const PER: usize = 12;
    // Message k of group g: "g{g}:{k}"; the last 4 of each group are scheduled, in order.
    for k in 0..PER {
        for g in 0..GROUPS {
            let at = (k >= PER - 4).then(|| T0 + 5_000 * (k as i64 - 7) + (g as i64 % 7) * 10);
            send(&h, &format!("g{g}"), &format!("g{g}:{k}"), at);
        }
    }
    const STUCK: &str = "g13";
    struct Log {
        /// Per message group: the highest message index delivered, and acked (or being acked).
        delivered: HashMap<String, usize>,
        acked: HashMap<String, usize>,
        done: usize,
    }
    let log = Mutex::new(Log { delivered: HashMap::new(), acked: HashMap::new(), done: 0 });
    let want = (GROUPS - 1) * PER + 1; // every message but the stuck group's after its head
    let parse = |body: &str| {
        let (g, k) = body.split_once(':').unwrap();
        (g.to_string(), k.parse::<usize>().unwrap())
    };
    let mut round = 0;
    while log.lock().done < want {
        round += 1;
        assert!(round < 400, "no progress: {} of {want} done", log.lock().done);
        std::thread::scope(|s| {
            for c in 0..4u64 {
                let (h, log) = (&h, &log);
                s.spawn(move || {
                    let mut rng = common::binary::Rng::new(round * 31 + c);
                    for _ in 0..3 {
                        let got = receive(h, G, 2_000);
                        let mut acks = Vec::new();
                        // Acks count only after the whole batch is checked (two of one group
                        // in one batch must fail), and before they are sent.
                        let mut acked = Vec::new();
                        for m in &got {
                            let (g, k) = parse(&m.1);
                            let mut l = log.lock();
                            let d = l.delivered.get(&g).copied();
                            let a = l.acked.get(&g).copied();
                            // In order, one at a time: k is the next after the last acked (or
                            // a redelivery of it), never one past a message still out.
                            let next = a.map_or(0, |a| a + 1);
                            assert_eq!(k, next, "{g}: delivered {k} with {a:?} acked, {d:?} delivered before");
                            l.delivered.insert(g.clone(), k);
                            if g == STUCK {
                                if m.2 == 1 {
                                    l.done += 1;
                                }
                                continue; // never acked: its group stays stuck
                            }
                            match rng.range(0, 10) {
                                0..=5 => {
                                    acked.push((g, k));
                                    l.done += 1;
                                    acks.push(m.3.clone());
                                }
                                6 | 7 => {
                                    drop(l);
                                    nack(h, G, std::slice::from_ref(&m.3), Some(rng.range(0, 1500) as i64));
                                }
                                _ => {} // times out
                            }
                        }
                        log.lock().acked.extend(acked);
                        if !acks.is_empty() {
                            assert_eq!(h.groups.ack(G, &topic(h), &acks).0, acks.len());
                        }
                    }
                });
            }
        });
        // Time goes on: invisibilities end, nack delays pass, scheduled messages fire.
        h.clock.advance(500);
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let blocked = h.groups.blocked(G, &topic(&h), 1000);
    assert_eq!(blocked.iter().map(|b| b.message_group.as_str()).collect::<Vec<_>>(), vec![STUCK], "{blocked:?}");
    assert_eq!(blocked[0].waiting, (PER - 1) as u64);
    let s = h.groups.summary(G, &topic(&h)).unwrap();
    assert_eq!(s.dead_lettered, 0);
}

/// One receive holds at most `MAX_HOLDS_PER_RECEIVE` messages (it never scans long under the
/// group's lock) and says there is more; the receives after it read on, and a message of
/// another group behind 3,000 held ones is reached.
#[test]
fn a_receive_holds_a_bounded_number_and_the_next_ones_read_on() {
    use chime::group::{Batch, TagExpr, MAX_HOLDS_PER_RECEIVE};
    let _failpoints = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let h = harness(dir.path(), 1, 16);
    for from in (0..3000).step_by(1000) {
        let batch = (from..from + 1000).map(|i| {
            let mut m = NewMessage { body: format!("a{i}").into_bytes(), born_ms: T0, ..Default::default() };
            m.properties.insert(PROP_MESSAGE_GROUP.into(), "a".into());
            m
        });
        h.broker.append(TOPIC, batch.collect()).unwrap();
    }
    send(&h, "b", "b0", None);
    let batch = Batch { max: 10, max_bytes: 1 << 20 };
    let mut got = Vec::new();
    let (mut receives, mut held_before) = (0, 0);
    while !got.iter().any(|b: &String| b == "b0") {
        receives += 1;
        assert!(receives <= 4, "b0 not reached: {got:?}");
        let r = h.groups.receive(G, &topic(&h), batch, 60_000, &TagExpr::All).unwrap();
        let held: u64 = h.groups.blocked(G, &topic(&h), 10).iter().map(|b| b.waiting).sum();
        let this = (held - held_before) as usize;
        assert!(this <= MAX_HOLDS_PER_RECEIVE, "receive {receives} held {this} more");
        held_before = held;
        got.extend(r.messages.iter().map(|d| String::from_utf8_lossy(d.record.record().body).into_owned()));
        if !got.contains(&"b0".to_string()) {
            assert!(r.more, "receive {receives} stopped early without saying so");
        }
    }
    assert_eq!(got, vec!["a0", "b0"], "a's head, then b's after {receives} receives");
    assert_eq!(receives, 3);
}
