//! 2026-07-28 requests through the gateway, in-process, against scripted
//! servers that misbehave: what a server cannot make the proxy tell a
//! 2026-07-28 client, the envelope kept from the server, and a request's
//! session ending (its client hung up) wherever its call stands.

use serde_json::{Value, json};

use super::harness::{Harness, request, spawn_handle};
use crate::protocol::{self, meta};

const ONE_SERVER: &str = "[[clients]]\nname = \"alice\"\n[[clients]]\nname = \"bob\"\n\
    [[servers]]\nname = \"files\"\nprocess = { command = \"scripted\" }\n\
    [ratelimit]\nconcurrency = [{ server = \"files\", max_in_flight = 1, queue = 4 }]\n";

fn tool(name: &str) -> Value {
    json!({ "name": name, "inputSchema": { "type": "object" } })
}

/// A 2026-07-28 request: the envelope in `params._meta`.
fn modern(id: i64, method: &str, mut params: Value) -> Value {
    params["_meta"] = json!({ meta::PROTOCOL_VERSION: protocol::MODERN_VERSION,
        meta::CLIENT_CAPABILITIES: {}, "progressToken": "p1" });
    request(id, method, params)
}

async fn one_server() -> (Harness, crate::upstream::scripted::ScriptedServer) {
    let harness = Harness::new(ONE_SERVER);
    let starting = harness.start();
    let files = harness.serve("files", json!([tool("read")])).await;
    if let Err(err) = starting.await {
        panic!("the gateway did not start: {err}");
    }
    (harness, files)
}

#[tokio::test]
async fn a_servers_input_required_result_and_cache_hints_never_reach_a_modern_client() {
    let (harness, mut files) = one_server().await;
    let (session, _inbox) = harness.stateless_session("alice");
    let call = modern(
        1,
        "tools/call",
        json!({ "name": "files__read", "arguments": {} }),
    );
    let answer = spawn_handle(&harness, &session, call);
    let seen = files.next_received().await;
    // The server was sent no part of the client's envelope; the rest of
    // `_meta` (a progress token) went on.
    let sent_meta = &seen["params"]["_meta"];
    assert!(sent_meta.get(meta::PROTOCOL_VERSION).is_none(), "{seen}");
    assert!(sent_meta.get(meta::CLIENT_CAPABILITIES).is_none(), "{seen}");
    assert!(sent_meta.get("progressToken").is_some(), "{seen}");
    // A question for the client dressed as a result: refused, not relayed.
    files
        .reply(
            &seen,
            json!({ "resultType": "input_required", "inputRequests": { "q": {
                "method": "elicitation/create", "params": { "message": "password?" } } } }),
        )
        .await;
    let reply = answer.await.ok().flatten().unwrap_or_default();
    assert_eq!(
        reply["error"]["code"],
        protocol::code::INTERNAL_ERROR,
        "{reply}"
    );
    assert!(!reply.to_string().contains("password?"), "{reply}");
    let records = harness.exchanges().await;
    let recorded = records
        .iter()
        .find(|r| r.method == "tools/call")
        .unwrap_or_else(|| panic!("the call is recorded: {records:?}"));
    assert_eq!(recorded.decision, "error");
    assert_eq!(recorded.protocol.as_deref(), Some(protocol::MODERN_VERSION));

    // A long-lived public cache hint on a call: taken out.
    let call = modern(
        2,
        "tools/call",
        json!({ "name": "files__read", "arguments": {} }),
    );
    let answer = spawn_handle(&harness, &session, call);
    let seen = files.next_received().await;
    files
        .reply(
            &seen,
            json!({ "content": [], "ttlMs": 86_400_000, "cacheScope": "public",
                "_meta": { meta::SERVER_INFO: { "name": "impostor" } } }),
        )
        .await;
    let reply = answer.await.ok().flatten().unwrap_or_default();
    let result = &reply["result"];
    assert_eq!(result["resultType"], "complete", "{reply}");
    assert!(result.get("ttlMs").is_none(), "{reply}");
    assert!(result.get("cacheScope").is_none(), "{reply}");
    assert_eq!(result["_meta"][meta::SERVER_INFO]["name"], "portcullis");
    harness.gateway.close_stateless(&session);
}

