//! The HTTP side of the load generator: one keep-alive client, request bodies, the send loop
//! (normal or scheduled messages, as fast as possible or paced) and a consumer's receive and
//! ack calls, shared by every HTTP scenario.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use serde::Deserialize;
use serde_json::Value;

use crate::progress;
use crate::report::{new_histogram, record_us};

/// One client for the whole run: connections are kept alive and reused by every task.
pub fn client(concurrency: usize) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(concurrency.max(1))
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| format!("http client: {e}"))
}

/// Milliseconds since the Unix epoch, with µs precision (the server stamps messages with the
/// same clock).
pub fn now_ms_f64() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_micros() as f64 / 1000.0)
}

pub fn now_ms() -> i64 {
    now_ms_f64() as i64
}

/// `POST url` with a JSON body; any status but `want` fails with the answer's body. Returns the
/// answer's bytes.
pub async fn post(
    client: &reqwest::Client,
    url: &str,
    body: impl Into<reqwest::Body>,
    want: u16,
    what: &str,
) -> Result<Bytes, String> {
    let r = client
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| format!("{what}: {e}"))?;
    let status = r.status();
    let bytes = r.bytes().await.map_err(|e| format!("{what}: reading the answer: {e}"))?;
    if status.as_u16() != want {
        return Err(format!("{what}: {status}: {}", String::from_utf8_lossy(&bytes)));
    }
    Ok(bytes)
}

/// `GET url` as JSON.
pub async fn get_json(client: &reqwest::Client, url: &str, what: &str) -> Result<Value, String> {
    let r = client.get(url).send().await.map_err(|e| format!("{what}: {e}"))?;
    let status = r.status();
    let bytes = r.bytes().await.map_err(|e| format!("{what}: {e}"))?;
    if !status.is_success() {
        return Err(format!("{what}: {status}: {}", String::from_utf8_lossy(&bytes)));
    }
    serde_json::from_slice(&bytes).map_err(|e| format!("{what}: {e}"))
}

/// `GET /v1/timer/stats`.
pub async fn timer_stats(client: &reqwest::Client, base: &str) -> Result<Value, String> {
    get_json(client, &format!("{base}/v1/timer/stats"), "timer stats").await
}

/// A send body: one message object for a batch of 1, else an array of `n` of them.
pub fn send_body(n: usize, body_len: usize) -> Bytes {
    let one = format!("{{\"body\":\"{}\"}}", "x".repeat(body_len));
    if n == 1 {
        return Bytes::from(one);
    }
    let mut s = String::with_capacity(n * (one.len() + 1) + 2);
    s.push('[');
    for i in 0..n {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&one);
    }
    s.push(']');
    Bytes::from(s)
}

/// The body of one scheduled send: messages `from..to` with their deliver times, as an array
/// (or one object when `single`).
pub fn scheduled_body(from: u64, to: u64, body_len: usize, single: bool, deliver_at: impl Fn(u64) -> i64) -> Bytes {
    let body = "x".repeat(body_len);
    let mut s = String::with_capacity((to - from) as usize * (body_len + 40) + 2);
    let single = single && to - from == 1;
    if !single {
        s.push('[');
    }
    for i in from..to {
        if i > from {
            s.push(',');
        }
        s.push_str("{\"body\":\"");
        s.push_str(&body);
        s.push_str("\",\"deliver_at_ms\":");
        s.push_str(&deliver_at(i).to_string());
        s.push('}');
    }
    if !single {
        s.push(']');
    }
    Bytes::from(s)
}

/// The business key of message number `i` in the keyed scenarios.
pub fn key(i: u64) -> String {
    format!("order-{i}")
}

/// `PUT /v1/topics/{topic}` with the queue count; 200 or 201 both do.
pub async fn create_topic(client: &reqwest::Client, base: &str, topic: &str, queues: u16) -> Result<(), String> {
    let r = client
        .put(format!("{base}/v1/topics/{topic}"))
        .header("content-type", "application/json")
        .body(format!("{{\"queues\":{queues}}}"))
        .send()
        .await
        .map_err(|e| format!("create topic: {e}"))?;
    let status = r.status();
    if !status.is_success() {
        return Err(format!("create topic: {status}: {}", r.text().await.unwrap_or_default()));
    }
    Ok(())
}

#[derive(Deserialize)]
struct TopicList {
    topics: Vec<TopicInfo>,
}

#[derive(Deserialize)]
struct TopicInfo {
    name: String,
    messages: u64,
}

