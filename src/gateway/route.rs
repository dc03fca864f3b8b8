//! A client's request routed (its server, target and definition), relayed to
//! its server, and its answer shaped for the client; the steps are run in
//! order by `run.rs`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::chain::{Exchange, Outcome};
use crate::protocol::{self, At, IdKey, Method};
use crate::traces::{Span, SpanId, SpanKind};
use crate::upstream::Origin;

use super::failure::Failure;
use super::{Catalog, Gateway, Session};

/// Where a client request goes.
pub(super) enum Route {
    /// Answered by the proxy itself.
    Local,
    /// A 2026-07-28 `subscriptions/listen`: runs until the client ends it.
    Listen,
    /// One of the proxy's own tools (`[discovery]`).
    Discovery(super::discovery::Tool),
    /// Sent to a server, with the request's name rewritten to the server's own.
    Server {
        server: usize,
        rename: Option<Rename>,
    },
}

pub(super) enum Rename {
    /// `params.name` (tools/call, prompts/get).
    Name(String),
    /// `params.ref.name` (completion/complete for a prompt).
    RefName(String),
    /// `params.taskId`: the server's own id of the task the request names
    /// (the task, as routing found it, decides the request too).
    Task(Box<super::task_table::Task>),
}

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

/// A reply and how the exchange ended.
pub(super) type Ended = (Option<Value>, Outcome);

