//! A client's answer to its server's question (sampling, elicitation),
//! decided again before it goes: what the client gives carries the flow as
//! it stands now, and goes to the target of the request it was asked
//! during. It is decided as that request would be now (a tool's
//! `call_tool`, a prompt's `get_prompt`, a resource's `read_resource`), its
//! arguments being what the answer gives (the model's message, the form's
//! content), `context.answer` the question's method.

use std::time::SystemTime;

use serde_json::{Map, Value, json};

use super::request::{Action, Query, Target};
use super::targets::Routed;
use super::{Authz, code};
use crate::chain::{Denial, Exchange, Verdict};
use crate::config::Label;
use crate::protocol::{At as _, Method};

impl Authz {
    /// Decides `exchange`, a client's answer on its way to the server that
    /// asked: one that gives nothing (a declined or cancelled form, an
    /// error, a list of roots) goes; one that gives something goes only if
    /// the request it was asked during may be made now. Without that
    /// request (ended, or another kind) it does not go.
    pub(super) fn decide_answer(&self, exchange: &mut Exchange) -> Verdict {
        let Some(given) = given(exchange) else {
            return Verdict::Continue;
        };
        let Some((action, target)) = self.answered(exchange) else {
            return Verdict::Deny(Denial::new(
                code::DENIED,
                format!(
                    "the answer to `{}` is not passed on: the request it was asked during (a tool's call, a prompt's get, a resource's read) is not in flight",
                    exchange.context.method
                ),
            ));
        };
        let action = self.action_on(action, &target);
        let store = self.engine.current();
        let script = exchange
            .context
            .asked_during
            .as_ref()
            .and_then(|call| call.script.clone());
        let query = Query {
            answer: Some(exchange.context.method.as_str()),
            script: script.as_deref(),
            ..Self::query(exchange, action, &target, Some(&given), SystemTime::now())
        };
        let decision = store.decide(&query);
        let verdict = if decision.allowed { "allow" } else { "deny" };
        let shadow = self
            .shadow
            .as_ref()
            .map(|shadow| shadow.decide(&query, verdict));
        let id = self.decision_id();
        // A URI may carry a credential: scrubbed, as refusals are.
        let shown = self.scrubbed(target.entity().1);
        // The question's own decision stays the record's; this one is kept
        // beside it.
        let noted = json!({
            "action": action.name(),
            "target": shown,
            "decision": verdict,
            "policies": decision.policies,
            "policy_set": &*decision.policy_set,
            "decision_id": id,
            "shadow": shadow,
        });
        self.annotate(exchange, "answer", noted.to_string());
        if decision.allowed {
            return Verdict::Continue;
        }
        self.note_flow(exchange, &decision, &target);
        tracing::info!(
            client = %exchange.context.client.name,
            action = action.name(),
            resource = shown.split('?').next().unwrap_or_default(),
            decision_id = %id,
            policies = %decision.policies.join(","),
            "an answer to a server's question denied by policy"
        );
        Verdict::Deny(
            Denial::new(
                code::DENIED,
                format!(
                    "the answer is not passed on: {} on `{shown}`, the request it was asked during, is not permitted now (decision {id})",
                    action.name()
                ),
            )
            .with("decision_id", id)
            .with("policy_set", decision.policy_set.to_string()),
        )
    }

    /// Whether `exchange`, a server's question to a client whose answer
    /// gives the server something (sampling, elicitation), has no request
    /// its answer could be decided as.
    pub(super) fn unanswerable(&self, exchange: &Exchange) -> bool {
        matches!(
            exchange.context.method,
            Method::SamplingCreateMessage | Method::ElicitationCreate
        ) && self.answered(exchange).is_none()
    }

    /// What the answer in `exchange` goes to: the request it was asked
    /// during, as that request was decided (a tool's call, a prompt's get,
    /// a resource's read), its target a sink whatever its labels (the
    /// answer goes to the server, which may have asked during any of its
    /// requests); `None` for another request, or none known.
    fn answered(&self, exchange: &Exchange) -> Option<(Action, Target)> {
        let call = exchange.context.asked_during.as_deref()?;
        let routed = Routed {
            server: &call.server,
            target: &call.target,
            definition: call.definition.as_ref(),
            separator: &self.separator,
            flow: &self.flow,
        };
        let (action, target) = match call.method {
            Method::ToolsCall | Method::TasksGet | Method::TasksUpdate => {
                (Action::CallTool, routed.tool())
            }
            Method::PromptsGet => (Action::GetPrompt, routed.prompt()),
            Method::ResourcesRead => (Action::ReadResource, routed.resource()),
            _ => return None,
        };
        Some((action, target.with_label(Label::Sink)))
    }
}

/// What a client's answer gives its server, as arguments: a sampling
/// result (the model's message), an accepted form's content (anything else
/// a form's answer carries: the whole result); `None` for an answer that
/// gives nothing (an error, a form declined or cancelled and nothing more).
fn given(exchange: &Exchange) -> Option<Map<String, Value>> {
    let result = exchange.message.get("result")?;
    let whole = || result.as_object().cloned().unwrap_or_default();
    match exchange.context.method {
        Method::SamplingCreateMessage => Some(whole()),
        Method::ElicitationCreate if gives_nothing(result) => None,
        Method::ElicitationCreate => {
            let accepted = result.get("action").and_then(Value::as_str) == Some("accept");
            let content = exchange.message.at(&["result", "content"]);
            match content.and_then(Value::as_object) {
                Some(content) if accepted => Some(content.clone()),
                _ => Some(whole()),
            }
        }
        _ => None,
    }
}

/// Whether an answer's result gives its server nothing: a form declined or
/// cancelled, with nothing but `action` (and `_meta`).
pub(super) fn gives_nothing(result: &Value) -> bool {
    let Some(fields) = result.as_object() else {
        return false;
    };
    matches!(
        fields.get("action").and_then(Value::as_str),
        Some("decline" | "cancel")
    ) && fields.keys().all(|key| key == "action" || key == "_meta")
}

/// Whether `exchange` is a task's answers (`tasks/update`) of which one at
/// least gives the server something (one that only declines or cancels
/// forms is decided as the task's other requests are).
pub(super) fn gives_answers(exchange: &Exchange) -> bool {
    exchange.context.method == Method::TasksUpdate
        && exchange
            .message
            .at(&["params", "inputResponses"])
            .and_then(Value::as_object)
            .is_none_or(|answers| answers.values().any(|answer| !gives_nothing(answer)))
}

/// What a request gives its target, as `context.arguments`: a call's or a
/// prompt's arguments; for a task's requests, those of the call that
/// created it, but for `tasks/update`, whose answers go to the server, its
/// `inputResponses`.
pub(super) fn arguments_of(
    exchange: &Exchange,
    action: Action,
) -> Option<&serde_json::Map<String, Value>> {
    let given = |key: &str| {
        exchange
            .message
            .at(&["params", key])
            .and_then(Value::as_object)
    };
    match action {
        Action::CallTool if gives_answers(exchange) => given("inputResponses"),
        Action::CallTool if exchange.context.method.is_task() => {
            exchange.context.call_arguments.as_deref()
        }
        Action::CallTool | Action::GetPrompt => given("arguments"),
        _ => None,
    }
}
