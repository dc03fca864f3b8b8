//! The 2026-07-28 revision toward clients: a request brings its version and
//! the client's capabilities in `params._meta` (no handshake, no session),
//! and every result says what it is (`resultType`) and how long it may be
//! kept (`ttlMs`, `cacheScope` on lists and reads).
//!
//! What a client sees depends on who it is (authz filters lists and reads
//! per client), so nothing the proxy answers is shared-cacheable: every
//! cacheable result is `private`, and the proxy's own lists are stale at
//! once (`ttlMs: 0`): a policy reload or a server's list change may change
//! them with no notice to a client that holds no listen stream.

use serde_json::{Value, json};

use crate::protocol::{self, Envelope, Method, meta};

use super::failure::Failure;

/// Who the proxy says it is, in `_meta` of its 2026-07-28 results.
pub(super) fn server_info() -> Value {
    static INFO: std::sync::LazyLock<Value> = std::sync::LazyLock::new(
        || json!({ "name": "portcullis", "version": env!("CARGO_PKG_VERSION") }),
    );
    INFO.clone()
}

/// A result's `_meta` when the server gave none: only who the proxy is
/// (a copy of one made once: a clone copies the keys' hashes, where
/// inserting would hash them again on every reply).
fn proxy_meta() -> Value {
    static META: std::sync::LazyLock<Value> =
        std::sync::LazyLock::new(|| json!({ meta::SERVER_INFO: server_info() }));
    META.clone()
}

/// A stateless request's envelope, checked (well formed, and of the
/// version the proxy speaks statelessly) and taken out of it
/// ([`protocol::take_envelope`]: one refused for its form is left as it
/// came; one of a version not spoken here has lost its envelope, and is
/// answered only with its id).
pub fn checked_envelope(message: &mut Value) -> Result<Envelope, Failure> {
    let envelope = protocol::take_envelope(message).map_err(Failure::Envelope)?;
    version_spoken(&envelope)?;
    Ok(envelope)
}

/// Whether the envelope's version is the stateless one the proxy speaks
/// (`-32022`, listing those it does, if not).
pub fn version_spoken(envelope: &Envelope) -> Result<(), Failure> {
    if envelope.version == protocol::MODERN_VERSION {
        return Ok(());
    }
    Err(Failure::UnsupportedVersion(
        protocol::cut(&envelope.version, 64).to_owned(),
    ))
}

/// A server's result for a 2026-07-28 client, checked: the servers behind
/// the proxy speak a handshake revision, whose results are complete. One
/// that says otherwise (`input_required`: a question the client would answer
/// by retrying, around every check the proxy makes of a server's requests)
/// is refused.
pub(super) fn checked_result(reply: Value) -> Result<Value, Failure> {
    let kind = reply
        .get("result")
        .and_then(|result| result.get("resultType"));
    match kind {
        None => Ok(reply),
        Some(Value::String(kind)) if kind == "complete" => Ok(reply),
        Some(other) => {
            let shown = match other {
                Value::String(kind) => protocol::cut(kind, 64).to_owned(),
                _ => "(not a string)".to_owned(),
            };
            Err(Failure::ServerResultType(shown))
        }
    }
}

/// A reply to a 2026-07-28 request of `method`, framed as that revision
/// requires, whatever the server put there: the result is complete
/// (checked before: [`checked_result`]), a cacheable one is private to the
/// client and stale at once (`ttlMs: 0`: what a client may see changes
/// with a policy reload), any other carries no cache hint (a task keeps
/// what the gateway left of it: see `gateway::tasks`); its `_meta`
/// keeps the server's own keys but none of the protocol's, and names the
/// proxy as its server (a listen result keeps its subscription id, the
/// proxy's own).
pub(super) fn frame_reply(method: &Method, mut reply: Value) -> Value {
    let Some(result) = reply.get_mut("result").and_then(Value::as_object_mut) else {
        return reply;
    };
    // A task (a call's, passed on by the gateway, or one polled) keeps
    // its own fields: its `ttlMs` is how long the task is kept, and a
    // polled one may carry its questions, decided by the gateway.
    let task = *method == Method::ToolsCall
        && result.get("resultType").and_then(Value::as_str) == Some("task");
    let polled = *method == Method::TasksGet;
    let dropped: &[&str] = if task || polled {
        &["requestState", "cacheScope"]
    } else {
        &["inputRequests", "requestState", "ttlMs", "cacheScope"]
    };
    // Most results carry none of them: looked for in one pass over the
    // keys, each removal (a hash of the key) only for one that is there.
    if result.keys().any(|key| dropped.contains(&key.as_str())) {
        for key in dropped {
            result.remove(*key);
        }
    }
    if !task {
        result.insert("resultType".into(), Value::from("complete"));
    }
    if method.cacheable() {
        result.insert("ttlMs".into(), Value::from(0));
        result.insert("cacheScope".into(), Value::from("private"));
    }
    // The server's own `_meta` keys stay, in place; the protocol's go (a
    // listen result keeps its subscription id, the proxy's own).
    match result.get_mut("_meta") {
        Some(Value::Object(found)) => {
            if found.keys().any(|key| key.starts_with(meta::PREFIX)) {
                let listen = *method == Method::SubscriptionsListen;
                found.retain(|key, _| {
                    !key.starts_with(meta::PREFIX) || (listen && key == meta::SUBSCRIPTION_ID)
                });
            }
            found.insert(meta::SERVER_INFO.into(), server_info());
        }
        _ => {
            result.insert("_meta".into(), proxy_meta());
        }
    }
    reply
}

