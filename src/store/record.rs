//! Commit-log record format: encoding, decoding and validation.
//!
//! Every message is stored once, as one record, in the commit log. All integers are
//! little-endian. A record never spans two segments.
//!
//! ```text
//! offset size field
//!  0     4    total_len      u32  length of the whole record, this field included
//!  4     4    magic          u32  MAGIC_MESSAGE, or MAGIC_BLANK for end-of-segment padding
//!  8     4    crc            u32  CRC32C of bytes [12, total_len)
//! 12     8    queue_offset   u64  index of this message in its consume queue
//! 20     8    born_ms        i64  when the server received the request
//! 28     8    store_ms       i64  when the record was appended
//! 36     8    deliver_at_ms  i64  when it becomes visible (= store_ms for a normal message)
//! 44     2    queue_id       u16
//! 46     2    flags          u16  FLAG_BINARY | FLAG_BATCH | FLAG_BATCH_END | FLAG_STAGED | FLAG_PUBLISH
//! 48     2    topic_len      u16  1..=255
//! 50     2    tag_len        u16  0 = no tag
//! 52     4    keys_len       u32  bytes of the keys section
//! 56     4    props_len      u32  bytes of the properties section
//! 60     4    body_len       u32
//! 64          topic, tag, keys section, properties section, body (in this order)
//! keys section:       repeated { u16 len, bytes }
//! properties section: repeated { u16 key_len, key, u32 value_len, value }
//! ```
//!
//! A blank record (`MAGIC_BLANK`) fills the rest of a segment when the next record does not fit;
//! only its first 8 bytes are written. Fewer than 8 bytes left at the end of a segment need no
//! marker. A `total_len` of zero means nothing was written there (files are zero-filled).
//!
//! Invariants: `total_len == HEADER_LEN + topic_len + tag_len + keys_len + props_len + body_len`;
//! the CRC covers everything after itself, so a torn or corrupted record is detected; all strings
//! are UTF-8. Records of a batch carry `FLAG_BATCH`, its last one also `FLAG_BATCH_END`, so
//! recovery can drop a batch whose end never reached the disk (a batch is all-or-nothing).
//!
//! Two kinds of record let the timer store a fired message ahead of its time and make it
//! visible at its millisecond with a few bytes (`crate::store::Store::append_staged` and
//! `publish_staged`):
//! - a **staged** record (`FLAG_STAGED`) is a message for its topic and queue, stored but not
//!   indexed: its queue offset is 0, no consume queue points at it until it is published;
//! - a **publish** record (`FLAG_PUBLISH`) makes staged records visible: for its topic and
//!   queue, entries `queue_offset ..` of the consume queue, one per staged record named in its
//!   body (`n × { u64 log offset of the staged record, u64 tag hash }`, see [`publish_body`]).
//!   It has no tag, keys or properties; its store time is when they became visible. It is
//!   never a message itself.

use std::collections::BTreeMap;

// Field offsets of the header, each the previous one plus its size (the layout above).
const TOTAL_LEN_AT: usize = 0;
const MAGIC_AT: usize = TOTAL_LEN_AT + 4;
const CRC_AT: usize = MAGIC_AT + 4;
/// The CRC covers the record from here to its end.
const CRC_FROM: usize = CRC_AT + 4;
const QUEUE_OFFSET_AT: usize = CRC_FROM;
const BORN_AT: usize = QUEUE_OFFSET_AT + 8;
const STORE_AT: usize = BORN_AT + 8;
const DELIVER_AT: usize = STORE_AT + 8;
const QUEUE_ID_AT: usize = DELIVER_AT + 8;
const FLAGS_AT: usize = QUEUE_ID_AT + 2;
const TOPIC_LEN_AT: usize = FLAGS_AT + 2;
const TAG_LEN_AT: usize = TOPIC_LEN_AT + 2;
const KEYS_LEN_AT: usize = TAG_LEN_AT + 2;
const PROPS_LEN_AT: usize = KEYS_LEN_AT + 4;
const BODY_LEN_AT: usize = PROPS_LEN_AT + 4;
/// Bytes before the variable part.
pub const HEADER_LEN: usize = BODY_LEN_AT + 4;
const _: () = assert!(HEADER_LEN == 64);
/// Marks a message record ("CHIME" + format version 1).
pub const MAGIC_MESSAGE: u32 = 0xC41E_0001;
/// Marks end-of-segment padding.
pub const MAGIC_BLANK: u32 = 0xC41E_B1A4;
/// The smallest gap that gets a blank marker (`total_len` + `magic`).
pub const BLANK_MARKER_LEN: usize = 8;

