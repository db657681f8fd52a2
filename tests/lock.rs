//! Process-level checks of the `chime` binary: the data-directory lock refuses a second process
//! (it exits at once with a clear error), SIGTERM stops the first with status 0, and a
//! configuration error exits with status 2 naming the key.

use std::path::Path;
use std::time::{Duration, Instant};

mod common;

use common::binary::{DumpLogsOnPanic, Proc};
use nix::sys::signal::Signal;

/// Starts a ready server, retrying with another port if the picked one was taken meanwhile.
async fn start_ready(data: &Path, logs: &Path, name: &str, http: &reqwest::Client) -> Proc {
    for attempt in 1..=3 {
        let mut p = Proc::spawn(data, logs.join(format!("{name}-{attempt}.stderr")), &[]);
        // A port taken between free_port() and the bind: try again with another one.
        if let Some(s) = p.wait_exit(Duration::from_millis(300)).await {
            let log = p.log();
            if log.contains("cannot listen") && attempt < 3 {
                continue;
            }
            panic!("chime exited at once with {s}; stderr:\n{log}");
        }
        p.wait_ready(http).await;
        return p;
    }
    unreachable!()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_process_on_same_data_dir_exits_at_once_and_sigterm_stops_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let _dump = DumpLogsOnPanic(tmp.path().to_path_buf());
    let data = tmp.path().join("data");
    let http = reqwest::Client::new();

    let mut first = start_ready(&data, tmp.path(), "first", &http).await;

    // A second process on the same directory, on another port: it must give up by itself.
    let t0 = Instant::now();
    let mut second = Proc::spawn(&data, tmp.path().join("second.stderr"), &[]);
    let status = second.wait_exit(Duration::from_secs(5)).await;
    let elapsed = t0.elapsed();
    let log2 = second.log();
    let status =
        status.unwrap_or_else(|| panic!("second chime on the same data dir still running after 5 s; stderr:\n{log2}"));
    assert!(!status.success(), "second chime exited with {status} (want non-zero); stderr:\n{log2}");
    assert!(status.code().is_some(), "second chime ended by a signal ({status}), not by exiting; stderr:\n{log2}");
    assert!(
        log2.contains("in use by another chime process"),
        "second chime's stderr does not say the data directory is in use (exit {status}):\n{log2}"
    );
    let first_pid = first.child.id().to_string();
    assert!(log2.contains(&first_pid), "the error should name the holder pid {first_pid}:\n{log2}");
    eprintln!("second process exited with {status} after {elapsed:?}");

    // The first one is unharmed and still serving.
    assert!(first.try_exit().is_none(), "first chime died when the second started; stderr:\n{}", first.log());
    let r = http.get(format!("{}/readyz", first.base)).send().await.expect("first still answers");
    assert_eq!(r.status().as_u16(), 200, "first chime not ready any more; stderr:\n{}", first.log());
    let r = http
        .post(format!("{}/v1/topics/lock/messages", first.base))
        .json(&serde_json::json!({"body": "still here"}))
        .send()
        .await
        .expect("send to first");
    assert_eq!(r.status().as_u16(), 201, "first chime cannot store after the second's attempt");

    // SIGTERM: a clean shutdown with status 0.
    let t0 = Instant::now();
    first.signal(Signal::SIGTERM);
    let status = first.wait_exit(Duration::from_secs(10)).await;
    let status = status.unwrap_or_else(|| panic!("chime still running 10 s after SIGTERM; stderr:\n{}", first.log()));
    assert_eq!(status.code(), Some(0), "chime exited with {status} after SIGTERM (want 0); stderr:\n{}", first.log());
    eprintln!("first process exited with {status} {:?} after SIGTERM", t0.elapsed());

    // The lock is released: a new process starts on the same directory and still has the message.
    let mut third = start_ready(&data, tmp.path(), "third", &http).await;
    let r = http
        .post(format!("{}/v1/topics/lock/groups/g/receive", third.base))
        .json(&serde_json::json!({"max_messages": 10, "wait_ms": 1000}))
        .send()
        .await
        .expect("receive");
    assert_eq!(r.status().as_u16(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    let bodies: Vec<_> = v["messages"].as_array().unwrap().iter().map(|m| m["body"].clone()).collect();
    assert_eq!(bodies, vec![serde_json::json!("still here")], "after a clean restart: {v}");
    third.signal(Signal::SIGTERM);
    let status = third.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.and_then(|s| s.code()), Some(0), "third exit {status:?}; stderr:\n{}", third.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_error_exits_with_status_2_naming_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let _dump = DumpLogsOnPanic(tmp.path().to_path_buf());
    let data = tmp.path().join("data");

    let mut p = Proc::spawn(&data, tmp.path().join("bad-flush.stderr"), &[("CHIME_STORE_FLUSH", "fast")]);
    let status = p.wait_exit(Duration::from_secs(5)).await;
    let log = p.log();
    let status = status.unwrap_or_else(|| panic!("chime with CHIME_STORE_FLUSH=fast still running after 5 s:\n{log}"));
    assert_eq!(status.code(), Some(2), "CHIME_STORE_FLUSH=fast: exit {status} (want 2); stderr:\n{log}");
    assert!(log.contains("store.flush"), "the error does not name store.flush:\n{log}");
    assert!(log.contains("CHIME_STORE_FLUSH"), "the error does not name the variable CHIME_STORE_FLUSH:\n{log}");
    eprintln!("CHIME_STORE_FLUSH=fast -> {status}: {}", log.trim());
}
