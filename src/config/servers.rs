//! `[[servers]]`: the MCP servers behind the proxy, each a `container`, a
//! `process` or a `remote`, with its secrets and timeout.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;

use super::container::RawContainer;
use super::described::{self, Described, DescribedUpstream, Sources};
use super::names::{is_identifier, valid_server_name};
use super::registry::Resolution;
use super::sandbox::RawSandbox;
use super::secrets::{self, HeaderValue, SecretRef, check_args, check_env};
use super::server_json::{RegistryUse, RemoteKind};
use super::values::{DurationText, HeaderText, PathText, SecretText};
use super::vault::{RawSignIn, SignInSpec};
use super::{ConfigError, ContainerSpec, Entry, ProxyConfig, parse_duration};

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub name: String,
    pub kind: UpstreamSpec,
    /// Per-call timeout; the proxy's `call_timeout` unless the server sets one.
    pub call_timeout: Duration,
    pub secrets: BTreeMap<String, SecretRef>,
    /// The revision the proxy speaks to it.
    pub protocol: ServerProtocol,
    /// When its calls are refused at once for failing.
    pub breaker: BreakerConfig,
    /// For a `registry://` server, what it resolved to.
    pub resolved: Option<Resolution>,
}

/// `[[servers]] breaker`: when `failures` clients' calls in a row fail (a
/// timeout, the server unreachable or answering an HTTP error other than
/// 401 and 403, a failed
/// start) and the server does not answer the proxy's own question either,
/// its calls are refused at once; the proxy asks again every `cool_down`,
/// and an answer closes the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// 0: never opens.
    pub failures: u32,
    pub cool_down: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failures: 5,
            cool_down: Duration::from_secs(30),
        }
    }
}

/// `[servers.breaker]` as written.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawBreaker {
    /// Clients' calls that fail in a row (timed out, the server unreachable
    /// or answering an HTTP error other than 401 and 403, which refuse a
    /// credential, not started) before the proxy asks the
    /// server something of its own (`ping`, or `server/discover`); if that
    /// fails too, its calls are refused at once. `0` never refuses. A reply
    /// of any kind, an error of the server's included, is an answer.
    #[schemars(extend("default" = 5))]
    failures: Option<u32>,
    /// How often the proxy asks a server whose calls are refused whether
    /// it answers again; its answer closes the breaker.
    #[schemars(with = "Option<DurationText>", extend("default" = "30s"))]
    cool_down: Option<String>,
}

impl RawBreaker {
    fn validate(self, at: &Entry<'_>) -> Result<BreakerConfig, ConfigError> {
        let default = BreakerConfig::default();
        let failures = self.failures.unwrap_or(default.failures);
        if failures > MAX_BREAKER_FAILURES {
            return Err(at.error(
                ".breaker.failures",
                format!("must be at most {MAX_BREAKER_FAILURES} (0 turns the breaker off)"),
            ));
        }
        let cool_down = match self.cool_down {
            None => default.cool_down,
            Some(text) => parse_duration(&text).map_err(|m| at.error(".breaker.cool_down", m))?,
        };
        if cool_down.is_zero() || cool_down > MAX_COOL_DOWN {
            return Err(at.error(
                ".breaker.cool_down",
                "must be more than 0s and at most 1h".to_owned(),
            ));
        }
        Ok(BreakerConfig {
            failures,
            cool_down,
        })
    }
}

const MAX_BREAKER_FAILURES: u32 = 10_000;
const MAX_COOL_DOWN: Duration = Duration::from_secs(3600);

/// `[[servers]] protocol`: the MCP revision the proxy speaks to a server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
pub enum ServerProtocol {
    /// The handshake (`initialize`), offering 2025-11-25: the server may
    /// answer with 2025-06-18.
    #[default]
    #[serde(rename = "2025-11-25")]
    Handshake,
    /// 2026-07-28 (stateless): `server/discover` at start, then each
    /// request with its envelope (over HTTP, a `remote` server's requests
    /// also with their headers, and no session).
    #[serde(rename = "2026-07-28")]
    Stateless,
    /// `server/discover` at the first start: 2026-07-28 if the server
    /// answers it as such, the handshake otherwise; remembered for the
    /// proxy's life.
    #[serde(rename = "auto")]
    Auto,
}

