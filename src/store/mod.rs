//! The message store: commit log, consume queues, topics, durability and recovery.
//!
//! On disk, under the data directory:
//!
//! ```text
//! LOCK                          flock held by the running process (`lock`)
//! checkpoint                    durable positions, replaced atomically (`checkpoint`)
//! topics.json                   the topics and their queue counts (`topics`)
//! commitlog/{base:020}          record segments (`commitlog`, `record`)
//! consumequeue/{topic}/{q}/{base:020}   20-byte index entries (`consume_queue`)
//! groups/{topic}/{group}.json  consumer-group progress (`crate::group`)
//! ```
//!
//! Every message is appended once to the commit log and indexed in the consume queue of its
//! topic and queue (a fired message may be stored ahead of its time and indexed at it: see
//! `staged`). One appender (the `writer` lock) assigns commit-log offsets and queue
//! offsets together, so each queue is in commit-log order. Readers never take that lock.
//! The store knows nothing of HTTP.

pub mod atomic_file;
pub mod checkpoint;
pub mod commitlog;
pub mod consume_queue;
pub mod fault;
pub mod fsio;
pub mod key_index;
pub mod lock;
pub mod mmap;
pub mod powercut;
pub mod record;
pub mod recovery;
pub mod segments;
pub mod staged;
pub mod topics;

mod durability;
mod error;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::clock::SharedClock;
pub use commitlog::{RecordRef, VerifiedRecord};
pub use consume_queue::{tag_hash, CqEntry};
pub use durability::FlushPolicy;
use durability::{Durability, FlushJob};
pub use error::StoreError;
pub use record::NewMessage;
use record::{FLAG_BATCH, FLAG_BATCH_END};
pub use recovery::RecoveryReport;
pub use staged::{Published, Resolved, Staged, Unresolved};
use topics::{Topic, Topics};

/// How the store is laid out and made durable.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub dir: PathBuf,
    /// Bytes per commit-log segment.
    pub segment_size: u64,
    /// Entries per consume-queue segment.
    pub cq_segment_entries: u32,
    pub flush: FlushPolicy,
    /// How often consume queues are flushed and the checkpoint written.
    pub checkpoint_interval: Duration,
}

/// A message's permanent id: its commit-log offset and record CRC, as 24 hex digits. The CRC
/// makes a guessed or stale id (pointing at another record) fail to resolve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MessageId {
    pub offset: u64,
    pub crc: u32,
}

impl MessageId {
    /// The 24 hex digits, without an allocation (the fire path writes one per message).
    pub fn hex(&self) -> IdHex {
        const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
        let mut out = [0u8; 24];
        for (i, b) in out[..16].iter_mut().enumerate() {
            *b = DIGITS[(self.offset >> (60 - 4 * i) & 0xF) as usize];
        }
        for (i, b) in out[16..].iter_mut().enumerate() {
            *b = DIGITS[(self.crc >> (28 - 4 * i) & 0xF) as usize];
        }
        IdHex(out)
    }
}

/// A [`MessageId`]'s text, on the stack.
#[derive(Clone, Copy)]
pub struct IdHex([u8; 24]);

impl IdHex {
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("hex digits are ASCII")
    }
}

impl std::fmt::Display for MessageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.hex().as_str())
    }
}

impl std::str::FromStr for MessageId {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        if s.len() != 24 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(());
        }
        Ok(Self {
            offset: u64::from_str_radix(&s[..16], 16).map_err(|_| ())?,
            crc: u32::from_str_radix(&s[16..], 16).map_err(|_| ())?,
        })
    }
}

/// Where one appended message landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub id: MessageId,
    pub queue_id: u16,
    pub queue_offset: u64,
    pub store_ms: i64,
    pub deliver_at_ms: i64,
}

/// The result of an append: each message's place, and the log position that must be durable
/// before the send may be acknowledged (see [`Store::wait_durable`]).
#[derive(Debug, Clone)]
pub struct AppendResult {
    pub messages: Vec<Appended>,
    pub end: u64,
}

struct Writer {
    log: commitlog::LogWriter,
    /// Store times never go backwards, even if the wall clock does.
    last_store_ms: i64,
    scratch: Vec<u8>,
}

impl Writer {
    /// The store time of the next append: `now`, or the last one if the clock went back.
    fn stamp(&mut self, now: i64) -> i64 {
        self.last_store_ms = now.max(self.last_store_ms);
        self.last_store_ms
    }
}

