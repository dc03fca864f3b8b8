//! Real components from Debian's packages (Chromium, the OCI registry, …):
//! found on `PATH` or in the package's place, installed with `apt-get` when
//! missing. A test that needs one fails, never skips, when it cannot be had.

use std::path::PathBuf;

/// The first of `programs` found (a name on `PATH` or an absolute path),
/// after installing `package` if none is.
pub fn program(programs: &[&str], package: &str) -> PathBuf {
    // One install at a time in this process (dpkg takes one at a time).
    static INSTALLING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = INSTALLING
        .lock()
        .unwrap_or_else(|poison| poison.into_inner());
    let find = || {
        programs.iter().find_map(|name| {
            if name.starts_with('/') {
                return std::path::Path::new(name)
                    .is_file()
                    .then(|| PathBuf::from(name));
            }
            std::process::Command::new("sh")
                .args(["-c", &format!("command -v {name}")])
                .output()
                .ok()
                .filter(|out| out.status.success())
                .map(|out| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
        })
    };
    if let Some(found) = find() {
        return found;
    }
    eprintln!("{package} is missing: installing Debian's package");
    for args in [
        &["install", "-y", "--no-install-recommends", package][..],
        &["update"][..],
        &["install", "-y", "--no-install-recommends", package][..],
    ] {
        // Another process's apt-get (a parallel test binary) is waited for.
        let status = std::process::Command::new("apt-get")
            .args(["-o", "DPkg::Lock::Timeout=300"])
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status();
        if let Some(found) = find() {
            return found;
        }
        eprintln!("apt-get {args:?}: {status:?}");
    }
    panic!("this test needs {programs:?}: `apt-get install {package}` failed")
}
