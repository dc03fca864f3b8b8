//! MCP streamable HTTP at `/mcp`: POST a message, GET the server's SSE
//! stream, DELETE to end a session.
//!
//! Order of checks on every request, cheapest and least revealing first:
//! Host and Origin (the sub-router's layer), the client ([`Client`]), then
//! the session.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::Value;
use tokio::sync::{OwnedSemaphorePermit, mpsc};

use super::auth::Client;
use super::detached::Detached;
use super::sessions::{
    CALL_STREAM_CAP, GET_STREAM_CAP, HttpOutlet, HttpSession, SESSION_IN_FLIGHT, Unknown, lock,
};
use super::slots::Cap;
use super::state::{BodyError, HttpState, body_timed_out, plain_error, read_body};
use crate::chain::{ClientIdentity, Transport};
use crate::gateway::{Failure, Gateway, Session};
use crate::protocol::{self, IdKey, Kind, ParseError};

const SESSION_HEADER: &str = "mcp-session-id";
const VERSION_HEADER: &str = "mcp-protocol-version";
const METHOD_HEADER: &str = "mcp-method";
/// A comment line on an idle SSE stream, so that neither side nor a proxy
/// between them takes it for dead.
const SSE_HEARTBEAT: Duration = Duration::from_secs(15);

pub(super) fn routes() -> Router<Arc<HttpState>> {
    Router::new().route(
        "/mcp",
        get(open_stream).post(post_message).delete(end_session),
    )
}

/// A refusal as a JSON-RPC error in an HTTP response of `status`.
fn rpc_error(status: StatusCode, id: Value, failure: Failure) -> Response {
    (status, axum::Json(failure.to_response(id))).into_response()
}

fn accepts(headers: &HeaderMap, mime: &str) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains(mime) || v.contains("*/*"))
}

/// A POSTed message, read and checked against the request's headers.
struct Incoming {
    message: Value,
    kind: Option<Kind>,
    method: Option<String>,
    /// What a refusal answers: a request's id, anything else `null`, so
    /// that a refused response is never taken for the answer to a request.
    request_id: Value,
}

impl Incoming {
    fn is_initialize(&self) -> bool {
        self.kind == Some(Kind::Request) && self.method.as_deref() == Some("initialize")
    }
}

/// Reads and parses the body, and checks the `Mcp-Method` and
/// `MCP-Protocol-Version` headers against it.
async fn read_message(
    state: &HttpState,
    headers: &HeaderMap,
    body: Body,
) -> Result<Incoming, Response> {
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
            return Err((
                StatusCode::PAYLOAD_TOO_LARGE,
                [(header::CONNECTION, HeaderValue::from_static("close"))],
                axum::Json(Failure::from(error).to_response(protocol::refusal_id(&head))),
            )
                .into_response());
        }
        Err(BodyError::TimedOut) => return Err(body_timed_out()),
        Err(BodyError::Failed) => {
            return Err(plain_error(
                StatusCode::BAD_REQUEST,
                "the request body could not be read",
            ));
        }
    };
    let message = match protocol::parse(&bytes, limits.max_depth) {
        Ok(message) => message,
        Err(error) => {
            let id = protocol::refusal_id(&bytes);
            return Err(rpc_error(StatusCode::BAD_REQUEST, id, error.into()));
        }
    };
    let kind = protocol::classify(&message);
    let request_id = match kind {
        Some(Kind::Request) => message.get("id").cloned().unwrap_or(Value::Null),
        _ => Value::Null,
    };
    let method = protocol::method(&message).map(str::to_owned);
    if let Some(header_method) = headers.get(METHOD_HEADER)
        && header_method.to_str().ok() != method.as_deref()
    {
        return Err(rpc_error(
            StatusCode::BAD_REQUEST,
            request_id,
            Failure::MethodHeaderMismatch,
        ));
    }
    if let Some(version) = headers.get(VERSION_HEADER) {
        let known = version
            .to_str()
            .is_ok_and(|v| protocol::SUPPORTED_VERSIONS.contains(&v));
        if !known {
            return Err(rpc_error(
                StatusCode::BAD_REQUEST,
                request_id,
                Failure::UnsupportedVersionHeader,
            ));
        }
    }
    Ok(Incoming {
        message,
        kind,
        method,
        request_id,
    })
}

