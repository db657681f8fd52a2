//! The timer wheel: one mapped file of fixed slots, each the head of a linked list of units in
//! the timer log.
//!
//! On disk: `timer/wheel`, a 4 KiB header then `slots` slots of 32 bytes (four little-endian
//! u64 words), 38.7 MB at the default 1,209,600 slots:
//!
//! ```text
//! header: magic u64 | version u64 | slots u64 | precision_ms u64 | rest zero
//! slot:   time i64 (slot time; 0 = never used) | first u64 (pos + 1) | last u64 (pos + 1) | count u64
//! ```
//!
//! The wheel has no checksum of its own: it is an index over the timer log, whose units are
//! checksummed. Recovery cross-checks every slot still to fire against the log
//! ([`Wheel::slot_consistent`]) and rebuilds the wheel if one disagrees.
//!
//! A slot whose stored time differs from the slot time asked for is stale (left from an earlier
//! turn of the wheel) and reads as empty; linking into it starts a new list. Slots are never
//! cleared after firing: staleness does it.
//!
//! Flushing writes only what changed: every update marks its 4 KiB page in a dirty bitmap, and
//! [`Wheel::flush`] msyncs the marked pages, coalescing neighbours, so its cost follows the
//! number of dirty slots rather than the size of the wheel (RocketMQ compares all 38.7 MB).
//!
//! The words are atomics (`store::mmap::AtomicMap`), so reading while another thread updates
//! is sound; callers serialise updates (the engine's wheel lock).

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use super::slot::Geometry;
use super::timerlog::Unit;
use crate::store::mmap::AtomicMap;

const HEADER: usize = 4096;
const PAGE: usize = 4096;
const SLOT_WORDS: usize = 4;
const MAGIC: u64 = 0xC41E_3EE1_0000_0001;
const VERSION: u64 = 1;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Slot {
    pub time: i64,
    /// Position + 1 of the first and last unit (0 = none).
    pub first: u64,
    pub last: u64,
    pub count: u64,
}

pub struct Wheel {
    map: AtomicMap,
    geo: Geometry,
    /// One bit per 4 KiB page of the file.
    dirty: Vec<AtomicU64>,
}

