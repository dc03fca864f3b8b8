//! Who a request comes from, checked before any handler runs.
//!
//! The order, outermost first, cheapest and least revealing first:
//!
//! ```text
//! request ─▶ guard ──────────────▶ Host/Origin layer ───▶ extractor ──────────▶ handler
//!            every route but        on each sub-router:    in the handler's
//!            /healthz: 429 for a    /mcp and the admin     signature: Client
//!            source or credential   API strictly, the      (/mcp), Auditor (the
//!            out of failures;       console's pages also   admin API), LoggedIn
//!            counts each refused    from its own origin    (the console's pages)
//!            credential on the way
//!            back (AuthFailure)
//! ```
//!
//! A refusal that names a credential is marked with [`AuthFailure`] for
//! [`guard`] to count and record; the refusals themselves (status, body,
//! `WWW-Authenticate`, `Retry-After`) are made here and nowhere else.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use sha2::{Digest, Sha256};

use super::layout::login_page;
use super::logins;
use super::resource::{Challenge, challenge};
use super::state::{Credentials, HttpState, plain_error};
use super::throttle::{Credential, Failure, Source};
use super::tls::PeerCertificate;
use crate::chain::ClientIdentity;
use crate::identity::{OauthVerifier, TokenError};

/// Set on a response that refused a credential, for [`guard`] to count
/// against the request's source and credential prefix, and to record.
#[derive(Clone)]
struct AuthFailure {
    failure: Failure,
    /// The presented credential, when it did not come in the
    /// `Authorization` header (the console's login form).
    credential: Option<Credential>,
    /// Counted against the source and credential (a guess); else only
    /// recorded (a real token refused: expired, for another audience,
    /// short of a scope, its provider away).
    counted: bool,
}

impl AuthFailure {
    fn attach(
        mut response: Response,
        endpoint: &'static str,
        reason: &'static str,
        who: &str,
        credential: Option<Credential>,
    ) -> Response {
        response.extensions_mut().insert(Self {
            failure: Failure {
                endpoint,
                reason,
                who: who.to_owned(),
            },
            credential,
            counted: true,
        });
        response
    }

    /// A refusal recorded (in the `auth_failure` records) but not counted.
    fn noted(mut response: Response, reason: &'static str) -> Response {
        response.extensions_mut().insert(Self {
            failure: Failure {
                endpoint: "/mcp",
                reason,
                who: String::new(),
            },
            credential: None,
            counted: false,
        });
        response
    }
}

/// Every route but `/healthz` passes here first: a source or credential
/// prefix that has used up its authentication failures is refused with
/// 429 before anything else is looked at, and a response that refused a
/// credential ([`AuthFailure`]) is counted against both.
pub(super) async fn guard(
    State(state): State<Arc<HttpState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let source = Source::of(peer.ip());
    let credential = bearer_token(request.headers()).map(|token| {
        // With an identity provider, only tokens in the static tokens'
        // format are counted by prefix.
        if state.oauth.is_some() && !token.starts_with(STATIC_PREFIX) {
            Credential::whole(token)
        } else {
            Credential::of(token)
        }
    });
    let endpoint = endpoint_of(request.uri().path());
    // A client certificate was proven at the handshake: a request that
    // brings one and no token guesses nothing, and is not held back by
    // guessers sharing its address.
    let proven = credential.is_none() && request.extensions().get::<PeerCertificate>().is_some();
    if !proven && let Some(throttled) = throttled(&state, source, credential, endpoint) {
        return throttled;
    }
    let mut response = next.run(request).await;
    if let Some(refused) = response.extensions_mut().remove::<AuthFailure>() {
        // A guess is worth a line; a real token refused (as often as its
        // client retries it) is in the records already.
        if refused.counted {
            tracing::info!(%source, endpoint = refused.failure.endpoint, reason = refused.failure.reason, "refused a credential");
        } else {
            tracing::debug!(%source, endpoint = refused.failure.endpoint, reason = refused.failure.reason, "refused a credential");
        }
        if let Some(metrics) = state.gateway.records().metrics() {
            metrics
                .auth_failures
                .get([refused.failure.endpoint, "refused"])
                .add(1);
        }
        if refused.counted {
            state.throttle.failed(
                source,
                refused.credential.or(credential),
                refused.failure,
                std::time::Instant::now(),
            );
        } else {
            state.throttle.tally(source, refused.failure);
        }
    }
    response
}

