//! Commit-log appends (`chime::store::Store::append`), in process: one 256-byte message per
//! call, and batches of 100. The store is the default profile's (async flush every 200 ms);
//! a fresh one replaces it (outside the timed part) once its log passes 512 MB, so a run needs
//! at most about that much temporary disk space.
//!
//! `cargo bench -p chime-bench --bench store_append`

use std::sync::Arc;
use std::time::{Duration, Instant};

use chime::clock::{Clock, SystemClock};
use chime::store::topics::Topic;
use chime::store::{FlushPolicy, NewMessage, Store, StoreOptions};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const ROTATE_AT: u64 = 512 << 20;

struct Open {
    store: Arc<Store>,
    topic: Arc<Topic>,
    _dir: tempfile::TempDir,
}

fn open() -> Open {
    let dir = tempfile::Builder::new().prefix("chime-criterion-store-").tempdir().expect("temp dir");
    let opts = StoreOptions {
        dir: dir.path().to_path_buf(),
        segment_size: 1 << 30,
        cq_segment_entries: 300_000,
        flush: FlushPolicy::Async { interval: Duration::from_millis(200) },
        checkpoint_interval: Duration::from_millis(200),
    };
    let store = Store::open(opts, Arc::new(SystemClock)).expect("open store");
    let (topic, _) = store.topics().create("bench", 8).expect("create topic");
    Open { store, topic, _dir: dir }
}

fn store_append(c: &mut Criterion) {
    let mut g = c.benchmark_group("store_append");
    g.measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1)).sample_size(20);
    let msg = NewMessage { body: vec![b'x'; 256], born_ms: SystemClock.now_ms(), ..Default::default() };
    for batch in [1usize, 100] {
        let msgs = vec![msg.clone(); batch];
        let mut cur = open();
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_function(format!("256B/batch{batch}"), |b| {
            b.iter_custom(|iters| {
                if cur.store.log_bytes() > ROTATE_AT {
                    cur.store.shutdown().expect("shutdown");
                    cur = open();
                }
                let t = Instant::now();
                for _ in 0..iters {
                    cur.store.append(&cur.topic, &msgs).expect("append");
                }
                t.elapsed()
            })
        });
        cur.store.shutdown().expect("shutdown");
    }
    g.finish();
}

criterion_group!(benches, store_append);
criterion_main!(benches);
