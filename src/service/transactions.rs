//! Transaction messages (API.md "Transaction messages"): half messages, stored and invisible,
//! then committed or rolled back as a whole; a producer that never says is asked (a pulled
//! check-back), and after `transaction.check_max` checks the transaction is resolved by
//! `transaction.unresolved`.
//!
//! **On disk**: the internal topic [`TXN_TOPIC`] (one queue; its name is reserved, so no client
//! sends to it or sees it). Every record of transaction `T` carries the reserved key
//! [`txn_key`]`(T)` (so the key index finds them all, whatever their age) and the property
//! `__txn.kind`:
//! - `header` (group, message count, `check_after_ms`) and one `half` per message (its body, tag,
//!   keys and properties, its topic, and its timing: at once, `delay` ms after the commit, or
//!   `at` an absolute time), all appended by the prepare as one batch;
//! - `check` (`checks` = n): a check handed out, appended before the check answers;
//! - `commit` or `rollback` (`by` = client | timeout, and the group, prepare time, checks and
//!   topics, so `GET` answers as long as this record is kept): the resolution.
//!
//! **Invariants.** A commit is one all-or-nothing append of the messages (to their topics, the
//! scheduled ones to the timer, timed from the commit) *and* its `commit` record: recovery
//! keeps a batch whole or drops it whole, and index entries are published after its last
//! record, so no consumer ever sees part of a transaction and a transaction is committed iff
//! its messages exist. The committed messages carry [`txn_key`] too (a reserved key, never
//! shown), which is how `GET` finds them after a restart. Prepared transactions are in memory
//! (rebuilt from the topic at start-up); resolved ones are read back through the key index, so
//! memory holds only what is unresolved. A prepared transaction's records are never reclaimed:
//! retention stops below the oldest ([`Transactions::pinned_below`]).
//!
//! **Checks** are counted only when handed out (a `check` record, durable before the answer):
//! a transaction is handed out to its producer group's check once it is older than its
//! `check_after_ms`, then at most once per `transaction.check_interval`. Once it has had
//! `check_max` checks and one more interval passed without a resolution, it is resolved by
//! `transaction.unresolved`, `resolved_by: "timeout"`. A resolution racing a check or another
//! resolution is decided under the table's lock: the first wins, a repeat answers the same,
//! the other resolution answers [`ServiceError::Conflict`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use super::{Broker, ServiceError};
use crate::group::fifo::PROP_MESSAGE_GROUP;
use crate::store::topics::Topic;
use crate::store::{NewMessage, VerifiedRecord};
use crate::timer::MessageState;

/// The internal topic of transaction records.
pub const TXN_TOPIC: &str = "rmq_sys_trans_half";

const KIND: &str = "__txn.kind";
const ID: &str = "__txn.id";
const GROUP: &str = "__txn.group";
const COUNT: &str = "__txn.count";
const CHECK_AFTER: &str = "__txn.check_after";
const TOPIC: &str = "__txn.topic";
const DELAY: &str = "__txn.delay";
const AT: &str = "__txn.at";
const CHECKS: &str = "__txn.checks";
const BY: &str = "__txn.by";
/// A message's place in its transaction (on its half and on what the commit stored).
const SEQ: &str = "__txn.seq";
/// On a resolution record, so `GET` answers after the prepare's records were reclaimed.
const PREPARED_AT: &str = "__txn.prepared_at";
const TOPICS: &str = "__txn.topics";

/// The reserved key of every record of transaction `id` (and of its committed messages).
pub fn txn_key(id: &str) -> String {
    format!("\u{0}txn\u{0}{id}")
}

/// A transaction's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnState {
    Prepared,
    Committed,
    RolledBack,
}

/// Who resolved a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResolvedBy {
    Client,
    Timeout,
}

/// When a transaction's message becomes visible, counted from the commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timing {
    /// At the commit.
    Now,
    /// This many ms after the commit (`delay_ms`, `delay_level`).
    After(i64),
    /// At this time (`deliver_at_ms`, `deliver_at`); at once if the commit comes later.
    At(i64),
}

