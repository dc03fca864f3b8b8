//! `[code_mode]`: the proxy's tool `portcullis__code`, which runs an
//! agent's JavaScript in the code-mode engine ([`crate::codemode`]).
//!
//! The tool is a tool of the proxy's own server, listed and called only
//! as Cedar's `use_code` lets the client. Its description declares, as
//! typed signatures, the tools the client may call: its own `tools/list`,
//! as the response chain leaves it (Cedar, pinning, profiles, plugins).
//! Each call the script makes enters the pipeline as a request of the
//! same client on the same session ([`Gateway::handle_request_in`]):
//! routed, decided, admitted, relayed, checked and recorded as any call,
//! its record naming the script's id. A refused call reaches the script as
//! an exception with the refusal's words.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::chain::{Annotation, Direction, Exchange, Outcome, Phase};
use crate::codemode::{Answer, Call, Dispatch, Engine, Reply, RunError};
use crate::config::{CODE_TOOL, CodeModeConfig};
use crate::interceptors::authz::{Action, list_target};
use crate::protocol::{self, At as _, IdKey, Method};

use super::failure::Failure;
use super::{Gateway, Session, lock};

/// The longest script, as the tool's input schema says (the engine's own
/// bound).
const MAX_SCRIPT: usize = 1 << 20;

/// The most of the tool's description the signatures take; tools past it
/// are named without their types.
const MAX_SIGNATURES: usize = 64 << 10;

/// The most one type written from a schema takes.
const MAX_TYPE: usize = 2048;

/// A tool's description, as a signature's comment, at most.
const MAX_DESCRIBED: usize = 400;

/// What the tool says of itself, before the signatures.
const DESCRIPTION: &str = "Run a JavaScript program (ES2023, the body of an async function) that calls your tools and returns a JSON value. Call a tool as `await tools.NAME({...arguments})`: it resolves with the tool's structured result, or its text (parsed when it is JSON), and throws an Error when the tool fails or the call is refused (catch it to go on). `console.log` is captured and returned. There is no filesystem, network, require, import or timer: only the tools below. Limits: wall time, instructions, memory, output size and the number of calls; past one, the script is stopped with an error naming it.";

/// The engine and what scripts may use.
pub(super) struct CodeMode {
    engine: Arc<Engine>,
    config: CodeModeConfig,
    running: Arc<Semaphore>,
    /// Scripts running, by client.
    per_client: Mutex<HashMap<Arc<str>, usize>>,
}

impl CodeMode {
    /// The engine started (compiled, its clock ticking); `None`, and the
    /// operator told why, when it cannot start: the tool is not listed.
    pub(super) fn new(config: &CodeModeConfig) -> Option<Self> {
        match Engine::new() {
            Ok(engine) => Some(Self {
                engine: Arc::new(engine),
                config: config.clone(),
                running: Arc::new(Semaphore::new(config.max_scripts)),
                per_client: Mutex::default(),
            }),
            Err(err) => {
                tracing::error!(error = %err, "code mode is off: portcullis__code is not listed");
                None
            }
        }
    }

    /// One script of `client`'s fewer.
    fn release(&self, client: &str) {
        let mut running = lock(&self.per_client);
        if let Some(count) = running.get_mut(client) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                running.remove(client);
            }
        }
    }

    /// The tool as the proxy's server lists it (each client is shown its
    /// own signatures: [`Gateway::code_tool_for`]).
    pub(super) fn tool() -> Value {
        json!({
            "name": CODE_TOOL,
            "description": DESCRIPTION,
            "inputSchema": {
                "type": "object",
                "properties": {
                    "script": {
                        "type": "string",
                        "maxLength": MAX_SCRIPT,
                        "description": "The program: the body of an async function; `return` its result",
                    },
                },
                "required": ["script"],
                "additionalProperties": false,
            },
            // It calls whatever the client may call.
            "annotations": { "readOnlyHint": false, "openWorldHint": true },
        })
    }
}

/// The tool's description for a client that may call `tools` (as its own
/// `tools/list` shows them).
pub(super) fn described(tools: &[Value]) -> String {
    let mut text = String::from(DESCRIPTION);
    text.push_str("\n\nThe tools (`tools.NAME(arguments): Promise<result>`):\n");
    let mut unnamed = Vec::new();
    for tool in tools {
        let Some(name) = tool.get("name").and_then(Value::as_str) else {
            continue;
        };
        if text.len() > MAX_SIGNATURES {
            unnamed.push(name);
            continue;
        }
        text.push_str(&signature(name, tool));
    }
    if tools.is_empty() {
        text.push_str("(none: this client may call no tool)\n");
    }
    if !unnamed.is_empty() {
        text.push_str("\nAlso (their types left out for length): ");
        text.push_str(&unnamed.join(", "));
        text.push('\n');
    }
    text
}