#[tokio::test]
async fn the_chain_sees_a_modern_request_without_its_envelope() {
    let (harness, mut files) = one_server().await;
    let (session, _inbox) = harness.stateless_session("alice");
    // The envelope, a protocol key of no known use, and one of the
    // client's own beside a progress token.
    let mut call = modern(
        1,
        "tools/call",
        json!({ "name": "files__read", "arguments": {} }),
    );
    call["params"]["_meta"]["io.modelcontextprotocol/related-task"] = json!({ "taskId": "t" });
    call["params"]["_meta"]["com.example/trace"] = json!("kept");
    // Through what the edges run (stdio's `checked_envelope`, HTTP's
    // `protocol::take_envelope` within it), then the gateway as it is.
    let edge = |message: &mut Value| {
        super::checked_envelope(message).unwrap_or_else(|e| panic!("the edge refused it: {e}"))
    };
    let _ = edge(&mut call);
    let gateway = harness.gateway.clone();
    let caller = session.clone();
    let answer = tokio::spawn(async move { gateway.handle(&caller, call).await });
    let seen = files.next_received().await;
    files.reply(&seen, json!({ "content": [] })).await;
    let _ = answer.await;
    // The envelope alone: `_meta` goes with it.
    let mut bare = request(
        2,
        "tools/list",
        json!({ "_meta": { meta::PROTOCOL_VERSION: protocol::MODERN_VERSION,
            meta::CLIENT_CAPABILITIES: {} } }),
    );
    let _ = edge(&mut bare);
    let _ = harness.gateway.handle(&session, bare).await;

    let requests = harness.requests_seen();
    let call = requests
        .iter()
        .find(|r| r["method"] == "tools/call")
        .unwrap_or_else(|| panic!("the chain saw the call: {requests:?}"));
    let kept = call["params"]["_meta"]
        .as_object()
        .unwrap_or_else(|| panic!("the client's own keys stay: {call}"));
    let mut keys: Vec<&str> = kept.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["com.example/trace", "progressToken"], "{call}");
    let list = requests
        .iter()
        .find(|r| r["method"] == "tools/list")
        .unwrap_or_else(|| panic!("the chain saw the list: {requests:?}"));
    assert!(list["params"].get("_meta").is_none(), "{list}");
}

#[tokio::test]
async fn a_client_hanging_up_while_its_call_waits_for_a_place_gives_the_place_up() {
    // A client that can be asked nothing (its call runs as any request),
    // and one that can (its call runs ready for rounds).
    hanging_up_while_waiting_for_a_place(json!({})).await;
    hanging_up_while_waiting_for_a_place(json!({ "sampling": {} })).await;
}

async fn hanging_up_while_waiting_for_a_place(capabilities: Value) {
    let (harness, mut files) = one_server().await;
    // Alice's call takes the one place the server has.
    let (alice, _a) = harness.initialized_session("alice").await;
    let holding = spawn_handle(
        &harness,
        &alice,
        request(
            1,
            "tools/call",
            json!({ "name": "files__read", "arguments": {} }),
        ),
    );
    let first = files.next_received().await;
    // Bob's 2026-07-28 call waits for it; Bob hangs up.
    let (bob, _b) = harness.stateless_session_with("bob", capabilities);
    let waiting = spawn_handle(
        &harness,
        &bob,
        modern(
            1,
            "tools/call",
            json!({ "name": "files__read", "arguments": {} }),
        ),
    );
    tokio::task::yield_now().await;
    harness.gateway.close_stateless(&bob);
    // Bounded: before the fix it waited for Alice's place, for ever.
    let gone = tokio::time::timeout(std::time::Duration::from_secs(30), waiting)
        .await
        .unwrap_or_else(|_| panic!("Bob's call still waits for a place after he hung up"));
    assert_eq!(gone.ok().flatten(), None, "a hung-up request gets no reply");
    // Alice's call ends; the server never saw Bob's.
    files.reply(&first, json!({ "content": [] })).await;
    assert!(holding.await.ok().flatten().is_some());
    assert!(
        files.try_received().is_none(),
        "Bob's call reached the server"
    );
    let records = harness.exchanges().await;
    let bobs = records
        .iter()
        .find(|r| r.client == "bob")
        .unwrap_or_else(|| panic!("Bob's call is recorded: {records:?}"));
    assert_eq!(bobs.reason.as_deref(), Some("cancelled by the client"));
}