/// The endpoint a path counts under in failure records: HTTP+SSE's
/// paths are clients' too, and count as `/mcp`.
fn endpoint_of(path: &str) -> &'static str {
    match path {
        "/mcp" | "/sse" | "/messages" => "/mcp",
        "/admin/login" => "/admin/login",
        _ => "/admin",
    }
}

/// 429 with `Retry-After` in whole seconds (at least one).
fn too_many_attempts(endpoint: &str, wait: Duration) -> Response {
    let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
    let mut response = if endpoint == "/admin/login" {
        login_page(
            StatusCode::TOO_MANY_REQUESTS,
            Some("Too many failed logins from here; try again later."),
        )
    } else {
        plain_error(
            StatusCode::TOO_MANY_REQUESTS,
            "too many failed authentication attempts; try again later",
        )
    };
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    response
}

/// 429 for an attempt from `source` with `credential`, when either has
/// used up its authentication failures; tallied for the records.
pub(super) fn throttled(
    state: &HttpState,
    source: Source,
    credential: Option<Credential>,
    endpoint: &'static str,
) -> Option<Response> {
    let wait = state
        .throttle
        .retry_after(source, credential, std::time::Instant::now())?;
    tracing::debug!(%source, endpoint, "throttled an authentication attempt");
    state.throttle.tally(
        source,
        Failure {
            endpoint,
            reason: "throttled after too many failures",
            who: String::new(),
        },
    );
    if let Some(metrics) = state.gateway.records().metrics() {
        metrics.auth_failures.get([endpoint, "throttled"]).add(1);
    }
    Some(too_many_attempts(endpoint, wait))
}

/// The layer of `/mcp` and the admin API: [`check_origin`].
pub(super) async fn host_and_origin(
    State(state): State<Arc<HttpState>>,
    request: Request,
    next: Next,
) -> Response {
    match check_origin(&state, request.headers()) {
        Ok(()) => next.run(request).await,
        Err(refused) => *refused,
    }
}

/// The layer of the console's pages and forms: [`check_same_origin`].
pub(super) async fn own_origin(
    State(state): State<Arc<HttpState>>,
    request: Request,
    next: Next,
) -> Response {
    match check_same_origin(&state, request.headers()) {
        Ok(()) => next.run(request).await,
        Err(refused) => *refused,
    }
}

/// DNS-rebinding protection: a browser page must not reach the proxy.
fn check_origin(state: &HttpState, headers: &HeaderMap) -> Result<(), Box<Response>> {
    if let Some(origin) = headers.get(header::ORIGIN) {
        let allowed = origin
            .to_str()
            .is_ok_and(|origin| state.allowed_origins.iter().any(|a| a == origin));
        if !allowed {
            return Err(Box::new(plain_error(
                StatusCode::FORBIDDEN,
                "cross-origin requests are not allowed",
            )));
        }
    }
    // Parsed strictly: a value that is not an authority names no host.
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(super::authority::host_of);
    let allowed = host.is_some_and(|(host, _)| {
        state.allowed_hosts.iter().any(|allowed| {
            // An IPv6 address as written in the config, in its one form.
            let allowed = allowed.trim_start_matches('[').trim_end_matches(']');
            match allowed.parse::<std::net::Ipv6Addr>() {
                Ok(address) => address.to_string() == host,
                Err(_) => allowed.eq_ignore_ascii_case(&host),
            }
        })
    });
    if !allowed {
        return Err(Box::new(plain_error(
            StatusCode::FORBIDDEN,
            "the Host header must name this proxy (`[proxy] allowed_hosts`)",
        )));
    }
    Ok(())
}

