//! `container` upstreams: an MCP server image run through the Docker Engine
//! API (bollard; `DOCKER_HOST` honoured) under the hardened profile, speaking
//! MCP over the container's attached stdin and stdout.
//!
//! Order matters when starting: the container is created, attached, and only
//! then started, so that not one byte of its output is missed. From creation
//! on, a container never outlives the link that owns it: every failure path
//! removes it, and so does closing the link. Containers left behind by a proxy
//! that was killed are found by their labels at the next start and removed.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bollard::Docker;
use bollard::container::{AttachContainerResults, LogOutput};
use bollard::errors::Error as DockerError;
use bollard::models::{
    ContainerCreateBody, ContainerSummary, HostConfig, HostConfigLogConfig, ImageInspect, Mount,
    MountType, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    AttachContainerOptions, CreateContainerOptions, CreateImageOptions, ListContainersOptions,
    RemoveContainerOptions,
};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use serde_json::Value;
use tokio::io::AsyncWrite;
use tokio_util::sync::CancellationToken;

use super::UpstreamError;
use super::link::{Connected, Inbox, Link, read_messages, write_message};
use crate::config::{ContainerSpec, Fifos, LimitsConfig, PullPolicy};

/// Every container Portcullis starts carries these labels.
pub const LABEL_MANAGED: &str = "dev.portcullis.managed";
pub const LABEL_SERVER: &str = "dev.portcullis.server";
/// `HOST/PIDNS/PID/STARTTIME` of the proxy process that owns the container.
pub const LABEL_OWNER: &str = "dev.portcullis.owner";
/// How many times the server had been restarted when this container started.
pub const LABEL_RESTARTS: &str = "dev.portcullis.restarts";
/// The client a per-client container serves alone.
pub const LABEL_CLIENT: &str = "dev.portcullis.client";

/// How long engine calls that should be quick (inspect, remove) may take.
const ENGINE_TIMEOUT: Duration = Duration::from_secs(30);

static ENGINE: tokio::sync::OnceCell<Docker> = tokio::sync::OnceCell::const_new();

/// Where the engine is, for messages: `DOCKER_HOST` or the default socket.
pub fn engine_address() -> String {
    std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into())
}

/// The Docker engine, connected once with the API version negotiated (so an
/// older engine is spoken to in its own version).
pub async fn engine() -> Result<&'static Docker, String> {
    ENGINE
        .get_or_try_init(|| async {
            let unreachable = |err: String| {
                format!(
                    "the Docker engine at `{}` is not reachable: {err}",
                    engine_address()
                )
            };
            let docker = Docker::connect_with_defaults().map_err(|e| unreachable(e.to_string()))?;
            match tokio::time::timeout(Duration::from_secs(10), docker.negotiate_version()).await {
                Ok(Ok(docker)) => Ok(docker),
                Ok(Err(err)) => Err(unreachable(err.to_string())),
                Err(_) => Err(unreachable("no answer within 10s".into())),
            }
        })
        .await
}

/// This proxy process, as written in [`LABEL_OWNER`]: the host name, the PID
/// namespace, the pid and the process's start time (so a recycled pid is not
/// taken for us).
pub fn owner() -> String {
    let pid = std::process::id();
    format!(
        "{}/{}/{pid}/{}",
        hostname(),
        pid_namespace(),
        start_time(pid).unwrap_or_default()
    )
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}

/// The inode of our PID namespace: pids mean something only within one.
fn pid_namespace() -> String {
    std::fs::read_link("/proc/self/ns/pid")
        .ok()
        .and_then(|link| {
            let link = link.to_string_lossy();
            link.strip_prefix("pid:[")?
                .strip_suffix(']')
                .map(str::to_owned)
        })
        .unwrap_or_default()
}

/// Field 22 of `/proc/PID/stat`: when the process started, in clock ticks.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses; the fields
    // after its closing parenthesis are plain.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// This process as a file name: `PIDNS-PID-STARTTIME`.
fn owner_key() -> String {
    let pid = std::process::id();
    format!(
        "{}-{pid}-{}",
        pid_namespace(),
        start_time(pid).unwrap_or_default()
    )
}

