//! Cleanup of what proxies left behind: containers and FIFO folders of
//! proxies that died without removing them, and at shutdown what this one
//! still owns.

use super::engine::{engine, labelled, remove, short};
use super::owner::{hostname, owner, owner_is_gone};
use super::{LABEL_MANAGED, LABEL_OWNER, LABEL_SERVER};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::container::owner::{owner_key, pid_namespace};

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
}