/// One message of a transaction to prepare.
#[derive(Debug, Clone)]
pub struct TxnSend {
    pub topic: String,
    /// Its `deliver_at_ms` is ignored: `timing` says when.
    pub message: NewMessage,
    pub timing: Timing,
}

/// A message of a transaction as `GET` and the resolutions report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnMessage {
    pub message_id: String,
    pub topic: String,
    /// `None` while prepared or after a rollback.
    pub deliver_at_ms: Option<i64>,
    /// `None` while prepared or after a rollback; else the committed message's state now.
    pub state: Option<MessageState>,
}

/// A transaction as `GET` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnInfo {
    pub id: String,
    pub producer_group: String,
    pub state: TxnState,
    pub prepared_at_ms: i64,
    pub checks: u32,
    pub resolved_by: Option<ResolvedBy>,
    pub messages: Vec<TxnMessage>,
}

/// A transaction handed out to a check, with its messages' records.
pub struct Checked {
    pub info: TxnInfo,
    pub records: Vec<(String, VerifiedRecord)>,
}

/// What the transactions are configured with (`[transaction]`).
#[derive(Debug, Clone, Copy)]
pub struct TxnOptions {
    pub check_interval_ms: i64,
    pub check_max: u32,
    /// Resolve an unanswered transaction by committing it (else by rolling it back).
    pub unresolved_commit: bool,
}

impl Default for TxnOptions {
    fn default() -> Self {
        Self { check_interval_ms: 30_000, check_max: 15, unresolved_commit: false }
    }
}

/// A prepared transaction, in memory.
#[derive(Debug, Clone)]
struct Prepared {
    group: String,
    prepared_at_ms: i64,
    checks: u32,
    /// When it may be handed out to a check next (or, past `check_max`, resolved by timeout).
    next_check_ms: i64,
    /// (log offset, topic) of each half, in order.
    halves: Vec<(u64, String)>,
    /// A resolution in progress (decided, not yet stored).
    resolving: Option<TxnState>,
}

/// Figures for `/metrics`.
#[derive(Debug, Default)]
pub struct TxnCounters {
    pub committed: AtomicU64,
    pub rolled_back: AtomicU64,
    pub resolved_by_timeout: AtomicU64,
    pub checks: AtomicU64,
}

/// The prepared transactions and the counters.
#[derive(Default)]
pub struct Transactions {
    table: Mutex<HashMap<String, Prepared>>,
    pub counters: TxnCounters,
}

impl Transactions {
    /// The lowest log offset a prepared transaction still needs (retention stops below it).
    pub fn pinned_below(&self) -> Option<u64> {
        self.table.lock().values().filter_map(|p| p.halves.first().map(|h| h.0)).min()
    }

    /// Prepared transactions, and the age of the oldest (ms) at `now`.
    pub fn prepared(&self, now: i64) -> (u64, i64) {
        let t = self.table.lock();
        let oldest = t.values().map(|p| now - p.prepared_at_ms).max().unwrap_or(0);
        (t.len() as u64, oldest.max(0))
    }
}

fn new_id() -> String {
    format!("{:032X}", rand::random::<u128>())
}

fn valid_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

fn record(kind: &str, id: &str, props: &[(&str, String)]) -> NewMessage {
    let mut m = NewMessage { keys: vec![txn_key(id)], ..Default::default() };
    m.properties.insert(KIND.into(), kind.into());
    m.properties.insert(ID.into(), id.into());
    for (k, v) in props {
        m.properties.insert((*k).into(), v.clone());
    }
    m
}

impl Broker {
    fn txn_topic(&self) -> Result<Arc<Topic>, ServiceError> {
        Ok(self.store.topics().create_unlimited(TXN_TOPIC, 1)?.0)
    }

