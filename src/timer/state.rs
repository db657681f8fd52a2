//! One state cell per scheduled message: what makes cancel O(1) and exact.
//!
//! On disk: `timer/state/{base:020}` files of [`CELLS_PER_FILE`] bytes (fewer in tests); the cell of a scheduled
//! message is the byte at its queue offset in the system topic (so its message id, which holds
//! the record's offset, leads to its cell in O(1)). Files are zero-filled: a new message is
//! `SCHEDULED` without a write.
//!
//! Transitions, each a single compare-and-swap on the byte:
//! ```text
//! SCHEDULED ──cancel──▶ CANCELLED                      (cancel answers 200)
//! SCHEDULED ──fire────▶ FIRING ──stored──▶ DELIVERED   (cancel answers 409 from FIRING on)
//! SCHEDULED ──carry───▶ MOVED                          (a copy at the log's head lives on)
//! ```
//! MOVED is final here: the message lives on in the copy that retention carried forward (see
//! `timer::carry`), whose own cell takes over.
//! So a 200 on cancel means dequeue-put's CAS will fail and the message is never stored for its
//! topic. Only one fire of a message can win the SCHEDULED → FIRING CAS, so a message with two
//! units (re-placed after a restart) is stored once. A cell becomes DELIVERED only once the
//! commit log is durable past its fired copy (the timer checkpoint settles it), so a crash or a
//! power cut between FIRING and DELIVERED is settled at start-up: a cell whose fired copy the
//! recovered log holds becomes DELIVERED, any other goes back to SCHEDULED and fires again (at
//! most a duplicate, never a loss).
//!
//! Durability: a cancel fsyncs its cell's page before it answers; the timer checkpoint fsyncs
//! every file.
//!
//! Reclamation: a file whose cells all lie below the system topic's first retained entry (the
//! records they describe were reclaimed, after every one of them was final) is deleted
//! ([`StateCells::reclaim_below`]). A cell of a deleted file reads as `MOVED` (final) and is
//! never created again. Start-up opens every file on disk, so one a crash left behind is
//! deleted by the next pass. Cells past the end of the system topic (a power cut took those records) are
//! cleared at start-up ([`StateCells::clear_from`]), so a new message at a reused offset never
//! inherits a state.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex, RwLock};

use crate::store::mmap::AtomicMap;

pub const SCHEDULED: u8 = 0;
pub const CANCELLED: u8 = 1;
pub const DELIVERED: u8 = 2;
pub const FIRING: u8 = 3;
pub const MOVED: u8 = 4;

/// A state no fire, roll or placement acts on any more.
pub fn is_final(s: u8) -> bool {
    matches!(s, CANCELLED | DELIVERED | MOVED)
}

/// Cells per file (1 MiB).
pub const CELLS_PER_FILE: u64 = 1 << 20;

/// Bytes a page holds: the unit `msync` writes.
const PAGE: u64 = 4096;

pub struct StateCells {
    dir: PathBuf,
    files: RwLock<Vec<Option<Arc<AtomicMap>>>>,
    per_file: u64,
    /// Files below this index were reclaimed: their cells read as `MOVED`.
    reclaimed_files: AtomicUsize,
    sync: GroupSync,
}

/// Group commit of the cells cancels wait for: a caller adds its page to the batch being
/// collected, and one caller at a time (the leader) msyncs a whole batch while the next one
/// collects, so concurrent cancels share their fsyncs.
#[derive(Default)]
struct GroupSync {
    state: Mutex<SyncState>,
    done: Condvar,
}

#[derive(Default)]
struct SyncState {
    /// The pages (file index, page index) of the batch being collected.
    pending: std::collections::BTreeSet<(usize, u64)>,
    /// The number of the batch being collected; batches below `synced` are durable.
    batch: u64,
    synced: u64,
    leading: bool,
    /// A failed msync: the kernel may have dropped the pages, so no later cancel is answered
    /// as durable either (until a restart).
    failed: Option<String>,
}

