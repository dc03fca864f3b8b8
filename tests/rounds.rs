//! Multi round-trip requests through the real binary: a server behind the
//! proxy (the example server, which speaks the handshake revisions) asks
//! the client something during a 2026-07-28 call — sampling, elicitation —
//! and the client gets it as a round of its call (`input_required`),
//! answered by retrying. With rmcp 3.11's client, which drives the rounds
//! itself, and by hand as an attacker would: another client's
//! `requestState`, Cedar refusing the question, the record of each part.
#![allow(
    clippy::indexing_slicing,
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used
)]
// Sampling is deprecated in rmcp (SEP-2577) but part of the revisions the
// example server speaks, and what these tests exercise.
#![allow(deprecated)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{AUDITOR_TOKEN, GITHUB_TOKEN, OTHER_TOKEN, TOKEN, TestProxy};
use serde_json::{Value, json};

const VERSION: &str = "2026-07-28";

/// `other` may not be asked for samples by the example server.
const POLICIES: &str = r#"
@id("all") permit (principal, action, resource);
@id("no-sampling-of-other")
forbid (principal == Client::"other", action == Action::"sampling", resource == Server::"example");
"#;

fn proxy() -> TestProxy {
    common::redacting_proxy(POLICIES)
}

/// A 2026-07-28 `tools/call` of `name` by a client that can sample and
/// elicit.
fn call(id: i64, name: &str, arguments: Value) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {
        "name": name, "arguments": arguments,
        "_meta": {
            "io.modelcontextprotocol/protocolVersion": VERSION,
            "io.modelcontextprotocol/clientCapabilities": { "sampling": {}, "elicitation": {} },
        } } })
}

/// `message` retried as `id`, with `answers` and `state`.
fn retry(message: &Value, id: i64, answers: Value, state: &Value) -> Value {
    let mut retried = message.clone();
    retried["id"] = json!(id);
    retried["params"]["inputResponses"] = answers;
    retried["params"]["requestState"] = state.clone();
    retried
}

/// POSTs a 2026-07-28 request as `token`'s client: the status and the
/// body (the reply alone, or the last event of a stream).
async fn post(url: &str, token: &str, message: &Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(url)
        .bearer_auth(token)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", VERSION)
        .header("mcp-method", message["method"].as_str().unwrap())
        .header("mcp-name", message["params"]["name"].as_str().unwrap())
        .json(message)
        .send()
        .await
        .expect("POST /mcp");
    let status = response.status().as_u16();
    let text = response.text().await.expect("a body");
    let body = match serde_json::from_str(&text) {
        Ok(body) => body,
        // An SSE stream: its last `data:` line is the reply.
        Err(_) => text
            .lines()
            .rev()
            .filter_map(|line| line.strip_prefix("data:"))
            .find_map(|data| serde_json::from_str(data.trim()).ok())
            .unwrap_or_else(|| json!({ "text": text })),
    };
    (status, body)
}

