//! The 2026-07-28 revision toward clients, sent by hand as an attacker
//! would: no handshake, each request carrying its version and capabilities
//! in `params._meta` and saying in headers what its body says. What the
//! client and the server actually receive is asserted: headers that lie
//! are refused before any work, Cedar and redaction hold as on the
//! handshake path, the record says which revision was spoken, and a client
//! closing its response cancels the call at the server.
#![allow(
    clippy::indexing_slicing,
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used
)]

mod common;

use std::time::Duration;

use base64::Engine as _;
use common::listening::{
    call_tool, http_transport, listen_through, modern_rmcp, next_notification, stdio_transport,
};
use common::{AUDITOR_TOKEN, GITHUB_TOKEN, OTHER_TOKEN, TOKEN, TestProxy};
use serde_json::{Value, json};

const VERSION: &str = "2026-07-28";

const POLICIES: &str = r#"
@id("all") permit (principal, action, resource);
@id("no-add")
forbid (principal, action in [Action::"call_tool", Action::"list_tools"], resource == Tool::"example__add");
@id("other-not-example")
forbid (principal == Client::"other", action, resource in Server::"example");
"#;

fn proxy() -> TestProxy {
    common::redacting_proxy(POLICIES)
}

/// A 2026-07-28 request of `method`.
fn request(id: i64, method: &str, mut params: Value) -> Value {
    params["_meta"] = json!({
        "io.modelcontextprotocol/protocolVersion": VERSION,
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": { "name": "by-hand", "version": "0" },
    });
    json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params })
}

/// The headers the revision wants for `message`, as a well-behaved client
/// sends them.
fn headers_of(message: &Value) -> Headers {
    let mut headers = vec![
        ("mcp-protocol-version", VERSION.to_owned()),
        ("mcp-method", message["method"].as_str().unwrap().to_owned()),
    ];
    let params = &message["params"];
    let name = params["name"].as_str().or(params["uri"].as_str());
    if let Some(name) = name.or(params["taskId"].as_str()) {
        headers.push(("mcp-name", name.to_owned()));
    }
    headers
}

