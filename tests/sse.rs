//! HTTP+SSE toward clients (`[listener] sse = true`), the transport of
//! protocol 2024-11-05: the Python SDK's own SSE client through the real
//! binary (list, calls, a refusal by policy, a server's request and a
//! notification mid-call), a raw client that asks for 2024-11-05 itself,
//! and the hostile cases of streamable HTTP on `/sse` and `/messages`
//! (no or a wrong token, a foreign Origin, another client's session, a
//! session of the other transport, a session named twice, a body past the
//! limit, a session whose stream is gone), each checked on what the other
//! side received.
#![allow(
    clippy::indexing_slicing,
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used
)]

mod common;

use std::time::Duration;

use common::{AUDITOR_TOKEN, HttpProxy, OTHER_TOKEN, TOKEN, TestProxy};
use futures_util::StreamExt as _;
use serde_json::{Value, json};
use tokio::sync::mpsc;

const POLICIES: &str = r#"
@id("dev-example")
permit (principal in Group::"dev", action, resource in Server::"example");

@id("no-secrets-in-echo")
forbid (principal, action == Action::"call_tool", resource == Tool::"example__echo")
when { context.arguments has text && context.arguments.text like "*secret*" };
"#;

const ALLOWED: &str = "call:example__echo:{\"text\":\"over sse\"}";
const REFUSED: &str = "call:example__echo:{\"text\":\"a secret\"}";
const SAMPLE: &str = "call:example__sample:{\"prompt\":\"asked over sse\"}";
const LOG: &str = "call:example__log:{\"level\":\"warning\",\"message\":\"heard over sse\"}";

/// A proxy serving HTTP+SSE, with the example server behind a policy.
fn proxy(sse: bool) -> TestProxy {
    let listener = if sse {
        "\n[listener]\nsse = true\n"
    } else {
        ""
    };
    let proxy = TestProxy::new()
        .with_config(&format!("policies = \"policies\"\n{listener}"))
        .with_example_server("example")
        .with_refusals_as_results();
    proxy.policy_folder(POLICIES);
    proxy
}

