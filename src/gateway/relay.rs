//! The relay stage: a routed request that the chain passed sent on to its
//! server (renamed to the server's own name, within the server's limit on
//! requests in flight, traced as a child span) in one call of its
//! `Upstream`, and the server's answer shaped for the client on the way
//! back. Step 7 of the pipeline (`run.rs`).

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::chain::Exchange;
use crate::protocol::{self, At, IdKey, Method};
use crate::traces::{Span, SpanId, SpanKind};
use crate::upstream::{Admitted, Call, Origin, Round, Upstream};

use super::failure::Failure;
use super::route::Rename;
use super::{Gateway, Session};

/// A server's reply, with whether the server was spoken to in 2026-07-28
/// (the reply is shaped for the client by both).
type Answer = (Value, bool);

/// What became of a request sent on to its server.
pub(super) enum Relayed {
    /// The server's answer (an error response included), or why there is
    /// none, and how long it took.
    Answered(Result<Value, Failure>, Duration),
    /// Refused before it was sent (the server's limit on requests in
    /// flight).
    Refused(crate::chain::Refusal),
    /// The client cancelled it while it was at the server.
    Cancelled(Duration),
}

/// Puts the W3C `traceparent` of the proxy's upstream span into a request's
/// `params._meta`, replacing the caller's (which is its parent). A request
/// whose `params` is not an object is left as it is.
pub(super) fn propagate(outgoing: &mut Value, traceparent: String) {
    let Some(params) = outgoing.get_mut("params").and_then(Value::as_object_mut) else {
        return;
    };
    let meta = params
        .entry("_meta")
        .or_insert_with(|| Value::Object(serde_json::Map::new()));
    if let Some(meta) = meta.as_object_mut() {
        meta.insert("traceparent".into(), Value::from(traceparent));
    }
}

impl Gateway {
    /// A server's answer as the client is to get it: a task passed on
    /// under the proxy's id; checked (a 2026-07-28 client's, a 2026-07-28
    /// server's); without what only 2026-07-28 says, to a handshake client.
    /// `from_stateless`: the server's revision, as its upstream answered.
    async fn shaped(
        self: &Arc<Self>,
        session: &Arc<Session>,
        server: usize,
        target: Option<&str>,
        asked: super::tasks::Asked,
        (reply, from_stateless): Answer,
    ) -> Result<Value, Failure> {
        if session.revision.takes_tasks()
            && let Some(reply) = self
                .client_tasks
                .task_reply(
                    self,
                    session,
                    (server, from_stateless),
                    target,
                    asked,
                    &reply,
                )
                .await
        {
            return reply;
        }
        // A task no one asked for is refused below: not left running.
        if from_stateless {
            self.servers
                .cancel_task_of(server, &reply, &session.client.name);
        }
        let reply = if session.revision.framed_results() || from_stateless {
            super::modern::checked_result(reply)?
        } else {
            reply
        };
        // A handshake client is not told what only 2026-07-28 says.
        Ok(if from_stateless && !session.revision.framed_results() {
            super::modern::handshake_result(reply)
        } else {
            reply
        })
    }

