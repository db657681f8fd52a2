//! The topic registry: each topic's queues, and the file that lists the topics.
//!
//! On disk: `topics.json`, `{"version": 1, "topics": [{"name": "...", "queues": 8, "used": 5}]}`,
//! replaced atomically (temp file, fsync, rename, fsync directory) whenever a topic is created,
//! before any message of that topic is appended, and when a queue gets its first index segment
//! (`used`: a bit per queue that has had one; segments are created with a queue's first
//! message, or for every queue of a topic when the timer prepares it for its first fired
//! message (`Store::prepare_topic`), so a topic no message reached costs no disk). Each topic's consume queues live in
//! `consumequeue/{topic}/{queue_id}/`.
//!
//! Invariants: a topic's queue count never changes after creation; queue ids are `0..queues`;
//! a queue marked used has segments, so one without any lost them (recovery rebuilds it).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use super::consume_queue::ConsumeQueue;
use super::StoreError;

pub const MAX_QUEUES: u16 = 64;
const FILE: &str = "topics.json";

pub struct Topic {
    pub name: String,
    pub queues: Vec<ConsumeQueue>,
    /// Round-robin cursor for choosing a queue.
    next_queue: AtomicU64,
    /// Woken whenever messages are appended to this topic (long-polling receivers wait on it).
    pub appended: tokio::sync::Notify,
    /// Bit `q`: queue `q` has had an index segment (persisted in `topics.json`).
    used: AtomicU64,
}

impl Topic {
    fn open(
        data_dir: &Path,
        name: &str,
        queues: u16,
        cq_entries: u32,
        used: u64,
        starts: &[u64],
    ) -> Result<Self, StoreError> {
        let mut qs = Vec::with_capacity(queues as usize);
        for q in 0..queues {
            let dir = cq_dir(data_dir, name, q);
            let start = starts.get(q as usize).copied().unwrap_or(0);
            qs.push(
                ConsumeQueue::open(&dir, cq_entries, start)
                    .map_err(StoreError::io(format!("open {}", dir.display())))?,
            );
        }
        Ok(Self {
            name: name.to_string(),
            queues: qs,
            next_queue: AtomicU64::new(0),
            appended: tokio::sync::Notify::new(),
            used: AtomicU64::new(used),
        })
    }

    /// Whether queue `q` has had an index segment.
    pub fn queue_used(&self, q: u16) -> bool {
        self.used.load(Ordering::Acquire) & (1 << q) != 0
    }

    /// The queue for the next send (round robin).
    pub fn pick_queue(&self) -> u16 {
        (self.next_queue.fetch_add(1, Ordering::Relaxed) % self.queues.len() as u64) as u16
    }

    /// The queue of every message of a message group (FIFO order is queue order), or the next
    /// one round robin for a message without.
    pub fn queue_for(&self, message_group: Option<&str>) -> u16 {
        match message_group {
            Some(g) => (message_group_hash(g) % self.queues.len() as u64) as u16,
            None => self.pick_queue(),
        }
    }

    /// Messages ever stored in this topic.
    pub fn message_count(&self) -> u64 {
        self.queues.iter().map(|q| q.next()).sum()
    }
}

/// The 64-bit FNV-1a hash of a message group's name (stable: it places messages in queues).
pub fn message_group_hash(message_group: &str) -> u64 {
    super::key_index::fnv1a(message_group.bytes())
}

fn cq_dir(data_dir: &Path, topic: &str, queue: u16) -> PathBuf {
    data_dir.join("consumequeue").join(topic).join(queue.to_string())
}

#[derive(Serialize, Deserialize)]
struct TopicsFile {
    version: u32,
    topics: Vec<TopicMeta>,
}

#[derive(Serialize, Deserialize, Clone)]
struct TopicMeta {
    name: String,
    queues: u16,
    #[serde(default)]
    used: u64,
    /// Per queue, the first entry still on disk (the ones before were reclaimed); empty: 0.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    starts: Vec<u64>,
}

/// Topics opened but not yet shared, for recovery to repair.
pub struct RecoveringTopics {
    data_dir: PathBuf,
    cq_entries: u32,
    pub map: HashMap<String, Topic>,
}

