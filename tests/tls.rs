//! TLS and mTLS on the listener, through the real binary, with real clients:
//! reqwest, the official Python SDK and rmcp's streamable HTTP client over
//! https; a client certificate mapped to a `[[clients]]` entry; one from
//! another CA refused at the handshake; a certificate replaced on disk and
//! served to new connections after SIGHUP. Certificates are made by the
//! test with the `openssl` command (which must be installed).
#![allow(
    clippy::indexing_slicing,
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used
)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::certs::{SERVER_EXT, ca, signed};
use common::{TOKEN, TestProxy};
use reqwest::StatusCode;
use rmcp::ServiceExt as _;
use rmcp::model::CallToolRequestParams;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::{Value, json};

const CLIENT_EXT: &str = "extendedKeyUsage=clientAuth\n";

/// SHA-256 of a PEM certificate's DER bytes, hex.
fn cert_sha256(pem: &Path) -> String {
    let der = std::process::Command::new("openssl")
        .args(["x509", "-outform", "der", "-in"])
        .arg(pem)
        .output()
        .unwrap()
        .stdout;
    common::sha256_hex_bytes(&der)
}

struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    /// A CA, a server certificate for 127.0.0.1, a client certificate; and
    /// another CA with a client certificate of its own.
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path();
        ca(path, "test");
        ca(path, "other");
        signed(path, "test", "server", SERVER_EXT);
        signed(path, "test", "client", CLIENT_EXT);
        signed(path, "test", "unnamed", CLIENT_EXT);
        signed(path, "other", "stranger", CLIENT_EXT);
        Self { dir }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn root(&self) -> reqwest::Certificate {
        reqwest::Certificate::from_pem(&std::fs::read(self.file("test-ca.pem")).unwrap()).unwrap()
    }

    fn identity(&self, name: &str) -> reqwest::Identity {
        let mut pem = std::fs::read(self.file(&format!("{name}.pem"))).unwrap();
        pem.extend(std::fs::read(self.file(&format!("{name}.key"))).unwrap());
        reqwest::Identity::from_pem(&pem).unwrap()
    }

    /// A proxy with the example server serving the server certificate
    /// (no client certificates asked for), `extra` config after it.
    async fn serve(&self, extra: &str) -> (TestProxy, common::HttpProxy) {
        self.serve_with(false, extra).await
    }

    async fn serve_with(&self, mtls: bool, extra: &str) -> (TestProxy, common::HttpProxy) {
        let proxy = TestProxy::new()
            .with_example_server("example")
            .with_config(&format!("{}{extra}", self.listener(mtls)));
        let served = proxy.serve_http().await;
        (proxy, served)
    }

    /// `[listener]` keys serving the server certificate (and asking for
    /// client certificates of the test CA when `mtls`).
    fn listener(&self, mtls: bool) -> String {
        let mut text = format!(
            "\n[listener]\ntls_cert = {:?}\ntls_key = {:?}\n",
            self.file("server.pem"),
            self.file("server.key")
        );
        if mtls {
            text.push_str(&format!("tls_client_ca = {:?}\n", self.file("test-ca.pem")));
        }
        text
    }
}

fn https(url: &str) -> String {
    url.replacen("http://", "https://", 1)
}

fn client(pki: &Pki, identity: Option<&str>) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = reqwest::Client::builder().tls_certs_only([pki.root()]);
    if let Some(name) = identity {
        builder = builder.identity(pki.identity(name));
    }
    builder.build().unwrap()
}

fn init_body() -> Value {
    json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"tls","version":"0"}}})
}

async fn initialize(
    http: &reqwest::Client,
    url: &str,
    token: Option<&str>,
) -> reqwest::Result<reqwest::Response> {
    let mut request = http
        .post(url)
        .header("accept", "application/json, text/event-stream")
        .json(&init_body());
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await
}

