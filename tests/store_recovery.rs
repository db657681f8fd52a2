//! Recovery of the store after simulated crashes: torn tails, incomplete batches, lost
//! checkpoints and lost consume queues. Each test writes through the real store, damages the
//! files as a crash could, reopens, and checks what survived.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chime::clock::SystemClock;
use chime::store::record::{self, NewMessage};
use chime::store::{FlushPolicy, Store, StoreOptions};

const SEG: u64 = 64 * 1024;

fn opts(dir: &Path) -> StoreOptions {
    StoreOptions {
        dir: dir.to_path_buf(),
        segment_size: SEG,
        cq_segment_entries: 1024,
        flush: FlushPolicy::Async { interval: Duration::from_millis(20) },
        checkpoint_interval: Duration::from_millis(20),
    }
}

fn open(dir: &Path) -> Arc<Store> {
    Store::open(opts(dir), Arc::new(SystemClock)).expect("store opens")
}

fn msg(body: &str) -> NewMessage {
    NewMessage { body: body.as_bytes().to_vec(), born_ms: 1, ..Default::default() }
}

/// Bodies in the topic's queues, in queue order, read through the consume queues.
fn bodies(store: &Store, topic: &str) -> Vec<String> {
    let Some(t) = store.topics().get(topic) else { return vec![] };
    let mut out = Vec::new();
    for q in &t.queues {
        for i in 0..q.next() {
            let e = q.get(i).expect("entry");
            let r = store.read(e.log_offset).expect("record").verify().expect("valid record");
            let rec = r.record();
            assert_eq!(rec.queue_offset, i);
            out.push(String::from_utf8(rec.body.to_vec()).unwrap());
        }
    }
    out
}

fn segment_path(dir: &Path, base: u64) -> std::path::PathBuf {
    dir.join("commitlog").join(format!("{base:020}"))
}

fn write_at(path: &Path, at: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, at).unwrap();
}

#[test]
fn torn_last_record_is_cut_and_the_log_continues() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (t, _) = store.topics().create("t", 1).unwrap();
    let mut ends = Vec::new();
    for i in 0..10 {
        ends.push(store.append(&t, &[msg(&format!("m{i}"))]).unwrap().end);
    }
    store.shutdown().unwrap();
    drop((t, store));

    // Tear the last record: zero its second half, as if the crash hit mid-write.
    let last_start = ends[8];
    let last_end = ends[9];
    let mid = (last_start + last_end) / 2;
    write_at(&segment_path(dir.path(), 0), mid, &vec![0u8; (last_end - mid) as usize]);
    // And pretend the checkpoint is older than the tear.
    std::fs::remove_file(dir.path().join("checkpoint")).unwrap();

    let store = open(dir.path());
    let rep = store.recovery_report().clone();
    assert_eq!(rep.log.end, last_start, "{rep}");
    assert!(rep.log.stop_reason.is_some(), "{rep}");
    let want: Vec<_> = (0..9).map(|i| format!("m{i}")).collect();
    assert_eq!(bodies(&store, "t"), want);
    // The next append reuses the cut space and everything reads back.
    let t = store.topics().get("t").unwrap();
    store.append(&t, &[msg("after")]).unwrap();
    store.shutdown().unwrap();
    drop((t, store));
    let store = open(dir.path());
    let mut want = want;
    want.push("after".into());
    assert_eq!(bodies(&store, "t"), want);
}

#[test]
fn garbage_after_the_tail_is_zeroed_so_it_cannot_resurrect() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (t, _) = store.topics().create("t", 1).unwrap();
    let end = store.append(&t, &[msg("a")]).unwrap().end;
    store.shutdown().unwrap();
    drop((t, store));

    // A valid-looking record written after a torn one (out-of-order writeback): a torn header
    // at `end`, then a complete record after it.
    let mut stale = Vec::new();
    record::encode(&mut stale, "t", 0, 0, &msg("stale"));
    record::seal(&mut stale, 1, 5, 0);
    write_at(&segment_path(dir.path(), 0), end, &[0xFF; 12]);
    write_at(&segment_path(dir.path(), 0), end + 12, &stale);

    let store = open(dir.path());
    assert_eq!(store.recovery_report().log.end, end);
    assert!(store.recovery_report().log.truncated_bytes >= 12 + stale.len() as u64);
    assert_eq!(bodies(&store, "t"), ["a"]);
    store.shutdown().unwrap();
    drop(store);
    // The stale record was zeroed: appending a short record cannot expose it later.
    let store = open(dir.path());
    let t = store.topics().get("t").unwrap();
    store.append(&t, &[msg("b")]).unwrap();
    store.shutdown().unwrap();
    drop((t, store));
    let store = open(dir.path());
    assert_eq!(bodies(&store, "t"), ["a", "b"]);
}

