//! Nacks and dead letters under a simulated power cut (`src/store/powercut.rs`: only what was
//! fsync'd survives, file sizes and directory entries included).
//!
//! A nack's 200 means the group's mark is fsync'd; the redelivery or dead letter it stores is a
//! record like any other, durable at the next flush under the default profile (at once under the
//! durable one). Two cuts right after the nacks answered:
//! - before the next flush: the copies are lost with the log's tail (and with them a normal
//!   message acknowledged just before, which the default profile allows), the marks are not;
//!   the restart stores the copies again, below the positions the marks recorded. A process
//!   crash before the groups write their files again must still find those copies, not store
//!   them a second time;
//! - after a flush (what the durable profile guarantees at the 200): the copies are kept and the
//!   restart does not store them again.
//!
//! Either way the dead letter is stored once and the redelivery comes once, at its time.
//!
//! A file of its own: the simulation records one data directory per process.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chime::clock::ManualClock;
use chime::service::ServiceError;
use common::consumer::{configure, dead_letters, nack, receive, receive_soon, Delivery};
use common::lifecycle::{half_full, open_with, Params, Recorded, T0, TOPIC};
use parking_lot::Mutex;

/// Attempts up to 5, nacked with a 10-minute delay.
const RETRYING: &str = "retrying";
/// One attempt: its nack dead-letters the message.
const DEAD: &str = "dead";
const DELAY: i64 = 600_000;

/// Nothing is flushed or written by a timer in these tests: only the fsyncs a call makes.
fn params() -> Params {
    Params { flush_ms: 3_600_000, persist_ms: 3_600_000, ..Params::default() }
}

fn check_after_cut(dir: &Path, id: &str, lost: Option<&str>) {
    let what = dir.display().to_string();
    // Deliveries of the nacked message (a cut after the flush keeps the later send, which the
    // groups then receive as usual).
    let of_id = |got: Vec<Delivery>| got.into_iter().filter(|m| m.0 == id).collect::<Vec<_>>();
    let h = open_with(dir, ManualClock::new(T0), Arc::new(Mutex::new(half_full())), params());
    if let Some(lost) = lost {
        // The premise: the log lost its tail, so the marks' positions lie past its end.
        assert!(matches!(h.state(lost), Err(ServiceError::NotFound(_))), "{what}: the unflushed send survived");
    }
    // The receives finish the moves: whatever the cut took is stored again now.
    assert!(of_id(receive(&h, DEAD, 30_000)).is_empty(), "{what}");
    assert!(of_id(receive(&h, RETRYING, 30_000)).is_empty(), "{what}: redelivered before its time");
    // A process crash before either group's file records that the moves ended.
    let h = h.crash();
    assert!(of_id(receive(&h, DEAD, 30_000)).is_empty(), "{what}: the dead letter is never redelivered");
    assert!(of_id(receive(&h, RETRYING, 30_000)).is_empty(), "{what}");
    let dl = dead_letters(&h, "%DLQ%dead");
    assert_eq!(dl, vec![(id.to_string(), "payload".into(), TOPIC.into(), DEAD.into(), 1)], "{what}: once");
    h.clock.set(T0 + DELAY - 1);
    std::thread::sleep(Duration::from_millis(200));
    assert!(of_id(receive(&h, RETRYING, 30_000)).is_empty(), "{what}: redelivered early");
    h.clock.set(T0 + DELAY);
    let again = of_id(receive_soon(&h, RETRYING, 30_000));
    assert_eq!(again.len(), 1, "{what}: {again:?}");
    assert_eq!((again[0].0.as_str(), again[0].2), (id, 2), "{what}: the second attempt, under its id");
    std::thread::sleep(Duration::from_millis(300));
    assert!(of_id(receive(&h, RETRYING, 30_000)).is_empty(), "{what}: redelivered once");
    assert_eq!(h.groups.summary(DEAD, &common::consumer::topic(&h)).unwrap().dead_lettered, 1, "{what}");
}

#[test]
fn a_power_cut_after_a_nack_or_a_dead_letter_answered_loses_neither_and_stores_neither_twice() {
    let scenario = fail::FailScenario::setup();
    let (h, rec) = Recorded::open(params());
    let id = h.send("payload".into(), None);
    configure(&h, RETRYING, 5);
    configure(&h, DEAD, 1);
    h.store.flush_all().unwrap();
    let (r, d) = (receive(&h, RETRYING, 30_000), receive(&h, DEAD, 30_000));
    // Acknowledged, not flushed: the default profile may lose it to a power cut.
    let lost = h.send("not yet flushed".into(), None);
    let out = nack(&h, RETRYING, &[r[0].3.clone()], Some(DELAY));
    assert_eq!((out.nacked, out.dead_lettered), (1, 0));
    let out = nack(&h, DEAD, &[d[0].3.clone()], None);
    assert_eq!((out.nacked, out.dead_lettered), (1, 1));

    let before_flush = rec.cut("cut-before-flush");
    h.store.flush_all().unwrap();
    let after_flush = rec.cut("cut-after-flush");
    drop(h);

    check_after_cut(&before_flush, &id, Some(&lost));
    check_after_cut(&after_flush, &id, None);
    scenario.teardown();
}
