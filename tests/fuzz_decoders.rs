//! The stable-toolchain fallback of the fuzz targets in `fuzz/`: a seeded random-mutation loop
//! over valid encodings of every on-disk format (`chime::fuzzing::seeds`), feeding each mutant
//! to the target's entry point. A panic is a finding; the failing input is printed in hex.
//!
//! Bounded by time: `CHIME_FUZZ_MS` per target (default 400 ms); `CHIME_FUZZ_SEED` changes the
//! seed; `CHIME_FUZZ_WRITE_SEEDS=DIR` also writes the seeds as a libFuzzer corpus. libFuzzer
//! (coverage-guided) runs the same entry points: see `fuzz/README.md`.

use std::time::{Duration, Instant};

use chime::fuzzing::{seeds, TARGETS};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const INTERESTING: [u64; 8] = [0, 1, 0x7F, 0x80, 0xFF, 0xFFFF, 0xFFFF_FFFF, u64::MAX];

fn mutate(rng: &mut StdRng, input: &mut Vec<u8>, pool: &[Vec<u8>]) {
    for _ in 0..rng.random_range(1..=4) {
        let len = input.len();
        match rng.random_range(0..9) {
            0 if len > 0 => {
                let i = rng.random_range(0..len);
                input[i] ^= 1 << rng.random_range(0..8);
            }
            1 if len > 0 => {
                let i = rng.random_range(0..len);
                input[i] = INTERESTING[rng.random_range(0..INTERESTING.len())] as u8;
            }
            2 if len > 0 => {
                let i = rng.random_range(0..len);
                input[i] = rng.random();
            }
            3 => {
                let i = rng.random_range(0..=len);
                input.insert(i, rng.random());
            }
            4 if len > 0 => {
                input.remove(rng.random_range(0..len));
            }
            5 => input.truncate(rng.random_range(0..=len)),
            6 => {
                let n = rng.random_range(1..=64);
                input.extend((0..n).map(|_| rng.random::<u8>()));
            }
            7 if len >= 8 => {
                // An interesting little-endian integer at a random offset (lengths, counts).
                let width = [2usize, 4, 8][rng.random_range(0..3)].min(len);
                let at = rng.random_range(0..=len - width);
                let v = INTERESTING[rng.random_range(0..INTERESTING.len())].wrapping_add(rng.random_range(0..3));
                input[at..at + width].copy_from_slice(&v.to_le_bytes()[..width]);
            }
            8 if !pool.is_empty() => {
                // Splice: a piece of another input.
                let other = &pool[rng.random_range(0..pool.len())];
                if !other.is_empty() {
                    let a = rng.random_range(0..other.len());
                    let b = rng.random_range(a..=other.len());
                    let at = rng.random_range(0..=len);
                    input.splice(at..at, other[a..b].iter().copied());
                }
            }
            _ => {}
        }
    }
}

#[test]
fn every_decoder_survives_random_mutations_of_valid_encodings() {
    let budget = Duration::from_millis(std::env::var("CHIME_FUZZ_MS").ok().and_then(|s| s.parse().ok()).unwrap_or(400));
    let seed: u64 = std::env::var("CHIME_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0xF022_5EED);
    // CHIME_FUZZ_WRITE_SEEDS=fuzz/corpus writes the seeds as libFuzzer's starting corpus.
    let corpus = std::env::var_os("CHIME_FUZZ_WRITE_SEEDS").map(std::path::PathBuf::from);
    let mut total = 0u64;
    for &(name, target) in TARGETS {
        let seeds = seeds(name);
        assert!(!seeds.is_empty(), "target {name} has no seeds");
        if let Some(dir) = &corpus {
            let dir = dir.join(name);
            std::fs::create_dir_all(&dir).unwrap();
            for (i, s) in seeds.iter().enumerate() {
                std::fs::write(dir.join(format!("seed-{i}")), s).unwrap();
            }
        }
        let mut rng = StdRng::seed_from_u64(seed ^ name.len() as u64);
        // Recent mutants, mutated further (a crude stand-in for libFuzzer's corpus).
        let mut pool: Vec<Vec<u8>> = seeds.clone();
        let start = Instant::now();
        let mut cases = 0u64;
        for s in &seeds {
            target(s);
        }
        while start.elapsed() < budget {
            let mut input = pool[rng.random_range(0..pool.len())].clone();
            if rng.random_range(0..4) == 0 {
                input = seeds[rng.random_range(0..seeds.len())].clone();
            }
            mutate(&mut rng, &mut input, &pool);
            if let Err(e) = std::panic::catch_unwind(|| target(&input)) {
                let hex: String = input.iter().map(|b| format!("{b:02x}")).collect();
                panic!("fuzz target {name} panicked after {cases} cases on input {hex}: {e:?}");
            }
            cases += 1;
            if pool.len() < 256 {
                pool.push(input);
            } else {
                let i = rng.random_range(0..pool.len());
                pool[i] = input;
            }
        }
        eprintln!("fuzz {name}: {cases} cases in {:?}, no panic", start.elapsed());
        total += cases;
    }
    eprintln!("fuzz: {total} cases over {} targets (seed {seed})", TARGETS.len());
}
