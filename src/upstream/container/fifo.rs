//! Stdio through FIFOs (`stdio = "fifo"`): a private folder with the two
//! FIFOs, and the create request rewritten to run the server behind the
//! bridge.

use bollard::models::{ContainerCreateBody, Mount, MountType};

use super::owner::owner_key;
use crate::config::Fifos;

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
pub(super) struct FifoDir {
    path: std::path::PathBuf,
    /// The group the container must be given to open the FIFOs, when the
    /// proxy could not give them to its user.
    shared_group: Option<u32>,
}

impl FifoDir {
    pub(super) fn create(run_dir: &std::path::Path, user: &str) -> Result<Self, String> {
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
    pub(super) fn open_input(&self) -> Result<tokio::net::unix::pipe::Sender, String> {
        tokio::net::unix::pipe::OpenOptions::new()
            .read_write(true)
            .open_sender(self.path.join("in"))
            .map_err(|err| format!("cannot open the server's input FIFO: {err}"))
    }

    pub(super) fn open_output(&self) -> Result<tokio::net::unix::pipe::Receiver, String> {
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

/// Rewrites a create request for stdio through FIFOs: the bridge as the
/// entrypoint, the FIFO folder and the bridge mounted read-only (a FIFO
/// opens for writing on a read-only mount), no stdin or stdout attached.
pub(super) fn use_fifos(
    body: &mut ContainerCreateBody,
    setup: &Fifos,
    dir: &FifoDir,
    command: Vec<String>,
) {
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
