//! MCP streamable HTTP at `/mcp` (POST, GET for the server's SSE stream,
//! DELETE to end a session), plus `/healthz`.
//!
//! Order of checks on every `/mcp` request, cheapest and least revealing
//! first: Host and Origin (DNS rebinding), bearer token, then the session.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt as _;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::DownstreamError;
use crate::chain::{ClientIdentity, Transport};
use crate::gateway::{Gateway, Outlet, Session};
use crate::interceptors::{Pinning, PolicyEngine};
use crate::protocol::{self, IdKey, Kind, ParseError, code};

const SESSION_HEADER: &str = "mcp-session-id";
const VERSION_HEADER: &str = "mcp-protocol-version";
const METHOD_HEADER: &str = "mcp-method";

/// Where messages for one HTTP session go: the stream of the POST they
/// belong to, or else the session's GET stream.
#[derive(Default)]
struct HttpOutlet {
    get_stream: Mutex<Option<mpsc::Sender<Value>>>,
    post_streams: Mutex<HashMap<IdKey, mpsc::UnboundedSender<Value>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

impl Outlet for HttpOutlet {
    fn deliver(&self, message: Value, related: Option<&Value>) -> bool {
        if let Some(key) = related.and_then(IdKey::from_value)
            && let Some(stream) = lock(&self.post_streams).get(&key)
            && stream.send(message.clone()).is_ok()
        {
            return true;
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
}

pub(super) struct HttpState {
    pub(super) gateway: Arc<Gateway>,
    /// SHA-256 (hex) of each client's token → the client.
    tokens: HashMap<String, ClientIdentity>,
    /// SHA-256 (hex) of each auditor's token → the auditor's name.
    auditors: HashMap<String, String>,
    sessions: RwLock<HashMap<String, Arc<HttpSession>>>,
    allowed_origins: Vec<String>,
    loopback_only: bool,
    /// The web console's logins: cookie value → auditor and expiry.
    pub(super) console: Mutex<HashMap<String, super::console::Login>>,
    pub(super) enforcement: Enforcement,
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
    let tokens = config
        .clients
        .iter()
        .filter_map(|client| {
            client.token_sha256.clone().map(|hash| {
                (
                    hash,
                    ClientIdentity::new(&client.name, &client.groups)
                        .with_attributes(client.attributes.clone()),
                )
            })
        })
        .collect();
    let loopback_only = listener
        .local_addr()
        .map(|a| a.ip().is_loopback())
        .unwrap_or(true);
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
        loopback_only,
        gateway: gateway.clone(),
        console: Mutex::new(HashMap::new()),
        enforcement,
    });
    let body_limit = config.limits.max_message_bytes;
    let app = Router::new()
        .route(
            "/mcp",
            get(open_stream).post(post_message).delete(end_session),
        )
        .route("/healthz", get(healthz))
        .merge(super::admin::routes())
        .merge(super::console::routes())
        .layer(axum::extract::DefaultBodyLimit::max(body_limit))
        .with_state(state.clone());

    let sweeper = {
        let state = state.clone();
        let shutdown = gateway.shutdown_token();
        tokio::spawn(async move {
            let idle = state.gateway.config().proxy.session_idle_timeout;
            loop {
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(15)) => {}
                    () = shutdown.cancelled() => return,
                }
                state.expire_idle(idle);
            }
        })
    };
    let shutdown = gateway.shutdown_token();
    // Without TCP_NODELAY the last chunk of a streamed reply waits for the
    // client's delayed ACK (~40 ms on Linux) behind Nagle's algorithm.
    let listener = listener.tap_io(|tcp| {
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!(error = %err, "cannot set TCP_NODELAY");
        }
    });
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .map_err(DownstreamError::Serve);
    sweeper.abort();
    served
}