    /// Sends a decided request to its server (renamed to the server's own
    /// name, within the server's limit on requests in flight, traced as a
    /// child span), waits for its answer, and shapes it for the client
    /// ([`Gateway::shaped`]).
    pub(super) async fn relay(
        self: &Arc<Self>,
        session: &Arc<Session>,
        server: usize,
        rename: Option<Rename>,
        id: &Value,
        exchange: &mut Exchange,
    ) -> Relayed {
        // What a task's reply needs of the request, taken before it goes.
        // A code-mode script's call is never a task: it ends with the
        // script.
        let scripted = exchange.context.script.is_some();
        let asked = if scripted {
            super::tasks::Asked::Nothing
        } else {
            super::tasks::Asked::of(session, &exchange.context.method, &exchange.message)
        };
        let mut outgoing = std::mem::take(&mut exchange.message);
        if session.revision.carries_envelope() {
            super::modern::strip_envelope(&mut outgoing);
        }
        let renamed = match rename {
            Some(Rename::Name(name)) => outgoing.put(&["params", "name"], Value::from(name)),
            Some(Rename::RefName(name)) => {
                outgoing.put(&["params", "ref", "name"], Value::from(name))
            }
            Some(Rename::Task(task)) => {
                outgoing.put(&["params", "taskId"], Value::from(task.server_task))
            }
            None => true,
        };
        // A plugin may have reshaped what routing read: the client's name never goes out.
        if !renamed {
            let failure = Failure::InvalidParams("`params` is no longer an object".to_owned());
            return Relayed::Answered(Err(failure), Duration::ZERO);
        }
        // A place among the server's requests in flight, if it limits them
        // (the wait is bounded by its call timeout).
        let place = match self
            .servers
            .slot(server)
            .and_then(|slot| slot.in_flight.as_ref())
        {
            None => None,
            Some(limit) => {
                // A failing server's calls are refused at once, not after
                // a wait for a place (its own instance's breaker: a
                // client's instance is found, or made, once it has one).
                let own = self.servers.upstream_at(server);
                if let Some(upstream) = own.filter(|_| !self.servers.per_client(server))
                    && let Err(refused) = upstream.admit()
                {
                    return Relayed::Answered(Err(refused.into()), Duration::ZERO);
                }
                let wait = own.map_or(self.config.proxy.call_timeout, |u| u.config().call_timeout);
                // A client that goes away while its call waits here (a
                // 2026-07-28 client hanging up) gives its place up.
                let name = self.servers.name_or_none(server);
                let entered = tokio::select! {
                    entered = limit.enter(&name, wait, self.shared_places.as_ref()) => entered,
                    () = session.closed.cancelled() => {
                        return Relayed::Cancelled(Duration::ZERO);
                    }
                };
                match entered {
                    Ok(permit) => Some(permit),
                    Err(refusal) => {
                        exchange.message = outgoing;
                        return Relayed::Refused(refusal);
                    }
                }
            }
        };
        // The server's work is a child of the upstream span.
        let upstream_span = exchange.trace.as_deref().map(|trace| {
            let span = SpanId::random();
            propagate(&mut outgoing, trace.traceparent(span));
            span
        });
        let sent = std::time::Instant::now();
        let call = crate::chain::CallOf::of(&exchange.context).map(Arc::new);
        let forwarded = self
            .forward(session, server, id, (outgoing, !scripted), call)
            .await;
        let ended = std::time::Instant::now();
        if let (Some(trace), Some(span)) = (exchange.trace.as_deref_mut(), upstream_span) {
            let name = format!("upstream {}", self.servers.name_or_none(server));
            let mut call = Span::with_id(span, name, SpanKind::Client, sent, ended);
            call.attributes.push((
                "portcullis.server",
                self.servers.name_or_none(server).into(),
            ));
            if let Err(failure) = &forwarded {
                call.error = Some(failure.to_string());
            }
            trace.push(call);
        }
        // The server's place is given back once it has answered: shaping
        // (a task's questions decided and recorded) holds none of it.
        drop(place);
        let answered = match forwarded {
            Err(Failure::Cancelled) => return Relayed::Cancelled(ended - sent),
            Err(failure) => Err(failure),
            // Shaped for this client before the response chain judges
            // what the client will get.
            Ok(answer) => {
                let target = exchange.context.target.as_deref();
                self.shaped(session, server, target, asked, answer).await
            }
        };
        Relayed::Answered(answered, ended - sent)
    }

