//! `[[chain]]` entries as written, and `kind = "wasm"` entries validated
//! into a [`PluginConfig`]: a WASM plugin, its limits and its own config.
//! Every key of an entry but `kind` belongs to a `wasm` entry.

use std::path::{Path, PathBuf};
use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;
use toml::Spanned;

use super::names::valid_plugin_name;
use super::values::{DurationText, PathText, SizeText};
use super::{ConfigError, Entry, parse_duration, parse_size};

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
    /// exchanges about a matching tool (its calls, and the requests of the
    /// 2026-07-28 tasks they made, `tasks/*`, which `methods` must name).
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum OnError {
    /// Refuse it (fail closed).
    Deny,
    /// Pass it on unchanged; the failure is logged and audited.
    Continue,
}

/// How instances are used across calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum InstanceMode {
    /// Warm instances are reused (state may carry from call to call).
    Pooled,
    /// A fresh instance for every call (nothing carries over).
    PerCall,
}

/// `phases`: a phase of an exchange a plugin may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub(super) enum Phase {
    /// A request or notification on its way to the server (or, from a
    /// server, to the client).
    Request,
    /// The reply on its way back.
    Response,
    /// A notification.
    Notification,
}

/// `[[chain]] kind`: the interceptor an entry places.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub(super) enum ChainKind {
    /// Envelope validity, message size and depth (`[limits]`); always in the
    /// chain, first unless placed.
    Limits,
    /// Quotas (`[ratelimit]`).
    Ratelimit,
    /// Cedar policies (`[proxy] policies`).
    Authz,
    /// Tool pinning and the poisoning scan (`[pinning]`).
    Pinning,
    /// Arguments and results against the tools' schemas (`[schema]`).
    Schema,
    /// Secret scanning (`[redact]`).
    Redact,
    /// A WASM plugin, set by the keys below.
    Wasm,
}

/// `breaker` as written.
#[derive(Deserialize, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBreaker {
    /// Failures in a row that open the breaker: the plugin is not called,
    /// and its messages are handled by `on_error`; at least 1.
    #[schemars(with = "Option<u32>", extend("default" = DEFAULT_BREAKER_FAILURES))]
    failures: Option<Spanned<u32>>,
    /// How long an open breaker stays open.
    #[schemars(with = "Option<DurationText>", extend("default" = "30s"))]
    cooldown: Option<Spanned<String>>,
}

