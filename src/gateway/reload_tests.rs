//! Reloads on the in-process gateway: a call in flight to one server ends
//! well while a reload adds another, and the session is told; a changed
//! server restarts, its old instance stopped and its tools those of the
//! new one; a name a running `[discovery]` answers to is refused, and
//! nothing changes.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use serde_json::{Value, json};

use super::harness::{Harness, request, spawn_handle};
use crate::config::Config;
use crate::protocol;

const FILES: &str = "[[clients]]\nname = \"alice\"\n[[servers]]\nname = \"files\"\nprocess = { command = \"scripted\" }\n";

fn tool(name: &str) -> Value {
    json!({ "name": name, "inputSchema": { "type": "object" } })
}

fn parse(text: &str) -> Config {
    Config::parse(text, std::path::Path::new("portcullis.toml")).unwrap()
}

async fn tools_listed(harness: &Harness, session: &std::sync::Arc<super::Session>) -> Vec<String> {
    let reply = harness
        .handle(session, request(90, "tools/list", json!({})))
        .await
        .unwrap();
    let mut names: Vec<String> = reply["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|tool| tool["name"].as_str().map(str::to_owned))
        .collect();
    names.sort();
    names
}

fn text_result(text: &str) -> Value {
    json!({ "content": [{ "type": "text", "text": text }] })
}

#[tokio::test]
async fn a_call_in_flight_ends_well_while_a_reload_adds_a_server() {
    let harness = Harness::new(FILES);
    let starting = harness.start();
    let mut files = harness.serve("files", json!([tool("read")])).await;
    starting.await.unwrap();
    let (session, mut inbox) = harness.initialized_session("alice").await;

    let call = spawn_handle(
        &harness,
        &session,
        request(
            1,
            "tools/call",
            json!({ "name": "files__read", "arguments": {} }),
        ),
    );
    let seen = files.next_received().await;
    assert_eq!(protocol::method(&seen), Some("tools/call"), "{seen}");

    let gateway = harness.gateway.clone();
    let next = parse(&format!(
        "{FILES}[[servers]]\nname = \"notes\"\nprocess = {{ command = \"scripted\" }}\n"
    ));
    let reloading = tokio::spawn(async move { gateway.reload(&next).await });
    let _notes = harness
        .serve_when_made("notes", json!([tool("write")]))
        .await;
    let reloaded = reloading.await.unwrap().unwrap();
    assert_eq!(reloaded.added, ["notes"]);
    assert!(reloaded.removed.is_empty() && reloaded.restarted.is_empty());

    // The call that was in flight all along is answered.
    files.reply(&seen, text_result("read")).await;
    let reply = call.await.unwrap().unwrap();
    assert_eq!(reply["result"]["content"][0]["text"], "read", "{reply}");
    let told: Vec<Value> = std::iter::from_fn(|| inbox.try_recv().ok()).collect();
    assert!(
        told.iter()
            .any(|m| m["method"] == "notifications/tools/list_changed"),
        "{told:?}"
    );
    assert_eq!(
        tools_listed(&harness, &session).await,
        ["files__read", "notes__write"]
    );
}

#[tokio::test]
async fn a_changed_server_restarts_and_its_old_instance_leaves_nothing_behind() {
    let harness = Harness::new(FILES);
    let starting = harness.start();
    let old = harness.serve("files", json!([tool("read")])).await;
    starting.await.unwrap();
    let (session, _inbox) = harness.initialized_session("alice").await;
    assert_eq!(tools_listed(&harness, &session).await, ["files__read"]);

    let gateway = harness.gateway.clone();
    let next = parse(&format!("{FILES}timeout = \"5s\"\n"));
    let reloading = tokio::spawn(async move { gateway.reload(&next).await });
    let mut new = harness
        .serve_when_made("files", json!([tool("write")]))
        .await;
    let reloaded = reloading.await.unwrap().unwrap();
    assert_eq!(reloaded.restarted, ["files"]);
    // The old instance was stopped; what it said last changes nothing.
    old.closed().await;
    assert_eq!(tools_listed(&harness, &session).await, ["files__write"]);

    let call = spawn_handle(
        &harness,
        &session,
        request(
            2,
            "tools/call",
            json!({ "name": "files__write", "arguments": {} }),
        ),
    );
    let seen = new.next_received().await;
    assert_eq!(seen["params"]["name"], "write", "{seen}");
    new.reply(&seen, text_result("written")).await;
    let reply = call.await.unwrap().unwrap();
    assert_eq!(reply["result"]["content"][0]["text"], "written", "{reply}");
    let refused = harness
        .handle(
            &session,
            request(
                3,
                "tools/call",
                json!({ "name": "files__read", "arguments": {} }),
            ),
        )
        .await
        .unwrap();
    assert!(refused["error"].is_object(), "{refused}");
}

#[tokio::test]
async fn a_name_discovery_answers_to_is_refused_and_nothing_changes() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = dir.path().join("team.yaml");
    std::fs::write(
        &catalog,
        "registry:\n  evil:\n    image: example/evil:1\n    tools:\n      - name: run\n",
    )
    .unwrap();
    let discovery = format!(
        "[[catalogs]]\nname = \"team\"\npath = \"{}\"\n[discovery]\ncatalogs = [\"team\"]\n",
        catalog.display()
    );
    let harness = Harness::new(&format!("{FILES}{discovery}"));
    let starting = harness.start();
    let _files = harness.serve("files", json!([tool("read")])).await;
    starting.await.unwrap();
    for (name, extra) in [("evil", discovery.as_str()), ("portcullis", "")] {
        // A config without `[discovery]` may name a server `portcullis`;
        // the running proxy's own tools still answer to it.
        let next = parse(&format!(
            "{FILES}[[servers]]\nname = \"{name}\"\nprocess = {{ command = \"scripted\" }}\n{extra}"
        ));
        let refused = harness.gateway.reload(&next).await;
        assert_eq!(
            refused,
            Err(super::ReloadError::NameTaken(name.to_owned())),
            "{name}"
        );
    }
    let names: Vec<String> = harness
        .gateway
        .servers()
        .upstreams()
        .iter()
        .map(|upstream| upstream.name().to_string())
        .collect();
    assert_eq!(names, ["files"]);
}

