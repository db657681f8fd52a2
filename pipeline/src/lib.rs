//! The machinery of chime's timer pipeline, independent of what the stages do:
//!
//! - [`stage`]: a supervisor that runs each stage on its own named thread, trips a global stop
//!   when any stage panics, and joins them within a deadline, naming any that hung;
//! - [`queue`]: bounded FIFO queues (crossbeam) with depth, capacity and processed counts;
//! - [`ring`]: a bounded disruptor ring with a consumer thread that backs off to sleeping when
//!   idle, so an idle stage does not burn one of the machine's two cores.
//!
//! Every queue is bounded and a full queue blocks its producer: nothing is dropped.

pub mod queue;
pub mod ring;
pub mod stage;

pub use queue::{bounded, QueueStats, Receiver, Sender};
pub use ring::{ring, BackoffWait, RingProducer};
pub use stage::{StageCtx, Supervisor, STOP_DEADLINE};
