//! The TOML config (`portcullis.toml`): types, defaults and validation.
//!
//! A config is parsed and checked once, at load, into [`Config`]; nothing is
//! re-validated on the hot path. Unknown keys are refused, and every error
//! names the file, the line and column where it can, and the key's path.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

mod container;
mod listener;
mod plugin;

pub use container::{
    BindMount, ContainerSpec, Fifos, Isolation, PullPolicy, Sandbox, StartPolicy, TmpfsMount,
    parse_size,
};
pub use listener::{ListenerConfig, TlsConfig};
use plugin::RawChainEntry;
pub use plugin::{
    DEFAULT_PLUGIN_MEMORY, InstanceMode, OnError, Phases, PluginConfig, method_matches,
    plugin_memory, plugin_timeout, tool_matches,
};

/// A config that failed to load.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based line and column, where known.
    pub location: Option<(usize, usize)>,
    /// The key's path, e.g. `servers[1].process.command`.
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some((line, column)) = self.location {
            write!(f, ":{line}:{column}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": `{key}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// The whole, validated config.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from; relative paths inside it resolve against its folder.
    pub file: PathBuf,
    pub proxy: ProxyConfig,
    pub listener: ListenerConfig,
    pub limits: LimitsConfig,
    pub clients: Vec<ClientConfig>,
    pub auditors: Vec<AuditorConfig>,
    pub servers: Vec<ServerConfig>,
    pub chain: Vec<ChainEntry>,
    pub audit: AuditConfig,
    pub redact: RedactConfig,
    pub ratelimit: RatelimitConfig,
    pub schema: SchemaConfig,
    pub pinning: PinningConfig,
    pub observability: ObservabilityConfig,
}

/// `[observability]`: what the proxy tells operators about itself.
#[derive(Debug, Clone, PartialEq)]
pub struct ObservabilityConfig {
    /// Counts and times exchanges for `GET /metrics` (on unless
    /// `metrics = false`).
    pub metrics: bool,
    /// OpenTelemetry traces exported over OTLP/HTTP (`[observability.traces]`;
    /// off when the table is absent).
    pub traces: Option<TracesConfig>,
}

impl Default for ObservabilityConfig {
    fn default() -> Self {
        Self {
            metrics: true,
            traces: None,
        }
    }
}

/// `[observability.traces]`: where spans go and how many.
#[derive(Debug, Clone, PartialEq)]
pub struct TracesConfig {
    /// The collector's OTLP/HTTP traces URL (JSON is posted to it as is).
    pub endpoint: String,
    /// Headers of every export request; a value may end in a secret
    /// reference (`"Bearer secret:otlp_token"`).
    pub headers: Vec<(String, HeaderValue)>,
    pub secrets: Vec<(String, SecretRef)>,
    /// The share of new traces recorded (a caller's `traceparent` decides
    /// for its own trace).
    pub sample_ratio: f64,
    pub service_name: String,
}

/// The collector a `[observability.traces]` table without `endpoint` sends to.
pub const DEFAULT_TRACES_ENDPOINT: &str = "http://127.0.0.1:4318/v1/traces";

/// Headers for an HTTP client, with secret references resolved from
/// `secrets` (name, value). Values are marked sensitive (never printed).
pub fn resolve_headers(
    headers: &[(String, HeaderValue)],
    secrets: &[(String, String)],
) -> Result<reqwest::header::HeaderMap, String> {
    let mut map = reqwest::header::HeaderMap::new();
    for (name, value) in headers {
        let text = match value {
            HeaderValue::Literal(text) => text.clone(),
            HeaderValue::Secret { prefix, secret } => {
                let value = secrets
                    .iter()
                    .find(|(key, _)| key == secret)
                    .map(|(_, value)| value)
                    .ok_or_else(|| format!("secret `{secret}` is not defined"))?;
                format!("{prefix}{value}")
            }
        };
        let name = reqwest::header::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("`{name}` is not a valid header name"))?;
        let mut value = reqwest::header::HeaderValue::from_str(&text)
            .map_err(|_| format!("the value of header `{name}` is not valid"))?;
        value.set_sensitive(true);
        map.insert(name, value);
    }
    Ok(map)
}

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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FirstUse {
    /// Trust on first use: the definition seen first is pinned.
    #[default]
    Pin,
    /// Only tools the pin file names are served; others await approval.
    Deny,
}

/// `[pinning] on_change`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnChange {
    /// Withheld from lists, calls refused, until approved.
    #[default]
    Deny,
    /// Served, with a warning in the log and the audit record.
    Warn,
}

/// `[pinning] poisoning`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Poisoning {
    /// Flagged in lists (`_meta`), the log and the audit log; served.
    #[default]
    Flag,
    /// Withheld and refused unless a person approved that very definition.
    Deny,
    /// Not scanned.
    Off,
}

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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputAction {
    /// The result is replaced by a JSON-RPC error.
    #[default]
    Deny,
    /// Logged and passed on.
    Log,
}

/// `[ratelimit]`: quotas per client, per client and server, per client and
/// tool. Off when it names none.
#[derive(Debug, Clone, Default)]
pub struct RatelimitConfig {
    pub rules: Vec<RateRule>,
    /// Per-server limits on requests in flight.
    pub concurrency: Vec<Concurrency>,
}

/// `{ server, max_in_flight, queue }`: at most `max_in_flight` requests
/// to the server at once; up to `queue` more wait (no longer than the
/// server's call timeout); past that, requests are refused at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Concurrency {
    pub server: String,
    pub max_in_flight: usize,
    pub queue: usize,
}

impl RatelimitConfig {
    pub fn enabled(&self) -> bool {
        !self.rules.is_empty()
    }
}

/// One quota and what it applies to. Each client has its own budget under
/// every rule that applies to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateRule {
    /// The client it is for; `None`: every client (each its own budget).
    pub client: Option<String>,
    pub scope: RateScope,
    pub quota: Quota,
    /// Where it was written (`ratelimit.rules[2]`, `ratelimit.default`).
    pub key: String,
}

/// What a rate rule counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateScope {
    /// Every request the client sends (but `initialize` and `ping`).
    Client,
    /// Requests routed to one server.
    Server(String),
    /// Calls of one tool (`tools/call`).
    Tool { server: String, tool: String },
}

impl RateScope {
    pub fn level(&self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Server(_) => "server",
            Self::Tool { .. } => "tool",
        }
    }
}

/// `count` calls per `period`, up to `burst` at once (`count` unless set):
/// `"60/min"`, `"5/s"`, `"1000/h burst 50"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub count: u32,
    pub period: Duration,
    pub burst: u32,
}

impl fmt::Display for Quota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.period.as_secs();
        let unit = match secs {
            1 => "s".to_owned(),
            60 => "min".to_owned(),
            3600 => "h".to_owned(),
            86_400 => "day".to_owned(),
            _ => format!("{}ms", self.period.as_millis()),
        };
        write!(f, "{}/{unit}", self.count)?;
        if self.burst != self.count {
            write!(f, " burst {}", self.burst)?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Quota {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let invalid = || {
            format!(
                "`{text}` is not a quota like `60/min`, `5/s`, `1000/h` or `100/day`, optionally followed by `burst N`"
            )
        };
        let mut words = text.split_whitespace();
        let rate = words.next().ok_or_else(invalid)?;
        let burst = match (words.next(), words.next(), words.next()) {
            (None, _, _) => None,
            (Some("burst"), Some(n), None) => Some(n.parse::<u32>().map_err(|_| invalid())?),
            _ => return Err(invalid()),
        };
        let (count, unit) = rate.split_once('/').ok_or_else(invalid)?;
        let count: u32 = count.parse().map_err(|_| invalid())?;
        let period = match unit {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            "d" | "day" => Duration::from_secs(86_400),
            _ => return Err(invalid()),
        };
        if count == 0 {
            return Err(format!(
                "`{text}`: a quota allows at least one call (to refuse a tool, use a policy)"
            ));
        }
        let burst = burst.unwrap_or(count);
        if burst == 0 {
            return Err(format!("`{text}`: a burst is at least 1"));
        }
        Ok(Self {
            count,
            period,
            burst,
        })
    }
}

/// `[redact]`: secret scanning. On unless `enabled = false`.
#[derive(Debug, Clone)]
pub struct RedactConfig {
    pub enabled: bool,
    /// For messages on their way to a server.
    pub requests: RedactAction,
    /// For messages on their way to the client.
    pub responses: RedactAction,
    /// A custom rule file, in the built-in rules' format.
    pub extra_rules: Option<PathBuf>,
    /// Rule ids that do not run at all.
    pub disable: Vec<Located<String>>,
    /// Values never reported, whatever the rule.
    pub allow: Vec<String>,
    /// Values never reported when one of these matches them.
    pub allow_regex: Vec<regex::bytes::Regex>,
    /// `[redact.rules.<id>]`: one rule's actions.
    pub rules: Vec<RuleActions>,
}

impl Default for RedactConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            requests: RedactAction::Redact,
            responses: RedactAction::Redact,
            extra_rules: None,
            disable: Vec::new(),
            allow: Vec::new(),
            allow_regex: Vec::new(),
            rules: Vec::new(),
        }
    }
}

/// One rule's actions, overriding `[redact] requests` / `responses`.
#[derive(Debug, Clone)]
pub struct RuleActions {
    pub id: Located<String>,
    pub requests: Option<RedactAction>,
    pub responses: Option<RedactAction>,
}

/// What happens to a message carrying a secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedactAction {
    /// The secret is replaced by `[REDACTED:<rule-id>]`.
    Redact,
    /// The message is refused with an error naming the rule.
    Deny,
    /// Counted (audit record, log) and passed on unchanged.
    Log,
    /// Not looked for.
    Off,
}

