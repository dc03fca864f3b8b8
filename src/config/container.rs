//! `container` servers and their `[servers.sandbox]`: what the config says,
//! validated into a [`ContainerSpec`] whose [`Sandbox`] holds the hardened
//! default profile with the server's relaxations applied.
//!
//! The profile itself (what Docker is asked for) is built from a `Sandbox`
//! in `upstream::container`; this module only decides what is allowed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::parse_duration;

/// The hardened defaults, every one of which a `[servers.sandbox]` may relax.
pub const DEFAULT_USER: &str = "65534:65534";
pub const DEFAULT_NETWORK: &str = "none";
pub const DEFAULT_MEMORY_BYTES: i64 = 512 * 1024 * 1024;
pub const DEFAULT_CPUS: f64 = 1.0;
pub const DEFAULT_PIDS: i64 = 256;
pub const DEFAULT_TMP_BYTES: i64 = 64 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq)]
pub struct ContainerSpec {
    pub image: String,
    /// `sha256:…`: the image's id or one of its repo digests must match.
    pub digest: Option<String>,
    /// Replaces the image's entrypoint when set.
    pub entrypoint: Option<Vec<String>>,
    /// Arguments (the image's `CMD`).
    pub args: Vec<String>,
    /// Plain environment; secrets go in the server's `secrets`.
    pub env: BTreeMap<String, String>,
    pub pull: PullPolicy,
    pub start: StartPolicy,
    /// Stop the container after this long without a call (lazy servers).
    pub idle_timeout: Option<Duration>,
    pub isolation: Isolation,
    pub sandbox: Sandbox,
    /// Stdio through FIFOs instead of the engine's attach stream.
    pub fifos: Option<Fifos>,
}

