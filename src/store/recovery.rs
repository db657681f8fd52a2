//! Recovery at start: validate the commit-log tail, cut a torn tail, and bring the consume
//! queues up to the commit log.
//!
//! Steps, in order:
//! 1. Read the checkpoint (invalid or missing: scan the whole log, and say so). Open the
//!    consume queues; a segment of theirs that is short, empty or after a gap (a power cut on
//!    a file system that lost its size) is removed, and the whole log is scanned to rebuild it.
//! 2. Scan the commit log from the checkpoint's `indexed` offset, validating every record's
//!    CRC; stop at the first invalid byte or at an incomplete batch, zero everything after that
//!    point and delete later segments (`commitlog::CommitLog::recover`).
//! 3. Cut every consume queue back to entries that point below the valid end.
//! 4. Replay the records after the checkpoint into the consume queues (idempotent: an entry
//!    already present and equal is left alone): a message record gets its entry, a publish
//!    record one per staged record it names, a staged record none (`super::staged`).
//!
//! Everything before the checkpoint was fsync'd before the checkpoint was written, so it is not
//! rescanned; a record before it that is corrupt is found when read (its CRC), not here.

use std::time::Instant;

use super::checkpoint::Checkpoint;
use super::commitlog::{CommitLog, LogRecovery, LogWriter};
use super::consume_queue::{tag_hash, CqEntry};
use super::key_index::KeyIndex;
use super::topics::{RecoveringTopics, Topics};
use super::{StoreError, StoreOptions};

/// What recovery found, for the start-up log line and `/v1/timer/stats`-style reporting.
#[derive(Debug, Clone, Default)]
pub struct RecoveryReport {
    pub checkpoint: Option<Checkpoint>,
    /// Why the checkpoint was not used, if it existed but was invalid.
    pub checkpoint_problem: Option<String>,
    pub log: LogRecovery,
    pub topics: usize,
    /// Consume-queue entries rewritten from the commit log.
    pub reindexed: u64,
    /// Consume-queue segments found short, empty or after a gap, removed and rebuilt (the
    /// whole log is then scanned).
    pub removed_index_segments: Vec<String>,
    pub elapsed_ms: u64,
}

impl std::fmt::Display for RecoveryReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "log end {} (scanned {} records from offset {}), {} topics, {} index entries rebuilt, {} torn bytes cut, {} ms",
            self.log.end,
            self.log.records,
            self.log.scanned_from,
            self.topics,
            self.reindexed,
            self.log.truncated_bytes,
            self.elapsed_ms
        )?;
        if let Some(why) = &self.log.stop_reason {
            write!(f, "; tail cut at {why}")?;
        }
        if let Some(why) = &self.checkpoint_problem {
            write!(f, "; checkpoint ignored: {why}")?;
        }
        if !self.removed_index_segments.is_empty() {
            write!(f, "; damaged index segments rebuilt: {}", self.removed_index_segments.join(", "))?;
        }
        Ok(())
    }
}

pub(super) struct Recovered {
    pub log: CommitLog,
    pub writer: LogWriter,
    pub topics: Topics,
    pub keys: KeyIndex,
    pub report: RecoveryReport,
}