impl RecoveringTopics {
    pub fn load(data_dir: &Path, cq_entries: u32) -> Result<Self, StoreError> {
        let path = data_dir.join(FILE);
        let mut map = HashMap::new();
        match std::fs::read(&path) {
            Ok(bytes) => {
                let file: TopicsFile = serde_json::from_slice(&bytes)
                    .map_err(|e| StoreError::Corrupt { what: path.display().to_string(), detail: e.to_string() })?;
                for t in file.topics {
                    let topic = Topic::open(data_dir, &t.name, t.queues, cq_entries, t.used, &t.starts)?;
                    // Files written before `used` existed: every queue with segments is used.
                    for (q, cq) in topic.queues.iter().enumerate() {
                        if cq.has_segments() {
                            topic.used.fetch_or(1 << q, Ordering::AcqRel);
                        }
                    }
                    map.insert(t.name.clone(), topic);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::io(format!("read {}", path.display()))(e)),
        }
        Ok(Self { data_dir: data_dir.to_path_buf(), cq_entries, map })
    }

    /// Consume-queue segments that were damaged (short, empty or after a gap) and removed, and
    /// queues marked used that have no segment at all (they lost them).
    pub fn removed_segments(&self) -> Vec<String> {
        let mut out = Vec::new();
        for t in self.map.values() {
            for (i, q) in t.queues.iter().enumerate() {
                out.extend(q.removed_segments().iter().cloned());
                if t.queue_used(i as u16) && !q.has_segments() && q.removed_segments().is_empty() {
                    out.push(format!("{} (no segment at all)", cq_dir(&self.data_dir, &t.name, i as u16).display()));
                }
            }
        }
        out
    }

    /// The topic of a replayed record, created if the registry lost it (it is then given enough
    /// queues for `queue_id`).
    pub fn get_or_create(&mut self, name: &str, queue_id: u16) -> Result<&mut Topic, StoreError> {
        let need = queue_id.saturating_add(1);
        let have = self.map.get(name).map(|t| t.queues.len() as u16);
        if have.is_none_or(|n| n < need) {
            let queues = need.max(have.unwrap_or(0));
            tracing::warn!(topic = name, queues, "topic missing from topics.json; recreated from the commit log");
            let topic = Topic::open(&self.data_dir, name, queues, self.cq_entries, 0, &[])?;
            self.map.insert(name.to_string(), topic);
            write_file(&self.data_dir, self.map.values())?;
        }
        Ok(self.map.get_mut(name).expect("inserted above"))
    }

    pub fn into_registry(self) -> Topics {
        Topics {
            data_dir: self.data_dir,
            cq_entries: self.cq_entries,
            map: RwLock::new(self.map.into_iter().map(|(k, v)| (k, Arc::new(v))).collect()),
            create_lock: Mutex::new(()),
            max_topics: AtomicU64::new(u64::MAX),
            created: tokio::sync::Notify::new(),
        }
    }
}

pub struct Topics {
    data_dir: PathBuf,
    cq_entries: u32,
    map: RwLock<HashMap<String, Arc<Topic>>>,
    create_lock: Mutex<()>,
    /// Most topics [`Topics::create`] lets exist, not counting the system's own (names with a
    /// reserved prefix, `crate::names`). Config `limits.max_topics`.
    max_topics: AtomicU64,
    /// Notified whenever a topic is created (wakes receives waiting for their topic).
    created: tokio::sync::Notify,
}

impl Topics {
    pub fn get(&self, name: &str) -> Option<Arc<Topic>> {
        self.map.read().get(name).cloned()
    }

