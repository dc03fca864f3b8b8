//! JSON-RPC 2.0 envelopes and MCP message classification.
//!
//! Messages travel through Portcullis as `serde_json::Value`s and are never
//! re-serialized from typed structs: typed round trips drop unknown fields and
//! custom annotation keys. Everything here reads a value; nothing rewrites one
//! except the small helpers that build Portcullis's own replies.

mod budget;
mod framing;
mod method;
mod modern;
mod shown;

pub use budget::{ByteBudget, Held, held_bytes};
pub use framing::{Frame, FrameReader, HEAD_BYTES, encode_line, write_message};
pub use method::{List, Method};
pub use modern::{
    ALL_VERSIONS, Envelope, EnvelopeError, MODERN_VERSION, TASKS_EXTENSION, decode_header_value,
    encode_header_value, envelope_version, meta, put_envelope, routing_name, strip_envelope_keys,
    strip_protocol_meta, take_envelope, take_protocol_meta,
};
#[cfg(test)]
pub(crate) use shown::nothing_hidden;
pub use shown::{is_hidden, is_invisible, shown, shown_json};

use serde_json::{Map, Value, json};

/// JSON-RPC and Portcullis error codes. The `-320xx` codes are Portcullis's
/// own, in the range JSON-RPC reserves for implementation-defined server errors.
pub mod code {
    pub const PARSE_ERROR: i64 = -32700;
    pub const INVALID_REQUEST: i64 = -32600;
    pub const METHOD_NOT_FOUND: i64 = -32601;
    pub const INVALID_PARAMS: i64 = -32602;
    pub const INTERNAL_ERROR: i64 = -32603;
    /// An interceptor refused the message (`data.interceptor` names it).
    pub const DENIED: i64 = -32010;
    /// The server behind the proxy is not running or its connection failed.
    pub const UPSTREAM_UNAVAILABLE: i64 = -32011;
    /// The server did not answer within the call timeout; it was sent
    /// `notifications/cancelled`.
    pub const UPSTREAM_TIMEOUT: i64 = -32012;
    /// The client the request was meant for cannot take it (no session, or
    /// it did not declare the capability).
    pub const CLIENT_UNAVAILABLE: i64 = -32013;
    /// The audit log cannot record the exchange: the call is refused.
    pub const AUDIT_UNAVAILABLE: i64 = -32014;
    /// A quota is used up (`data.retry_after_ms` says when to try again).
    pub const RATE_LIMITED: i64 = -32015;
    /// A WASM plugin failed (trapped, overran, or answered nonsense) and its
    /// `on_error` is `deny`, or its circuit breaker is open.
    pub const PLUGIN_FAILED: i64 = -32016;
    /// 2026-07-28: an HTTP header does not say what the body says (or a
    /// required one is missing).
    pub const HEADER_MISMATCH: i64 = -32020;
    /// 2026-07-28: the request needs a capability or extension the client
    /// did not declare on it (`data.requiredCapabilities` says which).
    pub const EXTENSION_REQUIRED: i64 = -32021;
    /// 2026-07-28: the request's protocol version is not one the proxy speaks
    /// (`data.supported` lists those it does).
    pub const UNSUPPORTED_PROTOCOL_VERSION: i64 = -32022;
}

/// The MCP protocol revisions with the `initialize` handshake that Portcullis
/// speaks toward clients, newest first.
/// 2024-11-05 is that of HTTP+SSE clients (`[listener] sse`); what it
/// lacks of the newer ones, a client of it ignores.
pub const SUPPORTED_VERSIONS: &[&str] = &["2025-11-25", "2025-06-18", "2024-11-05"];

/// The revision Portcullis offers when a client asks for one it does not know,
/// and the one it asks upstream servers for.
pub const LATEST_VERSION: &str = "2025-11-25";

/// The handshake revision a client asking for `requested` gets: that one
/// if the proxy speaks it, else [`LATEST_VERSION`].
pub fn negotiated_version(requested: &str) -> &'static str {
    SUPPORTED_VERSIONS
        .iter()
        .find(|known| **known == requested)
        .copied()
        .unwrap_or(LATEST_VERSION)
}

