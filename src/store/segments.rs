//! An ordered set of equal-sized mapped segment files that together form one logical byte space.
//!
//! On disk: a directory of files, each `segment_size` bytes, named by the logical offset of its
//! first byte as 20 zero-padded decimal digits (`00000000000001073741824`), the same scheme as
//! RocketMQ's `MappedFileQueue`. Offsets are therefore global and never reused; the segment of an
//! offset is found by binary search. Files whose names are not 20 digits are ignored; a segment
//! whose base is not a multiple of the segment size is an error (the size was changed).
//!
//! Invariants: segments are contiguous (each starts where the previous ends) and each is
//! exactly `segment_size` bytes, because a segment is created whole (`fsio::create_allocated`:
//! after a power cut, no file or a complete one) and only the tail is ever removed. A set that
//! breaks them (a file left short by a file system that lost its size) is refused by
//! [`SegmentSet::open`] and cut at the first bad segment by [`SegmentSet::open_rebuildable`].

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;

use super::fsio;
use super::mmap::MappedFile;

/// One segment: a mapped file and the global offset of its first byte.
#[derive(Debug)]
pub struct Segment {
    pub base: u64,
    pub file: MappedFile,
}

impl Segment {
    /// The global offset just past this segment.
    pub fn end(&self) -> u64 {
        self.base + self.file.len() as u64
    }
}

#[derive(Debug)]
pub struct SegmentSet {
    dir: PathBuf,
    segment_size: u64,
    segments: RwLock<Vec<Arc<Segment>>>,
}

/// File name of the segment starting at `base`.
pub fn segment_name(base: u64) -> String {
    format!("{base:020}")
}

impl SegmentSet {
    /// Opens every segment in `dir` (creating the directory if needed), in offset order. A
    /// segment of the wrong size, or a gap between segments, is an error naming the file:
    /// for data that cannot be rebuilt (the commit log).
    pub fn open(dir: &Path, segment_size: u64) -> io::Result<Self> {
        let (set, damaged) = Self::open_with(dir, segment_size, false, 0)?;
        debug_assert!(damaged.is_empty());
        Ok(set)
    }

    /// Like [`SegmentSet::open`], for an index that can be rebuilt (consume queues, the timer
    /// log): the first segment of the wrong size (a file a power cut left short or empty) or
    /// after a gap, and every segment after it, are deleted. Returns what was deleted, one
    /// line each; the caller rebuilds it.
    pub fn open_rebuildable(dir: &Path, segment_size: u64) -> io::Result<(Self, Vec<String>)> {
        Self::open_with(dir, segment_size, true, 0)
    }

    /// [`SegmentSet::open_rebuildable`] for an index whose segments below `start` (a multiple
    /// of the segment size) were reclaimed: leftovers below it (a crash between recording the
    /// start and deleting them) are deleted; a first segment above it means the ones between
    /// were lost.
    pub fn open_rebuildable_from(dir: &Path, segment_size: u64, start: u64) -> io::Result<(Self, Vec<String>)> {
        Self::open_with(dir, segment_size, true, start)
    }