/// The body was sent as `body_base64` and is returned that way.
pub const FLAG_BINARY: u16 = 1;
/// The record belongs to a batch.
pub const FLAG_BATCH: u16 = 2;
/// The record is the last of its batch.
pub const FLAG_BATCH_END: u16 = 4;
/// A fired message stored ahead of its time, not indexed until a publish record names it.
pub const FLAG_STAGED: u16 = 8;
/// Makes the staged records its body names visible (module doc).
pub const FLAG_PUBLISH: u16 = 16;
/// Bytes per staged record named in a publish record's body.
pub const PUBLISHED_LEN: usize = 16;

/// The body of a publish record naming `staged` (log offset, tag hash) in queue order.
pub fn publish_body(staged: impl ExactSizeIterator<Item = (u64, u64)>) -> Vec<u8> {
    let mut b = Vec::with_capacity(staged.len() * PUBLISHED_LEN);
    for (offset, tag) in staged {
        push_u64(&mut b, offset);
        push_u64(&mut b, tag);
    }
    b
}

/// Entry `i` of a publish record's body: the staged record's log offset and its tag hash.
pub fn published_at(body: &[u8], i: usize) -> Option<(u64, u64)> {
    let b = body.get(i * PUBLISHED_LEN..(i + 1) * PUBLISHED_LEN)?;
    Some((u64_at(b, 0), u64_at(b, 8)))
}

/// Why bytes do not decode as a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("record truncated: need {need} bytes, have {have}")]
    Truncated { need: usize, have: usize },
    #[error("bad magic {0:#010x}")]
    BadMagic(u32),
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    BadChecksum { stored: u32, computed: u32 },
    #[error("malformed record: {0}")]
    Malformed(&'static str),
}

/// A message to append, before the store assigns its position.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewMessage {
    pub tag: Option<String>,
    pub keys: Vec<String>,
    pub properties: BTreeMap<String, String>,
    pub body: Vec<u8>,
    /// The body arrived base64-encoded.
    pub binary: bool,
    pub born_ms: i64,
    /// `None` for a normal message (visible when stored).
    pub deliver_at_ms: Option<i64>,
}

/// A decoded record, borrowing its variable parts from the buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    pub queue_offset: u64,
    pub born_ms: i64,
    pub store_ms: i64,
    pub deliver_at_ms: i64,
    pub queue_id: u16,
    pub flags: u16,
    pub topic: &'a str,
    pub tag: Option<&'a str>,
    keys: &'a [u8],
    props: &'a [u8],
    pub body: &'a [u8],
    pub crc: u32,
}

impl Record<'_> {
    /// The message's payload as stored: its keys, properties and body (with their length
    /// prefixes), what a receive's `max_bytes` counts.
    pub fn payload_len(&self) -> usize {
        self.keys.len() + self.props.len() + self.body.len()
    }
}

/// What lies at a position of the commit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A valid message record of `len` bytes.
    Message { record: Record<'a>, len: usize },
    /// End-of-segment padding: continue at the next segment.
    Blank,
    /// Zero bytes: nothing was ever written here.
    End,
}

use crate::codec::{
    get_u16 as u16_at, get_u32 as u32_at, get_u64 as u64_at, push_i64, push_u16, push_u32, push_u64, put_u16, put_u32,
    put_u64,
};

