//! The timer's start-up: the wheel checked against the timer log (relinked, or rebuilt when
//! they disagree), the scheduled messages counted from the pending floor, and state cells left
//! `FIRING` by a crash or power cut settled.

use std::collections::HashMap;

use super::carry::{message_id, settle_copy, Settled, PROP_MOVED_FROM, PROP_ORIGIN};
use super::congestion::Congestion;
use super::state::{self, StateCells};
use super::timerlog::TimerLog;
use super::wheel::{self, Wheel};
use super::{io, TimerCheckpoint, TimerError, TimerOptions, PROP_ID, PROP_TOPIC};
use crate::store::topics::Topic;
use crate::store::{MessageId, Store};

/// Opens the timer log and the wheel, relinks units the wheel lost since the checkpoint, and
/// checks every live slot against the log. Returns them with the log's end, the units relinked,
/// the slots that disagreed, and whether the wheel was rebuilt.
///
/// A rebuilt wheel starts empty and every pending message is placed again from the system
/// topic (from the pending floor, by enqueue-get); the timer log's old units are *not* linked
/// back. Linking them too would give each pending message one more unit per rebuild, and every
/// one of them would roll, turn after turn (a message still fires once: its state cell decides).
pub(super) fn recover_wheel(
    opts: &TimerOptions,
    read_time: i64,
    ckpt: Option<&TimerCheckpoint>,
) -> Result<(TimerLog, Wheel, u64, u64, u64, bool), TimerError> {
    let geo = opts.geometry;
    let (mut log, removed) =
        TimerLog::open(&opts.dir.join("timerlog"), opts.timer_log_segment_units).map_err(io("open the timer log"))?;
    let (wheel, fresh) = Wheel::open(&opts.dir.join("wheel"), geo).map_err(io("open the timer wheel"))?;
    // Damaged timer-log segments were removed, the wheel is new, or there is no checkpoint to
    // trust it from: rebuild.
    if fresh || ckpt.is_none() || !removed.is_empty() {
        if !removed.is_empty() {
            tracing::warn!(?removed, "timer-log segments were damaged and removed; re-placing pending messages");
        }
        let end = log.recover(0, |_, _| {}).map_err(io("recover the timer log"))?;
        wheel.reset();
        return Ok((log, wheel, end, 0, removed.len() as u64, true));
    }
    let from = ckpt.map_or(0, |c| c.timer_log_pos);
    let mut relinked = 0u64;
    let end = log
        .recover(from, |pos, u| {
            if u.slot_time >= read_time && wheel.get(u.slot_time).last < pos + 1 {
                wheel.link(u.slot_time, pos);
                relinked += 1;
            }
        })
        .map_err(io("recover the timer log"))?;
    // A slot that disagrees with the log — pointing past it (its units were lost in a machine
    // crash while the wheel page was written back), at a damaged unit, or damaged itself —
    // makes the wheel untrustworthy: rebuild it.
    let mut bad = 0u64;
    wheel.for_each_used(|i, s| {
        // Fired slots are only checked for a damaged time (which could hide a live one).
        let ok = if s.time >= read_time {
            wheel.slot_consistent(i, &s, |pos| log.read(pos))
        } else {
            wheel::slot_time_fits(geo, i, &s)
        };
        if !ok {
            bad += 1;
        }
    });
    if bad > 0 {
        tracing::warn!(slots = bad, "wheel slots disagree with the timer log; rebuilding the wheel");
        wheel.reset();
        return Ok((log, wheel, end, 0, bad, true));
    }
    Ok((log, wheel, end, relinked, 0, false))
}

/// What start-up counted of the messages still scheduled.
pub(super) struct PendingCount {
    pub(super) n: u64,
    /// The first system-topic offset still scheduled (or the end).
    pub(super) floor: u64,
    pub(super) per_topic: HashMap<String, i64>,
    pub(super) congestion: Congestion,
    /// Origin id → current copy, of the carried-forward messages still pending.
    pub(super) moved: HashMap<MessageId, MessageId>,
    /// (origin, copy) of copies start-up cancelled (their move never completed).
    pub(super) dropped: Vec<(MessageId, MessageId)>,
}

