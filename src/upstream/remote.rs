//! `remote` upstreams: an MCP server reached over streamable HTTP (or, with
//! `transport = "sse"`, over HTTP+SSE: [`super::remote_sse`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap, HeaderValue};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::UpstreamError;
use super::link::{Connected, Inbox, Link, LinkError};
use super::remote_shared::{Sent, content_type};
use super::sse::{SseEvent, SseParser};
use crate::config::{self, LimitsConfig, RemoteSpec};
use crate::egress::{self, EgressError, HttpClient, Timeouts, Trust, read_limited};
use crate::protocol::{self, At as _, Kind};

const SESSION_HEADER: &str = "mcp-session-id";
const VERSION_HEADER: &str = "mcp-protocol-version";
const METHOD_HEADER: &str = "mcp-method";
const NAME_HEADER: &str = "mcp-name";

struct RemoteLink {
    client: HttpClient,
    url: reqwest::Url,
    sent: Sent,
    session: RwLock<Option<HeaderValue>>,
    version: RwLock<Option<HeaderValue>>,
    listening: AtomicBool,
    /// Spoken to in 2026-07-28: no session, no GET stream; each request
    /// says what it is in its headers, and is cancelled by closing its
    /// response.
    stateless: AtomicBool,
    /// The response streams of requests in flight, by the request's id:
    /// cancelled, a stream is closed.
    streams: std::sync::Mutex<std::collections::HashMap<u64, CancellationToken>>,
    limits: LimitsConfig,
    inbox: Arc<dyn Inbox>,
    closed: CancellationToken,
}

impl RemoteLink {
    fn headers(&self) -> HeaderMap {
        self.sent.headers().0
    }

    fn post(
        &self,
        message: &Value,
        headers: HeaderMap,
    ) -> Result<reqwest::RequestBuilder, EgressError> {
        let request = self
            .client
            .request(reqwest::Method::POST, self.url.clone())?
            .headers(headers)
            .header(ACCEPT, "application/json, text/event-stream")
            .header(CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(message).unwrap_or_default());
        Ok(if self.speaks_stateless(message) {
            Self::stateless_headers(request, message)
        } else {
            self.with_session(request)
        })
    }

    /// Whether `message` goes as a 2026-07-28 request: to a server spoken to
    /// in that revision, or the probe of whether it is one. Decided by the
    /// link, never by what a message says of itself.
    fn speaks_stateless(&self, message: &Value) -> bool {
        self.is_stateless()
            || protocol::Method::of(message) == Some(protocol::Method::ServerDiscover)
    }

    /// A 2026-07-28 request's headers (no session): its version, method
    /// and, where the revision wants one, the name it is about.
    fn stateless_headers(
        mut request: reqwest::RequestBuilder,
        message: &Value,
    ) -> reqwest::RequestBuilder {
        request = request.header(VERSION_HEADER, protocol::MODERN_VERSION);
        if let Some(method) = protocol::method(message) {
            request = request.header(METHOD_HEADER, method);
        }
        if let Some(Ok(name)) = protocol::routing_name(message) {
            request = request.header(NAME_HEADER, protocol::encode_header_value(name));
        }
        request
    }

    fn is_stateless(&self) -> bool {
        self.stateless.load(Ordering::Relaxed)
    }

    /// What the proxy tells a 2026-07-28 server by notification: a request
    /// cancelled is its response stream closed; nothing else is sent.
    fn notify_stateless(&self, message: &Value) {
        if protocol::Method::of(message) != Some(protocol::Method::Cancelled) {
            return;
        }
        let id = message.at(&["params", "requestId"]).and_then(Value::as_u64);
        if let Some(stream) = id.and_then(|id| lock(&self.streams).remove(&id)) {
            stream.cancel();
        }
    }

    fn with_session(&self, mut request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        if let Some(session) = self.session.read().ok().and_then(|s| s.clone()) {
            request = request.header(SESSION_HEADER, session);
        }
        if let Some(version) = self.version.read().ok().and_then(|v| v.clone()) {
            request = request.header(VERSION_HEADER, version);
        }
        request
    }