/// The deliver time of an encoded (sealed) record, without decoding it.
pub fn raw_deliver_at(rec: &[u8]) -> i64 {
    u64_at(rec, DELIVER_AT) as i64
}

/// The tag of an encoded record, without decoding it (`None`: no tag, or not UTF-8).
pub fn raw_tag(rec: &[u8]) -> Option<&str> {
    let topic_len = u16_at(rec, TOPIC_LEN_AT) as usize;
    let tag_len = u16_at(rec, TAG_LEN_AT) as usize;
    if tag_len == 0 {
        return None;
    }
    let at = HEADER_LEN + topic_len;
    std::str::from_utf8(&rec[at..at + tag_len]).ok()
}

/// Whether an encoded record has keys.
pub fn raw_has_keys(rec: &[u8]) -> bool {
    u32_at(rec, KEYS_LEN_AT) > 0
}

/// The keys of an encoded record (as [`encode`] wrote them), without decoding it.
pub fn raw_keys(rec: &[u8]) -> impl Iterator<Item = &str> {
    let at = HEADER_LEN + u16_at(rec, TOPIC_LEN_AT) as usize + u16_at(rec, TAG_LEN_AT) as usize;
    let mut b = &rec[at..at + u32_at(rec, KEYS_LEN_AT) as usize];
    std::iter::from_fn(move || {
        if b.len() < 2 {
            return None;
        }
        let n = u16_at(b, 0) as usize;
        let key = std::str::from_utf8(b.get(2..2 + n)?).ok();
        b = b.get(2 + n..).unwrap_or(&[]);
        key
    })
}

/// Size of the encoded record for `topic` and `msg`.
pub fn encoded_len(topic: &str, msg: &NewMessage) -> usize {
    HEADER_LEN + topic.len() + msg.tag.as_ref().map_or(0, |t| t.len()) + keys_len(msg) + props_len(msg) + msg.body.len()
}

fn keys_len(msg: &NewMessage) -> usize {
    msg.keys.iter().map(|k| 2 + k.len()).sum()
}

fn props_len(msg: &NewMessage) -> usize {
    msg.properties.iter().map(|(k, v)| 2 + k.len() + 4 + v.len()).sum()
}

/// The fixed part of a record and its topic, before the position fields are sealed.
struct Header<'t> {
    born_ms: i64,
    deliver_at_ms: i64,
    queue_id: u16,
    flags: u16,
    topic: &'t str,
    tag_len: usize,
    keys_len: usize,
    props_len: usize,
    body_len: usize,
}

impl Header<'_> {
    /// Reserves room for the whole record, appends the header and the topic (zero CRC, queue
    /// offset and store time, sealed later); returns the record's total length.
    fn write(&self, out: &mut Vec<u8>) -> usize {
        let total = HEADER_LEN + self.topic.len() + self.tag_len + self.keys_len + self.props_len + self.body_len;
        let start = out.len();
        out.reserve(total);
        push_u32(out, total as u32);
        push_u32(out, MAGIC_MESSAGE);
        push_u32(out, 0); // crc, sealed later
        push_u64(out, 0); // queue_offset, sealed later
        push_i64(out, self.born_ms);
        push_i64(out, 0); // store_ms, sealed later
        push_i64(out, self.deliver_at_ms);
        push_u16(out, self.queue_id);
        push_u16(out, self.flags);
        push_u16(out, self.topic.len() as u16);
        push_u16(out, self.tag_len as u16);
        push_u32(out, self.keys_len as u32);
        push_u32(out, self.props_len as u32);
        push_u32(out, self.body_len as u32);
        debug_assert_eq!(out.len() - start, HEADER_LEN);
        out.extend_from_slice(self.topic.as_bytes());
        total
    }
}

/// Appends one entry of the properties section.
fn push_property(out: &mut Vec<u8>, k: &str, v: &str) {
    push_u16(out, k.len() as u16);
    out.extend_from_slice(k.as_bytes());
    push_u32(out, v.len() as u32);
    out.extend_from_slice(v.as_bytes());
}

