//! What the 2026-07-28 revision adds to a message: the envelope a request
//! carries in `params._meta`, the protocol's own `_meta` keys, the methods it
//! has and has not, and the value of its `Mcp-Name` header.

use serde_json::{Map, Value};

use super::{LogLevel, param_str, params};

/// The stateless revision: no handshake, no session; every request carries
/// its version and the client's capabilities in `params._meta`.
pub const MODERN_VERSION: &str = "2026-07-28";

/// Every revision Portcullis speaks toward clients, newest first (what
/// `server/discover` and a `-32022` refusal list).
pub const ALL_VERSIONS: &[&str] = &[MODERN_VERSION, "2025-11-25", "2025-06-18", "2024-11-05"];

/// The `_meta` keys of the 2026-07-28 revision.
pub mod meta {
    /// A request's protocol version (required).
    pub const PROTOCOL_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
    /// A request's client capabilities (required; `{}` for none).
    pub const CLIENT_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";
    /// Who the client says it is (self-reported).
    pub const CLIENT_INFO: &str = "io.modelcontextprotocol/clientInfo";
    /// The least severe `notifications/message` the request wants.
    pub const LOG_LEVEL: &str = "io.modelcontextprotocol/logLevel";
    /// Who the server says it is, on results.
    pub const SERVER_INFO: &str = "io.modelcontextprotocol/serverInfo";
    /// The `subscriptions/listen` request a notification belongs to.
    pub const SUBSCRIPTION_ID: &str = "io.modelcontextprotocol/subscriptionId";
    /// The prefix of every key the protocol itself defines.
    pub const PREFIX: &str = "io.modelcontextprotocol/";
}

/// What a 2026-07-28 request says about itself in `params._meta`.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub version: String,
    pub capabilities: Map<String, Value>,
    /// The least severe log message the request wants, if it asked for any.
    pub log_level: Option<LogLevel>,
}

/// Why a request is not a well-formed 2026-07-28 request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error(
        "`params._meta` must carry `io.modelcontextprotocol/protocolVersion` (a string) and `io.modelcontextprotocol/clientCapabilities` (an object)"
    )]
    Missing,
    #[error("`params._meta.io.modelcontextprotocol/logLevel` is not a log level")]
    LogLevel,
}

/// The protocol version a request names in `params._meta`, if it names one
/// (whether or not the rest of its envelope is well formed).
pub fn envelope_version(message: &Value) -> Option<&str> {
    params(message)?
        .get("_meta")?
        .get(meta::PROTOCOL_VERSION)?
        .as_str()
}

/// A 2026-07-28 request's envelope, taken out of it. Its version (a
/// string) and capabilities (an object) are required; its log level, when
/// present, must be one. On success every key of the protocol's in
/// `params._meta` is moved out of the request (and `_meta` with them when
/// nothing else is left), so that what goes on is the request as a
/// session's client would send it. A refused request is left as it came.
pub fn take_envelope(message: &mut Value) -> Result<Envelope, EnvelopeError> {
    let params = message.get_mut("params").and_then(Value::as_object_mut);
    let Some(params) = params else {
        return Err(EnvelopeError::Missing);
    };
    let Some(Value::Object(found)) = params.get("_meta") else {
        return Err(EnvelopeError::Missing);
    };
    // Checked in one pass over the keys (no lookup, each of which hashes
    // the key), before anything is moved: a refused request is untouched.
    let (mut has_version, mut has_capabilities, mut log_level) = (false, false, Ok(None));
    for (key, value) in found.iter() {
        match key.as_str() {
            meta::PROTOCOL_VERSION => has_version = value.is_string(),
            meta::CLIENT_CAPABILITIES => has_capabilities = value.is_object(),
            meta::LOG_LEVEL => {
                let level = value.as_str().and_then(LogLevel::parse);
                log_level = level.map(Some).ok_or(EnvelopeError::LogLevel);
            }
            _ => {}
        }
    }
    // What is missing is said first, then a bad log level.
    if !(has_version && has_capabilities) {
        return Err(EnvelopeError::Missing);
    }
    let log_level = log_level?;
    let (mut version, mut capabilities) = (String::new(), Map::new());
    take_protocol_meta(params, |key, value| match (key, value) {
        (meta::PROTOCOL_VERSION, Value::String(taken)) => version = taken,
        (meta::CLIENT_CAPABILITIES, Value::Object(taken)) => capabilities = taken,
        _ => {}
    });
    Ok(Envelope {
        version,
        capabilities,
        log_level,
    })
}

/// Moves every key of the protocol's out of the `_meta` of a request's
/// `params`, in one pass, handing each to `take`; a `_meta` they leave
/// empty goes too. Whether there was any.
pub fn take_protocol_meta(
    params: &mut Map<String, Value>,
    mut take: impl FnMut(&str, Value),
) -> bool {
    let Some(Value::Object(found)) = params.get_mut("_meta") else {
        return false;
    };
    let before = found.len();
    found.retain(|key, value| {
        if !key.starts_with(meta::PREFIX) {
            return true;
        }
        take(key, value.take());
        false
    });
    if found.len() == before {
        return false;
    }
    if found.is_empty() {
        params.remove("_meta");
    }
    true
}

