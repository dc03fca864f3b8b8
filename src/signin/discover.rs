//! What a remote server that asks for sign-in wants, learned from the
//! server itself (MCP authorization, 2025-11-25 and 2026-07-28):
//!
//! 1. a request without a token, answered `401` with a `Bearer` challenge;
//! 2. the protected resource metadata (RFC 9728) at the challenge's
//!    `resource_metadata`, else at the well-known URLs of the server's
//!    path, then of its origin; its `resource` must be the server's own
//!    URL or a parent of it on the same origin (else it is another
//!    resource's, and a token asked for it would be sent to this server);
//! 3. the metadata of its first authorization server (RFC 8414, then
//!    OpenID Connect discovery, in the specification's order), whose
//!    `issuer` must be the one named, which must offer PKCE with `S256`
//!    (the specification: a client refuses to go on without it), and
//!    whose endpoints are `https://` (an issuer on loopback aside) and on
//!    the issuer's own origin, unless the operator named other origins:
//!    metadata that pairs another's authorization endpoint with its own
//!    token endpoint would otherwise have the code and the verifier sent
//!    to it (a mix-up); where the operator named the issuer, it must be
//!    that one. Where the operator also named an alias for it
//!    (`sign_in.issuer_alias`: Atlassian's metadata, read at one address,
//!    names another issuer), the server may name either, the metadata is
//!    always read at the alias and must name the issuer, and the
//!    endpoints may be on the alias's origin too; the sign-ins keep the
//!    alias, and are refreshed and revoked only through it.

use std::time::Duration;

use serde_json::{Map, Value, json};

use super::challenge::{self, Challenge};
use super::token::scope_token;
use super::vault::MAX_NAME;
use crate::config::{EgressConfig, RemoteSpec, SignInSpec, is_loopback, secure_url};
use crate::egress::document as fetch;
use crate::egress::{self, HttpClient, Timeouts, Trust};

/// What a server asks for, and where its users sign in.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Discovered {
    /// The server's URL, as asked.
    pub url: String,
    /// The resource its metadata names: the resource indicator (RFC 8707)
    /// a token is asked for.
    pub resource: String,
    /// Where that metadata was read.
    pub resource_metadata: String,
    /// The scopes to ask for: the challenge's, else the metadata's
    /// `scopes_supported`.
    pub scopes: Vec<String>,
    /// The authorization server, as its metadata names itself (what an
    /// RFC 9207 `iss` is compared with).
    pub issuer: String,
    /// Where its metadata was read.
    pub issuer_metadata: String,
    /// The alias the operator named it by (`sign_in.issuer_alias`), where
    /// its metadata was read there rather than at `issuer`.
    #[serde(default)]
    pub alias: Option<String>,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    /// Dynamic client registration (RFC 7591), where offered.
    pub registration_endpoint: Option<String>,
    /// Token revocation (RFC 7009), where offered.
    pub revocation_endpoint: Option<String>,
    /// Whether it takes a client ID metadata document as a client's id.
    pub client_id_metadata_documents: bool,
    /// How clients may authenticate at its token endpoint
    /// (`token_endpoint_auth_methods_supported`; RFC 8414's default when
    /// unsaid: `client_secret_basic`).
    pub token_endpoint_auth_methods: Vec<String>,
    /// Whether it names itself in each authorization response (RFC 9207
    /// `iss`): then a response without it, or naming another, is refused.
    pub iss_parameter: bool,
}

