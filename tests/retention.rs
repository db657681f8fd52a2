//! The storage lifecycle (README "What survives what", API.md "Storage lifecycle") on the
//! simulated clock: retention reclaims old commit-log segments, every pending scheduled message
//! in them is carried forward first and keeps its id, status and cancel; consumer groups move
//! past what was reclaimed and count it expired; a move a crash interrupts settles at start-up
//! (fired once, or not at all if cancelled); above the disk's hard limit sends are refused
//! until space returns, and the soft limit reclaims early.

mod common;

use std::collections::BTreeSet;

use chime::retention::{Disk, Rule};
use chime::service::ServiceError;
use chime::store::NewMessage;
use chime::timer::MessageState;
use common::lifecycle::{fill, half_full, pad, H, HOUR, T0, TOPIC};

#[test]
fn reclaimed_segments_keep_every_pending_message_with_its_id_status_and_cancel() {
    // Failpoints are global: every test of this file takes the scenario lock.
    let _failpoints = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let h = H::new(dir.path());
    let (normal, far) = fill(&h);
    assert!(h.store.log_segments().len() >= 3, "the load spans several segments");
    // Cancelled before retention: never delivered, whatever is reclaimed.
    h.cancel(&far[0]).unwrap();
    h.wait_idle();

    // Nothing is old yet.
    let t = h.retention.tick().unwrap();
    assert!(t.reclaimed.is_empty(), "{t:?}");

    h.advance_to(T0 + 2 * HOUR);
    let t = h.retention.tick().unwrap();
    let reclaimed = t.reclaimed.len();
    assert!(reclaimed >= 2, "old segments are reclaimed: {t:?}");
    assert!(t.reclaimed.iter().all(|&(_, r)| r == Rule::Age));
    assert!(t.carried > 0, "pending messages were carried forward: {t:?}");
    assert_eq!(h.timer.carried_forward(), t.carried);
    assert!(h.store.min_offset() > 0);
    assert_eq!(h.timer.stats().pending_total, far.len() as i64 - 1, "nothing pending lost or counted twice");
    assert!(t.index_segments > 0, "index segments of reclaimed records go too: {t:?}");
    let starts =
        |h: &H| -> Vec<u64> { h.store.topics().get(TOPIC).unwrap().queues.iter().map(|q| q.start()).collect() };
    let before = starts(&h);
    assert!(before.iter().any(|&s| s > 0), "{before:?}");

    // Every pending message answers under the id its send returned.
    for id in &far[1..] {
        assert_eq!(h.state(id).unwrap(), MessageState::Scheduled, "{id}");
    }
    // A cancel of a carried-forward message by its original id holds.
    h.cancel(&far[1]).unwrap();
    assert_eq!(h.state(&far[1]).unwrap(), MessageState::Cancelled);

    // A group that never received moves past what was reclaimed and counts it.
    let got = h.receive_all("late");
    let expired = h.groups.expired_total();
    assert!(expired > 0);
    assert_eq!(got.len() as u64 + expired, normal.len() as u64, "every normal message received or expired");
    let got: BTreeSet<String> = got.into_iter().collect();
    assert!(got.iter().all(|id| normal.contains(id)));

    // The report says what happened.
    let r = h.retention.report();
    assert_eq!(r.reclaimed.segments, reclaimed as u64);
    assert_eq!(r.carried_forward, t.carried);
    assert_eq!(r.commitlog.first_offset, h.store.min_offset());
    assert!(r.accepting);

    // Across a crash: the map from ids to copies is rebuilt, nothing pending is lost, and the
    // queues keep their starts (nothing taken for lost and rebuilt).
    let h = h.crash();
    assert_eq!(starts(&h), before);
    assert!(h.store.recovery_report().removed_index_segments.is_empty(), "{}", h.store.recovery_report());
    for id in &far[2..] {
        assert_eq!(h.state(id).unwrap(), MessageState::Scheduled, "{id} after the restart");
    }
    // Its copy cancelled and its original reclaimed, the restart no longer maps its id: it is
    // final either way (README: a status may answer 404 once a message is no longer pending).
    assert!(matches!(h.state(&far[1]), Ok(MessageState::Cancelled) | Err(ServiceError::NotFound(_))));
    assert_eq!(h.timer.stats().pending_total, far.len() as i64 - 2);

    // They fire at their time, once, under their original ids; the cancelled ones never.
    h.advance_to(T0 + 11 * HOUR);
    let visible = h.visible();
    for id in &far[2..] {
        assert_eq!(visible.get(id), Some(&1), "{id} fired once");
        assert_eq!(h.state(id).unwrap(), MessageState::Delivered);
    }
    assert!(!visible.contains_key(&far[0]) && !visible.contains_key(&far[1]), "cancelled, never delivered");
    assert_eq!(h.timer.stats().pending_total, 0);
}