/// One tool's signature: its description as a comment, its arguments' and
/// result's types from its schemas.
fn signature(name: &str, tool: &Value) -> String {
    let described = tool
        .get("description")
        .and_then(Value::as_str)
        .map(|text| {
            let line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
            let line = line.replace("*/", "* /");
            format!("/** {} */\n", protocol::cut(&line, MAX_DESCRIBED))
        })
        .unwrap_or_default();
    let input = tool
        .get("inputSchema")
        .map_or_else(|| "{}".to_owned(), |schema| type_of(schema, 0));
    let output = tool
        .get("outputSchema")
        .map_or_else(|| "unknown".to_owned(), |schema| type_of(schema, 0));
    let key = if is_identifier(name) {
        format!("tools.{name}")
    } else {
        format!("tools[{}]", Value::from(name))
    };
    // What the proxy flagged on the tool in the list (a changed pin, a
    // poisoning finding) stays with it here.
    let flags: Vec<String> = tool
        .get("_meta")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter(|(key, _)| key.starts_with("dev.portcullis/"))
        .map(|(key, value)| format!("{key}={}", protocol::cut(&value.to_string(), 200)))
        .collect();
    let flagged = if flags.is_empty() {
        String::new()
    } else {
        format!("// flagged by the proxy: {}\n", flags.join(", "))
    };
    format!("{described}{flagged}{key}(arguments: {input}): Promise<{output}>\n")
}

fn is_identifier(name: &str) -> bool {
    name.chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == '$')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
}

/// A JSON schema as a TypeScript type, shallow and bounded: what it does
/// not say (or says past four levels) is `unknown`.
fn type_of(schema: &Value, depth: usize) -> String {
    let written = type_in(schema, depth);
    if written.len() > MAX_TYPE {
        return "object".to_owned();
    }
    written
}

fn type_in(schema: &Value, depth: usize) -> String {
    if depth > 4 {
        return "unknown".to_owned();
    }
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        let each: Vec<String> = values.iter().take(32).map(Value::to_string).collect();
        if !each.is_empty() {
            return each.join(" | ");
        }
    }
    for union in ["anyOf", "oneOf"] {
        if let Some(options) = schema.get(union).and_then(Value::as_array) {
            let each: Vec<String> = options
                .iter()
                .take(16)
                .map(|option| type_in(option, depth + 1))
                .collect();
            if !each.is_empty() {
                return each.join(" | ");
            }
        }
    }
    match schema.get("type") {
        Some(Value::Array(kinds)) => kinds
            .iter()
            .take(8)
            .map(|kind| type_in(&json!({ "type": kind }), depth + 1))
            .collect::<Vec<_>>()
            .join(" | "),
        Some(Value::String(kind)) => match kind.as_str() {
            "string" => "string".to_owned(),
            "number" | "integer" => "number".to_owned(),
            "boolean" => "boolean".to_owned(),
            "null" => "null".to_owned(),
            "array" => {
                let items = schema
                    .get("items")
                    .map_or_else(|| "unknown".to_owned(), |items| type_in(items, depth + 1));
                format!("Array<{items}>")
            }
            "object" => object_type(schema, depth),
            _ => "unknown".to_owned(),
        },
        _ if schema.get("properties").is_some() => object_type(schema, depth),
        _ => "unknown".to_owned(),
    }
}

fn object_type(schema: &Value, depth: usize) -> String {
    let Some(properties) = schema.get("properties").and_then(Value::as_object) else {
        return "object".to_owned();
    };
    let required: Vec<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|names| names.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let fields: Vec<String> = properties
        .iter()
        .take(64)
        .map(|(name, property)| {
            let key = if is_identifier(name) {
                name.clone()
            } else {
                Value::from(name.as_str()).to_string()
            };
            let optional = if required.contains(&name.as_str()) {
                ""
            } else {
                "?"
            };
            format!("{key}{optional}: {}", type_in(property, depth + 1))
        })
        .collect();
    format!("{{ {} }}", fields.join("; "))
}

