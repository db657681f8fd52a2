//! The storage lifecycle: retention by age and size, the disk's soft and hard limits, and the
//! reclamation of commit-log segments, without ever losing a pending scheduled message.
//!
//! A background thread ([`Retention::start`]) runs [`Retention::tick`] every
//! `store.retention_check_interval`; nothing here is on the send path (a send reads one flag,
//! [`crate::store::Store::accepting`]). Each tick:
//! 1. probes the disk of the data directory: above `disk_hard_limit` client sends are refused
//!    ("disk full", 503) until it is below again; the timer, receives, acks and cancels go on;
//! 2. reclaims the oldest commit-log segment while a rule asks for it: its newest record is
//!    older than `retention` (bounded by the store time of the next segment's first record,
//!    since store times never go backwards), the log is larger than `retention_bytes`, or the
//!    disk is above `disk_soft_limit`. The segment being written is never reclaimed;
//! 3. reclaims what described the reclaimed records: consume-queue segments, the timer's
//!    units, state cells and moved-id entries ([`TimerEngine::reclaim`]), and moves every
//!    consumer group past them ([`Groups::expire_reclaimed`]).
//!
//! Before a segment goes, the timer carries its pending scheduled messages forward
//! (`timer::carry`: copied to the head of the log, durably, same message id). A message due in
//! `d` is so copied about `d / retention` times. A segment the timer cannot release yet (a
//! message in it is due within [`RetentionOptions::carry_margin`] or being fired, or enqueue-get has not read
//! it) is *pinned*: kept, and tried again next tick. Under size or disk pressure a segment that
//! is more than half pending messages is pinned too: copying them would free too little, and
//! the same messages would be copied again at once. A segment holding a fired message the timer
//! stored ahead of its time and has not yet published (`TimerEngine::staged_floor`), or a
//! prepared transaction's records ([`Retention::pin_below`]), is pinned as well. Normal
//! messages are not carried: a consumer group whose next message was reclaimed moves on and
//! counts it `expired` (`crate::group`).
//!
//! Invariants: only a prefix of the log is reclaimed, oldest first; a segment is deleted only
//! after every pending message in it has a durable copy and its own cell is durably MOVED, so a
//! crash or power cut at any point loses nothing (a deletion the cut undid leaves a segment of
//! moved records, reclaimed again later).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chime_pipeline::Supervisor;
use parking_lot::Mutex;

use crate::clock::SharedClock;
use crate::group::Groups;
use crate::store::{Store, StoreError};
use crate::timer::carry::TimerReclaimed;
use crate::timer::{TimerEngine, TimerError};

/// The carry margin of a check interval: five intervals, between 1 s and 60 s.
pub fn carry_margin(check_interval: Duration) -> Duration {
    (check_interval * 5).clamp(Duration::from_secs(1), Duration::from_secs(60))
}

#[derive(Debug, Clone)]
pub struct RetentionOptions {
    pub data_dir: PathBuf,
    /// Config `store.retention`.
    pub retention: Duration,
    /// Config `store.retention_bytes` (0 = no limit).
    pub retention_bytes: u64,
    /// Config `store.retention_check_interval`.
    pub check_interval: Duration,
    /// Config `store.disk_soft_limit`.
    pub soft_limit: f64,
    /// Config `store.disk_hard_limit`.
    pub hard_limit: f64,
    /// Messages due sooner than this are left to fire where they are (their segment waits a
    /// little) rather than copied: [`carry_margin`] of the check interval.
    pub carry_margin: Duration,
}

/// Size and free space of a file system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Disk {
    pub total_bytes: u64,
    pub free_bytes: u64,
}

impl Disk {
    pub fn used_ratio(&self) -> f64 {
        if self.total_bytes == 0 {
            return 0.0;
        }
        1.0 - self.free_bytes as f64 / self.total_bytes as f64
    }
}

/// Reads the disk of a directory (the real one by default; tests inject a full disk).
pub type DiskProbe = Arc<dyn Fn(&Path) -> io::Result<Disk> + Send + Sync>;

/// Failpoint (test builds): `return(TOTAL,FREE)` makes [`real_disk`] report that disk.
pub const DISK: &str = "retention::disk";

/// The file system's own figures (`statvfs`): space available to chime counts as free.
pub fn real_disk(dir: &Path) -> io::Result<Disk> {
    fail::fail_point!(DISK, |arg: Option<String>| {
        let arg = arg.unwrap_or_default();
        let (t, f) = arg.split_once(',').unwrap_or(("0", "0"));
        Ok(Disk { total_bytes: t.trim().parse().unwrap_or(0), free_bytes: f.trim().parse().unwrap_or(0) })
    });
    Ok(Disk { total_bytes: fs4::total_space(dir)?, free_bytes: fs4::available_space(dir)? })
}

#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    #[error("cannot read the disk's size: {0}")]
    Probe(#[source] io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Timer(#[from] TimerError),
}

/// Why a segment was reclaimed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    Age,
    Size,
    DiskSoftLimit,
}

