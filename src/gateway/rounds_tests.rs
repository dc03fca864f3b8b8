//! Multi round-trip requests, in-process: a handshake server's question
//! during a 2026-07-28 client's call becomes an `input_required` round, and
//! the client's retry carries the answer back; every retry that is not the
//! right client's continuation of the right request is refused, and the
//! call goes on waiting for the right one.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::Session;
use super::harness::{Harness, request, spawn_handle};
use crate::protocol::{self, meta};
use crate::upstream::scripted::ScriptedServer;

/// A call timeout far past anything a test waits for, so a parked call
/// does not expire under a test that asserts it is still there, however
/// slow the machine.
const CONFIG: &str = "[proxy]\ncall_timeout = \"60s\"\n\
    [[clients]]\nname = \"alice\"\n[[clients]]\nname = \"bob\"\n\
    [[servers]]\nname = \"files\"\nprocess = { command = \"scripted\" }\n";

/// [`CONFIG`] with a call timeout a test waits out: long enough for the
/// server's question to become a round first, short enough to wait for.
const EXPIRING: &str = "[proxy]\ncall_timeout = \"5s\"\n\
    [[clients]]\nname = \"alice\"\n[[clients]]\nname = \"bob\"\n\
    [[servers]]\nname = \"files\"\nprocess = { command = \"scripted\" }\n";

/// A 2026-07-28 request with `extra` in its params (a retry's answers and
/// state).
fn modern(id: i64, method: &str, mut params: Value) -> Value {
    params["_meta"] = json!({ meta::PROTOCOL_VERSION: protocol::MODERN_VERSION,
        meta::CLIENT_CAPABILITIES: { "sampling": {} }, "progressToken": id });
    request(id, method, params)
}

fn read_call(id: i64, path: &str) -> Value {
    modern(
        id,
        "tools/call",
        json!({ "name": "files__read", "arguments": { "path": path } }),
    )
}

/// `call` retried as `id` with `answers` and `state`.
fn retry(call: &Value, id: i64, answers: Value, state: &Value) -> Value {
    let mut retried = call.clone();
    retried["id"] = json!(id);
    retried["params"]["_meta"]["progressToken"] = json!(id);
    retried["params"]["inputResponses"] = answers;
    retried["params"]["requestState"] = state.clone();
    retried
}

fn sampled(text: &str) -> Value {
    json!({ "role": "assistant", "content": { "type": "text", "text": text }, "model": "m" })
}

async fn started() -> (Harness, ScriptedServer) {
    started_with(CONFIG).await
}

async fn started_with(config: &str) -> (Harness, ScriptedServer) {
    let harness = Harness::new(config);
    let starting = harness.start();
    let files = harness
        .serve(
            "files",
            json!([{ "name": "read", "inputSchema": { "type": "object" } }]),
        )
        .await;
    if let Err(err) = starting.await {
        panic!("the gateway did not start: {err}");
    }
    (harness, files)
}

/// The server's next message is its request `id` refused with `code`.
async fn refused_at_server(files: &mut ScriptedServer, id: &str, code: i64) {
    let got = files.next_received().await;
    assert_eq!(got["id"], id, "{got}");
    assert_eq!(got["error"]["code"], code, "{got}");
}

/// The server answers the call it was sent (`seen`); the client's reply
/// is complete.
async fn completes(
    files: &mut ScriptedServer,
    seen: &Value,
    answer: tokio::task::JoinHandle<Option<Value>>,
) {
    files.reply(seen, json!({ "content": [] })).await;
    let done = answer.await.ok().flatten().unwrap_or_default();
    assert_eq!(done["result"]["resultType"], "complete", "{done}");
}

fn alice(harness: &Harness) -> Arc<Session> {
    harness
        .stateless_session_with("alice", json!({ "sampling": {} }))
        .0
}