/// Why a server's sign-in could not be learned. Each names the URL it
/// concerns (never a query, which may carry credentials).
#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    #[error("cannot reach the discovery's peers: {0}")]
    Client(String),
    #[error("{0}")]
    Fetch(String),
    #[error("`{url}` does not ask for sign-in: it answered {status} to a request without a token")]
    NotAsked { url: String, status: u16 },
    #[error(
        "`{url}` answered 401 without a `Bearer` challenge: not the MCP authorization it would need"
    )]
    NoBearer { url: String },
    #[error("no protected resource metadata for `{url}`: {reasons}")]
    NoResourceMetadata { url: String, reasons: String },
    #[error(
        "the protected resource metadata at `{metadata}` is for `{named}`, not for `{url}`: a token asked for it is another resource's"
    )]
    OtherResource {
        metadata: String,
        named: String,
        url: String,
    },
    #[error("the protected resource metadata at `{0}` names no authorization server")]
    NoAuthorizationServer(String),
    #[error(
        "the authorization server `{0}` is not an https:// URL (http:// is taken only on loopback)"
    )]
    InsecureIssuer(String),
    #[error("no metadata for the authorization server `{issuer}`: {reasons}")]
    NoIssuerMetadata { issuer: String, reasons: String },
    #[error(
        "the metadata at `{metadata}` names the issuer `{named}`, not `{issuer}` (RFC 8414 §3.3: a possible mix-up; only if you have made sure both are one provider's, a remote server's sign-in may say so with `sign_in.issuer = \"{named}\"` and `sign_in.issuer_alias = \"{issuer}\"`)"
    )]
    OtherIssuer {
        metadata: String,
        named: String,
        issuer: String,
    },
    #[error(
        "the authorization server `{0}` does not offer PKCE with S256 (`code_challenge_methods_supported`): MCP clients must not sign in without it"
    )]
    NoPkce(String),
    #[error(
        "the authorization server `{issuer}` gives no usable `{key}` (missing, not https://, or not a plain URL)"
    )]
    Endpoint { issuer: String, key: &'static str },
    #[error(
        "`{0}` asks for a scope that is not an RFC 6749 scope token (printable ASCII, no space, quote or backslash)"
    )]
    BadScope(String),
    #[error("`{metadata}` names `{named}`, which is not a plain https:// URL")]
    BadUrl { metadata: String, named: String },
    #[error(
        "the server names the authorization server `{named}`, not `{expected}` as its `sign_in.issuer` says"
    )]
    NotTheIssuer { named: String, expected: String },
    #[error(
        "the authorization server `{issuer}` puts its `{key}` at `{origin}`, another origin than its own: a mix-up would send the code there (name the origin in the server's `sign_in.endpoint_origins` if it is the provider's own)"
    )]
    OtherOrigin {
        issuer: String,
        key: &'static str,
        origin: String,
    },
    #[error("`{0}` asks for more scopes than a sign-in keeps ({MAX_NAME} bytes)")]
    TooManyScopes(String),
}

/// What the operator expects of a server's sign-in.
#[derive(Debug, Clone, Default)]
pub struct Expect {
    /// The authorization server it must name.
    pub issuer: Option<String>,
    /// Another address it may name `issuer` by (`sign_in.issuer_alias`).
    pub alias: Option<String>,
    /// Origins besides the issuer's own where its endpoints may be.
    pub endpoint_origins: Vec<String>,
}

impl Expect {
    /// What `sign_in` says, if the server has it.
    pub fn of(sign_in: Option<&SignInSpec>) -> Self {
        sign_in.map_or_else(Self::default, |spec| Self {
            issuer: spec.issuer.clone(),
            alias: spec.issuer_alias.clone(),
            endpoint_origins: spec.endpoint_origins.clone(),
        })
    }
}

/// How long one of the discovery's requests may take, whole.
const DEADLINE: Duration = Duration::from_secs(15);

/// The client the discovery of `remote` goes through: the server's own URL
/// as the operator wrote it (unless a registry's entry named it), every
/// other as a peer named it.
pub fn discovery_client(remote: &RemoteSpec) -> Result<HttpClient, DiscoverError> {
    discovery_client_of(&remote.egress, &remote.url, remote.learned)
}