/// One `[[chain]]` entry as written: its kind, and the keys of a `wasm`
/// entry (other kinds take none of them).
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawChainEntry {
    /// The interceptor at this place of the chain.
    pub(super) kind: ChainKind,
    /// The plugin's name, unique in the chain: 1 to 64 letters, digits, `-`
    /// or `_`. Its interceptor is `wasm:NAME`.
    #[schemars(
        with = "Option<String>",
        extend("x-default" = "the file's name without its extension")
    )]
    name: Option<Spanned<String>>,
    /// The plugin: a WebAssembly component (`.wasm`, or `.wat` text).
    /// Required for `wasm`.
    #[schemars(with = "Option<PathText>")]
    path: Option<Spanned<PathBuf>>,
    /// The file's SHA-256 (64 hex digits, `sha256:` before them allowed):
    /// the proxy does not start with another file.
    #[schemars(with = "Option<String>")]
    sha256: Option<Spanned<String>>,
    /// The methods whose messages it sees: a method (`tools/call`),
    /// `prefix/*`, `*/suffix` or `*`.
    #[schemars(with = "Option<Vec<String>>", extend("default" = ["*"]))]
    methods: Option<Spanned<Vec<String>>>,
    /// Only exchanges about these namespaced tools: a name
    /// (`github__create_issue`) or a prefix ending in `*` (`github__*`).
    /// A 2026-07-28 task's requests (`tasks/*`) are about the tool whose
    /// call made the task.
    #[schemars(with = "Option<Vec<String>>", extend("x-default" = "every exchange"))]
    tools: Option<Spanned<Vec<String>>>,
    /// The phases of an exchange it sees.
    #[schemars(
        with = "Option<Vec<Phase>>",
        extend("default" = ["request", "response", "notification"])
    )]
    phases: Option<Spanned<Vec<Phase>>>,
    /// What happens to a message when the plugin fails (traps, overruns,
    /// returns something invalid).
    #[schemars(extend("default" = "deny"))]
    on_error: Option<OnError>,
    /// The wall-clock budget of one call, at most `1s`.
    #[schemars(with = "Option<DurationText>", extend("default" = "10ms"))]
    timeout: Option<Spanned<String>>,
    /// An instruction budget per call besides `timeout` (about one unit per
    /// WASM instruction); at least 1.
    #[schemars(with = "Option<u64>")]
    fuel: Option<Spanned<u64>>,
    /// The cap on the plugin's linear memory, from `64k` to `1g`.
    #[schemars(with = "Option<SizeText>", extend("default" = "32m"))]
    memory: Option<Spanned<String>>,
    /// How instances serve calls.
    #[schemars(extend("default" = "pooled"))]
    instance: Option<InstanceMode>,
    /// Warm instances kept for reuse, from 1 to 64.
    #[schemars(with = "Option<usize>", extend("default" = DEFAULT_PLUGIN_POOL))]
    pool: Option<Spanned<usize>>,
    /// The circuit breaker.
    #[schemars(with = "Option<RawBreaker>")]
    breaker: Option<Spanned<RawBreaker>>,
    /// The plugin's own config, handed to its `configure` as JSON.
    #[schemars(with = "Option<serde_json::Value>", extend("default" = {}))]
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

    /// A `wasm` entry; `at` is the entry (`chain[N]`).
    pub(super) fn plugin(self, at: &Entry<'_>) -> Result<PluginConfig, ConfigError> {
        let Some(path) = self.path else {
            return Err(at.error(
                ".path",
                "a `wasm` entry needs `path`: the plugin's .wasm file".into(),
            ));
        };
        let path_span = path.span();
        let path = at.validator.resolve(path.into_inner());
        let name = match self.name {
            Some(name) => {
                if !valid_plugin_name(name.get_ref()) {
                    return Err(at.error_in(
                        name.span(),
                        ".name",
                        format!(
                            "`{}` is not a plugin name: 1 to 64 letters, digits, `-` or `_`",
                            name.get_ref()
                        ),
                    ));
                }
                name.into_inner()
            }
            None => name_after(&path).ok_or_else(|| {
                at.error_in(
                    path_span,
                    ".path",
                    "cannot name the plugin after this path: set `name`".into(),
                )
            })?,
        };
        let sha256 = match self.sha256 {
            None => None,
            Some(hash) => {
                let text = hash.get_ref().trim().to_ascii_lowercase();
                let text = text.strip_prefix("sha256:").unwrap_or(&text).to_owned();
                if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(at.error_in(
                        hash.span(),
                        ".sha256",
                        "not a SHA-256: 64 hex digits".into(),
                    ));
                }
                Some(text)
            }
        };
        let methods = patterns(
            at,
            self.methods,
            "methods",
            valid_pattern,
            "a method pattern: a method (`tools/call`), `prefix/*`, `*/suffix` or `*`",
        )?
        .unwrap_or_else(|| vec!["*".to_owned()]);
        let tools = patterns(
            at,
            self.tools,
            "tools",
            valid_tool_pattern,
            "a tool pattern: a namespaced tool (`github__create_issue`), `github__*` or `*`",
        )?
        .unwrap_or_default();
        let phases = phases(at, self.phases)?;
        let limits = Limits::validate(at, self.timeout, self.fuel, self.memory, self.pool)?;
        let breaker = self.breaker.map(Spanned::into_inner).unwrap_or_default();
        let breaker_failures = at
            .validator
            .at_least(breaker.failures, &format!("{}.breaker.failures", at.key), 1)?
            .unwrap_or(DEFAULT_BREAKER_FAILURES);
        let breaker_cooldown = at
            .validator
            .parsed(
                breaker.cooldown.as_ref(),
                &format!("{}.breaker.cooldown", at.key),
                parse_duration,
            )?
            .unwrap_or(DEFAULT_BREAKER_COOLDOWN);
        Ok(PluginConfig {
            name,
            path,
            sha256,
            methods,
            tools,
            phases,
            on_error: self.on_error.unwrap_or(OnError::Deny),
            timeout: limits.timeout,
            fuel: limits.fuel,
            memory: limits.memory,
            instance: self.instance.unwrap_or(InstanceMode::Pooled),
            pool: limits.pool,
            breaker_failures,
            breaker_cooldown,
            config: match self.config {
                None => serde_json::Value::Object(serde_json::Map::new()),
                Some(config) => config.into_inner(),
            },
        })
    }
}

