//! A 2026-07-28 server's questions to the client, asked the way that
//! revision asks them: it answers a `tools/call`, `prompts/get` or
//! `resources/read` with `resultType: "input_required"`, its
//! `inputRequests` and a `requestState`, and the request is sent again with
//! `inputResponses` and that state.
//!
//! The proxy tells the server the capabilities of the client whose call it
//! sends (sampling, elicitation, roots, as that client declared them) and
//! carries each round itself: every input request is put to the client as
//! a request of that server's would be (the capability, Cedar, redaction
//! both ways, a record; on a handshake session a request on it, to a
//! 2026-07-28 client a round of its own call, under a `requestState` of the
//! proxy's), and with every answer the call goes to the server again. The
//! server's `requestState` never leaves the proxy. A question the client
//! does not answer (refused, declined by policy, timed out) ends the call
//! with an error: `inputResponses` can carry only results.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use futures_util::StreamExt as _;
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

use crate::protocol::{self, At as _};
use crate::upstream::{Call, Origin, Round, Upstream};

use super::failure::Failure;
use super::{Gateway, Session};

/// Rounds of one call the proxy carries (as the SDKs' clients do).
const MAX_ROUNDS: usize = 10;
/// Questions in one round.
const MAX_INPUTS: usize = 16;
/// Of each capability a round can use, what the proxy tells a server (the
/// rest of what the client declared is not passed on).
const DECLARED: &[(&str, &[&str])] = &[
    ("sampling", &["context", "tools"]),
    ("elicitation", &["form", "url"]),
    ("roots", &["listChanged"]),
];

/// Numbers the questions of every round: each is put to the client under
/// an id of the proxy's (`portcullis-round-N`), never the server's key.
static QUESTIONS: AtomicU64 = AtomicU64::new(1);

/// What a 2026-07-28 server is told the client can be asked
/// (`clientCapabilities`), from what the client declared (`declared`): the
/// capabilities a round can use, each with the keys MCP defines for it.
pub(super) fn told_capabilities(declared: &Value) -> Map<String, Value> {
    let mut told = Map::new();
    for (capability, keys) in DECLARED {
        let Some(given) = declared.get(*capability).filter(|given| !given.is_null()) else {
            continue;
        };
        let kept: Map<String, Value> = keys
            .iter()
            .filter_map(|key| {
                let value = given.get(*key)?;
                let small = match value {
                    Value::Object(inner) => inner.is_empty(),
                    other => other.is_boolean(),
                };
                small.then(|| ((*key).to_owned(), value.clone()))
            })
            .collect();
        told.insert((*capability).to_owned(), Value::Object(kept));
    }
    told
}

/// One client call to a 2026-07-28 server, as the rounds need it.
pub(super) struct RoundCall<'a> {
    pub(super) session: &'a Arc<Session>,
    pub(super) server: usize,
    pub(super) upstream: &'a Upstream,
    /// The request as the proxy first sent it (before the envelope).
    pub(super) sent: Value,
    pub(super) origin: Origin,
    /// What the server is told the client can be asked.
    pub(super) capabilities: Map<String, Value>,
    pub(super) cancel: &'a CancellationToken,
    /// When the call, rounds and all, is out of time: its first sending
    /// plus the server's call timeout, as for a call to a handshake server
    /// whose questions come while its call waits.
    pub(super) deadline: tokio::time::Instant,
}

/// A round's questions (each of the server's keys with its request, as a
/// message under an id of the proxy's) and the server's `requestState`.
type Questions = (Vec<(String, Value)>, Option<Value>);

