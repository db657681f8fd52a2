//! Consume queues: per topic and queue id, the index from queue offset to commit-log record.
//!
//! On disk: `consumequeue/{topic}/{queue_id}/` holds segments (named by byte base offset, see
//! `segments`) of fixed 20-byte entries, little-endian:
//!
//! ```text
//! offset size field
//!  0     8    log_offset  u64  commit-log offset of the record
//!  8     4    size        u32  record length (never 0: a zero entry means "not written")
//! 12     8    tag_hash    u64  hash of the tag (0 = no tag), to filter without reading the log
//! ```
//!
//! An entry for a message the timer stored ahead of its time (`record::FLAG_STAGED`) points at
//! the *publish* record that made it visible instead, and its `size` is `STAGED_ENTRY | i`:
//! the message is the `i`-th the publish record names (`CqEntry::published_index`).
//!
//! Entry `i` lives at byte `i * 20`; a segment holds a whole number of entries. Entries are
//! written in queue-offset order by the store's single appender, so the written entries form a
//! prefix. A consume queue is an index, not a source of truth: it is not checksummed, recovery
//! rebuilds any entry after the checkpoint from the commit log (every entry, if a segment was
//! found short, empty or missing), and readers verify the record they reach (its CRC, topic,
//! queue id and queue offset).

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use super::segments::SegmentSet;
use crate::codec::{Get, Put};

pub const ENTRY_LEN: usize = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CqEntry {
    pub log_offset: u64,
    pub size: u32,
    pub tag_hash: u64,
}

/// The top bit of `size`: the entry names the `i`-th message of a publish record.
pub const STAGED_ENTRY: u32 = 1 << 31;

impl CqEntry {
    /// The entry of the `i`-th message the publish record at `publish_offset` names.
    pub fn published(publish_offset: u64, i: usize, tag_hash: u64) -> Self {
        CqEntry { log_offset: publish_offset, size: STAGED_ENTRY | i as u32, tag_hash }
    }

    /// For an entry of a published message: its index in the publish record at `log_offset`.
    pub fn published_index(&self) -> Option<usize> {
        (self.size & STAGED_ENTRY != 0).then_some((self.size & !STAGED_ENTRY) as usize)
    }

    pub fn encode(&self) -> [u8; ENTRY_LEN] {
        let mut b = [0u8; ENTRY_LEN];
        Put::new(&mut b).u64(self.log_offset).u32(self.size).u64(self.tag_hash);
        b
    }

    /// The entry in the first 20 bytes of `b`; `None` if `b` is shorter or the entry is unwritten.
    pub fn decode(b: &[u8]) -> Option<Self> {
        let mut g = Get::new(b.get(..ENTRY_LEN)?);
        let e = Self { log_offset: g.u64(), size: g.u32(), tag_hash: g.u64() };
        (e.size != 0).then_some(e)
    }
}

/// Hash of a tag for the consume queue (FNV-1a, 64 bits); 0 is reserved for "no tag".
pub fn tag_hash(tag: Option<&str>) -> u64 {
    let Some(tag) = tag else { return 0 };
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in tag.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h.max(1)
}

pub struct ConsumeQueue {
    segs: SegmentSet,
    /// Number of published entries (the next queue offset).
    next: AtomicU64,
    /// Entries below this are durable.
    flushed: AtomicU64,
    /// Segments found short, empty or after a gap when opened, and removed (recovery rebuilds
    /// their entries from the commit log).
    removed: Vec<String>,
    /// Entries below this were reclaimed (persisted in `topics.json`).
    start: AtomicU64,
}

impl ConsumeQueue {
    /// Opens the queue whose entries below `start` were reclaimed (0: none).
    pub fn open(dir: &Path, entries_per_segment: u32, start: u64) -> io::Result<Self> {
        let seg_size = u64::from(entries_per_segment) * ENTRY_LEN as u64;
        let (segs, removed) = SegmentSet::open_rebuildable_from(dir, seg_size, start * ENTRY_LEN as u64)?;
        Ok(Self {
            segs,
            next: AtomicU64::new(start),
            flushed: AtomicU64::new(0),
            removed,
            start: AtomicU64::new(start),
        })
    }

    /// The first entry still on disk: entries below it were reclaimed with their records.
    pub fn start(&self) -> u64 {
        self.start.load(Ordering::Acquire)
    }

