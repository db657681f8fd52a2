//! The store checkpoint: how far the commit log and the consume queues are known durable.
//!
//! On disk: `checkpoint`, 36 bytes, little-endian, replaced atomically (written to
//! `checkpoint.tmp`, fsync'd, renamed over `checkpoint`, directory fsync'd), so a crash leaves
//! either the old or the new checkpoint, never a mix:
//!
//! ```text
//! offset size field
//!  0     4    magic        u32  CHECKPOINT_MAGIC
//!  4     4    version      u32  1
//!  8     8    log_flushed  u64  commit log durable below this offset
//! 16     8    indexed      u64  consume-queue entries of every record below this are durable
//! 24     8    written_ms   i64  wall-clock time of the write (for logs)
//! 32     4    crc          u32  CRC32C of bytes [0, 32)
//! ```
//!
//! Invariant: `indexed <= log_flushed`, and both are record boundaries. Recovery replays the
//! commit log from `indexed`. A missing or invalid checkpoint is not fatal: recovery then scans
//! the whole log (slower, same result).

use std::io;
use std::path::Path;

const CHECKPOINT_MAGIC: u32 = 0xC41E_C4E0;
const VERSION: u32 = 1;
const LEN: usize = 36;
const FILE: &str = "checkpoint";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Checkpoint {
    pub log_flushed: u64,
    pub indexed: u64,
    pub written_ms: i64,
}

/// Why a checkpoint file was not used.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint is {0} bytes, expected {LEN}")]
    Length(usize),
    #[error("checkpoint has bad magic or version")]
    Header,
    #[error("checkpoint checksum mismatch")]
    Checksum,
    #[error("checkpoint is inconsistent: indexed {indexed} > log_flushed {log_flushed}")]
    Inconsistent { indexed: u64, log_flushed: u64 },
    #[error("cannot read checkpoint")]
    Io(#[from] io::Error),
}

impl Checkpoint {
    pub fn encode(&self) -> [u8; LEN] {
        let mut b = [0u8; LEN];
        b[0..4].copy_from_slice(&CHECKPOINT_MAGIC.to_le_bytes());
        b[4..8].copy_from_slice(&VERSION.to_le_bytes());
        b[8..16].copy_from_slice(&self.log_flushed.to_le_bytes());
        b[16..24].copy_from_slice(&self.indexed.to_le_bytes());
        b[24..32].copy_from_slice(&self.written_ms.to_le_bytes());
        let crc = crc32c::crc32c(&b[0..32]);
        b[32..36].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<Self, CheckpointError> {
        if b.len() != LEN {
            return Err(CheckpointError::Length(b.len()));
        }
        let u32_at = |i: usize| crate::codec::get_u32(b, i);
        let u64_at = |i: usize| crate::codec::get_u64(b, i);
        if u32_at(0) != CHECKPOINT_MAGIC || u32_at(4) != VERSION {
            return Err(CheckpointError::Header);
        }
        if u32_at(32) != crc32c::crc32c(&b[0..32]) {
            return Err(CheckpointError::Checksum);
        }
        let cp = Self { log_flushed: u64_at(8), indexed: u64_at(16), written_ms: u64_at(24) as i64 };
        if cp.indexed > cp.log_flushed {
            return Err(CheckpointError::Inconsistent { indexed: cp.indexed, log_flushed: cp.log_flushed });
        }
        Ok(cp)
    }

    /// Reads the checkpoint in `dir`: `Ok(None)` if there is none yet.
    pub fn load(dir: &Path) -> Result<Option<Self>, CheckpointError> {
        match std::fs::read(dir.join(FILE)) {
            Ok(b) => Self::decode(&b).map(Some),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Replaces the checkpoint in `dir` atomically and durably.
    pub fn store(&self, dir: &Path) -> io::Result<()> {
        super::atomic_file::replace(&dir.join(FILE), &self.encode())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Checkpoint::load(dir.path()).unwrap().is_none());
        let cp = Checkpoint { log_flushed: 4096, indexed: 1024, written_ms: 7 };
        cp.store(dir.path()).unwrap();
        assert_eq!(Checkpoint::load(dir.path()).unwrap(), Some(cp));
        let mut b = cp.encode();
        for i in 0..LEN {
            b[i] ^= 0x10;
            assert!(Checkpoint::decode(&b).is_err(), "flip at {i} accepted");
            b[i] ^= 0x10;
        }
        assert!(Checkpoint::decode(&b[..20]).is_err());
        let bad = Checkpoint { log_flushed: 1, indexed: 2, written_ms: 0 };
        assert!(matches!(Checkpoint::decode(&bad.encode()), Err(CheckpointError::Inconsistent { .. })));
    }
}
