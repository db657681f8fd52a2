//! The bodies of the five timer stages, and the checkpoint loop.
//!
//! Queues (every one bounded and blocking when full, except the roll queue):
//! - `enqueue_put` ring (disruptor): enqueue-get → enqueue-put;
//! - `dequeue_get_message`: dequeue-get and enqueue-put (already-due messages) → dequeue-get-message;
//! - `dequeue_put`: dequeue-get-message → dequeue-put;
//! - rolls: dequeue-put → enqueue-get, unbounded: dequeue-put must never block on the enqueue
//!   side, or the cycle enqueue-put → dequeue → enqueue-put could deadlock. It holds at most the
//!   rolled messages of the slots being fired.
//!
//! Every blocking send re-checks the stop flag at least every 50 ms. An item dropped at stop
//! was never marked done, so the checkpoint does not pass it and a restart redoes it.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use chime_pipeline::{bounded, queue, ring, QueueStats, StageCtx, Supervisor};

use super::slot::Placement;
use super::state;
use super::timerlog::{Unit, FLAG_ROLL};
use super::{io, Core, TimerError, PROP_ID, PROP_TOPIC, SYSTEM_PROP_PREFIX, SYSTEM_TOPIC};
use crate::store::topics::Topic;
use crate::store::{record, MessageId};

/// A message on its way into the wheel.
#[derive(Debug, Clone, Copy, Default)]
struct EnqueueReq {
    sys_offset: u64,
    log_offset: u64,
    log_size: u32,
    deliver_at: i64,
    /// The slot a rolled message comes from (`None` for a new one).
    from_slot: Option<i64>,
}

#[derive(Debug, Clone, Copy)]
enum Origin {
    /// Walked from this slot by dequeue-get.
    Slot(i64),
    /// Already due when enqueue-put placed it.
    Direct,
}

#[derive(Debug, Clone, Copy)]
struct FireReq {
    unit: Unit,
    origin: Origin,
}

struct Ready {
    fire: FireReq,
    /// The record to store, encoded ahead of its time (during the lookahead) so that storing
    /// it at its millisecond is a seal and a copy. `None` for a roll.
    out: Option<Fired>,
}

/// A fired message's topic and its record, encoded but not yet sealed.
type Fired = (Arc<Topic>, Vec<u8>);

/// What dequeue-get-message finds for a unit to fire.
enum Source {
    /// The record to store.
    Fire(Fired),
    /// The scheduled record is damaged (or lacks its topic): it can never fire.
    Damaged,
    /// The unit names a record a crash recovery cut: not this message's unit any more.
    Stale,
}

/// Longest a stage blocks before re-checking the stop flag (and a manual clock in tests).
const POLL: Duration = Duration::from_millis(20);

/// Failpoint `timer::hold_enqueue_get=return(DIR)`: the enqueue-get stage of the timer whose
/// directory is DIR reads nothing from the system topic while it is set, so a test can act on
/// messages stored but not yet read (other engines in the same test process go on).
pub const HOLD_ENQUEUE_GET: &str = "timer::hold_enqueue_get";

fn held_by_test(_dir: &std::path::Path) -> bool {
    fail::fail_point!(HOLD_ENQUEUE_GET, |arg: Option<String>| arg.is_some_and(|d| std::path::Path::new(&d) == _dir));
    false
}

/// Most messages stored by one append when firing: large enough to amortise the writer lock,
/// small enough that the first of a burst are visible within a millisecond or two.
const RELEASE_CHUNK: usize = 1000;

fn disk_full(e: &TimerError) -> bool {
    match e {
        TimerError::Io { source, .. } => crate::store::fault::is_disk_full(source),
        TimerError::Store(e) => e.is_disk_full(),
        _ => false,
    }
}

fn send<T>(tx: &queue::Sender<T>, mut item: T, ctx: &StageCtx) -> bool {
    loop {
        match tx.send_timeout(item, Duration::from_millis(50)) {
            Ok(()) => return true,
            Err(crossbeam_channel::SendTimeoutError::Timeout(back)) => {
                if ctx.stopped() {
                    return false;
                }
                item = back;
            }
            Err(crossbeam_channel::SendTimeoutError::Disconnected(_)) => return false,
        }
    }
}