/// A new session for an `initialize` without a session id, if the caps
/// leave room. It enters the table only once initialized.
fn new_session(
    state: &HttpState,
    client: ClientIdentity,
    request_id: Value,
) -> Result<Arc<HttpSession>, Box<Response>> {
    // Taken before the session is opened, under one lock: concurrent
    // initializes cannot pass a cap together.
    let slot = match state.slots.take(&client.name) {
        Ok(slot) => slot,
        Err(cap) => {
            tracing::info!(client = %client.name, "refused a new session past a session cap");
            let (status, failure) = match cap {
                Cap::Total => (StatusCode::SERVICE_UNAVAILABLE, Failure::TooManySessions),
                Cap::PerKey => (
                    StatusCode::TOO_MANY_REQUESTS,
                    Failure::TooManySessionsOfClient,
                ),
            };
            return Err(Box::new(rpc_error(status, request_id, failure)));
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
    Ok(Arc::new(HttpSession::new(session, outlet, slot)))
}

/// The session a request names; it must belong to the same client.
fn find_session(
    state: &HttpState,
    headers: &HeaderMap,
    client: &ClientIdentity,
) -> Result<Arc<HttpSession>, Box<Response>> {
    let id = headers.get(SESSION_HEADER).and_then(|v| v.to_str().ok());
    state.sessions.find(id, client).map_err(|unknown| {
        let (status, failure) = match unknown {
            Unknown::Unnamed => (StatusCode::BAD_REQUEST, Failure::NoSession),
            Unknown::Unknown => (StatusCode::NOT_FOUND, Failure::UnknownSession),
        };
        Box::new(rpc_error(status, Value::Null, failure))
    })
}

async fn post_message(
    State(state): State<Arc<HttpState>>,
    Client(client): Client,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let incoming = match read_message(&state, &headers, body).await {
        Ok(incoming) => incoming,
        Err(refused) => return refused,
    };
    let named = headers.get(SESSION_HEADER).is_some();
    let http_session = if incoming.is_initialize() && !named {
        new_session(&state, client, incoming.request_id.clone())
    } else {
        find_session(&state, &headers, &client)
    };
    let http_session = match http_session {
        Ok(session) => session,
        Err(refused) => return *refused,
    };
    let session = http_session.session.clone();

    if incoming.kind != Some(Kind::Request) {
        http_session.touch();
        return match state.gateway.handle(&session, incoming.message).await {
            // A message that is not a request still gets refused visibly.
            Some(reply) => (StatusCode::BAD_REQUEST, axum::Json(reply)).into_response(),
            None => StatusCode::ACCEPTED.into_response(),
        };
    }

    if incoming.is_initialize() {
        http_session.touch();
        let reply = state.gateway.handle(&session, incoming.message).await;
        let ok = reply.as_ref().is_some_and(|r| r.get("result").is_some());
        let mut response = axum::Json(reply.unwrap_or(Value::Null)).into_response();
        if ok && !named {
            state.sessions.insert(http_session.clone());
            if let Ok(value) = HeaderValue::from_str(&session.id) {
                response.headers_mut().insert(SESSION_HEADER, value);
            }
        } else if !named {
            state.gateway.close_session(&session);
        }
        return response;
    }

    // Each request holds a place until it has been answered; one past them
    // is refused rather than queued.
    let Ok(place) = http_session.in_flight.clone().try_acquire_owned() else {
        return rpc_error(
            StatusCode::TOO_MANY_REQUESTS,
            incoming.request_id,
            Failure::TooManyInFlight(SESSION_IN_FLIGHT),
        );
    };
    http_session.touch();
    let message = incoming.message;
    let local = matches!(
        incoming.method.as_deref(),
        Some(
            "ping" | "tools/list" | "prompts/list" | "resources/list" | "resources/templates/list"
        )
    );
    match message.get("id").and_then(IdKey::from_value) {
        Some(id) if !local && accepts(&headers, "text/event-stream") => {
            answer_in_stream(state.gateway.clone(), &http_session, message, id, place).await
        }
        _ => answer_in_json(state.gateway.clone(), session, message, place).await,
    }
}

/// A request answered with its reply alone. It runs to its end (recorded,
/// its place given back when it ends) even if the client goes away.
async fn answer_in_json(
    gateway: Arc<Gateway>,
    session: Arc<Session>,
    message: Value,
    place: OwnedSemaphorePermit,
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

/// A routed request: answered on an SSE stream, so that progress and the
/// server's requests for this call travel with it.
async fn answer_in_stream(
    gateway: Arc<Gateway>,
    http_session: &HttpSession,
    message: Value,
    id: IdKey,
    place: OwnedSemaphorePermit,
) -> Response {
    let (tx, rx) = mpsc::channel::<Value>(CALL_STREAM_CAP);
    lock(&http_session.outlet.post_streams).insert(id.clone(), tx.clone());
    let session = http_session.session.clone();
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
            Some((event(&message), (None, rx)))
        });
    sse(stream)
}

async fn open_stream(
    State(state): State<Arc<HttpState>>,
    Client(client): Client,
    headers: HeaderMap,
) -> Response {
    if !accepts(&headers, "text/event-stream") {
        return plain_error(
            StatusCode::NOT_ACCEPTABLE,
            "GET /mcp needs `Accept: text/event-stream`",
        );
    }
    let http_session = match find_session(&state, &headers, &client) {
        Ok(session) => session,
        Err(refused) => return *refused,
    };
    let (tx, rx) = mpsc::channel::<Value>(GET_STREAM_CAP);
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
            Some((event(&message), (rx, closed, shutdown)))
        },
    );
    sse(stream)
}

/// One message as an SSE event.
fn event(message: &Value) -> Result<Event, Infallible> {
    Ok(Event::default().data(serde_json::to_string(message).unwrap_or_default()))
}

/// An SSE answer, kept alive while idle.
fn sse(
    stream: impl futures_util::Stream<Item = Result<Event, Infallible>> + Send + 'static,
) -> Response {
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(SSE_HEARTBEAT))
        .into_response()
}

async fn end_session(
    State(state): State<Arc<HttpState>>,
    Client(client): Client,
    headers: HeaderMap,
) -> Response {
    let http_session = match find_session(&state, &headers, &client) {
        Ok(session) => session,
        Err(refused) => return *refused,
    };
    state.sessions.remove(&http_session.session.id);
    state.gateway.close_session(&http_session.session);
    StatusCode::OK.into_response()
}
