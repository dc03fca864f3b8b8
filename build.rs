//! Lays out first, and together, the functions the proxy runs as it starts
//! and idles (`startup-order.txt`, written by `scripts/startup-order.sh`),
//! so that a proxy at rest holds a few MiB of its code in memory rather than
//! a fault-around window in two of the whole of it (BENCHMARKS.md, "Idle
//! memory").
//!
//! Only for the release `portcullis` binary on x86_64 Linux (GNU), and only
//! where the linker takes the file: a tiny program is linked first with the
//! same compiler, flags and linker and the two ordering options, and the
//! options are given to the real link only if that link succeeds (LLD takes
//! them, GNU ld and a distribution's toolchain without `rust-lld` do not).
//! A static build (`+crt-static`, the images') and a build with
//! `PORTCULLIS_STARTUP_ORDER=off` are left as they are. Ordering changes
//! where code sits, never what it does.

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Separates the flags of `CARGO_ENCODED_RUSTFLAGS`.
const FLAG_SEPARATOR: char = '\u{1f}';

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=startup-order.txt");
    for name in [
        "PORTCULLIS_STARTUP_ORDER",
        "RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS",
        "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER",
    ] {
        println!("cargo:rerun-if-env-changed={name}");
    }
    let var = |name: &str| env::var(name).unwrap_or_default();
    if var("PORTCULLIS_STARTUP_ORDER") == "off"
        || var("TARGET") != "x86_64-unknown-linux-gnu"
        || var("PROFILE") != "release"
        || var("CARGO_CFG_TARGET_FEATURE")
            .split(',')
            .any(|feature| feature == "crt-static")
    {
        return;
    }
    // A path that is not UTF-8 cannot be handed on as one argument.
    let Some(dir) = env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from) else {
        return;
    };
    let order = dir.join("startup-order.txt");
    let (Some(order_text), true) = (order.to_str(), order.is_file()) else {
        return;
    };
    // Two arguments each rather than one `-Wl,…`: a comma in the path
    // would split it. Names the build no longer has (the file older than
    // the code) are skipped without a word for each.
    let args = [
        "-Xlinker".to_owned(),
        format!("--symbol-ordering-file={order_text}"),
        "-Xlinker".to_owned(),
        "--no-warn-symbol-ordering".to_owned(),
    ];
    if !linker_takes(&args) {
        println!(
            "cargo:warning=the linker does not take a symbol-ordering file: the release binary is linked without startup-order.txt (more memory at rest, nothing else)"
        );
        return;
    }
    for arg in &args {
        println!("cargo:rustc-link-arg-bin=portcullis={arg}");
    }
}

/// Whether a program linked as the proxy will be (the same compiler, target,
/// flags and linker) links with `args` too.
fn linker_takes(args: &[String]) -> bool {
    let (Some(rustc), Some(out)) = (env::var_os("RUSTC"), env::var_os("OUT_DIR")) else {
        return false;
    };
    let out = Path::new(&out);
    let source = out.join("order-probe.rs");
    if std::fs::write(&source, "fn main() {}\n").is_err() {
        return false;
    }
    let mut probe = Command::new(rustc);
    probe
        .arg("--target")
        .arg(env::var("TARGET").unwrap_or_default())
        .arg("--crate-type=bin")
        .arg("--edition=2024")
        .arg("-o")
        .arg(out.join("order-probe"));
    if let Ok(flags) = env::var("CARGO_ENCODED_RUSTFLAGS") {
        probe.args(flags.split(FLAG_SEPARATOR).filter(|flag| !flag.is_empty()));
    }
    // A linker named in `.cargo/config.toml` (`[target.…] linker`).
    if let Some(linker) = env::var_os("RUSTC_LINKER") {
        let mut flag = std::ffi::OsString::from("-Clinker=");
        flag.push(linker);
        probe.arg(flag);
    }
    for arg in args {
        probe.arg(format!("-Clink-arg={arg}"));
    }
    probe
        .arg(&source)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}
