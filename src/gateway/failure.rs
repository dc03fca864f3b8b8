//! Every error the gateway answers with, and the one place each becomes a
//! JSON-RPC error response and an outcome for the exchange's record.
//!
//! A client gets these for its requests; a server gets the last group for
//! the requests it sends a client (sampling, elicitation, roots). Messages
//! are safe to show the peer: no policy internals, no secrets (what a peer
//! chose — a method, a tool name, a URI — is quoted back only to it).

use serde_json::{Value, json};

use crate::chain::{Outcome, Refusal};
use crate::protocol::{self, EnvelopeError, ParseError, code};
use crate::upstream::UpstreamError;

use super::session::{MAX_SUBSCRIBED_URI_BYTES, MAX_SUBSCRIPTIONS, MAX_TASKS_PER_CLIENT};

/// MCP's `URLElicitationRequiredError`.
pub const URL_ELICITATION_REQUIRED: i64 = -32042;

/// The key of the decision in the `_meta` of a `tools/call` refused as a
/// tool result ([`Failure::to_tool_result`]).
pub const REFUSAL_META: &str = "dev.portcullis/refusal";

#[derive(Debug, Clone, thiserror::Error)]
pub enum Failure {
    /// An interceptor refused the message (its reason, `data.interceptor`).
    #[error("denied by {}: {}", .0.interceptor, .0.denial.reason)]
    Denied(Refusal),
    /// The bytes are not one message the proxy can read.
    #[error("{0}")]
    Parse(ParseError),
    #[error("not a JSON-RPC message")]
    NotJsonRpc,
    #[error("the session is not initialized: send `initialize` first")]
    NotInitialized,
    #[error("the session is already initialized")]
    AlreadyInitialized,
    #[error("method not found: `{0}`")]
    MethodNotFound(String),
    /// A parameter is missing or malformed (the text says which and how).
    #[error("{0}")]
    InvalidParams(String),
    /// A tool or prompt the client's lists do not hold.
    #[error("unknown {what} `{name}`")]
    Unknown { what: &'static str, name: String },
    #[error("resource not found: `{0}`")]
    ResourceNotFound(String),
    #[error("a URI to subscribe to may be at most {MAX_SUBSCRIBED_URI_BYTES} bytes long")]
    UriTooLong,
    #[error(
        "this session is subscribed to {MAX_SUBSCRIPTIONS} resources; unsubscribe from some first"
    )]
    TooManySubscriptions,
    /// The name's server is down, or up again with its lists not read yet.
    #[error("server `{0}` is not available right now")]
    ServerNotReady(String),
    #[error("the server is not available: the proxy is shutting down")]
    ShuttingDown,
    #[error("a request with this id is already in flight")]
    DuplicateId,
    /// The server failed the call, or its reply was refused (`limits`).
    #[error("{0}")]
    Upstream(UpstreamError),
    /// The client cancelled the request: it gets no reply.
    #[error("cancelled by the client")]
    Cancelled,
    /// The audit log is failing: calls are refused until it is written again.
    #[error("the audit log cannot be written: calls are refused until it can")]
    AuditUnavailable,
    /// This exchange's record could not be committed: its reply is withheld.
    #[error("the call is refused: the audit log cannot record it")]
    NotRecorded,

    // -- 2026-07-28 ----------------------------------------------------------
    /// A stateless request without a well-formed envelope.
    #[error("{0}")]
    Envelope(EnvelopeError),
    /// A stateless request of a version the proxy does not speak.
    #[error("protocol version `{0}` is not supported")]
    UnsupportedVersion(String),
    /// An HTTP header does not say what the body says (which one, how).
    #[error("{0}")]
    HeaderMismatch(String),
    /// `initialize` on a stdio connection that serves 2026-07-28.
    #[error(
        "this connection serves the 2026-07-28 protocol; the initialize handshake is not accepted"
    )]
    HandshakeOnModern(String),
    /// A 2026-07-28 request on a stdio connection that did the handshake.
    #[error(
        "this connection serves the handshake protocol; a 2026-07-28 request is not accepted on it"
    )]
    ModernOnHandshake,
    /// A server asked a 2026-07-28 client something during a call: that
    /// revision has no requests from server to client.
    #[error(
        "the client speaks 2026-07-28, which has no requests from server to client; the request is refused"
    )]
    NoBackChannel,
    /// A server's result to a 2026-07-28 client said it was not complete.
    #[error(
        "the server answered with resultType `{0}`, which a server of the handshake revisions cannot send: refused"
    )]
    ServerResultType(String),
    /// A request a server spoken to in 2026-07-28 cannot take through the
    /// proxy yet.
    #[error("{0} is not supported yet for a server spoken to in 2026-07-28")]
    NotOnStatelessServer(String),
    /// A 2026-07-28 retry's `requestState` names no call of this client's
    /// waiting for input (never given, answered already, expired, or
    /// another client's: which, is not said).
    #[error(
        "the requestState is unknown or expired: send the request again, without requestState and inputResponses"
    )]
    UnknownRequestState,
    /// A 2026-07-28 retry that does not continue the request its
    /// `requestState` was given for.
    #[error("the retry does not match the request its requestState belongs to: {0}")]
    RequestStateMismatch(&'static str),
    /// A call waiting for its client's input ended otherwise (the proxy
    /// stopping) before its result could be given.
    #[error("the call ended before its result could be given")]
    CallEnded,
    /// A 2026-07-28 server's `input_required` the proxy cannot carry on
    /// (malformed, past the rounds allowed, or a question the client did
    /// not answer): why.
    #[error("the server's input_required cannot be completed: {0}")]
    ServerRounds(String),
    /// A task id that names no task of this client's (unknown, expired,
    /// another client's, or forgotten by its server: which, is not said).
    #[error("unknown task: `{0}`")]
    UnknownTask(String),
    /// A task request from a client that did not declare the tasks
    /// extension on it.
    #[error(
        "the client did not declare the io.modelcontextprotocol/tasks extension on this request"
    )]
    TasksNotDeclared,
    /// The client runs as many tasks at the server as it may.
    #[error("this client runs {MAX_TASKS_PER_CLIENT} tasks at this server: let some end first")]
    TooManyTasks,
    /// A server's task (or its answer to a task's request) the proxy
    /// cannot pass on: malformed, a finished task starting again, a
    /// question no client can be asked, a call's arguments too large to
    /// keep with it: why.
    #[error("the server's task is refused: {0}")]
    ServerTask(String),
    /// A task's request whose server was restarted speaking an older
    /// revision (tasks are 2026-07-28's alone).
    #[error("the server's task is refused: its server no longer speaks 2026-07-28")]
    TaskServerNotModern,
    /// A client's listen streams (how many) are all open.
    #[error("this client has {0} listen streams open; end one first")]
    TooManyListens(usize),
    /// A server that acts as each client's user, called by a client with
    /// no access token from the identity provider it exchanges tokens of
    /// (a static token, stdio, another provider's token).
    #[error(
        "server `{0}` acts as the client's user: only a client with an access token from the identity provider `{1}` can use it"
    )]
    NoUserToken(String, String),
    /// The client runs `[code_mode] max_scripts_per_client` scripts
    /// already.
    #[error(
        "this client runs {0} scripts already, the most it may at once: try again when one has ended"
    )]
    TooManyScriptsOfClient(usize),
    /// `[code_mode] max_scripts` scripts run already.
    #[error(
        "the proxy runs {0} scripts already, the most it may at once: try again when one has ended"
    )]
    TooManyScripts(usize),
    /// A per-client server's instances (how many) are all taken.
    #[error("this server already runs {0} per-client instances; no more clients can be given one")]
    TooManyInstances(usize),

    // -- at the HTTP transport, before the gateway sees the message --------
    #[error("the Mcp-Method header does not match the message's method")]
    MethodHeaderMismatch,
    #[error("unsupported MCP-Protocol-Version")]
    UnsupportedVersionHeader,
    #[error("missing Mcp-Session-Id header: send `initialize` first")]
    NoSession,
    #[error("unknown or expired session")]
    UnknownSession,
    #[error("too many sessions; try again later")]
    TooManySessions,
    #[error("this client has too many sessions open; end one (DELETE) or wait for one to expire")]
    TooManySessionsOfClient,
    /// A session's places for requests in the works (how many) are taken.
    #[error(
        "{0} requests of this session (or, for 2026-07-28 requests, of this client) are in the works; send more when some are answered"
    )]
    TooManyInFlight(usize),
    /// HTTP+SSE: the reply was dropped, what waits for the session's
    /// client (or all sessions' clients) to read being past its budget
    /// (`[limits] max_queued_bytes`, `max_queued_bytes_total`).
    #[error(
        "the reply was dropped: what waits for this session's client (or all clients) to read is past its budget; read the stream, and try again"
    )]
    ReplyUnread,

    // -- toward a server, for its own requests -----------------------------
    /// The server's places for requests waiting on clients (how many) are
    /// all taken.
    #[error("refused: {0} requests of this server's are already waiting for clients")]
    TooManyServerRequests(usize),
    #[error(
        "no client session to ask: the request is not tied to exactly one client call in flight"
    )]
    NoClientToAsk,
    /// The client's places for questions or calls waiting for its input
    /// (how many) are all taken.
    #[error("refused: {0} questions or calls of this client are already waiting for its input")]
    TooManyWaiting(usize),
    #[error("the client does not support {0}")]
    ClientLacks(&'static str),
    #[error("the client is not reachable")]
    ClientUnreachable,
    #[error("the client session ended")]
    ClientSessionEnded,
    #[error("the client did not answer in time")]
    ClientTimeout,
    #[error("refused: the audit log cannot record this request")]
    RequestNotRecorded,
}

