//! The configuration's layers: compiled-in defaults, then the profile (built in or a file),
//! then `CHIME_*` environment variables, then flags; each value remembers where it came from,
//! so an error names the variable or flag that set it.

use std::collections::{BTreeMap, HashMap};

use toml::{Table, Value};

use super::*;

/// The TOML text of `profile`: a built-in profile, or the file at that path.
pub(super) fn profile_text(profile: &str) -> Result<String, ConfigError> {
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

pub(super) fn parse_profile(profile: &str, text: &str) -> Result<Table, ConfigError> {
    text.parse::<Table>()
        .map_err(|e| ConfigError::Syntax { profile: profile.to_owned(), message: e.to_string().trim_end().to_owned() })
}

/// `Config::default()` as a TOML table: the base layer, and the list of keys
/// (and their types) that the environment may set.
pub(super) fn defaults_table() -> Result<Table, ConfigError> {
    Table::try_from(Config::default()).map_err(|e| ConfigError::Internal { message: e.to_string() })
}

/// Overlays `top` on `base`: tables present in both are merged key by key,
/// anything else in `top` replaces what `base` has.
pub(super) fn merge(base: &mut Table, top: Table) {
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
pub(super) fn leaves<'a>(table: &'a Table, prefix: &str, out: &mut Vec<(String, &'a Value)>) {
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
pub(super) fn env_var_name(key: &str) -> String {
    format!("{ENV_PREFIX}{}", key.replace('.', "_").to_ascii_uppercase())
}

/// Sets the dotted `key` in `table`. If the profile replaced one of the
/// enclosing tables by a non-table value, nothing is set: deserialization
/// reports that value's type error instead.
pub(super) fn set_key(table: &mut Table, key: &str, value: Value) {
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
pub(super) fn env_value(default: &Value, raw: &str) -> Result<Value, String> {
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

pub(super) fn apply_env(
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

pub(super) fn apply_args(
    table: &mut Table,
    args: &Args,
    origins: &mut HashMap<String, Origin>,
) -> Result<(), ConfigError> {
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
pub(super) fn from_table(table: Table, defaults: &Table, profile: &str) -> Result<Config, ConfigError> {
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
pub(super) fn requote(message: &str) -> String {
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
pub(super) fn unknown_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("unknown field `")?;
    rest.split_once('`').map(|(name, _)| name)
}

/// The (sorted) keys of the sub-table of `table` at `path`.
pub(super) fn keys_at(table: &Table, path: &[String]) -> Vec<String> {
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
pub(super) fn attribute(err: ConfigError, origins: &HashMap<String, Origin>) -> ConfigError {
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