/// A plugin named after its file: the stem, each character other than a
/// letter, a digit or `-` made `_`.
fn name_after(path: &Path) -> Option<String> {
    path.file_stem()
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
        .filter(|stem| !stem.is_empty())
}

/// `methods` or `tools`: not empty (leaving the key out means all), each
/// pattern valid; `what` says what a valid one is.
fn patterns(
    at: &Entry<'_>,
    raw: Option<Spanned<Vec<String>>>,
    field: &str,
    valid: impl Fn(&str) -> bool,
    what: &str,
) -> Result<Option<Vec<String>>, ConfigError> {
    let Some(patterns) = raw else {
        return Ok(None);
    };
    let span = patterns.span();
    let patterns = patterns.into_inner();
    if patterns.is_empty() {
        return Err(at.error_in(
            span,
            &format!(".{field}"),
            format!("an empty list: the plugin would see nothing (leave `{field}` out for all)"),
        ));
    }
    if let Some(bad) = patterns.iter().find(|pattern| !valid(pattern)) {
        return Err(at.error_in(span, &format!(".{field}"), format!("`{bad}` is not {what}")));
    }
    Ok(Some(patterns))
}

/// A tool pattern: a namespaced tool, or a prefix ending in `*`.
fn valid_tool_pattern(tool: &str) -> bool {
    let stem = tool.strip_suffix('*').unwrap_or(tool);
    !(stem.contains('*') || (stem.is_empty() && tool.is_empty()))
}

fn phases(at: &Entry<'_>, raw: Option<Spanned<Vec<Phase>>>) -> Result<Phases, ConfigError> {
    let Some(phases) = raw else {
        return Ok(Phases {
            request: true,
            response: true,
            notification: true,
        });
    };
    let chosen = Phases {
        request: phases.get_ref().contains(&Phase::Request),
        response: phases.get_ref().contains(&Phase::Response),
        notification: phases.get_ref().contains(&Phase::Notification),
    };
    if !(chosen.request || chosen.response || chosen.notification) {
        return Err(at.error_in(
            phases.span(),
            ".phases",
            "an empty list: the plugin would see nothing (leave `phases` out for all)".into(),
        ));
    }
    Ok(chosen)
}

/// A plugin's budget per call and its instances.
struct Limits {
    timeout: Duration,
    fuel: Option<u64>,
    memory: u64,
    pool: usize,
}

impl Limits {
    fn validate(
        at: &Entry<'_>,
        timeout: Option<Spanned<String>>,
        fuel: Option<Spanned<u64>>,
        memory: Option<Spanned<String>>,
        pool: Option<Spanned<usize>>,
    ) -> Result<Self, ConfigError> {
        let key = |field: &str| format!("{}.{field}", at.key);
        let timeout = at
            .validator
            .parsed(timeout.as_ref(), &key("timeout"), plugin_timeout)?
            .unwrap_or(DEFAULT_PLUGIN_TIMEOUT);
        let fuel = match fuel {
            Some(fuel) if *fuel.get_ref() == 0 => {
                return Err(at.error_in(
                    fuel.span(),
                    ".fuel",
                    "0 fuel: the plugin could not run at all".into(),
                ));
            }
            fuel => fuel.map(Spanned::into_inner),
        };
        let memory = at
            .validator
            .parsed(memory.as_ref(), &key("memory"), plugin_memory)?
            .unwrap_or(DEFAULT_PLUGIN_MEMORY);
        let pool = match pool {
            None => DEFAULT_PLUGIN_POOL,
            Some(pool) if (1..=64).contains(pool.get_ref()) => pool.into_inner(),
            Some(pool) => {
                return Err(at.error_in(
                    pool.span(),
                    ".pool",
                    "must be from 1 to 64 warm instances".into(),
                ));
            }
        };
        Ok(Self {
            timeout,
            fuel,
            memory,
            pool,
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