    /// Where the queue would start if its first segment went: `Some` if that segment is not
    /// the last and its last entry points below `log_below` (entries are in log order, so
    /// every record it indexes was reclaimed).
    pub fn reclaimable_front(&self, log_below: u64) -> Option<u64> {
        let first = self.segs.first()?;
        let end = first.end() / ENTRY_LEN as u64;
        if end > self.next() || self.segs.last().is_some_and(|l| l.base == first.base) {
            return None;
        }
        let e = self.get(end - 1)?;
        (e.log_offset < log_below).then_some(end)
    }

    /// Sets the start recorded for the queue (the registry writes it to `topics.json`).
    pub(super) fn set_start(&self, start: u64) {
        self.start.store(start, Ordering::Release);
    }

    /// Deletes the first segment once the start past it is durable (see
    /// [`ConsumeQueue::reclaimable_front`]); returns its size.
    pub fn reclaim_front(&self, new_start: u64) -> io::Result<Option<u64>> {
        Ok(self.segs.remove_first_below(new_start * ENTRY_LEN as u64)?.map(|(_, len)| len))
    }

    /// The damaged segments removed when the queue was opened (see [`SegmentSet::open_rebuildable`]).
    pub fn removed_segments(&self) -> &[String] {
        &self.removed
    }

    /// Whether the queue has any segment (a queue of an existing topic always has its first:
    /// it is created with the topic).
    pub fn has_segments(&self) -> bool {
        self.segs.first().is_some()
    }

    /// Number of entries (the queue offset the next message gets).
    pub fn next(&self) -> u64 {
        self.next.load(Ordering::Acquire)
    }

    /// Recovery, step 1: finds the written prefix and drops entries that point at or past
    /// `log_end` (records cut from the commit log). Returns the number of entries kept.
    pub fn recover(&mut self, log_end: u64) -> io::Result<u64> {
        let mut next = *self.start.get_mut();
        for seg in self.segs.segments_mut()? {
            let base_idx = seg.base / ENTRY_LEN as u64;
            let bytes = seg.file.recovery_bytes();
            let mut n = 0usize;
            while n * ENTRY_LEN < bytes.len() {
                match CqEntry::decode(&bytes[n * ENTRY_LEN..(n + 1) * ENTRY_LEN]) {
                    Some(e) if e.log_offset < log_end => n += 1,
                    _ => break,
                }
            }
            let keep = n * ENTRY_LEN;
            // Zero any dropped or torn entries after the prefix (up to the first zero entry).
            let mut dirty = keep;
            while dirty < bytes.len() && bytes[dirty..dirty + ENTRY_LEN].iter().any(|&b| b != 0) {
                dirty += ENTRY_LEN;
            }
            seg.file.truncate(keep, dirty);
            if n > 0 {
                next = base_idx + n as u64;
            }
        }
        *self.next.get_mut() = next;
        // Found in the page cache perhaps (after a crash) and rebuilt next: nothing is known
        // durable, so the first flush covers every entry before the store checkpoint claims them.
        *self.flushed.get_mut() = 0;
        Ok(next)
    }

    /// Recovery, step 2: ensures entry `index` is `entry` (replaying the commit log after the
    /// checkpoint). Entries are replayed in order, so `index` is at most `next`.
    pub fn recover_put(&mut self, index: u64, entry: CqEntry) -> io::Result<()> {
        let next = *self.next.get_mut();
        if index < next {
            if self.get(index) == Some(entry) {
                return Ok(());
            }
            let pos = index * ENTRY_LEN as u64;
            let seg_size = self.segs.segment_size();
            for seg in self.segs.segments_mut()? {
                if seg.base == pos / seg_size * seg_size {
                    seg.file.overwrite((pos - seg.base) as usize, &entry.encode());
                }
            }
            return Ok(());
        }
        self.put(index, entry)
    }

    /// Entries per index segment.
    pub fn segment_entries(&self) -> u64 {
        self.segs.segment_size() / ENTRY_LEN as u64
    }

    /// Creates ahead of time the segments that entries `[from, from + n)` need.
    pub fn prepare(&self, from: u64, n: u64) -> io::Result<()> {
        let seg_size = self.segs.segment_size();
        let (a, b) = (from * ENTRY_LEN as u64, (from + n) * ENTRY_LEN as u64);
        let mut base = a / seg_size * seg_size;
        while base < b {
            if self.segs.find(base).is_none() {
                // Fault the new file in now: its first write would otherwise zero it page by
                // page (with read-ahead, megabytes at a time) under the writer lock.
                let seg = self.segs.create(base)?;
                seg.file.prefault(0, seg.file.len())?;
            }
            base += seg_size;
        }
        Ok(())
    }

