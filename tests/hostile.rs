//! Hostile peers against secret redaction, through the real binary: a
//! scripted server (`tests/fixtures/hostile_server.py`) that writes each
//! hostile frame by hand and logs every line that reached it, and raw clients
//! over stdio and streamable HTTP that read the proxy's frames as they came.
//!
//! Each test is one evasion: a secret hidden where a scanner that skips keys,
//! the envelope, base64 payloads or encodings would not look. Each asserts on
//! the bytes the other side received — the secret, the halves of its random
//! part, its base64 at every alignment and its percent-encoded forms must be
//! absent — and carries a control: a plain secret in an ordinary position in
//! the same frame that must come out redacted (so redaction is on and the
//! frame really arrived).
//!
//! The attackers: a hostile server (tools, resources, errors, notifications
//! and sampling requests toward the client) and a hostile client (requests
//! and sampling answers toward a server).
#![allow(
    clippy::indexing_slicing,
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used
)]

mod common;
#[path = "common/secrets.rs"]
mod secrets;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use common::{TOKEN, TestProxy};
use secrets::Secret;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

// ---------------------------------------------------------------------------
// Checks (the secrets are made at run time by `secrets`).

/// Panics if any form of any of `secrets` occurs in `text`.
fn assert_clean(what: &str, text: &str, secrets: &[&Secret]) {
    for secret in secrets {
        for form in secret.forms() {
            assert!(
                !text.contains(&form),
                "{what}: `{form}` (a form of the secret `{}`) got through:\n{text}",
                secret.text
            );
        }
    }
}

/// Checks a frame both as its bytes came and as JSON parsed back (a secret
/// spelled with `\u` escapes is still a secret to whoever parses it).
fn assert_frame_clean(what: &str, frame: &Frame, secrets: &[&Secret]) {
    assert_clean(what, &frame.raw, secrets);
    assert_clean(what, &frame.value.to_string(), secrets);
}

/// `data`, base64 in `frame`, must stay base64, and what it decodes to must
/// hold no form of `secrets`.
fn assert_decodes_clean(what: &str, frame: &Frame, data: &str, secrets: &[&Secret]) {
    let decoded = STANDARD
        .decode(data)
        .unwrap_or_else(|err| panic!("{what} stays base64 ({err}): {}", frame.raw));
    assert_clean(
        &format!("{what}, decoded"),
        &String::from_utf8_lossy(&decoded),
        secrets,
    );
}

/// `text` percent-encoded the hostile way: `_` and `-` always, and every
/// third other byte too, so no run of the secret is left readable.
fn percent_encoded(text: &str) -> String {
    text.bytes()
        .enumerate()
        .map(|(i, b)| {
            if b == b'_' || b == b'-' || i % 3 == 2 {
                format!("%{b:02X}")
            } else {
                (b as char).to_string()
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------
// The hostile server.

/// A proxy with the scripted server `h` behind it (its tools are `h__…`).
struct Hostile {
    proxy: TestProxy,
    log: PathBuf,
}

impl Hostile {
    /// `script` is the server's script: `{"tools": {name: [step]},
    /// "resources": {uri: [step]}}` (see the fixture's docstring).
    fn new(script: Value) -> Self {
        Self::with_server_keys(script, "")
    }

    /// Like [`Hostile::new`], with more keys for the server's `[[servers]]`
    /// entry (`timeout = "4s"`, say).
    fn with_server_keys(script: Value, keys: &str) -> Self {
        let proxy = TestProxy::new();
        let log = proxy.dir().join("received.jsonl");
        let script_path = proxy.dir().join("script.json");
        std::fs::write(&log, "").unwrap();
        std::fs::write(&script_path, serde_json::to_vec(&script).unwrap()).unwrap();
        let server = common::repo_root().join("tests/fixtures/hostile_server.py");
        let snippet = format!(
            "[[servers]]\nname = \"h\"\nprocess = {{ command = \"python3\", args = [{server:?}, \"--log\", {log:?}, \"--script\", {script_path:?}] }}\n{keys}\n"
        );
        Self {
            proxy: proxy.with_server_toml(&snippet),
            log,
        }
    }

    /// A proxy with the server scripted by `script`, and a client of it
    /// connected `via`.
    async fn start(script: Value, via: Via) -> (Self, AnyClient) {
        let hostile = Self::new(script);
        let client = AnyClient::start(&hostile, via).await;
        (hostile, client)
    }

    /// Every line that reached the server so far, as it came.
    fn received(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// The line that reached the server for the first message `matches`.
    fn received_matching(&self, what: &str, matches: impl Fn(&Value) -> bool) -> Frame {
        let lines = self.received();
        lines
            .iter()
            .find_map(|line| {
                let value: Value = serde_json::from_str(line).ok()?;
                matches(&value).then(|| Frame {
                    raw: line.clone(),
                    value,
                })
            })
            .unwrap_or_else(|| {
                panic!(
                    "{what} never reached the server; it got:\n{}",
                    lines.join("\n")
                )
            })
    }

    /// No form of `secrets` may be in anything that reached the server.
    fn assert_received_clean(&self, secrets: &[&Secret]) {
        assert_clean(
            "all the server received",
            &self.received().join("\n"),
            secrets,
        );
    }

    /// The `tools/call` of `tool` (unprefixed) as it reached the server.
    fn received_call(&self, tool: &str) -> Frame {
        self.received_matching(&format!("the call of `{tool}`"), |m| {
            m["method"] == "tools/call" && m["params"]["name"] == tool
        })
    }
}

/// A script step that sends `line` as is.
fn send(line: impl Into<String>) -> Value {
    json!({ "send": line.into() })
}

/// A script step that answers the request with `result`.
fn reply(result: &Value) -> Value {
    send(format!(
        r#"{{"jsonrpc":"2.0","id":{{id}},"result":{result}}}"#
    ))
}

/// A text content block.
fn text(text: impl Into<String>) -> Value {
    json!({"type": "text", "text": text.into()})
}

/// The control of a frame: a plain secret in an ordinary text block.
fn control_block(control: &Secret) -> Value {
    text(format!("control {}", control.text))
}

fn assert_control_redacted(reply: &Value, control: &Secret) {
    let texts = content_texts(reply);
    assert!(
        texts.contains(&format!("control {}", control.placeholder())),
        "control: the plain secret must come out redacted (is the frame delivered, is redaction on?): {reply}"
    );
}

fn content_texts(reply: &Value) -> Vec<String> {
    reply["result"]["content"]
        .as_array()
        .unwrap_or_else(|| panic!("no content in {reply}"))
        .iter()
        .filter_map(|block| block["text"].as_str().map(str::to_owned))
        .collect()
}

fn b64(text: &str) -> String {
    STANDARD.encode(text.as_bytes())
}

// ---------------------------------------------------------------------------
// Raw clients.

fn is_response_to(message: &Value, id: &Value) -> bool {
    message.get("id") == Some(id) && message.get("method").is_none()
}

/// One message as it came off the wire, and parsed.
#[derive(Debug, Clone)]
struct Frame {
    raw: String,
    value: Value,
}

/// `portcullis stdio` with every line the client received kept as it came.
struct StdioClient {
    _child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    incoming: mpsc::UnboundedReceiver<String>,
    backlog: Vec<Frame>,
    seen: Vec<String>,
}

impl StdioClient {
    async fn start(proxy: &TestProxy) -> Self {
        let mut client = Self::spawn(proxy);
        let reply = client
            .call(
                json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{
                "protocolVersion":"2025-06-18",
                "capabilities":{"sampling":{}},
                "clientInfo":{"name":"hostile-test","version":"0"}}}),
            )
            .await;
        assert!(
            reply.value.get("result").is_some(),
            "initialize: {}",
            reply.raw
        );
        client
            .send(&json!({"jsonrpc":"2.0","method":"notifications/initialized"}))
            .await;
        client
    }

    /// A connection that has sent nothing yet (no handshake).
    fn spawn(proxy: &TestProxy) -> Self {
        let mut command = proxy.stdio_command();
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("spawn portcullis stdio");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("[proxy] {line}");
            }
        });
        let (tx, incoming) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            _child: child,
            stdin,
            incoming,
            backlog: Vec::new(),
            seen: Vec::new(),
        }
    }

    async fn send(&mut self, message: &Value) {
        let mut line = serde_json::to_vec(message).unwrap();
        line.push(b'\n');
        self.stdin.write_all(&line).await.unwrap();
        self.stdin.flush().await.unwrap();
    }

    async fn recv_matching(&mut self, what: &str, matches: impl Fn(&Value) -> bool) -> Frame {
        if let Some(at) = self.backlog.iter().position(|f| matches(&f.value)) {
            return self.backlog.remove(at);
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let raw = tokio::time::timeout_at(deadline, self.incoming.recv())
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for {what}; got {:?}", self.backlog))
                .unwrap_or_else(|| panic!("the proxy closed stdout while waiting for {what}"));
            self.seen.push(raw.clone());
            let value: Value = serde_json::from_str(&raw).unwrap_or_else(|err| {
                panic!("the proxy wrote a line that is not JSON ({err}): {raw}")
            });
            let frame = Frame { raw, value };
            if matches(&frame.value) {
                return frame;
            }
            self.backlog.push(frame);
        }
    }

    /// Sends a request (any envelope); every frame received until its
    /// response, the response last.
    async fn exchange(&mut self, request: Value) -> Vec<Frame> {
        let id = request["id"].clone();
        self.send(&request).await;
        let response = self
            .recv_matching(&format!("the response to id {id}"), |m| {
                is_response_to(m, &id)
            })
            .await;
        let mut frames = std::mem::take(&mut self.backlog);
        frames.push(response);
        frames
    }

    async fn call(&mut self, request: Value) -> Frame {
        self.exchange(request).await.pop().unwrap()
    }

    /// Every line received so far, as it came.
    fn everything(&self) -> String {
        self.seen.join("\n")
    }
}