/// [`discovery_client`], from its parts.
pub fn discovery_client_of(
    egress: &EgressConfig,
    url: &str,
    learned: bool,
) -> Result<HttpClient, DiscoverError> {
    let written: Vec<reqwest::Url> = if learned {
        Vec::new()
    } else {
        reqwest::Url::parse(url).into_iter().collect()
    };
    let timeouts = Timeouts {
        connect: Duration::from_secs(5),
        total: Some(DEADLINE),
    };
    HttpClient::new(egress, Trust::Learned, &written, timeouts)
        .map_err(|err| DiscoverError::Client(err.to_string()))
}

/// Whether two issuers are the same, as operators and metadata write them
/// (with or without a trailing slash).
pub(super) fn same_issuer(a: &str, b: &str) -> bool {
    a.strip_suffix('/').unwrap_or(a) == b.strip_suffix('/').unwrap_or(b)
}

/// What `remote`'s users sign in at, and for what: learned from the server
/// ([`discover`]), or, for a container's sign-in (whose settings name the
/// scopes), asked of its issuer directly ([`provider`]).
pub async fn learn(http: &HttpClient, remote: &RemoteSpec) -> Result<Discovered, DiscoverError> {
    let sign_in = remote.sign_in.as_deref();
    match sign_in.and_then(|spec| Some((spec.issuer.as_deref()?, spec.scopes.as_ref()?))) {
        Some((issuer, scopes)) => {
            let origins = sign_in.map_or(&[][..], |spec| &spec.endpoint_origins);
            provider(http, issuer, (&remote.url, scopes.clone()), origins).await
        }
        None => discover(http, &remote.url, &Expect::of(sign_in)).await,
    }
}

/// What the server at `url` asks for, learned from it, as `expect`ed (see
/// the module's notes).
pub async fn discover(
    http: &HttpClient,
    url: &str,
    expect: &Expect,
) -> Result<Discovered, DiscoverError> {
    let shown = fetch::named(url);
    let challenge = challenge_of(http, url).await?;
    let (resource_metadata, resource) = resource_metadata(http, url, &challenge).await?;
    let named = resource
        .get("resource")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !plain_url(named, false) || !covers(named, url) {
        return Err(DiscoverError::OtherResource {
            metadata: resource_metadata,
            named: printable(named),
            url: shown,
        });
    }
    let issuer = resource
        .get("authorization_servers")
        .and_then(Value::as_array)
        .and_then(|servers| servers.first())
        .and_then(Value::as_str)
        .ok_or_else(|| DiscoverError::NoAuthorizationServer(resource_metadata.clone()))?
        .to_owned();
    if !plain_url(&issuer, false) {
        return Err(DiscoverError::BadUrl {
            metadata: resource_metadata,
            named: printable(&issuer),
        });
    }
    if !secure_url(&issuer) {
        return Err(DiscoverError::InsecureIssuer(printable(&issuer)));
    }
    if let Some(expected) = &expect.issuer
        && !same_issuer(expected, &issuer)
        && !expect
            .alias
            .as_deref()
            .is_some_and(|alias| same_issuer(alias, &issuer))
    {
        return Err(DiscoverError::NotTheIssuer {
            named: printable(&issuer),
            expected: fetch::named(expected),
        });
    }
    // With an alias the operator named, the issuer's metadata is read
    // there whichever of the two the server names, and must name the
    // issuer (whose endpoints may then be on the alias's origin).
    let (at, names) = match (&expect.alias, &expect.issuer) {
        (Some(alias), Some(expected)) => (alias.clone(), expected.clone()),
        _ => (issuer.clone(), issuer.clone()),
    };
    let scopes: Vec<String> = match &challenge.scope {
        Some(scope) => scope
            .split(' ')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        None => strings(&resource, "scopes_supported"),
    };
    if let Some(bad) = scopes.iter().find(|scope| !scope_token(scope)) {
        return Err(DiscoverError::BadScope(printable(bad)));
    }
    if scopes.iter().map(|scope| scope.len() + 1).sum::<usize>() > MAX_NAME {
        return Err(DiscoverError::TooManyScopes(shown));
    }
    let asked = Asked {
        url,
        resource: named,
        resource_metadata,
        scopes,
    };
    authorization_server(http, asked, (&at, &names), &expect.endpoint_origins).await
}