type Queues = Vec<(&'static str, Arc<QueueStats>)>;

pub(super) fn spawn(
    core: &Arc<Core>,
    enqueue_offset: u64,
    bell: crossbeam_channel::Receiver<()>,
) -> Result<(Supervisor, Queues), TimerError> {
    let cap = core.opts.queue_capacity;
    let mut sup = Supervisor::new();
    let (get_tx, get_rx) = bounded::<FireReq>("dequeue_get_message", cap);
    let (put_tx, put_rx) = bounded::<Ready>("dequeue_put", cap);
    let (roll_tx, roll_rx) = queue::unbounded::<EnqueueReq>("rolls");

    let (c, tx, ctx) = (core.clone(), get_tx.clone(), sup.ctx("enqueue-put"));
    let ring_size = cap.next_power_of_two();
    let producer =
        ring("enqueue-put", ring_size, move |req: &EnqueueReq, _| enqueue_put(&c, req, &tx, &ctx), sup.tripper());
    let queues = vec![
        ("enqueue_put", producer.stats()),
        ("dequeue_get_message", get_rx.stats()),
        ("dequeue_put", put_rx.stats()),
    ];

    let spawn_err = io("spawn a timer stage");
    let c = core.clone();
    sup.spawn("enqueue-get", move |ctx| enqueue_get(&c, producer, roll_rx, bell, enqueue_offset, &ctx))
        .map_err(spawn_err)?;
    let c = core.clone();
    sup.spawn("dequeue-get", move |ctx| dequeue_get(&c, &get_tx, &ctx)).map_err(io("spawn a timer stage"))?;
    let c = core.clone();
    sup.spawn("dequeue-get-msg", move |ctx| dequeue_get_message(&c, &get_rx, &put_tx, &ctx))
        .map_err(io("spawn a timer stage"))?;
    let c = core.clone();
    let bell_tx = core.doorbell.clone();
    sup.spawn("dequeue-put", move |ctx| dequeue_put(&c, &put_rx, &roll_tx, &bell_tx, &ctx))
        .map_err(io("spawn a timer stage"))?;
    let c = core.clone();
    let trip = sup.tripper();
    sup.spawn("timer-checkpoint", move |ctx| {
        let every = c.opts.checkpoint_interval;
        let mut reporter = super::report::Reporter::new();
        let mut since_report = Duration::ZERO;
        while !ctx.stopped() {
            let mut slept = Duration::ZERO;
            while slept < every && !ctx.stopped() {
                std::thread::sleep(POLL.min(every));
                slept += POLL.min(every);
                since_report += POLL.min(every);
                if since_report >= Duration::from_secs(1) {
                    since_report = Duration::ZERO;
                    reporter.tick(&c);
                }
            }
            if ctx.stopped() {
                return;
            }
            match c.checkpoint() {
                Ok(()) => {}
                // A full disk heals: the previous checkpoint stays valid; retry next interval.
                Err(e) if disk_full(&e) => tracing::warn!(error = %e, "timer checkpoint skipped: disk full"),
                Err(e) => {
                    trip(format!("timer checkpoint failed: {e}"));
                    return;
                }
            }
        }
    })
    .map_err(io("spawn a timer stage"))?;
    Ok((sup, queues))
}

/// enqueue-get: reads the system topic's consume queue from the checkpointed offset and
/// publishes each scheduled message (with its deliver time) into the ring; also feeds rolls.
fn enqueue_get(
    core: &Core,
    mut ring: chime_pipeline::RingProducer<EnqueueReq>,
    rolls: queue::Receiver<EnqueueReq>,
    bell: crossbeam_channel::Receiver<()>,
    mut next: u64,
    ctx: &StageCtx,
) {
    let cq = &core.sys_topic.queues[0];
    while !ctx.stopped() {
        let mut busy = false;
        while let Ok(r) = rolls.try_recv() {
            if !ring.publish(r, ctx) {
                return;
            }
            busy = true;
        }
        let mut n = 0;
        while next < cq.next() && n < 4096 && !held_by_test(&core.opts.dir) {
            let Some(e) = cq.get(next) else { break };
            let Some(r) = core.store.read(e.log_offset) else { break }; // not readable yet: retry
            match r.decode().ok().map(|rec| rec.deliver_at_ms) {
                Some(deliver_at) => {
                    let req = EnqueueReq {
                        sys_offset: next,
                        log_offset: e.log_offset,
                        log_size: e.size,
                        deliver_at,
                        from_slot: None,
                    };
                    if !ring.publish(req, ctx) {
                        return;
                    }
                }
                None => {
                    tracing::error!(offset = next, "corrupt scheduled record (checksum); skipping it");
                    core.progress.lock().placed(next);
                }
            }
            next += 1;
            n += 1;
            busy = true;
        }
        core.counters.enqueue_next.store(next, Ordering::Relaxed);
        core.counters.enqueue_get_processed.fetch_add(n, Ordering::Relaxed);
        if !busy {
            let _ = bell.recv_timeout(POLL);
        }
    }
}

/// enqueue-put: places one message: a timer-log unit linked into its slot (or a roll slot), or
/// straight to the dequeue side if its slot is already closed.
fn enqueue_put(core: &Core, req: &EnqueueReq, direct: &queue::Sender<FireReq>, ctx: &StageCtx) {
    let finish = |core: &Core| {
        let mut p = core.progress.lock();
        match req.from_slot {
            Some(s) => p.slot_done(s),
            None => p.placed(req.sys_offset),
        }
    };
    match core.states.get(req.sys_offset) {
        Ok(state::CANCELLED) | Ok(state::DELIVERED) => return finish(core),
        Ok(_) => {}
        Err(e) => panic!("state cell of {} unreadable: {e}", req.sys_offset),
    }
    let mut warned = false;
    loop {
        match place(core, req, direct, ctx, &finish) {
            Ok(()) => return,
            // A full disk heals: retry until space returns, placing afresh each time (the cursor
            // is not held while waiting, so sends, stats and dequeue-get carry on). If the
            // pipeline stops meanwhile the message stays unplaced and not done, so the
            // checkpoint stays behind it and the restart places it.
            Err(e) if crate::store::fault::is_disk_full(&e) => {
                if ctx.stopped() {
                    return;
                }
                if !std::mem::replace(&mut warned, true) {
                    tracing::warn!(error = %e, "timer log: disk full; retrying until space returns");
                }
                std::thread::sleep(POLL);
            }
            // Unplaced and not marked done: the checkpoint stays behind it; the panic stops the
            // pipeline (the supervisor reports it) rather than silently losing the message.
            Err(e) => panic!("timer log append failed: {e}"),
        }
    }
}

/// Places one message under the cursor lock: a timer-log unit linked into its slot (or a roll
/// slot), or straight to the dequeue side if its slot is already closed; then `finish`es it.
fn place(
    core: &Core,
    req: &EnqueueReq,
    direct: &queue::Sender<FireReq>,
    ctx: &StageCtx,
    finish: &dyn Fn(&Core),
) -> std::io::Result<()> {
    let now = core.clock.now_ms();
    let cursor = core.cursor.lock();
    let committed = core.progress.lock().committed_read_time(*cursor);
    let placement = core.geo.place(req.deliver_at, *cursor, committed);
    let (slot, flags) = match placement {
        Placement::Due => {
            drop(cursor);
            let unit = Unit {
                prev: 0,
                deliver_at: req.deliver_at,
                slot_time: core.geo.slot_time(req.deliver_at),
                log_offset: req.log_offset,
                log_size: req.log_size,
                flags: 0,
                sys_offset: req.sys_offset,
                enqueued_ms: now,
            };
            core.progress.lock().direct_begin(req.sys_offset);
            finish(core);
            // If the pipeline is stopping and this is dropped, it stays "in flight": the
            // checkpoint cannot pass it, so the restart places it again.
            send(direct, FireReq { unit, origin: Origin::Direct }, ctx);
            return Ok(());
        }
        Placement::Wheel(s) => (s, 0),
        Placement::Roll(s) => (s, FLAG_ROLL),
    };
    let unit = Unit {
        prev: core.wheel.get(slot).last,
        deliver_at: req.deliver_at,
        slot_time: slot,
        log_offset: req.log_offset,
        log_size: req.log_size,
        flags,
        sys_offset: req.sys_offset,
        enqueued_ms: now,
    };
    let pos = core.log.append(&unit)?;
    core.wheel.link(slot, pos);
    drop(cursor);
    finish(core);
    Ok(())
}

/// dequeue-get: walks slots in time order, each `lookahead` before its time, handing every
/// unit of the slot to dequeue-get-message.
fn dequeue_get(core: &Core, tx: &queue::Sender<FireReq>, ctx: &StageCtx) {
    let precision = core.geo.precision_ms;
    while !ctx.stopped() {
        let now = core.clock.now_ms();
        let mut cursor = core.cursor.lock();
        let t = *cursor;
        if t > now + core.opts.lookahead_ms {
            drop(cursor);
            let wait = (t - core.opts.lookahead_ms - now).clamp(1, POLL.as_millis() as i64);
            std::thread::sleep(Duration::from_millis(wait as u64));
            continue;
        }
        let mut progress = core.progress.lock();
        if !core.geo.may_close(t, progress.committed_read_time(t)) {
            // A span ahead of what has fired: wait for the fires (and rolls) in flight.
            drop((progress, cursor));
            std::thread::sleep(Duration::from_millis(2));
            continue;
        }
        let slot = core.wheel.get(t);
        *cursor = t + precision;
        progress.slot_add(t, 0);
        drop((progress, cursor));
        // Hand the slot's units on in deliver-time order (placement order within a millisecond),
        // not in the list's own order (newest placed first). dequeue-put holds at most
        // `queue_capacity` messages; a slot bigger than that, read in any other order, would
        // fill it with messages due late in the slot and make those due first wait behind them
        // (a 1M burst spread over its second came out up to 2 s late that way). The walk keeps
        // 16 bytes per unit and reads each unit twice (the second read copies it out of the
        // mapped log).
        let mut chain = Vec::new();
        let mut pos1 = slot.last;
        while pos1 != 0 {
            let Some(unit) = core.log.read(pos1 - 1) else {
                tracing::error!(slot = t, pos = pos1 - 1, "timer-log unit unreadable; the rest of the slot is lost");
                break;
            };
            if unit.slot_time != t {
                break;
            }
            chain.push((unit.deliver_at, pos1 - 1));
            pos1 = unit.prev;
        }
        chain.sort_unstable();
        let mut n = 0u64;
        for &(_, pos) in &chain {
            let Some(unit) = core.log.read(pos) else {
                tracing::error!(slot = t, pos, "timer-log unit unreadable on the second read; skipping it");
                continue;
            };
            core.progress.lock().slot_add(t, 1);
            if !send(tx, FireReq { unit, origin: Origin::Slot(t) }, ctx) {
                return;
            }
            n += 1;
        }
        core.progress.lock().slot_seal(t);
        core.counters.dequeue_get_processed.fetch_add(n, Ordering::Relaxed);
    }
}

impl Core {
    /// Marks a fire request finished (fired, skipped or re-placed).
    fn done(&self, f: &FireReq) {
        let mut p = self.progress.lock();
        match f.origin {
            Origin::Slot(s) => p.slot_done(s),
            Origin::Direct => p.direct_done(f.unit.sys_offset),
        }
    }

    /// The record to store for its topic when `unit` fires, built from the original record's
    /// bytes (its system properties dropped, its id added) without decoding it into owned values.
    /// `Err`: its topic had to be created again (the send created it) and could not be, for now.
    fn fired_message(&self, unit: &Unit) -> Result<Source, crate::store::StoreError> {
        // The unit must still name what the system topic holds at its queue offset. A crash in
        // the middle of a batch can leave units for records that recovery then cut (enqueue-get
        // reads a record as soon as its own bytes are published, before its batch is
        // complete); their queue and log offsets are reused by later records, which have units
        // of their own. Such a stale unit is skipped without touching the state cell, which
        // now belongs to the later record.
        match self.sys_topic.queues[0].get(unit.sys_offset) {
            Some(e) if e.log_offset == unit.log_offset => {}
            _ => return Ok(Source::Stale),
        }
        let Some(r) = self.store.read(unit.log_offset) else { return Ok(Source::Damaged) };
        let Ok(rec) = r.decode() else { return Ok(Source::Damaged) };
        // The same offsets for a later record (the first one after the cut) whose deliver time
        // differs: firing it now could be early.
        if rec.topic != SYSTEM_TOPIC || rec.queue_offset != unit.sys_offset || rec.deliver_at_ms != unit.deliver_at {
            return Ok(Source::Stale);
        }
        let Some(topic) = rec.property(PROP_TOPIC) else { return Ok(Source::Damaged) };
        let t = match self.store.topics().get(topic) {
            Some(t) => t,
            None => self.store.topics().create_unlimited(topic, self.opts.default_queues)?.0,
        };
        let id = MessageId { offset: unit.log_offset, crc: rec.crc }.to_string();
        let mut out = Vec::new();
        record::encode_derived(&mut out, &rec, &t.name, unit.deliver_at, SYSTEM_PROP_PREFIX, (PROP_ID, &id));
        Ok(Source::Fire((t, out)))
    }
}

/// dequeue-get-message: reads the original record of each unit to fire (skipping cancelled
/// ones early); rolls pass through untouched.
fn dequeue_get_message(core: &Core, rx: &queue::Receiver<FireReq>, tx: &queue::Sender<Ready>, ctx: &StageCtx) {
    while !ctx.stopped() {
        let f = match rx.recv_timeout(POLL) {
            Ok(f) => f,
            Err(queue::RecvTimeoutError::Timeout) => continue,
            Err(queue::RecvTimeoutError::Disconnected) => return,
        };
        let ready = if f.unit.is_roll() {
            Ready { fire: f, out: None }
        } else {
            match core.states.get(f.unit.sys_offset) {
                Ok(state::CANCELLED) | Ok(state::DELIVERED) => {
                    core.done(&f);
                    continue;
                }
                _ => {}
            }
            let mut warned: Option<std::time::Instant> = None;
            let out = loop {
                match core.fired_message(&f.unit) {
                    Ok(out) => break out,
                    // Its topic had to be created again and cannot be (a full disk, or a damaged
                    // data directory). Dropping the message would break the promise of a 201, so
                    // the fire path waits and retries, and says so every minute (the dequeue
                    // lag shows it too). Not marked done: if the pipeline stops meanwhile, the
                    // restart fires it.
                    Err(e) => {
                        if ctx.stopped() {
                            return;
                        }
                        if warned.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
                            warned = Some(std::time::Instant::now());
                            let disk_full = e.is_disk_full();
                            tracing::warn!(error = %e, disk_full, "cannot create the topic of a message to fire; firing waits and retries");
                        }
                        std::thread::sleep(POLL);
                    }
                }
            };
            match out {
                Source::Fire(out) => Ready { fire: f, out: Some(out) },
                Source::Stale => {
                    tracing::warn!(
                        sys_offset = f.unit.sys_offset,
                        log_offset = f.unit.log_offset,
                        "stale timer-log unit (its record was cut by crash recovery); skipping it"
                    );
                    core.done(&f);
                    continue;
                }
                Source::Damaged => {
                    // Never fireable: final, and no longer pending (its topic is unknown, so
                    // only the totals can be corrected). Start-up marks the ones it finds the
                    // same way without counting them, so each is uncounted at most once.
                    if core.states.transition(f.unit.sys_offset, state::SCHEDULED, state::CANCELLED).ok()
                        == Some(state::SCHEDULED)
                    {
                        tracing::error!(
                            log_offset = f.unit.log_offset,
                            "scheduled record unreadable; it can never fire"
                        );
                        core.uncount(None, [f.unit.deliver_at]);
                    }
                    core.done(&f);
                    continue;
                }
            }
        };
        if !send(tx, ready, ctx) {
            return;
        }
    }
}

