//! Lays out first, and together, the functions the proxy runs as it starts
//! and idles (`startup-order.txt`, written by `scripts/startup-order.sh`),
//! so that a proxy at rest holds a few MiB of its code in memory rather than
//! a fault-around window in two of the whole of it (BENCHMARKS.md, "Idle
//! memory"). Only the release `portcullis` binary for x86_64 Linux (GNU),
//! linked by the Rust toolchain's own `rust-lld`, which takes the file; a
//! build that names another linker, a static one (`+crt-static`, the
//! images'), or one with `PORTCULLIS_STARTUP_ORDER=off` is left as it is. Ordering changes where code sits, never what it does.

use std::env;
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=startup-order.txt");
    println!("cargo:rerun-if-env-changed=PORTCULLIS_STARTUP_ORDER");
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER");
    let var = |name: &str| env::var(name).unwrap_or_default();
    if var("PORTCULLIS_STARTUP_ORDER") == "off"
        || var("TARGET") != "x86_64-unknown-linux-gnu"
        || var("PROFILE") != "release"
        || !var("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER").is_empty()
    {
        return;
    }
    // Flags that pick another linker (GNU ld, gold, mold) or leave lld:
    // `--symbol-ordering-file` may be unknown to it.
    let flags = var("CARGO_ENCODED_RUSTFLAGS");
    if flags.split('\u{1f}').any(|flag| {
        flag.contains("linker-features=-lld")
            || flag.contains("fuse-ld")
            || flag.contains("link-self-contained=-linker")
            || flag.starts_with("linker=")
    }) {
        return;
    }
    // The static build of the images (`+crt-static`) is left as it is: its
    // link is not the one the file was measured with.
    if var("CARGO_CFG_TARGET_FEATURE")
        .split(',')
        .any(|feature| feature == "crt-static")
    {
        return;
    }
    let order = Path::new(&var("CARGO_MANIFEST_DIR")).join("startup-order.txt");
    if !order.is_file() {
        return;
    }
    // Two arguments rather than one `-Wl,…`: a comma in the path would
    // split it.
    println!("cargo:rustc-link-arg-bin=portcullis=-Xlinker");
    println!(
        "cargo:rustc-link-arg-bin=portcullis=--symbol-ordering-file={}",
        order.display()
    );
    // Names the build no longer has (the file older than the code) are
    // skipped without a word for each.
    println!("cargo:rustc-link-arg-bin=portcullis=-Xlinker");
    println!("cargo:rustc-link-arg-bin=portcullis=--no-warn-symbol-ordering");
}