fn sse_url(proxy: &HttpProxy) -> String {
    format!("{}/sse", proxy.base)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_python_sdks_sse_client_lists_calls_and_is_refused_through_the_proxy() {
    let proxy = proxy(true);
    let running = proxy.serve_http().await;
    let mut command = common::python_client();
    command.args(["sse", &sse_url(&running), "--token", TOKEN, "--no-validate"]);
    command.args(["--sampling-reply", "a model over sse", "--notifications"]);
    command.args(["--http-trace"]);
    for op in ["list_tools", ALLOWED, REFUSED, SAMPLE, LOG] {
        command.args(["--op", op]);
    }
    let doc = common::python_client_output(command).await;
    assert_eq!(doc["server_info"]["name"], "portcullis", "{doc}");

    let ok = |name: &str| {
        let op = common::client_op(&doc, name);
        assert_eq!(op["ok"], true, "{name}: {op}");
        op["result"].clone()
    };
    let tools = ok("list_tools");
    let names: Vec<&str> = tools["tools"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|tool| tool["name"].as_str())
        .collect();
    assert!(names.contains(&"example__echo"), "{names:?}");
    assert_eq!(ok(ALLOWED)["content"][0]["text"], "example: over sse");
    // Refused by the policy: a tool result the agent can read, with the
    // reason; the server never saw it (its echo would say "example: …").
    let refused = ok(REFUSED);
    assert_eq!(refused["isError"], true, "{refused}");
    let text = refused["content"][0]["text"].as_str().unwrap();
    assert!(text.contains("not permitted"), "{text}");
    assert!(!text.contains("example: a secret"), "{text}");
    // The server asked the client mid-call, over the one stream; the
    // client's answer, POSTed, reached it.
    assert_eq!(
        ok(SAMPLE)["content"][0]["text"],
        "sampled: a model over sse"
    );
    assert_eq!(
        doc["sampling_requests"].as_array().unwrap().len(),
        1,
        "{doc}"
    );
    // The server's notification came on the stream too.
    ok(LOG);
    let heard = doc["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n.to_string().contains("heard over sse"));
    assert!(heard, "{}", doc["notifications"]);
    // Every message went out as a POST to the endpoint the stream named,
    // and each was taken with 202.
    let trace = doc["http_trace"].as_array().unwrap();
    let posts: Vec<&Value> = trace.iter().filter(|t| t["method"] == "POST").collect();
    assert!(posts.len() >= 6, "{trace:?}");
    for post in posts {
        let url = post["url"].as_str().unwrap();
        assert!(url.contains("/messages?session_id="), "{url}");
        assert_eq!(post["status"], 202, "{post}");
    }

    // The records say the calls came over HTTP+SSE, the refusal too.
    let records = common::admin_records(
        &running.base,
        "client=tester&tool=example__echo",
        AUDITOR_TOKEN,
    )
    .await;
    assert_eq!(records.len(), 2, "{records:?}");
    assert!(
        records.iter().all(|r| r["transport"] == "sse"),
        "{records:?}"
    );
    assert!(
        records.iter().any(|r| r["decision"] == "deny"),
        "{records:?}"
    );
    let metrics = common::metrics_text(&running.base).await;
    assert!(
        metrics.contains("portcullis_sessions{transport=\"sse\"}"),
        "{metrics}"
    );
}

/// One event of an SSE stream: its name and data.
#[derive(Debug)]
struct Event {
    name: String,
    data: String,
}

/// A raw HTTP+SSE client: the GET stream's events as they come.
struct Stream {
    events: mpsc::UnboundedReceiver<Event>,
    task: tokio::task::JoinHandle<()>,
}

impl Stream {
    async fn open(url: &str, token: &str) -> Self {
        let response = reqwest::Client::new()
            .get(url)
            .bearer_auth(token)
            .header("accept", "text/event-stream")
            .send()
            .await
            .expect("GET /sse");
        assert_eq!(response.status(), 200, "GET /sse");
        let (tx, events) = mpsc::unbounded_channel();
        let mut body = response.bytes_stream();
        let task = tokio::spawn(async move {
            let mut buffer = String::new();
            while let Some(Ok(chunk)) = body.next().await {
                buffer.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = buffer.find("\n\n") {
                    let block: String = buffer.drain(..end + 2).collect();
                    let field = |name: &str| {
                        block
                            .lines()
                            .filter_map(|l| l.strip_prefix(name))
                            .map(str::trim)
                            .collect::<Vec<_>>()
                            .join("\n")
                    };
                    let data = field("data:");
                    if !data.is_empty() {
                        let _ = tx.send(Event {
                            name: field("event:"),
                            data,
                        });
                    }
                }
            }
        });
        Self { events, task }
    }

    async fn next(&mut self) -> Event {
        tokio::time::timeout(Duration::from_secs(30), self.events.recv())
            .await
            .expect("an event within 30 s")
            .expect("the stream is open")
    }

    /// The next `message` event, as JSON.
    async fn message(&mut self) -> Value {
        let event = self.next().await;
        assert_eq!(event.name, "message", "{event:?}");
        serde_json::from_str(&event.data).expect("a JSON message")
    }

    /// Messages until the reply to request `id`; every message seen.
    async fn until_reply(&mut self, id: i64) -> Vec<Value> {
        let mut seen = Vec::new();
        loop {
            let message = self.message().await;
            let done = message["id"] == id && message.get("method").is_none();
            seen.push(message);
            if done {
                return seen;
            }
        }
    }
}

async fn post(url: &str, token: &str, body: &Value, origin: Option<&str>) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .post(url)
        .bearer_auth(token)
        .json(body);
    if let Some(origin) = origin {
        request = request.header("origin", origin);
    }
    request.send().await.expect("POST /messages")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_2024_11_05_client_gets_its_revision_and_hostile_requests_are_refused_on_both_endpoints()
{
    let running = proxy(true).serve_http().await;
    let url = sse_url(&running);
    let http = reqwest::Client::new();

    // No token, a wrong one, a foreign Origin: refused before any session.
    let get = |token: Option<&str>, origin: Option<&str>| {
        let mut request = http.get(&url).header("accept", "text/event-stream");
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        request.send()
    };
    assert_eq!(get(None, None).await.unwrap().status(), 401);
    assert_eq!(get(Some("wrong-token"), None).await.unwrap().status(), 401);
    let foreign = get(Some(TOKEN), Some("https://evil.example"))
        .await
        .unwrap();
    assert_eq!(foreign.status(), 403);
    let no_stream = http
        .get(&url)
        .bearer_auth(TOKEN)
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(no_stream.status(), 406);

    let mut stream = Stream::open(&url, TOKEN).await;
    let endpoint = stream.next().await;
    assert_eq!(endpoint.name, "endpoint", "{endpoint:?}");
    assert!(
        endpoint.data.starts_with("/messages?session_id="),
        "{endpoint:?}"
    );
    let messages = format!("{}{}", running.base, endpoint.data);
    let id = endpoint.data.trim_start_matches("/messages?session_id=");

    // The handshake at 2024-11-05: that revision is what the proxy speaks.
    let initialize = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2024-11-05", "capabilities": {},
        "clientInfo": {"name": "old-ide-plugin", "version": "1"}}});
    assert_eq!(
        post(&messages, TOKEN, &initialize, None).await.status(),
        202
    );
    let reply = stream.message().await;
    assert_eq!(reply["id"], 1, "{reply}");
    assert_eq!(reply["result"]["protocolVersion"], "2024-11-05", "{reply}");
    assert_eq!(
        reply["result"]["serverInfo"]["name"], "portcullis",
        "{reply}"
    );
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    assert_eq!(
        post(&messages, TOKEN, &initialized, None).await.status(),
        202
    );

    // Hostile POSTs, each refused before it reaches the session: the
    // other client naming this session, a wrong token, a foreign Origin,
    // no session, the session named twice, a body past the limit.
    let call = |id: i64, text: &str| {
        json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": {"name": "example__echo", "arguments": {"text": text}}})
    };
    let theirs = post(
        &messages,
        OTHER_TOKEN,
        &call(66, "from the other client"),
        None,
    )
    .await;
    assert_eq!(theirs.status(), 404);
    let wrong = post(
        &messages,
        "wrong-token",
        &call(67, "with a wrong token"),
        None,
    )
    .await;
    assert_eq!(wrong.status(), 401);
    let origin = Some("https://evil.example");
    let foreign = post(&messages, TOKEN, &call(68, "from a foreign page"), origin).await;
    assert_eq!(foreign.status(), 403);
    let unnamed = format!("{}/messages", running.base);
    assert_eq!(
        post(&unnamed, TOKEN, &call(69, "unnamed"), None)
            .await
            .status(),
        400
    );
    let twice = format!("{messages}&session_id={id}");
    assert_eq!(
        post(&twice, TOKEN, &call(70, "named twice"), None)
            .await
            .status(),
        400
    );
    let huge = call(71, &"x".repeat(5 * 1024 * 1024));
    assert_eq!(post(&messages, TOKEN, &huge, None).await.status(), 413);
    // The session's id means nothing at /mcp.
    let at_mcp = http
        .post(&running.url)
        .bearer_auth(TOKEN)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-session-id", id)
        .json(&call(72, "at /mcp"))
        .send()
        .await
        .unwrap();
    assert_eq!(at_mcp.status(), 404);

    // The session's own call: its reply is the only one on the stream.
    assert_eq!(
        post(&messages, TOKEN, &call(2, "mine"), None)
            .await
            .status(),
        202
    );
    let seen = stream.until_reply(2).await;
    let reply = seen.last().unwrap();
    assert_eq!(
        reply["result"]["content"][0]["text"], "example: mine",
        "{reply}"
    );
    assert!(
        seen.iter()
            .all(|m| m["id"].as_i64().is_none_or(|id| id == 2)),
        "{seen:?}"
    );
    // Nothing of the refused POSTs reached the server.
    let records = common::admin_records(
        &running.base,
        "tool=example__echo&kind=exchange",
        AUDITOR_TOKEN,
    )
    .await;
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["client"], "tester", "{records:?}");

    // The stream closed, the session is gone: a POST naming it is refused.
    stream.task.abort();
    drop(stream);
    let mut gone = false;
    for _ in 0..300 {
        let status = post(&messages, TOKEN, &call(3, "after"), None)
            .await
            .status();
        if status == 404 {
            gone = true;
            break;
        }
        assert_eq!(status, 202);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "the session outlived its stream");
    let ends = common::admin_records(&running.base, "kind=session_end", AUDITOR_TOKEN).await;
    assert!(ends.iter().any(|r| r["transport"] == "sse"), "{ends:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn http_sse_is_off_unless_switched_on() {
    let running = proxy(false).serve_http().await;
    let response = reqwest::Client::new()
        .get(sse_url(&running))
        .bearer_auth(TOKEN)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let message = post(
        &format!("{}/messages?session_id=x", running.base),
        TOKEN,
        &json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}),
        None,
    )
    .await;
    assert_eq!(message.status(), 404);
}