/// Appends the record for `msg` to `out`, with placeholder position fields (zero queue offset,
/// store time and CRC) that [`seal`] fills in once the store has assigned them.
///
/// The caller has validated lengths: topic 1..=255 bytes, tag ≤ 65535, each key ≤ 65535,
/// each property key ≤ 65535 bytes, the whole record ≤ u32::MAX.
pub fn encode(out: &mut Vec<u8>, topic: &str, queue_id: u16, flags: u16, msg: &NewMessage) {
    let total = encoded_len(topic, msg);
    let start = out.len();
    let header = Header {
        born_ms: msg.born_ms,
        deliver_at_ms: msg.deliver_at_ms.unwrap_or(0),
        queue_id,
        flags: flags | if msg.binary { FLAG_BINARY } else { 0 },
        topic,
        tag_len: msg.tag.as_ref().map_or(0, |t| t.len()),
        keys_len: keys_len(msg),
        props_len: props_len(msg),
        body_len: msg.body.len(),
    };
    header.write(out);
    if let Some(tag) = &msg.tag {
        out.extend_from_slice(tag.as_bytes());
    }
    for k in &msg.keys {
        push_u16(out, k.len() as u16);
        out.extend_from_slice(k.as_bytes());
    }
    for (k, v) in &msg.properties {
        push_property(out, k, v);
    }
    out.extend_from_slice(&msg.body);
    debug_assert_eq!(out.len() - start, total);
}

/// Appends a new record for `topic` derived from `orig`, with placeholder position fields as
/// [`encode`] leaves them: the same born time, tag, keys, body and binary flag, visible at
/// `deliver_at_ms`, and `orig`'s properties less those whose key starts with `drop_prefix`
/// (and any with `extra`'s key), plus `extra`, in key order.
///
/// Byte for byte what [`encode`] makes of the equivalent [`NewMessage`] (whose properties are a
/// `BTreeMap`, so in key order), built without decoding the parts into owned values: this is
/// how the timer turns a scheduled record into the one it fires. `orig` came from [`decode`],
/// so its properties are in key order too, and the lengths fit their fields.
pub fn encode_derived(
    out: &mut Vec<u8>,
    orig: &Record<'_>,
    topic: &str,
    deliver_at_ms: i64,
    drop_prefix: &str,
    extra: (&str, &str),
) {
    let keep = |k: &str| !k.starts_with(drop_prefix) && k != extra.0;
    let mut props_len = 2 + extra.0.len() + 4 + extra.1.len();
    let _ = orig.walk_properties(|k, _, entry| {
        if keep(k) {
            props_len += entry.len();
        }
    });
    let start = out.len();
    let header = Header {
        born_ms: orig.born_ms,
        deliver_at_ms,
        queue_id: 0, // set by the store
        flags: if orig.binary() { FLAG_BINARY } else { 0 },
        topic,
        tag_len: orig.tag.map_or(0, str::len),
        keys_len: orig.keys.len(),
        props_len,
        body_len: orig.body.len(),
    };
    let total = header.write(out);
    out.extend_from_slice(orig.tag.unwrap_or("").as_bytes());
    out.extend_from_slice(orig.keys);
    let mut extra_written = false;
    let put_extra = |out: &mut Vec<u8>| push_property(out, extra.0, extra.1);
    let _ = orig.walk_properties(|k, _, entry| {
        if !keep(k) {
            return;
        }
        if !extra_written && k > extra.0 {
            put_extra(out);
            extra_written = true;
        }
        out.extend_from_slice(entry);
    });
    if !extra_written {
        put_extra(out);
    }
    out.extend_from_slice(orig.body);
    debug_assert_eq!(out.len() - start, total);
}

