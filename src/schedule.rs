//! When a message should become visible: the four ways a client can say it, resolved against
//! the server clock.

/// RocketMQ's delay levels 1..=18: 1s 5s 10s 30s 1m 2m 3m 4m 5m 6m 7m 8m 9m 10m 20m 30m 1h 2h.
pub const DELAY_LEVELS_MS: [i64; 18] = [
    1_000, 5_000, 10_000, 30_000, 60_000, 120_000, 180_000, 240_000, 300_000, 360_000, 420_000, 480_000, 540_000,
    600_000, 1_200_000, 1_800_000, 3_600_000, 7_200_000,
];

/// The delay fields of a send, as given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DelaySpec {
    pub delay_ms: Option<i64>,
    pub deliver_at_ms: Option<i64>,
    pub deliver_at: Option<String>,
    pub delay_level: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("at most one of delay_ms, deliver_at_ms, deliver_at, delay_level may be given")]
    Ambiguous,
    #[error("{0}")]
    Invalid(String),
    #[error("deliver time {deliver_at_ms} is more than timer.max_delay ({limit}) after now")]
    OutOfRange { deliver_at_ms: i64, limit: String },
}

/// The resolved time: `None` for a normal message. A time at or before `now` is returned as is
/// (the caller delivers it at once).
pub fn resolve(spec: &DelaySpec, now_ms: i64, max_delay_ms: i64) -> Result<Option<i64>, ScheduleError> {
    let given =
        [spec.delay_ms.is_some(), spec.deliver_at_ms.is_some(), spec.deliver_at.is_some(), spec.delay_level.is_some()]
            .iter()
            .filter(|&&b| b)
            .count();
    if given > 1 {
        return Err(ScheduleError::Ambiguous);
    }
    let at = if let Some(d) = spec.delay_ms {
        if d < 0 {
            return Err(ScheduleError::Invalid(format!("delay_ms must be >= 0, got {d}")));
        }
        now_ms.saturating_add(d)
    } else if let Some(t) = spec.deliver_at_ms {
        t
    } else if let Some(s) = &spec.deliver_at {
        chrono::DateTime::parse_from_rfc3339(s)
            .map_err(|e| ScheduleError::Invalid(format!("deliver_at {s:?} is not an RFC 3339 timestamp: {e}")))?
            .timestamp_millis()
    } else if let Some(l) = spec.delay_level {
        let idx = usize::try_from(l)
            .ok()
            .filter(|&i| (1..=18).contains(&i))
            .ok_or_else(|| ScheduleError::Invalid(format!("delay_level must be 1..=18, got {l}")))?;
        now_ms.saturating_add(DELAY_LEVELS_MS[idx - 1])
    } else {
        return Ok(None);
    };
    if at > now_ms.saturating_add(max_delay_ms) {
        return Err(ScheduleError::OutOfRange {
            deliver_at_ms: at,
            limit: crate::config::HumanDuration::from_millis(max_delay_ms as u64).to_string(),
        });
    }
    Ok(Some(at))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000_000;
    const MAX: i64 = 365 * 86_400_000;

    fn r(spec: DelaySpec) -> Result<Option<i64>, ScheduleError> {
        resolve(&spec, NOW, MAX)
    }

    #[test]
    fn each_form_resolves() {
        assert_eq!(r(DelaySpec::default()), Ok(None));
        assert_eq!(r(DelaySpec { delay_ms: Some(0), ..Default::default() }), Ok(Some(NOW)));
        assert_eq!(r(DelaySpec { delay_ms: Some(1500), ..Default::default() }), Ok(Some(NOW + 1500)));
        assert_eq!(r(DelaySpec { deliver_at_ms: Some(5), ..Default::default() }), Ok(Some(5)));
        assert_eq!(
            r(DelaySpec { deliver_at: Some("2023-11-14T22:13:20.250Z".into()), ..Default::default() }),
            Ok(Some(1_700_000_000_250))
        );
        assert_eq!(
            r(DelaySpec { deliver_at: Some("2023-11-15T00:13:20+02:00".into()), ..Default::default() }),
            Ok(Some(1_700_000_000_000))
        );
        assert_eq!(r(DelaySpec { delay_level: Some(1), ..Default::default() }), Ok(Some(NOW + 1_000)));
        assert_eq!(r(DelaySpec { delay_level: Some(18), ..Default::default() }), Ok(Some(NOW + 7_200_000)));
    }

    #[test]
    fn bad_and_out_of_range() {
        assert_eq!(
            r(DelaySpec { delay_ms: Some(1), delay_level: Some(1), ..Default::default() }),
            Err(ScheduleError::Ambiguous)
        );
        assert!(matches!(r(DelaySpec { delay_ms: Some(-1), ..Default::default() }), Err(ScheduleError::Invalid(_))));
        for l in [0, 19, -1] {
            assert!(matches!(
                r(DelaySpec { delay_level: Some(l), ..Default::default() }),
                Err(ScheduleError::Invalid(_))
            ));
        }
        assert!(matches!(
            r(DelaySpec { deliver_at: Some("tomorrow".into()), ..Default::default() }),
            Err(ScheduleError::Invalid(_))
        ));
        assert_eq!(r(DelaySpec { delay_ms: Some(MAX), ..Default::default() }), Ok(Some(NOW + MAX)));
        let e = r(DelaySpec { delay_ms: Some(MAX + 1), ..Default::default() }).unwrap_err();
        assert!(e.to_string().contains("timer.max_delay (365d)"), "{e}");
        assert!(r(DelaySpec { delay_ms: Some(i64::MAX), ..Default::default() }).is_err());
    }
}
