//! The commit log: one append-only byte space of records (see `record`), split into segments.
//!
//! On disk: `commitlog/` holds the segments (`segments` names them by base offset). A message's
//! commit-log offset is its permanent address: message ids and consume-queue entries point at it.
//!
//! Invariants:
//! - One writer ([`LogWriter`], owned by the store's append lock) appends; any number of readers
//!   read records below the published write position.
//! - Records are contiguous within a segment; when a record does not fit, the rest of the segment
//!   is padded (a blank marker if at least 8 bytes remain) and the record starts the next segment.
//! - `flushed <= write_pos`; everything below `flushed` has been fsync'd, in offset order.
//! - Recovery keeps the longest prefix of valid records and drops an incomplete trailing batch;
//!   everything after it is zeroed, so stale bytes can never be mistaken for records later.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::record::{self, Decoded, Record, BLANK_MARKER_LEN, FLAG_BATCH, FLAG_BATCH_END};
use super::segments::{Segment, SegmentSet};

pub struct CommitLog {
    segs: SegmentSet,
    /// End of the last complete append (published to readers).
    write_pos: AtomicU64,
    /// Everything below this offset is durable.
    flushed: AtomicU64,
    /// Pages below this offset have been faulted in ahead of the appender.
    prefaulted: AtomicU64,
    /// Offset of the first byte still on disk: readers ask it for every record (a reclaimed
    /// one is skipped), so it is kept here rather than looked up in the segment list.
    min_offset: AtomicU64,
}

/// The single appender's position. Only the store's append lock holds one.
#[derive(Debug)]
pub struct LogWriter {
    pos: u64,
    current: Option<Arc<Segment>>,
}

impl LogWriter {
    pub fn pos(&self) -> u64 {
        self.pos
    }
}

/// A record read from the log; keeps its segment mapped while borrowed.
pub struct RecordRef {
    seg: Arc<Segment>,
    start: usize,
    len: usize,
}

impl RecordRef {
    pub fn bytes(&self) -> &[u8] {
        self.seg.file.read(self.start, self.len).expect("published when the ref was made")
    }

    /// Commit-log offset of the record.
    pub fn offset(&self) -> u64 {
        self.seg.base + self.start as u64
    }

    /// Checks the record (framing, checksum, layout) once; what it hands back is not checked
    /// again on its way through the read path.
    pub fn verify(self) -> Result<VerifiedRecord, record::RecordError> {
        match record::decode(self.bytes())? {
            Decoded::Message { .. } => Ok(VerifiedRecord(self)),
            _ => Err(record::RecordError::Malformed("not a message record")),
        }
    }

    /// This record, verified at this offset before by the caller (who remembers which offsets
    /// it verified: log bytes are never rewritten while the process runs).
    pub(super) fn assume_verified(self) -> VerifiedRecord {
        VerifiedRecord(self)
    }
}

/// A message record whose framing, checksum and layout were checked when it was read
/// ([`RecordRef::verify`]). Its bytes cannot change afterwards (published log bytes are never
/// rewritten while a segment is mapped), so [`VerifiedRecord::record`] parses the header again
/// without recomputing the checksum: a record is checked once per read path.
pub struct VerifiedRecord(RecordRef);

impl VerifiedRecord {
    pub fn record(&self) -> Record<'_> {
        record::parse(self.0.bytes()).expect("checked by RecordRef::verify; log bytes are immutable")
    }

    /// Commit-log offset of the record.
    pub fn offset(&self) -> u64 {
        self.0.offset()
    }

    /// The message id naming this record (its offset and checksum).
    pub fn id(&self) -> super::MessageId {
        super::MessageId { offset: self.offset(), crc: self.record().crc }
    }

    pub fn bytes(&self) -> &[u8] {
        self.0.bytes()
    }
}

/// What the recovery scan found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LogRecovery {
    /// Where the scan started (the checkpoint, or the first segment).
    pub scanned_from: u64,
    /// End of the valid log: the next append goes here.
    pub end: u64,
    /// Valid records scanned (and handed to the visitor).
    pub records: u64,
    /// Bytes after `end` that were zeroed (a torn write or an incomplete batch).
    pub truncated_bytes: u64,
    /// Why the scan stopped, if not at clean zeros.
    pub stop_reason: Option<String>,
    /// Segments deleted because they lay wholly after the valid end.
    pub removed_segments: usize,
}

