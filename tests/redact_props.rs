//! Property tests of the `redact` interceptor, in process: whatever the
//! JSON-RPC message (request, response, error, notification; any nesting) and
//! wherever a well-formed secret sits in it — a value at any path, an object
//! key, inside a nested `_meta`, a top-level envelope field — and whichever
//! way it travels, what comes out (the message as forwarded, or the denial)
//! holds no byte of the secret, and a forwarded message is still the same
//! valid JSON-RPC message (`jsonrpc`, `id`, `method`; it serializes and parses
//! back). With `deny`, a message carrying a secret anywhere is refused.
//!
//! No position is special by its name: the generator favours the names a
//! skip list would use (`blob`, `data` beside `"type": "image"`, `_meta`).
#![allow(
    clippy::indexing_slicing,
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used
)]

#[path = "common/secrets.rs"]
mod secrets;

use std::sync::LazyLock;

use portcullis::chain::{
    ClientIdentity, Context, Direction, Exchange, Interceptor, Phase, Transport, Verdict,
};
use portcullis::config::{LimitsConfig, RedactAction, RedactConfig};
use portcullis::interceptors::{Limits, Redact};
use proptest::prelude::*;
use secrets::{Kind as SecretKind, Rng, Secret};
use serde_json::{Map, Value, json};

/// Built once per binary: compiling the built-in rules is slow in debug builds.
static REDACTING: LazyLock<Redact> =
    LazyLock::new(|| Redact::new(&RedactConfig::default()).unwrap());
static DENYING: LazyLock<Redact> = LazyLock::new(|| {
    Redact::new(&RedactConfig {
        requests: RedactAction::Deny,
        responses: RedactAction::Deny,
        ..RedactConfig::default()
    })
    .unwrap()
});

// ---------------------------------------------------------------------------
// Secrets.

/// A secret of any kind drawn from a seed: every seed (shrunk ones too) draws
/// characters with the entropy a real token has, so each is well-formed.
fn seeded_secret(kind: u8, seed: u64) -> Secret {
    Secret::drawn(SecretKind::nth(kind), &mut Rng(seed))
}

fn secret() -> impl Strategy<Value = Secret> {
    (any::<u8>(), any::<u64>()).prop_map(|(kind, seed)| seeded_secret(kind, seed))
}

// ---------------------------------------------------------------------------
// Messages.

/// Names a skip list would single out, and ordinary ones.
fn word() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("blob".to_owned()),
        Just("data".to_owned()),
        Just("type".to_owned()),
        Just("image".to_owned()),
        Just("audio".to_owned()),
        Just("_meta".to_owned()),
        Just("text".to_owned()),
        Just("content".to_owned()),
        Just("structuredContent".to_owned()),
        Just("uri".to_owned()),
        Just("x-debug".to_owned()),
        "[a-z]{1,8}",
    ]
}

/// Any JSON value, at most 4 levels deep, with content-shaped objects
/// (`{"type": "image", "data": …}`) and `blob` members among the objects.
fn tree() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i32>().prop_map(Value::from),
        word().prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec((word(), inner.clone()), 0..5)
                .prop_map(|members| Value::Object(members.into_iter().collect())),
            (
                prop_oneof![Just("image"), Just("audio"), Just("text"), Just("resource")],
                inner.clone()
            )
                .prop_map(
                    |(kind, data)| json!({"type": kind, "mimeType": "image/png", "data": data})
                ),
            inner.prop_map(|blob| json!({"uri": "file:///x", "blob": blob})),
        ]
    })
}

fn object(tree: Value) -> Value {
    match tree {
        Value::Object(_) => tree,
        other => json!({ "value": other }),
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Request,
    Notification,
    Result,
    Error,
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        Just(Kind::Request),
        Just(Kind::Notification),
        Just(Kind::Result),
        Just(Kind::Error),
    ]
}

/// A message of `kind` around `body`; the pointer to the body's root.
fn message(kind: Kind, method: &str, id: i64, body: Value) -> (Value, &'static str) {
    match kind {
        Kind::Request => (
            json!({"jsonrpc": "2.0", "id": id, "method": method, "params": object(body)}),
            "/params",
        ),
        Kind::Notification => (
            json!({"jsonrpc": "2.0", "method": method, "params": object(body)}),
            "/params",
        ),
        Kind::Result => (
            json!({"jsonrpc": "2.0", "id": id, "result": object(body)}),
            "/result",
        ),
        Kind::Error => (
            json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32000, "message": "failed", "data": body}}),
            "/error",
        ),
    }
}

/// How the secret's string looks.
fn embedded(secret: &Secret, alone: bool) -> String {
    if alone {
        secret.text.clone()
    } else {
        format!("see {} for access", secret.text)
    }
}

