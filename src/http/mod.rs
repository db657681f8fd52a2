//! The HTTP API of `../shared/API.md`: routes, request parsing and error mapping.
//!
//! The server listens before recovery ends: `/healthz` answers at once, `/readyz` and every
//! `/v1` route answer 503 UNAVAILABLE until the store is open.

pub mod admission;
mod auth;
mod body;
mod congestion;
mod console;
mod consume;
pub mod error;
mod groups;
mod metrics;
pub mod openapi;
mod path;
mod send;
pub mod serve;
mod storage;
mod transactions;

use std::sync::{Arc, OnceLock};

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put, MethodRouter};
use axum::{Json, Router};
use serde::Serialize;
use tokio::sync::watch;
use utoipa::ToSchema;

use crate::config::Secret;
use crate::group::Groups;
use crate::store::Store;
use crate::timer::TimerEngine;
use error::{ApiError, Code, ErrorBody};

/// Request limits and defaults the routes enforce (from the config).
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_message_bytes: usize,
    pub max_request_bytes: usize,
    pub auto_create_topics: bool,
    pub default_queues: u16,
    pub max_delay_ms: i64,
    /// Longest time to receive a request body (config `http.body_read_timeout`).
    pub body_read_timeout: std::time::Duration,
    /// When sends are refused with 429 BUSY (config `[admission]`).
    pub admission: admission::AdmissionOptions,
}

/// What the routes need once recovery has finished.
pub struct Core {
    pub store: Arc<Store>,
    pub groups: Arc<Groups>,
    pub timer: Arc<TimerEngine>,
    /// The use cases (send, status, cancel) over the store and the timer.
    pub broker: crate::service::Broker,
    /// The consumer use cases (receive, nack, dead letters, seek, configuration).
    pub consumers: crate::service::Consumers,
    /// The storage lifecycle (retention, disk limits).
    pub retention: Arc<crate::retention::Retention>,
}

pub struct Shared {
    pub limits: Limits,
    /// The bearer token `/v1` routes require, if any (see [`auth`]).
    auth_token: Option<Secret>,
    admission: Arc<admission::Admission>,
    core: Arc<OnceLock<Core>>,
    metrics: metrics::Metrics,
    shutdown: watch::Receiver<bool>,
}

#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    /// `shutdown` turns true when the server starts shutting down (long polls end early).
    /// `auth_token`: the bearer token `/v1` routes require (none when empty).
    pub fn new(limits: Limits, auth_token: Secret, shutdown: watch::Receiver<bool>) -> Self {
        let auth_token = (!auth_token.is_empty()).then_some(auth_token);
        let admission = Arc::new(admission::Admission::new(limits.admission));
        let core = Arc::new(OnceLock::new());
        let metrics = metrics::Metrics::new(core.clone(), admission.clone());
        Self(Arc::new(Shared { limits, auth_token, admission, core, metrics, shutdown }))
    }

    fn auth_token(&self) -> Option<&str> {
        self.0.auth_token.as_ref().map(Secret::expose)
    }

    /// Marks the service ready. Called once, after recovery.
    pub fn set_ready(&self, core: Core) {
        let _ = self.0.core.set(core);
    }

    pub fn core(&self) -> Result<&Core, ApiError> {
        self.0.core.get().ok_or_else(|| ApiError::new(Code::Unavailable, "not ready: recovery in progress"))
    }

    fn metrics(&self) -> &metrics::Metrics {
        &self.0.metrics
    }

    pub fn limits(&self) -> &Limits {
        &self.0.limits
    }

    pub fn admission(&self) -> &admission::Admission {
        &self.0.admission
    }

    /// Resolves when the server is shutting down.
    pub async fn shutting_down(&self) {
        let mut rx = self.0.shutdown.clone();
        let _ = rx.wait_for(|&s| s).await;
    }
}

/// Every route the server serves: path, method, handler. [`router`] is built from this table,
/// and a test checks it against the OpenAPI spec ([`openapi`]) both ways, so a route cannot be
/// served undocumented or documented unserved.
fn routes() -> Vec<(&'static str, Method, MethodRouter<AppState>)> {
    vec![
        ("/healthz", Method::GET, get(healthz)),
        ("/readyz", Method::GET, get(readyz)),
        ("/openapi.json", Method::GET, get(openapi::serve_spec)),
        ("/console", Method::GET, get(console::console)),
        ("/v1/topics", Method::GET, get(send::list_topics)),
        ("/v1/topics/{topic}", Method::PUT, put(send::create_topic)),
        ("/v1/topics/{topic}/messages", Method::POST, post(send::send)),
        ("/v1/topics/{topic}/messages", Method::GET, get(send::find_by_key)),
        ("/v1/topics/{topic}/messages/{message_id}", Method::GET, get(send::get_message)),
        ("/v1/topics/{topic}/messages/{message_id}", Method::DELETE, delete(send::cancel_message)),
        ("/v1/topics/{topic}/groups", Method::GET, get(groups::list_groups)),
        ("/v1/topics/{topic}/groups/{group}", Method::PUT, put(groups::put_group)),
        ("/v1/topics/{topic}/groups/{group}", Method::GET, get(groups::get_group)),
        ("/v1/topics/{topic}/groups/{group}/receive", Method::POST, post(consume::receive)),
        ("/v1/topics/{topic}/groups/{group}/ack", Method::POST, post(consume::ack)),
        ("/v1/topics/{topic}/groups/{group}/nack", Method::POST, post(groups::nack)),
        ("/v1/topics/{topic}/groups/{group}/extend", Method::POST, post(groups::extend)),
        ("/v1/topics/{topic}/groups/{group}/seek", Method::POST, post(groups::seek)),
        ("/v1/topics/{topic}/groups/{group}/blocked", Method::GET, get(groups::blocked)),
        ("/v1/transactions", Method::POST, post(transactions::prepare)),
        ("/v1/transactions", Method::GET, get(transactions::list_transactions)),
        ("/v1/transactions/{transaction_id}", Method::GET, get(transactions::get_transaction)),
        ("/v1/transactions/{transaction_id}/commit", Method::POST, post(transactions::commit)),
        ("/v1/transactions/{transaction_id}/rollback", Method::POST, post(transactions::rollback)),
        ("/v1/producers/{producer_group}/transactions/check", Method::POST, post(transactions::check)),
        ("/v1/timer/stats", Method::GET, get(timer_stats)),
        ("/v1/timer/congestion", Method::GET, get(congestion::congestion)),
        ("/v1/storage", Method::GET, get(storage::storage)),
        ("/metrics", Method::GET, get(metrics::metrics)),
    ]
}

