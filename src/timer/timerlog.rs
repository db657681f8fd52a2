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
//!
//! Reclamation ([`TimerLog::reclaim_front`]): the first segment is deleted once every unit in
//! it belongs to a slot that closed before the last checkpoint's read time, and the checkpoint
//! is past its end: then no slot that can still be read, no recovery and no rebuild ever reads
//! it again (a slot's chain holds only units of that slot's time). Its end is first recorded,
//! durably, in `timer/timerlog/start` (magic `u32`, start `u64`, CRC32C `u32`), so start-up
//! knows the segments below it were reclaimed, not lost; a missing or corrupt file means
//! start 0 (a set that does not begin there is rebuilt, as any damaged index).

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

const START_MAGIC: u32 = 0xC41E_5747;
const START_LEN: usize = 16;

pub struct TimerLog {
    segs: SegmentSet,
    /// The first segment's base and the latest slot time of its units, once computed (units
    /// are immutable, so the scan is done once per segment).
    front: parking_lot::Mutex<Option<(u64, i64)>>,
    /// Everything below was reclaimed (the `start` file).
    start: AtomicU64,
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
        crate::store::fsio::create_dir_all(dir)?;
        let start = match read_start(&dir.join("start")) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "timer-log start unreadable; taking it as 0");
                0
            }
        };
        let start = start / seg * seg;
        let (segs, removed) = SegmentSet::open_rebuildable_from(dir, seg, start)?;
        let log = Self {
            segs,
            front: parking_lot::Mutex::new(None),
            start: AtomicU64::new(start),
            write_pos: AtomicU64::new(0),
            flushed: AtomicU64::new(0),
        };
        Ok((log, removed))
    }

    /// Deletes the first segments while each lies wholly below `below` (the last checkpoint's
    /// timer-log position) and holds only units of slots before `closed_before` (its read
    /// time); never the last segment. Returns the segments and bytes deleted.
    pub fn reclaim_front(&self, below: u64, closed_before: i64) -> io::Result<(u64, u64)> {
        let (mut n, mut bytes) = (0, 0);
        while let Some(seg) = self.segs.first() {
            if seg.end() > below || self.segs.last().is_some_and(|l| l.base == seg.base) {
                break;
            }
            let latest = {
                let mut front = self.front.lock();
                match *front {
                    Some((base, latest)) if base == seg.base => latest,
                    _ => {
                        let latest = (seg.base..seg.end())
                            .step_by(UNIT_LEN)
                            .filter_map(|pos| self.read(pos))
                            .map(|u| u.slot_time)
                            .max()
                            .unwrap_or(i64::MIN);
                        *front = Some((seg.base, latest));
                        latest
                    }
                }
            };
            if latest >= closed_before {
                break;
            }
            write_start(&self.segs.dir().join("start"), seg.end())?;
            self.start.store(seg.end(), Ordering::Release);
            match self.segs.remove_first_below(seg.end())? {
                Some((_, size)) => {
                    n += 1;
                    bytes += size;
                }
                None => break,
            }
        }
        Ok((n, bytes))
    }

    /// Segments on disk.
    pub fn segments(&self) -> u64 {
        self.segs.all().len() as u64
    }

    pub fn write_pos(&self) -> u64 {
        self.write_pos.load(Ordering::Acquire)
    }

    /// Recovery: validates units from `from` (a unit boundary known durable) to the first
    /// invalid one, zeroes the rest, and calls `visit(pos, unit)` for each valid unit after
    /// `from`. Units before `from` are trusted (they were flushed before the checkpoint).
    pub fn recover(&mut self, from: u64, mut visit: impl FnMut(u64, &Unit)) -> io::Result<u64> {
        let seg_size = self.segs.segment_size();
        // Nothing is ever written again below the reclaimed start (even if every segment was
        // found damaged and removed).
        let from = from.max(self.start.load(Ordering::Acquire));
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

fn read_start(path: &Path) -> io::Result<u64> {
    let b = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut g = Get::new(&b);
    let valid = b.len() == START_LEN && g.u32() == START_MAGIC;
    let start = if valid { g.u64() } else { 0 };
    if valid && g.crc_ok() {
        Ok(start)
    } else {
        Err(io::Error::new(io::ErrorKind::InvalidData, format!("{} is corrupt", path.display())))
    }
}

fn write_start(path: &Path, start: u64) -> io::Result<()> {
    let mut b = [0u8; START_LEN];
    Put::new(&mut b).u32(START_MAGIC).u64(start).crc();
    crate::store::atomic_file::replace(path, &b)
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

    #[test]
    fn front_segments_of_closed_slots_are_reclaimed_and_stay_reclaimed_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = TimerLog::open(dir.path(), 4).unwrap();
        // Four segments of four units; unit i is in slot 1000 * i, except one late slot in
        // the second segment.
        for i in 0..16u64 {
            let slot = if i == 5 { 99_000 } else { 1000 * i as i64 };
            log.append(&Unit { slot_time: slot, ..unit(i) }).unwrap();
        }
        log.flush(log.write_pos()).unwrap();
        assert_eq!(log.reclaim_front(16 * 64, 3_000).unwrap(), (0, 0), "slot 3000 of the first is still open");
        assert_eq!(log.reclaim_front(2 * 64, 50_000).unwrap(), (0, 0), "the checkpoint is inside the first");
        assert_eq!(log.reclaim_front(16 * 64, 50_000).unwrap(), (1, 4 * 64), "the second holds slot 99000");
        assert_eq!(log.read(0), None);
        assert_eq!(log.read(4 * 64).map(|u| u.sys_offset), Some(4));
        assert_eq!(log.reclaim_front(16 * 64, i64::MAX).unwrap(), (2, 8 * 64), "never the last");
        assert_eq!(log.segments(), 1);
        drop(log);
        // A restart: the start says the missing segments were reclaimed, not lost.
        let (mut log, removed) = TimerLog::open(dir.path(), 4).unwrap();
        assert!(removed.is_empty(), "{removed:?}");
        assert_eq!(log.recover(0, |_, _| {}).unwrap(), 16 * 64);
        assert_eq!(log.append(&unit(16)).unwrap(), 16 * 64);
        drop(log);
        // A corrupt start file: the set no longer starts where it should, so it is rebuilt.
        std::fs::write(dir.path().join("start"), b"junk").unwrap();
        let (_, removed) = TimerLog::open(dir.path(), 4).unwrap();
        assert_eq!(removed.len(), 2, "{removed:?}");
    }
}
