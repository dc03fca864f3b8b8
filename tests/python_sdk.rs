//! The official Python MCP SDK (`mcp` from PyPI) as the client, through the
//! real binary over stdio and over streamable HTTP, with the example server
//! and `mcp-server-time` behind the proxy.
#![allow(
    clippy::indexing_slicing,
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used
)]

mod common;

use common::{TOKEN, TestProxy};
use serde_json::{Value, json};

const OPS: &[&str] = &[
    "list_tools",
    "call:example__echo:{\"text\":\"from python\"}",
    "call:time__get_current_time:{\"timezone\":\"Asia/Tokyo\"}",
    "list_resources",
    "read:example://greeting",
    "list_prompts",
    "prompt:example__greet:{\"name\":\"Py\"}",
    "call:example__sample:{\"prompt\":\"python asks\"}",
    "call:example__nope",
    "call:example__elicit:{\"message\":\"who is asking?\"}",
];

/// The Python SDK's `Client.listen` (2026-07-28 only): updates of the
/// greeting while the example server touches it.
const LISTEN: &str = "listen:example__touch@example://greeting";

/// The options that make the client speak `mode`, and what only that mode
/// can do.
fn mode_args(mode: &str) -> Vec<String> {
    let mut args = vec!["--mode".to_owned(), mode.to_owned()];
    if mode != "legacy" {
        args.extend(["--op".to_owned(), LISTEN.to_owned()]);
    }
    args
}

/// Runs `tests/python/mcp_client.py` with the test virtualenv and returns its
/// JSON document.
async fn run_client(transport_args: Vec<String>) -> Value {
    let mut command = common::python_client();
    let (head, tail) = match transport_args.iter().position(|a| a == "--") {
        Some(split) => transport_args.split_at(split),
        None => (&transport_args[..], &[][..]),
    };
    command.args(head);
    command.args(["--sampling-reply", "python model reply", "--no-validate"]);
    command.args(["--elicit-reply", "Py"]);
    for op in OPS {
        command.args(["--op", op]);
    }
    command.args(tail);
    common::python_client_output(command).await
}

fn op<'a>(doc: &'a Value, name: &str) -> &'a Value {
    common::client_op(doc, name)
}

fn ok<'a>(doc: &'a Value, name: &str) -> &'a Value {
    let result = op(doc, name);
    assert_eq!(result["ok"], true, "{name}: {result}");
    &result["result"]
}

/// What every revision must show alike.
fn check(doc: &Value) {
    assert_eq!(doc["server_info"]["name"], "portcullis", "{doc}");
    check_common(doc);
}

/// A 2026-07-28 client: the same answers, each result framed as that
/// revision wants. The server's requests to the client mid-call (the
/// example's sampling and elicitation), which that revision has no way
/// for, reach it as rounds of its call (`input_required`), which the SDK
/// answers and retries by itself.
fn check_modern(doc: &Value) {
    assert_eq!(doc["protocol_version"], "2026-07-28", "{doc}");
    check_common(doc);
    // A listen stream: granted the greeting's updates, and told of one.
    let listened = ok(doc, LISTEN);
    assert_eq!(
        listened["honored"]["resourceSubscriptions"],
        json!(["example://greeting"]),
        "{listened}"
    );
    let event = listened["event"].as_str().unwrap_or_default();
    assert!(event.contains("example://greeting"), "{event}");
    // Every result names the proxy; lists and reads are private to the
    // client (authz filters them per client) and stale at once.
    for name in ["list_tools", "list_resources", "read:example://greeting"] {
        let result = ok(doc, name);
        assert_eq!(result["resultType"], "complete", "{result}");
        assert_eq!(result["cacheScope"], "private", "{result}");
        assert_eq!(result["ttlMs"], 0, "{result}");
        let named = &result["_meta"]["io.modelcontextprotocol/serverInfo"]["name"];
        assert_eq!(named, "portcullis", "{result}");
    }
    assert_eq!(ok(doc, OPS[7])["resultType"], "complete");
}

