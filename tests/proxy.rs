//! End to end through the real binary: an rmcp client talks to `portcullis`
//! over stdio and over streamable HTTP, with real servers behind it (the
//! example server, `mcp-server-time` from PyPI, a remote server over HTTP),
//! and the protocol features that cross the proxy: list changes, progress,
//! cancellation, sampling/elicitation/roots forwarding, resource updates,
//! crashes and restarts, timeouts.
#![allow(
    clippy::indexing_slicing,
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used
)]
// Sampling and roots are deprecated in rmcp (SEP-2577) but are part of the
// protocol revisions the proxy speaks, and what these tests forward.
#![allow(deprecated)]

mod common;

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{TOKEN, TestProxy, first_text};
use rmcp::model::{
    CallToolRequestParams, ClientCapabilities, ClientConfig, CreateMessageRequestParams,
    CreateMessageResult, ElicitRequestParams, ElicitResult, ElicitationAction,
    GetPromptRequestParams, Implementation, ListRootsResult, LoggingMessageNotificationParam,
    ProgressNotificationParam, ProtocolVersion, ReadResourceRequestParams,
    ResourceUpdatedNotificationParam, Root, SamplingMessage,
};
use rmcp::service::{NotificationContext, RequestContext, RoleClient, RunningService};
use rmcp::transport::{
    StreamableHttpClientTransport, TokioChildProcess,
    streamable_http_client::StreamableHttpClientTransportConfig,
};
use rmcp::{ClientHandler, ErrorData as McpError, ServiceExt as _};
use serde_json::{Value, json};

/// A client that answers the server's requests the way a desktop agent
/// would, and records every notification it gets.
#[derive(Clone, Default)]
struct Agent {
    seen: Arc<Mutex<Vec<Value>>>,
    changed: Arc<tokio::sync::Notify>,
}

impl Agent {
    fn record(&self, event: Value) {
        self.seen.lock().unwrap().push(event);
        self.changed.notify_waiters();
    }

    fn events(&self) -> Vec<Value> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits until an event matches, or fails after 20 s.
    async fn wait_for(&self, what: &str, matches: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let notified = self.changed.notified();
            if let Some(event) = self.events().into_iter().find(&matches) {
                return event;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if tokio::time::timeout(left, notified).await.is_err() {
                panic!("timed out waiting for {what}; saw {:?}", self.events());
            }
        }
    }
}

impl ClientHandler for Agent {
    async fn create_message(
        &self,
        params: CreateMessageRequestParams,
        _context: RequestContext<RoleClient>,
    ) -> Result<CreateMessageResult, McpError> {
        self.record(json!({"sampling": serde_json::to_value(&params).unwrap()}));
        Ok(CreateMessageResult::new(
            SamplingMessage::assistant_text("the model says hi"),
            "test-model".into(),
        ))
    }

    async fn list_roots(
        &self,
        _context: RequestContext<RoleClient>,
    ) -> Result<ListRootsResult, McpError> {
        Ok(ListRootsResult::new(vec![
            Root::new("file:///workspace/a"),
            Root::new("file:///workspace/b"),
        ]))
    }

    async fn create_elicitation(
        &self,
        _request: ElicitRequestParams,
        _context: RequestContext<RoleClient>,
    ) -> Result<ElicitResult, McpError> {
        Ok(ElicitResult::new(ElicitationAction::Accept).with_content(json!({"name": "Ada"})))
    }

    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.record(json!({"progress": serde_json::to_value(&params).unwrap()}));
    }

    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        self.record(json!({"list_changed": "tools"}));
    }

    async fn on_resource_updated(
        &self,
        params: ResourceUpdatedNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.record(json!({"updated": params.uri}));
    }

    async fn on_logging_message(
        &self,
        params: LoggingMessageNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.record(json!({"log": serde_json::to_value(&params).unwrap()}));
    }

    fn get_info(&self) -> ClientConfig {
        let mut capabilities = ClientCapabilities::builder()
            .enable_roots()
            .enable_sampling()
            .build();
        capabilities.elicitation = Some(Default::default());
        ClientConfig::new(capabilities, Implementation::new("proxy-tests", "0"))
            .with_protocol_version(ProtocolVersion::V_2025_11_25)
    }
}