/// Removes the FIFO folders under `run_dir` that proxies which no longer run
/// (in this PID namespace) left behind. Returns how many.
pub fn remove_orphaned_fifos(run_dir: &std::path::Path) -> usize {
    let Ok(entries) = std::fs::read_dir(run_dir) else {
        return 0;
    };
    let host = hostname();
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((owner, _)) = name.split_once('.') else {
            continue;
        };
        let owner = owner.replace('-', "/");
        if owner_is_gone(&format!("{host}/{owner}"))
            && std::fs::remove_dir_all(entry.path()).is_ok()
        {
            removed += 1;
        }
    }
    removed
}

/// Whether the proxy that wrote `owner` is gone. Only owners on this host
/// and in this PID namespace are judged: a proxy elsewhere (another machine
/// sharing the engine over `DOCKER_HOST`, or one in a container) may well be
/// alive. A pid we may not look at counts as alive.
fn owner_is_gone(owner: &str) -> bool {
    let parts: Vec<&str> = owner.split('/').collect();
    let [host, namespace, pid, started] = parts[..] else {
        return false;
    };
    if host != hostname() || namespace != pid_namespace() {
        return false;
    }
    let Ok(pid) = pid.parse::<u32>() else {
        return false;
    };
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => true,
        Err(_) => false,
        Ok(_) => start_time(pid).is_some_and(|now| now.to_string() != started),
    }
}

/// Every container (running or not) with the label `label` (`KEY=VALUE`).
pub async fn labelled(docker: &Docker, label: &str) -> Result<Vec<ContainerSummary>, String> {
    let filters = HashMap::from([("label".to_owned(), vec![label.to_owned()])]);
    docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        }))
        .await
        .map_err(|err| format!("cannot list containers: {}", describe(&err)))
}

/// Removes the containers that proxies on this host left behind when they
/// died without cleaning up. Returns how many were removed.
pub async fn remove_orphans() -> Result<usize, String> {
    let docker = engine().await?;
    let containers = labelled(docker, &format!("{LABEL_MANAGED}=true")).await?;
    let mut removed = 0;
    for container in containers {
        let Some(id) = container.id else { continue };
        let labels = container.labels.unwrap_or_default();
        let orphan = labels
            .get(LABEL_OWNER)
            .is_some_and(|owner| owner_is_gone(owner));
        if !orphan {
            continue;
        }
        let server = labels.get(LABEL_SERVER).cloned().unwrap_or_default();
        match remove(docker, &id).await {
            Ok(()) => {
                removed += 1;
                tracing::warn!(
                    server,
                    container = short(&id),
                    "removed a container left by a proxy that did not shut down"
                );
            }
            Err(err) => {
                tracing::warn!(
                    server,
                    container = short(&id),
                    error = err,
                    "cannot remove an orphaned container"
                )
            }
        }
    }
    Ok(removed)
}

/// Removes every container this proxy process still owns: the last step of
/// a shutdown, for a container whose creation was under way when its
/// supervisor stopped. Returns how many were removed.
pub async fn remove_owned() -> Result<usize, String> {
    let docker = engine().await?;
    let containers = labelled(docker, &format!("{LABEL_OWNER}={}", owner())).await?;
    let mut removed = 0;
    for id in containers.into_iter().filter_map(|c| c.id) {
        remove(docker, &id).await?;
        removed += 1;
    }
    Ok(removed)
}

