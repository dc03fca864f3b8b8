//! A server's question and the client's answer: a question whose answer
//! could not be decided is not asked; an answer that gives the server
//! something is decided as the request it was asked during, a sink, with
//! the flow as it stands; one that gives nothing goes.

use super::*;
use crate::chain::{
    CallOf, ClientIdentity, Context, Direction, Exchange, Interceptor, Phase, Transport, Verdict,
};
use crate::protocol::Method;

const TRIFECTA: &str = r#"
@id("all") permit (principal, action, resource);
@id("trifecta")
forbid (principal, action in [Action::"call_tool", Action::"get_prompt", Action::"read_resource"], resource)
when { resource.labels.contains("sink") && context.flow.untrusted && context.flow.private };
"#;

fn authz() -> (tempfile::TempDir, crate::interceptors::authz::Authz) {
    let dir = folder(TRIFECTA);
    let authz = crate::interceptors::authz::Authz::new(Arc::new(engine(dir.path())), "__");
    (dir, authz)
}

/// A server `s`'s question (`method`), asked during `during` (a method of
/// the client's, on `s`'s `t`), at `phase` with `message`.
fn asked(method: &str, during: Option<Method>, phase: Phase, message: Value) -> Exchange {
    let mut context = Context::new(
        "session".into(),
        ClientIdentity::new("c", &[]),
        Transport::Http,
        method,
    );
    context.server = Some(Arc::from("s"));
    context.asked_during = during.map(|method| {
        Arc::new(CallOf {
            method,
            server: Arc::from("s"),
            target: "t".into(),
            definition: None,
            script: None,
        })
    });
    context.flow = Some(Arc::new(Flow::of_names([
        (Label::Untrusted, "sampling:s"),
        (Label::Private, "git__log"),
    ])));
    Exchange::new(message, Direction::ServerToClient, phase, context)
}

fn question(method: &str, during: Option<Method>) -> Exchange {
    let message = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": {}});
    asked(method, during, Phase::Request, message)
}

fn answer(method: &str, during: Option<Method>, result: Value) -> Exchange {
    let message = json!({"jsonrpc": "2.0", "id": 1, "result": result});
    asked(method, during, Phase::Response, message)
}

fn denied(verdict: Verdict) -> String {
    match verdict {
        Verdict::Deny(denial) => denial.reason,
        other => panic!("not denied: {other:?}"),
    }
}

#[test]
fn a_question_whose_answer_could_not_be_decided_is_not_asked() {
    let (_dir, authz) = authz();
    let sampling = "sampling/createMessage";
    for during in [Method::ToolsCall, Method::PromptsGet, Method::ResourcesRead] {
        let mut exchange = question(sampling, Some(during.clone()));
        assert_eq!(authz.see(&mut exchange), Verdict::Continue, "{during:?}");
    }
    for during in [None, Some(Method::CompletionComplete)] {
        let reason = denied(authz.see(&mut question(sampling, during)));
        assert!(reason.contains("is not asked"), "{reason}");
    }
    // Roots give the server nothing of the model's or the person's.
    let mut roots = question("roots/list", None);
    assert_eq!(authz.see(&mut roots), Verdict::Continue);
}

#[test]
fn an_answer_that_gives_something_is_decided_as_a_sink_and_one_that_gives_nothing_goes() {
    let (_dir, authz) = authz();
    let sampled = json!({"role": "assistant", "content": {"type": "text", "text": "SECRET"}});
    // A prompt's get or a resource's read is labelled no sink of its own:
    // the answer makes it one.
    for during in [Method::ToolsCall, Method::PromptsGet, Method::ResourcesRead] {
        let mut exchange = answer(
            "sampling/createMessage",
            Some(during.clone()),
            sampled.clone(),
        );
        let reason = denied(authz.see(&mut exchange));
        assert!(
            reason.contains("the answer is not passed on"),
            "{during:?}: {reason}"
        );
        let noted = exchange
            .annotations
            .iter()
            .find(|a| a.key == "answer")
            .map(|a| a.value.clone())
            .unwrap_or_default();
        assert!(noted.contains("\"trifecta\""), "{noted}");
    }
    // Nothing given: a decline, a cancel, an error.
    for result in [json!({"action": "decline"}), json!({"action": "cancel"})] {
        let mut exchange = answer("elicitation/create", Some(Method::ToolsCall), result);
        assert_eq!(authz.see(&mut exchange), Verdict::Continue);
    }
    let mut error = asked(
        "elicitation/create",
        Some(Method::ToolsCall),
        Phase::Response,
        json!({"jsonrpc": "2.0", "id": 1, "error": {"code": -1, "message": "no"}}),
    );
    assert_eq!(authz.see(&mut error), Verdict::Continue);
    let quiet = json!({"action": "cancel", "_meta": {"k": 1}});
    let mut exchange = answer("elicitation/create", Some(Method::ToolsCall), quiet);
    assert_eq!(authz.see(&mut exchange), Verdict::Continue);
    // A decline that carries anything more is decided.
    for hostile in [
        json!({"action": "decline", "content": {"name": "SECRET"}}),
        json!({"action": "decline", "data": "SECRET"}),
        json!("SECRET"),
    ] {
        let mut exchange = answer("elicitation/create", Some(Method::ToolsCall), hostile);
        denied(authz.see(&mut exchange));
    }
    // An answer to a question of no request in flight does not go.
    let mut orphan = answer("sampling/createMessage", None, sampled);
    let reason = denied(authz.see(&mut orphan));
    assert!(reason.contains("not in flight"), "{reason}");
}

#[test]
fn a_tasks_answers_are_decided_as_answers_unless_they_only_decline() {
    let dir = folder(
        r#"@id("all") permit (principal, action, resource);
@id("no-answers") forbid (principal, action, resource) when { context has answer };"#,
    );
    let authz = crate::interceptors::authz::Authz::new(Arc::new(engine(dir.path())), "__");
    let update = |responses: Value| {
        let mut context = Context::new(
            "session".into(),
            ClientIdentity::new("c", &[]),
            Transport::Http,
            "tasks/update",
        );
        context.server = Some(Arc::from("s"));
        context.target = Some("t".into());
        let message = json!({"jsonrpc": "2.0", "id": 1, "method": "tasks/update",
            "params": {"taskId": "x", "inputResponses": responses}});
        Exchange::new(message, Direction::ClientToServer, Phase::Request, context)
    };
    let mut declined = update(json!({"name": {"action": "decline"}}));
    assert_eq!(authz.see(&mut declined), Verdict::Continue);
    let mut accepted = update(
        json!({"name": {"action": "accept", "content": {"name": "Ada"}},
        "other": {"action": "cancel"}}),
    );
    denied(authz.see(&mut accepted));
}
