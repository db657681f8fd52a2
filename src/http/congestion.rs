//! `GET /v1/timer/congestion`: how many scheduled messages fall due in each bucket of a window.
//!
//! Answered from the timer's congestion index (never a wheel scan), so it costs
//! O(buckets × log slots) at any pending count.

use std::collections::HashMap;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::AppState;

/// Most buckets one answer may hold (API.md).
pub const MAX_BUCKETS: i64 = 10_000;
/// Window when `to_ms` is absent: one hour from `from_ms`.
const DEFAULT_WINDOW_MS: i64 = 3_600_000;
const DEFAULT_BUCKET_MS: i64 = 60_000;

/// A validated window: `[from, to)` in buckets of `bucket` ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub from: i64,
    pub to: i64,
    pub bucket: i64,
}

impl Window {
    /// Reads `from_ms`, `to_ms` and `bucket_ms` (each optional; other parameters are ignored).
    pub fn parse(params: &HashMap<String, String>, now: i64) -> Result<Self, ApiError> {
        let int = |key: &str| -> Result<Option<i64>, ApiError> {
            params
                .get(key)
                .map(|v| {
                    v.trim()
                        .parse::<i64>()
                        .map_err(|_| ApiError::invalid(format!("{key} must be an integer, got {v:?}")))
                })
                .transpose()
        };
        let from = int("from_ms")?.unwrap_or(now);
        let to = match int("to_ms")? {
            Some(t) => t,
            None => from.checked_add(DEFAULT_WINDOW_MS).ok_or_else(|| ApiError::invalid("from_ms is out of range"))?,
        };
        let bucket = int("bucket_ms")?.unwrap_or(DEFAULT_BUCKET_MS);
        if bucket <= 0 {
            return Err(ApiError::invalid(format!("bucket_ms must be positive, got {bucket}")));
        }
        if to < from {
            return Err(ApiError::invalid(format!("inverted window: to_ms ({to}) is before from_ms ({from})")));
        }
        let buckets = (to as i128 - from as i128 + bucket as i128 - 1) / bucket as i128;
        if buckets > MAX_BUCKETS as i128 {
            return Err(ApiError::invalid(format!(
                "the window holds {buckets} buckets of {bucket} ms; at most {MAX_BUCKETS} are allowed"
            )));
        }
        Ok(Self { from, to, bucket })
    }
}

/// One bucket of the congestion window.
#[derive(Serialize, ToSchema)]
pub struct CongestionBucket {
    /// `from_ms + k × bucket_ms`.
    pub start_ms: i64,
    /// Scheduled messages due in `[start_ms, start_ms + bucket_ms)` (the last bucket is clipped
    /// at `to_ms`), exact to the millisecond of each `deliver_at_ms`.
    pub count: u64,
}

/// How many scheduled messages fall due in each bucket of a window.
#[derive(Serialize, ToSchema)]
pub struct Congestion {
    pub now_ms: i64,
    /// The wheel's read pointer: slots before it have been read.
    pub read_time_ms: i64,
    /// Scheduled messages not yet fired or cancelled, in any window.
    pub pending_total: i64,
    /// The window answered (the defaults filled in).
    pub from_ms: i64,
    pub to_ms: i64,
    pub bucket_ms: i64,
    /// Every bucket of the window, in order; empty ones have count 0.
    pub buckets: Vec<CongestionBucket>,
}

/// How many scheduled messages fall due in each bucket of the window `[from_ms, to_ms)`.
/// Cheap at any pending count: it does not scan the wheel.
#[utoipa::path(get, path = "/v1/timer/congestion", tag = "timer",
    params(
        ("from_ms" = Option<i64>, Query, description = "Window start (ms since the epoch). Default: now"),
        ("to_ms" = Option<i64>, Query, description = "Window end, at least from_ms. Default: from_ms + 1 h"),
        ("bucket_ms" = Option<i64>, Query, description = "Bucket width, > 0; at most 10,000 buckets. Default: 60000"),
    ),
    responses(
        (status = 200, body = Congestion),
        (status = 400, description = "INVALID_ARGUMENT: not an integer, an inverted window, bucket_ms <= 0 or over \
            10,000 buckets", body = ErrorBody),
    ))]
pub async fn congestion(
    State(state): State<AppState>,
    params: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = params.map_err(|e| ApiError::invalid(format!("bad query string: {e}")))?;
    let core = state.core()?;
    let w = Window::parse(&params, core.store.clock().now_ms())?;
    let view = core.timer.congestion(w.from, w.to, w.bucket);
    let buckets = view.buckets.iter().map(|b| CongestionBucket { start_ms: b.start_ms, count: b.count }).collect();
    Ok(Json(Congestion {
        now_ms: view.now_ms,
        read_time_ms: view.read_time_ms,
        pending_total: view.pending_total,
        from_ms: w.from,
        to_ms: w.to,
        bucket_ms: w.bucket,
        buckets,
    })
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(q: &[(&str, &str)]) -> Result<Window, String> {
        let params = q.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Window::parse(&params, 1_000).map_err(|e| e.message)
    }

    #[test]
    fn defaults_are_the_next_hour_by_minute() {
        assert_eq!(parse(&[]), Ok(Window { from: 1_000, to: 3_601_000, bucket: 60_000 }));
        assert_eq!(parse(&[("from_ms", "0")]), Ok(Window { from: 0, to: 3_600_000, bucket: 60_000 }));
    }

    #[test]
    fn bad_windows_are_refused_with_the_reason() {
        assert!(parse(&[("from_ms", "10"), ("to_ms", "5")]).unwrap_err().contains("inverted"));
        assert!(parse(&[("bucket_ms", "0")]).unwrap_err().contains("positive"));
        assert!(parse(&[("bucket_ms", "-5")]).unwrap_err().contains("positive"));
        assert!(parse(&[("from_ms", "x")]).unwrap_err().contains("integer"));
        assert!(parse(&[("from_ms", "0"), ("to_ms", "10001"), ("bucket_ms", "1")]).unwrap_err().contains("10000"));
        assert!(parse(&[("from_ms", &i64::MAX.to_string())]).unwrap_err().contains("range"));
        let extreme = parse(&[("from_ms", &i64::MIN.to_string()), ("to_ms", &i64::MAX.to_string())]);
        assert!(extreme.unwrap_err().contains("buckets"));
    }

    #[test]
    fn exactly_ten_thousand_buckets_is_allowed() {
        assert!(parse(&[("from_ms", "0"), ("to_ms", "10000"), ("bucket_ms", "1")]).is_ok());
        assert!(parse(&[("from_ms", "0"), ("to_ms", "9999999"), ("bucket_ms", "1000")]).is_ok());
    }
}
