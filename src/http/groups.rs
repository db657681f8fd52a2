//! Consumer-group management over HTTP (API.md "Consumer groups: retry, dead letters, lag,
//! seek, lookup by key"): a group's configuration (`PUT`/`GET .../groups/{group}`), the group
//! listing, `nack`, `extend` and `seek`. The use cases are `service::Consumers`'.

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::body::{parse_json, read_json, read_limited};
use super::consume::{receipt_handles, HANDLES_BODY_LIMIT};
use super::error::{ApiError, ErrorBody};
use super::path::{GroupPath, TopicPath};
use super::AppState;
use crate::group::config::{Retry, MAX_BACKOFF_MS};
use crate::group::{GroupConfig, GroupSummary, SeekTo};

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RetryIn {
    /// Default: 1000
    #[schema(minimum = 0)]
    initial_ms: Option<i64>,
    /// Default: 7200000
    max_ms: Option<i64>,
    /// Default: 2.0
    #[schema(minimum = 1.0, maximum = 10.0)]
    multiplier: Option<f64>,
}

/// A group's configuration; every field optional (a missing one takes its default).
#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct GroupConfigIn {
    /// Default: 16
    #[schema(minimum = 1, maximum = 1000)]
    max_delivery_attempts: Option<i64>,
    retry: Option<RetryIn>,
    /// Default: "%DLQ%" + the group's name.
    dead_letter_topic: Option<String>,
    /// FIFO delivery by message group (default false): one message of a message group at a
    /// time, in order; message groups never wait for each other.
    fifo: Option<bool>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct RetryOut {
    initial_ms: i64,
    max_ms: i64,
    multiplier: f64,
}

/// A group's configuration and figures.
#[derive(Serialize, ToSchema)]
pub(crate) struct GroupOut {
    name: String,
    max_delivery_attempts: u32,
    retry: RetryOut,
    dead_letter_topic: String,
    fifo: bool,
    /// Visible to the group and not handed out yet.
    backlog: u64,
    /// Handed out, neither acked nor expired.
    in_flight: u64,
    dead_lettered: u64,
    /// Reclaimed by retention before the group received them.
    expired: u64,
}

/// One group in the listing.
#[derive(Serialize, ToSchema)]
pub(crate) struct GroupListed {
    name: String,
    backlog: u64,
    in_flight: u64,
    dead_lettered: u64,
    expired: u64,
    fifo: bool,
    max_delivery_attempts: u32,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct GroupsOut {
    groups: Vec<GroupListed>,
}

fn group_out(s: GroupSummary) -> GroupOut {
    let dead_letter_topic = s.config.dead_letter_topic(&s.name);
    let c = s.config;
    GroupOut {
        max_delivery_attempts: c.max_delivery_attempts,
        retry: RetryOut { initial_ms: c.retry.initial_ms, max_ms: c.retry.max_ms, multiplier: c.retry.multiplier },
        dead_letter_topic,
        fifo: c.fifo,
        backlog: s.backlog,
        in_flight: s.in_flight,
        dead_lettered: s.dead_lettered,
        expired: s.expired,
        name: s.name,
    }
}

fn config_of(req: GroupConfigIn) -> Result<GroupConfig, ApiError> {
    let d = GroupConfig::default();
    let r = req.retry.unwrap_or_default();
    let attempts = req.max_delivery_attempts.unwrap_or(i64::from(d.max_delivery_attempts));
    let fifo = req.fifo.unwrap_or(false);
    Ok(GroupConfig {
        max_delivery_attempts: u32::try_from(attempts).unwrap_or(0),
        retry: Retry {
            initial_ms: r.initial_ms.unwrap_or(d.retry.initial_ms),
            max_ms: r.max_ms.unwrap_or(d.retry.max_ms),
            multiplier: r.multiplier.unwrap_or(d.retry.multiplier),
        },
        dead_letter_topic: req.dead_letter_topic,
        fifo,
    })
}

/// Configures a consumer group (created if new; a missing field takes its default).
#[utoipa::path(put, path = "/v1/topics/{topic}/groups/{group}", tag = "consumers",
    params(
        ("topic" = String, Path, description = "Topic name", pattern = r"^[A-Za-z0-9_%|-]{1,127}$"),
        ("group" = String, Path, description = "Consumer group name", pattern = r"^[A-Za-z0-9_%|-]{1,127}$"),
    ),
    request_body(content = Option<GroupConfigIn>, content_type = "application/json"),
    responses(
        (status = 201, description = "Configured for the first time", body = GroupOut),
        (status = 200, description = "Configuration replaced", body = GroupOut),
        (status = 400, description = "INVALID_TOPIC or INVALID_ARGUMENT", body = ErrorBody),
        (status = 403, description = "LIMIT_EXCEEDED", body = ErrorBody),
        (status = 404, description = "NOT_FOUND: no such topic and auto_create_topics is off", body = ErrorBody),
    ))]
