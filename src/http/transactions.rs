//! Transaction routes (API.md "Transaction messages"): prepare, commit, rollback, `GET`, the
//! listing and the producer's pulled check-back. The use cases are
//! `service::transactions`'.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::body::{parse_json, read_charged, read_json};
use super::consume::in_range;
use super::error::{ApiError, ErrorBody};
use super::path::{check_topic, ProducerPath, TxnPath};
use super::send::{to_new_message, MessageIn, StateOut};
use super::AppState;
use crate::names::check_name;
use crate::service::transactions::{state_name, ResolvedBy, Timing, TxnInfo, TxnSend, TxnState};

/// Most messages in one transaction.
const MAX_MESSAGES: usize = 1000;

/// `POST /v1/transactions`.
#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PrepareIn {
    /// The producer group that is asked about it (the topic name rule).
    #[schema(required = true)]
    producer_group: Option<String>,
    /// 1..=1000 messages, each a send's message object with its `topic`.
    #[schema(required = true, value_type = Vec<Object>, min_items = 1, max_items = 1000)]
    messages: Option<Vec<serde_json::Value>>,
    /// First check after this long (1000..=3600000, default 6000).
    #[schema(minimum = 1000, maximum = 3600000)]
    check_after_ms: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct TxnMessageOut {
    #[schema(pattern = "^[0-9A-F]{24}$")]
    message_id: String,
    topic: String,
    /// Committed: when it becomes visible.
    #[serde(skip_serializing_if = "Option::is_none")]
    deliver_at_ms: Option<i64>,
    /// `prepared`, `rolled_back`, or a committed message's state now.
    state: String,
}

/// A transaction.
#[derive(Serialize, ToSchema)]
pub(crate) struct TxnOut {
    transaction_id: String,
    producer_group: String,
    /// `prepared`, `committed` or `rolled_back`.
    state: String,
    prepared_at_ms: i64,
    /// Checks handed out.
    checks: u32,
    /// Null while prepared; `client` or `timeout`.
    #[schema(required = true)]
    resolved_by: Option<&'static str>,
    messages: Vec<TxnMessageOut>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct TxnList {
    transactions: Vec<TxnOut>,
}

fn txn_out(t: TxnInfo) -> TxnOut {
    let state = t.state;
    TxnOut {
        transaction_id: t.id,
        producer_group: t.producer_group,
        state: state_name(state).to_string(),
        prepared_at_ms: t.prepared_at_ms,
        checks: t.checks,
        resolved_by: t.resolved_by.map(|b| if b == ResolvedBy::Client { "client" } else { "timeout" }),
        messages: t
            .messages
            .into_iter()
            .map(|m| TxnMessageOut {
                message_id: m.message_id,
                topic: m.topic,
                deliver_at_ms: m.deliver_at_ms,
                state: match (m.state, state) {
                    (Some(s), _) => match StateOut::from(s) {
                        StateOut::Scheduled => "scheduled",
                        StateOut::Delivered => "delivered",
                        StateOut::Cancelled => "cancelled",
                    },
                    (None, TxnState::RolledBack) => "rolled_back",
                    (None, _) => "prepared",
                }
                .to_string(),
            })
            .collect(),
    }
}

/// Prepares a transaction: its messages are stored, invisible until it is committed.
#[utoipa::path(post, path = "/v1/transactions", tag = "transactions",
    request_body(content = PrepareIn, content_type = "application/json"),
    responses(
        (status = 201, description = "Prepared (durable as a send is)", body = TxnOut),
        (status = 400, description = "INVALID_ARGUMENT, INVALID_TOPIC or DELAY_OUT_OF_RANGE", body = ErrorBody),
        (status = 403, description = "LIMIT_EXCEEDED: a new topic past limits.max_topics", body = ErrorBody),
        (status = 404, description = "NOT_FOUND: no such topic and auto_create_topics is off", body = ErrorBody),
        (status = 413, description = "MESSAGE_TOO_LARGE", body = ErrorBody),
    ))]
