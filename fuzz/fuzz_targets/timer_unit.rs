//! libFuzzer target: `chime::fuzzing::timer_unit` (see fuzz/README.md).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| chime::fuzzing::timer_unit(data));
