//! Lookup and cancel: what a message id names, its state, cancelling a scheduled one, and the
//! messages sent with a business key.
//!
//! An id is the record's commit-log offset and CRC. A normal message's record is in its topic;
//! a scheduled message's is in the timer's system topic (its topic in a reserved property),
//! and the timer answers for its state. A cancel is final once it returns `Ok`: the state
//! cell's page is fsync'd first (it blocks for that, so it runs on the blocking pool).

use super::{Broker, ServiceError};
use crate::store::{MessageId, VerifiedRecord};
use crate::timer::{MessageState, TimerError, PROP_TOPIC, SYSTEM_TOPIC};

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

    /// The messages of `topic` sent with `key` among their keys, newest first, at most
    /// `limit`: normal ones, and scheduled ones whether pending, delivered or cancelled (a
    /// scheduled message is indexed under the timer's system topic until it fires, and its
    /// fired copy under the topic: one answer per id). From the key index: the cost is the
    /// messages with that key, not the log.
    pub fn find_by_key(&self, topic: &str, key: &str, limit: usize) -> Vec<KeyHit> {
        let mut offsets = self.store.find_by_key(topic, key, limit * 3);
        offsets.extend(self.store.find_by_key(SYSTEM_TOPIC, key, limit * 3));
        offsets.sort_unstable_by(|a, b| b.cmp(a));
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for off in offsets {
            if out.len() >= limit {
                break;
            }
            let Some(r) = self.store.read_verified(off) else { continue };
            let rec = r.record();
            let ours = rec.topic == topic || (rec.topic == SYSTEM_TOPIC && rec.property(PROP_TOPIC) == Some(topic));
            if !ours || !rec.keys().contains(&key) {
                continue; // a hash collision, or another topic's scheduled message
            }
            let id = if rec.topic == SYSTEM_TOPIC {
                crate::timer::carry::message_id(&r)
            } else {
                super::deliver(&rec, off).id
            };
            if !seen.insert(id.clone()) {
                continue;
            }
            let Ok((_, deliver_at_ms, state)) = self.status(topic, &id) else { continue };
            out.push(KeyHit {
                id,
                tag: rec.tag.map(str::to_string),
                keys: rec
                    .keys()
                    .into_iter()
                    .filter(|k| !super::dedup::is_reserved_key(k))
                    .map(str::to_string)
                    .collect(),
                born_ms: rec.born_ms,
                deliver_at_ms,
                state,
            });
        }
        // Newest first by when each was sent (its id holds the offset of its first record; a
        // fired copy lies later in the log than the messages sent after it).
        out.sort_by_key(|h| std::cmp::Reverse(h.id.parse::<MessageId>().map_or(0, |m| m.offset)));
        out
    }
}

/// A message found by key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyHit {
    pub id: String,
    pub tag: Option<String>,
    pub keys: Vec<String>,
    pub born_ms: i64,
    pub deliver_at_ms: i64,
    pub state: MessageState,
}