#[test]
fn a_message_due_within_the_margin_pins_its_segment_until_it_fires() {
    // Failpoints are global: every test of this file takes the scenario lock.
    let _failpoints = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let h = H::new(dir.path());
    let soon = h.send(pad(0), Some(T0 + 2 * HOUR + 30_000));
    fill(&h);
    h.wait_idle();
    h.advance_to(T0 + 2 * HOUR);
    let t = h.retention.tick().unwrap();
    assert!(t.reclaimed.is_empty(), "the first segment is pinned: {t:?}");
    assert_eq!(t.pinned.segments, 1);
    assert!(t.pinned.pending_messages >= 1);
    assert!(t.pinned.reason.as_deref().unwrap().contains("due"), "{:?}", t.pinned);
    assert_eq!(h.retention.report().pinned, t.pinned);
    // Once it has fired, the segment goes.
    h.advance_to(T0 + 2 * HOUR + 31_000);
    assert_eq!(h.visible().get(&soon), Some(&1));
    let t = h.retention.tick().unwrap();
    assert!(!t.reclaimed.is_empty(), "{t:?}");
    assert_eq!(t.pinned.segments, 0);
}

#[test]
fn a_crash_between_copy_and_move_fires_the_message_once() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let h = H::new(dir.path());
    let (_, far) = fill(&h);
    // One of them is cancelled while the move is in the crash window: its copy must not fire.
    h.advance_to(T0 + 2 * HOUR);
    // `panic`: the pass stops dead there, as a crash would stop it (`return` would fail it in a
    // process that goes on, which cancels its copies).
    fail::cfg(chime::timer::carry::STOP_BEFORE_MOVE, "panic").unwrap();
    let end = h.store.write_pos();
    let stopped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| h.retention.tick()));
    assert!(stopped.is_err(), "stopped after the copies, before any move");
    fail::remove(chime::timer::carry::STOP_BEFORE_MOVE);
    assert_eq!(h.store.min_offset(), 0, "nothing reclaimed");
    assert!(h.store.write_pos() > end, "the copies were appended");
    // Copies exist and are durable; the originals are still scheduled: a crash here. (Without
    // the start-up settlement both would count and fire.)
    h.cancel(&far[3]).unwrap();
    let h = h.crash();
    assert_eq!(h.timer.stats().pending_total, far.len() as i64 - 1, "each message counted once after the restart");
    for (i, id) in far.iter().enumerate() {
        let want = if i == 3 { MessageState::Cancelled } else { MessageState::Scheduled };
        assert_eq!(h.state(id).unwrap(), want, "{id}");
    }
    // Reclaiming now carries nothing again for the settled ones (their originals moved).
    let t = h.retention.tick().unwrap();
    assert!(!t.reclaimed.is_empty(), "{t:?}");
    h.advance_to(T0 + 11 * HOUR);
    let visible = h.visible();
    for (i, id) in far.iter().enumerate() {
        let want = if i == 3 { None } else { Some(&1) };
        assert_eq!(visible.get(id), want, "{id}");
    }
    assert_eq!(h.timer.stats().pending_total, 0);
    scenario.teardown();
}

#[test]
fn above_the_hard_limit_sends_are_refused_until_space_returns_and_the_soft_limit_reclaims_early() {
    // Failpoints are global: every test of this file takes the scenario lock.
    let _failpoints = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let h = H::new(dir.path());
    let (_, far) = fill(&h);
    h.wait_idle();
    // Hard limit: sends refused, nothing stored; the timer and the rest go on.
    *h.disk.lock() = Disk { total_bytes: 100, free_bytes: 3 };
    let before = h.store.write_pos();
    let t = h.retention.tick().unwrap();
    assert!(!t.accepting);
    let m = NewMessage { body: b"x".to_vec(), ..Default::default() };
    match h.broker.append(TOPIC, vec![m.clone()]) {
        Err(ServiceError::Store(e)) => assert!(e.is_disk_full(), "{e}"),
        other => panic!("a send above the hard limit: {other:?}"),
    }
    assert!(!h.retention.report().accepting);
    // The soft limit reclaimed the old segments at once, whatever their age, pending carried.
    assert!(!t.reclaimed.is_empty() && t.reclaimed.iter().all(|&(_, r)| r == Rule::DiskSoftLimit), "{t:?}");
    assert!(h.store.write_pos() > before, "only carried-forward copies were written");
    for id in &far {
        assert_eq!(h.state(id).unwrap(), MessageState::Scheduled);
    }
    // Space returns: sends pass again by themselves.
    *h.disk.lock() = half_full();
    assert!(h.retention.tick().unwrap().accepting);
    h.broker.append(TOPIC, vec![m]).unwrap();
    h.advance_to(T0 + 11 * HOUR);
    let visible = h.visible();
    assert!(far.iter().all(|id| visible.get(id) == Some(&1)));
}
