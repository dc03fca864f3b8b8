//! `schema`: `tools/call` arguments checked against the tool's listed
//! `inputSchema` (JSON Schema, the `jsonschema` crate) before they reach the
//! server; tools whose schema does not compile are withheld from lists and
//! their calls refused.
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

use crate::chain::{Definition, Denial, Direction, Exchange, Interceptor, Phase, Verdict};
use crate::protocol::code;

/// At most this many violations are listed in a refusal.
const MOST_VIOLATIONS: usize = 20;
/// Cached validators past this many are dropped and compiled again as used.
const MOST_CACHED: usize = 10_000;

/// A compiled input schema, or why it does not compile.
type Compiled = Arc<Result<Validator, String>>;

struct Cached {
    /// The listed definition it was compiled from.
    definition: Definition,
    compiled: Compiled,
}

#[derive(Default)]
pub struct Schema {
    /// (server, tool) → its compiled input schema.
    inputs: RwLock<HashMap<(Arc<str>, String), Cached>>,
    /// Namespaced tool name → the schema a list carried and whether it
    /// compiles (lists carry copies, so this compares schemas).
    listed: RwLock<HashMap<String, (Value, Option<String>)>>,
}

/// Compiles a server's schema with the untrusted-input settings.
pub fn compile(schema: &Value) -> Result<Validator, String> {
    jsonschema::options()
        .with_pattern_options(PatternOptions::regex())
        .build(schema)
        .map_err(|err| err.masked().to_string())
}

impl Schema {
    pub fn new() -> Self {
        Self::default()
    }

    /// The compiled input schema of the tool an exchange calls.
    fn input(&self, server: &Arc<str>, tool: &str, definition: &Definition) -> Option<Compiled> {
        let key = (server.clone(), tool.to_owned());
        if let Ok(inputs) = self.inputs.read()
            && let Some(cached) = inputs.get(&key)
            && cached.definition.same_as(definition)
        {
            return Some(cached.compiled.clone());
        }
        let schema = definition.get()?.get("inputSchema")?;
        let compiled: Compiled = Arc::new(compile(schema));
        if let Ok(mut inputs) = self.inputs.write() {
            if inputs.len() >= MOST_CACHED {
                inputs.clear();
            }
            inputs.insert(
                key,
                Cached {
                    definition: definition.clone(),
                    compiled: compiled.clone(),
                },
            );
        }
        Some(compiled)
    }

    /// Why a listed tool's input schema does not compile, if it does not.
    fn list_problem(&self, name: &str, schema: Option<&Value>) -> Option<String> {
        let Some(schema) = schema else {
            return Some("the tool lists no `inputSchema`".into());
        };
        if let Ok(listed) = self.listed.read()
            && let Some((seen, problem)) = listed.get(name)
            && seen == schema
        {
            return problem.clone();
        }
        let problem = compile(schema).err();
        if let Some(problem) = &problem {
            tracing::warn!(tool = name, %problem, "a tool's input schema does not compile: the tool is withheld");
        }
        if let Ok(mut listed) = self.listed.write() {
            if listed.len() >= MOST_CACHED {
                listed.clear();
            }
            listed.insert(name.to_owned(), (schema.clone(), problem.clone()));
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
        let Some(compiled) = self.input(server, tool, definition) else {
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
            .pointer("/params/arguments")
            .unwrap_or(&empty);
        if validator.is_valid(arguments) {
            return Verdict::Continue;
        }
        let mut violations = Vec::new();
        let mut total = 0;
        for error in validator.iter_errors(arguments) {
            total += 1;
            if violations.len() < MOST_VIOLATIONS {
                violations.push(json!({
                    "path": error.instance_path().as_str(),
                    "message": error.masked().to_string(),
                }));
            }
        }
        let first = violations
            .first()
            .map(|v| {
                let path = v["path"].as_str().unwrap_or_default();
                let path = if path.is_empty() { "/" } else { path };
                format!("{path}: {}", v["message"].as_str().unwrap_or_default())
            })
            .unwrap_or_default();
        let reason = if total == 1 {
            format!("the arguments do not match the tool's input schema: {first}")
        } else {
            format!(
                "the arguments do not match the tool's input schema: {first} (and {} more)",
                total - 1
            )
        };
        Verdict::Deny(Denial::new(code::INVALID_PARAMS, reason).with("violations", violations))
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
            self.list_problem(name, tool.get("inputSchema")).is_none()
        });
        Verdict::Continue
    }
}

impl Interceptor for Schema {
    fn name(&self) -> &str {
        "schema"
    }

    fn on_request(&self, exchange: &mut Exchange) -> Verdict {
        if exchange.direction == Direction::ClientToServer
            && &*exchange.context.method == "tools/call"
        {
            return self.check_call(exchange);
        }
        Verdict::Continue
    }

    fn on_response(&self, exchange: &mut Exchange) -> Verdict {
        if exchange.direction == Direction::ClientToServer
            && exchange.phase == Phase::Response
            && &*exchange.context.method == "tools/list"
        {
            return self.filter_tools(exchange);
        }
        Verdict::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::{ClientIdentity, Context, Transport};

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
        let schema = Schema::new();
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
            schema.on_request(&mut call(
                &list,
                json!({"path": "/workspace/a", "depth": 2})
            )),
            Verdict::Continue
        );
        let Verdict::Deny(denial) = schema.on_request(&mut call(
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
        let Verdict::Deny(denial) = schema.on_request(&mut missing) else {
            panic!("a missing required argument passes");
        };
        assert_eq!(denial.data["violations"][0]["path"], json!(""));
    }

    #[test]
    fn schemas_are_compiled_once_per_listed_definition() {
        let schema = Schema::new();
        let strict = tool(json!({"type": "object", "required": ["a"]}));
        assert!(matches!(
            schema.on_request(&mut call(&strict, json!({}))),
            Verdict::Deny(_)
        ));
        // The same tool in a fresh list, with a looser schema.
        let loose = tool(json!({"type": "object"}));
        assert_eq!(
            schema.on_request(&mut call(&loose, json!({}))),
            Verdict::Continue
        );
        assert_eq!(schema.inputs.read().map(|i| i.len()).unwrap_or(0), 1);
    }

    #[test]
    fn a_schema_that_does_not_compile_withholds_the_tool() {
        let schema = Schema::new();
        for bad in [
            json!({"type": "no-such-type"}),
            json!({"$ref": "https://attacker.example/schema.json"}),
            json!({"$ref": "file:///etc/passwd"}),
            json!({"type": "string", "pattern": "(unclosed"}),
        ] {
            let list = tool(bad.clone());
            let Verdict::Deny(denial) = schema.on_request(&mut call(&list, json!({}))) else {
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
            assert_eq!(schema.on_response(&mut reply), Verdict::Continue);
            assert_eq!(
                reply.message["result"]["tools"],
                json!([{"name": "srv__good", "inputSchema": {"type": "object"}}]),
                "{bad}"
            );
        }
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
