//! Configuration of the chime server.
//!
//! # Layers
//!
//! The effective [`Config`] is built from four layers; each later layer
//! overrides the keys it sets and leaves the others alone:
//!
//! 1. **Compiled-in defaults** — [`Config::default()`], documented on every
//!    field below.
//! 2. **The profile** — a TOML file. `--profile NAME` (else `CHIME_PROFILE`,
//!    else `default`) picks it: `default`, `durable` and `test` are embedded
//!    in the binary (from `profiles/*.toml`), so chime works from any
//!    directory; any other value is the path of a TOML file. A profile may
//!    set any subset of keys; sub-tables (`[store]`, ...) are merged key by
//!    key.
//! 3. **Environment** — every leaf key has a variable named `CHIME_` + its
//!    dotted path in upper case with `.` turned into `_`: `listen` →
//!    `CHIME_LISTEN`, `store.segment_size` → `CHIME_STORE_SEGMENT_SIZE`,
//!    `timer.max_delay` → `CHIME_TIMER_MAX_DELAY`. The set is derived from
//!    the fields of [`Config`], so a new field gets its variable
//!    automatically (`auth.token` → `CHIME_AUTH_TOKEN`). `CHIME_PROFILE`
//!    selects the profile (layer 2); any other `CHIME_*` variable that
//!    matches no key is an error, so a typo is not silently ignored.
//! 4. **Command-line flags** — [`Args`]: `--listen` and `--data-dir`.
//!
//! The merged result is then checked by [`Config::validate`].
//!
//! # Errors
//!
//! Nothing is ignored: an unknown key in a profile, an unknown `CHIME_*`
//! variable, a value of the wrong type or out of range is a [`ConfigError`]
//! that names the dotted key (and the variable or flag it came from), e.g.
//!
//! ```text
//! unknown key store.segmentsize in profile ./my.toml (expected one of: consume_queue_segment_entries, flush, flush_interval, segment_size)
//! store.flush: unknown variant "fast", expected "async" or "sync"
//! store.segment_size: must be at least max_message_bytes + 64KiB (4.1MiB), got 1MiB
//! environment variable CHIME_DEFAULT_QUEUES (default_queues): expected an integer, got "many"
//! ```
//!
//! # Values
//!
//! Sizes are [`ByteSize`] (`"4MiB"`, `"1 GiB"`, `"10MB"` or an integer number
//! of bytes) and durations are [`HumanDuration`] (`"200ms"`, `"1s"`, `"365d"`
//! or an integer number of milliseconds); see [`units`]. In the environment
//! every value is a string, converted to the type of the key: integers and
//! booleans (`true`/`false`) are parsed as such, sizes and durations accept
//! their string forms.

pub mod units;

pub use units::{ByteSize, HumanDuration};

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use toml::{Table, Value};

/// Prefix of the environment variables read by [`Config::load`].
pub const ENV_PREFIX: &str = "CHIME_";

/// Environment variable selecting the profile when `--profile` is not given.
pub const PROFILE_ENV: &str = "CHIME_PROFILE";
/// The variable of `auth.token`: set but empty is an error, not "no token".
const TOKEN_ENV: &str = "CHIME_AUTH_TOKEN";

/// Profile used when neither `--profile` nor `CHIME_PROFILE` is given.
pub const DEFAULT_PROFILE: &str = "default";

/// The profiles embedded in the binary: `(name, TOML text)`.
pub const BUILTIN_PROFILES: &[(&str, &str)] = &[
    ("default", include_str!("../../profiles/default.toml")),
    ("durable", include_str!("../../profiles/durable.toml")),
    ("test", include_str!("../../profiles/test.toml")),
];

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
/// Longest bearer token: far beyond any real one, and short enough to bound the comparison.
const MAX_TOKEN_BYTES: usize = 4096;

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
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            segment_size: ByteSize::gib(1),
            flush: FlushMode::Async,
            flush_interval: HumanDuration::from_millis(200),
            consume_queue_segment_entries: 300_000,
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

/// Command-line flags of the `chime` binary (clap derive).
#[derive(Debug, Clone, Default, clap::Parser)]
#[command(name = "chime", version, about = "Durable delayed and scheduled message service")]
pub struct Args {
    /// Profile name (default, durable, test) or path to a TOML file. Env: CHIME_PROFILE
    #[arg(long)]
    pub profile: Option<String>,
    /// Listen address, e.g. 127.0.0.1:8080. Env: CHIME_LISTEN
    #[arg(long)]
    pub listen: Option<String>,
    /// Data directory. Env: CHIME_DATA_DIR
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

/// The result of [`Config::load`].
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    /// The validated configuration.
    pub config: Config,
    /// The profile used: a built-in profile's name or the path as given.
    pub profile: String,
}