/// A streamable HTTP session of `tester`, reading each response body raw.
struct HttpClient {
    /// The proxy, alive as long as its client.
    _server: common::HttpProxy,
    http: reqwest::Client,
    url: String,
    session: String,
    seen: Vec<String>,
}

impl HttpClient {
    async fn connect(server: common::HttpProxy) -> Self {
        let url = server.url.clone();
        let http = reqwest::Client::new();
        let session = common::initialize_http(&http, &url, TOKEN, "hostile-http").await;
        let mut client = Self {
            _server: server,
            http,
            url,
            session,
            seen: Vec::new(),
        };
        client
            .post(&json!({"jsonrpc":"2.0","method":"notifications/initialized"}))
            .await;
        client
    }

    /// POSTs `message`; the messages of the response body, each with its
    /// bytes as they came (the whole body for a JSON reply, the `data:` of
    /// each event for an SSE stream).
    async fn post(&mut self, message: &Value) -> Vec<Frame> {
        let response = self
            .http
            .post(&self.url)
            .bearer_auth(TOKEN)
            .header("accept", "application/json, text/event-stream")
            .header("mcp-session-id", &self.session)
            .json(message)
            .send()
            .await
            .expect("POST /mcp");
        let is_stream = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        let body = response.text().await.expect("the body");
        self.seen.push(body.clone());
        let frame = |raw: &str| Frame {
            raw: raw.to_owned(),
            value: serde_json::from_str(raw).unwrap_or_else(|err| panic!("{err}: {raw}")),
        };
        if body.trim().is_empty() {
            Vec::new()
        } else if is_stream {
            body.lines()
                .filter_map(|line| line.strip_prefix("data:"))
                .map(str::trim)
                .filter(|data| !data.is_empty())
                .map(frame)
                .collect()
        } else {
            vec![frame(&body)]
        }
    }
}

/// Where a test's client connects.
#[derive(Debug, Clone, Copy)]
enum Via {
    Stdio,
    Http,
}

/// A client over stdio or HTTP (the proxy process is kept alive with it).
enum AnyClient {
    Stdio(StdioClient),
    Http(HttpClient),
}

impl AnyClient {
    async fn start(hostile: &Hostile, via: Via) -> Self {
        match via {
            Via::Stdio => Self::Stdio(StdioClient::start(&hostile.proxy).await),
            Via::Http => Self::Http(HttpClient::connect(hostile.proxy.serve_http().await).await),
        }
    }

    /// Sends a request; every frame the client got until its response, the
    /// response last.
    async fn exchange(&mut self, request: Value) -> Vec<Frame> {
        match self {
            Self::Stdio(client) => client.exchange(request).await,
            Self::Http(client) => {
                let id = request["id"].clone();
                let mut frames = client.post(&request).await;
                let at = frames
                    .iter()
                    .position(|f| is_response_to(&f.value, &id))
                    .unwrap_or_else(|| panic!("no response to id {id} in {frames:?}"));
                let response = frames.remove(at);
                frames.push(response);
                frames
            }
        }
    }

    /// Sends a request and returns its response.
    async fn call(&mut self, request: Value) -> Frame {
        self.exchange(request).await.pop().unwrap()
    }

    /// `tools/call` of `tool` with `arguments`.
    async fn call_tool(&mut self, id: i64, tool: &str, arguments: Value) -> Frame {
        self.call(json!({"jsonrpc":"2.0","id":id,"method":"tools/call",
            "params":{"name": tool, "arguments": arguments}}))
            .await
    }

    fn everything(&self) -> String {
        match self {
            Self::Stdio(client) => client.everything(),
            Self::Http(client) => client.seen.join("\n"),
        }
    }

    /// No form of `secrets` may be in anything the client received.
    fn assert_received_clean(&self, secrets: &[&Secret]) {
        assert_clean("all the client received", &self.everything(), secrets);
    }
}

/// The reply must be a result (delivered), not an error.
fn assert_result(reply: &Frame) {
    assert!(
        reply.value.get("result").is_some(),
        "the reply must arrive with its result: {}",
        reply.raw
    );
}

/// `found`, a member of `frame`, must be `expected` (the frame shown if not).
fn assert_member(frame: &Frame, found: &Value, expected: Value) {
    assert_eq!(found, &expected, "{}", frame.raw);
}

/// The reply must be the redact interceptor's refusal.
fn assert_refused_by_redact(reply: &Frame) {
    assert_member(reply, &reply.value["error"]["code"], json!(-32010));
    assert_member(
        reply,
        &reply.value["error"]["data"]["interceptor"],
        json!("redact"),
    );
}

/// `hidden` and then `control`, to check a frame for.
fn with_control<'a>(hidden: &[&'a Secret], control: &'a Secret) -> Vec<&'a Secret> {
    hidden.iter().copied().chain([control]).collect()
}

/// The two tests of a scenario `async fn(Via)`: over stdio and over HTTP.
macro_rules! over_stdio_and_http {
    ($scenario:ident, $stdio:ident, $http:ident) => {
        #[tokio::test]
        async fn $stdio() {
            $scenario(Via::Stdio).await;
        }

        #[tokio::test]
        async fn $http() {
            $scenario(Via::Http).await;
        }
    };
}

// ---------------------------------------------------------------------------
// Server → client.

/// The reply to a call whose result carries `control` in a control block:
/// it must arrive as a result with the control redacted, and no form of
/// `hidden` or of the control may be in it.
fn assert_reply_clean(what: &str, reply: &Frame, hidden: &[&Secret], control: &Secret) {
    assert_result(reply);
    assert_control_redacted(&reply.value, control);
    assert_frame_clean(what, reply, &with_control(hidden, control));
}