pub async fn put_group(
    State(state): State<AppState>,
    GroupPath { topic, group }: GroupPath,
    body: Body,
) -> Result<Response, ApiError> {
    let core = state.core()?;
    let bytes = read_limited(body, 64 * 1024).await?;
    let config = config_of(parse_json(&bytes)?)?;
    let t = core.broker.topic_for_send(&topic)?;
    let consumers = core.consumers.clone();
    let (g, t2) = (group.clone(), t.clone());
    let created = tokio::task::spawn_blocking(move || consumers.configure(&g, &t2, config))
        .await
        .map_err(|e| ApiError::unavailable(format!("configure task failed: {e}")))??;
    let summary = core.consumers.groups().summary(&group, &t).ok_or_else(|| ApiError::not_found("group vanished"))?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(group_out(summary))).into_response())
}

/// A group's configuration and figures.
#[utoipa::path(get, path = "/v1/topics/{topic}/groups/{group}", tag = "consumers",
    params(
        ("topic" = String, Path, description = "Topic name", pattern = r"^[A-Za-z0-9_%|-]{1,127}$"),
        ("group" = String, Path, description = "Consumer group name", pattern = r"^[A-Za-z0-9_%|-]{1,127}$"),
    ),
    responses(
        (status = 200, body = GroupOut),
        (status = 400, description = "INVALID_TOPIC or INVALID_ARGUMENT", body = ErrorBody),
        (status = 404, description = "NOT_FOUND: the group never received nor was configured", body = ErrorBody),
    ))]
pub async fn get_group(
    State(state): State<AppState>,
    GroupPath { topic, group }: GroupPath,
) -> Result<Response, ApiError> {
    let core = state.core()?;
    let unknown = || ApiError::not_found(format!("no group {group:?} of topic {topic:?}"));
    let t = core.store.topics().get(&topic).ok_or_else(unknown)?;
    let s = core.consumers.groups().summary(&group, &t).ok_or_else(unknown)?;
    Ok(Json(group_out(s)).into_response())
}

/// The consumer groups of a topic with their figures (consumer lag is `backlog`).
#[utoipa::path(get, path = "/v1/topics/{topic}/groups", tag = "consumers",
    params(("topic" = String, Path, description = "Topic name", pattern = r"^[A-Za-z0-9_%|-]{1,127}$")),
    responses(
        (status = 200, body = GroupsOut),
        (status = 400, description = "INVALID_TOPIC", body = ErrorBody),
        (status = 404, description = "NOT_FOUND: no such topic", body = ErrorBody),
    ))]
pub async fn list_groups(State(state): State<AppState>, TopicPath(topic): TopicPath) -> Result<Response, ApiError> {
    let core = state.core()?;
    let t = core.store.topics().get(&topic).ok_or_else(|| ApiError::not_found(format!("no topic {topic:?}")))?;
    let groups = core
        .consumers
        .groups()
        .list(&t)
        .into_iter()
        .map(|s| GroupListed {
            backlog: s.backlog,
            in_flight: s.in_flight,
            dead_lettered: s.dead_lettered,
            expired: s.expired,
            fifo: s.config.fifo,
            max_delivery_attempts: s.config.max_delivery_attempts,
            name: s.name,
        })
        .collect();
    Ok(Json(GroupsOut { groups }).into_response())
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NackIn {
    /// Receipt handles from receives of this group: at most 10,000.
    #[schema(required = true, max_items = 10000)]
    receipt_handles: Option<Vec<String>>,
    /// Redeliver after this long (else after the group's retry backoff for the attempt).
    #[schema(minimum = 0, maximum = 43200000)]
    delay_ms: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct NackOut {
    nacked: usize,
    /// Handles that were expired or unknown (not an error).
    invalid: Vec<String>,
}

/// Gives received messages back: each is delivered again after `delay_ms` or the group's
/// backoff; one on its last attempt goes to the dead letter topic.
#[utoipa::path(post, path = "/v1/topics/{topic}/groups/{group}/nack", tag = "consumers",
    params(
        ("topic" = String, Path, description = "Topic name", pattern = r"^[A-Za-z0-9_%|-]{1,127}$"),
        ("group" = String, Path, description = "Consumer group name", pattern = r"^[A-Za-z0-9_%|-]{1,127}$"),
    ),
    request_body(content = NackIn, content_type = "application/json"),
    responses(
        (status = 200, body = NackOut),
        (status = 400, description = "INVALID_TOPIC or INVALID_ARGUMENT", body = ErrorBody),
        (status = 503, description = "UNAVAILABLE: the redelivery could not be stored (nothing changed)", body = ErrorBody),
    ))]
