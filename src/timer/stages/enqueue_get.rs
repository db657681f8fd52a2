//! enqueue-get (RocketMQ's `TimerEnqueueGetService`): reads the timer's system topic from the
//! checkpointed offset and publishes each scheduled message, with its deliver time, into the
//! ring to enqueue-put; rolls coming back from dequeue-put go into the same ring first.

use std::sync::atomic::Ordering;

use chime_pipeline::{queue, StageCtx};

use super::{EnqueueReq, POLL};
use crate::timer::Core;

/// Failpoint `timer::hold_enqueue_get=return(DIR)`: the enqueue-get stage of the timer whose
/// directory is DIR reads nothing from the system topic while it is set, so a test can act on
/// messages stored but not yet read (other engines in the same test process go on).
pub const HOLD_ENQUEUE_GET: &str = "timer::hold_enqueue_get";

fn held_by_test(_dir: &std::path::Path) -> bool {
    fail::fail_point!(HOLD_ENQUEUE_GET, |arg: Option<String>| arg.is_some_and(|d| std::path::Path::new(&d) == _dir));
    false
}

/// enqueue-get: reads the system topic's consume queue from the checkpointed offset and
/// publishes each scheduled message (with its deliver time) into the ring; also feeds rolls.
pub(super) fn enqueue_get(
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
            let Some(r) = core.store.read(e.log_offset) else {
                if e.log_offset >= core.store.min_offset() {
                    break; // not readable yet: retry
                }
                // Reclaimed (read from a stale checkpoint's offset after a restart): retention
                // only reclaims records whose cells are final, so there is nothing to place.
                core.progress.lock().placed(next);
                next += 1;
                n += 1;
                continue;
            };
            match r.verify().ok().map(|r| r.record().deliver_at_ms) {
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
