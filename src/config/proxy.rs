//! `[proxy]`: where the proxy listens, keeps its files and finds its
//! policies; its timeouts and session caps.

use std::net::SocketAddr;
use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;
use toml::Spanned;

use super::names::is_server_name_char;
use super::values::{AddressText, DurationText, PathText};
use super::{ConfigError, ListenerConfig, SecretRef, Validator, parse_duration};

#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub listen: Option<SocketAddr>,
    pub data_dir: PathBuf,
    pub policies: Option<PathBuf>,
    /// A second policy folder decided beside `policies` and never enforced
    /// (shadow policies): each decision's record holds both.
    pub shadow_policies: Option<PathBuf>,
    /// How often the policy folder, the pin file and the config (with its
    /// catalogs and profile) are checked for changes (a SIGHUP reloads at
    /// once).
    pub policy_poll: Duration,
    /// The static `portcullis-bridge`, for container servers with
    /// `stdio = "fifo"`.
    pub bridge: Option<PathBuf>,
    pub namespace_separator: String,
    pub call_timeout: Duration,
    /// How long a person is given to answer when a policy lets them
    /// override a refusal (`@ask`).
    pub ask_timeout: Duration,
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
    /// The keys that seal session ids (`session_keys`): the first seals
    /// new sessions, each opens them. Empty: ids are random, and only this
    /// replica knows its sessions.
    pub session_keys: Vec<SecretRef>,
    /// How long after its `initialize` a sealed session id may be resumed
    /// by a replica that does not hold the session.
    pub session_max_age: Duration,
    /// How a `tools/call` refused by an interceptor is answered.
    pub tool_refusals: ToolRefusals,
}

/// `[proxy] tool_refusals`: how a `tools/call` an interceptor refused
/// (a policy, a quota, the schema, redaction, a pin, a plugin) is answered.
/// Other requests are always answered with a JSON-RPC error.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ToolRefusals {
    /// A tool result with `isError: true`: its text says what was refused
    /// and why (the JSON-RPC error's words), the decision is in its
    /// `_meta` (`dev.portcullis/refusal`). Agent frameworks hand a tool
    /// result to their model; most turn a JSON-RPC error into a generic
    /// failure, or end the agent's run.
    #[default]
    Result,
    /// A JSON-RPC error (code `-32010` for a policy's refusal, `-32015`
    /// for a quota's...), with the interceptor in its `data`.
    Error,
}

