//! `schema`: `tools/call` arguments checked against the tool's listed
//! `inputSchema` (JSON Schema, the `jsonschema` crate) before they reach the
//! server, and results against its `outputSchema` before they reach the
//! client; tools whose schemas do not compile are withheld from lists and
//! their calls refused. `prompts/get` arguments are checked against the
//! prompt's declared arguments (all required ones given, no others, all
//! strings).
//!
//! Schemas come from servers, so they are untrusted: no remote or file
//! `$ref` is ever fetched (the crate is built without its resolvers), and
//! `pattern` uses the `regex` crate (linear time, no backtracking).
//!
//! A validator is compiled once per listed definition: the cache keeps, per
//! tool, the list it came from, and compiles again when a fresh list (after
//! `notifications/tools/list_changed`) carries the tool.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use jsonschema::{PatternOptions, Validator};
use serde_json::{Map, Value, json};

use crate::chain::{Annotation, Definition, DefinitionRef, Denial, Exchange, Interceptor, Verdict};
use crate::config::{OutputAction, SchemaConfig};
use crate::protocol::{At as _, Method, code};

/// At most this many violations are listed in a refusal.
const MOST_VIOLATIONS: usize = 20;
/// Cached validators past this many are dropped and compiled again as used.
const MOST_CACHED: usize = 10_000;

/// A compiled input schema, or why it does not compile.
type Compiled = Arc<Result<Validator, String>>;

struct Cached {
    /// The listed definition it was compiled from (not kept alive by the
    /// cache: a list replaced is freed, and its entries pruned first).
    definition: DefinitionRef,
    compiled: Compiled,
}

/// A listed tool's schemas, by their SHA-256 (not copies: a cache of ten
/// thousand tools holds no schema), and why it is withheld, if it is.
type Listed = ([u8; 32], Option<String>);

/// (server, tool, which schema).
type CacheKey = (Arc<str>, String, Which);

/// Which of a tool's schemas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Which {
    Input,
    Output,
}

impl Which {
    fn key(self) -> &'static str {
        match self {
            Self::Input => "inputSchema",
            Self::Output => "outputSchema",
        }
    }
}

#[derive(Default)]
pub struct Schema {
    /// What a result that breaks its output schema gets.
    output: OutputAction,
    /// (server, tool, which) → the compiled schema.
    compiled: RwLock<HashMap<CacheKey, Cached>>,
    /// Namespaced tool name → the input and output schemas a list carried,
    /// and why the tool is withheld, if it is (lists carry copies, so this
    /// compares schemas).
    listed: RwLock<HashMap<String, Listed>>,
}

/// Compiles a server's schema with the untrusted-input settings.
pub fn compile(schema: &Value) -> Result<Validator, String> {
    jsonschema::options()
        .with_pattern_options(PatternOptions::regex())
        .build(schema)
        .map_err(|err| err.masked().to_string())
}

impl Schema {
    pub fn new(config: &SchemaConfig) -> Self {
        Self {
            output: config.output,
            ..Self::default()
        }
    }

    /// A compiled schema of the tool an exchange calls; `None` if the tool
    /// lists none.
    fn compiled(
        &self,
        which: Which,
        server: &Arc<str>,
        tool: &str,
        definition: &Definition,
    ) -> Option<Compiled> {
        let schema = definition.get()?.get(which.key())?;
        let key = (server.clone(), tool.to_owned(), which);
        if let Ok(inputs) = self.compiled.read()
            && let Some(cached) = inputs.get(&key)
            && cached.definition.is(definition)
        {
            return Some(cached.compiled.clone());
        }
        let compiled: Compiled = Arc::new(compile(schema));
        if let Ok(mut inputs) = self.compiled.write() {
            if inputs.len() >= MOST_CACHED {
                // Those of lists no longer listed first, then all.
                inputs.retain(|_, cached| !cached.definition.is_gone());
                if inputs.len() >= MOST_CACHED {
                    inputs.clear();
                }
            }
            inputs.insert(
                key,
                Cached {
                    definition: definition.downgrade(),
                    compiled: compiled.clone(),
                },
            );
        }
        Some(compiled)
    }