pub async fn prepare(State(state): State<AppState>, body: Body) -> Result<Response, ApiError> {
    let core = state.core()?;
    let limits = state.limits();
    let memory = state.admission().admit(None, limits.max_request_bytes)?;
    let admission = state.admission();
    let bytes = read_charged(body, limits.max_request_bytes, |n| admission.charge(&memory, n)).await?;
    let req: PrepareIn = parse_json(&bytes)?;
    let group = req.producer_group.ok_or_else(|| ApiError::invalid("producer_group is required"))?;
    check_name("producer group", &group).map_err(ApiError::invalid)?;
    let raw = req.messages.ok_or_else(|| ApiError::invalid("messages is required"))?;
    if raw.is_empty() || raw.len() > MAX_MESSAGES {
        return Err(ApiError::invalid(format!("a transaction holds 1..={MAX_MESSAGES} messages, got {}", raw.len())));
    }
    let check_after_ms = in_range("check_after_ms", req.check_after_ms, 6000, 1000, 3_600_000)?;
    let now = core.store.clock().now_ms();
    let mut msgs = Vec::with_capacity(raw.len());
    for (i, v) in raw.into_iter().enumerate() {
        let at = format!("messages[{i}]");
        let serde_json::Value::Object(mut obj) = v else {
            return Err(ApiError::invalid(format!("{at}: a message object is required")));
        };
        let topic = match obj.remove("topic") {
            Some(serde_json::Value::String(t)) => t,
            _ => return Err(ApiError::invalid(format!("{at}: topic (a string) is required"))),
        };
        check_topic(&topic)?;
        let relative = obj.contains_key("delay_ms") || obj.contains_key("delay_level");
        let m: MessageIn = serde_json::from_value(serde_json::Value::Object(obj))
            .map_err(|e| ApiError::invalid(format!("{at}: invalid message: {e}")))?;
        let (message, dedup) = to_new_message(m, &at, now, limits)?;
        if dedup.is_some() {
            return Err(ApiError::invalid(format!("{at}: dedup_id is not supported in a transaction")));
        }
        let timing = match message.deliver_at_ms {
            None => Timing::Now,
            Some(t) if relative => Timing::After(t - now),
            Some(t) => Timing::At(t),
        };
        msgs.push(TxnSend { topic, message, timing });
    }
    let info = core.broker.prepare(&group, check_after_ms, msgs).await?;
    Ok((StatusCode::CREATED, Json(txn_out(info))).into_response())
}

/// Commits a transaction: all its messages become visible together.
#[utoipa::path(post, path = "/v1/transactions/{transaction_id}/commit", tag = "transactions",
    params(("transaction_id" = String, Path, description = "The id the prepare returned")),
    responses(
        (status = 200, description = "Committed (again, for a repeat)", body = TxnOut),
        (status = 404, description = "NOT_FOUND: unknown or malformed id", body = ErrorBody),
        (status = 409, description = "TRANSACTION_RESOLVED: it was rolled back", body = ErrorBody),
    ))]
pub async fn commit(State(state): State<AppState>, TxnPath(id): TxnPath) -> Result<Response, ApiError> {
    let info = state.core()?.broker.resolve(&id, TxnState::Committed, ResolvedBy::Client).await?;
    Ok(Json(txn_out(info)).into_response())
}

#[derive(Serialize, ToSchema)]
pub(crate) struct RolledBackOut {
    transaction_id: String,
    /// `rolled_back`.
    state: &'static str,
}

/// Rolls a transaction back: none of its messages is ever visible.
#[utoipa::path(post, path = "/v1/transactions/{transaction_id}/rollback", tag = "transactions",
    params(("transaction_id" = String, Path, description = "The id the prepare returned")),
    responses(
        (status = 200, description = "Rolled back (again, for a repeat)", body = RolledBackOut),
        (status = 404, description = "NOT_FOUND: unknown or malformed id", body = ErrorBody),
        (status = 409, description = "TRANSACTION_RESOLVED: it was committed", body = ErrorBody),
    ))]
pub async fn rollback(State(state): State<AppState>, TxnPath(id): TxnPath) -> Result<Response, ApiError> {
    let info = state.core()?.broker.resolve(&id, TxnState::RolledBack, ResolvedBy::Client).await?;
    Ok(Json(RolledBackOut { transaction_id: info.id, state: "rolled_back" }).into_response())
}

/// A transaction as it is now.
#[utoipa::path(get, path = "/v1/transactions/{transaction_id}", tag = "transactions",
    params(("transaction_id" = String, Path, description = "The id the prepare returned")),
    responses(
        (status = 200, body = TxnOut),
        (status = 404, description = "NOT_FOUND: unknown or malformed id", body = ErrorBody),
    ))]
pub async fn get_transaction(State(state): State<AppState>, TxnPath(id): TxnPath) -> Result<Response, ApiError> {
    Ok(Json(txn_out(state.core()?.broker.transaction(&id)?)).into_response())
}

#[derive(Deserialize, ToSchema, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListQuery {
    /// Only this producer group's.
    producer_group: Option<String>,
    /// Only those in this state: `prepared`, `committed` or `rolled_back`.
    state: Option<String>,
    /// At most this many: 1..=1000. Default: 100
    limit: Option<i64>,
}

