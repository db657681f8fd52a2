//! The map from a carried-forward message's id (the one its send returned) to its current copy
//! (`timer::carry`), kept in memory and in an append-only file, so status and cancel by the
//! original id keep working after a restart, whatever became of the copy, until the copy itself
//! is reclaimed.
//!
//! On disk: `timer/moved`, a sequence of 28-byte entries, little-endian:
//!
//! ```text
//! offset size field
//!  0     8    origin offset   u64  the id the client holds (MessageId)
//!  8     4    origin crc      u32
//! 12     8    copy offset     u64  its current copy; u64::MAX = no copy (a tombstone)
//! 20     4    copy crc        u32
//! 24     4    crc             u32  CRC32C of bytes [0, 24)
//! ```
//!
//! The last entry of an origin wins. Invariants: an entry is durable (fsync) before the source
//! cell of its copy becomes `MOVED`, so whenever the original record may be gone its entry is
//! on disk; a move that did not complete writes a tombstone. Loading keeps the longest valid
//! prefix (a torn tail is cut) and drops entries whose copy was reclaimed. The file is
//! rewritten with the live entries only ([`MovedMap::prune`]) when it has grown to twice them.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use parking_lot::Mutex;

use crate::codec::{Get, Put};
use crate::store::MessageId;

const ENTRY: usize = 28;
const TOMBSTONE: u64 = u64::MAX;

pub struct MovedMap {
    path: PathBuf,
    inner: Mutex<Inner>,
}

struct Inner {
    map: HashMap<MessageId, MessageId>,
    /// The `retained_from` of the last prune: nothing to drop until it moves.
    pruned_at: u64,
    file: File,
    /// Entries in the file (live or not).
    entries: u64,
}

fn encode(origin: MessageId, copy: Option<MessageId>, out: &mut Vec<u8>) {
    let copy = copy.unwrap_or(MessageId { offset: TOMBSTONE, crc: 0 });
    let mut b = [0u8; ENTRY];
    Put::new(&mut b).u64(origin.offset).u32(origin.crc).u64(copy.offset).u32(copy.crc).crc();
    out.extend_from_slice(&b);
}

fn decode(b: &[u8]) -> Option<(MessageId, Option<MessageId>)> {
    let mut g = Get::new(b);
    let origin = MessageId { offset: g.u64(), crc: g.u32() };
    let copy = MessageId { offset: g.u64(), crc: g.u32() };
    g.crc_ok().then_some((origin, (copy.offset != TOMBSTONE).then_some(copy)))
}

impl MovedMap {
    /// Loads the file (see the module doc), keeping the entries whose copy is at or after
    /// `retained_from` (the commit log's first offset).
    pub fn open(path: &Path, retained_from: u64) -> io::Result<Self> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        let mut map = HashMap::new();
        let mut valid = 0;
        for chunk in bytes.chunks_exact(ENTRY) {
            let Some((origin, copy)) = decode(chunk) else { break };
            match copy {
                Some(c) if c.offset >= retained_from => drop(map.insert(origin, c)),
                _ => drop(map.remove(&origin)),
            }
            valid += ENTRY;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        if valid < bytes.len() {
            tracing::warn!(path = %path.display(), kept = valid, len = bytes.len(), "moved-id map: torn tail cut");
            file.set_len(valid as u64)?;
            crate::store::fsio::sync_file(&file, path)?;
        }
        crate::store::fsio::sync_dir(crate::store::fsio::parent(path))?;
        let entries = (valid / ENTRY) as u64;
        Ok(Self { path: path.to_path_buf(), inner: Mutex::new(Inner { map, file, entries, pruned_at: retained_from }) })
    }

    pub fn get(&self, origin: &MessageId) -> Option<MessageId> {
        self.inner.lock().map.get(origin).copied()
    }