    /// Why a listed tool is withheld, if it is: its schemas as a list
    /// carries them.
    fn list_problem(&self, name: &str, tool: &Value) -> Option<String> {
        // Their digest as sent (a server that reorders keys gets its
        // schemas compiled again, nothing worse).
        let schemas: [u8; 32] = {
            use sha2::Digest as _;
            let pair = (tool.get("inputSchema"), tool.get("outputSchema"));
            sha2::Sha256::digest(serde_json::to_vec(&pair).unwrap_or_default()).into()
        };
        if let Ok(listed) = self.listed.read()
            && let Some((seen, problem)) = listed.get(name)
            && *seen == schemas
        {
            return problem.clone();
        }
        let problem = problem_of(tool);
        if let Some(problem) = &problem {
            tracing::warn!(tool = name, %problem, "a tool is withheld: its schemas cannot be checked");
        }
        if let Ok(mut listed) = self.listed.write() {
            if listed.len() >= MOST_CACHED {
                listed.clear();
            }
            listed.insert(name.to_owned(), (schemas, problem.clone()));
        }
        problem
    }

    fn check_call(&self, exchange: &Exchange) -> Verdict {
        let context = &exchange.context;
        let (Some(server), Some(tool), Some(definition)) =
            (&context.server, &context.target, &context.definition)
        else {
            return Verdict::Continue;
        };
        let Some(compiled) = self.compiled(Which::Input, server, tool, definition) else {
            return Verdict::Deny(Denial::new(
                code::INVALID_PARAMS,
                "the tool lists no `inputSchema`: its calls cannot be checked",
            ));
        };
        let validator = match &*compiled {
            Ok(validator) => validator,
            Err(problem) => {
                return Verdict::Deny(
                    Denial::new(
                        code::DENIED,
                        "the tool's input schema does not compile: the tool is withheld",
                    )
                    .with("schema_error", problem.as_str()),
                );
            }
        };
        let empty = Value::Object(Map::new());
        let arguments = exchange
            .message
            .at(&["params", "arguments"])
            .unwrap_or(&empty);
        match violations(validator, arguments) {
            None => Verdict::Continue,
            Some((summary, violations)) => Verdict::Deny(
                Denial::new(
                    code::INVALID_PARAMS,
                    format!("the arguments do not match the tool's input schema: {summary}"),
                )
                .with("violations", violations),
            ),
        }
    }

    fn check_result(&self, exchange: &mut Exchange) -> Verdict {
        let context = &exchange.context;
        let (Some(server), Some(tool), Some(definition)) =
            (&context.server, &context.target, &context.definition)
        else {
            return Verdict::Continue;
        };
        let Some(result) = exchange.message.get("result") else {
            return Verdict::Continue; // a JSON-RPC error carries no result to check
        };
        let Some(result) = tool_result(&context.method, result) else {
            return Verdict::Continue; // a task, not (yet) a tool's result
        };
        if result.get("isError") == Some(&Value::Bool(true)) {
            return Verdict::Continue; // a tool error need not have the result's shape
        }
        let Some(compiled) = self.compiled(Which::Output, server, tool, definition) else {
            return Verdict::Continue; // no output schema declared
        };
        let found = match (&*compiled, result.get("structuredContent")) {
            (Err(problem), _) => Some((
                format!("the tool's output schema does not compile: {problem}"),
                Vec::new(),
            )),
            (Ok(_), None) => Some((
                "the tool declares an output schema but the result has no `structuredContent`"
                    .to_owned(),
                Vec::new(),
            )),
            (Ok(validator), Some(structured)) => violations(validator, structured),
        };
        let Some((summary, violations)) = found else {
            return Verdict::Continue;
        };
        let reason = format!("the result does not match the tool's output schema: {summary}");
        match self.output {
            OutputAction::Deny => {
                Verdict::Deny(Denial::new(code::DENIED, reason).with("violations", violations))
            }
            OutputAction::Log => {
                tracing::warn!(server = &**server, tool = tool.as_str(), %reason, "passed on (`[schema] output = \"log\"`)");
                exchange.annotations.push(Annotation {
                    interceptor: Arc::from("schema"),
                    key: "output_violation".into(),
                    value: summary,
                });
                Verdict::Continue
            }
        }
    }

