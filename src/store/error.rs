//! The store's error type.

use std::io;

use super::lock::LockError;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    /// A write or fsync failed: acknowledged data is safe, but nothing more is accepted until
    /// the process restarts and recovers.
    #[error("store is poisoned and refuses writes until restarted: {reason}")]
    Poisoned { reason: String },
    /// The disk is full; nothing was written. Sends succeed again once space is freed.
    #[error("disk full: {context}")]
    DiskFull { context: String },
    #[error("corrupt {what}: {detail}")]
    Corrupt { what: String, detail: String },
    #[error("the store is shutting down")]
    Closed,
    /// A quota (config `[limits]`) would be passed; nothing was created.
    #[error("{limit} ({max}) reached: {what}")]
    LimitExceeded { limit: &'static str, max: u64, what: String },
}

impl StoreError {
    /// Wraps an I/O error with what was being done; a full disk (or quota) becomes
    /// [`StoreError::DiskFull`], the one place where that is worked out from an `io::Error`.
    pub fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> StoreError {
        let context = context.into();
        move |source| {
            if super::fault::is_disk_full(&source) {
                StoreError::DiskFull { context: format!("{context}: {source}") }
            } else {
                StoreError::Io { context, source }
            }
        }
    }

    /// Whether this is a full disk: nothing was written, retrying once space returns succeeds.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, StoreError::DiskFull { .. })
    }
}
