//! The gateway between clients and scripted servers, in-process: lists
//! merged, calls routed with their ids remapped and restored, what a server
//! sends delivered to the session it belongs to, cancellation, and a
//! server's own requests relayed. No process, socket or sleep: the scripted
//! server's `send` returns once the gateway routed what it sent, which is
//! the barrier for "nothing else arrived".

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedReceiver;

use super::harness::{Harness, request, spawn_handle};
use super::{Session, lock};
use crate::protocol;

const TWO_SERVERS: &str = "[[clients]]\nname = \"alice\"\n[[clients]]\nname = \"bob\"\n\
    [[servers]]\nname = \"files\"\nprocess = { command = \"scripted\" }\n\
    [[servers]]\nname = \"notes\"\nprocess = { command = \"scripted\" }\n";

fn tool(name: &str) -> Value {
    json!({ "name": name, "inputSchema": { "type": "object" } })
}

fn call(id: i64, tool: &str, text: &str) -> Value {
    request(
        id,
        "tools/call",
        json!({ "name": tool, "arguments": { "text": text } }),
    )
}

fn text_result(text: &str) -> Value {
    json!({ "content": [{ "type": "text", "text": text }] })
}

/// Everything a session's client got so far.
fn drain(inbox: &mut UnboundedReceiver<Value>) -> Vec<Value> {
    std::iter::from_fn(|| inbox.try_recv().ok()).collect()
}

/// The next message a session's client gets (bounded: a test that waits
/// for one that never comes fails instead of hanging).
async fn next(inbox: &mut UnboundedReceiver<Value>) -> Value {
    match tokio::time::timeout(Duration::from_secs(30), inbox.recv()).await {
        Ok(Some(message)) => message,
        other => panic!("the client got nothing: {other:?}"),
    }
}

/// A gateway with `files` (tools `read`, `write`) and `notes` (`read`) up.
async fn two_servers() -> (
    Harness,
    crate::upstream::scripted::ScriptedServer,
    crate::upstream::scripted::ScriptedServer,
) {
    let harness = Harness::new(TWO_SERVERS);
    let starting = harness.start();
    let files = harness
        .serve("files", json!([tool("read"), tool("write")]))
        .await;
    let notes = harness.serve("notes", json!([tool("read")])).await;
    if let Err(err) = starting.await {
        panic!("the gateway did not start: {err}");
    }
    (harness, files, notes)
}

async fn handle(harness: &Harness, session: &Arc<Session>, message: Value) -> Value {
    harness.handle(session, message).await.unwrap_or_default()
}

