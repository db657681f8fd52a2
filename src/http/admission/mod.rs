//! Admission control for sends: answer 429 `BUSY` with `Retry-After` when the server is
//! behind, instead of buffering more than it can absorb.
//!
//! Two limits, each checked before anything is stored (a refused send stores nothing):
//!
//! - **Request memory** (`admission.max_inflight_bytes`, [`memory`]): a send is charged for
//!   the body bytes that have *arrived*, as they arrive, and holds them until it has been
//!   answered. Before its body is read it is admitted only when its declared `Content-Length`
//!   fits beside what has arrived and what other sends have declared but not yet sent (their
//!   *promises*); promises of slow sends are revoked when someone needs the room. So the bodies
//!   buffered at any moment stay under the limit however many clients push, a burst of large
//!   sends is refused at once rather than all half-read, and a client that declares 16 MiB
//!   and trickles a byte now and then holds a byte, not 16 MiB. A send's peak memory is a small
//!   multiple of its body: the bytes, the parsed messages, the encoded records.
//! - **Timer lag** (`admission.max_enqueue_lag`): scheduled messages go to the timer's system
//!   topic and wait there until the enqueue stages have put them into the wheel. When more than
//!   this many are waiting (`TimerEngine::stats().enqueue_lag`) the timer is behind, and a send
//!   holding scheduled messages is refused; normal messages still go through. The figure is
//!   read at most every [`LAG_RECHECK`], since `stats()` takes locks.
//!
//! A send refused for memory buffers nothing more of its body: the rest is read and dropped
//! piece by piece (within `http.body_read_timeout`), so the client reads the 429 rather than
//! meeting a reset connection; a client that sent `Expect: 100-continue` and is refused before
//! its body is answered at once and never sends it. A send refused part-way (its promise was
//! revoked and the budget is full of bytes that have arrived) is refused rather than made to
//! wait: sends waiting for each other's memory could all stall half-read until their deadline.

pub mod memory;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

pub use memory::{Held, Reservation};

use super::error::{ApiError, Code};
use crate::timer::TimerEngine;

/// How often the timer's lag is re-read; between reads the last decision stands.
pub const LAG_RECHECK: Duration = Duration::from_millis(10);

/// The limits (config `[admission]`).
#[derive(Debug, Clone, Copy)]
pub struct AdmissionOptions {
    /// Most request-body bytes that sends in progress may hold together.
    pub max_inflight_bytes: u64,
    /// Most scheduled messages stored but not yet in the wheel before scheduled sends are refused.
    pub max_enqueue_lag: u64,
    /// The `Retry-After` of a refusal, in seconds.
    pub retry_after_secs: u32,
}

/// The admission state shared by all sends.
pub struct Admission {
    opts: AdmissionOptions,
    memory: Arc<memory::Ledger>,
    /// When the timer's lag was last read, and what it was.
    lag: Mutex<Option<(Instant, u64)>>,
    refused_memory: AtomicU64,
    refused_timer: AtomicU64,
}

/// Sends refused so far, by reason (for metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Refusals {
    /// Over `max_inflight_bytes`.
    pub memory: u64,
    /// Over `max_enqueue_lag`.
    pub timer: u64,
}

impl Admission {
    pub fn new(opts: AdmissionOptions) -> Self {
        Self {
            opts,
            memory: memory::Ledger::new(opts.max_inflight_bytes),
            lag: Mutex::new(None),
            refused_memory: AtomicU64::new(0),
            refused_timer: AtomicU64::new(0),
        }
    }

    fn busy(&self, counter: &AtomicU64, message: String) -> ApiError {
        counter.fetch_add(1, Ordering::Relaxed);
        let mut e = ApiError::new(Code::Busy, message);
        e.retry_after = Some(self.opts.retry_after_secs);
        e
    }

    fn refuse_memory(&self) -> ApiError {
        self.busy(
            &self.refused_memory,
            format!(
                "busy: sends in progress hold the request memory budget (admission.max_inflight_bytes = {} bytes)",
                self.opts.max_inflight_bytes
            ),
        )
    }

    /// Admits a send whose body declares `declared` bytes (`None`: not declared), or refuses it
    /// when the declared body does not fit (see [`memory`]).
    pub fn admit(&self, declared: Option<u64>, max_request: usize) -> Result<Reservation, ApiError> {
        let declared = declared.map(|d| d.min(max_request as u64));
        self.memory.admit(declared, Instant::now()).ok_or_else(|| self.refuse_memory())
    }

    /// Records that `arrived` bytes of `r`'s body have arrived, or refuses the send when they
    /// do not fit.
    pub fn charge(&self, r: &Reservation, arrived: u64) -> Result<(), ApiError> {
        if self.memory.charge(r, arrived) {
            Ok(())
        } else {
            Err(self.refuse_memory())
        }
    }

    /// Refuses a send of scheduled messages while the timer's enqueue lag is over the limit.
    pub fn check_timer(&self, timer: &TimerEngine) -> Result<(), ApiError> {
        let lag = {
            let mut last = self.lag.lock();
            match *last {
                Some((at, lag)) if at.elapsed() < LAG_RECHECK => lag,
                _ => {
                    let lag = timer.stats().enqueue_lag;
                    *last = Some((Instant::now(), lag));
                    lag
                }
            }
        };
        if lag > self.opts.max_enqueue_lag {
            return Err(self.busy(
                &self.refused_timer,
                format!(
                    "busy: the timer is behind ({lag} scheduled messages not yet in the wheel, \
                 admission.max_enqueue_lag = {}); normal messages are still accepted",
                    self.opts.max_enqueue_lag
                ),
            ));
        }
        Ok(())
    }

    /// Sends refused so far.
    pub fn refusals(&self) -> Refusals {
        Refusals {
            memory: self.refused_memory.load(Ordering::Relaxed),
            timer: self.refused_timer.load(Ordering::Relaxed),
        }
    }

    /// Request-body bytes the sends in progress hold and have promised.
    pub fn held(&self) -> Held {
        self.memory.held()
    }
}
