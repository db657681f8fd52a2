//! Admission control for sends: answer 429 `BUSY` with `Retry-After` when the server is
//! behind, instead of buffering more than it can absorb.
//!
//! Two limits, each checked before anything is stored (a refused send stores nothing):
//!
//! - **Request memory** (`admission.max_inflight_bytes`): every send reserves its body size
//!   (from `Content-Length`; `max_request_bytes` when the length is not declared) before the
//!   body is read, and holds it until it has been answered. When the reservations of the sends
//!   in progress would pass the limit the send is refused without buffering its body, so the
//!   bodies buffered at any moment stay under the limit however many clients push. (A
//!   send's peak memory is a small multiple of its body: the bytes, the parsed messages, the
//!   encoded records.)
//! - **Timer lag** (`admission.max_enqueue_lag`): scheduled messages go to the timer's system
//!   topic and wait there until the enqueue stages have put them into the wheel. When more than
//!   this many are waiting (`TimerEngine::stats().enqueue_lag`) the timer is behind, and a send
//!   holding scheduled messages is refused; normal messages still go through. The figure is
//!   read at most every [`LAG_RECHECK`], since `stats()` takes locks.
//!
//! A send refused for memory buffers nothing of its body: the body is read and dropped piece
//! by piece (within `http.body_read_timeout`), so the client reads the 429 rather than meeting
//! a reset connection; a client that sent `Expect: 100-continue` is answered at once and never
//! sends its body.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::{ApiError, Code};
use crate::timer::TimerEngine;

/// How often the timer's lag is re-read; between reads the last decision stands.
pub const LAG_RECHECK: Duration = Duration::from_millis(10);

/// Request memory is counted in units of this many bytes (a semaphore permit each).
const UNIT: u64 = 1024;

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
    memory: Arc<Semaphore>,
    /// Units in `memory` when nothing is reserved.
    total_units: u32,
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

/// A send's reservation of request memory, returned when dropped.
pub struct Reservation {
    _permit: OwnedSemaphorePermit,
}

impl Admission {
    pub fn new(opts: AdmissionOptions) -> Self {
        let total_units = (opts.max_inflight_bytes / UNIT).clamp(1, u64::from(u32::MAX)) as u32;
        Self {
            opts,
            memory: Arc::new(Semaphore::new(total_units as usize)),
            total_units,
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

    /// Reserves request memory for a body of `declared` bytes (`None`: not declared, so
    /// `max_request` is assumed), or refuses the send.
    pub fn reserve(&self, declared: Option<u64>, max_request: usize) -> Result<Reservation, ApiError> {
        let bytes = declared.unwrap_or(max_request as u64).min(max_request as u64);
        // A body larger than the whole budget may still pass alone (it is within max_request_bytes).
        let units = bytes.div_ceil(UNIT).clamp(1, u64::from(self.total_units)) as u32;
        match self.memory.clone().try_acquire_many_owned(units) {
            Ok(permit) => Ok(Reservation { _permit: permit }),
            Err(_) => Err(self.busy(
                &self.refused_memory,
                format!(
                    "busy: sends in progress hold the request memory budget (admission.max_inflight_bytes = {} bytes)",
                    self.opts.max_inflight_bytes
                ),
            )),
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

    /// Bytes reserved by sends in progress.
    pub fn inflight_bytes(&self) -> u64 {
        u64::from(self.total_units - self.memory.available_permits() as u32) * UNIT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(max_inflight_bytes: u64) -> Admission {
        Admission::new(AdmissionOptions { max_inflight_bytes, max_enqueue_lag: 10, retry_after_secs: 3 })
    }

    #[test]
    fn reservations_are_bounded_and_returned() {
        let a = admission(10 * 1024);
        let r1 = a.reserve(Some(4 * 1024), 1 << 20).expect("first");
        let r2 = a.reserve(Some(4 * 1024), 1 << 20).expect("second");
        assert_eq!(a.inflight_bytes(), 8 * 1024);
        let e = a.reserve(Some(4 * 1024), 1 << 20).err().expect("over budget");
        assert_eq!(e.code, Code::Busy);
        assert_eq!(e.retry_after, Some(3));
        assert_eq!(a.refusals(), Refusals { memory: 1, timer: 0 });
        // Small ones still fit; an empty body reserves one unit.
        let r3 = a.reserve(Some(0), 1 << 20).expect("empty body");
        drop((r1, r2, r3));
        assert_eq!(a.inflight_bytes(), 0);
        a.reserve(Some(4 * 1024), 1 << 20).expect("after release");
    }

    #[test]
    fn undeclared_length_reserves_the_request_limit_and_big_bodies_pass_alone() {
        let a = admission(8 * 1024);
        let r = a.reserve(None, 6 * 1024).expect("undeclared");
        assert_eq!(a.inflight_bytes(), 6 * 1024);
        assert!(a.reserve(Some(4 * 1024), 6 * 1024).is_err());
        drop(r);
        // A body over the whole budget (but within max_request) takes all of it, alone.
        let r = a.reserve(Some(100 * 1024), 1 << 20).expect("alone");
        assert!(a.reserve(Some(1), 1 << 20).is_err());
        drop(r);
    }
}