impl RedactAction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Redact => "redact",
            Self::Deny => "deny",
            Self::Log => "log",
            Self::Off => "off",
        }
    }

    fn parse(text: &str) -> Result<Self, String> {
        match text {
            "redact" => Ok(Self::Redact),
            "deny" => Ok(Self::Deny),
            "log" => Ok(Self::Log),
            "off" => Ok(Self::Off),
            other => Err(format!("`{other}` is not `redact`, `deny`, `log` or `off`")),
        }
    }
}

/// A value from the config with where it was written, for errors found
/// after loading (e.g. a rule id no rule file defines).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located<T> {
    pub value: T,
    pub file: PathBuf,
    /// 1-based line and column.
    pub location: Option<(usize, usize)>,
    /// The key's path, e.g. `redact.disable[0]`.
    pub key: String,
}

impl<T> Located<T> {
    /// An error about this value, in the config's error format.
    pub fn error(&self, message: String) -> ConfigError {
        ConfigError {
            file: self.file.clone(),
            location: self.location,
            key: Some(self.key.clone()),
            message,
        }
    }
}

/// `[audit] checkpoint_every` and `checkpoint_interval` by default.
pub const CHECKPOINT_EVERY: u64 = 1000;
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(60);

/// `[audit]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    pub durability: Durability,
    pub retention: Retention,
    /// Whether exchange records keep the call's arguments.
    pub arguments: AuditArguments,
    /// The chain key (hex): records are sealed with HMAC-SHA256 under it.
    pub key: Option<SecretRef>,
    /// The Ed25519 key (PKCS#8, hex) that signs checkpoints of the head.
    pub signing_key: Option<SecretRef>,
    /// A signed checkpoint after this many records…
    pub checkpoint_every: u64,
    /// …or this long after the last one (at the next write, and at stop).
    pub checkpoint_interval: Duration,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            durability: Durability::default(),
            retention: Retention::default(),
            arguments: AuditArguments::default(),
            key: None,
            signing_key: None,
            checkpoint_every: CHECKPOINT_EVERY,
            checkpoint_interval: CHECKPOINT_INTERVAL,
        }
    }
}

/// `[audit] arguments`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuditArguments {
    /// Only their SHA-256.
    #[default]
    None,
    /// Kept after every secret-scanning rule has redacted them (whatever
    /// `[redact]` does to the forwarded message).
    Redacted,
}

/// `[audit] max_age` and `max_records`: how much of the log is kept (all of
/// it when neither is set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Retention {
    pub max_age: Option<Duration>,
    pub max_records: Option<u64>,
}

impl Retention {
    pub fn keeps_everything(&self) -> bool {
        self.max_age.is_none() && self.max_records.is_none()
    }
}

/// When a record is on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Flushed before the reply is sent (the default).
    #[default]
    Durable,
    /// Written before the reply, flushed within 10 ms: a crash of the
    /// machine (not of the proxy) can lose the last 10 ms of records.
    Buffered,
}

#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub listen: Option<SocketAddr>,
    pub data_dir: PathBuf,
    pub policies: Option<PathBuf>,
    /// How often the policy folder is checked for changes (a SIGHUP
    /// reloads at once).
    pub policy_poll: Duration,
    /// The static `portcullis-bridge`, for container servers with
    /// `stdio = "fifo"`.
    pub bridge: Option<PathBuf>,
    pub namespace_separator: String,
    pub call_timeout: Duration,
    pub startup_timeout: Duration,
    pub allowed_origins: Vec<String>,
    /// Host names (and addresses) the `Host` header may name, besides this
    /// machine's loopback names and the listen address itself.
    pub allowed_hosts: Vec<String>,
    pub list_page_size: usize,
    pub max_sessions: usize,
    /// Sessions one client may hold at once (at most `max_sessions`).
    pub max_sessions_per_client: usize,
    pub session_idle_timeout: Duration,
}

#[derive(Debug, Clone, Copy)]
pub struct LimitsConfig {
    pub max_message_bytes: usize,
    pub max_depth: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_message_bytes: 4 * 1024 * 1024,
            max_depth: 64,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub name: String,
    /// Lower-case hex SHA-256 of the bearer token; `None` for stdio-only clients.
    pub token_sha256: Option<String>,
    /// Lower-case hex SHA-256 of the client's TLS certificate (DER), when it
    /// may authenticate with one (`[listener] tls_client_ca`).
    pub cert_sha256: Option<String>,
    pub groups: Vec<String>,
    /// Attributes of the client's Cedar entity (strings, integers, booleans
    /// and arrays of those).
    pub attributes: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Clone)]
pub struct AuditorConfig {
    pub name: String,
    pub token_sha256: String,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub name: String,
    pub kind: UpstreamSpec,
    /// Per-call timeout; the proxy's `call_timeout` unless the server sets one.
    pub call_timeout: Duration,
    pub secrets: BTreeMap<String, SecretRef>,
}

#[derive(Debug, Clone)]
pub enum UpstreamSpec {
    Process(ProcessSpec),
    Remote(RemoteSpec),
    Container(Box<ContainerSpec>),
}

impl UpstreamSpec {
    pub fn kind_name(&self) -> &'static str {
        match self {
            Self::Process(_) => "process",
            Self::Remote(_) => "remote",
            Self::Container(_) => "container",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessSpec {
    pub command: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub cwd: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct RemoteSpec {
    pub url: String,
    pub headers: Vec<(String, HeaderValue)>,
}

/// A header value: literal text, or text ending in a secret reference
/// (`"Bearer secret:github_token"`) resolved when the connection opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderValue {
    Literal(String),
    Secret { prefix: String, secret: String },
}

/// Where a secret's value comes from. The value itself is never stored in
/// the config, printed, or logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretRef {
    File(PathBuf),
    Env(String),
}

impl SecretRef {
    /// Reads the secret's value (trailing newlines trimmed).
    pub fn resolve(&self) -> Result<String, String> {
        match self {
            Self::File(path) => std::fs::read_to_string(path)
                .map(|text| text.trim_end_matches(['\n', '\r']).to_owned())
                .map_err(|err| format!("cannot read secret file `{}`: {err}", path.display())),
            Self::Env(var) => {
                std::env::var(var).map_err(|_| format!("environment variable `{var}` is not set"))
            }
        }
    }
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(path) => write!(f, "file:{}", path.display()),
            Self::Env(var) => write!(f, "env:{var}"),
        }
    }
}

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