impl Failure {
    /// The JSON-RPC error code.
    pub fn code(&self) -> i64 {
        match self {
            Self::Denied(refusal) => refusal.denial.code,
            Self::Parse(error) => error.code(),
            Self::NotJsonRpc
            | Self::NotInitialized
            | Self::AlreadyInitialized
            | Self::DuplicateId
            | Self::MethodHeaderMismatch
            | Self::UnsupportedVersionHeader
            | Self::NoSession
            | Self::UnknownSession => code::INVALID_REQUEST,
            Self::TooManySessions | Self::TooManySessionsOfClient => code::INTERNAL_ERROR,
            Self::Envelope(_) => code::INVALID_PARAMS,
            Self::UnsupportedVersion(_) | Self::HandshakeOnModern(_) => {
                code::UNSUPPORTED_PROTOCOL_VERSION
            }
            Self::HeaderMismatch(_) => code::HEADER_MISMATCH,
            Self::ModernOnHandshake => code::INVALID_REQUEST,
            Self::NoBackChannel => code::CLIENT_UNAVAILABLE,
            Self::ServerResultType(_) => code::INTERNAL_ERROR,
            Self::TooManyListens(_) => code::RATE_LIMITED,
            Self::TooManyInstances(_) => code::UPSTREAM_UNAVAILABLE,
            Self::NoUserToken(..) => code::INVALID_REQUEST,
            Self::UnknownRequestState | Self::RequestStateMismatch(_) => code::INVALID_PARAMS,
            Self::CallEnded
            | Self::ServerRounds(_)
            | Self::ServerTask(_)
            | Self::TaskServerNotModern => code::INTERNAL_ERROR,
            Self::UnknownTask(_) => code::INVALID_PARAMS,
            Self::TasksNotDeclared => code::EXTENSION_REQUIRED,
            Self::TooManyTasks | Self::TooManyScripts(_) | Self::TooManyScriptsOfClient(_) => {
                code::RATE_LIMITED
            }
            Self::TooManyInFlight(_) | Self::ReplyUnread => code::RATE_LIMITED,
            Self::MethodNotFound(_) | Self::ClientLacks(_) | Self::NotOnStatelessServer(_) => {
                code::METHOD_NOT_FOUND
            }
            Self::InvalidParams(_) | Self::Unknown { .. } | Self::UriTooLong => {
                code::INVALID_PARAMS
            }
            // MCP's code for an unknown resource.
            Self::ResourceNotFound(_) => -32002,
            Self::TooManySubscriptions => code::RATE_LIMITED,
            Self::ServerNotReady(_) | Self::ShuttingDown => code::UPSTREAM_UNAVAILABLE,
            Self::Upstream(error) => error.code(),
            Self::Cancelled => code::INTERNAL_ERROR,
            Self::AuditUnavailable | Self::NotRecorded | Self::RequestNotRecorded => {
                code::AUDIT_UNAVAILABLE
            }
            Self::TooManyServerRequests(_)
            | Self::TooManyWaiting(_)
            | Self::NoClientToAsk
            | Self::ClientUnreachable
            | Self::ClientSessionEnded => code::CLIENT_UNAVAILABLE,
            Self::ClientTimeout => code::UPSTREAM_TIMEOUT,
        }
    }