/// Fills in the position fields of an encoded record and computes its CRC; returns the CRC.
/// A normal message (deliver_at 0 at encode time) becomes visible at `store_ms`.
pub fn seal(rec: &mut [u8], queue_offset: u64, store_ms: i64, extra_flags: u16) -> u32 {
    put_u64(rec, QUEUE_OFFSET_AT, queue_offset);
    put_u64(rec, STORE_AT, store_ms as u64);
    if u64_at(rec, DELIVER_AT) == 0 {
        put_u64(rec, DELIVER_AT, store_ms as u64);
    }
    let flags = u16_at(rec, FLAGS_AT) | extra_flags;
    put_u16(rec, FLAGS_AT, flags);
    let crc = crc32c::crc32c(&rec[CRC_FROM..]);
    put_u32(rec, CRC_AT, crc);
    crc
}

/// Sets the queue id of an encoded record and adds `flags` (before [`seal`]).
pub fn set_queue(rec: &mut [u8], queue_id: u16, flags: u16) {
    put_u16(rec, QUEUE_ID_AT, queue_id);
    let f = u16_at(rec, FLAGS_AT) | flags;
    put_u16(rec, FLAGS_AT, f);
}

/// The 8-byte blank marker that pads the `len` bytes left at the end of a segment.
pub fn blank_marker(len: usize) -> [u8; BLANK_MARKER_LEN] {
    let mut m = [0u8; BLANK_MARKER_LEN];
    put_u32(&mut m, TOTAL_LEN_AT, len as u32);
    put_u32(&mut m, MAGIC_AT, MAGIC_BLANK);
    m
}

/// Decodes whatever starts at `buf[0]` (the rest of a segment, or exactly one record).
pub fn decode(buf: &[u8]) -> Result<Decoded<'_>, RecordError> {
    if buf.len() < BLANK_MARKER_LEN {
        return if buf.iter().all(|&b| b == 0) {
            Ok(Decoded::End)
        } else {
            Err(RecordError::Truncated { need: BLANK_MARKER_LEN, have: buf.len() })
        };
    }
    let total = u32_at(buf, TOTAL_LEN_AT) as usize;
    let magic = u32_at(buf, MAGIC_AT);
    if total == 0 && magic == 0 {
        return Ok(Decoded::End);
    }
    match magic {
        MAGIC_BLANK => return Ok(Decoded::Blank),
        MAGIC_MESSAGE => {}
        other => return Err(RecordError::BadMagic(other)),
    }
    if total < HEADER_LEN {
        return Err(RecordError::Malformed("total_len below header length"));
    }
    if buf.len() < total {
        return Err(RecordError::Truncated { need: total, have: buf.len() });
    }
    let rec = &buf[..total];
    let stored = u32_at(rec, CRC_AT);
    let computed = crc32c::crc32c(&rec[CRC_FROM..]);
    if stored != computed {
        return Err(RecordError::BadChecksum { stored, computed });
    }
    let record = parse(rec)?;
    Ok(Decoded::Message { record, len: total })
}