/// The questions of an `input_required` result, checked. `None`: the
/// result is not `input_required`.
fn questions(reply: &Value) -> Option<Result<Questions, Failure>> {
    let result = reply.get("result")?;
    if result.get("resultType").and_then(Value::as_str) != Some("input_required") {
        return None;
    }
    let bad = |why: &str| Some(Err(Failure::ServerRounds(why.to_owned())));
    let Some(requests) = result.get("inputRequests").and_then(Value::as_object) else {
        return bad("`inputRequests` is not an object");
    };
    if requests.is_empty() || requests.len() > MAX_INPUTS {
        return bad("`inputRequests` must hold 1 to 16 requests");
    }
    let mut asked = Vec::with_capacity(requests.len());
    for (key, request) in requests {
        let method = request.get("method").and_then(Value::as_str);
        // What a round may ask: the requests that need a client capability.
        let askable = |method: &&str| {
            protocol::Method::parse(method)
                .client_capability()
                .is_some()
        };
        let Some(method) = method.filter(askable) else {
            return bad("an input request is not sampling, elicitation or roots");
        };
        let id = format!(
            "portcullis-round-{}",
            QUESTIONS.fetch_add(1, Ordering::Relaxed)
        );
        let mut message = protocol::request(json!(id), method, json!({}));
        if let Some(params) = request.get("params") {
            message.put(&["params"], params.clone());
        }
        asked.push((key.clone(), message));
    }
    let state = match result.get("requestState") {
        None => None,
        Some(Value::String(state)) => Some(Value::from(state.as_str())),
        Some(_) => return bad("`requestState` is not a string"),
    };
    Some(Ok((asked, state)))
}

impl Gateway {
    /// `reply`, the server's answer to `call`, carried to its end: while it
    /// is `input_required`, its questions are put to the client and the
    /// request is sent again with the answers. The last reply, with the
    /// server's id.
    pub(super) async fn through_rounds(
        self: &Arc<Self>,
        call: RoundCall<'_>,
        reply: Value,
        client_id: &Value,
    ) -> Result<Value, Failure> {
        let deadline = call.deadline;
        let (server, after) = (
            call.upstream.name().to_string(),
            call.upstream.config().call_timeout,
        );
        // Past it, what is in the works is dropped: a question is withdrawn
        // from the client, a request sent again is cancelled at the server;
        // the call ends as the one of them it was waiting for.
        let asking = AtomicBool::new(false);
        let rounds = self.rounds(call, reply, client_id, &asking);
        match tokio::time::timeout_at(deadline, rounds).await {
            Ok(done) => done,
            Err(_) if asking.load(Ordering::Relaxed) => Err(Failure::ServerRounds(
                "its questions were not answered within the call's time".to_owned(),
            )),
            Err(_) => Err(Failure::Upstream(crate::upstream::UpstreamError::Timeout {
                server,
                after,
            })),
        }
    }

