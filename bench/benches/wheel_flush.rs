//! Making the timer wheel durable after N slots changed: chime's dirty-page flush
//! (`chime::timer::wheel::Wheel::flush`) against RocketMQ's whole-wheel compare-and-copy
//! followed by an msync of the whole map (`chime_bench::wheel_flush::RocketMqWheel`, the
//! baseline the `wheel-flush` scenario also uses), on the default wheel (38.7 MB).
//!
//! Each iteration first links N slots (untimed: criterion's `iter_batched` setup), then times
//! the flush alone. Slots are consecutive from a random start, or N distinct random slots, from
//! a fixed seed. Both are disk-bound (msync), so the figures move with the disk's flush
//! latency; the `wheel-flush` scenario of `chime-bench` reports the same comparison with the
//! pages and msync calls counted, and on a 10× wheel as well.
//!
//! `cargo bench -p chime-bench --bench wheel_flush`

use std::cell::Cell;
use std::time::Duration;

use chime::timer::slot::DEFAULT_SLOTS;
use chime::timer::wheel::Wheel;
use chime::timer::Geometry;
use chime_bench::rng::{self, SplitMix64, SEED};
use chime_bench::wheel_flush::{slot_time, RocketMqWheel, PRECISION_MS};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};

fn wheel_flush(c: &mut Criterion) {
    let mut g = c.benchmark_group("wheel_flush");
    g.measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1)).sample_size(10);
    let dir = tempfile::Builder::new().prefix("chime-criterion-flush-").tempdir().expect("temp dir");
    let geo = Geometry::new(PRECISION_MS, DEFAULT_SLOTS);
    let (chime, _) = Wheel::open(&dir.path().join("chime"), geo).expect("open wheel");
    let rmq = std::cell::RefCell::new(RocketMqWheel::open(&dir.path().join("rocketmq"), geo).expect("open"));
    // The steady state of a long-running wheel: every page written once, resident, on disk.
    chime.reset();
    chime.flush().expect("flush");
    rmq.borrow().write_all();
    rmq.borrow().sync().expect("msync");

    let rng = std::cell::RefCell::new(SplitMix64::new(SEED));
    let pos = Cell::new(0u64);
    for (pattern, dirty) in [("consecutive", 10_000usize), ("random", 1_000), ("random", 10_000)] {
        let pick = || -> Vec<i64> {
            let mut r = rng.borrow_mut();
            let idx: Vec<u64> = if pattern == "consecutive" {
                let start = r.below(DEFAULT_SLOTS - dirty as u64);
                (start..start + dirty as u64).collect()
            } else {
                rng::distinct(&mut r, dirty, DEFAULT_SLOTS)
            };
            idx.into_iter().map(|i| slot_time(geo, i)).collect()
        };
        let next_pos = || {
            pos.set(pos.get() + 64);
            pos.get()
        };
        g.bench_function(format!("chime dirty pages/{pattern} {dirty}"), |b| {
            b.iter_batched(
                || {
                    for s in pick() {
                        chime.link(s, next_pos());
                    }
                },
                |()| chime.flush().expect("flush"),
                BatchSize::PerIteration,
            )
        });
        g.bench_function(format!("rocketmq compare-and-copy/{pattern} {dirty}"), |b| {
            b.iter_batched(
                || {
                    let mut w = rmq.borrow_mut();
                    for s in pick() {
                        w.link(s, next_pos());
                    }
                },
                |()| {
                    let w = rmq.borrow();
                    w.compare_and_copy();
                    w.sync().expect("msync");
                },
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, wheel_flush);
criterion_main!(benches);
