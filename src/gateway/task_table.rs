//! The tasks the proxy passed on to clients (see `gateway::tasks`): each
//! under an id of the proxy's, bound to the client that created it, with
//! what the proxy needs to decide its requests; and what a server says of a
//! task, checked and framed with only the fields the extension defines.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use crate::chain::ClientIdentity;
use crate::protocol::{self, At as _, meta};

use super::failure::Failure;
use super::lock;
use super::session::MAX_TASKS_PER_CLIENT;

pub(super) use crate::protocol::TASKS_EXTENSION as EXTENSION;

/// Tasks of one client at one server the proxy keeps, finished ones
/// included (the oldest finished one makes room).
const MAX_KEPT_PER_SERVER: usize = 4 * MAX_TASKS_PER_CLIENT;
/// The longest the proxy keeps a task (one the server keeps longer, or for
/// ever, is forgotten by the proxy then).
const LONGEST: Duration = Duration::from_secs(24 * 3600);
/// How long a finished task is kept for its client to poll it again.
const FINISHED_KEPT: Duration = Duration::from_secs(600);
/// The soonest a client is told to poll again.
const SHORTEST_POLL_MS: u64 = 100;
/// The largest call arguments (as JSON) kept with a task; a call with
/// larger ones is not passed on as a task.
pub(super) const MAX_KEPT_ARGUMENTS: usize = 64 * 1024;
/// The longest key of a task's question.
const MAX_QUESTION_KEY: usize = 256;
/// The statuses a task can have, and those it ends in.
const STATUSES: &[&str] = &[
    "working",
    "input_required",
    "completed",
    "failed",
    "cancelled",
];
const FINISHED: &[&str] = &["completed", "failed", "cancelled"];
/// What a result of 2026-07-28 says of itself, never part of a task's
/// payload.
const PROTOCOL_KEYS: &[&str] = &[
    "resultType",
    "inputRequests",
    "requestState",
    "ttlMs",
    "cacheScope",
];

/// Whether a client declared the extension in its capabilities.
pub(super) fn declared(capabilities: &Value) -> bool {
    capabilities
        .get("extensions")
        .and_then(|extensions| extensions.get(EXTENSION))
        .is_some_and(Value::is_object)
}

/// Whether a server's reply is a task.
pub(super) fn is_task(reply: &Value) -> bool {
    reply.at(&["result", "resultType"]).and_then(Value::as_str) == Some("task")
}

/// The arguments of a call as they are kept with its task: `Ok(None)`
/// when there are none, `Err` when they are too large to keep.
pub(super) fn kept_arguments(message: &Value) -> Result<Option<Arc<Map<String, Value>>>, ()> {
    let Some(arguments) = message
        .at(&["params", "arguments"])
        .and_then(Value::as_object)
    else {
        return Ok(None);
    };
    let size = serde_json::to_vec(arguments).map_or(usize::MAX, |bytes| bytes.len());
    if size > MAX_KEPT_ARGUMENTS {
        return Err(());
    }
    Ok(Some(Arc::new(arguments.clone())))
}

/// One task the proxy passed on.
#[derive(Clone)]
pub(super) struct Task {
    /// The name of the client that created it (its instance of a
    /// per-client server, its count of tasks).
    pub(super) client: Arc<str>,
    /// The very identity that created it: only it may poll, update or
    /// cancel it (the same name with other groups or scopes may not).
    owner: ClientIdentity,
    pub(super) server: usize,
    /// The server's own id for it.
    pub(super) server_task: String,
    /// Its tool, as the server names it and as the client's lists do.
    pub(super) tool: String,
    pub(super) listed: String,
    /// The arguments of the call that created it, as forwarded.
    pub(super) arguments: Option<Arc<Map<String, Value>>>,
    /// The start of its server's process it was made by (`None`: a remote
    /// server, whose tasks may outlive a reconnection): a process started
    /// since knows nothing of it.
    pub(super) generation: Option<u64>,
    /// The last status the server gave it.
    status: &'static str,
    /// Its client asked to cancel it: it no longer counts as running.
    cancel_asked: bool,
    /// The keys of the questions its last poll showed the client (decided),
    /// not answered yet: the only ones the client may answer.
    shown: BTreeSet<String>,
    created: Instant,
    expires: Instant,
}

impl Task {
    fn running(&self) -> bool {
        !FINISHED.contains(&self.status) && !self.cancel_asked
    }

