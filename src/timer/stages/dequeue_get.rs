//! dequeue-get (RocketMQ's `TimerDequeueGetService`): walks the wheel's slots in time order,
//! each `lookahead` before its time, and hands every unit of a slot on in deliver-time order.

use std::sync::atomic::Ordering;
use std::time::Duration;

use chime_pipeline::{queue, StageCtx};

use super::{send, FireReq, Origin, POLL};
use crate::timer::Core;

/// dequeue-get: walks slots in time order, each `lookahead` before its time, handing every
/// unit of the slot to dequeue-get-message.
pub(super) fn dequeue_get(core: &Core, tx: &queue::Sender<FireReq>, ctx: &StageCtx) {
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
        // (tests/timer_engine.rs, `a_slot_bigger_than_the_queues_fires_in_deliver_order`). The
        // walk keeps 16 bytes per unit and reads each unit twice (the second read copies it out
        // of the mapped log).
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
