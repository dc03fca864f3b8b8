//! `[discovery]` on the real engine: `portcullis__find` ranks a catalog's
//! servers, `portcullis__add` starts one hardened for the calling session
//! only (another session neither lists nor calls it), Cedar's
//! `find_servers` and `add_server` decide what a client finds and adds,
//! what a description asks beyond the hardened profile is never started,
//! and every call is recorded. Fails, never skips, without the engine.
#![allow(
    clippy::indexing_slicing,
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used
)]

mod common;

use std::time::Duration;

use common::{AUDITOR_TOKEN, HttpSession, OTHER_TOKEN, TestProxy, first_text, tool_names};
use serde_json::{Value, json};

/// The running containers of server `name`.
async fn running(docker: &bollard::Docker, name: &str) -> usize {
    portcullis::upstream::container::labelled(
        docker,
        &format!("{}={name}", portcullis::upstream::container::LABEL_SERVER),
    )
    .await
    .unwrap()
    .into_iter()
    .filter(|found| found.state == Some(bollard::models::ContainerSummaryStateEnum::RUNNING))
    .count()
}

/// A catalog in Docker's format: two servers that can run, two whose
/// descriptions ask for more than the hardened profile.
fn catalog(image: &str) -> String {
    format!(
        r#"version: 2
name: team
registry:
  echoer:
    image: {image}
    title: Echoer
    description: Repeats text back to the caller
    command: ["--name", "echoer"]
    tools:
      - name: echo
        description: Echo the text
  second:
    image: {image}
    description: Another echo
    command: ["--name", "second"]
    tools:
      - name: echo
  third:
    image: {image}
    description: A third echo
    command: ["--name", "third"]
  clock:
    image: {image}
    title: Clock
    description: Tells the time in any zone
    command: ["--name", "clock"]
    tools:
      - name: now
  rooted:
    image: {image}
    description: Wants to echo as root
    user: root
  netted:
    image: {image}
    description: Wants the network to echo
    allowHosts: ["example.com:443"]
"#
    )
}

const POLICIES: &str = r#"
permit(principal, action, resource);
// `other` may find servers, but add none.
forbid(principal == Client::"other", action == Action::"add_server", resource);
// Nobody finds `clock`.
forbid(principal, action == Action::"find_servers", resource == Server::"clock");
"#;

fn text_json(reply: &Value) -> Value {
    serde_json::from_str(&first_text(reply)).unwrap_or_else(|_| panic!("JSON text in {reply}"))
}

async fn call_tool(session: &HttpSession, id: i64, name: &str, arguments: Value) -> Value {
    session
        .call(
            id,
            "tools/call",
            json!({ "name": name, "arguments": arguments }),
        )
        .await
}

/// `portcullis__find` of `query`: its answer.
async fn find(session: &HttpSession, id: i64, query: &str) -> Value {
    text_json(&call_tool(session, id, "portcullis__find", json!({ "query": query })).await)
}

