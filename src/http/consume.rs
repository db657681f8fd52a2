//! Consumer groups over HTTP: `POST .../groups/{group}/receive` (with long poll) and `.../ack`.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::body::{parse_json, read_json, read_limited};
use super::error::{ApiError, ErrorBody};
use super::path::GroupPath;
use super::AppState;
use crate::group::{Batch, Delivery, TagExpr};

const MAX_MESSAGES: i64 = 1000;
const MAX_WAIT_MS: i64 = 30_000;
/// `max_bytes` of a receive: 1 MiB..=64 MiB, default 8 MiB (API.md).
const MIN_MAX_BYTES: i64 = 1 << 20;
const MAX_MAX_BYTES: i64 = 64 << 20;
const DEFAULT_MAX_BYTES: i64 = 8 << 20;
const MIN_INVISIBLE_MS: i64 = 1_000;
const MAX_INVISIBLE_MS: i64 = 43_200_000;
/// Most receipt handles in one ack.
/// Receipt handles per ack, nack or extend.
const MAX_HANDLES: usize = 10_000;

/// Body of a receive (every field optional; the body may be empty).
#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReceiveIn {
    /// Most messages to return. Default: 32
    #[schema(minimum = 1, maximum = 1000)]
    max_messages: Option<i64>,
    /// Long poll: answer as soon as a message is visible, or empty when this ends. Default: 0
    #[schema(minimum = 0, maximum = 30000)]
    wait_ms: Option<i64>,
    /// How long received messages stay invisible to the group unless acked. Default: 30000
    #[schema(minimum = 1000, maximum = 43200000)]
    invisible_ms: Option<i64>,
    /// Tag expression: `*` or `A || B`. Default: `*`
    tag: Option<String>,
    /// Most payload bytes (bodies, keys, properties) in the answer; it always holds at least
    /// one message. Default: 8388608 (8 MiB)
    #[schema(minimum = 1048576, maximum = 67108864)]
    max_bytes: Option<i64>,
}

/// A received message. Exactly one of `body` and `body_base64`, in the form it was sent.
#[derive(Serialize, ToSchema)]
pub(crate) struct MessageOut<'a> {
    #[schema(pattern = "^[0-9A-F]{24}$")]
    message_id: String,
    topic: &'a str,
    /// Null when none was sent.
    #[schema(required = true)]
    tag: Option<&'a str>,
    keys: Vec<&'a str>,
    #[schema(value_type = BTreeMap<String, String>)]
    properties: BTreeMap<&'a str, &'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    body: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, content_encoding = "base64")]
    body_base64: Option<String>,
    born_at_ms: i64,
    /// The requested delivery time.
    deliver_at_ms: i64,
    /// When it became visible to consumers (never before `deliver_at_ms`).
    visible_at_ms: i64,
    /// 1 on first delivery, +1 on each redelivery.
    #[schema(minimum = 1)]
    delivery_attempt: u32,
    /// Acks this delivery; valid until the message is redelivered.
    receipt_handle: &'a str,
    /// The ordering key it was sent with (null if none).
    #[schema(required = true)]
    message_group: Option<&'a str>,
    /// Null, or for a message in a dead letter topic: where it came from.
    #[schema(required = true)]
    dead_letter: Option<DeadLetterOut<'a>>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct DeadLetterOut<'a> {
    topic: &'a str,
    group: &'a str,
    delivery_attempts: u32,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct ReceiveOut<'a> {
    messages: Vec<MessageOut<'a>>,
}

pub(crate) fn in_range(name: &str, v: Option<i64>, default: i64, lo: i64, hi: i64) -> Result<i64, ApiError> {
    let v = v.unwrap_or(default);
    if !(lo..=hi).contains(&v) {
        return Err(ApiError::invalid(format!("{name} must be {lo}..={hi}, got {v}")));
    }
    Ok(v)
}