/// Messages waiting in dequeue-put for their millisecond, earliest first.
#[derive(Default)]
struct Held {
    heap: BinaryHeap<Reverse<(i64, u64)>>,
    items: HashMap<u64, Ready>,
    seq: u64,
}

impl Held {
    fn push(&mut self, r: Ready) {
        self.seq += 1;
        self.heap.push(Reverse((r.fire.unit.deliver_at, self.seq)));
        self.items.insert(self.seq, r);
    }

    fn next_due(&self) -> Option<i64> {
        self.heap.peek().map(|Reverse((d, _))| *d)
    }

    /// Up to `max` of the messages due at or before `now`, earliest first.
    fn take_due(&mut self, now: i64, max: usize) -> Vec<Ready> {
        let mut due = Vec::new();
        while let Some(Reverse((d, s))) = self.heap.peek().copied() {
            if d > now || due.len() == max {
                break;
            }
            self.heap.pop();
            due.extend(self.items.remove(&s));
        }
        due
    }

    fn len(&self) -> usize {
        self.items.len()
    }
}

/// dequeue-put: holds ready messages by deliver time and stores each for its topic at its
/// millisecond (batched per topic); re-places rolls; skips cancelled messages.
fn dequeue_put(
    core: &Core,
    rx: &queue::Receiver<Ready>,
    rolls: &queue::Sender<EnqueueReq>,
    bell: &crossbeam_channel::Sender<()>,
    ctx: &StageCtx,
) {
    let cap = core.opts.queue_capacity;
    let mut held = Held::default();
    let accept = |r: Ready, held: &mut Held| {
        if r.out.is_some() {
            return held.push(r);
        }
        let u = r.fire.unit;
        let Origin::Slot(from) = r.fire.origin else { return core.done(&r.fire) };
        core.counters.rolled.fetch_add(1, Ordering::Relaxed);
        let req = EnqueueReq {
            sys_offset: u.sys_offset,
            log_offset: u.log_offset,
            log_size: u.log_size,
            deliver_at: u.deliver_at,
            from_slot: Some(from),
        };
        let _ = rolls.send(req); // unbounded: never blocks
        let _ = bell.try_send(());
    };
    let poll_ms = POLL.as_millis() as i64;
    while !ctx.stopped() {
        let now = core.clock.now_ms();
        let wait = held.next_due().map_or(poll_ms, |d| (d - now).clamp(0, poll_ms));
        if held.len() < cap {
            if wait > 0 {
                match rx.recv_timeout(Duration::from_millis(wait as u64)) {
                    Ok(r) => accept(r, &mut held),
                    Err(queue::RecvTimeoutError::Timeout) => {}
                    Err(queue::RecvTimeoutError::Disconnected) => return,
                }
            }
            while held.len() < cap {
                match rx.try_recv() {
                    Ok(r) => accept(r, &mut held),
                    Err(_) => break,
                }
            }
        } else if wait > 0 {
            std::thread::sleep(Duration::from_millis(wait as u64));
        }
        // Release what is due by the clock read now (never before its millisecond), a chunk at
        // a time, so the first chunk of a burst is visible while later ones are still stored.
        loop {
            let due = held.take_due(core.clock.now_ms(), RELEASE_CHUNK);
            if due.is_empty() {
                break;
            }
            let failed = release(core, due);
            if !failed.is_empty() {
                // The store is unavailable: hold them and retry shortly.
                failed.into_iter().for_each(|r| held.push(r));
                std::thread::sleep(Duration::from_millis(100));
                break;
            }
        }
    }
}

