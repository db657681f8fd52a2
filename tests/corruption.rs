//! Corrupt bytes on disk, file by file: each test writes through a real server, stops it, flips
//! or tears bytes in one file, restarts, and checks that the damage is detected (checksums or
//! cross-checks) and handled as README "Durability and recovery" documents, never by a panic.
//!
//! Torn commit-log tails and garbage after the tail are in tests/store_recovery.rs; a torn
//! timer-log tail is a unit test in src/timer/timerlog.rs.

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{test_config, TestServer};
use serde_json::{json, Value};

const TOPIC: &str = "t";

fn flip(path: &Path, at: u64, mask: u8) {
    let f = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    b[0] ^= mask;
    f.write_all_at(&b, at).unwrap();
    f.sync_all().unwrap();
}

fn read_u64(path: &Path, at: u64) -> u64 {
    let f = std::fs::File::open(path).unwrap();
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, at).unwrap();
    u64::from_le_bytes(b)
}

/// The commit-log offset a message id names (its first 16 hex digits).
fn offset_of(id: &str) -> u64 {
    u64::from_str_radix(&id[..16], 16).unwrap()
}

fn first_segment(dir: &Path, sub: &str) -> std::path::PathBuf {
    dir.join(sub).join(format!("{:020}", 0))
}

async fn bodies(s: &TestServer, group: &str) -> Vec<String> {
    let mut out = Vec::new();
    loop {
        let got = s.receive(TOPIC, group, json!({"max_messages": 1000})).await;
        if got.is_empty() {
            return out;
        }
        s.ack(TOPIC, group, &got).await;
        out.extend(got.iter().map(|m| m["body"].as_str().unwrap().to_string()));
    }
}