// ---------------------------------------------------------------------------
// Raw (as written) types. Spans point errors found after parsing at a line.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    proxy: RawProxy,
    #[serde(default)]
    listener: listener::RawListener,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    clients: Vec<Spanned<RawClient>>,
    #[serde(default)]
    auditors: Vec<Spanned<RawAuditor>>,
    #[serde(default)]
    servers: Vec<Spanned<RawServer>>,
    #[serde(default)]
    chain: Vec<Spanned<RawChainEntry>>,
    #[serde(default)]
    audit: RawAudit,
    #[serde(default)]
    redact: Option<RawRedact>,
    #[serde(default)]
    ratelimit: RawRatelimit,
    #[serde(default)]
    schema: RawSchema,
    #[serde(default)]
    pinning: RawPinning,
    #[serde(default)]
    observability: RawObservability,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawObservability {
    metrics: Option<bool>,
    traces: Option<Spanned<RawTraces>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTraces {
    endpoint: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    secrets: BTreeMap<String, String>,
    sample_ratio: Option<f64>,
    service_name: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPinning {
    enabled: Option<bool>,
    file: Option<PathBuf>,
    first_use: Option<Spanned<String>>,
    on_change: Option<Spanned<String>>,
    poisoning: Option<Spanned<String>>,
    extra_rules: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSchema {
    enabled: Option<bool>,
    output: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRatelimit {
    default: Option<Spanned<String>>,
    #[serde(default)]
    rules: Vec<Spanned<RawRateRule>>,
    #[serde(default)]
    concurrency: Vec<Spanned<RawConcurrency>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConcurrency {
    server: String,
    max_in_flight: usize,
    #[serde(default)]
    queue: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRateRule {
    client: Option<String>,
    server: Option<String>,
    tool: Option<String>,
    quota: Spanned<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRedact {
    enabled: Option<bool>,
    requests: Option<Spanned<String>>,
    responses: Option<Spanned<String>>,
    extra_rules: Option<PathBuf>,
    #[serde(default)]
    disable: Vec<Spanned<String>>,
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default)]
    allow_regex: Vec<Spanned<String>>,
    #[serde(default)]
    rules: BTreeMap<String, Spanned<RawRuleActions>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRuleActions {
    action: Option<Spanned<String>>,
    requests: Option<Spanned<String>>,
    responses: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    durability: Option<Spanned<String>>,
    arguments: Option<Spanned<String>>,
    max_age: Option<Spanned<String>>,
    max_records: Option<Spanned<i64>>,
    key: Option<Spanned<String>>,
    signing_key: Option<Spanned<String>>,
    checkpoint_every: Option<Spanned<i64>>,
    checkpoint_interval: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawProxy {
    listen: Option<Spanned<String>>,
    data_dir: Option<PathBuf>,
    policies: Option<Spanned<PathBuf>>,
    policy_poll: Option<Spanned<String>>,
    bridge: Option<PathBuf>,
    namespace_separator: Option<Spanned<String>>,
    call_timeout: Option<Spanned<String>>,
    startup_timeout: Option<Spanned<String>>,
    #[serde(default)]
    allowed_origins: Vec<String>,
    #[serde(default)]
    allowed_hosts: Vec<String>,
    list_page_size: Option<Spanned<usize>>,
    max_sessions: Option<usize>,
    max_sessions_per_client: Option<Spanned<usize>>,
    session_idle_timeout: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_message_bytes: Option<Spanned<usize>>,
    max_depth: Option<Spanned<usize>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClient {
    name: String,
    token_sha256: Option<String>,
    cert_sha256: Option<String>,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    attributes: BTreeMap<String, toml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuditor {
    name: String,
    token_sha256: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    name: String,
    process: Option<ProcessSpec>,
    remote: Option<RawRemote>,
    container: Option<container::RawContainer>,
    sandbox: Option<container::RawSandbox>,
    timeout: Option<String>,
    #[serde(default)]
    secrets: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRemote {
    url: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|err| ConfigError {
            file: path.to_owned(),
            location: None,
            key: None,
            message: format!("cannot read the config: {err}"),
        })?;
        Self::parse(&text, path)
    }

    /// Validates config text; `path` names it in errors and anchors relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let located =
            |span: Option<std::ops::Range<usize>>| span.map(|span| line_col(text, span.start));
        let deserializer = toml::de::Deserializer::parse(text).map_err(|err| ConfigError {
            file: path.to_owned(),
            location: located(err.span()),
            key: None,
            message: err.message().to_owned(),
        })?;
        let raw: RawConfig = serde_path_to_error::deserialize(deserializer).map_err(|err| {
            // Spanned wrappers show up in the path as a private field name.
            let key = err
                .path()
                .to_string()
                .replace(".$__serde_spanned_private_value", "");
            let inner = err.into_inner();
            ConfigError {
                file: path.to_owned(),
                location: located(inner.span()),
                key: (key != ".").then_some(key),
                message: inner.message().to_owned(),
            }
        })?;
        Validator { text, path }.config(raw)
    }

    /// The folder relative paths in the config resolve against.
    pub fn base_dir(&self) -> &Path {
        self.file.parent().unwrap_or_else(|| Path::new("."))
    }

    pub fn server(&self, name: &str) -> Option<&ServerConfig> {
        self.servers.iter().find(|server| server.name == name)
    }

    pub fn client(&self, name: &str) -> Option<&ClientConfig> {
        self.clients.iter().find(|client| client.name == name)
    }
}

/// 1-based line and byte column of a byte offset into a file's text (for
/// errors that point into the config, rule files and policy fixtures).
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset.min(text.len())).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, column)
}

/// Where an interceptor goes in the default chain.
enum Placement {
    /// Right after `limits`.
    AfterLimits,
    /// At the end.
    Last,
}

struct Validator<'a> {
    text: &'a str,
    path: &'a Path,
}

impl Validator<'_> {
    fn error(
        &self,
        span: Option<std::ops::Range<usize>>,
        key: &str,
        message: String,
    ) -> ConfigError {
        ConfigError {
            file: self.path.to_owned(),
            location: span.map(|span| line_col(self.text, span.start)),
            key: Some(key.to_owned()),
            message,
        }
    }

    fn duration(
        &self,
        value: Option<Spanned<String>>,
        key: &str,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        match value {
            None => Ok(default),
            Some(value) => parse_duration(value.get_ref())
                .map_err(|message| self.error(Some(value.span()), key, message)),
        }
    }

    fn config(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let base = self.path.parent().unwrap_or_else(|| Path::new("."));
        let resolve = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };

        let proxy = raw.proxy;
        let listen_span = proxy.listen.as_ref().map(Spanned::span);
        let listen = match proxy.listen {
            None => None,
            Some(listen) => Some(listen.get_ref().parse::<SocketAddr>().map_err(|_| {
                self.error(
                    Some(listen.span()),
                    "proxy.listen",
                    format!(
                        "`{}` is not an address like `127.0.0.1:8811`",
                        listen.get_ref()
                    ),
                )
            })?),
        };
        let separator = match proxy.namespace_separator {
            None => "__".to_owned(),
            Some(sep) => {
                let value = sep.get_ref();
                if value.is_empty() || value.chars().any(is_server_name_char) {
                    return Err(self.error(
                        Some(sep.span()),
                        "proxy.namespace_separator",
                        format!(
                            "`{value}` must be non-empty and use none of the characters server names use (a-z, 0-9, `-`), so that `server{value}tool` splits one way only"
                        ),
                    ));
                }
                value.clone()
            }
        };
        let call_timeout = self.duration(
            proxy.call_timeout,
            "proxy.call_timeout",
            Duration::from_secs(60),
        )?;
        let list_page_size = match proxy.list_page_size {
            Some(size) if *size.get_ref() == 0 => {
                return Err(self.error(
                    Some(size.span()),
                    "proxy.list_page_size",
                    "must be at least 1".into(),
                ));
            }
            Some(size) => size.into_inner(),
            None => 1000,
        };
        let max_sessions = proxy.max_sessions.unwrap_or(1000).max(1);
        let max_sessions_per_client = match proxy.max_sessions_per_client {
            None => max_sessions.min(100),
            Some(cap) if (1..=max_sessions).contains(cap.get_ref()) => cap.into_inner(),
            Some(cap) => {
                return Err(self.error(
                    Some(cap.span()),
                    "proxy.max_sessions_per_client",
                    format!("must be between 1 and proxy.max_sessions ({max_sessions})"),
                ));
            }
        };
        let proxy_config = ProxyConfig {
            listen,
            data_dir: resolve(
                proxy
                    .data_dir
                    .unwrap_or_else(|| PathBuf::from(".portcullis")),
            ),
            policies: proxy
                .policies
                .as_ref()
                .map(|p| resolve(p.get_ref().clone())),
            policy_poll: self.duration(
                proxy.policy_poll,
                "proxy.policy_poll",
                Duration::from_secs(1),
            )?,
            bridge: proxy.bridge.map(resolve),
            namespace_separator: separator,
            call_timeout,
            startup_timeout: self.duration(
                proxy.startup_timeout,
                "proxy.startup_timeout",
                Duration::from_secs(30),
            )?,
            allowed_origins: proxy.allowed_origins,
            allowed_hosts: proxy
                .allowed_hosts
                .iter()
                .map(|host| host.trim().to_ascii_lowercase())
                .collect(),
            list_page_size,
            max_sessions,
            max_sessions_per_client,
            session_idle_timeout: self.duration(
                proxy.session_idle_timeout,
                "proxy.session_idle_timeout",
                Duration::from_secs(3600),
            )?,
        };

        let mut limits = LimitsConfig::default();
        if let Some(bytes) = raw.limits.max_message_bytes {
            if *bytes.get_ref() < 1024 {
                return Err(self.error(
                    Some(bytes.span()),
                    "limits.max_message_bytes",
                    "must be at least 1024".into(),
                ));
            }
            limits.max_message_bytes = bytes.into_inner();
        }
        if let Some(depth) = raw.limits.max_depth {
            // serde_json refuses nesting past 128 on its own; a larger limit
            // would promise something the parser does not do.
            if !(4..=128).contains(depth.get_ref()) {
                return Err(self.error(
                    Some(depth.span()),
                    "limits.max_depth",
                    "must be between 4 and 128".into(),
                ));
            }
            limits.max_depth = depth.into_inner();
        }

        let mut token_hashes = HashSet::new();
        let mut cert_hashes = HashSet::new();
        let mut clients = Vec::new();
        let mut names = HashSet::new();
        for (index, client) in raw.clients.into_iter().enumerate() {
            let span = client.span();
            let client = client.into_inner();
            let key = format!("clients[{index}]");
            if client.name.is_empty()
                || !client
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            {
                return Err(self.error(
                    Some(span),
                    &format!("{key}.name"),
                    format!(
                        "client name `{}` may use only letters, digits, `-`, `_` and `.`",
                        client.name
                    ),
                ));
            }
            if !names.insert(client.name.clone()) {
                return Err(self.error(
                    Some(span),
                    &format!("{key}.name"),
                    format!("client `{}` is defined twice", client.name),
                ));
            }
            let token_sha256 = match client.token_sha256 {
                None => None,
                Some(hash) => {
                    Some(self.token_hash(&hash, &mut token_hashes, span.clone(), &key)?)
                }
            };
            let cert_sha256 = match client.cert_sha256 {
                None => None,
                Some(hash) => {
                    let normalized = hash.trim().replace(':', "").to_ascii_lowercase();
                    if normalized.len() != 64
                        || !normalized.chars().all(|c| c.is_ascii_hexdigit())
                        || !cert_hashes.insert(normalized.clone())
                    {
                        return Err(self.error(
                            Some(span),
                            &format!("{key}.cert_sha256"),
                            "must be the SHA-256 of the client's certificate (DER), 64 hex characters (`openssl x509 -in CERT -outform der | sha256sum`), one per client".into(),
                        ));
                    }
                    Some(normalized)
                }
            };
            let mut attributes = serde_json::Map::new();
            for (name, value) in client.attributes {
                let valid_name = name
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !valid_name || name == "name" {
                    return Err(self.error(
                        Some(span),
                        &format!("{key}.attributes.{name}"),
                        "attribute names are identifiers (letters, digits, `_`), and `name` is the client's own".into(),
                    ));
                }
                let converted = attribute_value(&value).ok_or_else(|| {
                    self.error(
                        Some(span.clone()),
                        &format!("{key}.attributes.{name}"),
                        "an attribute is a string, an integer, a boolean, or an array of those"
                            .into(),
                    )
                })?;
                attributes.insert(name, converted);
            }
            clients.push(ClientConfig {
                name: client.name,
                token_sha256,
                cert_sha256,
                groups: client.groups,
                attributes,
            });
        }

        let mut auditors = Vec::new();
        for (index, auditor) in raw.auditors.into_iter().enumerate() {
            let span = auditor.span();
            let auditor = auditor.into_inner();
            let key = format!("auditors[{index}]");
            let token_sha256 =
                self.token_hash(&auditor.token_sha256, &mut token_hashes, span, &key)?;
            auditors.push(AuditorConfig {
                name: auditor.name,
                token_sha256,
            });
        }

        let mut servers = Vec::new();
        let mut server_names = HashSet::new();
        for (index, server) in raw.servers.into_iter().enumerate() {
            let span = server.span();
            let server = server.into_inner();
            let key = format!("servers[{index}]");
            let err = |field: &str, message: String| {
                self.error(Some(span.clone()), &format!("{key}{field}"), message)
            };
            if !valid_server_name(&server.name) {
                return Err(err(
                    ".name",
                    format!(
                        "server name `{}` must be 1-63 characters of a-z, 0-9 and `-`, starting and ending with a letter or digit",
                        server.name
                    ),
                ));
            }
            if !server_names.insert(server.name.clone()) {
                return Err(err(
                    ".name",
                    format!("server `{}` is defined twice", server.name),
                ));
            }
            if server.sandbox.is_some() && server.container.is_none() {
                return Err(err(
                    ".sandbox",
                    format!(
                        "server `{}`: `[servers.sandbox]` applies to `container` servers only; a `process` server runs unsandboxed",
                        server.name
                    ),
                ));
            }
            let mut secrets = BTreeMap::new();
            for (name, reference) in server.secrets {
                // Secrets become environment variables: a name the engine
                // would refuse would echo the value in its error.
                let valid_name = name
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !valid_name {
                    return Err(err(
                        &format!(".secrets.{name}"),
                        format!(
                            "server `{}`: secret name `{name}` must be letters, digits and `_`, not starting with a digit (it becomes an environment variable)",
                            server.name
                        ),
                    ));
                }
                let parsed = parse_secret_ref(&reference, base).map_err(|message| {
                    err(
                        &format!(".secrets.{name}"),
                        format!("server `{}`: {message}", server.name),
                    )
                })?;
                secrets.insert(name, parsed);
            }
            let kinds = [
                server.process.is_some(),
                server.remote.is_some(),
                server.container.is_some(),
            ]
            .iter()
            .filter(|&&given| given)
            .count();
            let one_of = |how: &str| {
                err(
                    "",
                    format!(
                        "server `{}` {how} one of `container`, `process` or `remote`",
                        server.name
                    ),
                )
            };
            if kinds > 1 {
                return Err(one_of("may have only"));
            }
            let kind = if let Some(raw) = server.container {
                UpstreamSpec::Container(Box::new(
                    container::container_spec(
                        &server.name,
                        raw,
                        server.sandbox,
                        base,
                        &proxy_config,
                    )
                    .map_err(|(field, message)| err(&field, message))?,
                ))
            } else if let Some(process) = server.process {
                if process.command.trim().is_empty() {
                    return Err(err(".process.command", "the command is empty".into()));
                }
                container::check_env(&process.env)
                    .map_err(|(name, message)| err(&format!(".process.env.{name}"), message))?;
                container::check_args(&process.args)
                    .map_err(|(index, message)| err(&format!(".process.args[{index}]"), message))?;
                let cwd = process.cwd.map(resolve);
                // A relative path (not a bare name looked up in PATH)
                // is relative to the config file, like every other path.
                let command = if process.command.contains('/') {
                    resolve(PathBuf::from(&process.command))
                        .to_string_lossy()
                        .into_owned()
                } else {
                    process.command
                };
                UpstreamSpec::Process(ProcessSpec {
                    command,
                    cwd,
                    ..process
                })
            } else if let Some(remote) = server.remote {
                if !(remote.url.starts_with("http://") || remote.url.starts_with("https://"))
                    || reqwest::Url::parse(&remote.url).is_err()
                {
                    return Err(err(
                        ".remote.url",
                        format!("`{}` is not an http:// or https:// URL", remote.url),
                    ));
                }
                let mut headers = Vec::new();
                for (header, value) in remote.headers {
                    let parsed = parse_header_value(&value);
                    if let HeaderValue::Secret { secret, .. } = &parsed
                        && !secrets.contains_key(secret)
                    {
                        return Err(err(
                            &format!(".remote.headers.{header}"),
                            format!(
                                "refers to `secret:{secret}`, which is not in this server's `secrets`"
                            ),
                        ));
                    }
                    headers.push((header, parsed));
                }
                UpstreamSpec::Remote(RemoteSpec {
                    url: remote.url,
                    headers,
                })
            } else {
                return Err(one_of("needs"));
            };
            let call_timeout = match server.timeout {
                None => proxy_config.call_timeout,
                Some(text) => parse_duration(&text).map_err(|m| err(".timeout", m))?,
            };
            servers.push(ServerConfig {
                name: server.name,
                kind,
                call_timeout,
                secrets,
            });
        }

        let mut chain = Vec::new();
        // A chain of plugins only leaves the native interceptors in their
        // default order, with the plugins after them; a chain that names a
        // native interceptor is the whole order.
        let explicit_chain = raw
            .chain
            .iter()
            .find(|entry| entry.get_ref().kind != "wasm")
            .map(|entry| entry.span());
        let mut plugins: Vec<ChainEntry> = Vec::new();
        for (index, entry) in raw.chain.into_iter().enumerate() {
            let span = entry.span();
            let entry = entry.into_inner();
            let kind = entry.kind.clone();
            if kind != "wasm"
                && let Some(field) = entry.any_field()
            {
                return Err(self.error(
                    Some(span),
                    &format!("chain[{index}].{field}"),
                    format!("only `wasm` entries take `{field}`; `{kind}` is configured in its own section"),
                ));
            }
            let parsed = match kind.as_str() {
                "wasm" => {
                    let plugin =
                        self.plugin(entry, span.clone(), &format!("chain[{index}]"), base)?;
                    let taken = chain.iter().chain(plugins.iter()).any(|placed| {
                        matches!(placed, ChainEntry::Wasm(other) if other.name == plugin.name)
                    });
                    if taken {
                        return Err(self.error(
                            Some(span),
                            &format!("chain[{index}].name"),
                            format!(
                                "two plugins are named `{}`: set `name` on one of them",
                                plugin.name
                            ),
                        ));
                    }
                    let parsed = ChainEntry::Wasm(Box::new(plugin));
                    if explicit_chain.is_none() {
                        plugins.push(parsed);
                        continue;
                    }
                    parsed
                }
                "limits" => ChainEntry::Limits,
                "authz" => {
                    if proxy_config.policies.is_none() {
                        return Err(self.error(
                            Some(span),
                            &format!("chain[{index}].kind"),
                            "`authz` needs `[proxy] policies`: the folder with the Cedar schema and policies".into(),
                        ));
                    }
                    ChainEntry::Authz
                }
                "redact" => ChainEntry::Redact,
                "ratelimit" => ChainEntry::Ratelimit,
                "schema" => ChainEntry::Schema,
                "pinning" => ChainEntry::Pinning,
                other => {
                    return Err(self.error(
                        Some(span),
                        &format!("chain[{index}].kind"),
                        format!("unknown interceptor kind `{other}`; available: `limits`, `ratelimit`, `authz`, `pinning`, `schema`, `redact`, `wasm`"),
                    ));
                }
            };
            if chain.contains(&parsed) {
                return Err(self.error(
                    Some(span),
                    &format!("chain[{index}].kind"),
                    format!("`{kind}` appears twice in the chain"),
                ));
            }
            chain.push(parsed);
        }
        // `limits` guards every other interceptor's input: it always runs,
        // first unless the config places it.
        if !chain.contains(&ChainEntry::Limits) {
            chain.insert(0, ChainEntry::Limits);
        }
        // Policies are enforced whenever they are configured: in the default
        // order right after `limits`; an explicit chain must place `authz`.
        self.place(
            &mut chain,
            ChainEntry::Authz,
            proxy_config.policies.is_some(),
            &explicit_chain,
            Placement::AfterLimits,
            "`[proxy] policies` is set but the `[[chain]]` has no `authz` entry: add `[[chain]] kind = \"authz\"` where policies should run",
        )?;
        let ratelimit = self.ratelimit(raw.ratelimit, &clients, &servers, &proxy_config)?;
        // Quotas, when configured, are enforced: right after `limits` by
        // default (a refused call costs nothing more); an explicit chain
        // must place `ratelimit`.
        self.place(
            &mut chain,
            ChainEntry::Ratelimit,
            ratelimit.enabled(),
            &explicit_chain,
            Placement::AfterLimits,
            "`[ratelimit]` sets quotas but the `[[chain]]` has no `ratelimit` entry: add `[[chain]] kind = \"ratelimit\"` where quotas should apply",
        )?;
        let pinning = self.pinning(raw.pinning, &proxy_config, &resolve)?;
        // Pinning runs unless switched off: after `authz` by default (a
        // client never learns of a tool it may not see), before `schema`.
        self.place(
            &mut chain,
            ChainEntry::Pinning,
            pinning.enabled,
            &explicit_chain,
            Placement::Last,
            "tool pinning is on but the `[[chain]]` has no `pinning` entry: add `[[chain]] kind = \"pinning\"` where it should run, or set `[pinning] enabled = false`",
        )?;
        let output = match &raw.schema.output {
            None => OutputAction::Deny,
            Some(value) => match value.get_ref().as_str() {
                "deny" => OutputAction::Deny,
                "log" => OutputAction::Log,
                other => {
                    return Err(self.error(
                        Some(value.span()),
                        "schema.output",
                        format!("`{other}` is not `deny` or `log`"),
                    ));
                }
            },
        };
        let schema = SchemaConfig {
            enabled: raw.schema.enabled.unwrap_or(true),
            output,
        };
        // Schema validation runs unless switched off: after `authz` by
        // default (a call it refuses is not checked further); an explicit
        // chain must place it.
        self.place(
            &mut chain,
            ChainEntry::Schema,
            schema.enabled,
            &explicit_chain,
            Placement::Last,
            "schema validation is on but the `[[chain]]` has no `schema` entry: add `[[chain]] kind = \"schema\"` where it should run, or set `[schema] enabled = false`",
        )?;
        let redact = self.redact(raw.redact, &resolve)?;
        // Secret scanning runs unless switched off: last by default (so on
        // the way back it is the last stage before the client); an explicit
        // chain must place it.
        self.place(
            &mut chain,
            ChainEntry::Redact,
            redact.enabled,
            &explicit_chain,
            Placement::Last,
            "secret scanning is on but the `[[chain]]` has no `redact` entry: add `[[chain]] kind = \"redact\"` where it should run, or set `[redact] enabled = false`",
        )?;
        // Plugins of a chain that names no native interceptor run after
        // them all, in config order.
        chain.extend(plugins);

        let max_age = match &raw.audit.max_age {
            None => None,
            Some(value) => Some(
                parse_duration(value.get_ref())
                    .map_err(|message| self.error(Some(value.span()), "audit.max_age", message))?,
            ),
        };
        let max_records = match &raw.audit.max_records {
            None => None,
            Some(value) if *value.get_ref() >= 100 => Some(*value.get_ref() as u64),
            Some(value) => {
                return Err(self.error(
                    Some(value.span()),
                    "audit.max_records",
                    format!("{} is too few: keep at least 100 records", value.get_ref()),
                ));
            }
        };
        let retention = Retention {
            max_age,
            max_records,
        };
        let arguments = self
            .choice(
                &raw.audit.arguments,
                "audit.arguments",
                &[
                    ("none", AuditArguments::None),
                    ("redacted", AuditArguments::Redacted),
                ],
            )?
            .unwrap_or_default();
        let durability = match &raw.audit.durability {
            None => Durability::Durable,
            Some(value) => match value.get_ref().as_str() {
                "durable" => Durability::Durable,
                "buffered" => Durability::Buffered,
                other => {
                    return Err(self.error(
                        Some(value.span()),
                        "audit.durability",
                        format!("`{other}` is not `durable` or `buffered`"),
                    ));
                }
            },
        };

        let listener = self.listener(raw.listener)?;
        let mtls = listener
            .tls
            .as_ref()
            .is_some_and(|tls| tls.client_ca.is_some());
        if let Some(client) = clients.iter().find(|c| c.cert_sha256.is_some())
            && !mtls
        {
            return Err(self.error(
                None,
                "clients.cert_sha256",
                format!(
                    "client `{}` has a `cert_sha256`, but no client certificate is asked for: set `[listener] tls_client_ca` (with `tls_cert` and `tls_key`)",
                    client.name
                ),
            ));
        }
        if let Some(host) = proxy_config.allowed_hosts.iter().find(|h| {
            h.is_empty()
                || h.contains([':', '[', ']', '/', '@']) && h.parse::<std::net::Ipv6Addr>().is_err()
        }) {
            return Err(self.error(
                None,
                "proxy.allowed_hosts",
                format!("`{host}` is not a host name or address: give names without scheme or port (`mcp.example.com`, `10.0.0.5`, `2001:db8::5`)"),
            ));
        }
        if let Some(addr) = proxy_config.listen
            && !addr.ip().is_loopback()
            && listener.tls.is_none()
            && !listener.insecure_plaintext
        {
            return Err(self.error(
                listen_span,
                "proxy.listen",
                format!(
                    "`{addr}` is not a loopback address, and the listener would speak plain HTTP: bearer tokens and every call would cross the network readable by anyone on the path; set `[listener] tls_cert` and `tls_key`, or set `[listener] insecure_plaintext = true` if the network is yours alone (a container's own network, say)"
                ),
            ));
        }
        let audit = self.audit_keys(
            &raw.audit,
            &proxy_config.data_dir,
            durability,
            retention,
            arguments,
        )?;
        Ok(Config {
            file: self.path.to_owned(),
            proxy: proxy_config,
            listener,
            limits,
            clients,
            auditors,
            servers,
            chain,
            audit,
            redact,
            ratelimit,
            schema,
            pinning,
            observability: ObservabilityConfig {
                metrics: raw.observability.metrics.unwrap_or(true),
                traces: raw
                    .observability
                    .traces
                    .map(|traces| self.traces(traces))
                    .transpose()?,
            },
        })
    }

    /// `[audit]` with its keys: references to files outside `data_dir`
    /// (whoever can write the store must not be able to read them there),
    /// or environment variables.
    fn audit_keys(
        &self,
        raw: &RawAudit,
        data_dir: &Path,
        durability: Durability,
        retention: Retention,
        arguments: AuditArguments,
    ) -> Result<AuditConfig, ConfigError> {
        let base = self.path.parent().unwrap_or(Path::new("."));
        let key_ref = |value: &Option<Spanned<String>>,
                       key: &str|
         -> Result<Option<SecretRef>, ConfigError> {
            let Some(value) = value else {
                return Ok(None);
            };
            let fail = |message: String| self.error(Some(value.span()), key, message);
            let reference = parse_secret_ref(value.get_ref(), base).map_err(fail)?;
            if let SecretRef::File(path) = &reference
                && inside(path, data_dir)
            {
                return Err(fail(format!(
                    "`{}` is inside `proxy.data_dir`: keep the key where whoever can write the audit store cannot read it",
                    path.display()
                )));
            }
            Ok(Some(reference))
        };
        let checkpoint_every = match &raw.checkpoint_every {
            None => CHECKPOINT_EVERY,
            Some(value) if *value.get_ref() >= 1 => *value.get_ref() as u64,
            Some(value) => {
                return Err(self.error(
                    Some(value.span()),
                    "audit.checkpoint_every",
                    "must be at least 1".into(),
                ));
            }
        };
        Ok(AuditConfig {
            durability,
            retention,
            arguments,
            key: key_ref(&raw.key, "audit.key")?,
            signing_key: key_ref(&raw.signing_key, "audit.signing_key")?,
            checkpoint_every,
            checkpoint_interval: self.duration(
                raw.checkpoint_interval.clone(),
                "audit.checkpoint_interval",
                CHECKPOINT_INTERVAL,
            )?,
        })
    }

    fn traces(&self, raw: Spanned<RawTraces>) -> Result<TracesConfig, ConfigError> {
        let span = raw.span();
        let raw = raw.into_inner();
        let err = |field: &str, message: String| {
            self.error(
                Some(span.clone()),
                &format!("observability.traces.{field}"),
                message,
            )
        };
        let endpoint = raw
            .endpoint
            .unwrap_or_else(|| DEFAULT_TRACES_ENDPOINT.to_owned());
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
            || reqwest::Url::parse(&endpoint).is_err()
        {
            return Err(err(
                "endpoint",
                format!("`{endpoint}` is not an http:// or https:// URL"),
            ));
        }
        let sample_ratio = raw.sample_ratio.unwrap_or(1.0);
        if !(0.0..=1.0).contains(&sample_ratio) {
            return Err(err(
                "sample_ratio",
                format!("`{sample_ratio}` must be between 0 and 1"),
            ));
        }
        let service_name = raw.service_name.unwrap_or_else(|| "portcullis".into());
        if service_name.is_empty() {
            return Err(err("service_name", "must not be empty".into()));
        }
        let base = self.path.parent().unwrap_or(Path::new("."));
        let mut secrets = Vec::new();
        for (name, reference) in raw.secrets {
            let reference = parse_secret_ref(&reference, base)
                .map_err(|m| err(&format!("secrets.{name}"), m))?;
            secrets.push((name, reference));
        }
        let mut headers = Vec::new();
        for (header, value) in raw.headers {
            let parsed = parse_header_value(&value);
            if let HeaderValue::Secret { secret, .. } = &parsed
                && !secrets.iter().any(|(name, _)| name == secret)
            {
                return Err(err(
                    &format!("headers.{header}"),
                    format!(
                        "refers to `secret:{secret}`, which is not in `[observability.traces] secrets`"
                    ),
                ));
            }
            headers.push((header, parsed));
        }
        Ok(TracesConfig {
            endpoint,
            headers,
            secrets,
            sample_ratio,
            service_name,
        })
    }

    fn pinning(
        &self,
        raw: RawPinning,
        proxy: &ProxyConfig,
        resolve: &impl Fn(PathBuf) -> PathBuf,
    ) -> Result<PinningConfig, ConfigError> {
        let defaults = PinningConfig::in_data_dir(&proxy.data_dir);
        let first_use = self.choice(
            &raw.first_use,
            "pinning.first_use",
            &[("pin", FirstUse::Pin), ("deny", FirstUse::Deny)],
        )?;
        let on_change = self.choice(
            &raw.on_change,
            "pinning.on_change",
            &[("deny", OnChange::Deny), ("warn", OnChange::Warn)],
        )?;
        let poisoning = self.choice(
            &raw.poisoning,
            "pinning.poisoning",
            &[
                ("flag", Poisoning::Flag),
                ("deny", Poisoning::Deny),
                ("off", Poisoning::Off),
            ],
        )?;
        Ok(PinningConfig {
            enabled: raw.enabled.unwrap_or(true),
            file: raw.file.map(resolve).unwrap_or(defaults.file),
            first_use: first_use.unwrap_or(defaults.first_use),
            on_change: on_change.unwrap_or(defaults.on_change),
            poisoning: poisoning.unwrap_or(defaults.poisoning),
            extra_rules: raw.extra_rules.map(resolve),
            data_dir: defaults.data_dir,
        })
    }

    /// One of a few words, or an error that lists them.
    fn choice<T: Copy>(
        &self,
        value: &Option<Spanned<String>>,
        key: &str,
        words: &[(&str, T)],
    ) -> Result<Option<T>, ConfigError> {
        let Some(value) = value else {
            return Ok(None);
        };
        match words.iter().find(|(word, _)| *word == value.get_ref()) {
            Some((_, chosen)) => Ok(Some(*chosen)),
            None => {
                let names: Vec<String> =
                    words.iter().map(|(word, _)| format!("`{word}`")).collect();
                Err(self.error(
                    Some(value.span()),
                    key,
                    format!("`{}` is not one of {}", value.get_ref(), names.join(", ")),
                ))
            }
        }
    }

    /// Puts an interceptor that is `on` into the chain: where `placement`
    /// says when the config names no chain; an explicit chain must place it
    /// itself (`missing` tells how), or the config is refused. One that is
    /// off is taken out.
    fn place(
        &self,
        chain: &mut Vec<ChainEntry>,
        entry: ChainEntry,
        on: bool,
        explicit_chain: &Option<std::ops::Range<usize>>,
        placement: Placement,
        missing: &str,
    ) -> Result<(), ConfigError> {
        if !on {
            chain.retain(|placed| *placed != entry);
            return Ok(());
        }
        if chain.contains(&entry) {
            return Ok(());
        }
        if let Some(span) = explicit_chain {
            return Err(self.error(Some(span.clone()), "chain", missing.to_owned()));
        }
        match placement {
            Placement::AfterLimits => {
                let position = chain
                    .iter()
                    .position(|placed| *placed == ChainEntry::Limits)
                    .map_or(0, |i| i + 1);
                chain.insert(position, entry);
            }
            Placement::Last => chain.push(entry),
        }
        Ok(())
    }

    fn ratelimit(
        &self,
        raw: RawRatelimit,
        clients: &[ClientConfig],
        servers: &[ServerConfig],
        proxy: &ProxyConfig,
    ) -> Result<RatelimitConfig, ConfigError> {
        let mut rules = Vec::new();
        if let Some(default) = raw.default {
            let quota = default.get_ref().parse().map_err(|message| {
                self.error(Some(default.span()), "ratelimit.default", message)
            })?;
            rules.push(RateRule {
                client: None,
                scope: RateScope::Client,
                quota,
                key: "ratelimit.default".into(),
            });
        }
        let separator = &proxy.namespace_separator;
        for (index, rule) in raw.rules.into_iter().enumerate() {
            let span = rule.span();
            let rule = rule.into_inner();
            let key = format!("ratelimit.rules[{index}]");
            let error = |field: &str, message: String| {
                self.error(Some(span.clone()), &format!("{key}.{field}"), message)
            };
            let quota = rule.quota.get_ref().parse().map_err(|message| {
                self.error(Some(rule.quota.span()), &format!("{key}.quota"), message)
            })?;
            if let Some(client) = &rule.client
                && !clients.iter().any(|c| &c.name == client)
            {
                return Err(error(
                    "client",
                    format!("no client `{client}` in `[[clients]]`"),
                ));
            }
            let known = |server: &str| servers.iter().any(|s| s.name == server);
            let scope = match (rule.server, rule.tool) {
                (None, None) => RateScope::Client,
                (Some(server), None) => {
                    if !known(&server) {
                        return Err(error(
                            "server",
                            format!("no server `{server}` in `[[servers]]`"),
                        ));
                    }
                    RateScope::Server(server)
                }
                (None, Some(tool)) => {
                    let Some((server, name)) = tool.split_once(separator.as_str()) else {
                        return Err(error(
                            "tool",
                            format!(
                                "`{tool}` is not a namespaced tool name like `SERVER{separator}TOOL`"
                            ),
                        ));
                    };
                    if !known(server) || name.is_empty() {
                        return Err(error(
                            "tool",
                            format!("`{tool}`: no server `{server}` in `[[servers]]`"),
                        ));
                    }
                    RateScope::Tool {
                        server: server.to_owned(),
                        tool: name.to_owned(),
                    }
                }
                (Some(_), Some(_)) => {
                    return Err(error(
                        "tool",
                        "set `server` or `tool`, not both (a tool name already names its server)"
                            .into(),
                    ));
                }
            };
            if let Some(earlier) = rules
                .iter()
                .find(|r: &&RateRule| r.client == rule.client && r.scope == scope)
            {
                return Err(error(
                    "quota",
                    format!(
                        "`{}` already sets a quota for the same client and scope",
                        earlier.key
                    ),
                ));
            }
            rules.push(RateRule {
                client: rule.client,
                scope,
                quota,
                key,
            });
        }
        let mut concurrency: Vec<Concurrency> = Vec::new();
        for (index, raw) in raw.concurrency.into_iter().enumerate() {
            let span = raw.span();
            let raw = raw.into_inner();
            let key = format!("ratelimit.concurrency[{index}]");
            if !servers.iter().any(|s| s.name == raw.server) {
                return Err(self.error(
                    Some(span),
                    &format!("{key}.server"),
                    format!("no server `{}` in `[[servers]]`", raw.server),
                ));
            }
            if concurrency.iter().any(|c| c.server == raw.server) {
                return Err(self.error(
                    Some(span),
                    &format!("{key}.server"),
                    format!("server `{}` has a concurrency limit already", raw.server),
                ));
            }
            if raw.max_in_flight == 0 || raw.queue > 100_000 {
                return Err(self.error(
                    Some(span),
                    &key,
                    "`max_in_flight` is at least 1 and `queue` at most 100000".into(),
                ));
            }
            concurrency.push(Concurrency {
                server: raw.server,
                max_in_flight: raw.max_in_flight,
                queue: raw.queue,
            });
        }
        Ok(RatelimitConfig { rules, concurrency })
    }

    fn redact(
        &self,
        raw: Option<RawRedact>,
        resolve: &dyn Fn(PathBuf) -> PathBuf,
    ) -> Result<RedactConfig, ConfigError> {
        let Some(raw) = raw else {
            return Ok(RedactConfig::default());
        };
        let action = |value: &Option<Spanned<String>>,
                      key: &str|
         -> Result<Option<RedactAction>, ConfigError> {
            match value {
                None => Ok(None),
                Some(value) => RedactAction::parse(value.get_ref())
                    .map(Some)
                    .map_err(|message| self.error(Some(value.span()), key, message)),
            }
        };
        let located = |value: &Spanned<String>, key: String| Located {
            value: value.get_ref().clone(),
            file: self.path.to_owned(),
            location: Some(line_col(self.text, value.span().start)),
            key,
        };
        let mut rules = Vec::new();
        for (id, entry) in &raw.rules {
            let key = format!("redact.rules.{id}");
            let span = entry.span();
            let entry = entry.get_ref();
            let both = action(&entry.action, &format!("{key}.action"))?;
            if both.is_some() && (entry.requests.is_some() || entry.responses.is_some()) {
                return Err(self.error(
                    Some(span),
                    &key,
                    "set `action` (both directions) or `requests`/`responses`, not both".into(),
                ));
            }
            rules.push(RuleActions {
                id: Located {
                    value: id.clone(),
                    file: self.path.to_owned(),
                    location: Some(line_col(self.text, span.start)),
                    key: key.clone(),
                },
                requests: both.or(action(&entry.requests, &format!("{key}.requests"))?),
                responses: both.or(action(&entry.responses, &format!("{key}.responses"))?),
            });
        }
        let allow_regex = raw
            .allow_regex
            .iter()
            .enumerate()
            .map(|(i, pattern)| {
                regex::bytes::Regex::new(pattern.get_ref()).map_err(|err| {
                    self.error(
                        Some(pattern.span()),
                        &format!("redact.allow_regex[{i}]"),
                        err.to_string(),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RedactConfig {
            enabled: raw.enabled.unwrap_or(true),
            requests: action(&raw.requests, "redact.requests")?.unwrap_or(RedactAction::Redact),
            responses: action(&raw.responses, "redact.responses")?.unwrap_or(RedactAction::Redact),
            extra_rules: raw.extra_rules.map(resolve),
            disable: raw
                .disable
                .iter()
                .enumerate()
                .map(|(i, id)| located(id, format!("redact.disable[{i}]")))
                .collect(),
            allow: raw.allow,
            allow_regex,
            rules,
        })
    }

    fn token_hash(
        &self,
        hash: &str,
        seen: &mut HashSet<String>,
        span: std::ops::Range<usize>,
        key: &str,
    ) -> Result<String, ConfigError> {
        let normalized = hash.trim().to_ascii_lowercase();
        if normalized.len() != 64 || !normalized.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(self.error(
                Some(span),
                &format!("{key}.token_sha256"),
                "must be the 64-character hex SHA-256 of the token (e.g. `printf %s TOKEN | sha256sum`), never the token itself".into(),
            ));
        }
        if !seen.insert(normalized.clone()) {
            return Err(self.error(
                Some(span),
                &format!("{key}.token_sha256"),
                "the same token hash is used twice; every client and auditor needs its own token"
                    .into(),
            ));
        }
        Ok(normalized)
    }
}

fn is_server_name_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'
}

pub fn valid_server_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.chars().all(is_server_name_char)
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// `"30s"`, `"500ms"`, `"2m"`, `"1h"`.
/// A client attribute as JSON: strings, integers, booleans and arrays of
/// those (what becomes a Cedar value without a schema's help).
fn attribute_value(value: &toml::Value) -> Option<serde_json::Value> {
    match value {
        toml::Value::String(text) => Some(serde_json::Value::from(text.as_str())),
        toml::Value::Integer(number) => Some(serde_json::Value::from(*number)),
        toml::Value::Boolean(flag) => Some(serde_json::Value::from(*flag)),
        toml::Value::Array(items) => items
            .iter()
            .map(attribute_value)
            .collect::<Option<Vec<_>>>()
            .map(serde_json::Value::Array),
        _ => None,
    }
}

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let invalid = || format!("`{text}` is not a duration like `500ms`, `30s`, `2m`, `1h` or `90d`");
    let number: u64 = number.parse().map_err(|_| invalid())?;
    let duration = match unit.trim() {
        "ms" => Duration::from_millis(number),
        "s" => Duration::from_secs(number),
        "m" | "min" => Duration::from_secs(number.saturating_mul(60)),
        "h" => Duration::from_secs(number.saturating_mul(3600)),
        "d" => Duration::from_secs(number.saturating_mul(86_400)),
        _ => return Err(invalid()),
    };
    if duration.is_zero() {
        return Err(format!("`{text}` must be longer than zero"));
    }
    Ok(duration)
}

/// Whether `path` lies in `dir` (both made absolute and, where they exist,
/// resolved through links).
fn inside(path: &Path, dir: &Path) -> bool {
    let real = |p: &Path| {
        std::fs::canonicalize(p).unwrap_or_else(|_| {
            std::env::current_dir()
                .map(|cwd| cwd.join(p))
                .unwrap_or_else(|_| p.to_path_buf())
        })
    };
    let dir = real(dir);
    // A key file that does not exist yet: its folder decides.
    let path = match path.parent() {
        Some(parent) if !path.exists() => real(parent).join(path.file_name().unwrap_or_default()),
        _ => real(path),
    };
    path.starts_with(&dir)
}

fn parse_secret_ref(text: &str, base: &Path) -> Result<SecretRef, String> {
    if let Some(path) = text.strip_prefix("file:") {
        let path = PathBuf::from(path);
        Ok(SecretRef::File(if path.is_absolute() {
            path
        } else {
            base.join(path)
        }))
    } else if let Some(var) = text.strip_prefix("env:") {
        if var.is_empty() {
            return Err("`env:` needs a variable name".into());
        }
        Ok(SecretRef::Env(var.to_owned()))
    } else {
        Err(
            "a secret must be `file:PATH` or `env:VAR`; literal values do not belong in the config"
                .into(),
        )
    }
}

fn parse_header_value(text: &str) -> HeaderValue {
    let (prefix, last) = match text.rsplit_once(' ') {
        Some((prefix, last)) => (format!("{prefix} "), last),
        None => (String::new(), text),
    };
    match last.strip_prefix("secret:") {
        Some(secret) if !secret.is_empty() => HeaderValue::Secret {
            prefix,
            secret: secret.to_owned(),
        },
        _ => HeaderValue::Literal(text.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/portcullis/test.toml"))
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let config =
            parse("[[servers]]\nname = \"time\"\nprocess = { command = \"mcp-server-time\" }\n")
                .map_err(|e| e.to_string());
        let Ok(config) = config else {
            panic!("{config:?}");
        };
        assert_eq!(config.proxy.namespace_separator, "__");
        assert_eq!(config.proxy.call_timeout, Duration::from_secs(60));
        assert_eq!(config.limits.max_message_bytes, 4 * 1024 * 1024);
        assert_eq!(config.limits.max_depth, 64);
        assert_eq!(
            config.chain,
            vec![
                ChainEntry::Limits,
                ChainEntry::Pinning,
                ChainEntry::Schema,
                ChainEntry::Redact
            ]
        );
        assert!(config.redact.enabled);
        assert_eq!(config.pinning.file, config.proxy.data_dir.join("pins.json"));
        assert_eq!(
            config.proxy.data_dir,
            PathBuf::from("/etc/portcullis/.portcullis")
        );
    }

    #[test]
    fn unknown_key_names_file_line_and_path() {
        let err = parse("[proxy]\nlisten = \"127.0.0.1:1\"\n\n[[servers]]\nname = \"a\"\nprocess = { command = \"x\", comand = \"y\" }\n")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.starts_with("/etc/portcullis/test.toml:6:"), "{err}");
        assert!(err.contains("servers[0].process"), "{err}");
        assert!(err.contains("comand"), "{err}");
    }

    #[test]
    fn bad_server_name_points_at_the_entry() {
        let err = parse("\n[[servers]]\nname = \"Bad__Name\"\nprocess = { command = \"x\" }\n")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains(":2:"), "{err}");
        assert!(err.contains("servers[0].name"), "{err}");
    }

    #[test]
    fn literal_secrets_and_bad_token_hashes_are_refused() {
        let err = parse("[[servers]]\nname = \"a\"\nprocess = { command = \"x\" }\nsecrets = { K = \"hunter2\" }\n")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("file:PATH"), "{err}");
        let err = parse("[[clients]]\nname = \"c\"\ntoken_sha256 = \"my-token\"\n")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("hex SHA-256"), "{err}");
        assert!(
            !err.contains("my-token"),
            "the error must not echo the value: {err}"
        );
    }

    #[test]
    fn container_servers_get_the_hardened_default() {
        let config = parse(
            "[[servers]]\nname = \"boxed\"\ncontainer = { image = \"img:1\", args = [\"-v\"] }\n",
        )
        .map_err(|e| e.to_string());
        let Ok(config) = config else {
            panic!("{config:?}");
        };
        let UpstreamSpec::Container(spec) = &config.servers[0].kind else {
            panic!("not a container server");
        };
        assert_eq!(spec.image, "img:1");
        assert_eq!(spec.start, StartPolicy::Lazy);
        assert_eq!(spec.pull, PullPolicy::Never);
        assert_eq!(spec.sandbox, Sandbox::default());
    }

    #[test]
    fn container_mistakes_are_named() {
        for (text, expected) in [
            (
                "[[servers]]\nname = \"a\"\nprocess = { command = \"x\" }\n[servers.sandbox]\nmemory = \"1g\"\n",
                "applies to `container` servers only",
            ),
            (
                "[[servers]]\nname = \"a\"\ncontainer = { image = \"i\", isolation = \"tenant\" }\n",
                "is not `shared` or `per-client`",
            ),
            (
                "[[servers]]\nname = \"a\"\ncontainer = { image = \"i\", digest = \"latest\" }\n",
                "not an image digest",
            ),
            (
                "[[servers]]\nname = \"a\"\ncontainer = { image = \"i\", stdio = \"fifo\" }\n",
                "needs `[proxy] bridge`",
            ),
            (
                "[[servers]]\nname = \"a\"\ncontainer = { image = \"i\" }\n[servers.sandbox]\nmemory = \"1k\"\n",
                "at least 6m",
            ),
            (
                "[[servers]]\nname = \"a\"\ncontainer = { image = \"i\" }\nprocess = { command = \"x\" }\n",
                "may have only one of",
            ),
        ] {
            let err = parse(text).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains(expected), "{text}: {err}");
        }
    }

    #[test]
    fn client_attributes_are_plain_values() {
        let config = parse(
            "[[clients]]\nname = \"c\"\nattributes = { team = \"data\", level = 3, admin = false, regions = [\"eu\"] }\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            serde_json::Value::Object(config.clients[0].attributes.clone()),
            serde_json::json!({"admin": false, "level": 3, "regions": ["eu"], "team": "data"})
        );
        for bad in [
            "ratio = 0.5",
            "nested = { a = 1 }",
            "name = \"x\"",
            "\"bad-name\" = 1",
        ] {
            let text = format!("[[clients]]\nname = \"c\"\nattributes = {{ {bad} }}\n");
            let err = parse(&text)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains("clients[0].attributes"), "{bad}: {err}");
        }
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn header_secret_references() {
        assert_eq!(
            parse_header_value("Bearer secret:gh"),
            HeaderValue::Secret {
                prefix: "Bearer ".into(),
                secret: "gh".into()
            }
        );
        assert_eq!(
            parse_header_value("plain"),
            HeaderValue::Literal("plain".into())
        );
    }
}