/// 1. A secret in `structuredContent` under a key named `blob`.
async fn structured_content_blob(via: Via) {
    let (secret, control) = (Secret::github(), Secret::stripe());
    let (_hostile, mut client) = Hostile::start(
        json!({"tools": {"blobby": [reply(&json!({
            "content": [control_block(&control)],
            "structuredContent": {"blob": secret.text, "size": 3},
        }))]}}),
        via,
    )
    .await;
    let reply = client.call_tool(1, "h__blobby", json!({})).await;
    assert_reply_clean("structuredContent.blob", &reply, &[&secret], &control);
    let blob = reply.value["result"]["structuredContent"]["blob"]
        .as_str()
        .unwrap_or_default();
    assert_eq!(blob, secret.placeholder(), "{}", reply.raw);
    client.assert_received_clean(&[&secret]);
}

over_stdio_and_http!(
    structured_content_blob,
    structured_content_blob_key_is_redacted_over_stdio,
    structured_content_blob_key_is_redacted_over_http
);

/// 2. A secret as an object key inside `structuredContent`.
#[tokio::test]
async fn a_secret_as_a_structured_content_key_is_renamed() {
    let (secret, control) = (Secret::github(), Secret::stripe());
    let (_hostile, mut client) = Hostile::start(
        json!({"tools": {"keyed": [reply(&json!({
            "content": [control_block(&control)],
            "structuredContent": {"env": {format!("cfg-{}", secret.text): "value-kept"}},
        }))]}}),
        Via::Stdio,
    )
    .await;
    let reply = client.call_tool(1, "h__keyed", json!({})).await;
    assert_reply_clean("a structuredContent key", &reply, &[&secret], &control);
    let env = &reply.value["result"]["structuredContent"]["env"];
    assert_eq!(
        env,
        &json!({format!("cfg-{}", secret.placeholder()): "value-kept"}),
        "the key is renamed, the value kept: {}",
        reply.raw
    );
}

/// 3. A secret in a top-level envelope field beside `result`.
async fn envelope_beside_result(via: Via) {
    let (secret, control) = (Secret::github(), Secret::stripe());
    let result = json!({"content": [control_block(&control)]});
    let line = format!(
        r#"{{"jsonrpc":"2.0","id":{{id}},"result":{result},"x-debug":{}}}"#,
        json!(format!("upstream token {}", secret.text))
    );
    let script = json!({"tools": {"enveloped": [send(line)]}});
    let (_hostile, mut client) = Hostile::start(script, via).await;
    let reply = client.call_tool(1, "h__enveloped", json!({})).await;
    assert_reply_clean("a field beside `result`", &reply, &[&secret], &control);
    client.assert_received_clean(&[&secret]);
}

over_stdio_and_http!(
    envelope_beside_result,
    an_envelope_field_beside_result_does_not_carry_a_secret_over_stdio,
    an_envelope_field_beside_result_does_not_carry_a_secret_over_http
);

/// 4. A secret split across two adjacent `text` blocks.
async fn split_across_blocks(via: Via) {
    let (secret, control) = (Secret::github(), Secret::stripe());
    let (first, second) = secret.halves();
    let (_hostile, mut client) = Hostile::start(
        json!({"tools": {"split": [reply(&json!({
            "content": [
                text(format!("the deploy key is ghp_{first}")),
                text(format!("{second} (rotate monthly)")),
                control_block(&control),
            ],
        }))]}}),
        via,
    )
    .await;
    let reply = client.call_tool(1, "h__split", json!({})).await;
    assert_reply_clean("a secret split across blocks", &reply, &[&secret], &control);
    let joined = content_texts(&reply.value).concat();
    assert_clean("the blocks' texts joined", &joined, &[&secret]);
}

over_stdio_and_http!(
    split_across_blocks,
    a_secret_split_across_text_blocks_is_redacted_over_stdio,
    a_secret_split_across_text_blocks_is_redacted_over_http
);

/// 5. A secret in a result's `_meta`.
#[tokio::test]
async fn a_secret_in_result_meta_is_redacted() {
    let (secret, nested, control) = (Secret::github(), Secret::slack(), Secret::stripe());
    let (_hostile, mut client) = Hostile::start(
        json!({"tools": {"meta": [reply(&json!({
            "content": [control_block(&control)],
            "_meta": {"x-debug": secret.text, "trace": {"spans": [nested.text]}},
        }))]}}),
        Via::Stdio,
    )
    .await;
    let reply = client.call_tool(1, "h__meta", json!({})).await;
    assert_reply_clean("result._meta", &reply, &[&secret, &nested], &control);
    let meta = &reply.value["result"]["_meta"];
    assert_member(&reply, &meta["x-debug"], json!(secret.placeholder()));
    assert_member(
        &reply,
        &meta["trace"]["spans"][0],
        json!(nested.placeholder()),
    );
}

/// 5b. A 2026-07-28 client's envelope is the proxy's to read: the server
/// is sent none of the protocol's `_meta` keys (the envelope, or one the
/// client made up), and the client's own keys as they came.
#[tokio::test]
async fn a_stateless_clients_protocol_meta_never_reaches_the_server() {
    let hostile = Hostile::new(json!({"tools": {"meta": [reply(&json!({
        "content": [text("answered")],
    }))]}}));
    let served = hostile.proxy.serve_http().await;
    let call = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
        "name": "h__meta", "arguments": {},
        "_meta": {
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {"sampling": {}},
            "io.modelcontextprotocol/clientInfo": {"name": "agent", "version": "1"},
            "io.modelcontextprotocol/logLevel": "error",
            "io.modelcontextprotocol/madeUp": {"smuggled": true},
            "x-trace": "kept",
        },
    }});
    let answer: Value = reqwest::Client::new()
        .post(&served.url)
        .bearer_auth(TOKEN)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/call")
        .header("mcp-name", "h__meta")
        .json(&call)
        .send()
        .await
        .expect("POST /mcp")
        .json()
        .await
        .expect("a JSON reply");
    assert_eq!(
        answer["result"]["content"][0]["text"], "answered",
        "{answer}"
    );
    let received = hostile.received_call("meta");
    assert!(
        !received.raw.contains("io.modelcontextprotocol"),
        "{}",
        received.raw
    );
    assert_eq!(
        received.value["params"]["_meta"]["x-trace"], "kept",
        "{}",
        received.raw
    );
}

/// 6a. An `image` block whose `data` is base64 of text holding a secret.
#[tokio::test]
async fn an_image_whose_data_decodes_to_a_secret_is_redacted() {
    let (secret, control) = (Secret::github(), Secret::stripe());
    let data = b64(&format!("token={}\n", secret.text));
    let (_hostile, mut client) = Hostile::start(
        json!({"tools": {"picture": [reply(&json!({
            "content": [
                {"type": "image", "mimeType": "image/png", "data": data},
                control_block(&control),
            ],
        }))]}}),
        Via::Stdio,
    )
    .await;
    let reply = client.call_tool(1, "h__picture", json!({})).await;
    assert_reply_clean("an image's base64 data", &reply, &[&secret], &control);
    let image = reply.value["result"]["content"]
        .as_array()
        .unwrap()
        .iter()
        .find(|block| block["type"] == "image")
        .unwrap_or_else(|| panic!("the image block is kept: {}", reply.raw));
    let data = image["data"].as_str().unwrap_or_default();
    assert_decodes_clean("the image data", &reply, data, &[&secret]);
}