/// What Docker is asked for: the hardened profile with the server's
/// relaxations (see DESIGN.md, "Hardened default container profile").
pub fn create_body(
    spec: &ContainerSpec,
    env: Vec<String>,
    labels: HashMap<String, String>,
) -> ContainerCreateBody {
    let sandbox = &spec.sandbox;
    let tmpfs_options = |bytes: i64| format!("rw,noexec,nosuid,nodev,size={bytes}");
    let mut tmpfs = HashMap::from([("/tmp".to_owned(), tmpfs_options(sandbox.tmp_bytes))]);
    for extra in &sandbox.tmpfs {
        tmpfs.insert(extra.target.clone(), tmpfs_options(extra.size_bytes));
    }
    let mounts = sandbox
        .mounts
        .iter()
        .map(|mount| Mount {
            typ: Some(MountType::BIND),
            source: Some(mount.source.to_string_lossy().into_owned()),
            target: Some(mount.target.clone()),
            read_only: Some(!mount.writable),
            ..Default::default()
        })
        .collect();
    let host_config = HostConfig {
        cap_drop: Some(vec!["ALL".into()]),
        // Docker's default seccomp profile applies as long as no
        // `seccomp=` option replaces it.
        security_opt: Some(vec!["no-new-privileges:true".into()]),
        readonly_rootfs: Some(sandbox.read_only_root),
        tmpfs: Some(tmpfs),
        memory: Some(sandbox.memory_bytes),
        // Swap equal to memory: no swap beyond the memory limit.
        memory_swap: Some(sandbox.memory_bytes),
        nano_cpus: Some((sandbox.cpus * 1e9).round() as i64),
        pids_limit: Some(sandbox.pids),
        network_mode: Some(sandbox.network.clone()),
        privileged: Some(sandbox.privileged),
        pid_mode: sandbox.host_pid.then(|| "host".to_owned()),
        ipc_mode: Some(if sandbox.host_ipc { "host" } else { "private" }.into()),
        init: Some(true),
        mounts: Some(mounts),
        // Restarts are the proxy's (with backoff and accounting), and a dead
        // container is removed by the proxy once its exit code is read.
        auto_remove: Some(false),
        restart_policy: Some(RestartPolicy {
            name: Some(RestartPolicyNameEnum::NO),
            maximum_retry_count: None,
        }),
        // The container's output is the MCP traffic: it stays out of
        // Docker's log files.
        log_config: Some(HostConfigLogConfig {
            typ: Some("none".into()),
            config: None,
        }),
        ..Default::default()
    };
    ContainerCreateBody {
        image: Some(spec.image.clone()),
        entrypoint: spec.entrypoint.clone(),
        cmd: (!spec.args.is_empty()).then(|| spec.args.clone()),
        env: Some(env),
        user: Some(sandbox.user.clone()),
        labels: Some(labels),
        attach_stdin: Some(true),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        open_stdin: Some(true),
        // When the proxy's attachment goes (even by SIGKILL), stdin closes
        // and the server sees end of input.
        stdin_once: Some(true),
        tty: Some(false),
        network_disabled: Some(sandbox.network == "none"),
        host_config: Some(host_config),
        ..Default::default()
    }
}

/// The labels of a container for `server` (and `client`, for a per-client
/// instance).
pub fn labels(server: &str, client: Option<&str>, restarts: u64) -> HashMap<String, String> {
    let mut labels = HashMap::from([
        (LABEL_MANAGED.to_owned(), "true".to_owned()),
        (LABEL_SERVER.to_owned(), server.to_owned()),
        (LABEL_OWNER.to_owned(), owner()),
        (LABEL_RESTARTS.to_owned(), restarts.to_string()),
    ]);
    if let Some(client) = client {
        labels.insert(LABEL_CLIENT.to_owned(), client.to_owned());
    }
    labels
}

/// Makes sure the engine has the image (pulling it only if the server allows)
/// and that it is the pinned one; returns its id, which is what runs (a tag
/// moved between this check and the start cannot swap the image).
pub async fn ensure_image(docker: &Docker, spec: &ContainerSpec) -> Result<ImageInspect, String> {
    match ensure_image_present(docker, spec).await {
        Err(Missing::No(message)) if spec.pull == PullPolicy::Missing => {
            tracing::debug!("{message}");
            pull(docker, &spec.image).await?;
            ensure_image_present(docker, spec)
                .await
                .map_err(Missing::into_message)
        }
        other => other.map_err(Missing::into_message),
    }
}

/// Why an image cannot be used.
pub enum Missing {
    /// The engine does not have it.
    No(String),
    /// It is there but unusable (wrong digest), or the engine failed.
    Unusable(String),
}

impl Missing {
    pub fn into_message(self) -> String {
        match self {
            Self::No(message) | Self::Unusable(message) => message,
        }
    }
}