/// What a call's reply gives the script: the tool's structured result, or
/// its text (parsed when it is JSON), or the result whole; a refusal or a
/// tool's error is thrown, in its own words.
fn answer_of(reply: Option<Value>) -> Answer {
    let Some(reply) = reply else {
        return Err("the call was cancelled".to_owned());
    };
    if let Some(error) = reply.get("error") {
        let message = error
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("the call failed");
        return Err(message.to_owned());
    }
    let result = reply.get("result").cloned().unwrap_or(Value::Null);
    let content: &[Value] = result
        .get("content")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice);
    let is_text = |item: &Value| item.get("type").and_then(Value::as_str) == Some("text");
    let text = content
        .iter()
        .filter(|item| is_text(item))
        .filter_map(|item| item.get("text").and_then(Value::as_str))
        .collect::<Vec<_>>()
        .join("\n");
    if result.get("isError").and_then(Value::as_bool) == Some(true) {
        let said = if text.is_empty() { "(no text)" } else { &text };
        return Err(format!("the tool failed: {said}"));
    }
    if let Some(structured) = result.get("structuredContent") {
        return Ok(structured.clone());
    }
    if !content.is_empty() && content.iter().all(is_text) {
        return Ok(serde_json::from_str(&text).unwrap_or_else(|_| Value::from(text)));
    }
    Ok(result)
}

/// The tool result a script's end gives the client: what it returned
/// and logged, or why it failed or was stopped (`isError`).
fn result_of(id: Value, ended: &Result<crate::codemode::Outcome, RunError>) -> Value {
    let (text, structured, error) = match ended {
        Ok(outcome) if outcome.envelope.get("ok") == Some(&Value::Bool(true)) => {
            let result = outcome
                .envelope
                .get("result")
                .cloned()
                .unwrap_or(Value::Null);
            let logs = outcome.envelope.get("logs").cloned().unwrap_or(json!([]));
            let structured = json!({ "result": result, "logs": logs });
            (structured.to_string(), Some(structured), false)
        }
        Ok(outcome) => {
            let envelope = &outcome.envelope;
            let said = |key: &str| {
                envelope
                    .get(key)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
            };
            let mut text = format!("the script threw: {}", said("error"));
            if !said("stack").is_empty() {
                text.push('\n');
                text.push_str(said("stack"));
            }
            if let Some(logs) = envelope
                .get("logs")
                .filter(|logs| logs.as_array().is_some_and(|l| !l.is_empty()))
            {
                text.push_str("\nconsole: ");
                text.push_str(&logs.to_string());
            }
            (text, None, true)
        }
        Err(err) => (err.to_string(), None, true),
    };
    let mut result = json!({
        "content": [{ "type": "text", "text": text }],
        "isError": error,
    });
    if let Some(structured) = structured {
        result.put(&["structuredContent"], structured);
    }
    protocol::result(id, result)
}

/// How a script ended, as its record says.
fn ended_as(ended: &Result<crate::codemode::Outcome, RunError>) -> &'static str {
    match ended {
        Ok(outcome) if outcome.envelope.get("ok") == Some(&Value::Bool(true)) => "returned",
        Ok(_) => "threw",
        Err(RunError::Fuel) => "fuel",
        Err(RunError::Time(_)) => "time",
        Err(RunError::Stack) => "stack",
        Err(RunError::Output(_)) => "output",
        Err(RunError::ScriptTooLong) => "too_long",
        Err(RunError::Cancelled) => "cancelled",
        Err(RunError::Engine(_) | RunError::Limits(_) | RunError::Trap(_)) => "stopped",
    }
}

fn note(exchange: &mut Exchange, key: &str, value: String) {
    exchange.annotations.push(Annotation {
        interceptor: Arc::from("code"),
        key: key.to_owned(),
        value,
    });
}

/// How often a call the script's end cut off is asked to stop, until it
/// has (it may not be at its server yet).
const CANCEL_AGAIN: Duration = Duration::from_millis(20);

/// A script's place among those running: the proxy's and its client's,
/// given back when the script's thread lets go of its calls.
struct Place {
    gateway: Arc<Gateway>,
    client: Arc<str>,
    _running: OwnedSemaphorePermit,
}

impl Drop for Place {
    fn drop(&mut self) {
        if let Some(code) = &self.gateway.code {
            code.release(&self.client);
        }
    }
}

/// A script's calls, each a request of the client's through the pipeline.
/// Held by the engine while the script runs (its place with it).
struct Calls {
    gateway: Arc<Gateway>,
    session: Arc<Session>,
    script: Arc<str>,
    runtime: tokio::runtime::Handle,
    /// The outer call's id and progress token, if the client asked for
    /// progress: told as each call is answered, while the script runs.
    progress: Option<(Value, Value)>,
    answered: Arc<AtomicU32>,
    /// Every call's task: the script's call ends after them.
    tracker: TaskTracker,
    _place: Place,
}