    pub fn len(&self) -> usize {
        self.inner.lock().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records `origin → copy` (or a tombstone for `None`) for each pair, durably, before it
    /// returns; the map answers with them at once.
    pub fn record(&self, pairs: &[(MessageId, Option<MessageId>)]) -> io::Result<()> {
        if pairs.is_empty() {
            return Ok(());
        }
        let mut out = Vec::with_capacity(pairs.len() * ENTRY);
        pairs.iter().for_each(|&(o, c)| encode(o, c, &mut out));
        let mut inner = self.inner.lock();
        for &(o, c) in pairs {
            match c {
                Some(c) => drop(inner.map.insert(o, c)),
                None => drop(inner.map.remove(&o)),
            }
        }
        crate::store::fault::inject(crate::store::fault::FSYNC, &self.path)?;
        inner.file.write_all(&out)?;
        crate::store::fsio::sync_file(&inner.file, &self.path)?;
        inner.entries += pairs.len() as u64;
        Ok(())
    }

    /// Writes a tombstone for each origin that still maps to its copy in `pairs` (moves that
    /// did not complete), durably.
    pub fn forget(&self, pairs: &[(MessageId, MessageId)]) -> io::Result<()> {
        let gone: Vec<_> = pairs.iter().filter(|&&(o, c)| self.get(&o) == Some(c)).map(|&(o, _)| (o, None)).collect();
        self.record(&gone)
    }

    /// Drops the entries whose copy lies before `retained_from` (reclaimed: the message was
    /// final when its copy went); rewrites the file once it holds twice the live entries.
    pub fn prune(&self, retained_from: u64) -> io::Result<()> {
        let mut inner = self.inner.lock();
        if retained_from <= inner.pruned_at {
            return Ok(()); // the log's start has not moved: every entry is still live
        }
        inner.pruned_at = retained_from;
        inner.map.retain(|_, c| c.offset >= retained_from);
        if inner.entries < 1024 || inner.entries < 2 * inner.map.len() as u64 {
            return Ok(());
        }
        let mut out = Vec::with_capacity(inner.map.len() * ENTRY);
        inner.map.iter().for_each(|(&o, &c)| encode(o, Some(c), &mut out));
        crate::store::atomic_file::replace(&self.path, &out)?;
        inner.file = OpenOptions::new().append(true).open(&self.path)?;
        inner.entries = inner.map.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> MessageId {
        MessageId { offset: n, crc: n as u32 ^ 0xABCD }
    }

    #[test]
    fn entries_survive_a_reopen_tombstones_and_reclaimed_copies_drop_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("moved");
        let m = MovedMap::open(&p, 0).unwrap();
        m.record(&[(id(1), Some(id(100))), (id(2), Some(id(200))), (id(3), Some(id(300)))]).unwrap();
        m.record(&[(id(1), Some(id(150)))]).unwrap(); // carried again: the last wins
        m.forget(&[(id(2), id(999)), (id(3), id(300))]).unwrap(); // 2: not its copy, kept
        assert_eq!((m.get(&id(1)), m.get(&id(2)), m.get(&id(3))), (Some(id(150)), Some(id(200)), None));
        drop(m);
        let m = MovedMap::open(&p, 160).unwrap();
        assert_eq!(m.get(&id(1)), None, "its copy was reclaimed");
        assert_eq!(m.get(&id(2)), Some(id(200)));
        assert_eq!(m.get(&id(3)), None, "tombstone");
        drop(m);
        // A torn last entry: cut, and what follows is appended after the valid prefix.
        let len = std::fs::metadata(&p).unwrap().len();
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(&[7u8; 11]).unwrap();
        drop(f);
        let m = MovedMap::open(&p, 0).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().len(), len);
        m.record(&[(id(4), Some(id(400)))]).unwrap();
        drop(m);
        let m = MovedMap::open(&p, 0).unwrap();
        assert_eq!(m.get(&id(4)), Some(id(400)));
        assert_eq!(m.len(), 3);
    }

    #[test]
    fn prune_rewrites_the_file_with_the_live_entries() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("moved");
        let m = MovedMap::open(&p, 0).unwrap();
        let pairs: Vec<_> = (0..3000).map(|i| (id(i), Some(id(10_000 + i)))).collect();
        m.record(&pairs).unwrap();
        m.prune(12_500).unwrap();
        assert_eq!(m.len(), 500);
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 500 * ENTRY as u64);
        m.record(&[(id(1), Some(id(20_000)))]).unwrap();
        drop(m);
        let m = MovedMap::open(&p, 0).unwrap();
        assert_eq!(m.len(), 501);
        assert_eq!(m.get(&id(2999)), Some(id(12_999)));
        assert_eq!(m.get(&id(1)), Some(id(20_000)));
    }
}