/// 6b. An `image` block whose `data` is not base64: it cannot be checked,
/// so the reply is refused. (The control: valid base64 passes unchanged.)
#[tokio::test]
async fn an_image_whose_data_is_not_base64_is_refused() {
    let secret = Secret::github();
    let png = STANDARD.encode(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x06\0\0\0");
    let (_hostile, mut client) = Hostile::start(
        json!({"tools": {
            "fine": [reply(&json!({"content": [{"type": "image", "mimeType": "image/png", "data": png}]}))],
            "bogus": [reply(&json!({"content": [
                {"type": "image", "mimeType": "image/png", "data": format!("not base64: {}", secret.text)},
            ]}))],
        }}),
        Via::Stdio,
    )
    .await;
    let fine = client.call_tool(1, "h__fine", json!({})).await;
    assert_eq!(
        fine.value["result"]["content"][0]["data"],
        json!(png),
        "control: a real image passes unchanged: {}",
        fine.raw
    );
    let reply = client.call_tool(2, "h__bogus", json!({})).await;
    assert_frame_clean("an image's bogus data", &reply, &[&secret]);
    assert_refused_by_redact(&reply);
}

/// `resources/read` of `uri`: the reply.
async fn read_resource(client: &mut AnyClient, uri: &str) -> Frame {
    client
        .call(json!({"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri": uri}}))
        .await
}

/// 7a. A `resources/read` blob that is base64 of a secret.
#[tokio::test]
async fn a_resource_blob_that_decodes_to_a_secret_is_redacted() {
    let (secret, control) = (Secret::github(), Secret::stripe());
    let uri = "hostile://blob";
    let (_hostile, mut client) = Hostile::start(
        json!({"resources": {uri: [reply(&json!({"contents": [
            {"uri": uri, "mimeType": "application/octet-stream", "blob": b64(&format!("token={}", secret.text))},
            {"uri": uri, "mimeType": "text/plain", "text": format!("control {}", control.text)},
        ]}))]}}),
        Via::Stdio,
    )
    .await;
    let reply = read_resource(&mut client, uri).await;
    assert_result(&reply);
    let contents = reply.value["result"]["contents"].as_array().unwrap();
    assert!(
        contents
            .iter()
            .any(|c| c["text"] == json!(format!("control {}", control.placeholder()))),
        "control: {}",
        reply.raw
    );
    assert_frame_clean("a resource blob", &reply, &[&secret, &control]);
    for blob in contents.iter().filter_map(|c| c["blob"].as_str()) {
        assert_decodes_clean("the blob", &reply, blob, &[&secret]);
    }
}

/// 7b. A text resource whose text holds a secret.
#[tokio::test]
async fn a_text_resource_holding_a_secret_is_redacted() {
    let secret = Secret::github();
    let uri = "hostile://notes.txt";
    let (_hostile, mut client) = Hostile::start(
        json!({"resources": {uri: [reply(&json!({"contents": [
            {"uri": uri, "mimeType": "text/plain", "text": format!("deploy key: {}\n", secret.text)},
        ]}))]}}),
        Via::Stdio,
    )
    .await;
    let reply = read_resource(&mut client, uri).await;
    assert_result(&reply);
    assert_frame_clean("a text resource", &reply, &[&secret]);
    assert_member(
        &reply,
        &reply.value["result"]["contents"][0]["text"],
        json!(format!("deploy key: {}\n", secret.placeholder())),
    );
}

/// A tool `name` whose result is `content` (a text block) and a control
/// block: the reply, checked with `assert_reply_clean`, and the text of its
/// first block.
async fn text_reply(
    what: &str,
    name: &str,
    content: String,
    secret: &Secret,
    control: &Secret,
) -> (Frame, String) {
    let (_hostile, mut client) = Hostile::start(
        json!({"tools": {name: [reply(&json!({
            "content": [text(content), control_block(control)],
        }))]}}),
        Via::Stdio,
    )
    .await;
    let reply = client.call_tool(1, &format!("h__{name}"), json!({})).await;
    assert_reply_clean(what, &reply, &[secret], control);
    let first = reply.value["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    (reply, first)
}

/// 8a. A base64-encoded secret inside ordinary text.
#[tokio::test]
async fn a_base64_encoded_secret_in_text_is_redacted() {
    let (secret, control) = (Secret::github(), Secret::stripe());
    let encoded = b64(&format!("token={}", secret.text));
    let content = format!("config: {encoded}");
    let (reply, first) = text_reply("base64 in text", "encoded", content, &secret, &control).await;
    assert!(!first.contains(&encoded), "{}", reply.raw);
    assert!(
        first.starts_with("config: ") && first.contains("[REDACTED:"),
        "the encoded run is replaced by a placeholder: {}",
        reply.raw
    );
}

/// 8b. A percent-encoded secret in a URL inside text.
#[tokio::test]
async fn a_percent_encoded_secret_in_a_url_is_redacted() {
    let (secret, control) = (Secret::stripe(), Secret::github());
    let encoded = percent_encoded(&secret.text);
    let content = format!("open https://x.test/cb?t={encoded}&state=1 to finish");
    let what = "a percent-encoded secret";
    let (reply, first) = text_reply(what, "callback", content, &secret, &control).await;
    assert!(
        !first.contains(&encoded),
        "the encoded secret got through: {}",
        reply.raw
    );
    assert!(first.contains("[REDACTED:"), "{}", reply.raw);
}

/// 9. A secret in an error's `message` and `data` (string and nested).
#[tokio::test]
async fn a_secret_in_an_error_message_and_data_is_redacted() {
    let (in_message, in_object, in_string) = (Secret::github(), Secret::slack(), Secret::stripe());
    let error = |data: Value| {
        send(format!(
            r#"{{"jsonrpc":"2.0","id":{{id}},"error":{}}}"#,
            json!({"code": -32000, "message": format!("auth failed for {}", in_message.text), "data": data})
        ))
    };
    let (_hostile, mut client) = Hostile::start(
        json!({"tools": {
            "fails": [error(json!({"request": {"headers": [format!("X-Token {}", in_object.text)]}}))],
            "fails_plain": [error(json!(format!("retry with {}", in_string.text)))],
        }}),
        Via::Stdio,
    )
    .await;
    let reply = client.call_tool(1, "h__fails", json!({})).await;
    assert_frame_clean("an error", &reply, &[&in_message, &in_object]);
    let error = &reply.value["error"];
    assert_member(
        &reply,
        &error["message"],
        json!(format!("auth failed for {}", in_message.placeholder())),
    );
    assert_member(
        &reply,
        &error["data"]["request"]["headers"][0],
        json!(format!("X-Token {}", in_object.placeholder())),
    );
    let reply = client.call_tool(2, "h__fails_plain", json!({})).await;
    assert_frame_clean("an error's string data", &reply, &[&in_message, &in_string]);
    assert_member(
        &reply,
        &reply.value["error"]["data"],
        json!(format!("retry with {}", in_string.placeholder())),
    );
}

/// The one frame among `frames` that `matches`.
fn only<'a>(frames: &'a [Frame], what: &str, matches: impl Fn(&Value) -> bool) -> &'a Frame {
    let found: Vec<&Frame> = frames.iter().filter(|f| matches(&f.value)).collect();
    match found.as_slice() {
        [frame] => frame,
        _ => panic!("expected one {what} among {frames:?}"),
    }
}

