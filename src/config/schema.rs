//! The configuration's shape: one serde struct per section, `#[serde(default,
//! deny_unknown_fields)]`, each field with its default (ranges: [`super::validate::RANGES`]).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{ByteSize, HumanDuration};

/// The server's configuration. See the [module docs](self) for how it is
/// assembled; every field documents its default.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP server binds (`IP:PORT`). Default: 127.0.0.1:8080
    pub listen: String,
    /// Data directory. Default: ./data
    pub data_dir: PathBuf,
    /// Create a topic on its first send. Default: true
    pub auto_create_topics: bool,
    /// Queues of an auto-created topic (1..=64). Default: 8
    pub default_queues: u16,
    /// Largest message body (1B..=64MiB). Default: 4MiB
    pub max_message_bytes: ByteSize,
    /// Largest HTTP request body, i.e. a batch (max_message_bytes..=1GiB). Default: 16MiB
    pub max_request_bytes: ByteSize,
    /// Commit-log settings. Default: see [`StoreConfig`]
    pub store: StoreConfig,
    /// Consumer-group settings. Default: see [`GroupConfig`]
    pub group: GroupConfig,
    /// Scheduling settings. Default: see [`TimerConfig`]
    pub timer: TimerConfig,
    /// Serve without a token on an address other than loopback. Default: false
    pub allow_insecure: bool,
    /// Authentication of `/v1` routes. Default: see [`AuthConfig`]
    pub auth: AuthConfig,
    /// HTTP connection limits. Default: see [`HttpConfig`]
    pub http: HttpConfig,
    /// When sends are refused with 429 BUSY. Default: see [`AdmissionConfig`]
    pub admission: AdmissionConfig,
    /// Quotas on what clients may create. Default: see [`LimitsConfig`]
    pub limits: LimitsConfig,
    /// Deduplicated sends. Default: see [`DedupConfig`]
    pub dedup: DedupConfig,
    /// Transaction messages. Default: see [`TransactionConfig`]
    pub transaction: TransactionConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".to_owned(),
            data_dir: PathBuf::from("./data"),
            auto_create_topics: true,
            default_queues: 8,
            max_message_bytes: ByteSize::mib(4),
            max_request_bytes: ByteSize::mib(16),
            store: StoreConfig::default(),
            group: GroupConfig::default(),
            timer: TimerConfig::default(),
            allow_insecure: false,
            auth: AuthConfig::default(),
            http: HttpConfig::default(),
            admission: AdmissionConfig::default(),
            dedup: DedupConfig::default(),
            transaction: TransactionConfig::default(),
            limits: LimitsConfig::default(),
        }
    }
}

/// Quotas (`[limits]`): creating a topic or a consumer group past one (explicitly, or by a first
/// send or receive) is answered 403 LIMIT_EXCEEDED naming the limit, so no client can fill the
/// disk or the memory by inventing names.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Most topics (1..=1000000). Default: 10000
    pub max_topics: u64,
    /// Most consumer groups of one topic (1..=1000000). Default: 1000
    pub max_groups_per_topic: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self { max_topics: 10_000, max_groups_per_topic: 1_000 }
    }
}

/// Back-pressure on sends (`[admission]`): beyond these limits a send is answered 429 BUSY
/// with `Retry-After`, and nothing of it is stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AdmissionConfig {
    /// Most request-body bytes that sends in progress may hold together; a send that would pass
    /// it is refused before its body is read (max_request_bytes..=64GiB). Default: 64MiB
    pub max_inflight_bytes: ByteSize,
    /// Most scheduled messages stored but not yet in the timer wheel (the timer's enqueue lag);
    /// beyond it sends with scheduled messages are refused (1..=100000000). Default: 200000
    pub max_enqueue_lag: u64,
    /// `Retry-After` of a refusal, rounded up to whole seconds (1s..=1h). Default: 1s
    pub retry_after: HumanDuration,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        Self {
            max_inflight_bytes: ByteSize::mib(64),
            max_enqueue_lag: 200_000,
            retry_after: HumanDuration::from_secs(1),
        }
    }
}

/// HTTP connections (`[http]`): deadlines that keep slow or stalled clients from holding
/// connections and buffers for ever.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Longest wait for a request's complete headers, counted from the moment the connection is
    /// ready for a request; also closes keep-alive connections idle that long (100ms..=10m).
    /// Default: 20s
    pub header_read_timeout: HumanDuration,
    /// Longest time to receive a whole request body, counted from the end of its headers; a body
    /// still incomplete then is answered 408 REQUEST_TIMEOUT and the connection closed
    /// (100ms..=1h). Default: 60s
    pub body_read_timeout: HumanDuration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self { header_read_timeout: HumanDuration::from_secs(20), body_read_timeout: HumanDuration::from_secs(60) }
    }
}

/// Authentication (`[auth]`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Bearer token every `/v1` request must carry (`Authorization: Bearer <token>`); empty means
    /// no authentication. Best set by environment (`CHIME_AUTH_TOKEN`) rather than in a file.
    /// Default: "" (none)
    pub token: Secret,
}