impl CommitLog {
    pub fn open(dir: &Path, segment_size: u64) -> io::Result<Self> {
        let segs = SegmentSet::open(dir, segment_size)?;
        let min = segs.first().map_or(0, |s| s.base);
        Ok(Self {
            segs,
            write_pos: AtomicU64::new(0),
            flushed: AtomicU64::new(0),
            prefaulted: AtomicU64::new(0),
            min_offset: AtomicU64::new(min),
        })
    }

    pub fn segment_size(&self) -> u64 {
        self.segs.segment_size()
    }

    /// End of the published log.
    pub fn write_pos(&self) -> u64 {
        self.write_pos.load(Ordering::Acquire)
    }

    pub fn flushed(&self) -> u64 {
        self.flushed.load(Ordering::Acquire)
    }

    /// `(base, end)` of every segment, in order.
    pub fn segment_bounds(&self) -> Vec<(u64, u64)> {
        self.segs.all().iter().map(|s| (s.base, s.end())).collect()
    }

    /// Reclaims the first segment if it ends at or below `below` (never the one being written);
    /// returns its base and size. Its records are gone for good: callers have carried forward
    /// what must live on.
    pub fn reclaim_first(&self, below: u64) -> io::Result<Option<(u64, u64)>> {
        let got = self.segs.remove_first_below(below.min(self.write_pos()))?;
        if let Some((base, len)) = got {
            self.min_offset.fetch_max(base + len, Ordering::AcqRel);
        }
        Ok(got)
    }

    /// Offset of the first byte still on disk.
    pub fn min_offset(&self) -> u64 {
        self.min_offset.load(Ordering::Acquire)
    }

    /// Scans from `from` (a record boundary, normally the checkpoint) for the end of the valid
    /// log and cuts everything after it. Returns the writer that continues the log; then
    /// [`CommitLog::replay`] walks the valid records.
    pub fn recover(&mut self, from: u64) -> io::Result<(LogWriter, LogRecovery)> {
        let mut report = LogRecovery::default();
        let Some(first) = self.segs.first().map(|s| s.base) else {
            return Ok((LogWriter { pos: 0, current: None }, report));
        };
        let last_end = self.segs.last().map_or(first, |s| s.end());
        let from = if from < first || from > last_end { first } else { from };
        report.scanned_from = from;

        // Pass 1: find the end of the last complete record or batch.
        let (end, stop) = self.find_end(from)?;
        report.end = end;
        report.stop_reason = stop;

        // Cut: publish whole segments before `end`, zero what follows `end` in its segment,
        // delete the segments after it.
        let mut zeroed_to = end;
        for seg in self.segs.segments_mut()? {
            if seg.end() <= end {
                let len = seg.file.len();
                seg.file.set_published(len);
            } else if seg.base <= end {
                let at = (end - seg.base) as usize;
                let dirty_to = written_extent(seg.file.recovery_bytes(), at);
                report.truncated_bytes += (dirty_to - at) as u64;
                seg.file.truncate(at, dirty_to);
                zeroed_to = seg.base + dirty_to as u64;
            } else {
                report.truncated_bytes += written_extent(seg.file.recovery_bytes(), 0) as u64;
            }
        }
        report.removed_segments = self.segs.remove_from(end + 1)?;
        self.write_pos.store(end, Ordering::Release);
        // What was scanned may have been in the page cache alone (the previous process crashed
        // before its fsync), and the zeroing is a write too: make both durable before anything
        // counts on them (a sync send's wait, the timer settling a fire found in the tail).
        self.segs.flush_range(from, zeroed_to.max(end))?;
        self.flushed.store(end, Ordering::Release);

        let current = self.segs.find(end);
        Ok((LogWriter { pos: end, current }, report))
    }

