//! Tag expressions: `*` (everything) or `A || B || C` (any of these tags).

use crate::store::tag_hash;

pub const MAX_TAG_LEN: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagExpr {
    All,
    /// The tags, and their consume-queue hashes (for filtering without reading the log).
    Any(Vec<(String, u64)>),
}

impl TagExpr {
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s == "*" {
            return Ok(Self::All);
        }
        let mut tags = Vec::new();
        for part in s.split("||") {
            let t = part.trim();
            check_tag(t).map_err(|e| format!("tag expression {s:?}: {e}"))?;
            if !tags.iter().any(|(x, _)| x == t) {
                tags.push((t.to_string(), tag_hash(Some(t))));
            }
        }
        Ok(Self::Any(tags))
    }

    /// Could a message with this consume-queue tag hash match? (Hashes can collide: confirm
    /// with [`TagExpr::matches`].)
    pub fn may_match_hash(&self, h: u64) -> bool {
        match self {
            Self::All => true,
            Self::Any(tags) => h != 0 && tags.iter().any(|&(_, th)| th == h),
        }
    }

    pub fn matches(&self, tag: Option<&str>) -> bool {
        match (self, tag) {
            (Self::All, _) => true,
            (Self::Any(_), None) => false,
            (Self::Any(tags), Some(t)) => tags.iter().any(|(x, _)| x == t),
        }
    }
}

/// A tag is 1..=128 characters without `|`.
pub fn check_tag(t: &str) -> Result<(), String> {
    let n = t.chars().count();
    if n == 0 || n > MAX_TAG_LEN {
        return Err(format!("a tag must be 1..={MAX_TAG_LEN} characters, got {n}"));
    }
    if t.contains('|') {
        return Err(format!("tag {t:?} contains '|'"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_match() {
        assert_eq!(TagExpr::parse("*").unwrap(), TagExpr::All);
        assert_eq!(TagExpr::parse(" * ").unwrap(), TagExpr::All);
        let e = TagExpr::parse("A || B").unwrap();
        assert!(e.matches(Some("A")) && e.matches(Some("B")));
        assert!(!e.matches(Some("C")) && !e.matches(None));
        assert!(e.may_match_hash(tag_hash(Some("B"))));
        assert!(!e.may_match_hash(0));
        assert!(TagExpr::All.matches(None));
        for bad in ["", "A ||", "|| A", "A | B", "A ||| B", &"x".repeat(129)] {
            assert!(TagExpr::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(TagExpr::parse(&"x".repeat(128)).is_ok());
    }
}
