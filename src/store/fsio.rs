//! Durable file-system operations: the one place chime creates, allocates, fsyncs and names
//! files and directories, so that a power cut at any moment leaves each file either absent or
//! complete.
//!
//! A power cut keeps only what was fsync'd: a file's bytes, its size and its directory entry
//! are separate things, each durable only once synced. Hence:
//! - **A new fixed-size file** (every segment, the wheel, the state cells) is made under a
//!   temporary name `{name}.tmp`, allocated in full, fsync'd, renamed to its name, and its
//!   directory fsync'd ([`create_allocated`]). After a cut there is either no file of that
//!   name or one of the full size; a leftover `.tmp` is removed when its directory is opened
//!   ([`remove_stale_tmp`]).
//! - **Allocation** uses `fallocate`, so a full disk is an error at creation rather than a
//!   `SIGBUS` on a mapped page. Where the file system does not support it (`EOPNOTSUPP`: FUSE
//!   and some network file systems), the file is allocated by writing zeros instead, which also
//!   reserves every block; the log says once which of the two the data directory uses.
//! - **A new directory** is created component by component, each followed by an fsync of its
//!   parent ([`create_dir_all`]).
//! - Every fsync goes through [`sync_file`], [`sync_dir`] or the mapped files' `flush_range`,
//!   which also tell `store::powercut` (the power-cut simulation of the tests) what became
//!   durable. Nothing else in chime calls `sync_all` or `fsync`.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};

use super::{fault, powercut};

/// The suffix of a file being created ([`create_allocated`]) or replaced (`atomic_file`).
pub const TMP_SUFFIX: &str = ".tmp";

/// `path` with [`TMP_SUFFIX`] appended to its file name.
pub fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(TMP_SUFFIX);
    path.with_file_name(name)
}

/// The directory holding `path` (`.` for a bare name).
pub fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Fsyncs `file` (data and metadata, its size included).
pub fn sync_file(file: &File, path: &Path) -> io::Result<()> {
    file.sync_all()?;
    powercut::synced_file(path);
    Ok(())
}

/// Makes a directory's entries (created, renamed or removed files) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()?;
    powercut::synced_dir(dir);
    Ok(())
}

