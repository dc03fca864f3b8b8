//! The proxy's own files are private: `data_dir` and what it holds (the
//! audit store, the pins, the container FIFO folders) belong to the user
//! the proxy runs as and are closed to everyone else (folders 0700, files
//! 0600).
//!
//! Two things keep them so. The process creates every file with umask 077
//! ([`restrict_umask`]), so nothing it writes is ever open to other users,
//! whatever code writes it (sled, the pin store, a temporary file). And
//! before a proxy opens its store, [`prepare`] checks the folder: a folder
//! another user owns, or that others may write to, may already hold what
//! they put there, so the proxy refuses to start; one that others may only
//! read (an older proxy's default) is closed, with everything in it.

use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

/// Why a data folder cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PrivateDirError {
    #[error("`{path}` is not a folder")]
    NotAFolder { path: String },
    #[error(
        "`{path}` belongs to uid {owner}, not to the user the proxy runs as (uid {uid}): another user could have put files in it; use a folder of your own, or `chown {uid} {path}` if it is yours"
    )]
    OtherOwner { path: String, owner: u32, uid: u32 },
    #[error(
        "`{path}` may be written by other users (mode {mode:04o}): they could have put files in it; check what it holds, then `chmod 700 {path}`"
    )]
    Writable { path: String, mode: u32 },
    #[error(
        "`{path}` is a link that belongs to uid {owner}: whoever owns it can point it elsewhere; use the folder's own path"
    )]
    ForeignLink { path: String, owner: u32 },
    #[error("cannot prepare `{path}`: {error}")]
    Io {
        path: String,
        #[source]
        error: std::io::Error,
    },
}

/// Every file and folder this process creates from now on is its user's
/// alone (umask 077). Called first thing by the binary.
pub fn restrict_umask() {
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
}

/// Makes `dir` a private folder of this user: created 0700 when missing;
/// refused when another user owns it or others may write to it; closed
/// (0700, files 0600) when others may read it. Returns the paths whose
/// modes it narrowed.
pub fn prepare(dir: &Path) -> Result<Vec<PathBuf>, PrivateDirError> {
    let io = |error| PrivateDirError::Io {
        path: dir.display().to_string(),
        error,
    };
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(error) => return Err(io(error)),
    }
    let uid = nix::unistd::geteuid().as_raw();
    // A link is followed only if it is ours (or root's): another user
    // could point it at a folder of theirs once it has been checked.
    let link = std::fs::symlink_metadata(dir).map_err(io)?;
    if link.file_type().is_symlink() && link.uid() != uid && link.uid() != 0 {
        return Err(PrivateDirError::ForeignLink {
            path: dir.display().to_string(),
            owner: link.uid(),
        });
    }
    let meta = std::fs::metadata(dir).map_err(io)?;
    if !meta.is_dir() {
        return Err(PrivateDirError::NotAFolder {
            path: dir.display().to_string(),
        });
    }
    trusted(dir, meta.uid(), meta.mode(), uid)?;
    let mut narrowed = Vec::new();
    close(dir, &meta, uid, &dir.join("run"), &mut narrowed)?;
    Ok(narrowed)
}

/// Whether an entry of `owner` and `mode` may hold (or be) the files of
/// `uid`: its own, and not writable by others.
fn trusted(dir: &Path, owner: u32, mode: u32, uid: u32) -> Result<(), PrivateDirError> {
    if owner != uid {
        return Err(PrivateDirError::OtherOwner {
            path: dir.display().to_string(),
            owner,
            uid,
        });
    }
    let mode = mode & 0o7777;
    if mode & 0o022 != 0 {
        return Err(PrivateDirError::Writable {
            path: dir.display().to_string(),
            mode,
        });
    }
    Ok(())
}

