//! The consumer lifecycle (API.md "Consumer groups: retry, dead letters, lag, seek, lookup by
//! key"): receive, ack, nack with backoff, extend, dead letters, seek, a group's configuration
//! and figures. The bookkeeping lives in `crate::group`; what needs the rest of the broker is
//! here:
//!
//! - **A delivery leaves its queue in two steps**, whether to a delayed redelivery (a nack) or
//!   to the dead letter topic (after the last attempt): it is taken out of delivery and marked
//!   *moving* in the group's state, and the mark is made durable (the group's file is written);
//!   then what it moves to is stored, carrying a property with the delivery's key
//!   (`{topic}/{group}/{queue}/{offset}/{attempts}`); then it is done. After a crash, a mark
//!   whose copy is already stored (looked for from the commit-log position the mark records)
//!   is finished without storing it again, and one whose copy is not there is stored now. So a
//!   kill at any moment neither loses the message nor leaves it both moved and redelivered (a
//!   message is dead-lettered once).
//! - **A delayed redelivery is a timer job**: a copy of the message, scheduled for the
//!   group's retry topic (`%RETRY%{topic}%{group}`, one queue) after the delay, with the
//!   deliveries so far in a reserved property (`group::PROP_ATTEMPTS`). While it waits it costs
//!   no memory of the group's; it survives restarts like any scheduled message; the group
//!   receives its retry topic after the topic itself, under the original id.
//! - **A dead letter** keeps the message's id, body, tag, keys and properties, and says where it
//!   came from (`group::PROP_DLQ_*`).
//!
//! The cost: a nack writes the group's file (one fsync, shared by the handles of one call) and
//! one record.

use std::collections::HashSet;
use std::sync::Arc;

use parking_lot::Mutex;

use super::{Broker, ServiceError};
use crate::group::config::retry_topic;
use crate::group::fifo::PROP_MESSAGE_GROUP;
use crate::group::{
    Batch, GroupConfig, GroupError, Groups, Nacked, Received, SeekTo, TagExpr, PROP_ATTEMPTS, PROP_DLQ_ATTEMPTS,
    PROP_DLQ_GROUP, PROP_DLQ_OF, PROP_DLQ_TOPIC, PROP_RETRY_OF,
};
use crate::store::topics::Topic;
use crate::store::{NewMessage, VerifiedRecord};
use crate::timer::carry::PROP_ORIGIN;
use crate::timer::PROP_ID;

/// Failpoints (test builds): `return` stops storing dead letters and redeliveries right after
/// their marks are durable (before any is stored), or right after they are stored (before the
/// group knows): where a crash leaves a mark.
pub const STOP_BEFORE_DEAD_LETTER: &str = "service::before_dead_letter";
pub const STOP_AFTER_DEAD_LETTER: &str = "service::after_dead_letter";

impl From<GroupError> for ServiceError {
    fn from(e: GroupError) -> Self {
        match e {
            GroupError::LimitExceeded { .. } => ServiceError::LimitExceeded(e.to_string()),
            GroupError::Io { .. } => ServiceError::Unavailable(e.to_string()),
        }
    }
}

/// The consumer use cases over the broker and the groups.
#[derive(Clone)]
pub struct Consumers {
    broker: Broker,
    groups: Arc<Groups>,
    /// Groups whose dead letters are being stored now (one at a time per group).
    finishing: Arc<Mutex<HashSet<(String, String)>>>,
}

/// What a nack did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct NackOutcome {
    pub nacked: usize,
    pub invalid: Vec<String>,
    /// Of the nacked, those on their last attempt: moved to the dead letter topic.
    pub dead_lettered: usize,
}

impl Consumers {
    pub fn new(broker: Broker, groups: Arc<Groups>) -> Self {
        Self { broker, groups, finishing: Arc::default() }
    }

    pub fn groups(&self) -> &Arc<Groups> {
        &self.groups
    }

    /// Hands out messages (`Groups::receive`), after storing the dead letters it or an earlier
    /// run took out of delivery.
    pub async fn receive(
        &self,
        group: &str,
        topic: &Arc<Topic>,
        batch: Batch,
        invisible_ms: i64,
        expr: &TagExpr,
    ) -> Result<Received, ServiceError> {
        let r = self.groups.receive(group, topic, batch, invisible_ms, expr)?;
        if r.moving {
            let ended = self.finish_moves(group, topic).await?;
            // A dead letter stored may have freed a FIFO message group: receive once more
            // rather than leave its next message to a later receive.
            if ended > 0 && r.messages.is_empty() {
                let again = self.groups.receive(group, topic, batch, invisible_ms, expr)?;
                return Ok(Received { dead_lettered: r.dead_lettered + again.dead_lettered, ..again });
            }
        }
        Ok(r)
    }

