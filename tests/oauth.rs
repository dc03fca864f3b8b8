//! Clients identified by the organisation's identity provider (`[oauth]`),
//! end to end: a real authorization server (`tests/fixtures/oauth_server.py`,
//! built on the Python SDK's `mcp.server.auth`, issuing JWTs and serving
//! JWKS and introspection), the real proxy, and the Python SDK's own OAuth
//! client (`mcp.client.auth`, driven by `tests/python/oauth_client.py`) or
//! plain HTTP carrying tokens the server minted, good and hostile.
#![allow(
    clippy::indexing_slicing,
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used
)]

mod common;

use std::time::Duration;

use common::{AUDITOR_TOKEN, HttpProxy, TOKEN, TestProxy, python, repo_root};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

/// The authorization server: it, and its issuer URL.
async fn authorization_server(args: &[&str]) -> (Child, String) {
    let mut command = Command::new(python());
    command
        .arg(repo_root().join("tests/fixtures/oauth_server.py"))
        .args(args);
    let (child, url) = common::start_http_server(command, "the authorization server").await;
    let issuer = url.trim_end_matches("/mcp").to_owned();
    (child, issuer)
}

/// A JSON request to the authorization server's control API.
async fn control(issuer: &str, path: &str, body: Value) -> Value {
    // reqwest is built without a crypto provider of its own.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let response = reqwest::Client::new()
        .post(format!("{issuer}/control/{path}"))
        .json(&body)
        .send()
        .await
        .expect("the control API");
    assert!(
        response.status().is_success(),
        "control/{path}: {}",
        response.status()
    );
    response.json().await.expect("a JSON answer")
}

/// What the authorization server's control API says at `path` (GET).
async fn control_get(issuer: &str, path: &str) -> Value {
    reqwest::get(format!("{issuer}/control/{path}"))
        .await
        .unwrap_or_else(|err| panic!("control/{path}: {err}"))
        .json()
        .await
        .unwrap_or_else(|err| panic!("control/{path}: {err}"))
}

async fn stats(issuer: &str) -> Value {
    control_get(issuer, "stats").await
}

/// A token minted by the authorization server with `spec`.
async fn mint(issuer: &str, spec: Value) -> String {
    control(issuer, "mint", spec).await["token"]
        .as_str()
        .expect("a token")
        .to_owned()
}

/// A JWT for `sub` in `groups`, for the proxy's `resource`.
async fn member(issuer: &str, resource: &str, sub: &str, groups: &[&str]) -> String {
    mint(
        issuer,
        json!({"sub": sub, "aud": resource, "claims": {"groups": groups}}),
    )
    .await
}

/// A 2026-07-28 server over HTTP whose `mirror` tool answers with the
/// headers it was sent (`tests/fixtures/hostile_http_upstream.py`).
async fn mirror() -> (Child, String) {
    let mut command = Command::new("python3");
    command.arg(repo_root().join("tests/fixtures/hostile_http_upstream.py"));
    common::start_http_server(command, "the mirroring HTTP server").await
}

/// What the mirroring server `h` (2026-07-28, `remote` with `keys`, its
/// secret `name` read from `file`) behind a proxy with `redact` was sent
/// for a call of a payroll member: the text it answered, the member's
/// token, and the server's URL.
async fn seen_by_mirror(
    issuer: &str,
    redact: &str,
    keys: &str,
    (name, file): (&str, &std::path::Path),
) -> (String, String, String) {
    let (_upstream, url) = mirror().await;
    let (_proxy, served) = proxy_with(issuer, (redact, ""), "", |proxy| {
        proxy.with_server_toml(&format!(
            "[[servers]]\nname = \"h\"\nprotocol = \"2026-07-28\"\n\
             remote = {{ url = {url:?}, {keys} }}\nsecrets = {{ {name} = \"file:{}\" }}\n",
            file.display()
        ))
    })
    .await;
    let token = member(issuer, &served.url, "pat", &["payroll"]).await;
    let (status, _, body) = call_tool(&served.url, Some(&token), "h__mirror", json!({})).await;
    assert_eq!(status, 200, "{body}");
    (common::first_text(&body), token, url)
}

/// A file holding `secret`, in a folder kept as long as the first value.
fn secret_file(secret: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secret");
    std::fs::write(&path, format!("{secret}\n")).unwrap();
    (dir, path)
}

/// A loopback port free now (the proxy's `resource` must name its port
/// before it starts).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// Policies: anyone from the identity provider in `payroll` may call the
/// example server's tools; `echo` also for a token with the `tools:echo`
/// scope; the static client `tester` may call everything.
const POLICIES: &str = r#"
permit(principal in Group::"payroll", action, resource);
permit(principal == Client::"tester", action, resource);
permit(principal, action == Action::"call_tool", resource == Tool::"example__echo")
  when { context.scopes.contains("tools:echo") };
permit(principal, action == Action::"list_tools", resource);
"#;

/// The proxy with `[oauth]` trusting `issuer`, the example server behind
/// it, and `extra` keys in the provider's entry.
async fn proxy(issuer: &str, oauth: &str, provider: &str) -> (TestProxy, HttpProxy) {
    proxy_with(issuer, (REDACTING, oauth), provider, |proxy| {
        proxy.with_example_server("example")
    })
    .await
}