/// The names of the tools `session` is listed (one page).
async fn tool_names(harness: &Harness, session: &Arc<Session>, id: i64) -> Vec<String> {
    let listed = handle(harness, session, request(id, "tools/list", json!({}))).await;
    listed["result"]["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|tool| tool["name"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn the_servers_lists_are_merged_under_their_names() {
    let (harness, _files, _notes) = two_servers().await;
    let (session, _inbox) = harness.initialized_session("alice").await;
    assert_eq!(
        tool_names(&harness, &session, 1).await,
        ["files__read", "files__write", "notes__read"]
    );
}

#[tokio::test]
async fn calls_of_two_sessions_with_one_id_reach_the_server_apart_and_come_back_to_each() {
    let (harness, mut files, _notes) = two_servers().await;
    let (alice, _a) = harness.initialized_session("alice").await;
    let (bob, _b) = harness.initialized_session("bob").await;
    let from_alice = spawn_handle(&harness, &alice, call(1, "files__read", "a"));
    let first = files.next_received().await;
    let from_bob = spawn_handle(&harness, &bob, call(1, "files__read", "b"));
    let second = files.next_received().await;
    // The server sees its own tool's name and two distinct ids.
    for (seen, text) in [(&first, "a"), (&second, "b")] {
        assert_eq!(seen["method"], "tools/call", "{seen}");
        assert_eq!(seen["params"]["name"], "read", "{seen}");
        assert_eq!(seen["params"]["arguments"]["text"], text, "{seen}");
    }
    assert_ne!(first["id"], second["id"]);
    // Answered the other way round: each client gets its own, as id 1.
    files.reply(&second, text_result("for b")).await;
    files.reply(&first, text_result("for a")).await;
    let (Ok(Some(to_alice)), Ok(Some(to_bob))) = (from_alice.await, from_bob.await) else {
        panic!("each call is answered");
    };
    assert_eq!(to_alice["id"], 1);
    assert_eq!(to_alice["result"]["content"][0]["text"], "for a");
    assert_eq!(to_bob["id"], 1);
    assert_eq!(to_bob["result"]["content"][0]["text"], "for b");
    let records = harness.exchanges().await;
    let calls: Vec<_> = records
        .iter()
        .filter(|r| r.method == "tools/call")
        .map(|r| (r.client.as_str(), r.server.as_deref(), r.decision.as_str()))
        .collect();
    assert_eq!(
        calls,
        [
            ("bob", Some("files"), "allow"),
            ("alice", Some("files"), "allow")
        ]
    );
}

#[tokio::test]
async fn what_a_server_sends_on_a_calls_stream_reaches_that_session_alone_before_the_reply() {
    let (harness, mut files, _notes) = two_servers().await;
    let (alice, mut alice_inbox) = harness.initialized_session("alice").await;
    let (_bob, mut bob_inbox) = harness.initialized_session("bob").await;
    drain(&mut alice_inbox);
    drain(&mut bob_inbox);
    let answered = spawn_handle(&harness, &alice, call(3, "files__read", "x"));
    let seen = files.next_received().await;
    let log = protocol::notification(
        "notifications/message",
        json!({ "level": "info", "data": "reading x" }),
    );
    files.send_on_stream_of(&seen, log).await;
    files.reply(&seen, text_result("x")).await;
    let Ok(Some(reply)) = answered.await else {
        panic!("the call is answered");
    };
    assert_eq!(reply["id"], 3);
    let got = drain(&mut alice_inbox);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["method"], "notifications/message");
    assert_eq!(got[0]["params"]["data"], "reading x");
    assert!(drain(&mut bob_inbox).is_empty(), "not another session's");
}

#[tokio::test]
async fn a_list_change_is_read_again_and_announced_to_every_session() {
    let (harness, files, _notes) = two_servers().await;
    let (alice, mut alice_inbox) = harness.initialized_session("alice").await;
    let (_bob, mut bob_inbox) = harness.initialized_session("bob").await;
    drain(&mut alice_inbox);
    drain(&mut bob_inbox);
    files.answer_lists(json!([tool("read"), tool("delete")]));
    files
        .notify("notifications/tools/list_changed", json!({}))
        .await;
    for inbox in [&mut alice_inbox, &mut bob_inbox] {
        let announced = next(inbox).await;
        assert_eq!(announced["method"], "notifications/tools/list_changed");
    }
    assert_eq!(
        tool_names(&harness, &alice, 4).await,
        ["files__read", "files__delete", "notes__read"]
    );
}

#[tokio::test]
async fn a_cancelled_call_is_cancelled_at_the_server_by_its_own_id_and_gets_no_reply() {
    let (harness, mut files, _notes) = two_servers().await;
    let (alice, _inbox) = harness.initialized_session("alice").await;
    let gateway = harness.gateway.clone();
    let answered = spawn_handle(&harness, &alice, call(7, "files__read", "slow"));
    let seen = files.next_received().await;
    let cancel = protocol::notification(
        "notifications/cancelled",
        json!({ "requestId": 7, "reason": "the user gave up" }),
    );
    assert_eq!(gateway.handle(&alice, cancel).await, None);
    let Ok(reply) = answered.await else {
        panic!("the call's task ends");
    };
    assert_eq!(reply, None, "a cancelled request gets no reply");
    let cancelled = files.next_received().await;
    assert_eq!(cancelled["method"], "notifications/cancelled");
    assert_eq!(
        cancelled["params"]["requestId"], seen["id"],
        "the server's id"
    );
    assert_eq!(
        cancelled["params"]["reason"], "cancelled by the proxy",
        "the client's own words are not relayed"
    );
    let records = harness.exchanges().await;
    let record = records.iter().find(|r| r.method == "tools/call");
    assert!(
        record.is_some_and(
            |r| r.decision == "error" && r.reason.as_deref() == Some("cancelled by the client")
        ),
        "{records:?}"
    );
}