    /// Redelivers each valid delivery after `delay_ms`, or after the group's backoff for the
    /// attempt it was on; one on its last attempt goes to the dead letter topic instead.
    pub async fn nack(
        &self,
        group: &str,
        topic: &Arc<Topic>,
        handles: &[String],
        delay_ms: Option<i64>,
    ) -> Result<NackOutcome, ServiceError> {
        let (taken, invalid) = self.groups.nack_take(group, topic, handles);
        let cfg = self.groups.config(group, topic).unwrap_or_default();
        let now = self.broker.store.clock().now_ms();
        let mut moves: Vec<(&Nacked, Option<i64>)> = taken
            .iter()
            .map(|k| {
                let last = k.attempts >= cfg.max_delivery_attempts;
                let at = now.saturating_add(delay_ms.unwrap_or_else(|| cfg.backoff_ms(k.attempts)));
                (k, (!last).then_some(at))
            })
            .collect();
        let dead = moves.iter().filter(|(_, at)| at.is_none()).count();
        // A FIFO group redelivers in place: its message group waits for the message, so it
        // cannot go through the retry topic (and be overtaken meanwhile).
        let mut in_place = 0;
        if cfg.fifo {
            let delayed: Vec<(&Nacked, i64)> = moves.iter().filter_map(|&(k, at)| Some((k, at?))).collect();
            in_place = self.groups.delay(group, topic, &delayed);
            moves.retain(|(_, at)| at.is_none());
        }
        if in_place > 0 {
            // Durable before the answer, as a nack's mark is.
            let (groups, g, t) = (self.groups.clone(), group.to_string(), topic.clone());
            tokio::task::spawn_blocking(move || groups.persist_one(&g, &t))
                .await
                .map_err(|e| ServiceError::Unavailable(format!("persist task failed: {e}")))??;
        }
        let nacked = in_place + self.groups.begin_moves(group, topic, &moves);
        if nacked > 0 {
            self.finish_moves(group, topic).await?;
        }
        Ok(NackOutcome { nacked, invalid, dead_lettered: dead })
    }

    /// Stores what the group's deliveries on their way out move to (module doc): dead letters
    /// and delayed redeliveries. Their marks are made durable first; what a run a crash
    /// stopped already stored is not stored again.
    pub async fn finish_moves(&self, group: &str, topic: &Arc<Topic>) -> Result<usize, ServiceError> {
        let key = (group.to_string(), topic.name.clone());
        if !self.finishing.lock().insert(key.clone()) {
            return Ok(0); // another call is storing them
        }
        let finishing = self.finishing.clone();
        let _guard = scopeguard(move || {
            finishing.lock().remove(&key);
        });
        let pending = self.groups.moving(group, topic);
        if pending.is_empty() {
            return Ok(0);
        }
        let (groups, g, t) = (self.groups.clone(), group.to_string(), topic.clone());
        tokio::task::spawn_blocking(move || groups.persist_one(&g, &t))
            .await
            .map_err(|e| ServiceError::Unavailable(format!("persist task failed: {e}")))??;
        let cfg = self.groups.config(group, topic).unwrap_or_default();
        let dlq = cfg.dead_letter_topic(group);
        let retry = retry_topic(&topic.name, group);
        let since = pending.iter().map(|d| d.m.from).min().unwrap_or(0);
        // A delayed redelivery waits in the timer's system topic until it fires into the
        // retry topic; one due at once is in the retry topic.
        let stored_dead = self.stored(&[&dlq], PROP_DLQ_OF, since);
        let stored_retries = self.stored(&[&retry, crate::timer::SYSTEM_TOPIC], PROP_RETRY_OF, since);
        let (mut dead, mut again) = (Vec::new(), Vec::new());
        for d in &pending {
            let Some(r) = &d.record else { continue };
            match d.m.retry_at {
                None if !stored_dead.contains(&d.key) => {
                    dead.push(dead_letter_of(r, &topic.name, group, d.m.attempts, &d.key))
                }
                Some(at) if !stored_retries.contains(&d.key) => {
                    let now = self.broker.store.clock().now_ms();
                    again.push(redelivery_of(r, d.m.attempts, (at > now).then_some(at), &d.key));
                }
                _ => {}
            }
        }
        fail::fail_point!(STOP_BEFORE_DEAD_LETTER, |_| Err(ServiceError::Unavailable("stopped by a failpoint".into())));
        for (name, msgs) in [(&dlq, dead), (&retry, again)] {
            if !msgs.is_empty() {
                self.broker.store.topics().create_unlimited(name, 1)?;
                self.broker.send(name, msgs).await?;
            }
        }
        fail::fail_point!(STOP_AFTER_DEAD_LETTER, |_| Err(ServiceError::Unavailable("stopped by a failpoint".into())));
        let done: Vec<(usize, u64)> = pending.iter().map(|d| (d.queue, d.offset)).collect();
        self.groups.end_moves(group, topic, &done);
        Ok(done.len())
    }

