//! What the process can see of its sandbox, for the `sandbox_probe` tool. Linux
//! only, read from /proc and /sys with std alone; anything unreadable is `None`
//! (null in the tool's result).

use std::{fs, io::ErrorKind, path::Path};

use schemars::JsonSchema;
use serde::Serialize;
use serde_json::Value;

#[derive(Debug, Serialize, JsonSchema)]
pub struct SandboxProbe {
    /// The host name (in a container: its short id), which tells which
    /// process answered.
    hostname: Option<String>,
    /// Effective user id (the `Uid:` line of /proc/self/status).
    uid: Option<u32>,
    /// Effective group id (the `Gid:` line of /proc/self/status).
    gid: Option<u32>,
    /// Effective capabilities, hex as in the `CapEff:` line of /proc/self/status.
    cap_eff: Option<String>,
    /// Whether the root filesystem is read-only.
    root_read_only: Option<bool>,
    /// Whether /tmp is mounted noexec.
    tmp_noexec: Option<bool>,
    /// Network interface names (from /proc/net/dev).
    network_interfaces: Option<Vec<String>>,
    /// pids.max of the process's cgroup (v2, else v1): a number, or "max".
    pids_max: Option<Value>,
    /// memory.max (v2) or memory.limit_in_bytes (v1): bytes, or "max".
    memory_max: Option<Value>,
    /// Whether the no_new_privs flag is set (the `NoNewPrivs:` line).
    no_new_privs: Option<bool>,
}

pub fn probe() -> SandboxProbe {
    let status = fs::read_to_string("/proc/self/status").ok();
    let field = |name: &str| {
        status
            .as_deref()
            .and_then(|status| status_field(status, name))
    };
    let mounts = fs::read_to_string("/proc/self/mounts").ok();
    let mount_option = |path: &str, option: &str| {
        let options = mount_options(mounts.as_deref()?, path)?;
        Some(options.split(',').any(|o| o == option))
    };
    SandboxProbe {
        hostname: fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|name| name.trim().to_owned()),
        uid: field("Uid").and_then(effective_id),
        gid: field("Gid").and_then(effective_id),
        cap_eff: field("CapEff").map(str::to_owned),
        root_read_only: root_read_only().or_else(|| mount_option("/", "ro")),
        tmp_noexec: mount_option("/tmp", "noexec"),
        network_interfaces: fs::read_to_string("/proc/net/dev")
            .ok()
            .map(|dev| interfaces(&dev)),
        // cgroup v2 first, then v1's per-controller hierarchies.
        pids_max: cgroup_limit("/sys/fs/cgroup/pids.max")
            .or_else(|| cgroup_limit("/sys/fs/cgroup/pids/pids.max")),
        memory_max: cgroup_limit("/sys/fs/cgroup/memory.max")
            .or_else(|| cgroup_limit("/sys/fs/cgroup/memory/memory.limit_in_bytes")),
        no_new_privs: field("NoNewPrivs").and_then(|flag| match flag {
            "0" => Some(false),
            "1" => Some(true),
            _ => None,
        }),
    }
}

/// The value of a `Name:\tvalue` line of /proc/self/status.
fn status_field<'a>(status: &'a str, name: &str) -> Option<&'a str> {
    status.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key == name).then_some(value.trim())
    })
}

/// `Uid:` and `Gid:` list the real, effective, saved and filesystem ids.
fn effective_id(ids: &str) -> Option<u32> {
    ids.split_whitespace().nth(1)?.parse().ok()
}

/// Tries to create a file in `/`: EROFS means read-only, success means writable.
/// Any other failure (e.g. not allowed to write there) decides nothing.
fn root_read_only() -> Option<bool> {
    let path = format!("/.sandbox-probe-{}", std::process::id());
    match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
    {
        Ok(_) => {
            if let Err(error) = fs::remove_file(&path) {
                tracing::warn!(%error, path, "cannot remove the probe file");
            }
            Some(false)
        }
        Err(error) if error.kind() == ErrorKind::ReadOnlyFilesystem => Some(true),
        Err(_) => None,
    }
}

/// The options of the mount that `path` is on, from /proc/self/mounts: the deepest
/// mount point containing it, the last one mounted if several.
fn mount_options<'a>(mounts: &'a str, path: &str) -> Option<&'a str> {
    let path = Path::new(path);
    let mut best: Option<(usize, &str)> = None;
    for line in mounts.lines() {
        let mut fields = line.split_whitespace();
        let (Some(_source), Some(mount_point), Some(_fs_type), Some(options)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if !path.starts_with(mount_point) {
            continue;
        }
        let depth = Path::new(mount_point).components().count();
        if best.is_none_or(|(best_depth, _)| depth >= best_depth) {
            best = Some((depth, options));
        }
    }
    best.map(|(_, options)| options)
}

/// Interface names from /proc/net/dev (two header lines, then `name: counters`).
fn interfaces(dev: &str) -> Vec<String> {
    dev.lines()
        .skip(2)
        .filter_map(|line| line.split_once(':'))
        .map(|(name, _)| name.trim().to_owned())
        .collect()
}

/// A cgroup v2 limit file: a number, or the string it holds (e.g. "max").
fn cgroup_limit(path: &str) -> Option<Value> {
    let raw = fs::read_to_string(path).ok()?;
    let raw = raw.trim();
    Some(
        raw.parse::<u64>()
            .map_or_else(|_| Value::from(raw), Value::from),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tprobe\n\
                          Uid:\t1000\t1001\t1002\t1003\n\
                          Gid:\t2000\t2001\t2002\t2003\n\
                          CapEff:\t0000000000000000\n\
                          NoNewPrivs:\t1\n";

    #[test]
    fn reads_status_fields() {
        assert_eq!(
            status_field(STATUS, "Uid").and_then(effective_id),
            Some(1001)
        );
        assert_eq!(
            status_field(STATUS, "Gid").and_then(effective_id),
            Some(2001)
        );
        assert_eq!(status_field(STATUS, "CapEff"), Some("0000000000000000"));
        assert_eq!(status_field(STATUS, "NoNewPrivs"), Some("1"));
        assert_eq!(status_field(STATUS, "Missing"), None);
    }

    #[test]
    fn finds_the_mount_of_a_path() {
        let mounts = "overlay / overlay ro,relatime 0 0\n\
                      tmpfs /tmpfoo tmpfs rw 0 0\n\
                      tmpfs /tmp tmpfs rw,exec 0 0\n\
                      tmpfs /tmp tmpfs rw,nosuid,noexec 0 0\n";
        assert_eq!(mount_options(mounts, "/tmp"), Some("rw,nosuid,noexec"));
        assert_eq!(mount_options(mounts, "/"), Some("ro,relatime"));
        assert_eq!(mount_options(mounts, "/var/tmp"), Some("ro,relatime"));
        assert_eq!(mount_options("", "/tmp"), None);
    }

    #[test]
    fn lists_interfaces() {
        let dev = "Inter-|   Receive\n face |bytes\n    lo: 1 2 3\n  eth0: 4 5 6\n";
        assert_eq!(interfaces(dev), ["lo", "eth0"]);
    }
}
