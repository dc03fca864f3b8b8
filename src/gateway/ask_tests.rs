//! `@ask` in-process: the person is asked on the call's stream; their
//! accept sends the call once, decided again; the client's cancel
//! withdraws the question (the call never reaches its server); one question
//! at a time per session; a client without elicitation is refused at once.

use std::path::Path;
use std::sync::Arc;

use serde_json::{Value, json};

use super::harness::{Harness, next, request, spawn_handle, within};
use crate::chain::Interceptor;
use crate::interceptors::{Authz, PolicyEngine};
use crate::protocol;

const CONFIG: &str = "[[clients]]\nname = \"alice\"\n\
    [[servers]]\nname = \"mail\"\nprocess = { command = \"scripted\" }\n";

/// Everything permitted; sending asks.
const POLICIES: &str = r#"
@id("all") permit (principal, action, resource);
@id("ask-to-send") @ask("Sending is confirmed by a person.")
forbid (principal, action == Action::"call_tool", resource == Tool::"mail__send");
"#;

fn send(id: i64) -> Value {
    request(
        id,
        "tools/call",
        json!({ "name": "mail__send", "arguments": { "to": "a@b.example" } }),
    )
}

async fn up(dir: &std::path::Path) -> (Harness, crate::upstream::scripted::ScriptedServer) {
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/schema.cedarschema"),
        dir.join("schema.cedarschema"),
    )
    .unwrap_or_else(|err| panic!("the schema: {err}"));
    std::fs::write(dir.join("ask.cedar"), POLICIES).unwrap_or_else(|err| panic!("{err}"));
    let engine = PolicyEngine::load(dir, &[]).unwrap_or_else(|err| panic!("{err}"));
    let authz: Arc<dyn Interceptor> = Arc::new(Authz::new(Arc::new(engine), "__"));
    let harness = Harness::with(CONFIG, vec![authz]);
    let starting = harness.start();
    let tool = json!({ "name": "send", "inputSchema": { "type": "object" } });
    let mail = harness.serve("mail", json!([tool])).await;
    if let Err(err) = starting.await {
        panic!("the gateway did not start: {err}");
    }
    (harness, mail)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_persons_accept_sends_once_and_a_cancel_withdraws_the_question() {
    let dir = tempfile::tempdir().unwrap_or_else(|err| panic!("{err}"));
    let (harness, mut mail) = up(dir.path()).await;
    let (session, mut inbox) = harness.initialized_session("alice").await;

    // Asked; while the question is pending, another call is not asked.
    let first = spawn_handle(&harness, &session, send(1));
    let question = next(&mut inbox).await;
    assert_eq!(question["method"], "elicitation/create", "{question}");
    let message = question["params"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("Why: Sending is confirmed by a person.")
            && message.contains("- to: \"a@b.example\""),
        "{message}"
    );
    let second = harness.handle(&session, send(2)).await;
    let refused = second.unwrap_or_default();
    // Refused at once (as a tool result, `[proxy] tool_refusals`).
    assert_eq!(refused["result"]["isError"], true, "{refused}");
    assert!(refused.to_string().contains("not permitted"), "{refused}");

    // The client cancels its call: the question is withdrawn.
    let cancel = protocol::notification("notifications/cancelled", json!({ "requestId": 1 }));
    harness.handle(&session, cancel).await;
    let reply = within("the cancelled call's end", first).await;
    assert!(reply.is_ok());

    // Asked again, and accepted: the call reaches its server, once.
    let third = spawn_handle(&harness, &session, send(3));
    let question = next(&mut inbox).await;
    let answer =
        json!({ "jsonrpc": "2.0", "id": question["id"], "result": { "action": "accept" } });
    harness.handle(&session, answer).await;
    let call = within("the call at its server", mail.next_received()).await;
    assert_eq!(call["params"]["name"], "send", "{call}");
    mail.reply(
        &call,
        json!({ "content": [{ "type": "text", "text": "sent" }] }),
    )
    .await;
    // It reached the server once: nothing else came.
    assert!(mail.try_received().is_none());
    let reply = within("the accepted call's reply", third).await;
    let reply = reply
        .unwrap_or_else(|err| panic!("{err}"))
        .unwrap_or_default();
    assert_eq!(reply["result"]["content"][0]["text"], "sent", "{reply}");

    let answers: Vec<(String, String)> = harness
        .exchanges()
        .await
        .iter()
        .filter(|r| r.method == "tools/call")
        .map(|r| {
            let detail = r.detail.clone().unwrap_or_default();
            (
                r.decision.clone(),
                detail["ask"]["answer"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect();
    let expected = [
        ("deny", "unavailable"),
        ("deny", "withdrawn"),
        ("allow", "accept"),
    ];
    for (decision, answer) in expected {
        assert!(
            answers.iter().any(|(d, a)| d == decision && a == answer),
            "{decision}/{answer} in {answers:?}"
        );
    }
}
