//! A hostile `remote` server speaking 2026-07-28 over HTTP
//! (`tests/fixtures/hostile_http_upstream.py`) behind the proxy: what it is
//! sent (the revision's headers, the proxy's envelope, never a client's
//! credential, session or envelope) and what a client gets of its HTTP
//! errors (only a JSON-RPC error to that very request, redacted; any other
//! body is the status alone) and of a reply to a request it was not sent
//! (nothing: the call fails at its timeout).
#![allow(
    clippy::indexing_slicing,
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used
)]

mod common;

use std::time::Duration;

use common::{GITHUB_TOKEN, HttpSession, TOKEN, TestProxy};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

/// The fixture server, listening: it and its `/mcp` URL.
async fn hostile_server() -> (Child, String) {
    hostile_server_redirecting_to("http://127.0.0.1:9/").await
}

/// The fixture server, its redirects pointing at `trap`.
async fn hostile_server_redirecting_to(trap: &str) -> (Child, String) {
    let mut command = Command::new("python3");
    command
        .arg(common::repo_root().join("tests/fixtures/hostile_http_upstream.py"))
        .env("REDIRECT_TO", trap);
    common::start_http_server(command, "the hostile HTTP server (python3)").await
}

/// A proxy redacting toward clients, with the fixture as `h` (2026-07-28,
/// calls timing out after 3 s).
async fn proxy() -> (Child, TestProxy) {
    let (server, url) = hostile_server().await;
    let proxy = TestProxy::new()
        .with_config("[redact]\nresponses = \"redact\"")
        .with_server_toml(&format!(
            "[[servers]]\nname = \"h\"\nprotocol = \"2026-07-28\"\ntimeout = \"3s\"\n\
             remote = {{ url = {url:?} }}\n"
        ));
    (server, proxy)
}

