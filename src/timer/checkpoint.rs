//! The timer checkpoint: how far each side of the pipeline is done, durably.
//!
//! On disk: `timer/checkpoint`, 52 bytes little-endian, replaced atomically
//! (`store::atomic_file`):
//!
//! ```text
//!  0 magic u32 | 4 version u32
//!  8 enqueue_offset u64   every system-topic message below this is in the timer log or fired
//! 16 read_time i64        every slot before this has fired completely (outputs appended)
//! 24 timer_log_pos u64    the timer log is durable below this
//! 32 pending_floor u64    every state cell below this is final (CANCELLED, DELIVERED or MOVED)
//! 40 written_ms i64
//! 48 crc u32              CRC32C of [0, 48)
//! ```
//!
//! Written only after the commit log (holding fired messages), the timer log, the wheel's dirty
//! pages and the state cells have been flushed, so everything it claims is on disk.

use crate::codec::{Get, Put};
use std::io;
use std::path::Path;

const MAGIC: u32 = 0xC41E_71C4;
const VERSION: u32 = 1;
const LEN: usize = 52;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TimerCheckpoint {
    pub enqueue_offset: u64,
    pub read_time: i64,
    pub timer_log_pos: u64,
    pub pending_floor: u64,
    pub written_ms: i64,
}

impl TimerCheckpoint {
    pub fn encode(&self) -> [u8; LEN] {
        let mut b = [0u8; LEN];
        let n = Put::new(&mut b)
            .u32(MAGIC)
            .u32(VERSION)
            .u64(self.enqueue_offset)
            .i64(self.read_time)
            .u64(self.timer_log_pos)
            .u64(self.pending_floor)
            .i64(self.written_ms)
            .crc()
            .len();
        debug_assert_eq!(n, LEN);
        b
    }

    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() != LEN {
            return None;
        }
        let mut g = Get::new(b);
        if g.u32() != MAGIC || g.u32() != VERSION {
            return None;
        }
        let cp = Self {
            enqueue_offset: g.u64(),
            read_time: g.i64(),
            timer_log_pos: g.u64(),
            pending_floor: g.u64(),
            written_ms: g.i64(),
        };
        g.crc_ok().then_some(cp)
    }

    /// `Ok(None)` when there is none; an invalid file is reported as an error.
    pub fn load(path: &Path) -> io::Result<Option<Self>> {
        match std::fs::read(path) {
            Ok(b) => Self::decode(&b)
                .map(Some)
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("{} is corrupt", path.display()))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn store(&self, path: &Path) -> io::Result<()> {
        crate::store::atomic_file::replace(path, &self.encode())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_every_flip_detected() {
        let cp = TimerCheckpoint {
            enqueue_offset: 9,
            read_time: 1_000,
            timer_log_pos: 640,
            pending_floor: 3,
            written_ms: 5,
        };
        let b = cp.encode();
        assert_eq!(TimerCheckpoint::decode(&b), Some(cp));
        for i in 0..LEN {
            let mut c = b;
            c[i] ^= 4;
            assert_eq!(TimerCheckpoint::decode(&c), None, "flip at {i}");
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("checkpoint");
        assert_eq!(TimerCheckpoint::load(&p).unwrap(), None);
        cp.store(&p).unwrap();
        assert_eq!(TimerCheckpoint::load(&p).unwrap(), Some(cp));
        std::fs::write(&p, b"junk").unwrap();
        assert!(TimerCheckpoint::load(&p).is_err());
    }
}
