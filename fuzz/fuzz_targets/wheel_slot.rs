//! libFuzzer target: `chime::fuzzing::wheel_slot` (see fuzz/README.md).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| chime::fuzzing::wheel_slot(data));
