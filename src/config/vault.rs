//! `[vault]`: the keys that seal the tokens users got by signing in to
//! remote servers (`src/signin/vault.rs`).

use schemars::JsonSchema;
use serde::Deserialize;
use toml::Spanned;

use super::parse_duration;
use super::secrets::HeaderValue;
use super::values::DurationText;
use super::{ConfigError, Entry, SecretRef, ServerConfig, UpstreamSpec, Validator};

/// `[vault]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultConfig {
    /// The keys: the first seals, every one opens (a key being rotated
    /// out stays listed until what it sealed was sealed again).
    pub keys: Vec<SecretRef>,
    /// The proxy's public URL, under which users finish a sign-in from
    /// their agent's link (`/oauth/start`, `/oauth/callback`), if set.
    pub public_url: Option<String>,
    /// How long such a link can be used.
    pub link_life: std::time::Duration,
    /// The folder of the vault's files, if not `DATA_DIR/vault`: one
    /// every replica mounts.
    pub dir: Option<std::path::PathBuf>,
}

impl Default for VaultConfig {
    fn default() -> Self {
        Self {
            keys: Vec::new(),
            public_url: None,
            link_life: LINK_LIFE,
            dir: None,
        }
    }
}

/// How long a sign-in link lives unless `[vault] link_life` says.
pub const LINK_LIFE: std::time::Duration = std::time::Duration::from_secs(600);

/// `remote = { sign_in = { … } }`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignInSpec {
    /// The client whose sign-in the server's own connection (which lists
    /// its tools) uses: a name of `[[clients]]`.
    pub list_as: String,
    /// The authorization server users must sign in at, if the operator
    /// says.
    pub issuer: Option<String>,
    /// Another address `issuer` is named by, where its metadata is read
    /// though it names `issuer` (an exception to RFC 8414 §3.3 the
    /// operator makes for one server, as Atlassian's needs).
    pub issuer_alias: Option<String>,
    /// Origins besides the issuer's where its endpoints may be.
    pub endpoint_origins: Vec<String>,
    /// Whether the proxy may be known there by its client ID metadata
    /// document (else it registers, or uses `client`).
    pub client_document: bool,
    /// The client the operator registered at the authorization server by
    /// hand, if any: used before any other way of being known there.
    pub client: Option<super::WebClientConfig>,
    /// A container's sign-in: the scopes asked of `issuer` directly (there
    /// is no server to learn what to ask from). `None`: learned from the
    /// remote server.
    pub scopes: Option<Vec<String>>,
}

impl SignInSpec {
    /// A sign-in whose server's own connection is `list_as`'s, every other
    /// setting unset.
    pub fn listed_as(list_as: &str) -> Self {
        Self {
            list_as: list_as.to_owned(),
            issuer: None,
            issuer_alias: None,
            endpoint_origins: Vec::new(),
            client_document: true,
            client: None,
            scopes: None,
        }
    }
}

/// `container = { sign_in = { … } }`, validated: each user's own instance
/// of the container is given that user's access token in `env`.
#[derive(Debug, Clone)]
pub struct ContainerSignIn {
    /// The environment variable the token is given in.
    pub env: String,
    /// What the sign-ins work on, as for a remote server: its URL is the
    /// resource the tokens are for, its `sign_in` the settings (with
    /// `scopes`).
    pub remote: super::RemoteSpec,
    /// The server's secret that holds `client`'s secret: the proxy's, never
    /// given to the container (every other secret is, in its environment).
    pub withheld: Option<String>,
}

impl PartialEq for ContainerSignIn {
    /// What the operator wrote (the rest of `remote` is made from it).
    fn eq(&self, other: &Self) -> bool {
        self.env == other.env
            && self.withheld == other.withheld
            && self.remote.url == other.remote.url
            && self.remote.sign_in == other.remote.sign_in
    }
}

