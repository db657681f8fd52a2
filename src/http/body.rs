//! Request bodies: read with a size limit, parsed as JSON, errors in API.md's shape.
//!
//! An over-large body is answered 413 with the JSON error, after the rest of it has been read
//! and discarded (up to `DRAIN_LIMIT`), so the client sees the answer rather than a reset
//! connection; nothing beyond the limit is buffered.
//!
//! Every body has a deadline ([`deadline`], config `http.body_read_timeout`) counted from the
//! end of the request's headers, over the whole body rather than per chunk, so a client that
//! trickles a byte now and then cannot hold a handler and its buffer for ever. A body not
//! complete by then is answered 408 `REQUEST_TIMEOUT` and the connection is closed.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;

use super::error::{ApiError, Code};
use super::AppState;

/// The error a body past its deadline yields.
#[derive(Debug, thiserror::Error)]
#[error("request body not received within http.body_read_timeout ({0:?})")]
struct BodyTimedOut(Duration);

/// A body that fails once its deadline has passed.
struct DeadlineBody {
    inner: Body,
    timeout: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        match self.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(axum::Error::new(BodyTimedOut(self.timeout))))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Middleware: gives the request body its deadline (none for a body that is already complete).
pub async fn deadline(State(state): State<AppState>, req: Request, next: Next) -> Response {
    use http_body::Body as _;
    if req.body().is_end_stream() {
        return next.run(req).await;
    }
    let timeout = state.limits().body_read_timeout;
    let sleep = Box::pin(tokio::time::sleep(timeout));
    next.run(req.map(|inner| Body::new(DeadlineBody { inner, timeout, sleep }))).await
}

/// Most bytes read and discarded after a body passes its limit, before giving up on it.
const DRAIN_LIMIT: usize = 1 << 30;

/// Reads a whole body of at most `limit` bytes (413 `MESSAGE_TOO_LARGE` past it).
pub async fn read_limited(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    read_charged(body, limit, |_| Ok(())).await
}

/// [`read_limited`], calling `charge` with the bytes arrived so far before buffering each
/// piece. When `charge` refuses, the rest of the body is read and dropped (see [`discard`]) and
/// its error is the answer.
pub async fn read_charged(
    body: Body,
    limit: usize,
    mut charge: impl FnMut(u64) -> Result<(), ApiError>,
) -> Result<Bytes, ApiError> {
    let mut body = body;
    let mut buf = BytesMut::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| match timed_out(&e) {
            Some(t) => ApiError::new(Code::RequestTimeout, t.to_string()),
            None => ApiError::invalid(format!("cannot read the request body: {e}")),
        })?;
        let Ok(data) = frame.into_data() else { continue };
        seen = seen.saturating_add(data.len());
        if seen > limit {
            buf = BytesMut::new();
            if seen > DRAIN_LIMIT {
                break;
            }
            continue;
        }
        if let Err(refused) = charge(seen as u64) {
            drop(buf);
            discard(body).await;
            return Err(refused);
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

/// Reads `body` to its end (at most `DRAIN_LIMIT` bytes, within its deadline) and drops it,
/// buffering nothing: for a request answered without its body, so the client can read the
/// answer instead of meeting a reset connection. Errors only end the draining.
pub async fn discard(body: Body) {
    let mut body = body;
    let mut seen = 0usize;
    while let Some(Ok(frame)) = body.frame().await {
        seen = seen.saturating_add(frame.data_ref().map_or(0, |d| d.len()));
        if seen > DRAIN_LIMIT {
            break;
        }
    }
}

/// The deadline error in `e`'s chain (the body layers may each have wrapped it).
fn timed_out<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a BodyTimedOut> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<BodyTimedOut>() {
            return Some(t);
        }
        cur = err.source();
    }
    None
}

/// Reads a body of at most `limit` bytes ([`read_limited`]) and parses it ([`parse_json`]).
pub async fn read_json<T: DeserializeOwned + Default>(body: Body, limit: usize) -> Result<T, ApiError> {
    parse_json(&read_limited(body, limit).await?)
}

/// Parses a JSON object body; an empty body, or JSON `null`, parses as `T::default()` (the spec
/// lets an optional body be either). Anything but an object is refused ([`ObjectOnly`]).
pub fn parse_json<T: DeserializeOwned + Default>(bytes: &[u8]) -> Result<T, ApiError> {
    let text = bytes.trim_ascii();
    if text.is_empty() || text == b"null" {
        return Ok(T::default());
    }
    serde_json::from_slice::<ObjectOnly<T>>(bytes)
        .map(|o| o.0)
        .map_err(|e| ApiError::invalid(format!("invalid JSON body: {e}")))
}

/// `T` read from a JSON object only. serde's derived structs also accept an array of their
/// fields in order, which no client means: `[null, null]` would be a body with both fields
/// absent, a batch's element `["x"]` a message.
pub struct ObjectOnly<T>(pub T);

impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for ObjectOnly<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Object<T>(std::marker::PhantomData<T>);
        impl<'de, T: serde::Deserialize<'de>> serde::de::Visitor<'de> for Object<T> {
            type Value = T;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }
        d.deserialize_map(Object(std::marker::PhantomData)).map(ObjectOnly)
    }
}

#[cfg(test)]
mod tests {
    use super::{parse_json, ObjectOnly};

    #[test]
    fn object_only_refuses_an_array_of_fields() {
        let ok: Vec<ObjectOnly<In>> = serde_json::from_str(r#"[{"max": 1}, {}]"#).unwrap();
        assert_eq!(
            ok.into_iter().map(|o| o.0).collect::<Vec<_>>(),
            [In { max: Some(1), wait_ms: None }, In::default()]
        );
        let plain: Result<Vec<In>, _> = serde_json::from_str("[[1, 2]]");
        assert!(plain.is_ok(), "what serde does without it");
        for bad in ["[[1, 2]]", "[3]", r#"[{"max": 1}, null]"#, r#"[{"nope": 1}]"#] {
            assert!(serde_json::from_str::<Vec<ObjectOnly<In>>>(bad).is_err(), "{bad}");
        }
    }

    #[derive(serde::Deserialize, Default, Debug, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct In {
        max: Option<i64>,
        wait_ms: Option<i64>,
    }

    #[test]
    fn only_an_object_or_nothing_parses() {
        assert_eq!(parse_json::<In>(b"").unwrap(), In::default());
        assert_eq!(parse_json::<In>(b" null ").unwrap(), In::default());
        assert_eq!(parse_json::<In>(br#" {"max": 3}"#).unwrap(), In { max: Some(3), wait_ms: None });
        for bad in [&b"[null, null]"[..], b"[1, 2]", b"3", b"\"x\"", b"true", b"{", b"{\"other\": 1}"] {
            let e = parse_json::<In>(bad).unwrap_err();
            assert_eq!(e.code.status(), axum::http::StatusCode::BAD_REQUEST, "{}", String::from_utf8_lossy(bad));
        }
    }
}
