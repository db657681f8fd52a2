//! Replacing a small file so that a crash leaves the old or the new content, never a mix:
//! write a temporary file, fsync it, rename it over the target, fsync the directory.

use std::io::{self, Write};
use std::path::Path;

use super::fsio;

pub fn replace(path: &Path, bytes: &[u8]) -> io::Result<()> {
    super::fault::inject(super::fault::REPLACE, path)?;
    let tmp = fsio::tmp_path(path);
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    fsio::sync_file(&f, &tmp)?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    fsio::sync_dir(fsio::parent(path))
}

#[cfg(test)]
mod tests {
    #[test]
    fn replaces_content() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.json");
        super::replace(&p, b"one").unwrap();
        super::replace(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert!(!dir.path().join("f.json.tmp").exists());
    }
}