/// Redaction toward clients, as most tests have it.
const REDACTING: &str = "[redact]\nresponses = \"redact\"";

/// [`proxy`] with other servers behind it, and `redact` as its `[redact]`
/// table.
async fn proxy_with(
    issuer: &str,
    (redact, oauth): (&str, &str),
    provider: &str,
    servers: impl FnOnce(TestProxy) -> TestProxy,
) -> (TestProxy, HttpProxy) {
    let port = free_port();
    let resource = format!("http://127.0.0.1:{port}/mcp");
    let proxy = TestProxy::new()
        .with_listen(&format!("127.0.0.1:{port}"))
        .with_config(&format!(
            "policies = \"policies\"\n{redact}\n[listener]\nauth_failures_per_source = \"100/min\"\nfailure_record_interval = \"1s\"\n\n[oauth]\nresource = \"{resource}\"\n{oauth}\n\n[[oauth.providers]]\nname = \"corp\"\nissuer = \"{issuer}\"\ngroups_claim = \"groups\"\nattributes = {{ email = \"email\" }}\n{provider}\n"
        ));
    let proxy = servers(proxy);
    proxy.policy_folder(POLICIES);
    let served = proxy.serve_http().await;
    assert_eq!(
        served.url, resource,
        "the proxy listens where its resource says"
    );
    (proxy, served)
}

/// A `tools/call` of `example__echo` with `token`: the HTTP status, the
/// `WWW-Authenticate` header, and the body.
async fn call_with(url: &str, token: Option<&str>, text: &str) -> (u16, String, Value) {
    call_tool(url, token, "example__echo", json!({"text": text})).await
}

/// A 2026-07-28 `tools/call` of `tool` with `token`: the HTTP status, the
/// `WWW-Authenticate` header, and the body.
async fn call_tool(
    url: &str,
    token: Option<&str>,
    tool: &str,
    arguments: Value,
) -> (u16, String, Value) {
    let mut request = reqwest::Client::new()
        .post(url)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/call")
        .header("mcp-name", tool)
        .json(&json!({
            "jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {
                "name": tool, "arguments": arguments,
                "_meta": {
                    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                    "io.modelcontextprotocol/clientCapabilities": {}
                }
            }
        }));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("POST /mcp");
    let status = response.status().as_u16();
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap_or_default().to_owned())
        .unwrap_or_default();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, challenge, body)
}

/// The SDK client's flow through `tests/python/oauth_client.py`: its JSON
/// lines on stdout and its trace on stderr.
async fn sdk_client(url: &str, args: &[&str]) -> (Vec<Value>, String) {
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        Command::new(python())
            .arg(repo_root().join("tests/python/oauth_client.py"))
            .arg(url)
            .args(args)
            .stdin(std::process::Stdio::null())
            .output(),
    )
    .await
    .expect("the SDK client finished in time")
    .expect("run the SDK client");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "the SDK client failed: {stderr}");
    let lines = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect();
    (lines, stderr)
}

#[tokio::test]
async fn the_sdk_client_finds_the_metadata_from_the_401_and_calls_as_the_tokens_identity() {
    let (_server, issuer) = authorization_server(&[]).await;
    let (_proxy, served) = proxy(&issuer, "scopes = [\"mcp\"]", "").await;
    let (lines, trace) = sdk_client(
        &served.url,
        &[
            "--tool",
            "example__echo",
            "--args",
            r#"{"text":"hello from alice"}"#,
        ],
    )
    .await;
    // The flow as the SDK ran it: the 401's challenge named the metadata,
    // which named the authorization server; the token was asked for this
    // resource.
    let metadata = format!("{}/.well-known/oauth-protected-resource/mcp", served.base);
    assert!(
        trace.contains(&format!("resource_metadata=\"{metadata}\"")),
        "{trace}"
    );
    assert!(
        trace.contains(&format!("prm GET {metadata} -> 200")),
        "{trace}"
    );
    assert!(
        trace.contains(&format!("resource={}", served.url)),
        "the token is asked for this resource: {trace}"
    );
    let result = lines
        .iter()
        .find_map(|line| line.get("result"))
        .unwrap_or_else(|| panic!("no result: {lines:?}"));
    assert!(result.to_string().contains("hello from alice"), "{result}");
    // Recorded as the token's identity: the client named by `sub`, and
    // who vouched for it.
    let records = common::admin_records(
        &served.base,
        "kind=exchange&provider=corp&subject=alice",
        AUDITOR_TOKEN,
    )
    .await;
    let all = common::admin_records(&served.base, "kind=exchange", AUDITOR_TOKEN).await;
    let call = records
        .iter()
        .find(|r| r["method"] == "tools/call")
        .unwrap_or_else(|| panic!("no call of alice's recorded: {records:?}; all: {all:?}"));
    assert_eq!(call["client"], "alice");
    assert_eq!(call["decision"], "allow");
    assert_eq!(call["identity"]["provider"], "corp");
    assert!(call["identity"]["client_id"].is_string(), "{call}");
}

