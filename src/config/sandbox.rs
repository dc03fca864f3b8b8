//! `[servers.sandbox]`: the hardened profile of a container server and the
//! relaxations its config may make, with what each gives away.
//!
//! The profile itself (what Docker is asked for) is built from a [`Sandbox`]
//! in `upstream::container`; this module only decides what is allowed.

use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::Deserialize;

use super::values::{PathText, SizeText};
use super::{ConfigError, Entry, parse_size};

/// The hardened defaults, every one of which a `[servers.sandbox]` may relax.
pub const DEFAULT_USER: &str = "65534:65534";
pub const DEFAULT_NETWORK: &str = "none";
pub const DEFAULT_MEMORY_BYTES: i64 = 512 * 1024 * 1024;
pub const DEFAULT_CPUS: f64 = 1.0;
pub const DEFAULT_PIDS: i64 = 256;
pub const DEFAULT_TMP_BYTES: i64 = 64 * 1024 * 1024;

/// The effective sandbox of one container server.
#[derive(Debug, Clone, PartialEq)]
pub struct Sandbox {
    /// `uid:gid` (or a user name the image defines).
    pub user: String,
    /// `none`, `bridge`, or a named Docker network.
    pub network: String,
    pub memory_bytes: i64,
    pub cpus: f64,
    pub pids: i64,
    pub tmp_bytes: i64,
    pub read_only_root: bool,
    pub mounts: Vec<BindMount>,
    pub tmpfs: Vec<TmpfsMount>,
    pub privileged: bool,
    pub host_pid: bool,
    pub host_ipc: bool,
    pub allow_dangerous: bool,
}