/// Messages ever stored in `topic`, from `GET /v1/topics` (0 if it does not exist).
pub async fn topic_messages(client: &reqwest::Client, base: &str, topic: &str) -> Result<u64, String> {
    let v = get_json(client, &format!("{base}/v1/topics"), "list topics").await?;
    let list: TopicList = serde_json::from_value(v).map_err(|e| format!("list topics: {e}"))?;
    Ok(list.topics.iter().find(|t| t.name == topic).map_or(0, |t| t.messages))
}

/// A function of a message or request number (a deliver time, a send time), shared by tasks.
pub type Schedule = Arc<dyn Fn(u64) -> i64 + Send + Sync>;

/// What to send: `count` messages of `body_len` bytes, `batch` per request, from `concurrency`
/// tasks that take request numbers from one shared counter (so the total is exact).
#[derive(Clone)]
pub struct SendPlan {
    pub count: u64,
    pub batch: usize,
    pub body_len: usize,
    pub concurrency: usize,
    /// Scheduled messages: the deliver time (Unix ms) of message `i`. `None`: normal messages.
    pub deliver_at: Option<Schedule>,
    /// Paced sends: request `k` is not sent before this wall-clock time (Unix ms). `None`: as
    /// fast as the server answers.
    pub pace: Option<Schedule>,
    /// Label of the progress bar.
    pub label: &'static str,
    /// Keyed messages: message `i` carries the business key `key(first_key + i)` ([`key`]).
    /// `None`: no keys.
    pub first_key: Option<u64>,
    /// Message `i` is in message group `mg{i % n}`. `None`: none.
    pub message_groups: Option<u64>,
    /// Message `i` carries the dedup_id `key(first + i)`. `None`: none.
    pub first_dedup: Option<u64>,
    /// The status every answer must have (201; 200 for repeats of dedup ids).
    pub want: u16,
}

impl SendPlan {
    /// Normal messages, as fast as possible.
    pub fn normal(count: u64, batch: usize, body_len: usize, concurrency: usize) -> Self {
        Self {
            count,
            batch,
            body_len,
            concurrency,
            deliver_at: None,
            pace: None,
            label: "send",
            first_key: None,
            message_groups: None,
            first_dedup: None,
            want: 201,
        }
    }

    /// Scheduled messages in batches of `batch`, as fast as possible.
    pub fn scheduled(count: u64, batch: usize, body_len: usize, concurrency: usize, deliver_at: Schedule) -> Self {
        Self { deliver_at: Some(deliver_at), ..Self::normal(count, batch, body_len, concurrency) }
    }

    pub fn label(self, label: &'static str) -> Self {
        Self { label, ..self }
    }

    /// Each message carries one business key, `key(first + i)` for message `i`.
    pub fn keyed(self, first: u64) -> Self {
        Self { first_key: Some(first), ..self }
    }

    /// Message `i` is in message group `mg{i % n}`.
    pub fn grouped(self, n: u64) -> Self {
        Self { message_groups: Some(n), ..self }
    }

    /// Message `i` carries the dedup_id `key(first + i)`.
    pub fn deduplicated(self, first: u64) -> Self {
        Self { first_dedup: Some(first), ..self }
    }

    /// Every answer must have `status`.
    pub fn expect(self, status: u16) -> Self {
        Self { want: status, ..self }
    }

    /// Whether each message's body is built per request (it has per-message fields).
    fn per_message(&self) -> bool {
        self.first_key.is_some() || self.message_groups.is_some() || self.first_dedup.is_some()
    }

    fn requests(&self) -> u64 {
        self.count.div_ceil(self.batch as u64)
    }

    /// The body of request `k`.
    fn body(&self, k: u64, full: &Bytes, last: &Bytes) -> Bytes {
        let requests = self.requests();
        let b = self.batch as u64;
        let (from, to) = (k * b, ((k + 1) * b).min(self.count));
        match (&self.deliver_at, self.per_message()) {
            (None, false) if k + 1 == requests => last.clone(),
            (None, false) => full.clone(),
            (Some(d), false) => scheduled_body(from, to, self.body_len, self.batch == 1, |i| d(i)),
            (_, true) => self.messages_body(from, to),
        }
    }