/// An exchange that ended in `failure`: its error response and outcome.
pub(super) fn failed(id: &Value, failure: impl Into<Failure>) -> Ended {
    let failure = failure.into();
    (Some(failure.to_response(id.clone())), failure.outcome())
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

/// The id to answer a message with: its own if it has a usable one.
pub fn reply_id(message: &Value) -> Value {
    match message.get("id") {
        Some(id @ (Value::String(_) | Value::Number(_))) => id.clone(),
        _ => Value::Null,
    }
}

impl Gateway {
    /// A server's answer as the client is to get it: a task passed on
    /// under the proxy's id; checked (a 2026-07-28 client's, a 2026-07-28
    /// server's); without what only 2026-07-28 says, to a handshake client.
    async fn shaped(
        self: &Arc<Self>,
        session: &Arc<Session>,
        server: usize,
        target: Option<&str>,
        asked: super::tasks::Asked,
        reply: Value,
    ) -> Result<Value, Failure> {
        // Asked once the server has answered: a `protocol = "auto"` server
        // knows its revision once it has started.
        let from_stateless = self.servers.speaks_stateless(server, &session.client.name);
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

    /// Routes the exchange's request and tells the chain what routing found:
    /// the server, the target, the listed definition and the catalog.
    pub(super) fn route_exchange(
        &self,
        session: &Session,
        method: &Method,
        exchange: &mut Exchange,
    ) -> Result<Route, Failure> {
        let catalog = self.catalog();
        let (route, target) = self.route(&catalog, session, method, &exchange.message)?;
        let task = match &route {
            Route::Discovery(_) => {
                exchange.context.server = Some(Arc::from(crate::config::PROXY_SERVER));
                None
            }
            Route::Server { server, rename } => {
                exchange.context.server = self.servers.name_at(*server).cloned();
                match rename {
                    Some(Rename::Task(task)) => Some(task),
                    _ => None,
                }
            }
            _ => None,
        };
        let name = protocol::param_str(&exchange.message, "name");
        exchange.context.definition = match (method, task) {
            (Method::ToolsCall, _) => name.and_then(|name| catalog.tool_definition(name)),
            (Method::PromptsGet, _) => name.and_then(|name| catalog.prompt_definition(name)),
            // Decided as the call that created the task, against its tool
            // as listed now: a tool its server no longer lists (or not
            // yet, after a restart) is not there.
            (_, Some(task)) => {
                let definition = catalog.tool_definition(&task.listed);
                if definition.is_none() {
                    return Err(self.not_found("tool", &task.listed));
                }
                exchange.context.call_arguments = task.arguments.clone();
                definition
            }
            _ => None,
        };
        exchange.context.target = target;
        exchange.context.directory = Some(catalog);
        Ok(route)
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
        let asked = super::tasks::Asked::of(session, &exchange.context.method, &exchange.message);
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
                let wait = self
                    .servers
                    .upstream_at(server)
                    .map_or(self.config.proxy.call_timeout, |u| u.config().call_timeout);
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
        let forwarded = self.forward(session, server, id, outgoing).await;
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
            Ok(reply) => {
                let target = exchange.context.target.as_deref();
                self.shaped(session, server, target, asked, reply).await
            }
        };
        Relayed::Answered(answered, ended - sent)
    }

    /// Decides where a request goes, and its target (unprefixed tool or prompt
    /// name, or resource URI).
    pub(super) fn route(
        &self,
        catalog: &Catalog,
        session: &Session,
        method: &Method,
        message: &Value,
    ) -> Result<(Route, Option<String>), Failure> {
        let invalid = |reason: &str| Failure::InvalidParams(reason.to_owned());
        if !method.before_initialize() && !session.is_initialized() {
            return Err(Failure::NotInitialized);
        }
        if let Some(routed) = Self::revision_route(session, method) {
            return routed;
        }
        match method {
            Method::Initialize
            | Method::ServerDiscover
            | Method::Ping
            | Method::LoggingSetLevel => Ok((Route::Local, None)),
            _ if method.list().is_some() => Ok((Route::Local, None)),
            Method::ToolsCall | Method::PromptsGet => {
                self.named_route(catalog, session, method, message)
            }
            // An unknown `tasks/…` too: the tasks extension's refusal.
            _ if method.is_task() || method.as_str().starts_with("tasks/") => {
                self.task_route(session, message)
            }
            Method::ResourcesRead | Method::ResourcesSubscribe | Method::ResourcesUnsubscribe => {
                let uri = protocol::param_str(message, "uri")
                    .ok_or_else(|| invalid("`params.uri` must be a string"))?;
                if *method == Method::ResourcesSubscribe {
                    self.subscriptions.may_subscribe(session, uri)?;
                }
                match catalog
                    .resource_owner(uri)
                    .filter(|server| self.visible(session, *server))
                {
                    Some(server)
                        if *method == Method::ResourcesUnsubscribe
                            && !self.subscriptions.unsubscribes_at_server(
                                (session, uri, server),
                                &self.servers,
                                &self.sessions,
                            ) =>
                    {
                        Ok((Route::Local, Some(uri.to_owned())))
                    }
                    Some(server) => Ok((
                        Route::Server {
                            server,
                            rename: None,
                        },
                        Some(uri.to_owned()),
                    )),
                    None => Err(Failure::ResourceNotFound(uri.to_owned())),
                }
            }
            Method::CompletionComplete => {
                let reference = protocol::params(message)
                    .and_then(|p| p.get("ref"))
                    .ok_or_else(|| invalid("`params.ref` is required"))?;
                match reference.get("type").and_then(Value::as_str) {
                    Some("ref/prompt") => {
                        let name = reference
                            .get("name")
                            .and_then(Value::as_str)
                            .ok_or_else(|| invalid("`params.ref.name` must be a string"))?;
                        let (server, original) = catalog
                            .prompt(name)
                            .filter(|(server, _)| self.visible(session, *server))
                            .map(|(s, o)| (s, o.to_owned()))
                            .ok_or_else(|| self.not_found("prompt", name))?;
                        Ok((
                            Route::Server {
                                server,
                                rename: Some(Rename::RefName(original.clone())),
                            },
                            Some(original),
                        ))
                    }
                    Some("ref/resource") => {
                        let uri = reference
                            .get("uri")
                            .and_then(Value::as_str)
                            .ok_or_else(|| invalid("`params.ref.uri` must be a string"))?;
                        let server = catalog
                            .resource_owner(uri)
                            .filter(|server| self.visible(session, *server))
                            .ok_or_else(|| Failure::ResourceNotFound(uri.to_owned()))?;
                        Ok((
                            Route::Server {
                                server,
                                rename: None,
                            },
                            Some(uri.to_owned()),
                        ))
                    }
                    _ => Err(invalid(
                        "`params.ref.type` must be `ref/prompt` or `ref/resource`",
                    )),
                }
            }
            _ => Err(Failure::MethodNotFound(method.to_string())),
        }
    }

    /// Where a `tools/call` or `prompts/get` goes: the server that lists
    /// the name (one the session sees), or the proxy's own tool.
    fn named_route(
        &self,
        catalog: &Catalog,
        session: &Session,
        method: &Method,
        message: &Value,
    ) -> Result<(Route, Option<String>), Failure> {
        let name = protocol::param_str(message, "name")
            .ok_or_else(|| Failure::InvalidParams("`params.name` must be a string".into()))?;
        let (what, found) = if *method == Method::ToolsCall {
            ("tool", catalog.tool(name))
        } else {
            ("prompt", catalog.prompt(name))
        };
        let Some((server, original)) = found.filter(|(server, _)| self.visible(session, *server))
        else {
            return Err(self.not_found(what, name));
        };
        if self.discovery.as_ref().is_some_and(|d| d.proxy == server) {
            let tool = super::discovery::Tool::parse(original)
                .filter(|_| *method == Method::ToolsCall)
                .ok_or_else(|| self.not_found(what, name))?;
            return Ok((Route::Discovery(tool), Some(original.to_owned())));
        }
        Ok((
            Route::Server {
                server,
                rename: Some(Rename::Name(original.to_owned())),
            },
            Some(original.to_owned()),
        ))
    }

    /// What one revision has and the other has not: the handshake and
    /// what came with sessions are gone from 2026-07-28 (unknown methods
    /// there; a listen request still subscribes on the client's behalf),
    /// and `server/discover` and `subscriptions/listen` are 2026-07-28's
    /// alone. `None`: routed alike.
    fn revision_route(
        session: &Session,
        method: &Method,
    ) -> Option<Result<(Route, Option<String>), Failure>> {
        let unknown = || Some(Err(Failure::MethodNotFound(method.to_string())));
        if !session.revision.lasting() {
            let listening = *method == Method::ResourcesSubscribe
                && session.listen_asked.load(Ordering::Relaxed);
            if method.removed_in_modern() && !listening {
                return unknown();
            }
            if *method == Method::SubscriptionsListen {
                return Some(Ok((Route::Listen, None)));
            }
        } else if matches!(method, Method::ServerDiscover | Method::SubscriptionsListen) {
            return unknown();
        }
        None
    }

    /// Where a 2026-07-28 client's `tasks/*` request goes: to the server
    /// of the task it names, about the task's tool.
    fn task_route(
        &self,
        session: &Session,
        message: &Value,
    ) -> Result<(Route, Option<String>), Failure> {
        let method = protocol::method(message).unwrap_or_default();
        if !Method::parse(method).is_task() {
            return Err(Failure::MethodNotFound(
                protocol::cut(method, 64).to_owned(),
            ));
        }
        let task = self.task_of(session, message)?;
        let (server, tool) = (task.server, task.tool.clone());
        let rename = Some(Rename::Task(Box::new(task)));
        Ok((Route::Server { server, rename }, Some(tool)))
    }

    /// The task a 2026-07-28 client's `tasks/*` request names: one of its
    /// own, on a request that declares the extension.
    fn task_of(
        &self,
        session: &Session,
        message: &Value,
    ) -> Result<super::task_table::Task, Failure> {
        if !session.revision.takes_tasks() {
            let method = protocol::method(message).unwrap_or_default();
            return Err(Failure::MethodNotFound(method.to_owned()));
        }
        if !session.client_capabilities(super::task_table::declared) {
            return Err(Failure::TasksNotDeclared);
        }
        let id = protocol::param_str(message, "taskId")
            .ok_or_else(|| Failure::InvalidParams("`params.taskId` must be a string".into()))?;
        let unknown = || super::task_table::unknown_task(id);
        let task = self
            .client_tasks
            .find(&session.client, id)
            .ok_or_else(unknown)?;
        // Made by a process of its server's that has exited since.
        if task.generation.is_some()
            && task.generation != self.servers.generation(task.server, &session.client.name)
        {
            self.client_tasks.forget(&session.client, id);
            return Err(unknown());
        }
        if Method::of(message) == Some(Method::TasksUpdate) {
            let answers = protocol::params(message)
                .and_then(|params| params.get("inputResponses"))
                .and_then(Value::as_object)
                .ok_or_else(|| {
                    Failure::InvalidParams("`params.inputResponses` must be an object".into())
                })?;
            if answers.values().any(|answer| !answer.is_object()) {
                return Err(Failure::InvalidParams(
                    "each of `inputResponses` must be an object (a result)".into(),
                ));
            }
            if !super::task_table::Tasks::answerable(&task, answers) {
                return Err(Failure::InvalidParams(
                    "`inputResponses` answers a question the task has not asked this client".into(),
                ));
            }
        }
        Ok(task)
    }

    /// An unknown tool or prompt; if its server is down, or up again but its
    /// lists not read yet, say so instead.
    pub(super) fn not_found(&self, what: &'static str, name: &str) -> Failure {
        let separator = &self.config.proxy.namespace_separator;
        if let Some((server, _)) = name.split_once(separator.as_str())
            && let Some(index) = self.servers.index_of(server)
            && !self.servers.is_catalogued(index)
            && self.catalog().server_lists(index).is_none()
        {
            return Failure::ServerNotReady(server.to_owned());
        }
        Failure::Unknown {
            what,
            name: name.to_owned(),
        }
    }

    /// Sends a request to a server and returns its reply with the client's
    /// id restored ([`Failure::Cancelled`] when the client cancelled it).
    pub(super) async fn forward(
        self: &Arc<Self>,
        session: &Arc<Session>,
        server: usize,
        client_id: &Value,
        outgoing: Value,
    ) -> Result<Value, Failure> {
        self.servers.may_act_as_user(server, session)?;
        let upstream = self
            .servers
            .upstream_for(server, &session.client.name)
            .ok_or_else(|| self.servers.no_instance(server))?;
        let key = IdKey::from_value(client_id);
        let cancel = CancellationToken::new();
        if let Some(key) = &key
            && !session.begin_call(key.clone(), cancel.clone())
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
            changed.ok_or(Failure::Cancelled)??;
            return Ok(protocol::result(client_id.clone(), json!({})));
        }
        // A server that asks in rounds (`input_required`) is told what the
        // client can be asked; the proxy carries its questions.
        let rounds = upstream.asks_in_rounds() && method.takes_rounds();
        let kept = rounds.then(|| outgoing.clone());
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
        let tasks = upstream.takes_tasks()
            && session.revision.takes_tasks()
            && (method == Method::ToolsCall || method.is_task())
            && declares_tasks;
        if tasks {
            capabilities.insert(
                "extensions".into(),
                json!({ super::task_table::EXTENSION: {} }),
            );
        }
        // Its log messages, as the client wants them.
        let mut call = upstream
            .begin(outgoing, Some(origin.clone()))
            .log_level(session.log_level());
        if rounds || tasks {
            call = call.in_round(capabilities.clone(), None);
        }
        let deadline = tokio::time::Instant::now() + upstream.config().call_timeout;
        let reply = self
            .send_call(session, server, &upstream, call, client_id, &cancel)
            .await;
        let reply = match (reply, kept) {
            (Ok(reply), Some(sent)) => {
                let call = super::input_required::RoundCall {
                    session,
                    server,
                    upstream: &upstream,
                    sent,
                    origin,
                    capabilities,
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
        Ok(reply)
    }

    /// Sends `call` (of `session`'s request `client_id`, to server
    /// `server`) and waits for the server's reply (its id the server's);
    /// what the server sends during the call goes to this session alone, on
    /// the call's stream.
    pub(super) async fn send_call(
        &self,
        session: &Arc<Session>,
        server: usize,
        upstream: &crate::upstream::Upstream,
        call: crate::upstream::PendingCall,
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
            result = call.send_and_follow(upstream.config().call_timeout, follow) => Ok(result?),
            () = cancel.cancelled() => Err(Failure::Cancelled),
        }
    }
}
