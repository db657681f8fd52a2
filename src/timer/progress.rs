//! Completion tracking: how far the timer may checkpoint.
//!
//! - Dequeue side: a slot counts as fired when dequeue-get has walked it (`seal`) and every
//!   unit it handed on is finished (`done`: stored for its topic, skipped as cancelled, or
//!   re-linked as a roll). The checkpointable read time is the earliest slot not yet fired.
//! - Enqueue side: system-topic messages are placed in order, so "placed below N" is one number;
//!   messages already due at placement go straight to the dequeue side and stay in flight until
//!   fired. The checkpointable enqueue offset is the lower of the two.

use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Default)]
pub struct Progress {
    /// Slot time → (units outstanding, walked completely).
    slots: BTreeMap<i64, (u64, bool)>,
    /// System-topic offsets below this have been placed.
    placed_below: u64,
    /// Placed straight on the dequeue side, not yet fired.
    direct: BTreeSet<u64>,
}

impl Progress {
    pub fn new(enqueue_offset: u64) -> Self {
        Self { placed_below: enqueue_offset, ..Self::default() }
    }

    pub fn slot_add(&mut self, slot: i64, n: u64) {
        self.slots.entry(slot).or_insert((0, false)).0 += n;
    }

    pub fn slot_seal(&mut self, slot: i64) {
        let e = self.slots.entry(slot).or_insert((0, false));
        e.1 = true;
        if e.0 == 0 {
            self.slots.remove(&slot);
        }
    }

    pub fn slot_done(&mut self, slot: i64) {
        if let Some(e) = self.slots.get_mut(&slot) {
            e.0 = e.0.saturating_sub(1);
            if e.0 == 0 && e.1 {
                self.slots.remove(&slot);
            }
        }
    }

    /// The read time a checkpoint may record, given dequeue-get's read pointer.
    pub fn committed_read_time(&self, read_pointer: i64) -> i64 {
        self.slots.keys().next().map_or(read_pointer, |&s| s.min(read_pointer))
    }

    pub fn placed(&mut self, sys_offset: u64) {
        self.placed_below = self.placed_below.max(sys_offset + 1);
    }

    pub fn direct_begin(&mut self, sys_offset: u64) {
        self.direct.insert(sys_offset);
    }

    pub fn direct_done(&mut self, sys_offset: u64) {
        self.direct.remove(&sys_offset);
    }

    pub fn committed_enqueue_offset(&self) -> u64 {
        self.direct.first().map_or(self.placed_below, |&d| d.min(self.placed_below))
    }

    pub fn in_flight(&self) -> u64 {
        self.slots.values().map(|v| v.0).sum::<u64>() + self.direct.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_time_waits_for_the_slowest_unit() {
        let mut p = Progress::new(0);
        p.slot_add(1000, 2);
        p.slot_seal(1000);
        p.slot_add(2000, 1);
        p.slot_seal(2000);
        assert_eq!(p.committed_read_time(3000), 1000);
        p.slot_done(1000);
        p.slot_done(2000);
        assert_eq!(p.committed_read_time(3000), 1000, "one unit of 1000 still out");
        p.slot_done(1000);
        assert_eq!(p.committed_read_time(3000), 3000);
        // A slot being walked (not sealed) holds the read time even with nothing outstanding.
        p.slot_add(3000, 1);
        p.slot_done(3000);
        assert_eq!(p.committed_read_time(4000), 3000);
        p.slot_seal(3000);
        assert_eq!(p.committed_read_time(4000), 4000);
        p.slot_seal(4000);
        assert_eq!(p.committed_read_time(5000), 5000, "an empty slot sealed is done");
    }

    #[test]
    fn enqueue_offset_waits_for_direct_fires() {
        let mut p = Progress::new(10);
        p.placed(10);
        p.direct_begin(11);
        p.placed(11);
        p.placed(12);
        assert_eq!(p.committed_enqueue_offset(), 11);
        p.direct_done(11);
        assert_eq!(p.committed_enqueue_offset(), 13);
        assert_eq!(p.in_flight(), 0);
    }
}