    /// Rebuilds the prepared transactions from [`TXN_TOPIC`] (start-up, before serving).
    pub fn recover_transactions(&self) -> Result<usize, ServiceError> {
        let Some(t) = self.store.topics().get(TXN_TOPIC) else { return Ok(0) };
        let interval = self.txn_opts.check_interval_ms;
        let retained_from = self.store.min_offset();
        let mut table: HashMap<String, Prepared> = HashMap::new();
        let q = &t.queues[0];
        for i in q.start()..q.next() {
            let Some(e) = q.get(i).filter(|e| e.log_offset >= retained_from) else { continue };
            let Some(r) = self.store.read_verified(e.log_offset) else { continue };
            let rec = r.record();
            let (Some(kind), Some(id)) = (rec.property(KIND), rec.property(ID)) else { continue };
            let num = |k: &str| rec.property(k).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
            match kind {
                "header" => {
                    let check_after_ms = num(CHECK_AFTER);
                    let p = Prepared {
                        group: rec.property(GROUP).unwrap_or_default().to_string(),
                        prepared_at_ms: rec.store_ms,
                        checks: 0,
                        next_check_ms: rec.store_ms + check_after_ms,
                        halves: Vec::new(),
                        resolving: None,
                    };
                    table.insert(id.to_string(), p);
                }
                "half" => {
                    if let Some(p) = table.get_mut(id) {
                        p.halves.push((e.log_offset, rec.property(TOPIC).unwrap_or_default().to_string()));
                    }
                }
                "check" => {
                    if let Some(p) = table.get_mut(id) {
                        p.checks = p.checks.max(num(CHECKS) as u32);
                        p.next_check_ms = rec.store_ms + interval;
                    }
                }
                _ => {
                    table.remove(id);
                }
            }
        }
        // The header comes first in its batch: halves reclaimed before it cannot exist for a
        // prepared one (retention stops below the oldest prepared), so a transaction without
        // halves is one whose records retention took after it was resolved.
        table.retain(|_, p| !p.halves.is_empty());
        let n = table.len();
        *self.txns.table.lock() = table;
        Ok(n)
    }

    /// Prepares a transaction of `msgs` (1..=1000, across topics) for `group`: stored, durable
    /// as a send is, invisible until committed.
    pub async fn prepare(&self, group: &str, check_after_ms: i64, msgs: Vec<TxnSend>) -> Result<TxnInfo, ServiceError> {
        self.check_accepting()?;
        for m in &msgs {
            self.topic_for_send(&m.topic)?;
        }
        let txn = self.txn_topic()?;
        let id = new_id();
        let mut records = vec![record(
            "header",
            &id,
            &[(GROUP, group.to_string()), (COUNT, msgs.len().to_string()), (CHECK_AFTER, check_after_ms.to_string())],
        )];
        for (seq, s) in msgs.iter().enumerate() {
            let mut m = s.message.clone();
            m.deliver_at_ms = None;
            m.keys.push(txn_key(&id));
            for (k, v) in
                [(KIND, "half".to_string()), (ID, id.clone()), (TOPIC, s.topic.clone()), (SEQ, seq.to_string())]
            {
                m.properties.insert(k.into(), v);
            }
            match s.timing {
                Timing::Now => {}
                Timing::After(d) => {
                    m.properties.insert(DELAY.into(), d.to_string());
                }
                Timing::At(t) => {
                    m.properties.insert(AT.into(), t.to_string());
                }
            }
            records.push(m);
        }
        let res = self.store.append(&txn, &records)?;
        self.store.wait_durable(res.end).await?;
        let header = res.messages[0];
        let halves: Vec<(u64, String)> =
            res.messages[1..].iter().zip(&msgs).map(|(a, s)| (a.id.offset, s.topic.clone())).collect();
        let messages = res.messages[1..]
            .iter()
            .zip(&msgs)
            .map(|(a, s)| TxnMessage {
                message_id: a.id.to_string(),
                topic: s.topic.clone(),
                deliver_at_ms: None,
                state: None,
            })
            .collect();
        self.txns.table.lock().insert(
            id.clone(),
            Prepared {
                group: group.to_string(),
                prepared_at_ms: header.store_ms,
                checks: 0,
                next_check_ms: header.store_ms + check_after_ms,
                halves,
                resolving: None,
            },
        );
        Ok(TxnInfo {
            id,
            producer_group: group.to_string(),
            state: TxnState::Prepared,
            prepared_at_ms: header.store_ms,
            checks: 0,
            resolved_by: None,
            messages,
        })
    }