pub struct Store {
    opts: StoreOptions,
    clock: SharedClock,
    log: commitlog::CommitLog,
    topics: Topics,
    /// Business keys → records (`key_index`).
    keys: key_index::KeyIndex,
    writer: Mutex<Writer>,
    durability: Arc<Durability>,
    /// Runs the flusher thread.
    workers: Mutex<chime_pipeline::Supervisor>,
    /// Serialises checkpoint writes (the flusher and the timer both checkpoint the store) and
    /// holds the log position of the last one written, to skip writing an unchanged one.
    checkpoint_lock: Mutex<Option<u64>>,
    /// Commit-log fsync latency in µs, and the position the last recorded fsync reached (an
    /// fsync with nothing new to write is not recorded).
    fsync_us: Mutex<(u64, hdrhistogram::Histogram<u64>)>,
    recovery: RecoveryReport,
    /// Client sends are accepted (false above `store.disk_hard_limit`; see `crate::retention`).
    accepting: AtomicBool,
    /// Commit-log segments and bytes reclaimed since start.
    reclaimed: Mutex<(u64, u64)>,
    /// Consume-queue segments and bytes reclaimed since start.
    index_reclaimed: Mutex<(u64, u64)>,
    /// Offsets (+1) of publish records already verified (`staged`).
    verified_publish: [AtomicU64; staged::VERIFIED_SLOTS],
    _lock: lock::DirLock,
}

impl Store {
    /// Locks the data directory, recovers it, and starts the flusher thread.
    pub fn open(opts: StoreOptions, clock: SharedClock) -> Result<Arc<Self>, StoreError> {
        let dir_lock = lock::DirLock::acquire(&opts.dir)?;
        Self::open_locked(dir_lock, opts, clock)
    }

    /// [`Store::open`] with the directory lock already taken (the server takes it before it
    /// listens, so a second process exits at once).
    pub fn open_locked(
        dir_lock: lock::DirLock,
        opts: StoreOptions,
        clock: SharedClock,
    ) -> Result<Arc<Self>, StoreError> {
        powercut::install(&opts.dir).map_err(StoreError::io("start the power-cut simulation"))?;
        let recovered = recovery::recover(&opts)?;
        let durability = Arc::new(Durability::new(opts.flush.clone(), recovered.log.write_pos()));
        let store = Arc::new(Self {
            clock,
            log: recovered.log,
            topics: recovered.topics,
            keys: recovered.keys,
            writer: Mutex::new(Writer { log: recovered.writer, last_store_ms: 0, scratch: Vec::new() }),
            durability: durability.clone(),
            workers: Mutex::new(chime_pipeline::Supervisor::new()),
            checkpoint_lock: Mutex::new(None),
            fsync_us: Mutex::new((0, crate::histogram::new())),
            recovery: recovered.report,
            accepting: AtomicBool::new(true),
            reclaimed: Mutex::new((0, 0)),
            index_reclaimed: Mutex::new((0, 0)),
            verified_publish: std::array::from_fn(|_| AtomicU64::new(0)),
            opts,
            _lock: dir_lock,
        });
        let interval = store.opts.checkpoint_interval;
        durability::spawn_flusher(&mut store.workers.lock(), Arc::downgrade(&store), durability, interval)?;
        Ok(store)
    }

    pub fn options(&self) -> &StoreOptions {
        &self.opts
    }

