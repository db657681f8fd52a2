//! The HTTP API of `../shared/API.md`: routes, request parsing and error mapping.
//!
//! The server listens before recovery ends: `/healthz` answers at once, `/readyz` and every
//! `/v1` route answer 503 UNAVAILABLE until the store is open.

mod auth;
mod body;
mod consume;
pub mod error;
mod path;
mod send;
pub mod serve;

use std::sync::{Arc, OnceLock};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde_json::json;
use tokio::sync::watch;

use crate::config::Secret;
use crate::group::Groups;
use crate::store::Store;
use crate::timer::TimerEngine;
use error::{ApiError, Code};

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
}

/// What the routes need once recovery has finished.
pub struct Core {
    pub store: Arc<Store>,
    pub groups: Arc<Groups>,
    pub timer: Arc<TimerEngine>,
}

pub struct Shared {
    pub limits: Limits,
    /// The bearer token `/v1` routes require, if any (see [`auth`]).
    auth_token: Option<Secret>,
    core: OnceLock<Core>,
    shutdown: watch::Receiver<bool>,
}

#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    /// `shutdown` turns true when the server starts shutting down (long polls end early).
    /// `auth_token`: the bearer token `/v1` routes require (none when empty).
    pub fn new(limits: Limits, auth_token: Secret, shutdown: watch::Receiver<bool>) -> Self {
        let auth_token = (!auth_token.is_empty()).then_some(auth_token);
        Self(Arc::new(Shared { limits, auth_token, core: OnceLock::new(), shutdown }))
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

    pub fn limits(&self) -> &Limits {
        &self.0.limits
    }

    /// Resolves when the server is shutting down.
    pub async fn shutting_down(&self) {
        let mut rx = self.0.shutdown.clone();
        let _ = rx.wait_for(|&s| s).await;
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/v1/topics", get(send::list_topics))
        .route("/v1/topics/{topic}", put(send::create_topic))
        .route("/v1/topics/{topic}/messages", post(send::send))
        .route("/v1/topics/{topic}/messages/{id}", get(send::get_message).delete(send::cancel_message))
        .route("/v1/topics/{topic}/groups/{group}/receive", post(consume::receive))
        .route("/v1/topics/{topic}/groups/{group}/ack", post(consume::ack))
        .route("/v1/timer/stats", get(timer_stats))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth::require_token))
        .layer(axum::middleware::from_fn_with_state(state.clone(), body::deadline))
        .with_state(state)
}

async fn healthz() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

/// 200 once recovery has finished and while the timer pipeline runs; 503 otherwise (a timer
/// stage that stopped by itself means scheduled messages no longer fire until a restart).
async fn readyz(State(state): State<AppState>) -> Response {
    match state.core() {
        Ok(core) => match core.timer.failure() {
            None => Json(json!({"status": "ready"})).into_response(),
            Some(why) => ApiError::new(Code::Unavailable, format!("timer pipeline stopped: {why}")).into_response(),
        },
        Err(e) => e.into_response(),
    }
}

async fn timer_stats(State(state): State<AppState>) -> Result<Response, ApiError> {
    let s = state.core()?.timer.stats();
    let stages: serde_json::Map<String, serde_json::Value> = s
        .stages
        .iter()
        .map(|(name, st)| {
            (
                name.to_string(),
                json!({"queue_depth": st.queue_depth, "queue_capacity": st.queue_capacity, "processed": st.processed}),
            )
        })
        .collect();
    Ok(Json(json!({
        "pending_total": s.pending_total,
        "enqueue_lag": s.enqueue_lag,
        "dequeue_lag_ms": s.dequeue_lag_ms,
        "read_time_ms": s.read_time_ms,
        "stages": stages,
        "lateness_ms": {"count": s.lateness.count, "p50": s.lateness.p50, "p99": s.lateness.p99, "p999": s.lateness.p999, "max": s.lateness.max},
        "fired": s.fired,
        "cancelled": s.cancelled,
        "rolled": s.rolled,
        "late_after_downtime": s.late_after_downtime,
    }))
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