/// The image, if the engine has it and it is the pinned one. Never pulls.
pub async fn ensure_image_present(
    docker: &Docker,
    spec: &ContainerSpec,
) -> Result<ImageInspect, Missing> {
    let image = match docker.inspect_image(&spec.image).await {
        Ok(image) => image,
        Err(DockerError::DockerResponseServerError {
            status_code: 404, ..
        }) => {
            return Err(Missing::No(format!(
                "image `{}` is not in the Docker engine; build it (`docker build -t {} …`) or load it (`docker load -i …`). Portcullis pulls only when the server sets `pull = \"missing\"`",
                spec.image, spec.image
            )));
        }
        Err(err) => {
            return Err(Missing::Unusable(format!(
                "image `{}`: {}",
                spec.image,
                describe(&err)
            )));
        }
    };
    if let Some(digest) = &spec.digest {
        let id = image.id.as_deref().unwrap_or_default();
        let repo_matches = image
            .repo_digests
            .iter()
            .flatten()
            .any(|repo| repo.ends_with(&format!("@{digest}")));
        if !(id == digest || repo_matches) {
            return Err(Missing::Unusable(format!(
                "image `{}` is `{id}`, not the pinned digest `{digest}`; refusing to start it",
                spec.image
            )));
        }
    }
    Ok(image)
}

async fn pull(docker: &Docker, image: &str) -> Result<(), String> {
    tracing::info!(image, "pulling the image (`pull = \"missing\"`)");
    let (name, tag) = match image.rsplit_once(':').filter(|(_, tag)| !tag.contains('/')) {
        Some((name, tag)) => (name, tag),
        None => (image, "latest"),
    };
    let mut progress = docker.create_image(
        Some(CreateImageOptions {
            from_image: Some(name.to_owned()),
            tag: Some(tag.to_owned()),
            ..Default::default()
        }),
        None,
        None,
    );
    while let Some(step) = progress.next().await {
        step.map_err(|err| format!("cannot pull image `{image}`: {}", describe(&err)))?;
    }
    Ok(())
}

/// A short, client-safe description of an engine error.
pub fn describe(err: &DockerError) -> String {
    match err {
        DockerError::DockerResponseServerError {
            status_code,
            message,
        } => format!("the engine answered {status_code}: {message}"),
        other => other.to_string(),
    }
}

pub fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

async fn remove(docker: &Docker, id: &str) -> Result<(), String> {
    let removed = docker.remove_container(
        id,
        Some(RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        }),
    );
    match tokio::time::timeout(ENGINE_TIMEOUT, removed).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(DockerError::DockerResponseServerError {
            status_code: 404, ..
        })) => Ok(()),
        Ok(Err(err)) => Err(describe(&err)),
        Err(_) => Err(format!("no answer within {}s", ENGINE_TIMEOUT.as_secs())),
    }
}

/// Where the FIFO folder, the bridge and its FIFOs appear in a container.
const FIFO_DIR_IN_CONTAINER: &str = "/run/portcullis";
const BRIDGE_IN_CONTAINER: &str = "/run/portcullis-bridge";

/// A private folder with a container's two FIFOs (`in`: the server's stdin,
/// `out`: its stdout), removed when dropped. Only the proxy and the
/// container's user may open them: a proxy running as root gives the folder
/// (0700) and the FIFOs (0600) to the container's user; any other proxy
/// keeps them and shares them through its own group (folder 0710, FIFOs
/// 0660), which the container gets as a supplementary group. Nobody else
/// may list the folder or open a FIFO; besides, it lies in the data folder,
/// which is the proxy's alone.
struct FifoDir {
    path: std::path::PathBuf,
    /// The group the container must be given to open the FIFOs, when the
    /// proxy could not give them to its user.
    shared_group: Option<u32>,
}