    async fn send_message(self: Arc<Self>, message: Value) -> Result<(), LinkError> {
        let kind = protocol::classify(&message);
        let stateless = self.speaks_stateless(&message);
        if self.is_stateless() && kind != Some(Kind::Request) {
            self.notify_stateless(&message);
            return Ok(());
        }
        let related = message.get("id").and_then(Value::as_u64);
        let (headers, sent) = self.sent.headers();
        // A redirect is refused here: following it would send this request,
        // and the headers the operator set for this server, elsewhere.
        let request = self
            .post(&message, headers)
            .map_err(|err| LinkError::Unreachable(err.to_string()))?;
        let response = egress::send(request).await.map_err(|err| match err {
            EgressError::Redirect { .. } => LinkError::Unreachable(err.to_string()),
            err => {
                LinkError::Unreachable(format!("cannot reach {}: {err}", egress::origin(&self.url)))
            }
        })?;
        let status = response.status();
        self.sent.refused(status, sent.as_ref());
        if !stateless
            && let Some(session) = response.headers().get(SESSION_HEADER)
            && let Ok(mut slot) = self.session.write()
        {
            *slot = Some(session.clone());
        }
        if status == reqwest::StatusCode::NOT_FOUND && self.has_session() {
            // The server forgot our session: start over with a new handshake.
            self.closed.cancel();
            return Err(LinkError::Closed("the server ended the session"));
        }
        let content_type = content_type(&response);
        if kind != Some(Kind::Request) {
            return match status.is_success() {
                true => Ok(()),
                false => Err(LinkError::Status(status)),
            };
        }
        if !status.is_success() {
            // A 2026-07-28 server answers an error with its HTTP status too
            // (an unknown method is 404): its JSON-RPC error to this very
            // request is the answer; anything else is the status alone.
            let answer = match stateless && content_type.starts_with("application/json") {
                true => self.error_answer(response, related).await,
                false => None,
            };
            let Some(answer) = answer else {
                return Err(LinkError::Status(status));
            };
            self.inbox.dispatch(answer, related).await;
            return Ok(());
        }
        if content_type.starts_with("text/event-stream") {
            let link = self.clone();
            let stream = CancellationToken::new();
            if let Some(id) = related.filter(|_| stateless) {
                lock(&self.streams).insert(id, stream.clone());
            }
            tokio::spawn(async move {
                link.read_events(response, related, &stream).await;
                if let Some(id) = related.filter(|_| stateless) {
                    lock(&link.streams).remove(&id);
                }
            });
            Ok(())
        } else if content_type.starts_with("application/json") {
            let body = read_limited(response, self.limits.max_message_bytes)
                .await
                .map_err(LinkError::Answer)?;
            let message = protocol::parse(&body, self.limits.max_depth)
                .map_err(|e| LinkError::Answer(e.to_string()))?;
            self.inbox.dispatch(message, related).await;
            Ok(())
        } else {
            Err(LinkError::Answer(format!(
                "the server answered with content type `{content_type}`"
            )))
        }
    }

    /// The JSON-RPC error response to request `related` in an HTTP error's
    /// body, if that is what it holds.
    async fn error_answer(
        &self,
        response: reqwest::Response,
        related: Option<u64>,
    ) -> Option<Value> {
        let body = read_limited(response, self.limits.max_message_bytes)
            .await
            .ok()?;
        let message = protocol::parse(&body, self.limits.max_depth).ok()?;
        let answers = message
            .get("id")
            .and_then(Value::as_u64)
            .is_some_and(|id| Some(id) == related);
        (answers && protocol::classify(&message) == Some(Kind::ErrorResponse)).then_some(message)
    }

    fn has_session(&self) -> bool {
        self.session.read().map(|s| s.is_some()).unwrap_or(false)
    }