/// `[proxy]` as written.
#[derive(Deserialize, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProxy {
    /// The streamable HTTP listener (`/mcp`, the admin API and console,
    /// `/metrics`). An address that is not loopback needs TLS
    /// (`[listener] tls_cert`) or `[listener] insecure_plaintext = true`.
    #[schemars(
        with = "Option<AddressText>",
        extend("x-default" = "none: stdio only")
    )]
    listen: Option<Spanned<String>>,
    /// The proxy's own folder: the audit log (`audit/`), the pins, container
    /// FIFOs (`run/`). Private: one that another user owns or may write to
    /// is refused.
    #[schemars(with = "Option<PathText>", extend("default" = ".portcullis"))]
    data_dir: Option<PathBuf>,
    /// The folder with the Cedar schema and `*.cedar` policies; setting it
    /// puts `authz` in the chain.
    #[schemars(with = "Option<PathText>")]
    policies: Option<Spanned<PathBuf>>,
    /// A candidate policy folder, decided beside `policies` on every request
    /// authz decides and never enforced: each record holds both decisions,
    /// and metrics count where they differ (needs `policies`).
    #[schemars(with = "Option<PathText>")]
    shadow_policies: Option<Spanned<PathBuf>>,
    /// How often the policy folder, the pin file, and the config with its
    /// catalogs and profile are checked for changes (SIGHUP reloads at
    /// once).
    #[schemars(with = "Option<DurationText>", extend("default" = "1s"))]
    policy_poll: Option<Spanned<String>>,
    /// The static `portcullis-bridge`: container servers then speak through
    /// two FIFOs (`stdio = "fifo"`) instead of the engine's attach stream.
    #[schemars(with = "Option<PathText>")]
    bridge: Option<PathBuf>,
    /// Joins a server's name and its tool's (`github__create_issue`); none
    /// of its characters may be one server names use (`a-z`, `0-9`, `-`), so
    /// that a namespaced name splits one way only.
    #[schemars(with = "Option<String>", extend("default" = "__"))]
    namespace_separator: Option<Spanned<String>>,
    /// How long a call may take; a server may set its own `timeout`.
    #[schemars(with = "Option<DurationText>", extend("default" = "60s"))]
    call_timeout: Option<Spanned<String>>,
    /// How long the person behind an agent is given to answer when a
    /// refusal is one a policy lets them override (`@ask`); unanswered, the
    /// call is refused.
    #[schemars(with = "Option<DurationText>", extend("default" = "2m"))]
    ask_timeout: Option<Spanned<String>>,
    /// How long start-up (and a lazy server's start) waits for a server to
    /// come up.
    #[schemars(with = "Option<DurationText>", extend("default" = "30s"))]
    startup_timeout: Option<Spanned<String>>,
    /// Browser origins allowed to call `/mcp`: a request with another
    /// `Origin` header is refused (403).
    #[serde(default)]
    allowed_origins: Vec<String>,
    /// Host names and addresses the `Host` header may name, besides
    /// `localhost`, `127.0.0.1`, `[::1]` and the listen address; without
    /// scheme or port (`mcp.example.com`, `10.0.0.5`).
    #[serde(default)]
    allowed_hosts: Vec<String>,
    /// Items per page of the lists the proxy serves; at least 1.
    #[schemars(with = "Option<usize>", extend("default" = 1000))]
    list_page_size: Option<Spanned<usize>>,
    /// Sessions at once, all clients together (503 past it).
    #[schemars(extend("default" = 1000))]
    max_sessions: Option<usize>,
    /// Sessions one client may hold at once (429 past it), from 1 to
    /// `max_sessions`.
    #[schemars(
        with = "Option<usize>",
        extend("x-default" = "`100`, or `max_sessions` when that is less")
    )]
    max_sessions_per_client: Option<Spanned<usize>>,
    /// A session without a request for this long is ended (with
    /// `session_keys`: ended on this replica; another replica may still
    /// resume it until `session_max_age`).
    #[schemars(with = "Option<DurationText>", extend("default" = "1h"))]
    session_idle_timeout: Option<Spanned<String>>,
    /// Keys (hex, 32 bytes: `portcullis session-key` makes one) as secret
    /// references (`file:…`, `env:…`, `dotenv:…#KEY`). With them, session
    /// ids are sealed (AES-256-GCM) and any replica holding one of the
    /// keys serves a session another replica began. The first key seals
    /// new sessions; the others still open theirs (key rotation).
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    session_keys: Vec<Spanned<String>>,
    /// How long after its `initialize` a sealed session may be resumed on
    /// a replica that does not hold it (after which the client is told the
    /// session is unknown, and begins another).
    #[schemars(with = "Option<DurationText>", extend("default" = "24h"))]
    session_max_age: Option<Spanned<String>>,
    /// How a `tools/call` an interceptor refused is answered: `"result"`,
    /// a tool result with `isError: true` whose text says what was refused
    /// and why, for the agent's model to read (the decision in its
    /// `_meta`, `dev.portcullis/refusal`); or `"error"`, a JSON-RPC error.
    /// Other requests always get a JSON-RPC error.
    #[serde(default)]
    #[schemars(extend("default" = "result"))]
    tool_refusals: ToolRefusals,
}