    /// [`Gateway::through_rounds`] without its deadline; `asking` says
    /// whether it waits for the client (else for the server).
    async fn rounds(
        self: &Arc<Self>,
        call: RoundCall<'_>,
        mut reply: Value,
        client_id: &Value,
        asking: &AtomicBool,
    ) -> Result<Value, Failure> {
        let instance = self
            .servers
            .per_client(call.server)
            .then(|| call.session.client.name.clone());
        let mut rounds = 0;
        loop {
            let Some(asked) = questions(&reply) else {
                return Ok(reply);
            };
            let (asked, state) = asked?;
            if rounds == MAX_ROUNDS {
                return Err(Failure::ServerRounds(format!(
                    "more than {MAX_ROUNDS} rounds"
                )));
            }
            // Each question holds one of the server's places for requests
            // to clients while it waits, and one of the session's.
            let count = u32::try_from(asked.len()).unwrap_or(u32::MAX);
            let places = self
                .servers
                .slot(call.server)
                .and_then(|slot| slot.per_server.question_places(asked.len()));
            let session_places = call
                .session
                .server_requests
                .clone()
                .try_acquire_many_owned(count)
                .ok();
            let client_places = self
                .servers
                .slot(call.server)
                .map(|slot| slot.per_server.client_places(&call.session.client.name))
                .and_then(|places| places.try_acquire_many_owned(count).ok());
            let (Some(_places), Some(_session_places), Some(_client_places)) =
                (places, session_places, client_places)
            else {
                return Err(Failure::ServerRounds(
                    "the server has too many requests to clients waiting".to_owned(),
                ));
            };
            let mut answers: futures_util::stream::FuturesUnordered<_> = asked
                .iter()
                .enumerate()
                .map(|(at, (_, message))| {
                    let (session, upstream) = (call.session, call.upstream);
                    let from = (call.server, instance.clone());
                    let asking = self.put_to_client(
                        from,
                        upstream,
                        session,
                        message.clone(),
                        Some(client_id),
                    );
                    async move { (at, asking.await) }
                })
                .collect();
            let mut responses = Map::new();
            asking.store(true, Ordering::Relaxed);
            loop {
                let next = tokio::select! {
                    next = answers.next() => next,
                    () = call.cancel.cancelled() => return Err(Failure::Cancelled),
                };
                let Some((at, answer)) = next else {
                    break;
                };
                let Some((key, message)) = asked.get(at) else {
                    continue;
                };
                // The first question not answered with a result ends the
                // call (the others are withdrawn from the client).
                let Some(result) = answer.get("result") else {
                    let method = protocol::method(message).unwrap_or_default();
                    let said = answer
                        .at(&["error", "message"])
                        .and_then(Value::as_str)
                        .unwrap_or("no result");
                    return Err(Failure::ServerRounds(format!(
                        "its `{method}` was not answered: {}",
                        protocol::cut(said, 200)
                    )));
                };
                responses.insert(key.clone(), result.clone());
            }
            asking.store(false, Ordering::Relaxed);
            let again = Call {
                message: call.sent.clone(),
                origin: Some(call.origin.clone()),
                log_level: call.session.log_level(),
                round: Some(Round {
                    capabilities: call.capabilities.clone(),
                    answers: Some((responses, state)),
                }),
            };
            reply = self
                .send_call(
                    call.session,
                    call.server,
                    call.upstream,
                    again,
                    client_id,
                    call.cancel,
                )
                .await?;
            rounds += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input_required(requests: Value, state: Value) -> Value {
        json!({ "jsonrpc": "2.0", "id": 1, "result": {
            "resultType": "input_required", "inputRequests": requests, "requestState": state } })
    }

    #[test]
    fn a_server_is_told_the_capabilities_a_round_can_use_and_their_keys_alone() {
        let declared = json!({
            "sampling": { "tools": {}, "x-big": "a".repeat(64) },
            "elicitation": { "form": {}, "url": { "x": 1 } },
            "experimental": { "x": {} },
            "roots": null,
        });
        assert_eq!(
            Value::Object(told_capabilities(&declared)),
            json!({ "sampling": { "tools": {} }, "elicitation": { "form": {} } })
        );
    }

    #[test]
    fn only_well_formed_questions_of_the_three_kinds_are_asked() {
        let complete = json!({ "jsonrpc": "2.0", "id": 1, "result": { "resultType": "complete" } });
        assert!(questions(&complete).is_none());
        let ok = input_required(
            json!({ "a": { "method": "elicitation/create", "params": { "message": "hi" } } }),
            json!("s1"),
        );
        let (asked, state) = match questions(&ok) {
            Some(Ok(found)) => found,
            other => panic!("{other:?}"),
        };
        assert_eq!(state, Some(json!("s1")));
        assert_eq!(asked[0].0, "a");
        let id = asked[0].1["id"].as_str().unwrap_or_default();
        assert!(id.starts_with("portcullis-round-"), "{id}");
        assert_eq!(asked[0].1["params"]["message"], "hi");
        let many: Map<String, Value> = (0..=MAX_INPUTS)
            .map(|n| (n.to_string(), json!({ "method": "roots/list" })))
            .collect();
        for bad in [
            input_required(json!({ "a": { "method": "ping" } }), json!("s")),
            input_required(json!({ "a": { "method": "tools/call" } }), json!("s")),
            input_required(json!({}), json!("s")),
            input_required(json!([]), json!("s")),
            input_required(Value::Object(many), json!("s")),
            input_required(json!({ "a": { "method": "roots/list" } }), json!(7)),
        ] {
            assert!(matches!(questions(&bad), Some(Err(_))), "{bad}");
        }
    }
}
