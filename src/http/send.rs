//! Topics and the send path: `PUT/GET /v1/topics`, `POST .../messages`, `GET/DELETE .../{id}`.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::body::{parse_json, read_charged, read_limited};
use super::error::{ApiError, Code, ErrorBody};
use super::path::{check_topic, MessagePath, TopicPath};
use super::{created_or_ok, AppState};
use crate::group::fifo::PROP_MESSAGE_GROUP;
use crate::group::tag::check_tag;
use crate::names::check_name;
use crate::schedule::{self, DelaySpec, ScheduleError};
use crate::store::topics::{Topic, MAX_QUEUES};
use crate::store::NewMessage;

/// Most messages in one batch.
pub const MAX_BATCH: usize = 1000;
/// Most keys per message, and bytes per key.
const MAX_KEYS: usize = 64;
const MAX_KEY_BYTES: usize = 1024;
/// Most properties per message, and bytes per property key.
const MAX_PROPERTIES: usize = 128;
const MAX_PROPERTY_KEY_BYTES: usize = 1024;
/// Most characters of a `message_group` (and of a `dedup_id`).
const MAX_GROUP_CHARS: usize = 128;

/// Body of `PUT /v1/topics/{topic}` (may be empty).
#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateTopic {
    /// Queues of the topic, 1..=64. Default: 8. Ignored if the topic exists.
    #[schema(minimum = 1, maximum = 64)]
    queues: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct TopicInfo<'a> {
    name: &'a str,
    queues: usize,
    /// Messages stored for the topic (visible to consumers).
    messages: u64,
    /// Scheduled messages of the topic not yet delivered or cancelled.
    scheduled: u64,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct TopicList<'a> {
    topics: Vec<TopicInfo<'a>>,
}

fn topic_info<'a>(t: &'a Topic, core: &super::Core) -> TopicInfo<'a> {
    TopicInfo {
        name: &t.name,
        queues: t.queues.len(),
        messages: t.message_count(),
        scheduled: core.timer.pending_for(&t.name) as u64,
    }
}

/// Creates a topic (201), or answers 200 if it exists.
#[utoipa::path(put, path = "/v1/topics/{topic}", tag = "topics",
    params(("topic" = String, Path, description = "Topic name", pattern = r"^[A-Za-z0-9_%|-]{1,127}$")),
    request_body(content = Option<CreateTopic>, content_type = "application/json"),
    responses(
        (status = 201, description = "Created", body = TopicInfo),
        (status = 200, description = "Already exists (unchanged)", body = TopicInfo),
        (status = 400, description = "INVALID_TOPIC or INVALID_ARGUMENT", body = ErrorBody),
        (status = 403, description = "LIMIT_EXCEEDED: limits.max_topics reached", body = ErrorBody),
    ))]
pub async fn create_topic(
    State(state): State<AppState>,
    TopicPath(name): TopicPath,
    body: Body,
) -> Result<Response, ApiError> {
    let core = state.core()?;
    let bytes = read_limited(body, 64 * 1024).await?;
    let req: CreateTopic = parse_json(&bytes)?;
    let queues = req.queues.unwrap_or(8);
    if !(1..=i64::from(MAX_QUEUES)).contains(&queues) {
        return Err(ApiError::invalid(format!("queues must be 1..={MAX_QUEUES}, got {queues}")));
    }
    let (topic, created) = core.store.topics().create(&name, queues as u16)?;
    Ok((created_or_ok(created), Json(topic_info(&topic, core))).into_response())
}

/// Lists the topics.
#[utoipa::path(get, path = "/v1/topics", tag = "topics",
    responses(
        (status = 200, body = TopicList),
    ))]
pub async fn list_topics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let core = state.core()?;
    let topics = core.store.topics().list();
    let list: Vec<_> =
        topics.iter().filter(|t| check_name("topic", &t.name).is_ok()).map(|t| topic_info(t, core)).collect();
    Ok(Json(TopicList { topics: list }).into_response())
}