/// Why the configuration could not be loaded. Every variant about a value
/// names its dotted key (`store.segment_size`).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The profile is neither a built-in profile nor an existing file.
    #[error(
        "unknown profile {name:?}: not a built-in profile (default, durable, test) and no file exists at that path"
    )]
    UnknownProfile {
        /// The profile name or path as given.
        name: String,
    },
    /// The profile file exists but could not be read.
    #[error("cannot read profile file {}: {source}", path.display())]
    Read {
        /// The profile file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The profile is not valid TOML.
    #[error("profile {profile}: invalid TOML: {message}")]
    Syntax {
        /// The profile name or path.
        profile: String,
        /// The TOML parser's message, with line and column.
        message: String,
    },
    /// The profile sets a key that does not exist.
    #[error("unknown key {key} in profile {profile} (expected one of: {})", expected.join(", "))]
    UnknownKey {
        /// Full dotted path of the unknown key, e.g. `store.segmentsize`.
        key: String,
        /// The profile name or path.
        profile: String,
        /// The keys that are allowed next to it.
        expected: Vec<String>,
    },
    /// A value has the wrong type or cannot be parsed.
    #[error("{key}: {message}")]
    Parse {
        /// Full dotted path of the key, e.g. `store.flush`.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A value parsed but is out of range or inconsistent with another one.
    #[error("{key}: {message}")]
    Invalid {
        /// Full dotted path of the key, e.g. `store.segment_size`.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A `CHIME_*` environment variable matches no key.
    #[error(
        "unknown environment variable {var}: no configuration key maps to it (a key maps to CHIME_ + its dotted path in upper case with '.' as '_', e.g. CHIME_STORE_SEGMENT_SIZE)"
    )]
    UnknownEnv {
        /// The variable's name.
        var: String,
    },
    /// The value of a `CHIME_*` environment variable is bad.
    #[error("environment variable {var} ({key}): {message}")]
    Env {
        /// The variable's name.
        var: String,
        /// The key it sets.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// The value of a command-line flag is bad.
    #[error("command-line flag {flag} ({key}): {message}")]
    Flag {
        /// The flag, e.g. `--listen`.
        flag: String,
        /// The key it sets.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A bug: the compiled-in defaults could not be processed.
    #[error("internal error in the configuration defaults: {message}")]
    Internal {
        /// What went wrong.
        message: String,
    },
}

/// Where a key's value came from, for error messages.
#[derive(Debug, Clone)]
enum Origin {
    Env(String),
    Flag(&'static str),
}

impl Config {
    /// Builds the configuration from the four layers — compiled-in defaults,
    /// the profile, the environment and the flags in `args` — and validates
    /// it.
    ///
    /// `env` is normally [`process_env()`] (or `std::env::vars()`, which
    /// panics if a variable is not Unicode); only names starting with
    /// `CHIME_` are looked at.
    pub fn load(args: &Args, env: impl IntoIterator<Item = (String, String)>) -> Result<Loaded, ConfigError> {
        // Sorted, so that of several bad variables the same one is reported
        // every time.
        let env: BTreeMap<String, String> = env.into_iter().filter(|(name, _)| name.starts_with(ENV_PREFIX)).collect();
        // Set but empty is a deployment whose secret did not arrive: refuse rather than serve
        // without authentication (unset is the documented way to have none).
        if env.get(TOKEN_ENV).is_some_and(|v| v.is_empty()) {
            return Err(ConfigError::Env {
                var: TOKEN_ENV.to_owned(),
                key: "auth.token".to_owned(),
                message: "set but empty; unset it to serve without a token, or give the token".to_owned(),
            });
        }

        let profile = args
            .profile
            .clone()
            .or_else(|| env.get(PROFILE_ENV).cloned())
            .unwrap_or_else(|| DEFAULT_PROFILE.to_owned());
        let text = profile_text(&profile)?;

        let defaults = defaults_table()?;
        let mut table = defaults.clone();
        merge(&mut table, parse_profile(&profile, &text)?);

        let mut origins = HashMap::new();
        apply_env(&mut table, &defaults, &env, &mut origins)?;
        apply_args(&mut table, args, &mut origins)?;

        let config = from_table(table, &defaults, &profile).map_err(|e| attribute(e, &origins))?;
        config.validate().map_err(|e| attribute(e, &origins))?;
        Ok(Loaded { config, profile })
    }

    /// The compiled-in defaults overlaid with the TOML `text` (a profile),
    /// validated. The environment and flags are not looked at.
    pub fn from_profile_str(text: &str) -> Result<Config, ConfigError> {
        const LABEL: &str = "<string>";
        let defaults = defaults_table()?;
        let mut table = defaults.clone();
        merge(&mut table, parse_profile(LABEL, text)?);
        let config = from_table(table, &defaults, LABEL)?;
        config.validate()?;
        Ok(config)
    }

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
        if !(1..=MAX_QUEUES).contains(&self.default_queues) {
            return invalid(
                "default_queues",
                format!("must be between 1 and {MAX_QUEUES}, got {}", self.default_queues),
            );
        }
        let max_message = self.max_message_bytes;
        if max_message.0 == 0 || max_message > MAX_MESSAGE_LIMIT {
            return invalid(
                "max_message_bytes",
                format!("must be between 1B and {MAX_MESSAGE_LIMIT}, got {max_message}"),
            );
        }
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
        check_range("store.flush_interval", self.store.flush_interval, MIN_INTERVAL, MAX_INTERVAL)?;
        let entries = self.store.consume_queue_segment_entries;
        if !(MIN_CQ_ENTRIES..=MAX_CQ_ENTRIES).contains(&entries) {
            return invalid(
                "store.consume_queue_segment_entries",
                format!("must be between {MIN_CQ_ENTRIES} and {MAX_CQ_ENTRIES}, got {entries}"),
            );
        }
        check_range(
            "http.header_read_timeout",
            self.http.header_read_timeout,
            HumanDuration::from_millis(100),
            HumanDuration::from_secs(600),
        )?;
        check_range(
            "http.body_read_timeout",
            self.http.body_read_timeout,
            HumanDuration::from_millis(100),
            HumanDuration::from_secs(3600),
        )?;
        let inflight = self.admission.max_inflight_bytes;
        if inflight < max_request || inflight > ByteSize::gib(64) {
            return invalid(
                "admission.max_inflight_bytes",
                format!("must be between max_request_bytes ({max_request}) and 64GiB, got {inflight}"),
            );
        }
        for (key, v) in [
            ("limits.max_topics", self.limits.max_topics),
            ("limits.max_groups_per_topic", self.limits.max_groups_per_topic),
        ] {
            if !(1..=1_000_000).contains(&v) {
                return invalid(key, format!("must be between 1 and 1000000, got {v}"));
            }
        }
        if !(1..=100_000_000).contains(&self.admission.max_enqueue_lag) {
            return invalid(
                "admission.max_enqueue_lag",
                format!("must be between 1 and 100000000, got {}", self.admission.max_enqueue_lag),
            );
        }
        check_range(
            "admission.retry_after",
            self.admission.retry_after,
            HumanDuration::from_secs(1),
            HumanDuration::from_secs(3600),
        )?;
        check_range("group.persist_interval", self.group.persist_interval, MIN_INTERVAL, MAX_INTERVAL)?;
        let max_delay = self.timer.max_delay;
        if max_delay > MAX_MAX_DELAY {
            return invalid(
                "timer.max_delay",
                format!("must be at most {MAX_MAX_DELAY} (ten years, leap days included), got {max_delay}"),
            );
        }
        check_range("timer.max_delay", max_delay, MIN_MAX_DELAY, MAX_MAX_DELAY)?;
        check_range(
            "timer.precision",
            self.timer.precision,
            HumanDuration::from_millis(1),
            HumanDuration::from_secs(60),
        )?;
        check_range(
            "timer.lookahead",
            self.timer.lookahead,
            HumanDuration::from_millis(0),
            HumanDuration::from_secs(10),
        )?;
        if !(1024..=1 << 24).contains(&self.timer.slots) {
            return invalid("timer.slots", format!("must be between 1024 and 16777216, got {}", self.timer.slots));
        }
        if !(1024..=1 << 20).contains(&self.timer.queue_capacity) {
            return invalid(
                "timer.queue_capacity",
                format!("must be between 1024 and 1048576, got {}", self.timer.queue_capacity),
            );
        }
        Ok(())
    }
}

/// The process environment as `(name, value)` pairs for [`Config::load`].
/// Unlike `std::env::vars()` it does not panic on a variable that is not
/// valid Unicode; such variables are skipped.
pub fn process_env() -> Vec<(String, String)> {
    std::env::vars_os()
        .filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?)))
        .collect()
}

