//! `[schema]`: JSON-schema validation of arguments and results.

use serde::Deserialize;

/// `[schema]`: tool arguments checked against the tools' input schemas. On
/// unless `enabled = false`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchemaConfig {
    pub enabled: bool,
    /// What a result that breaks its tool's output schema gets.
    pub output: OutputAction,
}

impl Default for SchemaConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            output: OutputAction::Deny,
        }
    }
}

/// `[schema] output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OutputAction {
    /// The result is replaced by a JSON-RPC error.
    #[default]
    Deny,
    /// Logged and passed on.
    Log,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSchema {
    pub(super) enabled: Option<bool>,
    pub(super) output: Option<OutputAction>,
}