    /// Appends entry `index`, which must be `next()` (or beyond it in recovery), and publishes it.
    pub fn put(&self, index: u64, entry: CqEntry) -> io::Result<()> {
        self.write(index, entry)?;
        self.publish(index + 1);
        Ok(())
    }

    /// Publishes the entries written below `upto`: readers see them from now on.
    pub fn publish(&self, upto: u64) {
        self.next.fetch_max(upto, Ordering::AcqRel);
    }

    /// Writes `entries` from entry `first` on without publishing them (readers see them once
    /// [`Self::publish`] passes them), so a batch becomes visible whole: one copy per segment
    /// they fall in (a publish writes a thousand at once).
    pub fn write_run(&self, first: u64, entries: &[CqEntry]) -> io::Result<()> {
        let per_seg = self.segment_entries();
        let (mut at, mut rest) = (first, entries);
        let mut buf = Vec::with_capacity(rest.len().min(per_seg as usize) * ENTRY_LEN);
        while !rest.is_empty() {
            let room = (per_seg - at % per_seg) as usize;
            let (now, later) = rest.split_at(room.min(rest.len()));
            buf.clear();
            now.iter().for_each(|e| buf.extend_from_slice(&e.encode()));
            self.write_bytes(at, &buf)?;
            at += now.len() as u64;
            rest = later;
        }
        Ok(())
    }

    /// Writes entry `index` without publishing it ([`Self::write_run`] of one).
    pub fn write(&self, index: u64, entry: CqEntry) -> io::Result<()> {
        self.write_bytes(index, &entry.encode())
    }

    /// Copies encoded entries from entry `index` on into its segment (created if missing);
    /// they must not cross its end.
    fn write_bytes(&self, index: u64, bytes: &[u8]) -> io::Result<()> {
        let pos = index * ENTRY_LEN as u64;
        let seg = match self.segs.find(pos) {
            Some(seg) => seg,
            None => {
                let seg_size = self.segs.segment_size();
                self.segs.create(pos / seg_size * seg_size)?
            }
        };
        if !seg.file.append_at((pos - seg.base) as usize, bytes) {
            return Err(io::Error::other(format!("consume queue {} refused entry {index}", self.segs.dir().display())));
        }
        Ok(())
    }

    pub fn get(&self, index: u64) -> Option<CqEntry> {
        if index >= self.next() {
            return None;
        }
        let pos = index * ENTRY_LEN as u64;
        let seg = self.segs.find(pos)?;
        CqEntry::decode(seg.file.read((pos - seg.base) as usize, ENTRY_LEN)?)
    }

    /// Fsyncs the entries written since the last flush.
    pub fn flush(&self) -> io::Result<()> {
        let next = self.next();
        let from = self.flushed.load(Ordering::Acquire);
        if next <= from {
            return Ok(());
        }
        self.segs.flush_range(from * ENTRY_LEN as u64, next * ENTRY_LEN as u64)?;
        self.flushed.fetch_max(next, Ordering::AcqRel);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(i: u64) -> CqEntry {
        CqEntry { log_offset: i * 100, size: 100, tag_hash: tag_hash(Some("A")) }
    }

    #[test]
    fn put_get_across_segments_and_recover() {
        let dir = tempfile::tempdir().unwrap();
        let q = ConsumeQueue::open(dir.path(), 4, 0).unwrap();
        for i in 0..10 {
            q.put(i, e(i)).unwrap();
        }
        assert_eq!(q.next(), 10);
        assert_eq!(q.get(9), Some(e(9)));
        assert_eq!(q.get(10), None);
        q.flush().unwrap();
        drop(q);
        // Entries 7.. point past a log cut at offset 700.
        let mut q = ConsumeQueue::open(dir.path(), 4, 0).unwrap();
        assert_eq!(q.recover(700).unwrap(), 7);
        assert_eq!(q.get(6), Some(e(6)));
        assert_eq!(q.get(7), None);
        q.recover_put(7, e(7)).unwrap();
        q.recover_put(3, e(3)).unwrap();
        assert_eq!(q.next(), 8);
    }

    #[test]
    fn tag_hash_reserves_zero() {
        assert_eq!(tag_hash(None), 0);
        assert_ne!(tag_hash(Some("")), 0);
        assert_ne!(tag_hash(Some("A")), tag_hash(Some("B")));
    }
}
