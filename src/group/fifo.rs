//! FIFO delivery by message group within one queue of a FIFO consumer group (API.md "FIFO
//! consumer groups"): the messages of one message group are handed out one at a time, in queue
//! order, and message groups never wait for each other.
//!
//! A send routes every message of a message group to one queue of its topic
//! ([`crate::store::topics::Topic::queue_for`]), a scheduled one when it fires, so queue order
//! is the order the messages became visible. The group reads its queue as any group does; a
//! message whose message group already has one *out* (in flight, or on its way to the dead
//! letter topic) is *held* instead of handed out, and the group reads on past it: a slow message
//! group delays only itself. When the message out is done (acked, dead-lettered, reclaimed), the
//! oldest held message of its group becomes *ready* and is handed out before new ones.
//!
//! Invariants (checked by `debug_check` in tests):
//! - `out_at` and `out` describe the same offsets; `held_at` and `held` likewise, each group's
//!   held offsets ascending;
//! - `ready` holds exactly the first held offset of each message group that has nothing out.
//!
//! In memory only: message groups are 64-bit hashes of their names (a collision makes two
//! groups wait for each other, never reorders one). Held offsets are persisted by the queue's
//! progress ([`super::progress::QueueSnapshot::held`]); the rest is rebuilt at start-up from
//! the records in flight.

use std::collections::{BTreeMap, HashMap, VecDeque};

pub use crate::store::topics::message_group_hash as group_hash;

/// The reserved property that holds a message's `message_group` (kept when the timer fires it,
/// and in its dead letter).
pub const PROP_MESSAGE_GROUP: &str = "__fifo.group";

#[derive(Debug, Clone, PartialEq, Eq)]
struct Out {
    /// Usually one; more only for deliveries made before the group became FIFO.
    offsets: Vec<u64>,
    /// When the first of them was handed out (ms).
    since_ms: i64,
}

/// One message group that waits for its message out (`GET .../blocked`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocked {
    pub group: u64,
    /// The queue offset of the message out (the oldest, if several).
    pub offset: u64,
    pub since_ms: i64,
    /// Messages of the group held behind it.
    pub waiting: usize,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fifo {
    out: HashMap<u64, Out>,
    out_at: BTreeMap<u64, u64>,
    held: HashMap<u64, VecDeque<u64>>,
    held_at: BTreeMap<u64, u64>,
    ready: BTreeMap<u64, u64>,
}

impl Fifo {
    /// Whether a new message of `group` may be handed out now (nothing of its group out or held).
    pub fn is_free(&self, group: u64) -> bool {
        !self.out.contains_key(&group) && !self.held.contains_key(&group)
    }

    /// Holds the message at `offset` of `group` (its group is not free).
    pub fn hold(&mut self, offset: u64, group: u64) {
        let q = self.held.entry(group).or_default();
        debug_assert!(q.back().is_none_or(|&b| b < offset), "held in queue order");
        q.push_back(offset);
        self.held_at.insert(offset, group);
        self.promote(group);
    }

    /// The message at `offset` of `group` is handed out at `now`.
    pub fn take_out(&mut self, offset: u64, group: u64, now: i64) {
        let o = self.out.entry(group).or_insert_with(|| Out { offsets: Vec::new(), since_ms: now });
        if !o.offsets.contains(&offset) {
            o.offsets.push(offset);
        }
        self.out_at.insert(offset, group);
        // Nothing of a group with a message out is ready.
        if let Some(&first) = self.held.get(&group).and_then(|q| q.front()) {
            self.ready.remove(&first);
        }
    }

    /// The oldest ready message: (offset, group).
    pub fn first_ready(&self) -> Option<(u64, u64)> {
        self.ready.first_key_value().map(|(&o, &g)| (o, g))
    }

    /// Takes the ready message at `offset` off the held ones (the caller hands it out, or drops
    /// it when its record is gone). Returns its group.
    pub fn unhold(&mut self, offset: u64) -> Option<u64> {
        let group = self.held_at.remove(&offset)?;
        self.ready.remove(&offset);
        if let Some(q) = self.held.get_mut(&group) {
            // Handed out in order, so it is the front but for retention's cuts.
            if q.front() == Some(&offset) {
                q.pop_front();
            } else {
                q.retain(|&o| o != offset);
            }
            if q.is_empty() {
                self.held.remove(&group);
            }
        }
        self.promote(group);
        Some(group)
    }