fn call_of(reply: &Value, tool: &str) -> String {
    assert!(
        !reply.to_string().contains(GITHUB_TOKEN),
        "{tool}: the token reached the client: {reply}"
    );
    reply.to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hostile_remote_servers_http_errors_and_stray_replies_reach_no_client() {
    let (_server, proxy) = proxy().await;
    let served = proxy.serve_http().await;
    let session = HttpSession::connect(&served.url).await;
    let mut events = session.events().await;
    let call = |id: i64, tool: &str| {
        session.call(
            id,
            "tools/call",
            json!({ "name": format!("h__{tool}"), "arguments": {} }),
        )
    };

    // Its error to this very call: relayed, redacted.
    let own = call(1, "err_own").await;
    let shown = call_of(&own, "err_own");
    assert!(
        own["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("denied for [REDACTED:github-pat-classic]")),
        "{shown}"
    );
    // An error body answering another request, and an HTML page: the
    // status alone.
    for (id, tool) in [(2, "err_other"), (3, "html_error")] {
        let reply = call(id, tool).await;
        let shown = call_of(&reply, tool);
        assert_eq!(reply["id"], id, "{shown}");
        assert!(reply["error"]["code"].is_i64(), "{tool}: {shown}");
        assert!(
            !shown.contains("denied"),
            "{tool}: the body was relayed: {shown}"
        );
        assert!(
            shown.contains("HTTP 5"),
            "{tool}: the status is named: {shown}"
        );
    }
    // A result to a request it was not sent: dropped; the call fails at
    // its timeout.
    let stray = call(4, "wrong_id").await;
    let shown = call_of(&stray, "wrong_id");
    assert_eq!(stray["id"], 4, "{shown}");
    assert!(stray.get("error").is_some(), "{shown}");
    assert!(!shown.contains("denied"), "{shown}");
    // Nothing of it came on the session's own stream either.
    tokio::time::sleep(Duration::from_millis(300)).await;
    while let Ok(event) = events.try_recv() {
        assert!(!event.to_string().contains("denied"), "{event}");
    }
    // The server still serves.
    let mirrored = call(5, "mirror").await;
    assert!(mirrored.get("result").is_some(), "{mirrored}");
    served.terminate().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_remote_server_is_sent_the_revisions_headers_and_nothing_of_a_clients() {
    let (_server, proxy) = proxy().await;
    let served = proxy.serve_http().await;
    let mirror = json!({ "name": "h__mirror", "arguments": {} });

    // A handshake client's session call.
    let session = HttpSession::connect(&served.url).await;
    let reply = session.call(1, "tools/call", mirror.clone()).await;
    let seen: Value = serde_json::from_str(&common::first_text(&reply)).expect("mirrored JSON");
    let headers = &seen["headers"];
    assert_eq!(headers["mcp-protocol-version"], "2026-07-28", "{seen}");
    assert_eq!(headers["mcp-method"], "tools/call", "{seen}");
    assert_eq!(headers["mcp-name"], "mirror", "{seen}");
    assert!(headers.get("authorization").is_none(), "{seen}");
    assert!(headers.get("mcp-session-id").is_none(), "{seen}");
    assert!(!seen.to_string().contains(TOKEN), "{seen}");
    assert!(!seen.to_string().contains(&session.id()), "{seen}");
    assert_eq!(
        seen["meta"]["io.modelcontextprotocol/protocolVersion"], "2026-07-28",
        "{seen}"
    );

    // A 2026-07-28 client's request, its envelope naming it, with a key of
    // its own and a protocol key the proxy does not pass on.
    let mut params = mirror.clone();
    params["_meta"] = json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": { "experimental": { "x": GITHUB_TOKEN } },
        "io.modelcontextprotocol/clientInfo": { "name": "client-marker", "version": "0" },
        "io.modelcontextprotocol/related-task": { "taskId": "forged" },
        "com.example/trace": "kept",
    });
    let response = reqwest::Client::new()
        .post(&served.url)
        .bearer_auth(TOKEN)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/call")
        .header("mcp-name", "h__mirror")
        .json(&json!({ "jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": params }))
        .send()
        .await
        .expect("POST a 2026-07-28 request");
    assert!(response.status().is_success(), "{}", response.status());
    let reply: Value = response.json().await.expect("a JSON reply");
    let seen: Value = serde_json::from_str(&common::first_text(&reply)).expect("mirrored JSON");
    let text = seen.to_string();
    for absent in ["client-marker", "forged", GITHUB_TOKEN, TOKEN] {
        assert!(
            !text.contains(absent),
            "{absent} reached the server: {seen}"
        );
    }
    assert!(seen["headers"].get("authorization").is_none(), "{seen}");
    assert_eq!(seen["meta"]["com.example/trace"], "kept", "{seen}");
    assert_eq!(
        seen["meta"]["io.modelcontextprotocol/protocolVersion"], "2026-07-28",
        "{seen}"
    );
    served.terminate().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_remote_servers_redirect_is_never_followed_and_its_target_gets_nothing() {
    let (trap_url, trapped) = common::trap().await;
    let (_server, url) = hostile_server_redirecting_to(&trap_url).await;
    let proxy = TestProxy::new().with_server_toml(&format!(
        "[[servers]]\nname = \"h\"\nprotocol = \"2026-07-28\"\ntimeout = \"10s\"\n\
         remote = {{ url = {url:?}, headers = {{ X-Api-Key = \"secret:key\" }} }}\n\
         secrets = {{ key = \"file:api-key\" }}\n"
    ));
    std::fs::write(proxy.dir().join("api-key"), "operator-api-key-7f3a").unwrap();
    let config = proxy.write_config();
    let served = proxy.serve_http().await;
    let session = HttpSession::connect(&served.url).await;
    let mirrored = session
        .call(
            1,
            "tools/call",
            json!({ "name": "h__mirror", "arguments": {} }),
        )
        .await;
    // The server itself gets its key (redacted on the way back).
    assert!(
        common::first_text(&mirrored).contains("\"x-api-key\""),
        "{mirrored}"
    );
    let mut id = 10;
    for (tool, to) in [
        ("redirect_301", trap_url.as_str()),
        ("redirect_302", &trap_url),
        ("redirect_307", &trap_url),
        ("redirect_308", &trap_url),
        ("redirect_private", "http://10.255.255.1"),
    ] {
        id += 1;
        let reply = session
            .call(
                id,
                "tools/call",
                json!({ "name": format!("h__{tool}"), "arguments": {} }),
            )
            .await;
        let shown = reply.to_string();
        assert_eq!(reply["id"], id, "{shown}");
        let message = reply["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("redirects are not followed"),
            "{tool}: a clear error: {shown}"
        );
        let origin = to.trim_end_matches("/mcp");
        assert!(message.contains(&format!("to {origin}")), "{tool}: {shown}");
        assert!(!shown.contains("operator-api-key"), "{tool}: {shown}");
    }
    // Nothing reached the trap: no connection, no byte, no key.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        trapped.lock().unwrap().is_empty(),
        "the trap received: {}",
        String::from_utf8_lossy(&trapped.lock().unwrap())
    );
    // The server still serves, and each refused call is recorded with why.
    let again = session
        .call(
            30,
            "tools/call",
            json!({ "name": "h__mirror", "arguments": {} }),
        )
        .await;
    assert!(again.get("result").is_some(), "{again}");
    served.terminate().await;
    let records = common::records(&config, &["--tool", "redirect_307", "--kind", "exchange"]);
    assert_eq!(records.len(), 1, "{records:?}");
    let record = records[0].to_string();
    assert!(record.contains("redirects are not followed"), "{record}");
}
