//! The timer engine: scheduled messages that become visible at their millisecond, never early.
//!
//! A scheduled send is appended once to the commit log under the system topic
//! `rmq_sys_wheel_timer` (one queue), its real topic in the property `__chime.topic` and its
//! time in the record's `deliver_at_ms`. Five stages, each a named thread, move it on — the
//! shape of RocketMQ 5's timer store:
//!
//! ```text
//! system-topic consume queue
//!   → enqueue-get ─[disruptor ring]→ enqueue-put ──(already due)──────────────┐
//!                                    │ appends a timer-log unit, links its slot │
//!                                    ▼                                        ▼
//!   wheel (mmap) → dequeue-get ─[queue]→ dequeue-get-message ─[queue]→ dequeue-put → topic
//!                    reads slots         reads the original record      holds each message
//!                    ahead of time                                      until its millisecond
//!   rolls (far-future messages) go from dequeue-put back to enqueue-get on an unbounded queue,
//!   which is what keeps the ring → queue → ring cycle free of deadlock.
//! ```
//!
//! On disk, under `timer/`: `timerlog/` (see `timerlog`), `wheel` (see `wheel`), `state/` (see
//! `state`) and `checkpoint` (see `checkpoint`).
//!
//! Beyond RocketMQ: slots stay coarse (1 s) but dequeue-get reads each slot `lookahead` early
//! and dequeue-put publishes every message at its own `deliver_at_ms` (never before it by the
//! server clock; it is stored ahead of its time, staged, and made visible by a publish record
//! whose store time is `≥ deliver_at_ms`: `crate::store::staged`); the wheel flush writes only dirty
//! pages; cancel is one CAS on the message's state cell; rolls keep the original record (the
//! commit log is never truncated, so it is still there when the message finally fires) and
//! spread over the window instead of bunching at its edge.

pub mod carry;
pub mod checkpoint;
pub mod congestion;
mod core;
pub mod moved;
pub mod progress;
mod recovery;
mod report;
pub mod slot;
mod stages;
pub use stages::HOLD_ENQUEUE_GET;
pub mod state;
pub mod timerlog;
pub mod wheel;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chime_pipeline::Supervisor;
use parking_lot::Mutex;

use self::core::Core;
pub use self::core::Counters;
use crate::store::topics::Topic;
use crate::store::{AppendResult, NewMessage, Store, StoreError, VerifiedRecord};
use checkpoint::TimerCheckpoint;
pub use congestion::Bucket;
use congestion::Congestion;
use progress::Progress;
use recovery::{count_pending, recover_wheel};
pub use slot::Geometry;
use state::StateCells;

/// The system topic scheduled messages are stored under until they fire.
pub const SYSTEM_TOPIC: &str = "rmq_sys_wheel_timer";
/// Property of a scheduled record: the topic it will be delivered to.
pub const PROP_TOPIC: &str = "__chime.topic";
/// Property of a fired record: the id the client was given when it scheduled the message.
pub const PROP_ID: &str = "__chime.id";
/// Properties with this prefix are chime's own and never shown to consumers.
pub const SYSTEM_PROP_PREFIX: &str = "__chime.";

/// Appends scheduled messages for `topic` to the system topic of a timer that is not running,
/// as a send would (each gets its `PROP_TOPIC`); the timer's start-up counts and places them.
/// For benchmarks and tests of start-up: a running timer is sent to through `service::Broker`.
pub fn append_before_start(store: &Store, topic: &str, msgs: &mut [NewMessage]) -> Result<AppendResult, StoreError> {
    let (sys, _) = store.topics().create(SYSTEM_TOPIC, 1)?;
    for m in msgs.iter_mut() {
        m.properties.insert(PROP_TOPIC.to_string(), topic.to_string());
    }
    store.append(&sys, msgs)
}

