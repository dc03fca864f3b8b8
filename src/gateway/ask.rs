//! Asking the person instead of refusing: a refusal every deciding policy
//! of which is a forbid with `@ask` (and that a permit would otherwise
//! allow) is put to the person behind the agent (an `elicitation/create`
//! to the client: why it was stopped, then what is about to happen), and
//! the call goes on only on an explicit accept, decided again from authz
//! on, as the same refusal of the same policy set let through this once.
//! A 2026-07-28 client, which has no session, is asked in its call's
//! next round (`input_required`), as a server's question would be. A
//! client that cannot be asked (no elicitation, a 2026-07-28 request that
//! takes no rounds, a code-mode script's call, the CLI, a question already
//! pending) gets the refusal. The answer is recorded.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

use crate::chain::{Annotation, Exchange, Refusal, Transport};
use crate::protocol::{self, IdKey, Method};

use super::{Gateway, Session};

/// The interceptor whose refusals may be asked about.
const AUTHZ: &str = "authz";

/// Bytes of each argument's JSON shown to the person (redacted, then cut;
/// its whole size said).
const SHOWN_VALUE: usize = 240;

/// Arguments a call may have and still be asked about: each is shown.
const SHOWN_KEYS: usize = 24;

/// The id the proxy's own question carries in a 2026-07-28 client's round
/// (a server's carry the server's): it never reaches a server.
const ROUND_ID: &str = "portcullis-ask";

/// What the person answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Accept,
    Decline,
    Cancel,
    /// No answer in time, an error, an answer that is none of the three,
    /// or the session ended.
    Unanswered,
    /// The client cancelled its call meanwhile.
    Withdrawn,
    /// The client could not be asked.
    Unavailable,
}

impl Answer {
    fn name(self) -> &'static str {
        match self {
            Self::Accept => "accept",
            Self::Decline => "decline",
            Self::Cancel => "cancel",
            Self::Unanswered => "unanswered",
            Self::Withdrawn => "withdrawn",
            Self::Unavailable => "unavailable",
        }
    }
}

impl Gateway {
    /// Step 4 of `handle_request`, for a request the chain refused: a
    /// refusal a policy lets the person override is put to them; accepted,
    /// the chain decides the request again from authz on, with the refusal
    /// let through (its `Ok`); anything else, the refusal stands.
    pub(super) async fn ask_instead(
        self: &Arc<Self>,
        session: &Arc<Session>,
        exchange: &mut Exchange,
        refusal: Refusal,
    ) -> Result<(), Refusal> {
        if &*refusal.interceptor != AUTHZ {
            return Err(refusal);
        }
        let note = |key: &str| {
            exchange
                .annotations
                .iter()
                .find(|a| &*a.interceptor == AUTHZ && a.key == key)
                .map(|a| a.value.clone())
        };
        let approval: Option<Vec<String>> = note("ask_policies")
            .and_then(|listed| serde_json::from_str(&listed).ok())
            .filter(|listed: &Vec<String>| listed.len() > 1);
        let (Some(why), Some(approval)) = (note("ask"), approval) else {
            return Err(refusal);
        };
        let answer = match self.asking(exchange, &why) {
            Some(question) if may_ask(session, exchange) => {
                self.ask_person(session, exchange, question).await
            }
            _ => Answer::Unavailable,
        };
        tracing::info!(
            session = %session.id,
            client = %session.client.name,
            policies = %approval.get(1..).unwrap_or_default().join(","),
            answer = answer.name(),
            "a refusal the person may override was put to them"
        );
        exchange.annotations.push(Annotation {
            interceptor: Arc::from("ask"),
            key: "answer".into(),
            value: answer.name().into(),
        });
        if answer != Answer::Accept {
            return Err(refusal);
        }
        // Decided again from authz on: its notes are the second run's, and
        // the flow is the client's as it stands now (it may have grown
        // while the person read the question).
        exchange
            .annotations
            .retain(|a| &*a.interceptor != AUTHZ || matches!(&*a.key, "shadow" | "decided"));
        exchange.context.flow = self.flows.of(session);
        exchange.context.approved = Some(Arc::from(approval));
        self.chain.decide_again(exchange, AUTHZ).await
    }

