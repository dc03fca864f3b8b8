//! `[schema]`: JSON-schema validation of arguments and results.

use schemars::JsonSchema;
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum OutputAction {
    /// The result is replaced by a JSON-RPC error.
    #[default]
    Deny,
    /// Logged and passed on.
    Log,
}

/// `[schema]` as written.
#[derive(Deserialize, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSchema {
    /// Whether the `schema` interceptor runs.
    #[schemars(extend("default" = true))]
    enabled: Option<bool>,
    /// A result that does not fit its tool's `outputSchema` (or lacks the
    /// `structuredContent` it asks for).
    #[schemars(extend("default" = "deny"))]
    output: Option<OutputAction>,
}

impl RawSchema {
    pub(super) fn validate(self) -> SchemaConfig {
        SchemaConfig {
            enabled: self.enabled.unwrap_or(true),
            output: self.output.unwrap_or_default(),
        }
    }
}
