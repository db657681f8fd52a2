//! Consumer groups: each group receives every message of a topic once (at least once), with
//! invisibility, redelivery and acks by receipt handle.
//!
//! On disk: `groups/{topic}/{group}.json` (both names are restricted to `[A-Za-z0-9_%|-]{1,127}`,
//! so every path component stays within a file system's 255 bytes), replaced atomically by the
//! `chime-groups` thread every `persist_interval` when changed, and on shutdown (a group that
//! cannot be written is retried and never stops the others). Files of the earlier layout,
//! `groups/{group}@{topic}.json`, are read and moved to the new one when next written:
//! `{"version": 1, "queues": [{"floor", "next", "done": [..], "inflight": [[offset, attempt, visible_at]]}]}`.
//!
//! Guarantees: an unacked message is never lost (a restart redelivers it when its invisibility
//! ends, or at once if its state was not yet persisted). An acked message is redelivered after
//! a crash only if its ack was not yet written: it came within the last `persist_interval` plus
//! the time the write takes, so the message was in flight at the last completed persist. Filtered messages (tag not matching the request's expression) are
//! skipped for the group for good, as in RocketMQ, where a group has one subscription.

pub mod config;
pub mod fifo;
pub mod progress;
pub mod tag;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chime_pipeline::Supervisor;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::store::topics::Topic;
use crate::store::{Store, VerifiedRecord};
pub use config::GroupConfig;
pub use progress::Move;
use progress::{QueueProgress, QueueSnapshot};
pub use tag::TagExpr;

/// Property of a delayed redelivery (in the group's retry topic): the deliveries the message
/// had before it. Properties starting with `__` are reserved and never shown to consumers.
pub const PROP_ATTEMPTS: &str = "__group.attempts";
/// Properties of a dead letter: where it came from and after how many deliveries.
pub const PROP_DLQ_TOPIC: &str = "__group.dlq_topic";
pub const PROP_DLQ_GROUP: &str = "__group.dlq_group";
pub const PROP_DLQ_ATTEMPTS: &str = "__group.dlq_attempts";
/// Property of a dead letter: `{topic}/{group}/{queue}/{offset}` of the delivery it ends, so
/// a dead letter whose storing a crash interrupted is found again, not stored twice.
pub const PROP_DLQ_OF: &str = "__group.dlq_of";
/// Property of a delayed redelivery: the key of the delivery it follows (as [`PROP_DLQ_OF`]).
pub const PROP_RETRY_OF: &str = "__group.retry_of";

/// Most messages a FIFO group holds per queue behind busy message groups; past it, the queue's
/// newer messages wait until held ones go out (its memory is bounded: about 33 bytes each, measured).
pub const MAX_HELD_PER_QUEUE: usize = 20_000;

/// Most messages one receive holds (reads without handing out), so a receive never scans long
/// under the group's lock; the next receive reads on.
pub const MAX_HOLDS_PER_RECEIVE: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// A new group would pass `limits.max_groups_per_topic`; nothing was created.
    #[error("limits.max_groups_per_topic ({max}) reached: topic {topic:?} has as many groups; group {group:?} cannot be created")]
    LimitExceeded { max: u64, topic: String, group: String },
}

#[derive(Debug, Clone)]
pub struct GroupOptions {
    pub dir: PathBuf,
    pub persist_interval: Duration,
    /// Most groups of one topic (config `limits.max_groups_per_topic`); groups already saved
    /// always load.
    pub max_groups_per_topic: u64,
}

/// One message handed to a consumer.
pub struct Delivery {
    pub record: VerifiedRecord,
    /// Commit-log offset of the record (with its CRC, the message id).
    pub log_offset: u64,
    /// When the message became visible to consumers.
    pub visible_at_ms: i64,
    pub queue_id: u16,
    pub queue_offset: u64,
    pub attempt: u32,
    pub receipt_handle: String,
}

impl Delivery {
    /// Delivery `attempt` of the message at `offset` of group queue `qi` (its record at
    /// `log_offset`), under a receipt handle with `nonce`.
    fn new(c: Checked, qi: usize, offset: u64, attempt: u32, nonce: u32) -> Self {
        let queue_id = qi as u16;
        Delivery {
            log_offset: c.record.offset(),
            visible_at_ms: c.visible_ms,
            record: c.record,
            queue_id,
            queue_offset: offset,
            attempt,
            receipt_handle: receipt(queue_id, offset, nonce),
        }
    }
}

/// How much one receive may hand out: at most `max` messages, and no more payload bytes (keys,
/// properties, bodies) than `max_bytes`, but always at least one message.
#[derive(Debug, Clone, Copy)]
pub struct Batch {
    pub max: usize,
    pub max_bytes: usize,
}

impl Batch {
    /// Whether a message of `n` payload bytes may join `out` (holding `bytes` of them).
    fn admits(&self, out: &[Delivery], bytes: usize, n: usize) -> bool {
        out.is_empty() || bytes.saturating_add(n) <= self.max_bytes
    }
}

/// A record a consume-queue entry really points at, read once (one CRC check) for everything a
/// receive needs of it.
struct Checked {
    record: VerifiedRecord,
    /// Keys, properties and body, as `Batch::max_bytes` counts them.
    payload: usize,
    /// Whether its tag matches the receive's expression.
    tag_matches: bool,
    /// When it became visible (`crate::store::Resolved::visible_ms`).
    visible_ms: i64,
}