/// Transactions, newest first.
#[utoipa::path(get, path = "/v1/transactions", tag = "transactions",
    params(ListQuery),
    responses(
        (status = 200, body = TxnList),
        (status = 400, description = "INVALID_ARGUMENT", body = ErrorBody),
    ))]
pub async fn list_transactions(
    State(state): State<AppState>,
    query: Result<axum::extract::Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let axum::extract::Query(q) = query.map_err(|e| ApiError::invalid(format!("bad query: {e}")))?;
    let limit = super::path::list_limit(q.limit)?;
    let st = match q.state.as_deref() {
        None => None,
        Some("prepared") => Some(TxnState::Prepared),
        Some("committed") => Some(TxnState::Committed),
        Some("rolled_back") => Some(TxnState::RolledBack),
        Some(other) => {
            return Err(ApiError::invalid(format!("state must be prepared, committed or rolled_back, got {other:?}")))
        }
    };
    let list = state.core()?.broker.transactions(q.producer_group.as_deref(), st, limit);
    Ok(Json(TxnList { transactions: list.into_iter().map(txn_out).collect() }).into_response())
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CheckIn {
    /// At most this many transactions: 1..=100 (default 16).
    #[schema(minimum = 1, maximum = 100)]
    max: Option<i64>,
    /// Long poll: wait up to this long for one (0..=30000, default 0).
    #[schema(minimum = 0, maximum = 30000)]
    wait_ms: Option<i64>,
}

/// A message of a transaction handed out to a check (as a receive shows it).
#[derive(Serialize, ToSchema)]
pub(crate) struct CheckMessage {
    #[schema(pattern = "^[0-9A-F]{24}$")]
    message_id: String,
    topic: String,
    #[schema(required = true)]
    tag: Option<String>,
    keys: Vec<String>,
    properties: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(content_encoding = "base64")]
    body_base64: Option<String>,
    born_at_ms: i64,
    /// The ordering key it was sent with (null if none).
    #[schema(required = true)]
    message_group: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct CheckedTxn {
    transaction_id: String,
    prepared_at_ms: i64,
    /// Checks handed out, this one included.
    checks: u32,
    messages: Vec<CheckMessage>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct CheckOut {
    transactions: Vec<CheckedTxn>,
}

/// The check-back: the producer group's prepared transactions due for a check, each counted
/// as one check; commit or roll back each by its id.
#[utoipa::path(post, path = "/v1/producers/{producer_group}/transactions/check", tag = "transactions",
    params(("producer_group" = String, Path, description = "Producer group name", pattern = r"^[A-Za-z0-9_%|-]{1,127}$")),
    request_body(content = Option<CheckIn>, content_type = "application/json"),
    responses(
        (status = 200, body = CheckOut),
        (status = 400, description = "INVALID_ARGUMENT", body = ErrorBody),
    ))]
pub async fn check(
    State(state): State<AppState>,
    ProducerPath(group): ProducerPath,
    body: Body,
) -> Result<Response, ApiError> {
    let core = state.core()?;
    let req: CheckIn = read_json(body, 64 * 1024).await?;
    let max = in_range("max", req.max, 16, 1, 100)?;
    let wait_ms = in_range("wait_ms", req.wait_ms, 0, 0, 30_000)?;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_ms as u64);
    let got = loop {
        let got = core.broker.check(&group, max as usize).await?;
        if !got.is_empty() || tokio::time::Instant::now() >= deadline {
            break got;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            _ = state.shutting_down() => break Vec::new(),
        }
    };
    let transactions = got
        .into_iter()
        .map(|c| CheckedTxn {
            transaction_id: c.info.id,
            prepared_at_ms: c.info.prepared_at_ms,
            checks: c.info.checks,
            messages: c
                .records
                .iter()
                .map(|(topic, r)| {
                    let rec = r.record();
                    let m = crate::service::deliver(&rec, r.id().offset);
                    let (body, body_base64) = match (m.binary, std::str::from_utf8(m.body)) {
                        (false, Ok(s)) => (Some(s.to_string()), None),
                        _ => (None, Some(base64::engine::general_purpose::STANDARD.encode(m.body))),
                    };
                    CheckMessage {
                        message_id: r.id().to_string(),
                        topic: topic.clone(),
                        tag: m.tag.map(str::to_string),
                        keys: m.keys.iter().map(|k| k.to_string()).collect(),
                        properties: m.properties.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                        body,
                        body_base64,
                        born_at_ms: m.born_ms,
                        message_group: m.message_group.map(str::to_string),
                    }
                })
                .collect(),
        })
        .collect();
    Ok(Json(CheckOut { transactions }).into_response())
}