impl Dispatch for Calls {
    fn start(&self, call: Call, reply: Reply) {
        let (gateway, session, script) = (
            self.gateway.clone(),
            self.session.clone(),
            self.script.clone(),
        );
        let (progress, answered) = (self.progress.clone(), self.answered.clone());
        let task = self.tracker.track_future(async move {
            // An id no client chooses by chance: the script's own, random.
            let id = Value::from(format!("{script}.{}", call.id));
            let message = json!({
                "jsonrpc": "2.0",
                "id": id,
                "method": "tools/call",
                "params": { "name": call.tool, "arguments": call.arguments },
            });
            let mut handled = Box::pin(gateway.handle_request_in(&session, message, Some(script)));
            // Once the script has ended, the call is asked to stop until it
            // has (at its server, or as soon as it gets there); it is never
            // dropped midway, so it ends, and is recorded, as it ran.
            let reply_message = tokio::select! {
                biased;
                reply_message = &mut handled => reply_message,
                () = call.ended.cancelled() => loop {
                    if let Some(key) = IdKey::from_value(&id) {
                        session.cancel_call(&key);
                    }
                    tokio::select! {
                        reply_message = &mut handled => break reply_message,
                        () = tokio::time::sleep(CANCEL_AGAIN) => {}
                    }
                },
            };
            let count = answered.fetch_add(1, Ordering::Relaxed).saturating_add(1);
            if let Some((outer, token)) = progress.as_ref().filter(|_| !call.ended.is_cancelled()) {
                let told = json!({
                    "jsonrpc": "2.0",
                    "method": "notifications/progress",
                    "params": {
                        "progressToken": token,
                        "progress": count,
                        "message": format!("{count} calls of the script answered (the last: {})", protocol::cut(&call.tool, 128)),
                    },
                });
                gateway.notify(&session, None, told, Some(outer), Some(outer.clone()));
            }
            reply.send(answer_of(reply_message));
        });
        self.runtime.spawn(task);
    }
}

impl Gateway {
    /// The tools a script of `session`'s client may call: its `tools/list`
    /// whole (no pages), as the response chain leaves it, without the
    /// proxy's own tools. Not recorded: it is the list the client is
    /// shown, not an exchange of its own.
    pub(super) async fn tools_for_code(self: &Arc<Self>, session: &Arc<Session>) -> Vec<Value> {
        self.lists.await_lists(self).await;
        let catalog = self.catalog();
        let items = super::discovery::Discovery::visible_items(
            self.discovery.as_ref(),
            session,
            &catalog,
            "tools",
        );
        let listed: Vec<Value> = items
            .iter()
            .filter(|item| catalog.owner_of("tools", item) != self.own_tools)
            .cloned()
            .collect();
        let message = protocol::result(Value::from("code-mode-tools"), json!({ "tools": listed }));
        let mut run = self.begin(
            session,
            message,
            Direction::ClientToServer,
            Phase::Response,
            &Method::ToolsList,
        );
        run.exchange.context.directory = Some(catalog);
        // A list the chain refuses offers nothing: fail closed.
        let (tools, outcome) = match self.chain.run(&mut run.exchange) {
            Ok(()) => (
                run.exchange
                    .message
                    .at(&["result", "tools"])
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default(),
                Outcome::Delivered,
            ),
            Err(refusal) => (Vec::new(), Failure::from(refusal).outcome()),
        };
        run.end(&outcome, None).await;
        tools
    }

    /// `item` (the code tool, in a page of `tools/list`) with the
    /// signatures of what `session`'s client may call.
    pub(super) async fn code_tool_for(self: &Arc<Self>, session: &Arc<Session>, item: &mut Value) {
        // A client Cedar does not let use it is not shown it (the chain
        // takes it out of the page): its tools are not worked out for it.
        // The item is decided as authz decides it in the list.
        if let Some(access) = &self.access
            && let Some(target) = list_target(&*self.catalog(), "tools", item, &self.config.flow)
        {
            let protocol = session.protocol_version().unwrap_or_default();
            let decided = access.decide(
                &session.client,
                (session.transport, &protocol, &session.id),
                Action::UseCode,
                &target,
            );
            if decided.is_some_and(|decision| !decision.allowed) {
                return;
            }
        }
        let tools = self.tools_for_code(session).await;
        item.put(&["description"], Value::from(described(&tools)));
    }