#[tokio::test]
async fn groups_and_scopes_in_the_token_decide_cedar_policies() {
    let (_server, issuer) = authorization_server(&[]).await;
    let (_proxy, served) = proxy(&issuer, "", "").await;
    let resource = served.url.clone();
    let payroll = member(&issuer, &resource, "pat", &["payroll"]).await;
    let outsider = member(&issuer, &resource, "olly", &["sales"]).await;
    let scoped = mint(
        &issuer,
        json!({"sub": "sam", "aud": resource, "scope": "mcp tools:echo", "claims": {"groups": []}}),
    )
    .await;
    let (status, _, body) = call_with(&served.url, Some(&payroll), "paid").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.to_string().contains("paid"), "{body}");
    let (status, _, body) = call_with(&served.url, Some(&outsider), "not paid").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["error"].is_object(),
        "Cedar refuses a client outside payroll: {body}"
    );
    assert!(!body.to_string().contains("not paid"), "{body}");
    let (status, _, body) = call_with(&served.url, Some(&scoped), "scoped").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.to_string().contains("scoped"),
        "the scope permits echo: {body}"
    );
    // A static token still works beside the identity provider's.
    let (status, _, body) = call_with(&served.url, Some(TOKEN), "static").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.to_string().contains("static"), "{body}");
}

