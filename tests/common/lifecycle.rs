//! The storage-lifecycle harness (`tests/retention.rs`, `tests/retention_powercut.rs`): a store,
//! timer, groups, broker and retention on one simulated clock, with small segments and a disk
//! whose figures the test sets.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chime::clock::ManualClock;
use chime::group::{Batch, GroupOptions, Groups, TagExpr};
use chime::retention::{Disk, DiskProbe, Retention, RetentionOptions};
use chime::service::{deliver, Broker, BrokerOptions, Consumers, ServiceError};
use chime::store::{FlushPolicy, NewMessage, Store, StoreOptions};
use chime::timer::{MessageState, TimerEngine};
use parking_lot::Mutex;

pub const T0: i64 = 1_800_000_000_000;
pub const TOPIC: &str = "orders";
pub const HOUR: i64 = 3_600_000;
const SEGMENT: u64 = 256 << 10;

/// What a scenario sets: the retention and the wheel's geometry.
#[derive(Debug, Clone, Copy)]
pub struct Params {
    pub retention_ms: i64,
    pub precision_ms: i64,
    pub slots: u64,
    /// The store's flush and checkpoint interval and the timer's checkpoint interval (ms).
    pub flush_ms: u64,
    /// The groups' persist interval (ms).
    pub persist_ms: u64,
}

impl Default for Params {
    /// One hour of retention, a wheel of 7200 one-second slots, flushes every 50 ms.
    fn default() -> Self {
        Self { retention_ms: HOUR, precision_ms: 1000, slots: 7200, flush_ms: 50, persist_ms: 50 }
    }
}

pub struct H {
    pub dir: PathBuf,
    pub params: Params,
    pub clock: Arc<ManualClock>,
    pub disk: Arc<Mutex<Disk>>,
    pub store: Arc<Store>,
    pub timer: Arc<TimerEngine>,
    pub groups: Arc<Groups>,
    pub broker: Broker,
    pub consumers: Consumers,
    pub retention: Arc<Retention>,
}

pub fn open(dir: &Path, clock: Arc<ManualClock>, disk: Arc<Mutex<Disk>>) -> H {
    open_with(dir, clock, disk, Params::default())
}

pub fn open_with(dir: &Path, clock: Arc<ManualClock>, disk: Arc<Mutex<Disk>>, params: Params) -> H {
    let opts = StoreOptions {
        dir: dir.to_path_buf(),
        segment_size: SEGMENT,
        cq_segment_entries: 64, // small, so index segments are reclaimed too
        flush: FlushPolicy::Async { interval: Duration::from_millis(params.flush_ms) },
        checkpoint_interval: Duration::from_millis(params.flush_ms),
    };
    let store = super::open_store(opts, clock.clone());
    let groups = Groups::open(
        store.clone(),
        GroupOptions {
            dir: dir.join("groups"),
            persist_interval: Duration::from_millis(params.persist_ms),
            max_groups_per_topic: 100,
        },
    )
    .unwrap();
    // Small timer-log segments and state files, so they are reclaimed too.
    let timer_opts = chime::timer::TimerOptions {
        timer_log_segment_units: 16,
        state_cells_per_file: 64,
        geometry: chime::timer::Geometry::new(params.precision_ms, params.slots),
        // The timer's checkpoint fsyncs the commit log too: it runs on the store's interval.
        checkpoint_interval: Duration::from_millis(params.flush_ms),
        ..super::timer_options(dir, params.slots, 4096)
    };
    let timer = TimerEngine::start(store.clone(), timer_opts).unwrap();
    let broker = Broker::new(store.clone(), timer.clone(), BrokerOptions::new(true, 2));
    let probe_disk = disk.clone();
    let probe: DiskProbe = Arc::new(move |_: &Path| Ok(*probe_disk.lock()));
    let retention = Retention::new(
        store.clone(),
        timer.clone(),
        groups.clone(),
        clock.clone(),
        RetentionOptions {
            data_dir: dir.to_path_buf(),
            retention: Duration::from_millis(params.retention_ms as u64),
            retention_bytes: 0,
            check_interval: Duration::from_secs(3600),
            soft_limit: 0.85,
            hard_limit: 0.95,
            carry_margin: Duration::from_secs(60),
        },
        probe,
    );
    broker.recover_transactions().unwrap();
    let txns = broker.transactions_table().clone();
    retention.pin_below(Box::new(move || txns.pinned_below()));
    let consumers = Consumers::new(broker.clone(), groups.clone());
    H { dir: dir.to_path_buf(), params, clock, disk, store, timer, groups, broker, consumers, retention }
}

pub fn half_full() -> Disk {
    Disk { total_bytes: 100 << 30, free_bytes: 50 << 30 }
}

