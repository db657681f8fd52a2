//! `GET /metrics`: Prometheus (OpenMetrics text) exposition, with the `prometheus-client` crate.
//!
//! Two kinds of figures:
//! - HTTP figures, recorded by a middleware on every request: `chime_http_requests_total`
//!   by route, method (the standard ones, else `other`) and status, `chime_http_request_duration_seconds` by route, and
//!   `chime_send_rejected_total` by error code (sends answered 4xx/5xx).
//! - Store and timer figures, read when scraped (a [`Collector`]) from what the store and the
//!   timer already keep: the hot path pays nothing for them. The lateness and fsync histograms
//!   are HdrHistograms read at fixed bounds.
//!
//! Routes are labelled by their pattern, never the raw path, so the label sets stay bounded;
//! parameters are written `:topic` rather than `{topic}` (braces inside label values are legal
//! but trip simple parsers). Unrouted requests are labelled `unmatched`.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::admission::Admission;
use super::error::ErrorCode;
use super::{AppState, Core};
use crate::group::GroupSummary;

/// The send route, whose refusals are counted by code.
const SEND_ROUTE: &str = "/v1/topics/:topic/messages";

/// Upper bounds of the lateness histogram, ms.
const LATENESS_BOUNDS_MS: &[u64] = &[0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 60_000];
/// Upper bounds of the fsync histogram, µs.
const FSYNC_BOUNDS_US: &[u64] =
    &[100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GroupLabels {
    topic: String,
    group: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabels {
    code: String,
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
    rejected: Family<CodeLabels, Counter>,
}

impl Metrics {
    /// Metrics whose store and timer figures come from `core` once it is set (after recovery).
    pub fn new(core: Arc<OnceLock<Core>>, admission: Arc<Admission>) -> Self {
        let mut registry = Registry::with_prefix("chime");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register("http_requests", "HTTP requests answered, by route, method and status", requests.clone());
        // 0.25 ms .. ~4 s.
        let latency = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_25, 2.0, 15))
        });
        registry.register("http_request_duration_seconds", "HTTP request latency, by route", latency.clone());
        let rejected = Family::<CodeLabels, Counter>::default();
        registry.register(
            "send_rejected",
            "Sends refused, by error code (BUSY, MESSAGE_TOO_LARGE, ...)",
            rejected.clone(),
        );
        registry.register_collector(Box::new(ServiceCollector { core, admission }));
        Self { registry, requests, latency, rejected }
    }

    fn observe(&self, route: &str, method: &str, status: u16, code: Option<&str>, seconds: f64) {
        let labels = RequestLabels { route: route.to_string(), method: method.to_string(), status: status.to_string() };
        self.requests.get_or_create(&labels).inc();
        self.latency.get_or_create(&RouteLabels { route: route.to_string() }).observe(seconds);
        if let (SEND_ROUTE, Some(code)) = (route, code) {
            self.rejected.get_or_create(&CodeLabels { code: code.to_string() }).inc();
        }
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

/// The method as a label: the standard methods by name, any other as `other`, so a client
/// inventing method names (authenticated or not) cannot add series without bound.
fn method_label(m: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "other",
    }
}

/// Middleware: counts and times every request.
pub async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().replace('{', ":").replace('}', ""));
    let method = method_label(req.method()).to_string();
    let resp = next.run(req).await;
    let code = resp.extensions().get::<ErrorCode>().map(|c| c.0);
    state.metrics().observe(&route, &method, resp.status().as_u16(), code, started.elapsed().as_secs_f64());
    resp
}

/// Prometheus exposition (OpenMetrics text) of the timer's figures and the HTTP and store
/// counters.
#[utoipa::path(get, path = "/metrics", tag = "meta",
    responses((status = 200, description = "OpenMetrics text 1.0.0 (Prometheus reads it)",
        content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8", body = String)))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    let body = state.metrics().render();
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body).into_response()
}

/// Reads the store's and the timer's figures at scrape time.
struct ServiceCollector {
    core: Arc<OnceLock<Core>>,
    admission: Arc<Admission>,
}

