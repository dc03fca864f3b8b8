//! `[pinning]`: tool pinning and the poisoning scan.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{ConfigError, ProxyConfig, Validator};

/// `[pinning]`: tool definitions pinned by their SHA-256, and descriptions
/// scanned for poisoning. On unless `enabled = false`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinningConfig {
    pub enabled: bool,
    /// The pin file (`[pinning] file`, else `pins.json` in the data folder).
    pub file: PathBuf,
    /// Where the proxy keeps what it saw and the lock (the data folder).
    pub data_dir: PathBuf,
    /// A tool the pin file does not name.
    pub first_use: FirstUse,
    /// A tool whose definition is not the pinned one.
    pub on_change: OnChange,
    /// A tool or prompt whose description a poisoning rule flags.
    pub poisoning: Poisoning,
    /// A custom poisoning rule file, in the built-in rules' format.
    pub extra_rules: Option<PathBuf>,
}

impl PinningConfig {
    /// The defaults, with pins kept in `data_dir`.
    pub fn in_data_dir(data_dir: &Path) -> Self {
        Self {
            enabled: true,
            file: data_dir.join("pins.json"),
            data_dir: data_dir.to_owned(),
            first_use: FirstUse::Pin,
            on_change: OnChange::Deny,
            poisoning: Poisoning::Flag,
            extra_rules: None,
        }
    }
}

/// `[pinning] first_use`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FirstUse {
    /// Trust on first use: the definition seen first is pinned.
    #[default]
    Pin,
    /// Only tools the pin file names are served; others await approval.
    Deny,
}

/// `[pinning] on_change`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnChange {
    /// Withheld from lists, calls refused, until approved.
    #[default]
    Deny,
    /// Served, with a warning in the log and the audit record.
    Warn,
}

/// `[pinning] poisoning`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Poisoning {
    /// Flagged in lists (`_meta`), the log and the audit log; served.
    #[default]
    Flag,
    /// Withheld and refused unless a person approved that very definition.
    Deny,
    /// Not scanned.
    Off,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPinning {
    pub(super) enabled: Option<bool>,
    pub(super) file: Option<PathBuf>,
    pub(super) first_use: Option<FirstUse>,
    pub(super) on_change: Option<OnChange>,
    pub(super) poisoning: Option<Poisoning>,
    pub(super) extra_rules: Option<PathBuf>,
}

impl Validator<'_> {
    pub(super) fn pinning(
        &self,
        raw: RawPinning,
        proxy: &ProxyConfig,
        resolve: &impl Fn(PathBuf) -> PathBuf,
    ) -> Result<PinningConfig, ConfigError> {
        let defaults = PinningConfig::in_data_dir(&proxy.data_dir);
        Ok(PinningConfig {
            enabled: raw.enabled.unwrap_or(true),
            file: raw.file.map(resolve).unwrap_or(defaults.file),
            first_use: raw.first_use.unwrap_or(defaults.first_use),
            on_change: raw.on_change.unwrap_or(defaults.on_change),
            poisoning: raw.poisoning.unwrap_or(defaults.poisoning),
            extra_rules: raw.extra_rules.map(resolve),
            data_dir: defaults.data_dir,
        })
    }
}