pub async fn nack(
    State(state): State<AppState>,
    GroupPath { topic, group }: GroupPath,
    body: Body,
) -> Result<Response, ApiError> {
    let core = state.core()?;
    let req: NackIn = read_json(body, HANDLES_BODY_LIMIT).await?;
    let handles = receipt_handles(req.receipt_handles)?;
    if let Some(d) = req.delay_ms.filter(|d| !(0..=MAX_BACKOFF_MS).contains(d)) {
        return Err(ApiError::invalid(format!("delay_ms must be 0..={MAX_BACKOFF_MS}, got {d}")));
    }
    let Some(t) = core.store.topics().get(&topic) else {
        return Ok(Json(NackOut { nacked: 0, invalid: handles }).into_response());
    };
    let out = core.consumers.nack(&group, &t, &handles, req.delay_ms).await?;
    Ok(Json(NackOut { nacked: out.nacked, invalid: out.invalid }).into_response())
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ExtendIn {
    #[schema(required = true, max_items = 10000)]
    receipt_handles: Option<Vec<String>>,
    /// Invisible for this long from now.
    #[schema(required = true, minimum = 1000, maximum = 43200000)]
    invisible_ms: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct ExtendOut {
    extended: usize,
    invalid: Vec<String>,
}

/// Keeps received messages invisible longer; their handles stay valid.
#[utoipa::path(post, path = "/v1/topics/{topic}/groups/{group}/extend", tag = "consumers",
    params(
        ("topic" = String, Path, description = "Topic name", pattern = r"^[A-Za-z0-9_%|-]{1,127}$"),
        ("group" = String, Path, description = "Consumer group name", pattern = r"^[A-Za-z0-9_%|-]{1,127}$"),
    ),
    request_body(content = ExtendIn, content_type = "application/json"),
    responses(
        (status = 200, body = ExtendOut),
        (status = 400, description = "INVALID_TOPIC or INVALID_ARGUMENT", body = ErrorBody),
    ))]
pub async fn extend(
    State(state): State<AppState>,
    GroupPath { topic, group }: GroupPath,
    body: Body,
) -> Result<Response, ApiError> {
    let core = state.core()?;
    let req: ExtendIn = read_json(body, HANDLES_BODY_LIMIT).await?;
    let handles = receipt_handles(req.receipt_handles)?;
    let ms = req.invisible_ms.ok_or_else(|| ApiError::invalid("invisible_ms is required"))?;
    if !(1000..=MAX_BACKOFF_MS).contains(&ms) {
        return Err(ApiError::invalid(format!("invisible_ms must be 1000..={MAX_BACKOFF_MS}, got {ms}")));
    }
    let (extended, invalid) = match core.store.topics().get(&topic) {
        Some(t) => core.consumers.groups().extend(&group, &t, &handles, ms),
        None => (0, handles),
    };
    Ok(Json(ExtendOut { extended, invalid }).into_response())
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SeekIn {
    /// `earliest` (the oldest retained message) or `latest` (after the last one).
    to: Option<String>,
    /// The first message stored at or after this time.
    to_ms: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct SeekOut {
    backlog: u64,
}

/// Moves a group's next message in every queue; what was in flight is forgotten.
#[utoipa::path(post, path = "/v1/topics/{topic}/groups/{group}/seek", tag = "consumers",
    params(
        ("topic" = String, Path, description = "Topic name", pattern = r"^[A-Za-z0-9_%|-]{1,127}$"),
        ("group" = String, Path, description = "Consumer group name", pattern = r"^[A-Za-z0-9_%|-]{1,127}$"),
    ),
    request_body(content = SeekIn, content_type = "application/json"),
    responses(
        (status = 200, body = SeekOut),
        (status = 400, description = "INVALID_TOPIC or INVALID_ARGUMENT", body = ErrorBody),
        (status = 403, description = "LIMIT_EXCEEDED: a new group past limits.max_groups_per_topic", body = ErrorBody),
        (status = 404, description = "NOT_FOUND: no such topic", body = ErrorBody),
    ))]
