//! The timer log: append-only units, one per message placed in the wheel (and one more each
//! time a far-future message rolls). Slots of the wheel point into it; each unit points back at
//! the previous unit of its slot, so a slot is a linked list through the log, as in RocketMQ.
//!
//! On disk: `timer/timerlog/{base:020}` segments (see `store::segments`) of fixed 64-byte
//! units, little-endian (RocketMQ's is 52 bytes; chime adds the exact deliver time, the slot,
//! the state-cell index and a checksum):
//!
//! ```text
//! offset size field
//!  0     8    prev          u64  position + 1 of the previous unit of the same slot (0 = none)
//!  8     8    deliver_at    i64  when the message becomes visible (ms)
//! 16     8    slot_time     i64  the slot this unit is linked into (≠ deliver slot for a roll)
//! 24     8    log_offset    u64  commit-log offset of the scheduled record (its body stays there)
//! 32     4    log_size      u32
//! 36     4    flags         u32  FLAG_ROLL: re-place the message when the slot fires
//! 40     8    sys_offset    u64  queue offset in the system topic = index of its state cell
//! 48     8    enqueued_ms   i64  when the unit was written
//! 56     4    magic         u32  UNIT_MAGIC
//! 60     4    crc           u32  CRC32C of bytes [0, 60)
//! ```
//!
//! Invariants: units are written in order by one writer (enqueue-put); a unit is immutable
//! once written; `prev` always points to an earlier position. Recovery keeps the longest
//! prefix of units whose CRC checks and zeroes the rest.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::codec::{Get, Put};
use crate::store::segments::SegmentSet;

pub const UNIT_LEN: usize = 64;
const UNIT_MAGIC: u32 = 0xC41E_7173;
pub const FLAG_ROLL: u32 = 1;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Unit {
    pub prev: u64,
    pub deliver_at: i64,
    pub slot_time: i64,
    pub log_offset: u64,
    pub log_size: u32,
    pub flags: u32,
    pub sys_offset: u64,
    pub enqueued_ms: i64,
}

impl Unit {
    pub fn is_roll(&self) -> bool {
        self.flags & FLAG_ROLL != 0
    }

    pub fn encode(&self) -> [u8; UNIT_LEN] {
        let mut b = [0u8; UNIT_LEN];
        let n = Put::new(&mut b)
            .u64(self.prev)
            .i64(self.deliver_at)
            .i64(self.slot_time)
            .u64(self.log_offset)
            .u32(self.log_size)
            .u32(self.flags)
            .u64(self.sys_offset)
            .i64(self.enqueued_ms)
            .u32(UNIT_MAGIC)
            .crc()
            .len();
        debug_assert_eq!(n, UNIT_LEN);
        b
    }

    /// `None` if the bytes are not a valid unit (torn, corrupt or never written).
    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() < UNIT_LEN {
            return None;
        }
        let mut g = Get::new(b);
        let unit = Self {
            prev: g.u64(),
            deliver_at: g.i64(),
            slot_time: g.i64(),
            log_offset: g.u64(),
            log_size: g.u32(),
            flags: g.u32(),
            sys_offset: g.u64(),
            enqueued_ms: g.i64(),
        };
        (g.u32() == UNIT_MAGIC && g.crc_ok()).then_some(unit)
    }
}

pub struct TimerLog {
    segs: SegmentSet,
    /// Next append position (bytes), published.
    write_pos: AtomicU64,
    flushed: AtomicU64,
}

impl TimerLog {
    /// Opens the log. Segments found short, empty or after a gap (a power cut on a file system
    /// that lost their size) are removed and listed in the second value: the caller re-places
    /// what they held from the system topic.
    pub fn open(dir: &Path, units_per_segment: u64) -> io::Result<(Self, Vec<String>)> {
        let seg = units_per_segment * UNIT_LEN as u64;
        let (segs, removed) = SegmentSet::open_rebuildable(dir, seg)?;
        Ok((Self { segs, write_pos: AtomicU64::new(0), flushed: AtomicU64::new(0) }, removed))
    }

    pub fn write_pos(&self) -> u64 {
        self.write_pos.load(Ordering::Acquire)
    }

    /// Recovery: validates units from `from` (a unit boundary known durable) to the first
    /// invalid one, zeroes the rest, and calls `visit(pos, unit)` for each valid unit after
    /// `from`. Units before `from` are trusted (they were flushed before the checkpoint).
    pub fn recover(&mut self, from: u64, mut visit: impl FnMut(u64, &Unit)) -> io::Result<u64> {
        let seg_size = self.segs.segment_size();
        let mut end = from;
        let mut stop = false;
        for seg in self.segs.segments_mut()? {
            if stop || seg.end() <= from {
                if !stop {
                    let len = seg.file.len();
                    seg.file.set_published(len);
                } else {
                    let n = dirty_units(seg.file.recovery_bytes(), 0);
                    seg.file.truncate(0, n);
                }
                continue;
            }
            let base = seg.base;
            let mut at = (end.max(base) - base) as usize;
            let bytes = seg.file.recovery_bytes();
            while at + UNIT_LEN <= bytes.len() {
                match Unit::decode(&bytes[at..at + UNIT_LEN]) {
                    Some(u) => {
                        visit(base + at as u64, &u);
                        at += UNIT_LEN;
                    }
                    None => {
                        stop = true;
                        break;
                    }
                }
            }
            end = base + at as u64;
            if stop {
                let dirty = dirty_units(seg.file.recovery_bytes(), at);
                seg.file.truncate(at, dirty);
            } else {
                let len = seg.file.len();
                seg.file.set_published(len);
                debug_assert_eq!(end, base + seg_size);
            }
        }
        self.segs.remove_from(end + 1)?;
        self.write_pos.store(end, Ordering::Release);
        self.flushed.store(end, Ordering::Release);
        Ok(end)
    }

