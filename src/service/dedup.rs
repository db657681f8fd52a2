//! Deduplicated sends (API.md "Deduplication"): a send whose `dedup_id` was accepted for the
//! same topic within `dedup.window` stores nothing and is answered with the first send's
//! message.
//!
//! **No table of its own.** A message sent with a `dedup_id` carries it as a reserved key
//! ([`dedup_key`]: a NUL, `dedup`, a NUL, the id; a client's keys cannot start with a NUL), so
//! the key index finds it ([`Broker::find_by_key`]: the scheduled record and its fired copy
//! answer as one id). The index is on disk, flushed with the store's checkpoint, replayed from
//! the log at start-up and reclaimed with its segments, so dedup survives restarts and
//! crashes exactly as the sends it remembers do, costs no memory per id (24 bytes of index on
//! disk), and forgets an id once the window has passed (`born_ms`, the time the first send was
//! accepted) or its record was reclaimed, whichever comes first.
//!
//! **Races.** Two sends with the same id must not both store: the lookup and the append run
//! under one of [`STRIPES`] locks chosen by the id's hash (all of a batch's, in order). The
//! locks are released before waiting for durability; a repeat waits for the message it found
//! as that message's own send did ([`crate::store::Store::wait_durable`]: under `store.flush =
//! "sync"` until it is fsync'd), so its 200 promises what the 201 did.

use std::collections::HashMap;

use parking_lot::Mutex;

use super::{Broker, ServiceError};
use crate::store::{MessageId, NewMessage};
use crate::timer::MessageState;

/// Locks over the dedup ids' hashes.
pub const STRIPES: usize = 64;

/// The reserved key under which a message sent with `dedup_id` is indexed.
pub fn dedup_key(dedup_id: &str) -> String {
    format!("\u{0}dedup\u{0}{dedup_id}")
}

/// Whether `key` is reserved (never shown as one of a message's keys, never accepted on send).
pub fn is_reserved_key(key: &str) -> bool {
    key.starts_with('\u{0}')
}

/// The stripe locks of a broker.
pub struct DedupLocks(Vec<Mutex<()>>);

impl Default for DedupLocks {
    fn default() -> Self {
        Self((0..STRIPES).map(|_| Mutex::new(())).collect())
    }
}

/// The answer for one message of a deduplicated send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Stored now.
    Stored(super::Sent),
    /// A repeat: the message first sent with its id, as it is now.
    Duplicate { id: MessageId, deliver_at_ms: i64, state: MessageState },
}

impl Broker {
    /// Sends `msgs` to `topic` (each with its `dedup_id`, if any), all-or-nothing for the new
    /// ones: a message whose id was accepted within the window (or earlier in the same batch)
    /// is answered with the original and not stored. Returns once what it stored is durable.
    pub async fn send_deduplicated(
        &self,
        topic: &str,
        msgs: Vec<(NewMessage, Option<String>)>,
    ) -> Result<Vec<Outcome>, ServiceError> {
        let now = self.store.clock().now_ms();
        let window = self.opts.dedup_window_ms;
        let mut stripes: Vec<usize> = msgs.iter().filter_map(|(_, d)| d.as_deref()).map(|d| stripe(topic, d)).collect();
        stripes.sort_unstable();
        stripes.dedup();
        let (appended, answers, wait_for) = {
            let _held: Vec<_> = stripes.iter().map(|&s| self.dedup_locks.0[s].lock()).collect();
            // Per message: an earlier one (`Ok(Some)`), the index of the batch's first with the
            // same id (`Err(i)`), or new (`Ok(None)`).
            let mut first_in_batch: HashMap<String, usize> = HashMap::new();
            let mut answers: Vec<Result<Option<Outcome>, usize>> = Vec::with_capacity(msgs.len());
            let mut fresh = Vec::new();
            let mut wait_for = 0u64;
            for (i, (mut m, d)) in msgs.into_iter().enumerate() {
                let Some(d) = d else {
                    answers.push(Ok(None));
                    fresh.push(m);
                    continue;
                };
                if let Some(&j) = first_in_batch.get(&d) {
                    answers.push(Err(j));
                    continue;
                }
                let key = dedup_key(&d);
                let earlier = self.find_by_key(topic, &key, 1).into_iter().next().filter(|h| h.born_ms > now - window);
                match earlier.and_then(|h| Some((h.id.parse::<MessageId>().ok()?, h))) {
                    Some((id, h)) => {
                        wait_for = wait_for.max(id.offset + 1);
                        answers.push(Ok(Some(Outcome::Duplicate {
                            id,
                            deliver_at_ms: h.deliver_at_ms,
                            state: h.state,
                        })));
                    }
                    None => {
                        first_in_batch.insert(d, i);
                        m.keys.push(key);
                        answers.push(Ok(None));
                        fresh.push(m);
                    }
                }
            }
            let appended = if fresh.is_empty() { None } else { Some(self.append(topic, fresh)?) };
            (appended, answers, wait_for)
        };
        let durable_at = appended.as_ref().map_or(0, |a| a.durable_at).max(wait_for.min(self.store.write_pos()));
        self.store.wait_durable(durable_at).await?;
        let mut stored = appended.map(|a| a.sent).unwrap_or_default().into_iter();
        let mut out: Vec<Outcome> = Vec::with_capacity(answers.len());
        for a in answers {
            let o = match a {
                Ok(Some(dup)) => dup,
                Ok(None) => Outcome::Stored(stored.next().expect("one result per stored message")),
                Err(j) => match &out[j] {
                    Outcome::Stored(s) => Outcome::Duplicate {
                        id: s.id,
                        deliver_at_ms: s.deliver_at_ms,
                        state: if s.scheduled { MessageState::Scheduled } else { MessageState::Delivered },
                    },
                    dup => dup.clone(),
                },
            };
            out.push(o);
        }
        Ok(out)
    }
}

fn stripe(topic: &str, dedup_id: &str) -> usize {
    (crate::store::key_index::hash(topic, dedup_id) % STRIPES as u64) as usize
}