/// One message of a send request, as the client wrote it. Exactly one of `body` and
/// `body_base64`; at most one of `delay_ms`, `deliver_at_ms`, `deliver_at`, `delay_level`
/// (none: a normal message, visible at once). Unknown fields are rejected.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct MessageIn {
    /// UTF-8 payload.
    body: Option<String>,
    /// Binary payload, standard base64.
    #[schema(content_encoding = "base64")]
    body_base64: Option<String>,
    /// RocketMQ tag, 1..128 characters, no `|`.
    #[schema(min_length = 1, max_length = 128)]
    tag: Option<String>,
    /// Business keys (e.g. an order id): at most 64, each 1..=1024 bytes.
    #[schema(max_items = 64)]
    keys: Option<Vec<String>>,
    /// User properties: at most 128; names 1..=1024 bytes, not starting with `__`.
    properties: Option<BTreeMap<String, String>>,
    /// Deliver this many ms after the server receives it.
    #[schema(minimum = 0)]
    delay_ms: Option<i64>,
    /// Deliver at this time (ms since the Unix epoch); at or before now: at once.
    deliver_at_ms: Option<i64>,
    /// Deliver at this RFC 3339 time.
    #[schema(format = DateTime)]
    deliver_at: Option<String>,
    /// RocketMQ delay level: 1s 5s 10s 30s 1m 2m 3m 4m 5m 6m 7m 8m 9m 10m 20m 30m 1h 2h.
    #[schema(minimum = 1, maximum = 18)]
    delay_level: Option<i64>,
    /// Ordering key, 1..=128 characters: the messages of one message group of a topic are
    /// delivered in order, one at a time, to FIFO consumer groups (a scheduled one joins its
    /// group when it fires).
    #[schema(min_length = 1, max_length = 128)]
    message_group: Option<String>,
    /// Idempotency key, 1..=128 characters: a repeat within `dedup.window` stores nothing and
    /// is answered 200 with the first send's message.
    #[schema(min_length = 1, max_length = 128)]
    dedup_id: Option<String>,
}

/// The body of a send, for the OpenAPI spec: one [`MessageIn`], or a batch of 1..=1000 of them
/// stored all-or-nothing. (The handler parses by the first byte, to name errors precisely.)
#[allow(dead_code, reason = "a type for the spec only, never built")]
pub(crate) struct SendBody;

impl utoipa::PartialSchema for SendBody {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ArrayBuilder, OneOfBuilder, Ref};
        let one = Ref::from_schema_name("MessageIn");
        let batch = ArrayBuilder::new()
            .items(Ref::from_schema_name("MessageIn"))
            .min_items(Some(1))
            .max_items(Some(MAX_BATCH))
            .description(Some("A batch, stored all-or-nothing"));
        OneOfBuilder::new().item(one).item(batch).into()
    }
}

impl ToSchema for SendBody {
    fn schemas(schemas: &mut Vec<(String, utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>)>) {
        use utoipa::PartialSchema;
        schemas.push(("MessageIn".to_owned(), MessageIn::schema()));
        <MessageIn as ToSchema>::schemas(schemas);
    }
}

#[derive(Serialize, ToSchema)]
pub(crate) struct SendResult {
    /// 24 hex digits.
    #[schema(pattern = "^[0-9A-F]{24}$")]
    message_id: String,
    topic: String,
    /// When it becomes visible (ms since the Unix epoch); the store time if delivered at once.
    deliver_at_ms: i64,
    /// `scheduled` (visible at `deliver_at_ms`) or `delivered` (visible now); for a repeat of
    /// a `dedup_id` (answered 200), the first message's state now, `cancelled` included.
    state: StateOut,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct BatchResult {
    /// One result per message, in the order sent.
    messages: Vec<SendResult>,
}

/// The answer to a send: one result, or one per message of a batch.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub(crate) enum SendResponse {
    One(SendResult),
    Batch(BatchResult),
}