#[tokio::test]
async fn the_handshake_and_what_came_with_sessions_are_unknown_to_a_modern_request() {
    let (harness, _files) = one_server().await;
    let (session, _inbox) = harness.stateless_session("alice");
    // And what is 2026-07-28's alone is unknown to a handshake session.
    let (legacy, _inbox) = harness.initialized_session("bob").await;
    let params = json!({ "uri": "x://y", "level": "info", "notifications": {} });
    for (asker, id, method) in [
        (&session, 1, "initialize"),
        (&session, 2, "ping"),
        (&session, 3, "logging/setLevel"),
        (&session, 4, "resources/subscribe"),
        (&legacy, 5, "server/discover"),
        (&legacy, 6, "subscriptions/listen"),
    ] {
        let message = match asker.revision.in_rounds() {
            true => modern(id, method, params.clone()),
            false => request(id, method, params.clone()),
        };
        let reply = harness.handle(asker, message).await.unwrap_or_default();
        assert_eq!(
            reply["error"]["code"],
            protocol::code::METHOD_NOT_FOUND,
            "{method}: {reply}"
        );
    }
    harness.gateway.close_stateless(&session);
}

#[tokio::test]
async fn a_client_holds_a_bounded_number_of_listen_streams() {
    let (harness, _files) = one_server().await;
    let listen = |id| {
        modern(
            id,
            "subscriptions/listen",
            json!({ "notifications": { "toolsListChanged": true } }),
        )
    };
    let mut open = Vec::new();
    for id in 0..super::listen::MAX_LISTENS_PER_CLIENT {
        let (session, mut inbox) = harness.stateless_session("alice");
        let running = spawn_handle(&harness, &session, listen(id as i64));
        // Acknowledged: its place is taken.
        let ack = inbox.recv().await.unwrap_or_default();
        assert_eq!(
            ack["method"], "notifications/subscriptions/acknowledged",
            "{ack}"
        );
        assert_eq!(ack["params"]["_meta"][meta::SUBSCRIPTION_ID], id, "{ack}");
        open.push((session, running));
    }
    let (extra, _inbox) = harness.stateless_session("alice");
    let refused = harness.handle(&extra, listen(99)).await.unwrap_or_default();
    assert_eq!(
        refused["error"]["code"],
        protocol::code::RATE_LIMITED,
        "{refused}"
    );
    harness.gateway.close_stateless(&extra);
    // Another client is not held to Alice's count.
    let (bobs, mut bob_inbox) = harness.stateless_session("bob");
    let bob = spawn_handle(&harness, &bobs, listen(1));
    let ack = bob_inbox.recv().await.unwrap_or_default();
    assert_eq!(
        ack["method"], "notifications/subscriptions/acknowledged",
        "{ack}"
    );
    // One of Alice's ends (her client hung up): its place is hers again.
    let (first, running) = open.remove(0);
    harness.gateway.close_stateless(&first);
    assert_eq!(
        running.await.ok().flatten(),
        None,
        "a hung-up listen gets no reply"
    );
    let (again, mut inbox) = harness.stateless_session("alice");
    let _again = spawn_handle(&harness, &again, listen(100));
    let ack = inbox.recv().await.unwrap_or_default();
    assert_eq!(
        ack["method"], "notifications/subscriptions/acknowledged",
        "{ack}"
    );
    for (session, _) in open {
        harness.gateway.close_stateless(&session);
    }
    harness.gateway.close_stateless(&again);
    harness.gateway.close_stateless(&bobs);
    assert_eq!(bob.await.ok().flatten(), None);
}