pub struct Received {
    pub messages: Vec<Delivery>,
    /// When an in-flight message of this group becomes receivable again (wakes long polls).
    pub wake_at_ms: Option<i64>,
    /// Messages this receive took out of delivery for their dead letter topic (past
    /// `max_delivery_attempts`): the caller stores them ([`Groups::moving`]).
    pub dead_lettered: usize,
    /// Some delivery of the group is on its way out (this receive's dead letters, or a mark an
    /// earlier run left): the caller stores what they move to.
    pub moving: bool,
    /// The receive stopped reading before the end of a queue (a FIFO group held
    /// [`MAX_HOLDS_PER_RECEIVE`] messages): receive again rather than wait.
    pub more: bool,
}

/// A valid handle of a nack: what to redeliver, and after how many deliveries.
pub struct Nacked {
    pub queue: usize,
    pub offset: u64,
    nonce: u32,
    /// Deliveries so far (this one included).
    pub attempts: u32,
    pub record: VerifiedRecord,
}

/// A delivery on its way out of its queue (a dead letter, or a delayed redelivery), with the
/// message and the key that finds what it stored.
pub struct Moving {
    pub queue: usize,
    pub offset: u64,
    pub m: Move,
    /// `None`: reclaimed meanwhile (nothing to store; it is finished).
    pub record: Option<VerifiedRecord>,
    /// `{topic}/{group}/{queue}/{offset}/{attempts}` ([`PROP_DLQ_OF`], [`PROP_RETRY_OF`]).
    pub key: String,
}

/// One group's figures (API.md group listing).
#[derive(Debug, Clone, PartialEq)]
pub struct GroupSummary {
    pub name: String,
    /// Visible to the group and not handed out: new messages, and in-flight ones whose
    /// invisibility ended.
    pub backlog: u64,
    pub in_flight: u64,
    pub dead_lettered: u64,
    pub expired: u64,
    /// FIFO: messages held behind a message of their message group (part of `backlog`).
    pub held: u64,
    /// FIFO: message groups with a message out, which the rest of their group waits for.
    pub blocked: u64,
    pub config: GroupConfig,
    /// Configured with PUT (else the defaults apply).
    pub configured: bool,
}

/// A message group of a FIFO group waiting for its message out (`GET .../blocked`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockedGroup {
    pub message_group: String,
    /// The id of the message out.
    pub message_id: String,
    /// When it was first handed out.
    pub since_ms: i64,
    /// Its deliveries so far.
    pub attempts: u32,
    /// Messages of the group held behind it.
    pub waiting: u64,
}

/// Where a seek moves a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeekTo {
    Earliest,
    Latest,
    /// The first message stored at or after this time.
    Time(i64),
}

struct GroupTopic {
    state: Mutex<State>,
    dirty: AtomicBool,
    /// Held from a snapshot of the state to the end of its write, so two writers (the
    /// persister and `persist_one`) never share a temporary file and a later snapshot is
    /// never overwritten by an earlier one.
    writing: Mutex<()>,
}

struct State {
    /// The topic's queues, then those of the group's retry topic ([`config::retry_topic`]).
    queues: Vec<QueueProgress>,
    /// Queue to start the next receive at (fairness across queues).
    rr: usize,
    /// `None` until configured (the defaults apply).
    config: Option<GroupConfig>,
}

impl State {
    fn file(&self) -> GroupFile {
        GroupFile {
            version: 1,
            queues: self.queues.iter().map(|q| q.snapshot()).collect(),
            config: self.config.clone(),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct GroupFile {
    version: u32,
    queues: Vec<QueueSnapshot>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    config: Option<GroupConfig>,
}

type Key = (String, String);

#[derive(Default)]
struct States {
    map: HashMap<Key, Arc<GroupTopic>>,
    /// Groups per topic, for the quota.
    per_topic: HashMap<String, u64>,
}

pub struct Groups {
    store: Arc<Store>,
    opts: GroupOptions,
    states: Mutex<States>,
    /// Runs the persister thread.
    workers: Mutex<Supervisor>,
}

fn receipt(queue: u16, offset: u64, nonce: u32) -> String {
    format!("{queue:04x}{offset:016x}{nonce:08x}")
}

fn parse_receipt(s: &str) -> Option<(u16, u64, u32)> {
    if s.len() != 28 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some((
        u16::from_str_radix(&s[..4], 16).ok()?,
        u64::from_str_radix(&s[4..20], 16).ok()?,
        u32::from_str_radix(&s[20..], 16).ok()?,
    ))
}

impl Groups {
    pub fn open(store: Arc<Store>, opts: GroupOptions) -> Result<Arc<Self>, GroupError> {
        crate::store::fsio::create_dir_all(&opts.dir)
            .map_err(|source| GroupError::Io { context: format!("create {}", opts.dir.display()), source })?;
        let groups = Arc::new(Self {
            store,
            opts,
            states: Mutex::new(States::default()),
            workers: Mutex::new(Supervisor::new()),
        });
        groups.load_existing()?;
        let weak = Arc::downgrade(&groups);
        let interval = groups.opts.persist_interval;
        groups
            .workers
            .lock()
            .spawn("chime-groups", move |ctx| {
                while !ctx.sleep(interval) {
                    let Some(g) = weak.upgrade() else { return };
                    if let Err(e) = g.persist_all() {
                        tracing::error!(error = %e, "cannot persist consumer-group progress");
                    }
                }
            })
            .map_err(|source| GroupError::Io { context: "spawn the group persister".into(), source })?;
        Ok(groups)
    }

    /// Loads every persisted group at start, before a new message can take a queue offset.
    /// Progress ahead of its queue (after a power cut the queue lost its tail, while the group's
    /// file, written later, survived) is cut back to what the queue holds ([`decode_progress`])
    /// and written back at once, so the messages that get those offsets next are new to the
    /// group rather than taken for acked. So are moves whose log position the log no longer
    /// reaches: a dead letter or redelivery stored again after the restart lands below that
    /// position, and a second crash must still find it there. Returns how many groups were cut
    /// back.
    fn load_existing(&self) -> Result<usize, GroupError> {
        let io = |source| GroupError::Io { context: format!("read {}", self.opts.dir.display()), source };
        // (group, topic, file) of every saved group, in either layout.
        let mut saved: Vec<(String, String, PathBuf)> = Vec::new();
        for entry in std::fs::read_dir(&self.opts.dir).map_err(io)? {
            let entry = entry.map_err(io)?;
            let path = entry.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_owned) else { continue };
            if entry.file_type().map_err(io)?.is_dir() {
                for inner in std::fs::read_dir(&path).map_err(io)? {
                    let file = inner.map_err(io)?.path();
                    let group = file.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".json"));
                    if let Some(group) = group {
                        saved.push((group.to_owned(), name.clone(), file.clone()));
                    }
                }
            } else if let Some((group, topic)) = name.strip_suffix(".json").and_then(|n| n.rsplit_once('@')) {
                saved.push((group.to_owned(), topic.to_owned(), path.clone()));
            }
        }
        let mut cut = 0;
        for (group, topic, path) in saved {
            let Some(t) = self.store.topics().get(&topic) else { continue };
            let file = std::fs::read(&path).ok().and_then(|b| serde_json::from_slice::<GroupFile>(&b).ok());
            let mut available: Vec<u64> = t.queues.iter().map(|q| q.next()).collect();
            if let Some(r) = self.store.topics().get(&config::retry_topic(&topic, &group)) {
                available.extend(r.queues.iter().map(|q| q.next()));
            }
            let log_end = self.store.write_pos();
            let ahead = file.is_some_and(|f| f.queues.iter().zip(&available).any(|(s, &n)| s.ahead_of(n, log_end)));
            let gt = self.state(&group, &t, false)?;
            if ahead {
                tracing::warn!(group, topic, "group progress is ahead of its queue (lost in a power cut); cut back");
                gt.dirty.store(true, Ordering::Release);
                cut += 1;
            }
        }
        // Written at once, so a crash before the persister's first pass cannot bring the old
        // progress back. A group that cannot be written (a full disk) does not stop the start:
        // its cut-back state stays in memory and the persister retries it.
        if let Err(e) = self.persist_all() {
            tracing::error!(error = %e, "cannot write the cut-back progress of a group yet; retrying in the background");
        }
        Ok(cut)
    }

