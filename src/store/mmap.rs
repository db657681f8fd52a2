//! A fixed-size file mapped into memory, written append-only: the one module that uses `unsafe`.
//!
//! Every segment of the commit log and of the consume queues is a `MappedFile`. The file is
//! allocated to its full size when created (`fallocate`, so a full disk is an error at creation
//! rather than a `SIGBUS` when a page is first touched), durably (`fsio`), and mapped shared,
//! read-write. Every flush is reported to `powercut`, the tests' power-cut simulation.
//!
//! # Invariants that make the `unsafe` blocks sound
//! - `published` splits the map in two. Bytes below it are immutable while the file is shared
//!   (`&self`): readers get plain `&[u8]` slices of them. Bytes at or above it are touched only by
//!   the single writer that holds `write_lock`, and are published with a `Release` store after
//!   being written, so a reader that loads `published` with `Acquire` sees complete bytes.
//! - Bytes below `published` are changed again only through `&mut self` (recovery truncating a
//!   torn tail), when no reader can hold a slice.
//! - The map is never resized or remapped while a `MappedFile` exists.
//!
//! Another process writing the same file would break these invariants; the data directory's
//! lock file (`store::lock`) keeps other chime processes out.
#![allow(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use memmap2::{MmapOptions, MmapRaw};
use parking_lot::Mutex;

/// A mapped file of fixed length with an append-only publish watermark.
pub struct MappedFile {
    path: PathBuf,
    map: MmapRaw,
    len: usize,
    /// Bytes `[0, published)` are complete and immutable while shared.
    published: AtomicUsize,
    /// Serialises writers of the unpublished region.
    write_lock: Mutex<()>,
    _file: File,
}

impl std::fmt::Debug for MappedFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MappedFile")
            .field("path", &self.path)
            .field("len", &self.len)
            .field("published", &self.published())
            .finish()
    }
}

/// Creates `path` (failing if it exists) with `len` bytes allocated on disk, durably
/// (`fsio::create_allocated`: after a power cut, no file or a complete one).
fn create_allocated(path: &Path, len: usize) -> io::Result<File> {
    super::fsio::create_allocated(path, len as u64)
}

/// Opens an existing `path`, which must be exactly `len` bytes long.
fn open_exact(path: &Path, len: usize) -> io::Result<File> {
    let file = OpenOptions::new().read(true).write(true).open(path)?;
    let actual = file.metadata()?.len();
    if actual != len as u64 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is {actual} bytes, expected {len} (was a size setting changed?)", path.display()),
        ));
    }
    Ok(file)
}

impl MappedFile {
    /// Creates a new file of `len` bytes (failing if it exists), allocates its blocks and maps it.
    pub fn create(path: &Path, len: usize) -> io::Result<Self> {
        Self::map(path.to_path_buf(), create_allocated(path, len)?, len)
    }

    /// Opens an existing file, which must be exactly `len` bytes long. Nothing is published:
    /// recovery reads it through [`MappedFile::recovery_bytes`] and then calls
    /// [`MappedFile::set_published`].
    pub fn open(path: &Path, len: usize) -> io::Result<Self> {
        Self::map(path.to_path_buf(), open_exact(path, len)?, len)
    }

