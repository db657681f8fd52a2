//! The timer's checkpointer: every `checkpoint_interval` it makes the timer's files durable and
//! writes the checkpoint (`Core::checkpoint`); once a second it lets the progress reporter log.
//! A full disk skips a checkpoint (the previous one stays valid); any other failure trips the
//! pipeline rather than claim durability it does not have.

use std::time::Duration;

use chime_pipeline::StageCtx;

use super::{disk_full, POLL};
use crate::timer::Core;

pub(super) fn checkpointer(c: &Core, ctx: &StageCtx, trip: &dyn Fn(String)) {
    let every = c.opts.checkpoint_interval;
    let mut reporter = crate::timer::report::Reporter::new();
    let mut since_report = Duration::ZERO;
    while !ctx.stopped() {
        let mut slept = Duration::ZERO;
        while slept < every && !ctx.stopped() {
            std::thread::sleep(POLL.min(every));
            slept += POLL.min(every);
            since_report += POLL.min(every);
            if since_report >= Duration::from_secs(1) {
                since_report = Duration::ZERO;
                reporter.tick(c);
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
}
