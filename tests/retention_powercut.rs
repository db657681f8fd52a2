//! Retention under a simulated power cut (`src/store/powercut.rs`: only what was fsync'd
//! survives, file sizes and directory entries included): cut in the middle of a carry-forward
//! (the copies durable, no original moved yet) and right after a pass that carried and deleted.
//! Either way every pending message is there after the restart, under its id, and fires once.
//!
//! A file of its own: the simulation records one data directory per process.

mod common;

use std::sync::Arc;

use chime::timer::MessageState;
use common::lifecycle::{fill, half_full, open, Params, Recorded, HOUR, T0};
use parking_lot::Mutex;

fn check_after_cut(dir: &std::path::Path, far: &[String], cancelled: &[usize]) {
    let clock = chime::clock::ManualClock::new(T0);
    clock.set(T0 + 2 * HOUR);
    let h = open(dir, clock, Arc::new(Mutex::new(half_full())));
    for (i, id) in far.iter().enumerate() {
        let want = if cancelled.contains(&i) { MessageState::Cancelled } else { MessageState::Scheduled };
        match h.state(id) {
            Ok(got) => assert_eq!(got, want, "{id} after the power cut ({})", dir.display()),
            // A cancelled message is final: once its segment is reclaimed it may answer 404.
            Err(chime::service::ServiceError::NotFound(_)) if want == MessageState::Cancelled => {}
            Err(e) => panic!("{id} after the power cut ({}): {e}", dir.display()),
        }
    }
    assert_eq!(h.timer.stats().pending_total, (far.len() - cancelled.len()) as i64);
    // Reclaiming again after the restart loses nothing either.
    h.retention.tick().unwrap();
    h.advance_to(T0 + 11 * HOUR);
    let visible = h.visible();
    for (i, id) in far.iter().enumerate() {
        let want = if cancelled.contains(&i) { None } else { Some(&1) };
        assert_eq!(visible.get(id), want, "{id}: fired once, or never if cancelled");
    }
}

#[test]
fn a_power_cut_during_or_after_a_carry_forward_loses_nothing_and_fires_once() {
    let scenario = fail::FailScenario::setup();
    let (h, rec) = Recorded::open(Params::default());
    let (_, far) = fill(&h);
    h.cancel(&far[5]).unwrap(); // fsync'd before its 200
    h.wait_idle();
    h.advance_to(T0 + 2 * HOUR);
    // Flushed by the checkpointers meanwhile: what a cut keeps of the load is all of it.
    std::thread::sleep(std::time::Duration::from_millis(300));

    // 1. Cut in the middle: the copies are durable, no original has moved.
    fail::cfg(chime::timer::carry::STOP_BEFORE_MOVE, "return").unwrap();
    assert!(h.retention.tick().is_err());
    fail::remove(chime::timer::carry::STOP_BEFORE_MOVE);
    let mid = rec.cut("cut-mid"); // the directory a power cut now leaves

    // 2. Cut right after a pass that carried everything forward and deleted the segments.
    let t = h.retention.tick().unwrap();
    assert!(t.reclaimed.len() >= 2 && t.carried > 0, "{t:?}");
    let after = rec.cut("cut-after");
    drop(h);

    check_after_cut(&mid, &far, &[5]);
    check_after_cut(&after, &far, &[5]);
    scenario.teardown();
}
