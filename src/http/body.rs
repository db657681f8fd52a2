//! Request bodies: read with a size limit, parsed as JSON, errors in API.md's shape.
//!
//! An over-large body is answered 413 with the JSON error, after the rest of it has been read
//! and discarded (up to `DRAIN_LIMIT`), so the client sees the answer rather than a reset
//! connection; nothing beyond the limit is buffered.

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;

use super::error::{ApiError, Code};

/// Most bytes read and discarded after a body passes its limit, before giving up on it.
const DRAIN_LIMIT: usize = 1 << 30;

pub async fn read_limited(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let mut body = body;
    let mut buf = BytesMut::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ApiError::invalid(format!("cannot read the request body: {e}")))?;
        let Ok(data) = frame.into_data() else { continue };
        seen = seen.saturating_add(data.len());
        if seen > limit {
            buf = BytesMut::new();
            if seen > DRAIN_LIMIT {
                break;
            }
            continue;
        }
        buf.extend_from_slice(&data);
    }
    if seen > limit {
        return Err(ApiError::new(
            Code::MessageTooLarge,
            format!("request body exceeds max_request_bytes ({limit} bytes)"),
        ));
    }
    Ok(buf.freeze())
}

/// Parses a JSON body; an empty body parses as `T::default()`.
pub fn parse_json<T: DeserializeOwned + Default>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(T::default());
    }
    serde_json::from_slice(bytes).map_err(|e| ApiError::invalid(format!("invalid JSON body: {e}")))
}