pub async fn seek(
    State(state): State<AppState>,
    GroupPath { topic, group }: GroupPath,
    body: Body,
) -> Result<Response, ApiError> {
    let core = state.core()?;
    let bytes = read_limited(body, 64 * 1024).await?;
    let req: SeekIn = parse_json(&bytes)?;
    let to = match (req.to.as_deref(), req.to_ms) {
        (Some("earliest"), None) => SeekTo::Earliest,
        (Some("latest"), None) => SeekTo::Latest,
        (None, Some(ms)) => SeekTo::Time(ms),
        (Some(other), None) => {
            return Err(ApiError::invalid(format!("to must be \"earliest\" or \"latest\", got {other:?}")))
        }
        _ => return Err(ApiError::invalid("exactly one of to and to_ms is required")),
    };
    let t = core.store.topics().get(&topic).ok_or_else(|| ApiError::not_found(format!("no topic {topic:?}")))?;
    let backlog = core.consumers.seek(&group, &t, to).await?;
    Ok(Json(SeekOut { backlog }).into_response())
}

#[derive(Deserialize, ToSchema, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct BlockedQuery {
    /// At most this many: 1..=1000. Default: 100
    limit: Option<i64>,
}

/// One message group waiting for its message out.
#[derive(Serialize, ToSchema)]
pub(crate) struct BlockedOut {
    message_group: String,
    /// The message out (in flight, or on its way to the dead letter topic).
    #[schema(pattern = "^[0-9A-F]{24}$")]
    message_id: String,
    /// When it was first handed out (ms since the Unix epoch).
    since_ms: i64,
    /// Its deliveries so far.
    attempts: u32,
    /// Messages of the group waiting behind it.
    waiting: u64,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct BlockedList {
    blocked: Vec<BlockedOut>,
}

/// A FIFO group's message groups that wait for a message out, longest waiting first (empty for
/// a group that is not FIFO).
#[utoipa::path(get, path = "/v1/topics/{topic}/groups/{group}/blocked", tag = "consumers",
    params(
        ("topic" = String, Path, description = "Topic name", pattern = r"^[A-Za-z0-9_%|-]{1,127}$"),
        ("group" = String, Path, description = "Consumer group name", pattern = r"^[A-Za-z0-9_%|-]{1,127}$"),
        BlockedQuery,
    ),
    responses(
        (status = 200, body = BlockedList),
        (status = 400, description = "INVALID_TOPIC or INVALID_ARGUMENT", body = ErrorBody),
        (status = 404, description = "NOT_FOUND: the group never received nor was configured", body = ErrorBody),
    ))]
pub async fn blocked(
    State(state): State<AppState>,
    GroupPath { topic, group }: GroupPath,
    query: Result<axum::extract::Query<BlockedQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let core = state.core()?;
    let axum::extract::Query(q) = query.map_err(|e| ApiError::invalid(format!("bad query: {e}")))?;
    let limit = super::path::list_limit(q.limit)?;
    let unknown = || ApiError::not_found(format!("no group {group:?} of topic {topic:?}"));
    let t = core.store.topics().get(&topic).ok_or_else(unknown)?;
    core.consumers.groups().summary(&group, &t).ok_or_else(unknown)?;
    let blocked = core
        .consumers
        .groups()
        .blocked(&group, &t, limit)
        .into_iter()
        .map(|b| BlockedOut {
            message_group: b.message_group,
            message_id: b.message_id,
            since_ms: b.since_ms,
            attempts: b.attempts,
            waiting: b.waiting,
        })
        .collect();
    Ok(Json(BlockedList { blocked }).into_response())
}