#[cfg(test)]
mod redact_tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, Path::new("p.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn the_redact_section_is_read_with_per_rule_actions() {
        let config = parse(
            "[redact]\nrequests = \"deny\"\nresponses = \"log\"\nallow = [\"x\"]\nallow_regex = ['^sk_test_']\n[redact.rules.jwt]\naction = \"off\"\n[redact.rules.aws-access-key-id]\nresponses = \"deny\"\n",
        );
        let Ok(config) = config else {
            panic!("{config:?}");
        };
        let redact = &config.redact;
        assert_eq!(
            (redact.requests, redact.responses),
            (RedactAction::Deny, RedactAction::Log)
        );
        assert_eq!(redact.allow_regex.len(), 1);
        let jwt = redact.rules.iter().find(|r| r.id.value == "jwt");
        assert_eq!(
            jwt.map(|r| (r.requests, r.responses)),
            Some((Some(RedactAction::Off), Some(RedactAction::Off)))
        );
        let aws = redact
            .rules
            .iter()
            .find(|r| r.id.value == "aws-access-key-id");
        assert_eq!(
            aws.map(|r| (r.requests, r.responses)),
            Some((None, Some(RedactAction::Deny)))
        );
    }

    #[test]
    fn schema_validation_is_placed_or_switched_off_explicitly() {
        let placed = parse(
            "[pinning]\nenabled = false\n[[chain]]\nkind = \"schema\"\n[[chain]]\nkind = \"redact\"\n[[chain]]\nkind = \"limits\"\n",
        );
        assert_eq!(
            placed.map(|c| c.chain),
            Ok(vec![
                ChainEntry::Schema,
                ChainEntry::Redact,
                ChainEntry::Limits
            ])
        );
        let missing = parse("[pinning]\nenabled = false\n[[chain]]\nkind = \"redact\"\n");
        assert!(
            missing
                .as_ref()
                .is_err_and(|e| e.starts_with("p.toml:3:1: `chain`: schema validation is on")),
            "{missing:?}"
        );
        let off = parse(
            "[schema]\nenabled = false\n[[chain]]\nkind = \"schema\"\n[[chain]]\nkind = \"redact\"\n[[chain]]\nkind = \"pinning\"\n",
        );
        assert_eq!(
            off.map(|c| c.chain),
            Ok(vec![
                ChainEntry::Limits,
                ChainEntry::Redact,
                ChainEntry::Pinning
            ])
        );
        let no_pinning = parse("[[chain]]\nkind = \"schema\"\n[[chain]]\nkind = \"redact\"\n");
        assert!(
            no_pinning
                .as_ref()
                .is_err_and(|e| e.starts_with("p.toml:1:1: `chain`: tool pinning is on")),
            "{no_pinning:?}"
        );
        let pinning = parse(
            "[proxy]\ndata_dir = \"state\"\n[pinning]\nfile = \"repo/pins.json\"\nfirst_use = \"deny\"\non_change = \"warn\"\npoisoning = \"deny\"\n",
        )
        .map(|c| c.pinning);
        let Ok(pinning) = pinning else {
            panic!("{pinning:?}");
        };
        assert!(pinning.file.ends_with("repo/pins.json") && pinning.data_dir.ends_with("state"));
        assert_eq!(
            (pinning.first_use, pinning.on_change, pinning.poisoning),
            (FirstUse::Deny, OnChange::Warn, Poisoning::Deny)
        );
        let bad = parse("[pinning]\npoisoning = \"loud\"\n");
        assert!(
            bad.as_ref().is_err_and(|e| e
                == "p.toml:2:13: `pinning.poisoning`: `loud` is not one of `flag`, `deny`, `off`"),
            "{bad:?}"
        );
        let bad = parse("[schema]\noutput = \"maybe\"\n");
        assert!(
            bad.as_ref()
                .is_err_and(|e| e == "p.toml:2:10: `schema.output`: `maybe` is not `deny` or `log`"),
            "{bad:?}"
        );
        assert_eq!(
            parse("[schema]\noutput = \"log\"\n").map(|c| c.schema.output),
            Ok(OutputAction::Log)
        );
    }

    #[test]
    fn secret_scanning_is_placed_or_switched_off_explicitly() {
        let off = parse(
            "[redact]\nenabled = false\n[schema]\nenabled = false\n[pinning]\nenabled = false\n",
        );
        assert_eq!(off.map(|c| c.chain), Ok(vec![ChainEntry::Limits]));
        let placed = parse(
            "[schema]\nenabled = false\n[pinning]\nenabled = false\n[[chain]]\nkind = \"redact\"\n[[chain]]\nkind = \"limits\"\n",
        );
        assert_eq!(
            placed.map(|c| c.chain),
            Ok(vec![ChainEntry::Redact, ChainEntry::Limits])
        );
        let missing = parse(
            "[schema]\nenabled = false\n[pinning]\nenabled = false\n[[chain]]\nkind = \"limits\"\n",
        );
        assert!(
            missing
                .as_ref()
                .is_err_and(|e| e.starts_with("p.toml:5:1: `chain`: secret scanning is on")),
            "{missing:?}"
        );
    }

    #[test]
    fn bad_redact_values_name_their_line() {
        for (text, expected) in [
            (
                "[redact]\nrequests = \"mask\"\n",
                "p.toml:2:12: `redact.requests`: `mask` is not `redact`, `deny`, `log` or `off`",
            ),
            (
                "[redact]\nallow_regex = ['(']\n",
                "p.toml:2:16: `redact.allow_regex[0]`: regex parse error",
            ),
            (
                "[redact.rules.jwt]\naction = \"log\"\nrequests = \"deny\"\n",
                "p.toml:1:1: `redact.rules.jwt`: set `action`",
            ),
            (
                "[redact]\ncolour = 1\n",
                "p.toml:2:1: `redact.colour`: unknown field `colour`",
            ),
        ] {
            match parse(text) {
                Ok(_) => panic!("accepted: {text}"),
                Err(err) => assert!(
                    err.starts_with(expected),
                    "`{err}` does not start with `{expected}`"
                ),
            }
        }
    }
}

