//! MCP streamable HTTP at `/mcp`: POST a message, GET the server's SSE
//! stream, DELETE to end a session.
//!
//! Order of checks on every request, cheapest and least revealing first:
//! Host and Origin (the sub-router's layer), the client ([`Client`]), then
//! the session. A 2026-07-28 request has no session: it goes to
//! [`super::stateless`], and that revision has no GET stream nor DELETE
//! (405, `Allow: POST`).

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::Value;
use tokio::sync::mpsc;

use super::auth::Client;
use super::messages::{
    Incoming, METHOD_HEADER, SESSION_HEADER, VERSION_HEADER, accepts, answer_in_json,
    answer_in_stream, event, read_message, rpc_error, single_header, sse,
};
use super::sealed::record_id;
use super::sessions::{GET_STREAM_CAP, HttpSession, Queued, SESSION_IN_FLIGHT, Unknown, lock};
use super::slots::{Cap, Slot};
use super::state::{HttpState, plain_error};
use crate::chain::{ClientIdentity, Transport};
use crate::gateway::{Failure, Resumed};
use crate::protocol::{self, IdKey, Kind, Method};

pub(super) fn routes() -> Router<Arc<HttpState>> {
    Router::new().route(
        "/mcp",
        get(open_stream).post(post_message).delete(end_session),
    )
}

/// The handshake revisions: the `Mcp-Method` and `MCP-Protocol-Version`
/// headers, where sent, must agree with the body.
fn handshake_headers_match(headers: &HeaderMap, incoming: &Incoming) -> Result<(), Failure> {
    let (method, version) = (
        single_header(headers, METHOD_HEADER)?,
        single_header(headers, VERSION_HEADER)?,
    );
    if let Some(header_method) = method
        && header_method.to_str().ok() != incoming.method.as_ref().map(Method::as_str)
    {
        return Err(Failure::MethodHeaderMismatch);
    }
    if let Some(version) = version {
        let known = version
            .to_str()
            .is_ok_and(|v| protocol::SUPPORTED_VERSIONS.contains(&v));
        if !known {
            return Err(Failure::UnsupportedVersionHeader);
        }
    }
    Ok(())
}

/// Whether a POST is a 2026-07-28 request: its `MCP-Protocol-Version`
/// header names that revision, or (with a header of no revision the proxy
/// knows, or none, and no session named) its body carries an envelope and
/// it is not the handshake's `initialize` (a future revision's envelope is
/// then refused with the versions the proxy speaks). A handshake
/// revision's header, or a session's id, keeps a request on the session
/// path, whatever its body says.
fn is_modern(headers: &HeaderMap, incoming: &Incoming) -> bool {
    let header = headers.get(VERSION_HEADER).and_then(|v| v.to_str().ok());
    if header.is_some_and(|v| protocol::SUPPORTED_VERSIONS.contains(&v)) {
        return false;
    }
    header == Some(protocol::MODERN_VERSION)
        || (protocol::envelope_version(&incoming.message).is_some()
            && !incoming.is_initialize()
            && !headers.contains_key(SESSION_HEADER))
}

/// A place under the session caps for a new (or resumed) session of
/// `client`, or the refusal past them.
pub(super) fn session_slot(
    state: &HttpState,
    client: &ClientIdentity,
    request_id: Value,
) -> Result<Slot<Arc<str>>, Box<Response>> {
    // Taken before the session is opened, under one lock: concurrent
    // initializes cannot pass a cap together.
    state.slots.take(&client.name).map_err(|cap| {
        tracing::info!(client = %client.name, "refused a new session past a session cap");
        let failure = match cap {
            Cap::Total => Failure::TooManySessions,
            Cap::PerKey => Failure::TooManySessionsOfClient,
        };
        Box::new(rpc_error(request_id, failure))
    })
}