    fn path(&self, group: &str, topic: &str) -> PathBuf {
        self.opts.dir.join(topic).join(format!("{group}.json"))
    }

    /// Where earlier versions kept the progress (too long a name for two 127-character names).
    fn legacy_path(&self, group: &str, topic: &str) -> PathBuf {
        self.opts.dir.join(format!("{group}@{topic}.json"))
    }

    /// The group's state, loaded or created on first use; a new group past the quota is
    /// refused when `limited` (groups saved on disk load at start whatever their number).
    fn state(&self, group: &str, topic: &Topic, limited: bool) -> Result<Arc<GroupTopic>, GroupError> {
        let key = (group.to_string(), topic.name.clone());
        let mut states = self.states.lock();
        if let Some(s) = states.map.get(&key) {
            return Ok(s.clone());
        }
        let n = states.per_topic.get(&topic.name).copied().unwrap_or(0);
        let max = self.opts.max_groups_per_topic;
        if limited && n >= max {
            return Err(GroupError::LimitExceeded { max, topic: topic.name.clone(), group: group.to_string() });
        }
        let (queues, config) = self.load(group, topic);
        let mut st = State { queues, rr: 0, config };
        self.apply_fifo(topic, &mut st);
        let gt = Arc::new(GroupTopic { state: Mutex::new(st), dirty: AtomicBool::new(false), writing: Mutex::new(()) });
        states.map.insert(key, gt.clone());
        states.per_topic.insert(topic.name.clone(), n + 1);
        Ok(gt)
    }

    /// Turns FIFO delivery on or off in the topic's queues as the group's configuration says
    /// (the retry topic's queues are never FIFO: a FIFO group redelivers in place).
    fn apply_fifo(&self, topic: &Topic, st: &mut State) {
        let on = st.config.as_ref().is_some_and(|c| c.fifo);
        let now = self.store.clock().now_ms();
        for (qi, p) in st.queues.iter_mut().enumerate().take(topic.queues.len()) {
            let cq = &topic.queues[qi];
            p.set_fifo(on, |offset| self.message_group_at(topic, qi, cq.get(offset), offset), now);
        }
    }

    /// The message group (hash) of the message at `offset` of queue `qi`, if it has one.
    fn message_group_at(
        &self,
        topic: &Topic,
        qi: usize,
        entry: Option<crate::store::CqEntry>,
        offset: u64,
    ) -> Option<u64> {
        let c = self.record_at(topic, qi as u16, offset, entry, &TagExpr::All)?;
        c.record.record().property(fifo::PROP_MESSAGE_GROUP).map(fifo::group_hash)
    }

    /// The state of a group that exists, without creating one.
    fn existing_state(&self, group: &str, topic: &Topic) -> Option<Arc<GroupTopic>> {
        self.states.lock().map.get(&(group.to_string(), topic.name.clone())).cloned()
    }