impl StateCells {
    /// Opens the cells under `dir`, `per_file` cells to a file (a power of two;
    /// [`CELLS_PER_FILE`] but in tests, and never changed for a directory).
    pub fn open(dir: &Path, per_file: u64) -> io::Result<Self> {
        debug_assert!(per_file.is_power_of_two());
        crate::store::fsio::create_dir_all(dir)?;
        crate::store::fsio::remove_stale_tmp(dir)?;
        let mut files: Vec<Option<Arc<AtomicMap>>> = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let name = entry?.file_name();
            let Some(name) = name.to_str() else { continue };
            let Ok(base) = name.parse::<u64>() else { continue };
            if name.len() != 20 || !base.is_multiple_of(per_file) {
                continue;
            }
            let idx = (base / per_file) as usize;
            if files.len() <= idx {
                files.resize(idx + 1, None);
            }
            let (m, _) = AtomicMap::open_or_create(&dir.join(name), per_file as usize)?;
            files[idx] = Some(Arc::new(m));
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            files: RwLock::new(files),
            per_file,
            reclaimed_files: AtomicUsize::new(0),
            sync: GroupSync::default(),
        })
    }

    /// Deletes every file whose cells all lie below `offset` (see the module doc); returns how
    /// many files and bytes went. The caller guarantees every cell below `offset` is final and
    /// never asked for again but as `MOVED`.
    pub fn reclaim_below(&self, offset: u64) -> io::Result<(u64, u64)> {
        let upto = (offset / self.per_file) as usize;
        if upto <= self.reclaimed_files.load(Ordering::Acquire) {
            return Ok((0, 0));
        }
        let gone: Vec<Arc<AtomicMap>> = {
            let mut files = self.files.write();
            self.reclaimed_files.store(upto, Ordering::Release);
            let n = upto.min(files.len());
            files[..n].iter_mut().filter_map(Option::take).collect()
        };
        let (mut n, mut bytes) = (0, 0);
        for m in &gone {
            std::fs::remove_file(m.path())?;
            n += 1;
            bytes += self.per_file;
        }
        if n > 0 {
            crate::store::fsio::sync_dir(&self.dir)?;
        }
        Ok((n, bytes))
    }

    /// Files of cells on disk.
    pub fn files(&self) -> u64 {
        self.files.read().iter().flatten().count() as u64
    }

    fn file(&self, idx: usize, create: bool) -> io::Result<Option<Arc<AtomicMap>>> {
        if let Some(Some(f)) = self.files.read().get(idx) {
            return Ok(Some(f.clone()));
        }
        if !create {
            return Ok(None);
        }
        let mut files = self.files.write();
        if idx < self.reclaimed_files.load(Ordering::Acquire) {
            return Ok(None);
        }
        if files.len() <= idx {
            files.resize(idx + 1, None);
        }
        if files[idx].is_none() {
            let path = self.dir.join(format!("{:020}", idx as u64 * self.per_file));
            // Durable when it returns (`fsio::create_allocated`).
            let (m, _) = AtomicMap::open_or_create(&path, self.per_file as usize)?;
            files[idx] = Some(Arc::new(m));
        }
        Ok(files[idx].clone())
    }

    /// Makes sure the cell of `offset` exists (called when a message is scheduled).
    pub fn ensure(&self, offset: u64) -> io::Result<()> {
        self.file((offset / self.per_file) as usize, true).map(|_| ())
    }

    /// Runs `f` on the cell of `offset`; a reclaimed cell is a fresh `MOVED` one (a write to it
    /// goes nowhere).
    fn with_cell<R>(&self, offset: u64, f: impl FnOnce(&AtomicU8) -> R) -> io::Result<R> {
        match self.file((offset / self.per_file) as usize, true)? {
            Some(file) => Ok(f(&file.bytes()[(offset % self.per_file) as usize])),
            None => Ok(f(&AtomicU8::new(MOVED))),
        }
    }

    pub fn get(&self, offset: u64) -> io::Result<u8> {
        self.with_cell(offset, |c| c.load(Ordering::Acquire))
    }

    /// CAS `from → to`; returns the value found (equal to `from` on success).
    pub fn transition(&self, offset: u64, from: u8, to: u8) -> io::Result<u8> {
        self.with_cell(offset, |c| match c.compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire) {
            Ok(v) | Err(v) => v,
        })
    }

    pub fn set(&self, offset: u64, v: u8) -> io::Result<()> {
        self.with_cell(offset, |c| c.store(v, Ordering::Release))
    }

    /// Makes the cell of `offset` durable before it returns (a cancel), sharing the msync
    /// with concurrent callers (group commit).
    pub fn flush_cell(&self, offset: u64) -> io::Result<()> {
        let idx = (offset / self.per_file) as usize;
        let page = (offset % self.per_file) / PAGE;
        let sync = &self.sync;
        let mut st = sync.state.lock();
        st.pending.insert((idx, page));
        let mine = st.batch;
        loop {
            if let Some(why) = &st.failed {
                return Err(io::Error::other(format!("a state-cell fsync failed earlier: {why}")));
            }
            if st.synced > mine {
                return Ok(());
            }
            if st.leading {
                sync.done.wait(&mut st);
                continue;
            }
            // Lead: take the batch being collected (it holds this page) and msync it.
            st.leading = true;
            let batch = std::mem::take(&mut st.pending);
            let number = st.batch;
            st.batch += 1;
            let result = parking_lot::MutexGuard::unlocked(&mut st, || self.flush_pages(&batch));
            st.leading = false;
            match result {
                Ok(()) => st.synced = number + 1,
                Err(e) => st.failed = Some(e.to_string()),
            }
            sync.done.notify_all();
        }
    }

    fn flush_pages(&self, pages: &std::collections::BTreeSet<(usize, u64)>) -> io::Result<()> {
        for &(idx, page) in pages {
            if let Some(f) = self.file(idx, false)? {
                let at = (page * PAGE) as usize;
                f.flush_range(at, (at + PAGE as usize).min(f.len()))?;
            }
        }
        Ok(())
    }

    /// Resets every cell at or after `offset` to SCHEDULED (zero) and makes that durable:
    /// start-up clearing the cells of messages past the end of the system topic, which a power
    /// cut took, before new messages reuse their offsets. Returns how many cells were not zero.
    pub fn clear_from(&self, offset: u64) -> io::Result<u64> {
        let files: Vec<(usize, Arc<AtomicMap>)> =
            self.files.read().iter().enumerate().filter_map(|(i, f)| Some((i, f.clone()?))).collect();
        let mut cleared = 0;
        for (idx, f) in files {
            let base = idx as u64 * self.per_file;
            if base + self.per_file <= offset {
                continue;
            }
            let from = offset.saturating_sub(base) as usize;
            let mut touched = false;
            for c in &f.bytes()[from..] {
                // Read first: writing zeros over zeros would dirty every page of the file.
                if c.load(Ordering::Acquire) != SCHEDULED && c.swap(SCHEDULED, Ordering::AcqRel) != SCHEDULED {
                    cleared += 1;
                    touched = true;
                }
            }
            if touched {
                f.flush_range(from, f.len())?;
            }
        }
        Ok(cleared)
    }

    /// Makes every cell durable (the timer checkpoint).
    pub fn flush(&self) -> io::Result<()> {
        let files: Vec<_> = self.files.read().iter().flatten().cloned().collect();
        for f in files {
            f.flush_range(0, f.len())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions_are_exclusive_and_persist() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateCells::open(dir.path(), CELLS_PER_FILE).unwrap();
        let far = 3 * CELLS_PER_FILE + 5;
        assert_eq!(s.get(far).unwrap(), SCHEDULED);
        // Cancel wins; the fire then finds CANCELLED.
        assert_eq!(s.transition(far, SCHEDULED, CANCELLED).unwrap(), SCHEDULED);
        assert_eq!(s.transition(far, SCHEDULED, FIRING).unwrap(), CANCELLED);
        // Fire wins; the cancel then finds FIRING.
        assert_eq!(s.transition(7, SCHEDULED, FIRING).unwrap(), SCHEDULED);
        assert_eq!(s.transition(7, SCHEDULED, CANCELLED).unwrap(), FIRING);
        s.set(7, DELIVERED).unwrap();
        s.flush().unwrap();
        drop(s);
        let s = StateCells::open(dir.path(), CELLS_PER_FILE).unwrap();
        assert_eq!(s.get(far).unwrap(), CANCELLED);
        assert_eq!(s.get(7).unwrap(), DELIVERED);
        assert_eq!(s.get(8).unwrap(), SCHEDULED);
    }

    #[test]
    fn files_wholly_below_the_floor_are_reclaimed_and_read_as_moved() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateCells::open(dir.path(), CELLS_PER_FILE).unwrap();
        for f in 0..3 {
            s.set(f * CELLS_PER_FILE + 1, CANCELLED).unwrap();
        }
        assert_eq!(s.files(), 3);
        // The floor inside the second file: only the first goes.
        assert_eq!(s.reclaim_below(CELLS_PER_FILE + 5).unwrap(), (1, CELLS_PER_FILE));
        assert_eq!(s.reclaim_below(CELLS_PER_FILE + 5).unwrap(), (0, 0), "nothing twice");
        assert_eq!(s.files(), 2);
        assert!(!dir.path().join(format!("{:020}", 0)).exists());
        assert_eq!(s.get(1).unwrap(), MOVED, "a reclaimed cell is final");
        assert_eq!(s.transition(1, SCHEDULED, FIRING).unwrap(), MOVED, "and never fires");
        s.ensure(2).unwrap();
        assert!(!dir.path().join(format!("{:020}", 0)).exists(), "never created again");
        assert_eq!(s.get(CELLS_PER_FILE + 1).unwrap(), CANCELLED, "above the floor: kept");
        s.flush().unwrap();
        drop(s);
        let s = StateCells::open(dir.path(), CELLS_PER_FILE).unwrap();
        assert_eq!(s.files(), 2);
        assert_eq!(s.get(2 * CELLS_PER_FILE + 1).unwrap(), CANCELLED);
    }

    #[test]
    fn clear_from_resets_cells_past_an_offset() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateCells::open(dir.path(), CELLS_PER_FILE).unwrap();
        for off in [3, 10, 11, CELLS_PER_FILE + 2] {
            s.set(off, CANCELLED).unwrap();
        }
        assert_eq!(s.clear_from(10).unwrap(), 3);
        assert_eq!(s.get(3).unwrap(), CANCELLED, "before the offset: kept");
        assert_eq!(s.get(10).unwrap(), SCHEDULED);
        assert_eq!(s.get(CELLS_PER_FILE + 2).unwrap(), SCHEDULED);
        assert_eq!(s.clear_from(10).unwrap(), 0);
    }

    #[test]
    fn concurrent_cell_flushes_all_return_and_leave_no_batch_behind() {
        // Whether batches are shared depends on timing; what must hold is that every caller
        // returns (no lost wake-up) and every batch taken was synced.
        let dir = tempfile::tempdir().unwrap();
        let s = Arc::new(StateCells::open(dir.path(), CELLS_PER_FILE).unwrap());
        let threads: Vec<_> = (0..8u64)
            .map(|t| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for i in 0..50 {
                        let off = t * 10_000 + i;
                        s.transition(off, SCHEDULED, CANCELLED).unwrap();
                        s.flush_cell(off).unwrap();
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        let st = s.sync.state.lock();
        assert!(st.pending.is_empty() && !st.leading && st.synced == st.batch, "every batch synced");
    }
}
