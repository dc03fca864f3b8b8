#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use serde_json::json;

use super::*;
use crate::signin::flow::Registration;

/// A protected server and its authorization server on one loopback
/// origin, whose token endpoint counts refreshes and answers each (slowly)
/// with a new token and a rotated refresh token: the base URL and the
/// count.
async fn issuer() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let refreshes = Arc::new(AtomicUsize::new(0));
    let counted = refreshes.clone();
    let (resource, metadata) = (
        json!({ "resource": format!("{base}/mcp"), "authorization_servers": [base] }),
        json!({
            "issuer": base,
            "authorization_endpoint": format!("{base}/authorize"),
            "token_endpoint": format!("{base}/token"),
            "code_challenge_methods_supported": ["S256"],
        }),
    );
    let router = Router::new()
        .route(
            "/mcp",
            post(|| async {
                let mut headers = HeaderMap::new();
                headers.insert("www-authenticate", "Bearer".parse().unwrap());
                (StatusCode::UNAUTHORIZED, headers).into_response()
            }),
        )
        .route(
            "/.well-known/oauth-protected-resource/mcp",
            get(move || async move { axum::Json(resource) }),
        )
        .route(
            "/.well-known/oauth-authorization-server",
            get(move || async move { axum::Json(metadata) }),
        )
        .route(
            "/token",
            post(move |body: String| {
                let counted = counted.clone();
                async move {
                    assert!(body.contains("grant_type=refresh_token"), "{body}");
                    let n = counted.fetch_add(1, Ordering::SeqCst) + 1;
                    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                    axum::Json(json!({
                        "access_token": format!("at-{n}"), "token_type": "Bearer",
                        "refresh_token": format!("rt-{n}"), "expires_in": 3600
                    }))
                }
            }),
        );
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    (base, refreshes)
}

fn config(root: &Path) -> Arc<Config> {
    let key = root.join("vault.key");
    std::fs::write(&key, "ab".repeat(32)).unwrap();
    let text = format!(
        "[proxy]\ndata_dir = {:?}\n\n[egress]\nallow = [\"127.0.0.0/8\"]\n\n[vault]\nkeys = [\"file:{}\"]\n\n[[servers]]\nname = \"a\"\nprocess = {{ command = \"x\" }}\n",
        root.join("data").display().to_string(),
        key.display()
    );
    Arc::new(Config::parse(&text, &root.join("portcullis.toml")).unwrap())
}

/// The remote settings of a `sign_in` server at `url`.
fn remote(config: &Config, url: &str) -> RemoteSpec {
    crate::signin::test_remote(url, config.egress.clone())
}

/// The proxy's registration with the issuer at `base`, kept in `vault`
/// under its issuer and id.
fn registered(vault: &Vault, base: &str) {
    let client = Registration {
        issuer: base.to_owned(),
        client_id: "proxy-client".into(),
        client_secret: Some("s".into()),
        auth_method: "client_secret_post".into(),
        redirect_uri: "http://127.0.0.1:9/callback".into(),
        secret_expires_at: None,
    };
    let named = Registration::kept_as(base, "proxy-client");
    vault.put_client("github", &named, &client).unwrap();
}

/// Tokens issued at `base` for its `/mcp`, expiring within 5 s.
fn expiring(base: &str) -> Tokens {
    Tokens {
        access_token: "at-0".into(),
        refresh_token: Some("rt-0".into()),
        expires_at: Some(unix_now() + 5),
        scopes: vec![],
        issuer: base.to_owned(),
        client_id: "proxy-client".into(),
        resource: format!("{base}/mcp"),
        issuer_alias: None,
    }
}

/// A vault with the proxy's registration at a fresh issuer, and the
/// `sign_in` server of that issuer.
struct Setup {
    _root: tempfile::TempDir,
    config: Arc<Config>,
    base: String,
    refreshes: Arc<AtomicUsize>,
    remote: RemoteSpec,
    vault: Vault,
}

async fn setup() -> Setup {
    let root = tempfile::tempdir().unwrap();
    let config = config(root.path());
    let (base, refreshes) = issuer().await;
    let remote = remote(&config, &format!("{base}/mcp"));
    let vault = Vault::of(&config).unwrap();
    registered(&vault, &base);
    Setup {
        _root: root,
        config,
        base,
        refreshes,
        remote,
        vault,
    }
}

