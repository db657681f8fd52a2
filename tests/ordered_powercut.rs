//! Ordered messages and deduplicated sends under a simulated power cut
//! (`src/store/powercut.rs`: only what was fsync'd survives, file sizes and directory entries
//! included).
//!
//! - A FIFO group's nack is written (fsync'd) before its 200: after a cut its message is still
//!   out, invisible for the delay, and what its message group holds stays behind it, in order.
//! - A repeat of a `dedup_id` whose first message was flushed: after a cut, a repeat of it is
//!   still a repeat. A first send the cut took (not yet flushed, which the
//!   default profile allows) is forgotten with its id: its repeat is stored as new, once.
//!
//! A file of its own: the simulation records one data directory per process.

mod common;

use std::sync::Arc;

use chime::clock::ManualClock;
use chime::group::fifo::PROP_MESSAGE_GROUP;
use chime::group::GroupConfig;
use chime::service::dedup::Outcome;
use chime::store::NewMessage;
use common::consumer::{nack, receive, rt, topic};
use common::lifecycle::{half_full, open_with, Params, Recorded, T0, TOPIC};
use parking_lot::Mutex;

const G: &str = "ordered";
const DEDUP_TOPIC: &str = "payments";

/// Nothing is flushed or written by a timer: only the fsyncs a call makes.
fn params() -> Params {
    Params { flush_ms: 3_600_000, persist_ms: 3_600_000, ..Params::default() }
}

fn message(body: &str, group: Option<&str>) -> NewMessage {
    let mut m = NewMessage { body: body.as_bytes().to_vec(), born_ms: T0, ..Default::default() };
    if let Some(g) = group {
        m.properties.insert(PROP_MESSAGE_GROUP.into(), g.into());
    }
    m
}

fn send_once(h: &common::lifecycle::H, body: &str, id: &str) -> Outcome {
    let msgs = vec![(message(body, None), Some(id.to_string()))];
    rt().block_on(h.broker.send_deduplicated(DEDUP_TOPIC, msgs)).unwrap().remove(0)
}

#[test]
fn a_fifo_nack_and_a_dedup_id_answered_before_a_power_cut_hold_after_it() {
    let scenario = fail::FailScenario::setup();
    let (h, rec) = Recorded::open(params());
    h.store.topics().create(TOPIC, 2).unwrap();
    h.consumers.configure(G, &topic(&h), GroupConfig { fifo: true, ..GroupConfig::default() }).unwrap();
    let msgs: Vec<NewMessage> = (0..3).map(|i| message(&format!("g{i}"), Some("g"))).collect();
    h.broker.append(TOPIC, msgs).unwrap();
    let Outcome::Stored(first) = send_once(&h, "once", "d1") else { panic!("a new id is stored") };
    h.store.flush_all().unwrap();
    // Flushed: the repeat's 200 names it.
    assert!(matches!(send_once(&h, "again", "d1"), Outcome::Duplicate { id, .. } if id == first.id));
    let head = receive(&h, G, 60_000);
    assert_eq!(head.iter().map(|m| m.1.as_str()).collect::<Vec<_>>(), vec!["g0"]);
    assert_eq!(nack(&h, G, std::slice::from_ref(&head[0].3), Some(30_000)).nacked, 1);
    // Acknowledged, not flushed: the default profile may lose it to a power cut.
    let Outcome::Stored(lost) = send_once(&h, "lost", "d2") else { panic!("a new id is stored") };
    let cut = rec.cut("cut");
    drop(h);

    let h = open_with(&cut, ManualClock::new(T0), Arc::new(Mutex::new(half_full())), params());
    assert!(h.broker.status(DEDUP_TOPIC, &lost.id.to_string()).is_err(), "the premise: the unflushed send is gone");
    // The FIFO nack: g0 still out for its delay, g1 and g2 behind it.
    assert!(receive(&h, G, 60_000).is_empty(), "nothing of g before the delay ends");
    h.clock.set(T0 + 29_999);
    assert!(receive(&h, G, 60_000).is_empty());
    h.clock.set(T0 + 30_000);
    let again = receive(&h, G, 60_000);
    assert_eq!(again.iter().map(|m| (m.1.as_str(), m.2)).collect::<Vec<_>>(), vec![("g0", 2)]);
    assert_eq!(h.groups.ack(G, &topic(&h), std::slice::from_ref(&again[0].3)).0, 1);
    assert_eq!(receive(&h, G, 60_000).iter().map(|m| m.1.as_str()).collect::<Vec<_>>(), vec!["g1"], "in order");
    // The flushed id is still a repeat; the lost one is stored anew, once.
    assert!(matches!(send_once(&h, "again", "d1"), Outcome::Duplicate { id, .. } if id == first.id));
    let Outcome::Stored(renewed) = send_once(&h, "lost, again", "d2") else { panic!("stored as new") };
    assert!(matches!(send_once(&h, "lost, again", "d2"), Outcome::Duplicate { id, .. } if id == renewed.id));
    scenario.teardown();
}