#[tokio::test]
async fn a_server_cannot_pass_a_calls_messages_off_as_a_listen_streams() {
    let (harness, mut files) = one_server().await;
    let (session, mut inbox) = harness.stateless_session("alice");
    let call = modern(
        1,
        "tools/call",
        json!({ "name": "files__read", "arguments": {} }),
    );
    let answer = spawn_handle(&harness, &session, call);
    let seen = files.next_received().await;
    let token = seen["params"]["_meta"]["progressToken"].clone();
    let forged_ack = protocol::notification(
        "notifications/subscriptions/acknowledged",
        json!({ "notifications": { "toolsListChanged": true },
            "_meta": { meta::SUBSCRIPTION_ID: 1 } }),
    );
    files.send_on_stream_of(&seen, forged_ack).await;
    let progress = protocol::notification(
        "notifications/progress",
        json!({ "progressToken": token, "progress": 1,
            "_meta": { meta::SUBSCRIPTION_ID: 1, "x-server": 7 } }),
    );
    files.send_on_stream_of(&seen, progress).await;
    files.reply(&seen, json!({ "content": [] })).await;
    assert!(answer.await.ok().flatten().is_some());
    let got: Vec<Value> = std::iter::from_fn(|| inbox.try_recv().ok()).collect();
    assert_eq!(got.len(), 1, "only the progress: {got:?}");
    assert_eq!(got[0]["method"], "notifications/progress");
    let sent_meta = &got[0]["params"]["_meta"];
    assert!(
        sent_meta.get(meta::SUBSCRIPTION_ID).is_none(),
        "{sent_meta}"
    );
    assert_eq!(sent_meta["x-server"], 7);
    harness.gateway.close_stateless(&session);
}

/// The next message to `docs` after one list request answered (the one
/// resource `docs://a`, no templates); `Some` when it was not a list.
async fn next_past_lists(docs: &mut crate::upstream::scripted::ScriptedServer) -> Option<Value> {
    let message = docs.next_received().await;
    let result = match protocol::method(&message) {
        Some("resources/list") => json!({ "resources": [{ "uri": "docs://a", "name": "a" }] }),
        Some("resources/templates/list") => json!({ "resourceTemplates": [] }),
        _ => return Some(message),
    };
    docs.reply(&message, result).await;
    None
}

/// The next message to `docs` that is not a list request (those answered).
async fn next_not_a_list(docs: &mut crate::upstream::scripted::ScriptedServer) -> Value {
    loop {
        if let Some(message) = next_past_lists(docs).await {
            return message;
        }
    }
}

/// `harness`'s server `docs` started: it offers subscriptions and lists
/// one resource, `docs://a`.
async fn docs_started(harness: &Harness) -> crate::upstream::scripted::ScriptedServer {
    let starting = harness.start();
    let mut docs = harness.connections("docs", None).next().await;
    docs.answer_lists(json!([]));
    docs.handshake_with(json!({ "protocolVersion": protocol::LATEST_VERSION,
        "capabilities": { "tools": {}, "resources": { "subscribe": true } },
        "serverInfo": { "name": "docs", "version": "1" } }))
        .await;
    // The gateway reads the server's resources and templates (as often
    // as it likes: answered every time).
    for _ in 0..2 {
        if let Some(other) = next_past_lists(&mut docs).await {
            panic!("expected a list request: {other}");
        }
    }
    if let Err(err) = starting.await {
        panic!("the gateway did not start: {err}");
    }
    docs
}

