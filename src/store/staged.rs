//! Messages stored ahead of their time and made visible at it with a few bytes each.
//!
//! The timer builds a fired message during its lookahead. Storing it at its millisecond used
//! to be a full append (a copy and a CRC of the whole record, under the writer lock, per
//! message), so a burst due at one millisecond became visible over as many microseconds as it
//! had messages. Instead the timer stores it early, **staged**, and **publishes** it at its
//! millisecond:
//!
//! - [`Store::append_staged`] appends records with `FLAG_STAGED`: in the commit log, durable
//!   like any record, their keys in the key index, but in no consume queue, so no reader can
//!   reach them (a consumer group reads only through its consume queues).
//! - [`Store::publish_staged`] appends one small publish record (`FLAG_PUBLISH`: 16 bytes per
//!   message it names) and writes a consume-queue entry per message pointing at it. A thousand
//!   messages become visible with one append and 20 KB of index.
//! - [`Store::read_entry`] is how every reader follows a consume-queue entry: to the record
//!   itself, or through the publish record to the staged record. It checks that the record is
//!   the one the entry names (topic, queue and position), and gives the time the message became
//!   visible: the record's store time, or its publish record's.
//!
//! Invariants: a staged record is visible only through a publish record, and a publish record
//! follows in the log every staged record it names, so recovery, which replays the log in
//! order, rebuilds its entries exactly (and drops them when it cuts the log before it). A
//! staged record that is never published (cancelled, or the process stopped first) is never
//! visible and goes with its segment. The timer keeps the segments of staged records it still
//! holds from retention (`crate::timer::TimerEngine::staged_floor`).

use std::sync::atomic::Ordering;

use super::consume_queue::CqEntry;
use super::record::{self, NewMessage, FLAG_PUBLISH, FLAG_STAGED};
use super::topics::Topic;
use super::{tag_hash, Store, StoreError, VerifiedRecord};

/// Most messages one publish record names (the timer publishes at most 1000 at a time).
pub const MAX_PUBLISH: usize = 1 << 16;

/// Where a staged record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Staged {
    pub log_offset: u64,
    pub tag_hash: u64,
}

/// What a publish made visible.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// The queue offset of the first message published.
    pub first_queue_offset: u64,
    /// When they became visible.
    pub store_ms: i64,
    /// The log position that must be durable for the publish to survive a power cut.
    pub end: u64,
}

/// The record a consume-queue entry names, and when its message became visible.
pub struct Resolved {
    pub record: VerifiedRecord,
    pub visible_ms: i64,
    /// The log offset of what made it visible: the record, or its publish record. Along a
    /// consume queue these only grow (as visible times do); record offsets need not.
    pub visible_pos: u64,
}

/// Why [`Store::read_entry`] found no record for an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unresolved {
    /// Its record was reclaimed by retention.
    Reclaimed,
    /// Nothing valid is there, or not that entry's message (damaged, or an index entry a crash
    /// left pointing elsewhere).
    NotIts,
}

/// Slots of the cache of publish records already verified (by offset).
pub(super) const VERIFIED_SLOTS: usize = 64;

impl Store {
    /// Appends records already encoded by [`record::encode`] or [`record::encode_derived`] to
    /// the commit log for queue `queue` of `topic`, staged: stored, their keys indexed, but not
    /// visible until [`Store::publish_staged`] names them. Each record is sealed in place.
    pub fn append_staged(&self, topic: &Topic, queue: u16, recs: &mut [Vec<u8>]) -> Result<Vec<Staged>, StoreError> {
        if recs.is_empty() {
            return Ok(Vec::new());
        }
        self.check_writable()?;
        let mut w = self.writer.lock();
        self.check_writable()?;
        self.prepare_log(&w, recs.iter().map(Vec::len))?;
        let store_ms = w.stamp(self.clock.now_ms());
        let mut out = Vec::with_capacity(recs.len());
        for rec in recs.iter_mut() {
            record::set_queue(rec, queue, FLAG_STAGED);
            record::seal(rec, 0, store_ms, 0);
            let tag = tag_hash(record::raw_tag(rec));
            let offset = self.write_record(&mut w, rec)?;
            self.index_keys(&topic.name, rec, offset);
            out.push(Staged { log_offset: offset, tag_hash: tag });
        }
        self.log.publish(&w.log);
        Ok(out)
    }