impl HttpState {
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
        if self.loopback_only {
            let host = headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or_default();
            let hostname = match host.strip_prefix('[') {
                Some(rest) => rest.split(']').next().unwrap_or_default(),
                None => host.split(':').next().unwrap_or_default(),
            };
            if !matches!(hostname, "localhost" | "127.0.0.1" | "::1") {
                return Err(Box::new(plain_error(
                    StatusCode::FORBIDDEN,
                    "the Host header must name this machine",
                )));
            }
        }
        Ok(())
    }

    fn authenticate(&self, headers: &HeaderMap) -> Result<ClientIdentity, Box<Response>> {
        let hash = match bearer_hash(headers) {
            Ok(hash) => hash,
            Err(response) => {
                self.record_auth_failure("/mcp", "no bearer token", "");
                return Err(response);
            }
        };
        match self.tokens.get(&hash) {
            Some(client) => Ok(client.clone()),
            None => {
                tracing::info!("refused an HTTP request with an unknown token");
                match self.auditors.get(&hash) {
                    Some(auditor) => self.record_auth_failure(
                        "/mcp",
                        "an auditor's token (auditors cannot call tools)",
                        auditor,
                    ),
                    None => self.record_auth_failure("/mcp", "unknown token", ""),
                }
                Err(Box::new(unauthorized("the bearer token is not valid")))
            }
        }
    }

    /// The auditor whose token this is: the console's login. A client's
    /// token or an unknown one is refused and recorded.
    pub(super) fn auditor_of_token(&self, token: &str) -> Option<String> {
        let hash = hex::encode(Sha256::digest(token.trim().as_bytes()));
        if let Some(auditor) = self.auditors.get(&hash) {
            return Some(auditor.clone());
        }
        match self.tokens.get(&hash) {
            Some(client) => self.record_auth_failure(
                "/admin/login",
                "a client's token (clients cannot read the log)",
                &client.name,
            ),
            None => self.record_auth_failure("/admin/login", "unknown token", ""),
        }
        None
    }

    /// Host and Origin as [`HttpState::check_origin`], except that the
    /// proxy's own origin is allowed: the console's pages post to it.
    pub(super) fn check_same_origin(&self, headers: &HeaderMap) -> Result<(), Box<Response>> {
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        let own = headers
            .get(header::ORIGIN)
            .and_then(|o| o.to_str().ok())
            .zip(host)
            .is_some_and(|(origin, host)| origin == format!("http://{host}"));
        if own {
            let mut without = headers.clone();
            without.remove(header::ORIGIN);
            return self.check_origin(&without);
        }
        self.check_origin(headers)
    }

    /// An `auth_failure` record: where, why, and whose token it was when it
    /// is somebody's (`""` otherwise); never the token, nor its hash.
    fn record_auth_failure(&self, endpoint: &str, reason: &str, who: &str) {
        let mut record = crate::audit::AuditRecord::event("auth_failure", "deny");
        record.client = who.to_owned();
        record.transport = "http".into();
        record.method = endpoint.to_owned();
        record.reason = Some(reason.to_owned());
        self.gateway.record_event(record);
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
        let hash = match bearer_hash(headers) {
            Ok(hash) => hash,
            Err(response) => {
                self.record_auth_failure("/admin", "no bearer token", "");
                return Err(response);
            }
        };
        match self.auditors.get(&hash) {
            Some(name) => Ok(name.clone()),
            None => {
                tracing::info!("refused an admin request without an auditor token");
                match self.tokens.get(&hash) {
                    Some(client) => self.record_auth_failure(
                        "/admin",
                        "a client's token (clients cannot read the log)",
                        &client.name,
                    ),
                    None => self.record_auth_failure("/admin", "unknown token", ""),
                }
                Err(Box::new(unauthorized("this is not an auditor's token")))
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
                code::INVALID_REQUEST,
                "unknown or expired session",
            ))),
        }
    }
}

/// The SHA-256 (hex) of the request's bearer token.
fn bearer_hash(headers: &HeaderMap) -> Result<String, Box<Response>> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            value
                .strip_prefix("Bearer ")
                .or_else(|| value.strip_prefix("bearer "))
        })
        .map(str::trim);
    match token {
        Some(token) => Ok(hex::encode(Sha256::digest(token.as_bytes()))),
        None => Err(Box::new(unauthorized("a bearer token is required"))),
    }
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

