//! The congestion index (`chime::timer::congestion::Congestion`), in process, holding 1M
//! messages due at random milliseconds over 10 days (fixed seed) on the default geometry
//! (1,209,600 one-second slots):
//! - `update`: one message counted and taken back (what a send and its fire pay);
//! - `query_24h_60s` / `_unaligned`: a 24-hour window in 1,440 buckets, with bucket edges on
//!   slot boundaries or 123 ms off them (every edge cuts a slot);
//! - `baseline_scan_all_slots`: RocketMQ's way of counting, a walk over every slot of the
//!   default wheel file (`Wheel::get` on all 1.2M), which is what its congestion count does on
//!   every scrape. Measured in the same run, for the ratio.
//!
//! `cargo bench -p chime-bench --bench congestion`

use std::hint::black_box;
use std::time::Duration;

use chime::timer::congestion::Congestion;
use chime::timer::slot::DEFAULT_SLOTS;
use chime::timer::wheel::Wheel;
use chime::timer::Geometry;
use chime_bench::rng::{SplitMix64, SEED};
use criterion::{criterion_group, criterion_main, Criterion};

const PRECISION_MS: i64 = 1000;
const START_MS: i64 = 1_800_000_000_000;
const DAY_MS: i64 = 86_400_000;
const PENDING: u64 = 1_000_000;

fn congestion(c: &mut Criterion) {
    let mut idx = Congestion::new(PRECISION_MS, DEFAULT_SLOTS, START_MS);
    let mut rng = SplitMix64::new(SEED);
    for _ in 0..PENDING {
        idx.add(START_MS + 3_600_000 + (rng.next_u64() % (10 * DAY_MS as u64)) as i64, 1);
    }
    let mut g = c.benchmark_group("congestion");
    g.measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1)).sample_size(20);
    g.bench_function("update", |b| {
        b.iter(|| {
            let t = START_MS + 3_600_000 + (rng.next_u64() % (10 * DAY_MS as u64)) as i64;
            idx.add(black_box(t), 1);
            idx.add(t, -1);
        })
    });
    let from = START_MS + 3_600_000;
    g.bench_function("query_24h_60s", |b| b.iter(|| black_box(idx.buckets(from, from + DAY_MS, 60_000))));
    g.bench_function("query_24h_60s_unaligned", |b| {
        b.iter(|| black_box(idx.buckets(from + 123, from + 123 + DAY_MS, 60_000)))
    });
    let dir = tempfile::Builder::new().prefix("chime-criterion-congestion-").tempdir().expect("temp dir");
    let geo = Geometry::new(PRECISION_MS, DEFAULT_SLOTS);
    let (wheel, _) = Wheel::open(&dir.path().join("wheel"), geo).expect("open wheel");
    g.bench_function("baseline_scan_all_slots", |b| {
        b.iter(|| {
            let mut n = 0u64;
            for i in 0..DEFAULT_SLOTS as i64 {
                n += wheel.get(START_MS + i * PRECISION_MS).count;
            }
            black_box(n)
        })
    });
    g.finish();
}

criterion_group!(benches, congestion);
criterion_main!(benches);