/// The reply refuses a call of a tool the session does not see.
fn assert_unknown(reply: &Value) {
    let message = reply["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("unknown tool"), "{reply}");
}

async fn list(session: &HttpSession, id: i64) -> Vec<String> {
    tool_names(&session.call(id, "tools/list", json!({})).await)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_finds_and_adds_a_server_for_its_session_only() {
    let docker = common::docker().await;
    let image = common::test_image();
    let proxy = TestProxy::new();
    std::fs::write(proxy.dir().join("team.yaml"), catalog(&image)).unwrap();
    proxy.policy_folder(POLICIES);
    let proxy = proxy
        .with_config(
            "policies = \"policies\"\n[[catalogs]]\nname = \"team\"\npath = \"team.yaml\"\n[discovery]\ncatalogs = [\"team\"]\nmax_servers_per_session = 2\n",
        )
        .with_example_server("plain");
    let proxy_running = proxy.serve_http().await;
    let mine = HttpSession::connect(&proxy_running.url).await;
    let theirs = HttpSession::connect(&proxy_running.url).await;
    let other = HttpSession::connect_as(&proxy_running.url, OTHER_TOKEN).await;

    // Before anyone adds anything: the proxy's tools, no catalog server's.
    let names = list(&mine, 1).await;
    for tool in ["portcullis__find", "portcullis__add", "portcullis__remove"] {
        assert!(names.contains(&tool.to_owned()), "{names:?}");
    }
    assert!(
        names.iter().all(|name| !name.starts_with("echoer__")),
        "{names:?}"
    );
    // Nothing of the catalog runs yet.
    assert_eq!(running(&docker, "echoer").await, 0);

    // find: ranked by BM25, `clock` hidden by policy, refusals shown.
    let found = find(&mine, 2, "echo text").await;
    let servers = found["servers"].as_array().unwrap();
    assert_eq!(servers[0]["name"], "echoer", "{found}");
    assert_eq!(servers[0]["available"], true, "{found}");
    assert_eq!(servers[0]["tools"], json!(["echo"]), "{found}");
    let rooted = servers
        .iter()
        .find(|s| s["name"] == "rooted")
        .expect("rooted found");
    assert_eq!(rooted["available"], false, "{found}");
    assert!(
        rooted["reason"].as_str().unwrap().contains("root"),
        "{found}"
    );
    let found = find(&mine, 3, "time zone clock").await;
    assert!(
        found["servers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["name"] != "clock"),
        "a forbid on find_servers hides it: {found}"
    );
    // A catalog server's tool is unknown to whoever did not add it.
    let refused = call_tool(&mine, 4, "echoer__echo", json!({ "text": "hi" })).await;
    assert_unknown(&refused);

    // add: started for this session, which is told its list changed.
    let mut events = mine.events().await;
    let added = call_tool(&mine, 5, "portcullis__add", json!({ "name": "echoer" })).await;
    assert_eq!(added["result"]["isError"], false, "{added}");
    let added = text_json(&added);
    assert!(
        added["tools"]
            .as_array()
            .unwrap()
            .contains(&json!("echoer__echo")),
        "{added}"
    );
    let changed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let message = events.recv().await.expect("the stream stays open");
            if message["method"] == "notifications/tools/list_changed" {
                return message;
            }
        }
    })
    .await
    .expect("tools/list_changed reaches the session that added the server");
    assert_eq!(changed["method"], "notifications/tools/list_changed");
    assert!(list(&mine, 6).await.contains(&"echoer__echo".to_owned()));
    let echoed = call_tool(&mine, 7, "echoer__echo", json!({ "text": "hi" })).await;
    assert_eq!(first_text(&echoed), "echoer: hi", "{echoed}");
    // Under the hardened profile.
    let probe = call_tool(&mine, 8, "echoer__sandbox_probe", json!({})).await;
    let probe = &probe["result"]["structuredContent"];
    assert_eq!(probe["uid"], 65534, "{probe}");
    assert_eq!(probe["network_interfaces"], json!(["lo"]), "{probe}");

    // Another session of the same client neither lists nor calls it.
    assert!(!list(&theirs, 1).await.contains(&"echoer__echo".to_owned()));
    let refused = call_tool(&theirs, 2, "echoer__echo", json!({ "text": "hi" })).await;
    assert_unknown(&refused);

    // A Cedar forbid on add_server stops another client.
    let denied = call_tool(&other, 1, "portcullis__add", json!({ "name": "echoer" })).await;
    assert_eq!(denied["error"]["code"], -32010, "{denied}");
    assert!(
        denied["error"]["message"]
            .as_str()
            .unwrap()
            .contains("add_server"),
        "{denied}"
    );
    assert!(!list(&other, 2).await.contains(&"echoer__echo".to_owned()));

    // What asks beyond the hardened profile is never started.
    for (id, name, asked) in [(9, "rooted", "root"), (10, "netted", "network")] {
        let refused = call_tool(&mine, id, "portcullis__add", json!({ "name": name })).await;
        assert_eq!(refused["result"]["isError"], true, "{refused}");
        assert!(first_text(&refused).contains(asked), "{refused}");
        assert_eq!(running(&docker, name).await, 0, "{name}");
    }
    let unknown = call_tool(&mine, 11, "portcullis__add", json!({ "name": "nope" })).await;
    assert_eq!(unknown["result"]["isError"], true, "{unknown}");
    // A server the client may not find is one no catalog offers, to it.
    let hidden = call_tool(&mine, 17, "portcullis__add", json!({ "name": "clock" })).await;
    assert_eq!(hidden["result"]["isError"], true, "{hidden}");
    assert_eq!(
        first_text(&hidden),
        first_text(&unknown).replace("nope", "clock"),
        "no hint that it exists"
    );

    // The session's cap (2): a second server fits, a third does not.
    let second = call_tool(&mine, 12, "portcullis__add", json!({ "name": "second" })).await;
    assert_eq!(second["result"]["isError"], false, "{second}");
    let names = list(&mine, 13).await;
    assert!(names.contains(&"second__echo".to_owned()), "{names:?}");
    let third = call_tool(&mine, 18, "portcullis__add", json!({ "name": "third" })).await;
    assert_eq!(third["result"]["isError"], true, "{third}");
    assert!(first_text(&third).contains("the most it may"), "{third}");
    assert_eq!(running(&docker, "third").await, 0);

    // remove: gone from the session's lists and calls.
    let removed = call_tool(&mine, 14, "portcullis__remove", json!({ "name": "echoer" })).await;
    assert_eq!(removed["result"]["isError"], false, "{removed}");
    assert!(!list(&mine, 15).await.contains(&"echoer__echo".to_owned()));
    let refused = call_tool(&mine, 16, "echoer__echo", json!({ "text": "hi" })).await;
    assert_unknown(&refused);

    // Every call recorded: the add allowed, the add denied with its decision.
    let records = common::admin_records(
        &proxy_running.base,
        "kind=exchange&limit=500",
        AUDITOR_TOKEN,
    )
    .await;
    let adds: Vec<&Value> = records
        .iter()
        .filter(|r| r["server"] == "portcullis" && r["target"] == "add")
        .collect();
    let allowed = adds
        .iter()
        .find(|r| r["client"] == "tester" && r["detail"]["discovery"]["server"] == "echoer")
        .expect("the add is recorded");
    assert_eq!(allowed["decision"], "allow", "{allowed}");
    assert_eq!(
        allowed["detail"]["discovery"]["catalog"], "team",
        "{allowed}"
    );
    let denied = adds
        .iter()
        .find(|r| r["client"] == "other")
        .expect("the denied add is recorded");
    assert_eq!(denied["decision"], "deny", "{denied}");
    assert!(denied["decision_id"].is_string(), "{denied}");
    proxy_running.terminate().await;
}

#[test]
fn discovery_needs_a_known_catalog_and_keeps_the_proxy_name() {
    let proxy = TestProxy::new();
    let refused = common::serve_refused(
        &proxy
            .with_config("[discovery]\ncatalogs = [\"missing\"]\n")
            .write_config(),
    );
    assert!(
        refused.contains("no `[[catalogs]]` is named `missing`"),
        "{refused}"
    );
    let proxy = TestProxy::new();
    std::fs::write(proxy.dir().join("team.yaml"), "registry: {}\n").unwrap();
    let refused = common::serve_refused(
        &proxy
            .with_config("[[catalogs]]\nname = \"team\"\npath = \"team.yaml\"\n[discovery]\ncatalogs = [\"team\"]\n")
            .with_example_server("portcullis")
            .write_config(),
    );
    assert!(refused.contains("the proxy's own"), "{refused}");
}
