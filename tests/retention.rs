//! The storage lifecycle (README "What survives what", API.md "Storage lifecycle") on the
//! simulated clock: retention reclaims old commit-log segments, every pending scheduled message
//! in them is carried forward first and keeps its id, status and cancel; consumer groups move
//! past what was reclaimed and count it expired; a move a crash interrupts settles at start-up
//! (fired once, or not at all if cancelled); above the disk's hard limit sends are refused
//! until space returns, and the soft limit reclaims early.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use chime::clock::ManualClock;
use chime::retention::{Disk, Rule};
use chime::service::ServiceError;
use chime::store::NewMessage;
use chime::timer::MessageState;
use common::lifecycle::{fill, half_full, open_with, pad, Params, H, HOUR, T0, TOPIC};
use parking_lot::Mutex;

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
    // Its original reclaimed and its copy cancelled: the persisted map still leads to the copy.
    assert_eq!(h.state(&far[1]).unwrap(), MessageState::Cancelled, "after the restart");
    h.cancel(&far[1]).expect("a repeated cancel still answers 200");
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

    // Everything has fired: what described the old records goes with them: timer-log segments
    // of closed slots, state-cell files below the system topic's start, and moved-id entries
    // whose copy was reclaimed.
    for i in 0..300 {
        h.send(pad(1000 + i), None); // more than two segments of new traffic
    }
    h.timer.checkpoint().unwrap();
    let (log_before, cells_before, _) = h.timer.files();
    h.advance_to(T0 + 13 * HOUR);
    h.timer.checkpoint().unwrap();
    let t = h.retention.tick().unwrap();
    assert!(!t.reclaimed.is_empty(), "{t:?}");
    assert!(t.timer.timer_log_segments > 0, "{t:?}");
    assert!(t.timer.state_files > 0, "{t:?}");
    let (log_after, cells_after, mapped) = h.timer.files();
    assert!(
        log_after < log_before && cells_after < cells_before,
        "{log_before}/{log_after} {cells_before}/{cells_after}"
    );
    assert_eq!(mapped, 0, "every copy was reclaimed");
    // The restart finds the reclaimed files reclaimed, not lost: nothing is rebuilt.
    let h = h.crash();
    assert!(!h.timer.recovery_summary().contains("rebuilt"), "{}", h.timer.recovery_summary());
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

