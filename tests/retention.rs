//! The storage lifecycle (README "What survives what", API.md "Storage lifecycle") on the
//! simulated clock: retention reclaims old commit-log segments, every pending scheduled message
//! in them is carried forward first and keeps its id, status and cancel; consumer groups move
//! past what was reclaimed and count it expired; a move a crash interrupts settles at start-up
//! (fired once, or not at all if cancelled); above the disk's hard limit sends are refused
//! until space returns, and the soft limit reclaims early.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chime::clock::ManualClock;
use chime::group::{Batch, GroupOptions, Groups, TagExpr};
use chime::retention::{Disk, DiskProbe, Retention, RetentionOptions, Rule};
use chime::service::{deliver, Broker, BrokerOptions, ServiceError};
use chime::store::{FlushPolicy, NewMessage, Store, StoreError, StoreOptions};
use chime::timer::{Geometry, MessageState, TimerEngine, TimerOptions};
use parking_lot::Mutex;

const T0: i64 = 1_800_000_000_000;
const TOPIC: &str = "orders";
const HOUR: i64 = 3_600_000;
const SEGMENT: u64 = 256 << 10;

struct H {
    dir: PathBuf,
    clock: Arc<ManualClock>,
    disk: Arc<Mutex<Disk>>,
    store: Arc<Store>,
    timer: Arc<TimerEngine>,
    groups: Arc<Groups>,
    broker: Broker,
    retention: Arc<Retention>,
}