#[derive(Debug, Clone)]
pub enum UpstreamSpec {
    Process(ProcessSpec),
    Remote(RemoteSpec),
    Container(Box<ContainerSpec>),
}

impl UpstreamSpec {
    /// What its users sign in to, where each user signs in: a remote
    /// server with `sign_in`, or a container's sign-in (a remote of its
    /// resource, asked of its issuer directly).
    pub fn sign_in(&self) -> Option<&RemoteSpec> {
        match self {
            Self::Remote(remote) if remote.sign_in.is_some() => Some(remote),
            Self::Container(container) => container.sign_in.as_ref().map(|s| &s.remote),
            _ => None,
        }
    }

    pub fn kind_name(&self) -> &'static str {
        match self {
            Self::Process(_) => "process",
            Self::Remote(_) => "remote",
            Self::Container(_) => "container",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ProcessSpec {
    pub command: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub cwd: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct RemoteSpec {
    pub url: String,
    /// How the server is spoken to over HTTP.
    pub transport: RemoteTransport,
    pub headers: Vec<(String, HeaderValue)>,
    /// The server's own access token, from the organisation's
    /// authorization server (the client-credentials grant).
    pub oauth: Option<RemoteOauth>,
    /// Each client's user signs in: each client's connection sends that
    /// user's token from the vault (docs/signin.md).
    pub sign_in: Option<Box<SignInSpec>>,
    /// A peer named its URL (a registry's `server.json`): it is reached as
    /// `[egress]` reaches a learned address (loopback and private ranges
    /// refused unless `allow` names them), not as one the operator wrote.
    pub learned: bool,
    /// `[egress]`, which its connections are guarded by.
    pub egress: super::EgressConfig,
}

/// `remote = { transport = … }`: the HTTP transport a remote server speaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RemoteTransport {
    /// Streamable HTTP: each message POSTed to `url`.
    #[default]
    StreamableHttp,
    /// HTTP+SSE, the transport of protocol 2024-11-05: the proxy opens the
    /// stream at `url` and POSTs each message to the endpoint its first
    /// event names, which must be on `url`'s own origin.
    Sse,
}

/// `remote = { oauth = { … } }`: the proxy gets the server its own access
/// token with the OAuth 2.1 client-credentials grant (HTTP Basic), sends it
/// as `Authorization: Bearer …` and renews it before it expires. Never a
/// client's token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteOauth {
    pub token_endpoint: String,
    pub client_id: String,
    /// The name of the server's secret holding the client secret.
    pub client_secret: String,
    pub scope: Option<String>,
    /// The resource indicator (RFC 8707) asked for: the server's URL
    /// (without its query) unless set; `None` when set to `""` (a server,
    /// like Entra ID's, that refuses the parameter).
    pub resource: Option<String>,
    /// The `audience` asked for (Keycloak, Auth0), if any.
    pub audience: Option<String>,
    pub grant: RemoteGrant,
    /// With `token_exchange`: the `[[oauth.providers]]` whose users'
    /// tokens are exchanged at this token endpoint (set from the only
    /// provider when not written; checked against `[oauth]`).
    pub provider: Option<String>,
}

/// How a remote server's calls get their token (`remote.oauth.grant`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RemoteGrant {
    /// Every call with one token, the proxy's own (the client-credentials
    /// grant).
    ClientCredentials,
    /// Each client's calls, over its own connection to the server, with a
    /// token the authorization server issues for the client's user in
    /// exchange for the client's access token (RFC 8693; needs `[oauth]`):
    /// the server sees the user, never the user's own token. The server's
    /// tools are listed with the proxy's own token (client credentials).
    TokenExchange,
}