    /// The interceptor that refused, for refusals (a server's reply too
    /// large to relay, or input too large or deep to read, is `limits`'s).
    fn interceptor(&self) -> Option<&str> {
        match self {
            Self::Denied(refusal) => Some(&refusal.interceptor),
            Self::Upstream(UpstreamError::Refused { .. }) => Some("limits"),
            Self::Parse(ParseError::TooLarge { .. } | ParseError::TooDeep { .. }) => Some("limits"),
            _ => None,
        }
    }

    /// The error response to a request with this `id`.
    pub fn to_response(&self, id: Value) -> Value {
        match self {
            Self::Denied(refusal) => return refusal.to_response(id),
            Self::Parse(error) => return error.to_response(id),
            _ => {}
        }
        let data = match self {
            // What a client falls back to, or retries with.
            Self::UnsupportedVersion(requested) | Self::HandshakeOnModern(requested) => {
                let supported = match self {
                    Self::HandshakeOnModern(_) => &[protocol::MODERN_VERSION][..],
                    _ => protocol::ALL_VERSIONS,
                };
                Some(json!({ "supported": supported, "requested": requested }))
            }
            Self::TasksNotDeclared => Some(json!({ "requiredCapabilities":
                { "extensions": { protocol::TASKS_EXTENSION: {} } } })),
            _ => self
                .interceptor()
                .map(|interceptor| json!({ "interceptor": interceptor })),
        };
        protocol::error(id, self.code(), &self.to_client(), data)
    }