type Client = RunningService<RoleClient, Agent>;

async fn connect_stdio(proxy: &TestProxy, agent: Agent) -> Client {
    let (transport, _) = TokioChildProcess::builder(proxy.stdio_command())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn portcullis stdio");
    agent
        .serve(transport)
        .await
        .expect("MCP handshake over stdio")
}

async fn connect_http(url: &str, agent: Agent) -> Client {
    let transport = StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(url.to_owned()).auth_header(TOKEN),
    );
    agent
        .serve(transport)
        .await
        .expect("MCP handshake over HTTP")
}

fn args(value: Value) -> serde_json::Map<String, Value> {
    value.as_object().cloned().unwrap_or_default()
}

async fn call(client: &Client, tool: &str, arguments: Value) -> Value {
    let result = client
        .call_tool(CallToolRequestParams::new(tool.to_owned()).with_arguments(args(arguments)))
        .await
        .unwrap_or_else(|err| panic!("calling {tool} failed: {err}"));
    serde_json::to_value(&result).unwrap()
}

fn text(result: &Value) -> &str {
    result
        .pointer("/content/0/text")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no text content in {result}"))
}

/// Lists, calls, reads and gets through the proxy against the example server
/// and `mcp-server-time` at once. The same script runs over both transports.
async fn exercise_two_servers(client: &Client) {
    let info = client.peer_info().expect("the proxy's initialize result");
    assert_eq!(
        info.server_info.as_ref().map(|i| i.name.as_str()),
        Some("portcullis")
    );

    let tools = client.list_all_tools().await.unwrap();
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    for expected in ["example__echo", "example__add", "time__get_current_time"] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
    // Tool definitions arrive as the servers wrote them, but for the name.
    let echo = tools.iter().find(|t| t.name == "example__echo").unwrap();
    assert_eq!(
        echo.annotations.as_ref().and_then(|a| a.read_only_hint),
        Some(true)
    );

    let echoed = call(client, "example__echo", json!({"text": "hi"})).await;
    assert_eq!(text(&echoed), "example: hi");
    let sum = call(client, "example__add", json!({"a": 40, "b": 2})).await;
    assert_eq!(sum["structuredContent"], json!({"sum": 42}));

    let now = call(
        client,
        "time__get_current_time",
        json!({"timezone": "Europe/Paris"}),
    )
    .await;
    let now: Value = serde_json::from_str(text(&now)).expect("mcp-server-time answers JSON");
    assert_eq!(now["timezone"], "Europe/Paris");
    assert!(
        now["datetime"]
            .as_str()
            .unwrap_or_default()
            .starts_with("20")
    );

    // A tool error result is a result, not a JSON-RPC error.
    let failed = call(client, "example__fail", json!({"message": "nope"})).await;
    assert_eq!(failed["isError"], true);
    assert_eq!(text(&failed), "nope");

    let resources = client.list_all_resources().await.unwrap();
    assert!(
        resources.iter().any(|r| r.uri == "example://greeting"),
        "{resources:?}"
    );
    let templates = client.list_all_resource_templates().await.unwrap();
    assert!(
        templates
            .iter()
            .any(|t| t.uri_template == "example://items/{id}"),
        "{templates:?}"
    );
    let greeting = client
        .read_resource(ReadResourceRequestParams::new("example://greeting"))
        .await
        .unwrap();
    let greeting = serde_json::to_value(&greeting).unwrap();
    assert_eq!(greeting["contents"][0]["text"], "hello from example");
    // A URI that only a template of the server covers routes there too.
    let item = client
        .read_resource(ReadResourceRequestParams::new("example://items/7"))
        .await
        .unwrap();
    assert_eq!(
        serde_json::to_value(&item).unwrap()["contents"][0]["text"],
        "item 7"
    );

    let prompts = client.list_all_prompts().await.unwrap();
    assert!(
        prompts.iter().any(|p| p.name == "example__greet"),
        "{prompts:?}"
    );
    let prompt = client
        .get_prompt(
            GetPromptRequestParams::new("example__greet")
                .with_arguments(args(json!({"name": "Bob"}))),
        )
        .await
        .unwrap();
    let prompt = serde_json::to_value(&prompt).unwrap();
    assert_eq!(prompt["messages"][0]["content"]["text"], "Please greet Bob");

    // Unknown tools are refused by the proxy with a clear error.
    let unknown = client
        .call_tool(CallToolRequestParams::new("example__nope"))
        .await
        .expect_err("an unknown tool is an error");
    assert!(unknown.to_string().contains("example__nope"), "{unknown}");
}

