//! Send: normal and scheduled messages, one or a batch, stored all-or-nothing.
//!
//! Normal messages are appended to their topic; scheduled ones to the timer's system topic,
//! with their topic in the reserved property `PROP_TOPIC`, counted by the timer first
//! (`TimerEngine::reserve`, which refuses a batch that would overfill a slot) and committed
//! after the append (their state cells made, the timer woken). A batch mixing both is one
//! append of two parts. The send is acknowledged once the log is durable past it, as the flush
//! policy says ([`Store::wait_durable`](crate::store::Store::wait_durable)).

use std::sync::Arc;

use super::{Broker, ServiceError};
use crate::group::fifo::PROP_MESSAGE_GROUP;
use crate::store::topics::Topic;
use crate::store::{MessageId, NewMessage};
use crate::timer::PROP_TOPIC;

/// One stored message, in the order sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    pub id: MessageId,
    /// When it becomes visible; the store time for a normal message.
    pub deliver_at_ms: i64,
    /// Scheduled for later (else visible at once).
    pub scheduled: bool,
}

/// What an append stored, and the log position that must be durable before it is acknowledged.
#[derive(Debug, Clone)]
pub struct Appended {
    pub sent: Vec<Sent>,
    pub durable_at: u64,
}

impl Broker {
    /// The topic a send goes to: created if it does not exist and sends may create topics.
    pub fn topic_for_send(&self, name: &str) -> Result<Arc<Topic>, ServiceError> {
        if let Some(t) = self.store.topics().get(name) {
            return Ok(t);
        }
        if !self.opts.auto_create_topics {
            return Err(ServiceError::NotFound(format!("topic {name:?} does not exist (auto_create_topics is off)")));
        }
        Ok(self.store.topics().create(name, self.opts.default_queues)?.0)
    }

    /// Stores `msgs` for `topic` (a message with `deliver_at_ms` is scheduled), all or none,
    /// without waiting for durability: see [`Broker::send`].
    pub fn append(&self, topic: &str, msgs: Vec<NewMessage>) -> Result<Appended, ServiceError> {
        // Above `store.disk_hard_limit` (see `crate::retention`) nothing new is stored; the
        // timer's fires and everything else go on.
        if !self.store.accepting() {
            let context = "the disk is above store.disk_hard_limit; sends pass again once retention frees space".into();
            return Err(crate::store::StoreError::DiskFull { context }.into());
        }
        let dest = self.topic_for_send(topic)?;
        let sys = self.timer.system_topic();
        // Parts of the one all-or-nothing append: normal messages by queue (a message group's
        // messages all go to its queue; the rest round robin), then the scheduled ones.
        let mut normal: Vec<(Option<u16>, Vec<NewMessage>)> = Vec::new();
        let mut scheduled = Vec::new();
        // Per message: `None` if scheduled, else its normal part.
        let mut order: Vec<Option<usize>> = Vec::with_capacity(msgs.len());
        for mut m in msgs {
            if m.deliver_at_ms.is_some() {
                m.properties.insert(PROP_TOPIC.to_string(), topic.to_string());
                order.push(None);
                scheduled.push(m);
                continue;
            }
            let queue = m.properties.get(PROP_MESSAGE_GROUP).map(|g| dest.queue_for(Some(g)));
            let part = match normal.iter().position(|(q, _)| *q == queue) {
                Some(i) => i,
                None => {
                    normal.push((queue, Vec::new()));
                    normal.len() - 1
                }
            };
            normal[part].1.push(m);
            order.push(Some(part));
        }
        let mut parts: Vec<(&Topic, Option<u16>, &[NewMessage])> =
            normal.iter().map(|(q, m)| (dest.as_ref(), *q, m.as_slice())).collect();
        if !scheduled.is_empty() {
            parts.push((sys.as_ref(), None, scheduled.as_slice()));
        }
        // Counted (and checked against `timer.max_per_slot`) before the append, so a full slot
        // refuses the whole batch and a failed append takes its counts back.
        let reservation = if scheduled.is_empty() {
            None
        } else {
            let at = scheduled.iter().map(|m| m.deliver_at_ms.expect("scheduled")).collect();
            Some(self.timer.reserve(topic, at).map_err(|e| ServiceError::from_timer(e, String::new))?)
        };
        let results = self.store.append_parts(&parts)?;
        let sched_res = if scheduled.is_empty() { None } else { results.last() };
        if let (Some(r), Some(res)) = (reservation, sched_res) {
            r.commit(res).map_err(|e| ServiceError::Unavailable(e.to_string()))?;
        }
        let durable_at = results.iter().map(|r| r.end).max().unwrap_or(0);
        let mut cursors: Vec<_> = results.iter().map(|r| r.messages.iter()).collect();
        let sched_part = normal.len();
        let sent = order
            .iter()
            .map(|part| {
                let a = cursors[part.unwrap_or(sched_part)].next().expect("one result per message");
                Sent { id: a.id, deliver_at_ms: a.deliver_at_ms, scheduled: part.is_none() }
            })
            .collect();
        Ok(Appended { sent, durable_at })
    }

    /// Stores `msgs` for `topic` ([`Broker::append`]) and returns once they are as durable as
    /// the flush policy promises: the point a send may be acknowledged.
    pub async fn send(&self, topic: &str, msgs: Vec<NewMessage>) -> Result<Vec<Sent>, ServiceError> {
        let a = self.append(topic, msgs)?;
        self.store.wait_durable(a.durable_at).await?;
        Ok(a.sent)
    }
}