#[tokio::test]
async fn every_bad_token_is_refused_with_401_and_the_challenge() {
    let (_server, issuer) = authorization_server(&[]).await;
    let (_proxy, served) = proxy(&issuer, "scopes = [\"mcp\"]", "").await;
    let resource = served.url.clone();
    let metadata = format!(
        "resource_metadata=\"{}/.well-known/oauth-protected-resource/mcp\"",
        served.base
    );
    let good = json!({"sub": "alice", "aud": resource});
    let with = |changes: Value| {
        let mut spec = good.clone();
        for (key, value) in changes.as_object().unwrap() {
            spec[key] = value.clone();
        }
        spec
    };
    // No token: where to get one, no error.
    let (status, challenge, _) = call_with(&served.url, None, "x").await;
    assert_eq!(status, 401);
    assert!(
        challenge.contains(&metadata) && challenge.contains("scope=\"mcp\""),
        "{challenge}"
    );
    assert!(!challenge.contains("error="), "{challenge}");
    let cases = [
        ("expired", with(json!({"exp_in": -3600}))),
        ("not yet valid", with(json!({"nbf_in": 3600}))),
        (
            "for another audience",
            with(json!({"aud": "http://127.0.0.1:1/mcp"})),
        ),
        (
            "from another issuer",
            with(json!({"iss": "http://127.0.0.1:1"})),
        ),
        ("alg none", with(json!({"alg": "none"}))),
        (
            "HMAC keyed with the public key",
            with(json!({"alg": "HS256-with-public-key"})),
        ),
        ("of an unknown kid", with(json!({"kid": "no-such-key"}))),
        ("tampered after signing", with(json!({"tamper": true}))),
        (
            "signed by a key never published",
            with(json!({"foreign": true})),
        ),
        ("without an audience", with(json!({"aud": null}))),
        ("without an expiry", with(json!({"exp_in": null}))),
    ];
    // The current (RSA) key's id, for tokens that name it falsely.
    let keys = control_get(&issuer, "keys").await;
    let rsa_kid = keys
        .as_array()
        .and_then(|keys| keys.iter().find(|key| key["current"] == true))
        .and_then(|key| key["kid"].as_str())
        .expect("a current key")
        .to_owned();
    let cases = cases.into_iter().chain([
        // Signed by an EC key, naming the RSA key: no key of that id fits
        // the algorithm.
        (
            "ES256 naming the RSA key",
            with(json!({"alg": "ES256", "kid": rsa_kid})),
        ),
        // Signed by a key never published, naming the published one: the
        // signature does not verify.
        (
            "forged under a published key id",
            with(json!({"foreign": true, "kid": rsa_kid})),
        ),
    ]);
    let mut refused = Vec::new();
    for (what, spec) in cases {
        let token = mint(&issuer, spec).await;
        refused.push(token.rsplit('.').next().unwrap_or_default().to_owned());
        let (status, challenge, body) = call_with(&served.url, Some(&token), "must not pass").await;
        assert_eq!(status, 401, "a token {what} is refused: {body}");
        assert!(
            challenge.contains(&metadata) && challenge.contains("error=\"invalid_token\""),
            "a token {what}: {challenge}"
        );
        assert!(
            !body.to_string().contains("must not pass"),
            "{what}: {body}"
        );
    }
    // The good token passes, so the refusals above were the tokens'.
    let token = mint(&issuer, good).await;
    let (status, _, body) = call_with(&served.url, Some(&token), "passes").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.to_string().contains("passes"), "{body}");
    // Every refusal is in the log: a guess (a bad signature) and a real
    // token refused (expired, for another audience) alike, by reason.
    let wanted = [
        "token: expired",
        "token: not yet valid",
        "token: wrong audience",
        "token: bad signature",
        "token: unknown key",
    ];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let records =
            common::admin_records(&served.base, "kind=auth_failure&limit=1000", AUDITOR_TOKEN)
                .await;
        let reasons: Vec<&str> = records
            .iter()
            .filter_map(|r| r["reason"].as_str())
            .collect();
        if wanted.iter().all(|reason| reasons.contains(reason)) {
            let log = serde_json::to_string(&records).unwrap();
            for signature in refused.iter().filter(|s| s.len() > 16) {
                assert!(
                    !log.contains(signature.as_str()),
                    "a token in the log: {log}"
                );
            }
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the refusals are recorded: {reasons:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn a_token_without_a_required_scope_gets_403_insufficient_scope() {
    let (_server, issuer) = authorization_server(&[]).await;
    let (_proxy, served) = proxy(
        &issuer,
        "scopes = [\"mcp\"]\nrequired_scopes = [\"mcp\"]",
        "",
    )
    .await;
    let resource = served.url.clone();
    let token = mint(
        &issuer,
        json!({"sub": "pat", "aud": resource, "scope": "other"}),
    )
    .await;
    let (status, challenge, _) = call_with(&served.url, Some(&token), "x").await;
    assert_eq!(status, 403);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !common::admin_records(&served.base, "kind=auth_failure", AUDITOR_TOKEN)
        .await
        .iter()
        .any(|r| r["reason"] == "token: insufficient scope")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the refusal is recorded"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(
        challenge.contains("error=\"insufficient_scope\"") && challenge.contains("scope=\"mcp\""),
        "{challenge}"
    );
    let token = mint(
        &issuer,
        json!({"sub": "pat", "aud": resource, "scope": "mcp", "claims": {"groups": ["payroll"]}}),
    )
    .await;
    let (status, _, body) = call_with(&served.url, Some(&token), "scoped").await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn key_rotation_at_the_issuer_is_followed_without_a_restart() {
    let (_server, issuer) = authorization_server(&[]).await;
    let (_proxy, served) = proxy(&issuer, "", "").await;
    let resource = served.url.clone();
    let spec = json!({"sub": "pat", "aud": resource, "claims": {"groups": ["payroll"]}});
    let before = mint(&issuer, spec.clone()).await;
    let (status, _, body) = call_with(&served.url, Some(&before), "before").await;
    assert_eq!(status, 200, "{body}");
    let fetched = stats(&issuer).await["jwks"].as_u64().unwrap_or_default();
    // A new key (an EC one), the old one withdrawn. The proxy reads a key
    // set for a key id it never looked for at most once a second: the
    // first read (for `before`) must be that old.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    control(
        &issuer,
        "rotate",
        json!({"alg": "ES256", "keep_old": false}),
    )
    .await;
    let after = mint(&issuer, spec).await;
    let (status, _, body) = call_with(&served.url, Some(&after), "after").await;
    assert_eq!(status, 200, "a token of the new key passes: {body}");
    assert!(body.to_string().contains("after"), "{body}");
    assert!(
        stats(&issuer).await["jwks"].as_u64().unwrap_or_default() > fetched,
        "the key set was read again for the new key"
    );
    // The withdrawn key's token, remembered as good before, is not any more.
    let (status, challenge, _) = call_with(&served.url, Some(&before), "withdrawn").await;
    assert_eq!(status, 401, "{challenge}");
}

#[tokio::test]
async fn a_key_set_the_metadata_puts_on_another_host_at_loopback_is_never_fetched() {
    let (_server, issuer) = authorization_server(&[]).await;
    // The metadata names the key set at `localhost` (loopback, as the
    // issuer's `127.0.0.1`, but a host the config does not write).
    control(&issuer, "config", json!({"endpoints_host": "localhost"})).await;
    let (proxy, served) = proxy(&issuer, "", "").await;
    let spec = json!({"sub": "pat", "aud": served.url, "claims": {"groups": ["payroll"]}});
    let token = mint(&issuer, spec.clone()).await;
    control(&issuer, "stats/reset", json!({})).await;
    // Unverifiable: refused as when the provider cannot be reached.
    let (status, challenge, body) = call_with(&served.url, Some(&token), "hello").await;
    assert_eq!(status, 503, "{challenge} {body}");
    assert!(!body.to_string().contains("hello"), "{body}");
    assert_eq!(
        stats(&issuer).await["jwks"],
        0,
        "the key set at an address a peer named was fetched"
    );
    let logged = served
        .log
        .wait_for(&["`localhost` is", "a loopback address", "a peer named"])
        .await;
    assert!(logged.contains("[egress] allow"), "{logged}");
    served.terminate().await;

    // The operator lets loopback through: the same metadata is followed.
    let mut proxy = proxy;
    proxy = proxy.with_config("[egress]\nallow = [\"127.0.0.0/8\", \"::1\"]");
    let served = proxy.serve_http().await;
    let token = mint(
        &issuer,
        json!({"sub": "pat", "aud": served.url, "claims": {"groups": ["payroll"]}}),
    )
    .await;
    let (status, _, body) = call_with(&served.url, Some(&token), "allowed").await;
    assert_eq!(status, 200, "{body}");
    assert!(stats(&issuer).await["jwks"].as_u64().unwrap_or_default() > 0);
    served.terminate().await;
}

#[tokio::test]
async fn an_opaque_token_is_introspected_cached_and_refused_once_revoked() {
    let (_server, issuer) = authorization_server(&[]).await;
    let (_secrets, secret) = secret_file("introspector-secret");
    let introspection = |cache: &str| {
        format!(
            "introspection = {{ client_id = \"introspector\", client_secret = \"file:{}\", cache = \"{cache}\" }}",
            secret.display()
        )
    };
    // Answers kept for the longest the config allows: however slowly the
    // calls come, they all find the first one's answer kept.
    let (_proxy, served) = proxy(&issuer, "", &introspection("5m")).await;
    let resource = served.url.clone();
    let token = mint(
        &issuer,
        json!({"sub": "opal", "aud": resource, "opaque": true, "claims": {"groups": ["payroll"]}}),
    )
    .await;
    assert!(!token.contains('.'), "an opaque token: {token}");
    // The provider answers only a client that authenticates: the proxy's
    // own credential from its secret.
    control(
        &issuer,
        "config",
        json!({"introspection_auth_required": true}),
    )
    .await;
    control(&issuer, "stats/reset", json!({})).await;
    // A static token, good or wrong (in the format `portcullis init`
    // makes), is never shown to the provider.
    let (status, _, body) = call_with(&served.url, Some(TOKEN), "static").await;
    assert_eq!(status, 200, "{body}");
    let wrong = format!("pcl_{}", "0".repeat(64));
    let (status, challenge, _) = call_with(&served.url, Some(&wrong), "guess").await;
    assert_eq!(status, 401, "{challenge}");
    assert_eq!(
        stats(&issuer).await["introspect"],
        0,
        "no static token was introspected"
    );
    for round in 0..3 {
        let (status, _, body) =
            call_with(&served.url, Some(&token), &format!("opaque {round}")).await;
        assert_eq!(status, 200, "{body}");
        assert!(
            body.to_string().contains(&format!("opaque {round}")),
            "{body}"
        );
    }
    let counted = stats(&issuer).await;
    assert_eq!(
        counted["introspect"], 1,
        "the answer was kept for the calls that followed: {counted}"
    );
    assert_eq!(
        counted["introspect_by"]["introspector"], 1,
        "the proxy authenticated as its client: {counted}"
    );

    // Answers kept for a second, on a proxy of its own: the token's answer
    // is kept, then the token is revoked.
    let (_short, served) = proxy(&issuer, "", &introspection("1s")).await;
    let token = mint(
        &issuer,
        json!({"sub": "opal", "aud": served.url, "opaque": true, "claims": {"groups": ["payroll"]}}),
    )
    .await;
    let (status, _, body) = call_with(&served.url, Some(&token), "kept").await;
    assert_eq!(status, 200, "{body}");
    control(&issuer, "revoke", json!({"token": token})).await;
    // Once the kept answer is older than the cache's second, the provider
    // is asked again, and says the token is no longer active.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (status, challenge, _) = call_with(&served.url, Some(&token), "revoked").await;
    assert_eq!(status, 401, "{challenge}");
    assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
}

#[tokio::test]
async fn the_protected_resource_metadata_names_the_resource_and_its_issuer() {
    let (_server, issuer) = authorization_server(&[]).await;
    let (_proxy, served) = proxy(&issuer, "scopes = [\"mcp\", \"tools:echo\"]", "").await;
    for path in [
        "/.well-known/oauth-protected-resource/mcp",
        "/.well-known/oauth-protected-resource",
    ] {
        let metadata: Value = reqwest::get(format!("{}{path}", served.base))
            .await
            .expect("the metadata")
            .json()
            .await
            .expect("JSON");
        assert_eq!(metadata["resource"], served.url.as_str(), "{path}");
        assert_eq!(metadata["authorization_servers"], json!([issuer]), "{path}");
        assert_eq!(
            metadata["scopes_supported"],
            json!(["mcp", "tools:echo"]),
            "{path}"
        );
    }
}

#[tokio::test]
async fn a_server_behind_the_proxy_gets_its_own_credential_never_the_clients_token() {
    let (_server, issuer) = authorization_server(&[]).await;
    let (_credentials, credential) = secret_file("the-servers-own-credential");
    let (seen, token, _) = seen_by_mirror(
        &issuer,
        REDACTING,
        "headers = { Authorization = \"Bearer secret:upstream\" }",
        ("upstream", &credential),
    )
    .await;
    assert!(
        seen.contains("Bearer the-servers-own-credential"),
        "the server got its own credential: {seen}"
    );
    assert!(
        !seen.contains(&token),
        "the client's token reached the server: {seen}"
    );
    let signature = token.rsplit('.').next().unwrap_or_default();
    assert!(
        !seen.contains(signature),
        "part of the client's token reached the server: {seen}"
    );
}

#[tokio::test]
async fn a_session_does_not_outlive_the_rights_it_began_with() {
    let (_server, issuer) = authorization_server(&[]).await;
    let (_proxy, served) = proxy(&issuer, "", "").await;
    let resource = served.url.clone();
    let in_payroll = member(&issuer, &resource, "pat", &["payroll"]).await;
    // The same person after leaving payroll: a new token, same subject.
    let left = member(&issuer, &resource, "pat", &["sales"]).await;
    let session = common::HttpSession::connect_as(&served.url, &in_payroll).await;
    let reply = session
        .call(
            1,
            "tools/call",
            json!({"name": "example__echo", "arguments": {"text": "in payroll"}}),
        )
        .await;
    assert!(reply.to_string().contains("in payroll"), "{reply}");
    let response = reqwest::Client::new()
        .post(&served.url)
        .bearer_auth(&left)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-session-id", session.id())
        .header("mcp-protocol-version", "2025-06-18")
        .json(&json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                      "params": {"name": "example__echo", "arguments": {"text": "after leaving"}}}))
        .send()
        .await
        .expect("POST /mcp");
    assert_eq!(
        response.status().as_u16(),
        404,
        "the session begun in payroll is not the new token's"
    );
    let body = response.text().await.unwrap_or_default();
    assert!(!body.contains("after leaving"), "{body}");
}