/// Creates `dir` and its missing ancestors, fsyncing the parent of each one created, so the
/// new directories survive a power cut.
pub fn create_dir_all(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut missing = Vec::new();
    let mut at = dir;
    while !at.as_os_str().is_empty() && !at.exists() {
        missing.push(at);
        match at.parent() {
            Some(p) => at = p,
            None => break,
        }
    }
    for d in missing.into_iter().rev() {
        match std::fs::create_dir(d) {
            Ok(()) => sync_dir(parent(d))?,
            // Created meanwhile by another thread, which may not have fsynced the parent yet.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && d.is_dir() => sync_dir(parent(d))?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Removes leftovers of creations a crash interrupted (`*.tmp` files) from `dir`.
pub fn remove_stale_tmp(dir: &Path) -> io::Result<usize> {
    let mut removed = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_string_lossy().ends_with(TMP_SUFFIX) && entry.file_type()?.is_file() {
            tracing::info!(path = %entry.path().display(), "removing a file whose creation a crash interrupted");
            std::fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    if removed > 0 {
        sync_dir(dir)?;
    }
    Ok(removed)
}

/// Creates `path` (failing if it exists) with `len` zero bytes allocated on disk, durably:
/// after a power cut at any moment there is either no `path` or one of exactly `len` bytes.
/// Returns the open file.
pub fn create_allocated(path: &Path, len: u64) -> io::Result<File> {
    if path.exists() {
        return Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("{} exists", path.display())));
    }
    let tmp = tmp_path(path);
    let _ = std::fs::remove_file(&tmp); // a leftover of an interrupted creation
    let file = OpenOptions::new().read(true).write(true).create_new(true).open(&tmp)?;
    let made = allocate(&file, &tmp, len).and_then(|()| sync_file(&file, &tmp)).and_then(|()| {
        std::fs::rename(&tmp, path)?;
        sync_dir(parent(path))
    });
    if let Err(e) = made {
        // Leave no half-made file behind.
        drop(file);
        let _ = std::fs::remove_file(&tmp);
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(file)
}

/// How this process allocates files: unknown until the first allocation, then one of these.
static METHOD: AtomicU8 = AtomicU8::new(METHOD_UNKNOWN);
const METHOD_UNKNOWN: u8 = 0;
const METHOD_FALLOCATE: u8 = 1;
const METHOD_ZEROS: u8 = 2;

/// Whether `e` says the file system has no `fallocate`.
fn unsupported(e: &io::Error) -> bool {
    // EOPNOTSUPP (95), ENOSYS (38); ErrorKind::Unsupported covers both on Linux.
    matches!(e.raw_os_error(), Some(95 | 38)) || e.kind() == io::ErrorKind::Unsupported
}

fn allocate(file: &File, path: &Path, len: u64) -> io::Result<()> {
    if METHOD.load(Ordering::Relaxed) != METHOD_ZEROS {
        let tried = fault::inject(fault::FALLOCATE, path).and_then(|()| fs4::FileExt::allocate(file, len));
        match tried {
            Ok(()) => {
                if METHOD.swap(METHOD_FALLOCATE, Ordering::Relaxed) == METHOD_UNKNOWN {
                    tracing::info!("files are allocated with fallocate");
                }
                return Ok(());
            }
            Err(e) if unsupported(&e) => {
                if METHOD.swap(METHOD_ZEROS, Ordering::Relaxed) != METHOD_ZEROS {
                    tracing::warn!(error = %e, "the file system does not support fallocate; allocating files by writing zeros (slower to create, same guarantees)");
                }
            }
            Err(e) => return Err(e),
        }
    }
    write_zeros(file, len)
}

/// The portable allocation: write `len` zero bytes, so every block is reserved now (a full
/// disk fails here, not later on a mapped page).
fn write_zeros(mut file: &File, len: u64) -> io::Result<()> {
    const CHUNK: usize = 1 << 20;
    let zeros = vec![0u8; CHUNK];
    let mut left = len;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        file.write_all(&zeros[..n])?;
        left -= n as u64;
    }
    Ok(())
}

/// How files were allocated so far: `"fallocate"`, `"zeros"`, or `"none yet"`.
pub fn allocation_method() -> &'static str {
    match METHOD.load(Ordering::Relaxed) {
        METHOD_FALLOCATE => "fallocate",
        METHOD_ZEROS => "zeros",
        _ => "none yet",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_files_are_complete_and_never_clobbered() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a/b/seg");
        create_dir_all(parent(&p)).unwrap();
        let f = create_allocated(&p, 10_000).unwrap();
        assert_eq!(f.metadata().unwrap().len(), 10_000);
        assert!(!tmp_path(&p).exists());
        assert_eq!(create_allocated(&p, 10).unwrap_err().kind(), io::ErrorKind::AlreadyExists);
        // A leftover of an interrupted creation is removed when the directory is opened.
        std::fs::write(tmp_path(&dir.path().join("a/b/other")), b"half").unwrap();
        assert_eq!(remove_stale_tmp(parent(&p)).unwrap(), 1);
        assert_eq!(std::fs::read_dir(parent(&p)).unwrap().count(), 1);
    }

    #[test]
    fn zero_writing_allocates_the_whole_length() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("z");
        let f = File::create(&p).unwrap();
        write_zeros(&f, (1 << 20) * 2 + 5).unwrap();
        let m = f.metadata().unwrap();
        assert_eq!(m.len(), (1 << 20) * 2 + 5);
        use std::os::unix::fs::MetadataExt;
        assert!(m.blocks() * 512 >= m.len(), "blocks are reserved, not a sparse file");
    }
}
