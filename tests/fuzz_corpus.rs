//! Every input kept in `fuzz/corpus/<target>/` run through its target
//! (`portcullis::fuzzing`) on the stable toolchain: what a fuzzer once
//! found stays fixed, and the seeds stay meaningful. The fuzzers
//! themselves run with `scripts/fuzz.sh` (cargo-fuzz, nightly).
#![allow(
    clippy::indexing_slicing,
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used
)]

mod common;

#[test]
fn every_kept_input_passes_its_target() {
    let root = common::repo_root().join("fuzz/corpus");
    let mut ran = 0;
    for (name, target) in portcullis::fuzzing::TARGETS {
        let dir = root.join(name);
        let mut inputs: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|err| panic!("{}: {err}", dir.display()))
            .map(|entry| entry.unwrap().path())
            .collect();
        inputs.sort();
        assert!(!inputs.is_empty(), "no seed for the `{name}` target");
        for input in inputs {
            let data = std::fs::read(&input).unwrap();
            let outcome = std::panic::catch_unwind(|| target(&data));
            assert!(outcome.is_ok(), "{name}: {} breaks it", input.display());
            ran += 1;
        }
    }
    // Every target's directory, and nothing else, is there.
    let dirs: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for dir in &dirs {
        assert!(
            portcullis::fuzzing::TARGETS
                .iter()
                .any(|(name, _)| name == dir),
            "fuzz/corpus/{dir} is no target's"
        );
    }
    assert!(ran >= portcullis::fuzzing::TARGETS.len());
}
