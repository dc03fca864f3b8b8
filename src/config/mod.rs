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

mod audit;
mod container;
mod listener;
mod observability;
mod pinning;
mod plugin;
mod ratelimit;
mod redact;
mod schema;
#[cfg(test)]
mod tests;

use audit::RawAudit;
pub use audit::{
    AuditArguments, AuditConfig, CHECKPOINT_EVERY, CHECKPOINT_INTERVAL, Durability, Retention,
};
pub use container::{
    BindMount, ContainerSpec, Fifos, Isolation, PullPolicy, Sandbox, StartPolicy, TmpfsMount,
    parse_size,
};
pub use listener::{ListenerConfig, TlsConfig};
use observability::RawObservability;
pub use observability::{
    DEFAULT_TRACES_ENDPOINT, ObservabilityConfig, TracesConfig, resolve_headers,
};
use pinning::RawPinning;
pub use pinning::{FirstUse, OnChange, PinningConfig, Poisoning};
use plugin::RawChainEntry;
pub use plugin::{
    DEFAULT_PLUGIN_MEMORY, InstanceMode, OnError, Phases, PluginConfig, method_matches,
    plugin_memory, plugin_timeout, tool_matches,
};
use ratelimit::RawRatelimit;
pub use ratelimit::{Concurrency, Quota, RateRule, RateScope, RatelimitConfig};
use redact::RawRedact;
pub use redact::{RedactAction, RedactConfig, RuleActions};
use schema::RawSchema;
pub use schema::{OutputAction, SchemaConfig};

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

/// 1-based line and column of a byte offset into a file's text, the column
/// counted in characters as editors count it (for errors that point into
/// the config, rule files, pin files and Cedar policies alike, so the same
/// text gets the same position whichever loader reports it). An offset
/// inside a character or past the end is taken back to a boundary.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = text.get(..end).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |nl| nl + 1);
    let column = before
        .get(line_start..)
        .map_or(0, |tail| tail.chars().count())
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
        let output = raw.schema.output.unwrap_or_default();
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
        let arguments = raw.audit.arguments.unwrap_or_default();
        let durability = raw.audit.durability.unwrap_or_default();

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
