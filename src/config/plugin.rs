//! `[[chain]] kind = "wasm"` entries: a WASM plugin, its limits and its own
//! config, validated into a [`PluginConfig`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::container::parse_size;
use super::{Validator, parse_duration};

/// The limits a plugin gets unless its entry sets others.
pub const DEFAULT_PLUGIN_TIMEOUT: Duration = Duration::from_millis(10);
pub const DEFAULT_PLUGIN_MEMORY: u64 = 32 * 1024 * 1024;
pub const DEFAULT_PLUGIN_POOL: usize = 4;
pub const DEFAULT_BREAKER_FAILURES: u32 = 5;
pub const DEFAULT_BREAKER_COOLDOWN: Duration = Duration::from_secs(30);
/// The longest a plugin call may take.
pub const MAX_PLUGIN_TIMEOUT: Duration = Duration::from_secs(1);
/// The most memory a plugin may be given.
pub const MAX_PLUGIN_MEMORY: u64 = 1024 * 1024 * 1024;

/// One WASM plugin in the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginConfig {
    /// Unique among the chain's plugins; the interceptor is `wasm:NAME`.
    pub name: String,
    /// The component file (`.wasm`, or `.wat` text).
    pub path: PathBuf,
    /// The file must have this SHA-256 (lower-case hex) or the proxy does not
    /// start.
    pub sha256: Option<String>,
    /// Method patterns it sees: `tools/call`, `tools/*`, `*/list`, `*`.
    pub methods: Vec<String>,
    /// Namespaced tool patterns it is limited to (`github__create_issue`,
    /// `github__*`); empty = every exchange. When set, the plugin sees only
    /// exchanges about a matching tool.
    pub tools: Vec<String>,
    pub phases: Phases,
    pub on_error: OnError,
    /// Wall-clock budget of one call (an epoch deadline).
    pub timeout: Duration,
    /// Fuel for one call (about one unit per WASM instruction), if set.
    pub fuel: Option<u64>,
    /// Linear memory cap, in bytes.
    pub memory: u64,
    pub instance: InstanceMode,
    /// Warm instances kept for reuse.
    pub pool: usize,
    /// Consecutive failures that open the circuit breaker.
    pub breaker_failures: u32,
    /// How long an open breaker stays open.
    pub breaker_cooldown: Duration,
    /// The plugin's own config, handed to `configure` as JSON.
    pub config: serde_json::Value,
}

impl PluginConfig {
    /// A plugin with every default: all methods and phases, fail closed,
    /// the default limits, pooled instances, an empty config.
    pub fn new(name: &str, path: &Path) -> Self {
        Self {
            name: name.to_owned(),
            path: path.to_owned(),
            sha256: None,
            methods: vec!["*".to_owned()],
            tools: Vec::new(),
            phases: Phases {
                request: true,
                response: true,
                notification: true,
            },
            on_error: OnError::Deny,
            timeout: DEFAULT_PLUGIN_TIMEOUT,
            fuel: None,
            memory: DEFAULT_PLUGIN_MEMORY,
            instance: InstanceMode::Pooled,
            pool: DEFAULT_PLUGIN_POOL,
            breaker_failures: DEFAULT_BREAKER_FAILURES,
            breaker_cooldown: DEFAULT_BREAKER_COOLDOWN,
            config: serde_json::Value::Object(serde_json::Map::new()),
        }
    }
}

/// Which phases of an exchange a plugin sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Phases {
    pub request: bool,
    pub response: bool,
    pub notification: bool,
}

/// What happens to a message when its plugin fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnError {
    /// Refuse it (fail closed).
    Deny,
    /// Pass it on unchanged; the failure is logged and audited.
    Continue,
}

/// How instances are used across calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InstanceMode {
    /// Warm instances are reused (state may carry from call to call).
    Pooled,
    /// A fresh instance for every call (nothing carries over).
    PerCall,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBreaker {
    failures: Option<Spanned<u32>>,
    cooldown: Option<Spanned<String>>,
}

