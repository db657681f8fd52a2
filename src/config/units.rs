//! Human-friendly units used in configuration values.
//!
//! * [`ByteSize`] — a number of bytes, written either as a plain integer
//!   (`4194304`) or as a string with a unit (`"4MiB"`, `"1 GiB"`, `"64B"`).
//! * [`HumanDuration`] — a span of time, written either as a string with a
//!   unit (`"500ms"`, `"1s"`, `"365d"`, `"2h 30m"`) or as a plain integer
//!   number of **milliseconds**.
//!
//! Both serialize back to a compact string that parses to exactly the same
//! value (`"4MiB"`, `"200ms"`, `"365d"`), so a dumped configuration can be read
//! back unchanged.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const TIB: u64 = 1 << 40;
const KB: u64 = 1_000;
const MB: u64 = 1_000_000;
const GB: u64 = 1_000_000_000;
const TB: u64 = 1_000_000_000_000;

/// Units accepted by [`ByteSize`], matched case-insensitively. Binary units
/// (`KiB` = 1024) and decimal units (`KB` = 1000) are both accepted; `B` (or
/// no unit at all) means bytes.
const SIZE_UNITS: &[(&str, u64)] =
    &[("b", 1), ("kib", KIB), ("mib", MIB), ("gib", GIB), ("tib", TIB), ("kb", KB), ("mb", MB), ("gb", GB), ("tb", TB)];

/// Units tried, largest first, when writing a size back as a string.
/// Binary units are preferred; decimal ones are used only when exact.
const SIZE_FORMAT_UNITS: &[(&str, u64)] =
    &[("TiB", TIB), ("GiB", GIB), ("MiB", MIB), ("KiB", KIB), ("TB", TB), ("GB", GB), ("MB", MB), ("KB", KB)];

/// A size in bytes.
///
/// Deserializes from an integer (bytes) or a string such as `"4MiB"`,
/// `"1 GiB"`, `"512KiB"`, `"1.5GiB"`, `"64B"`, `"10MB"` (decimal) or
/// `"1048576"` (bytes). Fractions are rounded down to a whole byte.
///
/// Serializes as the exact string form (`"4MiB"`, `"4160KiB"`, `"1000B"`).
/// [`Display`](fmt::Display) is meant for people and may round to one
/// decimal (`"4.1MiB"`); use [`ByteSize::to_exact_string`] for the lossless
/// form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// `n` bytes.
    pub const fn b(n: u64) -> Self {
        Self(n)
    }

    /// `n` KiB (`n * 1024` bytes).
    pub const fn kib(n: u64) -> Self {
        Self(n * KIB)
    }

    /// `n` MiB (`n * 1024^2` bytes).
    pub const fn mib(n: u64) -> Self {
        Self(n * MIB)
    }

    /// `n` GiB (`n * 1024^3` bytes).
    pub const fn gib(n: u64) -> Self {
        Self(n * GIB)
    }

    /// The number of bytes.
    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// The lossless string form, e.g. `"4MiB"`, `"4160KiB"`, `"1GB"`, `"1000B"`:
    /// the largest unit that divides the value exactly.
    pub fn to_exact_string(self) -> String {
        if self.0 == 0 {
            return "0B".to_owned();
        }
        for &(name, factor) in SIZE_FORMAT_UNITS {
            if self.0.is_multiple_of(factor) {
                return format!("{}{name}", self.0 / factor);
            }
        }
        format!("{}B", self.0)
    }
}

impl fmt::Display for ByteSize {
    /// Human form: exact when the value is a whole number of its largest
    /// binary unit (`"4MiB"`, `"64B"`), otherwise rounded to one decimal
    /// (`"4.1MiB"`) unless that would look whole (then exact: `"4194305B"`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        let (name, factor) = match n {
            _ if n >= TIB => ("TiB", TIB),
            _ if n >= GIB => ("GiB", GIB),
            _ if n >= MIB => ("MiB", MIB),
            _ if n >= KIB => ("KiB", KIB),
            _ => return write!(f, "{n}B"),
        };
        if n.is_multiple_of(factor) {
            return write!(f, "{}{name}", n / factor);
        }
        // Precision loss is fine: this is only for people to read. But a
        // value that would look whole ("4.0MiB") is shown exactly, so that it
        // cannot be mistaken for its neighbour.
        let approx = format!("{:.1}", n as f64 / factor as f64);
        if approx.ends_with(".0") {
            f.write_str(&self.to_exact_string())
        } else {
            write!(f, "{approx}{name}")
        }
    }
}

