//! 2026-07-28 requests over streamable HTTP: no handshake, no session.
//! Each POST carries its protocol version and its client's capabilities in
//! `params._meta`, and says in headers what its body says (its version,
//! method and, for the methods that name a tool, prompt or resource, that
//! name), so that something between client and proxy can route it without
//! reading the body. The proxy decides on the body alone; a header that does
//! not agree with the body is refused rather than trusted.
//!
//! Order of checks, each refusal before any work: the kind of message (a
//! notification, its headers checked, is accepted and dropped: nothing
//! outlives its request; a response is refused: nothing was asked), the
//! envelope (400, `-32602`), the headers against the body (400, `-32020`),
//! the version (400, `-32022` listing the versions spoken), a listen that
//! cannot take a stream (406), the client's places for requests in the
//! works (429). The request then runs in a session of its
//! own that ends with it: the client closing the response is the
//! revision's cancellation, and cancels the call at its server.

use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::messages::{
    Incoming, METHOD_HEADER, NAME_HEADER, VERSION_HEADER, accepts, answer_in_json,
    answer_in_stream, rpc_error, single_header,
};
use super::sessions::CLIENT_IN_FLIGHT;
use super::state::{HttpState, plain_error};
use crate::chain::{ClientIdentity, Transport};
use crate::gateway::{Failure, Gateway, Session, version_spoken};
use crate::protocol::{self, At, IdKey, Kind, Method, code};

/// Ends a request's session when dropped: when its answer was sent, or
/// when the client closed the response before that (which cancels the
/// call still at a server).
struct Hangup {
    gateway: Arc<Gateway>,
    session: Arc<Session>,
}

impl Drop for Hangup {
    fn drop(&mut self) {
        self.gateway.close_stateless(&self.session);
    }
}

/// A 2026-07-28 reply's HTTP status when the request's method is one the
/// proxy does not know: its unknown-method error is 404.
fn unknown_method(reply: &Value) -> StatusCode {
    if reply.at(&["error", "code"]).and_then(Value::as_i64) == Some(code::METHOD_NOT_FOUND) {
        StatusCode::NOT_FOUND
    } else {
        StatusCode::OK
    }
}

/// A reply's HTTP status for a method the proxy serves: 200, whatever the
/// JSON-RPC body says (a server's own unknown-method error included).
fn known_method(_reply: &Value) -> StatusCode {
    StatusCode::OK
}

/// One header's value as text; `None` when absent (sent twice, refused).
fn header<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, Failure> {
    let Some(value) = single_header(headers, name)? else {
        return Ok(None);
    };
    value
        .to_str()
        .map(Some)
        .map_err(|_| Failure::HeaderMismatch(format!("the {name} header is not text")))
}

/// The headers say what the body says: `MCP-Protocol-Version` (required)
/// its version, `Mcp-Method` (required on a request) its method, and for a
/// request that names a tool, prompt or resource, `Mcp-Name` (required)
/// that name, plain or as `=?base64?…?=`.
fn headers_match(headers: &HeaderMap, incoming: &Incoming, version: &str) -> Result<(), Failure> {
    let mismatch = |what: &str| Err(Failure::HeaderMismatch(what.to_owned()));
    match header(headers, VERSION_HEADER)? {
        None => return mismatch("the MCP-Protocol-Version header is required"),
        Some(sent) if sent != version => {
            return mismatch(
                "the MCP-Protocol-Version header does not match the request's version",
            );
        }
        Some(_) => {}
    }
    match header(headers, METHOD_HEADER)? {
        None if incoming.kind == Some(Kind::Request) => {
            return mismatch("the Mcp-Method header is required");
        }
        Some(sent) if Some(sent) != incoming.method.as_ref().map(Method::as_str) => {
            return mismatch("the Mcp-Method header does not match the message's method");
        }
        _ => {}
    }
    let Some(name) = protocol::routing_name(&incoming.message) else {
        return Ok(());
    };
    let Ok(name) = name else {
        // The body names nothing: the gateway refuses it as it is.
        return Ok(());
    };
    match single_header(headers, NAME_HEADER)? {
        None => mismatch("the Mcp-Name header is required for this method"),
        Some(sent) => match protocol::decode_header_value(sent.as_bytes()) {
            Some(sent) if sent == name => Ok(()),
            Some(_) => mismatch("the Mcp-Name header does not match the name in the body"),
            None => mismatch("the Mcp-Name header is neither plain text nor =?base64?…?="),
        },
    }
}

/// Answers one 2026-07-28 POST.
pub(super) async fn post(
    state: &HttpState,
    (client, expiry): (ClientIdentity, super::auth::Expiry),
    headers: &HeaderMap,
    mut incoming: Incoming,
) -> Response {
    let refuse = |failure| rpc_error(incoming.request_id.clone(), failure);
    // A notification or a response carries no envelope to check.
    match incoming.kind {
        Some(Kind::Request) => {}
        Some(Kind::Notification) => {
            // Of the one version spoken here, said in the header.
            if let Err(failure) = headers_match(headers, &incoming, protocol::MODERN_VERSION) {
                return refuse(failure);
            }
            return StatusCode::ACCEPTED.into_response();
        }
        // Nothing was asked of the client: there is nothing to answer.
        Some(Kind::Response | Kind::ErrorResponse) => {
            return refuse(Failure::NoBackChannel);
        }
        None => return refuse(Failure::NotJsonRpc),
    }
    let envelope = match protocol::take_envelope(&mut incoming.message) {
        Ok(envelope) => envelope,
        Err(error) => return refuse(Failure::Envelope(error)),
    };
    if let Err(failure) = headers_match(headers, &incoming, &envelope.version) {
        return refuse(failure);
    }
    if let Err(failure) = version_spoken(&envelope) {
        return refuse(failure);
    }
    // A listen stream is a stream: a client that takes only JSON would wait
    // for an answer that comes at shutdown.
    if incoming.method == Some(Method::SubscriptionsListen)
        && !accepts(headers, "text/event-stream")
    {
        return plain_error(
            StatusCode::NOT_ACCEPTABLE,
            "subscriptions/listen answers on an SSE stream: send `Accept: text/event-stream`",
        );
    }
    let Ok(place) = state.stateless_places.of(&client.name).try_acquire_owned() else {
        return refuse(Failure::TooManyInFlight(CLIENT_IN_FLIGHT));
    };
    let outlet = Arc::new(state.outlet());
    let session = state
        .gateway
        .open_stateless(client, Transport::Http, outlet.clone(), envelope);
    let hangup = Hangup {
        gateway: state.gateway.clone(),
        session: session.clone(),
    };
    let gateway = state.gateway.clone();
    let known = incoming.method.as_ref().is_some_and(Method::served_modern);
    // A listen stream lasts as long as the token it was opened with; a
    // call's stream, until its answer.
    let ends = match incoming.method {
        Some(Method::SubscriptionsListen) => expiry,
        _ => super::auth::Expiry::default(),
    };
    let status_of = if known { known_method } else { unknown_method };
    let id = incoming.message.get("id").and_then(IdKey::from_value);
    // Handed to the gateway's pipeline here; the reply goes out as JSON,
    // or as SSE if the call sends something first.
    let message = incoming.message;
    let work = move || async move { gateway.handle(&session, message).await };
    match id {
        Some(id) if accepts(headers, "text/event-stream") => {
            answer_in_stream(work, (outlet, id), place, (hangup, ends), status_of).await
        }
        _ => {
            // Held here, not by the call: the client going away drops it.
            let _hangup = hangup;
            answer_in_json(work, place, status_of).await
        }
    }
}
