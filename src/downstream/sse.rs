//! HTTP+SSE toward clients, the transport of protocol 2024-11-05, served
//! beside `/mcp` when `[listener] sse = true`:
//!
//! - `GET /sse` opens a session and its stream. The stream's first event
//!   (`endpoint`) names where the session's messages go,
//!   `/messages?session_id=ID`; every reply, and all else the proxy sends
//!   the client, follows on it as `message` events.
//! - `POST /messages?session_id=ID` takes one message and answers `202`
//!   once it is taken; its reply comes on the stream.
//!
//! Both routes stand behind the checks of `/mcp` (Host and Origin, the
//! client's credential, the throttle, the body and message limits, the
//! session caps), and the session's messages take the same pipeline as
//! those of a streamable HTTP session. A session belongs to the client
//! that opened it (another client naming it is told it is unknown), lives
//! as long as its stream (the client leaving ends it; idle, shutdown or the
//! end of the client's access token end the stream), and is held by the
//! replica that holds its stream. Its id is therefore never sealed: no
//! other replica could answer on that stream, and one that does not hold it
//! says the session is unknown (docs/replicas.md: a balancer keeps an
//! HTTP+SSE client on one replica). Its sessions are in a table of their
//! own: an HTTP+SSE session's id means nothing at `/mcp`, nor the reverse.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt as _;
use serde_json::Value;
use tokio::sync::mpsc;

use super::auth::Client;
use super::messages::{accepts, read_message, rpc_error, sse};
use super::sessions::{GET_STREAM_CAP, HttpSession, Queued, SESSION_IN_FLIGHT, lock};
use super::state::{HttpState, plain_error};
use crate::chain::Transport;
use crate::gateway::Failure;
use crate::protocol::Kind;

/// Where a session's messages are POSTed (with `?session_id=ID`); the
/// route's own path, which the route table reads as a literal.
const MESSAGES: &str = "/messages";
/// The query parameter naming the session.
const SESSION_PARAMETER: &str = "session_id";

pub(super) fn routes() -> Router<Arc<HttpState>> {
    Router::new()
        .route("/sse", get(open))
        .route("/messages", post(message))
}

/// Ends the session when its stream goes (the client left, or the stream
/// was ended): the session is its stream.
struct Ending {
    state: Arc<HttpState>,
    session: Arc<HttpSession>,
}

impl Drop for Ending {
    fn drop(&mut self) {
        self.state.sse_sessions.remove(&self.session.wire_id);
        // Nothing more is queued for a stream that is gone.
        lock(&self.session.outlet.get_stream).take();
        self.state.gateway.close_session(&self.session.session);
    }
}

async fn open(
    State(state): State<Arc<HttpState>>,
    Client(client, expiry): Client,
    headers: HeaderMap,
) -> Response {
    if !accepts(&headers, "text/event-stream") {
        return plain_error(
            StatusCode::NOT_ACCEPTABLE,
            "GET /sse needs `Accept: text/event-stream`",
        );
    }
    let slot = match super::mcp::session_slot(&state, &client, Value::Null) {
        Ok(slot) => slot,
        Err(refused) => return *refused,
    };
    let id: Arc<str> = Arc::from(uuid::Uuid::new_v4().simple().to_string());
    let outlet = Arc::new(state.outlet());
    let (tx, rx) = mpsc::channel::<Queued>(GET_STREAM_CAP);
    *lock(&outlet.get_stream) = Some(tx);
    let session = state
        .gateway
        .open_session(id.clone(), client, Transport::Sse, outlet.clone());
    let http_session = Arc::new(HttpSession::new(id.clone(), session, outlet, slot));
    state.sse_sessions.insert(http_session.clone());
    let closed = http_session.session.closed.clone();
    let shutdown = state.gateway.shutdown_token();
    let ending = Ending {
        state: state.clone(),
        session: http_session,
    };
    let endpoint = Event::default()
        .event("endpoint")
        .data(format!("{MESSAGES}?{SESSION_PARAMETER}={id}"));
    // Ends when the client's access token does: a stream does not outlive
    // the credential it was opened with.
    let messages = futures_util::stream::unfold(
        (rx, closed, shutdown, ending),
        move |(mut rx, closed, shutdown, ending)| async move {
            // The end first: once the session is closed or the token has
            // expired, nothing queued goes out.
            let message = tokio::select! {
                biased;
                () = closed.cancelled() => return None,
                () = shutdown.cancelled() => return None,
                () = expiry.reached() => return None,
                message = rx.recv() => message?.0,
            };
            let event = Event::default()
                .event("message")
                .data(serde_json::to_string(&message).unwrap_or_default());
            Some((Ok(event), (rx, closed, shutdown, ending)))
        },
    );
    sse(futures_util::stream::once(async { Ok(endpoint) }).chain(messages))
}