/// What a JSON-RPC message is, judged from the members it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Request,
    Notification,
    Response,
    ErrorResponse,
}

/// Classifies a message leniently: the `limits` interceptor checks the
/// envelope strictly; this only decides which path a message takes.
pub fn classify(message: &Value) -> Option<Kind> {
    let object = message.as_object()?;
    let has_method = object.get("method").is_some_and(Value::is_string);
    let has_id = object.contains_key("id");
    match (has_method, has_id) {
        (true, true) => Some(Kind::Request),
        (true, false) => Some(Kind::Notification),
        (false, true) if object.contains_key("error") => Some(Kind::ErrorResponse),
        (false, true) if object.contains_key("result") => Some(Kind::Response),
        _ => None,
    }
}

pub fn method(message: &Value) -> Option<&str> {
    message.get("method").and_then(Value::as_str)
}

pub fn id(message: &Value) -> Option<&Value> {
    message.get("id")
}

/// What is at a path of object keys in a value: what `Value::pointer`
/// finds for `/a/b`, without the two copies of each key it makes to
/// unescape it (a cost on every message, for paths that need no escape).
pub trait At {
    fn at(&self, path: &[&str]) -> Option<&Value>;
    /// Sets the value at `path`, making objects of nulls on the way, as
    /// `value["a"]["b"] = new` does; but where a step is neither an object
    /// nor null (a peer's `"params": "x"`), sets nothing and says so where
    /// indexing would panic.
    fn put(&mut self, path: &[&str], new: Value) -> bool;
}

impl At for Value {
    fn at(&self, path: &[&str]) -> Option<&Value> {
        path.iter().try_fold(self, |found, key| found.get(*key))
    }

    fn put(&mut self, path: &[&str], new: Value) -> bool {
        let mut here = self;
        let Some((last, steps)) = path.split_last() else {
            *here = new;
            return true;
        };
        // A key there is written in place: `entry` and `insert` make room
        // for one more first, which rehashes a full map (a reply's three
        // keys) on every call (`scripts/instructions-per-call.sh`).
        for key in steps {
            if here.is_null() {
                *here = Value::Object(Map::new());
            }
            let Some(object) = here.as_object_mut() else {
                return false;
            };
            if !object.contains_key(*key) {
                object.insert((*key).to_owned(), Value::Null);
            }
            let Some(next) = object.get_mut(*key) else {
                return false;
            };
            here = next;
        }
        if here.is_null() {
            *here = Value::Object(Map::new());
        }
        let Some(object) = here.as_object_mut() else {
            return false;
        };
        match object.get_mut(*last) {
            Some(slot) => *slot = new,
            None => {
                object.insert((*last).to_owned(), new);
            }
        }
        true
    }
}

pub fn params(message: &Value) -> Option<&Map<String, Value>> {
    message.get("params").and_then(Value::as_object)
}

/// A string parameter of a request, e.g. `name` of `tools/call`.
pub fn param_str<'a>(message: &'a Value, key: &str) -> Option<&'a str> {
    params(message)
        .and_then(|params| params.get(key))
        .and_then(Value::as_str)
}

/// `params._meta.progressToken`, if the sender asked for progress.
pub fn progress_token(message: &Value) -> Option<&Value> {
    params(message)?.get("_meta")?.get("progressToken")
}

pub fn request(id: Value, method: &str, params: Value) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params })
}

pub fn notification(method: &str, params: Value) -> Value {
    json!({ "jsonrpc": "2.0", "method": method, "params": params })
}

pub fn result(id: Value, result: Value) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "result": result })
}

/// An error response. `message` must be safe to show a client: no policy
/// internals, no secrets.
pub fn error(id: Value, code: i64, message: &str, data: Option<Value>) -> Value {
    let mut error = Map::with_capacity(3);
    error.insert("code".into(), Value::from(code));
    error.insert("message".into(), Value::from(message));
    if let Some(data) = data {
        error.insert("data".into(), data);
    }
    json!({ "jsonrpc": "2.0", "id": id, "error": error })
}

