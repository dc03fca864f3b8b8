//! MCP streamable HTTP at `/mcp` (POST, GET for the server's SSE stream,
//! DELETE to end a session), plus `/healthz`.
//!
//! Order of checks on every `/mcp` request, cheapest and least revealing
//! first: Host and Origin (DNS rebinding), bearer token, then the session.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Extension, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::StreamExt as _;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::DownstreamError;
use super::detached::Detached;
use super::slots::{Cap, Slot, Slots};
use super::throttle::{Credential, Failure, Source, Throttle};
use super::tls::PeerCertificate;
use crate::chain::{ClientIdentity, Transport};
use crate::gateway::{Gateway, Outlet, Session};
use crate::interceptors::{Pinning, PolicyEngine};
use crate::protocol::{self, IdKey, Kind, ParseError, code};

const SESSION_HEADER: &str = "mcp-session-id";
const VERSION_HEADER: &str = "mcp-protocol-version";
const METHOD_HEADER: &str = "mcp-method";
/// A comment line on an idle SSE stream, so that neither side nor a proxy
/// between them takes it for dead.
const SSE_HEARTBEAT: Duration = Duration::from_secs(15);

/// Messages a call's stream holds for a client that has not read them yet
/// (progress, logs, server requests, then the reply). Past it, what the
/// server sends for the call is dropped (and counted as undelivered) until
/// the client reads; the reply waits for room. A client that reads nothing
/// is cut off by the listener's write timeout, which ends the stream.
const CALL_STREAM_CAP: usize = 256;
/// Places of a call's stream that only the server's requests may take.
const CALL_STREAM_RESERVE: usize = 16;
/// Requests of one session in the works at once (as over stdio); past it a
/// request is refused with 429 until some are answered.
const SESSION_IN_FLIGHT: usize = 256;

/// Where messages for one HTTP session go: the stream of the POST they
/// belong to, or else the session's GET stream. Both are bounded.
#[derive(Default)]
struct HttpOutlet {
    get_stream: Mutex<Option<mpsc::Sender<Value>>>,
    post_streams: Mutex<HashMap<IdKey, mpsc::Sender<Value>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

impl Outlet for HttpOutlet {
    fn deliver(&self, mut message: Value, related: Option<&Value>) -> bool {
        let stream = related
            .and_then(IdKey::from_value)
            .and_then(|key| lock(&self.post_streams).get(&key).cloned());
        if let Some(stream) = stream {
            // The last places are kept for the server's requests (sampling,
            // elicitation, roots): a burst of progress does not crowd out
            // a request the call waits on.
            if stream.capacity() < CALL_STREAM_RESERVE
                && protocol::classify(&message) == Some(Kind::Notification)
            {
                return false;
            }
            match stream.try_send(message) {
                Ok(()) => return true,
                // A full stream drops the message rather than sending it on
                // the session's GET stream ahead of the ones it waits behind.
                Err(mpsc::error::TrySendError::Full(_)) => return false,
                // The client left the call's stream: the GET stream, if any.
                Err(mpsc::error::TrySendError::Closed(back)) => message = back,
            }
        }
        match lock(&self.get_stream).as_ref() {
            Some(stream) => stream.try_send(message).is_ok(),
            None => false,
        }
    }
}

struct HttpSession {
    session: Arc<Session>,
    outlet: Arc<HttpOutlet>,
    /// Places for the session's requests in the works
    /// ([`SESSION_IN_FLIGHT`]): a call whose client went away runs on, and
    /// still holds its place until it ends.
    in_flight: Arc<tokio::sync::Semaphore>,
    /// Its place under the session caps, given back when it is gone.
    _slot: Slot<Arc<str>>,
}

pub(super) struct HttpState {
    pub(super) gateway: Arc<Gateway>,
    /// SHA-256 (hex) of each client's token → the client.
    tokens: HashMap<String, ClientIdentity>,
    /// SHA-256 (hex) of each auditor's token → the auditor's name.
    auditors: HashMap<String, String>,
    sessions: RwLock<HashMap<String, Arc<HttpSession>>>,
    allowed_origins: Vec<String>,
    /// Host names the `Host` header may name (lowercase, no port).
    allowed_hosts: Vec<String>,
    /// The web console's logins: cookie value → auditor and expiry.
    pub(super) console: Mutex<HashMap<String, super::console::Login>>,
    pub(super) enforcement: Enforcement,
    /// Authentication failures per source and credential prefix.
    pub(super) throttle: Throttle,
    /// Sessions open or being opened, in total and per client.
    slots: Arc<Slots<Arc<str>>>,
    /// How long a request's body may take to arrive.
    pub(super) body_read_timeout: Duration,
    /// Clients by the SHA-256 of their TLS certificate.
    certificates: HashMap<String, ClientIdentity>,
    /// Whether the listener speaks TLS (the console's cookie is `Secure`).
    pub(super) tls: bool,
}

/// Set on a response that refused a credential, for [`guard`] to count
/// against the request's source and credential prefix.
#[derive(Clone)]
pub(super) struct AuthFailure {
    failure: Failure,
    /// The presented credential, when it did not come in the
    /// `Authorization` header (the console's login form).
    credential: Option<Credential>,
}

impl AuthFailure {
    pub(super) fn attach(
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
        });
        response
    }
}

