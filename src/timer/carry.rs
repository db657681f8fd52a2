//! Carrying scheduled messages forward out of a commit-log segment that retention is about to
//! reclaim (`crate::retention`), so that no pending message is lost and none pins a segment
//! until it is due.
//!
//! A pending record in the segment is copied to the head of the log, as a new system-topic
//! record with a state cell of its own, and keeps its message id: the copy carries
//! [`PROP_ORIGIN`] (the id the client was given; a copy of a copy keeps the first) and
//! [`PROP_MOVED_FROM`] (the cell of the record it was copied from). The timer keeps a map from
//! each origin id to its current copy, which status and cancel follow
//! ([`TimerEngine::current`]), and a fire of the copy is delivered under the origin id
//! ([`message_id`]). A message due in `d` is copied about `d / store.retention` times.
//!
//! Order, so that a crash or a power cut at any point loses nothing and fires nothing twice:
//! 1. the copies are appended and made durable (the store's fsync), then counted as pending;
//! 2. each origin is mapped to its copy, durably (`timer::moved`, one fsync for the pass), then
//!    the old cell goes SCHEDULED → MOVED (one CAS);
//!    if the CAS fails, the old one fired or was cancelled meanwhile: the copy is cancelled and
//!    a tombstone replaces its map entry;
//! 3. the state cells are fsync'd; only then may the caller delete the segment.
//!
//! Start-up settles a move a crash interrupted ([`settle_copy`]): a copy whose source cell is
//! still SCHEDULED wins (the source becomes MOVED); a copy whose source was cancelled or fired
//! is cancelled (and its map entry tombstoned). A pass that fails in a process that goes on
//! cancels the copies it made and tombstones their entries.
//!
//! What the timer keeps of messages long gone goes with the commit log ([`TimerEngine::reclaim`]):
//! timer-log segments whose slots have all closed, state-cell files below the system topic's
//! first retained entry, and map entries whose copy was reclaimed.

use std::sync::atomic::Ordering;

use super::state::{self, StateCells};
use super::{io, Core, TimerEngine, TimerError, PROP_TOPIC, SYSTEM_PROP_PREFIX};
use crate::store::record::Record;
use crate::store::{Appended, MessageId, NewMessage, VerifiedRecord};

/// Property of a carried-forward copy: the message id it answers for.
pub const PROP_ORIGIN: &str = "__chime.origin";
/// Property of a carried-forward copy: the state cell (system-topic offset) of the record it
/// was copied from.
pub const PROP_MOVED_FROM: &str = "__chime.moved_from";

/// Failpoint (test builds): `return` fails a carry-forward right after its copies are durable,
/// before any original's cell moves: where a crash leaves two scheduled records of a message.
pub const STOP_BEFORE_MOVE: &str = "timer::carry_stop_before_move";

/// Records copied per append (one fsync for them all).
const CHUNK: usize = 1000;

/// The id a scheduled record answers for: its origin's if it is a carried-forward copy.
pub fn message_id(r: &VerifiedRecord) -> String {
    match r.record().property(PROP_ORIGIN) {
        Some(origin) => origin.to_string(),
        None => r.id().to_string(),
    }
}

/// What carrying a range forward did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Carried {
    /// Pending messages copied to the head of the log.
    pub moved: u64,
    /// Why the range cannot be reclaimed yet (nothing was copied then), if it cannot.
    pub blocked: Option<String>,
    /// When blocked: the pending messages found in the range.
    pub pinning: u64,
}

/// The copy of `rec` (at cell `cell`, answering for `origin`) to append to the system topic.
fn copy_of(rec: &Record<'_>, cell: u64, origin: &str) -> NewMessage {
    let mut m = rec.to_message(|k| !k.starts_with(SYSTEM_PROP_PREFIX) || k == PROP_TOPIC);
    m.properties.insert(PROP_ORIGIN.into(), origin.into());
    m.properties.insert(PROP_MOVED_FROM.into(), cell.to_string());
    m.deliver_at_ms = Some(rec.deliver_at_ms);
    m
}

impl TimerEngine {
    /// Where the message `id` lives now, if retention carried it forward (the id of its copy).
    pub fn current(&self, id: MessageId) -> Option<MessageId> {
        self.core.moved.get(&id)
    }

    /// Messages carried forward since start.
    pub fn carried_forward(&self) -> u64 {
        self.core.counters.carried.load(Ordering::Relaxed)
    }

    /// The commit-log offset below which the timer needs no record any more to place a
    /// message: the record of the first system-topic message enqueue-get has not read yet (or
    /// `u64::MAX`). Retention never reclaims at or past it.
    pub fn unread_floor(&self) -> u64 {
        let next = self.core.counters.enqueue_next.load(Ordering::Acquire);
        self.core.sys_topic.queues[0].get(next).map_or(u64::MAX, |e| e.log_offset)
    }