    /// Messages `from..to` (always an array) with their per-message fields.
    fn messages_body(&self, from: u64, to: u64) -> Bytes {
        use std::fmt::Write as _;
        let body = "x".repeat(self.body_len);
        let mut s = String::with_capacity((to - from) as usize * (self.body_len + 96) + 2);
        s.push('[');
        for i in from..to {
            if i > from {
                s.push(',');
            }
            let _ = write!(s, "{{\"body\":\"{body}\"");
            if let Some(first) = self.first_key {
                let _ = write!(s, ",\"keys\":[\"{}\"]", key(first + i));
            }
            if let Some(n) = self.message_groups {
                let _ = write!(s, ",\"message_group\":\"mg{}\"", i % n);
            }
            if let Some(first) = self.first_dedup {
                let _ = write!(s, ",\"dedup_id\":\"{}\"", key(first + i));
            }
            if let Some(d) = &self.deliver_at {
                let _ = write!(s, ",\"deliver_at_ms\":{}", d(i));
            }
            s.push('}');
        }
        s.push(']');
        Bytes::from(s)
    }
}

pub struct SendOutcome {
    pub elapsed: Duration,
    pub requests: u64,
    /// Request latency (send to last response byte), microseconds.
    pub latency: Histogram<u64>,
    /// Paced sends: the latest a request went out after its time (ms); 0 when not paced.
    pub max_behind_ms: f64,
}

/// Sends the plan to `topic`; any answer other than 201 fails the run with its body.
pub async fn send_all(
    client: &reqwest::Client,
    base: &str,
    topic: &str,
    plan: SendPlan,
) -> Result<SendOutcome, String> {
    if plan.count == 0 || plan.batch == 0 || plan.concurrency == 0 {
        return Err("send: count, batch and concurrency must be at least 1".into());
    }
    let requests = plan.requests();
    let last_n = (plan.count - (requests - 1) * plan.batch as u64) as usize;
    let (full, last) = match (&plan.deliver_at, plan.per_message()) {
        (None, false) => (send_body(plan.batch, plan.body_len), send_body(last_n, plan.body_len)),
        _ => (Bytes::new(), Bytes::new()),
    };
    let url: Arc<str> = format!("{base}/v1/topics/{topic}/messages").into();
    let next = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let _bar = progress::track(plan.label, plan.count, sent.clone());
    let plan = Arc::new(plan);
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(plan.concurrency);
    for _ in 0..plan.concurrency {
        let (client, url, full, last, next, sent, plan) =
            (client.clone(), url.clone(), full.clone(), last.clone(), next.clone(), sent.clone(), plan.clone());
        tasks.push(tokio::spawn(async move {
            let mut h = new_histogram();
            let mut behind = 0f64;
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= requests {
                    return Ok::<_, String>((h, behind));
                }
                let body = plan.body(k, &full, &last);
                if let Some(pace) = &plan.pace {
                    let at = pace(k) as f64;
                    let wait = at - now_ms_f64();
                    if wait > 0.0 {
                        tokio::time::sleep(Duration::from_micros((wait * 1000.0) as u64)).await;
                    } else {
                        behind = behind.max(-wait);
                    }
                }
                let t0 = Instant::now();
                post(&client, &url, body, plan.want, "send").await?;
                record_us(&mut h, t0.elapsed());
                let n = ((k + 1) * plan.batch as u64).min(plan.count) - k * plan.batch as u64;
                sent.fetch_add(n, Ordering::Relaxed);
            }
        }));
    }
    let mut latency = new_histogram();
    let mut max_behind_ms = 0f64;
    let mut first_err = None;
    for t in tasks {
        match t.await.map_err(|e| e.to_string()).and_then(|r| r) {
            Ok((h, b)) => {
                latency.add(&h).map_err(|e| e.to_string())?;
                max_behind_ms = max_behind_ms.max(b);
            }
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    Ok(SendOutcome { elapsed: start.elapsed(), requests, latency, max_behind_ms })
}

/// A receive answer (the fields the scenarios read).
#[derive(Deserialize)]
pub struct Received<'a> {
    #[serde(borrow)]
    pub messages: Vec<ReceivedMessage<'a>>,
}

#[derive(Deserialize)]
pub struct ReceivedMessage<'a> {
    pub message_id: &'a str,
    pub receipt_handle: &'a str,
    #[serde(default)]
    pub deliver_at_ms: i64,
    #[serde(default)]
    pub visible_at_ms: i64,
}

impl ReceivedMessage<'_> {
    pub fn id(&self) -> Result<u128, String> {
        u128::from_str_radix(self.message_id, 16).map_err(|_| format!("bad message id {}", self.message_id))
    }
}

#[derive(Deserialize)]
struct Acked {
    acked: u64,
}

/// One consumer of a group: the receive and ack URLs and the receive request.
#[derive(Clone)]
pub struct Consumer {
    receive_url: Arc<str>,
    ack_url: Arc<str>,
    receive_body: Bytes,
}

