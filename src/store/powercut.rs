//! The power-cut simulation of the tests: a record, kept beside the data directory, of exactly
//! what chime has made durable, from which [`materialize`] builds the directory a machine would
//! find after losing power at that moment.
//!
//! A power cut keeps only what was fsync'd. The recorder models that per kind of sync, as a
//! journaling file system does:
//! - `msync` of a mapped range ([`before_sync`], [`synced_range`]): exactly those bytes of that
//!   file, as they were when the msync began;
//! - `fsync` of a file ([`synced_file`]): its whole content and its size;
//! - `fsync` of a directory ([`synced_dir`]): its list of entries (name → inode), so a created,
//!   renamed or removed file is durable only once its directory is synced.
//!
//! Everything else (writes through the map or `write` that no sync covered, sizes set by
//! `fallocate` or `set_len` alone, entries of a directory never synced) is lost by
//! [`materialize`]. A file whose entry is durable but whose content never was comes back empty.
//!
//! On disk, under the shadow directory:
//!
//! ```text
//! inodes/{ino}          the durable content of inode `ino` of the data directory's file system
//! dirs/d{escaped path}  the durable entries of a directory (path relative to the data
//!                       directory, '%' as '%25', '/' as '%2F'; the data directory is `d`):
//!                       lines "f {ino} {name}" (file) and "d 0 {name}" (directory)
//! ```
//!
//! The recorder is off unless the failpoint `store::powercut` is configured with the shadow
//! directory (`FAILPOINTS=store::powercut=return(/path)`, test builds only, see `store::fault`);
//! then [`install`] turns it on for one data directory: a new shadow starts from what is on disk
//! (all of it durable), an existing one (a restart after a process crash) carries on. Each hook costs one atomic load when it
//! is off. The shadow is written as syncs happen, so a `SIGKILL` of the process at any moment
//! is a power cut at that moment: the test kills the process and materializes the shadow.
//! A sync the kill interrupts may be half recorded, as a real fsync interrupted by a power
//! failure may be half done.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use parking_lot::Mutex;

/// The failpoint whose `return(PATH)` names the shadow directory.
pub const FAILPOINT: &str = "store::powercut";

struct Recorder {
    root: PathBuf,
    shadow: PathBuf,
    /// Serialises updates of the shadow.
    lock: Mutex<()>,
}

static RECORDER: OnceLock<Recorder> = OnceLock::new();

/// The shadow directory, if the failpoint names one.
fn configured() -> Option<PathBuf> {
    fail::fail_point!(FAILPOINT, |arg: Option<String>| arg.map(PathBuf::from));
    None
}

/// Turns the recorder on for `data_dir` if the failpoint is configured. Once per process.
pub fn install(data_dir: &Path) -> io::Result<()> {
    let Some(shadow) = configured() else { return Ok(()) };
    std::fs::create_dir_all(shadow.join("inodes"))?;
    std::fs::create_dir_all(shadow.join("dirs"))?;
    let root = data_dir.canonicalize()?;
    tracing::warn!(data_dir = %root.display(), shadow = %shadow.display(), "power-cut simulation: recording what is made durable");
    let r = Recorder { root, shadow, lock: Mutex::new(()) };
    // A new shadow: what is on disk survived the last cut, durable as it is. An existing one
    // (a process crash: the same directory, restarted) goes on: what the crashed process wrote
    // and did not fsync is still not durable, though the files show it.
    let fresh = std::fs::read_dir(r.shadow.join("dirs"))?.next().is_none();
    if fresh {
        r.seed(&r.root.clone())?;
    }
    let _ = RECORDER.set(r);
    Ok(())
}

/// The bytes `[from, to)` of the file at `path`, read just before an `msync` of that range:
/// what the msync is sure to make durable (a byte changed while it runs may or may not be).
pub struct Snapshot {
    path: PathBuf,
    ino: u64,
    from: u64,
    bytes: Vec<u8>,
}

/// Call before `msync` of `[from, to)`; `None` (one atomic load) unless the recorder is on.
pub fn before_sync(path: &Path, from: usize, to: usize) -> Option<Snapshot> {
    RECORDER.get()?;
    let read = || -> io::Result<Snapshot> {
        let live = File::open(path)?;
        let meta = live.metadata()?;
        let to = (to as u64).min(meta.len());
        let from = (from as u64).min(to);
        let mut bytes = vec![0u8; (to - from) as usize];
        live.read_exact_at(&mut bytes, from)?;
        Ok(Snapshot { path: path.to_path_buf(), ino: meta.ino(), from, bytes })
    };
    read()
        .map_err(|e| tracing::error!(path = %path.display(), error = %e, "power-cut simulation: cannot read a range"))
        .ok()
}