    fn filter_tools(&self, exchange: &mut Exchange) -> Verdict {
        let Some(tools) = exchange
            .message
            .pointer_mut("/result/tools")
            .and_then(Value::as_array_mut)
        else {
            return Verdict::Continue;
        };
        tools.retain(|tool| {
            let name = tool.get("name").and_then(Value::as_str).unwrap_or_default();
            self.list_problem(name, tool).is_none()
        });
        Verdict::Continue
    }
}

/// Why a listed tool is withheld, if it is: it lists no input schema, or
/// one of its schemas does not compile.
pub fn problem_of(tool: &Value) -> Option<String> {
    let Some(input) = tool.get("inputSchema") else {
        return Some("the tool lists no `inputSchema`".into());
    };
    if let Err(problem) = compile(input) {
        return Some(format!("its input schema does not compile: {problem}"));
    }
    if let Some(output) = tool.get("outputSchema")
        && let Err(problem) = compile(output)
    {
        return Some(format!("its output schema does not compile: {problem}"));
    }
    None
}

/// `prompts/get` arguments against the prompt's listed `arguments`: every
/// required one given, no undeclared one, every value a string (as MCP
/// prompt arguments are).
fn check_prompt(exchange: &Exchange) -> Verdict {
    let Some(prompt) = exchange
        .context
        .definition
        .as_ref()
        .and_then(Definition::get)
    else {
        return Verdict::Continue;
    };
    let declared: Vec<(&str, bool)> = prompt
        .get("arguments")
        .and_then(Value::as_array)
        .map(|arguments| {
            arguments
                .iter()
                .filter_map(|a| {
                    let name = a.get("name")?.as_str()?;
                    Some((name, a.get("required") == Some(&Value::Bool(true))))
                })
                .collect()
        })
        .unwrap_or_default();
    let empty = Map::new();
    let given = match exchange.message.at(&["params", "arguments"]) {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(given)) => given,
        Some(_) => {
            return Verdict::Deny(
                Denial::new(
                    code::INVALID_PARAMS,
                    "the prompt's arguments must be an object",
                )
                .with(
                    "violations",
                    json!([{"path": "", "message": "not an object"}]),
                ),
            );
        }
    };
    let pointer = |name: &str| format!("/{}", name.replace('~', "~0").replace('/', "~1"));
    let mut violations = Vec::new();
    for (name, required) in &declared {
        if *required && !given.contains_key(*name) {
            violations.push(json!({"path": "", "message": format!("the required argument `{name}` is missing")}));
        }
    }
    for (name, value) in given {
        if !declared.iter().any(|(declared, _)| declared == name) {
            violations.push(
                json!({"path": pointer(name), "message": "the prompt declares no such argument"}),
            );
        } else if !value.is_string() {
            violations
                .push(json!({"path": pointer(name), "message": "a prompt argument is a string"}));
        }
    }
    violations.truncate(MOST_VIOLATIONS);
    match violations.first() {
        None => Verdict::Continue,
        Some(first) => {
            let reason = format!(
                "the arguments do not match the prompt's arguments: {}",
                describe(first)
            );
            Verdict::Deny(Denial::new(code::INVALID_PARAMS, reason).with("violations", violations))
        }
    }
}

/// A violation as a reason reads it: `PATH: MESSAGE` (`/` for the root).
fn describe(violation: &Value) -> String {
    let path = violation["path"].as_str().unwrap_or_default();
    let path = if path.is_empty() { "/" } else { path };
    format!(
        "{path}: {}",
        violation["message"].as_str().unwrap_or_default()
    )
}