type Headers = Vec<(&'static str, String)>;

/// POSTs `message` with `headers`: the status and the JSON body.
async fn post(url: &str, message: &Value, headers: &[(&str, String)]) -> (u16, Value) {
    let mut builder = reqwest::Client::new()
        .post(url)
        .bearer_auth(TOKEN)
        .header("accept", "application/json, text/event-stream")
        .json(message);
    for (name, value) in headers {
        builder = builder.header(*name, value);
    }
    let response = builder.send().await.expect("POST /mcp");
    let status = response.status().as_u16();
    let text = response.text().await.expect("a body");
    let body = serde_json::from_str(&text).unwrap_or_else(|_| json!({ "text": text }));
    (status, body)
}

async fn send(url: &str, message: Value) -> (u16, Value) {
    let headers = headers_of(&message);
    post(url, &message, &headers).await
}

fn names(reply: &Value) -> Vec<String> {
    common::tool_names(reply)
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_without_a_session_are_enforced_framed_and_recorded() {
    let proxy = proxy();
    let served = proxy.serve_http().await;
    let url = &served.url;

    let (status, discover) = send(url, request(1, "server/discover", json!({}))).await;
    assert_eq!(status, 200, "{discover}");
    let result = &discover["result"];
    assert_eq!(
        result["supportedVersions"],
        json!([VERSION, "2025-11-25", "2025-06-18", "2024-11-05"])
    );
    assert_eq!(result["resultType"], "complete");
    assert_eq!(result["cacheScope"], "private", "{result}");
    // List changes and resource updates, on a listen stream.
    assert_eq!(
        result["capabilities"]["tools"]["listChanged"], true,
        "{result}"
    );
    assert_eq!(
        result["capabilities"]["resources"]["subscribe"], true,
        "{result}"
    );

    // The list is this client's: a tool Cedar forbids is not in it.
    let (status, list) = send(url, request(2, "tools/list", json!({}))).await;
    assert_eq!(status, 200);
    let tools = names(&list);
    assert!(tools.contains(&"example__echo".to_owned()), "{tools:?}");
    assert!(!tools.contains(&"example__add".to_owned()), "{tools:?}");
    assert_eq!(list["result"]["cacheScope"], "private");

    // A denied call is refused as on the handshake path.
    let add = request(
        3,
        "tools/call",
        json!({ "name": "example__add", "arguments": { "a": 1, "b": 2 } }),
    );
    let (status, denied) = send(url, add).await;
    assert_eq!(status, 200, "{denied}");
    assert_eq!(denied["error"]["code"], -32010, "{denied}");
    assert!(denied.get("result").is_none());

    // A secret in a server's answer is redacted before the client sees it;
    // the server was sent the request as a client of its own revision
    // would send it (no 2026-07-28 envelope).
    let echo = request(
        4,
        "tools/call",
        json!({ "name": "example__echo", "arguments": { "text": format!("use {GITHUB_TOKEN}") } }),
    );
    let (status, echoed) = send(url, echo).await;
    assert_eq!(status, 200, "{echoed}");
    let text = common::first_text(&echoed);
    assert_eq!(text, "example: use [REDACTED:github-pat-classic]");
    assert!(!echoed.to_string().contains(GITHUB_TOKEN));
    assert_eq!(echoed["result"]["resultType"], "complete");

    // The name in a header may be base64 (for names that are not plain
    // ASCII); it still has to be the body's.
    let message = request(
        5,
        "tools/call",
        json!({ "name": "example__echo", "arguments": { "text": "b64" } }),
    );
    let encoded = base64::engine::general_purpose::STANDARD.encode("example__echo");
    let mut headers = headers_of(&message);
    headers.retain(|(name, _)| *name != "mcp-name");
    headers.push(("mcp-name", format!("=?base64?{encoded}?=")));
    let (status, reply) = post(url, &message, &headers).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(common::first_text(&reply), "example: b64");

    // Each call is recorded with the revision its client spoke.
    let records = common::admin_records(&served.base, "kind=exchange", AUDITOR_TOKEN).await;
    let echo = records
        .iter()
        .find(|r| r["target"] == "echo" && r["request_id"] == 4)
        .unwrap_or_else(|| panic!("the echo call is recorded: {records:?}"));
    assert_eq!(echo["protocol"], VERSION, "{echo}");
    assert_eq!(echo["decision"], "allow");
    let add = records
        .iter()
        .find(|r| r["target"] == "add")
        .unwrap_or_else(|| panic!("the denial is recorded: {records:?}"));
    assert_eq!(add["decision"], "deny");
    assert_eq!(add["protocol"], VERSION);
    served.terminate().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn headers_that_do_not_say_what_the_body_says_are_refused_before_any_work() {
    let proxy = proxy();
    let served = proxy.serve_http().await;
    let url = &served.url;
    let echo = request(
        1,
        "tools/call",
        json!({ "name": "example__echo", "arguments": { "text": "x" } }),
    );
    let add = request(
        2,
        "tools/call",
        json!({ "name": "example__add", "arguments": { "a": 1, "b": 2 } }),
    );
    // A task's request names its task: a router would send it by that.
    let get = request(3, "tasks/get", json!({ "taskId": "portcullis-task-a" }));
    let replace = |message: &Value, name: &'static str, value: Option<&str>| {
        let mut headers = headers_of(message);
        headers.retain(|(n, _)| *n != name);
        if let Some(value) = value {
            headers.push((name, value.to_owned()));
        }
        headers
    };
    let cases: Vec<(&str, &Value, Headers)> = vec![
        // A router that trusts the header would send this to `echo`'s
        // server and policy; the body calls the forbidden `add`.
        (
            "a name that is not the body's",
            &add,
            replace(&add, "mcp-name", Some("example__echo")),
        ),
        (
            "a method that is not the body's",
            &echo,
            replace(&echo, "mcp-method", Some("tools/list")),
        ),
        ("no name", &echo, replace(&echo, "mcp-name", None)),
        (
            "a task that is not the body's",
            &get,
            replace(&get, "mcp-name", Some("portcullis-task-b")),
        ),
        ("no task named", &get, replace(&get, "mcp-name", None)),
        ("no method", &echo, replace(&echo, "mcp-method", None)),
        (
            "no version",
            &echo,
            replace(&echo, "mcp-protocol-version", None),
        ),
        (
            "a name in base64 that is not the body's",
            &add,
            replace(&add, "mcp-name", Some("=?base64?ZXhhbXBsZV9fZWNobw==?=")),
        ),
        (
            // Two names: a router between may read the other one.
            "a name sent twice",
            &echo,
            {
                let mut headers = headers_of(&echo);
                headers.push(("mcp-name", "example__add".to_owned()));
                headers
            },
        ),
        ("a version sent twice", &echo, {
            let mut headers = headers_of(&echo);
            headers.push(("mcp-protocol-version", "2025-11-25".to_owned()));
            headers
        }),
        (
            "raw UTF-8 where the revision wants base64",
            &echo,
            replace(&echo, "mcp-name", Some("exämple__echo")),
        ),
    ];
    for (what, message, headers) in cases {
        let (status, reply) = post(url, message, &headers).await;
        assert_eq!(status, 400, "{what}: {reply}");
        assert_eq!(reply["error"]["code"], -32020, "{what}: {reply}");
        assert_eq!(reply["id"], message["id"], "{what}: {reply}");
    }
    // A body of one version under a header of another.
    let mut older = echo.clone();
    older["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"] = json!("2025-11-25");
    let headers = headers_of(&echo);
    let (status, reply) = post(url, &older, &headers).await;
    assert_eq!(
        (status, &reply["error"]["code"]),
        (400, &json!(-32020)),
        "{reply}"
    );

    // A handshake session's request with a header sent twice: refused too.
    let http = reqwest::Client::new();
    let session = common::initialize_http(&http, url, TOKEN, "twice").await;
    let response = http
        .post(url)
        .bearer_auth(TOKEN)
        .header("accept", "application/json")
        .header("mcp-session-id", &session)
        .header("mcp-method", "tools/list")
        .header("mcp-method", "tools/call")
        .json(&json!({ "jsonrpc": "2.0", "id": 7, "method": "tools/list" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let reply: Value = response.json().await.unwrap();
    assert_eq!(reply["error"]["code"], -32020, "{reply}");

    // None of them reached a server or the chain: nothing was recorded.
    let records = common::admin_records(&served.base, "kind=exchange", AUDITOR_TOKEN).await;
    assert!(
        records
            .iter()
            .all(|r| r["method"] != "tools/call" && r["method"] != "tasks/get"),
        "{records:?}"
    );
    served.terminate().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_versions_removed_methods_and_missing_envelopes_get_clear_refusals() {
    let proxy = proxy();
    let served = proxy.serve_http().await;
    let url = &served.url;

    // A version the proxy does not speak: what it does speak, to retry with.
    let mut future = request(1, "tools/list", json!({}));
    future["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"] = json!("2099-01-01");
    let mut headers = headers_of(&future);
    headers[0].1 = "2099-01-01".into();
    let (status, reply) = post(url, &future, &headers).await;
    assert_eq!(status, 400, "{reply}");
    assert_eq!(reply["error"]["code"], -32022, "{reply}");
    assert_eq!(reply["error"]["data"]["requested"], "2099-01-01");
    assert_eq!(
        reply["error"]["data"]["supported"],
        json!([VERSION, "2025-11-25", "2025-06-18", "2024-11-05"])
    );

    // The revision's header with no envelope in the body.
    let bare = json!({ "jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {} });
    let (status, reply) = post(url, &bare, &headers_of(&bare)).await;
    assert_eq!(
        (status, &reply["error"]["code"]),
        (400, &json!(-32602)),
        "{reply}"
    );

    // A method the proxy does not know is 404; a server's own unknown-
    // method error to a method the proxy serves is a JSON-RPC error (200).
    let (status, reply) = send(url, request(7, "frobnicate/now", json!({}))).await;
    assert_eq!(
        (status, &reply["error"]["code"]),
        (404, &json!(-32601)),
        "{reply}"
    );
    let complete = request(
        8,
        "completion/complete",
        json!({ "ref": { "type": "ref/prompt", "name": "example__greet" },
            "argument": { "name": "name", "value": "A" } }),
    );
    let (status, reply) = send(url, complete).await;
    assert_eq!(status, 200, "{reply}");

    // What the revision removed is an unknown method: 404.
    for (id, method) in [(3, "ping"), (4, "logging/setLevel"), (5, "initialize")] {
        let (status, reply) = send(url, request(id, method, json!({}))).await;
        assert_eq!(status, 404, "{method}: {reply}");
        assert_eq!(reply["error"]["code"], -32601, "{method}: {reply}");
    }

    // A response posted by the client answers nothing: there was no question.
    let response = json!({ "jsonrpc": "2.0", "id": 9, "result": {} });
    let headers = vec![("mcp-protocol-version", VERSION.to_owned())];
    let (status, _) = post(url, &response, &headers).await;
    assert_eq!(status, 400);

    // No GET stream, no DELETE.
    let http = reqwest::Client::new();
    for method in [reqwest::Method::GET, reqwest::Method::DELETE] {
        let response = http
            .request(method.clone(), url)
            .bearer_auth(TOKEN)
            .header("accept", "text/event-stream")
            .header("mcp-protocol-version", VERSION)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 405, "{method}");
        assert_eq!(response.headers()["allow"], "POST", "{method}");
    }

    // Without a token, nothing of this is reached.
    let anonymous = reqwest::Client::new()
        .post(url)
        .header("mcp-protocol-version", VERSION)
        .json(&request(6, "server/discover", json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);
    served.terminate().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_closing_its_response_cancels_the_call_at_the_server() {
    let proxy = proxy();
    let served = proxy.serve_http().await;
    let sleep = request(
        1,
        "tools/call",
        json!({ "name": "example__sleep", "arguments": { "ms": 600_000 } }),
    );
    let headers = headers_of(&sleep);
    let mut builder = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap()
        .post(&served.url)
        .bearer_auth(TOKEN)
        .header("accept", "application/json, text/event-stream")
        .json(&sleep);
    for (name, value) in &headers {
        builder = builder.header(*name, value);
    }
    let gave_up = builder.send().await;
    assert!(gave_up.is_err(), "the call cannot have ended: {gave_up:?}");

    // The call ends as cancelled (its server stops sleeping), long before
    // the ten minutes it asked for.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let records = common::admin_records(&served.base, "kind=exchange", AUDITOR_TOKEN).await;
        if let Some(record) = records.iter().find(|r| r["target"] == "sleep") {
            assert_eq!(record["decision"], "error", "{record}");
            assert_eq!(record["reason"], "cancelled by the client", "{record}");
            assert_eq!(record["protocol"], VERSION, "{record}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the cancelled call was never recorded: {records:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    served.terminate().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stdio_connection_keeps_the_revision_its_first_request_spoke() {
    let proxy = proxy();
    // A 2026-07-28 connection: no handshake; `initialize` later is refused
    // with the one version it serves.
    let mut client = proxy.raw_stdio().await;
    // A notification before any request decides nothing.
    client
        .send(
            json!({ "jsonrpc": "2.0", "method": "notifications/cancelled",
            "params": { "requestId": 99 } }),
        )
        .await;
    let discover = client
        .call_raw(request(10, "server/discover", json!({})))
        .await;
    // This connection now speaks 2026-07-28 and nothing else.
    assert_eq!(
        discover["result"]["supportedVersions"],
        json!([VERSION]),
        "{discover}"
    );
    let list = client.call_raw(request(1, "tools/list", json!({}))).await;
    assert_eq!(list["result"]["resultType"], "complete", "{list}");
    assert!(!names(&list).contains(&"example__add".to_owned()));
    let echo = request(
        2,
        "tools/call",
        json!({ "name": "example__echo", "arguments": { "text": GITHUB_TOKEN } }),
    );
    let echoed = client.call_raw(echo).await;
    assert_eq!(
        common::first_text(&echoed),
        "example: [REDACTED:github-pat-classic]"
    );
    let init = json!({ "jsonrpc": "2.0", "id": 3, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": { "name": "late", "version": "0" } } });
    let refused = client.call_raw(init).await;
    assert_eq!(refused["error"]["code"], -32022, "{refused}");
    assert_eq!(refused["error"]["data"]["supported"], json!([VERSION]));
    let no_envelope = json!({ "jsonrpc": "2.0", "id": 4, "method": "tools/list" });
    let refused = client.call_raw(no_envelope).await;
    assert_eq!(refused["error"]["code"], -32602, "{refused}");
    client.finish().await;

    // A handshake connection refuses a 2026-07-28 request.
    let mut client = proxy.raw_stdio().await;
    client.initialize().await;
    let refused = client.call_raw(request(5, "tools/list", json!({}))).await;
    assert_eq!(refused["error"]["code"], -32600, "{refused}");
    let list = client.call(6, "tools/list", json!({})).await;
    assert!(list["result"].get("resultType").is_none(), "{list}");
    let discover = client.call(7, "server/discover", json!({})).await;
    assert_eq!(discover["error"]["code"], -32601, "{discover}");
    client.finish().await;
}

/// rmcp 3.11's client at `ProtocolVersion::LATEST` (2026-07-28) in its
/// `Auto` lifecycle: `server/discover`, then stateless requests (the
/// handshake only if discovery fails, which the assertion on the version
/// would catch). (Its plain `serve` does the handshake, naming LATEST in
/// `initialize`; the proxy answers that with 2025-11-25, as any handshake
/// server that does not know a version.)
async fn rmcp_at_latest<T, E, A>(transport: T)
where
    T: rmcp::transport::IntoTransport<rmcp::RoleClient, E, A>,
    E: std::error::Error + Send + Sync + 'static,
{
    use rmcp::model::ProtocolVersion;
    use rmcp::service::{ClientLifecycleMode, ClientServiceExt as _};
    let lifecycle = ClientLifecycleMode::Auto {
        preferred_versions: vec![ProtocolVersion::LATEST],
        legacy_version: Some(ProtocolVersion::V_2025_11_25),
    };
    let client = ().serve_with_lifecycle(transport, lifecycle).await.expect("connect at LATEST");
    let info = client.peer_info().expect("what the proxy said of itself");
    assert_eq!(info.protocol_version, ProtocolVersion::LATEST);
    assert_eq!(info.protocol_version.to_string(), VERSION);
    common::rmcp_enforced(&client, "example").await;
    client.cancel().await.expect("close");
}

#[tokio::test(flavor = "multi_thread")]
async fn rmcp_client_at_latest_over_http() {
    let proxy = proxy();
    let served = proxy.serve_http().await;
    let transport = http_transport(&served.url, TOKEN);
    rmcp_at_latest(transport).await;
    served.terminate().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rmcp_client_at_latest_over_stdio() {
    let proxy = proxy();
    let transport = stdio_transport(&proxy);
    rmcp_at_latest(transport).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn subscriptions_listen_over_http_carries_what_was_granted() {
    let proxy = proxy();
    let served = proxy.serve_http().await;
    let transport = http_transport(&served.url, TOKEN);
    listen_through(transport, "example").await;
    // The subscription was recorded as the client's own, and ended with
    // the stream.
    let records = common::admin_records(&served.base, "kind=exchange", AUDITOR_TOKEN).await;
    let subscribed = records
        .iter()
        .find(|r| r["method"] == "resources/subscribe" && r["target"] == "example://greeting")
        .unwrap_or_else(|| panic!("the subscription is recorded: {records:?}"));
    assert_eq!(subscribed["client"], "tester");
    assert_eq!(subscribed["decision"], "allow");
    // Its id names the listen request it was made for.
    let id = subscribed["request_id"].as_str().unwrap_or_default();
    assert!(id.starts_with("portcullis-listen-"), "{subscribed}");
    // The listen itself is recorded when it ends: the client ending it is
    // its normal end.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let listened = loop {
        let records = common::admin_records(&served.base, "kind=exchange", AUDITOR_TOKEN).await;
        if let Some(found) = records
            .iter()
            .find(|r| r["method"] == "subscriptions/listen")
        {
            break found.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the ended listen was never recorded: {records:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(listened["decision"], "allow", "{listened}");
    assert_eq!(listened["protocol"], VERSION);
    assert_eq!(subscribed["protocol"], VERSION);
    served.terminate().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn subscriptions_listen_over_stdio_carries_what_was_granted() {
    let proxy = proxy();
    let transport = stdio_transport(&proxy);
    listen_through(transport, "example").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_listen_stream_hears_nothing_of_a_server_its_client_may_not_use() {
    use rmcp::model::{ServerNotification, SubscriptionFilter};
    let proxy = proxy();
    let served = proxy.serve_http().await;
    let tester = modern_rmcp(http_transport(&served.url, TOKEN)).await;
    let other = modern_rmcp(http_transport(&served.url, OTHER_TOKEN)).await;
    // `other` asks for the greeting's updates: Cedar refuses the
    // subscription, so the stream is not granted it.
    let filter = SubscriptionFilter::builder()
        .tools_list_changed()
        .resource_subscription("example://greeting")
        .build();
    let mut listening = other.listen(filter).await.expect("other listens");
    assert_eq!(listening.acknowledged().tools_list_changed, Some(true));
    assert_eq!(listening.acknowledged().resource_subscriptions, None);
    // The greeting changes, then a list does: `other` hears only the list.
    let greeting = json!({ "uri": "example://greeting" });
    call_tool(&tester, "example__touch", greeting).await;
    call_tool(&tester, "example__add_tool", json!({ "name": "late" })).await;
    let next = next_notification(&mut listening).await;
    assert!(
        matches!(next, ServerNotification::ToolListChangedNotification(_)),
        "other heard {next:?}"
    );
    let records = common::admin_records(&served.base, "kind=exchange", AUDITOR_TOKEN).await;
    let refused = records
        .iter()
        .find(|r| r["method"] == "resources/subscribe" && r["client"] == "other")
        .unwrap_or_else(|| panic!("the refused subscription is recorded: {records:?}"));
    assert_eq!(refused["decision"], "deny");
    listening.cancel().await.expect("end the stream");
    served.terminate().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_policy_can_tell_a_2026_07_28_request_from_a_session_call() {
    let proxy = TestProxy::new()
        .with_config("policies = \"policies\"")
        .with_example_server("example");
    proxy.policy_folder(
        r#"
@id("all") permit (principal, action, resource);
@id("no-stateless-echo")
forbid (principal, action == Action::"call_tool", resource == Tool::"example__echo")
when { context.protocol == "2026-07-28" };
"#,
    );
    let served = proxy.serve_http().await;
    let echo = request(
        1,
        "tools/call",
        json!({ "name": "example__echo", "arguments": { "text": "hi" } }),
    );
    let (_, refused) = send(&served.url, echo).await;
    assert_eq!(refused["error"]["code"], -32010, "{refused}");
    // The same call in a handshake session is allowed.
    let session = common::HttpSession::connect(&served.url).await;
    let allowed = session
        .call(
            2,
            "tools/call",
            json!({ "name": "example__echo", "arguments": { "text": "hi" } }),
        )
        .await;
    assert_eq!(common::first_text(&allowed), "example: hi", "{allowed}");
    served.terminate().await;
}
