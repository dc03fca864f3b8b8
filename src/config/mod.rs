//! The TOML config (`portcullis.toml`): types, defaults and validation.
//!
//! A config is parsed and checked once, at load, into [`Config`]; nothing is
//! re-validated on the hot path. Unknown keys are refused, and every error
//! names the file, the line and column where it can, and the key's path.
//!
//! Each section has a file of its own with its types as written (`Raw*`,
//! whose doc comments are the configuration reference: see [`reference`])
//! and as validated; each `Raw*` validates itself with a [`Validator`],
//! which knows the file and turns spans into lines. [`Validator::config`]
//! wires the sections in the order their dependencies ask for.

use std::collections::HashSet;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::Deserialize;
use toml::Spanned;

mod audit;
pub mod catalog;
mod chain;
mod code_mode;
mod container;
mod described;
mod discovery;
mod egress;
mod exchanges;
mod flow;
mod identities;
mod limits;
mod listener;
mod names;
mod oauth;
mod observability;
mod pinning;
mod plugin;
pub mod profiles;
mod proxy;
pub mod pulled;
mod ratelimit;
mod redact;
pub mod reference;
pub mod registry;
mod sandbox;
mod schema;
mod secrets;
mod server_json;
mod servers;
mod signatures;
#[cfg(test)]
mod tests;
mod values;
mod vault;

use audit::RawAudit;
pub use audit::{
    AuditArguments, AuditConfig, CHECKPOINT_EVERY, CHECKPOINT_INTERVAL, Durability, Retention,
    SHIP_BATCH, ShipConfig, check_database_url, host_name,
};
pub use chain::ChainEntry;
use chain::{Chain, Switchable};
use code_mode::RawCodeMode;
pub use code_mode::{CODE_TOOL, CodeModeConfig, ScriptLimits};
pub use container::{ContainerSpec, Fifos, Isolation, PullPolicy, StartPolicy};
use described::RawCatalog;
pub use described::{CatalogConfig, from_label};
use discovery::RawDiscovery;
pub use discovery::{Discoverable, DiscoveryConfig, PROXY_SERVER};
use egress::RawEgress;
pub use egress::{EgressConfig, parse_range};
use flow::RawFlow;
pub use flow::{DescribedLabels, FlowConfig, Label, LabelRule, Labelled, Labels};
pub use identities::{AuditorConfig, ClientConfig};
use identities::{RawAuditor, RawClient, Taken};
pub use limits::LimitsConfig;
use limits::RawLimits;
use listener::RawListener;
pub use listener::{ListenerConfig, TlsConfig};
pub use names::valid_server_name;
use oauth::RawOauth;
pub use oauth::{
    IntrospectionConfig, JwtAlgorithm, OauthConfig, ProviderConfig, WebClientConfig, is_loopback,
    secure_url,
};
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
use proxy::RawProxy;
pub use proxy::{ProxyConfig, ToolRefusals};
use ratelimit::RawRatelimit;
pub use ratelimit::{
    Concurrency, Quota, RateRule, RateScope, RatelimitConfig, SHARED_TIMEOUT, SharedConfig,
    Unavailable, check_redis_url,
};
use redact::RawRedact;
pub use redact::{RedactAction, RedactConfig, RuleActions};
pub use registry::{RegistryConfig, RegistryRef};
pub use sandbox::{BindMount, Sandbox, TmpfsMount};
use schema::RawSchema;
pub use schema::{OutputAction, SchemaConfig};
pub use secrets::{HeaderValue, SecretRef, form_encoded};
use servers::RawServer;
pub use servers::{
    BreakerConfig, ProcessSpec, RemoteGrant, RemoteOauth, RemoteSpec, RemoteTransport,
    ServerConfig, ServerProtocol, UpstreamSpec,
};
use signatures::RawSignatures;
pub use signatures::{SignatureKey, SignatureKeys};
pub use values::{parse_duration, parse_size, read_regular};
use vault::RawVault;
pub use vault::{ContainerSignIn, SignInSpec, VaultConfig};

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
    /// Clients with access tokens from the organisation's identity
    /// provider, beside `clients`' static tokens.
    pub oauth: Option<OauthConfig>,
    pub servers: Vec<ServerConfig>,
    /// The catalogs `[[catalogs]]` names, read.
    pub catalogs: Vec<CatalogConfig>,
    /// `[discovery]`: the servers agents may find and add, if it is on.
    pub discovery: Option<DiscoveryConfig>,
    /// `[code_mode]`: the tool `portcullis__code`, if it is on.
    pub code_mode: Option<CodeModeConfig>,
    /// `[flow]`: the labels policies follow across calls.
    pub flow: FlowConfig,
    /// The profile in force (`serve --profile NAME`), if any.
    pub profile: Option<profiles::Profile>,
    pub chain: Vec<ChainEntry>,
    pub audit: AuditConfig,
    pub redact: RedactConfig,
    pub ratelimit: RatelimitConfig,
    pub schema: SchemaConfig,
    pub pinning: PinningConfig,
    pub observability: ObservabilityConfig,
    /// `[egress]`: also carried by each part that connects out (remote
    /// servers, identity providers, the trace exporter).
    pub egress: EgressConfig,
    /// `[vault]`: the keys that seal users' tokens for remote servers.
    pub vault: VaultConfig,
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