/// 10a. A secret in a progress notification sent during a call.
async fn progress_notification(via: Via) {
    let secret = Secret::github();
    let (_hostile, mut client) = Hostile::start(
        json!({"tools": {"slow": [
            send(format!(
                r#"{{"jsonrpc":"2.0","method":"notifications/progress","params":{{"progressToken":{{progressToken}},"progress":1,"total":2,"message":{}}}}}"#,
                json!(format!("cloning with {}", secret.text))
            )),
            reply(&json!({"content": [text("done")]})),
        ]}}),
        via,
    )
    .await;
    let frames = client
        .exchange(json!({"jsonrpc":"2.0","id":1,"method":"tools/call",
            "params":{"name":"h__slow","arguments":{},"_meta":{"progressToken":"p-1"}}}))
        .await;
    assert_result(frames.last().unwrap());
    let progress = only(&frames, "progress notification", |m| {
        m["method"] == "notifications/progress"
    });
    assert_member(
        progress,
        &progress.value["params"]["progressToken"],
        json!("p-1"),
    );
    assert_frame_clean("a progress notification", progress, &[&secret]);
    assert_member(
        progress,
        &progress.value["params"]["message"],
        json!(format!("cloning with {}", secret.placeholder())),
    );
    client.assert_received_clean(&[&secret]);
}

over_stdio_and_http!(
    progress_notification,
    a_secret_in_a_progress_notification_is_redacted_over_stdio,
    a_secret_in_a_progress_notification_is_redacted_over_http
);

/// 10b. Secrets in log notifications sent during a call: `data` as a string
/// and nested in an object.
async fn log_notifications(via: Via) {
    let (plain, nested) = (Secret::github(), Secret::slack());
    let log = |data: Value| {
        send(format!(
            r#"{{"jsonrpc":"2.0","method":"notifications/message","params":{}}}"#,
            json!({"level": "warning", "logger": "auth", "data": data})
        ))
    };
    let (_hostile, mut client) = Hostile::start(
        json!({"tools": {"chatty": [
            log(json!(format!("logged in with {}", plain.text))),
            log(json!({"event": "login", "detail": {"attempts": [format!("bot {}", nested.text)]}})),
            reply(&json!({"content": [text("done")]})),
        ]}}),
        via,
    )
    .await;
    let frames = client
        .exchange(json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"h__chatty","arguments":{}}}))
        .await;
    assert_result(frames.last().unwrap());
    let string = only(&frames, "log message with a string", |m| {
        m["method"] == "notifications/message" && m["params"]["data"].is_string()
    });
    let object = only(&frames, "log message with an object", |m| {
        m["method"] == "notifications/message" && m["params"]["data"].is_object()
    });
    assert_frame_clean("a log message (string)", string, &[&plain, &nested]);
    assert_frame_clean("a log message (object)", object, &[&plain, &nested]);
    assert_member(
        string,
        &string.value["params"]["data"],
        json!(format!("logged in with {}", plain.placeholder())),
    );
    assert_member(
        object,
        &object.value["params"]["data"]["detail"]["attempts"][0],
        json!(format!("bot {}", nested.placeholder())),
    );
}

over_stdio_and_http!(
    log_notifications,
    a_secret_in_a_log_notification_is_redacted_over_stdio,
    a_secret_in_a_log_notification_is_redacted_over_http
);

/// A hostile server that, asked to run `ask`, sends `request` (a sampling
/// request) to the client and answers once the client answered; a stdio
/// client that called `ask`; and the request as the client received it.
async fn sampling_request(request: &Value) -> (Hostile, StdioClient, Frame) {
    let hostile = Hostile::new(json!({"tools": {"ask": [
        send(request.to_string()),
        {"await": request["id"]},
        reply(&json!({"content": [text("asked")]})),
    ]}}));
    let mut client = StdioClient::start(&hostile.proxy).await;
    client
        .send(&json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"h__ask","arguments":{}}}))
        .await;
    let sampling = client
        .recv_matching("the sampling request", |m| {
            m["method"] == "sampling/createMessage"
        })
        .await;
    (hostile, client, sampling)
}

/// 11. A sampling request holding a secret, and a client answer holding one.
#[tokio::test]
async fn secrets_in_a_sampling_request_and_its_answer_are_redacted() {
    let (asked, answered) = (Secret::github(), Secret::stripe());
    let request = json!({"jsonrpc": "2.0", "id": "hostile-s1", "method": "sampling/createMessage",
        "params": {"messages": [{"role": "user", "content": {"type": "text", "text": format!("summarize {}", asked.text)}}],
                   "maxTokens": 10}});
    let (hostile, mut client, sampling) = sampling_request(&request).await;
    assert_frame_clean("a sampling request", &sampling, &[&asked]);
    assert_member(
        &sampling,
        &sampling.value["params"]["messages"][0]["content"]["text"],
        json!(format!("summarize {}", asked.placeholder())),
    );
    client
        .send(&json!({"jsonrpc":"2.0","id":sampling.value["id"],"result":{
            "role":"assistant","model":"m",
            "content":{"type":"text","text":format!("the key is {}", answered.text)}}}))
        .await;
    let reply = client
        .recv_matching("the reply", |m| m["id"] == 1 && m.get("method").is_none())
        .await;
    assert_result(&reply);
    let answer = hostile.received_matching("the sampling answer", |m| {
        m["id"] == "hostile-s1" && m.get("method").is_none()
    });
    assert_frame_clean("the sampling answer", &answer, &[&answered]);
    assert_member(
        &answer,
        &answer.value["result"]["content"]["text"],
        json!(format!("the key is {}", answered.placeholder())),
    );
}

/// 11a. The same through a 2026-07-28 client, which has no requests from
/// server to client: the question comes as a round of its call
/// (`input_required`), the answer with its retry.
#[tokio::test]
async fn secrets_in_a_round_question_and_its_retry_answer_are_redacted() {
    let (asked, answered) = (Secret::github(), Secret::stripe());
    let request = json!({"jsonrpc": "2.0", "id": "hostile-r1", "method": "sampling/createMessage",
        "params": {"messages": [{"role": "user", "content": {"type": "text", "text": format!("summarize {}", asked.text)}}],
                   "maxTokens": 10}});
    let hostile = Hostile::new(json!({"tools": {"ask": [
        send(request.to_string()),
        {"await": request["id"]},
        reply(&json!({"content": [text("asked")]})),
    ]}}));
    let mut client = StdioClient::spawn(&hostile.proxy);
    let call = json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{
        "name":"h__ask","arguments":{},
        "_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28",
                 "io.modelcontextprotocol/clientCapabilities":{"sampling":{}}}}});
    client.send(&call).await;
    let round = client
        .recv_matching("the round", |m| m["id"] == 1 && m.get("method").is_none())
        .await;
    assert_eq!(
        round.value["result"]["resultType"], "input_required",
        "{}",
        round.raw
    );
    assert_frame_clean("a round's question", &round, &[&asked]);
    let questions = round.value["result"]["inputRequests"].as_object().unwrap();
    let (key, question) = questions.iter().next().unwrap();
    assert_member(
        &round,
        &question["params"]["messages"][0]["content"]["text"],
        json!(format!("summarize {}", asked.placeholder())),
    );
    let mut retry = call.clone();
    retry["id"] = json!(2);
    retry["params"]["requestState"] = round.value["result"]["requestState"].clone();
    retry["params"]["inputResponses"] = json!({ key.clone(): {
        "role":"assistant","model":"m",
        "content":{"type":"text","text":format!("the key is {}", answered.text)}}});
    client.send(&retry).await;
    let reply = client
        .recv_matching("the reply", |m| m["id"] == 2 && m.get("method").is_none())
        .await;
    assert_result(&reply);
    let answer = hostile.received_matching("the answer", |m| {
        m["id"] == "hostile-r1" && m.get("method").is_none()
    });
    assert_frame_clean("the round's answer", &answer, &[&answered]);
    assert_member(
        &answer,
        &answer.value["result"]["content"]["text"],
        json!(format!("the key is {}", answered.placeholder())),
    );
}

