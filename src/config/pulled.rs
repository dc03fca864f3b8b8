//! OCI catalogs as `portcullis catalog pull` keeps them: the catalog's JSON
//! layer, exactly as pulled (`catalogs/NAME.json` beside the config unless
//! `path` says), and beside it `NAME.json.pulled`, which says what was
//! pulled: the reference, the manifest's digest, the layer's digest. The
//! proxy never pulls at start; it reads what was pulled, and refuses a file
//! that is not what its record says, or a record of another reference or
//! another pinned digest.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// What a pull kept, beside the catalog's file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PulledRecord {
    /// The reference as the config writes it.
    pub reference: String,
    /// The manifest's digest (`sha256:…`).
    pub digest: String,
    /// The layer's digest: the catalog file's SHA-256.
    pub layer: String,
}

/// The record's path: the catalog's with `.pulled` added.
pub fn record_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".pulled");
    PathBuf::from(name)
}

/// `sha256:<hex>` of `bytes`, as registries name blobs and manifests.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The digest `reference` pins (`…@sha256:…`), if it pins one.
pub fn pinned(reference: &str) -> Option<&str> {
    reference.split_once('@').map(|(_, digest)| digest)
}

/// Whether `pin` is `sha256:` and 64 lowercase hex digits.
pub(super) fn is_pin(pin: &str) -> bool {
    pin.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    })
}

/// An OCI reference the config may hold: printable, no spaces, bounded.
pub(super) fn check_reference(reference: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "._-/:@[]".contains(c);
    if reference.is_empty() || reference.len() > 512 || !reference.chars().all(allowed) {
        return Err(format!(
            "`{}` is not an OCI reference (REGISTRY/REPOSITORY[:TAG][@sha256:DIGEST])",
            super::names::shown(reference)
        ));
    }
    if let Some(pin) = pinned(reference)
        && !is_pin(pin)
    {
        return Err(format!(
            "`{}` pins `{}`, which is not `sha256:` and 64 lowercase hex digits",
            super::names::shown(reference),
            super::names::shown(pin)
        ));
    }
    Ok(())
}

/// The pulled catalog at `path` for `reference`: `None` when it was never
/// pulled; its text when its record matches; why not otherwise.
pub(super) fn read(path: &Path, reference: &str, limit: usize) -> Result<Option<String>, String> {
    read_pinned(path, reference, pinned(reference), "catalog", limit)
}

/// [`read`] with the pin apart from the reference (a registry server's
/// `#sha256:…`, its version being the reference's `@`): `what` names the
/// pull command to run again.
pub(super) fn read_pinned(
    path: &Path,
    reference: &str,
    pin: Option<&str>,
    what: &str,
    limit: usize,
) -> Result<Option<String>, String> {
    let record_path = record_path(path);
    if !path.exists() && !record_path.exists() {
        return Ok(None);
    }
    let record = super::values::read_regular(&record_path, 4096)
        .map_err(|err| format!("cannot read `{}`: {err}", record_path.display()))?;
    let record: PulledRecord = serde_json::from_str(&record).map_err(|_| {
        format!(
            "`{}` is not a pull record: run `portcullis {what} pull` again",
            record_path.display()
        )
    })?;
    let again = format!("run `portcullis {what} pull` again");
    if record.reference != reference {
        return Err(format!(
            "what was pulled is `{}`, not `{reference}`: {again}",
            super::names::shown(&record.reference)
        ));
    }
    if let Some(pin) = pin
        && pin != record.digest
    {
        return Err(format!(
            "what was pulled is {}, not the pinned {pin}: {again}",
            super::names::shown(&record.digest)
        ));
    }
    let text = super::values::read_regular(path, limit)
        .map_err(|err| format!("cannot read `{}`: {err}", path.display()))?;
    if sha256_digest(text.as_bytes()) != record.layer {
        return Err(format!(
            "`{}` is not the {what} file that was pulled (its SHA-256 differs from the pull's record): {again}",
            path.display()
        ));
    }
    Ok(Some(text))
}

/// Keeps a pulled catalog: its file, then its record (so a file without a
/// record, or with another's, is refused at load). Both owner-only.
pub fn write(path: &Path, record: &PulledRecord, json: &[u8]) -> std::io::Result<()> {
    if let Some(parent) = path.parent()
        && !parent.exists()
    {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)?;
    }
    write_private(path, json)?;
    let text = serde_json::to_vec_pretty(record).map_err(std::io::Error::other)?;
    write_private(&record_path(path), &text)
}

/// Writes `bytes` to `path` through a temporary file renamed over it,
/// readable by its owner only.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    let _ = std::fs::remove_file(&temporary);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temporary)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PIN: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

    #[test]
    fn references_and_pins_are_checked() {
        assert!(check_reference("127.0.0.1:5000/catalogs/team:v1").is_ok());
        assert!(check_reference(&format!("r.example/team@{PIN}")).is_ok());
        assert!(check_reference("r.example/team@sha256:abc").is_err());
        assert!(check_reference("bad ref").is_err());
        assert!(check_reference("").is_err());
    }

    #[test]
    fn a_pull_is_read_back_only_as_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalogs/team.json");
        let reference = "127.0.0.1:5000/catalogs/team:v1";
        assert_eq!(read(&path, reference, 1024), Ok(None));
        let json = br#"{"registry":{}}"#;
        let record = PulledRecord {
            reference: reference.into(),
            digest: PIN.into(),
            layer: sha256_digest(json),
        };
        write(&path, &record, json).unwrap();
        assert_eq!(
            read(&path, reference, 1024).unwrap().as_deref(),
            Some(r#"{"registry":{}}"#)
        );
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{mode:o}");
        // Another reference, another pin, a changed file: refused.
        assert!(read(&path, "127.0.0.1:5000/catalogs/other:v1", 1024).is_err());
        let pinned = format!("{reference}@sha256:{}", "1".repeat(64));
        assert!(read(&path, &pinned, 1024).unwrap_err().contains("not `"));
        // A record of the pinned reference whose manifest is another.
        let other = dir.path().join("catalogs/other.json");
        let record = PulledRecord {
            reference: pinned.clone(),
            ..record
        };
        write(&other, &record, json).unwrap();
        assert!(read(&other, &pinned, 1024).unwrap_err().contains("pinned"));
        std::fs::write(&path, br#"{"registry":{"x":{}}}"#).unwrap();
        assert!(
            read(&path, reference, 1024)
                .unwrap_err()
                .contains("SHA-256")
        );
        // A file without its record is refused, not taken as unpulled.
        std::fs::remove_file(record_path(&path)).unwrap();
        assert!(read(&path, reference, 1024).is_err());
    }
}