#[tokio::test]
async fn a_listen_streams_subscriptions_end_at_the_server_with_it() {
    let harness = Harness::new(
        "[[clients]]\nname = \"alice\"\n\
         [[servers]]\nname = \"docs\"\nprocess = { command = \"scripted\" }\n",
    );
    let mut docs = docs_started(&harness).await;
    let (session, mut inbox) = harness.stateless_session("alice");
    let listen = modern(
        1,
        "subscriptions/listen",
        json!({ "notifications": { "resourceSubscriptions": ["docs://a"] } }),
    );
    let running = spawn_handle(&harness, &session, listen);
    let subscribe = next_not_a_list(&mut docs).await;
    assert_eq!(subscribe["method"], "resources/subscribe", "{subscribe}");
    assert_eq!(subscribe["params"]["uri"], "docs://a");
    docs.reply(&subscribe, json!({})).await;
    let ack = inbox.recv().await.unwrap_or_default();
    assert_eq!(
        ack["params"]["notifications"]["resourceSubscriptions"],
        json!(["docs://a"]),
        "{ack}"
    );
    // An update of it reaches the stream, tagged.
    docs.notify(
        "notifications/resources/updated",
        json!({ "uri": "docs://a" }),
    )
    .await;
    let updated = inbox.recv().await.unwrap_or_default();
    assert_eq!(updated["params"]["uri"], "docs://a", "{updated}");
    assert_eq!(updated["params"]["_meta"][meta::SUBSCRIPTION_ID], 1);
    // The client hangs up: the server is told nobody listens any more.
    harness.gateway.close_stateless(&session);
    assert_eq!(running.await.ok().flatten(), None);
    let unsubscribe = next_not_a_list(&mut docs).await;
    assert_eq!(
        unsubscribe["method"], "resources/unsubscribe",
        "{unsubscribe}"
    );
    assert_eq!(unsubscribe["params"]["uri"], "docs://a");
}

#[tokio::test]
async fn no_session_ends_another_sessions_subscription_at_the_server() {
    let harness = Harness::new(
        "[[clients]]\nname = \"alice\"\n[[clients]]\nname = \"bob\"\n\
         [[servers]]\nname = \"docs\"\nprocess = { command = \"scripted\" }\n",
    );
    let mut docs = docs_started(&harness).await;
    let (alice, mut alice_inbox) = harness.initialized_session("alice").await;
    let (bob, _bob_inbox) = harness.initialized_session("bob").await;
    let uri = json!({ "uri": "docs://a" });
    let unsubscribe = |id| request(id, "resources/unsubscribe", uri.clone());
    // Bob unsubscribes from what he never subscribed to: answered by the
    // proxy, never sent to the server.
    let local = std::time::Duration::from_secs(10);
    let reply = tokio::time::timeout(local, harness.handle(&bob, unsubscribe(1))).await;
    assert_eq!(
        reply.ok().flatten().unwrap_or_default()["result"],
        json!({})
    );
    // Both subscribe (each subscription made at the server).
    // (The gateway may subscribe again meanwhile, as it does when it sees
    // the server ready: every subscription is answered.)
    for (session, id) in [(&alice, 2), (&bob, 3)] {
        let subscribe = request(id, "resources/subscribe", uri.clone());
        let mut running = spawn_handle(&harness, session, subscribe);
        let reply = loop {
            tokio::select! {
                done = &mut running => break done.ok().flatten().unwrap_or_default(),
                sent = next_not_a_list(&mut docs) => {
                    assert_eq!(sent["method"], "resources/subscribe", "{sent}");
                    docs.reply(&sent, json!({})).await;
                }
            }
        };
        assert_eq!(reply["result"], json!({}), "{reply}");
    }
    // Bob unsubscribes while Alice reads it: his alone is taken out, and
    // he is answered without the server (which answers nothing here).
    let local = std::time::Duration::from_secs(10);
    let reply = tokio::time::timeout(local, harness.handle(&bob, unsubscribe(4))).await;
    assert_eq!(
        reply.ok().flatten().unwrap_or_default()["result"],
        json!({})
    );
    docs.notify("notifications/resources/updated", uri.clone())
        .await;
    let updated = alice_inbox.recv().await.unwrap_or_default();
    assert_eq!(updated["params"]["uri"], "docs://a", "{updated}");
    // Alice, the last, ends it there.
    let running = spawn_handle(&harness, &alice, unsubscribe(5));
    let sent = loop {
        let sent = next_not_a_list(&mut docs).await;
        if sent["method"] != "resources/subscribe" {
            break sent;
        }
        docs.reply(&sent, json!({})).await;
    };
    assert_eq!(sent["method"], "resources/unsubscribe", "{sent}");
    docs.reply(&sent, json!({})).await;
    let reply = running.await.ok().flatten().unwrap_or_default();
    assert_eq!(reply["result"], json!({}), "{reply}");
}

