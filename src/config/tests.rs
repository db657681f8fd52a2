//! The configuration's tests: layers, validation, the profiles.

use std::time::Duration;

use toml::{Table, Value};

use super::layers::*;
use super::validate::MAX_TOKEN_BYTES;
use super::*;

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
    assert_eq!(err.to_string(), r#"max_message_bytes: invalid size "4XB": expected a number with a unit like 4MiB"#);

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
    assert!(matches!(&err, ConfigError::Flag { flag, key, .. } if flag == "--listen" && key == "listen"), "{err:?}");
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
        "CHIME_STORE_RETENTION",
        "CHIME_STORE_RETENTION_BYTES",
        "CHIME_STORE_RETENTION_CHECK_INTERVAL",
        "CHIME_STORE_DISK_SOFT_LIMIT",
        "CHIME_STORE_DISK_HARD_LIMIT",
        "CHIME_DEDUP_WINDOW",
        "CHIME_TRANSACTION_CHECK_INTERVAL",
        "CHIME_TRANSACTION_CHECK_MAX",
        "CHIME_TRANSACTION_UNRESOLVED",
    ] {
        assert!(vars.contains(var), "{var}");
    }
    assert_eq!(vars.len(), 37);
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

/// Every range a profile file states in a key's comment, `(lo..=hi)`, is the one
/// `validate::RANGES` checks; the default profile states one for every key in the table it sets.
#[test]
fn profile_comments_state_the_validated_ranges() {
    use crate::config::validate::{Bound, RANGES};
    for (name, text) in BUILTIN_PROFILES {
        let mut section = String::new();
        let mut comment = String::new();
        let mut stated = 0;
        let mut missing = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if let Some(c) = line.strip_prefix('#') {
                comment.push_str(c);
                comment.push(' ');
                continue;
            }
            if let Some(sec) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = format!("{sec}.");
            } else if let Some((k, _)) = line.split_once('=') {
                let key = format!("{section}{}", k.trim());
                let bound = RANGES.iter().find(|(k, _)| *k == key).map(|(_, b)| *b);
                let range = comment.find("..=").map(|at| {
                    let lo = comment[..at].rsplit('(').next().unwrap().trim().to_string();
                    let hi = comment[at + 3..].split(')').next().unwrap().trim().to_string();
                    (lo, hi)
                });
                match (bound, range) {
                    (Some(b), Some((lo, hi))) => {
                        let parsed = match b {
                            Bound::Duration(..) => Bound::Duration(lo.parse().unwrap(), hi.parse().unwrap()),
                            Bound::Bytes(..) => Bound::Bytes(lo.parse().unwrap(), hi.parse().unwrap()),
                            Bound::Int(..) => Bound::Int(lo.parse().unwrap(), hi.parse().unwrap()),
                            Bound::Ratio(..) => Bound::Ratio(lo.parse().unwrap(), hi.parse().unwrap()),
                        };
                        assert_eq!(parsed, b, "profiles/{name}.toml: {key} says ({lo}..={hi})");
                        stated += 1;
                    }
                    (Some(_), None) if *name == "default" => missing.push(key),
                    _ => {}
                }
            }
            comment.clear();
        }
        assert!(missing.is_empty(), "profiles/{name}.toml states no range for {missing:?}");
        assert!(stated > 0, "profiles/{name}.toml states no range at all");
    }
}