#[tokio::test]
async fn a_server_gets_a_token_of_its_own_from_the_authorization_server() {
    let (_server, issuer) = authorization_server(&[]).await;
    let (_secrets, secret) = secret_file("machine-secret");
    // Not redacted toward the client: the test reads the token the
    // server was sent.
    let (seen, token, upstream_url) = seen_by_mirror(
        &issuer,
        "[redact]\nenabled = false",
        &format!(
            "oauth = {{ token_endpoint = \"{issuer}/token\", client_id = \"machine\", client_secret = \"secret:machine\", scope = \"crm.read\" }}"
        ),
        ("machine", &secret),
    )
    .await;
    assert!(
        !seen.contains(&token),
        "the client's token reached the server: {seen}"
    );
    // The server saw the token the authorization server issued the proxy
    // for it: the machine's, for the server's URL.
    let issued = issued_by(&issuer, "client_credentials").await;
    let machine = issued
        .first()
        .unwrap_or_else(|| panic!("no client-credentials token was issued"));
    let machine_token = machine["token"].as_str().expect("its token");
    assert!(
        seen.contains(&format!("Bearer {machine_token}")),
        "the server got the proxy's token for it: {seen}"
    );
    assert_eq!(machine["claims"]["aud"], upstream_url.as_str(), "{machine}");
    assert_eq!(machine["claims"]["scope"], "crm.read", "{machine}");
}