    /// Whether a poll may find it `status`: a finished task never starts
    /// again.
    fn may_become(&self, status: &str) -> Result<(), Failure> {
        if FINISHED.contains(&self.status) && self.status != status {
            return Err(bad("a finished task cannot change its status"));
        }
        Ok(())
    }
}

/// What a new task is made of.
pub(super) struct Created {
    pub(super) client: Arc<str>,
    pub(super) owner: ClientIdentity,
    pub(super) server: usize,
    pub(super) tool: String,
    pub(super) listed: String,
    pub(super) arguments: Option<Arc<Map<String, Value>>>,
    pub(super) generation: Option<u64>,
    /// Its server serves every client (not one instance per client).
    pub(super) shared: bool,
}

/// The tasks the proxy passed on, by the proxy's id.
#[derive(Default)]
pub(super) struct Tasks {
    by_id: Mutex<HashMap<String, Task>>,
}

impl Tasks {
    /// Takes the task of a server's `reply` (a `tools/call` result that is
    /// a task) on, and the reply as the client gets it: under the proxy's
    /// id, with only what the extension defines. Refused when it is
    /// malformed, or when its client runs too many tasks at that server.
    pub(super) fn create(&self, created: Created, reply: &Value) -> Result<Value, Failure> {
        let result = reply
            .get("result")
            .ok_or_else(|| bad("the result is missing"))?;
        let server_task = result
            .get("taskId")
            .and_then(Value::as_str)
            .filter(|id| !id.is_empty() && id.len() <= 256)
            .ok_or_else(|| bad("`taskId` is not a string of 1 to 256 bytes"))?
            .to_owned();
        let ttl = match result.get("ttlMs") {
            Some(Value::Null) => None,
            Some(ttl) => Some(ttl.as_u64().ok_or_else(|| bad("`ttlMs` is not a number"))?),
            None => return Err(bad("`ttlMs` is missing")),
        };
        let kept = ttl.map_or(LONGEST, |ms| Duration::from_millis(ms).min(LONGEST));
        let mut framed = framed_task(result, "")?;
        let status = status_of(&framed);
        if FINISHED.contains(&status) {
            return Err(bad("a task is created finished"));
        }
        let now = Instant::now();
        let id = format!("portcullis-task-{}", uuid::Uuid::new_v4().simple());
        framed.insert("taskId".into(), Value::from(id.as_str()));
        framed.insert("resultType".into(), Value::from("task"));
        framed.insert("ttlMs".into(), Value::from(millis(kept)));
        {
            let mut tasks = lock(&self.by_id);
            // An id its server gives again (a process started since, one
            // that forgot it) names the new task alone: the old entry could
            // otherwise reach it, whosever it is.
            let again = |task: &Task| {
                task.server == created.server
                    && task.server_task == server_task
                    && (created.shared || task.client == created.client)
            };
            tasks.retain(|_, task| task.expires > now && !again(task));
            let same = |task: &Task| task.client == created.client && task.server == created.server;
            let running = tasks.values().filter(|t| same(t) && t.running()).count();
            if running >= MAX_TASKS_PER_CLIENT {
                return Err(Failure::TooManyTasks);
            }
            if tasks.values().filter(|t| same(t)).count() >= MAX_KEPT_PER_SERVER {
                // Room made by the oldest finished (or given up) one.
                let oldest = tasks
                    .iter()
                    .filter(|(_, t)| same(t) && !t.running())
                    .min_by_key(|(_, t)| t.created)
                    .map(|(id, _)| id.clone());
                if let Some(oldest) = oldest {
                    tasks.remove(&oldest);
                }
            }
            tasks.insert(
                id,
                Task {
                    client: created.client,
                    owner: created.owner,
                    server: created.server,
                    server_task,
                    tool: created.tool,
                    listed: created.listed,
                    arguments: created.arguments,
                    generation: created.generation,
                    status,
                    cancel_asked: false,
                    shown: BTreeSet::new(),
                    created: now,
                    expires: now + kept,
                },
            );
        }
        let mut reply = reply.clone();
        reply.put(&["result"], Value::Object(framed));
        Ok(reply)
    }

    /// `client`'s task `id`: `None` when there is none (unknown, expired,
    /// or another client's: which, is not said).
    pub(super) fn find(&self, client: &ClientIdentity, id: &str) -> Option<Task> {
        let now = Instant::now();
        lock(&self.by_id)
            .get(id)
            .filter(|task| task.owner == *client && task.expires > now)
            .cloned()
    }