/// What the console shows of the chain: the policy set authz enforces and
/// the pins pinning enforces. They are built with the chain, beside the
/// gateway, and are absent when their interceptor is not in the chain.
#[derive(Clone, Default)]
pub struct Enforcement {
    pub policies: Option<Arc<PolicyEngine>>,
    pub pinning: Option<Arc<Pinning>>,
}

/// Serves streamable HTTP until the gateway shuts down.
pub async fn serve(
    gateway: Arc<Gateway>,
    addr: SocketAddr,
    enforcement: Enforcement,
) -> Result<(), DownstreamError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| DownstreamError::Bind { addr, source })?;
    let local = listener.local_addr().unwrap_or(addr);
    tracing::info!(addr = %local, "listening for MCP over streamable HTTP at /mcp");
    serve_on(gateway, listener, enforcement).await
}

/// Serves on a bound listener.
pub async fn serve_on(
    gateway: Arc<Gateway>,
    listener: tokio::net::TcpListener,
    enforcement: Enforcement,
) -> Result<(), DownstreamError> {
    let config = gateway.config();
    // Each client's identity, by its token's hash and by its certificate's.
    let (mut tokens, mut certificates) = (HashMap::new(), HashMap::new());
    for client in &config.clients {
        let identity = ClientIdentity::new(&client.name, &client.groups)
            .with_attributes(client.attributes.clone());
        if let Some(hash) = &client.token_sha256 {
            tokens.insert(hash.clone(), identity.clone());
        }
        if let Some(hash) = &client.cert_sha256 {
            certificates.insert(hash.clone(), identity);
        }
    }
    // DNS rebinding: a page on another site whose name now resolves to
    // this proxy sends its own name as Host. This machine's loopback
    // names, the listen address itself and `allowed_hosts` are accepted.
    let mut allowed_hosts: Vec<String> = ["localhost", "127.0.0.1", "::1"]
        .into_iter()
        .map(str::to_owned)
        .chain(config.proxy.allowed_hosts.iter().cloned())
        .collect();
    if let Ok(addr) = listener.local_addr()
        && !addr.ip().is_unspecified()
    {
        allowed_hosts.push(addr.ip().to_string());
    }
    if config.listener.tls.is_none()
        && listener
            .local_addr()
            .is_ok_and(|addr| !addr.ip().is_loopback())
    {
        tracing::warn!(
            "PLAINTEXT: the listener is not on a loopback address and speaks plain HTTP (`[listener] insecure_plaintext = true`): tokens and calls cross the network in clear"
        );
    }
    let auditors = config
        .auditors
        .iter()
        .map(|auditor| (auditor.token_sha256.clone(), auditor.name.clone()))
        .collect();
    let state = Arc::new(HttpState {
        tokens,
        auditors,
        sessions: RwLock::new(HashMap::new()),
        allowed_origins: config.proxy.allowed_origins.clone(),
        allowed_hosts,
        gateway: gateway.clone(),
        console: Mutex::new(HashMap::new()),
        enforcement,
        throttle: Throttle::new(
            config.listener.auth_failures_per_source,
            config.listener.auth_failures_per_credential,
        ),
        slots: Slots::new(
            config.proxy.max_sessions,
            config.proxy.max_sessions_per_client,
        ),
        body_read_timeout: config.listener.body_read_timeout,
        certificates,
        tls: config.listener.tls.is_some(),
    });
    let body_limit = config.limits.max_message_bytes;
    let app = Router::new()
        .route(
            "/mcp",
            get(open_stream).post(post_message).delete(end_session),
        )
        .merge(super::admin::routes())
        .merge(super::console::routes())
        .layer(axum::middleware::from_fn_with_state(state.clone(), guard))
        .route("/healthz", get(healthz))
        .layer(axum::extract::DefaultBodyLimit::max(body_limit))
        .with_state(state.clone());

    let sweeper = {
        let state = state.clone();
        let shutdown = gateway.shutdown_token();
        tokio::spawn(async move {
            let idle = state.gateway.config().proxy.session_idle_timeout;
            let interval = state.gateway.config().listener.failure_record_interval;
            let mut sweep = tokio::time::interval(Duration::from_secs(15));
            let mut record = tokio::time::interval(interval);
            loop {
                tokio::select! {
                    _ = sweep.tick() => state.expire_idle(idle),
                    _ = record.tick() => {
                        state.gateway.record_events(state.throttle.take_records());
                    }
                    () = shutdown.cancelled() => return,
                }
            }
        })
    };
    {
        // The failures of the last interval are recorded as the proxy stops.
        let state = Arc::downgrade(&state);
        gateway.on_stop(move || {
            state
                .upgrade()
                .map(|state| state.throttle.take_records())
                .unwrap_or_default()
        });
    }
    let tls = match &config.listener.tls {
        None => None,
        Some(tls) => {
            let tls = super::tls::Tls::load(tls).map_err(DownstreamError::Tls)?;
            tls.clone().watch(gateway.shutdown_token());
            Some(tls)
        }
    };
    super::listener::serve(
        listener,
        app,
        config.listener.clone(),
        tls,
        gateway.metrics().cloned(),
        gateway.shutdown_token(),
    )
    .await;
    sweeper.abort();
    Ok(())
}

