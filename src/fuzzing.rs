//! Fuzz entry points: one function per decoder of on-disk data, each taking arbitrary bytes.
//!
//! Used by the cargo-fuzz targets in `fuzz/` (libFuzzer, nightly or `RUSTC_BOOTSTRAP=1`) and by
//! `tests/fuzz_decoders.rs`, a seeded random-mutation loop over [`seeds`] that runs on stable in
//! `cargo test`. A panic in any of them is a finding: decoders must answer bad bytes with an
//! error, never a panic. Each entry also checks what a decoder promises for what it accepts
//! (e.g. encode ∘ decode is the identity), so a decoder that accepts garbage is a finding too.
//!
//! Checksums make random bytes fail early, so every entry decodes the input twice: as given,
//! and with its checksum recomputed ("fixed up"), which lets the mutations reach the parsing
//! behind the checksum.

use crate::group::decode_progress;
use crate::store::checkpoint::Checkpoint;
use crate::store::consume_queue::CqEntry;
use crate::store::record::{self, Decoded, NewMessage};
use crate::timer::checkpoint::TimerCheckpoint;
use crate::timer::slot::Geometry;
use crate::timer::timerlog::{Unit, UNIT_LEN};
use crate::timer::wheel::{slot_consistent, Slot};

/// A fuzz entry point: arbitrary bytes in, a panic on a finding.
pub type Target = fn(&[u8]);

/// Every target: (name, entry point). The names are the `fuzz/fuzz_targets/*.rs` files.
pub const TARGETS: &[(&str, Target)] = &[
    ("record", record),
    ("timer_unit", timer_unit),
    ("wheel_slot", wheel_slot),
    ("store_checkpoint", store_checkpoint),
    ("timer_checkpoint", timer_checkpoint),
    ("cq_entry", cq_entry),
    ("group_progress", group_progress),
];