    /// Copies every pending scheduled message whose record lies in `[from, to)` of the commit
    /// log to the head of the log (see the module doc), so the range can be reclaimed. Nothing
    /// is copied if a message there is due within `margin_ms` or being fired (the range is
    /// `blocked` until it has fired), or if the pending records add up to more than
    /// `max_bytes` (copying them would free too little). Blocks for fsyncs: call it off the
    /// async runtime.
    pub fn carry_forward(&self, from: u64, to: u64, margin_ms: i64, max_bytes: u64) -> Result<Carried, TimerError> {
        let c = &self.core;
        if self.unread_floor() < to {
            return Ok(blocked("the timer has not read every record in it yet".into(), 0));
        }
        let cq = &c.sys_topic.queues[0];
        let now = c.clock.now_ms();
        // System-topic entries are in log order: find the first at or after `from`.
        let (mut lo, mut hi) = (c.pending_floor.load(Ordering::Relaxed).max(cq.start()), cq.next());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match cq.get(mid) {
                Some(e) if e.log_offset < from => lo = mid + 1,
                _ => hi = mid,
            }
        }
        let mut todo: Vec<(u64, VerifiedRecord)> = Vec::new();
        let mut held: Option<String> = None;
        for cell in lo..cq.next() {
            let Some(e) = cq.get(cell) else { break };
            if e.log_offset >= to {
                break;
            }
            match c.states.get(cell).map_err(io("read a state cell"))? {
                state::SCHEDULED => {}
                state::FIRING => {
                    held.get_or_insert(format!("the message at cell {cell} is being fired"));
                    continue;
                }
                _ => continue,
            }
            // Unreadable: it can never fire (the fire path makes it final); nothing to carry.
            let Some(r) = c.store.read_verified(e.log_offset) else { continue };
            let due = r.record().deliver_at_ms;
            if due <= now + margin_ms {
                held.get_or_insert(format!("a message in it is due at {due}, within {margin_ms} ms"));
            }
            todo.push((cell, r));
        }
        let bytes: u64 = todo.iter().map(|(_, r)| r.bytes().len() as u64).sum();
        if held.is_none() && bytes > max_bytes {
            held =
                Some(format!("{} pending messages ({bytes} bytes) would be copied, more than {max_bytes}", todo.len()));
        }
        if let Some(why) = held {
            return Ok(blocked(why, todo.len() as u64));
        }
        // All copies appended, then one fsync, then the moves: the copies are durable before
        // any original's cell moves.
        let mut appended = Vec::with_capacity(todo.len());
        let mut mapped = Vec::with_capacity(todo.len());
        let staged = (|| -> Result<(), TimerError> {
            for chunk in todo.chunks(CHUNK) {
                let copies: Vec<NewMessage> =
                    chunk.iter().map(|(cell, r)| copy_of(&r.record(), *cell, &message_id(r))).collect();
                appended.extend(c.store.append(&c.sys_topic, &copies)?.messages);
            }
            c.store.flush_all()?;
            // Each origin mapped to its copy, durably, before any original's cell moves.
            for ((_, r), a) in todo.iter().zip(&appended) {
                if let Ok(origin) = message_id(r).parse::<MessageId>() {
                    mapped.push((origin, a.id));
                }
            }
            let pairs: Vec<_> = mapped.iter().map(|&(o, a)| (o, Some(a))).collect();
            c.moved.record(&pairs).map_err(io("write the moved-id map"))?;
            fail::fail_point!(STOP_BEFORE_MOVE, |_| Err(io("carry forward")(std::io::Error::other(
                "stopped by a failpoint"
            ))));
            Ok(())
        })();
        if let Err(e) = staged {
            // This process goes on, and the next pass copies again: these copies, which no
            // original will be moved to, must never fire. (After a crash here instead, start-up
            // settles them: `settle_copy`.)
            for a in &appended {
                let _ = c.states.ensure(a.queue_offset);
                let _ = c.states.transition(a.queue_offset, state::SCHEDULED, state::CANCELLED);
            }
            if let Err(e) = c.moved.forget(&mapped) {
                tracing::error!(error = %e, "moved-id map: cannot forget the cancelled copies");
            }
            return Err(e);
        }
        for ((_, r), a) in todo.iter().zip(&appended) {
            c.states.ensure(a.queue_offset).map_err(io("create a state cell"))?;
            let rec = r.record();
            c.count(rec.property(PROP_TOPIC).unwrap_or(""), rec.deliver_at_ms);
        }
        let mut moved = 0;
        for ((cell, r), a) in todo.iter().zip(&appended) {
            moved += u64::from(self.move_one(*cell, r, a)?);
        }
        c.states.flush().map_err(io("flush the state cells"))?;
        c.counters.carried.fetch_add(moved, Ordering::Relaxed);
        let _ = c.doorbell.try_send(());
        Ok(Carried { moved, blocked: None, pinning: 0 })
    }

    /// Maps the origin of the record at `cell` to its durable copy `a`, then moves its cell;
    /// `false` if it fired or was cancelled meanwhile (the copy is cancelled then).
    fn move_one(&self, cell: u64, r: &VerifiedRecord, a: &Appended) -> Result<bool, TimerError> {
        let c = &self.core;
        let origin: MessageId = message_id(r).parse().map_err(|_| TimerError::NotFound)?;
        let (topic, due) = {
            let rec = r.record();
            (rec.property(PROP_TOPIC).unwrap_or("").to_string(), rec.deliver_at_ms)
        };
        if c.states.transition(cell, state::SCHEDULED, state::MOVED).map_err(io("move a state cell"))?
            == state::SCHEDULED
        {
            c.uncount(Some(&topic), [due]);
            return Ok(true);
        }
        // Fired or cancelled meanwhile: the copy must never fire (unless a cancel that followed
        // the map got to it first).
        let was =
            c.states.transition(a.queue_offset, state::SCHEDULED, state::CANCELLED).map_err(io("cancel a copy"))?;
        if was == state::SCHEDULED {
            c.uncount(Some(&topic), [due]);
        }
        c.moved.forget(&[(origin, a.id)]).map_err(io("write the moved-id map"))?;
        Ok(false)
    }
}