    /// Forgets `client`'s task `id` (its server forgot it, or it was never
    /// passed on).
    pub(super) fn forget(&self, client: &ClientIdentity, id: &str) {
        let mut tasks = lock(&self.by_id);
        if tasks.get(id).is_some_and(|task| task.owner == *client) {
            tasks.remove(id);
        }
    }

    /// Whether `client`'s task `id` may be found `status` by a poll: known,
    /// and not a finished task starting again.
    pub(super) fn may_become(
        &self,
        client: &ClientIdentity,
        id: &str,
        status: &str,
    ) -> Result<(), Failure> {
        let task = self.find(client, id).ok_or_else(|| unknown_task(id))?;
        task.may_become(status)
    }

    /// The servers (by index) with tasks running: not stopped for
    /// idleness, since the tasks live in them.
    pub(super) fn running_servers(&self) -> std::collections::HashSet<usize> {
        let now = Instant::now();
        lock(&self.by_id)
            .values()
            .filter(|task| task.running() && task.expires > now)
            .map(|task| task.server)
            .collect()
    }

    /// A poll of `client`'s task `id` found it `status` (with questions
    /// `asked`, once decided): a finished task is kept a little longer for
    /// its client, and never starts again. How long the proxy keeps it yet.
    pub(super) fn polled(
        &self,
        client: &ClientIdentity,
        id: &str,
        status: &'static str,
        asked: impl Iterator<Item = String>,
    ) -> Result<Duration, Failure> {
        let now = Instant::now();
        let mut tasks = lock(&self.by_id);
        let task = tasks
            .get_mut(id)
            .filter(|task| task.owner == *client && task.expires > now)
            .ok_or_else(|| unknown_task(id))?;
        // Checked again under the lock: the poll's questions were decided
        // since.
        task.may_become(status)?;
        if FINISHED.contains(&status) && !FINISHED.contains(&task.status) {
            task.expires = task.expires.min(now + FINISHED_KEPT);
        }
        task.status = status;
        task.shown = asked.collect();
        Ok(task.expires.saturating_duration_since(now))
    }

    /// `client` asked to cancel its task `id`, and its server took it: it
    /// no longer counts as running, and is kept as a finished one is.
    pub(super) fn cancel_asked(&self, client: &ClientIdentity, id: &str) {
        if let Some(task) = lock(&self.by_id).get_mut(id)
            && task.owner == *client
        {
            task.cancel_asked = true;
            task.expires = task.expires.min(Instant::now() + FINISHED_KEPT);
        }
    }

    /// `client`'s answers to questions `keys` of its task `id` were taken by
    /// its server: they cannot be answered again.
    pub(super) fn answered<'a>(
        &self,
        client: &ClientIdentity,
        id: &str,
        keys: impl Iterator<Item = &'a String>,
    ) {
        if let Some(task) = lock(&self.by_id).get_mut(id)
            && task.owner == *client
        {
            for key in keys {
                task.shown.remove(key);
            }
        }
    }

    /// Whether every question `answers` (a `tasks/update`'s
    /// `inputResponses`) answers is one the task's last poll showed the
    /// client and that it has not answered yet.
    pub(super) fn answerable(task: &Task, answers: &Map<String, Value>) -> bool {
        answers.keys().all(|key| task.shown.contains(key))
    }

    /// How many tasks the proxy holds (for tests).
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        lock(&self.by_id).len()
    }
}

/// The answer to a task id that names no task of the client's.
pub(super) fn unknown_task(id: &str) -> Failure {
    Failure::UnknownTask(protocol::cut(id, 128).to_owned())
}

fn bad(why: &str) -> Failure {
    Failure::ServerTask(why.to_owned())
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The status of a framed task (checked by [`framed_task`]).
fn status_of(framed: &Map<String, Value>) -> &'static str {
    let status = framed.get("status").and_then(Value::as_str);
    STATUSES
        .iter()
        .copied()
        .find(|known| Some(*known) == status)
        .unwrap_or("working")
}