#[tokio::test(flavor = "multi_thread")]
async fn rmcp_client_over_stdio_reaches_two_servers() {
    let proxy = TestProxy::new()
        .with_example_server("example")
        .with_time_server("time");
    let client = connect_stdio(&proxy, Agent::default()).await;
    exercise_two_servers(&client).await;
    client.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn rmcp_client_over_http_reaches_two_servers() {
    let proxy = TestProxy::new()
        .with_example_server("example")
        .with_time_server("time");
    let server = proxy.serve_http().await;
    let client = connect_http(&server.url, Agent::default()).await;
    exercise_two_servers(&client).await;
    client.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn remote_upstreams_carry_calls_progress_and_sampling() {
    let (_remote, url) = common::start_remote_example("far", &[]).await;
    let proxy = TestProxy::new()
        .with_server_toml(&format!(
            "[[servers]]\nname = \"far\"\nremote = {{ url = {url:?}, headers = {{ X-Api-Key = \"secret:key\" }} }}\nsecrets = {{ key = \"env:PORTCULLIS_TEST_REMOTE_KEY\" }}\n"
        ))
        .with_example_server("near");
    // The header's secret comes from the proxy's environment.
    let mut command = proxy.stdio_command();
    command.env("PORTCULLIS_TEST_REMOTE_KEY", "remote-key-value");
    let agent = Agent::default();
    let (transport, _) = TokioChildProcess::builder(command)
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let client = agent.clone().serve(transport).await.unwrap();

    let echoed = call(&client, "far__echo", json!({"text": "over http"})).await;
    assert_eq!(text(&echoed), "far: over http");
    let near = call(&client, "near__echo", json!({"text": "over stdio"})).await;
    assert_eq!(text(&near), "near: over stdio");

    // Server→client requests travel back over the remote server's SSE stream.
    let sampled = call(&client, "far__sample", json!({"prompt": "hello?"})).await;
    assert_eq!(text(&sampled), "sampled: the model says hi");

    client.cancel().await.unwrap();

    // Progress from the remote server's response stream reaches the client
    // in order and before the reply (checked on the wire: rmcp's client runs
    // its notification handlers on tasks of their own, in no fixed order).
    let mut command = proxy.stdio_command();
    command
        .env("PORTCULLIS_TEST_REMOTE_KEY", "remote-key-value")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut raw = common::RawClient::spawn(command);
    raw.initialize().await;
    let progress = progress_before_reply(&mut raw, "far__progress", 10).await;
    assert_eq!(progress, (1..=10).map(f64::from).collect::<Vec<_>>());
}

/// Calls a progress tool with a progress token and returns the progress
/// values that arrived before the reply, checking they carry the client's
/// token.
async fn progress_before_reply(client: &mut common::RawClient, tool: &str, steps: u32) -> Vec<f64> {
    client
        .send(
            json!({"jsonrpc":"2.0","id":"p-1","method":"tools/call","params":{
            "name": tool,"arguments":{"steps":steps,"delay_ms":0},
            "_meta":{"progressToken":"my-token"}}}),
        )
        .await;
    let reply = client.response(json!("p-1")).await;
    assert_eq!(first_text(&reply), format!("done {steps} steps"));
    // What arrived while the test waited for the reply is in the backlog.
    client
        .backlog()
        .iter()
        .filter(|m| m["method"] == "notifications/progress")
        .map(|m| {
            assert_eq!(m["params"]["progressToken"], "my-token");
            m["params"]["progress"].as_f64().unwrap()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn sampling_elicitation_and_roots_reach_the_calling_client() {
    let proxy = TestProxy::new().with_example_server("example");
    let server = proxy.serve_http().await;
    for transport in ["stdio", "http"] {
        let agent = Agent::default();
        let client = if transport == "stdio" {
            connect_stdio(&proxy, agent.clone()).await
        } else {
            connect_http(&server.url, agent.clone()).await
        };
        let sampled = call(&client, "example__sample", json!({"prompt": "what now?"})).await;
        assert_eq!(text(&sampled), "sampled: the model says hi", "{transport}");
        let request = agent
            .wait_for("the sampling request", |e| e.get("sampling").is_some())
            .await;
        assert_eq!(
            request["sampling"]["messages"][0]["content"]["text"], "what now?",
            "{transport}"
        );

        let elicited = call(&client, "example__elicit", json!({"message": "who?"})).await;
        let answer: Value = serde_json::from_str(text(&elicited)).unwrap();
        assert_eq!(
            answer,
            json!({"action": "accept", "content": {"name": "Ada"}})
        );

        let roots = call(&client, "example__roots", json!({})).await;
        assert_eq!(
            text(&roots),
            "file:///workspace/a\nfile:///workspace/b",
            "{transport}"
        );
        client.cancel().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_without_sampling_is_never_asked() {
    let proxy = TestProxy::new().with_example_server("example");
    let mut raw = proxy.raw_stdio().await;
    raw.send(json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{
        "protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"plain","version":"0"}}}))
        .await;
    raw.response(json!(0)).await;
    raw.send(json!({"jsonrpc":"2.0","method":"notifications/initialized"}))
        .await;
    let reply = raw
        .call(
            1,
            "tools/call",
            json!({"name":"example__sample","arguments":{"prompt":"x"}}),
        )
        .await;
    // The server got a refusal from the proxy, and said so in its result.
    assert_eq!(reply["result"]["isError"], true, "{reply}");
    assert!(first_text(&reply).contains("sampling failed"), "{reply}");
    assert!(
        raw.backlog().iter().all(|m| m.get("method").is_none()),
        "no request reached the client: {:?}",
        raw.backlog()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn list_changes_propagate_and_new_tools_are_callable() {
    let proxy = TestProxy::new()
        .with_example_server("example")
        .with_example_server("other");
    let server = proxy.serve_http().await;
    let stdio_agent = Agent::default();
    let http_agent = Agent::default();
    let stdio = connect_stdio(&proxy, stdio_agent.clone()).await;
    let http = connect_http(&server.url, http_agent.clone()).await;
    assert!(
        !stdio
            .list_all_tools()
            .await
            .unwrap()
            .iter()
            .any(|t| t.name == "example__fresh")
    );

    let added = call(&http, "example__add_tool", json!({"name": "fresh"})).await;
    assert_eq!(text(&added), "added tool fresh");
    http_agent
        .wait_for("tools/list_changed over HTTP", |e| {
            e["list_changed"] == "tools"
        })
        .await;

    // The other transport's process is a separate proxy with its own
    // example server: its list is unchanged until that server changes.
    assert!(
        !stdio
            .list_all_tools()
            .await
            .unwrap()
            .iter()
            .any(|t| t.name == "example__fresh")
    );
    let added = call(&stdio, "other__add_tool", json!({"name": "fresh"})).await;
    assert_eq!(text(&added), "added tool fresh");
    stdio_agent
        .wait_for("tools/list_changed over stdio", |e| {
            e["list_changed"] == "tools"
        })
        .await;

    let over_http = http.list_all_tools().await.unwrap();
    assert!(over_http.iter().any(|t| t.name == "example__fresh"));
    let fresh = call(&http, "example__fresh", json!({})).await;
    assert_eq!(text(&fresh), "dynamic fresh");
    let over_stdio = stdio.list_all_tools().await.unwrap();
    assert!(over_stdio.iter().any(|t| t.name == "other__fresh"));
    let fresh = call(&stdio, "other__fresh", json!({})).await;
    assert_eq!(text(&fresh), "dynamic fresh");
    stdio.cancel().await.unwrap();
    http.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn progress_is_relayed_in_order_with_the_clients_own_token() {
    let proxy = TestProxy::new().with_example_server("example");
    let mut client = proxy.raw_stdio().await;
    client.initialize().await;
    let progress = progress_before_reply(&mut client, "example__progress", 20).await;
    assert_eq!(progress, (1..=20).map(f64::from).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread")]
async fn cancellation_reaches_the_server_and_the_call_gets_no_reply() {
    let proxy = TestProxy::new().with_raw_server("raw");
    let mut client = proxy.raw_stdio().await;
    client.initialize().await;
    client
        .send(json!({"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"raw__hang"}}))
        .await;
    // Wait until the server holds the call, then cancel it.
    let hung = loop {
        let seen = client
            .call(6, "tools/call", json!({"name":"raw__mirror"}))
            .await;
        let hung = seen["result"]["structuredContent"]["hung"].clone();
        if hung.as_array().is_some_and(|h| !h.is_empty()) {
            break hung[0].clone();
        }
    };
    client
        .send(json!({"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":5,"reason":"user gave up"}}))
        .await;
    let seen = loop {
        let seen = client
            .call(7, "tools/call", json!({"name":"raw__mirror"}))
            .await;
        let notifications = seen["result"]["structuredContent"]["notifications"].clone();
        if let Some(cancelled) = notifications
            .as_array()
            .and_then(|n| n.iter().find(|m| m["method"] == "notifications/cancelled"))
        {
            break cancelled.clone();
        }
    };
    // The server is told about its own id for the call, not the client's.
    assert_eq!(seen["params"]["requestId"], hung);
    // The client's free-text reason is not relayed; the proxy gives its own.
    assert_eq!(seen["params"]["reason"], "cancelled by the proxy");
    // A barrier: the proxy has taken in and answered everything sent before
    // this ping (the cancellation included) when its answer arrives.
    let pong = client.call(8, "ping", json!({})).await;
    assert_eq!(pong["result"], json!({}), "{pong}");
    assert!(
        client.backlog().iter().all(|m| m["id"] != json!(5)),
        "a cancelled request gets no response: {:?}",
        client.backlog()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_call_that_outlives_its_timeout_fails_and_is_cancelled_upstream() {
    let proxy = TestProxy::new().with_server_toml(&format!(
        "[[servers]]\nname = \"raw\"\nprocess = {{ command = \"python3\", args = [{:?}] }}\ntimeout = \"1s\"\n",
        common::repo_root().join("tests/fixtures/raw_upstream.py")
    ));
    let mut client = proxy.raw_stdio().await;
    client.initialize().await;
    let started = Instant::now();
    let reply = client
        .call(1, "tools/call", json!({"name":"raw__hang"}))
        .await;
    assert_eq!(reply["error"]["code"], -32012, "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("within 1s"),
        "{reply}"
    );
    assert!(started.elapsed() < Duration::from_secs(20));

    let mirror = client
        .call(2, "tools/call", json!({"name":"raw__mirror"}))
        .await;
    let state = &mirror["result"]["structuredContent"];
    let cancelled: Vec<&Value> = state["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["method"] == "notifications/cancelled")
        .collect();
    assert_eq!(cancelled.len(), 1, "{state}");
    assert_eq!(cancelled[0]["params"]["requestId"], state["hung"][0]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crashed_server_fails_calls_in_flight_at_once_and_comes_back() {
    let proxy = TestProxy::new()
        .with_example_server("example")
        .with_example_server("steady");
    let server = proxy.serve_http().await;
    let sleeper_agent = Agent::default();
    let sleeper = connect_http(&server.url, sleeper_agent.clone()).await;
    let crasher = connect_http(&server.url, Agent::default()).await;

    // A minute's work that tells of its progress every 100 ms (rmcp gives
    // each request a progress token): its first progress shows the call in
    // flight at the server, however long the machine took to get it there.
    let in_flight = tokio::spawn(async move {
        let result = sleeper
            .call_tool(
                CallToolRequestParams::new("example__progress")
                    .with_arguments(args(json!({"steps": 600, "delay_ms": 100}))),
            )
            .await;
        (result.map(|r| serde_json::to_value(&r).unwrap()), sleeper)
    });
    sleeper_agent
        .wait_for("the call's first progress", |event| {
            event.get("progress").is_some()
        })
        .await;
    let started = Instant::now();
    let crash = crasher
        .call_tool(
            CallToolRequestParams::new("example__crash").with_arguments(args(json!({"code": 3}))),
        )
        .await
        .expect_err("the crashing call fails");
    assert!(crash.to_string().contains("not available"), "{crash}");
    let (slept, sleeper) = in_flight.await.unwrap();
    let slept = slept.expect_err("the call in flight fails");
    assert!(slept.to_string().contains("not available"), "{slept}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "calls in flight fail at once, not at their timeout"
    );

    // The other server never noticed.
    let steady = call(&crasher, "steady__echo", json!({"text": "still here"})).await;
    assert_eq!(text(&steady), "steady: still here");

    // The crashed one is restarted with backoff and serves again.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match sleeper
            .call_tool(
                CallToolRequestParams::new("example__echo")
                    .with_arguments(args(json!({"text": "back"}))),
            )
            .await
        {
            Ok(result) => {
                assert_eq!(
                    text(&serde_json::to_value(&result).unwrap()),
                    "example: back"
                );
                break;
            }
            Err(err) if Instant::now() < deadline => {
                assert!(err.to_string().contains("not available"), "{err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => panic!("the server did not come back: {err}"),
        }
    }
    sleeper.cancel().await.unwrap();
    crasher.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn resource_updates_go_to_subscribers_only() {
    let proxy = TestProxy::new().with_example_server("example");
    let server = proxy.serve_http().await;
    let subscriber = Agent::default();
    let bystander = Agent::default();
    let sub = connect_http(&server.url, subscriber.clone()).await;
    let other = connect_http(&server.url, bystander.clone()).await;

    sub.subscribe(rmcp::model::SubscribeRequestParams::new(
        "example://greeting",
    ))
    .await
    .unwrap();
    let touched = call(
        &other,
        "example__touch",
        json!({"uri": "example://greeting"}),
    )
    .await;
    assert_eq!(text(&touched), "touched");
    subscriber
        .wait_for("resources/updated", |e| {
            e["updated"] == "example://greeting"
        })
        .await;

    // Logging tied to a call reaches the caller.
    let logged = call(
        &other,
        "example__log",
        json!({"level": "warning", "message": "careful"}),
    )
    .await;
    assert_eq!(text(&logged), "logged");
    bystander
        .wait_for("the log message", |e| {
            e.pointer("/log/data") == Some(&json!("careful"))
        })
        .await;
    assert!(
        bystander
            .events()
            .iter()
            .all(|e| e.get("updated").is_none()),
        "a session that did not subscribe gets no update: {:?}",
        bystander.events()
    );
    sub.cancel().await.unwrap();
    other.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_session_does_not_disturb_the_others() {
    let proxy = TestProxy::new().with_example_server("example");
    let server = proxy.serve_http().await;
    let good = connect_http(&server.url, Agent::default()).await;
    let http = reqwest::Client::new();
    for body in [
        "{not json".to_owned(),
        format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000)),
        "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\"}".to_owned(),
    ] {
        let response = http
            .post(&server.url)
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(body)
            .send()
            .await
            .unwrap();
        assert!(response.status().is_client_error() || response.status().is_success());
        let _ = response.bytes().await;
        let echoed = call(&good, "example__echo", json!({"text": "fine"})).await;
        assert_eq!(text(&echoed), "example: fine");
    }
    // Completion is routed to the prompt's server.
    let mut raw = proxy.raw_stdio().await;
    raw.initialize().await;
    let completion = raw
        .call(
            1,
            "completion/complete",
            json!({"ref":{"type":"ref/prompt","name":"example__greet"},"argument":{"name":"name","value":"a"}}),
        )
        .await;
    assert_eq!(
        completion["result"]["completion"]["values"],
        json!(["alice"])
    );
    // Log levels go to every server that logs; the proxy answers for them.
    let level = raw
        .call(2, "logging/setLevel", json!({"level": "warning"}))
        .await;
    assert_eq!(level["result"], json!({}), "{level}");
    let bad_level = raw.call(3, "logging/setLevel", json!({})).await;
    assert_eq!(bad_level["error"]["code"], -32602, "{bad_level}");
    good.cancel().await.unwrap();
}
