//! `limits`: JSON-RPC 2.0 envelope validity and nesting depth.
//!
//! The size bound and the depth of bytes on the wire are enforced while the
//! transports read (a message over the bound is never held whole); this
//! interceptor checks what parsing cannot: that a message is a well-formed
//! JSON-RPC 2.0 envelope, and that a message an earlier interceptor rewrote
//! still nests no deeper than the limit.

use serde_json::Value;

use crate::chain::{Denial, Exchange, Interceptor, Verdict};
use crate::config::LimitsConfig;
use crate::protocol::{self, code};

pub struct Limits {
    max_depth: usize,
}

impl Limits {
    pub fn new(config: LimitsConfig) -> Self {
        Self {
            max_depth: config.max_depth,
        }
    }

    fn check(&self, message: &Value) -> Verdict {
        match envelope_problem(message) {
            Some(problem) => Verdict::Deny(Denial::new(code::INVALID_REQUEST, problem)),
            None if protocol::value_depth(message, self.max_depth) > self.max_depth => {
                Verdict::Deny(Denial::new(
                    code::INVALID_REQUEST,
                    format!("message nests deeper than {} levels", self.max_depth),
                ))
            }
            None => Verdict::Continue,
        }
    }
}

impl Interceptor for Limits {
    fn name(&self) -> &str {
        "limits"
    }

    fn on_client_request(&self, exchange: &mut Exchange) -> Verdict {
        self.check(&exchange.message)
    }

    fn on_server_response(&self, exchange: &mut Exchange) -> Verdict {
        self.check(&exchange.message)
    }

    fn on_server_request(&self, exchange: &mut Exchange) -> Verdict {
        self.check(&exchange.message)
    }

    fn on_client_response(&self, exchange: &mut Exchange) -> Verdict {
        self.check(&exchange.message)
    }

    fn on_notification(&self, exchange: &mut Exchange) -> Verdict {
        self.check(&exchange.message)
    }
}

/// What is wrong with a JSON-RPC 2.0 envelope, if anything.
pub fn envelope_problem(message: &Value) -> Option<&'static str> {
    let Some(object) = message.as_object() else {
        return Some("a message must be a JSON object");
    };
    if object.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Some("`jsonrpc` must be \"2.0\"");
    }
    let id_ok = |id: &Value| id.is_string() || id.is_i64() || id.is_u64();
    match object.get("method") {
        Some(method) => {
            match method.as_str() {
                None => return Some("`method` must be a string"),
                Some("") => return Some("`method` must not be empty"),
                Some(_) => {}
            }
            if let Some(id) = object.get("id")
                && !id_ok(id)
            {
                return Some("`id` must be a string or an integer");
            }
            match object.get("params") {
                None | Some(Value::Object(_)) | Some(Value::Array(_)) => {}
                Some(_) => return Some("`params` must be an object or an array"),
            }
            if object.contains_key("result") || object.contains_key("error") {
                return Some("a request must not carry `result` or `error`");
            }
        }
        None => {
            match object.get("id") {
                None => return Some("a message needs `method` (request) or `id` (response)"),
                Some(Value::Null) if object.contains_key("error") => {}
                Some(id) if id_ok(id) => {}
                Some(_) => return Some("`id` must be a string or an integer"),
            }
            match (object.get("result"), object.get("error")) {
                (Some(_), None) => {}
                (None, Some(error)) => {
                    let code_ok = error.get("code").is_some_and(|c| c.is_i64());
                    let message_ok = error.get("message").is_some_and(Value::is_string);
                    if !code_ok || !message_ok {
                        return Some("`error` needs an integer `code` and a string `message`");
                    }
                }
                _ => return Some("a response needs exactly one of `result` and `error`"),
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn valid_envelopes_pass() {
        for message in [
            json!({"jsonrpc":"2.0","id":1,"method":"ping"}),
            json!({"jsonrpc":"2.0","id":"a","method":"tools/call","params":{"name":"x"}}),
            json!({"jsonrpc":"2.0","method":"notifications/initialized"}),
            json!({"jsonrpc":"2.0","id":1,"result":{}}),
            json!({"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"x"}}),
        ] {
            assert_eq!(envelope_problem(&message), None, "{message}");
        }
    }

    #[test]
    fn invalid_envelopes_are_named() {
        for (message, expected) in [
            (json!([]), "a message must be a JSON object"),
            (json!({"id":1,"method":"ping"}), "`jsonrpc` must be \"2.0\""),
            (
                json!({"jsonrpc":"1.0","id":1,"method":"ping"}),
                "`jsonrpc` must be \"2.0\"",
            ),
            (
                json!({"jsonrpc":"2.0","id":1,"method":7}),
                "`method` must be a string",
            ),
            (
                json!({"jsonrpc":"2.0","id":1.5,"method":"ping"}),
                "`id` must be a string or an integer",
            ),
            (
                json!({"jsonrpc":"2.0","id":{},"method":"ping"}),
                "`id` must be a string or an integer",
            ),
            (
                json!({"jsonrpc":"2.0","id":1,"method":"ping","params":3}),
                "`params` must be an object or an array",
            ),
            (
                json!({"jsonrpc":"2.0"}),
                "a message needs `method` (request) or `id` (response)",
            ),
            (
                json!({"jsonrpc":"2.0","id":1}),
                "a response needs exactly one of `result` and `error`",
            ),
            (
                json!({"jsonrpc":"2.0","id":1,"error":{"code":"x","message":"m"}}),
                "`error` needs an integer `code` and a string `message`",
            ),
        ] {
            assert_eq!(envelope_problem(&message), Some(expected), "{message}");
        }
    }

    #[test]
    fn rewritten_messages_are_held_to_the_depth_limit() {
        let limits = Limits::new(LimitsConfig {
            max_message_bytes: 1024,
            max_depth: 4,
            ..LimitsConfig::default()
        });
        let shallow = json!({"jsonrpc":"2.0","id":1,"result":{"a":{"b":1}}});
        let deep = json!({"jsonrpc":"2.0","id":1,"result":{"a":{"b":{"c":{"d":1}}}}});
        assert_eq!(limits.check(&shallow), Verdict::Continue);
        assert!(matches!(limits.check(&deep), Verdict::Deny(_)));
    }
}