/// A scheduled or normal message's state.
#[derive(Serialize, ToSchema, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub(crate) enum StateOut {
    Scheduled,
    Delivered,
    Cancelled,
}

impl From<crate::timer::MessageState> for StateOut {
    fn from(s: crate::timer::MessageState) -> Self {
        match s {
            crate::timer::MessageState::Scheduled => StateOut::Scheduled,
            crate::timer::MessageState::Delivered => StateOut::Delivered,
            crate::timer::MessageState::Cancelled => StateOut::Cancelled,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub(crate) struct MessageStatus {
    #[schema(pattern = "^[0-9A-F]{24}$")]
    message_id: String,
    topic: String,
    deliver_at_ms: i64,
    state: StateOut,
}

/// The only state a cancel answers.
#[derive(Serialize, ToSchema, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub(crate) enum CancelledState {
    Cancelled,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct CancelResult {
    #[schema(pattern = "^[0-9A-F]{24}$")]
    message_id: String,
    state: CancelledState,
}

/// Validates one message; `at` names it in errors ("message" or "messages[3]"). Returns it with
/// its `dedup_id`.
pub(crate) fn to_new_message(
    m: MessageIn,
    at: &str,
    now: i64,
    limits: &super::Limits,
) -> Result<(NewMessage, Option<String>), ApiError> {
    let bad = |msg: String| ApiError::invalid(format!("{at}: {msg}"));
    let (body, binary) = match (m.body, m.body_base64) {
        (Some(b), None) => (b.into_bytes(), false),
        (None, Some(b64)) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64.as_bytes())
                .map_err(|e| bad(format!("body_base64 is not valid standard base64: {e}")))?;
            (bytes, true)
        }
        _ => return Err(bad("exactly one of body and body_base64 is required".into())),
    };
    if body.len() > limits.max_message_bytes {
        return Err(ApiError::new(
            Code::MessageTooLarge,
            format!("{at}: body is {} bytes, over max_message_bytes ({})", body.len(), limits.max_message_bytes),
        ));
    }
    if let Some(t) = &m.tag {
        check_tag(t).map_err(bad)?;
    }
    let keys = m.keys.unwrap_or_default();
    if keys.len() > MAX_KEYS {
        return Err(bad(format!("at most {MAX_KEYS} keys, got {}", keys.len())));
    }
    if let Some(k) = keys.iter().find(|k| k.is_empty() || k.len() > MAX_KEY_BYTES) {
        return Err(bad(format!("each key must be 1..={MAX_KEY_BYTES} bytes, got {}", k.len())));
    }
    if keys.iter().any(|k| crate::service::dedup::is_reserved_key(k)) {
        return Err(bad("a key must not start with a NUL character (reserved)".into()));
    }
    if let Some(n) = m.dedup_id.as_ref().map(|d| d.chars().count()).filter(|n| !(1..=MAX_GROUP_CHARS).contains(n)) {
        return Err(bad(format!("dedup_id must be 1..={MAX_GROUP_CHARS} characters, got {n}")));
    }
    let mut properties = m.properties.unwrap_or_default();
    if properties.len() > MAX_PROPERTIES {
        return Err(bad(format!("at most {MAX_PROPERTIES} properties, got {}", properties.len())));
    }
    if let Some(k) = properties.keys().find(|k| k.is_empty() || k.len() > MAX_PROPERTY_KEY_BYTES) {
        return Err(bad(format!("each property name must be 1..={MAX_PROPERTY_KEY_BYTES} bytes, got {}", k.len())));
    }
    if let Some(k) = properties.keys().find(|k| k.starts_with("__")) {
        return Err(bad(format!("property name {k:?} is reserved (prefix \"__\")")));
    }
    if let Some(g) = m.message_group {
        let n = g.chars().count();
        if !(1..=MAX_GROUP_CHARS).contains(&n) {
            return Err(bad(format!("message_group must be 1..={MAX_GROUP_CHARS} characters, got {n}")));
        }
        properties.insert(PROP_MESSAGE_GROUP.to_string(), g);
    }
    // The whole message as stored counts, not only its body (record layout: keys and
    // properties with their length prefixes), so every accepted message fits a segment.
    let stored = body.len()
        + m.tag.as_ref().map_or(0, |t| t.len())
        + keys.iter().map(|k| 2 + k.len()).sum::<usize>()
        + m.dedup_id.as_ref().map_or(0, |d| 2 + crate::service::dedup::dedup_key(d).len())
        + properties.iter().map(|(k, v)| 2 + k.len() + 4 + v.len()).sum::<usize>();
    if stored > limits.max_message_bytes {
        return Err(ApiError::new(
            Code::MessageTooLarge,
            format!(
                "{at}: the message is {stored} bytes with its tag, keys and properties, over max_message_bytes ({})",
                limits.max_message_bytes
            ),
        ));
    }
    let spec = DelaySpec {
        delay_ms: m.delay_ms,
        deliver_at_ms: m.deliver_at_ms,
        deliver_at: m.deliver_at,
        delay_level: m.delay_level,
    };
    let deliver_at_ms = match schedule::resolve(&spec, now, limits.max_delay_ms) {
        Ok(at) => at,
        Err(e @ ScheduleError::OutOfRange { .. }) => {
            return Err(ApiError::new(Code::DelayOutOfRange, format!("{at}: {e}")));
        }
        Err(e) => return Err(bad(e.to_string())),
    };
    let msg = NewMessage {
        tag: m.tag,
        keys,
        properties,
        body,
        binary,
        born_ms: now,
        // A time at or before now is delivered at once: it is a normal message.
        deliver_at_ms: deliver_at_ms.filter(|&t| t > now),
    };
    Ok((msg, m.dedup_id))
}

/// Sends one message or a batch; scheduled ones are delivered at their time.
#[utoipa::path(post, path = "/v1/topics/{topic}/messages", tag = "messages",
    params(("topic" = String, Path, description = "Topic name (created on first send)", pattern = r"^[A-Za-z0-9_%|-]{1,127}$")),
    request_body(content = SendBody, content_type = "application/json"),
    responses(
        (status = 201, description = "Stored: it will be delivered (at least once)", body = SendResponse),
        (status = 200, description = "Every message repeats a dedup_id accepted within dedup.window: nothing stored, the first send's messages", body = SendResponse),
        (status = 400, description = "INVALID_ARGUMENT, INVALID_TOPIC or DELAY_OUT_OF_RANGE", body = ErrorBody),
        (status = 403, description = "LIMIT_EXCEEDED: the send would create a topic past limits.max_topics", body = ErrorBody),
        (status = 404, description = "NOT_FOUND: no such topic and auto_create_topics is off", body = ErrorBody),
        (status = 413, description = "MESSAGE_TOO_LARGE", body = ErrorBody),
        (status = 429, description = "BUSY: the server is behind; retry after Retry-After seconds", body = ErrorBody,
            headers(("Retry-After" = u32, description = "Seconds to wait"))),
        (status = 503, description = "UNAVAILABLE: not ready, store full or poisoned", body = ErrorBody,
            headers(("Retry-After" = u32, description = "Seconds to wait"))),
    ))]
