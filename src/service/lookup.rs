//! Lookup and cancel: what a message id names, its state, and cancelling a scheduled one.
//!
//! An id is the record's commit-log offset and CRC. A normal message's record is in its topic;
//! a scheduled message's is in the timer's system topic (its topic in a reserved property),
//! and the timer answers for its state. A cancel is final once it returns `Ok`: the state
//! cell's page is fsync'd first (it blocks for that, so it runs on the blocking pool).

use super::{Broker, ServiceError};
use crate::store::{MessageId, VerifiedRecord};
use crate::timer::{MessageState, SYSTEM_TOPIC};

/// What an id names in a topic.
pub enum Found {
    /// A scheduled message (the timer knows its state): its record, checked once.
    Scheduled(VerifiedRecord),
    /// A normal message, visible since it was stored; its deliver time.
    Normal(MessageId, i64),
}

impl Broker {
    /// Resolves `id` in `topic`; `NotFound` for an unknown or malformed id, or another topic's.
    pub fn find(&self, topic: &str, id: &str) -> Result<Found, ServiceError> {
        let unknown = || ServiceError::NotFound(format!("no message {id:?} in topic {topic:?}"));
        let mid: MessageId = id.parse().map_err(|_| unknown())?;
        let r = self.store.read_id(mid).ok_or_else(unknown)?;
        let rec = r.record();
        if rec.topic == SYSTEM_TOPIC {
            return Ok(Found::Scheduled(r));
        }
        if rec.topic != topic {
            return Err(unknown());
        }
        Ok(Found::Normal(mid, rec.deliver_at_ms))
    }

    /// A message's id, deliver time and state.
    pub fn status(&self, topic: &str, id: &str) -> Result<(MessageId, i64, MessageState), ServiceError> {
        match self.find(topic, id)? {
            Found::Normal(mid, at) => Ok((mid, at, MessageState::Delivered)),
            Found::Scheduled(r) => {
                let (st, at) = self
                    .timer
                    .status(topic, &r)
                    .map_err(|e| ServiceError::from_timer(e, || format!("no message {id:?} in topic {topic:?}")))?;
                Ok((r.id(), at, st))
            }
        }
    }

    /// Cancels a scheduled message: `Ok` means it will never become visible, after a power cut
    /// too. A normal message (or a fired one) is `AlreadyDelivered`.
    pub async fn cancel(&self, topic: &str, id: &str) -> Result<MessageId, ServiceError> {
        let r = match self.find(topic, id)? {
            Found::Normal(mid, _) => return Err(ServiceError::AlreadyDelivered(mid)),
            Found::Scheduled(r) => r,
        };
        let mid = r.id();
        // The cancel fsyncs its state cell before it returns: off the async runtime.
        let (timer, t) = (self.timer.clone(), topic.to_string());
        let cancelled = tokio::task::spawn_blocking(move || timer.cancel(&t, &r))
            .await
            .map_err(|e| ServiceError::Unavailable(format!("cancel task failed: {e}")))?;
        match cancelled {
            Ok(_) => Ok(mid),
            Err(crate::timer::TimerError::AlreadyDelivered) => Err(ServiceError::AlreadyDelivered(mid)),
            Err(e) => Err(ServiceError::from_timer(e, || format!("no message {id:?} in topic {topic:?}"))),
        }
    }
}
