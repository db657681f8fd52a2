//! The timer's progress log: an info line every `progress_interval` (pending, lags, lateness),
//! and a warning when the dequeue lag (how far the wheel's read pointer is behind the clock)
//! passes `lag_warn`, repeated at most once a minute while it stays there, with an info line
//! when it recovers. Driven by the timer-checkpoint thread, about once a second.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::Core;

/// Least time between two lag warnings.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// What the reporter remembers between calls.
pub(super) struct Reporter {
    last_line: Instant,
    fired_at_last_line: u64,
    warned: Option<Instant>,
}

impl Reporter {
    pub(super) fn new() -> Self {
        Self { last_line: Instant::now(), fired_at_last_line: 0, warned: None }
    }

    pub(super) fn tick(&mut self, core: &Core) {
        let now = core.clock.now_ms();
        let read_time = *core.cursor.lock();
        // The read pointer runs `lookahead` ahead of the clock when it keeps up.
        let lag = (now - read_time).max(0);
        let pending = core.congestion.lock().total().max(0);
        if lag > core.opts.lag_warn_ms {
            if self.warned.is_none_or(|w| w.elapsed() >= WARN_EVERY) {
                tracing::warn!(dequeue_lag_ms = lag, pending, "timer is falling behind: messages are firing late");
                self.warned = Some(Instant::now());
            }
        } else if self.warned.take().is_some() {
            tracing::info!(dequeue_lag_ms = lag, "timer caught up");
        }
        let Some(every) = core.opts.progress_interval else { return };
        if self.last_line.elapsed() < every {
            return;
        }
        let fired = core.counters.fired.load(Ordering::Relaxed);
        let sys_next = core.sys_topic.queues[0].next();
        let enqueue_lag = sys_next.saturating_sub(core.progress.lock().committed_enqueue_offset());
        let (p99, max) = {
            let h = core.lateness.lock();
            (h.value_at_quantile(0.99), h.max())
        };
        tracing::info!(
            pending,
            fired_since_last = fired - self.fired_at_last_line,
            enqueue_lag,
            dequeue_lag_ms = lag,
            lateness_p99_ms = p99,
            lateness_max_ms = max,
            "timer progress"
        );
        self.last_line = Instant::now();
        self.fired_at_last_line = fired;
    }
}
