//! A server that speaks MCP 2026-07-28 alone (the example server with
//! `--stateless`: rmcp then refuses `initialize` and every request without
//! its envelope) behind the proxy, configured `protocol = "2026-07-28"`:
//! reached by a client of the handshake revisions and by a 2026-07-28
//! client, with Cedar and redaction as for any server; its list changes
//! and resource updates reach clients of both kinds through the proxy's
//! own listen stream to it. What the proxy cannot relay of that revision
//! yet (its questions to clients) fails clearly, and a server configured
//! so that does not speak it does not start. Under `protocol = "auto"` the proxy finds what each server
//! speaks at its first start (`server/discover`, the handshake as
//! fallback) and keeps to it: a 2026-07-28 server (the example server,
//! `mcp-server-time` from PyPI), a handshake-only one, and strict ones that
//! exit on, or take their revision from, a first request other than
//! `initialize`.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{AUDITOR_TOKEN, TOKEN, TestProxy};
use rmcp::model::{GetPromptRequestParams, ProtocolVersion};
use rmcp::service::{ClientLifecycleMode, ClientServiceExt as _};
use serde_json::{Value, json};

const POLICIES: &str = r#"
@id("all") permit (principal, action, resource);
@id("no-add")
forbid (principal, action in [Action::"call_tool", Action::"list_tools"], resource == Tool::"modern__add");
"#;

/// The example server as `modern`, spoken to in `protocol`, run with
/// `args`.
fn proxy(protocol: &str, args: &str) -> TestProxy {
    let snippet = format!(
        "[[servers]]\nname = \"modern\"\nprotocol = \"{protocol}\"\n\
         process = {{ command = {cmd:?}, args = [\"--name\", \"modern\"{args}] }}\n",
        cmd = common::example_server_bin()
    );
    let proxy = TestProxy::new()
        .with_config("policies = \"policies\"\n[redact]\nresponses = \"redact\"")
        .with_server_toml(&snippet);
    proxy.policy_folder(POLICIES);
    proxy
}

fn stateless_proxy() -> TestProxy {
    proxy("2026-07-28", ", \"--stateless\"")
}

