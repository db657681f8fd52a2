//! The key index: which records were stored with a business key, in time independent of the
//! log's size (API.md `GET /v1/topics/{topic}/messages?key=`), as RocketMQ's index files do.
//!
//! On disk: `keyindex/{first:020}` files, `first` the commit-log offset of the first record a
//! file indexes. A file is `S` slots and `E` entries of 64-bit little-endian words, both
//! derived from `store.segment_size` (1 GiB: 1M slots, 4M entries, 104 MiB):
//!
//! ```text
//! word 0          magic u32 | version u32
//! word 1          entries published (count)
//! words 2..4      reserved
//! words 4..4+S    slot heads: entry number + 1 of the newest entry of the slot (0: none)
//! then E × 3      entries: hash(topic, key) u64 | log offset u64 | prev u32 + CRC32C u32
//! ```
//!
//! An entry's `prev` is the entry before it in its slot (number + 1), so a slot is a chain
//! newest first; lookups walk it and keep the entries of their hash (a hash collision is
//! weeded out by the caller, who reads the record). Invariants: one writer (the store's append
//! lock); entries are in log order and written before the slot head and the count that
//! publish them. The index is rebuildable: flushed at each store checkpoint; at start-up the
//! entries at or after the offset recovery replays from are dropped and re-added by the replay,
//! an entry whose CRC fails ends its file there (its slots are relinked from the entries
//! kept), and a file whose records were all reclaimed is deleted with them.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use parking_lot::RwLock;

use super::fsio;
use super::mmap::AtomicMap;

const MAGIC: u64 = 0xC41E_4B49 << 32 | 1;
const HEADER_WORDS: usize = 4;
const ENTRY_WORDS: usize = 3;

/// The 64-bit FNV-1a hash of `topic`, a NUL and `key` (stable across builds: it is on disk).
pub fn hash(topic: &str, key: &str) -> u64 {
    fnv1a(topic.bytes().chain([0u8]).chain(key.bytes()))
}

