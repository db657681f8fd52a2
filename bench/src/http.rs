//! The HTTP side of the load generator: one keep-alive client, request bodies, and the send loop
//! shared by `http-send` and the preload of `http-receive`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use serde::Deserialize;

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
    let r = client.get(format!("{base}/v1/topics")).send().await.map_err(|e| format!("list topics: {e}"))?;
    let bytes = r.bytes().await.map_err(|e| format!("list topics: {e}"))?;
    let list: TopicList = serde_json::from_slice(&bytes).map_err(|e| format!("list topics: {e}"))?;
    Ok(list.topics.iter().find(|t| t.name == topic).map_or(0, |t| t.messages))
}

/// What to send: `count` messages of `body_len` bytes, `batch` per request, from `concurrency`
/// tasks that take request numbers from one shared counter (so the total is exact).
#[derive(Debug, Clone, Copy)]
pub struct SendPlan {
    pub count: u64,
    pub batch: usize,
    pub body_len: usize,
    pub concurrency: usize,
}

pub struct SendOutcome {
    pub elapsed: Duration,
    pub requests: u64,
    /// Request latency (send to last response byte), microseconds.
    pub latency: Histogram<u64>,
}

/// Sends the plan to `topic`; any answer other than 201 fails the run with its body.
pub async fn send_all(
    client: &reqwest::Client,
    base: &str,
    topic: &str,
    plan: SendPlan,
) -> Result<SendOutcome, String> {
    let requests = plan.count.div_ceil(plan.batch as u64);
    let last_n = (plan.count - (requests - 1) * plan.batch as u64) as usize;
    let full = send_body(plan.batch, plan.body_len);
    let last = send_body(last_n, plan.body_len);
    let url: Arc<str> = format!("{base}/v1/topics/{topic}/messages").into();
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(plan.concurrency);
    for _ in 0..plan.concurrency {
        let (client, url, full, last, next) = (client.clone(), url.clone(), full.clone(), last.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut h = new_histogram();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= requests {
                    return Ok::<_, String>(h);
                }
                let body = if i + 1 == requests { last.clone() } else { full.clone() };
                let t0 = Instant::now();
                let r = client
                    .post(&*url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| format!("send: {e}"))?;
                let status = r.status();
                let answer = r.bytes().await.map_err(|e| format!("send: reading the answer: {e}"))?;
                record_us(&mut h, t0.elapsed());
                if status.as_u16() != 201 {
                    return Err(format!("send: {status}: {}", String::from_utf8_lossy(&answer)));
                }
            }
        }));
    }
    let mut latency = new_histogram();
    let mut first_err = None;
    for t in tasks {
        match t.await.map_err(|e| e.to_string()).and_then(|r| r) {
            Ok(h) => latency.add(&h).map_err(|e| e.to_string())?,
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    Ok(SendOutcome { elapsed: start.elapsed(), requests, latency })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_valid_json_of_the_right_shape() {
        let one: serde_json::Value = serde_json::from_slice(&send_body(1, 5)).unwrap();
        assert_eq!(one["body"], "xxxxx");
        let many: serde_json::Value = serde_json::from_slice(&send_body(3, 2)).unwrap();
        assert_eq!(many.as_array().map(Vec::len), Some(3));
        assert_eq!(many[2]["body"], "xx");
    }
}