/// A copy of `data` with the CRC32C of `[from, to)` written at `at` (when the input is long
/// enough for that layout).
fn fix_crc(data: &[u8], from: usize, to: usize, at: usize) -> Option<Vec<u8>> {
    if data.len() < to.max(at + 4) || from > to {
        return None;
    }
    let mut v = data.to_vec();
    let crc = crc32c::crc32c(&v[from..to]);
    crate::codec::put_u32(&mut v, at, crc);
    Some(v)
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// A commit-log record (`store::record`): what recovery and every reader decode.
pub fn record(data: &[u8]) {
    check_record(data);
    // total_len at 0, CRC32C of [12, total_len) at 8.
    let total = u32_at(data, 0).map_or(0, |t| t as usize);
    if total >= 12 {
        if let Some(v) = fix_crc(data, 12, total, 8) {
            check_record(&v);
        }
    }
}

fn check_record(data: &[u8]) {
    match record::decode(data) {
        Ok(Decoded::Message { record, len }) => {
            assert!(len >= record::HEADER_LEN && len <= data.len(), "record length {len} of {}", data.len());
            let keys = record.keys();
            let props = record.properties();
            // A record is self-delimiting: decoding exactly its bytes gives the same record.
            match record::decode(&data[..len]) {
                Ok(Decoded::Message { record: again, len: l2 }) => assert!(again == record && l2 == len),
                other => panic!("record does not decode from its own bytes: {other:?}"),
            }
            // Re-encoding its parts gives a record with the same parts.
            let msg = NewMessage {
                tag: record.tag.map(String::from),
                keys: keys.iter().map(|k| k.to_string()).collect(),
                properties: props.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                body: record.body.to_vec(),
                binary: record.binary(),
                born_ms: record.born_ms,
                deliver_at_ms: Some(record.deliver_at_ms),
            };
            if props.len() == msg.properties.len() && record.topic.len() <= u16::MAX as usize {
                let mut out = Vec::new();
                record::encode(&mut out, record.topic, record.queue_id, 0, &msg);
                record::seal(&mut out, record.queue_offset, record.store_ms, 0);
                match record::decode(&out) {
                    Ok(Decoded::Message { record: r, .. }) => {
                        assert_eq!((r.topic, r.tag, r.body), (record.topic, record.tag, record.body));
                        assert_eq!(r.keys(), keys);
                    }
                    other => panic!("re-encoded record does not decode: {other:?}"),
                }
            }
        }
        Ok(Decoded::Blank) | Ok(Decoded::End) | Err(_) => {}
    }
}

/// A timer-log unit (`timer::timerlog`).
pub fn timer_unit(data: &[u8]) {
    check_unit(data);
    if let Some(v) = fix_crc(data, 0, 60, 60) {
        check_unit(&v);
    }
}

fn check_unit(data: &[u8]) {
    if let Some(u) = Unit::decode(data) {
        assert_eq!(&u.encode()[..], &data[..UNIT_LEN], "a unit re-encodes to its bytes");
    }
}

/// A wheel slot (`timer::wheel`: four u64 words) cross-checked against a timer log made of the
/// remaining bytes, as recovery does. The first byte picks the slot index.
pub fn wheel_slot(data: &[u8]) {
    let geo = Geometry::new(1000, 64);
    let Some(words) = data.get(1..33) else { return };
    let word = |i: usize| crate::codec::get_u64(words, i * 8);
    let slot = Slot { time: word(0) as i64, first: word(1), last: word(2), count: word(3) };
    let index = data[0] as usize % 64;
    for log in [data[33..].to_vec(), fixed_units(&data[33..])] {
        let read = |pos: u64| {
            let at = usize::try_from(pos).ok()?;
            Unit::decode(log.get(at..at.checked_add(UNIT_LEN)?)?)
        };
        if slot_consistent(geo, index, &slot, read) {
            // What dequeue-get then walks: exactly `count` units of this slot, in log order.
            let (mut pos1, mut n) = (slot.last, 0u64);
            while pos1 != 0 {
                let u = read(pos1 - 1).expect("a consistent slot's units are readable");
                assert_eq!(u.slot_time, slot.time);
                assert!(u.prev < pos1, "walking backwards");
                n += 1;
                pos1 = u.prev;
            }
            assert_eq!(n, slot.count);
            assert_eq!(geo.index(slot.time), index);
        }
    }
}

/// `log` with the checksum of every whole 64-byte unit recomputed.
fn fixed_units(log: &[u8]) -> Vec<u8> {
    let mut v = log.to_vec();
    for unit in v.chunks_exact_mut(UNIT_LEN) {
        let crc = crc32c::crc32c(&unit[..60]);
        crate::codec::put_u32(unit, 60, crc);
    }
    v
}

/// The store checkpoint (`store::checkpoint`).
pub fn store_checkpoint(data: &[u8]) {
    for d in [Some(data.to_vec()), fix_crc(data, 0, 32, 32)].into_iter().flatten() {
        if let Ok(c) = Checkpoint::decode(&d) {
            assert_eq!(&c.encode()[..], &d[..], "a checkpoint re-encodes to its bytes");
            assert!(c.indexed <= c.log_flushed, "an accepted checkpoint is consistent");
        }
    }
}

/// The timer checkpoint (`timer::checkpoint`).
pub fn timer_checkpoint(data: &[u8]) {
    for d in [Some(data.to_vec()), fix_crc(data, 0, 48, 48)].into_iter().flatten() {
        if let Some(c) = TimerCheckpoint::decode(&d) {
            assert_eq!(&c.encode()[..], &d[..c.encode().len()], "a checkpoint re-encodes to its bytes");
        }
    }
}

/// A consume-queue entry (`store::consume_queue`; not checksummed: readers verify the record).
pub fn cq_entry(data: &[u8]) {
    if let Some(e) = CqEntry::decode(data) {
        assert_ne!(e.size, 0, "a zero size means unwritten");
        assert_eq!(&e.encode()[..], &data[..20]);
    }
}

/// A consumer-group progress file (`group`), restored against queues of up to 4095 messages
/// (the first two bytes pick how many).
pub fn group_progress(data: &[u8]) {
    let n = data.first().map_or(0, |&b| b as u64) << 4 | data.get(1).map_or(0, |&b| b as u64 & 0xF);
    let available = [n, n / 2, 0, 1];
    if let Ok(queues) = decode_progress(data, &available, 1 << 20) {
        assert_eq!(queues.len(), available.len());
        for (q, &avail) in queues.iter().zip(&available) {
            let s = q.snapshot();
            assert!(s.floor <= s.next && s.next <= avail, "restored {s:?} beyond {avail} messages");
        }
    }
}

/// Valid encodings to start mutating from, per target name.
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    match target {
        "record" => {
            let mut out = Vec::new();
            for (topic, msg) in [
                ("t", NewMessage { body: b"hello".to_vec(), ..NewMessage::default() }),
                (
                    "orders",
                    NewMessage {
                        tag: Some("A".into()),
                        keys: vec!["k1".into(), "k2".into()],
                        properties: [("p".to_string(), "v".to_string())].into_iter().collect(),
                        body: vec![0, 1, 2, 255],
                        binary: true,
                        born_ms: 1_700_000_000_000,
                        deliver_at_ms: Some(1_700_000_005_000),
                    },
                ),
            ] {
                let mut r = Vec::new();
                record::encode(&mut r, topic, 3, 0, &msg);
                record::seal(&mut r, 7, 1_700_000_000_001, 0);
                out.push(r);
            }
            out.push(record::blank_marker(100).to_vec());
            out
        }
        "timer_unit" => vec![sample_unit(0).encode().to_vec()],
        "wheel_slot" => {
            // Slot time 5000 (index 5) holding units at positions 0 and 64.
            let mut v = vec![5u8];
            for w in [5000u64, 1, 65, 2] {
                crate::codec::push_u64(&mut v, w);
            }
            v.extend_from_slice(&sample_unit(0).encode());
            v.extend_from_slice(&sample_unit(1).encode());
            vec![v]
        }
        "store_checkpoint" => {
            vec![Checkpoint { log_flushed: 4096, indexed: 4000, written_ms: 1_700_000_000_000 }.encode().to_vec()]
        }
        "timer_checkpoint" => vec![TimerCheckpoint {
            enqueue_offset: 10,
            read_time: 1_700_000_000_000,
            timer_log_pos: 640,
            pending_floor: 3,
            written_ms: 1_700_000_000_500,
        }
        .encode()
        .to_vec()],
        "cq_entry" => vec![CqEntry { log_offset: 123_456, size: 80, tag_hash: 42 }.encode().to_vec()],
        "group_progress" => vec![
            br#"{"version":1,"queues":[{"floor":2,"next":9,"done":[3,5],"inflight":[[4,2,1700000000000],[6,1,-5]]},{"floor":0,"next":0}]}"#.to_vec(),
            b"{}".to_vec(),
        ],
        _ => Vec::new(),
    }
}

/// Unit `i` of the wheel-slot seed: slot 5000, linked after unit `i - 1`.
fn sample_unit(i: u64) -> Unit {
    Unit {
        prev: if i == 0 { 0 } else { (i - 1) * UNIT_LEN as u64 + 1 },
        deliver_at: 5_123,
        slot_time: 5_000,
        log_offset: 4096 * i,
        log_size: 90,
        flags: 0,
        sys_offset: i,
        enqueued_ms: 4_000,
    }
}
