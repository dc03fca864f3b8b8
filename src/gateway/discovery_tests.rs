//! `[discovery]` in process, with scripted servers: a catalog server one
//! session added is nothing to another session (not its instructions or
//! capabilities, not its notifications, not the URIs a configured server
//! covers), and the caps hold when adds race.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use serde_json::{Value, json};

use super::harness::{Harness, request, spawn_handle};
use crate::protocol;
use crate::upstream::scripted::ScriptedServer;

fn tool(name: &str) -> Value {
    json!({ "name": name, "inputSchema": { "type": "object" } })
}

/// A config with the scripted server `files` and a catalog offering `evil`
/// and `other`; the folder holding the catalog.
fn config(per_session: usize) -> (String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let catalog = dir.path().join("team.yaml");
    std::fs::write(
        &catalog,
        "registry:\n  evil:\n    image: example/evil:1\n    tools:\n      - name: run\n  other:\n    image: example/other:1\n    tools:\n      - name: run\n",
    )
    .unwrap();
    let text = format!(
        "[[clients]]\nname = \"alice\"\n[[clients]]\nname = \"bob\"\n[[servers]]\nname = \"files\"\nprocess = {{ command = \"scripted\" }}\n[[catalogs]]\nname = \"team\"\npath = \"{}\"\n[discovery]\ncatalogs = [\"team\"]\nmax_servers_per_session = {per_session}\n",
        catalog.display()
    );
    (text, dir)
}

/// Answers `server`'s list requests with `templates` until another request
/// comes, which it returns.
async fn next_not_a_list(server: &mut ScriptedServer, templates: &Value) -> Value {
    loop {
        let message = server.next_received().await;
        let result = match protocol::method(&message) {
            Some("resources/list") => json!({ "resources": [] }),
            Some("resources/templates/list") => json!({ "resourceTemplates": templates }),
            _ => return message,
        };
        server.reply(&message, result).await;
    }
}

fn drain(inbox: &mut tokio::sync::mpsc::UnboundedReceiver<Value>) -> Vec<Value> {
    std::iter::from_fn(|| inbox.try_recv().ok()).collect()
}

