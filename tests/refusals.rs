//! How a refused `tools/call` reaches an agent: by default a tool result
//! with `isError` whose text is the refusal's own words (what agent
//! frameworks hand their model), the decision in its `_meta`; with
//! `[proxy] tool_refusals = "error"`, the JSON-RPC error. Requests that are
//! not tool calls keep their JSON-RPC error either way. Shown with the
//! official Python SDK as the client, over streamable HTTP in a handshake
//! session and in 2026-07-28, and with raw requests for the refusals of
//! other interceptors (a quota, the schema).
#![allow(
    clippy::indexing_slicing,
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used
)]

mod common;

use common::{AUDITOR_TOKEN, HttpSession, TOKEN, TestProxy};
use serde_json::{Value, json};

const POLICIES: &str = r#"
@id("dev-example")
permit (principal in Group::"dev", action, resource in Server::"example");

@id("no-secrets-in-echo")
forbid (principal, action == Action::"call_tool", resource == Tool::"example__echo")
when { context.arguments has text && context.arguments.text like "*secret*" };

@id("no-greeting")
forbid (principal, action == Action::"get_prompt", resource in Server::"example");
"#;

const REFUSED: &str = "call:example__echo:{\"text\":\"a secret\"}";
const ALLOWED: &str = "call:example__echo:{\"text\":\"fine\"}";
const PROMPT: &str = "prompt:example__greet:{\"name\":\"Py\"}";

fn proxy(as_results: bool) -> TestProxy {
    let proxy = TestProxy::new()
        .with_config("policies = \"policies\"")
        .with_example_server("example");
    proxy.policy_folder(POLICIES);
    if as_results {
        proxy.with_refusals_as_results()
    } else {
        proxy
    }
}

async fn python_sdk(url: &str, mode: &str) -> Value {
    let mut command = common::python_client();
    command.args([
        "http",
        url,
        "--token",
        TOKEN,
        "--mode",
        mode,
        "--no-validate",
    ]);
    for op in ["list_tools", REFUSED, ALLOWED, PROMPT] {
        command.args(["--op", op]);
    }
    common::python_client_output(command).await
}

fn op<'a>(doc: &'a Value, name: &str) -> &'a Value {
    common::client_op(doc, name)
}