impl FifoDir {
    fn create(run_dir: &std::path::Path, user: &str) -> Result<Self, String> {
        use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
        let failed = |what: &str, err: &dyn std::fmt::Display| format!("cannot {what}: {err}");
        std::fs::create_dir_all(run_dir)
            .map_err(|e| failed(&format!("create `{}`", run_dir.display()), &e))?;
        // Named after this process too, so that a later proxy can tell the
        // folders of a dead one from those of a live one.
        let path = run_dir.join(format!("{}.{}", owner_key(), uuid::Uuid::new_v4().simple()));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|e| failed(&format!("create `{}`", path.display()), &e))?;
        let mut dir = Self {
            path,
            shared_group: None,
        };
        let (folder_mode, fifo_mode, owner) = if nix::unistd::geteuid().is_root() {
            let mut ids = user
                .split(':')
                .map(|id| id.trim_start_matches('+').parse::<u32>().ok());
            let uid = ids.next().flatten().map(nix::unistd::Uid::from_raw);
            let gid = ids.next().flatten().map(nix::unistd::Gid::from_raw);
            (0o700, 0o600, Some((uid, gid)))
        } else {
            dir.shared_group = Some(nix::unistd::getegid().as_raw());
            (0o710, 0o660, None)
        };
        for name in ["in", "out"] {
            let fifo = dir.path.join(name);
            nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
                .map_err(|e| failed("make a FIFO", &e))?;
        }
        // The FIFOs first, the folder last: nobody but the proxy can reach
        // a FIFO before its mode and owner are final.
        for (path, mode) in [
            (dir.path.join("in"), fifo_mode),
            (dir.path.join("out"), fifo_mode),
            (dir.path.clone(), folder_mode),
        ] {
            if let Some((uid, gid)) = owner {
                nix::unistd::chown(&path, uid, gid)
                    .map_err(|e| failed("give the FIFOs to the container's user", &e))?;
            }
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                .map_err(|e| failed("set the FIFOs' modes", &e))?;
        }
        Ok(dir)
    }

    /// The server's stdin, opened read-write so that opening never waits
    /// for the other end.
    fn open_input(&self) -> Result<tokio::net::unix::pipe::Sender, String> {
        tokio::net::unix::pipe::OpenOptions::new()
            .read_write(true)
            .open_sender(self.path.join("in"))
            .map_err(|err| format!("cannot open the server's input FIFO: {err}"))
    }

    fn open_output(&self) -> Result<tokio::net::unix::pipe::Receiver, String> {
        tokio::net::unix::pipe::OpenOptions::new()
            .read_write(true)
            .open_receiver(self.path.join("out"))
            .map_err(|err| format!("cannot open the server's output FIFO: {err}"))
    }
}

impl Drop for FifoDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The server's own command: the spec's entrypoint and args, else the image's.
fn server_command(spec: &ContainerSpec, image: &ImageInspect) -> Result<Vec<String>, String> {
    let config = image.config.clone().unwrap_or_default();
    let mut command = match &spec.entrypoint {
        Some(entrypoint) => entrypoint.clone(),
        None => config.entrypoint.unwrap_or_default(),
    };
    if !spec.args.is_empty() {
        command.extend(spec.args.iter().cloned());
    } else if spec.entrypoint.is_none() {
        command.extend(config.cmd.unwrap_or_default());
    }
    if command.is_empty() {
        return Err(format!(
            "image `{}` names no program to run; set `entrypoint`",
            spec.image
        ));
    }
    Ok(command)
}

/// Rewrites a create request for stdio through FIFOs: the bridge as the
/// entrypoint, the FIFO folder and the bridge mounted read-only (a FIFO
/// opens for writing on a read-only mount), no stdin or stdout attached.
fn use_fifos(body: &mut ContainerCreateBody, setup: &Fifos, dir: &FifoDir, command: Vec<String>) {
    let mut entrypoint = vec![
        BRIDGE_IN_CONTAINER.to_owned(),
        format!("{FIFO_DIR_IN_CONTAINER}/in"),
        format!("{FIFO_DIR_IN_CONTAINER}/out"),
        "--".to_owned(),
    ];
    entrypoint.extend(command);
    body.entrypoint = Some(entrypoint);
    body.cmd = None;
    body.attach_stdin = Some(false);
    body.attach_stdout = Some(false);
    body.open_stdin = Some(false);
    body.stdin_once = Some(false);
    if let Some(host) = body.host_config.as_mut() {
        if let Some(group) = dir.shared_group {
            host.group_add
                .get_or_insert_with(Vec::new)
                .push(group.to_string());
        }
        let mounts = host.mounts.get_or_insert_with(Vec::new);
        for (source, target) in [
            (dir.path.as_path(), FIFO_DIR_IN_CONTAINER),
            (setup.bridge.as_path(), BRIDGE_IN_CONTAINER),
        ] {
            mounts.push(Mount {
                typ: Some(MountType::BIND),
                source: Some(source.to_string_lossy().into_owned()),
                target: Some(target.to_owned()),
                read_only: Some(true),
                ..Default::default()
            });
        }
    }
}

