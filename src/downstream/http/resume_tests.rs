//! Sealed session ids (`[proxy] session_keys`) between two replicas in
//! process: each its own gateway and session table, one key shared.

use serde_json::{Value, json};

use super::*;
use crate::downstream::sealed::Sealer;

const KEY: &str = "8f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";
const OTHER_KEY: &str = "11223344556677889900aabbccddeeff11223344556677889900aabbccddeeff";

fn replica(key: &str) -> (Arc<HttpState>, Router) {
    let sealer = Sealer::from_hex(&[key.to_owned()], Duration::from_secs(3600))
        .unwrap_or_else(|e| panic!("the key loads: {e}"));
    let state = state_sealing(Some(sealer));
    (state.clone(), router(state))
}

/// POSTs `body` to `/mcp` as the client of `token`, in session `session`.
async fn post(
    app: &Router,
    token: &str,
    session: Option<&str>,
    body: Value,
) -> (StatusCode, HeaderMap, Value) {
    let mut builder = request(&Method::POST, "/mcp")
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::ACCEPT, "application/json, text/event-stream")
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(session) = session {
        builder = builder.header("mcp-session-id", session);
    }
    let (status, headers, text) = send(
        app,
        builder
            .body(Body::from(body.to_string()))
            .unwrap_or_default(),
    )
    .await;
    (
        status,
        headers,
        serde_json::from_str(&text).unwrap_or(Value::Null),
    )
}

async fn delete(app: &Router, token: &str, session: &str) -> StatusCode {
    let request = request(&Method::DELETE, "/mcp")
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header("mcp-session-id", session)
        .body(Body::empty())
        .unwrap_or_default();
    send(app, request).await.0
}

fn ping(id: i64) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "ping"})
}

/// A session begun on `app`: its sealed id.
async fn begin(app: &Router, token: &str) -> String {
    let initialize = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {"elicitation": {}},
        "clientInfo": {"name": "agent-x", "version": "1"},
    }});
    let (status, headers, reply) = post(app, token, None, initialize).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply["result"]["protocolVersion"], "2025-06-18", "{reply}");
    let id = headers
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(id.starts_with("pcs1_"), "a sealed id: {id}");
    id
}