/// What [`TimerEngine::reclaim`] deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TimerReclaimed {
    pub timer_log_segments: u64,
    pub timer_log_bytes: u64,
    pub state_files: u64,
    pub state_bytes: u64,
}

impl TimerEngine {
    /// Deletes what the timer keeps of messages long gone (module doc); retention calls it
    /// after reclaiming commit-log segments. Safe at any time: each file goes only once nothing
    /// can read it again, and a crash between two deletions leaves files the next pass takes.
    pub fn reclaim(&self) -> Result<TimerReclaimed, TimerError> {
        let c = &self.core;
        let mut out = TimerReclaimed::default();
        // The last checkpoint is what a restart resumes from: units before its position, of
        // slots before its read time, are never read again.
        if let Some(cp) = *c.last_checkpoint.lock() {
            let (n, bytes) =
                c.log.reclaim_front(cp.timer_log_pos, cp.read_time).map_err(io("reclaim the timer log"))?;
            (out.timer_log_segments, out.timer_log_bytes) = (n, bytes);
        }
        let floor = c.sys_topic.queues[0].start().min(c.pending_floor.load(Ordering::Acquire));
        let (n, bytes) = c.states.reclaim_below(floor).map_err(io("reclaim state cells"))?;
        (out.state_files, out.state_bytes) = (n, bytes);
        c.moved.prune(c.store.min_offset()).map_err(io("prune the moved-id map"))?;
        let r = &c.counters;
        r.timer_log_reclaimed_bytes.fetch_add(out.timer_log_bytes, Ordering::Relaxed);
        r.state_reclaimed_bytes.fetch_add(out.state_bytes, Ordering::Relaxed);
        Ok(out)
    }

    /// Bytes of timer-log segments and state-cell files reclaimed since start.
    pub fn reclaimed_bytes(&self) -> (u64, u64) {
        let r = &self.core.counters;
        (r.timer_log_reclaimed_bytes.load(Ordering::Relaxed), r.state_reclaimed_bytes.load(Ordering::Relaxed))
    }

    /// Timer-log segments, state-cell files and moved-id entries held now.
    pub fn files(&self) -> (u64, u64, u64) {
        let c = &self.core;
        (c.log.segments(), c.states.files(), c.moved.len() as u64)
    }
}

fn blocked(why: String, pinning: u64) -> Carried {
    Carried { moved: 0, blocked: Some(why), pinning }
}

impl Core {
    /// Counts one more pending message of `topic` due at `at`.
    pub(super) fn count(&self, topic: &str, at: i64) {
        self.congestion.lock().add(at, 1);
        *self.pending.lock().entry(topic.to_string()).or_insert(0) += 1;
    }
}

/// How start-up settled a scheduled copy ([`settle_copy`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Settled {
    /// The copy lives; its source was already MOVED.
    Lives,
    /// The copy lives; its source was still SCHEDULED (a crash before its CAS) and is MOVED
    /// now, so the source, counted as pending, is not any more.
    LivesSourceMoved,
    /// The source was cancelled or fired before the move completed: the copy is cancelled.
    Cancelled,
}

/// Start-up: settles the scheduled copy at cell `copy` whose source is cell `src` (see the
/// module doc). The source's cell is lower, so start-up has already seen (and counted) it.
pub(super) fn settle_copy(states: &StateCells, copy: u64, src: u64) -> Result<Settled, TimerError> {
    match states.get(src).map_err(io("read a state cell"))? {
        state::MOVED => Ok(Settled::Lives),
        state::SCHEDULED => {
            states.set(src, state::MOVED).map_err(io("settle a moved cell"))?;
            Ok(Settled::LivesSourceMoved)
        }
        _ => {
            states.set(copy, state::CANCELLED).map_err(io("cancel a copy"))?;
            Ok(Settled::Cancelled)
        }
    }
}