/// The `(path, method)` of every served route, in axum's path syntax (`{param}`, as OpenAPI's).
pub fn served_routes() -> Vec<(&'static str, Method)> {
    routes().into_iter().map(|(path, method, _)| (path, method)).collect()
}

pub fn router(state: AppState) -> Router {
    let mut router = Router::new();
    for (path, _, handler) in routes() {
        router = router.route(path, handler);
    }
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth::require_token))
        .layer(axum::middleware::from_fn_with_state(state.clone(), body::deadline))
        // Outermost, so refusals by the layers above are counted too.
        .layer(axum::middleware::from_fn_with_state(state.clone(), metrics::track))
        .with_state(state)
}

#[derive(Serialize, ToSchema)]
pub(crate) struct Health {
    /// `ok` (healthz) or `ready` (readyz).
    status: &'static str,
}

/// 200 while the process runs.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, body = Health)))]
async fn healthz() -> Response {
    Json(Health { status: "ok" }).into_response()
}

/// 200 once recovery has finished and while the timer pipeline runs; 503 otherwise (a timer
/// stage that stopped by itself means scheduled messages no longer fire until a restart).
#[utoipa::path(get, path = "/readyz", tag = "health", responses(
    (status = 200, body = Health),
    (status = 503, description = "UNAVAILABLE: recovering, or the timer pipeline stopped", body = ErrorBody,
        headers(("Retry-After" = u32, description = "Seconds to wait"))),
))]
async fn readyz(State(state): State<AppState>) -> Response {
    match state.core() {
        Ok(core) => match core.timer.failure() {
            None => Json(Health { status: "ready" }).into_response(),
            Some(why) => ApiError::new(Code::Unavailable, format!("timer pipeline stopped: {why}")).into_response(),
        },
        Err(e) => e.into_response(),
    }
}

/// One timer pipeline stage.
#[derive(Serialize, ToSchema)]
pub(crate) struct StageOut {
    /// Items waiting in the stage's input (for enqueue_get: system-topic messages not yet read).
    queue_depth: u64,
    /// Capacity of that queue (0: not a bounded queue).
    queue_capacity: u64,
    processed: u64,
}

/// Lateness (visible time − `deliver_at_ms`) of fired messages, in ms.
#[derive(Serialize, ToSchema)]
pub(crate) struct LatenessOut {
    count: u64,
    p50: u64,
    p90: u64,
    p99: u64,
    p999: u64,
    max: u64,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct TimerStatsOut {
    /// Scheduled messages not yet fired or cancelled.
    pending_total: i64,
    /// System-topic messages stored but not yet in the wheel.
    enqueue_lag: u64,
    /// How far the wheel's committed read time is behind now.
    dequeue_lag_ms: i64,
    read_time_ms: i64,
    /// By stage: enqueue_get, enqueue_put, dequeue_get, dequeue_get_message, dequeue_put.
    stages: BTreeMap<&'static str, StageOut>,
    lateness_ms: LatenessOut,
    fired: u64,
    cancelled: u64,
    rolled: u64,
    /// Fired late because the server was down when they were due.
    late_after_downtime: u64,
    /// Scheduled messages refused because their slot was full (`timer.max_per_slot`).
    refused_slot_full: u64,
}

/// The timer pipeline's figures.
#[utoipa::path(get, path = "/v1/timer/stats", tag = "timer",
    responses(
        (status = 200, body = TimerStatsOut),
    ))]
async fn timer_stats(State(state): State<AppState>) -> Result<Response, ApiError> {
    let s = state.core()?.timer.stats();
    let stages = s
        .stages
        .iter()
        .map(|&(name, ref st)| {
            let out =
                StageOut { queue_depth: st.queue_depth, queue_capacity: st.queue_capacity, processed: st.processed };
            (name, out)
        })
        .collect();
    let l = &s.lateness;
    Ok(Json(TimerStatsOut {
        pending_total: s.pending_total,
        enqueue_lag: s.enqueue_lag,
        dequeue_lag_ms: s.dequeue_lag_ms,
        read_time_ms: s.read_time_ms,
        stages,
        lateness_ms: LatenessOut { count: l.count, p50: l.p50, p90: l.p90, p99: l.p99, p999: l.p999, max: l.max },
        fired: s.fired,
        cancelled: s.cancelled,
        rolled: s.rolled,
        late_after_downtime: s.late_after_downtime,
        refused_slot_full: s.refused_slot_full,
    })
    .into_response())
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(Code::MethodNotAllowed, "method not allowed on this route")
}

/// 201 when a request created the resource, 200 when it already existed.
pub(crate) fn created_or_ok(created: bool) -> StatusCode {
    if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    }
}