    async fn read_events(
        &self,
        mut response: reqwest::Response,
        related: Option<u64>,
        cancelled: &CancellationToken,
    ) {
        let mut parser = SseParser::new(self.limits.max_message_bytes);
        let mut events = Vec::new();
        // A call's stream is read while the call waits for its reply: once
        // it has one (or ended otherwise), a server that keeps the stream
        // open holds no task, buffer or connection of the proxy's.
        let call_ended = |id: u64| !self.inbox.in_flight(id);
        let mut check = tokio::time::interval(CALL_STREAM_CHECK);
        loop {
            let chunk = tokio::select! {
                chunk = response.chunk() => chunk,
                () = self.closed.cancelled() => return,
                // The request was cancelled: its stream is closed.
                () = cancelled.cancelled() => return,
                // On a timer of its own, so that a server that sends a
                // comment now and then cannot keep the stream open.
                _ = check.tick(), if related.is_some() => {
                    if related.is_some_and(call_ended) {
                        return;
                    }
                    continue;
                }
            };
            let Ok(Some(chunk)) = chunk else {
                return;
            };
            parser.feed(&chunk, &mut events);
            for event in events.drain(..) {
                match event {
                    SseEvent::Data(data) => match protocol::parse(&data, self.limits.max_depth) {
                        Ok(message) => {
                            self.inbox.dispatch(message, related).await;
                            if related.is_some_and(call_ended) {
                                return;
                            }
                        }
                        Err(err) => {
                            tracing::warn!(server = %self.inbox.server(), error = %err, "dropped an event from the server")
                        }
                    },
                    SseEvent::TooLarge => {
                        tracing::warn!(server = %self.inbox.server(), "dropped an event from the server: too large")
                    }
                    // Read by HTTP+SSE's parser only.
                    SseEvent::Endpoint(_) => {}
                }
            }
        }
    }

    /// The standalone GET stream for messages the server sends on its own.
    async fn listen(self: Arc<Self>) {
        while !self.closed.is_cancelled() {
            let Ok(request) = self.client.request(reqwest::Method::GET, self.url.clone()) else {
                return;
            };
            let request = self
                .with_session(request.headers(self.headers()))
                .header(ACCEPT, "text/event-stream");
            match egress::send(request).await {
                Ok(response) if response.status().is_success() => {
                    self.read_events(response, None, &CancellationToken::new())
                        .await;
                }
                Ok(response) if response.status() == reqwest::StatusCode::METHOD_NOT_ALLOWED => {
                    return;
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::debug!(server = %self.inbox.server(), error = %err, "the server's stream is not open");
                }
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                () = self.closed.cancelled() => return,
            }
        }
    }
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// How often a call's response stream that has gone quiet is checked for
/// whether its call has ended.
const CALL_STREAM_CHECK: Duration = Duration::from_secs(2);

struct RemoteHandle(Arc<RemoteLink>);

impl Link for RemoteHandle {
    fn send(&self, message: Value) -> BoxFuture<'_, Result<(), LinkError>> {
        self.0.clone().send_message(message).boxed()
    }

    fn set_protocol_version(&self, version: &str) {
        if version == protocol::MODERN_VERSION {
            // No session to name, no stream of its own to open: each
            // request carries its version.
            self.0.stateless.store(true, Ordering::Relaxed);
            return;
        }
        if let (Ok(value), Ok(mut slot)) = (HeaderValue::from_str(version), self.0.version.write())
        {
            *slot = Some(value);
        }
        if !self.0.listening.swap(true, Ordering::Relaxed) {
            tokio::spawn(self.0.clone().listen());
        }
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        async move {
            if self.0.closed.is_cancelled() {
                return;
            }
            self.0.closed.cancel();
            if self.0.has_session()
                && let Ok(request) = self
                    .0
                    .client
                    .request(reqwest::Method::DELETE, self.0.url.clone())
            {
                let link = &self.0;
                let _ = link
                    .with_session(request.headers(link.headers()))
                    .timeout(Duration::from_secs(2))
                    .send()
                    .await;
            }
        }
        .boxed()
    }
}