/// Removes a container when dropped, unless disarmed: no failure while
/// starting leaves one behind.
struct Created<'a> {
    docker: &'a Docker,
    id: String,
    armed: bool,
}

impl Drop for Created<'_> {
    fn drop(&mut self) {
        if self.armed {
            let id = std::mem::take(&mut self.id);
            let docker = self.docker.clone();
            tokio::spawn(async move {
                if let Err(err) = remove(&docker, &id).await {
                    tracing::warn!(
                        container = short(&id),
                        error = err,
                        "cannot remove a container that failed to start"
                    );
                }
            });
        }
    }
}

struct ContainerLink {
    /// Held for its `Drop`: the FIFO folder goes with the link.
    _fifos: Option<FifoDir>,
    docker: Docker,
    id: String,
    server: Arc<str>,
    stdin: tokio::sync::Mutex<Pin<Box<dyn AsyncWrite + Send>>>,
    closed: CancellationToken,
}

impl Link for ContainerLink {
    fn send(&self, message: Value) -> BoxFuture<'_, Result<(), String>> {
        async move { write_message(&self.stdin, &message, &self.closed).await }.boxed()
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        async move {
            self.closed.cancel();
            // Say how it ended before the evidence goes.
            if let Ok(Ok(info)) = tokio::time::timeout(
                ENGINE_TIMEOUT,
                self.docker.inspect_container(&self.id, None),
            )
            .await
                && let Some(state) = info.state
                && state.running != Some(true)
            {
                tracing::warn!(
                    server = %self.server,
                    container = short(&self.id),
                    exit_code = state.exit_code,
                    oom_killed = state.oom_killed,
                    "container exited"
                );
            }
            match remove(&self.docker, &self.id).await {
                Ok(()) => {
                    tracing::debug!(server = %self.server, container = short(&self.id), "container removed")
                }
                Err(err) => {
                    tracing::warn!(server = %self.server, container = short(&self.id), error = err, "cannot remove the container")
                }
            }
        }
        .boxed()
    }
}