/// The Python SDK's own HTTP+SSE server (`tests/fixtures/sse_server.py`)
/// with `args`: the process and its stream's URL.
async fn sse_server(args: &[&str]) -> (tokio::process::Child, String) {
    let mut command = tokio::process::Command::new(common::python());
    command
        .arg(common::repo_root().join("tests/fixtures/sse_server.py"))
        .args(args);
    let (child, url) = common::start_http_server(command, "the SDK's SSE server").await;
    (child, url.replace("/mcp", "/sse"))
}

/// A proxy with the HTTP+SSE server at `url` as `old`, its requests
/// carrying a header the operator set.
fn proxy_of_sse_server(url: &str) -> TestProxy {
    TestProxy::new().with_server_toml(&format!(
        "[[servers]]\nname = \"old\"\ntimeout = \"10s\"\n\
         remote = {{ url = {url:?}, transport = \"sse\", headers = {{ X-Api-Key = \"secret:key\" }} }}\n\
         secrets = {{ key = \"file:api-key\" }}\n"
    ))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_remote_http_sse_server_serves_streamable_http_and_2026_07_28_clients() {
    let (_server, url) = sse_server(&[]).await;
    let proxy = proxy_of_sse_server(&url);
    std::fs::write(proxy.dir().join("api-key"), "operator-api-key-7f3a").unwrap();
    let running = proxy.serve_http().await;
    for mode in ["legacy", "2026-07-28"] {
        let mut command = common::python_client();
        command.args(["http", &running.url, "--token", TOKEN, "--mode", mode]);
        command.args(["--no-validate"]);
        for op in [
            "list_tools",
            "call:old__echo:{\"text\":\"through the proxy\"}",
            "call:old__headers",
        ] {
            command.args(["--op", op]);
        }
        let doc = common::python_client_output(command).await;
        let ok = |name: &str| {
            let op = common::client_op(&doc, name);
            assert_eq!(op["ok"], true, "{mode} {name}: {op}");
            op["result"].clone()
        };
        let tools = ok("list_tools").to_string();
        assert!(
            tools.contains("old__echo") && tools.contains("old__whisper"),
            "{tools}"
        );
        let echoed = ok("call:old__echo:{\"text\":\"through the proxy\"}");
        assert_eq!(
            echoed["content"][0]["text"], "sse: through the proxy",
            "{mode}"
        );
        // The operator's header went to the endpoint the stream named.
        let headers = ok("call:old__headers");
        let headers = headers["content"][0]["text"].as_str().unwrap();
        assert!(headers.contains("'x-api-key'"), "{mode}: {headers}");
    }
    // A server's notification mid-call travels its stream and the proxy on
    // to a streamable HTTP client of a session.
    let session = common::HttpSession::connect(&running.url).await;
    let level = session
        .call(4, "logging/setLevel", json!({"level": "info"}))
        .await;
    assert!(level.get("result").is_some(), "{level}");
    let mut events = session.events().await;
    let whisper = session
        .call(
            5,
            "tools/call",
            json!({"name": "old__whisper", "arguments": {"text": "psst"}}),
        )
        .await;
    assert_eq!(common::first_text(&whisper), "whispered", "{whisper}");
    let heard = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(message) = events.recv().await {
            if message["method"] == "notifications/message" {
                return message;
            }
        }
        Value::Null
    })
    .await
    .expect("the server's log message within 30 s");
    assert_eq!(heard["params"]["data"], "psst", "{heard}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_http_sse_servers_endpoint_elsewhere_or_redirect_is_refused_and_the_trap_gets_nothing() {
    let (trap_url, trapped) = common::trap().await;
    let trap_origin = trap_url.trim_end_matches("/mcp").to_owned();
    for (args, expected) in [
        (
            vec!["--endpoint-root", trap_origin.as_str()],
            "endpoint on another origin",
        ),
        (
            vec!["--redirect-stream", trap_url.as_str()],
            "redirects are not followed",
        ),
        (
            vec!["--redirect-posts", trap_url.as_str()],
            "redirects are not followed",
        ),
    ] {
        let (_server, url) = sse_server(&args).await;
        let proxy = proxy_of_sse_server(&url);
        std::fs::write(proxy.dir().join("api-key"), "operator-api-key-7f3a").unwrap();
        let running = proxy.serve_http().await;
        let session = common::HttpSession::connect(&running.url).await;
        let reply = session
            .call(
                1,
                "tools/call",
                json!({"name": "old__echo", "arguments": {"text": "to the trap?"}}),
            )
            .await;
        let shown = reply.to_string();
        assert!(reply.get("error").is_some(), "{args:?}: {shown}");
        // Why the server could not start is the operator's to read.
        running.log.wait_for(&[expected]).await;
        assert!(!shown.contains("operator-api-key"), "{shown}");
        running.terminate().await;
    }
    // Nothing reached the trap: no connection, no byte, no key.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        trapped.lock().unwrap().is_empty(),
        "the trap received: {}",
        String::from_utf8_lossy(&trapped.lock().unwrap())
    );
}