    /// A `tools/call` refused by an interceptor (a server's reply too
    /// large for `limits` included), answered as a tool result for the
    /// agent's model to read (`[proxy] tool_refusals = "result"`):
    /// `isError`, the error's own words as its text, and the decision in
    /// its `_meta` under [`REFUSAL_META`] (the interceptor, the error's
    /// code and `data`; those three are the proxy's, never a `data` key's).
    /// `None` for any other failure, which keeps its JSON-RPC error.
    pub fn to_tool_result(&self, id: Value) -> Option<Value> {
        let interceptor = self.interceptor()?;
        // The JSON-RPC error's `data`, as `to_response` makes it, under the
        // proxy's own three keys.
        let mut error = self.to_response(Value::Null);
        let mut decision = match error.pointer_mut("/error/data").map(Value::take) {
            Some(Value::Object(data)) => data,
            _ => serde_json::Map::new(),
        };
        decision.insert("decision".into(), Value::from("deny"));
        decision.insert("interceptor".into(), Value::from(interceptor));
        decision.insert("code".into(), Value::from(self.code()));
        Some(protocol::result(
            id,
            json!({
                "content": [{ "type": "text", "text": self.to_client() }],
                "isError": true,
                "_meta": { REFUSAL_META: decision },
            }),
        ))
    }