#[derive(Debug, Clone)]
pub struct TimerOptions {
    pub dir: PathBuf,
    pub geometry: Geometry,
    pub lookahead_ms: i64,
    pub timer_log_segment_units: u64,
    /// State cells per file: [`state::CELLS_PER_FILE`] (smaller only in tests of reclamation).
    pub state_cells_per_file: u64,
    pub checkpoint_interval: Duration,
    pub queue_capacity: usize,
    /// Queues of a topic created when its first scheduled message fires.
    pub default_queues: u16,
    /// Most messages that may be due in one slot; a send that would pass it is refused
    /// (`None`: no limit).
    pub max_per_slot: Option<u64>,
    /// How often to log a progress line (`None`: never).
    pub progress_interval: Option<Duration>,
    /// Dequeue lag above which the progress check warns.
    pub lag_warn_ms: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum TimerError {
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no such scheduled message")]
    NotFound,
    #[error("the message is already visible to consumers")]
    AlreadyDelivered,
    /// The record was carried forward by retention: its copy ([`TimerEngine::current`])
    /// answers for it now.
    #[error("the message was carried forward; look it up again")]
    Moved,
    #[error("the slot starting at {slot_ms} already holds {count} scheduled messages (timer.max_per_slot = {limit}); choose another time or retry after some are cancelled")]
    SlotFull { slot_ms: i64, count: i64, limit: u64 },
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> TimerError {
    let context = context.into();
    move |source| TimerError::Io { context, source }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageState {
    Scheduled,
    Delivered,
    Cancelled,
}

impl MessageState {
    pub fn as_str(self) -> &'static str {
        match self {
            MessageState::Scheduled => "scheduled",
            MessageState::Delivered => "delivered",
            MessageState::Cancelled => "cancelled",
        }
    }
}

pub struct TimerEngine {
    core: Arc<Core>,
    supervisor: Mutex<Supervisor>,
    queues: Vec<(&'static str, Arc<chime_pipeline::QueueStats>)>,
    recovery: String,
}

/// One stage's figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StageStats {
    pub queue_depth: u64,
    pub queue_capacity: u64,
    pub processed: u64,
}

/// Lateness percentiles in ms.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lateness {
    pub count: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

#[derive(Debug, Clone)]
pub struct TimerStats {
    pub pending_total: i64,
    pub enqueue_lag: u64,
    pub dequeue_lag_ms: i64,
    pub read_time_ms: i64,
    pub stages: Vec<(&'static str, StageStats)>,
    pub lateness: Lateness,
    pub fired: u64,
    pub cancelled: u64,
    pub rolled: u64,
    pub late_after_downtime: u64,
    /// Messages refused because their slot was full (`timer.max_per_slot`).
    pub refused_slot_full: u64,
}

/// The answer of [`TimerEngine::congestion`].
#[derive(Debug, Clone)]
pub struct CongestionView {
    pub now_ms: i64,
    pub read_time_ms: i64,
    pub pending_total: i64,
    pub buckets: Vec<Bucket>,
}

/// Messages counted by [`TimerEngine::reserve`] and not yet appended.
pub struct Reservation<'a> {
    core: &'a Core,
    topic: String,
    deliver_at: Vec<i64>,
    committed: bool,
}

impl Reservation<'_> {
    /// The messages were appended to the system topic: make their state cells and wake
    /// enqueue-get.
    pub fn commit(mut self, result: &AppendResult) -> Result<(), TimerError> {
        self.committed = true;
        for a in &result.messages {
            self.core.states.ensure(a.queue_offset).map_err(io("create a state cell"))?;
        }
        let _ = self.core.doorbell.try_send(());
        Ok(())
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.committed {
            self.core.uncount(Some(&self.topic), self.deliver_at.iter().copied());
        }
    }
}

impl TimerEngine {
    /// Recovers the timer's files and starts the stages.
    pub fn start(store: Arc<Store>, opts: TimerOptions) -> Result<Arc<Self>, TimerError> {
        let clock = store.clock().clone();
        let now = clock.now_ms();
        let geo = opts.geometry;
        crate::store::fsio::create_dir_all(&opts.dir).map_err(io(format!("create {}", opts.dir.display())))?;
        let (sys_topic, _) = store.topics().create(SYSTEM_TOPIC, 1)?;
        let checkpoint_path = opts.dir.join("checkpoint");
        let ckpt = match TimerCheckpoint::load(&checkpoint_path) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "timer checkpoint unusable; rebuilding the wheel and re-reading the system topic");
                None
            }
        };
        let read_time = ckpt.map_or(geo.slot_time(now), |c| c.read_time);
        let states =
            StateCells::open(&opts.dir.join("state"), opts.state_cells_per_file).map_err(io("open the state cells"))?;
        // Cells past the end of the system topic belong to records a power cut took (a cancel
        // of a message whose send was not yet durable): clear them before new messages get
        // those offsets. The checkpoint's positions cannot be past that end either.
        let sys_end = sys_topic.queues[0].next();
        let cleared = states.clear_from(sys_end).map_err(io("clear the state cells past the system topic"))?;
        if cleared > 0 {
            tracing::warn!(from = sys_end, cells = cleared, "cleared state cells of messages a power cut took");
        }
        // Entries below the system topic's start were reclaimed with their records, whose
        // cells were all final: nothing before it is read again.
        let sys_start = sys_topic.queues[0].start();
        let pending_floor = ckpt.map_or(0, |c| c.pending_floor).clamp(sys_start, sys_end.max(sys_start));
        // Count what is pending on a second thread while this one recovers the timer log and
        // checks the wheel against it: both read every pending message once (10M pending:
        // several seconds each), and neither depends on the other.
        let ((log, wheel, end, relinked, bad, rebuilt), counted) = std::thread::scope(|scope| {
            let counting = std::thread::Builder::new()
                .name("timer-count".into())
                .spawn_scoped(scope, || {
                    let congestion = Congestion::new(geo.precision_ms, geo.slots, now);
                    count_pending(&states, &sys_topic, &store, pending_floor, congestion)
                })
                .map_err(io("spawn the start-up count"))?;
            let recovered = recover_wheel(&opts, read_time, ckpt.as_ref());
            let counted = counting.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            Ok::<_, TimerError>((recovered?, counted?))
        })?;
        // A rebuilt wheel is empty: every pending message is placed again, from the floor.
        let enqueue_offset = if rebuilt {
            pending_floor
        } else {
            ckpt.map_or(0, |c| c.enqueue_offset).clamp(sys_start, sys_end.max(sys_start))
        };
        let moved = open_moved(&opts, &store, &counted)?;
        let (doorbell, bell_rx) = crossbeam_channel::bounded(1);
        let core = Arc::new(Core {
            clock,
            geo,
            sys_topic,
            log,
            wheel,
            states,
            cursor: Mutex::new(read_time),
            progress: Mutex::new(Progress::new(enqueue_offset)),
            pending: Mutex::new(counted.per_topic),
            congestion: Mutex::new(counted.congestion),
            pending_floor: AtomicU64::new(counted.floor),
            moved,
            lateness: Mutex::new(crate::histogram::new()),
            counters: Counters::default(),
            doorbell,
            started_ms: now,
            checkpoint_path,
            last_checkpoint: Mutex::new(ckpt),
            unsettled: Mutex::new(Vec::new()),
            staged_floor: AtomicU64::new(u64::MAX),
            store,
            opts,
        });
        core.counters.enqueue_next.store(enqueue_offset, Ordering::Relaxed);
        let pending = counted.n;
        let recovery = format!(
            "timer: read time {read_time} ({} ms behind), enqueue from offset {enqueue_offset}, timer log end {end}, {relinked} units relinked{}, {pending} pending",
            now - read_time,
            if bad > 0 { " (wheel rebuilt)" } else { "" }
        );
        let (supervisor, queues) = stages::spawn(&core, enqueue_offset, bell_rx)?;
        Ok(Arc::new(Self { core, supervisor: Mutex::new(supervisor), queues, recovery }))
    }

    /// What recovery found, for the start-up log.
    pub fn recovery_summary(&self) -> &str {
        &self.recovery
    }

    /// Why the pipeline stopped by itself, if it did (a stage panicked or an I/O error).
    pub fn failure(&self) -> Option<String> {
        self.supervisor.lock().failure()
    }

    /// Counts messages about to be scheduled for `topic` (by deliver time), or refuses them all
    /// with [`TimerError::SlotFull`] if one would take its slot past `max_per_slot`. Check and
    /// count are one step, so concurrent sends cannot overfill a slot. Dropping the reservation
    /// without [`Reservation::commit`] (the append failed) takes the counts back.
    pub fn reserve(&self, topic: &str, deliver_at: Vec<i64>) -> Result<Reservation<'_>, TimerError> {
        let mut cg = self.core.congestion.lock();
        cg.advance(self.core.clock.now_ms());
        if let Some(limit) = self.core.opts.max_per_slot {
            let mut slots: Vec<i64> = deliver_at.iter().map(|&t| self.core.geo.slot_time(t)).collect();
            slots.sort_unstable();
            for run in slots.chunk_by(|a, b| a == b) {
                let count = cg.slot_count(run[0]);
                if count + run.len() as i64 > limit as i64 {
                    self.core.counters.refused_slot_full.fetch_add(deliver_at.len() as u64, Ordering::Relaxed);
                    return Err(TimerError::SlotFull { slot_ms: run[0], count, limit });
                }
            }
        }
        deliver_at.iter().for_each(|&t| cg.add(t, 1));
        drop(cg);
        *self.core.pending.lock().entry(topic.to_string()).or_insert(0) += deliver_at.len() as i64;
        Ok(Reservation { core: &self.core, topic: topic.to_string(), deliver_at, committed: false })
    }

    /// The system topic, for the send path.
    pub fn system_topic(&self) -> &Arc<Topic> {
        &self.core.sys_topic
    }

    /// Resolves a scheduled message's record (read by its id) given for `topic`: (state-cell
    /// index, deliver_at_ms).
    fn lookup(&self, topic: &str, r: &VerifiedRecord) -> Result<(u64, i64), TimerError> {
        let rec = r.record();
        if rec.topic != SYSTEM_TOPIC || rec.property(PROP_TOPIC) != Some(topic) {
            return Err(TimerError::NotFound);
        }
        Ok((rec.queue_offset, rec.deliver_at_ms))
    }

    /// The state and deliver time of a scheduled message.
    pub fn status(&self, topic: &str, r: &VerifiedRecord) -> Result<(MessageState, i64), TimerError> {
        let (cell, at) = self.lookup(topic, r)?;
        match self.core.states.get(cell).map_err(io("read a state cell"))? {
            state::MOVED => Err(TimerError::Moved),
            s => Ok((state_of(s), at)),
        }
    }

    /// Cancels a scheduled message: O(1), one CAS, then an `msync` of its cell's page, so
    /// `Ok` guarantees it never becomes visible, even after a power cut (under either flush
    /// policy). Blocks for that fsync: call it off the async runtime.
    pub fn cancel(&self, topic: &str, r: &VerifiedRecord) -> Result<i64, TimerError> {
        let (cell, at) = self.lookup(topic, r)?;
        let found = self.core.states.transition(cell, state::SCHEDULED, state::CANCELLED).map_err(io("cancel"))?;
        match found {
            state::SCHEDULED | state::CANCELLED => {
                if found == state::SCHEDULED {
                    self.core.uncount(Some(topic), [at]);
                    self.core.counters.cancelled.fetch_add(1, Ordering::Relaxed);
                }
                // Also for a repeated cancel: the first one's answer may not have been sent yet.
                self.core.states.flush_cell(cell).map_err(io("flush a state cell"))?;
                Ok(at)
            }
            state::MOVED => Err(TimerError::Moved),
            _ => Err(TimerError::AlreadyDelivered),
        }
    }

    /// Scheduled messages not yet fired or cancelled, for `topic`.
    pub fn pending_for(&self, topic: &str) -> i64 {
        self.core.pending.lock().get(topic).copied().unwrap_or(0).max(0)
    }

    /// The lowest commit-log offset of a fired message stored ahead of its time and not yet
    /// visible (`crate::store::staged`), if any: retention must keep the segment holding it.
    pub fn staged_floor(&self) -> Option<u64> {
        let f = self.core.staged_floor.load(Ordering::Acquire);
        (f != u64::MAX).then_some(f)
    }

    pub fn stats(&self) -> TimerStats {
        let c = &self.core;
        let now = c.clock.now_ms();
        let read_time = *c.cursor.lock();
        let enqueue_next = c.counters.enqueue_next.load(Ordering::Relaxed);
        let sys_next = c.sys_topic.queues[0].next();
        let mut stages = vec![
            (
                "enqueue_get",
                StageStats {
                    queue_depth: sys_next.saturating_sub(enqueue_next),
                    queue_capacity: 0,
                    processed: c.counters.enqueue_get_processed.load(Ordering::Relaxed),
                },
            ),
            (
                "dequeue_get",
                StageStats {
                    queue_depth: 0,
                    queue_capacity: 0,
                    processed: c.counters.dequeue_get_processed.load(Ordering::Relaxed),
                },
            ),
        ];
        for (name, q) in &self.queues {
            stages.push((
                name,
                StageStats {
                    queue_depth: q.depth() as u64,
                    queue_capacity: q.capacity() as u64,
                    processed: q.processed(),
                },
            ));
        }
        let h = c.lateness.lock();
        let lateness = Lateness {
            count: h.len(),
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        };
        TimerStats {
            pending_total: c.congestion.lock().total().max(0),
            enqueue_lag: sys_next.saturating_sub(c.progress.lock().committed_enqueue_offset()),
            dequeue_lag_ms: (now - read_time).max(0),
            read_time_ms: read_time,
            stages,
            lateness,
            fired: c.counters.fired.load(Ordering::Relaxed),
            cancelled: c.counters.cancelled.load(Ordering::Relaxed),
            rolled: c.counters.rolled.load(Ordering::Relaxed),
            late_after_downtime: c.counters.late_after_downtime.load(Ordering::Relaxed),
            refused_slot_full: c.counters.refused_slot_full.load(Ordering::Relaxed),
        }
    }

    /// Scheduled messages due in each bucket of `[from_ms, to_ms)` (see [`Congestion::buckets`]).
    /// The caller validates the window.
    pub fn congestion(&self, from_ms: i64, to_ms: i64, bucket_ms: i64) -> CongestionView {
        let now_ms = self.core.clock.now_ms();
        let read_time_ms = *self.core.cursor.lock();
        let mut cg = self.core.congestion.lock();
        cg.advance(now_ms);
        CongestionView {
            now_ms,
            read_time_ms,
            pending_total: cg.total().max(0),
            buckets: cg.buckets(from_ms, to_ms, bucket_ms),
        }
    }

    /// Lateness (ms) read at the upper bounds `bounds_ms`, for metrics.
    pub fn lateness_buckets(&self, bounds_ms: &[u64]) -> crate::histogram::Cumulative {
        crate::histogram::cumulative(&self.core.lateness.lock(), bounds_ms)
    }

    /// Stops the stages (within a deadline) and writes a final checkpoint.
    pub fn shutdown(&self) -> Result<(), TimerError> {
        let hung = self.supervisor.lock().stop_and_join(chime_pipeline::STOP_DEADLINE);
        if !hung.is_empty() {
            tracing::error!(?hung, "timer stages did not stop in time");
        }
        self.core.checkpoint()
    }

    /// Stops the stages wherever they are, dropping whatever is in flight between them, and
    /// writes no checkpoint: what a crash leaves behind, for recovery tests.
    /// Returns the stages that did not stop in time.
    pub fn halt_like_a_crash(&self) -> Vec<&'static str> {
        self.supervisor.lock().stop_and_join(chime_pipeline::STOP_DEADLINE)
    }

    /// Writes a checkpoint now (tests and benchmarks).
    pub fn checkpoint(&self) -> Result<(), TimerError> {
        self.core.checkpoint()
    }
}

/// Opens the moved-id map and brings it in line with what start-up settled: each pending copy
/// mapped from its origin, and no origin mapped to a copy start-up cancelled.
fn open_moved(
    opts: &TimerOptions,
    store: &Store,
    counted: &recovery::PendingCount,
) -> Result<moved::MovedMap, TimerError> {
    let map =
        moved::MovedMap::open(&opts.dir.join("moved"), store.min_offset()).map_err(io("open the moved-id map"))?;
    let mut fix: Vec<_> =
        counted.moved.iter().filter(|&(o, c)| map.get(o) != Some(*c)).map(|(&o, &c)| (o, Some(c))).collect();
    fix.extend(counted.dropped.iter().filter(|&&(o, c)| map.get(&o) == Some(c)).map(|&(o, _)| (o, None)));
    map.record(&fix).map_err(io("write the moved-id map"))?;
    Ok(map)
}

fn state_of(s: u8) -> MessageState {
    match s {
        state::CANCELLED => MessageState::Cancelled,
        state::DELIVERED | state::FIRING => MessageState::Delivered,
        _ => MessageState::Scheduled,
    }
}
