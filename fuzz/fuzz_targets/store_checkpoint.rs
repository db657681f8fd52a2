//! libFuzzer target: `chime::fuzzing::store_checkpoint` (see fuzz/README.md).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| chime::fuzzing::store_checkpoint(data));