/// 11b. A sampling request whose messages carry lists of blocks, a secret
/// split from the last text of one message to the first of the next, past
/// an image.
#[tokio::test]
async fn a_secret_split_across_sampling_messages_is_redacted() {
    let asked = Secret::github();
    let (head, tail) = asked.text.split_at(asked.text.len() / 2);
    let request = json!({"jsonrpc": "2.0", "id": "hostile-s2", "method": "sampling/createMessage",
        "params": {"maxTokens": 10, "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "first"},
                {"type": "text", "text": format!("the key is {head}")},
                {"type": "image", "data": b64("not a secret"), "mimeType": "image/png"}]},
            {"role": "user", "content": [{"type": "text", "text": format!("{tail} and more")}]}]}});
    let (_hostile, _client, sampling) = sampling_request(&request).await;
    for piece in [head, tail] {
        assert!(
            !sampling.raw.contains(piece),
            "half of a split secret reached the client: {}",
            sampling.raw
        );
    }
    let messages = &sampling.value["params"]["messages"];
    assert_member(
        &sampling,
        &messages[0]["content"][1]["text"],
        json!(format!("the key is {}", asked.placeholder())),
    );
    assert_member(
        &sampling,
        &messages[1]["content"][0]["text"],
        json!(format!("{} and more", asked.placeholder())),
    );
    assert_member(
        &sampling,
        &messages[0]["content"][0]["text"],
        json!("first"),
    );
}

// ---------------------------------------------------------------------------
// Client → server.

/// The `text` argument every call carries as its control.
fn control_argument(control: &Secret) -> String {
    format!("control {}", control.text)
}

fn assert_control_argument_redacted(call: &Frame, control: &Secret) {
    assert_eq!(
        call.value["params"]["arguments"]["text"],
        json!(format!("control {}", control.placeholder())),
        "control: the plain secret must reach the server redacted: {}",
        call.raw
    );
}

/// The call of the server's `sink` tool, after `reply` to it: the reply must
/// be a result, and the call must have reached the server with its control
/// argument redacted and no form of `hidden` or of the control in it.
fn sink_call_clean(
    hostile: &Hostile,
    what: &str,
    reply: &Frame,
    hidden: &[&Secret],
    control: &Secret,
) -> Frame {
    assert_result(reply);
    let call = hostile.received_call("sink");
    assert_control_argument_redacted(&call, control);
    assert_frame_clean(what, &call, &with_control(hidden, control));
    call
}

/// A hostile server with nothing scripted (its `sink` tool answers every
/// call), a client `via` calling `sink` with `arguments` and the control
/// argument: the call as it reached the server (see `sink_call_clean`).
async fn call_sink(
    via: Via,
    what: &str,
    mut arguments: Value,
    hidden: &[&Secret],
    control: &Secret,
) -> (Hostile, Frame) {
    arguments["text"] = json!(control_argument(control));
    let (hostile, mut client) = Hostile::start(json!({}), via).await;
    let reply = client.call_tool(1, "h__sink", arguments).await;
    let call = sink_call_clean(&hostile, what, &reply, hidden, control);
    (hostile, call)
}

/// 12. A secret in `tools/call` arguments under a key named `blob`.
async fn argument_blob(via: Via) {
    let (secret, control) = (Secret::github(), Secret::stripe());
    let arguments = json!({"blob": secret.text});
    let what = "an argument named `blob`";
    let (hostile, call) = call_sink(via, what, arguments, &[&secret], &control).await;
    let blob = &call.value["params"]["arguments"]["blob"];
    assert_member(&call, blob, json!(secret.placeholder()));
    hostile.assert_received_clean(&[&secret]);
}

over_stdio_and_http!(
    argument_blob,
    an_argument_named_blob_is_redacted_over_stdio,
    an_argument_named_blob_is_redacted_over_http
);

/// 13. A secret as an argument's key.
#[tokio::test]
async fn a_secret_as_an_argument_key_is_renamed() {
    let (secret, control) = (Secret::github(), Secret::stripe());
    let arguments = json!({format!("cfg-{}", secret.text): "kept"});
    let what = "an argument key";
    let (_hostile, call) = call_sink(Via::Stdio, what, arguments, &[&secret], &control).await;
    assert_eq!(
        call.value["params"]["arguments"][format!("cfg-{}", secret.placeholder())],
        json!("kept"),
        "the key is renamed, the value kept: {}",
        call.raw
    );
}

/// 14. An image-shaped argument: not a base64 position of the schema, so
/// its `data` is text like any other.
#[tokio::test]
async fn an_image_shaped_argument_is_scanned_as_text() {
    let (secret, control) = (Secret::github(), Secret::stripe());
    let arguments = json!({
        "attachment": {"type": "image", "mimeType": "image/png", "data": secret.text},
    });
    let what = "an image-shaped argument";
    let (_hostile, call) = call_sink(Via::Stdio, what, arguments, &[&secret], &control).await;
    let data = &call.value["params"]["arguments"]["attachment"]["data"];
    assert_member(&call, data, json!(secret.placeholder()));
}

/// 15. A secret in a top-level envelope field beside `params`.
async fn envelope_beside_params(via: Via) {
    let (secret, control) = (Secret::github(), Secret::stripe());
    let (hostile, mut client) = Hostile::start(json!({}), via).await;
    let reply = client
        .call(json!({"jsonrpc":"2.0","id":1,"method":"tools/call",
            "params":{"name":"h__sink","arguments":{"text": control_argument(&control)}},
            "x-debug": format!("client token {}", secret.text)}))
        .await;
    let what = "a field beside `params`";
    sink_call_clean(&hostile, what, &reply, &[&secret], &control);
    hostile.assert_received_clean(&[&secret]);
}

over_stdio_and_http!(
    envelope_beside_params,
    an_envelope_field_beside_params_does_not_carry_a_secret_over_stdio,
    an_envelope_field_beside_params_does_not_carry_a_secret_over_http
);

/// 16. A secret in `params._meta`.
#[tokio::test]
async fn a_secret_in_params_meta_is_redacted() {
    let (secret, nested, control) = (Secret::github(), Secret::slack(), Secret::stripe());
    let (hostile, mut client) = Hostile::start(json!({}), Via::Stdio).await;
    let reply = client
        .call(json!({"jsonrpc":"2.0","id":1,"method":"tools/call",
            "params":{"name":"h__sink","arguments":{"text": control_argument(&control)},
                      "_meta":{"x-trace": secret.text, "baggage": {"items": [nested.text]}}}}))
        .await;
    let call = sink_call_clean(
        &hostile,
        "params._meta",
        &reply,
        &[&secret, &nested],
        &control,
    );
    let meta = &call.value["params"]["_meta"];
    assert_member(&call, &meta["x-trace"], json!(secret.placeholder()));
    assert_member(
        &call,
        &meta["baggage"]["items"][0],
        json!(nested.placeholder()),
    );
}

/// 17. A client's `notifications/roots/list_changed` with a secret in its
/// params, its `_meta` and beside them: the server gets the proxy's own,
/// empty notification, nothing of the client's.
#[tokio::test]
async fn a_roots_list_changed_reaches_the_server_as_the_proxys_own() {
    let secret = Secret::github();
    let (hostile, client) = Hostile::start(json!({}), Via::Stdio).await;
    let AnyClient::Stdio(mut client) = client else {
        panic!("started over stdio");
    };
    client
        .send(
            &json!({"jsonrpc":"2.0","method":"notifications/roots/list_changed",
            "params":{"note": secret.text, "_meta": {"k": secret.text}},
            "x-debug": secret.text}),
        )
        .await;
    // A notification has no reply: wait (bounded) until it reached the server.
    let mut waited = Duration::ZERO;
    let line = loop {
        let found = hostile
            .received()
            .into_iter()
            .find(|line| line.contains("notifications/roots/list_changed"));
        if let Some(line) = found {
            break line;
        }
        assert!(
            waited < Duration::from_secs(10),
            "the notification never reached the server; it got:\n{}",
            hostile.received().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        waited += Duration::from_millis(20);
    };
    let received: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        received,
        json!({"jsonrpc":"2.0","method":"notifications/roots/list_changed","params":{}}),
        "{line}"
    );
    hostile.assert_received_clean(&[&secret]);
}

