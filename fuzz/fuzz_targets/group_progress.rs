//! libFuzzer target: `chime::fuzzing::group_progress` (see fuzz/README.md).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| chime::fuzzing::group_progress(data));