#[cfg(test)]
mod ratelimit_tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, Path::new("p.toml")).map_err(|e| e.to_string())
    }

    const BASE: &str =
        "[[clients]]\nname = \"bot\"\n[[servers]]\nname = \"gh\"\nprocess = { command = \"x\" }\n";

    #[test]
    fn quotas_parse_with_units_and_bursts() {
        let cases = [
            ("60/min", 60, 60, 60),
            ("5/s", 5, 1, 5),
            ("1000/h burst 50", 1000, 3600, 50),
            ("100/day", 100, 86_400, 100),
            ("2/second burst 1", 2, 1, 1),
        ];
        for (text, count, secs, burst) in cases {
            let quota: Result<Quota, _> = text.parse();
            assert_eq!(
                quota,
                Ok(Quota {
                    count,
                    period: Duration::from_secs(secs),
                    burst
                }),
                "{text}"
            );
        }
        assert_eq!(
            "1000/h burst 50".parse::<Quota>().map(|q| q.to_string()),
            Ok("1000/h burst 50".into())
        );
        for bad in [
            "60",
            "60/fortnight",
            "x/min",
            "0/min",
            "5/s burst",
            "5/s burst 0",
            "5/s bust 2",
            "-1/s",
        ] {
            assert!(bad.parse::<Quota>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_ratelimit_section_goes_right_after_limits() {
        let config = parse(&format!(
            "{BASE}[ratelimit]\ndefault = \"60/min\"\nrules = [\n  {{ client = \"bot\", quota = \"5/s\" }},\n  {{ server = \"gh\", quota = \"30/min\" }},\n  {{ client = \"bot\", tool = \"gh__create_issue\", quota = \"5/min burst 2\" }},\n]\n"
        ));
        let Ok(config) = config else {
            panic!("{config:?}");
        };
        assert_eq!(
            config.chain,
            [
                ChainEntry::Limits,
                ChainEntry::Ratelimit,
                ChainEntry::Pinning,
                ChainEntry::Schema,
                ChainEntry::Redact
            ]
        );
        let scopes: Vec<_> = config
            .ratelimit
            .rules
            .iter()
            .map(|r| (r.client.as_deref(), r.scope.clone(), r.quota.to_string()))
            .collect();
        assert_eq!(
            scopes,
            [
                (None, RateScope::Client, "60/min".to_owned()),
                (Some("bot"), RateScope::Client, "5/s".to_owned()),
                (None, RateScope::Server("gh".into()), "30/min".to_owned()),
                (
                    Some("bot"),
                    RateScope::Tool {
                        server: "gh".into(),
                        tool: "create_issue".into()
                    },
                    "5/min burst 2".to_owned()
                ),
            ]
        );
        assert_eq!(
            parse(BASE).map(|c| c.chain),
            Ok(vec![
                ChainEntry::Limits,
                ChainEntry::Pinning,
                ChainEntry::Schema,
                ChainEntry::Redact
            ]),
            "no quotas, no ratelimit"
        );
    }

    #[test]
    fn bad_quotas_and_unknown_names_are_refused_with_their_place() {
        let cases = [
            (
                "[ratelimit]\ndefault = \"60 per minute\"\n",
                "p.toml:7:11: `ratelimit.default`: `60 per minute` is not a quota",
            ),
            (
                "[ratelimit]\nrules = [{ client = \"bot\", quota = \"5/fortnight\" }]\n",
                "p.toml:7:36: `ratelimit.rules[0].quota`: `5/fortnight` is not a quota",
            ),
            (
                "[ratelimit]\nrules = [{ client = \"nobody\", quota = \"5/s\" }]\n",
                "p.toml:7:10: `ratelimit.rules[0].client`: no client `nobody`",
            ),
            (
                "[ratelimit]\nrules = [{ server = \"gl\", quota = \"5/s\" }]\n",
                "`ratelimit.rules[0].server`: no server `gl`",
            ),
            (
                "[ratelimit]\nrules = [{ tool = \"create_issue\", quota = \"5/s\" }]\n",
                "`ratelimit.rules[0].tool`: `create_issue` is not a namespaced tool name like `SERVER__TOOL`",
            ),
            (
                "[ratelimit]\nrules = [{ server = \"gh\", tool = \"gh__x\", quota = \"5/s\" }]\n",
                "set `server` or `tool`, not both",
            ),
            (
                "[ratelimit]\nrules = [{ server = \"gh\", quota = \"5/s\" }, { server = \"gh\", quota = \"9/s\" }]\n",
                "`ratelimit.rules[1].quota`: `ratelimit.rules[0]` already sets a quota",
            ),
            (
                "[[chain]]\nkind = \"redact\"\n[[chain]]\nkind = \"schema\"\n[ratelimit]\ndefault = \"5/s\"\n",
                "has no `ratelimit` entry",
            ),
            (
                "[ratelimit]\nrules = [{ client = \"bot\", quota = \"5/s\", colour = 1 }]\n",
                "unknown field `colour`",
            ),
            (
                "[ratelimit]\nconcurrency = [{ server = \"gl\", max_in_flight = 2 }]\n",
                "`ratelimit.concurrency[0].server`: no server `gl`",
            ),
            (
                "[ratelimit]\nconcurrency = [{ server = \"gh\", max_in_flight = 0 }]\n",
                "`max_in_flight` is at least 1",
            ),
        ];
        for (text, expected) in cases {
            match parse(&format!("{BASE}{text}")) {
                Ok(_) => panic!("accepted: {text}"),
                Err(err) => assert!(err.contains(expected), "{err}\nwanted: {expected}"),
            }
        }
    }
}
