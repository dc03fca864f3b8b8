//! The proxy's files against another local user, through the real binary:
//! `data_dir` and everything in it are private (folders 0700, files 0600),
//! a data folder another user owns or may write to is refused at start, and
//! one an older proxy left readable is closed.
#![allow(
    clippy::indexing_slicing,
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used
)]

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use common::{TestProxy, mode_of};

/// Every path under `dir`, `dir` included.
fn everything_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = vec![dir.to_path_buf()];
    if dir.is_dir() && !dir.is_symlink() {
        for entry in std::fs::read_dir(dir).unwrap() {
            found.extend(everything_under(&entry.unwrap().path()));
        }
    }
    found
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_data_folder_and_everything_in_it_are_the_proxys_alone() {
    let proxy = TestProxy::new().with_raw_server("raw");
    let served = proxy.serve_http().await;
    let session = common::HttpSession::connect(&served.url).await;
    common::assert_mirrored(&session, 2).await;
    served.terminate().await;

    let data = proxy.dir().join(".portcullis");
    let paths = everything_under(&data);
    assert!(
        paths.iter().any(|p| p.ends_with("pins.json")),
        "the pins are there: {paths:?}"
    );
    assert!(paths.len() > 5, "the audit store is there: {paths:?}");
    for path in &paths {
        let (mode, _, _) = mode_of(path);
        let private = if path.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode, private, "{} is {mode:o}", path.display());
    }

    // Another local user can neither list the folder nor read what it holds.
    let (listed, stderr) = common::as_other_user(4242, &format!("ls {}", data.display()));
    assert!(!listed && stderr.contains("Permission denied"), "{stderr}");
    // Even with the folder opened, its files are closed.
    chmod(&data, 0o755);
    let pins = data.join("pins.json");
    let (read, stderr) = common::as_other_user(4242, &format!("cat {}", pins.display()));
    assert!(!read && stderr.contains("Permission denied"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_data_folder_others_may_write_or_another_user_owns_is_refused() {
    let proxy = TestProxy::new().with_raw_server("raw");
    let config = proxy.write_config();
    let data = proxy.dir().join(".portcullis");
    std::fs::create_dir(&data).unwrap();

    for loose in [0o777, 0o775, 0o1733] {
        chmod(&data, loose);
        let stderr = common::serve_refused(&config);
        assert!(stderr.contains("`proxy.data_dir`"), "{stderr}");
        assert!(
            stderr.contains("may be written by other users") && stderr.contains("chmod 700"),
            "{loose:o}: {stderr}"
        );
        assert_eq!(
            mode_of(&data).0,
            loose,
            "a refused folder is left as it was"
        );
        assert!(
            std::fs::read_dir(&data).unwrap().next().is_none(),
            "nothing was written into it"
        );
    }

    chmod(&data, 0o700);
    nix::unistd::chown(&data, Some(nix::unistd::Uid::from_raw(4242)), None).unwrap();
    let stderr = common::serve_refused(&config);
    assert!(stderr.contains("belongs to uid 4242"), "{stderr}");

    // The stdio proxy checks the same folder.
    let (ok, _, stderr) = common::run_portcullis([
        "stdio".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
        "--client".as_ref(),
        "tester".as_ref(),
    ]);
    assert!(!ok);
    assert!(stderr.contains("belongs to uid 4242"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_data_folder_left_readable_is_closed_at_start() {
    let proxy = TestProxy::new().with_raw_server("raw");
    // A first run leaves its store and pins.
    let served = proxy.serve_http().await;
    common::HttpSession::connect(&served.url).await;
    served.terminate().await;

    // An older proxy's modes: readable by everyone.
    let data = proxy.dir().join(".portcullis");
    for path in everything_under(&data) {
        chmod(&path, if path.is_dir() { 0o755 } else { 0o644 });
    }
    let served = proxy.serve_http().await;
    served.terminate().await;
    for path in everything_under(&data) {
        let private = if path.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode_of(&path).0, private, "{}", path.display());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_data_folder_reached_through_another_users_link_is_refused() {
    let proxy = TestProxy::new().with_raw_server("raw");
    let config = proxy.write_config();
    let real = proxy.dir().join("real-data");
    std::fs::create_dir(&real).unwrap();
    chmod(&real, 0o700);
    let link = proxy.dir().join(".portcullis");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    // The link belongs to another user, who could point it elsewhere.
    let status = std::process::Command::new("chown")
        .args(["-h", "4242"])
        .arg(&link)
        .status()
        .unwrap();
    assert!(status.success());
    let stderr = common::serve_refused(&config);
    assert!(
        stderr.contains("is a link that belongs to uid 4242"),
        "{stderr}"
    );
    // The proxy's own link is followed.
    let status = std::process::Command::new("chown")
        .args(["-h", "0"])
        .arg(&link)
        .status()
        .unwrap();
    assert!(status.success());
    let served = proxy.serve_http().await;
    served.terminate().await;
    assert!(real.join("audit").is_dir());
}
