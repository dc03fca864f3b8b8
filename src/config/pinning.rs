//! `[pinning]`: tool pinning and the poisoning scan.

use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::Deserialize;

use super::values::PathText;
use super::{ProxyConfig, Validator};

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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum FirstUse {
    /// Trust on first use: the definition seen first is pinned.
    #[default]
    Pin,
    /// Only tools the pin file names are served; others await approval.
    Deny,
}

/// `[pinning] on_change`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum OnChange {
    /// Withheld from lists, calls refused, until approved.
    #[default]
    Deny,
    /// Served, with a warning in the log and the audit record.
    Warn,
}

/// `[pinning] poisoning`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
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

/// `[pinning]` as written.
#[derive(Deserialize, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPinning {
    /// Whether the `pinning` interceptor runs.
    #[schemars(extend("default" = true))]
    enabled: Option<bool>,
    /// The pin file; one checked into a repository works too (with
    /// `first_use = "deny"` the proxy never writes it).
    #[schemars(
        with = "Option<PathText>",
        extend("x-default" = "`pins.json` in `[proxy] data_dir`")
    )]
    file: Option<PathBuf>,
    /// A tool the pin file does not name.
    #[schemars(extend("default" = "pin"))]
    first_use: Option<FirstUse>,
    /// A tool whose definition is not its pin.
    #[schemars(extend("default" = "deny"))]
    on_change: Option<OnChange>,
    /// A tool, prompt, resource or server instructions that a poisoning rule
    /// flags.
    #[schemars(extend("default" = "flag"))]
    poisoning: Option<Poisoning>,
    /// Poisoning rules of your own, in the built-in rules' format
    /// (`[[rules]] id, description, regex`).
    #[schemars(with = "Option<PathText>")]
    extra_rules: Option<PathBuf>,
}

impl RawPinning {
    pub(super) fn validate(self, v: &Validator<'_>, proxy: &ProxyConfig) -> PinningConfig {
        let defaults = PinningConfig::in_data_dir(&proxy.data_dir);
        PinningConfig {
            enabled: self.enabled.unwrap_or(true),
            file: self
                .file
                .map(|file| v.resolve(file))
                .unwrap_or(defaults.file),
            first_use: self.first_use.unwrap_or(defaults.first_use),
            on_change: self.on_change.unwrap_or(defaults.on_change),
            poisoning: self.poisoning.unwrap_or(defaults.poisoning),
            extra_rules: self.extra_rules.map(|file| v.resolve(file)),
            data_dir: defaults.data_dir,
        }
    }
}
