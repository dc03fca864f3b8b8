//! Tasks (the `io.modelcontextprotocol/tasks` extension of 2026-07-28): a
//! server may answer a `tools/call` with a task (`resultType: "task"`) that
//! the client then polls (`tasks/get`), answers (`tasks/update`) and
//! cancels (`tasks/cancel`).
//!
//! The proxy tells a 2026-07-28 server a client takes tasks only when that
//! client declared the extension on its request, and carries a task only
//! to a 2026-07-28 client that did. Each task the proxy passes on gets an
//! id of the proxy's (random, never the server's; see `task_table`): the id
//! names the server, the server's id and the client that created it, so
//! that no client can read, answer or cancel a task of another's (an
//! unknown id, another client's id and a task its server forgot get the
//! same answer to a poll), and two servers' ids never collide. A task's requests are
//! decided and recorded as the call that created it: `call_tool` on its
//! tool, with the call's arguments as forwarded. What a server says of a
//! task is checked and framed: only the fields the extension defines, a
//! finished task never starts again, its questions decided (and recorded)
//! each time they are shown, and answered only once shown.
//!
//! The table lives in the proxy. A task of a `process` or `container`
//! server is forgotten when its process is started again (a new process
//! knows nothing of it, and may give its id to another task); a remote
//! server's survives a reconnection as far as the server keeps it. None
//! survives the proxy's own restart. A server with tasks running is not
//! stopped for idleness.

use std::sync::Arc;

use serde_json::{Map, Value, json};

use crate::chain::Outcome;
use crate::protocol::{self, At as _, Method, code};

use super::failure::Failure;
use super::task_table::{self, Created};
use super::{Gateway, Session};

/// What a task's reply needs of the request it answers (taken before the
/// request is relayed).
pub(super) enum Asked {
    /// Neither a call that may become a task nor a task's request.
    Nothing,
    /// A call of a client that takes tasks: its tool as the client's lists
    /// name it, and its arguments as forwarded (`Err`: too large to keep).
    Call {
        listed: String,
        arguments: Result<Option<Arc<Map<String, Value>>>, ()>,
    },
    /// A task's request, under the proxy's id, and the questions a
    /// `tasks/update` answers.
    Task {
        method: Method,
        id: String,
        answers: Vec<String>,
    },
}

impl Asked {
    pub(super) fn of(session: &Session, method: &Method, message: &Value) -> Self {
        if !session.revision.takes_tasks() || !session.client_capabilities(task_table::declared) {
            return Self::Nothing;
        }
        let param = |key: &str| {
            protocol::param_str(message, key)
                .unwrap_or_default()
                .to_owned()
        };
        if *method == Method::ToolsCall {
            return Self::Call {
                listed: param("name"),
                arguments: task_table::kept_arguments(message),
            };
        }
        if !method.is_task() {
            return Self::Nothing;
        }
        let answers = message
            .at(&["params", "inputResponses"])
            .and_then(Value::as_object)
            .map(|answers| answers.keys().cloned().collect())
            .unwrap_or_default();
        Self::Task {
            method: method.clone(),
            id: param("taskId"),
            answers,
        }
    }
}

impl task_table::Tasks {
    /// A server's reply to a 2026-07-28 client, where tasks shape it: a
    /// call answered with a task (taken on, under the proxy's id), a task
    /// polled, updated or cancelled. `None`: no task in it.
    /// `from_stateless`: the server speaks 2026-07-28 (no other has tasks).
    pub(super) async fn task_reply(
        &self,
        gateway: &Arc<Gateway>,
        session: &Arc<Session>,
        (server, from_stateless): (usize, bool),
        target: Option<&str>,
        asked: Asked,
        reply: &Value,
    ) -> Option<Result<Value, Failure>> {
        match asked {
            Asked::Call { listed, arguments } if from_stateless && task_table::is_task(reply) => {
                let taken = match arguments {
                    Ok(arguments) => {
                        let created = Created {
                            client: session.client.name.clone(),
                            owner: session.client.clone(),
                            server,
                            tool: target.unwrap_or_default().to_owned(),
                            listed,
                            arguments,
                            generation: gateway.servers.generation(server, &session.client.name),
                            shared: !gateway.servers.per_client(server),
                        };
                        let taken = self.create(created, reply);
                        gateway.update_holds();
                        taken
                    }
                    Err(()) => Err(Failure::ServerTask(format!(
                        "the call's arguments are over {} KiB, too large to keep with a task",
                        task_table::MAX_KEPT_ARGUMENTS / 1024
                    ))),
                };
                if taken.is_err() {
                    // Not passed on: not left running either.
                    gateway
                        .servers
                        .cancel_task_of(server, reply, &session.client.name);
                }
                Some(taken)
            }
            Asked::Task { .. } if !from_stateless => Some(Err(Failure::TaskServerNotModern)),
            Asked::Task {
                method,
                id,
                answers,
            } => Some(
                self.task_answered(gateway, session, server, &method, (&id, answers), reply)
                    .await,
            ),
            _ => None,
        }
    }

