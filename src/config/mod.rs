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

mod layers;
mod schema;
#[cfg(test)]
mod tests;
pub mod units;
pub mod validate;

use layers::*;
pub use schema::*;
pub use units::{ByteSize, HumanDuration};

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

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
}

/// The process environment as `(name, value)` pairs for [`Config::load`].
/// Unlike `std::env::vars()` it does not panic on a variable that is not
/// valid Unicode; such variables are skipped.
pub fn process_env() -> Vec<(String, String)> {
    std::env::vars_os()
        .filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?)))
        .collect()
}