impl RawProxy {
    /// `[proxy]`; `listener` decides whether a listen address off loopback
    /// is allowed.
    pub(super) fn validate(
        self,
        v: &Validator<'_>,
        listener: &ListenerConfig,
    ) -> Result<ProxyConfig, ConfigError> {
        let listen_span = self.listen.as_ref().map(Spanned::span);
        let listen = match self.listen {
            None => None,
            Some(listen) => Some(listen.get_ref().parse::<SocketAddr>().map_err(|_| {
                v.error(
                    Some(listen.span()),
                    "proxy.listen",
                    format!(
                        "`{}` is not an address like `127.0.0.1:8811`",
                        listen.get_ref()
                    ),
                )
            })?),
        };
        let namespace_separator = separator(v, self.namespace_separator)?;
        let call_timeout = v
            .parsed(
                self.call_timeout.as_ref(),
                "proxy.call_timeout",
                parse_duration,
            )?
            .unwrap_or(Duration::from_secs(60));
        let list_page_size = v
            .at_least(self.list_page_size, "proxy.list_page_size", 1)?
            .unwrap_or(1000);
        let max_sessions = self.max_sessions.unwrap_or(1000).max(1);
        let max_sessions_per_client = match self.max_sessions_per_client {
            None => max_sessions.min(100),
            Some(cap) if (1..=max_sessions).contains(cap.get_ref()) => cap.into_inner(),
            Some(cap) => {
                return Err(v.error(
                    Some(cap.span()),
                    "proxy.max_sessions_per_client",
                    format!("must be between 1 and proxy.max_sessions ({max_sessions})"),
                ));
            }
        };
        let session_keys = self
            .session_keys
            .iter()
            .enumerate()
            .map(|(i, key)| {
                v.secret_ref(key.get_ref()).map_err(|message| {
                    v.error(
                        Some(key.span()),
                        &format!("proxy.session_keys[{i}]"),
                        message,
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let proxy = ProxyConfig {
            listen,
            data_dir: v.resolve(
                self.data_dir
                    .unwrap_or_else(|| PathBuf::from(".portcullis")),
            ),
            shadow_policies: shadow_folder(v, self.shadow_policies, self.policies.is_some())?,
            policies: self.policies.map(|p| v.resolve(p.into_inner())),
            policy_poll: v
                .parsed(
                    self.policy_poll.as_ref(),
                    "proxy.policy_poll",
                    parse_duration,
                )?
                .unwrap_or(Duration::from_secs(1)),
            bridge: self.bridge.map(|p| v.resolve(p)),
            namespace_separator,
            call_timeout,
            ask_timeout: v
                .parsed(
                    self.ask_timeout.as_ref(),
                    "proxy.ask_timeout",
                    parse_duration,
                )?
                .unwrap_or(Duration::from_secs(120)),
            startup_timeout: v
                .parsed(
                    self.startup_timeout.as_ref(),
                    "proxy.startup_timeout",
                    parse_duration,
                )?
                .unwrap_or(Duration::from_secs(30)),
            allowed_origins: self.allowed_origins,
            allowed_hosts: self
                .allowed_hosts
                .iter()
                .map(|host| host.trim().to_ascii_lowercase())
                .collect(),
            list_page_size,
            max_sessions,
            max_sessions_per_client,
            session_idle_timeout: v
                .parsed(
                    self.session_idle_timeout.as_ref(),
                    "proxy.session_idle_timeout",
                    parse_duration,
                )?
                .unwrap_or(Duration::from_secs(3600)),
            session_keys,
            session_max_age: v
                .parsed(
                    self.session_max_age.as_ref(),
                    "proxy.session_max_age",
                    parse_duration,
                )?
                .unwrap_or(Duration::from_secs(24 * 3600)),
            tool_refusals: self.tool_refusals,
        };
        check_exposure(v, &proxy, listen_span, listener)?;
        Ok(proxy)
    }
}

fn separator(v: &Validator<'_>, raw: Option<Spanned<String>>) -> Result<String, ConfigError> {
    let Some(sep) = raw else {
        return Ok("__".to_owned());
    };
    let value = sep.get_ref();
    if value.is_empty() || value.chars().any(is_server_name_char) {
        return Err(v.error(
            Some(sep.span()),
            "proxy.namespace_separator",
            format!(
                "`{value}` must be non-empty and use none of the characters server names use (a-z, 0-9, `-`), so that `server{value}tool` splits one way only"
            ),
        ));
    }
    Ok(sep.into_inner())
}

/// Host names without scheme or port, and no plain HTTP off loopback
/// unless the config says the network is its own.
fn check_exposure(
    v: &Validator<'_>,
    proxy: &ProxyConfig,
    listen_span: Option<Range<usize>>,
    listener: &ListenerConfig,
) -> Result<(), ConfigError> {
    if let Some(host) = proxy.allowed_hosts.iter().find(|h| {
        h.is_empty()
            || h.contains([':', '[', ']', '/', '@']) && h.parse::<std::net::Ipv6Addr>().is_err()
    }) {
        return Err(v.error(
            None,
            "proxy.allowed_hosts",
            format!("`{host}` is not a host name or address: give names without scheme or port (`mcp.example.com`, `10.0.0.5`, `2001:db8::5`)"),
        ));
    }
    if let Some(addr) = proxy.listen
        && !addr.ip().is_loopback()
        && listener.tls.is_none()
        && !listener.insecure_plaintext
    {
        return Err(v.error(
            listen_span,
            "proxy.listen",
            format!(
                "`{addr}` is not a loopback address, and the listener would speak plain HTTP: bearer tokens and every call would cross the network readable by anyone on the path; set `[listener] tls_cert` and `tls_key`, or set `[listener] insecure_plaintext = true` if the network is yours alone (a container's own network, say)"
            ),
        ));
    }
    Ok(())
}

/// `shadow_policies`, resolved: only beside enforced `policies`.
fn shadow_folder(
    v: &Validator<'_>,
    shadow: Option<Spanned<PathBuf>>,
    enforced: bool,
) -> Result<Option<PathBuf>, ConfigError> {
    match shadow {
        Some(shadow) if !enforced => Err(v.error(
            Some(shadow.span()),
            "proxy.shadow_policies",
            "shadow policies are decided beside the enforced ones: set `policies` too".into(),
        )),
        shadow => Ok(shadow.map(|p| v.resolve(p.into_inner()))),
    }
}