pub async fn send(
    State(state): State<AppState>,
    TopicPath(name): TopicPath,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let core = state.core()?;
    let limits = state.limits();
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    // A client that waits for `100 Continue` has not sent its body: a refusal is answered at
    // once. Any other is sending it: read and drop it, so it sees the refusal, not a reset.
    let waits_for_continue =
        headers.get(header::EXPECT).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if let Some(n) = declared.filter(|&n| n > limits.max_request_bytes as u64) {
        if !waits_for_continue {
            super::body::discard(body).await;
        }
        return Err(ApiError::new(
            Code::MessageTooLarge,
            format!("request body of {n} bytes exceeds max_request_bytes ({} bytes)", limits.max_request_bytes),
        ));
    }
    // Held until the answer: the request's share of the memory budget, charged as the body
    // arrives (see `admission`).
    let memory = match state.admission().admit(declared, limits.max_request_bytes) {
        Ok(r) => r,
        Err(busy) => {
            if !waits_for_continue {
                super::body::discard(body).await;
            }
            return Err(busy);
        }
    };
    let admission = state.admission();
    let bytes = read_charged(body, limits.max_request_bytes, |arrived| admission.charge(&memory, arrived)).await?;
    let now = core.store.clock().now_ms();
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace()).copied();
    let (msgs, batch) = match first {
        Some(b'[') => {
            let raw: Vec<super::body::ObjectOnly<MessageIn>> =
                serde_json::from_slice(&bytes).map_err(|e| ApiError::invalid(format!("invalid batch: {e}")))?;
            if raw.is_empty() || raw.len() > MAX_BATCH {
                return Err(ApiError::invalid(format!("a batch holds 1..={MAX_BATCH} messages, got {}", raw.len())));
            }
            let msgs = raw
                .into_iter()
                .enumerate()
                .map(|(i, m)| to_new_message(m.0, &format!("messages[{i}]"), now, limits))
                .collect::<Result<Vec<_>, _>>()?;
            (msgs, true)
        }
        Some(b'{') => {
            let m: MessageIn =
                serde_json::from_slice(&bytes).map_err(|e| ApiError::invalid(format!("invalid message: {e}")))?;
            (vec![to_new_message(m, "message", now, limits)?], false)
        }
        _ => return Err(ApiError::invalid("the body must be a message object or an array of them")),
    };

    if msgs.iter().any(|(m, _)| m.deliver_at_ms.is_some()) {
        state.admission().check_timer(&core.timer)?;
    }
    let result = |id: crate::store::MessageId, deliver_at_ms: i64, state: StateOut| SendResult {
        message_id: id.to_string(),
        topic: name.clone(),
        deliver_at_ms,
        state,
    };
    let stored_state = |scheduled: bool| if scheduled { StateOut::Scheduled } else { StateOut::Delivered };
    let (out, status): (Vec<SendResult>, StatusCode) = if msgs.iter().any(|(_, d)| d.is_some()) {
        use crate::service::dedup::Outcome;
        let outcomes = core.broker.send_deduplicated(&name, msgs).await?;
        let any_stored = outcomes.iter().any(|o| matches!(o, Outcome::Stored(_)));
        let out = outcomes
            .into_iter()
            .map(|o| match o {
                Outcome::Stored(a) => result(a.id, a.deliver_at_ms, stored_state(a.scheduled)),
                Outcome::Duplicate { id, deliver_at_ms, state } => result(id, deliver_at_ms, state.into()),
            })
            .collect();
        (out, if any_stored { StatusCode::CREATED } else { StatusCode::OK })
    } else {
        let sent = core.broker.send(&name, msgs.into_iter().map(|(m, _)| m).collect()).await?;
        let out = sent.into_iter().map(|a| result(a.id, a.deliver_at_ms, stored_state(a.scheduled))).collect();
        (out, StatusCode::CREATED)
    };
    let resp = if batch {
        SendResponse::Batch(BatchResult { messages: out })
    } else {
        SendResponse::One(out.into_iter().next().expect("one message"))
    };
    Ok((status, Json(resp)).into_response())
}

