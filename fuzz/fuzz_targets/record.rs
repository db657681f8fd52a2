//! libFuzzer target: `chime::fuzzing::record` (see fuzz/README.md).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| chime::fuzzing::record(data));
