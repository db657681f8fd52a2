//! One consumer group's progress through one queue: what is done, what is in flight.
//!
//! Invariants (checked by `debug_check` in tests):
//! - every offset below `floor` is done (acked, or skipped by the group's tag filter);
//! - every offset in `[floor, next)` is exactly one of: done (in `done`), in flight (in
//!   `inflight`), moving (in `moving`: out of delivery, its dead letter or its delayed
//!   redelivery not yet known stored), held by a FIFO group behind an earlier message of its
//!   message group (in `fifo`, or `restored_held` until the group's FIFO state is rebuilt), or
//!   waiting for redelivery after a restart (in none; treated as in flight with an expired
//!   deadline);
//! - offsets at or after `next` have never been handed out;
//! - `by_deadline` holds exactly one `(visible_at, offset)` pair per in-flight entry.
//!
//! Time is passed in (`now` in ms), never read here.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::fifo::Fifo;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inflight {
    /// 1 for the first delivery.
    pub attempt: u32,
    /// When the message becomes receivable again if not acked.
    pub visible_at: i64,
    /// Distinguishes this delivery's receipt handle from earlier ones.
    pub nonce: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueProgress {
    pub floor: u64,
    pub next: u64,
    done: BTreeSet<u64>,
    inflight: BTreeMap<u64, Inflight>,
    by_deadline: BTreeSet<(i64, u64)>,
    /// Messages the group never received because retention reclaimed them first.
    pub expired: u64,
    /// Offsets whose dead letter or delayed redelivery is being stored.
    moving: BTreeMap<u64, Move>,
    /// Messages moved to the dead letter topic.
    pub dead_lettered: u64,
    /// A FIFO group's message-group bookkeeping (`None`: not FIFO, or not rebuilt yet).
    fifo: Option<Fifo>,
    /// Held offsets a snapshot restored, until [`QueueProgress::set_fifo`] rebuilds `fifo`.
    restored_held: BTreeSet<u64>,
}

/// A delivery on its way out of the queue: to the dead letter topic, or to a delayed
/// redelivery through the retry topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Move {
    /// Deliveries so far.
    pub attempts: u32,
    /// The commit-log position before which what it stores cannot be.
    pub from: u64,
    /// `None`: a dead letter; `Some(at)`: redelivered at `at` (ms).
    pub retry_at: Option<i64>,
}

/// The persisted form (see `persist`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSnapshot {
    pub floor: u64,
    pub next: u64,
    #[serde(default)]
    pub done: Vec<u64>,
    /// `[offset, attempt, visible_at]`
    #[serde(default)]
    pub inflight: Vec<(u64, u32, i64)>,
    /// Messages reclaimed before the group received them.
    #[serde(default)]
    pub expired: u64,
    /// `[offset, attempts, log position]` of dead letters being stored.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dead_lettering: Vec<(u64, u32, u64)>,
    /// `[offset, attempts, log position, due]` of delayed redeliveries being stored.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retrying: Vec<(u64, u32, u64, i64)>,
    #[serde(default)]
    pub dead_lettered: u64,
    /// Offsets a FIFO group holds behind an earlier message of their message group (never
    /// handed out).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub held: Vec<u64>,
}

impl QueueSnapshot {
    /// Whether this is ahead of a queue of `available` messages and a log ending at `log_end`
    /// (a power cut took their tails after it was written): [`QueueProgress::restore`] cuts it
    /// back.
    pub fn ahead_of(&self, available: u64, log_end: u64) -> bool {
        self.next > available
            || self.dead_lettering.iter().any(|&(_, _, from)| from > log_end)
            || self.retrying.iter().any(|&(_, _, from, _)| from > log_end)
    }
}

impl QueueProgress {
    pub fn snapshot(&self) -> QueueSnapshot {
        QueueSnapshot {
            floor: self.floor,
            next: self.next,
            done: self.done.iter().copied().collect(),
            inflight: self.inflight.iter().map(|(&o, i)| (o, i.attempt, i.visible_at)).collect(),
            expired: self.expired,
            dead_lettering: self
                .moving
                .iter()
                .filter(|(_, m)| m.retry_at.is_none())
                .map(|(&o, m)| (o, m.attempts, m.from))
                .collect(),
            retrying: self.moving.iter().filter_map(|(&o, m)| Some((o, m.attempts, m.from, m.retry_at?))).collect(),
            dead_lettered: self.dead_lettered,
            held: self.fifo.iter().flat_map(|f| f.held_offsets()).chain(self.restored_held.iter().copied()).collect(),
        }
    }