/// Stores due messages for their topics, at most `RELEASE_CHUNK` per append. Returns those that could
/// not be stored.
fn release(core: &Core, due: Vec<Ready>) -> Vec<Ready> {
    let mut by_topic: Vec<(Arc<Topic>, Vec<Ready>)> = Vec::new();
    for r in due {
        let topic = &r.out.as_ref().expect("rolls never reach release").0;
        match by_topic.iter_mut().find(|(t, _)| Arc::ptr_eq(t, topic)) {
            Some((_, v)) => v.push(r),
            None => by_topic.push((topic.clone(), vec![r])),
        }
    }
    let mut failed = Vec::new();
    for (topic, group) in by_topic {
        let mut group = group.into_iter().peekable();
        while group.peek().is_some() {
            let (mut fires, mut recs) = (Vec::new(), Vec::new());
            for r in group.by_ref() {
                let cell = r.fire.unit.sys_offset;
                match core.states.transition(cell, state::SCHEDULED, state::FIRING) {
                    // Anything else: cancelled, or already fired by another unit of the same
                    // message (re-placed after a restart). Start-up turned crash-interrupted
                    // FIRING cells back to SCHEDULED, so FIRING here is a fire in progress.
                    Ok(state::SCHEDULED) => {
                        fires.push(r.fire);
                        recs.push(r.out.expect("not a roll").1);
                    }
                    Ok(_) => core.done(&r.fire),
                    Err(e) => panic!("state cell {cell} unreadable: {e}"),
                }
                if fires.len() == RELEASE_CHUNK {
                    break;
                }
            }
            if fires.is_empty() {
                continue;
            }
            match core.store.append_encoded(&topic, &recs) {
                Ok(res) => {
                    // The cells stay FIRING until the log is durable past `res.end` (`settle`).
                    let cells = fires.iter().map(|f| f.unit.sys_offset).collect();
                    core.unsettled.lock().push((res.end, cells));
                    let mut late = core.lateness.lock();
                    for (f, a) in fires.iter().zip(&res.messages) {
                        let u = &f.unit;
                        let lateness = (a.store_ms - u.deliver_at).max(0) as u64;
                        let _ = late.record(lateness);
                        if u.deliver_at < core.started_ms && lateness > 1000 {
                            core.counters.late_after_downtime.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    drop(late);
                    core.counters.fired.fetch_add(fires.len() as u64, Ordering::Relaxed);
                    core.uncount(Some(&topic.name), fires.iter().map(|f| f.unit.deliver_at));
                    fires.iter().for_each(|f| core.done(f));
                }
                Err(e) => {
                    tracing::error!(error = %e, topic = %topic.name, "cannot store fired messages; retrying");
                    for (fire, rec) in fires.into_iter().zip(recs) {
                        let _ = core.states.transition(fire.unit.sys_offset, state::FIRING, state::SCHEDULED);
                        failed.push(Ready { fire, out: Some((topic.clone(), rec)) });
                    }
                }
            }
        }
    }
    failed
}