#[tokio::test]
async fn a_narrower_profile_applies_to_the_lists_at_once_without_asking_the_server() {
    let harness = Harness::new(FILES);
    let starting = harness.start();
    let files = harness
        .serve("files", json!([tool("read"), tool("write")]))
        .await;
    starting.await.unwrap();
    let (session, mut inbox) = harness.initialized_session("alice").await;
    assert_eq!(
        tools_listed(&harness, &session).await,
        ["files__read", "files__write"]
    );
    // Asked again, the server would list `extra`: the lists it sent are
    // filtered again instead, at once.
    files.answer_lists(json!([tool("read"), tool("write"), tool("extra")]));
    let mut next = parse(FILES);
    next.profile = Some(crate::config::profiles::Profile {
        name: "narrow".into(),
        servers: vec!["files".into()],
        tools: [(
            "files".to_owned(),
            ["read".to_owned(), "extra".to_owned()].into(),
        )]
        .into(),
        ..Default::default()
    });
    let reloaded = harness.gateway.reload(&next).await.unwrap();
    assert!(reloaded.profile && reloaded.restarted.is_empty());
    assert_eq!(tools_listed(&harness, &session).await, ["files__read"]);
    let told: Vec<Value> = std::iter::from_fn(|| inbox.try_recv().ok()).collect();
    assert!(
        told.iter()
            .any(|m| m["method"] == "notifications/tools/list_changed"),
        "{told:?}"
    );
    let hidden = harness
        .handle(
            &session,
            request(
                4,
                "tools/call",
                json!({ "name": "files__write", "arguments": {} }),
            ),
        )
        .await
        .unwrap();
    assert!(hidden["error"].is_object(), "{hidden}");
}

/// With `[code_mode]` on (and no `[discovery]`), a reload may not name a
/// server `portcullis` either, even in a config that turns code mode off:
/// the running proxy's code tool answers to that name.
#[tokio::test]
async fn the_code_tools_server_name_is_refused_on_reload() {
    let harness = Harness::new(&format!("{FILES}[code_mode]\nenabled = true\n"));
    let starting = harness.start();
    let _files = harness.serve("files", json!([tool("read")])).await;
    starting.await.unwrap();
    let next = parse(&format!(
        "{FILES}[[servers]]\nname = \"portcullis\"\nprocess = {{ command = \"scripted\" }}\n"
    ));
    let refused = harness.gateway.reload(&next).await;
    assert_eq!(
        refused,
        Err(super::ReloadError::NameTaken("portcullis".to_owned()))
    );
}