/// `remote = { sign_in = { … } }` as written.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSignIn {
    /// The client whose sign-in the proxy's own connection to the server
    /// uses to learn its tools, prompts and resources (an operator's
    /// account, signed in with `oauth login`); clients' calls never go
    /// through it. A name of `[[clients]]` (which no `[oauth]` identity
    /// can take).
    list_as: String,
    /// The authorization server users must sign in at (its issuer URL,
    /// as its metadata names itself): a server whose metadata names
    /// another is refused. Unset: the one the server names.
    issuer: Option<String>,
    /// Origins (`https://host[:port]`) besides the issuer's own where its
    /// authorization, token, registration and revocation endpoints may be
    /// (a provider whose token endpoint is on another host, as Google's).
    /// Unset: every endpoint must be on the issuer's origin.
    #[serde(default)]
    endpoint_origins: Vec<String>,
    /// Another URL the authorization server `issuer` is known by, for a
    /// server whose authorization server's metadata, read there, names
    /// `issuer` instead (Atlassian's): RFC 8414 §3.3 has clients refuse
    /// such metadata, as it is what a mix-up looks like; with this the
    /// operator accepts it for this pair alone. The server must name this
    /// URL or `issuer`; the metadata is read here and must name `issuer`;
    /// its endpoints may be on either's origin. Needs `issuer`.
    issuer_alias: Option<String>,
    /// Whether the proxy signs users in from links as its client ID
    /// metadata document (`PUBLIC_URL/oauth/client`) where the
    /// authorization server takes them. `false`: it registers instead (or
    /// uses `client`), for a server that takes documents but refuses the
    /// tokens it issues to them.
    #[schemars(extend("default" = true))]
    client_document: Option<bool>,
    /// A client the operator registered by hand at the server's
    /// authorization server (for providers that offer neither client ID
    /// metadata documents nor dynamic registration, as GitHub): the proxy
    /// is then that client, for links and `oauth login` alike. Its
    /// redirect URIs there must be `[vault] public_url` +
    /// `/oauth/callback` and, for `oauth login`, `http://127.0.0.1/callback`
    /// (any port). Needs `issuer`: the client and its secret are used only
    /// there.
    client: Option<RawSignInClient>,
}

/// `sign_in = { client = { … } }` as written.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSignInClient {
    /// The client's id at the authorization server.
    client_id: String,
    /// Its client secret, as `secret:NAME` (a secret of this server's
    /// `secrets`); unset for a public client (PKCE alone).
    client_secret: Option<String>,
    /// How the client authenticates at the token endpoint, as it was
    /// registered: `client_secret_basic` or `client_secret_post`. Unset:
    /// the first of those the authorization server lists. Needs
    /// `client_secret`.
    auth_method: Option<String>,
}

impl RawSignIn {
    /// `sign_in` against the rest of the server's settings (its headers
    /// as validated).
    pub(super) fn check(
        &self,
        (url, oauth): (&str, bool),
        at: &Entry<'_>,
        headers: &[(String, HeaderValue)],
    ) -> Result<(), ConfigError> {
        self.check_at(".remote.sign_in", (url, oauth), at, headers)
    }

