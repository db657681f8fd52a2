//! dequeue-get-message (RocketMQ's `TimerDequeueGetMessageService`): reads the original record
//! of each unit to fire, skipping cancelled ones early, and builds the record to store for its
//! topic ahead of its time, preparing that topic's consume queues meanwhile; rolls pass through
//! untouched.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chime_pipeline::{queue, StageCtx};

use super::{send, FireReq, Ready, Source, POLL};
use crate::group::fifo::PROP_MESSAGE_GROUP;
use crate::store::record;
use crate::store::topics::Topic;
use crate::timer::state;
use crate::timer::timerlog::Unit;
use crate::timer::{Core, PROP_ID, PROP_TOPIC, SYSTEM_PROP_PREFIX, SYSTEM_TOPIC};

impl Core {
    /// The record to store for its topic when `unit` fires, built from the original record's
    /// bytes (its system properties dropped, its id added) without decoding it into owned values.
    /// `Err`: its topic had to be created again (the send created it) and could not be, for now.
    fn fired_message(&self, unit: &Unit) -> Result<Source, crate::store::StoreError> {
        // The unit must still name what the system topic holds at its queue offset. A crash in
        // the middle of a batch can leave units for records that recovery then cut (enqueue-get
        // reads a record as soon as its own bytes are published, before its batch is
        // complete); their queue and log offsets are reused by later records, which have units
        // of their own. Such a stale unit is skipped without touching the state cell, which
        // now belongs to the later record.
        match self.sys_topic.queues[0].get(unit.sys_offset) {
            Some(e) if e.log_offset == unit.log_offset => {}
            _ => return Ok(Source::Stale),
        }
        let Some(r) = self.store.read_verified(unit.log_offset) else { return Ok(Source::Damaged) };
        let rec = r.record();
        // The same offsets for a later record (the first one after the cut) whose deliver time
        // differs: firing it now could be early.
        if rec.topic != SYSTEM_TOPIC || rec.queue_offset != unit.sys_offset || rec.deliver_at_ms != unit.deliver_at {
            return Ok(Source::Stale);
        }
        let Some(topic) = rec.property(PROP_TOPIC) else { return Ok(Source::Damaged) };
        let t = match self.store.topics().get(topic) {
            Some(t) => t,
            None => self.store.topics().create_unlimited(topic, self.opts.default_queues)?.0,
        };
        // The id it keeps: a carried copy's origin, else its own (as `carry::message_id`,
        // without allocating).
        let own = r.id().hex();
        let id = rec.property(super::super::carry::PROP_ORIGIN).unwrap_or(own.as_str());
        // One allocation: the derived record is at most the original plus its topic name and
        // the id property.
        let mut out = Vec::with_capacity(r.bytes().len() + t.name.len() + PROP_ID.len() + id.len() + 16);
        record::encode_derived(&mut out, &rec, &t.name, unit.deliver_at, SYSTEM_PROP_PREFIX, (PROP_ID, id));
        // A message of a message group joins its group's queue when it fires.
        let queue = rec.property(PROP_MESSAGE_GROUP).map(|g| t.queue_for(Some(g)));
        Ok(Source::Fire((t, queue, out)))
    }
}

/// How often, at most, dequeue-get-message prepares the consume queues of a topic it fires into.
const PREPARE_EVERY: Duration = Duration::from_millis(100);

/// Prepares, ahead of its fires, the consume queues a topic's fired messages go to
/// ([`crate::store::Store::prepare_topic`]): at most every [`PREPARE_EVERY`] per topic, for as
/// many entries as dequeue-put may hold (at most a segment's worth: `prepare_topic` caps it).
struct Preparer {
    last: HashMap<String, Instant>,
    ahead: u64,
}

impl Preparer {
    fn new(core: &Core) -> Self {
        Preparer { last: HashMap::new(), ahead: (super::dequeue_put::hold_capacity(&core.opts) as u64).max(1 << 17) }
    }

    fn prepare(&mut self, core: &Core, topic: &Topic, queue: Option<u16>) {
        let now = Instant::now();
        if self.last.get(&topic.name).is_some_and(|at| now.duration_since(*at) < PREPARE_EVERY) {
            return;
        }
        self.last.insert(topic.name.clone(), now);
        // Failing here costs nothing but the time: the append at the fire does it again.
        if let Err(e) = core.store.prepare_topic(topic, queue, self.ahead) {
            tracing::debug!(error = %e, topic = %topic.name, "cannot prepare the consume queues ahead of a fire");
        }
    }
}

/// dequeue-get-message: reads the original record of each unit to fire (skipping cancelled
/// ones early); rolls pass through untouched.
pub(super) fn dequeue_get_message(
    core: &Core,
    rx: &queue::Receiver<FireReq>,
    tx: &queue::Sender<Ready>,
    ctx: &StageCtx,
) {
    let mut preparer = Preparer::new(core);
    while !ctx.stopped() {
        let f = match rx.recv_timeout(POLL) {
            Ok(f) => f,
            Err(queue::RecvTimeoutError::Timeout) => continue,
            Err(queue::RecvTimeoutError::Disconnected) => return,
        };
        let ready = if f.unit.is_roll() {
            Ready { fire: f, out: None }
        } else {
            match core.states.get(f.unit.sys_offset) {
                Ok(s) if state::is_final(s) => {
                    core.done(&f);
                    continue;
                }
                _ => {}
            }
            let mut warned: Option<std::time::Instant> = None;
            let out = loop {
                match core.fired_message(&f.unit) {
                    Ok(out) => break out,
                    // Its topic had to be created again and cannot be (a full disk, or a damaged
                    // data directory). Dropping the message would break the promise of a 201, so
                    // the fire path waits and retries, and says so every minute (the dequeue
                    // lag shows it too). Not marked done: if the pipeline stops meanwhile, the
                    // restart fires it.
                    Err(e) => {
                        if ctx.stopped() {
                            return;
                        }
                        if warned.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
                            warned = Some(std::time::Instant::now());
                            let disk_full = e.is_disk_full();
                            tracing::warn!(error = %e, disk_full, "cannot create the topic of a message to fire; firing waits and retries");
                        }
                        std::thread::sleep(POLL);
                    }
                }
            };
            match out {
                Source::Fire(out) => {
                    preparer.prepare(core, &out.0, out.1);
                    Ready { fire: f, out: Some(out) }
                }
                Source::Stale => {
                    tracing::warn!(
                        sys_offset = f.unit.sys_offset,
                        log_offset = f.unit.log_offset,
                        "stale timer-log unit (its record was cut by crash recovery); skipping it"
                    );
                    core.done(&f);
                    continue;
                }
                Source::Damaged => {
                    // Never fireable: final, and no longer pending (its topic is unknown, so
                    // only the totals can be corrected). Start-up marks the ones it finds the
                    // same way without counting them, so each is uncounted at most once.
                    if core.states.transition(f.unit.sys_offset, state::SCHEDULED, state::CANCELLED).ok()
                        == Some(state::SCHEDULED)
                    {
                        tracing::error!(
                            log_offset = f.unit.log_offset,
                            "scheduled record unreadable; it can never fire"
                        );
                        core.uncount(None, [f.unit.deliver_at]);
                    }
                    core.done(&f);
                    continue;
                }
            }
        };
        if !send(tx, ready, ctx) {
            return;
        }
    }
}