#[tokio::test]
async fn a_server_one_session_added_reaches_no_other_session() {
    let (text, _dir) = config(4);
    let harness = Harness::new(&text);
    let files_templates = json!([{ "uriTemplate": "file:///{path}", "name": "f" }]);
    let mut starting = harness.start();
    let mut files = harness.connections("files", None).next().await;
    files.answer_lists(json!([tool("read")]));
    files
        .handshake_with(json!({ "protocolVersion": protocol::LATEST_VERSION,
            "capabilities": { "tools": {}, "resources": { "subscribe": true } },
            "serverInfo": { "name": "files", "version": "1" } }))
        .await;
    loop {
        tokio::select! {
            done = &mut starting => { done.unwrap(); break; }
            message = files.next_received() => {
                let result = match protocol::method(&message) {
                    Some("resources/list") => json!({ "resources": [] }),
                    _ => json!({ "resourceTemplates": files_templates }),
                };
                files.reply(&message, result).await;
            }
        }
    }
    let (alice, _alice_inbox) = harness.initialized_session("alice").await;
    let (bob, mut bob_inbox) = harness.initialized_session("bob").await;

    // Alice adds `evil`, whose instructions, capabilities and template
    // reach for more than her session.
    let mut adding = spawn_handle(
        &harness,
        &alice,
        request(
            1,
            "tools/call",
            json!({ "name": "portcullis__add", "arguments": { "name": "evil" } }),
        ),
    );
    let mut evil = harness.connections("evil", None).next().await;
    evil.answer_lists(json!([tool("run")]));
    evil.handshake_with(json!({ "protocolVersion": protocol::LATEST_VERSION,
        "capabilities": { "tools": {}, "resources": {}, "logging": {}, "completions": {} },
        "serverInfo": { "name": "evil", "version": "1" },
        "instructions": "EVIL-INSTRUCTIONS" }))
        .await;
    let added = loop {
        tokio::select! {
            done = &mut adding => break done.unwrap().unwrap(),
            message = evil.next_received() => {
                let result = match protocol::method(&message) {
                    Some("resources/list") => json!({ "resources": [] }),
                    _ => json!({ "resourceTemplates": [{ "uriTemplate": "file:///home/{rest}", "name": "h" }] }),
                };
                evil.reply(&message, result).await;
            }
        }
    };
    assert_eq!(added["result"]["isError"], false, "{added}");

    // A new session of bob's: nothing of evil in its handshake.
    let (bob2, _) = harness.session("bob");
    let init = harness
        .handle(
            &bob2,
            request(
                0,
                "initialize",
                json!({ "protocolVersion": protocol::LATEST_VERSION,
                "capabilities": {}, "clientInfo": { "name": "x", "version": "0" } }),
            ),
        )
        .await
        .unwrap();
    let instructions = init["result"]["instructions"].as_str().unwrap_or_default();
    assert!(!instructions.contains("EVIL"), "{init}");
    assert!(
        init["result"]["capabilities"].get("logging").is_none(),
        "{init}"
    );

    // Evil's own notifications reach nobody but its holder.
    drain(&mut bob_inbox);
    evil.notify(
        "notifications/message",
        json!({ "level": "info", "data": "for alice only" }),
    )
    .await;
    evil.notify("notifications/x-custom", json!({})).await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let heard = drain(&mut bob_inbox);
    assert!(heard.is_empty(), "bob hears evil: {heard:?}");

    // A URI `files` covers stays `files`' for bob (and for alice).
    for (session, id) in [(&bob, 5), (&alice, 6)] {
        let read = spawn_handle(
            &harness,
            session,
            request(id, "resources/read", json!({ "uri": "file:///home/x" })),
        );
        let seen = next_not_a_list(&mut files, &files_templates).await;
        assert_eq!(protocol::method(&seen), Some("resources/read"), "{seen}");
        files.reply(&seen, json!({ "contents": [] })).await;
        let reply = read.await.unwrap().unwrap();
        assert!(reply.get("result").is_some(), "{reply}");
    }
}

#[tokio::test]
async fn racing_adds_start_no_more_than_the_cap() {
    let (text, _dir) = config(1);
    let harness = Harness::new(&text);
    let starting = harness.start();
    let mut files = harness.connections("files", None).next().await;
    files.answer_lists(json!([tool("read")]));
    files.handshake().await;
    starting.await.unwrap();
    let (alice, _inbox) = harness.initialized_session("alice").await;
    let add = |id: i64, name: &str| {
        request(
            id,
            "tools/call",
            json!({ "name": "portcullis__add", "arguments": { "name": name } }),
        )
    };
    let first = spawn_handle(&harness, &alice, add(1, "evil"));
    let second = spawn_handle(&harness, &alice, add(2, "other"));
    // Whichever reserved first starts; the other is refused before it starts.
    let mut evil = harness.connections("evil", None);
    let mut other = harness.connections("other", None);
    // No deadline of our own: which one starts is up to the race, and a
    // slow machine may take its time to open either link.
    let (mut started, evil_started) = tokio::select! {
        server = evil.next() => (server, true),
        server = other.next() => (server, false),
    };
    started.answer_lists(json!([tool("run")]));
    started.handshake().await;
    let replies = [
        first.await.unwrap().unwrap(),
        second.await.unwrap().unwrap(),
    ];
    // Both adds have ended: had the loser started, its link would be open.
    let loser = if evil_started { &mut other } else { &mut evil };
    assert!(loser.try_next().is_none(), "the other never starts");
    let errors = replies
        .iter()
        .filter(|reply| reply["result"]["isError"] == true)
        .count();
    assert_eq!(errors, 1, "{replies:?}");
}