fn invalid(key: &str, message: String) -> Result<(), ConfigError> {
    Err(ConfigError::Invalid { key: key.to_owned(), message })
}

fn check_range(key: &str, value: HumanDuration, min: HumanDuration, max: HumanDuration) -> Result<(), ConfigError> {
    if value < min || value > max {
        return invalid(key, format!("must be between {min} and {max}, got {value}"));
    }
    Ok(())
}

/// The TOML text of `profile`: a built-in profile, or the file at that path.
fn profile_text(profile: &str) -> Result<String, ConfigError> {
    if let Some((_, text)) = BUILTIN_PROFILES.iter().find(|(name, _)| *name == profile) {
        return Ok((*text).to_owned());
    }
    let path = PathBuf::from(profile);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound || profile.is_empty() => {
            Err(ConfigError::UnknownProfile { name: profile.to_owned() })
        }
        Err(source) => Err(ConfigError::Read { path, source }),
    }
}

fn parse_profile(profile: &str, text: &str) -> Result<Table, ConfigError> {
    text.parse::<Table>()
        .map_err(|e| ConfigError::Syntax { profile: profile.to_owned(), message: e.to_string().trim_end().to_owned() })
}

/// `Config::default()` as a TOML table: the base layer, and the list of keys
/// (and their types) that the environment may set.
fn defaults_table() -> Result<Table, ConfigError> {
    Table::try_from(Config::default()).map_err(|e| ConfigError::Internal { message: e.to_string() })
}