fn check_common(doc: &Value) {
    let tools: Vec<&str> = ok(doc, "list_tools")["tools"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert!(tools.contains(&"example__echo"), "{tools:?}");
    assert!(tools.contains(&"time__convert_time"), "{tools:?}");

    let echoed = ok(doc, OPS[1]);
    assert_eq!(echoed["content"][0]["text"], "example: from python");
    let time = ok(doc, OPS[2]);
    let time: Value = serde_json::from_str(time["content"][0]["text"].as_str().unwrap()).unwrap();
    assert_eq!(time["timezone"], "Asia/Tokyo");

    let resources = ok(doc, "list_resources");
    assert_eq!(resources["resources"][0]["uri"], "example://greeting");
    let read = ok(doc, "read:example://greeting");
    assert_eq!(read["contents"][0]["text"], "hello from example");
    let prompts = ok(doc, "list_prompts");
    assert_eq!(prompts["prompts"][0]["name"], "example__greet");
    let prompt = ok(doc, OPS[6]);
    assert_eq!(prompt["messages"][0]["content"]["text"], "Please greet Py");

    let unknown = op(doc, "call:example__nope");
    assert_eq!(unknown["ok"], false);
    assert_eq!(unknown["error"]["code"], json!(-32602), "{unknown}");

    // The server asks the client during a call: its model (sampling), then
    // its user (elicitation); each answer reaches the server.
    let sampled = ok(doc, OPS[7]);
    assert_eq!(sampled["content"][0]["text"], "sampled: python model reply");
    assert_eq!(
        doc["sampling_requests"][0]["messages"][0]["content"]["text"],
        "python asks"
    );
    let elicited = ok(doc, OPS[9]);
    let answer: Value =
        serde_json::from_str(elicited["content"][0]["text"].as_str().unwrap_or("null")).unwrap();
    assert_eq!(
        answer,
        json!({ "action": "accept", "content": { "name": "Py" } })
    );
    assert_eq!(doc["elicitation_requests"][0]["message"], "who is asking?");
}

async fn over_http(mode: &str) -> Value {
    let proxy = TestProxy::new()
        .with_example_server("example")
        .with_time_server("time");
    let server = proxy.serve_http().await;
    let doc = run_client(
        vec![
            "http".into(),
            server.url.clone(),
            "--token".into(),
            TOKEN.into(),
        ]
        .into_iter()
        .chain(mode_args(mode))
        .collect(),
    )
    .await;
    server.terminate().await;
    doc
}

/// The SDK's default: `server/discover` first, answered, so no handshake.
#[tokio::test(flavor = "multi_thread")]
async fn python_sdk_auto_over_http_speaks_2026_07_28() {
    let doc = over_http("auto").await;
    // What `server/discover` said of the server.
    assert_eq!(doc["server_info"]["name"], "portcullis", "{doc}");
    check_modern(&doc);
}

#[tokio::test(flavor = "multi_thread")]
async fn python_sdk_pinned_to_2026_07_28_over_http() {
    check_modern(&over_http("2026-07-28").await);
}

#[tokio::test(flavor = "multi_thread")]
async fn python_sdk_legacy_mode_over_http_keeps_the_handshake() {
    let doc = over_http("legacy").await;
    assert_eq!(doc["protocol_version"], "2025-11-25", "{doc}");
    check(&doc);
}

async fn over_stdio(mode: &str) -> Value {
    let proxy = TestProxy::new()
        .with_example_server("example")
        .with_time_server("time");
    let config = proxy.write_config();
    let mut args = vec!["stdio".to_owned()];
    args.extend(mode_args(mode));
    run_client(
        args.into_iter()
            .chain([
                "--".into(),
                common::portcullis_bin().into(),
                "stdio".into(),
                "--config".into(),
                config.display().to_string(),
                "--client".into(),
                "tester".into(),
            ])
            .collect(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn python_sdk_auto_over_stdio_speaks_2026_07_28() {
    let doc = over_stdio("auto").await;
    assert_eq!(doc["server_info"]["name"], "portcullis", "{doc}");
    check_modern(&doc);
}

#[tokio::test(flavor = "multi_thread")]
async fn python_sdk_pinned_to_2026_07_28_over_stdio() {
    check_modern(&over_stdio("2026-07-28").await);
}

#[tokio::test(flavor = "multi_thread")]
async fn python_sdk_legacy_mode_over_stdio_keeps_the_handshake() {
    let doc = over_stdio("legacy").await;
    assert_eq!(doc["protocol_version"], "2025-11-25", "{doc}");
    check(&doc);
}