    fn load(&self, group: &str, topic: &Topic) -> (Vec<QueueProgress>, Option<GroupConfig>) {
        let mut path = self.path(group, topic.name.as_str());
        let mut available: Vec<u64> = topic.queues.iter().map(|q| q.next()).collect();
        if let Some(r) = self.store.topics().get(&config::retry_topic(&topic.name, group)) {
            available.extend(r.queues.iter().map(|q| q.next()));
        }
        let bytes = std::fs::read(&path).unwrap_or_else(|_| {
            path = self.legacy_path(group, topic.name.as_str());
            std::fs::read(&path).unwrap_or_default()
        });
        let config = serde_json::from_slice::<GroupFile>(&bytes).ok().and_then(|f| f.config);
        let log_end = self.store.write_pos();
        match decode_progress(&bytes, &available, log_end) {
            Ok(p) => (p, config),
            Err(e) => {
                // At-least-once wins: start the group over rather than lose messages.
                tracing::error!(path = %path.display(), error = %e, "corrupt group progress; redelivering from the start");
                (decode_progress(b"", &available, log_end).expect("empty progress decodes"), config)
            }
        }
    }

    /// The group's retry topic, if it exists, with the group's queues extended to cover it.
    fn attach_retry(&self, group: &str, topic: &Topic, st: &mut State) -> Option<Arc<Topic>> {
        let retry = self.store.topics().get(&config::retry_topic(&topic.name, group))?;
        let want = topic.queues.len() + retry.queues.len();
        while st.queues.len() < want {
            st.queues.push(QueueProgress::default());
        }
        Some(retry)
    }

    /// Hands out up to `max` messages of `topic` to `group`: expired in-flight ones first, then
    /// new ones, from the topic's queues and then from the group's retry topic (delayed
    /// redeliveries that have fired). Messages whose tag does not match `expr` are skipped for
    /// this group. A message whose next delivery would pass the group's `max_delivery_attempts`
    /// is taken out of delivery instead, for its dead letter topic (`dead_lettered`).
    /// A group's first receive creates it: [`GroupError::LimitExceeded`] past the quota.
    pub fn receive(
        &self,
        group: &str,
        topic: &Topic,
        batch: Batch,
        invisible_ms: i64,
        expr: &TagExpr,
    ) -> Result<Received, GroupError> {
        let max = batch.max;
        let mut bytes = 0usize;
        // Set once a message does not fit `max_bytes`: it stays for the next receive.
        let mut full = false;
        let now = self.store.clock().now_ms();
        let gt = self.state(group, topic, true)?;
        let mut st = gt.state.lock();
        let retry = self.attach_retry(group, topic, &mut st);
        let max_attempts =
            st.config.as_ref().map_or(GroupConfig::default().max_delivery_attempts, |c| c.max_delivery_attempts);
        let nt = topic.queues.len();
        let nq = st.queues.len();
        let source = |qi: usize| source(topic, retry.as_deref(), qi);
        let start = st.rr % nq.max(1);
        st.rr = st.rr.wrapping_add(1);
        let mut out = Vec::new();
        let mut changed = false;
        let mut dead_lettered = 0;
        let visible_at = now.saturating_add(invisible_ms);

        // 1. Redeliveries whose invisibility has ended.
        for qi in (0..nq).map(|i| (start + i) % nq) {
            if out.len() >= max || full {
                break;
            }
            let (t, tq) = source(qi);
            let cq = &t.queues[tq];
            for offset in st.queues[qi].expired(now, max - out.len()) {
                let p = &mut st.queues[qi];
                let entry = cq.get(offset);
                match self.record_at(t, tq as u16, offset, entry, &TagExpr::All) {
                    Some(c) => {
                        let payload = c.payload;
                        let earlier = attempts_before(&c.record, qi >= nt);
                        let before = earlier + p.attempts_so_far(offset);
                        if before >= max_attempts {
                            p.begin_move(
                                offset,
                                Move { attempts: before, from: self.store.write_pos(), retry_at: None },
                            );
                            changed = true;
                            dead_lettered += 1;
                            continue;
                        }
                        if !batch.admits(&out, bytes, payload) {
                            full = true;
                            break;
                        }
                        bytes += payload;
                        changed = true;
                        let nonce = rand::random::<u32>().max(1);
                        let attempt = p.deliver(offset, visible_at, nonce) + earlier;
                        out.push(Delivery::new(c, qi, offset, attempt, nonce));
                    }
                    None => {
                        changed = true;
                        p.drop_inflight(offset);
                    }
                }
            }
        }
        // 2. FIFO: held messages whose message group has nothing out any more, oldest first.
        for qi in (0..nt).map(|i| (start + i) % nt) {
            let cq = &topic.queues[qi];
            while out.len() < max && !full {
                let p = &mut st.queues[qi];
                let Some((offset, group)) = p.fifo().and_then(|f| f.first_ready()) else { break };
                changed = true;
                let entry = cq.get(offset);
                let Some(c) = self.record_at(topic, qi as u16, offset, entry, &TagExpr::All) else {
                    p.drop_held(offset);
                    continue;
                };
                let payload = c.payload;
                if !batch.admits(&out, bytes, payload) {
                    full = true;
                    break;
                }
                bytes += payload;
                let nonce = rand::random::<u32>().max(1);
                let attempt = p.deliver_in_group(offset, group, visible_at, nonce, now);
                out.push(Delivery::new(c, qi, offset, attempt, nonce));
            }
        }
        // 3. New messages.
        let retained_from = self.store.min_offset();
        let (mut holds, mut more) = (0, false);
        for qi in (0..nq).map(|i| (start + i) % nq) {
            let (t, tq) = source(qi);
            let cq = &t.queues[tq];
            while out.len() < max && !full {
                let p = &mut st.queues[qi];
                if p.fifo().is_some_and(|f| f.held_count() >= MAX_HELD_PER_QUEUE) {
                    break; // the rest waits until held messages go out (bounded memory)
                }
                if holds >= MAX_HOLDS_PER_RECEIVE {
                    more = true;
                    break;
                }
                let offset = p.next;
                let Some(entry) = cq.get(offset).filter(|e| e.log_offset >= retained_from) else {
                    // Not written yet, or reclaimed by retention before the group received it:
                    // then move on to the first message still there.
                    match first_retained(cq, offset, retained_from) {
                        Some(to) => {
                            p.expire_to(to);
                            changed = true;
                            continue;
                        }
                        None => break,
                    }
                };
                changed = true;
                if !expr.may_match_hash(entry.tag_hash) {
                    p.skip_next();
                    continue;
                }
                let Some(c) = self.record_at(t, tq as u16, offset, Some(entry), expr) else {
                    p.skip_next();
                    continue;
                };
                let payload = c.payload;
                if !c.tag_matches {
                    p.skip_next();
                    continue;
                }
                let group =
                    p.fifo().and_then(|_| c.record.record().property(fifo::PROP_MESSAGE_GROUP).map(fifo::group_hash));
                if let Some(g) = group.filter(|&g| !p.fifo().is_some_and(|f| f.is_free(g))) {
                    p.hold_next(g);
                    holds += 1;
                    continue;
                }
                if !batch.admits(&out, bytes, payload) {
                    full = true;
                    break;
                }
                bytes += payload;
                let nonce = rand::random::<u32>().max(1);
                // Only a redelivery (from the retry topic) had deliveries before this record.
                let earlier = attempts_before(&c.record, qi >= nt);
                let attempt = match group {
                    Some(g) => p.deliver_in_group(offset, g, visible_at, nonce, now),
                    None => p.deliver(offset, visible_at, nonce),
                } + earlier;
                out.push(Delivery::new(c, qi, offset, attempt, nonce));
            }
        }
        if changed {
            gt.dirty.store(true, Ordering::Release);
        }
        let wake_at_ms = st.queues.iter().filter_map(|q| q.next_deadline()).min();
        let moving = st.queues.iter().any(|q| q.moving().next().is_some());
        Ok(Received { messages: out, wake_at_ms, dead_lettered, moving, more })
    }