    /// [`RawSignIn::check`], errors at `place`.
    fn check_at(
        &self,
        place: &str,
        (url, oauth): (&str, bool),
        at: &Entry<'_>,
        headers: &[(String, HeaderValue)],
    ) -> Result<(), ConfigError> {
        let sign_in = self;
        let fail = |message: &str| at.error(place, message.into());
        if sign_in.list_as.is_empty() || sign_in.list_as.chars().any(char::is_control) {
            return Err(fail("`list_as` must be the name of a client of the proxy"));
        }
        if let Some(issuer) = &sign_in.issuer
            && !plain_secure_url(issuer)
        {
            return Err(fail(
                "`issuer` must be an https:// URL (http:// only on loopback) without query or fragment",
            ));
        }
        match (&sign_in.issuer_alias, &sign_in.issuer) {
            (Some(_), None) => {
                return Err(fail(
                    "`issuer_alias` needs `issuer`: the issuer the alias's metadata must name",
                ));
            }
            (Some(alias), Some(issuer))
                if !plain_secure_url(alias)
                    || alias.strip_suffix('/').unwrap_or(alias)
                        == issuer.strip_suffix('/').unwrap_or(issuer) =>
            {
                return Err(fail(
                    "`issuer_alias` must be an https:// URL (http:// only on loopback) without query or fragment, other than `issuer`",
                ));
            }
            _ => {}
        }
        if let Some(bad) = sign_in.endpoint_origins.iter().find(|origin| {
            !super::secure_url(origin)
                || !reqwest::Url::parse(origin)
                    .is_ok_and(|u| u.origin().ascii_serialization() == origin.as_str())
        }) {
            return Err(fail(&format!(
                "`endpoint_origins`: `{}` is not an origin (https://host or https://host:port, nothing after)",
                bad.escape_debug()
            )));
        }
        if oauth {
            return Err(fail(
                "a server is given each user's own token, or its own (`oauth`), not both",
            ));
        }
        // The client's secret goes to the authorization server the server
        // names: without a pin, a server could name one of its own.
        if sign_in.client.is_some() && sign_in.issuer.is_none() {
            return Err(fail(
                "`client` needs `issuer`, the authorization server the client was registered at: the proxy sends the client's secret there and nowhere else",
            ));
        }
        if headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("authorization"))
        {
            return Err(fail(
                "the proxy sends each user's token as Authorization itself: take the header out",
            ));
        }
        if !super::secure_url(url) {
            return Err(fail(
                "the server must be https:// (http:// only on loopback): users' tokens would cross the network in clear",
            ));
        }
        Ok(())
    }

    /// Validated, a client's secret taken from the server's `secrets`.
    pub(super) fn validated(
        self,
        at: &Entry<'_>,
        secrets: &std::collections::BTreeMap<String, SecretRef>,
    ) -> Result<SignInSpec, ConfigError> {
        self.validated_at(".remote.sign_in", at, secrets)
    }

    /// [`RawSignIn::validated`], errors at `place`.
    fn validated_at(
        self,
        place: &str,
        at: &Entry<'_>,
        secrets: &std::collections::BTreeMap<String, SecretRef>,
    ) -> Result<SignInSpec, ConfigError> {
        let client = match self.client {
            None => None,
            Some(client) => {
                if !super::oauth::client_id_ok(&client.client_id) {
                    return Err(at.error(
                        &format!("{place}.client.client_id"),
                        "1 to 2048 printable ASCII characters, no space".into(),
                    ));
                }
                let client_secret = client
                    .client_secret
                    .map(|secret| {
                        secret
                            .strip_prefix("secret:")
                            .and_then(|name| secrets.get(name))
                            .cloned()
                            .ok_or_else(|| {
                                at.error(
                                    &format!("{place}.client.client_secret"),
                                    "must be `secret:NAME`, a secret of this server's `secrets`"
                                        .into(),
                                )
                            })
                    })
                    .transpose()?;
                let method_ok = match client.auth_method.as_deref() {
                    None => true,
                    Some("client_secret_basic" | "client_secret_post") => client_secret.is_some(),
                    Some(_) => false,
                };
                if !method_ok {
                    return Err(at.error(
                        &format!("{place}.client.auth_method"),
                        "`client_secret_basic` or `client_secret_post`, with `client_secret`"
                            .into(),
                    ));
                }
                Some(super::WebClientConfig {
                    client_id: client.client_id,
                    client_secret,
                    auth_method: client.auth_method,
                })
            }
        };
        Ok(SignInSpec {
            list_as: self.list_as,
            issuer: self.issuer,
            issuer_alias: self.issuer_alias,
            endpoint_origins: self.endpoint_origins,
            client_document: self.client_document.unwrap_or(true),
            client,
            scopes: None,
        })
    }
}

/// `container = { sign_in = { … } }` as written.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawContainerSignIn {
    /// The environment variable each user's instance is given that user's
    /// access token in (for instance `GITHUB_PERSONAL_ACCESS_TOKEN`): set
    /// at the container's start, from the vault. A token refreshed or
    /// signed in anew restarts the user's instance with the new one.
    env: String,
    /// The authorization server users sign in at (its issuer URL): its
    /// metadata (RFC 8414, or OpenID Connect discovery) is read from it,
    /// and must name it.
    issuer: String,
    /// The API the token is for (`https://`, `http://` only on loopback),
    /// for instance `https://api.github.com`: sent as the resource
    /// indicator (RFC 8707) and kept with the token.
    resource: String,
    /// The scopes asked for.
    #[serde(default)]
    scopes: Vec<String>,
    /// The client whose sign-in the server's own instance (which lists its
    /// tools, prompts and resources) is given: a name of `[[clients]]`.
    list_as: String,
    /// Origins besides the issuer's own where its endpoints may be.
    #[serde(default)]
    endpoint_origins: Vec<String>,
    /// A client the operator registered by hand at the authorization
    /// server, as for a remote server's `sign_in.client`.
    client: Option<RawSignInClient>,
}