/// Counts the messages still scheduled, per topic and in a fresh congestion index, from the
/// pending floor `start` on (the cost is proportional to the messages scheduled since the
/// oldest one still pending), and settles cells left FIRING by a crash or power cut: DELIVERED
/// if the log holds the fired copy ([`fired_copies`]), else back to SCHEDULED, to fire again.
/// Runs before the stages start, on a thread of its own while the timer log is recovered.
pub(super) fn count_pending(
    states: &StateCells,
    sys_topic: &Topic,
    store: &Store,
    start: u64,
    congestion: Congestion,
) -> Result<PendingCount, TimerError> {
    let cq = &sys_topic.queues[0];
    let mut tally = Tally::default();
    let mut floor = start;
    let mut floor_moving = true;
    let mut firing = Vec::new();
    for off in start..cq.next() {
        let mut s = states.get(off).map_err(io("read a state cell"))?;
        if s > state::MOVED {
            // Not a state (a damaged byte; cells carry no checksum): at-least-once wins.
            tracing::error!(cell = off, value = s, "invalid timer state cell; treating it as scheduled");
            states.set(off, state::SCHEDULED).map_err(io("reset a state cell"))?;
            s = state::SCHEDULED;
        }
        if s == state::FIRING {
            // A fire not yet settled when the previous run stopped: decided after this loop.
            floor_moving = false;
            firing.push(off);
            continue;
        }
        if s == state::SCHEDULED {
            if tally.count(states, sys_topic, store, off)? {
                floor_moving = false;
            } else if floor_moving {
                floor = off + 1;
            }
        } else if floor_moving {
            floor = off + 1;
        }
    }
    // FIRING cells: the fired copy is in the log (stored, and this process crashed before the
    // log was known durable), or not (a power cut took it, or the append never happened).
    let mut scheduled_again = Vec::new();
    if !firing.is_empty() {
        let mut targets: Vec<(u64, String, i64, String)> = Vec::new(); // (cell, topic, due, id)
        for &off in &firing {
            let read = cq.get(off).and_then(|e| store.read_verified(e.log_offset));
            let found = read.as_ref().and_then(|r| {
                let rec = r.record();
                let topic = rec.property(PROP_TOPIC)?.to_string();
                Some((topic, rec.deliver_at_ms, message_id(r)))
            });
            match found {
                Some((topic, due, id)) => targets.push((off, topic, due, id)),
                None => scheduled_again.push(off), // unreadable: handled as scheduled below
            }
        }
        let copies = fired_copies(store, &targets);
        if targets.iter().any(|t| copies.contains(&t.3)) {
            // DELIVERED only once the copies are durable (after a crash they may be in the
            // page cache alone).
            store.flush_all()?;
        }
        let mut delivered = 0u64;
        for (off, _, _, id) in &targets {
            if copies.contains(id) {
                states.set(*off, state::DELIVERED).map_err(io("settle a state cell"))?;
                delivered += 1;
            } else {
                scheduled_again.push(*off);
            }
        }
        tracing::info!(
            firing = firing.len(),
            delivered,
            fire_again = firing.len() as u64 - delivered,
            "timer: fires the previous run had not settled"
        );
    }
    for off in scheduled_again {
        states.set(off, state::SCHEDULED).map_err(io("reset a state cell"))?;
        tally.count(states, sys_topic, store, off)?;
    }
    let Tally { n, per_topic, mut times, minus, moved, dropped } = tally;
    // In time order the index's updates touch its memory in order, which more than pays for
    // the sort (bench/RESULTS.md, `TimerEngine::start` with 1M pending).
    times.sort_unstable();
    let mut congestion = congestion;
    times.iter().for_each(|&t| congestion.add(t, 1));
    minus.iter().for_each(|&t| congestion.add(t, -1));
    Ok(PendingCount { n, floor, per_topic, congestion, moved, dropped })
}