/// The `msync` the snapshot was taken for succeeded: exactly those bytes are durable (not the
/// rest of their pages, which a real msync also writes: chime must not count on that).
pub fn synced_range(snapshot: Option<Snapshot>) {
    let (Some(r), Some(snap)) = (RECORDER.get(), snapshot) else { return };
    let _g = r.lock.lock();
    if let Err(e) = r.inode(snap.ino).and_then(|f| f.write_all_at(&snap.bytes, snap.from)) {
        tracing::error!(path = %snap.path.display(), error = %e, "power-cut simulation: cannot record a sync");
    }
}

/// `fsync` of the file at `path` succeeded.
pub fn synced_file(path: &Path) {
    if let Some(r) = RECORDER.get() {
        r.record(path, |r, live, ino| r.copy_file(live, ino));
    }
}

/// `fsync` of the directory `dir` succeeded.
pub fn synced_dir(dir: &Path) {
    if let Some(r) = RECORDER.get() {
        let _g = r.lock.lock();
        if let Err(e) = r.copy_dir(dir) {
            tracing::error!(dir = %dir.display(), error = %e, "power-cut simulation: cannot record a directory");
        }
    }
}

impl Recorder {
    fn record(&self, path: &Path, f: impl FnOnce(&Self, &mut File, u64) -> io::Result<()>) {
        let _g = self.lock.lock();
        let done = File::open(path).and_then(|mut live| {
            let ino = live.metadata()?.ino();
            f(self, &mut live, ino)
        });
        if let Err(e) = done {
            tracing::error!(path = %path.display(), error = %e, "power-cut simulation: cannot record a sync");
        }
    }

    /// Records `dir` and everything below it as durable.
    fn seed(&self, dir: &Path) -> io::Result<()> {
        self.copy_dir(dir)?;
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            let meta = std::fs::symlink_metadata(&path)?;
            if meta.is_dir() {
                self.seed(&path)?;
            } else if meta.is_file() {
                let mut live = File::open(&path)?;
                self.copy_file(&mut live, meta.ino())?;
            }
        }
        Ok(())
    }

    fn inode(&self, ino: u64) -> io::Result<File> {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(self.shadow.join("inodes").join(ino.to_string()))
    }

    /// The whole file and its size. Runs of zeros stay holes in the shadow (a new segment is
    /// all zeros), so recording a created 1 GiB segment writes nothing.
    fn copy_file(&self, live: &mut File, ino: u64) -> io::Result<()> {
        const CHUNK: usize = 1 << 20;
        let len = live.metadata()?.len();
        let shadow = self.inode(ino)?;
        shadow.set_len(0)?;
        shadow.set_len(len)?;
        let mut buf = vec![0u8; CHUNK];
        let mut at = 0u64;
        while at < len {
            let n = (len - at).min(CHUNK as u64) as usize;
            live.read_exact_at(&mut buf[..n], at)?;
            if buf[..n].iter().any(|&b| b != 0) {
                shadow.write_all_at(&buf[..n], at)?;
            }
            at += n as u64;
        }
        Ok(())
    }

    fn copy_dir(&self, dir: &Path) -> io::Result<()> {
        let dir = dir.canonicalize()?;
        let Ok(rel) = dir.strip_prefix(&self.root) else { return Ok(()) };
        let mut lines = String::new();
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let meta = entry.metadata()?;
            if meta.is_dir() {
                lines.push_str(&format!("d 0 {name}\n"));
            } else if meta.is_file() {
                lines.push_str(&format!("f {} {name}\n", meta.ino()));
            }
        }
        let path = self.shadow.join("dirs").join(escape(rel));
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, lines)?;
        std::fs::rename(&tmp, &path)
    }
}

/// The manifest name of the directory `rel` (relative to the data directory): `d` and the
/// path with '%' as "%25" and '/' as "%2F" (the data directory itself: `d`).
fn escape(rel: &Path) -> String {
    format!("d{}", rel.to_string_lossy().replace('%', "%25").replace('/', "%2F"))
}

