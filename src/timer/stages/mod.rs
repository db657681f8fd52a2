//! The five timer stages, one file each and named after RocketMQ's five services, and the
//! checkpointer: `enqueue_get` → `enqueue_put` → (the wheel) → `dequeue_get` →
//! `dequeue_get_message` → `dequeue_put`. This module holds what they pass to each other, the
//! queues between them and [`spawn`], which starts them under one supervisor.
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

use std::sync::Arc;
use std::time::Duration;

use chime_pipeline::{bounded, queue, ring, QueueStats, StageCtx, Supervisor};

mod checkpointer;
mod dequeue_get;
mod dequeue_get_message;
mod dequeue_put;
mod enqueue_get;
mod enqueue_put;

use dequeue_get::dequeue_get;
use dequeue_get_message::dequeue_get_message;
use dequeue_put::dequeue_put;
use enqueue_get::enqueue_get;
pub use enqueue_get::HOLD_ENQUEUE_GET;
use enqueue_put::enqueue_put;

use super::timerlog::Unit;
use super::{io, Core, TimerError};
use crate::store::topics::Topic;

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
    /// The record to store, encoded ahead of its time (during the lookahead); dequeue-put
    /// stores it staged as soon as it arrives and publishes it at its millisecond. `None` for
    /// a roll.
    out: Option<Fired>,
}

/// A fired message's topic, its queue (a message group's; `None`: round robin) and its record,
/// encoded but not yet sealed.
type Fired = (Arc<Topic>, Option<u16>, Vec<u8>);

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

fn disk_full(e: &TimerError) -> bool {
    match e {
        TimerError::Io { source, .. } => crate::store::fault::is_disk_full(source),
        TimerError::Store(e) => e.is_disk_full(),
        _ => false,
    }
}

/// How long a stage sleeps between looks at a full queue in front of it.
const FULL_NAP: Duration = Duration::from_micros(500);

/// Hands `item` to the next stage. While the queue is full, the stage sleeps until the next
/// stage has worked off a quarter of it, rather than block in crossbeam's `send`, which spins
/// and yields per item against a full queue: on two cores that burnt the CPU the next stage
/// needed (a burst keeps every queue of the fire path full for its whole length). Returns
/// false if the pipeline stops or the next stage is gone.
fn send<T>(tx: &queue::Sender<T>, mut item: T, ctx: &StageCtx) -> bool {
    let cap = tx.capacity();
    let resume_at = cap.saturating_sub((cap / 4).max(1));
    loop {
        match tx.try_send(item) {
            Ok(()) => return true,
            Err(crossbeam_channel::TrySendError::Full(back)) => item = back,
            Err(crossbeam_channel::TrySendError::Disconnected(_)) => return false,
        }
        while tx.len() > resume_at {
            if ctx.stopped() {
                return false;
            }
            std::thread::sleep(FULL_NAP);
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
    sup.spawn("timer-checkpoint", move |ctx| checkpointer::checkpointer(&c, &ctx, &trip))
        .map_err(io("spawn a timer stage"))?;
    Ok((sup, queues))
}

impl Core {
    /// Marks a fire request finished (fired, skipped or re-placed).
    fn done(&self, f: &FireReq) {
        self.done_all([(f.origin, f.unit.sys_offset)]);
    }

    /// Marks fire requests finished (each its origin and state cell), under one lock.
    fn done_all(&self, fires: impl IntoIterator<Item = (Origin, u64)>) {
        let mut p = self.progress.lock();
        for (origin, cell) in fires {
            match origin {
                Origin::Slot(s) => p.slot_done(s),
                Origin::Direct => p.direct_done(cell),
            }
        }
    }
}
