//! Topic and group names: `^[A-Za-z0-9_%|-]{1,127}$`, not starting with `rmq_sys_` or `__`.
//!
//! A valid name contains no `/`, `.` or NUL, so it is always a safe single path component under
//! the data directory (it names the consume-queue directory of a topic).

/// Prefixes reserved for the system (the timer's `rmq_sys_wheel_timer` topic, internal groups).
pub const RESERVED_PREFIXES: [&str; 2] = ["rmq_sys_", "__"];
pub const MAX_NAME_LEN: usize = 127;

/// Why a name is not acceptable; the message is shown to the client.
pub fn check_name(kind: &str, name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(format!("{kind} name must be 1..={MAX_NAME_LEN} characters, got {}", name.len()));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '%' | '|' | '-'))) {
        return Err(format!("{kind} name {name:?} has the character {c:?}; allowed: A-Z a-z 0-9 _ % | -"));
    }
    if let Some(p) = RESERVED_PREFIXES.iter().find(|p| name.starts_with(*p)) {
        return Err(format!("{kind} name {name:?} is reserved (prefix {p:?})"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_rules_at_their_boundaries() {
        assert!(check_name("topic", "a").is_ok());
        assert!(check_name("topic", "Az09_%|-").is_ok());
        assert!(check_name("topic", &"x".repeat(127)).is_ok());
        assert!(check_name("topic", &"x".repeat(128)).is_err());
        assert!(check_name("topic", "").is_err());
        for bad in ["a/b", "..", ".", "a.b", "a b", "é", "a\0", "rmq_sys_x", "__x"] {
            assert!(check_name("topic", bad).is_err(), "{bad:?} accepted");
        }
        assert!(check_name("topic", "rmq_sy").is_ok());
        assert!(check_name("topic", "_x").is_ok());
    }
}