impl Default for Sandbox {
    fn default() -> Self {
        Self {
            user: DEFAULT_USER.into(),
            network: DEFAULT_NETWORK.into(),
            memory_bytes: DEFAULT_MEMORY_BYTES,
            cpus: DEFAULT_CPUS,
            pids: DEFAULT_PIDS,
            tmp_bytes: DEFAULT_TMP_BYTES,
            read_only_root: true,
            mounts: Vec::new(),
            tmpfs: Vec::new(),
            privileged: false,
            host_pid: false,
            host_ipc: false,
            allow_dangerous: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    pub source: PathBuf,
    pub target: String,
    pub writable: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TmpfsMount {
    pub target: String,
    pub size_bytes: i64,
}

impl Sandbox {
    /// Every way this sandbox differs from the hardened default, in words,
    /// for the startup log and the audit record.
    pub fn relaxations(&self) -> Vec<String> {
        let default = Self::default();
        let mut out = Vec::new();
        if self.user != default.user {
            out.push(format!("user `{}`", self.user));
        }
        if self.network != default.network {
            out.push(format!("network `{}`", self.network));
        }
        if self.memory_bytes != default.memory_bytes {
            out.push(format!("memory {} bytes", self.memory_bytes));
        }
        if self.cpus != default.cpus {
            out.push(format!("cpus {}", self.cpus));
        }
        if self.pids != default.pids {
            out.push(format!("pids {}", self.pids));
        }
        if self.tmp_bytes != default.tmp_bytes {
            out.push(format!("/tmp size {} bytes", self.tmp_bytes));
        }
        if !self.read_only_root {
            out.push("writable root filesystem".into());
        }
        for mount in &self.mounts {
            out.push(format!(
                "{} bind mount {} -> {}",
                if mount.writable {
                    "WRITABLE"
                } else {
                    "read-only"
                },
                mount.source.display(),
                mount.target
            ));
        }
        for tmpfs in &self.tmpfs {
            out.push(format!(
                "tmpfs {} ({} bytes)",
                tmpfs.target, tmpfs.size_bytes
            ));
        }
        if self.privileged {
            out.push("PRIVILEGED".into());
        }
        if self.host_pid {
            out.push("host PID namespace".into());
        }
        if self.host_ipc {
            out.push("host IPC namespace".into());
        }
        out
    }

    /// `hardened`, `relaxed(N)` or `DANGEROUS`, for listings.
    pub fn summary(&self) -> String {
        if !self.dangers().is_empty() {
            return "DANGEROUS".into();
        }
        match self.relaxations().len() {
            0 => "hardened".into(),
            n => format!("relaxed({n})"),
        }
    }

    /// The relaxations that give the container power over the host; each is
    /// refused unless `allow_dangerous = true`.
    pub fn dangers(&self) -> Vec<String> {
        let mut out = Vec::new();
        if is_root_user(&self.user) {
            out.push(format!("the root user (`user = \"{}\"`)", self.user));
        }
        if self.privileged {
            out.push("privileged mode".into());
        }
        if self.network == "host" {
            out.push("the host's network namespace (`network = \"host\"`)".into());
        }
        if self.network.starts_with("container:") {
            out.push(format!(
                "another container's network namespace (`network = \"{}\"`)",
                self.network
            ));
        }
        if self.host_pid {
            out.push("the host's PID namespace".into());
        }
        if self.host_ipc {
            out.push("the host's IPC namespace".into());
        }
        for mount in &self.mounts {
            if mount.writable {
                out.push(format!(
                    "a writable host mount ({} -> {})",
                    mount.source.display(),
                    mount.target
                ));
            } else if let Some(why) = mount_danger(&mount.source) {
                out.push(format!("a host mount of {why} -> {}", mount.target));
            }
        }
        out
    }
}

/// Whether `uid:gid` (numeric, as validated) names root or the root group.
/// Docker reads `00` and `+0` as 0 too, so the numbers are compared, not text.
fn is_root_user(user: &str) -> bool {
    user.split(':').any(|id| {
        id.trim_start_matches('+')
            .parse::<u64>()
            .map_or(true, |n| n == 0)
    })
}

/// Host paths whose contents (sockets, devices, credentials, other
/// processes) give a container power over the host, even read-only.
const SENSITIVE_PATHS: &[&str] = &[
    "/proc",
    "/sys",
    "/dev",
    "/run",
    "/var/run",
    "/etc",
    "/root",
    "/home",
    "/boot",
    "/var/lib/docker",
    "/var/lib/containerd",
    "/var/lib/kubelet",
];

/// Why a bind mount of `source` is dangerous, if it is: the host root, a
/// sensitive path, a folder holding one, or a socket or device.
fn mount_danger(source: &Path) -> Option<String> {
    use std::os::unix::fs::FileTypeExt as _;
    let resolved = std::fs::canonicalize(source).unwrap_or_else(|_| source.to_owned());
    if resolved == Path::new("/") {
        return Some("the host's root filesystem".into());
    }
    for sensitive in SENSITIVE_PATHS.iter().map(Path::new) {
        if resolved.starts_with(sensitive) || sensitive.starts_with(&resolved) {
            return Some(format!(
                "`{}`, which holds {}",
                resolved.display(),
                sensitive.display()
            ));
        }
    }
    let file_type = std::fs::metadata(&resolved).ok()?.file_type();
    if file_type.is_socket() || file_type.is_char_device() || file_type.is_block_device() {
        return Some(format!("`{}`, a socket or device", resolved.display()));
    }
    None
}

// ---------------------------------------------------------------------------
// As written.

/// `[servers.sandbox]`: relaxations of the hardened profile.
#[derive(Deserialize, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSandbox {
    /// The user the server runs as: a numeric `UID` or `UID:GID` (a name
    /// would be resolved inside the image, where the proxy cannot check that
    /// it is not root). Root (0, however spelled) is dangerous.
    #[schemars(extend("default" = DEFAULT_USER))]
    user: Option<String>,
    /// `none` (loopback only), `bridge`, or the name of a Docker network.
    /// `host` and `container:NAME` are dangerous.
    #[schemars(extend("default" = DEFAULT_NETWORK))]
    network: Option<String>,
    /// The memory cap, at least `6m`; swap is none beyond it.
    #[schemars(with = "Option<SizeText>", extend("default" = "512m"))]
    memory: Option<String>,
    /// CPUs, above 0 and at most 1024.
    #[schemars(extend("default" = DEFAULT_CPUS))]
    cpus: Option<f64>,
    /// Processes and threads at once, at least 1.
    #[schemars(extend("default" = DEFAULT_PIDS))]
    pids: Option<i64>,
    /// The size of the `/tmp` tmpfs (`rw,noexec,nosuid,nodev`).
    #[schemars(with = "Option<SizeText>", extend("default" = "64m"))]
    tmp_size: Option<String>,
    /// Whether the root filesystem is read-only.
    #[schemars(extend("default" = true))]
    read_only_root: Option<bool>,
    /// Bind mounts of host paths, read-only unless `writable`. A writable
    /// one, or one of the host's root, a socket, a device or a sensitive
    /// path (`/proc`, `/sys`, `/dev`, `/run`, `/etc`, `/home`, `/root`,
    /// `/var/lib/docker`, … or a folder holding one) is dangerous.
    #[serde(default)]
    mounts: Vec<RawMount>,
    /// Extra tmpfs mounts, `rw,noexec,nosuid,nodev` like `/tmp`.
    #[serde(default)]
    tmpfs: Vec<RawTmpfs>,
    /// Privileged mode: dangerous.
    #[serde(default)]
    privileged: bool,
    /// The host's PID namespace: dangerous.
    #[serde(default)]
    host_pid: bool,
    /// The host's IPC namespace: dangerous.
    #[serde(default)]
    host_ipc: bool,
    /// Allows the dangerous relaxations, which give the container power over
    /// the host and are refused without it; the server is then logged as
    /// `DANGEROUS` at every start.
    #[serde(default)]
    allow_dangerous: bool,
}

/// `[[servers.sandbox.mounts]]`: one bind mount.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawMount {
    /// The host path.
    #[schemars(with = "PathText")]
    source: PathBuf,
    /// Where it appears in the container: an absolute path.
    target: String,
    /// Whether the container may write to it (dangerous).
    #[serde(default)]
    writable: bool,
}

/// `[[servers.sandbox.tmpfs]]`: one extra tmpfs.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawTmpfs {
    /// Where it appears in the container: an absolute path other than `/tmp`
    /// (`tmp_size` sizes that one).
    target: String,
    /// Its size.
    #[schemars(with = "Option<SizeText>", extend("default" = "64m"))]
    size: Option<String>,
}

