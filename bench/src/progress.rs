//! Progress on stderr: notes (one line each) and, for phases that last more than a few seconds,
//! an indicatif progress bar.
//!
//! Bars are drawn only when stderr is a terminal and `--json` was not given ([`init`]); a bar
//! appears once its phase has lasted [`SHOW_AFTER`], so short runs print notes only. Notes go
//! through [`note`] (or the [`note!`](crate::note) macro), which clears the bars, prints the
//! line and redraws them, so the two never garble each other.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A phase gets a bar once it has lasted this long.
pub const SHOW_AFTER: Duration = Duration::from_secs(2);
const TICK: Duration = Duration::from_millis(100);

static ENABLED: AtomicBool = AtomicBool::new(false);

fn multi() -> &'static MultiProgress {
    static M: OnceLock<MultiProgress> = OnceLock::new();
    M.get_or_init(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()))
}

/// Turns bars on when stderr is a terminal and the output is not JSON.
pub fn init(json: bool) {
    ENABLED.store(!json && std::io::stderr().is_terminal(), Ordering::Relaxed);
}

pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Prints one line on stderr, above any bar.
pub fn note(line: &str) {
    if enabled() {
        multi().suspend(|| eprintln!("{line}"));
    } else {
        eprintln!("{line}");
    }
}

/// `note!("...", args)`: [`note`] with `format!` arguments.
#[macro_export]
macro_rules! note {
    ($($t:tt)*) => {
        $crate::progress::note(&format!($($t)*))
    };
}

/// What a bar counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Items (messages, batches, repetitions): position / total, rate, time left.
    Items,
    /// Milliseconds of a phase of known length, shown as seconds.
    Millis,
}

/// A bar fed by a background thread from a counter, until dropped.
pub struct Tracker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Tracks `counter` (capped at `total`) under `label` while the returned value lives.
pub fn track(label: &str, total: u64, counter: Arc<AtomicU64>) -> Tracker {
    track_with(label, total, Unit::Items, move || counter.load(Ordering::Relaxed))
}

/// Tracks the milliseconds from now until `total_ms` have passed.
pub fn track_time(label: &str, total_ms: u64) -> Tracker {
    let start = Instant::now();
    track_with(label, total_ms, Unit::Millis, move || start.elapsed().as_millis() as u64)
}

/// Tracks whatever `pos` returns (read every 100 ms) out of `total`.
pub fn track_with(label: &str, total: u64, unit: Unit, pos: impl Fn() -> u64 + Send + 'static) -> Tracker {
    let stop = Arc::new(AtomicBool::new(false));
    if !enabled() || total == 0 {
        return Tracker { stop, thread: None };
    }
    let label = label.to_owned();
    let flag = stop.clone();
    let thread = std::thread::Builder::new()
        .name("bench-progress".into())
        .spawn(move || {
            // The bar counts from the start (so its rate and time left are right) but is drawn
            // only once the phase has lasted SHOW_AFTER.
            let start = Instant::now();
            let bar = new_bar(&label, total, unit);
            let mut shown = false;
            while !flag.load(Ordering::Relaxed) {
                std::thread::sleep(TICK);
                let p = pos().min(total);
                bar.set_position(p);
                bar.set_message(match unit {
                    Unit::Items => format!("{:.0}/s", bar.per_sec()),
                    Unit::Millis => format!("{:.1} / {:.1} s", p as f64 / 1000.0, total as f64 / 1000.0),
                });
                if !shown && start.elapsed() >= SHOW_AFTER {
                    multi().add(bar.clone());
                    shown = true;
                }
            }
            bar.finish_and_clear();
            if shown {
                multi().remove(&bar);
            }
        })
        .ok();
    Tracker { stop, thread }
}

fn new_bar(label: &str, total: u64, unit: Unit) -> ProgressBar {
    let template = match unit {
        Unit::Items => "{prefix:>14} [{bar:30}] {human_pos}/{human_len} {msg} eta {eta}",
        Unit::Millis => "{prefix:>14} [{bar:30}] {msg}",
    };
    let style = ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar());
    ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::hidden())
        .with_style(style.progress_chars("=> "))
        .with_prefix(label.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hidden_tracker_stops_at_once() {
        // Tests do not run with a terminal on stderr, or with bars turned on.
        let c = Arc::new(AtomicU64::new(0));
        let t = track("test", 10, c.clone());
        c.store(10, Ordering::Relaxed);
        drop(t);
        note("a note without bars");
    }
}
