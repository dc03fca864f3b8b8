//! Config reload for `serve` and `stdio`: the config file, its catalogs
//! and the profile in force are checked every `[proxy] policy_poll`, and
//! read again at once on SIGHUP. The gateway applies the new config's
//! servers and profile without closing a session; a file that does not
//! load keeps the config in force. Each reload is logged and recorded
//! (`config_reload`), with the sections that changed but wait for the next
//! start.

use std::path::PathBuf;
use std::sync::Arc;

use crate::audit::AuditRecord;
use crate::config::{Config, ConfigError};
use crate::gateway::{Gateway, Reloaded};

/// What a reload reads the config as: the file, the profile in force, and
/// whether HTTP is off whatever the file says (`portcullis stdio`).
#[derive(Clone)]
pub(super) struct Source {
    pub(super) file: PathBuf,
    pub(super) profile: Option<String>,
    pub(super) listen_off: bool,
}

impl Source {
    fn load(&self) -> Result<Config, ConfigError> {
        let mut config = Config::load_with_profile(&self.file, self.profile.as_deref())?;
        if self.listen_off {
            config.proxy.listen = None;
        }
        Ok(config)
    }
}

/// The files a change of reloads the config: the config itself, each
/// catalog (and a pulled one's record), each registry server's pulled
/// server.json (and its record), the profile.
fn watched(config: &Config) -> Vec<PathBuf> {
    let mut files = vec![config.file.clone()];
    for catalog in &config.catalogs {
        files.push(catalog.path.clone());
        if catalog.oci.is_some() {
            files.push(crate::config::pulled::record_path(&catalog.path));
        }
    }
    // A registry server's pulled server.json and its record.
    for resolved in config.servers.iter().filter_map(|s| s.resolved.as_ref()) {
        files.push(resolved.file.clone());
        files.push(crate::config::pulled::record_path(&resolved.file));
    }
    if let Some(profile) = &config.profile {
        files.push(crate::config::profiles::path(config, &profile.name));
    }
    files
}

/// Refuses files that another user (root aside) owns or may write to, or
/// that sit in a folder, at any depth, that another user owns or may
/// write to (unless it is sticky, as `/tmp` is): a reload starts what the
/// files say, so whoever may change them would run servers as the
/// proxy's user. A link is checked as a path (its own owner, its folders),
/// and so is each target it leads through to the file.
fn trusted(files: &[PathBuf]) -> Result<(), String> {
    /// Links followed at most from one file (the kernel's own limit).
    const MAX_LINKS: usize = 40;
    let uid = nix::unistd::geteuid().as_raw();
    for file in files {
        // A file that is gone is the load's to report.
        let Ok(absolute) = std::path::absolute(file) else {
            continue;
        };
        // The path, each link's target hop by hop (a link in the middle
        // of a chain could be switched too), and where it all ends.
        let mut paths = vec![absolute.clone()];
        let mut at = absolute.clone();
        for _ in 0..MAX_LINKS {
            let Ok(target) = std::fs::read_link(&at) else {
                break;
            };
            at = match at.parent() {
                Some(folder) => folder.join(target),
                None => target,
            };
            paths.push(at.clone());
        }
        if let Ok(real) = std::fs::canonicalize(&absolute)
            && !paths.contains(&real)
        {
            paths.push(real);
        }
        for path in &paths {
            for (depth, at) in path.ancestors().enumerate() {
                if at.as_os_str().is_empty() {
                    continue;
                }
                if let Ok(meta) = std::fs::symlink_metadata(at) {
                    check_entry(at, &meta, uid, depth > 0)?;
                }
            }
        }
    }
    Ok(())
}

/// One path of [`trusted`]'s: its owner, and (but for a link, whose mode
/// means nothing) who may write to it.
fn check_entry(
    path: &std::path::Path,
    meta: &std::fs::Metadata,
    uid: u32,
    folder: bool,
) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt as _;
    let (owner, mode) = (meta.uid(), meta.mode() & 0o7777);
    if owner != uid && owner != 0 {
        return Err(format!(
            "`{}` belongs to uid {owner}, neither the proxy's user (uid {uid}) nor root: the config was not reloaded",
            path.display()
        ));
    }
    let sticky = folder && mode & 0o1000 != 0;
    if !meta.file_type().is_symlink() && mode & 0o022 != 0 && !sticky {
        return Err(format!(
            "`{}` may be written by other users (mode {mode:04o}): the config was not reloaded; `chmod go-w` it",
            path.display()
        ));
    }
    Ok(())
}

/// A file as it is now: device, inode, size, and its modification and
/// change times (a write moves `ctime`, which no one can set back).
pub(super) type Stamp = (u64, u64, u64, i64, i64, i64, i64);

/// What each file is now; `None` for one that is gone.
fn stamps(files: &[PathBuf]) -> Vec<Option<Stamp>> {
    use std::os::unix::fs::MetadataExt as _;
    files
        .iter()
        .map(|file| {
            std::fs::metadata(file).ok().map(|m| {
                (
                    m.dev(),
                    m.ino(),
                    m.size(),
                    m.mtime(),
                    m.mtime_nsec(),
                    m.ctime(),
                    m.ctime_nsec(),
                )
            })
        })
        .collect()
}

