//! `Config::validate`: the range of every bounded key in one table ([`RANGES`]), checked
//! against each profile file's comments by a test so they cannot drift, and the checks that
//! relate keys to each other. The error names the offending key.

use std::net::SocketAddr;

use super::{ByteSize, Config, ConfigError, HumanDuration};

// Limits checked by `Config::validate`.
const MAX_QUEUES: u16 = 64;
const MAX_MESSAGE_LIMIT: ByteSize = ByteSize::mib(64);
const MAX_REQUEST_LIMIT: ByteSize = ByteSize::gib(1);
const MIN_SEGMENT_SIZE: ByteSize = ByteSize::kib(64);
/// Room in a segment beyond the largest message (record headers, slack).
const SEGMENT_HEADROOM: ByteSize = ByteSize::kib(64);
const MIN_INTERVAL: HumanDuration = HumanDuration::from_millis(1);
const MAX_INTERVAL: HumanDuration = HumanDuration::from_secs(60);
const MIN_MAX_DELAY: HumanDuration = HumanDuration::from_secs(1);
const MAX_MAX_DELAY: HumanDuration = HumanDuration::from_days(3653);
const MIN_CQ_ENTRIES: u32 = 1024;
const MAX_CQ_ENTRIES: u32 = 10_000_000;
const MAX_INFLIGHT_LIMIT: ByteSize = ByteSize::gib(64);
/// Longest bearer token: far beyond any real one, and short enough to bound the comparison.
pub(super) const MAX_TOKEN_BYTES: usize = 4096;

/// The bounds of a key.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Bound {
    Duration(HumanDuration, HumanDuration),
    Bytes(ByteSize, ByteSize),
    Int(u64, u64),
    Ratio(f64, f64),
}

/// Every key with a plain range: `(key, bounds)`. Keys whose bounds depend on other keys are
/// checked after these (see [`Config::validate`]).
pub const RANGES: &[(&str, Bound)] = &[
    ("default_queues", Bound::Int(1, MAX_QUEUES as u64)),
    ("max_message_bytes", Bound::Bytes(ByteSize(1), MAX_MESSAGE_LIMIT)),
    ("store.flush_interval", Bound::Duration(MIN_INTERVAL, MAX_INTERVAL)),
    ("store.consume_queue_segment_entries", Bound::Int(MIN_CQ_ENTRIES as u64, MAX_CQ_ENTRIES as u64)),
    ("store.retention", Bound::Duration(HumanDuration::from_secs(1), HumanDuration::from_days(3650))),
    (
        "store.retention_check_interval",
        Bound::Duration(HumanDuration::from_millis(100), HumanDuration::from_secs(3600)),
    ),
    ("store.disk_soft_limit", Bound::Ratio(0.5, 0.99)),
    ("http.header_read_timeout", Bound::Duration(HumanDuration::from_millis(100), HumanDuration::from_secs(600))),
    ("http.body_read_timeout", Bound::Duration(HumanDuration::from_millis(100), HumanDuration::from_secs(3600))),
    ("limits.max_topics", Bound::Int(1, 1_000_000)),
    ("limits.max_groups_per_topic", Bound::Int(1, 1_000_000)),
    ("admission.max_enqueue_lag", Bound::Int(1, 100_000_000)),
    ("admission.retry_after", Bound::Duration(HumanDuration::from_secs(1), HumanDuration::from_secs(3600))),
    ("group.persist_interval", Bound::Duration(MIN_INTERVAL, MAX_INTERVAL)),
    ("dedup.window", Bound::Duration(HumanDuration::from_secs(1), HumanDuration::from_days(7))),
    ("transaction.check_interval", Bound::Duration(HumanDuration::from_secs(1), HumanDuration::from_secs(3600))),
    ("transaction.check_max", Bound::Int(1, 1000)),
    ("timer.max_delay", Bound::Duration(MIN_MAX_DELAY, MAX_MAX_DELAY)),
    ("timer.precision", Bound::Duration(HumanDuration::from_millis(1), HumanDuration::from_secs(60))),
    ("timer.lookahead", Bound::Duration(HumanDuration::from_millis(0), HumanDuration::from_secs(10))),
    ("timer.slots", Bound::Int(1024, 1 << 24)),
    ("timer.queue_capacity", Bound::Int(1024, 1 << 20)),
];

/// A bounded key's value in `c`, as a [`Bound`] of one value.
fn value(c: &Config, key: &str) -> Bound {
    let d = |v: HumanDuration| Bound::Duration(v, v);
    let b = |v: ByteSize| Bound::Bytes(v, v);
    let i = |v: u64| Bound::Int(v, v);
    match key {
        "default_queues" => i(c.default_queues.into()),
        "max_message_bytes" => b(c.max_message_bytes),
        "store.flush_interval" => d(c.store.flush_interval),
        "store.consume_queue_segment_entries" => i(c.store.consume_queue_segment_entries.into()),
        "store.retention" => d(c.store.retention),
        "store.retention_check_interval" => d(c.store.retention_check_interval),
        "store.disk_soft_limit" => Bound::Ratio(c.store.disk_soft_limit, c.store.disk_soft_limit),
        "http.header_read_timeout" => d(c.http.header_read_timeout),
        "http.body_read_timeout" => d(c.http.body_read_timeout),
        "limits.max_topics" => i(c.limits.max_topics),
        "limits.max_groups_per_topic" => i(c.limits.max_groups_per_topic),
        "admission.max_enqueue_lag" => i(c.admission.max_enqueue_lag),
        "admission.retry_after" => d(c.admission.retry_after),
        "group.persist_interval" => d(c.group.persist_interval),
        "dedup.window" => d(c.dedup.window),
        "transaction.check_interval" => d(c.transaction.check_interval),
        "transaction.check_max" => i(c.transaction.check_max.into()),
        "timer.max_delay" => d(c.timer.max_delay),
        "timer.precision" => d(c.timer.precision),
        "timer.lookahead" => d(c.timer.lookahead),
        "timer.slots" => i(c.timer.slots),
        "timer.queue_capacity" => i(c.timer.queue_capacity as u64),
        _ => unreachable!("{key} is not in RANGES"),
    }
}