/// A small deterministic PRNG, so every run of the year is the same.
struct XorShift(u64);
impl XorShift {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// The model's view of one scheduled message.
#[derive(Debug, Clone, Copy)]
struct Modelled {
    at: i64,
    cancelled: bool,
}

/// A year on the simulated clock, a day per step, against a model: scheduled messages due
/// across the year (sent at the start and every day), normal traffic that rolls the log, random
/// cancels, a retention pass every day and a crash every few weeks. Checked every day: every
/// pending message answers `scheduled` under the id its send returned and can be cancelled,
/// every status is what the model says (or 404 once the message is final and its record gone);
/// disk use stays bounded (commit log, timer log, state cells, moved-id map). At the end every
/// message that was not cancelled was received exactly once, never early, and none cancelled
/// was; the copies made stay within one per message per retention period of its delay.
#[test]
fn a_year_of_retention_with_messages_due_across_it_rolls_cancels_and_crashes() {
    let _failpoints = fail::FailScenario::setup();
    const DAY: i64 = 24 * HOUR;
    let dir = tempfile::tempdir().unwrap();
    // Three days of retention; one-minute slots, a wheel of two days (a year-long delay rolls
    // about 180 times).
    let params = Params { retention_ms: 3 * DAY, precision_ms: 60_000, slots: 2880, ..Params::default() };
    let mut h = open_with(dir.path(), ManualClock::new(T0), Arc::new(Mutex::new(half_full())), params);
    let mut rng = XorShift(0x9EA8_2026);
    let mut model: BTreeMap<String, Modelled> = BTreeMap::new();
    let end = T0 + 365 * DAY;
    let small = |i: u64| format!("s{i:06}");
    let mut seq = 0u64;
    let mut schedule = |h: &H, model: &mut BTreeMap<String, Modelled>, rng: &mut XorShift, now: i64| {
        seq += 1;
        let at = now + 1 + rng.below((end - now - HOUR) as u64) as i64;
        model.insert(h.send(small(seq), Some(at)), Modelled { at, cancelled: false });
    };
    for _ in 0..300 {
        schedule(&h, &mut model, &mut rng, T0);
    }
    let mut received: BTreeMap<String, usize> = BTreeMap::new();
    let (mut carried, mut max_log, mut max_timer_log, mut max_cells, mut max_sys) = (0u64, 0usize, 0u64, 0u64, 0u64);
    let mut normal = 0usize;
    for day in 1..=365 {
        let now = T0 + (day - 1) * DAY;
        for _ in 0..20 {
            normal += 1;
            h.send(pad(normal), None);
        }
        for _ in 0..2 {
            schedule(&h, &mut model, &mut rng, now);
        }
        if rng.below(3) == 0 {
            let ids: Vec<&String> = model.keys().collect();
            let id = ids[rng.below(ids.len() as u64) as usize].clone();
            let m = model[&id];
            let got = h.cancel(&id);
            if m.cancelled || m.at > now {
                assert!(got.is_ok() || m.cancelled, "day {day}: cancel of pending {id}: {got:?}");
                model.get_mut(&id).unwrap().cancelled = true;
                if !m.cancelled {
                    assert_eq!(h.state(&id).unwrap(), MessageState::Cancelled, "day {day}: {id}");
                }
            } else {
                assert!(
                    matches!(got, Err(ServiceError::AlreadyDelivered(_)) | Err(ServiceError::NotFound(_))),
                    "day {day}: cancel of delivered {id}: {got:?}"
                );
            }
        }
        // The day passes: the timer fires what is due, the audit group receives it, retention
        // runs once the timer's checkpoint has caught up.
        h.clock.set(now + DAY);
        h.wait_caught_up();
        h.timer.checkpoint().unwrap();
        let t = h.retention.tick().unwrap();
        carried += t.carried;
        for id in h.receive_all("audit") {
            *received.entry(id).or_default() += 1;
        }
        let (log, cells, mapped) = h.timer.files();
        max_log = max_log.max(h.store.log_segments().len());
        max_timer_log = max_timer_log.max(log);
        max_cells = max_cells.max(cells);
        let sys = h.store.topics().get(chime::timer::SYSTEM_TOPIC).unwrap();
        max_sys = max_sys.max(sys.queues[0].next() - sys.queues[0].start());
        let pending = model.values().filter(|m| !m.cancelled && m.at > now + DAY).count();
        assert!(mapped as usize <= pending + 3 * 300, "day {day}: {mapped} moved-id entries, {pending} pending");
        // Every status as the model says.
        for (id, m) in &model {
            let got = h.state(id);
            if !m.cancelled && m.at > now + DAY {
                assert_eq!(got.unwrap(), MessageState::Scheduled, "day {day}: pending {id} {m:?}");
            } else {
                let want = if m.cancelled { MessageState::Cancelled } else { MessageState::Delivered };
                assert!(
                    matches!(&got, Ok(s) if *s == want) || matches!(got, Err(ServiceError::NotFound(_))),
                    "day {day}: {id} {m:?}: {got:?}"
                );
            }
        }
        if day % 40 == 0 {
            h.groups.persist_all().unwrap();
            h = h.crash();
        }
    }
    // Everything has fired: each message not cancelled received once, none cancelled.
    h.clock.set(end + DAY);
    h.wait_caught_up();
    for id in h.receive_all("audit") {
        *received.entry(id).or_default() += 1;
    }
    for (id, m) in &model {
        let got = received.get(id).copied().unwrap_or(0);
        assert_eq!(got, usize::from(!m.cancelled), "{id} {m:?}");
    }
    assert_eq!(h.timer.stats().pending_total, 0);
    eprintln!("peaks: {max_log} log segments, {max_timer_log} timer-log segments, {max_cells} state files, {max_sys} system-topic entries retained; {carried} copies");
    // Bounded all year: the commit log by the retention (a segment of 256 KiB fills in a few
    // days here), the timer's files by what the log retains.
    assert!(max_log <= 8, "commit-log segments peaked at {max_log}");
    assert!(max_timer_log <= 200, "timer-log segments peaked at {max_timer_log}");
    // State-cell files cover the system-topic entries still retained (64 cells a file here),
    // and those fit in the retained log (a scheduled record here is over 100 bytes).
    assert!(max_cells <= max_sys / 64 + 2, "state-cell files peaked at {max_cells} for {max_sys} entries");
    assert!(max_sys * 100 <= max_log as u64 * (256 << 10), "{max_sys} system-topic entries in {max_log} segments");
    // Copies: within one per retention period of each message's delay (plus one).
    let bound: i64 = model.values().map(|m| (m.at - T0) / (3 * DAY) + 1).sum();
    assert!(carried > 0 && (carried as i64) <= bound, "{carried} copies, bound {bound}");
    assert!(h.groups.expired_total() == 0, "the audit group kept up");
}

/// A prepared transaction's records are never reclaimed: retention stops at the segment that
/// holds them (reported pinned), even past its age; once the transaction is resolved, the
/// segments go, and what it committed is there.
#[test]
fn a_prepared_transaction_pins_its_segment_until_it_is_resolved() {
    use chime::service::transactions::{ResolvedBy, Timing, TxnSend, TxnState};
    let _failpoints = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let h = H::new(dir.path());
    let msgs = vec![TxnSend {
        topic: TOPIC.into(),
        message: chime::store::NewMessage { body: b"held".to_vec(), born_ms: T0, ..Default::default() },
        timing: Timing::Now,
    }];
    let rt = common::consumer::rt();
    let id = rt.block_on(h.broker.prepare("pg", 1000, msgs)).unwrap().id;
    fill(&h);
    h.wait_idle();
    h.advance_to(T0 + 2 * HOUR);
    let t = h.retention.tick().unwrap();
    assert!(t.reclaimed.is_empty(), "the first segment is pinned: {t:?}");
    assert!(t.pinned.reason.as_deref().unwrap().contains("prepared transaction"), "{:?}", t.pinned);
    assert_eq!(h.broker.transaction(&id).unwrap().state, TxnState::Prepared);
    let c = rt.block_on(h.broker.resolve(&id, TxnState::Committed, ResolvedBy::Client)).unwrap();
    let t = h.retention.tick().unwrap();
    assert!(!t.reclaimed.is_empty(), "resolved: the segments go: {t:?}");
    assert_eq!(h.visible().get(&c.messages[0].message_id), Some(&1), "its committed message is kept");
    let after = h.broker.transaction(&id).unwrap();
    assert_eq!((after.state, after.producer_group.as_str()), (TxnState::Committed, "pg"), "GET from the commit record");
    assert_eq!(after.messages, c.messages);
}
