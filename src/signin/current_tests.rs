#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use serde_json::json;

use super::*;

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

#[tokio::test]
async fn connections_that_find_a_token_expiring_refresh_it_once() {
    let root = tempfile::tempdir().unwrap();
    let config = config(root.path());
    let (base, refreshes) = issuer().await;
    let url = format!("{base}/mcp");
    let vault = Vault::of(&config).unwrap();
    let client = Registration {
        issuer: base.clone(),
        client_id: "proxy-client".into(),
        client_secret: Some("s".into()),
        auth_method: "client_secret_post".into(),
        redirect_uri: "http://127.0.0.1:9/callback".into(),
    };
    vault.put_client("github", DESKTOP, &client).unwrap();
    let expiring = Tokens {
        access_token: "at-0".into(),
        refresh_token: Some("rt-0".into()),
        expires_at: Some(unix_now() + 5),
        scopes: vec![],
        issuer: base.clone(),
        client_id: "proxy-client".into(),
    };
    vault.put("github", "alice", &expiring).unwrap();

    let sign_ins = SignIns::new(config.clone());
    let (one, two) = tokio::join!(
        sign_ins.current("github", &url, &config.egress, "alice"),
        sign_ins.current("github", &url, &config.egress, "alice"),
    );
    assert_eq!(one.unwrap().access_token, "at-1");
    assert_eq!(two.unwrap().access_token, "at-1");
    assert_eq!(refreshes.load(Ordering::SeqCst), 1, "one refresh, not two");
    let kept = vault.get("github", "alice").unwrap().unwrap();
    assert_eq!(kept.refresh_token.as_deref(), Some("rt-1"), "rotated");

    // Fresh now: sent as kept, nothing asked.
    let again = sign_ins
        .current("github", &url, &config.egress, "alice")
        .await
        .unwrap();
    assert_eq!(again.access_token, "at-1");
    assert_eq!(refreshes.load(Ordering::SeqCst), 1);

    // Issued by another authorization server than the server names now:
    // its refresh token is not sent here.
    let mut foreign = expiring.clone();
    foreign.issuer = "https://elsewhere.example".into();
    vault.put("github", "bob", &foreign).unwrap();
    let err = sign_ins
        .current("github", &url, &config.egress, "bob")
        .await
        .unwrap_err();
    assert!(err.contains("another authorization server"), "{err}");
    assert_eq!(refreshes.load(Ordering::SeqCst), 1);

    // Not refreshable, expiring but alive: still sent; dead: sign in again.
    let mut last = expiring.clone();
    last.refresh_token = None;
    vault.put("github", "carol", &last).unwrap();
    let sent = sign_ins
        .current("github", &url, &config.egress, "carol")
        .await
        .unwrap();
    assert_eq!(sent.access_token, "at-0");
    last.expires_at = Some(unix_now() - 1);
    vault.put("github", "carol", &last).unwrap();
    let err = sign_ins
        .current("github", &url, &config.egress, "carol")
        .await
        .unwrap_err();
    assert!(err.contains("sign in again"), "{err}");
    // Never signed in: how to.
    let err = sign_ins
        .current("github", &url, &config.egress, "dave")
        .await
        .unwrap_err();
    assert!(
        err.contains("portcullis oauth login github --client dave"),
        "{err}"
    );
}
