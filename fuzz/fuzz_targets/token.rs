//! `portcullis::fuzzing::token`, driven by libFuzzer (see `src/fuzzing.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| portcullis::fuzzing::token(data));