/// `None` when `instance` is valid; otherwise a one-line summary and up to
/// [`MOST_VIOLATIONS`] violations as `{path, message}` (messages masked:
/// they never repeat the value).
fn violations(validator: &Validator, instance: &Value) -> Option<(String, Vec<Value>)> {
    if validator.is_valid(instance) {
        return None;
    }
    let mut listed = Vec::new();
    let mut total = 0;
    for error in validator.iter_errors(instance) {
        total += 1;
        if listed.len() < MOST_VIOLATIONS {
            listed.push(json!({
                "path": error.instance_path().as_str(),
                "message": error.masked().to_string(),
            }));
        }
    }
    let first = listed.first().map(describe).unwrap_or_default();
    let summary = if total > 1 {
        format!("{first} (and {} more)", total - 1)
    } else {
        first
    };
    Some((summary, listed))
}

impl Interceptor for Schema {
    fn name(&self) -> &str {
        "schema"
    }

    fn on_client_request(&self, exchange: &mut Exchange) -> Verdict {
        match exchange.context.method {
            Method::ToolsCall => self.check_call(exchange),
            Method::PromptsGet => check_prompt(exchange),
            _ => Verdict::Continue,
        }
    }

    fn on_server_response(&self, exchange: &mut Exchange) -> Verdict {
        match &exchange.context.method {
            Method::ToolsList => self.filter_tools(exchange),
            Method::ToolsCall | Method::TasksGet => self.check_result(exchange),
            _ => Verdict::Continue,
        }
    }
}

