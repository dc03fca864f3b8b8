//! Signing users in to a remote server (issue 47): what the proxy learns
//! from a real protected MCP server (the Python SDK's own resource-server
//! support, `tests/fixtures/protected_server.py`) and its real
//! authorization server (`tests/fixtures/oauth_server.py`), through
//! `portcullis oauth discover`; the vault (`oauth status`); a desktop
//! sign-in (`oauth login`) and its revocation (`oauth revoke`).
#![allow(
    clippy::indexing_slicing,
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used
)]

mod common;

use common::{TestProxy, python, repo_root, run_portcullis};
use serde_json::Value;
use tokio::process::{Child, Command};

/// The authorization server and the protected server behind it: both
/// processes, the issuer and the server's `/mcp` URL.
async fn servers() -> (Child, Child, String, String) {
    let mut command = Command::new(python());
    command.arg(repo_root().join("tests/fixtures/oauth_server.py"));
    let (issuer_process, url) =
        common::start_http_server(command, "the authorization server").await;
    let issuer = url.trim_end_matches("/mcp").to_owned();
    let mut command = Command::new(python());
    command
        .arg(repo_root().join("tests/fixtures/protected_server.py"))
        .args(["--issuer", &issuer]);
    let (server_process, url) = common::start_http_server(command, "the protected server").await;
    (issuer_process, server_process, issuer, url)
}

/// A config with the protected server and `egress`: the proxy's folder
/// (kept while it lives) and the file.
fn config(url: &str, egress: &str) -> (TestProxy, std::path::PathBuf) {
    let proxy = TestProxy::new()
        .with_server_toml(&format!(
            "[[servers]]\nname = \"protected\"\nremote = {{ url = {url:?} }}\n"
        ))
        .with_config(egress);
    let path = proxy.write_config();
    (proxy, path)
}

