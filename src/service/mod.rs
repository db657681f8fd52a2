//! The use cases, below every transport: send (normal, scheduled, batches), look up and cancel
//! a message, and the view of a delivered message a consumer gets. The HTTP handlers parse a
//! request, call one of these and map the answer; a second front end (a RocketMQ-compatible
//! protocol, the console) calls the same ones. Nothing here knows HTTP.
//!
//! The timer's reserved topic and properties are named only here and in `timer`: a scheduled
//! message is appended to the timer's system topic with its destination in a reserved property,
//! and a fired one carries the id the client was given in another; [`deliver`] maps both back.

pub mod consume;
pub mod dedup;
pub mod deliver;
pub mod lookup;
pub mod send;
pub mod transactions;

use std::sync::Arc;

use crate::store::{MessageId, Store, StoreError};
use crate::timer::{TimerEngine, TimerError};

pub use consume::{Consumers, NackOutcome};
pub use deliver::{deliver, DeadLetterInfo, DeliveredMessage};
pub use lookup::{Found, KeyHit};
pub use send::{Appended, Sent};

/// What the use cases are configured with.
#[derive(Debug, Clone, Copy)]
pub struct BrokerOptions {
    /// A send to a topic that does not exist creates it (config `auto_create_topics`).
    pub auto_create_topics: bool,
    /// Queues of a topic a send creates (config `default_queues`).
    pub default_queues: u16,
    /// How long a `dedup_id` is remembered (config `dedup.window`), ms.
    pub dedup_window_ms: i64,
    /// Checks and their limit (`[transaction]`).
    pub txn: transactions::TxnOptions,
}

impl BrokerOptions {
    /// Topics created on first send with `default_queues` queues; the default dedup window.
    pub fn new(auto_create_topics: bool, default_queues: u16) -> Self {
        Self { auto_create_topics, default_queues, dedup_window_ms: 300_000, txn: Default::default() }
    }
}

/// The use cases over the store and the timer.
#[derive(Clone)]
pub struct Broker {
    pub(crate) store: Arc<Store>,
    pub(crate) timer: Arc<TimerEngine>,
    opts: BrokerOptions,
    txn_opts: transactions::TxnOptions,
    dedup_locks: Arc<dedup::DedupLocks>,
    txns: Arc<transactions::Transactions>,
}

/// Why a use case failed. Transports map these to their own answers.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// No such topic (and sends do not create them), or no such message in the topic.
    #[error("{0}")]
    NotFound(String),
    /// A cancel of a message that is already visible to consumers (or about to be).
    #[error("message {0} is already visible to consumers")]
    AlreadyDelivered(MessageId),
    /// The timer refused: a slot is full (`timer.max_per_slot`).
    #[error("{0}")]
    Busy(String),
    /// The store refused (full disk, poisoned, a quota, shutting down).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The timer cannot serve the request now (an I/O error, a stopped pipeline).
    #[error("{0}")]
    Unavailable(String),
    /// The request is not acceptable (a value out of range); the message names the field.
    #[error("{0}")]
    Invalid(String),
    /// A configured quota (`limits.*`) refused it.
    #[error("{0}")]
    LimitExceeded(String),
    /// A transaction resolved (or being resolved) the other way.
    #[error("{0}")]
    Conflict(String),
}

impl ServiceError {
    fn from_timer(e: TimerError, what: impl FnOnce() -> String) -> Self {
        match e {
            TimerError::NotFound => ServiceError::NotFound(what()),
            TimerError::Store(e) => ServiceError::Store(e),
            e @ TimerError::SlotFull { .. } => ServiceError::Busy(e.to_string()),
            e => ServiceError::Unavailable(e.to_string()),
        }
    }
}

impl Broker {
    pub fn new(store: Arc<Store>, timer: Arc<TimerEngine>, opts: BrokerOptions) -> Self {
        Self { store, timer, opts, txn_opts: opts.txn, dedup_locks: Arc::default(), txns: Arc::default() }
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn timer(&self) -> &Arc<TimerEngine> {
        &self.timer
    }
}
