//! A small seeded generator (SplitMix64) for the timer scenarios: fixed seeds, so every run
//! places the same messages in the same slots. No dependency, and each value can be computed
//! from its index alone, so concurrent senders need no shared state.

/// The seed every timer scenario uses unless told otherwise.
pub const SEED: u64 = 0x0C41_3E5E_ED00_0001;

/// SplitMix64 (Steele, Lea, Flood 2014): passes BigCrush, one add and three mixes per value.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }

    /// Uniform in `0..n` (n > 0); the modulo bias is below 2^-40 for the ranges used here.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// The `i`-th value of the stream seeded with `seed`, without generating the ones before it.
pub fn nth(seed: u64, i: u64) -> u64 {
    mix(seed.wrapping_add((i + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)))
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `k` distinct values of `0..n`, in the order drawn (rejection of repeats; fine for k ≪ n).
pub fn distinct(rng: &mut SplitMix64, k: usize, n: u64) -> Vec<u64> {
    assert!(k as u64 <= n, "cannot pick {k} distinct values below {n}");
    let mut seen = std::collections::HashSet::with_capacity(k);
    let mut out = Vec::with_capacity(k);
    while out.len() < k {
        let v = rng.below(n);
        if seen.insert(v) {
            out.push(v);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nth_matches_the_stream_and_is_fixed() {
        let mut r = SplitMix64::new(7);
        for i in 0..10 {
            assert_eq!(r.next_u64(), nth(7, i));
        }
        // The reference value of SplitMix64 seeded with 0.
        assert_eq!(SplitMix64::new(0).next_u64(), 0xE220_A839_7B1D_CDAF);
    }

    #[test]
    fn distinct_values() {
        let mut r = SplitMix64::new(SEED);
        let mut v = distinct(&mut r, 1000, 5000);
        v.sort_unstable();
        v.dedup();
        assert_eq!(v.len(), 1000);
        assert!(v.iter().all(|&x| x < 5000));
    }
}