    /// Restores a snapshot against a queue that now holds `available` messages and a commit log
    /// that ends at `log_end` (both can be shorter than before a machine crash under async
    /// flush). Offsets in `[floor, next)` that are neither done nor in flight become
    /// redeliverable at once. A move's log position past `log_end` comes down to it: what it
    /// stored after that position was lost with the log's tail, and what it stores now goes at
    /// `log_end` or later, where the search for it must start.
    pub fn restore(s: &QueueSnapshot, available: u64, log_end: u64) -> Self {
        let next = s.next.min(available);
        let floor = s.floor.min(next);
        let mut p = Self { floor, next, expired: s.expired, dead_lettered: s.dead_lettered, ..Self::default() };
        p.done = s.done.iter().copied().filter(|&o| o >= floor && o < next).collect();
        let moves = s
            .dead_lettering
            .iter()
            .map(|&(o, attempts, from)| (o, Move { attempts, from: from.min(log_end), retry_at: None }));
        let retries = s
            .retrying
            .iter()
            .map(|&(o, attempts, from, at)| (o, Move { attempts, from: from.min(log_end), retry_at: Some(at) }));
        for (o, m) in moves.chain(retries) {
            if o >= floor && o < next && !p.done.contains(&o) {
                p.moving.insert(o, m);
            }
        }
        for &(o, attempt, visible_at) in &s.inflight {
            if o >= floor && o < next && !p.done.contains(&o) && !p.moving.contains_key(&o) {
                p.set_inflight(o, Inflight { attempt, visible_at, nonce: 0 });
            }
        }
        p.restored_held = s
            .held
            .iter()
            .copied()
            .filter(|&o| o >= floor && o < next && !p.done.contains(&o) && !p.moving.contains_key(&o))
            .filter(|o| !p.inflight.contains_key(o))
            .collect();
        // Offsets handed out but in neither set (acked state lost) are redelivered now.
        for o in floor..next {
            if !p.done.contains(&o)
                && !p.inflight.contains_key(&o)
                && !p.moving.contains_key(&o)
                && !p.restored_held.contains(&o)
            {
                p.set_inflight(o, Inflight { attempt: 1, visible_at: i64::MIN, nonce: 0 });
            }
        }
        p.advance_floor();
        p
    }

    fn set_inflight(&mut self, offset: u64, f: Inflight) {
        if let Some(old) = self.inflight.insert(offset, f) {
            self.by_deadline.remove(&(old.visible_at, offset));
        }
        self.by_deadline.insert((f.visible_at, offset));
    }

    /// In-flight offsets whose invisibility has ended by `now`, oldest deadline first.
    pub fn expired(&self, now: i64, max: usize) -> Vec<u64> {
        self.by_deadline.range(..=(now, u64::MAX)).take(max).map(|&(_, o)| o).collect()
    }

    /// Earliest time an in-flight message becomes receivable again.
    pub fn next_deadline(&self) -> Option<i64> {
        self.by_deadline.first().map(|&(t, _)| t)
    }

    /// Hands out `offset` (fresh, which must be `next`, or an expired redelivery): returns the
    /// delivery attempt.
    pub fn deliver(&mut self, offset: u64, visible_at: i64, nonce: u32) -> u32 {
        debug_assert!(offset <= self.next && offset >= self.floor);
        if offset == self.next {
            self.next += 1;
        }
        let attempt = self.inflight.get(&offset).map_or(0, |f| f.attempt) + 1;
        self.set_inflight(offset, Inflight { attempt, visible_at, nonce });
        attempt
    }

    /// Marks `next` done without delivering it (filtered out by the group's tag expression,
    /// or unreadable).
    /// Moves the next offset on to `to`, counting the offsets passed as expired (retention
    /// reclaimed their messages before the group received them).
    pub fn expire_to(&mut self, to: u64) {
        if to <= self.next {
            return;
        }
        self.expired += to - self.next;
        if self.floor == self.next {
            self.floor = to;
        } else {
            self.done.extend(self.next..to);
        }
        self.next = to;
        self.advance_floor();
    }

    /// Forgets everything below `to` (retention reclaimed it): done and in-flight offsets go,
    /// offsets never handed out count as expired. Returns how many did.
    pub fn forget_below(&mut self, to: u64) -> u64 {
        if to <= self.floor {
            return 0;
        }
        let expired = to.saturating_sub(self.next);
        let gone: Vec<u64> = self.inflight.range(..to).map(|(&o, _)| o).collect();
        for o in gone {
            if let Some(f) = self.inflight.remove(&o) {
                self.by_deadline.remove(&(f.visible_at, o));
            }
        }
        self.done = self.done.split_off(&to);
        self.moving = self.moving.split_off(&to);
        self.restored_held = self.restored_held.split_off(&to);
        if let Some(f) = &mut self.fifo {
            f.forget_below(to);
        }
        self.floor = to;
        self.next = self.next.max(to);
        self.expired += expired;
        self.advance_floor();
        expired
    }