#[tokio::test]
async fn connections_that_find_a_token_expiring_refresh_it_once() {
    let t = setup().await;
    let (config, base, refreshes, remote, vault) =
        (&t.config, &t.base, &t.refreshes, &t.remote, &t.vault);
    let expiring = expiring(base);
    vault.put("github", "alice", &expiring).unwrap();

    let sign_ins = SignIns::new(config.clone());
    let (one, two) = tokio::join!(
        sign_ins.current("github", remote, "alice"),
        sign_ins.current("github", remote, "alice"),
    );
    assert_eq!(one.unwrap().access_token, "at-1");
    assert_eq!(two.unwrap().access_token, "at-1");
    assert_eq!(refreshes.load(Ordering::SeqCst), 1, "one refresh, not two");
    let kept = vault.get("github", "alice").unwrap().unwrap();
    assert_eq!(kept.refresh_token.as_deref(), Some("rt-1"), "rotated");

    // Fresh now: sent as kept, nothing asked.
    let again = sign_ins.current("github", remote, "alice").await.unwrap();
    assert_eq!(again.access_token, "at-1");
    assert_eq!(refreshes.load(Ordering::SeqCst), 1);

    // Issued by another authorization server than the server names now:
    // its refresh token is not sent there. Alive, it is still sent to the
    // server; expired, the user must sign in again, and the client is
    // told only that (the reason is for the log).
    let mut foreign = expiring.clone();
    foreign.issuer = "https://elsewhere.example".into();
    vault.put("github", "bob", &foreign).unwrap();
    let sent = sign_ins.current("github", remote, "bob").await.unwrap();
    assert_eq!(sent.access_token, "at-0");
    foreign.expires_at = Some(unix_now() - 1);
    vault.put("github", "bob", &foreign).unwrap();
    let err = sign_ins.current("github", remote, "bob").await.unwrap_err();
    assert!(
        err.to_string().contains("another authorization server"),
        "{err}"
    );
    assert_eq!(
        err.told(),
        "`bob` must sign in again to `github`: a person signs them in with `portcullis oauth login github --client bob`"
    );
    assert_eq!(refreshes.load(Ordering::SeqCst), 1);

    // Not refreshable, expiring but alive: still sent; dead: sign in again.
    let mut last = expiring.clone();
    last.refresh_token = None;
    vault.put("github", "carol", &last).unwrap();
    let sent = sign_ins.current("github", remote, "carol").await.unwrap();
    assert_eq!(sent.access_token, "at-0");
    last.expires_at = Some(unix_now() - 1);
    vault.put("github", "carol", &last).unwrap();
    let err = sign_ins
        .current("github", remote, "carol")
        .await
        .unwrap_err();
    assert!(matches!(err, SignInError::Expired { .. }), "{err}");
    // Never signed in: how to.
    let err = sign_ins
        .current("github", remote, "dave")
        .await
        .unwrap_err();
    assert!(
        err.told()
            .contains("portcullis oauth login github --client dave"),
        "{err}"
    );
}