    /// Puts `question` to the person, on the call's stream (or, where the
    /// client reads none, its session's), and waits at most `[proxy]
    /// ask_timeout` for their answer, the client's cancel of its call, or
    /// the session's end. One question at a time per session.
    async fn ask_person(&self, session: &Session, exchange: &Exchange, question: String) -> Answer {
        let Some(_asking) = Asking::take(&session.asking) else {
            return Answer::Unavailable;
        };
        // The client cancels its call as any call: by its id.
        let withdrawn = CancellationToken::new();
        let key = exchange
            .context
            .request_id
            .as_ref()
            .and_then(IdKey::from_value);
        let Some(_registered) = session.register_call(key, withdrawn.clone()) else {
            return Answer::Unavailable;
        };
        let params = json!({
            "message": question,
            "requestedSchema": { "type": "object", "properties": {} },
        });
        let timeout = self.config.proxy.ask_timeout;
        // A 2026-07-28 client is asked in its call's next round
        // (`input_required`); its retry's answer comes back here.
        let answer = if session.revision.in_rounds() {
            let id = Value::from(ROUND_ID);
            let request = protocol::request(id.clone(), Method::ElicitationCreate.as_str(), params);
            tokio::select! {
                answer = self.rounds.ask_in_round(session, &id, &request, timeout) => answer,
                () = withdrawn.cancelled() => return Answer::Withdrawn,
            }
        } else {
            let (client_id, reply) = session.expect_client_answer();
            let _pending = Pending { session, client_id };
            let request = protocol::request(
                Value::from(client_id),
                Method::ElicitationCreate.as_str(),
                params,
            );
            if !session.deliver(request, exchange.context.request_id.as_ref()) {
                return Answer::Unavailable;
            }
            let answered = tokio::select! {
                answered = tokio::time::timeout(timeout, reply) => answered,
                () = withdrawn.cancelled() => return Answer::Withdrawn,
                () = session.closed.cancelled() => return Answer::Unanswered,
            };
            let Ok(Ok(answer)) = answered else {
                return Answer::Unanswered;
            };
            answer
        };
        match answer.pointer("/result/action").and_then(Value::as_str) {
            Some("accept") => Answer::Accept,
            Some("decline") => Answer::Decline,
            Some("cancel") => Answer::Cancel,
            _ => Answer::Unanswered,
        }
    }

    /// What the person reads: why the call was stopped (the policies'
    /// words, first, so that nothing the agent wrote comes before them),
    /// then the call about to be made, every argument shown (redacted, cut,
    /// its size said) on a line of its own. `None`: a call with more
    /// arguments than can be shown is not asked about.
    fn asking(&self, exchange: &Exchange, why: &str) -> Option<String> {
        let context = &exchange.context;
        let shown = |text: &str| protocol::shown(&self.records.scrubbed(text)).into_owned();
        let server = shown(context.server.as_deref().unwrap_or_default());
        let target = shown(context.target.as_deref().unwrap_or_default());
        let what = match context.method {
            Method::ToolsCall => format!("call the tool `{target}` of the server `{server}`"),
            Method::PromptsGet => format!("get the prompt `{target}` of `{server}`"),
            Method::ResourcesRead => format!("read `{target}` from `{server}`"),
            _ => format!("send `{}` to `{server}`", context.method),
        };
        let empty = Map::new();
        let arguments = exchange
            .message
            .pointer("/params/arguments")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        if arguments.len() > SHOWN_KEYS {
            return None;
        }
        let mut lines = String::new();
        for (name, value) in arguments {
            let json = self.records.scrubbed(&value.to_string());
            let cut = protocol::cut(&json, SHOWN_VALUE);
            let more = if cut.len() < json.len() {
                format!("… ({} bytes in all)", json.len())
            } else {
                String::new()
            };
            let line = format!("\n- {}: {}{more}", shown(name), protocol::shown_json(cut));
            lines.push_str(&line);
        }
        Some(format!(
            "Portcullis stopped a call of your agent's and asks you. Why: {why}\n\
             The agent wants to {what}{}{lines}\n\
             Accept to let this one call through; decline to refuse it.",
            if lines.is_empty() { "." } else { ", with:" }
        ))
    }
}

/// Whether the person behind `session`'s client can be asked: a session
/// of its own, or a 2026-07-28 request that takes rounds, whose client
/// declared elicitation (in form), a call of the client's own (not a
/// script's, not the CLI's).
fn may_ask(session: &Session, exchange: &Exchange) -> bool {
    let rounds = session.revision.in_rounds() && session.in_rounds.load(Ordering::Relaxed);
    (session.revision.lasting() || rounds)
        && session.transport != Transport::Cli
        && exchange.context.script.is_none()
        && session.client_capabilities(|declared| {
            declared.get("elicitation").is_some_and(|elicitation| {
                // `{}` (before 2025-11-25) is form; else form must be there.
                elicitation.as_object().is_some_and(|modes| {
                    modes.is_empty() || modes.get("form").is_some_and(|form| !form.is_null())
                })
            })
        })
}

/// The session's one question in the asking, given back when dropped.
struct Asking<'a>(&'a AtomicBool);

impl<'a> Asking<'a> {
    fn take(flag: &'a AtomicBool) -> Option<Self> {
        flag.compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| Self(flag))
    }
}

impl Drop for Asking<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// The question's answer, forgotten if it never came.
struct Pending<'a> {
    session: &'a Session,
    client_id: u64,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.session.forget_client_request(self.client_id);
    }
}
