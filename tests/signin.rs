//! Signing users in to a remote server (issue 47), first slice: what the
//! proxy learns from a real protected MCP server (the Python SDK's own
//! resource-server support, `tests/fixtures/protected_server.py`) and its
//! real authorization server (`tests/fixtures/oauth_server.py`), through
//! `portcullis oauth discover`.
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
    let key = proxy.dir().join("vault.key");
    std::fs::write(
        &key,
        "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n",
    )
    .unwrap();
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
    assert!(!stdout.contains("planted") && !stderr.contains("planted"));
    let (_, doctor, _) = run_portcullis(["doctor", "-c", config]);
    assert!(
        doctor.contains("vault keys") && doctor.contains("1 sign-in kept, 0 of them not opening"),
        "{doctor}"
    );
}