    /// Appends a unit (single writer); returns its position.
    pub fn append(&self, unit: &Unit) -> io::Result<u64> {
        let pos = self.write_pos.load(Ordering::Relaxed);
        let seg_size = self.segs.segment_size();
        let seg = match self.segs.find(pos) {
            Some(s) => s,
            None => self.segs.create(pos / seg_size * seg_size)?,
        };
        if !seg.file.append_at((pos - seg.base) as usize, &unit.encode()) {
            return Err(io::Error::other(format!("timer log refused a unit at {pos}")));
        }
        self.write_pos.store(pos + UNIT_LEN as u64, Ordering::Release);
        Ok(pos)
    }

    /// The unit at `pos`, if it is written and valid.
    pub fn read(&self, pos: u64) -> Option<Unit> {
        let seg = self.segs.find(pos)?;
        Unit::decode(seg.file.read((pos - seg.base) as usize, UNIT_LEN)?)
    }

    /// Every valid unit from `from` on, in order (for rebuilding the wheel).
    pub fn scan(&self, from: u64, mut visit: impl FnMut(u64, &Unit)) {
        let end = self.write_pos();
        let mut pos = from;
        while pos < end {
            if let Some(u) = self.read(pos) {
                visit(pos, &u);
            }
            pos += UNIT_LEN as u64;
        }
    }

    /// First position still on disk.
    pub fn min_pos(&self) -> u64 {
        self.segs.first().map_or(0, |s| s.base)
    }

    pub fn flush(&self, upto: u64) -> io::Result<()> {
        let from = self.flushed.load(Ordering::Acquire);
        if upto <= from {
            return Ok(());
        }
        self.segs.flush_range(from, upto)?;
        self.flushed.fetch_max(upto, Ordering::AcqRel);
        Ok(())
    }
}

/// End of the non-zero units from `at` (torn or stale bytes to zero).
fn dirty_units(bytes: &[u8], mut at: usize) -> usize {
    let mut end = at;
    while at + UNIT_LEN <= bytes.len() {
        if bytes[at..at + UNIT_LEN].iter().any(|&b| b != 0) {
            end = at + UNIT_LEN;
        } else {
            break;
        }
        at += UNIT_LEN;
    }
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(i: u64) -> Unit {
        Unit {
            prev: i,
            deliver_at: 1_000 + i as i64,
            slot_time: 1_000,
            log_offset: i * 100,
            log_size: 100,
            flags: (i % 2) as u32,
            sys_offset: i,
            enqueued_ms: 5,
        }
    }

    #[test]
    fn unit_round_trip_and_corruption() {
        let u = unit(7);
        let b = u.encode();
        assert_eq!(Unit::decode(&b), Some(u));
        assert!(u.is_roll());
        assert_eq!(Unit::decode(&[0u8; UNIT_LEN]), None, "zeros are not a unit");
        for i in 0..UNIT_LEN {
            let mut c = b;
            c[i] ^= 0x01;
            assert_eq!(Unit::decode(&c), None, "flip at {i}");
        }
        assert_eq!(Unit::decode(&b[..63]), None);
    }

    #[test]
    fn append_read_recover_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = TimerLog::open(dir.path(), 4).unwrap();
        for i in 0..10 {
            assert_eq!(log.append(&unit(i)).unwrap(), i * UNIT_LEN as u64);
        }
        assert_eq!(log.read(9 * 64), Some(unit(9)));
        log.flush(log.write_pos()).unwrap();
        drop(log);
        // Tear unit 8 (third segment, second unit).
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(dir.path().join(format!("{:020}", 512))).unwrap();
        f.write_all_at(&[0xFF; 3], 10).unwrap();
        drop(f);
        let (mut log, _) = TimerLog::open(dir.path(), 4).unwrap();
        let mut seen = Vec::new();
        let end = log.recover(2 * 64, |pos, u| seen.push((pos, u.sys_offset))).unwrap();
        assert_eq!(end, 8 * 64, "cut at the torn unit");
        assert_eq!(seen, (2..8).map(|i| (i * 64, i)).collect::<Vec<_>>());
        assert_eq!(log.read(9 * 64), None, "units after the tear are gone");
        assert_eq!(log.append(&unit(42)).unwrap(), 8 * 64);
        assert_eq!(log.read(8 * 64), Some(unit(42)));
    }
}