/// Parses exactly one record whose framing and checksum are known good: its header and
/// sections. [`decode`] checks them first; a `store::VerifiedRecord` has checked them once.
pub(crate) fn parse(rec: &[u8]) -> Result<Record<'_>, RecordError> {
    let total = rec.len();
    if total < HEADER_LEN {
        return Err(RecordError::Malformed("total_len below header length"));
    }
    let topic_len = u16_at(rec, TOPIC_LEN_AT) as usize;
    let tag_len = u16_at(rec, TAG_LEN_AT) as usize;
    let keys_len = u32_at(rec, KEYS_LEN_AT) as usize;
    let props_len = u32_at(rec, PROPS_LEN_AT) as usize;
    let body_len = u32_at(rec, BODY_LEN_AT) as usize;
    let var = topic_len
        .checked_add(tag_len)
        .and_then(|n| n.checked_add(keys_len))
        .and_then(|n| n.checked_add(props_len))
        .and_then(|n| n.checked_add(body_len))
        .ok_or(RecordError::Malformed("section lengths overflow"))?;
    if HEADER_LEN + var != total {
        return Err(RecordError::Malformed("section lengths do not add up to total_len"));
    }
    if topic_len == 0 {
        return Err(RecordError::Malformed("empty topic"));
    }
    let mut at = HEADER_LEN;
    let mut take = |n: usize| {
        let s = &rec[at..at + n];
        at += n;
        s
    };
    let topic = std::str::from_utf8(take(topic_len)).map_err(|_| RecordError::Malformed("topic not UTF-8"))?;
    let tag = take(tag_len);
    let tag = if tag.is_empty() {
        None
    } else {
        Some(std::str::from_utf8(tag).map_err(|_| RecordError::Malformed("tag not UTF-8"))?)
    };
    let keys = take(keys_len);
    let props = take(props_len);
    let body = take(body_len);
    let record = Record {
        queue_offset: u64_at(rec, QUEUE_OFFSET_AT),
        born_ms: u64_at(rec, BORN_AT) as i64,
        store_ms: u64_at(rec, STORE_AT) as i64,
        deliver_at_ms: u64_at(rec, DELIVER_AT) as i64,
        queue_id: u16_at(rec, QUEUE_ID_AT),
        flags: u16_at(rec, FLAGS_AT),
        topic,
        tag,
        keys,
        props,
        body,
        crc: u32_at(rec, CRC_AT),
    };
    // Validate the sections now, so iterating them later cannot fail.
    record.walk_keys(|_| ())?;
    record.walk_properties(|_, _, _| ())?;
    Ok(record)
}

impl<'a> Record<'a> {
    /// The record as a message to store again (tag, keys, body, born time), with the
    /// properties `keep` accepts and no deliver time: what a carried-forward copy, a delayed
    /// redelivery and a dead letter start from.
    pub fn to_message(&self, keep: impl Fn(&str) -> bool) -> NewMessage {
        NewMessage {
            tag: self.tag.map(str::to_string),
            keys: self.keys().into_iter().map(str::to_string).collect(),
            properties: self
                .properties()
                .into_iter()
                .filter(|(k, _)| keep(k))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: self.body.to_vec(),
            binary: self.binary(),
            born_ms: self.born_ms,
            deliver_at_ms: None,
        }
    }

    pub fn binary(&self) -> bool {
        self.flags & FLAG_BINARY != 0
    }

    /// A fired message stored ahead of its time (`FLAG_STAGED`).
    pub fn staged(&self) -> bool {
        self.flags & FLAG_STAGED != 0
    }

    /// A publish record (`FLAG_PUBLISH`): not a message.
    pub fn publish(&self) -> bool {
        self.flags & FLAG_PUBLISH != 0
    }

    /// The staged records a publish record names, in queue order (empty for any other record).
    pub fn published(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        let n = if self.publish() { self.body.len() / PUBLISHED_LEN } else { 0 };
        (0..n).filter_map(|i| published_at(self.body, i))
    }

