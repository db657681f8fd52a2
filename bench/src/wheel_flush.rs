//! `wheel-flush`: the cost of making the timer wheel durable after `--dirty` slots changed,
//! chime's dirty-page flush against RocketMQ's whole-wheel compare-and-copy, in process.
//!
//! For each wheel size (`--slots`, default 1,209,600 slots = 38.7 MB, and `--scale` × that),
//! three files of the same size in a temporary directory:
//! - `chime`: a `chime::timer::wheel::Wheel`. Per repetition, `--dirty` slots are linked
//!   (`Wheel::link`) and `Wheel::flush()` is timed: it msyncs the 4 KiB pages its dirty bitmap
//!   marked, one `msync(MS_SYNC)` per run of adjacent pages.
//! - `rocketmq`: RocketMQ's `TimerWheel` method, written here. The slot updates go to a full
//!   in-memory copy of the wheel (the same 32-byte slot layout and the same link logic); the
//!   flush compares the whole copy against the mapped file (mapped with
//!   `chime::store::mmap::AtomicMap`, read in place, 8 bytes at a time), stores every differing
//!   word into the map, then msyncs the whole map (RocketMQ's `force()`). Comparing words rather
//!   than bytes (RocketMQ's loop is per byte) makes this baseline faster than the original.
//! - `one-sync`: a second chime `Wheel` with the same slots linked, made durable with a single
//!   `fdatasync` of the whole file instead of `Wheel::flush()`: the same dirty pages written with
//!   one call, to tell the cost of the writes from the cost of the calls.
//!
//! Slots are either consecutive (a random start) or `--dirty` distinct random slots, from a fixed
//! seed; each repetition draws new ones. The median of `--reps` repetitions is reported. The
//! time of the links is reported apart: chime pays its write faults there (the first store into
//! a page that the last flush cleaned), RocketMQ pays them in the flush's copy, so the ratio
//! including the links is the like-for-like one when the two differ.
//!
//! Every file starts in the state of a long-running wheel: all pages written once (no extent
//! of the preallocated file still unwritten) and on disk.

use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Instant;

use chime::store::mmap::AtomicMap;
use chime::timer::slot::DEFAULT_SLOTS;
use chime::timer::wheel::Wheel;
use chime::timer::Geometry;
use serde_json::{json, Map, Value};

use crate::report::{Figures, Report};
use crate::rng::{self, SplitMix64, SEED};

const HEADER: usize = 4096;
const PAGE: usize = 4096;
const SLOT_BYTES: usize = 32;
pub const PRECISION_MS: i64 = 1000;
/// Slot times start near 2027-01-15; any fixed time does.
const T0: i64 = 1_800_000_000_000;

#[derive(Debug, Clone, clap::Args)]
pub struct WheelFlushArgs {
    /// Slots changed before each flush.
    #[arg(long, default_value_t = 10_000)]
    pub dirty: usize,
    /// Slots of the default wheel.
    #[arg(long, default_value_t = DEFAULT_SLOTS)]
    pub slots: u64,
    /// The larger wheel has this many times the slots.
    #[arg(long, default_value_t = 10)]
    pub scale: u64,
    /// Repetitions per case; the median is reported.
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// Parent directory for the wheel files. Default: the system temp dir.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pattern {
    Consecutive,
    Random,
}

impl Pattern {
    fn name(self) -> &'static str {
        match self {
            Pattern::Consecutive => "consecutive",
            Pattern::Random => "random",
        }
    }
}

/// RocketMQ's wheel: a heap copy that takes the updates, flushed by compare-and-copy. Also the
/// baseline of the criterion benchmark `benches/wheel_flush.rs`.
pub struct RocketMqWheel {
    map: AtomicMap,
    local: Vec<u64>,
    geo: Geometry,
}