#[tokio::test]
async fn a_servers_request_during_a_call_is_asked_of_that_client_and_answered_with_its_id() {
    let (harness, mut files, _notes) = two_servers().await;
    let (alice, mut inbox) = harness.initialized_session("alice").await;
    drain(&mut inbox);
    let gateway = harness.gateway.clone();
    let answered = spawn_handle(&harness, &alice, call(9, "files__write", "draft"));
    let seen = files.next_received().await;
    let sampling = json!({ "jsonrpc": "2.0", "id": "srv-1", "method": "sampling/createMessage",
        "params": { "messages": [], "maxTokens": 5 } });
    files.send_on_stream_of(&seen, sampling).await;
    let asked = next(&mut inbox).await;
    assert_eq!(asked["method"], "sampling/createMessage");
    assert_ne!(
        asked["id"], "srv-1",
        "the client sees an id of its session's"
    );
    let answer = json!({ "jsonrpc": "2.0", "id": asked["id"].clone(),
        "result": { "role": "assistant", "content": { "type": "text", "text": "ok" }, "model": "m" } });
    assert_eq!(gateway.handle(&alice, answer).await, None);
    let relayed = files.next_received().await;
    assert_eq!(relayed["id"], "srv-1", "back with the server's own id");
    assert_eq!(relayed["result"]["content"]["text"], "ok");
    files.reply(&seen, text_result("written")).await;
    let Ok(Some(reply)) = answered.await else {
        panic!("the call is answered");
    };
    assert_eq!(reply["result"]["content"][0]["text"], "written");
    let records = harness.exchanges().await;
    assert!(
        records
            .iter()
            .any(|r| r.method == "sampling/createMessage" && r.decision == "allow"),
        "the server's request is recorded: {records:?}"
    );
}

#[tokio::test]
async fn a_client_that_never_answers_holds_its_own_places_never_another_sessions() {
    let (harness, mut files, _notes) = two_servers().await;
    let (alice, mut alice_inbox) = harness.initialized_session("alice").await;
    let (bob, mut bob_inbox) = harness.initialized_session("bob").await;
    drain(&mut alice_inbox);
    drain(&mut bob_inbox);
    let gateway = harness.gateway.clone();
    let _alice_call = spawn_handle(&harness, &alice, call(1, "files__write", "a"));
    let alices = files.next_received().await;
    let sampling = |id: String| {
        json!({ "jsonrpc": "2.0", "id": id, "method": "sampling/createMessage",
            "params": { "messages": [], "maxTokens": 5 } })
    };
    // Alice's client never answers: her session's 16 places fill, and the
    // server's next request for her is refused at once.
    let places = super::session::SERVER_REQUESTS_PER_SESSION;
    for n in 0..places {
        files
            .send_on_stream_of(&alices, sampling(format!("a-{n}")))
            .await;
        assert_eq!(
            next(&mut alice_inbox).await["method"],
            "sampling/createMessage"
        );
    }
    files
        .send_on_stream_of(&alices, sampling("a-over".into()))
        .await;
    let refused = files.next_received().await;
    assert_eq!(refused["id"], "a-over", "{refused}");
    assert_eq!(
        refused["error"]["code"],
        protocol::code::CLIENT_UNAVAILABLE,
        "{refused}"
    );
    // Her other sessions together hold no more than her client's places.
    let (second, mut second_inbox) = harness.initialized_session("alice").await;
    drain(&mut second_inbox);
    let _second_call = spawn_handle(&harness, &second, call(3, "files__write", "a2"));
    let seconds = files.next_received().await;
    let per_client = super::server::SERVER_REQUESTS_PER_CLIENT;
    for n in places..per_client {
        files
            .send_on_stream_of(&seconds, sampling(format!("a2-{n}")))
            .await;
        assert_eq!(
            next(&mut second_inbox).await["method"],
            "sampling/createMessage"
        );
    }
    let (third, mut third_inbox) = harness.initialized_session("alice").await;
    drain(&mut third_inbox);
    let _third_call = spawn_handle(&harness, &third, call(4, "files__write", "a3"));
    let thirds = files.next_received().await;
    files
        .send_on_stream_of(&thirds, sampling("a3-over".into()))
        .await;
    let refused = files.next_received().await;
    assert_eq!(refused["id"], "a3-over", "{refused}");
    assert!(
        third_inbox.try_recv().is_err(),
        "her third session was asked"
    );
    // Bob's session still has all of its own: his client is asked, and
    // his answer reaches the server.
    let _bob_call = spawn_handle(&harness, &bob, call(2, "files__write", "b"));
    let bobs = files.next_received().await;
    files.send_on_stream_of(&bobs, sampling("b-1".into())).await;
    let asked = next(&mut bob_inbox).await;
    assert_eq!(asked["method"], "sampling/createMessage", "{asked}");
    let answer = json!({ "jsonrpc": "2.0", "id": asked["id"].clone(),
        "result": { "role": "assistant", "content": { "type": "text", "text": "ok" }, "model": "m" } });
    assert_eq!(gateway.handle(&bob, answer).await, None);
    let relayed = files.next_received().await;
    assert_eq!(relayed["id"], "b-1", "{relayed}");
    assert_eq!(relayed["result"]["content"]["text"], "ok");
}