/// Tools, a denied tool, redaction, a resource and a prompt of the
/// 2026-07-28 server, through an rmcp client connected in `lifecycle`.
async fn exercise<T, E, A>(transport: T, lifecycle: ClientLifecycleMode, version: ProtocolVersion)
where
    T: rmcp::transport::IntoTransport<rmcp::RoleClient, E, A>,
    E: std::error::Error + Send + Sync + 'static,
{
    let client = ().serve_with_lifecycle(transport, lifecycle).await.expect("connect");
    let info = client.peer_info().expect("what the proxy said of itself");
    assert_eq!(info.protocol_version, version);
    // The server refuses any request without its envelope: an answer at
    // all says the proxy sent it.
    common::rmcp_enforced(&client, "modern").await;
    let prompt = client
        .get_prompt(
            GetPromptRequestParams::new("modern__greet")
                .with_arguments(json!({ "name": "Py" }).as_object().unwrap().clone()),
        )
        .await
        .expect("prompts/get");
    let prompt = serde_json::to_value(&prompt).unwrap();
    assert_eq!(
        prompt["messages"][0]["content"]["text"], "Please greet Py",
        "{prompt}"
    );
    client.cancel().await.expect("close");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_2026_07_28_server_serves_a_handshake_client() {
    use rmcp::transport::TokioChildProcess;
    let proxy = stateless_proxy();
    let (transport, _) = TokioChildProcess::builder(proxy.stdio_command())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("spawn portcullis stdio");
    let lifecycle = ClientLifecycleMode::Initialize;
    exercise(transport, lifecycle, ProtocolVersion::V_2025_11_25).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_2026_07_28_server_serves_a_2026_07_28_client_and_each_call_is_recorded() {
    use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
    let proxy = stateless_proxy();
    let served = proxy.serve_http().await;
    let transport = rmcp::transport::StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(served.url.clone()).auth_header(TOKEN),
    );
    let lifecycle = ClientLifecycleMode::Discover {
        preferred_versions: vec![ProtocolVersion::LATEST],
    };
    exercise(transport, lifecycle, ProtocolVersion::LATEST).await;
    let records = common::admin_records(&served.base, "kind=exchange", AUDITOR_TOKEN).await;
    let echo = records
        .iter()
        .find(|r| r["target"] == "echo")
        .unwrap_or_else(|| panic!("the call is recorded: {records:?}"));
    assert_eq!(echo["server"], "modern", "{echo}");
    assert_eq!(echo["decision"], "allow", "{echo}");
    served.terminate().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_2026_07_28_servers_questions_to_clients_fail_at_it_and_say_so() {
    let proxy = stateless_proxy();
    let mut client = proxy.raw_stdio().await;
    client.initialize().await;
    // The server's tools that ask the client mid-call fail at the server
    // (that revision has no such requests), and say so.
    let reply = client
        .call(
            2,
            "tools/call",
            json!({ "name": "modern__sample", "arguments": { "prompt": "hi" } }),
        )
        .await;
    let text: Value = reply["result"]["content"][0]["text"].clone();
    assert_eq!(reply["result"]["isError"], json!(true), "{reply}");
    assert!(
        text.as_str()
            .unwrap_or_default()
            .contains("sampling failed"),
        "{reply}"
    );
    client.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_2026_07_28_servers_changes_reach_a_2026_07_28_client_on_its_listen_stream() {
    let proxy = stateless_proxy();
    let served = proxy.serve_http().await;
    let transport = rmcp::transport::StreamableHttpClientTransport::from_config(
        rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig::with_uri(
            served.url.clone(),
        )
        .auth_header(TOKEN),
    );
    common::listening::listen_through(transport, "modern").await;
    served.terminate().await;
}

/// Calls the `modern` server's tool `name` with `arguments`; its reply.
async fn call(client: &mut common::RawClient, id: i64, name: &str, arguments: Value) -> Value {
    let params = json!({ "name": format!("modern__{name}"), "arguments": arguments });
    let reply = client.call(id, "tools/call", params).await;
    assert!(reply.get("result").is_some(), "{reply}");
    reply
}

#[tokio::test(flavor = "multi_thread")]
async fn a_2026_07_28_servers_changes_reach_a_handshake_client_as_its_subscriptions_and_list_changes()
 {
    let proxy = stateless_proxy();
    let mut client = proxy.raw_stdio().await;
    client.initialize().await;
    let greeting = json!({ "uri": "example://greeting" });
    let reply = client
        .call(1, "resources/subscribe", greeting.clone())
        .await;
    assert_eq!(reply["result"], json!({}), "{reply}");
    call(&mut client, 2, "touch", greeting.clone()).await;
    let updated = client
        .recv_matching("resources/updated", |m| {
            m["method"] == "notifications/resources/updated"
        })
        .await;
    assert_eq!(updated["params"]["uri"], "example://greeting", "{updated}");
    // The server's tag of the proxy's stream is not passed on.
    assert!(updated.pointer("/params/_meta").is_none(), "{updated}");
    call(&mut client, 3, "add_tool", json!({ "name": "fresh" })).await;
    client
        .recv_matching("tools/list_changed", |m| {
            m["method"] == "notifications/tools/list_changed"
        })
        .await;
    let tools = common::tool_names(&client.call(4, "tools/list", json!({})).await);
    assert!(tools.iter().any(|t| t == "modern__fresh"), "{tools:?}");
    // Unsubscribed: the stream is asked again without it, and its next
    // update is not sent; one to another URI subscribed after it is.
    let reply = client
        .call(5, "resources/unsubscribe", greeting.clone())
        .await;
    assert_eq!(reply["result"], json!({}), "{reply}");
    call(&mut client, 6, "touch", greeting).await;
    // One the server does not have is not granted on its stream: refused.
    let nowhere = json!({ "uri": "example://items/none" });
    let reply = client.call(9, "resources/subscribe", nowhere).await;
    assert_eq!(reply["error"]["code"], json!(-32603), "{reply}");
    let said = reply["error"]["message"].as_str().unwrap_or_default();
    assert!(said.contains("did not grant it"), "{said}");
    let item = json!({ "uri": "example://items/1" });
    let reply = client.call(7, "resources/subscribe", item.clone()).await;
    assert_eq!(reply["result"], json!({}), "{reply}");
    call(&mut client, 8, "touch", item).await;
    client
        .recv_matching("resources/updated of the item", |m| {
            m["method"] == "notifications/resources/updated"
                && m["params"]["uri"] == "example://items/1"
        })
        .await;
    assert!(
        !client
            .backlog()
            .iter()
            .any(|m| m["method"] == "notifications/resources/updated"),
        "{:?}",
        client.backlog()
    );
    client.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_configured_2026_07_28_that_does_not_speak_it_does_not_start() {
    // The example server without `--stateless` speaks the handshake alone.
    let proxy = proxy("2026-07-28", "");
    let mut client = proxy.raw_stdio().await;
    client.initialize().await;
    client.wait_for_log(&["server/discover"]).await;
    let reply = client.call(1, "tools/list", json!({})).await;
    let tools = common::tool_names(&reply);
    assert!(tools.is_empty(), "{tools:?}");
    client.finish().await;
}

#[test]
fn a_remote_server_cannot_be_configured_2026_07_28_yet() {
    let proxy = TestProxy::new().with_server_toml(
        "[[servers]]\nname = \"far\"\nprotocol = \"2026-07-28\"\n\
         remote = { url = \"http://127.0.0.1:9/mcp\" }\n",
    );
    let config = proxy.write_config();
    let said = common::serve_refused(&config);
    assert!(said.contains("servers[0].protocol"), "{said}");
    assert!(said.contains("not supported yet"), "{said}");
}

#[tokio::test(flavor = "multi_thread")]
async fn auto_finds_a_2026_07_28_server_and_serves_both_kinds_of_client_from_it() {
    use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
    // The server refuses `initialize` and any request without its
    // envelope: it works only if the proxy found what it speaks.
    let proxy = proxy("auto", ", \"--stateless\"");
    let served = proxy.serve_http().await;
    let connect = || {
        rmcp::transport::StreamableHttpClientTransport::from_config(
            StreamableHttpClientTransportConfig::with_uri(served.url.clone()).auth_header(TOKEN),
        )
    };
    let modern = ClientLifecycleMode::Discover {
        preferred_versions: vec![ProtocolVersion::LATEST],
    };
    exercise(connect(), modern, ProtocolVersion::LATEST).await;
    let legacy = ClientLifecycleMode::Initialize;
    exercise(connect(), legacy, ProtocolVersion::V_2025_11_25).await;
    served.terminate().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn auto_speaks_2026_07_28_to_mcp_server_time_from_pypi() {
    let mut proxy = TestProxy::new().with_time_server("time");
    proxy.servers_mut()[0].push_str("protocol = \"auto\"\n");
    let mut client = proxy.raw_stdio().await;
    client.initialize().await;
    client
        .wait_for_log(&["server=time", "it speaks 2026-07-28"])
        .await;
    let reply = client
        .call_until_served(
            0,
            json!({ "name": "time__get_current_time", "arguments": { "timezone": "UTC" } }),
            Duration::from_secs(30),
        )
        .await;
    let text = reply["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default();
    assert!(text.contains("UTC"), "{reply}");
    // A handshake client is not shown what only 2026-07-28 says.
    assert!(reply["result"].get("resultType").is_none(), "{reply}");
    client.finish().await;
}

/// The raw fixture server as `strict` under `protocol = "auto"`, with
/// `flag` (or none).
fn strict_proxy(flag: &str) -> TestProxy {
    let script = common::repo_root().join("tests/fixtures/raw_upstream.py");
    let flag = if flag.is_empty() {
        String::new()
    } else {
        format!(", {flag:?}")
    };
    TestProxy::new().with_server_toml(&format!(
        "[[servers]]\nname = \"strict\"\nprotocol = \"auto\"\n\
         process = {{ command = \"python3\", args = [{script:?}{flag}] }}\n"
    ))
}

/// Calls `strict__mirror` (until the server is up) and returns what the
/// server's process was sent before `initialize`.
async fn sent_before_initialize(client: &mut common::RawClient) -> Value {
    let reply = client
        .call_until_served(
            0,
            json!({ "name": "strict__mirror", "arguments": {} }),
            Duration::from_secs(30),
        )
        .await;
    let received = &reply["result"]["structuredContent"]["received"];
    // Spoken to with the handshake: no envelope on its requests.
    assert!(received.pointer("/params/_meta").is_none(), "{reply}");
    reply["result"]["structuredContent"]["before"].clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn auto_falls_back_to_the_handshake_on_the_same_process() {
    let proxy = strict_proxy("");
    let mut client = proxy.raw_stdio().await;
    client.initialize().await;
    assert_eq!(
        sent_before_initialize(&mut client).await,
        json!(["server/discover"])
    );
    client
        .wait_for_log(&["server=strict", "not a 2026-07-28 server"])
        .await;
    client.finish().await;
}

/// Under `auto`, the strict server (`flag`) fails its first start as the
/// log says (`failed`), and the next one, with the handshake first, serves:
/// its process was never sent `server/discover`.
async fn started_again_with_the_handshake(flag: &str, failed: &str) {
    let proxy = strict_proxy(flag);
    let mut client = proxy.raw_stdio().await;
    client.initialize().await;
    client.wait_for_log(&["server=strict", failed]).await;
    assert_eq!(sent_before_initialize(&mut client).await, json!([]));
    client.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn auto_starts_a_server_that_exits_on_discover_again_with_the_handshake() {
    started_again_with_the_handshake("--exits-unless-initialized", "exited during the handshake")
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn auto_starts_a_server_whose_first_request_decides_again_with_the_handshake() {
    started_again_with_the_handshake(
        "--first-request-decides",
        "took its revision from its first request",
    )
    .await;
}
