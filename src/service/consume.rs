//! The consumer lifecycle (API.md "Consumer groups: retry, dead letters, lag, seek, lookup by
//! key"): receive, ack, nack with backoff, extend, dead letters, seek, a group's configuration
//! and figures. The bookkeeping lives in `crate::group`; what needs the rest of the broker is
//! here:
//!
//! - **A delayed redelivery is a timer job.** A nack stores a copy of the message as a
//!   scheduled message for the group's retry topic (`%RETRY%{topic}%{group}`, one queue), due
//!   after the delay, with the deliveries so far in a reserved property, and only then marks
//!   the delivery done. While it waits it costs the timer's usual nothing-in-memory; it
//!   survives restarts like any scheduled message; the group receives its retry topic after
//!   the topic itself, under the original id. A crash between the two steps redelivers the
//!   message once more (at least once), never loses it.
//! - **Dead letters, exactly once.** A message whose next delivery would pass
//!   `max_delivery_attempts` is taken out of delivery and marked *dead-lettering* in the
//!   group's state; the mark is made durable (the group's file is written) before its dead
//!   letter is stored in the dead letter topic, with a property naming the delivery it ends
//!   (`group::PROP_DLQ_OF`); then it is done. After a crash, a mark whose dead letter the
//!   dead letter topic already holds (looked for from the commit-log position the mark
//!   records) is finished without storing it again; one whose dead letter is not there is
//!   stored now. So a kill at any moment neither loses the message nor leaves it both in the
//!   dead letter topic and redelivered.

use std::collections::HashSet;
use std::sync::Arc;

use parking_lot::Mutex;

use super::{Broker, ServiceError};
use crate::group::config::retry_topic;
use crate::group::{
    Batch, GroupConfig, GroupError, Groups, Nacked, Received, SeekTo, TagExpr, PROP_ATTEMPTS, PROP_DLQ_ATTEMPTS,
    PROP_DLQ_GROUP, PROP_DLQ_OF, PROP_DLQ_TOPIC,
};
use crate::store::topics::Topic;
use crate::store::{NewMessage, VerifiedRecord};
use crate::timer::carry::PROP_ORIGIN;
use crate::timer::PROP_ID;

/// Failpoints (test builds): `return` stops storing dead letters right after their marks are
/// durable (before any is stored), or right after they are stored (before the group knows):
/// where a crash leaves a mark.
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
        if r.dead_lettered > 0 || self.groups.has_dead_lettering(group, topic) {
            self.finish_dead_letters(group, topic).await?;
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
        let (last, again): (Vec<Nacked>, Vec<Nacked>) =
            taken.into_iter().partition(|k| k.attempts >= cfg.max_delivery_attempts);
        let mut nacked = 0;
        if !again.is_empty() {
            let name = retry_topic(&topic.name, group);
            self.broker.store.topics().create_unlimited(&name, 1)?;
            let now = self.broker.store.clock().now_ms();
            let msgs = again
                .iter()
                .map(|k| {
                    let at = now.saturating_add(delay_ms.unwrap_or_else(|| cfg.backoff_ms(k.attempts)));
                    redelivery_of(&k.record, k.attempts, (at > now).then_some(at))
                })
                .collect();
            self.broker.send(&name, msgs).await?;
            nacked += self.groups.nack_done(group, topic, &again);
        }
        let dead = last.len();
        if dead > 0 {
            self.groups.begin_dead_letters(group, topic, &last);
            self.finish_dead_letters(group, topic).await?;
        }
        Ok(NackOutcome { nacked: nacked + dead, invalid, dead_lettered: dead })
    }

    /// Stores the dead letters of `group` being stored (module doc): the marks made durable
    /// first, those already stored (by a run a crash stopped) not stored again.
    pub async fn finish_dead_letters(&self, group: &str, topic: &Arc<Topic>) -> Result<usize, ServiceError> {
        let key = (group.to_string(), topic.name.clone());
        if !self.finishing.lock().insert(key.clone()) {
            return Ok(0); // another call is storing them
        }
        let finishing = self.finishing.clone();
        let _guard = scopeguard(move || {
            finishing.lock().remove(&key);
        });
        let pending = self.groups.dead_lettering(group, topic);
        if pending.is_empty() {
            return Ok(0);
        }
        let (groups, g, t) = (self.groups.clone(), group.to_string(), topic.clone());
        tokio::task::spawn_blocking(move || groups.persist_one(&g, &t))
            .await
            .map_err(|e| ServiceError::Unavailable(format!("persist task failed: {e}")))??;
        let cfg = self.groups.config(group, topic).unwrap_or_default();
        let dlq = cfg.dead_letter_topic(group);
        let since = pending.iter().map(|d| d.from).min().unwrap_or(0);
        let stored = self.stored_dead_letters(&dlq, since);
        let mut msgs = Vec::new();
        for d in &pending {
            if stored.contains(&d.key) {
                continue;
            }
            if let Some(r) = &d.record {
                msgs.push(dead_letter_of(r, &topic.name, group, d.attempts, &d.key));
            }
        }
        fail::fail_point!(STOP_BEFORE_DEAD_LETTER, |_| Err(ServiceError::Unavailable("stopped by a failpoint".into())));
        if !msgs.is_empty() {
            self.broker.store.topics().create_unlimited(&dlq, 1)?;
            self.broker.send(&dlq, msgs).await?;
        }
        fail::fail_point!(STOP_AFTER_DEAD_LETTER, |_| Err(ServiceError::Unavailable("stopped by a failpoint".into())));
        let done: Vec<(usize, u64)> = pending.iter().map(|d| (d.queue, d.offset)).collect();
        self.groups.end_dead_letters(group, topic, &done);
        Ok(done.len())
    }

    /// The `PROP_DLQ_OF` keys of the dead letters stored in `dlq` at or after commit-log
    /// position `since` (read backwards from each queue's end).
    fn stored_dead_letters(&self, dlq: &str, since: u64) -> HashSet<String> {
        let mut out = HashSet::new();
        let store = &self.broker.store;
        let Some(t) = store.topics().get(dlq) else { return out };
        for q in &t.queues {
            for i in (q.start()..q.next()).rev() {
                let Some(e) = q.get(i) else { break };
                if e.log_offset < since {
                    break;
                }
                if let Some(k) =
                    store.read_verified(e.log_offset).and_then(|r| r.record().property(PROP_DLQ_OF).map(str::to_string))
                {
                    out.insert(k);
                }
            }
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
        self.finish_dead_letters(group, topic).await?;
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

/// The user's part of a record: tag, keys, properties (none reserved), body.
fn copy_of(r: &VerifiedRecord) -> NewMessage {
    let rec = r.record();
    NewMessage {
        tag: rec.tag.map(str::to_string),
        keys: rec.keys().into_iter().map(str::to_string).collect(),
        properties: rec
            .properties()
            .into_iter()
            .filter(|(k, _)| !k.starts_with("__"))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        body: rec.body.to_vec(),
        binary: rec.binary(),
        born_ms: rec.born_ms,
        deliver_at_ms: None,
    }
}

/// The delayed redelivery of `r` after `attempts` deliveries, due at `at` (`None`: at once).
fn redelivery_of(r: &VerifiedRecord, attempts: u32, at: Option<i64>) -> NewMessage {
    let mut m = copy_of(r);
    m.properties.insert(PROP_ATTEMPTS.into(), attempts.to_string());
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
