//! Little-endian integers in byte slices. Every format's decoder reads through these (records,
//! consume-queue entries, timer-log units, both checkpoints) and the record's sealing writes
//! through them; the other encoders still write with `to_le_bytes` directly, and
//! `fuzzing.rs` has its own fallible readers.
//!
//! Readers panic if the slice is too short: callers check lengths first (a format's decoder
//! validates the sizes it reads before it reads the fields).

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_at_an_offset_little_endian() {
        let mut b = [0u8; 24];
        put_u16(&mut b, 1, 0x0102);
        put_u32(&mut b, 3, 0x0304_0506);
        put_u64(&mut b, 7, 0x0708_090A_0B0C_0D0E);
        put_i64(&mut b, 15, -2);
        assert_eq!(b[1..3], [0x02, 0x01]);
        assert_eq!(
            (get_u16(&b, 1), get_u32(&b, 3), get_u64(&b, 7), get_i64(&b, 15)),
            (0x0102, 0x0304_0506, 0x0708_090A_0B0C_0D0E, -2)
        );
    }
}