    fn map(path: PathBuf, file: File, len: usize) -> io::Result<Self> {
        if len == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "cannot map an empty file"));
        }
        let map = MmapOptions::new().len(len).map_raw(&file)?;
        Ok(Self { path, map, len, published: AtomicUsize::new(0), write_lock: Mutex::new(()), _file: file })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// End of the published (complete, immutable) prefix.
    pub fn published(&self) -> usize {
        self.published.load(Ordering::Acquire)
    }

    /// The published bytes `[pos, pos + len)`, or `None` if any of them is not published.
    pub fn read(&self, pos: usize, len: usize) -> Option<&[u8]> {
        let end = pos.checked_add(len)?;
        if end > self.published() {
            return None;
        }
        // SAFETY: `[pos, end)` lies below `published` (loaded with Acquire after the writer's
        // Release), so it is fully written and, while `self` is shared, never written again;
        // the map lives as long as `self`, which the returned slice borrows.
        Some(unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(pos), len) })
    }

    /// Writes `data` at `pos`, which must be at or above the published watermark, then publishes
    /// up to `pos + data.len()`. Returns `false` (writing nothing) if the range is out of bounds
    /// or already published.
    pub fn append_at(&self, pos: usize, data: &[u8]) -> bool {
        let _guard = self.write_lock.lock();
        let Some(end) = pos.checked_add(data.len()) else {
            return false;
        };
        if end > self.len || pos < self.published.load(Ordering::Relaxed) {
            return false;
        }
        // SAFETY: `[pos, end)` is inside the map and at or above `published`, so no reader holds
        // a slice of it; `write_lock` excludes every other writer. `data` cannot alias the map's
        // unpublished region because no safe reference to that region exists.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.map.as_mut_ptr().add(pos), data.len());
        }
        self.published.store(end, Ordering::Release);
        true
    }

    /// The whole map, for recovery scans. Needs `&mut self`, so no reader can be active.
    pub fn recovery_bytes(&mut self) -> &[u8] {
        // SAFETY: `&mut self` proves there are no other borrows of this file's bytes; the map
        // is `len` bytes long and lives as long as `self`.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr(), self.len) }
    }

    /// Zeroes `[from, to)` (a torn or discarded tail) and sets the watermark to `from`.
    /// Bytes past `to` must already be zero: callers pass the end of what was ever written.
    pub fn truncate(&mut self, from: usize, to: usize) {
        let to = to.min(self.len);
        let from = from.min(to);
        // SAFETY: `&mut self` proves no reader holds a slice; the range is inside the map.
        unsafe { std::ptr::write_bytes(self.map.as_mut_ptr().add(from), 0, to - from) };
        *self.published.get_mut() = from;
    }

    /// Sets the watermark after recovery has validated `[0, to)`.
    pub fn set_published(&mut self, to: usize) {
        *self.published.get_mut() = to.min(self.len);
    }

    /// Writes `data` at any position (recovery rebuilding an index). Needs `&mut self`.
    pub fn overwrite(&mut self, pos: usize, data: &[u8]) -> bool {
        let Some(end) = pos.checked_add(data.len()) else {
            return false;
        };
        if end > self.len {
            return false;
        }
        // SAFETY: `&mut self` proves no reader holds a slice; the range is inside the map.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.map.as_mut_ptr().add(pos), data.len());
        }
        true
    }

    /// Flushes `[from, to)` to disk (`msync(MS_SYNC)`), so it survives a machine crash.
    pub fn flush_range(&self, from: usize, to: usize) -> io::Result<()> {
        let to = to.min(self.len);
        if from >= to {
            return Ok(());
        }
        let snapshot = super::powercut::before_sync(&self.path, from, to);
        self.map.flush_range(from, to - from)?;
        super::powercut::synced_range(snapshot);
        Ok(())
    }

    /// Faults `[from, to)` in, writable, without changing a byte (`MADV_POPULATE_WRITE`), so the
    /// appender does not pay for zeroing fresh pages (with read-ahead) under its lock.
    pub fn prefault(&self, from: usize, to: usize) -> io::Result<()> {
        let to = to.min(self.len);
        if from >= to {
            return Ok(());
        }
        self.map.advise_range(memmap2::Advice::PopulateWrite, from, to - from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_publish_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seg");
        let f = MappedFile::create(&path, 4096).unwrap();
        assert_eq!(f.published(), 0);
        assert!(f.read(0, 1).is_none());
        assert!(f.append_at(0, b"hello"));
        assert_eq!(f.read(0, 5).unwrap(), b"hello");
        assert!(f.read(0, 6).is_none());
        // Rewriting published bytes through &self is refused.
        assert!(!f.append_at(2, b"xx"));
        // Past the end is refused.
        assert!(!f.append_at(4095, b"xx"));
        assert!(f.append_at(5, b" world"));
        f.flush_range(0, 11).unwrap();
        drop(f);

        let mut f = MappedFile::open(&path, 4096).unwrap();
        assert_eq!(&f.recovery_bytes()[..11], b"hello world");
        f.truncate(5, 4096);
        assert_eq!(f.published(), 5);
        assert_eq!(f.recovery_bytes()[5], 0);
        assert!(MappedFile::open(&path, 8192).is_err(), "length mismatch is an error");
        assert!(MappedFile::create(&path, 4096).is_err(), "create never clobbers");
    }
}