    /// The group's configuration: `None` if the group does not exist (never received, never
    /// configured); the defaults for one never configured.
    pub fn config(&self, group: &str, topic: &Topic) -> Option<GroupConfig> {
        let gt = self.existing_state(group, topic)?;
        let cfg = gt.state.lock().config.clone();
        Some(cfg.unwrap_or_default())
    }

    /// Sets the group's configuration (creating the group), durably before it returns; `true`
    /// if the group had none before. It applies at once, to what is in flight too.
    pub fn configure(&self, group: &str, topic: &Topic, config: GroupConfig) -> Result<bool, GroupError> {
        let gt = self.state(group, topic, true)?;
        let created = {
            let mut st = gt.state.lock();
            let created = st.config.replace(config).is_none();
            self.apply_fifo(topic, &mut st);
            created
        };
        gt.dirty.store(true, Ordering::Release);
        self.persist_one(group, topic)?;
        Ok(created)
    }

    /// The figures of every group of `topic`, by name.
    pub fn list(&self, topic: &Topic) -> Vec<GroupSummary> {
        let mut groups: Vec<(String, Arc<GroupTopic>)> = self
            .states
            .lock()
            .map
            .iter()
            .filter(|((_, t), _)| *t == topic.name)
            .map(|((g, _), gt)| (g.clone(), gt.clone()))
            .collect();
        groups.sort_by(|a, b| a.0.cmp(&b.0));
        groups.into_iter().map(|(name, gt)| self.summarize(name, topic, &gt)).collect()
    }

    /// The figures of one group, if it exists.
    pub fn summary(&self, group: &str, topic: &Topic) -> Option<GroupSummary> {
        let gt = self.existing_state(group, topic)?;
        Some(self.summarize(group.to_string(), topic, &gt))
    }

    fn summarize(&self, name: String, topic: &Topic, gt: &GroupTopic) -> GroupSummary {
        let now = self.store.clock().now_ms();
        let mut st = gt.state.lock();
        let retry = self.attach_retry(&name, topic, &mut st);
        let ends = topic.queues.iter().chain(retry.iter().flat_map(|r| r.queues.iter())).map(|q| q.next());
        let (mut backlog, mut in_flight, mut dead, mut expired) = (0, 0, 0, 0);
        let (mut held, mut blocked) = (0, 0);
        for (p, end) in st.queues.iter().zip(ends) {
            held += p.held_count();
            blocked += p.fifo().map_or(0, |f| f.out_count() as u64);
            let flying = p.in_flight(now);
            backlog += end.saturating_sub(p.next) + p.expired(now, usize::MAX).len() as u64 + p.held_count();
            in_flight += flying;
            dead += p.dead_lettered;
            expired += p.expired;
        }
        GroupSummary {
            name,
            backlog,
            in_flight,
            dead_lettered: dead,
            expired,
            held,
            blocked,
            configured: st.config.is_some(),
            config: st.config.clone().unwrap_or_default(),
        }
    }

    /// Makes each valid delivery invisible for `invisible_ms` from now (its handle stays
    /// valid); returns how many, and the handles that were not valid.
    pub fn extend(&self, group: &str, topic: &Topic, handles: &[String], invisible_ms: i64) -> (usize, Vec<String>) {
        let visible_at = self.store.clock().now_ms().saturating_add(invisible_ms);
        self.each_handle(group, topic, handles, |p, offset, nonce| p.extend(offset, nonce, visible_at))
    }