#[tokio::test]
async fn a_token_the_server_refuses_is_renewed_at_once() {
    let (_server, issuer) = authorization_server(&[]).await;
    let (_kept, served) = mirror_with_oauth(&issuer, "").await;
    assert_eq!(issued_by(&issuer, "client_credentials").await.len(), 1);
    let pat = member(&issuer, &served.url, "pat", &["payroll"]).await;
    // The server answers 401: its token is no longer good there.
    let (_, _, body) = call_tool(&served.url, Some(&pat), "h__unauthorized", json!({})).await;
    assert!(body["error"].is_object(), "{body}");
    assert!(!body.to_string().contains("Bearer"), "{body}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let renewed = loop {
        let issued = issued_by(&issuer, "client_credentials").await;
        if issued.len() == 2 {
            break issued[1]["token"].as_str().expect("a token").to_owned();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the token is renewed without waiting for its expiry (an hour): {issued:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // The next call carries the new token.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, _, body) = call_tool(&served.url, Some(&pat), "h__mirror", json!({})).await;
        if common::first_text(&body).contains(&format!("Bearer {renewed}")) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Refused again at once: not renewed again before ten seconds.
    let (_, _, _) = call_tool(&served.url, Some(&pat), "h__unauthorized", json!({})).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(issued_by(&issuer, "client_credentials").await.len(), 2);
}

#[tokio::test]
async fn a_call_in_rounds_is_continued_only_by_the_identity_that_began_it() {
    let (_server, issuer) = authorization_server(&[]).await;
    let (_proxy, served) = proxy(&issuer, "", "").await;
    let resource = served.url.clone();
    let began = member(&issuer, &resource, "pat", &["payroll"]).await;
    // The same subject with other groups (here more): another identity.
    let other = member(&issuer, &resource, "pat", &["payroll", "admins"]).await;
    let asking = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
    "name": "example__elicit", "arguments": {"message": "confirm"},
    "_meta": {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {"elicitation": {}}
    }}});
    let post = |token: String, message: Value| {
        let url = served.url.clone();
        async move {
            reqwest::Client::new()
                .post(&url)
                .bearer_auth(token)
                .header("accept", "application/json")
                .header("mcp-protocol-version", "2026-07-28")
                .header("mcp-method", "tools/call")
                .header("mcp-name", "example__elicit")
                .json(&message)
                .send()
                .await
                .expect("POST /mcp")
                .json::<Value>()
                .await
                .expect("a JSON reply")
        }
    };
    let round = post(began.clone(), asking.clone()).await;
    assert_eq!(round["result"]["resultType"], "input_required", "{round}");
    let key = round["result"]["inputRequests"]
        .as_object()
        .and_then(|questions| questions.keys().next().cloned())
        .expect("a question");
    let mut retry = asking.clone();
    retry["id"] = json!(2);
    retry["params"]["requestState"] = round["result"]["requestState"].clone();
    retry["params"]["inputResponses"] =
        json!({ key: {"action": "accept", "content": {"name": "Ada"}} });
    let refused = post(other, retry.clone()).await;
    assert_eq!(refused["error"]["code"], -32602, "{refused}");
    let done = post(began, retry).await;
    assert_eq!(done["result"]["resultType"], "complete", "{done}");
}

/// What [`mirror_with_oauth`] keeps alive: the mirroring server, its URL,
/// the folder of the proxy's client secret, and the proxy.
type MirrorBehind = (Child, String, tempfile::TempDir, TestProxy);

