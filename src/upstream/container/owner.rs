//! Which proxy process a container (or a FIFO folder) belongs to, and
//! whether that process is gone.

/// This proxy process, as written in [`LABEL_OWNER`](super::LABEL_OWNER): the
/// host name, the PID namespace, the pid and the process's start time (so a
/// recycled pid is not taken for us).
pub fn owner() -> String {
    let pid = std::process::id();
    format!(
        "{}/{}/{pid}/{}",
        hostname(),
        pid_namespace(),
        start_time(pid).unwrap_or_default()
    )
}

pub(super) fn hostname() -> String {
    crate::config::host_name()
}

/// The inode of our PID namespace: pids mean something only within one.
pub(super) fn pid_namespace() -> String {
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
pub(super) fn owner_key() -> String {
    let pid = std::process::id();
    format!(
        "{}-{pid}-{}",
        pid_namespace(),
        start_time(pid).unwrap_or_default()
    )
}

/// Whether the proxy that wrote `owner` is gone. Only owners on this host
/// and in this PID namespace are judged: a proxy elsewhere (another machine
/// sharing the engine over `DOCKER_HOST`, or one in a container) may well be
/// alive. A pid we may not look at counts as alive.
pub(super) fn owner_is_gone(owner: &str) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

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