/// One `[[servers]]` entry as written.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    /// The server's name: 1-63 characters of `a-z`, `0-9` and `-`, starting
    /// and ending with a letter or digit. Its tools are `NAME__TOOL` to
    /// clients (`[proxy] namespace_separator`).
    name: String,
    /// A local command speaking MCP over stdio, run with the proxy's own
    /// rights (logged as `UNSANDBOXED` at every start).
    process: Option<RawProcess>,
    /// A server reached over streamable HTTP.
    remote: Option<RawRemote>,
    /// An image run by Docker under the hardened profile.
    container: Option<RawContainer>,
    /// Relaxations of a `container` server's hardened profile, each logged
    /// at every start.
    sandbox: Option<RawSandbox>,
    /// How long a call to this server may take.
    #[schemars(
        with = "Option<DurationText>",
        extend("x-default" = "`[proxy] call_timeout`")
    )]
    timeout: Option<String>,
    /// Secrets by name, read when the server starts and never printed: a
    /// `process` or `container` server gets each as an environment variable
    /// of that name (letters, digits and `_`, not starting with a digit); a
    /// `remote` server's headers name them as `secret:NAME`.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, SecretText>")]
    secrets: BTreeMap<String, String>,
    /// The server as described elsewhere, in Docker's catalog format:
    /// `catalog://CATALOG/SERVER` (an entry of a `[[catalogs]]` file),
    /// `file://PATH` (one server's YAML) or `docker://IMAGE[@sha256:…]` (the
    /// image's own `io.docker.server.metadata` label, read when it starts);
    /// or an MCP registry's `server.json`,
    /// `registry://REGISTRY/NAMESPACE/NAME@VERSION[#sha256:…]`, as
    /// `portcullis registry pull` kept it. Its image, command and
    /// environment (or its remote) are the description's; `container` may
    /// then set only how it runs, and what it asks beyond the hardened
    /// profile is refused unless `sandbox` grants it.
    from: Option<String>,
    /// Values for a `from` server's `{{server.key}}` templates, and for a
    /// `registry://` server's inputs (its arguments', environment
    /// variables', headers' and URL variables' names) that have no value of
    /// their own.
    #[serde(default)]
    config: BTreeMap<String, String>,
    /// A `registry://` server that offers both an OCI package and a remote
    /// runs this one: `"package"` (a container under the hardened profile)
    /// or `"remote"`.
    #[serde(rename = "use")]
    choice: Option<RegistryUse>,
    /// The MCP revision the proxy speaks to the server: `"2025-11-25"`
    /// (the handshake; the server may settle on 2025-06-18) or
    /// `"2026-07-28"` (no handshake: `server/discover`, then each request
    /// carries its envelope; what the proxy cannot yet relay of that
    /// revision is refused) or `"auto"` (found at the first start).
    #[serde(default)]
    #[schemars(extend("x-default" = "`\"2025-11-25\"`"))]
    protocol: ServerProtocol,
    /// Calls refused at once while the server keeps failing, until it
    /// answers the proxy again (`{ failures = 5, cool_down = "30s" }`).
    breaker: Option<RawBreaker>,
}

/// `[servers.process]` as written.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawProcess {
    /// The program: a name looked up in `PATH`, or a path (with a `/`),
    /// relative to the config file's folder.
    command: String,
    /// Its arguments; one that looks like a literal secret is refused (every
    /// process on the host can read a command line).
    #[serde(default)]
    args: Vec<String>,
    /// Environment variables besides the proxy's own; one that looks like a
    /// literal secret is refused (secrets go in the server's `secrets`).
    #[serde(default)]
    env: BTreeMap<String, String>,
    /// The folder it runs in.
    #[schemars(with = "Option<PathText>", extend("x-default" = "the proxy's"))]
    cwd: Option<PathBuf>,
}

/// `[servers.remote]` as written.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawRemote {
    /// The server's streamable HTTP endpoint (with `transport = "sse"`, its
    /// SSE stream's): an `http://` or `https://` URL.
    url: String,
    /// `"streamable_http"`, or `"sse"` for a server that speaks only
    /// HTTP+SSE (protocol 2024-11-05); it is then spoken to with the
    /// handshake (`protocol` cannot be `2026-07-28` nor `auto`).
    #[serde(default)]
    #[schemars(extend("x-default" = "`\"streamable_http\"`"))]
    transport: RemoteTransport,
    /// Headers sent with every request; a value may end in `secret:NAME`,
    /// a secret of this server's `secrets`.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, HeaderText>")]
    headers: BTreeMap<String, String>,
    /// The server's own access token from the organisation's
    /// authorization server (the client-credentials grant), sent as
    /// `Authorization: Bearer …` and renewed before it expires; never a
    /// client's token.
    oauth: Option<RawRemoteOauth>,
    /// Each client's user signs in to the server (`portcullis oauth login
    /// SERVER --client NAME`): each client gets its own connection, which
    /// sends that user's token from the vault (refreshed before it
    /// expires), never another's. Needs `[vault] keys` and an https://
    /// `url` (http:// only on loopback); not with `oauth` or an
    /// `Authorization` header. See docs/signin.md.
    sign_in: Option<RawSignIn>,
}