    /// The valid deliveries among `handles`, with their records and attempts, for a nack;
    /// nothing changes until [`Groups::begin_moves`].
    /// Returns them and the handles that were not valid.
    pub fn nack_take(&self, group: &str, topic: &Topic, handles: &[String]) -> (Vec<Nacked>, Vec<String>) {
        let Some(gt) = self.existing_state(group, topic) else { return (Vec::new(), handles.to_vec()) };
        let mut st = gt.state.lock();
        let retry = self.attach_retry(group, topic, &mut st);
        let nt = topic.queues.len();
        let (mut out, mut invalid) = (Vec::new(), Vec::new());
        for h in handles {
            let found = parse_receipt(h).and_then(|(q, offset, nonce)| {
                let attempt = st.queues.get(q as usize)?.attempt(offset, nonce)?;
                let q = q as usize;
                let (t, tq) = source(topic, retry.as_deref(), q);
                let entry = t.queues.get(tq)?.get(offset);
                let Checked { record, .. } = self.record_at(t, tq as u16, offset, entry, &TagExpr::All)?;
                let attempts = attempt + attempts_before(&record, q >= nt);
                Some(Nacked { queue: q, offset, nonce, attempts, record })
            });
            match found {
                Some(n) => out.push(n),
                None => invalid.push(h.clone()),
            }
        }
        (out, invalid)
    }

    /// Takes nacked deliveries out of delivery, each to a delayed redelivery at its time (or
    /// to the dead letter topic for `None`), stored by the caller ([`Groups::moving`]). A
    /// delivery redelivered meanwhile is left as it is. Returns how many were taken.
    pub fn begin_moves(&self, group: &str, topic: &Topic, nacked: &[(&Nacked, Option<i64>)]) -> usize {
        let Some(gt) = self.existing_state(group, topic) else { return 0 };
        let from = self.store.write_pos();
        let mut st = gt.state.lock();
        let mut n = 0;
        for &(k, retry_at) in nacked {
            if let Some(p) = st.queues.get_mut(k.queue).filter(|p| p.attempt(k.offset, k.nonce).is_some()) {
                p.begin_move(k.offset, Move { attempts: k.attempts, from, retry_at });
                n += 1;
            }
        }
        gt.dirty.store(true, Ordering::Release);
        n
    }

    /// FIFO nacks: each valid delivery stays where it is, invisible until its time, and is
    /// handed out again first (its message group waits for it). Returns how many.
    pub fn delay(&self, group: &str, topic: &Topic, nacked: &[(&Nacked, i64)]) -> usize {
        let Some(gt) = self.existing_state(group, topic) else { return 0 };
        let mut st = gt.state.lock();
        let n = nacked
            .iter()
            .filter(|(k, at)| st.queues.get_mut(k.queue).is_some_and(|p| p.delay(k.offset, k.nonce, *at)))
            .count();
        gt.dirty.store(true, Ordering::Release);
        n
    }

    /// The message groups of a FIFO group that wait for a message out (in flight, or on its way
    /// to the dead letter topic), longest waiting first, at most `limit`.
    pub fn blocked(&self, group: &str, topic: &Topic, limit: usize) -> Vec<BlockedGroup> {
        let Some(gt) = self.existing_state(group, topic) else { return Vec::new() };
        let st = gt.state.lock();
        let mut all: Vec<(usize, fifo::Blocked)> = Vec::new();
        for (qi, p) in st.queues.iter().enumerate().take(topic.queues.len()) {
            if let Some(f) = p.fifo() {
                all.extend(f.blocked(limit).into_iter().map(|b| (qi, b)));
            }
        }
        all.sort_by_key(|(qi, b)| (b.since_ms, *qi, b.offset));
        all.truncate(limit);
        all.into_iter()
            .filter_map(|(qi, b)| {
                let entry = topic.queues[qi].get(b.offset);
                let c = self.record_at(topic, qi as u16, b.offset, entry, &TagExpr::All)?;
                let rec = c.record.record();
                Some(BlockedGroup {
                    message_group: rec.property(fifo::PROP_MESSAGE_GROUP)?.to_string(),
                    // The id its sender was given (a fired message carries it).
                    message_id: rec
                        .property(crate::timer::PROP_ID)
                        .map_or_else(|| c.record.id().to_string(), str::to_string),
                    since_ms: b.since_ms,
                    attempts: st.queues[qi].attempts_so_far(b.offset),
                    waiting: b.waiting as u64,
                })
            })
            .collect()
    }

    /// The group's deliveries on their way out (taken out of delivery, what they move to not
    /// yet known stored).
    pub fn moving(&self, group: &str, topic: &Topic) -> Vec<Moving> {
        let Some(gt) = self.existing_state(group, topic) else { return Vec::new() };
        let mut st = gt.state.lock();
        let retry = self.attach_retry(group, topic, &mut st);
        let mut out = Vec::new();
        for (qi, p) in st.queues.iter().enumerate() {
            let (t, tq) = source(topic, retry.as_deref(), qi);
            for (offset, m) in p.moving() {
                let entry = t.queues[tq].get(offset);
                let record = self.record_at(t, tq as u16, offset, entry, &TagExpr::All).map(|c| c.record);
                let key = format!("{}/{group}/{qi}/{offset}/{}", topic.name, m.attempts);
                out.push(Moving { queue: qi, offset, m, record, key });
            }
        }
        out
    }