#[test]
fn incomplete_batch_is_dropped_whole() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (t, _) = store.topics().create("t", 1).unwrap();
    let before = store.append(&t, &[msg("single")]).unwrap().end;
    let batch: Vec<_> = (0..5).map(|i| msg(&format!("b{i}"))).collect();
    let res = store.append(&t, &batch).unwrap();
    store.shutdown().unwrap();
    drop((t, store));

    // Lose the batch's last record (the one carrying FLAG_BATCH_END).
    let last = res.messages[4].id.offset;
    write_at(&segment_path(dir.path(), 0), last, &vec![0u8; (res.end - last) as usize]);
    std::fs::remove_file(dir.path().join("checkpoint")).unwrap();

    let store = open(dir.path());
    let rep = store.recovery_report();
    assert_eq!(rep.log.end, before, "{rep}");
    assert!(rep.log.stop_reason.as_deref().unwrap_or("").contains("batch"), "{rep}");
    assert_eq!(bodies(&store, "t"), ["single"], "none of the batch survives");
}

#[test]
fn lost_consume_queues_and_checkpoint_are_rebuilt_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (t, _) = store.topics().create("t", 4).unwrap();
    let mut want = Vec::new();
    // Enough to roll several 64 KiB segments.
    for i in 0..600 {
        let b = format!("{i:0>200}");
        store.append(&t, &[msg(&b)]).unwrap();
        want.push(b);
    }
    store.shutdown().unwrap();
    drop((t, store));
    let segs = std::fs::read_dir(dir.path().join("commitlog")).unwrap().count();
    assert!(segs >= 2, "expected several segments, got {segs}");

    std::fs::remove_dir_all(dir.path().join("consumequeue")).unwrap();
    std::fs::write(dir.path().join("checkpoint"), b"garbage").unwrap();
    let store = open(dir.path());
    let rep = store.recovery_report().clone();
    assert!(rep.checkpoint_problem.is_some(), "{rep}");
    assert_eq!(rep.log.scanned_from, 0);
    assert_eq!(rep.log.records, 600);
    assert_eq!(rep.reindexed, 600);
    let mut got = bodies(&store, "t");
    got.sort();
    want.sort();
    assert_eq!(got, want);
}

#[test]
fn recovery_from_the_checkpoint_does_not_rescan_and_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (t, _) = store.topics().create("t", 2).unwrap();
    for i in 0..100 {
        store.append(&t, &[msg(&format!("m{i}"))]).unwrap();
    }
    store.shutdown().unwrap();
    drop((t, store));
    let store = open(dir.path());
    let rep = store.recovery_report();
    assert_eq!(rep.log.records, 0, "clean shutdown: nothing to replay ({rep})");
    assert_eq!(rep.reindexed, 0);
    assert_eq!(bodies(&store, "t").len(), 100);
}

#[test]
fn records_larger_than_a_segment_are_refused_without_damage() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (t, _) = store.topics().create("t", 1).unwrap();
    store.append(&t, &[msg("ok")]).unwrap();
    let huge = NewMessage { body: vec![b'x'; SEG as usize], ..Default::default() };
    assert!(store.append(&t, &[huge]).is_err());
    store.append(&t, &[msg("still ok")]).unwrap();
    assert_eq!(bodies(&store, "t"), ["ok", "still ok"]);
}

/// A power cut on a file system that lost a consume-queue segment's size (it comes back 0
/// bytes long, or not at all): recovery removes it and every later one of that queue, scans
/// the whole log and rebuilds their entries, instead of refusing to start.
#[test]
fn short_or_missing_consume_queue_segments_are_rebuilt_from_the_log() {
    for damage in ["empty", "missing"] {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let (t, _) = store.topics().create("t", 1).unwrap();
        // 2,500 entries: three segments of 1,024.
        let want: Vec<String> = (0..2500).map(|i| format!("m{i}")).collect();
        for chunk in want.chunks(100) {
            let batch: Vec<_> = chunk.iter().map(|b| msg(b)).collect();
            store.append(&t, &batch).unwrap();
        }
        store.shutdown().unwrap();
        drop((t, store));
        let seg1 = dir.path().join("consumequeue/t/0").join(format!("{:020}", 1024 * 20));
        match damage {
            "empty" => std::fs::OpenOptions::new().write(true).open(&seg1).unwrap().set_len(0).unwrap(),
            _ => std::fs::remove_file(&seg1).unwrap(),
        }

        let store = open(dir.path());
        let rep = store.recovery_report().clone();
        assert_eq!(rep.log.scanned_from, 0, "{damage}: the whole log is scanned: {rep}");
        assert_eq!(rep.reindexed, 2500 - 1024, "{damage}: {rep}");
        assert!(rep.to_string().contains("damaged index segments rebuilt"), "{rep}");
        assert_eq!(bodies(&store, "t"), want, "{damage}");
        store.shutdown().unwrap();
    }
}