    /// All topics, sorted by name.
    pub fn list(&self) -> Vec<Arc<Topic>> {
        let mut v: Vec<_> = self.map.read().values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Completes when a topic is created after this call (or after `enable` on the pinned
    /// future): register, then look, so a creation in between is not missed.
    pub fn created(&self) -> tokio::sync::futures::Notified<'_> {
        self.created.notified()
    }

    /// Marks queue `q` of `topic` used, durably, before its first index segment is created
    /// (the store's appender calls it, under its lock, for a queue's first message).
    pub fn mark_used(&self, topic: &Topic, q: u16) -> Result<(), StoreError> {
        self.mark_used_bits(topic, 1 << q)
    }

    /// Marks the queues of `bits` used, with one `topics.json` write for all that were not.
    pub fn mark_used_bits(&self, topic: &Topic, bits: u64) -> Result<(), StoreError> {
        if topic.used.load(Ordering::Acquire) & bits == bits {
            return Ok(());
        }
        let _guard = self.create_lock.lock();
        let new = bits & !topic.used.load(Ordering::Acquire);
        if new == 0 {
            return Ok(());
        }
        topic.used.fetch_or(new, Ordering::AcqRel);
        let all: Vec<Arc<Topic>> = self.map.read().values().cloned().collect();
        let written = write_file(&self.data_dir, all.iter().map(|t| t.as_ref()));
        if written.is_err() {
            topic.used.fetch_and(!new, Ordering::AcqRel);
        }
        written
    }

    /// Reclaims the consume-queue segments whose every entry points below `log_below` (the
    /// commit log's first byte: their records are gone), never a queue's last: the new starts
    /// are recorded in `topics.json` first, then the files deleted. Returns segments and bytes.
    pub fn reclaim_index(&self, log_below: u64) -> Result<(u64, u64), StoreError> {
        let _guard = self.create_lock.lock();
        let all: Vec<Arc<Topic>> = self.map.read().values().cloned().collect();
        let mut plan: Vec<(&ConsumeQueue, u64, u64)> = Vec::new(); // (queue, new start, old start)
        for t in &all {
            for q in &t.queues {
                if let Some(start) = q.reclaimable_front(log_below) {
                    plan.push((q, start, q.start()));
                }
            }
        }
        if plan.is_empty() {
            return Ok((0, 0));
        }
        // The starts as they will be, written before any file goes.
        for (q, start, _) in &plan {
            q.set_start(*start);
        }
        if let Err(e) = write_file(&self.data_dir, all.iter().map(|t| t.as_ref())) {
            for (q, _, old) in &plan {
                q.set_start(*old);
            }
            return Err(e);
        }
        let (mut segments, mut bytes) = (0, 0);
        for (q, start, _) in plan {
            if let Some(len) = q.reclaim_front(start).map_err(StoreError::io("reclaim a consume-queue segment"))? {
                segments += 1;
                bytes += len;
            }
        }
        Ok((segments, bytes))
    }

    /// Sets the quota of [`Topics::create`].
    pub fn set_max_topics(&self, max: u64) {
        self.max_topics.store(max, Ordering::Relaxed);
    }

    /// Returns the topic and whether this call created it. The registry file is durable before
    /// the topic is returned. Creating one past `limits.max_topics` fails with
    /// [`StoreError::LimitExceeded`] (the system's own topics do not count and are not limited).
    pub fn create(&self, name: &str, queues: u16) -> Result<(Arc<Topic>, bool), StoreError> {
        self.create_with(name, queues, true)
    }

    /// [`Topics::create`] without the quota: the timer re-creating the topic of a message it
    /// fires (the send created it; only a lost `topics.json` leads here), which a quota must
    /// not stall.
    pub fn create_unlimited(&self, name: &str, queues: u16) -> Result<(Arc<Topic>, bool), StoreError> {
        self.create_with(name, queues, false)
    }

    fn create_with(&self, name: &str, queues: u16, limited: bool) -> Result<(Arc<Topic>, bool), StoreError> {
        if let Some(t) = self.get(name) {
            return Ok((t, false));
        }
        let _guard = self.create_lock.lock();
        if let Some(t) = self.get(name) {
            return Ok((t, false));
        }
        let system = |n: &str| crate::names::RESERVED_PREFIXES.iter().any(|p| n.starts_with(p));
        let max = self.max_topics.load(Ordering::Relaxed);
        if limited && !system(name) && self.map.read().keys().filter(|n| !system(n)).count() as u64 >= max {
            return Err(StoreError::LimitExceeded {
                limit: "limits.max_topics",
                max,
                what: format!("topic {name:?} cannot be created"),
            });
        }
        // A queue's first index segment is created with its first message (`Store::append`
        // prepares segments before it writes; the timer prepares all of a topic's queues before
        // its first fire), so a topic costs no disk until it is used. The
        // system's own topics get theirs now: scheduled sends go to them whatever the topic,
        // and they must not need a `topics.json` write first.
        let topic = Arc::new(Topic::open(&self.data_dir, name, queues, self.cq_entries, 0, &[])?);
        if system(name) {
            for (q, cq) in topic.queues.iter().enumerate() {
                cq.prepare(0, 1).map_err(StoreError::io(format!("create the consume queues of {name}")))?;
                topic.used.fetch_or(1 << q, Ordering::AcqRel);
            }
        }
        let mut all: Vec<Arc<Topic>> = self.map.read().values().cloned().collect();
        all.push(topic.clone());
        write_file(&self.data_dir, all.iter().map(|t| t.as_ref()))?;
        self.map.write().insert(name.to_string(), topic.clone());
        self.created.notify_waiters();
        Ok((topic, true))
    }
}

fn write_file<'a>(data_dir: &Path, topics: impl Iterator<Item = &'a Topic>) -> Result<(), StoreError> {
    let mut metas: Vec<TopicMeta> = topics
        .map(|t| {
            let starts: Vec<u64> = t.queues.iter().map(|q| q.start()).collect();
            TopicMeta {
                name: t.name.clone(),
                queues: t.queues.len() as u16,
                used: t.used.load(Ordering::Acquire),
                starts: if starts.iter().all(|&s| s == 0) { Vec::new() } else { starts },
            }
        })
        .collect();
    metas.sort_by(|a, b| a.name.cmp(&b.name));
    let body = serde_json::to_vec_pretty(&TopicsFile { version: 1, topics: metas }).expect("serialisable");
    let path = data_dir.join(FILE);
    super::atomic_file::replace(&path, &body).map_err(StoreError::io(format!("write {}", path.display())))?;
    Ok(())
}