/// One `[[chain]]` entry as written: its kind, and the fields of a `wasm`
/// entry (other kinds take none of them).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawChainEntry {
    pub(super) kind: String,
    name: Option<Spanned<String>>,
    path: Option<Spanned<PathBuf>>,
    sha256: Option<Spanned<String>>,
    methods: Option<Spanned<Vec<String>>>,
    tools: Option<Spanned<Vec<String>>>,
    phases: Option<Spanned<Vec<String>>>,
    on_error: Option<OnError>,
    timeout: Option<Spanned<String>>,
    fuel: Option<Spanned<u64>>,
    memory: Option<Spanned<String>>,
    instance: Option<InstanceMode>,
    pool: Option<Spanned<usize>>,
    breaker: Option<Spanned<RawBreaker>>,
    config: Option<Spanned<serde_json::Value>>,
}

impl RawChainEntry {
    /// The first field that is set, for an error on a non-`wasm` entry.
    pub(super) fn any_field(&self) -> Option<&'static str> {
        [
            ("name", self.name.is_some()),
            ("path", self.path.is_some()),
            ("sha256", self.sha256.is_some()),
            ("methods", self.methods.is_some()),
            ("tools", self.tools.is_some()),
            ("phases", self.phases.is_some()),
            ("on_error", self.on_error.is_some()),
            ("timeout", self.timeout.is_some()),
            ("fuel", self.fuel.is_some()),
            ("memory", self.memory.is_some()),
            ("instance", self.instance.is_some()),
            ("pool", self.pool.is_some()),
            ("breaker", self.breaker.is_some()),
            ("config", self.config.is_some()),
        ]
        .into_iter()
        .find_map(|(field, set)| set.then_some(field))
    }
}