/// The mirroring server `h` behind a proxy (redaction off: the tests read
/// the token the server was sent), its token got from the authorization
/// server by the proxy as the `machine` client, `extra` keys added to its
/// `remote.oauth`.
async fn mirror_with_oauth(issuer: &str, extra: &str) -> (MirrorBehind, HttpProxy) {
    let (dir, secret) = secret_file("machine-secret");
    let (upstream, url) = mirror().await;
    let (proxy, served) = proxy_with(issuer, ("[redact]\nenabled = false", ""), "", |proxy| {
        proxy.with_server_toml(&format!(
            "[[servers]]\nname = \"h\"\nprotocol = \"2026-07-28\"\n\
             remote = {{ url = {url:?}, oauth = {{ token_endpoint = \"{issuer}/token\", client_id = \"machine\", client_secret = \"secret:machine\"{extra} }} }}\n\
             secrets = {{ machine = \"file:{}\" }}\n",
            secret.display()
        ))
    })
    .await;
    ((upstream, url, dir, proxy), served)
}

/// The tokens the authorization server issued by `grant`.
async fn issued_by(issuer: &str, grant: &str) -> Vec<Value> {
    control_get(issuer, "issued")
        .await
        .as_array()
        .map(|all| {
            all.iter()
                .filter(|t| t["grant"] == grant)
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn a_server_that_acts_as_the_user_gets_an_exchanged_token_never_the_users_own() {
    let (_server, issuer) = authorization_server(&[]).await;
    let (kept, served) = mirror_with_oauth(
        &issuer,
        ", grant = \"token_exchange\", scope = \"crm.read\"",
    )
    .await;
    let url = &kept.1;
    // The server's tools were listed with the proxy's own token.
    assert_eq!(issued_by(&issuer, "client_credentials").await.len(), 1);
    let mut exchanged = Vec::new();
    for user in ["pat", "sam"] {
        let minted = control(
            &issuer,
            "mint",
            json!({"sub": user, "aud": served.url, "claims": {"groups": ["payroll"]}}),
        )
        .await;
        let token = minted["token"].as_str().expect("a token");
        let (status, _, body) = call_tool(&served.url, Some(token), "h__mirror", json!({})).await;
        assert_eq!(status, 200, "{body}");
        let seen = common::first_text(&body);
        let signature = token.rsplit('.').next().unwrap_or_default();
        assert!(
            !seen.contains(signature),
            "the user's own token reached the server: {seen}"
        );
        // The server was sent a token issued to the proxy for this user,
        // in exchange for the user's (that very token).
        let exchange = issued_by(&issuer, "token_exchange")
            .await
            .into_iter()
            .find(|t| t["claims"]["sub"] == user)
            .unwrap_or_else(|| panic!("no token was exchanged for {user}"));
        assert_eq!(
            exchange["subject_jti"], minted["claims"]["jti"],
            "{exchange}"
        );
        assert_eq!(exchange["claims"]["act"]["sub"], "machine", "{exchange}");
        assert_eq!(exchange["claims"]["aud"], url.as_str(), "{exchange}");
        assert_eq!(exchange["claims"]["scope"], "crm.read", "{exchange}");
        let sent = exchange["token"].as_str().expect("its token").to_owned();
        assert!(
            seen.contains(&format!("Bearer {sent}")),
            "the server got the token exchanged for {user}: {seen}"
        );
        exchanged.push((sent, seen));
    }
    // Each user's calls went with that user's token alone.
    assert!(
        !exchanged[1].1.contains(&exchanged[0].0),
        "sam's call carried pat's token"
    );
    // A second call of pat's reuses pat's connection and token.
    let pat = member(&issuer, &served.url, "pat", &["payroll"]).await;
    let (_, _, body) = call_tool(&served.url, Some(&pat), "h__mirror", json!({})).await;
    assert!(
        common::first_text(&body).contains(&exchanged[0].0),
        "{body}"
    );
    assert_eq!(issued_by(&issuer, "token_exchange").await.len(), 2);
    // A client with a static token has no user to act as: refused, and
    // the server is never reached.
    let (status, _, body) = call_tool(&served.url, Some(TOKEN), "h__mirror", json!({})).await;
    assert_eq!(status, 200, "{body}");
    let error = body["error"]["message"].as_str().unwrap_or_default();
    assert!(error.contains("acts as the client's user"), "{body}");
    assert_eq!(issued_by(&issuer, "token_exchange").await.len(), 2);
    // A token the authorization server no longer honours (revoked there;
    // the proxy checks a JWT itself) is exchanged for nothing: the call
    // fails, and the exchange is not tried again before the user's next
    // call.
    let kim = member(&issuer, &served.url, "kim", &["payroll"]).await;
    control(&issuer, "revoke", json!({"token": kim})).await;
    let asked = |stats: Value| stats["token_exchange_asked"].as_u64().unwrap_or(0);
    let before = asked(stats(&issuer).await);
    let (_, _, body) = call_tool(&served.url, Some(&kim), "h__mirror", json!({})).await;
    assert!(body["error"].is_object(), "{body}");
    assert!(!body.to_string().contains("Bearer"), "{body}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(asked(stats(&issuer).await), before + 1, "tried once");
    let (_, _, body) = call_tool(&served.url, Some(&kim), "h__mirror", json!({})).await;
    assert!(body["error"].is_object(), "{body}");
    assert_eq!(
        asked(stats(&issuer).await),
        before + 2,
        "tried at the next call"
    );
    assert_eq!(issued_by(&issuer, "token_exchange").await.len(), 2);
}

/// rmcp 3.11's own OAuth client (`auth`): it connects without a token, gets
/// the 401 and its challenge, discovers the metadata, registers, completes
/// the authorization-code flow (PKCE, the resource indicator) against the
/// authorization server, and calls a tool as the token's user.
#[tokio::test(flavor = "multi_thread")]
async fn rmcps_oauth_client_completes_the_flow_and_calls_as_the_tokens_identity() {
    use rmcp::ServiceExt as _;
    use rmcp::model::{CallToolRequestParams, ClientConfig};
    use rmcp::transport::StreamableHttpClientTransport;
    use rmcp::transport::auth::{AuthClient, AuthorizationRequest, OAuthState};
    use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;

    let (_server, issuer) = authorization_server(&[]).await;
    let (_proxy, served) = proxy(&issuer, "scopes = [\"mcp\"]", "").await;
    let refused = match ClientConfig::default()
        .serve(StreamableHttpClientTransport::from_uri(served.url.clone()))
        .await
    {
        Ok(_) => panic!("connected without a token"),
        Err(refused) => refused,
    };
    let challenge = refused
        .auth_challenge()
        .unwrap_or_else(|| panic!("no challenge: {refused}"))
        .to_owned();
    assert!(
        challenge.contains(&format!(
            "resource_metadata=\"{}/.well-known/oauth-protected-resource/mcp\"",
            served.base
        )),
        "{challenge}"
    );
    let mut flow = OAuthState::new(served.url.as_str(), None)
        .await
        .expect("the metadata");
    flow.start_authorization(
        AuthorizationRequest::new("http://127.0.0.1:9/callback")
            .with_client_name("rmcp through portcullis")
            .with_challenge(&challenge),
    )
    .await
    .expect("registered, the authorization started");
    let authorize = flow.get_authorization_url().await.expect("the URL");
    assert!(
        authorize.starts_with(&format!("{issuer}/authorize")),
        "{authorize}"
    );
    // The authorization server approves at once: its redirect carries the
    // code (no browser here).
    let approved = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(&authorize)
        .send()
        .await
        .expect("the authorization endpoint");
    let callback = approved
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("no redirect: {}", approved.status()))
        .to_owned();
    flow.handle_callback_url(&callback)
        .await
        .expect("the code exchanged for a token");
    let manager = flow.into_authorization_manager().expect("authorized");
    let transport = StreamableHttpClientTransport::with_client(
        AuthClient::new(reqwest::Client::default(), manager),
        StreamableHttpClientTransportConfig::with_uri(served.url.clone()),
    );
    let client = ClientConfig::default()
        .serve(transport)
        .await
        .expect("connected with the token");
    let tools = client.list_all_tools().await.expect("tools/list");
    assert!(
        tools.iter().any(|tool| tool.name == "example__echo"),
        "{tools:?}"
    );
    let mut arguments = serde_json::Map::new();
    arguments.insert("text".into(), json!("hello from rmcp"));
    let result = client
        .call_tool(CallToolRequestParams::new("example__echo").with_arguments(arguments))
        .await
        .expect("tools/call");
    assert!(
        serde_json::to_string(&result)
            .unwrap()
            .contains("hello from rmcp"),
        "{result:?}"
    );
    client.cancel().await.expect("close");
    // The token was issued for the proxy's resource, and the call is
    // recorded as its user.
    let issued = issued_by(&issuer, "authorization_code").await;
    assert_eq!(issued.len(), 1, "{issued:?}");
    assert_eq!(issued[0]["resource"], served.url.as_str(), "{issued:?}");
    assert_eq!(
        issued[0]["claims"]["aud"],
        served.url.as_str(),
        "{issued:?}"
    );
    let records = common::admin_records(
        &served.base,
        "kind=exchange&provider=corp&subject=alice",
        AUDITOR_TOKEN,
    )
    .await;
    let call = records
        .iter()
        .find(|r| r["method"] == "tools/call")
        .unwrap_or_else(|| panic!("no call of alice's recorded: {records:?}"));
    assert_eq!(call["client"], "alice");
    assert_eq!(call["identity"]["provider"], "corp");
    assert_eq!(
        call["identity"]["client_id"], issued[0]["client_id"],
        "{call}"
    );
}

#[tokio::test]
async fn a_stream_ends_when_the_token_it_was_opened_with_expires() {
    let (_server, issuer) = authorization_server(&[]).await;
    let (_proxy, served) = proxy(&issuer, "", "leeway = \"1s\"").await;
    let exp_in = 4;
    let minted = control(
        &issuer,
        "mint",
        json!({"sub": "pat", "aud": served.url, "claims": {"groups": ["payroll"]}, "exp_in": exp_in}),
    )
    .await;
    let token = minted["token"].as_str().expect("a token");
    let expires = minted["claims"]["exp"].as_u64().expect("its exp");
    let session = common::HttpSession::connect_as(&served.url, token).await;
    let response = reqwest::Client::new()
        .get(&served.url)
        .bearer_auth(token)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", session.id())
        .header("mcp-protocol-version", "2025-06-18")
        .send()
        .await
        .expect("GET /mcp");
    assert_eq!(response.status().as_u16(), 200);
    // The stream is read to its end, which comes when the token expires
    // (not at once, and not never).
    let ended = tokio::time::timeout(Duration::from_secs(60), response.bytes())
        .await
        .expect("the stream ended once its token expired");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        now >= expires,
        "ended at {now}, before the token's exp {expires}: {ended:?}"
    );
}