/// `remote = { oauth = { … } }` as written.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawRemoteOauth {
    /// The authorization server's token endpoint: `https://` (`http://`
    /// only on loopback).
    token_endpoint: String,
    /// The proxy's client id there.
    client_id: String,
    /// `secret:NAME`: the client secret, a secret of this server's
    /// `secrets`.
    client_secret: String,
    /// The scope asked for (space-separated), if any.
    scope: Option<String>,
    /// The resource indicator (RFC 8707) asked for; `""` sends none (Entra
    /// ID refuses the parameter).
    #[schemars(extend("x-default" = "the server's `url` without its query"))]
    resource: Option<String>,
    /// The `audience` asked for, if any (Keycloak's and Auth0's name for
    /// the server the token is for).
    audience: Option<String>,
    /// How the server's token is got.
    #[schemars(extend("default" = "client_credentials"))]
    grant: Option<RemoteGrant>,
    /// With `grant = "token_exchange"`: the name of the
    /// `[[oauth.providers]]` entry whose users' tokens this token endpoint
    /// exchanges (only that provider's clients may call the server, and no
    /// other provider's token is ever sent here).
    #[schemars(extend("x-default" = "the only provider, when there is one"))]
    provider: Option<String>,
}

impl RawServer {
    pub(super) fn name(&self) -> &str {
        &self.name
    }

    /// A profile's values for this server over the config's: its
    /// `{{server.key}}` template values and its secret references, each
    /// replacing the config's of the same key.
    pub(super) fn overlay(
        &mut self,
        config: Option<&BTreeMap<String, String>>,
        secrets: Option<&BTreeMap<String, String>>,
    ) {
        for (key, value) in config.into_iter().flatten() {
            self.config.insert(key.clone(), value.clone());
        }
        for (name, reference) in secrets.into_iter().flatten() {
            self.secrets.insert(name.clone(), reference.clone());
        }
    }

    /// One server; `names` are the servers' names so far.
    pub(super) fn validate(
        self,
        at: &Entry<'_>,
        names: &mut HashSet<String>,
        proxy: &ProxyConfig,
        sources: &Sources<'_>,
    ) -> Result<ServerConfig, ConfigError> {
        if !valid_server_name(&self.name) {
            return Err(at.error(
                ".name",
                format!(
                    "server name `{}` must be 1-63 characters of a-z, 0-9 and `-`, starting and ending with a letter or digit",
                    self.name
                ),
            ));
        }
        if !names.insert(self.name.clone()) {
            return Err(at.error(".name", format!("server `{}` is defined twice", self.name)));
        }
        if self.sandbox.is_some() && self.container.is_none() && self.from.is_none() {
            return Err(at.error(
                ".sandbox",
                format!(
                    "server `{}`: `[servers.sandbox]` applies to `container` servers only; a `process` server runs unsandboxed",
                    self.name
                ),
            ));
        }
        let secrets = self.secrets(at)?;
        let kinds = [
            self.process.is_some(),
            self.remote.is_some(),
            self.container.is_some(),
        ];
        let one_of = |how: &str| {
            at.error(
                "",
                format!(
                    "server `{}` {how} one of `container`, `process`, `remote` or `from`",
                    self.name
                ),
            )
        };
        if kinds.iter().filter(|&&given| given).count() > 1 {
            return Err(one_of("may have only"));
        }
        self.check_described_only(at)?;
        let mut resolved = None;
        let kind = match (self.from, self.container, self.process, self.remote) {
            (Some(from), container, None, None) => {
                let described = Described {
                    name: &self.name,
                    from: &from,
                    config: self.config,
                    secrets: secrets.keys().cloned().collect(),
                    container,
                    sandbox: self.sandbox,
                    choice: self.choice,
                };
                let (kind, summary) = described::upstream(described, at, sources, proxy)?;
                resolved = summary;
                from_described(kind, at, &secrets)?
            }
            (Some(_), ..) => {
                return Err(at.error(
                    ".from",
                    format!(
                        "server `{}`: `from` describes the server; it cannot also be a `process` or `remote`",
                        self.name
                    ),
                ));
            }
            (None, container, process, remote) => match (container, process, remote) {
                (Some(mut container), _, _) => {
                    let sign_in = container.sign_in.take();
                    let mut spec = container.validate(at, &self.name, self.sandbox, proxy)?;
                    if let Some(sign_in) = sign_in {
                        spec.sign_in = Some(Box::new(sign_in.validated(at, &secrets, &spec)?));
                    }
                    UpstreamSpec::Container(Box::new(spec))
                }
                (None, Some(process), _) => UpstreamSpec::Process(process.validate(at)?),
                (None, None, Some(remote)) => UpstreamSpec::Remote(remote.validate(at, &secrets)?),
                (None, None, None) => return Err(one_of("needs")),
            },
        };
        if let UpstreamSpec::Remote(remote) = &kind
            && remote.transport == RemoteTransport::Sse
            && self.protocol != ServerProtocol::Handshake
        {
            return Err(at.error(
                ".protocol",
                format!(
                    "server `{}` speaks HTTP+SSE (`remote.transport = \"sse\"`), which has only the handshake: `protocol` must be \"2025-11-25\"",
                    self.name
                ),
            ));
        }
        let call_timeout = match self.timeout {
            None => proxy.call_timeout,
            Some(text) => parse_duration(&text).map_err(|m| at.error(".timeout", m))?,
        };
        let breaker = match self.breaker {
            None => BreakerConfig::default(),
            Some(breaker) => breaker.validate(at)?,
        };
        Ok(ServerConfig {
            name: self.name,
            kind,
            call_timeout,
            secrets,
            protocol: self.protocol,
            breaker,
            resolved,
        })
    }