fn check(key: &str, v: Bound, bound: Bound) -> Result<(), ConfigError> {
    let out = match (v, bound) {
        (Bound::Duration(v, _), Bound::Duration(lo, hi)) => {
            (v < lo || v > hi).then(|| format!("{lo} and {hi}, got {v}"))
        }
        (Bound::Bytes(v, _), Bound::Bytes(lo, hi)) => (v < lo || v > hi).then(|| format!("{lo} and {hi}, got {v}")),
        (Bound::Int(v, _), Bound::Int(lo, hi)) => (v < lo || v > hi).then(|| format!("{lo} and {hi}, got {v}")),
        (Bound::Ratio(v, _), Bound::Ratio(lo, hi)) => {
            (v.is_nan() || v < lo || v > hi).then(|| format!("{lo} and {hi}, got {v}"))
        }
        _ => unreachable!("{key}: the value's kind differs from its bound's"),
    };
    match out {
        Some(m) => invalid(key, format!("must be between {m}")),
        None => Ok(()),
    }
}

impl Config {
    /// Checks ranges and consistency between keys. The error names the
    /// offending key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.listen.parse::<SocketAddr>().is_err() {
            return invalid(
                "listen",
                format!(
                    "invalid socket address {:?}: expected IP:PORT, e.g. 127.0.0.1:8080 or [::1]:8080",
                    self.listen
                ),
            );
        }
        let token = self.auth.token.expose();
        if token.len() > MAX_TOKEN_BYTES || !token.bytes().all(|b| b.is_ascii_graphic()) {
            // The value itself is not repeated: it is a secret.
            return invalid(
                "auth.token",
                format!("must be at most {MAX_TOKEN_BYTES} printable ASCII characters without spaces"),
            );
        }
        if token.is_empty() && !self.allow_insecure {
            let addr: SocketAddr = self.listen.parse().expect("checked above");
            if !addr.ip().is_loopback() {
                return invalid(
                    "listen",
                    format!(
                        "refusing to listen on {addr} without authentication: set auth.token (CHIME_AUTH_TOKEN), \
                         listen on a loopback address, or set allow_insecure = true"
                    ),
                );
            }
        }
        if self.data_dir.as_os_str().is_empty() {
            return invalid("data_dir", "must not be empty".to_owned());
        }
        if self.timer.max_delay > MAX_MAX_DELAY {
            return invalid(
                "timer.max_delay",
                format!(
                    "must be at most {MAX_MAX_DELAY} (ten years, leap days included), got {}",
                    self.timer.max_delay
                ),
            );
        }
        for &(key, bound) in RANGES {
            check(key, value(self, key), bound)?;
        }
        // Bounds that depend on other keys.
        let max_message = self.max_message_bytes;
        let max_request = self.max_request_bytes;
        if max_request < max_message {
            return invalid(
                "max_request_bytes",
                format!("must be at least max_message_bytes ({max_message}), got {max_request}"),
            );
        }
        if max_request > MAX_REQUEST_LIMIT {
            return invalid("max_request_bytes", format!("must be at most {MAX_REQUEST_LIMIT}, got {max_request}"));
        }
        let segment = self.store.segment_size;
        if segment < MIN_SEGMENT_SIZE {
            return invalid("store.segment_size", format!("must be at least {MIN_SEGMENT_SIZE}, got {segment}"));
        }
        let min_segment = ByteSize(max_message.0.saturating_add(SEGMENT_HEADROOM.0));
        if segment < min_segment {
            return invalid(
                "store.segment_size",
                format!("must be at least max_message_bytes + {SEGMENT_HEADROOM} ({min_segment}), got {segment}"),
            );
        }
        let (soft, hard) = (self.store.disk_soft_limit, self.store.disk_hard_limit);
        if hard.is_nan() || hard <= soft || hard > 1.0 {
            return invalid(
                "store.disk_hard_limit",
                format!("must be above store.disk_soft_limit ({soft}) and at most 1, got {hard}"),
            );
        }
        let inflight = self.admission.max_inflight_bytes;
        if inflight < max_request || inflight > MAX_INFLIGHT_LIMIT {
            return invalid(
                "admission.max_inflight_bytes",
                format!("must be between max_request_bytes ({max_request}) and {MAX_INFLIGHT_LIMIT}, got {inflight}"),
            );
        }
        Ok(())
    }
}

fn invalid(key: &str, message: String) -> Result<(), ConfigError> {
    Err(ConfigError::Invalid { key: key.to_owned(), message })
}