/// The config file `path` as it is now: taken before it is read.
pub(super) fn stamp_of(path: &std::path::Path) -> Option<Stamp> {
    stamps(&[path.to_owned()]).pop().flatten()
}

/// The stamps of the files `config` was read from (see [`watch`]), the
/// config file's as it was before it was read (`before`, [`stamp_of`]):
/// an edit made while it was read is seen at the first look.
pub(super) fn stamps_of(config: &Config, before: Option<Stamp>) -> Vec<Option<Stamp>> {
    let mut read = stamps(&watched(config));
    if let Some(file) = read.first_mut() {
        *file = before;
    }
    read
}

/// Watches the config of `gateway` (read as `source` says) until the proxy
/// stops; `read`, its files' stamps when it was read ([`stamps_of`]): a
/// change since is reloaded at the first look.
pub(super) fn watch(gateway: Arc<Gateway>, source: Source, read: Vec<Option<Stamp>>) {
    // Before this returns: a SIGHUP from now on reloads (and never ends
    // the proxy, as it would unhandled).
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    tokio::spawn(async move {
        let poll = gateway.config().proxy.policy_poll;
        let shutdown = gateway.shutdown_token();
        let mut files = watched(gateway.config());
        let mut seen = read;
        loop {
            let asked = async {
                match hangup.as_mut() {
                    Some(signal) => signal.recv().await,
                    None => std::future::pending().await,
                }
            };
            let forced = tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(poll) => false,
                Some(()) = asked => true,
            };
            let now = stamps(&files);
            if !forced && now == seen {
                continue;
            }
            seen = now.clone();
            if let Some(next) = reload(&gateway, &source, &files).await {
                // A catalog added, or another profile file: watched too.
                // Each as it was before it was read (an edit made while
                // the reload read and applied it is seen next time); one
                // new to the watch counts as changed (one more reload,
                // which finds nothing to do).
                seen = next
                    .iter()
                    .map(|file| {
                        let known = files.iter().position(|watched| watched == file);
                        known.and_then(|at| now.get(at).copied().flatten())
                    })
                    .collect();
                files = next;
            }
        }
    });
}

/// Loads the config again and applies it; the files it was read from, when
/// it was applied.
async fn reload(
    gateway: &Arc<Gateway>,
    source: &Source,
    files: &[PathBuf],
) -> Option<Vec<PathBuf>> {
    if let Err(error) = trusted(files) {
        refused(gateway, error);
        return None;
    }
    let loading = source.clone();
    let loaded = match tokio::task::spawn_blocking(move || loading.load()).await {
        Ok(loaded) => loaded.map_err(|err| err.to_string()),
        Err(err) => Err(format!("the config could not be read: {err}")),
    };
    let next = match loaded {
        Ok(next) => next,
        Err(error) => {
            refused(gateway, error);
            return None;
        }
    };
    // The files the new config names (a catalog added) too.
    let next_files = watched(&next);
    if let Err(error) = trusted(&next_files) {
        refused(gateway, error);
        return None;
    }
    let pending = gateway.config().changes_needing_restart(&next);
    match gateway.reload(&next).await {
        Ok(reloaded) => {
            applied(gateway, &next, &reloaded, &pending);
            Some(next_files)
        }
        Err(err) => {
            refused(gateway, err.to_string());
            None
        }
    }
}

/// A config that did not load (or apply): the one in force stays. (An
/// error may quote a value of the file: scrubbed like a record.)
fn refused(gateway: &Gateway, error: String) {
    let error = gateway.records().scrubbed(&error);
    tracing::error!(error = %error, "the config was not reloaded: the last good one stays in force");
    let mut record = AuditRecord::event("config_reload", "error");
    record.reason = Some(super::records::reason(&error));
    gateway.records().event(record);
}

fn applied(gateway: &Gateway, next: &Config, reloaded: &Reloaded, pending: &[&'static str]) {
    let started: Vec<&crate::config::ServerConfig> = next
        .servers
        .iter()
        .filter(|server| {
            reloaded.added.contains(&server.name) || reloaded.restarted.contains(&server.name)
        })
        .collect();
    super::records::announce_sandboxing(started.iter().copied());
    tracing::info!(
        added = ?reloaded.added,
        removed = ?reloaded.removed,
        restarted = ?reloaded.restarted,
        profile = reloaded.profile,
        "config reloaded"
    );
    if !pending.is_empty() {
        tracing::warn!(
            sections = ?pending,
            "config sections changed that apply only at the next start: restart the proxy to apply them"
        );
    }
    let config_sha256 = super::config_sha256(&next.file);
    gateway.reloads().set_enforced(crate::gateway::Enforced {
        config_sha256: config_sha256.clone(),
        restart_required: pending.to_vec(),
    });
    let mut record = AuditRecord::event("config_reload", "allow");
    record.detail = Some(serde_json::json!({
        "config_sha256": config_sha256,
        "added": reloaded.added,
        "removed": reloaded.removed,
        "restarted": reloaded.restarted,
        "profile_changed": reloaded.profile,
        "servers": next.servers.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        "restart_required": pending,
    }));
    let mut records = vec![record];
    records.extend(super::records::relaxed_records(started.into_iter()));
    gateway.records().events(records);
}