#[tokio::test(flavor = "multi_thread")]
async fn what_a_protected_server_asks_for_is_learned_from_it() {
    let (_issuer_process, _server_process, issuer, url) = servers().await;
    // The authorization server is another loopback origin: an address the
    // server named, reached only where `[egress] allow` says so.
    let (_proxy, path) = config(&url, "[egress]\nallow = [\"127.0.0.0/8\"]\n");
    let config = path.to_str().unwrap();
    let (ok, stdout, stderr) = run_portcullis([
        "oauth",
        "discover",
        "protected",
        "-c",
        config,
        "--format",
        "json",
    ]);
    assert!(ok, "{stderr}");
    let learned: Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    assert_eq!(learned["server"], url.as_str());
    assert_eq!(learned["resource"], url.as_str());
    let origin = url.trim_end_matches("/mcp");
    assert_eq!(
        learned["resource_metadata"],
        format!("{origin}/.well-known/oauth-protected-resource/mcp")
    );
    assert_eq!(learned["scopes"], "mcp");
    assert_eq!(learned["authorization_server"], issuer.as_str());
    assert_eq!(
        learned["its_metadata"],
        format!("{issuer}/.well-known/oauth-authorization-server")
    );
    assert_eq!(
        learned["authorization_endpoint"],
        format!("{issuer}/authorize")
    );
    assert_eq!(learned["token_endpoint"], format!("{issuer}/token"));
    assert_eq!(learned["registration"], format!("{issuer}/register"));
    assert_eq!(learned["revocation"], format!("{issuer}/revoke"));

    // The table says the same to a person.
    let (ok, table, stderr) = run_portcullis(["oauth", "discover", "protected", "-c", config]);
    assert!(ok, "{stderr}");
    assert!(
        table
            .lines()
            .any(|line| line.starts_with("token endpoint")
                && line.ends_with(&format!("{issuer}/token"))),
        "{table}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_peer_named_address_is_not_reached_without_egress_allow() {
    let (_issuer_process, _server_process, _issuer, url) = servers().await;
    let (_proxy, path) = config(&url, "");
    let config = path.to_str().unwrap();
    let (ok, stdout, stderr) = run_portcullis(["oauth", "discover", "protected", "-c", config]);
    assert!(!ok, "{stdout}");
    assert!(
        stderr.contains("no metadata for the authorization server") && stderr.contains("loopback"),
        "{stderr}"
    );

    // Not a remote server, or not one of the config: said so.
    let (ok, _, stderr) = run_portcullis(["oauth", "discover", "nobody", "-c", config]);
    assert!(!ok);
    assert!(stderr.contains("no server `nobody`"), "{stderr}");
}

/// `oauth status` lists what the vault keeps (sealed under `[vault] keys`)
/// and never a token; `doctor` says the keys open it. Without keys, it
/// says what is missing.
#[tokio::test(flavor = "multi_thread")]
async fn the_vault_is_listed_without_its_tokens() {
    let proxy = TestProxy::new();
    let key = vault_key(&proxy);
    let without = proxy.write_config();
    let (ok, _, stderr) = run_portcullis(["oauth", "status", "-c", without.to_str().unwrap()]);
    assert!(!ok);
    assert!(stderr.contains("no `[vault] keys`"), "{stderr}");

    let proxy = proxy.with_config(&format!("[vault]\nkeys = [\"file:{}\"]\n", key.display()));
    let path = proxy.write_config();
    let config = path.to_str().unwrap();
    let (ok, stdout, stderr) = run_portcullis(["oauth", "status", "-c", config]);
    assert!(ok, "{stderr}");
    assert_eq!(stdout.trim(), "(no sign-ins kept)");

    let loaded = portcullis::config::Config::load(&path).unwrap();
    let vault = portcullis::signin::vault::Vault::of(&loaded).unwrap();
    vault
        .put(
            "github",
            "tester",
            &portcullis::signin::vault::Tokens {
                access_token: "planted-vault-token-9d2e".into(),
                refresh_token: Some("planted-refresh-9d2e".into()),
                expires_at: Some(2_000_000_000),
                scopes: vec!["repo".into()],
                issuer: "https://github.com/login/oauth".into(),
                client_id: "portcullis".into(),
                resource: "https://api.githubcopilot.com/mcp/".into(),
                issuer_alias: None,
            },
        )
        .unwrap();
    let (ok, stdout, stderr) =
        run_portcullis(["oauth", "status", "-c", config, "--format", "json"]);
    assert!(ok, "{stderr}");
    let listed: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(listed[0]["server"], "github");
    assert_eq!(listed[0]["user"], "tester");
    assert_eq!(listed[0]["expires"], "2033-05-18T03:33:20Z");
    assert_eq!(listed[0]["refreshable"], true);
    assert_eq!(listed[0]["issuer"], "https://github.com/login/oauth");
    assert_eq!(listed[0]["client_id"], "portcullis");
    assert!(!stdout.contains("planted") && !stderr.contains("planted"));
    let (ok, table, stderr) = run_portcullis(["oauth", "status", "-c", config]);
    assert!(ok, "{stderr}");
    assert!(
        table.contains("refreshable     issuer https://github.com/login/oauth client portcullis"),
        "{table}"
    );
    assert!(!table.contains("planted"));
    let (_, doctor, _) = run_portcullis(["doctor", "-c", config]);
    assert!(
        doctor.contains("vault keys") && doctor.contains("1 sign-in kept, 0 of them not opening"),
        "{doctor}"
    );
}

/// A vault key in the proxy's folder (outside its `data_dir`).
fn vault_key(proxy: &TestProxy) -> std::path::PathBuf {
    let key = proxy.dir().join("vault.key");
    std::fs::write(
        &key,
        "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n",
    )
    .unwrap();
    key
}

/// A config with the protected server, loopback egress and a vault key.
fn vault_config(url: &str) -> (TestProxy, std::path::PathBuf) {
    vault_config_with(url, "")
}

/// The same, `more` added to the server's `remote` settings.
fn vault_config_with(url: &str, more: &str) -> (TestProxy, std::path::PathBuf) {
    vault_config_at(TestProxy::new(), url, more, "")
}

/// The same on `proxy`, `vault` added to `[vault]`.
fn vault_config_at(
    proxy: TestProxy,
    url: &str,
    more: &str,
    vault: &str,
) -> (TestProxy, std::path::PathBuf) {
    vault_config_of(proxy, url, (more, ""), vault)
}

/// The same, `server_more` (keys of the server's table) after its `remote`.
fn vault_config_of(
    proxy: TestProxy,
    url: &str,
    (more, server_more): (&str, &str),
    vault: &str,
) -> (TestProxy, std::path::PathBuf) {
    let key = vault_key(&proxy);
    let proxy = proxy
        .with_server_toml(&format!(
            "[[servers]]\nname = \"protected\"\nremote = {{ url = {url:?}{more} }}\n{server_more}"
        ))
        .with_config(&format!(
            "[egress]\nallow = [\"127.0.0.0/8\"]\n\n[vault]\nkeys = [\"file:{}\"]\n{vault}",
            key.display()
        ));
    let path = proxy.write_config();
    (proxy, path)
}

/// A client that follows no redirect (as a test, it looks at each).
fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// `oauth login` run for `tester`, the person's part played by following
/// the link (the authorization server approves at once): the callback URL
/// the browser was sent to, and what `login` printed.
async fn sign_in(config: &str, forge_first: bool) -> (String, String) {
    sign_in_as(config, "tester", forge_first).await
}

/// `oauth login` for the proxy's client `client` (see [`sign_in`]).
async fn sign_in_as(config: &str, client: &str, forge_first: bool) -> (String, String) {
    sign_in_to(config, ("protected", client), forge_first).await
}

/// `oauth login` to `server` for the proxy's client `client`.
async fn sign_in_to(
    config: &str,
    (server, client): (&str, &str),
    forge_first: bool,
) -> (String, String) {
    use tokio::io::AsyncBufReadExt as _;
    let mut login = Command::new(common::portcullis_bin())
        .args([
            "oauth", "login", server, "--client", client, "--wait", "120", "-c", config,
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(login.stdout.take().unwrap()).lines();
    let mut printed = String::new();
    let link = loop {
        let line = tokio::time::timeout(std::time::Duration::from_secs(60), lines.next_line())
            .await
            .expect("the link in time")
            .unwrap()
            .unwrap_or_else(|| panic!("login ended before a link: {printed}"));
        printed.push_str(&line);
        printed.push('\n');
        if let Some(link) = line.trim().strip_prefix("http") {
            break format!("http{link}");
        }
    };
    let parsed = reqwest::Url::parse(&link).unwrap();
    let redirect = parsed
        .query_pairs()
        .find(|(k, _)| k == "redirect_uri")
        .map(|(_, v)| v.into_owned())
        .unwrap();
    if forge_first {
        // An answer with another state (a forged link, another sign-in's):
        // refused, and the sign-in goes on waiting for its own.
        let forged = browser()
            .get(format!("{redirect}?code=stolen&state=forged"))
            .send()
            .await
            .unwrap();
        assert_eq!(forged.status(), 400);
        assert!(forged.text().await.unwrap().contains("not for the sign-in"));
    }
    let approved = browser().get(&link).send().await.unwrap();
    assert_eq!(approved.status(), 302);
    let callback = approved.headers()["location"].to_str().unwrap().to_owned();
    assert!(callback.starts_with(&redirect), "{callback}");
    let done = browser().get(&callback).send().await.unwrap();
    let headers = done.headers().clone();
    let page = done.text().await.unwrap();
    assert!(
        page.contains(&format!("Signed `{client}` in to `{server}`")),
        "{page}"
    );
    assert_eq!(headers["referrer-policy"], "same-origin");
    assert_eq!(headers["cache-control"], "no-store");
    let status = tokio::time::timeout(std::time::Duration::from_secs(60), login.wait())
        .await
        .unwrap()
        .unwrap();
    while let Ok(Some(line)) = lines.next_line().await {
        printed.push_str(&line);
        printed.push('\n');
    }
    let mut stderr = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut login.stderr.take().unwrap(), &mut stderr)
        .await
        .unwrap();
    assert!(status.success(), "{printed}{stderr}");
    (callback, format!("{printed}{stderr}"))
}

/// Whether the authorization server says `token` is active, and for what.
async fn introspect(issuer: &str, token: &str) -> Value {
    reqwest::Client::new()
        .post(format!("{issuer}/introspect"))
        .form(&[("token", token)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// A person at a desktop signs a client in (`oauth login`): registration
/// with the real authorization server, the link, a forged answer refused,
/// the real one taken once, the token kept sealed, issued for the server
/// (its resource) and taken by it; a second sign-in reuses the client
/// registered; `oauth revoke` revokes it at the authorization server and
/// forgets it.
#[tokio::test(flavor = "multi_thread")]
async fn a_person_signs_in_from_a_desktop_and_revokes_it() {
    let (_issuer_process, _server_process, issuer, url) = servers().await;
    let (_proxy, path) = vault_config(&url);
    let config = path.to_str().unwrap();
    let (callback, printed) = sign_in(config, true).await;

    // The answer is single-use: the listener is gone.
    assert!(browser().get(&callback).send().await.is_err());

    let loaded = portcullis::config::Config::load(&path).unwrap();
    let vault = portcullis::signin::vault::Vault::of(&loaded).unwrap();
    let tokens = vault.get("protected", "tester").unwrap().expect("kept");
    assert!(tokens.refresh_token.is_some());
    assert!(!printed.contains(&tokens.access_token), "{printed}");
    let facts = introspect(&issuer, &tokens.access_token).await;
    assert_eq!(facts["active"], true, "{facts}");
    assert_eq!(facts["aud"], url.as_str(), "issued for the server: {facts}");
    // The protected server takes it.
    let answer = reqwest::Client::new()
        .post(&url)
        .bearer_auth(&tokens.access_token)
        .header("accept", "application/json, text/event-stream")
        .json(&serde_json::json!({
            "jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                       "clientInfo": {"name": "t", "version": "1"}}
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    // Sealed at rest.
    for entry in std::fs::read_dir(loaded.proxy.data_dir.join("vault")).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        assert!(!text.contains(&tokens.access_token));
    }

    // A second sign-in: the same registered client, a new token in place.
    let (_, _) = sign_in(config, false).await;
    let again = vault.get("protected", "tester").unwrap().expect("kept");
    assert_eq!(again.client_id, tokens.client_id);
    assert_ne!(again.access_token, tokens.access_token);

    let (ok, stdout, stderr) = run_portcullis([
        "oauth",
        "revoke",
        "protected",
        "--client",
        "tester",
        "-c",
        config,
    ]);
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("Revoked and forgot"), "{stdout}");
    assert_eq!(vault.get("protected", "tester").unwrap(), None);
    let facts = introspect(&issuer, &again.access_token).await;
    assert_eq!(facts["active"], false, "{facts}");
    let (ok, _, stderr) = run_portcullis([
        "oauth",
        "revoke",
        "protected",
        "--client",
        "tester",
        "-c",
        config,
    ]);
    assert!(!ok);
    assert!(stderr.contains("no sign-in of `tester`"), "{stderr}");
    // A name that is no client of the proxy is refused before anything.
    let (ok, _, stderr) = run_portcullis([
        "oauth",
        "login",
        "protected",
        "--client",
        "nobody",
        "-c",
        config,
    ]);
    assert!(!ok);
    assert!(stderr.contains("no client `nobody`"), "{stderr}");
}

/// Who the authorization server signs in next.
async fn next_user(issuer: &str, sub: &str) {
    control(issuer, "user", serde_json::json!({ "sub": sub })).await;
}

/// A change through the authorization server's control API: its answer.
async fn control(issuer: &str, what: &str, body: Value) -> Value {
    let answer = reqwest::Client::new()
        .post(format!("{issuer}/control/{what}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(answer.status().is_success());
    answer.json().await.unwrap()
}

/// What the authorization server's control API says of `what`.
async fn looked(issuer: &str, what: &str) -> Value {
    reqwest::get(format!("{issuer}/control/{what}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The text of a `tools/call` answer: its result's, or its error's.
fn said(answer: &Value) -> String {
    answer["result"]["content"][0]["text"]
        .as_str()
        .or_else(|| answer["error"]["message"].as_str())
        .unwrap_or_default()
        .to_owned()
}

/// A server whose users sign in (`remote = { sign_in = true }`), through
/// the proxy: each client's calls carry its own user's token (the server
/// answers with the token's subject); a client that has not signed in is
/// told how to, and once signed in is served without a restart; no token
/// is in the proxy's log.
#[tokio::test(flavor = "multi_thread")]
async fn each_client_calls_with_its_own_users_sign_in() {
    let (_issuer_process, _server_process, issuer, url) = servers().await;
    let (proxy, path) = vault_config_with(&url, ", sign_in = { list_as = \"tester\" }");
    let config = path.to_str().unwrap();
    next_user(&issuer, "alice").await;
    sign_in(config, false).await;
    let served = proxy.serve_http().await;
    let whoami = serde_json::json!({ "name": "protected__whoami", "arguments": {} });

    let tester = common::HttpSession::connect(&served.url).await;
    let answer = tester.call(1, "tools/call", whoami.clone()).await;
    assert_eq!(said(&answer), "subject=alice", "{answer}");

    // `other` has not signed in: told so, and how.
    let other = common::HttpSession::connect_as(&served.url, common::OTHER_TOKEN).await;
    let answer = other.call(1, "tools/call", whoami.clone()).await;
    let text = said(&answer);
    assert!(
        text.contains("`other` has not signed in to `protected`")
            && text.contains("portcullis oauth login protected --client other"),
        "{answer}"
    );
    // Signed in (as Bob), served at the next call.
    next_user(&issuer, "bob").await;
    sign_in_as(config, "other", false).await;
    let answer = other.call(2, "tools/call", whoami.clone()).await;
    assert_eq!(said(&answer), "subject=bob", "{answer}");
    let answer = tester.call(2, "tools/call", whoami.clone()).await;
    assert_eq!(said(&answer), "subject=alice", "{answer}");

    let loaded = portcullis::config::Config::load(&path).unwrap();
    let vault = portcullis::signin::vault::Vault::of(&loaded).unwrap();
    let kept: Vec<_> = ["tester", "other"]
        .iter()
        .map(|user| vault.get("protected", user).unwrap().unwrap())
        .collect();

    // Forgotten while the proxy runs (the token still live at the
    // provider): the proxy stops sending it within its look at the vault
    // (30 s), and `other` is told to sign in; `tester` is still served.
    let (ok, stdout, stderr) = run_portcullis([
        "oauth",
        "revoke",
        "protected",
        "--client",
        "other",
        "--local-only",
        "-c",
        config,
    ]);
    assert!(ok, "{stdout}{stderr}");
    let started = std::time::Instant::now();
    let mut id = 3;
    let told = loop {
        let answer = other.call(id, "tools/call", whoami.clone()).await;
        id += 1;
        let text = said(&answer);
        if text.contains("`other` has not signed in to `protected`") {
            break text;
        }
        // Still Bob's, or the connection on its way down as it stops
        // sending the forgotten token: never another's.
        assert!(
            text == "subject=bob" || text.starts_with("server `protected` is not available"),
            "{answer}"
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(120),
            "the forgotten sign-in is still sent"
        );
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    };
    // Fixed words only: nothing of the vault's or the provider's.
    assert!(!told.contains("vault") && !told.contains("http"), "{told}");
    let answer = tester.call(id, "tools/call", whoami).await;
    assert_eq!(said(&answer), "subject=alice", "{answer}");

    let log = served.log.lines().join("\n");
    for tokens in kept {
        assert!(!log.contains(&tokens.access_token), "{log}");
        assert!(
            !log.contains(tokens.refresh_token.as_deref().unwrap()),
            "{log}"
        );
    }
}

/// Sets the authorization server's `token_ttl` (seconds).
async fn token_ttl(issuer: &str, seconds: i64) {
    control(
        issuer,
        "config",
        serde_json::json!({ "token_ttl": seconds }),
    )
    .await;
}

/// A sign-in whose token expires within the minute is refreshed before it
/// is sent: at the authorization server that issued it, as the client it
/// was issued to; the new tokens (the refresh token rotated) are sealed
/// in place of the old, and the call is served with the fresh token.
#[tokio::test(flavor = "multi_thread")]
async fn a_sign_in_about_to_expire_is_refreshed_and_sealed_again() {
    let (_issuer_process, _server_process, issuer, url) = servers().await;
    let (proxy, path) = vault_config_with(&url, ", sign_in = { list_as = \"tester\" }");
    let config = path.to_str().unwrap();
    next_user(&issuer, "carol").await;
    token_ttl(&issuer, 20).await;
    sign_in(config, false).await;
    let loaded = portcullis::config::Config::load(&path).unwrap();
    let vault = portcullis::signin::vault::Vault::of(&loaded).unwrap();
    let first = vault.get("protected", "tester").unwrap().unwrap();
    token_ttl(&issuer, 3600).await;

    let served = proxy.serve_http().await;
    let tester = common::HttpSession::connect(&served.url).await;
    let whoami = serde_json::json!({ "name": "protected__whoami", "arguments": {} });
    let answer = tester.call(1, "tools/call", whoami).await;
    assert_eq!(said(&answer), "subject=carol", "{answer}");

    let fresh = vault.get("protected", "tester").unwrap().unwrap();
    assert_ne!(fresh.access_token, first.access_token);
    assert_ne!(fresh.refresh_token, first.refresh_token, "rotated");
    assert_eq!(fresh.client_id, first.client_id);
    assert!(fresh.expires_at.unwrap() > first.expires_at.unwrap() + 1000);
    let issued: Value = reqwest::get(format!("{issuer}/control/issued"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let refreshes: Vec<&Value> = issued
        .as_array()
        .unwrap()
        .iter()
        .filter(|grant| grant["grant"] == "refresh_token")
        .collect();
    assert!(!refreshes.is_empty(), "{issued}");
    assert!(
        refreshes
            .iter()
            .all(|grant| grant["client_id"] == first.client_id.as_str()
                && grant["resource"] == url.as_str()),
        "{issued}"
    );
    // The newest token issued is the one the vault keeps and the call used.
    let newest = refreshes.last().unwrap();
    assert_eq!(newest["token"], fresh.access_token.as_str());
}

/// A user who calls a `sign_in` server without having signed in is given
/// a link to the proxy (`[vault] public_url`); the person opens it in a
/// browser, goes on, signs in at the authorization server, and comes back
/// to the proxy's callback; the next call is served with that user's
/// token. The link is taken on once, in one browser; the answer is taken
/// only with its own state, in that browser, once; no token reaches the
/// client, the page or the log.
#[tokio::test(flavor = "multi_thread")]
async fn a_user_signs_in_from_the_link_their_agent_was_given() {
    let (_issuer_process, _server_process, issuer, url) = servers().await;
    let (proxy, path, public) = linked_config(&url, "");
    let config = path.to_str().unwrap();
    next_user(&issuer, "alice").await;
    sign_in(config, false).await;
    let served = proxy.serve_http().await;
    let whoami = serde_json::json!({ "name": "protected__whoami", "arguments": {} });

    // `other` calls: told to sign in, with a link to the proxy.
    let other = common::HttpSession::connect_as(&served.url, common::OTHER_TOKEN).await;
    let answer = other.call(1, "tools/call", whoami.clone()).await;
    let told = said(&answer);
    let link = link_in(&told, &public);
    assert!(
        told.contains("`other` must sign in to `protected`"),
        "{told}"
    );
    let id = link
        .strip_prefix(&format!("{public}/oauth/start?id="))
        .unwrap()
        .to_owned();

    // The page names the user, the server and the authorization server,
    // and takes nothing (a preview leaves the link usable).
    // A page's form token and its cookie, as a browser gets them.
    let open_page = || async {
        let shown = browser().get(&link).send().await.unwrap();
        assert_eq!(shown.status(), 200);
        assert_eq!(shown.headers()["x-frame-options"], "DENY");
        let set = shown.headers()["set-cookie"].to_str().unwrap().to_owned();
        assert!(set.contains("SameSite=Strict"), "{set}");
        let page = shown.text().await.unwrap();
        assert!(
            page.contains("`other`") && page.contains("`protected`") && page.contains(&issuer),
            "{page}"
        );
        let token = page.split("name=form value=\"").nth(1).unwrap();
        let token = token.split('"').next().unwrap().to_owned();
        (set.split(';').next().unwrap().to_owned(), token)
    };
    // Shown twice (a preview takes nothing).
    open_page().await;
    let (form_cookie, token) = open_page().await;
    let post = |headers: Vec<(&'static str, String)>, fields: Vec<(&'static str, String)>| {
        let mut request = browser()
            .post(format!("{public}/oauth/start"))
            .form(&fields);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        request.send()
    };
    let fields = vec![("id", id.clone()), ("form", token.clone())];
    // Posted from a page elsewhere (a cross-site form that knows the id):
    // without the page's token and cookie, from another origin, or said
    // cross-site by the browser, refused, the link still usable.
    for (headers, fields) in [
        (vec![], vec![("id", id.clone())]),
        (
            vec![("cookie", form_cookie.clone())],
            vec![("id", id.clone())],
        ),
        (vec![], fields.clone()),
        (
            vec![
                ("cookie", form_cookie.clone()),
                ("origin", "https://evil.example".to_owned()),
            ],
            fields.clone(),
        ),
        (
            vec![
                ("cookie", form_cookie.clone()),
                ("sec-fetch-site", "cross-site".to_owned()),
            ],
            fields.clone(),
        ),
    ] {
        let refused = post(headers, fields).await.unwrap();
        assert_eq!(refused.status(), 403);
    }
    // From its own page: sent to the authorization server with a cookie.
    next_user(&issuer, "bob").await;
    let taken = post(
        vec![
            ("cookie", form_cookie.clone()),
            ("origin", public.clone()),
            ("sec-fetch-site", "same-origin".to_owned()),
        ],
        fields,
    )
    .await
    .unwrap();
    assert_eq!(taken.status(), 303);
    let to = taken.headers()["location"].to_str().unwrap().to_owned();
    assert!(to.starts_with(&format!("{issuer}/authorize?")), "{to}");
    let set = taken.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Lax"),
        "{set}"
    );
    let cookie = set.split(';').next().unwrap().to_owned();
    // Not again, in this browser or another.
    let again = browser().get(&link).send().await.unwrap();
    assert_eq!(again.status(), 409, "a link is taken on once");

    // The authorization server approves and sends the browser back.
    let approved = browser().get(&to).send().await.unwrap();
    assert_eq!(approved.status(), 302);
    let callback = approved.headers()["location"].to_str().unwrap().to_owned();
    assert!(
        callback.starts_with(&format!("{public}/oauth/callback?")),
        "{callback}"
    );
    // Finished by another browser (without the cookie): refused, nothing
    // taken. A forged state: none of the proxy's.
    let foreign = browser().get(&callback).send().await.unwrap();
    assert_eq!(foreign.status(), 409);
    let forged = browser()
        .get(format!("{public}/oauth/callback?code=stolen&state=forged"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 404);
    // Its own browser: signed in.
    let done = with_cookie(&callback, &cookie).await;
    assert_eq!(done.status(), 200);
    let page = done.text().await.unwrap();
    assert!(
        page.contains("`other` is signed in to `protected`"),
        "{page}"
    );
    // Replayed: the sign-in is finished.
    let replayed = with_cookie(&callback, &cookie).await;
    assert_eq!(replayed.status(), 404);

    // The next call is served with Bob's token.
    let answer = other.call(2, "tools/call", whoami).await;
    assert_eq!(said(&answer), "subject=bob", "{answer}");
    let loaded = portcullis::config::Config::load(&path).unwrap();
    let vault = portcullis::signin::vault::Vault::of(&loaded).unwrap();
    let tokens = vault.get("protected", "other").unwrap().unwrap();
    let log = served.log.lines().join("\n");
    for seen in [&told, &page, &log] {
        assert!(!seen.contains(&tokens.access_token));
        assert!(!seen.contains(tokens.refresh_token.as_deref().unwrap()));
    }
    assert!(!log.contains(&id), "the link is not logged");
    // The record of the refused call says why, without the link.
    let records = reqwest::Client::new()
        .get(format!("{}/admin/audit?client=other", served.base))
        .bearer_auth(common::AUDITOR_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(records.contains("must sign in to `protected`"), "{records}");
    assert!(!records.contains(&id), "{records}");
    assert!(!records.contains(&tokens.access_token));
}

/// A config whose users sign in from links (`[vault] public_url`, the
/// proxy's fixed loopback port), `more` after `[vault]`: the proxy, its
/// config, and its public URL.
fn linked_config(url: &str, more: &str) -> (TestProxy, std::path::PathBuf, String) {
    let port = free_port();
    let public = format!("http://127.0.0.1:{port}");
    let (proxy, path) = vault_config_at(
        TestProxy::new().with_listen(&format!("127.0.0.1:{port}")),
        url,
        ", sign_in = { list_as = \"tester\" }",
        &format!("public_url = {public:?}\n{more}"),
    );
    (proxy, path, public)
}

/// A person signs in at `link` in headless Chromium: the page, its
/// button, the authorization server (which approves at once), and back to
/// the proxy's callback: what the last page says.
async fn sign_in_with_chromium(link: &str) -> String {
    let mut chromium = common::browser::Browser::launch().await;
    chromium.goto(link).await;
    let shown = chromium.eval("document.body.innerText").await;
    assert!(
        shown.as_str().unwrap().contains("Go on only if you are"),
        "{shown}"
    );
    chromium
        .eval("document.querySelector('button[type=submit]').click()")
        .await;
    let done = chromium
        .wait_for(
            "location.pathname === '/oauth/callback' && document.readyState === 'complete' && document.body.innerText",
            "the proxy's callback page",
        )
        .await;
    chromium.close().await;
    done.as_str().unwrap().to_owned()
}

/// A client that declares URL elicitation (the Python SDK's, with an
/// elicitation handler) is answered with MCP's `URLElicitationRequiredError`
/// (-32042) holding the link; once the person signed in there (in headless
/// Chromium), its retried call is served.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_with_url_elicitation_is_asked_to_open_the_link() {
    let (_issuer_process, _server_process, issuer, url) = servers().await;
    let third = "test-token-for-the-third-client";
    let (proxy, path, public) = linked_config(
        &url,
        &format!(
            "\n[[clients]]\nname = \"third\"\ntoken_sha256 = \"{}\"\n",
            common::sha256_hex(third)
        ),
    );
    next_user(&issuer, "alice").await;
    sign_in(path.to_str().unwrap(), false).await;
    let served = proxy.serve_http().await;
    let call = || {
        let mut client = common::python_client();
        client.args([
            "http",
            &served.url,
            "--token",
            third,
            "--elicit-reply",
            "x",
            "--op",
            "call:protected__whoami",
        ]);
        common::python_client_output(client)
    };
    let first = call().await;
    let error = &first["results"][0]["error"];
    assert_eq!(error["code"], -32042, "{first}");
    let asked = &error["data"]["elicitations"][0];
    assert_eq!(asked["mode"], "url", "{first}");
    assert!(
        asked["message"]
            .as_str()
            .unwrap()
            .contains("`third` must sign in to `protected`"),
        "{first}"
    );
    assert!(
        asked["elicitationId"]
            .as_str()
            .is_some_and(|id| !id.is_empty())
    );
    let link = asked["url"].as_str().unwrap();
    assert!(
        link.starts_with(&format!("{public}/oauth/start?id=")),
        "{link}"
    );

    next_user(&issuer, "carol").await;
    let page = sign_in_with_chromium(link).await;
    assert!(
        page.contains("`third` is signed in to `protected`"),
        "{page}"
    );
    let again = call().await;
    assert_eq!(again["results"][0]["ok"], true, "{again}");
    assert_eq!(
        again["results"][0]["result"]["content"][0]["text"], "subject=carol",
        "{again}"
    );
}

/// `url` opened in the browser that holds `cookie`.
async fn with_cookie(url: &str, cookie: &str) -> reqwest::Response {
    browser()
        .get(url)
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
}

/// An authorization server that approves at once, at `to`: where it sends
/// the browser back.
async fn approved(to: &str) -> String {
    let back = browser().get(to).send().await.unwrap();
    assert_eq!(back.status(), 302);
    back.headers()["location"].to_str().unwrap().to_owned()
}

/// A browser opens `link`'s page and presses its button: where the proxy
/// sends it, and the cookie that binds the sign-in to it.
async fn go_on(link: &str, public: &str) -> (String, String) {
    let shown = browser().get(link).send().await.unwrap();
    assert_eq!(shown.status(), 200);
    let form_cookie = shown.headers()["set-cookie"].to_str().unwrap().to_owned();
    let page = shown.text().await.unwrap();
    let token = page.split("name=form value=\"").nth(1).unwrap();
    let token = token.split('"').next().unwrap();
    let id = link.split("id=").nth(1).unwrap();
    let taken = browser()
        .post(format!("{public}/oauth/start"))
        .header("cookie", form_cookie.split(';').next().unwrap())
        .header("origin", public)
        .form(&[("id", id), ("form", token)])
        .send()
        .await
        .unwrap();
    assert_eq!(taken.status(), 303);
    let set = taken.headers()["set-cookie"].to_str().unwrap();
    (
        taken.headers()["location"].to_str().unwrap().to_owned(),
        set.split(';').next().unwrap().to_owned(),
    )
}

/// Where `[oauth]` identifies clients, the person at a link signs in to
/// the proxy with the organisation's provider first (here with a client
/// the operator registered by hand, its secret a `file:` reference): a
/// person signed in there as someone else is refused and the link ended;
/// with the next link, its user goes on to the server's authorization server and
/// their agent's next call is served with their own token there. No
/// token of either sign-in reaches the agent, the log or the records.
#[tokio::test(flavor = "multi_thread")]
async fn the_person_at_a_link_signs_in_to_the_proxy_as_its_user_first() {
    let (_issuer_process, _server_process, issuer, url) = servers().await;
    let mut command = Command::new(python());
    command.arg(repo_root().join("tests/fixtures/oauth_server.py"));
    let (_org_process, org) =
        common::start_http_server(command, "the organisation's provider").await;
    let org = org.trim_end_matches("/mcp").to_owned();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let public = format!("http://127.0.0.1:{port}");
    let proxy = TestProxy::new().with_listen(&format!("127.0.0.1:{port}"));
    // The operator registers the proxy with the provider by hand.
    let registered: Value = reqwest::Client::new()
        .post(format!("{org}/register"))
        .json(&serde_json::json!({
            "client_name": "portcullis",
            "redirect_uris": [format!("{public}/oauth/callback")],
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "client_secret_post",
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let secret = proxy.dir().join("web-client-secret");
    std::fs::write(&secret, registered["client_secret"].as_str().unwrap()).unwrap();
    let (proxy, path) = vault_config_at(
        proxy,
        &url,
        ", sign_in = { list_as = \"tester\" }",
        &format!(
            "public_url = {public:?}\n\n[oauth]\nresource = \"{public}/mcp\"\n\n[[oauth.providers]]\nname = \"corp\"\nissuer = {org:?}\nweb_client = {{ client_id = {:?}, client_secret = \"file:{}\" }}\n",
            registered["client_id"].as_str().unwrap(),
            secret.display()
        ),
    );
    next_user(&issuer, "operator").await;
    sign_in(path.to_str().unwrap(), false).await;
    let served = proxy.serve_http().await;

    // Alice's agent, with her token from the organisation's provider.
    let alices = control(
        &org,
        "mint",
        serde_json::json!({ "sub": "alice", "aud": format!("{public}/mcp") }),
    )
    .await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let agent = common::HttpSession::connect_as(&served.url, &alices).await;
    let whoami = serde_json::json!({ "name": "protected__whoami", "arguments": {} });
    let told = said(&agent.call(1, "tools/call", whoami.clone()).await);
    assert!(
        told.contains("`alice` must sign in to `protected`"),
        "{told}"
    );
    let at = told.find(&format!("{public}/oauth/start?id=")).unwrap();
    let link = told[at..].split_whitespace().next().unwrap().to_owned();
    let page = browser()
        .get(&link)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains(&format!("first sign in to this proxy at {org}")),
        "{page}"
    );

    // Mallory, who got hold of the link, is sent to the provider first,
    // signs in there as herself, and is refused.
    next_user(&org, "mallory").await;
    let (to, cookie) = go_on(&link, &public).await;
    assert!(to.starts_with(&format!("{org}/authorize?")), "{to}");
    let callback = approved(&to).await;
    let refused = with_cookie(&callback, &cookie).await;
    assert_eq!(refused.status(), 403);
    let page = refused.text().await.unwrap();
    assert!(
        page.contains("you signed in to this proxy as `mallory`, but this link is for `alice`"),
        "{page}"
    );

    // The link is ended; Alice's agent calls again and is given a new one.
    assert_eq!(browser().get(&link).send().await.unwrap().status(), 404);
    let told_again = said(&agent.call(2, "tools/call", whoami.clone()).await);
    let at = told_again
        .find(&format!("{public}/oauth/start?id="))
        .unwrap();
    let link = told_again[at..]
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    // She signs in at the provider, then at the server's authorization
    // server.
    next_user(&org, "alice").await;
    next_user(&issuer, "alice-at-the-server").await;
    let (to, cookie) = go_on(&link, &public).await;
    let callback = approved(&to).await;
    let proven = with_cookie(&callback, &cookie).await;
    assert_eq!(proven.status(), 303);
    let to = proven.headers()["location"].to_str().unwrap().to_owned();
    assert!(to.starts_with(&format!("{issuer}/authorize?")), "{to}");
    let callback = approved(&to).await;
    let done = with_cookie(&callback, &cookie).await;
    let page = done.text().await.unwrap();
    assert!(
        page.contains("`alice` is signed in to `protected`"),
        "{page}"
    );
    let answer = agent.call(3, "tools/call", whoami).await;
    assert_eq!(said(&answer), "subject=alice-at-the-server", "{answer}");

    // Neither provider's tokens reached the agent, the log or the records.
    let issued = reqwest::get(format!("{org}/control/issued"))
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let proofs: Vec<&str> = issued
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|entry| entry["token"].as_str())
        .collect();
    assert_eq!(proofs.len(), 2, "Mallory's and Alice's: {issued}");
    // Both with the client the operator registered.
    for entry in issued.as_array().unwrap() {
        assert_eq!(entry["client_id"], registered["client_id"], "{issued}");
    }
    let loaded = portcullis::config::Config::load(&path).unwrap();
    let vault = portcullis::signin::vault::Vault::of(&loaded).unwrap();
    let tokens = vault.get("protected", "alice").unwrap().unwrap();
    let records = reqwest::Client::new()
        .get(format!("{}/admin/audit?client=alice", served.base))
        .bearer_auth(common::AUDITOR_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // The served call's record says a user's own token was sent (not
    // which); the refused one, that none was.
    let calls: Vec<Value> = serde_json::from_str::<Value>(&records).unwrap()["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|record| record["method"] == "tools/call")
        .cloned()
        .collect();
    assert_eq!(calls.len(), 3, "{records}");
    assert!(calls[0]["detail"]["credential"].is_null(), "{records}");
    assert_eq!(
        calls[2]["detail"]["credential"], "user_sign_in",
        "{records}"
    );
    let log = served.log.lines().join("\n");
    assert!(
        log.contains("opened by another person than its user"),
        "{log}"
    );
    for seen in [&told, &told_again, &answer.to_string(), &log, &records] {
        for token in proofs.iter().copied().chain([tokens.access_token.as_str()]) {
            assert!(!seen.contains(token), "a token leaked");
        }
    }
}

/// Cedar decides who may be asked to sign in to which server (`sign_in`):
/// a user it forbids is refused with the decision's id and given no link,
/// and the record of the call carries the decision; a user it permits is
/// given a link.
#[tokio::test(flavor = "multi_thread")]
async fn cedar_decides_who_may_be_asked_to_sign_in() {
    let (_issuer_process, _server_process, issuer, url) = servers().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let public = format!("http://127.0.0.1:{port}");
    let third = "test-token-for-the-third-client";
    let proxy = TestProxy::new()
        .with_listen(&format!("127.0.0.1:{port}"))
        .with_config("policies = \"policies\"\n");
    proxy.policy_folder(
        "permit(principal, action, resource);\nforbid(principal == Client::\"other\", action == Action::\"sign_in\", resource == Server::\"protected\");\nforbid(principal == Client::\"tester\", action == Action::\"sign_in\", resource);\n",
    );
    let (proxy, path) = vault_config_at(
        proxy,
        &url,
        ", sign_in = { list_as = \"tester\" }",
        &format!(
            "public_url = {public:?}\n\n[[clients]]\nname = \"third\"\ntoken_sha256 = \"{}\"\n",
            common::sha256_hex(third)
        ),
    );
    next_user(&issuer, "alice").await;
    sign_in(path.to_str().unwrap(), false).await;
    let served = proxy.serve_http().await;
    let whoami = serde_json::json!({ "name": "protected__whoami", "arguments": {} });

    let other = common::HttpSession::connect_as(&served.url, common::OTHER_TOKEN).await;
    let answer = other.call(1, "tools/call", whoami.clone()).await;
    let text = said(&answer);
    assert!(
        text.contains("sign_in on `protected` is not permitted (decision "),
        "{answer}"
    );
    assert!(!answer.to_string().contains("/oauth/start"), "{answer}");

    // A user signed in already is served: `sign_in` decides links, not
    // calls.
    let signed_in = common::HttpSession::connect(&served.url).await;
    let answer = signed_in.call(1, "tools/call", whoami.clone()).await;
    assert_eq!(said(&answer), "subject=alice", "{answer}");

    let permitted = common::HttpSession::connect_as(&served.url, third).await;
    let answer = permitted.call(1, "tools/call", whoami).await;
    assert!(
        said(&answer).contains(&format!("{public}/oauth/start?id=")),
        "{answer}"
    );

    let records: Value = reqwest::Client::new()
        .get(format!("{}/admin/audit?client=other", served.base))
        .bearer_auth(common::AUDITOR_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let call = records["records"]
        .as_array()
        .unwrap()
        .iter()
        .find(|record| record["method"] == "tools/call")
        .unwrap_or_else(|| panic!("{records}"));
    assert_eq!(call["decision"], "deny", "{call}");
    assert_eq!(call["decided_by"], "authz", "{call}");
    assert!(
        text.contains(call["decision_id"].as_str().unwrap()),
        "{call}"
    );
}

/// A `sign_in` server the operator removes from the config (a reload):
/// every user's sign-in to it is revoked at the authorization server that
/// issued it (refresh token, then access token) and forgotten; one removed
/// and put back at once revokes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn removing_a_server_revokes_its_users_sign_ins() {
    let (_issuer_process, _server_process, issuer, url) = servers().await;
    let (proxy, path) = vault_config_at(
        TestProxy::new().with_config("policy_poll = \"200ms\""),
        &url,
        ", sign_in = { list_as = \"tester\" }",
        "",
    );
    let config = path.to_str().unwrap();
    next_user(&issuer, "alice").await;
    sign_in_as(config, "tester", false).await;
    next_user(&issuer, "bob").await;
    sign_in_as(config, "other", false).await;
    let loaded = portcullis::config::Config::load(&path).unwrap();
    let vault = portcullis::signin::vault::Vault::of(&loaded).unwrap();
    let tokens: Vec<_> = ["tester", "other"]
        .into_iter()
        .map(|user| vault.get("protected", user).unwrap().unwrap())
        .collect();
    for kept in &tokens {
        assert_eq!(
            introspect(&issuer, &kept.access_token).await["active"],
            true
        );
    }
    let served = proxy.serve_http().await;

    // The operator removes the server; the proxy reads its config again.
    let text = std::fs::read_to_string(&path).unwrap();
    let kept_text = &text[..text.find("[[servers]]").unwrap()];
    let write = |text: &str| {
        let temporary = path.with_extension("tmp");
        std::fs::write(&temporary, text).unwrap();
        std::fs::rename(&temporary, &path).unwrap();
    };
    // Removed and put back at once: nothing is revoked (each step waited
    // for in the log, not for a time: the machine may be busy).
    write(kept_text);
    served
        .log
        .wait_for(&["server taken out by a config reload", "protected"])
        .await;
    write(&text);
    served
        .log
        .wait_for(&["config reloaded", "added=[\"protected\"]"])
        .await;
    served
        .log
        .wait_for(&["a removed server is in the config again", "protected"])
        .await;
    for (user, kept) in ["tester", "other"].into_iter().zip(&tokens) {
        assert!(vault.get("protected", user).unwrap().is_some(), "{user}");
        assert_eq!(
            introspect(&issuer, &kept.access_token).await["active"],
            true
        );
    }
    // Removed for good.
    write(kept_text);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while ["tester", "other"]
        .iter()
        .any(|user| vault.get("protected", user).unwrap().is_some())
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the sign-ins were not forgotten: {}",
            served.log.lines().join("\n")
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    for kept in &tokens {
        assert_eq!(
            introspect(&issuer, &kept.access_token).await["active"],
            false,
            "revoked at the authorization server"
        );
    }
    let stats: Value = reqwest::get(format!("{issuer}/control/stats"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        stats["revoke"], 4,
        "refresh and access token, each user: {stats}"
    );
    let log = served.log.lines().join("\n");
    assert!(
        log.contains("a removed server's sign-in was revoked and forgotten"),
        "{log}"
    );
}

/// A user's token the server refuses (401: revoked at its authorization
/// server, here) is refreshed at once, though it had an hour to live, and
/// the user's next calls are served with the new one. A server that sends
/// the token back has it redacted before the client sees it.
#[tokio::test(flavor = "multi_thread")]
async fn a_token_the_server_refuses_is_refreshed_at_once() {
    let (_issuer_process, _server_process, issuer, url) = servers().await;
    let (proxy, path) = vault_config_with(&url, ", sign_in = { list_as = \"tester\" }");
    next_user(&issuer, "alice").await;
    sign_in(path.to_str().unwrap(), false).await;
    let loaded = portcullis::config::Config::load(&path).unwrap();
    let vault = portcullis::signin::vault::Vault::of(&loaded).unwrap();
    let first = vault.get("protected", "tester").unwrap().unwrap();
    let served = proxy.serve_http().await;
    let session = common::HttpSession::connect(&served.url).await;
    let whoami = serde_json::json!({ "name": "protected__whoami", "arguments": {} });
    let answer = session.call(1, "tools/call", whoami.clone()).await;
    assert_eq!(said(&answer), "subject=alice", "{answer}");
    // A server that sends the user's token back: the client gets it
    // redacted (redaction knows the vault's tokens).
    let echoed = session
        .call(
            100,
            "tools/call",
            serde_json::json!({ "name": "protected__echo_token", "arguments": {} }),
        )
        .await;
    assert_eq!(said(&echoed), "token=[REDACTED:user-token]", "{echoed}");
    assert!(!echoed.to_string().contains(&first.access_token));

    control(
        &issuer,
        "revoke",
        serde_json::json!({ "token": first.access_token }),
    )
    .await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut id = 2;
    loop {
        let answer = session.call(id, "tools/call", whoami.clone()).await;
        if said(&answer) == "subject=alice" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never served again: {answer}"
        );
        id += 1;
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    let now = vault.get("protected", "tester").unwrap().unwrap();
    assert_ne!(now.access_token, first.access_token, "refreshed");
    let log = served.log.lines().join("\n");
    assert!(
        log.contains("the server refused its access token: renewing it"),
        "{log}"
    );
}

/// A config whose server's users sign in from links at `public`, with
/// `sign_in_more` inside its `sign_in`, `server_more` after its `remote`
/// and `listener` (a `[listener]` table) after `[vault]`.
fn linked_config_at(
    (url, public, port): (&str, &str, u16),
    sign_in_more: &str,
    server_more: &str,
    listener: &str,
) -> (TestProxy, std::path::PathBuf) {
    vault_config_of(
        TestProxy::new().with_listen(&format!("127.0.0.1:{port}")),
        url,
        (
            &format!(", sign_in = {{ list_as = \"tester\"{sign_in_more} }}"),
            server_more,
        ),
        &format!("public_url = {public:?}\n{listener}"),
    )
}

/// The link under `public` that `told` (what a client was told) holds.
fn link_in(told: &str, public: &str) -> String {
    let start = format!("{public}/oauth/start?id=");
    let at = told
        .find(&start)
        .unwrap_or_else(|| panic!("no link in: {told}"));
    told[at..].split_whitespace().next().unwrap().to_owned()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// What the authorization server issued, by grant: the client ids.
async fn issued_to(issuer: &str) -> Vec<(String, String)> {
    let issued = reqwest::get(format!("{issuer}/control/issued"))
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    issued
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| {
            (
                entry["grant"].as_str().unwrap_or_default().to_owned(),
                entry["client_id"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// An authorization server that offers no registration (as GitHub's): the
/// operator registers a client there by hand and names it in `sign_in`
/// (its secret a `file:` reference among the server's `secrets`). The
/// desktop sign-in (a loopback redirect on any port) and a user's link
/// both use it, the proxy registers nothing; its secret is sent only to
/// the authorization server, and `oauth revoke` revokes as that client.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_the_operator_registered_by_hand_is_used_where_no_registration_is_offered() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (_issuer_process, _server_process, issuer, url) = servers().await;
    let port = free_port();
    let public = format!("http://127.0.0.1:{port}");
    control(
        &issuer,
        "config",
        serde_json::json!({ "dynamic_registration": false }),
    )
    .await;
    let hand_secret = "hand-registered-client-secret-4d1f";
    control(
        &issuer,
        "clients",
        serde_json::json!({
            "client_id": "hand-made",
            "client_secret": hand_secret,
            "redirect_uris": [format!("{public}/oauth/callback"), "http://127.0.0.1/callback"],
        }),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("hand-secret");
    std::fs::write(&secret_file, format!("{hand_secret}\n")).unwrap();
    let (proxy, path) = linked_config_at(
        (&url, &public, port),
        &format!(
            ", issuer = {issuer:?}, client = {{ client_id = \"hand-made\", client_secret = \"secret:hand\" }}"
        ),
        &format!(
            "secrets = {{ hand = \"file:{}\" }}\n",
            secret_file.display()
        ),
        "",
    );
    let config = path.to_str().unwrap();

    // Without the client, `oauth login` says what to set.
    let (bare, bare_path) = linked_config_at((&url, &public, free_port()), "", "", "");
    let (ok, stdout, stderr) = run_portcullis([
        "oauth",
        "login",
        "protected",
        "--client",
        "tester",
        "--wait",
        "5",
        "-c",
        bare_path.to_str().unwrap(),
    ]);
    assert!(!ok, "{stdout}");
    assert!(stderr.contains("sign_in.client"), "{stderr}");
    drop(bare);
    // A fixed loopback port, for a provider that matches redirect URIs
    // exactly: the link asks for that one (no answer comes: it gives up).
    let fixed = free_port();
    let (ok, stdout, _) = run_portcullis([
        "oauth",
        "login",
        "protected",
        "--client",
        "tester",
        "--wait",
        "1",
        "--port",
        &fixed.to_string(),
        "-c",
        config,
    ]);
    assert!(!ok);
    assert!(
        stdout.contains(&format!(
            "redirect_uri=http%3A%2F%2F127.0.0.1%3A{fixed}%2Fcallback"
        )),
        "{stdout}"
    );

    next_user(&issuer, "alice").await;
    sign_in(config, false).await;
    let served = proxy.serve_http().await;
    let whoami = serde_json::json!({ "name": "protected__whoami", "arguments": {} });
    let other = common::HttpSession::connect_as(&served.url, common::OTHER_TOKEN).await;
    let answer = other.call(1, "tools/call", whoami.clone()).await;
    let told = said(&answer);
    let link = link_in(&told, &public);
    next_user(&issuer, "bob").await;
    let (to, cookie) = go_on(&link, &public).await;
    assert!(to.contains("client_id=hand-made"), "{to}");
    let back = approved(&to).await;
    let done = with_cookie(&back, &cookie).await;
    assert_eq!(done.status(), 200, "{}", done.text().await.unwrap());
    let answer = other.call(2, "tools/call", whoami.clone()).await;
    assert_eq!(said(&answer), "subject=bob", "{answer}");

    let stats = looked(&issuer, "stats").await;
    assert_eq!(stats["register"], 0, "{stats}");
    let issued = issued_to(&issuer).await;
    assert_eq!(issued.len(), 2, "{issued:?}");
    assert!(
        issued
            .iter()
            .all(|(grant, client)| grant == "authorization_code" && client == "hand-made"),
        "{issued:?}"
    );
    // Revoked as the client the tokens were issued to.
    let loaded = portcullis::config::Config::load(&path).unwrap();
    let vault = portcullis::signin::vault::Vault::of(&loaded).unwrap();
    let bobs = vault.get("protected", "other").unwrap().unwrap();
    revoke(config, ("protected", "other"));
    assert_eq!(
        introspect(&issuer, &bobs.access_token).await["active"],
        false
    );
    let log = served.log.lines().join("\n");
    assert!(!log.contains(hand_secret), "the client's secret was logged");
    assert!(!told.contains(hand_secret) && !answer.to_string().contains(hand_secret));
}

/// An authorization server that takes client ID metadata documents reads
/// the proxy's, at its https:// public URL (the certificate checked), and
/// the user's link signs in as that client (a public client: no secret),
/// though the server also offers registration; the desktop sign-in, which
/// the document does not cover, registers as before.
#[tokio::test(flavor = "multi_thread")]
async fn a_server_that_takes_client_documents_reads_the_proxys() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (_issuer_process, _server_process, issuer, url) = servers().await;
    let pki = tempfile::tempdir().unwrap();
    common::certs::ca(pki.path(), "test");
    common::certs::signed(pki.path(), "test", "server", common::certs::SERVER_EXT);
    let ca = pki.path().join("test-ca.pem");
    control(
        &issuer,
        "config",
        serde_json::json!({ "client_id_metadata_documents": ca }),
    )
    .await;
    let port = free_port();
    let public = format!("https://127.0.0.1:{port}");
    let (proxy, path) = linked_config_at(
        (&url, &public, port),
        "",
        "",
        &format!(
            "\n[listener]\ntls_cert = {:?}\ntls_key = {:?}\n",
            pki.path().join("server.pem"),
            pki.path().join("server.key")
        ),
    );
    let config = path.to_str().unwrap();
    next_user(&issuer, "alice").await;
    sign_in(config, false).await;
    let served = proxy.serve_http().await;
    let https = served.url.replacen("http://", "https://", 1);

    // The document, as any authorization server reads it.
    let trusting = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&std::fs::read(&ca).unwrap()).unwrap()])
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let document: Value = trusting
        .get(format!("{public}/oauth/client"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(document["client_id"], format!("{public}/oauth/client"));
    assert_eq!(
        document["redirect_uris"],
        serde_json::json!([format!("{public}/oauth/callback")])
    );

    // `other` calls through the Python SDK over https: what it was said.
    let call = || {
        let mut call = common::python_client();
        call.args(["http", &https, "--ca"]).arg(&ca).args([
            "--token",
            common::OTHER_TOKEN,
            "--op",
            "call:protected__whoami",
        ]);
        common::python_client_output(call)
    };
    let first = call().await;
    let told = first["results"][0]["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("{first}"))
        .to_owned();
    let link = link_in(&told, &public);
    let id = link.split("id=").nth(1).unwrap().to_owned();

    // The person's browser, trusting the proxy's CA.
    next_user(&issuer, "bob").await;
    let shown = trusting.get(&link).send().await.unwrap();
    assert_eq!(shown.status(), 200);
    let form_cookie = shown.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(form_cookie.starts_with("__Host-"), "{form_cookie}");
    let page = shown.text().await.unwrap();
    let token = page.split("name=form value=\"").nth(1).unwrap();
    let token = token.split('"').next().unwrap();
    let taken = trusting
        .post(format!("{public}/oauth/start"))
        .header("cookie", form_cookie.split(';').next().unwrap())
        .header("origin", &public)
        .form(&[("id", id.as_str()), ("form", token)])
        .send()
        .await
        .unwrap();
    assert_eq!(taken.status(), 303);
    let to = taken.headers()["location"].to_str().unwrap().to_owned();
    let cookie = taken.headers()["set-cookie"].to_str().unwrap();
    let cookie = cookie.split(';').next().unwrap().to_owned();
    let client_id = reqwest::Url::parse(&to)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "client_id")
        .map(|(_, v)| v.into_owned())
        .unwrap();
    assert_eq!(client_id, format!("{public}/oauth/client"));
    let back = approved(&to).await;
    let done = trusting
        .get(&back)
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), 200, "{}", done.text().await.unwrap());

    let again = call().await;
    assert_eq!(
        again["results"][0]["result"]["content"][0]["text"], "subject=bob",
        "{again}"
    );
    // The authorization server read the document, once; one registration
    // (the desktop's), and Bob's tokens issued to the document's URL.
    let documents = looked(&issuer, "documents").await;
    assert_eq!(documents.as_array().unwrap().len(), 1, "{documents}");
    assert_eq!(documents[0]["document"], document);
    let stats = looked(&issuer, "stats").await;
    assert_eq!(stats["register"], 1, "{stats}");
    let issued = issued_to(&issuer).await;
    assert_eq!(issued.len(), 2, "{issued:?}");
    assert_eq!(issued[1].1, format!("{public}/oauth/client"), "{issued:?}");
}

/// A `sign_in` server taken out of the config while the proxy was stopped:
/// at its next start, its users' sign-ins are revoked at the authorization
/// server (as the client each was issued to, a registration kept) and
/// forgotten; a sign-in to a server still configured is kept. Another
/// config sharing the `data_dir` (which never named the server), and a
/// proxy running a profile, revoke nothing.
#[tokio::test(flavor = "multi_thread")]
async fn sign_ins_to_a_server_removed_while_the_proxy_was_stopped_are_revoked_at_start() {
    let (_issuer_process, _server_process, issuer, url) = servers().await;
    let (_proxy, path) = vault_config_with(&url, ", sign_in = { list_as = \"tester\" }");
    let config = path.to_str().unwrap();
    next_user(&issuer, "alice").await;
    sign_in_as(config, "tester", false).await;
    next_user(&issuer, "bob").await;
    sign_in_as(config, "other", false).await;
    // The proxy runs this config once: it notes the servers it names.
    common::serve_config(&path).await.terminate().await;

    // Another config beside it, sharing its `data_dir` and vault, names
    // the same server `moved` (never `protected`): Alice signs in there.
    let text = std::fs::read_to_string(&path).unwrap();
    let renamed = text.replace("name = \"protected\"", "name = \"moved\"");
    let beside = path.with_file_name("beside.toml");
    std::fs::write(&beside, &renamed).unwrap();
    next_user(&issuer, "alice").await;
    sign_in_to(beside.to_str().unwrap(), ("moved", "tester"), false).await;
    let loaded = portcullis::config::Config::load(&path).unwrap();
    let vault = portcullis::signin::vault::Vault::of(&loaded).unwrap();
    let removed: Vec<_> = ["tester", "other"]
        .into_iter()
        .map(|user| vault.get("protected", user).unwrap().unwrap())
        .collect();
    let kept = vault.get("moved", "tester").unwrap().unwrap();
    let other_config = common::serve_config(&beside).await;
    other_config
        .log
        .wait_for(&[
            "sign-ins to servers removed while the proxy was stopped",
            "revoked=0",
        ])
        .await;
    other_config.terminate().await;
    for user in ["tester", "other"] {
        assert!(vault.get("protected", user).unwrap().is_some(), "{user}");
    }

    // The operator renames the server in the first config while its proxy
    // is stopped.
    std::fs::write(&path, &renamed).unwrap();
    // A proxy running a profile sees its servers only: it revokes none.
    let (ok, stdout, stderr) = run_portcullis([
        "profile", "create", "narrow", "--server", "moved", "-c", config,
    ]);
    assert!(ok, "{stdout}{stderr}");
    let narrowed = common::serve_config_with(&path, &["--profile", "narrow"]).await;
    narrowed
        .log
        .wait_for(&["running a profile: sign-ins to servers outside it are not looked at"])
        .await;
    narrowed.terminate().await;
    for user in ["tester", "other"] {
        assert!(vault.get("protected", user).unwrap().is_some(), "{user}");
    }

    assert!(!vault.clients_of("protected").unwrap().is_empty());
    let served = common::serve_config(&path).await;
    served
        .log
        .wait_for(&[
            "sign-ins to servers removed while the proxy was stopped",
            "revoked=2",
        ])
        .await;
    for (user, tokens) in ["tester", "other"].into_iter().zip(&removed) {
        assert!(vault.get("protected", user).unwrap().is_none(), "{user}");
        assert_eq!(
            introspect(&issuer, &tokens.access_token).await["active"],
            false,
            "revoked at the authorization server"
        );
    }
    assert_eq!(vault.get("moved", "tester").unwrap().as_ref(), Some(&kept));
    assert_eq!(
        introspect(&issuer, &kept.access_token).await["active"],
        true
    );
    // The registrations the proxy made for the removed server went with
    // its sign-ins; the kept server's stay.
    assert!(vault.clients_of("protected").unwrap().is_empty());
    assert!(!vault.clients_of("moved").unwrap().is_empty());
    let stats = looked(&issuer, "stats").await;
    assert_eq!(
        stats["revoke"], 4,
        "refresh and access token, each user: {stats}"
    );
}

/// A session that was given a link as a URL elicitation is told when the
/// person has signed in there (`notifications/elicitation/complete`, with
/// the `elicitationId` it was given), and its retried call is served; a
/// session of the same user that was given no elicitation is told nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_session_asked_by_url_elicitation_is_told_when_the_user_signed_in() {
    let (_issuer_process, _server_process, issuer, url) = servers().await;
    let (proxy, path, public) = linked_config(&url, "");
    next_user(&issuer, "alice").await;
    sign_in(path.to_str().unwrap(), false).await;
    let served = proxy.serve_http().await;
    let declaring = |capabilities: Value| {
        serde_json::json!({"protocolVersion": "2025-11-25", "capabilities": capabilities,
            "clientInfo": {"name": "elicitation-test", "version": "0"}})
    };
    let asked = common::HttpSession::connect_declaring(
        &served.url,
        common::OTHER_TOKEN,
        declaring(serde_json::json!({"elicitation": {"url": {}}})),
    )
    .await;
    let mut told = asked.events().await;
    let bystander = common::HttpSession::connect_declaring(
        &served.url,
        common::OTHER_TOKEN,
        declaring(serde_json::json!({})),
    )
    .await;
    let mut untold = bystander.events().await;
    let whoami = serde_json::json!({ "name": "protected__whoami", "arguments": {} });

    let answer = asked.call(1, "tools/call", whoami.clone()).await;
    assert_eq!(answer["error"]["code"], -32042, "{answer}");
    let elicitation = &answer["error"]["data"]["elicitations"][0];
    let id = elicitation["elicitationId"].as_str().unwrap().to_owned();
    let link = elicitation["url"].as_str().unwrap().to_owned();
    next_user(&issuer, "bob").await;
    let (to, cookie) = go_on(&link, &public).await;
    let back = approved(&to).await;
    assert_eq!(with_cookie(&back, &cookie).await.status(), 200);

    let complete = tokio::time::timeout(std::time::Duration::from_secs(60), async {
        loop {
            let message = told.recv().await.expect("the session's stream");
            if message["method"] == "notifications/elicitation/complete" {
                break message;
            }
        }
    })
    .await
    .expect("told in time");
    assert_eq!(
        complete["params"]["elicitationId"],
        id.as_str(),
        "{complete}"
    );
    let again = asked.call(2, "tools/call", whoami).await;
    assert_eq!(said(&again), "subject=bob", "{again}");
    // The other session was given no elicitation: nothing came to it.
    while let Ok(message) = untold.try_recv() {
        assert_ne!(
            message["method"], "notifications/elicitation/complete",
            "{message}"
        );
    }
}

/// The containers of server `name` serving `client` (running or not; `""`:
/// the server's own, which serves no client), and each one's environment.
async fn client_containers(
    docker: &bollard::Docker,
    server: &str,
    client: &str,
) -> Vec<(String, Vec<String>)> {
    use portcullis::upstream::container::{LABEL_CLIENT, LABEL_SERVER, labelled};
    let mut found = Vec::new();
    for summary in labelled(docker, &format!("{LABEL_SERVER}={server}"))
        .await
        .unwrap()
    {
        let labels = summary.labels.clone().unwrap_or_default();
        if labels.get(LABEL_CLIENT).map_or("", String::as_str) != client {
            continue;
        }
        let id = summary.id.clone().unwrap();
        let Ok(inspected) = docker.inspect_container(&id, None).await else {
            continue; // removed meanwhile
        };
        let env = inspected.config.and_then(|c| c.env).unwrap_or_default();
        found.push((id, env));
    }
    found
}

/// `oauth revoke SERVER --client CLIENT`, which must succeed.
fn revoke(config: &str, (server, client): (&str, &str)) {
    let (ok, stdout, stderr) =
        run_portcullis(["oauth", "revoke", server, "--client", client, "-c", config]);
    assert!(ok, "{stdout}{stderr}");
}

/// `sha256=HEX` of `text`, as the example server's `env_digest` says it.
fn digest_said(text: &str) -> String {
    use sha2::Digest as _;
    format!("sha256={}", hex::encode(sha2::Sha256::digest(text)))
}

/// Calls `tool` as `session` (ids from `id`) until its answer is `wanted`,
/// for at most `most`; each other answer must be `allowed`. The last id.
async fn call_until(
    session: &common::HttpSession,
    (tool, mut id): (&str, i64),
    wanted: impl Fn(&str) -> bool,
    allowed: impl Fn(&str) -> bool,
    most: std::time::Duration,
) -> (i64, String) {
    let started = std::time::Instant::now();
    loop {
        let call = serde_json::json!({ "name": tool, "arguments": {} });
        let text = said(&session.call(id, "tools/call", call).await);
        id += 1;
        if wanted(&text) {
            return (id, text);
        }
        assert!(allowed(&text), "unexpected: {text}");
        assert!(started.elapsed() < most, "still: {text}");
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    }
}

/// A container whose users sign in (`container = { sign_in = { … } }`),
/// the proxy known there as a client the operator registered by hand:
/// each user's own instance is given that user's access token in its
/// environment (the image reports its digest, never the token), the
/// server's own instance the `list_as` client's; the client's secret is
/// in no container (under no name), the server's other secrets are; a token refreshed
/// ahead of its expiry, or a user signed in anew, restarts that user's
/// instance with the new token; a revoked sign-in stops it, and its user
/// is told how to sign in again. No instance ever holds another user's
/// token, and no token or secret is in the proxy's log, not even at the
/// debug level where an image that prints its environment is logged.
#[tokio::test(flavor = "multi_thread")]
async fn a_containers_users_each_give_their_own_instance_their_token() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let docker = common::docker().await;
    let (_issuer_process, _server_process, issuer, _url) = servers().await;
    let hand_secret = "container-client-secret-8c2e";
    control(
        &issuer,
        "clients",
        serde_json::json!({
            "client_id": "box-client",
            "client_secret": hand_secret,
            "redirect_uris": ["http://127.0.0.1/callback"],
        }),
    )
    .await;
    let proxy = TestProxy::new();
    let key = vault_key(&proxy);
    let secrets = proxy.dir().join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    std::fs::write(secrets.join("hand"), format!("{hand_secret}\n")).unwrap();
    std::fs::write(secrets.join("plain"), "plain-setting-value\n").unwrap();
    let image = common::test_image();
    let server = "signed-box";
    let proxy = proxy
        .with_server_toml(&format!(
            "[[servers]]\nname = \"{server}\"\ncontainer = {{ image = {image:?}, args = [\"--name\", \"{server}\", \"--report-env\", \"USER_TOKEN\", \"--print-env\", \"USER_TOKEN\"], isolation = \"per-client\", sign_in = {{ env = \"USER_TOKEN\", issuer = {issuer:?}, resource = \"https://api.example.test\", scopes = [\"repo\", \"read:org\"], list_as = \"tester\", client = {{ client_id = \"box-client\", client_secret = \"secret:hand\" }} }} }}\nsecrets = {{ hand = \"file:{}\", alias = \"file:{}\", plain = \"file:{}\" }}\n",
            secrets.join("hand").display(),
            secrets.join("hand").display(),
            secrets.join("plain").display()
        ))
        .with_config(&format!(
            "[egress]\nallow = [\"127.0.0.0/8\"]\n\n[vault]\nkeys = [\"file:{}\"]\n",
            key.display()
        ));
    let path = proxy.write_config();
    let config = path.to_str().unwrap();
    let loaded = portcullis::config::Config::load(&path).unwrap();
    let vault = portcullis::signin::vault::Vault::of(&loaded).unwrap();
    let kept = |user: &str| vault.get(server, user).unwrap();

    next_user(&issuer, "alice").await;
    sign_in_to(config, (server, "tester"), false).await;
    next_user(&issuer, "bob").await;
    sign_in_to(config, (server, "other"), false).await;
    let alice = kept("tester").unwrap();
    let bob = kept("other").unwrap();
    assert_eq!(alice.resource, "https://api.example.test");
    assert_eq!(alice.scopes, ["repo", "read:org"]);
    assert_eq!(alice.client_id, "box-client");
    let issued = looked(&issuer, "issued").await;
    assert!(
        issued
            .as_array()
            .unwrap()
            .iter()
            .all(|grant| grant["resource"] == "https://api.example.test"
                && grant["client_id"] == "box-client"),
        "{issued}"
    );

    let served = common::serve_config_env(
        &path,
        &[],
        &[(
            "PORTCULLIS_LOG",
            "info,portcullis::upstream::container=debug",
        )],
    )
    .await;
    let tool = format!("{server}__env_digest");
    let tester = common::HttpSession::connect(&served.url).await;
    let answer = tester
        .call(
            1,
            "tools/call",
            serde_json::json!({ "name": tool, "arguments": {} }),
        )
        .await;
    assert_eq!(said(&answer), digest_said(&alice.access_token), "{answer}");
    assert!(!answer.to_string().contains(&alice.access_token));
    let other = common::HttpSession::connect_as(&served.url, common::OTHER_TOKEN).await;
    let answer = other
        .call(
            1,
            "tools/call",
            serde_json::json!({ "name": tool, "arguments": {} }),
        )
        .await;
    assert_eq!(said(&answer), digest_said(&bob.access_token), "{answer}");

    // Each instance's environment: its own user's token and never
    // another's; the server's other secrets; never the client's secret.
    let env_has =
        |env: &[String], token: &str| env.iter().any(|e| *e == format!("USER_TOKEN={token}"));
    let holds = |env: &[String], text: &str| env.iter().any(|e| e.contains(text));
    let boxes = [
        ("tester", &alice.access_token, &bob.access_token),
        ("other", &bob.access_token, &alice.access_token),
    ];
    let mut other_box = String::new();
    for (client, own, foreign) in boxes {
        let found = client_containers(&docker, server, client).await;
        assert_eq!(found.len(), 1, "{client}: {found:?}");
        let env = &found[0].1;
        assert!(env_has(env, own), "{client}");
        assert!(!holds(env, foreign), "{client}");
        assert!(!holds(env, hand_secret), "{client}");
        assert!(
            env.iter().any(|e| e == "plain=plain-setting-value"),
            "{client}"
        );
        if client == "other" {
            other_box.clone_from(&found[0].0);
        }
    }
    let listing = client_containers(&docker, server, "").await;
    assert_eq!(listing.len(), 1, "the server's own instance: {listing:?}");
    assert!(env_has(&listing[0].1, &alice.access_token), "list_as's");
    assert!(!holds(&listing[0].1, &bob.access_token));
    assert!(!holds(&listing[0].1, hand_secret));
    let listing_box = listing[0].0.clone();

    // Bob's sign-in about to expire (as the vault says): refreshed ahead of
    // its expiry at the proxy's next look, and his instance restarted with
    // the new token.
    let mut expiring = bob.clone();
    expiring.expires_at = Some(portcullis::protocol::unix_now() + 30);
    vault.put(server, "other", &expiring).unwrap();
    let unavailable = |text: &str| {
        text.starts_with(&format!("server `{server}` is not available"))
            || text.starts_with(&format!("server `{server}` failed to start"))
    };
    let old = digest_said(&bob.access_token);
    let (id, text) = call_until(
        &other,
        (&tool, 2),
        |text| text.starts_with("sha256=") && text != old,
        |text| text == old || unavailable(text),
        std::time::Duration::from_secs(180),
    )
    .await;
    let refreshed = kept("other").unwrap();
    assert_ne!(refreshed.access_token, bob.access_token);
    assert_eq!(text, digest_said(&refreshed.access_token));
    let now = client_containers(&docker, server, "other").await;
    assert!(!now.is_empty());
    assert!(
        now.iter().all(|(box_id, _)| *box_id != other_box),
        "a new container"
    );
    assert!(
        now.iter()
            .all(|(_, env)| env_has(env, &refreshed.access_token)
                && !holds(env, &bob.access_token)
                && !holds(env, &alice.access_token))
    );
    let grants = looked(&issuer, "issued").await;
    assert!(
        grants
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["grant"] == "refresh_token"
                && g["client_id"] == "box-client"
                && g["token"] == refreshed.access_token.as_str()),
        "{grants}"
    );

    // Alice signs `tester` in anew: her instance restarts with the new
    // token within the proxy's look at the vault.
    sign_in_to(config, (server, "tester"), false).await;
    let anew = kept("tester").unwrap();
    assert_ne!(anew.access_token, alice.access_token);
    let old = digest_said(&alice.access_token);
    call_until(
        &tester,
        (&tool, 2),
        |text| text == digest_said(&anew.access_token),
        |text| text == old || unavailable(text),
        std::time::Duration::from_secs(120),
    )
    .await;
    let now = client_containers(&docker, server, "tester").await;
    assert!(!now.is_empty());
    assert!(now.iter().all(|(_, env)| env_has(env, &anew.access_token)
        && !holds(env, &alice.access_token)
        && !holds(env, hand_secret)));
    // The server's own instance serves no call: not restarted for it.
    let listing = client_containers(&docker, server, "").await;
    assert_eq!(listing.len(), 1);
    assert_eq!(listing[0].0, listing_box);

    // `other`'s sign-in revoked: his instance stops, and he is told to
    // sign in again.
    revoke(config, (server, "other"));
    let (_, told) = call_until(
        &other,
        (&tool, id),
        |text| text.contains(&format!("`other` has not signed in to `{server}`")),
        |text| text.starts_with("sha256=") || unavailable(text),
        std::time::Duration::from_secs(120),
    )
    .await;
    assert!(
        told.contains(&format!("portcullis oauth login {server} --client other")),
        "{told}"
    );
    let started = std::time::Instant::now();
    while !client_containers(&docker, server, "other").await.is_empty() {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "other's instance still runs"
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }

    // The image printed its token to its stderr, which the log keeps at
    // the debug level: redacted there.
    let log = served.log.lines().join("\n");
    assert!(log.contains("USER_TOKEN=[REDACTED:user-token]"), "{log}");
    for secret in [
        &alice.access_token,
        &bob.access_token,
        &refreshed.access_token,
        &anew.access_token,
        &hand_secret.to_owned(),
    ] {
        assert!(!log.contains(secret.as_str()), "{log}");
    }
}

/// Two replicas of the proxy, each with its own `data_dir`, sharing one
/// `[vault] dir` (as replicas mounting one volume do): a user signed in
/// through one replica's link is served through the other; a sign-in
/// replaced by one about to expire is refreshed once, however many
/// connections of both replicas need it (the vault's hold is across
/// processes); a sign-in revoked is no longer sent by the replica it was
/// not given through. No token is in either replica's log.
#[tokio::test(flavor = "multi_thread")]
async fn replicas_sharing_the_vault_serve_a_user_signed_in_through_either() {
    let (_issuer_process, _server_process, issuer, url) = servers().await;
    let shared = tempfile::tempdir().unwrap();
    let dir = shared.path().join("vault").display().to_string();
    let replica = || {
        let port = free_port();
        let public = format!("http://127.0.0.1:{port}");
        let (proxy, path) = vault_config_at(
            TestProxy::new().with_listen(&format!("127.0.0.1:{port}")),
            &url,
            ", sign_in = { list_as = \"tester\" }",
            &format!("public_url = {public:?}\ndir = {dir:?}\n"),
        );
        (proxy, path, public)
    };
    let (first, first_path, first_public) = replica();
    let (second, second_path, _) = replica();
    // The operator's account, which lists the server's tools on both.
    next_user(&issuer, "alice").await;
    sign_in_to(first_path.to_str().unwrap(), ("protected", "tester"), false).await;
    let first_served = first.serve_http().await;
    let second_served = second.serve_http().await;
    let whoami = serde_json::json!({ "name": "protected__whoami", "arguments": {} });

    // `other` is given a link by the first replica, signs in there as Bob,
    // and is served by the second.
    let on_first = common::HttpSession::connect_as(&first_served.url, common::OTHER_TOKEN).await;
    let told = said(&on_first.call(1, "tools/call", whoami.clone()).await);
    let link = link_in(&told, &first_public);
    next_user(&issuer, "bob").await;
    let (to, cookie) = go_on(&link, &first_public).await;
    let callback = approved(&to).await;
    let page = with_cookie(&callback, &cookie).await.text().await.unwrap();
    assert!(
        page.contains("`other` is signed in to `protected`"),
        "{page}"
    );
    let on_second = common::HttpSession::connect_as(&second_served.url, common::OTHER_TOKEN).await;
    let answer = on_second.call(1, "tools/call", whoami.clone()).await;
    assert_eq!(said(&answer), "subject=bob", "{answer}");

    // `tester` signed in anew with a token about to expire: each replica's
    // connections read it, and it is refreshed once between them.
    let refreshes = || async {
        looked(&issuer, "issued")
            .await
            .as_array()
            .unwrap()
            .iter()
            .filter(|grant| grant["grant"] == "refresh_token")
            .count()
    };
    let before = refreshes().await;
    next_user(&issuer, "alice").await;
    token_ttl(&issuer, 20).await;
    sign_in_to(first_path.to_str().unwrap(), ("protected", "tester"), false).await;
    token_ttl(&issuer, 3600).await;
    let tester_first = common::HttpSession::connect(&first_served.url).await;
    let tester_second = common::HttpSession::connect(&second_served.url).await;
    let (a, b) = tokio::join!(
        tester_first.call(1, "tools/call", whoami.clone()),
        tester_second.call(1, "tools/call", whoami.clone())
    );
    assert_eq!(said(&a), "subject=alice", "{a}");
    assert_eq!(said(&b), "subject=alice", "{b}");
    assert_eq!(
        refreshes().await,
        before + 1,
        "refreshed once across replicas"
    );

    // Revoked (through the first replica's config): the second stops
    // sending it, and `other` is told to sign in there.
    revoke(first_path.to_str().unwrap(), ("protected", "other"));
    let (_, told) = call_until(
        &on_second,
        ("protected__whoami", 2),
        |text| text.contains("`other` must sign in to `protected`"),
        |text| text == "subject=bob" || text.starts_with("server `protected` is not available"),
        std::time::Duration::from_secs(120),
    )
    .await;
    // A link of the second replica's own.
    assert!(told.contains("/oauth/start?id="), "{told}");

    let loaded = portcullis::config::Config::load(&second_path).unwrap();
    let vault = portcullis::signin::vault::Vault::of(&loaded).unwrap();
    let alice = vault.get("protected", "tester").unwrap().unwrap();
    assert!(vault.get("protected", "other").unwrap().is_none());
    for log in [&first_served.log, &second_served.log] {
        let log = log.lines().join("\n");
        assert!(!log.contains(&alice.access_token), "{log}");
        assert!(
            !log.contains(alice.refresh_token.as_deref().unwrap()),
            "{log}"
        );
    }
}

/// The replica (HAProxy's server name) that answered `response`.
fn replica_of(response: &reqwest::Response) -> String {
    response.headers()["x-portcullis-replica"]
        .to_str()
        .unwrap()
        .to_owned()
}

/// Two replicas behind Debian's HAProxy (the example's `haproxy.cfg`),
/// sharing the vault and one public URL, the balancer's: a link given
/// through the balancer is shown, taken on and answered on whichever
/// replica each step reaches (here each on another than the last), each
/// once across both; the user is then served through the balancer; the
/// callback replayed is refused by each replica; no code, token or link
/// id is in either log.
#[tokio::test(flavor = "multi_thread")]
async fn replicas_behind_a_balancer_give_and_take_one_sign_in_link() {
    let (_issuer_process, _server_process, issuer, url) = servers().await;
    let shared = tempfile::tempdir().unwrap();
    let dir = shared.path().join("vault").display().to_string();
    let ports = [free_port(), free_port()];
    let balancer = free_port();
    let public = format!("http://127.0.0.1:{balancer}");
    let haproxy = common::haproxy::Haproxy::start_at(
        balancer,
        &[("replica-1", ports[0]), ("replica-2", ports[1])],
    )
    .await;
    let replicas: Vec<_> = ports
        .iter()
        .map(|port| {
            vault_config_at(
                TestProxy::new().with_listen(&format!("127.0.0.1:{port}")),
                &url,
                ", sign_in = { list_as = \"tester\" }",
                &format!("public_url = {public:?}\ndir = {dir:?}\n"),
            )
        })
        .collect();
    next_user(&issuer, "alice").await;
    sign_in_to(
        replicas[0].1.to_str().unwrap(),
        ("protected", "tester"),
        false,
    )
    .await;
    let served = [
        replicas[0].0.serve_http().await,
        replicas[1].0.serve_http().await,
    ];
    // Both up behind the balancer (its checks run every 300 ms).
    let mut up = std::collections::BTreeSet::new();
    for _ in 0..400 {
        if let Ok(answer) = browser().get(format!("{public}/healthz")).send().await
            && answer.status() == 200
        {
            up.insert(replica_of(&answer));
        }
        if up.len() == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(up.len(), 2, "both replicas up behind HAProxy: {up:?}");

    let whoami = serde_json::json!({ "name": "protected__whoami", "arguments": {} });
    let session = common::HttpSession::connect_as(&haproxy.url(), common::OTHER_TOKEN).await;
    let told = said(&session.call(1, "tools/call", whoami.clone()).await);
    let link = link_in(&told, &public);
    next_user(&issuer, "bob").await;

    // The browser's steps, each on another replica than the last (reached
    // directly, as a balancer may send them): the page on the first, the
    // button on the second (then refused on the first: taken), the answer
    // on the first (which knows its state: from another browser refused).
    let direct =
        |n: usize, url: &str| url.replacen(&public, &format!("http://127.0.0.1:{}", ports[n]), 1);
    let shown = browser().get(direct(0, &link)).send().await.unwrap();
    assert_eq!(shown.status(), 200);
    let form_cookie = shown.headers()["set-cookie"].to_str().unwrap().to_owned();
    let form_cookie = form_cookie.split(';').next().unwrap().to_owned();
    let page = shown.text().await.unwrap();
    let token = page.split("name=form value=\"").nth(1).unwrap();
    let token = token.split('"').next().unwrap();
    let id = link.split("id=").nth(1).unwrap();
    let take_on = |n: usize| {
        browser()
            .post(format!("http://127.0.0.1:{}/oauth/start", ports[n]))
            .header("cookie", &form_cookie)
            .header("origin", &public)
            .form(&[("id", id), ("form", token)])
            .send()
    };
    let taken = take_on(1).await.unwrap();
    assert_eq!(taken.status(), 303);
    assert_eq!(take_on(0).await.unwrap().status(), 409, "taken on once");
    let cookie = taken.headers()["set-cookie"].to_str().unwrap();
    let cookie = cookie.split(';').next().unwrap().to_owned();
    let to = taken.headers()["location"].to_str().unwrap().to_owned();
    let callback = approved(&to).await;
    assert!(
        callback.starts_with(&format!("{public}/oauth/callback?")),
        "{callback}"
    );
    let elsewhere = browser().get(direct(0, &callback)).send().await.unwrap();
    assert_eq!(elsewhere.status(), 409, "the state known, the browser not");
    let back = with_cookie(&direct(0, &callback), &cookie).await;
    assert_eq!(back.status(), 200);
    let page = back.text().await.unwrap();
    assert!(
        page.contains("`other` is signed in to `protected`"),
        "{page}"
    );

    // Served through either replica: its own session, and new ones (new
    // sessions are spread round robin).
    let answer = session.call(2, "tools/call", whoami.clone()).await;
    assert_eq!(said(&answer), "subject=bob", "{answer}");
    for _ in 0..2 {
        let other = common::HttpSession::connect_as(&haproxy.url(), common::OTHER_TOKEN).await;
        let answer = other.call(1, "tools/call", whoami.clone()).await;
        assert_eq!(said(&answer), "subject=bob", "{answer}");
    }

    // The callback replayed on each replica (directly: the balancer's
    // health checks may take one out for a while on a loaded machine):
    // refused on both.
    for replica in 0..2 {
        let again = with_cookie(&direct(replica, &callback), &cookie).await;
        assert_eq!(again.status(), 404, "replica {replica}");
    }

    let code = reqwest::Url::parse(&callback)
        .unwrap()
        .query_pairs()
        .find(|(name, _)| name == "code")
        .unwrap()
        .1
        .into_owned();
    let loaded = portcullis::config::Config::load(&replicas[1].1).unwrap();
    let vault = portcullis::signin::vault::Vault::of(&loaded).unwrap();
    let bobs = vault.get("protected", "other").unwrap().unwrap();
    for served in &served {
        let log = served.log.lines().join("\n");
        for secret in [code.as_str(), bobs.access_token.as_str(), id] {
            assert!(!log.contains(secret), "{log}");
        }
    }
    drop(haproxy);
}

/// An authorization server whose metadata, read at the address the server
/// names, names another issuer (Atlassian's pattern; here the fixture
/// names `localhost` while served on 127.0.0.1): refused by `oauth
/// discover` (RFC 8414 §3.3), the error naming the way out; taken once
/// the operator pins that issuer and names the address as its alias. The
/// sign-in is then kept under the issuer the metadata names, with the
/// alias it was reached by; the user's calls are served; `oauth revoke`
/// revokes it there. An alias the server does not name is refused.
#[tokio::test(flavor = "multi_thread")]
async fn an_issuer_named_by_an_alias_is_taken_only_as_the_operator_says() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (_issuer_process, _server_process, issuer, url) = servers().await;
    control(
        &issuer,
        "config",
        serde_json::json!({ "issuer_host": "localhost" }),
    )
    .await;
    let named = issuer.replace("127.0.0.1", "localhost");
    let (_proxy, path) = vault_config_with(&url, ", sign_in = { list_as = \"tester\" }");
    let stderr = discovery_refused(&path);
    assert!(stderr.contains("issuer_alias"), "{stderr}");
    assert!(stderr.contains(&named), "{stderr}");

    let (proxy, path) = vault_config_with(
        &url,
        &format!(
            ", sign_in = {{ list_as = \"tester\", issuer = {named:?}, issuer_alias = {issuer:?} }}"
        ),
    );
    next_user(&issuer, "alice").await;
    sign_in_to(path.to_str().unwrap(), ("protected", "tester"), false).await;
    let loaded = portcullis::config::Config::load(&path).unwrap();
    let vault = portcullis::signin::vault::Vault::of(&loaded).unwrap();
    let kept = vault.get("protected", "tester").unwrap().unwrap();
    assert_eq!(kept.issuer, named);
    let served = proxy.serve_http().await;
    let session = common::HttpSession::connect(&served.url).await;
    let whoami = serde_json::json!({ "name": "protected__whoami", "arguments": {} });
    let answer = session.call(1, "tools/call", whoami).await;
    assert_eq!(said(&answer), "subject=alice", "{answer}");
    drop(session);
    drop(served);

    // Revoked as it was signed in: at the alias's endpoints.
    revoke(path.to_str().unwrap(), ("protected", "tester"));
    assert_eq!(
        introspect(&issuer, &kept.access_token).await["active"],
        false
    );
    assert!(vault.get("protected", "tester").unwrap().is_none());

    // An alias the server does not name: the pin holds.
    let (_other, path) = vault_config_with(
        &url,
        &format!(
            ", sign_in = {{ list_as = \"tester\", issuer = {named:?}, issuer_alias = \"http://127.0.0.2:1\" }}"
        ),
    );
    let stderr = discovery_refused(&path);
    assert!(stderr.contains("as its `sign_in.issuer` says"), "{stderr}");
}

/// `oauth discover protected` with the config at `path`, refused: what it
/// said.
fn discovery_refused(path: &std::path::Path) -> String {
    let (ok, stdout, stderr) = run_portcullis([
        "oauth",
        "discover",
        "protected",
        "-c",
        path.to_str().unwrap(),
    ]);
    assert!(!ok, "{stdout}");
    stderr
}
