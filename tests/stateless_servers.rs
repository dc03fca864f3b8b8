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
#![allow(
    clippy::indexing_slicing,
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used
)]

mod common;

use std::time::Duration;

use common::listening::{http_transport, stdio_transport};
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
    let proxy = stateless_proxy();
    let transport = stdio_transport(&proxy);
    let lifecycle = ClientLifecycleMode::Initialize;
    exercise(transport, lifecycle, ProtocolVersion::V_2025_11_25).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_2026_07_28_server_serves_a_2026_07_28_client_and_each_call_is_recorded() {
    let proxy = stateless_proxy();
    let served = proxy.serve_http().await;
    let transport = http_transport(&served.url, TOKEN);
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
    let transport = http_transport(&served.url, TOKEN);
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

/// The example server over HTTP speaking 2026-07-28 alone, as a `remote`
/// server `modern` spoken to in `protocol`.
async fn remote_proxy(protocol: &str) -> (tokio::process::Child, TestProxy) {
    let (remote, url) = common::start_remote_example("modern", &["--stateless"]).await;
    let proxy = TestProxy::new()
        .with_config("policies = \"policies\"\n[redact]\nresponses = \"redact\"")
        .with_server_toml(&format!(
            "[[servers]]\nname = \"modern\"\nprotocol = \"{protocol}\"\nremote = {{ url = {url:?} }}\n"
        ));
    proxy.policy_folder(POLICIES);
    (remote, proxy)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_remote_2026_07_28_server_serves_both_kinds_of_client_with_every_interceptor() {
    let (_remote, proxy) = remote_proxy("2026-07-28").await;
    let transport = stdio_transport(&proxy);
    let lifecycle = ClientLifecycleMode::Initialize;
    exercise(transport, lifecycle, ProtocolVersion::V_2025_11_25).await;
    let served = proxy.serve_http().await;
    let transport = http_transport(&served.url, TOKEN);
    let lifecycle = ClientLifecycleMode::Discover {
        preferred_versions: vec![ProtocolVersion::LATEST],
    };
    exercise(transport, lifecycle, ProtocolVersion::LATEST).await;
    // Its changes on the proxy's listen stream to it, over HTTP.
    let transport = http_transport(&served.url, TOKEN);
    common::listening::listen_through(transport, "modern").await;
    // A task of it, polled to its end.
    let client = tasks_client(&served.url, TOKEN).await;
    let id = start_task(&client, "sleep", json!({ "ms": 100 })).await;
    let finished = poll_until(&client, &id, "completed").await;
    assert_eq!(
        finished["result"]["content"][0]["text"], "slept 100 ms",
        "{finished}"
    );
    client.cancel().await.expect("close");
    served.terminate().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn auto_finds_a_remote_server_of_either_kind() {
    // A 2026-07-28 one: spoken to statelessly (each call a request of its own).
    let (_remote, proxy) = remote_proxy("auto").await;
    echoes_as_found(&proxy, "modern", "it speaks 2026-07-28").await;
    // A handshake one (the example server without `--stateless`): the
    // handshake after its refusal of server/discover.
    let (_remote, url) = common::start_remote_example("old", &[]).await;
    let proxy = TestProxy::new().with_server_toml(&format!(
        "[[servers]]\nname = \"old\"\nprotocol = \"auto\"\nremote = {{ url = {url:?} }}\n"
    ));
    echoes_as_found(&proxy, "old", "not a 2026-07-28 server").await;
}

/// Server `server` of `proxy` echoes (once it is up), and the log says
/// what `auto` found it to be (`found`).
async fn echoes_as_found(proxy: &TestProxy, server: &str, found: &str) {
    let mut client = proxy.raw_stdio().await;
    client.initialize().await;
    let reply = client
        .call_until_served(
            2,
            json!({ "name": format!("{server}__echo"), "arguments": { "text": "hi" } }),
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(
        common::first_text(&reply),
        format!("{server}: hi"),
        "{reply}"
    );
    client.wait_for_log(&[server, found]).await;
    client.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn auto_finds_a_2026_07_28_server_and_serves_both_kinds_of_client_from_it() {
    // The server refuses `initialize` and any request without its
    // envelope: it works only if the proxy found what it speaks.
    let proxy = proxy("auto", ", \"--stateless\"");
    let served = proxy.serve_http().await;
    let connect = || http_transport(&served.url, TOKEN);
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

/// An rmcp client at 2026-07-28 that takes tasks (and is asked for
/// elicitation), as the client `token` names.
async fn tasks_client(
    url: &str,
    token: &str,
) -> rmcp::service::RunningService<rmcp::RoleClient, rmcp::model::ClientConfig> {
    use rmcp::model::{ClientCapabilities, ClientConfig, Implementation};
    let transport = http_transport(url, token);
    let capabilities = ClientCapabilities::builder()
        .enable_elicitation()
        .enable_tasks()
        .build();
    let info = ClientConfig::new(capabilities, Implementation::new("tasks-test", "1"));
    let lifecycle = ClientLifecycleMode::Discover {
        preferred_versions: vec![ProtocolVersion::LATEST],
    };
    info.serve_with_lifecycle(transport, lifecycle)
        .await
        .expect("connect at 2026-07-28")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_runs_through_the_proxy_over_stdio() {
    use rmcp::model::{ClientCapabilities, ClientConfig, Implementation};
    let proxy = stateless_proxy();
    let transport = stdio_transport(&proxy);
    let capabilities = ClientCapabilities::builder().enable_tasks().build();
    let info = ClientConfig::new(capabilities, Implementation::new("tasks-test", "1"));
    let lifecycle = ClientLifecycleMode::Discover {
        preferred_versions: vec![ProtocolVersion::LATEST],
    };
    let client = info
        .serve_with_lifecycle(transport, lifecycle)
        .await
        .expect("connect at 2026-07-28");
    let id = start_task(&client, "sleep", json!({ "ms": 100 })).await;
    assert!(id.starts_with("portcullis-task-"), "{id}");
    let finished = poll_until(&client, &id, "completed").await;
    assert_eq!(
        finished["result"]["content"][0]["text"], "slept 100 ms",
        "{finished}"
    );
    client.cancel().await.expect("close");
}

/// Calls `modern__NAME` expecting a task: its id.
async fn start_task<S: rmcp::service::Service<rmcp::RoleClient>>(
    client: &rmcp::service::RunningService<rmcp::RoleClient, S>,
    name: &str,
    arguments: Value,
) -> String {
    use rmcp::model::{CallToolRequestParams, CallToolResponse};
    let params = CallToolRequestParams::new(format!("modern__{name}"))
        .with_arguments(arguments.as_object().cloned().unwrap_or_default());
    match client.call_tool_once(params).await.expect("tools/call") {
        CallToolResponse::Task(created) => created.task.task_id,
        other => panic!("expected a task, got {other:?}"),
    }
}

/// Polls task `id` until its status is `until` (bounded): the task as
/// JSON.
async fn poll_until<S: rmcp::service::Service<rmcp::RoleClient>>(
    client: &rmcp::service::RunningService<rmcp::RoleClient, S>,
    id: &str,
    until: &str,
) -> Value {
    use rmcp::model::GetTaskParams;
    for _ in 0..200 {
        let polled = client
            .get_task(GetTaskParams::new(id.to_owned()))
            .await
            .expect("tasks/get");
        let polled = serde_json::to_value(&polled).unwrap();
        if polled["status"] == until {
            return polled;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("task {id} never became {until}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_is_created_polled_and_cancelled_through_the_proxy_by_its_client_alone() {
    use rmcp::model::{CancelTaskParams, GetTaskParams};
    let proxy = stateless_proxy();
    let served = proxy.serve_http().await;
    let client = tasks_client(&served.url, TOKEN).await;
    let other = tasks_client(&served.url, common::OTHER_TOKEN).await;

    // Created and polled to its end, under an id of the proxy's.
    let done = start_task(&client, "sleep", json!({ "ms": 200 })).await;
    assert!(done.starts_with("portcullis-task-"), "{done}");
    let finished = poll_until(&client, &done, "completed").await;
    assert_eq!(finished["taskId"], done.as_str(), "{finished}");
    assert_eq!(
        finished["result"]["content"][0]["text"], "slept 200 ms",
        "{finished}"
    );

    // Another client can neither read nor cancel it: to it, no such task.
    let long = start_task(&client, "sleep", json!({ "ms": 60000 })).await;
    let read = other.get_task(GetTaskParams::new(long.clone())).await;
    let read = format!("{:?}", read.expect_err("another client's task"));
    assert!(read.contains("unknown task"), "{read}");
    let cancel = other.cancel_task(CancelTaskParams::new(long.clone())).await;
    assert!(cancel.is_err(), "another client's task cannot be cancelled");
    let still = poll_until(&client, &long, "working").await;
    assert_eq!(still["taskId"], long.as_str());

    // Its own client cancels it; the server ends it.
    client
        .cancel_task(CancelTaskParams::new(long.clone()))
        .await
        .expect("tasks/cancel");
    poll_until(&client, &long, "cancelled").await;

    // A task of a process that exited is forgotten with it: the process
    // started again may give its id to another task.
    let lost = start_task(&client, "sleep", json!({ "ms": 60000 })).await;
    let crash = rmcp::model::CallToolRequestParams::new("modern__crash").with_arguments(
        json!({ "code": 3 })
            .as_object()
            .cloned()
            .unwrap_or_default(),
    );
    let _ = client.call_tool(crash).await;
    let mut forgotten = None;
    for _ in 0..200 {
        match client.get_task(GetTaskParams::new(lost.clone())).await {
            Err(error) if format!("{error:?}").contains("unknown task") => {
                forgotten = Some(error);
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert!(forgotten.is_some(), "the task outlived its process");

    // Each request is recorded as a call of the task's tool, as its client.
    let records = common::admin_records(&served.base, "kind=exchange", AUDITOR_TOKEN).await;
    for method in ["tasks/get", "tasks/cancel"] {
        let record = records
            .iter()
            .find(|r| r["method"] == method && r["client"] == "tester")
            .unwrap_or_else(|| panic!("{method} is recorded: {records:?}"));
        assert_eq!(
            (&record["server"], &record["target"]),
            (&json!("modern"), &json!("sleep")),
            "{record}"
        );
        assert_eq!(record["decision"], "allow", "{record}");
    }
    let refused = records
        .iter()
        .find(|r| r["method"] == "tasks/get" && r["client"] == "other")
        .unwrap_or_else(|| panic!("the refusal is recorded: {records:?}"));
    assert_ne!(refused["outcome"], "delivered", "{refused}");
    client.cancel().await.expect("close");
    other.cancel().await.expect("close");
    served.terminate().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tasks_question_is_redacted_and_answered_and_a_policy_decides_its_requests() {
    use rmcp::model::{GetTaskParams, UpdateTaskParams};
    let snippet = format!(
        "[[servers]]\nname = \"modern\"\nprotocol = \"2026-07-28\"\n\
         process = {{ command = {:?}, args = [\"--name\", \"modern\", \"--stateless\"] }}\n",
        common::example_server_bin()
    );
    let proxy = TestProxy::new()
        .with_config(
            "policies = \"policies\"\npolicy_poll = \"100ms\"\n[redact]\nresponses = \"redact\"",
        )
        .with_server_toml(&snippet);
    let folder = proxy.policy_folder(POLICIES);
    let served = proxy.serve_http().await;
    let client = tasks_client(&served.url, TOKEN).await;

    // The task asks the client a question: shown through the chain (a
    // secret in it redacted), answered with tasks/update.
    let message = format!("name, for {}", common::GITHUB_TOKEN);
    let asking = start_task(&client, "elicit", json!({ "message": message })).await;
    let waiting = poll_until(&client, &asking, "input_required").await;
    let question = &waiting["inputRequests"]["name"];
    assert_eq!(question["method"], "elicitation/create", "{waiting}");
    assert_eq!(
        question["params"]["message"], "name, for [REDACTED:github-pat-classic]",
        "{waiting}"
    );
    let answer = json!({ "action": "accept", "content": { "name": "Ada" } });
    // An answer to a question the client was not shown: refused.
    let unasked = [("other".to_owned(), answer.clone())].into_iter().collect();
    let refused = client
        .update_task(UpdateTaskParams::new(asking.clone(), unasked))
        .await;
    let refused = format!("{:?}", refused.expect_err("an unasked question"));
    assert!(refused.contains("has not asked"), "{refused}");
    let responses = [("name".to_owned(), answer)].into_iter().collect();
    client
        .update_task(UpdateTaskParams::new(asking.clone(), responses))
        .await
        .expect("tasks/update");
    let answered = poll_until(&client, &asking, "completed").await;
    let text = answered["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default();
    assert!(
        text.starts_with("asked: ") && text.contains("Ada"),
        "{answered}"
    );

    // A task's answers go to its server: a policy on answers (`context
    // has answer`) decides tasks/update. The question is shown; the answer
    // is refused, and the task goes on waiting for one.
    std::fs::write(
        folder.join("no-answers.cedar"),
        r#"@id("no-answers") forbid (principal, action == Action::"call_tool", resource == Tool::"modern__elicit") when { context has answer };"#,
    )
    .unwrap();
    served.log.wait_for(&["policies reloaded"]).await;
    let asking = start_task(&client, "elicit", json!({ "message": "name?" })).await;
    poll_until(&client, &asking, "input_required").await;
    let answer = json!({ "action": "accept", "content": { "name": "Eve" } });
    let responses = [("name".to_owned(), answer)].into_iter().collect();
    let refused = client
        .update_task(UpdateTaskParams::new(asking.clone(), responses))
        .await;
    let refused = format!("{:?}", refused.expect_err("a forbidden answer"));
    assert!(refused.contains("not permitted"), "{refused}");
    let waiting = poll_until(&client, &asking, "input_required").await;
    assert!(!waiting.to_string().contains("Eve"), "{waiting}");
    std::fs::remove_file(folder.join("no-answers.cedar")).unwrap();

    // A policy that forbids the tool once its task runs: the task's
    // requests are refused from then on.
    let long = start_task(&client, "sleep", json!({ "ms": 60000 })).await;
    std::fs::write(
        folder.join("no-sleep.cedar"),
        r#"@id("no-sleep") forbid (principal, action == Action::"call_tool", resource == Tool::"modern__sleep");"#,
    )
    .unwrap();
    let mut denied = None;
    for _ in 0..100 {
        match client.get_task(GetTaskParams::new(long.clone())).await {
            Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(error) => {
                denied = Some(format!("{error:?}"));
                break;
            }
        }
    }
    let denied = denied.expect("the reloaded policy refuses the task's requests");
    assert!(
        denied.contains("-32010") || denied.contains("not permitted"),
        "{denied}"
    );
    client.cancel().await.expect("close");
    served.terminate().await;
}

/// `params` with a 2026-07-28 envelope declaring `capabilities`.
fn enveloped(mut params: Value, capabilities: Value) -> Value {
    params["_meta"] = json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": capabilities,
        "io.modelcontextprotocol/clientInfo": { "name": "by-hand", "version": "0" },
    });
    params
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hostile_servers_tasks_are_checked_before_a_client_sees_anything_of_them() {
    let script = common::repo_root().join("tests/fixtures/raw_upstream.py");
    let proxy = TestProxy::new()
        .with_config("policies = \"policies\"\n[redact]\nresponses = \"redact\"")
        .with_server_toml(&format!(
            "[[servers]]\nname = \"hostile\"\nprotocol = \"2026-07-28\"\n\
             process = {{ command = \"python3\", args = [{script:?}, \"--tasks\"] }}\n"
        ));
    proxy.policy_folder(
        r#"@id("all") permit (principal, action, resource);
@id("no-sampling") forbid (principal, action == Action::"sampling", resource);"#,
    );
    let tasks = json!({ "extensions": { "io.modelcontextprotocol/tasks": {} },
        "sampling": {} });
    let mut client = proxy.raw_stdio().await;
    let call = |kind: &str, capabilities: &Value| {
        enveloped(
            json!({ "name": "hostile__task", "arguments": { "kind": kind } }),
            capabilities.clone(),
        )
    };

    // A task to a client that did not declare the extension: refused.
    let reply = client.call(1, "tools/call", call("done", &json!({}))).await;
    assert_eq!(reply["error"]["code"], -32603, "{reply}");

    // To one that did: under the proxy's id, with nothing else of the
    // server's; polled, its result redacted.
    let reply = client.call(2, "tools/call", call("done", &tasks)).await;
    let created = &reply["result"];
    let id = created["taskId"].as_str().unwrap_or_default().to_owned();
    assert!(id.starts_with("portcullis-task-"), "{reply}");
    assert_eq!(created["resultType"], "task", "{reply}");
    assert_eq!(created["pollIntervalMs"], 100, "{reply}");
    let shown = reply.to_string();
    assert!(
        !shown.contains("srv-") && !shown.contains("ghp_"),
        "{shown}"
    );
    let get = |id: &str| enveloped(json!({ "taskId": id }), tasks.clone());
    let polled = client.call(3, "tasks/get", get(&id)).await;
    assert_eq!(polled["result"]["status"], "completed", "{polled}");
    assert_eq!(polled["result"]["taskId"], id.as_str(), "{polled}");
    assert_eq!(
        polled["result"]["result"]["content"][0]["text"], "done with [REDACTED:github-pat-classic]",
        "{polled}"
    );
    let shown = polled.to_string();
    assert!(
        !shown.contains("srv-") && !shown.contains("ghp_"),
        "{shown}"
    );
    // A task's request without the extension declared on it.
    let bare = client
        .call(
            4,
            "tasks/get",
            enveloped(json!({ "taskId": id }), json!({})),
        )
        .await;
    assert_eq!(bare["error"]["code"], -32021, "{bare}");

    // A question Cedar forbids, and one no client can be asked: refused,
    // and the task cancelled at the server.
    for (n, kind, code) in [(5, "sampling", -32010), (7, "tools", -32603)] {
        let reply = client.call(n, "tools/call", call(kind, &tasks)).await;
        let id = reply["result"]["taskId"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let polled = client.call(n + 1, "tasks/get", get(&id)).await;
        assert_eq!(polled["error"]["code"], code, "{kind}: {polled}");
        assert!(!polled.to_string().contains("inputRequests"), "{polled}");
    }
    // A task its server forgot: answered as any unknown task, with
    // nothing of the server's, and forgotten.
    let reply = client.call(10, "tools/call", call("gone", &tasks)).await;
    let gone = reply["result"]["taskId"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    for n in [11, 12] {
        let polled = client.call(n, "tasks/get", get(&gone)).await;
        assert_eq!(polled["error"]["code"], -32602, "{polled}");
        let said = polled["error"]["message"].as_str().unwrap_or_default();
        assert!(said.contains(&gone) && !said.contains("srv-"), "{polled}");
    }
    // (Cancelled in the background: asked until the server has them.)
    let expected = json!(["srv-done-1", "srv-sampling-3", "srv-tools-4"]);
    let mut cancelled = Value::Null;
    for n in 0..100 {
        let mirror = enveloped(
            json!({ "name": "hostile__mirror", "arguments": {} }),
            json!({}),
        );
        let mirrored = client.call(100 + n, "tools/call", mirror).await;
        cancelled = mirrored["result"]["structuredContent"]["cancelled"].clone();
        if cancelled.as_array().map(Vec::len) == Some(3) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut sorted = cancelled.as_array().cloned().unwrap_or_default();
    sorted.sort_by_key(Value::to_string);
    assert_eq!(Value::from(sorted), expected, "{cancelled}");
    client.finish().await;

    // A handshake client is never handed a task.
    let mut client = proxy.raw_stdio().await;
    client.initialize().await;
    let reply = client
        .call(
            2,
            "tools/call",
            json!({ "name": "hostile__task", "arguments": {} }),
        )
        .await;
    assert_eq!(reply["error"]["code"], -32603, "{reply}");
    client.finish().await;
}

/// The log messages `client` got (in its backlog) saying `text`.
fn logged(client: &common::RawClient, text: &str) -> usize {
    client
        .backlog()
        .iter()
        .filter(|m| m["method"] == "notifications/message" && m["params"]["data"] == text)
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_2026_07_28_servers_log_messages_reach_each_client_at_its_level() {
    let proxy = stateless_proxy();
    // A 2026-07-28 client: the level of its request is the server's to
    // honour (the example server sends only what the request asked for).
    let mut client = proxy.raw_stdio().await;
    let log = |level: Option<&str>, text: &str| {
        let mut params = enveloped(
            json!({ "name": "modern__log", "arguments": { "level": "warning", "message": text } }),
            json!({}),
        );
        if let Some(level) = level {
            params["_meta"]["io.modelcontextprotocol/logLevel"] = json!(level);
        }
        params
    };
    for (n, level, text) in [
        (1, Some("info"), "wanted"),
        (2, Some("error"), "too low"),
        (3, None, "unasked"),
    ] {
        let reply = client.call(n, "tools/call", log(level, text)).await;
        assert_eq!(common::first_text(&reply), "logged", "{reply}");
    }
    assert_eq!(logged(&client, "wanted"), 1, "{:?}", client.backlog());
    assert_eq!(logged(&client, "too low") + logged(&client, "unasked"), 0);
    client.finish().await;

    // A handshake client: none before it sets a level, then those at it.
    let mut client = proxy.raw_stdio().await;
    let init = client.initialize().await;
    assert!(
        init["result"]["capabilities"].get("logging").is_some(),
        "{init}"
    );
    call(
        &mut client,
        2,
        "log",
        json!({ "level": "warning", "message": "early" }),
    )
    .await;
    let set = client
        .call(3, "logging/setLevel", json!({ "level": "info" }))
        .await;
    assert!(set.get("result").is_some(), "{set}");
    call(
        &mut client,
        4,
        "log",
        json!({ "level": "warning", "message": "set" }),
    )
    .await;
    assert_eq!(logged(&client, "set"), 1, "{:?}", client.backlog());
    assert_eq!(logged(&client, "early"), 0, "{:?}", client.backlog());
    client.finish().await;
}
