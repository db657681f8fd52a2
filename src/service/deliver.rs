//! Delivery: what a consumer sees of a stored record. A fired message carries the id its
//! sender was given (in a reserved property); the timer's reserved properties are not shown.

use crate::store::record::Record;
use crate::store::MessageId;
use crate::timer::{PROP_ID, SYSTEM_PROP_PREFIX};

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
    /// When it became visible (the store time of this record).
    pub visible_at_ms: i64,
}

/// The delivered view of `rec`, stored at commit-log offset `log_offset`.
pub fn deliver<'a>(rec: &Record<'a>, log_offset: u64) -> DeliveredMessage<'a> {
    let props = rec.properties();
    let id = match props.iter().find(|(k, _)| *k == PROP_ID) {
        Some((_, id)) => id.to_string(),
        None => MessageId { offset: log_offset, crc: rec.crc }.to_string(),
    };
    DeliveredMessage {
        id,
        topic: rec.topic,
        tag: rec.tag,
        keys: rec.keys(),
        properties: props.into_iter().filter(|(k, _)| !k.starts_with(SYSTEM_PROP_PREFIX)).collect(),
        body: rec.body,
        binary: rec.binary(),
        born_ms: rec.born_ms,
        deliver_at_ms: rec.deliver_at_ms,
        visible_at_ms: rec.store_ms,
    }
}