/// Receives messages for a consumer group (at least once; ack within `invisible_ms`).
#[utoipa::path(post, path = "/v1/topics/{topic}/groups/{group}/receive", tag = "consumers",
    params(
        ("topic" = String, Path, description = "Topic name (an unknown topic answers an empty list)", pattern = r"^[A-Za-z0-9_%|-]{1,127}$"),
        ("group" = String, Path, description = "Consumer group name", pattern = r"^[A-Za-z0-9_%|-]{1,127}$"),
    ),
    request_body(content = Option<ReceiveIn>, content_type = "application/json"),
    responses(
        (status = 200, body = ReceiveOut),
        (status = 400, description = "INVALID_TOPIC or INVALID_ARGUMENT", body = ErrorBody),
        (status = 403, description = "LIMIT_EXCEEDED: a new group past limits.max_groups_per_topic", body = ErrorBody),
    ))]
pub async fn receive(
    State(state): State<AppState>,
    GroupPath { topic: topic_name, group }: GroupPath,
    body: Body,
) -> Result<Response, ApiError> {
    let core = state.core()?;
    let bytes = read_limited(body, 64 * 1024).await?;
    let req: ReceiveIn = parse_json(&bytes)?;
    let max = in_range("max_messages", req.max_messages, 32, 1, MAX_MESSAGES)? as usize;
    let wait_ms = in_range("wait_ms", req.wait_ms, 0, 0, MAX_WAIT_MS)?;
    let invisible_ms = in_range("invisible_ms", req.invisible_ms, 30_000, MIN_INVISIBLE_MS, MAX_INVISIBLE_MS)?;
    let expr = TagExpr::parse(req.tag.as_deref().unwrap_or("*")).map_err(ApiError::invalid)?;
    let max_bytes = in_range("max_bytes", req.max_bytes, DEFAULT_MAX_BYTES, MIN_MAX_BYTES, MAX_MAX_BYTES)? as usize;

    let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_ms as u64);
    // A receive does not create the topic; it waits for a send to (then for its message).
    let topic = loop {
        let created = core.store.topics().created();
        tokio::pin!(created);
        created.as_mut().enable();
        if let Some(t) = core.store.topics().get(&topic_name) {
            break t;
        }
        tokio::select! {
            _ = &mut created => {}
            _ = tokio::time::sleep_until(deadline) => return Ok(render(&topic_name, &[])),
            _ = state.shutting_down() => return Ok(render(&topic_name, &[])),
        }
    };
    loop {
        // Register for wake-ups before looking, so an append in between is not missed.
        let appended = topic.appended.notified();
        tokio::pin!(appended);
        appended.as_mut().enable();
        // Delayed redeliveries fire into the group's retry topic: a long poll wakes for them too.
        let retry = core.store.topics().get(&crate::group::config::retry_topic(&topic.name, &group));
        let retried = retry.as_ref().map(|r| r.appended.notified());
        tokio::pin!(retried);
        if let Some(n) = retried.as_mut().as_pin_mut() {
            n.enable();
        }
        let got = core.consumers.receive(&group, &topic, Batch { max, max_bytes }, invisible_ms, &expr).await?;
        let now = tokio::time::Instant::now();
        if !got.messages.is_empty() || now >= deadline {
            return Ok(render(&topic.name, &got.messages));
        }
        // Sleep until a message arrives, an in-flight one becomes visible again, or the wait ends.
        let mut wake = deadline;
        if got.more {
            wake = now; // it stopped reading early: read on at once
        }
        if let Some(at) = got.wake_at_ms {
            let in_ms = (at - core.store.clock().now_ms()).max(1) as u64;
            wake = wake.min(now + Duration::from_millis(in_ms));
        }
        tokio::select! {
            _ = &mut appended => {}
            _ = async {
                match retried.as_mut().as_pin_mut() {
                    Some(n) => n.await,
                    None => std::future::pending().await,
                }
            } => {}
            _ = tokio::time::sleep_until(wake) => {}
            _ = state.shutting_down() => return Ok(render(&topic.name, &[])),
        }
    }
}