    pub fn skip_next(&mut self) {
        self.done.insert(self.next);
        self.next += 1;
        self.advance_floor();
    }

    /// Marks an in-flight offset done without delivering it again (its record is unreadable).
    pub fn drop_inflight(&mut self, offset: u64) {
        if let Some(f) = self.inflight.remove(&offset) {
            self.by_deadline.remove(&(f.visible_at, offset));
            self.finish(offset);
        }
    }

    /// `offset` is done for the group (acked, moved, dropped); a FIFO message group moves on.
    fn finish(&mut self, offset: u64) {
        self.done.insert(offset);
        if let Some(f) = &mut self.fifo {
            f.finish(offset);
        }
        self.advance_floor();
    }

    /// Deliveries of `offset` so far (0 if it was never handed out).
    pub fn attempts_so_far(&self, offset: u64) -> u32 {
        self.inflight.get(&offset).map_or(0, |f| f.attempt)
    }

    /// The delivery attempt of a valid handle (`offset`, `nonce`), if it is valid.
    pub fn attempt(&self, offset: u64, nonce: u32) -> Option<u32> {
        self.inflight.get(&offset).filter(|f| f.nonce == nonce && nonce != 0).map(|f| f.attempt)
    }

    /// Makes a valid delivery invisible until `visible_at`; its handle stays valid.
    pub fn extend(&mut self, offset: u64, nonce: u32, visible_at: i64) -> bool {
        let Some(f) = self.inflight.get(&offset).copied().filter(|f| f.nonce == nonce && nonce != 0) else {
            return false;
        };
        self.set_inflight(offset, Inflight { visible_at, ..f });
        true
    }

    /// Takes an in-flight offset out of delivery: its dead letter or delayed redelivery
    /// (`m`) is being stored.
    pub fn begin_move(&mut self, offset: u64, m: Move) {
        if let Some(f) = self.inflight.remove(&offset) {
            self.by_deadline.remove(&(f.visible_at, offset));
        }
        self.moving.insert(offset, m);
    }

