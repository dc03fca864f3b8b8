//! The route stage: a client's request routed (its server, its target,
//! the listed definition, the catalog), before the chain decides on it.
//! Step 3 of the pipeline (`run.rs`); the relay to the server is
//! `relay.rs`'s.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde_json::Value;

use crate::chain::{Exchange, Outcome};
use crate::protocol::{self, Method};

use super::failure::Failure;
use super::{Catalog, Gateway, Session};

/// The longest name asked of an unknown tool or prompt that its record
/// keeps.
const MOST_ASKED_NAME: usize = 256;

/// Where a client request goes.
pub(super) enum Route {
    /// Answered by the proxy itself.
    Local,
    /// A 2026-07-28 `subscriptions/listen`: runs until the client ends it.
    Listen,
    /// One of the proxy's own tools (`[discovery]`).
    Discovery(super::discovery::Tool),
    /// The proxy's tool `portcullis__code` (`[code_mode]`): a script run.
    Code,
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

/// A reply and how the exchange ended.
pub(super) type Ended = (Option<Value>, Outcome);

/// An exchange that ended in `failure`: its error response and outcome.
pub(super) fn failed(id: &Value, failure: impl Into<Failure>) -> Ended {
    let failure = failure.into();
    (Some(failure.to_response(id.clone())), failure.outcome())
}

/// The id to answer a message with: its own if it has a usable one.
pub fn reply_id(message: &Value) -> Value {
    match message.get("id") {
        Some(id @ (Value::String(_) | Value::Number(_))) => id.clone(),
        _ => Value::Null,
    }
}

impl Gateway {
    /// Routes the exchange's request and tells the chain what routing found:
    /// the server, the target, the listed definition and the catalog.
    pub(super) fn route_exchange(
        &self,
        session: &Session,
        method: &Method,
        exchange: &mut Exchange,
    ) -> Result<Route, Failure> {
        let catalog = self.catalog();
        let (route, target) = match self.route(&catalog, session, method, &exchange.message) {
            Ok(routed) => routed,
            Err(failure) => {
                // Recorded with the name asked: `audit query --tool` finds
                // a call of a tool that is not there (cut, a client wrote it).
                if matches!(
                    failure,
                    Failure::Unknown { .. } | Failure::ServerNotReady(_)
                ) {
                    exchange.context.target = protocol::param_str(&exchange.message, "name")
                        .map(|name| protocol::cut(name, MOST_ASKED_NAME).to_owned());
                }
                return Err(failure);
            }
        };
        let task = match &route {
            Route::Discovery(_) | Route::Code => {
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
        if self.own_tools == Some(server) {
            let route = if *method != Method::ToolsCall {
                None
            } else if original == crate::config::CODE_TOOL && self.code.is_some() {
                Some(Route::Code)
            } else {
                super::discovery::Tool::parse(original)
                    .filter(|_| self.discovery.is_some())
                    .map(Route::Discovery)
            };
            let route = route.ok_or_else(|| self.not_found(what, name))?;
            return Ok((route, Some(original.to_owned())));
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
}
