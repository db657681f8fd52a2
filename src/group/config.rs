//! A consumer group's configuration (API.md "Consumer groups: retry, dead letters, lag, seek,
//! lookup by key"): how many deliveries a message gets, the backoff between them, and where it
//! goes after the last. Kept in the group's progress file (`config`), so it survives restarts
//! and applies at once to what is in flight.

use serde::{Deserialize, Serialize};

/// Most delivery attempts a group may allow.
pub const MAX_ATTEMPTS: u32 = 1000;
/// The longest backoff a group may configure (12 h, as the longest `invisible_ms`).
pub const MAX_BACKOFF_MS: i64 = 43_200_000;
/// Longest topic name (API.md).
const MAX_NAME: usize = 127;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Retry {
    pub initial_ms: i64,
    pub max_ms: i64,
    pub multiplier: f64,
}

impl Default for Retry {
    fn default() -> Self {
        Self { initial_ms: 1000, max_ms: 7_200_000, multiplier: 2.0 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupConfig {
    pub max_delivery_attempts: u32,
    pub retry: Retry,
    /// `None`: the default, [`default_dead_letter_topic`].
    pub dead_letter_topic: Option<String>,
    pub fifo: bool,
}

impl Default for GroupConfig {
    fn default() -> Self {
        Self { max_delivery_attempts: 16, retry: Retry::default(), dead_letter_topic: None, fifo: false }
    }
}

impl GroupConfig {
    /// Checks the ranges of API.md; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=MAX_ATTEMPTS).contains(&self.max_delivery_attempts) {
            return Err(format!("max_delivery_attempts must be 1..={MAX_ATTEMPTS}"));
        }
        let r = &self.retry;
        if !(0..=MAX_BACKOFF_MS).contains(&r.initial_ms) {
            return Err(format!("retry.initial_ms must be 0..={MAX_BACKOFF_MS}"));
        }
        if !(r.initial_ms..=MAX_BACKOFF_MS).contains(&r.max_ms) {
            return Err(format!("retry.max_ms must be retry.initial_ms..={MAX_BACKOFF_MS}"));
        }
        if !(1.0..=10.0).contains(&r.multiplier) {
            return Err("retry.multiplier must be 1.0..=10.0".into());
        }
        Ok(())
    }

    /// The delay before the redelivery that follows a nack of `attempt` (1 = the first
    /// delivery): `initial_ms × multiplier^(attempt−1)`, at most `max_ms`.
    pub fn backoff_ms(&self, attempt: u32) -> i64 {
        let r = &self.retry;
        let exp = f64::from(attempt.saturating_sub(1)).min(1000.0);
        let d = r.initial_ms as f64 * r.multiplier.powf(exp);
        if d.is_finite() {
            (d as i64).min(r.max_ms)
        } else {
            r.max_ms
        }
    }

    /// The topic its dead letters go to.
    pub fn dead_letter_topic(&self, group: &str) -> String {
        self.dead_letter_topic.clone().unwrap_or_else(|| default_dead_letter_topic(group))
    }
}

/// `%DLQ%` + the group's name, as RocketMQ names it; for a name too long for that, its first
/// characters and a hash of the whole, so it stays a valid topic name and distinct.
pub fn default_dead_letter_topic(group: &str) -> String {
    prefixed("%DLQ%", group)
}

/// The topic a group's delayed redeliveries of `topic` fire into (one per topic and group):
/// `%RETRY%{topic}%{group}` (RocketMQ has `%RETRY%` + group, its groups span topics), shortened
/// as [`default_dead_letter_topic`] when too long.
pub fn retry_topic(topic: &str, group: &str) -> String {
    prefixed("%RETRY%", &format!("{topic}%{group}"))
}

fn prefixed(prefix: &str, name: &str) -> String {
    let whole = format!("{prefix}{name}");
    if whole.len() <= MAX_NAME {
        return whole;
    }
    let hash = crc32c::crc32c(name.as_bytes());
    let keep = MAX_NAME - prefix.len() - 9;
    format!("{prefix}{}-{hash:08x}", &name[..keep])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_by_the_multiplier_up_to_the_cap() {
        let c = GroupConfig::default();
        let seq: Vec<i64> = (1..=15).map(|a| c.backoff_ms(a)).collect();
        assert_eq!(&seq[..5], &[1000, 2000, 4000, 8000, 16000]);
        assert_eq!(seq[12], 4_096_000);
        assert_eq!(seq[13], 7_200_000, "capped at max_ms");
        assert_eq!(c.backoff_ms(u32::MAX), 7_200_000);
        let flat = GroupConfig { retry: Retry { initial_ms: 0, max_ms: 0, multiplier: 10.0 }, ..c };
        assert_eq!(flat.backoff_ms(50), 0);
    }

    #[test]
    fn validation_names_the_field_and_names_stay_valid_topics() {
        let ok = GroupConfig::default();
        assert!(ok.validate().is_ok());
        let bad = |c: GroupConfig| c.validate().unwrap_err();
        assert!(bad(GroupConfig { max_delivery_attempts: 0, ..ok.clone() }).contains("max_delivery_attempts"));
        assert!(bad(GroupConfig { max_delivery_attempts: 1001, ..ok.clone() }).contains("max_delivery_attempts"));
        let r = |initial_ms, max_ms, multiplier| GroupConfig {
            retry: Retry { initial_ms, max_ms, multiplier },
            ..ok.clone()
        };
        assert!(bad(r(-1, 10, 2.0)).contains("initial_ms"));
        assert!(bad(r(10, 5, 2.0)).contains("max_ms"));
        assert!(bad(r(10, 50, 0.5)).contains("multiplier"));
        assert!(bad(r(10, 50, f64::NAN)).contains("multiplier"));
        assert_eq!(default_dead_letter_topic("g"), "%DLQ%g");
        assert_eq!(retry_topic("t", "g"), "%RETRY%t%g");
        let long = "g".repeat(127);
        for name in [default_dead_letter_topic(&long), retry_topic(&long, &long)] {
            assert!(crate::names::check_name("topic", &name).is_ok(), "{name}");
        }
        assert_ne!(default_dead_letter_topic(&long), default_dead_letter_topic(&"g".repeat(126)));
    }
}