fn open(dir: &Path, clock: Arc<ManualClock>, disk: Arc<Mutex<Disk>>) -> H {
    let opts = StoreOptions {
        dir: dir.to_path_buf(),
        segment_size: SEGMENT,
        cq_segment_entries: 64, // small, so index segments are reclaimed too
        flush: FlushPolicy::Async { interval: Duration::from_millis(50) },
        checkpoint_interval: Duration::from_millis(50),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let store = loop {
        match Store::open(opts.clone(), clock.clone()) {
            Ok(s) => break s,
            Err(StoreError::Lock(_)) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("store does not open: {e}"),
        }
    };
    let groups = Groups::open(
        store.clone(),
        GroupOptions {
            dir: dir.join("groups"),
            persist_interval: Duration::from_millis(50),
            max_groups_per_topic: 100,
        },
    )
    .unwrap();
    let timer = TimerEngine::start(
        store.clone(),
        TimerOptions {
            dir: dir.join("timer"),
            geometry: Geometry::new(1000, 7200),
            lookahead_ms: 1000,
            timer_log_segment_units: 4096,
            checkpoint_interval: Duration::from_millis(50),
            queue_capacity: 4096,
            default_queues: 2,
            max_per_slot: None,
            progress_interval: None,
            lag_warn_ms: 5_000,
        },
    )
    .unwrap();
    let broker =
        Broker::new(store.clone(), timer.clone(), BrokerOptions { auto_create_topics: true, default_queues: 2 });
    let probe_disk = disk.clone();
    let probe: DiskProbe = Arc::new(move |_: &Path| Ok(*probe_disk.lock()));
    let retention = Retention::new(
        store.clone(),
        timer.clone(),
        clock.clone(),
        RetentionOptions {
            data_dir: dir.to_path_buf(),
            retention: Duration::from_millis(HOUR as u64),
            retention_bytes: 0,
            check_interval: Duration::from_secs(3600),
            soft_limit: 0.85,
            hard_limit: 0.95,
        },
        probe,
    );
    H { dir: dir.to_path_buf(), clock, disk, store, timer, groups, broker, retention }
}

fn half_full() -> Disk {
    Disk { total_bytes: 100 << 30, free_bytes: 50 << 30 }
}

impl H {
    fn new(dir: &Path) -> Self {
        open(dir, ManualClock::new(T0), Arc::new(Mutex::new(half_full())))
    }

    fn send(&self, body: String, at: Option<i64>) -> String {
        let m = NewMessage {
            body: body.into_bytes(),
            born_ms: self.clock.now_ms_for_test(),
            deliver_at_ms: at,
            ..Default::default()
        };
        self.broker.append(TOPIC, vec![m]).unwrap().sent[0].id.to_string()
    }

    fn state(&self, id: &str) -> Result<MessageState, ServiceError> {
        self.broker.status(TOPIC, id).map(|(_, _, st)| st)
    }

    fn cancel(&self, id: &str) -> Result<(), ServiceError> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(self.broker.cancel(TOPIC, id)).map(|_| ())
    }

    /// Waits until the timer has placed everything and nothing is queued between its stages.
    fn wait_idle(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let s = self.timer.stats();
            if s.enqueue_lag == 0 && s.stages.iter().all(|(_, st)| st.queue_depth == 0) {
                return;
            }
            assert!(Instant::now() < deadline, "timer not idle: {s:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Moves the clock to `t` in steps the timer can follow, waiting for it at each.
    fn advance_to(&self, t: i64) {
        while self.clock.now_ms_for_test() < t {
            let next = (self.clock.now_ms_for_test() + 600_000).min(t);
            self.clock.set(next);
            self.wait_idle();
        }
        std::thread::sleep(Duration::from_millis(100));
        self.wait_idle();
    }

    /// id → how many copies of it are visible in the topic.
    fn visible(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        let Some(t) = self.store.topics().get(TOPIC) else { return out };
        for q in &t.queues {
            for i in 0..q.next() {
                let Some(e) = q.get(i) else { continue };
                let Some(r) = self.store.read_verified(e.log_offset) else { continue };
                let rec = r.record();
                assert!(rec.store_ms >= rec.deliver_at_ms, "visible before its time");
                *out.entry(deliver(&rec, e.log_offset).id).or_default() += 1;
            }
        }
        out
    }

    fn receive_all(&self, group: &str) -> Vec<String> {
        let topic = self.store.topics().get(TOPIC).unwrap();
        let mut got = Vec::new();
        loop {
            let r = self
                .groups
                .receive(group, &topic, Batch { max: 1000, max_bytes: 64 << 20 }, 600_000, &TagExpr::All)
                .unwrap();
            if r.messages.is_empty() {
                return got;
            }
            let handles: Vec<String> = r.messages.iter().map(|d| d.receipt_handle.clone()).collect();
            self.groups.ack(group, &topic, &handles);
            got.extend(r.messages.iter().map(|d| deliver(&d.record.record(), d.log_offset).id));
        }
    }

    /// As a crash leaves it: nothing shut down cleanly.
    fn crash(self) -> Self {
        let (dir, clock, disk) = (self.dir.clone(), self.clock.clone(), self.disk.clone());
        self.timer.halt_like_a_crash();
        drop(self);
        open(&dir, clock, disk)
    }
}

trait NowForTest {
    fn now_ms_for_test(&self) -> i64;
}

impl NowForTest for ManualClock {
    fn now_ms_for_test(&self) -> i64 {
        use chime::clock::Clock;
        self.now_ms()
    }
}

fn pad(i: usize) -> String {
    format!("{i:06}-{}", "x".repeat(2000))
}

/// Normal messages with scheduled ones due in 10 h among them, over several segments.
fn fill(h: &H) -> (Vec<String>, Vec<String>) {
    let (mut normal, mut far) = (Vec::new(), Vec::new());
    for i in 0..400 {
        if i % 8 == 0 {
            far.push(h.send(pad(i), Some(T0 + 10 * HOUR + i as i64)));
        } else {
            normal.push(h.send(pad(i), None));
        }
    }
    (normal, far)
}

#[test]
fn reclaimed_segments_keep_every_pending_message_with_its_id_status_and_cancel() {
    let dir = tempfile::tempdir().unwrap();
    let h = H::new(dir.path());
    let (normal, far) = fill(&h);
    assert!(h.store.log_segments().len() >= 3, "the load spans several segments");
    // Cancelled before retention: never delivered, whatever is reclaimed.
    h.cancel(&far[0]).unwrap();
    h.wait_idle();

    // Nothing is old yet.
    let t = h.retention.tick().unwrap();
    assert!(t.reclaimed.is_empty(), "{t:?}");

    h.advance_to(T0 + 2 * HOUR);
    let t = h.retention.tick().unwrap();
    let reclaimed = t.reclaimed.len();
    assert!(reclaimed >= 2, "old segments are reclaimed: {t:?}");
    assert!(t.reclaimed.iter().all(|&(_, r)| r == Rule::Age));
    assert!(t.carried > 0, "pending messages were carried forward: {t:?}");
    assert_eq!(h.timer.carried_forward(), t.carried);
    assert!(h.store.min_offset() > 0);
    assert_eq!(h.timer.stats().pending_total, far.len() as i64 - 1, "nothing pending lost or counted twice");
    assert!(t.index_segments > 0, "index segments of reclaimed records go too: {t:?}");
    let starts =
        |h: &H| -> Vec<u64> { h.store.topics().get(TOPIC).unwrap().queues.iter().map(|q| q.start()).collect() };
    let before = starts(&h);
    assert!(before.iter().any(|&s| s > 0), "{before:?}");

    // Every pending message answers under the id its send returned.
    for id in &far[1..] {
        assert_eq!(h.state(id).unwrap(), MessageState::Scheduled, "{id}");
    }
    // A cancel of a carried-forward message by its original id holds.
    h.cancel(&far[1]).unwrap();
    assert_eq!(h.state(&far[1]).unwrap(), MessageState::Cancelled);

    // A group that never received moves past what was reclaimed and counts it.
    let got = h.receive_all("late");
    let expired = h.groups.expired_total();
    assert!(expired > 0);
    assert_eq!(got.len() as u64 + expired, normal.len() as u64, "every normal message received or expired");
    let got: BTreeSet<String> = got.into_iter().collect();
    assert!(got.iter().all(|id| normal.contains(id)));

    // The report says what happened.
    let r = h.retention.report();
    assert_eq!(r.reclaimed.segments, reclaimed as u64);
    assert_eq!(r.carried_forward, t.carried);
    assert_eq!(r.commitlog.first_offset, h.store.min_offset());
    assert!(r.accepting);

    // Across a crash: the map from ids to copies is rebuilt, nothing pending is lost, and the
    // queues keep their starts (nothing taken for lost and rebuilt).
    let h = h.crash();
    assert_eq!(starts(&h), before);
    assert!(h.store.recovery_report().removed_index_segments.is_empty(), "{}", h.store.recovery_report());
    for id in &far[2..] {
        assert_eq!(h.state(id).unwrap(), MessageState::Scheduled, "{id} after the restart");
    }
    // Its copy cancelled and its original reclaimed, the restart no longer maps its id: it is
    // final either way (README: a status may answer 404 once a message is no longer pending).
    assert!(matches!(h.state(&far[1]), Ok(MessageState::Cancelled) | Err(ServiceError::NotFound(_))));
    assert_eq!(h.timer.stats().pending_total, far.len() as i64 - 2);

    // They fire at their time, once, under their original ids; the cancelled ones never.
    h.advance_to(T0 + 11 * HOUR);
    let visible = h.visible();
    for id in &far[2..] {
        assert_eq!(visible.get(id), Some(&1), "{id} fired once");
        assert_eq!(h.state(id).unwrap(), MessageState::Delivered);
    }
    assert!(!visible.contains_key(&far[0]) && !visible.contains_key(&far[1]), "cancelled, never delivered");
    assert_eq!(h.timer.stats().pending_total, 0);
}

#[test]
fn a_message_due_within_the_margin_pins_its_segment_until_it_fires() {
    let dir = tempfile::tempdir().unwrap();
    let h = H::new(dir.path());
    let soon = h.send(pad(0), Some(T0 + 2 * HOUR + 30_000));
    fill(&h);
    h.wait_idle();
    h.advance_to(T0 + 2 * HOUR);
    let t = h.retention.tick().unwrap();
    assert!(t.reclaimed.is_empty(), "the first segment is pinned: {t:?}");
    assert_eq!(t.pinned.segments, 1);
    assert!(t.pinned.pending_messages >= 1);
    assert!(t.pinned.reason.as_deref().unwrap().contains("due"), "{:?}", t.pinned);
    assert_eq!(h.retention.report().pinned, t.pinned);
    // Once it has fired, the segment goes.
    h.advance_to(T0 + 2 * HOUR + 31_000);
    assert_eq!(h.visible().get(&soon), Some(&1));
    let t = h.retention.tick().unwrap();
    assert!(!t.reclaimed.is_empty(), "{t:?}");
    assert_eq!(t.pinned.segments, 0);
}

#[test]
fn a_crash_between_copy_and_move_fires_the_message_once() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let h = H::new(dir.path());
    let (_, far) = fill(&h);
    // One of them is cancelled while the move is in the crash window: its copy must not fire.
    h.advance_to(T0 + 2 * HOUR);
    fail::cfg(chime::timer::carry::STOP_BEFORE_MOVE, "return").unwrap();
    let end = h.store.write_pos();
    assert!(h.retention.tick().is_err(), "stopped after the copies, before any move");
    fail::remove(chime::timer::carry::STOP_BEFORE_MOVE);
    assert_eq!(h.store.min_offset(), 0, "nothing reclaimed");
    assert!(h.store.write_pos() > end, "the copies were appended");
    // Copies exist and are durable; the originals are still scheduled: a crash here.
    h.cancel(&far[3]).unwrap();
    let h = h.crash();
    assert_eq!(h.timer.stats().pending_total, far.len() as i64 - 1, "each message counted once after the restart");
    for (i, id) in far.iter().enumerate() {
        let want = if i == 3 { MessageState::Cancelled } else { MessageState::Scheduled };
        assert_eq!(h.state(id).unwrap(), want, "{id}");
    }
    // Reclaiming now carries nothing again for the settled ones (their originals moved).
    let t = h.retention.tick().unwrap();
    assert!(!t.reclaimed.is_empty(), "{t:?}");
    h.advance_to(T0 + 11 * HOUR);
    let visible = h.visible();
    for (i, id) in far.iter().enumerate() {
        let want = if i == 3 { None } else { Some(&1) };
        assert_eq!(visible.get(id), want, "{id}");
    }
    assert_eq!(h.timer.stats().pending_total, 0);
    scenario.teardown();
}

#[test]
fn above_the_hard_limit_sends_are_refused_until_space_returns_and_the_soft_limit_reclaims_early() {
    let dir = tempfile::tempdir().unwrap();
    let h = H::new(dir.path());
    let (_, far) = fill(&h);
    h.wait_idle();
    // Hard limit: sends refused, nothing stored; the timer and the rest go on.
    *h.disk.lock() = Disk { total_bytes: 100, free_bytes: 3 };
    let before = h.store.write_pos();
    let t = h.retention.tick().unwrap();
    assert!(!t.accepting);
    let m = NewMessage { body: b"x".to_vec(), ..Default::default() };
    match h.broker.append(TOPIC, vec![m.clone()]) {
        Err(ServiceError::Store(e)) => assert!(e.is_disk_full(), "{e}"),
        other => panic!("a send above the hard limit: {other:?}"),
    }
    assert!(!h.retention.report().accepting);
    // The soft limit reclaimed the old segments at once, whatever their age, pending carried.
    assert!(!t.reclaimed.is_empty() && t.reclaimed.iter().all(|&(_, r)| r == Rule::DiskSoftLimit), "{t:?}");
    assert!(h.store.write_pos() > before, "only carried-forward copies were written");
    for id in &far {
        assert_eq!(h.state(id).unwrap(), MessageState::Scheduled);
    }
    // Space returns: sends pass again by themselves.
    *h.disk.lock() = half_full();
    assert!(h.retention.tick().unwrap().accepting);
    h.broker.append(TOPIC, vec![m]).unwrap();
    h.advance_to(T0 + 11 * HOUR);
    let visible = h.visible();
    assert!(far.iter().all(|id| visible.get(id) == Some(&1)));
}