impl RocketMqWheel {
    pub fn open(path: &std::path::Path, geo: Geometry) -> Result<Self, String> {
        let len = HEADER + geo.slots as usize * SLOT_BYTES;
        let (map, _) = AtomicMap::open_or_create(path, len).map_err(|e| format!("map {}: {e}", path.display()))?;
        // `vec![0; n]` maps zero pages lazily; write one word per page so the copy is resident,
        // as a long-running process's is, and its first writes do not pay page faults here.
        let mut local = vec![0u64; len / 8];
        for page in local.chunks_mut(PAGE / 8) {
            page[0] = std::hint::black_box(0);
        }
        local[0] = 0xC41E_3EE1_0000_0001;
        local[1] = 1;
        local[2] = geo.slots;
        local[3] = geo.precision_ms as u64;
        Ok(Self { map, local, geo })
    }

    /// The same update as `Wheel::link`, on the heap copy.
    pub fn link(&mut self, s: i64, pos: u64) {
        let at = HEADER / 8 + self.geo.index(s) * 4;
        let w = &mut self.local[at..at + 4];
        if w[0] as i64 != s {
            w[1] = pos + 1;
            w[3] = 0;
        }
        w[2] = pos + 1;
        w[3] += 1;
        w[0] = s as u64;
    }

    /// Compares the whole copy with the map and stores the differing words; returns how many.
    pub fn compare_and_copy(&self) -> usize {
        let mut diff = 0;
        for (m, l) in self.map.words().iter().zip(&self.local) {
            if m.load(Ordering::Relaxed) != *l {
                m.store(*l, Ordering::Relaxed);
                diff += 1;
            }
        }
        diff
    }

    /// Writes every word of the copy to the map (the state after a long run, where every page
    /// of the file has been written at least once).
    pub fn write_all(&self) {
        for (m, l) in self.map.words().iter().zip(&self.local) {
            m.store(*l, Ordering::Relaxed);
        }
    }