    /// `config` and `use` are for servers described by `from` only.
    fn check_described_only(&self, at: &Entry<'_>) -> Result<(), ConfigError> {
        let (key, what) = match (self.from.is_some(), self.config.is_empty(), self.choice) {
            (false, false, _) => (
                ".config",
                "`config` fills the templates of a server described by `from`",
            ),
            (false, _, Some(_)) => (".use", "`use` chooses a form of a `registry://` server"),
            _ => return Ok(()),
        };
        Err(at.error(key, format!("server `{}`: {what}", self.name)))
    }

    fn secrets(&self, at: &Entry<'_>) -> Result<BTreeMap<String, SecretRef>, ConfigError> {
        let mut secrets = BTreeMap::new();
        for (name, reference) in &self.secrets {
            let fail = |message: String| {
                at.error(
                    &format!(".secrets.{name}"),
                    format!("server `{}`: {message}", self.name),
                )
            };
            // Secrets become environment variables: a name the engine
            // would refuse would echo the value in its error.
            if !is_identifier(name) {
                return Err(fail(format!(
                    "secret name `{name}` must be letters, digits and `_`, not starting with a digit (it becomes an environment variable)"
                )));
            }
            let parsed = at.validator.secret_ref(reference).map_err(fail)?;
            secrets.insert(name.clone(), parsed);
        }
        Ok(secrets)
    }
}

/// A described server as the proxy runs it: a registry server's remote with
/// its headers' secrets checked against the server's `secrets`, its URL one
/// a peer named (reached as such).
fn from_described(
    described: DescribedUpstream,
    at: &Entry<'_>,
    secrets: &BTreeMap<String, SecretRef>,
) -> Result<UpstreamSpec, ConfigError> {
    let (url, transport, headers) = match described {
        DescribedUpstream::Container(spec) => return Ok(UpstreamSpec::Container(spec)),
        DescribedUpstream::Remote {
            url,
            transport,
            headers,
        } => (url, transport, headers),
    };
    let headers = secrets::headers(headers, |name| secrets.contains_key(name)).map_err(
        |(header, secret)| {
            at.error(
                ".secrets",
                format!("its header `{header}` needs the secret `{secret}`, which is not in the server's `secrets`"),
            )
        },
    )?;
    Ok(UpstreamSpec::Remote(RemoteSpec {
        url,
        transport: match transport {
            RemoteKind::StreamableHttp => RemoteTransport::StreamableHttp,
            RemoteKind::Sse => RemoteTransport::Sse,
        },
        headers,
        oauth: None,
        sign_in: None,
        learned: true,
        // Given by `[egress]` once the whole config is read.
        egress: super::EgressConfig::default(),
    }))
}