/// The whole file as written. Spans point errors found after parsing at a
/// line. Its doc comments are the reference's: keep them short and say
/// what the README says.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    /// The proxy itself: where it listens, keeps its files and finds its
    /// policies; its timeouts and session caps.
    #[serde(default)]
    proxy: RawProxy,
    /// What the HTTP listener allows a peer before it has proved anything,
    /// and TLS.
    #[serde(default)]
    listener: RawListener,
    /// The `limits` interceptor: the size and depth of every message.
    #[serde(default)]
    limits: RawLimits,
    /// The clients that may connect, one entry each.
    #[serde(default)]
    #[schemars(with = "Vec<RawClient>")]
    clients: Vec<Spanned<RawClient>>,
    /// Who may read the audit log (the admin API, the console, `/metrics`),
    /// one entry each.
    #[serde(default)]
    #[schemars(with = "Vec<RawAuditor>")]
    auditors: Vec<Spanned<RawAuditor>>,
    /// Clients with access tokens from the organisation's OAuth 2.1 / OIDC
    /// provider: the proxy is then an OAuth protected resource for `/mcp`.
    oauth: Option<RawOauth>,
    /// Catalogs of servers in Docker's format, which `[[servers]] from =
    /// "catalog://NAME/SERVER"` draws on.
    #[serde(default)]
    #[schemars(with = "Vec<RawCatalog>")]
    catalogs: Vec<Spanned<RawCatalog>>,
    /// MCP registries (the official one's API, or a private one speaking
    /// it) that `[[servers]] from = "registry://NAME/…"` draws on; `official`
    /// is known without being written.
    #[serde(default)]
    #[schemars(with = "Vec<registry::RawRegistry>")]
    registries: Vec<Spanned<registry::RawRegistry>>,
    /// What agents may find and add themselves: `portcullis__find`,
    /// `portcullis__add` and `portcullis__remove`, over these catalogs.
    #[serde(default)]
    discovery: RawDiscovery,
    /// Code mode: the tool `portcullis__code`, which runs an agent's
    /// JavaScript in an isolated engine, each tool call inside it a full
    /// exchange of the calling client.
    #[serde(default)]
    code_mode: RawCodeMode,
    /// The labels of tools, prompts and resources (untrusted, private,
    /// sink) that policies follow across a session's calls
    /// (`context.flow`, `resource.labels`).
    #[serde(default)]
    flow: RawFlow,
    /// The operator's public keys, and which servers' images must be
    /// signed by one of them.
    #[serde(default)]
    signatures: RawSignatures,
    /// The MCP servers behind the proxy, one entry each: exactly one of
    /// `container`, `process`, `remote` or `from`.
    #[serde(default)]
    #[schemars(with = "Vec<RawServer>")]
    servers: Vec<Spanned<RawServer>>,
    /// The interceptors in order. Without it: `limits`, `ratelimit` if
    /// quotas are set, `authz` if policies are set, `pinning`, `schema`,
    /// `redact`. A chain of `wasm` entries only keeps that order and runs
    /// them after it; a chain that names a native interceptor is the whole
    /// order and must place each one that is on (`limits` runs first if it
    /// leaves it out).
    #[serde(default)]
    #[schemars(with = "Vec<RawChainEntry>")]
    chain: Vec<Spanned<RawChainEntry>>,
    /// The audit log: durability, retention, what records keep, and its
    /// keys.
    #[serde(default)]
    audit: RawAudit,
    /// Secret scanning, on unless `enabled = false`.
    #[serde(default)]
    redact: RawRedact,
    /// Quotas per client, server and tool, and requests in flight per
    /// server; off unless a quota is set.
    #[serde(default)]
    ratelimit: RawRatelimit,
    /// Tool arguments and results checked against the tools' schemas; on
    /// unless `enabled = false`.
    #[serde(default)]
    schema: RawSchema,
    /// Tool definitions pinned by their SHA-256, and the poisoning scan; on
    /// unless `enabled = false`.
    #[serde(default)]
    pinning: RawPinning,
    /// Metrics and traces.
    #[serde(default)]
    observability: RawObservability,
    /// Where the proxy may connect on its own: it follows no redirect, and
    /// refuses loopback, private, link-local and multicast addresses that
    /// a peer named (link-local ones even where this file names them)
    /// unless a range here allows them.
    #[serde(default)]
    egress: RawEgress,
    /// The keys that seal the tokens users got by signing in to remote
    /// servers.
    #[serde(default)]
    vault: RawVault,
}

