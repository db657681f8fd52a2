//! Shared test harness: an in-process chime on 127.0.0.1:0 with the `test` profile in a
//! temporary directory, and a small JSON client.
#![allow(dead_code)]

pub mod binary;
pub mod client;
pub mod consumer;
pub mod lifecycle;
pub mod metrics;

use std::path::Path;
use std::sync::Arc;

use chime::clock::{SharedClock, SystemClock};
use chime::config::Config;
use chime::server::{start, Running};
use serde_json::Value;

pub fn test_config(dir: &Path) -> Config {
    let text = chime::config::BUILTIN_PROFILES.iter().find(|(n, _)| *n == "test").unwrap().1;
    let mut c = Config::from_profile_str(text).unwrap();
    c.listen = "127.0.0.1:0".into();
    c.data_dir = dir.to_path_buf();
    c
}

pub struct TestServer {
    pub running: Option<Running>,
    pub base: String,
    pub http: reqwest::Client,
}

impl TestServer {
    pub async fn start(config: &Config) -> Self {
        Self::start_with_clock(config, Arc::new(SystemClock)).await
    }

    pub async fn start_with_clock(config: &Config, clock: SharedClock) -> Self {
        let running = start(config, clock).await.expect("server starts");
        assert!(running.wait_ready().await, "recovery failed");
        let base = format!("http://{}", running.addr);
        Self { running: Some(running), base, http: reqwest::Client::new() }
    }

    pub async fn stop(mut self) {
        self.running.take().unwrap().stop().await.expect("clean stop");
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Sends `method path` with an optional JSON body (raw string); returns status and JSON.
    pub async fn call(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self.http.request(m, self.url(path));
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b.to_string());
        }
        let resp = req.send().await.expect("request sent");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let json =
            if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
        (status, json)
    }

    /// Polls `/v1/timer/stats` until `done` holds (it may assert on what it sees meanwhile);
    /// returns the stats that satisfied it. Fails after `secs` seconds, showing the last stats.
    #[allow(dead_code)] // not every test binary polls the timer
    pub async fn wait_stats(&self, what: &str, secs: u64, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            let (_, st) = self.call("GET", "/v1/timer/stats", None).await;
            if done(&st) {
                return st;
            }
            assert!(std::time::Instant::now() < deadline, "timed out after {secs} s waiting for {what}: {st}");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    pub async fn send(&self, topic: &str, body: Value) -> (u16, Value) {
        self.call("POST", &format!("/v1/topics/{topic}/messages"), Some(&body.to_string())).await
    }

    pub async fn receive(&self, topic: &str, group: &str, body: Value) -> Vec<Value> {
        let (s, v) =
            self.call("POST", &format!("/v1/topics/{topic}/groups/{group}/receive"), Some(&body.to_string())).await;
        assert_eq!(s, 200, "{v}");
        v["messages"].as_array().unwrap().clone()
    }

    pub async fn ack(&self, topic: &str, group: &str, msgs: &[Value]) -> Value {
        let handles: Vec<_> = msgs.iter().map(|m| m["receipt_handle"].clone()).collect();
        let body = serde_json::json!({ "receipt_handles": handles });
        let (s, v) =
            self.call("POST", &format!("/v1/topics/{topic}/groups/{group}/ack"), Some(&body.to_string())).await;
        assert_eq!(s, 200, "{v}");
        v
    }
}

/// Asserts the API.md error shape and code.
pub fn assert_error(status: u16, body: &Value, want_status: u16, want_code: &str) {
    assert_eq!(status, want_status, "body: {body}");
    assert_eq!(body["error"]["code"], want_code, "body: {body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "body: {body}");
}

/// Opens a store in-process, retrying while a store dropped just before still holds the
/// directory lock (its flusher may hold it during a flush; a crashed process would release it
/// at once).
pub fn open_store(opts: chime::store::StoreOptions, clock: SharedClock) -> Arc<chime::store::Store> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match chime::store::Store::open(opts.clone(), clock.clone()) {
            Ok(s) => return s,
            Err(chime::store::StoreError::Lock(_)) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            Err(e) => panic!("store does not open: {e}"),
        }
    }
}

/// The timer options of the in-process tests: 1 s slots, a 1 s lookahead, checkpoints every
/// 50 ms, small timer-log segments.
pub fn timer_options(dir: &Path, slots: u64, queue_capacity: usize) -> chime::timer::TimerOptions {
    chime::timer::TimerOptions {
        dir: dir.join("timer"),
        geometry: chime::timer::Geometry::new(1000, slots),
        lookahead_ms: 1000,
        timer_log_segment_units: 4096,
        state_cells_per_file: chime::timer::state::CELLS_PER_FILE,
        checkpoint_interval: std::time::Duration::from_millis(50),
        queue_capacity,
        default_queues: 2,
        max_per_slot: None,
        progress_interval: None,
        lag_warn_ms: 5_000,
    }
}