    /// Commits (`want` = Committed) or rolls back transaction `id`. A repeat of the same
    /// resolution answers it again; the other one is a [`ServiceError::Conflict`].
    pub async fn resolve(&self, id: &str, want: TxnState, by: ResolvedBy) -> Result<TxnInfo, ServiceError> {
        let unknown = || ServiceError::NotFound(format!("no transaction {id:?}"));
        if !valid_id(id) {
            return Err(unknown());
        }
        let p = loop {
            let decided = {
                let mut t = self.txns.table.lock();
                match t.get_mut(id) {
                    Some(p) if p.resolving.is_none() => {
                        p.resolving = Some(want);
                        Some(Ok(p.clone()))
                    }
                    Some(p) if p.resolving == Some(want) => None, // being stored by another call
                    Some(_) => {
                        Some(Err(ServiceError::Conflict(format!("transaction {id} is being resolved otherwise"))))
                    }
                    None => Some(Err(ServiceError::NotFound(String::new()))),
                }
            };
            match decided {
                Some(Ok(p)) => break p,
                Some(Err(ServiceError::NotFound(_))) => {
                    // Resolved already (or unknown): answer what it became.
                    let info = self.transaction(id)?;
                    return if info.state == want {
                        Ok(info)
                    } else {
                        Err(ServiceError::Conflict(format!("transaction {id} is already {:?}", info.state)))
                    };
                }
                Some(Err(e)) => return Err(e),
                None => tokio::time::sleep(std::time::Duration::from_millis(2)).await,
            }
        };
        let result = self.store_resolution(id, &p, want, by).await;
        let mut t = self.txns.table.lock();
        match result {
            Ok(info) => {
                t.remove(id);
                drop(t);
                let c = &self.txns.counters;
                match want {
                    TxnState::Committed => c.committed.fetch_add(1, Ordering::Relaxed),
                    _ => c.rolled_back.fetch_add(1, Ordering::Relaxed),
                };
                if by == ResolvedBy::Timeout {
                    c.resolved_by_timeout.fetch_add(1, Ordering::Relaxed);
                }
                Ok(info)
            }
            Err(e) => {
                if let Some(p) = t.get_mut(id) {
                    p.resolving = None;
                }
                Err(e)
            }
        }
    }

