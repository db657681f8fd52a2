//! dequeue-put (RocketMQ's `TimerDequeuePutService`): holds ready messages by deliver time and
//! stores each for its topic at its millisecond (a chunk per append), skips cancelled ones, and
//! sends rolls back to the enqueue side.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use chime_pipeline::{queue, StageCtx};

use super::{EnqueueReq, Origin, Ready, POLL};
use crate::store::topics::Topic;
use crate::timer::state;
use crate::timer::Core;

/// Most messages stored by one append when firing: large enough to amortise the writer lock,
/// small enough that the first of a burst are visible within a millisecond or two.
const RELEASE_CHUNK: usize = 1000;

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
pub(super) fn dequeue_put(
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
    let mut by_topic: Vec<(Arc<Topic>, Option<u16>, Vec<Ready>)> = Vec::new();
    for r in due {
        let (topic, queue, _) = r.out.as_ref().expect("rolls never reach release");
        match by_topic.iter_mut().find(|(t, q, _)| Arc::ptr_eq(t, topic) && q == queue) {
            Some((_, _, v)) => v.push(r),
            None => by_topic.push((topic.clone(), *queue, vec![r])),
        }
    }
    let mut failed = Vec::new();
    for (topic, queue, group) in by_topic {
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
                        recs.push(r.out.expect("not a roll").2);
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
            match core.store.append_encoded(&topic, queue, &recs) {
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
                        failed.push(Ready { fire, out: Some((topic.clone(), queue, rec)) });
                    }
                }
            }
        }
    }
    failed
}