    /// Makes `staged` (records of queue `queue` of `topic`, from [`Store::append_staged`])
    /// visible, in this order, all or none: one publish record, then an entry each at the end
    /// of the consume queue.
    pub fn publish_staged(&self, topic: &Topic, queue: u16, staged: &[Staged]) -> Result<Published, StoreError> {
        assert!(staged.len() <= MAX_PUBLISH, "publish at most {MAX_PUBLISH} at a time");
        self.check_writable()?;
        let msg = NewMessage {
            body: record::publish_body(staged.iter().map(|s| (s.log_offset, s.tag_hash))),
            born_ms: self.clock.now_ms(),
            ..NewMessage::default()
        };
        let mut rec = Vec::new();
        record::encode(&mut rec, &topic.name, queue, FLAG_PUBLISH, &msg);
        let cq = &topic.queues[queue as usize];
        let n = staged.len() as u64;
        let mut w = self.writer.lock();
        self.check_writable()?;
        // Everything fallible happens before the first byte is written.
        self.prepare_log(&w, std::iter::once(rec.len()))?;
        if !topic.queue_used(queue) {
            self.topics.mark_used(topic, queue)?;
        }
        cq.prepare(cq.next(), n).map_err(|e| self.durability.io_error("allocate consume-queue segment", e))?;
        let store_ms = w.stamp(self.clock.now_ms());
        let first = cq.next();
        record::seal(&mut rec, first, store_ms, 0);
        let offset = self.write_record(&mut w, &rec)?;
        let entries: Vec<CqEntry> =
            staged.iter().enumerate().map(|(i, s)| CqEntry::published(offset, i, s.tag_hash)).collect();
        cq.write_run(first, &entries)
            .map_err(|e| self.durability.poison(format!("consume-queue append failed: {e}")))?;
        self.log.publish(&w.log);
        cq.publish(first + n);
        let end = w.log.pos();
        drop(w);
        topic.appended.notify_waiters();
        Ok(Published { first_queue_offset: first, store_ms, end })
    }

    /// The record entry `index` of queue `queue_id` of `topic` names, checked: its CRC, and
    /// that it is that entry's message (its topic, queue and position).
    pub fn read_entry(&self, topic: &str, queue_id: u16, index: u64, entry: CqEntry) -> Result<Resolved, Unresolved> {
        let read = |offset: u64| match self.read_verified(offset) {
            Some(r) => Ok(r),
            None if offset < self.min_offset() => Err(Unresolved::Reclaimed),
            None => Err(Unresolved::NotIts),
        };
        let Some(i) = entry.published_index() else {
            let r = read(entry.log_offset)?;
            let rec = r.record();
            let ours = rec.topic == topic
                && rec.queue_id == queue_id
                && rec.queue_offset == index
                && rec.flags & (FLAG_STAGED | FLAG_PUBLISH) == 0;
            let visible_ms = rec.store_ms;
            let visible_pos = entry.log_offset;
            return if ours { Ok(Resolved { record: r, visible_ms, visible_pos }) } else { Err(Unresolved::NotIts) };
        };
        let p = match self.read_publish(entry.log_offset) {
            Some(p) => p,
            None if entry.log_offset < self.min_offset() => return Err(Unresolved::Reclaimed),
            None => return Err(Unresolved::NotIts),
        };
        let prec = p.record();
        if !(prec.publish()
            && prec.topic == topic
            && prec.queue_id == queue_id
            && prec.queue_offset + i as u64 == index)
        {
            return Err(Unresolved::NotIts);
        }
        let (offset, _) = record::published_at(prec.body, i).ok_or(Unresolved::NotIts)?;
        let r = read(offset)?;
        let rec = r.record();
        let ours = rec.staged() && rec.topic == topic && rec.queue_id == queue_id;
        let visible_ms = prec.store_ms;
        if ours {
            Ok(Resolved { record: r, visible_ms, visible_pos: entry.log_offset })
        } else {
            Err(Unresolved::NotIts)
        }
    }

    /// The publish record at `offset`, verified once: a thousand entries name the same one, and
    /// its CRC covers 16 bytes per message, so it is checked on its first read and remembered.
    fn read_publish(&self, offset: u64) -> Option<VerifiedRecord> {
        let slot = &self.verified_publish[(offset ^ (offset >> 12)) as usize % VERIFIED_SLOTS];
        let r = self.log.read(offset)?;
        if slot.load(Ordering::Acquire) == offset + 1 {
            // Verified before; log bytes are never rewritten and offsets never reused while the
            // process runs (recovery's cut happens before any read).
            return Some(r.assume_verified());
        }
        let v = r.verify().ok()?;
        slot.store(offset + 1, Ordering::Release);
        Some(v)
    }
}