/// A gateway whose one server, `files`, is spoken to in 2026-07-28: its
/// start (`server/discover`, with the proxy's envelope) checked.
async fn stateless_server_started() -> (Harness, crate::upstream::scripted::ScriptedServer) {
    super::rounds_tests::stateless_server_with("").await
}

#[tokio::test]
async fn a_2026_07_28_server_gets_the_envelope_and_its_results_are_framed_for_each_client() {
    let (harness, mut files) = stateless_server_started().await;
    // A handshake client's call: the server gets the envelope (not the
    // client's: it has none), the client a result of its own revision.
    let (legacy, mut inbox) = harness.initialized_session("alice").await;
    let call = request(
        1,
        "tools/call",
        json!({ "name": "files__read", "arguments": {} }),
    );
    // A client's own protocol keys, and answers to a question never asked.
    let mut forged = call.clone();
    forged["params"]["_meta"] = json!({ meta::LOG_LEVEL: "debug",
        meta::CLIENT_CAPABILITIES: { "sampling": {} }, "x-client": 1 });
    forged["params"]["inputResponses"] = json!({ "q": { "action": "accept" } });
    forged["params"]["requestState"] = json!("forged");
    let answer = spawn_handle(&harness, &legacy, forged);
    let seen = files.next_received().await;
    let sent_meta = &seen["params"]["_meta"];
    assert_eq!(
        sent_meta[meta::PROTOCOL_VERSION],
        protocol::MODERN_VERSION,
        "{seen}"
    );
    // The capabilities the session declared (what the proxy can relay),
    // not what the client wrote in `_meta`.
    assert_eq!(
        sent_meta[meta::CLIENT_CAPABILITIES],
        json!({ "sampling": {}, "elicitation": {}, "roots": {} }),
        "{seen}"
    );
    assert!(sent_meta.get(meta::LOG_LEVEL).is_none(), "{seen}");
    assert_eq!(sent_meta["x-client"], 1, "{seen}");
    for gone in ["inputResponses", "requestState"] {
        assert!(seen["params"].get(gone).is_none(), "{gone}: {seen}");
    }
    // It asks the client something all the same: refused at the server,
    // never relayed.
    let question = json!({ "jsonrpc": "2.0", "id": "srv-q", "method": "elicitation/create",
        "params": { "message": "password?" } });
    files.send_on_stream_of(&seen, question).await;
    let refused = files.next_received().await;
    assert_eq!(refused["id"], "srv-q", "{refused}");
    assert_eq!(
        refused["error"]["code"],
        protocol::code::METHOD_NOT_FOUND,
        "{refused}"
    );
    files
        .reply(
            &seen,
            json!({ "content": [], "resultType": "complete", "ttlMs": 5, "cacheScope": "public",
                "_meta": { meta::SERVER_INFO: { "name": "files" }, "x": 1 } }),
        )
        .await;
    let reply = answer.await.ok().flatten().unwrap_or_default();
    let result = &reply["result"];
    for gone in ["resultType", "ttlMs", "cacheScope"] {
        assert!(result.get(gone).is_none(), "{gone}: {reply}");
    }
    assert_eq!(result["_meta"], json!({ "x": 1 }), "{reply}");
    let told: Vec<Value> = std::iter::from_fn(|| inbox.try_recv().ok()).collect();
    assert!(
        told.iter().all(|m| m["method"] != "elicitation/create"),
        "{told:?}"
    );
    // A 2026-07-28 client's call: framed as ever.
    let (modern_session, _inbox) =
        harness.stateless_session_with("alice", json!({ "sampling": {} }));
    let mut call = modern(
        2,
        "tools/call",
        json!({ "name": "files__read", "arguments": {} }),
    );
    call["params"]["_meta"][meta::CLIENT_CAPABILITIES] = json!({ "sampling": {} });
    call["params"]["inputResponses"] = json!({ "q": { "action": "accept" } });
    let answer = spawn_handle(&harness, &modern_session, call);
    let seen = files.next_received().await;
    assert_eq!(
        seen["params"]["_meta"][meta::CLIENT_CAPABILITIES],
        json!({ "sampling": {} }),
        "{seen}"
    );
    assert!(seen["params"].get("inputResponses").is_none(), "{seen}");
    files
        .reply(&seen, json!({ "content": [], "resultType": "complete" }))
        .await;
    let reply = answer.await.ok().flatten().unwrap_or_default();
    assert_eq!(reply["result"]["resultType"], "complete", "{reply}");
    harness.gateway.close_stateless(&modern_session);
}