    /// Calls `visit` with each business key; fails on a malformed section.
    fn walk_keys(&self, mut visit: impl FnMut(&'a str)) -> Result<(), RecordError> {
        let mut b = self.keys;
        while !b.is_empty() {
            if b.len() < 2 {
                return Err(RecordError::Malformed("keys section"));
            }
            let n = u16_at(b, 0) as usize;
            let s = b.get(2..2 + n).ok_or(RecordError::Malformed("keys section"))?;
            visit(std::str::from_utf8(s).map_err(|_| RecordError::Malformed("key not UTF-8"))?);
            b = &b[2 + n..];
        }
        Ok(())
    }

    /// Calls `visit` with each property's key, value and encoded bytes (the whole entry); fails
    /// on a malformed section.
    fn walk_properties(&self, mut visit: impl FnMut(&'a str, &'a str, &'a [u8])) -> Result<(), RecordError> {
        let mut b = self.props;
        let bad = RecordError::Malformed("properties section");
        while !b.is_empty() {
            let kn = u16_at(b.get(..2).ok_or(bad.clone())?, 0) as usize;
            let k = b.get(2..2 + kn).ok_or(bad.clone())?;
            let vn = u32_at(b.get(2 + kn..6 + kn).ok_or(bad.clone())?, 0) as usize;
            let v = b.get(6 + kn..6 + kn + vn).ok_or(bad.clone())?;
            let utf8 = |s| std::str::from_utf8(s).map_err(|_| RecordError::Malformed("property not UTF-8"));
            visit(utf8(k)?, utf8(v)?, &b[..6 + kn + vn]);
            b = &b[6 + kn + vn..];
        }
        Ok(())
    }

    /// The business keys (validated by [`decode`]).
    pub fn keys(&self) -> Vec<&'a str> {
        let mut out = Vec::new();
        let _ = self.walk_keys(|k| out.push(k));
        out
    }

    /// The properties (validated by [`decode`]).
    pub fn properties(&self) -> Vec<(&'a str, &'a str)> {
        let mut out = Vec::new();
        let _ = self.walk_properties(|k, v, _| out.push((k, v)));
        out
    }

    /// The value of property `key`, if the record has it.
    pub fn property(&self, key: &str) -> Option<&'a str> {
        let mut found = None;
        let _ = self.walk_properties(|k, v, _| {
            if found.is_none() && k == key {
                found = Some(v);
            }
        });
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> NewMessage {
        NewMessage {
            tag: Some("TagA".into()),
            keys: vec!["order-1".into(), "k2".into()],
            properties: [("a".to_string(), "1".to_string()), ("bé".into(), "".into())].into(),
            body: b"hello \x00 world".to_vec(),
            binary: true,
            born_ms: 1_700_000_000_123,
            deliver_at_ms: None,
        }
    }

    fn sealed(topic: &str, msg: &NewMessage) -> Vec<u8> {
        let mut buf = Vec::new();
        encode(&mut buf, topic, 3, 0, msg);
        seal(&mut buf, 42, 1_700_000_000_500, FLAG_BATCH);
        buf
    }

    #[test]
    fn round_trip() {
        let msg = sample();
        let buf = sealed("orders", &msg);
        assert_eq!(buf.len(), encoded_len("orders", &msg));
        let Decoded::Message { record, len } = decode(&buf).unwrap() else { panic!("not a message") };
        assert_eq!(len, buf.len());
        assert_eq!(record.topic, "orders");
        assert_eq!(record.tag, Some("TagA"));
        assert_eq!(record.queue_id, 3);
        assert_eq!(record.queue_offset, 42);
        assert_eq!(record.born_ms, 1_700_000_000_123);
        assert_eq!(record.store_ms, 1_700_000_000_500);
        assert_eq!(record.deliver_at_ms, 1_700_000_000_500, "normal message: visible when stored");
        assert!(record.binary());
        assert_eq!(record.flags & FLAG_BATCH, FLAG_BATCH);
        assert_eq!(record.keys(), vec!["order-1", "k2"]);
        assert_eq!(record.properties(), vec![("a", "1"), ("bé", "")]);
        assert_eq!(record.body, b"hello \x00 world");
    }

    #[test]
    fn minimal_record_and_trailing_bytes() {
        let msg = NewMessage { body: vec![], ..Default::default() };
        let mut buf = sealed("t", &msg);
        let n = buf.len();
        buf.extend_from_slice(&[0xAB; 100]); // whatever follows is not part of the record
        let Decoded::Message { record, len } = decode(&buf).unwrap() else { panic!() };
        assert_eq!(len, n);
        assert_eq!(record.tag, None);
        assert!(record.keys().is_empty());
    }

    #[test]
    fn every_truncation_is_detected() {
        let buf = sealed("orders", &sample());
        for cut in 1..buf.len() {
            let r = decode(&buf[..cut]);
            assert!(r.is_err(), "cut at {cut} decoded as {r:?}");
        }
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let buf = sealed("orders", &sample());
        for byte in 0..buf.len() {
            for bit in 0..8 {
                let mut b = buf.clone();
                b[byte] ^= 1 << bit;
                // A flip in total_len makes the record look shorter (checksum or structure
                // error) or longer (truncated); a flipped magic is neither message nor blank.
                if let Ok(other) = decode(&b) {
                    panic!("flip {byte}.{bit} decoded as {other:?}");
                }
            }
        }
    }

    #[test]
    fn zeros_are_end_and_blank_is_blank() {
        assert_eq!(decode(&[0u8; 64]).unwrap(), Decoded::End);
        assert_eq!(decode(&[0u8; 3]).unwrap(), Decoded::End);
        assert!(decode(&[1u8; 3]).is_err());
        let mut b = blank_marker(500).to_vec();
        b.resize(500, 0);
        assert_eq!(decode(&b).unwrap(), Decoded::Blank);
    }

    /// `encode_derived` equals `encode` of the message built the long way (as the timer used
    /// to: decode into owned values, edit the properties map, encode).
    fn derived_the_long_way(orig: &Record<'_>, topic: &str, at: i64, prefix: &str, extra: (&str, &str)) -> Vec<u8> {
        let mut properties: BTreeMap<String, String> = orig
            .properties()
            .into_iter()
            .filter(|(k, _)| !k.starts_with(prefix))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        properties.insert(extra.0.to_string(), extra.1.to_string());
        let msg = NewMessage {
            tag: orig.tag.map(str::to_string),
            keys: orig.keys().into_iter().map(str::to_string).collect(),
            properties,
            body: orig.body.to_vec(),
            binary: orig.binary(),
            born_ms: orig.born_ms,
            deliver_at_ms: Some(at),
        };
        let mut out = Vec::new();
        encode(&mut out, topic, 0, 0, &msg);
        out
    }

    proptest::proptest! {
        #[test]
        fn derived_record_equals_the_long_way(
            tag in proptest::option::of("[a-zA-Z_]{1,6}"),
            keys in proptest::collection::vec("[a-z0-9]{0,5}", 0..4),
            // Keys on both sides of "__x.id" in byte order, some with the dropped prefix, and
            // sometimes the extra key itself.
            props in proptest::collection::btree_map("(__x\\.)?[A-Za-z0-9_.]{1,6}|__x\\.id", "[a-zé]{0,4}", 0..6),
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..40),
            binary in proptest::bool::ANY,
        ) {
            let msg = NewMessage {
                tag, keys, properties: props, body, binary,
                born_ms: 1_700_000_000_001,
                deliver_at_ms: Some(1_700_000_009_000),
            };
            let mut buf = Vec::new();
            encode(&mut buf, "__sys", 2, FLAG_BATCH, &msg);
            seal(&mut buf, 7, 1_700_000_000_002, 0);
            let Decoded::Message { record, .. } = decode(&buf).unwrap() else { panic!("not a message") };
            let extra = ("__x.id", "0000000001E19A189DCEF3F8");
            let mut fast = vec![0xEE]; // appends after what is there
            encode_derived(&mut fast, &record, "orders", 1_700_000_009_000, "__x.", extra);
            let slow = derived_the_long_way(&record, "orders", 1_700_000_009_000, "__x.", extra);
            proptest::prop_assert_eq!(&fast[1..], &slow[..]);
        }
    }

    #[test]
    fn property_lookup() {
        let buf = sealed("orders", &sample());
        let Decoded::Message { record, .. } = decode(&buf).unwrap() else { panic!() };
        assert_eq!(record.property("bé"), Some(""));
        assert_eq!(record.property("a"), Some("1"));
        assert_eq!(record.property("b"), None);
    }

    #[test]
    fn lying_lengths_are_rejected() {
        let mut buf = sealed("orders", &sample());
        // Make the body length disagree with total_len, then re-seal the CRC so only the
        // structural check can catch it.
        let body_len = u32_at(&buf, BODY_LEN_AT) + 1;
        put_u32(&mut buf, BODY_LEN_AT, body_len);
        let crc = crc32c::crc32c(&buf[CRC_FROM..]);
        put_u32(&mut buf, CRC_AT, crc);
        assert!(matches!(decode(&buf), Err(RecordError::Malformed(_))));
    }
}