    /// `force()`: msync of the whole map.
    pub fn sync(&self) -> Result<(), String> {
        self.map.flush_range(0, self.map.len()).map_err(|e| format!("msync: {e}"))
    }
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

/// Slot time whose index is `idx`.
pub fn slot_time(geo: Geometry, idx: u64) -> i64 {
    let span = geo.span_ms();
    T0.div_euclid(span) * span + idx as i64 * PRECISION_MS
}

/// Pages and runs of adjacent pages the slots fall in (what `Wheel::flush` msyncs).
fn pages_and_runs(idx: &[u64]) -> (usize, usize) {
    let mut pages: Vec<usize> = idx.iter().map(|&i| (HEADER + i as usize * SLOT_BYTES) / PAGE).collect();
    pages.sort_unstable();
    pages.dedup();
    let runs = pages.windows(2).filter(|w| w[1] != w[0] + 1).count() + usize::from(!pages.is_empty());
    (pages.len(), runs)
}

pub fn run(args: &WheelFlushArgs) -> Result<Report, String> {
    if args.dirty == 0 || args.reps == 0 || args.scale == 0 || args.dirty as u64 > args.slots {
        return Err("--dirty, --reps and --scale must be at least 1, and --dirty at most --slots".into());
    }
    let parent = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let mut sizes = vec![(String::from("1x"), args.slots)];
    if args.scale > 1 {
        sizes.push((format!("{}x", args.scale), args.slots * args.scale));
    }
    let mut report = Report::new(
        "wheel-flush",
        json!({
            "dirty": args.dirty, "slots": args.slots, "scale": args.scale, "reps": args.reps, "seed": SEED,
            "wheel_bytes": sizes.iter().map(|(_, s)| HEADER as u64 + s * SLOT_BYTES as u64).collect::<Vec<_>>(),
            "dir": parent.display().to_string(),
        }),
    );
    report.runs = vec![Figures::default(); args.reps];
    let mut rng = SplitMix64::new(SEED);
    let mut pos = 0u64;
    for (label, slots) in &sizes {
        let geo = Geometry::new(PRECISION_MS, *slots);
        let dir =
            tempfile::Builder::new().prefix("chime-bench-wheel-").tempdir_in(&parent).map_err(|e| e.to_string())?;
        crate::note!("wheel-flush: {label} wheel, {slots} slots ({:.1} MB)", (HEADER as u64 + slots * 32) as f64 / 1e6);
        let (chime, _) = Wheel::open(&dir.path().join("chime"), geo).map_err(|e| format!("open wheel: {e}"))?;
        let one_sync_path = dir.path().join("one-sync");
        let (one_sync, _) = Wheel::open(&one_sync_path, geo).map_err(|e| format!("open wheel: {e}"))?;
        let one_sync_file = File::open(&one_sync_path).map_err(|e| e.to_string())?;
        let mut rmq = RocketMqWheel::open(&dir.path().join("rocketmq"), geo)?;
        // Start from the steady state of a long-running wheel: every page written once (so no
        // extent of the preallocated file is still unwritten), resident, and on disk.
        let t = Instant::now();
        chime.reset();
        chime.flush().map_err(|e| format!("flush: {e}"))?;
        one_sync.reset();
        one_sync_file.sync_data().map_err(|e| e.to_string())?;
        rmq.write_all();
        rmq.sync()?;
        crate::note!("wheel-flush: initial flush of the three files took {:.0} ms", ms(t));

        let done = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let _bar = crate::progress::track(&format!("wheel-flush {label}"), args.reps as u64 * 2, done.clone());
        for rep in 0..args.reps {
            for pattern in [Pattern::Consecutive, Pattern::Random] {
                let idx: Vec<u64> = match pattern {
                    Pattern::Consecutive => {
                        let start = rng.below(*slots - args.dirty as u64);
                        (start..start + args.dirty as u64).collect()
                    }
                    Pattern::Random => rng::distinct(&mut rng, args.dirty, *slots),
                };
                let (pages, runs) = pages_and_runs(&idx);
                let f = &mut report.runs[rep];
                let p = format!("{}_{label}", pattern.name());

                let t = Instant::now();
                for &i in &idx {
                    chime.link(slot_time(geo, i), pos);
                    pos += 64;
                }
                let chime_link_ms = ms(t);
                let t = Instant::now();
                let written = chime.flush().map_err(|e| format!("flush: {e}"))?;
                let chime_ms = ms(t);

                let t = Instant::now();
                for &i in &idx {
                    rmq.link(slot_time(geo, i), pos);
                    pos += 64;
                }
                let rmq_link_ms = ms(t);
                let t = Instant::now();
                let diff = rmq.compare_and_copy();
                let compare_ms = ms(t);
                let t = Instant::now();
                rmq.sync()?;
                let rmq_sync_ms = ms(t);

                for &i in &idx {
                    one_sync.link(slot_time(geo, i), pos);
                    pos += 64;
                }
                let t = Instant::now();
                one_sync_file.sync_data().map_err(|e| e.to_string())?;
                let one_sync_ms = ms(t);

                let rmq_ms = compare_ms + rmq_sync_ms;
                f.add(&format!("{p}_chime_flush_ms"), chime_ms);
                f.add(&format!("{p}_rocketmq_ms"), rmq_ms);
                f.add(&format!("{p}_rocketmq_compare_ms"), compare_ms);
                f.add(&format!("{p}_rocketmq_msync_ms"), rmq_sync_ms);
                f.add(&format!("{p}_one_fdatasync_ms"), one_sync_ms);
                f.add(&format!("{p}_ratio_rocketmq_to_chime"), rmq_ms / chime_ms);
                // The links are part of the cost too: chime's write into the mapped pages (the
                // first write to a page cleaned by the last flush takes a write fault), RocketMQ's
                // into the heap copy (its faults come in the flush's copy instead).
                f.add(&format!("{p}_chime_link_ms"), chime_link_ms);
                f.add(&format!("{p}_rocketmq_link_ms"), rmq_link_ms);
                f.add(
                    &format!("{p}_ratio_rocketmq_to_chime_incl_links"),
                    (rmq_link_ms + rmq_ms) / (chime_link_ms + chime_ms),
                );
                f.add(&format!("{p}_dirty_pages"), written as f64);
                // Runs of adjacent dirty pages. `Wheel::flush` msyncs each run when there are a
                // few, and the span from the first to the last dirty page in one call otherwise.
                f.add(&format!("{p}_dirty_page_runs"), runs as f64);
                f.add(&format!("{p}_rocketmq_words_copied"), diff as f64);
                done.fetch_add(1, Ordering::Relaxed);
                if written != pages {
                    crate::note!("wheel-flush: note: {written} pages flushed, {pages} expected from the slots");
                }
                crate::note!(
                    "wheel-flush: {label} {} rep {}: chime {chime_ms:.2} ms ({written} pages in {runs} runs; links {chime_link_ms:.2}); rocketmq {rmq_ms:.2} ms (compare {compare_ms:.2} + msync {rmq_sync_ms:.2}; links {rmq_link_ms:.2}); one fdatasync {one_sync_ms:.2} ms",
                    pattern.name(),
                    rep + 1
                );
            }
        }
        drop((chime, one_sync, rmq));
        drop(dir);
    }

    let m = report.median();
    let mut table = Map::new();
    for (label, slots) in &sizes {
        let mut per = Map::new();
        for pattern in [Pattern::Consecutive, Pattern::Random] {
            let p = format!("{}_{label}", pattern.name());
            let g = |k: &str| m.get(&format!("{p}_{k}")).unwrap_or(f64::NAN);
            per.insert(
                pattern.name().into(),
                json!({
                    "chime_flush_ms": round3(g("chime_flush_ms")),
                    "rocketmq_ms": round3(g("rocketmq_ms")),
                    "rocketmq_compare_ms": round3(g("rocketmq_compare_ms")),
                    "one_fdatasync_ms": round3(g("one_fdatasync_ms")),
                    "ratio_rocketmq_to_chime": round3(g("rocketmq_ms") / g("chime_flush_ms")),
                    "chime_link_ms": round3(g("chime_link_ms")),
                    "rocketmq_link_ms": round3(g("rocketmq_link_ms")),
                    "ratio_rocketmq_to_chime_incl_links": round3(
                        (g("rocketmq_link_ms") + g("rocketmq_ms")) / (g("chime_link_ms") + g("chime_flush_ms"))
                    ),
                    "dirty_pages": g("dirty_pages"),
                    "dirty_page_runs": g("dirty_page_runs"),
                    "goal_1ms_met": g("chime_flush_ms") <= 1.0,
                }),
            );
        }
        per.insert("slots".into(), json!(slots));
        table.insert(label.clone(), Value::Object(per));
    }
    report.extra.insert("median_of_reps".into(), Value::Object(table));
    Ok(report)
}

fn round3(v: f64) -> Value {
    if v.is_finite() {
        json!((v * 1000.0).round() / 1000.0)
    } else {
        Value::Null
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_and_runs_of_slots() {
        // 128 slots per page; the first slot starts on page 1 (after the header).
        assert_eq!(pages_and_runs(&[0, 1, 127]), (1, 1));
        assert_eq!(pages_and_runs(&[0, 128]), (2, 1));
        assert_eq!(pages_and_runs(&[0, 256]), (2, 2));
        let geo = Geometry::new(1000, DEFAULT_SLOTS);
        assert_eq!(geo.index(slot_time(geo, 12345)), 12345);
    }

    #[test]
    fn rocketmq_flush_matches_chime_layout() {
        let dir = tempfile::tempdir().unwrap();
        let geo = Geometry::new(1000, 4096);
        let mut r = RocketMqWheel::open(&dir.path().join("r"), geo).unwrap();
        let (w, _) = Wheel::open(&dir.path().join("w"), geo).unwrap();
        for (k, i) in [3u64, 3, 900, 4095].iter().enumerate() {
            r.link(slot_time(geo, *i), k as u64 * 64);
            w.link(slot_time(geo, *i), k as u64 * 64);
        }
        assert!(r.compare_and_copy() > 0);
        r.sync().unwrap();
        w.flush().unwrap();
        drop((r, w));
        assert_eq!(std::fs::read(dir.path().join("r")).unwrap(), std::fs::read(dir.path().join("w")).unwrap());
    }
}