fn rpc_error(status: StatusCode, code: i64, message: &str) -> Response {
    (
        status,
        axum::Json(protocol::error(Value::Null, code, message, None)),
    )
        .into_response()
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
    headers: HeaderMap,
    body: Body,
) -> Response {
    if let Err(response) = state.check_origin(&headers) {
        return *response;
    }
    let client = match state.authenticate(&headers) {
        Ok(client) => client,
        Err(response) => return *response,
    };
    let limits = state.gateway.config().limits;
    let bytes = match axum::body::to_bytes(body, limits.max_message_bytes).await {
        Ok(bytes) => bytes,
        Err(_) => {
            let error = ParseError::TooLarge {
                limit: limits.max_message_bytes,
            };
            // The rest of the body is never read, so the connection cannot
            // carry another request: tell the client to open a new one.
            return (
                StatusCode::PAYLOAD_TOO_LARGE,
                [(header::CONNECTION, HeaderValue::from_static("close"))],
                axum::Json(error.to_response(Value::Null)),
            )
                .into_response();
        }
    };
    let message = match protocol::parse(&bytes, limits.max_depth) {
        Ok(message) => message,
        Err(error) => {
            return (
                StatusCode::BAD_REQUEST,
                axum::Json(error.to_response(Value::Null)),
            )
                .into_response();
        }
    };
    let method = protocol::method(&message).map(str::to_owned);
    if let Some(header_method) = headers.get(METHOD_HEADER)
        && header_method.to_str().ok() != method.as_deref()
    {
        return rpc_error(
            StatusCode::BAD_REQUEST,
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
                code::INVALID_REQUEST,
                "unsupported MCP-Protocol-Version",
            );
        }
    }
    let kind = protocol::classify(&message);
    let is_initialize = kind == Some(Kind::Request) && method.as_deref() == Some("initialize");

    let http_session = if is_initialize && headers.get(SESSION_HEADER).is_none() {
        let count = state.sessions.read().map(|s| s.len()).unwrap_or(0);
        if count >= state.gateway.config().proxy.max_sessions {
            return rpc_error(
                StatusCode::SERVICE_UNAVAILABLE,
                code::INTERNAL_ERROR,
                "too many sessions; try again later",
            );
        }
        let id = uuid::Uuid::new_v4().to_string();
        let outlet = Arc::new(HttpOutlet::default());
        let session = state.gateway.open_session(
            Arc::from(id.as_str()),
            client,
            Transport::Http,
            outlet.clone(),
        );
        Arc::new(HttpSession { session, outlet })
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

    let id = message.get("id").and_then(IdKey::from_value);
    let local = matches!(
        method.as_deref(),
        Some(
            "ping" | "tools/list" | "prompts/list" | "resources/list" | "resources/templates/list"
        )
    );
    if local || !accepts(&headers, "text/event-stream") || id.is_none() {
        let reply = state.gateway.handle(&session, message).await;
        return match reply {
            Some(reply) => axum::Json(reply).into_response(),
            None => StatusCode::ACCEPTED.into_response(),
        };
    }

    // A routed request: answer on an SSE stream, so that progress and the
    // server's requests for this call travel with it.
    let (tx, rx) = mpsc::unbounded_channel::<Value>();
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
            let _ = tx.send(reply);
        }
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
    Sse::new(stream).into_response()
}

/// Work that must run to its end even if whoever awaits it goes away: when
/// dropped or detached before it finished, it goes on as a task of its own.
struct Detached(Option<Pin<Box<dyn Future<Output = ()> + Send + 'static>>>);

impl Detached {
    fn new(work: impl Future<Output = ()> + Send + 'static) -> Self {
        Self(Some(Box::pin(work)))
    }

    fn detach(&mut self) {
        if let Some(work) = self.0.take() {
            tokio::spawn(work);
        }
    }
}

impl Future for Detached {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        let Some(work) = self.0.as_mut() else {
            return std::task::Poll::Ready(());
        };
        let done = work.as_mut().poll(cx);
        if done.is_ready() {
            self.0 = None;
        }
        done
    }
}

impl Drop for Detached {
    fn drop(&mut self) {
        self.detach();
    }
}

async fn open_stream(State(state): State<Arc<HttpState>>, headers: HeaderMap) -> Response {
    if let Err(response) = state.check_origin(&headers) {
        return *response;
    }
    let client = match state.authenticate(&headers) {
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
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

async fn end_session(State(state): State<Arc<HttpState>>, headers: HeaderMap) -> Response {
    if let Err(response) = state.check_origin(&headers) {
        return *response;
    }
    let client = match state.authenticate(&headers) {
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