/// Whether two forms of a section (or of a server) say the same, as a
/// reload compares them. Config values hold no hashed collections, so
/// their debug forms are stable and cover every setting (secrets by
/// reference: a secret's value is read when its server starts).
pub fn same_settings(a: &dyn fmt::Debug, b: &dyn fmt::Debug) -> bool {
    settings(a) == settings(b)
}

/// A section's settings as compared by a reload: its debug form without
/// where values were written (`Located`'s line and column: a line added
/// above them changes nothing).
fn settings(section: &dyn fmt::Debug) -> String {
    const AT: &str = "location: Some((";
    let text = format!("{section:?}");
    let mut kept = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(at) = rest.find(AT) {
        let (before, after) = rest.split_at(at);
        kept.push_str(before);
        match after.find("))") {
            Some(end) => rest = after.get(end + 2..).unwrap_or_default(),
            None => {
                rest = after;
                break;
            }
        }
    }
    kept.push_str(rest);
    kept
}

/// A config file's text.
fn read_config(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|err| ConfigError {
        file: path.to_owned(),
        location: None,
        key: None,
        message: format!("cannot read the config: {err}"),
    })
}

/// The config file's text, and the part of it `T` reads (the rest unread).
fn read_partly<T: serde::de::DeserializeOwned>(path: &Path) -> Result<(String, T), ConfigError> {
    let text = values::read_regular(path, 16 * 1024 * 1024).map_err(|err| ConfigError {
        file: path.to_owned(),
        location: None,
        key: None,
        message: format!("cannot read the config: {err}"),
    })?;
    let raw = toml::from_str(&text).map_err(|err| ConfigError {
        file: path.to_owned(),
        location: err.span().map(|span| line_col(&text, span.start)),
        key: None,
        message: err.message().to_owned(),
    })?;
    Ok((text, raw))
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::parse(&read_config(path)?, path)
    }

    /// Validates config text; `path` names it in errors and anchors relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        Validator { text, path }.config(Self::parse_raw(text, path)?)
    }

    /// Config text as written, not validated yet.
    fn parse_raw(text: &str, path: &Path) -> Result<RawConfig, ConfigError> {
        let located = |span: Option<Range<usize>>| span.map(|span| line_col(text, span.start));
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
        Ok(raw)
    }

    /// The config's `[[catalogs]]` alone, the rest of the file unread (an
    /// OCI catalog not pulled yet is listed as such): what `portcullis
    /// catalog` works on, before the whole config can load.
    pub fn catalogs_only(path: &Path) -> Result<Vec<CatalogConfig>, ConfigError> {
        #[derive(Deserialize)]
        struct Catalogs {
            #[serde(default)]
            catalogs: Vec<Spanned<RawCatalog>>,
        }
        let (text, raw) = read_partly::<Catalogs>(path)?;
        let validator = Validator { text: &text, path };
        let mut names = Vec::new();
        validator.each(raw.catalogs, "catalogs", |at, raw| {
            raw.validate(at, &validator, &mut names)
        })
    }

    /// The config's registries and its `registry://` servers (name and
    /// reference), the rest of the file unread: what `portcullis registry
    /// pull` fetches before the config can load whole.
    pub fn registry_servers(path: &Path) -> Result<registry::RegistryServers, ConfigError> {
        #[derive(Deserialize)]
        struct Server {
            name: String,
            from: Option<String>,
        }
        #[derive(Deserialize)]
        struct Registries {
            #[serde(default)]
            registries: Vec<Spanned<registry::RawRegistry>>,
            #[serde(default)]
            servers: Vec<Spanned<Server>>,
        }
        let (text, raw) = read_partly::<Registries>(path)?;
        let validator = Validator { text: &text, path };
        let mut names = Vec::new();
        let registries = validator.each(raw.registries, "registries", |at, raw| {
            raw.validate(at, &validator, &mut names)
        })?;
        let registries = registry::with_official(registries, &validator);
        let servers = validator.each(raw.servers, "servers", |at, server| {
            let Some(rest) = server
                .from
                .as_deref()
                .and_then(|from| from.strip_prefix("registry://"))
            else {
                return Ok(None);
            };
            let reference = RegistryRef::parse(rest)
                .map_err(|m| at.error(".from", format!("server `{}`: {m}", server.name)))?;
            if !registries.iter().any(|r| r.name == reference.registry) {
                return Err(at.error(
                    ".from",
                    format!(
                        "server `{}`: no `[[registries]]` is named `{}`",
                        server.name, reference.registry
                    ),
                ));
            }
            Ok(Some((server.name, reference)))
        })?;
        Ok(registry::RegistryServers {
            registries,
            servers: servers.into_iter().flatten().collect(),
        })
    }

    /// The sections of `next` (this config loaded again) that differ from
    /// this one's and that a running proxy applies only at its next start:
    /// everything but the servers and the profile, which a reload applies.
    /// (Config values hold no hashed collections: their debug forms are
    /// stable, and compare every setting.)
    pub fn changes_needing_restart(&self, next: &Config) -> Vec<&'static str> {
        let differs = |a: &dyn fmt::Debug, b: &dyn fmt::Debug| !same_settings(a, b);
        let sections: [(&'static str, &dyn fmt::Debug, &dyn fmt::Debug); 18] = [
            ("proxy", &self.proxy, &next.proxy),
            ("listener", &self.listener, &next.listener),
            ("limits", &self.limits, &next.limits),
            ("clients", &self.clients, &next.clients),
            ("auditors", &self.auditors, &next.auditors),
            ("oauth", &self.oauth, &next.oauth),
            ("discovery", &self.discovery, &next.discovery),
            ("code_mode", &self.code_mode, &next.code_mode),
            ("flow", &self.flow, &next.flow),
            ("chain", &self.chain, &next.chain),
            ("audit", &self.audit, &next.audit),
            ("redact", &self.redact, &next.redact),
            ("ratelimit", &self.ratelimit, &next.ratelimit),
            ("schema", &self.schema, &next.schema),
            ("pinning", &self.pinning, &next.pinning),
            ("observability", &self.observability, &next.observability),
            ("egress", &self.egress, &next.egress),
            ("vault", &self.vault, &next.vault),
        ];
        sections
            .into_iter()
            .filter(|(_, a, b)| differs(*a, *b))
            .map(|(name, _, _)| name)
            .collect()
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

/// Validates what was written: knows the file, so that errors name it with
/// a line and column, and relative paths resolve against its folder.
struct Validator<'a> {
    text: &'a str,
    path: &'a Path,
}