impl RawContainerSignIn {
    /// Validated against the container's own settings: its `isolation`
    /// (per-client: one user's token in one user's instance), its `env`
    /// and the server's `secrets` (the variable is the token's alone).
    pub(super) fn validated(
        self,
        at: &Entry<'_>,
        secrets: &std::collections::BTreeMap<String, SecretRef>,
        container: &super::ContainerSpec,
    ) -> Result<ContainerSignIn, ConfigError> {
        const PLACE: &str = ".container.sign_in";
        let fail = |message: String| Err(at.error(PLACE, message));
        if container.isolation != super::Isolation::PerClient {
            return fail("needs `isolation = \"per-client\"`: each user's token is given to that user's own container, never to one another user shares".into());
        }
        let env = &self.env;
        if !(super::names::is_identifier(env) && env.len() <= 256) {
            return fail(format!(
                "`env`: `{}` is not an environment variable's name (letters, digits and `_`, not starting with a digit)",
                env.escape_debug()
            ));
        }
        if super::catalog::redirecting(env) {
            return fail(format!(
                "`env`: `{env}` would change how the container's programs run or where they connect, not give them a token: name the variable the image reads its token from"
            ));
        }
        if container.env.contains_key(env) || secrets.contains_key(env) {
            return fail(format!(
                "`env`: `{env}` is also set by the container's `env` or the server's `secrets`; the token's variable must be its alone"
            ));
        }
        if !plain_secure_url(&self.resource) {
            return fail("`resource` must be an https:// URL (http:// only on loopback) without query or fragment".into());
        }
        if let Some(bad) = self
            .scopes
            .iter()
            .find(|scope| !super::oauth::valid_scope(scope))
        {
            return fail(format!("`scopes`: `{}` is not a scope", bad.escape_debug()));
        }
        // As much as the vault keeps of a sign-in's scopes.
        if self
            .scopes
            .iter()
            .map(|scope| scope.len() + 1)
            .sum::<usize>()
            > 1024
        {
            return fail("`scopes`: more than a sign-in keeps".into());
        }
        let withheld = self
            .client
            .as_ref()
            .and_then(|client| client.client_secret.as_deref())
            .and_then(|secret| secret.strip_prefix("secret:"))
            .map(str::to_owned);
        let raw = RawSignIn {
            list_as: self.list_as,
            issuer: Some(self.issuer),
            issuer_alias: None,
            endpoint_origins: self.endpoint_origins,
            client_document: None,
            client: self.client,
        };
        raw.check_at(PLACE, (&self.resource, false), at, &[])?;
        let mut spec = raw.validated_at(PLACE, at, secrets)?;
        spec.scopes = Some(self.scopes);
        Ok(ContainerSignIn {
            env: self.env,
            withheld,
            remote: super::RemoteSpec {
                url: self.resource,
                transport: super::RemoteTransport::StreamableHttp,
                headers: Vec::new(),
                oauth: None,
                sign_in: Some(Box::new(spec)),
                learned: false,
                // Given by `[egress]` once the whole config is read.
                egress: super::EgressConfig::default(),
            },
        })
    }
}

/// An `https://` URL (`http://` only on loopback) without query, fragment
/// or user: an issuer's, or the resource a container's tokens are for.
fn plain_secure_url(text: &str) -> bool {
    super::secure_url(text)
        && reqwest::Url::parse(text)
            .is_ok_and(|u| u.query().is_none() && u.fragment().is_none() && u.username().is_empty())
}

/// `[vault]` as written.
#[derive(Deserialize, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVault {
    /// Secret references (`file:PATH`, `env:NAME`, `dotenv:PATH#KEY`) to
    /// 32-byte keys written as 64 hex digits (`portcullis session-key
    /// --out FILE` makes one): the first seals each user's tokens with
    /// AES-256-GCM, every one opens. A `file:` key must be outside
    /// `[proxy] data_dir`, which holds what it seals. Without keys, no
    /// user can sign in to a server.
    #[serde(default)]
    #[schemars(with = "Vec<String>", extend("default" = []))]
    keys: Vec<Spanned<String>>,
    /// The proxy's public URL as users' browsers reach it (`https://`;
    /// `http://` only on loopback), for instance
    /// `https://portcullis.example.com`: a user who calls a `sign_in`
    /// server without having signed in is given a link under it
    /// (`/oauth/start`), and the authorization server sends the browser
    /// back to `/oauth/callback` under it. Unset: users are signed in
    /// with `portcullis oauth login` only.
    public_url: Option<String>,
    /// How long a sign-in link given to a user can be used, from when it
    /// is given to when its answer comes back.
    #[schemars(with = "Option<DurationText>", extend("default" = "10m"))]
    link_life: Option<Spanned<String>>,
    /// The folder the vault's files are kept in (relative to this file's
    /// folder). A folder every replica of the proxy mounts (a shared
    /// volume whose file system has working `flock` locks: a local one,
    /// NFSv4, …) lets a user sign in through one replica and be served by
    /// any: every replica reads the same sign-ins, refreshes each once
    /// (one at a time across them), and stops sending one revoked through
    /// another within 30 s. The sign-in links given to users wait there
    /// too: any replica answers a link another gave. `[vault] keys` must
    /// be outside it.
    #[schemars(extend("x-default" = "`DATA_DIR/vault`"))]
    dir: Option<String>,
}