/// What retention keeps beyond its rules, as of the last tick.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pinned {
    pub segments: u64,
    pub bytes: u64,
    /// Pending messages that hold the pinned segment (due soon, or being fired).
    pub pending_messages: u64,
    /// Why, in words (none when nothing is pinned).
    pub reason: Option<String>,
}

/// `GET /v1/storage` (API.md "Storage lifecycle").
#[derive(Debug, Clone, PartialEq)]
pub struct StorageReport {
    pub disk: DiskReport,
    pub commitlog: LogReport,
    pub pinned: Pinned,
    pub reclaimed: Reclaimed,
    pub carried_forward: u64,
    pub accepting: bool,
    pub timer: TimerFiles,
}

/// The timer's files, which go with the records they describe.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TimerFiles {
    pub timer_log_segments: u64,
    pub state_files: u64,
    /// Carried-forward messages whose original id maps to a copy (`timer::moved`).
    pub moved_ids: u64,
    /// Since start.
    pub timer_log_reclaimed_bytes: u64,
    pub state_reclaimed_bytes: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DiskReport {
    pub total_bytes: u64,
    pub free_bytes: u64,
    pub used_ratio: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LogReport {
    pub segments: u64,
    pub bytes: u64,
    pub first_offset: u64,
    /// Store time of the oldest record still on disk (none in an empty log).
    pub oldest_store_ms: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reclaimed {
    pub segments: u64,
    pub bytes: u64,
}

/// What one [`Retention::tick`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tick {
    /// Segments reclaimed, oldest first, and the rule that took each.
    pub reclaimed: Vec<(u64, Rule)>,
    /// Messages carried forward out of them.
    pub carried: u64,
    pub pinned: Pinned,
    pub accepting: bool,
    /// Consume-queue segments reclaimed (they indexed only reclaimed records).
    pub index_segments: u64,
    /// Timer-log segments and state-cell files reclaimed.
    pub timer: TimerReclaimed,
    /// Messages consumer groups never received, passed over for good by this pass.
    pub expired: u64,
}

pub struct Retention {
    store: Arc<Store>,
    timer: Arc<TimerEngine>,
    groups: Arc<Groups>,
    clock: SharedClock,
    opts: RetentionOptions,
    probe: DiskProbe,
    last: Mutex<(Option<Disk>, Pinned)>,
    workers: Mutex<Supervisor>,
    /// Log offsets below which something still needs the log (prepared transactions).
    pins: Mutex<Vec<PinFn>>,
}

/// The lowest log offset a subsystem still needs, if any (see [`Retention::pin_below`]).
pub type PinFn = Box<dyn Fn() -> Option<u64> + Send + Sync>;

impl Retention {
    /// Keeps every segment from the one holding `f()` on: a segment is never reclaimed while
    /// `f` names an offset in or before it (a prepared transaction's records).
    pub fn pin_below(&self, f: PinFn) {
        self.pins.lock().push(f);
    }

    fn pinned_floor(&self) -> Option<u64> {
        self.pins.lock().iter().filter_map(|f| f()).min()
    }

    pub fn new(
        store: Arc<Store>,
        timer: Arc<TimerEngine>,
        groups: Arc<Groups>,
        clock: SharedClock,
        opts: RetentionOptions,
        probe: DiskProbe,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            timer,
            groups,
            clock,
            opts,
            probe,
            last: Mutex::new((None, Pinned::default())),
            workers: Mutex::new(Supervisor::new()),
            pins: Mutex::new(Vec::new()),
        })
    }

    /// [`Retention::new`], with its thread running a tick every check interval.
    pub fn start(
        store: Arc<Store>,
        timer: Arc<TimerEngine>,
        groups: Arc<Groups>,
        clock: SharedClock,
        opts: RetentionOptions,
        probe: DiskProbe,
    ) -> Result<Arc<Self>, RetentionError> {
        let r = Self::new(store, timer, groups, clock, opts, probe);
        let weak = Arc::downgrade(&r);
        let every = r.opts.check_interval;
        r.workers
            .lock()
            .spawn("chime-retention", move |ctx| loop {
                let Some(r) = weak.upgrade() else { return };
                if let Err(e) = r.tick() {
                    tracing::error!(error = %e, "retention pass failed; retrying next interval");
                }
                drop(r);
                if ctx.sleep(every) {
                    return;
                }
            })
            .map_err(|e| RetentionError::Store(StoreError::io("spawn the retention thread")(e)))?;
        Ok(r)
    }

    /// Stops the thread (a pass in progress finishes first).
    pub fn shutdown(&self) {
        self.workers.lock().stop_and_join(chime_pipeline::STOP_DEADLINE);
    }

    /// One pass: the disk limits, then the oldest segments while a rule asks (module doc).
    pub fn tick(&self) -> Result<Tick, RetentionError> {
        let mut disk = (self.probe)(&self.opts.data_dir).map_err(RetentionError::Probe)?;
        let accepting = disk.used_ratio() < self.opts.hard_limit;
        self.store.set_accepting(accepting);
        let mut tick = Tick { accepting, ..Tick::default() };
        // Never a segment written during this pass (it would hold the copies just made).
        let written = self.store.write_pos();
        while let Some((base, end, rule)) = self.next_candidate(&disk).filter(|c| c.1 <= written) {
            // Past its retention a segment goes whatever it holds (its copies age from now);
            // for size or disk pressure only if that frees at least half of it, or the same
            // pending messages would be copied round and round.
            let pins = [
                (self.timer.staged_floor(), "fired messages stored ahead of their time"),
                (self.pinned_floor(), "a prepared transaction's records"),
            ];
            if let Some((floor, what)) = pins.into_iter().find_map(|(f, what)| Some((f.filter(|&f| f < end)?, what))) {
                tick.pinned = Pinned {
                    segments: 1,
                    bytes: end - base,
                    pending_messages: 0,
                    reason: Some(format!("segment {base}: {what} (offset {floor})")),
                };
                break;
            }
            let max_carry = if rule == Rule::Age { u64::MAX } else { (end - base) / 2 };
            let margin = self.opts.carry_margin.as_millis() as i64;
            let carried = self.timer.carry_forward(base, end, margin, max_carry)?;
            if let Some(reason) = carried.blocked {
                tick.pinned = Pinned {
                    segments: 1,
                    bytes: end - base,
                    pending_messages: carried.pinning,
                    reason: Some(format!("segment {base}: {reason}")),
                };
                break;
            }
            tick.carried += carried.moved;
            let Some(_) = self.store.reclaim_oldest_segment(end)? else { break };
            tick.reclaimed.push((base, rule));
            if rule == Rule::DiskSoftLimit {
                disk = (self.probe)(&self.opts.data_dir).map_err(RetentionError::Probe)?;
            }
        }
        // What describes what is gone goes too: index entries, the timer's units, cells and
        // map entries, and the groups' progress through it.
        let (segs, _) = self.store.reclaim_index()?;
        tick.index_segments = segs;
        tick.timer = self.timer.reclaim()?;
        tick.expired = self.groups.expire_reclaimed();
        // Space came back: sends pass again at once, not a tick later.
        if !tick.reclaimed.is_empty() && !accepting {
            disk = (self.probe)(&self.opts.data_dir).map_err(RetentionError::Probe)?;
            tick.accepting = disk.used_ratio() < self.opts.hard_limit;
            self.store.set_accepting(tick.accepting);
        }
        *self.last.lock() = (Some(disk), tick.pinned.clone());
        Ok(tick)
    }

    /// The oldest segment and the rule that reclaims it, if one does.
    fn next_candidate(&self, disk: &Disk) -> Option<(u64, u64, Rule)> {
        let segs = self.store.log_segments();
        let write_pos = self.store.write_pos();
        // The oldest, if a later one holds records (the one being written is never taken).
        let (&(base, end), next) = (segs.first()?, segs.get(1)?);
        if next.0 >= write_pos {
            return None;
        }
        let cutoff = self.clock.now_ms() - self.opts.retention.as_millis() as i64;
        let newest = self.store.read_verified(next.0).map(|r| r.record().store_ms);
        if newest.is_some_and(|ms| ms < cutoff) {
            return Some((base, end, Rule::Age));
        }
        if self.opts.retention_bytes > 0 && self.store.log_bytes() > self.opts.retention_bytes {
            return Some((base, end, Rule::Size));
        }
        if disk.used_ratio() > self.opts.soft_limit {
            return Some((base, end, Rule::DiskSoftLimit));
        }
        None
    }

    /// The figures of `GET /v1/storage`, as of now (the disk as of the last tick).
    pub fn report(&self) -> StorageReport {
        let (disk, pinned) = self.last.lock().clone();
        let disk =
            disk.or_else(|| (self.probe)(&self.opts.data_dir).ok()).unwrap_or(Disk { total_bytes: 0, free_bytes: 0 });
        let segs = self.store.log_segments();
        let first_offset = self.store.min_offset();
        let (segments, bytes) = self.store.reclaimed();
        StorageReport {
            disk: DiskReport {
                total_bytes: disk.total_bytes,
                free_bytes: disk.free_bytes,
                used_ratio: disk.used_ratio(),
            },
            commitlog: LogReport {
                segments: segs.len() as u64,
                bytes: segs.iter().map(|(b, e)| e - b).sum(),
                first_offset,
                oldest_store_ms: self.store.read_verified(first_offset).map(|r| r.record().store_ms),
            },
            pinned,
            reclaimed: Reclaimed { segments, bytes },
            carried_forward: self.timer.carried_forward(),
            accepting: self.store.accepting(),
            timer: {
                let (timer_log_segments, state_files, moved_ids) = self.timer.files();
                let (timer_log_reclaimed_bytes, state_reclaimed_bytes) = self.timer.reclaimed_bytes();
                TimerFiles {
                    timer_log_segments,
                    state_files,
                    moved_ids,
                    timer_log_reclaimed_bytes,
                    state_reclaimed_bytes,
                }
            },
        }
    }
}

impl Drop for Retention {
    fn drop(&mut self) {
        self.workers.lock().request_stop();
    }
}
