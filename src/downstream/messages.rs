//! What both kinds of `/mcp` request share — a handshake session's and a
//! 2026-07-28 stateless one's: the headers' names, reading and parsing a
//! POSTed message, a refusal as a response, and answering a request with
//! its reply alone or on an SSE stream.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tokio::sync::mpsc;

use super::detached::Detached;
use super::sessions::{CALL_STREAM_CAP, HttpOutlet, Queued, lock};
use super::state::{BodyError, HttpState, body_timed_out, plain_error, read_body};
use crate::gateway::Failure;
use crate::protocol::{self, IdKey, Kind, Method, ParseError};

pub(super) const SESSION_HEADER: &str = "mcp-session-id";
pub(super) const VERSION_HEADER: &str = "mcp-protocol-version";
pub(super) const METHOD_HEADER: &str = "mcp-method";
pub(super) const NAME_HEADER: &str = "mcp-name";
/// A comment line on an idle SSE stream, so that neither side nor a proxy
/// between them takes it for dead.
const SSE_HEARTBEAT: Duration = Duration::from_secs(15);

/// The one value of header `name`, if it was sent. Sent twice it is
/// refused: something between client and proxy may read the other one.
pub(super) fn single_header<'a>(
    headers: &'a HeaderMap,
    name: &str,
) -> Result<Option<&'a HeaderValue>, Failure> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (_, Some(_)) => Err(Failure::HeaderMismatch(format!(
            "the {name} header is sent twice"
        ))),
        (value, None) => Ok(value),
    }
}

/// A refusal as a JSON-RPC error in an HTTP response of `status`.
/// A request refused at the HTTP edge: the JSON-RPC error, under the HTTP
/// status the failure says ([`Failure::http_status`]).
pub(super) fn rpc_error(id: Value, failure: Failure) -> Response {
    (failure.http_status(), axum::Json(failure.to_response(id))).into_response()
}

pub(super) fn accepts(headers: &HeaderMap, mime: &str) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains(mime) || v.contains("*/*"))
}

/// A POSTed message, read and parsed.
pub(super) struct Incoming {
    pub(super) message: Value,
    pub(super) kind: Option<Kind>,
    /// Parsed once, where the message enters.
    pub(super) method: Option<Method>,
    /// What a refusal answers: a request's id, anything else `null`, so
    /// that a refused response is never taken for the answer to a request.
    pub(super) request_id: Value,
}

impl Incoming {
    pub(super) fn is_initialize(&self) -> bool {
        self.kind == Some(Kind::Request) && self.method == Some(Method::Initialize)
    }
}

/// Reads and parses the body.
pub(super) async fn read_message(state: &HttpState, body: Body) -> Result<Incoming, Response> {
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
            let mut refused = rpc_error(protocol::refusal_id(&head), error.into());
            refused
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return Err(refused);
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
            return Err(rpc_error(id, error.into()));
        }
    };
    let kind = protocol::classify(&message);
    let request_id = match kind {
        Some(Kind::Request) => message.get("id").cloned().unwrap_or(Value::Null),
        _ => Value::Null,
    };
    let method = Method::of(&message);
    Ok(Incoming {
        message,
        kind,
        method,
        request_id,
    })
}

/// The HTTP status a reply goes out with.
pub(super) type StatusOf = fn(&Value) -> StatusCode;

/// A request answered with its reply alone: `work` hands the request to
/// the gateway, as the edge that read it says. It runs to its end
/// (recorded, `keep` dropped when it ends) even if the client goes away.
///
/// `work` makes the gateway's future where it runs, inside the detached
/// task's own: that future is large (the whole pipeline), and made by the
/// edge and moved in, it was copied on each move (about 65 000 instructions
/// a call, `scripts/instructions-per-call.sh`).
pub(super) async fn answer_in_json<W>(
    work: impl FnOnce() -> W + Send + 'static,
    keep: impl Send + 'static,
    status_of: StatusOf,
) -> Response
where
    W: Future<Output = Option<Value>> + Send,
{
    let (reply_tx, reply_rx) = tokio::sync::oneshot::channel();
    Detached::new(async move {
        let _ = reply_tx.send(work().await);
        drop(keep);
    })
    .await;
    match reply_rx.await.ok().flatten() {
        Some(reply) => (status_of(&reply), axum::Json(reply)).into_response(),
        None => StatusCode::ACCEPTED.into_response(),
    }
}

/// A routed request: answered on an SSE stream, so that progress and the
/// server's requests for this call travel with it. `work` hands the
/// request (`id`, on `outlet`'s session) to the gateway, as the edge that
/// read it says (made where it runs: see [`answer_in_json`]). `place` is
/// held until the call ends; `hold` as long as the answer is being sent
/// (its drop says the client is gone or has it all).
pub(super) async fn answer_in_stream<W>(
    work: impl FnOnce() -> W + Send + 'static,
    (outlet, id): (Arc<HttpOutlet>, IdKey),
    place: impl Send + 'static,
    (hold, ends): (impl Send + 'static, super::auth::Expiry),
    status_of: StatusOf,
) -> Response
where
    W: Future<Output = Option<Value>> + Send,
{
    let (tx, rx) = mpsc::channel::<Queued>(CALL_STREAM_CAP);
    lock(&outlet.post_streams).insert(id.clone(), tx.clone());
    let mut work = Detached::new(async move {
        let reply = work().await;
        lock(&outlet.post_streams).remove(&id);
        if let Some(reply) = reply {
            // Waits for room: ends when the client reads, or goes.
            let _ = tx.send((reply, None)).await;
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
    // Its share of the session's budget goes once it is taken from the queue.
    let Some((first, _)) = first else {
        return StatusCode::ACCEPTED.into_response();
    };
    if matches!(
        protocol::classify(&first),
        Some(Kind::Response | Kind::ErrorResponse)
    ) {
        return (status_of(&first), axum::Json(first)).into_response();
    }
    work.detach();
    // `ends`: a listen stream ends with the access token it was opened
    // with (dropping `hold` ends the request's session).
    let stream = futures_util::stream::unfold(
        (Some(first), rx, hold),
        move |(mut first, mut rx, hold)| async move {
            let message = match first.take() {
                Some(message) => message,
                None => tokio::select! {
                    message = rx.recv() => message?.0,
                    () = ends.reached() => return None,
                },
            };
            Some((event(&message), (None, rx, hold)))
        },
    );
    sse(stream)
}

/// One message as an SSE event.
pub(super) fn event(message: &Value) -> Result<Event, Infallible> {
    Ok(Event::default().data(serde_json::to_string(message).unwrap_or_default()))
}

/// An SSE answer, kept alive while idle.
pub(super) fn sse(
    stream: impl futures_util::Stream<Item = Result<Event, Infallible>> + Send + 'static,
) -> Response {
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(SSE_HEARTBEAT))
        .into_response()
}