impl RawVault {
    pub(super) fn validate(
        self,
        v: &Validator<'_>,
        data_dir: &std::path::Path,
    ) -> Result<VaultConfig, ConfigError> {
        let dir = match &self.dir {
            Some(dir) if dir.trim().is_empty() || dir.chars().any(char::is_control) => {
                return Err(v.error(
                    None,
                    "vault.dir",
                    "must be a folder's path, without control characters".into(),
                ));
            }
            Some(dir) => Some(v.resolve(dir.into())),
            None => None,
        };
        let keys = self
            .keys
            .iter()
            .enumerate()
            .map(|(i, key)| {
                let located = |message: String| {
                    v.error(Some(key.span()), &format!("vault.keys[{i}]"), message)
                };
                let secret = v.secret_ref(key.get_ref()).map_err(located)?;
                if let SecretRef::File(path) | SecretRef::DotEnv { file: path, .. } = &secret
                    && let Some(beside) = [Some(data_dir), dir.as_deref()]
                        .into_iter()
                        .flatten()
                        .find(|folder| inside(path, folder))
                {
                    let which = if beside == data_dir {
                        "`[proxy] data_dir`"
                    } else {
                        "`[vault] dir`"
                    };
                    return Err(located(format!(
                        "`{}` is inside {which} ({}), beside the tokens it seals: keep the key elsewhere",
                        path.display(),
                        beside.display()
                    )));
                }
                Ok(secret)
            })
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(url) = &self.public_url
            && !(super::secure_url(url)
                && reqwest::Url::parse(url).is_ok_and(|u| {
                    u.query().is_none()
                        && u.fragment().is_none()
                        && u.username().is_empty()
                        && u.password().is_none()
                }))
        {
            return Err(v.error(
                None,
                "vault.public_url",
                "must be an https:// URL (http:// only on loopback) without query, fragment or user".into(),
            ));
        }
        let link_life = v
            .parsed(self.link_life.as_ref(), "vault.link_life", parse_duration)?
            .unwrap_or(LINK_LIFE);
        if link_life.is_zero() || link_life > std::time::Duration::from_secs(3600) {
            return Err(v.error(
                None,
                "vault.link_life",
                "must be more than 0 and at most 1h".into(),
            ));
        }
        Ok(VaultConfig {
            keys,
            public_url: self.public_url,
            link_life,
            dir,
        })
    }
}

/// A server whose users sign in needs somewhere to keep their tokens.
pub(super) fn check_sign_in(
    v: &Validator<'_>,
    servers: &[ServerConfig],
    vault: &VaultConfig,
    clients: &[super::ClientConfig],
) -> Result<(), ConfigError> {
    // The listing connection's user is a client the operator named, so
    // that no `[oauth]` identity (whose names cannot be those of
    // `[[clients]]`) is ever served the operator's sign-in.
    let place = |server: &ServerConfig| match server.kind {
        UpstreamSpec::Container(_) => format!("servers.{}.container.sign_in", server.name),
        _ => format!("servers.{}.remote.sign_in", server.name),
    };
    for server in servers {
        if let Some(sign_in) = server.kind.sign_in().and_then(|r| r.sign_in.as_deref())
            && !clients.iter().any(|client| client.name == sign_in.list_as)
        {
            return Err(v.error(
                None,
                &format!("{}.list_as", place(server)),
                format!(
                    "`{}` is not a name of `[[clients]]`: the sign-in the server's own connection uses belongs to a client the operator names",
                    sign_in.list_as.escape_debug()
                ),
            ));
        }
    }
    let signing_in = servers
        .iter()
        .find(|server| server.kind.sign_in().is_some());
    match signing_in {
        Some(server) if vault.keys.is_empty() => Err(v.error(
            None,
            &place(server),
            "users' tokens are kept sealed in the vault: set `[vault] keys` (docs/signin.md)"
                .into(),
        )),
        _ => Ok(()),
    }
}

/// Whether `path` is in `dir`: as written, as its folder resolves, or as
/// it resolves itself (a link to a file in `dir`).
fn inside(path: &std::path::Path, dir: &std::path::Path) -> bool {
    let canonical = |p: &std::path::Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_owned());
    let written = dir;
    let dir = canonical(dir);
    path.starts_with(written)
        || path.starts_with(&dir)
        || path
            .parent()
            .map(canonical)
            .is_some_and(|parent| parent.starts_with(&dir))
        || canonical(path).starts_with(&dir)
}