/// Sends `call`, has the server ask a sampling question as `srv-1` during
/// it: what the server received, and the client's `input_required` reply.
async fn asked(harness: &Harness, files: &mut ScriptedServer, call: &Value) -> (Value, Value) {
    let session = alice(harness);
    let answer = spawn_handle(harness, &session, call.clone());
    // (What the server is told of an earlier call's end may come first.)
    let seen = loop {
        let got = files.next_received().await;
        if got["method"] == "tools/call" {
            break got;
        }
    };
    let question = json!({ "jsonrpc": "2.0", "id": "srv-1", "method": "sampling/createMessage",
        "params": { "messages": [], "maxTokens": 5,
            "_meta": { meta::SUBSCRIPTION_ID: 1, "x-server": 2 } } });
    files.send_on_stream_of(&seen, question).await;
    let Ok(Some(reply)) = answer.await else {
        panic!("the first round is answered");
    };
    // The request that began the call has ended; the call has not.
    harness.gateway.close_stateless(&session);
    (seen, reply)
}

/// The only key of a round's `inputRequests`.
fn only_key(reply: &Value) -> String {
    let requests = reply["result"]["inputRequests"]
        .as_object()
        .unwrap_or_else(|| panic!("inputRequests: {reply}"));
    assert_eq!(requests.len(), 1, "{reply}");
    requests.keys().next().cloned().unwrap_or_default()
}

#[tokio::test]
async fn a_servers_question_mid_call_is_a_round_and_its_answer_goes_back_with_the_servers_id() {
    let (harness, mut files) = started().await;
    let call = read_call(1, "a");
    let (seen, round) = asked(&harness, &mut files, &call).await;
    let result = &round["result"];
    assert_eq!(round["id"], 1, "{round}");
    assert_eq!(result["resultType"], "input_required", "{round}");
    let key = only_key(&round);
    let question = &result["inputRequests"][&key];
    assert_eq!(question["method"], "sampling/createMessage", "{round}");
    assert!(question.get("id").is_none(), "{round}");
    // The server's own `_meta` keys go on; the protocol's are not its to set.
    assert_eq!(question["params"]["_meta"]["x-server"], 2, "{round}");
    assert!(
        question["params"]["_meta"]
            .get(meta::SUBSCRIPTION_ID)
            .is_none()
    );
    let state = result["requestState"].clone();
    assert!(state.as_str().is_some_and(|s| s.len() >= 32), "{round}");
    assert!(
        files.try_received().is_none(),
        "the parked call was not cancelled"
    );

    let answers = json!({ key.clone(): sampled("yes") });
    let (session, mut inbox) = harness.stateless_session_with("alice", json!({ "sampling": {} }));
    let continued = spawn_handle(&harness, &session, retry(&call, 2, answers.clone(), &state));
    let relayed = files.next_received().await;
    assert_eq!(relayed["id"], "srv-1", "back with the server's own id");
    assert_eq!(relayed["result"]["content"]["text"], "yes");
    // The call's progress reaches the retry, under the retry's token.
    let progress = protocol::notification(
        "notifications/progress",
        json!({ "progressToken": seen["params"]["_meta"]["progressToken"], "progress": 1 }),
    );
    files.send_on_stream_of(&seen, progress).await;
    let told = inbox.recv().await.unwrap_or_default();
    assert_eq!(told["method"], "notifications/progress", "{told}");
    assert_eq!(told["params"]["progressToken"], 2, "{told}");
    files
        .reply(
            &seen,
            json!({ "content": [{ "type": "text", "text": "read a" }] }),
        )
        .await;
    let Ok(Some(done)) = continued.await else {
        panic!("the retry is answered");
    };
    harness.gateway.close_stateless(&session);
    assert_eq!(done["id"], 2, "the retry's own id: {done}");
    assert_eq!(done["result"]["resultType"], "complete", "{done}");
    assert_eq!(done["result"]["content"][0]["text"], "read a");

    // Used once: the same state again is refused.
    let session = alice(&harness);
    let again = harness
        .handle(&session, retry(&call, 3, answers, &state))
        .await
        .unwrap_or_default();
    harness.gateway.close_stateless(&session);
    assert_eq!(again["error"]["code"], protocol::code::INVALID_PARAMS);
    let records = harness.exchanges().await;
    let calls: Vec<_> = records
        .iter()
        .filter(|r| r.method == "tools/call")
        .collect();
    assert_eq!(
        calls.len(),
        2,
        "the call, and the refused replay: {records:?}"
    );
    assert_eq!(calls[0].decision, "allow", "{records:?}");
    assert_ne!(calls[1].decision, "allow", "{records:?}");
    assert!(
        records
            .iter()
            .any(|r| r.method == "sampling/createMessage" && r.decision == "allow"),
        "the server's question is recorded: {records:?}"
    );
    // Every session of the call is gone.
    assert_eq!(harness.gateway.sessions().count(), 0);
}