/// What [`materialize`] built.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Materialized {
    pub dirs: usize,
    pub files: usize,
    pub bytes: u64,
    /// Files whose entry was durable but whose content never was (created empty).
    pub empty_files: usize,
}

/// Builds in `out` (created) the data directory as a power cut would leave it, from the shadow
/// a recorder wrote. The data directory itself always exists; below it, exactly the durable
/// entries with their durable content.
pub fn materialize(shadow: &Path, out: &Path) -> io::Result<Materialized> {
    let mut m = Materialized::default();
    std::fs::create_dir_all(out)?;
    build_dir(shadow, Path::new(""), out, &mut m)?;
    Ok(m)
}

fn build_dir(shadow: &Path, rel: &Path, out: &Path, m: &mut Materialized) -> io::Result<()> {
    m.dirs += 1;
    let manifest = match std::fs::read_to_string(shadow.join("dirs").join(escape(rel))) {
        Ok(s) => s,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()), // never synced: empty
        Err(e) => return Err(e),
    };
    let mut entries = BTreeMap::new();
    for line in manifest.lines() {
        let mut parts = line.splitn(3, ' ');
        let (Some(kind), Some(ino), Some(name)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("bad manifest line {line:?}")));
        };
        let ino: u64 = ino.parse().map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad inode"))?;
        entries.insert(name.to_string(), (kind.to_string(), ino));
    }
    for (name, (kind, ino)) in entries {
        let target = out.join(&name);
        if kind == "d" {
            std::fs::create_dir_all(&target)?;
            build_dir(shadow, &rel.join(&name), &target, m)?;
        } else {
            m.files += 1;
            match std::fs::copy(shadow.join("inodes").join(ino.to_string()), &target) {
                Ok(n) => m.bytes += n,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    File::create(&target)?;
                    m.empty_files += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A recorder for `root` writing to `shadow`, without the global.
    fn recorder(root: &Path, shadow: &Path) -> Recorder {
        std::fs::create_dir_all(shadow.join("inodes")).unwrap();
        std::fs::create_dir_all(shadow.join("dirs")).unwrap();
        Recorder { root: root.canonicalize().unwrap(), shadow: shadow.to_path_buf(), lock: Mutex::new(()) }
    }

    #[test]
    fn only_synced_bytes_sizes_and_entries_survive() {
        let tmp = tempfile::tempdir().unwrap();
        let (root, shadow, out) = (tmp.path().join("data"), tmp.path().join("shadow"), tmp.path().join("out"));
        std::fs::create_dir_all(root.join("sub")).unwrap();
        let r = recorder(&root, &shadow);
        // a: content and entry synced; then more written, not synced.
        std::fs::write(root.join("a"), vec![1u8; 8192]).unwrap();
        r.record(&root.join("a"), |r, f, ino| r.copy_file(f, ino));
        // b: entry synced, content never.
        std::fs::write(root.join("b"), b"lost").unwrap();
        // sub/c: content synced, but its directory never: gone.
        std::fs::write(root.join("sub/c"), b"c").unwrap();
        r.record(&root.join("sub/c"), |r, f, ino| r.copy_file(f, ino));
        r.copy_dir(&root).unwrap();
        // After the directory sync: a renamed file and a page synced by range only.
        std::fs::write(root.join("a"), vec![2u8; 3 * 4096]).unwrap();
        let live = File::open(root.join("a")).unwrap();
        let mut page = vec![0u8; 4096];
        live.read_exact_at(&mut page, 4096).unwrap();
        r.inode(live.metadata().unwrap().ino()).unwrap().write_all_at(&page, 4096).unwrap();
        std::fs::write(root.join("late"), b"x").unwrap();

        let m = materialize(&shadow, &out).unwrap();
        let a = std::fs::read(out.join("a")).unwrap();
        assert_eq!(a.len(), 8192, "the size that was fsync'd");
        assert!(a[..4096].iter().all(|&b| b == 1), "the unsynced write of page 0 is lost");
        assert!(a[4096..].iter().all(|&b| b == 2), "page 1 was msync'd");
        assert_eq!(std::fs::read(out.join("b")).unwrap(), b"", "entry durable, content not");
        assert!(out.join("sub").is_dir());
        assert!(!out.join("sub/c").exists(), "its directory was never synced");
        assert!(!out.join("late").exists(), "created after the last directory sync");
        assert_eq!(m.empty_files, 1);
    }
}