/// The token the server's connection sends, kept renewed until `closed`:
/// its own (`oauth`), its client's user's (`sign_in`), or none.
async fn token_for(
    spec: &RemoteSpec,
    secrets: &[(String, String)],
    inbox: &Arc<dyn Inbox>,
    tokens: &Arc<super::UserTokens>,
    closed: &CancellationToken,
) -> Result<Option<Arc<super::remote_token::ServerToken>>, UpstreamError> {
    use super::remote_token::{Grant, Source};
    let server = inbox.server().to_string();
    let start_error = |reason: String| UpstreamError::Start {
        server: server.clone(),
        reason,
    };
    // Whether the token is a client's user's: a failure to get it is then
    // not retried before the client's next call (when the user may have
    // signed in, or come with a token that may be exchanged).
    let (source, for_client) = match (&spec.oauth, &spec.sign_in) {
        (_, Some(_)) => {
            return super::remote_token::users_token(spec, inbox, tokens, closed, false)
                .await
                .map(Some);
        }
        (None, None) => return Ok(None),
        (Some(oauth), None) => {
            let secret = secrets
                .iter()
                .find(|(name, _)| *name == oauth.client_secret)
                .map(|(_, value)| value.clone())
                .ok_or_else(|| {
                    start_error(format!("the secret `{}` is not set", oauth.client_secret))
                })?;
            let grant = match inbox.instance() {
                Some(client) if oauth.grant == config::RemoteGrant::TokenExchange => Grant::For {
                    tokens: tokens.clone(),
                    client: Arc::from(client),
                    provider: Arc::from(oauth.provider.as_deref().unwrap_or_default()),
                },
                _ => Grant::Own,
            };
            let for_client = matches!(grant, Grant::For { .. });
            let source = Source::Oauth {
                oauth: Box::new(oauth.clone()),
                secret,
                grant,
            };
            (source, for_client)
        }
    };
    super::remote_token::start(source, &spec.egress, inbox.server().clone(), closed.clone())
        .await
        .map(Some)
        .map_err(|no| {
            if for_client {
                UpstreamError::NeedsClient {
                    server: server.clone(),
                    reason: no.reason,
                    told: no.told,
                }
            } else {
                start_error(format!(
                    "cannot get the server's access token: {}",
                    no.reason
                ))
            }
        })
}

pub(super) async fn open(
    spec: &RemoteSpec,
    secrets: &[(String, String)],
    limits: LimitsConfig,
    inbox: Arc<dyn Inbox>,
    tokens: &Arc<super::UserTokens>,
) -> Result<Connected, UpstreamError> {
    let start_error = |reason: String| UpstreamError::Start {
        server: inbox.server().to_string(),
        reason,
    };
    let url = reqwest::Url::parse(&spec.url).map_err(|err| start_error(err.to_string()))?;
    let headers = config::resolve_headers(&spec.headers, secrets).map_err(start_error)?;
    // Where the operator wrote the URL, anything but link-local is
    // reachable; a URL a registry's entry named is a peer's.
    let timeouts = Timeouts {
        connect: Duration::from_secs(10),
        total: None,
    };
    let trust = if spec.learned {
        Trust::Learned
    } else {
        Trust::Written
    };
    let client = HttpClient::new(&spec.egress, trust, &[], timeouts)
        .map_err(|err| start_error(err.to_string()))?;
    let closed = CancellationToken::new();
    let token = token_for(spec, secrets, &inbox, tokens, &closed).await?;
    let sent = Sent { headers, token };
    if spec.transport == config::RemoteTransport::Sse {
        return super::remote_sse::open(client, url, sent, limits, inbox, closed).await;
    }
    let link = Arc::new(RemoteLink {
        client,
        url,
        sent,
        session: RwLock::new(None),
        version: RwLock::new(None),
        listening: AtomicBool::new(false),
        stateless: AtomicBool::new(false),
        streams: std::sync::Mutex::default(),
        limits,
        inbox,
        closed: closed.clone(),
    });
    Ok(Connected {
        link: Arc::new(RemoteHandle(link)),
        closed,
    })
}