/// Where a `stdio = "fifo"` server's FIFOs and launcher come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fifos {
    /// The static `portcullis-bridge` on the host.
    pub bridge: PathBuf,
    /// A folder of the proxy's own, holding one private folder per container.
    pub run_dir: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    /// Never pull: a missing image is an error that says how to build it.
    Never,
    /// Pull when the engine does not have the image.
    Missing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartPolicy {
    /// At its first use: the first client session's `initialize` starts it
    /// and reads its lists.
    Lazy,
    /// With the proxy.
    Eager,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// One container for every client.
    Shared,
    /// One container per client identity: tenants never share a process.
    PerClient,
}

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
            out.push(format!("runs as root (`user = \"{}\"`)", self.user));
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawContainer {
    image: String,
    digest: Option<String>,
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    pull: Option<String>,
    start: Option<String>,
    idle_timeout: Option<String>,
    isolation: Option<String>,
    stdio: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSandbox {
    user: Option<String>,
    network: Option<String>,
    memory: Option<String>,
    cpus: Option<f64>,
    pids: Option<i64>,
    tmp_size: Option<String>,
    read_only_root: Option<bool>,
    #[serde(default)]
    mounts: Vec<RawMount>,
    #[serde(default)]
    tmpfs: Vec<RawTmpfs>,
    #[serde(default)]
    privileged: bool,
    #[serde(default)]
    host_pid: bool,
    #[serde(default)]
    host_ipc: bool,
    #[serde(default)]
    allow_dangerous: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMount {
    source: PathBuf,
    target: String,
    #[serde(default)]
    writable: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTmpfs {
    target: String,
    size: Option<String>,
}

/// Validates a container server. Errors are (key below the server, message).
pub(super) fn container_spec(
    server: &str,
    raw: RawContainer,
    sandbox: Option<RawSandbox>,
    base: &Path,
    proxy: &super::ProxyConfig,
) -> Result<ContainerSpec, (String, String)> {
    let fail = |key: &str, message: String| Err((key.to_owned(), message));
    if raw.image.trim().is_empty() {
        return fail(".container.image", "the image is empty".into());
    }
    if let Some(digest) = &raw.digest {
        let hex = digest.strip_prefix("sha256:").unwrap_or_default();
        if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return fail(
                ".container.digest",
                format!(
                    "`{digest}` is not an image digest like `sha256:` followed by 64 hex digits"
                ),
            );
        }
    }
    if let Some(entrypoint) = &raw.entrypoint
        && entrypoint.is_empty()
    {
        return fail(
            ".container.entrypoint",
            "must name a program; leave it out to use the image's".into(),
        );
    }
    check_env(&raw.env).map_err(|(key, message)| (format!(".container.env.{key}"), message))?;
    check_args(&raw.args)
        .map_err(|(index, message)| (format!(".container.args[{index}]"), message))?;
    if let Some(entrypoint) = &raw.entrypoint {
        check_args(entrypoint)
            .map_err(|(index, message)| (format!(".container.entrypoint[{index}]"), message))?;
    }
    let pull = match raw.pull.as_deref() {
        None | Some("never") => PullPolicy::Never,
        Some("missing") => PullPolicy::Missing,
        Some(other) => {
            return fail(
                ".container.pull",
                format!("`{other}` is not `never` or `missing`"),
            );
        }
    };
    let start = match raw.start.as_deref() {
        None | Some("lazy") => StartPolicy::Lazy,
        Some("eager") => StartPolicy::Eager,
        Some(other) => {
            return fail(
                ".container.start",
                format!("`{other}` is not `lazy` or `eager`"),
            );
        }
    };
    let isolation = match raw.isolation.as_deref() {
        None | Some("shared") => Isolation::Shared,
        Some("per-client") => Isolation::PerClient,
        Some(other) => {
            return fail(
                ".container.isolation",
                format!("`{other}` is not `shared` or `per-client`"),
            );
        }
    };
    let idle_timeout = match raw.idle_timeout {
        None => None,
        Some(text) => {
            Some(parse_duration(&text).map_err(|m| (".container.idle_timeout".into(), m))?)
        }
    };
    // FIFOs whenever a bridge is configured, unless the server says otherwise.
    let stdio = raw.stdio.as_deref().unwrap_or(if proxy.bridge.is_some() {
        "fifo"
    } else {
        "attach"
    });
    let fifos = match stdio {
        "attach" => None,
        "fifo" => match &proxy.bridge {
            Some(bridge) => Some(Fifos {
                bridge: bridge.clone(),
                run_dir: proxy.data_dir.join("run"),
            }),
            None => {
                return fail(
                    ".container.stdio",
                    format!(
                        "server `{server}`: `stdio = \"fifo\"` needs `[proxy] bridge`, the path of a static `portcullis-bridge` (scripts/build-test-image.sh builds one at target/static/portcullis-bridge)"
                    ),
                );
            }
        },
        other => {
            return fail(
                ".container.stdio",
                format!("`{other}` is not `attach` or `fifo`"),
            );
        }
    };
    let sandbox = self::sandbox(sandbox.unwrap_or_default(), base)?;
    let dangers = sandbox.dangers();
    if !dangers.is_empty() && !sandbox.allow_dangerous {
        return fail(
            ".sandbox",
            format!(
                "server `{server}` asks for {}; refused, since it gives the container power over the host. Set `allow_dangerous = true` in `[servers.sandbox]` if you really mean it",
                dangers.join(", ")
            ),
        );
    }
    Ok(ContainerSpec {
        image: raw.image,
        digest: raw.digest.map(|d| d.to_ascii_lowercase()),
        entrypoint: raw.entrypoint,
        args: raw.args,
        env: raw.env,
        pull,
        start,
        idle_timeout,
        isolation,
        sandbox,
        fifos,
    })
}

fn sandbox(raw: RawSandbox, base: &Path) -> Result<Sandbox, (String, String)> {
    let mut sandbox = Sandbox::default();
    let key = |name: &str| format!(".sandbox.{name}");
    if let Some(user) = raw.user {
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
            return Err((
                key("user"),
                format!(
                    "`{user}` is not a numeric user like `1000` or `1000:1000` (names are resolved inside the image, where the proxy cannot check them)"
                ),
            ));
        }
        sandbox.user = user;
    }
    if let Some(network) = raw.network {
        if network.trim().is_empty() {
            return Err((key("network"), "the network name is empty".into()));
        }
        sandbox.network = network;
    }
    if let Some(memory) = raw.memory {
        sandbox.memory_bytes = parse_size(&memory)
            .filter(|&bytes| bytes >= 6 * 1024 * 1024)
            .ok_or_else(|| {
                (
                    key("memory"),
                    format!("`{memory}` is not a size of at least 6m, like `256m` or `1g`"),
                )
            })?;
    }
    if let Some(cpus) = raw.cpus {
        if !(cpus > 0.0 && cpus <= 1024.0) {
            return Err((key("cpus"), format!("{cpus} is not a CPU count above 0")));
        }
        sandbox.cpus = cpus;
    }
    if let Some(pids) = raw.pids {
        if pids < 1 {
            return Err((key("pids"), "must be at least 1".into()));
        }
        sandbox.pids = pids;
    }
    if let Some(size) = raw.tmp_size {
        sandbox.tmp_bytes = parse_size(&size).filter(|&b| b > 0).ok_or_else(|| {
            (
                key("tmp_size"),
                format!("`{size}` is not a size like `64m`"),
            )
        })?;
    }
    if let Some(read_only) = raw.read_only_root {
        sandbox.read_only_root = read_only;
    }
    for (index, mount) in raw.mounts.into_iter().enumerate() {
        if !mount.target.starts_with('/') {
            return Err((
                format!(".sandbox.mounts[{index}].target"),
                format!(
                    "`{}` is not an absolute path in the container",
                    mount.target
                ),
            ));
        }
        let source = if mount.source.is_absolute() {
            mount.source
        } else {
            base.join(mount.source)
        };
        sandbox.mounts.push(BindMount {
            source,
            target: mount.target,
            writable: mount.writable,
        });
    }
    for (index, tmpfs) in raw.tmpfs.into_iter().enumerate() {
        if !tmpfs.target.starts_with('/') || tmpfs.target == "/tmp" {
            return Err((
                format!(".sandbox.tmpfs[{index}].target"),
                format!(
                    "`{}` must be an absolute path other than /tmp (set `tmp_size` for /tmp)",
                    tmpfs.target
                ),
            ));
        }
        let size_bytes = match tmpfs.size {
            None => DEFAULT_TMP_BYTES,
            Some(size) => parse_size(&size).filter(|&b| b > 0).ok_or_else(|| {
                (
                    format!(".sandbox.tmpfs[{index}].size"),
                    format!("`{size}` is not a size like `64m`"),
                )
            })?,
        };
        sandbox.tmpfs.push(TmpfsMount {
            target: tmpfs.target,
            size_bytes,
        });
    }
    sandbox.privileged = raw.privileged;
    sandbox.host_pid = raw.host_pid;
    sandbox.host_ipc = raw.host_ipc;
    sandbox.allow_dangerous = raw.allow_dangerous;
    Ok(sandbox)
}

/// `"512m"`, `"1g"`, `"64k"`, `"1048576"` (bytes); binary units.
pub fn parse_size(text: &str) -> Option<i64> {
    let text = text.trim().to_ascii_lowercase();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: i64 = number.parse().ok()?;
    let factor: i64 = match unit.trim_end_matches(['b', 'i']) {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        _ => return None,
    };
    number.checked_mul(factor)
}

/// Words in an environment variable's name that say it holds a secret.
const SECRET_NAME_HINTS: &[&str] = &[
    "SECRET",
    "TOKEN",
    "PASSWORD",
    "PASSWD",
    "API_KEY",
    "APIKEY",
    "PRIVATE_KEY",
    "CREDENTIAL",
    "ACCESS_KEY",
    "SECRET_KEY",
    "SIGNING_KEY",
    "BEARER",
];

/// Prefixes of well-known credential formats.
const SECRET_VALUE_PREFIXES: &[&str] = &[
    "ghp_",
    "gho_",
    "ghs_",
    "ghu_",
    "github_pat_",
    "glpat-",
    "xoxb-",
    "xoxp-",
    "sk-",
    "sk_live_",
    "rk_live_",
    "AKIA",
    "ASIA",
    "AIza",
    "-----BEGIN",
];

/// Whether a value is shaped like a well-known credential, or is a URL with
/// a password in it.
fn shaped_like_secret(value: &str) -> bool {
    let known = SECRET_VALUE_PREFIXES
        .iter()
        .any(|prefix| value.contains(prefix) && value.len() >= prefix.len() + 8);
    let url_password = value
        .split_once("://")
        .and_then(|(_, rest)| rest.split(['/', '?', '#']).next())
        .and_then(|authority| authority.rsplit_once('@'))
        .is_some_and(|(userinfo, _)| userinfo.contains(':'));
    known || url_password
}

/// Refuses command-line arguments that look like literal secrets: a command
/// line is visible to every process on the host. Errors are (index, message).
pub(super) fn check_args(args: &[String]) -> Result<(), (usize, String)> {
    match args.iter().position(|arg| shaped_like_secret(arg)) {
        Some(index) => Err((
            index,
            "looks like a literal secret on a command line, where every process on the host can read it; pass it in the server's `secrets` (as environment) instead".into(),
        )),
        None => Ok(()),
    }
}

/// Refuses `env` entries that look like literal secrets: secrets belong in
/// `secrets` (file or environment references), never in the config.
/// Errors are (variable, message); the message never repeats the value.
pub(super) fn check_env(env: &BTreeMap<String, String>) -> Result<(), (String, String)> {
    for (name, value) in env {
        let upper = name.to_ascii_uppercase();
        let named_like_secret = SECRET_NAME_HINTS.iter().any(|hint| upper.contains(hint));
        if (named_like_secret && !value.is_empty()) || shaped_like_secret(value) {
            return Err((
                name.clone(),
                format!(
                    "`{name}` looks like a literal secret; put a reference in the server's `secrets` instead, e.g. `secrets = {{ {name} = \"file:./secrets/{}\" }}` or `\"env:{name}\"`",
                    name.to_ascii_lowercase()
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("512m"), Some(512 << 20));
        assert_eq!(parse_size("1g"), Some(1 << 30));
        assert_eq!(parse_size("64KiB"), Some(64 << 10));
        assert_eq!(parse_size("100"), Some(100));
        assert_eq!(parse_size("lots"), None);
        assert_eq!(parse_size("99999999999g"), None);
    }

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

    #[test]
    fn literal_secrets_in_env_are_refused_without_echoing_them() {
        for (name, value) in [
            ("GITHUB_TOKEN", "abc"),
            ("db_password", "hunter2"),
            ("OPENAI", "sk-0123456789abcdef"),
            ("X", "ghp_0123456789abcdefghij"),
        ] {
            let env = BTreeMap::from([(name.to_owned(), value.to_owned())]);
            let Err((key, message)) = check_env(&env) else {
                panic!("{name} should be refused");
            };
            assert_eq!(key, name);
            assert!(message.contains("secrets"), "{message}");
            assert!(!message.contains(value), "{message}");
        }
        assert!(check_args(&["--token".into(), "ghp_0123456789abcdefghij".into()]).is_err());
        assert!(check_args(&["--db".into(), "postgres://app:pw@db/app".into()]).is_err());
        assert!(check_args(&["--url".into(), "https://example.com/a@b".into()]).is_ok());
        let fine = BTreeMap::from([
            ("LOG_LEVEL".to_owned(), "debug".to_owned()),
            ("TOKEN_CACHE".to_owned(), String::new()),
            ("SKETCH".to_owned(), "sk-short".to_owned()),
        ]);
        assert_eq!(check_env(&fine), Ok(()));
    }
}