/// The session a POST names: its one `session_id` parameter.
fn session_id(query: Option<&str>) -> Result<&str, Failure> {
    let mut named = query
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .filter(|(key, _)| *key == SESSION_PARAMETER)
        .map(|(_, value)| value);
    match (named.next(), named.next()) {
        (Some(id), None) if !id.is_empty() => Ok(id),
        (None, _) | (Some(_), None) => Err(Failure::NoSession),
        // Something between client and proxy may read the other one.
        (Some(_), Some(_)) => Err(Failure::HeaderMismatch(format!(
            "the {SESSION_PARAMETER} parameter is sent twice"
        ))),
    }
}

async fn message(
    State(state): State<Arc<HttpState>>,
    Client(client, _): Client,
    RawQuery(query): RawQuery,
    body: Body,
) -> Response {
    let id = match session_id(query.as_deref()) {
        Ok(id) => id,
        Err(failure) => return rpc_error(Value::Null, failure),
    };
    let Ok(http_session) = state.sse_sessions.find(Some(id), &client) else {
        return rpc_error(Value::Null, Failure::UnknownSession);
    };
    // Replies go on the stream; once it is gone, so is the session.
    let Some(stream) = lock(&http_session.outlet.get_stream).clone() else {
        return rpc_error(Value::Null, Failure::UnknownSession);
    };
    let incoming = match read_message(&state, body).await {
        Ok(incoming) => incoming,
        Err(refused) => return refused,
    };
    http_session.touch();
    let session = http_session.session.clone();
    if incoming.kind != Some(Kind::Request) {
        return match state.gateway.handle(&session, incoming.message).await {
            // A message that is not a request still gets refused visibly.
            Some(reply) => (StatusCode::BAD_REQUEST, axum::Json(reply)).into_response(),
            None => StatusCode::ACCEPTED.into_response(),
        };
    }
    // Each request holds a place until its reply is on the stream; one
    // past them is refused rather than queued.
    let Ok(place) = http_session.in_flight.clone().try_acquire_owned() else {
        return rpc_error(
            incoming.request_id,
            Failure::TooManyInFlight(SESSION_IN_FLIGHT),
        );
    };
    let gateway = state.gateway.clone();
    let outlet = http_session.outlet.clone();
    let message = incoming.message;
    tokio::spawn(async move {
        let Some(reply) = gateway.handle(&session, message).await else {
            return;
        };
        // The reply holds its request's place, and its bytes in the
        // session's budget and all sessions', until the client takes it
        // off the stream: a client that asks and does not read is refused
        // places, then budget, and the proxy holds no more than those. Past
        // the budget it gets a short error instead (its call ran and was
        // recorded).
        // The error keeps the place too: a client that goes on asking
        // without reading is refused (429) rather than leaving tasks here.
        let queued = match outlet.reply_shares(&reply, place) {
            Ok(shares) => (reply, Some(shares)),
            Err(place) => {
                let id = reply.get("id").cloned().unwrap_or(Value::Null);
                tracing::info!(session = %session.id, "dropped a reply past the budget of what waits for clients to read");
                (Failure::ReplyUnread.to_response(id), Some(place))
            }
        };
        // Waits for room: ends when the client reads, or goes.
        let _ = stream.send(queued).await;
    });
    StatusCode::ACCEPTED.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_post_names_its_session_once() {
        assert_eq!(session_id(Some("session_id=abc")).ok(), Some("abc"));
        assert_eq!(session_id(Some("x=1&session_id=abc")).ok(), Some("abc"));
        for refused in [
            None,
            Some(""),
            Some("session_id="),
            Some("sessionid=abc"),
            Some("session_id=a&session_id=b"),
        ] {
            let Err(failure) = session_id(refused) else {
                panic!("{refused:?} was taken");
            };
            assert_eq!(
                failure.http_status(),
                StatusCode::BAD_REQUEST,
                "{refused:?}"
            );
        }
    }
}