/// Why a line of input is not a message we can handle.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("message exceeds {limit} bytes")]
    TooLarge { limit: usize },
    #[error("message nests deeper than {limit} levels")]
    TooDeep { limit: usize },
    #[error("invalid JSON: {0}")]
    Json(String),
    #[error("batches are not supported; send one JSON-RPC message at a time")]
    Batch,
}

impl ParseError {
    pub fn code(&self) -> i64 {
        match self {
            Self::Json(_) => code::PARSE_ERROR,
            Self::TooLarge { .. } | Self::TooDeep { .. } | Self::Batch => code::INVALID_REQUEST,
        }
    }

    /// The JSON-RPC error reply for this input. Size and depth are the
    /// `limits` interceptor's rules, enforced here because they must hold
    /// before the bytes are parsed at all.
    pub fn to_response(&self, id: Value) -> Value {
        let data = match self {
            Self::TooLarge { .. } | Self::TooDeep { .. } => {
                Some(json!({ "interceptor": "limits" }))
            }
            _ => None,
        };
        error(id, self.code(), &self.to_string(), data)
    }
}

/// Parses one message, refusing nesting deeper than `max_depth` before
/// serde_json recurses into it.
pub fn parse(bytes: &[u8], max_depth: usize) -> Result<Value, ParseError> {
    if nesting_depth(bytes, max_depth) > max_depth {
        return Err(ParseError::TooDeep { limit: max_depth });
    }
    let value: Value =
        serde_json::from_slice(bytes).map_err(|err| ParseError::Json(err.to_string()))?;
    if value.is_array() {
        return Err(ParseError::Batch);
    }
    Ok(value)
}