/// Narrows `path` (of metadata `meta`) and, for a folder, what it holds:
/// folders to 0700, regular files to 0600. What others may have written
/// (an entry of another user, or one others may write to) is refused.
/// Links are not followed, and what `run` holds (the container FIFO
/// folders, whose modes their proxy sets) is left as it is.
fn close(
    path: &Path,
    meta: &std::fs::Metadata,
    uid: u32,
    run: &Path,
    narrowed: &mut Vec<PathBuf>,
) -> Result<(), PrivateDirError> {
    let io = |error| PrivateDirError::Io {
        path: path.display().to_string(),
        error,
    };
    let kind = meta.file_type();
    if kind.is_symlink() || path.parent() == Some(run) {
        return Ok(());
    }
    trusted(path, meta.uid(), meta.mode(), uid)?;
    if !(kind.is_dir() || kind.is_file()) {
        return Ok(());
    }
    let private = if kind.is_dir() { 0o700 } else { 0o600 };
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & private))
            .map_err(io)?;
        narrowed.push(path.to_owned());
    }
    if kind.is_dir() {
        for entry in std::fs::read_dir(path).map_err(io)? {
            let entry = entry.map_err(io)?;
            let meta = std::fs::symlink_metadata(entry.path()).map_err(io)?;
            close(&entry.path(), &meta, uid, run, narrowed)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path)
            .map(|m| m.mode() & 0o7777)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }

    #[test]
    fn a_missing_folder_is_created_private() {
        let temp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let dir = temp.path().join("a/b/data");
        let narrowed = prepare(&dir).unwrap_or_else(|e| panic!("{e}"));
        assert!(narrowed.is_empty());
        assert_eq!(mode(&dir), 0o700);
    }

    #[test]
    fn a_link_to_the_folder_is_followed_when_it_is_ours() {
        let temp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let real = temp.path().join("real");
        std::fs::create_dir(&real).unwrap_or_else(|e| panic!("{e}"));
        let link = temp.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap_or_else(|e| panic!("{e}"));
        assert!(prepare(&link).is_ok());
    }

    #[test]
    fn a_readable_folder_is_closed_with_everything_in_it() {
        let temp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let dir = temp.path().join("data");
        std::fs::create_dir_all(dir.join("audit/serve")).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.join("pins.json"), "{}").unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.join("audit/serve/db"), "x").unwrap_or_else(|e| panic!("{e}"));
        std::os::unix::fs::symlink("/etc/hostname", dir.join("link"))
            .unwrap_or_else(|e| panic!("{e}"));
        for (path, m) in [
            (dir.clone(), 0o755),
            (dir.join("audit"), 0o755),
            (dir.join("audit/serve"), 0o750),
            (dir.join("pins.json"), 0o644),
            (dir.join("audit/serve/db"), 0o640),
        ] {
            chmod(&path, m);
        }
        let before = mode(Path::new("/etc/hostname"));
        let narrowed = prepare(&dir).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(narrowed.len(), 5, "{narrowed:?}");
        for dir in [dir.clone(), dir.join("audit"), dir.join("audit/serve")] {
            assert_eq!(mode(&dir), 0o700, "{}", dir.display());
        }
        assert_eq!(mode(&dir.join("pins.json")), 0o600);
        assert_eq!(mode(&dir.join("audit/serve/db")), 0o600);
        assert_eq!(
            mode(Path::new("/etc/hostname")),
            before,
            "a link is not followed"
        );
        // Once closed, nothing more to do.
        assert!(prepare(&dir).unwrap_or_else(|e| panic!("{e}")).is_empty());
    }

    #[test]
    fn a_folder_others_may_write_is_refused() {
        let temp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        for loose in [0o777, 0o770, 0o702, 0o1777] {
            let dir = temp.path().join(format!("data-{loose:o}"));
            std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("{e}"));
            chmod(&dir, loose);
            let error = prepare(&dir)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(
                error.contains("may be written by other users"),
                "{loose:o}: {error}"
            );
            assert!(error.contains("chmod 700"), "{error}");
            assert_eq!(mode(&dir), loose, "a refused folder is left as it was");
        }
        // A folder inside that others may write to is refused too.
        let dir = temp.path().join("data-inside");
        std::fs::create_dir_all(dir.join("audit")).unwrap_or_else(|e| panic!("{e}"));
        chmod(&dir, 0o700);
        chmod(&dir.join("audit"), 0o777);
        let error = prepare(&dir)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            error.contains("audit` may be written by other users"),
            "{error}"
        );
        let file = temp.path().join("file");
        std::fs::write(&file, "").unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            prepare(&file),
            Err(PrivateDirError::NotAFolder { .. })
        ));
    }

    #[test]
    fn a_folder_of_another_user_is_refused() {
        let error = trusted(Path::new("/srv/theirs"), 4242, 0o700, 1000)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            error.contains("`/srv/theirs` belongs to uid 4242"),
            "{error}"
        );
        assert!(error.contains("(uid 1000)"), "{error}");
        assert!(trusted(Path::new("/srv/mine"), 1000, 0o40700, 1000).is_ok());
    }
}
