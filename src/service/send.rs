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
        let (mut normal, mut scheduled) = (Vec::new(), Vec::new());
        let mut order = Vec::with_capacity(msgs.len());
        for mut m in msgs {
            if m.deliver_at_ms.is_some() {
                m.properties.insert(PROP_TOPIC.to_string(), topic.to_string());
                order.push(true);
                scheduled.push(m);
            } else {
                order.push(false);
                normal.push(m);
            }
        }
        let parts: Vec<(&Topic, &[NewMessage])> =
            [(dest.as_ref(), normal.as_slice()), (sys.as_ref(), scheduled.as_slice())]
                .into_iter()
                .filter(|(_, m)| !m.is_empty())
                .collect();
        // Counted (and checked against `timer.max_per_slot`) before the append, so a full slot
        // refuses the whole batch and a failed append takes its counts back.
        let reservation = if scheduled.is_empty() {
            None
        } else {
            let at = scheduled.iter().map(|m| m.deliver_at_ms.expect("scheduled")).collect();
            Some(self.timer.reserve(topic, at).map_err(|e| ServiceError::from_timer(e, String::new))?)
        };
        let mut results = self.store.append_parts(&parts)?.into_iter();
        let normal_res = if normal.is_empty() { None } else { results.next() };
        let sched_res = if scheduled.is_empty() { None } else { results.next() };
        if let (Some(r), Some(res)) = (reservation, &sched_res) {
            r.commit(res).map_err(|e| ServiceError::Unavailable(e.to_string()))?;
        }
        let durable_at = normal_res.iter().chain(sched_res.iter()).map(|r| r.end).max().unwrap_or(0);
        let (mut n_it, mut s_it) =
            (normal_res.iter().flat_map(|r| r.messages.iter()), sched_res.iter().flat_map(|r| r.messages.iter()));
        let sent = order
            .iter()
            .map(|&scheduled| {
                let a = if scheduled { s_it.next() } else { n_it.next() }.expect("one result per message");
                Sent { id: a.id, deliver_at_ms: a.deliver_at_ms, scheduled }
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