#[tokio::test]
async fn a_session_begun_on_one_replica_is_served_by_another() {
    let (a_state, a) = replica(KEY);
    let (b_state, b) = replica(KEY);
    let id = begin(&a, CLIENT_TOKEN).await;

    let (status, _, reply) = post(&b, CLIENT_TOKEN, Some(&id), ping(1)).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply["result"], json!({}), "{reply}");
    // Resumed as its `initialize` settled it; named in records by the
    // same short id on both replicas.
    let client = ClientIdentity::new("tester", &[]);
    let Ok(on_b) = b_state.sessions.find(Some(&id), &client) else {
        panic!("B holds the session now");
    };
    let Ok(on_a) = a_state.sessions.find(Some(&id), &client) else {
        panic!("A holds it");
    };
    assert_eq!(on_b.session.id, on_a.session.id);
    assert!(uuid::Uuid::parse_str(&on_b.session.id).is_ok());
    assert!(on_b.session.is_initialized());
    assert_eq!(
        on_b.session.protocol_version().as_deref(),
        Some("2025-06-18")
    );
    assert!(on_b.session.has_client_capability("elicitation"));
    assert_eq!(
        b_state.slots.taken(),
        (1, 1),
        "it holds a place under the caps"
    );
    drop((on_a, on_b));
    // Again: the same session, not another.
    let (status, _, _) = post(&b, CLIENT_TOKEN, Some(&id), ping(2)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(b_state.gateway.sessions().count(), 1);

    // Ended on B: B no longer serves it (A, which has not heard, still
    // does; the id is the same client's either way).
    assert_eq!(delete(&b, CLIENT_TOKEN, &id).await, StatusCode::OK);
    let (status, _, _) = post(&b, CLIENT_TOKEN, Some(&id), ping(3)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(b_state.gateway.sessions().count(), 0);
    assert_eq!(b_state.slots.taken(), (0, 0));
    let (status, _, _) = post(&a, CLIENT_TOKEN, Some(&id), ping(4)).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_sealed_id_is_refused_to_another_client_a_foreign_key_and_when_changed() {
    let (_, a) = replica(KEY);
    let (c_state, c) = replica(KEY);
    let (_, foreign) = replica(OTHER_KEY);
    let id = begin(&a, CLIENT_TOKEN).await;

    // Another client presenting the id: unknown, as on one replica.
    let (status, _, reply) = post(&c, OTHER_TOKEN, Some(&id), ping(1)).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{reply}");
    assert_eq!(reply["error"]["message"], "unknown or expired session");
    // A replica with another key; the id changed in one place.
    let (status, _, _) = post(&foreign, CLIENT_TOKEN, Some(&id), ping(2)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let mut changed = id.clone().into_bytes();
    let last = changed.len() - 2;
    changed[last] = if changed[last] == b'A' { b'B' } else { b'A' };
    let changed = String::from_utf8(changed).unwrap_or_default();
    let (status, _, _) = post(&c, CLIENT_TOKEN, Some(&changed), ping(3)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(c_state.gateway.sessions().count(), 0, "nothing was resumed");
    assert_eq!(c_state.slots.taken(), (0, 0));
    // Its rightful client is served.
    let (status, _, _) = post(&c, CLIENT_TOKEN, Some(&id), ping(4)).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn resuming_counts_under_the_session_caps() {
    let (_, a) = replica(KEY);
    let (b_state, b) = replica(KEY);
    let first = begin(&a, CLIENT_TOKEN).await;
    let second = begin(&a, CLIENT_TOKEN).await;
    // B's places all taken by others.
    let mut taken = Vec::new();
    while let Ok(slot) = b_state.slots.take(&Arc::from(format!("c{}", taken.len()))) {
        taken.push(slot);
    }
    let (status, _, reply) = post(&b, CLIENT_TOKEN, Some(&first), ping(1)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{reply}");
    taken.pop();
    let (status, _, _) = post(&b, CLIENT_TOKEN, Some(&first), ping(2)).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = post(&b, CLIENT_TOKEN, Some(&second), ping(3)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn a_session_ended_where_it_is_not_held_is_ended_there_without_being_resumed() {
    let (_, a) = replica(KEY);
    let (b_state, b) = replica(KEY);
    let id = begin(&a, CLIENT_TOKEN).await;
    // Another client cannot end it.
    assert_eq!(delete(&b, OTHER_TOKEN, &id).await, StatusCode::NOT_FOUND);
    assert_eq!(delete(&b, CLIENT_TOKEN, &id).await, StatusCode::OK);
    assert_eq!(
        b_state.gateway.sessions().count(),
        0,
        "not resumed to be ended"
    );
    assert_eq!(b_state.slots.taken(), (0, 0));
    let (status, _, _) = post(&b, CLIENT_TOKEN, Some(&id), ping(1)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test(start_paused = true)]
async fn a_session_idle_past_the_timeout_is_not_resumed_where_it_expired() {
    let (a_state, a) = replica(KEY);
    let id = begin(&a, CLIENT_TOKEN).await;
    tokio::time::advance(Duration::from_secs(61)).await;
    a_state.expire_idle(Duration::from_secs(60));
    assert_eq!(a_state.gateway.sessions().count(), 0);
    let (status, _, _) = post(&a, CLIENT_TOKEN, Some(&id), ping(1)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Another replica, which never saw it end, still serves it.
    let (_, b) = replica(KEY);
    let (status, _, _) = post(&b, CLIENT_TOKEN, Some(&id), ping(2)).await;
    assert_eq!(status, StatusCode::OK);
}