impl Validator<'_> {
    /// A `wasm` entry of the chain; `key` is `chain[N]`.
    pub(super) fn plugin(
        &self,
        raw: RawChainEntry,
        entry: std::ops::Range<usize>,
        key: &str,
        base: &Path,
    ) -> Result<PluginConfig, super::ConfigError> {
        let at = |field: &str| format!("{key}.{field}");
        let Some(path) = raw.path else {
            return Err(self.error(
                Some(entry),
                &at("path"),
                "a `wasm` entry needs `path`: the plugin's .wasm file".into(),
            ));
        };
        let path_span = path.span();
        let path = path.into_inner();
        let path = if path.is_absolute() {
            path
        } else {
            base.join(path)
        };
        let name = match raw.name {
            Some(name) => {
                let valid = !name.get_ref().is_empty()
                    && name.get_ref().len() <= 64
                    && name
                        .get_ref()
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
                if !valid {
                    return Err(self.error(
                        Some(name.span()),
                        &at("name"),
                        format!(
                            "`{}` is not a plugin name: 1 to 64 letters, digits, `-` or `_`",
                            name.get_ref()
                        ),
                    ));
                }
                name.into_inner()
            }
            None => {
                let stem = path
                    .file_stem()
                    .and_then(|stem| stem.to_str())
                    .map(|stem| {
                        stem.chars()
                            .map(|c| {
                                if c.is_ascii_alphanumeric() || c == '-' {
                                    c
                                } else {
                                    '_'
                                }
                            })
                            .take(64)
                            .collect::<String>()
                    })
                    .filter(|stem| !stem.is_empty());
                match stem {
                    Some(stem) => stem,
                    None => {
                        return Err(self.error(
                            Some(path_span),
                            &at("path"),
                            "cannot name the plugin after this path: set `name`".into(),
                        ));
                    }
                }
            }
        };
        let sha256 = match raw.sha256 {
            None => None,
            Some(hash) => {
                let text = hash.get_ref().trim().to_ascii_lowercase();
                let text = text.strip_prefix("sha256:").unwrap_or(&text).to_owned();
                if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(self.error(
                        Some(hash.span()),
                        &at("sha256"),
                        "not a SHA-256: 64 hex digits".into(),
                    ));
                }
                Some(text)
            }
        };
        let methods = match raw.methods {
            None => vec!["*".to_owned()],
            Some(methods) => {
                let span = methods.span();
                let methods = methods.into_inner();
                if methods.is_empty() {
                    return Err(self.error(
                        Some(span),
                        &at("methods"),
                        "an empty list: the plugin would see nothing (leave `methods` out for all)"
                            .into(),
                    ));
                }
                for method in &methods {
                    if !valid_pattern(method) {
                        return Err(self.error(
                            Some(span),
                            &at("methods"),
                            format!("`{method}` is not a method pattern: a method (`tools/call`), `prefix/*`, `*/suffix` or `*`"),
                        ));
                    }
                }
                methods
            }
        };
        let tools = match raw.tools {
            None => Vec::new(),
            Some(tools) => {
                let span = tools.span();
                let tools = tools.into_inner();
                if tools.is_empty() {
                    return Err(self.error(
                        Some(span),
                        &at("tools"),
                        "an empty list: the plugin would see nothing (leave `tools` out for all)"
                            .into(),
                    ));
                }
                if let Some(bad) = tools.iter().find(|tool| {
                    let stem = tool.strip_suffix('*').unwrap_or(tool);
                    stem.contains('*') || (stem.is_empty() && tool.is_empty())
                }) {
                    return Err(self.error(
                        Some(span),
                        &at("tools"),
                        format!("`{bad}` is not a tool pattern: a namespaced tool (`github__create_issue`), `github__*` or `*`"),
                    ));
                }
                tools
            }
        };
        let phases = match raw.phases {
            None => Phases {
                request: true,
                response: true,
                notification: true,
            },
            Some(phases) => {
                let span = phases.span();
                let mut chosen = Phases {
                    request: false,
                    response: false,
                    notification: false,
                };
                for phase in phases.get_ref() {
                    match phase.as_str() {
                        "request" => chosen.request = true,
                        "response" => chosen.response = true,
                        "notification" => chosen.notification = true,
                        other => {
                            return Err(self.error(
                                Some(span),
                                &at("phases"),
                                format!(
                                    "`{other}` is not one of `request`, `response`, `notification`"
                                ),
                            ));
                        }
                    }
                }
                if !(chosen.request || chosen.response || chosen.notification) {
                    return Err(self.error(
                        Some(span),
                        &at("phases"),
                        "an empty list: the plugin would see nothing (leave `phases` out for all)"
                            .into(),
                    ));
                }
                chosen
            }
        };
        let on_error = raw.on_error.unwrap_or(OnError::Deny);
        let instance = raw.instance.unwrap_or(InstanceMode::Pooled);
        let timeout = match raw.timeout {
            None => DEFAULT_PLUGIN_TIMEOUT,
            Some(value) => plugin_timeout(value.get_ref())
                .map_err(|message| self.error(Some(value.span()), &at("timeout"), message))?,
        };
        let fuel = match raw.fuel {
            Some(fuel) if *fuel.get_ref() == 0 => {
                return Err(self.error(
                    Some(fuel.span()),
                    &at("fuel"),
                    "0 fuel: the plugin could not run at all".into(),
                ));
            }
            fuel => fuel.map(Spanned::into_inner),
        };
        let memory = match raw.memory {
            None => DEFAULT_PLUGIN_MEMORY,
            Some(value) => plugin_memory(value.get_ref())
                .map_err(|message| self.error(Some(value.span()), &at("memory"), message))?,
        };
        let pool = match raw.pool {
            None => DEFAULT_PLUGIN_POOL,
            Some(pool) if (1..=64).contains(pool.get_ref()) => pool.into_inner(),
            Some(pool) => {
                return Err(self.error(
                    Some(pool.span()),
                    &at("pool"),
                    "must be from 1 to 64 warm instances".into(),
                ));
            }
        };
        let breaker = raw.breaker.map(Spanned::into_inner).unwrap_or_default();
        let breaker_failures = match breaker.failures {
            None => DEFAULT_BREAKER_FAILURES,
            Some(failures) if *failures.get_ref() >= 1 => failures.into_inner(),
            Some(failures) => {
                return Err(self.error(
                    Some(failures.span()),
                    &at("breaker.failures"),
                    "must be at least 1".into(),
                ));
            }
        };
        let breaker_cooldown = self.duration(
            breaker.cooldown,
            &at("breaker.cooldown"),
            DEFAULT_BREAKER_COOLDOWN,
        )?;
        let config = match raw.config {
            None => serde_json::Value::Object(serde_json::Map::new()),
            Some(config) => config.into_inner(),
        };
        Ok(PluginConfig {
            name,
            path,
            sha256,
            methods,
            tools,
            phases,
            on_error,
            timeout,
            fuel,
            memory,
            instance,
            pool,
            breaker_failures,
            breaker_cooldown,
            config,
        })
    }
}

