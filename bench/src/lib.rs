//! `chime-bench` as a library: the scenarios of the `chime-bench` binary, and the pieces the
//! criterion micro-benchmarks in `benches/` reuse (RocketMQ's whole-wheel flush in
//! [`wheel_flush`], the seeded generator in [`rng`]).

pub mod append;
pub mod cancel;
pub mod carry;
pub mod compare;
pub mod dedup;
pub mod dist;
pub mod enqueue;
pub mod fifo;
pub mod http;
pub mod http_receive;
pub mod http_send;
pub mod ingest;
pub mod key_lookup;
pub mod pending;
pub mod progress;
pub mod report;
pub mod rng;
pub mod target;
pub mod timer_http;
pub mod txn;
pub mod wheel_flush;