impl RawSandbox {
    /// The server's sandbox: the hardened default with these relaxations.
    /// `at` is the server's entry; the dangers are checked by the caller.
    pub(super) fn validate(self, at: &Entry<'_>) -> Result<Sandbox, ConfigError> {
        let mut sandbox = Sandbox::default();
        let fail = |name: &str, message: String| at.error(&format!(".sandbox.{name}"), message);
        if let Some(user) = self.user {
            // Numeric only: a name is resolved inside the image, where it could
            // be root under another name.
            let numeric = |id: &str| {
                !id.is_empty()
                    && id
                        .trim_start_matches('+')
                        .chars()
                        .all(|c| c.is_ascii_digit())
                    && id.trim_start_matches('+').len() <= 10
            };
            let mut ids = user.split(':');
            let valid = ids.next().is_some_and(numeric)
                && ids.next().is_none_or(numeric)
                && ids.next().is_none();
            if !valid {
                return Err(fail(
                    "user",
                    format!(
                        "`{user}` is not a numeric user like `1000` or `1000:1000` (names are resolved inside the image, where the proxy cannot check them)"
                    ),
                ));
            }
            sandbox.user = user;
        }
        if let Some(network) = self.network {
            if network.trim().is_empty() {
                return Err(fail("network", "the network name is empty".into()));
            }
            sandbox.network = network;
        }
        if let Some(memory) = self.memory {
            sandbox.memory_bytes = parse_size(&memory)
                .filter(|&bytes| bytes >= 6 * 1024 * 1024)
                .ok_or_else(|| {
                    fail(
                        "memory",
                        format!("`{memory}` is not a size of at least 6m, like `256m` or `1g`"),
                    )
                })?;
        }
        if let Some(cpus) = self.cpus {
            if !(cpus > 0.0 && cpus <= 1024.0) {
                return Err(fail("cpus", format!("{cpus} is not a CPU count above 0")));
            }
            sandbox.cpus = cpus;
        }
        if let Some(pids) = self.pids {
            if pids < 1 {
                return Err(fail("pids", "must be at least 1".into()));
            }
            sandbox.pids = pids;
        }
        if let Some(size) = self.tmp_size {
            sandbox.tmp_bytes = parse_size(&size)
                .filter(|&b| b > 0)
                .ok_or_else(|| fail("tmp_size", format!("`{size}` is not a size like `64m`")))?;
        }
        if let Some(read_only) = self.read_only_root {
            sandbox.read_only_root = read_only;
        }
        for (index, mount) in self.mounts.into_iter().enumerate() {
            if !mount.target.starts_with('/') {
                return Err(fail(
                    &format!("mounts[{index}].target"),
                    format!(
                        "`{}` is not an absolute path in the container",
                        mount.target
                    ),
                ));
            }
            sandbox.mounts.push(BindMount {
                source: at.validator.resolve(mount.source),
                target: mount.target,
                writable: mount.writable,
            });
        }
        for (index, tmpfs) in self.tmpfs.into_iter().enumerate() {
            if !tmpfs.target.starts_with('/') || tmpfs.target == "/tmp" {
                return Err(fail(
                    &format!("tmpfs[{index}].target"),
                    format!(
                        "`{}` must be an absolute path other than /tmp (set `tmp_size` for /tmp)",
                        tmpfs.target
                    ),
                ));
            }
            let size_bytes = match tmpfs.size {
                None => DEFAULT_TMP_BYTES,
                Some(size) => parse_size(&size).filter(|&b| b > 0).ok_or_else(|| {
                    fail(
                        &format!("tmpfs[{index}].size"),
                        format!("`{size}` is not a size like `64m`"),
                    )
                })?,
            };
            sandbox.tmpfs.push(TmpfsMount {
                target: tmpfs.target,
                size_bytes,
            });
        }
        sandbox.privileged = self.privileged;
        sandbox.host_pid = self.host_pid;
        sandbox.host_ipc = self.host_ipc;
        sandbox.allow_dangerous = self.allow_dangerous;
        Ok(sandbox)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_sandbox_has_no_relaxations_and_no_dangers() {
        let sandbox = Sandbox::default();
        assert!(sandbox.relaxations().is_empty());
        assert!(sandbox.dangers().is_empty());
    }

    #[test]
    fn root_privileged_host_namespaces_and_writable_mounts_are_dangerous() {
        for (sandbox, expected) in [
            (
                Sandbox {
                    user: "0:0".into(),
                    ..Sandbox::default()
                },
                "root",
            ),
            (
                Sandbox {
                    user: "root".into(),
                    ..Sandbox::default()
                },
                "root",
            ),
            (
                Sandbox {
                    privileged: true,
                    ..Sandbox::default()
                },
                "privileged",
            ),
            (
                Sandbox {
                    network: "host".into(),
                    ..Sandbox::default()
                },
                "network",
            ),
            (
                Sandbox {
                    host_pid: true,
                    ..Sandbox::default()
                },
                "PID",
            ),
            (
                Sandbox {
                    host_ipc: true,
                    ..Sandbox::default()
                },
                "IPC",
            ),
            (
                Sandbox {
                    mounts: vec![BindMount {
                        source: "/var".into(),
                        target: "/data".into(),
                        writable: true,
                    }],
                    ..Sandbox::default()
                },
                "writable host mount",
            ),
        ] {
            let dangers = sandbox.dangers().join("; ");
            assert!(dangers.contains(expected), "{dangers}");
        }
        for root in ["00", "+0", "0000:1000", "1000:0"] {
            let sandbox = Sandbox {
                user: root.into(),
                ..Sandbox::default()
            };
            assert!(!sandbox.dangers().is_empty(), "{root} is root");
        }
        for source in ["/", "/var", "/var/run/docker.sock", "/etc/ssl", "/home"] {
            let sandbox = Sandbox {
                mounts: vec![BindMount {
                    source: source.into(),
                    target: "/mnt".into(),
                    writable: false,
                }],
                ..Sandbox::default()
            };
            assert!(
                !sandbox.dangers().is_empty(),
                "a read-only mount of {source}"
            );
        }
        let relaxed = Sandbox {
            user: "1000:1000".into(),
            network: "bridge".into(),
            mounts: vec![BindMount {
                source: "/srv".into(),
                target: "/srv".into(),
                writable: false,
            }],
            ..Sandbox::default()
        };
        assert!(relaxed.dangers().is_empty());
        assert_eq!(relaxed.relaxations().len(), 3);
    }
}