impl H {
    pub fn new(dir: &Path) -> Self {
        open(dir, ManualClock::new(T0), Arc::new(Mutex::new(half_full())))
    }

    pub fn send(&self, body: String, at: Option<i64>) -> String {
        let m = NewMessage {
            body: body.into_bytes(),
            born_ms: self.clock.now_ms_for_test(),
            deliver_at_ms: at,
            ..Default::default()
        };
        self.broker.append(TOPIC, vec![m]).unwrap().sent[0].id.to_string()
    }

    pub fn state(&self, id: &str) -> Result<MessageState, ServiceError> {
        self.broker.status(TOPIC, id).map(|(_, _, st)| st)
    }

    pub fn cancel(&self, id: &str) -> Result<(), ServiceError> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(self.broker.cancel(TOPIC, id)).map(|_| ())
    }

    /// Waits until the timer has placed everything and nothing is queued between its stages.
    pub fn wait_idle(&self) {
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

    /// Waits until the timer has also read every slot up to now and fired what is due.
    pub fn wait_caught_up(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            self.wait_idle();
            if self.timer.stats().dequeue_lag_ms == 0 {
                std::thread::sleep(Duration::from_millis(20));
                self.wait_idle();
                return;
            }
            assert!(Instant::now() < deadline, "timer not caught up: {:?}", self.timer.stats());
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Moves the clock to `t` in steps the timer can follow, waiting for it at each.
    pub fn advance_to(&self, t: i64) {
        while self.clock.now_ms_for_test() < t {
            let next = (self.clock.now_ms_for_test() + 600_000).min(t);
            self.clock.set(next);
            self.wait_idle();
        }
        // On a busy machine the timer may still be reading slots up to `t`: wait until it has.
        self.wait_caught_up();
        // Then two checkpoint intervals of the default 50 ms, for fired cells to settle
        // (FIRING → DELIVERED); with the power-cut tests' hour-long interval they do not.
        std::thread::sleep(Duration::from_millis(100));
        self.wait_idle();
    }

    /// id → how many copies of it are visible in the topic.
    pub fn visible(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        let Some(t) = self.store.topics().get(TOPIC) else { return out };
        for (qi, q) in t.queues.iter().enumerate() {
            for i in 0..q.next() {
                let Some(e) = q.get(i) else { continue };
                let Ok(r) = self.store.read_entry(TOPIC, qi as u16, i, e) else { continue };
                let rec = r.record.record();
                assert!(r.visible_ms >= rec.deliver_at_ms, "visible before its time");
                *out.entry(deliver(&rec, r.record.offset()).id).or_default() += 1;
            }
        }
        out
    }

    pub fn receive_all(&self, group: &str) -> Vec<String> {
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
    pub fn crash(self) -> Self {
        let (dir, clock, disk, params) = (self.dir.clone(), self.clock.clone(), self.disk.clone(), self.params);
        self.timer.halt_like_a_crash();
        drop(self);
        open_with(&dir, clock, disk, params)
    }
}

pub trait NowForTest {
    fn now_ms_for_test(&self) -> i64;
}

impl NowForTest for ManualClock {
    fn now_ms_for_test(&self) -> i64 {
        use chime::clock::Clock;
        self.now_ms()
    }
}

pub fn pad(i: usize) -> String {
    format!("{i:06}-{}", "x".repeat(2000))
}

/// Normal messages with scheduled ones due in 10 h among them, over several segments.
pub fn fill(h: &H) -> (Vec<String>, Vec<String>) {
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

/// A harness whose data directory the power-cut simulation records (`src/store/powercut.rs`):
/// [`Recorded::cut`] builds the directory a power cut would leave at that moment. The caller
/// holds a `fail::FailScenario` (the recorder is configured through a failpoint).
pub struct Recorded {
    pub tmp: tempfile::TempDir,
    pub shadow: PathBuf,
}

impl Recorded {
    /// Opens a harness on `tmp/data` with the recorder on, at `T0`.
    pub fn open(params: Params) -> (H, Recorded) {
        use chime::store::powercut;
        let tmp = tempfile::tempdir().unwrap();
        let (data, shadow) = (tmp.path().join("data"), tmp.path().join("shadow"));
        std::fs::create_dir_all(&data).unwrap();
        fail::cfg(powercut::FAILPOINT, &format!("return({})", shadow.display())).unwrap();
        let h = open_with(&data, ManualClock::new(T0), Arc::new(Mutex::new(half_full())), params);
        fail::remove(powercut::FAILPOINT);
        (h, Recorded { tmp, shadow })
    }

    /// The directory a power cut now leaves, as `tmp/name`.
    pub fn cut(&self, name: &str) -> PathBuf {
        let dir = self.tmp.path().join(name);
        chime::store::powercut::materialize(&self.shadow, &dir).unwrap();
        dir
    }
}