/// A per-client instance stopped for being idle is forgotten (its
/// supervisor ends, nothing is kept for the client); the client's next use
/// makes a new one. One a call woke meanwhile is kept.
#[tokio::test(start_paused = true)]
async fn an_idle_per_client_instance_is_forgotten_and_made_again_when_used() {
    use crate::upstream::{Source, Status, UpstreamEvent};
    let harness = Harness::new(
        "[[clients]]\nname = \"alice\"\n[[servers]]\nname = \"box\"\n\
         container = { image = \"img\", isolation = \"per-client\", idle_timeout = \"1m\" }\n",
    );
    // A per-client server's own instance is not started: each client's is.
    if let Err(err) = harness.start().await {
        panic!("the gateway did not start: {err}");
    }
    let gateway = harness.gateway.clone();
    let alice: Arc<str> = Arc::from("alice");
    let key = (0, alice.clone());
    // As the instance's supervisor says it (the event names its server by
    // the very name the instance holds).
    let idle = |instance: &crate::upstream::Upstream| UpstreamEvent::Stopped {
        source: Source {
            server: instance.name().clone(),
            instance: Some(alice.clone()),
        },
        reason: "idle".into(),
    };
    for round in 0..2 {
        let Some(instance) = gateway.servers().upstream_for(0, &alice) else {
            panic!("round {round}: an instance for alice");
        };
        let _opened = harness.connections("box", Some("alice"));
        assert!(lock(&gateway.servers.instance_stops).contains_key(&key));
        // Its supervisor stopped it for idleness (not wanted now).
        assert!(gateway.servers.events.send(idle(&instance)).await.is_ok());
        for _ in 0..1000 {
            if !lock(&gateway.servers.instances).contains_key(&key)
                && matches!(instance.status(), Status::Stopped)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            !lock(&gateway.servers.instances).contains_key(&key),
            "round {round}: kept"
        );
        assert!(!lock(&gateway.servers.instance_stops).contains_key(&key));
        assert!(
            matches!(instance.status(), Status::Stopped),
            "its supervisor ended"
        );
    }
    // Woken by a call before the event is handled: kept.
    let Some(instance) = gateway.servers().upstream_for(0, &alice) else {
        panic!("an instance for alice");
    };
    let waking = tokio::spawn({
        let instance = instance.clone();
        async move { instance.ensure_running(Duration::from_secs(5)).await }
    });
    for _ in 0..1000 {
        if instance.is_wanted() {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(gateway.servers.events.send(idle(&instance)).await.is_ok());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        lock(&gateway.servers.instances).contains_key(&key),
        "a woken instance is kept"
    );
    waking.abort();
}