    /// Calls `visit(offset, len, record)` for every valid record in `[from, end)`, in order;
    /// returns how many there were.
    pub fn replay(&self, from: u64, end: u64, mut visit: impl FnMut(u64, u32, &Record<'_>)) -> u64 {
        let mut n = 0;
        let mut pos = from;
        while pos < end {
            let Some(r) = self.read(pos) else {
                pos = self.next_segment(pos);
                continue;
            };
            match record::decode(r.bytes()) {
                Ok(Decoded::Message { record, len }) => {
                    visit(pos, len as u32, &record);
                    n += 1;
                    pos += len as u64;
                }
                _ => pos = self.next_segment(pos),
            }
        }
        n
    }

    fn next_segment(&self, pos: u64) -> u64 {
        let seg_size = self.segs.segment_size();
        (pos / seg_size + 1) * seg_size
    }

    /// Pass 1 of recovery: the end of the valid log at or after `from`, and why the scan
    /// stopped if it was not at clean zeros.
    fn find_end(&mut self, from: u64) -> io::Result<(u64, Option<String>)> {
        let seg_size = self.segs.segment_size();
        let mut end = from;
        let mut pos = from;
        // Start of an open batch: the end cannot move past it until the batch ends.
        let mut batch_start: Option<u64> = None;
        let mut stop = None;
        'segments: for seg in self.segs.segments_mut()?.into_iter().filter(|s| s.end() > from) {
            let base = seg.base;
            let expected = pos / seg_size * seg_size;
            if base != expected {
                stop = Some(format!("segment {expected} is missing (next is {base})"));
                break;
            }
            let bytes = seg.file.recovery_bytes();
            loop {
                let at = (pos - base) as usize;
                let rest = &bytes[at..];
                let decoded = if rest.len() < BLANK_MARKER_LEN && rest.iter().all(|&b| b == 0) {
                    Ok(Decoded::Blank)
                } else {
                    record::decode(rest)
                };
                match decoded {
                    Ok(Decoded::Message { record, len }) => {
                        let in_batch = record.flags & FLAG_BATCH != 0;
                        let batch_end = record.flags & FLAG_BATCH_END != 0;
                        if !in_batch && batch_start.is_some() {
                            stop = Some(format!("batch interrupted at offset {pos}"));
                            break 'segments;
                        }
                        if in_batch && batch_start.is_none() {
                            batch_start = Some(pos);
                        }
                        pos += len as u64;
                        if !in_batch || batch_end {
                            batch_start = None;
                            end = pos;
                        }
                    }
                    Ok(Decoded::Blank) => {
                        pos = base + seg_size;
                        if batch_start.is_none() {
                            end = pos;
                        }
                        continue 'segments;
                    }
                    Ok(Decoded::End) => break 'segments,
                    Err(e) => {
                        stop = Some(format!("offset {pos}: {e}"));
                        break 'segments;
                    }
                }
            }
        }
        if let (Some(b), None) = (batch_start, &stop) {
            stop = Some(format!("incomplete batch at offset {b}"));
        }
        Ok((end, stop))
    }