/// Waits until the flood's server has written all of it (the last of it
/// then sits in its stdout pipe or has been read by the proxy): reading
/// before then, on a slow machine, would take most of the flood as it
/// comes, which proves nothing about a client that does not read.
async fn flood_sent(hostile: &Hostile) {
    let sent = tokio::time::timeout(Duration::from_secs(180), async {
        while !std::fs::read_to_string(&hostile.log)
            .unwrap_or_default()
            .contains("# flood sent")
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let received = std::fs::read_to_string(&hostile.log).unwrap_or_default();
    assert!(
        sent.is_ok(),
        "the server did not finish its flood; it received: {}",
        &received[..received.len().min(2000)]
    );
}

/// A server whose tool `flood` sends `times` progress notifications for
/// the call, marks its log "flood sent", then replies "done".
fn progress_flood(times: usize) -> Hostile {
    Hostile::new(json!({"tools": {"flood": [
        {"send": r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":{progressToken},"progress":1,"message":"working"}}"#,
         "times": times},
        {"mark": "flood sent"},
        reply(&json!({"content": [text("done")]})),
    ]}}))
}

/// 14. A server floods a call with progress while its client reads nothing
/// (a small receive window, then no reads): the call's stream holds a
/// bounded number of messages, the rest are dropped, and the reply still
/// arrives once the client reads. Unbounded, every one would be queued in
/// the proxy's memory and delivered.
#[tokio::test(flavor = "multi_thread")]
async fn a_call_stream_its_client_does_not_read_stays_bounded() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    const FLOOD: usize = 50_000;
    let hostile = progress_flood(FLOOD);
    let served = hostile.proxy.serve_http().await;
    let http = reqwest::Client::new();
    let session = common::initialize_http(&http, &served.url, common::TOKEN, "slow").await;

    let body = json!({"jsonrpc":"2.0","id":7,"method":"tools/call",
        "params":{"name":"h__flood","arguments":{},"_meta":{"progressToken":"p-7"}}})
    .to_string();
    let to: std::net::SocketAddr = served.base.trim_start_matches("http://").parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(to).await.unwrap();
    let request = format!(
        "POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\nMcp-Session-Id: {session}\r\n\
         Accept: application/json, text/event-stream\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        common::TOKEN,
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    // The server sends everything while the client reads nothing.
    flood_sent(&hostile).await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(120),
        stream.read_to_end(&mut answer),
    )
    .await;
    assert!(read.is_ok(), "the stream did not end");
    let answer = String::from_utf8_lossy(&answer);
    let progress = answer.matches("notifications/progress").count();
    assert!(progress > 0, "{}", &answer[..answer.len().min(2000)]);
    assert!(progress < FLOOD, "all {progress} were queued and delivered");
    assert!(
        answer.contains(r#""id":7"#) && answer.contains("done"),
        "the reply was lost: {}",
        &answer[answer.len().saturating_sub(2000)..]
    );
    served.terminate().await;
}

/// 15. The same flood through `portcullis stdio` to a client that stops
/// reading its stdout: the proxy keeps a bounded number of lines for it and
/// drops the rest, and the call's reply still arrives, whole, once the
/// client reads again. Unbounded, all of them would be queued and written.
#[tokio::test(flavor = "multi_thread")]
async fn a_stdio_client_that_does_not_read_gets_a_bounded_queue() {
    const FLOOD: usize = 50_000;
    let hostile = progress_flood(FLOOD);
    let mut command = hostile.proxy.stdio_command();
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = command.spawn().expect("spawn portcullis stdio");
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut write = async |message: Value| {
        let mut line = serde_json::to_vec(&message).unwrap();
        line.push(b'\n');
        stdin.write_all(&line).await.unwrap();
        stdin.flush().await.unwrap();
    };
    write(
        json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{
        "protocolVersion":"2025-06-18","capabilities":{},
        "clientInfo":{"name":"deaf","version":"0"}}}),
    )
    .await;
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(60), stdout.read_line(&mut line))
        .await
        .expect("initialize answered")
        .unwrap();
    assert!(
        line.contains(r#""id":0"#) && line.contains("result"),
        "{line}"
    );
    write(json!({"jsonrpc":"2.0","method":"notifications/initialized"})).await;
    write(json!({"jsonrpc":"2.0","id":7,"method":"tools/call",
        "params":{"name":"h__flood","arguments":{},"_meta":{"progressToken":"p-7"}}}))
    .await;

    // The server sends everything while the client reads nothing.
    flood_sent(&hostile).await;

    let (mut progress, mut reply) = (0_usize, None::<Value>);
    let read = tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            line.clear();
            if stdout.read_line(&mut line).await.unwrap() == 0 {
                return;
            }
            let message: Value = serde_json::from_str(&line)
                .unwrap_or_else(|err| panic!("not a JSON line ({err}): {line}"));
            if message["method"] == "notifications/progress" {
                assert_eq!(message["params"]["progressToken"], "p-7", "{line}");
                progress += 1;
            } else if message["id"] == 7 {
                reply = Some(message);
                return;
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the reply never came");
    let reply = reply.expect("the proxy closed stdout before the reply");
    assert_eq!(reply["result"]["content"][0]["text"], "done", "{reply}");
    assert!(progress > 0, "no progress reached the client");
    assert!(
        progress < FLOOD / 2,
        "{progress} of {FLOOD} were queued and delivered"
    );
    let _ = child.kill().await;
}

/// 16. A client with a valid token starts calls on one HTTP session that a
/// server never answers, each time reading the start of the call's stream
/// and going away (the call runs on without it): the session's places run
/// out and the next request is refused with 429 and its own id, instead of
/// the proxy holding any number of them. The places come back as the calls
/// time out.
#[tokio::test(flavor = "multi_thread")]
async fn an_http_session_cannot_keep_unbounded_calls_in_the_works() {
    const PLACES: usize = 256;
    let hostile = Hostile::with_server_keys(
        json!({"tools": {"hang": [
            {"send": r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":{progressToken},"progress":1}}"#},
        ]}}),
        r#"timeout = "6s""#,
    );
    let served = hostile.proxy.serve_http().await;
    let http = reqwest::Client::new();
    let session = common::initialize_http(&http, &served.url, common::TOKEN, "hoarder").await;
    let call = |id: usize, tool: &str| {
        http.post(&served.url)
            .bearer_auth(common::TOKEN)
            .header("mcp-session-id", &session)
            .header("accept", "application/json, text/event-stream")
            .json(&json!({"jsonrpc":"2.0","id":id,"method":"tools/call",
                "params":{"name":tool,"arguments":{},"_meta":{"progressToken":id}}}))
            .send()
    };
    for id in 1..=PLACES {
        let mut response = call(id, "h__hang").await.unwrap();
        assert_eq!(response.status(), 200, "call {id}");
        // The stream has begun (the progress came first); the client goes.
        let first = response.chunk().await.unwrap().unwrap_or_default();
        assert!(
            String::from_utf8_lossy(&first).contains("notifications/progress"),
            "call {id}: {}",
            String::from_utf8_lossy(&first)
        );
    }
    for id in PLACES + 1..PLACES + 4 {
        let response = call(id, "h__sink").await.unwrap();
        assert_eq!(response.status(), 429, "call {id}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["id"], id, "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains("256 requests"),
            "{body}"
        );
    }
    // The hung calls time out and give their places back.
    let answered = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let response = call(9999, "h__sink").await.unwrap();
            if response.status() == 200 {
                return response.text().await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("the places never came back");
    assert!(
        answered.contains(r#""id":9999"#) && answered.contains("ok"),
        "{answered}"
    );
    served.terminate().await;
}

/// 17. A server floods `notifications/tools/list_changed`: the proxy reads
/// its lists again a bounded number of times (notifications that come while
/// a read waits are folded into it), instead of one read, and one task, for
/// each of them.
#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_list_changed_is_folded_into_a_few_reads() {
    const FLOOD: usize = 5_000;
    let hostile = Hostile::new(json!({"tools": {"churn": [
        {"send": r#"{"jsonrpc":"2.0","method":"notifications/tools/list_changed"}"#, "times": FLOOD},
        reply(&json!({"content": [text("done")]})),
    ]}}));
    let served = hostile.proxy.serve_http().await;
    let session = common::HttpSession::connect(&served.url).await;
    let reply = session
        .call(1, "tools/call", json!({"name":"h__churn","arguments":{}}))
        .await;
    assert_eq!(reply["result"]["content"][0]["text"], "done", "{reply}");
    // A barrier: a list read after the flood was taken in. Then the reads
    // the server received are counted.
    let reads = || {
        std::fs::read_to_string(&hostile.log)
            .unwrap_or_default()
            .lines()
            .filter(|line| line.contains(r#""method":"tools/list""#))
            .count()
    };
    let mut last = reads();
    let settled = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let now = reads();
            if now == last {
                return now;
            }
            last = now;
        }
    })
    .await
    .expect("the reads never stopped");
    assert!(settled >= 2, "the lists were not read again: {settled}");
    assert!(
        settled < FLOOD / 10,
        "{settled} reads of the lists for {FLOOD} notifications"
    );
    served.terminate().await;
}

/// 18. A client subscribes one session to ever new resources (the server
/// accepts every one): past the cap each new one is refused with its own
/// id, so the proxy does not keep any number of them for the session's
/// life; one it holds may be renewed, and unsubscribing makes room.
#[tokio::test(flavor = "multi_thread")]
async fn a_session_cannot_subscribe_to_unbounded_resources() {
    const CAP: usize = 1000;
    let hostile = Hostile::new(json!({"templates": ["note:///n/{id}"]}));
    let served = hostile.proxy.serve_http().await;
    let session = common::HttpSession::connect(&served.url).await;
    let ask = |id: usize, method: &'static str, uri: String| {
        let session = &session;
        async move { session.call(id as i64, method, json!({"uri": uri})).await }
    };
    for n in 0..CAP {
        let reply = ask(n, "resources/subscribe", format!("note:///n/{n}")).await;
        assert!(reply.get("result").is_some(), "subscription {n}: {reply}");
    }
    let refused = ask(CAP, "resources/subscribe", format!("note:///n/{CAP}")).await;
    assert_eq!(refused["id"], CAP, "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("subscribed to 1000 resources"),
        "{refused}"
    );
    let renewed = ask(CAP + 1, "resources/subscribe", "note:///n/7".into()).await;
    assert!(renewed.get("result").is_some(), "{renewed}");
    let left = ask(CAP + 2, "resources/unsubscribe", "note:///n/7".into()).await;
    assert!(left.get("result").is_some(), "{left}");
    let room = ask(CAP + 3, "resources/subscribe", format!("note:///n/{CAP}")).await;
    assert!(room.get("result").is_some(), "{room}");
    // Nor can one subscription be of any size.
    let unsubscribed = ask(CAP + 4, "resources/unsubscribe", "note:///n/8".into()).await;
    assert!(unsubscribed.get("result").is_some(), "{unsubscribed}");
    let long = ask(
        CAP + 5,
        "resources/subscribe",
        format!("note:///n/{}", "x".repeat(9000)),
    )
    .await;
    assert_eq!(long["id"], CAP + 5, "{long}");
    assert_eq!(long["error"]["code"], -32602, "{long}");
    // Only the accepted subscriptions reached the server.
    let received = std::fs::read_to_string(&hostile.log).unwrap();
    let subscribes = received
        .lines()
        .filter(|line| line.contains(r#""method":"resources/subscribe""#))
        .count();
    assert_eq!(subscribes, CAP + 2, "the refused one reached the server");
    served.terminate().await;
}

/// 19. A process server writes 200 MB to its stderr without ever ending the
/// line: the proxy logs it a bounded line at a time (it never holds the
/// whole line) and serves the server as usual.
#[tokio::test(flavor = "multi_thread")]
async fn a_server_that_never_ends_a_stderr_line_is_read_a_bounded_piece_at_a_time() {
    const FLOOD: u64 = 200 * 1024 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("received.jsonl");
    let script = dir.path().join("script.json");
    std::fs::write(&log, "").unwrap();
    std::fs::write(&script, "{}").unwrap();
    let server = common::repo_root().join("tests/fixtures/hostile_server.py");
    let shell = format!(
        "head -c {FLOOD} /dev/zero | tr '\\0' x >&2; exec python3 {} --log {} --script {}",
        server.display(),
        log.display(),
        script.display()
    );
    let proxy = TestProxy::new().with_server_toml(&format!(
        "[[servers]]\nname = \"h\"\nprocess = {{ command = \"sh\", args = [\"-c\", {shell:?}] }}\n"
    ));
    let served = proxy.serve_http().await;
    let session = common::HttpSession::connect(&served.url).await;
    let reply = tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            let reply = session
                .call(1, "tools/call", json!({"name":"h__sink","arguments":{}}))
                .await;
            if reply.get("result").is_some() {
                return reply;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("the server never came up behind the proxy");
    assert_eq!(reply["result"]["content"][0]["text"], "ok", "{reply}");
    // The whole line held at once would take the proxy's peak memory past
    // 200 MB.
    let pid = served.child.id().expect("the proxy runs");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let peak_kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status");
    assert!(
        peak_kib * 1024 < FLOOD / 2,
        "the proxy's peak memory was {peak_kib} KiB"
    );
    served.terminate().await;
}

/// 20. A client sends a call on the plain-JSON path and goes away before
/// the server answers: the call still runs to its end and is recorded in
/// the audit log (its place given back), instead of vanishing unrecorded
/// with the dropped connection.
#[tokio::test(flavor = "multi_thread")]
async fn a_call_whose_http_client_goes_away_is_still_recorded() {
    let hostile = Hostile::with_server_keys(
        json!({"tools": {"hold": [{"await": "never"}]}}),
        r#"timeout = "3s""#,
    );
    let served = hostile.proxy.serve_http().await;
    let http = reqwest::Client::new();
    let session = common::initialize_http(&http, &served.url, common::TOKEN, "leaver").await;
    let gone = http
        .post(&served.url)
        .bearer_auth(common::TOKEN)
        .header("mcp-session-id", &session)
        .header("accept", "application/json")
        .timeout(Duration::from_millis(500))
        .json(&json!({"jsonrpc":"2.0","id":5,"method":"tools/call",
            "params":{"name":"h__hold","arguments":{}}}))
        .send()
        .await;
    assert!(gone.is_err(), "the call was answered at once: {gone:?}");
    let record = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let records = common::admin_records_with(
                &http,
                &served.base,
                "tool=h__hold",
                common::AUDITOR_TOKEN,
            )
            .await;
            if let Some(record) = records.into_iter().find(|r| r["method"] == "tools/call") {
                return record;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("the call left no audit record");
    assert_eq!(record["client"], "tester", "{record}");
    assert_eq!(record["request_id"], 5, "{record}");
    assert!(
        record["reason"].as_str().unwrap_or_default().contains("3s"),
        "the call's timeout is recorded: {record}"
    );
    served.terminate().await;
}
