//! The create request: the hardened profile, the server's relaxations and
//! the labels every container carries.

use std::collections::HashMap;

use bollard::models::{
    ContainerCreateBody, HostConfig, HostConfigLogConfig, Mount, MountType, RestartPolicy,
    RestartPolicyNameEnum,
};

use super::owner::owner;
use super::{LABEL_CLIENT, LABEL_MANAGED, LABEL_OWNER, LABEL_RESTARTS, LABEL_SERVER};
use crate::config::ContainerSpec;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BindMount, Isolation, PullPolicy, Sandbox, StartPolicy};
    use crate::upstream::container::owner::owner_is_gone;

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
            label: None,
            require_signature: false,
            signature_keys: Default::default(),
            sign_in: None,
            described_labels: None,
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
}