/// What [`count_pending`] counts of the messages still scheduled.
#[derive(Default)]
struct Tally {
    n: u64,
    per_topic: HashMap<String, i64>,
    times: Vec<i64>,
    /// Deliver times counted and then taken back (sources of copies settled at start).
    minus: Vec<i64>,
    /// Origin id → current copy, of the carried-forward messages still pending.
    moved: HashMap<MessageId, MessageId>,
    /// (origin, copy) of the copies settled as cancelled.
    dropped: Vec<(MessageId, MessageId)>,
}

impl Tally {
    /// Counts the scheduled message of cell `off`; `false` if its record is unreadable. Such a
    /// message can never fire: it is made final (CANCELLED) and not counted, so that
    /// dequeue-get-message, which uncounts such a record when it meets one it counted, never
    /// uncounts it.
    fn count(&mut self, states: &StateCells, sys_topic: &Topic, store: &Store, off: u64) -> Result<bool, TimerError> {
        let read = sys_topic.queues[0].get(off).and_then(|e| store.read_verified(e.log_offset));
        let rec = read.as_ref().map(|r| r.record());
        let Some((rec, topic)) = rec.and_then(|rec| rec.property(PROP_TOPIC).map(|t| (rec, t))) else {
            tracing::error!(offset = off, "scheduled record unreadable; it can never fire");
            states.set(off, state::CANCELLED).map_err(io("finish a state cell"))?;
            return Ok(false);
        };
        if let Some(src) = rec.property(PROP_MOVED_FROM).and_then(|s| s.parse::<u64>().ok()) {
            let r = read.as_ref().expect("read above");
            let origin = rec.property(PROP_ORIGIN).and_then(|o| o.parse::<MessageId>().ok());
            match settle_copy(states, off, src)? {
                Settled::Cancelled => {
                    self.dropped.extend(origin.map(|o| (o, r.id())));
                    return Ok(false);
                }
                Settled::LivesSourceMoved => {
                    // The source was counted above (a lower cell, still scheduled then).
                    *self.per_topic.entry(topic.to_string()).or_insert(0) -= 1;
                    self.minus.push(rec.deliver_at_ms);
                    self.n -= 1;
                }
                Settled::Lives => {}
            }
            if let Some(origin) = origin {
                self.moved.insert(origin, r.id());
            }
        }
        match self.per_topic.get_mut(topic) {
            Some(c) => *c += 1,
            None => drop(self.per_topic.insert(topic.to_string(), 1)),
        }
        self.times.push(rec.deliver_at_ms);
        self.n += 1;
        Ok(true)
    }
}

/// The ids (`PROP_ID`) of fired copies stored in the topics of `targets` (cell, topic, deliver
/// time, id) since the earliest of their deliver times: a copy is never visible before its
/// time, and visible times never go backwards along a queue, so each queue is read backwards
/// from its end until a message visible earlier. Costs the messages stored since then.
pub(super) fn fired_copies(store: &Store, targets: &[(u64, String, i64, String)]) -> std::collections::HashSet<String> {
    let mut out = std::collections::HashSet::new();
    let Some(since) = targets.iter().map(|t| t.2).min() else { return out };
    let mut topics: Vec<&str> = targets.iter().map(|t| t.1.as_str()).collect();
    topics.sort_unstable();
    topics.dedup();
    for name in topics {
        let Some(topic) = store.topics().get(name) else { continue };
        store.scan_newest_first(&topic, |r| {
            let rec = r.record.record();
            if r.visible_ms < since {
                return false;
            }
            if let Some(id) = rec.property(PROP_ID) {
                out.insert(id.to_string());
            }
            true
        });
    }
    out
}
