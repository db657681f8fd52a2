//! The timer's on-disk structures, in process: timer-log appends
//! (`chime::timer::timerlog::TimerLog::append`, one 64-byte unit each) and the wheel's slot
//! update and read (`chime::timer::wheel::Wheel::link` and `get`) on the default wheel
//! (1,209,600 one-second slots, 38.7 MB), at slots drawn from a fixed seed.
//!
//! The timer log grows by 64 bytes a unit; a fresh one replaces it (outside the timed part)
//! past 256 MB. No flush is timed here (see `wheel_flush.rs`).
//!
//! `cargo bench -p chime-bench --bench timer`

use std::hint::black_box;
use std::time::{Duration, Instant};

use chime::timer::slot::DEFAULT_SLOTS;
use chime::timer::timerlog::{TimerLog, Unit};
use chime::timer::wheel::Wheel;
use chime::timer::Geometry;
use chime_bench::rng::SplitMix64;
use chime_bench::rng::SEED;
use chime_bench::wheel_flush::{slot_time, PRECISION_MS};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const ROTATE_AT: u64 = 256 << 20;
/// Units per timer-log segment: the server's with 1 GiB commit-log segments (64 MiB).
const UNITS_PER_SEGMENT: u64 = 1 << 20;

fn timer_log(c: &mut Criterion) {
    let mut g = c.benchmark_group("timerlog");
    g.measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1)).sample_size(20);
    g.throughput(Throughput::Elements(1));
    let open = || {
        let dir = tempfile::Builder::new().prefix("chime-criterion-timerlog-").tempdir().expect("temp dir");
        let (log, _) = TimerLog::open(dir.path(), UNITS_PER_SEGMENT).expect("open timer log");
        (log, dir)
    };
    let mut cur = open();
    let mut unit =
        Unit { deliver_at: 1_800_000_000_000, slot_time: 1_800_000_000_000, log_size: 400, ..Default::default() };
    g.bench_function("append", |b| {
        b.iter_custom(|iters| {
            if cur.0.write_pos() > ROTATE_AT {
                cur = open();
            }
            let t = Instant::now();
            for _ in 0..iters {
                unit.prev = unit.log_offset;
                unit.log_offset += 400;
                black_box(cur.0.append(&unit).expect("append"));
            }
            t.elapsed()
        })
    });
    g.finish();
}

fn wheel(c: &mut Criterion) {
    let mut g = c.benchmark_group("wheel");
    g.measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1)).sample_size(20);
    g.throughput(Throughput::Elements(1));
    let dir = tempfile::Builder::new().prefix("chime-criterion-wheel-").tempdir().expect("temp dir");
    let geo = Geometry::new(PRECISION_MS, DEFAULT_SLOTS);
    let (wheel, _) = Wheel::open(&dir.path().join("wheel"), geo).expect("open wheel");
    // Every page written once and resident, as in a long-running server.
    wheel.reset();
    wheel.flush().expect("flush");
    let mut rng = SplitMix64::new(SEED);
    let slots: Vec<i64> = (0..65_536).map(|_| slot_time(geo, rng.below(DEFAULT_SLOTS))).collect();
    let mut i = 0usize;
    let mut pos = 0u64;
    g.bench_function("link (put), random slots", |b| {
        b.iter(|| {
            let s = slots[i & 0xFFFF];
            i += 1;
            pos += 64;
            wheel.link(black_box(s), pos);
        })
    });
    g.bench_function("get, random slots", |b| {
        b.iter(|| {
            let s = slots[i & 0xFFFF];
            i += 1;
            black_box(wheel.get(black_box(s)))
        })
    });
    g.finish();
}

criterion_group!(benches, timer_log, wheel);
criterion_main!(benches);