impl std::fmt::Debug for ServiceCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceCollector").field("ready", &self.core.get().is_some()).finish()
    }
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> std::fmt::Result {
    let g = ConstGauge::new(v);
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let c = ConstCounter::new(v);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

/// A histogram from cumulative counts at `bounds` (in units of `scale` seconds).
fn histogram(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    bounds: &[u64],
    scale: f64,
    h: &crate::histogram::Cumulative,
) -> std::fmt::Result {
    let mut buckets = Vec::with_capacity(bounds.len() + 1);
    let mut below = 0;
    for (&b, &c) in bounds.iter().zip(&h.counts) {
        buckets.push((b as f64 * scale, c - below)); // the encoder sums them up again
        below = c;
    }
    buckets.push((f64::MAX, h.count - below));
    let mut m = e.encode_descriptor(name, help, None, MetricType::Histogram)?;
    m.encode_histogram::<NoLabelSet>(h.sum * scale, h.count, &buckets, None)
}

impl Collector for ServiceCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let held = self.admission.held();
        gauge(
            &mut e,
            "http_inflight_request_bytes",
            "Request-body bytes the sends in progress hold (admission.max_inflight_bytes bounds it)",
            held.arrived as i64,
        )?;
        gauge(
            &mut e,
            "http_promised_request_bytes",
            "Request-body bytes declared by sends in progress and not yet arrived",
            held.promised as i64,
        )?;
        counter(
            &mut e,
            "http_request_promises_revoked",
            "Sends whose declared body stopped counting because they were slow and room was needed",
            held.revoked,
        )?;
        let Some(core) = self.core.get() else {
            return gauge(&mut e, "ready", "1 once recovery has finished and the timer runs", 0);
        };
        let ready = core.timer.failure().is_none() && core.store.check_writable().is_ok();
        gauge(
            &mut e,
            "ready",
            "1 once recovery has finished, the timer runs and the store takes writes",
            ready as i64,
        )?;
        let s = core.timer.stats();
        gauge(&mut e, "timer_pending", "Scheduled messages not yet fired or cancelled", s.pending_total)?;
        gauge(&mut e, "timer_enqueue_lag", "Scheduled messages stored but not yet in the wheel", s.enqueue_lag as i64)?;
        let lag = ConstGauge::new(s.dequeue_lag_ms as f64 / 1e3);
        let help = "How far the wheel's read pointer is behind the clock";
        lag.encode(e.encode_descriptor("timer_dequeue_lag_seconds", help, None, lag.metric_type())?)?;
        for (name, help, f) in [
            (
                "timer_stage_queue_depth",
                "Items waiting in front of each timer stage",
                (|st| st.queue_depth) as fn(&crate::timer::StageStats) -> u64,
            ),
            (
                "timer_stage_queue_capacity",
                "Capacity of the queue in front of each timer stage (0: on disk, unbounded)",
                |st| st.queue_capacity,
            ),
        ] {
            let mut m = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (stage, st) in &s.stages {
                ConstGauge::new(f(st) as i64).encode(m.encode_family(&[("stage", *stage)])?)?;
            }
        }
        let mut m = e.encode_descriptor(
            "timer_stage_processed",
            "Items each timer stage has taken",
            None,
            MetricType::Counter,
        )?;
        for (stage, st) in &s.stages {
            ConstCounter::new(st.processed).encode(m.encode_family(&[("stage", *stage)])?)?;
        }
        counter(&mut e, "timer_fired", "Scheduled messages stored for their topic", s.fired)?;
        counter(&mut e, "timer_cancelled", "Scheduled messages cancelled", s.cancelled)?;
        counter(&mut e, "timer_rolled", "Far-future messages re-placed in the wheel (rolls)", s.rolled)?;
        counter(
            &mut e,
            "timer_late_after_downtime",
            "Messages fired over 1 s late because they fell due while the server was down",
            s.late_after_downtime,
        )?;
        counter(
            &mut e,
            "timer_refused_slot_full",
            "Scheduled messages refused because their slot was full (timer.max_per_slot)",
            s.refused_slot_full,
        )?;
        let lateness = core.timer.lateness_buckets(LATENESS_BOUNDS_MS);
        histogram(
            &mut e,
            "timer_lateness_seconds",
            "Time a message became visible minus its deliver time",
            LATENESS_BOUNDS_MS,
            1e-3,
            &lateness,
        )?;
        gauge(&mut e, "store_log_bytes", "Bytes in the commit log", core.store.log_bytes() as i64)?;
        gauge(
            &mut e,
            "store_topics",
            "Topics, the timer's system topic included",
            core.store.topics().list().len() as i64,
        )?;
        let s = core.retention.report();
        gauge(
            &mut e,
            "storage_disk_total_bytes",
            "Size of the data directory's file system",
            s.disk.total_bytes as i64,
        )?;
        gauge(&mut e, "storage_disk_free_bytes", "Space available to chime on it", s.disk.free_bytes as i64)?;
        gauge(&mut e, "storage_commitlog_segments", "Commit-log segment files", s.commitlog.segments as i64)?;
        gauge(
            &mut e,
            "storage_pinned_segments",
            "Segments kept beyond retention by pending messages",
            s.pinned.segments as i64,
        )?;
        gauge(
            &mut e,
            "storage_pinned_bytes",
            "Bytes kept beyond retention by pending messages",
            s.pinned.bytes as i64,
        )?;
        counter(&mut e, "storage_reclaimed_segments", "Commit-log segments reclaimed", s.reclaimed.segments)?;
        counter(&mut e, "storage_reclaimed_bytes", "Commit-log bytes reclaimed", s.reclaimed.bytes)?;
        let (index_segs, index_bytes) = core.store.index_reclaimed();
        counter(&mut e, "storage_index_reclaimed_segments", "Consume-queue segments reclaimed", index_segs)?;
        counter(&mut e, "storage_index_reclaimed_bytes", "Consume-queue bytes reclaimed", index_bytes)?;
        let t = &s.timer;
        gauge(&mut e, "storage_timer_log_segments", "Timer-log segment files", t.timer_log_segments as i64)?;
        gauge(&mut e, "storage_state_files", "Timer state-cell files", t.state_files as i64)?;
        gauge(&mut e, "storage_moved_ids", "Carried-forward ids that lead to a copy", t.moved_ids as i64)?;
        counter(&mut e, "storage_timer_log_reclaimed_bytes", "Timer-log bytes reclaimed", t.timer_log_reclaimed_bytes)?;
        counter(&mut e, "storage_state_reclaimed_bytes", "State-cell bytes reclaimed", t.state_reclaimed_bytes)?;
        counter(
            &mut e,
            "storage_carried_forward",
            "Pending scheduled messages carried forward out of reclaimed segments",
            s.carried_forward,
        )?;
        gauge(
            &mut e,
            "storage_accepting",
            "1 while sends are accepted, 0 above store.disk_hard_limit",
            i64::from(s.accepting),
        )?;
        // Per consumer group: the lag operators alert on, and what left the group otherwise.
        let mut rows = Vec::new();
        for t in core.store.topics().list() {
            for g in core.groups.list(&t) {
                rows.push((GroupLabels { topic: t.name.clone(), group: g.name.clone() }, g));
            }
        }
        let each =
            |e: &mut DescriptorEncoder, name: &str, help: &str, ty: MetricType, f: &dyn Fn(&GroupSummary) -> u64| {
                let mut m = e.encode_descriptor(name, help, None, ty)?;
                for (labels, g) in &rows {
                    let enc = m.encode_family(labels)?;
                    match ty {
                        MetricType::Counter => ConstCounter::new(f(g)).encode(enc)?,
                        _ => ConstGauge::new(f(g) as i64).encode(enc)?,
                    }
                }
                Ok::<(), std::fmt::Error>(())
            };
        each(
            &mut e,
            "group_backlog",
            "Messages visible to the group, not handed out (consumer lag)",
            MetricType::Gauge,
            &|g| g.backlog,
        )?;
        each(&mut e, "group_in_flight", "Messages handed out, neither acked nor expired", MetricType::Gauge, &|g| {
            g.in_flight
        })?;
        each(
            &mut e,
            "group_dead_lettered",
            "Messages moved to the group's dead letter topic",
            MetricType::Counter,
            &|g| g.dead_lettered,
        )?;
        each(
            &mut e,
            "group_expired",
            "Messages the group never received: reclaimed first",
            MetricType::Counter,
            &|g| g.expired,
        )?;
        each(
            &mut e,
            "group_held",
            "FIFO groups: messages held behind a message of their message group",
            MetricType::Gauge,
            &|g| g.held,
        )?;
        each(
            &mut e,
            "group_blocked_message_groups",
            "FIFO groups: message groups waiting for a message out",
            MetricType::Gauge,
            &|g| g.blocked,
        )?;
        // Transactions: what is open, how they ended, the checks handed out.
        let txns = core.broker.transactions_table();
        let (prepared, oldest_ms) = txns.prepared(core.store.clock().now_ms());
        gauge(&mut e, "transactions_prepared", "Transactions prepared and not resolved", prepared as i64)?;
        gauge(
            &mut e,
            "transactions_oldest_prepared_age_seconds",
            "Age of the oldest prepared transaction (0 if none)",
            oldest_ms / 1000,
        )?;
        let c = &txns.counters;
        let n = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        counter(&mut e, "transactions_committed", "Transactions committed", n(&c.committed))?;
        counter(&mut e, "transactions_rolled_back", "Transactions rolled back", n(&c.rolled_back))?;
        counter(
            &mut e,
            "transactions_resolved_by_timeout",
            "Transactions resolved by transaction.unresolved after check_max checks",
            n(&c.resolved_by_timeout),
        )?;
        counter(&mut e, "transactions_checks", "Checks handed out to producers", n(&c.checks))?;
        let fsync = core.store.fsync_buckets(FSYNC_BOUNDS_US);
        histogram(&mut e, "store_fsync_seconds", "Commit-log fsync latency", FSYNC_BOUNDS_US, 1e-6, &fsync)?;
        Ok(())
    }
}
