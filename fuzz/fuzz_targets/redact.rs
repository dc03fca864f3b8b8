//! `portcullis::fuzzing::redact`, driven by libFuzzer (see `src/fuzzing.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| portcullis::fuzzing::redact(data));