/// The prompt refused by a policy: a JSON-RPC error in either form.
fn prompt_refused_as_an_error(doc: &Value) {
    let prompt = op(doc, PROMPT);
    assert_eq!(prompt["ok"], false, "{prompt}");
    assert_eq!(prompt["error"]["code"], -32010, "{prompt}");
    assert_eq!(prompt["error"]["data"]["interceptor"], "authz", "{prompt}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_python_sdk_gets_a_refused_call_as_a_tool_result_with_its_reason() {
    let proxy = proxy(true);
    let served = proxy.serve_http().await;
    for mode in ["legacy", "2026-07-28"] {
        let doc = python_sdk(&served.url, mode).await;
        let refused = op(&doc, REFUSED);
        // A result, not an error: the SDK hands it on as the tool's answer.
        assert_eq!(refused["ok"], true, "{mode}: {refused}");
        let result = &refused["result"];
        assert_eq!(result["isError"], true, "{mode}: {result}");
        let text = result["content"][0]["text"].as_str().unwrap();
        // The error's own words: who refused, and the decision to look up.
        assert!(text.starts_with("denied by authz: "), "{mode}: {text}");
        let decision = &result["_meta"]["dev.portcullis/refusal"];
        assert_eq!(decision["decision"], "deny", "{mode}: {result}");
        assert_eq!(decision["interceptor"], "authz", "{mode}: {result}");
        assert_eq!(decision["code"], -32010, "{mode}: {result}");
        let id = decision["decision_id"].as_str().unwrap();
        assert!(
            text.contains(id),
            "{mode}: the text names the decision: {result}"
        );
        // Nothing of the policy's text.
        assert!(!result.to_string().contains("forbid"), "{mode}: {result}");
        assert!(
            !result.to_string().contains("no-secrets"),
            "{mode}: {result}"
        );
        // The next call goes through as before.
        let allowed = op(&doc, ALLOWED);
        assert_eq!(allowed["ok"], true, "{mode}: {allowed}");
        assert_eq!(
            allowed["result"]["content"][0]["text"], "example: fine",
            "{mode}: {allowed}"
        );
        assert_ne!(allowed["result"]["isError"], true, "{mode}: {allowed}");
        prompt_refused_as_an_error(&doc);
    }
    // Recorded as the refusal it is.
    let records =
        common::admin_records(&served.base, "kind=exchange&tool=echo", AUDITOR_TOKEN).await;
    let denied: Vec<&Value> = records.iter().filter(|r| r["decision"] == "deny").collect();
    assert_eq!(denied.len(), 2, "{records:?}");
    for record in denied {
        assert_eq!(record["decided_by"], "authz", "{record}");
        assert_eq!(record["is_error"], true, "{record}");
    }
    served.terminate().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn with_tool_refusals_as_errors_the_python_sdk_gets_the_json_rpc_error() {
    let proxy = proxy(false);
    let served = proxy.serve_http().await;
    for mode in ["legacy", "2026-07-28"] {
        let doc = python_sdk(&served.url, mode).await;
        let refused = op(&doc, REFUSED);
        assert_eq!(refused["ok"], false, "{mode}: {refused}");
        assert_eq!(refused["error"]["code"], -32010, "{mode}: {refused}");
        assert_eq!(
            refused["error"]["data"]["interceptor"], "authz",
            "{mode}: {refused}"
        );
        assert!(
            refused["error"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("denied by authz: ")),
            "{mode}: {refused}"
        );
        assert_eq!(op(&doc, ALLOWED)["ok"], true, "{mode}: {doc}");
        prompt_refused_as_an_error(&doc);
    }
    served.terminate().await;
}

/// The refusals of a quota and of the schema are tool results too, and
/// say what they said as errors; a malformed call keeps its error.
#[tokio::test(flavor = "multi_thread")]
async fn every_interceptors_refusal_of_a_call_is_a_tool_result_and_a_malformed_call_an_error() {
    let proxy = TestProxy::new()
        .with_config("[ratelimit]\ndefault = \"3/min\"")
        .with_example_server("example")
        .with_refusals_as_results();
    let served = proxy.serve_http().await;
    let session = HttpSession::connect(&served.url).await;
    let call = |id: i64, arguments: Value| {
        session.call(
            id,
            "tools/call",
            json!({ "name": "example__echo", "arguments": arguments }),
        )
    };
    // A call without a name is not a refusal: its JSON-RPC error stays.
    let malformed = session
        .call(9, "tools/call", json!({ "arguments": {} }))
        .await;
    assert!(malformed.get("result").is_none(), "{malformed}");
    assert_eq!(malformed["error"]["code"], -32602, "{malformed}");
    // The schema: `text` must be a string.
    let schema = call(1, json!({ "text": 7 })).await;
    let result = &schema["result"];
    assert_eq!(result["isError"], true, "{schema}");
    assert!(
        result["content"][0]["text"]
            .as_str()
            .unwrap()
            .starts_with("denied by schema: "),
        "{schema}"
    );
    assert_eq!(
        result["_meta"]["dev.portcullis/refusal"]["interceptor"], "schema",
        "{schema}"
    );
    // The quota: three calls a minute, the refused ones counted or not.
    let mut quota = Value::Null;
    for id in 2..7 {
        quota = call(id, json!({ "text": "hi" })).await;
        if quota["result"]["isError"] == true {
            break;
        }
    }
    let result = &quota["result"];
    assert_eq!(result["isError"], true, "{quota}");
    assert_eq!(
        result["_meta"]["dev.portcullis/refusal"]["interceptor"], "ratelimit",
        "{quota}"
    );
    assert_eq!(
        result["_meta"]["dev.portcullis/refusal"]["code"], -32015,
        "{quota}"
    );
    served.terminate().await;
}

/// An unknown tool is not a refusal: its JSON-RPC error stays, and its
/// record keeps the name asked (cut: a client wrote it), so that
/// `audit query --tool` finds it.
#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_tool_keeps_its_error_and_its_record_the_name_asked() {
    let proxy = TestProxy::new()
        .with_example_server("example")
        .with_refusals_as_results();
    let served = proxy.serve_http().await;
    let session = HttpSession::connect(&served.url).await;
    let unknown = session
        .call(10, "tools/call", json!({ "name": "example__nope" }))
        .await;
    assert_eq!(unknown["error"]["code"], -32602, "{unknown}");
    let long = format!("example__{}", "n".repeat(10_000));
    let unknown = session
        .call(11, "tools/call", json!({ "name": long }))
        .await;
    assert_eq!(unknown["error"]["code"], -32602, "{unknown}");
    let asked = common::admin_records(&served.base, "tool=example__nope", AUDITOR_TOKEN).await;
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert_eq!(asked[0]["target"], "example__nope", "{asked:?}");
    assert_eq!(asked[0]["method"], "tools/call", "{asked:?}");
    let cut = format!("example__{}", "n".repeat(256 - "example__".len()));
    let asked = common::admin_records(&served.base, &format!("tool={cut}"), AUDITOR_TOKEN).await;
    assert_eq!(asked.len(), 1, "the long name, cut: {asked:?}");
    served.terminate().await;
}
