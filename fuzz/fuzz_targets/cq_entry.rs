//! libFuzzer target: `chime::fuzzing::cq_entry` (see fuzz/README.md).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| chime::fuzzing::cq_entry(data));