/// A 2026-07-28 server's result (complete: checked before) as a client of
/// a handshake revision gets it: without what only 2026-07-28 defines
/// (`resultType`, the cache hints, the protocol's `_meta` keys).
pub(super) fn handshake_result(mut reply: Value) -> Value {
    let Some(result) = reply.get_mut("result").and_then(Value::as_object_mut) else {
        return reply;
    };
    for key in [
        "resultType",
        "ttlMs",
        "cacheScope",
        "inputRequests",
        "requestState",
    ] {
        result.remove(key);
    }
    if let Some(found) = result.get_mut("_meta").and_then(Value::as_object_mut) {
        found.retain(|key, _| !key.starts_with(meta::PREFIX));
        if found.is_empty() {
            result.remove("_meta");
        }
    }
    reply
}

/// Takes out of a request's `params._meta` what the revision defines for
/// the hop between client and proxy (version, capabilities, client info,
/// log level): a server is sent the request as a client of its own
/// revision would send it. A `_meta` emptied so goes too.
pub(super) fn strip_envelope(request: &mut Value) {
    if let Some(params) = request.get_mut("params").and_then(Value::as_object_mut) {
        protocol::take_protocol_meta(params, |_, _| {});
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(meta: Value) -> Value {
        json!({ "jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": { "_meta": meta } })
    }

    #[test]
    fn an_envelope_needs_its_version_and_capabilities_and_the_version_spoken() {
        let mut good = request(json!({ meta::PROTOCOL_VERSION: "2026-07-28",
            meta::CLIENT_CAPABILITIES: {}, meta::LOG_LEVEL: "warning" }));
        let envelope = checked_envelope(&mut good).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(envelope.log_level, Some(protocol::LogLevel::Warning));
        // Taken out: nothing of the protocol's is left for the server.
        assert_eq!(
            good,
            json!({ "jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {} })
        );
        for mut bad in [
            request(json!({ meta::PROTOCOL_VERSION: "2026-07-28" })),
            request(json!({ meta::CLIENT_CAPABILITIES: {} })),
            request(json!({ meta::PROTOCOL_VERSION: 2026, meta::CLIENT_CAPABILITIES: {} })),
            json!({ "jsonrpc": "2.0", "id": 1, "method": "tools/list" }),
        ] {
            let sent = bad.clone();
            let refused = checked_envelope(&mut bad).err();
            assert_eq!(
                refused.map(|f| f.code()),
                Some(protocol::code::INVALID_PARAMS),
                "{bad}"
            );
            assert_eq!(bad, sent, "a refused request is left as it came");
        }
        let mut bad_level = request(json!({ meta::PROTOCOL_VERSION: "2026-07-28",
            meta::CLIENT_CAPABILITIES: {}, meta::LOG_LEVEL: "loud" }));
        assert!(checked_envelope(&mut bad_level).is_err());
        let mut old = request(json!({ meta::PROTOCOL_VERSION: "2099-01-01",
            meta::CLIENT_CAPABILITIES: {} }));
        let Err(refused) = checked_envelope(&mut old) else {
            panic!("an unknown version is refused");
        };
        let response = refused.to_response(json!(1));
        assert_eq!(
            response["error"]["code"],
            protocol::code::UNSUPPORTED_PROTOCOL_VERSION
        );
        assert_eq!(response["error"]["data"]["requested"], "2099-01-01");
        assert_eq!(
            response["error"]["data"]["supported"],
            json!(protocol::ALL_VERSIONS)
        );
    }

    #[test]
    fn results_are_framed_complete_private_and_named_whatever_the_server_says() {
        let list = frame_reply(
            &"tools/list".into(),
            json!({ "jsonrpc": "2.0", "id": 1, "result": { "tools": [] } }),
        );
        assert_eq!(list["result"]["resultType"], "complete");
        assert_eq!(list["result"]["ttlMs"], 0);
        assert_eq!(list["result"]["cacheScope"], "private");
        assert_eq!(
            list["result"]["_meta"][meta::SERVER_INFO]["name"],
            "portcullis"
        );
        // A server's public, long-lived hint is made private and stale; its
        // own `_meta` keys stay, the protocol's go (the proxy names itself).
        let read = frame_reply(
            &"resources/read".into(),
            json!({ "jsonrpc": "2.0", "id": 2, "result": { "contents": [],
                "ttlMs": u64::MAX, "cacheScope": "public", "_meta": { "x": 1,
                    meta::SERVER_INFO: { "name": "impostor" },
                    meta::SUBSCRIPTION_ID: 9 } } }),
        );
        assert_eq!(read["result"]["ttlMs"], 0);
        assert_eq!(read["result"]["cacheScope"], "private");
        assert_eq!(read["result"]["_meta"]["x"], 1);
        assert_eq!(
            read["result"]["_meta"][meta::SERVER_INFO]["name"],
            "portcullis"
        );
        assert!(read["result"]["_meta"].get(meta::SUBSCRIPTION_ID).is_none());
        // A call is not cacheable: a server's hints go; a `_meta` that is
        // not an object is replaced.
        let call = frame_reply(
            &"tools/call".into(),
            json!({ "jsonrpc": "2.0", "id": 3, "result": { "content": [],
                "ttlMs": 60000, "cacheScope": "public", "_meta": "odd",
                "inputRequests": {}, "requestState": "x" } }),
        );
        assert_eq!(call["result"]["resultType"], "complete");
        for gone in ["ttlMs", "cacheScope", "inputRequests", "requestState"] {
            assert!(call["result"].get(gone).is_none(), "{gone}: {call}");
        }
        assert_eq!(
            call["result"]["_meta"][meta::SERVER_INFO]["name"],
            "portcullis"
        );
        let error =
            json!({ "jsonrpc": "2.0", "id": 4, "error": { "code": -32602, "message": "x" } });
        assert_eq!(frame_reply(&"tools/list".into(), error.clone()), error);
    }

    #[test]
    fn a_server_result_that_is_not_complete_is_refused() {
        let complete = json!({ "jsonrpc": "2.0", "id": 1, "result": { "resultType": "complete" } });
        assert!(checked_result(complete).is_ok());
        let plain = json!({ "jsonrpc": "2.0", "id": 1, "result": {} });
        assert!(checked_result(plain).is_ok());
        for odd in [json!("input_required"), json!(7)] {
            let reply = json!({ "jsonrpc": "2.0", "id": 1, "result": { "resultType": odd,
                "inputRequests": { "a": { "method": "elicitation/create" } } } });
            let refused = checked_result(reply).err().map(|f| f.code());
            assert_eq!(refused, Some(protocol::code::INTERNAL_ERROR));
        }
    }

    #[test]
    fn a_server_is_sent_no_part_of_the_clients_envelope() {
        let mut call = json!({ "jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": { "name": "x", "_meta": { meta::PROTOCOL_VERSION: "2026-07-28",
                meta::CLIENT_CAPABILITIES: {}, meta::CLIENT_INFO: { "name": "c" },
                "progressToken": 7, "traceparent": "00-ab-cd-01" } } });
        strip_envelope(&mut call);
        assert_eq!(
            call["params"]["_meta"],
            json!({ "progressToken": 7, "traceparent": "00-ab-cd-01" })
        );
        let mut bare = json!({ "jsonrpc": "2.0", "id": 1, "method": "tools/list",
            "params": { "_meta": { meta::PROTOCOL_VERSION: "2026-07-28",
                meta::CLIENT_CAPABILITIES: {} } } });
        strip_envelope(&mut bare);
        assert_eq!(bare["params"], json!({}));
    }
}