    async fn store_resolution(
        &self,
        id: &str,
        p: &Prepared,
        want: TxnState,
        by: ResolvedBy,
    ) -> Result<TxnInfo, ServiceError> {
        let txn = self.txn_topic()?;
        let by_s = if by == ResolvedBy::Client { "client" } else { "timeout" };
        let kind = if want == TxnState::Committed { "commit" } else { "rollback" };
        let mut topics: Vec<&str> = p.halves.iter().map(|(_, t)| t.as_str()).collect();
        topics.sort_unstable();
        topics.dedup();
        let op = record(
            kind,
            id,
            &[
                (BY, by_s.to_string()),
                (GROUP, p.group.clone()),
                (PREPARED_AT, p.prepared_at_ms.to_string()),
                (CHECKS, p.checks.to_string()),
                (TOPICS, topics.join(",")),
            ],
        );
        let mut messages = Vec::new();
        let durable_at = if want == TxnState::Committed {
            let now = self.store.clock().now_ms();
            let mut msgs = Vec::with_capacity(p.halves.len());
            for (offset, topic) in &p.halves {
                let r = self
                    .store
                    .read_verified(*offset)
                    .ok_or_else(|| ServiceError::Unavailable(format!("transaction {id}: a half is unreadable")))?;
                let rec = r.record();
                let mut m = rec.to_message(|k| !k.starts_with("__") || k == PROP_MESSAGE_GROUP || k == SEQ);
                m.born_ms = rec.born_ms;
                m.deliver_at_ms = match (rec.property(DELAY), rec.property(AT)) {
                    (Some(d), _) => d.parse::<i64>().ok().map(|d| now.saturating_add(d)),
                    (None, Some(at)) => at.parse::<i64>().ok(),
                    _ => None,
                }
                .filter(|&t| t > now);
                msgs.push((self.topic_for_send(topic)?, m));
            }
            let (appended, _) = self.append_multi(msgs, vec![(txn, op)])?;
            for (s, (_, topic)) in appended.sent.iter().zip(&p.halves) {
                let state = if s.scheduled { MessageState::Scheduled } else { MessageState::Delivered };
                messages.push(TxnMessage {
                    message_id: s.id.to_string(),
                    topic: topic.clone(),
                    deliver_at_ms: Some(s.deliver_at_ms),
                    state: Some(state),
                });
            }
            appended.durable_at
        } else {
            self.store.append(&txn, std::slice::from_ref(&op))?.end
        };
        self.store.wait_durable(durable_at).await?;
        Ok(TxnInfo {
            id: id.to_string(),
            producer_group: p.group.clone(),
            state: want,
            prepared_at_ms: p.prepared_at_ms,
            checks: p.checks,
            resolved_by: Some(by),
            messages,
        })
    }

    /// Transaction `id` as it is now.
    pub fn transaction(&self, id: &str) -> Result<TxnInfo, ServiceError> {
        let unknown = || ServiceError::NotFound(format!("no transaction {id:?}"));
        if !valid_id(id) {
            return Err(unknown());
        }
        if let Some(p) = self.txns.table.lock().get(id).cloned() {
            let messages = p
                .halves
                .iter()
                .filter_map(|(off, topic)| {
                    let r = self.store.read_verified(*off)?;
                    Some(TxnMessage {
                        message_id: r.id().to_string(),
                        topic: topic.clone(),
                        deliver_at_ms: None,
                        state: None,
                    })
                })
                .collect();
            return Ok(TxnInfo {
                id: id.to_string(),
                producer_group: p.group,
                state: TxnState::Prepared,
                prepared_at_ms: p.prepared_at_ms,
                checks: p.checks,
                resolved_by: None,
                messages,
            });
        }
        // Resolved: its records, through the key index.
        let key = txn_key(id);
        let mut info: Option<TxnInfo> = None;
        let (mut halves, mut state, mut by, mut checks) = (Vec::new(), TxnState::Prepared, None, 0);
        let mut resolution: Option<(String, i64, String)> = None;
        let mut offsets = self.store.find_by_key(TXN_TOPIC, &key, 4096);
        offsets.sort_unstable();
        for off in offsets {
            let Some(r) = self.store.read_verified(off) else { continue };
            let rec = r.record();
            if rec.topic != TXN_TOPIC || rec.property(ID) != Some(id) {
                continue; // a hash collision
            }
            match rec.property(KIND) {
                Some("header") => {
                    info = Some(TxnInfo {
                        id: id.to_string(),
                        producer_group: rec.property(GROUP).unwrap_or_default().to_string(),
                        state: TxnState::Prepared,
                        prepared_at_ms: rec.store_ms,
                        checks: 0,
                        resolved_by: None,
                        messages: Vec::new(),
                    })
                }
                Some("half") => halves.push((r.id().to_string(), rec.property(TOPIC).unwrap_or_default().to_string())),
                Some("check") => checks = checks.max(rec.property(CHECKS).and_then(|c| c.parse().ok()).unwrap_or(0)),
                Some(kind @ ("commit" | "rollback")) => {
                    state = if kind == "commit" { TxnState::Committed } else { TxnState::RolledBack };
                    by = Some(if rec.property(BY) == Some("timeout") {
                        ResolvedBy::Timeout
                    } else {
                        ResolvedBy::Client
                    });
                    checks = checks.max(rec.property(CHECKS).and_then(|c| c.parse().ok()).unwrap_or(0));
                    resolution = Some((
                        rec.property(GROUP).unwrap_or_default().to_string(),
                        rec.property(PREPARED_AT).and_then(|t| t.parse().ok()).unwrap_or(rec.store_ms),
                        rec.property(TOPICS).unwrap_or_default().to_string(),
                    ));
                }
                _ => {}
            }
        }
        // The prepare's records may be reclaimed already; the resolution says the rest.
        let mut topics_of_resolution = Vec::new();
        if let Some((group, prepared_at_ms, topics)) = resolution {
            topics_of_resolution = topics.split(',').filter(|t| !t.is_empty()).map(str::to_string).collect();
            info.get_or_insert(TxnInfo {
                id: id.to_string(),
                producer_group: group,
                state,
                prepared_at_ms,
                checks,
                resolved_by: by,
                messages: Vec::new(),
            });
        }
        let mut info = info.ok_or_else(unknown)?;
        info.state = state;
        info.resolved_by = by;
        info.checks = checks;
        info.messages = if state == TxnState::Committed {
            let mut topics: Vec<&String> = halves.iter().map(|(_, t)| t).chain(&topics_of_resolution).collect();
            topics.sort();
            topics.dedup();
            let mut out = Vec::new();
            for t in topics {
                for h in self.find_by_key(t, &key, 1000) {
                    // In the transaction's order (the stored copy keeps its place).
                    let seq =
                        h.id.parse::<crate::store::MessageId>()
                            .ok()
                            .and_then(|m| self.store.read_verified(m.offset))
                            .and_then(|r| r.record().property(SEQ).and_then(|s| s.parse::<usize>().ok()))
                            .unwrap_or(usize::MAX);
                    let m = TxnMessage {
                        message_id: h.id,
                        topic: t.clone(),
                        deliver_at_ms: Some(h.deliver_at_ms),
                        state: Some(h.state),
                    };
                    out.push((seq, m));
                }
            }
            out.sort_by_key(|(seq, _)| *seq);
            out.into_iter().map(|(_, m)| m).collect()
        } else {
            halves
                .into_iter()
                .map(|(message_id, topic)| TxnMessage { message_id, topic, deliver_at_ms: None, state: None })
                .collect()
        };
        Ok(info)
    }