impl RawProcess {
    fn validate(self, at: &Entry<'_>) -> Result<ProcessSpec, ConfigError> {
        if self.command.trim().is_empty() {
            return Err(at.error(".process.command", "the command is empty".into()));
        }
        check_env(&self.env)
            .map_err(|(name, message)| at.error(&format!(".process.env.{name}"), message))?;
        check_args(&self.args)
            .map_err(|(index, message)| at.error(&format!(".process.args[{index}]"), message))?;
        // A relative path (not a bare name looked up in PATH) is relative
        // to the config file, like every other path.
        let command = if self.command.contains('/') {
            at.validator
                .resolve(PathBuf::from(&self.command))
                .to_string_lossy()
                .into_owned()
        } else {
            self.command
        };
        Ok(ProcessSpec {
            command,
            args: self.args,
            env: self.env,
            cwd: self.cwd.map(|cwd| at.validator.resolve(cwd)),
        })
    }
}

impl RawRemote {
    fn validate(
        self,
        at: &Entry<'_>,
        secrets: &BTreeMap<String, SecretRef>,
    ) -> Result<RemoteSpec, ConfigError> {
        if !(self.url.starts_with("http://") || self.url.starts_with("https://"))
            || reqwest::Url::parse(&self.url).is_err()
        {
            return Err(at.error(
                ".remote.url",
                format!("`{}` is not an http:// or https:// URL", self.url),
            ));
        }
        let headers = secrets::headers(self.headers, |name| secrets.contains_key(name)).map_err(
            |(header, secret)| {
                at.error(
                    &format!(".remote.headers.{header}"),
                    format!("refers to `secret:{secret}`, which is not in this server's `secrets`"),
                )
            },
        )?;
        if let Some(sign_in) = &self.sign_in {
            sign_in.check((&self.url, self.oauth.is_some()), at, &headers)?;
        }
        let oauth = match self.oauth {
            None => None,
            Some(oauth) => {
                // The server's token is a bearer credential: never over
                // plain HTTP to another machine.
                if !super::secure_url(&self.url) {
                    return Err(at.error(
                        ".remote.url",
                        "with `oauth`, the server must be https:// (http:// only on loopback): its token would cross the network in clear".into(),
                    ));
                }
                if !super::secure_url(&oauth.token_endpoint) {
                    return Err(at.error(
                        ".remote.oauth.token_endpoint",
                        "must be an https:// URL (http:// only on loopback)".into(),
                    ));
                }
                let secret = oauth
                    .client_secret
                    .strip_prefix("secret:")
                    .filter(|name| secrets.contains_key(*name))
                    .ok_or_else(|| {
                        at.error(
                            ".remote.oauth.client_secret",
                            "must be `secret:NAME`, a secret of this server's `secrets`".into(),
                        )
                    })?;
                if headers
                    .iter()
                    .any(|(name, _)| name.eq_ignore_ascii_case("authorization"))
                {
                    return Err(at.error(
                        ".remote.headers.Authorization",
                        "with `oauth`, the proxy sends the server's token as Authorization itself"
                            .into(),
                    ));
                }
                let resource = match oauth.resource {
                    Some(resource) if resource.is_empty() => None,
                    Some(resource) => {
                        // RFC 8707: an absolute URI without a fragment.
                        if reqwest::Url::parse(&resource).is_err() || resource.contains('#') {
                            return Err(at.error(
                                ".remote.oauth.resource",
                                "must be an absolute URI without a fragment, or \"\" to send none"
                                    .into(),
                            ));
                        }
                        Some(resource)
                    }
                    // The URL without its query (which may hold a key)
                    // or fragment.
                    None => reqwest::Url::parse(&self.url).ok().map(|mut url| {
                        url.set_query(None);
                        url.set_fragment(None);
                        url.to_string()
                    }),
                };
                Some(RemoteOauth {
                    token_endpoint: oauth.token_endpoint,
                    client_id: oauth.client_id,
                    client_secret: secret.to_owned(),
                    scope: oauth.scope,
                    resource,
                    audience: oauth.audience.filter(|audience| !audience.is_empty()),
                    grant: oauth.grant.unwrap_or(RemoteGrant::ClientCredentials),
                    provider: oauth.provider,
                })
            }
        };
        Ok(RemoteSpec {
            url: self.url,
            transport: self.transport,
            headers,
            oauth,
            sign_in: self
                .sign_in
                .map(|raw| raw.validated(at, secrets).map(Box::new))
                .transpose()?,
            learned: false,
            // Given by `[egress]` once the whole config is read.
            egress: super::EgressConfig::default(),
        })
    }
}