impl Wheel {
    /// Opens or creates the wheel. Returns `(wheel, fresh)`: `fresh` is true if the file was
    /// created, or reset because its geometry differs from `geo` (the caller then rebuilds it
    /// from the timer log).
    pub fn open(path: &Path, geo: Geometry) -> io::Result<(Self, bool)> {
        let len = HEADER + geo.slots as usize * SLOT_WORDS * 8;
        // A creation a crash interrupted (`fsio::create_allocated`): the wheel is rebuilt.
        let _ = std::fs::remove_file(crate::store::fsio::tmp_path(path));
        let (map, mut fresh) = match AtomicMap::open_or_create(path, len) {
            Ok(x) => x,
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                tracing::warn!(path = %path.display(), "wheel has another size; recreating it");
                std::fs::remove_file(path)?;
                AtomicMap::open_or_create(path, len)?
            }
            Err(e) => return Err(e),
        };
        let pages = len.div_ceil(PAGE);
        let dirty = (0..pages.div_ceil(64)).map(|_| AtomicU64::new(0)).collect();
        let wheel = Self { map, geo, dirty };
        let w = wheel.map.words();
        let header_ok = w[0].load(Ordering::Acquire) == MAGIC
            && w[1].load(Ordering::Acquire) == VERSION
            && w[2].load(Ordering::Acquire) == geo.slots
            && w[3].load(Ordering::Acquire) == geo.precision_ms as u64;
        if !header_ok {
            if fresh {
                // A new file is already zero (fallocate): only the header needs writing.
                wheel.write_header();
            } else {
                tracing::warn!(path = %path.display(), "wheel header does not match; rebuilding");
                wheel.reset();
            }
            fresh = true;
        }
        Ok((wheel, fresh))
    }

    /// Zeroes every slot and writes the header (a rebuild).
    pub fn reset(&self) {
        for x in self.map.words().iter() {
            x.store(0, Ordering::Relaxed);
        }
        for d in &self.dirty {
            d.store(u64::MAX, Ordering::Relaxed);
        }
        self.write_header();
    }

    fn write_header(&self) {
        let w = self.map.words();
        w[0].store(MAGIC, Ordering::Relaxed);
        w[1].store(VERSION, Ordering::Relaxed);
        w[2].store(self.geo.slots, Ordering::Relaxed);
        w[3].store(self.geo.precision_ms as u64, Ordering::Release);
        self.dirty[0].fetch_or(1, Ordering::Relaxed);
    }

    fn words(&self, s: i64) -> &[AtomicU64] {
        let at = HEADER / 8 + self.geo.index(s) * SLOT_WORDS;
        &self.map.words()[at..at + SLOT_WORDS]
    }

    fn mark(&self, s: i64) {
        let page = (HEADER + self.geo.index(s) * SLOT_WORDS * 8) / PAGE;
        self.dirty[page / 64].fetch_or(1 << (page % 64), Ordering::Relaxed);
    }

    /// The slot for slot time `s` (empty if the stored one is stale).
    pub fn get(&self, s: i64) -> Slot {
        let w = self.words(s);
        let time = w[0].load(Ordering::Acquire) as i64;
        if time != s {
            return Slot::default();
        }
        Slot {
            time,
            first: w[1].load(Ordering::Acquire),
            last: w[2].load(Ordering::Acquire),
            count: w[3].load(Ordering::Acquire),
        }
    }

    /// Links the unit at `pos` as the new last of slot `s`. The caller wrote the unit with
    /// `prev = get(s).last` beforehand.
    pub fn link(&self, s: i64, pos: u64) {
        let cur = self.get(s);
        let w = self.words(s);
        if cur.time != s {
            w[1].store(pos + 1, Ordering::Relaxed);
            w[3].store(0, Ordering::Relaxed);
        }
        w[2].store(pos + 1, Ordering::Relaxed);
        w[3].store(cur.count + 1, Ordering::Relaxed);
        w[0].store(s as u64, Ordering::Release);
        self.mark(s);
    }

    /// Every used slot, for recovery's consistency check (a full scan: start-up only).
    pub fn for_each_used(&self, mut f: impl FnMut(usize, Slot)) {
        let w = self.map.words();
        for i in 0..self.geo.slots as usize {
            let at = HEADER / 8 + i * SLOT_WORDS;
            let time = w[at].load(Ordering::Acquire) as i64;
            if time != 0 {
                let slot = Slot {
                    time,
                    first: w[at + 1].load(Ordering::Acquire),
                    last: w[at + 2].load(Ordering::Acquire),
                    count: w[at + 3].load(Ordering::Acquire),
                };
                f(i, slot);
            }
        }
    }

    /// See [`slot_consistent`].
    pub fn slot_consistent(&self, index: usize, s: &Slot, read: impl Fn(u64) -> Option<Unit>) -> bool {
        slot_consistent(self.geo, index, s, read)
    }

    /// Msyncs the pages changed since the last flush; returns how many pages were dirty.
    ///
    /// Each `msync(MS_SYNC)` also flushes the disk's cache, so many scattered runs of dirty
    /// pages cost one cache flush each. Up to `MAX_RUNS` runs are synced one by one; beyond that
    /// one msync covers the span from the first to the last dirty page (the kernel writes only
    /// the pages that are dirty in it).
    pub fn flush(&self) -> io::Result<usize> {
        const MAX_RUNS: usize = 8;
        let mut pages = 0;
        let mut runs: Vec<(usize, usize)> = Vec::new();
        for (wi, word) in self.dirty.iter().enumerate() {
            let mut bits = word.swap(0, Ordering::AcqRel);
            while bits != 0 {
                let page = wi * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                pages += 1;
                match runs.last_mut() {
                    Some((_, z)) if *z == page => *z = page + 1,
                    _ => runs.push((page, page + 1)),
                }
            }
        }
        if runs.len() > MAX_RUNS {
            let (a, z) = (runs[0].0, runs[runs.len() - 1].1);
            self.map.flush_range(a * PAGE, z * PAGE)?;
        } else {
            for (a, z) in runs {
                self.map.flush_range(a * PAGE, z * PAGE)?;
            }
        }
        Ok(pages)
    }

    pub fn geometry(&self) -> Geometry {
        self.geo
    }
}

/// Whether the time stored in used slot `index` is a slot time that lives at `index`: true of
/// every slot ever linked, stale or not, and false after any single flipped bit of the time
/// (no power of two is a multiple of `precision × slots` unless both are powers of two).
pub fn slot_time_fits(geo: Geometry, index: usize, s: &Slot) -> bool {
    s.time.rem_euclid(geo.precision_ms) == 0 && geo.index(s.time) == index
}