#[tokio::test]
async fn a_token_is_sent_only_to_a_server_its_resource_covers() {
    let root = tempfile::tempdir().unwrap();
    let config = config(root.path());
    let (base, refreshes) = issuer().await;
    let vault = Vault::of(&config).unwrap();
    let mut fresh = expiring(&base);
    fresh.expires_at = Some(unix_now() + 3600);
    vault.put("github", "alice", &fresh).unwrap();
    let sign_ins = SignIns::new(config.clone());
    // The operator pointed the server elsewhere since the sign-in.
    for elsewhere in [
        "http://127.0.0.2:9/mcp".to_owned(),
        format!("{base}/other"),
        format!("{base}/mcpx"),
    ] {
        let err = sign_ins
            .current("github", &remote(&config, &elsewhere), "alice")
            .await
            .unwrap_err();
        assert!(
            matches!(err, SignInError::OtherResource { .. }),
            "{elsewhere}: {err}"
        );
    }
    // Below the resource: covered.
    let below = remote(&config, &format!("{base}/mcp/v2"));
    let sent = sign_ins.current("github", &below, "alice").await.unwrap();
    assert_eq!(sent.access_token, "at-0");
    // A sign-in kept without its resource is for none.
    fresh.resource = String::new();
    vault.put("github", "alice", &fresh).unwrap();
    let err = sign_ins
        .current("github", &below, "alice")
        .await
        .unwrap_err();
    assert!(matches!(err, SignInError::OtherResource { .. }), "{err}");
    // The operator pinned another issuer since (a container's sign-in
    // always names one): its tokens are not sent, refreshed or not.
    fresh.resource = format!("{base}/mcp");
    vault.put("github", "alice", &fresh).unwrap();
    let mut pinned = remote(&config, &format!("{base}/mcp"));
    if let Some(spec) = pinned.sign_in.as_mut() {
        spec.issuer = Some("https://other-issuer.example".into());
    }
    let err = sign_ins
        .current("github", &pinned, "alice")
        .await
        .unwrap_err();
    assert!(matches!(err, SignInError::OtherIssuer { .. }), "{err}");
    // Pinned to the one that issued it (with or without its slash): sent.
    if let Some(spec) = pinned.sign_in.as_mut() {
        spec.issuer = Some(format!("{}/", fresh.issuer.trim_end_matches('/')));
    }
    let sent = sign_ins.current("github", &pinned, "alice").await.unwrap();
    assert_eq!(sent.access_token, "at-0");
    assert_eq!(refreshes.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_sign_in_revoked_during_a_refresh_is_not_written_back() {
    let t = setup().await;
    let (config, base, refreshes, remote, vault) =
        (&t.config, &t.base, &t.refreshes, &t.remote, &t.vault);
    let mut dead = expiring(base);
    dead.expires_at = Some(unix_now() - 1);
    vault.put("github", "alice", &dead).unwrap();

    // A revoke (another process) holds the entry; the proxy's refresh
    // waits for it, then finds the entry gone.
    let revoking = Vault::of(config).unwrap();
    let held = revoking.hold("github", "alice").await.unwrap();
    let sign_ins = Arc::new(SignIns::new(config.clone()));
    let waiting = tokio::spawn({
        let (sign_ins, remote) = (sign_ins.clone(), remote.clone());
        async move { sign_ins.current("github", &remote, "alice").await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "the refresh waits for the revoke");
    assert!(revoking.remove("github", "alice").unwrap());
    drop(held);
    let err = waiting.await.unwrap().unwrap_err();
    assert!(matches!(err, SignInError::NotSignedIn { .. }), "{err}");
    assert_eq!(refreshes.load(Ordering::SeqCst), 0, "nothing refreshed");
    assert!(
        vault.get("github", "alice").unwrap().is_none(),
        "not written back"
    );
}

/// A config whose users sign in from links at `http://127.0.0.1:9`, whose
/// `[oauth]` provider is the issuer at `base` (with `web_client`, if
/// given), and a `[[clients]]` entry `ops`.
fn linked_config(root: &Path, base: &str, web_client: &str) -> Arc<Config> {
    let key = root.join("vault.key");
    std::fs::write(&key, "ab".repeat(32)).unwrap();
    let text = format!(
        "[proxy]\nlisten = \"127.0.0.1:9\"\ndata_dir = {:?}\n\n[egress]\nallow = [\"127.0.0.0/8\"]\n\n[vault]\nkeys = [\"file:{}\"]\npublic_url = \"http://127.0.0.1:9\"\n\n[oauth]\nresource = \"http://127.0.0.1:9/mcp\"\n\n[[oauth.providers]]\nname = \"corp\"\nissuer = {base:?}\n{web_client}\n\n[[clients]]\nname = \"ops\"\ntoken_sha256 = \"{}\"\n\n[[servers]]\nname = \"a\"\nprocess = {{ command = \"x\" }}\n",
        root.join("data").display().to_string(),
        key.display(),
        "0".repeat(64),
    );
    Arc::new(Config::parse(&text, &root.join("portcullis.toml")).unwrap())
}

/// A link for an `[oauth]` user asks the person to sign in to the proxy
/// at the user's provider first, with the operator's `web_client`; where
/// the operator gave none and the provider offers no registration, no
/// link is given (fails closed); a `[[clients]]` user's link asks nothing
/// more.
#[tokio::test]
async fn a_link_for_an_oauth_user_asks_for_a_proof_at_their_provider() {
    let (base, _) = issuer().await;
    let callback = "http://127.0.0.1:9/oauth/callback";
    let for_server = Registration {
        issuer: base.clone(),
        client_id: "proxy-client".into(),
        client_secret: None,
        auth_method: "none".into(),
        redirect_uri: callback.into(),
        secret_expires_at: None,
    };
    for (web_client, proof) in [("", false), ("web_client = { client_id = \"pw\" }", true)] {
        let root = tempfile::tempdir().unwrap();
        let config = linked_config(root.path(), &base, web_client);
        let remote = remote(&config, &format!("{base}/mcp"));
        let vault = Vault::of(&config).unwrap();
        vault.put_client("github", callback, &for_server).unwrap();
        let sign_ins = SignIns::new(config.clone());

        let ops = sign_ins.link("github", &remote, "ops").await.unwrap();
        let id = ops.unwrap().split("id=").nth(1).unwrap().to_owned();
        assert_eq!(sign_ins.pendings().shown(&id).unwrap().proof_issuer, None);

        let alice = sign_ins.link("github", &remote, "alice").await;
        if !proof {
            let err = alice.unwrap_err();
            assert!(
                err.contains("offers no dynamic client registration"),
                "{err}"
            );
            continue;
        }
        let id = alice
            .unwrap()
            .unwrap()
            .split("id=")
            .nth(1)
            .unwrap()
            .to_owned();
        let shown = sign_ins.pendings().shown(&id).unwrap();
        assert_eq!(shown.proof_issuer.as_deref(), Some(base.as_str()));
        let (_, to) = sign_ins.pendings().take(&id).unwrap();
        let to = reqwest::Url::parse(&to).unwrap();
        let asked: HashMap<String, String> = to.query_pairs().into_owned().collect();
        assert!(
            to.as_str().starts_with(&format!("{base}/authorize?")),
            "{to}"
        );
        assert_eq!(asked["client_id"], "pw");
        assert_eq!(asked["resource"], "http://127.0.0.1:9/mcp");
        assert_eq!(asked["redirect_uri"], callback);
        assert_eq!(asked["code_challenge_method"], "S256");
    }
}

/// A token the server refused (401) is refreshed at once, however long it
/// has to live, and never sent again; a refusal of a token refreshed since
/// asks nothing; one that cannot be refreshed means signing in again.
#[tokio::test]
async fn a_token_the_server_refused_is_refreshed_at_once() {
    let t = setup().await;
    let (config, base, refreshes, remote, vault) =
        (&t.config, &t.base, &t.refreshes, &t.remote, &t.vault);
    let mut lasting = expiring(base);
    lasting.expires_at = Some(unix_now() + 3600);
    vault.put("github", "alice", &lasting).unwrap();
    let sign_ins = SignIns::new(config.clone());
    let sent = sign_ins.current("github", remote, "alice").await.unwrap();
    assert_eq!(sent.access_token, "at-0", "fresh: sent as kept");

    let after = sign_ins
        .current_after_refusal("github", remote, "alice", "at-0")
        .await
        .unwrap();
    assert_eq!(after.access_token, "at-1");
    assert_eq!(refreshes.load(Ordering::SeqCst), 1);
    // Another connection that saw the same refusal: refreshed already.
    let again = sign_ins
        .current_after_refusal("github", remote, "alice", "at-0")
        .await
        .unwrap();
    assert_eq!(again.access_token, "at-1");
    assert_eq!(refreshes.load(Ordering::SeqCst), 1);

    lasting.refresh_token = None;
    lasting.access_token = "at-lone".into();
    vault.put("github", "alice", &lasting).unwrap();
    let err = sign_ins
        .current_after_refusal("github", remote, "alice", "at-lone")
        .await
        .unwrap_err();
    assert!(matches!(err, SignInError::Expired { .. }), "{err}");
    // Never sent again: the next connection is told to sign in again too.
    let err = sign_ins
        .current("github", remote, "alice")
        .await
        .unwrap_err();
    assert!(matches!(err, SignInError::Expired { .. }), "{err}");
}