    /// The message at `offset` is done (acked, dead-lettered, dropped): its group moves on.
    pub fn finish(&mut self, offset: u64) {
        let Some(group) = self.out_at.remove(&offset) else { return };
        if let Some(o) = self.out.get_mut(&group) {
            o.offsets.retain(|&x| x != offset);
            if o.offsets.is_empty() {
                self.out.remove(&group);
            }
        }
        self.promote(group);
    }

    /// Forgets every offset below `to` (reclaimed by retention).
    pub fn forget_below(&mut self, to: u64) {
        let gone: Vec<u64> = self.out_at.range(..to).map(|(&o, _)| o).collect();
        gone.into_iter().for_each(|o| self.finish(o));
        let gone: Vec<u64> = self.held_at.range(..to).map(|(&o, _)| o).collect();
        for o in gone {
            self.unhold(o);
        }
    }

    fn promote(&mut self, group: u64) {
        if self.out.contains_key(&group) {
            return;
        }
        if let Some(&first) = self.held.get(&group).and_then(|q| q.front()) {
            self.ready.insert(first, group);
        }
    }

    /// Messages held (ready ones included).
    pub fn held_count(&self) -> usize {
        self.held_at.len()
    }

    /// Held offsets, ascending.
    pub fn held_offsets(&self) -> impl Iterator<Item = u64> + '_ {
        self.held_at.keys().copied()
    }

    /// The message groups with a message out, longest out first, at most `limit`.
    pub fn blocked(&self, limit: usize) -> Vec<Blocked> {
        let mut v: Vec<Blocked> = self
            .out
            .iter()
            .map(|(&group, o)| Blocked {
                group,
                offset: o.offsets.iter().copied().min().unwrap_or(0),
                since_ms: o.since_ms,
                waiting: self.held.get(&group).map_or(0, VecDeque::len),
            })
            .collect();
        v.sort_by_key(|b| (b.since_ms, b.offset));
        v.truncate(limit);
        v
    }

    /// Message groups with a message out.
    pub fn out_count(&self) -> usize {
        self.out.len()
    }

    #[cfg(test)]
    pub fn debug_check(&self) {
        let n: usize = self.out.values().map(|o| o.offsets.len()).sum();
        assert_eq!(n, self.out_at.len());
        for (&o, g) in &self.out_at {
            assert!(self.out[g].offsets.contains(&o));
        }
        let n: usize = self.held.values().map(VecDeque::len).sum();
        assert_eq!(n, self.held_at.len());
        for (g, q) in &self.held {
            assert!(!q.is_empty());
            assert!(q.iter().zip(q.iter().skip(1)).all(|(a, b)| a < b), "held in order");
            q.iter().for_each(|o| assert_eq!(self.held_at[o], *g));
            let head_ready = self.ready.get(&q[0]) == Some(g);
            assert_eq!(head_ready, !self.out.contains_key(g), "group {g}: ready iff nothing out");
        }
        assert_eq!(self.ready.len(), self.held.keys().filter(|g| !self.out.contains_key(g)).count());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_out_per_group_the_rest_held_in_order_and_groups_do_not_wait_for_each_other() {
        let (a, b) = (group_hash("a"), group_hash("b"));
        let mut f = Fifo::default();
        assert!(f.is_free(a));
        f.take_out(0, a, 10);
        f.hold(1, a);
        assert!(f.is_free(b), "another group is not held up by a");
        f.take_out(2, b, 11);
        f.hold(3, a);
        f.debug_check();
        assert_eq!(f.first_ready(), None, "a has 0 out");
        assert_eq!(f.blocked(10).iter().map(|x| (x.group, x.waiting)).collect::<Vec<_>>(), vec![(a, 2), (b, 0)]);
        f.finish(0);
        f.debug_check();
        assert_eq!(f.first_ready(), Some((1, a)), "a's next in order");
        assert_eq!(f.unhold(1), Some(a));
        f.take_out(1, a, 20);
        f.debug_check();
        assert_eq!(f.first_ready(), None);
        f.finish(2);
        assert!(f.is_free(b));
        f.finish(1);
        assert_eq!(f.first_ready(), Some((3, a)));
        f.forget_below(4);
        f.debug_check();
        assert_eq!((f.held_count(), f.out_count(), f.first_ready()), (0, 0, None));
    }
}