/// A message's state.
#[utoipa::path(get, path = "/v1/topics/{topic}/messages/{message_id}", tag = "messages",
    params(
        ("topic" = String, Path, description = "Topic name", pattern = r"^[A-Za-z0-9_%|-]{1,127}$"),
        ("message_id" = String, Path, description = "The id a send returned"),
    ),
    responses(
        (status = 200, body = MessageStatus),
        (status = 400, description = "INVALID_TOPIC", body = ErrorBody),
        (status = 404, description = "NOT_FOUND: unknown or malformed id", body = ErrorBody),
    ))]
pub async fn get_message(
    State(state): State<AppState>,
    MessagePath { topic, id }: MessagePath,
) -> Result<Response, ApiError> {
    check_topic(&topic)?;
    let (mid, deliver_at_ms, st) = state.core()?.broker.status(&topic, &id)?;
    Ok(Json(MessageStatus { message_id: mid.to_string(), topic, deliver_at_ms, state: st.into() }).into_response())
}

/// Cancels a scheduled message: once this answers 200 it will never become visible.
#[utoipa::path(delete, path = "/v1/topics/{topic}/messages/{message_id}", tag = "messages",
    params(
        ("topic" = String, Path, description = "Topic name", pattern = r"^[A-Za-z0-9_%|-]{1,127}$"),
        ("message_id" = String, Path, description = "The id a send returned"),
    ),
    responses(
        (status = 200, description = "Cancelled (also when it already was)", body = CancelResult),
        (status = 400, description = "INVALID_TOPIC", body = ErrorBody),
        (status = 404, description = "NOT_FOUND: unknown or malformed id", body = ErrorBody),
        (status = 409, description = "ALREADY_DELIVERED: it is already visible", body = ErrorBody),
    ))]
