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
//! and dequeue-put releases every message at its own `deliver_at_ms` (never before it by the
//! server clock, which `store_ms ≥ deliver_at_ms` records); the wheel flush writes only dirty
//! pages; cancel is one CAS on the message's state cell; rolls keep the original record (the
//! commit log is never truncated, so it is still there when the message finally fires) and
//! spread over the window instead of bunching at its edge.

pub mod checkpoint;
pub mod congestion;
pub mod progress;
mod report;
pub mod slot;
mod stages;
pub use stages::HOLD_ENQUEUE_GET;
pub mod state;
pub mod timerlog;
pub mod wheel;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chime_pipeline::Supervisor;
use parking_lot::Mutex;

use crate::clock::SharedClock;
use crate::store::topics::Topic;
use crate::store::{AppendResult, MessageId, NewMessage, Store, StoreError};
use checkpoint::TimerCheckpoint;
pub use congestion::Bucket;
use congestion::Congestion;
use progress::Progress;
pub use slot::Geometry;
use state::StateCells;
use timerlog::TimerLog;
use wheel::Wheel;

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
    /// Next system-topic offset enqueue-get will read.
    pub enqueue_next: AtomicU64,
}

/// What the stages share.
pub(crate) struct Core {
    store: Arc<Store>,
    clock: SharedClock,
    opts: TimerOptions,
    geo: Geometry,
    sys_topic: Arc<Topic>,
    log: TimerLog,
    wheel: Wheel,
    states: StateCells,
    /// The read pointer: slots before it are closed. Also the lock that orders linking into a
    /// slot (enqueue-put) against closing it (dequeue-get). Lock order: `cursor`, then `progress`.
    cursor: Mutex<i64>,
    progress: Mutex<Progress>,
    /// Pending messages per topic (for `GET /v1/topics`).
    pending: Mutex<HashMap<String, i64>>,
    /// Pending messages by deliver time; its total is `pending_total`.
    congestion: Mutex<Congestion>,
    pending_floor: AtomicU64,
    lateness: Mutex<hdrhistogram::Histogram<u64>>,
    counters: Counters,
    doorbell: crossbeam_channel::Sender<()>,
    /// When the engine started: messages due before this and fired late were due while down.
    started_ms: i64,
    checkpoint_path: PathBuf,
    /// The last checkpoint written (to skip writing an unchanged one).
    last_checkpoint: Mutex<Option<TimerCheckpoint>>,
    /// Fires stored for their topics but not yet known durable: (commit-log end of the append,
    /// state cells). Their cells stay FIRING until the log is durable past that end, then
    /// become DELIVERED ([`Core::settle`]), so a cell is never DELIVERED on disk before its
    /// fired copy is: after a power cut such a message fires again, it is never lost.
    unsettled: Mutex<Vec<(u64, Vec<u64>)>>,
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

/// Opens the timer log and the wheel, relinks units the wheel lost since the checkpoint, and
/// checks every live slot against the log, rebuilding the wheel from the log if one disagrees.
/// Returns them with the log's end, the units relinked and the slots that disagreed.
fn recover_wheel(
    opts: &TimerOptions,
    read_time: i64,
    ckpt: Option<&TimerCheckpoint>,
) -> Result<(TimerLog, Wheel, u64, u64, u64), TimerError> {
    let geo = opts.geometry;
    let (mut log, removed) =
        TimerLog::open(&opts.dir.join("timerlog"), opts.timer_log_segment_units).map_err(io("open the timer log"))?;
    let (wheel, fresh) = Wheel::open(&opts.dir.join("wheel"), geo).map_err(io("open the timer wheel"))?;
    let full = fresh || ckpt.is_none() || !removed.is_empty();
    let from = if full { 0 } else { ckpt.map_or(0, |c| c.timer_log_pos) };
    let mut relinked = 0u64;
    let end = log
        .recover(from, |pos, u| {
            if u.slot_time >= read_time && wheel.get(u.slot_time).last < pos + 1 {
                wheel.link(u.slot_time, pos);
                relinked += 1;
            }
        })
        .map_err(io("recover the timer log"))?;
    // A slot that disagrees with the log — pointing past it (its units were lost in a machine
    // crash while the wheel page was written back), at a damaged unit, or damaged itself —
    // makes the wheel untrustworthy: rebuild it from the log, and re-place every pending
    // message (from the pending floor) in case a damaged unit held one.
    // Damaged timer-log segments were removed: what they held is re-placed from the system
    // topic, as for a wheel that disagrees with the log.
    let mut bad = removed.len() as u64;
    if bad > 0 {
        tracing::warn!(?removed, "timer-log segments were damaged and removed; re-placing pending messages");
    }
    wheel.for_each_used(|i, s| {
        // Fired slots are only checked for a damaged time (which could hide a live one).
        let ok = if s.time >= read_time {
            wheel.slot_consistent(i, &s, |pos| log.read(pos))
        } else {
            wheel::slot_time_fits(geo, i, &s)
        };
        if !ok {
            bad += 1;
        }
    });
    if bad > 0 {
        tracing::warn!(slots = bad, "wheel slots disagree with the timer log; rebuilding the wheel");
        wheel.reset();
        relinked = 0;
        log.scan(log.min_pos(), |pos, u| {
            if u.slot_time >= read_time {
                wheel.link(u.slot_time, pos);
                relinked += 1;
            }
        });
    }
    Ok((log, wheel, end, relinked, bad))
}

/// What start-up counted of the messages still scheduled.
struct PendingCount {
    n: u64,
    /// The first system-topic offset still scheduled (or the end).
    floor: u64,
    per_topic: HashMap<String, i64>,
    congestion: Congestion,
}

/// Counts the messages still scheduled, per topic and in a fresh congestion index, from the
/// pending floor `start` on (the cost is proportional to the messages scheduled since the
/// oldest one still pending), and settles cells left FIRING by a crash or power cut: DELIVERED
/// if the log holds the fired copy ([`fired_copies`]), else back to SCHEDULED, to fire again.
/// Runs before the stages start, on a thread of its own while the timer log is recovered.
fn count_pending(
    states: &StateCells,
    sys_topic: &Topic,
    store: &Store,
    start: u64,
    congestion: Congestion,
) -> Result<PendingCount, TimerError> {
    let cq = &sys_topic.queues[0];
    let mut tally = Tally::default();
    let mut floor = start;
    let mut floor_moving = true;
    let mut firing = Vec::new();
    for off in start..cq.next() {
        let mut s = states.get(off).map_err(io("read a state cell"))?;
        if s > state::FIRING {
            // Not a state (a damaged byte; cells carry no checksum): at-least-once wins.
            tracing::error!(cell = off, value = s, "invalid timer state cell; treating it as scheduled");
            states.set(off, state::SCHEDULED).map_err(io("reset a state cell"))?;
            s = state::SCHEDULED;
        }
        if s == state::FIRING {
            // A fire not yet settled when the previous run stopped: decided after this loop.
            floor_moving = false;
            firing.push(off);
            continue;
        }
        if s == state::SCHEDULED {
            if tally.count(states, sys_topic, store, off)? {
                floor_moving = false;
            } else if floor_moving {
                floor = off + 1;
            }
        } else if floor_moving {
            floor = off + 1;
        }
    }
    // FIRING cells: the fired copy is in the log (stored, and this process crashed before the
    // log was known durable), or not (a power cut took it, or the append never happened).
    let mut scheduled_again = Vec::new();
    if !firing.is_empty() {
        let mut targets: Vec<(u64, String, i64, String)> = Vec::new(); // (cell, topic, due, id)
        for &off in &firing {
            let rec = cq.get(off).and_then(|e| store.read(e.log_offset).map(|r| (e.log_offset, r)));
            let found = rec.as_ref().and_then(|(at, r)| {
                let rec = r.decode().ok()?;
                let topic = rec.property(PROP_TOPIC)?.to_string();
                Some((topic, rec.deliver_at_ms, MessageId { offset: *at, crc: rec.crc }.to_string()))
            });
            match found {
                Some((topic, due, id)) => targets.push((off, topic, due, id)),
                None => scheduled_again.push(off), // unreadable: handled as scheduled below
            }
        }
        let copies = fired_copies(store, &targets);
        if targets.iter().any(|t| copies.contains(&t.3)) {
            // DELIVERED only once the copies are durable (after a crash they may be in the
            // page cache alone).
            store.flush_all()?;
        }
        let mut delivered = 0u64;
        for (off, _, _, id) in &targets {
            if copies.contains(id) {
                states.set(*off, state::DELIVERED).map_err(io("settle a state cell"))?;
                delivered += 1;
            } else {
                scheduled_again.push(*off);
            }
        }
        tracing::info!(
            firing = firing.len(),
            delivered,
            fire_again = firing.len() as u64 - delivered,
            "timer: fires the previous run had not settled"
        );
    }
    for off in scheduled_again {
        states.set(off, state::SCHEDULED).map_err(io("reset a state cell"))?;
        tally.count(states, sys_topic, store, off)?;
    }
    let Tally { n, per_topic, mut times } = tally;
    // In time order the index's updates touch its memory in order: `TimerEngine::start` with
    // 1M pending at random times took 0.87 s in send order, 0.37 s sorted (`enqueue` bench).
    times.sort_unstable();
    let mut congestion = congestion;
    times.iter().for_each(|&t| congestion.add(t, 1));
    Ok(PendingCount { n, floor, per_topic, congestion })
}

/// What [`count_pending`] counts of the messages still scheduled.
#[derive(Default)]
struct Tally {
    n: u64,
    per_topic: HashMap<String, i64>,
    times: Vec<i64>,
}

impl Tally {
    /// Counts the scheduled message of cell `off`; `false` if its record is unreadable. Such a
    /// message can never fire: it is made final (CANCELLED) and not counted, so that
    /// dequeue-get-message, which uncounts such a record when it meets one it counted, never
    /// uncounts it.
    fn count(&mut self, states: &StateCells, sys_topic: &Topic, store: &Store, off: u64) -> Result<bool, TimerError> {
        let read = sys_topic.queues[0].get(off).and_then(|e| store.read(e.log_offset));
        let rec = read.as_ref().and_then(|r| r.decode().ok());
        let Some((rec, topic)) = rec.and_then(|rec| rec.property(PROP_TOPIC).map(|t| (rec, t))) else {
            tracing::error!(offset = off, "scheduled record unreadable; it can never fire");
            states.set(off, state::CANCELLED).map_err(io("finish a state cell"))?;
            return Ok(false);
        };
        match self.per_topic.get_mut(topic) {
            Some(c) => *c += 1,
            None => drop(self.per_topic.insert(topic.to_string(), 1)),
        }
        self.times.push(rec.deliver_at_ms);
        self.n += 1;
        Ok(true)
    }
}

/// The ids (`PROP_ID`) of fired copies stored in the topics of `targets` (cell, topic, deliver
/// time, id) since the earliest of their deliver times: a copy is never stored before its time,
/// and store times never go backwards, so each queue is read backwards from its end until a
/// record stored earlier. Costs the messages stored since then.
fn fired_copies(store: &Store, targets: &[(u64, String, i64, String)]) -> std::collections::HashSet<String> {
    let mut out = std::collections::HashSet::new();
    let Some(since) = targets.iter().map(|t| t.2).min() else { return out };
    let mut topics: Vec<&str> = targets.iter().map(|t| t.1.as_str()).collect();
    topics.sort_unstable();
    topics.dedup();
    for name in topics {
        let Some(topic) = store.topics().get(name) else { continue };
        for q in &topic.queues {
            for i in (0..q.next()).rev() {
                let Some(r) = q.get(i).and_then(|e| store.read(e.log_offset)) else { continue };
                let Ok(rec) = r.decode() else { continue };
                if rec.store_ms < since {
                    break;
                }
                if let Some(id) = rec.property(PROP_ID) {
                    out.insert(id.to_string());
                }
            }
        }
    }
    out
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
        let states = StateCells::open(&opts.dir.join("state")).map_err(io("open the state cells"))?;
        // Cells past the end of the system topic belong to records a power cut took (a cancel
        // of a message whose send was not yet durable): clear them before new messages get
        // those offsets. The checkpoint's positions cannot be past that end either.
        let sys_end = sys_topic.queues[0].next();
        let cleared = states.clear_from(sys_end).map_err(io("clear the state cells past the system topic"))?;
        if cleared > 0 {
            tracing::warn!(from = sys_end, cells = cleared, "cleared state cells of messages a power cut took");
        }
        let pending_floor = ckpt.map_or(0, |c| c.pending_floor).min(sys_end);
        // Count what is pending on a second thread while this one recovers the timer log and
        // checks the wheel against it: both read every pending message once (10M pending:
        // several seconds each), and neither depends on the other.
        let ((log, wheel, end, relinked, bad), counted) = std::thread::scope(|scope| {
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
        let enqueue_offset = if bad > 0 { pending_floor } else { ckpt.map_or(0, |c| c.enqueue_offset).min(sys_end) };
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
            lateness: Mutex::new(crate::histogram::new()),
            counters: Counters::default(),
            doorbell,
            started_ms: now,
            checkpoint_path,
            last_checkpoint: Mutex::new(ckpt),
            unsettled: Mutex::new(Vec::new()),
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

    /// Resolves a scheduled message id given for `topic`: (state-cell index, deliver_at_ms).
    fn lookup(&self, topic: &str, id: MessageId) -> Result<(u64, i64), TimerError> {
        let r = self.core.store.read_id(id).ok_or(TimerError::NotFound)?;
        let rec = r.decode().map_err(|_| TimerError::NotFound)?;
        if rec.topic != SYSTEM_TOPIC || rec.property(PROP_TOPIC) != Some(topic) {
            return Err(TimerError::NotFound);
        }
        Ok((rec.queue_offset, rec.deliver_at_ms))
    }

    /// The state and deliver time of a scheduled message.
    pub fn status(&self, topic: &str, id: MessageId) -> Result<(MessageState, i64), TimerError> {
        let (cell, at) = self.lookup(topic, id)?;
        let s = self.core.states.get(cell).map_err(io("read a state cell"))?;
        Ok((state_of(s), at))
    }

    /// Cancels a scheduled message: O(1), one CAS, then an `msync` of its cell's page, so
    /// `Ok` guarantees it never becomes visible, even after a power cut (under either flush
    /// policy). Blocks for that fsync: call it off the async runtime.
    pub fn cancel(&self, topic: &str, id: MessageId) -> Result<i64, TimerError> {
        let (cell, at) = self.lookup(topic, id)?;
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
            _ => Err(TimerError::AlreadyDelivered),
        }
    }

    /// Scheduled messages not yet fired or cancelled, for `topic`.
    pub fn pending_for(&self, topic: &str) -> i64 {
        self.core.pending.lock().get(topic).copied().unwrap_or(0).max(0)
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
        let hung = self.supervisor.lock().stop_and_join(Duration::from_secs(10));
        if !hung.is_empty() {
            tracing::error!(?hung, "timer stages did not stop in time");
        }
        self.core.checkpoint()
    }

    /// Stops the stages wherever they are, dropping whatever is in flight between them, and
    /// writes no checkpoint: what a crash leaves behind, for recovery tests.
    /// Returns the stages that did not stop in time.
    pub fn halt_like_a_crash(&self) -> Vec<&'static str> {
        self.supervisor.lock().stop_and_join(Duration::from_secs(10))
    }

    /// Writes a checkpoint now (tests and benchmarks).
    pub fn checkpoint(&self) -> Result<(), TimerError> {
        self.core.checkpoint()
    }
}

fn state_of(s: u8) -> MessageState {
    match s {
        state::CANCELLED => MessageState::Cancelled,
        state::DELIVERED | state::FIRING => MessageState::Delivered,
        _ => MessageState::Scheduled,
    }
}

impl Core {
    /// Takes back messages that fired, were cancelled or will never fire (`topic` unknown when
    /// their record is unreadable).
    fn uncount(&self, topic: Option<&str>, deliver_at: impl IntoIterator<Item = i64>) {
        let mut cg = self.congestion.lock();
        let n = deliver_at.into_iter().map(|t| cg.add(t, -1)).count();
        drop(cg);
        if let Some(topic) = topic {
            *self.pending.lock().entry(topic.to_string()).or_insert(0) -= n as i64;
        }
    }

    /// Fires whose fired copies the commit log now holds durably become DELIVERED.
    fn settle(&self) {
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
    fn checkpoint(&self) -> Result<(), TimerError> {
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
                state::CANCELLED | state::DELIVERED => floor += 1,
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