/// The 64-bit FNV-1a hash of `bytes` (also what places a message group in its queue).
pub fn fnv1a(bytes: impl IntoIterator<Item = u8>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn entry_crc(hash: u64, offset: u64, prev: u32) -> u32 {
    let mut b = [0u8; 20];
    b[..8].copy_from_slice(&hash.to_le_bytes());
    b[8..16].copy_from_slice(&offset.to_le_bytes());
    b[16..].copy_from_slice(&prev.to_le_bytes());
    crc32c::crc32c(&b)
}

struct IndexFile {
    first: u64,
    map: AtomicMap,
}

pub struct KeyIndex {
    dir: PathBuf,
    slots: usize,
    entries: usize,
    files: RwLock<Vec<Arc<IndexFile>>>,
}

impl IndexFile {
    fn words(&self) -> &[std::sync::atomic::AtomicU64] {
        self.map.words()
    }

    fn count(&self) -> usize {
        self.words()[1].load(Ordering::Acquire) as usize
    }

    fn entry(&self, slots: usize, i: usize) -> (u64, u64, u32, u32) {
        let w = self.words();
        let at = HEADER_WORDS + slots + i * ENTRY_WORDS;
        let last = w[at + 2].load(Ordering::Acquire);
        (w[at].load(Ordering::Acquire), w[at + 1].load(Ordering::Acquire), last as u32, (last >> 32) as u32)
    }

    /// Keeps the entries before `keep` (each checked), zeroes the rest and relinks the slots.
    fn cut(&self, slots: usize, keep: usize) {
        let w = self.words();
        let count = self.count();
        let mut valid = 0;
        while valid < keep.min(count) {
            let (h, off, prev, crc) = self.entry(slots, valid);
            if crc != entry_crc(h, off, prev) || prev as usize > valid {
                tracing::warn!(file = %self.map.path().display(), entry = valid, "key index: damaged entry; the file ends there");
                break;
            }
            valid += 1;
        }
        for i in valid..count {
            let at = HEADER_WORDS + slots + i * ENTRY_WORDS;
            (0..ENTRY_WORDS).for_each(|k| w[at + k].store(0, Ordering::Relaxed));
        }
        (0..slots).for_each(|s| w[HEADER_WORDS + s].store(0, Ordering::Relaxed));
        for i in 0..valid {
            let (h, ..) = self.entry(slots, i);
            w[HEADER_WORDS + (h % slots as u64) as usize].store(i as u64 + 1, Ordering::Relaxed);
        }
        w[1].store(valid as u64, Ordering::Release);
    }
}

impl KeyIndex {
    /// Opens the index under `dir`, with files sized for commit-log segments of
    /// `segment_size` bytes (a record is at least 64 bytes; a quarter of them keyed, at most).
    pub fn open(dir: &Path, segment_size: u64) -> io::Result<Self> {
        let entries = ((segment_size / 256) as usize).clamp(4096, 1 << 22);
        let slots = entries / 4;
        fsio::create_dir_all(dir)?;
        fsio::remove_stale_tmp(dir)?;
        let len = (HEADER_WORDS + slots + entries * ENTRY_WORDS) * 8;
        let mut firsts: Vec<u64> = Vec::new();
        for e in std::fs::read_dir(dir)? {
            let name = e?.file_name();
            if let Some(first) = name.to_str().filter(|n| n.len() == 20).and_then(|n| n.parse().ok()) {
                firsts.push(first);
            }
        }
        firsts.sort_unstable();
        let mut files = Vec::new();
        for first in firsts {
            let path = dir.join(format!("{first:020}"));
            let (map, fresh) = AtomicMap::open_or_create(&path, len)?;
            let f = IndexFile { first, map };
            if fresh || f.words()[0].load(Ordering::Acquire) != MAGIC {
                // Another geometry or a file never initialised: rebuilt from the log.
                tracing::warn!(path = %path.display(), "key index file unusable; removed (its keys are indexed again only for records replayed)");
                drop(f);
                std::fs::remove_file(&path)?;
                continue;
            }
            files.push(Arc::new(f));
        }
        fsio::sync_dir(dir)?;
        let index = Self { dir: dir.to_path_buf(), slots, entries, files: RwLock::new(files) };
        Ok(index)
    }

    /// Recovery: drops every entry of a record at or after `offset` (the replay adds them
    /// again) and checks the rest. Files that would be left empty are deleted.
    pub fn truncate_from(&self, offset: u64) -> io::Result<()> {
        let mut files = self.files.write();
        while files.last().is_some_and(|f| f.first >= offset) {
            let f = files.pop().expect("checked");
            std::fs::remove_file(f.map.path())?;
        }
        if let Some(f) = files.last() {
            let count = f.count().min(self.entries);
            let keep = (0..count).find(|&i| f.entry(self.slots, i).1 >= offset).unwrap_or(count);
            f.cut(self.slots, keep);
        }
        fsio::sync_dir(&self.dir)
    }

    /// Adds the keys of the record at `offset` of `topic` (the store's writer only).
    pub fn add<'a>(&self, topic: &str, keys: impl IntoIterator<Item = &'a str>, offset: u64) -> io::Result<()> {
        for key in keys {
            let h = hash(topic, key);
            let open = self.files.read().last().filter(|f| f.count() < self.entries).cloned();
            let f = match open {
                Some(f) => f,
                None => self.create(offset)?,
            };
            let w = f.words();
            let i = f.count();
            let slot = HEADER_WORDS + (h % self.slots as u64) as usize;
            let prev = w[slot].load(Ordering::Acquire) as u32;
            let at = HEADER_WORDS + self.slots + i * ENTRY_WORDS;
            w[at].store(h, Ordering::Relaxed);
            w[at + 1].store(offset, Ordering::Relaxed);
            w[at + 2].store(u64::from(prev) | u64::from(entry_crc(h, offset, prev)) << 32, Ordering::Relaxed);
            w[slot].store(i as u64 + 1, Ordering::Release);
            w[1].store(i as u64 + 1, Ordering::Release);
        }
        Ok(())
    }

    fn create(&self, first: u64) -> io::Result<Arc<IndexFile>> {
        let len = (HEADER_WORDS + self.slots + self.entries * ENTRY_WORDS) * 8;
        let path = self.dir.join(format!("{first:020}"));
        // Durable when it returns (`fsio::create_allocated`).
        let (map, _) = AtomicMap::open_or_create(&path, len)?;
        map.words()[0].store(MAGIC, Ordering::Release);
        map.flush_range(0, 8)?;
        let f = Arc::new(IndexFile { first, map });
        self.files.write().push(f.clone());
        Ok(f)
    }

    /// Commit-log offsets of records stored with `key` in `topic` (and hash collisions, which
    /// the caller weeds out), newest first, at most `limit`; offsets below `retained_from` are
    /// skipped (reclaimed).
    /// Also returns the lookup's cost: the entries it read (one slot chain per file, newest
    /// file first, until `limit`).
    pub fn find(&self, topic: &str, key: &str, limit: usize, retained_from: u64) -> (Vec<u64>, usize) {
        let h = hash(topic, key);
        let files: Vec<Arc<IndexFile>> = self.files.read().clone();
        let (mut out, mut visited) = (Vec::new(), 0);
        for f in files.iter().rev() {
            let count = f.count();
            let mut next = f.words()[HEADER_WORDS + (h % self.slots as u64) as usize].load(Ordering::Acquire) as usize;
            while next > 0 && out.len() < limit {
                if next > count {
                    break; // not published yet
                }
                let (eh, off, prev, _) = f.entry(self.slots, next - 1);
                visited += 1;
                if eh == h && off >= retained_from {
                    out.push(off);
                }
                next = prev as usize;
            }
            if out.len() >= limit {
                break;
            }
        }
        (out, visited)
    }

    /// Keys one file holds (from the segment size).
    pub fn entries_per_file(&self) -> usize {
        self.entries
    }

    /// Makes every entry durable (the store checkpoint).
    pub fn flush(&self) -> io::Result<()> {
        for f in self.files.read().iter() {
            f.map.flush_range(0, f.map.len())?;
        }
        Ok(())
    }

    /// Deletes the files whose records all lie below `retained_from` (the next file starts at
    /// or below it). Returns the files and bytes deleted.
    pub fn reclaim_below(&self, retained_from: u64) -> io::Result<(u64, u64)> {
        let gone: Vec<Arc<IndexFile>> = {
            let mut files = self.files.write();
            let n = files.windows(2).take_while(|w| w[1].first <= retained_from).count();
            files.drain(..n).collect()
        };
        let bytes = gone.iter().map(|f| f.map.len() as u64).sum();
        for f in &gone {
            std::fs::remove_file(f.map.path())?;
        }
        if !gone.is_empty() {
            fsio::sync_dir(&self.dir)?;
        }
        Ok((gone.len() as u64, bytes))
    }

    /// Files on disk (each holds [`KeyIndex::entries_per_file`] keys at most).
    pub fn files(&self) -> u64 {
        self.files.read().len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_fnv1a_as_on_disk() {
        // Published FNV-1a 64 values: the index and the message-group queues depend on them.
        assert_eq!(fnv1a(*b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(*b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(hash("t", "k"), fnv1a(*b"t\0k"));
    }

    #[test]
    fn keys_are_found_newest_first_across_files_and_survive_a_reopen_and_a_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let idx = KeyIndex::open(dir.path(), 0).unwrap(); // the smallest files: 4096 entries
        for i in 0..10_000u64 {
            let key = format!("k{}", i % 100);
            idx.add("t", [key.as_str(), "all"], i * 100).unwrap();
        }
        assert_eq!(idx.files(), 5, "20,000 entries in files of 4096");
        assert_eq!(idx.find("t", "k7", 3, 0).0, vec![9_907 * 100, 9_807 * 100, 9_707 * 100]);
        assert_eq!(idx.find("t", "k7", 1000, 0).0.len(), 100);
        assert!(idx.find("other", "k7", 10, 0).0.is_empty(), "another topic's key");
        assert_eq!(idx.find("t", "all", 20_000, 500_000).0.len(), 5_000, "reclaimed offsets skipped");
        idx.flush().unwrap();
        drop(idx);
        let idx = KeyIndex::open(dir.path(), 0).unwrap();
        assert_eq!(idx.find("t", "k7", 1000, 0).0.len(), 100);
        // Recovery replays from record 9,000 on: the entries from there are dropped.
        idx.truncate_from(9_000 * 100).unwrap();
        assert_eq!(idx.find("t", "k7", 1000, 0).0.len(), 90);
        idx.add("t", ["k7"], 9_000 * 100).unwrap();
        assert_eq!(idx.find("t", "k7", 1, 0).0, vec![9_000 * 100]);
        // Files whose records are all reclaimed go.
        let (n, _) = idx.reclaim_below(6_000 * 100).unwrap();
        assert_eq!(n, 2, "the files of records 0..4096 (first 0) and 2048.. (first 204,800)");
        assert_eq!(idx.find("t", "k7", 1000, 6_000 * 100).0.len(), 31);
    }

    #[test]
    fn a_damaged_entry_ends_its_file_and_the_rest_is_relinked() {
        let dir = tempfile::tempdir().unwrap();
        let idx = KeyIndex::open(dir.path(), 0).unwrap();
        for i in 0..10u64 {
            idx.add("t", ["k"], i).unwrap();
        }
        let f = idx.files.read()[0].clone();
        let at = HEADER_WORDS + idx.slots + 6 * ENTRY_WORDS + 1;
        f.words()[at].fetch_xor(1, Ordering::Relaxed); // entry 6's offset
        idx.truncate_from(u64::MAX).unwrap();
        assert_eq!(idx.find("t", "k", 100, 0).0, vec![5, 4, 3, 2, 1, 0]);
        idx.add("t", ["k"], 42).unwrap();
        assert_eq!(idx.find("t", "k", 2, 0).0, vec![42, 5]);
    }
}