/// The tool's result in a reply to `method`: a call's result, or the
/// result of a task (2026-07-28) in the poll that finds it completed
/// (routing set the task's tool as the target). `None`: none in it (a call
/// answered with a task, a task still running).
fn tool_result<'a>(method: &Method, result: &'a Value) -> Option<&'a Value> {
    let says = |key: &str, value: &str| result.get(key).and_then(Value::as_str) == Some(value);
    match method {
        Method::ToolsCall if says("resultType", "task") => None,
        Method::ToolsCall => Some(result),
        Method::TasksGet if says("status", "completed") => result.get("result"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::{ClientIdentity, Context, Direction, Phase, Transport};

    fn call(list: &Arc<Vec<Value>>, arguments: Value) -> Exchange {
        let mut context = Context::new(
            "s".into(),
            ClientIdentity::new("c", &[]),
            Transport::Stdio,
            "tools/call",
        );
        context.server = Some("srv".into());
        context.target = Some("t".into());
        context.definition = Some(Definition::new(list.clone(), 0));
        Exchange::new(
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "srv__t", "arguments": arguments}}),
            Direction::ClientToServer,
            Phase::Request,
            context,
        )
    }

    fn tool(schema: Value) -> Arc<Vec<Value>> {
        Arc::new(vec![json!({"name": "t", "inputSchema": schema})])
    }

    #[test]
    fn arguments_are_refused_with_every_violation_as_a_pointer() {
        let schema = Schema::new(&SchemaConfig::default());
        let list = tool(json!({
            "type": "object",
            "properties": {
                "path": {"type": "string", "pattern": "^/workspace/"},
                "depth": {"type": "integer", "minimum": 0},
                "tags": {"type": "array", "items": {"type": "string"}}
            },
            "required": ["path"],
            "additionalProperties": false
        }));
        assert_eq!(
            schema.see(&mut call(
                &list,
                json!({"path": "/workspace/a", "depth": 2})
            )),
            Verdict::Continue
        );
        let Verdict::Deny(denial) = schema.see(&mut call(
            &list,
            json!({"path": "/etc/shadow", "depth": -1, "tags": ["a", 7], "extra": true}),
        )) else {
            panic!("invalid arguments pass");
        };
        assert_eq!(denial.code, code::INVALID_PARAMS);
        let Some(violations) = denial.data["violations"].as_array() else {
            panic!("no violations: {denial:?}");
        };
        let mut paths: Vec<&str> = violations
            .iter()
            .map(|v| v["path"].as_str().unwrap_or_default())
            .collect();
        paths.sort_unstable();
        assert_eq!(paths, ["", "/depth", "/path", "/tags/1"]);
        assert!(
            !denial.to_string_lossy().contains("/etc/shadow"),
            "values are masked: {denial:?}"
        );
        // No arguments at all: checked as `{}`.
        let mut missing = call(&list, Value::Null);
        missing.message["params"]
            .as_object_mut()
            .map(|p| p.remove("arguments"));
        let Verdict::Deny(denial) = schema.see(&mut missing) else {
            panic!("a missing required argument passes");
        };
        assert_eq!(denial.data["violations"][0]["path"], json!(""));
    }

    #[test]
    fn schemas_are_compiled_once_per_listed_definition() {
        let schema = Schema::new(&SchemaConfig::default());
        let strict = tool(json!({"type": "object", "required": ["a"]}));
        assert!(matches!(
            schema.see(&mut call(&strict, json!({}))),
            Verdict::Deny(_)
        ));
        // The same tool in a fresh list, with a looser schema.
        let loose = tool(json!({"type": "object"}));
        assert_eq!(schema.see(&mut call(&loose, json!({}))), Verdict::Continue);
        assert_eq!(schema.compiled.read().map(|i| i.len()).unwrap_or(0), 1);
    }

    #[test]
    fn a_schema_that_does_not_compile_withholds_the_tool() {
        let schema = Schema::new(&SchemaConfig::default());
        for bad in [
            json!({"type": "no-such-type"}),
            json!({"$ref": "https://attacker.example/schema.json"}),
            json!({"$ref": "file:///etc/passwd"}),
            json!({"type": "string", "pattern": "(unclosed"}),
        ] {
            let list = tool(bad.clone());
            let Verdict::Deny(denial) = schema.see(&mut call(&list, json!({}))) else {
                panic!("a call to a tool with schema {bad} passes");
            };
            assert_eq!(denial.code, code::DENIED, "{bad}");
            let mut reply = Exchange::new(
                json!({"jsonrpc": "2.0", "id": 2, "result": {"tools": [
                    {"name": "srv__bad", "inputSchema": bad},
                    {"name": "srv__good", "inputSchema": {"type": "object"}},
                    {"name": "srv__none"}
                ]}}),
                Direction::ClientToServer,
                Phase::Response,
                Context::new(
                    "s".into(),
                    ClientIdentity::new("c", &[]),
                    Transport::Stdio,
                    "tools/list",
                ),
            );
            assert_eq!(schema.see(&mut reply), Verdict::Continue);
            assert_eq!(
                reply.message["result"]["tools"],
                json!([{"name": "srv__good", "inputSchema": {"type": "object"}}]),
                "{bad}"
            );
        }
    }

    fn result(list: &Arc<Vec<Value>>, result: Value) -> Exchange {
        let mut exchange = call(list, json!({}));
        exchange.phase = Phase::Response;
        exchange.message = json!({"jsonrpc": "2.0", "id": 1, "result": result});
        exchange
    }

    #[test]
    fn results_are_checked_against_the_output_schema() {
        let list = Arc::new(vec![json!({
            "name": "t",
            "inputSchema": {"type": "object"},
            "outputSchema": {"type": "object", "properties": {"count": {"type": "integer"}}, "required": ["count"]}
        })]);
        let deny = Schema::new(&SchemaConfig::default());
        let good = json!({"content": [], "structuredContent": {"count": 3}});
        assert_eq!(deny.see(&mut result(&list, good)), Verdict::Continue);
        let Verdict::Deny(denial) = deny.see(&mut result(
            &list,
            json!({"content": [], "structuredContent": {"count": "three"}}),
        )) else {
            panic!("a result of the wrong shape passes");
        };
        assert_eq!(denial.code, code::DENIED);
        assert_eq!(denial.data["violations"][0]["path"], json!("/count"));
        assert!(!denial.reason.contains("three"), "{denial:?}");
        assert!(matches!(
            deny.see(&mut result(&list, json!({"content": []}))),
            Verdict::Deny(d) if d.reason.contains("no `structuredContent`")
        ));
        let tool_error = json!({"content": [{"type": "text", "text": "boom"}], "isError": true});
        assert_eq!(
            deny.see(&mut result(&list, tool_error)),
            Verdict::Continue,
            "a tool error need not have the result's shape"
        );

        let log = Schema::new(&SchemaConfig {
            enabled: true,
            output: OutputAction::Log,
        });
        let mut logged = result(&list, json!({"structuredContent": {}}));
        assert_eq!(log.see(&mut logged), Verdict::Continue);
        assert_eq!(logged.annotations.len(), 1);
        assert_eq!(logged.annotations[0].key, "output_violation");
    }

    #[test]
    fn a_tasks_result_is_checked_when_its_poll_finds_it_completed() {
        let list = Arc::new(vec![json!({
            "name": "t",
            "inputSchema": {"type": "object"},
            "outputSchema": {"type": "object", "required": ["count"]}
        })]);
        let deny = Schema::new(&SchemaConfig::default());
        // A call answered with a task has no result to check yet.
        let task =
            json!({"resultType": "task", "taskId": "portcullis-task-1", "status": "working"});
        assert_eq!(deny.see(&mut result(&list, task)), Verdict::Continue);
        let polled = |task: Value| {
            let mut exchange = result(&list, task);
            exchange.context.method = "tasks/get".into();
            exchange
        };
        let working = json!({"taskId": "portcullis-task-1", "status": "working"});
        assert_eq!(deny.see(&mut polled(working)), Verdict::Continue);
        let good = json!({"taskId": "portcullis-task-1", "status": "completed",
            "result": {"content": [], "structuredContent": {"count": 1}}});
        assert_eq!(deny.see(&mut polled(good)), Verdict::Continue);
        let bad = json!({"taskId": "portcullis-task-1", "status": "completed",
            "result": {"content": []}});
        assert!(matches!(
            deny.see(&mut polled(bad)),
            Verdict::Deny(d) if d.reason.contains("no `structuredContent`")
        ));
    }

    #[test]
    fn prompt_arguments_must_be_the_declared_ones() {
        let schema = Schema::new(&SchemaConfig::default());
        let list = Arc::new(vec![json!({"name": "greet", "arguments": [
            {"name": "name", "required": true}, {"name": "tone"}
        ]})]);
        let get = |arguments: Value| {
            let mut exchange = call(&list, Value::Null);
            exchange.context.method = "prompts/get".into();
            exchange.message = json!({"jsonrpc": "2.0", "id": 1, "method": "prompts/get",
                "params": {"name": "srv__greet", "arguments": arguments}});
            exchange
        };
        assert_eq!(
            schema.see(&mut get(json!({"name": "Bob", "tone": "warm"}))),
            Verdict::Continue
        );
        assert_eq!(
            schema.see(&mut get(json!({"name": "Bob"}))),
            Verdict::Continue
        );
        let Verdict::Deny(denial) = schema.see(&mut get(json!({"tone": 3, "a/b": "x"}))) else {
            panic!("bad prompt arguments pass");
        };
        assert_eq!(denial.code, code::INVALID_PARAMS);
        let mut paths: Vec<&str> = denial.data["violations"]
            .as_array()
            .map(|v| v.iter().filter_map(|v| v["path"].as_str()).collect())
            .unwrap_or_default();
        paths.sort_unstable();
        assert_eq!(paths, ["", "/a~1b", "/tone"], "{denial:?}");
    }

    trait Lossy {
        fn to_string_lossy(&self) -> String;
    }

    impl Lossy for Denial {
        fn to_string_lossy(&self) -> String {
            format!("{} {}", self.reason, Value::Object(self.data.clone()))
        }
    }
}