/// A string that is never printed: `Debug` and `Display` show `<redacted>` (or `<empty>`), so a
/// token cannot reach a log line by way of the config.
#[derive(Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl Secret {
    /// The secret itself, for the one place that compares it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() { "<empty>" } else { "<redacted>" })
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// Commit log and consume queues (`[store]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Size of one commit-log segment file (at least 64KiB and at least max_message_bytes + 64KiB). Default: 1GiB
    pub segment_size: ByteSize,
    /// When a send is acknowledged, "async" or "sync"; see [`FlushMode`]. Default: async
    pub flush: FlushMode,
    /// Period of the background fsync in async mode (1ms..=60s). Default: 200ms
    pub flush_interval: HumanDuration,
    /// Entries per consume-queue segment file (1024..=10_000_000). Default: 300000
    pub consume_queue_segment_entries: u32,
    /// A commit-log segment whose newest record is older than this is reclaimed (1s..=3650d).
    /// Pending scheduled messages in it are carried forward first. Default: 72h
    pub retention: HumanDuration,
    /// Oldest segments are reclaimed while the log is larger than this (0 = no limit).
    /// Default: 0B
    pub retention_bytes: ByteSize,
    /// How often the retention rules and the disk limits are applied (100ms..=1h). Default: 10s
    pub retention_check_interval: HumanDuration,
    /// Above this share of the disk used, the oldest reclaimable segments go early, whatever
    /// their age (0.5..=0.99). Default: 0.85
    pub disk_soft_limit: f64,
    /// Above this share of the disk used, sends answer 503 "disk full" and nothing is stored
    /// (above disk_soft_limit, at most 1). Default: 0.95
    pub disk_hard_limit: f64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            segment_size: ByteSize::gib(1),
            flush: FlushMode::Async,
            flush_interval: HumanDuration::from_millis(200),
            consume_queue_segment_entries: 300_000,
            retention: HumanDuration::from_secs(72 * 3600),
            retention_bytes: ByteSize(0),
            retention_check_interval: HumanDuration::from_secs(10),
            disk_soft_limit: 0.85,
            disk_hard_limit: 0.95,
        }
    }
}

/// Durability of an acknowledged send (`store.flush`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash, Default)]
#[serde(rename_all = "lowercase")]
pub enum FlushMode {
    /// `"async"`: a send is acknowledged once its message is written to the
    /// OS page cache; the log is fsync'd every `store.flush_interval`.
    /// A crash of the process loses nothing acknowledged; a crash of the
    /// machine (or power loss) can lose what was acknowledged during the last
    /// interval.
    #[default]
    Async,
    /// `"sync"`: a send is acknowledged only after its message is fsync'd to
    /// disk, so no acknowledged message is lost even if the machine crashes.
    /// Concurrent sends share one fsync (group commit), so throughput holds
    /// up under load at the cost of per-send latency.
    Sync,
}

/// Consumer groups (`[group]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct GroupConfig {
    /// How often consumer-group progress is written to disk (1ms..=60s). Default: 1s
    pub persist_interval: HumanDuration,
}

impl Default for GroupConfig {
    fn default() -> Self {
        Self { persist_interval: HumanDuration::from_secs(1) }
    }
}

/// Deduplicated sends (`[dedup]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DedupConfig {
    /// How long a send's `dedup_id` is remembered for its topic (1s..=7d; at most as long as
    /// `store.retention` keeps the message). Default: 5m
    pub window: HumanDuration,
}

impl Default for DedupConfig {
    fn default() -> Self {
        Self { window: HumanDuration::from_secs(300) }
    }
}

/// Transaction messages (`[transaction]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TransactionConfig {
    /// A prepared transaction is handed out to its producer's check at most once per this
    /// (1s..=1h). Default: 30s
    pub check_interval: HumanDuration,
    /// Checks handed out before a transaction is resolved by `unresolved` (1..=1000). Default: 15
    pub check_max: u32,
    /// How a transaction is resolved after `check_max` checks. Default: rollback
    pub unresolved: Unresolved,
}

/// How a transaction nobody resolved ends.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Unresolved {
    Rollback,
    Commit,
}

impl Default for TransactionConfig {
    fn default() -> Self {
        Self { check_interval: HumanDuration::from_secs(30), check_max: 15, unresolved: Unresolved::Rollback }
    }
}

/// Delayed delivery (`[timer]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TimerConfig {
    /// Furthest future a message may be scheduled (1s..=3653d: ten years, leap days included). Default: 365d
    pub max_delay: HumanDuration,
    /// Time covered by one wheel slot (1ms..=60s). Messages still fire at their own millisecond;
    /// this only sets how coarsely they are indexed. Default: 1s
    pub precision: HumanDuration,
    /// Slots in the wheel (1024..=16777216); the wheel spans slots × precision, and later
    /// messages roll. Default: 1209600 (two weeks of seconds)
    pub slots: u64,
    /// How far ahead of a slot's time dequeue-get reads it, so its messages are ready to be
    /// released at their millisecond (0ms..=10s). Default: 1s
    pub lookahead: HumanDuration,
    /// Capacity of each queue between pipeline stages (1024..=1048576). Default: 65536
    pub queue_capacity: u32,
    /// Most scheduled messages due in one slot; a send that would pass it answers 429 BUSY
    /// (0: no limit). Default: 0
    pub max_per_slot: u64,
    /// How often the timer logs a progress line at info level (0s: never). Default: 60s
    pub progress_interval: HumanDuration,
    /// Dequeue lag (how far the read pointer is behind the clock) above which the timer logs
    /// a warning. Default: 5s
    pub lag_warn: HumanDuration,
}

impl Default for TimerConfig {
    fn default() -> Self {
        Self {
            max_delay: HumanDuration::from_days(365),
            precision: HumanDuration::from_secs(1),
            slots: 2 * 7 * 24 * 3600,
            lookahead: HumanDuration::from_secs(1),
            queue_capacity: 65536,
            max_per_slot: 0,
            progress_interval: HumanDuration::from_secs(60),
            lag_warn: HumanDuration::from_secs(5),
        }
    }
}