    /// What they moved to is stored: the deliveries are done for the group.
    pub fn end_moves(&self, group: &str, topic: &Topic, done: &[(usize, u64)]) {
        let Some(gt) = self.existing_state(group, topic) else { return };
        let mut st = gt.state.lock();
        for &(q, offset) in done {
            if let Some(p) = st.queues.get_mut(q) {
                p.end_move(offset);
            }
        }
        gt.dirty.store(true, Ordering::Release);
        if st.queues.iter().any(|p| p.fifo().is_some_and(|f| f.first_ready().is_some())) {
            topic.appended.notify_waiters();
        }
    }

    /// Moves the group to `to` in every queue of the topic (its retry topic to its end: the
    /// redeliveries waiting there are dropped); what was in flight is forgotten. Returns the
    /// backlog after the move.
    pub fn seek(&self, group: &str, topic: &Topic, to: SeekTo) -> Result<u64, GroupError> {
        let gt = self.state(group, topic, true)?;
        {
            let mut st = gt.state.lock();
            let retry = self.attach_retry(group, topic, &mut st);
            let nt = topic.queues.len();
            let retained_from = self.store.min_offset();
            for (qi, p) in st.queues.iter_mut().enumerate() {
                let target = match (&retry, qi >= nt) {
                    (Some(r), true) => r.queues[qi - nt].next(),
                    _ => {
                        let cq = &topic.queues[qi];
                        let first = first_retained(cq, cq.start(), retained_from).unwrap_or(cq.start());
                        match to {
                            SeekTo::Earliest => first,
                            SeekTo::Latest => cq.next(),
                            SeekTo::Time(ms) => self.first_visible_at(topic, qi as u16, first, ms),
                        }
                    }
                };
                p.seek(target);
            }
        }
        gt.dirty.store(true, Ordering::Release);
        Ok(self.summarize(group.to_string(), topic, &gt).backlog)
    }

