//! The files of a policy folder: the schema and every `*.cedar` file under
//! it (symlinks followed, hidden files left out), read, and their
//! fingerprint (the policy set's id).

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::diagnostic::{Diagnostic, PolicyError, Severity};

/// The schema's file name inside the policies folder.
pub const SCHEMA_FILE: &str = "schema.cedarschema";

/// The files of a policy folder, read: (path, text), schema first.
pub struct Sources {
    pub schema: (PathBuf, String),
    pub policies: Vec<(PathBuf, String)>,
}

impl Sources {
    /// Reads the schema and every `*.cedar` file under `dir` (sorted).
    pub fn read(dir: &Path) -> Result<Self, PolicyError> {
        let schema_path = dir.join(SCHEMA_FILE);
        let schema = match std::fs::read_to_string(&schema_path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound && dir.is_dir() => {
                return Err(PolicyError::Invalid(vec![Diagnostic {
                    file: schema_path,
                    line: 1,
                    column: 1,
                    severity: Severity::Error,
                    message: "the schema is missing: every policy folder needs a `schema.cedarschema`; policies are validated strictly against it".into(),
                    help: Some("start from the schema in the repository's `policies/` folder".into()),
                }]));
            }
            Err(source) => {
                return Err(PolicyError::Io {
                    path: if dir.is_dir() {
                        schema_path
                    } else {
                        dir.to_owned()
                    },
                    source,
                });
            }
        };
        let mut paths = Vec::new();
        collect_cedar_files(dir, &mut paths)?;
        paths.sort();
        let mut policies = Vec::new();
        for path in paths {
            let text = std::fs::read_to_string(&path).map_err(|source| PolicyError::Io {
                path: path.clone(),
                source,
            })?;
            policies.push((path, text));
        }
        Ok(Self {
            schema: (schema_path, schema),
            policies,
        })
    }

    /// A short hash over every file's path (inside the folder) and content.
    pub fn fingerprint(&self) -> String {
        let mut hasher = Sha256::new();
        let dir = self.schema.0.parent().unwrap_or(Path::new(""));
        for (path, text) in std::iter::once(&self.schema).chain(&self.policies) {
            let name = path.strip_prefix(dir).unwrap_or(path).to_string_lossy();
            hasher.update(name.as_bytes());
            hasher.update([0]);
            hasher.update((text.len() as u64).to_le_bytes());
            hasher.update(text.as_bytes());
        }
        hex::encode(hasher.finalize().get(..6).unwrap_or_default())
    }
}

fn collect_cedar_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), PolicyError> {
    collect_cedar_files_at(dir, out, 0)
}

fn collect_cedar_files_at(
    dir: &Path,
    out: &mut Vec<PathBuf>,
    depth: usize,
) -> Result<(), PolicyError> {
    if depth > 16 {
        return Err(PolicyError::Io {
            path: dir.to_owned(),
            source: std::io::Error::other("folders nest deeper than 16 levels (a symlink loop?)"),
        });
    }
    let entries = std::fs::read_dir(dir).map_err(|source| PolicyError::Io {
        path: dir.to_owned(),
        source,
    })?;
    for entry in entries {
        let entry = entry.map_err(|source| PolicyError::Io {
            path: dir.to_owned(),
            source,
        })?;
        let path = entry.path();
        // Followed through symlinks (a folder swapped in by a link, as
        // configuration systems do, is read like any other).
        let is_dir = std::fs::metadata(&path).is_ok_and(|m| m.is_dir());
        let hidden = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'));
        if hidden {
            continue;
        }
        if is_dir {
            collect_cedar_files_at(&path, out, depth + 1)?;
        } else if path.extension().is_some_and(|e| e == "cedar") {
            out.push(path);
        }
    }
    Ok(())
}