/// Host and Origin as [`check_origin`], except that the proxy's own origin
/// is allowed: the console's pages post to it.
fn check_same_origin(state: &HttpState, headers: &HeaderMap) -> Result<(), Box<Response>> {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let own = headers
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .zip(host)
        .is_some_and(|(origin, host)| {
            let scheme = if state.tls { "https" } else { "http" };
            origin == format!("{scheme}://{host}")
        });
    if own {
        let mut without = headers.clone();
        without.remove(header::ORIGIN);
        return check_origin(state, &without);
    }
    check_origin(state, headers)
}

/// An MCP client: its verified TLS client certificate, when it presented
/// one (a bearer token beside it must be the same client's), else its
/// bearer token. An auditor's token is refused (auditors cannot call
/// tools).
pub(super) struct Client(pub(super) ClientIdentity, pub(super) Expiry);

/// How long (seconds) a stream opened with an access token whose expiry is
/// not known lasts.
const UNKNOWN_EXPIRY: u64 = 60;

/// When the credential a request came with stops being good: an access
/// token's expiry (a stream it opened ends then); never, for a static token
/// or a certificate.
#[derive(Clone, Copy, Default)]
pub(super) struct Expiry(Option<tokio::time::Instant>);

impl Expiry {
    /// At `until` (Unix seconds), or, when the verifier no longer holds
    /// the token's expiry (its memory emptied meanwhile, an introspected
    /// token without `exp`), a minute from now: never "never".
    fn at(until: Option<u64>) -> Self {
        let now = crate::protocol::unix_now();
        let left = until.map_or(UNKNOWN_EXPIRY, |until| until.saturating_sub(now));
        // A year at most: an `exp` far off overflows no clock.
        let left = std::time::Duration::from_secs(left.min(365 * 24 * 3600));
        Self(Some(tokio::time::Instant::now() + left))
    }

    /// Waits until then (for ever, when never).
    pub(super) async fn reached(self) {
        match self.0 {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    }
}

impl FromRequestParts<Arc<HttpState>> for Client {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<HttpState>,
    ) -> Result<Self, Response> {
        let certificate = parts.extensions.get::<PeerCertificate>();
        // The token is hashed once: its hash finds a static token, and
        // keys an access token the verifier has seen.
        let token = bearer_token(&parts.headers);
        let digest: Option<[u8; 32]> = token.map(|token| Sha256::digest(token.as_bytes()).into());
        let hash = digest.map(hex::encode);
        if let Some(oauth) = &state.oauth
            && certificate.is_none()
            && let (Some(token), Some(digest), Some(hash)) = (token, digest, &hash)
            && !state.credentials.is_static(hash)
            // A token in the static tokens' format (a wrong or retired
            // one) is never shown to an identity provider.
            && !token.starts_with(STATIC_PREFIX)
        {
            let client = with_token(oauth, token, digest).await?;
            // A server that acts as the client's user exchanges it.
            state
                .gateway
                .servers()
                .keep_user_token(&client, token, || oauth.good_until(&digest));
            let expiry = Expiry::at(oauth.expires(&digest));
            return Ok(Client(client, expiry));
        }
        authenticate(&state.credentials, hash.as_deref(), certificate)
            .map(|client| Client(client, Expiry::default()))
            .map_err(|refused| {
                let mut refused = *refused;
                if let Some(oauth) = &state.oauth
                    && refused.status() == StatusCode::UNAUTHORIZED
                {
                    let kind = match bearer_token(&parts.headers) {
                        Some(_) => Challenge::InvalidToken("the bearer token is not valid"),
                        None => Challenge::NoToken,
                    };
                    refused
                        .headers_mut()
                        .insert(header::WWW_AUTHENTICATE, challenge(oauth.config(), kind));
                }
                refused
            })
    }
}

