//! A server that speaks MCP 2026-07-28 alone (the example server with
//! `--stateless`: rmcp then refuses `initialize` and every request without
//! its envelope) behind the proxy, configured `protocol = "2026-07-28"`:
//! reached by a client of the handshake revisions and by a 2026-07-28
//! client, with Cedar and redaction as for any server. What the proxy
//! cannot relay of that revision yet (resource subscriptions) is refused
//! clearly, and a server configured so that does not speak it does not
//! start.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

mod common;

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
async fn what_the_proxy_cannot_relay_to_a_2026_07_28_server_is_refused_clearly() {
    let proxy = stateless_proxy();
    let mut client = proxy.raw_stdio().await;
    client.initialize().await;
    let reply = client
        .call(
            1,
            "resources/subscribe",
            json!({ "uri": "example://greeting" }),
        )
        .await;
    assert_eq!(reply["error"]["code"], json!(-32601), "{reply}");
    let said = reply["error"]["message"].as_str().unwrap_or_default();
    assert!(said.contains("2026-07-28"), "{said}");
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