/// Every route but `/healthz` passes here first: a source or credential
/// prefix that has used up its authentication failures is refused with
/// 429 before anything else is looked at, and a response that refused a
/// credential ([`AuthFailure`]) is counted against both.
async fn guard(
    State(state): State<Arc<HttpState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let source = Source::of(peer.ip());
    let credential = bearer_token(request.headers()).map(Credential::of);
    let endpoint = endpoint_of(request.uri().path());
    // A client certificate was proven at the handshake: a request that
    // brings one and no token guesses nothing, and is not held back by
    // guessers sharing its address.
    let proven = credential.is_none() && request.extensions().get::<PeerCertificate>().is_some();
    if !proven && let Some(throttled) = state.throttled(source, credential, endpoint) {
        return throttled;
    }
    let mut response = next.run(request).await;
    if let Some(refused) = response.extensions_mut().remove::<AuthFailure>() {
        tracing::info!(%source, endpoint = refused.failure.endpoint, reason = refused.failure.reason, "refused a credential");
        if let Some(metrics) = state.gateway.metrics() {
            metrics
                .auth_failures
                .get([refused.failure.endpoint, "refused"])
                .add(1);
        }
        state.throttle.failed(
            source,
            refused.credential.or(credential),
            refused.failure,
            std::time::Instant::now(),
        );
    }
    response
}

/// The endpoint a path counts under in failure records.
fn endpoint_of(path: &str) -> &'static str {
    match path {
        "/mcp" => "/mcp",
        "/admin/login" => "/admin/login",
        _ => "/admin",
    }
}