impl Consumer {
    /// `wait_ms`: long poll (`None`: answer at once).
    pub fn new(
        base: &str,
        topic: &str,
        group: &str,
        max_messages: usize,
        wait_ms: Option<u64>,
        invisible_ms: u64,
    ) -> Self {
        let wait = wait_ms.map_or(String::new(), |w| format!(",\"wait_ms\":{w}"));
        Self {
            receive_url: format!("{base}/v1/topics/{topic}/groups/{group}/receive").into(),
            ack_url: format!("{base}/v1/topics/{topic}/groups/{group}/ack").into(),
            receive_body: Bytes::from(format!(
                "{{\"max_messages\":{max_messages}{wait},\"invisible_ms\":{invisible_ms}}}"
            )),
        }
    }

    /// One receive request; the answer's bytes (parse them with [`parse_received`]).
    pub async fn receive(&self, client: &reqwest::Client) -> Result<Bytes, String> {
        post(client, &self.receive_url, self.receive_body.clone(), 200, "receive").await
    }

    /// Acks every message of `got`; fails unless all of them were acked.
    pub async fn ack(&self, client: &reqwest::Client, got: &Received<'_>) -> Result<(), String> {
        let n = got.messages.len();
        let mut body = String::with_capacity(32 + n * 64);
        body.push_str("{\"receipt_handles\":[");
        for (i, m) in got.messages.iter().enumerate() {
            if i > 0 {
                body.push(',');
            }
            body.push('"');
            body.push_str(m.receipt_handle);
            body.push('"');
        }
        body.push_str("]}");
        let bytes = post(client, &self.ack_url, body, 200, "ack").await?;
        let acked: Acked = serde_json::from_slice(&bytes).map_err(|e| format!("ack: bad answer: {e}"))?;
        if acked.acked != n as u64 {
            return Err(format!("ack: {} of {n} handles acked: {}", acked.acked, String::from_utf8_lossy(&bytes)));
        }
        Ok(())
    }
}

pub fn parse_received(bytes: &[u8]) -> Result<Received<'_>, String> {
    serde_json::from_slice(bytes).map_err(|e| format!("receive: bad answer: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_valid_json_of_the_right_shape() {
        let one: Value = serde_json::from_slice(&send_body(1, 5)).unwrap();
        assert_eq!(one["body"], "xxxxx");
        let many: Value = serde_json::from_slice(&send_body(3, 2)).unwrap();
        assert_eq!(many.as_array().map(Vec::len), Some(3));
        assert_eq!(many[2]["body"], "xx");
    }

    #[test]
    fn scheduled_bodies() {
        let b = scheduled_body(5, 8, 3, false, |i| 100 + i as i64);
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v.as_array().map(Vec::len), Some(3));
        assert_eq!(v[0]["deliver_at_ms"], 105);
        assert_eq!(v[2]["body"], "xxx");
        let one: Value = serde_json::from_slice(&scheduled_body(7, 8, 1, true, |_| 9)).unwrap();
        assert_eq!(one["deliver_at_ms"], 9);
        let arr: Value = serde_json::from_slice(&scheduled_body(7, 8, 1, false, |_| 9)).unwrap();
        assert_eq!(arr.as_array().map(Vec::len), Some(1));
    }

    #[test]
    fn plan_bodies_cover_every_message_once() {
        let d: Schedule = Arc::new(|i| 1000 + i as i64);
        let p = SendPlan::scheduled(2500, 1000, 1, 1, d);
        let (full, last) = (Bytes::new(), Bytes::new());
        let mut seen = Vec::new();
        for k in 0..p.requests() {
            let v: Value = serde_json::from_slice(&p.body(k, &full, &last)).unwrap();
            seen.extend(v.as_array().unwrap().iter().map(|m| m["deliver_at_ms"].as_i64().unwrap()));
        }
        assert_eq!(seen, (1000..3500).collect::<Vec<i64>>());
    }

    #[test]
    fn receive_answers_parse() {
        let a = br#"{"messages":[{"message_id":"0a","receipt_handle":"h","deliver_at_ms":5,"visible_at_ms":6,"body":"x"}]}"#;
        let r = parse_received(a).unwrap();
        assert_eq!(r.messages[0].id().unwrap(), 10);
        assert_eq!((r.messages[0].deliver_at_ms, r.messages[0].visible_at_ms), (5, 6));
        let c = Consumer::new("http://h", "t", "g", 10, Some(1000), 5);
        let v: Value = serde_json::from_slice(&c.receive_body).unwrap();
        assert_eq!((v["max_messages"].as_u64(), v["wait_ms"].as_u64()), (Some(10), Some(1000)));
    }
}
