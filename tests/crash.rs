//! Crash tests of the `chime` binary: SIGKILL while clients are writing, restart on the same
//! data directory, and check that every send answered 201 before the kill is delivered (API.md:
//! "A 201 means the message is stored and will be delivered (at least once), whatever happens
//! next"), and that consumer-group progress survives a crash.
//!
//! The load is driven by a fixed-seed PRNG (batch sizes, kill times), so runs are reproducible
//! up to scheduling (CRASH_TEST_SEED=<u64> tries another schedule). Load bodies are padded
//! (CRASH_TEST_PAD, default 1000 bytes) so the commit log rolls past an 8 MiB segment boundary
//! during the rounds.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use common::binary::{DumpLogsOnPanic, Proc, Rng};
use common::client::{self, ack, body_of, post, receive, Until};
use serde_json::{json, Value};

const TOPIC: &str = "crash";
const WORKERS: usize = 4;
const ROUNDS: usize = 3;
const DEFAULT_PAD: usize = 1000;

// ---------------------------------------------------------------------------------------------
// Client helpers
// ---------------------------------------------------------------------------------------------

/// A load body without its padding, for messages.
fn short(body: &str) -> &str {
    body.trim_end_matches('.')
}

/// Receives the whole topic with `group` until it is quiet, acking as it goes. Returns
/// (body, message_id) in delivery order.
async fn drain(http: &reqwest::Client, base: &str, topic: &str, group: &str) -> Vec<(String, String)> {
    let msgs = client::drain(http, base, topic, group, Until::Quiet).await;
    msgs.iter().map(|m| (body_of(m), m["message_id"].as_str().unwrap_or_default().to_string())).collect()
}

// ---------------------------------------------------------------------------------------------
// Load
// ---------------------------------------------------------------------------------------------

/// Filler appended to every load body so the commit log grows past segment boundaries
/// (8 MiB in the test profile) during the test; CRASH_TEST_PAD=<bytes> overrides it.
fn padding() -> &'static str {
    static PAD: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PAD.get_or_init(|| {
        let n = std::env::var("CRASH_TEST_PAD").ok().and_then(|s| s.parse().ok()).unwrap_or(DEFAULT_PAD);
        ".".repeat(n)
    })
}

#[derive(Default)]
struct WorkerLog {
    /// Every body put on the wire (whatever the answer).
    attempted: Vec<String>,
    /// Bodies answered 201, with the message id when the answer body was read.
    acked: Vec<(String, Option<String>)>,
    /// Non-201 answers: (status, answer).
    rejected: Vec<(u16, String)>,
    /// Requests sent.
    requests: usize,
    /// Why the worker stopped.
    stopped_by: String,
}

