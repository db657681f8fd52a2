//! Replacing a small file so that a crash leaves the old or the new content, never a mix:
//! write a temporary file, fsync it, rename it over the target, fsync the directory.

use std::io::{self, Write};
use std::path::Path;

use super::segments::sync_dir;

pub fn replace(path: &Path, bytes: &[u8]) -> io::Result<()> {
    super::fault::inject(super::fault::REPLACE, path)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    sync_dir(dir)
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