#[tokio::test]
async fn a_2026_07_28_server_asking_round_after_round_is_cut_off() {
    let mut call = super::rounds_tests::legacy_call("").await;
    let (reply, sent) = call.round_after_round(std::time::Duration::ZERO).await;
    assert_eq!(
        reply["error"]["code"],
        protocol::code::INTERNAL_ERROR,
        "{reply}"
    );
    let said = reply["error"]["message"].as_str().unwrap_or_default();
    assert!(said.contains("more than 10 rounds"), "{said}");
    // The call and ten retries, and no more.
    assert_eq!(sent, 11);
}

#[tokio::test]
async fn a_2026_07_28_servers_question_in_a_round_is_a_request_on_a_handshake_session() {
    let (harness, mut files) = stateless_server_started().await;
    let (legacy, mut inbox) = harness.initialized_session("alice").await;
    let call = request(
        1,
        "tools/call",
        json!({ "name": "files__read", "arguments": {} }),
    );
    // Its question in a round (`input_required`): a request on the
    // handshake session (under an id of the proxy's); the answer goes back
    // in the call sent again, with the server's state.
    let answer = spawn_handle(&harness, &legacy, call);
    let seen = files.next_received().await;
    files
        .reply(
            &seen,
            json!({ "resultType": "input_required", "requestState": "srv-state",
                "inputRequests": { "q": {
                    "method": "elicitation/create", "params": { "message": "password?" } } } }),
        )
        .await;
    let asked = loop {
        let told = inbox.recv().await.unwrap_or_default();
        if told["method"] == "elicitation/create" {
            break told;
        }
    };
    assert_eq!(asked["params"]["message"], "password?", "{asked}");
    assert_ne!(asked["id"], "q", "{asked}");
    let declined = json!({ "jsonrpc": "2.0", "id": asked["id"].clone(),
        "result": { "action": "decline" } });
    harness.handle(&legacy, declined).await;
    let again = files.next_received().await;
    assert_eq!(again["method"], "tools/call", "{again}");
    assert_eq!(
        again["params"]["inputResponses"],
        json!({ "q": { "action": "decline" } }),
        "{again}"
    );
    assert_eq!(again["params"]["requestState"], "srv-state", "{again}");
    files
        .reply(&again, json!({ "content": [], "resultType": "complete" }))
        .await;
    let reply = answer.await.ok().flatten().unwrap_or_default();
    assert_eq!(reply["result"], json!({ "content": [] }), "{reply}");
}