    fn open_with(dir: &Path, segment_size: u64, rebuildable: bool, start: u64) -> io::Result<(Self, Vec<String>)> {
        fsio::create_dir_all(dir)?;
        fsio::remove_stale_tmp(dir)?;
        let mut bases = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.len() != 20 || !name.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let base: u64 = name.parse().map_err(|_| invalid(dir, name, "bad name"))?;
            if !base.is_multiple_of(segment_size) {
                return Err(invalid(dir, name, "base is not a multiple of the segment size"));
            }
            bases.push(base);
        }
        bases.sort_unstable();
        let mut segments: Vec<Segment> = Vec::with_capacity(bases.len());
        let mut damaged = Vec::new();
        // Reclaimed segments a crash left behind.
        let below = bases.partition_point(|&b| b < start);
        if below > 0 {
            for &b in &bases[..below] {
                std::fs::remove_file(dir.join(segment_name(b)))?;
            }
            fsio::sync_dir(dir)?;
            bases.drain(..below);
        }
        // A first segment above the start means the ones before it were lost.
        if rebuildable && bases.first().is_some_and(|&b| b != start) {
            for &b in &bases {
                let p = dir.join(segment_name(b));
                damaged.push(format!("{} (the segments before it are missing)", p.display()));
                std::fs::remove_file(&p)?;
            }
            tracing::warn!(dir = %dir.display(), removed = ?damaged, "index segments missing at the start; rebuilt");
            fsio::sync_dir(dir)?;
            bases.clear();
        }
        for (i, &base) in bases.iter().enumerate() {
            let path = dir.join(segment_name(base));
            let problem = match segments.last() {
                Some(prev) if base != prev.end() => {
                    Some(format!("{}: a gap before it (the previous segment ends at {})", path.display(), prev.end()))
                }
                _ => None,
            };
            let opened = match problem {
                Some(p) => Err(io::Error::new(io::ErrorKind::InvalidData, p)),
                None => MappedFile::open(&path, segment_size as usize),
            };
            match opened {
                Ok(file) => segments.push(Segment { base, file }),
                Err(e) if rebuildable && e.kind() == io::ErrorKind::InvalidData => {
                    for &b in &bases[i..] {
                        let p = dir.join(segment_name(b));
                        let size = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
                        damaged.push(format!("{} ({size} bytes)", p.display()));
                        std::fs::remove_file(&p)?;
                    }
                    tracing::warn!(first = %e, removed = ?damaged, "index segments removed; they are rebuilt");
                    fsio::sync_dir(dir)?;
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        let segments = segments.into_iter().map(Arc::new).collect();
        Ok((Self { dir: dir.to_path_buf(), segment_size, segments: RwLock::new(segments) }, damaged))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn segment_size(&self) -> u64 {
        self.segment_size
    }

    /// The segment holding global offset `offset`, if it exists.
    pub fn find(&self, offset: u64) -> Option<Arc<Segment>> {
        let segs = self.segments.read();
        let idx = segs.partition_point(|s| s.base <= offset);
        let seg = segs.get(idx.checked_sub(1)?)?;
        (offset < seg.end()).then(|| seg.clone())
    }

    pub fn first(&self) -> Option<Arc<Segment>> {
        self.segments.read().first().cloned()
    }

    pub fn last(&self) -> Option<Arc<Segment>> {
        self.segments.read().last().cloned()
    }

    pub fn all(&self) -> Vec<Arc<Segment>> {
        self.segments.read().clone()
    }

    /// Creates the segment starting at `base` (a multiple of the segment size, after the last),
    /// or returns it if it exists.
    pub fn create(&self, base: u64) -> io::Result<Arc<Segment>> {
        debug_assert_eq!(base % self.segment_size, 0);
        let mut segs = self.segments.write();
        // Created meanwhile by another thread (the flusher preallocates the commit log ahead;
        // the timer prepares consume queues ahead of the appender, perhaps past `base` too).
        if let Some(s) = segs.iter().rev().find(|s| s.base == base) {
            return Ok(s.clone());
        }
        if let Some(last) = segs.last() {
            if base < last.end() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("segment {base} would overlap {}", last.base),
                ));
            }
        }
        let path = self.dir.join(segment_name(base));
        super::fault::inject(super::fault::ALLOCATE, &path)?;
        // Durable when it returns: after a power cut, no file or a complete one.
        let file = MappedFile::create(&path, self.segment_size as usize)?;
        let seg = Arc::new(Segment { base, file });
        segs.push(seg.clone());
        Ok(seg)
    }

    /// Fsyncs the global byte range `[from, to)`, segment by segment, in offset order.
    pub fn flush_range(&self, from: u64, to: u64) -> io::Result<()> {
        super::fault::inject(super::fault::FSYNC, &self.dir)?;
        for seg in self.all() {
            if seg.end() <= from || seg.base >= to {
                continue;
            }
            let a = from.saturating_sub(seg.base) as usize;
            let b = (to.min(seg.end()) - seg.base) as usize;
            seg.file.flush_range(a, b)?;
        }
        Ok(())
    }

    /// Gives mutable access to every segment, for recovery. Fails if any segment is shared.
    pub fn segments_mut(&mut self) -> io::Result<Vec<&mut Segment>> {
        self.segments
            .get_mut()
            .iter_mut()
            .map(|s| {
                Arc::get_mut(s).ok_or_else(|| io::Error::other("segment is shared during recovery (a bug in chime)"))
            })
            .collect()
    }