    /// The first offset of queue `queue_id` of `topic` from `from` whose message became visible
    /// at or after `ms` (visible times never go backwards along a queue: they are store times,
    /// a published message's its publish record's; so a binary search).
    fn first_visible_at(&self, topic: &Topic, queue_id: u16, from: u64, ms: i64) -> u64 {
        let cq = &topic.queues[queue_id as usize];
        let (mut lo, mut hi) = (from, cq.next());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let visible = cq
                .get(mid)
                .and_then(|e| self.store.read_entry(&topic.name, queue_id, mid, e).ok())
                .map(|r| r.visible_ms);
            match visible {
                Some(t) if t < ms => lo = mid + 1,
                None => lo = mid + 1, // unreadable: never a place to start
                _ => hi = mid,
            }
        }
        lo
    }

    /// Writes one group's progress and configuration now, durably.
    pub fn persist_one(&self, group: &str, topic: &Topic) -> Result<(), GroupError> {
        let Some(gt) = self.existing_state(group, topic) else { return Ok(()) };
        let _writing = gt.writing.lock();
        gt.dirty.store(false, Ordering::Release);
        let file = gt.state.lock().file();
        self.write(group, &topic.name, &file).inspect_err(|_| gt.dirty.store(true, Ordering::Release))
    }

    /// Moves every group past the messages retention reclaimed, whether or not it receives
    /// again: those it never received count as `expired`; its progress below them (done, and
    /// in flight, whose redelivery would find nothing) is forgotten, so a group's state never
    /// outlives what it describes. Returns the messages so expired.
    pub fn expire_reclaimed(&self) -> u64 {
        let retained_from = self.store.min_offset();
        let groups: Vec<(String, Arc<GroupTopic>)> =
            self.states.lock().map.iter().map(|((_, topic), gt)| (topic.clone(), gt.clone())).collect();
        let mut expired = 0;
        for (topic, gt) in groups {
            let Some(t) = self.store.topics().get(&topic) else { continue };
            let mut st = gt.state.lock();
            for (p, cq) in st.queues.iter_mut().zip(&t.queues) {
                if let Some(to) = first_retained(cq, p.floor, retained_from) {
                    expired += p.forget_below(to);
                    gt.dirty.store(true, Ordering::Release);
                }
            }
        }
        expired
    }

    /// Messages that consumer groups never received because retention reclaimed them first,
    /// over every group.
    pub fn expired_total(&self) -> u64 {
        let groups: Vec<Arc<GroupTopic>> = self.states.lock().map.values().cloned().collect();
        groups.iter().map(|g| g.state.lock().queues.iter().map(|q| q.expired).sum::<u64>()).sum()
    }

    /// Reads and checks the record a consume-queue entry points at.
    fn record_at(
        &self,
        topic: &Topic,
        queue_id: u16,
        offset: u64,
        entry: Option<crate::store::CqEntry>,
        expr: &TagExpr,
    ) -> Option<Checked> {
        let entry = entry?;
        let r = match self.store.read_entry(&topic.name, queue_id, offset, entry) {
            Ok(r) => r,
            // Reclaimed by retention (a redelivery of it is dropped).
            Err(crate::store::Unresolved::Reclaimed) => return None,
            Err(crate::store::Unresolved::NotIts) => {
                tracing::error!(topic = %topic.name, queue_id, offset, log_offset = entry.log_offset,
                    "consume-queue entry does not point at its record; skipping it");
                return None;
            }
        };
        let rec = r.record.record();
        let (payload, tag_matches) = (rec.payload_len(), expr.matches(rec.tag));
        Some(Checked { record: r.record, payload, tag_matches, visible_ms: r.visible_ms })
    }

    /// Acks receipt handles; returns how many were acked and the handles that were not valid
    /// (malformed, unknown, already acked, or superseded by a redelivery).
    pub fn ack(&self, group: &str, topic: &Topic, handles: &[String]) -> (usize, Vec<String>) {
        let mut freed = false;
        let out = self.each_handle(group, topic, handles, |p, offset, nonce| {
            let acked = p.ack(offset, nonce);
            freed |= acked && p.fifo().is_some_and(|f| f.first_ready().is_some());
            acked
        });
        if freed {
            // A FIFO message group's next message is ready: wake the long polls.
            topic.appended.notify_waiters();
        }
        out
    }

    /// Applies `f` to the delivery of each handle (false: not valid); returns how many it
    /// applied to and the handles that were not valid. A group that never received has
    /// nothing in flight: every handle is invalid.
    fn each_handle(
        &self,
        group: &str,
        topic: &Topic,
        handles: &[String],
        mut f: impl FnMut(&mut QueueProgress, u64, u32) -> bool,
    ) -> (usize, Vec<String>) {
        let Some(gt) = self.existing_state(group, topic) else { return (0, handles.to_vec()) };
        let mut st = gt.state.lock();
        let (mut n, mut invalid) = (0, Vec::new());
        for h in handles {
            let ok = parse_receipt(h)
                .is_some_and(|(q, offset, nonce)| st.queues.get_mut(q as usize).is_some_and(|p| f(p, offset, nonce)));
            if ok {
                n += 1;
            } else {
                invalid.push(h.clone());
            }
        }
        if n > 0 {
            gt.dirty.store(true, Ordering::Release);
        }
        (n, invalid)
    }

    /// Writes the progress of every changed group durably.
    /// Writes every changed group. One that cannot be written stays dirty (retried next time)
    /// and does not stop the others; the first error is returned.
    pub fn persist_all(&self) -> Result<(), GroupError> {
        let all: Vec<(Key, Arc<GroupTopic>)> =
            self.states.lock().map.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let mut first_err = None;
        for ((group, topic), gt) in all {
            let _writing = gt.writing.lock();
            if !gt.dirty.swap(false, Ordering::AcqRel) {
                continue;
            }
            let file = gt.state.lock().file();
            if let Err(e) = self.write(&group, &topic, &file) {
                gt.dirty.store(true, Ordering::Release);
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    fn write(&self, group: &str, topic: &str, file: &GroupFile) -> Result<(), GroupError> {
        let path = self.path(group, topic);
        let err = |source| GroupError::Io { context: format!("write {}", path.display()), source };
        let body = serde_json::to_vec(file).expect("serialisable");
        crate::store::fsio::create_dir_all(crate::store::fsio::parent(&path)).map_err(err)?;
        crate::store::atomic_file::replace(&path, &body).map_err(err)?;
        // Moved from the earlier layout: the old file goes once the new one is durable.
        let legacy = self.legacy_path(group, topic);
        if legacy.exists() {
            std::fs::remove_file(&legacy).and_then(|()| crate::store::fsio::sync_dir(&self.opts.dir)).map_err(err)?;
        }
        Ok(())
    }

    /// Stops the persister and writes the final progress.
    pub fn shutdown(&self) -> Result<(), GroupError> {
        self.workers.lock().stop_and_join(chime_pipeline::STOP_DEADLINE);
        self.persist_all()
    }
}

impl Drop for Groups {
    fn drop(&mut self) {
        self.workers.lock().request_stop();
    }
}

/// Where a group reading `cq` from `next` must go on if its next message was reclaimed: the
/// first offset whose record is at or after `retained_from` (the commit log's first byte), or
/// `None` if the next one is still there. A binary search: entries are in log order.
fn first_retained(cq: &crate::store::consume_queue::ConsumeQueue, next: u64, retained_from: u64) -> Option<u64> {
    let end = cq.next();
    let gone = |o: u64| cq.get(o).is_none_or(|e| e.log_offset < retained_from);
    if next >= end || !gone(next) {
        return None;
    }
    let (mut lo, mut hi) = (next + 1, end);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if gone(mid) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    Some(lo)
}

/// Deliveries a message had before this record: a delayed redelivery (a record of the retry
/// topic) carries them; any other record has none, and is not parsed for them.
fn attempts_before(r: &VerifiedRecord, from_retry: bool) -> u32 {
    if !from_retry {
        return 0;
    }
    r.record().property(PROP_ATTEMPTS).and_then(|a| a.parse().ok()).unwrap_or(0)
}

/// Queue `qi` of a group of `topic`: the topic's own, or its retry topic's after them.
fn source<'t>(topic: &'t Topic, retry: Option<&'t Topic>, qi: usize) -> (&'t Topic, usize) {
    let nt = topic.queues.len();
    match retry {
        Some(r) if qi >= nt => (r, qi - nt),
        _ => (topic, qi),
    }
}

/// Decodes a group-progress file (empty = no progress yet) and restores one queue per entry of
/// `available` (the messages each queue now holds). Start-up's decoder, and a fuzz target.
pub fn decode_progress(bytes: &[u8], available: &[u64], log_end: u64) -> Result<Vec<QueueProgress>, serde_json::Error> {
    let snaps = if bytes.is_empty() { Vec::new() } else { serde_json::from_slice::<GroupFile>(bytes)?.queues };
    Ok(available
        .iter()
        .enumerate()
        .map(|(i, &n)| QueueProgress::restore(&snaps.get(i).cloned().unwrap_or_default(), n, log_end))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receipt_round_trip() {
        let r = receipt(3, 0xABCDEF, 0x1234_5678);
        assert_eq!(parse_receipt(&r), Some((3, 0xABCDEF, 0x1234_5678)));
        assert_eq!(parse_receipt("zz"), None);
        assert_eq!(parse_receipt(&r[1..]), None);
        assert_eq!(parse_receipt(&format!("{}g", &r[..27])), None);
    }
}
