//! Little-endian integers in byte slices: the one place chime's formats turn integers into
//! bytes and back. Every format's encoder and decoder goes through these (records,
//! consume-queue entries, timer-log units, both checkpoints; group progress is JSON).
//!
//! - [`Put`] writes a fixed-size format field after field, [`Get`] reads it back in the same
//!   order, so a layout's offsets are written once, as the order of its fields;
//! - `push_*` append to a growing buffer (a record's header and sections);
//! - `get_*`/`put_*` read and write at an offset (a record's sealed fields, found by offset).
//!
//! Readers panic if the slice is too short: callers check lengths first (a format's decoder
//! validates the sizes it reads before it reads the fields). The fuzz entry points
//! (`fuzzing.rs`) read untrusted lengths with their own fallible reader.

pub fn get_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().expect("2 bytes"))
}

pub fn get_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

pub fn get_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

pub fn get_i64(b: &[u8], at: usize) -> i64 {
    get_u64(b, at) as i64
}

pub fn put_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

pub fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

pub fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

pub fn put_i64(b: &mut [u8], at: usize, v: i64) {
    put_u64(b, at, v as u64);
}

pub fn push_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_le_bytes());
}

pub fn push_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

pub fn push_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

pub fn push_i64(out: &mut Vec<u8>, v: i64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Writes fields one after another from the start of a fixed-size buffer.
pub struct Put<'a> {
    buf: &'a mut [u8],
    at: usize,
}

impl<'a> Put<'a> {
    pub fn new(buf: &'a mut [u8]) -> Self {
        Self { buf, at: 0 }
    }

    pub fn u32(&mut self, v: u32) -> &mut Self {
        put_u32(self.buf, self.at, v);
        self.at += 4;
        self
    }

    pub fn u64(&mut self, v: u64) -> &mut Self {
        put_u64(self.buf, self.at, v);
        self.at += 8;
        self
    }

    pub fn i64(&mut self, v: i64) -> &mut Self {
        self.u64(v as u64)
    }

    /// Appends the CRC32C of everything written so far.
    pub fn crc(&mut self) -> &mut Self {
        let crc = crc32c::crc32c(&self.buf[..self.at]);
        self.u32(crc)
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.at
    }

    pub fn is_empty(&self) -> bool {
        self.at == 0
    }
}

/// Reads fields one after another from the start of a buffer, in the order [`Put`] wrote them.
pub struct Get<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Get<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, at: 0 }
    }

    pub fn u32(&mut self) -> u32 {
        let v = get_u32(self.buf, self.at);
        self.at += 4;
        v
    }

    pub fn u64(&mut self) -> u64 {
        let v = get_u64(self.buf, self.at);
        self.at += 8;
        v
    }

    pub fn i64(&mut self) -> i64 {
        self.u64() as i64
    }

    /// Reads a CRC32C and says whether it matches everything read before it.
    pub fn crc_ok(&mut self) -> bool {
        let computed = crc32c::crc32c(&self.buf[..self.at]);
        self.u32() == computed
    }

    /// Bytes read so far.
    pub fn pos(&self) -> usize {
        self.at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_and_get_walk_the_same_layout() {
        let mut b = [0u8; 24];
        let n = Put::new(&mut b).u32(7).i64(-3).u64(u64::MAX).crc().len();
        assert_eq!(n, 24);
        assert_eq!(&b[0..4], &7u32.to_le_bytes());
        let mut g = Get::new(&b);
        assert_eq!((g.u32(), g.i64(), g.u64()), (7, -3, u64::MAX));
        assert!(g.crc_ok());
        assert_eq!(g.pos(), 24);
        b[5] ^= 1;
        let mut g = Get::new(&b);
        let _ = (g.u32(), g.i64(), g.u64());
        assert!(!g.crc_ok(), "a flipped byte fails the crc");
    }
}