    /// What is being stored: (offset, move).
    pub fn moving(&self) -> impl Iterator<Item = (u64, Move)> + '_ {
        self.moving.iter().map(|(&o, &m)| (o, m))
    }

    /// What `offset` moved to is stored: the offset is done here.
    pub fn end_move(&mut self, offset: u64) {
        if let Some(m) = self.moving.remove(&offset) {
            if m.retry_at.is_none() {
                self.dead_lettered += 1;
            }
            self.finish(offset);
        }
    }

    /// Whether this queue delivers by message group (a FIFO group, its state rebuilt).
    pub fn fifo(&self) -> Option<&Fifo> {
        self.fifo.as_ref()
    }

    /// FIFO: passes `next` by, held behind the message out of its message group `group`.
    pub fn hold_next(&mut self, group: u64) {
        let offset = self.next;
        self.next += 1;
        self.fifo.get_or_insert_with(Fifo::default).hold(offset, group);
    }

    /// FIFO: hands out `offset` of message group `group` (new at `next`, or held and ready) at
    /// `now`; returns the delivery attempt.
    pub fn deliver_in_group(&mut self, offset: u64, group: u64, visible_at: i64, nonce: u32, now: i64) -> u32 {
        if let Some(f) = &mut self.fifo {
            f.unhold(offset);
            f.take_out(offset, group, now);
        }
        self.deliver(offset, visible_at, nonce)
    }

    /// FIFO: a held message whose record is gone (reclaimed, unreadable) is done.
    pub fn drop_held(&mut self, offset: u64) {
        if self.fifo.as_mut().and_then(|f| f.unhold(offset)).is_some() {
            self.finish(offset);
        }
    }

    /// A nack of a FIFO delivery: it stays out (its message group keeps waiting for it),
    /// invisible until `visible_at`, then handed out again first; its handle is spent.
    pub fn delay(&mut self, offset: u64, nonce: u32, visible_at: i64) -> bool {
        let Some(f) = self.inflight.get(&offset).copied().filter(|f| f.nonce == nonce && nonce != 0) else {
            return false;
        };
        self.set_inflight(offset, Inflight { visible_at, nonce: 0, ..f });
        true
    }

    /// Turns FIFO delivery on or off (a group's `fifo`, applied at start-up and on every
    /// change). On: rebuilds the message groups from what is out (`group_of` reads an offset's
    /// message group): per message group the oldest message is out, a restored delivery behind
    /// it is held again, and one handed out by this process before the change stays out.
    /// Off: every held message becomes receivable at once.
    pub fn set_fifo(&mut self, on: bool, mut group_of: impl FnMut(u64) -> Option<u64>, now: i64) {
        let unheld = Inflight { attempt: 0, visible_at: i64::MIN, nonce: 0 };
        if !on {
            let held: Vec<u64> = self.fifo.take().map(|f| f.held_offsets().collect()).unwrap_or_default();
            for o in held.into_iter().chain(std::mem::take(&mut self.restored_held)) {
                self.set_inflight(o, unheld);
            }
            return;
        }
        if self.fifo.is_some() {
            return;
        }
        let restored = std::mem::take(&mut self.restored_held);
        let candidates: BTreeSet<u64> =
            self.inflight.keys().chain(self.moving.keys()).chain(restored.iter()).copied().collect();
        let mut f = Fifo::default();
        for o in candidates {
            let Some(g) = group_of(o) else {
                if restored.contains(&o) {
                    self.set_inflight(o, unheld);
                }
                continue;
            };
            let live = self.inflight.get(&o).is_some_and(|x| x.nonce != 0) || self.moving.contains_key(&o);
            if restored.contains(&o) {
                f.hold(o, g);
            } else if f.is_free(g) || live {
                f.take_out(o, g, now);
            } else {
                if let Some(x) = self.inflight.remove(&o) {
                    self.by_deadline.remove(&(x.visible_at, o));
                }
                f.hold(o, g);
            }
        }
        self.fifo = Some(f);
    }

    /// Messages held by a FIFO group (not handed out, visible).
    pub fn held_count(&self) -> u64 {
        (self.fifo.as_ref().map_or(0, Fifo::held_count) + self.restored_held.len()) as u64
    }

    /// In flight now (handed out, invisible until a deadline still ahead of `now`).
    pub fn in_flight(&self, now: i64) -> u64 {
        self.by_deadline.range((now.saturating_add(1), 0)..).count() as u64
    }

    /// Starts over at `to`: the next message handed out is the one at `to`; everything in
    /// flight is forgotten (its handles become invalid). The caller finishes the dead letters
    /// being stored first; any left are forgotten too.
    pub fn seek(&mut self, to: u64) {
        self.inflight.clear();
        self.by_deadline.clear();
        self.done.clear();
        self.moving.clear();
        self.restored_held.clear();
        if let Some(f) = &mut self.fifo {
            *f = Fifo::default();
        }
        self.floor = to;
        self.next = to;
    }

    /// Acks a delivery; false if the handle is stale (redelivered since) or unknown.
    pub fn ack(&mut self, offset: u64, nonce: u32) -> bool {
        match self.inflight.get(&offset) {
            // Nonce 0 is never issued: it marks entries restored from a snapshot.
            Some(f) if f.nonce == nonce && nonce != 0 => {
                let f = *f;
                self.inflight.remove(&offset);
                self.by_deadline.remove(&(f.visible_at, offset));
                self.finish(offset);
                true
            }
            _ => false,
        }
    }

    fn advance_floor(&mut self) {
        while self.floor < self.next && self.done.remove(&self.floor) {
            self.floor += 1;
        }
    }

    #[cfg(test)]
    pub fn debug_check(&self) {
        assert!(self.floor <= self.next);
        for &o in &self.done {
            assert!(o > self.floor && o < self.next, "done {o} outside ({}, {})", self.floor, self.next);
            assert!(!self.inflight.contains_key(&o));
        }
        for &o in self.inflight.keys() {
            assert!(o >= self.floor && o < self.next);
            assert!(!self.moving.contains_key(&o));
        }
        for &o in self.moving.keys() {
            assert!(o >= self.floor && o < self.next && !self.done.contains(&o));
        }
        if let Some(f) = &self.fifo {
            f.debug_check();
            for o in f.held_offsets() {
                assert!(o >= self.floor && o < self.next, "held {o}");
                assert!(!self.done.contains(&o) && !self.inflight.contains_key(&o) && !self.moving.contains_key(&o));
            }
        }
        assert_eq!(self.by_deadline.len(), self.inflight.len());
        for &(t, o) in &self.by_deadline {
            assert_eq!(self.inflight[&o].visible_at, t);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forget_below_drops_what_was_reclaimed_and_counts_only_the_never_received() {
        let mut p = QueueProgress::default();
        for o in 0..6 {
            p.deliver(o, 100 + o as i64, 1);
        }
        assert!(p.ack(1, 1) && p.ack(4, 1));
        // Offsets 0..8 reclaimed: 0, 2, 3 in flight and 1 done go; 6 and 7 were never handed out.
        assert_eq!(p.forget_below(8), 2);
        p.debug_check();
        assert_eq!((p.floor, p.next, p.expired), (8, 8, 2));
        assert!(p.expired(i64::MAX, 10).is_empty(), "nothing left to redeliver");
        assert_eq!(p.forget_below(8), 0, "nothing twice");
        // A reclaim inside what is in flight keeps what is above it.
        let mut p = QueueProgress::default();
        for o in 0..4 {
            p.deliver(o, 100, 1);
        }
        assert!(p.ack(3, 1));
        assert_eq!(p.forget_below(2), 0);
        p.debug_check();
        assert_eq!((p.floor, p.next), (2, 4));
        assert_eq!(p.expired(i64::MAX, 10), vec![2]);
    }

    #[test]
    fn deliver_ack_redeliver() {
        let mut p = QueueProgress::default();
        assert_eq!(p.deliver(0, 100, 1), 1);
        assert_eq!(p.deliver(1, 100, 2), 1);
        p.skip_next(); // offset 2 filtered
        p.debug_check();
        assert_eq!(p.next, 3);
        assert_eq!(p.floor, 0);
        assert!(p.expired(99, 10).is_empty());
        assert_eq!(p.expired(100, 10), vec![0, 1]);
        assert_eq!(p.next_deadline(), Some(100));
        // A stale handle (wrong nonce) is refused; the right one acks.
        assert!(!p.ack(1, 1));
        assert!(p.ack(1, 2));
        assert!(!p.ack(1, 2), "acking twice is refused");
        assert_eq!(p.floor, 0, "offset 0 still in flight");
        // Redeliver 0 after its deadline: attempt 2, old handle invalid.
        assert_eq!(p.deliver(0, 200, 3), 2);
        assert!(!p.ack(0, 1));
        assert!(p.ack(0, 3));
        assert_eq!(p.floor, 3, "0 acked, 1 acked, 2 skipped");
        p.debug_check();
    }

    #[test]
    fn snapshot_restore_keeps_acks_and_redelivers_the_rest() {
        let mut p = QueueProgress::default();
        for o in 0..5 {
            p.deliver(o, 1_000, o as u32);
        }
        assert!(p.ack(1, 1));
        assert!(p.ack(3, 3));
        let s = p.snapshot();
        let r = QueueProgress::restore(&s, 5, u64::MAX);
        r.debug_check();
        assert_eq!(r.next, 5);
        assert_eq!(r.floor, 0);
        assert_eq!(r.expired(999, 10), Vec::<u64>::new(), "still invisible after restart");
        assert_eq!(r.expired(1_000, 10), vec![0, 2, 4]);
        // Handles from before the restart are invalid (nonce 0 is never issued).
        let mut r2 = r.clone();
        assert!(!r2.ack(0, 0));
        // The queue lost its last two messages (machine crash under async flush).
        let r = QueueProgress::restore(&s, 3, u64::MAX);
        r.debug_check();
        assert_eq!(r.next, 3);
        assert_eq!(r.expired(i64::MAX, 10), vec![0, 2]);
    }

    #[test]
    fn restore_fills_gaps_for_redelivery() {
        let s = QueueSnapshot {
            floor: 2,
            next: 6,
            done: vec![3],
            inflight: vec![(5, 2, 50)],
            expired: 0,
            ..Default::default()
        };
        let r = QueueProgress::restore(&s, 10, u64::MAX);
        r.debug_check();
        // 2 and 4 were handed out but their state is unknown: redeliver immediately.
        assert_eq!(r.expired(0, 10), vec![2, 4]);
        assert_eq!(r.expired(50, 10), vec![2, 4, 5]);
    }

    #[test]
    fn restore_brings_moves_down_to_the_end_of_a_shorter_log() {
        let s = QueueSnapshot {
            next: 3,
            dead_lettering: vec![(0, 4, 1000)],
            retrying: vec![(1, 2, 400, 99)],
            ..Default::default()
        };
        assert!(s.ahead_of(3, 700), "a dead letter marked at 1000 with the log ending at 700");
        assert!(!s.ahead_of(3, 1000));
        assert!(s.ahead_of(2, 1000), "the queue lost its tail");
        let r = QueueProgress::restore(&s, 3, 700);
        let m: Vec<(u64, Move)> = r.moving().collect();
        assert_eq!(m[0], (0, Move { attempts: 4, from: 700, retry_at: None }));
        assert_eq!(m[1], (1, Move { attempts: 2, from: 400, retry_at: Some(99) }), "not past the end: kept");
    }
}