/// Walks `path` (child indexes, modulo the children) from `node` as far as it
/// goes, and plants `planted` there: a member or item where it stops on an
/// object or array, in place of the leaf where it stops on one.
fn plant(node: &mut Value, path: &[usize], planted: Planted) {
    match node {
        Value::Object(members) if !members.is_empty() && !path.is_empty() => {
            let at = path[0] % members.len();
            let child = members.values_mut().nth(at).unwrap();
            plant(child, &path[1..], planted);
        }
        Value::Array(items) if !items.is_empty() && !path.is_empty() => {
            let at = path[0] % items.len();
            plant(&mut items[at], &path[1..], planted);
        }
        Value::Object(members) => match planted {
            Planted::Value { key, text } => {
                members.insert(key, Value::String(text));
            }
            Planted::Key(text) => {
                members.insert(text, json!("kept"));
            }
        },
        Value::Array(items) => items.push(planted.into_value(Value::from("kept"))),
        leaf => {
            let old = std::mem::take(leaf);
            *leaf = planted.into_value(old);
        }
    }
}

#[derive(Debug, Clone)]
enum Planted {
    /// A string value (under `key` when it becomes an object member).
    Value { key: String, text: String },
    /// An object key (its value kept).
    Key(String),
}

impl Planted {
    fn into_value(self, kept: Value) -> Value {
        match self {
            Planted::Value { text, .. } => Value::String(text),
            Planted::Key(text) => Value::Object(Map::from_iter([(text, kept)])),
        }
    }
}

/// One case: the message, which way it travels, the secret in it.
#[derive(Debug, Clone)]
struct Case {
    message: Value,
    phase: Phase,
    direction: Direction,
    secret: Secret,
}

/// Where the secret goes.
#[derive(Debug, Clone, Copy)]
enum Placement {
    /// A string value anywhere in the body (`params`, `result`, `error`).
    Value,
    /// An object key anywhere in the body.
    Key,
    /// Anywhere inside a `_meta` object of the body, as a value or a key.
    Meta,
    /// Anywhere inside a top-level field beside the body.
    Envelope,
}

fn case(placement: Placement) -> impl Strategy<Value = Case> {
    (
        kind(),
        prop_oneof![
            Just("tools/call"),
            Just("sampling/createMessage"),
            Just("resources/read"),
            Just("notifications/message"),
            Just("notifications/progress"),
            Just("x-vendor/custom"),
        ],
        any::<bool>(),
        tree(),
        tree(),
        prop::collection::vec(any::<usize>(), 0..6),
        word(),
        prop_oneof![Just("x-debug"), Just("_meta"), Just("extra"), Just("trace")],
        any::<bool>(),
        any::<bool>(),
        secret(),
    )
        .prop_map(
            move |(
                kind,
                method,
                toward_server,
                body,
                side,
                path,
                key,
                field,
                alone,
                as_key,
                secret,
            )| {
                let text = embedded(&secret, alone);
                let planted = |as_key: bool| {
                    if as_key {
                        Planted::Key(text.clone())
                    } else {
                        Planted::Value {
                            key: key.clone(),
                            text: text.clone(),
                        }
                    }
                };
                let (mut message, root) = message(kind, method, 7, body);
                match placement {
                    Placement::Value | Placement::Key => {
                        let root = message.pointer_mut(root).unwrap();
                        plant(root, &path, planted(matches!(placement, Placement::Key)));
                    }
                    Placement::Meta => {
                        let mut meta = object(side);
                        plant(&mut meta, &path, planted(as_key));
                        message.pointer_mut(root).unwrap()["_meta"] = meta;
                    }
                    Placement::Envelope => {
                        let mut extra = side;
                        plant(&mut extra, &path, planted(as_key));
                        message[field] = extra;
                    }
                }
                let phase = match kind {
                    Kind::Request => Phase::Request,
                    Kind::Notification => Phase::Notification,
                    Kind::Result | Kind::Error => Phase::Response,
                };
                // A response travels against the direction of its request.
                let direction = match (kind, toward_server) {
                    (Kind::Request | Kind::Notification, true)
                    | (Kind::Result | Kind::Error, false) => Direction::ClientToServer,
                    _ => Direction::ServerToClient,
                };
                Case {
                    message,
                    phase,
                    direction,
                    secret,
                }
            },
        )
}

// ---------------------------------------------------------------------------
// The property.

