//! Delivery: what a consumer sees of a stored record. A fired message (and a redelivery or a
//! dead letter) carries the id its sender was given (in a reserved property); reserved
//! properties are not shown, but a dead letter's say where it came from. When it became visible
//! is not here: it is not always the record's store time (a fired message is stored ahead of
//! its time, `crate::store::staged`), so a delivery carries it (`Delivery::visible_at_ms`).

use crate::group::fifo::PROP_MESSAGE_GROUP;
use crate::group::{PROP_DLQ_ATTEMPTS, PROP_DLQ_GROUP, PROP_DLQ_TOPIC};
use crate::store::record::Record;
use crate::store::MessageId;
use crate::timer::PROP_ID;

/// Where a dead letter came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterInfo<'a> {
    pub topic: &'a str,
    pub group: &'a str,
    pub delivery_attempts: u32,
}

/// A message as delivered, borrowing from its decoded record.
#[derive(Debug, Clone)]
pub struct DeliveredMessage<'a> {
    /// The id the sender was given.
    pub id: String,
    pub topic: &'a str,
    pub tag: Option<&'a str>,
    pub keys: Vec<&'a str>,
    /// The sender's properties (none of the timer's).
    pub properties: Vec<(&'a str, &'a str)>,
    pub body: &'a [u8],
    /// Sent as binary (`body_base64`), not text.
    pub binary: bool,
    pub born_ms: i64,
    pub deliver_at_ms: i64,
    /// For a message in a dead letter topic: where it came from.
    pub dead_letter: Option<DeadLetterInfo<'a>>,
    /// Its ordering key, if it was sent with one.
    pub message_group: Option<&'a str>,
}

/// The delivered view of `rec`, stored at commit-log offset `log_offset`.
pub fn deliver<'a>(rec: &Record<'a>, log_offset: u64) -> DeliveredMessage<'a> {
    let props = rec.properties();
    let id = match props.iter().find(|(k, _)| *k == PROP_ID) {
        Some((_, id)) => id.to_string(),
        None => MessageId { offset: log_offset, crc: rec.crc }.to_string(),
    };
    let prop = |name: &str| props.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
    let dead_letter = match (prop(PROP_DLQ_TOPIC), prop(PROP_DLQ_GROUP)) {
        (Some(topic), Some(group)) => Some(DeadLetterInfo {
            topic,
            group,
            delivery_attempts: prop(PROP_DLQ_ATTEMPTS).and_then(|a| a.parse().ok()).unwrap_or(0),
        }),
        _ => None,
    };
    let mut keys = rec.keys();
    keys.retain(|k| !super::dedup::is_reserved_key(k));
    DeliveredMessage {
        dead_letter,
        message_group: prop(PROP_MESSAGE_GROUP),
        id,
        topic: rec.topic,
        tag: rec.tag,
        keys,
        // Every property starting with `__` is reserved (a send cannot set one): not shown.
        properties: props.into_iter().filter(|(k, _)| !k.starts_with("__")).collect(),
        body: rec.body,
        binary: rec.binary(),
        born_ms: rec.born_ms,
        deliver_at_ms: rec.deliver_at_ms,
    }
}