pub(super) fn recover(opts: &StoreOptions) -> Result<Recovered, StoreError> {
    let started = Instant::now();
    let mut report = RecoveryReport::default();
    let dir = &opts.dir;
    let checkpoint = match Checkpoint::load(dir) {
        Ok(cp) => cp,
        Err(e) => {
            tracing::warn!(error = %e, "checkpoint unusable; scanning the whole commit log");
            report.checkpoint_problem = Some(e.to_string());
            None
        }
    };
    report.checkpoint = checkpoint;
    let mut topics = RecoveringTopics::load(dir, opts.cq_segment_entries)?;
    report.removed_index_segments = topics.removed_segments();
    // A damaged consume-queue segment was removed: rebuild every entry from the whole log.
    let from = if report.removed_index_segments.is_empty() { checkpoint.map_or(0, |c| c.indexed) } else { 0 };

    let log_dir = dir.join("commitlog");
    let mut log = CommitLog::open(&log_dir, opts.segment_size)
        .map_err(StoreError::io(format!("open commit log {}", log_dir.display())))?;
    let (writer, log_report) =
        log.recover(from).map_err(StoreError::io(format!("recover commit log {}", log_dir.display())))?;
    let end = log_report.end;
    let scanned_from = log_report.scanned_from;

    for t in topics.map.values_mut() {
        for q in &mut t.queues {
            q.recover(end).map_err(StoreError::io(format!("recover consume queue of {}", t.name)))?;
        }
    }

    // The key index's entries from there on are added again by the replay.
    let keys_dir = opts.dir.join("keyindex");
    let keys = KeyIndex::open(&keys_dir, opts.segment_size)
        .map_err(StoreError::io(format!("open the key index {}", keys_dir.display())))?;
    keys.truncate_from(scanned_from).map_err(StoreError::io("recover the key index"))?;
    let (mut replayed, mut reindexed, gap) = reindex(&log, &mut topics, &keys, scanned_from, end)?;
    // A queue whose entries stop short of the first record replayed for it lost segments that
    // the checkpoint counted on (a queue is created empty; its segments with its first
    // messages): rebuild from the whole log.
    if gap && scanned_from > log.min_offset() {
        tracing::warn!(
            from = scanned_from,
            "consume-queue entries missing before the checkpoint; rebuilding from the whole log"
        );
        report.removed_index_segments.push("entries before the checkpoint (a queue lost its segments)".into());
        keys.truncate_from(log.min_offset()).map_err(StoreError::io("recover the key index"))?;
        let (n, m, _) = reindex(&log, &mut topics, &keys, log.min_offset(), end)?;
        (replayed, reindexed) = (n, reindexed + m);
    }
    report.log = log_report;
    report.log.records = replayed;
    report.reindexed = reindexed;
    report.topics = topics.map.len();
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok(Recovered { log, writer, topics: topics.into_registry(), keys, report })
}

/// Replays the log's records in `[from, end)` into their consume queues and the key index
/// (whose entries from `from` on were dropped first). Returns the records
/// replayed, the entries (re)written, and whether a record landed past the end of its queue
/// (entries before it are missing).
fn reindex(
    log: &CommitLog,
    topics: &mut RecoveringTopics,
    keys: &KeyIndex,
    from: u64,
    end: u64,
) -> Result<(u64, u64, bool), StoreError> {
    let mut first_err = None;
    let mut reindexed = 0u64;
    let mut gap = false;
    let replayed = log.replay(from, end, |offset, len, rec| {
        if first_err.is_some() {
            return;
        }
        if let Err(e) = keys.add(rec.topic, rec.keys(), offset) {
            first_err = Some(StoreError::io("rebuild the key index")(e));
            return;
        }
        // A staged record is in no queue until a publish record names it (`super::staged`);
        // a publish record's entries point at it, one per message it names.
        if rec.staged() {
            return;
        }
        let single = (!rec.publish()).then(|| CqEntry { log_offset: offset, size: len, tag_hash: tag_hash(rec.tag) });
        let published = rec.published().enumerate().map(|(i, (_, tag))| CqEntry::published(offset, i, tag));
        let result = topics.get_or_create(rec.topic, rec.queue_id).and_then(|t| {
            let q = &mut t.queues[rec.queue_id as usize];
            gap |= rec.queue_offset > q.next();
            for (at, entry) in (rec.queue_offset..).zip(single.into_iter().chain(published)) {
                let before = q.get(at);
                q.recover_put(at, entry).map_err(StoreError::io(format!("rebuild consume queue of {}", rec.topic)))?;
                if before != Some(entry) {
                    reindexed += 1;
                }
            }
            Ok(())
        });
        if let Err(e) = result {
            first_err = Some(e);
        }
    });
    match first_err {
        Some(e) => Err(e),
        None => Ok((replayed, reindexed, gap)),
    }
}