/// A server's task (a `tools/call` result, a `tasks/get` result) with only
/// what the extension defines, checked, under the proxy's `id`: no
/// `resultType`, `ttlMs` or payload (the caller sets them), no `_meta`.
fn framed_task(result: &Value, id: &str) -> Result<Map<String, Value>, Failure> {
    let status = result
        .get("status")
        .and_then(Value::as_str)
        .filter(|status| STATUSES.contains(status))
        .ok_or_else(|| bad("`status` is not a task status"))?;
    let mut framed = Map::new();
    framed.insert("taskId".into(), Value::from(id));
    framed.insert("status".into(), Value::from(status));
    for key in ["statusMessage", "createdAt", "lastUpdatedAt"] {
        match result.get(key) {
            None => {}
            Some(Value::String(text)) => {
                framed.insert(key.into(), Value::from(protocol::cut(text, 4096)));
            }
            Some(_) => return Err(bad(&format!("`{key}` is not a string"))),
        }
    }
    if let Some(poll) = result.get("pollIntervalMs") {
        let ms = poll
            .as_u64()
            .ok_or_else(|| bad("`pollIntervalMs` is not a number"))?;
        framed.insert(
            "pollIntervalMs".into(),
            Value::from(ms.max(SHORTEST_POLL_MS)),
        );
    }
    Ok(framed)
}

/// A completed task's tool result as the client gets it: without what a
/// 2026-07-28 result says of itself or the protocol's `_meta` keys.
fn framed_payload(payload: &Value) -> Result<Value, Failure> {
    let mut payload = payload
        .as_object()
        .cloned()
        .ok_or_else(|| bad("a completed task has no `result` object"))?;
    for key in PROTOCOL_KEYS {
        payload.remove(*key);
    }
    if let Some(found) = payload.get_mut("_meta").and_then(Value::as_object_mut) {
        found.retain(|key, _| !key.starts_with(meta::PREFIX));
    }
    Ok(Value::Object(payload))
}

/// A failed task's error as the client gets it: a JSON-RPC error's fields.
fn framed_error(error: &Value) -> Result<Value, Failure> {
    let code = error.get("code").and_then(Value::as_i64);
    let message = error.get("message").and_then(Value::as_str);
    let (Some(code), Some(message)) = (code, message) else {
        return Err(bad("a failed task's `error` is not a JSON-RPC error"));
    };
    let mut framed = json!({ "code": code, "message": protocol::cut(message, 4096) });
    if let Some(data) = error.get("data") {
        framed.put(&["data"], data.clone());
    }
    Ok(framed)
}

/// A server's `tasks/get` result as the client gets it: the task under the
/// proxy's `id`, with its payload for its status (the result of a
/// completed one, the error of a failed one), nothing else; and its
/// status, and its questions if it needs input (to be decided before they
/// are shown). `None`: the server answered with an error.
pub(super) type Polled = (Value, &'static str, Option<Map<String, Value>>);

pub(super) fn framed_get(reply: &Value, id: &str) -> Result<Option<Polled>, Failure> {
    let Some(result) = reply.get("result") else {
        return Ok(None);
    };
    let mut framed = framed_task(result, id)?;
    let status = status_of(&framed);
    let mut questions = None;
    match status {
        "completed" => {
            let payload = result.get("result").unwrap_or(&Value::Null);
            framed.insert("result".into(), framed_payload(payload)?);
        }
        "failed" => {
            let error = result.get("error").unwrap_or(&Value::Null);
            framed.insert("error".into(), framed_error(error)?);
        }
        "input_required" => {
            let asked = result
                .get("inputRequests")
                .and_then(Value::as_object)
                .filter(|asked| !asked.is_empty() && asked.len() <= 16)
                .ok_or_else(|| bad("`inputRequests` must hold 1 to 16 requests"))?;
            if asked
                .keys()
                .any(|key| key.is_empty() || key.len() > MAX_QUESTION_KEY)
            {
                return Err(bad("a question's key is empty or longer than 256 bytes"));
            }
            questions = Some(asked.clone());
        }
        _ => {}
    }
    let mut reply = reply.clone();
    reply.put(&["result"], Value::Object(framed));
    Ok(Some((reply, status, questions)))
}

/// How long the proxy keeps a task yet, in its `ttlMs`.
pub(super) fn set_ttl(reply: &mut Value, left: Duration) {
    if let Some(result) = reply.get_mut("result").and_then(Value::as_object_mut) {
        result.insert("ttlMs".into(), Value::from(millis(left)));
    }
}

/// A `tasks/update` or `tasks/cancel` result as the client gets it: an
/// acknowledgement, with nothing of the server's in it.
pub(super) fn acknowledgement(reply: &Value) -> Value {
    let mut reply = reply.clone();
    if let Some(object) = reply.as_object_mut() {
        object.insert("result".into(), json!({}));
    }
    reply
}
