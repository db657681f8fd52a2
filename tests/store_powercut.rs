//! `store.flush = "sync"` under a simulated power cut: an append whose `wait_durable` has
//! returned survives a power cut at that very moment (the power-cut simulation of
//! `src/store/powercut.rs` keeps only what was fsync'd), and concurrent appends share fsyncs
//! (group commit).
//!
//! A file of its own: the simulation records one data directory per process.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chime::clock::SystemClock;
use chime::store::record::NewMessage;
use chime::store::{powercut, FlushPolicy, Store, StoreOptions};

fn opts(dir: &Path, flush: FlushPolicy) -> StoreOptions {
    StoreOptions {
        dir: dir.to_path_buf(),
        segment_size: 64 * 1024,
        cq_segment_entries: 1024,
        flush,
        checkpoint_interval: Duration::from_millis(20),
    }
}

fn bodies(store: &Store, topic: &str) -> Vec<String> {
    let Some(t) = store.topics().get(topic) else { return vec![] };
    let mut out = Vec::new();
    for q in &t.queues {
        for i in 0..q.next() {
            let r = store.read(q.get(i).expect("entry").log_offset).expect("record").verify().expect("valid record");
            out.push(String::from_utf8(r.record().body.to_vec()).unwrap());
        }
    }
    out
}

#[test]
fn sync_policy_acknowledges_after_fsync_with_group_commit() {
    let scenario = fail::FailScenario::setup();
    let tmp = tempfile::tempdir().unwrap();
    let (data, shadow, after) = (tmp.path().join("data"), tmp.path().join("shadow"), tmp.path().join("after"));
    std::fs::create_dir_all(&data).unwrap();
    fail::cfg(powercut::FAILPOINT, &format!("return({})", shadow.display())).unwrap();
    let store = Store::open(opts(&data, FlushPolicy::Sync), Arc::new(SystemClock)).unwrap();
    fail::remove(powercut::FAILPOINT); // the recorder is on for this store's directory
    let (t, _) = store.topics().create("t", 4).unwrap();
    let fsyncs_before = store.fsync_buckets(&[]).count;

    const WRITERS: usize = 8;
    const EACH: usize = 25;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let (store, t) = (store.clone(), t.clone());
            tasks.push(tokio::spawn(async move {
                for i in 0..EACH {
                    let m = NewMessage { body: format!("w{w}-{i}").into_bytes(), born_ms: 1, ..Default::default() };
                    let r = store.append(&t, &[m]).unwrap();
                    store.wait_durable(r.end).await.unwrap();
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
    });
    // The power goes the moment the last append is acknowledged.
    powercut::materialize(&shadow, &after).unwrap();
    let fsyncs = store.fsync_buckets(&[]).count - fsyncs_before;
    drop((t, store));

    let survivor = Store::open(opts(&after, FlushPolicy::Sync), Arc::new(SystemClock)).unwrap();
    let mut got = bodies(&survivor, "t");
    got.sort();
    let mut want: Vec<String> = (0..WRITERS).flat_map(|w| (0..EACH).map(move |i| format!("w{w}-{i}"))).collect();
    want.sort();
    assert_eq!(got, want, "every acknowledged append survives the power cut");
    // Group commit: concurrent appends share fsyncs.
    let n = (WRITERS * EACH) as u64;
    assert!(fsyncs > 0 && fsyncs < n, "{fsyncs} fsyncs for {n} acknowledged appends");
    println!("{n} appends acknowledged after {fsyncs} fsyncs");
    scenario.teardown();
}