/// Whether used slot `index` agrees with the timer log: its time is a slot time that lives
/// at `index`, and walking its list from `last` through `prev` meets exactly `count` valid
/// units (`read` checks their CRC) of this slot at strictly decreasing positions, ending at
/// `first` with `prev = 0`. A flipped bit in any of the four words fails this.
pub fn slot_consistent(geo: Geometry, index: usize, s: &Slot, read: impl Fn(u64) -> Option<Unit>) -> bool {
    if !slot_time_fits(geo, index, s) {
        return false;
    }
    let mut pos1 = s.last;
    let mut n = 0u64;
    while pos1 != 0 && n < s.count {
        let Some(u) = read(pos1 - 1) else { return false };
        if u.slot_time != s.time {
            return false;
        }
        n += 1;
        if u.prev == 0 {
            return pos1 == s.first && n == s.count;
        }
        if u.prev >= pos1 {
            return false;
        }
        pos1 = u.prev;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_single_bit_flip_of_a_slot_is_detected() {
        let geo = Geometry::new(1000, 7200);
        let unit = |prev: u64, slot_time: i64| Unit { prev, slot_time, deliver_at: slot_time + 7, ..Unit::default() };
        // Three units of slot 5000 at positions 0, 128, 192, and one of another slot at 64.
        let log = [unit(0, 5000), unit(0, 9000), unit(1, 5000), unit(129, 5000)];
        let read = |pos: u64| pos.is_multiple_of(64).then(|| log.get(pos as usize / 64).copied()).flatten();
        let good = Slot { time: 5000, first: 1, last: 193, count: 3 };
        let index = geo.index(5000);
        assert!(slot_consistent(geo, index, &good, read));
        assert!(slot_time_fits(geo, index, &good));
        assert!(!slot_consistent(geo, index + 1, &good, read), "wrong index");
        for word in 0..4 {
            for bit in 0..64 {
                let mut w = [good.time as u64, good.first, good.last, good.count];
                w[word] ^= 1 << bit;
                let bad = Slot { time: w[0] as i64, first: w[1], last: w[2], count: w[3] };
                assert!(!slot_consistent(geo, index, &bad, read), "word {word} bit {bit} undetected");
                if word == 0 {
                    assert!(!slot_time_fits(geo, index, &bad), "time bit {bit} fits");
                }
            }
        }
    }

    #[test]
    fn link_get_stale_and_persist() {
        let dir = tempfile::tempdir().unwrap();
        let geo = Geometry::new(1000, 16);
        let p = dir.path().join("wheel");
        let (w, fresh) = Wheel::open(&p, geo).unwrap();
        assert!(fresh);
        assert_eq!(w.get(5000), Slot::default());
        w.link(5000, 0);
        w.link(5000, 64);
        assert_eq!(w.get(5000), Slot { time: 5000, first: 1, last: 65, count: 2 });
        // Same index one turn later: stale, reads empty; linking starts over.
        let later = 5000 + geo.span_ms();
        assert_eq!(w.get(later), Slot::default());
        w.link(later, 128);
        assert_eq!(w.get(later), Slot { time: later, first: 129, last: 129, count: 1 });
        assert_eq!(w.get(5000), Slot::default(), "overwritten by the later turn");
        assert!(w.flush().unwrap() >= 1);
        assert_eq!(w.flush().unwrap(), 0, "nothing dirty after a flush");
        drop(w);
        let (w, fresh) = Wheel::open(&p, geo).unwrap();
        assert!(!fresh);
        assert_eq!(w.get(later).count, 1);
        drop(w);
        // Another geometry: recreated empty.
        let (w, fresh) = Wheel::open(&p, Geometry::new(500, 16)).unwrap();
        assert!(fresh);
        assert_eq!(w.get(later), Slot::default());
    }

    #[test]
    fn flush_cost_follows_dirty_slots() {
        let dir = tempfile::tempdir().unwrap();
        let geo = Geometry::new(1000, 1 << 16);
        let (w, _) = Wheel::open(&dir.path().join("wheel"), geo).unwrap();
        w.flush().unwrap();
        w.link(3000, 0);
        assert_eq!(w.flush().unwrap(), 1, "one slot, one page");
        for i in 0..300 {
            w.link(i * 1000, i as u64 * 64);
        }
        // 300 consecutive slots × 32 bytes = 9600 bytes: 3 pages (plus the header page border).
        assert!(w.flush().unwrap() <= 4);
    }
}
