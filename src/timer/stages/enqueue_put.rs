//! enqueue-put (RocketMQ's `TimerEnqueuePutService`): places each message in the wheel, as a
//! timer-log unit linked into its slot (or a roll slot, for one beyond the wheel's span), or
//! hands it straight to the dequeue side when its slot has already closed.

use chime_pipeline::{queue, StageCtx};

use super::{send, EnqueueReq, FireReq, Origin, POLL};
use crate::timer::slot::Placement;
use crate::timer::state;
use crate::timer::timerlog::{Unit, FLAG_ROLL};
use crate::timer::Core;

/// enqueue-put: places one message: a timer-log unit linked into its slot (or a roll slot), or
/// straight to the dequeue side if its slot is already closed.
pub(super) fn enqueue_put(core: &Core, req: &EnqueueReq, direct: &queue::Sender<FireReq>, ctx: &StageCtx) {
    let finish = |core: &Core| {
        let mut p = core.progress.lock();
        match req.from_slot {
            Some(s) => p.slot_done(s),
            None => p.placed(req.sys_offset),
        }
    };
    match core.states.get(req.sys_offset) {
        Ok(s) if state::is_final(s) => return finish(core),
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