    /// Sends a request to a server and returns its reply with the client's
    /// id restored ([`Failure::Cancelled`] when the client cancelled it),
    /// and the revision the server was spoken to in. `tasks`: whether the
    /// server may answer with a task, where the client takes them; `call`:
    /// the tool it calls, what answers to the server's questions go to.
    pub(super) async fn forward(
        self: &Arc<Self>,
        session: &Arc<Session>,
        server: usize,
        client_id: &Value,
        (outgoing, tasks): (Value, bool),
        call: Option<Arc<crate::chain::CallOf>>,
    ) -> Result<Answer, Failure> {
        // The client's instance, and the call let through by its breaker
        // (refused at once while the server is failing). Dropped unsettled
        // on the way (cancelled, a duplicate id): the call ended without
        // telling whether the server answers.
        let (upstream, admitted) = admitted(&self.servers, session, server)?;
        let key = IdKey::from_value(client_id);
        let cancel = CancellationToken::new();
        if let Some(key) = &key
            && !session.begin_call(key.clone(), cancel.clone(), call)
        {
            return Err(Failure::DuplicateId);
        }
        let end_call = || {
            if let Some(key) = &key {
                session.end_call(key);
            }
        };
        // Registered after the session closed (its calls were cancelled
        // before this one was registered): cancelled too.
        if session.closed.is_cancelled() {
            end_call();
            return Err(Failure::Cancelled);
        }
        // A stopped (lazy or idle) server starts here: the cold start.
        let started = tokio::select! {
            started = upstream.ensure_running(self.config.proxy.startup_timeout) => started,
            () = cancel.cancelled() => {
                end_call();
                return Err(Failure::Cancelled);
            }
        };
        if let Err(err) = started {
            end_call();
            upstream.settle(admitted, Some(&err));
            return Err(err.into());
        }
        let origin = Origin {
            session: session.key,
            request_id: client_id.clone(),
        };
        // A subscription the server's revision keeps on the proxy's listen
        // stream to it: made there, answered here.
        let method = Method::named_in(&outgoing);
        let subscribe = method == Method::ResourcesSubscribe;
        if upstream.subscribes_on_listen() && (subscribe || method == Method::ResourcesUnsubscribe)
        {
            let uri = protocol::param_str(&outgoing, "uri").unwrap_or_default();
            let changed = tokio::select! {
                changed = upstream.listen_change(uri, subscribe) => Some(changed),
                () = cancel.cancelled() => None,
            };
            end_call();
            // Answered on the proxy's listen stream, or by the proxy alone
            // (an unsubscribe): not a call that tells whether the server
            // answers.
            drop(admitted);
            changed.ok_or(Failure::Cancelled)??;
            let reply = protocol::result(client_id.clone(), json!({}));
            return Ok((reply, upstream.speaks_stateless()));
        }
        let (rounds, told) = round_of(session, &upstream, (&method, tasks));
        let kept = rounds.then(|| outgoing.clone());
        let call = Call {
            message: outgoing,
            origin: Some(origin.clone()),
            // Its log messages, as the client wants them.
            log_level: session.log_level(),
            round: told.clone().map(|capabilities| Round {
                capabilities,
                answers: None,
            }),
        };
        let deadline = tokio::time::Instant::now() + upstream.config().call_timeout;
        let reply = self
            .send_call(session, server, &upstream, call, client_id, &cancel)
            .await;
        // The server answered, or failed (the rounds that may follow are
        // its questions, answered by the client).
        match &reply {
            Ok(_) => upstream.settle(admitted, None),
            Err(Failure::Upstream(error)) => upstream.settle(admitted, Some(error)),
            Err(_) => drop(admitted),
        }
        let reply = match (reply, kept) {
            (Ok(reply), Some(sent)) => {
                let call = super::input_required::RoundCall {
                    session,
                    server,
                    upstream: &upstream,
                    sent,
                    origin,
                    capabilities: told.unwrap_or_default(),
                    cancel: &cancel,
                    deadline,
                };
                self.through_rounds(call, reply, client_id).await
            }
            (reply, _) => reply,
        };
        end_call();
        let mut reply = reply?;
        reply.put(&["id"], client_id.clone());
        // Asked once the server has answered: a `protocol = "auto"` server
        // knows its revision once it has started.
        Ok((reply, upstream.speaks_stateless()))
    }

    /// Sends `call` (of `session`'s request `client_id`, to server
    /// `server`) in one call of its upstream and waits for the server's
    /// reply (its id the server's); what the server sends during the call
    /// goes to this session alone, on the call's stream.
    pub(super) async fn send_call(
        &self,
        session: &Arc<Session>,
        server: usize,
        upstream: &Upstream,
        call: Call,
        client_id: &Value,
        cancel: &CancellationToken,
    ) -> Result<Value, Failure> {
        let follow = |message: Value| {
            self.notify(
                session,
                Some(server),
                message,
                Some(client_id),
                Some(client_id.clone()),
            );
        };
        tokio::select! {
            result = upstream.call(call, follow) => Ok(result?),
            () = cancel.cancelled() => Err(Failure::Cancelled),
        }
    }
}

/// What a call of `method` to `upstream` tells the server of its round:
/// whether the proxy carries the server's questions (a server that asks in
/// rounds, `input_required`), and the client capabilities its envelope
/// declares, where a round or a task can use them (`None`: it declares
/// none).
fn round_of(
    session: &Session,
    upstream: &Upstream,
    (method, takes_tasks): (&Method, bool),
) -> (bool, Option<serde_json::Map<String, Value>>) {
    let rounds = upstream.asks_in_rounds() && method.takes_rounds();
    // Only where a round can carry a question (elsewhere it has none).
    let (mut capabilities, declares_tasks) = session.client_capabilities(|declared| {
        let told = if rounds {
            super::input_required::told_capabilities(declared)
        } else {
            serde_json::Map::new()
        };
        (told, super::task_table::declared(declared))
    });
    // Tasks, where the client takes them (on a call, and on the task's
    // own requests, which a server refuses without it).
    let tasks = takes_tasks
        && upstream.takes_tasks()
        && session.revision.takes_tasks()
        && (*method == Method::ToolsCall || method.is_task())
        && declares_tasks;
    if tasks {
        capabilities.insert(
            "extensions".into(),
            json!({ super::task_table::EXTENSION: {} }),
        );
    }
    (rounds, (rounds || tasks).then_some(capabilities))
}

/// `session`'s instance of server `server`, and the call let through by
/// its breaker (refused at once while the server is failing).
fn admitted(
    servers: &super::Servers,
    session: &Session,
    server: usize,
) -> Result<(Upstream, Admitted), Failure> {
    servers.may_act_as_user(server, session)?;
    let upstream = servers
        .upstream_for(server, &session.client.name)
        .ok_or_else(|| servers.no_instance(server))?;
    let admitted = upstream.admit()?;
    Ok((upstream, admitted))
}
