//! Lookup and cancel: what a message id names, its state, and cancelling a scheduled one.
//!
//! An id is the record's commit-log offset and CRC. A normal message's record is in its topic;
//! a scheduled message's is in the timer's system topic (its topic in a reserved property),
//! and the timer answers for its state. A cancel is final once it returns `Ok`: the state
//! cell's page is fsync'd first (it blocks for that, so it runs on the blocking pool).

use super::{Broker, ServiceError};
use crate::store::{MessageId, VerifiedRecord};
use crate::timer::{MessageState, TimerError, SYSTEM_TOPIC};

/// What an id names in a topic.
pub enum Found {
    /// A scheduled message (the timer knows its state): its id and its record, checked once
    /// (the current copy's, if retention carried it forward).
    Scheduled(MessageId, VerifiedRecord),
    /// A normal message, visible since it was stored; its deliver time.
    Normal(MessageId, i64),
}

impl Broker {
    /// Resolves `id` in `topic`; `NotFound` for an unknown or malformed id, or another topic's.
    /// A message retention carried forward is answered for by its copy: when its own record is
    /// gone, or first if `copy_first` (its own record said MOVED). Its own record, while it is
    /// there and not moved, is the truth (a map entry of a carry that did not complete is not).
    pub fn find(&self, topic: &str, id: &str, copy_first: bool) -> Result<Found, ServiceError> {
        let unknown = || ServiceError::NotFound(format!("no message {id:?} in topic {topic:?}"));
        let mid: MessageId = id.parse().map_err(|_| unknown())?;
        let copy = || self.timer.current(mid).and_then(|cur| self.store.read_id(cur));
        if copy_first {
            if let Some(r) = copy() {
                return Ok(Found::Scheduled(mid, r));
            }
        }
        let Some(r) = self.store.read_id(mid) else {
            return copy().map(|r| Found::Scheduled(mid, r)).ok_or_else(unknown);
        };
        let rec = r.record();
        if rec.topic == SYSTEM_TOPIC {
            return Ok(Found::Scheduled(mid, r));
        }
        if rec.topic != topic {
            return Err(unknown());
        }
        Ok(Found::Normal(mid, rec.deliver_at_ms))
    }

    /// A message's id, deliver time and state.
    pub fn status(&self, topic: &str, id: &str) -> Result<(MessageId, i64, MessageState), ServiceError> {
        let unknown = || format!("no message {id:?} in topic {topic:?}");
        // A carry-forward may finish between the lookup and the read of the cell: the second
        // lookup finds the copy (it is mapped before the original's cell moves).
        for attempt in 0..3 {
            match self.find(topic, id, attempt > 0)? {
                Found::Normal(mid, at) => return Ok((mid, at, MessageState::Delivered)),
                Found::Scheduled(mid, r) => match self.timer.status(topic, &r) {
                    Ok((st, at)) => return Ok((mid, at, st)),
                    Err(TimerError::Moved) => continue,
                    Err(e) => return Err(ServiceError::from_timer(e, unknown)),
                },
            }
        }
        Err(ServiceError::NotFound(unknown()))
    }

    /// Cancels a scheduled message: `Ok` means it will never become visible, after a power cut
    /// too. A normal message (or a fired one) is `AlreadyDelivered`.
    pub async fn cancel(&self, topic: &str, id: &str) -> Result<MessageId, ServiceError> {
        let unknown = || format!("no message {id:?} in topic {topic:?}");
        for attempt in 0..3 {
            let (mid, r) = match self.find(topic, id, attempt > 0)? {
                Found::Normal(mid, _) => return Err(ServiceError::AlreadyDelivered(mid)),
                Found::Scheduled(mid, r) => (mid, r),
            };
            // The cancel fsyncs its state cell before it returns: off the async runtime.
            let (timer, t) = (self.timer.clone(), topic.to_string());
            let cancelled = tokio::task::spawn_blocking(move || timer.cancel(&t, &r))
                .await
                .map_err(|e| ServiceError::Unavailable(format!("cancel task failed: {e}")))?;
            match cancelled {
                Ok(_) => return Ok(mid),
                Err(TimerError::AlreadyDelivered) => return Err(ServiceError::AlreadyDelivered(mid)),
                Err(TimerError::Moved) => continue, // carried forward meanwhile: cancel the copy
                Err(e) => return Err(ServiceError::from_timer(e, unknown)),
            }
        }
        Err(ServiceError::NotFound(unknown()))
    }
}