#[test]
fn an_http_sse_server_speaks_only_the_handshake() {
    let proxy = TestProxy::new().with_server_toml(
        "[[servers]]\nname = \"old\"\nprotocol = \"2026-07-28\"\n\
         remote = { url = \"http://127.0.0.1:9/sse\", transport = \"sse\" }\n",
    );
    let refused = common::serve_refused(&proxy.write_config());
    assert!(refused.contains("HTTP+SSE"), "{refused}");
    assert!(refused.contains("protocol"), "{refused}");
}

/// A client that asks and does not read: each reply holds its request's
/// place and its bytes in the session's budget until the client takes it;
/// past the budget the proxy keeps a short error instead of the reply.
#[tokio::test(flavor = "multi_thread")]
async fn replies_a_client_leaves_unread_are_bounded_by_the_sessions_budget() {
    const CALLS: i64 = 60;
    let proxy = TestProxy::new()
        .with_config("\n[listener]\nsse = true\n\n[limits]\nmax_queued_bytes = 262144\n")
        .with_example_server("example");
    let running = proxy.serve_http().await;
    let response = reqwest::Client::new()
        .get(sse_url(&running))
        .bearer_auth(TOKEN)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    let mut body = response.bytes_stream();
    let mut read = String::new();
    // Read what is needed to begin: the endpoint, then the handshake.
    let mut next_event = async || loop {
        if let Some(end) = read.find("\n\n") {
            let block: String = read.drain(..end + 2).collect();
            if let Some(data) = block.lines().find_map(|l| l.strip_prefix("data:")) {
                return data.trim().to_owned();
            }
            continue;
        }
        let chunk = tokio::time::timeout(Duration::from_secs(60), body.next())
            .await
            .expect("the stream goes on")
            .expect("the stream is open")
            .unwrap();
        read.push_str(&String::from_utf8_lossy(&chunk));
    };
    let endpoint = next_event().await;
    let messages = format!("{}{endpoint}", running.base);
    let initialize = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "no-reader", "version": "1"}}});
    assert_eq!(
        post(&messages, TOKEN, &initialize, None).await.status(),
        202
    );
    let reply: Value = serde_json::from_str(&next_event().await).unwrap();
    assert_eq!(reply["id"], 0, "{reply}");
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    assert_eq!(
        post(&messages, TOKEN, &initialized, None).await.status(),
        202
    );

    // Now it stops reading, and asks for 60 replies of 200 KB each: far
    // more than the budget and what the sockets hold.
    let big = "x".repeat(200 * 1024);
    for id in 1..=CALLS {
        let call = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": {"name": "example__echo", "arguments": {"text": big}}});
        assert_eq!(post(&messages, TOKEN, &call, None).await.status(), 202);
    }
    // Every call ran (and was recorded) whatever the client reads.
    let mut recorded = 0;
    for _ in 0..600 {
        // (Exchanges: the tool's first-use pin is a record about it too.)
        let query = "tool=example__echo&kind=exchange";
        recorded = common::admin_records(&running.base, query, AUDITOR_TOKEN)
            .await
            .len();
        if recorded >= CALLS as usize {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(recorded, CALLS as usize);

    // Read at last: every request answered, the first replies whole, and
    // those past the budget as the short error.
    let (mut whole, mut dropped) = (0, 0);
    let mut answered = std::collections::BTreeSet::new();
    while answered.len() < CALLS as usize {
        let message: Value = serde_json::from_str(&next_event().await).unwrap();
        let Some(id) = message["id"].as_i64() else {
            continue;
        };
        answered.insert(id);
        if message["result"]["content"][0]["text"]
            .as_str()
            .is_some_and(|text| text.len() > 200 * 1024)
        {
            whole += 1;
        } else {
            let text = message["error"]["message"].as_str().unwrap_or_default();
            assert!(text.contains("the reply was dropped"), "{message}");
            dropped += 1;
        }
    }
    assert!(dropped > 0, "{whole} whole, none dropped");
    assert!(whole > 0, "none whole, {dropped} dropped");
}
