//! Bad input through the real binary over stdio: every case gets a precise
//! JSON-RPC error, nothing panics or hangs, and the session keeps working.
#![allow(
    clippy::indexing_slicing,
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used
)]

mod common;

use common::{RawClient, TestProxy};
use serde_json::{Value, json};

async fn started() -> (TestProxy, RawClient) {
    let proxy = TestProxy::new().with_raw_server("raw");
    let client = proxy.raw_stdio().await;
    (proxy, client)
}

fn error_code(response: &Value) -> i64 {
    response
        .pointer("/error/code")
        .and_then(Value::as_i64)
        .unwrap_or_else(|| panic!("expected an error, got {response}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_before_initialize_and_a_second_initialize_are_refused() {
    let (_proxy, mut client) = started().await;
    let early = client.call(1, "tools/list", json!({})).await;
    assert_eq!(error_code(&early), -32600, "{early}");
    assert!(
        early["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("initialize")
    );

    // ping is allowed before initialize (MCP lifecycle)
    let ping = client.call(2, "ping", json!({})).await;
    assert_eq!(ping["result"], json!({}));

    let init = client.initialize().await;
    assert_eq!(init["result"]["serverInfo"]["name"], "portcullis");
    let again = client
        .call(3, "initialize", json!({"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"x","version":"0"}}))
        .await;
    assert_eq!(error_code(&again), -32600, "{again}");
    assert!(
        again["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("already initialized")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_and_invalid_messages_get_precise_errors_and_the_session_survives() {
    let (_proxy, mut client) = started().await;
    client.initialize().await;

    client
        .send_line(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":")
        .await;
    // Its id is readable, so the parse error answers it.
    let parse = client.response(json!(1)).await;
    assert_eq!(error_code(&parse), -32700, "{parse}");

    // Envelope errors: the limits interceptor names the problem.
    client
        .send(json!({"jsonrpc":"1.0","id":7,"method":"ping"}))
        .await;
    let wrong_version = client.response(json!(7)).await;
    assert_eq!(error_code(&wrong_version), -32600);
    assert_eq!(wrong_version["error"]["data"]["interceptor"], "limits");
    assert!(
        wrong_version["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("jsonrpc")
    );

    client
        .send(json!({"jsonrpc":"2.0","id":8,"method":"tools/list","params":5}))
        .await;
    let bad_params = client.response(json!(8)).await;
    assert_eq!(error_code(&bad_params), -32600, "{bad_params}");

    client.send(json!({"jsonrpc":"2.0","id":9})).await;
    let neither = client.response(json!(9)).await;
    assert_eq!(error_code(&neither), -32600, "{neither}");

    client
        .send_line(b"[{\"jsonrpc\":\"2.0\",\"id\":10,\"method\":\"ping\"}]")
        .await;
    let batch = client
        .recv_matching("a batch refusal", |m| m["id"].is_null())
        .await;
    assert_eq!(error_code(&batch), -32600);

    let unknown_method = client.call(11, "tools/destroy", json!({})).await;
    assert_eq!(error_code(&unknown_method), -32601);

    let unknown_tool = client
        .call(12, "tools/call", json!({"name":"raw__nope","arguments":{}}))
        .await;
    assert_eq!(error_code(&unknown_tool), -32602);
    assert!(
        unknown_tool["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("raw__nope")
    );

    let unknown_server = client
        .call(13, "tools/call", json!({"name":"ghost__tool"}))
        .await;
    assert_eq!(error_code(&unknown_server), -32602);

    let no_name = client.call(14, "tools/call", json!({"arguments":{}})).await;
    assert_eq!(error_code(&no_name), -32602);

    let unknown_resource = client
        .call(15, "resources/read", json!({"uri":"nowhere://x"}))
        .await;
    assert_eq!(error_code(&unknown_resource), -32002);

    // After all that, a real call still works.
    let ok = client
        .call(
            16,
            "tools/call",
            json!({"name":"raw__mirror","arguments":{}}),
        )
        .await;
    assert_eq!(common::first_text(&ok), "mirrored");
}

#[tokio::test(flavor = "multi_thread")]
async fn oversize_and_over_deep_messages_are_refused_without_ending_the_session() {
    let proxy = TestProxy::new()
        .with_raw_server("raw")
        .with_config("[limits]\nmax_message_bytes = 65536\nmax_depth = 16");
    let mut client = proxy.raw_stdio().await;
    client.initialize().await;

    // 1 MiB line against a 64 KiB limit: refused while reading.
    let big = format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":20,\"method\":\"tools/call\",\"params\":{{\"name\":\"raw__mirror\",\"arguments\":{{\"x\":\"{}\"}}}}}}",
        "a".repeat(1024 * 1024)
    );
    client.send_line(big.as_bytes()).await;
    // Refused with the request's own id, read from the head of the line.
    let too_large = client.response(json!(20)).await;
    assert_eq!(error_code(&too_large), -32600);
    assert!(
        too_large["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("65536 bytes")
    );
    assert_eq!(too_large["error"]["data"]["interceptor"], "limits");

    let deep = format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":21,\"method\":\"ping\",\"params\":{{\"a\":{}1{}}}}}",
        "[".repeat(40),
        "]".repeat(40)
    );
    client.send_line(deep.as_bytes()).await;
    // Refused with its own id too: its bytes show it, though they do not parse.
    let too_deep = client.response(json!(21)).await;
    assert_eq!(error_code(&too_deep), -32600);
    assert!(
        too_deep["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("deeper than 16")
    );

    // A pathological 100k-deep line cannot crash the parser either.
    client.send_line("[".repeat(60_000).as_bytes()).await;
    let abyss = client
        .recv_matching("a second depth refusal", |m| m["id"].is_null())
        .await;
    assert_eq!(error_code(&abyss), -32600);

    let ok = client
        .call(
            22,
            "tools/call",
            json!({"name":"raw__mirror","arguments":{"n":1}}),
        )
        .await;
    assert_eq!(common::first_text(&ok), "mirrored");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reply_too_large_to_relay_fails_its_call_at_once() {
    let proxy = TestProxy::new()
        .with_example_server("example")
        .with_config("[limits]\nmax_message_bytes = 65536");
    let mut client = proxy.raw_stdio().await;
    client.initialize().await;
    let started = std::time::Instant::now();
    let reply = client
        .call(
            1,
            "tools/call",
            json!({"name":"example__large","arguments":{"bytes":200000}}),
        )
        .await;
    assert_eq!(error_code(&reply), -32603, "{reply}");
    let message = reply["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("reply was refused") && message.contains("65536 bytes"),
        "{message}"
    );
    assert_eq!(reply["error"]["data"]["interceptor"], "limits");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "not at the call timeout"
    );
    let small = client
        .call(
            2,
            "tools/call",
            json!({"name":"example__large","arguments":{"bytes":1000}}),
        )
        .await;
    assert_eq!(common::first_text(&small).len(), 1000);
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_fields_custom_annotations_and_numbers_survive_both_ways() {
    let (_proxy, mut client) = started().await;
    client.initialize().await;

    let list = client.call(1, "tools/list", json!({})).await;
    let mirror = &list["result"]["tools"][0];
    assert_eq!(mirror["name"], "raw__mirror");
    assert_eq!(
        mirror["annotations"]["x-vendor"],
        json!({"tier": 3, "ratio": 0.5})
    );
    // Integers stay integers, floats stay floats (1.0 does not become 1).
    assert_eq!(
        serde_json::to_string(&mirror["x-unknown-field"]).unwrap_or_default(),
        "[1,1.0,-0.0,1e-7,12345678901234567]"
    );

    let request = json!({
        "jsonrpc": "2.0",
        "id": "client-id-7",
        "method": "tools/call",
        "params": {
            "name": "raw__mirror",
            "arguments": {"int": 1, "float": 1.0, "big": 9007199254740993u64, "nested": {"x-y": [true, null]}},
            "x-request-extra": {"keep": "me"},
            // 2026-07-28's envelope keys: not for a handshake server's ears.
            "_meta": {"x-trace": "abc",
                "io.modelcontextprotocol/protocolVersion": "2099-01-01",
                "io.modelcontextprotocol/clientCapabilities": {"sampling": {}},
                "io.modelcontextprotocol/logLevel": "debug"}
        },
        "x-envelope-extra": 42
    });
    client.send(request).await;
    let reply = client.response(json!("client-id-7")).await;
    let received = &reply["result"]["structuredContent"]["received"];
    // What reached the server: our fields intact, only the name unprefixed
    // and the id remapped.
    assert_eq!(received["params"]["name"], "mirror");
    assert_eq!(
        serde_json::to_string(&received["params"]["arguments"]).unwrap_or_default(),
        r#"{"int":1,"float":1.0,"big":9007199254740993,"nested":{"x-y":[true,null]}}"#
    );
    assert_eq!(received["params"]["x-request-extra"], json!({"keep": "me"}));
    assert_eq!(received["params"]["_meta"], json!({"x-trace": "abc"}));
    assert_eq!(received["x-envelope-extra"], json!(42));
    assert_ne!(
        received["id"],
        json!("client-id-7"),
        "ids are remapped upstream"
    );
    // What came back: the server's extra fields and annotations.
    let extra = &reply["result"]["x-result-extra"];
    assert_eq!(
        serde_json::to_string(&extra["int"]).unwrap_or_default(),
        "7"
    );
    assert_eq!(
        serde_json::to_string(&extra["float"]).unwrap_or_default(),
        "7.0"
    );
    // Exponent spelling may be normalized (`1.5e+300` → `1.5e300`); the value
    // is exact (serde_json `float_roundtrip`).
    assert_eq!(extra["exp"].as_f64(), Some(1.5e300));
    assert_eq!(
        reply["result"]["content"][0]["annotations"],
        json!({"x-note": 1.0})
    );
    assert_eq!(
        reply["result"]["_meta"],
        json!({"x-custom": {"keep": true}})
    );
}