fn run(interceptor: &Redact, case: &Case) -> (Exchange, Verdict) {
    let method = case.message["method"]
        .as_str()
        .unwrap_or("tools/call")
        .to_owned();
    let mut exchange = Exchange::new(
        case.message.clone(),
        case.direction,
        case.phase,
        Context::new(
            "s".into(),
            ClientIdentity::new("c", &[]),
            Transport::Stdio,
            &method,
        ),
    );
    let verdict = match case.phase {
        Phase::Request => interceptor.see(&mut exchange),
        Phase::Response => interceptor.see(&mut exchange),
        Phase::Notification => interceptor.on_notification(&mut exchange),
    };
    (exchange, verdict)
}

fn assert_no_secret(what: &str, text: &str, secret: &Secret) -> Result<(), TestCaseError> {
    for form in secret.plain_forms() {
        prop_assert!(
            !text.contains(form),
            "{what}: `{form}` (of the secret `{}`) is still there:\n{text}",
            secret.text
        );
    }
    Ok(())
}

/// The message as forwarded is still the same valid JSON-RPC message.
fn assert_still_valid(before: &Value, after: &Value) -> Result<(), TestCaseError> {
    for member in ["jsonrpc", "id", "method"] {
        prop_assert_eq!(
            before.get(member),
            after.get(member),
            "`{}` changed",
            member
        );
    }
    let serialized = serde_json::to_string(after).unwrap();
    let parsed: Value = serde_json::from_str(&serialized).unwrap();
    prop_assert_eq!(&parsed, after);
    // (A planted secret may have replaced `error.code`: only a message that
    // was valid must stay valid.)
    if envelope_ok(before) {
        prop_assert!(
            envelope_ok(after),
            "not a valid JSON-RPC envelope any more: {}",
            after
        );
    }
    Ok(())
}

/// Whether `limits` lets `message` through.
fn envelope_ok(message: &Value) -> bool {
    let limits = Limits::new(LimitsConfig::default());
    let mut exchange = Exchange::new(
        message.clone(),
        Direction::ClientToServer,
        Phase::Request,
        Context::new(
            "s".into(),
            ClientIdentity::new("c", &[]),
            Transport::Stdio,
            "tools/call",
        ),
    );
    limits.see(&mut exchange) == Verdict::Continue
}

fn check(case: &Case) -> Result<(), TestCaseError> {
    // The planted secret is one the rules catch on its own.
    let mut found = Vec::new();
    REDACTING
        .scanner()
        .scan(case.secret.text.as_bytes(), &mut found);
    prop_assert!(
        found
            .iter()
            .any(|f| f.start == 0 && f.end == case.secret.text.len()),
        "harness: `{}` is not a well-formed secret",
        case.secret.text
    );

    for (config, interceptor) in [("redact", &*REDACTING), ("deny", &*DENYING)] {
        let (exchange, verdict) = run(interceptor, case);
        match &verdict {
            Verdict::Deny(denial) => {
                let shown = format!("{} {}", denial.reason, Value::Object(denial.data.clone()));
                assert_no_secret(&format!("{config}: the denial"), &shown, &case.secret)?;
            }
            Verdict::Continue | Verdict::Modify(_) => {
                let forwarded = match &verdict {
                    Verdict::Modify(message) => message,
                    _ => &exchange.message,
                };
                let what = format!("{config}: the message as forwarded");
                assert_no_secret(&what, &forwarded.to_string(), &case.secret)?;
                assert_still_valid(&case.message, forwarded)?;
            }
        }
        if config == "deny" {
            prop_assert!(
                matches!(verdict, Verdict::Deny(_)),
                "deny: a message carrying a secret must be refused: {}",
                case.message
            );
        }
    }
    Ok(())
}

proptest! {
    // No regression file: a shrunk case prints a token-shaped string, which
    // must not be committed.
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn a_secret_as_a_value_anywhere_never_gets_through(case in case(Placement::Value)) {
        check(&case)?;
    }

    #[test]
    fn a_secret_as_a_key_anywhere_never_gets_through(case in case(Placement::Key)) {
        check(&case)?;
    }

    #[test]
    fn a_secret_inside_a_nested_meta_never_gets_through(case in case(Placement::Meta)) {
        check(&case)?;
    }

    #[test]
    fn a_secret_in_a_top_level_field_never_gets_through(case in case(Placement::Envelope)) {
        check(&case)?;
    }
}

/// The control: the same secret in an ordinary position is redacted (and
/// refused with `deny`) by the code as it is, so the properties fail only
/// where a position is skipped.
#[test]
fn a_secret_in_an_ordinary_text_is_redacted_and_denied() {
    for kind in 0..3 {
        let secret = seeded_secret(kind, 42);
        let case = Case {
            message: json!({"jsonrpc": "2.0", "id": 7, "result": {
                "content": [{"type": "text", "text": embedded(&secret, false)}]}}),
            phase: Phase::Response,
            direction: Direction::ClientToServer,
            secret,
        };
        check(&case).unwrap_or_else(|err| panic!("{err}"));
    }
}
