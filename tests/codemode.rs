//! Code mode's engine: the checked-in module is what its sources build.
#![allow(
    clippy::indexing_slicing,
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used
)]

mod common;

/// `codemode/build.sh` run with Debian's clang 14, lld and wasi-libc
/// (installed when missing) gives, byte for byte, the checked-in
/// `codemode/codemode.wasm` the proxy embeds (whose SHA-256
/// `src/codemode/engine.rs` names, checked by a unit test): the engine
/// changes only with its sources.
#[test]
fn the_engine_is_what_its_sources_build() {
    common::debian::program(&["patch"], "patch");
    common::debian::program(&["curl"], "curl");
    common::debian::program(&["clang-14"], "clang-14");
    common::debian::program(&["wasm-ld-14", "wasm-ld"], "lld");
    common::debian::program(&["/usr/lib/wasm32-wasi/libc.a"], "wasi-libc");
    common::debian::program(
        &["/usr/lib/llvm-14/lib/clang/14.0.6/lib/wasi/libclang_rt.builtins-wasm32.a"],
        "libclang-rt-dev-wasm32",
    );
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = tempfile::tempdir().unwrap();
    let built = out.path().join("codemode.wasm");
    let status = std::process::Command::new(root.join("codemode/build.sh"))
        .arg(&built)
        .status()
        .expect("codemode/build.sh runs");
    assert!(status.success(), "codemode/build.sh: {status}");
    let built = std::fs::read(&built).unwrap();
    let embedded = std::fs::read(root.join("codemode/codemode.wasm")).unwrap();
    assert!(
        built == embedded,
        "codemode/codemode.wasm is not what codemode/build.sh builds ({} bytes built, {} checked in): run `codemode/build.sh` and commit its output",
        built.len(),
        embedded.len()
    );
}