/// A client with an access token from an identity provider: who the token
/// says, or the refusal the MCP authorization spec asks for (401 with a
/// challenge pointing at the metadata; 403 `insufficient_scope`; 503 when
/// the provider cannot be asked, which is no failure of the client's).
async fn with_token(
    oauth: &OauthVerifier,
    token: &str,
    digest: [u8; 32],
) -> Result<ClientIdentity, Response> {
    match oauth.verify_hashed(token, digest).await {
        Ok(identity) => Ok(identity),
        Err(error @ TokenError::InsufficientScope) => {
            let mut refused = plain_error(
                StatusCode::FORBIDDEN,
                "the access token lacks a scope this resource requires",
            );
            refused.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                challenge(oauth.config(), Challenge::InsufficientScope),
            );
            Err(AuthFailure::noted(refused, error.reason()))
        }
        Err(error @ TokenError::Unreachable(_)) => {
            let jwt = oauth.names_a_provider(token);
            tracing::warn!(%error, "cannot check an access token");
            let mut refused = plain_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the identity provider cannot be reached to check the token; try again later",
            );
            refused
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            // While the provider is away, a guess at a static token (an
            // opaque one) must not get an answer for free: counted. A JWT
            // of a provider here is no such guess.
            if jwt {
                return Err(AuthFailure::noted(refused, error.reason()));
            }
            Err(counted(refused, &error))
        }
        Err(error) => {
            let description = error.to_string();
            let mut refused = plain_error(StatusCode::UNAUTHORIZED, &description);
            refused.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                challenge(oauth.config(), Challenge::InvalidToken(&description)),
            );
            if !error.is_guess() {
                return Err(AuthFailure::noted(refused, error.reason()));
            }
            Err(counted(refused, &error))
        }
    }
}

/// A client by its certificate or by `hash`, its bearer token's SHA-256
/// (hex).
fn authenticate(
    credentials: &Credentials,
    hash: Option<&str>,
    certificate: Option<&PeerCertificate>,
) -> Result<ClientIdentity, Box<Response>> {
    if let Some(certificate) = certificate {
        let Some(client) = credentials.certificates.get(&certificate.0) else {
            return Err(Box::new(AuthFailure::attach(
                unauthorized("this client certificate names no client"),
                "/mcp",
                "unknown client certificate",
                "",
                None,
            )));
        };
        if let Some(hash) = hash
            && credentials
                .tokens
                .get(hash)
                .is_none_or(|other| other.name != client.name)
        {
            return Err(Box::new(AuthFailure::attach(
                unauthorized("the bearer token is not the client certificate's client's"),
                "/mcp",
                "a token of another client than the certificate's",
                &client.name,
                None,
            )));
        }
        return Ok(client.clone());
    }
    let Some(hash) = hash else {
        return Err(no_token("/mcp"));
    };
    match credentials.tokens.get(hash) {
        Some(client) => Ok(client.clone()),
        None => Err(Box::new(wrong_token(
            unauthorized("the bearer token is not valid"),
            "/mcp",
            credentials
                .auditors
                .get(hash)
                .map(|auditor| (AUDITORS_TOKEN, auditor.as_str())),
            None,
        ))),
    }
}

/// A reader of the audit log through the admin API: an auditor's token
/// (or the web console's login cookie, got with one), never a client's (a
/// client cannot read the log). The auditor's name.
pub(super) struct Auditor(pub(super) String);

impl FromRequestParts<Arc<HttpState>> for Auditor {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<HttpState>,
    ) -> Result<Self, Response> {
        if let Some(auditor) = logged_in(state, &parts.headers) {
            return Ok(Self(auditor));
        }
        let Some(hash) = bearer_hash(&parts.headers) else {
            return Err(*no_token("/admin"));
        };
        let credentials = &state.credentials;
        match credentials.auditors.get(&hash) {
            Some(name) => Ok(Self(name.clone())),
            None => Err(wrong_token(
                unauthorized("this is not an auditor's token"),
                "/admin",
                credentials
                    .tokens
                    .get(&hash)
                    .map(|client| (CLIENTS_TOKEN, &*client.name)),
                None,
            )),
        }
    }
}