/// What a sign-in asks for, and where that was learned.
struct Asked<'a> {
    url: &'a str,
    resource: &'a str,
    resource_metadata: String,
    scopes: Vec<String>,
}

/// The authorization server `issuer` as itself, for a token of `resource`
/// with `scopes`, its endpoints on its own origin or `origins`: the
/// organisation's provider where a person signs in to the proxy (an
/// `[[oauth.providers]]` entry, the operator's), or the issuer a kept
/// sign-in names (to revoke it once its server is gone).
pub async fn provider(
    http: &HttpClient,
    issuer: &str,
    resource_and_scopes: (&str, Vec<String>),
    origins: &[String],
) -> Result<Discovered, DiscoverError> {
    provider_at(http, (issuer, issuer), resource_and_scopes, origins).await
}

/// [`provider`], its metadata read at `at` (the issuer, or the alias a
/// sign-in learned it by: [`Tokens::issuer_alias`](super::vault::Tokens)).
pub async fn provider_at(
    http: &HttpClient,
    (at, issuer): (&str, &str),
    (resource, scopes): (&str, Vec<String>),
    origins: &[String],
) -> Result<Discovered, DiscoverError> {
    let asked = Asked {
        url: resource,
        resource,
        resource_metadata: String::new(),
        scopes,
    };
    authorization_server(http, asked, (at, issuer), origins).await
}

/// The authorization server `issuer`'s metadata, read at `at` (itself, or
/// the alias the operator gave), its endpoints checked (on `origins`, its
/// own origin, or the alias's), for what is `asked`.
async fn authorization_server(
    http: &HttpClient,
    asked: Asked<'_>,
    (at, issuer): (&str, &str),
    origins: &[String],
) -> Result<Discovered, DiscoverError> {
    let (issuer_metadata, metadata) = issuer_metadata(http, at, issuer).await?;
    let alias = (!same_issuer(at, issuer)).then(|| at.to_owned());
    let mut origins = origins.to_vec();
    origins.extend(
        alias
            .as_deref()
            .and_then(|alias| reqwest::Url::parse(alias).ok())
            .map(|url| url.origin().ascii_serialization()),
    );
    let origins = &origins[..];
    // As the authorization server writes itself (RFC 9207 compares with it).
    let issuer = metadata
        .get("issuer")
        .and_then(Value::as_str)
        .unwrap_or(issuer)
        .to_owned();
    let endpoints = Endpoints {
        issuer: &issuer,
        metadata: &metadata,
        origins,
    };
    Ok(Discovered {
        url: asked.url.to_owned(),
        resource: asked.resource.to_owned(),
        resource_metadata: asked.resource_metadata,
        scopes: asked.scopes,
        authorization_endpoint: endpoints.required("authorization_endpoint")?,
        token_endpoint: endpoints.required("token_endpoint")?,
        registration_endpoint: endpoints.optional("registration_endpoint")?,
        revocation_endpoint: endpoints.optional("revocation_endpoint")?,
        client_id_metadata_documents: metadata
            .get("client_id_metadata_document_supported")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        token_endpoint_auth_methods: match strings(
            &metadata,
            "token_endpoint_auth_methods_supported",
        ) {
            methods if methods.is_empty() => vec!["client_secret_basic".to_owned()],
            methods => methods,
        },
        iss_parameter: metadata
            .get("authorization_response_iss_parameter_supported")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        issuer,
        issuer_metadata,
        alias,
    })
}