/// A new session for an `initialize` without a session id, if the caps
/// leave room. It enters the table only once initialized. With session
/// keys its id is sealed, and its records name it by a digest of that.
fn new_session(
    state: &HttpState,
    client: ClientIdentity,
    incoming: &Incoming,
) -> Result<Arc<HttpSession>, Box<Response>> {
    let slot = session_slot(state, &client, incoming.request_id.clone())?;
    let (wire_id, id) = match &state.sealer {
        None => {
            let id: Arc<str> = Arc::from(uuid::Uuid::new_v4().to_string());
            (id.clone(), id)
        }
        Some(sealer) => match sealer.seal(&client, &incoming.message) {
            Ok(sealed) => (Arc::from(sealed.as_str()), Arc::from(record_id(&sealed))),
            Err(error) => {
                tracing::error!(%error, "cannot seal a session id");
                return Err(Box::new(plain_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the session's id could not be made",
                )));
            }
        },
    };
    let outlet = Arc::new(state.outlet());
    let session = state
        .gateway
        .open_session(id, client, Transport::Http, outlet.clone());
    Ok(Arc::new(HttpSession::new(wire_id, session, outlet, slot)))
}

/// The session a request names; it must belong to the same client. One
/// this replica does not hold is resumed from its sealed id, if it has one.
fn find_session(
    state: &HttpState,
    headers: &HeaderMap,
    client: &ClientIdentity,
    request_id: &Value,
) -> Result<Arc<HttpSession>, Box<Response>> {
    let id = headers.get(SESSION_HEADER).and_then(|v| v.to_str().ok());
    let unknown = match state.sessions.find(id, client) {
        Ok(session) => return Ok(session),
        Err(unknown) => unknown,
    };
    if let (Some(id), Unknown::Unknown) = (id, unknown)
        && let Some(resumed) = resume_session(state, id, client, request_id)?
    {
        return Ok(resumed);
    }
    let failure = match unknown {
        Unknown::Unnamed => Failure::NoSession,
        Unknown::Unknown => Failure::UnknownSession,
    };
    Err(Box::new(rpc_error(Value::Null, failure)))
}

/// The session sealed id `id` carries, resumed on this replica (another
/// began it, or this one let it go idle), if the id is sealed by one of
/// the keys, `client` is the one it belongs to, and it is not too old.
fn resume_session(
    state: &HttpState,
    id: &str,
    client: &ClientIdentity,
    request_id: &Value,
) -> Result<Option<Arc<HttpSession>>, Box<Response>> {
    let Some(sealer) = &state.sealer else {
        return Ok(None);
    };
    let Some(sealed) = sealer.open(id, client) else {
        return Ok(None);
    };
    // Under the table's lock: a session being ended (`DELETE`) is not
    // brought back, and two requests resuming one session take one place.
    let mut refused = None;
    let made = state.sessions.get_or_insert(id, || {
        if sealer.was_ended(id) {
            return None;
        }
        let slot = match session_slot(state, client, request_id.clone()) {
            Ok(slot) => slot,
            Err(refusal) => {
                refused = Some(refusal);
                return None;
            }
        };
        let outlet = Arc::new(state.outlet());
        let resumed = Resumed {
            version: sealed.version,
            capabilities: sealed.capabilities,
            agent: sealed.agent,
        };
        let session = state.gateway.resume_session(
            Arc::from(record_id(id)),
            client.clone(),
            outlet.clone(),
            resumed,
        );
        Some(Arc::new(HttpSession::new(
            Arc::from(id),
            session,
            outlet,
            slot,
        )))
    });
    if let Some(refusal) = refused {
        return Err(refusal);
    }
    // (Made by another request of the same client meanwhile: the same.)
    Ok(made.filter(|session| session.session.client == *client))
}