#[tokio::test]
async fn a_retry_not_the_clients_own_continuation_is_refused_and_the_call_waits_on() {
    let (harness, mut files) = started().await;
    let call = read_call(1, "a");
    let (seen, round) = asked(&harness, &mut files, &call).await;
    let key = only_key(&round);
    let state = round["result"]["requestState"].clone();
    let answers = json!({ key.clone(): sampled("yes") });
    let refused = |reply: Option<Value>| {
        let reply = reply.unwrap_or_default();
        assert_eq!(
            reply["error"]["code"],
            protocol::code::INVALID_PARAMS,
            "{reply}"
        );
        reply["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    // Bob holding Alice's state: unknown to him, as any forged one.
    let (bob, _inbox) = harness.stateless_session_with("bob", json!({ "sampling": {} }));
    let bobs = harness
        .handle(&bob, retry(&call, 2, answers.clone(), &state))
        .await;
    assert!(refused(bobs).contains("unknown"));
    harness.gateway.close_stateless(&bob);
    let hostile = [
        // Another tool's arguments under the state Cedar allowed for this one.
        retry(&read_call(1, "/etc/shadow"), 3, answers.clone(), &state),
        // The answers to questions not asked, or none.
        retry(&call, 4, json!({ "other": sampled("x") }), &state),
        retry(&call, 5, json!({}), &state),
        retry(&call, 6, json!({ key.clone(): "not an object" }), &state),
        retry(&call, 7, answers.clone(), &json!("0".repeat(64))),
        retry(&call, 8, answers.clone(), &json!(7)),
    ];
    for (n, message) in hostile.into_iter().enumerate() {
        let session = alice(&harness);
        let reply = harness.handle(&session, message).await;
        let said = refused(reply);
        assert!(!said.is_empty(), "hostile retry {n}");
        harness.gateway.close_stateless(&session);
    }
    assert!(files.try_received().is_none(), "nothing reached the server");
    // The right retry still continues the call.
    let session = alice(&harness);
    let continued = spawn_handle(&harness, &session, retry(&call, 9, answers, &state));
    let relayed = files.next_received().await;
    assert_eq!(relayed["id"], "srv-1");
    files.reply(&seen, json!({ "content": [] })).await;
    let Ok(Some(done)) = continued.await else {
        panic!("the right retry is answered");
    };
    harness.gateway.close_stateless(&session);
    assert_eq!(done["id"], 9, "{done}");
    let records = harness.exchanges().await;
    let refusals = records
        .iter()
        .filter(|r| r.method == "tools/call" && r.decision != "allow")
        .count();
    assert_eq!(refusals, 7, "each hostile retry is recorded: {records:?}");
}

#[tokio::test]
async fn a_call_nobody_continues_expires_and_one_whose_retry_hangs_up_is_cancelled() {
    let (harness, mut files) = started_with(EXPIRING).await;
    // Nobody retries: within the server's call timeout the call is ended,
    // and its state is good for nothing after.
    let call = read_call(1, "a");
    let (_seen, round) = asked(&harness, &mut files, &call).await;
    let key = only_key(&round);
    let state = round["result"]["requestState"].clone();
    // The server's question is refused (no answer came in time).
    let refused_question = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let got = files.next_received().await;
            if got["id"] == "srv-1" {
                return got;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the call did not expire"));
    assert!(
        refused_question.get("error").is_some(),
        "{refused_question}"
    );
    // The session of the call is gone (the call ended at its server).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while harness.gateway.sessions().count() != 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(harness.gateway.sessions().count(), 0);
    let session = alice(&harness);
    let late = harness
        .handle(
            &session,
            retry(&call, 2, json!({ key: sampled("late") }), &state),
        )
        .await
        .unwrap_or_default();
    harness.gateway.close_stateless(&session);
    assert_eq!(
        late["error"]["code"],
        protocol::code::INVALID_PARAMS,
        "{late}"
    );

    // A retry whose client hangs up while the call goes on: the call is
    // cancelled at its server. A gateway of its own, whose calls do not
    // expire while the test looks.
    let (harness, mut files) = started().await;
    let call = read_call(3, "b");
    let (seen, round) = asked(&harness, &mut files, &call).await;
    let key = only_key(&round);
    let state = round["result"]["requestState"].clone();
    let session = alice(&harness);
    let continued = spawn_handle(
        &harness,
        &session,
        retry(&call, 4, json!({ key: sampled("ok") }), &state),
    );
    let relayed = files.next_received().await;
    assert_eq!(relayed["id"], "srv-1", "{relayed}");
    harness.gateway.close_stateless(&session);
    assert_eq!(continued.await.ok().flatten(), None);
    loop {
        let got = files.next_received().await;
        if got["method"] == "notifications/cancelled" && got["params"]["requestId"] == seen["id"] {
            break;
        }
    }
}

#[tokio::test]
async fn the_calls_a_connection_parked_end_with_it() {
    let (harness, mut files) = started().await;
    let session = alice(&harness);
    // What a stdio connection's requests all come through.
    let origin = session.outlet();
    let call = read_call(1, "a");
    let answer = spawn_handle(&harness, &session, call);
    let seen = files.next_received().await;
    let question = json!({ "jsonrpc": "2.0", "id": "srv-1", "method": "sampling/createMessage",
        "params": { "messages": [], "maxTokens": 5 } });
    files.send_on_stream_of(&seen, question).await;
    let round = answer.await.ok().flatten().unwrap_or_default();
    assert_eq!(round["result"]["resultType"], "input_required", "{round}");
    harness.gateway.close_stateless(&session);
    // Another connection's end leaves it waiting.
    let (other, _inbox) = harness.stateless_session("alice");
    harness.gateway.end_parked_from(&other.outlet());
    harness.gateway.close_stateless(&other);
    assert!(files.try_received().is_none(), "another's end cancelled it");
    harness.gateway.end_parked_from(&origin);
    loop {
        let got = files.next_received().await;
        if got["method"] == "notifications/cancelled" && got["params"]["requestId"] == seen["id"] {
            break;
        }
    }
    assert_eq!(harness.gateway.sessions().count(), 0);
}

#[tokio::test]
async fn a_server_asks_a_round_only_what_a_round_can_carry() {
    let (harness, mut files) = started().await;
    let session = alice(&harness);
    let answer = spawn_handle(&harness, &session, read_call(1, "a"));
    let seen = files.next_received().await;
    // A ping is answered by the proxy (its upstream); another method is
    // refused; neither makes a round.
    for (id, method) in [("srv-ping", "ping"), ("srv-list", "tools/list")] {
        let asked = json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": {} });
        files.send_on_stream_of(&seen, asked).await;
        if method == "ping" {
            let got = files.next_received().await;
            assert_eq!(got["id"], id, "{got}");
            assert_eq!(got["result"], json!({}), "{got}");
        } else {
            refused_at_server(&mut files, id, protocol::code::METHOD_NOT_FOUND).await;
        }
    }
    completes(&mut files, &seen, answer).await;
    harness.gateway.close_stateless(&session);
}

#[tokio::test]
async fn a_client_that_declared_nothing_a_server_can_ask_gets_no_round() {
    let (harness, mut files) = started().await;
    let (session, mut inbox) = harness.stateless_session_with("alice", json!({}));
    let mut call = read_call(1, "a");
    call["params"]["_meta"][meta::CLIENT_CAPABILITIES] = json!({});
    let answer = spawn_handle(&harness, &session, call);
    let seen = files.next_received().await;
    // Each question refused at the server as the client lacking it (an
    // unknown method as unknown); none reaches the client.
    for (id, method) in [
        ("q-sampling", "sampling/createMessage"),
        ("q-elicitation", "elicitation/create"),
        ("q-roots", "roots/list"),
        ("q-list", "tools/list"),
    ] {
        let asked = json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": {} });
        files.send_on_stream_of(&seen, asked).await;
        refused_at_server(&mut files, id, protocol::code::METHOD_NOT_FOUND).await;
    }
    completes(&mut files, &seen, answer).await;
    assert!(inbox.try_recv().is_err(), "the client was sent something");
    harness.gateway.close_stateless(&session);
    assert_eq!(harness.gateway.sessions().count(), 0);
}

#[test]
fn a_retry_repeats_the_params_whatever_their_order_and_nothing_else() {
    use super::rounds::round_params;
    let first = json!({ "params": { "name": "t", "arguments": { "a": 1, "b": [1.5, "x"] } } });
    let reordered = json!({ "params": { "arguments": { "b": [1.5, "x"], "a": 1 }, "name": "t",
        "_meta": { "progressToken": 9 }, "inputResponses": { "1": {} }, "requestState": "s" } });
    assert_eq!(round_params(&first), round_params(&reordered));
    for other in [
        json!({ "params": { "name": "t", "arguments": { "a": 1.0, "b": [1.5, "x"] } } }),
        json!({ "params": { "name": "t", "arguments": { "a": 1, "b": ["x", 1.5] } } }),
        json!({ "params": { "name": "t", "arguments": { "a": "1", "b": [1.5, "x"] } } }),
        json!({ "params": { "name": "t", "arguments": { "a": 1, "b": [1.5, "x"], "c": null } } }),
        json!({ "params": { "name": "t2", "arguments": { "a": 1, "b": [1.5, "x"] } } }),
        json!({ "params": { "name": "t", "arguments": { "a\":1,\"b": 1 } } }),
    ] {
        assert_ne!(round_params(&first), round_params(&other), "{other}");
    }
}

#[tokio::test]
async fn a_client_holds_a_bounded_number_of_questions() {
    let (harness, mut files) = started().await;
    let mut parked = Vec::new();
    for n in 0..=super::rounds::QUESTIONS_PER_CLIENT {
        let session = alice(&harness);
        let answer = spawn_handle(&harness, &session, read_call(n as i64, "a"));
        let seen = files.next_received().await;
        assert_eq!(seen["method"], "tools/call", "{seen}");
        let id = format!("q-{n}");
        let question = json!({ "jsonrpc": "2.0", "id": id, "method": "sampling/createMessage",
            "params": { "messages": [], "maxTokens": 5 } });
        files.send_on_stream_of(&seen, question).await;
        if n < super::rounds::QUESTIONS_PER_CLIENT {
            let round = answer.await.ok().flatten().unwrap_or_default();
            assert_eq!(round["result"]["resultType"], "input_required", "{round}");
            harness.gateway.close_stateless(&session);
            parked.push(round);
            continue;
        }
        // One too many: refused at the server, which then ends its call.
        refused_at_server(&mut files, &id, protocol::code::CLIENT_UNAVAILABLE).await;
        completes(&mut files, &seen, answer).await;
        harness.gateway.close_stateless(&session);
    }
    // Another client's places are its own.
    let (bob, _inbox) = harness.stateless_session_with("bob", json!({ "sampling": {} }));
    let answer = spawn_handle(&harness, &bob, read_call(99, "b"));
    let seen = files.next_received().await;
    let question = json!({ "jsonrpc": "2.0", "id": "bob-q", "method": "sampling/createMessage",
        "params": { "messages": [], "maxTokens": 5 } });
    files.send_on_stream_of(&seen, question).await;
    let round = answer.await.ok().flatten().unwrap_or_default();
    assert_eq!(round["result"]["resultType"], "input_required", "{round}");
    harness.gateway.close_stateless(&bob);
    assert_eq!(parked.len(), super::rounds::QUESTIONS_PER_CLIENT);
}

/// Answers the list requests a server gets (a read of its tools, its
/// prompt `greet`, its resource `files://a`); the first other message.
async fn past_lists(files: &mut ScriptedServer) -> Option<Value> {
    let message = files.next_received().await;
    let result = match protocol::method(&message) {
        Some("prompts/list") => json!({ "prompts": [{ "name": "greet" }] }),
        Some("resources/list") => json!({ "resources": [{ "uri": "files://a", "name": "a" }] }),
        Some("resources/templates/list") => json!({ "resourceTemplates": [] }),
        _ => return Some(message),
    };
    files.reply(&message, result).await;
    None
}

async fn next_not_a_list(files: &mut ScriptedServer) -> Value {
    loop {
        if let Some(message) = past_lists(files).await {
            return message;
        }
    }
}

#[tokio::test]
async fn a_read_and_a_prompt_take_rounds_as_a_call_does() {
    let harness = Harness::new(CONFIG);
    let mut starting = harness.start();
    let mut files = harness.connections("files", None).next().await;
    files.answer_lists(json!([{ "name": "read", "inputSchema": { "type": "object" } }]));
    files
        .handshake_with(json!({ "protocolVersion": protocol::LATEST_VERSION,
            "capabilities": { "tools": {}, "prompts": {}, "resources": {} },
            "serverInfo": { "name": "files", "version": "1" } }))
        .await;
    loop {
        tokio::select! {
            started = &mut starting => {
                if let Err(err) = started {
                    panic!("the gateway did not start: {err}");
                }
                break;
            }
            unexpected = past_lists(&mut files) => {
                if let Some(message) = unexpected {
                    panic!("only lists are read at start: {message}");
                }
            }
        }
    }
    let capabilities = json!({ "roots": {}, "elicitation": {} });
    let asks = [
        (
            "resources/read",
            json!({ "uri": "files://a" }),
            "roots/list",
            json!({ "roots": [{ "uri": "file:///home" }] }),
        ),
        (
            "prompts/get",
            json!({ "name": "files__greet", "arguments": {} }),
            "elicitation/create",
            json!({ "action": "accept", "content": { "name": "Ada" } }),
        ),
    ];
    for (n, (method, params, question, answer)) in asks.into_iter().enumerate() {
        let id = 10 * n as i64;
        let mut first = request(id, method, params);
        first["params"]["_meta"] = json!({ meta::PROTOCOL_VERSION: protocol::MODERN_VERSION,
            meta::CLIENT_CAPABILITIES: capabilities });
        let (session, _inbox) = harness.stateless_session_with("alice", capabilities.clone());
        let answering = spawn_handle(&harness, &session, first.clone());
        let seen = next_not_a_list(&mut files).await;
        assert_eq!(seen["method"], method, "{seen}");
        let asked = json!({ "jsonrpc": "2.0", "id": "srv-q", "method": question, "params": {} });
        files.send_on_stream_of(&seen, asked).await;
        let round = answering.await.ok().flatten().unwrap_or_default();
        harness.gateway.close_stateless(&session);
        let key = only_key(&round);
        assert_eq!(round["result"]["inputRequests"][&key]["method"], question);
        let state = round["result"]["requestState"].clone();
        let (session, _inbox) = harness.stateless_session_with("alice", capabilities.clone());
        let answers = json!({ key: answer.clone() });
        let continued = spawn_handle(&harness, &session, retry(&first, id + 1, answers, &state));
        let relayed = next_not_a_list(&mut files).await;
        assert_eq!(relayed["id"], "srv-q", "{relayed}");
        assert_eq!(relayed["result"], answer, "{relayed}");
        let result = match method {
            "resources/read" => json!({ "contents": [{ "uri": "files://a", "text": "a" }] }),
            _ => json!({ "messages": [] }),
        };
        files.reply(&seen, result).await;
        let done = continued.await.ok().flatten().unwrap_or_default();
        harness.gateway.close_stateless(&session);
        assert_eq!(done["id"], id + 1, "{done}");
        assert_eq!(done["result"]["resultType"], "complete", "{done}");
    }
}

/// A 2026-07-28 server `files` (with `extra` in its `[[servers]]` entry),
/// started: its `server/discover` answered.
pub(super) async fn stateless_server_with(
    extra: &str,
) -> (Harness, crate::upstream::scripted::ScriptedServer) {
    let harness = Harness::new(&format!(
        "[[clients]]\nname = \"alice\"\n\
         [[servers]]\nname = \"files\"\nprotocol = \"2026-07-28\"\nprocess = {{ command = \"scripted\" }}\n{extra}"
    ));
    let starting = harness.start();
    let mut files = harness.connections("files", None).next().await;
    // No handshake: `server/discover`, with the proxy's envelope.
    let discover = files.next_received().await;
    assert_eq!(discover["method"], "server/discover", "{discover}");
    let sent_meta = &discover["params"]["_meta"];
    assert_eq!(sent_meta[meta::PROTOCOL_VERSION], protocol::MODERN_VERSION);
    assert_eq!(
        sent_meta[meta::CLIENT_CAPABILITIES],
        json!({}),
        "{discover}"
    );
    files.answer_lists(json!([{ "name": "read", "inputSchema": { "type": "object" } }]));
    files
        .reply(
            &discover,
            json!({ "supportedVersions": [protocol::MODERN_VERSION],
                "capabilities": { "tools": {} },
                "_meta": { meta::SERVER_INFO: { "name": "files", "version": "1" } } }),
        )
        .await;
    if let Err(err) = starting.await {
        panic!("the gateway did not start: {err}");
    }
    (harness, files)
}

/// A handshake session of alice's, its `files__read` call on a 2026-07-28
/// server `files` (`extra` in its entry) sent: the call in the works.
pub(super) struct LegacyCall {
    pub(super) harness: Harness,
    pub(super) files: ScriptedServer,
    pub(super) legacy: Arc<Session>,
    pub(super) inbox: tokio::sync::mpsc::UnboundedReceiver<Value>,
    pub(super) answer: tokio::task::JoinHandle<Option<Value>>,
}

pub(super) async fn legacy_call(extra: &str) -> LegacyCall {
    let (harness, files) = stateless_server_with(extra).await;
    let (legacy, inbox) = harness.initialized_session("alice").await;
    let call = request(
        1,
        "tools/call",
        json!({ "name": "files__read", "arguments": {} }),
    );
    let answer = spawn_handle(&harness, &legacy, call);
    LegacyCall {
        harness,
        files,
        legacy,
        inbox,
        answer,
    }
}

impl LegacyCall {
    /// Until the call ends: the server answers each request of it, after
    /// `delay`, with another round (a `roots/list`), and the client answers
    /// each question at once. The call's reply, and how many times the
    /// server was sent the call.
    pub(super) async fn round_after_round(&mut self, delay: Duration) -> (Value, usize) {
        let mut sent = 0;
        let reply = loop {
            tokio::select! {
                done = &mut self.answer => break done.ok().flatten().unwrap_or_default(),
                received = self.files.next_received() => {
                    if received.get("id").is_none() {
                        continue;
                    }
                    sent += 1;
                    tokio::time::sleep(delay).await;
                    let more = json!({ "resultType": "input_required",
                        "inputRequests": { "r": { "method": "roots/list" } } });
                    self.files.reply(&received, more).await;
                }
                told = self.inbox.recv() => {
                    let told = told.unwrap_or_default();
                    if told["method"] == "roots/list" {
                        let roots = json!({ "jsonrpc": "2.0", "id": told["id"].clone(),
                            "result": { "roots": [] } });
                        self.harness.handle(&self.legacy, roots).await;
                    }
                }
            }
        };
        (reply, sent)
    }
}

#[tokio::test]
async fn a_2026_07_28_servers_rounds_end_with_the_calls_time() {
    let mut call = legacy_call("timeout = \"1s\"\n").await;
    // Each round well within the second the call has; together past it
    // (ten of them would take three).
    let (reply, sent) = call.round_after_round(Duration::from_millis(300)).await;
    let harness = call.harness;
    // Out of time while the server had the request (mostly) or while the
    // client was being asked (in the moment its answer took).
    let code = reply["error"]["code"].as_i64();
    let said = reply["error"]["message"].as_str().unwrap_or_default();
    let timed_out = code == Some(protocol::code::UPSTREAM_TIMEOUT)
        || (code == Some(protocol::code::INTERNAL_ERROR) && said.contains("not answered"));
    assert!(timed_out, "{reply}");
    assert!(
        sent < 11,
        "ended by the ten-round limit, not its time: {reply}"
    );
    let records = harness.exchanges().await;
    let recorded = records
        .iter()
        .find(|r| r.method == "tools/call")
        .unwrap_or_else(|| panic!("the call is recorded: {records:?}"));
    assert_eq!(recorded.decision, "error", "{records:?}");
}

#[tokio::test]
async fn a_question_unanswered_past_the_calls_time_ends_the_call_and_is_withdrawn() {
    let LegacyCall {
        mut files,
        mut inbox,
        answer,
        ..
    } = legacy_call("timeout = \"5s\"\n").await;
    let sent = files.next_received().await;
    let asks = json!({ "resultType": "input_required",
        "inputRequests": { "r": { "method": "roots/list" } } });
    // Asked a second after the call went: the call's time runs out a second
    // before the question's own, and the question has four seconds to reach
    // the client before either.
    tokio::time::sleep(Duration::from_secs(1)).await;
    files.reply(&sent, asks).await;
    // The client is asked and never answers.
    let asked = tokio::time::timeout(Duration::from_secs(30), inbox.recv())
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("the client was not asked"));
    assert_eq!(asked["method"], "roots/list", "{asked}");
    let reply = answer.await.ok().flatten().unwrap_or_default();
    assert_eq!(
        reply["error"]["code"],
        protocol::code::INTERNAL_ERROR,
        "{reply}"
    );
    let said = reply["error"]["message"].as_str().unwrap_or_default();
    assert!(
        said.contains("not answered within the call's time"),
        "{said}"
    );
    // The question is withdrawn from the client; the server is not sent
    // the request again.
    let withdrawn = tokio::time::timeout(Duration::from_secs(30), inbox.recv())
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("the question was not withdrawn from the client"));
    assert_eq!(
        withdrawn["method"], "notifications/cancelled",
        "{withdrawn}"
    );
    assert_eq!(withdrawn["params"]["requestId"], asked["id"], "{withdrawn}");
    assert!(
        files.try_received().is_none(),
        "the server was sent it again"
    );
}