/// A mapped file accessed only through atomics: in-place updated structures (the timer wheel's
/// slots, the per-message state cells). Every access is atomic, so concurrent readers and
/// writers in this process never race; the directory lock keeps other processes out.
pub struct AtomicMap {
    path: PathBuf,
    map: MmapRaw,
    len: usize,
    _file: File,
}

impl std::fmt::Debug for AtomicMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AtomicMap").field("path", &self.path).field("len", &self.len).finish()
    }
}

impl AtomicMap {
    /// Opens `path`, creating it zero-filled and fully allocated if it does not exist. An
    /// existing file must be exactly `len` bytes. `len` must be a positive multiple of 8.
    pub fn open_or_create(path: &Path, len: usize) -> io::Result<(Self, bool)> {
        if len == 0 || !len.is_multiple_of(8) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "atomic map length must be a positive multiple of 8",
            ));
        }
        let created = !path.exists();
        let file = if created { create_allocated(path, len)? } else { open_exact(path, len)? };
        let map = MmapOptions::new().len(len).map_raw(&file)?;
        Ok((Self { path: path.to_path_buf(), map, len, _file: file }, created))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The file as 64-bit words.
    pub fn words(&self) -> &[AtomicU64] {
        // SAFETY: the map starts page-aligned (so 8-aligned) and is `len` bytes, a multiple of
        // 8; AtomicU64 has the size and alignment of u64 and any bit pattern is valid; the
        // memory is only ever accessed through atomics (this type hands out no other view of
        // it), so shared access is sound; the slice borrows `self`, which keeps the map alive.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr() as *const AtomicU64, self.len / 8) }
    }

    /// The file as bytes. A file must be used through one view only ([`AtomicMap::words`] or
    /// this), never both.
    pub fn bytes(&self) -> &[std::sync::atomic::AtomicU8] {
        // SAFETY: AtomicU8 has size and alignment 1 and any bit pattern is valid; the map is
        // `len` bytes and lives as long as `self`; all access is atomic (see `words`).
        unsafe { std::slice::from_raw_parts(self.map.as_ptr() as *const std::sync::atomic::AtomicU8, self.len) }
    }

    /// Flushes `[from, to)` (bytes) to disk. Failpoint [`FSYNC`](super::fault::FSYNC), filtered
    /// by this file's path (the timer wheel, the state cells).
    pub fn flush_range(&self, from: usize, to: usize) -> io::Result<()> {
        let to = to.min(self.len);
        if from >= to {
            return Ok(());
        }
        super::fault::inject(super::fault::FSYNC, &self.path)?;
        let snapshot = super::powercut::before_sync(&self.path, from, to);
        self.map.flush_range(from, to - from)?;
        super::powercut::synced_range(snapshot);
        Ok(())
    }
}

#[cfg(test)]
mod atomic_tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn words_persist_and_length_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("w");
        let (m, created) = AtomicMap::open_or_create(&p, 4096).unwrap();
        assert!(created);
        m.words()[3].store(42, Ordering::Release);
        m.flush_range(0, 4096).unwrap();
        drop(m);
        let (m, created) = AtomicMap::open_or_create(&p, 4096).unwrap();
        assert!(!created);
        assert_eq!(m.words()[3].load(Ordering::Acquire), 42);
        assert_eq!(m.bytes().len(), 4096);
        assert!(AtomicMap::open_or_create(&p, 8192).is_err());
        assert!(AtomicMap::open_or_create(&dir.path().join("x"), 7).is_err());
    }
}