/// The Python SDK client over https: lists the tools and calls echo.
async fn python_client(url: &str, pki: &Pki, args: &[String]) -> Value {
    let mut command = common::python_client();
    command
        .args(["http", url, "--ca"])
        .arg(pki.file("test-ca.pem"))
        .args(args)
        .args(["--no-validate", "--op", "list_tools", "--op"])
        .arg("call:example__echo:{\"text\":\"over tls\"}");
    common::python_client_output(command).await
}

fn python_echoed(doc: &Value) -> String {
    let call = doc["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["op"].as_str().is_some_and(|op| op.starts_with("call:")))
        .unwrap();
    assert_eq!(call["ok"], true, "{call}");
    call["result"]["content"][0]["text"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// rmcp's streamable HTTP client over https (with `http`'s roots and
/// identity), calling echo.
async fn rmcp_echo(http: reqwest::Client, url: &str, token: Option<&str>) -> String {
    let mut config = StreamableHttpClientTransportConfig::with_uri(url.to_owned());
    if let Some(token) = token {
        config = config.auth_header(token);
    }
    let transport = StreamableHttpClientTransport::with_client(http, config);
    let client = ().serve(transport).await.expect("MCP handshake over https");
    let result = client
        .call_tool(
            CallToolRequestParams::new("example__echo").with_arguments(
                json!({"text": "rmcp over tls"})
                    .as_object()
                    .cloned()
                    .unwrap(),
            ),
        )
        .await
        .unwrap();
    let result = serde_json::to_value(&result).unwrap();
    let _ = client.cancel().await;
    result["content"][0]["text"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn calls_over_tls_with_reqwest_the_python_sdk_and_rmcp() {
    let pki = Pki::new();
    let (_proxy, served) = pki.serve("").await;
    let url = https(&served.url);
    let http = client(&pki, None);

    let answer = initialize(&http, &url, Some(TOKEN)).await.unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    // Plain HTTP to the TLS port is not served.
    let plain = reqwest::Client::new()
        .post(&served.url)
        .bearer_auth(TOKEN)
        .json(&init_body())
        .send()
        .await;
    assert!(plain.is_err() || plain.is_ok_and(|r| !r.status().is_success()));
    // A client that does not trust the proxy's CA refuses it.
    assert!(
        initialize(&reqwest::Client::new(), &url, Some(TOKEN))
            .await
            .is_err()
    );

    let doc = python_client(&url, &pki, &["--token".into(), TOKEN.into()]).await;
    assert_eq!(python_echoed(&doc), "example: over tls");
    assert_eq!(
        rmcp_echo(http, &url, Some(TOKEN)).await,
        "example: rmcp over tls"
    );
    served.terminate().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_certificate_names_its_client() {
    let pki = Pki::new();
    let fingerprint = cert_sha256(&pki.file("client.pem"));
    let (_proxy, served) = pki
        .serve_with(
            true,
            &format!(
                "auth_failures_per_source = \"2/min\"\n\n[[clients]]\nname = \"certified\"\ncert_sha256 = \"{fingerprint}\"\n"
            ),
        )
        .await;
    let url = https(&served.url);

    // The certificate alone: the session is `certified`'s.
    let certified = client(&pki, Some("client"));
    let answer = initialize(&certified, &url, None).await.unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    let records = common::admin_records_with(
        &client(&pki, None),
        &https(&served.base),
        "kind=session_start",
        common::AUDITOR_TOKEN,
    )
    .await;
    assert!(
        records.iter().any(|r| r["client"] == "certified"),
        "{records:?}"
    );
    // With another client's token beside it: refused.
    let mixed = initialize(&certified, &url, Some(TOKEN)).await.unwrap();
    assert_eq!(mixed.status(), StatusCode::UNAUTHORIZED);
    // Without a certificate, a token still works.
    let token_only = initialize(&client(&pki, None), &url, Some(TOKEN))
        .await
        .unwrap();
    assert_eq!(token_only.status(), StatusCode::OK);
    // A certificate of another CA is refused at the handshake.
    let stranger = initialize(&client(&pki, Some("stranger")), &url, None).await;
    assert!(stranger.is_err(), "{stranger:?}");
    // One of the right CA that no client names: 401.
    let unnamed = initialize(&client(&pki, Some("unnamed")), &url, None)
        .await
        .unwrap();
    assert_eq!(unnamed.status(), StatusCode::UNAUTHORIZED);
    // The certificate's client cannot use another client's session.
    let theirs = common::initialize_http(&client(&pki, None), &url, TOKEN, "tester").await;
    let stolen = certified
        .post(&url)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-session-id", &theirs)
        .json(&json!({"jsonrpc":"2.0","id":2,"method":"tools/list"}))
        .send()
        .await
        .unwrap();
    assert_eq!(stolen.status(), StatusCode::NOT_FOUND);
    // Token guessers on its address do not hold back a proven certificate.
    let guesser = client(&pki, None);
    let mut throttled = false;
    for n in 0..5 {
        let token = format!("{n}-wrong-token");
        let answer = initialize(&guesser, &url, Some(&token)).await.unwrap();
        throttled |= answer.status() == StatusCode::TOO_MANY_REQUESTS;
    }
    assert!(throttled, "the guesses were throttled");
    let still = initialize(&certified, &url, None).await.unwrap();
    assert_eq!(still.status(), StatusCode::OK);

    // The Python SDK and rmcp with the client certificate, no token.
    let doc = python_client(
        &url,
        &pki,
        &[
            "--client-cert".into(),
            pki.file("client.pem").display().to_string(),
            "--client-key".into(),
            pki.file("client.key").display().to_string(),
        ],
    )
    .await;
    assert_eq!(python_echoed(&doc), "example: over tls");
    assert_eq!(
        rmcp_echo(certified, &url, None).await,
        "example: rmcp over tls"
    );
    served.terminate().await;
}

/// The SHA-256 of the certificate the proxy serves now, as a new client
/// sees it.
fn served_certificate(addr: &str, pki: &Pki) -> String {
    let output = std::process::Command::new("openssl")
        .args(["s_client", "-connect", addr, "-CAfile"])
        .arg(pki.file("test-ca.pem"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    let start = text
        .find("-----BEGIN CERTIFICATE-----")
        .expect("a certificate");
    let end = text.find("-----END CERTIFICATE-----").unwrap() + "-----END CERTIFICATE-----".len();
    let pem = pki.file("seen.pem");
    std::fs::write(&pem, &text[start..end]).unwrap();
    cert_sha256(&pem)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replaced_certificate_is_served_after_sighup_and_a_bad_one_is_not() {
    let pki = Pki::new();
    let (_proxy, served) = pki.serve("").await;
    let addr = served.base.trim_start_matches("http://").to_owned();
    let first = cert_sha256(&pki.file("server.pem"));
    assert_eq!(served_certificate(&addr, &pki), first);

    // A new certificate in place (the same key file is rewritten too).
    signed(pki.dir.path(), "test", "server", SERVER_EXT);
    let second = cert_sha256(&pki.file("server.pem"));
    assert_ne!(first, second);
    served.signal("HUP");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while served_certificate(&addr, &pki) != second {
        assert!(
            std::time::Instant::now() < deadline,
            "the new certificate is not served"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // A certificate file that does not load: the current one stays.
    std::fs::write(pki.file("server.pem"), "not a certificate").unwrap();
    served.signal("HUP");
    // A barrier: the proxy says it tried the files and kept the certificate.
    served
        .log
        .wait_for(&[
            "the changed files do not load",
            "still serving the previous",
        ])
        .await;
    assert_eq!(served_certificate(&addr, &pki), second);
    let answer = initialize(&client(&pki, None), &https(&served.url), Some(TOKEN))
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    served.terminate().await;
}