    /// The server's answer to a task's request (`id`: the proxy's): a
    /// poll's task framed, its questions decided; an update or a cancel
    /// acknowledged; an error of the server's told without anything of the
    /// server's in it (a task it does not know is forgotten, and answered as
    /// any unknown task).
    async fn task_answered(
        &self,
        gateway: &Arc<Gateway>,
        session: &Arc<Session>,
        server: usize,
        method: &Method,
        (id, answers): (&str, Vec<String>),
        reply: &Value,
    ) -> Result<Value, Failure> {
        let client = &session.client;
        if let Some(error) = reply.get("error") {
            let said = error.get("code").and_then(Value::as_i64);
            if *method == Method::TasksGet && said == Some(code::INVALID_PARAMS) {
                self.forget(client, id);
                gateway.update_holds();
                return Err(task_table::unknown_task(id));
            }
            return Err(Failure::ServerTask(format!(
                "its server refused `{method}` (code {})",
                said.unwrap_or_default()
            )));
        }
        match method {
            Method::TasksGet => self.task_polled(gateway, session, server, id, reply).await,
            Method::TasksUpdate => {
                self.answered(client, id, answers.iter());
                Ok(task_table::acknowledgement(reply))
            }
            _ => {
                self.cancel_asked(client, id);
                gateway.update_holds();
                Ok(task_table::acknowledgement(reply))
            }
        }
    }

    /// A `tasks/get` result: framed, and the questions of a task that needs
    /// input decided as the server's requests to the client would be. A
    /// question refused ends the task (cancelled at the server).
    async fn task_polled(
        &self,
        gateway: &Arc<Gateway>,
        session: &Arc<Session>,
        server: usize,
        id: &str,
        reply: &Value,
    ) -> Result<Value, Failure> {
        let client = &session.client;
        let Some((mut framed, status, questions)) = task_table::framed_get(reply, id)? else {
            return Err(Failure::ServerTask("its server answered no task".into()));
        };
        // Known still, and not a finished task starting again, before its
        // questions are decided.
        self.may_become(client, id, status)?;
        let shown = match questions {
            None => Map::new(),
            Some(questions) => match self
                .task_questions(
                    gateway,
                    session,
                    (server, self.call_of(gateway, client, id)),
                    questions,
                )
                .await
            {
                Ok(shown) => shown,
                Err(refused) => {
                    if let Some(task) = self.find(client, id) {
                        gateway.servers.cancel_task(
                            server,
                            &task.server_task,
                            &session.client.name,
                        );
                    }
                    return Err(refused);
                }
            },
        };
        let left = self.polled(client, id, status, shown.keys().cloned())?;
        gateway.update_holds();
        task_table::set_ttl(&mut framed, left);
        if !shown.is_empty()
            && let Some(result) = framed.get_mut("result").and_then(Value::as_object_mut)
        {
            result.insert("inputRequests".into(), Value::Object(shown));
        }
        Ok(framed)
    }

    /// A task's questions, each decided (the capability the client
    /// declared, the chain: Cedar, redaction) and recorded as a request of
    /// its server's to the client; as the client is to see them.
    async fn task_questions(
        &self,
        gateway: &Arc<Gateway>,
        session: &Arc<Session>,
        (server, call): (usize, Option<Arc<crate::chain::CallOf>>),
        questions: Map<String, Value>,
    ) -> Result<Map<String, Value>, Failure> {
        let mut shown = Map::new();
        for (key, question) in questions {
            let method = Method::named_in(&question);
            let Some(capability) = method.client_capability() else {
                return Err(Failure::ServerTask(
                    "a question is not sampling, elicitation or roots".into(),
                ));
            };
            if !session.has_client_capability(capability) {
                return Err(Failure::ClientLacks(capability));
            }
            let params = question.get("params").cloned().unwrap_or_else(|| json!({}));
            let message = protocol::request(Value::from(key.as_str()), method.as_str(), params);
            let mut run = gateway.begin_asking(
                session,
                message,
                &method,
                gateway.servers.name_at(server).cloned(),
            );
            // Its answers come in `tasks/update`, decided as the task's call.
            run.exchange.context.asked_during = call.clone();
            if let Err(refusal) = gateway.chain.run(&mut run.exchange) {
                let refusal = Failure::from(refusal);
                run.end(&refusal.outcome(), None).await;
                return Err(refusal);
            }
            if let Some(server) = gateway.servers.name_at(server) {
                gateway.flows.asked(session, &method, server);
            }
            let params = run.exchange.message.get("params").cloned();
            let asked =
                json!({ "method": method.as_str(), "params": params.unwrap_or_else(|| json!({})) });
            if !run.end(&Outcome::Delivered, None).await {
                return Err(Failure::NotRecorded);
            }
            shown.insert(key, asked);
        }
        Ok(shown)
    }

    /// The call a task of `client`'s is, as its answers are decided
    /// (`tasks/update` on its tool).
    fn call_of(
        &self,
        gateway: &Gateway,
        client: &crate::chain::ClientIdentity,
        id: &str,
    ) -> Option<Arc<crate::chain::CallOf>> {
        let task = self.find(client, id)?;
        Some(Arc::new(crate::chain::CallOf {
            method: Method::TasksUpdate,
            server: gateway.servers.name_at(task.server)?.clone(),
            definition: gateway.catalog().tool_definition(&task.listed),
            target: task.tool,
            script: None,
        }))
    }

    /// A created task the client will not get (its reply refused by the
    /// chain, say): forgotten, and cancelled at its server.
    pub(super) fn task_not_given(
        &self,
        gateway: &Arc<Gateway>,
        session: &Arc<Session>,
        reply: &Value,
    ) {
        if !task_table::is_task(reply) {
            return;
        }
        let id = reply.at(&["result", "taskId"]).and_then(Value::as_str);
        let Some(task) = id.and_then(|id| self.find(&session.client, id)) else {
            return;
        };
        if let Some(id) = id {
            self.forget(&session.client, id);
        }
        gateway
            .servers
            .cancel_task(task.server, &task.server_task, &session.client.name);
    }
}