    /// The HTTP status of a request this failure refuses at the HTTP edge,
    /// before the gateway answers it (what the gateway answers, a refusal
    /// by policy included, goes out with 200 and the JSON-RPC error in the
    /// body): the one place that chooses it. Full or busy is 429 or 503 (a
    /// client may come back), an unknown session 404 (the client starts a
    /// new one), a body over the size limit 413; any other request the
    /// edge cannot take is the client's to mend: 400.
    pub fn http_status(&self) -> axum::http::StatusCode {
        use axum::http::StatusCode;
        match self {
            Self::TooManySessions => StatusCode::SERVICE_UNAVAILABLE,
            Self::TooManySessionsOfClient | Self::TooManyInFlight(_) => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Self::UnknownSession => StatusCode::NOT_FOUND,
            Self::Parse(ParseError::TooLarge { .. }) => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// The `elicitationId` of the link to sign in this failure gives, if
    /// it gives one.
    pub fn elicitation_id(&self) -> Option<String> {
        match self {
            Self::Upstream(UpstreamError::SignInNeeded { link, .. }) => {
                Some(crate::signin::pending::elicitation_id(link))
            }
            _ => None,
        }
    }

    /// Whether the client's user must sign in to the server first.
    pub fn is_sign_in(&self) -> bool {
        matches!(self, Self::Upstream(UpstreamError::SignInNeeded { .. }))
    }

    /// A sign-in needed, as MCP's URL elicitation asks for it (2025-11-25
    /// and 2026-07-28: the `URLElicitationRequiredError`, -32042): the
    /// link for the client to open in its user's browser, then retry.
    pub fn to_url_elicitation(&self, id: Value) -> Value {
        let Self::Upstream(UpstreamError::SignInNeeded { told, link, .. }) = self else {
            return self.to_response(id);
        };
        let elicitation_id = crate::signin::pending::elicitation_id(link);
        protocol::error(
            id,
            URL_ELICITATION_REQUIRED,
            &self.to_string(),
            Some(json!({ "elicitations": [{
                "mode": "url",
                "elicitationId": elicitation_id,
                "url": link,
                "message": told,
            }] })),
        )
    }

    /// A sign-in needed, for a client without URL elicitation: a tool
    /// result (`isError`) whose text holds the link, for its model to show
    /// the person.
    pub fn to_sign_in_result(&self, id: Value) -> Value {
        protocol::result(
            id,
            json!({
                "content": [{ "type": "text", "text": self.to_client() }],
                "isError": true,
            }),
        )
    }

    /// What the client is told: what a record keeps, and a link to sign
    /// in that is the client's alone.
    fn to_client(&self) -> String {
        match self {
            Self::Upstream(UpstreamError::SignInNeeded { link, .. }) => {
                format!("{self}. Sign-in link: {link}")
            }
            _ => self.to_string(),
        }
    }

    /// How the exchange ended, for its record, metrics and trace: a
    /// refusal names its interceptor; anything else failed.
    pub fn outcome(&self) -> Outcome {
        match (self, self.interceptor()) {
            (Self::Denied(refusal), _) => refusal.outcome(),
            (_, Some(interceptor)) => Outcome::Denied {
                interceptor: interceptor.into(),
                reason: self.to_string(),
            },
            _ => Outcome::Failed {
                reason: self.to_string(),
            },
        }
    }
}

impl From<Refusal> for Failure {
    fn from(refusal: Refusal) -> Self {
        Self::Denied(refusal)
    }
}

impl From<UpstreamError> for Failure {
    fn from(error: UpstreamError) -> Self {
        Self::Upstream(error)
    }
}

impl From<ParseError> for Failure {
    fn from(error: ParseError) -> Self {
        Self::Parse(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::Denial;

    #[test]
    fn a_refusal_names_its_interceptor_and_keeps_its_data() {
        let mut denial = Denial::new(code::DENIED, "no");
        denial.data.insert("decision_id".into(), json!("d-1"));
        let failure = Failure::from(Refusal {
            interceptor: "authz".into(),
            denial,
        });
        assert_eq!(
            failure.to_response(json!(7)),
            json!({"jsonrpc": "2.0", "id": 7, "error": {
                "code": code::DENIED, "message": "denied by authz: no",
                "data": {"interceptor": "authz", "decision_id": "d-1"}}})
        );
        assert!(
            matches!(failure.outcome(), Outcome::Denied { interceptor, reason }
            if &*interceptor == "authz" && reason == "no")
        );
    }

    #[test]
    fn the_http_edge_takes_each_refusal_s_status_from_the_failure() {
        use axum::http::StatusCode;
        let cases = [
            (Failure::TooManySessions, StatusCode::SERVICE_UNAVAILABLE),
            (
                Failure::TooManySessionsOfClient,
                StatusCode::TOO_MANY_REQUESTS,
            ),
            (Failure::TooManyInFlight(4), StatusCode::TOO_MANY_REQUESTS),
            (Failure::UnknownSession, StatusCode::NOT_FOUND),
            (Failure::NoSession, StatusCode::BAD_REQUEST),
            (
                Failure::Parse(ParseError::TooLarge { limit: 1 }),
                StatusCode::PAYLOAD_TOO_LARGE,
            ),
            (
                Failure::Parse(ParseError::TooDeep { limit: 1 }),
                StatusCode::BAD_REQUEST,
            ),
            (Failure::NotJsonRpc, StatusCode::BAD_REQUEST),
            (Failure::NoBackChannel, StatusCode::BAD_REQUEST),
        ];
        for (failure, status) in cases {
            assert_eq!(failure.http_status(), status, "{failure}");
        }
    }

    #[test]
    fn a_reply_too_large_is_a_refusal_by_limits() {
        let failure = Failure::from(UpstreamError::Refused {
            server: "s".into(),
            reason: "too large".into(),
        });
        let response = failure.to_response(json!("a"));
        assert_eq!(response["error"]["data"], json!({"interceptor": "limits"}));
        assert_eq!(response["error"]["message"], "too large");
        assert!(
            matches!(failure.outcome(), Outcome::Denied { interceptor, .. }
            if &*interceptor == "limits")
        );
    }

    #[test]
    fn other_failures_are_failed_outcomes_with_their_text() {
        let failure = Failure::Unknown {
            what: "tool",
            name: "x__y".into(),
        };
        let response = failure.to_response(json!(1));
        assert_eq!(response["error"]["code"], code::INVALID_PARAMS);
        assert_eq!(response["error"]["message"], "unknown tool `x__y`");
        assert!(response["error"].get("data").is_none());
        assert!(matches!(failure.outcome(), Outcome::Failed { reason }
            if reason == "unknown tool `x__y`"));
        assert_eq!(Failure::ResourceNotFound("u".into()).code(), -32002);
        assert_eq!(
            Failure::TooManySubscriptions.code(),
            code::RATE_LIMITED,
            "a cap, like a quota"
        );
    }
}