/// Puts `envelope`'s keys in a request's `params._meta` (made an object if
/// it was absent or not one), over any of the same name.
pub fn put_envelope(message: &mut Value, envelope: &Map<String, Value>) {
    let Some(request) = message.as_object_mut() else {
        return;
    };
    let params = request
        .entry("params")
        .or_insert_with(|| Value::Object(Map::new()));
    let Some(params) = params.as_object_mut() else {
        return;
    };
    let found = params
        .entry("_meta")
        .or_insert_with(|| Value::Object(Map::new()));
    if !found.is_object() {
        *found = Value::Object(Map::new());
    }
    if let Some(found) = found.as_object_mut() {
        for (key, value) in envelope {
            found.insert(key.clone(), value.clone());
        }
    }
}

/// Takes the protocol's own keys (`io.modelcontextprotocol/…`) out of a
/// message's `params._meta`: whether there were any.
pub fn strip_protocol_meta(message: &mut Value) -> bool {
    let found = message
        .get_mut("params")
        .and_then(|params| params.get_mut("_meta"))
        .and_then(Value::as_object_mut);
    let Some(found) = found else {
        return false;
    };
    let before = found.len();
    found.retain(|key, _| !key.starts_with(meta::PREFIX));
    found.len() != before
}

/// Takes the 2026-07-28 envelope's keys (version, client capabilities,
/// client info, log level) out of a message's `params._meta`.
pub fn strip_envelope_keys(message: &mut Value) {
    if let Some(found) = message
        .get_mut("params")
        .and_then(|params| params.get_mut("_meta"))
        .and_then(Value::as_object_mut)
    {
        for key in [
            meta::PROTOCOL_VERSION,
            meta::CLIENT_CAPABILITIES,
            meta::CLIENT_INFO,
            meta::LOG_LEVEL,
        ] {
            found.remove(key);
        }
    }
}

/// The tasks extension's name, in capabilities.
pub const TASKS_EXTENSION: &str = "io.modelcontextprotocol/tasks";

/// The 2026-07-28 `Mcp-Name` header's value for a request, when the
/// revision requires one: `params.name` of `tools/call` and `prompts/get`,
/// `params.uri` of `resources/read`. `Err` when the method needs one and the
/// body has none.
pub fn routing_name(message: &Value) -> Option<Result<&str, ()>> {
    let key = super::Method::of(message)?.routing_key()?;
    Some(param_str(message, key).ok_or(()))
}

/// An `Mcp-Name` header value for `text`, as the revision writes it:
/// plain visible ASCII as it is (no space at either end), anything else as
/// `=?base64?…?=` of its UTF-8.
pub fn encode_header_value(text: &str) -> String {
    use base64::Engine as _;
    let visible = text.bytes().all(|b| (0x20..=0x7e).contains(&b));
    if visible && text.trim() == text && !text.starts_with("=?") {
        return text.to_owned();
    }
    let encoded = base64::engine::general_purpose::STANDARD.encode(text.as_bytes());
    format!("=?base64?{encoded}?=")
}

/// An `Mcp-Name` (or `Mcp-Param-*`) header value decoded: plain visible
/// ASCII as it is, or `=?base64?…?=` holding UTF-8. `None` when it is
/// neither.
pub fn decode_header_value(value: &[u8]) -> Option<std::borrow::Cow<'_, str>> {
    use base64::Engine as _;
    let text = std::str::from_utf8(value).ok()?;
    if let Some(inner) = text
        .strip_prefix("=?base64?")
        .and_then(|rest| rest.strip_suffix("?="))
    {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(inner)
            .ok()?;
        return String::from_utf8(bytes).ok().map(std::borrow::Cow::Owned);
    }
    let visible = text.bytes().all(|b| (0x20..=0x7e).contains(&b));
    let trimmed = text.trim() == text;
    (visible && trimmed).then_some(std::borrow::Cow::Borrowed(text))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn an_envelope_is_moved_out_and_only_the_protocols_keys_go_with_it() {
        let mut request = json!({ "jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {
            "name": "echo",
            "_meta": {
                meta::PROTOCOL_VERSION: "2026-07-28",
                meta::CLIENT_CAPABILITIES: { "elicitation": {} },
                meta::CLIENT_INFO: { "name": "agent", "version": "1" },
                meta::LOG_LEVEL: "error",
                "io.modelcontextprotocol/somethingNew": true,
                "progressToken": 3,
            },
        }});
        let taken = take_envelope(&mut request).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(taken.version, "2026-07-28");
        assert_eq!(
            Value::Object(taken.capabilities),
            json!({ "elicitation": {} })
        );
        assert_eq!(taken.log_level, Some(LogLevel::Error));
        assert_eq!(
            request["params"],
            json!({ "name": "echo", "_meta": { "progressToken": 3 } })
        );
        let mut bad_level = json!({ "params": { "_meta": {
            meta::PROTOCOL_VERSION: "2026-07-28", meta::CLIENT_CAPABILITIES: {},
            meta::LOG_LEVEL: "shouting" } } });
        let sent = bad_level.clone();
        assert_eq!(take_envelope(&mut bad_level), Err(EnvelopeError::LogLevel));
        assert_eq!(bad_level, sent);
        let mut both_wrong = json!({ "params": { "_meta": {
            meta::CLIENT_CAPABILITIES: {}, meta::LOG_LEVEL: "shouting" } } });
        assert_eq!(take_envelope(&mut both_wrong), Err(EnvelopeError::Missing));
        let mut meta_not_object = json!({ "params": { "_meta": [1] } });
        assert_eq!(
            take_envelope(&mut meta_not_object),
            Err(EnvelopeError::Missing)
        );
    }
}
