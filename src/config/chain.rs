//! `[[chain]]`: the order of the interceptors, and where each one that is
//! on goes when the config does not place it.

use std::ops::Range;

use toml::Spanned;

use super::plugin::{ChainKind, RawChainEntry};
use super::{ConfigError, PluginConfig, ProxyConfig, Validator};

/// One `[[chain]]` entry: which interceptor runs at this position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainEntry {
    Limits,
    Ratelimit,
    Authz,
    Pinning,
    Schema,
    Redact,
    /// A WASM plugin.
    Wasm(Box<PluginConfig>),
}

impl ChainEntry {
    /// The kind, as `[[chain]] kind` names it.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Limits => "limits",
            Self::Ratelimit => "ratelimit",
            Self::Authz => "authz",
            Self::Pinning => "pinning",
            Self::Schema => "schema",
            Self::Redact => "redact",
            Self::Wasm(_) => "wasm",
        }
    }
}

/// Where an interceptor goes in the default chain.
enum Placement {
    /// Right after `limits`.
    AfterLimits,
    /// At the end.
    Last,
}

/// The native interceptors the config switches on or off: each has a
/// default place, and an explicit chain must place it while it is on.
#[derive(Debug, Clone, Copy)]
pub(super) enum Switchable {
    Authz,
    Ratelimit,
    Pinning,
    Schema,
    Redact,
}

impl Switchable {
    fn entry(self) -> ChainEntry {
        match self {
            Self::Authz => ChainEntry::Authz,
            Self::Ratelimit => ChainEntry::Ratelimit,
            Self::Pinning => ChainEntry::Pinning,
            Self::Schema => ChainEntry::Schema,
            Self::Redact => ChainEntry::Redact,
        }
    }

    fn placement(self) -> Placement {
        match self {
            // Policies are enforced right after `limits`; quotas too (a
            // refused call costs nothing more).
            Self::Authz | Self::Ratelimit => Placement::AfterLimits,
            // Pinning after `authz` (a client never learns of a tool it may
            // not see), before `schema`; schema validation after `authz` (a
            // call it refuses is not checked further); secret scanning last
            // of the native ones (plugins follow it): responses run the chain
            // in reverse, so on the way back it scans what every plugin
            // left, and the stages after it only remove items or refuse.
            Self::Pinning | Self::Schema | Self::Redact => Placement::Last,
        }
    }

    /// What an explicit chain that leaves it out is told.
    fn missing(self) -> &'static str {
        match self {
            Self::Authz => {
                "`[proxy] policies` is set but the `[[chain]]` has no `authz` entry: add `[[chain]] kind = \"authz\"` where policies should run"
            }
            Self::Ratelimit => {
                "`[ratelimit]` sets quotas but the `[[chain]]` has no `ratelimit` entry: add `[[chain]] kind = \"ratelimit\"` where quotas should apply"
            }
            Self::Pinning => {
                "tool pinning is on but the `[[chain]]` has no `pinning` entry: add `[[chain]] kind = \"pinning\"` where it should run, or set `[pinning] enabled = false`"
            }
            Self::Schema => {
                "schema validation is on but the `[[chain]]` has no `schema` entry: add `[[chain]] kind = \"schema\"` where it should run, or set `[schema] enabled = false`"
            }
            Self::Redact => {
                "secret scanning is on but the `[[chain]]` has no `redact` entry: add `[[chain]] kind = \"redact\"` where it should run, or set `[redact] enabled = false`"
            }
        }
    }
}

/// The chain while it is assembled: the entries the config placed, then
/// each native interceptor that is on put in its place ([`Chain::place`]).
pub(super) struct Chain {
    entries: Vec<ChainEntry>,
    /// Plugins of a chain that names no native interceptor: they run after
    /// all of them, in config order.
    plugins: Vec<ChainEntry>,
    /// The first entry naming a native interceptor: the chain is then the
    /// whole order, and every interceptor that is on must be in it.
    explicit: Option<Range<usize>>,
}