/// A plugin's `timeout`: more than 0, at most [`MAX_PLUGIN_TIMEOUT`].
pub fn plugin_timeout(text: &str) -> Result<Duration, String> {
    let timeout = parse_duration(text)?;
    if timeout.is_zero() || timeout > MAX_PLUGIN_TIMEOUT {
        return Err(format!(
            "`{text}` is not a plugin timeout: more than 0 and at most 1s (a plugin call holds one of the proxy's worker threads)"
        ));
    }
    Ok(timeout)
}

/// A plugin's `memory`: from 64k to [`MAX_PLUGIN_MEMORY`].
pub fn plugin_memory(text: &str) -> Result<u64, String> {
    match parse_size(text) {
        Some(bytes) if bytes >= 64 * 1024 && bytes as u64 <= MAX_PLUGIN_MEMORY => Ok(bytes as u64),
        _ => Err(format!(
            "`{text}` is not a memory size from 64k to 1g, like `32m`"
        )),
    }
}

/// `tools/call`, `tools/*`, `*/list` or `*`.
fn valid_pattern(pattern: &str) -> bool {
    let name = |part: &str| {
        !part.is_empty()
            && part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'-' | b'.'))
    };
    pattern == "*"
        || pattern.strip_suffix("/*").is_some_and(name)
        || pattern.strip_prefix("*/").is_some_and(name)
        || name(pattern)
}

/// Whether `method` matches one of `patterns` (validated by the config).
pub fn method_matches(patterns: &[String], method: &str) -> bool {
    patterns.iter().any(|pattern| {
        pattern == "*"
            || pattern == method
            || pattern.strip_suffix("/*").is_some_and(|prefix| {
                method
                    .strip_prefix(prefix)
                    .is_some_and(|rest| rest.starts_with('/'))
            })
            || pattern.strip_prefix("*/").is_some_and(|suffix| {
                method
                    .strip_suffix(suffix)
                    .is_some_and(|rest| rest.ends_with('/'))
            })
    })
}

/// Whether a namespaced tool name matches one of `patterns` (exact, or a
/// prefix ending in `*`).
pub fn tool_matches(patterns: &[String], tool: &str) -> bool {
    patterns
        .iter()
        .any(|pattern| match pattern.strip_suffix('*') {
            Some(prefix) => tool.starts_with(prefix),
            None => pattern == tool,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_patterns() {
        let patterns = |list: &[&str]| list.iter().map(|p| (*p).to_owned()).collect::<Vec<_>>();
        assert!(method_matches(&patterns(&["*"]), "tools/call"));
        assert!(method_matches(&patterns(&["tools/call"]), "tools/call"));
        assert!(!method_matches(&patterns(&["tools/call"]), "tools/list"));
        assert!(method_matches(&patterns(&["*/list"]), "resources/list"));
        assert!(!method_matches(
            &patterns(&["*/list"]),
            "resources/templates/listing"
        ));
        assert!(method_matches(
            &patterns(&["resources/*"]),
            "resources/templates/list"
        ));
        assert!(!method_matches(&patterns(&["tools/*"]), "toolsx/call"));
        assert!(!method_matches(&patterns(&["*/list"]), "xlist"));
        assert!(tool_matches(
            &patterns(&["github__*"]),
            "github__create_issue"
        ));
        assert!(tool_matches(&patterns(&["*"]), "x__y"));
        assert!(!tool_matches(
            &patterns(&["github__create"]),
            "github__create_issue"
        ));
        assert!(valid_pattern("notifications/tools/list_changed"));
        assert!(!valid_pattern("tools/*/x"));
        assert!(!valid_pattern(""));
        assert!(!valid_pattern("**"));
    }
}