/// Why a string is not a valid [`ByteSize`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseSizeError {
    input: String,
    too_large: bool,
}

impl fmt::Display for ParseSizeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.too_large {
            write!(f, "invalid size {:?}: too large (at most {} bytes)", self.input, u64::MAX)
        } else {
            write!(f, "invalid size {:?}: expected a number with a unit like 4MiB", self.input)
        }
    }
}

impl std::error::Error for ParseSizeError {}

impl FromStr for ByteSize {
    type Err = ParseSizeError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let bad = |too_large| ParseSizeError { input: input.to_owned(), too_large };
        let s = input.trim();
        let number_len = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
        let (number, unit) = s.split_at(number_len);
        let unit = unit.trim_start();

        let (int_part, frac_part) = match number.split_once('.') {
            Some((i, f)) => (i, f),
            None => (number, ""),
        };
        let all_digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
        if int_part.is_empty()
            || !all_digits(int_part)
            || !all_digits(frac_part)
            || (number.contains('.') && frac_part.is_empty())
        {
            return Err(bad(false));
        }
        // More fractional digits than this cannot change the result for
        // any supported unit, and would overflow the arithmetic below.
        if frac_part.len() > 20 {
            return Err(bad(false));
        }

        let factor = if unit.is_empty() {
            1
        } else {
            SIZE_UNITS
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(unit))
                .map(|&(_, factor)| factor)
                .ok_or_else(|| bad(false))?
        };

        let int: u128 = int_part.parse().map_err(|_| bad(true))?;
        let mut total = int.checked_mul(u128::from(factor)).ok_or_else(|| bad(true))?;
        if !frac_part.is_empty() {
            let frac: u128 = frac_part.parse().map_err(|_| bad(false))?;
            let scale = 10u128.pow(frac_part.len() as u32);
            total += frac * u128::from(factor) / scale;
        }
        u64::try_from(total).map(ByteSize).map_err(|_| bad(true))
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_exact_string())
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SizeVisitor;

        impl Visitor<'_> for SizeVisitor {
            type Value = ByteSize;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"a size: an integer number of bytes or a string like "4MiB""#)
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v).map(ByteSize).map_err(|_| E::custom(format!("invalid size {v}: must not be negative")))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                v.parse().map_err(E::custom)
            }
        }

        deserializer.deserialize_any(SizeVisitor)
    }
}

/// A span of time.
///
/// Deserializes from a string in [`humantime`] syntax — `"500ms"`, `"1s"`,
/// `"90s"`, `"2h 30m"`, `"365d"`, `"365days"`, `"1w"`, `"10y"` (a year is
/// 365.25 days, a month 30.44 days) — or from an integer number of
/// **milliseconds**. A string needs a unit: `"200"` is rejected, write
/// `"200ms"`.
///
/// Serializes (and displays) as a compact string in the same syntax that
/// parses back to exactly the same value: the largest single unit that
/// divides it (`"365d"`, `"36h"`, `"200ms"`, `"1500ms"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    /// `ms` milliseconds.
    pub const fn from_millis(ms: u64) -> Self {
        Self(Duration::from_millis(ms))
    }

    /// `s` seconds.
    pub const fn from_secs(s: u64) -> Self {
        Self(Duration::from_secs(s))
    }

    /// `d` days of 24 hours.
    pub const fn from_days(d: u64) -> Self {
        Self(Duration::from_secs(d * 86_400))
    }

    /// The wrapped [`Duration`].
    pub const fn as_duration(self) -> Duration {
        self.0
    }
}

impl From<Duration> for HumanDuration {
    fn from(d: Duration) -> Self {
        Self(d)
    }
}

impl From<HumanDuration> for Duration {
    fn from(d: HumanDuration) -> Self {
        d.0
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        if d.is_zero() {
            return f.write_str("0s");
        }
        let secs = d.as_secs();
        if d.subsec_nanos() == 0 {
            for (name, unit) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
                if secs.is_multiple_of(unit) {
                    return write!(f, "{}{name}", secs / unit);
                }
            }
            return write!(f, "{secs}s");
        }
        let nanos = d.as_nanos();
        for (name, unit) in [("ms", 1_000_000u128), ("us", 1_000), ("ns", 1)] {
            if nanos.is_multiple_of(unit) {
                // humantime parses a span's number as u64; beyond that fall
                // back to its own multi-unit format, which also round-trips.
                if nanos / unit <= u128::from(u64::MAX) {
                    return write!(f, "{}{name}", nanos / unit);
                }
                break;
            }
        }
        write!(f, "{}", humantime::format_duration(d))
    }
}

