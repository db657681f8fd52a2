//! Durability: the flush policy, the flusher thread, group commit and poisoning.
//!
//! The flusher thread (`chime-flush`) fsyncs the commit log in offset order and publishes the
//! durable position on a `watch` channel. Under [`FlushPolicy::Sync`] a send waits on that
//! channel until its end offset is durable; every send that arrived while one fsync ran is
//! covered by the next one (group commit), so concurrent sends share fsyncs. Periodically it
//! also flushes the consume queues and writes the checkpoint.
//!
//! A failed fsync or append poisons the store: the failure is published, waiting sends fail
//! (they are not acknowledged) and later sends are refused with the reason, because after a
//! failed fsync the kernel may have dropped the dirty pages and carrying on would acknowledge
//! data that is not safe. A restart recovers from what is on disk.
//!
//! A full disk does not poison: allocating a segment happens before anything is written, so
//! the send fails with [`StoreError::DiskFull`] and the next one succeeds once space returns.
//! Nor does a failed checkpoint write: the checkpoint is replaced atomically, the previous one
//! stays valid and recovery merely scans further. `store::fault` injects these failures in tests.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use chime_pipeline::Supervisor;
use parking_lot::{Condvar, Mutex};
use tokio::sync::watch;

use super::{Store, StoreError};

/// When an acknowledged send is durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlushPolicy {
    /// Acknowledged once written to the page cache, fsync'd every `interval`. Survives a crash
    /// of the process; a crash of the machine can lose up to the last `interval` of sends.
    Async { interval: Duration },
    /// Acknowledged only after fsync. Survives a crash of the machine. Concurrent sends share
    /// one fsync (group commit).
    Sync,
}

/// How far ahead of the write position the flusher faults pages in: more than is written
/// between two flusher wake-ups at full speed (about 600 MB/s × 200 ms).
const PREFAULT_AHEAD: u64 = 128 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FlushJob {
    /// Fsync the commit log only (the group-commit path).
    Log,
    /// Also fsync the consume queues and write the checkpoint.
    Checkpoint,
}

#[derive(Debug, Clone)]
struct Progress {
    flushed: u64,
    poisoned: Option<Arc<str>>,
}

#[derive(Default)]
struct Ctl {
    /// A sender waits for a flush (sync policy): the flusher starts one at once.
    requested: bool,
}

pub(super) struct Durability {
    policy: FlushPolicy,
    ctl: Mutex<Ctl>,
    cv: Condvar,
    progress: watch::Sender<Progress>,
    poisoned: AtomicBool,
    stopped: AtomicBool,
}

impl Durability {
    pub(super) fn new(policy: FlushPolicy, flushed: u64) -> Self {
        let (progress, _) = watch::channel(Progress { flushed, poisoned: None });
        Self {
            policy,
            ctl: Mutex::new(Ctl::default()),
            cv: Condvar::new(),
            progress,
            poisoned: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
        }
    }

    pub(super) fn check(&self) -> Result<(), StoreError> {
        if self.poisoned.load(Ordering::Acquire) {
            let reason = self.progress.borrow().poisoned.as_deref().unwrap_or("unknown").to_string();
            return Err(StoreError::Poisoned { reason });
        }
        if self.stopped.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        Ok(())
    }

    /// Records a fatal write failure; returns the error to give the caller.
    pub(super) fn poison(&self, reason: String) -> StoreError {
        tracing::error!(%reason, "store poisoned: refusing writes until restart");
        self.poisoned.store(true, Ordering::Release);
        let shared: Arc<str> = reason.clone().into();
        self.progress.send_modify(|p| {
            p.poisoned.get_or_insert(shared);
        });
        StoreError::Poisoned { reason }
    }

    /// An I/O error that happened before anything was written (allocating a segment): the
    /// store stays healthy; a full disk is reported as such.
    pub(super) fn io_error(&self, context: &str, e: std::io::Error) -> StoreError {
        StoreError::io(context)(e)
    }

    pub(super) fn flushed(&self, upto: u64) {
        self.progress.send_if_modified(|p| {
            if upto > p.flushed {
                p.flushed = upto;
                true
            } else {
                false
            }
        });
    }

    pub(super) async fn wait_durable(&self, end: u64) -> Result<(), StoreError> {
        if let FlushPolicy::Async { .. } = self.policy {
            return self.check();
        }
        let mut rx = self.progress.subscribe();
        if rx.borrow().flushed < end {
            self.ctl.lock().requested = true;
            self.cv.notify_one();
        }
        let p =
            rx.wait_for(|p| p.flushed >= end || p.poisoned.is_some()).await.map_err(|_| StoreError::Closed)?.clone();
        match p.poisoned {
            Some(reason) if p.flushed < end => Err(StoreError::Poisoned { reason: reason.to_string() }),
            _ => Ok(()),
        }
    }

    /// Refuses appends from now on, and wakes the flusher (its supervisor has been asked to
    /// stop it: under the lock, so a flusher about to wait cannot miss this).
    pub(super) fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        let _g = self.ctl.lock();
        self.cv.notify_all();
    }
}

/// Starts the flusher thread under `workers`. It holds only a weak reference to the store, so
/// dropping the store ends it; a stop ends it too (the store is stopped through
/// [`Durability::stop`] after its supervisor's `request_stop`, which wakes it).
pub(super) fn spawn_flusher(
    workers: &mut Supervisor,
    store: Weak<Store>,
    d: Arc<Durability>,
    checkpoint_interval: Duration,
) -> Result<(), StoreError> {
    workers
        .spawn("chime-flush", move |ctx| {
            let mut last_checkpoint = Instant::now();
            let mut checkpointed_at: Option<u64> = None;
            loop {
                let stop = {
                    let mut ctl = d.ctl.lock();
                    if !ctl.requested && !ctx.stopped() {
                        let wait = match d.policy {
                            FlushPolicy::Async { interval } => interval,
                            FlushPolicy::Sync => checkpoint_interval.saturating_sub(last_checkpoint.elapsed()),
                        };
                        d.cv.wait_for(&mut ctl, wait);
                    }
                    ctl.requested = false;
                    ctx.stopped()
                };
                // Shutdown does the final flush itself, after the last append.
                if stop {
                    return;
                }
                let Some(store) = store.upgrade() else { return };
                if d.poisoned.load(Ordering::Acquire) {
                    continue;
                }
                let due =
                    matches!(d.policy, FlushPolicy::Async { .. }) || last_checkpoint.elapsed() >= checkpoint_interval;
                let pos = store.log.write_pos();
                let job = if due && checkpointed_at != Some(pos) { FlushJob::Checkpoint } else { FlushJob::Log };
                if store.flush_job(job).is_ok() && job == FlushJob::Checkpoint {
                    checkpointed_at = Some(pos);
                }
                // Off the append path, after the flush that senders may be waiting for: create
                // the next segment before it is needed, and fault in the pages ahead.
                if let Err(e) = store.log.preallocate() {
                    tracing::warn!(error = %e, "cannot preallocate the next commit-log segment");
                }
                if let Err(e) = store.log.prefault_ahead(PREFAULT_AHEAD) {
                    tracing::debug!(error = %e, "cannot prefault the commit log");
                }
                if due {
                    // Also when there was nothing new to checkpoint: the next one is due an
                    // interval from now, so the sync-mode wait above never spins.
                    last_checkpoint = Instant::now();
                }
            }
        })
        .map_err(StoreError::io("spawn the flusher thread"))
}
