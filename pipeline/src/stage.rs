//! The supervisor of chime's background threads: one named thread per stage or worker, a shared
//! stop signal, panic containment and a bounded join. The timer's five stages and checkpointer,
//! the store's flusher and the groups' persister all run under one, so they start, stop and fail
//! the same way.
//!
//! A body receives a [`StageCtx`] and returns when [`StageCtx::stopped`] turns true (it must
//! check between blocking waits of bounded length; [`StageCtx::sleep`] is such a wait that ends
//! early on a stop). If a body panics, the supervisor records which and trips the stop signal,
//! so the pipeline halts visibly instead of leaving a silent hole: downstream stages stop,
//! upstream producers see the stop and return.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

/// The stop signal: a flag to poll, and a condition variable for timed sleeps to end early.
#[derive(Debug, Default)]
struct Stop {
    flag: AtomicBool,
    lock: Mutex<()>,
    cv: Condvar,
}

impl Stop {
    fn set(&self) {
        self.flag.store(true, Ordering::Release);
        // Under the lock: a sleeper between its check and its wait cannot miss the wake-up.
        let _g = self.lock.lock();
        self.cv.notify_all();
    }

    fn get(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }
}

/// How long a shutdown waits for a supervisor's threads before it reports them hung (a stage
/// checks for the stop at least every few milliseconds; a flush in progress finishes first).
pub const STOP_DEADLINE: Duration = Duration::from_secs(10);

/// What a stage body sees of the supervisor.
#[derive(Clone, Debug)]
pub struct StageCtx {
    stop: Arc<Stop>,
    name: &'static str,
}

impl StageCtx {
    pub fn stopped(&self) -> bool {
        self.stop.get()
    }

    /// Sleeps up to `d`, or until a stop is requested; returns whether one was.
    pub fn sleep(&self, d: Duration) -> bool {
        let mut g = self.stop.lock.lock();
        if !self.stop.get() {
            self.stop.cv.wait_for(&mut g, d);
        }
        self.stop.get()
    }

    pub fn name(&self) -> &'static str {
        self.name
    }
}

#[derive(Debug, Default)]
pub struct Supervisor {
    stop: Arc<Stop>,
    failure: Arc<Mutex<Option<String>>>,
    handles: Vec<(&'static str, JoinHandle<()>)>,
}

impl Supervisor {
    pub fn new() -> Self {
        Self::default()
    }

    /// A context for code that is not a supervised thread (e.g. a ring's consumer).
    pub fn ctx(&self, name: &'static str) -> StageCtx {
        StageCtx { stop: self.stop.clone(), name }
    }

    /// Runs `body` on a thread named `name`.
    pub fn spawn(&mut self, name: &'static str, body: impl FnOnce(StageCtx) + Send + 'static) -> std::io::Result<()> {
        let ctx = self.ctx(name);
        let stop = self.stop.clone();
        let failure = self.failure.clone();
        let h = std::thread::Builder::new().name(name.to_string()).spawn(move || {
            if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(ctx))) {
                let msg = panic_message(&p);
                tracing::error!(stage = name, panic = %msg, "stage panicked; stopping the pipeline");
                failure.lock().get_or_insert(format!("stage {name} panicked: {msg}"));
                stop.set();
            }
        })?;
        self.handles.push((name, h));
        Ok(())
    }

    /// Records a failure found outside a supervised thread and trips the stop flag.
    pub fn trip(&self, why: String) {
        (self.tripper())(why)
    }

    /// A handle that trips the stop flag with a reason, for code on other threads (a ring's
    /// consumer reports its panics through it).
    pub fn tripper(&self) -> impl Fn(String) + Send + Sync + Clone + 'static {
        let (failure, stop) = (self.failure.clone(), self.stop.clone());
        move |why: String| {
            tracing::error!(reason = %why, "pipeline stopping");
            failure.lock().get_or_insert(why);
            stop.set();
        }
    }

    /// Why the pipeline stopped by itself, if it did.
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().clone()
    }

    pub fn is_stopped(&self) -> bool {
        self.stop.get()
    }

    /// Asks every stage to stop (and ends their [`StageCtx::sleep`]s).
    pub fn request_stop(&self) {
        self.stop.set();
    }

    /// Stops every stage and joins them, waiting at most `deadline` in all. Returns the names of
    /// stages that did not finish in time (they are left running, detached).
    pub fn stop_and_join(&mut self, deadline: Duration) -> Vec<&'static str> {
        self.request_stop();
        let until = Instant::now() + deadline;
        let mut hung = Vec::new();
        for (name, h) in self.handles.drain(..) {
            while !h.is_finished() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(2));
            }
            if h.is_finished() {
                let _ = h.join();
            } else {
                tracing::error!(stage = name, "stage did not stop in time");
                hung.push(name);
            }
        }
        hung
    }
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_stage_trips_the_stop_and_others_end() {
        let mut sup = Supervisor::new();
        sup.spawn("waits", |ctx| {
            while !ctx.stopped() {
                std::thread::sleep(Duration::from_millis(1));
            }
        })
        .unwrap();
        sup.spawn("boom", |_| panic!("kaboom")).unwrap();
        let t0 = Instant::now();
        while !sup.is_stopped() && t0.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(sup.failure().unwrap().contains("boom panicked: kaboom"));
        assert!(sup.stop_and_join(Duration::from_secs(10)).is_empty());
    }

    #[test]
    fn a_stop_ends_a_sleep_at_once() {
        let mut sup = Supervisor::new();
        let (tx, rx) = std::sync::mpsc::channel();
        sup.spawn("sleeper", move |ctx| tx.send(ctx.sleep(Duration::from_secs(3600))).unwrap()).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let t0 = Instant::now();
        assert!(sup.stop_and_join(Duration::from_secs(10)).is_empty());
        assert!(rx.recv().unwrap(), "the sleep reports the stop");
        assert!(t0.elapsed() < Duration::from_secs(10), "woken, not timed out");
        let ctx = sup.ctx("after");
        assert!(ctx.sleep(Duration::from_secs(3600)), "a sleep after the stop returns at once");
    }

    #[test]
    fn a_hung_stage_is_reported() {
        let mut sup = Supervisor::new();
        sup.spawn("stuck", |_| std::thread::sleep(Duration::from_millis(300))).unwrap();
        assert_eq!(sup.stop_and_join(Duration::from_millis(10)), vec!["stuck"]);
    }
}
