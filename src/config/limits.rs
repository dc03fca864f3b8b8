//! `[limits]`: the size and depth every message must keep to.

use schemars::JsonSchema;
use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, Validator};

#[derive(Debug, Clone, Copy)]
pub struct LimitsConfig {
    pub max_message_bytes: usize,
    pub max_depth: usize,
    /// The most items the proxy keeps of one list of one server (tools,
    /// prompts, resources, templates each); past it the list is cut.
    pub max_list_items: usize,
    /// The most bytes the proxy holds (parsed) of one server's four lists
    /// together; past it they are cut.
    pub max_list_bytes: usize,
    /// The most bytes (held, as parsed) of one server instance's messages
    /// waiting to be passed on, and of one client session's messages
    /// waiting for the client to read them.
    pub max_queued_bytes: usize,
    /// The most bytes of messages waiting for all HTTP client sessions
    /// together to read them.
    pub max_queued_bytes_total: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_message_bytes: 4 * 1024 * 1024,
            max_depth: 64,
            max_list_items: 10_000,
            max_list_bytes: 32 * 1024 * 1024,
            max_queued_bytes: 64 * 1024 * 1024,
            max_queued_bytes_total: 512 * 1024 * 1024,
        }
    }
}

/// `[limits]` as written.
#[derive(Deserialize, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    /// The largest message, in bytes, enforced while reading; at least 1024.
    #[schemars(with = "Option<usize>", extend("default" = 4_194_304))]
    max_message_bytes: Option<Spanned<usize>>,
    /// The deepest nesting of arrays and objects in a message, from 4 to 128.
    #[schemars(with = "Option<usize>", extend("default" = 64))]
    max_depth: Option<Spanned<usize>>,
    /// The most items the proxy keeps of one list of one server (its tools,
    /// prompts, resources or resource templates), at least 1; past it the
    /// list is cut, logged and recorded (`list_cut`).
    #[schemars(with = "Option<usize>", extend("default" = 10_000))]
    max_list_items: Option<Spanned<usize>>,
    /// The most bytes the proxy holds of one server's lists together,
    /// counted as parsed (about 20 times their JSON for small tools), at
    /// least 65536; past it they are cut, logged and recorded (`list_cut`).
    /// The merged lists clients are served hold about as much again.
    #[schemars(with = "Option<usize>", extend("default" = 33_554_432))]
    max_list_bytes: Option<Spanned<usize>>,
    /// The most bytes (counted as parsed) of messages that wait: of one
    /// server instance's, to be passed on (past it, reading that server
    /// waits), and of one client session's, for the client to read them
    /// (past it, what servers send on their own is dropped and counted as
    /// undelivered). At least 65536; a message larger than it waits for
    /// an empty queue.
    #[schemars(with = "Option<usize>", extend("default" = 67_108_864))]
    max_queued_bytes: Option<Spanned<usize>>,
    /// The most bytes (counted as parsed) of messages waiting for all the
    /// HTTP client sessions together to read them, beside each session's
    /// `max_queued_bytes`: past it, what servers send on their own is
    /// dropped and counted as undelivered. At least 65536.
    #[schemars(with = "Option<usize>", extend("default" = 536_870_912))]
    max_queued_bytes_total: Option<Spanned<usize>>,
}

impl RawLimits {
    pub(super) fn validate(self, v: &Validator<'_>) -> Result<LimitsConfig, ConfigError> {
        let defaults = LimitsConfig::default();
        let max_message_bytes = v
            .at_least(self.max_message_bytes, "limits.max_message_bytes", 1024)?
            .unwrap_or(defaults.max_message_bytes);
        let max_depth = match self.max_depth {
            None => defaults.max_depth,
            // serde_json refuses nesting past 128 on its own; a larger limit
            // would promise something the parser does not do.
            Some(depth) if !(4..=128).contains(depth.get_ref()) => {
                return Err(v.error(
                    Some(depth.span()),
                    "limits.max_depth",
                    "must be between 4 and 128".into(),
                ));
            }
            Some(depth) => depth.into_inner(),
        };
        let max_list_items = v
            .at_least(self.max_list_items, "limits.max_list_items", 1)?
            .unwrap_or(defaults.max_list_items);
        let max_list_bytes = v
            .at_least(self.max_list_bytes, "limits.max_list_bytes", 65_536)?
            .unwrap_or(defaults.max_list_bytes);
        let max_queued_bytes = v
            .at_least(self.max_queued_bytes, "limits.max_queued_bytes", 65_536)?
            .unwrap_or(defaults.max_queued_bytes);
        let max_queued_bytes_total = v
            .at_least(
                self.max_queued_bytes_total,
                "limits.max_queued_bytes_total",
                65_536,
            )?
            .unwrap_or(defaults.max_queued_bytes_total);
        Ok(LimitsConfig {
            max_message_bytes,
            max_depth,
            max_list_items,
            max_list_bytes,
            max_queued_bytes,
            max_queued_bytes_total,
        })
    }
}
