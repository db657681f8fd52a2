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
        self.check_accepting()?;
        let dest = self.topic_for_send(topic)?;
        let msgs = msgs.into_iter().map(|m| (dest.clone(), m)).collect();
        Ok(self.append_multi(msgs, Vec::new())?.0)
    }

    /// Above `store.disk_hard_limit` (see `crate::retention`) nothing new is stored; the
    /// timer's fires and everything else go on.
    pub(crate) fn check_accepting(&self) -> Result<(), ServiceError> {
        if !self.store.accepting() {
            let context = "the disk is above store.disk_hard_limit; sends pass again once retention frees space".into();
            return Err(crate::store::StoreError::DiskFull { context }.into());
        }
        Ok(())
    }

    /// Stores `msgs`, each for its topic (one with `deliver_at_ms` is scheduled), and `extra`
    /// records as they are (to internal topics, queue 0), as one all-or-nothing append.
    /// Returns what `msgs` became, in order, and what `extra` did.
    pub(crate) fn append_multi(
        &self,
        msgs: Vec<(Arc<Topic>, NewMessage)>,
        extra: Vec<(Arc<Topic>, NewMessage)>,
    ) -> Result<(Appended, Vec<crate::store::Appended>), ServiceError> {
        let sys = self.timer.system_topic();
        // Parts of the one append, per destination topic: normal messages by queue (a message
        // group's messages all go to its queue; the rest round robin), then its scheduled ones
        // (to the timer's system topic, one part per destination, each with its reservation).
        struct Dest {
            topic: Arc<Topic>,
            normal: Vec<(Option<u16>, Vec<NewMessage>)>,
            scheduled: Vec<NewMessage>,
        }
        let mut dests: Vec<Dest> = Vec::new();
        // Per message: its destination, and `None` if scheduled, else its normal part.
        let mut order: Vec<(usize, Option<usize>)> = Vec::with_capacity(msgs.len());
        for (t, mut m) in msgs {
            let d = match dests.iter().position(|d| Arc::ptr_eq(&d.topic, &t)) {
                Some(d) => d,
                None => {
                    dests.push(Dest { topic: t.clone(), normal: Vec::new(), scheduled: Vec::new() });
                    dests.len() - 1
                }
            };
            let dest = &mut dests[d];
            if m.deliver_at_ms.is_some() {
                m.properties.insert(PROP_TOPIC.to_string(), t.name.clone());
                order.push((d, None));
                dest.scheduled.push(m);
                continue;
            }
            let queue = m.properties.get(PROP_MESSAGE_GROUP).map(|g| t.queue_for(Some(g)));
            let part = match dest.normal.iter().position(|(q, _)| *q == queue) {
                Some(i) => i,
                None => {
                    dest.normal.push((queue, Vec::new()));
                    dest.normal.len() - 1
                }
            };
            dest.normal[part].1.push(m);
            order.push((d, Some(part)));
        }
        let mut parts: Vec<(&Topic, Option<u16>, &[NewMessage])> = Vec::new();
        // Per destination: the index of its first normal part, and of its scheduled part.
        let mut at: Vec<(usize, Option<usize>)> = Vec::new();
        for d in &dests {
            let first = parts.len();
            parts.extend(d.normal.iter().map(|(q, m)| (d.topic.as_ref(), *q, m.as_slice())));
            let sched = (!d.scheduled.is_empty()).then(|| {
                parts.push((sys.as_ref(), None, d.scheduled.as_slice()));
                parts.len() - 1
            });
            at.push((first, sched));
        }
        let extra_from = parts.len();
        parts.extend(extra.iter().map(|(t, m)| (t.as_ref(), Some(0), std::slice::from_ref(m))));
        // Counted (and checked against `timer.max_per_slot`) before the append, so a full slot
        // refuses the whole batch and a failed append takes its counts back.
        let mut reservations = Vec::new();
        for (d, &(_, sched)) in dests.iter().zip(&at) {
            if let Some(part) = sched {
                let times = d.scheduled.iter().map(|m| m.deliver_at_ms.expect("scheduled")).collect();
                let r =
                    self.timer.reserve(&d.topic.name, times).map_err(|e| ServiceError::from_timer(e, String::new))?;
                reservations.push((r, part));
            }
        }
        let results = self.store.append_parts(&parts)?;
        for (r, part) in reservations {
            r.commit(&results[part]).map_err(|e| ServiceError::Unavailable(e.to_string()))?;
        }
        let durable_at = results.iter().map(|r| r.end).max().unwrap_or(0);
        let mut cursors: Vec<_> = results.iter().map(|r| r.messages.iter()).collect();
        let sent = order
            .iter()
            .map(|&(d, part)| {
                let i = match part {
                    Some(p) => at[d].0 + p,
                    None => at[d].1.expect("a scheduled part"),
                };
                let a = cursors[i].next().expect("one result per message");
                Sent { id: a.id, deliver_at_ms: a.deliver_at_ms, scheduled: part.is_none() }
            })
            .collect();
        let extra_out = results[extra_from..].iter().filter_map(|r| r.messages.first().copied()).collect();
        Ok((Appended { sent, durable_at }, extra_out))
    }

    /// Stores `msgs` for `topic` ([`Broker::append`]) and returns once they are as durable as
    /// the flush policy promises: the point a send may be acknowledged.
    pub async fn send(&self, topic: &str, msgs: Vec<NewMessage>) -> Result<Vec<Sent>, ServiceError> {
        let a = self.append(topic, msgs)?;
        self.store.wait_durable(a.durable_at).await?;
        Ok(a.sent)
    }
}