/// After a power cut under the async policy the consume queue can lose its tail while the
/// group's progress file, written later, survived and says those messages were acked. The
/// next messages get the same queue offsets: the group must receive them as new ones.
#[test]
fn a_group_ahead_of_its_queue_receives_the_messages_that_reuse_the_offsets() {
    use chime::group::{Batch, GroupOptions, Groups, TagExpr};
    let tmp = tempfile::tempdir().unwrap();
    let group_opts = |dir: &Path| GroupOptions {
        dir: dir.join("groups"),
        persist_interval: Duration::from_secs(3600),
        max_groups_per_topic: 1000,
    };
    let receive_all = |groups: &Groups, t: &chime::store::topics::Topic| -> Vec<String> {
        let got = groups.receive("g", t, Batch { max: 100, max_bytes: 8 << 20 }, 60_000, &TagExpr::All).unwrap();
        let handles: Vec<String> = got.messages.iter().map(|d| d.receipt_handle.clone()).collect();
        groups.ack("g", t, &handles);
        got.messages.iter().map(|d| String::from_utf8(d.record.record().body.to_vec()).unwrap()).collect()
    };
    // Before the cut: five messages, all received and acked, the progress persisted.
    let before = tmp.path().join("before");
    let store = open(&before);
    let (t, _) = store.topics().create("t", 1).unwrap();
    store.append(&t, &(0..5).map(|i| msg(&format!("old{i}"))).collect::<Vec<_>>()).unwrap();
    let groups = Groups::open(store.clone(), group_opts(&before)).unwrap();
    assert_eq!(receive_all(&groups, &t).len(), 5);
    groups.shutdown().unwrap();
    store.shutdown().unwrap();
    drop((groups, t, store));

    // The disk after the cut: only the first three messages, but the group file of five.
    let after = tmp.path().join("after");
    let store = open(&after);
    let (t, _) = store.topics().create("t", 1).unwrap();
    store.append(&t, &(0..3).map(|i| msg(&format!("old{i}"))).collect::<Vec<_>>()).unwrap();
    store.shutdown().unwrap();
    drop((t, store));
    std::fs::create_dir_all(after.join("groups/t")).unwrap();
    std::fs::copy(before.join("groups/t/g.json"), after.join("groups/t/g.json")).unwrap();

    let store = open(&after);
    let groups = Groups::open(store.clone(), group_opts(&after)).unwrap();
    // New messages arrive before the group is first used: they take offsets 3, 4 and 5.
    let t = store.topics().get("t").unwrap();
    store.append(&t, &(0..3).map(|i| msg(&format!("new{i}"))).collect::<Vec<_>>()).unwrap();
    let got = receive_all(&groups, &t);
    assert_eq!(got, ["new0", "new1", "new2"], "the acked-before-the-cut offsets are not taken for the new messages");
    groups.shutdown().unwrap();
    store.shutdown().unwrap();
}

#[test]
fn a_topic_takes_no_index_space_before_its_first_message_and_a_lost_queue_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (t, _) = store.topics().create("t", 4).unwrap();
    let files = |q: u16| std::fs::read_dir(dir.path().join(format!("consumequeue/t/{q}"))).map_or(0, |d| d.count());
    assert!((0..4).all(|q| files(q) == 0), "no consume-queue segment before the first message");
    let mut want = Vec::new();
    for i in 0..400 {
        let b = format!("{i:0>200}");
        store.append(&t, &[msg(&b)]).unwrap();
        want.push(b);
    }
    store.shutdown().unwrap();
    drop((t, store));
    // With a good checkpoint (nothing to replay after it), one queue loses every segment: it
    // shows as a gap when replayed, and recovery rebuilds it from the whole log.
    let lost = dir.path().join("consumequeue/t/1");
    assert!(files(1) > 0);
    for f in std::fs::read_dir(&lost).unwrap() {
        std::fs::remove_file(f.unwrap().path()).unwrap();
    }
    let store = open(dir.path());
    let t = store.topics().get("t").unwrap();
    store.append(&t, &[msg("after")]).unwrap();
    want.push("after".into());
    store.shutdown().unwrap();
    drop((t, store));
    let store = open(dir.path());
    let rep = store.recovery_report().clone();
    let mut got = bodies(&store, "t");
    got.sort();
    want.sort();
    assert_eq!(got, want, "{rep}");
}

