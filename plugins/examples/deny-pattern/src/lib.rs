//! Denies `tools/call` requests whose arguments match a configured pattern.
//!
//! ```toml
//! [[chain]]
//! kind = "wasm"
//! path = "plugins/examples/deny-pattern/deny_pattern.wasm"
//! methods = ["tools/call"]
//! phases = ["request"]
//! config = { patterns = ['rm\s+-rf', '(?i)drop\s+table'] }
//! ```
//!
//! Every string in `params.arguments` — keys and values, at any depth, as
//! decoded JSON (so `\u` escapes cannot hide a match) — is matched against
//! each pattern (the `regex` crate's syntax). The first match refuses the call with
//! `code` (default 4003) and `message`; the audit record gets the pattern's
//! index, never the text that matched.

wit_bindgen::generate!({ path: "../../wit", world: "interceptor" });

use std::sync::OnceLock;

use exports::portcullis::interceptor::handler::{Context, Denial, Guest, Outcome, Phase, Verdict};
use portcullis::interceptor::host;
use regex_automata::nfa::thompson::pikevm::{Cache, PikeVM};
use serde_json::Value;

struct Config {
    patterns: Vec<PikeVM>,
    code: i32,
    message: String,
}

static CONFIG: OnceLock<Config> = OnceLock::new();

fn parse(config_json: &str) -> Result<Config, String> {
    let config: Value =
        serde_json::from_str(config_json).map_err(|err| format!("config is not JSON: {err}"))?;
    let patterns = match config.get("patterns") {
        Some(Value::Array(patterns)) if !patterns.is_empty() => patterns,
        _ => return Err("`patterns` must be a non-empty list of regular expressions".into()),
    };
    let mut compiled = Vec::with_capacity(patterns.len());
    for (index, pattern) in patterns.iter().enumerate() {
        let Some(text) = pattern.as_str() else {
            return Err(format!("patterns[{index}] is not a string"));
        };
        let regex =
            PikeVM::new(text).map_err(|err| format!("patterns[{index}] `{text}`: {err}"))?;
        compiled.push(regex);
    }
    let message = match config.get("message") {
        None => "the arguments match a forbidden pattern".to_owned(),
        Some(Value::String(message)) => message.clone(),
        Some(_) => return Err("`message` must be a string".into()),
    };
    let code = match config.get("code") {
        None => 4003,
        Some(code) => match code.as_i64().and_then(|c| i32::try_from(c).ok()) {
            Some(code) if !(-32768..=-32000).contains(&code) => code,
            _ => return Err("`code` must be an integer outside -32768..=-32000".into()),
        },
    };
    Ok(Config {
        patterns: compiled,
        code,
        message,
    })
}

/// The index of the first pattern any string in `value` matches.
fn first_match(value: &Value, patterns: &[PikeVM], caches: &mut [Cache]) -> Option<usize> {
    match value {
        Value::String(text) => matches(text, patterns, caches),
        Value::Array(items) => items
            .iter()
            .find_map(|item| first_match(item, patterns, caches)),
        Value::Object(map) => map.iter().find_map(|(key, item)| {
            matches(key, patterns, caches).or_else(|| first_match(item, patterns, caches))
        }),
        _ => None,
    }
}

fn matches(text: &str, patterns: &[PikeVM], caches: &mut [Cache]) -> Option<usize> {
    patterns
        .iter()
        .zip(caches.iter_mut())
        .position(|(pattern, cache)| pattern.is_match(cache, text))
}

fn pass() -> Outcome {
    Outcome {
        verdict: Verdict::Continue,
        annotations: Vec::new(),
    }
}

struct DenyPattern;

impl Guest for DenyPattern {
    fn configure(config_json: String) -> Result<(), String> {
        let config = parse(&config_json)?;
        CONFIG
            .set(config)
            .map_err(|_| "configure was called twice".to_owned())
    }

    fn on_message(phase: Phase, context: Context, payload_json: String) -> Outcome {
        let Some(config) = CONFIG.get() else {
            return pass();
        };
        if phase != Phase::Request || context.method != "tools/call" {
            return pass();
        }
        let Ok(message) = serde_json::from_str::<Value>(&payload_json) else {
            return pass();
        };
        let Some(arguments) = message.pointer("/params/arguments") else {
            return pass();
        };
        let mut caches: Vec<Cache> = config.patterns.iter().map(PikeVM::create_cache).collect();
        match first_match(arguments, &config.patterns, &mut caches) {
            None => pass(),
            Some(index) => {
                host::counter_add("denied", 1);
                host::log(
                    host::Level::Info,
                    &format!(
                        "refused a call of {} by {}: pattern {index}",
                        context.target.as_deref().unwrap_or("?"),
                        context.client
                    ),
                );
                Outcome {
                    verdict: Verdict::Deny(Denial {
                        code: config.code,
                        message: config.message.clone(),
                    }),
                    annotations: vec![("pattern".into(), index.to_string())],
                }
            }
        }
    }
}

export!(DenyPattern);