/// Receives with `group` until `want` bodies arrived (or `secs` passed); returns all seen.
async fn wait_for(s: &TestServer, group: &str, want: &BTreeSet<String>, secs: u64) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut seen = Vec::new();
    loop {
        seen.extend(bodies(s, group).await);
        let set: BTreeSet<String> = seen.iter().cloned().collect();
        if want.is_subset(&set) || Instant::now() > deadline {
            // A little longer, to catch a duplicate fire.
            tokio::time::sleep(Duration::from_millis(300)).await;
            seen.extend(bodies(s, group).await);
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn send(s: &TestServer, body: Value) -> Value {
    let (st, v) = s.send(TOPIC, body).await;
    assert_eq!(st, 201, "{v}");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_log_record_flipped_before_the_checkpoint_is_skipped_when_read() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let s = TestServer::start(&config).await;
    let mut ids = Vec::new();
    for i in 0..10 {
        let v = send(&s, json!({ "body": format!("m{i}") })).await;
        ids.push(v["message_id"].as_str().unwrap().to_string());
    }
    s.stop().await; // the final checkpoint covers all ten

    // Flip the last body byte of m5: recovery starts after it, so only a read can find it.
    let log = first_segment(dir.path(), "commitlog");
    let at = offset_of(&ids[5]);
    let len = read_u64(&log, at) as u32; // total_len, the first 4 bytes
    flip(&log, at + len as u64 - 1, 0x01);

    let s = TestServer::start(&config).await;
    let want: Vec<String> = (0..10).filter(|&i| i != 5).map(|i| format!("m{i}")).collect();
    let mut got = bodies(&s, "g").await;
    got.sort();
    assert_eq!(got, want, "the corrupt record is skipped, the others delivered");
    let (st, v) = s.call("GET", &format!("/v1/topics/{TOPIC}/messages/{}", ids[5]), None).await;
    assert_eq!(st, 404, "a corrupt record is not served: {v}");
    let (st, _) = s.call("GET", &format!("/v1/topics/{TOPIC}/messages/{}", ids[4]), None).await;
    assert_eq!(st, 200);
    send(&s, json!({"body": "after"})).await;
    assert_eq!(bodies(&s, "g").await, ["after"]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_log_record_flipped_after_the_checkpoint_cuts_the_log_there() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let s = TestServer::start(&config).await;
    let mut ids = Vec::new();
    for i in 0..10 {
        let v = send(&s, json!({ "body": format!("m{i}") })).await;
        ids.push(v["message_id"].as_str().unwrap().to_string());
    }
    s.stop().await;
    // Without a checkpoint recovery scans the whole log and stops at the bad CRC.
    std::fs::remove_file(dir.path().join("checkpoint")).unwrap();
    let log = first_segment(dir.path(), "commitlog");
    flip(&log, offset_of(&ids[7]) + 20, 0x80); // born_ms, under the CRC

    let s = TestServer::start(&config).await;
    let want: Vec<String> = (0..7).map(|i| format!("m{i}")).collect();
    let mut got = bodies(&s, "g").await;
    got.sort();
    assert_eq!(got, want, "cut at the first record whose checksum fails");
    // A record of exactly m7's size takes its place, so m8 and m9, if their bytes were still
    // there, would start right after it, intact, and a scan would take them back.
    let v = send(&s, json!({"body": "a7"})).await;
    assert_eq!(v["message_id"].as_str().unwrap()[..16], ids[7][..16], "written where m7 was");
    assert_eq!(bodies(&s, "g").await, ["a7"]);
    s.stop().await;
    std::fs::remove_file(dir.path().join("checkpoint")).unwrap(); // scan the whole log again
    let s = TestServer::start(&config).await;
    let mut want = want;
    want.push("a7".into());
    want.sort();
    let mut got = bodies(&s, "g2").await;
    got.sort();
    assert_eq!(got, want, "the cut bytes were zeroed and cannot come back");
    s.stop().await;
}

/// README "Corrupt and torn files": consume queues are not checksummed; a reader checks that
/// the record an entry points at has its topic, queue and offset, and skips it otherwise. Two
/// entries before the checkpoint (so recovery keeps them) are damaged: one points at another
/// valid record of the queue (its CRC is fine, its queue offset is not), one into the middle
/// of a record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_consume_queue_entries_are_skipped_by_readers() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let s = TestServer::start(&config).await;
    let (st, v) = s.call("PUT", &format!("/v1/topics/{TOPIC}"), Some(r#"{"queues": 1}"#)).await;
    assert_eq!(st, 201, "{v}");
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(send(&s, json!({ "body": format!("m{i}") })).await["message_id"].as_str().unwrap().to_string());
    }
    s.stop().await;
    let cq = first_segment(dir.path(), &format!("consumequeue/{TOPIC}/0"));
    let entry = |i: u64| i * chime::store::consume_queue::ENTRY_LEN as u64;
    assert_eq!(read_u64(&cq, entry(5)), offset_of(&ids[5]), "entry layout");
    let f = std::fs::OpenOptions::new().write(true).open(&cq).unwrap();
    f.write_all_at(&offset_of(&ids[4]).to_le_bytes(), entry(5)).unwrap(); // m4's record
    f.write_all_at(&(offset_of(&ids[7]) + 9).to_le_bytes(), entry(7)).unwrap(); // inside m7
    f.sync_all().unwrap();

    let s = TestServer::start(&config).await;
    let mut got = bodies(&s, "g").await;
    got.sort();
    let want: Vec<String> = [0, 1, 2, 3, 4, 6, 8, 9].iter().map(|i| format!("m{i}")).collect();
    assert_eq!(got, want, "the two damaged entries are skipped, m4 is not delivered twice");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_store_checkpoint_means_a_full_scan() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let s = TestServer::start(&config).await;
    for i in 0..5 {
        send(&s, json!({ "body": format!("m{i}") })).await;
    }
    s.stop().await;
    flip(&dir.path().join("checkpoint"), 9, 0x10); // inside log_flushed
    let s = TestServer::start(&config).await;
    let want: BTreeSet<String> = (0..5).map(|i| format!("m{i}")).collect();
    assert_eq!(bodies(&s, "g").await.into_iter().collect::<BTreeSet<_>>(), want);
    s.stop().await;
    std::fs::write(dir.path().join("checkpoint"), b"torn").unwrap();
    let s = TestServer::start(&config).await;
    assert_eq!(bodies(&s, "g2").await.into_iter().collect::<BTreeSet<_>>(), want);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_group_progress_redelivers_from_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let s = TestServer::start(&config).await;
    for i in 0..3 {
        send(&s, json!({ "body": format!("m{i}") })).await;
    }
    assert_eq!(bodies(&s, "g").await.len(), 3);
    s.stop().await;
    let path = dir.path().join("groups").join(TOPIC).join("g.json");
    let mut text = std::fs::read(&path).unwrap();
    text.truncate(text.len() / 2);
    std::fs::write(&path, text).unwrap();
    let s = TestServer::start(&config).await;
    assert_eq!(bodies(&s, "g").await.len(), 3, "at least once: corrupt progress starts the group over");
    s.stop().await;
}

/// The byte offset of the slot holding `deliver_at` in the test profile's wheel: 7200 slots of
/// 1 s after a 4 KiB header; a slot is four u64 words: time, first, last, count.
fn slot_at(wheel: &Path, deliver_at: i64) -> u64 {
    let slot_time = deliver_at / 1000 * 1000;
    let at = 4096 + (slot_time / 1000) as u64 % 7200 * 32;
    assert_eq!(read_u64(wheel, at) as i64, slot_time, "slot layout");
    at
}

/// Sends two scheduled messages due in `delay_ms` in one batch (same slot, two linked units),
/// one due earlier that fires before the stop; returns the deliver time of the pair.
async fn timer_setup(s: &TestServer, delay_ms: u64) -> i64 {
    send(s, json!({"body": "early", "delay_ms": 100})).await;
    let v = send(s, json!([{"body": "a", "delay_ms": delay_ms}, {"body": "b", "delay_ms": delay_ms}])).await;
    let at = v["messages"][0]["deliver_at_ms"].as_i64().unwrap();
    assert_eq!(v["messages"][1]["deliver_at_ms"].as_i64().unwrap(), at);
    let want = BTreeSet::from(["early".to_string()]);
    assert_eq!(wait_for(s, "g", &want, 10).await, ["early"]);
    at
}

/// Restarts on `dir`, checks that the timer's recovery saw the damage (its summary contains
/// `detected`), and that each pending message fires once.
async fn timer_restart_and_check(dir: &Path, detected: &str) {
    timer_restart_and_check_bodies(dir, &["a", "b"], Some(detected)).await;
}

async fn timer_restart_and_check_bodies(dir: &Path, bodies: &[&str], detected: Option<&str>) {
    let config = test_config(dir);
    let s = TestServer::start(&config).await;
    let summary = s.running.as_ref().unwrap().state.core().unwrap().timer.recovery_summary().to_owned();
    eprintln!("{summary}");
    if let Some(d) = detected {
        assert!(summary.contains(d), "the damage went unnoticed: {summary:?} lacks {d:?}");
    }
    let want: BTreeSet<String> = bodies.iter().map(|b| b.to_string()).collect();
    let mut seen = wait_for(&s, "g", &want, 15).await;
    seen.sort();
    assert_eq!(seen, bodies, "each pending message fires once, the fired one not again");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_timer_checkpoint_rebuilds_without_losing_or_refiring() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(&test_config(dir.path())).await;
    timer_setup(&s, 4000).await;
    s.stop().await;
    flip(&dir.path().join("timer/checkpoint"), 17, 0x04); // inside read_time
                                                          // Without a checkpoint the timer re-reads the system topic from its start (offset 0, the
                                                          // message that fired before the stop; a good checkpoint starts at 1, the oldest pending).
    timer_restart_and_check(dir.path(), "enqueue from offset 0,").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_timer_log_unit_is_detected_and_its_slot_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(&test_config(dir.path())).await;
    let at = timer_setup(&s, 4000).await;
    s.stop().await;
    // The slot's last unit is b's (pointing back at a's): flip a bit of its deliver time.
    let last = read_u64(&dir.path().join("timer/wheel"), slot_at(&dir.path().join("timer/wheel"), at) + 16);
    assert_eq!(last % 64, 1, "last is a unit position + 1");
    flip(&first_segment(dir.path(), "timer/timerlog"), last - 1 + 9, 0x01);
    timer_restart_and_check(dir.path(), "(wheel rebuilt)").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_wheel_slot_is_detected_and_the_wheel_rebuilt() {
    // (byte of the 32-byte slot, bit mask): first, last (twice), count, and the time twice, once
    // moved by 8 ms and once by 2^40 ms into the past, where fired slots lie.
    for (byte, mask) in [(8u64, 0x40u8), (16, 0x40), (16, 0x01), (24, 0x01), (0, 0x08), (5, 0x01)] {
        let dir = tempfile::tempdir().unwrap();
        let s = TestServer::start(&test_config(dir.path())).await;
        let at = timer_setup(&s, 4000).await;
        s.stop().await;
        let wheel = dir.path().join("timer/wheel");
        flip(&wheel, slot_at(&wheel, at) + byte, mask);
        eprintln!("wheel slot byte {byte} ^ {mask:#x}");
        timer_restart_and_check(dir.path(), "(wheel rebuilt)").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_timer_state_cell_is_treated_as_scheduled() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(&test_config(dir.path())).await;
    send(&s, json!([{"body": "a", "delay_ms": 2500}, {"body": "b", "delay_ms": 2500}])).await;
    s.stop().await;
    // State cells carry no checksum: one byte per message, at its system-topic queue offset
    // (b is the second scheduled message, offset 1). A byte that is no state at all is reset
    // to SCHEDULED at start-up (at least once).
    let cells = first_segment(dir.path(), "timer/state");
    assert_eq!(std::fs::read(&cells).unwrap()[..2], [0, 0], "both scheduled");
    flip(&cells, 1, 0xF0);
    timer_restart_and_check_bodies(dir.path(), &["a", "b"], None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_record_damaged_while_running_is_skipped_and_no_longer_pending() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(&test_config(dir.path())).await;
    let v = send(&s, json!([{"body": "a", "delay_ms": 5000}, {"body": "b", "delay_ms": 5000}])).await;
    let id_a = v["messages"][0]["message_id"].as_str().unwrap().to_string();
    // Once both are in the wheel (read by enqueue-get, which needs the record's deliver time),
    // the same damage as below, but under the running server (the log is mapped shared, so it
    // reads the flipped byte when it fires a). A record damaged before enqueue-get reads it
    // is skipped too, but stays counted: its deliver time is then unknown.
    s.wait_stats("both placed", 10, |st| {
        assert_eq!(st["pending_total"], 2, "{st}");
        st["enqueue_lag"] == 0
    })
    .await;
    let log = first_segment(dir.path(), "commitlog");
    let at = offset_of(&id_a);
    flip(&log, at + read_u64(&log, at) as u32 as u64 - 1, 0x01);
    let want = BTreeSet::from(["b".to_string()]);
    let seen = wait_for(&s, "g", &want, 15).await;
    assert_eq!(seen, ["b"], "the damaged message is skipped (logged), the other fires");
    // a can never fire: it is no longer counted as pending.
    s.wait_stats("a to stop counting as pending", 10, |st| st["pending_total"] == 0).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_scheduled_record_is_skipped_and_the_others_fire() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(&test_config(dir.path())).await;
    let v = send(&s, json!([{"body": "a", "delay_ms": 4000}, {"body": "b", "delay_ms": 4000}])).await;
    let id_a = v["messages"][0]["message_id"].as_str().unwrap().to_string();
    s.stop().await;
    // The scheduled record lives in the commit log (system topic) until it fires: flip the last
    // byte of a's body. Its CRC fails when the timer reads it; it cannot be fired.
    let log = first_segment(dir.path(), "commitlog");
    let at = offset_of(&id_a);
    flip(&log, at + read_u64(&log, at) as u32 as u64 - 1, 0x01);
    let s = TestServer::start(&test_config(dir.path())).await;
    let want = BTreeSet::from(["b".to_string()]);
    let seen = wait_for(&s, "g", &want, 15).await;
    assert_eq!(seen, ["b"], "the damaged message is skipped (logged), the other fires");
    let (st, v) = s.call("GET", &format!("/v1/topics/{TOPIC}/messages/{id_a}"), None).await;
    assert_eq!(st, 404, "{v}");
    let (st, v) = s.call("GET", "/readyz", None).await;
    assert_eq!(st, 200, "the timer keeps running: {v}");
    s.stop().await;
}