    /// Reclaims the first segment if it lies wholly below `below` and is not the last: drops it
    /// from the set (readers holding it keep their mapping), deletes its file and syncs the
    /// directory. Returns its base and size.
    pub fn remove_first_below(&self, below: u64) -> io::Result<Option<(u64, u64)>> {
        let seg = {
            let mut segs = self.segments.write();
            match segs.first() {
                Some(s) if s.end() <= below && segs.len() > 1 => segs.remove(0),
                _ => return Ok(None),
            }
        };
        std::fs::remove_file(seg.file.path())?;
        fsio::sync_dir(&self.dir)?;
        Ok(Some((seg.base, seg.file.len() as u64)))
    }

    /// Deletes every segment whose base is at or after `base` (recovery discarding a torn tail).
    pub fn remove_from(&mut self, base: u64) -> io::Result<usize> {
        let segs = self.segments.get_mut();
        let keep = segs.partition_point(|s| s.base < base);
        let removed: Vec<_> = segs.drain(keep..).collect();
        for seg in &removed {
            std::fs::remove_file(seg.file.path())?;
        }
        if !removed.is_empty() {
            fsio::sync_dir(&self.dir)?;
        }
        Ok(removed.len())
    }
}

fn invalid(dir: &Path, name: &str, why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("{}/{name}: {why}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_by_offset_and_remove_tail() {
        let dir = tempfile::tempdir().unwrap();
        let set = SegmentSet::open(dir.path(), 4096).unwrap();
        assert!(set.find(0).is_none());
        set.create(0).unwrap();
        set.create(4096).unwrap();
        assert_eq!(set.create(4096).unwrap().base, 4096, "creating the last again returns it");
        assert_eq!(set.create(0).unwrap().base, 0, "and any existing one (a racing creator was first)");
        assert_eq!(set.all().len(), 2, "nothing created twice");
        assert_eq!(set.find(0).unwrap().base, 0);
        assert_eq!(set.find(4095).unwrap().base, 0);
        assert_eq!(set.find(4096).unwrap().base, 4096);
        assert!(set.find(8192).is_none());
        drop(set);
        std::fs::write(dir.path().join("not-a-segment"), b"x").unwrap();
        let mut set = SegmentSet::open(dir.path(), 4096).unwrap();
        assert_eq!(set.all().len(), 2);
        assert_eq!(set.remove_from(4096).unwrap(), 1);
        assert!(set.find(4096).is_none());
        assert!(SegmentSet::open(dir.path(), 1000).is_err());
    }

    #[test]
    fn short_or_gapped_segments_are_refused_or_cut_from_there() {
        let dir = tempfile::tempdir().unwrap();
        let set = SegmentSet::open(dir.path(), 4096).unwrap();
        for base in [0, 4096, 8192] {
            set.create(base).unwrap();
        }
        drop(set);
        // A power cut on a file system that lost the size of the middle segment.
        std::fs::OpenOptions::new().write(true).open(dir.path().join(segment_name(4096))).unwrap().set_len(0).unwrap();
        let e = SegmentSet::open(dir.path(), 4096).unwrap_err();
        assert!(e.to_string().contains("00000000000000004096 is 0 bytes"), "{e}");
        let (set, damaged) = SegmentSet::open_rebuildable(dir.path(), 4096).unwrap();
        assert_eq!(set.all().len(), 1, "the short segment and every later one are removed");
        assert_eq!(damaged.len(), 2, "{damaged:?}");
        assert!(damaged[0].contains("(0 bytes)"), "{damaged:?}");
        drop(set);
        // A gap (a segment missing in the middle) is cut the same way.
        let set = SegmentSet::open(dir.path(), 4096).unwrap();
        set.create(4096).unwrap();
        set.create(8192).unwrap();
        drop(set);
        std::fs::remove_file(dir.path().join(segment_name(4096))).unwrap();
        assert!(SegmentSet::open(dir.path(), 4096).unwrap_err().to_string().contains("a gap before it"));
        let (set, damaged) = SegmentSet::open_rebuildable(dir.path(), 4096).unwrap();
        assert_eq!((set.all().len(), damaged.len()), (1, 1));
    }
}