/// The server's answer to a request without a token: its `Bearer`
/// challenge, if it is a `401` with one.
async fn challenge_of(http: &HttpClient, url: &str) -> Result<Challenge, DiscoverError> {
    let request = fetch::request(http, reqwest::Method::POST, url)
        .map_err(DiscoverError::Fetch)?
        .header(
            reqwest::header::ACCEPT,
            "application/json, text/event-stream",
        )
        .json(&json!({
            "jsonrpc": "2.0", "id": 0, "method": "initialize",
            "params": {
                "protocolVersion": "2025-11-25", "capabilities": {},
                "clientInfo": { "name": "portcullis", "version": env!("CARGO_PKG_VERSION") }
            }
        }));
    let response = egress::send(request)
        .await
        .map_err(|err| DiscoverError::Fetch(format!("{}: {err}", fetch::named(url))))?;
    let status = response.status().as_u16();
    if status != 401 {
        return Err(DiscoverError::NotAsked {
            url: fetch::named(url),
            status,
        });
    }
    response
        .headers()
        .get_all(reqwest::header::WWW_AUTHENTICATE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .find_map(challenge::parse_bearer)
        .ok_or_else(|| DiscoverError::NoBearer {
            url: fetch::named(url),
        })
}

/// The protected resource metadata: where it was read, and the document.
async fn resource_metadata(
    http: &HttpClient,
    url: &str,
    challenge: &Challenge,
) -> Result<(String, Map<String, Value>), DiscoverError> {
    let fail = |reasons| DiscoverError::NoResourceMetadata {
        url: fetch::named(url),
        reasons,
    };
    let parsed = reqwest::Url::parse(url).map_err(|_| fail("not a URL".into()))?;
    let (origin, path) = fetch::origin_and_path(&parsed);
    let mut candidates = Vec::new();
    if let Some(named) = &challenge.resource_metadata {
        if !plain_url(named, false) {
            return Err(fail(format!(
                "the challenge names `{}`, not a plain https:// URL",
                printable(named)
            )));
        }
        candidates.push(named.clone());
    }
    if !path.is_empty() {
        candidates.push(format!(
            "{origin}/.well-known/oauth-protected-resource{path}"
        ));
    }
    candidates.push(format!("{origin}/.well-known/oauth-protected-resource"));
    first_document(http, candidates).await.map_err(fail)
}

/// The authorization server's metadata, read at `at` in the
/// specification's order: where it was read, and the document (checked to
/// be `issuer`'s).
async fn issuer_metadata(
    http: &HttpClient,
    at: &str,
    issuer: &str,
) -> Result<(String, Map<String, Value>), DiscoverError> {
    let trimmed = at.strip_suffix('/').unwrap_or(at);
    let fail = |reasons| DiscoverError::NoIssuerMetadata {
        issuer: fetch::named(issuer),
        reasons,
    };
    let parsed = reqwest::Url::parse(trimmed).map_err(|_| fail("not a URL".into()))?;
    let (origin, path) = fetch::origin_and_path(&parsed);
    let candidates = if path.is_empty() {
        vec![
            format!("{origin}/.well-known/oauth-authorization-server"),
            format!("{origin}/.well-known/openid-configuration"),
        ]
    } else {
        vec![
            format!("{origin}/.well-known/oauth-authorization-server{path}"),
            format!("{origin}/.well-known/openid-configuration{path}"),
            format!("{trimmed}/.well-known/openid-configuration"),
        ]
    };
    let (at, metadata) = first_document(http, candidates).await.map_err(fail)?;
    let named = metadata
        .get("issuer")
        .and_then(Value::as_str)
        .unwrap_or_default();
    // RFC 8414 §3.3: identical (to the alias's issuer, where the operator
    // gave one); one trailing slash is the one difference servers are
    // known to make.
    if !same_issuer(named, issuer) {
        return Err(DiscoverError::OtherIssuer {
            metadata: fetch::named(&at),
            named: printable(named),
            issuer: fetch::named(issuer),
        });
    }
    let methods = strings(&metadata, "code_challenge_methods_supported");
    if !methods.iter().any(|method| method == "S256") {
        return Err(DiscoverError::NoPkce(fetch::named(issuer)));
    }
    Ok((at, metadata))
}

/// The first of `candidates` that answers a JSON object: where, and what.
async fn first_document(
    http: &HttpClient,
    candidates: Vec<String>,
) -> Result<(String, Map<String, Value>), String> {
    let mut reasons = Vec::new();
    for url in candidates {
        let request = match fetch::request(http, reqwest::Method::GET, &url) {
            Ok(request) => request,
            Err(reason) => {
                reasons.push(reason);
                continue;
            }
        };
        match fetch::json(request, &url).await {
            Ok(document) => return Ok((url, document)),
            Err(reason) => reasons.push(reason),
        }
    }
    Err(reasons.join("; "))
}

/// An authorization server's endpoints, as its metadata gives them.
struct Endpoints<'a> {
    issuer: &'a str,
    metadata: &'a Map<String, Value>,
    /// Origins besides the issuer's the operator allows.
    origins: &'a [String],
}

