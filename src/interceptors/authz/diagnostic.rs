//! What is wrong with a policy folder, and where: diagnostics with file,
//! line and column (from Cedar's errors, which point into the text), and
//! the error a folder that does not load gives.

use std::fmt;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

/// One problem in a policy or schema file, where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub severity: Severity,
    pub message: String,
    pub help: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let severity = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(
            f,
            "{}:{}:{}: {severity}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.message
        )?;
        if let Some(help) = &self.help {
            write!(f, "\n  help: {help}")?;
        }
        Ok(())
    }
}

/// Why a policy folder did not load.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{}: cannot read: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", list(.0))]
    Invalid(Vec<Diagnostic>),
    #[error(
        "client `{client}`: its `[[clients]]` attributes do not fit the schema's `Client` entity: {message}"
    )]
    Clients { client: String, message: String },
}

fn list(diagnostics: &[Diagnostic]) -> String {
    diagnostics
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// A diagnostic from a Cedar error that points into `text`.
pub(super) fn diagnostic(
    error: &dyn miette::Diagnostic,
    file: &Path,
    text: &str,
    severity: Severity,
    fallback_offset: usize,
) -> Diagnostic {
    let offset = error
        .labels()
        .and_then(|mut labels| labels.next())
        .map_or(fallback_offset, |label| label.offset());
    let (line, column) = crate::config::line_col(text, offset);
    Diagnostic {
        file: file.to_owned(),
        line,
        column,
        severity,
        message: error.to_string(),
        help: error.help().map(|h| h.to_string()),
    }
}
