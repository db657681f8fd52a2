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

use crate::codec::{Get, Put};
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
        let n = Put::new(&mut b)
            .u32(CHECKPOINT_MAGIC)
            .u32(VERSION)
            .u64(self.log_flushed)
            .u64(self.indexed)
            .i64(self.written_ms)
            .crc()
            .len();
        debug_assert_eq!(n, LEN);
        b
    }

    pub fn decode(b: &[u8]) -> Result<Self, CheckpointError> {
        if b.len() != LEN {
            return Err(CheckpointError::Length(b.len()));
        }
        let mut g = Get::new(b);
        if g.u32() != CHECKPOINT_MAGIC || g.u32() != VERSION {
            return Err(CheckpointError::Header);
        }
        let cp = Self { log_flushed: g.u64(), indexed: g.u64(), written_ms: g.i64() };
        if !g.crc_ok() {
            return Err(CheckpointError::Checksum);
        }
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