    /// Transactions, newest first, at most `limit`: of `group` if given, in `state` if given.
    /// Prepared ones come from memory; others from [`TXN_TOPIC`], read newest first.
    pub fn transactions(&self, group: Option<&str>, state: Option<TxnState>, limit: usize) -> Vec<TxnInfo> {
        if state == Some(TxnState::Prepared) {
            let t = self.txns.table.lock();
            let mut ids: Vec<(i64, String)> = t
                .iter()
                .filter(|(_, p)| group.is_none_or(|g| p.group == g))
                .map(|(id, p)| (p.prepared_at_ms, id.clone()))
                .collect();
            ids.sort_by(|a, b| b.cmp(a));
            ids.truncate(limit);
            drop(t);
            return ids.into_iter().filter_map(|(_, id)| self.transaction(&id).ok()).collect();
        }
        let mut out = Vec::new();
        let Some(t) = self.store.topics().get(TXN_TOPIC) else { return out };
        self.store.scan_newest_first(&t, |r| {
            let rec = r.record.record();
            if rec.property(KIND) == Some("header") && group.is_none_or(|g| rec.property(GROUP) == Some(g)) {
                if let Some(info) = rec.property(ID).and_then(|id| self.transaction(id).ok()) {
                    if state.is_none_or(|s| s == info.state) {
                        out.push(info);
                    }
                }
            }
            out.len() < limit
        });
        out
    }