impl Validator<'_> {
    /// The whole config, section by section: each one after those it
    /// depends on, and the chain's native interceptors placed as their
    /// sections switch them on.
    fn config(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let listener = raw.listener.validate(self)?;
        let proxy = raw.proxy.validate(self, &listener)?;
        let limits = raw.limits.validate(self)?;
        let egress = raw.egress.validate(self)?;
        let vault = raw.vault.validate(self, &proxy.data_dir)?;
        let mut taken = Taken::default();
        let clients = self.each(raw.clients, "clients", |at, raw| {
            raw.validate(at, &mut taken)
        })?;
        let auditors = self.each(raw.auditors, "auditors", |at, raw| {
            raw.validate(at, &mut taken)
        })?;
        identities::check_certificates(self, &clients, &listener)?;
        let mut oauth = raw.oauth.map(|raw| raw.validate(self)).transpose()?;
        if oauth.is_some() && proxy.listen.is_none() {
            return Err(self.error(
                None,
                "oauth",
                "access tokens are for HTTP clients: set `[proxy] listen`".into(),
            ));
        }
        let mut catalog_names = Vec::new();
        let catalogs = self.each(raw.catalogs, "catalogs", |at, raw| {
            raw.validate(at, self, &mut catalog_names)
        })?;
        if let Some(unpulled) = catalogs.iter().find(|catalog| catalog.unpulled) {
            return Err(self.error(
                None,
                "catalogs",
                format!(
                    "catalog `{}` (`{}`) has not been pulled: run `portcullis catalog pull --config {}`",
                    unpulled.name,
                    unpulled.oci.as_deref().unwrap_or_default(),
                    self.path.display()
                ),
            ));
        }
        let mut registry_names = Vec::new();
        let registries = self.each(raw.registries, "registries", |at, raw| {
            raw.validate(at, self, &mut registry_names)
        })?;
        let registries = registry::with_official(registries, self);
        let sources = described::Sources {
            catalogs: &catalogs,
            registries: &registries,
        };
        let mut names = HashSet::new();
        let mut servers = self.each(raw.servers, "servers", |at, raw| {
            raw.validate(at, &mut names, &proxy, &sources)
        })?;
        exchanges::check(self, &mut servers, oauth.as_ref())?;
        vault::check_sign_in(self, &servers, &vault, &clients)?;
        let mut discovery = raw.discovery.validate(self, &catalogs, &servers, &proxy)?;
        let code_mode = raw.code_mode.validate(self, &servers)?;
        let mut flow = raw.flow.validate(self)?;
        let offered = discovery.iter().flat_map(|d| &d.servers);
        flow.describe(
            servers
                .iter()
                .chain(offered.filter_map(|found| found.server.as_ref().ok())),
            &proxy.namespace_separator,
        );
        raw.signatures
            .apply(self, &mut servers, discovery.as_mut())?;
        let mut chain = Chain::parse(self, raw.chain, &proxy)?;
        chain.place(self, Switchable::Authz, proxy.policies.is_some())?;
        let ratelimit = raw.ratelimit.validate(self, &clients, &servers, &proxy)?;
        chain.place(self, Switchable::Ratelimit, ratelimit.enabled())?;
        let pinning = raw.pinning.validate(self, &proxy);
        chain.place(self, Switchable::Pinning, pinning.enabled)?;
        let schema = raw.schema.validate();
        chain.place(self, Switchable::Schema, schema.enabled)?;
        let redact = raw.redact.validate(self)?;
        chain.place(self, Switchable::Redact, redact.enabled)?;
        let mut observability = raw.observability.validate(self)?;
        egress::hand_out(&egress, &mut servers, oauth.as_mut(), &mut observability);
        Ok(Config {
            file: self.path.to_owned(),
            audit: raw.audit.validate(self, &proxy.data_dir)?,
            observability,
            proxy,
            listener,
            limits,
            clients,
            auditors,
            oauth,
            servers,
            catalogs,
            discovery,
            code_mode,
            flow,
            profile: None,
            chain: chain.finish(),
            redact,
            ratelimit,
            schema,
            pinning,
            egress,
            vault,
        })
    }

    fn error(&self, span: Option<Range<usize>>, key: &str, message: String) -> ConfigError {
        ConfigError {
            file: self.path.to_owned(),
            location: span.map(|span| line_col(self.text, span.start)),
            key: Some(key.to_owned()),
            message,
        }
    }

    /// A value with where it was written, for errors found after loading.
    fn located(&self, value: String, span: Range<usize>, key: String) -> Located<String> {
        Located {
            value,
            file: self.path.to_owned(),
            location: Some(line_col(self.text, span.start)),
            key,
        }
    }

    /// A path from the config: a relative one is relative to its folder.
    fn resolve(&self, path: PathBuf) -> PathBuf {
        if path.is_absolute() {
            path
        } else {
            self.path
                .parent()
                .unwrap_or_else(|| Path::new("."))
                .join(path)
        }
    }

    /// A secret reference (`file:PATH`, relative to the config's folder, or
    /// `env:VAR`); the caller says where it was written.
    fn secret_ref(&self, text: &str) -> Result<SecretRef, String> {
        secrets::parse_secret_ref(text, self.path.parent().unwrap_or_else(|| Path::new(".")))
    }

    /// A key written as a string of some form (a duration, a quota),
    /// parsed by `parse` if it is set; an error points at the value.
    fn parsed<T>(
        &self,
        value: Option<&Spanned<String>>,
        key: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<Option<T>, ConfigError> {
        value
            .map(|value| {
                parse(value.get_ref())
                    .map_err(|message| self.error(Some(value.span()), key, message))
            })
            .transpose()
    }

    /// A number key that must be at least `least`, if it is set.
    fn at_least<N: PartialOrd + fmt::Display>(
        &self,
        value: Option<Spanned<N>>,
        key: &str,
        least: N,
    ) -> Result<Option<N>, ConfigError> {
        match value {
            Some(value) if *value.get_ref() < least => {
                Err(self.error(Some(value.span()), key, format!("must be at least {least}")))
            }
            value => Ok(value.map(Spanned::into_inner)),
        }
    }

    /// The entries of an array of tables (`servers`), each validated by
    /// `validate` with its place.
    fn each<T, U>(
        &self,
        list: Vec<Spanned<T>>,
        array: &str,
        mut validate: impl FnMut(&Entry<'_>, T) -> Result<U, ConfigError>,
    ) -> Result<Vec<U>, ConfigError> {
        self.entries(list, array)
            .map(|(at, item)| validate(&at, item))
            .collect()
    }

    /// The entries of an array of tables, each with its place.
    fn entries<'v, T>(
        &'v self,
        list: Vec<Spanned<T>>,
        array: &'v str,
    ) -> impl Iterator<Item = (Entry<'v>, T)> {
        list.into_iter().enumerate().map(move |(index, item)| {
            let at = Entry {
                validator: self,
                span: item.span(),
                key: format!("{array}[{index}]"),
            };
            (at, item.into_inner())
        })
    }
}

/// Where an entry of an array of tables (`servers[2]`) was written: errors
/// about its keys point at the entry's first line, or at a value in it.
struct Entry<'v> {
    validator: &'v Validator<'v>,
    span: Range<usize>,
    /// `servers[2]`.
    key: String,
}

impl Entry<'_> {
    /// An error about the key `below` the entry (`.name`; `""`: the entry).
    fn error(&self, below: &str, message: String) -> ConfigError {
        self.error_in(self.span.clone(), below, message)
    }

    /// An error about the key `below` the entry, at the value's `span`.
    fn error_in(&self, span: Range<usize>, below: &str, message: String) -> ConfigError {
        self.validator
            .error(Some(span), &format!("{}{below}", self.key), message)
    }
}
