//! Messages stored ahead of their time (`chime::store::staged`): invisible until published,
//! visible at the publish time, in publish order, and rebuilt by recovery exactly as the log
//! says: a publish record that did not survive takes its entries with it, a staged record no
//! publish record names is never indexed.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chime::clock::ManualClock;
use chime::store::record::{self, NewMessage};
use chime::store::topics::Topic;
use chime::store::{FlushPolicy, Staged, Store, StoreOptions, Unresolved};

const T0: i64 = 1_000_000;

fn opts(dir: &Path) -> StoreOptions {
    StoreOptions {
        dir: dir.to_path_buf(),
        segment_size: 1 << 20,
        cq_segment_entries: 1024,
        flush: FlushPolicy::Async { interval: Duration::from_millis(20) },
        checkpoint_interval: Duration::from_secs(3600),
    }
}

fn open(dir: &Path, clock: &Arc<ManualClock>) -> Arc<Store> {
    Store::open(opts(dir), clock.clone()).expect("store opens")
}

/// A fired message's record as the timer encodes it: due at `at`.
fn encoded(topic: &str, body: &str, at: i64) -> Vec<u8> {
    let m = NewMessage { body: body.into(), born_ms: 1, deliver_at_ms: Some(at), ..Default::default() };
    let mut out = Vec::new();
    record::encode(&mut out, topic, 0, 0, &m);
    out
}

/// A new store on a manual clock at `T0`, with topic `fired` of one queue.
fn fresh() -> (tempfile::TempDir, Arc<ManualClock>, Arc<Store>, Arc<Topic>) {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let store = open(dir.path(), &clock);
    let (t, _) = store.topics().create("fired", 1).unwrap();
    (dir, clock, store, t)
}

fn stage(store: &Store, t: &Topic, bodies: &[&str], at: i64) -> Vec<Staged> {
    let mut recs: Vec<Vec<u8>> = bodies.iter().map(|b| encoded(&t.name, b, at)).collect();
    store.append_staged(t, 0, &mut recs).unwrap()
}

/// (body, visible_ms) of queue 0, in queue order, through `read_entry` (as consumers read).
fn visible(store: &Store, topic: &str) -> Vec<(String, i64)> {
    let t = store.topics().get(topic).unwrap();
    let q = &t.queues[0];
    (0..q.next())
        .map(|i| {
            let r = store.read_entry(topic, 0, i, q.get(i).unwrap()).unwrap();
            (String::from_utf8(r.record.record().body.to_vec()).unwrap(), r.visible_ms)
        })
        .collect()
}

#[test]
fn staged_messages_are_invisible_until_published_then_visible_at_the_publish_time() {
    let (_dir, clock, store, t) = fresh();
    let staged = stage(&store, &t, &["a", "b", "c"], T0 + 500);
    assert_eq!(t.queues[0].next(), 0, "staged records are in no consume queue");
    assert!(staged.windows(2).all(|w| w[0].log_offset < w[1].log_offset));

    // A normal send meanwhile is visible at once, ahead of the staged ones.
    clock.advance(100);
    store.append(&t, &[NewMessage { body: b"now".to_vec(), born_ms: 1, ..Default::default() }]).unwrap();
    assert_eq!(visible(&store, "fired"), vec![("now".to_string(), T0 + 100)]);

    clock.advance(400);
    let p = store.publish_staged(&t, 0, &[staged[2], staged[0], staged[1]]).unwrap();
    assert_eq!((p.first_queue_offset, p.store_ms), (1, T0 + 500));
    assert!(p.end >= store.write_pos());
    let want: Vec<(String, i64)> =
        [("now", T0 + 100), ("c", T0 + 500), ("a", T0 + 500), ("b", T0 + 500)].map(|(b, t)| (b.to_string(), t)).into();
    assert_eq!(visible(&store, "fired"), want, "in publish order, visible when published");

    // An entry is only its own position's: the same entry read as another position is refused.
    let e = t.queues[0].get(2).unwrap();
    assert!(matches!(store.read_entry("fired", 0, 3, e), Err(Unresolved::NotIts)));
    assert!(matches!(store.read_entry("other", 0, 2, e), Err(Unresolved::NotIts)));
}

#[test]
fn recovery_rebuilds_published_entries_and_never_indexes_unpublished_ones() {
    let (dir, clock, store, t) = fresh();
    let published = stage(&store, &t, &["p1", "p2"], T0 + 10);
    let _never = stage(&store, &t, &["cancelled"], T0 + 20);
    clock.advance(10);
    store.publish_staged(&t, 0, &published).unwrap();
    let late = stage(&store, &t, &["p3"], T0 + 30);
    clock.advance(20);
    store.publish_staged(&t, 0, &late).unwrap();
    let want = visible(&store, "fired");
    assert_eq!(want.len(), 3);
    store.flush_all().unwrap();
    drop((t, store));

    // The whole index lost (and the checkpoint with it): everything is rebuilt from the log.
    std::fs::remove_dir_all(dir.path().join("consumequeue")).unwrap();
    std::fs::remove_file(dir.path().join("checkpoint")).unwrap();
    let store = open(dir.path(), &clock);
    assert_eq!(visible(&store, "fired"), want, "the same entries, visible at the same times");
}

#[test]
fn a_publish_record_recovery_cuts_takes_its_entries_with_it() {
    let (dir, clock, store, t) = fresh();
    let staged = stage(&store, &t, &["x", "y"], T0);
    store.publish_staged(&t, 0, &staged).unwrap();
    let publish_at = t.queues[0].get(0).unwrap().log_offset;
    drop((t, store));

    // The publish record torn (its last bytes never reached the disk), after the checkpoint.
    let _ = std::fs::remove_file(dir.path().join("checkpoint"));
    let seg = dir.path().join("commitlog").join(format!("{:020}", 0));
    let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&[0xFF; 8], publish_at + record::HEADER_LEN as u64 + 8).unwrap();
    drop(f);
    let store = open(dir.path(), &clock);
    let t = store.topics().get("fired").unwrap();
    assert_eq!(t.queues[0].next(), 0, "no entry survives its publish record");
    // The staged records are still in the log, but nothing names them: a new publish can.
    assert_eq!(store.write_pos(), publish_at);
    store.publish_staged(&t, 0, &staged).unwrap();
    assert_eq!(visible(&store, "fired").into_iter().map(|v| v.0).collect::<Vec<_>>(), ["x", "y"]);
}