impl Chain {
    /// The entries as written, with `limits` first unless placed.
    pub(super) fn parse(
        v: &Validator<'_>,
        raw: Vec<Spanned<RawChainEntry>>,
        proxy: &ProxyConfig,
    ) -> Result<Self, ConfigError> {
        // A chain of plugins only leaves the native interceptors in their
        // default order, with the plugins after them; a chain that names a
        // native interceptor is the whole order.
        let explicit = raw
            .iter()
            .find(|entry| entry.get_ref().kind != ChainKind::Wasm)
            .map(Spanned::span);
        let mut chain = Self {
            entries: Vec::new(),
            plugins: Vec::new(),
            explicit,
        };
        for (at, entry) in v.entries(raw, "chain") {
            let parsed = match native(entry.kind) {
                Some(native) => {
                    if let Some(field) = entry.any_field() {
                        return Err(at.error(
                            &format!(".{field}"),
                            format!(
                                "only `wasm` entries take `{field}`; `{}` is configured in its own section",
                                native.name()
                            ),
                        ));
                    }
                    if native == ChainEntry::Authz && proxy.policies.is_none() {
                        return Err(at.error(
                            ".kind",
                            "`authz` needs `[proxy] policies`: the folder with the Cedar schema and policies".into(),
                        ));
                    }
                    native
                }
                None => {
                    let plugin = entry.plugin(&at)?;
                    let taken = chain.entries.iter().chain(&chain.plugins).any(|placed| {
                        matches!(placed, ChainEntry::Wasm(other) if other.name == plugin.name)
                    });
                    if taken {
                        return Err(at.error(
                            ".name",
                            format!(
                                "two plugins are named `{}`: set `name` on one of them",
                                plugin.name
                            ),
                        ));
                    }
                    let parsed = ChainEntry::Wasm(Box::new(plugin));
                    if chain.explicit.is_none() {
                        chain.plugins.push(parsed);
                        continue;
                    }
                    parsed
                }
            };
            if chain.entries.contains(&parsed) {
                return Err(at.error(
                    ".kind",
                    format!("`{}` appears twice in the chain", parsed.name()),
                ));
            }
            chain.entries.push(parsed);
        }
        // `limits` guards every other interceptor's input: it always runs,
        // first unless the config places it.
        if !chain.entries.contains(&ChainEntry::Limits) {
            chain.entries.insert(0, ChainEntry::Limits);
        }
        Ok(chain)
    }

    /// Puts a native interceptor that is `on` in its default place, unless
    /// the config placed it (an explicit chain must); one that is off is
    /// taken out.
    pub(super) fn place(
        &mut self,
        v: &Validator<'_>,
        interceptor: Switchable,
        on: bool,
    ) -> Result<(), ConfigError> {
        let entry = interceptor.entry();
        if !on {
            self.entries.retain(|placed| *placed != entry);
            return Ok(());
        }
        if self.entries.contains(&entry) {
            return Ok(());
        }
        if let Some(span) = &self.explicit {
            return Err(v.error(
                Some(span.clone()),
                "chain",
                interceptor.missing().to_owned(),
            ));
        }
        match interceptor.placement() {
            Placement::AfterLimits => {
                let position = self
                    .entries
                    .iter()
                    .position(|placed| *placed == ChainEntry::Limits)
                    .map_or(0, |i| i + 1);
                self.entries.insert(position, entry);
            }
            Placement::Last => self.entries.push(entry),
        }
        Ok(())
    }

    /// The whole chain: the plugins of a chain of plugins only run after
    /// the native interceptors, in config order.
    pub(super) fn finish(mut self) -> Vec<ChainEntry> {
        self.entries.extend(self.plugins);
        self.entries
    }
}

/// A native interceptor's entry; `None` for `wasm`, whose entry needs its
/// plugin ([`RawChainEntry::plugin`]).
fn native(kind: ChainKind) -> Option<ChainEntry> {
    match kind {
        ChainKind::Limits => Some(ChainEntry::Limits),
        ChainKind::Ratelimit => Some(ChainEntry::Ratelimit),
        ChainKind::Authz => Some(ChainEntry::Authz),
        ChainKind::Pinning => Some(ChainEntry::Pinning),
        ChainKind::Schema => Some(ChainEntry::Schema),
        ChainKind::Redact => Some(ChainEntry::Redact),
        ChainKind::Wasm => None,
    }
}
