//! dequeue-put (RocketMQ's `TimerDequeuePutService`): stores each fired message for its topic
//! as soon as it arrives, *staged* (in the commit log, visible to no one), holds it by deliver
//! time, and at its millisecond *publishes* it (`crate::store::staged`): a thousand messages
//! due together become visible with one small append. It skips cancelled messages and sends
//! rolls back to the enqueue side.
//!
//! Cancel works until the publish: a message is published only if its state cell goes
//! `SCHEDULED → FIRING` first, so a cancel that won its compare-and-swap means the staged
//! copy is never named by a publish record. A message staged but not published when the
//! process stops was never marked done: the restart fires it again, and the first copy stays
//! invisible until its segment is reclaimed.

use std::collections::{BinaryHeap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use chime_pipeline::{queue, StageCtx};

use super::{EnqueueReq, Origin, Ready, POLL};
use crate::store::topics::Topic;
use crate::store::Staged;
use crate::timer::state;
use crate::timer::Core;

/// Most messages staged by one append, or published by one publish record: large enough to
/// amortise the writer lock, small enough that the first of a burst are visible at once.
const CHUNK: usize = 1000;

/// Messages held per slot of the queue in front (`timer.queue_capacity`, so 1,048,576 by
/// default): a staged message is about 100 bytes here (its record is in the log), so
/// dequeue-put can hold a burst of a million ahead of its time. Holding only 4 per slot, a
/// million due in one second were all visible 0.66–1.02 s after it; 16, 0.25–0.49 s
/// (`bench/RESULTS.md`, "Bursts").
const HOLD_PER_QUEUE_SLOT: usize = 16;

/// Most fired messages dequeue-put holds (staged or about to be) for timer options `opts`.
pub(super) fn hold_capacity(opts: &crate::timer::TimerOptions) -> usize {
    opts.queue_capacity.saturating_mul(HOLD_PER_QUEUE_SLOT).max(CHUNK)
}

/// A fired message stored ahead of its time, waiting for its millisecond (72 bytes: a burst of
/// a million is held in about 100 MB with its heap key).
struct Waiting {
    /// Its state cell (the system-topic offset of its scheduled record).
    cell: u64,
    deliver_at: i64,
    origin: Origin,
    topic: Arc<Topic>,
    queue: u16,
    staged: Staged,
    /// The staging append it came from (`Chunks`).
    chunk: u64,
}

// What the held memory figures above assume.
const _: () = assert!(std::mem::size_of::<Option<Waiting>>() == 72 && std::mem::size_of::<Key>() == 24);

/// A held message's place in the heap: its deliver time, its arrival, its slot in `Held::items`
/// (the heap moves these 24 bytes, not the message).
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Key(std::cmp::Reverse<(i64, u64)>, u32);

/// The staging appends whose messages are still held, oldest first, with how many each still
/// has: the first one's log offset is what retention must keep (`Core::staged_floor`).
#[derive(Default)]
struct Chunks {
    first_id: u64,
    live: VecDeque<(u64, usize)>,
}

impl Chunks {
    fn add(&mut self, log_offset: u64, n: usize) -> u64 {
        self.live.push_back((log_offset, n));
        self.first_id + self.live.len() as u64 - 1
    }

    fn release(&mut self, id: u64) {
        if let Some(c) = self.live.get_mut((id - self.first_id) as usize) {
            c.1 -= 1;
        }
        while self.live.front().is_some_and(|c| c.1 == 0) {
            self.live.pop_front();
            self.first_id += 1;
        }
    }

    fn floor(&self) -> u64 {
        self.live.front().map_or(u64::MAX, |c| c.0)
    }
}

#[derive(Default)]
struct Held {
    heap: BinaryHeap<Key>,
    items: Vec<Option<Waiting>>,
    free: Vec<u32>,
    seq: u64,
    chunks: Chunks,
}

impl Held {
    fn push(&mut self, w: Waiting) {
        self.seq += 1;
        let key = std::cmp::Reverse((w.deliver_at, self.seq));
        let slot = match self.free.pop() {
            Some(i) => {
                self.items[i as usize] = Some(w);
                i
            }
            None => {
                self.items.push(Some(w));
                (self.items.len() - 1) as u32
            }
        };
        self.heap.push(Key(key, slot));
    }

    fn next_due(&self) -> Option<i64> {
        self.heap.peek().map(|k| k.0 .0 .0)
    }

    /// Up to `max` of the messages due at or before `now`, earliest first.
    fn take_due(&mut self, now: i64, max: usize) -> Vec<Waiting> {
        let mut due = Vec::new();
        while due.len() < max && self.next_due().is_some_and(|d| d <= now) {
            let Key(_, slot) = self.heap.pop().expect("peeked");
            due.extend(self.items[slot as usize].take());
            self.free.push(slot);
        }
        if self.heap.is_empty() && self.items.capacity() > 4096 {
            // Give a burst's memory back.
            (self.items, self.free) = (Vec::new(), Vec::new());
        } else if self.heap.is_empty() {
            self.items.clear();
            self.free.clear();
        }
        due
    }

    fn len(&self) -> usize {
        self.heap.len()
    }
}

/// dequeue-put: stages fired messages as they arrive, publishes each at its millisecond;
/// re-places rolls; skips cancelled messages.
pub(super) fn dequeue_put(
    core: &Core,
    rx: &queue::Receiver<Ready>,
    rolls: &queue::Sender<EnqueueReq>,
    bell: &crossbeam_channel::Sender<()>,
    ctx: &StageCtx,
) {
    let hold = hold_capacity(&core.opts);
    let mut held = Held::default();
    // Fired messages received but not yet staged (at most a chunk, unless the store refuses).
    let mut incoming: Vec<Ready> = Vec::new();
    let accept = |r: Ready, incoming: &mut Vec<Ready>| {
        if r.out.is_some() {
            return incoming.push(r);
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
    // However the stage ends (a stop, a panic), what it holds is dropped, to be fired again by
    // the next start: it must not keep pinning the log meanwhile.
    let _unpin = Unpin(core);
    while !ctx.stopped() {
        // Publish what is due by the clock read now (never before its millisecond), a chunk at
        // a time, so the first chunk of a burst is visible while later ones are still published.
        if !publish_due(core, &mut held) {
            std::thread::sleep(Duration::from_millis(100)); // the store is unavailable
        }
        let now = core.clock.now_ms();
        let wait = held.next_due().map_or(poll_ms, |d| (d - now).clamp(0, poll_ms));
        if held.len() + incoming.len() < hold {
            let wait = if incoming.is_empty() { wait } else { 0 };
            if wait > 0 {
                match rx.recv_timeout(Duration::from_millis(wait as u64)) {
                    Ok(r) => accept(r, &mut incoming),
                    Err(queue::RecvTimeoutError::Timeout) => {}
                    Err(queue::RecvTimeoutError::Disconnected) => return,
                }
            }
            while incoming.len() < CHUNK && held.len() + incoming.len() < hold {
                match rx.try_recv() {
                    Ok(r) => accept(r, &mut incoming),
                    Err(_) => break,
                }
            }
        } else if wait > 0 && incoming.is_empty() {
            std::thread::sleep(Duration::from_millis(wait as u64));
        }
        if !incoming.is_empty() && !stage(core, &mut incoming, &mut held) {
            std::thread::sleep(Duration::from_millis(100)); // the store is unavailable
        }
    }
}

/// Clears the staged floor when dequeue-put ends.
struct Unpin<'a>(&'a Core);

impl Drop for Unpin<'_> {
    fn drop(&mut self) {
        self.0.staged_floor.store(u64::MAX, Ordering::Release);
    }
}

/// Stages `incoming` (each run of one topic and queue with one append); what could not be
/// stored stays in `incoming`. Returns false if the store refused.
fn stage(core: &Core, incoming: &mut Vec<Ready>, held: &mut Held) -> bool {
    let mut rest = std::mem::take(incoming).into_iter().peekable();
    let mut ok = true;
    while let Some(first) = rest.next() {
        let (topic, queue, _) = first.out.as_ref().expect("rolls are never staged");
        let (topic, queue) = (topic.clone(), *queue);
        let mut run = vec![first];
        while run.len() < CHUNK {
            let same =
                rest.peek().and_then(|r| r.out.as_ref()).is_some_and(|(t, q, _)| Arc::ptr_eq(t, &topic) && *q == queue);
            if !same {
                break;
            }
            run.extend(rest.next());
        }
        if !ok {
            incoming.extend(run);
            continue;
        }
        let q = queue.unwrap_or_else(|| topic.pick_queue());
        // Retention must see the floor before the records exist: a pass that starts meanwhile
        // could otherwise reclaim the segment they land in once the log has moved past it.
        core.staged_floor.fetch_min(core.store.write_pos(), Ordering::AcqRel);
        let mut recs: Vec<Vec<u8>> =
            run.iter_mut().map(|r| std::mem::take(&mut r.out.as_mut().expect("a fire").2)).collect();
        match core.store.append_staged(&topic, q, &mut recs) {
            Ok(staged) => {
                let chunk = held.chunks.add(staged[0].log_offset, staged.len());
                for (r, s) in run.into_iter().zip(staged) {
                    held.push(Waiting {
                        cell: r.fire.unit.sys_offset,
                        deliver_at: r.fire.unit.deliver_at,
                        origin: r.fire.origin,
                        topic: topic.clone(),
                        queue: q,
                        staged: s,
                        chunk,
                    });
                }
            }
            Err(e) => {
                tracing::error!(error = %e, topic = %topic.name, "cannot store fired messages; retrying");
                for (r, rec) in run.iter_mut().zip(recs) {
                    r.out.as_mut().expect("a fire").2 = rec;
                }
                incoming.extend(run);
                ok = false;
            }
        }
    }
    core.staged_floor.store(held.chunks.floor(), Ordering::Release);
    ok
}

/// Publishes the held messages that are due, a chunk per publish record; returns false if the
/// store refused (they stay held).
fn publish_due(core: &Core, held: &mut Held) -> bool {
    loop {
        let due = held.take_due(core.clock.now_ms(), CHUNK);
        if due.is_empty() {
            return true;
        }
        let failed = publish(core, due, &mut held.chunks);
        core.staged_floor.store(held.chunks.floor(), Ordering::Release);
        if !failed.is_empty() {
            // Still held, so their staging appends are still live in `chunks`.
            failed.into_iter().for_each(|w| held.push(w));
            return false;
        }
    }
}

/// Publishes due messages, one publish record per topic and queue. Returns those that could
/// not be published.
fn publish(core: &Core, due: Vec<Waiting>, chunks: &mut Chunks) -> Vec<Waiting> {
    let mut by_queue: Vec<(Arc<Topic>, u16, Vec<Waiting>)> = Vec::new();
    for w in due {
        match by_queue.iter_mut().find(|(t, q, _)| Arc::ptr_eq(t, &w.topic) && *q == w.queue) {
            Some((_, _, v)) => v.push(w),
            None => by_queue.push((w.topic.clone(), w.queue, vec![w])),
        }
    }
    let mut failed = Vec::new();
    for (topic, queue, group) in by_queue {
        let mut fires = Vec::with_capacity(group.len());
        for w in group {
            let cell = w.cell;
            match core.states.transition(cell, state::SCHEDULED, state::FIRING) {
                // Anything else: cancelled, or already fired by another unit of the same
                // message (re-placed after a restart). Start-up turned crash-interrupted
                // FIRING cells back to SCHEDULED, so FIRING here is a fire in progress.
                Ok(state::SCHEDULED) => fires.push(w),
                Ok(_) => {
                    chunks.release(w.chunk);
                    core.done_all([(w.origin, w.cell)]);
                }
                Err(e) => panic!("state cell {cell} unreadable: {e}"),
            }
        }
        if fires.is_empty() {
            continue;
        }
        let staged: Vec<Staged> = fires.iter().map(|w| w.staged).collect();
        match core.store.publish_staged(&topic, queue, &staged) {
            Ok(p) => {
                // The cells stay FIRING until the log is durable past `p.end` (`settle`).
                let cells = fires.iter().map(|w| w.cell).collect();
                core.unsettled.lock().push((p.end, cells));
                let mut late = core.lateness.lock();
                for w in &fires {
                    let lateness = (p.store_ms - w.deliver_at).max(0) as u64;
                    let _ = late.record(lateness);
                    if w.deliver_at < core.started_ms && lateness > 1000 {
                        core.counters.late_after_downtime.fetch_add(1, Ordering::Relaxed);
                    }
                }
                drop(late);
                core.counters.fired.fetch_add(fires.len() as u64, Ordering::Relaxed);
                core.uncount(Some(&topic.name), fires.iter().map(|w| w.deliver_at));
                fires.iter().for_each(|w| chunks.release(w.chunk));
                core.done_all(fires.iter().map(|w| (w.origin, w.cell)));
            }
            Err(e) => {
                tracing::error!(error = %e, topic = %topic.name, "cannot publish fired messages; retrying");
                for w in fires {
                    let _ = core.states.transition(w.cell, state::FIRING, state::SCHEDULED);
                    failed.push(w);
                }
            }
        }
    }
    failed
}

#[cfg(test)]
mod tests {
    use super::Chunks;

    #[test]
    fn the_floor_is_the_oldest_staging_append_with_a_message_still_held() {
        let mut c = Chunks::default();
        assert_eq!(c.floor(), u64::MAX);
        let a = c.add(100, 2);
        let b = c.add(200, 1);
        let d = c.add(300, 1);
        assert_eq!(c.floor(), 100);
        c.release(b); // published out of order: the older append still holds the floor
        assert_eq!(c.floor(), 100);
        c.release(a);
        assert_eq!(c.floor(), 100);
        c.release(a);
        assert_eq!(c.floor(), 300, "the second append was already empty");
        let e = c.add(400, 1);
        c.release(d);
        assert_eq!(c.floor(), 400);
        c.release(e);
        assert_eq!(c.floor(), u64::MAX);
    }
}
