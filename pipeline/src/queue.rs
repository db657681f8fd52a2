//! Bounded queues between stages, with the figures `/v1/timer/stats` reports.
//!
//! When full, [`Sender::send`] blocks until there is room (back-pressure up the pipeline);
//! nothing is dropped. A receiver counts what it has taken (`processed`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use crossbeam_channel::{RecvTimeoutError, SendError, TryRecvError, TrySendError};

/// Depth, capacity and throughput of one queue.
pub struct QueueStats {
    pub name: &'static str,
    capacity: usize,
    processed: AtomicU64,
    depth: Box<dyn Fn() -> usize + Send + Sync>,
}

impl QueueStats {
    pub fn new(name: &'static str, capacity: usize, depth: Box<dyn Fn() -> usize + Send + Sync>) -> Self {
        Self { name, capacity, processed: AtomicU64::new(0), depth }
    }

    pub fn depth(&self) -> usize {
        (self.depth)()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn processed(&self) -> u64 {
        self.processed.load(Ordering::Relaxed)
    }

    pub fn add_processed(&self, n: u64) {
        self.processed.fetch_add(n, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for QueueStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueStats")
            .field("name", &self.name)
            .field("depth", &self.depth())
            .field("capacity", &self.capacity)
            .field("processed", &self.processed())
            .finish()
    }
}

#[derive(Debug)]
pub struct Sender<T> {
    inner: crossbeam_channel::Sender<T>,
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone() }
    }
}

#[derive(Debug)]
pub struct Receiver<T> {
    inner: crossbeam_channel::Receiver<T>,
    stats: Arc<QueueStats>,
}

/// A bounded queue of `capacity` items (at least 1).
pub fn bounded<T: Send + 'static>(name: &'static str, capacity: usize) -> (Sender<T>, Receiver<T>) {
    let (tx, rx) = crossbeam_channel::bounded(capacity.max(1));
    let probe = rx.clone();
    let stats = Arc::new(QueueStats::new(name, capacity.max(1), Box::new(move || probe.len())));
    (Sender { inner: tx }, Receiver { inner: rx, stats })
}

/// An unbounded queue, for paths that must never block their producer (documented where used).
pub fn unbounded<T: Send + 'static>(name: &'static str) -> (Sender<T>, Receiver<T>) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let probe = rx.clone();
    let stats = Arc::new(QueueStats::new(name, usize::MAX, Box::new(move || probe.len())));
    (Sender { inner: tx }, Receiver { inner: rx, stats })
}

impl<T> Sender<T> {
    /// Blocks while the queue is full. Fails only if the receiver is gone.
    pub fn send(&self, item: T) -> Result<(), SendError<T>> {
        self.inner.send(item)
    }

    /// Blocks at most `timeout` while the queue is full (so a stage can notice a stop request).
    pub fn send_timeout(&self, item: T, timeout: Duration) -> Result<(), crossbeam_channel::SendTimeoutError<T>> {
        self.inner.send_timeout(item, timeout)
    }

    pub fn try_send(&self, item: T) -> Result<(), TrySendError<T>> {
        self.inner.try_send(item)
    }

    /// The queue's capacity (`usize::MAX` for an unbounded one).
    pub fn capacity(&self) -> usize {
        self.inner.capacity().unwrap_or(usize::MAX)
    }

    pub fn len(&self) -> usize {
        self.inner.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }
}

impl<T> Receiver<T> {
    pub fn stats(&self) -> Arc<QueueStats> {
        self.stats.clone()
    }

    fn took(&self, r: Result<T, RecvTimeoutError>) -> Result<T, RecvTimeoutError> {
        if r.is_ok() {
            self.stats.add_processed(1);
        }
        r
    }

    pub fn recv_timeout(&self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        self.took(self.inner.recv_timeout(timeout))
    }

    pub fn recv_deadline(&self, deadline: Instant) -> Result<T, RecvTimeoutError> {
        self.took(self.inner.recv_deadline(deadline))
    }

    pub fn try_recv(&self) -> Result<T, TryRecvError> {
        let r = self.inner.try_recv();
        if r.is_ok() {
            self.stats.add_processed(1);
        }
        r
    }

    pub fn len(&self) -> usize {
        self.inner.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_blocks_when_full_and_counts() {
        let (tx, rx) = bounded::<u32>("q", 2);
        tx.send(1).unwrap();
        tx.send(2).unwrap();
        assert!(matches!(tx.try_send(3), Err(TrySendError::Full(3))));
        assert_eq!(rx.stats().depth(), 2);
        assert_eq!(rx.stats().capacity(), 2);
        let t = std::thread::spawn(move || tx.send(3)); // blocks until there is room
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok(1));
        t.join().unwrap().unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok(2));
        assert_eq!(rx.try_recv(), Ok(3));
        assert_eq!(rx.stats().processed(), 3);
        assert!(rx.recv_timeout(Duration::from_millis(1)).is_err());
    }
}