    /// The check-back: up to `max` prepared transactions of `group` due for a check at `now`,
    /// each counted (durably) as handed out once more.
    pub async fn check(&self, group: &str, max: usize) -> Result<Vec<Checked>, ServiceError> {
        let now = self.store.clock().now_ms();
        let (interval, check_max) = (self.txn_opts.check_interval_ms, self.txn_opts.check_max);
        let due: Vec<(String, Prepared)> = {
            let mut t = self.txns.table.lock();
            let mut due: Vec<(&String, &mut Prepared)> = t
                .iter_mut()
                .filter(|(_, p)| {
                    p.group == group && p.resolving.is_none() && p.checks < check_max && now >= p.next_check_ms
                })
                .collect();
            due.sort_by_key(|(_, p)| p.prepared_at_ms);
            due.truncate(max);
            due.into_iter()
                .map(|(id, p)| {
                    p.checks += 1;
                    p.next_check_ms = now + interval;
                    (id.clone(), p.clone())
                })
                .collect()
        };
        if due.is_empty() {
            return Ok(Vec::new());
        }
        let records: Vec<NewMessage> =
            due.iter().map(|(id, p)| record("check", id, &[(CHECKS, p.checks.to_string())])).collect();
        let stored = self.txn_topic().and_then(|t| Ok(self.store.append(&t, &records)?));
        let stored = match stored {
            Ok(res) => self.store.wait_durable(res.end).await.map_err(ServiceError::from),
            Err(e) => Err(e),
        };
        if let Err(e) = stored {
            // Not handed out: not counted.
            let mut t = self.txns.table.lock();
            for (id, _) in &due {
                if let Some(p) = t.get_mut(id) {
                    p.checks -= 1;
                    p.next_check_ms = now;
                }
            }
            return Err(e);
        }
        self.txns.counters.checks.fetch_add(due.len() as u64, Ordering::Relaxed);
        Ok(due
            .into_iter()
            .map(|(id, p)| {
                let records: Vec<(String, VerifiedRecord)> =
                    p.halves.iter().filter_map(|(o, t)| Some((t.clone(), self.store.read_verified(*o)?))).collect();
                let messages = records
                    .iter()
                    .map(|(t, r)| TxnMessage {
                        message_id: r.id().to_string(),
                        topic: t.clone(),
                        deliver_at_ms: None,
                        state: None,
                    })
                    .collect();
                let info = TxnInfo {
                    id,
                    producer_group: p.group,
                    state: TxnState::Prepared,
                    prepared_at_ms: p.prepared_at_ms,
                    checks: p.checks,
                    resolved_by: None,
                    messages,
                };
                Checked { info, records }
            })
            .collect())
    }

    /// Resolves by `transaction.unresolved` every transaction that had `check_max` checks and
    /// no resolution for an interval after the last (called every second by the server).
    /// Returns how many.
    pub async fn resolve_timeouts(&self) -> usize {
        let now = self.store.clock().now_ms();
        let check_max = self.txn_opts.check_max;
        let ids: Vec<String> = self
            .txns
            .table
            .lock()
            .iter()
            .filter(|(_, p)| p.resolving.is_none() && p.checks >= check_max && now >= p.next_check_ms)
            .map(|(id, _)| id.clone())
            .collect();
        let want = if self.txn_opts.unresolved_commit { TxnState::Committed } else { TxnState::RolledBack };
        let mut n = 0;
        for id in ids {
            match self.resolve(&id, want, ResolvedBy::Timeout).await {
                Ok(_) => n += 1,
                Err(ServiceError::Conflict(_)) => {} // the client was first
                Err(e) => {
                    tracing::warn!(transaction = %id, error = %e, "cannot resolve a transaction by timeout; retrying")
                }
            }
        }
        n
    }

    /// The prepared transactions (figures for `/metrics`).
    pub fn transactions_table(&self) -> &Arc<Transactions> {
        &self.txns
    }
}

/// The API's name of a state.
pub fn state_name(s: TxnState) -> &'static str {
    match s {
        TxnState::Prepared => "prepared",
        TxnState::Committed => "committed",
        TxnState::RolledBack => "rolled_back",
    }
}
