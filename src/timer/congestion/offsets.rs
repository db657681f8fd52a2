//! The millisecond offsets of pending messages within their slots: what makes a congestion
//! window's edges exact when they cut a slot.
//!
//! Slots are grouped by `GROUP` consecutive slots. A group keeps one sorted `Vec<u32>` with one
//! entry per message, `(slot mod GROUP) << 16 | offset`, so a slot's messages are one contiguous,
//! offset-ordered run and "messages of slot S before offset o" is two binary searches. That is
//! 4 bytes a message and one hash entry per 64 slots, however thinly the messages are spread
//! (per-slot containers cost ~90 bytes for every non-empty slot instead). A slot that gathers
//! more than `DENSE_AT` messages (a burst) moves out of the list into a count per offset
//! (`4 × precision` bytes), so neither inserting into a crowded slot nor counting it grows with
//! the burst.
//!
//! Offsets are below 65,536 (the timer's precision is at most 60 s). Removing what is not there
//! removes nothing and says so.

use rustc_hash::FxHashMap;

/// Slots per group: a power of two, small enough that a group's list stays short when messages
/// are spread evenly (64 s of them at the default precision).
const GROUP: i64 = 64;
/// Messages of one slot kept in the group's list; beyond it, a count per offset.
pub(super) const DENSE_AT: usize = 2048;

#[derive(Default)]
struct Group {
    /// `(slot mod GROUP) << 16 | offset`, sorted, one entry per message.
    list: Vec<u32>,
    /// Crowded slots: (slot mod GROUP, count per offset, their sum).
    dense: Vec<(u32, Box<[u32]>, u64)>,
}

pub(super) struct Offsets {
    precision: usize,
    groups: FxHashMap<i64, Group>,
}

fn split(slot: i64) -> (i64, u32) {
    (slot.div_euclid(GROUP), slot.rem_euclid(GROUP) as u32)
}

/// The list range of slot `lo` in a group's list.
fn run(list: &[u32], lo: u32) -> (usize, usize) {
    (list.partition_point(|&k| k < lo << 16), list.partition_point(|&k| k < (lo + 1) << 16))
}

impl Offsets {
    pub(super) fn new(precision: usize) -> Self {
        assert!(precision <= 1 << 16, "offsets are 16 bits");
        Self { precision, groups: FxHashMap::default() }
    }

    /// Adds `delta` messages at `offset` of `slot` (negative: removes); returns how many were
    /// added or (negative) removed.
    pub(super) fn add(&mut self, slot: i64, offset: u16, delta: i64) -> i64 {
        let (g, lo) = split(slot);
        let group = self.groups.entry(g).or_default();
        let key = lo << 16 | offset as u32;
        if delta > 0 && !group.dense.iter().any(|d| d.0 == lo) {
            let (a, b) = run(&group.list, lo);
            if b - a + delta as usize > DENSE_AT {
                let mut counts = vec![0u32; self.precision].into_boxed_slice();
                group.list.drain(a..b).for_each(|k| counts[(k & 0xFFFF) as usize] += 1);
                group.dense.push((lo, counts, (b - a) as u64));
            }
        }
        let applied = match group.dense.iter().position(|d| d.0 == lo) {
            Some(i) => {
                let (_, counts, sum) = &mut group.dense[i];
                let c = &mut counts[offset as usize];
                let applied = if delta > 0 { delta } else { -(*c as i64).min(-delta) };
                *c = (*c as i64 + applied) as u32;
                *sum = (*sum as i64 + applied) as u64;
                if *sum == 0 {
                    group.dense.swap_remove(i);
                }
                applied
            }
            None if delta > 0 => {
                let at = group.list.partition_point(|&k| k < key);
                group.list.splice(at..at, std::iter::repeat_n(key, delta as usize));
                delta
            }
            None => {
                let at = group.list.partition_point(|&k| k < key);
                let there = group.list[at..].partition_point(|&k| k == key) as i64;
                let n = there.min(-delta);
                group.list.drain(at..at + n as usize);
                -n
            }
        };
        if group.list.is_empty() && group.dense.is_empty() {
            self.groups.remove(&g);
        }
        applied
    }

    /// Messages of `slot` whose offset is below `cut`.
    pub(super) fn before(&self, slot: i64, cut: usize) -> i64 {
        let (g, lo) = split(slot);
        let Some(group) = self.groups.get(&g) else { return 0 };
        if let Some((_, counts, _)) = group.dense.iter().find(|d| d.0 == lo) {
            return counts[..cut.min(self.precision)].iter().map(|&c| c as i64).sum();
        }
        let (a, _) = run(&group.list, lo);
        let cut_key = (lo << 16) + cut.min(1 << 16) as u32;
        (group.list.partition_point(|&k| k < cut_key) - a) as i64
    }

    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// Whether `slot` is kept as counts per offset (tests).
    #[cfg(test)]
    pub(super) fn is_dense(&self, slot: i64) -> bool {
        let (g, lo) = split(slot);
        self.groups.get(&g).is_some_and(|gr| gr.dense.iter().any(|d| d.0 == lo))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neighbouring_slots_share_a_group_but_not_counts() {
        let mut o = Offsets::new(1000);
        for (slot, off) in [(63, 999), (64, 0), (64, 5), (65, 0), (-1, 3), (0, 0)] {
            assert_eq!(o.add(slot, off, 1), 1);
        }
        assert_eq!(o.before(64, 1000), 2);
        assert_eq!(o.before(64, 5), 1);
        assert_eq!(o.before(64, 0), 0);
        assert_eq!(o.before(63, 999), 0);
        assert_eq!(o.before(63, 1000), 1);
        assert_eq!(o.before(-1, 4), 1);
        assert_eq!(o.add(64, 7, -1), 0, "nothing at offset 7");
        assert_eq!(o.add(64, 5, -3), -1, "only one was there");
        for (slot, off) in [(63, 999), (64, 0), (65, 0), (-1, 3), (0, 0)] {
            assert_eq!(o.add(slot, off, -1), -1);
        }
        assert!(o.is_empty());
    }
}