/// Why a string is not a valid [`HumanDuration`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseDurationError {
    input: String,
    reason: String,
}

impl fmt::Display for ParseDurationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid duration {:?}: expected a number with a unit like 500ms, 1s or 365d ({})",
            self.input, self.reason
        )
    }
}

impl std::error::Error for ParseDurationError {}

impl FromStr for HumanDuration {
    type Err = ParseDurationError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        humantime::parse_duration(input.trim())
            .map(HumanDuration)
            .map_err(|e| ParseDurationError { input: input.to_owned(), reason: e.to_string() })
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurationVisitor;

        impl Visitor<'_> for DurationVisitor {
            type Value = HumanDuration;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    r#"a duration: a string like "500ms", "1s" or "365d", or an integer number of milliseconds"#,
                )
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<HumanDuration, E> {
                Ok(HumanDuration::from_millis(v))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<HumanDuration, E> {
                u64::try_from(v)
                    .map(HumanDuration::from_millis)
                    .map_err(|_| E::custom(format!("invalid duration {v}: must not be negative")))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<HumanDuration, E> {
                v.parse().map_err(E::custom)
            }
        }

        deserializer.deserialize_any(DurationVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn size(s: &str) -> Result<u64, String> {
        s.parse::<ByteSize>().map(|b| b.0).map_err(|e| e.to_string())
    }

    #[test]
    fn size_parses_units() {
        assert_eq!(size("64B"), Ok(64));
        assert_eq!(size("64"), Ok(64));
        assert_eq!(size("0"), Ok(0));
        assert_eq!(size("512KiB"), Ok(512 * 1024));
        assert_eq!(size("4MiB"), Ok(4 << 20));
        assert_eq!(size("1GiB"), Ok(1 << 30));
        assert_eq!(size("1 GiB"), Ok(1 << 30));
        assert_eq!(size("  2TiB "), Ok(2 << 40));
        assert_eq!(size("4mib"), Ok(4 << 20));
        assert_eq!(size("10KB"), Ok(10_000));
        assert_eq!(size("10MB"), Ok(10_000_000));
        assert_eq!(size("1GB"), Ok(1_000_000_000));
        assert_eq!(size("1TB"), Ok(1_000_000_000_000));
        assert_eq!(size("1.5GiB"), Ok(3 << 29));
        assert_eq!(size("0.5KiB"), Ok(512));
        assert_eq!(size("18446744073709551615"), Ok(u64::MAX));
    }

    #[test]
    fn size_rejects_garbage() {
        assert_eq!(size("4XB"), Err(r#"invalid size "4XB": expected a number with a unit like 4MiB"#.to_owned()));
        for bad in ["", "MiB", "4 M", "4K", "-4MiB", "4MiB extra", "1.2.3MiB", "1.MiB", ".5MiB", "4 MiB B", "four MiB"]
        {
            let err = size(bad).expect_err(bad);
            assert!(err.contains("expected a number with a unit"), "{bad}: {err}");
        }
        let err = size("16EiB").expect_err("EiB is not accepted");
        assert!(err.contains("expected a number"), "{err}");
        let err = size("17000000TiB").expect_err("overflow");
        assert!(err.contains("too large"), "{err}");
        let err = size("99999999999999999999999999999999999999999999").expect_err("overflow");
        assert!(err.contains("too large"), "{err}");
    }

    #[test]
    fn size_formats() {
        assert_eq!(ByteSize::mib(4).to_exact_string(), "4MiB");
        assert_eq!(ByteSize(0).to_exact_string(), "0B");
        assert_eq!(ByteSize(1000).to_exact_string(), "1KB");
        assert_eq!(ByteSize(1001).to_exact_string(), "1001B");
        assert_eq!(ByteSize(1_000_000_000).to_exact_string(), "1GB");
        assert_eq!(ByteSize(4 * MIB + 64 * KIB).to_exact_string(), "4160KiB");
        assert_eq!(ByteSize(4 * MIB + 64 * KIB).to_string(), "4.1MiB");
        assert_eq!(ByteSize::gib(1).to_string(), "1GiB");
        assert_eq!(ByteSize(64).to_string(), "64B");
        assert_eq!(ByteSize(1536).to_string(), "1.5KiB");
        assert_eq!(ByteSize(4 * MIB + 1).to_string(), "4194305B");
        assert_eq!(ByteSize(4 * MIB + 4 * KIB).to_string(), "4100KiB");
        // The exact form always parses back to the same value.
        for n in [0, 1, 1000, 1024, 1536, 4 * MIB + 64 * KIB, GIB, TB, u64::MAX] {
            let s = ByteSize(n).to_exact_string();
            assert_eq!(s.parse::<ByteSize>(), Ok(ByteSize(n)), "{s}");
        }
    }

    #[derive(Debug, Deserialize, Serialize, PartialEq)]
    struct Holder {
        size: ByteSize,
        time: HumanDuration,
    }

    fn holder(text: &str) -> Result<Holder, String> {
        toml::from_str(text).map_err(|e| e.message().to_owned())
    }

    #[test]
    fn serde_round_trip() {
        let h = holder("size = 1048576\ntime = 250").expect("integers");
        assert_eq!(h.size, ByteSize::mib(1));
        assert_eq!(h.time, HumanDuration::from_millis(250));

        let h = holder("size = \"1 GiB\"\ntime = \"365days\"").expect("strings");
        assert_eq!(h.size, ByteSize::gib(1));
        assert_eq!(h.time, HumanDuration::from_days(365));

        let text = toml::to_string(&h).expect("serialize");
        assert_eq!(text, "size = \"1GiB\"\ntime = \"365d\"\n");
        assert_eq!(holder(&text), Ok(h));
    }

    #[test]
    fn serde_rejects_bad_values() {
        let err = holder("size = \"4XB\"\ntime = \"1s\"").expect_err("bad size");
        assert!(err.contains(r#"invalid size "4XB""#), "{err}");
        let err = holder("size = -1\ntime = \"1s\"").expect_err("negative size");
        assert!(err.contains("must not be negative"), "{err}");
        let err = holder("size = 1.5\ntime = \"1s\"").expect_err("float size");
        assert!(err.contains("an integer number of bytes"), "{err}");
        let err = holder("size = 1\ntime = \"soon\"").expect_err("bad duration");
        assert!(err.contains(r#"invalid duration "soon""#), "{err}");
        let err = holder("size = 1\ntime = -5").expect_err("negative duration");
        assert!(err.contains("must not be negative"), "{err}");
        let err = holder("size = 1\ntime = true").expect_err("bool duration");
        assert!(err.contains("a duration"), "{err}");
    }

    fn dur(s: &str) -> Result<Duration, String> {
        s.parse::<HumanDuration>().map(|d| d.0).map_err(|e| e.to_string())
    }

    #[test]
    fn duration_parses() {
        assert_eq!(dur("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(dur("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(dur("365d"), Ok(Duration::from_secs(365 * 86_400)));
        assert_eq!(dur("365days"), Ok(Duration::from_secs(365 * 86_400)));
        assert_eq!(dur("3650d"), Ok(Duration::from_secs(3650 * 86_400)));
        assert_eq!(dur("2h 30m"), Ok(Duration::from_secs(9_000)));
        assert_eq!(dur(" 1w "), Ok(Duration::from_secs(7 * 86_400)));
        // humantime's year is 365.25 days, so 10y is a little over 3650d.
        assert_eq!(dur("10y"), Ok(Duration::from_secs(36_525 * 8_640)));
    }

    #[test]
    fn duration_rejects_garbage() {
        for bad in ["", "200", "1 parsec", "-1s", "ms", "1.5.5s", "soon"] {
            let err = dur(bad).expect_err(bad);
            assert!(
                err.starts_with(&format!("invalid duration {bad:?}: expected a number with a unit")),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn duration_formats_compactly_and_round_trips() {
        let cases = [
            (Duration::ZERO, "0s"),
            (Duration::from_millis(200), "200ms"),
            (Duration::from_millis(1_500), "1500ms"),
            (Duration::from_secs(1), "1s"),
            (Duration::from_secs(90), "90s"),
            (Duration::from_secs(120), "2m"),
            (Duration::from_secs(36 * 3_600), "36h"),
            (Duration::from_secs(365 * 86_400), "365d"),
            (Duration::from_micros(1_001), "1001us"),
            (Duration::from_nanos(7), "7ns"),
        ];
        for (d, s) in cases {
            assert_eq!(HumanDuration(d).to_string(), s);
            assert_eq!(dur(s), Ok(d), "{s}");
        }
        for d in [
            Duration::from_secs(36_525 * 8_640),
            Duration::new(u64::MAX / 1_000, 1),
            Duration::new(12_345, 678_901_234),
        ] {
            let s = HumanDuration(d).to_string();
            assert_eq!(dur(&s), Ok(d), "{s}");
        }
    }
}
