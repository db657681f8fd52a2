//! One state cell per scheduled message: what makes cancel O(1) and exact.
//!
//! On disk: `timer/state/{base:020}` files of `CELLS_PER_FILE` bytes; the cell of a scheduled
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
//! every file. Cells past the end of the system topic (a power cut took those records) are
//! cleared at start-up ([`StateCells::clear_from`]), so a new message at a reused offset never
//! inherits a state.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
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
    pub fn open(dir: &Path) -> io::Result<Self> {
        crate::store::fsio::create_dir_all(dir)?;
        crate::store::fsio::remove_stale_tmp(dir)?;
        let mut files: Vec<Option<Arc<AtomicMap>>> = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let name = entry?.file_name();
            let Some(name) = name.to_str() else { continue };
            let Ok(base) = name.parse::<u64>() else { continue };
            if name.len() != 20 || base % CELLS_PER_FILE != 0 {
                continue;
            }
            let idx = (base / CELLS_PER_FILE) as usize;
            if files.len() <= idx {
                files.resize(idx + 1, None);
            }
            let (m, _) = AtomicMap::open_or_create(&dir.join(name), CELLS_PER_FILE as usize)?;
            files[idx] = Some(Arc::new(m));
        }
        Ok(Self { dir: dir.to_path_buf(), files: RwLock::new(files), sync: GroupSync::default() })
    }

    fn file(&self, idx: usize, create: bool) -> io::Result<Option<Arc<AtomicMap>>> {
        if let Some(Some(f)) = self.files.read().get(idx) {
            return Ok(Some(f.clone()));
        }
        if !create {
            return Ok(None);
        }
        let mut files = self.files.write();
        if files.len() <= idx {
            files.resize(idx + 1, None);
        }
        if files[idx].is_none() {
            let path = self.dir.join(format!("{:020}", idx as u64 * CELLS_PER_FILE));
            // Durable when it returns (`fsio::create_allocated`).
            let (m, _) = AtomicMap::open_or_create(&path, CELLS_PER_FILE as usize)?;
            files[idx] = Some(Arc::new(m));
        }
        Ok(files[idx].clone())
    }

    /// Makes sure the cell of `offset` exists (called when a message is scheduled).
    pub fn ensure(&self, offset: u64) -> io::Result<()> {
        self.file((offset / CELLS_PER_FILE) as usize, true).map(|_| ())
    }

    fn with_cell<R>(&self, offset: u64, f: impl FnOnce(&AtomicU8) -> R) -> io::Result<R> {
        let file = self.file((offset / CELLS_PER_FILE) as usize, true)?.expect("created");
        Ok(f(&file.bytes()[(offset % CELLS_PER_FILE) as usize]))
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
        let idx = (offset / CELLS_PER_FILE) as usize;
        let page = (offset % CELLS_PER_FILE) / PAGE;
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
                f.flush_range(at, at + PAGE as usize)?;
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
            let base = idx as u64 * CELLS_PER_FILE;
            if base + CELLS_PER_FILE <= offset {
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
        let s = StateCells::open(dir.path()).unwrap();
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
        let s = StateCells::open(dir.path()).unwrap();
        assert_eq!(s.get(far).unwrap(), CANCELLED);
        assert_eq!(s.get(7).unwrap(), DELIVERED);
        assert_eq!(s.get(8).unwrap(), SCHEDULED);
    }

    #[test]
    fn clear_from_resets_cells_past_an_offset() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateCells::open(dir.path()).unwrap();
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
        let s = Arc::new(StateCells::open(dir.path()).unwrap());
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