async fn post_message(
    State(state): State<Arc<HttpState>>,
    Client(client, expiry): Client,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let incoming = match read_message(&state, body).await {
        Ok(incoming) => incoming,
        Err(refused) => return refused,
    };
    if is_modern(&headers, &incoming) {
        return super::stateless::post(&state, (client, expiry), &headers, incoming).await;
    }
    if let Err(failure) = handshake_headers_match(&headers, &incoming) {
        return rpc_error(incoming.request_id, failure);
    }
    let named = headers.get(SESSION_HEADER).is_some();
    let http_session = if incoming.is_initialize() && !named {
        new_session(&state, client, &incoming)
    } else {
        find_session(&state, &headers, &client, &incoming.request_id)
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
            if let Ok(value) = HeaderValue::from_str(&http_session.wire_id) {
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
            incoming.request_id,
            Failure::TooManyInFlight(SESSION_IN_FLIGHT),
        );
    };
    http_session.touch();
    let message = incoming.message;
    let local = incoming
        .method
        .as_ref()
        .is_some_and(|method| *method == Method::Ping || method.list().is_some());
    let id = message.get("id").and_then(IdKey::from_value);
    // Handed to the gateway's pipeline here; the reply goes out as JSON,
    // or as SSE if the call sends something first.
    let gateway = state.gateway.clone();
    let work = move || async move { gateway.handle(&session, message).await };
    match id {
        Some(id) if !local && accepts(&headers, "text/event-stream") => {
            answer_in_stream(
                work,
                (http_session.outlet.clone(), id),
                place,
                ((), super::auth::Expiry::default()),
                |_| StatusCode::OK,
            )
            .await
        }
        _ => answer_in_json(work, place, |_| StatusCode::OK).await,
    }
}

/// A GET or DELETE of the 2026-07-28 revision, which has neither: 405.
fn modern_refusal(headers: &HeaderMap) -> Option<Response> {
    let version = headers.get(VERSION_HEADER)?;
    (version.as_bytes() == protocol::MODERN_VERSION.as_bytes()).then(|| {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            [(header::ALLOW, HeaderValue::from_static("POST"))],
            "the 2026-07-28 protocol has no GET stream nor DELETE on /mcp: POST each request",
        )
            .into_response()
    })
}

async fn open_stream(
    State(state): State<Arc<HttpState>>,
    Client(client, expiry): Client,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = modern_refusal(&headers) {
        return refused;
    }
    if !accepts(&headers, "text/event-stream") {
        return plain_error(
            StatusCode::NOT_ACCEPTABLE,
            "GET /mcp needs `Accept: text/event-stream`",
        );
    }
    let http_session = match find_session(&state, &headers, &client, &Value::Null) {
        Ok(session) => session,
        Err(refused) => return *refused,
    };
    let (tx, rx) = mpsc::channel::<Queued>(GET_STREAM_CAP);
    *lock(&http_session.outlet.get_stream) = Some(tx);
    let closed = http_session.session.closed.clone();
    let shutdown = state.gateway.shutdown_token();
    // Ends when the client's access token does: a stream does not outlive
    // the credential it was opened with.
    let stream = futures_util::stream::unfold(
        (rx, closed, shutdown),
        move |(mut rx, closed, shutdown)| async move {
            let message = tokio::select! {
                message = rx.recv() => message?.0,
                () = closed.cancelled() => return None,
                () = shutdown.cancelled() => return None,
                () = expiry.reached() => return None,
            };
            Some((event(&message), (rx, closed, shutdown)))
        },
    );
    sse(stream)
}

async fn end_session(
    State(state): State<Arc<HttpState>>,
    Client(client, _): Client,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = modern_refusal(&headers) {
        return refused;
    }
    let id = headers.get(SESSION_HEADER).and_then(|v| v.to_str().ok());
    // A sealed session of this client's is marked ended first (no request
    // resumes it from then on), then closed here if this replica holds
    // it; one it does not hold is not resumed to be ended.
    if let (Some(id), Some(sealer)) = (id, &state.sealer)
        && sealer.open(id, &client).is_some()
    {
        sealer.ended(id);
        if let Ok(held) = state.sessions.find(Some(id), &client) {
            state.sessions.remove(&held.wire_id);
            state.gateway.close_session(&held.session);
        }
        return StatusCode::OK.into_response();
    }
    let http_session = match find_session(&state, &headers, &client, &Value::Null) {
        Ok(session) => session,
        Err(refused) => return *refused,
    };
    state.sessions.remove(&http_session.wire_id);
    state.gateway.close_session(&http_session.session);
    StatusCode::OK.into_response()
}