    pub fn clock(&self) -> &SharedClock {
        &self.clock
    }

    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.recovery
    }

    pub fn topics(&self) -> &Topics {
        &self.topics
    }

    /// `Err(Poisoned)` once a flush has failed: nothing more is accepted until a restart.
    pub fn check_writable(&self) -> Result<(), StoreError> {
        self.durability.check()
    }

    /// Appends `msgs` to one queue of `topic`, all-or-nothing: a batch is written contiguously
    /// and marked so that recovery drops it whole if its end never reached the disk.
    pub fn append(&self, topic: &Topic, msgs: &[NewMessage]) -> Result<AppendResult, StoreError> {
        let mut r = self.append_parts(&[(topic, None, msgs)])?;
        Ok(r.pop().expect("one part"))
    }

    /// Appends several parts (each to one queue of its topic: the one given, else the next
    /// round robin) as one all-or-nothing batch: one lock, contiguous records, one batch-end
    /// mark. Used for a send that mixes immediate and scheduled messages, or message groups.
    /// Returns one result per part.
    pub fn append_parts(
        &self,
        parts: &[(&Topic, Option<u16>, &[NewMessage])],
    ) -> Result<Vec<AppendResult>, StoreError> {
        let total: usize = parts.iter().map(|(_, _, m)| m.len()).sum();
        if total == 0 {
            let end = self.log.write_pos();
            return Ok(parts.iter().map(|_| AppendResult { messages: Vec::new(), end }).collect());
        }
        self.check_writable()?;
        let batch = total > 1;
        let flags = if batch { FLAG_BATCH } else { 0 };
        let queues: Vec<u16> = parts.iter().map(|(t, q, _)| q.unwrap_or_else(|| t.pick_queue())).collect();

        let mut w = self.writer.lock();
        let mut buf = std::mem::take(&mut w.scratch);
        buf.clear();
        let mut bounds = Vec::with_capacity(total);
        for ((topic, _, msgs), &q) in parts.iter().zip(&queues) {
            for m in msgs.iter() {
                let start = buf.len();
                record::encode(&mut buf, &topic.name, q, flags, m);
                bounds.push(start..buf.len());
            }
        }
        let counts: Vec<(&Topic, usize)> = parts.iter().map(|(t, _, m)| (*t, m.len())).collect();
        let result = self.append_locked(&mut w, &mut buf, &bounds, &counts, &queues, batch);
        w.scratch = buf;
        drop(w);
        let result = result?;
        for (topic, _, _) in parts {
            topic.appended.notify_waiters();
        }
        Ok(result)
    }

    /// Appends records already encoded by [`record::encode`] (any queue id) to one queue of
    /// `topic` (`queue`, else the next round robin), all-or-nothing. The timer encodes fired
    /// messages ahead of their time, so storing them at their millisecond is a seal and a copy.
    pub fn append_encoded(
        &self,
        topic: &Topic,
        queue: Option<u16>,
        recs: &[Vec<u8>],
    ) -> Result<AppendResult, StoreError> {
        if recs.is_empty() {
            return Ok(AppendResult { messages: Vec::new(), end: self.log.write_pos() });
        }
        self.check_writable()?;
        let batch = recs.len() > 1;
        let queue = queue.unwrap_or_else(|| topic.pick_queue());
        let mut buf = Vec::with_capacity(recs.iter().map(Vec::len).sum());
        let mut bounds = Vec::with_capacity(recs.len());
        for r in recs {
            let start = buf.len();
            buf.extend_from_slice(r);
            record::set_queue(&mut buf[start..], queue, if batch { FLAG_BATCH } else { 0 });
            bounds.push(start..buf.len());
        }
        let mut w = self.writer.lock();
        let result = self.append_locked(&mut w, &mut buf, &bounds, &[(topic, recs.len())], &[queue], batch);
        drop(w);
        let mut result = result?;
        topic.appended.notify_waiters();
        Ok(result.pop().expect("one part"))
    }

    /// Creates ahead of time what the next `ahead` entries of a queue of `topic` need (`queue`,
    /// or each of them; at most one segment's worth, so at most the current segment and the
    /// next): the queue marked used in `topics.json` and its index segments created and
    /// faulted in. Off the append path: the timer calls it while a message waits for its
    /// millisecond, so that the fire of a burst into a topic that was never used does not
    /// write `topics.json` and create and fault in a segment per queue under the writer lock
    /// (a 10k same-millisecond burst was 50–90 ms later on a fresh topic than on a used one:
    /// `bench/RESULTS.md`, "Bursts"). The append path still does the same if this did not run or
    /// failed; an HTTP send into a fresh topic still pays it, once per queue.
    pub fn prepare_topic(&self, topic: &Topic, queue: Option<u16>, ahead: u64) -> Result<(), StoreError> {
        let n = topic.queues.len() as u32;
        let bits = match queue {
            Some(q) => 1u64 << q,
            None => u64::MAX >> (64 - n),
        };
        // Segments first, then the used bits: a queue marked used without a segment would read
        // as a lost index at the next start (and be rebuilt from the whole log), while a segment
        // without its bit is taken as used when the topics are loaded.
        let mut prepared = 0u64;
        let mut failed = None;
        for (q, cq) in topic.queues.iter().enumerate() {
            if bits & (1 << q) != 0 {
                match cq.prepare(cq.next(), ahead.min(cq.segment_entries())) {
                    Ok(()) => prepared |= 1 << q,
                    Err(e) => failed = Some(self.durability.io_error("allocate consume-queue segment", e)),
                }
            }
        }
        self.topics.mark_used_bits(topic, prepared)?;
        failed.map_or(Ok(()), Err)
    }

    fn append_locked(
        &self,
        w: &mut Writer,
        buf: &mut [u8],
        bounds: &[std::ops::Range<usize>],
        parts: &[(&Topic, usize)],
        queues: &[u16],
        batch: bool,
    ) -> Result<Vec<AppendResult>, StoreError> {
        self.check_writable()?;
        // Everything fallible happens before the first byte is written.
        self.prepare_log(w, bounds.iter().map(|r| r.len()))?;
        for ((topic, n), &q) in parts.iter().zip(queues) {
            let cq = &topic.queues[q as usize];
            if !topic.queue_used(q) {
                self.topics.mark_used(topic, q)?;
            }
            cq.prepare(cq.next(), *n as u64)
                .map_err(|e| self.durability.io_error("allocate consume-queue segment", e))?;
        }

        let store_ms = w.stamp(self.clock.now_ms());
        let mut results = Vec::with_capacity(parts.len());
        let mut bounds = bounds.iter();
        // Index entries are published only after the whole batch (below), so a queue that two
        // parts share continues from what the earlier part wrote, not from `next()`.
        let mut written: Vec<(&consume_queue::ConsumeQueue, u64)> = Vec::new();
        for ((topic, n), &queue_id) in parts.iter().zip(queues) {
            let cq = &topic.queues[queue_id as usize];
            let first_qo = written.iter().find(|(q, _)| std::ptr::eq(*q, cq)).map_or(cq.next(), |&(_, end)| end);
            match written.iter_mut().find(|(q, _)| std::ptr::eq(*q, cq)) {
                Some(e) => e.1 = first_qo + *n as u64,
                None => written.push((cq, first_qo + *n as u64)),
            }
            let mut out = Vec::with_capacity(*n);
            for i in 0..*n {
                let r = bounds.next().expect("one range per message");
                let qo = first_qo + i as u64;
                // The last record of the whole batch carries the batch-end mark.
                let last = batch && bounds.len() == 0;
                let rec = &mut buf[r.clone()];
                let crc = record::seal(rec, qo, store_ms, if last { FLAG_BATCH_END } else { 0 });
                let deliver_at_ms = record::raw_deliver_at(rec);
                let tag = tag_hash(record::raw_tag(rec));
                let offset = self.write_record(w, rec)?;
                cq.write(qo, CqEntry { log_offset: offset, size: rec.len() as u32, tag_hash: tag })
                    .map_err(|e| self.durability.poison(format!("consume-queue append failed: {e}")))?;
                self.index_keys(&topic.name, rec, offset);
                out.push(Appended {
                    id: MessageId { offset, crc },
                    queue_id,
                    queue_offset: qo,
                    store_ms,
                    deliver_at_ms,
                });
            }
            results.push(out);
        }
        // The batch becomes visible whole: its records, then its index entries. A reader (a
        // consumer group, or the timer's enqueue-get) never sees part of a batch, which a crash
        // before its last record would make recovery cut: the timer would have placed units
        // for records whose offsets later records reuse.
        self.log.publish(&w.log);
        for (cq, end) in written {
            cq.publish(end);
        }
        let end = w.log.pos();
        Ok(results.into_iter().map(|messages| AppendResult { messages, end }).collect())
    }

    /// Makes room in the commit log for records of `lens` bytes (a new segment if needed), before
    /// anything is written: a full disk fails here, with nothing to undo.
    fn prepare_log(&self, w: &Writer, lens: impl Iterator<Item = usize>) -> Result<(), StoreError> {
        self.log.prepare(&w.log, lens).map_err(|e| self.durability.io_error("allocate commit-log segment", e))
    }

    /// Appends one sealed record to the commit log (unpublished until `log.publish`); a failed
    /// write poisons the store.
    fn write_record(&self, w: &mut Writer, rec: &[u8]) -> Result<u64, StoreError> {
        self.log.append(&mut w.log, rec).map_err(|e| self.durability.poison(format!("commit-log append failed: {e}")))
    }

    /// Adds the keys of the record at `offset` to the key index. The index is rebuildable: a
    /// failure (a full disk) loses lookups of these keys until a restart replays them, never
    /// the message.
    fn index_keys(&self, topic: &str, rec: &[u8], offset: u64) {
        if record::raw_has_keys(rec) {
            if let Err(e) = self.keys.add(topic, record::raw_keys(rec), offset) {
                tracing::warn!(error = %e, "key index: cannot add a record's keys");
            }
        }
    }

    /// Waits until the log is durable up to `end` (immediately under [`FlushPolicy::Async`]).
    /// Fails if the store is poisoned meanwhile: the send must not be acknowledged.
    pub async fn wait_durable(&self, end: u64) -> Result<(), StoreError> {
        self.durability.wait_durable(end).await
    }

    /// The record at a commit-log offset.
    pub fn read(&self, offset: u64) -> Option<RecordRef> {
        self.log.read(offset)
    }

    /// The message record at a commit-log offset, checked ([`RecordRef::verify`]); `None` if
    /// nothing is written there or it does not check.
    pub fn read_verified(&self, offset: u64) -> Option<VerifiedRecord> {
        self.log.read(offset)?.verify().ok()
    }

    /// The record a message id names, if the id is valid (its CRC matches the record there).
    pub fn read_id(&self, id: MessageId) -> Option<VerifiedRecord> {
        let r = self.read_verified(id.offset)?;
        (r.record().crc == id.crc).then_some(r)
    }

    /// Whether client sends are accepted: false while the disk is above its hard limit. Only
    /// client sends check it; the timer's fires and carried-forward records go on, since they
    /// are what lets space be reclaimed and what 201s promised.
    pub fn accepting(&self) -> bool {
        self.accepting.load(Ordering::Acquire)
    }

    pub fn set_accepting(&self, on: bool) {
        if self.accepting.swap(on, Ordering::AcqRel) != on {
            tracing::warn!(accepting = on, "client sends {}", if on { "accepted again" } else { "refused: disk full" });
        }
    }

    /// End of the published commit log (the next append's offset).
    pub fn write_pos(&self) -> u64 {
        self.log.write_pos()
    }

    /// Offset of the first commit-log byte still on disk: records below it were reclaimed.
    pub fn min_offset(&self) -> u64 {
        self.log.min_offset()
    }

    /// `(base, end)` of every commit-log segment, oldest first.
    pub fn log_segments(&self) -> Vec<(u64, u64)> {
        self.log.segment_bounds()
    }

    /// Reclaims the oldest commit-log segment if it ends at or below `below` and is not the one
    /// being written; returns its size. The caller (`crate::retention`) has made sure nothing
    /// pending lives only in it.
    pub fn reclaim_oldest_segment(&self, below: u64) -> Result<Option<u64>, StoreError> {
        let got = self.log.reclaim_first(below).map_err(StoreError::io("reclaim a commit-log segment"))?;
        Ok(got.map(|(base, len)| {
            let mut r = self.reclaimed.lock();
            r.0 += 1;
            r.1 += len;
            tracing::info!(base, bytes = len, "commit-log segment reclaimed");
            len
        }))
    }

    /// Visits the retained messages of each queue of `topic`, newest first (newest visible:
    /// their visible times and positions only go back), while `visit` returns true (then the
    /// next queue): how start-up and the consumer lifecycle look for what a run that a crash
    /// stopped had already stored. Costs the records visited.
    pub fn scan_newest_first(&self, topic: &Topic, mut visit: impl FnMut(&Resolved) -> bool) {
        let retained_from = self.min_offset();
        for (qi, q) in topic.queues.iter().enumerate() {
            for i in (q.start()..q.next()).rev() {
                let Some(e) = q.get(i).filter(|e| e.log_offset >= retained_from) else { break };
                let Ok(r) = self.read_entry(&topic.name, qi as u16, i, e) else { continue };
                if !visit(&r) {
                    break;
                }
            }
        }
    }

    /// Commit-log offsets of the records stored with `key` in `topic` (and maybe a few hash
    /// collisions: check the record), newest first, at most `limit`; only retained ones.
    pub fn find_by_key(&self, topic: &str, key: &str, limit: usize) -> Vec<u64> {
        self.find_by_key_counted(topic, key, limit).0
    }

    /// [`Store::find_by_key`] with its cost: the index entries it read, and the index files
    /// there are (a lookup reads one hash slot's chain in each, so its cost follows the files
    /// kept, a retention-bounded number, not the records).
    pub fn find_by_key_counted(&self, topic: &str, key: &str, limit: usize) -> (Vec<u64>, usize, u64) {
        let (offsets, visited) = self.keys.find(topic, key, limit, self.min_offset());
        (offsets, visited, self.keys.files())
    }

    /// Keys one key-index file holds.
    pub fn keys_per_index_file(&self) -> usize {
        self.keys.entries_per_file()
    }

    /// Commit-log segments and bytes reclaimed since start.
    pub fn reclaimed(&self) -> (u64, u64) {
        *self.reclaimed.lock()
    }

    /// Reclaims the consume-queue segments that index only reclaimed records (see
    /// [`topics::Topics::reclaim_index`]); returns segments and bytes, also counted in
    /// [`Store::index_reclaimed`].
    pub fn reclaim_index(&self) -> Result<(u64, u64), StoreError> {
        let mut got = self.topics.reclaim_index(self.min_offset())?;
        let keys = self.keys.reclaim_below(self.min_offset()).map_err(StoreError::io("reclaim the key index"))?;
        (got.0, got.1) = (got.0 + keys.0, got.1 + keys.1);
        let mut r = self.index_reclaimed.lock();
        r.0 += got.0;
        r.1 += got.1;
        Ok(got)
    }

    /// Consume-queue segments and bytes reclaimed since start.
    pub fn index_reclaimed(&self) -> (u64, u64) {
        *self.index_reclaimed.lock()
    }

    /// Bytes in the commit log.
    pub fn log_bytes(&self) -> u64 {
        self.log.write_pos() - self.log.min_offset()
    }

    /// Commit-log fsync latency (µs) read at the upper bounds `bounds_us`, for metrics.
    pub fn fsync_buckets(&self, bounds_us: &[u64]) -> crate::histogram::Cumulative {
        crate::histogram::cumulative(&self.fsync_us.lock().1, bounds_us)
    }

    /// Flushes everything and writes the checkpoint (the flusher does this periodically).
    pub fn flush_all(&self) -> Result<(), StoreError> {
        self.flush_job(FlushJob::Checkpoint)
    }

    /// The commit log is durable below this offset.
    pub fn durable_offset(&self) -> u64 {
        self.log.flushed()
    }

    fn flush_job(&self, job: FlushJob) -> Result<(), StoreError> {
        let upto = self.log.write_pos();
        let started = std::time::Instant::now();
        if let Err(e) = self.log.flush(upto) {
            return Err(self.durability.poison(format!("commit-log fsync failed: {e}")));
        }
        let mut fsync = self.fsync_us.lock();
        if upto > fsync.0 {
            fsync.0 = upto;
            let _ = fsync.1.record(started.elapsed().as_micros() as u64);
        }
        drop(fsync);
        self.durability.flushed(upto);
        if job == FlushJob::Checkpoint {
            let mut last = self.checkpoint_lock.lock();
            if *last == Some(upto) {
                return Ok(()); // nothing appended since the last checkpoint
            }
            for t in self.topics.list() {
                for q in &t.queues {
                    if let Err(e) = q.flush() {
                        return Err(self.durability.poison(format!("consume-queue fsync failed for {}: {e}", t.name)));
                    }
                }
            }
            if let Err(e) = self.keys.flush() {
                return Err(self.durability.io_error("flush the key index", e));
            }
            let cp = checkpoint::Checkpoint { log_flushed: upto, indexed: upto, written_ms: self.clock.now_ms() };
            if let Err(e) = cp.store(&self.opts.dir) {
                // Not poisoning: the checkpoint is replaced atomically, so the previous one
                // stays valid and recovery merely scans further. A full disk heals by itself.
                tracing::warn!(error = %e, "cannot write the checkpoint; the previous one stays");
                return Err(self.durability.io_error("write the checkpoint", e));
            }
            *last = Some(upto);
        }
        Ok(())
    }

    /// Stops the flusher after a final flush and checkpoint. Appends after this fail.
    pub fn shutdown(&self) -> Result<(), StoreError> {
        let mut workers = self.workers.lock();
        workers.request_stop();
        self.durability.stop();
        let hung = workers.stop_and_join(chime_pipeline::STOP_DEADLINE);
        if !hung.is_empty() {
            tracing::error!(?hung, "the flusher did not stop in time");
        }
        self.flush_all()
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.workers.lock().request_stop();
        self.durability.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_id_round_trip() {
        let id = MessageId { offset: 0x1234_5678_9ABC, crc: 0xDEAD_BEEF };
        let s = id.to_string();
        assert_eq!(s, format!("{:016X}{:08X}", id.offset, id.crc));
        assert_eq!(s.len(), 24);
        assert_eq!(s.parse::<MessageId>(), Ok(id));
        assert_eq!(s.to_lowercase().parse::<MessageId>(), Ok(id));
        for bad in ["", "xyz", &s[..23], &format!("{s}0"), "G00000000000000000000000"] {
            assert!(bad.parse::<MessageId>().is_err(), "{bad}");
        }
    }
}