/// Sends to TOPIC in a loop, alternately one message and a batch of 1..=50, until a request
/// fails (the server was killed) or `stop` is set.
async fn worker(
    http: reqwest::Client,
    base: String,
    round: usize,
    w: usize,
    seed: u64,
    stop: Arc<AtomicBool>,
) -> WorkerLog {
    let mut rng = Rng::new(seed);
    let mut log = WorkerLog::default();
    let url = format!("{base}/v1/topics/{TOPIC}/messages");
    let mut seq = 0u64;
    for i in 0u64.. {
        if stop.load(Ordering::Relaxed) {
            log.stopped_by = "stop flag (the server was not killed?)".into();
            break;
        }
        let single = i % 2 == 0;
        let n = if single { 1 } else { rng.range(1, 50) };
        let bodies: Vec<String> = (0..n)
            .map(|_| {
                seq += 1;
                format!("r{round}-w{w}-{seq}{}", padding())
            })
            .collect();
        let payload = if single {
            json!({"body": bodies[0]})
        } else {
            Value::Array(bodies.iter().map(|b| json!({"body": b})).collect())
        };
        log.attempted.extend(bodies.iter().cloned());
        log.requests += 1;
        let resp = match http.post(&url).json(&payload).send().await {
            Ok(r) => r,
            Err(e) => {
                log.stopped_by = format!("send error: {e:?}");
                break;
            }
        };
        let status = resp.status().as_u16();
        // The status line arrived: a 201 is an acknowledgement even if the rest is lost.
        let text = resp.text().await;
        if status == 201 {
            let v: Option<Value> = text.as_ref().ok().and_then(|t| serde_json::from_str(t).ok());
            let ids: Vec<Option<String>> = match &v {
                Some(v) if single => vec![v["message_id"].as_str().map(String::from)],
                Some(v) => {
                    let arr = v["messages"].as_array().cloned().unwrap_or_default();
                    (0..bodies.len())
                        .map(|k| arr.get(k).and_then(|m| m["message_id"].as_str()).map(String::from))
                        .collect()
                }
                None => vec![None; bodies.len()],
            };
            log.acked.extend(bodies.into_iter().zip(ids));
        } else {
            log.rejected.push((status, text.unwrap_or_default()));
            if status == 429 || status == 503 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    log
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_sends_survive_sigkill_during_load() {
    let t_start = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let _dump = DumpLogsOnPanic(tmp.path().to_path_buf());
    let data = tmp.path().join("data");
    let http = reqwest::Client::builder().timeout(Duration::from_secs(15)).build().unwrap();
    // Fixed seed for reproducible runs; CRASH_TEST_SEED=<u64> explores other schedules.
    let seed = std::env::var("CRASH_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x00C0_FFEE_D15C_0001u64);
    eprintln!("crash test seed {seed}");
    let mut rng = Rng::new(seed);

    // body -> message id (if the 201 answer was read), over all rounds
    let mut acked: HashMap<String, Option<String>> = HashMap::new();
    let mut attempted: HashSet<String> = HashSet::new();

    let mut server = Proc::start(&data, tmp.path(), "gen0", &http).await;
    for round in 1..=ROUNDS {
        // Load, then SIGKILL mid-write.
        let stop = Arc::new(AtomicBool::new(false));
        let started = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for w in 0..WORKERS {
            let seed = rng.next();
            let (h, b, s, st) = (http.clone(), server.base.clone(), stop.clone(), started.clone());
            tasks.push(tokio::spawn(async move {
                st.fetch_add(1, Ordering::Relaxed);
                worker(h, b, round, w, seed, s).await
            }));
        }
        let kill_after = Duration::from_millis(rng.range(300, 900));
        tokio::time::sleep(kill_after).await;
        let all_running = tasks.iter().all(|t| !t.is_finished());
        server.kill9().await;
        let mut logs = Vec::new();
        for t in tasks {
            match tokio::time::timeout(Duration::from_secs(20), t).await {
                Ok(r) => logs.push(r.expect("worker panicked")),
                Err(_) => {
                    stop.store(true, Ordering::Relaxed);
                    panic!("round {round}: a load worker did not stop within 20 s of the SIGKILL");
                }
            }
        }

        let mut round_acked = 0;
        let mut round_attempted = 0;
        let mut requests = 0;
        let mut rejected = Vec::new();
        for (w, l) in logs.iter().enumerate() {
            round_attempted += l.attempted.len();
            round_acked += l.acked.len();
            requests += l.requests;
            rejected.extend(l.rejected.iter().cloned());
            eprintln!(
                "round {round} worker {w}: {} requests, {} bodies sent, {} acked; stopped by {}",
                l.requests,
                l.attempted.len(),
                l.acked.len(),
                l.stopped_by
            );
            attempted.extend(l.attempted.iter().cloned());
            for (b, id) in &l.acked {
                assert!(acked.insert(b.clone(), id.clone()).is_none(), "body {b} acked twice");
            }
        }
        eprintln!(
            "round {round}: killed after {kill_after:?} (all workers still sending: {all_running}), \
             {requests} requests, {round_attempted} bodies sent, {round_acked} acked"
        );
        assert!(round_acked > 0, "round {round}: no send was acknowledged in {kill_after:?}: the test checks nothing");
        let unexpected: Vec<_> = rejected.iter().filter(|(s, _)| *s != 429 && *s != 503).collect();
        assert!(unexpected.is_empty(), "round {round}: sends answered other than 201/429/503: {unexpected:?}");

        // Restart on the same directory and read the whole topic with a fresh group.
        server = Proc::start(&data, tmp.path(), &format!("gen{round}"), &http).await;
        eprintln!("round {round} restart: {}", server.recovery_line());
        let t_drain = Instant::now();
        let delivered = drain(&http, &server.base, TOPIC, &format!("check{round}")).await;
        let drain_time = t_drain.elapsed();

        let mut seen: HashMap<&str, usize> = HashMap::new();
        let mut id_mismatch = Vec::new();
        for (b, id) in &delivered {
            *seen.entry(b.as_str()).or_default() += 1;
            if let Some(Some(want)) = acked.get(b) {
                if want != id {
                    id_mismatch.push(format!("{}: acked as {want}, delivered as {id}", short(b)));
                }
            }
        }
        let duplicates: usize = seen.values().map(|&c| c - 1).sum();
        let mut lost: Vec<&String> = acked.keys().filter(|b| !seen.contains_key(b.as_str())).collect();
        lost.sort();
        let mut phantom: Vec<&str> = seen.keys().filter(|b| !attempted.contains(**b)).map(|b| short(b)).collect();
        phantom.sort();
        let stored_unacked = seen.keys().filter(|b| attempted.contains(**b) && !acked.contains_key(**b)).count();
        let mut dup_list: Vec<_> =
            seen.iter().filter(|(_, &c)| c > 1).map(|(b, c)| format!("{} x{c}", short(b))).collect();
        dup_list.sort();
        eprintln!(
            "round {round} after restart: acked {}, delivered {}, duplicates {duplicates}, stored-but-unacked \
             {stored_unacked}, lost {}, phantom {} (drained in {drain_time:?})",
            acked.len(),
            delivered.len(),
            lost.len(),
            phantom.len()
        );
        // Lost bodies, grouped by worker and round, with the first few of each.
        let mut lost_by: BTreeMap<String, Vec<&str>> = BTreeMap::new();
        for b in &lost {
            let key = b.trim_end_matches('.').rsplit_once('-').map(|(p, _)| p.to_string()).unwrap_or_default();
            lost_by.entry(key).or_default().push(short(b));
        }
        let lost_summary: Vec<String> =
            lost_by.iter().map(|(k, v)| format!("{k}: {} lost, e.g. {:?}", v.len(), &v[..v.len().min(5)])).collect();
        assert!(
            lost.is_empty(),
            "round {round}: lost = {} of {} acknowledged bodies not delivered after SIGKILL + restart \
             (delivered {}, duplicates {duplicates}, stored-but-unacked {stored_unacked}):\n{}",
            lost.len(),
            acked.len(),
            delivered.len(),
            lost_summary.join("\n")
        );
        assert!(
            phantom.is_empty(),
            "round {round}: {} delivered bodies were never sent, e.g. {:?}",
            phantom.len(),
            &phantom[..phantom.len().min(10)]
        );
        assert!(
            id_mismatch.is_empty(),
            "round {round}: {} messages delivered under another id than the 201 answer gave, e.g. {:?}",
            id_mismatch.len(),
            &id_mismatch[..id_mismatch.len().min(10)]
        );
        // A fresh group, acks as it goes, default invisibility (30 s) longer than the drain: each
        // stored message must come exactly once; a duplicate means a send was stored twice or the
        // group redelivered inside the invisibility window.
        assert!(
            duplicates == 0 || drain_time >= Duration::from_secs(30),
            "round {round}: {duplicates} duplicate deliveries to a fresh group, e.g. {:?}",
            &dup_list[..dup_list.len().min(10)]
        );
    }
    server.terminate().await;
    eprintln!("crash test: {ROUNDS} kill/restart rounds in {:?}", t_start.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_progress_survives_sigkill() {
    let t_start = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let _dump = DumpLogsOnPanic(tmp.path().to_path_buf());
    let data = tmp.path().join("data");
    let http = reqwest::Client::builder().timeout(Duration::from_secs(15)).build().unwrap();
    let topic = "progress";
    let group = "g1";

    let mut server = Proc::start(&data, tmp.path(), "gen0", &http).await;
    let url = format!("{}/v1/topics/{topic}/messages", server.base);
    for i in 0..100 {
        let (s, v) = post(&http, &url, &json!({"body": format!("m{i}")})).await;
        assert_eq!(s, 201, "send m{i}: {v}");
    }

    // Receive 60 (invisible 1 s), ack 40 of them.
    let mut first: Vec<Value> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while first.len() < 60 {
        assert!(Instant::now() < deadline, "only {} of 100 messages received in 10 s", first.len());
        let want = 60 - first.len();
        let msgs = receive(
            &http,
            &server.base,
            topic,
            group,
            json!({"max_messages": want, "wait_ms": 200, "invisible_ms": 1000}),
        )
        .await;
        assert!(msgs.len() <= want, "asked for {want}, got {}", msgs.len());
        first.extend(msgs);
    }
    let first_bodies: Vec<String> = first.iter().map(body_of).collect();
    let unique: HashSet<&String> = first_bodies.iter().collect();
    assert_eq!(unique.len(), 60, "the first 60 receives have duplicates: {first_bodies:?}");
    ack(&http, &server.base, topic, group, &first[..40]).await;
    let acked: HashSet<String> = first_bodies[..40].iter().cloned().collect();
    let unacked_received: HashSet<String> = first_bodies[40..].iter().cloned().collect();

    // Let the persister (every 100 ms in the test profile) write the progress, then crash.
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.kill9().await;
    server = Proc::start(&data, tmp.path(), "gen1", &http).await;
    let t_ready = Instant::now();

    // Same group, default invisibility: the 60 unacked ones, exactly once, none of the 40 acked.
    let mut second: Vec<(String, u64)> = Vec::new();
    let mut empties = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(second.len() >= 60 && empties >= 2) && Instant::now() < deadline {
        let msgs = receive(&http, &server.base, topic, group, json!({"max_messages": 1000, "wait_ms": 200})).await;
        if msgs.is_empty() {
            empties += 1;
            continue;
        }
        empties = 0;
        for m in &msgs {
            second.push((body_of(m), m["delivery_attempt"].as_u64().unwrap_or(0)));
        }
        ack(&http, &server.base, topic, group, &msgs).await;
    }
    let second_time = t_ready.elapsed();

    let expected: HashSet<String> = (0..100).map(|i| format!("m{i}")).filter(|b| !acked.contains(b)).collect();
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for (b, _) in &second {
        *counts.entry(b.as_str()).or_default() += 1;
    }
    let mut missing: Vec<&String> = expected.iter().filter(|b| !counts.contains_key(b.as_str())).collect();
    missing.sort();
    let mut acked_again: Vec<&&str> = counts.keys().filter(|b| acked.contains(**b)).collect();
    acked_again.sort();
    let mut dups: Vec<String> = counts.iter().filter(|(_, &c)| c > 1).map(|(b, c)| format!("{b}x{c}")).collect();
    dups.sort();
    let mut attempts: BTreeMap<String, usize> = BTreeMap::new();
    for (b, a) in &second {
        let kind = if unacked_received.contains(b) { "received-unacked" } else { "never-received" };
        *attempts.entry(format!("{kind} attempt {a}")).or_default() += 1;
    }
    eprintln!(
        "group progress: second pass got {} messages in {second_time:?} (missing {}, acked-again {}, duplicates {}); \
         delivery attempts: {attempts:?}",
        second.len(),
        missing.len(),
        acked_again.len(),
        dups.len()
    );
    assert!(
        acked_again.is_empty(),
        "{} of the 40 acked messages were delivered again after the crash (acked 300 ms before SIGKILL, \
         persist_interval 100 ms): {acked_again:?}",
        acked_again.len()
    );
    assert!(
        missing.is_empty(),
        "{} of the 60 unacked messages were not delivered after the crash within 10 s: {missing:?} \
         (of them received-but-unacked before the crash: {:?})",
        missing.len(),
        missing.iter().filter(|b| unacked_received.contains(**b)).collect::<Vec<_>>()
    );
    assert!(dups.is_empty(), "messages delivered more than once in the second pass: {dups:?}");
    assert_eq!(second.len(), 60);

    server.terminate().await;
    eprintln!("group progress test in {:?}", t_start.elapsed());
}

/// Nacks and dead letters under SIGKILL (API.md "Consumer groups"): a group with two attempts
/// and no backoff nacks everything it receives, so every message is redelivered once through
/// the retry topic and then dead-lettered; the server is killed twice while that runs. At the
/// end every message is in the dead letter topic exactly once, with its id and where it came
/// from, and the group has nothing left (nothing lost, nothing both dead-lettered and pending).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nacks_and_dead_letters_survive_sigkill() {
    let tmp = tempfile::tempdir().unwrap();
    let _dump = DumpLogsOnPanic(tmp.path().to_path_buf());
    let data = tmp.path().join("data");
    let http = reqwest::Client::builder().timeout(Duration::from_secs(15)).build().unwrap();
    let (topic, group) = ("nacked", "g");
    let mut server = Proc::start(&data, tmp.path(), "gen0", &http).await;
    let cfg = json!({"max_delivery_attempts": 2, "retry": {"initial_ms": 0, "max_ms": 0}});
    let r = http.put(format!("{}/v1/topics/{topic}/groups/{group}", server.base)).json(&cfg).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let url = format!("{}/v1/topics/{topic}/messages", server.base);
    let mut ids = HashSet::new();
    for chunk in 0..4 {
        let batch: Vec<Value> = (0..50).map(|i| json!({"body": format!("n{chunk}-{i}")})).collect();
        let (s, v) = post(&http, &url, &Value::from(batch)).await;
        assert_eq!(s, 201, "{v}");
        ids.extend(v["messages"].as_array().unwrap().iter().map(|m| m["message_id"].as_str().unwrap().to_string()));
    }
    // Nack whatever arrives; kill the server after a few rounds, twice.
    let mut rng = Rng::new(std::env::var("CRASH_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(7));
    for gen in 1..=3 {
        let rounds = if gen == 3 { usize::MAX } else { 1 + rng.range(0, 4) as usize };
        let mut quiet = 0;
        let mut round = 0;
        while round < rounds && quiet < 3 {
            round += 1;
            let msgs = receive(
                &http,
                &server.base,
                topic,
                group,
                json!({"max_messages": 20, "wait_ms": 300, "invisible_ms": 1000}),
            )
            .await;
            if msgs.is_empty() {
                quiet += 1;
                continue;
            }
            quiet = 0;
            let handles: Vec<Value> = msgs.iter().map(|m| m["receipt_handle"].clone()).collect();
            let r = http
                .post(format!("{}/v1/topics/{topic}/groups/{group}/nack", server.base))
                .json(&json!({"receipt_handles": handles}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
        }
        if gen < 3 {
            server.kill9().await;
            server = Proc::start(&data, tmp.path(), &format!("gen{gen}"), &http).await;
        }
    }
    // Everything reached the dead letter topic, once.
    let dead = client::drain(&http, &server.base, "%25DLQ%25g", "audit", Until::Quiet).await;
    let mut seen: HashMap<String, usize> = HashMap::new();
    for m in &dead {
        assert_eq!(m["dead_letter"]["topic"], topic, "{m}");
        assert_eq!(m["dead_letter"]["group"], group, "{m}");
        assert!(m["dead_letter"]["delivery_attempts"].as_u64().unwrap() >= 2, "{m}");
        *seen.entry(m["message_id"].as_str().unwrap().to_string()).or_default() += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, &n)| n > 1).collect();
    assert!(twice.is_empty(), "dead-lettered twice: {twice:?}");
    let missing: Vec<_> = ids.iter().filter(|id| !seen.contains_key(*id)).collect();
    assert!(missing.is_empty(), "{} of {} never dead-lettered: {missing:?}", missing.len(), ids.len());
    let r: Value = http
        .get(format!("{}/v1/topics/{topic}/groups/{group}", server.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!((r["backlog"].as_u64(), r["in_flight"].as_u64()), (Some(0), Some(0)), "{r}");
    server.terminate().await;
}

/// A 201 answered just before a SIGKILL is still deduplicated after the restart: repeats of
/// every id sent (singly and in batches, normal and scheduled) answer 200 with the first id,
/// and nothing is stored twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deduplicated_sends_survive_sigkill() {
    let tmp = tempfile::tempdir().unwrap();
    let _dump = DumpLogsOnPanic(tmp.path().to_path_buf());
    let data = tmp.path().join("data");
    let http = reqwest::Client::builder().timeout(Duration::from_secs(15)).build().unwrap();
    let mut server = Proc::start(&data, tmp.path(), "gen0", &http).await;
    let mut first: HashMap<String, String> = HashMap::new();
    for gen in 1..=2 {
        let url = format!("{}/v1/topics/dd/messages", server.base);
        // New ids right up to the kill, each answered 201.
        for i in 0..40 {
            let id = format!("g{gen}-{i}");
            let body = if i % 2 == 0 {
                json!({"body": id, "dedup_id": id})
            } else {
                json!([{"body": id, "dedup_id": id, "delay_ms": 3_600_000}, {"body": "plain"}])
            };
            let (s, v) = post(&http, &url, &body).await;
            assert_eq!(s, 201, "{v}");
            let mid = if i % 2 == 0 { &v["message_id"] } else { &v["messages"][0]["message_id"] };
            first.insert(id, mid.as_str().unwrap().to_string());
        }
        server.kill9().await;
        server = Proc::start(&data, tmp.path(), &format!("gen{gen}-after"), &http).await;
        let url = format!("{}/v1/topics/dd/messages", server.base);
        for (id, mid) in &first {
            let (s, v) = post(&http, &url, &json!({"body": "again", "dedup_id": id})).await;
            assert_eq!((s, v["message_id"].as_str()), (200, Some(mid.as_str())), "{id} after the kill: {v}");
        }
    }
    let got = drain(&http, &server.base, "dd", "count").await;
    assert_eq!(got.iter().filter(|(b, _)| b.starts_with('g')).count(), 40, "the normal ones, once each");
    server.terminate().await;
}

/// Transactions across a SIGKILL: a 200 commit is visible whole after the restart, a 200
/// rollback never, a prepared transaction is still prepared and can be committed then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_survive_sigkill() {
    let tmp = tempfile::tempdir().unwrap();
    let _dump = DumpLogsOnPanic(tmp.path().to_path_buf());
    let data = tmp.path().join("data");
    let http = reqwest::Client::builder().timeout(Duration::from_secs(15)).build().unwrap();
    let mut server = Proc::start(&data, tmp.path(), "gen0", &http).await;
    let (mut committed, mut rolled, mut prepared) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..30 {
        let body = json!({"producer_group": "pg", "messages": [
            {"topic": "ta", "body": format!("t{i}-a")}, {"topic": "tb", "body": format!("t{i}-b")},
            {"topic": "ta", "body": format!("t{i}-c")},
        ]});
        let (s, v) = post(&http, &format!("{}/v1/transactions", server.base), &body).await;
        assert_eq!(s, 201, "{v}");
        let id = v["transaction_id"].as_str().unwrap().to_string();
        let action = match i % 3 {
            0 => Some("commit"),
            1 => Some("rollback"),
            _ => None,
        };
        if let Some(a) = action {
            let (s, v) = post(&http, &format!("{}/v1/transactions/{id}/{a}", server.base), &json!({})).await;
            assert_eq!(s, 200, "{v}");
        }
        match i % 3 {
            0 => committed.push(i),
            1 => rolled.push(i),
            _ => prepared.push((i, id)),
        }
    }
    server.kill9().await;
    server = Proc::start(&data, tmp.path(), "gen1", &http).await;
    for (_, id) in &prepared {
        let v: Value =
            http.get(format!("{}/v1/transactions/{id}", server.base)).send().await.unwrap().json().await.unwrap();
        assert_eq!(v["state"], "prepared", "{v}");
    }
    let mut seen: Vec<String> = drain(&http, &server.base, "ta", "g").await.into_iter().map(|(b, _)| b).collect();
    seen.extend(drain(&http, &server.base, "tb", "g").await.into_iter().map(|(b, _)| b));
    seen.sort();
    let mut want: Vec<String> =
        committed.iter().flat_map(|i| [format!("t{i}-a"), format!("t{i}-b"), format!("t{i}-c")]).collect();
    want.sort();
    assert_eq!(seen, want, "every committed message once, nothing rolled back or prepared");
    // The prepared ones commit after the restart.
    for (_, id) in &prepared {
        let (s, v) = post(&http, &format!("{}/v1/transactions/{id}/commit", server.base), &json!({})).await;
        assert_eq!(s, 200, "{v}");
    }
    let more = drain(&http, &server.base, "tb", "g").await;
    assert_eq!(more.len(), prepared.len());
    server.terminate().await;
}