#[test]
fn the_key_index_is_replayed_from_the_checkpoint_once_and_rebuilt_when_lost() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (t, _) = store.topics().create("t", 2).unwrap();
    let keyed = |i: usize| NewMessage { keys: vec![format!("k{}", i % 10), "all".into()], ..msg(&format!("m{i}")) };
    for i in 0..300 {
        store.append(&t, &[keyed(i)]).unwrap();
    }
    store.shutdown().unwrap();
    drop((t, store));
    // An old checkpoint (recovery replays everything after it): each record indexed once.
    std::fs::remove_file(dir.path().join("checkpoint")).unwrap();
    let store = open(dir.path());
    assert_eq!(store.recovery_report().log.records, 300, "replayed");
    assert_eq!(store.find_by_key("t", "all", 1000).len(), 300, "indexed once, not twice");
    assert_eq!(store.find_by_key("t", "k3", 1000).len(), 30);
    store.shutdown().unwrap();
    drop(store);
    // The whole index lost, and the checkpoint too: rebuilt from the log.
    std::fs::remove_dir_all(dir.path().join("keyindex")).unwrap();
    std::fs::remove_file(dir.path().join("checkpoint")).unwrap();
    let store = open(dir.path());
    let found = store.find_by_key("t", "k3", 1000);
    assert_eq!(found.len(), 30);
    assert!(found.windows(2).all(|w| w[0] > w[1]), "newest first");
}

/// API.md: lookup by key is "served from an index: its cost does not grow with the size of the
/// log". With a million keyed messages, every lookup finds exactly its message, newest first
/// for a shared key, nothing for a key never sent, before and after a restart, and reads a few
/// entries of one hash chain per index file, not the records (a scan would read a million).
#[test]
fn lookups_by_key_with_a_million_messages_stored_read_one_short_chain_per_index_file() {
    const N: u64 = 1_000_000;
    const HOT_EVERY: u64 = 10_000;
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions { segment_size: 64 << 20, cq_segment_entries: 1 << 16, ..opts(dir.path()) };
    let store = Store::open(opts.clone(), Arc::new(SystemClock)).unwrap();
    let (t, _) = store.topics().create("t", 8).unwrap();
    for from in (0..N).step_by(1000) {
        let batch: Vec<NewMessage> = (from..from + 1000)
            .map(|i| {
                let mut keys = vec![format!("order-{i}")];
                if i % HOT_EVERY == 0 {
                    keys.push("hot".into());
                }
                NewMessage { keys, ..msg(&format!("m{i}")) }
            })
            .collect();
        store.append(&t, &batch).unwrap();
    }
    let body = |store: &Store, off: u64| {
        let r = store.read(off).expect("indexed record").verify().expect("valid");
        String::from_utf8(r.record().body.to_vec()).unwrap()
    };
    let check = |store: &Store| {
        let per_file = store.keys_per_index_file() as u64;
        let want_files = (N + N / HOT_EVERY).div_ceil(per_file) as usize;
        let files_u64 = want_files as u64;
        let (mut worst, mut total) = (0, 0);
        for k in 0..2000u64 {
            let i = k.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17) % N;
            let (found, visited, files) = store.find_by_key_counted("t", &format!("order-{i}"), 100);
            assert_eq!(files, files_u64);
            // A hash collision would be weeded out by the caller; FNV-1a has none among these.
            let bodies: Vec<String> = found.iter().map(|&o| body(store, o)).collect();
            assert_eq!(bodies, vec![format!("m{i}")], "order-{i}");
            (worst, total) = (worst.max(visited), total + visited);
        }
        // Each file has a quarter as many slots as keys: chains of about 4 at most on average.
        let per_lookup = total as f64 / 2000.0;
        assert!(per_lookup <= 5.0 * want_files as f64, "{per_lookup} entries read per lookup over {want_files} files");
        assert!(worst <= 12 * want_files, "the longest lookup read {worst} entries over {want_files} files");
        let (hot, _, _) = store.find_by_key_counted("t", "hot", 60);
        let hot: Vec<String> = hot.iter().map(|&o| body(store, o)).collect();
        let want: Vec<String> = (0..60).map(|k| format!("m{}", N - HOT_EVERY * (k + 1))).collect();
        assert_eq!(hot, want, "newest first, limited");
        assert_eq!(store.find_by_key("t", "hot", 1000).len(), (N / HOT_EVERY) as usize);
        assert!(store.find_by_key("t", "order-never", 100).is_empty());
        assert!(store.find_by_key("other", "order-5", 100).is_empty(), "keys are per topic");
    };
    check(&store);
    store.shutdown().unwrap();
    drop((t, store));
    let store = Store::open(opts, Arc::new(SystemClock)).unwrap();
    check(&store);
}