pub async fn cancel_message(
    State(state): State<AppState>,
    MessagePath { topic, id }: MessagePath,
) -> Result<Response, ApiError> {
    check_topic(&topic)?;
    let mid = state.core()?.broker.cancel(&topic, &id).await?;
    Ok(Json(CancelResult { message_id: mid.to_string(), state: CancelledState::Cancelled }).into_response())
}

#[derive(Deserialize, ToSchema, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ByKeyQuery {
    /// The business key (one of the `keys` a message was sent with).
    key: Option<String>,
    /// Most messages to return: 1..=1000. Default: 100
    limit: Option<i64>,
}

/// A message found by key.
#[derive(Serialize, ToSchema)]
pub(crate) struct KeyedMessage {
    #[schema(pattern = "^[0-9A-F]{24}$")]
    message_id: String,
    /// Null when none was sent.
    #[schema(required = true)]
    tag: Option<String>,
    keys: Vec<String>,
    born_at_ms: i64,
    deliver_at_ms: i64,
    state: StateOut,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct KeyedMessages {
    messages: Vec<KeyedMessage>,
}

/// The messages of a topic sent with a business key, newest first (scheduled ones included,
/// whatever their state), from the key index.
#[utoipa::path(get, path = "/v1/topics/{topic}/messages", tag = "messages",
    params(
        ("topic" = String, Path, description = "Topic name", pattern = r"^[A-Za-z0-9_%|-]{1,127}$"),
        ByKeyQuery,
    ),
    responses(
        (status = 200, body = KeyedMessages),
        (status = 400, description = "INVALID_TOPIC or INVALID_ARGUMENT (no key, a limit out of range)", body = ErrorBody),
    ))]
pub async fn find_by_key(
    State(state): State<AppState>,
    TopicPath(topic): TopicPath,
    query: Result<axum::extract::Query<ByKeyQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let axum::extract::Query(q) = query.map_err(|e| ApiError::invalid(format!("bad query: {e}")))?;
    let key = q.key.filter(|k| !k.is_empty()).ok_or_else(|| ApiError::invalid("key is required"))?;
    let limit = super::path::list_limit(q.limit)?;
    let hits = state.core()?.broker.find_by_key(&topic, &key, limit);
    let messages = hits
        .into_iter()
        .map(|h| KeyedMessage {
            message_id: h.id,
            tag: h.tag,
            keys: h.keys,
            born_at_ms: h.born_ms,
            deliver_at_ms: h.deliver_at_ms,
            state: h.state.into(),
        })
        .collect();
    Ok(Json(KeyedMessages { messages }).into_response())
}
