//! Streamable HTTP edge cases through the real binary: authentication,
//! DNS-rebinding protection, sessions, headers and bad bodies.
#![allow(
    clippy::indexing_slicing,
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used
)]

mod common;

use common::{OTHER_TOKEN, TOKEN, TestProxy};
use reqwest::StatusCode;
use serde_json::{Value, json};

fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

fn init_body() -> Value {
    json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"0"}}})
}

async fn post(
    http: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    session: Option<&str>,
    body: &Value,
) -> reqwest::Response {
    let mut request = http
        .post(url)
        .header("accept", "application/json, text/event-stream")
        .json(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(session) = session {
        request = request.header("mcp-session-id", session);
    }
    request.send().await.unwrap()
}

async fn initialize(http: &reqwest::Client, url: &str, token: &str) -> String {
    let response = post(http, url, Some(token), None, &init_body()).await;
    assert_eq!(response.status(), StatusCode::OK);
    let session = response.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["result"]["serverInfo"]["name"], "portcullis");
    let accepted = post(
        http,
        url,
        Some(token),
        Some(&session),
        &json!({"jsonrpc":"2.0","method":"notifications/initialized"}),
    )
    .await;
    assert_eq!(accepted.status(), StatusCode::ACCEPTED);
    session
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_origins_and_sessions_are_enforced() {
    let proxy = TestProxy::new().with_raw_server("raw");
    let server = proxy.serve_http().await;
    let http = client();

    // No token, a wrong token: 401 with a Bearer challenge.
    let none = post(&http, &server.url, None, None, &init_body()).await;
    assert_eq!(none.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(none.headers()["www-authenticate"], "Bearer");
    let wrong = post(&http, &server.url, Some("not-a-token"), None, &init_body()).await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);

    // A browser page on another origin: 403, even with a valid token.
    let cross = http
        .post(&server.url)
        .bearer_auth(TOKEN)
        .header("origin", "https://evil.example")
        .json(&init_body())
        .send()
        .await
        .unwrap();
    assert_eq!(cross.status(), StatusCode::FORBIDDEN);
    // DNS rebinding: a foreign Host header on a loopback listener, and
    // one that begins as this listener's own address.
    let port = server
        .url
        .trim_start_matches("http://127.0.0.1:")
        .trim_end_matches("/mcp")
        .to_owned();
    for host in [
        "attacker.example".to_owned(),
        format!("127.0.0.1:{port}.evil.example"),
        "127.0.0.1:http".to_owned(),
    ] {
        let rebound = http
            .post(&server.url)
            .bearer_auth(TOKEN)
            .header("host", &host)
            .json(&init_body())
            .send()
            .await
            .unwrap();
        assert_eq!(rebound.status(), StatusCode::FORBIDDEN, "{host}");
    }

    let session = initialize(&http, &server.url, TOKEN).await;
    let call = json!({"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"raw__mirror","arguments":{"k":1}}});

    // Without a session id: 400. Unknown session: 404.
    let missing = post(&http, &server.url, Some(TOKEN), None, &call).await;
    assert_eq!(missing.status(), StatusCode::BAD_REQUEST);
    let unknown = post(
        &http,
        &server.url,
        Some(TOKEN),
        Some("no-such-session"),
        &call,
    )
    .await;
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    // Another client's token on this session: as if it did not exist.
    let stolen = post(&http, &server.url, Some(OTHER_TOKEN), Some(&session), &call).await;
    assert_eq!(stolen.status(), StatusCode::NOT_FOUND);

    // The rightful client: the call goes through. A lone reply comes as
    // plain JSON, even to a client that accepts SSE.
    let ok = post(&http, &server.url, Some(TOKEN), Some(&session), &call).await;
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(ok.headers()["content-type"], "application/json");
    let reply: Value = ok.json().await.unwrap();
    assert_eq!(reply["id"], 2);
    assert_eq!(reply["result"]["content"][0]["text"], "mirrored");

    // A call whose server says something first is answered on an SSE
    // stream: the server's message for the call, then the reply.
    let notify =
        json!({"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"raw__notify"}});
    let streamed = post(&http, &server.url, Some(TOKEN), Some(&session), &notify).await;
    assert_eq!(streamed.status(), StatusCode::OK);
    assert!(
        streamed.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let text = streamed.text().await.unwrap();
    let events: Vec<Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|data| serde_json::from_str(data).unwrap())
        .collect();
    assert_eq!(events.len(), 2, "{text}");
    assert_eq!(events[0]["method"], "notifications/message");
    assert_eq!(events[0]["params"]["data"], json!({"n": 1, "f": 2.0}));
    let reply = &events[1];
    assert_eq!(reply["id"], 4);
    assert_eq!(reply["result"]["content"][0]["text"], "mirrored");

    // JSON-only clients get JSON.
    let json_only = http
        .post(&server.url)
        .bearer_auth(TOKEN)
        .header("accept", "application/json")
        .header("mcp-session-id", &session)
        .json(
            &json!({"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"raw__mirror"}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(json_only.status(), StatusCode::OK);
    let reply: Value = json_only.json().await.unwrap();
    assert_eq!(reply["id"], 3);

    // DELETE ends the session; it is then unknown.
    let deleted = http
        .delete(&server.url)
        .bearer_auth(TOKEN)
        .header("mcp-session-id", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::OK);
    let gone = post(&http, &server.url, Some(TOKEN), Some(&session), &call).await;
    assert_eq!(gone.status(), StatusCode::NOT_FOUND);

    let health = http
        .get(format!("{}/healthz", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_bodies_and_headers_get_clear_errors() {
    let proxy = TestProxy::new()
        .with_raw_server("raw")
        .with_config("[limits]\nmax_message_bytes = 65536");
    let server = proxy.serve_http().await;
    let http = client();
    let session = initialize(&http, &server.url, TOKEN).await;
    let send_raw = |body: Vec<u8>| {
        http.post(&server.url)
            .bearer_auth(TOKEN)
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json")
            .header("mcp-session-id", &session)
            .body(body)
            .send()
    };

    let malformed = send_raw(b"{\"jsonrpc\":".to_vec()).await.unwrap();
    assert_eq!(malformed.status(), StatusCode::BAD_REQUEST);
    let body: Value = malformed.json().await.unwrap();
    assert_eq!(body["error"]["code"], -32700);

    let batch = send_raw(b"[{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}]".to_vec())
        .await
        .unwrap();
    let body: Value = batch.json().await.unwrap();
    assert_eq!(body["error"]["code"], -32600);

    let big = format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\",\"params\":{{\"x\":\"{}\"}}}}",
        "a".repeat(200_000)
    );
    let too_large = send_raw(big.into_bytes()).await.unwrap();
    assert_eq!(too_large.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body: Value = too_large.json().await.unwrap();
    assert_eq!(body["error"]["code"], -32600);

    let deep = format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\",\"params\":{{\"a\":{}{}}}}}",
        "[".repeat(100),
        "]".repeat(100)
    );
    let too_deep = send_raw(deep.into_bytes()).await.unwrap();
    let body: Value = too_deep.json().await.unwrap();
    assert_eq!(body["error"]["code"], -32600);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("deeper")
    );

    let mismatch = http
        .post(&server.url)
        .bearer_auth(TOKEN)
        .header("accept", "application/json")
        .header("mcp-session-id", &session)
        .header("mcp-method", "tools/list")
        .json(&json!({"jsonrpc":"2.0","id":5,"method":"ping"}))
        .send()
        .await
        .unwrap();
    assert_eq!(mismatch.status(), StatusCode::BAD_REQUEST);

    let bad_version = http
        .post(&server.url)
        .bearer_auth(TOKEN)
        .header("accept", "application/json")
        .header("mcp-session-id", &session)
        .header("mcp-protocol-version", "1999-01-01")
        .json(&json!({"jsonrpc":"2.0","id":6,"method":"ping"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad_version.status(), StatusCode::BAD_REQUEST);

    let unknown_method = send_raw(
        serde_json::to_vec(&json!({"jsonrpc":"2.0","id":7,"method":"nope/nope"})).unwrap(),
    )
    .await
    .unwrap();
    let text = unknown_method.text().await.unwrap();
    assert!(text.contains("-32601"), "{text}");

    // Still serving.
    let ping =
        send_raw(serde_json::to_vec(&json!({"jsonrpc":"2.0","id":8,"method":"ping"})).unwrap())
            .await
            .unwrap();
    let body: Value = ping.json().await.unwrap();
    assert_eq!(body["result"], json!({}));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plaintext_bind_off_loopback_must_be_said_and_checks_the_host_it_is_reached_by() {
    let proxy = TestProxy::new().with_raw_server("raw");
    let config = proxy.write_config();
    let text = std::fs::read_to_string(&config).unwrap();
    let off_loopback = text.replacen(
        "listen = \"127.0.0.1:0\"\n",
        "listen = \"0.0.0.0:0\"\nallowed_hosts = [\"mcp.test\"]\n",
        1,
    );
    std::fs::write(&config, &off_loopback).unwrap();
    let stderr = common::serve_refused(&config);
    assert!(stderr.contains("is not a loopback address"), "{stderr}");
    assert!(stderr.contains("insecure_plaintext = true"), "{stderr}");

    std::fs::write(
        &config,
        format!("{off_loopback}\n[listener]\ninsecure_plaintext = true\n"),
    )
    .unwrap();
    let served = common::serve_config(&config).await;
    // Reached over loopback all the same.
    let url = served.url.replace("0.0.0.0", "127.0.0.1");
    let http = client();
    let with_host = |host: &'static str| {
        http.post(&url)
            .bearer_auth(TOKEN)
            .header("host", host)
            .header("accept", "application/json, text/event-stream")
            .json(&init_body())
            .send()
    };
    assert_eq!(
        with_host("mcp.test").await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(
        with_host("MCP.test:8811").await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(
        with_host("localhost").await.unwrap().status(),
        StatusCode::OK
    );
    let rebound = with_host("attacker.example").await.unwrap();
    assert_eq!(rebound.status(), StatusCode::FORBIDDEN);
    assert!(rebound.text().await.unwrap().contains("allowed_hosts"));
    served.terminate().await;
}