    /// The values of property `prop` of the messages made visible in `topics` at or after
    /// commit-log position `since` (each queue read backwards from its end).
    fn stored(&self, topics: &[&str], prop: &str, since: u64) -> HashSet<String> {
        let mut out = HashSet::new();
        let store = &self.broker.store;
        for t in topics.iter().filter_map(|name| store.topics().get(name)) {
            store.scan_newest_first(&t, |r| {
                if r.visible_pos < since {
                    return false;
                }
                out.extend(r.record.record().property(prop).map(str::to_string));
                true
            });
        }
        out
    }

    /// Sets a group's configuration: `true` if it had none (201), else `false` (200).
    pub fn configure(&self, group: &str, topic: &Topic, config: GroupConfig) -> Result<bool, ServiceError> {
        config.validate().map_err(ServiceError::Invalid)?;
        if let Some(dlq) = &config.dead_letter_topic {
            crate::names::check_name("topic", dlq)
                .map_err(|m| ServiceError::Invalid(format!("dead_letter_topic: {m}")))?;
            if *dlq == topic.name {
                return Err(ServiceError::Invalid("dead_letter_topic must not be the topic itself".into()));
            }
        }
        Ok(self.groups.configure(group, topic, config)?)
    }

    /// Moves a group (module `group::Groups::seek`), after storing its pending dead letters.
    pub async fn seek(&self, group: &str, topic: &Arc<Topic>, to: SeekTo) -> Result<u64, ServiceError> {
        self.finish_moves(group, topic).await?;
        Ok(self.groups.seek(group, topic, to)?)
    }
}

/// Runs `f` when dropped.
fn scopeguard(f: impl FnOnce()) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

/// The id a consumer knows the message of `r` by.
fn original_id(r: &VerifiedRecord) -> String {
    r.record().property(PROP_ID).map_or_else(|| r.id().to_string(), str::to_string)
}

/// The user's part of a record: tag, keys, properties (none reserved), body, message group.
fn copy_of(r: &VerifiedRecord) -> NewMessage {
    r.record().to_message(|k| !k.starts_with("__") || k == PROP_MESSAGE_GROUP)
}

/// The delayed redelivery of `r` after `attempts` deliveries, due at `at` (`None`: at once),
/// following the delivery `key`.
fn redelivery_of(r: &VerifiedRecord, attempts: u32, at: Option<i64>, key: &str) -> NewMessage {
    let mut m = copy_of(r);
    m.properties.insert(PROP_ATTEMPTS.into(), attempts.to_string());
    m.properties.insert(PROP_RETRY_OF.into(), key.to_string());
    // A scheduled one fires under the id its record answers for (`PROP_ORIGIN`); one stored
    // at once carries it as a fired message does.
    let id_prop = if at.is_some() { PROP_ORIGIN } else { PROP_ID };
    m.properties.insert(id_prop.into(), original_id(r));
    m.deliver_at_ms = at;
    m
}

/// The dead letter of `r`: the same id, body, tag, keys and properties, and where it came from.
fn dead_letter_of(r: &VerifiedRecord, topic: &str, group: &str, attempts: u32, key: &str) -> NewMessage {
    let mut m = copy_of(r);
    for (k, v) in [
        (PROP_ID, original_id(r)),
        (PROP_DLQ_TOPIC, topic.to_string()),
        (PROP_DLQ_GROUP, group.to_string()),
        (PROP_DLQ_ATTEMPTS, attempts.to_string()),
        (PROP_DLQ_OF, key.to_string()),
    ] {
        m.properties.insert(k.into(), v);
    }
    m
}