    /// Runs `portcullis__code`: the script, with the tools the client may
    /// call, its calls as the client's own. `Err(Cancelled)`: the client
    /// cancelled the call (no reply).
    pub(super) async fn run_script(
        self: &Arc<Self>,
        session: &Arc<Session>,
        exchange: &mut Exchange,
    ) -> Result<Value, Failure> {
        let Some(code) = &self.code else {
            return Err(Failure::MethodNotFound("tools/call".into()));
        };
        let id = exchange.message.get("id").cloned().unwrap_or(Value::Null);
        let script = exchange
            .message
            .at(&["params", "arguments", "script"])
            .and_then(Value::as_str)
            .ok_or_else(|| Failure::InvalidParams("`arguments.script` must be a string".into()))?
            .to_owned();
        let place = self.take_place(code, session)?;
        let script_id: Arc<str> = Arc::from(
            uuid::Uuid::new_v4()
                .simple()
                .to_string()
                .get(..16)
                .unwrap_or("script"),
        );
        note(exchange, "script", script_id.to_string());
        if code.config.recorded_source > 0 {
            // Scrubbed whole, then cut: a secret across the cut is found.
            let scrubbed = self.records.scrubbed(&script);
            let kept = protocol::cut(&scrubbed, code.config.recorded_source);
            note(exchange, "source", kept.to_owned());
        }
        // The client cancels it as any call: by its id.
        let stop = CancellationToken::new();
        let _stopped = stop.clone().drop_guard();
        let key = IdKey::from_value(&id);
        let Some(_registered) = session.register_call(key, stop.clone()) else {
            return Err(Failure::DuplicateId);
        };
        // Registered after the session closed: it ends now.
        if session.closed.is_cancelled() {
            return Err(Failure::Cancelled);
        }
        let tools = self.tools_for_code(session).await;
        let names: Vec<String> = tools
            .iter()
            .filter_map(|tool| tool.get("name").and_then(Value::as_str))
            .map(str::to_owned)
            .collect();
        let progress = exchange
            .message
            .at(&["params", "_meta", "progressToken"])
            .cloned()
            .map(|token| (id.clone(), token));
        let tracker = TaskTracker::new();
        let calls = Arc::new(Calls {
            gateway: self.clone(),
            session: session.clone(),
            script: script_id,
            runtime: tokio::runtime::Handle::current(),
            progress,
            answered: Arc::new(AtomicU32::new(0)),
            tracker: tracker.clone(),
            _place: place,
        });
        let limits = code.config.limits;
        let ended = match code
            .engine
            .start((script, names), limits, calls, stop.clone())
        {
            Ok(started) => started.await.unwrap_or_else(|_| {
                Err(RunError::Engine(
                    "the script's thread ended without a word".into(),
                ))
            }),
            Err(err) => Err(err),
        };
        // Its calls cut off by its end are stopped, and recorded, first.
        tracker.close();
        tracker.wait().await;
        if let Ok(outcome) = &ended {
            note(exchange, "calls", outcome.calls.to_string());
            note(exchange, "fuel", outcome.fuel.to_string());
        }
        note(exchange, "ended", ended_as(&ended).to_owned());
        if let Err(RunError::Engine(reason) | RunError::Trap(reason)) = &ended {
            tracing::warn!(%reason, "a code-mode script was stopped by the engine");
        }
        match ended {
            Err(RunError::Cancelled) => Err(Failure::Cancelled),
            ended => Ok(result_of(id, &ended)),
        }
    }

    /// A place for one more script of `session`'s client: the proxy's
    /// (`max_scripts`) and the client's own (`max_scripts_per_client`).
    fn take_place(self: &Arc<Self>, code: &CodeMode, session: &Session) -> Result<Place, Failure> {
        let client = session.client.name.clone();
        {
            let mut running = lock(&code.per_client);
            let count = running.entry(client.clone()).or_default();
            if *count >= code.config.max_scripts_per_client {
                return Err(Failure::TooManyScriptsOfClient(
                    code.config.max_scripts_per_client,
                ));
            }
            *count += 1;
        }
        let permit = code.running.clone().try_acquire_owned();
        let place = |permit| Place {
            gateway: self.clone(),
            client,
            _running: permit,
        };
        match permit {
            Ok(permit) => Ok(place(permit)),
            Err(_) => {
                code.release(&session.client.name);
                Err(Failure::TooManyScripts(code.config.max_scripts))
            }
        }
    }
}