impl Endpoints<'_> {
    /// `key`'s URL, if given: `https://`, or for an issuer on loopback
    /// `http://` on loopback too (its metadata cannot send the proxy to a
    /// plain-HTTP service elsewhere); one given but not so is an error, not
    /// an endpoint left out.
    fn optional(&self, key: &'static str) -> Result<Option<String>, DiscoverError> {
        let Some(value) = self.metadata.get(key) else {
            return Ok(None);
        };
        let issuer = reqwest::Url::parse(self.issuer).ok();
        let remote = !issuer.as_ref().is_some_and(is_loopback);
        let url = value
            .as_str()
            .filter(|url| plain_url(url, true))
            .filter(|url| secure_url(url) && (!remote || url.starts_with("https://")))
            .ok_or_else(|| DiscoverError::Endpoint {
                issuer: fetch::named(self.issuer),
                key,
            })?;
        let origin = reqwest::Url::parse(url)
            .map(|parsed| parsed.origin().ascii_serialization())
            .unwrap_or_default();
        let own = issuer.is_some_and(|issuer| issuer.origin().ascii_serialization() == origin);
        if !own && !self.origins.contains(&origin) {
            return Err(DiscoverError::OtherOrigin {
                issuer: fetch::named(self.issuer),
                key,
                origin,
            });
        }
        Ok(Some(url.to_owned()))
    }

    fn required(&self, key: &'static str) -> Result<String, DiscoverError> {
        self.optional(key)?.ok_or_else(|| DiscoverError::Endpoint {
            issuer: fetch::named(self.issuer),
            key,
        })
    }
}

/// Whether the resource `named` covers the server at `url`: the same
/// origin, and `url`'s path is `named`'s or below it.
pub(super) fn covers(named: &str, url: &str) -> bool {
    let (Ok(named), Ok(url)) = (reqwest::Url::parse(named), reqwest::Url::parse(url)) else {
        return false;
    };
    if named.origin() != url.origin()
        || !named.username().is_empty()
        || named.password().is_some()
        || named.query().is_some()
        || named.fragment().is_some()
    {
        return false;
    }
    let parent = named.path().trim_end_matches('/');
    let path = url.path();
    path == parent
        || path
            .strip_prefix(parent)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// The strings of a JSON array at `key`.
fn strings(document: &Map<String, Value>, key: &str) -> Vec<String> {
    document
        .get(key)
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// Whether a peer-named `url` is one the proxy takes: printable ASCII
/// only (nothing a terminal or a log would act on), a URL as written, with
/// no user info or fragment, and a query only where `query` allows it (an
/// endpoint may have one, RFC 6749 §3.1; an issuer or a metadata URL not).
fn plain_url(url: &str, query: bool) -> bool {
    url.bytes().all(|b| (0x21..=0x7e).contains(&b))
        && reqwest::Url::parse(url).is_ok_and(|parsed| {
            parsed.username().is_empty()
                && parsed.password().is_none()
                && parsed.fragment().is_none()
                && (query || parsed.query().is_none())
        })
}

/// A peer's text for an error: its first 200 characters, control and
/// non-ASCII characters escaped.
fn printable(text: &str) -> String {
    super::token::escaped(text, 200)
}

#[cfg(test)]
#[path = "discover_tests.rs"]
mod tests;