/// An auditor logged in to the web console with its cookie; a request
/// without a login is answered with the login page. The auditor's name.
pub(super) struct LoggedIn(pub(super) String);

impl FromRequestParts<Arc<HttpState>> for LoggedIn {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<HttpState>,
    ) -> Result<Self, Response> {
        logged_in(state, &parts.headers)
            .map(Self)
            .ok_or_else(|| login_page(StatusCode::OK, None))
    }
}

/// The auditor logged in with the request's cookie, if any. A browser's
/// request made by another site's page does not count, even on this
/// machine: `SameSite` ignores ports, so a page served from another port
/// of localhost would send the cookie; `Sec-Fetch-Site` tells them apart.
fn logged_in(state: &HttpState, headers: &HeaderMap) -> Option<String> {
    if let Some(site) = headers.get("sec-fetch-site")
        && !matches!(site.as_bytes(), b"same-origin" | b"none")
    {
        return None;
    }
    state.logins.auditor_of(&logins::cookies(headers))
}

/// The auditor whose token this is: the console's login. A client's token
/// or an unknown one is refused with `refused`, marked for [`guard`] to
/// count.
pub(super) fn auditor_of_token(
    credentials: &Credentials,
    token: &str,
    refused: Response,
) -> Result<String, Box<Response>> {
    let token = token.trim();
    let hash = hex::encode(Sha256::digest(token.as_bytes()));
    if let Some(auditor) = credentials.auditors.get(&hash) {
        return Ok(auditor.clone());
    }
    Err(Box::new(wrong_token(
        refused,
        "/admin/login",
        credentials
            .tokens
            .get(&hash)
            .map(|client| (CLIENTS_TOKEN, &*client.name)),
        Some(Credential::of(token)),
    )))
}

/// `refused`, marked for [`guard`] as a refused access token.
fn counted(refused: Response, error: &TokenError) -> Response {
    AuthFailure::attach(refused, "/mcp", error.reason(), "", None)
}

/// How the tokens `portcullis init` makes begin (`pcl_` and 64 hex
/// digits): a token so made is counted by its prefix and never sent to an
/// identity provider.
const STATIC_PREFIX: &str = "pcl_";

/// Why an auditor's token is refused at `/mcp`, in the failure records.
const AUDITORS_TOKEN: &str = "an auditor's token (auditors cannot call tools)";
/// Why a client's token is refused by the admin API and the console.
const CLIENTS_TOKEN: &str = "a client's token (clients cannot read the log)";

/// `refused`, marked for [`guard`] as the refusal of a token the endpoint
/// does not take: the other kind's (why, and whose), or an unknown one.
fn wrong_token(
    refused: Response,
    endpoint: &'static str,
    other: Option<(&'static str, &str)>,
    credential: Option<Credential>,
) -> Response {
    match other {
        Some((reason, who)) => AuthFailure::attach(refused, endpoint, reason, who, credential),
        None => AuthFailure::attach(refused, endpoint, "unknown token", "", credential),
    }
}

/// The request's bearer token, if it has one.
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            value
                .strip_prefix("Bearer ")
                .or_else(|| value.strip_prefix("bearer "))
        })
        .map(str::trim)
}

/// The SHA-256 (hex) of the request's bearer token.
fn bearer_hash(headers: &HeaderMap) -> Option<String> {
    bearer_token(headers).map(|token| hex::encode(Sha256::digest(token.as_bytes())))
}

/// 401 for a request without a bearer token, marked for [`guard`] (which
/// records it but does not count it: it guessed nothing).
fn no_token(endpoint: &'static str) -> Box<Response> {
    Box::new(AuthFailure::attach(
        unauthorized("a bearer token is required"),
        endpoint,
        "no bearer token",
        "",
        None,
    ))
}

fn unauthorized(message: &str) -> Response {
    let mut response = plain_error(StatusCode::UNAUTHORIZED, message);
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}