    /// Appends one sealed record; returns its offset. Not visible to `write_pos` readers until
    /// [`CommitLog::publish`]. A record larger than a segment is an error.
    pub fn append(&self, w: &mut LogWriter, rec: &[u8]) -> io::Result<u64> {
        let seg_size = self.segs.segment_size();
        if rec.len() as u64 > seg_size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("record of {} bytes exceeds the segment size {seg_size}", rec.len()),
            ));
        }
        super::fault::inject(super::fault::WRITE, self.segs.dir())?;
        loop {
            let seg = match &w.current {
                Some(seg) if w.pos < seg.end() => seg.clone(),
                _ => {
                    let base = w.pos / seg_size * seg_size;
                    let seg = match self.segs.find(base) {
                        Some(seg) => seg,
                        None => self.segs.create(base)?,
                    };
                    w.current = Some(seg.clone());
                    seg
                }
            };
            let at = (w.pos - seg.base) as usize;
            let room = seg.file.len() - at;
            if rec.len() <= room {
                if !seg.file.append_at(at, rec) {
                    return Err(io::Error::other(format!("commit log append refused at {}", w.pos)));
                }
                let off = w.pos;
                w.pos += rec.len() as u64;
                return Ok(off);
            }
            if room >= BLANK_MARKER_LEN {
                seg.file.append_at(at, &record::blank_marker(room));
            }
            w.pos = seg.end();
        }
    }

    /// Creates, ahead of writing, every segment that records of these lengths will need, so the
    /// appends that follow cannot fail half-way through a batch.
    pub fn prepare(&self, w: &LogWriter, lens: impl Iterator<Item = usize>) -> io::Result<()> {
        let seg_size = self.segs.segment_size();
        let mut pos = w.pos;
        for len in lens {
            if len as u64 > seg_size {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("record of {len} bytes exceeds the segment size {seg_size}"),
                ));
            }
            if pos % seg_size + len as u64 > seg_size {
                pos = (pos / seg_size + 1) * seg_size;
            }
            let base = pos / seg_size * seg_size;
            if self.segs.find(base).is_none() {
                self.segs.create(base)?;
            }
            pos += len as u64;
        }
        Ok(())
    }

    /// Creates the next segment ahead of need once the last one is half written, so appends do
    /// not wait on `fallocate` (which can take most of a second while a large flush is running).
    pub fn preallocate(&self) -> io::Result<()> {
        let Some(last) = self.segs.last() else { return Ok(()) };
        if self.write_pos() >= last.base + last.file.len() as u64 / 2 {
            self.segs.create(last.end())?;
        }
        Ok(())
    }

    /// Faults in the `ahead` bytes after the write position (within its segment and the next)
    /// that are not faulted in yet. Run by the flusher, off the append path.
    pub fn prefault_ahead(&self, ahead: u64) -> io::Result<()> {
        let pos = self.write_pos();
        let from = self.prefaulted.load(Ordering::Acquire).max(pos);
        let to = pos + ahead;
        if from >= to {
            return Ok(());
        }
        for seg in self.segs.all() {
            if seg.end() <= from || seg.base >= to {
                continue;
            }
            let a = from.saturating_sub(seg.base) as usize;
            let b = (to.min(seg.end()) - seg.base) as usize;
            seg.file.prefault(a, b)?;
        }
        self.prefaulted.fetch_max(to, Ordering::AcqRel);
        Ok(())
    }

    /// Publishes everything the writer has appended.
    pub fn publish(&self, w: &LogWriter) {
        self.write_pos.store(w.pos, Ordering::Release);
    }

    /// The record at `offset`, if one is written there. A record is readable as soon as its
    /// own bytes are published in its segment — before the batch it belongs to is published
    /// as a whole — because consume-queue entries (which readers follow) point at it from then.
    pub fn read(&self, offset: u64) -> Option<RecordRef> {
        let seg = self.segs.find(offset)?;
        let start = (offset - seg.base) as usize;
        let head = seg.file.read(start, 4)?;
        let len = crate::codec::get_u32(head, 0) as usize;
        if len == 0 {
            return None;
        }
        seg.file.read(start, len)?;
        Some(RecordRef { seg, start, len })
    }

    /// Fsyncs everything up to `upto` (a published position), in offset order.
    pub fn flush(&self, upto: u64) -> io::Result<()> {
        let from = self.flushed();
        if upto <= from {
            return Ok(());
        }
        self.segs.flush_range(from, upto)?;
        self.flushed.fetch_max(upto, Ordering::AcqRel);
        Ok(())
    }
}

/// End of the region after `from` that may hold stale or torn bytes: the scan stops after a run
/// of zeros longer than any record could be, since records are written contiguously and every
/// record starts with a non-zero length.
fn written_extent(bytes: &[u8], from: usize) -> usize {
    const CHUNK: usize = 64 * 1024;
    // Longest possible record plus one chunk of slack; records are capped well below this.
    const ZERO_RUN: usize = 80 * 1024 * 1024;
    let mut at = from;
    let mut last_nonzero_end = from;
    while at < bytes.len() && at - last_nonzero_end < ZERO_RUN {
        let end = (at + CHUNK).min(bytes.len());
        if let Some(i) = bytes[at..end].iter().rposition(|&b| b != 0) {
            last_nonzero_end = at + i + 1;
        }
        at = end;
    }
    last_nonzero_end
}