pub(super) async fn spawn(
    spec: &ContainerSpec,
    secrets: &[(String, String)],
    limits: LimitsConfig,
    inbox: Arc<dyn Inbox>,
    restarts: u64,
) -> Result<Connected, UpstreamError> {
    let server = inbox.server().clone();
    let fail = |reason: String| UpstreamError::Start {
        server: server.to_string(),
        reason,
    };
    let docker = engine().await.map_err(fail)?;
    let image = ensure_image(docker, spec).await.map_err(fail)?;

    // Secrets travel only in the create request's environment: never on a
    // command line, never in a log line.
    let env = spec
        .env
        .iter()
        .map(|(key, value)| (key.as_str(), value.as_str()))
        .chain(
            secrets
                .iter()
                .map(|(key, value)| (key.as_str(), value.as_str())),
        )
        .map(|(key, value)| format!("{key}={value}"))
        .collect();
    let mut body = create_body(spec, env, labels(&server, inbox.instance(), restarts));
    // With FIFOs, the bridge is the entrypoint and execs the server's own
    // command with the FIFOs as its stdio; the attach carries stderr only.
    let fifos = match &spec.fifos {
        None => None,
        Some(setup) => {
            let command = server_command(spec, &image).map_err(fail)?;
            let dir = FifoDir::create(&setup.run_dir, &spec.sandbox.user).map_err(fail)?;
            use_fifos(&mut body, setup, &dir, command);
            Some(dir)
        }
    };
    if let Some(id) = image.id {
        body.image = Some(id);
    }
    let name = format!(
        "portcullis-{server}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let response = docker
        .create_container(
            Some(CreateContainerOptions {
                name: Some(name),
                ..Default::default()
            }),
            body,
        )
        .await
        .map_err(|err| fail(format!("cannot create the container: {}", describe(&err))))?;
    let mut created = Created {
        docker,
        id: response.id,
        armed: true,
    };
    let attached = fifos.is_none();
    let AttachContainerResults { output, input } = docker
        .attach_container(
            &created.id,
            Some(AttachContainerOptions {
                stdin: attached,
                stdout: attached,
                stderr: true,
                stream: true,
                ..Default::default()
            }),
        )
        .await
        .map_err(|err| {
            fail(format!(
                "cannot attach to the container: {}",
                describe(&err)
            ))
        })?;
    docker
        .start_container(&created.id, None)
        .await
        .map_err(|err| fail(format!("cannot start the container: {}", describe(&err))))?;
    created.armed = false;
    let id = std::mem::take(&mut created.id);
    let relaxations = spec.sandbox.relaxations();
    tracing::info!(
        server = %server,
        client = inbox.instance().unwrap_or("(all)"),
        container = short(&id),
        image = %spec.image,
        relaxations = relaxations.len(),
        "container started"
    );

    let closed = CancellationToken::new();
    // Its output: stdout carries MCP (in chunks not aligned to lines, so it
    // goes through the same bounded line reader as a process's stdout);
    // stderr goes to the log at debug level.
    {
        let closed = closed.clone();
        let inbox = inbox.clone();
        let server = server.clone();
        let stdout = output.filter_map(move |item| {
            let server = server.clone();
            async move {
                match item {
                    Ok(LogOutput::StdOut { message }) => Some(Ok::<Bytes, std::io::Error>(message)),
                    Ok(LogOutput::StdErr { message }) => {
                        for line in String::from_utf8_lossy(&message).lines() {
                            let line: String = line.chars().take(2000).collect();
                            tracing::debug!(server = %server, "stderr: {line}");
                        }
                        None
                    }
                    Ok(_) => None,
                    Err(err) => Some(Err(std::io::Error::other(err.to_string()))),
                }
            }
        });
        match &fifos {
            None => {
                let stdout = tokio_util::io::StreamReader::new(Box::pin(stdout));
                tokio::spawn(read_messages(stdout, limits, inbox, closed));
            }
            Some(dir) => {
                // The attach stream (stderr) ends when the container does;
                // the FIFO never does, since the proxy holds both its ends.
                let output = dir.open_output().map_err(fail)?;
                tokio::spawn(read_messages(output, limits, inbox, closed.clone()));
                tokio::spawn(async move {
                    let mut stderr = Box::pin(stdout);
                    while stderr.next().await.is_some() {}
                    closed.cancel();
                });
            }
        }
    }
    let input: Pin<Box<dyn AsyncWrite + Send>> = match &fifos {
        None => input,
        Some(dir) => Box::pin(dir.open_input().map_err(fail)?),
    };

    Ok(Connected {
        link: Arc::new(ContainerLink {
            _fifos: fifos,
            docker: docker.clone(),
            id,
            server,
            stdin: tokio::sync::Mutex::new(input),
            closed: closed.clone(),
        }),
        closed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BindMount, Isolation, Sandbox, StartPolicy};

    fn spec(sandbox: Sandbox) -> ContainerSpec {
        ContainerSpec {
            image: "example:dev".into(),
            digest: None,
            entrypoint: None,
            args: vec!["--name".into(), "x".into()],
            env: Default::default(),
            pull: PullPolicy::Never,
            start: StartPolicy::Eager,
            idle_timeout: None,
            isolation: Isolation::Shared,
            sandbox,
            fifos: None,
        }
    }

    #[test]
    fn the_default_profile_is_hardened() {
        let body = create_body(&spec(Sandbox::default()), vec![], labels("x", None, 0));
        let host = body.host_config.clone().unwrap_or_default();
        assert_eq!(host.cap_drop, Some(vec!["ALL".to_owned()]));
        assert_eq!(
            host.security_opt,
            Some(vec!["no-new-privileges:true".to_owned()])
        );
        assert_eq!(host.readonly_rootfs, Some(true));
        assert_eq!(
            host.tmpfs
                .as_ref()
                .and_then(|t| t.get("/tmp"))
                .map(String::as_str),
            Some("rw,noexec,nosuid,nodev,size=67108864")
        );
        assert_eq!(host.memory, Some(512 << 20));
        assert_eq!(host.memory_swap, host.memory);
        assert_eq!(host.nano_cpus, Some(1_000_000_000));
        assert_eq!(host.pids_limit, Some(256));
        assert_eq!(host.network_mode.as_deref(), Some("none"));
        assert_eq!(host.privileged, Some(false));
        assert_eq!(host.pid_mode, None);
        assert_eq!(host.ipc_mode.as_deref(), Some("private"));
        assert_eq!(host.init, Some(true));
        assert_eq!(host.mounts, Some(vec![]));
        assert_eq!(body.user.as_deref(), Some("65534:65534"));
        assert_eq!(body.tty, Some(false));
        assert_eq!(body.open_stdin, Some(true));
        assert_eq!(body.stdin_once, Some(true));
        assert_eq!(body.cmd, Some(vec!["--name".to_owned(), "x".to_owned()]));
        let labels = body.labels.unwrap_or_default();
        assert_eq!(labels.get(LABEL_MANAGED).map(String::as_str), Some("true"));
        assert_eq!(labels.get(LABEL_SERVER).map(String::as_str), Some("x"));
        assert!(!owner_is_gone(&labels[LABEL_OWNER]), "we are alive");
    }

    #[test]
    fn relaxations_reach_the_profile() {
        let sandbox = Sandbox {
            network: "bridge".into(),
            memory_bytes: 1 << 30,
            mounts: vec![BindMount {
                source: "/srv/data".into(),
                target: "/data".into(),
                writable: false,
            }],
            ..Sandbox::default()
        };
        let host = create_body(&spec(sandbox), vec![], labels("x", None, 0))
            .host_config
            .unwrap_or_default();
        assert_eq!(host.network_mode.as_deref(), Some("bridge"));
        assert_eq!(host.memory, Some(1 << 30));
        assert_eq!(host.memory_swap, Some(1 << 30));
        let mounts = host.mounts.unwrap_or_default();
        assert_eq!(mounts.len(), 1);
        assert_eq!(mounts[0].read_only, Some(true));
        assert_eq!(mounts[0].typ, Some(MountType::BIND));
    }

    #[test]
    fn fifo_folders_of_dead_proxies_are_removed_and_ours_kept() {
        let run = std::env::temp_dir().join(format!("portcullis-run-test-{}", std::process::id()));
        let dead = run.join(format!("{}-999999999-1.aaaa", pid_namespace()));
        let ours = run.join(format!("{}.bbbb", owner_key()));
        let foreign = run.join("1-999999999-1.cccc");
        for dir in [&dead, &ours, &foreign] {
            std::fs::create_dir_all(dir).unwrap_or_default();
        }
        assert_eq!(remove_orphaned_fifos(&run), 1);
        assert!(!dead.exists());
        assert!(ours.exists(), "a live proxy's folder stays");
        assert!(foreign.exists(), "another PID namespace's folder stays");
        let _ = std::fs::remove_dir_all(&run);
    }

    #[test]
    fn owners_that_are_gone_are_recognised() {
        let ours = owner();
        assert!(!owner_is_gone(&ours));
        let (host, namespace) = (hostname(), pid_namespace());
        assert!(!namespace.is_empty());
        assert!(owner_is_gone(&format!("{host}/{namespace}/999999999/1")));
        // Our pid with another start time is a recycled pid: gone.
        assert!(owner_is_gone(&format!(
            "{host}/{namespace}/{}/1",
            std::process::id()
        )));
        assert!(
            !owner_is_gone(&format!("other-host/{namespace}/999999999/1")),
            "other hosts are not ours to judge"
        );
        assert!(
            !owner_is_gone(&format!("{host}/1/999999999/1")),
            "nor other PID namespaces"
        );
        assert!(!owner_is_gone("garbage"), "what we cannot read we leave");
    }
}