/// 429 with `Retry-After` in whole seconds (at least one).
pub(super) fn too_many_attempts(endpoint: &str, wait: Duration) -> Response {
    let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
    let mut response = if endpoint == "/admin/login" {
        super::console::login_page(
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

impl HttpState {
    /// 429 for an attempt from `source` with `credential`, when either has
    /// used up its authentication failures; tallied for the records.
    pub(super) fn throttled(
        &self,
        source: Source,
        credential: Option<Credential>,
        endpoint: &'static str,
    ) -> Option<Response> {
        let wait = self
            .throttle
            .retry_after(source, credential, std::time::Instant::now())?;
        tracing::debug!(%source, endpoint, "throttled an authentication attempt");
        self.throttle.tally(
            source,
            Failure {
                endpoint,
                reason: "throttled after too many failures",
                who: String::new(),
            },
        );
        if let Some(metrics) = self.gateway.metrics() {
            metrics.auth_failures.get([endpoint, "throttled"]).add(1);
        }
        Some(too_many_attempts(endpoint, wait))
    }

    fn expire_idle(&self, idle: Duration) {
        let expired: Vec<Arc<HttpSession>> = match self.sessions.write() {
            Ok(mut sessions) => {
                let ids: Vec<String> = sessions
                    .iter()
                    .filter(|(_, s)| s.session.idle_for() > idle)
                    .map(|(id, _)| id.clone())
                    .collect();
                ids.iter().filter_map(|id| sessions.remove(id)).collect()
            }
            Err(_) => Vec::new(),
        };
        for session in expired {
            tracing::info!(session = %session.session.id, "session expired after being idle");
            self.gateway.close_session(&session.session);
        }
    }

    /// DNS-rebinding protection: a browser page must not reach the proxy.
    pub(super) fn check_origin(&self, headers: &HeaderMap) -> Result<(), Box<Response>> {
        if let Some(origin) = headers.get(header::ORIGIN) {
            let allowed = origin
                .to_str()
                .is_ok_and(|origin| self.allowed_origins.iter().any(|a| a == origin));
            if !allowed {
                return Err(Box::new(plain_error(
                    StatusCode::FORBIDDEN,
                    "cross-origin requests are not allowed",
                )));
            }
        }
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default();
        let hostname = match host.strip_prefix('[') {
            Some(rest) => rest.split(']').next().unwrap_or_default(),
            None => host.split(':').next().unwrap_or_default(),
        };
        if !self
            .allowed_hosts
            .iter()
            .any(|allowed| allowed.eq_ignore_ascii_case(hostname))
        {
            return Err(Box::new(plain_error(
                StatusCode::FORBIDDEN,
                "the Host header must name this proxy (`[proxy] allowed_hosts`)",
            )));
        }
        Ok(())
    }

    /// The client a request comes from: its verified TLS client
    /// certificate, when it presented one (a bearer token beside it must be
    /// the same client's), else its bearer token.
    fn authenticate(
        &self,
        headers: &HeaderMap,
        certificate: Option<&PeerCertificate>,
    ) -> Result<ClientIdentity, Box<Response>> {
        if let Some(certificate) = certificate {
            let Some(client) = self.certificates.get(&certificate.0) else {
                return Err(Box::new(AuthFailure::attach(
                    unauthorized("this client certificate names no client"),
                    "/mcp",
                    "unknown client certificate",
                    "",
                    None,
                )));
            };
            if let Some(hash) = bearer_hash(headers)
                && self
                    .tokens
                    .get(&hash)
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
        let Some(hash) = bearer_hash(headers) else {
            return Err(no_token("/mcp"));
        };
        match self.tokens.get(&hash) {
            Some(client) => Ok(client.clone()),
            None => {
                let refused = unauthorized("the bearer token is not valid");
                Err(Box::new(match self.auditors.get(&hash) {
                    Some(auditor) => AuthFailure::attach(
                        refused,
                        "/mcp",
                        "an auditor's token (auditors cannot call tools)",
                        auditor,
                        None,
                    ),
                    None => AuthFailure::attach(refused, "/mcp", "unknown token", "", None),
                }))
            }
        }
    }

    /// The auditor whose token this is: the console's login. A client's
    /// token or an unknown one is refused: the refusal is `Err`, marked
    /// for [`guard`] to count.
    pub(super) fn auditor_of_token(
        &self,
        token: &str,
        refused: Response,
    ) -> Result<String, Box<Response>> {
        let token = token.trim();
        let hash = hex::encode(Sha256::digest(token.as_bytes()));
        if let Some(auditor) = self.auditors.get(&hash) {
            return Ok(auditor.clone());
        }
        let credential = Some(Credential::of(token));
        Err(Box::new(match self.tokens.get(&hash) {
            Some(client) => AuthFailure::attach(
                refused,
                "/admin/login",
                "a client's token (clients cannot read the log)",
                &client.name,
                credential,
            ),
            None => AuthFailure::attach(refused, "/admin/login", "unknown token", "", credential),
        }))
    }

    /// Host and Origin as [`HttpState::check_origin`], except that the
    /// proxy's own origin is allowed: the console's pages post to it.
    pub(super) fn check_same_origin(&self, headers: &HeaderMap) -> Result<(), Box<Response>> {
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        let own = headers
            .get(header::ORIGIN)
            .and_then(|o| o.to_str().ok())
            .zip(host)
            .is_some_and(|(origin, host)| {
                let scheme = if self.tls { "https" } else { "http" };
                origin == format!("{scheme}://{host}")
            });
        if own {
            let mut without = headers.clone();
            without.remove(header::ORIGIN);
            return self.check_origin(&without);
        }
        self.check_origin(headers)
    }

    /// The auditor a request comes from: an auditor's token (or the web
    /// console's login cookie, got with one), never a client's (a client
    /// cannot read the log).
    pub(super) fn authenticate_auditor(
        &self,
        headers: &HeaderMap,
    ) -> Result<String, Box<Response>> {
        if let Some(auditor) = super::console::logged_in(self, headers) {
            return Ok(auditor);
        }
        let Some(hash) = bearer_hash(headers) else {
            return Err(no_token("/admin"));
        };
        match self.auditors.get(&hash) {
            Some(name) => Ok(name.clone()),
            None => {
                let refused = unauthorized("this is not an auditor's token");
                Err(Box::new(match self.tokens.get(&hash) {
                    Some(client) => AuthFailure::attach(
                        refused,
                        "/admin",
                        "a client's token (clients cannot read the log)",
                        &client.name,
                        None,
                    ),
                    None => AuthFailure::attach(refused, "/admin", "unknown token", "", None),
                }))
            }
        }
    }

    /// The session a request names; it must belong to the same client.
    fn find_session(
        &self,
        headers: &HeaderMap,
        client: &ClientIdentity,
    ) -> Result<Arc<HttpSession>, Box<Response>> {
        let Some(id) = headers.get(SESSION_HEADER).and_then(|v| v.to_str().ok()) else {
            return Err(Box::new(rpc_error(
                StatusCode::BAD_REQUEST,
                Value::Null,
                code::INVALID_REQUEST,
                "missing Mcp-Session-Id header: send `initialize` first",
            )));
        };
        let session = self.sessions.read().ok().and_then(|s| s.get(id).cloned());
        match session {
            Some(session) if session.session.client.name == client.name => Ok(session),
            // Another client's session is reported as unknown, not as forbidden.
            _ => Err(Box::new(rpc_error(
                StatusCode::NOT_FOUND,
                Value::Null,
                code::INVALID_REQUEST,
                "unknown or expired session",
            ))),
        }
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

/// The SHA-256 (hex) of the request's bearer token.
fn bearer_hash(headers: &HeaderMap) -> Option<String> {
    bearer_token(headers).map(|token| hex::encode(Sha256::digest(token.as_bytes())))
}

/// Why a request's body could not be read.
pub(super) enum BodyError {
    /// It is longer than the limit: its first `limit` bytes.
    TooLarge(Bytes),
    /// It did not arrive within the body read timeout.
    TimedOut,
    /// The connection failed while it was read.
    Failed,
}

/// Reads a whole body of at most `limit` bytes within `timeout`.
pub(super) async fn read_body(
    body: Body,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, BodyError> {
    let read = async {
        let mut stream = body.into_data_stream();
        let mut parts: Vec<Bytes> = Vec::new();
        let mut length = 0usize;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|_| BodyError::Failed)?;
            if length + chunk.len() > limit {
                let mut head = Vec::with_capacity(limit);
                for part in &parts {
                    head.extend_from_slice(part);
                }
                head.extend_from_slice(&chunk[..limit - length]);
                return Err(BodyError::TooLarge(head.into()));
            }
            length += chunk.len();
            parts.push(chunk);
        }
        Ok(match parts.len() {
            0 => Bytes::new(),
            1 => parts.swap_remove(0),
            _ => parts.concat().into(),
        })
    };
    tokio::time::timeout(timeout, read)
        .await
        .unwrap_or(Err(BodyError::TimedOut))
}

/// 408 for a body that took too long; the connection is closed, as the
/// rest of the body is never read.
pub(super) fn body_timed_out() -> Response {
    (
        StatusCode::REQUEST_TIMEOUT,
        [(header::CONNECTION, HeaderValue::from_static("close"))],
        axum::Json(json!({ "error": "the request body did not arrive in time" })),
    )
        .into_response()
}

async fn healthz() -> Response {
    axum::Json(json!({ "status": "ok" })).into_response()
}

pub(super) fn plain_error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({ "error": message }))).into_response()
}

fn unauthorized(message: &str) -> Response {
    let mut response = plain_error(StatusCode::UNAUTHORIZED, message);
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

fn rpc_error(status: StatusCode, id: Value, code: i64, message: &str) -> Response {
    (status, axum::Json(protocol::error(id, code, message, None))).into_response()
}

fn accepts(headers: &HeaderMap, mime: &str) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains(mime) || v.contains("*/*"))
}

async fn post_message(
    State(state): State<Arc<HttpState>>,
    certificate: Option<Extension<PeerCertificate>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if let Err(response) = state.check_origin(&headers) {
        return *response;
    }
    let client = match state.authenticate(&headers, certificate.as_deref()) {
        Ok(client) => client,
        Err(response) => return *response,
    };
    let limits = state.gateway.config().limits;
    let bytes = match read_body(body, limits.max_message_bytes, state.body_read_timeout).await {
        Ok(bytes) => bytes,
        Err(BodyError::TooLarge(head)) => {
            let error = ParseError::TooLarge {
                limit: limits.max_message_bytes,
            };
            // The rest of the body is never read, so the connection cannot
            // carry another request: tell the client to open a new one.
            // The request's id, when its head shows it, ends its call.
            return (
                StatusCode::PAYLOAD_TOO_LARGE,
                [(header::CONNECTION, HeaderValue::from_static("close"))],
                axum::Json(error.to_response(protocol::refusal_id(&head))),
            )
                .into_response();
        }
        Err(BodyError::TimedOut) => return body_timed_out(),
        Err(BodyError::Failed) => {
            return plain_error(
                StatusCode::BAD_REQUEST,
                "the request body could not be read",
            );
        }
    };
    let message = match protocol::parse(&bytes, limits.max_depth) {
        Ok(message) => message,
        Err(error) => {
            return (
                StatusCode::BAD_REQUEST,
                axum::Json(error.to_response(protocol::refusal_id(&bytes))),
            )
                .into_response();
        }
    };
    let kind = protocol::classify(&message);
    // Refusals below answer a request's id; anything else gets `null`, so
    // that a refused response is never taken for the answer to a request.
    let request_id = match kind {
        Some(Kind::Request) => message.get("id").cloned().unwrap_or(Value::Null),
        _ => Value::Null,
    };
    let method = protocol::method(&message).map(str::to_owned);
    if let Some(header_method) = headers.get(METHOD_HEADER)
        && header_method.to_str().ok() != method.as_deref()
    {
        return rpc_error(
            StatusCode::BAD_REQUEST,
            request_id,
            code::INVALID_REQUEST,
            "the Mcp-Method header does not match the message's method",
        );
    }
    if let Some(version) = headers.get(VERSION_HEADER) {
        let known = version
            .to_str()
            .is_ok_and(|v| protocol::SUPPORTED_VERSIONS.contains(&v));
        if !known {
            return rpc_error(
                StatusCode::BAD_REQUEST,
                request_id,
                code::INVALID_REQUEST,
                "unsupported MCP-Protocol-Version",
            );
        }
    }
    let is_initialize = kind == Some(Kind::Request) && method.as_deref() == Some("initialize");

    let http_session = if is_initialize && headers.get(SESSION_HEADER).is_none() {
        // Taken before the session is opened, under one lock: concurrent
        // initializes cannot pass a cap together.
        let slot = match state.slots.take(&client.name) {
            Ok(slot) => slot,
            Err(cap) => {
                tracing::info!(client = %client.name, "refused a new session past a session cap");
                let (status, message) = match cap {
                    Cap::Total => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "too many sessions; try again later",
                    ),
                    Cap::PerKey => (
                        StatusCode::TOO_MANY_REQUESTS,
                        "this client has too many sessions open; end one (DELETE) or wait for one to expire",
                    ),
                };
                return rpc_error(status, request_id, code::INTERNAL_ERROR, message);
            }
        };
        let id = uuid::Uuid::new_v4().to_string();
        let outlet = Arc::new(HttpOutlet::default());
        let session = state.gateway.open_session(
            Arc::from(id.as_str()),
            client,
            Transport::Http,
            outlet.clone(),
        );
        Arc::new(HttpSession {
            session,
            outlet,
            in_flight: Arc::new(tokio::sync::Semaphore::new(SESSION_IN_FLIGHT)),
            _slot: slot,
        })
    } else {
        match state.find_session(&headers, &client) {
            Ok(session) => session,
            Err(response) => return *response,
        }
    };
    let session = http_session.session.clone();

    if kind != Some(Kind::Request) {
        return match state.gateway.handle(&session, message).await {
            // A message that is not a request still gets refused visibly.
            Some(reply) => (StatusCode::BAD_REQUEST, axum::Json(reply)).into_response(),
            None => StatusCode::ACCEPTED.into_response(),
        };
    }

    if is_initialize {
        let reply = state.gateway.handle(&session, message).await;
        let ok = reply.as_ref().is_some_and(|r| r.get("result").is_some());
        let mut response = axum::Json(reply.unwrap_or(Value::Null)).into_response();
        if ok && headers.get(SESSION_HEADER).is_none() {
            if let Ok(mut sessions) = state.sessions.write() {
                sessions.insert(session.id.to_string(), http_session.clone());
            }
            if let Ok(value) = HeaderValue::from_str(&session.id) {
                response.headers_mut().insert(SESSION_HEADER, value);
            }
        } else if headers.get(SESSION_HEADER).is_none() {
            state.gateway.close_session(&session);
        }
        return response;
    }

    // Each request holds a place until it has been answered; one past them
    // is refused rather than queued.
    let Ok(place) = http_session.in_flight.clone().try_acquire_owned() else {
        return rpc_error(
            StatusCode::TOO_MANY_REQUESTS,
            request_id,
            code::RATE_LIMITED,
            &format!(
                "this session has {SESSION_IN_FLIGHT} requests in the works; send more when some are answered"
            ),
        );
    };
    let id = message.get("id").and_then(IdKey::from_value);
    let local = matches!(
        method.as_deref(),
        Some(
            "ping" | "tools/list" | "prompts/list" | "resources/list" | "resources/templates/list"
        )
    );
    if local || !accepts(&headers, "text/event-stream") || id.is_none() {
        return answer_in_json(state.gateway.clone(), session, message, place).await;
    }

    // A routed request: answer on an SSE stream, so that progress and the
    // server's requests for this call travel with it.
    let (tx, rx) = mpsc::channel::<Value>(CALL_STREAM_CAP);
    let Some(id) = id else {
        return StatusCode::ACCEPTED.into_response();
    };
    lock(&http_session.outlet.post_streams).insert(id.clone(), tx.clone());
    let gateway = state.gateway.clone();
    let outlet = http_session.outlet.clone();
    let mut work = Detached::new(async move {
        let reply = gateway.handle(&session, message).await;
        lock(&outlet.post_streams).remove(&id);
        if let Some(reply) = reply {
            // Waits for room: ends when the client reads, or goes.
            let _ = tx.send(reply).await;
        }
        drop(place);
    });
    // The reply alone is sent as plain JSON (one write, no stream to hold
    // open); only when something else for this call comes first does the
    // answer become an SSE stream, which the client said it accepts. The
    // call runs in this task until then (no hop to another task on the
    // common path), and on its own if the answer becomes a stream or the
    // client goes away.
    let mut rx = rx;
    let first = tokio::select! {
        biased;
        () = &mut work => rx.recv().await,
        first = rx.recv() => first,
    };
    let Some(first) = first else {
        return StatusCode::ACCEPTED.into_response();
    };
    if matches!(
        protocol::classify(&first),
        Some(Kind::Response | Kind::ErrorResponse)
    ) {
        return axum::Json(first).into_response();
    }
    work.detach();
    let stream =
        futures_util::stream::unfold((Some(first), rx), |(mut first, mut rx)| async move {
            let message = match first.take() {
                Some(message) => message,
                None => rx.recv().await?,
            };
            let event = Event::default().data(serde_json::to_string(&message).unwrap_or_default());
            Some((Ok::<_, Infallible>(event), (None, rx)))
        });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(SSE_HEARTBEAT))
        .into_response()
}