/// Overlays `top` on `base`: tables present in both are merged key by key,
/// anything else in `top` replaces what `base` has.
fn merge(base: &mut Table, top: Table) {
    for (key, value) in top {
        match (base.get_mut(&key), value) {
            (Some(Value::Table(base_sub)), Value::Table(top_sub)) => merge(base_sub, top_sub),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// Every leaf (non-table value) of `table` with its dotted path.
fn leaves<'a>(table: &'a Table, prefix: &str, out: &mut Vec<(String, &'a Value)>) {
    for (key, value) in table {
        let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
        match value {
            Value::Table(sub) => leaves(sub, &path, out),
            leaf => out.push((path, leaf)),
        }
    }
}

/// The environment variable of a dotted key: `store.segment_size` →
/// `CHIME_STORE_SEGMENT_SIZE`.
fn env_var_name(key: &str) -> String {
    format!("{ENV_PREFIX}{}", key.replace('.', "_").to_ascii_uppercase())
}

/// Sets the dotted `key` in `table`. If the profile replaced one of the
/// enclosing tables by a non-table value, nothing is set: deserialization
/// reports that value's type error instead.
fn set_key(table: &mut Table, key: &str, value: Value) {
    let mut parts = key.split('.').peekable();
    let mut current = table;
    while let Some(part) = parts.next() {
        if parts.peek().is_none() {
            current.insert(part.to_owned(), value);
            return;
        }
        let next = current.entry(part.to_owned()).or_insert_with(|| Value::Table(Table::new()));
        match next {
            Value::Table(sub) => current = sub,
            _ => return,
        }
    }
}

/// Converts an environment string to the TOML type of the key's default.
fn env_value(default: &Value, raw: &str) -> Result<Value, String> {
    match default {
        Value::String(_) => Ok(Value::String(raw.to_owned())),
        Value::Integer(_) => {
            raw.trim().parse::<i64>().map(Value::Integer).map_err(|_| format!("expected an integer, got {raw:?}"))
        }
        Value::Boolean(_) => match raw.trim() {
            "true" => Ok(Value::Boolean(true)),
            "false" => Ok(Value::Boolean(false)),
            _ => Err(format!("expected true or false, got {raw:?}")),
        },
        Value::Float(_) => {
            raw.trim().parse::<f64>().map(Value::Float).map_err(|_| format!("expected a number, got {raw:?}"))
        }
        other => Err(format!("a value of type {} cannot be set from the environment", other.type_str())),
    }
}

fn apply_env(
    table: &mut Table,
    defaults: &Table,
    env: &BTreeMap<String, String>,
    origins: &mut HashMap<String, Origin>,
) -> Result<(), ConfigError> {
    let mut keys = Vec::new();
    leaves(defaults, "", &mut keys);
    let by_var: HashMap<String, (String, &Value)> =
        keys.into_iter().map(|(key, default)| (env_var_name(&key), (key, default))).collect();

    for (var, raw) in env {
        if var == PROFILE_ENV {
            continue;
        }
        let Some((key, default)) = by_var.get(var) else {
            return Err(ConfigError::UnknownEnv { var: var.clone() });
        };
        let value = env_value(default, raw).map_err(|message| ConfigError::Env {
            var: var.clone(),
            key: key.clone(),
            message,
        })?;
        set_key(table, key, value);
        origins.insert(key.clone(), Origin::Env(var.clone()));
    }
    Ok(())
}

fn apply_args(table: &mut Table, args: &Args, origins: &mut HashMap<String, Origin>) -> Result<(), ConfigError> {
    if let Some(listen) = &args.listen {
        set_key(table, "listen", Value::String(listen.clone()));
        origins.insert("listen".to_owned(), Origin::Flag("--listen"));
    }
    if let Some(dir) = &args.data_dir {
        let Some(dir) = dir.to_str() else {
            return Err(ConfigError::Flag {
                flag: "--data-dir".to_owned(),
                key: "data_dir".to_owned(),
                message: format!("path {} is not valid UTF-8", dir.display()),
            });
        };
        set_key(table, "data_dir", Value::String(dir.to_owned()));
        origins.insert("data_dir".to_owned(), Origin::Flag("--data-dir"));
    }
    Ok(())
}

/// Deserializes the merged table, naming the dotted key of any error.
fn from_table(table: Table, defaults: &Table, profile: &str) -> Result<Config, ConfigError> {
    serde_path_to_error::deserialize::<_, Config>(table).map_err(|err| {
        let parent: Vec<String> = err.path().iter().map(|s| s.to_string()).collect();
        let message = err.inner().message().to_owned();
        if let Some(unknown) = unknown_field(&message) {
            // serde_path_to_error records the unknown key itself as the last
            // path segment; do not rely on it, add it if it is missing.
            let mut key = parent;
            if key.last().map(String::as_str) == Some(unknown) {
                key.pop();
            }
            let expected = keys_at(defaults, &key);
            key.push(unknown.to_owned());
            return ConfigError::UnknownKey { key: key.join("."), profile: profile.to_owned(), expected };
        }
        let key = if parent.is_empty() { "<root>".to_owned() } else { parent.join(".") };
        ConfigError::Parse { key, message: requote(&message) }
    })
}

/// Rewrites serde's `backtick` quoting: strings get double quotes (as in
/// TOML), numbers and booleans none: ``unknown variant `fast` `` becomes
/// `unknown variant "fast"`, ``integer `70000` `` becomes `integer 70000`.
fn requote(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for (i, part) in message.split('`').enumerate() {
        let bare = part.parse::<f64>().is_ok() || part == "true" || part == "false";
        if i % 2 == 1 && !bare {
            out.push('"');
            out.push_str(part);
            out.push('"');
        } else {
            out.push_str(part);
        }
    }
    out
}

/// The field name in serde's "unknown field `x`, expected ..." message.
fn unknown_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("unknown field `")?;
    rest.split_once('`').map(|(name, _)| name)
}

/// The (sorted) keys of the sub-table of `table` at `path`.
fn keys_at(table: &Table, path: &[String]) -> Vec<String> {
    let mut current = table;
    for part in path {
        match current.get(part) {
            Some(Value::Table(sub)) => current = sub,
            _ => return Vec::new(),
        }
    }
    current.keys().cloned().collect()
}

/// Re-labels an error about a key that the environment or a flag set, so
/// that it names the variable or flag.
fn attribute(err: ConfigError, origins: &HashMap<String, Origin>) -> ConfigError {
    let (key, message) = match &err {
        ConfigError::Parse { key, message } | ConfigError::Invalid { key, message } => (key, message),
        _ => return err,
    };
    match origins.get(key) {
        Some(Origin::Env(var)) => ConfigError::Env { var: var.clone(), key: key.clone(), message: message.clone() },
        Some(Origin::Flag(flag)) => {
            ConfigError::Flag { flag: (*flag).to_owned(), key: key.clone(), message: message.clone() }
        }
        None => err,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
        vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn load(args: &Args, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::load(args, env(vars)).map(|loaded| loaded.config)
    }

    fn profile_args(profile: &str) -> Args {
        Args { profile: Some(profile.to_owned()), ..Args::default() }
    }

    /// A profile file in the temp directory, removed on drop.
    struct TempProfile(PathBuf);

    impl TempProfile {
        fn new(tag: &str, text: &str) -> Self {
            let path = std::env::temp_dir().join(format!(
                "chime-config-{tag}-{}-{:?}.toml",
                std::process::id(),
                std::thread::current().id()
            ));
            std::fs::write(&path, text).expect("write temp profile");
            Self(path)
        }

        fn arg(&self) -> String {
            self.0.to_string_lossy().into_owned()
        }
    }

    impl Drop for TempProfile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    #[test]
    fn defaults_validate() {
        Config::default().validate().expect("defaults are valid");
    }

    #[test]
    fn no_profile_means_default() {
        let loaded = Config::load(&Args::default(), env(&[])).expect("load");
        assert_eq!(loaded.profile, "default");
        assert_eq!(loaded.config, Config::default());
    }

    #[test]
    fn builtin_profiles_load_and_validate() {
        for (name, text) in BUILTIN_PROFILES {
            let loaded = Config::load(&profile_args(name), env(&[])).expect(name);
            assert_eq!(loaded.profile, *name);
            assert_eq!(Config::from_profile_str(text).expect(name), loaded.config, "{name}");
        }
    }

    #[test]
    fn default_profile_spells_out_the_defaults() {
        let (_, text) = BUILTIN_PROFILES[0];
        assert_eq!(Config::from_profile_str(text).expect("default"), Config::default());
        // Every key is written explicitly, so users see them all.
        let written: Table = text.parse().expect("toml");
        let mut written_keys = Vec::new();
        leaves(&written, "", &mut written_keys);
        let defaults = defaults_table().expect("defaults");
        let mut default_keys = Vec::new();
        leaves(&defaults, "", &mut default_keys);
        let names = |v: Vec<(String, &Value)>| v.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
        assert_eq!(names(written_keys), names(default_keys));
    }

    #[test]
    fn durable_profile_differs_only_in_flush() {
        let durable = Config::load(&profile_args("durable"), env(&[])).expect("durable");
        let mut expected = Config::default();
        expected.store.flush = FlushMode::Sync;
        assert_eq!(durable.config, expected);
    }

    #[test]
    fn test_profile_values() {
        let c = load(&profile_args("test"), &[]).expect("test profile");
        assert_eq!(c.data_dir, PathBuf::from("./data-test"));
        assert_eq!(c.max_message_bytes, ByteSize::mib(1));
        assert_eq!(c.max_request_bytes, ByteSize::mib(4));
        assert_eq!(c.store.segment_size, ByteSize::mib(8));
        assert_eq!(c.store.consume_queue_segment_entries, 4096);
        assert_eq!(c.store.flush_interval.0, Duration::from_millis(50));
        assert_eq!(c.group.persist_interval.0, Duration::from_millis(100));
        assert_eq!(c.store.flush, FlushMode::Async);
        assert_eq!(c.timer.slots, 7200);
        assert_eq!(c.timer.queue_capacity, 4096);
        assert_eq!(c.timer.max_delay, TimerConfig::default().max_delay);
    }

    #[test]
    fn profile_from_env_and_flag_beats_env() {
        let loaded = Config::load(&Args::default(), env(&[("CHIME_PROFILE", "durable")])).expect("env profile");
        assert_eq!(loaded.profile, "durable");
        assert_eq!(loaded.config.store.flush, FlushMode::Sync);

        let loaded = Config::load(&profile_args("test"), env(&[("CHIME_PROFILE", "durable")])).expect("flag profile");
        assert_eq!(loaded.profile, "test");
    }

    #[test]
    fn env_overrides_nested_keys() {
        let c = load(
            &Args::default(),
            &[
                ("CHIME_STORE_SEGMENT_SIZE", "256MiB"),
                ("CHIME_STORE_FLUSH", "sync"),
                ("CHIME_STORE_CONSUME_QUEUE_SEGMENT_ENTRIES", " 2048 "),
                ("CHIME_GROUP_PERSIST_INTERVAL", "250ms"),
                ("CHIME_TIMER_MAX_DELAY", "30days"),
                ("CHIME_AUTO_CREATE_TOPICS", "false"),
                ("CHIME_DEFAULT_QUEUES", "16"),
                ("CHIME_MAX_MESSAGE_BYTES", "1048576"),
                ("CHIME_AUTH_TOKEN", "a-token"),
                ("PATH", "/usr/bin"),
            ],
        )
        .expect("env");
        assert_eq!(c.store.segment_size, ByteSize::mib(256));
        assert_eq!(c.store.flush, FlushMode::Sync);
        assert_eq!(c.store.consume_queue_segment_entries, 2048);
        assert_eq!(c.group.persist_interval, HumanDuration::from_millis(250));
        assert_eq!(c.timer.max_delay, HumanDuration::from_days(30));
        assert!(!c.auto_create_topics);
        assert_eq!(c.default_queues, 16);
        assert_eq!(c.max_message_bytes, ByteSize::mib(1));
        assert_eq!(c.auth.token.expose(), "a-token");
        // Untouched keys keep the profile's values.
        assert_eq!(c.store.flush_interval, HumanDuration::from_millis(200));
    }

    #[test]
    fn env_overrides_only_the_key_it_names_in_a_profile_table() {
        let c = load(&profile_args("test"), &[("CHIME_STORE_FLUSH_INTERVAL", "10ms")]).expect("env");
        assert_eq!(c.store.flush_interval, HumanDuration::from_millis(10));
        assert_eq!(c.store.segment_size, ByteSize::mib(8));
    }

    #[test]
    fn flag_beats_env_beats_profile() {
        let file = TempProfile::new("precedence", "listen = \"127.0.0.1:1111\"\ndata_dir = \"/profile\"\n");
        let vars = [("CHIME_LISTEN", "127.0.0.1:2222"), ("CHIME_DATA_DIR", "/env")];

        let c = load(&profile_args(&file.arg()), &[]).expect("profile only");
        assert_eq!(c.listen, "127.0.0.1:1111");
        assert_eq!(c.data_dir, PathBuf::from("/profile"));

        let c = load(&profile_args(&file.arg()), &vars).expect("env");
        assert_eq!(c.listen, "127.0.0.1:2222");
        assert_eq!(c.data_dir, PathBuf::from("/env"));

        let args = Args {
            profile: Some(file.arg()),
            listen: Some("[::1]:3333".to_owned()),
            data_dir: Some(PathBuf::from("/flag")),
        };
        let c = load(&args, &vars).expect("flags");
        assert_eq!(c.listen, "[::1]:3333");
        assert_eq!(c.data_dir, PathBuf::from("/flag"));
    }

    #[test]
    fn path_profile_loads_from_a_file() {
        let file = TempProfile::new("path", "default_queues = 4\n[store]\nflush = \"sync\"\nsegment_size = 67108864\n");
        let loaded = Config::load(&profile_args(&file.arg()), env(&[])).expect("path profile");
        assert_eq!(loaded.profile, file.arg());
        assert_eq!(loaded.config.default_queues, 4);
        assert_eq!(loaded.config.store.flush, FlushMode::Sync);
        assert_eq!(loaded.config.store.segment_size, ByteSize::mib(64));
        // Keys the file leaves out keep their defaults, also inside [store].
        assert_eq!(loaded.config.store.flush_interval, HumanDuration::from_millis(200));
        assert_eq!(loaded.config.listen, "127.0.0.1:8080");
    }

    #[test]
    fn unknown_profile_is_an_error() {
        let missing = std::env::temp_dir().join("chime-config-no-such-profile.toml");
        let name = missing.to_string_lossy().into_owned();
        let err = load(&profile_args(&name), &[]).expect_err("missing");
        assert!(matches!(&err, ConfigError::UnknownProfile { name: n } if *n == name), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("default, durable, test"), "{msg}");

        let err = load(&Args::default(), &[("CHIME_PROFILE", "prod")]).expect_err("unknown");
        assert!(matches!(&err, ConfigError::UnknownProfile { name } if name == "prod"), "{err:?}");
    }

    #[test]
    fn unreadable_profile_is_a_read_error() {
        // A directory exists but cannot be read as a file.
        let dir = std::env::temp_dir();
        let err = load(&profile_args(&dir.to_string_lossy()), &[]).expect_err("dir");
        assert!(matches!(err, ConfigError::Read { .. }), "{err:?}");
    }

    #[test]
    fn unknown_key_in_profile_names_it() {
        let err = Config::from_profile_str("[store]\nsegmentsize = \"1GiB\"\n").expect_err("typo");
        match &err {
            ConfigError::UnknownKey { key, expected, .. } => {
                assert_eq!(key, "store.segmentsize");
                assert!(expected.contains(&"segment_size".to_owned()), "{expected:?}");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(err.to_string().starts_with("unknown key store.segmentsize"), "{err}");

        let err = Config::from_profile_str("lisen = \"0.0.0.0:80\"\n").expect_err("top level");
        assert!(matches!(&err, ConfigError::UnknownKey { key, .. } if key == "lisen"), "{err:?}");

        let err = Config::from_profile_str("[storage]\nflush = \"sync\"\n").expect_err("table");
        assert!(matches!(&err, ConfigError::UnknownKey { key, .. } if key == "storage"), "{err:?}");

        let file = TempProfile::new("unknown", "[timer]\nmax_dealy = \"1d\"\n");
        let err = load(&profile_args(&file.arg()), &[]).expect_err("file typo");
        match &err {
            ConfigError::UnknownKey { key, profile, .. } => {
                assert_eq!(key, "timer.max_dealy");
                assert_eq!(*profile, file.arg());
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn bad_value_names_the_key() {
        let err = Config::from_profile_str("[store]\nflush = \"fast\"\n").expect_err("variant");
        assert!(matches!(&err, ConfigError::Parse { key, .. } if key == "store.flush"), "{err:?}");
        assert_eq!(err.to_string(), r#"store.flush: unknown variant "fast", expected "async" or "sync""#);

        let err = Config::from_profile_str("max_message_bytes = \"4XB\"\n").expect_err("size");
        assert_eq!(
            err.to_string(),
            r#"max_message_bytes: invalid size "4XB": expected a number with a unit like 4MiB"#
        );

        let err = Config::from_profile_str("default_queues = \"8\"\n").expect_err("type");
        assert!(matches!(&err, ConfigError::Parse { key, .. } if key == "default_queues"), "{err:?}");

        let err = Config::from_profile_str("default_queues = 70000\n").expect_err("u16");
        assert!(matches!(&err, ConfigError::Parse { key, .. } if key == "default_queues"), "{err:?}");

        let err = Config::from_profile_str("[group]\npersist_interval = \"soon\"\n").expect_err("duration");
        assert!(err.to_string().starts_with(r#"group.persist_interval: invalid duration "soon""#), "{err}");

        let err = Config::from_profile_str("store = 5\n").expect_err("not a table");
        assert!(matches!(&err, ConfigError::Parse { key, .. } if key == "store"), "{err:?}");
    }

    #[test]
    fn toml_syntax_error_names_the_profile() {
        let file = TempProfile::new("syntax", "listen = \n");
        let err = load(&profile_args(&file.arg()), &[]).expect_err("syntax");
        assert!(matches!(&err, ConfigError::Syntax { profile, .. } if *profile == file.arg()), "{err:?}");
    }

    #[test]
    fn unknown_chime_env_is_an_error() {
        let err = load(&Args::default(), &[("CHIME_STORE_SEGMENTSIZE", "1GiB")]).expect_err("unknown env");
        assert!(matches!(&err, ConfigError::UnknownEnv { var } if var == "CHIME_STORE_SEGMENTSIZE"), "{err:?}");
        // A table is not a leaf key.
        let err = load(&Args::default(), &[("CHIME_STORE", "x")]).expect_err("table env");
        assert!(matches!(err, ConfigError::UnknownEnv { .. }), "{err:?}");
        // Not our prefix: ignored.
        load(&Args::default(), &[("CHIMEX_FOO", "1"), ("chime_foo", "1")]).expect("ignored");
    }

    #[test]
    fn bad_env_value_names_var_and_key() {
        let cases = [
            ("CHIME_DEFAULT_QUEUES", "many", "default_queues", "expected an integer"),
            ("CHIME_AUTO_CREATE_TOPICS", "yes", "auto_create_topics", "expected true or false"),
            ("CHIME_STORE_FLUSH", "fast", "store.flush", "unknown variant"),
            ("CHIME_STORE_SEGMENT_SIZE", "1XB", "store.segment_size", "invalid size"),
            ("CHIME_STORE_SEGMENT_SIZE", "1MiB", "store.segment_size", "must be at least"),
            ("CHIME_DEFAULT_QUEUES", "100", "default_queues", "between 1 and 64"),
            ("CHIME_DEFAULT_QUEUES", "100000", "default_queues", "u16"),
            ("CHIME_TIMER_MAX_DELAY", "11y", "timer.max_delay", "at most 3653d"),
            ("CHIME_TIMER_SLOTS", "10", "timer.slots", "between 1024"),
            ("CHIME_LISTEN", "localhost:80", "listen", "invalid socket address"),
        ];
        for (var, value, key, fragment) in cases {
            let err = load(&Args::default(), &[(var, value)]).expect_err(var);
            match &err {
                ConfigError::Env { var: v, key: k, message } => {
                    assert_eq!((v.as_str(), k.as_str()), (var, key));
                    assert!(message.contains(fragment), "{var}={value}: {message}");
                }
                other => panic!("{var}={value}: unexpected {other:?}"),
            }
            let msg = err.to_string();
            assert!(msg.contains(var) && msg.contains(key), "{msg}");
        }
    }

    #[test]
    fn bad_flag_names_the_flag() {
        let args = Args { listen: Some("not an address".to_owned()), ..Args::default() };
        let err = load(&args, &[]).expect_err("bad flag");
        assert!(
            matches!(&err, ConfigError::Flag { flag, key, .. } if flag == "--listen" && key == "listen"),
            "{err:?}"
        );
    }

    #[test]
    fn every_leaf_key_has_a_distinct_env_var() {
        let defaults = defaults_table().expect("defaults");
        let mut keys = Vec::new();
        leaves(&defaults, "", &mut keys);
        let vars: std::collections::BTreeSet<String> = keys.iter().map(|(k, _)| env_var_name(k)).collect();
        assert_eq!(vars.len(), keys.len());
        for var in [
            "CHIME_LISTEN",
            "CHIME_DATA_DIR",
            "CHIME_AUTO_CREATE_TOPICS",
            "CHIME_DEFAULT_QUEUES",
            "CHIME_MAX_MESSAGE_BYTES",
            "CHIME_MAX_REQUEST_BYTES",
            "CHIME_STORE_SEGMENT_SIZE",
            "CHIME_STORE_FLUSH",
            "CHIME_STORE_FLUSH_INTERVAL",
            "CHIME_STORE_CONSUME_QUEUE_SEGMENT_ENTRIES",
            "CHIME_GROUP_PERSIST_INTERVAL",
            "CHIME_TIMER_MAX_DELAY",
            "CHIME_TIMER_PRECISION",
            "CHIME_TIMER_SLOTS",
            "CHIME_TIMER_LOOKAHEAD",
            "CHIME_TIMER_QUEUE_CAPACITY",
            "CHIME_TIMER_MAX_PER_SLOT",
            "CHIME_TIMER_PROGRESS_INTERVAL",
            "CHIME_TIMER_LAG_WARN",
            "CHIME_ALLOW_INSECURE",
            "CHIME_AUTH_TOKEN",
            "CHIME_HTTP_HEADER_READ_TIMEOUT",
            "CHIME_HTTP_BODY_READ_TIMEOUT",
            "CHIME_ADMISSION_MAX_INFLIGHT_BYTES",
            "CHIME_ADMISSION_MAX_ENQUEUE_LAG",
            "CHIME_ADMISSION_RETRY_AFTER",
            "CHIME_LIMITS_MAX_TOPICS",
            "CHIME_LIMITS_MAX_GROUPS_PER_TOPIC",
        ] {
            assert!(vars.contains(var), "{var}");
        }
        assert_eq!(vars.len(), 28);
        assert!(!vars.contains(PROFILE_ENV));
    }

    fn invalid_key(c: &Config) -> String {
        match c.validate() {
            Err(ConfigError::Invalid { key, .. }) => key,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn validation_rules() {
        let ok = Config::default();
        let check = |f: &dyn Fn(&mut Config), key: &str| {
            let mut c = ok.clone();
            f(&mut c);
            assert_eq!(invalid_key(&c), key);
        };
        let pass = |f: &dyn Fn(&mut Config)| {
            let mut c = ok.clone();
            f(&mut c);
            c.validate().expect("valid");
        };

        check(&|c| c.listen = "localhost:8080".into(), "listen");
        check(&|c| c.listen = "127.0.0.1".into(), "listen");
        pass(&|c| c.listen = "[::1]:0".into());
        check(&|c| c.data_dir = PathBuf::new(), "data_dir");
        check(&|c| c.default_queues = 0, "default_queues");
        check(&|c| c.default_queues = 65, "default_queues");
        pass(&|c| c.default_queues = 64);
        check(&|c| c.max_message_bytes = ByteSize(0), "max_message_bytes");
        check(
            &|c| {
                c.max_message_bytes = ByteSize::mib(65);
                c.max_request_bytes = ByteSize::mib(65);
            },
            "max_message_bytes",
        );
        check(&|c| c.max_request_bytes = ByteSize::mib(1), "max_request_bytes");
        check(&|c| c.max_request_bytes = ByteSize::gib(2), "max_request_bytes");
        pass(&|c| c.max_request_bytes = ByteSize::mib(4));
        check(
            &|c| {
                c.max_message_bytes = ByteSize(1);
                c.store.segment_size = ByteSize::kib(32);
            },
            "store.segment_size",
        );
        check(&|c| c.store.segment_size = ByteSize::mib(4), "store.segment_size");
        pass(&|c| c.store.segment_size = ByteSize::kib(4 * 1024 + 64));
        check(&|c| c.store.flush_interval = HumanDuration::from_millis(0), "store.flush_interval");
        check(&|c| c.store.flush_interval = HumanDuration::from_secs(61), "store.flush_interval");
        pass(&|c| c.store.flush_interval = HumanDuration::from_secs(60));
        check(&|c| c.store.consume_queue_segment_entries = 1023, "store.consume_queue_segment_entries");
        check(&|c| c.store.consume_queue_segment_entries = 10_000_001, "store.consume_queue_segment_entries");
        check(&|c| c.group.persist_interval = HumanDuration(Duration::from_micros(999)), "group.persist_interval");
        check(&|c| c.timer.max_delay = HumanDuration::from_millis(999), "timer.max_delay");
        check(&|c| c.timer.max_delay = HumanDuration::from_days(3654), "timer.max_delay");
        pass(&|c| c.timer.max_delay = HumanDuration::from_days(3653));
        pass(&|c| c.timer.max_delay = "10y".parse().unwrap());
        check(&|c| c.timer.precision = HumanDuration::from_millis(0), "timer.precision");
        check(&|c| c.timer.slots = 1023, "timer.slots");
        check(&|c| c.timer.lookahead = HumanDuration::from_secs(11), "timer.lookahead");
        check(&|c| c.timer.queue_capacity = 100, "timer.queue_capacity");
        check(&|c| c.http.header_read_timeout = HumanDuration::from_millis(99), "http.header_read_timeout");
        check(&|c| c.http.body_read_timeout = HumanDuration::from_secs(3601), "http.body_read_timeout");
        pass(&|c| c.http.header_read_timeout = HumanDuration::from_millis(100));
        check(&|c| c.admission.max_inflight_bytes = ByteSize::mib(15), "admission.max_inflight_bytes");
        pass(&|c| c.admission.max_inflight_bytes = ByteSize::mib(16));
        check(&|c| c.admission.max_enqueue_lag = 0, "admission.max_enqueue_lag");
        check(&|c| c.admission.retry_after = HumanDuration::from_millis(500), "admission.retry_after");
        pass(&|c| c.timer.max_delay = HumanDuration::from_secs(1));
    }

    #[test]
    fn token_from_env_is_set_and_never_printed() {
        let c = load(&Args::default(), &[("CHIME_AUTH_TOKEN", "s3cr3t-token")]).expect("token");
        assert_eq!(c.auth.token.expose(), "s3cr3t-token");
        let shown = format!("{c:?} {}", c.auth.token);
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
        let c = Config::from_profile_str("[auth]\ntoken = \"abc\"\n").expect("profile token");
        assert_eq!(c.auth.token.expose(), "abc");
    }

    #[test]
    fn quotas_have_ranges_and_env_vars() {
        let c = load(&Args::default(), &[("CHIME_LIMITS_MAX_TOPICS", "5")]).expect("quota");
        assert_eq!((c.limits.max_topics, c.limits.max_groups_per_topic), (5, 1000));
        for (var, v) in [("CHIME_LIMITS_MAX_TOPICS", "0"), ("CHIME_LIMITS_MAX_GROUPS_PER_TOPIC", "1000001")] {
            let err = load(&Args::default(), &[(var, v)]).expect_err("out of range");
            assert!(err.to_string().contains("between 1 and 1000000"), "{err}");
        }
    }

    #[test]
    fn an_empty_token_variable_is_an_error_not_an_open_server() {
        let err = load(&Args::default(), &[("CHIME_AUTH_TOKEN", "")]).expect_err("empty token");
        assert!(matches!(&err, ConfigError::Env { key, .. } if key == "auth.token"), "{err:?}");
        assert!(err.to_string().contains("set but empty"), "{err}");
        assert!(load(&Args::default(), &[]).expect("unset: no token").auth.token.is_empty());
    }

    #[test]
    fn bad_token_is_rejected_without_echoing_it() {
        let err = load(&Args::default(), &[("CHIME_AUTH_TOKEN", "has space")]).expect_err("space");
        assert!(matches!(&err, ConfigError::Env { key, .. } if key == "auth.token"), "{err:?}");
        assert!(!err.to_string().contains("has space"), "{err}");
        let long = "x".repeat(MAX_TOKEN_BYTES + 1);
        let err = load(&Args::default(), &[("CHIME_AUTH_TOKEN", long.as_str())]).expect_err("long");
        assert!(matches!(&err, ConfigError::Env { key, .. } if key == "auth.token"), "{err:?}");
    }

    #[test]
    fn non_loopback_needs_a_token_or_allow_insecure() {
        let args = Args { listen: Some("0.0.0.0:8080".to_owned()), ..Args::default() };
        let err = load(&args, &[]).expect_err("open without token");
        assert!(matches!(&err, ConfigError::Flag { key, .. } if key == "listen"), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("without authentication") && msg.contains("allow_insecure"), "{msg}");
        load(&args, &[("CHIME_AUTH_TOKEN", "t")]).expect("with a token");
        load(&args, &[("CHIME_ALLOW_INSECURE", "true")]).expect("insecure allowed");
        for loopback in ["127.0.0.1:1", "127.1.2.3:1", "[::1]:1"] {
            let args = Args { listen: Some(loopback.to_owned()), ..Args::default() };
            load(&args, &[]).expect(loopback);
        }
        let args = Args { listen: Some("[::]:8080".to_owned()), ..Args::default() };
        load(&args, &[]).expect_err("unspecified v6");
    }

    #[test]
    fn validation_messages() {
        let mut c = Config::default();
        c.store.segment_size = ByteSize::mib(1);
        assert_eq!(
            c.validate().expect_err("small segment").to_string(),
            "store.segment_size: must be at least max_message_bytes + 64KiB (4.1MiB), got 1MiB"
        );
        let mut c = Config::default();
        c.timer.max_delay = HumanDuration::from_secs(0);
        assert_eq!(
            c.validate().expect_err("zero delay").to_string(),
            "timer.max_delay: must be between 1s and 3653d, got 0s"
        );
    }

    #[test]
    fn config_round_trips_through_toml() {
        let mut c = Config::default();
        c.store.flush = FlushMode::Sync;
        c.max_message_bytes = ByteSize(1_000_001);
        let text = toml::to_string(&c).expect("serialize");
        assert_eq!(Config::from_profile_str(&text).expect("parse"), c);
    }

    #[test]
    fn args_parse_from_command_line() {
        use clap::Parser;
        let args = Args::try_parse_from([
            "chime",
            "--profile",
            "test",
            "--listen",
            "0.0.0.0:9000",
            "--data-dir",
            "/var/lib/chime",
        ])
        .expect("args");
        assert_eq!(args.profile.as_deref(), Some("test"));
        assert_eq!(args.listen.as_deref(), Some("0.0.0.0:9000"));
        assert_eq!(args.data_dir, Some(PathBuf::from("/var/lib/chime")));
        let c = load(&args, &[("CHIME_ALLOW_INSECURE", "true")]).expect("load");
        assert_eq!(c.listen, "0.0.0.0:9000");
    }
}
