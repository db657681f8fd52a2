//! What the timer's stages share ([`Core`]): the files, the read pointer and progress, the
//! pending counts, the counters; and what the engine does with them outside the stages:
//! taking back counts, settling fired cells, writing the checkpoint.
//!
//! Lock order: `cursor`, then `progress`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use super::checkpoint::TimerCheckpoint;
use super::congestion::Congestion;
use super::progress::Progress;
use super::state::{self, StateCells};
use super::timerlog::TimerLog;
use super::wheel::Wheel;
use super::{io, Geometry, TimerError, TimerOptions};
use crate::clock::SharedClock;
use crate::store::topics::Topic;
use crate::store::Store;

/// Counters for `/v1/timer/stats`.
#[derive(Default)]
pub struct Counters {
    pub enqueue_get_processed: AtomicU64,
    pub dequeue_get_processed: AtomicU64,
    pub fired: AtomicU64,
    pub cancelled: AtomicU64,
    pub rolled: AtomicU64,
    pub late_after_downtime: AtomicU64,
    pub refused_slot_full: AtomicU64,
    /// Messages carried forward by retention (`carry`).
    pub carried: AtomicU64,
    /// Bytes of timer-log segments and state-cell files reclaimed (`carry`).
    pub timer_log_reclaimed_bytes: AtomicU64,
    pub state_reclaimed_bytes: AtomicU64,
    /// Next system-topic offset enqueue-get will read.
    pub enqueue_next: AtomicU64,
}

/// What the stages share.
pub(crate) struct Core {
    pub(super) store: Arc<Store>,
    pub(super) clock: SharedClock,
    pub(super) opts: TimerOptions,
    pub(super) geo: Geometry,
    pub(super) sys_topic: Arc<Topic>,
    pub(super) log: TimerLog,
    pub(super) wheel: Wheel,
    pub(super) states: StateCells,
    /// The read pointer: slots before it are closed. Also the lock that orders linking into a
    /// slot (enqueue-put) against closing it (dequeue-get). Lock order: `cursor`, then `progress`.
    pub(super) cursor: Mutex<i64>,
    pub(super) progress: Mutex<Progress>,
    /// Pending messages per topic (for `GET /v1/topics`).
    pub(super) pending: Mutex<HashMap<String, i64>>,
    /// Pending messages by deliver time; its total is `pending_total`.
    pub(super) congestion: Mutex<Congestion>,
    pub(super) pending_floor: AtomicU64,
    /// Origin id → current copy, of messages retention carried forward (`carry`).
    pub(super) moved: super::moved::MovedMap,
    pub(super) lateness: Mutex<hdrhistogram::Histogram<u64>>,
    pub(super) counters: Counters,
    pub(super) doorbell: crossbeam_channel::Sender<()>,
    /// When the engine started: messages due before this and fired late were due while down.
    pub(super) started_ms: i64,
    pub(super) checkpoint_path: PathBuf,
    /// The last checkpoint written (to skip writing an unchanged one).
    pub(super) last_checkpoint: Mutex<Option<TimerCheckpoint>>,
    /// Fires stored for their topics but not yet known durable: (commit-log end of the append,
    /// state cells). Their cells stay FIRING until the log is durable past that end, then
    /// become DELIVERED ([`Core::settle`]), so a cell is never DELIVERED on disk before its
    /// fired copy is: after a power cut such a message fires again, it is never lost.
    pub(super) unsettled: Mutex<Vec<(u64, Vec<u64>)>>,
    /// The lowest commit-log offset of a fired message dequeue-put stored ahead of its time
    /// and still holds (`u64::MAX`: none): retention keeps it (`TimerEngine::staged_floor`).
    pub(super) staged_floor: AtomicU64,
}

impl Core {
    /// Takes back messages that fired, were cancelled or will never fire (`topic` unknown when
    /// their record is unreadable).
    pub(super) fn uncount(&self, topic: Option<&str>, deliver_at: impl IntoIterator<Item = i64>) {
        let mut cg = self.congestion.lock();
        let n = deliver_at.into_iter().map(|t| cg.add(t, -1)).count();
        drop(cg);
        if let Some(topic) = topic {
            *self.pending.lock().entry(topic.to_string()).or_insert(0) -= n as i64;
        }
    }

    /// Fires whose fired copies the commit log now holds durably become DELIVERED.
    pub(super) fn settle(&self) {
        let durable = self.store.durable_offset();
        let mut unsettled = self.unsettled.lock();
        unsettled.retain(|(end, cells)| {
            if *end > durable {
                return true;
            }
            for &cell in cells {
                let _ = self.states.transition(cell, state::FIRING, state::DELIVERED);
            }
            false
        });
    }

    /// Flushes everything the checkpoint will claim, then writes it. The commit log is made
    /// durable first: it holds the system-topic records below `enqueue_offset` and the fired
    /// copies of everything before `read_time`, and only then may cells become DELIVERED.
    pub(super) fn checkpoint(&self) -> Result<(), TimerError> {
        let (enqueue_offset, read_time) = {
            let cursor = self.cursor.lock();
            let p = self.progress.lock();
            (p.committed_enqueue_offset(), p.committed_read_time(*cursor))
        };
        let timer_log_pos = self.log.write_pos();
        // Read before the log flush, so every record below it is durable after it.
        let sys_next = self.sys_topic.queues[0].next();
        let flushed = self.store.flush_all();
        // Even if the store checkpoint could not be written (a full disk): the log fsync ran.
        self.settle();
        flushed?;
        self.log.flush(timer_log_pos).map_err(io("flush the timer log"))?;
        self.wheel.flush().map_err(io("flush the timer wheel"))?;
        // The flushed wheel may link units appended since `timer_log_pos`: make them durable
        // too, or after a power cut the wheel would point past the log and be rebuilt (a full
        // re-placement from the pending floor: correct, but slow).
        self.log.flush(self.log.write_pos()).map_err(io("flush the timer log"))?;
        self.states.flush().map_err(io("flush the state cells"))?;
        let mut floor = self.pending_floor.load(Ordering::Relaxed);
        while floor < sys_next {
            match self.states.get(floor).map_err(io("read a state cell"))? {
                s if state::is_final(s) => floor += 1,
                _ => break,
            }
        }
        self.pending_floor.store(floor, Ordering::Relaxed);
        let cp = TimerCheckpoint {
            enqueue_offset,
            read_time,
            timer_log_pos,
            pending_floor: floor,
            written_ms: self.clock.now_ms(),
        };
        let mut last = self.last_checkpoint.lock();
        if last.is_some_and(|l| TimerCheckpoint { written_ms: cp.written_ms, ..l } == cp) {
            return Ok(()); // nothing moved: an idle timer writes nothing
        }
        cp.store(&self.checkpoint_path).map_err(io("write the timer checkpoint"))?;
        *last = Some(cp);
        Ok(())
    }
}