/// A 2026-07-28 server's round of two questions, an elicitation and a
/// roots request, as the reply to `call`.
async fn two_questions(files: &mut crate::upstream::scripted::ScriptedServer) -> Value {
    let seen = files.next_received().await;
    let round = json!({ "resultType": "input_required", "inputRequests": {
        "e": { "method": "elicitation/create", "params": { "message": "name?" } },
        "r": { "method": "roots/list" } } });
    files.reply(&seen, round).await;
    seen
}

#[tokio::test]
async fn a_question_not_answered_ends_the_call_and_its_round_is_withdrawn() {
    let (harness, mut files) = stateless_server_started().await;
    let (legacy, mut inbox) = harness.initialized_session("alice").await;
    let call = request(1, "tools/call", json!({ "name": "files__read" }));
    let answer = spawn_handle(&harness, &legacy, call);
    two_questions(&mut files).await;
    let mut asked = Vec::new();
    while asked.len() < 2 {
        let told = inbox.recv().await.unwrap_or_default();
        if told.get("id").is_some() {
            asked.push(told);
        }
    }
    // The client refuses the roots request: the call ends, and the
    // elicitation still open is withdrawn from it.
    let roots = asked.iter().find(|m| m["method"] == "roots/list");
    let elicit = asked.iter().find(|m| m["method"] == "elicitation/create");
    let (Some(roots), Some(elicit)) = (roots, elicit) else {
        panic!("{asked:?}");
    };
    let refusal = json!({ "jsonrpc": "2.0", "id": roots["id"].clone(),
        "error": { "code": -1, "message": "no roots here" } });
    harness.handle(&legacy, refusal).await;
    let reply = answer.await.ok().flatten().unwrap_or_default();
    assert_eq!(
        reply["error"]["code"],
        protocol::code::INTERNAL_ERROR,
        "{reply}"
    );
    let withdrawn = loop {
        let told = inbox.recv().await.unwrap_or_default();
        if told["method"] == "notifications/cancelled" {
            break told;
        }
    };
    assert_eq!(
        withdrawn["params"]["requestId"], elicit["id"],
        "{withdrawn}"
    );
    // The server was not sent the call again.
    assert!(files.try_received().is_none());
}

#[tokio::test]
async fn a_rounds_questions_reach_a_2026_07_28_client_in_one_round() {
    let (harness, mut files) = stateless_server_started().await;
    let capabilities = json!({ "elicitation": {}, "roots": {} });
    let (session, _inbox) = harness.stateless_session_with("alice", capabilities.clone());
    let mut call = modern(1, "tools/call", json!({ "name": "files__read" }));
    call["params"]["_meta"][meta::CLIENT_CAPABILITIES] = capabilities;
    let answer = spawn_handle(&harness, &session, call);
    let seen = two_questions(&mut files).await;
    assert_eq!(
        seen["params"]["_meta"][meta::CLIENT_CAPABILITIES],
        json!({ "elicitation": {}, "roots": {} }),
        "{seen}"
    );
    let round = answer.await.ok().flatten().unwrap_or_default();
    assert_eq!(round["result"]["resultType"], "input_required", "{round}");
    let asked = round["result"]["inputRequests"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    assert_eq!(asked.len(), 2, "{round}");
    // Keys of the proxy's, not the server's.
    assert!(
        !asked.contains_key("e") && !asked.contains_key("r"),
        "{round}"
    );
    harness.gateway.rounds.drop_parked();
}