/// The answer of a receive on `topic` (a redelivery from the group's retry topic is shown as
/// the topic's).
fn render(topic: &str, deliveries: &[Delivery]) -> Response {
    let mut out = Vec::with_capacity(deliveries.len());
    for d in deliveries {
        let m = crate::service::deliver(&d.record.record(), d.log_offset);
        let (body, body_base64) = if m.binary {
            (None, Some(base64::engine::general_purpose::STANDARD.encode(m.body)))
        } else {
            // Stored from a JSON string, so valid UTF-8; fall back to base64 if not.
            match std::str::from_utf8(m.body) {
                Ok(s) => (Some(s), None),
                Err(_) => (None, Some(base64::engine::general_purpose::STANDARD.encode(m.body))),
            }
        };
        out.push(MessageOut {
            message_id: m.id,
            topic,
            tag: m.tag,
            keys: m.keys,
            properties: m.properties.into_iter().collect(),
            body,
            body_base64,
            born_at_ms: m.born_ms,
            deliver_at_ms: m.deliver_at_ms,
            // Not the record's store time: a fired message stored ahead of its time became
            // visible when it was published (`crate::store::staged`).
            visible_at_ms: d.visible_at_ms,
            delivery_attempt: d.attempt,
            receipt_handle: &d.receipt_handle,
            message_group: m.message_group,
            dead_letter: m.dead_letter.map(|x| DeadLetterOut {
                topic: x.topic,
                group: x.group,
                delivery_attempts: x.delivery_attempts,
            }),
        });
    }
    Json(ReceiveOut { messages: out }).into_response()
}

/// Bytes of a body that lists receipt handles (ack, nack, extend).
pub(crate) const HANDLES_BODY_LIMIT: usize = 4 * 1024 * 1024;

/// The `receipt_handles` of an ack, nack or extend body: required, at most [`MAX_HANDLES`].
pub(crate) fn receipt_handles(h: Option<Vec<String>>) -> Result<Vec<String>, ApiError> {
    let h = h.ok_or_else(|| ApiError::invalid("receipt_handles is required"))?;
    if h.len() > MAX_HANDLES {
        return Err(ApiError::invalid(format!("at most {MAX_HANDLES} receipt handles per call, got {}", h.len())));
    }
    Ok(h)
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AckIn {
    /// Receipt handles from receives of this group: at most 10,000.
    #[schema(required = true, max_items = 10000)]
    receipt_handles: Option<Vec<String>>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct AckOut {
    acked: usize,
    /// Handles that were expired or unknown (not an error).
    invalid: Vec<String>,
}

/// Acknowledges received messages.
#[utoipa::path(post, path = "/v1/topics/{topic}/groups/{group}/ack", tag = "consumers",
    params(
        ("topic" = String, Path, description = "Topic name", pattern = r"^[A-Za-z0-9_%|-]{1,127}$"),
        ("group" = String, Path, description = "Consumer group name", pattern = r"^[A-Za-z0-9_%|-]{1,127}$"),
    ),
    request_body(content = AckIn, content_type = "application/json"),
    responses(
        (status = 200, body = AckOut),
        (status = 400, description = "INVALID_TOPIC or INVALID_ARGUMENT", body = ErrorBody),
    ))]
pub async fn ack(
    State(state): State<AppState>,
    GroupPath { topic: topic_name, group }: GroupPath,
    body: Body,
) -> Result<Response, ApiError> {
    let core = state.core()?;
    let req: AckIn = read_json(body, HANDLES_BODY_LIMIT).await?;
    let handles = receipt_handles(req.receipt_handles)?;
    let (acked, invalid) = match core.store.topics().get(&topic_name) {
        Some(topic) => core.groups.ack(&group, &topic, &handles),
        None => (0, handles),
    };
    Ok(Json(AckOut { acked, invalid }).into_response())
}
