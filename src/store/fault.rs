//! Fault injection at the storage I/O seam: named failpoints (the `fail` crate) in front of the
//! calls that allocate, fsync and write files, so tests can make them fail as a sick disk would.
//!
//! The failpoints are compiled in only when the `fail` crate's `failpoints` feature is on, which
//! the dev-dependency in `Cargo.toml` does for test builds; in a normal build [`inject`] is an
//! empty function. A test turns one on with `fail::cfg(NAME, "return(ERRNO)")` or
//! `"return(ERRNO:FILTER)"`, where `ERRNO` is `ENOSPC`, `EIO`, `EDQUOT` or `EOPNOTSUPP` and `FILTER` restricts
//! the fault to paths containing that text (e.g. `commitlog`); `fail::remove(NAME)` ends it.
//!
//! | name                     | where                                            | models                        |
//! |--------------------------|--------------------------------------------------|-------------------------------|
//! | [`ALLOCATE`]             | creating and `fallocate`-ing a segment file      | a full disk (`ENOSPC`)        |
//! | [`FSYNC`]                | `msync` of a segment range (commit log, consume queues, timer log), of the timer wheel or of the state cells | a failed fsync (`EIO`) |
//! | [`WRITE`]                | appending a record to the commit log             | a write that fails half-way   |
//! | [`REPLACE`]              | writing a small file atomically (checkpoints, topics, groups) | a full disk or bad sector |
//! | [`FALLOCATE`]            | `fallocate` of a new file (`store::fsio`)        | a file system without it (`EOPNOTSUPP`) |

use std::io;
use std::path::Path;

/// Creating (allocating) a segment file: commit log, consume queue or timer log.
pub const ALLOCATE: &str = "store::allocate";
/// Fsyncing a range of a segment set: commit log, consume queue or timer log.
pub const FSYNC: &str = "store::fsync";
/// Appending one record to the commit log (after its segments were allocated).
pub const WRITE: &str = "store::write";
/// Replacing a small file (`atomic_file::replace`): checkpoints, `topics.json`, group progress.
pub const REPLACE: &str = "store::replace";
/// The `fallocate` call of a new file (`store::fsio::create_allocated`).
pub const FALLOCATE: &str = "store::fallocate";

/// `Err` if failpoint `name` is configured (and its filter, if any, is part of `path`).
pub fn inject(name: &str, path: &Path) -> io::Result<()> {
    let _ = (name, path); // unused when failpoints are compiled out
    fail::fail_point!(name, |arg: Option<String>| injected_error(name, path, arg.as_deref()));
    Ok(())
}

#[allow(dead_code)] // used only when failpoints are compiled in
fn injected_error(name: &str, path: &Path, arg: Option<&str>) -> io::Result<()> {
    let arg = arg.unwrap_or("EIO");
    let (errno, filter) = arg.split_once(':').unwrap_or((arg, ""));
    if !filter.is_empty() && !path.to_string_lossy().contains(filter) {
        return Ok(());
    }
    let code = match errno {
        "ENOSPC" => 28,
        "EDQUOT" => 122,
        "EOPNOTSUPP" => 95,
        _ => 5, // EIO
    };
    let e = io::Error::from_raw_os_error(code);
    Err(io::Error::new(e.kind(), format!("{e} (injected at {name} for {})", path.display())))
}

/// Whether an I/O error means the disk (or quota) is full.
pub fn is_disk_full(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(28 | 122))
        || e.kind() == io::ErrorKind::StorageFull
        || e.kind() == io::ErrorKind::QuotaExceeded
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn injected_errors_keep_their_kind_and_honour_the_filter() {
        let p = Path::new("/data/commitlog/00000000000000000000");
        let e = injected_error(ALLOCATE, p, Some("ENOSPC")).unwrap_err();
        assert!(is_disk_full(&e), "{e:?}");
        assert!(e.to_string().contains("injected"), "{e}");
        assert!(injected_error(ALLOCATE, p, Some("ENOSPC:timerlog")).is_ok());
        assert!(is_disk_full(&injected_error(ALLOCATE, p, Some("ENOSPC:commitlog")).unwrap_err()));
        let e = injected_error(FSYNC, p, None).unwrap_err();
        assert!(!is_disk_full(&e));
        assert_eq!(e.raw_os_error(), None, "wrapped, but the kind is kept");
        assert_eq!(e.kind(), io::Error::from_raw_os_error(5).kind());
    }
}