/// A request answered with its reply alone. It runs to its end (recorded,
/// its place given back when it ends) even if the client goes away.
async fn answer_in_json(
    gateway: Arc<Gateway>,
    session: Arc<Session>,
    message: Value,
    place: tokio::sync::OwnedSemaphorePermit,
) -> Response {
    let (reply_tx, reply_rx) = tokio::sync::oneshot::channel();
    Detached::new(async move {
        let _ = reply_tx.send(gateway.handle(&session, message).await);
        drop(place);
    })
    .await;
    match reply_rx.await.ok().flatten() {
        Some(reply) => axum::Json(reply).into_response(),
        None => StatusCode::ACCEPTED.into_response(),
    }
}

async fn open_stream(
    State(state): State<Arc<HttpState>>,
    certificate: Option<Extension<PeerCertificate>>,
    headers: HeaderMap,
) -> Response {
    if let Err(response) = state.check_origin(&headers) {
        return *response;
    }
    let client = match state.authenticate(&headers, certificate.as_deref()) {
        Ok(client) => client,
        Err(response) => return *response,
    };
    if !accepts(&headers, "text/event-stream") {
        return plain_error(
            StatusCode::NOT_ACCEPTABLE,
            "GET /mcp needs `Accept: text/event-stream`",
        );
    }
    let http_session = match state.find_session(&headers, &client) {
        Ok(session) => session,
        Err(response) => return *response,
    };
    let (tx, rx) = mpsc::channel::<Value>(1024);
    *lock(&http_session.outlet.get_stream) = Some(tx);
    let closed = http_session.session.closed.clone();
    let shutdown = state.gateway.shutdown_token();
    let stream = futures_util::stream::unfold(
        (rx, closed, shutdown),
        |(mut rx, closed, shutdown)| async move {
            let message = tokio::select! {
                message = rx.recv() => message?,
                () = closed.cancelled() => return None,
                () = shutdown.cancelled() => return None,
            };
            let event = Event::default().data(serde_json::to_string(&message).unwrap_or_default());
            Some((Ok::<_, Infallible>(event), (rx, closed, shutdown)))
        },
    );
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(SSE_HEARTBEAT))
        .into_response()
}

async fn end_session(
    State(state): State<Arc<HttpState>>,
    certificate: Option<Extension<PeerCertificate>>,
    headers: HeaderMap,
) -> Response {
    if let Err(response) = state.check_origin(&headers) {
        return *response;
    }
    let client = match state.authenticate(&headers, certificate.as_deref()) {
        Ok(client) => client,
        Err(response) => return *response,
    };
    let http_session = match state.find_session(&headers, &client) {
        Ok(session) => session,
        Err(response) => return *response,
    };
    if let Ok(mut sessions) = state.sessions.write() {
        sessions.remove(&*http_session.session.id);
    }
    state.gateway.close_session(&http_session.session);
    StatusCode::OK.into_response()
}