/// The deepest nesting of arrays and objects in `bytes`, stopping early once
/// it passes `stop_after`. Brackets inside strings do not count.
pub fn nesting_depth(bytes: &[u8], stop_after: usize) -> usize {
    let mut depth = 0usize;
    let mut deepest = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &byte in bytes {
        if in_string {
            if escaped {
                escaped = false;
            } else if byte == b'\\' {
                escaped = true;
            } else if byte == b'"' {
                in_string = false;
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > deepest {
                    deepest = depth;
                    if deepest > stop_after {
                        return deepest;
                    }
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// The nesting depth of an already parsed value (used on messages that an
/// interceptor rewrote, which never went through [`parse`]).
pub fn value_depth(value: &Value, stop_after: usize) -> usize {
    fn walk(value: &Value, depth: usize, stop_after: usize) -> usize {
        if depth > stop_after {
            return depth;
        }
        match value {
            Value::Array(items) => items
                .iter()
                .map(|item| walk(item, depth + 1, stop_after))
                .max()
                .unwrap_or(depth + 1),
            Value::Object(map) => map
                .values()
                .map(|item| walk(item, depth + 1, stop_after))
                .max()
                .unwrap_or(depth + 1),
            _ => depth,
        }
    }
    walk(value, 0, stop_after)
}

/// The top-level `id` of a message from its first bytes (of a message too
/// large to parse), when it is there: a number or a string without escapes.
/// Keys inside nested objects and text inside strings do not count.
pub fn sniff_id(head: &[u8]) -> Option<Value> {
    let rest = head.get(top_level_value(head, b"id")?..)?;
    let len = if rest.first() == Some(&b'"') {
        rest.iter().skip(1).position(|&c| c == b'"' || c == b'\\')? + 2
    } else {
        rest.iter()
            .position(|&c| c == b',' || c == b'}' || c.is_ascii_whitespace())?
    };
    serde_json::from_slice::<Value>(rest.get(..len)?)
        .ok()
        .filter(|id| id.is_string() || id.is_number())
}

/// The id to answer a refused message with: its top-level `id` when its
/// bytes show one and it is a request (has a `method`), else `null`. A
/// message refused for its size, depth or syntax still ends its caller's
/// wait this way.
pub fn refusal_id(bytes: &[u8]) -> Value {
    if !sniff_has_method(bytes) {
        return Value::Null;
    }
    sniff_id(bytes).unwrap_or(Value::Null)
}

/// Whether the first bytes of a message show a top-level `method`: a
/// request or notification, not a response.
pub fn sniff_has_method(head: &[u8]) -> bool {
    top_level_value(head, b"method").is_some()
}

/// Where the value of the top-level member `key` starts in `head`.
fn top_level_value(head: &[u8], key: &[u8]) -> Option<usize> {
    let skip_space = |mut at: usize| {
        while head.get(at).is_some_and(u8::is_ascii_whitespace) {
            at += 1;
        }
        at
    };
    let mut depth = 0usize;
    let mut at = 0;
    while let Some(&byte) = head.get(at) {
        match byte {
            b'"' => {
                let start = at + 1;
                let mut end = start;
                let mut escaped = false;
                loop {
                    let &c = head.get(end)?;
                    if escaped {
                        escaped = false;
                    } else if c == b'\\' {
                        escaped = true;
                    } else if c == b'"' {
                        break;
                    }
                    end += 1;
                }
                at = end + 1;
                // Only a key is followed by `:`.
                let colon = skip_space(at);
                if depth == 1 && head.get(start..end) == Some(key) && head.get(colon) == Some(&b':')
                {
                    return Some(skip_space(colon + 1));
                }
                continue;
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
        at += 1;
    }
    None
}

/// Request ids as map keys: JSON-RPC allows strings and integers, and a
/// client may reuse the same number as a string.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum IdKey {
    Number(i64),
    Unsigned(u64),
    String(String),
}

impl IdKey {
    pub fn from_value(value: &Value) -> Option<Self> {
        match value {
            Value::String(text) => Some(Self::String(text.clone())),
            Value::Number(number) => number
                .as_i64()
                .map(Self::Number)
                .or_else(|| number.as_u64().map(Self::Unsigned)),
            _ => None,
        }
    }
}

/// Parses `YYYY-MM-DDThh:mm:ssZ` (UTC), with optional milliseconds
/// (`…ss.mmmZ`, one to three digits: the audit timestamps), from 1970 on.
/// A date the calendar does not have (31 February, 29 February of a
/// common year) is `None`, as is any other shape.
///
/// jiff reads the date, after a check of the shape: its parser takes more
/// than this one (an offset, a space or a lowercase `t` for the `T`, a time
/// without seconds, nine fraction digits, the basic format), while the
/// audit filters, the console and the policy fixtures say they take this
/// one, and the audit filters compare milliseconds (a fourth digit would be
/// cut off, not compared). A leap second (`:60`) is read as the second
/// before it, as jiff reads it.
pub fn parse_datetime(text: &str) -> Option<std::time::SystemTime> {
    if !is_utc_datetime(text) {
        return None;
    }
    let time: jiff::Timestamp = text.parse().ok()?;
    // Before 1970 is no time a request or an audit record has.
    (time >= jiff::Timestamp::UNIX_EPOCH).then(|| time.into())
}

/// Whether `text` is shaped `YYYY-MM-DDThh:mm:ss`, then nothing or `.` and
/// one to three digits, then `Z` (digits where the pattern has `0`).
fn is_utc_datetime(text: &str) -> bool {
    const SHAPE: &[u8] = b"0000-00-00T00:00:00";
    let Some((head, tail)) = text.as_bytes().split_at_checked(SHAPE.len()) else {
        return false;
    };
    let head_fits = head.iter().zip(SHAPE).all(|(byte, shape)| match shape {
        b'0' => byte.is_ascii_digit(),
        _ => byte == shape,
    });
    let tail_fits = match tail {
        [b'Z'] => true,
        [b'.', digits @ .., b'Z'] => {
            (1..=3).contains(&digits.len()) && digits.iter().all(u8::is_ascii_digit)
        }
        _ => false,
    };
    head_fits && tail_fits
}

/// Now, in whole seconds since 1970 (what tokens' `exp` counts): 0 on a
/// clock set before 1970.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// `time` as jiff writes it: a time before 1970 (which no request or
/// record has) is written as 1970, one past what jiff holds (the year
/// 9999) as its last.
fn utc(time: std::time::SystemTime) -> jiff::Timestamp {
    if time < std::time::UNIX_EPOCH {
        return jiff::Timestamp::UNIX_EPOCH;
    }
    jiff::Timestamp::try_from(time).unwrap_or(jiff::Timestamp::MAX)
}

/// A time as `YYYY-MM-DDThh:mm:ssZ` (UTC, the fraction cut off): a Cedar
/// `datetime` literal, one per request on the authorization path (jiff
/// writes it faster than the hand-written civil-date conversion did).
pub fn datetime_literal(time: std::time::SystemTime) -> String {
    format!("{:.0}", utc(time))
}

/// A time as `YYYY-MM-DDThh:mm:ss.mmmZ` (UTC, milliseconds cut off): the
/// audit timestamps.
pub fn datetime_millis(time: std::time::SystemTime) -> String {
    format!("{:.3}", utc(time))
}

/// `text` cut at a character boundary at or below `most` bytes.
pub fn cut(text: &str, most: usize) -> &str {
    let mut end = text.len().min(most);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The severity of a log message (`notifications/message`), RFC 5424's
/// levels from the least to the most severe, as MCP names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogLevel {
    Debug,
    Info,
    Notice,
    Warning,
    Error,
    Critical,
    Alert,
    Emergency,
}

impl LogLevel {
    pub const ALL: [LogLevel; 8] = [
        Self::Debug,
        Self::Info,
        Self::Notice,
        Self::Warning,
        Self::Error,
        Self::Critical,
        Self::Alert,
        Self::Emergency,
    ];

    /// The level MCP names `name` (exactly, lowercase).
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|level| level.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Debug => "debug",
            Self::Info => "info",
            Self::Notice => "notice",
            Self::Warning => "warning",
            Self::Error => "error",
            Self::Critical => "critical",
            Self::Alert => "alert",
            Self::Emergency => "emergency",
        }
    }

    /// The level of a `notifications/message` (`params.level`), if it names one.
    pub fn of_message(message: &Value) -> Option<Self> {
        param_str(message, "level").and_then(Self::parse)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn put_writes_through_objects_and_nulls_and_refuses_anything_else() {
        use super::At as _;
        let mut message = serde_json::json!({ "id": 1, "params": { "name": "a__b" } });
        assert!(message.put(&["params", "name"], "b".into()));
        assert!(message.put(&["params", "_meta", "progressToken"], 7.into()));
        assert_eq!(
            message,
            serde_json::json!({ "id": 1, "params": { "name": "b", "_meta": { "progressToken": 7 } } })
        );
        let mut null = serde_json::Value::Null;
        assert!(null.put(&["id"], 2.into()));
        assert_eq!(null, serde_json::json!({ "id": 2 }));
        // Where indexing would panic: nothing set, the value as it was.
        for hostile in [
            serde_json::json!({ "params": "x" }),
            serde_json::json!({ "params": [1, 2] }),
            serde_json::json!({ "params": { "ref": 3 } }),
            serde_json::json!("a string"),
        ] {
            let mut value = hostile.clone();
            assert!(
                !value.put(&["params", "ref", "name"], "n".into()),
                "{hostile}"
            );
            assert_eq!(value, hostile);
        }
    }

    #[test]
    fn datetimes_are_read_in_one_shape_and_only_on_the_calendar() {
        let at = |seconds: u64, millis: u64| {
            Some(
                std::time::UNIX_EPOCH
                    + std::time::Duration::from_secs(seconds)
                    + std::time::Duration::from_millis(millis),
            )
        };
        // 2026-11-23T07:00:00Z, with one to three fraction digits.
        assert_eq!(parse_datetime("2026-11-23T07:00:00Z"), at(1_795_417_200, 0));
        assert_eq!(
            parse_datetime("2026-11-23T07:00:00.5Z"),
            at(1_795_417_200, 500)
        );
        assert_eq!(
            parse_datetime("2026-11-23T07:00:00.05Z"),
            at(1_795_417_200, 50)
        );
        assert_eq!(
            parse_datetime("2026-11-23T07:00:00.123Z"),
            at(1_795_417_200, 123)
        );
        assert_eq!(parse_datetime("1970-01-01T00:00:00Z"), at(0, 0));
        // A leap day, and the end of a 31-day month.
        assert_eq!(parse_datetime("2000-02-29T12:34:56Z"), at(951_827_696, 0));
        assert_eq!(parse_datetime("2024-02-29T00:00:00Z"), at(1_709_164_800, 0));
        assert_eq!(parse_datetime("2026-12-31T23:59:59Z"), at(1_798_761_599, 0));
        // A leap second is the second before it (it was the one after).
        assert_eq!(parse_datetime("2016-12-31T23:59:60Z"), at(1_483_228_799, 0));
        for refused in [
            // Days the calendar does not have.
            "2026-02-31T00:00:00Z",
            "2026-02-30T00:00:00Z",
            "2026-02-29T00:00:00Z",
            "2100-02-29T00:00:00Z",
            "2026-04-31T00:00:00Z",
            "2026-00-10T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-11-00T00:00:00Z",
            "2026-11-23T24:00:00Z",
            "2026-11-23T23:60:00Z",
            // Before 1970.
            "1969-12-31T23:59:59Z",
            // Other shapes jiff would read: an offset, no `Z`, a space or a
            // lowercase letter, no seconds, more than three fraction digits
            // (the audit filters compare milliseconds), the basic format.
            "2026-11-23T07:00:00+02:00",
            "2026-11-23T07:00:00",
            "2026-11-23 07:00:00Z",
            "2026-11-23t07:00:00z",
            "2026-11-23T07:00Z",
            "2026-11-23T07:00:00.1234Z",
            "2026-11-23T07:00:00,5Z",
            "2026-11-23T07:00:00.Z",
            "20261123T070000Z",
            "+2026-11-23T07:00:00Z",
            "2026-1-23T07:00:00Z",
            "2026-11-23T07:00:00Z[UTC]",
            " 2026-11-23T07:00:00Z",
            "２０２６-11-23T07:00:00Z",
            "",
        ] {
            assert_eq!(parse_datetime(refused), None, "{refused:?}");
        }
    }

    #[test]
    fn datetimes_are_utc_literals() {
        assert_eq!(
            datetime_literal(std::time::UNIX_EPOCH),
            "1970-01-01T00:00:00Z"
        );
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_795_417_200); // 2026-11-23T07:00:00Z
        assert_eq!(datetime_literal(t), "2026-11-23T07:00:00Z");
        let leap = std::time::UNIX_EPOCH + std::time::Duration::from_secs(951_827_696); // 2000-02-29T12:34:56Z
        assert_eq!(datetime_literal(leap), "2000-02-29T12:34:56Z");
        // The fraction is cut off, not rounded; before 1970 is 1970.
        let late = t + std::time::Duration::from_nanos(999_999_999);
        assert_eq!(datetime_literal(late), "2026-11-23T07:00:00Z");
        assert_eq!(datetime_millis(late), "2026-11-23T07:00:00.999Z");
        assert_eq!(datetime_millis(t), "2026-11-23T07:00:00.000Z");
        let early = std::time::UNIX_EPOCH - std::time::Duration::from_secs(5);
        assert_eq!(datetime_literal(early), "1970-01-01T00:00:00Z");
        assert_eq!(datetime_millis(early), "1970-01-01T00:00:00.000Z");
    }

    use super::*;

    #[test]
    fn classifies_messages() {
        assert_eq!(
            classify(&json!({"jsonrpc":"2.0","id":1,"method":"ping"})),
            Some(Kind::Request)
        );
        assert_eq!(
            classify(&json!({"jsonrpc":"2.0","method":"notifications/initialized"})),
            Some(Kind::Notification)
        );
        assert_eq!(
            classify(&json!({"jsonrpc":"2.0","id":1,"result":{}})),
            Some(Kind::Response)
        );
        assert_eq!(
            classify(&json!({"jsonrpc":"2.0","id":1,"error":{"code":1,"message":"x"}})),
            Some(Kind::ErrorResponse)
        );
        assert_eq!(classify(&json!({"jsonrpc":"2.0"})), None);
        assert_eq!(classify(&json!([1])), None);
    }

    #[test]
    fn depth_ignores_brackets_in_strings() {
        assert_eq!(nesting_depth(br#"{"a":"[[[[{{{{"}"#, 64), 1);
        assert_eq!(nesting_depth(br#"{"a":"\"[[","b":[[1]]}"#, 64), 3);
        assert_eq!(nesting_depth(b"1", 64), 0);
    }

    #[test]
    fn depth_stops_early() {
        let deep = "[".repeat(10_000);
        assert_eq!(nesting_depth(deep.as_bytes(), 64), 65);
    }

    #[test]
    fn parse_refuses_deep_and_batches() {
        let deep = format!("{}{}", "[".repeat(65), "]".repeat(65));
        assert_eq!(
            parse(deep.as_bytes(), 64),
            Err(ParseError::TooDeep { limit: 64 })
        );
        assert_eq!(parse(b"[{}]", 64), Err(ParseError::Batch));
        assert!(matches!(parse(b"{nope", 64), Err(ParseError::Json(_))));
    }

    #[test]
    fn value_depth_matches_byte_depth() {
        let text = r#"{"a":[{"b":[1,2,{"c":{}}]}],"d":"[[["}"#;
        let value: Value = serde_json::from_str(text).unwrap_or_default();
        assert_eq!(value_depth(&value, 64), nesting_depth(text.as_bytes(), 64));
    }

    #[test]
    fn ids_are_sniffed_from_the_head_of_a_message() {
        let sniff = |text: &str| sniff_id(text.as_bytes());
        assert_eq!(
            sniff(r#"{"jsonrpc":"2.0","id":7,"result":{"x":"#),
            Some(json!(7))
        );
        assert_eq!(sniff(r#"{ "id" : "a-1" , "method":"#), Some(json!("a-1")));
        assert_eq!(
            sniff(r#"{"method":"tools/call","params":{"id":3},"id":9,"#),
            Some(json!(9)),
            "a nested `id` is not the message's"
        );
        assert_eq!(sniff(r#"{"method":"id","params":{"text":"\"id\":5"#), None);
        assert_eq!(sniff(r#"{"jsonrpc":"2.0","params":{"huge":"#), None);
        assert_eq!(
            sniff(r#"{"id":12"#),
            None,
            "a cut-off number is not trusted"
        );
        assert_eq!(sniff(r#"{"id":null,"#), None);
        assert!(sniff_has_method(
            br#"{"jsonrpc":"2.0","id":3,"method":"sampling/"#
        ));
        assert!(!sniff_has_method(
            br#"{"jsonrpc":"2.0","id":3,"result":{"method":"#
        ));
    }

    #[test]
    fn numbers_keep_their_form() {
        let text = r#"{"i":1,"f":1.0,"big":18446744073709551615,"neg":-3,"e":0.1}"#;
        let value = parse(text.as_bytes(), 64).unwrap_or_default();
        assert_eq!(
            serde_json::to_string(&value).unwrap_or_default(),
            text,
            "integers stay integers and floats stay floats"
        );
    }

    #[test]
    fn an_mcp_name_header_is_plain_ascii_or_base64_and_reads_back() {
        for (name, plain) in [
            ("example__echo", true),
            ("file:///tmp/a b", true),
            ("exämple__echo", false),
            (" padded", false),
            ("line\r\nX-Injected: 1", false),
            ("=?base64?eA==?=", false),
        ] {
            let header = super::encode_header_value(name);
            assert_eq!(header == name, plain, "{name:?} → {header:?}");
            assert!(
                header.bytes().all(|b| (0x20..=0x7e).contains(&b)),
                "{header:?}"
            );
            assert_eq!(
                super::decode_header_value(header.as_bytes()).as_deref(),
                Some(name)
            );
        }
    }
}