/// The one question of a round: its key and request.
fn only_question(round: &Value) -> (String, Value) {
    assert_eq!(round["result"]["resultType"], "input_required", "{round}");
    let requests = round["result"]["inputRequests"].as_object().unwrap();
    assert_eq!(requests.len(), 1, "{round}");
    let (key, request) = requests.iter().next().unwrap();
    (key.clone(), request.clone())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_elicitation_mid_call_is_a_round_redacted_bound_to_its_client_and_recorded() {
    let proxy = proxy();
    let served = proxy.serve_http().await;
    let url = &served.url;
    let asking = call(
        1,
        "example__elicit",
        json!({ "message": format!("confirm {GITHUB_TOKEN}") }),
    );
    let (status, round) = post(url, TOKEN, &asking).await;
    assert_eq!(status, 200, "{round}");
    assert_eq!(round["id"], 1, "{round}");
    let (key, question) = only_question(&round);
    assert_eq!(question["method"], "elicitation/create", "{round}");
    // The server's question is redacted before the client sees it.
    assert_eq!(
        question["params"]["message"],
        "confirm [REDACTED:github-pat-classic]"
    );
    assert!(!round.to_string().contains(GITHUB_TOKEN));
    let state = round["result"]["requestState"].clone();
    let answers = json!({ key.clone(): { "action": "accept", "content": { "name": "Ada" } } });

    // Another client holding the state cannot continue the call (nor learn
    // that it exists).
    let (status, stolen) = post(
        url,
        OTHER_TOKEN,
        &retry(&asking, 2, answers.clone(), &state),
    )
    .await;
    assert_eq!(status, 200, "{stolen}");
    assert_eq!(stolen["error"]["code"], -32602, "{stolen}");
    assert!(stolen.get("result").is_none());
    // Nor can the client itself point the state at another call.
    let other_call = call(1, "example__elicit", json!({ "message": "something else" }));
    let (_, switched) = post(url, TOKEN, &retry(&other_call, 3, answers.clone(), &state)).await;
    assert_eq!(switched["error"]["code"], -32602, "{switched}");

    // The client's own retry: the answer reaches the server, the call ends.
    let (status, done) = post(url, TOKEN, &retry(&asking, 4, answers, &state)).await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["id"], 4, "{done}");
    assert_eq!(done["result"]["resultType"], "complete", "{done}");
    let told: Value = serde_json::from_str(&common::first_text(&done)).unwrap();
    assert_eq!(
        told,
        json!({ "action": "accept", "content": { "name": "Ada" } })
    );

    let records = common::admin_records(&served.base, "kind=exchange", AUDITOR_TOKEN).await;
    let asked = records
        .iter()
        .find(|r| r["method"] == "elicitation/create")
        .unwrap_or_else(|| panic!("the question is recorded: {records:?}"));
    assert_eq!(asked["decision"], "allow", "{asked}");
    assert_eq!(asked["client"], "tester", "{asked}");
    let calls: Vec<&Value> = records
        .iter()
        .filter(|r| r["method"] == "tools/call")
        .collect();
    let allowed = calls.iter().filter(|r| r["decision"] == "allow").count();
    assert_eq!(allowed, 1, "one call, however many rounds: {calls:?}");
    let refused: Vec<&&Value> = calls.iter().filter(|r| r["decision"] != "allow").collect();
    assert_eq!(
        refused.len(),
        2,
        "each refused retry is recorded: {calls:?}"
    );
    assert!(
        refused.iter().any(|r| r["client"] == "other"),
        "{refused:?}"
    );
    served.terminate().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_question_cedar_forbids_never_reaches_the_client_as_a_round() {
    let proxy = proxy();
    let served = proxy.serve_http().await;
    let asking = call(1, "example__sample", json!({ "prompt": "tell me" }));
    let (status, reply) = post(&served.url, OTHER_TOKEN, &asking).await;
    assert_eq!(status, 200, "{reply}");
    // No round: the server was refused, and its tool says so.
    assert_eq!(reply["result"]["resultType"], "complete", "{reply}");
    assert_eq!(reply["result"]["isError"], true, "{reply}");
    assert!(reply["result"].get("inputRequests").is_none());
    assert!(
        common::first_text(&reply).starts_with("sampling failed"),
        "{reply}"
    );
    let records = common::admin_records(&served.base, "kind=exchange", AUDITOR_TOKEN).await;
    let asked = records
        .iter()
        .find(|r| r["method"] == "sampling/createMessage")
        .unwrap_or_else(|| panic!("the refused question is recorded: {records:?}"));
    assert_eq!(asked["decision"], "deny", "{asked}");
    served.terminate().await;
}

/// An rmcp client that samples: every request is answered "model says";
/// `asked` counts them.
#[derive(Clone)]
struct Sampler {
    asked: Arc<AtomicUsize>,
}

impl rmcp::ClientHandler for Sampler {
    async fn create_message(
        &self,
        params: rmcp::model::CreateMessageRequestParams,
        _context: rmcp::service::RequestContext<rmcp::RoleClient>,
    ) -> Result<rmcp::model::CreateMessageResult, rmcp::ErrorData> {
        self.asked.fetch_add(1, Ordering::SeqCst);
        let said = serde_json::to_value(&params.messages).unwrap_or_default();
        assert!(said.to_string().contains("from rmcp"), "{said}");
        let reply = rmcp::model::CreateMessageResult::new(
            rmcp::model::SamplingMessage::assistant_text("model says"),
            "test-model".to_owned(),
        );
        Ok(reply)
    }

    fn get_info(&self) -> rmcp::model::ClientInfo {
        let capabilities = rmcp::model::ClientCapabilities::builder()
            .enable_sampling()
            .build();
        rmcp::model::ClientInfo::new(
            capabilities,
            rmcp::model::Implementation::new("sampler", "0"),
        )
    }
}

/// rmcp 3.11 at 2026-07-28, whose `call_tool` drives the rounds itself.
async fn rmcp_samples<T, E, A>(transport: T, token_client: &str, served_base: Option<&str>)
where
    T: rmcp::transport::IntoTransport<rmcp::RoleClient, E, A>,
    E: std::error::Error + Send + Sync + 'static,
{
    use rmcp::model::{CallToolRequestParams, ProtocolVersion};
    use rmcp::service::{ClientLifecycleMode, ClientServiceExt as _};
    let asked = Arc::new(AtomicUsize::new(0));
    let sampler = Sampler {
        asked: asked.clone(),
    };
    let lifecycle = ClientLifecycleMode::Discover {
        preferred_versions: vec![ProtocolVersion::LATEST],
    };
    let client = sampler
        .serve_with_lifecycle(transport, lifecycle)
        .await
        .expect("connect at 2026-07-28");
    let params = CallToolRequestParams::new("example__sample").with_arguments(
        json!({ "prompt": "from rmcp" })
            .as_object()
            .unwrap()
            .clone(),
    );
    let result = client
        .call_tool(params)
        .await
        .expect("tools/call in rounds");
    let result = serde_json::to_value(&result).unwrap();
    assert_eq!(
        result["content"][0]["text"], "sampled: model says",
        "{result}"
    );
    assert_eq!(asked.load(Ordering::SeqCst), 1);
    client.cancel().await.expect("close");
    if let Some(base) = served_base {
        let records = common::admin_records(base, "kind=exchange", AUDITOR_TOKEN).await;
        assert!(
            records
                .iter()
                .any(|r| r["method"] == "sampling/createMessage"
                    && r["decision"] == "allow"
                    && r["client"] == token_client
                    && r["protocol"] == VERSION),
            "{records:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn rmcp_at_2026_07_28_answers_a_sampling_round_over_http() {
    use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
    let proxy = proxy();
    let served = proxy.serve_http().await;
    let transport = rmcp::transport::StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(served.url.clone()).auth_header(TOKEN),
    );
    rmcp_samples(transport, "tester", Some(&served.base)).await;
    served.terminate().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rmcp_at_2026_07_28_answers_a_sampling_round_over_stdio() {
    use rmcp::transport::TokioChildProcess;
    let proxy = proxy();
    let (transport, _) = TokioChildProcess::builder(proxy.stdio_command())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("spawn portcullis stdio");
    rmcp_samples(transport, "tester", None).await;
}

/// The example server speaking 2026-07-28 alone (`--stateless`) as
/// `modern`, whose `ask` tool answers `input_required` itself; `other` may
/// not be asked to elicit by it.
fn modern_proxy() -> TestProxy {
    let snippet = format!(
        "[[servers]]\nname = \"modern\"\nprotocol = \"2026-07-28\"\n\
         process = {{ command = {cmd:?}, args = [\"--name\", \"modern\", \"--stateless\"] }}\n",
        cmd = common::example_server_bin()
    );
    let proxy = TestProxy::new()
        .with_config("policies = \"policies\"\n[redact]\nresponses = \"redact\"")
        .with_server_toml(&snippet);
    proxy.policy_folder(
        r#"
@id("all") permit (principal, action, resource);
@id("no-elicitation-of-other")
forbid (principal == Client::"other", action == Action::"elicitation", resource == Server::"modern");
"#,
    );
    proxy
}

/// What `ask` replies once the client accepted with `name`.
fn asked(name: &str) -> String {
    let answer = json!({ "action": "accept", "content": { "name": name } });
    format!("asked: {answer}")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_2026_07_28_servers_input_required_is_a_round_of_the_proxys_for_a_2026_07_28_client() {
    let proxy = modern_proxy();
    let served = proxy.serve_http().await;
    let url = &served.url;
    let asking = call(
        1,
        "modern__ask",
        json!({ "message": format!("confirm {GITHUB_TOKEN}") }),
    );
    let (status, round) = post(url, TOKEN, &asking).await;
    assert_eq!(status, 200, "{round}");
    let (key, question) = only_question(&round);
    assert_eq!(question["method"], "elicitation/create", "{round}");
    assert_eq!(
        question["params"]["message"],
        "confirm [REDACTED:github-pat-classic]"
    );
    // The server's own requestState never leaves the proxy.
    assert!(!round.to_string().contains("ask-round-1"), "{round}");
    assert!(!round.to_string().contains(GITHUB_TOKEN));
    let state = round["result"]["requestState"].clone();
    let answers = json!({ key: { "action": "accept", "content": { "name": "Ada" } } });
    let (status, done) = post(url, TOKEN, &retry(&asking, 2, answers, &state)).await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["id"], 2, "{done}");
    assert_eq!(done["result"]["resultType"], "complete", "{done}");
    assert_eq!(common::first_text(&done), asked("Ada"), "{done}");

    // Cedar forbids the question for `other`: it never sees it, and the
    // call ends with an error (inputResponses carry no refusals).
    let (status, refused) = post(
        url,
        OTHER_TOKEN,
        &call(3, "modern__ask", json!({ "message": "?" })),
    )
    .await;
    assert_eq!(status, 200, "{refused}");
    assert_eq!(refused["error"]["code"], -32603, "{refused}");
    let said = refused["error"]["message"].as_str().unwrap_or_default();
    assert!(said.contains("was not answered"), "{said}");
    assert!(refused.get("result").is_none(), "{refused}");

    let records = common::admin_records(&served.base, "kind=exchange", AUDITOR_TOKEN).await;
    let decided: Vec<(&Value, &Value)> = records
        .iter()
        .filter(|r| r["method"] == "elicitation/create")
        .map(|r| (&r["client"], &r["decision"]))
        .collect();
    assert!(
        decided.contains(&(&json!("tester"), &json!("allow")))
            && decided.contains(&(&json!("other"), &json!("deny"))),
        "{decided:?}"
    );
    served.terminate().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_2026_07_28_servers_input_required_is_a_request_on_a_handshake_session() {
    let proxy = modern_proxy();
    let mut client = proxy.raw_stdio().await;
    let hello = json!({ "protocolVersion": "2025-11-25", "capabilities": { "elicitation": {} },
        "clientInfo": { "name": "raw-test", "version": "0" } });
    client.call(0, "initialize", hello).await;
    client
        .send(json!({ "jsonrpc": "2.0", "method": "notifications/initialized" }))
        .await;
    let arguments = json!({ "message": format!("confirm {GITHUB_TOKEN}") });
    client
        .send(json!({ "jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": { "name": "modern__ask", "arguments": arguments } }))
        .await;
    let question = client
        .recv_matching("elicitation/create", |m| {
            m["method"] == "elicitation/create"
        })
        .await;
    assert_eq!(
        question["params"]["message"], "confirm [REDACTED:github-pat-classic]",
        "{question}"
    );
    // The proxy's id, not the server's key.
    assert_ne!(question["id"], "name", "{question}");
    client
        .send(json!({ "jsonrpc": "2.0", "id": question["id"].clone(),
            "result": { "action": "accept", "content": { "name": "Ada" } } }))
        .await;
    let done = client.response(json!(1)).await;
    assert_eq!(common::first_text(&done), asked("Ada"), "{done}");
    // A handshake client is not shown what only 2026-07-28 says.
    assert!(done["result"].get("resultType").is_none(), "{done}");
    client.finish().await;
}
